//! Per-bdev quality of service (SPDK's `bdev_set_qos_limit`): an IOPS limit and read+write,
//! read-only and write-only bandwidth limits, enforced in 1 ms timeslices.
//!
//! SPDK funnels every I/O of a limited bdev through one QoS thread. Here each limit is a
//! shared budget of atomics that every thread draws from directly, refilled once per
//! timeslice by whichever thread first notices the slice is over: no message per I/O. An
//! I/O is admitted while the budget it draws from is positive (so one I/O may overdraw,
//! and the debt is carried into the next slice, as SPDK does); otherwise it waits in its
//! channel's queue, which a per-channel poller retries every 100 us while it holds I/O.
//! Reads and writes are limited; other types pass. A limit of 0 turns that limit off.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::IoType;
use super::channel::ChanCtx;
use super::io::IoCtx;
use crate::thread::{IoChannel, PollStatus, Poller};

/// The four limits, in `bdev_set_qos_limit`'s units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QosLimits {
    /// I/Os per second (reads and writes), a multiple of 1000.
    pub rw_ios_per_sec: u64,
    /// MiB per second, reads and writes together.
    pub rw_mbytes_per_sec: u64,
    /// MiB per second of reads.
    pub r_mbytes_per_sec: u64,
    /// MiB per second of writes.
    pub w_mbytes_per_sec: u64,
}

impl QosLimits {
    fn as_array(&self) -> [u64; 4] {
        [
            self.rw_ios_per_sec,
            self.rw_mbytes_per_sec,
            self.r_mbytes_per_sec,
            self.w_mbytes_per_sec,
        ]
    }

    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        self.as_array().iter().any(|&x| x != 0)
    }
}

/// Length of a timeslice.
pub(crate) const TIMESLICE_US: u64 = 1000;
/// Most timeslices one refill makes up for (a bdev idle for a while gets no larger burst).
const MAX_CATCH_UP: u64 = 4;
/// Minimum budget per timeslice: one I/O, 512 bytes (SPDK's).
const MIN_PER_SLICE: [i64; 4] = [1, 512, 512, 512];

/// A bdev's QoS state, shared by its channels.
#[derive(Default)]
pub(crate) struct Qos {
    enabled: AtomicBool,
    /// Per second, in I/Os or bytes; 0 = off.
    limits: [AtomicU64; 4],
    per_slice: [AtomicI64; 4],
    remaining: [AtomicI64; 4],
    last_slice: AtomicU64,
    /// Ticks per timeslice (set when limits are set).
    slice_ticks: AtomicU64,
}

impl Qos {
    pub(crate) fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// The limits, in the RPC's units.
    pub(crate) fn limits(&self) -> QosLimits {
        let l = |i: usize| self.limits[i].load(Ordering::Relaxed);
        QosLimits {
            rw_ios_per_sec: l(0),
            rw_mbytes_per_sec: l(1) >> 20,
            r_mbytes_per_sec: l(2) >> 20,
            w_mbytes_per_sec: l(3) >> 20,
        }
    }

    /// Applies new limits; `None` leaves a limit as it is. IOPS round up to a multiple of
    /// 1000, as SPDK's. Returns whether QoS is now on.
    pub(crate) fn set(&self, new: [Option<u64>; 4], now: u64, hz: u64) -> bool {
        for (i, v) in new.iter().enumerate() {
            let Some(v) = *v else { continue };
            let per_sec = if i == 0 {
                let r = v.div_ceil(1000).saturating_mul(1000);
                if r != v {
                    tracing::warn!("QoS: rw_ios_per_sec {v} rounded up to {r}, a multiple of 1000");
                }
                r
            } else {
                v.saturating_mul(1 << 20)
            };
            self.limits[i].store(per_sec, Ordering::Relaxed);
            let slice =
                (per_sec.saturating_mul(TIMESLICE_US) / 1_000_000).min(i64::MAX as u64) as i64;
            let slice = if per_sec == 0 {
                0
            } else {
                slice.max(MIN_PER_SLICE[i])
            };
            self.per_slice[i].store(slice, Ordering::Relaxed);
            self.remaining[i].store(slice, Ordering::Relaxed);
        }
        self.slice_ticks
            .store((hz * TIMESLICE_US / 1_000_000).max(1), Ordering::Relaxed);
        self.last_slice.store(now, Ordering::Relaxed);
        let on = self.limits.iter().any(|l| l.load(Ordering::Relaxed) != 0);
        self.enabled.store(on, Ordering::Release);
        on
    }

    /// Starts the next timeslice(s) if due.
    fn refill(&self, now: u64) {
        let slice = self.slice_ticks.load(Ordering::Acquire);
        let last = self.last_slice.load(Ordering::Relaxed);
        if slice == 0 || now < last.saturating_add(slice) {
            return;
        }
        let n = (now - last) / slice;
        if self
            .last_slice
            .compare_exchange(last, last + n * slice, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return; // another thread refilled
        }
        for i in 0..4 {
            let q = self.per_slice[i].load(Ordering::Relaxed);
            if q == 0 {
                continue;
            }
            // Debt carries over; unspent budget does not. One atomic update, so that a
            // debit or give-back landing meanwhile on another thread is not erased.
            let add = q.saturating_mul(n.min(MAX_CATCH_UP) as i64);
            let _ = self.remaining[i].fetch_update(Ordering::AcqRel, Ordering::Relaxed, |r| {
                Some(r.min(0).saturating_add(add))
            });
        }
    }

    /// Takes the budget for an I/O, if every limit it falls under still has some.
    pub(crate) fn admit(&self, t: IoType, bytes: u64, now: u64) -> bool {
        if !matches!(t, IoType::Read | IoType::Write) {
            return true;
        }
        self.refill(now);
        let b = bytes as i64;
        let costs = [
            1,
            b,
            if t == IoType::Read { b } else { 0 },
            if t == IoType::Write { b } else { 0 },
        ];
        for i in 0..4 {
            if costs[i] == 0 || self.per_slice[i].load(Ordering::Relaxed) == 0 {
                continue;
            }
            if self.remaining[i].fetch_sub(costs[i], Ordering::AcqRel) <= 0 {
                // Out of budget: give back what this I/O took.
                for (j, &cost) in costs.iter().enumerate().take(i + 1) {
                    if cost != 0 && self.per_slice[j].load(Ordering::Relaxed) != 0 {
                        self.remaining[j].fetch_add(cost, Ordering::AcqRel);
                    }
                }
                return false;
            }
        }
        true
    }
}

/// Queues `ctx` on its channel behind QoS, or sends it on if its budget allows.
pub(crate) fn submit(c: &IoChannel<ChanCtx>, ctx: Box<IoCtx>) {
    let q = &c.bdev.qos;
    let bytes = ctx.num_blocks * c.bdev.block_len as u64;
    if c.qos_q.borrow().is_empty() && q.admit(ctx.io_type, bytes, c.tctx.now.get()) {
        return super::io::route_admitted(c, ctx);
    }
    c.qos_q.borrow_mut().push_back(ctx);
    if c.qos_poller.borrow().is_none() {
        let ch = c.clone();
        match Poller::register_us("bdev_qos", TIMESLICE_US / 10, move || poll(&ch)) {
            Ok(p) => *c.qos_poller.borrow_mut() = Some(p),
            Err(e) => tracing::warn!("QoS poller: {e}"),
        }
    }
}

/// Sends on what the budget now allows, in order; stops polling once the queue is empty.
fn poll(c: &IoChannel<ChanCtx>) -> PollStatus {
    let q = &c.bdev.qos;
    let mut sent = 0;
    loop {
        let ctx = {
            let mut qq = c.qos_q.borrow_mut();
            let Some(front) = qq.front() else { break };
            let bytes = front.num_blocks * c.bdev.block_len as u64;
            if q.enabled() && !q.admit(front.io_type, bytes, c.tctx.now.get()) {
                break;
            }
            qq.pop_front()
        };
        let Some(ctx) = ctx else { break };
        sent += 1;
        super::io::route_admitted(c, ctx);
    }
    if c.qos_q.borrow().is_empty() {
        drop(c.qos_poller.borrow_mut().take());
    }
    if sent > 0 {
        PollStatus::Busy
    } else {
        PollStatus::Idle
    }
}

/// Takes what waits for QoS on `c` (a reset aborts it).
pub(crate) fn take_queued(c: &ChanCtx) -> VecDeque<Box<IoCtx>> {
    std::mem::take(&mut *c.qos_q.borrow_mut())
}
