//! RAID bdevs (SPDK's `bdev_raid`): raid0 (striping), raid1 (mirroring, with degraded mode
//! and rebuild) and concat, over base bdevs reached only through bdev-core's consumer API
//! (open, claim, channels), as an application would reach them.
//!
//! - **raid0**: strips of `strip_size_kb` dealt round-robin over the members; the array
//!   sets its optimal I/O boundary to the strip, so the bdev layer splits I/O there and
//!   each read or write goes to one member, forwarded in place. Flush and unmap go to each
//!   member the range touches, with the part it holds.
//! - **concat**: members end to end, each rounded down to whole strips (as SPDK does), the
//!   boundary at the strip so that no I/O crosses members.
//! - **raid1**: writes (and flush, unmap) go to every member and succeed when one member
//!   has the data; a member that fails a write leaves the array, which carries on
//!   degraded. A failed read goes on to the next member; then the blocks are rewritten
//!   on the member that failed it from one in service (SPDK's read-error correction),
//!   which leaves only if that write fails too, or if no member could serve the read.
//!   Reads go to the member with the fewest I/Os outstanding on the thread (ties to the
//!   lowest slot), picked by the bdev layer itself (`PassThrough::mirror`: the channel
//!   keeps its readable members in a `MirrorSet`, and a read that fails comes back to
//!   `pass_through_failed`), or, with `bdev_raid_set_options {"raid1_read_affinity":
//!   true}`, by this module, to a home member by LBA part (`split`).
//!   `bdev_raid_add_base_bdev` puts a new member in an empty slot and rebuilds it
//!   ([`process`]).
//! - **superblock** ([`sb`]): SPDK's on-disk layout, at block 0 of every member; with
//!   `superblock: true` the array's data starts 1 MiB into each member, and the array
//!   reassembles itself through examine when its members appear.
//!
//! Deviations from SPDK v24.09, on purpose:
//! - raid1 reads count a member's outstanding I/Os (reads and writes) where SPDK counts
//!   its outstanding read blocks; and an option of ours, `raid1_read_affinity`, sends
//!   them to a home member by LBA part instead (see `split`).
//! - a base bdev that does not exist at `bdev_raid_create` is an error (-ENODEV), not a
//!   slot left waiting: a mistyped name otherwise leaves an array silently `configuring`.
//!   Arrays with a superblock still assemble from whichever members appear, and SPDK's
//!   placeholder for an empty slot (`removed_base_bdev_<n>`, what `save_config` writes for
//!   a degraded raid1) creates the raid1 degraded;
//! - a strip must be a power-of-two number of blocks (SPDK's mapping assumes it, but a
//!   1536-byte block would break it silently);
//! - a member that reappears while its online array runs degraded is left alone (SPDK
//!   re-adds it and rebuilds it): `bdev_raid_add_base_bdev` does that when asked;
//! - raid1 supports flush and unmap (to every member), also during a rebuild;
//! - a raid1 read error is corrected after the read completes, by the control thread
//!   under the rebuild's window lock ([`process`]), not by writing the read's data back
//!   at once: unlocked, a foreground write to those blocks could land first and be
//!   overwritten with older data, leaving the mirrors different. A correction is
//!   skipped while a member is being added or rebuilt;
//! - during a rebuild every write also goes to the new member, wherever it lies; writes
//!   to the window being copied wait for it (SPDK skips the target above the window);
//! - at most 64 base bdevs (SPDK: 255): a raid1 read's members tried, and the members
//!   with a correction under way, are 64-bit masks.

pub mod process;
pub mod raid;
pub mod sb;
pub(crate) mod split;

use std::str::FromStr;
use std::sync::{Arc, Mutex};

use bdev_core::bdev::{Bdev, get_by_name};
use bdev_core::config::{Methods, parse_params, parse_params_over};
use bdev_core::module::BdevModule;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use raid::{MAX_BASE_BDEVS, Raid, SlotState};

/// What can go wrong configuring a RAID.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Options out of range, or bases that can't form the array.
    #[error("{0}")]
    InvalidOpts(String),
    /// A RAID of this name exists.
    #[error("raid bdev {0} already exists")]
    Exists(String),
    /// No RAID of this name.
    #[error("raid bdev {0} not found")]
    NotFound(String),
    /// The bdev is a member of no RAID.
    #[error("base bdev {0} is not part of any raid bdev")]
    NotInRaid(String),
    /// A base bdev named in the request does not exist.
    #[error("base bdev {0} does not exist")]
    NoBase(String),
    /// The operation can't run now (a rebuild in progress, no empty slot...).
    #[error("{0}")]
    Busy(String),
    /// A base bdev carries the superblock of another array.
    #[error("Existing raid superblock found on bdev {0}")]
    ForeignSuperblock(String),
    /// Reading or writing a superblock failed.
    #[error("superblock on {bdev}: {what}")]
    Superblock {
        /// The base bdev.
        bdev: String,
        /// What went wrong.
        what: String,
    },
    /// A member failed a rebuild's or a read-error correction's I/O.
    #[error("base bdev {bdev}: {what}")]
    MemberIo {
        /// The base bdev.
        bdev: String,
        /// What went wrong.
        what: String,
    },
    /// The bdev layer refused (claimed base, duplicate name, no thread...).
    #[error(transparent)]
    Core(#[from] bdev_core::Error),
}

impl Error {
    /// The errno SPDK answers with for the same condition (negative).
    pub fn errno(&self) -> i32 {
        match self {
            Error::InvalidOpts(_) => -libc::EINVAL,
            Error::Exists(_) | Error::ForeignSuperblock(_) => -libc::EEXIST,
            Error::NotFound(_) | Error::NoBase(_) | Error::NotInRaid(_) => -libc::ENODEV,
            Error::Busy(_) => -libc::EPERM,
            Error::Superblock { .. } | Error::MemberIo { .. } => -libc::EIO,
            Error::Core(c) => c.errno(),
        }
    }

    /// For the RPC edge: SPDK's errno as the code, this error's text as the message.
    fn at(self, ctx: impl std::fmt::Display) -> bdev_core::Error {
        bdev_core::Error::Rpc {
            code: self.errno(),
            message: format!("{ctx}: {self}"),
        }
    }
}

/// RAID levels (SPDK's names; numbers as in the superblock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RaidLevel {
    /// Striping.
    Raid0,
    /// Mirroring.
    Raid1,
    /// Concatenation.
    Concat,
}

impl RaidLevel {
    /// SPDK's name.
    pub fn name(self) -> &'static str {
        match self {
            RaidLevel::Raid0 => "raid0",
            RaidLevel::Raid1 => "raid1",
            RaidLevel::Concat => "concat",
        }
    }

    /// The superblock's number for the level.
    pub fn sb_value(self) -> u32 {
        match self {
            RaidLevel::Raid0 => 0,
            RaidLevel::Raid1 => 1,
            RaidLevel::Concat => 99,
        }
    }

    /// The level of a superblock number.
    pub fn from_sb(v: u32) -> Option<RaidLevel> {
        match v {
            0 => Some(RaidLevel::Raid0),
            1 => Some(RaidLevel::Raid1),
            99 => Some(RaidLevel::Concat),
            _ => None,
        }
    }

    /// Fewest base bdevs at creation.
    fn min_bases(self) -> usize {
        match self {
            RaidLevel::Raid1 => 2,
            RaidLevel::Raid0 | RaidLevel::Concat => 1,
        }
    }
}

impl std::fmt::Display for RaidLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for RaidLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "raid0" | "0" => Ok(RaidLevel::Raid0),
            "raid1" | "1" => Ok(RaidLevel::Raid1),
            "concat" => Ok(RaidLevel::Concat),
            _ => Err(format!(
                "unsupported raid_level '{s}' (raid0, 0, raid1, 1 or concat)"
            )),
        }
    }
}

impl Serialize for RaidLevel {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for RaidLevel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A RAID's state, as `bdev_raid_get_bdevs` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RaidState {
    /// Registered and serving I/O.
    Online,
    /// Waiting for base bdevs.
    Configuring,
    /// Lost too many members; no bdev.
    Offline,
}

impl RaidState {
    /// SPDK's name.
    pub fn name(self) -> &'static str {
        match self {
            RaidState::Online => "online",
            RaidState::Configuring => "configuring",
            RaidState::Offline => "offline",
        }
    }
}

/// Options of `bdev_raid_create` (SPDK's names).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateOpts {
    /// The RAID bdev's name.
    pub name: String,
    /// raid0 | 0 | raid1 | 1 | concat.
    pub raid_level: RaidLevel,
    /// The members, in slot order.
    pub base_bdevs: Vec<String>,
    /// Strip size in KiB: a power of two for raid0 and concat, 0 (absent) for raid1.
    #[serde(default)]
    pub strip_size_kb: u32,
    /// Its UUID (random when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Uuid>,
    /// Keep a superblock on the members (the array then reassembles itself).
    #[serde(default)]
    pub superblock: bool,
}

/// Options of `bdev_raid_set_options`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct RaidOptions {
    /// Size of the window a rebuild copies at a time, in KiB.
    pub process_window_size_kb: u32,
    /// Cap on a rebuild's bandwidth in MiB/s (0: none).
    pub process_max_bandwidth_mb_sec: u32,
    /// Ours: raid1 reads go to a home member by LBA part rather than to the least busy
    /// member (`split`), for channels opened from now on. Each member then sees half
    /// the working set (of two), which pays where members cache (RAM disks, files on
    /// the host's page cache, devices with a small mapping cache): raid1 randread over
    /// two malloc disks 0.85 -> 0.92 of one disk. It costs balance where the least-busy
    /// rule wins: a sequential stream at a moderate depth stays on one member, and a
    /// member slower than the others still gets half the reads until its queue is more
    /// than twice the others' plus 32. Off by default (SPDK's rule).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub raid1_read_affinity: bool,
}

impl Default for RaidOptions {
    fn default() -> Self {
        RaidOptions {
            process_window_size_kb: 1024,
            process_max_bandwidth_mb_sec: 0,
            raid1_read_affinity: false,
        }
    }
}

/// The RAIDs of one application (module state, in [`bdev_core::module::app_data`]).
#[derive(Default)]
pub(crate) struct Raids {
    list: Mutex<Vec<Arc<Raid>>>,
    opts: Mutex<RaidOptions>,
}

impl Raids {
    pub(crate) fn get() -> Result<Arc<Raids>, Error> {
        bdev_core::module::app_data::<Raids>()
            .ok_or(Error::Core(bdev_core::Error::NoThread { op: "raid" }))
    }

    pub(crate) fn all(&self) -> Vec<Arc<Raid>> {
        self.list.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn find(&self, name: &str) -> Option<Arc<Raid>> {
        self.all().into_iter().find(|r| r.name == name)
    }

    pub(crate) fn find_uuid(&self, uuid: Uuid) -> Option<Arc<Raid>> {
        self.all().into_iter().find(|r| r.uuid == uuid)
    }

    pub(crate) fn add(&self, r: Arc<Raid>) -> Result<(), Error> {
        let mut l = self.list.lock().unwrap_or_else(|e| e.into_inner());
        if l.iter().any(|x| x.name == r.name) {
            return Err(Error::Exists(r.name.clone()));
        }
        l.push(r);
        Ok(())
    }

    pub(crate) fn remove(&self, r: &Arc<Raid>) {
        self.list
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|x| !Arc::ptr_eq(x, r));
    }

    pub(crate) fn opts(&self) -> RaidOptions {
        self.opts.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Checks a create request before anything is touched.
fn check(o: &CreateOpts) -> Result<(), Error> {
    if o.name.is_empty() || o.name.len() >= sb::NAME_SIZE {
        return Err(Error::InvalidOpts(format!(
            "raid bdev name must be 1 to {} characters",
            sb::NAME_SIZE - 1
        )));
    }
    if o.base_bdevs.iter().any(|b| b.is_empty()) {
        return Err(Error::InvalidOpts(
            "The base bdev name cannot be empty".into(),
        ));
    }
    let min = o.raid_level.min_bases();
    if o.base_bdevs.len() < min {
        return Err(Error::InvalidOpts(format!(
            "At least {min} base devices required for {}",
            o.raid_level
        )));
    }
    if o.base_bdevs.len() > MAX_BASE_BDEVS {
        return Err(Error::InvalidOpts(format!(
            "at most {MAX_BASE_BDEVS} base bdevs"
        )));
    }
    for (i, b) in o.base_bdevs.iter().enumerate() {
        if o.base_bdevs[..i].contains(b) {
            return Err(Error::InvalidOpts(format!("base bdev {b} listed twice")));
        }
    }
    match o.raid_level {
        RaidLevel::Raid1 if o.strip_size_kb != 0 => Err(Error::InvalidOpts(
            "Strip size is not supported by raid1".into(),
        )),
        RaidLevel::Raid1 => Ok(()),
        _ if !o.strip_size_kb.is_power_of_two() => Err(Error::InvalidOpts(format!(
            "Invalid strip size {} (strip_size_kb must be a power of two)",
            o.strip_size_kb
        ))),
        _ if o.strip_size_kb > MAX_STRIP_SIZE_KB => Err(Error::InvalidOpts(format!(
            "Invalid strip size {} (strip_size_kb at most {MAX_STRIP_SIZE_KB})",
            o.strip_size_kb
        ))),
        _ => Ok(()),
    }
}

/// The largest strip, in KiB (1 GiB): its size in bytes, and so in blocks, fits the
/// superblock's 32-bit field.
pub const MAX_STRIP_SIZE_KB: u32 = 1024 * 1024;

/// The name SPDK's `save_config` gives an empty slot of a degraded array.
const REMOVED: &str = "removed_base_bdev_";

/// Creates a RAID (`bdev_raid_create`): claims every base, writes the superblock if asked,
/// registers the array's bdev. On any failure, nothing stays claimed or listed. A base
/// named `removed_base_bdev_<n>` (how a degraded raid1 is saved) is an empty slot.
pub async fn create(o: CreateOpts) -> Result<String, Error> {
    check(&o)?;
    let raids = Raids::get()?;
    if get_by_name(&o.name).is_some() || raids.find(&o.name).is_some() {
        return Err(Error::Exists(o.name));
    }
    let bases = o
        .base_bdevs
        .iter()
        .map(|n| {
            if n.starts_with(REMOVED) {
                return Ok(None);
            }
            get_by_name(n)
                .map(Some)
                .ok_or_else(|| Error::NoBase(n.clone()))
        })
        .collect::<Result<Vec<Option<Bdev>>, Error>>()?;
    let present: Vec<&Bdev> = bases.iter().flatten().collect();
    let empty = bases.len() - present.len();
    if empty > 0 && (o.raid_level != RaidLevel::Raid1 || present.is_empty()) {
        return Err(Error::InvalidOpts(format!(
            "{} needs every base bdev present ({empty} missing)",
            o.raid_level
        )));
    }
    let bl = present[0].block_len();
    if let Some(b) = present.iter().find(|b| b.block_len() != bl) {
        return Err(Error::InvalidOpts(format!(
            "Raid bdev '{}' blocklen {bl} differs from base bdev '{}' blocklen {}",
            o.name,
            b.name(),
            b.block_len()
        )));
    }
    if o.raid_level != RaidLevel::Raid1 {
        let strip = o.strip_size_kb as u64 * 1024;
        if strip < bl as u64 {
            return Err(Error::InvalidOpts(
                "Strip size cannot be smaller than the device block size".into(),
            ));
        }
        if strip % bl as u64 != 0 || !(strip / bl as u64).is_power_of_two() {
            return Err(Error::InvalidOpts(format!(
                "strip of {} KiB is not a power-of-two number of {bl}-byte blocks",
                o.strip_size_kb
            )));
        }
    }
    if let Some(b) = present.iter().find(|b| b.claimed_by().is_some()) {
        return Err(Error::Core(bdev_core::Error::Claimed {
            name: b.name().to_string(),
            module: b.claimed_by().unwrap_or_default(),
        }));
    }
    // A base that belongs to another array (its superblock says so) is not taken.
    for b in &present {
        if sb::read(b).await.is_some() {
            return Err(Error::ForeignSuperblock(b.name().to_string()));
        }
    }
    let t = bdev_core::thread::current_or("bdev_raid_create")?;
    let r = Raid::new(
        o.name.clone(),
        o.raid_level,
        o.strip_size_kb,
        o.uuid.unwrap_or_else(Uuid::new_v4),
        o.superblock,
        bases.len(),
        t.handle(),
    );
    raids.add(r.clone())?;
    let built = async {
        for (i, b) in bases.iter().enumerate() {
            if let Some(b) = b {
                let off = if o.superblock { sb::data_offset(b) } else { 0 };
                r.attach(i, b, off, SlotState::Configured)?;
            }
        }
        r.configure().await
    }
    .await;
    match built {
        Ok(_) => Ok(o.name),
        Err(e) => {
            r.lock().deleting = true;
            r.close_all();
            raids.remove(&r);
            Err(e)
        }
    }
}

/// Deletes a RAID (`bdev_raid_delete`): unregisters its bdev, releases its members. The
/// superblock stays (as SPDK's): the array reassembles when its members are examined again.
pub async fn delete(name: &str) -> Result<(), Error> {
    let raids = Raids::get()?;
    let r = raids
        .find(name)
        .ok_or_else(|| Error::NotFound(name.to_string()))?;
    let bdev = {
        let mut st = r.lock();
        st.deleting = true;
        if let Some(p) = st.process.as_mut() {
            p.cancel = true;
        }
        st.bdev.clone()
    };
    raids.remove(&r);
    if let Some(b) = bdev {
        b.unregister_async().await?;
    }
    r.close_all();
    Ok(())
}

/// `bdev_raid_add_base_bdev`: adds `base` to `raid`. An online raid1 takes it in an empty
/// slot and rebuilds it (the call returns once the rebuild started); an array still
/// assembling from its superblock takes it only in the slot that waits for its UUID; an
/// offline array takes nothing. One such operation at a time per array.
pub async fn add_base_bdev(raid: &str, base: &str) -> Result<(), Error> {
    let raids = Raids::get()?;
    let r = raids
        .find(raid)
        .ok_or_else(|| Error::NotFound(raid.to_string()))?;
    let b = get_by_name(base);
    // Checked in SPDK's order: an operation under way, a slot for the base, then the base
    // itself (there, claimed, its block size). The slot is reserved before anything
    // awaits.
    let (slot, online, off, b) = {
        let mut st = r.lock();
        if st.busy || st.process.is_some() {
            return Err(Error::Busy(format!("raid bdev '{raid}' is in process")));
        }
        if st.deleting {
            return Err(Error::NotFound(raid.to_string()));
        }
        let (slot, online) = match st.state {
            RaidState::Offline => {
                return Err(Error::InvalidOpts(format!(
                    "raid bdev {raid} is offline: delete it and create it anew"
                )));
            }
            RaidState::Configuring => {
                let b = b.as_ref().ok_or_else(|| Error::NoBase(base.to_string()))?;
                let slot = st
                    .slots
                    .iter()
                    .position(|s| s.desc.is_none() && s.uuid == Some(b.uuid()))
                    .ok_or_else(|| {
                        Error::InvalidOpts(format!(
                            "base bdev {base} is not a member raid bdev {raid} waits for"
                        ))
                    })?;
                (slot, false)
            }
            RaidState::Online => {
                if r.level != RaidLevel::Raid1 {
                    return Err(Error::InvalidOpts(format!(
                        "raid bdev {raid} is an online {}: no empty slot to fill",
                        r.level
                    )));
                }
                let slot = st
                    .slots
                    .iter()
                    .position(|s| s.desc.is_none())
                    .ok_or_else(|| {
                        Error::InvalidOpts(format!("raid bdev {raid} has no empty slot"))
                    })?;
                (slot, true)
            }
        };
        let b = b.ok_or_else(|| Error::NoBase(base.to_string()))?;
        if let Some(m) = b.claimed_by() {
            return Err(Error::Core(bdev_core::Error::Claimed {
                name: base.to_string(),
                module: m,
            }));
        }
        if st.block_len != 0 && b.block_len() != st.block_len {
            return Err(Error::InvalidOpts(format!(
                "Raid bdev '{raid}' blocklen {} differs from base bdev '{base}' blocklen {}",
                st.block_len,
                b.block_len()
            )));
        }
        if let Some(rb) = st.bdev.as_ref().filter(|_| online) {
            for t in [
                bdev_core::bdev::IoType::Unmap,
                bdev_core::bdev::IoType::Flush,
            ] {
                if rb.io_type_supported(t) && !b.io_type_supported(t) {
                    return Err(Error::InvalidOpts(format!(
                        "base bdev {base} does not support {t}, which raid bdev {raid} offers"
                    )));
                }
            }
        }
        let known = st.slots[slot].data_offset;
        let off = match (r.superblock, known) {
            (false, _) => 0,
            (true, 0) => sb::data_offset(&b),
            (true, k) => k,
        };
        if online
            && off
                .checked_add(st.raid_size)
                .is_none_or(|end| b.num_blocks() < end)
        {
            return Err(Error::InvalidOpts(format!(
                "base bdev {base} too small for raid bdev {raid}"
            )));
        }
        st.busy = true;
        (slot, online, off, b)
    };
    let res = async {
        // A member of another array keeps its superblock: refuse it.
        if let Some(found) = sb::read(&b).await {
            if found.uuid != r.uuid {
                return Err(Error::ForeignSuperblock(base.to_string()));
            }
        }
        if r.lock().deleting {
            return Err(Error::NotFound(raid.to_string()));
        }
        if !online {
            r.attach(slot, &b, off, SlotState::Configured)?;
            let ready = {
                let st = r.lock();
                st.slots
                    .iter()
                    .all(|s| s.uuid.is_none() || s.desc.is_some())
            };
            if ready {
                r.configure().await?;
            }
            return Ok(());
        }
        r.attach(slot, &b, off, SlotState::Rebuilding)?;
        r.lock().process = Some(raid::Process {
            target: slot,
            done_blocks: 0,
            cancel: false,
        });
        if let Err(e) = process::start(&r, slot).await {
            r.lock().process = None;
            let (tx, rx) = bdev_core::oneshot::channel();
            r.remove_slot(slot, false, Box::new(move || tx.send(())));
            let _ = rx.await;
            return Err(e);
        }
        Ok(())
    }
    .await;
    r.lock().busy = false;
    res
}

/// `bdev_raid_remove_base_bdev`: takes `base` out of the array it belongs to.
pub async fn remove_base_bdev(base: &str) -> Result<(), Error> {
    let raids = Raids::get()?;
    for r in raids.all() {
        let slot = r
            .lock()
            .slots
            .iter()
            .position(|s| s.desc.is_some() && s.name.as_deref() == Some(base));
        if let Some(slot) = slot {
            let (tx, rx) = bdev_core::oneshot::channel();
            r.remove_slot(slot, false, Box::new(move || tx.send(())));
            let _ = rx.await;
            return Ok(());
        }
    }
    Err(Error::NotInRaid(base.to_string()))
}

/// The `bdev_raid_create` entry that recreates `r` (`save_config`).
pub(crate) fn config_entry(r: &Raid) -> Value {
    let st = r.lock();
    let bases: Vec<String> = st
        .slots
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.name
                .clone()
                .filter(|_| s.desc.is_some())
                .unwrap_or_else(|| format!("{REMOVED}{i}"))
        })
        .collect();
    let mut p = json!({
        "name": r.name,
        "uuid": r.uuid.to_string(),
        "raid_level": r.level.name(),
        "base_bdevs": bases,
    });
    if r.strip_size_kb != 0 {
        p["strip_size_kb"] = json!(r.strip_size_kb);
    }
    json!({"method": "bdev_raid_create", "params": p})
}

/// What `bdev_raid_get_bdevs` and `bdev_get_bdevs` (`driver_specific.raid`) show.
pub(crate) fn raid_info(r: &Raid) -> Value {
    let st = r.lock();
    let (op, disc) = Raid::counts(&st);
    let bases: Vec<Value> = st
        .slots
        .iter()
        .map(|s| {
            // An empty slot shows no uuid (SPDK's null one), unless the array is still
            // assembling and waits for that member.
            let uuid = s
                .uuid
                .filter(|_| s.desc.is_some() || st.state == RaidState::Configuring);
            json!({
                "name": s.name.as_ref().filter(|_| s.desc.is_some()),
                "uuid": uuid.unwrap_or_default().to_string(),
                "is_configured": s.desc.is_some(),
                "data_offset": s.data_offset,
                "data_size": s.data_size,
            })
        })
        .collect();
    let mut v = json!({
        "name": r.name,
        "uuid": r.uuid.to_string(),
        "strip_size_kb": r.strip_size_kb,
        "state": st.state.name(),
        "raid_level": r.level.name(),
        "superblock": r.superblock,
        "num_base_bdevs": st.slots.len(),
        "num_base_bdevs_discovered": disc,
        "num_base_bdevs_operational": op,
        "base_bdevs_list": bases,
    });
    if let Some(p) = &st.process {
        let target = st.slots.get(p.target).and_then(|s| s.name.clone());
        let percent = if st.raid_size == 0 {
            0
        } else {
            (p.done_blocks as f64 * 100.0 / st.raid_size as f64) as u32
        };
        v["process"] = json!({
            "type": "rebuild",
            "target": target,
            "progress": {"blocks": p.done_blocks, "percent": percent},
        });
    }
    v
}

/// `bdev_raid_get_bdevs`: the RAIDs in `category` (all, online, configuring, offline).
pub fn get_bdevs(category: &str) -> Result<Vec<Value>, Error> {
    // As SPDK's: "all" exactly, a state's name in any case.
    let want: Option<RaidState> = match category.to_ascii_lowercase().as_str() {
        _ if category == "all" => None,
        "online" => Some(RaidState::Online),
        "configuring" => Some(RaidState::Configuring),
        "offline" => Some(RaidState::Offline),
        _ => {
            return Err(Error::InvalidOpts(format!(
                "invalid category '{category}' (all, online, configuring or offline)"
            )));
        }
    };
    Ok(Raids::get()?
        .all()
        .iter()
        .filter(|r| want.is_none_or(|w| r.lock().state == w))
        .map(|r| raid_info(r))
        .collect())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameParams {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CategoryParams {
    category: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBaseParams {
    base_bdev: String,
    raid_bdev: String,
}

/// The raid module.
#[derive(Debug, Default)]
pub struct RaidModule;

impl BdevModule for RaidModule {
    fn name(&self) -> &'static str {
        raid::MODULE
    }

    fn register_methods(&self, m: &mut Methods) {
        m.register("bdev_raid_create", |p| {
            Box::pin(async move {
                let o: CreateOpts = parse_params("bdev_raid_create", p)?;
                let name = o.name.clone();
                create(o)
                    .await
                    .map_err(|e| e.at(format_args!("Failed to create RAID bdev {name}")))?;
                Ok(Value::Bool(true))
            })
        });
        m.register("bdev_raid_delete", |p| {
            Box::pin(async move {
                let d: NameParams = parse_params("bdev_raid_delete", p)?;
                delete(&d.name)
                    .await
                    .map_err(|e| e.at(format_args!("Failed to delete RAID bdev {}", d.name)))?;
                Ok(Value::Bool(true))
            })
        });
        m.register_sync("bdev_raid_get_bdevs", |p| {
            let c: CategoryParams = parse_params("bdev_raid_get_bdevs", p)?;
            let v = get_bdevs(&c.category).map_err(|e| e.at("bdev_raid_get_bdevs"))?;
            Ok(Value::Array(v))
        });
        m.register("bdev_raid_add_base_bdev", |p| {
            Box::pin(async move {
                let a: AddBaseParams = parse_params("bdev_raid_add_base_bdev", p)?;
                add_base_bdev(&a.raid_bdev, &a.base_bdev)
                    .await
                    .map_err(|e| {
                        e.at(format_args!(
                            "Failed to add base bdev {} to RAID bdev {}",
                            a.base_bdev, a.raid_bdev
                        ))
                    })?;
                Ok(Value::Bool(true))
            })
        });
        m.register("bdev_raid_remove_base_bdev", |p| {
            Box::pin(async move {
                let d: NameParams = parse_params("bdev_raid_remove_base_bdev", p)?;
                remove_base_bdev(&d.name)
                    .await
                    .map_err(|e| e.at("Failed to remove base bdev from raid bdev"))?;
                Ok(Value::Bool(true))
            })
        });
        m.register_sync("bdev_raid_set_options", |p| {
            let raids = Raids::get().map_err(|e| e.at("bdev_raid_set_options"))?;
            let cur = raids.opts.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let o: RaidOptions = parse_params_over("bdev_raid_set_options", &cur, p)?;
            if o.process_window_size_kb == 0 {
                return Err(bdev_core::Error::invalid(
                    "process_window_size_kb",
                    "must be greater than 0",
                ));
            }
            *raids.opts.lock().unwrap_or_else(|e| e.into_inner()) = o;
            Ok(Value::Bool(true))
        });
    }

    fn examine(&self, bdev: &Bdev) {
        sb::examine(bdev);
    }

    fn config_json(&self) -> Vec<Value> {
        let o = Raids::get().map(|r| r.opts()).unwrap_or_default();
        vec![json!({"method": "bdev_raid_set_options", "params": o})]
    }
}

/// Adds the raid module to the current application and its methods to `m`.
pub fn register(m: &mut Methods) -> bdev_core::Result<()> {
    m.add_module(Arc::new(RaidModule))
}

#[cfg(test)]
mod tests;
