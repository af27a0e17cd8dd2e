//! A reactor's doorbell, for interrupt mode (SPDK's `--interrupt-mode`): an eventfd that
//! other OS threads write to wake the reactor when it sleeps.
//!
//! Lost wake-ups are ruled out by the same pattern as [`super::ThreadShared::push`]: the
//! reactor sets `sleeping`, then (after a full fence) looks at its queues once more before
//! it waits; a sender queues, then (after a full fence) rings if `sleeping` is set. One of
//! the two always sees the other.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering, fence};

use super::EventFd;
use crate::error::{Error, Result};

pub(crate) struct Doorbell {
    fd: EventFd,
    sleeping: AtomicBool,
}

impl Doorbell {
    pub(crate) fn new() -> Result<Doorbell> {
        let fd = EventFd::new().map_err(|source| Error::Reactor {
            core: 0,
            op: "eventfd",
            source,
        })?;
        Ok(Doorbell {
            fd,
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
            self.fd.signal();
        }
    }

    /// The reactor's side, before its last look at its queues.
    pub(crate) fn set_sleeping(&self) {
        self.sleeping.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    /// Awake again: stop asking for rings, and clear those that came.
    pub(crate) fn woke(&self) {
        self.sleeping.store(false, Ordering::Relaxed);
        self.fd.take();
    }
}
