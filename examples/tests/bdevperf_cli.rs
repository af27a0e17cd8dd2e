//! bdevperf as a user runs it: the binary, its output and its exit codes.

use std::io::{Read, Write};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use bdev_tests::cli;

fn bdevperf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bdevperf"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run bdevperf")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn config(name: &str, body: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("bdevperf-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::File::create(&p)
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    p
}

/// The `Total` row's IOPS and Fail/s.
fn total(out: &str) -> (f64, f64) {
    let t = cli::total(out).unwrap_or_else(|| panic!("no Total row: {out}"));
    (t.iops, t.fails)
}

/// Completed I/Os of every job row (runtime * IOPS).
fn completed(out: &str) -> f64 {
    out.lines()
        .filter(|l| l.starts_with("\t ") && !l.contains("Verification"))
        .map(|l| {
            let c: Vec<f64> = l
                .split(':')
                .nth(1)
                .unwrap()
                .split_whitespace()
                .map(|v| v.parse().unwrap())
                .collect();
            c[0] * c[1]
        })
        .sum()
}

#[test]
fn default_stack_runs_and_prints_spdks_table() {
    let o = bdevperf(&["-q", "32", "-o", "4096", "-w", "randread", "-t", "1"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.starts_with("Running I/O for 1 seconds...\n"), "{out}");
    let lat = out.lines().find(|l| l.trim() == "Latency(us)").unwrap();
    assert_eq!(lat.len(), 107, "Latency(us) ends at column 107");
    assert!(out.contains(
        "\r Device Information          : runtime(s)       IOPS      MiB/s     Fail/s     TO/s    Average        min        max\n"
    ));
    assert!(
        out.contains(
            "Job: Malloc0 (Core Mask 0x1, workload: randread, depth: 32, IO size: 4096)\n"
        ),
        "{out}"
    );
    assert!(out.contains(&format!("\r {}\n", "=".repeat(115))));
    let (iops, fails) = total(&out);
    assert!(iops > 1000.0, "{out}");
    assert_eq!(fails, 0.0);
}

#[test]
fn bad_input_is_one_line_and_exit_code_1() {
    let bad_json = config("bad.json", "{\"subsystems\": [");
    let unknown = config(
        "unknown.json",
        r#"{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_malloc_create","params":{"name":"M","num_blocks":64,"block_size":512}},{"method":"bdev_frobnicate","params":{}}]}]}"#,
    );
    let bad_params = config(
        "params.json",
        r#"{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_malloc_create","params":{"name":"M","num_blocks":64,"block_size":500}}]}]}"#,
    );
    let bad_json_s = bad_json.to_str().unwrap();
    let unknown_s = unknown.to_str().unwrap();
    let bad_params_s = bad_params.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["-q", "1", "-o", "4096", "-w", "scramble", "-t", "1"],
            "unknown workload",
        ),
        (
            vec!["-q", "0", "-o", "4096", "-w", "read", "-t", "1"],
            "queue depth",
        ),
        (
            vec!["-q", "4000000000", "-o", "4096", "-w", "flush", "-t", "1"],
            "queue depth",
        ),
        (
            vec!["-q", "1", "-o", "1000", "-w", "read", "-t", "1"],
            "not multiples of data block size",
        ),
        (
            vec![
                "-q",
                "1",
                "-o",
                "4096",
                "-w",
                "read",
                "-t",
                "1",
                "-c",
                "/nonexistent.json",
            ],
            "/nonexistent.json",
        ),
        (
            vec![
                "-q", "1", "-o", "4096", "-w", "read", "-t", "1", "-c", bad_json_s,
            ],
            "invalid JSON",
        ),
        (
            vec![
                "-q", "1", "-o", "4096", "-w", "read", "-t", "1", "--json", unknown_s,
            ],
            "bdev_frobnicate (index 1)",
        ),
        (
            vec![
                "-q",
                "1",
                "-o",
                "4096",
                "-w",
                "read",
                "-t",
                "1",
                "-c",
                bad_params_s,
            ],
            "512 bytes aligned",
        ),
        (
            vec![
                "-q", "1", "-o", "4096", "-w", "read", "-t", "1", "-T", "Nope",
            ],
            "Unable to find bdev 'Nope'",
        ),
        (vec!["-o", "4096", "-w", "read", "-t", "1"], "-q"),
        (
            vec!["-q", "1", "-o", "4x", "-w", "read", "-t", "1"],
            "Invalid IO size",
        ),
        (
            vec!["-q", "1", "-o", "4096", "-w", "rw", "-t", "1"],
            "-M must be specified",
        ),
        (
            vec![
                "-q", "1", "-o", "4096", "-w", "read", "-t", "1", "-m", "0xzz",
            ],
            "core mask",
        ),
        (
            vec!["-q", "1", "-o", "4096", "-w", "read", "-t", "1", "--bogus"],
            "--bogus",
        ),
    ];
    for (args, needle) in cases {
        let o = bdevperf(&args);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {out}\n{err}");
        assert!(
            err.contains(needle),
            "{args:?}: stderr lacks {needle:?}: {err}"
        );
        assert!(
            !err.contains("panicked") && !err.contains("backtrace"),
            "{args:?}: {err}"
        );
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("bdevperf:")).collect();
        assert_eq!(lines.len(), 1, "{args:?}: one error line: {err}");
    }
}

#[test]
fn verify_passes_on_malloc_for_a_million_ios_of_512b_to_128k() {
    let cfg = config(
        "verify.json",
        r#"{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":131072,"block_size":512}}]}]}"#,
    );
    let sizes = ["512", "4096", "16k", "64k", "128k"];
    let mut total = 0.0;
    let start = Instant::now();
    let mut round = 0;
    while total < 1_000_000.0 {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "only {total} verified I/Os in 5 minutes"
        );
        let size = sizes[round % sizes.len()];
        round += 1;
        let o = bdevperf(&[
            "-c",
            cfg.to_str().unwrap(),
            "-q",
            "16",
            "-o",
            size,
            "-w",
            "verify",
            "-t",
            "2",
        ]);
        let (out, err) = text(&o);
        assert!(o.status.success(), "verify at {size} failed: {out}\n{err}");
        assert!(
            out.contains("Verification LBA range: start 0x0 length 0x"),
            "{out}"
        );
        assert_eq!(total_fails(&out), 0.0, "{out}");
        total += completed(&out);
    }
}

fn total_fails(out: &str) -> f64 {
    total(out).1
}

#[test]
fn verify_catches_a_bdev_that_loses_writes() {
    // The null bdev stores nothing: every read-back must be reported, and the run fail.
    let cfg = config(
        "null.json",
        r#"{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_null_create","params":{"name":"Null0","num_blocks":1024,"block_size":4096}}]}]}"#,
    );
    for extra in [&[][..], &["--async"][..]] {
        let mut args = vec![
            "-c",
            cfg.to_str().unwrap(),
            "-q",
            "4",
            "-o",
            "8192",
            "-w",
            "verify",
            "-t",
            "1",
        ];
        args.extend_from_slice(extra);
        let o = bdevperf(&args);
        let (out, err) = text(&o);
        assert_ne!(o.status.code(), Some(0), "{out}\n{err}");
        let line = out
            .lines()
            .find(|l| l.starts_with("Buffer mismatch!"))
            .unwrap_or_else(|| panic!("{out}"));
        assert!(
            line.contains("Target: Null0 LBA: ") && line.contains("offset in block: "),
            "{line}"
        );
        assert!(out.contains("Job: Null0 ended in about"), "{out}");
    }
}

#[test]
fn every_workload_runs_on_malloc() {
    for (w, extra) in [
        ("read", &[][..]),
        ("write", &[][..]),
        ("randwrite", &[][..]),
        ("rw", &["-M", "70"][..]),
        ("randrw", &["-M", "30"][..]),
        ("verify", &["--async"][..]),
        ("reset", &[][..]),
        ("unmap", &[][..]),
        ("flush", &[][..]),
        ("write_zeroes", &[][..]),
        ("randread", &["--async"][..]),
        ("randrw", &["-M", "30", "--async-set"][..]),
        ("unmap", &["--async-set"][..]),
        ("verify", &["--async-set"][..]),
    ] {
        let mut args = vec!["-q", "8", "-o", "8k", "-w", w, "-t", "1"];
        args.extend_from_slice(extra);
        let o = bdevperf(&args);
        let (out, err) = text(&o);
        assert!(o.status.success(), "{w}: {out}\n{err}");
        let (iops, fails) = total(&out);
        assert!(iops > 0.0 && fails == 0.0, "{w}: {out}");
        if w.ends_with("rw") {
            assert!(
                out.contains(&format!("workload: {w}, percentage: {}", extra[1])),
                "{out}"
            );
        }
    }
}

#[test]
fn unsupported_workloads_are_skipped_with_spdks_message() {
    let cfg = config(
        "null2.json",
        r#"{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_null_create","params":{"name":"Null0","num_blocks":1024,"block_size":512}}]}]}"#,
    );
    let o = bdevperf(&[
        "-c",
        cfg.to_str().unwrap(),
        "-q",
        "1",
        "-o",
        "512",
        "-w",
        "unmap",
        "-t",
        "1",
    ]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err.contains("Skipping Null0 because it does not support unmap"),
        "{err}"
    );
}

#[test]
fn progress_lines_and_one_job_per_core() {
    let o = bdevperf(&[
        "-q", "4", "-o", "4096", "-w", "randread", "-t", "2", "-S", "1",
    ]);
    let (out, _) = text(&o);
    assert!(o.status.success());
    let tables = out.matches("\r Total ").count();
    assert!(
        tables >= 2,
        "a progress table each second and the final one: {out}"
    );
    let cores = bdev_core::app::CpuMask::available();
    if cores.len() >= 2 {
        let o = bdevperf(&[
            "-q", "4", "-o", "4096", "-w", "randread", "-t", "1", "-m", "0x3",
        ]);
        let (out, err) = text(&o);
        assert!(o.status.success(), "{err}");
        assert!(
            out.contains("Core Mask 0x1,") && out.contains("Core Mask 0x2,"),
            "{out}"
        );
    } else {
        eprintln!("skipped the two-core run: this machine has one core");
    }
}

#[test]
fn sigint_drains_the_jobs_and_prints_the_table() {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_bdevperf"))
        .args(["-q", "16", "-o", "4096", "-w", "randread", "-t", "60"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the run has started (the handler is installed before that), however
    // slow the machine is, then interrupt it.
    let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    assert!(first.starts_with("Running I/O for 60 seconds"), "{first}");
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut out = String::new();
    reader.read_to_string(&mut out).unwrap();
    let st = child.wait().unwrap();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "took {:?} to stop",
        start.elapsed()
    );
    assert!(st.success(), "{out}\n{err}");
    assert!(
        out.contains("Received shutdown signal, test time was about "),
        "{out}"
    );
    let (iops, _) = total(&out);
    assert!(iops > 0.0, "{out}");
}

#[test]
fn wait_for_rpc_runs_a_test_per_perform_tests() {
    let sock = std::env::temp_dir().join(format!("bdevperf-z-{}.sock", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_bdevperf"))
        .args([
            "-z",
            "-r",
            sock.to_str().unwrap(),
            "-q",
            "4",
            "-o",
            "4096",
            "-w",
            "verify",
            "-t",
            "1",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    cli::wait_for_socket(&sock, Duration::from_secs(20));
    let mut s = cli::RpcClient::connect(&sock);
    // SPDK's waitforlisten polls rpc_get_methods before bdevperf.py sends perform_tests.
    let v = s.call("rpc_get_methods", serde_json::Value::Null);
    let names = v["result"].as_array().unwrap_or_else(|| panic!("{v}"));
    for m in [
        "perform_tests",
        "rpc_get_methods",
        "spdk_get_version",
        "bdev_get_bdevs",
    ] {
        assert!(names.iter().any(|n| n == m), "{m}: {v}");
    }
    let v = s.call("perform_tests", serde_json::Value::Null);
    let r = &v["result"]["results"][0];
    assert_eq!(r["job"], "Malloc0", "{v}");
    assert!(r["verify_range"]["length"].as_u64().unwrap() > 0, "{v}");
    assert!(r.get("percentage").is_none(), "{v}");
    assert_eq!(r["status"], "finished", "{v}");
    assert!(r["iops"].as_f64().unwrap() > 0.0, "{v}");
    // bdevperf.py's parameters override the command line's for that run.
    let v = s.call(
        "perform_tests",
        serde_json::json!({"workload_type": "randread", "io_size": "8k", "queue_depth": 2, "time_in_sec": 1}),
    );
    let r = &v["result"]["results"][0];
    assert_eq!(
        (
            r["workload"].as_str(),
            r["io_size"].as_u64(),
            r["queue_depth"].as_u64()
        ),
        (Some("randread"), Some(8192), Some(2)),
        "{v}"
    );
    assert!(r.get("verify_range").is_none(), "{v}");
    let v = s.call(
        "perform_tests",
        serde_json::json!({"workload_type": "randrw", "rw_percentage": 70, "time_in_sec": 1}),
    );
    assert_eq!(v["result"]["results"][0]["percentage"], 70, "{v}");
    let v = s.call(
        "perform_tests",
        serde_json::json!({"workload_type": "sideways"}),
    );
    assert_eq!(v["error"]["code"], -32602, "{v}");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let st = child.wait().unwrap();
    assert!(st.success());
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(
        out.matches("Running I/O for 1 seconds...").count(),
        3,
        "{out}"
    );
}

#[test]
fn deleting_the_base_of_a_passthru_under_bdevperf_ends_the_job_cleanly() {
    let cfg = config(
        "pt_delete",
        r#"{"subsystems":[{"subsystem":"bdev","config":[
            {"method":"bdev_malloc_create","params":{"name":"Mb","num_blocks":16384,"block_size":4096}},
            {"method":"bdev_passthru_create","params":{"base_bdev_name":"Mb","name":"PTb"}}]}]}"#,
    );
    let sock = std::env::temp_dir().join(format!("bdevperf-pt-{}.sock", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_bdevperf"))
        .args([
            "-z",
            "-r",
            sock.to_str().unwrap(),
            "-c",
            cfg.to_str().unwrap(),
            "-T",
            "PTb",
        ])
        .args([
            "-q", "32", "-o", "4096", "-w", "randrw", "-M", "50", "-t", "30",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    cli::wait_for_socket(&sock, Duration::from_secs(20));
    let s2 = sock.clone();
    let run = std::thread::spawn(move || {
        cli::RpcClient::connect(&s2).call("perform_tests", serde_json::Value::Null)
    });
    std::thread::sleep(Duration::from_millis(700));
    let mut ctl = cli::RpcClient::connect(&sock);
    let v = ctl.call("bdev_malloc_delete", serde_json::json!({"name": "Mb"}));
    assert_eq!(v["result"], true, "{v}");
    // The run ends long before its 30 s, as a failed run; the process keeps serving.
    let started = Instant::now();
    let v = run.join().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the job did not end"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("failed"),
        "{v}"
    );
    let v = ctl.call("bdev_get_bdevs", serde_json::Value::Null);
    assert_eq!(
        v["result"],
        serde_json::json!([]),
        "the whole stack is gone: {v}"
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let st = child.wait().unwrap();
    assert!(st.success(), "{st:?}");
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(out.contains("PTb"), "{out}");
    assert!(out.contains("was removed"), "{out}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn plot_draws_the_latency_histogram_as_svg() {
    let svg = std::env::temp_dir().join(format!("bdevperf-plot-{}.svg", std::process::id()));
    let o = bdevperf(&[
        "-q",
        "8",
        "-o",
        "4096",
        "-w",
        "randread",
        "-t",
        "1",
        "--plot",
        svg.to_str().unwrap(),
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(out.contains("Latency histogram written to"), "{out}");
    let s = std::fs::read_to_string(&svg).unwrap();
    assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
    for want in [
        "p50",
        "p99",
        "p99.9",
        "latency (us, log scale)",
        "<rect",
        "<polyline",
    ] {
        assert!(s.contains(want), "{want} missing");
    }
    let _ = std::fs::remove_file(&svg);
}

#[test]
fn a_failed_io_ends_the_job_in_every_submission_mode() {
    // Five reads fail (error injection over malloc); without -f the first ends the job,
    // with SPDK's message, by callback, by `.await` and through an IoSet alike.
    let cfg = config(
        "error.json",
        r#"{"subsystems":[{"subsystem":"bdev","config":[
            {"method":"bdev_malloc_create","params":{"name":"M0","num_blocks":2048,"block_size":4096}},
            {"method":"bdev_error_create","params":{"base_name":"M0"}},
            {"method":"bdev_error_inject_error","params":{"name":"EE_M0","io_type":"read","error_type":"failure","num":5}}]}]}"#,
    );
    for extra in [&[][..], &["--async"][..], &["--async-set"][..]] {
        let mut args = vec![
            "-c",
            cfg.to_str().unwrap(),
            "-T",
            "EE_M0",
            "-q",
            "8",
            "-o",
            "4096",
            "-w",
            "randread",
            "-t",
            "5",
        ];
        args.extend_from_slice(extra);
        let o = bdevperf(&args);
        let (out, err) = text(&o);
        assert_ne!(o.status.code(), Some(0), "{extra:?}: {out}\n{err}");
        assert!(
            out.contains("on job bdev=EE_M0 fails"),
            "{extra:?}: {out}\n{err}"
        );
        assert!(total_fails(&out) > 0.0, "{extra:?}: {out}");
    }
}
