//! Lightweight threads, SPDK's `spdk_thread`: the unit that owns pollers, io_channels and
//! a message queue, scheduled on a reactor (an OS thread pinned to a core) or, in tests, on
//! the test's own OS thread by the [`crate::testing::Harness`].
//!
//! ```text
//!   other threads ──send_msg──► [ lock-free MPSC ring ]──┐
//!                                                         ▼
//!   reactor loop ── poll() ──► deferred calls ─► messages ─► active pollers
//!                                  ▲                          ─► timed pollers (period in µs)
//!                                  └── defer(): local, no allocation   ─► ready async tasks
//! ```
//!
//! A thread only ever runs on one OS thread at a time, so everything it owns is `!Send`
//! and uses `Rc`/`RefCell`; other threads reach it only through [`ThreadHandle`], whose
//! message queue is the one synchronised structure. Calls that need "the current thread"
//! find it through a thread-local that the reactor (or harness) sets before polling.

mod clock;
pub(crate) mod doorbell;
mod eventfd;
mod executor;
mod io_device;
mod poller;

pub(crate) use clock::{Clock, us_to_ticks};
pub use clock::{real_hz, real_ticks};
pub use eventfd::EventFd;
pub(crate) use executor::spawn_on as executor_spawn_on;
pub(crate) use executor::task_of;
pub use executor::{JoinHandle, sleep_us, spawn_local, yield_now};
pub use io_device::{ForEachChannel, IoChannel, IoDevice};
pub use poller::{PollStatus, Poller, PollerInfo, PollerRef};

use std::any::{Any, TypeId};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_queue::SegQueue;

use crate::error::{Error, Result};
use crate::runtime::Runtime;
pub(crate) use executor::Executor;
use poller::PollerSet;

/// A message: a closure run once on the target thread.
pub(crate) type Msg = Box<dyn FnOnce() + Send>;

tiny_fn::tiny_fn! {
    /// A local deferred call, stored inline (up to [`DEFER_INLINE`] bytes of captures).
    pub(crate) struct LocalFn = FnOnce();
}

/// Bytes of captured state a deferred call (and an I/O completion callback) can hold
/// without a heap allocation.
pub const DEFER_INLINE: usize = 32;

type Deferred = LocalFn<'static, DEFER_INLINE>;

/// Messages handled per thread per poll, as SPDK's `SPDK_MSG_BATCH_SIZE`.
const MSG_BATCH: usize = 8;

/// How long an exiting thread may keep pollers or channels before it is forced to exit,
/// as SPDK's `SPDK_THREAD_EXIT_TIMEOUT_SEC`.
const EXIT_TIMEOUT_SEC: u64 = 5;

const RUNNING: u8 = 0;
const EXITING: u8 = 1;
const EXITED: u8 = 2;

static NEXT_THREAD_ID: AtomicU64 = AtomicU64::new(1);

/// Slots that name live threads in waker data (16 bits), so a waker needs no reference
/// count. A slot is reused once its thread is gone; a stale wake is at worst spurious.
static SLOTS: Mutex<SlotTable> = Mutex::new(SlotTable {
    threads: Vec::new(),
    free: Vec::new(),
});

struct SlotTable {
    threads: Vec<Option<std::sync::Weak<ThreadShared>>>,
    free: Vec<u16>,
}

const MAX_SLOTS: usize = 1 << 16;

/// The part of a thread other threads can see.
pub(crate) struct ThreadShared {
    id: u64,
    slot: u16,
    name: String,
    msgs: SegQueue<Msg>,
    state: AtomicU8,
    /// Senders between their state check and their push (see [`ThreadShared::push`]).
    senders: AtomicUsize,
    /// The doorbell of its reactor, in interrupt mode: rung after each push.
    doorbell: Option<Arc<doorbell::Doorbell>>,
    core: u32,
    pub(crate) rt: Arc<Runtime>,
}

impl Drop for ThreadShared {
    fn drop(&mut self) {
        let mut t = SLOTS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = t.threads.get_mut(self.slot as usize) {
            *s = None;
            t.free.push(self.slot);
        }
    }
}

impl ThreadShared {
    pub(crate) fn new(
        name: String,
        core: u32,
        rt: Arc<Runtime>,
        doorbell: Option<Arc<doorbell::Doorbell>>,
    ) -> Result<Arc<Self>> {
        let mut t = SLOTS.lock().unwrap_or_else(|e| e.into_inner());
        let slot = match t.free.pop() {
            Some(s) => s,
            None if t.threads.len() < MAX_SLOTS => {
                t.threads.push(None);
                (t.threads.len() - 1) as u16
            }
            None => return Err(Error::TooManyThreads { limit: MAX_SLOTS }),
        };
        let shared = Arc::new(ThreadShared {
            id: NEXT_THREAD_ID.fetch_add(1, Ordering::Relaxed),
            slot,
            name,
            msgs: SegQueue::new(),
            state: AtomicU8::new(RUNNING),
            senders: AtomicUsize::new(0),
            doorbell,
            core,
            rt,
        });
        t.threads[slot as usize] = Some(Arc::downgrade(&shared));
        Ok(shared)
    }

    /// Queues `m` unless the thread has exited; whether it was queued. A message queued
    /// here always runs: the exit ([`Thread::finish_exit`]) marks the thread exited, waits
    /// for the senders that saw it alive to finish their push, then runs what they queued.
    /// (Both sides use sequentially consistent order on `state` and `senders`: a sender
    /// either sees `EXITED`, or the exit sees it counted.)
    pub(crate) fn push(&self, m: Msg) -> bool {
        // Refused at once when long exited (keeps the exit's wait below short).
        if self.state.load(Ordering::Acquire) == EXITED {
            return false;
        }
        self.senders.fetch_add(1, Ordering::SeqCst);
        let alive = self.state.load(Ordering::SeqCst) != EXITED;
        if alive {
            self.msgs.push(m);
            if let Some(d) = &self.doorbell {
                d.ring_if_sleeping();
            }
        }
        self.senders.fetch_sub(1, Ordering::Release);
        alive
    }

    /// Whether messages wait.
    pub(crate) fn has_msgs(&self) -> bool {
        !self.msgs.is_empty()
    }

    pub(crate) fn id_(&self) -> u64 {
        self.id
    }
}

/// Finds a live thread by its waker slot.
fn thread_by_slot(slot: u16) -> Option<Arc<ThreadShared>> {
    let t = SLOTS.lock().unwrap_or_else(|e| e.into_inner());
    t.threads.get(slot as usize)?.as_ref()?.upgrade()
}

/// A handle to a thread, usable from any OS thread: send it messages, ask it to exit.
#[derive(Clone)]
pub struct ThreadHandle(pub(crate) Arc<ThreadShared>);

impl fmt::Debug for ThreadHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Thread({}#{})", self.0.name, self.0.id)
    }
}

impl PartialEq for ThreadHandle {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}
impl Eq for ThreadHandle {}

impl ThreadHandle {
    /// The thread's unique id.
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// The thread's name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The core of the reactor the thread runs on (0 in the test harness).
    pub fn core(&self) -> u32 {
        self.0.core
    }

    /// Whether this is the thread currently running on this OS thread.
    pub fn is_current(&self) -> bool {
        with_current(|t| t.inner.shared.id == self.0.id).unwrap_or(false)
    }

    /// Whether the thread has finished exiting.
    pub fn is_exited(&self) -> bool {
        self.0.state.load(Ordering::Acquire) == EXITED
    }

    /// Queues `f` to run on the thread (always asynchronously, even when called from the
    /// thread itself, as `spdk_thread_send_msg`). Fails once the thread has exited.
    pub fn send_msg(&self, f: impl FnOnce() + Send + 'static) -> Result<()> {
        if self.0.push(Box::new(f)) {
            Ok(())
        } else {
            Err(Error::ThreadExited {
                name: self.0.name.clone(),
            })
        }
    }

    /// Runs `f` on the thread: inline when the caller is already on it, else as a message.
    pub fn run(&self, f: impl FnOnce() + Send + 'static) -> Result<()> {
        if self.is_current() {
            f();
            Ok(())
        } else {
            self.send_msg(f)
        }
    }

    /// Asks the thread to exit (`spdk_thread_exit`): it keeps running until its pollers are
    /// unregistered, its channels released and its tasks finished, then stops.
    pub fn request_exit(&self) {
        let _ =
            self.0
                .state
                .compare_exchange(RUNNING, EXITING, Ordering::AcqRel, Ordering::Acquire);
        // Wake it so that it notices even if idle.
        let _ = self.0.push(Box::new(|| {}));
    }
}

/// A thread as SPDK's introspection methods describe it ([`Thread::info`]).
#[derive(Clone, Debug)]
pub struct ThreadInfo {
    /// Its name.
    pub name: String,
    /// Its unique id.
    pub id: u64,
    /// The core of its reactor.
    pub core: u32,
    /// Busy and idle ticks.
    pub stats: ThreadStats,
    /// Ticks since it started running.
    pub elapsed: u64,
    /// Its active pollers (run every iteration).
    pub active_pollers: Vec<PollerInfo>,
    /// Its timed pollers.
    pub timed_pollers: Vec<PollerInfo>,
    /// Its paused pollers.
    pub paused_pollers: Vec<PollerInfo>,
    /// Its I/O channels: the device's name, and how many references the thread holds.
    pub io_channels: Vec<(String, usize)>,
}

/// Every live thread of the current application, each described on its own thread
/// ([`Thread::info`]); a thread that exits meanwhile is left out.
pub async fn threads_info() -> Result<Vec<ThreadInfo>> {
    let t = current_or("threads_info")?;
    let mut out = Vec::new();
    for h in t.runtime().live_threads() {
        if h.is_current() {
            out.push(t.info());
            continue;
        }
        let (tx, rx) = crate::oneshot::channel();
        let sent = h.send_msg(move || {
            if let Some(i) = with_current(|t| t.info()) {
                tx.send(i);
            }
        });
        if sent.is_ok() {
            if let Some(i) = rx.await {
                out.push(i);
            }
        }
    }
    out.sort_by_key(|i| i.id);
    Ok(out)
}

/// Busy and idle time of a thread, in ticks (SPDK's `spdk_thread_stats`).
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadStats {
    /// Ticks spent in polls that did work.
    pub busy_ticks: u64,
    /// Ticks spent in polls that found nothing to do.
    pub idle_ticks: u64,
}

/// A thread's channel of a device (weak: the channel's holders keep it), and the device's
/// name.
pub(crate) type ChannelEntry = (Weak<dyn Any>, String);

pub(crate) struct ThreadInner {
    pub(crate) shared: Arc<ThreadShared>,
    hz: u64,
    pub(crate) now: Rc<Cell<u64>>,
    pub(crate) pollers: PollerSet,
    deferred: RefCell<VecDeque<Deferred>>,
    /// Shared with the thread's bdev context, which resumes awaiting tasks.
    pub(crate) exec: Rc<Executor>,
    /// This thread's channels, by device id, with the device's name.
    pub(crate) channels: RefCell<HashMap<u64, ChannelEntry>>,
    locals: RefCell<HashMap<TypeId, Rc<dyn Any>>>,
    exit_started: Cell<Option<u64>>,
    stats: Cell<ThreadStats>,
    last_busy: Cell<bool>,
    /// When the thread started running (ticks).
    born: u64,
}

/// A lightweight thread, as seen from the OS thread that runs it. Not `Send`.
#[derive(Clone)]
pub struct Thread {
    pub(crate) inner: Rc<ThreadInner>,
}

impl fmt::Debug for Thread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Thread({}#{})",
            self.inner.shared.name, self.inner.shared.id
        )
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Thread>> = const { RefCell::new(None) };
}

/// The thread running on this OS thread, if any.
pub fn current() -> Option<Thread> {
    CURRENT.with(|c| c.borrow().clone())
}

/// The current thread, or [`Error::NoThread`] naming `op`.
pub fn current_or(op: &'static str) -> Result<Thread> {
    current().ok_or(Error::NoThread { op })
}

/// Runs `f` with the current thread, without cloning it.
pub(crate) fn with_current<R>(f: impl FnOnce(&Thread) -> R) -> Option<R> {
    CURRENT.with(|c| c.borrow().as_ref().map(f))
}

/// Makes `t` current; returns what was current before.
pub(crate) fn set_current(t: Option<Thread>) -> Option<Thread> {
    CURRENT.with(|c| std::mem::replace(&mut *c.borrow_mut(), t))
}

/// The current thread's cached clock, in ticks (refreshed at the start of every poll).
/// Zero off a thread.
#[inline]
pub fn now() -> u64 {
    with_current(|t| t.inner.now.get()).unwrap_or(0)
}

/// Ticks per second of the current thread's clock (the real TSC rate off a thread).
pub fn ticks_hz() -> u64 {
    with_current(|t| t.inner.hz).unwrap_or_else(real_hz)
}

/// Runs `f` on the current thread after the current callback returns, in this or the next
/// poll, with no allocation while its captures fit in [`DEFER_INLINE`] bytes. This is how
/// completions that happen during a submission are deferred (SPDK sends itself a message).
pub fn defer(f: impl FnOnce() + 'static) -> Result<()> {
    with_current(|t| t.defer(f)).ok_or(Error::NoThread { op: "defer" })
}

/// Creates a lightweight thread on the current runtime, as `spdk_thread_create`: it goes to
/// a reactor whose core is in `cores` (any core when `None`), round-robin, and runs `init`
/// first.
pub fn spawn_thread(
    name: impl Into<String>,
    cores: Option<&crate::app::CpuMask>,
    init: impl FnOnce() + Send + 'static,
) -> Result<ThreadHandle> {
    let rt = with_current(|t| t.inner.shared.rt.clone())
        .ok_or(Error::NoThread { op: "spawn_thread" })?;
    rt.spawn_thread(name.into(), cores, Box::new(init))
}

impl Thread {
    pub(crate) fn new(shared: Arc<ThreadShared>) -> Thread {
        let clock = shared.rt.clock.clone();
        let hz = clock.hz();
        let now = clock.now();
        Thread {
            inner: Rc::new(ThreadInner {
                shared,
                hz,
                now: Rc::new(Cell::new(now)),
                pollers: PollerSet::default(),
                deferred: RefCell::new(VecDeque::with_capacity(64)),
                exec: Rc::default(),
                channels: RefCell::new(HashMap::new()),
                locals: RefCell::new(HashMap::new()),
                exit_started: Cell::new(None),
                stats: Cell::new(ThreadStats::default()),
                last_busy: Cell::new(false),
                born: now,
            }),
        }
    }

    /// A handle other threads can use.
    pub fn handle(&self) -> ThreadHandle {
        ThreadHandle(self.inner.shared.clone())
    }

    /// The thread's name.
    pub fn name(&self) -> &str {
        &self.inner.shared.name
    }

    /// The thread's unique id.
    pub fn id(&self) -> u64 {
        self.inner.shared.id
    }

    /// Cached clock of this thread, in ticks.
    #[inline]
    pub fn now(&self) -> u64 {
        self.inner.now.get()
    }

    /// Ticks per second of this thread's clock.
    pub fn ticks_hz(&self) -> u64 {
        self.inner.hz
    }

    /// Busy and idle time so far.
    pub fn stats(&self) -> ThreadStats {
        self.inner.stats.get()
    }

    /// What SPDK's `thread_get_stats`, `thread_get_pollers` and `framework_get_reactors`
    /// say of this thread.
    pub fn info(&self) -> ThreadInfo {
        let [active, timed, paused] = self.inner.pollers.describe();
        ThreadInfo {
            name: self.name().to_string(),
            id: self.id(),
            core: self.inner.shared.core,
            stats: self.stats(),
            elapsed: self.now().saturating_sub(self.inner.born),
            active_pollers: active,
            timed_pollers: timed,
            paused_pollers: paused,
            io_channels: {
                let mut l: Vec<(String, usize)> = self
                    .inner
                    .channels
                    .borrow()
                    .values()
                    .filter(|(w, _)| w.strong_count() > 0)
                    .map(|(w, n)| (n.clone(), w.strong_count()))
                    .collect();
                l.sort();
                l
            },
        }
    }

    pub(crate) fn runtime(&self) -> &Arc<Runtime> {
        &self.inner.shared.rt
    }

    /// The cell holding the cached clock, for per-I/O timestamps without a lookup.
    pub(crate) fn now_cell(&self) -> Rc<Cell<u64>> {
        self.inner.now.clone()
    }

    pub(crate) fn downgrade(&self) -> Weak<ThreadInner> {
        Rc::downgrade(&self.inner)
    }

    /// Queues a local call for this thread's next deferred-call pass.
    pub fn defer(&self, f: impl FnOnce() + 'static) {
        self.inner.deferred.borrow_mut().push_back(Deferred::new(f));
    }

    /// Per-thread state of type `T`, created by `init` on first use. Dropped when the
    /// thread exits, after its channels are released.
    pub fn local_or_init<T: 'static>(&self, init: impl FnOnce() -> T) -> Rc<T> {
        let key = TypeId::of::<T>();
        if let Some(v) = self.inner.locals.borrow().get(&key) {
            if let Ok(v) = v.clone().downcast::<T>() {
                return v;
            }
        }
        let v = Rc::new(init());
        self.inner.locals.borrow_mut().insert(key, v.clone());
        v
    }

    /// Per-thread state of type `T`, if it exists.
    pub fn get_local<T: 'static>(&self) -> Option<Rc<T>> {
        let v = self.inner.locals.borrow().get(&TypeId::of::<T>())?.clone();
        v.downcast::<T>().ok()
    }

    /// Per-thread state of type `T`, default-initialised on first use.
    pub fn local<T: Default + 'static>(&self) -> Rc<T> {
        self.local_or_init(T::default)
    }

    /// Whether [`Thread::local`] for `T` exists yet.
    pub fn has_local<T: 'static>(&self) -> bool {
        self.inner.locals.borrow().contains_key(&TypeId::of::<T>())
    }

    /// One iteration of the thread (`spdk_thread_poll`): deferred calls, up to a batch of
    /// messages, active pollers, due timed pollers, ready async tasks. `now` is the caller's
    /// clock reading, shared by all threads of a reactor iteration. Returns whether any work
    /// was done.
    #[inline]
    pub(crate) fn poll(&self, now: u64) -> bool {
        let inner = &*self.inner;
        // The previous iteration lasted until now: account it as busy or idle (reading the
        // clock again at the end of an iteration would double its cost).
        let prev = inner.now.replace(now);
        let mut s = inner.stats.get();
        if inner.last_busy.get() {
            s.busy_ticks += now.saturating_sub(prev);
        } else {
            s.idle_ticks += now.saturating_sub(prev);
        }
        inner.stats.set(s);
        let mut busy = self.run_deferred();
        if !inner.shared.msgs.is_empty() && self.run_msgs() {
            busy = true;
            // Messages (a job starting, a config method) can take long: refresh the cached
            // clock so that what pollers and I/O see next is not stale.
            inner.now.set(inner.shared.rt.clock.now().max(now));
        }
        busy |= inner.pollers.run_active(inner);
        if now >= inner.pollers.next_timed() {
            busy |= inner.pollers.run_timed(inner, now);
        }
        if inner.exec.has_ready() {
            busy |= inner.exec.run(self);
        }
        if inner.pollers.is_dirty() {
            inner.pollers.compact();
        }
        inner.last_busy.set(busy);
        busy
    }

    /// `Err(ThreadExited)` once the thread is marked exited: what its exit runs (the
    /// messages left in its queue) can't start tasks or pollers it would then drop.
    pub(crate) fn refuse_if_exited(&self) -> Result<()> {
        if self.state() == EXITED {
            return Err(Error::ThreadExited {
                name: self.inner.shared.name.clone(),
            });
        }
        Ok(())
    }

    /// Whether messages wait for this thread.
    pub(crate) fn has_msgs(&self) -> bool {
        self.inner.shared.has_msgs()
    }

    /// Whether the thread runs on a reactor in interrupt mode.
    pub(crate) fn in_interrupt_mode(&self) -> bool {
        self.inner.shared.doorbell.is_some()
    }

    /// In interrupt mode, whether the thread can wait for an event: nothing queued to run,
    /// not exiting, and every active poller has an fd to wait on (added to `fds`). Also
    /// lowers `deadline` to its next timed poller's tick.
    pub(crate) fn can_sleep(&self, fds: &mut Vec<std::os::fd::RawFd>, deadline: &mut u64) -> bool {
        let inner = &*self.inner;
        if self.state() != RUNNING
            || !inner.deferred.borrow().is_empty()
            || inner.exec.has_ready()
            || inner.pollers.is_dirty()
            || !inner.pollers.sleep_fds(fds, deadline)
        {
            return false;
        }
        *deadline = (*deadline).min(inner.pollers.next_timed());
        true
    }

    #[inline]
    fn run_deferred(&self) -> bool {
        let n = self.inner.deferred.borrow().len();
        if n == 0 {
            return false;
        }
        for _ in 0..n {
            let f = self.inner.deferred.borrow_mut().pop_front();
            match f {
                Some(f) => f.call(),
                None => break,
            }
        }
        n > 0
    }

    fn run_msgs(&self) -> bool {
        let mut n = 0;
        while n < MSG_BATCH {
            match self.inner.shared.msgs.pop() {
                Some(m) => {
                    m();
                    n += 1;
                }
                None => break,
            }
        }
        n > 0
    }

    pub(crate) fn state(&self) -> u8 {
        self.inner.shared.state.load(Ordering::Acquire)
    }

    /// Whether the thread is exiting and has released everything: then it can be dropped.
    /// Forces the exit (with a warning) after [`EXIT_TIMEOUT_SEC`].
    pub(crate) fn try_finish_exit(&self) -> bool {
        let inner = &*self.inner;
        if self.state() != EXITING {
            return self.state() == EXITED;
        }
        let now = inner.now.get();
        let started = match inner.exit_started.get() {
            Some(t) => t,
            None => {
                inner.exit_started.set(Some(now));
                now
            }
        };
        let pollers = inner.pollers.registered();
        let channels = inner
            .channels
            .borrow()
            .values()
            .filter(|(w, _)| w.strong_count() > 0)
            .count();
        let tasks = inner.exec.len();
        let pending = !inner.shared.msgs.is_empty() || !inner.deferred.borrow().is_empty();
        let done = pollers == 0 && channels == 0 && tasks == 0 && !pending;
        if !done {
            if now.saturating_sub(started) < EXIT_TIMEOUT_SEC * inner.hz {
                return false;
            }
            tracing::warn!(
                thread = %inner.shared.name,
                pollers, channels, tasks, "thread exit timed out; forcing it"
            );
        }
        self.finish_exit(true);
        true
    }

    /// Marks the thread exited and drops everything it still owns. With `run_leftovers`
    /// (always but when a test harness unwinds), messages that other threads queued before
    /// the thread was marked exited run first, as their senders were told they would: a
    /// `for_each_channel` step, say, moves on to the next thread instead of vanishing.
    pub(crate) fn finish_exit(&self, run_leftovers: bool) {
        let inner = &*self.inner;
        inner.shared.state.store(EXITED, Ordering::SeqCst);
        // Senders that saw the thread alive are pushing now (a few instructions).
        let mut spins = 0u32;
        while inner.shared.senders.load(Ordering::SeqCst) != 0 {
            // A sender preempted inside its push: let it run.
            spins += 1;
            if spins < 256 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        if run_leftovers {
            // What they run may queue more (deferred calls); a few rounds, then the rest is
            // dropped below. New messages are refused now.
            for _ in 0..4 {
                let mut ran = false;
                while let Some(m) = inner.shared.msgs.pop() {
                    m();
                    ran = true;
                }
                ran |= self.run_deferred();
                if !ran {
                    break;
                }
            }
        }
        inner.exec.clear();
        // Dropped outside the borrow: what they hold (an I/O's context) may complete and
        // defer again as it drops. A few rounds; whatever is left then is dropped as is.
        for _ in 0..4 {
            let calls = std::mem::take(&mut *inner.deferred.borrow_mut());
            if calls.is_empty() {
                break;
            }
            drop(calls);
        }
        let locals: Vec<_> = inner.locals.borrow_mut().drain().collect();
        drop(locals);
        inner.pollers.clear();
        while inner.shared.msgs.pop().is_some() {}
        inner.shared.rt.thread_exited(&inner.shared);
    }
}

/// The id of the thread a [`std::task::Waker`] belongs to, packed with the task key.
pub(crate) fn current_slot() -> Option<u16> {
    with_current(|t| t.inner.shared.slot)
}

pub(crate) fn slot_of(t: &Thread) -> u16 {
    t.inner.shared.slot
}

/// Delivers `f` to the thread in `slot` (used by wakers fired from another thread).
pub(crate) fn send_to_slot(slot: u16, f: impl FnOnce() + Send + 'static) {
    if let Some(t) = thread_by_slot(slot) {
        if t.state.load(Ordering::Acquire) != EXITED {
            let _ = t.push(Box::new(f));
        }
    }
}

#[cfg(test)]
mod tests;
