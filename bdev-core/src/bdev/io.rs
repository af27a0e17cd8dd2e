//! I/O contexts and their life: validation, submission, completion.
//!
//! An [`IoCtx`] is a pooled, boxed context; a module holds it as a [`BdevIo`] while the
//! I/O is in flight. Boxes are recycled through the thread's cache, so the steady state
//! allocates nothing; the segment list holds its first segment inline and keeps what it
//! spilled to the heap (an I/O with more segments) across uses.

use std::fmt;
use std::sync::atomic::Ordering;

use super::channel::{BdevChannel, ChanCtx, ThreadCtx};
use super::desc::Desc;
use super::ops::Pass;
use super::service;
use super::{IoPayload, IoStatus, IoType, Payload, Reject};
use crate::dma::{self, BlockMem, Iov};
use crate::error::Result;
use crate::thread::{DEFER_INLINE, IoChannel};

tiny_fn::tiny_fn! {
    /// A completion callback, stored inline in the I/O context.
    /// The payload is lent in place: the callback takes what it keeps of it. The tick is
    /// the I/O's submission tick ([`super::Completion::submit_tick`]).
    pub(crate) struct RawCallback = <'a> FnOnce(status: IoStatus, payload: &'a mut Payload, submit_tick: u64);
    /// A child I/O's completion callback: its status and the parent I/O back.
    pub(crate) struct RawChildCallback = FnOnce(status: IoStatus, parent: BdevIo);
}

pub(crate) type RawCb = RawCallback<'static, DEFER_INLINE>;
pub(crate) type ChildCb = RawChildCallback<'static, DEFER_INLINE>;

/// Who hears of an I/O's completion: a callback, or an awaiting future (by its slot in
/// the submitting thread's table).
pub(crate) enum IoCallback {
    Fn(RawCb),
    Slot(u32),
    /// A child I/O's module: gets the parent back.
    Child(ChildCb),
}

impl IoCallback {
    #[inline]
    pub(crate) fn new(f: impl for<'a> FnOnce(IoStatus, &'a mut Payload, u64) + 'static) -> Self {
        IoCallback::Fn(RawCb::new(f))
    }

    // Always inlined: `finish`'s one call site, where the compiler stopped inlining it
    // once `finish` grew the mirror's frame (a raid1 write's completions +20
    // instructions each).
    #[inline(always)]
    pub(crate) fn call(
        self,
        tctx: &ThreadCtx,
        status: IoStatus,
        payload: &mut Payload,
        parent: Option<BdevIo>,
        submit_tick: u64,
    ) {
        match self {
            IoCallback::Fn(f) => f.call(status, payload, submit_tick),
            IoCallback::Slot(i) => tctx.slot_complete(i, status, std::mem::take(payload)),
            IoCallback::Child(f) => match parent {
                Some(p) => f.call(status, p),
                // A child always carries its parent; nothing to give back otherwise.
                None => debug_assert!(false, "child I/O without its parent"),
            },
        }
    }
}

/// What a forwarded I/O left behind on its way down (see [`BdevIo::forward`]): the
/// upper bdev's channel and offset. Whether the upper module left a callback (the top of
/// `cbs`; if not, the upper I/O completes with the lower one's status) is kept apart, so
/// that a frame is two words: its `CB_*` kind in [`IoCtx::bits`] for the first
/// (`FRAME0_CB`), in `IoCtx::more_cb` for the others.
#[derive(Default)]
struct Frame {
    /// Always there in a pushed frame (an `Option` so that an empty slot needs no
    /// channel).
    ch: Option<IoChannel<ChanCtx>>,
    offset_blocks: u64,
}

/// A frame's callback: none (the upper I/O completes with the lower one's status).
const CB_NONE: u8 = 0;
/// A frame's callback: called whatever the status.
const CB_ALWAYS: u8 = 1;
/// A frame's callback: called when the lower I/O did not succeed; on success it is
/// dropped and the upper I/O completes ([`BdevIo::forward_to_on_error`]).
const CB_ON_ERROR: u8 = 2;
/// A frame's callback: a mirror's read that passed through ([`super::PassThrough::mirror`]),
/// its member in [`IoCtx::member`]: on success the upper I/O completes; on failure the
/// upper module hears of it ([`super::BdevOps::pass_through_failed`]).
const CB_MIRROR: u8 = 3;
/// [`IoCtx::bits`]: the first frame's `CB_*` kind.
const FRAME0_CB: u8 = CB_ALWAYS | CB_ON_ERROR;
const _: () = assert!(CB_MIRROR & !FRAME0_CB == 0);
/// [`IoCtx::bits`]: `desc_id` is set.
const HAS_DESC: u8 = 1 << 2;
/// [`IoCtx::bits`]: the I/O is in its channel's timeout table (`track`).
const TRACKED: u8 = 1 << 3;
/// [`IoCtx::bits`], the top four: how many levels the I/O went down by pass-through
/// ([`super::BdevOps::pass_through`]) before any frame. `ch` stays the upper channel;
/// each level below is the `pass` of the one above, reached through it
/// ([`IoCtx::cur_ch`]).
const HOP: u8 = 1 << 4;
/// [`IoCtx::bits`]: where the pass-through levels are counted.
const HOPS: u8 = !(HOP - 1);

/// How many levels an I/O goes down in place; below that, a forward makes a child I/O
/// (a context of its own, with frames of its own).
const MAX_FRAMES: usize = 5;

/// Frames below the first, kept with the colder fields (a power of two: the index is
/// masked, not checked).
const MORE_FRAMES: usize = MAX_FRAMES - 1;
const _: () = assert!(MORE_FRAMES.is_power_of_two() && MAX_FRAMES <= 5);

/// The pooled context of one I/O.
///
/// `repr(C)`, in this order: the first cache line holds the scalars every I/O touches and
/// the first frame of a forwarded one; the next two the callback, payload and segments;
/// then what only some I/O touches (timeouts, deeper frames), behind bits of the first
/// line. An I/O touches three lines of it, forwarded once or not at all: aligned to a
/// line, or the boxed context (16-byte aligned by malloc) straddles a fourth.
#[repr(C, align(64))]
pub(crate) struct IoCtx {
    pub(crate) ch: Option<IoChannel<ChanCtx>>,
    pub(crate) offset_blocks: u64,
    pub(crate) num_blocks: u64,
    submit_tick: u64,
    pub(crate) status: IoStatus,
    /// Which member of its last pass-through level the I/O went to: a stripe's, the
    /// last level an I/O passes through (0 for a plain one, each level above); or, while
    /// a mirror's frame (`CB_MIRROR`, always frame 0) is pushed, the mirror's member
    /// (taken back to 0 when it pops).
    member: u16,
    /// Frames of the bdevs above the current one, for an I/O forwarded down a stack of
    /// virtual bdevs in place, innermost last: the first here, the others in `frames`.
    /// Kept in the context itself: a forward then calls nothing before the lower module
    /// (no allocation path), so that call can be its last act.
    frame0: Frame,
    block_len: u32,
    pub(crate) io_type: IoType,
    /// A piece of a serviced I/O (split, bounced, emulated): not counted in statistics,
    /// never serviced again.
    pub(crate) internal: bool,
    /// How many frames are in use.
    nframes: u8,
    /// `FRAME0_CB`, `HAS_DESC`, `TRACKED`, and the pass-through levels (`HOP`).
    bits: u8,
    pub(crate) cb: Option<IoCallback>,
    payload: Payload,
    pub(crate) iovs: crate::dma::Iovs,
    /// For a child I/O: the parent whose data it uses, held until the child completes
    /// (an empty `BdevIo` otherwise: one word, where an `Option` would take two and cross
    /// into the fourth cache line).
    parent: BdevIo,
    /// The descriptor it was submitted through, when a timeout may track it (`HAS_DESC`).
    desc_id: u64,
    /// Its key in the channel's timeout table (`TRACKED`).
    track: usize,
    /// The callbacks of the frames that have one (kept apart: most frames have none).
    cbs: Vec<ChildCb>,
    /// Frames 1 and below, and the `CB_*` kind of each.
    frames: [Frame; MORE_FRAMES],
    more_cb: [u8; MORE_FRAMES],
}

// The layout the comment above promises: the scalars and the first frame in line 0, the
// callback in line 1, payload, segments and parent in line 2.
const _: () = {
    use std::mem::offset_of;
    assert!(offset_of!(IoCtx, bits) < 64 && offset_of!(IoCtx, frame0) + 16 <= 64);
    assert!(offset_of!(IoCtx, member) < 64);
    assert!(offset_of!(IoCtx, cb) == 64 && offset_of!(IoCtx, payload) == 128);
    assert!(offset_of!(IoCtx, parent) + std::mem::size_of::<BdevIo>() <= 192);
    assert!(offset_of!(IoCtx, desc_id) >= 192);
};

impl IoCtx {
    /// The channel of the level the I/O is at: `ch`, or `hops` pass-through levels below
    /// it while no frame is pushed (a frame pushed below a pass-through level keeps the
    /// upper channel, and `ch` is the lower one's again).
    pub(crate) fn cur_ch(&self) -> Option<&IoChannel<ChanCtx>> {
        let ch = self.ch.as_ref()?;
        if self.nframes == 0 {
            return passed_to(ch, self.hops(), self.member);
        }
        Some(ch)
    }

    /// Levels gone down by pass-through ([`HOP`]).
    #[inline(always)]
    fn hops(&self) -> u8 {
        self.bits / HOP
    }

    /// Holds a child's parent until the child completes.
    fn hold_parent(&mut self, mut parent: BdevIo) {
        debug_assert!(self.parent.ctx.is_none());
        self.parent.ctx = parent.ctx.take();
        // Empty now: nothing to complete.
        std::mem::forget(parent);
    }

    fn set_desc(&mut self, id: u64) {
        self.desc_id = id;
        self.bits |= HAS_DESC;
    }

    #[inline(always)]
    fn frames_full(&self) -> bool {
        self.nframes as usize >= MAX_FRAMES
    }

    /// Pushes a frame; the caller has checked [`IoCtx::frames_full`].
    #[inline(always)]
    fn push_frame(&mut self, ch: Option<IoChannel<ChanCtx>>, offset_blocks: u64, kind: u8) {
        debug_assert!(!self.frames_full());
        let i = self.nframes as usize;
        self.nframes += 1;
        let f = match i.checked_sub(1) {
            None => {
                self.bits |= kind;
                &mut self.frame0
            }
            Some(j) => {
                // The mask keeps the index in bounds with no check (i < MAX_FRAMES).
                let j = j & (MORE_FRAMES - 1);
                self.more_cb[j] = kind;
                &mut self.frames[j]
            }
        };
        // A slot above `nframes` is empty; forgetting what it held skips a drop check.
        debug_assert!(f.ch.is_none());
        std::mem::forget(std::mem::replace(&mut f.ch, ch));
        f.offset_blocks = offset_blocks;
    }

    #[inline(always)]
    fn pop_frame(&mut self) -> Option<(Option<IoChannel<ChanCtx>>, u64, u8)> {
        let i = (self.nframes as usize).checked_sub(1)?;
        self.nframes = i as u8;
        let (f, kind) = match i.checked_sub(1) {
            None => {
                let kind = self.bits & FRAME0_CB;
                if kind != CB_NONE {
                    self.bits &= !FRAME0_CB;
                }
                (&mut self.frame0, kind)
            }
            Some(j) => {
                let j = j & (MORE_FRAMES - 1);
                (&mut self.frames[j], self.more_cb[j])
            }
        };
        Some((f.ch.take(), f.offset_blocks, kind))
    }
}

impl Default for IoCtx {
    fn default() -> Self {
        IoCtx {
            frame0: Frame::default(),
            frames: Default::default(),
            more_cb: [CB_NONE; MORE_FRAMES],
            nframes: 0,
            bits: 0,
            cbs: Vec::new(),
            ch: None,
            io_type: IoType::Read,
            offset_blocks: 0,
            num_blocks: 0,
            block_len: 0,
            iovs: crate::dma::Iovs::new(),
            payload: Payload::None,
            parent: BdevIo { ctx: None },
            cb: None,
            submit_tick: 0,
            status: IoStatus::Success,
            member: 0,
            internal: false,
            desc_id: 0,
            track: 0,
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
    /// A child's parent, and where in the parent's data the child's starts.
    parent: Option<(ParentRef, usize)>,
    cb: IoCallback,
    desc_id: u64,
    /// When it was submitted: its latency (and its completion's `submit_tick`) counts
    /// the wait for a context, which the layer hides from the submitter.
    submit_tick: u64,
}

/// The parent of a child waiting for a context: held by the child, or shared.
pub(crate) enum ParentRef {
    Owned(BdevIo),
    Shared(SharedIo),
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

    /// The one caller buffer the I/O's data lies in, when it is so (a read or write of one
    /// `DmaBuf`, neither split nor bounced): its id, start and length. An engine can key
    /// kernel registrations of the buffer on the id (io_uring's fixed buffers).
    pub fn data_buffer(&self) -> Option<(u64, *mut u8, usize)> {
        let c = self.c();
        match (&c.payload, c.iovs.as_slice()) {
            (Payload::Buf(b), [v]) if v.base() as usize == b.addr() => {
                Some((b.id(), b.addr() as *mut u8, b.len()))
            }
            _ => None,
        }
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

    /// Hands this I/O's work to another bdev as a child I/O (how a virtual bdev reaches
    /// its base): `io_type` on `num_blocks` blocks at `offset_blocks` of `desc`'s bdev,
    /// its data being this I/O's from `data_offset` bytes on (no copy). The child holds
    /// this I/O until it completes, so this I/O's buffers outlive every use; then `cb`
    /// runs on this thread with the child's status and this I/O, to complete it or go on.
    /// A refused child (range, alignment, permissions) completes through `cb` as well.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn submit_child(
        self,
        desc: &Desc,
        ch: &BdevChannel,
        io_type: IoType,
        offset_blocks: u64,
        num_blocks: u64,
        data_offset: u64,
        cb: impl FnOnce(IoStatus, BdevIo) + 'static,
    ) {
        submit_child(
            self,
            desc,
            ch,
            io_type,
            offset_blocks,
            num_blocks,
            data_offset,
            move || IoCallback::Child(ChildCb::new(cb)),
        );
    }

    /// Forwards this I/O unchanged (type, blocks, data) to `desc`'s bdev as a child I/O:
    /// [`BdevIo::submit_child`] for the common case of a virtual bdev over one base.
    #[inline]
    pub fn forward(
        self,
        desc: &Desc,
        ch: &BdevChannel,
        cb: impl FnOnce(IoStatus, BdevIo) + 'static,
    ) {
        self.forward_in_place(desc, ch, None, WithCb::<_, CB_ALWAYS>(cb));
    }

    /// Forwards this I/O to `desc`'s bdev at another offset (same type, length and data):
    /// [`BdevIo::submit_child`] for a bdev that maps blocks one to one (a partition, a
    /// concatenation).
    ///
    /// When the lower bdev has the same block size, the I/O goes down in place, with no
    /// second context: the core keeps a frame of this bdev's view (channel, offset,
    /// callback) and restores it when the lower bdev completes. Both bdevs account the
    /// I/O in their statistics, as with a child I/O.
    #[inline]
    pub fn forward_to(
        self,
        desc: &Desc,
        ch: &BdevChannel,
        offset_blocks: u64,
        cb: impl FnOnce(IoStatus, BdevIo) + 'static,
    ) {
        self.forward_in_place(desc, ch, Some(offset_blocks), WithCb::<_, CB_ALWAYS>(cb));
    }

    /// Forwards this I/O unchanged and completes it with the lower bdev's status, with no
    /// callback in between: the whole data path of a bdev that only passes I/O through
    /// ([`BdevIo::forward`] with `|status, io| io.complete(status)`, a little cheaper).
    #[inline]
    pub fn forward_and_complete(self, desc: &Desc, ch: &BdevChannel) {
        self.forward_in_place(desc, ch, None, NoCb);
    }

    /// Forwards this I/O to `desc`'s bdev at another offset and completes it with the
    /// lower bdev's status ([`BdevIo::forward_to`] with no callback): the data path of a
    /// bdev that maps each I/O onto one block range of one base (a stripe, a partition).
    #[inline]
    pub fn forward_to_and_complete(self, desc: &Desc, ch: &BdevChannel, offset_blocks: u64) {
        self.forward_in_place(desc, ch, Some(offset_blocks), NoCb);
    }

    /// Forwards this I/O to `desc`'s bdev at another offset; when the lower bdev succeeds,
    /// the I/O completes with success, with no callback in between (what `cb` captured is
    /// dropped), and only otherwise does `cb` get it back: to retry elsewhere, say, as a
    /// mirror's read does. `cb` must take a success too: an I/O that can't go down in
    /// place (another block size, a stack too deep) goes as a child, or is refused, and
    /// then `cb` hears of every status, as with [`BdevIo::forward_to`].
    #[inline]
    pub fn forward_to_on_error(
        self,
        desc: &Desc,
        ch: &BdevChannel,
        offset_blocks: u64,
        cb: impl FnOnce(IoStatus, BdevIo) + 'static,
    ) {
        self.forward_in_place(desc, ch, Some(offset_blocks), WithCb::<_, CB_ON_ERROR>(cb));
    }

    // Always inlined: it is most of a forwarding bdev's data path, and as a call it
    // costs a passthru level ~20 instructions more (callgrind). Every way out is a call
    // made last (a tail call), so the forward saves no registers: with nothing allocated
    // on the way (frames inline) and the lower module's call last, which it can be
    // inside the upper module's submission, where completions are deferred already.
    #[inline(always)]
    fn forward_in_place<C: ForwardCb>(
        mut self,
        desc: &Desc,
        ch: &BdevChannel,
        offset_blocks: Option<u64>,
        cb: C,
    ) {
        let c = &*ch.ch;
        // The context out of `self` first: a `BdevIo` kept in a stack slot through the
        // checks stopped the compiler making the calls below tail calls.
        let ctx = self.ctx.take();
        std::mem::forget(self);
        let Some(mut ctx) = ctx else {
            return;
        };
        // `None`: the same offset (read here, not through `BdevIo::offset_blocks`, whose
        // check for a context would be a panic path on the hot one).
        let offset_blocks = offset_blocks.unwrap_or(ctx.offset_blocks);
        let (t, n) = (ctx.io_type, ctx.num_blocks);
        if c.bdev.block_len != ctx.block_len || ctx.frames_full() {
            return cb.slow(BdevIo { ctx: Some(ctx) }, desc, ch, offset_blocks, None);
        }
        if let Err(r) = validate_common(desc, c, t, offset_blocks, n) {
            return cb.slow(BdevIo { ctx: Some(ctx) }, desc, ch, offset_blocks, Some(r));
        }
        let kind = cb.push(&mut ctx.cbs);
        let up = ctx.ch.replace(ch.ch.clone());
        let o = ctx.offset_blocks;
        ctx.push_frame(up, o, kind);
        ctx.offset_blocks = offset_blocks;
        c.outstanding.set(c.outstanding.get() + 1);
        if c.bdev.has_limits.load(Ordering::Relaxed) {
            return forward_limited(&ch.ch, ctx);
        }
        if (c.flags.get() != 0 || ctx.io_type == IoType::Reset) && !ctx.internal {
            return route_slow(&ch.ch, ctx);
        }
        if c.tctx.submit_depth.get() == 0 {
            // From outside a submission (a poller, a completion): what completes inside
            // the lower module must be deferred, as for any submission.
            return route_admitted_outside(&ch.ch, ctx);
        }
        c.module.submit(BdevIo { ctx: Some(ctx) })
    }

    /// A forward that can't go in place: refused (`r`), or to a bdev of another block size
    /// (as a child I/O).
    #[cold]
    #[inline(never)]
    fn forward_slow(
        self,
        desc: &Desc,
        ch: &BdevChannel,
        offset_blocks: u64,
        cb: Option<ChildCb>,
        r: Option<Reject>,
    ) {
        let cb = move || {
            IoCallback::Child(
                cb.unwrap_or_else(|| ChildCb::new(|s: IoStatus, io: BdevIo| io.complete(s))),
            )
        };
        match r {
            Some(r) => reject(&ch.ch, r, Payload::None, Some(self), cb()),
            None => {
                let (t, n) = (self.io_type(), self.num_blocks());
                submit_child(self, desc, ch, t, offset_blocks, n, 0, cb)
            }
        }
    }

    /// For a write_zeroes the device refused as a command it does not have (an NVMe
    /// target that lists Write Zeroes but whose namespace backend can't zero, say): from
    /// now on the bdev layer emulates write_zeroes on this bdev with writes of zeroes, as
    /// for a bdev that never had it, starting with this I/O. Linux's block layer does the
    /// same (it turns write zeroes off for the queue and falls back to writing zeroes).
    /// Any other I/O, or a bdev that can't write, completes as failed.
    pub fn emulate_write_zeroes(mut self) {
        let Some(ctx) = self.ctx.take() else { return };
        std::mem::forget(self);
        let Some(ch) = ctx.cur_ch().cloned() else {
            return;
        };
        let b = &ch.bdev;
        if ctx.io_type != IoType::WriteZeroes || b.supported & IoType::Write.bit() == 0 {
            return complete_ctx(ctx, IoStatus::Failed);
        }
        if !b.emulate_wz.swap(true, Ordering::Relaxed) {
            tracing::info!(bdev = %b.props.name, "the device refused write_zeroes: emulated with writes from now on");
        }
        b.has_limits.store(true, Ordering::Relaxed);
        start_service(&ch, ctx);
    }

    /// Completes the I/O. The submitter's callback runs on its thread: now, or — when
    /// called inside a submission — at the thread's next deferred-call pass.
    #[inline]
    pub fn complete(mut self, status: IoStatus) {
        let ctx = self.ctx.take();
        // Empty now: skip the drop check.
        std::mem::forget(self);
        if let Some(ctx) = ctx {
            complete_ctx(ctx, status);
        }
    }
}

/// The upper module's callback of a forward, or none ([`NoCb`]): with none, nothing about
/// it is materialised on the forward's path.
trait ForwardCb {
    /// Stores the callback in `cbs`; its `CB_*` kind.
    fn push(self, cbs: &mut Vec<ChildCb>) -> u8;
    /// The forward can't go in place: [`BdevIo::forward_slow`].
    fn slow(self, io: BdevIo, desc: &Desc, ch: &BdevChannel, offset: u64, r: Option<Reject>);
}

/// No callback: the upper I/O completes with the lower one's status.
struct NoCb;

impl ForwardCb for NoCb {
    #[inline(always)]
    fn push(self, _: &mut Vec<ChildCb>) -> u8 {
        CB_NONE
    }

    #[cold]
    #[inline(never)]
    fn slow(self, io: BdevIo, desc: &Desc, ch: &BdevChannel, offset: u64, r: Option<Reject>) {
        io.forward_slow(desc, ch, offset, None, r)
    }
}

/// The upper module's closure and its `CB_*` kind (`CB_ALWAYS`, or `CB_ON_ERROR` for
/// [`BdevIo::forward_to_on_error`]), made into a [`ChildCb`] only where it is stored
/// (built first and moved, its 64 bytes went through the stack; see [`submit`]).
struct WithCb<F, const KIND: u8>(F);

impl<F: FnOnce(IoStatus, BdevIo) + 'static, const KIND: u8> ForwardCb for WithCb<F, KIND> {
    #[inline(always)]
    fn push(self, cbs: &mut Vec<ChildCb>) -> u8 {
        cbs.push(ChildCb::new(self.0));
        KIND
    }

    // Not in place, either kind: the callback hears of every status, as `forward_to`'s
    // does.
    #[inline(always)]
    fn slow(self, io: BdevIo, desc: &Desc, ch: &BdevChannel, offset: u64, r: Option<Reject>) {
        io.forward_slow(desc, ch, offset, Some(ChildCb::new(self.0)), r)
    }
}

/// A forward to a bdev with limits (split, bounce, write_zeroes emulation): a piece of
/// a split upper I/O is serviced here if need be, anything else is routed as usual.
#[inline(never)]
fn forward_limited(ch: &IoChannel<ChanCtx>, ctx: Box<IoCtx>) {
    if ctx.internal {
        return forward_internal(ch, ctx);
    }
    route(ch, ctx)
}

/// [`route_admitted`] for a forward made outside any submission.
#[inline(never)]
fn route_admitted_outside(ch: &IoChannel<ChanCtx>, ctx: Box<IoCtx>) {
    route_admitted(ch, ctx)
}

impl Drop for BdevIo {
    fn drop(&mut self) {
        if let Some(ctx) = self.ctx.take() {
            tracing::warn!(io_type = %ctx.io_type, offset = ctx.offset_blocks, "I/O dropped by its module; completing it as failed");
            complete_ctx(ctx, IoStatus::Failed);
        }
    }
}

#[inline(always)]
pub(crate) fn complete_ctx(mut ctx: Box<IoCtx>, status: IoStatus) {
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
    if ctx.status == IoStatus::NoMem {
        // The module ran out of resources: wait on the channel and try again.
        return service::nomem_queue(ctx);
    }
    // Every level of an I/O forwarded in place was submitted at the same tick and
    // completes now, with the same length: one latency and byte count serves them all.
    let Some((ticks, bytes)) = ctx.ch.as_ref().map(|ch| latency(ch, &ctx)) else {
        return;
    };
    while let Some((up, offset, kind)) = ctx.pop_frame() {
        // A forwarded I/O completed at the lower bdev: account it there and step back
        // up to the upper bdev's view.
        if let Some(ch) = std::mem::replace(&mut ctx.ch, up) {
            account(&ch, ctx.io_type, bytes, ticks, ctx.status, true);
        }
        ctx.offset_blocks = offset;
        if kind != CB_NONE {
            if kind == CB_MIRROR {
                let member = std::mem::take(&mut ctx.member);
                if ctx.status.is_success() {
                    continue;
                }
                return mirror_failed(ctx, member);
            }
            if kind == CB_ON_ERROR && ctx.status.is_success() {
                // Wanted on failure only: the upper I/O succeeds too; go on up.
                drop(ctx.cbs.pop());
                continue;
            }
            if let Some(cb) = ctx.cbs.pop() {
                // The upper module decides; it completes the I/O again later.
                let status = std::mem::replace(&mut ctx.status, IoStatus::Success);
                return cb.call(status, BdevIo { ctx: Some(ctx) });
            }
        }
        // No callback: the upper I/O completes with the same status; go on up.
    }
    let Some(ch) = ctx.ch.take() else { return };
    let status = ctx.status;
    ctx.iovs.clear();
    // One test for the three (a test of its own for the levels below cost a completion
    // with none 13 instructions: the compiler then moved the callback through the stack).
    if ctx.bits & (HAS_DESC | TRACKED | HOPS) != 0 {
        if ctx.bits & HOPS != 0 {
            account_hops(
                &ch,
                ctx.hops(),
                ctx.member,
                ctx.io_type,
                status,
                bytes,
                ticks,
            );
            ctx.member = 0;
        }
        if ctx.bits & TRACKED != 0 {
            super::timeout::untrack(&ch, ctx.track);
        }
        ctx.bits &= !(HAS_DESC | TRACKED | HOPS);
    }
    // A piece of a serviced I/O isn't counted: its parent counts once for all pieces.
    account(&ch, ctx.io_type, bytes, ticks, status, !ctx.internal);
    ctx.internal = false;
    let tctx = &ch.tctx;
    // The callback runs before the context goes back to the cache, and takes the payload
    // from it in place: the callback and payload are not moved through temporaries kept
    // across the free (callgrind: ~30 instructions, half of them loads and stores, and
    // 8 % more null IOPS with those of `set_cb`). A callback that submits again takes
    // another context meanwhile: a thread holds one more than its depth of I/O.
    // The parent is taken out of the empty-or-not `BdevIo` without dropping one (its drop
    // is a call).
    let parent = ctx.parent.ctx.take().map(|p| BdevIo { ctx: Some(p) });
    match ctx.cb.take() {
        Some(cb) => cb.call(tctx, status, &mut ctx.payload, parent, ctx.submit_tick),
        None => drop(parent),
    }
    // What the callback left of the payload (all of it, if it ignores it) goes now, not
    // with the context's next use.
    if !matches!(ctx.payload, Payload::None) {
        ctx.payload = Payload::None;
    }
    tctx.free(ctx);
    if tctx.waiting.get() > 0 {
        tctx.retry_waiters();
    }
}

/// The channel `depth` pass-through levels below `ch` (each one's `pass`, set when the
/// channel was made and never changed): through member 0 of each level but the last,
/// through member `last` of the last (an I/O's [`IoCtx::member`] is its last level's).
fn passed_to(mut ch: &IoChannel<ChanCtx>, depth: u8, last: u16) -> Option<&IoChannel<ChanCtx>> {
    for d in 1..=depth {
        debug_assert!(ch.pass.is_some());
        let i = if d == depth { last } else { 0 };
        ch = &ch.pass.as_ref()?.member(i)?.ch.ch;
    }
    Some(ch)
}

/// Accounts a completed I/O on each level it went down by pass-through below `top`, the
/// lowest first (as frames are).
#[inline(always)]
fn account_hops(
    top: &IoChannel<ChanCtx>,
    hops: u8,
    member: u16,
    io_type: IoType,
    status: IoStatus,
    bytes: u64,
    ticks: u64,
) {
    if hops > 1 {
        return account_deeper(top, hops, member, io_type, status, bytes, ticks);
    }
    if let Some(m) = top.pass.as_ref().and_then(|p| p.member(member)) {
        account(&m.ch.ch, io_type, bytes, ticks, status, true);
    }
}

/// [`account_hops`] for more than one level: a stack of pass-through bdevs (rare), each
/// level found from the top down.
#[cold]
#[inline(never)]
fn account_deeper(
    top: &IoChannel<ChanCtx>,
    hops: u8,
    member: u16,
    io_type: IoType,
    status: IoStatus,
    bytes: u64,
    ticks: u64,
) {
    for depth in (1..=hops).rev() {
        let last = if depth == hops { member } else { 0 };
        if let Some(ch) = passed_to(top, depth, last) {
            account(ch, io_type, bytes, ticks, status, true);
        }
    }
}

/// A completed I/O's latency in ticks, and its length in bytes.
#[inline(always)]
fn latency(ch: &IoChannel<ChanCtx>, ctx: &IoCtx) -> (u64, u64) {
    (
        ch.tctx.now.get().saturating_sub(ctx.submit_tick),
        ctx.num_blocks * ctx.block_len as u64,
    )
}

/// Accounts a completed I/O on the channel of the level it completes at: outstanding,
/// and (`stats`) statistics and histogram; then lets what waits for resources on the
/// channel try again.
#[inline(always)]
fn account(
    ch: &IoChannel<ChanCtx>,
    io_type: IoType,
    bytes: u64,
    ticks: u64,
    status: IoStatus,
    stats: bool,
) {
    ch.outstanding.set(ch.outstanding.get() - 1);
    if stats {
        ch.stats.record(io_type, bytes, ticks, status);
        ch.tally(io_type, ticks);
    }
    if ch.nomem_len.get() > 0 {
        service::nomem_retry(ch);
    }
}

/// A piece of a split upper I/O forwarded in place to a bdev with limits: it was cut to
/// the upper bdev's limits, not necessarily to this one's (a raid0 strip bigger than its
/// member's largest transfer), so it is serviced here, as a parent of its own, if need be.
#[cold]
#[inline(never)]
fn forward_internal(ch: &IoChannel<ChanCtx>, ctx: Box<IoCtx>) {
    let c = &**ch;
    if service::needs_service(
        &c.bdev,
        ctx.io_type,
        ctx.offset_blocks,
        ctx.num_blocks,
        &ctx.iovs,
    ) {
        return start_service(ch, ctx);
    }
    route(ch, ctx);
}

/// Hands `ctx` to the services as a submission does: what completes inside is deferred.
#[cold]
fn start_service(ch: &IoChannel<ChanCtx>, ctx: Box<IoCtx>) {
    let depth = &ch.tctx.submit_depth;
    depth.set(depth.get() + 1);
    service::start(ctx);
    depth.set(depth.get() - 1);
}

/// Sends a context on its way: resets, frozen channels, QoS and timeouts take the slow
/// path; everything else goes to the module (or the services).
#[inline(always)]
fn route(ch: &IoChannel<ChanCtx>, ctx: Box<IoCtx>) {
    if (ch.flags.get() != 0 || ctx.io_type == IoType::Reset) && !ctx.internal {
        return route_slow(ch, ctx);
    }
    route_admitted(ch, ctx)
}

#[cold]
fn route_slow(ch: &IoChannel<ChanCtx>, ctx: Box<IoCtx>) {
    let flags = ch.flags.get();
    if ctx.io_type == IoType::Reset {
        return super::reset::start(ch, ctx);
    }
    if flags & super::channel::FLAG_FROZEN != 0 {
        // Never complete inside the caller's submit.
        let depth = &ch.tctx.submit_depth;
        depth.set(depth.get() + 1);
        complete_ctx(ctx, IoStatus::Aborted);
        depth.set(depth.get() - 1);
        return;
    }
    let mut ctx = ctx;
    if flags & super::channel::FLAG_TIMEOUT != 0
        && ctx.bits & (HAS_DESC | TRACKED) == HAS_DESC
        && ctx.nframes == 0
    {
        ctx.bits |= TRACKED;
        ctx.track = super::timeout::track(
            ch,
            ctx.desc_id,
            ctx.io_type,
            ctx.offset_blocks,
            ctx.num_blocks,
            ctx.submit_tick,
        );
    }
    if flags & super::channel::FLAG_QOS != 0 && ch.bdev.qos.enabled() {
        return super::qos::submit(ch, ctx);
    }
    route_admitted(ch, ctx)
}

/// Hands a context to the module, or to the services when the bdev can't take it as it
/// is (split, bounce, write_zeroes emulation). Completions inside are deferred.
#[inline(always)]
pub(crate) fn route_admitted(ch: &IoChannel<ChanCtx>, ctx: Box<IoCtx>) {
    let c = &**ch;
    let depth = &c.tctx.submit_depth;
    depth.set(depth.get() + 1);
    if c.pass.is_some() {
        pass_down(c, ctx);
    } else if needs_service_here(c, &ctx) {
        service::start(ctx);
    } else {
        c.module.submit(BdevIo { ctx: Some(ctx) });
    }
    depth.set(depth.get() - 1);
}

/// Whether the bdev of `c` can't take `ctx` as it is (split, bounce, write_zeroes
/// emulation), a piece of a serviced I/O aside.
#[inline(always)]
fn needs_service_here(c: &ChanCtx, ctx: &IoCtx) -> bool {
    let b = &*c.bdev;
    b.has_limits.load(Ordering::Relaxed)
        && !ctx.internal
        && service::needs_service(b, ctx.io_type, ctx.offset_blocks, ctx.num_blocks, &ctx.iovs)
}

/// How many levels an I/O goes down by pass-through (at most 15, [`HOP`]); below, the
/// module forwards it.
const MAX_HOPS: u8 = 4;
const _: () = assert!(MAX_HOPS as u16 * HOP as u16 <= u8::MAX as u16);

/// Takes an admitted I/O on `top`, a pass-through channel, down to the first level that
/// must see it: a module that is no pass-through, or one whose base can't take the I/O
/// in place as it is (then that module forwards it, or refuses it, itself): the base
/// needs it split or bounced, or is frozen, has QoS or timeouts; for a stripe, an I/O
/// across strips, and nothing goes further than a stripe's member. Inside a submission:
/// what completes in the module is deferred.
///
/// The limits that count are those of the level whose module gets the I/O: one that
/// passes through sees none, and its own (a raid0's strip boundary, a passthru's copy of
/// its base's) are checked only when the I/O stays at the top.
#[inline(always)]
fn pass_down(top: &ChanCtx, mut ctx: Box<IoCtx>) {
    // An I/O with no frame comes here from the top, once: a member index left by an
    // earlier stripe would misplace the levels counted below. (One forwarded with a
    // frame below its hops comes here again, by a lower bdev's slow path or limits, and
    // stops at once: hops come only before frames.)
    debug_assert!(ctx.nframes != 0 || (ctx.hops() == 0 && ctx.member == 0));
    let mut c = top;
    while let Some(pass) = &c.pass {
        if ctx.nframes != 0
            || ctx.internal
            || ctx.hops() >= MAX_HOPS
            || ctx.io_type == IoType::Reset
        {
            break;
        }
        // Each kind checks and commits on its own: a member and offset carried through
        // shared checks cost a plain pass-through ~9 instructions.
        match pass {
            Pass::One(m) => {
                if !takes_in_place(&m.desc, &m.ch.ch, &ctx, ctx.offset_blocks) {
                    break;
                }
                c = hop(&mut ctx, &m.ch.ch);
            }
            // A stripe: to the member that holds the blocks, and no further (the I/O keeps
            // one member index, its last level's). A mirror's stripe has no members: its
            // reads go down from the top only (a frame below hops would stand for the
            // top's channel, not the mirror's), and no further.
            Pass::Stripe(s) => {
                if let Some((i, m, at)) = s.map(ctx.offset_blocks, ctx.num_blocks) {
                    if takes_in_place(&m.desc, &m.ch.ch, &ctx, at) {
                        ctx.member = i;
                        ctx.offset_blocks = at;
                        c = hop(&mut ctx, &m.ch.ch);
                    }
                } else if let Some(set) = &s.mirror {
                    if ctx.io_type == IoType::Read && ctx.hops() == 0 {
                        return pass_mirror(c, set, ctx);
                    }
                }
                break;
            }
        }
    }
    if std::ptr::eq(c, top) && needs_service_here(c, &ctx) {
        return service::start(ctx);
    }
    c.module.submit(BdevIo { ctx: Some(ctx) })
}

/// A mirror's read ([`super::PassThrough::mirror`]) on `top`: forwarded in place, with a
/// frame, to the member with the fewest I/Os outstanding here (ties to the lowest slot);
/// to the module when there is none or the read can't go in place.
#[inline(never)]
fn pass_mirror(top: &ChanCtx, set: &super::MirrorSet, mut ctx: Box<IoCtx>) {
    // A read the mirror's own limits would service stays at the top, as any I/O that
    // doesn't pass through (here, not in `pass_down`: there it cost null 4 instructions,
    // through the inlined code's registers).
    if needs_service_here(top, &ctx) {
        return service::start(ctx);
    }
    let members = set.members();
    let mut best: Option<(usize, &super::StripeMember, u64)> = None;
    for (i, m) in members.iter().enumerate() {
        let Some(m) = m else { continue };
        let o = m.ch.ch.outstanding.get();
        if best.is_none_or(|(_, _, b)| o < b) {
            best = Some((i, m, o));
        }
    }
    let Some((i, m, at)) =
        best.and_then(|(i, m, _)| Some((i, m, m.data_offset.checked_add(ctx.offset_blocks)?)))
    else {
        return top.module.submit(BdevIo { ctx: Some(ctx) });
    };
    ctx.member = i as u16;
    BdevIo { ctx: Some(ctx) }.forward_in_place(&m.desc, &m.ch, Some(at), MirrorCb);
}

/// A mirror's read's frame ([`CB_MIRROR`]); one that can't go in place goes to the
/// mirror's module as any I/O does.
struct MirrorCb;

impl ForwardCb for MirrorCb {
    #[inline(always)]
    fn push(self, _: &mut Vec<ChildCb>) -> u8 {
        CB_MIRROR
    }

    #[cold]
    #[inline(never)]
    fn slow(self, mut io: BdevIo, _: &Desc, _: &BdevChannel, _: u64, _: Option<Reject>) {
        let Some(ctx) = io.ctx.as_mut() else { return };
        ctx.member = 0;
        debug_assert!(ctx.ch.is_some(), "a submitted I/O has its channel");
        let Some(ch) = ctx.ch.clone() else { return };
        ch.module.submit(io)
    }
}

/// A mirror's read failed at member `member`: back to the mirror's module, at its
/// blocks, to retry (and to mend or evict the member).
#[cold]
#[inline(never)]
fn mirror_failed(mut ctx: Box<IoCtx>, member: u16) {
    let status = std::mem::replace(&mut ctx.status, IoStatus::Success);
    debug_assert!(ctx.ch.is_some(), "a popped frame leaves the upper channel");
    let Some(ch) = ctx.ch.clone() else { return };
    ch.module
        .pass_through_failed(BdevIo { ctx: Some(ctx) }, member as usize, status);
}

/// Counts `ctx` gone down a pass-through level to `l`.
#[inline(always)]
fn hop<'a>(ctx: &mut IoCtx, l: &'a ChanCtx) -> &'a ChanCtx {
    ctx.bits += HOP;
    l.outstanding.set(l.outstanding.get() + 1);
    l
}

/// Whether `l`, a channel of `desc` below a pass-through level, takes `ctx` at its block
/// `offset` as it is: not frozen, no QoS, nothing to split or bounce, and a request it
/// accepts. (That `l` is a channel of `desc`'s bdev, with the same block size, was
/// checked when the upper channel was made: [`Pass::fits`].)
#[inline(always)]
fn takes_in_place(desc: &Desc, l: &ChanCtx, ctx: &IoCtx, offset: u64) -> bool {
    // A timeout on the lower bdev's channel is no reason to stop: forwarded I/O is
    // tracked only at the top, where it was submitted.
    l.flags.get() & !super::channel::FLAG_TIMEOUT == 0
        && !(l.bdev.has_limits.load(Ordering::Relaxed)
            && service::needs_service(&l.bdev, ctx.io_type, offset, ctx.num_blocks, &ctx.iovs))
        && permitted(desc, l, ctx.io_type, offset, ctx.num_blocks).is_ok()
}

/// Gives a context back to the module as it is (a NOMEM retry).
pub(crate) fn resubmit(ch: &IoChannel<ChanCtx>, ctx: Box<IoCtx>) {
    let depth = &ch.tctx.submit_depth;
    depth.set(depth.get() + 1);
    ch.module.submit(BdevIo { ctx: Some(ctx) });
    depth.set(depth.get() - 1);
}

/// Checks what every request needs: descriptor, channel, permissions, type and range.
#[inline(always)]
fn validate_common(
    desc: &Desc,
    c: &ChanCtx,
    io_type: IoType,
    offset: u64,
    num: u64,
) -> Result<(), Reject> {
    if !std::ptr::eq(desc.bdev_inner(), &*c.bdev) {
        return Err(Reject::WrongChannel);
    }
    permitted(desc, c, io_type, offset, num)
}

/// [`validate_common`] for a channel known to belong to `desc`'s bdev: permissions, type
/// and range.
#[inline(always)]
fn permitted(
    desc: &Desc,
    c: &ChanCtx,
    io_type: IoType,
    offset: u64,
    num: u64,
) -> Result<(), Reject> {
    let b = &*c.bdev;
    // One check for both refusals; which one it is, only when it fails.
    if desc.allowed() & io_type.bit() == 0 {
        return Err(if io_type.is_write() && !desc.is_writable() {
            Reject::ReadOnly
        } else {
            Reject::Unsupported
        });
    }
    match offset.checked_add(num) {
        Some(end) if end <= b.num_blocks.load(std::sync::atomic::Ordering::Relaxed) => {}
        _ => return Err(Reject::OutOfRange),
    }
    Ok(())
}

/// Checks a consumer's request against the descriptor, channel and bdev.
#[inline]
fn validate<P: IoPayload>(
    desc: &Desc,
    c: &ChanCtx,
    io_type: IoType,
    offset: u64,
    num: u64,
    payload: &P,
) -> Result<(), Reject> {
    validate_common(desc, c, io_type, offset, num)?;
    // num <= num_blocks and num_blocks * block_len fits in u64 (checked at registration).
    // Limits (size, segments, alignment) are the services' business, not refusals.
    if io_type.has_data() && (payload.data_len() as u64) < num * c.bdev.block_len as u64 {
        return Err(Reject::BufferTooSmall);
    }
    Ok(())
}

/// Checks a child request: as a consumer's, its data being `parent`'s from `data_offset`.
#[inline]
fn validate_child(
    desc: &Desc,
    c: &ChanCtx,
    io_type: IoType,
    offset: u64,
    num: u64,
    parent: &IoCtx,
    data_offset: u64,
) -> Result<(), Reject> {
    validate_common(desc, c, io_type, offset, num)?;
    if io_type.has_data() {
        let b = &*c.bdev;
        let have = parent.num_blocks * parent.block_len as u64;
        if !parent.io_type.has_data()
            || data_offset
                .checked_add(num * b.block_len as u64)
                .is_none_or(|end| end > have)
        {
            return Err(Reject::BufferTooSmall);
        }
    }
    Ok(())
}

/// Submits a request: validate, get a context (or wait for one), hand it to the module.
///
/// `cb` makes the callback, so that it is built where it is stored: built by the caller
/// and passed by value, it went through the stack in pieces and was loaded back whole, a
/// store-forwarding stall that `perf` put at a fifth of an async submission.
#[inline]
pub(crate) fn submit<P: IoPayload>(
    desc: &Desc,
    ch: &BdevChannel,
    io_type: IoType,
    offset: u64,
    num: u64,
    payload: P,
    cb: impl FnOnce() -> IoCallback,
) {
    let c = &*ch.ch;
    let tctx = &c.tctx;
    // Don't jump the queue of requests already waiting for a context.
    if tctx.waiting.get() == 0 && validate(desc, c, io_type, offset, num, &payload).is_ok() {
        if let Some(mut ctx) = tctx.alloc() {
            if io_type.has_data() {
                payload.push_iovs(&mut ctx.iovs, (num * c.bdev.block_len as u64) as usize);
            }
            ctx.payload = payload.into_payload();
            set_cb(&mut ctx.cb, cb());
            if c.flags.get() & super::channel::FLAG_TIMEOUT != 0 {
                // Only a timeout needs it (kept off the first cache line).
                ctx.set_desc(desc.id());
            }
            return dispatch(&ch.ch, ctx, io_type, offset, num);
        }
    }
    submit_slow(desc, ch, io_type, offset, num, payload, cb());
}

/// [`submit`] of a request that is refused, or that waits for a context (behind those
/// already waiting): apart, so that the hot path moves the callback once.
#[cold]
#[inline(never)]
fn submit_slow<P: IoPayload>(
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
        return reject(c, r, payload.into_payload(), None, cb);
    }
    // Valid: it waits, behind others or for want of a context.
    c.tctx.wait(Pending {
        ch: ch.ch.clone(),
        io_type,
        offset_blocks: offset,
        num_blocks: num,
        payload: payload.into_payload(),
        parent: None,
        cb,
        desc_id: desc.id(),
        submit_tick: c.tctx.now.get(),
    });
}

/// Stores a context's callback. A cached context has none (its completion took it):
/// written then straight into place, where a plain assignment, which drops what was
/// there first, went through a copy on the stack (callgrind: 8 loads and stores).
#[inline(always)]
fn set_cb(slot: &mut Option<IoCallback>, cb: IoCallback) {
    debug_assert!(slot.is_none(), "a cached context keeps no callback");
    std::mem::forget(slot.replace(cb));
}

/// Submits a child of `parent` (see [`BdevIo::submit_child`]). `cb` makes the callback
/// where it is stored, as in [`submit`].
#[inline]
#[allow(clippy::too_many_arguments)]
fn submit_child(
    parent: BdevIo,
    desc: &Desc,
    ch: &BdevChannel,
    io_type: IoType,
    offset: u64,
    num: u64,
    data_offset: u64,
    cb: impl FnOnce() -> IoCallback,
) {
    let c = &*ch.ch;
    if let Err(r) = validate_child(desc, c, io_type, offset, num, parent.c(), data_offset) {
        return reject(c, r, Payload::None, Some(parent), cb());
    }
    let tctx = &c.tctx;
    let data_offset = data_offset as usize;
    if tctx.waiting.get() == 0 {
        if let Some(mut ctx) = tctx.alloc() {
            if io_type.has_data() {
                let need = (num * c.bdev.block_len as u64) as usize;
                dma::push_sub_iovs(&parent.c().iovs, &mut ctx.iovs, data_offset, need);
            }
            ctx.hold_parent(parent);
            set_cb(&mut ctx.cb, cb());
            return dispatch(&ch.ch, ctx, io_type, offset, num);
        }
    }
    tctx.wait(Pending {
        ch: ch.ch.clone(),
        io_type,
        offset_blocks: offset,
        num_blocks: num,
        payload: Payload::None,
        parent: Some((ParentRef::Owned(parent), data_offset)),
        cb: cb(),
        desc_id: 0,
        submit_tick: tctx.now.get(),
    });
}

#[cold]
fn reject(c: &ChanCtx, r: Reject, payload: Payload, parent: Option<BdevIo>, cb: IoCallback) {
    // Completes later, not inside the caller's submit, as every completion does.
    let tctx = c.tctx.clone();
    // Refused before it started: submitted (and done) now, delivered at the next pass.
    let now = tctx.now.get();
    c.tctx.defer(move || {
        let mut payload = payload;
        cb.call(&tctx, IoStatus::Rejected(r), &mut payload, parent, now)
    });
}

/// Starts a request that waited for a context.
pub(crate) fn start(p: Pending, mut ctx: Box<IoCtx>) {
    let Pending {
        ch,
        io_type,
        offset_blocks,
        num_blocks,
        payload,
        parent,
        cb,
        desc_id,
        submit_tick,
    } = p;
    if desc_id != 0 {
        ctx.set_desc(desc_id);
    }
    let need = (num_blocks * ch.bdev.block_len as u64) as usize;
    match parent {
        Some((ParentRef::Owned(parent), data_offset)) => {
            if io_type.has_data() {
                dma::push_sub_iovs(&parent.c().iovs, &mut ctx.iovs, data_offset, need);
            }
            ctx.hold_parent(parent);
        }
        Some((ParentRef::Shared(parent), data_offset)) => {
            // The child's callback holds the parent; the segments are copied, as above.
            let held = parent.inner().io.borrow();
            match held.as_ref().and_then(|p| p.ctx.as_deref()) {
                Some(p) if io_type.has_data() => {
                    dma::push_sub_iovs(&p.iovs, &mut ctx.iovs, data_offset, need)
                }
                _ => {}
            }
        }
        None => {
            if io_type.has_data() {
                payload.push_iovs(&mut ctx.iovs, need);
            }
            ctx.payload = payload;
        }
    }
    ctx.cb = Some(cb);
    dispatch_at(&ch, ctx, io_type, offset_blocks, num_blocks, submit_tick);
}

/// Fills in the rest of the context and calls the module (or the services). Always
/// inlined: as a call of its own it costs every I/O ~10 instructions (callgrind).
#[inline(always)]
pub(crate) fn dispatch(
    ch: &IoChannel<ChanCtx>,
    ctx: Box<IoCtx>,
    io_type: IoType,
    offset_blocks: u64,
    num_blocks: u64,
) {
    let now = ch.tctx.now.get();
    dispatch_at(ch, ctx, io_type, offset_blocks, num_blocks, now)
}

/// [`dispatch`] of an I/O submitted at `submit_tick`.
#[inline(always)]
fn dispatch_at(
    ch: &IoChannel<ChanCtx>,
    mut ctx: Box<IoCtx>,
    io_type: IoType,
    offset_blocks: u64,
    num_blocks: u64,
    submit_tick: u64,
) {
    let c = &**ch;
    ctx.io_type = io_type;
    ctx.offset_blocks = offset_blocks;
    ctx.num_blocks = num_blocks;
    ctx.block_len = c.bdev.block_len;
    ctx.submit_tick = submit_tick;
    ctx.status = IoStatus::Success;
    debug_assert!(ctx.bits < HOP && ctx.nframes == 0);
    ctx.ch = Some(ch.clone());
    c.outstanding.set(c.outstanding.get() + 1);
    route(ch, ctx);
}

/// An I/O shared by several children at once (a mirror's write goes to every member, a
/// striped unmap to each member it touches): made with [`BdevIo::share`].
///
/// Each child ([`SharedIo::submit_child`]) holds the I/O until it completes, and so does
/// every clone the module keeps; the I/O completes when the last of them lets go, with the
/// first status given to [`SharedIo::fail`] (success if none was). Its buffers therefore
/// outlive every child that uses them, whatever order things finish in. Not `Send`: it
/// lives on the thread the I/O was submitted to.
pub struct SharedIo(Option<std::rc::Rc<SharedInner>>);

pub(crate) struct SharedInner {
    io: std::cell::RefCell<Option<BdevIo>>,
    status: std::cell::Cell<IoStatus>,
    /// Made by [`BdevIo::share_any`]: one success is enough.
    any: std::cell::Cell<bool>,
    oks: std::cell::Cell<u32>,
}

/// Shared-I/O states a thread keeps for reuse, so that sharing allocates nothing in the
/// steady state.
const SHARED_POOL: usize = 1024;

impl Clone for SharedIo {
    #[inline]
    fn clone(&self) -> Self {
        SharedIo(self.0.clone())
    }
}

impl Drop for SharedIo {
    fn drop(&mut self) {
        let Some(rc) = self.0.take() else { return };
        if std::rc::Rc::strong_count(&rc) != 1 {
            return;
        }
        // The last holder: complete the I/O, then keep the state for the next one.
        let Some(io) = rc.io.borrow_mut().take() else {
            return;
        };
        let tctx = io
            .ctx
            .as_ref()
            .and_then(|c| c.ch.as_ref())
            .map(|ch| ch.tctx.clone());
        let status = match (rc.any.get(), rc.oks.get(), rc.status.get()) {
            (true, 0, IoStatus::Success) => IoStatus::Failed,
            (true, 0, s) => s,
            (true, _, _) => IoStatus::Success,
            (false, _, s) => s,
        };
        io.complete(status);
        if let Some(t) = tctx {
            let mut pool = t.shared.borrow_mut();
            if pool.len() < SHARED_POOL {
                pool.push(rc);
            }
        }
    }
}

impl fmt::Debug for SharedIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_ref().map(|i| i.io.try_borrow()) {
            Some(Ok(io)) => write!(f, "SharedIo({:?})", io.as_ref()),
            _ => f.write_str("SharedIo(busy)"),
        }
    }
}

impl BdevIo {
    /// Makes this I/O shareable among several children (see [`SharedIo`]); it completes
    /// with the first failure recorded.
    pub fn share(self) -> SharedIo {
        self.share_with(false)
    }

    /// As [`BdevIo::share`], for an I/O that succeeds when any one child does (a mirror's
    /// write): it completes successfully once [`SharedIo::ok`] was called, else with the
    /// first failure recorded (failed if none was).
    pub fn share_any(self) -> SharedIo {
        self.share_with(true)
    }

    fn share_with(self, any: bool) -> SharedIo {
        let tctx = self.c().ch.as_ref().map(|ch| ch.tctx.clone());
        let reused = tctx.and_then(|t| t.shared.borrow_mut().pop());
        let rc = match reused {
            Some(rc) => {
                *rc.io.borrow_mut() = Some(self);
                rc.status.set(IoStatus::Success);
                rc.any.set(any);
                rc.oks.set(0);
                rc
            }
            None => std::rc::Rc::new(SharedInner {
                io: std::cell::RefCell::new(Some(self)),
                status: std::cell::Cell::new(IoStatus::Success),
                any: std::cell::Cell::new(any),
                oks: std::cell::Cell::new(0),
            }),
        };
        SharedIo(Some(rc))
    }
}

impl SharedIo {
    #[inline]
    fn inner(&self) -> &SharedInner {
        // Present until drop.
        self.0
            .as_deref()
            .expect("shared I/O state present while held")
    }

    fn with<R>(&self, f: impl FnOnce(&IoCtx) -> R) -> R {
        let io = self.inner().io.borrow();
        // Present until the last holder lets go, and that is not while `self` lives.
        f(io.as_ref()
            .and_then(|b| b.ctx.as_deref())
            .expect("shared I/O present while held"))
    }

    /// The I/O type.
    pub fn io_type(&self) -> IoType {
        self.with(|c| c.io_type)
    }

    /// First block.
    pub fn offset_blocks(&self) -> u64 {
        self.with(|c| c.offset_blocks)
    }

    /// Number of blocks.
    pub fn num_blocks(&self) -> u64 {
        self.with(|c| c.num_blocks)
    }

    /// Block size of the bdev, in bytes.
    pub fn block_len(&self) -> u32 {
        self.with(|c| c.block_len)
    }

    /// Records a failure: the I/O completes with the first one recorded.
    pub fn fail(&self, status: IoStatus) {
        let st = &self.inner().status;
        if st.get().is_success() {
            st.set(status);
        }
    }

    /// Records a failure the I/O completes with even if a child succeeds, for an I/O
    /// made by [`BdevIo::share_any`] too (the first failure recorded, this one if none
    /// was): a mirror's write a member refused, say.
    pub fn fail_whole(&self, status: IoStatus) {
        self.inner().any.set(false);
        self.fail(status);
    }

    /// Records a success (see [`BdevIo::share_any`]).
    pub fn ok(&self) {
        let oks = &self.inner().oks;
        oks.set(oks.get() + 1);
    }

    /// The status the I/O would complete with now.
    pub fn status(&self) -> IoStatus {
        self.inner().status.get()
    }

    /// Sends a child I/O, as [`BdevIo::submit_child`] does, while the I/O stays shared:
    /// `io_type` on `num_blocks` blocks at `offset_blocks` of `desc`'s bdev, with this
    /// I/O's data from `data_offset` bytes on. `cb` runs on this thread with the child's
    /// status; the child holds the I/O until then. A refused child completes through `cb`.
    #[allow(clippy::too_many_arguments)]
    pub fn submit_child(
        &self,
        desc: &Desc,
        ch: &BdevChannel,
        io_type: IoType,
        offset_blocks: u64,
        num_blocks: u64,
        data_offset: u64,
        cb: impl FnOnce(IoStatus, SharedIo) + 'static,
    ) {
        let me = self.clone();
        // Made where it is stored (see `submit`).
        let cb = move || IoCallback::new(move |status, _, _| cb(status, me));
        let c = &*ch.ch;
        let r = self
            .with(|p| validate_child(desc, c, io_type, offset_blocks, num_blocks, p, data_offset));
        if let Err(r) = r {
            return reject(c, r, Payload::None, None, cb());
        }
        let tctx = &c.tctx;
        let data_offset = data_offset as usize;
        if tctx.waiting.get() == 0 {
            if let Some(mut ctx) = tctx.alloc() {
                if io_type.has_data() {
                    let need = (num_blocks * c.bdev.block_len as u64) as usize;
                    self.with(|p| dma::push_sub_iovs(&p.iovs, &mut ctx.iovs, data_offset, need));
                }
                set_cb(&mut ctx.cb, cb());
                return dispatch(&ch.ch, ctx, io_type, offset_blocks, num_blocks);
            }
        }
        tctx.wait(Pending {
            ch: ch.ch.clone(),
            io_type,
            offset_blocks,
            num_blocks,
            payload: Payload::None,
            parent: Some((ParentRef::Shared(self.clone()), data_offset)),
            cb: cb(),
            desc_id: 0,
            submit_tick: tctx.now.get(),
        });
    }
}
