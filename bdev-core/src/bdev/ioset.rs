//! [`IoSet`]: many I/Os in flight, their completions taken by one task as they come —
//! the async way to keep a queue deep (tokio's `JoinSet`, or an io_uring
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
//! let mut set = IoSet::new();
//! for i in 0..32u64 {
//!     set.push(desc.read_blocks(ch, DmaBuf::page_aligned(4096)?, i, 1), i);
//! }
//! while let Some((lba, c)) = set.join_next().await {
//!     if !c.is_success() {
//!         return Err(format!("read of block {lba}: {}", c.status).into());
//!     }
//!     // ... use c.payload, or push the next read with it
//! }
//! # Ok(()) }
//! ```

use std::cell::{Cell, RefCell};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use super::{Completion, IoPayload, IoRequest};
use crate::dma::DmaBuf;

/// I/Os in flight, each with a tag of the caller's (`T`: a slot index, an offset),
/// completed into a queue that [`IoSet::join_next`] takes from in batches: each call
/// takes from the batch of completions that had come when the current batch began,
/// newest first (the newest is the one still in the cache), and a batch is taken whole
/// before the next, so no completion waits longer than one batch.
/// Steady state allocates nothing as long as a tag is at most 24 bytes (the completion's
/// captures, the set's reference and the tag, then fit inline in the I/O context; see
/// [`crate::thread::DEFER_INLINE`]). A tag of one word (an index, an offset) is the fast
/// case: the captures are then two words, which go straight into the context, where
/// larger ones are staged on the stack and copied (measured ~15 % slower in bdevperf).
/// For latency, [`Completion::submit_tick`] needs no room in the tag.
///
/// One task takes the completions ([`IoSet::join_next`] takes `&mut self`). The set lives on
/// one thread. An I/O can't be taken back once pushed (as with any bdev I/O: a reset of
/// the bdev is what aborts); dropping the set drops the results that came and, as each
/// I/O still in flight completes, its result (and buffers) then.
pub struct IoSet<T: 'static, P: IoPayload = DmaBuf> {
    inner: Rc<Inner<T, P>>,
}

struct Inner<T, P> {
    /// Completed since the task last took a batch, oldest first.
    done: RefCell<Vec<(T, Completion<P>)>>,
    /// The batch the task is taking from, newest first (popped from the end): the
    /// newest completion is the one still in the cache. A batch is taken whole before
    /// the next (`done`, swapped in when this is empty), so nothing waits longer than one
    /// batch, however fast new completions come.
    taking: RefCell<Vec<(T, Completion<P>)>>,
    /// The task waiting in [`IoSet::join_next`], while nothing is left to take. A `Cell`, not a
    /// `RefCell`: a waker's `wake` or drop may run any code, this set's included, and no
    /// borrow is held meanwhile. (Waking this crate's executor's task costs a thread-local
    /// lookup, once per batch of completions.)
    waker: Cell<Option<Waker>>,
    /// Whether `waker` is set (one load on each completion's path).
    waiting: Cell<bool>,
    /// The set was dropped: completions still in flight are dropped as they come.
    closed: Cell<bool>,
    in_flight: Cell<usize>,
}

impl<T: 'static, P: IoPayload> fmt::Debug for IoSet<T, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "IoSet({} in flight, {} done)",
            self.in_flight(),
            self.ready()
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
                done: RefCell::new(Vec::with_capacity(n)),
                taking: RefCell::new(Vec::with_capacity(n)),
                waker: Cell::new(None),
                waiting: Cell::new(false),
                closed: Cell::new(false),
                in_flight: Cell::new(0),
            }),
        }
    }

    /// Submits `req` now; its result comes out of [`IoSet::join_next`] with `tag`. A request
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
    /// there yet. `None` when nothing is in flight and nothing is left to take. Dropping
    /// the future loses nothing (it holds no state). `&mut self`: one waiter at a time.
    #[inline]
    pub fn join_next(&mut self) -> Next<'_, T, P> {
        Next { set: self }
    }

    /// The next completion if one is there now (never waits).
    #[inline]
    pub fn try_join_next(&mut self) -> Option<(T, Completion<P>)> {
        let mut taking = self.inner.taking.borrow_mut();
        if let Some(r) = taking.pop() {
            return Some(r);
        }
        std::mem::swap(&mut *taking, &mut *self.inner.done.borrow_mut());
        taking.pop()
    }

    /// [`IoSet::join_next`] as a poll function (for a `Stream` adapter, or a hand-written
    /// future): `Ready(None)` when nothing is in flight and nothing is left to take.
    #[inline]
    pub fn poll_join_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<(T, Completion<P>)>> {
        if let Some(r) = self.try_join_next() {
            return Poll::Ready(Some(r));
        }
        let inner = &self.inner;
        if inner.in_flight.get() == 0 {
            return Poll::Ready(None);
        }
        let new = match inner.waker.take() {
            Some(old) if old.will_wake(cx.waker()) => old,
            // The old one (if any) is dropped here, with no borrow held.
            _ => cx.waker().clone(),
        };
        inner.waker.set(Some(new));
        inner.waiting.set(true);
        Poll::Pending
    }

    /// I/Os submitted and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.get()
    }

    /// I/Os in flight plus completions not yet taken.
    pub fn len(&self) -> usize {
        self.in_flight() + self.ready()
    }

    /// Completions not yet taken.
    fn ready(&self) -> usize {
        self.inner.done.borrow().len() + self.inner.taking.borrow().len()
    }

    /// Whether nothing is in flight and nothing is left to take.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T: 'static, P: IoPayload> Drop for IoSet<T, P> {
    fn drop(&mut self) {
        // What is in flight still completes (each I/O holds the set's queue); its result
        // is dropped then, and what completed already goes now.
        self.inner.closed.set(true);
        self.inner.waiting.set(false);
        drop(self.inner.waker.take());
        let done = std::mem::take(&mut *self.inner.done.borrow_mut());
        let taking = std::mem::take(&mut *self.inner.taking.borrow_mut());
        drop((done, taking));
    }
}

impl<T, P> Inner<T, P> {
    #[inline]
    fn complete(&self, tag: T, c: Completion<P>) {
        self.in_flight.set(self.in_flight.get() - 1);
        if self.closed.get() {
            return;
        }
        self.done.borrow_mut().push((tag, c));
        // Only the first completion after the task went to sleep wakes it, and through the
        // executor's queue: the rest of the batch (a poller's whole drain) lands before it
        // runs, and it takes them all in one resumption. (Resuming it at each completion
        // instead, as an awaited I/O's task is, measured ~15 % slower.)
        if self.waiting.get() {
            self.waiting.set(false);
            if let Some(w) = self.waker.take() {
                w.wake();
            }
        }
    }
}

/// The future of [`IoSet::join_next`].
#[must_use = "futures do nothing unless awaited"]
pub struct Next<'a, T: 'static, P: IoPayload> {
    set: &'a mut IoSet<T, P>,
}

impl<T: 'static, P: IoPayload> fmt::Debug for Next<'_, T, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Next")
    }
}

impl<T: 'static, P: IoPayload> Future for Next<'_, T, P> {
    type Output = Option<(T, Completion<P>)>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.set.poll_join_next(cx)
    }
}
