//! The RAID superblock: SPDK's on-disk layout, so that arrays move between SPDK and us.
//!
//! Written at block 0 of every member, padded with zeroes to a whole number of blocks; the
//! array's data starts `data_offset` blocks in (1 MiB, rounded up to the member's optimal
//! I/O boundary). All integers little-endian.
//!
//! ```text
//! offset size  field
//!      0    8  signature "SPDKRAID"
//!      8    2  version major (1)
//!     10    2  version minor (0)
//!     12    4  length: 256 + 64 * base_bdevs_size (bytes covered by the crc)
//!     16    4  crc: CRC32C (Castagnoli, initial value 0, no final xor, as SPDK's
//!              spdk_crc32c_update(sb, length, 0)) of `length` bytes with this field 0
//!     20    4  flags (0)
//!     24   16  uuid of the array (RFC 4122 byte order)
//!     40   64  name, NUL-terminated
//!    104    8  raid_size: the array's size in blocks
//!    112    4  block_size in bytes
//!    116    4  level: 0 raid0, 1 raid1, 99 concat
//!    120    4  strip_size in blocks (0 for raid1)
//!    124    4  state (0)
//!    128    8  seq_number: bumped at every write; the highest wins
//!    136    1  num_base_bdevs
//!    137  118  reserved (0)
//!    255    1  base_bdevs_size (entries that follow)
//!    256 64*n  base bdev entries:
//!              +0 16 uuid of the member, +16 8 data_offset (blocks), +24 8 data_size
//!              (blocks), +32 4 state (0 missing, 1 configured, 2 failed), +36 4 flags,
//!              +40 1 slot, +41 23 reserved
//! ```
//!
//! A member's entry is `configured` while it is in service; a member taken out for
//! failing I/O is `failed`, one removed is `missing`. A member being rebuilt becomes
//! `configured` when its rebuild finishes, so an interrupted rebuild starts over.

use std::sync::Arc;

use bdev_core::bdev::{Bdev, Desc};
use bdev_core::dma::DmaBuf;
use uuid::Uuid;

use crate::raid::{Ctl, Raid, Slot, SlotState};
use crate::{Error, RaidLevel, Raids};

/// Bytes of the name field (names are shorter, NUL-terminated).
pub const NAME_SIZE: usize = 64;
/// The signature.
pub const SIGNATURE: &[u8; 8] = b"SPDKRAID";
const HEADER: usize = 256;
const ENTRY: usize = 64;
/// Largest superblock: 255 members.
pub const MAX_LENGTH: usize = HEADER + 255 * ENTRY;
/// Bytes at the start of each member kept for the superblock.
pub const MIN_DATA_OFFSET: u64 = 1024 * 1024;

/// A member's state in the superblock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BaseState {
    /// No member.
    Missing = 0,
    /// In service.
    Configured = 1,
    /// Taken out after failing I/O.
    Failed = 2,
}

/// One member's entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SbBase {
    /// The member bdev's UUID.
    pub uuid: Uuid,
    /// Where the array's data starts on it, in blocks.
    pub data_offset: u64,
    /// Blocks of array data on it.
    pub data_size: u64,
    /// Its state.
    pub state: BaseState,
    /// Its slot.
    pub slot: u8,
}

/// A decoded superblock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// The array's UUID.
    pub uuid: Uuid,
    /// The array's name.
    pub name: String,
    /// Its size in blocks.
    pub raid_size: u64,
    /// Block size in bytes.
    pub block_size: u32,
    /// Its level.
    pub level: RaidLevel,
    /// Strip size in blocks.
    pub strip_size: u32,
    /// Sequence number.
    pub seq_number: u64,
    /// Slot count.
    pub num_base_bdevs: u8,
    /// Member entries.
    pub bases: Vec<SbBase>,
}

/// SPDK's `spdk_crc32c_update(buf, len, 0)`: CRC32C with no initial or final inversion.
pub fn crc(data: &[u8]) -> u32 {
    // crc32c_append(c, d) = !raw(!c, d), so raw(0, d) = !crc32c_append(!0, d).
    !crc32c::crc32c_append(!0, data)
}

impl Superblock {
    /// The bytes (exactly `length` of them).
    pub fn encode(&self) -> Vec<u8> {
        let len = HEADER + ENTRY * self.bases.len();
        let mut b = vec![0u8; len];
        b[0..8].copy_from_slice(SIGNATURE);
        b[8..10].copy_from_slice(&1u16.to_le_bytes());
        b[10..12].copy_from_slice(&0u16.to_le_bytes());
        b[12..16].copy_from_slice(&(len as u32).to_le_bytes());
        b[24..40].copy_from_slice(self.uuid.as_bytes());
        let name = self.name.as_bytes();
        let n = name.len().min(NAME_SIZE - 1);
        b[40..40 + n].copy_from_slice(&name[..n]);
        b[104..112].copy_from_slice(&self.raid_size.to_le_bytes());
        b[112..116].copy_from_slice(&self.block_size.to_le_bytes());
        b[116..120].copy_from_slice(&self.level.sb_value().to_le_bytes());
        b[120..124].copy_from_slice(&self.strip_size.to_le_bytes());
        b[128..136].copy_from_slice(&self.seq_number.to_le_bytes());
        b[136] = self.num_base_bdevs;
        b[255] = self.bases.len() as u8;
        for (i, e) in self.bases.iter().enumerate() {
            let o = HEADER + i * ENTRY;
            b[o..o + 16].copy_from_slice(e.uuid.as_bytes());
            b[o + 16..o + 24].copy_from_slice(&e.data_offset.to_le_bytes());
            b[o + 24..o + 32].copy_from_slice(&e.data_size.to_le_bytes());
            b[o + 32..o + 36].copy_from_slice(&(e.state as u32).to_le_bytes());
            b[o + 40] = e.slot;
        }
        let c = crc(&b);
        b[16..20].copy_from_slice(&c.to_le_bytes());
        b
    }

    /// Decodes and checks a superblock; `Err` says why these bytes are not one.
    pub fn decode(b: &[u8]) -> Result<Superblock, String> {
        if b.len() < HEADER || &b[0..8] != SIGNATURE {
            return Err("no superblock signature".into());
        }
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(x)
        };
        let len = u32_at(12) as usize;
        if !(HEADER..=MAX_LENGTH).contains(&len) || len > b.len() {
            return Err(format!("superblock length {len} out of range"));
        }
        let mut copy = b[..len].to_vec();
        copy[16..20].fill(0);
        if crc(&copy) != u32_at(16) {
            return Err("Incorrect superblock crc".into());
        }
        let major = u16_at(8);
        if major != 1 {
            return Err(format!("superblock version {major} not supported"));
        }
        let level = RaidLevel::from_sb(u32_at(116))
            .ok_or_else(|| format!("raid level {} not supported", u32_at(116)))?;
        let nb = b[255] as usize;
        if HEADER + nb * ENTRY > len {
            return Err("superblock entries past its length".into());
        }
        let num = b[136];
        let mut bases = Vec::with_capacity(nb);
        for i in 0..nb {
            let o = HEADER + i * ENTRY;
            let mut u = [0u8; 16];
            u.copy_from_slice(&b[o..o + 16]);
            let state = match u32_at(o + 32) {
                1 => BaseState::Configured,
                2 => BaseState::Failed,
                _ => BaseState::Missing,
            };
            let slot = b[o + 40];
            if slot >= num {
                return Err(format!("superblock entry {i}: slot {slot} out of range"));
            }
            bases.push(SbBase {
                uuid: Uuid::from_bytes(u),
                data_offset: u64_at(o + 16),
                data_size: u64_at(o + 24),
                state,
                slot,
            });
        }
        let name_end = b[40..40 + NAME_SIZE]
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(NAME_SIZE);
        let name = String::from_utf8_lossy(&b[40..40 + name_end]).into_owned();
        let mut u = [0u8; 16];
        u.copy_from_slice(&b[24..40]);
        Ok(Superblock {
            uuid: Uuid::from_bytes(u),
            name,
            raid_size: u64_at(104),
            block_size: u32_at(112),
            level,
            strip_size: u32_at(120),
            seq_number: u64_at(128),
            num_base_bdevs: num,
            bases,
        })
    }
}

/// Where the array's data starts on `base`: 1 MiB, rounded up to its optimal I/O boundary.
pub fn data_offset(base: &Bdev) -> u64 {
    let mut off = MIN_DATA_OFFSET.div_ceil(base.block_len() as u64);
    let b = base.props().optimal_io_boundary as u64;
    if b != 0 {
        off = off.div_ceil(b) * b;
    }
    off
}

/// The superblock of `r` as its control state stands (call with the lock held).
pub(crate) fn build(r: &Raid, st: &Ctl) -> Superblock {
    let bases = st
        .slots
        .iter()
        .enumerate()
        .map(|(i, s)| SbBase {
            uuid: s.uuid.unwrap_or_default(),
            data_offset: s.data_offset,
            data_size: s.data_size,
            state: match (s.state, s.desc.is_some()) {
                (SlotState::Configured, true) => BaseState::Configured,
                (SlotState::Failed, _) => BaseState::Failed,
                _ => BaseState::Missing,
            },
            slot: i as u8,
        })
        .collect();
    Superblock {
        uuid: r.uuid,
        name: r.name.clone(),
        raid_size: st.raid_size,
        block_size: st.block_len,
        level: r.level,
        strip_size: r.strip_blocks(st.block_len.max(1)) as u32,
        seq_number: st.seq,
        num_base_bdevs: st.slots.len() as u8,
        bases,
    }
}

/// Writes `sb` at block 0 of every member in the array (present or being rebuilt); a
/// member whose write fails does not keep the others from being written.
pub(crate) async fn write_all(r: &Raid, sb: Superblock) -> Result<(), Error> {
    let descs: Vec<Arc<Desc>> = r
        .lock()
        .slots
        .iter()
        .filter_map(|s: &Slot| s.desc.clone())
        .collect();
    let bytes = sb.encode();
    let mut first_err = None;
    for d in descs {
        let b = d.bdev();
        let bl = b.block_len() as usize;
        let len = bytes.len().div_ceil(bl) * bl;
        let mut buf = DmaBuf::new(len, b.buf_align().max(4096))?;
        buf.fill(0);
        buf[..bytes.len()].copy_from_slice(&bytes);
        let ch = d.get_io_channel()?;
        if let Err(e) = d.write_blocks(&ch, buf, 0, (len / bl) as u64).await {
            tracing::error!(raid = %r.name, base = %b.name(), status = %e.status, "superblock write failed");
            first_err.get_or_insert(Error::Superblock {
                bdev: b.name().to_string(),
                what: format!("write failed: {}", e.status),
            });
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// Rewrites the superblock of `r` in the background (after a member change). One writer
/// at a time per array, and it always ends with the latest state: a change made while a
/// write is under way is written after it, so an older superblock never lands last.
pub(crate) fn spawn_update(r: &Arc<Raid>) {
    {
        let mut st = r.lock();
        if st.sb_writing {
            st.sb_dirty = true;
            return;
        }
        st.sb_writing = true;
    }
    let r2 = r.clone();
    let task = async move {
        let r = r2;
        loop {
            let sb = {
                let mut st = r.lock();
                st.sb_dirty = false;
                if st.deleting {
                    st.sb_writing = false;
                    return;
                }
                st.seq += 1;
                build(&r, &st)
            };
            if let Err(e) = write_all(&r, sb).await {
                tracing::error!(raid = %r.name, "updating the superblock: {e}");
            }
            let mut st = r.lock();
            if !st.sb_dirty {
                st.sb_writing = false;
                return;
            }
        }
    };
    if let Err(e) = bdev_core::thread::spawn_local(task) {
        r.lock().sb_writing = false;
        tracing::error!("raid superblock update: {e}");
    }
}

/// Takes the members, offsets and sizes of a configuring array from `sb`: only members the
/// superblock lists as configured are waited for; one attached that it no longer lists
/// is let go.
fn apply(st: &mut Ctl, sb: &Superblock) -> Result<(), Error> {
    // A member already attached stays where its data is: a superblock that moves it is
    // not believed (its bytes come from a disk).
    for e in &sb.bases {
        if let Some(s) = st.slots.get(e.slot as usize) {
            if s.desc.is_some() && s.uuid == Some(e.uuid) && s.data_offset != e.data_offset {
                return Err(Error::InvalidOpts(format!(
                    "superblock of raid {} moves the data of its member in slot {} from block {} to {}",
                    sb.name, e.slot, s.data_offset, e.data_offset
                )));
            }
        }
    }
    st.seq = sb.seq_number;
    st.raid_size = sb.raid_size;
    for (i, s) in st.slots.iter_mut().enumerate() {
        let e = sb.bases.iter().find(|e| e.slot as usize == i);
        let Some(e) = e else {
            *s = Slot::missing();
            continue;
        };
        if s.desc.is_some() && s.uuid == Some(e.uuid) {
            // Attached: its size was bounded by the member's at attach.
            s.data_size = e.data_size.min(s.data_size);
        } else {
            s.data_offset = e.data_offset;
            s.data_size = e.data_size;
        }
        if e.state == BaseState::Configured {
            if s.uuid != Some(e.uuid) {
                s.desc = None;
                s.name = None;
            }
            s.uuid = Some(e.uuid);
        } else {
            if s.desc.take().is_some() {
                tracing::info!(
                    slot = i,
                    "member left the array in a newer superblock; released"
                );
            }
            s.uuid = None;
            s.name = None;
            s.state = if e.state == BaseState::Failed {
                SlotState::Failed
            } else {
                SlotState::Missing
            };
        }
    }
    Ok(())
}

/// Reads the superblock of `bdev`, if it has a valid one.
pub(crate) async fn read(bdev: &Bdev) -> Option<Superblock> {
    let desc = Desc::open(bdev.name(), false, |_| {}).ok()?;
    let ch = desc.get_io_channel().ok()?;
    let bl = bdev.block_len() as u64;
    let align = bdev.buf_align().max(4096);
    let mut blocks = (HEADER as u64).div_ceil(bl);
    loop {
        if blocks > bdev.num_blocks() {
            return None;
        }
        let buf = DmaBuf::new((blocks * bl) as usize, align).ok()?;
        let buf = desc.read_blocks(&ch, buf, 0, blocks).await.ok()?;
        if &buf[0..8] != SIGNATURE {
            return None;
        }
        let len = u32::from_le_bytes([buf[12], buf[13], buf[14], buf[15]]) as u64;
        if len as usize > MAX_LENGTH {
            return None;
        }
        if len > blocks * bl {
            blocks = len.div_ceil(bl);
            continue;
        }
        return match Superblock::decode(&buf) {
            Ok(sb) => Some(sb),
            Err(e) => {
                tracing::warn!(bdev = %bdev.name(), "raid superblock ignored: {e}");
                None
            }
        };
    }
}

/// The examine hook: a bdev with a superblock joins (or starts) the array it names, and
/// the array comes online once every member the superblock lists as configured is there.
pub(crate) fn examine(bdev: &Bdev) {
    let Some(token) = bdev_core::module::examine_started() else {
        return;
    };
    let bdev = bdev.clone();
    let task = async move {
        let _token = token;
        if let Some(sb) = read(&bdev).await {
            if let Err(e) = assemble(&bdev, sb).await {
                tracing::warn!(bdev = %bdev.name(), "raid examine: {e}");
            }
        }
    };
    if let Err(e) = bdev_core::thread::spawn_local(task) {
        tracing::warn!("raid examine: {e}");
    }
}

/// What `bdev_raid_create` would refuse, refused from a superblock too (its bytes come
/// from a disk: anything may be there).
fn check_geometry(sb: &Superblock) -> Result<(), Error> {
    let bad = |what: String| {
        Err(Error::InvalidOpts(format!(
            "superblock of raid {}: {what}",
            sb.name
        )))
    };
    let n = sb.num_base_bdevs as usize;
    if n == 0 || n > crate::raid::MAX_BASE_BDEVS {
        return bad(format!(
            "{n} base bdevs (1 to {})",
            crate::raid::MAX_BASE_BDEVS
        ));
    }
    if sb.block_size == 0 || sb.raid_size == 0 {
        return bad("zero block size or raid size".into());
    }
    // Data must start past the superblock's own blocks and end within 64 bits.
    let sb_blocks = (HEADER + sb.bases.len() * ENTRY).div_ceil(sb.block_size as usize) as u64;
    for e in &sb.bases {
        if e.data_offset < sb_blocks || e.data_offset.checked_add(e.data_size).is_none() {
            return bad(format!(
                "member in slot {}: data at block {} for {} blocks",
                e.slot, e.data_offset, e.data_size
            ));
        }
    }
    let strip_bytes = sb.strip_size as u64 * sb.block_size as u64;
    match sb.level {
        RaidLevel::Raid1 if sb.strip_size != 0 => bad("raid1 with a strip size".into()),
        RaidLevel::Raid1 => Ok(()),
        _ if !sb.strip_size.is_power_of_two()
            || strip_bytes % 1024 != 0
            || strip_bytes / 1024 > crate::MAX_STRIP_SIZE_KB as u64 =>
        {
            bad(format!("strip of {} blocks", sb.strip_size))
        }
        _ => Ok(()),
    }
}

async fn assemble(bdev: &Bdev, sb: Superblock) -> Result<(), Error> {
    if sb.block_size != bdev.block_len() || sb.uuid.is_nil() {
        return Ok(());
    }
    let Some(entry) = sb.bases.iter().find(|e| e.uuid == bdev.uuid()).cloned() else {
        return Ok(());
    };
    check_geometry(&sb)?;
    let raids = Raids::get()?;
    let r = match raids.find_uuid(sb.uuid) {
        Some(r) => r,
        None => {
            if entry.state != BaseState::Configured {
                return Ok(());
            }
            let strip_kb = (sb.strip_size as u64 * sb.block_size as u64 / 1024) as u32;
            let t = bdev_core::thread::current_or("raid examine")?;
            let r = Raid::new(
                sb.name.clone(),
                sb.level,
                strip_kb,
                sb.uuid,
                true,
                sb.num_base_bdevs as usize,
                t.handle(),
            );
            {
                let mut st = r.lock();
                st.block_len = sb.block_size;
                apply(&mut st, &sb)?;
            }
            raids.add(r.clone())?;
            tracing::info!(raid = %sb.name, "raid bdev found in superblock, configuring");
            r
        }
    };
    {
        // A newer superblock (the members that stayed in the array wrote it after one
        // failed) decides who belongs; an older one (on a member that left) decides
        // nothing.
        let mut st = r.lock();
        if st.state == crate::RaidState::Configuring && sb.seq_number > st.seq {
            apply(&mut st, &sb)?;
        }
    }
    let (state, expected) = {
        let st = r.lock();
        let slot = entry.slot as usize;
        let s = st.slots.get(slot);
        (
            st.state,
            s.is_some_and(|s| s.desc.is_none() && s.uuid == Some(entry.uuid)),
        )
    };
    if state != crate::RaidState::Configuring || !expected {
        if state == crate::RaidState::Configuring {
            tracing::info!(bdev = %bdev.name(), raid = %r.name,
                "Bdev is not an active member of raid bdev. Ignoring.");
        }
        return Ok(());
    }
    r.attach(
        entry.slot as usize,
        bdev,
        entry.data_offset,
        SlotState::Configured,
    )?;
    {
        let mut st = r.lock();
        let s = &mut st.slots[entry.slot as usize];
        s.data_size = entry.data_size.min(s.data_size);
    }
    let ready = {
        let st = r.lock();
        !st.deleting
            && st
                .slots
                .iter()
                .all(|s| s.uuid.is_none() || s.desc.is_some())
    };
    if ready {
        r.configure().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_is_spdks_raw_crc32c() {
        // Bitwise CRC32C, reflected polynomial 0x82F63B78, initial 0, no final xor.
        fn raw(data: &[u8]) -> u32 {
            let mut c = 0u32;
            for &b in data {
                c ^= b as u32;
                for _ in 0..8 {
                    c = if c & 1 != 0 {
                        (c >> 1) ^ 0x82F6_3B78
                    } else {
                        c >> 1
                    };
                }
            }
            c
        }
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        assert_eq!(crc(&data), raw(&data));
        assert_eq!(crc(b""), 0);
    }

    fn sample() -> Superblock {
        Superblock {
            uuid: Uuid::new_v4(),
            name: "r1".into(),
            raid_size: 1000,
            block_size: 512,
            level: RaidLevel::Raid1,
            strip_size: 0,
            seq_number: 7,
            num_base_bdevs: 2,
            bases: vec![
                SbBase {
                    uuid: Uuid::new_v4(),
                    data_offset: 2048,
                    data_size: 1000,
                    state: BaseState::Configured,
                    slot: 0,
                },
                SbBase {
                    uuid: Uuid::new_v4(),
                    data_offset: 2048,
                    data_size: 1000,
                    state: BaseState::Failed,
                    slot: 1,
                },
            ],
        }
    }

    #[test]
    fn round_trip_and_layout() {
        let sb = sample();
        let b = sb.encode();
        assert_eq!(b.len(), 256 + 128);
        assert_eq!(&b[0..8], b"SPDKRAID");
        assert_eq!(u32::from_le_bytes([b[12], b[13], b[14], b[15]]), 384);
        assert_eq!(&b[40..42], b"r1");
        assert_eq!(b[136], 2);
        assert_eq!(b[255], 2);
        assert_eq!(b[256 + 64 + 32], 2, "second entry failed");
        assert_eq!(Superblock::decode(&b).unwrap(), sb);
    }

    #[test]
    fn impossible_geometry_is_refused() {
        assert!(check_geometry(&sample()).is_ok());
        // A strip of 2^30 blocks of 4 KiB: 2^32 KiB, which no u32 holds (it truncated
        // to a strip of 0, then divided by).
        let mut sb = sample();
        sb.level = RaidLevel::Raid0;
        sb.block_size = 4096;
        sb.strip_size = 1 << 30;
        let e = check_geometry(&sb).unwrap_err().to_string();
        assert!(e.contains("strip of 1073741824 blocks"), "{e}");
        sb.strip_size = 16;
        assert!(check_geometry(&sb).is_ok());
        // Data over the superblock itself, or ending past 2^64.
        for (off, size) in [(0, 1000), (2048, u64::MAX - 100)] {
            let mut sb = sample();
            sb.bases[1].data_offset = off;
            sb.bases[1].data_size = size;
            let e = check_geometry(&sb).unwrap_err().to_string();
            assert!(e.contains("member in slot 1"), "{e}");
        }
    }

    #[test]
    fn corruption_is_refused() {
        let b = sample().encode();
        for at in [0usize, 9, 13, 30, 110, 300] {
            let mut c = b.clone();
            c[at] ^= 0x40;
            assert!(Superblock::decode(&c).is_err(), "flip at {at} accepted");
        }
        assert!(Superblock::decode(&b[..100]).is_err());
        assert!(Superblock::decode(&[0u8; 512]).is_err());
    }
}
