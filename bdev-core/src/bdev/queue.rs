//! [`IoQueue`]: the queue a module keeps in its channel for I/O it completes from a poller
//! (the null bdev, the malloc bdev's copies, an engine's retries).

use std::cell::RefCell;
use std::fmt;

use super::BdevIo;
use crate::thread::PollStatus;

/// I/O waiting for a channel's poller. Pushing while a drain runs is fine (completions
/// submit again): new I/O waits for the next drain. Capacity is kept, so the steady state
/// allocates nothing.
pub struct IoQueue {
    queue: RefCell<Vec<BdevIo>>,
    spare: RefCell<Vec<BdevIo>>,
}

impl Default for IoQueue {
    fn default() -> Self {
        Self::with_capacity(256)
    }
}

impl fmt::Debug for IoQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IoQueue({} queued)", self.queue.borrow().len())
    }
}

impl IoQueue {
    /// A queue with room for `n` I/Os before it grows.
    pub fn with_capacity(n: usize) -> Self {
        IoQueue {
            queue: RefCell::new(Vec::with_capacity(n)),
            spare: RefCell::new(Vec::with_capacity(n)),
        }
    }

    /// Queues an I/O.
    #[inline]
    pub fn push(&self, io: BdevIo) {
        self.queue.borrow_mut().push(io);
    }

    /// Number of queued I/Os.
    pub fn len(&self) -> usize {
        self.queue.borrow().len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queue.borrow().is_empty()
    }

    /// Hands every I/O queued now to `f`, in order; a poller's return value.
    #[inline]
    pub fn drain(&self, mut f: impl FnMut(BdevIo)) -> PollStatus {
        let mut batch = std::mem::take(&mut *self.spare.borrow_mut());
        std::mem::swap(&mut batch, &mut *self.queue.borrow_mut());
        if batch.is_empty() {
            *self.spare.borrow_mut() = batch;
            return PollStatus::Idle;
        }
        for io in batch.drain(..) {
            f(io);
        }
        *self.spare.borrow_mut() = batch;
        PollStatus::Busy
    }
}
