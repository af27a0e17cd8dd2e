//! The virtual bdevs over malloc, on the deterministic harness.

use std::cell::Cell;
use std::rc::Rc;

use bdev_core::bdev::{BdevEvent, Desc, IoStatus, get_by_name};
use bdev_core::config::{ConfigFile, Methods, save_config};
use bdev_core::dma::DmaBuf;
use bdev_core::testing::Harness;
use serde_json::json;

/// A harness whose thread 0 knows every module (malloc, null, passthru, error, delay).
fn harness() -> (Harness, Rc<Methods>) {
    harness_of(1)
}

fn harness_of(threads: usize) -> (Harness, Rc<Methods>) {
    let h = Harness::new(threads);
    let m = h.run_on(0, || {
        let mut m = Methods::new();
        bdev_malloc::register(&mut m).unwrap();
        crate::register(&mut m).unwrap();
        m
    });
    (h, Rc::new(m))
}

/// Submits a write of 8 blocks at 0 on thread `t`; its status shows once it completes.
fn write_on(
    h: &Harness,
    t: usize,
    d: &Desc,
    ch: &bdev_core::bdev::BdevChannel,
    seed: u8,
) -> Rc<Cell<Option<IoStatus>>> {
    let st = Rc::new(Cell::new(None));
    let s2 = st.clone();
    h.run_on(t, || {
        d.write_blocks(ch, pattern(4096, seed), 0, 8)
            .submit(move |c| s2.set(Some(c.status)))
    });
    st
}

fn call(
    h: &Harness,
    m: &Rc<Methods>,
    method: &str,
    params: serde_json::Value,
) -> Result<serde_json::Value, String> {
    let (m, method) = (m.clone(), method.to_string());
    h.block_on(0, async move {
        m.call(&method, Some(params))
            .await
            .map_err(|e| e.to_string())
    })
}

fn pattern(len: usize, seed: u8) -> DmaBuf {
    let mut b = DmaBuf::page_aligned(len).unwrap();
    for (i, x) in b.iter_mut().enumerate() {
        *x = (i as u8).wrapping_mul(13).wrapping_add(seed);
    }
    b
}

/// Writes `seed`'s pattern at `lba` through `name`, reads it back, returns what came back.
fn write_read(h: &Harness, name: &str, lba: u64, seed: u8) -> Result<DmaBuf, IoStatus> {
    let name = name.to_string();
    h.block_on(0, async move {
        let d = Desc::open(&name, true, |_| {}).unwrap();
        let ch = d.get_io_channel().unwrap();
        d.write_blocks(&ch, pattern(4096, seed), lba, 8)
            .await
            .map_err(|e| e.status)?;
        d.read_blocks(&ch, DmaBuf::page_aligned(4096).unwrap(), lba, 8)
            .await
            .map_err(|e| e.status)
    })
}

#[test]
fn passthru_forwards_io_claims_its_base_and_counts_on_both() {
    let (h, m) = harness();
    call(
        &h,
        &m,
        "bdev_malloc_create",
        json!({"name": "M0", "num_blocks": 256, "block_size": 512}),
    )
    .unwrap();
    let r = call(
        &h,
        &m,
        "bdev_passthru_create",
        json!({"base_bdev_name": "M0", "name": "PT0"}),
    )
    .unwrap();
    assert_eq!(r, json!("PT0"));
    let base = h.run_on(0, || get_by_name("M0").unwrap());
    assert_eq!(base.claimed_by().as_deref(), Some("passthru"));
    // The base can't be opened for writing or claimed by anyone else now.
    h.run_on(0, || {
        assert!(Desc::open("M0", true, |_| {}).is_err());
        assert!(Desc::open("M0", false, |_| {}).is_ok());
    });
    let back = write_read(&h, "PT0", 16, 5).unwrap();
    assert_eq!(&back[..], &pattern(4096, 5)[..]);
    // The data is on the base, where the passthru put it.
    let direct = h.block_on(0, async {
        let d = Desc::open("M0", false, |_| {}).unwrap();
        let ch = d.get_io_channel().unwrap();
        d.read_blocks(&ch, DmaBuf::page_aligned(4096).unwrap(), 16, 8)
            .await
            .unwrap()
    });
    assert_eq!(&direct[..], &pattern(4096, 5)[..]);
    let stats = h.block_on(0, async {
        let pt = get_by_name("PT0").unwrap().iostat().await.unwrap();
        let b = get_by_name("M0").unwrap().iostat().await.unwrap();
        (pt, b)
    });
    assert_eq!((stats.0.num_write_ops, stats.0.num_read_ops), (1, 1));
    assert_eq!((stats.1.num_write_ops, stats.1.num_read_ops), (1, 2));
    // Deleting the passthru releases the base.
    call(&h, &m, "bdev_passthru_delete", json!({"name": "PT0"})).unwrap();
    h.run_on(0, || {
        assert!(get_by_name("PT0").is_none());
        assert!(get_by_name("M0").unwrap().claimed_by().is_none());
    });
    let e = call(&h, &m, "bdev_passthru_delete", json!({"name": "PT0"})).unwrap_err();
    assert!(e.contains("not found"), "{e}");
}

#[test]
fn passthru_waits_for_its_base_and_goes_away_with_it() {
    let (h, m) = harness();
    // The base does not exist yet: creation is deferred, and examine builds it later.
    let r = call(
        &h,
        &m,
        "bdev_passthru_create",
        json!({"base_bdev_name": "Late", "name": "PTL"}),
    )
    .unwrap();
    assert_eq!(r, json!("PTL"));
    assert!(h.run_on(0, || get_by_name("PTL").is_none()));
    let e = call(
        &h,
        &m,
        "bdev_passthru_create",
        json!({"base_bdev_name": "Late", "name": "PTL"}),
    )
    .unwrap_err();
    assert!(e.contains("already exists"), "{e}");
    call(
        &h,
        &m,
        "bdev_null_create",
        json!({"name": "Late", "num_blocks": 64, "block_size": 4096}),
    )
    .unwrap();
    assert!(h.run_on(0, || get_by_name("PTL").is_some()));

    // A consumer of the passthru hears of the base's removal, closes, and the whole stack
    // comes down without anyone hanging.
    let removed = Rc::new(Cell::new(false));
    let r2 = removed.clone();
    let slot: Rc<Cell<Option<Desc>>> = Rc::new(Cell::new(None));
    let s2 = slot.clone();
    let d = h.run_on(0, || {
        Desc::open("PTL", true, move |ev| {
            if ev == BdevEvent::Remove {
                r2.set(true);
                drop(s2.take());
            }
        })
        .unwrap()
    });
    slot.set(Some(d));
    call(&h, &m, "bdev_null_delete", json!({"name": "Late"})).unwrap();
    h.poll_threads();
    assert!(removed.get());
    h.run_on(0, || {
        assert!(get_by_name("PTL").is_none());
        assert!(get_by_name("Late").is_none());
    });
    // The config stays: the passthru comes back with its base, as SPDK's does.
    call(
        &h,
        &m,
        "bdev_null_create",
        json!({"name": "Late", "num_blocks": 64, "block_size": 4096}),
    )
    .unwrap();
    assert!(h.run_on(0, || get_by_name("PTL").is_some()));
}

#[test]
fn error_bdev_fails_corrupts_holds_and_clears() {
    let (h, m) = harness();
    call(
        &h,
        &m,
        "bdev_malloc_create",
        json!({"name": "M1", "num_blocks": 256, "block_size": 512}),
    )
    .unwrap();
    assert_eq!(
        call(&h, &m, "bdev_error_create", json!({"base_name": "M1"})).unwrap(),
        json!(true)
    );
    assert!(write_read(&h, "EE_M1", 0, 1).is_ok());

    // Two reads fail, then reads work again.
    call(
        &h,
        &m,
        "bdev_error_inject_error",
        json!({"name": "EE_M1", "io_type": "read", "error_type": "failure", "num": 2}),
    )
    .unwrap();
    assert_eq!(write_read(&h, "EE_M1", 0, 2).unwrap_err(), IoStatus::Failed);
    assert_eq!(write_read(&h, "EE_M1", 0, 2).unwrap_err(), IoStatus::Failed);
    assert_eq!(
        &write_read(&h, "EE_M1", 0, 2).unwrap()[..],
        &pattern(4096, 2)[..]
    );

    // One read comes back with byte 100 XORed with 0x5a.
    call(&h, &m, "bdev_error_inject_error", json!({"name": "EE_M1", "io_type": "read", "error_type": "corrupt_data", "corrupt_offset": 100, "corrupt_value": 90})).unwrap();
    let got = write_read(&h, "EE_M1", 8, 3).unwrap();
    let mut want = pattern(4096, 3);
    want[100] ^= 90;
    assert_eq!(&got[..], &want[..]);

    // Bad injections are refused with a reason.
    let e = call(
        &h,
        &m,
        "bdev_error_inject_error",
        json!({"name": "EE_M1", "io_type": "read", "error_type": "corrupt_data"}),
    )
    .unwrap_err();
    assert!(e.contains("corrupt_value"), "{e}");
    let e = call(
        &h,
        &m,
        "bdev_error_inject_error",
        json!({"name": "EE_M1", "io_type": "sideways", "error_type": "failure"}),
    )
    .unwrap_err();
    assert!(e.contains("unknown variant"), "{e}");
    let e = call(
        &h,
        &m,
        "bdev_error_inject_error",
        json!({"name": "M1", "io_type": "all", "error_type": "failure"}),
    )
    .unwrap_err();
    assert!(e.contains("not found"), "{e}");

    // A pending write stays until a reset fails it; the reset itself succeeds.
    call(
        &h,
        &m,
        "bdev_error_inject_error",
        json!({"name": "EE_M1", "io_type": "write", "error_type": "pending"}),
    )
    .unwrap();
    let d = h.run_on(0, || Rc::new(Desc::open("EE_M1", true, |_| {}).unwrap()));
    let ch = h.run_on(0, || Rc::new(d.get_io_channel().unwrap()));
    let st = write_on(&h, 0, &d, &ch, 4);
    h.poll_threads();
    assert_eq!(st.get(), None, "held by the pending injection");
    let rs = Rc::new(Cell::new(None));
    let r2 = rs.clone();
    h.run_on(0, || d.reset(&ch).submit(move |c| r2.set(Some(c.status))));
    // The layer drains for up to a second, then resets the module, which lets go.
    h.poll_threads();
    assert_eq!(rs.get(), None, "draining");
    for _ in 0..12 {
        h.advance_time_us(100_000);
        h.poll_threads();
    }
    assert_eq!(st.get(), Some(IoStatus::Failed));
    assert_eq!(rs.get(), Some(IoStatus::Success));
    drop(ch);
    drop(d);

    // Clear disarms everything.
    call(
        &h,
        &m,
        "bdev_error_inject_error",
        json!({"name": "EE_M1", "io_type": "all", "error_type": "failure", "num": 100}),
    )
    .unwrap();
    call(
        &h,
        &m,
        "bdev_error_inject_error",
        json!({"name": "EE_M1", "io_type": "clear", "error_type": "failure"}),
    )
    .unwrap();
    assert!(write_read(&h, "EE_M1", 0, 5).is_ok());
    assert_eq!(
        call(&h, &m, "bdev_error_delete", json!({"name": "EE_M1"})).unwrap(),
        json!(true)
    );
    assert!(h.run_on(0, || get_by_name("M1").unwrap().claimed_by().is_none()));
}

#[test]
fn pending_io_is_failed_on_every_thread_by_a_reset_and_by_removal() {
    let (h, m) = harness_of(2);
    call(
        &h,
        &m,
        "bdev_malloc_create",
        json!({"name": "M2", "num_blocks": 256, "block_size": 512}),
    )
    .unwrap();
    call(&h, &m, "bdev_error_create", json!({"base_name": "M2"})).unwrap();
    let inject = |n: u32| {
        call(
            &h,
            &m,
            "bdev_error_inject_error",
            json!({"name": "EE_M2", "io_type": "write", "error_type": "pending", "num": n}),
        )
        .unwrap();
    };
    // A write held on each thread; a reset on thread 0 fails both.
    inject(2);
    let mut ends = Vec::new();
    for t in 0..2 {
        let kept = h.run_on(t, || {
            let d = Rc::new(Desc::open("EE_M2", true, |_| {}).unwrap());
            let ch = Rc::new(d.get_io_channel().unwrap());
            (d, ch)
        });
        let st = write_on(&h, t, &kept.0, &kept.1, 4);
        ends.push((st, kept));
    }
    h.poll_threads();
    assert!(ends.iter().all(|(st, _)| st.get().is_none()), "held");
    let rs = Rc::new(Cell::new(None));
    let r2 = rs.clone();
    let (d0, ch0) = ends[0].1.clone();
    h.run_on(0, || d0.reset(&ch0).submit(move |c| r2.set(Some(c.status))));
    for _ in 0..12 {
        h.advance_time_us(100_000);
        h.poll_threads();
    }
    assert_eq!(rs.get(), Some(IoStatus::Success));
    for (st, _) in &ends {
        assert_eq!(
            st.get(),
            Some(IoStatus::Failed),
            "held I/O failed by the reset"
        );
    }
    // Held again on thread 1: removing the bdev fails it, so its opener can close.
    inject(1);
    let (d1, ch1) = ends[1].1.clone();
    let st = write_on(&h, 1, &d1, &ch1, 5);
    h.poll_threads();
    assert_eq!(st.get(), None, "held");
    let gone = Rc::new(Cell::new(false));
    let g2 = gone.clone();
    let done = std::sync::Arc::new(std::sync::Mutex::new(false));
    let d2 = done.clone();
    h.run_on(0, || {
        get_by_name("EE_M2")
            .unwrap()
            .unregister(move |r| *d2.lock().unwrap() = r.is_ok())
    });
    h.poll_threads();
    assert_eq!(st.get(), Some(IoStatus::Failed), "failed at unregistration");
    drop((d0, ch0, d1, ch1));
    h.run_on(1, || drop(ends.pop()));
    h.run_on(0, || drop(ends.pop()));
    h.poll_threads();
    g2.set(*done.lock().unwrap());
    assert!(gone.get(), "unregistered once its openers closed");
}

#[test]
fn delay_bdev_holds_reads_and_writes_for_their_latency() {
    let (h, m) = harness();
    call(
        &h,
        &m,
        "bdev_malloc_create",
        json!({"name": "M2", "num_blocks": 256, "block_size": 512}),
    )
    .unwrap();
    let r = call(&h, &m, "bdev_delay_create", json!({"base_bdev_name": "M2", "name": "D0",
        "avg_read_latency": 100, "p99_read_latency": 100, "avg_write_latency": 300, "p99_write_latency": 300})).unwrap();
    assert_eq!(r, json!("D0"));
    let d = h.run_on(0, || Rc::new(Desc::open("D0", true, |_| {}).unwrap()));
    let ch = h.run_on(0, || Rc::new(d.get_io_channel().unwrap()));
    let done = Rc::new(Cell::new(false));
    let d2 = done.clone();
    h.run_on(0, || {
        d.write_blocks(&ch, pattern(4096, 1), 0, 8)
            .submit(move |c| {
                assert!(c.is_success());
                d2.set(true)
            })
    });
    h.poll_threads();
    h.advance_time_us(250);
    h.poll_threads();
    assert!(!done.get(), "a write waits its 300 us");
    h.advance_time_us(60);
    h.poll_threads();
    assert!(done.get());

    // A latency update applies to what completes afterwards; the average may pass p99.
    call(
        &h,
        &m,
        "bdev_delay_update_latency",
        json!({"delay_bdev_name": "D0", "latency_type": "avg_write", "latency_us": 10}),
    )
    .unwrap();
    let e = call(
        &h,
        &m,
        "bdev_delay_update_latency",
        json!({"delay_bdev_name": "D0", "latency_type": "fast", "latency_us": 10}),
    )
    .unwrap_err();
    assert_eq!(e, "Please specify a valid latency type.");
    for (name, msg) in [
        ("nope", "The requested bdev does not exist."),
        ("M2", "The requested bdev is not a delay bdev."),
    ] {
        let p = json!({"delay_bdev_name": name, "latency_type": "avg_read", "latency_us": 1});
        assert_eq!(
            call(&h, &m, "bdev_delay_update_latency", p).unwrap_err(),
            msg
        );
    }
    let e = call(&h, &m, "bdev_delay_create", json!({"base_bdev_name": "M2", "name": "D1",
        "avg_read_latency": 100, "p99_read_latency": 10, "avg_write_latency": 1, "p99_write_latency": 1})).unwrap_err();
    assert!(e.contains("p99 latency is less than average"), "{e}");
    done.set(false);
    let d2 = done.clone();
    h.run_on(0, || {
        d.write_blocks(&ch, pattern(4096, 1), 0, 8)
            .submit(move |c| {
                assert!(c.is_success());
                d2.set(true)
            })
    });
    h.poll_threads();
    h.advance_time_us(11);
    h.poll_threads();
    assert!(
        done.get() || {
            // 1 write in 100 takes the p99 latency (300 us).
            h.advance_time_us(300);
            h.poll_threads();
            done.get()
        }
    );
    drop(ch);
    drop(d);
    call(&h, &m, "bdev_delay_delete", json!({"name": "D0"})).unwrap();
}

#[test]
fn save_config_round_trips_a_stack_of_every_kind() {
    let (h, m) = harness();
    for (method, params) in [
        (
            "bdev_malloc_create",
            json!({"name": "Ma", "num_blocks": 128, "block_size": 4096}),
        ),
        (
            "bdev_null_create",
            json!({"name": "Nu", "num_blocks": 128, "block_size": 512}),
        ),
        (
            "bdev_passthru_create",
            json!({"base_bdev_name": "Ma", "name": "PTa"}),
        ),
        ("bdev_error_create", json!({"base_name": "PTa"})),
        (
            "bdev_delay_create",
            json!({"base_bdev_name": "Nu", "name": "Dn", "avg_read_latency": 5,
            "p99_read_latency": 50, "avg_write_latency": 7, "p99_write_latency": 70}),
        ),
    ] {
        call(&h, &m, method, params).unwrap();
    }
    let names = |h: &Harness| {
        h.run_on(0, || {
            // Same names, modules, sizes and UUIDs.
            let mut v: Vec<(String, String, u64, String)> = bdev_core::bdev::list()
                .iter()
                .map(|b| {
                    (
                        b.name().to_string(),
                        b.module_name().to_string(),
                        b.num_blocks(),
                        b.uuid().to_string(),
                    )
                })
                .collect();
            v.sort();
            v
        })
    };
    let before = names(&h);
    assert_eq!(before.len(), 5);
    let saved = h.run_on(0, save_config);
    h.stop();

    // A fresh application loads what was saved and has the same bdevs.
    let (h2, m2) = harness();
    let cfg = ConfigFile::parse(&saved.to_string()).unwrap();
    h2.block_on(0, async move { cfg.load(&m2).await.unwrap() });
    assert_eq!(names(&h2), before);
    let again = h2.run_on(0, save_config);
    assert_eq!(
        again["subsystems"][0]["config"].as_array().unwrap().len(),
        saved["subsystems"][0]["config"].as_array().unwrap().len()
    );
}
