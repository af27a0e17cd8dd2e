//! Per-thread state: each thread's [`BdevChannel`] to a bdev, and the thread's I/O context
//! cache, io_wait queue and descriptor event callbacks (SPDK's bdev mgmt channel).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::Waker;

use super::io::{IoCtx, Pending};
use super::ops::ErasedChannel;
use super::registry::BdevInner;
use super::{Bdev, BdevEvent, IoStatus, Payload};
use crate::error::{Error, Result};
use crate::thread::{IoChannel, Thread, ThreadInner, current_or, task_of};

/// A thread's channel to a bdev: what every I/O call takes. Not `Send`; get one per thread
/// with [`super::Desc::get_io_channel`]. Clones share the channel.
#[derive(Clone)]
pub struct BdevChannel {
    pub(crate) ch: IoChannel<ChanCtx>,
}

impl fmt::Debug for BdevChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "BdevChannel({} on {})",
            self.ch.bdev.props.name,
            self.ch.thread().name()
        )
    }
}

impl BdevChannel {
    /// The bdev.
    pub fn bdev(&self) -> Bdev {
        Bdev(self.ch.bdev.clone())
    }

    /// I/Os submitted on this channel and not yet completed.
    pub fn outstanding(&self) -> u64 {
        self.ch.outstanding.get()
    }

    /// Whether I/O on this channel may go below the bdev without its module
    /// ([`super::BdevOps::pass_through`]): 0 if not, else how many channels it goes to
    /// (1, or a stripe's members).
    pub fn passes_through(&self) -> usize {
        self.ch.pass.as_ref().map_or(0, |p| p.width())
    }
}

/// The context of a bdev channel.
pub(crate) struct ChanCtx {
    pub(crate) bdev: Arc<BdevInner>,
    pub(crate) module: Box<dyn ErasedChannel>,
    /// [`super::BdevOps::pass_through`]: where this channel passes I/O through to, set
    /// at creation and never changed (an I/O below reaches that channel through this
    /// one, which it holds).
    pub(crate) pass: Option<super::Pass>,
    pub(crate) tctx: Rc<ThreadCtx>,
    pub(crate) outstanding: Cell<u64>,
    pub(crate) stats: super::stats::ChannelStats,
    /// I/Os the module completed with NoMem, waiting to be resubmitted.
    pub(crate) nomem: RefCell<VecDeque<Box<IoCtx>>>,
    pub(crate) nomem_len: Cell<usize>,
    pub(crate) nomem_poller: RefCell<Option<crate::thread::Poller>>,
    /// `FLAG_*`: what sends an I/O on this channel down the slow path.
    pub(crate) flags: Cell<u8>,
    /// I/Os waiting for QoS budget, and the poller that retries them.
    pub(crate) qos_q: RefCell<VecDeque<Box<IoCtx>>>,
    pub(crate) qos_poller: RefCell<Option<crate::thread::Poller>>,
    /// Resets submitted while another ran, completed with its status. Boxed: contexts
    /// move as one pointer.
    #[allow(clippy::vec_box)]
    pub(crate) queued_resets: RefCell<Vec<(u64, Box<IoCtx>)>>,
    /// Latency histogram (`bdev_enable_histogram`), of one I/O type or all.
    pub(crate) hist_on: Cell<bool>,
    pub(crate) hist: RefCell<Option<(Option<super::IoType>, super::Histogram)>>,
    /// I/Os submitted through descriptors while one has a timeout.
    pub(crate) inflight: RefCell<slab::Slab<super::timeout::Tracked>>,
}

/// The bdev has QoS limits.
pub(crate) const FLAG_QOS: u8 = 1;
/// A reset is in progress: new I/O is aborted.
pub(crate) const FLAG_FROZEN: u8 = 2;
/// A descriptor has an I/O timeout: in-flight I/O is tracked.
pub(crate) const FLAG_TIMEOUT: u8 = 4;

impl Drop for ChanCtx {
    fn drop(&mut self) {
        // The bdev keeps what its departed channels counted.
        self.retire_histogram();
        let mut retired = self.bdev.retired.lock().unwrap_or_else(|e| e.into_inner());
        retired.add(&self.stats);
    }
}

impl ChanCtx {
    pub(crate) fn create(w: &std::sync::Weak<BdevInner>) -> Result<ChanCtx> {
        let bdev = w.upgrade().ok_or(Error::DeviceUnregistering {
            name: "bdev".into(),
        })?;
        let t = current_or("bdev_get_io_channel")?;
        let tctx = ThreadCtx::get(&t)?;
        let module = bdev.ops.create_channel()?;
        let hist = *bdev.hist_cfg.lock().unwrap_or_else(|e| e.into_inner());
        let pass = module.pass_through().map(|p| p.0).filter(|p| {
            let fits = p.fits(&bdev);
            if !fits {
                tracing::debug!(bdev = %bdev.props.name, "a base of another block size, bdev or looser limits: no pass-through");
            }
            fits
        });
        let c = ChanCtx {
            module,
            pass,
            tctx,
            outstanding: Cell::new(0),
            stats: Default::default(),
            nomem: RefCell::new(VecDeque::new()),
            nomem_len: Cell::new(0),
            nomem_poller: RefCell::new(None),
            flags: Cell::new(
                if bdev.qos.enabled() { FLAG_QOS } else { 0 }
                    | if bdev.timeouts.load(std::sync::atomic::Ordering::Relaxed) > 0 {
                        FLAG_TIMEOUT
                    } else {
                        0
                    }
                    // A reset's freeze visits the channels that exist when it starts;
                    // one created after must not let I/O past it.
                    | if bdev.frozen.load(std::sync::atomic::Ordering::SeqCst) {
                        FLAG_FROZEN
                    } else {
                        0
                    },
            ),
            qos_q: RefCell::new(VecDeque::new()),
            qos_poller: RefCell::new(None),
            queued_resets: RefCell::new(Vec::new()),
            hist_on: Cell::new(false),
            hist: RefCell::new(None),
            inflight: RefCell::new(slab::Slab::new()),
            bdev,
        };
        c.set_histogram(hist);
        Ok(c)
    }

    /// Turns this channel's histogram on (`Some(filter)`) or off, keeping what it counted
    /// in the bdev's.
    pub(crate) fn set_histogram(&self, cfg: Option<Option<super::IoType>>) {
        self.retire_histogram();
        self.hist_on.set(cfg.is_some());
        *self.hist.borrow_mut() = cfg.map(|f| (f, super::Histogram::default()));
    }

    fn retire_histogram(&self) {
        if let Some((_, h)) = self.hist.borrow_mut().take() {
            let mut r = self
                .bdev
                .retired_hist
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            r.get_or_insert_with(Default::default).merge(&h);
        }
    }

    /// Counts a completed I/O's latency, if this channel keeps a histogram.
    #[inline]
    pub(crate) fn tally(&self, t: super::IoType, ticks: u64) {
        if self.hist_on.get() {
            self.tally_hist(t, ticks);
        }
    }

    // A call of its own: inlined, the compiler computed the bucket on every completion,
    // histogram on or off, once the latency was known before the check (~20 instructions).
    #[inline(never)]
    fn tally_hist(&self, t: super::IoType, ticks: u64) {
        if let Some((f, h)) = self.hist.borrow_mut().as_mut() {
            if f.is_none_or(|f| f == t) {
                h.tally(ticks);
            }
        }
    }
}

/// Who waits for an async I/O.
#[derive(Default)]
pub(crate) enum Waiter {
    /// Nobody any more (the future was dropped), or a free slot.
    #[default]
    None,
    /// The future exists but has not been polled yet: a completion stores the result
    /// and wakes nobody.
    Unpolled,
    /// A task of this crate's executor (packed reference): resumed inline.
    Task(usize),
    /// Any other executor's waker.
    Waker(std::task::Waker),
}

/// Where an async I/O's completion meets its future: a slot of the thread's table, by
/// index, taken when the request becomes a future (and is submitted) and freed when the
/// future takes the result (or by the completion, if the future was dropped first). No
/// reference counts: the future holds the index, the I/O context holds it in its
/// `IoCallback::Slot`.
pub(crate) struct AsyncSlot {
    /// `Waiter::None` once the future is gone (or the slot is free).
    waiter: Waiter,
    done: Option<(IoStatus, Payload)>,
}

/// Stores a waiter over one that owns nothing (not a foreign `Waker`): in place, with no
/// drop of the old one, where an assignment built the new one on the stack and loaded it
/// back whole (a store-forwarding stall, `perf annotate`).
#[inline(always)]
fn set_waiter(w: &mut Waiter, new: Waiter) {
    debug_assert!(!matches!(w, Waiter::Waker(_)));
    std::mem::forget(std::mem::replace(w, new));
}

/// The table of [`AsyncSlot`]s: a vector and a stack of its free indices (a slab, small
/// enough to inline into the future's poll).
#[derive(Default)]
pub(crate) struct Slots {
    v: Vec<AsyncSlot>,
    free: Vec<u32>,
}

impl Slots {
    /// Takes a free slot for a future not yet polled (free slots hold nothing).
    #[inline]
    fn open(&mut self) -> u32 {
        if let Some(i) = self.free.pop() {
            if let Some(e) = self.v.get_mut(i as usize) {
                set_waiter(&mut e.waiter, Waiter::Unpolled);
                return i;
            }
        }
        self.grow()
    }

    #[cold]
    #[inline(never)]
    fn grow(&mut self) -> u32 {
        self.v.push(AsyncSlot {
            waiter: Waiter::Unpolled,
            done: None,
        });
        (self.v.len() - 1) as u32
    }

    /// Frees slot `i`, giving back its result.
    #[inline]
    fn remove(&mut self, i: u32) -> Option<(IoStatus, Payload)> {
        let e = self.v.get_mut(i as usize)?;
        e.waiter = Waiter::None;
        let done = e.done.take();
        self.free.push(i);
        done
    }
}

type EventCb = Rc<RefCell<dyn FnMut(BdevEvent)>>;

/// Per-thread bdev state.
pub(crate) struct ThreadCtx {
    // Boxed so that a context moves as one pointer between the cache and a module.
    #[allow(clippy::vec_box)]
    cache: RefCell<Vec<Box<IoCtx>>>,
    /// Contexts allocated by this thread and not given back (cached or in flight).
    owned: Cell<usize>,
    /// Budget taken from the pool but not yet allocated.
    reserved: Cell<usize>,
    cache_size: usize,
    budget: Arc<super::Budget>,
    waitq: RefCell<VecDeque<Pending>>,
    /// Length of `waitq`, checked on every submission and completion without a borrow.
    pub(crate) waiting: Cell<usize>,
    /// Depth of module submit calls on the stack: completions inside one are deferred.
    pub(crate) submit_depth: Cell<u32>,
    pub(crate) now: Rc<Cell<u64>>,
    thread: Weak<ThreadInner>,
    /// The thread's executor, where tasks awaiting I/O are resumed.
    exec: Rc<crate::thread::Executor>,
    pub(crate) events: RefCell<HashMap<u64, EventCb>>,
    /// Async I/Os between submission and their future taking the result.
    slots: RefCell<Slots>,
    /// Timeout pollers of the descriptors opened on this thread, by descriptor id.
    pub(crate) timeouts: RefCell<HashMap<u64, crate::thread::Poller>>,
    /// Shared-I/O states kept for reuse (see `SharedIo`).
    pub(crate) shared: RefCell<Vec<Rc<super::io::SharedInner>>>,
}

impl ThreadCtx {
    /// This thread's context, created on first use: it reserves `bdev_io_cache_size`
    /// contexts from the pool, and fails as SPDK does when the pool can't supply them.
    pub(crate) fn get(t: &Thread) -> Result<Rc<ThreadCtx>> {
        if let Some(c) = t.get_local::<ThreadCtx>() {
            return Ok(c);
        }
        let g = &t.runtime().bdev;
        let want = g.opts.bdev_io_cache_size as usize;
        let got = g.budget.take(want);
        if got < want {
            g.budget.give(got);
            return Err(Error::invalid(
                "bdev_io_pool_size",
                format!(
                    "{} too small to give thread {} its cache of {want} I/O contexts: increase it with bdev_set_options",
                    g.opts.bdev_io_pool_size,
                    t.name()
                ),
            ));
        }
        let budget = g.budget.clone();
        Ok(t.local_or_init(|| ThreadCtx {
            cache: RefCell::new(Vec::with_capacity(want)),
            owned: Cell::new(0),
            reserved: Cell::new(got),
            cache_size: want,
            budget,
            waitq: RefCell::new(VecDeque::new()),
            waiting: Cell::new(0),
            submit_depth: Cell::new(0),
            now: t.now_cell(),
            thread: t.downgrade(),
            exec: t.inner.exec.clone(),
            events: RefCell::new(HashMap::new()),
            slots: RefCell::new(Slots::default()),
            timeouts: RefCell::new(HashMap::new()),
            shared: RefCell::new(Vec::new()),
        }))
    }

    /// The current thread's context, if it has one.
    pub(crate) fn current() -> Option<Rc<ThreadCtx>> {
        crate::thread::with_current(|t| t.get_local::<ThreadCtx>()).flatten()
    }

    /// An I/O context: from the cache, else newly allocated within the budget.
    #[inline]
    pub(crate) fn alloc(&self) -> Option<Box<IoCtx>> {
        if let Some(c) = self.cache.borrow_mut().pop() {
            return Some(c);
        }
        self.alloc_slow()
    }

    #[cold]
    fn alloc_slow(&self) -> Option<Box<IoCtx>> {
        if self.reserved.get() > 0 {
            self.reserved.set(self.reserved.get() - 1);
        } else if self.budget.take(1) == 0 {
            return None;
        }
        self.owned.set(self.owned.get() + 1);
        Some(Box::default())
    }

    /// Returns a context: kept in the cache, unless this thread holds more than its cache
    /// size while the pool is exhausted (then freed, so other threads can have it).
    #[inline]
    pub(crate) fn free(&self, c: Box<IoCtx>) {
        if self.owned.get() > self.cache_size && self.budget.exhausted() {
            self.owned.set(self.owned.get() - 1);
            drop(c);
            self.budget.give(1);
            return;
        }
        self.cache.borrow_mut().push(c);
    }

    /// Runs `f` in this thread's next deferred-call pass (inline if the thread is gone).
    pub(crate) fn defer(&self, f: impl FnOnce() + 'static) {
        match self.thread.upgrade() {
            Some(t) => Thread { inner: t }.defer(f),
            None => f(),
        }
    }

    /// Queues a request that found no I/O context (io_wait).
    #[cold]
    pub(crate) fn wait(&self, p: Pending) {
        self.waitq.borrow_mut().push_back(p);
        self.waiting.set(self.waiting.get() + 1);
    }

    /// Starts queued requests while contexts are available.
    #[cold]
    pub(crate) fn retry_waiters(&self) {
        while self.waiting.get() > 0 {
            let Some(ctx) = self.alloc() else { return };
            let Some(p) = self.waitq.borrow_mut().pop_front() else {
                self.free(ctx);
                return;
            };
            self.waiting.set(self.waiting.get() - 1);
            super::io::start(p, ctx);
        }
    }

    /// A slot for an async I/O whose future has not been polled yet.
    #[inline]
    pub(crate) fn slot_open(&self) -> u32 {
        self.slots.borrow_mut().open()
    }

    /// The completion side: store the result and resume the waiter (on this thread,
    /// where the I/O was submitted and completes); if the future is gone, free the slot
    /// and the buffers.
    #[inline]
    pub(crate) fn slot_complete(&self, i: u32, status: IoStatus, payload: Payload) {
        let mut slots = self.slots.borrow_mut();
        let Some(s) = slots.v.get_mut(i as usize) else {
            return;
        };
        match std::mem::take(&mut s.waiter) {
            Waiter::Task(t) => {
                s.done = Some((status, payload));
                drop(slots);
                self.exec.resume_packed(t);
            }
            Waiter::Waker(w) => {
                s.done = Some((status, payload));
                drop(slots);
                w.wake();
            }
            Waiter::Unpolled => s.done = Some((status, payload)),
            Waiter::None => {
                slots.remove(i);
                drop(slots);
                drop(payload);
            }
        }
    }

    /// The future's side: the result if it has come (the slot is then freed), made into
    /// the caller's type by `take`; else `waker` is who to wake when it comes: a task of
    /// this thread's executor (by its packed reference), or any other waker (the cold
    /// path).
    #[inline(always)]
    pub(crate) fn slot_poll<R>(
        &self,
        i: u32,
        waker: &Waker,
        take: impl FnOnce(IoStatus, Payload) -> R,
    ) -> Option<R> {
        let mut slots = self.slots.borrow_mut();
        let s = slots.v.get_mut(i as usize)?;
        if let Some((status, payload)) = s.done.as_mut() {
            // The completion took the waiter: only the result is left to take. `take` makes
            // the caller's result of it here, from the slot in place: taking the pair out
            // first (`done.take()`) wrote the slot's `None` through the stack and moved
            // the pair through two more stack copies, each a store the next wider load
            // could not forward from (perf annotate; -42 instructions and +9 % awaited
            // IOPS without them).
            let (status, payload) = (*status, std::mem::take(payload));
            s.done = None;
            slots.free.push(i);
            drop(slots);
            return Some(take(status, payload));
        }
        match task_of(waker) {
            Some(t) if !matches!(s.waiter, Waiter::Waker(_)) => {
                set_waiter(&mut s.waiter, Waiter::Task(t));
                None
            }
            _ => {
                drop(slots);
                self.slot_poll_foreign(i, waker)
                    .map(|(status, payload)| take(status, payload))
            }
        }
    }

    /// [`ThreadCtx::slot_poll`] with another executor's waker, or over one: the new waiter
    /// made, and the old one dropped, outside the table's borrow, since a foreign
    /// waker's code may reach back into it.
    #[cold]
    #[inline(never)]
    fn slot_poll_foreign(&self, i: u32, waker: &Waker) -> Option<(IoStatus, Payload)> {
        let new = match task_of(waker) {
            Some(t) => Waiter::Task(t),
            None => Waiter::Waker(waker.clone()),
        };
        let mut slots = self.slots.borrow_mut();
        let s = slots.v.get_mut(i as usize)?;
        if let Some(done) = s.done.take() {
            // Came while the waker was cloned: its completion woke the old waiter.
            slots.free.push(i);
            drop(slots);
            drop(new);
            return Some(done);
        }
        let old = std::mem::replace(&mut s.waiter, new);
        drop(slots);
        drop(old);
        None
    }

    /// Async I/O slots taken and not freed.
    #[cfg(test)]
    pub(crate) fn slots_in_use(&self) -> usize {
        let s = self.slots.borrow();
        s.v.len() - s.free.len()
    }

    /// The future is dropped: free the slot if the I/O has completed (dropping its
    /// buffers), else leave it for the completion to free.
    pub(crate) fn slot_drop(&self, i: u32) {
        let mut slots = self.slots.borrow_mut();
        let Some(s) = slots.v.get_mut(i as usize) else {
            return;
        };
        if s.done.is_some() {
            let gone = slots.remove(i);
            drop(slots);
            drop(gone);
        } else {
            s.waiter = Waiter::None;
        }
    }
}

impl Drop for ThreadCtx {
    fn drop(&mut self) {
        let cached = self.cache.get_mut().len();
        let in_flight = self.owned.get() - cached;
        if in_flight > 0 {
            tracing::warn!(in_flight, "thread exits with I/O contexts still in flight");
        }
        self.budget.give(cached + self.reserved.get());
    }
}
