//! [`IoQueue`]: the queue a module keeps in its channel for I/O it completes from a poller
//! (the null bdev, the malloc bdev's copies, an engine's retries).

use std::cell::{OnceCell, RefCell};
use std::fmt;

use super::BdevIo;
use crate::thread::{PollStatus, Poller, PollerRef};

/// I/O waiting for a channel's poller. Pushing while a drain runs is fine (completions
/// submit again): new I/O waits for the next drain. Capacity is kept, so the steady state
/// allocates nothing.
pub struct IoQueue {
    queue: RefCell<Vec<BdevIo>>,
    spare: RefCell<Vec<BdevIo>>,
    /// The poller draining the queue, when it is to be paused while the queue is empty
    /// (see [`IoQueue::pause_while_empty`]).
    drainer: OnceCell<PollerRef>,
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
            drainer: OnceCell::new(),
        }
    }

    /// Pauses `poller`, the poller that drains this queue, whenever a drain finds the
    /// queue empty, and resumes it on the next push. For interrupt mode: a poller with no
    /// fd keeps its reactor awake while it is active, and this one has work only when its
    /// own thread pushes some, so it need not be polled in between. In polling mode there
    /// is no point (a resume per burst of I/O for nothing): modules call this only when
    /// [`crate::app::interrupt_mode`] says so.
    pub fn pause_while_empty(&self, poller: &Poller) {
        let _ = self.drainer.set(poller.downgrade());
    }

    /// Queues an I/O.
    #[inline]
    pub fn push(&self, io: BdevIo) {
        self.queue.borrow_mut().push(io);
        if let Some(p) = self.drainer.get() {
            p.resume();
        }
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
            if let Some(p) = self.drainer.get() {
                p.pause();
            }
            return PollStatus::Idle;
        }
        for io in batch.drain(..) {
            f(io);
        }
        *self.spare.borrow_mut() = batch;
        PollStatus::Busy
    }
}
