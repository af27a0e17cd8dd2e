//! Core masks as SPDK writes them: a hex mask (`0x3`, or `3`), or a list in brackets
//! (`[0,2-3]`).

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// The highest core number a mask may name, as SPDK's `SPDK_CPUSET_SIZE`.
pub const MAX_CORES: u32 = 1024;

/// A set of cores, kept sorted.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct CpuMask {
    cores: Vec<u32>,
}

impl CpuMask {
    /// A mask of the given cores.
    pub fn from_cores(cores: impl IntoIterator<Item = u32>) -> Self {
        let mut cores: Vec<u32> = cores.into_iter().collect();
        cores.sort_unstable();
        cores.dedup();
        CpuMask { cores }
    }

    /// The mask of one core.
    pub fn single(core: u32) -> Self {
        CpuMask { cores: vec![core] }
    }

    /// Whether `core` is in the mask.
    pub fn contains(&self, core: u32) -> bool {
        self.cores.binary_search(&core).is_ok()
    }

    /// The cores, ascending.
    pub fn cores(&self) -> &[u32] {
        &self.cores
    }

    /// Number of cores.
    pub fn len(&self) -> usize {
        self.cores.len()
    }

    /// Whether the mask is empty.
    pub fn is_empty(&self) -> bool {
        self.cores.is_empty()
    }

    /// The lowest core (the main core, as SPDK picks it).
    pub fn first(&self) -> Option<u32> {
        self.cores.first().copied()
    }

    /// The cores this process may run on (its affinity).
    pub fn available() -> CpuMask {
        let mut set = empty_set();
        // SAFETY: `set` is a valid, writable cpu_set_t and the size passed is its size.
        let rc =
            unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
        if rc != 0 {
            let n = std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1);
            return CpuMask::from_cores(0..n);
        }
        let limit = MAX_CORES.min(libc::CPU_SETSIZE as u32);
        CpuMask::from_cores((0..limit).filter(|&c| {
            // SAFETY: c < CPU_SETSIZE, so the bit lies inside `set`.
            unsafe { libc::CPU_ISSET(c as usize, &set) }
        }))
    }

    /// Checks that every core is one this process may use.
    pub fn check_available(&self) -> Result<(), Error> {
        if self.cores.is_empty() {
            return Err(Error::InvalidCoreMask {
                mask: self.to_string(),
                reason: "no cores".into(),
            });
        }
        let avail = CpuMask::available();
        if let Some(c) = self.cores.iter().find(|&&c| !avail.contains(c)) {
            return Err(Error::InvalidCoreMask {
                mask: self.to_string(),
                reason: format!("core {c} is not available (available: {})", avail.list()),
            });
        }
        Ok(())
    }

    /// The list form, `[0,1,4]`.
    pub fn list(&self) -> String {
        let v: Vec<String> = self.cores.iter().map(|c| c.to_string()).collect();
        format!("[{}]", v.join(","))
    }
}

pub(crate) fn empty_set() -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
    unsafe { std::mem::zeroed() }
}

impl fmt::Display for CpuMask {
    /// Lowercase hex with `0x`, as `spdk_cpuset_fmt` (core 0 alone is `0x1`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(&max) = self.cores.last() else {
            return f.write_str("0x0");
        };
        let nibbles = max / 4 + 1;
        let mut s = String::with_capacity(nibbles as usize + 2);
        s.push_str("0x");
        for n in (0..nibbles).rev() {
            let mut v = 0u32;
            for b in 0..4 {
                if self.contains(n * 4 + b) {
                    v |= 1 << b;
                }
            }
            s.push(char::from_digit(v, 16).unwrap_or('0'));
        }
        f.write_str(&s)
    }
}

impl FromStr for CpuMask {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Error::InvalidCoreMask {
            mask: s.to_string(),
            reason: reason.to_string(),
        };
        let t = s.trim();
        let mut cores = Vec::new();
        if let Some(list) = t.strip_prefix('[') {
            let list = list
                .strip_suffix(']')
                .ok_or_else(|| bad("a list must end with ']'"))?;
            for item in list.split(',') {
                let item = item.trim();
                if item.is_empty() {
                    return Err(bad("empty list item"));
                }
                let (a, b) = match item.split_once('-') {
                    Some((a, b)) => (a.trim(), b.trim()),
                    None => (item, item),
                };
                let a: u32 = a
                    .parse()
                    .map_err(|_| bad("list items must be core numbers or ranges a-b"))?;
                let b: u32 = b
                    .parse()
                    .map_err(|_| bad("list items must be core numbers or ranges a-b"))?;
                if a > b {
                    return Err(bad("range start is above its end"));
                }
                if b >= MAX_CORES {
                    return Err(bad("core number too large"));
                }
                cores.extend(a..=b);
            }
        } else {
            let hex = t
                .strip_prefix("0x")
                .or_else(|| t.strip_prefix("0X"))
                .unwrap_or(t);
            if hex.is_empty() {
                return Err(bad("empty mask"));
            }
            for (i, ch) in hex.chars().rev().enumerate() {
                let v = ch.to_digit(16).ok_or_else(|| bad("not a hex mask"))?;
                for b in 0..4 {
                    if v & (1 << b) != 0 {
                        let core = (i * 4 + b) as u32;
                        if core >= MAX_CORES {
                            return Err(bad("core number too large"));
                        }
                        cores.push(core);
                    }
                }
            }
        }
        let m = CpuMask::from_cores(cores);
        if m.is_empty() {
            return Err(bad("no cores"));
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hex_and_lists() {
        assert_eq!("0x3".parse::<CpuMask>().unwrap().cores(), &[0, 1]);
        assert_eq!("3".parse::<CpuMask>().unwrap().cores(), &[0, 1]);
        assert_eq!("0X10".parse::<CpuMask>().unwrap().cores(), &[4]);
        assert_eq!("[0,2-4]".parse::<CpuMask>().unwrap().cores(), &[0, 2, 3, 4]);
        assert_eq!(
            "0x100000000000000000".parse::<CpuMask>().unwrap().cores(),
            &[68]
        );
    }

    #[test]
    fn formats_like_spdk() {
        assert_eq!(CpuMask::single(0).to_string(), "0x1");
        assert_eq!(CpuMask::single(4).to_string(), "0x10");
        assert_eq!(CpuMask::from_cores([0, 1]).to_string(), "0x3");
        assert_eq!(CpuMask::from_cores([8]).to_string(), "0x100");
    }

    #[test]
    fn rejects_garbage() {
        for s in ["", "0x", "0xg", "[1", "[a]", "[3-1]", "0x0", "[]", "[5000]"] {
            assert!(s.parse::<CpuMask>().is_err(), "{s:?} accepted");
        }
    }
}
