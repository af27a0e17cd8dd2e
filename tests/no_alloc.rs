//! The data path allocates nothing in steady state: a million I/Os through the null and
//! malloc bdevs, by callback and by `.await`, with a counting global allocator. Counts are
//! per OS thread (the harness runs every lightweight thread on the test's own thread), so
//! other tests running in parallel don't disturb them.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::rc::Rc;

use bdev_core::bdev::{BdevChannel, Desc};
use bdev_core::dma::DmaBuf;
use bdev_core::testing::Harness;
use bdev_core::thread;
use bdev_malloc::malloc::{self, MallocOpts};
use bdev_malloc::null::{self, NullOpts};

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, n) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(|c| c.get())
}

const QD: usize = 128;
const WARMUP: u64 = 100_000;
const MEASURED: u64 = 1_000_000;

struct Loop {
    desc: Desc,
    ch: BdevChannel,
    done: Cell<u64>,
    failed: Cell<u64>,
    limit: Cell<u64>,
    blocks: u64,
    seed: Cell<u64>,
}

impl Loop {
    fn next_lba(&self) -> u64 {
        let mut x = self.seed.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.seed.set(x);
        x % self.blocks
    }

    fn submit(self: &Rc<Self>, buf: DmaBuf, write: bool) {
        let me = self.clone();
        let lba = self.next_lba();
        let req = if write {
            self.desc.write_blocks(&self.ch, buf, lba, 1)
        } else {
            self.desc.read_blocks(&self.ch, buf, lba, 1)
        };
        req.submit(move |c| {
            if !c.is_success() {
                me.failed.set(me.failed.get() + 1);
            }
            me.done.set(me.done.get() + 1);
            if me.done.get() < me.limit.get() {
                me.submit(c.payload, !write);
            }
        });
    }
}

/// Polls until `l` has completed `n` I/Os in all.
fn poll_until(h: &Harness, l: &Loop, n: u64) {
    while l.done.get() < n {
        h.poll_thread(0);
    }
}

/// Runs a closed loop of QD tasks; returns the allocations made during the measured
/// million I/Os that follow the warm-up.
fn callback_loop(bdev: &str) -> u64 {
    let h = Harness::new(1);
    let blocks = if bdev.starts_with("null") {
        null::create(NullOpts::new(bdev, 1 << 20, 4096)).unwrap();
        1 << 20
    } else {
        malloc::create(MallocOpts::new(bdev, 8192, 4096)).unwrap();
        8192
    };
    let desc = Desc::open(bdev, true, |_| {}).unwrap();
    let ch = desc.get_io_channel().unwrap();
    let l = Rc::new(Loop {
        desc,
        ch,
        done: Cell::new(0),
        failed: Cell::new(0),
        limit: Cell::new(u64::MAX),
        blocks,
        seed: Cell::new(0x1234_5678_9abc_def1),
    });
    for i in 0..QD {
        l.submit(DmaBuf::page_aligned(4096).unwrap(), i % 2 == 0);
    }
    // Warm up: caches, queues and pools reach their steady size.
    poll_until(&h, &l, WARMUP);
    let start = allocs();
    poll_until(&h, &l, WARMUP + MEASURED);
    let n = allocs() - start;
    // Let the loop wind down before the harness stops.
    l.limit.set(0);
    h.poll_threads();
    assert_eq!(l.failed.get(), 0);
    n
}

#[test]
fn null_bdev_callbacks_allocate_nothing_per_io() {
    let n = callback_loop("null_cb");
    assert_eq!(
        n, 0,
        "{n} heap allocations during {MEASURED} I/Os on the null bdev"
    );
}

#[test]
fn malloc_bdev_callbacks_allocate_nothing_per_io() {
    let n = callback_loop("malloc_cb");
    assert_eq!(
        n, 0,
        "{n} heap allocations during {MEASURED} I/Os on the malloc bdev"
    );
}

#[test]
fn async_io_allocates_nothing_per_io() {
    let h = Harness::new(1);
    null::create(NullOpts::new("null_async", 1 << 20, 4096)).unwrap();
    let done = Rc::new(Cell::new(0u64));
    let limit = Rc::new(Cell::new(WARMUP));
    let desc = Rc::new(Desc::open("null_async", true, |_| {}).unwrap());
    let ch = Rc::new(desc.get_io_channel().unwrap());
    for t in 0..QD as u64 {
        let (d, c, n, lim) = (desc.clone(), ch.clone(), done.clone(), limit.clone());
        let mut buf = Some(DmaBuf::page_aligned(4096).unwrap());
        h.run_on(0, || {
            thread::spawn_local(async move {
                let mut lba = t;
                while n.get() < lim.get() {
                    let b = buf.take().unwrap();
                    let b = d.read_blocks(&c, b, lba % (1 << 20), 1).await.unwrap();
                    buf = Some(b);
                    lba = lba
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    n.set(n.get() + 1);
                }
            })
            .unwrap()
        });
    }
    while done.get() < WARMUP {
        h.poll_thread(0);
    }
    // Tasks are parked at their limit check only once they finish; raise the limit first.
    limit.set(WARMUP + MEASURED + QD as u64);
    let start = allocs();
    while done.get() < WARMUP + MEASURED {
        h.poll_thread(0);
    }
    let n = allocs() - start;
    assert_eq!(n, 0, "{n} heap allocations during {MEASURED} awaited I/Os");
}
