//! [`IoSet`]: many I/Os in flight, their completions taken by one task in the order they
//! come — the async way to keep a queue deep (tokio's `JoinSet`, or an io_uring
//! completion queue, for bdev I/O).
//!
//! Awaiting each I/O in a task of its own (`desc.read_blocks(..).await` in one task per
//! queue slot) resumes a task per completion: its state is touched, and polled, once per
//! I/O. A set keeps one task for the whole depth: each completion adds its result to the
//! set's queue, the first one after the task went to sleep wakes it (through the executor's
//! ready queue, so the rest of a batch of completions — a poller's whole drain — lands
//! before it runs), and the task takes them all in one resumption.
//!
//! ```no_run
//! # use bdev_core::bdev::{Desc, BdevChannel, IoSet};
//! # use bdev_core::dma::DmaBuf;
//! # async fn f(desc: &Desc, ch: &BdevChannel) -> Result<(), Box<dyn std::error::Error>> {
//! let set = IoSet::new();
//! for i in 0..32u64 {
//!     set.push(desc.read_blocks(ch, DmaBuf::page_aligned(4096)?, i, 1), i);
//! }
//! while let Some((lba, c)) = set.next().await {
//!     if !c.is_success() {
//!         return Err(format!("read of block {lba}: {}", c.status).into());
//!     }
//!     // ... use c.payload, or push the next read with it
//! }
//! # Ok(()) }
//! ```

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use super::{Completion, IoPayload, IoRequest};
use crate::dma::DmaBuf;

/// I/Os in flight, each with a tag of the caller's (`T`: a slot index, an offset),
/// completed into one queue that [`IoSet::next`] takes from in the order they complete.
/// Steady state allocates nothing as long as a tag is at most 24 bytes (the completion's
/// captures, the set's reference and the tag, then fit inline in the I/O context; see
/// [`crate::thread::DEFER_INLINE`]).
///
/// One task takes the completions (a second waiter replaces the first). The set lives on
/// one thread. Dropping it with I/O in flight is fine: each I/O still completes, and its
/// result (and buffers) go once the last one has.
pub struct IoSet<T: 'static, P: IoPayload = DmaBuf> {
    inner: Rc<Inner<T, P>>,
}

struct Inner<T, P> {
    /// Completed and not yet taken, oldest first.
    done: RefCell<VecDeque<(T, Completion<P>)>>,
    /// The task waiting in [`IoSet::next`], while `done` is empty. (Waking this crate's
    /// executor's task costs a thread-local lookup, once per batch of completions.)
    waker: RefCell<Option<Waker>>,
    /// Whether `waker` is set (one load on each completion's path, not a borrow).
    waiting: Cell<bool>,
    in_flight: Cell<usize>,
}

impl<T: 'static, P: IoPayload> fmt::Debug for IoSet<T, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "IoSet({} in flight, {} done)",
            self.in_flight(),
            self.inner.done.borrow().len()
        )
    }
}

impl<T: 'static, P: IoPayload> Default for IoSet<T, P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: 'static, P: IoPayload> IoSet<T, P> {
    /// An empty set.
    pub fn new() -> Self {
        Self::with_capacity(0)
    }

    /// An empty set with room for `n` completions before its queue grows.
    pub fn with_capacity(n: usize) -> Self {
        IoSet {
            inner: Rc::new(Inner {
                done: RefCell::new(VecDeque::with_capacity(n)),
                waker: RefCell::new(None),
                waiting: Cell::new(false),
                in_flight: Cell::new(0),
            }),
        }
    }

    /// Submits `req` now; its result comes out of [`IoSet::next`] with `tag`. A request
    /// the layer refuses (range, permissions, buffer) comes out as a failure too.
    #[inline]
    pub fn push(&self, req: IoRequest<'_, P>, tag: T) {
        let inner = &self.inner;
        inner.in_flight.set(inner.in_flight.get() + 1);
        let inner = Rc::clone(inner);
        req.submit(move |c| inner.complete(tag, c));
    }

    /// The next completion, as `(tag, completion)` (status and payload, as a callback gets
    /// them; [`Completion::into_result`] makes it a `Result`); waits for one if none is
    /// there yet. `None` when nothing is in flight and nothing is left to take.
    #[inline]
    pub fn next(&self) -> Next<'_, T, P> {
        Next { set: self }
    }

    /// The next completion if one is there now.
    #[inline]
    pub fn try_next(&self) -> Option<(T, Completion<P>)> {
        let mut done = self.inner.done.borrow_mut();
        let (tag, c) = done.pop_front()?;
        if done.is_empty() {
            // Back to the queue's first entry for the next batch, instead of one further
            // round the ring each time: fewer cache lines in use.
            done.clear();
        }
        Some((tag, c))
    }

    /// I/Os submitted and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.get()
    }

    /// I/Os in flight plus completions not yet taken.
    pub fn len(&self) -> usize {
        self.in_flight() + self.inner.done.borrow().len()
    }

    /// Whether nothing is in flight and nothing is left to take.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T, P> Inner<T, P> {
    #[inline]
    fn complete(&self, tag: T, c: Completion<P>) {
        self.in_flight.set(self.in_flight.get() - 1);
        self.done.borrow_mut().push_back((tag, c));
        // Only the first completion after the task went to sleep wakes it, and through the
        // executor's queue: the rest of the batch (a poller's whole drain) lands before it
        // runs, and it takes them all in one resumption. (Resuming it at each completion
        // instead, as an awaited I/O's task is, measured ~15 % slower.)
        if self.waiting.get() {
            self.waiting.set(false);
            if let Some(w) = self.waker.borrow_mut().take() {
                w.wake();
            }
        }
    }
}

/// The future of [`IoSet::next`].
#[must_use = "futures do nothing unless awaited"]
pub struct Next<'a, T: 'static, P: IoPayload> {
    set: &'a IoSet<T, P>,
}

impl<T: 'static, P: IoPayload> fmt::Debug for Next<'_, T, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Next")
    }
}

impl<T: 'static, P: IoPayload> Future for Next<'_, T, P> {
    type Output = Option<(T, Completion<P>)>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(r) = self.set.try_next() {
            return Poll::Ready(Some(r));
        }
        let inner = &self.set.inner;
        if inner.in_flight.get() == 0 {
            return Poll::Ready(None);
        }
        let mut w = inner.waker.borrow_mut();
        match &*w {
            Some(old) if old.will_wake(cx.waker()) => {}
            _ => *w = Some(cx.waker().clone()),
        }
        inner.waiting.set(true);
        Poll::Pending
    }
}
