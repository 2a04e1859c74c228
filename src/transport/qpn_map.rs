//! The poll group's map from (device index, QP number) to qpair slot, looked
//! up for every work completion, with a hasher that costs one multiply per
//! word instead of SipHash's rounds. Its keys are QP numbers of our own QPs,
//! assigned by the verbs provider, never values a peer chooses, so a
//! DoS-resistant hash buys nothing here.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// (device index, QP number) → `V`.
pub(crate) type QpnMap<V> = HashMap<(usize, u32), V, BuildHasherDefault<QpnHasher>>;

/// Multiply-rotate hashing of whole words (the high bits, which the table's
/// control bytes use, depend on every input bit).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct QpnHasher(u64);

/// An odd 64-bit constant with well-spread bits (from the golden ratio).
const K: u64 = 0x9e37_79b9_7f4a_7c15;

impl QpnHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(26) ^ word).wrapping_mul(K);
    }
}

impl Hasher for QpnHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.add(u64::from(b));
        }
    }

    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_key_among_many() {
        let mut m = QpnMap::default();
        for dev in 0..3usize {
            for qpn in (0..2000u32).map(|i| i * 7 + 0x100) {
                m.insert((dev, qpn), dev * 10_000 + qpn as usize);
            }
        }
        for dev in 0..3usize {
            for qpn in (0..2000u32).map(|i| i * 7 + 0x100) {
                assert_eq!(m.get(&(dev, qpn)), Some(&(dev * 10_000 + qpn as usize)));
            }
        }
        assert_eq!(m.get(&(3, 0x100)), None);
        assert_eq!(m.get(&(0, 0x101)), None);
    }

    #[test]
    fn keys_differing_in_one_field_hash_apart() {
        let h = |k: (usize, u32)| {
            use std::hash::{BuildHasher, BuildHasherDefault};
            BuildHasherDefault::<QpnHasher>::default().hash_one(k)
        };
        assert_ne!(h((0, 1)), h((1, 0)));
        assert_ne!(h((0, 1)), h((0, 2)));
        // The high 7 bits (hashbrown's control byte) differ for consecutive
        // QP numbers often enough to spread them.
        let tags: std::collections::HashSet<u64> = (0..64u32).map(|q| h((0, q)) >> 57).collect();
        assert!(tags.len() > 32, "only {} distinct tags", tags.len());
    }
}
