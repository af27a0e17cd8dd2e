//! The generic I/O services every bdev gets from the layer (SPDK's bdev.c does the same):
//!
//! - **splitting**: an I/O that crosses the bdev's optimal I/O boundary (when it asks for
//!   splits there), exceeds its max transfer size, or has more or larger segments than it
//!   accepts, goes to the module as several children, each within every limit;
//! - **bounce buffers**: data whose buffers break the bdev's required alignment goes
//!   through an aligned buffer (copied in for a write, out for a read);
//! - **write_zeroes emulation**: a bdev that writes but can't write zeroes gets writes of a
//!   shared zero buffer (1 MiB, as SPDK's); one that can, but not that many blocks at once
//!   (`max_write_zeroes`), gets the write_zeroes in pieces;
//! - **NOMEM retry**: an I/O the module completes with `NoMem` waits on its channel and is
//!   resubmitted when another I/O on the channel completes, or after 100 us when none is
//!   outstanding (SPDK's `nomem_io`).
//!
//! A serviced I/O is the consumer's context (the parent): it carries the buffers and the
//! callback, and counts once in the statistics. Its children are internal contexts sent to
//! the module directly; at most [`MAX_CHILDREN`] are in flight, more are issued as those
//! complete. The parent completes, with the first failure if any, when the last is done,
//! so the buffers the children use stay the parent's until then. The per-I/O state
//! ([`Multi`]) is allocated: these paths are for the exceptional I/O, not the common one.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::channel::ChanCtx;
use super::io::{IoCallback, IoCtx};
use super::{IoStatus, IoType, Reject};
use crate::dma::{DmaBuf, Iov};
use crate::thread::{IoChannel, PollStatus, Poller};

/// Children of one I/O in flight at once.
pub(crate) const MAX_CHILDREN: u32 = 32;

/// Size of the zero buffer write_zeroes emulation writes from.
pub(crate) const ZERO_BUFFER_SIZE: usize = 1 << 20;

/// The state of one serviced I/O.
struct Multi {
    ch: IoChannel<ChanCtx>,
    parent: RefCell<Option<Box<IoCtx>>>,
    /// What the children do.
    child_type: IoType,
    /// Aligned copy of the data (bounce), or the zero buffer (write_zeroes).
    src: Src,
    next_lba: Cell<u64>,
    next_byte: Cell<usize>,
    end_lba: u64,
    inflight: Cell<u32>,
    status: Cell<IoStatus>,
}

enum Src {
    /// The parent's own segments.
    Parent,
    /// An aligned copy of the parent's data.
    Bounce(DmaBuf),
    /// The shared zero buffer.
    Zero(Arc<DmaBuf>),
    /// No data (write_zeroes split at `max_write_zeroes`).
    NoData,
}

/// Starts a serviced I/O: `ctx` is filled in (type, range, segments, payload, callback,
/// channel) and counted outstanding, but not given to the module.
pub(crate) fn start(ctx: Box<IoCtx>) {
    let Some(ch) = ctx.cur_ch().cloned() else {
        return;
    };
    let b = &ch.bdev;
    let (io_type, offset, num) = (ctx.io_type, ctx.offset_blocks, ctx.num_blocks);
    let emulate_wz = b.emulate_wz.load(Ordering::Relaxed);
    let (child_type, src) = if io_type == IoType::WriteZeroes && !emulate_wz {
        // Longer than the module takes: split, no data.
        (io_type, Src::NoData)
    } else if io_type == IoType::WriteZeroes {
        match zero_buffer() {
            Some(z) => (IoType::Write, Src::Zero(z)),
            None => return super::io::complete_ctx(ctx, IoStatus::Failed),
        }
    } else if b.align_mask != 0
        && ctx
            .iovs
            .iter()
            .any(|v| (v.base() as usize | v.len()) & b.align_mask != 0)
    {
        let len = (num * b.block_len as u64) as usize;
        let mut bounce = match DmaBuf::new(len, b.align_mask + 1) {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(bdev = %b.props.name, "bounce buffer: {e}");
                return super::io::complete_ctx(ctx, IoStatus::Failed);
            }
        };
        if io_type == IoType::Write {
            let mut at = 0;
            // SAFETY: the parent owns its segments until it completes, and nothing else
            // uses them while this copy runs on its thread.
            unsafe {
                crate::dma::for_each_segment(&ctx.iovs, |s| {
                    bounce[at..at + s.len()].copy_from_slice(s);
                    at += s.len();
                })
            };
        }
        (io_type, Src::Bounce(bounce))
    } else {
        (io_type, Src::Parent)
    };
    let m = Rc::new(Multi {
        ch,
        parent: RefCell::new(Some(ctx)),
        child_type,
        src,
        next_lba: Cell::new(offset),
        next_byte: Cell::new(0),
        end_lba: offset + num,
        inflight: Cell::new(0),
        status: Cell::new(IoStatus::Success),
    });
    issue(&m);
}

/// The runtime's zero buffer, allocated on first use.
fn zero_buffer() -> Option<Arc<DmaBuf>> {
    let rt = crate::thread::with_current(|t| t.runtime().clone())?;
    let z = rt
        .bdev
        .zero_buf
        .get_or_init(|| DmaBuf::page_aligned(ZERO_BUFFER_SIZE).ok().map(Arc::new));
    z.clone()
}

/// Issues children while fewer than [`MAX_CHILDREN`] are in flight and blocks remain.
fn issue(m: &Rc<Multi>) {
    let c = &*m.ch;
    while m.inflight.get() < MAX_CHILDREN
        && m.next_lba.get() < m.end_lba
        && m.status.get().is_success()
    {
        let Some(mut child) = c.tctx.alloc() else {
            if m.inflight.get() == 0 {
                // Nothing in flight to wake us: try again on the next pass.
                let m2 = m.clone();
                c.tctx.defer(move || issue(&m2));
            }
            return;
        };
        let lba = m.next_lba.get();
        let n = {
            let parent = m.parent.borrow();
            let Some(p) = parent.as_ref() else {
                return c.tctx.free(child);
            };
            let bl = c.bdev.block_len as u64;
            match &m.src {
                Src::Parent => next_child(
                    &p.iovs,
                    m.next_byte.get(),
                    lba,
                    m.end_lba,
                    c,
                    &mut child.iovs,
                ),
                Src::Bounce(b) => next_child(
                    &[b.iov(b.len())],
                    m.next_byte.get(),
                    lba,
                    m.end_lba,
                    c,
                    &mut child.iovs,
                ),
                Src::Zero(z) => {
                    next_child(&[z.iov(z.len())], 0, lba, m.end_lba, c, &mut child.iovs)
                }
                Src::NoData => Some((m.end_lba - lba).min(c.bdev.max_wz)),
            }
            .map(|n| (n, (n * bl) as usize))
        };
        let Some((n, bytes)) = n else {
            // No whole block fits the segment limits: the bdev can't take this I/O. (The
            // segments gathered for less than a block go too: a cached context has none.)
            child.iovs.clear();
            c.tctx.free(child);
            m.status.set(IoStatus::Rejected(Reject::TooLarge));
            break;
        };
        m.next_lba.set(lba + n);
        m.next_byte.set(m.next_byte.get() + bytes);
        m.inflight.set(m.inflight.get() + 1);
        let m2 = m.clone();
        child.cb = Some(IoCallback::new(move |status, _, _| child_done(&m2, status)));
        child.internal = true;
        super::io::dispatch(&m.ch, child, m.child_type, lba, n);
    }
    if m.inflight.get() == 0 {
        finish(m);
    }
}

fn child_done(m: &Rc<Multi>, status: IoStatus) {
    m.inflight.set(m.inflight.get() - 1);
    if !status.is_success() && m.status.get().is_success() {
        m.status.set(status);
    }
    issue(m);
}

/// The last child is done: copy a bounced read out, complete the parent.
fn finish(m: &Rc<Multi>) {
    let Some(p) = m.parent.borrow_mut().take() else {
        return;
    };
    let status = m.status.get();
    if let (Src::Bounce(b), IoType::Read, true) = (&m.src, p.io_type, status.is_success()) {
        let mut at = 0;
        // SAFETY: the parent owns its segments and no child uses them any more; the copy
        // runs on the parent's thread.
        unsafe {
            crate::dma::for_each_segment_mut(&p.iovs, |s| {
                s.copy_from_slice(&b[at..at + s.len()]);
                at += s.len();
            })
        };
    }
    super::io::complete_ctx(p, status);
}

/// Fills `out` with the segments of the next child, starting `skip` bytes into `src` at
/// block `lba`: as many whole blocks as the boundary, the transfer size and the segment
/// limits allow. Returns the number of blocks, `None` if not even one fits.
fn next_child(
    src: &[Iov],
    mut skip: usize,
    lba: u64,
    end: u64,
    c: &ChanCtx,
    out: &mut crate::dma::Iovs,
) -> Option<u64> {
    let b = &*c.bdev;
    let bl = b.block_len as usize;
    let mut blocks = (end - lba).min(b.max_rw);
    if b.boundary != 0 {
        blocks = blocks.min(b.boundary - lba % b.boundary);
    }
    let want = blocks as usize * bl;
    let mut got = 0usize;
    'outer: for s in src {
        if skip >= s.len() {
            skip -= s.len();
            continue;
        }
        let mut pos = skip;
        skip = 0;
        while pos < s.len() {
            if got == want || out.len() == b.max_segs {
                break 'outer;
            }
            let l = (s.len() - pos).min(b.max_seg_bytes).min(want - got);
            out.push(s.sub(pos, l));
            pos += l;
            got += l;
        }
    }
    // Whole blocks only: trim the tail.
    let mut excess = got % bl;
    got -= excess;
    while excess > 0 {
        let Some(last) = out.last_mut() else { break };
        if last.len() <= excess {
            excess -= last.len();
            out.pop();
        } else {
            *last = last.sub(0, last.len() - excess);
            excess = 0;
        }
    }
    if got == 0 {
        out.clear();
        return None;
    }
    Some((got / bl) as u64)
}

/// NOMEM: the module ran out of resources for `ctx`; it waits on its channel.
pub(crate) fn nomem_queue(ctx: Box<IoCtx>) {
    let Some(ch) = ctx.cur_ch().cloned() else {
        return;
    };
    ch.nomem.borrow_mut().push_back(ctx);
    ch.nomem_len.set(ch.nomem_len.get() + 1);
    // Completions on the channel retry it too, but none may come (what is outstanding may
    // be only parents of the I/O waiting here): poll as well, until the queue is empty.
    if ch.nomem_poller.borrow().is_none() {
        let chw = ch.clone();
        match Poller::register_us("bdev_nomem_retry", 100, move || {
            nomem_retry(&chw);
            PollStatus::Busy
        }) {
            Ok(p) => *ch.nomem_poller.borrow_mut() = Some(p),
            Err(e) => tracing::warn!("NOMEM retry poller: {e}"),
        }
    }
}

/// Resubmits what waits for resources on `ch` (those queued when the pass starts).
pub(crate) fn nomem_retry(ch: &IoChannel<ChanCtx>) {
    let n = ch.nomem_len.get();
    for _ in 0..n {
        let Some(mut ctx) = ch.nomem.borrow_mut().pop_front() else {
            break;
        };
        ch.nomem_len.set(ch.nomem_len.get() - 1);
        ctx.status = IoStatus::Success;
        super::io::resubmit(ch, ctx);
    }
    if ch.nomem_len.get() == 0 {
        // Dropped after this iteration by the poller machinery.
        drop(ch.nomem_poller.borrow_mut().take());
    }
}

/// Whether I/O with these segments must be serviced (split or bounced) on `b`.
#[inline]
pub(crate) fn needs_service(
    b: &super::registry::BdevInner,
    io_type: IoType,
    offset: u64,
    num: u64,
    iovs: &[Iov],
) -> bool {
    if io_type == IoType::WriteZeroes {
        return b.emulate_wz.load(Ordering::Relaxed) || num > b.max_wz;
    }
    io_type.has_data()
        && (num > b.max_rw
            || iovs.len() > b.max_segs
            || (b.boundary != 0 && crosses(offset, num, b.boundary))
            // Segments are checked only on a bdev with a limit for them.
            || ((b.align_mask != 0 || b.max_seg_bytes != usize::MAX)
                && iovs.iter().any(|v| {
                    // Alignment holds for each segment's start and length (O_DIRECT's rule).
                    (v.base() as usize | v.len()) & b.align_mask != 0 || v.len() > b.max_seg_bytes
                })))
}

/// Whether blocks `offset..offset + num` cross a multiple of `boundary` (not 0). A power
/// of two, as boundaries mostly are (RAID strips), takes a mask instead of a division: at
/// ten million I/Os a second per core, a 64-bit division is a tenth of the budget.
#[inline(always)]
fn crosses(offset: u64, num: u64, boundary: u64) -> bool {
    let within = if boundary.is_power_of_two() {
        offset & (boundary - 1)
    } else {
        offset % boundary
    };
    within + num > boundary
}

/// Takes everything waiting for resources on `ch` (a reset aborts them).
pub(crate) fn nomem_take(ch: &ChanCtx) -> VecDeque<Box<IoCtx>> {
    ch.nomem_len.set(0);
    std::mem::take(&mut *ch.nomem.borrow_mut())
}
