//! A model of what a bdev should hold, and a driver of seeded random I/O batches checked
//! against it (see the `model` test, and the NVMe/TCP test against the kernel target):
//! reads and writes over one to four buffers cut at any byte and aligned to 8, 512 or 4096,
//! write_zeroes, unmap and flush, up to eight non-overlapping I/Os in flight at once on any
//! thread of the harness, half by callback and half through `.await`. Every I/O must succeed;
//! every read must match the model.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bdev_core::bdev::{BdevChannel, Completion, Desc, IoStatus, IoType};
use bdev_core::dma::DmaBuf;
use bdev_core::testing::Harness;

/// xorshift64: the same I/O on every run.
pub struct Rng(pub u64);

impl Rng {
    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// What the bdev should hold: its bytes, and which blocks are known (through the crypto
/// bdev, never-written and unmapped blocks hold ciphertext zeroes, which read as noise).
pub struct Model {
    data: Vec<u8>,
    known: Vec<bool>,
    bs: usize,
}

impl Model {
    /// Panics, naming `what`, where `got` (read at `lba`) differs from a known block.
    pub fn check(&self, what: &str, lba: u64, got: &[u8]) {
        for (i, chunk) in got.chunks(self.bs).enumerate() {
            let b = lba as usize + i;
            if self.known[b] {
                let want = &self.data[b * self.bs..(b + 1) * self.bs];
                if chunk != want {
                    let off = chunk
                        .iter()
                        .zip(want)
                        .position(|(a, b)| a != b)
                        .unwrap_or(0);
                    panic!(
                        "{what}: block {b} differs at byte {off}: read {:#04x}, model {:#04x}",
                        chunk[off], want[off]
                    );
                }
            }
        }
    }

    fn write(&mut self, lba: u64, bytes: &[u8]) {
        let at = lba as usize * self.bs;
        self.data[at..at + bytes.len()].copy_from_slice(bytes);
        for k in &mut self.known[lba as usize..lba as usize + bytes.len() / self.bs] {
            *k = true;
        }
    }

    fn forget(&mut self, lba: u64, n: u64) {
        for k in &mut self.known[lba as usize..(lba + n) as usize] {
            *k = false;
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Read,
    Write,
    WriteZeroes,
    Unmap,
    Flush,
}

/// `len` bytes of `fill` in one buffer or several, cut anywhere, aligned to 8, 512 or
/// 4096 bytes.
fn buffers(r: &mut Rng, fill: &[u8]) -> Vec<DmaBuf> {
    let pieces = 1 + r.below(4) as usize;
    let mut cuts: Vec<usize> = (1..pieces)
        .map(|_| r.below(fill.len() as u64) as usize)
        .collect();
    cuts.push(0);
    cuts.push(fill.len());
    cuts.sort_unstable();
    cuts.dedup();
    cuts.windows(2)
        .map(|w| {
            let align = [8, 512, 4096][r.below(3) as usize];
            let mut b = DmaBuf::new(w[1] - w[0], align).unwrap();
            b.copy_from_slice(&fill[w[0]..w[1]]);
            b
        })
        .collect()
}

/// Each I/O's outcome: its status (`None`: success) and what a read brought.
type Done = Rc<RefCell<Vec<Option<(Option<String>, Vec<u8>)>>>>;

/// One I/O of a batch: where, and for a write what it writes (`fill`, cut into `bufs`).
struct Io {
    op: Op,
    lba: u64,
    n: u64,
    fill: Vec<u8>,
    bufs: Vec<DmaBuf>,
    /// Through `.await` in a task of its own, rather than with a callback.
    awaited: bool,
}

/// Awaits `io` in a task of its own; its outcome lands in `done[slot]`.
fn submit_awaited(desc: &Rc<Desc>, ch: &Rc<BdevChannel>, io: &mut Io, done: Done, slot: usize) {
    let (op, lba, n, bufs) = (io.op, io.lba, io.n, std::mem::take(&mut io.bufs));
    let (desc, ch) = (desc.clone(), ch.clone());
    let task = async move {
        let status_of = |r: Result<(), IoStatus>| r.err().unwrap_or(IoStatus::Success);
        let (status, data) = match op {
            Op::Read => match desc.readv_blocks(&ch, bufs, lba, n).await {
                Ok(v) => (
                    IoStatus::Success,
                    v.iter().flat_map(|b| b.iter().copied()).collect(),
                ),
                Err(e) => (e.status, Vec::new()),
            },
            Op::Write => {
                let r = desc.writev_blocks(&ch, bufs, lba, n).await;
                (status_of(r.map(|_| ()).map_err(|e| e.status)), Vec::new())
            }
            Op::WriteZeroes => {
                let r = desc.write_zeroes_blocks(&ch, lba, n).await;
                (status_of(r.map_err(|e| e.status)), Vec::new())
            }
            Op::Unmap => {
                let r = desc.unmap_blocks(&ch, lba, n).await;
                (status_of(r.map_err(|e| e.status)), Vec::new())
            }
            Op::Flush => {
                let r = desc.flush_blocks(&ch, lba, n).await;
                (status_of(r.map_err(|e| e.status)), Vec::new())
            }
        };
        let failed = (!status.is_success()).then(|| status.to_string());
        done.borrow_mut()[slot] = Some((failed, data));
    };
    bdev_core::thread::spawn_local(task).expect("a task on this thread");
}

/// Submits `io` (its buffers go with it); its outcome lands in `done[slot]`.
fn submit(desc: &Desc, ch: &BdevChannel, io: &mut Io, done: Done, slot: usize) {
    let (lba, n, bufs) = (io.lba, io.n, std::mem::take(&mut io.bufs));
    let finish = move |status: IoStatus, data: Vec<u8>| {
        let failed = (!status.is_success()).then(|| status.to_string());
        done.borrow_mut()[slot] = Some((failed, data))
    };
    let cat = |v: &[DmaBuf]| {
        v.iter()
            .flat_map(|b| b.iter().copied())
            .collect::<Vec<u8>>()
    };
    match io.op {
        Op::Read => desc
            .readv_blocks(ch, bufs, lba, n)
            .submit(move |c: Completion<Vec<DmaBuf>>| finish(c.status, cat(&c.payload))),
        Op::Write => desc
            .writev_blocks(ch, bufs, lba, n)
            .submit(move |c: Completion<Vec<DmaBuf>>| finish(c.status, Vec::new())),
        Op::WriteZeroes => desc
            .write_zeroes_blocks(ch, lba, n)
            .submit(move |c: Completion<()>| finish(c.status, Vec::new())),
        Op::Unmap => desc
            .unmap_blocks(ch, lba, n)
            .submit(move |c: Completion<()>| finish(c.status, Vec::new())),
        Op::Flush => desc
            .flush_blocks(ch, lba, n)
            .submit(move |c: Completion<()>| finish(c.status, Vec::new())),
    }
}

/// Runs `batches` random batches against `name` from every thread of `h`, checking every
/// read against the model. `zeroed`: whether the bdev starts zeroed and unmapped blocks
/// read back as zeroes (not through crypto, nor on an NVMe namespace of unknown content).
pub fn run(h: &Harness, name: &str, seed: u64, batches: usize, zeroed: bool) {
    run_in(h, name, seed, batches, zeroed, u64::MAX);
}

/// [`run`] on the first `limit` blocks of the bdev at most (the model holds a copy).
pub fn run_in(
    h: &Harness,
    name: &str,
    seed: u64,
    batches: usize,
    zeroed: bool,
    limit: u64,
) -> Model {
    run_with(h, name, seed, batches, zeroed, limit, &mut |_| {})
}

/// [`run_in`], calling `between(batch)` before each batch (with nothing in flight): to
/// take a member out, add one, resize... while the I/O goes on. Returns the model as it
/// ends, to check what lies under the bdev.
pub fn run_with(
    h: &Harness,
    name: &str,
    seed: u64,
    batches: usize,
    zeroed: bool,
    limit: u64,
    between: &mut dyn FnMut(usize),
) -> Model {
    let unmap_zeroes = zeroed;
    let threads = h.thread_count();
    // One descriptor and channel per thread, as an application has.
    let per_thread: Vec<(Rc<Desc>, Rc<BdevChannel>)> = (0..threads)
        .map(|t| {
            h.run_on(t, || {
                let d = Desc::open(name, true, |_| {}).unwrap();
                let ch = d.get_io_channel().unwrap();
                (Rc::new(d), Rc::new(ch))
            })
        })
        .collect();
    let bdev = per_thread[0].0.bdev();
    let (bs, blocks) = (bdev.block_len() as usize, bdev.num_blocks().min(limit));
    let supported = |t: IoType| bdev.io_type_supported(t);
    let mut model = Model {
        data: vec![0; bs * blocks as usize],
        known: vec![unmap_zeroes; blocks as usize],
        bs,
    };
    let mut r = Rng(seed);
    let max_len = blocks.min(160);
    for batch in 0..batches {
        between(batch);
        let t = r.below(threads as u64) as usize;
        let (desc, ch) = &per_thread[t];
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        let mut ops = Vec::new();
        for _ in 0..1 + r.below(8) {
            let op = match r.below(20) {
                0..=6 => Op::Read,
                7..=15 => Op::Write,
                16 | 17 => Op::WriteZeroes,
                18 => Op::Unmap,
                _ => Op::Flush,
            };
            let io_type = match op {
                Op::Read => IoType::Read,
                Op::Write => IoType::Write,
                Op::WriteZeroes => IoType::WriteZeroes,
                Op::Unmap => IoType::Unmap,
                Op::Flush => IoType::Flush,
            };
            if !supported(io_type) {
                continue;
            }
            let n = 1 + r.below(max_len);
            let lba = r.below(blocks - n + 1);
            // In flight together only where they don't overlap (their order is free).
            if ranges.iter().any(|&(a, m)| lba < a + m && a < lba + n) {
                continue;
            }
            ranges.push((lba, n));
            let len = n as usize * bs;
            let fill: Vec<u8> = match op {
                Op::Write => (0..len)
                    .map(|i| (i as u64 ^ (batch as u64) << 8 ^ seed).wrapping_mul(0x9e37) as u8)
                    .collect(),
                _ => vec![0xa5; len],
            };
            let bufs = match op {
                Op::Read | Op::Write => buffers(&mut r, &fill),
                _ => Vec::new(),
            };
            ops.push(Io {
                op,
                lba,
                n,
                fill,
                bufs,
                awaited: r.below(2) == 0,
            });
        }
        let done: Done = Rc::new(RefCell::new(vec![None; ops.len()]));
        h.run_on(t, || {
            for (slot, io) in ops.iter_mut().enumerate() {
                if io.awaited {
                    submit_awaited(desc, ch, io, done.clone(), slot);
                } else {
                    submit(desc, ch, io, done.clone(), slot);
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            h.poll_threads();
            if done.borrow().iter().all(Option::is_some) {
                break;
            }
            // The delay bdev waits on the clock; files and targets on the kernel.
            h.advance_time_us(10);
            std::thread::sleep(Duration::from_micros(20));
        }
        let results = std::mem::take(&mut *done.borrow_mut());
        for (
            Io {
                op, lba, n, fill, ..
            },
            res,
        ) in ops.into_iter().zip(results)
        {
            let what = format!("{name} batch {batch}: {op:?} {lba}+{n} on thread {t}");
            let (failed, data) = res.unwrap_or_else(|| panic!("{what}: never completed"));
            if let Some(status) = failed {
                panic!("{what}: failed with {status}");
            }
            match op {
                Op::Read => model.check(&what, lba, &data),
                Op::Write => model.write(lba, &fill),
                Op::WriteZeroes => model.write(lba, &vec![0; n as usize * bs]),
                Op::Unmap if unmap_zeroes => model.write(lba, &vec![0; n as usize * bs]),
                Op::Unmap => model.forget(lba, n),
                Op::Flush => {}
            }
        }
    }
    if std::env::var_os("MODEL_TRACE").is_some() {
        let known = model.known.iter().filter(|k| **k).count();
        eprintln!(
            "{name}: {blocks} blocks, {known} known at the end; supported: {:?}",
            [IoType::WriteZeroes, IoType::Unmap, IoType::Flush].map(|t| (t, supported(t)))
        );
    }
    for (t, (d, ch)) in per_thread.into_iter().enumerate() {
        h.run_on(t, || drop((ch, d)));
    }
    h.poll_threads();
    model
}
