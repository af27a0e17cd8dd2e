//! A reactor's doorbell, for interrupt mode (SPDK's `--interrupt-mode`): an eventfd that
//! other OS threads write to wake the reactor when it sleeps.
//!
//! Lost wake-ups are ruled out by the same pattern as [`super::ThreadShared::push`]: the
//! reactor sets `sleeping`, then (after a full fence) looks at its queues once more before
//! it waits; a sender queues, then (after a full fence) rings if `sleeping` is set. One of
//! the two always sees the other.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering, fence};

use crate::error::{Error, Result};

pub(crate) struct Doorbell {
    fd: OwnedFd,
    sleeping: AtomicBool,
}

impl Doorbell {
    pub(crate) fn new() -> Result<Doorbell> {
        // SAFETY: eventfd takes no pointers; the result is checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(Error::Reactor {
                core: 0,
                op: "eventfd",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Doorbell {
            // SAFETY: `fd` was just created and nothing else owns it.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            sleeping: AtomicBool::new(false),
        })
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The sender's side, after it queued something for the reactor.
    #[inline]
    pub(crate) fn ring_if_sleeping(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) {
            self.ring();
        }
    }

    #[cold]
    fn ring(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd. A full counter (EAGAIN)
        // still leaves the fd readable, which is all a wake needs.
        let _ = unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                (&raw const one).cast::<libc::c_void>(),
                8,
            )
        };
    }

    /// The reactor's side, before its last look at its queues.
    pub(crate) fn set_sleeping(&self) {
        self.sleeping.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    /// Awake again: stop asking for rings, and clear those that came.
    pub(crate) fn woke(&self) {
        self.sleeping.store(false, Ordering::Relaxed);
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from our non-blocking eventfd.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), (&raw mut v).cast::<libc::c_void>(), 8) };
    }
}
