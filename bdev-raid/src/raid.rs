//! One RAID: its control state (slots, state, process), the registered bdev, and the data
//! path of each level.
//!
//! Threads: control operations (create, delete, add and remove a base, a member's
//! hot-remove, the rebuild) run on the thread that created the RAID (the application's
//! thread); the data path runs on every thread with a channel. Each thread's
//! `RaidCh` holds its own channel to every member. Control changes reach the channels
//! through `for_each_channel` on the RAID's own io_device, as SPDK's raid does: a member
//! leaves each channel before its descriptor closes, a new member joins each channel
//! before any write counts on it.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use bdev_core::bdev::{
    self, Bdev, BdevChannel, BdevEvent, BdevIo, BdevOps, BdevProps, Desc, DestructDone, IoStatus,
    IoType, MirrorSet, PassThrough, SharedIo, StripeMember,
};
use bdev_core::thread::{ForEachChannel, IoChannel, IoDevice, ThreadHandle};
use uuid::Uuid;

use crate::split::ReadSplit;
use crate::{Error, RaidLevel, RaidState};

/// raid1 reads with `raid1_read_affinity`: a home member takes a read while it has at
/// most twice the least busy member's outstanding I/O plus this many (both averaged, see
/// [`AVG_READS`]).
const HOME_CAP_SLACK: u64 = 32;
/// raid1 reads: a member's outstanding I/O is averaged over about this many reads (an
/// exponential average, updated at each read) before the home cap compares it.
const AVG_READS: u64 = 64;

/// The module's name, which also names its claims.
pub const MODULE: &str = "raid";

/// Most members a RAID may have (a read retry keeps a bitmask of the members it tried).
pub const MAX_BASE_BDEVS: usize = 64;

/// What a slot of the array holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SlotState {
    /// No base bdev (never found, or removed).
    Missing,
    /// A member in service.
    Configured,
    /// A base that failed I/O and was taken out of the array.
    Failed,
    /// A new member being rebuilt: written, not yet read.
    Rebuilding,
}

/// One member position.
pub(crate) struct Slot {
    /// The base bdev's name, once known.
    pub(crate) name: Option<String>,
    /// The base bdev's UUID (what the superblock records).
    pub(crate) uuid: Option<Uuid>,
    /// Our claimed descriptor on the base, while it is part of the array.
    pub(crate) desc: Option<Arc<Desc>>,
    pub(crate) state: SlotState,
    /// Where the array's data starts on the base, in blocks (after the superblock).
    pub(crate) data_offset: u64,
    /// Blocks of array data on the base.
    pub(crate) data_size: u64,
}

impl Slot {
    pub(crate) fn missing() -> Slot {
        Slot {
            name: None,
            uuid: None,
            desc: None,
            state: SlotState::Missing,
            data_offset: 0,
            data_size: 0,
        }
    }

    /// Whether the member serves I/O (reads and writes, or writes while rebuilt).
    pub(crate) fn present(&self) -> bool {
        self.desc.is_some() && matches!(self.state, SlotState::Configured | SlotState::Rebuilding)
    }
}

/// A rebuild in progress ("process" in SPDK's words).
#[derive(Clone, Debug)]
pub(crate) struct Process {
    /// The slot being rebuilt.
    pub(crate) target: usize,
    /// Blocks of the array copied so far.
    pub(crate) done_blocks: u64,
    /// Set to stop it (the target or the array went away).
    pub(crate) cancel: bool,
}

/// The mutable control state of a RAID.
pub(crate) struct Ctl {
    pub(crate) slots: Vec<Slot>,
    pub(crate) state: RaidState,
    /// Block size of the members (0 until the first is known).
    pub(crate) block_len: u32,
    /// The registered bdev, while online.
    pub(crate) bdev: Option<Bdev>,
    pub(crate) dev: Option<IoDevice<RaidCh>>,
    /// The superblock's sequence number (bumped at every superblock write).
    pub(crate) seq: u64,
    /// The array's size in blocks, from the superblock when assembled from one.
    pub(crate) raid_size: u64,
    pub(crate) process: Option<Process>,
    /// bdev_raid_delete was called: nothing may bring it back online.
    pub(crate) deleting: bool,
    /// The window a rebuild has locked (empty: none), which a channel created meanwhile
    /// starts with.
    pub(crate) window: (u64, u64),
    /// A control operation that awaits (adding a member) is under way: others wait their
    /// turn (refused, as SPDK refuses a second one while a process runs).
    pub(crate) busy: bool,
    /// Superblock writes: one at a time, the latest state last.
    pub(crate) sb_writing: bool,
    pub(crate) sb_dirty: bool,
    /// The bdev is being unregistered because the array lost too many members: the
    /// remaining ones stay claimed (the array is listed offline until deleted).
    pub(crate) lost_members: bool,
}

/// A RAID, configured or not.
pub(crate) struct Raid {
    pub(crate) name: String,
    pub(crate) level: RaidLevel,
    /// Strip size in KiB (0 for raid1).
    pub(crate) strip_size_kb: u32,
    pub(crate) uuid: Uuid,
    pub(crate) superblock: bool,
    /// The thread control operations run on.
    pub(crate) ctl_thread: ThreadHandle,
    pub(crate) me: Weak<Raid>,
    /// A bit per slot with a read-error correction asked for and not finished: at most
    /// one at a time per member, so a failing member's reads don't flood the control
    /// thread (a range left out is corrected when a later read of it fails again).
    pub(crate) correcting: std::sync::atomic::AtomicU64,
    st: Mutex<Ctl>,
}

impl Raid {
    pub(crate) fn new(
        name: String,
        level: RaidLevel,
        strip_size_kb: u32,
        uuid: Uuid,
        superblock: bool,
        num_slots: usize,
        ctl_thread: ThreadHandle,
    ) -> Arc<Raid> {
        Arc::new_cyclic(|me| Raid {
            name,
            level,
            strip_size_kb,
            uuid,
            superblock,
            ctl_thread,
            me: me.clone(),
            correcting: std::sync::atomic::AtomicU64::new(0),
            st: Mutex::new(Ctl {
                slots: (0..num_slots).map(|_| Slot::missing()).collect(),
                state: RaidState::Configuring,
                block_len: 0,
                bdev: None,
                dev: None,
                seq: 0,
                raid_size: 0,
                process: None,
                deleting: false,
                lost_members: false,
                window: (0, 0),
                busy: false,
                sb_writing: false,
                sb_dirty: false,
            }),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Ctl> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Members needed for the array to serve I/O.
    pub(crate) fn min_operational(&self, num_slots: usize) -> usize {
        match self.level {
            RaidLevel::Raid1 => 1,
            RaidLevel::Raid0 | RaidLevel::Concat => num_slots,
        }
    }

    /// Strip size in blocks of `block_len` (0 for raid1).
    pub(crate) fn strip_blocks(&self, block_len: u32) -> u64 {
        (self.strip_size_kb as u64 * 1024) / block_len as u64
    }

    /// Attaches `base` to `slot` in `state` (Configured, or Rebuilding for a new member of
    /// an online array: written, never read, from the first channel on): opens it, claims
    /// it, watches for its removal.
    pub(crate) fn attach(
        &self,
        slot: usize,
        base: &Bdev,
        data_offset: u64,
        state: SlotState,
    ) -> Result<(), Error> {
        let weak = self.me.clone();
        let base_name = base.name().to_string();
        let desc = Desc::open(base.name(), true, move |ev| {
            if ev == BdevEvent::Remove {
                if let Some(r) = weak.upgrade() {
                    r.base_gone(&base_name, false);
                }
            }
        })?;
        desc.claim(MODULE)?;
        let mut st = self.lock();
        let Some(s) = st.slots.get_mut(slot) else {
            return Err(Error::InvalidOpts(format!("slot {slot} out of range")));
        };
        if base.num_blocks() <= data_offset {
            return Err(Error::InvalidOpts(format!(
                "base bdev {} too small for data offset {data_offset}",
                base.name()
            )));
        }
        s.name = Some(base.name().to_string());
        s.uuid = Some(base.uuid());
        s.data_offset = data_offset;
        s.data_size = base.num_blocks() - data_offset;
        s.desc = Some(Arc::new(desc));
        s.state = state;
        if st.block_len == 0 {
            st.block_len = base.block_len();
        }
        Ok(())
    }

    /// Number of slots with a member in service (a rebuild target counts, as in SPDK's
    /// `num_base_bdevs_operational`), and with one at all.
    pub(crate) fn counts(st: &Ctl) -> (usize, usize) {
        let op = st.slots.iter().filter(|s| s.present()).count();
        let disc = st.slots.iter().filter(|s| s.desc.is_some()).count();
        (op, disc)
    }

    /// Members that hold all the data (not a rebuild target).
    pub(crate) fn readable(st: &Ctl) -> usize {
        st.slots
            .iter()
            .filter(|s| s.desc.is_some() && s.state == SlotState::Configured)
            .count()
    }

    /// Brings the array online: registers its io_device and bdev over the members
    /// attached. Writes the superblock first when the array has one.
    pub(crate) async fn configure(self: &Arc<Self>) -> Result<Bdev, Error> {
        let (props, layout, sb) = {
            let mut st = self.lock();
            if st.deleting {
                return Err(Error::InvalidOpts(format!(
                    "raid {} is being deleted",
                    self.name
                )));
            }
            if st.bdev.is_some() {
                return Err(Error::Exists(self.name.clone()));
            }
            let bl = st.block_len;
            let n = st.slots.len();
            let present: Vec<Bdev> = st
                .slots
                .iter()
                .filter_map(|s| s.desc.as_ref().map(|d| d.bdev()))
                .collect();
            if present.len() < self.min_operational(n) || present.is_empty() {
                return Err(Error::InvalidOpts(format!(
                    "raid {}: {} of {} base bdevs present",
                    self.name,
                    present.len(),
                    n
                )));
            }
            let strip = self.strip_blocks(bl);
            if strip == 0 && self.level != RaidLevel::Raid1 {
                return Err(Error::InvalidOpts(format!(
                    "strip of {} KiB is less than a block of {bl} bytes",
                    self.strip_size_kb
                )));
            }
            let (num_blocks, layout) = match self.level {
                RaidLevel::Raid1 => {
                    let min = st
                        .slots
                        .iter()
                        .filter(|s| s.desc.is_some())
                        .map(|s| s.data_size)
                        .min();
                    let min = min.unwrap_or(0);
                    (min, Layout::Raid1)
                }
                RaidLevel::Raid0 => {
                    let min = st.slots.iter().map(|s| s.data_size / strip * strip).min();
                    let min = min.unwrap_or(0);
                    let total = min.checked_mul(n as u64).ok_or_else(|| {
                        Error::InvalidOpts("members too large to stripe over".into())
                    })?;
                    (
                        total,
                        Layout::Raid0 {
                            shift: strip.trailing_zeros(),
                            mask: strip - 1,
                            n: Members::new(n as u64),
                        },
                    )
                }
                RaidLevel::Concat => {
                    let mut starts = Vec::with_capacity(n + 1);
                    let mut at = 0;
                    for s in &st.slots {
                        starts.push(at);
                        at =
                            u64::checked_add(at, s.data_size / strip * strip).ok_or_else(|| {
                                Error::InvalidOpts("members too large to lay end to end".into())
                            })?;
                    }
                    starts.push(at);
                    (at, Layout::Concat { starts })
                }
            };
            // An array assembled from a superblock keeps the size it was created with; its
            // members must still hold it (SPDK fails the same way).
            let num_blocks = if st.raid_size != 0 {
                if num_blocks < st.raid_size {
                    return Err(Error::InvalidOpts(format!(
                        "raid {}: members hold {num_blocks} blocks, the superblock says {}",
                        self.name, st.raid_size
                    )));
                }
                st.raid_size
            } else {
                num_blocks
            };
            if num_blocks == 0 {
                return Err(Error::InvalidOpts(format!(
                    "raid {}: base bdevs too small for one strip",
                    self.name
                )));
            }
            st.raid_size = num_blocks;
            let mut props = BdevProps::new(&self.name, bl, num_blocks)
                .product_name("Raid Volume")
                .uuid(Some(self.uuid));
            let mut align = 1;
            let mut write_cache = false;
            for b in &present {
                align = align.max(b.buf_align());
                write_cache |= b.props().write_cache;
            }
            props = props.buf_align(align).write_cache(write_cache);
            if strip != 0 {
                props = props.optimal_io_boundary(strip as u32, true);
            }
            if self.superblock {
                st.seq += 1;
            }
            let sb = self.superblock.then(|| crate::sb::build(self, &st));
            (props, layout, sb)
        };
        if let Some(sb) = sb {
            crate::sb::write_all(self, sb).await?;
            // Things may have changed while the superblock was written.
            let st = self.lock();
            let present = st.slots.iter().filter(|s| s.desc.is_some()).count();
            if st.deleting || st.bdev.is_some() || present < self.min_operational(st.slots.len()) {
                return Err(Error::Busy(format!(
                    "raid {} changed while its superblock was written",
                    self.name
                )));
            }
        }
        let weak = self.me.clone();
        let dev = IoDevice::register(format!("raid:{}", self.name), move || {
            let r = weak
                .upgrade()
                .ok_or_else(|| bdev_core::Error::BdevRemoving {
                    name: "raid".into(),
                })?;
            RaidCh::new(&r)
        });
        let supported = {
            let st = self.lock();
            let descs: Vec<Bdev> = st
                .slots
                .iter()
                .filter_map(|s| s.desc.as_ref().map(|d| d.bdev()))
                .collect();
            let all = |t: IoType| descs.iter().all(|b| b.io_type_supported(t));
            [IoType::Flush, IoType::Unmap].map(|t| (t, all(t)))
        };
        let ops = Arc::new(RaidBdev {
            raid: self.clone(),
            layout,
            dev: dev.clone(),
            supported,
        });
        match bdev::register(props, ops) {
            Ok(b) => {
                let mut st = self.lock();
                st.bdev = Some(b.clone());
                st.dev = Some(dev);
                st.state = RaidState::Online;
                tracing::info!(raid = %self.name, level = %self.level, "raid bdev online");
                Ok(b)
            }
            Err(e) => {
                let _ = dev.unregister(|| {});
                Err(e.into())
            }
        }
    }

    /// A member's bdev is going away (hot-remove) or failed I/O (`failed`): take it out of
    /// the array. A raid1 with a member left carries on degraded; otherwise the array goes
    /// offline. Runs on the control thread.
    pub(crate) fn base_gone(self: &Arc<Self>, base_name: &str, failed: bool) {
        let slot = {
            let st = self.lock();
            st.slots
                .iter()
                .position(|s| s.desc.is_some() && s.name.as_deref() == Some(base_name))
        };
        if let Some(slot) = slot {
            self.remove_slot(slot, failed, Box::new(|| {}));
        }
    }

    /// Takes `slot`'s member out (see [`Raid::base_gone`]); `done` runs on this thread once
    /// its descriptor is closed.
    pub(crate) fn remove_slot(
        self: &Arc<Self>,
        slot: usize,
        failed: bool,
        done: Box<dyn FnOnce() + Send>,
    ) {
        let (dev, bdev, keep_online, desc) = {
            let mut st = self.lock();
            let n = st.slots.len();
            let Some(s) = st.slots.get_mut(slot) else {
                return done();
            };
            if s.desc.is_none() {
                return done();
            }
            s.state = if failed {
                SlotState::Failed
            } else {
                SlotState::Missing
            };
            let desc = s.desc.take();
            // A rebuild stops with its target; losing a source, it reads from another.
            if let Some(p) = st.process.as_mut() {
                p.cancel |= p.target == slot;
            }
            let op = Self::readable(&st);
            let keep = st.bdev.is_some() && op >= self.min_operational(n) && op > 0;
            tracing::warn!(raid = %self.name, slot, failed, operational = op,
                "base bdev removed from raid{}", if keep { " (degraded)" } else { "" });
            if !keep && st.bdev.is_some() {
                st.state = RaidState::Offline;
                st.lost_members = true;
            }
            (st.dev.clone(), st.bdev.clone(), keep, desc)
        };
        match (bdev, dev) {
            (Some(_), Some(dev)) if keep_online => {
                // Each channel lets go of the member; then its descriptor closes.
                let r = self.clone();
                let visited = dev.for_each_channel(
                    move |ch, next| {
                        ch.drop_member(slot);
                        next.next(Ok(()));
                    },
                    move |_| {
                        drop(desc);
                        if r.superblock {
                            crate::sb::spawn_update(&r);
                        }
                        done();
                    },
                );
                if let Err(e) = visited {
                    tracing::warn!(raid = %self.name, "removing a member: {e}");
                }
            }
            (Some(b), _) => {
                // Not enough members left: the array goes offline; its destruct closes
                // the remaining descriptors. The removed one closes now.
                drop(desc);
                let name = self.name.clone();
                b.unregister(move |r| {
                    if let Err(e) = r {
                        tracing::warn!(raid = %name, "unregister after losing a member: {e}");
                    }
                    done();
                });
            }
            (None, _) => {
                drop(desc);
                done();
            }
        }
    }

    /// The array's bdev was unregistered: lose the bdev and its io_device. The members
    /// are released, unless the array went offline for losing members (then they stay
    /// claimed until `bdev_raid_delete`, as SPDK's).
    fn deconfigured(&self) {
        let dev = {
            let mut st = self.lock();
            st.bdev = None;
            if let Some(p) = st.process.as_mut() {
                p.cancel = true;
            }
            if st.state == RaidState::Online {
                st.state = RaidState::Offline;
            }
            if !st.lost_members || st.deleting {
                for s in st.slots.iter_mut() {
                    s.desc = None;
                }
            }
            st.dev.take()
        };
        if let Some(dev) = dev {
            let _ = dev.unregister(|| {});
        }
    }

    /// Closes every member (the array is deleted).
    pub(crate) fn close_all(&self) {
        let mut st = self.lock();
        for s in st.slots.iter_mut() {
            s.desc = None;
        }
    }
}

/// How an array maps its blocks onto its members.
pub(crate) enum Layout {
    /// Strips of `mask + 1` blocks dealt round-robin over `n` members.
    Raid0 { shift: u32, mask: u64, n: Members },
    /// Members end to end: member `i` holds array blocks `starts[i]..starts[i + 1]`.
    Concat { starts: Vec<u64> },
    /// Every member holds every block.
    Raid1,
}

/// The member count of a raid0, for dividing by it: with a power of two (the usual case)
/// a shift and a mask, not a 64-bit division (tens of cycles, on every I/O).
pub(crate) struct Members {
    n: u64,
    /// log2(n) when n is a power of two.
    shift: Option<u32>,
}

impl Members {
    fn new(n: u64) -> Members {
        Members {
            n,
            shift: n.is_power_of_two().then(|| n.trailing_zeros()),
        }
    }

    /// `(x / n, x % n)`.
    #[inline(always)]
    fn div_rem(&self, x: u64) -> (u64, usize) {
        match self.shift {
            Some(s) => (x >> s, (x & (self.n - 1)) as usize),
            None => (x / self.n, (x % self.n) as usize),
        }
    }
}

/// The registered RAID bdev.
pub(crate) struct RaidBdev {
    raid: Arc<Raid>,
    layout: Layout,
    dev: IoDevice<RaidCh>,
    /// Flush and unmap: supported when every member supports them.
    supported: [(IoType, bool); 2],
}

/// One member in a thread's channel.
pub(crate) struct Member {
    desc: Arc<Desc>,
    ch: BdevChannel,
    data_offset: u64,
    /// Reads may go here (not a member being rebuilt).
    read: Cell<bool>,
    /// It failed I/O on this thread: use it no more (the control thread removes it).
    failed: Cell<bool>,
    /// raid1 reads: its outstanding I/O on this thread, averaged over the last reads
    /// (times [`AVG_READS`]).
    avg_out: Cell<u64>,
}

/// A thread's channel to the RAID: its channel to each member, and the state that keeps
/// foreground writes out of a window being rebuilt.
pub(crate) struct RaidCh {
    raid: Arc<Raid>,
    members: RefCell<Vec<Option<Member>>>,
    /// Blocks `[0]..[1]` are being rebuilt: writes there wait (empty when 0..0).
    window: Cell<(u64, u64)>,
    waiting: RefCell<VecDeque<BdevIo>>,
    /// Member writes in flight, by generation; `epoch` is the current one.
    writes: [Cell<u32>; 2],
    epoch: Cell<usize>,
    /// A window lock waiting for the older generation's writes to finish.
    drain: RefCell<Option<ForEachChannel>>,
    /// raid1 reads with `raid1_read_affinity`: each member slot's home part of the
    /// array on this thread (see [`crate::split`]).
    split: Option<RefCell<ReadSplit>>,
    /// raid1 reads by least outstanding (no affinity): the members the layer reads from
    /// itself ([`PassThrough::mirror`]), those that may be read, kept up to date here.
    mirror: Option<MirrorSet>,
    /// Tests: raid1 reads this module picked a first member for (not by the layer's
    /// mirror).
    #[cfg(test)]
    pub(crate) first_reads: Cell<u64>,
}

impl Member {
    /// This member as the layer's pass-through sees it.
    fn passed(&self) -> StripeMember {
        StripeMember {
            desc: self.desc.clone(),
            ch: self.ch.clone(),
            data_offset: self.data_offset,
        }
    }

    /// This member for the layer's mirror reads, if it may be read.
    fn readable(&self) -> Option<StripeMember> {
        (self.read.get() && !self.failed.get()).then(|| self.passed())
    }
}

impl RaidCh {
    fn new(r: &Arc<Raid>) -> bdev_core::Result<RaidCh> {
        // Read before the array's lock: that one is never held while taking the module's.
        let affinity = crate::Raids::get().is_ok_and(|r| r.opts().raid1_read_affinity);
        let st = r.lock();
        let mut members = Vec::with_capacity(st.slots.len());
        for s in &st.slots {
            members.push(match (&s.desc, s.present()) {
                (Some(d), true) => Some(Member {
                    ch: d.get_io_channel()?,
                    desc: d.clone(),
                    data_offset: s.data_offset,
                    read: Cell::new(s.state == SlotState::Configured),
                    failed: Cell::new(false),
                    avg_out: Cell::new(0),
                }),
                _ => None,
            });
        }
        let mirror = (r.level == crate::RaidLevel::Raid1 && !affinity).then(|| {
            MirrorSet::new(
                members
                    .iter()
                    .map(|m| m.as_ref().and_then(Member::readable))
                    .collect(),
            )
        });
        Ok(RaidCh {
            raid: r.clone(),
            mirror,
            #[cfg(test)]
            first_reads: Cell::new(0),
            members: RefCell::new(members),
            window: Cell::new(st.window),
            waiting: RefCell::new(VecDeque::new()),
            writes: [Cell::new(0), Cell::new(0)],
            epoch: Cell::new(0),
            drain: RefCell::new(None),
            split: affinity.then(|| RefCell::new(ReadSplit::new(st.raid_size, st.slots.len()))),
        })
    }

    fn drop_member(&self, slot: usize) {
        if let Some(m) = self.members.borrow_mut().get_mut(slot) {
            *m = None;
        }
        if let Some(set) = &self.mirror {
            set.set(slot, None);
        }
    }

    /// A member failed an I/O: stop using it here, and have the control thread take it
    /// out of the array.
    fn member_failed(&self, slot: usize, status: IoStatus) {
        let members = self.members.borrow();
        let Some(Some(m)) = members.get(slot) else {
            return;
        };
        if m.failed.replace(true) {
            return;
        }
        m.read.set(false);
        if let Some(set) = &self.mirror {
            set.set(slot, None);
        }
        let name = m.desc.bdev().name().to_string();
        tracing::error!(raid = %self.raid.name, base = %name, %status, "base bdev failed I/O");
        let r = self.raid.clone();
        if let Err(e) = self
            .raid
            .ctl_thread
            .send_msg(move || r.base_gone(&name, true))
        {
            tracing::warn!("raid: control thread gone: {e}");
        }
    }

    fn write_done(&self, epoch: usize) {
        let w = &self.writes[epoch];
        w.set(w.get() - 1);
        if w.get() == 0 && epoch != self.epoch.get() {
            if let Some(next) = self.drain.borrow_mut().take() {
                next.next(Ok(()));
            }
        }
    }
}

/// Visits for the rebuild (each runs on a channel's thread).
impl RaidCh {
    /// Adds the member of `slot`, written but not read.
    pub(crate) fn add_member(
        &self,
        slot: usize,
        desc: &Arc<Desc>,
        data_offset: u64,
    ) -> bdev_core::Result<()> {
        let ch = desc.get_io_channel()?;
        if let Some(m) = self.members.borrow_mut().get_mut(slot) {
            *m = Some(Member {
                desc: desc.clone(),
                ch,
                data_offset,
                read: Cell::new(false),
                failed: Cell::new(false),
                avg_out: Cell::new(0),
            });
        }
        Ok(())
    }

    /// Moves the locked window to `w` (empty: none): writes waiting for the old window go
    /// on, writes to the new one wait. `next` goes on once every write that started
    /// before is done.
    pub(crate) fn set_window(ch: &IoChannel<RaidCh>, w: (u64, u64), next: ForEachChannel) {
        ch.window.set(w);
        let old = ch.epoch.get();
        ch.epoch.set(old ^ 1);
        let waiting: Vec<BdevIo> = ch.waiting.borrow_mut().drain(..).collect();
        for io in waiting {
            raid1_write(ch, io);
        }
        if ch.writes[old].get() == 0 {
            next.next(Ok(()));
        } else {
            *ch.drain.borrow_mut() = Some(next);
        }
    }

    /// The rebuild of `slot` finished: reads may go there.
    pub(crate) fn member_readable(&self, slot: usize) {
        if let Some(Some(m)) = self.members.borrow().get(slot) {
            m.read.set(!m.failed.get());
            if let Some(set) = &self.mirror {
                set.set(slot, m.readable());
            }
        }
    }
}

impl RaidBdev {
    /// Everything but a raid0 read or write and a raid1 read (see `submit_request`).
    #[inline(never)]
    fn submit_other(&self, ch: &IoChannel<RaidCh>, io: BdevIo) {
        match (&self.layout, io.io_type()) {
            (_, IoType::Reset) => fan_out_all(ch, io),
            (Layout::Raid1, IoType::Read) => raid1_read(ch, io, 0, IoStatus::Failed, None),
            (Layout::Raid1, _) => raid1_write(ch, io),
            (Layout::Concat { starts }, IoType::Read | IoType::Write) => {
                let lba = io.offset_blocks();
                let i = starts.partition_point(|&s| s <= lba) - 1;
                if lba + io.num_blocks() > starts[i + 1] {
                    return io.complete(IoStatus::Failed);
                }
                forward(ch, io, i, lba - starts[i]);
            }
            (layout, _) => fan_out_ranges(ch, io, layout),
        }
    }
}

impl BdevOps for RaidBdev {
    type Channel = IoChannel<RaidCh>;

    fn module_name(&self) -> &'static str {
        MODULE
    }

    fn create_channel(&self) -> bdev_core::Result<IoChannel<RaidCh>> {
        self.dev.get_channel()
    }

    #[inline]
    fn submit_request(&self, ch: &IoChannel<RaidCh>, io: BdevIo) {
        // The hot cases are all this function does inline, the rest is a call of its own,
        // so that the hot path saves registers once, not in two functions (callgrind:
        // ~15 instructions per I/O): a raid1 read (raid0's reads and writes within a strip
        // pass through without coming here, see `pass_through`), then a raid0 read or
        // write that could not (a piece of a split one, say).
        match (&self.layout, io.io_type()) {
            (Layout::Raid1, IoType::Read) => raid1_read(ch, io, 0, IoStatus::Failed, None),
            (Layout::Raid0 { shift, mask, n }, IoType::Read | IoType::Write) => {
                let lba = io.offset_blocks();
                let (row, i) = n.div_rem(lba >> shift);
                let mlba = (row << shift) | (lba & mask);
                if (lba & mask) + io.num_blocks() > mask + 1 {
                    // The layer splits on the strip boundary; this can't arrive.
                    return io.complete(IoStatus::Failed);
                }
                forward(ch, io, i, mlba)
            }
            _ => self.submit_other(ch, io),
        }
    }

    // A raid0 read or write within a strip is all forward: the layer maps it to its
    // member and takes it down itself (no call here, no frame). A raid0 channel's members
    // are fixed for its life (a raid0 that loses one goes offline; only raid1 drops and
    // adds members per channel), as the pass-through requires.
    fn pass_through(&self, ch: &IoChannel<RaidCh>) -> Option<PassThrough> {
        let Layout::Raid0 { mask, .. } = &self.layout else {
            // raid1: its reads by least outstanding, as `raid1_read` picks them; a read
            // that fails comes back to `pass_through_failed`.
            return ch.mirror.as_ref().map(PassThrough::mirror);
        };
        let members = ch.members.borrow();
        let members = members
            .iter()
            .map(|m| m.as_ref().map(Member::passed))
            .collect::<Option<Vec<_>>>()?;
        PassThrough::striped(mask + 1, members)
    }

    // A raid1 read that the layer took to member `member` failed there: on to the next
    // member, as after `raid1_read`'s own first try.
    fn pass_through_failed(
        &self,
        ch: &IoChannel<RaidCh>,
        io: BdevIo,
        member: usize,
        status: IoStatus,
    ) {
        raid1_read_failed(ch, io, 0, member, status, None);
    }

    fn io_type_supported(&self, io_type: IoType) -> bool {
        match io_type {
            IoType::Read | IoType::Write | IoType::Reset => true,
            IoType::Flush | IoType::Unmap => {
                self.supported.iter().any(|&(t, ok)| t == io_type && ok)
            }
            _ => false,
        }
    }

    fn destruct(&self, done: DestructDone) {
        self.raid.deconfigured();
        done.complete();
    }

    fn write_config_json(&self, _bdev: &Bdev) -> Option<serde_json::Value> {
        // An array with a superblock reassembles itself from its members.
        if self.raid.superblock {
            return None;
        }
        Some(crate::config_entry(&self.raid))
    }

    fn dump_info_json(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({ "raid": crate::raid_info(&self.raid) }))
    }
}

/// Sends `io` to member `i` at its block `mlba` (of the array's data on it). Always
/// inlined: as a call of its own it saved and restored registers a second time on
/// raid0's path (callgrind: ~17 instructions per I/O).
#[inline(always)]
fn forward(ch: &IoChannel<RaidCh>, io: BdevIo, i: usize, mlba: u64) {
    let members = ch.members.borrow();
    match members.get(i) {
        Some(Some(m)) => io.forward_to_and_complete(&m.desc, &m.ch, m.data_offset + mlba),
        _ => {
            drop(members);
            io.complete(IoStatus::Failed)
        }
    }
}

/// A raid1 read: to the readable member with the fewest I/Os outstanding on this thread
/// (ties to the lowest slot). With `raid1_read_affinity`, to the member whose home part
/// of the array holds it ([`crate::split`]) unless that member can't read or has more
/// than twice (plus [`HOME_CAP_SLACK`]) the I/Os outstanding of the least busy readable
/// member, both averaged over the last reads; a retry always goes by fewest outstanding.
/// When it fails, the read goes to the next member (`tried` has a bit for each member
/// tried); once it is served, the first member that failed (`bad`) gets those blocks
/// rewritten ([`correct_read_error`]). `bad` leaves the array only if that write fails
/// too, or if no member could serve the read.
// The cap spreads a burst that falls in one part (a sequential read at a high queue
// depth) over both members, the home one holding about twice the other's I/O, and sends
// reads away from a member whose queue has grown far past the others'. It compares
// averages because completions come in batches, a member's poller finishing its whole
// batch at once: for a moment its count is near zero while the other's is not, and a
// cap on the counts of the moment sent the reads submitted then away from home (the
// least busy + 8 measured the same as no locality at all on malloc disks). Below the
// cap a sequential stream stays on its home member, and a slow member keeps its half
// of the reads: the trade-off that keeps the option off by default.
// `bad` is a u8 to keep the completion's captures within the callback's inline room
// (DEFER_INLINE): a usize there made every raid1 read allocate (tests/no_alloc.rs).
fn raid1_read(ch: &IoChannel<RaidCh>, io: BdevIo, tried: u64, last: IoStatus, bad: Option<u8>) {
    #[cfg(test)]
    if tried == 0 {
        ch.first_reads.set(ch.first_reads.get() + 1);
    }
    let pick = {
        let members = ch.members.borrow();
        // A retry goes by outstanding I/O alone (its home member has failed it).
        let home = match &ch.split {
            Some(s) if tried == 0 => Some(s.borrow_mut().home(io.offset_blocks())),
            _ => None,
        };
        let mut best: Option<(usize, u64)> = None;
        let (mut home_a, mut min_a) = (None, u64::MAX);
        for (i, m) in members.iter().enumerate() {
            let Some(m) = m else { continue };
            if !m.read.get() || tried & (1 << i) != 0 {
                continue;
            }
            let o = m.ch.outstanding();
            if let Some(h) = home {
                let a = m.avg_out.get();
                let a = a - a / AVG_READS + o;
                m.avg_out.set(a);
                min_a = min_a.min(a);
                if i == h {
                    home_a = Some((h, a));
                }
            }
            if best.is_none_or(|(_, b)| o < b) {
                best = Some((i, o));
            }
        }
        match home_a {
            Some((h, a)) if a <= 2 * min_a + HOME_CAP_SLACK * AVG_READS => Some(h),
            _ => best.map(|(i, _)| i),
        }
    };
    let Some(i) = pick else {
        // No member could serve it: the first to fail leaves the array, and the read
        // fails with the last member's answer (failed if there was none).
        if let Some(b) = bad {
            ch.member_failed(b as usize, last);
        }
        return io.complete(last);
    };
    let members = ch.members.borrow();
    let Some(Some(m)) = members.get(i) else {
        return;
    };
    let lba = m.data_offset + io.offset_blocks();
    let ch2 = ch.clone();
    let done = move |status: IoStatus, io: BdevIo| {
        if status.is_success() {
            return match bad {
                Some(b) => correct_read_error(&ch2, io, b as usize),
                None => io.complete(status),
            };
        }
        raid1_read_failed(&ch2, io, tried, i, status, bad);
    };
    if bad.is_none() {
        // Nothing to correct on success: the read completes with no call back here.
        io.forward_to_on_error(&m.desc, &m.ch, lba, done)
    } else {
        io.forward_to(&m.desc, &m.ch, lba, done)
    }
}

/// A read failed at member `i` with `status` (after the members in `tried`, the first to
/// fail it `bad`): on to the next member. A read aborted (the member's own reset) or
/// refused says nothing about the member's data: nothing to correct on it.
fn raid1_read_failed(
    ch: &IoChannel<RaidCh>,
    io: BdevIo,
    tried: u64,
    i: usize,
    status: IoStatus,
    bad: Option<u8>,
) {
    let bad = match status {
        IoStatus::Aborted | IoStatus::Rejected(_) => bad,
        _ => bad.or(u8::try_from(i).ok()),
    };
    raid1_read(ch, io, tried | 1 << i, status, bad);
}

/// A read served by another member after member `bad` failed it: the read completes
/// now, and the control thread rewrites those blocks on `bad` from a member in service
/// (`process::repair`, under the rebuild's window lock). `bad` leaves the array only if
/// that write fails.
fn correct_read_error(ch: &IoChannel<RaidCh>, io: BdevIo, bad: usize) {
    let (off, n) = (io.offset_blocks(), io.num_blocks());
    io.complete(IoStatus::Success);
    let bit = 1u64 << bad;
    if ch.raid.correcting.fetch_or(bit, Ordering::AcqRel) & bit != 0 {
        // One is under way for this member already.
        return;
    }
    let r = ch.raid.clone();
    let sent =
        ch.raid.ctl_thread.send_msg(move || {
            let r2 = r.clone();
            if let Err(e) = bdev_core::thread::spawn_local(async move {
                crate::process::repair(&r2, bad, off, n).await
            }) {
                tracing::warn!(raid = %r.name, "raid1: read error left uncorrected: {e}");
                r.correcting.fetch_and(!bit, Ordering::AcqRel);
            }
        });
    if let Err(e) = sent {
        tracing::warn!("raid: control thread gone: {e}");
        ch.raid.correcting.fetch_and(!bit, Ordering::AcqRel);
    }
}

/// A raid1 write (or flush, unmap): to every member; it succeeds when one member has the
/// data. A member that fails leaves the array; one that refuses its part fails the write.
/// Writes to the window being rebuilt wait.
pub(crate) fn raid1_write(ch: &IoChannel<RaidCh>, io: BdevIo) {
    let (ws, we) = ch.window.get();
    if ws < we && io.io_type() != IoType::Flush {
        let (s, e) = (io.offset_blocks(), io.offset_blocks() + io.num_blocks());
        if s < we && ws < e {
            ch.waiting.borrow_mut().push_back(io);
            return;
        }
    }
    let epoch = ch.epoch.get();
    let members = ch.members.borrow();
    let shared = io.share_any();
    let (t, off, n) = (
        shared.io_type(),
        shared.offset_blocks(),
        shared.num_blocks(),
    );
    for (i, m) in members.iter().enumerate() {
        let Some(m) = m else { continue };
        if m.failed.get() {
            continue;
        }
        let w = &ch.writes[epoch];
        w.set(w.get() + 1);
        let ch2 = ch.clone();
        shared.submit_child(
            &m.desc,
            &m.ch,
            t,
            m.data_offset + off,
            n,
            0,
            move |st, s| {
                match st {
                    _ if st.is_success() => s.ok(),
                    // As SPDK's: a member that refuses its part fails the whole write
                    // (the others may have written it: the blocks are undefined, as
                    // after any failed write), and nobody leaves, its media having
                    // failed nothing. What refuses: a member's own limits (one block in
                    // more segments than it takes); the request's faults stop above.
                    IoStatus::Rejected(_) => s.fail_whole(st),
                    _ => {
                        s.fail(st);
                        ch2.member_failed(i, st);
                    }
                }
                ch2.write_done(epoch);
            },
        );
    }
}

/// A reset goes to every member.
fn fan_out_all(ch: &IoChannel<RaidCh>, io: BdevIo) {
    let members = ch.members.borrow();
    let shared = io.share();
    for m in members.iter().flatten() {
        shared.submit_child(&m.desc, &m.ch, IoType::Reset, 0, 0, 0, fail_on_error);
    }
}

fn fail_on_error(st: IoStatus, s: SharedIo) {
    if !st.is_success() {
        s.fail(st);
    }
}

/// A flush or unmap over raid0 or concat: to each member the range touches, with the
/// part of the range it holds.
fn fan_out_ranges(ch: &IoChannel<RaidCh>, io: BdevIo, layout: &Layout) {
    let members = ch.members.borrow();
    let (t, off, n) = (io.io_type(), io.offset_blocks(), io.num_blocks());
    let shared = io.share();
    let send = |i: usize, mlba: u64, num: u64| match members.get(i) {
        Some(Some(m)) => shared.submit_child(
            &m.desc,
            &m.ch,
            t,
            m.data_offset + mlba,
            num,
            0,
            fail_on_error,
        ),
        _ => shared.fail(IoStatus::Failed),
    };
    if n == 0 {
        return;
    }
    match layout {
        Layout::Raid0 {
            shift,
            mask,
            n: members_n,
        } => {
            for (i, s, e) in raid0_ranges(off, n, *shift, *mask, members_n.n) {
                send(i, s, e - s);
            }
        }
        Layout::Concat { starts } => {
            for i in 0..starts.len() - 1 {
                let (s, e) = (starts[i].max(off), starts[i + 1].min(off + n));
                if s < e {
                    send(i, s - starts[i], e - s);
                }
            }
        }
        Layout::Raid1 => {}
    }
}

/// The part of blocks `off..off + n` of a raid0 that each member holds: `(member, start,
/// end)` in the member's blocks (one contiguous range per member).
pub(crate) fn raid0_ranges(
    off: u64,
    n: u64,
    shift: u32,
    mask: u64,
    nm: u64,
) -> Vec<(usize, u64, u64)> {
    let strip = mask + 1;
    let (first, last) = (off >> shift, (off + n - 1) >> shift);
    let mut out = Vec::new();
    for i in 0..nm {
        // The first and last strips of the range on member i.
        let f = first + (i + nm - first % nm) % nm;
        if f > last {
            continue;
        }
        let l = last - (last % nm + nm - i) % nm;
        let s = ((f / nm) << shift) + if f == first { off & mask } else { 0 };
        let e = ((l / nm) << shift)
            + if l == last {
                ((off + n - 1) & mask) + 1
            } else {
                strip
            };
        out.push((i as usize, s, e));
    }
    out
}
