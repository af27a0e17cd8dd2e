//! The application frame, SPDK's `spdk_app_start` / `spdk_app_stop`: one reactor per core
//! of the core mask, each a pinned OS thread running its lightweight threads in a loop;
//! the main reactor runs on the caller's OS thread and hosts the app thread, where `main`
//! runs first.
//!
//! ```text
//!  start(opts, main) ──► reactor core0 (caller's OS thread) : [app_thread, job0, ...]
//!                        reactor core1 (pinned OS thread)   : [job1, ...]
//!  stop(rc) ──► app thread: bdev layer fini (unregister bdevs) ──► every thread exits
//!           ──► reactors return ──► start() returns rc
//! ```

mod cpumask;

pub use cpumask::{CpuMask, MAX_CORES};

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::bdev::BdevOpts;
use crate::error::{Error, Result};
use crate::runtime::{ReactorShared, Runtime, Sched};
use crate::thread::{self, Clock, Thread, ThreadHandle, ThreadShared, set_current};

/// Options of [`start`].
#[derive(Clone, Debug)]
pub struct AppOpts {
    /// Application name (the app thread is named `app_thread`, as in SPDK).
    pub name: String,
    /// Cores to run reactors on (`-m`).
    pub cores: CpuMask,
    /// Options of the bdev layer (`bdev_set_options`).
    pub bdev: BdevOpts,
}

impl Default for AppOpts {
    fn default() -> Self {
        AppOpts {
            name: "app".into(),
            cores: CpuMask::single(0),
            bdev: BdevOpts::default(),
        }
    }
}

/// Runs reactors on `opts.cores` and `main` on the app thread; returns the code given to
/// [`stop`] once every thread has exited and every bdev is unregistered.
pub fn start(opts: AppOpts, main: impl FnOnce() + Send + 'static) -> Result<i32> {
    opts.cores.check_available()?;
    opts.bdev.validate()?;
    let reactors: Vec<Arc<ReactorShared>> = opts
        .cores
        .cores()
        .iter()
        .map(|&core| Arc::new(ReactorShared::new(core)))
        .collect();
    let rt = Runtime::new(
        Clock::Real,
        Sched::Reactors {
            reactors: reactors.clone(),
            next: AtomicUsize::new(0),
        },
        opts.bdev.clone(),
    );
    // Make sure the TSC rate is measured before reactors start (it takes 2 ms).
    let _ = thread::real_hz();

    let main_reactor = reactors[0].clone();
    let app = ThreadShared::new("app_thread".into(), main_reactor.core, rt.clone())?;
    let _ = app.push(Box::new(main));
    rt.adopt(&app);
    let _ = rt.app_thread.set(ThreadHandle(app.clone()));
    main_reactor.assigned.fetch_add(1, Ordering::SeqCst);
    main_reactor.incoming.push(app);

    let mut handles = Vec::new();
    for r in reactors.iter().skip(1) {
        let (r2, rt2) = (r.clone(), rt.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("reactor_{}", r.core))
            .spawn(move || {
                if let Err(e) = pin_to_core(r2.core) {
                    tracing::error!("{e}");
                }
                reactor_loop(&rt2, &r2);
            });
        match spawned {
            Ok(h) => handles.push(h),
            Err(source) => {
                // The reactors started so far have no thread yet: stop them before
                // returning, rather than leave them spinning.
                rt.abort_start();
                for h in handles {
                    let _ = h.join();
                }
                return Err(Error::Reactor {
                    core: r.core,
                    op: "spawning OS thread",
                    source,
                });
            }
        }
    }
    // As for the other reactors: unpinned is slower, not wrong (and returning here would
    // leave those already started spinning for good).
    if let Err(e) = pin_to_core(main_reactor.core) {
        tracing::error!("{e}");
    }
    tracing::info!(cores = %opts.cores, "reactors started");
    reactor_loop(&rt, &main_reactor);
    for h in handles {
        let _ = h.join();
    }
    Ok(rt.rc())
}

/// Asks the application of the current thread to stop with `rc` (`spdk_app_stop`). Works
/// from any of its threads; only the first call counts.
pub fn stop(rc: i32) -> Result<()> {
    let rt =
        thread::with_current(|t| t.runtime().clone()).ok_or(Error::NoThread { op: "app_stop" })?;
    rt.request_stop(rc);
    Ok(())
}

/// The app thread of the current thread's application.
pub fn app_thread() -> Option<ThreadHandle> {
    thread::with_current(|t| t.runtime().app_thread.get().cloned()).flatten()
}

/// The cores the current application's reactors run on.
pub fn cores() -> Option<CpuMask> {
    thread::with_current(|t| t.runtime().cores())
}

fn pin_to_core(core: u32) -> Result<()> {
    let mut set = cpumask::empty_set();
    if core >= libc::CPU_SETSIZE as u32 {
        return Err(Error::InvalidCoreMask {
            mask: core.to_string(),
            reason: "core number too large".into(),
        });
    }
    // SAFETY: core < CPU_SETSIZE (checked), so the bit lies inside `set`.
    unsafe { libc::CPU_SET(core as usize, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t and the size passed is its size; pid 0 is the
    // calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(Error::Reactor {
            core,
            op: "sched_setaffinity",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// A reactor: polls its threads round-robin until the application stops and its threads
/// have exited.
fn reactor_loop(rt: &Arc<Runtime>, rs: &ReactorShared) {
    let mut threads: Vec<Thread> = Vec::new();
    loop {
        while let Some(s) = rs.incoming.pop() {
            threads.push(Thread::new(s));
        }
        let now = rt.clock.now();
        let mut exiting = false;
        for t in &threads {
            set_current(Some(t.clone()));
            t.poll(now);
            exiting |= t.state() != 0;
        }
        if exiting {
            threads.retain(|t| {
                let prev = set_current(Some(t.clone()));
                let done = t.try_finish_exit();
                set_current(prev);
                if done {
                    rs.assigned.fetch_sub(1, Ordering::SeqCst);
                }
                !done
            });
        }
        if threads.is_empty() && rs.may_return(rt) {
            break;
        }
    }
    set_current(None);
}
