//! The engine trait: what the bdev needs from Linux AIO or io_uring. An engine belongs to
//! one channel (one thread); operations are queued with `push`, handed to the kernel in a
//! batch by `submit` (once per poll), and their results collected by `reap`.

use std::io;
use std::os::fd::RawFd;

/// One operation on the file.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    /// Read into the segments at a byte offset.
    Readv {
        /// Segments, as `struct iovec`.
        iov: *const libc::iovec,
        /// Number of segments.
        cnt: u32,
        /// Byte offset.
        offset: u64,
        /// The caller buffer holding the one segment, if so: (id, start, length).
        buf: Option<(u64, *mut u8, usize)>,
    },
    /// Write from the segments at a byte offset.
    Writev {
        /// Segments, as `struct iovec`.
        iov: *const libc::iovec,
        /// Number of segments.
        cnt: u32,
        /// Byte offset.
        offset: u64,
        /// The caller buffer holding the one segment, if so: (id, start, length).
        buf: Option<(u64, *mut u8, usize)>,
    },
    /// fdatasync.
    Fsync,
}

/// The default `submit_batch` where small calls pay: the most operations the kernel takes
/// in one call without plugging them (fs/aio.c's `AIO_PLUG_THRESHOLD`; io_uring's
/// `need_plug`), so that none waits in the call for those prepared after it.
pub const SUBMIT_BATCH: u32 = 2;

/// Operations per submission call for a `submit_batch` option (0: all in one call).
pub(crate) fn per_call(submit_batch: u32) -> usize {
    match submit_batch {
        0 => usize::MAX,
        n => n as usize,
    }
}

/// An I/O engine over one file descriptor.
pub trait Engine {
    /// Queues `op` with `user_data`, returned by `reap` with its result. The memory the
    /// op names must stay valid until then. Fails when the queue is full (`EAGAIN`).
    ///
    /// # Safety
    /// The segments of a read or write must stay valid and unaliased until the op is reaped.
    unsafe fn push(&mut self, op: Op, user_data: u64) -> io::Result<()>;

    /// Hands what was pushed to the kernel; returns how many went.
    fn submit(&mut self) -> io::Result<usize>;

    /// Collects finished operations: `f(user_data, result)` with the byte count or a
    /// negative errno. Returns how many.
    fn reap(&mut self, f: &mut dyn FnMut(u64, i64)) -> usize;

    /// Waits (blocking) until at least one pushed operation has finished, or none is in
    /// flight; used only when a channel closes with I/O in the kernel.
    fn wait_one(&mut self) -> io::Result<()>;

    /// Operations sent with registered (fixed) buffers so far.
    fn fixed_ios(&self) -> u64 {
        0
    }

    /// Operations pushed and not reaped yet.
    fn in_flight(&self) -> usize;

    /// System calls made to hand operations to the kernel (`io_submit`,
    /// `io_uring_enter`): what `submit_batch` trades against the kernel's plugging.
    fn submit_calls(&self) -> u64;

    /// The descriptor the engine works on.
    fn fd(&self) -> RawFd;

    /// In interrupt mode, an fd readable when completions wait (None: the channel must be
    /// polled).
    fn interrupt_fd(&self) -> Option<RawFd> {
        None
    }
}

/// Pushes a one-segment read of each of `iovs`, at byte `offset(i)`, with user data `i`.
///
/// # Safety
///
/// The segments must stay valid until every read is reaped (`Engine::push`'s contract).
#[cfg(test)]
pub(crate) unsafe fn push_reads(
    e: &mut dyn Engine,
    iovs: &[libc::iovec],
    offset: impl Fn(usize) -> u64,
) {
    for (i, iov) in iovs.iter().enumerate() {
        let op = Op::Readv {
            iov,
            cnt: 1,
            offset: offset(i),
            buf: None,
        };
        // SAFETY: the caller keeps the segments valid until the reads are reaped.
        unsafe { e.push(op, i as u64) }.unwrap();
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;

    /// Whether `fd` becomes readable within `ms` (EINTR, as io_uring's task work causes,
    /// only restarts the wait).
    fn readable(fd: RawFd, ms: u64) -> bool {
        let end = Instant::now() + Duration::from_millis(ms);
        loop {
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            let left = end.saturating_duration_since(Instant::now()).as_millis() as i32;
            // SAFETY: one live pollfd.
            let r = unsafe { libc::poll(&mut p, 1, left) };
            if r > 0 {
                return true;
            }
            if r == 0 || Instant::now() >= end {
                return false;
            }
        }
    }

    /// One segment per buffer (the buffers must outlive the ops naming the segments).
    fn iovecs<'a>(bufs: impl Iterator<Item = &'a mut [u8]>) -> Vec<libc::iovec> {
        bufs.map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect()
    }

    fn completions_ring_the_interrupt_fd(mut e: Box<dyn Engine>) {
        let fd = e.interrupt_fd().expect("an interrupt fd in interrupt mode");
        assert_eq!(e.reap(&mut |_, _| {}), 0);
        assert!(!readable(fd, 0), "quiet with nothing in flight");
        let mut buf = vec![0u8; 4096];
        let iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: `buf` and `iov` outlive the wait for the completion below.
        unsafe {
            e.push(
                Op::Readv {
                    iov: &iov,
                    cnt: 1,
                    offset: 4096,
                    buf: None,
                },
                7,
            )
        }
        .unwrap();
        assert_eq!(e.submit().unwrap(), 1);
        assert!(readable(fd, 5000), "the completion makes the fd readable");
        let mut got = Vec::new();
        for _ in 0..1000 {
            e.reap(&mut |ud, res| got.push((ud, res)));
            if !got.is_empty() {
                break;
            }
        }
        assert_eq!(got, [(7, 4096)]);
        assert!(buf.iter().all(|&b| b == 3));
        assert_eq!(e.reap(&mut |_, _| {}), 0);
        assert!(!readable(fd, 0), "quiet again once reaped");
    }

    /// Seven reads of a file whose block `i` holds byte `i`, pushed, submitted by one poll
    /// and reaped; returns the enters that submit made.
    fn uring_seven_reads(o: &crate::uring::RingOpts, tag: &str) -> u64 {
        let p = std::env::temp_dir().join(format!("engine-batch-{tag}-{}.img", std::process::id()));
        let data: Vec<u8> = (0..7u8).flat_map(|i| vec![i; 512]).collect();
        std::fs::write(&p, &data).unwrap();
        let f = Arc::new(File::open(&p).unwrap());
        let _ = std::fs::remove_file(&p);
        let mut e = crate::uring::Uring::new(f, 8, o, false).unwrap();
        let mut bufs: Vec<Vec<u8>> = (0..7).map(|_| vec![0xffu8; 512]).collect();
        let iovs = iovecs(bufs.iter_mut().map(|b| &mut b[..]));
        // SAFETY: `bufs` and `iovs` outlive the reaping below.
        unsafe { push_reads(&mut e, &iovs, |i| i as u64 * 512) };
        assert_eq!(e.submit().unwrap(), 7, "{tag}: one poll submits all");
        let calls = e.submit_calls();
        let mut got = Vec::new();
        let t0 = Instant::now();
        while got.len() < 7 {
            assert!(t0.elapsed() < Duration::from_secs(5), "{tag}: {got:?}");
            e.submit().unwrap();
            e.reap(&mut |ud, res| got.push((ud, res)));
        }
        got.sort();
        assert_eq!(got, (0..7).map(|i| (i, 512)).collect::<Vec<_>>(), "{tag}");
        for (i, b) in bufs.iter().enumerate() {
            assert!(b.iter().all(|&x| x == i as u8), "{tag}: block {i}");
        }
        assert_eq!(e.in_flight(), 0);
        calls
    }

    #[test]
    fn uring_hands_the_kernel_submit_batch_sqes_per_enter() {
        use crate::uring::RingOpts;
        let with = |defer_taskrun, submit_batch| RingOpts {
            defer_taskrun,
            submit_batch,
            ..Default::default()
        };
        // A plain ring: all in one enter unless told otherwise.
        assert_eq!(uring_seven_reads(&with(false, None), "plain"), 1);
        assert_eq!(uring_seven_reads(&with(false, Some(0)), "plain-0"), 1);
        assert_eq!(uring_seven_reads(&with(false, Some(1)), "plain-1"), 7);
        assert_eq!(uring_seven_reads(&with(false, Some(3)), "plain-3"), 3);
        // SQPOLL: the kernel thread submits; the option is ignored.
        let sq = RingOpts {
            sqpoll: Some((10, None)),
            submit_batch: Some(1),
            ..Default::default()
        };
        assert!(uring_seven_reads(&sq, "sqpoll") <= 1);
        if crate::uring::probe_defer_taskrun().is_err() {
            eprintln!("skipped the DEFER_TASKRUN cases: this kernel has no DEFER_TASKRUN");
            return;
        }
        // A DEFER_TASKRUN ring: two per enter unless told otherwise.
        assert_eq!(uring_seven_reads(&with(true, None), "defer"), 4);
        assert_eq!(uring_seven_reads(&with(true, Some(0)), "defer-0"), 1);
    }

    #[test]
    fn uring_keeps_no_more_in_flight_than_its_completion_queue_holds() {
        let p = std::env::temp_dir().join(format!("engine-cq-{}.img", std::process::id()));
        std::fs::write(&p, vec![1u8; 4096]).unwrap();
        let f = Arc::new(File::open(&p).unwrap());
        let mut e = crate::uring::Uring::new(f, 8, &Default::default(), false).unwrap();
        let cq = 16; // twice the submission queue
        let mut bufs: Vec<Vec<u8>> = (0..cq + 1).map(|_| vec![0u8; 512]).collect();
        let iovs = iovecs(bufs.iter_mut().map(|b| &mut b[..]));
        let mut accepted = 0;
        for (i, iov) in iovs.iter().enumerate() {
            let op = || Op::Readv {
                iov,
                cnt: 1,
                offset: 0,
                buf: None,
            };
            // SAFETY: the buffers and iovecs outlive the engine's drain below.
            let mut r = unsafe { e.push(op(), i as u64) };
            if r.is_err() {
                e.submit().unwrap();
                // SAFETY: as above.
                r = unsafe { e.push(op(), i as u64) };
            }
            match r {
                Ok(()) => accepted += 1,
                Err(err) => {
                    assert_eq!(err.raw_os_error(), Some(libc::EAGAIN));
                    break;
                }
            }
        }
        assert_eq!(accepted, cq, "refused past the completion queue's size");
        e.submit().unwrap();
        let mut n = 0;
        for _ in 0..100_000 {
            n += e.reap(&mut |_, _| {});
            if n == cq {
                break;
            }
        }
        assert_eq!(n, cq);
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn a_defer_taskrun_ring_holds_completions_until_a_poll_enters_it() {
        use std::os::unix::fs::OpenOptionsExt;
        // O_DIRECT, so that reads complete from the device's interrupt (through task
        // work), not inline in the submission as page-cache reads may.
        // Next to the build, on the repository's file system (a temp dir may be tmpfs,
        // which has no O_DIRECT).
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(format!("engine-defer-{}.img", std::process::id()));
        std::fs::write(&p, vec![5u8; 64 * 1024]).unwrap();
        let f = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&p)
        {
            Ok(f) => Arc::new(f),
            Err(e) => {
                eprintln!("skipped: no O_DIRECT in {}: {e}", dir.display());
                let _ = std::fs::remove_file(&p);
                return;
            }
        };
        let mut e = crate::uring::Uring::new(
            f,
            8,
            &crate::uring::RingOpts {
                defer_taskrun: true,
                ..Default::default()
            },
            false,
        )
        .unwrap();
        let mut bufs: Vec<bdev_core::dma::DmaBuf> = (0..8)
            .map(|_| bdev_core::dma::DmaBuf::page_aligned(4096).unwrap())
            .collect();
        let iovs = iovecs(bufs.iter_mut().map(|b| &mut b[..]));
        // SAFETY: `bufs` and `iovs` outlive the reaping below.
        unsafe { push_reads(&mut e, &iovs, |i| i as u64 * 4096) };
        assert_eq!(e.submit().unwrap(), 8);
        // The device has long finished; nothing is posted until we enter the ring.
        std::thread::sleep(Duration::from_millis(100));
        let mut got = Vec::new();
        e.reap(&mut |ud, res| got.push((ud, res)));
        assert!(got.len() < 8, "completions held back: {got:?}");
        // As the channel's poller does: submit (which enters when the kernel holds
        // completions for us), then reap.
        let t0 = Instant::now();
        while got.len() < 8 {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "completions: {got:?}"
            );
            e.submit().unwrap();
            e.reap(&mut |ud, res| got.push((ud, res)));
        }
        got.sort();
        assert_eq!(got, (0..8).map(|i| (i, 4096)).collect::<Vec<_>>());
        assert!(bufs.iter().all(|b| b.iter().all(|&x| x == 5)));
        assert_eq!(e.in_flight(), 0);
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn in_interrupt_mode_both_engines_wake_the_reactor_on_completion() {
        let p = std::env::temp_dir().join(format!("engine-intr-{}.img", std::process::id()));
        std::fs::write(&p, vec![3u8; 8192]).unwrap();
        let f = Arc::new(File::open(&p).unwrap());
        completions_ring_the_interrupt_fd(Box::new(
            crate::aio::Aio::new(f.clone(), 8, true, 2).unwrap(),
        ));
        completions_ring_the_interrupt_fd(Box::new(
            crate::uring::Uring::new(f, 8, &Default::default(), true).unwrap(),
        ));
        let _ = std::fs::remove_file(&p);
    }
}
