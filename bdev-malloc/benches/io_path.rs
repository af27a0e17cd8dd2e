//! The cost of one I/O through the bdev layer, by callback and by `.await`, on the null
//! bdev (no data movement: pure layer overhead) and the malloc bdev, at queue depth 128 on
//! one thread; and the machine's random 4 KiB memcpy rate, the bound of the malloc bdev.
//!
//! `cargo bench -p bdev-malloc --bench io_path`

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bdev_core::bdev::{BdevChannel, Desc};
use bdev_core::dma::{BlockMem, DmaBuf};
use bdev_core::testing::Harness;
use bdev_core::thread;
use bdev_malloc::malloc::{self, MallocOpts};
use bdev_malloc::null::{self, NullOpts};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const QD: usize = 128;

struct Loop {
    desc: Desc,
    ch: BdevChannel,
    done: Cell<u64>,
    stop: Cell<bool>,
    blocks: u64,
    seed: Cell<u64>,
}

impl Loop {
    fn lba(&self) -> u64 {
        let mut x = self.seed.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.seed.set(x);
        x % self.blocks
    }

    fn read(self: &Rc<Self>, buf: DmaBuf) {
        let me = self.clone();
        self.desc
            .read_blocks(&self.ch, buf, self.lba(), 1)
            .submit(move |c| {
                me.done.set(me.done.get() + 1);
                if !me.stop.get() {
                    me.read(c.payload);
                }
            });
    }
}

fn setup(h: &Harness, name: &str, is_null: bool) -> Rc<Loop> {
    let blocks = 32768;
    h.run_on(0, || {
        if is_null {
            null::create(NullOpts::new(name, blocks, 4096)).unwrap();
        } else {
            malloc::create(MallocOpts::new(name, blocks, 4096)).unwrap();
        }
        let desc = Desc::open(name, true, |_| {}).unwrap();
        let ch = desc.get_io_channel().unwrap();
        Rc::new(Loop {
            desc,
            ch,
            done: Cell::new(0),
            stop: Cell::new(false),
            blocks,
            seed: Cell::new(88172645463325252),
        })
    })
}

fn measure(h: &Harness, l: &Loop, iters: u64) -> Duration {
    let target = l.done.get() + iters;
    let t = Instant::now();
    while l.done.get() < target {
        h.poll_thread(0);
    }
    t.elapsed()
}

fn bench_callback(c: &mut Criterion, name: &str, is_null: bool) {
    let h = Harness::new(1);
    let l = setup(&h, name, is_null);
    h.run_on(0, || {
        for _ in 0..QD {
            l.read(DmaBuf::page_aligned(4096).unwrap());
        }
    });
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(1));
    g.bench_function("callback_qd128", |b| b.iter_custom(|n| measure(&h, &l, n)));
    g.finish();
    l.stop.set(true);
    h.poll_threads();
}

fn bench_async(c: &mut Criterion, name: &str, is_null: bool) {
    let h = Harness::new(1);
    let l = setup(&h, name, is_null);
    for _ in 0..QD {
        let l2 = l.clone();
        h.run_on(0, || {
            thread::spawn_local(async move {
                let mut buf = DmaBuf::page_aligned(4096).unwrap();
                while !l2.stop.get() {
                    buf = match l2.desc.read_blocks(&l2.ch, buf, l2.lba(), 1).await {
                        Ok(b) => b,
                        Err(e) => e.payload,
                    };
                    l2.done.set(l2.done.get() + 1);
                }
            })
            .unwrap()
        });
    }
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(1));
    g.bench_function("async_qd128", |b| b.iter_custom(|n| measure(&h, &l, n)));
    g.finish();
    l.stop.set(true);
    h.poll_threads();
}

fn io_path(c: &mut Criterion) {
    bench_callback(c, "null_read_4k", true);
    bench_async(c, "null_read_4k_async", true);
    bench_callback(c, "malloc_read_4k", false);
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
