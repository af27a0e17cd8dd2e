//! I/O statistics (SPDK's `spdk_bdev_io_stat`): bytes, operations and latency per I/O
//! type, kept per channel without locks and summed per bdev on demand.

use std::cell::Cell;

use serde::Serialize;

use super::{IoStatus, IoType};

/// Counts and latencies of successful I/O, with SPDK's `bdev_get_iostat` field names.
/// Latencies are in ticks of the thread clock (see `tick_rate` in the RPC answer).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IoStats {
    /// Bytes read.
    pub bytes_read: u64,
    /// Reads completed.
    pub num_read_ops: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Writes completed.
    pub num_write_ops: u64,
    /// Bytes unmapped.
    pub bytes_unmapped: u64,
    /// Unmaps completed.
    pub num_unmap_ops: u64,
    /// Bytes copied (no bdev here has the copy I/O type: always 0).
    pub bytes_copied: u64,
    /// Copies completed (always 0, as above).
    pub num_copy_ops: u64,
    /// Sum of read latencies.
    pub read_latency_ticks: u64,
    /// Longest read.
    pub max_read_latency_ticks: u64,
    /// Shortest read (0 when none).
    pub min_read_latency_ticks: u64,
    /// Sum of write latencies.
    pub write_latency_ticks: u64,
    /// Longest write.
    pub max_write_latency_ticks: u64,
    /// Shortest write (0 when none).
    pub min_write_latency_ticks: u64,
    /// Sum of unmap latencies.
    pub unmap_latency_ticks: u64,
    /// Longest unmap.
    pub max_unmap_latency_ticks: u64,
    /// Shortest unmap (0 when none).
    pub min_unmap_latency_ticks: u64,
    /// Sum of copy latencies (always 0).
    pub copy_latency_ticks: u64,
    /// Longest copy (always 0).
    pub max_copy_latency_ticks: u64,
    /// Shortest copy (always 0).
    pub min_copy_latency_ticks: u64,
    /// I/Os that completed with an error, by SPDK's status name ("failed", "aborted",
    /// "nvme_error", ...); only the statuses seen.
    pub io_error: std::collections::BTreeMap<&'static str, u64>,
}

/// The error statuses counted, with SPDK's names (`bdev_io_status_get_string`).
const ERROR_NAMES: [&str; 6] = [
    "failed",
    "nomem",
    "aborted",
    "miscompare",
    "nvme_error",
    "aio_error",
];

/// Where an error status is counted (a request refused before submission counts as
/// failed, as SPDK completes it).
fn error_slot(s: IoStatus) -> usize {
    match s {
        IoStatus::NoMem => 1,
        IoStatus::Aborted => 2,
        IoStatus::Miscompare => 3,
        IoStatus::NvmeError { .. } => 4,
        IoStatus::AioError(_) => 5,
        IoStatus::Success | IoStatus::Failed | IoStatus::Rejected(_) => 0,
    }
}

/// What `bdev_reset_iostat` resets: everything, or only the latency extremes
/// (SPDK's modes "all" and "maxmin").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetMode {
    /// Every counter.
    All,
    /// Only the longest and shortest latencies.
    MaxMin,
}

/// One I/O type's counters, as a channel keeps them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OpStats {
    bytes: u64,
    ops: u64,
    lat_sum: u64,
    lat_max: u64,
    lat_min: u64,
}

impl Default for OpStats {
    fn default() -> Self {
        OpStats {
            bytes: 0,
            ops: 0,
            lat_sum: 0,
            lat_max: 0,
            lat_min: u64::MAX,
        }
    }
}

impl OpStats {
    fn merge(&mut self, o: &OpStats) {
        self.bytes += o.bytes;
        self.ops += o.ops;
        self.lat_sum += o.lat_sum;
        self.lat_max = self.lat_max.max(o.lat_max);
        self.lat_min = self.lat_min.min(o.lat_min);
    }

    /// The shortest latency, 0 when none is known (no I/O yet, or just after a "maxmin"
    /// reset), as SPDK prints UINT64_MAX.
    fn min(&self) -> u64 {
        if self.ops == 0 || self.lat_min == u64::MAX {
            0
        } else {
            self.lat_min
        }
    }

    fn reset(&mut self, mode: ResetMode) {
        let d = OpStats::default();
        match mode {
            ResetMode::All => *self = d,
            ResetMode::MaxMin => (self.lat_max, self.lat_min) = (d.lat_max, d.lat_min),
        }
    }
}

/// A channel's counters: plain cells (no borrow flag) in a flat array indexed by I/O
/// type, so that accounting an I/O is a handful of loads and stores.
#[derive(Debug, Default)]
pub(crate) struct ChannelStats {
    ops: [CellStats; 3],
    errors: [Cell<u64>; ERROR_NAMES.len()],
}

// 16-byte aligned: `record` updates `bytes` and `ops` with one 16-byte load and store,
// which must not straddle two cache lines. A channel whose counters happened to sit
// across a line boundary paid a failed store-to-load forward at every completion (~10 ns
// per I/O in perf annotate: `bdevperf --async-set` at 0.84 of callbacks, 0.93 aligned).
#[derive(Debug)]
#[repr(C, align(16))]
struct CellStats {
    bytes: Cell<u64>,
    ops: Cell<u64>,
    lat_sum: Cell<u64>,
    lat_max: Cell<u64>,
    lat_min: Cell<u64>,
}

// `bytes` and `ops` side by side at the start of a 16-byte unit.
const _: () = {
    assert!(std::mem::offset_of!(CellStats, bytes) == 0);
    assert!(std::mem::offset_of!(CellStats, ops) == 8);
};

impl Default for CellStats {
    fn default() -> Self {
        CellStats {
            bytes: Cell::new(0),
            ops: Cell::new(0),
            lat_sum: Cell::new(0),
            lat_max: Cell::new(0),
            lat_min: Cell::new(u64::MAX),
        }
    }
}

impl CellStats {
    /// The reset rule is `OpStats::reset`'s, applied to the cells.
    fn reset(&self, mode: ResetMode) {
        let mut o = self.snapshot();
        o.reset(mode);
        self.bytes.set(o.bytes);
        self.ops.set(o.ops);
        self.lat_sum.set(o.lat_sum);
        self.lat_max.set(o.lat_max);
        self.lat_min.set(o.lat_min);
    }

    fn snapshot(&self) -> OpStats {
        OpStats {
            bytes: self.bytes.get(),
            ops: self.ops.get(),
            lat_sum: self.lat_sum.get(),
            lat_max: self.lat_max.get(),
            lat_min: self.lat_min.get(),
        }
    }
}

const READ: usize = 0;
const WRITE: usize = 1;
const UNMAP: usize = 2;

/// Where an I/O type is counted (types SPDK does not count go nowhere).
#[inline]
fn slot(t: IoType) -> Option<usize> {
    match t {
        IoType::Read => Some(READ),
        IoType::Write => Some(WRITE),
        IoType::Unmap => Some(UNMAP),
        _ => None,
    }
}

/// Counters summed over channels.
#[derive(Clone, Debug, Default)]
pub(crate) struct StatsSum {
    ops: [OpStats; 3],
    errors: [u64; ERROR_NAMES.len()],
}

impl StatsSum {
    /// Adds a channel's counters.
    pub(crate) fn add(&mut self, c: &ChannelStats) {
        for (a, b) in self.ops.iter_mut().zip(c.ops.iter()) {
            a.merge(&b.snapshot());
        }
        for (a, b) in self.errors.iter_mut().zip(c.errors.iter()) {
            *a += b.get();
        }
    }

    /// `bdev_reset_iostat` on what closed channels left.
    pub(crate) fn reset(&mut self, mode: ResetMode) {
        for o in &mut self.ops {
            o.reset(mode);
        }
        if mode == ResetMode::All {
            self.errors = Default::default();
        }
    }

    /// The counters with SPDK's names.
    pub(crate) fn to_iostats(&self) -> IoStats {
        let [r, w, u] = &self.ops;
        IoStats {
            bytes_read: r.bytes,
            num_read_ops: r.ops,
            bytes_written: w.bytes,
            num_write_ops: w.ops,
            bytes_unmapped: u.bytes,
            num_unmap_ops: u.ops,
            bytes_copied: 0,
            num_copy_ops: 0,
            read_latency_ticks: r.lat_sum,
            max_read_latency_ticks: r.lat_max,
            min_read_latency_ticks: r.min(),
            write_latency_ticks: w.lat_sum,
            max_write_latency_ticks: w.lat_max,
            min_write_latency_ticks: w.min(),
            unmap_latency_ticks: u.lat_sum,
            max_unmap_latency_ticks: u.lat_max,
            min_unmap_latency_ticks: u.min(),
            copy_latency_ticks: 0,
            max_copy_latency_ticks: 0,
            min_copy_latency_ticks: 0,
            io_error: ERROR_NAMES
                .iter()
                .zip(self.errors)
                .filter(|(_, n)| *n > 0)
                .map(|(k, n)| (*k, n))
                .collect(),
        }
    }
}

impl ChannelStats {
    /// Accounts one completed I/O. Always inlined: `finish` calls it once per level, and
    /// as a call of its own it cost a pass-through level ~18 instructions.
    #[inline(always)]
    pub(crate) fn record(&self, t: IoType, bytes: u64, ticks: u64, status: IoStatus) {
        if !status.is_success() {
            let e = &self.errors[error_slot(status)];
            e.set(e.get() + 1);
            return;
        }
        if let Some(i) = slot(t) {
            let s = &self.ops[i];
            s.bytes.set(s.bytes.get() + bytes);
            s.ops.set(s.ops.get() + 1);
            s.lat_sum.set(s.lat_sum.get() + ticks);
            // Stored only when they change (rarely, once warm): the extremes are not
            // written back at every completion (2 % more passthru IOPS over null, 7 of 8
            // interleaved rounds).
            if ticks > s.lat_max.get() {
                s.lat_max.set(ticks);
            }
            if ticks < s.lat_min.get() {
                s.lat_min.set(ticks);
            }
        }
    }

    /// `bdev_reset_iostat` on this channel.
    pub(crate) fn reset(&self, mode: ResetMode) {
        for o in &self.ops {
            o.reset(mode);
        }
        if mode == ResetMode::All {
            for e in &self.errors {
                e.set(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_and_merge_keep_min_max_and_sums() {
        let a = ChannelStats::default();
        a.record(IoType::Read, 4096, 10, IoStatus::Success);
        a.record(IoType::Read, 4096, 4, IoStatus::Success);
        a.record(IoType::Write, 512, 7, IoStatus::Success);
        a.record(IoType::Write, 512, 7, IoStatus::Failed);
        a.record(IoType::Read, 512, 7, IoStatus::Aborted);
        a.record(IoType::Read, 512, 7, IoStatus::Aborted);
        let b = ChannelStats::default();
        b.record(IoType::Read, 512, 20, IoStatus::Success);
        b.record(IoType::Unmap, 1 << 20, 3, IoStatus::Success);
        let mut sum = StatsSum::default();
        sum.add(&a);
        sum.add(&b);
        let a = sum.to_iostats();
        assert_eq!(
            (a.num_read_ops, a.bytes_read, a.read_latency_ticks),
            (3, 8704, 34)
        );
        assert_eq!(
            (a.min_read_latency_ticks, a.max_read_latency_ticks),
            (4, 20)
        );
        assert_eq!((a.num_write_ops, a.min_write_latency_ticks), (1, 7));
        assert_eq!(
            a.io_error,
            [("aborted", 2), ("failed", 1)].into_iter().collect()
        );
        assert_eq!(
            (a.num_unmap_ops, a.min_unmap_latency_ticks, a.bytes_unmapped),
            (1, 3, 1 << 20)
        );
    }
}
