//! Every method bdevd serves, called with params made up at random (keys the methods use,
//! values of every JSON type and of awkward sizes) and with malformed shapes: each call gets
//! a JSON-RPC answer, the daemon keeps serving, and it still shuts down in order. Input from
//! outside the process never panics it.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use bdev_tests::cli::{Daemon, RpcClient};
use serde_json::{Map, Value, json};

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bdevd-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// xorshift64: the same calls on every run, so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
        &from[self.below(from.len())]
    }
}

/// Parameter names of the methods served (`timeout` is left out: a wait for a bdev that
/// never appears is no fault; `trtype` too: without it no NVMe connection is attempted).
const KEYS: &[&str] = &[
    "name",
    "names",
    "base_bdev_name",
    "base_name",
    "base_bdevs",
    "base_bdev",
    "raid_bdev",
    "raid_level",
    "strip_size_kb",
    "superblock",
    "category",
    "num_blocks",
    "block_size",
    "new_size",
    "uuid",
    "filename",
    "readonly",
    "fallocate",
    "io_type",
    "error_type",
    "num",
    "queue_depth",
    "corrupt_offset",
    "corrupt_value",
    "delay_bdev_name",
    "latency_type",
    "latency_us",
    "avg_read_latency",
    "p99_read_latency",
    "avg_write_latency",
    "p99_write_latency",
    "enable",
    "opc",
    "mode",
    "per_channel",
    "rw_ios_per_sec",
    "rw_mbytes_per_sec",
    "r_mbytes_per_sec",
    "w_mbytes_per_sec",
    "key_name",
    "key",
    "key2",
    "cipher",
    "traddr",
    "trsvcid",
    "subnqn",
    "current",
    "flag",
    "level",
    "enabled",
    "category",
    "process_window_size_kb",
    "bdev_io_pool_size",
    "bdev_io_cache_size",
    "bdev_auto_examine",
    "action_on_timeout",
    "reset_mode",
];

const STRINGS: &[&str] = &[
    "",
    "Malloc0",
    "Null0",
    "PT0",
    "nope",
    "raid0",
    "raid1",
    "concat",
    "read",
    "write",
    "failure",
    "corrupt",
    "avg_read",
    "all",
    "maxmin",
    "online",
    "AES_XTS",
    "00112233445566778899aabbccddeeff",
    "/",
    "/nonexistent/file",
    "-1",
    "\u{0}",
    "é\u{fffd}\u{1f600}",
];

fn value(r: &mut Rng, depth: u32) -> Value {
    match r.below(if depth > 2 { 6 } else { 9 }) {
        0 => Value::Null,
        1 => Value::Bool(r.below(2) == 1),
        2 => json!(*r.pick(&[
            0i64,
            1,
            7,
            512,
            4096,
            65536,
            -1,
            -4096,
            i64::MIN,
            i64::MAX,
            1 << 32,
            1 << 53
        ])),
        3 => json!(*r.pick(&[u64::MAX, u64::MAX / 512, 1 << 40])),
        4 => json!(*r.pick(&[0.5f64, -0.0, 1e300, 4096.0])),
        5 => match r.below(4) {
            0 => Value::String("x".repeat(5000)),
            _ => Value::String((*r.pick(STRINGS)).to_string()),
        },
        6 => Value::Array((0..r.below(4)).map(|_| value(r, depth + 1)).collect()),
        _ => Value::Object(object(r, depth + 1)),
    }
}

/// Names the calls share, so that they meet: duplicates, claimed bases, deletes of what
/// another call built.
const NAMES: &[&str] = &[
    "Malloc0",
    "Null0",
    "PT0",
    "X0",
    "X1",
    "X2",
    "X3",
    "EE_Malloc0",
    "R0",
    "k",
];

/// Valid params of the methods that build or change something: the starting point of
/// most calls, which then lose a key, get a wrong or extreme value or an unknown key.
fn template(m: &str, r: &mut Rng, img: &str) -> Option<Value> {
    let n = *r.pick(NAMES);
    let b = *r.pick(NAMES);
    Some(match m {
        "bdev_malloc_create" => json!({"name": n, "num_blocks": 64, "block_size": 512}),
        "bdev_null_create" => json!({"name": n, "num_blocks": 64, "block_size": 4096}),
        "bdev_null_resize" => json!({"name": n, "new_size": 1}),
        "bdev_passthru_create" => json!({"base_bdev_name": b, "name": n}),
        "bdev_error_create" => json!({"base_name": b}),
        "bdev_error_inject_error" => {
            json!({"name": n, "io_type": "read", "error_type": "failure", "num": 1})
        }
        "bdev_delay_create" => json!({"base_bdev_name": b, "name": n,
            "avg_read_latency": 1, "p99_read_latency": 2,
            "avg_write_latency": 1, "p99_write_latency": 2}),
        "bdev_delay_update_latency" => {
            json!({"delay_bdev_name": n, "latency_type": "avg_read", "latency_us": 3})
        }
        "bdev_raid_create" => {
            json!({"name": n, "raid_level": *r.pick(&["raid0", "raid1", "concat"]),
            "base_bdevs": [b, *r.pick(NAMES)], "strip_size_kb": 4,
            "superblock": r.below(2) == 1})
        }
        "bdev_raid_add_base_bdev" => json!({"raid_bdev": n, "base_bdev": b}),
        "bdev_raid_get_bdevs" => json!({"category": "all"}),
        "bdev_aio_create" => json!({"name": n, "filename": img, "block_size": 512}),
        "bdev_uring_create" => json!({"name": n, "filename": img}),
        "bdev_aio_rescan" | "bdev_uring_rescan" | "bdev_examine" | "bdev_get_histogram" => {
            json!({"name": n})
        }
        "accel_crypto_key_create" => json!({"name": n, "cipher": "AES_XTS",
            "key": "00112233445566778899aabbccddeeff", "key2": "ffeeddccbbaa99887766554433221100"}),
        "accel_crypto_key_destroy" => json!({"key_name": n}),
        "bdev_crypto_create" => json!({"base_bdev_name": b, "name": n, "key_name": *r.pick(NAMES)}),
        "bdev_set_qos_limit" => json!({"name": n, "rw_ios_per_sec": 1000, "r_mbytes_per_sec": 1}),
        "bdev_enable_histogram" => json!({"name": n, "enable": r.below(2) == 1}),
        "bdev_get_iostat" => json!({"name": n, "per_channel": r.below(2) == 1}),
        "bdev_reset_iostat" => json!({"name": n, "mode": "maxmin"}),
        "log_set_flag" | "log_clear_flag" => {
            json!({"flag": *r.pick(&["bdev", "all", "nvme", "x"])})
        }
        "log_set_level" | "log_set_print_level" => {
            json!({"level": *r.pick(&["ERROR", "NOTICE", "debug", "7"])})
        }
        m if m.ends_with("_delete") || m == "bdev_raid_remove_base_bdev" => json!({"name": n}),
        _ => return None,
    })
}

/// `t` as it is (half the time), or with one or two changes.
fn mutate(r: &mut Rng, t: Value) -> Value {
    let Value::Object(mut o) = t else { return t };
    let changes = [0, 0, 1, 2][r.below(4)];
    for _ in 0..changes {
        let keys: Vec<String> = o.keys().cloned().collect();
        match r.below(3) {
            0 if !keys.is_empty() => {
                o.remove(r.pick(&keys));
            }
            1 if !keys.is_empty() => {
                let k = r.pick(&keys).clone();
                let v = value(r, 1);
                o.insert(k, v);
            }
            _ => {
                let v = value(r, 1);
                o.insert((*r.pick(KEYS)).to_string(), v);
            }
        }
    }
    Value::Object(o)
}

/// Keeps a malloc bdev the calls make small and named: a size drawn at random can be
/// gigabytes of zeroed memory (a test of the machine, not of the daemon), and unnamed
/// ones would pile up.
fn bounded(method: &str, params: Value, r: &mut Rng) -> Value {
    let Value::Object(mut o) = params else {
        return params;
    };
    if method == "bdev_malloc_create" {
        let n = o.get("num_blocks").and_then(Value::as_u64).unwrap_or(0);
        let bs = o.get("block_size").and_then(Value::as_u64).unwrap_or(0);
        if n.saturating_mul(bs) > 16 << 20 {
            o.insert("num_blocks".into(), json!(64));
        }
        if !o.contains_key("name") {
            o.insert("name".into(), json!(*r.pick(NAMES)));
        }
    }
    Value::Object(o)
}

fn object(r: &mut Rng, depth: u32) -> Map<String, Value> {
    (0..r.below(6))
        .map(|_| ((*r.pick(KEYS)).to_string(), value(r, depth)))
        .collect()
}

#[test]
fn every_method_answers_made_up_params_and_the_daemon_keeps_serving() {
    let img = tmp("a.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let cfg = tmp("fuzz.json");
    std::fs::write(
        &cfg,
        r#"{"subsystems":[{"subsystem":"bdev","config":[
            {"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":256,"block_size":4096}},
            {"method":"bdev_malloc_create","params":{"name":"Malloc1","num_blocks":256,"block_size":4096}},
            {"method":"bdev_null_create","params":{"name":"Null0","num_blocks":1024,"block_size":512}},
            {"method":"bdev_passthru_create","params":{"base_bdev_name":"Malloc1","name":"PT0"}}]}]}"#,
    )
    .unwrap();
    let sock = tmp("fuzz.sock");
    let log = tmp("fuzz.log");
    let child = Command::new(env!("CARGO_BIN_EXE_bdevd"))
        .arg("-r")
        .arg(&sock)
        .arg("-c")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut d = Daemon::new(child, sock);
    let mut c = RpcClient::connect(&d.sock);
    let methods: Vec<String> = c.call("rpc_get_methods", Value::Null)["result"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m.as_str().map(str::to_string))
        // Its one purpose is to end the daemon; its refusals are tested elsewhere.
        .filter(|m| m != "spdk_kill_instance")
        .collect();
    assert!(methods.len() > 60, "{methods:?}");
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let mut calls = 0;
    let img = img.to_str().unwrap().to_string();
    for round in 0..60 {
        for m in &methods {
            if round == 7 {
                // An explicit `"params": null` (the client leaves a null out).
                let req =
                    json!({"jsonrpc": "2.0", "method": m, "id": "null-params", "params": null});
                let v = c
                    .raw(&serde_json::to_vec(&req).unwrap())
                    .unwrap_or_else(|| panic!("{m} with params null: connection closed"));
                calls += 1;
                let answered = v.get("result").is_some()
                    || (v["error"]["code"].is_i64() && v["error"]["message"].is_string());
                assert!(answered && v["id"] == "null-params", "{m} params null: {v}");
                continue;
            }
            let params = match round {
                0 => Value::Null,
                1 => json!({}),
                2 => json!([]),
                3 => json!([1, "two", null]),
                4 => json!({"name": null}),
                5 => json!({"name": "x".repeat(100_000)}),
                6 => json!({"name": "Malloc0", "filename": img}),
                _ => match template(m, &mut r, &img) {
                    Some(t) if round % 4 != 0 => mutate(&mut r, t),
                    _ => Value::Object(object(&mut r, 0)),
                },
            };
            let params = bounded(m, params, &mut r);
            let v = c.call(m, params.clone());
            calls += 1;
            if std::env::var_os("FUZZ_TRACE").is_some() {
                eprintln!("{m} {params} -> {v}");
            }
            let answered = v.get("result").is_some()
                || (v["error"]["code"].is_i64() && v["error"]["message"].is_string());
            assert!(answered, "{m} {params}: {v}");
        }
        // Still serving between rounds.
        let v = c.call("spdk_get_version", Value::Null);
        assert!(v["result"]["version"].is_string(), "round {round}: {v}");
    }
    assert!(calls > 4000);
    // Whatever the calls built or broke, the daemon still stops in order.
    assert!(d.child.try_wait().unwrap().is_none(), "bdevd died");
    Command::new("kill")
        .args(["-TERM", &d.child.id().to_string()])
        .status()
        .unwrap();
    let st = d.child.wait().unwrap();
    let err = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!err.contains("panicked"), "{err}");
    assert!(st.success(), "bdevd exit {st:?}; its log:\n{err}");
    let _ = std::fs::remove_dir_all(std::path::Path::new(&img).parent().unwrap());
}
