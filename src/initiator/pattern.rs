//! Deterministic data patterns: the content of a block is a pure function of
//! (seed, LBA, generation), so any read can be checked against the last write.

/// splitmix64 step.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The pattern word at byte `offset` (multiple of 8) of a block starting at `lba`.
fn word(seed: u64, lba: u64, generation: u32, offset: usize) -> u64 {
    mix(seed
        ^ mix(lba.wrapping_mul(0x1000_0000_01b3) ^ ((generation as u64) << 40) ^ offset as u64))
}

/// Fill `buf` with the pattern of an I/O starting at `lba`.
pub fn fill(buf: &mut [u8], seed: u64, lba: u64, generation: u32) {
    for (i, chunk) in buf.chunks_mut(8).enumerate() {
        let w = word(seed, lba, generation, i * 8).to_le_bytes();
        chunk.copy_from_slice(&w[..chunk.len()]);
    }
}

/// Index and expected/actual byte of the first mismatch, if any.
pub fn check(buf: &[u8], seed: u64, lba: u64, generation: u32) -> Option<(usize, u8, u8)> {
    for (i, chunk) in buf.chunks(8).enumerate() {
        let w = word(seed, lba, generation, i * 8).to_le_bytes();
        if chunk != &w[..chunk.len()] {
            let j = chunk
                .iter()
                .zip(w.iter())
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            return Some((i * 8 + j, w[j], chunk[j]));
        }
    }
    None
}

/// A tiny deterministic PRNG for workload generation (xorshift64*).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator (seed 0 is remapped).
    pub fn new(seed: u64) -> Rng {
        Rng(mix(seed) | 1)
    }

    /// Next u64.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n.max(1) as u128) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_then_check_round_trips_and_detects_change() {
        let mut b = vec![0u8; 4096 + 5];
        fill(&mut b, 7, 100, 3);
        assert_eq!(check(&b, 7, 100, 3), None);
        assert!(check(&b, 7, 101, 3).is_some(), "other lba differs");
        assert!(check(&b, 7, 100, 4).is_some(), "other generation differs");
        b[4097] ^= 0x40;
        let (off, _, _) = check(&b, 7, 100, 3).unwrap();
        assert_eq!(off, 4097);
    }

    #[test]
    fn rng_below_is_in_range() {
        let mut r = Rng::new(0);
        for _ in 0..1000 {
            assert!(r.below(10) < 10);
        }
    }
}
