//! The data path allocates nothing in steady state: a million I/Os through the null and
//! malloc bdevs, by callback and by `.await`, through raid0 and raid1, and 200 k over
//! NVMe/TCP (against the null target), with a counting global allocator. Counts are
//! per OS thread (the harness runs every lightweight thread on the test's own thread), so
//! other tests running in parallel don't disturb them.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bdev_core::testing::{Harness, IoLoop};
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

/// Runs a closed loop of QD tasks (reads and writes, or awaited reads); returns the
/// allocations made during the measured million I/Os that follow the warm-up.
fn allocations_in_steady_state(bdev: &str, awaited: bool) -> u64 {
    let h = Harness::new(1);
    if let Some(level) = bdev.strip_prefix("raid_") {
        // A raid over two null bdevs.
        for m in ["n0", "n1"] {
            null::create(NullOpts::new(m, 1 << 20, 4096)).unwrap();
        }
        let o = bdev_raid::CreateOpts {
            name: bdev.into(),
            raid_level: level.parse().unwrap(),
            base_bdevs: vec!["n0".into(), "n1".into()],
            strip_size_kb: if level == "raid1" { 0 } else { 64 },
            uuid: None,
            superblock: false,
        };
        h.block_on(0, async move { bdev_raid::create(o).await.map(|_| ()) })
            .unwrap();
    } else if bdev.starts_with("null") {
        null::create(NullOpts::new(bdev, 1 << 20, 4096)).unwrap();
    } else {
        malloc::create(MallocOpts::new(bdev, 8192, 4096)).unwrap();
    }
    let l = IoLoop::open(bdev).unwrap();
    if awaited {
        l.start_async(QD)
    } else {
        l.start(QD, true)
    }
    .unwrap();
    // Warm up: caches, queues and pools reach their steady size.
    l.run_until(&h, 0, WARMUP);
    let start = allocs();
    l.run_until(&h, 0, WARMUP + MEASURED);
    let n = allocs() - start;
    l.stop(&h);
    assert_eq!(l.failed(), 0);
    n
}

#[test]
fn null_bdev_callbacks_allocate_nothing_per_io() {
    let n = allocations_in_steady_state("null_cb", false);
    assert_eq!(
        n, 0,
        "{n} heap allocations during {MEASURED} I/Os on the null bdev"
    );
}

#[test]
fn malloc_bdev_callbacks_allocate_nothing_per_io() {
    let n = allocations_in_steady_state("malloc_cb", false);
    assert_eq!(
        n, 0,
        "{n} heap allocations during {MEASURED} I/Os on the malloc bdev"
    );
}

#[test]
fn async_io_allocates_nothing_per_io() {
    let n = allocations_in_steady_state("null_async", true);
    assert_eq!(n, 0, "{n} heap allocations during {MEASURED} awaited I/Os");
}

#[test]
fn raid_stripes_and_mirrors_allocate_nothing_per_io() {
    for level in ["raid_raid0", "raid_raid1"] {
        let n = allocations_in_steady_state(level, false);
        assert_eq!(
            n, 0,
            "{n} heap allocations during {MEASURED} reads and writes on {level}"
        );
    }
}

#[test]
fn nvme_tcp_bdev_allocates_nothing_per_io() {
    // The whole NVMe bdev path (channel, in-flight table, queue pair, data straight into
    // the I/O's buffers) against the null target, whose threads are not counted.
    let nqn = "nqn.2024-01.io.x:noalloc";
    let addr = bdev_nvme::null_target::spawn(0, nqn).unwrap();
    let h = Harness::new(1);
    let o = bdev_nvme::bdev::AttachOpts {
        name: "T".into(),
        trtype: "tcp".into(),
        traddr: "127.0.0.1".into(),
        trsvcid: Some(addr.port().to_string()),
        subnqn: Some(nqn.into()),
        ..Default::default()
    };
    let names = h
        .block_on_real(0, std::time::Duration::from_secs(30), async move {
            bdev_nvme::bdev::attach(o).await
        })
        .unwrap();
    assert_eq!(names, vec!["Tn1".to_string()]);
    let l = IoLoop::open("Tn1").unwrap();
    l.start(32, true).unwrap();
    l.run_until(&h, 0, 20_000);
    let start = allocs();
    l.run_until(&h, 0, 220_000);
    let n = allocs() - start;
    l.stop(&h);
    assert_eq!(l.failed(), 0);
    assert_eq!(
        n, 0,
        "{n} heap allocations during 200000 reads and writes over NVMe/TCP"
    );
}
