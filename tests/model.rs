//! Every stack of modules against a model of what it should hold: seeded random batches of
//! reads, writes (one buffer or several, of any length and alignment), write_zeroes,
//! unmaps and flushes, several in flight at once on both threads of the deterministic
//! harness, through malloc, passthru, error, delay, crypto, raid0, raid1 and concat
//! bdevs and stacks of them. Each read must return what the model says; each I/O must
//! succeed. This is where the layer's services (splits on boundaries and strips, in-place
//! forwarding, write_zeroes emulation, per-thread channels) meet real modules.

use std::cell::RefCell;
use std::rc::Rc;

use bdev_core::bdev::{BdevChannel, Completion, Desc, IoType};
use bdev_core::config::Methods;
use bdev_core::dma::DmaBuf;
use bdev_core::testing::Harness;
use serde_json::{Value, json};

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

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

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

fn malloc(h: &Harness, m: &Rc<Methods>, name: &str, blocks: u64, bs: u32, boundary: u32) {
    call(
        h,
        m,
        "bdev_malloc_create",
        json!({"name": name, "num_blocks": blocks, "block_size": bs,
            "optimal_io_boundary": boundary}),
    );
}

/// What the bdev should hold: its bytes, and which blocks are known (through the crypto
/// bdev, never-written and unmapped blocks hold ciphertext zeroes, which read as noise).
struct Model {
    data: Vec<u8>,
    known: Vec<bool>,
    bs: usize,
}

impl Model {
    fn check(&self, what: &str, lba: u64, got: &[u8]) {
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

type Done = Rc<RefCell<Vec<Option<(bool, Vec<u8>)>>>>;

/// One I/O of a batch: where, and for a write what it writes (`fill`, cut into `bufs`).
struct Io {
    op: Op,
    lba: u64,
    n: u64,
    fill: Vec<u8>,
    bufs: Vec<DmaBuf>,
}

/// Submits `io` (its buffers go with it); its outcome lands in `done[slot]`.
fn submit(desc: &Desc, ch: &BdevChannel, io: &mut Io, done: Done, slot: usize) {
    let (lba, n, bufs) = (io.lba, io.n, std::mem::take(&mut io.bufs));
    let finish = move |ok: bool, data: Vec<u8>| done.borrow_mut()[slot] = Some((ok, data));
    let cat = |v: &[DmaBuf]| {
        v.iter()
            .flat_map(|b| b.iter().copied())
            .collect::<Vec<u8>>()
    };
    match io.op {
        Op::Read => desc
            .readv_blocks(ch, bufs, lba, n)
            .submit(move |c: Completion<Vec<DmaBuf>>| finish(c.is_success(), cat(&c.payload))),
        Op::Write => desc
            .writev_blocks(ch, bufs, lba, n)
            .submit(move |c: Completion<Vec<DmaBuf>>| finish(c.is_success(), Vec::new())),
        Op::WriteZeroes => desc
            .write_zeroes_blocks(ch, lba, n)
            .submit(move |c: Completion<()>| finish(c.is_success(), Vec::new())),
        Op::Unmap => desc
            .unmap_blocks(ch, lba, n)
            .submit(move |c: Completion<()>| finish(c.is_success(), Vec::new())),
        Op::Flush => desc
            .flush_blocks(ch, lba, n)
            .submit(move |c: Completion<()>| finish(c.is_success(), Vec::new())),
    }
}

/// Runs `batches` random batches against `name`, checking every read against the model.
/// `unmap_zeroes`: whether unmapped blocks read back as zeroes.
fn run(h: &Harness, name: &str, seed: u64, batches: usize, unmap_zeroes: bool) {
    // One descriptor and channel per thread, as an application has.
    let per_thread: Vec<(Rc<Desc>, Rc<BdevChannel>)> = (0..2)
        .map(|t| {
            h.run_on(t, || {
                let d = Desc::open(name, true, |_| {}).unwrap();
                let ch = d.get_io_channel().unwrap();
                (Rc::new(d), Rc::new(ch))
            })
        })
        .collect();
    let bdev = per_thread[0].0.bdev();
    let (bs, blocks) = (bdev.block_len() as usize, bdev.num_blocks());
    let supported = |t: IoType| bdev.io_type_supported(t);
    // malloc memory starts zeroed; through the crypto bdev it reads as noise.
    let mut model = Model {
        data: vec![0; bs * blocks as usize],
        known: vec![unmap_zeroes; blocks as usize],
        bs,
    };
    let mut r = Rng(seed);
    let max_len = blocks.min(160);
    for batch in 0..batches {
        let t = r.below(2) as usize;
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
            });
        }
        let done: Done = Rc::new(RefCell::new(vec![None; ops.len()]));
        h.run_on(t, || {
            for (slot, io) in ops.iter_mut().enumerate() {
                submit(desc, ch, io, done.clone(), slot);
            }
        });
        for _ in 0..20_000 {
            h.poll_threads();
            if done.borrow().iter().all(Option::is_some) {
                break;
            }
            // The delay bdev waits on the clock; files wait on the kernel.
            h.advance_time_us(10);
            std::thread::sleep(std::time::Duration::from_micros(20));
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
            let (ok, data) = res.unwrap_or_else(|| panic!("{what}: never completed"));
            assert!(ok, "{what}: failed");
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
    let mut files = Vec::new();
    for (method, name) in [("bdev_aio_create", "AIO"), ("bdev_uring_create", "URING")] {
        let f = dir.join(format!("model-{name}-{}.img", std::process::id()));
        std::fs::write(&f, vec![0u8; 1 << 20]).unwrap();
        files.push(f.clone());
        call(
            &h,
            &m,
            method,
            json!({"name": name, "filename": f, "block_size": 512}),
        );
    }
    let stacks = [
        ("M512", true),
        ("M4K", true),
        ("PT", true),
        ("EE_B_ee", true),
        ("DL", true),
        // Unmapped ciphertext zeroes decrypt to noise, as in SPDK.
        ("CR", false),
        ("R0", true),
        ("CC", true),
        ("R1", true),
        ("RK", true),
        ("S", true),
        ("AIO", true),
        ("URING", true),
    ];
    for (i, (name, unmap_zeroes)) in stacks.into_iter().enumerate() {
        run(
            &h,
            name,
            0x2545_f491_4f6c_dd1d ^ (i as u64 + 1),
            400,
            unmap_zeroes,
        );
    }
}
