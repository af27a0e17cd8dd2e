//! The Linux AIO engine, through the raw syscalls (io_setup, io_submit, io_getevents; no
//! libaio). Submissions are batched per poll and handed to the kernel at most
//! `submit_batch` iocbs per io_submit (2 unless configured: see [`Aio::new`]). Completions are read
//! from the kernel's completion ring, mapped into this process at the context's address,
//! in user space (no syscall per poll) when the ring has the layout this code knows
//! (its magic number); otherwise through io_getevents.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};

use bdev_core::thread::EventFd;

use crate::engine::{Engine, Op};

/// `struct iocb` of linux/aio_abi.h (little-endian layout).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Iocb {
    data: u64,
    key: u32,
    rw_flags: i32,
    opcode: u16,
    reqprio: i16,
    fildes: u32,
    buf: u64,
    nbytes: u64,
    offset: i64,
    reserved2: u64,
    flags: u32,
    resfd: u32,
}
const _: () = assert!(std::mem::size_of::<Iocb>() == 64);

/// `struct io_event`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct IoEvent {
    data: u64,
    obj: u64,
    res: i64,
    res2: i64,
}
const _: () = assert!(std::mem::size_of::<IoEvent>() == 32);

/// The header of the kernel's completion ring (`struct aio_ring`, fs/aio.c).
#[repr(C)]
struct AioRing {
    id: u32,
    nr: u32,
    head: u32,
    tail: u32,
    magic: u32,
    compat_features: u32,
    incompat_features: u32,
    header_length: u32,
}
const AIO_RING_MAGIC: u32 = 0xa10a_10a1;

const IOCB_CMD_FDSYNC: u16 = 3;
/// `iocb.aio_flags`: signal `aio_resfd` (an eventfd) when the operation completes.
const IOCB_FLAG_RESFD: u32 = 1;
const IOCB_CMD_PREADV: u16 = 7;
const IOCB_CMD_PWRITEV: u16 = 8;

/// A Linux AIO context over one file.
pub struct Aio {
    ctx: libc::c_ulong,
    nr: usize,
    file: Arc<File>,
    batch: Vec<Iocb>,
    ptrs: Vec<*mut Iocb>,
    /// The most iocbs one io_submit takes (never 0).
    submit_batch: usize,
    /// io_submit calls made.
    submit_calls: u64,
    inflight: usize,
    events: Vec<IoEvent>,
    /// Operations the kernel refused at submission, reported by the next reap.
    refused: Vec<(u64, i64)>,
    /// Interrupt mode: an eventfd each operation signals on completion.
    efd: Option<EventFd>,
    /// Events reaped minus completion signals read back from the eventfd: while above
    /// zero, signals are still to come (the kernel publishes an event before it signals,
    /// at times much later) or to be read, and the eventfd is read when the ring is empty.
    efd_owed: i64,
}

impl Aio {
    /// A context for up to `depth` operations on `file`; with `interrupt`, completions
    /// also signal an eventfd (the channel's interrupt fd). A poll hands what was queued
    /// since the last one to the kernel `submit_batch` iocbs per io_submit (0: all in one
    /// call).
    ///
    /// The kernel plugs a call of more than two iocbs (fs/aio.c's `AIO_PLUG_THRESHOLD`):
    /// no request of it reaches the device until the last is prepared, so at a depth
    /// where the device sets the pace each waits for those prepared after it. On this
    /// project's virtio disk that cost 12 % of the IOPS at depth 32 (docs/benchmarks.md);
    /// two per call, the default, are not plugged, and take half the syscalls of one per
    /// I/O (SPDK's aio bdev makes an io_submit per I/O).
    pub fn new(file: Arc<File>, depth: u32, interrupt: bool, submit_batch: u32) -> io::Result<Aio> {
        let efd = if interrupt {
            Some(EventFd::new()?)
        } else {
            None
        };
        let mut ctx: libc::c_ulong = 0;
        // SAFETY: io_setup writes the context id into `ctx`, which outlives the call.
        let r = unsafe { libc::syscall(libc::SYS_io_setup, depth as libc::c_long, &mut ctx) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Aio {
            ctx,
            nr: depth as usize,
            file,
            batch: Vec::with_capacity(depth as usize),
            ptrs: Vec::with_capacity(depth as usize),
            submit_batch: crate::engine::per_call(submit_batch),
            submit_calls: 0,
            inflight: 0,
            events: vec![IoEvent::default(); depth as usize],
            refused: Vec::new(),
            efd,
            efd_owed: 0,
        })
    }

    /// Reads (and so clears) the eventfd's count of completion signals (interrupt mode):
    /// it is readable again only for signals after this.
    fn clear_efd(&mut self) {
        if let Some(fd) = &self.efd {
            self.efd_owed -= fd.take() as i64;
        }
    }

    /// Reads finished events from the mapped ring; `None` if the ring is not one we know.
    fn reap_ring(&mut self, f: &mut dyn FnMut(u64, i64)) -> Option<usize> {
        let ring = self.ctx as *mut u8;
        let (magic, incompat, nr, head, tail, hlen) = (
            ring_u32(ring, 16),
            ring_u32(ring, 24),
            ring_u32(ring, 4),
            ring_u32(ring, 8),
            ring_u32(ring, 12),
            ring_u32(ring, 28),
        );
        if magic != AIO_RING_MAGIC
            || incompat != 0
            || nr == 0
            || hlen as usize != std::mem::size_of::<AioRing>()
        {
            return None;
        }
        // Events written before the tail moved are visible after this.
        fence(Ordering::Acquire);
        let mut h = head % nr;
        let t = tail % nr;
        let mut n = 0;
        while h != t {
            let p = ring.wrapping_add(
                std::mem::size_of::<AioRing>() + h as usize * std::mem::size_of::<IoEvent>(),
            ) as *const IoEvent;
            // SAFETY: `nr` events follow the header in the ring the kernel mapped for this
            // context (alive until io_destroy in Drop), and `h < nr`. Kernel-written memory:
            // a volatile copy, never a reference.
            let ev = unsafe { p.read_volatile() };
            f(ev.data, ev.res);
            n += 1;
            h = (h + 1) % nr;
        }
        if n > 0 {
            fence(Ordering::Release);
            let p = ring.wrapping_add(8) as *mut u32;
            // SAFETY: the head is the consumer's index, ours to advance (as libaio's
            // user-space reaping does); inside the mapped header; a volatile store.
            unsafe { p.write_volatile(h) };
            self.inflight = self.inflight.saturating_sub(n);
        }
        Some(n)
    }
}

/// The u32 at byte `off` of the completion ring's header.
fn ring_u32(ring: *const u8, off: usize) -> u32 {
    let p = ring.wrapping_add(off) as *const u32;
    // SAFETY: the context id is the address of the ring the kernel mapped into this process
    // (page-aligned, at least a header long) for the context, alive until io_destroy;
    // `off` is a field of the 32-byte header. Kernel-written: read volatile.
    unsafe { p.read_volatile() }
}

impl Engine for Aio {
    unsafe fn push(&mut self, op: Op, user_data: u64) -> io::Result<()> {
        if self.inflight + self.batch.len() >= self.nr {
            return Err(io::Error::from_raw_os_error(libc::EAGAIN));
        }
        let mut cb = Iocb {
            data: user_data,
            fildes: self.file.as_raw_fd() as u32,
            ..Default::default()
        };
        if let Some(fd) = &self.efd {
            cb.flags = IOCB_FLAG_RESFD;
            cb.resfd = fd.as_raw_fd() as u32;
        }
        match op {
            Op::Readv {
                iov, cnt, offset, ..
            } => {
                cb.opcode = IOCB_CMD_PREADV;
                cb.buf = iov as u64;
                cb.nbytes = cnt as u64;
                cb.offset = offset as i64;
            }
            Op::Writev {
                iov, cnt, offset, ..
            } => {
                cb.opcode = IOCB_CMD_PWRITEV;
                cb.buf = iov as u64;
                cb.nbytes = cnt as u64;
                cb.offset = offset as i64;
            }
            Op::Fsync => cb.opcode = IOCB_CMD_FDSYNC,
        }
        self.batch.push(cb);
        Ok(())
    }

    fn submit(&mut self) -> io::Result<usize> {
        if self.batch.is_empty() {
            return Ok(0);
        }
        self.ptrs.clear();
        let base = self.batch.as_mut_ptr();
        for i in 0..self.batch.len() {
            self.ptrs.push(base.wrapping_add(i));
        }
        let mut n = 0;
        let mut err = None;
        while n < self.ptrs.len() {
            let k = (self.ptrs.len() - n).min(self.submit_batch);
            let ptrs = self.ptrs[n..].as_mut_ptr();
            // SAFETY: the iocbs and the pointer array live in `self` for the call, and
            // `ptrs` has `k` entries from there; the kernel copies them during io_submit.
            // The segments they name are the caller's (push).
            let r =
                unsafe { libc::syscall(libc::SYS_io_submit, self.ctx, k as libc::c_long, ptrs) };
            self.submit_calls += 1;
            if r < 0 {
                err = Some(io::Error::last_os_error());
                break;
            }
            n += r as usize;
            if (r as usize) < k {
                // The kernel took part of them (its queue is full, or the next iocb is
                // refused, which the next call reports): the rest wait for the next poll.
                break;
            }
        }
        self.batch.drain(..n);
        self.inflight += n;
        match err {
            None => Ok(n),
            Some(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) => {
                if n > 0 {
                    Ok(n)
                } else {
                    Err(e)
                }
            }
            Some(e) => {
                // The first iocb left is refused for good (EINVAL, EBADF...): it completes
                // with that error instead of blocking everything queued behind it.
                let cb = self.batch.remove(0);
                self.refused
                    .push((cb.data, -(e.raw_os_error().unwrap_or(libc::EIO) as i64)));
                Err(e)
            }
        }
    }

    fn reap(&mut self, f: &mut dyn FnMut(u64, i64)) -> usize {
        if !self.refused.is_empty() {
            let n = self.refused.len();
            for (ud, res) in self.refused.drain(..) {
                f(ud, res);
            }
            return n;
        }
        if self.inflight == 0 {
            if self.efd_owed > 0 {
                self.clear_efd();
            }
            return 0;
        }
        if let Some(n) = self.reap_ring(f) {
            if self.efd.is_none() {
                return n;
            }
            if n > 0 {
                self.efd_owed += n as i64;
                return n;
            }
            if self.efd_owed <= 0 {
                return 0;
            }
            // Nothing, after events whose signals are unread: read them before the reactor
            // may sleep on the eventfd, then look once more (an event signalled by then is
            // in the ring).
            self.clear_efd();
            let n = self.reap_ring(f).unwrap_or(0);
            self.efd_owed += n as i64;
            return n;
        }
        if self.efd.is_some() {
            self.clear_efd();
        }
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: the event array holds `nr` events and outlives the call; a zero
        // timeout makes it non-blocking.
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_getevents,
                self.ctx,
                0 as libc::c_long,
                self.events.len() as libc::c_long,
                self.events.as_mut_ptr(),
                &mut ts,
            )
        };
        if r <= 0 {
            return 0;
        }
        let n = r as usize;
        if self.efd.is_some() {
            self.efd_owed += n as i64;
        }
        for e in &self.events[..n] {
            f(e.data, e.res);
        }
        self.inflight -= n;
        n
    }

    fn wait_one(&mut self) -> io::Result<()> {
        if !self.batch.is_empty() {
            self.submit()?;
        }
        if self.inflight == 0 {
            return Ok(());
        }
        // SAFETY: the event array holds `nr` events and outlives the call; a null timeout
        // blocks until at least one event (the results are dropped: the channel closes).
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_getevents,
                self.ctx,
                1 as libc::c_long,
                self.events.len() as libc::c_long,
                self.events.as_mut_ptr(),
                std::ptr::null_mut::<libc::timespec>(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        self.inflight -= (r as usize).min(self.inflight);
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.inflight + self.batch.len()
    }

    fn submit_calls(&self) -> u64 {
        self.submit_calls
    }

    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn interrupt_fd(&self) -> Option<RawFd> {
        self.efd.as_ref().map(|fd| fd.as_raw_fd())
    }
}

impl Drop for Aio {
    fn drop(&mut self) {
        // SAFETY: destroys the context created in new; waits for what is in flight.
        unsafe { libc::syscall(libc::SYS_io_destroy, self.ctx) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_come_from_the_ring_in_user_space() {
        let p = std::env::temp_dir().join(format!("aio-ring-{}.img", std::process::id()));
        std::fs::write(&p, vec![7u8; 8192]).unwrap();
        let f = Arc::new(File::open(&p).unwrap());
        let mut a = Aio::new(f, 8, false, 2).unwrap();
        let mut buf = vec![0u8; 4096];
        let iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: `buf` and `iov` outlive the loop below, which waits for the completion.
        unsafe {
            a.push(
                Op::Readv {
                    iov: &iov,
                    cnt: 1,
                    offset: 4096,
                    buf: None,
                },
                42,
            )
        }
        .unwrap();
        assert_eq!(a.submit().unwrap(), 1);
        let mut got = None;
        for _ in 0..1_000_000 {
            let r = a.reap_ring(&mut |ud, res| got = Some((ud, res)));
            assert!(r.is_some(), "the kernel's ring layout is the one we know");
            if got.is_some() {
                break;
            }
            std::thread::yield_now();
        }
        assert_eq!(got, Some((42, 4096)));
        assert!(buf.iter().all(|&b| b == 7));
        let _ = std::fs::remove_file(&p);
    }

    /// Reads of block `i` of a file whose block `i` holds byte `i`, submitted `per_call`
    /// per io_submit; the one at `bad` names a negative offset, which the kernel refuses
    /// at submission. Returns each user data's result, in order, and the io_submit calls.
    fn batched_reads(per_call: u32, n: usize, bad: Option<usize>) -> (Vec<(u64, i64)>, u64) {
        let p = std::env::temp_dir().join(format!(
            "aio-batch-{}-{per_call}-{n}.img",
            std::process::id()
        ));
        let data: Vec<u8> = (0..n).flat_map(|i| vec![i as u8; 512]).collect();
        std::fs::write(&p, &data).unwrap();
        let f = Arc::new(File::open(&p).unwrap());
        let mut a = Aio::new(f, 16, false, per_call).unwrap();
        let mut bufs = vec![vec![0xffu8; 512]; n];
        let iovs: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        let offset = |i| {
            if Some(i) == bad {
                u64::MAX - 511
            } else {
                i as u64 * 512
            }
        };
        // SAFETY: `bufs` and `iovs` outlive the loop below, which reaps every op.
        unsafe { crate::engine::push_reads(&mut a, &iovs, offset) };
        let mut got = Vec::new();
        for _ in 0..1_000_000 {
            // A refused op stops the call it was in; the next poll goes on past it.
            let _ = a.submit();
            a.reap(&mut |ud, res| got.push((ud, res)));
            if got.len() == n {
                break;
            }
            std::thread::yield_now();
        }
        got.sort();
        for (i, b) in bufs.iter().enumerate() {
            if Some(i) != bad {
                assert!(b.iter().all(|&x| x == i as u8), "block {i}");
            }
        }
        let _ = std::fs::remove_file(&p);
        (got, a.submit_calls)
    }

    #[test]
    fn a_poll_hands_every_queued_op_over_in_calls_of_submit_batch() {
        let all_ok: Vec<(u64, i64)> = (0..7).map(|i| (i, 512)).collect();
        // Seven ops: one call for all, or calls of 1, 2 or 3 (the last one shorter). Polls
        // that find nothing queued make no call.
        for (per_call, calls) in [(0, 1), (1, 7), (2, 4), (3, 3)] {
            assert_eq!(
                batched_reads(per_call, 7, None),
                (all_ok.clone(), calls),
                "{per_call} per call"
            );
        }
    }

    #[test]
    fn an_op_refused_at_submission_fails_alone() {
        for per_call in [0, 2] {
            let (got, _) = batched_reads(per_call, 5, Some(2));
            let mut want: Vec<(u64, i64)> = (0..5).map(|i| (i, 512)).collect();
            want[2].1 = -(libc::EINVAL as i64);
            assert_eq!(got, want, "{per_call} per call");
        }
    }
}
