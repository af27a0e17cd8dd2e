//! bdevd driven over its JSON-RPC socket, as SPDK's rpc.py would: methods, SPDK's error
//! codes, bad input that leaves the daemon serving, save_config round trips, shutdown.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use bdev_tests::cli::{Daemon, RpcClient};
use serde_json::{Value, json};

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bdevd-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn start(name: &str, config: Option<&Path>) -> Daemon {
    start_with(name, config, &[])
}

fn start_with(name: &str, config: Option<&Path>, args: &[&str]) -> Daemon {
    let sock = tmp(&format!("{name}.sock"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bdevd"));
    cmd.args(args)
        .arg("-r")
        .arg(&sock)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(c) = config {
        cmd.arg("-c").arg(c);
    }
    Daemon::new(cmd.spawn().unwrap(), sock)
}

fn code(v: &Value) -> i64 {
    v["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("not an error: {v}"))
}

#[test]
fn methods_errors_and_bad_input() {
    let d = start("methods", None);
    let mut c = RpcClient::connect(&d.sock);
    let names = c.call("rpc_get_methods", Value::Null);
    for m in [
        "bdev_malloc_create",
        "bdev_null_delete",
        "bdev_get_bdevs",
        "save_config",
        "spdk_kill_instance",
    ] {
        assert!(
            names["result"].as_array().unwrap().iter().any(|n| n == m),
            "{m} missing: {names}"
        );
    }
    assert_eq!(
        c.call("spdk_get_version", Value::Null)["result"]["fields"]["major"],
        24
    );
    assert_eq!(c.call("framework_wait_init", Value::Null)["result"], true);
    let r = c.call(
        "bdev_malloc_create",
        json!({"name": "M0", "num_blocks": 2048, "block_size": 512}),
    );
    assert_eq!(r["result"], "M0");
    // Duplicate name: SPDK answers with -EEXIST.
    let r = c.call(
        "bdev_malloc_create",
        json!({"name": "M0", "num_blocks": 2048, "block_size": 512}),
    );
    assert_eq!(code(&r), -17, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already exists")
    );
    // Wrong type, missing param, unknown param: SPDK's malloc and null handlers answer a
    // decode failure with -32603 and their message; what is wrong follows it.
    let v = c.call(
        "bdev_malloc_create",
        json!({"num_blocks": "8", "block_size": 512}),
    );
    assert_eq!(code(&v), -32603, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.starts_with("spdk_json_decode_object failed: "), "{v}");
    assert!(msg.contains("num_blocks") || msg.contains("string"), "{v}");
    assert_eq!(
        code(&c.call("bdev_null_create", json!({"name": "n", "block_size": 512}))),
        -32603
    );
    assert_eq!(
        code(&c.call(
            "bdev_null_create",
            json!({"name": "n", "num_blocks": 8, "block_size": 512, "frob": 1})
        )),
        -32603
    );
    // Handlers that chose other codes: raid's -32700, bdev_examine's -32602.
    assert_eq!(
        code(&c.call("bdev_raid_delete", json!({"nom": "r"}))),
        -32700
    );
    assert_eq!(code(&c.call("bdev_examine", json!({}))), -32602);
    // Methods with no params refuse `{}` with their own words.
    let v = c.call("bdev_wait_for_examine", json!({}));
    assert_eq!(code(&v), -32602, "{v}");
    assert_eq!(
        v["error"]["message"],
        "bdev_wait_for_examine requires no parameters"
    );
    let v = c.call("spdk_get_version", json!({}));
    assert_eq!(
        v["error"]["message"],
        "spdk_get_version method requires no parameters"
    );
    let v = c.call("framework_get_reactors", json!({}));
    assert_eq!(
        v["error"]["message"],
        "`framework_get_reactors` requires no arguments"
    );
    let v = c.call("log_get_flags", json!({}));
    assert_eq!(
        v["error"]["message"],
        "log_get_flags requires no parameters"
    );
    let r = c.call(
        "bdev_null_create",
        json!({"name": "n", "num_blocks": 8, "block_size": 500}),
    );
    // Refused options: SPDK's -EINVAL, with its message.
    assert!(
        code(&r) == -22
            && r["error"]["message"]
                .as_str()
                .unwrap()
                .contains("multiple of 512"),
        "{r}"
    );
    assert_eq!(code(&c.call("bdev_frobnicate", json!({}))), -32601);
    assert_eq!(
        code(&c.call("bdev_malloc_delete", json!({"name": "nope"}))),
        -19
    );
    assert_eq!(
        code(&c.call("bdev_get_bdevs", json!({"name": "nope"}))),
        -19
    );
    let b = c.call("bdev_get_bdevs", json!({"name": "M0"}));
    let b = &b["result"][0];
    assert_eq!(
        (b["block_size"].as_u64(), b["num_blocks"].as_u64()),
        (Some(512), Some(2048))
    );
    assert_eq!(b["product_name"], "Malloc disk");
    assert_eq!(b["supported_io_types"]["unmap"], true);
    // Not JSON-RPC: an array, no version, params of the wrong kind.
    assert_eq!(code(&c.raw(b"[1,2]").unwrap()), -32600);
    assert_eq!(
        code(&c.raw(br#"{"method":"rpc_get_methods","id":7}"#).unwrap()),
        -32600
    );
    assert_eq!(
        code(
            &c.raw(br#"{"jsonrpc":"2.0","method":"rpc_get_methods","params":3,"id":8}"#)
                .unwrap()
        ),
        -32600
    );
    // Invalid and without an id: still answered, with id null (it is no notification).
    let r = c.raw(br#"{"method":"rpc_get_methods"}"#).unwrap();
    assert_eq!((code(&r), r["id"].clone()), (-32600, Value::Null), "{r}");
    // At most 64 clients at once (SPDK's limit): the ones beyond are closed.
    let crowd: Vec<RpcClient> = (0..70).map(|_| RpcClient::connect(&d.sock)).collect();
    let refused = crowd
        .into_iter()
        .map(|mut k| k.raw(br#"{"jsonrpc":"2.0","method":"spdk_get_version","id":1}"#))
        .filter(|r| r.is_none())
        .count();
    assert!(refused >= 7, "{refused} of 70 extra clients refused");
    // Garbage: a parse error, and that connection closes...
    let mut g = RpcClient::connect(&d.sock);
    assert_eq!(
        code(&g.raw(b"{\"jsonrpc\": \"2.0\", \"method\": }").unwrap()),
        -32700
    );
    assert!(
        g.raw(b"{}").is_none(),
        "the connection closes after a parse error"
    );
    // ...as does a request over 1 MiB; the daemon keeps serving everyone else.
    let mut big = RpcClient::connect(&d.sock);
    let huge = format!(
        "{{\"jsonrpc\":\"2.0\",\"method\":\"bdev_get_bdevs\",\"id\":1,\"params\":{{\"name\":\"{}\"}}}}",
        "x".repeat(2 << 20)
    );
    let r = big.raw(huge.as_bytes()).expect("an error answer");
    assert_eq!(code(&r), -32600, "{r}");
    assert_eq!(
        c.call("bdev_malloc_delete", json!({"name": "M0"}))["result"],
        true
    );
    assert_eq!(c.call("bdev_get_bdevs", Value::Null)["result"], json!([]));
}

#[test]
fn save_config_round_trips_and_shutdown_is_orderly() {
    let cfg = tmp("start.json");
    std::fs::write(
        &cfg,
        r#"{"subsystems":[{"subsystem":"accel","config":[]},{"subsystem":"bdev","config":[
            {"method":"bdev_set_options","params":{"bdev_io_pool_size":4096,"bdev_io_cache_size":64}},
            {"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":4096,"block_size":4096,"uuid":"0b5d3d2a-1c0e-4f4e-9d1a-2f6a0c3e8b11"}},
            {"method":"bdev_null_create","params":{"name":"Null0","num_blocks":100000,"block_size":512}},
            {"method":"bdev_wait_for_examine"}]}]}"#,
    )
    .unwrap();
    let a = start("save_a", Some(&cfg));
    let mut ca = RpcClient::connect(&a.sock);
    let saved = ca.call("save_config", Value::Null)["result"].clone();
    let bdevs_a = ca.call("bdev_get_bdevs", Value::Null)["result"].clone();
    assert_eq!(
        ca.call("spdk_kill_instance", json!({"sig_name": "SIGINT"}))["result"],
        true
    );
    let mut a = a;
    let st = a.child.wait().unwrap();
    assert!(st.success(), "bdevd exit {st:?}");
    assert!(!a.sock.exists(), "socket removed at shutdown");

    let saved_path = tmp("saved.json");
    std::fs::write(&saved_path, serde_json::to_vec_pretty(&saved).unwrap()).unwrap();
    let b = start("save_b", Some(&saved_path));
    let mut cb = RpcClient::connect(&b.sock);
    let bdevs_b = cb.call("bdev_get_bdevs", Value::Null)["result"].clone();
    assert_eq!(bdevs_a, bdevs_b, "load, save, load gives the same bdevs");
    assert_eq!(cb.call("save_config", Value::Null)["result"], saved);
    assert_eq!(bdevs_b[0]["uuid"], "0b5d3d2a-1c0e-4f4e-9d1a-2f6a0c3e8b11");
    // SIGTERM stops it in order too.
    let mut b = b;
    Command::new("kill")
        .args(["-TERM", &b.child.id().to_string()])
        .status()
        .unwrap();
    assert!(b.child.wait().unwrap().success());
}

#[test]
fn a_socket_in_use_is_refused() {
    let a = start("inuse", None);
    let o = Command::new(env!("CARGO_BIN_EXE_bdevd"))
        .arg("-r")
        .arg(&a.sock)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("in use"), "{err}");
    // The first daemon still answers.
    assert!(
        RpcClient::connect(&a.sock).call("spdk_get_version", Value::Null)["result"].is_object()
    );
}

#[test]
fn virtual_bdevs_qos_and_histograms_over_rpc() {
    let d = start("vbdevs", None);
    let mut c = RpcClient::connect(&d.sock);
    let ok = |v: Value| {
        assert!(v.get("error").is_none(), "{v}");
        v["result"].clone()
    };
    ok(c.call(
        "bdev_malloc_create",
        json!({"name": "M1", "num_blocks": 2048, "block_size": 512}),
    ));
    ok(c.call(
        "bdev_null_create",
        json!({"name": "N1", "num_blocks": 2048, "block_size": 512}),
    ));
    assert_eq!(
        ok(c.call(
            "bdev_passthru_create",
            json!({"base_bdev_name": "M1", "name": "PT1"})
        )),
        "PT1"
    );
    // The base is claimed: a second virtual bdev on it is refused (-EPERM), the name stays free.
    let r = c.call("bdev_delay_create", json!({"base_bdev_name": "M1", "name": "D1",
        "avg_read_latency": 10, "p99_read_latency": 20, "avg_write_latency": 10, "p99_write_latency": 20}));
    assert_eq!(code(&r), -1, "{r}");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("claimed"),
        "{r}"
    );
    assert_eq!(ok(c.call("bdev_delay_create", json!({"base_bdev_name": "N1", "name": "D1",
        "avg_read_latency": 10, "p99_read_latency": 20, "avg_write_latency": 10, "p99_write_latency": 20}))), "D1");
    assert_eq!(
        ok(c.call("bdev_error_create", json!({"base_name": "PT1"}))),
        true
    );
    assert_eq!(
        code(&c.call("bdev_error_create", json!({"base_name": "PT1"}))),
        -17
    );
    assert_eq!(
        ok(c.call(
            "bdev_error_inject_error",
            json!({"name": "EE_PT1", "io_type": "write", "error_type": "failure", "num": 3})
        )),
        true
    );
    assert_eq!(
        code(&c.call(
            "bdev_error_inject_error",
            json!({"name": "EE_PT1", "io_type": "write"})
        )),
        -32603
    );
    // bdev_delay_update_latency's own codes: no such bdev, not a delay bdev.
    let lat = |n: &str| json!({"delay_bdev_name": n, "latency_type": "avg_read", "latency_us": 5});
    assert_eq!(
        code(&c.call("bdev_delay_update_latency", lat("nope"))),
        -32602
    );
    assert_eq!(
        code(&c.call("bdev_delay_update_latency", lat("PT1"))),
        -32600
    );
    assert_eq!(
        code(&c.call(
            "bdev_error_inject_error",
            json!({"name": "PT1", "io_type": "write", "error_type": "failure"})
        )),
        -19
    );
    assert_eq!(
        ok(c.call(
            "bdev_delay_update_latency",
            json!({"delay_bdev_name": "D1", "latency_type": "p99_write", "latency_us": 5})
        )),
        true
    );
    assert_eq!(
        code(&c.call(
            "bdev_delay_update_latency",
            json!({"delay_bdev_name": "D9", "latency_type": "p99_write", "latency_us": 5})
        )),
        -32602
    );
    let b = ok(c.call("bdev_get_bdevs", json!({"name": "PT1"})));
    assert_eq!(b[0]["claimed"], true, "claimed by the error bdev");
    assert_eq!(b[0]["driver_specific"]["passthru"]["base_bdev_name"], "M1");

    // QoS and histograms.
    assert_eq!(
        ok(c.call(
            "bdev_set_qos_limit",
            json!({"name": "D1", "rw_ios_per_sec": 10000, "r_mbytes_per_sec": 100})
        )),
        true
    );
    assert_eq!(
        code(&c.call("bdev_set_qos_limit", json!({"name": "D1"}))),
        -22
    );
    assert_eq!(
        code(&c.call(
            "bdev_set_qos_limit",
            json!({"name": "nope", "rw_ios_per_sec": 1000})
        )),
        -19
    );
    let b = ok(c.call("bdev_get_bdevs", json!({"name": "D1"})));
    assert_eq!(
        b[0]["assigned_rate_limits"],
        json!({"rw_ios_per_sec": 10000, "rw_mbytes_per_sec": 0, "r_mbytes_per_sec": 100, "w_mbytes_per_sec": 0})
    );
    assert_eq!(
        ok(c.call(
            "bdev_enable_histogram",
            json!({"name": "D1", "enable": true})
        )),
        true
    );
    let h = ok(c.call("bdev_get_histogram", json!({"name": "D1"})));
    assert_eq!(h["bucket_shift"], 7);
    assert_eq!(
        h["histogram"].as_str().unwrap().len(),
        7424 * 8 * 4 / 3 + 4 - (7424 * 8 * 4 / 3) % 4,
        "{}",
        h["histogram"].as_str().unwrap().len()
    );
    let saved = ok(c.call("save_config", Value::Null));
    let methods: Vec<String> = saved["subsystems"][0]["config"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["method"].as_str().unwrap().to_string())
        .collect();
    for m in [
        "bdev_passthru_create",
        "bdev_error_create",
        "bdev_delay_create",
        "bdev_set_qos_limit",
        "bdev_enable_histogram",
    ] {
        assert!(methods.iter().any(|x| x == m), "{m} not saved: {methods:?}");
    }

    // Deleting the bottom of a stack takes the stack down with it, as in SPDK.
    assert_eq!(
        ok(c.call("bdev_malloc_delete", json!({"name": "M1"}))),
        true
    );
    let names: Vec<String> = ok(c.call("bdev_get_bdevs", Value::Null))
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["N1", "D1"]);
    assert_eq!(ok(c.call("bdev_delay_delete", json!({"name": "D1"}))), true);
    assert_eq!(
        code(&c.call("bdev_delay_delete", json!({"name": "D1"}))),
        -19
    );
    assert_eq!(
        ok(c.call("bdev_passthru_delete", json!({"name": "PT1"}))),
        true,
        "its config is forgotten"
    );
    assert_eq!(
        code(&c.call("bdev_passthru_delete", json!({"name": "PT1"}))),
        -19
    );
}

#[test]
fn aio_and_uring_bdevs_over_rpc() {
    let d = start("aio", None);
    let mut c = RpcClient::connect(&d.sock);
    let img = tmp("aio-rpc.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let img = img.to_str().unwrap().to_string();
    let r = c.call(
        "bdev_aio_create",
        json!({"name": "A1", "filename": img, "block_size": 4096, "fallocate": true}),
    );
    assert_eq!(r["result"], "A1", "{r}");
    let r = c.call("bdev_uring_create", json!({"name": "U1", "filename": img}));
    assert_eq!(r["result"], "U1", "{r}");
    let b = c.call("bdev_get_bdevs", json!({"name": "A1"}));
    assert_eq!(
        (
            b["result"][0]["block_size"].as_u64(),
            b["result"][0]["num_blocks"].as_u64()
        ),
        (Some(4096), Some(256)),
        "{b}"
    );
    assert_eq!(b["result"][0]["supported_io_types"]["unmap"], true);
    // Bad targets and params: errors with a message, the daemon keeps serving.
    let r = c.call(
        "bdev_aio_create",
        json!({"name": "A2", "filename": "/nonexistent.img"}),
    );
    assert!(
        code(&r) < 0
            && r["error"]["message"]
                .as_str()
                .unwrap()
                .contains("/nonexistent.img"),
        "{r}"
    );
    assert_eq!(
        code(&c.call("bdev_aio_create", json!({"name": "A3"}))),
        -32603
    );
    assert_eq!(
        code(&c.call("bdev_uring_create", json!({"name": "U1", "filename": img}))),
        -17
    );
    // The file grows; rescan picks it up.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(2 << 20)
        .unwrap();
    assert_eq!(
        c.call("bdev_aio_rescan", json!({"name": "A1"}))["result"],
        true
    );
    let b = c.call("bdev_get_bdevs", json!({"name": "A1"}));
    assert_eq!(b["result"][0]["num_blocks"], 512);
    assert_eq!(code(&c.call("bdev_aio_rescan", json!({"name": "U1"}))), -19);
    // Ours: io_submit calls of any size (0: all a poll found queued in one call).
    let r = c.call(
        "bdev_aio_create",
        json!({"name": "A4", "filename": img, "submit_batch": 0}),
    );
    assert_eq!(r["result"], "A4", "{r}");
    assert_eq!(
        code(&c.call(
            "bdev_aio_create",
            json!({"name": "A5", "filename": img, "submit_batch": -1})
        )),
        -32603
    );
    let saved = c.call("save_config", Value::Null);
    let params = |name: &str| {
        saved["result"]["subsystems"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["config"].as_array().into_iter().flatten())
            .find(|m| m["params"]["name"] == name)
            .map(|m| m["params"].clone())
    };
    assert!(
        params("A1").is_some_and(|p| p.get("submit_batch").is_none()),
        "the default is not written, so that SPDK can load the file: {saved}"
    );
    assert_eq!(
        params("A4").map(|p| p["submit_batch"].clone()),
        Some(json!(0)),
        "{saved}"
    );
    assert!(params("U1").is_some(), "{saved}");
    assert_eq!(
        c.call("bdev_aio_delete", json!({"name": "A4"}))["result"],
        true
    );
    assert_eq!(
        c.call("bdev_aio_delete", json!({"name": "A1"}))["result"],
        true
    );
    assert_eq!(
        c.call("bdev_uring_delete", json!({"name": "U1"}))["result"],
        true
    );
    assert_eq!(
        code(&c.call("bdev_uring_delete", json!({"name": "U1"}))),
        -19
    );
}

#[test]
fn nvme_methods_refuse_bad_params_with_spdks_codes() {
    let d = start("nvme", None);
    let mut c = RpcClient::connect(&d.sock);
    // Options: an action on timeout SPDK doesn't have, an option it doesn't know: its
    // decoder refuses both (-32603). An option SPDK has and we don't use is taken.
    let v = c.call(
        "bdev_nvme_set_options",
        json!({"timeout_us": 1000, "action_on_timeout": "sideways"}),
    );
    assert_eq!(code(&v), -32603, "{v}");
    let v = c.call("bdev_nvme_set_options", json!({"frobnicate": 1}));
    assert_eq!(code(&v), -32603, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("frobnicate"),
        "{v}"
    );
    let v = c.call(
        "bdev_nvme_attach_controller",
        json!({"name": "X", "trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": "1",
            "multipath": "sideways"}),
    );
    assert_eq!(code(&v), -32603, "{v}");
    assert_eq!(
        c.call(
            "bdev_nvme_set_options",
            json!({"timeout_us": 0, "action_on_timeout": "abort", "bdev_retry_count": 3})
        )["result"],
        true
    );
    // Attach: unsupported features refused by name; timeouts checked as SPDK does.
    for (extra, want) in [
        (json!({"psk": "NVMeTLSkey-1:01:x"}), "TLS"),
        (json!({"prchk_reftag": true}), "protection"),
        (
            json!({"ctrlr_loss_timeout_sec": 10, "reconnect_delay_sec": 0}),
            "reconnect_delay_sec",
        ),
        (json!({"trtype": "rdma"}), "not supported"),
        (json!({"trsvcid": "port"}), "not a port number"),
        (json!({"max_bdevs": 0}), "max_bdevs cannot be zero"),
    ] {
        let mut p = json!({"name": "X", "trtype": "tcp", "traddr": "127.0.0.1",
            "trsvcid": "1", "subnqn": "nqn.2024-01.io.x:y"});
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        let v = c.call("bdev_nvme_attach_controller", p);
        assert_eq!(code(&v), -22, "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(want),
            "{want}: {v}"
        );
    }
    // Extreme values are numbers like any other (no overflow, in this debug build).
    let v = c.call(
        "bdev_nvme_set_options",
        json!({"timeout_us": u64::MAX, "action_on_timeout": "reset"}),
    );
    assert_eq!(v["result"], true, "{v}");
    // A call with one option keeps the others (SPDK decodes over the current options).
    let v = c.call(
        "bdev_nvme_set_options",
        json!({"keep_alive_timeout_ms": 5000}),
    );
    assert_eq!(v["result"], true, "{v}");
    let saved = c.call("save_config", Value::Null);
    let o = saved["result"]["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["config"].as_array().unwrap())
        .find(|m| m["method"] == "bdev_nvme_set_options")
        .unwrap()["params"]
        .clone();
    assert_eq!(
        (
            &o["keep_alive_timeout_ms"],
            &o["timeout_us"],
            &o["action_on_timeout"]
        ),
        (&json!(5000), &json!(u64::MAX), &json!("reset")),
        "{o}"
    );
    let v = c.call(
        "bdev_nvme_attach_controller",
        json!({"name": "X", "trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": "1",
            "subnqn": "nqn.2024-01.io.x:y", "ctrlr_loss_timeout_sec": -1,
            "reconnect_delay_sec": u64::MAX, "fabrics_connect_timeout_us": u64::MAX}),
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("connecting to 127.0.0.1:1"),
        "{v}"
    );
    // Unknown controllers and discovery services.
    let v = c.call("bdev_nvme_reset_controller", json!({"name": "X"}));
    assert_eq!(code(&v), -19, "{v}");
    let v = c.call("bdev_nvme_stop_discovery", json!({"name": "X"}));
    assert_eq!(code(&v), -19, "{v}");
    let v = c.call("bdev_nvme_get_discovery_info", Value::Null);
    assert_eq!(v["result"], json!([]), "{v}");
    // Discovery that can't reach its controller: the call fails when it waits.
    let v = c.call(
        "bdev_nvme_start_discovery",
        json!({"name": "D", "trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": "1",
            "wait_for_attach": true}),
    );
    assert!(code(&v) < 0, "{v}");
    assert_eq!(
        c.call("bdev_nvme_get_discovery_info", Value::Null)["result"],
        json!([])
    );
    // The daemon still serves.
    assert!(c.call("spdk_get_version", Value::Null)["result"].is_object());
}

/// The discovery service's attach and detach path, against the null target (whose
/// discovery log lists its own subsystem on 127.0.0.1; the kernel target's log names
/// the guest's address behind QEMU's NAT, which the host can't reach).
#[test]
fn discovery_attaches_what_the_log_lists_and_detaches_it_on_stop() {
    let nqn = "nqn.2024-01.io.x:null";
    let addr = bdev_nvme::null_target::spawn(0, nqn).unwrap();
    let d = start("disc", None);
    let mut c = RpcClient::connect(&d.sock);
    let v = c.call(
        "bdev_nvme_start_discovery",
        json!({"name": "D", "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1",
            "trsvcid": addr.port().to_string(), "wait_for_attach": true}),
    );
    assert_eq!(v["result"], true, "{v}");
    let info = c.call("bdev_nvme_get_discovery_info", Value::Null);
    assert_eq!(info["result"][0]["ctrlrs"], json!(["D0"]), "{info}");
    let b = c.call("bdev_get_bdevs", json!({"name": "D0n1"}));
    assert_eq!(b["result"][0]["block_size"], 4096, "{b}");
    let ctrl = c.call("bdev_nvme_get_controllers", json!({"name": "D0"}));
    assert_eq!(
        ctrl["result"][0]["ctrlrs"][0]["trid"]["subnqn"], nqn,
        "{ctrl}"
    );
    // save_config restarts the service, not its controllers one by one.
    let cfg = c.call("save_config", Value::Null).to_string();
    assert!(cfg.contains("bdev_nvme_start_discovery"), "{cfg}");
    assert!(!cfg.contains("\"name\":\"D0\""), "{cfg}");
    let v = c.call("bdev_nvme_stop_discovery", json!({"name": "D"}));
    assert_eq!(v["result"], true, "{v}");
    let b = c.call("bdev_get_bdevs", Value::Null);
    assert_eq!(b["result"], json!([]), "{b}");
    let ctrl = c.call("bdev_nvme_get_controllers", Value::Null);
    assert_eq!(ctrl["result"], json!([]), "{ctrl}");
    // SPDK answers an unknown name with a positive EINVAL.
    let v = c.call("bdev_nvme_get_controllers", json!({"name": "D0"}));
    assert_eq!(code(&v), 22, "{v}");
    assert_eq!(v["error"]["message"], "Controller D0 does not exist");
    // Detach by path, as rpc.py bdev_nvme_detach_controller -t/-a/-s sends it: a path
    // that is not the controller's is -ENODEV and leaves it; its own path detaches it.
    let v = c.call(
        "bdev_nvme_attach_controller",
        json!({"name": "N", "trtype": "tcp", "traddr": "127.0.0.1",
            "trsvcid": addr.port().to_string(), "subnqn": nqn}),
    );
    assert_eq!(v["result"], json!(["Nn1"]), "{v}");
    let v = c.call(
        "bdev_nvme_detach_controller",
        json!({"name": "N", "trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": "1"}),
    );
    assert_eq!(code(&v), -19, "{v}");
    let b = c.call("bdev_get_bdevs", json!({"name": "Nn1"}));
    assert_eq!(b["result"][0]["name"], "Nn1", "{b}");
    let v = c.call(
        "bdev_nvme_detach_controller",
        json!({"name": "N", "trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1",
            "trsvcid": addr.port().to_string(), "subnqn": nqn}),
    );
    assert_eq!(v["result"], true, "{v}");
    assert_eq!(c.call("bdev_get_bdevs", Value::Null)["result"], json!([]));
}

/// Voluntary context switches (a sleep that ended) of every thread of process `pid`.
fn sleeps_ended(pid: u32) -> u64 {
    let mut n = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        for l in status.lines() {
            if let Some(v) = l.strip_prefix("voluntary_ctxt_switches:") {
                n += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    n
}

#[test]
fn in_interrupt_mode_an_idle_bdevd_sleeps_on_its_sockets_and_still_answers() {
    let d = start_with("intr", None, &["--interrupt-mode"]);
    let mut c = RpcClient::connect(&d.sock);
    // Each call wakes the reactor through the socket: fifty answered quickly.
    let t = std::time::Instant::now();
    for _ in 0..50 {
        assert_eq!(
            c.call("spdk_get_version", Value::Null)["result"]["fields"]["major"],
            24
        );
    }
    let r = c.call(
        "bdev_malloc_create",
        json!({"name": "M0", "num_blocks": 2048, "block_size": 512}),
    );
    assert_eq!(r["result"], "M0");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(2),
        "51 calls took {:?}",
        t.elapsed()
    );
    // Idle, with a client connected: the reactor wakes at most every 10 ms (its sleep
    // cap), not every millisecond as an RPC poller on a timer would.
    let pid = d.child.id();
    let before = sleeps_ended(pid);
    std::thread::sleep(std::time::Duration::from_secs(1));
    let woke = sleeps_ended(pid) - before;
    assert!(woke < 400, "{woke} wake-ups in an idle second");
    // And a new client still gets its answer.
    let mut c2 = RpcClient::connect(&d.sock);
    assert_eq!(
        c2.call("bdev_get_bdevs", json!({"name": "M0"}))["result"][0]["name"],
        "M0"
    );
    assert_eq!(
        c.call("spdk_get_version", Value::Null)["result"]["fields"]["major"],
        24
    );
}

/// `rpc.py save_config` as SPDK's script does it: `framework_get_subsystems`, then
/// `framework_get_config` for each.
fn rpc_py_save_config(c: &mut RpcClient) -> Value {
    let subs = c.call("framework_get_subsystems", Value::Null)["result"].clone();
    let mut out = Vec::new();
    for s in subs.as_array().unwrap() {
        let name = s["subsystem"].clone();
        let cfg = c.call("framework_get_config", json!({ "name": name }));
        assert!(cfg.get("error").is_none(), "{cfg}");
        out.push(json!({"subsystem": name, "config": cfg["result"]}));
    }
    json!({ "subsystems": out })
}

/// `rpc.py load_config` as SPDK's script does it: every method must be known to
/// `rpc_get_methods`; then those `rpc_get_methods {"current": true}` lists are called, the
/// others skipped. Returns the methods skipped.
fn rpc_py_load_config(c: &mut RpcClient, cfg: &Value) -> Vec<String> {
    let known = c.call("rpc_get_methods", json!({"include_aliases": false}))["result"].clone();
    let current = c.call(
        "rpc_get_methods",
        json!({"current": true, "include_aliases": false}),
    )["result"]
        .clone();
    let has = |l: &Value, m: &Value| l.as_array().unwrap().iter().any(|x| x == m);
    let mut skipped = Vec::new();
    for s in cfg["subsystems"].as_array().unwrap() {
        for e in s["config"].as_array().into_iter().flatten() {
            assert!(has(&known, &e["method"]), "unknown method {e}");
            if has(&current, &e["method"]) {
                let mut p = e["params"].clone();
                if p.is_null() {
                    p = Value::Null;
                }
                let v = c.call(e["method"].as_str().unwrap(), p);
                assert!(v.get("error").is_none(), "{e}: {v}");
            } else {
                skipped.push(e["method"].as_str().unwrap().to_string());
            }
        }
    }
    skipped
}

#[test]
fn rpc_py_save_and_load_config_flows() {
    let d = start("rpcpy", None);
    let mut c = RpcClient::connect(&d.sock);
    // Startup-only methods: known, not current, and -1 when called once running.
    let all = c.call("rpc_get_methods", Value::Null)["result"].clone();
    let current = c.call("rpc_get_methods", json!({"current": true}))["result"].clone();
    let has = |l: &Value, m: &str| l.as_array().unwrap().iter().any(|x| x == m);
    for m in [
        "bdev_set_options",
        "iobuf_set_options",
        "sock_impl_set_options",
    ] {
        assert!(has(&all, m) && !has(&current, m), "{m}: {all} / {current}");
    }
    for m in [
        "rpc_get_methods",
        "framework_get_config",
        "bdev_nvme_set_hotplug",
        "bdev_malloc_create",
    ] {
        assert!(has(&current, m), "{m}: {current}");
    }
    let v = c.call("bdev_set_options", json!({"bdev_io_pool_size": 1024}));
    assert_eq!(code(&v), -1, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Method may only be called before framework is initialized"),
        "{v}"
    );
    assert_eq!(
        code(&c.call("rpc_get_methods", json!({"bogus": 1}))),
        -32602
    );
    assert_eq!(
        code(&c.call("framework_get_subsystems", json!({"x": 1}))),
        -32602
    );
    let v = c.call("framework_get_config", json!({"name": "nvmf"}));
    assert_eq!(code(&v), -32602, "{v}");
    assert_eq!(v["error"]["message"], "Subsystem 'nvmf' not found", "{v}");
    assert_eq!(code(&c.call("framework_get_config", Value::Null)), -32602);
    assert_eq!(
        code(&c.call("bdev_nvme_set_hotplug", json!({"enable": true}))),
        -95
    );
    // A config as SPDK v24.09's save_config writes it, other subsystems and all.
    let spdk = json!({"subsystems": [
        {"subsystem": "keyring", "config": []},
        {"subsystem": "iobuf", "config": [
            {"method": "iobuf_set_options", "params": {"small_pool_count": 8192, "large_pool_count": 1024, "small_bufsize": 8192, "large_bufsize": 135168}}]},
        {"subsystem": "sock", "config": [
            {"method": "sock_set_default_impl", "params": {"impl_name": "posix"}},
            {"method": "sock_impl_set_options", "params": {"impl_name": "posix", "recv_buf_size": 2097152}}]},
        {"subsystem": "vmd", "config": []},
        {"subsystem": "accel", "config": [
            {"method": "accel_set_options", "params": {"small_cache_size": 128, "large_cache_size": 16, "task_count": 2048, "sequence_count": 2048, "buf_count": 2048}}]},
        {"subsystem": "bdev", "config": [
            {"method": "bdev_set_options", "params": {"bdev_io_pool_size": 65535, "bdev_io_cache_size": 256, "bdev_auto_examine": true, "iobuf_small_cache_size": 128, "iobuf_large_cache_size": 16}},
            {"method": "bdev_raid_set_options", "params": {"process_window_size_kb": 1024, "process_max_bandwidth_mb_sec": 0}},
            {"method": "bdev_nvme_set_options", "params": {"action_on_timeout": "none", "timeout_us": 0, "keep_alive_timeout_ms": 10000, "bdev_retry_count": 3}},
            {"method": "bdev_nvme_set_hotplug", "params": {"period_us": 100000, "enable": false}},
            {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 8192, "block_size": 512, "physical_block_size": 512, "uuid": "6b1c1bd9-9fba-4a0b-a5a3-0b2e3b8a3d11", "optimal_io_boundary": 0, "md_size": 0, "dif_type": 0, "dif_is_head_of_md": false, "dif_pi_format": 0}},
            {"method": "bdev_wait_for_examine"}]},
        {"subsystem": "scheduler", "config": [
            {"method": "framework_set_scheduler", "params": {"name": "static"}}]}
    ]});
    let mut skipped = rpc_py_load_config(&mut c, &spdk);
    skipped.sort();
    assert_eq!(
        skipped,
        [
            "accel_set_options",
            "bdev_set_options",
            "iobuf_set_options",
            "sock_impl_set_options",
            "sock_set_default_impl"
        ]
    );
    assert_eq!(
        c.call("bdev_get_bdevs", json!({"name": "Malloc0"}))["result"][0]["uuid"],
        "6b1c1bd9-9fba-4a0b-a5a3-0b2e3b8a3d11"
    );
    // The same file loads with -c too (other subsystems skipped with a warning).
    let f = tmp("spdk-saved.json");
    std::fs::write(&f, spdk.to_string()).unwrap();
    let d2 = start("rpcpy2", Some(&f));
    let mut c2 = RpcClient::connect(&d2.sock);
    assert_eq!(
        c2.call("bdev_get_bdevs", json!({"name": "Malloc0"}))["result"][0]["num_blocks"],
        8192
    );
    // rpc.py save_config's assembly is our save_config, and loads back the same bdevs.
    let saved = rpc_py_save_config(&mut c);
    let ours = c.call("save_config", Value::Null)["result"].clone();
    let bdev = |v: &Value| {
        v["subsystems"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["subsystem"] == "bdev")
            .unwrap()["config"]
            .clone()
    };
    assert_eq!(bdev(&saved), bdev(&ours));
    let f = tmp("rpcpy-saved.json");
    std::fs::write(&f, saved.to_string()).unwrap();
    let d3 = start("rpcpy3", Some(&f));
    let mut c3 = RpcClient::connect(&d3.sock);
    assert_eq!(
        c3.call("bdev_get_bdevs", Value::Null)["result"],
        c.call("bdev_get_bdevs", Value::Null)["result"]
    );
    for d in [d, d2, d3] {
        assert!(d.terminate().success());
    }
}

#[test]
fn bdev_info_null_resize_and_waiting_for_a_bdev() {
    let d = start("info", None);
    let mut c = RpcClient::connect(&d.sock);
    let r = c.call(
        "bdev_null_create",
        json!({"name": "N0", "num_blocks": 2048, "block_size": 4096}),
    );
    assert_eq!(r["result"], "N0", "{r}");
    let b = c.call("bdev_get_bdevs", json!({"name": "N0"}))["result"][0].clone();
    let io = b["supported_io_types"].as_object().unwrap();
    assert_eq!(io.len(), 20, "every type SPDK lists: {b}");
    assert_eq!(
        (&io["read"], &io["unmap"], &io["abort"]),
        (&json!(true), &json!(false), &json!(false))
    );
    assert!(b.get("claim_type").is_none(), "{b}");
    let r = c.call(
        "bdev_passthru_create",
        json!({"base_bdev_name": "N0", "name": "P0"}),
    );
    assert_eq!(r["result"], "P0", "{r}");
    let b = c.call("bdev_get_bdevs", json!({"name": "N0"}))["result"][0].clone();
    assert_eq!(
        (&b["claimed"], &b["claim_type"]),
        (&json!(true), &json!("exclusive_write")),
        "{b}"
    );
    // bdev_null_resize: new_size in MiB; never smaller.
    let r = c.call("bdev_null_resize", json!({"name": "N0", "new_size": 16}));
    assert_eq!(r["result"], true, "{r}");
    let b = c.call("bdev_get_bdevs", json!({"name": "N0"}))["result"][0].clone();
    assert_eq!(b["num_blocks"], 4096, "{b}");
    let r = c.call("bdev_null_resize", json!({"name": "N0", "new_size": 4}));
    assert_eq!(code(&r), -22, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("must not be smaller"),
        "{r}"
    );
    assert_eq!(
        code(&c.call("bdev_null_resize", json!({"name": "P0", "new_size": 32}))),
        -19
    );
    assert_eq!(
        code(&c.call("bdev_uring_rescan", json!({"name": "N0"}))),
        -19
    );
    // bdev_get_bdevs with a timeout waits for the bdev to appear (SPDK's waitforbdev).
    let sock = d.sock.clone();
    let maker = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        RpcClient::connect(&sock).call(
            "bdev_malloc_create",
            json!({"name": "Late", "num_blocks": 256, "block_size": 512}),
        )
    });
    let t = std::time::Instant::now();
    let b = c.call("bdev_get_bdevs", json!({"name": "Late", "timeout": 5000}));
    assert_eq!(b["result"][0]["name"], "Late", "{b}");
    assert!(
        t.elapsed() >= std::time::Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(maker.join().unwrap()["result"], "Late");
    let t = std::time::Instant::now();
    let b = c.call("bdev_get_bdevs", json!({"name": "Never", "timeout": 200}));
    assert_eq!(code(&b), -19, "{b}");
    assert!(
        t.elapsed() >= std::time::Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    assert!(d.terminate().success());
}

#[test]
fn log_methods_change_what_is_printed() {
    let mut d = start("log", None);
    let mut c = RpcClient::connect(&d.sock);
    assert_eq!(
        c.call("log_get_print_level", Value::Null)["result"],
        "WARNING"
    );
    assert_eq!(
        c.call("log_get_flags", Value::Null)["result"]["bdev"],
        false
    );
    assert_eq!(
        c.call("log_set_print_level", json!({"level": "debug"}))["result"],
        true
    );
    assert_eq!(
        c.call("log_get_print_level", Value::Null)["result"],
        "DEBUG"
    );
    assert_eq!(
        c.call("log_set_flag", json!({"flag": "bdev"}))["result"],
        true
    );
    assert_eq!(c.call("log_get_flags", Value::Null)["result"]["bdev"], true);
    let cycle = |c: &mut RpcClient, name: &str| {
        let r = c.call(
            "bdev_malloc_create",
            json!({"name": name, "num_blocks": 64, "block_size": 512}),
        );
        assert_eq!(r["result"], name, "{r}");
        assert_eq!(
            c.call("bdev_malloc_delete", json!({"name": name}))["result"],
            true
        );
    };
    cycle(&mut c, "LogM1");
    assert_eq!(
        c.call("log_clear_flag", json!({"flag": "bdev"}))["result"],
        true
    );
    cycle(&mut c, "LogM2");
    let v = c.call("log_set_flag", json!({"flag": "nope"}));
    assert_eq!(
        (code(&v), &v["error"]["message"]),
        (-32602, &json!("invalid log flag"))
    );
    let v = c.call("log_set_print_level", json!({"level": "LOUD"}));
    assert_eq!(
        (code(&v), &v["error"]["message"]),
        (-32602, &json!("invalid log level"))
    );
    // As SPDK's: names in any case, and prefix patterns.
    assert_eq!(
        c.call("log_set_flag", json!({"flag": "VBDEV_*"}))["result"],
        true
    );
    let f = c.call("log_get_flags", Value::Null)["result"].clone();
    assert_eq!(
        (&f["vbdev_delay"], &f["vbdev_passthru"], &f["bdev_raid"]),
        (&json!(true), &json!(true), &json!(false)),
        "{f}"
    );
    assert_eq!(
        c.call("log_clear_flag", json!({"flag": "vbdev_*"}))["result"],
        true
    );
    assert_eq!(
        c.call("log_set_level", json!({"level": "ERROR"}))["result"],
        true
    );
    assert_eq!(c.call("log_get_level", Value::Null)["result"], "ERROR");
    let mut err = d.child.stderr.take().unwrap();
    assert!(d.terminate().success());
    let mut out = String::new();
    std::io::Read::read_to_string(&mut err, &mut out).unwrap();
    // The bdev layer's debug messages print only while the flag is set.
    assert!(out.contains("LogM1"), "{out}");
    assert!(!out.contains("LogM2"), "{out}");
}

#[test]
fn with_auto_examine_off_only_bdev_examine_lets_modules_claim() {
    let cfg = tmp("no-examine.json");
    std::fs::write(
        &cfg,
        json!({"subsystems": [{"subsystem": "bdev", "config": [
            {"method": "bdev_set_options", "params": {"bdev_auto_examine": false}},
            {"method": "bdev_passthru_create", "params": {"base_bdev_name": "B0", "name": "P0"}},
            {"method": "bdev_passthru_create", "params": {"base_bdev_name": "B1", "name": "P1"}}
        ]}]})
        .to_string(),
    )
    .unwrap();
    let d = start("noexamine", Some(&cfg));
    let mut c = RpcClient::connect(&d.sock);
    let names = |c: &mut RpcClient| -> Vec<String> {
        c.call("bdev_get_bdevs", Value::Null)["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["name"].as_str().unwrap().to_string())
            .collect()
    };
    let mk = |c: &mut RpcClient, n: &str| {
        let r = c.call(
            "bdev_malloc_create",
            json!({"name": n, "num_blocks": 64, "block_size": 512}),
        );
        assert_eq!(r["result"], n, "{r}");
    };
    // B0 appears: nobody examines it, so the passthru waiting for it is not built.
    mk(&mut c, "B0");
    assert_eq!(names(&mut c), ["B0"]);
    // bdev_examine on an existing bdev examines it now; on a name not yet there, when
    // it registers.
    assert_eq!(
        c.call("bdev_examine", json!({"name": "B0"}))["result"],
        true
    );
    assert_eq!(
        c.call("bdev_examine", json!({"name": "B1"}))["result"],
        true
    );
    mk(&mut c, "B1");
    let mut n = names(&mut c);
    n.sort();
    assert_eq!(n, ["B0", "B1", "P0", "P1"]);
    assert_eq!(code(&c.call("bdev_examine", json!({"name": "B1"}))), -17);
    // The allow list is saved right after the options.
    let saved = c.call("save_config", Value::Null)["result"].clone();
    let cfgs = saved["subsystems"][0]["config"].as_array().unwrap().clone();
    assert_eq!(
        cfgs[1],
        json!({"method": "bdev_examine", "params": {"name": "B0"}})
    );
    assert_eq!(
        cfgs[2],
        json!({"method": "bdev_examine", "params": {"name": "B1"}})
    );
    assert!(d.terminate().success());
    // With auto examine on (the default), bdev_examine is SPDK's -EINVAL.
    let d = start("examine-on", None);
    let mut c = RpcClient::connect(&d.sock);
    let v = c.call("bdev_examine", json!({"name": "X"}));
    assert_eq!(code(&v), -22, "{v}");
    assert!(d.terminate().success());
}

/// The keys of a JSON object, sorted.
fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect();
    k.sort();
    k
}

#[test]
fn spdk_tops_methods_describe_reactors_threads_and_pollers() {
    let d = start_with("top", None, &["-m", "0x3"]);
    let mut c = RpcClient::connect(&d.sock);
    let r = c.call("framework_get_reactors", Value::Null)["result"].clone();
    assert!(r["tick_rate"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["pid"], d.child.id(), "{r}");
    let reactors = r["reactors"].as_array().unwrap().clone();
    let mut lcores: Vec<u64> = reactors
        .iter()
        .map(|x| x["lcore"].as_u64().unwrap())
        .collect();
    lcores.sort();
    assert_eq!(lcores, [0, 1], "{r}");
    // spdk_top decodes these entries strictly: exactly SPDK's keys.
    for x in &reactors {
        assert_eq!(
            keys(x),
            [
                "busy",
                "idle",
                "in_interrupt",
                "irq",
                "lcore",
                "lw_threads",
                "sys",
                "tid",
                "usr"
            ],
            "{x}"
        );
        assert!(x["tid"].as_u64().unwrap() > 0, "{x}");
        assert_eq!(x["in_interrupt"], false);
        for t in x["lw_threads"].as_array().unwrap() {
            assert_eq!(keys(t), ["cpumask", "elapsed", "id", "name"], "{t}");
        }
    }
    let r0 = reactors.iter().find(|x| x["lcore"] == 0).unwrap();
    assert!(
        !r0["lw_threads"].as_array().unwrap().is_empty(),
        "the app thread: {r0}"
    );
    let total = |v: &Value| v["busy"].as_u64().unwrap() + v["idle"].as_u64().unwrap();
    let before = total(r0);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let r = c.call("framework_get_reactors", Value::Null)["result"].clone();
    let r0 = r["reactors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["lcore"] == 0)
        .unwrap()
        .clone();
    let hz = r["tick_rate"].as_u64().unwrap();
    assert!(total(&r0) >= before + hz / 20, "{before} -> {r0}");

    let s = c.call("thread_get_stats", Value::Null)["result"].clone();
    let threads = s["threads"].as_array().unwrap();
    assert!(!threads.is_empty(), "{s}");
    for t in threads {
        assert_eq!(
            keys(t),
            [
                "active_pollers_count",
                "busy",
                "cpumask",
                "id",
                "idle",
                "name",
                "paused_pollers_count",
                "timed_pollers_count"
            ],
            "{t}"
        );
    }
    let app = threads.iter().find(|t| t["cpumask"] == "1").unwrap();
    assert!(app["busy"].as_u64().unwrap() + app["idle"].as_u64().unwrap() > 0);

    let p = c.call("thread_get_pollers", Value::Null)["result"].clone();
    let pollers: Vec<Value> = p["threads"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| {
            ["active_pollers", "timed_pollers", "paused_pollers"]
                .iter()
                .flat_map(|k| t[*k].as_array().unwrap().clone())
                .collect::<Vec<_>>()
        })
        .collect();
    // The RPC server polls every millisecond: a timed poller that has run.
    let rpc = pollers
        .iter()
        .find(|x| x["name"] == "rpc_server")
        .unwrap_or_else(|| panic!("{p}"));
    assert_eq!(
        keys(rpc),
        [
            "busy_count",
            "id",
            "name",
            "period_ticks",
            "run_count",
            "state"
        ],
        "{rpc}"
    );
    assert_eq!(rpc["state"], "waiting");
    assert!(rpc["run_count"].as_u64().unwrap() > 10, "{rpc}");
    let ch = c.call("thread_get_io_channels", Value::Null)["result"].clone();
    for t in ch["threads"].as_array().unwrap() {
        // SPDK's entries here have no id.
        assert_eq!(keys(t), ["io_channels", "name"], "{t}");
    }
    assert_eq!(code(&c.call("thread_get_stats", json!({"x": 1}))), -32602);
    assert!(d.terminate().success());
}
