//! The cost of one I/O through the bdev layer, by callback, by `.await` and through an
//! `IoSet`, on the null
//! bdev (no data movement: pure layer overhead) and the malloc bdev, at queue depth 128 on
//! one thread; and the machine's random 4 KiB memcpy rate, the bound of the malloc bdev.
//!
//! `cargo bench -p bdev-malloc --bench io_path`

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::rc::Rc;
use std::time::{Duration, Instant};

use bdev_core::dma::{BlockMem, DmaBuf};
use bdev_core::testing::{Harness, IoLoop};
use bdev_malloc::malloc::{self, MallocOpts};
use bdev_malloc::null::{self, NullOpts};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const QD: usize = 128;

fn setup(h: &Harness, name: &str, is_null: bool) -> Rc<IoLoop> {
    h.run_on(0, || {
        if is_null {
            null::create(NullOpts::new(name, 32768, 4096)).unwrap();
        } else {
            malloc::create(MallocOpts::new(name, 32768, 4096)).unwrap();
        }
        IoLoop::open(name).unwrap()
    })
}

fn measure(h: &Harness, l: &IoLoop, iters: u64) -> Duration {
    let t = Instant::now();
    l.run_until(h, 0, l.done() + iters);
    t.elapsed()
}

#[derive(Clone, Copy)]
enum Mode {
    Callback,
    /// A task per slot awaiting each read.
    Await,
    /// One task keeping the depth in flight in an `IoSet`.
    Set,
}

fn bench(c: &mut Criterion, name: &str, is_null: bool, mode: Mode) {
    let h = Harness::new(1);
    let l = setup(&h, name, is_null);
    h.run_on(0, || match mode {
        Mode::Callback => l.start(QD, false),
        Mode::Await => l.start_async(QD),
        Mode::Set => l.start_set(QD),
    })
    .unwrap();
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(1));
    let id = match mode {
        Mode::Callback => "callback_qd128",
        Mode::Await => "async_qd128",
        Mode::Set => "ioset_qd128",
    };
    g.bench_function(id, |b| b.iter_custom(|n| measure(&h, &l, n)));
    g.finish();
    l.stop(&h);
}

fn io_path(c: &mut Criterion) {
    bench(c, "null_read_4k", true, Mode::Callback);
    bench(c, "null_read_4k_async", true, Mode::Await);
    bench(c, "null_read_4k_ioset", true, Mode::Set);
    bench(c, "malloc_read_4k", false, Mode::Callback);
}

/// A random 4 KiB copy out of 128 MiB of memory into one of QD buffers: the most a
/// malloc bdev can do per core.
fn memcpy_limit(c: &mut Criterion) {
    let len = 128usize << 20;
    let mem = BlockMem::new(len, 2 << 20).unwrap();
    let mut bufs: Vec<DmaBuf> = (0..32)
        .map(|_| DmaBuf::page_aligned(4096).unwrap())
        .collect();
    let mut x: u64 = 88172645463325252;
    let mut i = 0;
    let mut g = c.benchmark_group("memcpy_4k_random");
    g.throughput(Throughput::Elements(1));
    g.bench_function("from_128MiB", |b| {
        b.iter(|| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let off = (x % (len as u64 / 4096)) * 4096;
            let dst = &mut bufs[i % 32];
            i += 1;
            mem.read_into(off, dst).unwrap();
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = io_path, memcpy_limit
}
criterion_main!(benches);
