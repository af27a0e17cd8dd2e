//! Where a raid1 read goes first with `bdev_raid_set_options {"raid1_read_affinity":
//! true}` (ours; off by default): each member slot has a home part of the array, one
//! contiguous range of blocks, and a read goes to the member whose part holds it
//! (`raid1_read` falls back to the least busy member when that one can't take it, or
//! when it has far more I/O outstanding than the least busy one). Each thread's raid
//! channel keeps its own parts.
//!
//! Why parts rather than only the least outstanding I/O (the default, as SPDK): a member
//! then serves half the array's working set (of two), not all of it, and what it caches
//! keeps twice the reach: a device's mapping-table cache, the host's page cache under a
//! file, the page-table and TLB entries of a RAM disk. Measured on this machine's malloc
//! disks (docs/benchmarks.md, session 14): raid1 randread over two 256 MiB malloc disks
//! went from 0.85 to 0.92 of one malloc disk, in twelve rounds out of twelve, with the
//! reads still split half and half between the members. What it costs: below the
//! outstanding-I/O cap a sequential stream stays on one member, and a slow member keeps
//! its share of the reads.
//!
//! The parts' bounds move so that each part gets an equal share of the reads, which keeps
//! the members balanced under a skewed load too: every [`ADJUST_EVERY`] reads, each bound
//! moves toward the busier of its two parts by the narrower part's width times
//! `(busier - other) / (4 * busier)`, the two parts' read counts. A sequential sweep puts
//! every read of a period in one part, so the bound chases the sweep's front across the
//! array while it runs (the counts stay even over time; the locality is lost meanwhile).

use smallvec::SmallVec;

/// Reads between two adjustments of the bounds.
pub(crate) const ADJUST_EVERY: u32 = 1024;

/// One home part: where it ends, and the reads whose block fell in it since the last
/// adjustment.
#[derive(Debug, Clone, Copy)]
struct Part {
    end: u64,
    reads: u32,
}

/// The home parts of one thread's raid1 channel.
///
/// Kept inline in the channel for up to two members (no heap line to fetch): the
/// copies of a RAM disk's reads stream through the caches between two reads, and each
/// line of metadata a read touches comes back from L3. The first layout, two vectors on
/// the heap, cost ~5 % of raid1 randread IOPS on malloc disks against fixed halves.
#[derive(Debug)]
pub(crate) struct ReadSplit {
    /// Part `i` is `parts[i - 1].end..parts[i].end` (from 0 for the first); the last
    /// ends at the array's size. One part per member slot.
    parts: SmallVec<[Part; 2]>,
    total: u32,
}

impl ReadSplit {
    /// `n` equal parts of `size` blocks.
    pub(crate) fn new(size: u64, n: usize) -> ReadSplit {
        let n = n.max(1);
        let parts = (1..=n as u64)
            .map(|i| Part {
                end: ((size as u128 * i as u128) / n as u128) as u64,
                reads: 0,
            })
            .collect();
        ReadSplit { parts, total: 0 }
    }

    /// The part (member slot) that holds block `lba`, counted as read.
    #[inline]
    pub(crate) fn home(&mut self, lba: u64) -> usize {
        let last = self.parts.len() - 1;
        // Parts are few (two for a mirror): a scan beats a search.
        let i = self.parts[..last]
            .iter()
            .position(|p| lba < p.end)
            .unwrap_or(last);
        self.parts[i].reads += 1;
        self.total += 1;
        if self.total >= ADJUST_EVERY {
            self.adjust();
        }
        i
    }

    /// Moves each inner bound toward the busier of its two parts, then starts counting
    /// again.
    #[cold]
    fn adjust(&mut self) {
        for j in 1..self.parts.len() {
            let lo = if j >= 2 { self.parts[j - 2].end } else { 0 };
            let (at, hi) = (self.parts[j - 1].end, self.parts[j].end);
            let (l, r) = (self.parts[j - 1].reads as u128, self.parts[j].reads as u128);
            // Steps are cut to the narrower part's width: reads are densest where parts
            // are narrow, and a step sized by a wide, sparse part would overshoot into a
            // dense one on a chance difference and bias the shares (a 90 % skew gave one
            // part 58 % of the reads that way). A quarter of the difference, not half:
            // the chance difference of 1024 reads moved the bound of an even load by
            // ~5 % of the array each time, and the blocks it swept over were read from
            // both members.
            let w = (at - lo).min(hi - at) as u128;
            // At least a block, so that a part squeezed to a block can grow again.
            let new = if l > r {
                at.saturating_sub(((w * (l - r) / (4 * l)) as u64).max(1))
            } else if r > l {
                at.saturating_add(((w * (r - l) / (4 * r)) as u64).max(1))
            } else {
                at
            };
            self.parts[j - 1].end = new.clamp(lo, hi);
        }
        self.parts.iter_mut().for_each(|p| p.reads = 0);
        self.total = 0;
    }

    #[cfg(test)]
    pub(crate) fn bounds(&self) -> Vec<u64> {
        std::iter::once(0)
            .chain(self.parts.iter().map(|p| p.end))
            .collect()
    }

    #[cfg(test)]
    fn parts(&self) -> usize {
        self.parts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift64*), for spread-out block numbers.
    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut x = seed | 1;
        move || {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    fn shares(s: &mut ReadSplit, n: usize, mut lba: impl FnMut() -> u64) -> Vec<f64> {
        let mut c = vec![0u64; s.parts()];
        for _ in 0..n {
            c[s.home(lba())] += 1;
        }
        c.iter().map(|&x| x as f64 / n as f64).collect()
    }

    #[test]
    fn even_parts_and_locality() {
        let mut s = ReadSplit::new(1000, 2);
        assert_eq!(s.bounds(), &[0, 500, 1000]);
        assert_eq!(s.home(0), 0);
        assert_eq!(s.home(499), 0);
        assert_eq!(s.home(500), 1);
        assert_eq!(s.home(999), 1);
        // Out of range (the core refuses those before a module sees them): the last part.
        assert_eq!(s.home(5000), 1);
        let s3 = ReadSplit::new(10, 3);
        assert_eq!(s3.bounds(), &[0, 3, 6, 10]);
        let s1 = ReadSplit::new(10, 1);
        assert_eq!(s1.bounds(), &[0, 10]);
    }

    #[test]
    fn uniform_reads_keep_even_parts() {
        let mut s = ReadSplit::new(1 << 20, 2);
        let mut r = rng(7);
        let sh = shares(&mut s, 200_000, || r() % (1 << 20));
        assert!((sh[0] - 0.5).abs() < 0.02, "{sh:?}");
        // The bound wanders a little around the middle, no more.
        let b = s.bounds()[1] as f64 / (1 << 20) as f64;
        assert!((b - 0.5).abs() < 0.05, "bound at {b}");
    }

    #[test]
    fn skewed_reads_are_balanced() {
        // Nine reads in ten fall in the first tenth of the array.
        for parts in [2usize, 3, 4] {
            let size = 1u64 << 24;
            let mut s = ReadSplit::new(size, parts);
            let mut r = rng(11);
            let mut lba = move || {
                let x = r();
                if x % 10 != 0 {
                    x % (size / 10)
                } else {
                    x % size
                }
            };
            // Settle, then measure.
            shares(&mut s, 100_000, &mut lba);
            let sh = shares(&mut s, 200_000, &mut lba);
            let even = 1.0 / parts as f64;
            for (i, x) in sh.iter().enumerate() {
                assert!(
                    (x - even).abs() < 0.05,
                    "{parts} parts: part {i} got {x} ({sh:?}) bounds {:?}",
                    s.bounds()
                );
            }
            let b = s.bounds();
            assert!(b.windows(2).all(|w| w[0] <= w[1]), "{b:?}");
            assert_eq!((b[0], b[parts]), (0, size));
        }
    }

    #[test]
    fn bounds_recover_when_the_load_moves() {
        // Every read in the first block, then an even load: the parts grow back to even.
        let size = 1u64 << 30;
        let mut s = ReadSplit::new(size, 2);
        shares(&mut s, 100 * ADJUST_EVERY as usize, || 0);
        assert!(s.bounds()[1] <= 2, "{:?}", s.bounds());
        let mut r = rng(3);
        shares(&mut s, 100 * ADJUST_EVERY as usize, || r() % size);
        let sh = shares(&mut s, 100_000, || r() % size);
        assert!((sh[0] - 0.5).abs() < 0.03, "{sh:?} bounds {:?}", s.bounds());
    }

    #[test]
    fn all_reads_in_one_block_stay_in_range() {
        // A degenerate load: the bounds may crowd together, never cross or leave the array.
        let mut s = ReadSplit::new(100, 2);
        for _ in 0..50 * ADJUST_EVERY {
            assert!(s.home(42) < 2);
        }
        let b = s.bounds();
        assert!(b[0] == 0 && b[1] <= 100 && b[2] == 100, "{b:?}");
        // An empty array (size 0) still gives a part.
        let mut z = ReadSplit::new(0, 2);
        assert!(z.home(0) < 2);
    }
}
