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
    /// SPDK's `--interrupt-mode`: a reactor whose threads are all idle sleeps until a
    /// message, a due timed poller, or an fd of one of its active pollers wakes it
    /// (see [`crate::thread::Poller::set_interrupt_fd`]), instead of polling its core
    /// flat out. It keeps polling while any active poller has no fd.
    pub interrupt_mode: bool,
}

impl Default for AppOpts {
    fn default() -> Self {
        AppOpts {
            name: "app".into(),
            cores: CpuMask::single(0),
            bdev: BdevOpts::default(),
            interrupt_mode: false,
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
        .map(|&core| ReactorShared::new(core, opts.interrupt_mode).map(Arc::new))
        .collect::<Result<_>>()?;
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
    let app = ThreadShared::new(
        "app_thread".into(),
        main_reactor.core,
        rt.clone(),
        main_reactor.doorbell.clone(),
    )?;
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

/// Whether the current thread's application runs in interrupt mode
/// ([`AppOpts::interrupt_mode`]).
pub fn interrupt_mode() -> bool {
    thread::with_current(|t| t.in_interrupt_mode()).unwrap_or(false)
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
/// have exited. In interrupt mode it sleeps when a whole iteration found nothing to do.
fn reactor_loop(rt: &Arc<Runtime>, rs: &ReactorShared) {
    let mut threads: Vec<Thread> = Vec::new();
    let mut fds: Vec<libc::pollfd> = Vec::new();
    let mut raw: Vec<std::os::fd::RawFd> = Vec::new();
    rs.tid
        .store(crate::testing::os_thread_id() as u64, Ordering::Relaxed);
    // The previous iteration, accounted at the start of the next (as threads do theirs).
    let (mut prev, mut prev_busy) = (rt.clock.now(), false);
    loop {
        while let Some(s) = rs.incoming.pop() {
            threads.push(Thread::new(s));
        }
        let now = rt.clock.now();
        let c = if prev_busy {
            &rs.busy_ticks
        } else {
            &rs.idle_ticks
        };
        // Only this reactor writes: a load and a store, no locked add.
        c.store(
            c.load(Ordering::Relaxed) + now.saturating_sub(prev),
            Ordering::Relaxed,
        );
        prev = now;
        let mut exiting = false;
        let mut busy = false;
        for t in &threads {
            set_current(Some(t.clone()));
            busy |= t.poll(now);
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
        prev_busy = busy;
        if let Some(bell) = &rs.doorbell {
            if !busy && !exiting {
                sleep(rt, rs, bell, &threads, &mut fds, &mut raw);
            }
        }
    }
    set_current(None);
}

/// A reactor as SPDK's `framework_get_reactors` describes it.
#[derive(Clone, Debug)]
pub struct ReactorInfo {
    /// Its core.
    pub lcore: u32,
    /// Its OS thread id.
    pub tid: u64,
    /// Ticks of iterations that did work.
    pub busy: u64,
    /// Ticks of iterations that found none.
    pub idle: u64,
    /// Whether it sleeps when idle (interrupt mode).
    pub in_interrupt: bool,
}

/// The reactors of the current thread's application (none in the test harness).
pub fn reactors_info() -> Vec<ReactorInfo> {
    let Some(rt) = thread::with_current(|t| t.runtime().clone()) else {
        return Vec::new();
    };
    match &rt.sched {
        Sched::Reactors { reactors, .. } => reactors
            .iter()
            .map(|r| ReactorInfo {
                lcore: r.core,
                tid: r.tid.load(Ordering::Relaxed),
                busy: r.busy_ticks.load(Ordering::Relaxed),
                idle: r.idle_ticks.load(Ordering::Relaxed),
                in_interrupt: r.doorbell.is_some(),
            })
            .collect(),
        Sched::Harness { .. } => Vec::new(),
    }
}

/// Longest sleep in interrupt mode, whatever the reactor waits for: a bound on the delay
/// of anything that has no way to wake it.
const MAX_SLEEP_US: u64 = 10_000;

/// Interrupt mode: waits until the doorbell rings, a poller's fd is readable, or the next
/// timed poller is due; returns at once if some thread cannot wait.
fn sleep(
    rt: &Runtime,
    rs: &ReactorShared,
    bell: &thread::doorbell::Doorbell,
    threads: &[Thread],
    fds: &mut Vec<libc::pollfd>,
    raw: &mut Vec<std::os::fd::RawFd>,
) {
    raw.clear();
    raw.push(bell.fd());
    let mut deadline = u64::MAX;
    for t in threads {
        if !t.can_sleep(raw, &mut deadline) {
            return;
        }
    }
    bell.set_sleeping();
    // The last look, now that senders ring: anything queued meanwhile?
    if !rs.incoming.is_empty() || threads.iter().any(|t| t.has_msgs()) {
        bell.woke();
        return;
    }
    let now = rt.clock.now();
    let hz = rt.clock.hz();
    let wait_us = match deadline {
        u64::MAX => MAX_SLEEP_US,
        d => (d.saturating_sub(now).saturating_mul(1_000_000) / hz.max(1)).min(MAX_SLEEP_US),
    };
    if wait_us > 0 {
        fds.clear();
        fds.extend(raw.iter().map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        }));
        let ts = libc::timespec {
            tv_sec: (wait_us / 1_000_000) as libc::time_t,
            tv_nsec: ((wait_us % 1_000_000) * 1000) as libc::c_long,
        };
        // SAFETY: `fds` is a live array of `fds.len()` pollfd structs and `ts` a live
        // timespec; no signal mask is passed. An error (EINTR: a signal, or io_uring task
        // work to run) only ends the wait early.
        let _ = unsafe {
            libc::ppoll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                &ts,
                std::ptr::null(),
            )
        };
    }
    bell.woke();
}
