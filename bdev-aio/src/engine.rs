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

    /// The descriptor the engine works on.
    fn fd(&self) -> RawFd;

    /// In interrupt mode, an fd readable when completions wait (None: the channel must be
    /// polled).
    fn interrupt_fd(&self) -> Option<RawFd> {
        None
    }
}
