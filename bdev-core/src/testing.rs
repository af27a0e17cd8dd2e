//! A deterministic multi-thread harness, SPDK's `ut_multithread`: several lightweight
//! threads on the test's own OS thread, polled in the order the test chooses, with a clock
//! that only moves when the test advances it (one tick per microsecond).
//!
//! ```
//! use bdev_core::testing::Harness;
//! let h = Harness::new(2);
//! let t1 = h.handle(1);
//! h.run_on(0, || t1.send_msg(|| println!("on thread 1")).unwrap());
//! h.poll_threads();
//! ```

use std::cell::RefCell;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::bdev::BdevOpts;
use crate::runtime::{Runtime, Sched};
use crate::thread::{self, Clock, Thread, ThreadHandle, ThreadShared, set_current};

/// The harness. Dropping it stops the runtime: bdevs are unregistered and threads exit.
pub struct Harness {
    rt: Arc<Runtime>,
    threads: RefCell<Vec<Thread>>,
    clock: Arc<AtomicU64>,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Harness({} threads)", self.threads.borrow().len())
    }
}

/// Rounds of [`Harness::poll_threads`] before it gives up on reaching idle.
const MAX_ROUNDS: usize = 1_000_000;

impl Harness {
    /// `n` threads named `ut_thread0..`, thread 0 current and the app thread.
    pub fn new(n: usize) -> Harness {
        Self::with_opts(n, BdevOpts::default())
    }

    /// As [`Harness::new`], with bdev layer options.
    pub fn with_opts(n: usize, bdev: BdevOpts) -> Harness {
        assert!(n > 0, "a harness needs at least one thread");
        let clock = Arc::new(AtomicU64::new(1));
        let rt = Runtime::new(
            Clock::Mock(clock.clone()),
            Sched::Harness {
                incoming: Default::default(),
            },
            bdev,
        );
        let mut threads = Vec::new();
        for i in 0..n {
            let shared = ThreadShared::new(format!("ut_thread{i}"), 0, rt.clone(), None)
                .expect("thread slots");
            rt.adopt(&shared);
            if i == 0 {
                let _ = rt.app_thread.set(ThreadHandle(shared.clone()));
            }
            threads.push(Thread::new(shared));
        }
        set_current(Some(threads[0].clone()));
        Harness {
            rt,
            threads: RefCell::new(threads),
            clock,
        }
    }

    fn adopt_new(&self) {
        if let Sched::Harness { incoming } = &self.rt.sched {
            let new: Vec<_> = incoming
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain(..)
                .collect();
            for s in new {
                self.threads.borrow_mut().push(Thread::new(s));
            }
        }
    }

    /// Number of threads, including ones spawned through [`thread::spawn_thread`].
    pub fn thread_count(&self) -> usize {
        self.adopt_new();
        self.threads.borrow().len()
    }

    /// The handle of thread `i`.
    pub fn handle(&self, i: usize) -> ThreadHandle {
        self.thread(i).handle()
    }

    fn thread(&self, i: usize) -> Thread {
        self.adopt_new();
        self.threads.borrow()[i].clone()
    }

    /// Makes thread `i` current (`set_thread`).
    pub fn set_thread(&self, i: usize) {
        set_current(Some(self.thread(i)));
    }

    /// Runs `f` with thread `i` current, then restores the previous thread.
    pub fn run_on<R>(&self, i: usize, f: impl FnOnce() -> R) -> R {
        let prev = set_current(Some(self.thread(i)));
        let r = f();
        set_current(prev);
        r
    }

    /// One iteration of thread `i`; whether it did work.
    pub fn poll_thread(&self, i: usize) -> bool {
        let t = self.thread(i);
        if t.state() == 2 {
            return false;
        }
        let prev = set_current(Some(t.clone()));
        let busy = t.poll(self.clock.load(Ordering::Relaxed));
        if t.state() == 1 {
            t.try_finish_exit();
        }
        set_current(prev);
        busy
    }

    /// Polls thread `i` until an iteration does nothing.
    pub fn poll_thread_idle(&self, i: usize) {
        for _ in 0..MAX_ROUNDS {
            if !self.poll_thread(i) {
                return;
            }
        }
        panic!("thread {i} still busy after {MAX_ROUNDS} polls");
    }

    /// Polls every thread in turn until a whole round does nothing (`poll_threads`).
    pub fn poll_threads(&self) {
        for _ in 0..MAX_ROUNDS {
            let mut busy = false;
            for i in 0..self.thread_count() {
                busy |= self.poll_thread(i);
            }
            if !busy {
                return;
            }
        }
        panic!("threads still busy after {MAX_ROUNDS} rounds");
    }

    /// Moves the mock clock forward.
    pub fn advance_time_us(&self, us: u64) {
        self.clock.fetch_add(us, Ordering::Relaxed);
    }

    /// The mock clock, in microseconds.
    pub fn now_us(&self) -> u64 {
        self.clock.load(Ordering::Relaxed)
    }

    /// Runs `fut` on thread `i` and polls all threads until it finishes. Panics if it is
    /// still pending when the threads go idle (it would never finish).
    pub fn block_on<T: 'static>(&self, i: usize, fut: impl Future<Output = T> + 'static) -> T {
        let t = self.thread(i);
        let jh = thread::executor_spawn_on(&t, fut);
        self.poll_threads();
        jh.try_take()
            .expect("future still pending with all threads idle")
    }

    /// As [`Harness::block_on`], for futures that wait on the world outside (a kernel
    /// completing I/O): keeps polling every thread, in real time, for up to `timeout`.
    pub fn block_on_real<T: 'static>(
        &self,
        i: usize,
        timeout: std::time::Duration,
        fut: impl Future<Output = T> + 'static,
    ) -> T {
        let t = self.thread(i);
        let jh = thread::executor_spawn_on(&t, fut);
        let start = std::time::Instant::now();
        loop {
            self.poll_threads();
            if let Some(v) = jh.try_take() {
                return v;
            }
            assert!(
                start.elapsed() < timeout,
                "future still pending after {timeout:?}"
            );
            std::thread::yield_now();
        }
    }

    /// Stops the runtime (as `app::stop`) and polls until every thread has exited.
    pub fn stop(&self) {
        self.rt.request_stop(0);
        for _ in 0..MAX_ROUNDS {
            self.poll_threads();
            let all = self.threads.borrow().iter().all(|t| t.state() == 2);
            if all {
                break;
            }
            // Exiting threads with leftovers are forced out after a timeout.
            self.advance_time_us(1_000_000);
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.stop();
        } else {
            for t in self.threads.borrow().iter() {
                let prev = set_current(Some(t.clone()));
                t.finish_exit(false);
                set_current(prev);
            }
        }
        set_current(None);
    }
}

/// A closed loop of single-block I/Os on one bdev, each completion submitting the next at a
/// pseudo-random LBA: the workload of the I/O-path benchmarks and the allocation tests.
/// Reads only, or reads and writes alternating per task.
pub struct IoLoop {
    desc: crate::bdev::Desc,
    ch: crate::bdev::BdevChannel,
    done: std::cell::Cell<u64>,
    failed: std::cell::Cell<u64>,
    stop: std::cell::Cell<bool>,
    blocks: u64,
    block_len: usize,
    seed: std::cell::Cell<u64>,
}

impl std::fmt::Debug for IoLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IoLoop({} done)", self.done.get())
    }
}

impl IoLoop {
    /// Opens `bdev` for writing and gets a channel, on the current thread.
    pub fn open(bdev: &str) -> crate::Result<std::rc::Rc<IoLoop>> {
        let desc = crate::bdev::Desc::open(bdev, true, |_| {})?;
        let ch = desc.get_io_channel()?;
        let b = desc.bdev();
        Ok(std::rc::Rc::new(IoLoop {
            blocks: b.num_blocks(),
            block_len: b.block_len() as usize,
            desc,
            ch,
            done: Default::default(),
            failed: Default::default(),
            stop: Default::default(),
            seed: std::cell::Cell::new(0x2545_f491_4f6c_dd1d),
        }))
    }

    fn lba(&self) -> u64 {
        let mut x = self.seed.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.seed.set(x);
        x % self.blocks
    }

    fn buf(&self) -> crate::Result<crate::dma::DmaBuf> {
        crate::dma::DmaBuf::new(
            self.block_len,
            self.desc.bdev().buf_align().max(crate::dma::DEFAULT_ALIGN),
        )
    }

    fn submit(self: &std::rc::Rc<Self>, buf: crate::dma::DmaBuf, write: bool, mix: bool) {
        let me = self.clone();
        let lba = self.lba();
        let req = if write {
            self.desc.write_blocks(&self.ch, buf, lba, 1)
        } else {
            self.desc.read_blocks(&self.ch, buf, lba, 1)
        };
        req.submit(move |c| {
            me.count(c.is_success());
            if !me.stop.get() {
                me.submit(c.payload, mix && !write, mix);
            }
        });
    }

    fn count(&self, ok: bool) {
        if !ok {
            self.failed.set(self.failed.get() + 1);
        }
        self.done.set(self.done.get() + 1);
    }

    /// Starts `depth` tasks driven by callbacks; `mix` alternates reads and writes.
    pub fn start(self: &std::rc::Rc<Self>, depth: usize, mix: bool) -> crate::Result<()> {
        for i in 0..depth {
            self.submit(self.buf()?, mix && i % 2 == 0, mix);
        }
        Ok(())
    }

    /// Starts `depth` tasks that `.await` each read.
    pub fn start_async(self: &std::rc::Rc<Self>, depth: usize) -> crate::Result<()> {
        for _ in 0..depth {
            let (me, mut buf) = (self.clone(), self.buf()?);
            crate::thread::spawn_local(async move {
                while !me.stop.get() {
                    let r = me.desc.read_blocks(&me.ch, buf, me.lba(), 1).await;
                    me.count(r.is_ok());
                    buf = r.unwrap_or_else(|e| e.payload);
                }
            })?;
        }
        Ok(())
    }

    /// Starts one task that keeps `depth` reads in flight in an [`crate::bdev::IoSet`].
    pub fn start_set(self: &std::rc::Rc<Self>, depth: usize) -> crate::Result<()> {
        let mut set = crate::bdev::IoSet::<u64>::with_capacity(depth);
        for i in 0..depth {
            set.push(
                self.desc.read_blocks(&self.ch, self.buf()?, self.lba(), 1),
                i as u64,
            );
        }
        let me = self.clone();
        crate::thread::spawn_local(async move {
            while let Some((i, c)) = set.join_next().await {
                me.count(c.is_success());
                let buf = c.payload;
                if !me.stop.get() {
                    set.push(me.desc.read_blocks(&me.ch, buf, me.lba(), 1), i);
                }
            }
        })?;
        Ok(())
    }

    /// I/Os completed so far.
    pub fn done(&self) -> u64 {
        self.done.get()
    }

    /// I/Os that failed so far.
    pub fn failed(&self) -> u64 {
        self.failed.get()
    }

    /// Polls thread `t` of `h` until `n` I/Os have completed in all.
    pub fn run_until(&self, h: &Harness, t: usize, n: u64) {
        while self.done.get() < n {
            h.poll_thread(t);
        }
    }

    /// Stops resubmitting and lets what is in flight complete.
    pub fn stop(&self, h: &Harness) {
        self.stop.set(true);
        h.poll_threads();
    }
}

/// CPU time (user + system) OS thread `tid` of this process has used, in microseconds
/// (clock-tick resolution); `None` if `/proc` can't say (no such thread, no procfs).
pub fn thread_cpu_us(tid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some((utime + stime) * 1_000_000 / hz)
}

/// The calling OS thread's id (for [`thread_cpu_us`]).
pub fn os_thread_id() -> i32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::gettid() }
}
