//! The per-thread futures executor: control-plane code (and the async I/O API) can be
//! `async` without leaving the thread. Futures need not be `Send`.
//!
//! A waker is a plain integer (thread slot, task generation, task index) with no reference
//! count, so cloning and waking it costs a few instructions: waking from the owning thread
//! pushes the task on the local ready queue; waking from another OS thread sends the
//! owning thread a message. A wake for a task that has since finished is ignored.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};

use slab::Slab;

use super::{Thread, current_or, current_slot, send_to_slot, slot_of, with_current};
use crate::error::Result;

type BoxFuture = Pin<Box<dyn Future<Output = ()>>>;

/// A task, held in the table itself: the future's box, its generation and whether it is
/// queued. A resumption finds all it needs in the entry (no reference count to chase).
struct Task {
    gen_: u16,
    scheduled: bool,
    /// Out of the table while the task is being polled (so that its code may spawn, which
    /// grows the table), and put back after.
    fut: Option<BoxFuture>,
}

/// Tasks polled per thread iteration at most, so that pollers keep running.
const TASK_BATCH: usize = 256;

#[derive(Default)]
pub(crate) struct Executor {
    tasks: RefCell<Slab<Task>>,
    ready: RefCell<VecDeque<(u32, u16)>>,
    next_gen: Cell<u16>,
    /// Tasks being polled right now (nesting happens when a task's code completes I/O).
    running: Cell<u32>,
}

impl Executor {
    pub(crate) fn len(&self) -> usize {
        self.tasks.borrow().len()
    }

    pub(crate) fn clear(&self) {
        let tasks = std::mem::take(&mut *self.tasks.borrow_mut());
        drop(tasks);
        self.ready.borrow_mut().clear();
    }

    fn spawn(&self, slot: u16, fut: BoxFuture) {
        let g = self.next_gen.get().wrapping_add(1);
        self.next_gen.set(g);
        let idx = self.tasks.borrow_mut().insert(Task {
            gen_: g,
            fut: Some(fut),
            scheduled: true,
        });
        self.ready.borrow_mut().push_back((idx as u32, g));
        let _ = slot;
    }

    /// Marks a task ready (local wake).
    fn wake(&self, idx: u32, g: u16) {
        let mut tasks = self.tasks.borrow_mut();
        if let Some(t) = tasks.get_mut(idx as usize) {
            if t.gen_ == g && !std::mem::replace(&mut t.scheduled, true) {
                self.ready.borrow_mut().push_back((idx, g));
            }
        }
    }

    /// Whether a task is ready to run.
    #[inline]
    pub(crate) fn has_ready(&self) -> bool {
        !self.ready.borrow().is_empty()
    }

    /// Polls the ready tasks (those ready when the pass starts, at most [`TASK_BATCH`]).
    pub(crate) fn run(&self, thread: &Thread) -> bool {
        let n = self.ready.borrow().len().min(TASK_BATCH);
        if n == 0 {
            return false;
        }
        let slot = slot_of(thread);
        for _ in 0..n {
            let Some((idx, g)) = self.ready.borrow_mut().pop_front() else {
                break;
            };
            self.poll_task(slot, idx, g);
        }
        true
    }

    /// Polls task `idx` now, unless it is already running (then it is queued).
    #[inline]
    fn poll_task(&self, slot: u16, idx: u32, g: u16) {
        let mut fut = {
            let mut tasks = self.tasks.borrow_mut();
            let Some(t) = tasks.get_mut(idx as usize).filter(|t| t.gen_ == g) else {
                return;
            };
            t.scheduled = false;
            match t.fut.take() {
                Some(f) => f,
                None => {
                    // Polling itself (a wake from inside its own poll): run it again later.
                    drop(tasks);
                    return self.wake(idx, g);
                }
            }
        };
        // Its drop would be a call through the vtable to a function that does nothing.
        let waker = std::mem::ManuallyDrop::new(make_waker(slot, g, idx));
        let mut cx = Context::from_waker(&waker);
        self.running.set(self.running.get() + 1);
        // A panic in the poll unwinds through the thread, which is then done with: no
        // guard restores the entry (one cost ~3 % async IOPS, its landing pad inlined
        // into every completion); nothing in the workspace catches a panic to go on.
        let r = fut.as_mut().poll(&mut cx);
        self.running.set(self.running.get() - 1);
        let mut tasks = self.tasks.borrow_mut();
        match tasks.get_mut(idx as usize).filter(|t| t.gen_ == g) {
            Some(t) if r.is_pending() => t.fut = Some(fut),
            Some(_) => {
                tasks.remove(idx as usize);
                drop(tasks);
                drop(fut);
            }
            // The table was cleared while it ran (the thread exits).
            None => {
                drop(tasks);
                drop(fut);
            }
        }
    }

    /// Continues a task whose awaited I/O just completed: polls it right away, as a
    /// completion callback would run, unless some task is running on this thread now (then
    /// it is queued like any wake).
    #[inline]
    pub(crate) fn resume_packed(&self, task: usize) {
        let (slot, g, idx) = unpack(task as *const ());
        self.resume(slot, idx, g);
    }

    #[inline]
    fn resume(&self, slot: u16, idx: u32, g: u16) {
        if self.running.get() > 0 {
            self.wake(idx, g);
        } else {
            self.poll_task(slot, idx, g);
        }
    }
}

/// The packed task reference of `w` if it is a waker of this executor.
#[inline]
pub(crate) fn task_of(w: &Waker) -> Option<usize> {
    std::ptr::eq(w.vtable(), &VTABLE).then(|| w.data() as usize)
}

// Waker data: slot (16 bits) | generation (16 bits) | task index (32 bits).
fn pack(slot: u16, g: u16, idx: u32) -> usize {
    ((slot as u64) << 48 | (g as u64) << 32 | idx as u64) as usize
}

fn unpack(data: *const ()) -> (u16, u16, u32) {
    let v = data as usize as u64;
    ((v >> 48) as u16, (v >> 32) as u16, v as u32)
}

static VTABLE: RawWakerVTable = RawWakerVTable::new(w_clone, w_wake, w_wake, w_drop);

fn w_clone(data: *const ()) -> RawWaker {
    RawWaker::new(data, &VTABLE)
}

fn w_wake(data: *const ()) {
    let (slot, g, idx) = unpack(data);
    if current_slot() == Some(slot) {
        with_current(|t| t.inner.exec.wake(idx, g));
    } else {
        send_to_slot(slot, move || {
            with_current(|t| t.inner.exec.wake(idx, g));
        });
    }
}

fn w_drop(_: *const ()) {}

fn make_waker(slot: u16, g: u16, idx: u32) -> Waker {
    // Pointers are 64-bit on every target this crate builds for (see lib.rs).
    let raw = RawWaker::new(pack(slot, g, idx) as *const (), &VTABLE);
    // SAFETY: the vtable functions treat the data pointer as a plain integer: they never
    // dereference it, own nothing, and are safe to call from any thread (a wake from
    // another thread goes through the thread's message queue), which is the RawWaker
    // contract.
    unsafe { Waker::from_raw(raw) }
}

struct JoinState<T> {
    result: Option<T>,
    waker: Option<Waker>,
}

/// Awaits the result of a task started with [`spawn_local`]. Dropping it detaches the
/// task, which keeps running.
pub struct JoinHandle<T> {
    state: Rc<RefCell<JoinState<T>>>,
}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JoinHandle")
    }
}

impl<T> JoinHandle<T> {
    /// Takes the result if the task has finished.
    pub fn try_take(&self) -> Option<T> {
        self.state.borrow_mut().result.take()
    }

    /// Whether the task has finished (and its result not yet taken).
    pub fn is_finished(&self) -> bool {
        self.state.borrow().result.is_some()
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut s = self.state.borrow_mut();
        match s.result.take() {
            Some(v) => Poll::Ready(v),
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Runs `fut` on the current thread's executor. It is first polled in the thread's next
/// iteration.
pub fn spawn_local<T: 'static>(fut: impl Future<Output = T> + 'static) -> Result<JoinHandle<T>> {
    let t = current_or("spawn_local")?;
    // A message run by the exit itself: the task would be dropped unpolled.
    t.refuse_if_exited()?;
    Ok(spawn_on(&t, fut))
}

pub(crate) fn spawn_on<T: 'static>(
    t: &Thread,
    fut: impl Future<Output = T> + 'static,
) -> JoinHandle<T> {
    let state = Rc::new(RefCell::new(JoinState {
        result: None,
        waker: None,
    }));
    let st = state.clone();
    let wrapped = async move {
        let v = fut.await;
        let w = {
            let mut s = st.borrow_mut();
            s.result = Some(v);
            s.waker.take()
        };
        if let Some(w) = w {
            w.wake();
        }
    };
    t.inner.exec.spawn(slot_of(t), Box::pin(wrapped));
    JoinHandle { state }
}

/// Yields once to the thread's other work (a future ready on its second poll).
pub fn yield_now() -> impl Future<Output = ()> {
    struct Yield(bool);
    impl Future for Yield {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0 {
                Poll::Ready(())
            } else {
                self.0 = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }
    Yield(false)
}

/// Waits `us` microseconds of the thread's clock (a one-shot timed poller).
pub async fn sleep_us(us: u64) -> Result<()> {
    use std::cell::Cell;
    struct Sleep {
        fired: Rc<Cell<bool>>,
        waker: Rc<RefCell<Option<Waker>>>,
        _poller: super::Poller,
    }
    impl Future for Sleep {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.fired.get() {
                return Poll::Ready(());
            }
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }
    }
    let fired = Rc::new(Cell::new(false));
    let waker: Rc<RefCell<Option<Waker>>> = Rc::new(RefCell::new(None));
    let (f, w) = (fired.clone(), waker.clone());
    let poller = super::Poller::register_us("sleep", us.max(1), move || {
        if !f.replace(true) {
            if let Some(w) = w.borrow_mut().take() {
                w.wake();
            }
        }
        super::PollStatus::Busy
    })?;
    Sleep {
        fired,
        waker,
        _poller: poller,
    }
    .await;
    Ok(())
}
