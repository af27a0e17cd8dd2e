//! Latency histograms in SPDK's layout (`spdk_histogram_data`, bucket_shift 7), so that
//! SPDK's tools read what `bdev_get_histogram` returns.
//!
//! 58 ranges of 128 buckets of u64 counters. Range 0 holds values 0..127 and range 1
//! 128..255, one per bucket; range r >= 2 covers [2^(r+6), 2^(r+7)) in steps of 2^(r-1).
//! Values are latencies in ticks. The wire form is the counters as little-endian u64s,
//! base64-encoded.

use base64::Engine;

/// log2 of the buckets per range.
pub const BUCKET_SHIFT: u32 = 7;
const BUCKETS_PER_RANGE: usize = 1 << BUCKET_SHIFT;
const LSB: u32 = 64 - BUCKET_SHIFT;
const RANGES: usize = (LSB + 1) as usize;
/// Number of counters.
pub const NUM_BUCKETS: usize = RANGES * BUCKETS_PER_RANGE;

/// A latency histogram.
#[derive(Clone)]
pub struct Histogram {
    buckets: Box<[u64]>,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: vec![0; NUM_BUCKETS].into_boxed_slice(),
        }
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Histogram({} values)", self.count())
    }
}

/// The bucket a value falls in.
#[inline]
fn bucket(v: u64) -> usize {
    let clz = v.leading_zeros();
    let range = if clz <= LSB {
        (LSB - clz).min(RANGES as u32 - 1)
    } else {
        0
    };
    let shift = if range > 0 { range - 1 } else { 0 };
    let index = (v >> shift) as usize & (BUCKETS_PER_RANGE - 1);
    (range as usize) << BUCKET_SHIFT | index
}

/// The first value past bucket `b` (its exclusive upper end).
fn bucket_end(b: usize) -> u64 {
    let range = (b >> BUCKET_SHIFT) as u32;
    let index = (b & (BUCKETS_PER_RANGE - 1)) as u64;
    if range == 0 {
        index + 1
    } else {
        (1u64 << (range + BUCKET_SHIFT - 1)) + ((index + 1) << (range - 1))
    }
}

impl Histogram {
    /// Counts one value.
    #[inline]
    pub fn tally(&mut self, v: u64) {
        self.buckets[bucket(v)] += 1;
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(o.buckets.iter()) {
            *a += b;
        }
    }

    /// Values counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Non-empty buckets as (start, end exclusive, count), in order.
    pub fn buckets(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.buckets
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| {
                let start = if i == 0 { 0 } else { bucket_end(i - 1) };
                (start, bucket_end(i), *c)
            })
    }

    /// The value below which `p` (0..=1) of the counts lie (a bucket's end).
    pub fn percentile(&self, p: f64) -> u64 {
        let total = self.count();
        let want = ((total as f64) * p).ceil() as u64;
        let mut seen = 0;
        for (i, c) in self.buckets.iter().enumerate() {
            seen += c;
            if seen >= want && *c > 0 {
                return bucket_end(i);
            }
        }
        0
    }

    /// SPDK's wire form: the counters as little-endian u64s, base64.
    pub fn to_base64(&self) -> String {
        let mut bytes = Vec::with_capacity(NUM_BUCKETS * 8);
        for c in self.buckets.iter() {
            bytes.extend_from_slice(&c.to_le_bytes());
        }
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// Parses the wire form.
    pub fn from_base64(s: &str) -> Option<Histogram> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
        if bytes.len() != NUM_BUCKETS * 8 {
            return None;
        }
        let buckets = bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        Some(Histogram { buckets })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_follow_spdk_layout() {
        assert_eq!(NUM_BUCKETS, 7424);
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(100), 100);
        assert_eq!(bucket(200), 128 + 72);
        // Range 2 covers 256..511 in steps of 2.
        assert_eq!(bucket(256), 2 * 128);
        assert_eq!(bucket(257), 2 * 128);
        assert_eq!(bucket(258), 2 * 128 + 1);
        assert_eq!(bucket(u64::MAX) >> BUCKET_SHIFT, RANGES - 1);
        for v in [1u64, 127, 128, 300, 5000, 1 << 40] {
            let b = bucket(v);
            assert!(v < bucket_end(b), "{v} below the end of its bucket");
            if b > 0 {
                assert!(v >= bucket_end(b - 1), "{v} past the previous bucket");
            }
        }
    }

    #[test]
    fn round_trips_through_base64_and_merges() {
        let mut h = Histogram::default();
        for v in [5, 5, 700, 1 << 20] {
            h.tally(v);
        }
        let mut g = Histogram::from_base64(&h.to_base64()).unwrap();
        g.merge(&h);
        assert_eq!(g.count(), 8);
        assert_eq!(g.percentile(0.5), 6);
        assert!(g.percentile(1.0) > 1 << 20);
        let b: Vec<_> = g.buckets().collect();
        assert_eq!(b[0], (5, 6, 4));
    }
}
