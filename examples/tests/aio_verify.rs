//! bdevperf verify for 30 s through each engine, on a file and (as root) on a loop device,
//! as the AIO issue asks.

use std::path::PathBuf;
use std::process::Command;

fn dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("aio-verify-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn verify(target: &str, what: &str) {
    verify_with(target, what, "30", &[]);
}

fn verify_with(target: &str, what: &str, secs: &str, extra: &[&str]) {
    let cfg = dir().join(format!("{what}.json"));
    std::fs::write(
        &cfg,
        format!(
            r#"{{"subsystems":[{{"subsystem":"bdev","config":[
                {{"method":"bdev_aio_create","params":{{"name":"A0","filename":"{target}"}}}},
                {{"method":"bdev_uring_create","params":{{"name":"U0","filename":"{target}"}}}}]}}]}}"#
        ),
    )
    .unwrap();
    for bdev in ["A0", "U0"] {
        let o = Command::new(env!("CARGO_BIN_EXE_bdevperf"))
            .args([
                "-c",
                cfg.to_str().unwrap(),
                "-T",
                bdev,
                "-q",
                "32",
                "-o",
                "4096",
                "-w",
                "verify",
                "-t",
                secs,
            ])
            .args(extra)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{what} {bdev}: {out}{err}");
        assert!(
            !out.contains("miscompare") && out.contains(bdev),
            "{what} {bdev}: {out}"
        );
        let total = out
            .lines()
            .rev()
            .find(|l| l.contains("Total"))
            .unwrap_or("");
        eprintln!("{what} {bdev}: {total}");
    }
}

#[test]
fn verify_for_30_s_on_a_file_through_both_engines() {
    let f = dir().join("file.img");
    std::fs::File::create(&f)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    verify(f.to_str().unwrap(), "file");
}

#[test]
fn verify_in_interrupt_mode_through_both_engines() {
    // The sleeping reactor waits on the uring channel's ring fd, or on the aio channel's
    // eventfd: every completion must wake it, or verify stalls.
    let f = dir().join("intr.img");
    std::fs::File::create(&f)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    verify_with(f.to_str().unwrap(), "interrupt", "5", &["--interrupt-mode"]);
}

#[test]
fn verify_for_30_s_on_a_loop_device_through_both_engines() {
    if !is_root() {
        eprintln!("skipping loop device verify: needs root (CI runs as root)");
        return;
    }
    let f = dir().join("loop.img");
    std::fs::File::create(&f)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let out = Command::new("losetup")
        .args(["--find", "--show", "--direct-io=on", f.to_str().unwrap()])
        .output()
        .unwrap();
    if !out.status.success() {
        eprintln!(
            "skipping loop device verify: losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = Command::new("losetup").args(["-d", &self.0]).status();
        }
    }
    let _d = Detach(dev.clone());
    verify(&dev, "loop");
}
