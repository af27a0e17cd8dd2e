//! RAIDs under bdevperf verify (over malloc and over AIO files), a raid1 losing and
//! regaining a member under load, and a raid1 with a superblock coming back after a
//! restart of the daemon, as the RAID issue asks.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

fn dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("raid-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_config(name: &str, entries: &[Value]) -> PathBuf {
    let p = dir().join(name);
    let cfg = json!({"subsystems": [{"subsystem": "bdev", "config": entries}]});
    std::fs::write(&p, cfg.to_string()).unwrap();
    p
}

fn file(name: &str, mib: u64) -> PathBuf {
    let p = dir().join(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(mib << 20).unwrap();
    p
}

fn bdevperf(args: &[&str]) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_bdevperf"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

/// Runs verify on every bdev of `cfg` and checks each of `names` ran clean.
fn verify_all(cfg: &Path, names: &[String], secs: &str) {
    let (ok, out) = bdevperf(&[
        "-c",
        cfg.to_str().unwrap(),
        "-q",
        "16",
        "-o",
        "12288",
        "-w",
        "verify",
        "-t",
        secs,
    ]);
    assert!(ok, "{out}");
    assert!(
        !out.contains("miscompare") && !out.contains("panicked"),
        "{out}"
    );
    for n in names {
        assert!(out.contains(&format!("Job: {n} ")), "no job on {n}: {out}");
        // Its row ("<name> : runtime IOPS MiB/s ..."): it did I/O.
        let iops = out
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == n.as_str())
                    .then(|| v.split_whitespace().nth(1)?.parse::<f64>().ok())?
            })
            .unwrap_or_else(|| panic!("no row for {n}: {out}"));
        assert!(iops > 0.0, "{n} did no I/O: {out}");
    }
    // No failed I/O in any job: the Total row's Fail/s is 0.
    let total = bdev_tests::cli::total(&out).unwrap_or_else(|| panic!("no Total: {out}"));
    assert_eq!(total.fails, 0.0, "{out}");
    eprintln!("{total:?}");
}

/// raid0 / raid1 / concat over `base(name, block_size)` entries, strips 4 to 1024 KiB.
fn arrays(base: impl Fn(&str, u32) -> Value) -> (Vec<Value>, Vec<String>) {
    let mut entries = Vec::new();
    let mut names = Vec::new();
    let levels: [(&str, u32, u32); 8] = [
        ("raid0", 4, 512),
        ("raid0", 64, 4096),
        ("raid0", 1024, 512),
        ("concat", 4, 4096),
        ("concat", 128, 512),
        ("concat", 1024, 4096),
        ("raid1", 0, 512),
        ("raid1", 0, 4096),
    ];
    for (i, (level, strip, bs)) in levels.into_iter().enumerate() {
        let members: Vec<String> = (0..2 + i % 2).map(|j| format!("b{i}_{j}")).collect();
        for m in &members {
            entries.push(base(m, bs));
        }
        let name = format!("{level}_{strip}k_{bs}");
        let mut p = json!({"name": name, "raid_level": level, "base_bdevs": members});
        if strip != 0 {
            p["strip_size_kb"] = json!(strip);
        }
        entries.push(json!({"method": "bdev_raid_create", "params": p}));
        names.push(name);
    }
    (entries, names)
}

#[test]
fn verify_passes_on_every_level_over_malloc() {
    let (entries, names) = arrays(|name, bs| {
        // Members of different sizes (by their index, after the `_`): concat lays them
        // end to end, raid0 and raid1 use the smallest.
        let j: u64 = name.rsplit('_').next().unwrap().parse().unwrap();
        let blocks = (24u64 << 20) / bs as u64 + j * 64;
        json!({"method": "bdev_malloc_create",
               "params": {"name": name, "num_blocks": blocks, "block_size": bs}})
    });
    let cfg = write_config("malloc.json", &entries);
    verify_all(&cfg, &names, "4");
}

#[test]
fn verify_passes_on_every_level_over_aio_files() {
    let (entries, names) = arrays(|name, bs| {
        // Of different sizes too (24, 25, 26 MiB by index).
        let j: u64 = name.rsplit('_').next().unwrap().parse().unwrap();
        let f = file(&format!("{name}.img"), 24 + j);
        json!({"method": "bdev_aio_create",
               "params": {"name": name, "filename": f, "block_size": bs}})
    });
    let cfg = write_config("aio.json", &entries);
    verify_all(&cfg, &names, "4");
}

/// A JSON-RPC client on a Unix socket.
struct Client {
    s: UnixStream,
    buf: Vec<u8>,
    id: u64,
}

impl Client {
    fn connect(sock: &Path) -> Client {
        let t = Instant::now();
        let s = loop {
            if let Ok(s) = UnixStream::connect(sock) {
                break s;
            }
            assert!(t.elapsed() < Duration::from_secs(20), "no RPC socket");
            std::thread::sleep(Duration::from_millis(20));
        };
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        Client {
            s,
            buf: Vec::new(),
            id: 0,
        }
    }

    fn send(&mut self, method: &str, params: Value) -> u64 {
        self.id += 1;
        let mut req = json!({"jsonrpc": "2.0", "method": method, "id": self.id});
        if !params.is_null() {
            req["params"] = params;
        }
        self.s.write_all(req.to_string().as_bytes()).unwrap();
        self.id
    }

    fn recv(&mut self) -> Value {
        loop {
            let mut it = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
            if let Some(Ok(v)) = it.next() {
                let used = it.byte_offset();
                self.buf.drain(..used);
                return v;
            }
            let mut chunk = [0u8; 65536];
            let n = self.s.read(&mut chunk).unwrap();
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        self.send(method, params);
        self.recv()
    }
}

fn raid_info(c: &mut Client, name: &str) -> Value {
    let v = c.call("bdev_raid_get_bdevs", json!({"category": "all"}));
    v["result"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no raid {name}: {v}"))
}

fn stop(mut child: std::process::Child) -> String {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let st = child.wait().unwrap();
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        o.read_to_string(&mut out).unwrap();
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut err).unwrap();
    }
    assert!(st.success(), "{st:?}: {out}{err}");
    assert!(!err.contains("panicked"), "{err}");
    out + &err
}

#[test]
fn raid1_under_verify_loses_a_member_and_rebuilds_a_new_one() {
    let files: Vec<PathBuf> = (0..3).map(|i| file(&format!("m{i}.img"), 32)).collect();
    let mut entries: Vec<Value> = files
        .iter()
        .enumerate()
        .map(|(i, f)| json!({"method": "bdev_aio_create", "params": {"name": format!("A{i}"), "filename": f}}))
        .collect();
    entries.push(json!({"method": "bdev_error_create", "params": {"base_name": "A0"}}));
    entries.push(json!({"method": "bdev_raid_create",
        "params": {"name": "R1", "raid_level": "raid1", "base_bdevs": ["EE_A0", "A1"]}}));
    let cfg = write_config("rebuild.json", &entries);
    let sock = dir().join("rebuild.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_bdevperf"))
        .args([
            "-z",
            "-r",
            sock.to_str().unwrap(),
            "-c",
            cfg.to_str().unwrap(),
            "-T",
            "R1",
        ])
        .args(["-q", "32", "-o", "4096", "-w", "verify", "-t", "10"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut run = Client::connect(&sock);
    run.send("perform_tests", Value::Null);
    let mut ctl = Client::connect(&sock);
    std::thread::sleep(Duration::from_millis(1500));
    // EE_A0 fails every write from now on: it leaves the array; verify carries on.
    let v = ctl.call(
        "bdev_error_inject_error",
        json!({"name": "EE_A0", "io_type": "write", "error_type": "failure", "num": 1_000_000}),
    );
    assert!(v["result"].is_boolean(), "{v}");
    let t = Instant::now();
    while raid_info(&mut ctl, "R1")["num_base_bdevs_operational"] != 1 {
        assert!(t.elapsed() < Duration::from_secs(5), "member not failed");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1000));
    // A new member: rebuilt under the running verify.
    let v = ctl.call(
        "bdev_raid_add_base_bdev",
        json!({"raid_bdev": "R1", "base_bdev": "A2"}),
    );
    assert_eq!(v["result"], true, "{v}");
    let t = Instant::now();
    let mut saw_progress = false;
    loop {
        let info = raid_info(&mut ctl, "R1");
        if info.get("process").is_some() {
            saw_progress = true;
        } else if info["num_base_bdevs_operational"] == 2 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(8),
            "rebuild did not finish: {info}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("rebuild seen in progress: {saw_progress}");
    let res = run.recv();
    assert!(res.get("error").is_none(), "verify failed: {res}");
    let out = stop(child);
    assert!(out.contains("R1") && !out.contains("miscompare"), "{out}");
    // The new member alone holds the array's data: the same bytes as the surviving one.
    let a1 = std::fs::read(&files[1]).unwrap();
    let a2 = std::fs::read(&files[2]).unwrap();
    let differ = a1.iter().zip(&a2).position(|(x, y)| x != y);
    assert_eq!(differ, None, "rebuilt member differs from the survivor");
    assert!(a2.iter().any(|&b| b != 0), "the rebuilt member holds data");
}

#[test]
fn raid1_with_superblock_comes_back_after_a_restart() {
    let files: Vec<PathBuf> = (0..2).map(|i| file(&format!("sb{i}.img"), 16)).collect();
    let mut entries: Vec<Value> = files
        .iter()
        .enumerate()
        .map(|(i, f)| json!({"method": "bdev_aio_create", "params": {"name": format!("S{i}"), "filename": f}}))
        .collect();
    entries.push(json!({"method": "bdev_raid_create",
        "params": {"name": "SB1", "raid_level": "raid1", "base_bdevs": ["S0", "S1"], "superblock": true}}));
    let cfg = write_config("sb.json", &entries);
    let daemon = |cfg: &Path, tag: &str| {
        let sock = dir().join(format!("{tag}.sock"));
        let child = Command::new(env!("CARGO_BIN_EXE_bdevd"))
            .args(["-r", sock.to_str().unwrap(), "-c", cfg.to_str().unwrap()])
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        (child, Client::connect(&sock))
    };
    let (child, mut c) = daemon(&cfg, "sb-a");
    let info = raid_info(&mut c, "SB1");
    assert_eq!(info["state"], "online", "{info}");
    let uuid = info["uuid"].clone();
    let saved = c.call("save_config", Value::Null)["result"].clone();
    assert!(!saved.to_string().contains("bdev_raid_create"), "{saved}");
    let saved_path = dir().join("sb-saved.json");
    std::fs::write(&saved_path, saved.to_string()).unwrap();
    stop(child);
    // Write through the array, assembled from the saved config (only the AIO bdevs).
    let o = Command::new(env!("CARGO_BIN_EXE_hello_bdev"))
        .args(["-c", saved_path.to_str().unwrap(), "-b", "SB1"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && out.contains("Hello World!"), "{out}");
    // Both members hold it after the 1 MiB superblock area.
    for f in &files {
        let d = std::fs::read(f).unwrap();
        assert_eq!(&d[..8], b"SPDKRAID");
        assert_eq!(
            &d[1 << 20..(1 << 20) + 12],
            b"Hello World!",
            "{}",
            f.display()
        );
    }
    // And the daemon, restarted on the saved config, has the array back.
    let (child, mut c) = daemon(&saved_path, "sb-b");
    let info = raid_info(&mut c, "SB1");
    assert_eq!(info["state"], "online", "{info}");
    assert_eq!(info["uuid"], uuid);
    assert_eq!(info["num_base_bdevs_operational"], 2);
    assert_eq!(info["superblock"], true);
    stop(child);
    // Read back through the array, assembled once more from the saved config: the first
    // 4 KiB of SB1 as hello_bdev left them.
    let back = dir().join("sb-back.bin");
    let o = Command::new(env!("CARGO_BIN_EXE_bdev_dd"))
        .args(["--ib", "SB1", "--of", back.to_str().unwrap(), "--json"])
        .arg(&saved_path)
        .args(["--bs", "4096", "--count", "1"])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{out}");
    let back = std::fs::read(&back).unwrap();
    let member = std::fs::read(&files[0]).unwrap();
    assert_eq!(back.len(), 4096, "{out}");
    assert!(back.starts_with(b"Hello World!"), "{out}");
    assert!(
        back[..] == member[1 << 20..(1 << 20) + 4096],
        "the array's block 0 is the member's past its superblock"
    );
}
