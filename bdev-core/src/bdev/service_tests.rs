//! The generic I/O services (split, bounce, write_zeroes emulation, NOMEM retry) against a
//! RAM test module with limits, which records what reaches it.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use super::*;
use crate::dma::{BlockMem, DmaBuf};
use crate::testing::Harness;

/// What the module saw of one I/O.
#[derive(Clone, Debug)]
struct Seen {
    t: IoType,
    offset: u64,
    num: u64,
    seg_lens: Vec<usize>,
    aligned: bool,
}

struct RamBdev {
    mem: BlockMem,
    align: usize,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Answer NoMem to this many I/Os first.
    nomem: Mutex<u32>,
    write_zeroes: bool,
    /// Keep reads (until the channel goes) instead of completing them.
    hold_reads: bool,
    /// List write_zeroes, then refuse it as a device without it would.
    refuse_wz: bool,
}

impl BdevOps for RamBdev {
    type Channel = RefCell<Vec<BdevIo>>;
    fn module_name(&self) -> &'static str {
        "ram_test"
    }
    fn create_channel(&self) -> crate::Result<RefCell<Vec<BdevIo>>> {
        Ok(RefCell::new(Vec::new()))
    }
    fn submit_request(&self, held: &RefCell<Vec<BdevIo>>, io: BdevIo) {
        self.seen.lock().unwrap().push(Seen {
            t: io.io_type(),
            offset: io.offset_blocks(),
            num: io.num_blocks(),
            seg_lens: io.iovs().iter().map(|v| v.len()).collect(),
            aligned: io
                .iovs()
                .iter()
                .all(|v| v.base() as usize % self.align == 0),
        });
        {
            let mut n = self.nomem.lock().unwrap();
            if *n > 0 {
                *n -= 1;
                return io.complete(IoStatus::NoMem);
            }
        }
        if self.refuse_wz && io.io_type() == IoType::WriteZeroes {
            let _ = crate::thread::defer(move || io.emulate_write_zeroes());
            return;
        }
        if self.hold_reads && io.io_type() == IoType::Read {
            return held.borrow_mut().push(io);
        }
        let r = match io.io_type() {
            IoType::Read => io.copy_from_mem(&self.mem, io.offset_bytes()),
            IoType::Write => io.copy_to_mem(&self.mem, io.offset_bytes()),
            IoType::WriteZeroes => self.mem.zero(io.offset_bytes(), io.len_bytes() as usize),
            _ => Ok(()),
        };
        // Complete from a later pass, as a device would.
        let st = if r.is_ok() {
            IoStatus::Success
        } else {
            IoStatus::Failed
        };
        let _ = crate::thread::defer(move || io.complete(st));
    }
    fn io_type_supported(&self, t: IoType) -> bool {
        match t {
            IoType::WriteZeroes => self.write_zeroes,
            t => matches!(t, IoType::Read | IoType::Write | IoType::Reset),
        }
    }
}

fn ram(
    name: &str,
    props: impl FnOnce(BdevProps) -> BdevProps,
    wz: bool,
    nomem: u32,
) -> Arc<Mutex<Vec<Seen>>> {
    ram_with(name, props, wz, nomem, false)
}

fn ram_with(
    name: &str,
    props: impl FnOnce(BdevProps) -> BdevProps,
    wz: bool,
    nomem: u32,
    hold_reads: bool,
) -> Arc<Mutex<Vec<Seen>>> {
    let p = props(BdevProps::new(name, 512, 256));
    let align = p.buf_align;
    let seen = Arc::new(Mutex::new(Vec::new()));
    register(
        p,
        Arc::new(RamBdev {
            mem: BlockMem::new(512 * 256, 4096).unwrap(),
            align,
            seen: seen.clone(),
            nomem: Mutex::new(nomem),
            write_zeroes: wz,
            hold_reads,
            refuse_wz: name.starts_with("refuse_wz"),
        }),
    )
    .unwrap();
    seen
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

/// Buffers of the given lengths, each surely not 4 KiB-aligned, filled from `data`.
fn bufs(lens: &[usize], data: &[u8]) -> Vec<DmaBuf> {
    let mut at = 0;
    let mut keep = Vec::new();
    lens.iter()
        .map(|&l| {
            let mut b = loop {
                // An allocation may land on a 4 KiB boundary by chance; keep it and retry.
                let b = DmaBuf::new(l, 8).unwrap();
                if b.addr() % 4096 != 0 {
                    break b;
                }
                keep.push(b);
            };
            b.copy_from_slice(&data[at..at + l]);
            at += l;
            b
        })
        .collect()
}

fn concat(v: &[DmaBuf]) -> Vec<u8> {
    v.iter().flat_map(|b| b.iter().copied()).collect()
}

/// Writes `n` blocks of `seed`'s pattern at `lba` through `name` (one segment each way)
/// and checks that they read back.
fn write_read_back(h: &Harness, name: &str, lba: u64, n: u64, seed: u8) {
    let name = name.to_string();
    let len = n as usize * 512;
    let data = pattern(len, seed);
    let back = h.block_on(0, async move {
        let d = Desc::open(&name, true, |_| {}).unwrap();
        let ch = d.get_io_channel().unwrap();
        d.writev_blocks(&ch, bufs(&[len], &data), lba, n)
            .await
            .unwrap();
        let out = d
            .readv_blocks(&ch, bufs(&[len], &vec![0; len]), lba, n)
            .await
            .unwrap();
        (concat(&out), data)
    });
    assert_eq!(back.0, back.1);
}

#[test]
fn io_beyond_every_limit_is_split_into_pieces_the_bdev_accepts() {
    let h = Harness::new(1);
    let seen = ram(
        "r_split",
        |p| {
            let mut p = p.buf_align(8);
            p.max_rw_size = 8;
            p.optimal_io_boundary = 16;
            p.split_on_optimal_io_boundary = true;
            p.max_num_segments = 3;
            p.max_segment_size = 1024;
            p
        },
        true,
        0,
    );
    // 40 blocks from block 5, in buffers of odd sizes that don't end on block boundaries.
    let data = pattern(40 * 512, 3);
    let lens = [700, 3000, 2500, 8192, 6088];
    let back = h.block_on(0, async move {
        let d = Desc::open("r_split", true, |_| {}).unwrap();
        let ch = d.get_io_channel().unwrap();
        d.writev_blocks(&ch, bufs(&lens, &data), 5, 40)
            .await
            .unwrap();
        let out = d
            .readv_blocks(&ch, bufs(&[4096, 16384], &[0; 20480]), 5, 40)
            .await
            .unwrap();
        (concat(&out), data)
    });
    assert_eq!(back.0, back.1);
    let seen = seen.lock().unwrap();
    assert!(seen.len() > 10, "split into {} pieces", seen.len());
    for s in seen.iter() {
        assert!(s.num <= 8, "{s:?}");
        assert_eq!(
            s.offset / 16,
            (s.offset + s.num - 1) / 16,
            "crosses the boundary: {s:?}"
        );
        assert!(
            s.seg_lens.len() <= 3 && s.seg_lens.iter().all(|&l| l <= 1024),
            "{s:?}"
        );
        assert_eq!(
            s.seg_lens.iter().sum::<usize>() as u64,
            s.num * 512,
            "{s:?}"
        );
    }
    // Statistics count the consumer's I/Os, not the pieces.
    let st = h.block_on(0, async {
        get_by_name("r_split").unwrap().iostat().await.unwrap()
    });
    assert_eq!((st.num_write_ops, st.num_read_ops), (1, 1));
}

/// A virtual bdev that forwards every I/O in place to its base (as passthru does).
struct Fwd {
    base: Arc<Desc>,
}

impl BdevOps for Fwd {
    type Channel = BdevChannel;
    fn module_name(&self) -> &'static str {
        "fwd_test"
    }
    fn create_channel(&self) -> crate::Result<BdevChannel> {
        self.base.get_io_channel()
    }
    fn submit_request(&self, ch: &BdevChannel, io: BdevIo) {
        io.forward_and_complete(&self.base, ch);
    }
    fn io_type_supported(&self, t: IoType) -> bool {
        matches!(t, IoType::Read | IoType::Write | IoType::WriteZeroes)
    }
}

#[test]
fn pieces_of_a_split_forwarded_in_place_meet_the_base_limits_too() {
    let h = Harness::new(1);
    // The base takes at most 8 blocks at a time; the bdev above splits at 16 blocks.
    let seen = ram("r_fwd_base", |p| p.max_rw_size(8), true, 0);
    h.run_on(0, || {
        let base = Arc::new(Desc::open("r_fwd_base", true, |_| {}).unwrap());
        register(
            BdevProps::new("r_fwd", 512, 256).optimal_io_boundary(16, true),
            Arc::new(Fwd { base }),
        )
        .unwrap();
    });
    write_read_back(&h, "r_fwd", 5, 40, 9);
    let seen = seen.lock().unwrap();
    assert!(seen.iter().all(|s| s.num <= 8), "{seen:?}");
    assert_eq!(seen.iter().map(|s| s.num).sum::<u64>(), 80);
}

#[test]
fn a_stack_deeper_than_the_in_place_frames_goes_on_as_child_ios() {
    // Seven levels of forwarding over the RAM bdev: the first four go down in place, the
    // rest as child I/Os. Data arrives, and every level counts each I/O once.
    let h = Harness::new(1);
    let seen = ram("r_deep0", |p| p, true, 0);
    let names: Vec<String> = (0..8).map(|i| format!("r_deep{i}")).collect();
    let top = names[7].clone();
    let levels = names.clone();
    h.run_on(0, move || {
        for w in levels.windows(2) {
            let base = Arc::new(Desc::open(&w[0], true, |_| {}).unwrap());
            register(BdevProps::new(&w[1], 512, 256), Arc::new(Fwd { base })).unwrap();
        }
    });
    write_read_back(&h, &top, 100, 16, 3);
    assert_eq!(seen.lock().unwrap().len(), 2);
    for n in names {
        let m = n.clone();
        let st = h.block_on(0, async move {
            get_by_name(&m).unwrap().iostat().await.unwrap()
        });
        assert_eq!((st.num_write_ops, st.num_read_ops), (1, 1), "{n}");
        assert_eq!(st.bytes_read, 16 * 512);
    }
}

#[test]
fn misaligned_buffers_go_through_an_aligned_bounce_buffer() {
    let h = Harness::new(1);
    let seen = ram("r_align", |p| p.buf_align(4096), true, 0);
    let data = pattern(4096, 9);
    let back = h.block_on(0, async move {
        let d = Desc::open("r_align", true, |_| {}).unwrap();
        let ch = d.get_io_channel().unwrap();
        // Buffers aligned to 8 only, which a 4096-aligned bdev refuses to touch.
        d.writev_blocks(&ch, bufs(&[1000, 3096], &data), 0, 8)
            .await
            .unwrap();
        let out = d
            .readv_blocks(&ch, bufs(&[512, 3584], &[0; 4096]), 0, 8)
            .await
            .unwrap();
        (concat(&out), data)
    });
    assert_eq!(back.0, back.1);
    assert!(seen.lock().unwrap().iter().all(|s| s.aligned));
}

/// How many write_zeroes reached the RAM module.
fn write_zeroes_seen(seen: &Arc<Mutex<Vec<Seen>>>) -> usize {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|s| s.t == IoType::WriteZeroes)
        .count()
}

/// Fills the 256-block test bdev `name` with a pattern, zeroes `n` blocks at `at`, and
/// checks that exactly those read back as zeroes.
fn zeroes_read_back(h: &Harness, name: &'static str, at: u64, n: u64, seed: u8) {
    let out = h.block_on(0, async move {
        let d = Desc::open(name, true, |_| {}).unwrap();
        let ch = d.get_io_channel().unwrap();
        d.writev_blocks(&ch, bufs(&[512 * 256], &pattern(512 * 256, seed)), 0, 256)
            .await
            .unwrap();
        d.write_zeroes_blocks(&ch, at, n).await.unwrap();
        concat(
            &d.readv_blocks(&ch, bufs(&[512 * 256], &[1; 512 * 256]), 0, 256)
                .await
                .unwrap(),
        )
    });
    let mut want = pattern(512 * 256, seed);
    want[at as usize * 512..(at + n) as usize * 512].fill(0);
    assert_eq!(out, want);
}

#[test]
fn write_zeroes_is_emulated_with_writes_where_the_bdev_lacks_it() {
    let h = Harness::new(1);
    let seen = ram("r_wz", |p| p, false, 0);
    assert!(h.run_on(0, || {
        get_by_name("r_wz")
            .unwrap()
            .io_type_supported(IoType::WriteZeroes)
    }));
    zeroes_read_back(&h, "r_wz", 10, 200, 1);
    assert_eq!(write_zeroes_seen(&seen), 0);
}

#[test]
fn write_zeroes_the_device_refuses_is_emulated_from_then_on() {
    let h = Harness::new(1);
    // Listed, but refused when it arrives (an NVMe target whose backend can't zero).
    let seen = ram("refuse_wz", |p| p.max_write_zeroes(48), true, 0);
    zeroes_read_back(&h, "refuse_wz", 10, 200, 1);
    let wz = write_zeroes_seen;
    // The request's pieces (48 blocks each, in flight together) reached the module and
    // were refused, each then written as zeroes.
    assert_eq!(wz(&seen), 5);
    seen.lock().unwrap().clear();
    zeroes_read_back(&h, "refuse_wz", 0, 256, 2);
    assert_eq!(wz(&seen), 0, "no write_zeroes reaches the module any more");
    assert!(h.run_on(0, || {
        get_by_name("refuse_wz")
            .unwrap()
            .io_type_supported(IoType::WriteZeroes)
    }));
}

#[test]
fn a_refused_write_zeroes_forwarded_in_place_is_emulated_at_the_base() {
    let h = Harness::new(1);
    // The base refuses write_zeroes; the bdev above forwards in place, so the refused I/O
    // carries the upper bdev's frame (40 blocks: whole), or is a piece of the base's split
    // at 48 blocks (200 blocks, two of them refused at once).
    let seen = ram("refuse_wz_base", |p| p.max_write_zeroes(48), true, 0);
    h.run_on(0, || {
        let base = Arc::new(Desc::open("refuse_wz_base", true, |_| {}).unwrap());
        register(
            BdevProps::new("r_fwd_wz", 512, 256).optimal_io_boundary(16, true),
            Arc::new(Fwd { base }),
        )
        .unwrap();
    });
    zeroes_read_back(&h, "r_fwd_wz", 3, 40, 4);
    zeroes_read_back(&h, "r_fwd_wz", 0, 256, 5);
    assert!(
        write_zeroes_seen(&seen) > 0,
        "the base saw (and refused) write_zeroes"
    );
    // The upper bdev counted the two pattern writes, the base the 16-block pieces they
    // were split into above it (write_zeroes is not a counted type, as in SPDK, and the
    // emulation's writes are internal); both bdevs go away cleanly.
    let (upper, base) = h.block_on(0, async {
        let u = get_by_name("r_fwd_wz").unwrap().iostat().await.unwrap();
        let b = get_by_name("refuse_wz_base")
            .unwrap()
            .iostat()
            .await
            .unwrap();
        (u, b)
    });
    assert_eq!(upper.num_write_ops, 2, "{upper:?}");
    assert_eq!(base.num_write_ops, 2 * 16, "{base:?}");
    h.block_on(0, async {
        get_by_name("r_fwd_wz")
            .unwrap()
            .unregister_async()
            .await
            .unwrap();
        get_by_name("refuse_wz_base")
            .unwrap()
            .unregister_async()
            .await
            .unwrap();
    });
    h.run_on(0, || {
        assert!(get_by_name("r_fwd_wz").is_none() && get_by_name("refuse_wz_base").is_none())
    });
}

#[test]
fn write_zeroes_beyond_max_write_zeroes_is_split() {
    let h = Harness::new(1);
    let seen = ram("r_wz_max", |p| p.max_write_zeroes(48), true, 0);
    zeroes_read_back(&h, "r_wz_max", 7, 200, 2);
    let seen = seen.lock().unwrap();
    let wz: Vec<(u64, u64)> = seen
        .iter()
        .filter(|s| s.t == IoType::WriteZeroes)
        .map(|s| (s.offset, s.num))
        .collect();
    // As write_zeroes (not emulated), none longer than the limit, covering the range.
    assert_eq!(wz.len(), 5, "{wz:?}");
    assert!(wz.iter().all(|&(_, n)| n <= 48), "{wz:?}");
    assert_eq!(wz.iter().map(|&(_, n)| n).sum::<u64>(), 200);
}

/// Submits three one-block writes through `name` on thread 0 and polls until each has
/// succeeded (nothing else completes to trigger NOMEM retries: the retry poller does, on
/// time); the channel they went through.
fn three_writes_succeed(h: &Harness, name: &str) -> BdevChannel {
    writes_succeed(h, name, &[0, 1, 2])
}

/// One-block writes at `lbas` through `name`, all submitted at once, then polled (and
/// the clock moved, for NOMEM retries) until every one succeeded; the channel they used.
fn writes_succeed(h: &Harness, name: &str, lbas: &[u64]) -> BdevChannel {
    let d = Rc::new(h.run_on(0, || Desc::open(name, true, |_| {}).unwrap()));
    let ch = h.run_on(0, || d.get_io_channel().unwrap());
    let ok = Rc::new(Cell::new(0));
    for &i in lbas {
        let ok = ok.clone();
        h.run_on(0, || {
            d.write_blocks(&ch, DmaBuf::new(512, 8).unwrap(), i, 1)
                .submit(move |c| {
                    assert!(c.is_success(), "{:?}", c.status);
                    ok.set(ok.get() + 1)
                })
        });
    }
    for _ in 0..20 {
        h.poll_threads();
        h.advance_time_us(100);
    }
    assert_eq!(ok.get(), lbas.len());
    ch
}

#[test]
fn nomem_from_the_module_is_retried_not_reported() {
    let h = Harness::new(1);
    let seen = ram("r_nomem", |p| p, true, 5);
    three_writes_succeed(&h, "r_nomem");
    assert_eq!(seen.lock().unwrap().len(), 3 + 5);
}

/// One read through `d` on `ch`, polled to completion; whether it succeeded.
fn ok_read(h: &Harness, d: &Desc, ch: &BdevChannel) -> bool {
    let r = Rc::new(Cell::new(None));
    let r2 = r.clone();
    h.run_on(0, || {
        d.read_blocks(ch, DmaBuf::new(512, 8).unwrap(), 0, 1)
            .submit(move |c| r2.set(Some(c.is_success())))
    });
    for _ in 0..100 {
        h.poll_threads();
        if r.get().is_some() {
            break;
        }
        h.advance_time_us(100);
    }
    r.get() == Some(true)
}

#[test]
fn qos_holds_io_to_the_iops_limit_per_timeslice() {
    let h = Harness::new(1);
    let seen = ram("r_qos", |p| p, true, 0);
    let b = h.run_on(0, || get_by_name("r_qos").unwrap());
    // 1500/s rounds up to 2000/s: 2 I/Os per 1 ms timeslice.
    h.block_on(0, {
        let b = b.clone();
        async move {
            b.set_qos_limits([Some(1500), None, None, None])
                .await
                .unwrap()
        }
    });
    assert_eq!(b.qos_limits().rw_ios_per_sec, 2000);
    let d = Rc::new(h.run_on(0, || Desc::open("r_qos", true, |_| {}).unwrap()));
    let ch = Rc::new(h.run_on(0, || d.get_io_channel().unwrap()));
    let done = Rc::new(Cell::new(0));
    for i in 0..10u64 {
        let done = done.clone();
        h.run_on(0, || {
            d.read_blocks(&ch, DmaBuf::new(512, 8).unwrap(), i, 1)
                .submit(move |c| {
                    assert!(c.is_success());
                    done.set(done.get() + 1)
                })
        });
    }
    h.poll_threads();
    assert_eq!(done.get(), 2, "the first timeslice's budget");
    for slice in 1..=4 {
        h.advance_time_us(1000);
        h.poll_threads();
        assert_eq!(done.get(), 2 + 2 * slice);
    }
    // Unmap is not limited; turning the limit off releases the rest at once.
    h.block_on(0, {
        let b = b.clone();
        async move { b.set_qos_limits([Some(0), None, None, None]).await.unwrap() }
    });
    h.advance_time_us(100);
    h.poll_threads();
    assert_eq!(done.get(), 10);
    assert!(!b.qos_limits().any());
    assert_eq!(seen.lock().unwrap().len(), 10);
    // Absurd limits are taken, not a panic.
    h.block_on(0, {
        let b = b.clone();
        async move {
            b.set_qos_limits([Some(u64::MAX), Some(u64::MAX), None, None])
                .await
                .unwrap()
        }
    });
    assert!(b.qos_limits().any());
    for _ in 0..3 {
        h.advance_time_us(5000);
        let ok = ok_read(&h, &d, &ch);
        assert!(ok);
    }
}

#[test]
fn reset_freezes_aborts_new_io_and_a_second_reset_waits_for_the_first() {
    let h = Harness::new(2);
    let seen = ram("r_reset", |p| p, true, 0);
    let d = Arc::new(h.run_on(0, || Desc::open("r_reset", true, |_| {}).unwrap()));
    let ch0 = Rc::new(h.run_on(0, || d.get_io_channel().unwrap()));
    let ch1 = Rc::new(h.run_on(1, || d.get_io_channel().unwrap()));
    let r1 = Rc::new(Cell::new(None));
    let r2 = Rc::new(Cell::new(None));
    let late = Rc::new(Cell::new(None));
    let (a, b) = (r1.clone(), r2.clone());
    h.run_on(0, || d.reset(&ch0).submit(move |c| a.set(Some(c.status))));
    h.run_on(1, || d.reset(&ch1).submit(move |c| b.set(Some(c.status))));
    // Let the first reset freeze the other thread's channel, then try I/O there.
    let frozen = |c: &BdevChannel| c.ch.flags.get() & super::channel::FLAG_FROZEN != 0;
    for _ in 0..100 {
        if frozen(&ch1) {
            break;
        }
        h.poll_thread(0);
        h.poll_thread(1);
    }
    assert!(frozen(&ch1));
    let l = late.clone();
    h.run_on(1, || {
        d.read_blocks(&ch1, DmaBuf::new(512, 8).unwrap(), 0, 1)
            .submit(move |c| l.set(Some(c.status)))
    });
    for _ in 0..10 {
        h.poll_threads();
    }
    assert_eq!(r1.get(), Some(IoStatus::Success));
    assert_eq!(r2.get(), Some(IoStatus::Success));
    assert_eq!(late.get(), Some(IoStatus::Aborted));
    let resets = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.t == IoType::Reset)
        .count();
    assert_eq!(resets, 1, "the second reset rode on the first");
    // Unfrozen again.
    let again = Rc::new(Cell::new(None));
    let g = again.clone();
    h.run_on(1, || {
        d.read_blocks(&ch1, DmaBuf::new(512, 8).unwrap(), 0, 1)
            .submit(move |c| g.set(Some(c.status)))
    });
    h.poll_threads();
    assert_eq!(again.get(), Some(IoStatus::Success));
}

#[test]
fn a_reset_queued_behind_a_later_reset_waits_for_that_one() {
    // R1 ends: it unfreezes, lets new resets start, then sweeps its queued resets. R3
    // starts in that gap and R4 queues behind R3: R4 must complete with R3's reset (the
    // module's second), not with R1's, whose sweep passes R4's channel afterwards.
    let h = Harness::new(3);
    let seen = ram("r_epoch", |p| p, true, 0);
    let d = Arc::new(h.run_on(0, || Desc::open("r_epoch", true, |_| {}).unwrap()));
    let chs: Vec<Rc<BdevChannel>> = (0..3)
        .map(|t| Rc::new(h.run_on(t, || d.get_io_channel().unwrap())))
        .collect();
    let module_resets = {
        let seen = seen.clone();
        move || {
            seen.lock()
                .unwrap()
                .iter()
                .filter(|s| s.t == IoType::Reset)
                .count()
        }
    };
    let r1 = Rc::new(Cell::new(None));
    let a = r1.clone();
    h.run_on(0, || {
        d.reset(&chs[0]).submit(move |c| a.set(Some(c.status)))
    });
    let busy = || chs[0].ch.bdev.reset_busy.lock().unwrap().0;
    // One thread's poll at a time, until R1 has cleared `busy` (and is sweeping).
    let mut gap = false;
    'outer: for _ in 0..1000 {
        for t in 0..3 {
            h.poll_thread(t);
            if module_resets() == 1 && !busy() && r1.get().is_none() {
                gap = true;
                break 'outer;
            }
        }
    }
    assert!(gap, "R1 reached its final sweep");
    let r3 = Rc::new(Cell::new(None));
    let r4 = Rc::new(Cell::new(None));
    let (c3, c4) = (r3.clone(), r4.clone());
    h.run_on(1, || {
        d.reset(&chs[1]).submit(move |c| c3.set(Some(c.status)))
    });
    let resets_then = Rc::new(Cell::new(0));
    let (rt, mr) = (resets_then.clone(), module_resets.clone());
    h.run_on(2, || {
        d.reset(&chs[2]).submit(move |c| {
            rt.set(mr());
            c4.set(Some(c.status));
        })
    });
    for _ in 0..50 {
        h.poll_threads();
    }
    assert_eq!(r1.get(), Some(IoStatus::Success));
    assert_eq!(r3.get(), Some(IoStatus::Success));
    assert_eq!(r4.get(), Some(IoStatus::Success));
    assert_eq!(module_resets(), 2);
    assert_eq!(
        resets_then.get(),
        2,
        "R4 completed only once R3's reset had reached the module"
    );
}

#[test]
fn histograms_and_per_channel_stats_come_out_in_spdk_shape() {
    let h = Harness::new(2);
    ram("r_hist", |p| p, true, 0);
    let m = Rc::new(crate::config::Methods::new());
    let call = |h: &Harness, method: &'static str, p: serde_json::Value| {
        let m = m.clone();
        h.block_on(0, async move { m.call(method, Some(p)).await })
    };
    let e = call(
        &h,
        "bdev_get_histogram",
        serde_json::json!({"name": "r_hist"}),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("Bad address: histogram is not enabled"),
        "{e}"
    );
    let e = call(
        &h,
        "bdev_enable_histogram",
        serde_json::json!({"name": "r_hist", "enable": true, "opc": "nvme_admin"}),
    )
    .unwrap_err();
    assert!(e.to_string().contains("Invalid Io type"), "{e}");
    call(
        &h,
        "bdev_enable_histogram",
        serde_json::json!({"name": "r_hist", "enable": true, "opc": "read"}),
    )
    .unwrap();
    let d = Arc::new(h.run_on(0, || Desc::open("r_hist", true, |_| {}).unwrap()));
    let mut keep = Vec::new();
    for t in 0..2 {
        let d = d.clone();
        let ch = h.run_on(t, || d.get_io_channel().unwrap());
        let ch2 = ch.clone();
        h.block_on(t, async move {
            for i in 0..5 {
                d.read_blocks(&ch2, DmaBuf::new(512, 8).unwrap(), i, 1)
                    .await
                    .unwrap();
            }
            d.write_blocks(&ch2, DmaBuf::new(512, 8).unwrap(), 0, 1)
                .await
                .unwrap();
        });
        // Per-channel stats need the channels alive.
        keep.push(ch);
    }
    let v = call(
        &h,
        "bdev_get_histogram",
        serde_json::json!({"name": "r_hist"}),
    )
    .unwrap();
    assert_eq!(v["bucket_shift"], 7);
    assert!(v["tsc_rate"].as_u64().unwrap() > 0);
    let hist = Histogram::from_base64(v["histogram"].as_str().unwrap()).unwrap();
    assert_eq!(hist.count(), 10, "reads only, both threads");
    let saved = h.run_on(0, crate::config::save_config);
    assert!(
        saved
            .to_string()
            .contains(r#""method":"bdev_enable_histogram""#),
        "{saved}"
    );

    let v = call(
        &h,
        "bdev_get_iostat",
        serde_json::json!({"name": "r_hist", "per_channel": true}),
    )
    .unwrap();
    let chans = v["channels"].as_array().unwrap();
    assert_eq!(chans.len(), 2);
    for c in chans {
        assert_eq!(c["num_read_ops"], 5);
        assert_eq!(c["num_write_ops"], 1);
        assert!(c["thread_id"].as_u64().is_some());
    }
    assert_eq!(v["name"], "r_hist");
    let e = call(
        &h,
        "bdev_get_iostat",
        serde_json::json!({"per_channel": true}),
    )
    .unwrap_err();
    assert!(e.to_string().contains("needs a bdev name"), "{e}");
    // SPDK's field set: copy counters, an io_error object (per-channel entries have none).
    let v = call(&h, "bdev_get_iostat", serde_json::json!({"name": "r_hist"})).unwrap();
    let b = &v["bdevs"][0];
    assert_eq!(
        (&b["num_read_ops"], &b["num_copy_ops"]),
        (&10.into(), &0.into()),
        "{v}"
    );
    assert_eq!(b["io_error"], serde_json::json!({}), "{v}");
    assert!(b["max_read_latency_ticks"].as_u64().is_some(), "{v}");
    assert!(
        chans.iter().all(|c| c.get("io_error").is_none()),
        "{chans:?}"
    );
    // A read that takes 50 ticks (the harness's clock moves only when told).
    h.run_on(0, || {
        d.read_blocks(&keep[0], DmaBuf::new(512, 8).unwrap(), 0, 1)
            .submit(|c| assert!(c.is_success()))
    });
    h.advance_time_us(50);
    h.poll_threads();
    let v = call(&h, "bdev_get_iostat", serde_json::json!({"name": "r_hist"})).unwrap();
    let b = &v["bdevs"][0];
    assert_eq!(
        (&b["num_read_ops"], &b["max_read_latency_ticks"]),
        (&11.into(), &50.into()),
        "{v}"
    );
    // bdev_reset_iostat: maxmin keeps the counts, all clears them (on every channel).
    call(
        &h,
        "bdev_reset_iostat",
        serde_json::json!({"name": "r_hist", "mode": "maxmin"}),
    )
    .unwrap();
    let v = call(&h, "bdev_get_iostat", serde_json::json!({"name": "r_hist"})).unwrap();
    let b = &v["bdevs"][0];
    assert_eq!(
        (
            &b["num_read_ops"],
            &b["read_latency_ticks"],
            &b["max_read_latency_ticks"],
            &b["min_read_latency_ticks"]
        ),
        (&11.into(), &50.into(), &0.into(), &0.into()),
        "{v}"
    );
    call(&h, "bdev_reset_iostat", serde_json::json!({})).unwrap();
    let v = call(&h, "bdev_get_iostat", serde_json::json!({"name": "r_hist"})).unwrap();
    let b = &v["bdevs"][0];
    assert_eq!(
        (&b["num_read_ops"], &b["io_error"]),
        (&0.into(), &serde_json::json!({}))
    );
    assert!(
        call(&h, "bdev_reset_iostat", serde_json::json!({"mode": "none"})).is_err(),
        "SPDK's decoder refuses mode none"
    );
    assert!(call(&h, "bdev_reset_iostat", serde_json::json!({"name": "nope"})).is_err());
    for (t, ch) in keep.into_iter().enumerate() {
        h.run_on(t, || drop(ch));
    }
}

/// Opens `name` on thread 0 with a 2 s timeout that records the late I/Os, and submits a
/// one-block write at block 3 and a one-block read at block 7 through it: the
/// descriptor, its channel, the late I/Os, whether the write succeeded.
#[allow(clippy::type_complexity)]
fn write_and_read_under_a_timeout(
    h: &Harness,
    name: &str,
) -> (
    Rc<Desc>,
    Rc<BdevChannel>,
    Arc<Mutex<Vec<TimedOutIo>>>,
    Rc<Cell<bool>>,
) {
    let late = Arc::new(Mutex::new(Vec::new()));
    let l2 = late.clone();
    let d = Rc::new(h.run_on(0, || Desc::open(name, true, |_| {}).unwrap()));
    h.run_on(0, || {
        d.set_timeout(2, move |io| l2.lock().unwrap().push(io))
            .unwrap()
    });
    let ch = Rc::new(h.run_on(0, || d.get_io_channel().unwrap()));
    let wrote = Rc::new(Cell::new(false));
    let w = wrote.clone();
    h.run_on(0, || {
        d.write_blocks(&ch, DmaBuf::new(512, 8).unwrap(), 3, 1)
            .submit(move |c| w.set(c.is_success()));
        d.read_blocks(&ch, DmaBuf::new(512, 8).unwrap(), 7, 1)
            .submit(|_| {});
    });
    (d, ch, late, wrote)
}

#[test]
fn a_timeout_reports_each_late_io_once_on_its_thread() {
    let h = Harness::new(1);
    ram_with("r_to", |p| p, true, 0, true);
    // A write completes; a read is held by the module.
    let (d, ch, late, wrote) = write_and_read_under_a_timeout(&h, "r_to");
    for _ in 0..15 {
        h.advance_time_us(100_000);
        h.poll_threads();
    }
    assert!(wrote.get());
    assert!(
        late.lock().unwrap().is_empty(),
        "1.5 s is within the 2 s timeout"
    );
    for _ in 0..10 {
        h.advance_time_us(100_000);
        h.poll_threads();
    }
    let l = late.lock().unwrap().clone();
    assert_eq!(l.len(), 1, "{l:?}");
    assert_eq!(
        (l[0].io_type, l[0].offset_blocks, l[0].num_blocks),
        (IoType::Read, 7, 1)
    );
    assert!(l[0].age_us > 2_000_000);
    // Off again: nothing more is tracked.
    h.run_on(0, || d.set_timeout(0, |_| {}).unwrap());
    h.poll_threads();
    assert_eq!(ch.ch.flags.get() & super::channel::FLAG_TIMEOUT, 0);
}

/// Completes reads at once, failed from block 128 on.
struct HalfBad;

impl BdevOps for HalfBad {
    type Channel = ();
    fn module_name(&self) -> &'static str {
        "half_bad_test"
    }
    fn create_channel(&self) -> crate::Result<()> {
        Ok(())
    }
    fn submit_request(&self, _: &(), io: BdevIo) {
        let failed = io.offset_blocks() >= 128;
        io.complete(if failed {
            IoStatus::Failed
        } else {
            IoStatus::Success
        });
    }
    fn io_type_supported(&self, t: IoType) -> bool {
        t == IoType::Read
    }
}

/// Forwards with `forward_to_on_error`, counting its callback's calls.
struct OnErrFwd {
    base: Arc<Desc>,
    calls: Arc<Mutex<Vec<IoStatus>>>,
}

impl BdevOps for OnErrFwd {
    type Channel = BdevChannel;
    fn module_name(&self) -> &'static str {
        "on_error_test"
    }
    fn create_channel(&self) -> crate::Result<BdevChannel> {
        self.base.get_io_channel()
    }
    fn submit_request(&self, ch: &BdevChannel, io: BdevIo) {
        let calls = self.calls.clone();
        let off = io.offset_blocks();
        io.forward_to_on_error(&self.base, ch, off, move |st, io| {
            calls.lock().unwrap().push(st);
            io.complete(st)
        });
    }
    fn io_type_supported(&self, t: IoType) -> bool {
        t == IoType::Read
    }
}

/// Registers a [`HalfBad`] bdev `base` and an [`OnErrFwd`] `name` over it; the statuses
/// its callback is called with.
fn on_error_over_half_bad(h: &Harness, base: &str, name: &str) -> Arc<Mutex<Vec<IoStatus>>> {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let c2 = calls.clone();
    let (base, name) = (base.to_string(), name.to_string());
    h.run_on(0, move || {
        register(BdevProps::new(&base, 512, 256), Arc::new(HalfBad)).unwrap();
        let base = Arc::new(Desc::open(&base, true, |_| {}).unwrap());
        let fwd = OnErrFwd { base, calls: c2 };
        register(BdevProps::new(&name, 512, 256), Arc::new(fwd)).unwrap();
    });
    calls
}

/// Reads one block through `name` at 10 (good on a [`HalfBad`] below) and one at 200
/// (bad): whether the first succeeded, and the second's status if it failed.
fn good_and_bad_reads(h: &Harness, name: &str) -> (bool, Option<IoStatus>) {
    let name = name.to_string();
    h.block_on(0, async move {
        let d = Desc::open(&name, false, |_| {}).unwrap();
        let ch = d.get_io_channel().unwrap();
        let buf = || DmaBuf::page_aligned(512).unwrap();
        let good = d.read_blocks(&ch, buf(), 10, 1).await.is_ok();
        let bad = d
            .read_blocks(&ch, buf(), 200, 1)
            .await
            .err()
            .map(|e| e.status);
        (good, bad)
    })
}

#[test]
fn a_forward_on_error_calls_back_on_failure_only() {
    let h = Harness::new(1);
    let calls = on_error_over_half_bad(&h, "half_bad", "on_err");
    let (good, bad) = good_and_bad_reads(&h, "on_err");
    // The success went up with no call back; the failure came back to the module.
    assert!(good);
    assert_eq!(bad, Some(IoStatus::Failed));
    assert_eq!(*calls.lock().unwrap(), vec![IoStatus::Failed]);
    // Both levels counted the read that succeeded.
    for name in ["half_bad", "on_err"] {
        let st = h.block_on(0, async move {
            get_by_name(name).unwrap().iostat().await.unwrap()
        });
        assert_eq!(st.num_read_ops, 1, "{name}");
    }
}

/// A pass-through bdev ([`BdevOps::pass_through`]) over `base`, counting the I/Os that
/// still reach its module.
struct Pass {
    base: Arc<Desc>,
    calls: Arc<std::sync::atomic::AtomicUsize>,
}

impl BdevOps for Pass {
    type Channel = BdevChannel;
    fn module_name(&self) -> &'static str {
        "pass_test"
    }
    fn create_channel(&self) -> crate::Result<BdevChannel> {
        self.base.get_io_channel()
    }
    fn submit_request(&self, ch: &BdevChannel, io: BdevIo) {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        io.forward_and_complete(&self.base, ch);
    }
    fn pass_through(&self, ch: &BdevChannel) -> Option<super::PassThrough> {
        Some(super::PassThrough::to(self.base.clone(), ch.clone()))
    }
    fn io_type_supported(&self, t: IoType) -> bool {
        matches!(
            t,
            IoType::Read | IoType::Write | IoType::WriteZeroes | IoType::Reset
        )
    }
}

/// Registers a [`Pass`] named `name` over `base` (on the harness's thread 0); what reaches
/// its module is counted in what comes back.
fn pass(h: &Harness, name: &str, base: &str) -> Arc<std::sync::atomic::AtomicUsize> {
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c2 = calls.clone();
    let (name, base) = (name.to_string(), base.to_string());
    h.run_on(0, move || {
        let base = Arc::new(Desc::open(&base, true, |_| {}).unwrap());
        let p = Pass { base, calls: c2 };
        register(BdevProps::new(&name, 512, 256), Arc::new(p)).unwrap();
    });
    calls
}

fn calls(c: &std::sync::atomic::AtomicUsize) -> usize {
    c.load(std::sync::atomic::Ordering::Relaxed)
}

/// A descriptor of `name` and its channel on thread 0: held, it keeps that channel (and,
/// through it, the channels below) alive, so that later I/O on the thread uses the same
/// ones and [`outstanding_on`] reads the counts they left.
fn hold(h: &Harness, name: &str) -> (Desc, BdevChannel) {
    h.run_on(0, || {
        let d = Desc::open(name, false, |_| {}).unwrap();
        let ch = d.get_io_channel().unwrap();
        (d, ch)
    })
}

/// What the channel of bdev `name` on thread 0 has outstanding (see [`hold`]).
fn outstanding_on(h: &Harness, name: &str) -> u64 {
    let name = name.to_string();
    h.run_on(0, move || {
        let d = Desc::open(&name, false, |_| {}).unwrap();
        d.get_io_channel().unwrap().outstanding()
    })
}

fn iostat(h: &Harness, name: &str) -> IoStats {
    let name = name.to_string();
    h.block_on(0, async move {
        get_by_name(&name).unwrap().iostat().await.unwrap()
    })
}

#[test]
fn pass_through_levels_are_taken_down_by_the_layer_and_each_counts_the_io() {
    // Two pass-through bdevs stacked on the RAM bdev: the I/O goes down both without a
    // call to either module, arrives unchanged, and every level counts it once.
    let h = Harness::new(1);
    let seen = ram("r_pass", |p| p, true, 0);
    let mid = pass(&h, "p_mid", "r_pass");
    let top = pass(&h, "p_top", "p_mid");
    let _held = hold(&h, "p_top");
    write_read_back(&h, "p_top", 100, 16, 6);
    assert_eq!((calls(&mid), calls(&top)), (0, 0));
    let seen: Vec<(IoType, u64, u64)> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| (s.t, s.offset, s.num))
        .collect();
    assert_eq!(
        seen,
        vec![(IoType::Write, 100, 16), (IoType::Read, 100, 16)]
    );
    for n in ["p_top", "p_mid", "r_pass"] {
        let st = iostat(&h, n);
        assert_eq!((st.num_write_ops, st.num_read_ops), (1, 1), "{n}");
        assert_eq!(
            (st.bytes_written, st.bytes_read),
            (16 * 512, 16 * 512),
            "{n}"
        );
        // Nothing left outstanding on any level's channel.
        assert_eq!(outstanding_on(&h, n), 0, "{n}");
    }
}

#[test]
fn nomem_below_a_pass_through_waits_on_the_base_and_is_retried_there() {
    let h = Harness::new(1);
    let seen = ram("r_pass_nomem", |p| p, true, 5);
    let up = pass(&h, "p_nomem", "r_pass_nomem");
    let ch = three_writes_succeed(&h, "p_nomem");
    // Resubmitted to the base, not to the pass-through module.
    assert_eq!(seen.lock().unwrap().len(), 3 + 5);
    assert_eq!(calls(&up), 0);
    assert_eq!(ch.outstanding(), 0);
    for n in ["p_nomem", "r_pass_nomem"] {
        assert_eq!(iostat(&h, n).num_write_ops, 3, "{n}");
        assert_eq!(outstanding_on(&h, n), 0, "{n}");
    }
}

#[test]
fn what_cant_pass_through_goes_to_the_module_and_down_as_a_forward() {
    // The base takes at most 8 blocks at a time: an I/O it would have to split goes to
    // the pass-through's module, which forwards it (and the base's services split it);
    // one that fits passes through. A reset goes to the module too.
    let h = Harness::new(1);
    let seen = ram("r_pass_lim", |p| p.max_rw_size(8), true, 0);
    let up = pass(&h, "p_lim", "r_pass_lim");
    write_read_back(&h, "p_lim", 5, 40, 2);
    assert_eq!(calls(&up), 2);
    assert!(seen.lock().unwrap().iter().all(|s| s.num <= 8));
    // An I/O within the base's limits passes through all the same.
    let back = h.block_on(0, async move {
        let d = Desc::open("p_lim", true, |_| {}).unwrap();
        let ch = d.get_io_channel().unwrap();
        d.readv_blocks(&ch, bufs(&[4 * 512], &[0; 4 * 512]), 9, 4)
            .await
            .unwrap()
    });
    assert_eq!(concat(&back), pattern(40 * 512, 2)[4 * 512..8 * 512]);
    assert_eq!(calls(&up), 2);
    for n in ["p_lim", "r_pass_lim"] {
        let st = iostat(&h, n);
        assert_eq!((st.num_write_ops, st.num_read_ops), (1, 2), "{n}");
    }
    // A reset of the pass-through goes to its module, which forwards it to the base.
    let ok = h.block_on(0, async move {
        let d = Desc::open("p_lim", true, |_| {}).unwrap();
        let ch = d.get_io_channel().unwrap();
        d.reset(&ch).await.is_ok()
    });
    assert!(ok);
    assert_eq!(calls(&up), 3);
}

#[test]
fn a_forward_below_a_pass_through_comes_back_to_its_level_then_goes_on_up() {
    // pass-through -> forward with a callback on failure -> a bdev failing the upper half:
    // the failure comes back to the middle module (at its level, under the pass-through),
    // and then completes on up; every level counts the read that succeeded.
    let h = Harness::new(1);
    let errs = on_error_over_half_bad(&h, "half_bad_p", "on_err_p");
    let up = pass(&h, "p_on_err", "on_err_p");
    let held = hold(&h, "p_on_err");
    let (good, bad) = good_and_bad_reads(&h, "p_on_err");
    assert!(good);
    assert_eq!(bad, Some(IoStatus::Failed));
    assert_eq!(held.1.outstanding(), 0);
    assert_eq!(*errs.lock().unwrap(), vec![IoStatus::Failed]);
    assert_eq!(calls(&up), 0);
    for n in ["half_bad_p", "on_err_p", "p_on_err"] {
        let st = iostat(&h, n);
        assert_eq!(st.num_read_ops, 1, "{n}");
        assert_eq!(st.io_error.values().sum::<u64>(), 1, "{n}");
        assert_eq!(outstanding_on(&h, n), 0, "{n}");
    }
}

#[test]
fn a_write_zeroes_refused_below_a_pass_through_is_emulated_at_the_base() {
    // The base lists write_zeroes and has no limits, so the I/O passes through to it; it
    // refuses it there, and the emulation (writes of zeroes) runs on the base's channel.
    let h = Harness::new(1);
    let seen = ram("refuse_wz_pass", |p| p, true, 0);
    let up = pass(&h, "p_wz", "refuse_wz_pass");
    let _held = hold(&h, "p_wz");
    zeroes_read_back(&h, "p_wz", 3, 40, 4);
    assert!(
        write_zeroes_seen(&seen) > 0,
        "the base saw (and refused) write_zeroes"
    );
    // All of it passed through: the write, the write_zeroes, and the read.
    assert_eq!(calls(&up), 0);
    // Both count the pattern write; the emulation's writes are the base's own pieces.
    for n in ["p_wz", "refuse_wz_pass"] {
        assert_eq!(iostat(&h, n).num_write_ops, 1, "{n}");
        assert_eq!(outstanding_on(&h, n), 0, "{n}");
    }
    // The base emulates write_zeroes from now on: the next one needs its service, so it
    // goes to the module, which forwards it; it never reaches the base's module.
    seen.lock().unwrap().clear();
    zeroes_read_back(&h, "p_wz", 0, 256, 5);
    assert_eq!(calls(&up), 1);
    assert_eq!(write_zeroes_seen(&seen), 0);
}

#[test]
fn a_stack_of_pass_throughs_deeper_than_the_hops_goes_on_with_frames() {
    // Seven pass-through bdevs over the RAM bdev: from the top, the I/O goes four levels
    // down by pass-through (`MAX_HOPS`); the module it reaches there forwards it with a
    // frame, and so do the two below (hops come only before frames). Every level counts
    // each I/O once, keeps a histogram of it when asked, and has nothing outstanding.
    let h = Harness::new(1);
    let seen = ram("r_pdeep", |p| p, true, 0);
    let names: Vec<String> = std::iter::once("r_pdeep".to_string())
        .chain((1..8).map(|i| format!("p_deep{i}")))
        .collect();
    let counts: Vec<_> = names.windows(2).map(|w| pass(&h, &w[1], &w[0])).collect();
    let all = names.clone();
    h.block_on(0, async move {
        for n in &all {
            let b = get_by_name(n).unwrap();
            b.enable_histogram(true, None).await.unwrap();
        }
    });
    // A timeout on p_deep2 (another opener): the frame forwarded into it goes by the
    // slow path, so a pass-through level is entered with levels passed above.
    let timed = Rc::new(h.run_on(0, || Desc::open("p_deep2", false, |_| {}).unwrap()));
    h.run_on(0, || {
        timed
            .set_timeout(60, |_| panic!("nothing was submitted here"))
            .unwrap()
    });
    let top = names[7].clone();
    let _held = hold(&h, &top);
    write_read_back(&h, &top, 200, 8, 7);
    assert_eq!(seen.lock().unwrap().len(), 2);
    // The top four levels were passed through; the fifth module got both I/Os, and so
    // did the two below it (frames, not hops).
    let got: Vec<usize> = counts.iter().map(|c| calls(c)).collect();
    assert_eq!(got, vec![2, 2, 2, 0, 0, 0, 0], "from the bottom up");
    for n in names {
        let st = iostat(&h, &n);
        assert_eq!((st.num_write_ops, st.num_read_ops), (1, 1), "{n}");
        assert_eq!(outstanding_on(&h, &n), 0, "{n}");
        let m = n.clone();
        let hist = h.block_on(0, async move {
            get_by_name(&m).unwrap().histogram().await.unwrap()
        });
        assert_eq!(hist.map(|x| x.count()), Some(2), "{n}");
    }
}

#[test]
fn timeouts_above_and_below_a_pass_through_leave_it_passing_io_through() {
    // A timeout on the pass-through's descriptor tracks its I/O at the top, and one on the
    // base's (another opener) doesn't stop the I/O passing through to it: the write
    // completes untracked, the read the base holds is reported late once, at the top.
    let h = Harness::new(1);
    ram_with("r_pto", |p| p, true, 0, true);
    let up = pass(&h, "p_to", "r_pto");
    let below = Rc::new(h.run_on(0, || Desc::open("r_pto", false, |_| {}).unwrap()));
    h.run_on(0, || {
        below
            .set_timeout(1, |_| panic!("nothing was submitted here"))
            .unwrap()
    });
    let (_d, _ch, late, wrote) = write_and_read_under_a_timeout(&h, "p_to");
    for _ in 0..25 {
        h.advance_time_us(100_000);
        h.poll_threads();
    }
    assert!(wrote.get());
    assert_eq!(calls(&up), 0);
    let l = late.lock().unwrap().clone();
    assert_eq!(l.len(), 1, "{l:?}");
    assert_eq!(
        (l[0].io_type, l[0].offset_blocks, l[0].num_blocks),
        (IoType::Read, 7, 1)
    );
    // The write is counted at both levels; the read is still in the base.
    for n in ["p_to", "r_pto"] {
        assert_eq!(iostat(&h, n).num_write_ops, 1, "{n}");
        assert_eq!(outstanding_on(&h, n), 1, "{n}");
    }
}

/// A striped pass-through ([`PassThrough::striped`]): strips of `strip` blocks dealt over
/// `members`, member `i`'s data from its block `offset + 2 * i`. Its module maps an I/O
/// itself, as raid0's does, and counts what reaches it.
struct StripeTest {
    members: Vec<Arc<Desc>>,
    strip: u64,
    offset: u64,
    calls: Arc<std::sync::atomic::AtomicUsize>,
}

impl BdevOps for StripeTest {
    type Channel = Vec<BdevChannel>;
    fn module_name(&self) -> &'static str {
        "stripe_test"
    }
    fn create_channel(&self) -> crate::Result<Vec<BdevChannel>> {
        self.members.iter().map(|d| d.get_io_channel()).collect()
    }
    fn submit_request(&self, chs: &Vec<BdevChannel>, io: BdevIo) {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if io.io_type() == IoType::Reset {
            return io.complete(IoStatus::Success);
        }
        let (strip, n) = (io.offset_blocks() / self.strip, self.members.len() as u64);
        let within = io.offset_blocks() % self.strip;
        if within + io.num_blocks() > self.strip {
            // The layer splits on the strip boundary: this can't arrive.
            return io.complete(IoStatus::Failed);
        }
        let i = (strip % n) as usize;
        let at = self.offset + 2 * i as u64 + strip / n * self.strip + within;
        io.forward_to_and_complete(&self.members[i], &chs[i], at);
    }
    fn pass_through(&self, chs: &Vec<BdevChannel>) -> Option<PassThrough> {
        let members = self
            .members
            .iter()
            .zip(chs)
            .enumerate()
            .map(|(i, (d, ch))| StripeMember {
                desc: d.clone(),
                ch: ch.clone(),
                data_offset: self.offset + 2 * i as u64,
            })
            .collect();
        PassThrough::striped(self.strip, members)
    }
    fn io_type_supported(&self, t: IoType) -> bool {
        matches!(t, IoType::Read | IoType::Write | IoType::Reset)
    }
}

/// Registers a [`StripeTest`] named `name` over `members` (256-block RAM bdevs, or bdevs
/// over them), split on its strips as raid0 is; what reaches its module is counted in
/// what comes back.
fn stripe(
    h: &Harness,
    name: &str,
    members: &[&str],
    strip: u64,
    offset: u64,
) -> Arc<std::sync::atomic::AtomicUsize> {
    let name = name.to_string();
    over_members(h, members, move |members, calls| {
        let rows = (256 - offset - 2 * members.len() as u64) / strip;
        let blocks = rows * strip * members.len() as u64;
        let props = BdevProps::new(&name, 512, blocks).optimal_io_boundary(strip as u32, true);
        let s = StripeTest {
            members,
            strip,
            offset,
            calls,
        };
        register(props, Arc::new(s)).unwrap();
    })
}

/// Opens `members` on thread 0 (writable) and registers what `make` builds over them,
/// with a count of what reaches its module, which comes back.
fn over_members(
    h: &Harness,
    members: &[&str],
    make: impl FnOnce(Vec<Arc<Desc>>, Arc<std::sync::atomic::AtomicUsize>) + 'static,
) -> Arc<std::sync::atomic::AtomicUsize> {
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c2 = calls.clone();
    let members: Vec<String> = members.iter().map(|m| m.to_string()).collect();
    h.run_on(0, move || {
        let members = members
            .iter()
            .map(|m| Arc::new(Desc::open(m, true, |_| {}).unwrap()))
            .collect();
        make(members, c2);
    });
    calls
}

/// What `seen` recorded, as (type, offset, blocks).
fn took(seen: &Mutex<Vec<Seen>>) -> Vec<(IoType, u64, u64)> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|s| (s.t, s.offset, s.num))
        .collect()
}

/// `n` blocks at `lba` of bdev `name`, read on thread 0.
fn read_back(h: &Harness, name: &str, lba: u64, n: u64) -> Vec<u8> {
    let name = name.to_string();
    h.block_on(0, async move {
        let d = Desc::open(&name, false, |_| {}).unwrap();
        let ch = d.get_io_channel().unwrap();
        let len = n as usize * 512;
        let out = d
            .readv_blocks(&ch, bufs(&[len], &vec![0; len]), lba, n)
            .await
            .unwrap();
        concat(&out)
    })
}

#[test]
fn a_stripe_takes_io_within_a_strip_to_its_member_and_across_strips_to_the_module() {
    // Three members (a division, not a shift), strips of 8 blocks, member i's data from
    // its block 16 + 2i: strip s is on member s % 3 at 16 + 2 * (s % 3) + (s / 3) * 8.
    // Member 2 answers its first two I/Os NOMEM: they wait and are retried there.
    let h = Harness::new(1);
    let seen: Vec<_> = (0..3)
        .map(|i| {
            ram(
                &format!("r_str{i}"),
                |p| p,
                true,
                if i == 2 { 2 } else { 0 },
            )
        })
        .collect();
    let up = stripe(&h, "s_str", &["r_str0", "r_str1", "r_str2"], 8, 16);
    let _held = hold(&h, "s_str");
    // Strip 4 (blocks 32..40), from its block 2: member 1, row 1, at 18 + 8 + 2.
    write_read_back(&h, "s_str", 34, 5, 3);
    assert_eq!(calls(&up), 0, "within a strip: not the module's");
    assert_eq!(
        took(&seen[1]),
        vec![(IoType::Write, 28, 5), (IoType::Read, 28, 5)]
    );
    assert!(took(&seen[0]).is_empty() && took(&seen[2]).is_empty());
    assert_eq!(read_back(&h, "r_str1", 28, 5), pattern(5 * 512, 3));
    // Block 41 (strip 5, from its block 1): member 2, row 1, at 20 + 8 + 1, answered
    // NOMEM twice and retried at the member, not the module.
    writes_succeed(&h, "s_str", &[41]);
    assert_eq!(calls(&up), 0);
    let w = (IoType::Write, 29, 1);
    assert_eq!(took(&seen[2]), vec![w, w, w]);
    // Blocks 44..52 cross from strip 5 (member 2, row 1) into strip 6 (member 0, row 2):
    // the layer splits them and the module gets both pieces, each way.
    write_read_back(&h, "s_str", 44, 8, 9);
    assert_eq!(calls(&up), 4);
    assert_eq!(
        took(&seen[2])[3..],
        [(IoType::Write, 32, 4), (IoType::Read, 32, 4)]
    );
    assert_eq!(
        took(&seen[0]),
        vec![(IoType::Write, 32, 4), (IoType::Read, 32, 4)]
    );
    // Every level counted what went through it (r_str1 also the read straight from it),
    // and nothing is left outstanding.
    for (n, ops) in [
        ("s_str", (3, 2)),
        ("r_str0", (1, 1)),
        ("r_str1", (1, 2)),
        ("r_str2", (2, 1)),
    ] {
        let st = iostat(&h, n);
        assert_eq!((st.num_write_ops, st.num_read_ops), ops, "{n}");
        assert_eq!(outstanding_on(&h, n), 0, "{n}");
    }
    // Past the end of a member: refused at the top as out of the stripe's range.
    let e = h.block_on(0, async {
        let d = Desc::open("s_str", false, |_| {}).unwrap();
        let ch = d.get_io_channel().unwrap();
        d.readv_blocks(&ch, bufs(&[512], &[0; 512]), 720, 1).await
    });
    assert!(e.is_err());
}

#[test]
fn a_pass_through_above_a_stripe_goes_down_both_and_a_stripes_member_forwards() {
    // p_top (plain) over s_two (two members: p_m0 over r_two0, and r_two1), strips of 4
    // blocks, member i's data from block 2i. An I/O passes through p_top and s_two to its member and
    // no further: p_m0's module forwards what reaches it. Each level counts the I/O once,
    // and the member's accounting finds the right member (the last level's index).
    let h = Harness::new(1);
    let s0 = ram("r_two0", |p| p, true, 0);
    let s1 = ram("r_two1", |p| p, true, 0);
    let m0 = pass(&h, "p_m0", "r_two0");
    let up = stripe(&h, "s_two", &["p_m0", "r_two1"], 4, 0);
    let top = pass(&h, "p_top2", "s_two");
    let _held = hold(&h, "p_top2");
    // Strip 3 (blocks 12..16): member 1, row 1, at 2 + 4 + 1. Strip 4: member 0, row 2,
    // at 8.
    write_read_back(&h, "p_top2", 13, 2, 4);
    write_read_back(&h, "p_top2", 16, 4, 5);
    assert_eq!((calls(&top), calls(&up)), (0, 0));
    assert_eq!(
        calls(&m0),
        2,
        "below a stripe's member: its module forwards"
    );
    assert_eq!(took(&s1), vec![(IoType::Write, 7, 2), (IoType::Read, 7, 2)]);
    assert_eq!(took(&s0), vec![(IoType::Write, 8, 4), (IoType::Read, 8, 4)]);
    for (n, ops) in [
        ("p_top2", 2),
        ("s_two", 2),
        ("p_m0", 1),
        ("r_two0", 1),
        ("r_two1", 1),
    ] {
        let st = iostat(&h, n);
        assert_eq!((st.num_write_ops, st.num_read_ops), (ops, ops), "{n}");
        assert_eq!(outstanding_on(&h, n), 0, "{n}");
    }
}

/// A mirror's pass-through ([`PassThrough::mirror`]) over `members`, member `i`'s data
/// from its block `60 * i`; its module sends what reaches it to member 0 and counts it.
/// `empty`: the set starts with no member.
struct MirrorTest {
    members: Vec<Arc<Desc>>,
    empty: bool,
    calls: Arc<std::sync::atomic::AtomicUsize>,
}

impl BdevOps for MirrorTest {
    type Channel = (Vec<BdevChannel>, MirrorSet);
    fn module_name(&self) -> &'static str {
        "mirror_test"
    }
    fn create_channel(&self) -> crate::Result<(Vec<BdevChannel>, MirrorSet)> {
        let chs: Vec<BdevChannel> = self
            .members
            .iter()
            .map(|d| d.get_io_channel())
            .collect::<crate::Result<_>>()?;
        let set = MirrorSet::new(
            (0..chs.len())
                .map(|i| {
                    (!self.empty).then(|| StripeMember {
                        desc: self.members[i].clone(),
                        ch: chs[i].clone(),
                        data_offset: 60 * i as u64,
                    })
                })
                .collect(),
        );
        Ok((chs, set))
    }
    fn submit_request(&self, ch: &(Vec<BdevChannel>, MirrorSet), io: BdevIo) {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let at = io.offset_blocks();
        io.forward_to_and_complete(&self.members[0], &ch.0[0], at);
    }
    fn pass_through(&self, ch: &(Vec<BdevChannel>, MirrorSet)) -> Option<PassThrough> {
        Some(PassThrough::mirror(&ch.1))
    }
    fn io_type_supported(&self, t: IoType) -> bool {
        matches!(t, IoType::Read | IoType::Write)
    }
}

/// Registers a [`MirrorTest`] of 200 blocks named `name` over `members` (256-block RAM
/// bdevs); what reaches its module is counted in what comes back.
fn mirror_over(
    h: &Harness,
    name: &str,
    members: &[&str],
    empty: bool,
) -> Arc<std::sync::atomic::AtomicUsize> {
    let name = name.to_string();
    over_members(h, members, move |members, calls| {
        let m = MirrorTest {
            members,
            empty,
            calls,
        };
        register(BdevProps::new(&name, 512, 200), Arc::new(m)).unwrap();
    })
}

/// One-block reads of `name` at `lbas`, submitted together on thread 0; all succeed.
fn reads_at_once(h: &Harness, name: &'static str, lbas: &'static [u64]) {
    let done = Rc::new(Cell::new(0));
    let d2 = done.clone();
    h.run_on(0, move || {
        let d = Desc::open(name, false, |_| {}).unwrap();
        let ch = d.get_io_channel().unwrap();
        for &lba in lbas {
            let r = d2.clone();
            d.read_blocks(&ch, DmaBuf::page_aligned(512).unwrap(), lba, 1)
                .submit(move |c| {
                    assert!(c.is_success(), "{lba}: {}", c.status);
                    r.set(r.get() + 1);
                });
        }
    });
    h.poll_threads();
    assert_eq!(done.get(), lbas.len());
}

#[test]
fn a_mirror_reads_from_its_least_busy_member_and_leaves_the_rest_to_its_module() {
    let h = Harness::new(1);
    let seen: Vec<_> = (0..2)
        .map(|i| ram(&format!("r_mir{i}"), |p| p, false, 0))
        .collect();
    let up = mirror_over(&h, "m_mir", &["r_mir0", "r_mir1"], false);
    let (_d, ch) = hold(&h, "m_mir");
    assert_eq!(h.run_on(0, || ch.passes_through()), 2);
    // With both members idle a read goes to member 0 (ties to the lowest slot), at its
    // data offset (0); the write is the module's.
    write_read_back(&h, "m_mir", 10, 4, 7);
    assert_eq!(calls(&up), 1, "the write is the module's, the read not");
    assert_eq!(
        took(&seen[0]),
        vec![(IoType::Write, 10, 4), (IoType::Read, 10, 4)]
    );
    // Two at once: the second to member 1, the less busy then, at 20 + 60.
    reads_at_once(&h, "m_mir", &[20, 20]);
    assert_eq!(took(&seen[1]), vec![(IoType::Read, 80, 1)]);
    assert_eq!(calls(&up), 1);
    // The second at block 199: at 259 it is past member 1's end, refused there, and so
    // the module's (which reads member 0).
    reads_at_once(&h, "m_mir", &[20, 199]);
    assert_eq!(took(&seen[1]).len(), 1, "nothing more reached member 1");
    assert_eq!(calls(&up), 2);
    assert_eq!(
        took(&seen[0])[3..],
        [(IoType::Read, 20, 1), (IoType::Read, 199, 1)]
    );
    // A set with no member: every read is the module's.
    let _ = ram("r_mir2", |p| p, false, 0);
    let up2 = mirror_over(&h, "m_mir_empty", &["r_mir2"], true);
    write_read_back(&h, "m_mir_empty", 0, 2, 1);
    assert_eq!(calls(&up2), 2);
}
