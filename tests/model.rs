//! Every stack of modules against a model of what it should hold: seeded random batches of
//! reads, writes (one buffer or several, of any length and alignment), write_zeroes,
//! unmaps and flushes, several in flight at once on both threads of the deterministic
//! harness, through malloc, passthru, error, delay, crypto, raid0, raid1 and concat
//! bdevs and stacks of them. Each read must return what the model says; each I/O must
//! succeed. This is where the layer's services (splits on boundaries and strips, in-place
//! forwarding, write_zeroes emulation, per-thread channels) meet real modules.

use std::rc::Rc;

use bdev_core::config::Methods;
use bdev_core::testing::Harness;
use bdev_tests::model;
use serde_json::{Value, json};

fn harness() -> (Harness, Rc<Methods>) {
    let h = Harness::new(2);
    let m = h.run_on(0, || {
        let mut m = Methods::new();
        bdev_malloc::register(&mut m).unwrap();
        bdev_vbdev::register(&mut m).unwrap();
        bdev_raid::register(&mut m).unwrap();
        bdev_crypto::register(&mut m).unwrap();
        bdev_aio::register(&mut m).unwrap();
        m
    });
    (h, Rc::new(m))
}

fn call(h: &Harness, m: &Rc<Methods>, method: &str, params: Value) -> Value {
    let (m2, name) = (m.clone(), method.to_string());
    h.block_on(0, async move { m2.call(&name, Some(params)).await })
        .unwrap_or_else(|e| panic!("{method}: {e}"))
}

/// [`call`] for a method that waits on the harness clock (I/O through a delay bdev).
fn call_timed(h: &Harness, m: &Rc<Methods>, method: &str, params: Value) -> Value {
    let (m2, name) = (m.clone(), method.to_string());
    let jh = h.run_on(0, || {
        bdev_core::thread::spawn_local(async move { m2.call(&name, Some(params)).await }).unwrap()
    });
    for _ in 0..100_000 {
        h.poll_threads();
        if let Some(r) = jh.try_take() {
            return r.unwrap_or_else(|e| panic!("{method}: {e}"));
        }
        h.advance_time_us(10);
    }
    panic!("{method}: no answer");
}

fn malloc(h: &Harness, m: &Rc<Methods>, name: &str, blocks: u64, bs: u32, boundary: u32) {
    call(
        h,
        m,
        "bdev_malloc_create",
        json!({"name": name, "num_blocks": blocks, "block_size": bs,
            "optimal_io_boundary": boundary}),
    );
}

#[test]
fn every_stack_reads_back_what_the_model_holds() {
    let (h, m) = harness();
    // malloc alone, with a boundary to split on, and with 4 KiB blocks.
    malloc(&h, &m, "M512", 2048, 512, 16);
    malloc(&h, &m, "M4K", 512, 4096, 0);
    // The small virtual bdevs, each over its own malloc.
    malloc(&h, &m, "B_pt", 1024, 512, 0);
    call(
        &h,
        &m,
        "bdev_passthru_create",
        json!({"base_bdev_name": "B_pt", "name": "PT"}),
    );
    malloc(&h, &m, "B_ee", 1024, 512, 0);
    call(&h, &m, "bdev_error_create", json!({"base_name": "B_ee"}));
    malloc(&h, &m, "B_dl", 1024, 512, 0);
    call(
        &h,
        &m,
        "bdev_delay_create",
        json!({"base_bdev_name": "B_dl", "name": "DL", "avg_read_latency": 5,
            "p99_read_latency": 20, "avg_write_latency": 5, "p99_write_latency": 20}),
    );
    malloc(&h, &m, "B_cr", 1024, 512, 0);
    call(
        &h,
        &m,
        "accel_crypto_key_create",
        json!({"name": "k", "cipher": "AES_XTS", "key": "00112233445566778899aabbccddeeff",
            "key2": "ffeeddccbbaa99887766554433221100"}),
    );
    call(
        &h,
        &m,
        "bdev_crypto_create",
        json!({"base_bdev_name": "B_cr", "name": "CR", "key_name": "k"}),
    );
    // RAIDs: strips crossed by most I/Os; members of different sizes for concat.
    for i in 0..3 {
        malloc(&h, &m, &format!("R0_{i}"), 512, 512, 0);
    }
    call(
        &h,
        &m,
        "bdev_raid_create",
        json!({"name": "R0", "raid_level": "raid0", "strip_size_kb": 4,
            "base_bdevs": ["R0_0", "R0_1", "R0_2"]}),
    );
    malloc(&h, &m, "C_a", 300, 512, 0);
    malloc(&h, &m, "C_b", 500, 512, 0);
    call(
        &h,
        &m,
        "bdev_raid_create",
        json!({"name": "CC", "raid_level": "concat", "strip_size_kb": 4,
            "base_bdevs": ["C_a", "C_b"]}),
    );
    malloc(&h, &m, "R1_a", 4096, 512, 0);
    malloc(&h, &m, "R1_b", 4096, 512, 0);
    call(
        &h,
        &m,
        "bdev_raid_create",
        json!({"name": "R1", "raid_level": "raid1", "base_bdevs": ["R1_a", "R1_b"],
            "superblock": true}),
    );
    for i in 0..2 {
        malloc(&h, &m, &format!("RK_{i}"), 256, 4096, 0);
    }
    call(
        &h,
        &m,
        "bdev_raid_create",
        json!({"name": "RK", "raid_level": "raid0", "strip_size_kb": 16,
            "base_bdevs": ["RK_0", "RK_1"]}),
    );
    // QoS holding I/O back (10 per 1 ms timeslice, batches of up to 8 of any size), with
    // a latency histogram on: the slow route, queued and released on the clock.
    malloc(&h, &m, "MQ", 1024, 512, 0);
    call(
        &h,
        &m,
        "bdev_set_qos_limit",
        json!({"name": "MQ", "rw_ios_per_sec": 10000}),
    );
    call(
        &h,
        &m,
        "bdev_enable_histogram",
        json!({"name": "MQ", "enable": true}),
    );
    // Crypto over raid0: each strip's piece encrypted with its own LBAs.
    malloc(&h, &m, "CR0_a", 512, 512, 0);
    malloc(&h, &m, "CR0_b", 512, 512, 0);
    call(
        &h,
        &m,
        "bdev_raid_create",
        json!({"name": "CR0", "raid_level": "raid0", "strip_size_kb": 4,
            "base_bdevs": ["CR0_a", "CR0_b"]}),
    );
    call(
        &h,
        &m,
        "bdev_crypto_create",
        json!({"base_bdev_name": "CR0", "name": "CRR", "key_name": "k"}),
    );
    // A stack: passthru over raid0 over (passthru over malloc, malloc).
    malloc(&h, &m, "S_a", 512, 512, 0);
    malloc(&h, &m, "S_b", 512, 512, 0);
    call(
        &h,
        &m,
        "bdev_passthru_create",
        json!({"base_bdev_name": "S_a", "name": "S_pa"}),
    );
    call(
        &h,
        &m,
        "bdev_raid_create",
        json!({"name": "S_r", "raid_level": "raid0", "strip_size_kb": 8,
            "base_bdevs": ["S_pa", "S_b"]}),
    );
    call(
        &h,
        &m,
        "bdev_passthru_create",
        json!({"base_bdev_name": "S_r", "name": "S"}),
    );

    // Files through Linux AIO and io_uring: O_DIRECT, so the buffers aligned to 8 go
    // through the bounce service.
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let mut files = Files(Vec::new());
    let mut with_files = Vec::new();
    for (method, name) in [("bdev_aio_create", "AIO"), ("bdev_uring_create", "URING")] {
        let f = dir.join(format!("model-{name}-{}.img", std::process::id()));
        std::fs::write(&f, vec![0u8; 1 << 20]).unwrap();
        let p = json!({"name": name, "filename": f, "block_size": 512});
        let (m2, method2) = (m.clone(), method.to_string());
        match h.block_on(0, async move { m2.call(&method2, Some(p)).await }) {
            Ok(_) => with_files.push((name, true)),
            // No O_DIRECT on this file system, or no io_uring in this kernel.
            Err(e) => eprintln!("SKIPPED the {name} stack: {e}"),
        }
        files.0.push(f);
    }
    let mut stacks = vec![
        ("M512", true),
        ("M4K", true),
        ("PT", true),
        ("EE_B_ee", true),
        ("DL", true),
        // Zeroed ciphertext (never written, or unmapped) decrypts to noise, as in SPDK.
        ("CR", false),
        ("R0", true),
        ("CC", true),
        ("R1", true),
        ("RK", true),
        ("S", true),
        ("MQ", true),
        ("CRR", false),
    ];
    stacks.extend(with_files);
    for (i, (name, zeroed)) in stacks.into_iter().enumerate() {
        model::run(
            &h,
            name,
            0x2545_f491_4f6c_dd1d ^ (i as u64 + 1),
            400,
            zeroed,
        );
    }
    drop(files);
}

/// Files removed when dropped, however the test ends.
struct Files(Vec<std::path::PathBuf>);

impl Drop for Files {
    fn drop(&mut self) {
        for f in self.0.drain(..) {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// Reads `n` blocks of `name` from `at` (opened read-only, so a claimed member too).
fn read_direct(h: &Harness, name: &str, at: u64, n: u64) -> Vec<u8> {
    let name = name.to_string();
    h.block_on(0, async move {
        let d = bdev_core::bdev::Desc::open(&name, false, |_| {}).unwrap();
        let ch = d.get_io_channel().unwrap();
        let bs = d.bdev().block_len() as usize;
        let buf = bdev_core::dma::DmaBuf::page_aligned(n as usize * bs).unwrap();
        d.read_blocks(&ch, buf, at, n).await.unwrap().to_vec()
    })
}

/// raid1 under the model while one member is taken out and a new one is added and
/// rebuilt, window by window, with writes going on: every I/O succeeds, reads match the
/// model throughout, and afterwards each member alone holds the model's data (past the
/// superblock's data offset).
#[test]
fn raid1_keeps_its_data_through_a_member_removed_and_one_rebuilt() {
    let (h, m) = harness();
    for b in ["RB_a", "RB_b", "RB_c"] {
        malloc(&h, &m, b, 4096, 512, 0);
    }
    // The new member is slow (a delay bdev over RB_c): its rebuild spans many batches.
    call(
        &h,
        &m,
        "bdev_delay_create",
        json!({"base_bdev_name": "RB_c", "name": "RB_cd", "avg_read_latency": 30,
            "p99_read_latency": 60, "avg_write_latency": 30, "p99_write_latency": 60}),
    );
    // Windows of 8 blocks: the rebuild spans many batches.
    call(
        &h,
        &m,
        "bdev_raid_set_options",
        json!({"process_window_size_kb": 4}),
    );
    call(
        &h,
        &m,
        "bdev_raid_create",
        json!({"name": "RB", "raid_level": "raid1", "base_bdevs": ["RB_a", "RB_b"],
            "superblock": true}),
    );
    let info = || call(&h, &m, "bdev_raid_get_bdevs", json!({"category": "all"}))[0].clone();
    let offset = info()["base_bdevs_list"][0]["data_offset"]
        .as_u64()
        .unwrap();
    let mut rebuilding_seen = 0;
    let model = model::run_with(&h, "RB", 0x7a3d_11c5, 400, true, u64::MAX, &mut |batch| {
        match batch {
            100 => {
                call(
                    &h,
                    &m,
                    "bdev_raid_remove_base_bdev",
                    json!({"name": "RB_a"}),
                );
            }
            150 => {
                call_timed(
                    &h,
                    &m,
                    "bdev_raid_add_base_bdev",
                    json!({"raid_bdev": "RB", "base_bdev": "RB_cd"}),
                );
            }
            _ => {}
        }
        if batch > 150 && info().get("process").is_some() {
            rebuilding_seen += 1;
        }
    });
    assert!(
        rebuilding_seen > 20,
        "the rebuild overlapped only {rebuilding_seen} batches"
    );
    for _ in 0..100_000 {
        if info().get("process").is_none() {
            break;
        }
        h.poll_threads();
        h.advance_time_us(10);
    }
    let i = info();
    assert!(i.get("process").is_none(), "rebuild never ended: {i}");
    assert_eq!(i["num_base_bdevs_operational"], 2, "{i}");
    let blocks = info()["base_bdevs_list"][1]["data_size"].as_u64().unwrap();
    for member in ["RB_b", "RB_c"] {
        for at in (0..blocks).step_by(256) {
            let data = read_direct(&h, member, offset + at, 256);
            model.check(&format!("member {member} alone"), at, &data);
        }
    }
}

/// raid1 over a member that starts failing (the error-injection bdev): a few failed reads,
/// then failed writes. Every I/O the array completes must succeed and read back right,
/// failed reads served from the other member; the healthy member alone holds the data.
#[test]
fn raid1_hides_a_failing_member() {
    let (h, m) = harness();
    malloc(&h, &m, "RE_a", 4096, 512, 0);
    malloc(&h, &m, "RE_b", 4096, 512, 0);
    call(&h, &m, "bdev_error_create", json!({"base_name": "RE_a"}));
    call(
        &h,
        &m,
        "bdev_raid_create",
        json!({"name": "RE", "raid_level": "raid1", "base_bdevs": ["EE_RE_a", "RE_b"],
            "superblock": true}),
    );
    let info = || call(&h, &m, "bdev_raid_get_bdevs", json!({"category": "all"}))[0].clone();
    let offset = info()["base_bdevs_list"][1]["data_offset"]
        .as_u64()
        .unwrap();
    let blocks = info()["base_bdevs_list"][1]["data_size"].as_u64().unwrap();
    let inject = |io_type: &str, num: u32| {
        call(
            &h,
            &m,
            "bdev_error_inject_error",
            json!({"name": "EE_RE_a", "io_type": io_type, "error_type": "failure", "num": num}),
        );
    };
    let model = model::run_with(
        &h,
        "RE",
        0x3c6e_f372,
        300,
        true,
        u64::MAX,
        &mut |batch| match batch {
            60 => inject("read", 5),
            180 => inject("write", 2),
            _ => {}
        },
    );
    // The failed writes took the member out; the array goes on, degraded.
    let i = info();
    assert_eq!(i["state"], "online", "{i}");
    assert_eq!(i["num_base_bdevs_operational"], 1, "{i}");
    for at in (0..blocks).step_by(256) {
        let data = read_direct(&h, "RE_b", offset + at, 256);
        model.check("member RE_b alone", at, &data);
    }
}
