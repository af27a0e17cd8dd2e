//! The verify pattern: every block says which LBA it is and which write put it there.
//!
//! Block layout, in little-endian 64-bit words: word 0 is the LBA, word 1 the write id
//! (unique per job and write), every further word a mix of both and its index. A block
//! read back from the wrong place, from an older write, or torn, fails the check.

const K1: u64 = 0x9e37_79b9_7f4a_7c15;
const K2: u64 = 0xd1b5_4a32_d192_ed03;

#[inline]
fn word(lba: u64, id: u64, k: u64) -> u64 {
    match k {
        0 => lba,
        1 => id,
        _ => (lba.wrapping_mul(K1) ^ id.rotate_left(17)).wrapping_add(k.wrapping_mul(K2)),
    }
}

/// Writes the pattern of blocks `lba..` for write `id` into `buf`.
pub fn fill(buf: &mut [u8], block_len: usize, lba: u64, id: u64) {
    for (b, block) in buf.chunks_exact_mut(block_len).enumerate() {
        let l = lba + b as u64;
        for (k, w) in block.chunks_exact_mut(8).enumerate() {
            w.copy_from_slice(&word(l, id, k as u64).to_le_bytes());
        }
    }
}

/// Where a block read back differs from what was written.
#[derive(Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub lba: u64,
    pub offset_in_block: usize,
    pub expected: u64,
    pub got: u64,
}

/// Checks `buf` against the pattern of blocks `lba..` for write `id`.
pub fn check(buf: &[u8], block_len: usize, lba: u64, id: u64) -> Option<Mismatch> {
    for (b, block) in buf.chunks_exact(block_len).enumerate() {
        let l = lba + b as u64;
        for (k, w) in block.chunks_exact(8).enumerate() {
            let got = u64::from_le_bytes(w.try_into().unwrap_or([0; 8]));
            let expected = word(l, id, k as u64);
            if got != expected {
                return Some(Mismatch {
                    lba: l,
                    offset_in_block: k * 8,
                    expected,
                    got,
                });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_wrong_lba_old_write_and_torn_blocks() {
        let mut b = vec![0u8; 4096];
        fill(&mut b, 512, 100, 7);
        assert_eq!(check(&b, 512, 100, 7), None);
        assert_eq!(check(&b, 512, 101, 7).unwrap().lba, 101);
        assert_eq!(check(&b, 512, 100, 6).unwrap().offset_in_block, 8);
        b[3 * 512 + 200] ^= 1;
        let m = check(&b, 512, 100, 7).unwrap();
        assert_eq!((m.lba, m.offset_in_block), (103, 200));
    }
}
