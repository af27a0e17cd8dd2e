//! The data path allocates nothing in steady state: a million I/Os through the null and
//! malloc bdevs, by callback, by `.await` and through an `IoSet`, through raid0 and
//! raid1, and 200 k over NVMe/TCP (against the null target), with a counting global
//! allocator. Counts are
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
    allocations_with(bdev, if awaited { Mode::Await } else { Mode::Callback })
}

#[derive(Clone, Copy)]
enum Mode {
    Callback,
    Await,
    /// One task keeping the depth in flight in an `IoSet`.
    Set,
}

fn allocations_with(bdev: &str, mode: Mode) -> u64 {
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
    match mode {
        Mode::Callback => l.start(QD, true),
        Mode::Await => l.start_async(QD),
        Mode::Set => l.start_set(QD),
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
fn io_set_allocates_nothing_per_io() {
    let n = allocations_with("null_set", Mode::Set);
    assert_eq!(
        n, 0,
        "{n} heap allocations during {MEASURED} I/Os in an IoSet"
    );
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
    let o = bdev_nvme::null_target::attach_opts("T", addr, nqn);
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

/// The NVMe/TCP queue pair alone: reads (C2HData), in-capsule writes and R2T-driven
/// writes against a scripted controller on another thread (not counted).
mod tcp_queue_pair {
    use std::io::{BufWriter, Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    use bdev_core::dma::DmaBuf;
    use bdev_nvme::spec::{self, nvm};
    use bdev_nvme::tcp::TcpQpair;
    use bdev_nvme::tcp::pdu::{self, Digests};
    use bdev_nvme::transport::{Completion, Payload, QueuePair};

    use super::allocs;

    fn header(t: u8, flags: u8, hlen: u8, pdo: u8, plen: u32) -> [u8; 8] {
        let p = plen.to_le_bytes();
        [t, flags, hlen, pdo, p[0], p[1], p[2], p[3]]
    }

    fn capsule_resp(w: &mut impl Write, cid: u16) {
        let mut cqe = [0u8; 16];
        cqe[12..14].copy_from_slice(&cid.to_le_bytes());
        w.write_all(&header(pdu::pdu_type::CAPSULE_RESP, 0, 24, 0, 24))
            .unwrap();
        w.write_all(&cqe).unwrap();
    }

    /// A controller that answers every read with one C2HData (SUCCESS), every in-capsule
    /// write with a response, and every other write with an R2T for all of it, then a
    /// response once its last H2CData is in. No digests.
    fn controller(s: TcpStream) {
        let mut r = std::io::BufReader::with_capacity(1 << 20, s.try_clone().unwrap());
        let mut w = BufWriter::with_capacity(1 << 20, s);
        let mut icreq = [0u8; 128];
        r.read_exact(&mut icreq).unwrap();
        let mut icresp = [0u8; 128];
        icresp[..8].copy_from_slice(&header(pdu::pdu_type::IC_RESP, 0, 128, 0, 128));
        icresp[12..16].copy_from_slice(&65536u32.to_le_bytes());
        w.write_all(&icresp).unwrap();
        w.flush().unwrap();
        let zeroes = vec![0u8; 1 << 20];
        let mut rest = vec![0u8; 1 << 20];
        let mut ttag = 0u16;
        loop {
            let mut ch = [0u8; 8];
            if r.read_exact(&mut ch).is_err() {
                return;
            }
            let plen = u32::from_le_bytes([ch[4], ch[5], ch[6], ch[7]]) as usize;
            if r.read_exact(&mut rest[..plen - 8]).is_err() {
                return;
            }
            match ch[0] {
                pdu::pdu_type::CAPSULE_CMD => {
                    let sqe = &rest[..64];
                    let opc = sqe[0];
                    let cid = u16::from_le_bytes([sqe[2], sqe[3]]);
                    // SGL length, dword 8..12 of the descriptor at byte 24.
                    let len = u32::from_le_bytes([sqe[32], sqe[33], sqe[34], sqe[35]]);
                    if opc == nvm::READ {
                        let mut h = [0u8; 24];
                        h[..8].copy_from_slice(&header(
                            pdu::pdu_type::C2H_DATA,
                            pdu::flags::DATA_LAST | pdu::flags::DATA_SUCCESS,
                            24,
                            24,
                            24 + len,
                        ));
                        h[8..10].copy_from_slice(&cid.to_le_bytes());
                        h[16..20].copy_from_slice(&len.to_le_bytes());
                        w.write_all(&h).unwrap();
                        w.write_all(&zeroes[..len as usize]).unwrap();
                    } else if ch[3] != 0 {
                        capsule_resp(&mut w, cid);
                    } else {
                        ttag = ttag.wrapping_add(1);
                        let mut h = [0u8; 24];
                        h[..8].copy_from_slice(&header(pdu::pdu_type::R2T, 0, 24, 0, 24));
                        h[8..10].copy_from_slice(&cid.to_le_bytes());
                        h[10..12].copy_from_slice(&ttag.to_le_bytes());
                        h[16..20].copy_from_slice(&len.to_le_bytes());
                        w.write_all(&h).unwrap();
                    }
                }
                pdu::pdu_type::H2C_DATA => {
                    if ch[1] & pdu::flags::DATA_LAST != 0 {
                        capsule_resp(&mut w, u16::from_le_bytes([rest[0], rest[1]]));
                    }
                }
                t => panic!("unexpected PDU type {t:#x}"),
            }
            // Answer what has come in once the reader has nothing buffered.
            if r.buffer().is_empty() && w.flush().is_err() {
                return;
            }
        }
    }

    fn start_controller() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            s.set_nodelay(true).unwrap();
            controller(s);
        });
        addr
    }

    /// Keeps `qd` commands in flight for `n` completions (reads of 4 KiB, writes of 512 B
    /// in the capsule, writes of 16 KiB through R2T, in turn), reusing the buffers the
    /// completions hand back.
    fn run(q: &mut TcpQpair, bufs: &mut Vec<DmaBuf>, out: &mut Vec<Completion>, n: u64) {
        let mut done = 0u64;
        let mut k = 0u64;
        let t = Instant::now();
        while done < n {
            while let Some(b) = bufs.pop() {
                let (opc, len) = match k % 3 {
                    0 => (nvm::READ, 4096),
                    1 => (nvm::WRITE, 512),
                    _ => (nvm::WRITE, 16384),
                };
                let sqe = spec::rw(0, opc, 1, k % 1024, (len / 512) as u32);
                let p = if opc == nvm::READ {
                    Payload::In(b, len)
                } else {
                    Payload::Out(b, len)
                };
                match q.submit(sqe, p, k) {
                    Ok(_) => k += 1,
                    Err(e) => panic!("submit: {e}"),
                }
            }
            q.poll(out).expect("queue pair failed");
            for c in out.drain(..) {
                assert!(c.status.is_success(), "{:?}", c.status);
                bufs.push(c.payload.into_buf().expect("the buffer comes back"));
                done += 1;
            }
            assert!(t.elapsed() < Duration::from_secs(120), "stalled at {done}");
        }
    }

    #[test]
    fn tcp_queue_pair_allocates_nothing_per_io() {
        const QD: usize = 32;
        let addr = start_controller();
        let mut q = TcpQpair::connect(
            addr,
            1,
            QD as u16 + 1,
            Digests::default(),
            4096,
            Duration::from_secs(5),
        )
        .unwrap();
        let mut out = Vec::with_capacity(QD * 2);
        while !q.is_ready() {
            q.poll(&mut out).unwrap();
        }
        let mut bufs: Vec<DmaBuf> = (0..QD).map(|_| DmaBuf::new(16384, 4096).unwrap()).collect();
        run(&mut q, &mut bufs, &mut out, 20_000);
        let before = allocs();
        run(&mut q, &mut bufs, &mut out, 200_000);
        let grew = allocs() - before;
        assert_eq!(grew, 0, "{grew} allocations in 200000 I/Os");
    }
}
