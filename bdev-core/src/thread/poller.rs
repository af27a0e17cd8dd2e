//! Pollers: functions a thread calls every iteration (active) or every period (timed),
//! as SPDK's `spdk_poller`. A poller says whether it did work ([`PollStatus`]).
//!
//! [`Poller`] is the owning handle: dropping it unregisters the poller, as does
//! [`Poller::unregister`]. A poller can unregister or pause itself from inside its own
//! function through a [`PollerRef`] it captured: the thread only marks it and removes it
//! (dropping its closure) after the iteration, never while it runs.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::fmt;
use std::rc::{Rc, Weak};

use super::{ThreadInner, current_or, us_to_ticks};
use crate::error::Result;

/// What a poller reports: whether this call found work to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollStatus {
    /// Work was done (counts towards the thread's busy time).
    Busy,
    /// Nothing to do.
    Idle,
}

impl From<bool> for PollStatus {
    fn from(busy: bool) -> Self {
        if busy {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Active,
    Paused,
    Unregistered,
}

type PollFn = Box<dyn FnMut() -> PollStatus>;

pub(crate) struct PollerCore {
    name: Cow<'static, str>,
    /// Unique on its thread (`thread_get_pollers`).
    id: u64,
    period: Cell<u64>,
    next_run: Cell<u64>,
    state: Cell<State>,
    f: RefCell<Option<PollFn>>,
    thread: Weak<ThreadInner>,
    runs: Cell<u64>,
    busy: Cell<u64>,
    /// In interrupt mode, the fd whose readiness means this active poller has work.
    fd: Cell<Option<std::os::fd::RawFd>>,
    /// In interrupt mode, for an active poller with no fd: the time (ticks) before which
    /// it has nothing to do, so a reactor may sleep until then.
    wake_at: Cell<Option<u64>>,
}

impl PollerCore {
    #[inline]
    fn run(&self) -> bool {
        let busy = {
            let mut f = self.f.borrow_mut();
            match f.as_mut() {
                Some(f) => f() == PollStatus::Busy,
                None => return false,
            }
        };
        self.runs.set(self.runs.get() + 1);
        if busy {
            self.busy.set(self.busy.get() + 1);
        }
        busy
    }

    fn unregister(&self) {
        if self.state.get() == State::Unregistered {
            return;
        }
        self.state.set(State::Unregistered);
        if let Some(t) = self.thread.upgrade() {
            t.pollers.dirty.set(true);
            t.pollers.count.set(t.pollers.count.get() - 1);
        }
    }

    fn pause(&self) {
        if self.state.get() == State::Active {
            self.state.set(State::Paused);
        }
    }

    fn resume(&self) {
        if self.state.get() != State::Paused {
            return;
        }
        self.state.set(State::Active);
        if let Some(t) = self.thread.upgrade() {
            let period = self.period.get();
            if period > 0 {
                let next = t.now.get().saturating_add(period);
                self.next_run.set(next);
                t.pollers
                    .next_timed
                    .set(t.pollers.next_timed.get().min(next));
            }
        }
    }
}

/// A poller as SPDK's `thread_get_pollers` describes it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PollerInfo {
    /// Its name.
    pub name: String,
    /// Unique on its thread.
    pub id: u64,
    /// SPDK's state name: "waiting" (registered, not running now) or "paused".
    pub state: &'static str,
    /// Times it ran.
    pub run_count: u64,
    /// Runs that did work.
    pub busy_count: u64,
    /// Its period, for a timed poller.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period_ticks: Option<u64>,
}

/// The pollers of one thread.
pub(crate) struct PollerSet {
    next_id: Cell<u64>,
    active: RefCell<Vec<Rc<PollerCore>>>,
    timed: RefCell<Vec<Rc<PollerCore>>>,
    next_timed: Cell<u64>,
    dirty: Cell<bool>,
    count: Cell<usize>,
}

impl Default for PollerSet {
    fn default() -> Self {
        PollerSet {
            next_id: Cell::new(0),
            active: RefCell::new(Vec::new()),
            timed: RefCell::new(Vec::new()),
            next_timed: Cell::new(u64::MAX),
            dirty: Cell::new(false),
            count: Cell::new(0),
        }
    }
}

impl PollerSet {
    /// Tick of the next timed poller run (u64::MAX if none).
    #[inline]
    pub(crate) fn next_timed(&self) -> u64 {
        self.next_timed.get()
    }

    /// Whether unregistered pollers wait to be removed.
    #[inline]
    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty.get()
    }

    /// Pollers registered and not unregistered (paused ones included).
    pub(crate) fn registered(&self) -> usize {
        self.count.get()
    }

    /// The live pollers as `thread_get_pollers` lists them: active, timed, paused.
    pub(crate) fn describe(&self) -> [Vec<PollerInfo>; 3] {
        let mut out: [Vec<PollerInfo>; 3] = Default::default();
        for list in [&self.active, &self.timed] {
            for p in list.borrow().iter() {
                let (i, state) = match p.state.get() {
                    State::Unregistered => continue,
                    State::Paused => (2, "paused"),
                    State::Active if p.period.get() > 0 => (1, "waiting"),
                    State::Active => (0, "waiting"),
                };
                out[i].push(PollerInfo {
                    name: p.name.to_string(),
                    id: p.id,
                    state,
                    run_count: p.runs.get(),
                    busy_count: p.busy.get(),
                    period_ticks: Some(p.period.get()).filter(|&t| t > 0),
                });
            }
        }
        out
    }

    #[inline]
    pub(crate) fn run_active(&self, _t: &ThreadInner) -> bool {
        let n = self.active.borrow().len();
        let mut busy = false;
        for i in 0..n {
            let p = match self.active.borrow().get(i) {
                Some(p) => p.clone(),
                None => break,
            };
            if p.state.get() == State::Active {
                busy |= p.run();
            }
        }
        busy
    }

    pub(crate) fn run_timed(&self, _t: &ThreadInner, now: u64) -> bool {
        if now < self.next_timed.get() {
            return false;
        }
        let n = self.timed.borrow().len();
        let mut busy = false;
        for i in 0..n {
            let p = match self.timed.borrow().get(i) {
                Some(p) => p.clone(),
                None => break,
            };
            if p.state.get() == State::Active && p.next_run.get() <= now {
                p.next_run.set(now.saturating_add(p.period.get()));
                busy |= p.run();
            }
        }
        let next = self
            .timed
            .borrow()
            .iter()
            .filter(|p| p.state.get() == State::Active)
            .map(|p| p.next_run.get())
            .min()
            .unwrap_or(u64::MAX);
        self.next_timed.set(next);
        busy
    }

    /// Removes unregistered pollers and drops their closures (outside any borrow, since a
    /// closure's destructor may touch pollers again).
    pub(crate) fn compact(&self) {
        if !self.dirty.replace(false) {
            return;
        }
        let mut gone = Vec::new();
        for list in [&self.active, &self.timed] {
            list.borrow_mut().retain(|p| {
                if p.state.get() == State::Unregistered {
                    gone.push(p.clone());
                    false
                } else {
                    true
                }
            });
        }
        for p in gone {
            let f = p.f.borrow_mut().take();
            drop(f);
        }
    }

    /// For a reactor about to sleep (interrupt mode): adds the fds of the active pollers
    /// to `fds` and lowers `deadline` to the wake-up times of those that gave one; false
    /// if an active poller has neither (it must be polled: no sleep).
    pub(crate) fn sleep_fds(&self, fds: &mut Vec<std::os::fd::RawFd>, deadline: &mut u64) -> bool {
        for p in self.active.borrow().iter() {
            if p.state.get() != State::Active {
                continue;
            }
            match (p.fd.get(), p.wake_at.get()) {
                (Some(fd), _) => fds.push(fd),
                (None, Some(t)) => *deadline = (*deadline).min(t),
                (None, None) => return false,
            }
        }
        true
    }

    /// Unregisters and drops every poller (thread exit).
    pub(crate) fn clear(&self) {
        let all: Vec<_> = self
            .active
            .borrow_mut()
            .drain(..)
            .chain(self.timed.borrow_mut().drain(..))
            .collect();
        for p in &all {
            p.state.set(State::Unregistered);
        }
        self.count.set(0);
        for p in all {
            let f = p.f.borrow_mut().take();
            drop(f);
        }
    }
}

/// A registered poller. Dropping it unregisters the poller.
pub struct Poller {
    core: Rc<PollerCore>,
}

impl fmt::Debug for Poller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Poller({})", self.core.name)
    }
}

impl Poller {
    /// Registers an active poller (called every iteration) on the current thread.
    pub fn register(
        name: impl Into<Cow<'static, str>>,
        f: impl FnMut() -> PollStatus + 'static,
    ) -> Result<Poller> {
        Self::register_us(name, 0, f)
    }

    /// Registers a poller on the current thread, called every `period_us` microseconds
    /// (every iteration when 0), as `spdk_poller_register`.
    pub fn register_us(
        name: impl Into<Cow<'static, str>>,
        period_us: u64,
        f: impl FnMut() -> PollStatus + 'static,
    ) -> Result<Poller> {
        let t = current_or("poller_register")?;
        // A message run by the exit itself: the poller would be dropped at once.
        t.refuse_if_exited()?;
        let inner = &t.inner;
        let period = if period_us == 0 {
            0
        } else {
            us_to_ticks(period_us, inner.hz).max(1)
        };
        let id = inner.pollers.next_id.get() + 1;
        inner.pollers.next_id.set(id);
        let core = Rc::new(PollerCore {
            name: name.into(),
            id,
            period: Cell::new(period),
            next_run: Cell::new(inner.now.get().saturating_add(period)),
            state: Cell::new(State::Active),
            f: RefCell::new(Some(Box::new(f))),
            thread: Rc::downgrade(inner),
            runs: Cell::new(0),
            busy: Cell::new(0),
            fd: Cell::new(None),
            wake_at: Cell::new(None),
        });
        let set = &inner.pollers;
        set.count.set(set.count.get() + 1);
        if period == 0 {
            set.active.borrow_mut().push(core.clone());
        } else {
            set.next_timed
                .set(set.next_timed.get().min(core.next_run.get()));
            set.timed.borrow_mut().push(core.clone());
        }
        Ok(Poller { core })
    }

    /// Names the fd that becomes readable when this active poller has work (SPDK's
    /// `spdk_poller_register_interrupt`). In interrupt mode a reactor sleeps only while
    /// each of its active pollers has one; it wakes when one of them is readable, a
    /// message comes, or a timed poller is due. The fd must stay open while registered.
    pub fn set_interrupt_fd(&self, fd: std::os::fd::RawFd) {
        self.core.fd.set(Some(fd));
    }

    /// The poller's name.
    pub fn name(&self) -> &str {
        &self.core.name
    }

    /// Stops calling the poller until [`Poller::resume`].
    pub fn pause(&self) {
        self.core.pause();
    }

    /// Calls the poller again; a timed poller's next run is one period from now.
    pub fn resume(&self) {
        self.core.resume();
    }

    /// Whether the poller is paused.
    pub fn is_paused(&self) -> bool {
        self.core.state.get() == State::Paused
    }

    /// Unregisters the poller (same as dropping the handle).
    pub fn unregister(self) {}

    /// A weak reference the poller's own closure can hold to pause or unregister itself.
    pub fn downgrade(&self) -> PollerRef {
        PollerRef {
            core: Rc::downgrade(&self.core),
        }
    }

    /// How many times the poller ran, and how many of those runs were busy.
    pub fn run_counts(&self) -> (u64, u64) {
        (self.core.runs.get(), self.core.busy.get())
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.core.unregister();
    }
}

/// A weak, clonable reference to a poller: pause, resume or unregister it from anywhere on
/// its thread, including its own closure. Does nothing once the poller is gone.
#[derive(Clone)]
pub struct PollerRef {
    core: Weak<PollerCore>,
}

impl fmt::Debug for PollerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PollerRef")
    }
}

impl PollerRef {
    /// Names the fd whose readiness means the poller has work, or none: it must be polled
    /// ([`Poller::set_interrupt_fd`]). For a poller whose fd comes and goes (a connection
    /// that is replaced, bytes waiting to be sent): it may call this on every run.
    pub fn set_interrupt_fd(&self, fd: Option<std::os::fd::RawFd>) {
        if let Some(c) = self.core.upgrade() {
            c.fd.set(fd);
        }
    }

    /// For an active poller with no fd whose next work is due at a known time (an I/O
    /// held for a latency): `Some(ticks)` lets an interrupt-mode reactor sleep until then
    /// (or until something else wakes it); `None`, the poller must be polled. It may call
    /// this on every run.
    pub fn set_wake_at(&self, ticks: Option<u64>) {
        if let Some(c) = self.core.upgrade() {
            c.wake_at.set(ticks);
        }
    }

    /// Unregisters the poller.
    pub fn unregister(&self) {
        if let Some(c) = self.core.upgrade() {
            c.unregister();
        }
    }

    /// Pauses the poller.
    pub fn pause(&self) {
        if let Some(c) = self.core.upgrade() {
            c.pause();
        }
    }

    /// Resumes the poller.
    pub fn resume(&self) {
        if let Some(c) = self.core.upgrade() {
            c.resume();
        }
    }

    /// Whether the poller is still registered.
    pub fn is_registered(&self) -> bool {
        self.core
            .upgrade()
            .is_some_and(|c| c.state.get() != State::Unregistered)
    }
}
