//! I/O statistics (SPDK's `spdk_bdev_io_stat`): bytes, operations and latency per I/O
//! type, kept per channel without locks and summed per bdev on demand.

use std::cell::Cell;

use serde::Serialize;

use super::IoType;

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
    /// I/Os that completed with an error.
    pub num_io_errors: u64,
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

    fn min(&self) -> u64 {
        if self.ops == 0 { 0 } else { self.lat_min }
    }
}

/// A channel's counters: plain cells (no borrow flag) in a flat array indexed by I/O
/// type, so that accounting an I/O is a handful of loads and stores.
#[derive(Debug, Default)]
pub(crate) struct ChannelStats {
    ops: [CellStats; 3],
    errors: Cell<u64>,
}

#[derive(Debug)]
struct CellStats {
    bytes: Cell<u64>,
    ops: Cell<u64>,
    lat_sum: Cell<u64>,
    lat_max: Cell<u64>,
    lat_min: Cell<u64>,
}

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
    errors: u64,
}

impl StatsSum {
    /// Adds a channel's counters.
    pub(crate) fn add(&mut self, c: &ChannelStats) {
        for (a, b) in self.ops.iter_mut().zip(c.ops.iter()) {
            a.merge(&b.snapshot());
        }
        self.errors += c.errors.get();
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
            read_latency_ticks: r.lat_sum,
            max_read_latency_ticks: r.lat_max,
            min_read_latency_ticks: r.min(),
            write_latency_ticks: w.lat_sum,
            max_write_latency_ticks: w.lat_max,
            min_write_latency_ticks: w.min(),
            unmap_latency_ticks: u.lat_sum,
            max_unmap_latency_ticks: u.lat_max,
            min_unmap_latency_ticks: u.min(),
            num_io_errors: self.errors,
        }
    }
}

impl ChannelStats {
    /// Accounts one completed I/O.
    #[inline]
    pub(crate) fn record(&self, t: IoType, bytes: u64, ticks: u64, ok: bool) {
        if !ok {
            self.errors.set(self.errors.get() + 1);
            return;
        }
        if let Some(i) = slot(t) {
            let s = &self.ops[i];
            s.bytes.set(s.bytes.get() + bytes);
            s.ops.set(s.ops.get() + 1);
            s.lat_sum.set(s.lat_sum.get() + ticks);
            s.lat_max.set(s.lat_max.get().max(ticks));
            s.lat_min.set(s.lat_min.get().min(ticks));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_and_merge_keep_min_max_and_sums() {
        let a = ChannelStats::default();
        a.record(IoType::Read, 4096, 10, true);
        a.record(IoType::Read, 4096, 4, true);
        a.record(IoType::Write, 512, 7, true);
        a.record(IoType::Write, 512, 7, false);
        let b = ChannelStats::default();
        b.record(IoType::Read, 512, 20, true);
        b.record(IoType::Unmap, 1 << 20, 3, true);
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
        assert_eq!(
            (a.num_write_ops, a.min_write_latency_ticks, a.num_io_errors),
            (1, 7, 1)
        );
        assert_eq!(
            (a.num_unmap_ops, a.min_unmap_latency_ticks, a.bytes_unmapped),
            (1, 3, 1 << 20)
        );
    }
}
