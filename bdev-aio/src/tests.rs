//! One conformance suite (data, boundaries, unmap and write_zeroes reading zeroes, flush,
//! misaligned buffers) against malloc and against both engines, on files and, as root, on
//! loop devices; then the ways a target can be unusable, readonly, rescan, and a file
//! truncated underneath.

use std::path::PathBuf;
use std::time::Duration;

use bdev_core::bdev::{Desc, IoStatus, IoType, Reject, get_by_name};
use bdev_core::dma::DmaBuf;
use bdev_core::testing::Harness;

use crate::{AioOpts, UringOpts};

const T: Duration = Duration::from_secs(20);

fn dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/aio-tests")
        .join(std::process::id().to_string());
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn file(name: &str, len: u64) -> String {
    let p = dir().join(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(len).unwrap();
    p.to_str().unwrap().to_string()
}

fn aio(name: &str, filename: &str, fallocate: bool) -> AioOpts {
    AioOpts {
        name: name.into(),
        filename: filename.into(),
        block_size: 0,
        readonly: false,
        fallocate,
        uuid: None,
        submit_batch: None,
    }
}

fn uring(name: &str, filename: &str) -> UringOpts {
    UringOpts {
        name: name.into(),
        filename: filename.into(),
        block_size: 0,
        uuid: None,
        sqpoll_idle_ms: None,
        sqpoll_cpu: None,
        fixed_file: false,
        registered_buffers: 0,
        defer_taskrun: None,
        submit_batch: None,
    }
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64).wrapping_mul(2654435761) ^ seed) as u8)
        .collect()
}

fn buf_from(data: &[u8], align: usize) -> DmaBuf {
    let mut b = DmaBuf::new(data.len(), align).unwrap();
    b.copy_from_slice(data);
    b
}

/// The suite, on bdev `name`.
fn conformance(h: &Harness, name: &str) {
    let name = name.to_string();
    h.block_on_real(0, T, async move {
        let d = Desc::open(&name, true, |_| {}).unwrap();
        let ch = d.get_io_channel().unwrap();
        let b = d.bdev();
        let (bl, n) = (b.block_len() as usize, b.num_blocks());
        let align = b.buf_align().max(512);
        // Data at the start, the end, and a large transfer in the middle.
        for (lba, blocks, seed) in [(0, 1, 1u64), (n - 1, 1, 2), (n / 3, 32, 3), (7, 3, 4)] {
            let data = pattern(blocks as usize * bl, seed);
            d.write_blocks(&ch, buf_from(&data, align), lba, blocks)
                .await
                .unwrap();
            let back = d
                .read_blocks(&ch, DmaBuf::new(data.len(), align).unwrap(), lba, blocks)
                .await
                .unwrap();
            assert_eq!(&back[..], &data[..], "{name} lba {lba}");
        }
        // Vectored, in buffers of odd sizes that only the bounce service can use.
        let data = pattern(4 * bl, 9);
        let parts = vec![
            buf_from(&data[..bl / 2], 8),
            buf_from(&data[bl / 2..3 * bl], 8),
            buf_from(&data[3 * bl..], 8),
        ];
        d.writev_blocks(&ch, parts, 100, 4).await.unwrap();
        let back = d
            .readv_blocks(
                &ch,
                vec![DmaBuf::new(bl, 8).unwrap(), DmaBuf::new(3 * bl, 8).unwrap()],
                100,
                4,
            )
            .await
            .unwrap();
        let got: Vec<u8> = back.iter().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(got, data, "{name} vectored");
        // Buffers whose starts are aligned but whose lengths are not (O_DIRECT refuses
        // those too): they must be bounced as well.
        let data = pattern(2 * bl, 11);
        let parts = vec![
            buf_from(&data[..bl / 2], 4096),
            buf_from(&data[bl / 2..], 4096),
        ];
        d.writev_blocks(&ch, parts, 200, 2).await.unwrap();
        let back = d
            .readv_blocks(
                &ch,
                vec![
                    DmaBuf::new(bl / 2, 4096).unwrap(),
                    DmaBuf::new(3 * bl / 2, 4096).unwrap(),
                ],
                200,
                2,
            )
            .await
            .unwrap();
        let got: Vec<u8> = back.iter().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(got, data, "{name} aligned starts, odd lengths");
        // More segments than the kernel takes in one call (1024 for both engines), each a
        // 512-byte piece the device accepts as it is: the core splits the I/O.
        let k = 1024 * 512 / bl as u64 + 8;
        let segs = k as usize * bl / 512;
        let data = pattern(k as usize * bl, 13);
        let parts: Vec<DmaBuf> = data.chunks(512).map(|c| buf_from(c, 512)).collect();
        assert_eq!(parts.len(), segs);
        let lba = n - k - 1;
        d.writev_blocks(&ch, parts, lba, k)
            .await
            .unwrap_or_else(|e| panic!("{name}: {segs} segments: {e}"));
        let back = d
            .readv_blocks(
                &ch,
                (0..segs).map(|_| DmaBuf::new(512, 512).unwrap()).collect(),
                lba,
                k,
            )
            .await
            .unwrap();
        let got: Vec<u8> = back.iter().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(got, data, "{name}: {segs} segments");
        // Boundaries.
        let e = d
            .read_blocks(&ch, DmaBuf::new(2 * bl, align).unwrap(), n - 1, 2)
            .await
            .unwrap_err();
        assert_eq!(e.status, IoStatus::Rejected(Reject::OutOfRange));
        // Unmap and write_zeroes read back zeroes.
        for t in [IoType::Unmap, IoType::WriteZeroes] {
            if !b.io_type_supported(t) {
                continue;
            }
            d.write_blocks(&ch, buf_from(&pattern(8 * bl, 5), align), 16, 8)
                .await
                .unwrap();
            let r = if t == IoType::Unmap {
                d.unmap_blocks(&ch, 16, 8).await
            } else {
                d.write_zeroes_blocks(&ch, 16, 8).await
            };
            r.unwrap_or_else(|e| panic!("{name} {t}: {e}"));
            let back = d
                .read_blocks(&ch, DmaBuf::new(8 * bl, align).unwrap(), 16, 8)
                .await
                .unwrap();
            assert!(
                back.iter().all(|&x| x == 0),
                "{name}: {t} reads back zeroes"
            );
        }
        if b.io_type_supported(IoType::Flush) {
            d.flush_blocks(&ch, 0, n).await.unwrap();
        }
    });
}

#[test]
fn conformance_on_malloc_and_on_files_through_both_engines() {
    let h = Harness::new(1);
    let m = h.run_on(0, || {
        let mut m = bdev_core::config::Methods::new();
        bdev_malloc::register(&mut m).unwrap();
        crate::register(&mut m).unwrap();
        m
    });
    let _ = m;
    h.run_on(0, || {
        bdev_malloc::malloc::create(bdev_malloc::malloc::MallocOpts::new("cm", 4096, 512)).unwrap();
        crate::create_aio(aio("ca", &file("ca.img", 4 << 20), true)).unwrap();
        // The whole poll's batch in one io_submit.
        let mut o = aio("ca0", &file("ca0.img", 4 << 20), true);
        o.submit_batch = Some(0);
        crate::create_aio(o).unwrap();
        // The default ring (DEFER_TASKRUN where the kernel has it, two SQEs per enter).
        crate::create_uring(uring("cu", &file("cu.img", 4 << 20))).unwrap();
        // A plain ring, one enter per poll; and one SQE per enter.
        let mut o = uring("cup", &file("cup.img", 4 << 20));
        o.defer_taskrun = Some(false);
        crate::create_uring(o).unwrap();
        let mut o = uring("cu1", &file("cu1.img", 4 << 20));
        o.defer_taskrun = Some(false);
        o.submit_batch = Some(1);
        crate::create_uring(o).unwrap();
        let mut o = uring("cuf", &file("cuf.img", 4 << 20));
        o.fixed_file = true;
        crate::create_uring(o).unwrap();
        let mut o = uring("cur", &file("cur.img", 4 << 20));
        o.registered_buffers = 2;
        crate::create_uring(o).unwrap();
        let mut o = uring("cud", &file("cud.img", 4 << 20));
        o.defer_taskrun = Some(true);
        o.submit_batch = Some(0);
        crate::create_uring(o).unwrap();
        let mut o = uring("cux", &file("cux.img", 4 << 20));
        o.defer_taskrun = Some(true);
        o.sqpoll_idle_ms = Some(10);
        assert!(
            crate::create_uring(o).is_err(),
            "defer_taskrun with SQPOLL refused"
        );
        let mut o = uring("cux", &file("cux.img", 4 << 20));
        o.submit_batch = Some(2);
        o.sqpoll_idle_ms = Some(10);
        assert!(
            crate::create_uring(o).is_err(),
            "submit_batch with SQPOLL refused"
        );
        let mut o = uring("cus", &file("cus.img", 4 << 20));
        o.sqpoll_idle_ms = Some(10);
        o.sqpoll_cpu = Some(0);
        o.block_size = 4096;
        crate::create_uring(o).unwrap();
    });
    for name in [
        "cm", "ca", "ca0", "cu", "cup", "cu1", "cuf", "cur", "cud", "cus",
    ] {
        conformance(&h, name);
    }
    // The registered-buffer ring sent single-buffer I/O as fixed-buffer operations (with
    // 2 slots for the suite's many buffers, slots were recycled along the way).
    let info = h.run_on(0, || get_by_name("cur").unwrap().dump_info_json().unwrap());
    let fixed = info["uring"]["fixed_buffer_ios"].as_u64().unwrap();
    assert!(fixed >= 8, "{info}");
    assert_eq!(
        h.run_on(0, || get_by_name("cus").unwrap().block_len()),
        4096
    );
}

/// A loop device over a file, detached on drop; `None` (with a message) when that can't be
/// done here (not root, no losetup).
struct Loop(String);

impl Loop {
    fn attach(backing: &str) -> Option<Loop> {
        if unsafe_free_is_root() {
            let out = std::process::Command::new("losetup")
                .args(["--find", "--show", "--direct-io=on", backing])
                .output()
                .ok()?;
            if out.status.success() {
                return Some(Loop(
                    String::from_utf8_lossy(&out.stdout).trim().to_string(),
                ));
            }
            eprintln!(
                "skipping loop device test: losetup: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        } else {
            eprintln!("skipping loop device test: needs root");
        }
        None
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.0])
            .status();
    }
}

fn unsafe_free_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

#[test]
fn conformance_on_a_loop_device_through_both_engines() {
    let backing = file("loop.img", 16 << 20);
    let Some(dev) = Loop::attach(&backing) else {
        return;
    };
    let h = Harness::new(1);
    h.run_on(0, || {
        crate::create_aio(aio("la", &dev.0, true)).unwrap();
        crate::create_uring(uring("lu", &dev.0)).unwrap();
    });
    conformance(&h, "la");
    conformance(&h, "lu");
    h.stop();
}

#[test]
fn unusable_targets_get_clear_errors() {
    let h = Harness::new(1);
    let err = |o: AioOpts| {
        h.run_on(0, || {
            crate::create_aio(o).map(|_| ()).unwrap_err().to_string()
        })
    };
    let e = err(aio("e1", "/nonexistent/disk.img", false));
    assert!(
        e.contains("/nonexistent/disk.img") && e.contains("No such file"),
        "{e}"
    );
    let e = err(aio("e2", dir().to_str().unwrap(), false));
    assert!(e.contains("is a directory"), "{e}");
    let odd = file("odd.img", 4096 + 100);
    let e = err(aio("e3", &odd, false));
    assert!(e.contains("not a multiple of the block size"), "{e}");
    let mut o = aio("e4", &file("bs.img", 1 << 20), false);
    o.block_size = 1000;
    let e = err(o);
    assert!(e.contains("power of two"), "{e}");
    let e = err(aio("e5", &file("empty.img", 0), false));
    assert!(e.contains("empty"), "{e}");
    // tmpfs had no O_DIRECT before Linux 6.6: there, a clear error; since, it works.
    let shm = format!("/dev/shm/bdev-aio-test-{}.img", std::process::id());
    if let Ok(f) = std::fs::File::create(&shm) {
        f.set_len(1 << 20).unwrap();
        let r = h.run_on(0, || crate::create_aio(aio("e6", &shm, false)).map(|_| ()));
        let _ = std::fs::remove_file(&shm);
        if let Err(e) = r {
            assert!(e.to_string().contains("O_DIRECT"), "{e}");
        }
    }
    // No permission (root can read anything, so only checked as a user).
    if !unsafe_free_is_root() {
        let p = file("noperm.img", 1 << 20);
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
        let e = err(aio("e7", &p, false));
        assert!(e.contains("Permission denied"), "{e}");
    }
}

#[test]
fn readonly_refuses_writes_and_rescan_reports_growth() {
    let h = Harness::new(1);
    let path = file("ro.img", 1 << 20);
    let mut o = aio("ro", &path, true);
    o.readonly = true;
    h.run_on(0, || crate::create_aio(o).unwrap());
    let st = h.block_on_real(0, T, async {
        let d = Desc::open("ro", true, |_| {}).unwrap();
        let ch = d.get_io_channel().unwrap();
        d.read_blocks(&ch, DmaBuf::new(512, 512).unwrap(), 0, 1)
            .await
            .unwrap();
        d.write_blocks(&ch, DmaBuf::new(512, 512).unwrap(), 0, 1)
            .await
            .unwrap_err()
            .status
    });
    assert_eq!(st, IoStatus::Rejected(Reject::Unsupported));
    // The file grows; rescan tells the opener.
    let resized = std::rc::Rc::new(std::cell::Cell::new(false));
    let r2 = resized.clone();
    let _d = h.run_on(0, || {
        Desc::open("ro", false, move |ev| {
            if ev == bdev_core::bdev::BdevEvent::Resize {
                r2.set(true)
            }
        })
        .unwrap()
    });
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(2 << 20)
        .unwrap();
    h.run_on(0, || crate::rescan("ro", crate::AIO).unwrap());
    h.poll_threads();
    assert!(resized.get());
    assert_eq!(
        h.run_on(0, || get_by_name("ro").unwrap().num_blocks()),
        4096
    );
    // bdev_uring_rescan the same way; each method finds only its own module's bdevs.
    h.run_on(0, || crate::create_uring(uring("ru", &path)).unwrap());
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(3 << 20)
        .unwrap();
    assert!(h.run_on(0, || crate::rescan("ru", crate::AIO)).is_err());
    assert!(h.run_on(0, || crate::rescan("ro", crate::URING)).is_err());
    h.run_on(0, || crate::rescan("ru", crate::URING).unwrap());
    assert_eq!(
        h.run_on(0, || get_by_name("ru").unwrap().num_blocks()),
        6144
    );
}

#[test]
fn a_file_truncated_underneath_gives_io_errors_not_a_panic() {
    let h = Harness::new(1);
    let path = file("trunc.img", 1 << 20);
    h.run_on(0, || {
        crate::create_aio(aio("ta", &path, false)).unwrap();
        crate::create_uring(uring("tu", &path)).unwrap();
    });
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(4096)
        .unwrap();
    for name in ["ta", "tu"] {
        let name = name.to_string();
        let st = h.block_on_real(0, T, async move {
            let d = Desc::open(&name, false, |_| {}).unwrap();
            let ch = d.get_io_channel().unwrap();
            d.read_blocks(&ch, DmaBuf::new(4096, 512).unwrap(), 1000, 8)
                .await
                .unwrap_err()
                .status
        });
        assert_eq!(st, IoStatus::Failed, "a short read past the new end");
    }
}

/// A filesystem mounted from an image for the test, unmounted (lazily) on drop.
struct Mount(PathBuf);

impl Mount {
    /// An ext2 filesystem (files without extents: no punch, no zero range) on a loop
    /// device; `None` (with a message) when that can't be done here.
    fn ext2() -> Option<Mount> {
        use std::process::Command;
        if !unsafe_free_is_root() {
            eprintln!("skipping ext2 test: needs root");
            return None;
        }
        let img = file("ext2.img", 32 << 20);
        let dir = dir().join("ext2");
        std::fs::create_dir_all(&dir).unwrap();
        let run = |c: &mut Command| match c.output() {
            Ok(o) if o.status.success() => true,
            Ok(o) => {
                eprintln!(
                    "skipping ext2 test: {c:?}: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                false
            }
            Err(e) => {
                eprintln!("skipping ext2 test: {c:?}: {e}");
                false
            }
        };
        if !run(Command::new("mkfs.ext2").args(["-q", "-F", &img])) {
            return None;
        }
        let m = dir.to_str().unwrap();
        run(Command::new("mount").args(["-o", "loop", &img, m])).then(|| Mount(dir))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn write_zeroes_falls_back_to_writes_where_the_filesystem_cannot_zero() {
    let Some(mnt) = Mount::ext2() else {
        return;
    };
    let path = mnt.0.join("disk.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let path = path.to_str().unwrap().to_string();
    // ext2 files punch holes but refuse FALLOC_FL_ZERO_RANGE (EOPNOTSUPP).
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let mode = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: plain syscall on a descriptor we own, integer arguments.
    let r = unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&f), mode, 0, 4096) };
    assert_eq!(
        (r, std::io::Error::last_os_error().raw_os_error()),
        (-1, Some(libc::EOPNOTSUPP)),
        "the premise: ext2 can't zero a range"
    );
    drop(f);
    let h = Harness::new(1);
    h.run_on(0, || crate::create_aio(aio("e2", &path, true)).unwrap());
    // The suite's write_zeroes must read back zeroes: the first is refused by fallocate
    // and handed back to the bdev layer, which writes zeroes then and from then on.
    conformance(&h, "e2");
    conformance(&h, "e2");
    h.block_on(0, async { crate::delete("e2", crate::AIO).await.unwrap() });
    h.stop();
}
