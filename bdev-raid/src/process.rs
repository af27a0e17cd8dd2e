//! Rebuilding a new raid1 member (SPDK's raid "process").
//!
//! The new member first joins every channel as written-not-read: from then on each
//! foreground write goes to it too. The rebuild then copies the array window by window
//! (`bdev_raid_set_options` `process_window_size_kb`, 1 MiB by default), on the control
//! thread, from a member in service to the new one. Each window is locked first: every
//! channel starts holding back writes that touch it, and the lock is taken only once the
//! writes each channel had in flight before are done (a generation count per channel,
//! so the data path takes no atomic). So no foreground write can land between the copy's
//! read and its write and be overwritten with older data. When the last window is copied,
//! the member becomes readable and the superblock records it.
//!
//! A rebuild stops when its target leaves the array or the array goes away; a window that
//! can't be copied (no member left to read from, the target failing) takes the target out.

use std::sync::Arc;

use bdev_core::bdev::{Desc, IoStatus};
use bdev_core::dma::DmaBuf;
use bdev_core::thread::{ForEachChannel, IoChannel, IoDevice};

use crate::raid::{Raid, RaidCh, SlotState};
use crate::{Error, Raids};

/// Runs `visit` on every channel of `dev` and waits for the end.
async fn for_each(
    dev: &IoDevice<RaidCh>,
    visit: impl Fn(&IoChannel<RaidCh>, ForEachChannel) + Send + Sync + 'static,
) -> Result<(), Error> {
    let (tx, rx) = bdev_core::oneshot::channel();
    dev.for_each_channel(visit, move |r| tx.send(r))?;
    Ok(rx.await.unwrap_or(Err(bdev_core::Error::Stopping))?)
}

/// Starts rebuilding `slot` (attached, in state Rebuilding, with `process` set) of the
/// online array `r`; returns once every channel writes to it and the copy has started.
pub(crate) async fn start(r: &Arc<Raid>, slot: usize) -> Result<(), Error> {
    let (dev, desc, off) = {
        let st = r.lock();
        let s = &st.slots[slot];
        match (&st.dev, &s.desc) {
            (Some(dev), Some(d)) => (dev.clone(), d.clone(), s.data_offset),
            _ => {
                return Err(Error::InvalidOpts(format!(
                    "raid bdev {} is not online",
                    r.name
                )));
            }
        }
    };
    {
        let d = desc.clone();
        for_each(&dev, move |ch, next| {
            let r = ch.add_member(slot, &d, off);
            next.next(r);
        })
        .await?;
    }
    tracing::info!(raid = %r.name, target = ?desc.bdev().name(), "Started rebuild on raid bdev");
    let r2 = r.clone();
    bdev_core::thread::spawn_local(async move {
        let res = run(&r2, &dev, slot).await;
        finish(&r2, &dev, slot, res).await;
    })?;
    Ok(())
}

/// Copies the array onto `slot`, window by window.
async fn run(r: &Arc<Raid>, dev: &IoDevice<RaidCh>, slot: usize) -> Result<(), Error> {
    let opts = Raids::get()?.opts();
    let (size, bl, align) = {
        let st = r.lock();
        let align = st.slots[slot]
            .desc
            .as_ref()
            .map(|d| d.bdev().buf_align())
            .unwrap_or(1);
        (st.raid_size, st.block_len as u64, align)
    };
    let win = ((opts.process_window_size_kb as u64 * 1024) / bl).max(1);
    let mut buf = DmaBuf::new((win * bl) as usize, align.max(4096))?;
    let start = std::time::Instant::now();
    let mut off = 0;
    while off < size {
        if r.lock().process.as_ref().is_none_or(|p| p.cancel) {
            return Err(Error::Busy("rebuild cancelled".into()));
        }
        let end = (off + win).min(size);
        // Recorded in the array as well: a channel created while the window is copied
        // must hold back writes to it too.
        lock(r, dev, (off, end)).await?;
        buf = copy(r, slot, off, end - off, buf).await?;
        if let Some(p) = r.lock().process.as_mut() {
            p.done_blocks = end;
        }
        off = end;
        if opts.process_max_bandwidth_mb_sec != 0 {
            // Hold the average under the cap.
            let due = (off * bl) as f64 / (opts.process_max_bandwidth_mb_sec as f64 * 1048576.0);
            let ahead = due - start.elapsed().as_secs_f64();
            if ahead > 0.0 {
                // Foreground writes are not held back while the rebuild waits.
                lock(r, dev, (0, 0)).await?;
                bdev_core::thread::sleep_us((ahead * 1e6) as u64).await?;
            }
        }
    }
    Ok(())
}

/// Locks window `w` (empty: unlocks) on every channel, and for channels created meanwhile.
async fn lock(r: &Arc<Raid>, dev: &IoDevice<RaidCh>, w: (u64, u64)) -> Result<(), Error> {
    r.lock().window = w;
    for_each(dev, move |ch, next| RaidCh::set_window(ch, w, next)).await
}

/// Copies `n` blocks at array block `off` from a member in service to `slot`.
async fn copy(r: &Arc<Raid>, slot: usize, off: u64, n: u64, buf: DmaBuf) -> Result<DmaBuf, Error> {
    let buf = read_elsewhere(r, slot, off, n, buf).await?;
    write_to(r, slot, off, n, buf).await.map_err(|(e, _)| e)
}

/// Reads `n` blocks at array block `off` from a member in service other than `slot`.
async fn read_elsewhere(
    r: &Arc<Raid>,
    slot: usize,
    off: u64,
    n: u64,
    mut buf: DmaBuf,
) -> Result<DmaBuf, Error> {
    let sources: Vec<(Arc<Desc>, u64)> = {
        let st = r.lock();
        st.slots
            .iter()
            .enumerate()
            .filter(|(i, s)| *i != slot && s.state == SlotState::Configured)
            .filter_map(|(_, s)| s.desc.clone().map(|d| (d, s.data_offset)))
            .collect()
    };
    for (d, doff) in &sources {
        let ch = d.get_io_channel()?;
        match d.read_blocks(&ch, buf, doff + off, n).await {
            Ok(b) => return Ok(b),
            Err(e) => {
                tracing::warn!(raid = %r.name, base = %d.bdev().name(), status = %e.status,
                    "reading for a rebuild or a correction failed; trying another member");
                buf = e.payload;
            }
        }
    }
    Err(Error::InvalidOpts(format!(
        "no member of raid bdev {} could be read at block {off}",
        r.name
    )))
}

/// Writes `buf` to member `slot` at array block `off`; on failure, the error and the
/// write's status.
async fn write_to(
    r: &Arc<Raid>,
    slot: usize,
    off: u64,
    n: u64,
    buf: DmaBuf,
) -> Result<DmaBuf, (Error, Option<IoStatus>)> {
    let target = {
        let st = r.lock();
        let t = &st.slots[slot];
        t.desc.clone().map(|d| (d, t.data_offset))
    };
    let Some((tdesc, toff)) = target else {
        return Err((Error::Busy(format!("member in slot {slot} gone")), None));
    };
    let ch = tdesc.get_io_channel().map_err(|e| (e.into(), None))?;
    match tdesc.write_blocks(&ch, buf, toff + off, n).await {
        Ok(b) => Ok(b),
        Err(e) => Err((
            Error::MemberIo {
                bdev: tdesc.bdev().name().to_string(),
                what: format!("write at block {off} failed: {}", e.status),
            },
            Some(e.status),
        )),
    }
}

/// Rewrites `n` blocks at array block `off` on member `slot` (which failed to read them)
/// from a member in service: SPDK's raid1 read-error correction. It takes the same
/// window lock as a rebuild, so a foreground write to those blocks can't land between
/// the copy's read and its write and be overwritten with older data (SPDK writes back
/// the read's data unlocked). A write that fails takes the member out of the array.
/// Skipped while a member is being added or rebuilt (the member
/// stays; its next read error tries again). Runs on the control thread.
///
/// `busy` keeps a member being added (and its rebuild) out meanwhile; a delete or a
/// member's removal goes ahead, the copy then finding its member gone (or holding its
/// descriptor until the copy's I/O ends, a few milliseconds).
pub(crate) async fn repair(r: &Arc<Raid>, slot: usize, off: u64, n: u64) {
    repair_locked(r, slot, off, n).await;
    // The member may have its next correction.
    r.correcting
        .fetch_and(!(1u64 << slot), std::sync::atomic::Ordering::AcqRel);
}

async fn repair_locked(r: &Arc<Raid>, slot: usize, off: u64, n: u64) {
    let (dev, bl, align) = {
        let mut st = r.lock();
        let member = st.slots.get(slot).and_then(|s| s.desc.as_ref());
        let align = member.map(|d| d.bdev().buf_align()).unwrap_or(1);
        let ok = member.is_some()
            && st.state == crate::RaidState::Online
            && !st.busy
            && st.process.is_none()
            && !st.deleting;
        match (&st.dev, ok) {
            (Some(dev), true) => {
                let dev = dev.clone();
                st.busy = true;
                (dev, st.block_len as u64, align)
            }
            _ => {
                tracing::info!(raid = %r.name, slot, off, n, "raid1: read error left uncorrected (array busy or not online)");
                return;
            }
        }
    };
    let res = async {
        let buf = DmaBuf::new((n * bl) as usize, align.max(4096)).map_err(|e| (e.into(), None))?;
        lock(r, &dev, (off, off + n)).await.map_err(|e| (e, None))?;
        let buf = read_elsewhere(r, slot, off, n, buf)
            .await
            .map_err(|e| (e, None))?;
        write_to(r, slot, off, n, buf).await.map(|_| ())
    }
    .await;
    if let Err(e) = lock(r, &dev, (0, 0)).await {
        tracing::warn!(raid = %r.name, "read-error correction: unlocking: {e}");
    }
    r.lock().busy = false;
    match res {
        Ok(()) => {
            tracing::info!(raid = %r.name, slot, off, n, "raid1: rewrote blocks a member failed to read")
        }
        // A write aborted (a reset) or refused says nothing about the member's media.
        Err((e, Some(IoStatus::Aborted | IoStatus::Rejected(_)) | None)) => {
            tracing::warn!(raid = %r.name, slot, "raid1: read error left uncorrected: {e}")
        }
        // The member failed the data's write: it leaves, as SPDK's does.
        Err((e, Some(_))) => {
            tracing::error!(raid = %r.name, slot, "raid1: read-error correction failed: {e}");
            r.remove_slot(slot, true, Box::new(|| {}));
        }
    }
}

/// Ends a rebuild: unlocks the window; on success the member becomes readable and the
/// superblock says so, on failure the target leaves the array.
async fn finish(r: &Arc<Raid>, dev: &IoDevice<RaidCh>, slot: usize, res: Result<(), Error>) {
    if let Err(e) = lock(r, dev, (0, 0)).await {
        tracing::warn!(raid = %r.name, "rebuild: unlocking: {e}");
    }
    match res {
        Ok(()) => {
            // Readable for channels created from now on, then for the existing ones.
            {
                let mut st = r.lock();
                st.process = None;
                if st.slots[slot].desc.is_some() {
                    st.slots[slot].state = SlotState::Configured;
                }
            }
            if let Err(e) = for_each(dev, move |ch, next| {
                ch.member_readable(slot);
                next.next(Ok(()));
            })
            .await
            {
                tracing::warn!(raid = %r.name, "rebuild: making the member readable: {e}");
            }
            tracing::info!(raid = %r.name, "Finished rebuild on raid bdev");
            if r.superblock {
                crate::sb::spawn_update(r);
            }
        }
        Err(e) => {
            r.lock().process = None;
            tracing::error!(raid = %r.name, "Finished rebuild on raid bdev: {e}");
            let present = r.lock().slots[slot].desc.is_some();
            if present {
                r.remove_slot(slot, true, Box::new(|| {}));
            }
        }
    }
}
