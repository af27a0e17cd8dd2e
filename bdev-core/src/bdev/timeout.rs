//! I/O timeouts (SPDK's `spdk_bdev_set_timeout`): a descriptor asks to hear of its I/Os
//! that take longer than a number of seconds.
//!
//! While any descriptor of a bdev has a timeout, every channel of the bdev records the
//! I/Os submitted through a descriptor in a table (the slow path; without timeouts
//! nothing is recorded). A poller on the descriptor's thread visits the channels every
//! [`POLL_US`]; on each channel's thread, an I/O of that descriptor older than the
//! timeout is reported to the callback once, on that thread, with what it is. Completing
//! it (or not) stays the business of whoever holds it: SPDK's users typically reset or
//! abort.

use std::sync::Arc;

use super::IoType;
use super::channel::{ChanCtx, FLAG_TIMEOUT};

/// How often a descriptor's I/Os are checked.
pub const POLL_US: u64 = 100_000;

/// An I/O that has been outstanding longer than its descriptor's timeout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimedOutIo {
    /// The bdev.
    pub bdev: String,
    /// The I/O type.
    pub io_type: IoType,
    /// First block.
    pub offset_blocks: u64,
    /// Number of blocks.
    pub num_blocks: u64,
    /// How long it has been outstanding, in microseconds.
    pub age_us: u64,
}

/// The callback of [`super::Desc::set_timeout`].
pub type TimeoutCb = Arc<dyn Fn(TimedOutIo) + Send + Sync>;

/// A tracked I/O.
pub(crate) struct Tracked {
    desc: u64,
    tick: u64,
    io_type: IoType,
    offset: u64,
    num: u64,
    reported: bool,
}

/// Records an I/O submitted through descriptor `desc`; returns its key.
pub(crate) fn track(
    c: &ChanCtx,
    desc: u64,
    io_type: IoType,
    offset: u64,
    num: u64,
    tick: u64,
) -> usize {
    c.inflight.borrow_mut().insert(Tracked {
        desc,
        tick,
        io_type,
        offset,
        num,
        reported: false,
    })
}

/// Forgets a completed I/O.
pub(crate) fn untrack(c: &ChanCtx, key: usize) {
    let mut t = c.inflight.borrow_mut();
    if t.contains(key) {
        t.remove(key);
    }
}

/// On a channel's thread: reports `desc`'s I/Os older than `timeout_ticks`.
pub(crate) fn check(c: &ChanCtx, desc: u64, timeout_ticks: u64, cb: &TimeoutCb) {
    let now = c.tctx.now.get();
    let hz = crate::thread::ticks_hz().max(1);
    let mut late = Vec::new();
    for (_, t) in c.inflight.borrow_mut().iter_mut() {
        if t.desc == desc && !t.reported && now.saturating_sub(t.tick) > timeout_ticks {
            t.reported = true;
            late.push(TimedOutIo {
                bdev: c.bdev.props.name.clone(),
                io_type: t.io_type,
                offset_blocks: t.offset,
                num_blocks: t.num,
                age_us: (now - t.tick).saturating_mul(1_000_000) / hz,
            });
        }
    }
    // Outside the borrow: the callback may submit I/O.
    for l in late {
        cb(l);
    }
}

/// Turns tracking on or off on a channel.
pub(crate) fn set_tracking(c: &ChanCtx, on: bool) {
    let f = c.flags.get();
    c.flags.set(if on {
        f | FLAG_TIMEOUT
    } else {
        f & !FLAG_TIMEOUT
    });
}
