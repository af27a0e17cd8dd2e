//! The io_uring engine (the io-uring crate): one ring per channel. Submissions are batched
//! per poll; completions are read from the completion ring in user space, no syscall per
//! I/O. Options: SQPOLL (a kernel thread submits; no syscall at all while it is awake), a
//! registered file, registered buffers, and `defer_taskrun` (DEFER_TASKRUN with
//! SINGLE_ISSUER: the kernel holds completions until a poll enters the ring, which it
//! does when the ring's TASKRUN flag says some are held, instead of interrupting the
//! reactor to post them; off in interrupt mode, where the ring's fd must wake it).
//!
//! **Registered buffers**: a sparse table of N slots per ring. The first I/O on a caller
//! buffer (a `DmaBuf`, known by its process-unique id) registers the whole buffer in a free
//! slot (one syscall), and that I/O and every later one on the same buffer go as
//! `READ_FIXED` / `WRITE_FIXED`: the kernel skips pinning and mapping its pages per I/O.
//! Slots are reused in clock order, never while an I/O uses them. A buffer freed while
//! registered stays pinned by the kernel until its slot is reused; no operation ever names
//! a stale slot, since ids are never reused. I/O on several segments, or on a buffer whose
//! slot can't be had, goes as plain readv/writev.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use io_uring::{IoUring, opcode, squeue, types};

use crate::engine::{Engine, Op};

/// How a channel's ring is set up (`bdev_uring_create`'s options, resolved).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RingOpts {
    /// Start an SQPOLL kernel thread idling this many ms, on this CPU if given.
    pub sqpoll: Option<(u32, Option<u32>)>,
    /// Register the file with the ring.
    pub fixed_file: bool,
    /// Registered-buffer slots per ring (0: none).
    pub registered_buffers: u16,
    /// A DEFER_TASKRUN ring: completions posted only when the reactor enters it (not in
    /// interrupt mode).
    pub defer_taskrun: bool,
    /// The most SQEs one io_uring_enter hands the kernel (0: all a poll found queued).
    /// `None`: 2 on a DEFER_TASKRUN ring, all on any other (see [`Uring::new`]).
    pub submit_batch: Option<u32>,
}

/// An io_uring ring over one file.
pub struct Uring {
    ring: IoUring,
    file: Arc<File>,
    fixed: bool,
    queued: usize,
    inflight: usize,
    /// The most SQEs per enter; `usize::MAX`: all, pushed straight into the ring.
    submit_batch: usize,
    /// With a bounded `submit_batch`: entries pushed and not yet in the submission ring,
    /// in order (the ring gets them `submit_batch` at a time; what a poll's last enter
    /// did not take waits for the next poll).
    held: VecDeque<squeue::Entry>,
    /// io_uring_enter calls made to submit.
    submit_calls: u64,
    reg: Option<RegTable>,
    /// I/Os sent as fixed-buffer operations.
    fixed_ios: u64,
    /// Made for a reactor in interrupt mode (see [`Uring::new`]).
    interrupt: bool,
}

const NO_SLOT: u16 = u16::MAX;

/// The registered-buffer slots of a ring.
struct RegTable {
    /// Buffer id per slot.
    ids: Vec<Option<u64>>,
    /// I/Os in flight per slot.
    busy: Vec<u32>,
    slot_of: HashMap<u64, u16>,
    /// Slot of each in-flight fixed I/O, indexed by user data (the bdev's small slab keys),
    /// [`NO_SLOT`] otherwise: no hashing per I/O.
    ud_slot: Vec<u16>,
    hand: usize,
}

/// Whether this kernel sets up a DEFER_TASKRUN ring (6.1 and later).
pub fn probe_defer_taskrun() -> io::Result<()> {
    IoUring::<squeue::Entry>::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_taskrun_flag()
        .build(8)
        .map(|_| ())
}

impl Uring {
    /// A ring of `entries` entries on `file`, set up as `o` says.
    ///
    /// With `interrupt` (the reactor sleeps when idle), the ring's fd is the channel's
    /// interrupt fd: readable once completions are posted; the ring is then never a
    /// DEFER_TASKRUN one.
    ///
    /// **Submit batch.** The kernel plugs an enter of more than two SQEs: no request of
    /// it reaches the device before the last is prepared, and where the device sets the
    /// pace that wait is lost throughput (one enter per poll: 0.93x fio on the virtio disk
    /// here). On a DEFER_TASKRUN ring two per enter took the virtio disk to 1.04x fio and
    /// kept the CPU-bound loop device level, ahead of fio, so that is the default there.
    /// On a plain ring, small enters lost 25 to 40 % on the loop device (each
    /// completion then interrupts the reactor to post it, and unplugged requests
    /// complete one by one), so a plain ring takes the whole batch in one enter. With
    /// SQPOLL the kernel thread submits, and the option is ignored (`bdev_uring_create`
    /// refuses the pair).
    pub fn new(file: Arc<File>, entries: u32, o: &RingOpts, interrupt: bool) -> io::Result<Uring> {
        let RingOpts {
            sqpoll,
            fixed_file,
            registered_buffers,
            defer_taskrun,
            submit_batch,
        } = *o;
        let entries = entries.next_power_of_two().max(8);
        // A plain ring: the kernel posts completions from task work it runs by
        // interrupting the reactor, so they show up without a syscall. COOP_TASKRUN (with
        // the TASKRUN flag) defers that work to our next io_uring_enter instead, which
        // cost a syscall per poll with completions: 7 % fewer IOPS on a loop device over
        // tmpfs, six pairs of 4 s out of six (docs/benchmarks.md). A plain ring also
        // wakes a reactor asleep in interrupt mode.
        let mut b = IoUring::builder();
        if let Some((idle, cpu)) = sqpoll {
            b.setup_sqpoll(idle);
            if let Some(cpu) = cpu {
                b.setup_sqpoll_cpu(cpu);
            }
        }
        // DEFER_TASKRUN: completions wait in the kernel until our next enter (submit, or
        // a poll that sees the TASKRUN flag), with no interrupt of the reactor for each.
        // Not in interrupt mode, where the ring's fd must wake a sleeping reactor.
        let defer = defer_taskrun && !interrupt;
        if defer {
            b.setup_single_issuer()
                .setup_defer_taskrun()
                .setup_taskrun_flag();
        }
        let submit_batch = match (sqpoll, submit_batch) {
            (Some(_), _) => usize::MAX,
            (None, Some(n)) => crate::engine::per_call(n),
            (None, None) if defer => crate::engine::per_call(crate::engine::SUBMIT_BATCH),
            (None, None) => usize::MAX,
        };
        let ring = b.build(entries)?;
        if fixed_file {
            ring.submitter().register_files(&[file.as_raw_fd()])?;
        }
        let reg = if registered_buffers > 0 {
            ring.submitter()
                .register_buffers_sparse(registered_buffers as u32)?;
            let n = registered_buffers as usize;
            Some(RegTable {
                ids: vec![None; n],
                busy: vec![0; n],
                slot_of: HashMap::with_capacity(n),
                ud_slot: Vec::new(),
                hand: 0,
            })
        } else {
            None
        };
        Ok(Uring {
            ring,
            file,
            fixed: fixed_file,
            queued: 0,
            inflight: 0,
            submit_batch,
            held: VecDeque::new(),
            submit_calls: 0,
            reg,
            fixed_ios: 0,
            interrupt,
        })
    }

    /// The slot holding buffer (id, start, len), registering it if need be; `None` when no
    /// slot is free of I/O or the kernel refuses.
    fn slot_for(&mut self, id: u64, base: *mut u8, len: usize) -> Option<u16> {
        let t = self.reg.as_mut()?;
        if let Some(&s) = t.slot_of.get(&id) {
            return Some(s);
        }
        let n = t.ids.len();
        let victim = (0..n).map(|k| (t.hand + k) % n).find(|&k| t.busy[k] == 0)?;
        t.hand = (victim + 1) % n;
        let iov = libc::iovec {
            iov_base: base.cast(),
            iov_len: len,
        };
        // SAFETY: (base, len) is a live caller buffer held by the I/O being pushed; the
        // kernel pins its pages. The slot is free of I/O; a stale registration it held is
        // only ever named by its old buffer's id, which never comes back.
        let r = unsafe {
            self.ring
                .submitter()
                .register_buffers_update(victim as u32, &[iov], None)
        };
        if r.is_err() {
            return None;
        }
        if let Some(old) = t.ids[victim].replace(id) {
            t.slot_of.remove(&old);
        }
        t.slot_of.insert(id, victim as u16);
        Some(victim as u16)
    }

    fn entry(&self, op: Op) -> squeue::Entry {
        macro_rules! with_fd {
            ($e:expr) => {
                if self.fixed {
                    $e(types::Fixed(0))
                } else {
                    $e(types::Fd(self.file.as_raw_fd()))
                }
            };
        }
        match op {
            // One segment: the plain opcodes, as fio uses by default (the kernel copies
            // no iovec array in).
            Op::Readv {
                iov, cnt, offset, ..
            } => match single_segment(iov, cnt) {
                Some((p, l)) => with_fd!(|fd| opcode::Read::new(fd, p, l).offset(offset).build()),
                None => with_fd!(|fd| opcode::Readv::new(fd, iov, cnt).offset(offset).build()),
            },
            Op::Writev {
                iov, cnt, offset, ..
            } => match single_segment(iov, cnt) {
                Some((p, l)) => {
                    with_fd!(|fd| opcode::Write::new(fd, p.cast_const(), l)
                        .offset(offset)
                        .build())
                }
                None => with_fd!(|fd| opcode::Writev::new(fd, iov, cnt).offset(offset).build()),
            },
            Op::Fsync => with_fd!(|fd| opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build()),
        }
    }
}

/// The segment of a one-segment op, if its length fits the 32 bits of a plain or
/// fixed-buffer READ/WRITE.
fn single_segment(iov: *const libc::iovec, cnt: u32) -> Option<(*mut u8, u32)> {
    if cnt != 1 {
        return None;
    }
    // SAFETY: the caller passes `cnt` valid segments (`push`'s contract).
    let seg = unsafe { iov.read() };
    Some((seg.iov_base.cast(), u32::try_from(seg.iov_len).ok()?))
}

impl Engine for Uring {
    unsafe fn push(&mut self, op: Op, user_data: u64) -> io::Result<()> {
        // No more in flight than the completion queue holds: past that the kernel parks
        // completions on an overflow list, flushed only by an enter with GETEVENTS, and
        // the ring's fd stays readable meanwhile (a sleeping reactor would spin).
        if self.inflight >= self.ring.params().cq_entries() as usize {
            return Err(io::Error::from_raw_os_error(libc::EAGAIN));
        }
        // A single-segment I/O on a known buffer goes as a fixed-buffer operation.
        let fixed = match op {
            Op::Readv {
                iov,
                cnt: 1,
                offset,
                buf: Some((id, base, len)),
            }
            | Op::Writev {
                iov,
                cnt: 1,
                offset,
                buf: Some((id, base, len)),
            } if self.reg.is_some() => {
                let read = matches!(op, Op::Readv { .. });
                let seg = single_segment(iov, 1);
                seg.and_then(|(p, l)| Some((p, l, self.slot_for(id, base, len)?)))
                    .map(|(p, l, slot)| {
                        let fd = self.file.as_raw_fd();
                        let e = match (read, self.fixed) {
                            (true, true) => opcode::ReadFixed::new(types::Fixed(0), p, l, slot)
                                .offset(offset)
                                .build(),
                            (true, false) => opcode::ReadFixed::new(types::Fd(fd), p, l, slot)
                                .offset(offset)
                                .build(),
                            (false, true) => {
                                opcode::WriteFixed::new(types::Fixed(0), p.cast_const(), l, slot)
                                    .offset(offset)
                                    .build()
                            }
                            (false, false) => {
                                opcode::WriteFixed::new(types::Fd(fd), p.cast_const(), l, slot)
                                    .offset(offset)
                                    .build()
                            }
                        };
                        (e, slot)
                    })
            }
            _ => None,
        };
        let (e, slot) = match fixed {
            Some((e, slot)) => (e, Some(slot)),
            None => (self.entry(op), None),
        };
        let e = e.user_data(user_data);
        let r = if self.submit_batch == usize::MAX {
            // SAFETY: the caller keeps the op's segments valid until it is reaped (this
            // function's contract); the entry names nothing else.
            unsafe { self.ring.submission().push(&e) }
        } else {
            // Into the ring at the next poll, a few at a time (`submit`).
            self.held.push_back(e);
            Ok(())
        };
        match r {
            Ok(()) => {
                self.queued += 1;
                self.inflight += 1;
                if let (Some(slot), Some(t)) = (slot, self.reg.as_mut()) {
                    t.busy[slot as usize] += 1;
                    let i = user_data as usize;
                    if i >= t.ud_slot.len() {
                        t.ud_slot.resize(i + 1, NO_SLOT);
                    }
                    t.ud_slot[i] = slot;
                    self.fixed_ios += 1;
                }
                Ok(())
            }
            Err(_) => Err(io::Error::from_raw_os_error(libc::EAGAIN)),
        }
    }

    fn submit(&mut self) -> io::Result<usize> {
        if self.queued == 0 {
            // Completions parked on the kernel's overflow list (io-uring enters with
            // GETEVENTS when the ring says so): have them posted.
            // Completions held back for us (DEFER_TASKRUN's TASKRUN flag): the same.
            let sq = self.ring.submission();
            if self.inflight > 0 && (sq.cq_overflow() || sq.taskrun()) {
                drop(sq);
                self.ring.submit()?;
            }
            return Ok(0);
        }
        if self.submit_batch == usize::MAX {
            self.submit_calls += 1;
            let n = self.ring.submit()?;
            self.queued = self.queued.saturating_sub(n);
            return Ok(n);
        }
        // A few entries at a time: moved into the ring when the kernel has taken all it
        // had (what a failed or partial enter left there goes first, and once).
        let mut n = 0;
        loop {
            let mut sq = self.ring.submission();
            if sq.is_empty() {
                let k = self.held.len().min(self.submit_batch).min(sq.capacity());
                let mut pushed = 0;
                for e in self.held.iter().take(k) {
                    // SAFETY: as in `push`, whose caller keeps the op's segments valid
                    // until it is reaped.
                    if unsafe { sq.push(e) }.is_err() {
                        break;
                    }
                    pushed += 1;
                }
                self.held.drain(..pushed);
            }
            if sq.is_empty() {
                break;
            }
            drop(sq);
            self.submit_calls += 1;
            let m = self.ring.submit()?;
            self.queued = self.queued.saturating_sub(m);
            n += m;
            if !self.ring.submission().is_empty() {
                // The kernel took part of them: the rest wait for the next poll.
                break;
            }
        }
        Ok(n)
    }

    fn reap(&mut self, f: &mut dyn FnMut(u64, i64)) -> usize {
        let mut n = 0;
        for c in self.ring.completion() {
            if let Some(t) = self.reg.as_mut() {
                if let Some(s) = t.ud_slot.get_mut(c.user_data() as usize) {
                    if *s != NO_SLOT {
                        t.busy[*s as usize] -= 1;
                        *s = NO_SLOT;
                    }
                }
            }
            f(c.user_data(), c.result() as i64);
            n += 1;
        }
        self.inflight -= n.min(self.inflight);
        n
    }

    fn wait_one(&mut self) -> io::Result<()> {
        if self.inflight == 0 {
            return Ok(());
        }
        self.ring.submit_and_wait(1).map(|_| ())
    }

    fn in_flight(&self) -> usize {
        self.inflight
    }

    fn fixed_ios(&self) -> u64 {
        self.fixed_ios
    }

    fn submit_calls(&self) -> u64 {
        self.submit_calls
    }

    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn interrupt_fd(&self) -> Option<RawFd> {
        self.interrupt.then(|| self.ring.as_raw_fd())
    }
}
