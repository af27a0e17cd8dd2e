//! The bdev layer driven through the malloc and null bdevs, on the deterministic harness.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bdev_core::bdev::{BdevEvent, BdevOpts, Desc, IoStatus, Reject, get_by_name};
use bdev_core::dma::DmaBuf;
use bdev_core::testing::Harness;
use bdev_core::thread;

use crate::malloc::{self, MallocOpts};
use crate::null::{self, NullOpts};

fn pattern(len: usize, seed: u8) -> DmaBuf {
    let mut b = DmaBuf::page_aligned(len).unwrap();
    for (i, x) in b.iter_mut().enumerate() {
        *x = (i as u8).wrapping_mul(31).wrapping_add(seed);
    }
    b
}

#[test]
fn malloc_write_then_read_returns_the_data_callback_and_async() {
    let h = Harness::new(1);
    malloc::create(MallocOpts::new("m_rw", 64, 512)).unwrap();
    let desc = Rc::new(Desc::open("m_rw", true, |_| {}).unwrap());
    let ch = Rc::new(desc.get_io_channel().unwrap());
    let got = Rc::new(RefCell::new(None));
    let g = got.clone();
    let (d2, c2) = (desc.clone(), ch.clone());
    desc.write_blocks(&ch, pattern(4096, 7), 8, 8)
        .submit(move |c| {
            assert!(c.is_success());
            d2.read_blocks(&c2, DmaBuf::page_aligned(4096).unwrap(), 8, 8)
                .submit(move |c| {
                    *g.borrow_mut() = Some(c.into_result().unwrap());
                });
        });
    h.poll_threads();
    assert_eq!(&got.borrow().as_ref().unwrap()[..], &pattern(4096, 7)[..]);

    // The same through the async API, vectored.
    let out = h.block_on(0, async {
        let desc = Desc::open("m_rw", true, |_| {}).unwrap();
        let ch = desc.get_io_channel().unwrap();
        let bufs = vec![pattern(1024, 1), pattern(512, 2), pattern(2560, 3)];
        desc.writev_blocks(&ch, bufs, 20, 8).await.unwrap();
        let back = desc
            .read_blocks(&ch, DmaBuf::page_aligned(4096).unwrap(), 20, 8)
            .await
            .unwrap();
        let split = desc
            .readv_blocks(
                &ch,
                vec![
                    DmaBuf::page_aligned(2048).unwrap(),
                    DmaBuf::page_aligned(2048).unwrap(),
                ],
                20,
                8,
            )
            .await
            .unwrap();
        (back, split)
    });
    let mut expect = Vec::new();
    expect.extend_from_slice(&pattern(1024, 1));
    expect.extend_from_slice(&pattern(512, 2));
    expect.extend_from_slice(&pattern(2560, 3));
    assert_eq!(&out.0[..], &expect[..]);
    assert_eq!(&out.1[0][..], &expect[..2048]);
    assert_eq!(&out.1[1][..], &expect[2048..]);
}

#[test]
fn block_sizes_from_512_to_64k_round_trip() {
    let h = Harness::new(1);
    for bs in [512u32, 1024, 2048, 4096, 8192, 65536] {
        let name = format!("m_bs{bs}");
        malloc::create(MallocOpts::new(&name, 16, bs)).unwrap();
        let n = name.clone();
        let ok = h.block_on(0, async move {
            let desc = Desc::open(&n, true, |_| {}).unwrap();
            let ch = desc.get_io_channel().unwrap();
            let len = bs as usize * 3;
            desc.write_blocks(&ch, pattern(len, bs as u8), 13, 3)
                .await
                .unwrap();
            let r = desc
                .read_blocks(&ch, DmaBuf::page_aligned(len).unwrap(), 13, 3)
                .await
                .unwrap();
            r[..] == pattern(len, bs as u8)[..]
        });
        assert!(ok, "block size {bs}");
    }
}

#[test]
fn unmap_and_write_zeroes_read_back_zeroes_and_flush_succeeds() {
    let h = Harness::new(1);
    malloc::create(MallocOpts::new("m_z", 32, 512)).unwrap();
    let (a, b) = h.block_on(0, async {
        let desc = Desc::open("m_z", true, |_| {}).unwrap();
        let ch = desc.get_io_channel().unwrap();
        let mut ones = DmaBuf::page_aligned(32 * 512).unwrap();
        ones.fill(0xff);
        desc.write_blocks(&ch, ones, 0, 32).await.unwrap();
        desc.unmap_blocks(&ch, 2, 3).await.unwrap();
        desc.write_zeroes_blocks(&ch, 10, 4).await.unwrap();
        desc.flush_blocks(&ch, 0, 32).await.unwrap();
        desc.reset(&ch).await.unwrap();
        let r = desc
            .read_blocks(&ch, DmaBuf::page_aligned(32 * 512).unwrap(), 0, 32)
            .await
            .unwrap();
        let zero =
            |blk: std::ops::Range<usize>| r[blk.start * 512..blk.end * 512].iter().all(|&x| x == 0);
        let ff = |blk: std::ops::Range<usize>| {
            r[blk.start * 512..blk.end * 512].iter().all(|&x| x == 0xff)
        };
        (
            zero(2..5) && zero(10..14),
            ff(0..2) && ff(5..10) && ff(14..32),
        )
    });
    assert!(a, "unmapped / zeroed blocks read zero");
    assert!(b, "other blocks untouched");
}

#[test]
fn bad_requests_complete_with_an_error_not_a_panic() {
    let h = Harness::new(1);
    malloc::create(MallocOpts::new("m_bad", 16, 512)).unwrap();
    null::create(NullOpts::new("n_bad", 16, 512)).unwrap();
    let st = h.block_on(0, async {
        let rw = Desc::open("m_bad", true, |_| {}).unwrap();
        let ro = Desc::open("m_bad", false, |_| {}).unwrap();
        let ch = rw.get_io_channel().unwrap();
        let buf = || DmaBuf::page_aligned(8192).unwrap();
        let mut v = Vec::new();
        v.push(
            rw.read_blocks(&ch, buf(), 15, 2)
                .await
                .map(|_| ())
                .unwrap_err()
                .status,
        );
        v.push(
            rw.read_blocks(&ch, buf(), u64::MAX, 2)
                .await
                .map(|_| ())
                .unwrap_err()
                .status,
        );
        v.push(
            ro.write_blocks(&ch, buf(), 0, 1)
                .await
                .map(|_| ())
                .unwrap_err()
                .status,
        );
        v.push(ro.unmap_blocks(&ch, 0, 1).await.unwrap_err().status);
        v.push(
            rw.read_blocks(&ch, DmaBuf::page_aligned(1000).unwrap(), 0, 2)
                .await
                .map(|_| ())
                .unwrap_err()
                .status,
        );
        // A channel of another bdev.
        let other = Desc::open("n_bad", true, |_| {}).unwrap();
        let och = other.get_io_channel().unwrap();
        v.push(
            rw.read_blocks(&och, buf(), 0, 1)
                .await
                .map(|_| ())
                .unwrap_err()
                .status,
        );
        // Null supports no unmap and no flush.
        v.push(other.unmap_blocks(&och, 0, 1).await.unwrap_err().status);
        v.push(other.flush_blocks(&och, 0, 1).await.unwrap_err().status);
        // The buffer comes back with the error.
        let e = rw.read_blocks(&ch, buf(), 16, 1).await.unwrap_err();
        assert_eq!(e.payload.len(), 8192);
        v
    });
    use IoStatus::Rejected as R;
    assert_eq!(
        st,
        vec![
            R(Reject::OutOfRange),
            R(Reject::OutOfRange),
            R(Reject::ReadOnly),
            R(Reject::ReadOnly),
            R(Reject::BufferTooSmall),
            R(Reject::WrongChannel),
            R(Reject::Unsupported),
            R(Reject::Unsupported),
        ]
    );
}

#[test]
fn invalid_options_are_refused_with_spdk_messages() {
    let _h = Harness::new(1);
    let e = |r: Result<bdev_core::bdev::Bdev, crate::Error>| r.unwrap_err().to_string();
    assert_eq!(
        e(malloc::create(MallocOpts::new("x", 0, 512))),
        "Disk num_blocks must be greater than 0"
    );
    assert_eq!(
        e(malloc::create(MallocOpts::new("x", 8, 500))),
        "Data block size must be 512 bytes aligned"
    );
    assert_eq!(
        e(malloc::create(MallocOpts::new("x", 8, 0))),
        "Data block size must be 512 bytes aligned"
    );
    assert!(e(malloc::create(MallocOpts::new("x", u64::MAX, 4096))).contains("too large"));
    assert_eq!(
        e(null::create(NullOpts::new("x", 0, 512))),
        "Disk must be more than 0 blocks"
    );
    assert_eq!(
        e(null::create(NullOpts::new("x", 8, 513))),
        "Data block size 513 is not a multiple of 512."
    );
    let md = NullOpts {
        md_size: 7,
        ..NullOpts::new("x", 8, 512)
    };
    assert_eq!(e(null::create(md)), "metadata size 7 is not supported");
    malloc::create(MallocOpts::new("dup", 8, 512)).unwrap();
    assert_eq!(
        e(null::create(NullOpts::new("dup", 8, 512))),
        "bdev name dup already exists"
    );
    assert!(matches!(
        Desc::open("nope", false, |_| {}),
        Err(bdev_core::Error::NoSuchBdev { .. })
    ));
}

#[test]
fn auto_names_and_uuid_alias_open_the_bdev() {
    let _h = Harness::new(1);
    let b = malloc::create(MallocOpts {
        num_blocks: 8,
        block_size: 512,
        ..Default::default()
    })
    .unwrap();
    assert!(b.name().starts_with("Malloc"), "{}", b.name());
    let by_uuid = Desc::open(&b.uuid().to_string(), false, |_| {}).unwrap();
    assert_eq!(by_uuid.bdev().name(), b.name());
}

#[test]
fn completions_run_on_the_submitting_thread_and_never_inline() {
    let h = Harness::new(2);
    h.run_on(0, || {
        malloc::create(MallocOpts::new("m_thr", 64, 512)).unwrap();
        null::create(NullOpts::new("n_thr", 64, 512)).unwrap();
    });
    for name in ["m_thr", "n_thr"] {
        let desc = Arc::new(h.run_on(0, || Desc::open(name, true, |_| {}).unwrap()));
        let seen = Rc::new(RefCell::new(Vec::new()));
        for t in 0..2 {
            let (d, s) = (desc.clone(), seen.clone());
            h.run_on(t, move || {
                let ch = d.get_io_channel().unwrap();
                let returned = Rc::new(Cell::new(false));
                let r = returned.clone();
                let me = thread::current().unwrap().name().to_string();
                let ch2 = ch.clone();
                d.read_blocks(&ch, DmaBuf::page_aligned(512).unwrap(), 0, 1)
                    .submit(move |c| {
                        assert!(c.is_success());
                        assert!(r.get(), "callback ran inside submit");
                        s.borrow_mut()
                            .push((me, thread::current().unwrap().name().to_string()));
                        drop(ch2);
                    });
                returned.set(true);
            });
        }
        h.poll_threads();
        let v = seen.borrow();
        assert_eq!(v.len(), 2);
        assert!(v.iter().all(|(a, b)| a == b), "{name}: {v:?}");
    }
}

#[test]
fn null_reads_leave_the_buffer_alone_and_complete_from_the_poller() {
    let h = Harness::new(1);
    null::create(NullOpts::new("n_touch", 1 << 20, 4096)).unwrap();
    let desc = Rc::new(Desc::open("n_touch", true, |_| {}).unwrap());
    let ch = desc.get_io_channel().unwrap();
    let mut b = DmaBuf::page_aligned(4096).unwrap();
    b.fill(0xaa);
    let done = Rc::new(RefCell::new(None));
    let d = done.clone();
    desc.read_blocks(&ch, b, 12345, 1)
        .submit(move |c| *d.borrow_mut() = Some(c.into_result().unwrap()));
    // The deferred-call pass alone does not complete it: the null poller does.
    assert!(done.borrow().is_none());
    h.poll_thread(0);
    assert!(done.borrow().as_ref().unwrap().iter().all(|&x| x == 0xaa));
}

/// A harness of `threads` over a pool of 32 I/O contexts with caches of 16, and a null
/// bdev `name` of 512-byte blocks.
fn small_pool(threads: usize, name: &str) -> Harness {
    let opts = BdevOpts {
        bdev_io_pool_size: 32,
        bdev_io_cache_size: 16,
        ..Default::default()
    };
    let h = Harness::with_opts(threads, opts);
    h.run_on(0, || {
        null::create(NullOpts::new(name, 1 << 16, 512)).unwrap()
    });
    h
}

#[test]
fn an_exhausted_pool_queues_and_loses_nothing() {
    // A pool of 32 contexts with caches of 16: two threads, 1000 I/Os each in flight at once.
    let h = small_pool(2, "n_pool");
    let desc = Arc::new(h.run_on(0, || Desc::open("n_pool", true, |_| {}).unwrap()));
    let order: Vec<Rc<RefCell<Vec<u64>>>> = vec![Default::default(), Default::default()];
    let chans: Vec<_> = (0..2)
        .map(|t| h.run_on(t, || desc.get_io_channel().unwrap()))
        .collect();
    for t in 0..2 {
        let o = order[t].clone();
        h.run_on(t, || {
            for i in 0..1000u64 {
                let o = o.clone();
                desc.read_blocks(&chans[t], DmaBuf::page_aligned(512).unwrap(), i, 1)
                    .submit(move |c| {
                        assert!(c.is_success());
                        o.borrow_mut().push(i);
                    });
            }
        });
        assert!(
            chans[t].outstanding() <= 16,
            "only the thread's share of the pool is in flight"
        );
    }
    h.poll_threads();
    for o in &order {
        assert_eq!(
            *o.borrow(),
            (0..1000).collect::<Vec<_>>(),
            "every I/O completes once, in order"
        );
    }
    assert_eq!(chans[0].outstanding() + chans[1].outstanding(), 0);
}

#[test]
fn an_io_that_waited_for_a_context_keeps_its_submission_tick() {
    // A pool of 32 contexts with a cache of 16 on one thread: of 100 reads submitted at
    // once, most wait for a context and start when earlier ones complete, later.
    let h = small_pool(1, "n_tick");
    let desc = Desc::open("n_tick", true, |_| {}).unwrap();
    let ch = desc.get_io_channel().unwrap();
    h.advance_time_us(500);
    h.poll_threads();
    let t0 = bdev_core::thread::now();
    let ticks = Rc::new(RefCell::new(Vec::new()));
    for i in 0..100u64 {
        let t = ticks.clone();
        desc.read_blocks(&ch, DmaBuf::page_aligned(512).unwrap(), i, 1)
            .submit(move |c| {
                assert!(c.is_success());
                t.borrow_mut()
                    .push((c.submit_tick, bdev_core::thread::now()));
            });
    }
    assert!(ch.outstanding() < 100, "some wait for a context");
    // Each poll completes what is in flight, which lets waiting ones start.
    for _ in 0..20 {
        h.advance_time_us(10);
        h.poll_thread(0);
    }
    h.poll_threads();
    let ticks = ticks.borrow();
    assert_eq!(ticks.len(), 100);
    assert!(
        ticks.iter().all(|&(s, _)| s == t0),
        "every one submitted at t0"
    );
    assert!(
        ticks.iter().any(|&(_, done)| done >= t0 + 20),
        "some completed polls later"
    );
}

#[test]
fn a_pool_too_small_for_a_threads_cache_fails_channel_creation() {
    let opts = BdevOpts {
        bdev_io_pool_size: 32,
        bdev_io_cache_size: 16,
        ..Default::default()
    };
    let h = Harness::with_opts(3, opts);
    h.run_on(0, || {
        null::create(NullOpts::new("n_small", 64, 512)).unwrap()
    });
    let desc = h.run_on(0, || Desc::open("n_small", true, |_| {}).unwrap());
    let _a = h.run_on(0, || desc.get_io_channel().unwrap());
    let _b = h.run_on(1, || desc.get_io_channel().unwrap());
    let e = h.run_on(2, || desc.get_io_channel().unwrap_err().to_string());
    assert!(e.contains("bdev_io_pool_size"), "{e}");
}

#[test]
fn unregister_sends_remove_to_openers_and_waits_for_close() {
    let h = Harness::new(2);
    h.run_on(0, || {
        malloc::create(MallocOpts::new("m_rm", 8, 512)).unwrap()
    });
    let events: Rc<RefCell<Vec<(String, BdevEvent)>>> = Default::default();
    let holder: Rc<RefCell<Option<Desc>>> = Default::default();
    let (ev, hold) = (events.clone(), holder.clone());
    h.run_on(1, move || {
        let hold2 = hold.clone();
        let d = Desc::open("m_rm", true, move |e| {
            ev.borrow_mut()
                .push((thread::current().unwrap().name().to_string(), e));
            if e == BdevEvent::Remove {
                hold2.borrow_mut().take(); // close, from inside the callback
            }
        })
        .unwrap();
        *hold.borrow_mut() = Some(d);
    });
    let done = Arc::new(AtomicUsize::new(0));
    let d2 = done.clone();
    h.run_on(0, || {
        get_by_name("m_rm").unwrap().unregister(move |r| {
            r.unwrap();
            d2.fetch_add(1, Ordering::SeqCst);
        })
    });
    h.poll_threads();
    assert_eq!(
        *events.borrow(),
        vec![("ut_thread1".to_string(), BdevEvent::Remove)]
    );
    assert_eq!(done.load(Ordering::SeqCst), 1);
    assert!(h.run_on(0, || get_by_name("m_rm").is_none()));
    // The name is free again.
    h.run_on(0, || {
        malloc::create(MallocOpts::new("m_rm", 8, 512)).unwrap()
    });
}

#[test]
fn delete_waits_for_channels_and_reports_unknown_names() {
    let h = Harness::new(1);
    null::create(NullOpts::new("n_del", 8, 512)).unwrap();
    let r = h.block_on(0, async {
        null::delete("nope").await.unwrap_err().to_string()
    });
    assert!(r.contains("not found"), "{r}");
    let r = h.block_on(0, async { malloc::delete("n_del").await.is_err() });
    assert!(r, "a null bdev is not deleted through the malloc module");
    let closed = h.block_on(0, async {
        null::delete("n_del").await.unwrap();
        get_by_name("n_del").is_none()
    });
    assert!(closed);
}

#[test]
fn resize_notifies_and_shrink_with_openers_is_refused() {
    let h = Harness::new(1);
    let b = null::create(NullOpts::new("n_rs", 8, 512)).unwrap();
    let got = Rc::new(RefCell::new(Vec::new()));
    let g = got.clone();
    let d = Desc::open("n_rs", false, move |e| g.borrow_mut().push(e)).unwrap();
    b.notify_blockcnt_change(16).unwrap();
    assert!(b.notify_blockcnt_change(4).is_err());
    h.poll_threads();
    assert_eq!(*got.borrow(), vec![BdevEvent::Resize]);
    assert_eq!(d.bdev().num_blocks(), 16);
    drop(d);
    b.notify_blockcnt_change(4).unwrap();
}

#[test]
fn claims_are_exclusive_for_writers() {
    let _h = Harness::new(1);
    null::create(NullOpts::new("n_cl", 8, 512)).unwrap();
    let reader = Desc::open("n_cl", false, |_| {}).unwrap();
    let owner = Desc::open("n_cl", false, |_| {}).unwrap();
    owner.claim("raid").unwrap();
    assert!(owner.is_writable());
    assert_eq!(owner.bdev().claimed_by().as_deref(), Some("raid"));
    assert!(matches!(
        Desc::open("n_cl", true, |_| {}),
        Err(bdev_core::Error::Claimed { .. })
    ));
    assert!(matches!(
        reader.claim("other"),
        Err(bdev_core::Error::Claimed { .. })
    ));
    let _r2 = Desc::open("n_cl", false, |_| {}).unwrap();
    drop(owner);
    let w = Desc::open("n_cl", true, |_| {}).unwrap();
    assert!(reader.claim("x").is_err(), "a writer is open elsewhere");
    drop(w);
    reader.claim("x").unwrap();
}

#[test]
fn stopping_the_runtime_removes_bdevs_and_tells_openers() {
    let h = Harness::new(1);
    malloc::create(MallocOpts::new("m_stop", 8, 512)).unwrap();
    let holder: Rc<RefCell<Option<Desc>>> = Default::default();
    let hold = holder.clone();
    let d = Desc::open("m_stop", true, move |e| {
        if e == BdevEvent::Remove {
            hold.borrow_mut().take();
        }
    })
    .unwrap();
    *holder.borrow_mut() = Some(d);
    h.stop();
    assert!(
        holder.borrow().is_none(),
        "remove event closed the descriptor"
    );
}

#[test]
fn config_methods_create_and_delete() {
    let h = Harness::new(1);
    let m = h.run_on(0, || {
        let mut m = bdev_core::config::Methods::new();
        crate::register(&mut m).unwrap();
        m
    });
    let cfg = bdev_core::config::ConfigFile::parse(
        r#"{"subsystems":[{"subsystem":"bdev","config":[
            {"method":"bdev_malloc_create","params":{"name":"cm0","num_blocks":32,"block_size":512}},
            {"method":"bdev_null_create","params":{"name":"cn0","num_blocks":32,"block_size":4096,"uuid":"5d8c9f1e-0b7a-4c59-9a43-6e1f3a7c2b10"}},
            {"method":"bdev_wait_for_examine"}]}]}"#,
    )
    .unwrap();
    let m = Rc::new(m);
    let m2 = m.clone();
    h.block_on(0, async move { cfg.load(&m2).await.unwrap() });
    let saved = h.run_on(0, || {
        get_by_name("cn0").unwrap().write_config_json().unwrap()
    });
    assert_eq!(
        saved["params"]["uuid"],
        "5d8c9f1e-0b7a-4c59-9a43-6e1f3a7c2b10"
    );
    assert_eq!(saved["params"]["block_size"], 4096);
    let bad = bdev_core::config::ConfigFile::parse(
        r#"{"subsystems":[{"subsystem":"bdev","config":[
            {"method":"bdev_malloc_create","params":{"name":"cm1","num_blocks":8,"block_size":512}},
            {"method":"bdev_malloc_create","params":{"name":"cm2","num_blocks":"8","block_size":512}}]}]}"#,
    )
    .unwrap();
    let m3 = m.clone();
    let e = h.block_on(
        0,
        async move { bad.load(&m3).await.unwrap_err().to_string() },
    );
    assert!(
        e.contains("bdev_malloc_create (index 1)") && e.contains("invalid type"),
        "{e}"
    );
    let m4 = m.clone();
    let e = h.block_on(0, async move {
        m4.call(
            "bdev_malloc_delete",
            Some(serde_json::json!({"name": "cm0"})),
        )
        .await
        .is_ok()
    });
    assert!(e);
}

#[test]
fn iostat_sums_every_channel_including_departed_ones() {
    let h = Harness::new(2);
    h.run_on(0, || {
        malloc::create(MallocOpts::new("m_stat", 64, 512)).unwrap()
    });
    let desc = Arc::new(h.run_on(0, || Desc::open("m_stat", true, |_| {}).unwrap()));
    let mut kept = Vec::new();
    for t in 0..2usize {
        let d = desc.clone();
        let ch = h.block_on(t, async move {
            let ch = d.get_io_channel().unwrap();
            for i in 0..(t as u64 + 1) * 3 {
                d.write_blocks(&ch, DmaBuf::page_aligned(1024).unwrap(), i, 2)
                    .await
                    .unwrap();
                d.read_blocks(&ch, DmaBuf::page_aligned(512).unwrap(), i, 1)
                    .await
                    .unwrap();
            }
            d.unmap_blocks(&ch, 0, 8).await.unwrap();
            // Thread 1's channel stays open; thread 0's is dropped here (its counts retire).
            (t == 1).then_some(ch)
        });
        kept.extend(ch);
    }
    let s = h.block_on(0, async {
        get_by_name("m_stat").unwrap().iostat().await.unwrap()
    });
    assert_eq!((s.num_write_ops, s.bytes_written), (9, 9 * 1024));
    assert_eq!((s.num_read_ops, s.bytes_read), (9, 9 * 512));
    assert_eq!((s.num_unmap_ops, s.bytes_unmapped), (2, 2 * 8 * 512));
    assert!(s.max_read_latency_ticks >= s.min_read_latency_ticks);
    let m = h.run_on(0, || {
        let mut m = bdev_core::config::Methods::new();
        crate::register(&mut m).unwrap();
        m
    });
    let v = h.block_on(0, async move {
        m.call(
            "bdev_get_iostat",
            Some(serde_json::json!({"name": "m_stat"})),
        )
        .await
        .unwrap()
    });
    assert_eq!(v["bdevs"][0]["name"], "m_stat");
    assert_eq!(v["bdevs"][0]["num_read_ops"], 9);
    assert!(v["tick_rate"].as_u64().unwrap() > 0);
    drop(kept);
}
