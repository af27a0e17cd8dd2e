//! One job: a closed loop of `queue_depth` tasks against a slice of one bdev, on one
//! lightweight thread pinned to one core.
//!
//! Each task owns its buffer while idle; submitting moves it into the I/O and the
//! completion hands it back, so the loop allocates nothing. The callback captures the
//! job (an `Rc`) and the task index: 16 bytes, stored inline in the I/O context.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::sync::Arc;

use bdev_core::bdev::{
    BdevChannel, BdevEvent, Completion, Desc, Histogram, IoPayload, IoRequest, IoSet, Payload,
};
use bdev_core::dma::DmaBuf;
use bdev_core::oneshot;
use bdev_core::thread::{self, PollStatus, Poller, Thread};

use crate::args::{Params, Workload};
use crate::pattern;

/// Where a job works: its bdev and its slice of it, in units of I/Os.
#[derive(Clone, Debug)]
pub struct JobSpec {
    pub index: usize,
    pub bdev: String,
    pub core: u32,
    pub ios_base: u64,
    pub size_in_ios: u64,
    pub io_blocks: u64,
    pub block_len: u32,
    pub queue_depth: u32,
}

/// A job's figures, sent to the app thread (at the end, or for a progress line).
#[derive(Clone, Debug)]
pub struct JobStats {
    pub spec: JobSpec,
    pub runtime_s: f64,
    pub completed: u64,
    pub failed: u64,
    pub lat_sum_us: f64,
    pub lat_min_us: f64,
    pub lat_max_us: f64,
    pub ended_with_error: bool,
    /// Error lines to print (first failure, miscompare, removal).
    pub errors: Vec<String>,
    /// Latencies in ticks (with `--plot`), and the tick rate.
    pub hist: Option<Box<Histogram>>,
    pub hz: u64,
}

struct Task {
    buf: Option<DmaBuf>,
    /// Verify: the buffer reads land in, so that a read that moves no data can't pass.
    rbuf: Option<DmaBuf>,
    submit_tick: u64,
    off_ios: u64,
    write_id: u64,
}

#[derive(Default)]
struct State {
    rng: u64,
    seq: u64,
    next_write_id: u64,
    /// Verify: offsets (in I/Os) with an I/O in flight.
    busy: Vec<u64>,
    in_flight: u32,
    draining: bool,
    finished: bool,
    completed: u64,
    failed: u64,
    lat_sum: u64,
    lat_min: u64,
    lat_max: u64,
    start: u64,
    end: u64,
    ended_with_error: bool,
    errors: Vec<String>,
    hist: Option<Box<Histogram>>,
}

pub struct Job {
    spec: JobSpec,
    p: Arc<Params>,
    desc: Desc,
    ch: BdevChannel,
    thread: Thread,
    hz: u64,
    tasks: RefCell<Vec<Task>>,
    st: RefCell<State>,
    timers: RefCell<Vec<Poller>>,
    reset_pending: Cell<bool>,
    done: RefCell<Option<oneshot::Sender<JobStats>>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    Write,
    Unmap,
    Flush,
    WriteZeroes,
    Verify,
}

/// The jobs of this thread, for progress snapshots and shutdown requests.
#[derive(Default)]
pub struct JobSlot(pub RefCell<Vec<Weak<Job>>>);

impl Job {
    /// Opens the bdev on the current thread and starts the loop. `done` gets the final
    /// figures; errors before the loop starts are returned.
    pub fn start(
        spec: JobSpec,
        p: Arc<Params>,
        done: oneshot::Sender<JobStats>,
    ) -> Result<(), String> {
        let thread = thread::current().ok_or("no thread")?;
        let me_slot: Rc<RefCell<Weak<Job>>> = Rc::new(RefCell::new(Weak::new()));
        let ev_slot = me_slot.clone();
        let desc = Desc::open(&spec.bdev, true, move |ev| {
            if ev == BdevEvent::Remove {
                if let Some(job) = ev_slot.borrow().upgrade() {
                    job.fail(format!("bdev {} was removed", job.spec.bdev));
                    job.drain();
                }
            }
        })
        .map_err(|e| format!("Could not open leaf bdev {}, error={e}", spec.bdev))?;
        let ch = desc
            .get_io_channel()
            .map_err(|e| format!("bdev {}: {e}", spec.bdev))?;
        let buf_len = (spec.io_blocks * spec.block_len as u64) as usize;
        let align = desc.bdev().buf_align().max(bdev_core::dma::DEFAULT_ALIGN);
        let verify = p.workload.is_verify();
        let data = p.workload.is_read_write() || verify;
        let mut tasks = Vec::with_capacity(spec.queue_depth as usize);
        for _ in 0..spec.queue_depth {
            let alloc = || {
                DmaBuf::new(buf_len, align)
                    .map_err(|e| format!("Cannot allocate buf for task: {e}"))
            };
            tasks.push(Task {
                buf: if data { Some(alloc()?) } else { None },
                rbuf: if verify { Some(alloc()?) } else { None },
                submit_tick: 0,
                off_ios: 0,
                write_id: 0,
            });
        }
        let hz = thread.ticks_hz();
        let seed =
            0x2545_f491_4f6c_dd1d ^ ((spec.index as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let st = State {
            rng: seed,
            busy: if verify {
                vec![0; spec.size_in_ios.div_ceil(64) as usize]
            } else {
                Vec::new()
            },
            lat_min: u64::MAX,
            next_write_id: (spec.index as u64) << 48,
            hist: p.plot.as_ref().map(|_| Box::default()),
            ..Default::default()
        };
        let job = Rc::new(Job {
            spec,
            p: p.clone(),
            desc,
            ch,
            thread: thread.clone(),
            hz,
            tasks: RefCell::new(tasks),
            st: RefCell::new(st),
            timers: RefCell::new(Vec::new()),
            reset_pending: Cell::new(false),
            done: RefCell::new(Some(done)),
        });
        *me_slot.borrow_mut() = Rc::downgrade(&job);
        thread
            .local::<JobSlot>()
            .0
            .borrow_mut()
            .push(Rc::downgrade(&job));

        let w = Rc::downgrade(&job);
        let end = Poller::register_us("bdevperf_end", p.time_s * 1_000_000, move || {
            if let Some(j) = w.upgrade() {
                j.drain();
            }
            PollStatus::Busy
        })
        .map_err(|e| e.to_string())?;
        job.timers.borrow_mut().push(end);
        if p.workload == Workload::Reset {
            // SPDK's reset job: a reset every 10 s on top of verify I/O.
            let w = Rc::downgrade(&job);
            let reset = Poller::register_us("bdevperf_reset", 10_000_000, move || {
                if let Some(j) = w.upgrade() {
                    j.submit_reset();
                }
                PollStatus::Busy
            })
            .map_err(|e| e.to_string())?;
            job.timers.borrow_mut().push(reset);
        }

        job.st.borrow_mut().start = thread.now();
        if p.async_set && !p.workload.is_verify() {
            let qd = job.spec.queue_depth as usize;
            let r = if p.workload.is_read_write() {
                // Each slot's buffer goes with its I/O; the loop gives them back at the end.
                let bufs: Vec<_> = (0..qd).filter_map(|i| job.take_buffers(i).0).collect();
                if bufs.len() < qd {
                    job.fail(format!(
                        "internal error: {} tasks have no buffer",
                        qd - bufs.len()
                    ));
                }
                thread::spawn_local(job.clone().set_loop(bufs, Job::rw_request))
            } else {
                thread::spawn_local(job.clone().set_loop(vec![(); qd], Job::nodata_request))
            };
            r.map_err(|e| e.to_string())?;
            return Ok(());
        }
        for idx in 0..job.spec.queue_depth as usize {
            if p.async_api {
                let j = job.clone();
                // Two loops, so that the plain one's future stays small (fewer cache lines
                // touched per I/O) instead of holding room for verify's two I/Os.
                let r = if p.workload.is_verify() {
                    thread::spawn_local(j.verify_loop(idx))
                } else {
                    thread::spawn_local(j.task_loop(idx))
                };
                r.map_err(|e| e.to_string())?;
            } else {
                job.submit(idx);
            }
        }
        Ok(())
    }

    #[inline]
    fn xorshift(&self, st: &mut State) -> u64 {
        let mut x = st.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        st.rng = x;
        x
    }

    /// The next operation and offset (in I/Os from the job's base), SPDK's
    /// `bdevperf_submit_single`.
    #[inline(always)]
    fn next(&self, st: &mut State) -> (Op, u64) {
        let n = self.spec.size_in_ios;
        let off = if self.p.workload.is_random() {
            self.xorshift(st) % n
        } else if self.p.workload.is_verify() {
            // Sequential, skipping offsets with a write+read still in flight.
            loop {
                let o = st.seq;
                st.seq = if st.seq + 1 >= n { 0 } else { st.seq + 1 };
                let (w, b) = ((o / 64) as usize, o % 64);
                if st.busy[w] & (1 << b) == 0 {
                    st.busy[w] |= 1 << b;
                    break o;
                }
            }
        } else {
            let o = st.seq;
            st.seq = if st.seq + 1 >= n { 0 } else { st.seq + 1 };
            o
        };
        let op = match self.p.workload {
            Workload::Unmap => Op::Unmap,
            Workload::Flush => Op::Flush,
            Workload::WriteZeroes => Op::WriteZeroes,
            Workload::Verify | Workload::Reset => Op::Verify,
            _ => {
                let pct = self.p.read_pct;
                if pct == 100 || (pct != 0 && self.xorshift(st) % 100 < pct as u64) {
                    Op::Read
                } else {
                    Op::Write
                }
            }
        };
        (op, off)
    }

    #[inline]
    fn lba(&self, off_ios: u64) -> u64 {
        (self.spec.ios_base + off_ios) * self.spec.io_blocks
    }

    /// Starts task `idx` (callback API).
    fn submit(self: &Rc<Self>, idx: usize) {
        let (op, off) = {
            let mut st = self.st.borrow_mut();
            st.in_flight += 1;
            self.next(&mut st)
        };
        let lba = self.lba(off);
        let n = self.spec.io_blocks;
        let now = self.thread.now();
        let mut tasks = self.tasks.borrow_mut();
        let t = &mut tasks[idx];
        t.submit_tick = now;
        t.off_ios = off;
        let (d, ch) = (&self.desc, &self.ch);
        let me = self.clone();
        match op {
            Op::Read | Op::Write | Op::Verify => {
                let Some(mut buf) = t.buf.take() else {
                    return self.lost_buffer(idx);
                };
                if let Op::Verify = op {
                    let id = {
                        let mut st = self.st.borrow_mut();
                        st.next_write_id += 1;
                        st.next_write_id
                    };
                    t.write_id = id;
                    pattern::fill(&mut buf, self.spec.block_len as usize, lba, id);
                    drop(tasks);
                    d.write_blocks(ch, buf, lba, n)
                        .submit(move |c| me.verify_written(idx, c));
                } else if let Op::Read = op {
                    drop(tasks);
                    d.read_blocks(ch, buf, lba, n)
                        .submit(move |c| me.rw_done(idx, c));
                } else {
                    drop(tasks);
                    d.write_blocks(ch, buf, lba, n)
                        .submit(move |c| me.rw_done(idx, c));
                }
            }
            Op::Unmap => {
                drop(tasks);
                d.unmap_blocks(ch, lba, n)
                    .submit(move |c| me.nodata_done(idx, c));
            }
            Op::Flush => {
                drop(tasks);
                d.flush_blocks(ch, lba, n)
                    .submit(move |c| me.nodata_done(idx, c));
            }
            Op::WriteZeroes => {
                drop(tasks);
                d.write_zeroes_blocks(ch, lba, n)
                    .submit(move |c| me.nodata_done(idx, c));
            }
        }
    }

    fn lost_buffer(&self, idx: usize) {
        self.fail(format!("internal error: task {idx} has no buffer"));
        self.st.borrow_mut().in_flight -= 1;
        self.drain();
    }

    /// Accounts one finished task; returns whether to go on.
    #[inline]
    fn account(&self, idx: usize, ok: bool) -> bool {
        let start = self.tasks.borrow()[idx].submit_tick;
        self.account_at(start, || self.tasks.borrow()[idx].off_ios, ok)
    }

    /// Accounts one finished I/O, submitted at tick `start` at `off()` (in I/Os; asked
    /// for a failure's message only).
    #[inline]
    fn account_at(&self, start: u64, off: impl FnOnce() -> u64, ok: bool) -> bool {
        let now = self.thread.now();
        let lat = now.saturating_sub(start);
        let mut st = self.st.borrow_mut();
        st.in_flight -= 1;
        st.lat_sum += lat;
        st.lat_min = st.lat_min.min(lat);
        st.lat_max = st.lat_max.max(lat);
        if let Some(h) = st.hist.as_mut() {
            h.tally(lat);
        }
        if ok {
            st.completed += 1;
        } else {
            st.failed += 1;
            if !self.p.continue_on_failure && self.p.workload != Workload::Reset && !st.draining {
                let off = self.lba(off());
                st.errors.push(format!(
                    "task offset: {off} on job bdev={} fails",
                    self.spec.bdev
                ));
                st.ended_with_error = true;
                st.draining = true;
            }
        }
        !st.draining
    }

    #[inline]
    fn rw_done(self: Rc<Self>, idx: usize, c: Completion<DmaBuf>) {
        let ok = c.is_success();
        self.tasks.borrow_mut()[idx].buf = Some(c.payload);
        if self.account(idx, ok) {
            self.submit(idx);
        } else {
            self.maybe_finish();
        }
    }

    #[inline]
    fn nodata_done(self: Rc<Self>, idx: usize, c: Completion<()>) {
        if self.account(idx, c.is_success()) {
            self.submit(idx);
        } else {
            self.maybe_finish();
        }
    }

    fn clear_busy(&self, off: u64) {
        let mut st = self.st.borrow_mut();
        st.busy[(off / 64) as usize] &= !(1 << (off % 64));
    }

    fn verify_written(self: Rc<Self>, idx: usize, c: Completion<DmaBuf>) {
        let ok = c.is_success();
        let mut tasks = self.tasks.borrow_mut();
        let t = &mut tasks[idx];
        t.buf = Some(c.payload);
        if !ok {
            let off = t.off_ios;
            drop(tasks);
            self.clear_busy(off);
            return self.after_verify(idx, false);
        }
        let lba = self.lba(t.off_ios);
        let Some(rbuf) = t.rbuf.take() else {
            drop(tasks);
            return self.lost_buffer(idx);
        };
        drop(tasks);
        let me = self.clone();
        self.desc
            .read_blocks(&self.ch, rbuf, lba, self.spec.io_blocks)
            .submit(move |c| me.verify_read(idx, c));
    }

    fn verify_read(self: Rc<Self>, idx: usize, c: Completion<DmaBuf>) {
        let ok = c.is_success();
        let mut tasks = self.tasks.borrow_mut();
        let t = &mut tasks[idx];
        let (off, id) = (t.off_ios, t.write_id);
        let lba = self.lba(off);
        let bad = if ok {
            pattern::check(&c.payload, self.spec.block_len as usize, lba, id)
        } else {
            None
        };
        t.rbuf = Some(c.payload);
        drop(tasks);
        self.clear_busy(off);
        if let Some(m) = bad {
            self.miscompare(m);
        }
        self.after_verify(idx, ok);
    }

    /// A read-back differs from what was written: report it and end the job with error.
    fn miscompare(&self, m: pattern::Mismatch) {
        let mut st = self.st.borrow_mut();
        st.errors.push(format!(
            "Buffer mismatch! Target: {} LBA: {} offset in block: {} (expected 0x{:016x}, read 0x{:016x})",
            self.spec.bdev, m.lba, m.offset_in_block, m.expected, m.got
        ));
        st.ended_with_error = true;
        st.draining = true;
    }

    fn after_verify(self: Rc<Self>, idx: usize, ok: bool) {
        if self.account(idx, ok) {
            self.submit(idx);
        } else {
            self.maybe_finish();
        }
    }

    /// One task as an async loop (`--async`): the same accounting, through `.await`. The
    /// task's buffer lives in the loop while it runs, as async code holds what it uses.
    async fn task_loop(self: Rc<Self>, idx: usize) {
        let (mut buf, _) = self.take_buffers(idx);
        while let Some((op, off)) = self.next_io() {
            let lba = self.lba(off);
            let n = self.spec.io_blocks;
            let start = self.thread.now();
            let ok = match op {
                Op::Read | Op::Write => {
                    let Some(b) = buf.take() else {
                        self.lost_buffer(idx);
                        break;
                    };
                    let (b, ok) = if op == Op::Read {
                        data_result(self.desc.read_blocks(&self.ch, b, lba, n).await)
                    } else {
                        data_result(self.desc.write_blocks(&self.ch, b, lba, n).await)
                    };
                    buf = Some(b);
                    ok
                }
                Op::Unmap => self.desc.unmap_blocks(&self.ch, lba, n).await.is_ok(),
                Op::Flush => self.desc.flush_blocks(&self.ch, lba, n).await.is_ok(),
                Op::WriteZeroes => self
                    .desc
                    .write_zeroes_blocks(&self.ch, lba, n)
                    .await
                    .is_ok(),
                // Only verify_loop's workloads have verify I/O.
                Op::Verify => false,
            };
            if !self.account_at(start, || off, ok) {
                break;
            }
        }
        self.end_task(idx, buf, None);
    }

    /// The whole job as one async task over an [`IoSet`]: an I/O in flight for each of
    /// `payloads` (the slots' buffers, or `()` for I/O without data), the completions
    /// taken as they come, each payload resubmitted with the next I/O. The tag is the
    /// offset alone (the latency comes from the completion's submission tick), so that no
    /// task-table line is touched per I/O and the completion's captures stay two words.
    async fn set_loop<P: IoPayload, R>(self: Rc<Self>, payloads: Vec<P>, request: R)
    where
        R: for<'a> Fn(&'a Job, Op, u64, P) -> IoRequest<'a, P> + Copy,
    {
        let mut set: IoSet<u64, P> = IoSet::with_capacity(payloads.len());
        let mut spare = Vec::with_capacity(payloads.len());
        let mut payloads = payloads.into_iter();
        for p in payloads.by_ref() {
            if let Err(p) = self.set_submit(&set, p, request) {
                spare.push(p);
                break;
            }
        }
        spare.extend(payloads);
        while let Some((off, c)) = set.join_next().await {
            let ok = c.status.is_success();
            if !self.account_at(c.submit_tick, || off, ok) {
                spare.push(c.payload);
            } else if let Err(p) = self.set_submit(&set, c.payload, request) {
                spare.push(p);
            }
        }
        // The buffers back to the slots (nothing to give back for `()`).
        let mut tasks = self.tasks.borrow_mut();
        for (t, p) in tasks.iter_mut().filter(|t| t.buf.is_none()).zip(spare) {
            if let Payload::Buf(b) = p.into_payload() {
                t.buf = Some(b);
            }
        }
        drop(tasks);
        self.maybe_finish();
    }

    /// The next I/O of [`Job::set_loop`] into `set` with payload `p`; `p` back if the job
    /// is draining.
    #[inline]
    fn set_submit<P: IoPayload, R>(&self, set: &IoSet<u64, P>, p: P, request: R) -> Result<(), P>
    where
        R: for<'a> Fn(&'a Job, Op, u64, P) -> IoRequest<'a, P>,
    {
        let Some((op, off)) = self.next_io() else {
            return Err(p);
        };
        // The tag is the offset alone: the latency comes from the completion's submission
        // tick, and a one-word tag keeps the set's completion capture at two words (see
        // `IoSet::push`).
        set.push(request(self, op, self.lba(off), p), off);
        Ok(())
    }

    /// A read or write of one I/O's blocks at `lba` with `b` (the read/write workloads).
    #[inline]
    fn rw_request(&self, op: Op, lba: u64, b: DmaBuf) -> IoRequest<'_, DmaBuf> {
        let n = self.spec.io_blocks;
        match op {
            Op::Read => self.desc.read_blocks(&self.ch, b, lba, n),
            _ => self.desc.write_blocks(&self.ch, b, lba, n),
        }
    }

    /// An unmap, flush or write_zeroes of one I/O's blocks at `lba` (the workloads of
    /// those names, whose only operation it is).
    fn nodata_request(&self, op: Op, lba: u64, _: ()) -> IoRequest<'_, ()> {
        let n = self.spec.io_blocks;
        match op {
            Op::Unmap => self.desc.unmap_blocks(&self.ch, lba, n),
            Op::Flush => self.desc.flush_blocks(&self.ch, lba, n),
            _ => self.desc.write_zeroes_blocks(&self.ch, lba, n),
        }
    }

    /// [`Job::task_loop`] for verify (and reset, which runs verify I/O).
    async fn verify_loop(self: Rc<Self>, idx: usize) {
        let (mut buf, mut rbuf) = self.take_buffers(idx);
        while let Some((_, off)) = self.next_io() {
            let start = self.thread.now();
            let Some(b) = buf.take() else {
                self.lost_buffer(idx);
                break;
            };
            let (b, r, ok) = self.verify_async(off, self.lba(off), b, rbuf.take()).await;
            (buf, rbuf) = (Some(b), r);
            if !self.account_at(start, || off, ok) {
                break;
            }
        }
        self.end_task(idx, buf, rbuf);
    }

    /// An async task's buffers (data, and verify's read-back), held by its loop while
    /// it runs.
    fn take_buffers(&self, idx: usize) -> (Option<DmaBuf>, Option<DmaBuf>) {
        let mut tasks = self.tasks.borrow_mut();
        let t = &mut tasks[idx];
        (t.buf.take(), t.rbuf.take())
    }

    /// An async task's loop ended: its buffers go back to the task table.
    fn end_task(&self, idx: usize, buf: Option<DmaBuf>, rbuf: Option<DmaBuf>) {
        {
            let mut tasks = self.tasks.borrow_mut();
            let t = &mut tasks[idx];
            (t.buf, t.rbuf) = (buf, rbuf);
        }
        self.maybe_finish();
    }

    /// The next I/O of an async task (counted in flight), or `None` once draining.
    #[inline(always)]
    fn next_io(&self) -> Option<(Op, u64)> {
        let mut st = self.st.borrow_mut();
        if st.draining {
            return None;
        }
        st.in_flight += 1;
        Some(self.next(&mut st))
    }

    /// Verify through `.await`: write the pattern, read it back into `rbuf`, compare.
    /// Gives back both buffers and whether both I/Os succeeded.
    async fn verify_async(
        &self,
        off: u64,
        lba: u64,
        mut buf: DmaBuf,
        rbuf: Option<DmaBuf>,
    ) -> (DmaBuf, Option<DmaBuf>, bool) {
        let id = {
            let mut st = self.st.borrow_mut();
            st.next_write_id += 1;
            st.next_write_id
        };
        pattern::fill(&mut buf, self.spec.block_len as usize, lba, id);
        let n = self.spec.io_blocks;
        let (buf, ok) = data_result(self.desc.write_blocks(&self.ch, buf, lba, n).await);
        let (rbuf, ok) = match (ok, rbuf) {
            (true, Some(rbuf)) => {
                let (rbuf, ok) = data_result(self.desc.read_blocks(&self.ch, rbuf, lba, n).await);
                if ok {
                    if let Some(m) = pattern::check(&rbuf, self.spec.block_len as usize, lba, id) {
                        self.miscompare(m);
                    }
                }
                (Some(rbuf), ok)
            }
            (_, rbuf) => (rbuf, false),
        };
        self.clear_busy(off);
        (buf, rbuf, ok)
    }

    fn submit_reset(self: &Rc<Self>) {
        if self.reset_pending.replace(true) || self.st.borrow().draining {
            return;
        }
        self.st.borrow_mut().in_flight += 1;
        let me = self.clone();
        self.desc.reset(&self.ch).submit(move |c| {
            me.reset_pending.set(false);
            let mut st = me.st.borrow_mut();
            st.in_flight -= 1;
            if !c.is_success() {
                st.errors
                    .push(format!("Reset blockdev={} failed", me.spec.bdev));
                st.ended_with_error = true;
                st.draining = true;
            }
            drop(st);
            me.maybe_finish();
        });
    }

    fn fail(&self, msg: String) {
        let mut st = self.st.borrow_mut();
        st.errors.push(msg);
        st.ended_with_error = true;
    }

    /// Stops submitting; the job ends when what is in flight has completed.
    pub fn drain(&self) {
        self.st.borrow_mut().draining = true;
        self.timers.borrow_mut().clear();
        self.maybe_finish();
    }

    fn maybe_finish(&self) {
        let stats = {
            let mut st = self.st.borrow_mut();
            if !st.draining || st.in_flight > 0 || st.finished {
                return;
            }
            st.finished = true;
            st.end = self.thread.now();
            self.stats_of(&st, st.end)
        };
        self.timers.borrow_mut().clear();
        if let Some(tx) = self.done.borrow_mut().take() {
            tx.send(stats);
        }
        // The job's thread exits once the job (descriptor, channel) is dropped.
        self.thread.handle().request_exit();
    }

    fn stats_of(&self, st: &State, now: u64) -> JobStats {
        let us = |t: u64| t as f64 * 1e6 / self.hz as f64;
        let n = st.completed + st.failed;
        JobStats {
            spec: self.spec.clone(),
            runtime_s: us(now.saturating_sub(st.start)) / 1e6,
            completed: st.completed,
            failed: st.failed,
            lat_sum_us: us(st.lat_sum),
            lat_min_us: if n == 0 { 0.0 } else { us(st.lat_min) },
            lat_max_us: us(st.lat_max),
            ended_with_error: st.ended_with_error,
            errors: st.errors.clone(),
            hist: st.hist.clone(),
            hz: self.hz,
        }
    }

    /// Figures so far (for `-S`).
    pub fn snapshot(&self) -> JobStats {
        let st = self.st.borrow();
        let now = if st.finished {
            st.end
        } else {
            self.thread.now()
        };
        self.stats_of(&st, now)
    }
}

/// A data I/O's buffer back, and whether it succeeded.
#[inline]
fn data_result(r: Result<DmaBuf, bdev_core::bdev::IoError<DmaBuf>>) -> (DmaBuf, bool) {
    match r {
        Ok(b) => (b, true),
        Err(e) => (e.payload, false),
    }
}
