//! I/O contexts and their life: validation, submission, completion.
//!
//! An [`IoCtx`] is a pooled, boxed context; a module holds it as a [`BdevIo`] while the
//! I/O is in flight. Boxes are recycled through the thread's cache, so the steady state
//! allocates nothing; the segment vector keeps its capacity across uses.

use std::fmt;

use super::channel::{BdevChannel, ChanCtx};
use super::desc::Desc;
use super::{IoPayload, IoStatus, IoType, Payload, Reject};
use crate::dma::{self, BlockMem, Iov};
use crate::error::Result;
use crate::thread::{DEFER_INLINE, IoChannel};

tiny_fn::tiny_fn! {
    /// A completion callback, stored inline in the I/O context.
    pub(crate) struct RawCallback = FnOnce(status: IoStatus, payload: Payload);
}

pub(crate) type RawCb = RawCallback<'static, DEFER_INLINE>;

/// Who hears of an I/O's completion: a callback, or an awaiting future's cell.
pub(crate) enum IoCallback {
    Fn(RawCb),
    Cell(std::rc::Rc<super::channel::AsyncCell>),
}

impl IoCallback {
    #[inline]
    pub(crate) fn new(f: impl FnOnce(IoStatus, Payload) + 'static) -> Self {
        IoCallback::Fn(RawCb::new(f))
    }

    #[inline]
    pub(crate) fn call(self, status: IoStatus, payload: Payload) {
        match self {
            IoCallback::Fn(f) => f.call(status, payload),
            IoCallback::Cell(c) => c.complete(status, payload),
        }
    }
}

/// The pooled context of one I/O.
pub(crate) struct IoCtx {
    ch: Option<IoChannel<ChanCtx>>,
    io_type: IoType,
    offset_blocks: u64,
    num_blocks: u64,
    block_len: u32,
    iovs: Vec<Iov>,
    payload: Payload,
    cb: Option<IoCallback>,
    submit_tick: u64,
    status: IoStatus,
}

impl Default for IoCtx {
    fn default() -> Self {
        IoCtx {
            ch: None,
            io_type: IoType::Read,
            offset_blocks: 0,
            num_blocks: 0,
            block_len: 0,
            iovs: Vec::with_capacity(4),
            payload: Payload::None,
            cb: None,
            submit_tick: 0,
            status: IoStatus::Success,
        }
    }
}

/// A request waiting for an I/O context (io_wait).
pub(crate) struct Pending {
    ch: IoChannel<ChanCtx>,
    io_type: IoType,
    offset_blocks: u64,
    num_blocks: u64,
    payload: Payload,
    cb: IoCallback,
}

/// An I/O in a module's hands. Complete it with [`BdevIo::complete`]; dropping it
/// completes it as [`IoStatus::Failed`], so no I/O is ever lost.
pub struct BdevIo {
    ctx: Option<Box<IoCtx>>,
}

impl fmt::Debug for BdevIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.ctx {
            Some(c) => write!(
                f,
                "BdevIo({} {}+{})",
                c.io_type, c.offset_blocks, c.num_blocks
            ),
            None => f.write_str("BdevIo(completed)"),
        }
    }
}

impl BdevIo {
    #[inline]
    fn c(&self) -> &IoCtx {
        // Only `complete` and `drop` take the context out, and both consume the BdevIo.
        self.ctx
            .as_deref()
            .expect("BdevIo context present until completion")
    }

    /// The I/O type.
    #[inline]
    pub fn io_type(&self) -> IoType {
        self.c().io_type
    }

    /// First block.
    #[inline]
    pub fn offset_blocks(&self) -> u64 {
        self.c().offset_blocks
    }

    /// Number of blocks.
    #[inline]
    pub fn num_blocks(&self) -> u64 {
        self.c().num_blocks
    }

    /// Block size of the bdev, in bytes.
    #[inline]
    pub fn block_len(&self) -> u32 {
        self.c().block_len
    }

    /// Byte offset of the first block.
    #[inline]
    pub fn offset_bytes(&self) -> u64 {
        self.c().offset_blocks * self.c().block_len as u64
    }

    /// Length in bytes.
    #[inline]
    pub fn len_bytes(&self) -> u64 {
        self.c().num_blocks * self.c().block_len as u64
    }

    /// The data segments (exactly `len_bytes` in total for reads and writes, none
    /// otherwise), valid until completion.
    #[inline]
    pub fn iovs(&self) -> &[Iov] {
        &self.c().iovs
    }

    /// When the I/O was submitted, in the thread's ticks.
    pub fn submit_tick(&self) -> u64 {
        self.c().submit_tick
    }

    /// Copies `mem[offset..]` into the I/O's buffers (a read served from memory).
    pub fn copy_from_mem(&self, mem: &BlockMem, offset: u64) -> Result<()> {
        mem.copy_to_iovs(offset, self.iovs())
    }

    /// Copies the I/O's buffers into `mem[offset..]` (a write served by memory).
    pub fn copy_to_mem(&self, mem: &BlockMem, offset: u64) -> Result<()> {
        mem.copy_from_iovs(offset, self.iovs())
    }

    /// Visits the data segments as slices (e.g. to checksum or encrypt written data).
    pub fn for_each_segment(&self, f: impl FnMut(&[u8])) {
        // SAFETY: the segments point into buffers this I/O owns (or its parent owns, and
        // keeps until this I/O completes); while a module holds the BdevIo, the I/O is the
        // only user of those bytes and runs on this thread alone.
        unsafe { dma::for_each_segment(self.iovs(), f) }
    }

    /// Visits the data segments as mutable slices (e.g. to fill a read).
    pub fn for_each_segment_mut(&mut self, f: impl FnMut(&mut [u8])) {
        // SAFETY: as in for_each_segment; &mut self excludes other slices from this I/O, and
        // an I/O's segments never overlap (each comes from a distinct buffer or range).
        unsafe { dma::for_each_segment_mut(self.iovs(), f) }
    }

    /// Completes the I/O. The submitter's callback runs on its thread: now, or — when
    /// called inside a submission — at the thread's next deferred-call pass.
    #[inline]
    pub fn complete(mut self, status: IoStatus) {
        if let Some(ctx) = self.ctx.take() {
            complete_ctx(ctx, status);
        }
    }
}

impl Drop for BdevIo {
    fn drop(&mut self) {
        if let Some(ctx) = self.ctx.take() {
            tracing::warn!(io_type = %ctx.io_type, offset = ctx.offset_blocks, "I/O dropped by its module; completing it as failed");
            complete_ctx(ctx, IoStatus::Failed);
        }
    }
}

#[inline]
fn complete_ctx(mut ctx: Box<IoCtx>, status: IoStatus) {
    ctx.status = status;
    let Some(ch) = ctx.ch.as_ref() else { return };
    if ch.tctx.submit_depth.get() > 0 {
        let t = ch.tctx.clone();
        t.defer(move || finish(ctx));
        return;
    }
    finish(ctx);
}

#[inline]
fn finish(mut ctx: Box<IoCtx>) {
    let Some(ch) = ctx.ch.take() else { return };
    let cb = ctx.cb.take();
    let payload = std::mem::take(&mut ctx.payload);
    let status = ctx.status;
    ctx.iovs.clear();
    ch.outstanding.set(ch.outstanding.get() - 1);
    let tctx = &ch.tctx;
    let ticks = tctx.now.get().saturating_sub(ctx.submit_tick);
    let bytes = ctx.num_blocks * ctx.block_len as u64;
    ch.stats
        .record(ctx.io_type, bytes, ticks, status.is_success());
    tctx.free(ctx);
    if let Some(cb) = cb {
        cb.call(status, payload);
    }
    if tctx.waiting.get() > 0 {
        tctx.retry_waiters();
    }
}

/// Checks a request against the descriptor, channel and bdev.
#[inline]
fn validate<P: IoPayload>(
    desc: &Desc,
    c: &ChanCtx,
    io_type: IoType,
    offset: u64,
    num: u64,
    payload: &P,
) -> Result<(), Reject> {
    let b = &*c.bdev;
    if !std::ptr::eq(desc.bdev_inner(), b) {
        return Err(Reject::WrongChannel);
    }
    if io_type.is_write() && !desc.is_writable() {
        return Err(Reject::ReadOnly);
    }
    if b.supported & io_type.bit() == 0 {
        return Err(Reject::Unsupported);
    }
    match offset.checked_add(num) {
        Some(end) if end <= b.num_blocks.load(std::sync::atomic::Ordering::Relaxed) => {}
        _ => return Err(Reject::OutOfRange),
    }
    if io_type.has_data() {
        if num > b.max_rw || payload.segments() > b.max_segs {
            return Err(Reject::TooLarge);
        }
        // num <= num_blocks and num_blocks * block_len fits in u64 (checked at registration).
        if (payload.data_len() as u64) < num * b.block_len as u64 {
            return Err(Reject::BufferTooSmall);
        }
        if payload.misaligned(b.align_mask) {
            return Err(Reject::Misaligned);
        }
    }
    Ok(())
}

/// Submits a request: validate, get a context (or wait for one), hand it to the module.
#[inline]
pub(crate) fn submit<P: IoPayload>(
    desc: &Desc,
    ch: &BdevChannel,
    io_type: IoType,
    offset: u64,
    num: u64,
    payload: P,
    cb: IoCallback,
) {
    let c = &*ch.ch;
    if let Err(r) = validate(desc, c, io_type, offset, num, &payload) {
        return reject(c, r, payload.into_payload(), cb);
    }
    let tctx = &c.tctx;
    // Don't jump the queue of requests already waiting for a context.
    if tctx.waiting.get() == 0 {
        if let Some(mut ctx) = tctx.alloc() {
            if io_type.has_data() {
                payload.push_iovs(&mut ctx.iovs, (num * c.bdev.block_len as u64) as usize);
            }
            ctx.payload = payload.into_payload();
            ctx.cb = Some(cb);
            return dispatch(&ch.ch, ctx, io_type, offset, num);
        }
    }
    tctx.wait(Pending {
        ch: ch.ch.clone(),
        io_type,
        offset_blocks: offset,
        num_blocks: num,
        payload: payload.into_payload(),
        cb,
    });
}

#[cold]
fn reject(c: &ChanCtx, r: Reject, payload: Payload, cb: IoCallback) {
    // Completes later, not inside the caller's submit, as every completion does.
    c.tctx
        .defer(move || cb.call(IoStatus::Rejected(r), payload));
}

/// Starts a request that waited for a context.
pub(crate) fn start(p: Pending, mut ctx: Box<IoCtx>) {
    let Pending {
        ch,
        io_type,
        offset_blocks,
        num_blocks,
        payload,
        cb,
    } = p;
    if io_type.has_data() {
        payload.push_iovs(
            &mut ctx.iovs,
            (num_blocks * ch.bdev.block_len as u64) as usize,
        );
    }
    ctx.payload = payload;
    ctx.cb = Some(cb);
    dispatch(&ch, ctx, io_type, offset_blocks, num_blocks);
}

/// Fills in the rest of the context and calls the module.
#[inline]
fn dispatch(
    ch: &IoChannel<ChanCtx>,
    mut ctx: Box<IoCtx>,
    io_type: IoType,
    offset_blocks: u64,
    num_blocks: u64,
) {
    let c = &**ch;
    ctx.io_type = io_type;
    ctx.offset_blocks = offset_blocks;
    ctx.num_blocks = num_blocks;
    ctx.block_len = c.bdev.block_len;
    ctx.submit_tick = c.tctx.now.get();
    ctx.status = IoStatus::Success;
    ctx.ch = Some(ch.clone());
    c.outstanding.set(c.outstanding.get() + 1);
    let depth = &c.tctx.submit_depth;
    depth.set(depth.get() + 1);
    c.module.submit(BdevIo { ctx: Some(ctx) });
    depth.set(depth.get() - 1);
}
