//! The module-author tier: what a bdev implements ([`BdevOps`]) and how the layer calls it
//! without knowing its concrete type.

use std::sync::Arc;

use super::io::BdevIo;
use super::registry::BdevInner;
use super::{Bdev, BdevChannel, Desc, IoType};
use crate::error::Result;

/// What a bdev module implements for each bdev it registers (SPDK's
/// `spdk_bdev_fn_table`). The object is shared by every thread; per-thread state goes in
/// the [`BdevOps::Channel`], created on each thread that does I/O.
pub trait BdevOps: Send + Sync + 'static {
    /// Per-thread channel state (queue pairs, engines, completion lists...).
    type Channel: 'static;

    /// Name of the module ("malloc", "null", ...).
    fn module_name(&self) -> &'static str;

    /// Creates this thread's channel (runs on the thread, which may register pollers).
    fn create_channel(&self) -> Result<Self::Channel>;

    /// Starts an I/O. The module owns `io` until it calls [`BdevIo::complete`]; it may do
    /// so before returning (the layer then defers the caller's callback).
    fn submit_request(&self, ch: &Self::Channel, io: BdevIo);

    /// For a bdev whose data path is only a forward with no callback (the base's status:
    /// what [`BdevIo::forward_and_complete`] does), where each I/O goes: to one base
    /// unchanged ([`PassThrough::to`]), or to the member of a stripe that holds its blocks
    /// ([`PassThrough::striped`], raid0). Asked once per channel, on its thread; the
    /// channels it names are held for the channel's life. (A mirror's reads,
    /// [`PassThrough::mirror`], are another kind: see there.)
    ///
    /// The layer then takes the I/O down itself: no call to [`BdevOps::submit_request`]
    /// and no reference counted per I/O (the base channel is reached through this
    /// channel, which the I/O holds), the cheapest level there is. Statistics, histograms
    /// and outstanding counts are kept at both levels as for any forward. What can't go
    /// that way still comes to `submit_request`, which must forward it the same way: any
    /// I/O when a base has another block size or looser limits (see below), and
    /// otherwise an I/O to a base that is frozen or has QoS, one the base needs split or
    /// bounced, a reset, a piece of a split I/O, one refused by the base, one across
    /// strips.
    ///
    /// An I/O that passes through is checked against the lower bdev's limits, not this
    /// one's; so the layer passes through only to channels whose limits are at least as
    /// strict as this bdev's (a stripe's strip aside: the layer keeps I/O within one), and
    /// a bdev with stricter limits of its own gets every I/O in `submit_request`.
    fn pass_through(&self, _ch: &Self::Channel) -> Option<PassThrough> {
        None
    }

    /// A read that went down a mirror's pass-through ([`PassThrough::mirror`]) to member
    /// `member` failed there with `status`: the module gets it back, at its own blocks,
    /// to retry it elsewhere (and to correct or evict the member). By default it fails.
    fn pass_through_failed(
        &self,
        _ch: &Self::Channel,
        io: BdevIo,
        _member: usize,
        status: super::IoStatus,
    ) {
        io.complete(status)
    }

    /// Whether the bdev handles `io_type`. Asked once per type at registration.
    fn io_type_supported(&self, io_type: IoType) -> bool;

    /// The bdev is being unregistered (called once, on the unregistering thread, before
    /// openers hear of it): a module holding I/O indefinitely (a pending injection, a
    /// queue waiting on something that won't come) completes it now, so that openers can
    /// drain and close.
    fn unregistering(&self) {}

    /// Releases the bdev's resources once it is unregistered, every descriptor closed and
    /// every channel released. Call `done.complete()` when finished (now or later).
    fn destruct(&self, done: DestructDone) {
        done.complete();
    }

    /// The config entry that recreates this bdev (`{"method":..., "params":...}`), if any.
    fn write_config_json(&self, _bdev: &Bdev) -> Option<serde_json::Value> {
        None
    }

    /// Module-specific details for `bdev_get_bdevs` (`driver_specific`).
    fn dump_info_json(&self) -> Option<serde_json::Value> {
        None
    }
}

/// Where a pass-through channel's I/O goes ([`BdevOps::pass_through`]).
pub struct PassThrough(pub(crate) Pass);

/// A channel's pass-through: the level below.
pub(crate) enum Pass {
    /// One base, at the same blocks (held in place: no pointer to follow on the way).
    One(StripeMember),
    /// A stripe: its layout and its members. Or a mirror's reads: a stripe of no members
    /// (its map finds none) with its `mirror` set. Not a third variant: that would take
    /// a tag of its own, a word more in every channel and a load more per I/O on every
    /// pass-through (callgrind: +5 instructions for passthru and raid0); nor a kind
    /// inside this box (+7 for raid0); the mirror is looked at only where a stripe's map
    /// fails.
    Stripe(Box<Stripe>),
}

/// The members a mirror's channel reads from ([`PassThrough::mirror`]), shared by the
/// channel's pass-through and its module, which changes them as members come and go.
/// A read takes the slice as it is (a counted reference), so a change never waits.
#[derive(Clone)]
pub struct MirrorSet(std::rc::Rc<std::cell::RefCell<std::rc::Rc<[Option<StripeMember>]>>>);

impl MirrorSet {
    /// A set of these members (by slot; `None`: no member to read from there).
    pub fn new(members: Vec<Option<StripeMember>>) -> MirrorSet {
        MirrorSet(std::rc::Rc::new(std::cell::RefCell::new(members.into())))
    }

    /// Puts `member` in slot `slot` (`None`: reads go there no more), growing the slots
    /// as needed. Reads already gone down there hold the member's channel until they
    /// complete.
    pub fn set(&self, slot: usize, member: Option<StripeMember>) {
        let mut v: Vec<Option<StripeMember>> = self.0.borrow().to_vec();
        if v.len() <= slot {
            v.resize(slot + 1, None);
        }
        v[slot] = member;
        // The old slice goes after the borrow: it may hold a member's last channel.
        let old = self.0.replace(v.into());
        drop(old);
    }

    /// The members as they are now.
    pub(crate) fn members(&self) -> std::rc::Rc<[Option<StripeMember>]> {
        self.0.borrow().clone()
    }
}

/// One member of a striped pass-through ([`PassThrough::striped`]).
#[derive(Clone)]
pub struct StripeMember {
    /// The descriptor the bdev opened its member with.
    pub desc: Arc<Desc>,
    /// This thread's channel to it.
    pub ch: BdevChannel,
    /// Where the bdev's data starts on the member (a superblock before it, say).
    pub data_offset: u64,
}

/// Strips of `1 << shift` blocks dealt round-robin over the members.
pub(crate) struct Stripe {
    shift: u32,
    /// `(1 << shift) - 1`.
    mask: u64,
    /// `mask + 1`, blocks per strip; 0 for a mirror's stripe, whose map then stops at its
    /// first test (a raid1 write passes by here).
    strip: u64,
    /// With a power of two of members (the usual case), log2 of their count: a shift and
    /// a mask, not a 64-bit division (tens of cycles), on every I/O.
    n_shift: u32,
    n_pow2: bool,
    members: Box<[StripeMember]>,
    /// A mirror's reads (with no members above): see [`Pass::Stripe`].
    pub(crate) mirror: Option<MirrorSet>,
}

impl PassThrough {
    /// Every I/O to `ch` (a channel of `desc`), at the same blocks.
    pub fn to(desc: Arc<Desc>, ch: BdevChannel) -> PassThrough {
        PassThrough(Pass::One(StripeMember {
            desc,
            ch,
            data_offset: 0,
        }))
    }

    /// raid0's layout: strips of `strip_blocks` blocks (a power of two), strip `s` on
    /// member `s % n` at its block `data_offset + (s / n) * strip_blocks`. An I/O within
    /// one strip, of any type the member takes (a write_zeroes the bdev would emulate goes
    /// to a member that has it; a flush of no blocks goes to the member of its offset),
    /// goes to that member, and no further by pass-through; one across strips comes to
    /// the module. `None` when `strip_blocks` is not a power of two, or there are no
    /// members (or more than 65536).
    pub fn striped(strip_blocks: u64, members: Vec<StripeMember>) -> Option<PassThrough> {
        let n = members.len();
        if !strip_blocks.is_power_of_two() || n == 0 || n > u16::MAX as usize + 1 {
            return None;
        }
        Some(PassThrough(Pass::Stripe(Box::new(Stripe {
            shift: strip_blocks.trailing_zeros(),
            mask: strip_blocks - 1,
            strip: strip_blocks,
            n_shift: n.trailing_zeros(),
            n_pow2: n.is_power_of_two(),
            members: members.into_boxed_slice(),
            mirror: None,
        }))))
    }

    /// A mirror's reads (raid1): a read submitted on this channel (not one forwarded in
    /// place from a bdev above, nor one below a pass-through level, nor a piece of a
    /// split one) goes to the member of `set` with the fewest I/Os outstanding on the
    /// channel (ties to the lowest slot), at its block `data_offset + offset`, as a
    /// forward with a frame (the I/O then holds the member's channel until it completes,
    /// so that the module may take a member out of `set` at any time). A read that fails
    /// there comes back to [`BdevOps::pass_through_failed`]. Everything else comes to
    /// `submit_request`: other I/O types, the reads above, a read this bdev's own limits
    /// would service, and one when `set` is empty or the read can't go in place (another
    /// block size, refused).
    pub fn mirror(set: &MirrorSet) -> PassThrough {
        PassThrough(Pass::Stripe(Box::new(Stripe {
            shift: 0,
            mask: 0,
            strip: 0,
            n_shift: 0,
            n_pow2: true,
            members: Box::new([]),
            mirror: Some(set.clone()),
        })))
    }
}

impl Pass {
    /// Whether `up` may pass its I/O through to every channel below: each belongs to its
    /// descriptor's bdev, has `up`'s block size, and has limits at least as strict as
    /// `up`'s (an I/O that passes through is checked against the lower bdev's limits
    /// only; a stripe's strip is `up`'s boundary, checked by [`Stripe::map`]). Else `up`
    /// is no pass-through (a module's mistake, a base of another block size, a bdev with
    /// limits of its own): its module gets every I/O. Checked once, when the channel is
    /// made, not for each I/O.
    pub(crate) fn fits(&self, up: &BdevInner) -> bool {
        let (strip, below) = match self {
            Pass::One(m) => (None, std::slice::from_ref(m)),
            // A mirror's reads go down as forwards: each checked at its member as any
            // forward (block size, limits, permissions).
            Pass::Stripe(s) if s.mirror.is_some() => return true,
            Pass::Stripe(s) => (Some(s.strip), &s.members[..]),
        };
        below.iter().all(|m| {
            let b = &*m.ch.ch.bdev;
            std::ptr::eq(m.desc.bdev_inner(), b)
                && b.block_len == up.block_len
                && b.max_rw <= up.max_rw
                && b.max_segs <= up.max_segs
                && b.max_seg_bytes <= up.max_seg_bytes
                && b.max_wz <= up.max_wz
                // Every alignment `up` asks for, `b` asks for (masks of low bits).
                && b.align_mask & up.align_mask == up.align_mask
                // Not crossing `b`'s boundaries keeps within `up`'s when they are
                // multiples of `b`'s.
                && (up.boundary == 0
                    || strip == Some(up.boundary)
                    || (b.boundary != 0 && up.boundary % b.boundary == 0))
        })
    }

    /// Member `i` (a plain pass-through's base for any `i`). By the kind, not by `i == 0`:
    /// a stripe's member is as random as its I/O, and a branch on it, mispredicted half
    /// the time over two members, cost raid0 more than its instructions (0.76 of null's
    /// IOPS against 0.81, for 7 fewer instructions).
    #[inline(always)]
    pub(crate) fn member(&self, i: u16) -> Option<&StripeMember> {
        match self {
            Pass::One(m) => Some(m),
            // (A mirror has no members here: its reads go down with a frame, never by a
            // hop.)
            Pass::Stripe(s) => s.members.get(i as usize),
        }
    }

    /// How many channels it passes I/O through to.
    pub(crate) fn width(&self) -> usize {
        match self {
            Pass::One(_) => 1,
            Pass::Stripe(s) => match &s.mirror {
                Some(m) => m.members().iter().flatten().count(),
                None => s.members.len(),
            },
        }
    }
}

impl Stripe {
    /// The member that holds blocks `offset..offset + num`, its index and its block
    /// there, when they lie in one strip.
    #[inline(always)]
    pub(crate) fn map(&self, offset: u64, num: u64) -> Option<(u16, &StripeMember, u64)> {
        let within = offset & self.mask;
        if within + num > self.strip {
            return None;
        }
        let strip = offset >> self.shift;
        let n = self.members.len() as u64;
        let (row, i) = if self.n_pow2 {
            // (No members: a mirror's. `get` below finds none.)
            (strip >> self.n_shift, strip & n.wrapping_sub(1))
        } else {
            (strip / n, strip % n)
        };
        let m = self.members.get(i as usize)?;
        let at = m.data_offset.checked_add((row << self.shift) | within)?;
        Some((i as u16, m, at))
    }
}

/// Handed to [`BdevOps::destruct`]; completing it finishes the unregistration.
pub struct DestructDone {
    pub(crate) f: Box<dyn FnOnce() + Send>,
}

impl std::fmt::Debug for DestructDone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DestructDone")
    }
}

impl DestructDone {
    /// Reports the destruction finished.
    pub fn complete(self) {
        (self.f)()
    }
}

/// [`BdevOps`] with the channel type erased.
pub(crate) trait ErasedOps: Send + Sync {
    fn module_name(&self) -> &'static str;
    fn create_channel(&self) -> Result<Box<dyn ErasedChannel>>;
    fn unregistering(&self);
    fn destruct(&self, done: DestructDone);
    fn write_config_json(&self, bdev: &Bdev) -> Option<serde_json::Value>;
    fn dump_info_json(&self) -> Option<serde_json::Value>;
    fn as_any(&self) -> &dyn std::any::Any;
}

/// A module channel with its type erased: one virtual call per I/O.
pub(crate) trait ErasedChannel {
    fn submit(&self, io: BdevIo);
    fn pass_through(&self) -> Option<PassThrough>;
    fn pass_through_failed(&self, io: BdevIo, member: usize, status: super::IoStatus);
}

struct ChanImpl<T: BdevOps> {
    ops: Arc<T>,
    ch: T::Channel,
}

impl<T: BdevOps> ErasedChannel for ChanImpl<T> {
    #[inline]
    fn submit(&self, io: BdevIo) {
        self.ops.submit_request(&self.ch, io)
    }
    fn pass_through(&self) -> Option<PassThrough> {
        self.ops.pass_through(&self.ch)
    }
    fn pass_through_failed(&self, io: BdevIo, member: usize, status: super::IoStatus) {
        self.ops.pass_through_failed(&self.ch, io, member, status)
    }
}

pub(crate) struct OpsImpl<T: BdevOps>(pub(crate) Arc<T>);

impl<T: BdevOps> ErasedOps for OpsImpl<T> {
    fn module_name(&self) -> &'static str {
        self.0.module_name()
    }
    fn create_channel(&self) -> Result<Box<dyn ErasedChannel>> {
        let ch = self.0.create_channel()?;
        Ok(Box::new(ChanImpl {
            ops: self.0.clone(),
            ch,
        }))
    }
    fn unregistering(&self) {
        self.0.unregistering()
    }
    fn destruct(&self, done: DestructDone) {
        self.0.destruct(done)
    }
    fn write_config_json(&self, bdev: &Bdev) -> Option<serde_json::Value> {
        self.0.write_config_json(bdev)
    }
    fn dump_info_json(&self) -> Option<serde_json::Value> {
        self.0.dump_info_json()
    }
    fn as_any(&self) -> &dyn std::any::Any {
        &self.0
    }
}
