//! The generic I/O services (split, bounce, write_zeroes emulation, NOMEM retry) against a
//! RAM test module with limits, which records what reaches it.

use std::cell::Cell;
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
}

impl BdevOps for RamBdev {
    type Channel = ();
    fn module_name(&self) -> &'static str {
        "ram_test"
    }
    fn create_channel(&self) -> crate::Result<()> {
        Ok(())
    }
    fn submit_request(&self, _: &(), io: BdevIo) {
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
            t => matches!(t, IoType::Read | IoType::Write),
        }
    }
}

fn ram(
    name: &str,
    props: impl FnOnce(BdevProps) -> BdevProps,
    wz: bool,
    nomem: u32,
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

#[test]
fn write_zeroes_is_emulated_with_writes_where_the_bdev_lacks_it() {
    let h = Harness::new(1);
    let seen = ram("r_wz", |p| p, false, 0);
    assert!(h.run_on(0, || {
        get_by_name("r_wz")
            .unwrap()
            .io_type_supported(IoType::WriteZeroes)
    }));
    let out = h.block_on(0, async {
        let d = Desc::open("r_wz", true, |_| {}).unwrap();
        let ch = d.get_io_channel().unwrap();
        d.writev_blocks(&ch, bufs(&[512 * 256], &pattern(512 * 256, 1)), 0, 256)
            .await
            .unwrap();
        d.write_zeroes_blocks(&ch, 10, 200).await.unwrap();
        concat(
            &d.readv_blocks(&ch, bufs(&[512 * 256], &[1; 512 * 256]), 0, 256)
                .await
                .unwrap(),
        )
    });
    let mut want = pattern(512 * 256, 1);
    want[10 * 512..210 * 512].fill(0);
    assert_eq!(out, want);
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .all(|s| s.t != IoType::WriteZeroes)
    );
}

#[test]
fn nomem_from_the_module_is_retried_not_reported() {
    let h = Harness::new(1);
    let seen = ram("r_nomem", |p| p, true, 5);
    let d = Rc::new(h.run_on(0, || Desc::open("r_nomem", true, |_| {}).unwrap()));
    let ch = Rc::new(h.run_on(0, || d.get_io_channel().unwrap()));
    let ok = Rc::new(Cell::new(0));
    for i in 0..3u64 {
        let ok = ok.clone();
        h.run_on(0, || {
            d.write_blocks(&ch, DmaBuf::new(512, 8).unwrap(), i, 1)
                .submit(move |c| {
                    assert!(c.is_success(), "{:?}", c.status);
                    ok.set(ok.get() + 1)
                })
        });
    }
    // Nothing else completes to trigger the retries: the retry poller does, on time.
    for _ in 0..20 {
        h.poll_threads();
        h.advance_time_us(100);
    }
    assert_eq!(ok.get(), 3);
    assert_eq!(seen.lock().unwrap().len(), 3 + 5);
}
