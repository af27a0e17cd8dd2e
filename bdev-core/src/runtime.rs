//! What the threads of one application share: the clock, where new threads go (reactors,
//! or the test harness), the list of live threads, the stop state, and the bdev layer's
//! globals. Several runtimes can live in one process (tests run in parallel), so nothing
//! here is a process global.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crossbeam_queue::SegQueue;

use crate::app::CpuMask;
use crate::error::{Error, Result};
use crate::thread::doorbell::Doorbell;
use crate::thread::{Clock, Msg, ThreadHandle, ThreadShared};

/// One reactor's inbox of threads to adopt.
pub(crate) struct ReactorShared {
    pub(crate) core: u32,
    pub(crate) incoming: SegQueue<Arc<ThreadShared>>,
    /// Threads given to this reactor and not yet dropped by it (counted before they are
    /// queued in `incoming`): a stopping reactor returns only once this is 0, so that a
    /// thread spawned as the application stops is never left unadopted.
    pub(crate) assigned: AtomicUsize,
    /// Interrupt mode: what wakes the reactor when it sleeps.
    pub(crate) doorbell: Option<Arc<Doorbell>>,
    /// Ticks of iterations that did work, and of those that found none (written by the
    /// reactor alone; read by `framework_get_reactors`).
    pub(crate) busy_ticks: std::sync::atomic::AtomicU64,
    pub(crate) idle_ticks: std::sync::atomic::AtomicU64,
    /// The reactor's OS thread id (0 until it runs).
    pub(crate) tid: std::sync::atomic::AtomicU64,
}

impl ReactorShared {
    pub(crate) fn new(core: u32, interrupt: bool) -> Result<Self> {
        let doorbell = match interrupt {
            true => Some(Arc::new(Doorbell::new().map_err(|e| match e {
                Error::Reactor { op, source, .. } => Error::Reactor { core, op, source },
                e => e,
            })?)),
            false => None,
        };
        Ok(ReactorShared {
            core,
            incoming: SegQueue::new(),
            assigned: AtomicUsize::new(0),
            doorbell,
            busy_ticks: Default::default(),
            idle_ticks: Default::default(),
            tid: Default::default(),
        })
    }

    /// Hands a new thread to the reactor (already counted in `assigned`).
    pub(crate) fn adopt(&self, t: Arc<ThreadShared>) {
        self.incoming.push(t);
        if let Some(d) = &self.doorbell {
            d.ring_if_sleeping();
        }
    }

    /// Whether the reactor may return: the application stops and none of its threads is
    /// left. Pairs with the check in [`Runtime::spawn_thread`] (both orders are
    /// sequentially consistent: either the spawn sees `stopping`, or this sees the thread).
    pub(crate) fn may_return(&self, rt: &Runtime) -> bool {
        rt.stopping.load(Ordering::SeqCst) && self.assigned.load(Ordering::SeqCst) == 0
    }
}

pub(crate) enum Sched {
    Reactors {
        reactors: Vec<Arc<ReactorShared>>,
        next: AtomicUsize,
    },
    Harness {
        incoming: Mutex<Vec<Arc<ThreadShared>>>,
    },
}

pub(crate) struct Runtime {
    pub(crate) clock: Clock,
    pub(crate) sched: Sched,
    threads: Mutex<Vec<ThreadHandle>>,
    stopping: AtomicBool,
    rc: AtomicI32,
    pub(crate) app_thread: OnceLock<ThreadHandle>,
    pub(crate) bdev: crate::bdev::Globals,
}

impl Runtime {
    pub(crate) fn new(
        clock: Clock,
        sched: Sched,
        bdev_opts: crate::bdev::BdevOpts,
    ) -> Arc<Runtime> {
        Arc::new(Runtime {
            clock,
            sched,
            threads: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
            rc: AtomicI32::new(0),
            app_thread: OnceLock::new(),
            bdev: crate::bdev::Globals::new(bdev_opts),
        })
    }

    fn threads(&self) -> std::sync::MutexGuard<'_, Vec<ThreadHandle>> {
        self.threads.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    pub(crate) fn rc(&self) -> i32 {
        self.rc.load(Ordering::Acquire)
    }

    pub(crate) fn live_threads(&self) -> Vec<ThreadHandle> {
        self.threads().clone()
    }

    /// The cores of the reactors (core 0 alone for the harness).
    pub(crate) fn cores(&self) -> CpuMask {
        match &self.sched {
            Sched::Reactors { reactors, .. } => {
                CpuMask::from_cores(reactors.iter().map(|r| r.core))
            }
            Sched::Harness { .. } => CpuMask::from_cores([0]),
        }
    }

    /// Creates a thread and hands it to a reactor (or the harness); `init` is its first
    /// message.
    pub(crate) fn spawn_thread(
        self: &Arc<Self>,
        name: String,
        cores: Option<&CpuMask>,
        init: Msg,
    ) -> Result<ThreadHandle> {
        if self.is_stopping() {
            return Err(Error::Stopping);
        }
        match &self.sched {
            Sched::Reactors { reactors, next } => {
                let eligible: Vec<&Arc<ReactorShared>> = reactors
                    .iter()
                    .filter(|r| cores.is_none_or(|m| m.contains(r.core)))
                    .collect();
                if eligible.is_empty() {
                    let mask = cores.map(|m| m.to_string()).unwrap_or_default();
                    return Err(Error::InvalidCoreMask {
                        mask,
                        reason: format!(
                            "no reactor runs on these cores (reactors: {})",
                            self.cores()
                        ),
                    });
                }
                let r = eligible[next.fetch_add(1, Ordering::Relaxed) % eligible.len()];
                // Counted before the stop check: a reactor that saw no thread and the stop
                // has returned only if this check sees the stop too.
                r.assigned.fetch_add(1, Ordering::SeqCst);
                if self.is_stopping() {
                    r.assigned.fetch_sub(1, Ordering::SeqCst);
                    return Err(Error::Stopping);
                }
                let shared = match ThreadShared::new(name, r.core, self.clone(), r.doorbell.clone())
                {
                    Ok(s) => s,
                    Err(e) => {
                        r.assigned.fetch_sub(1, Ordering::SeqCst);
                        return Err(e);
                    }
                };
                let _ = shared.push(init);
                // Listed before the reactor has it: a one-shot thread may exit (and be
                // unlisted) as soon as it runs.
                let h = self.register(shared.clone());
                r.adopt(shared);
                Ok(h)
            }
            Sched::Harness { incoming } => {
                let shared = ThreadShared::new(name, 0, self.clone(), None)?;
                let _ = shared.push(init);
                let h = self.register(shared.clone());
                incoming
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(shared);
                Ok(h)
            }
        }
    }

    /// Lists a new thread among the live ones. If the stop began meanwhile, its sweep
    /// (which asks every listed thread to exit) may have missed this one: ask it here.
    fn register(&self, shared: Arc<ThreadShared>) -> ThreadHandle {
        let h = ThreadHandle(shared);
        self.threads().push(h.clone());
        if self.is_stopping() {
            h.request_exit();
        }
        h
    }

    /// Registers a thread created directly (the app thread, harness threads).
    pub(crate) fn adopt(&self, shared: &Arc<ThreadShared>) {
        self.threads().push(ThreadHandle(shared.clone()));
    }

    pub(crate) fn thread_exited(&self, shared: &ThreadShared) {
        let mut t = self.threads();
        if let Some(pos) = t.iter().position(|h| h.id() == shared.id_()) {
            t.swap_remove(pos);
        }
    }

    /// Stops reactors that have no thread yet, when the application fails to start.
    pub(crate) fn abort_start(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.wake_reactors();
    }

    /// Wakes reactors sleeping in interrupt mode, so that they see the stop at once.
    fn wake_reactors(&self) {
        if let Sched::Reactors { reactors, .. } = &self.sched {
            for r in reactors {
                if let Some(d) = &r.doorbell {
                    d.ring_if_sleeping();
                }
            }
        }
    }

    /// Starts the orderly stop (`spdk_app_stop`): on the app thread, finish the bdev layer
    /// (unregister every bdev), then ask every thread to exit. Reactors return once their
    /// threads are gone. Only the first call's `rc` counts.
    pub(crate) fn request_stop(self: &Arc<Self>, rc: i32) {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        self.wake_reactors();
        self.rc.store(rc, Ordering::Release);
        let rt = self.clone();
        let run = move || {
            let rt2 = rt.clone();
            let spawned = crate::thread::spawn_local(async move {
                crate::bdev::fini(&rt2).await;
                for t in rt2.live_threads() {
                    t.request_exit();
                }
            });
            if spawned.is_err() {
                for t in rt.live_threads() {
                    t.request_exit();
                }
            }
        };
        match self.app_thread.get() {
            Some(app) if app.send_msg(run).is_ok() => {}
            _ => {
                for t in self.live_threads() {
                    t.request_exit();
                }
            }
        }
    }
}
