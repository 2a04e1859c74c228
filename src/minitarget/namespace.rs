//! Sparse RAM namespaces with 512-byte logical blocks.

use std::collections::HashMap;

use super::config::LBA_SIZE;
use super::data::DataBuffer;

/// Bytes per allocation chunk; a chunk is allocated on its first write and
/// freed again when Write Zeroes covers it completely.
const CHUNK: u64 = 64 * 1024;

/// One namespace backed by sparse RAM: never-written blocks read as zeroes
/// and cost no memory.
#[derive(Debug)]
pub struct RamNamespace {
    nsid: u32,
    blocks: u64,
    chunks: HashMap<u64, Box<[u8]>>,
    nguid: [u8; 16],
    uuid: [u8; 16],
}

impl RamNamespace {
    /// A namespace of `size_bytes` (rounded down to whole blocks) with
    /// identifiers derived from the subsystem NQN and the NSID.
    pub fn new(subnqn: &str, nsid: u32, size_bytes: u64) -> RamNamespace {
        let nguid = derive_id(subnqn, nsid, 0x6e67_7569_6400_0000);
        let mut uuid = derive_id(subnqn, nsid, 0x7575_6964_0000_0000);
        // RFC 9562 version 8 (vendor specific) with the RFC variant bits.
        uuid[6] = (uuid[6] & 0x0f) | 0x80;
        uuid[8] = (uuid[8] & 0x3f) | 0x80;
        RamNamespace {
            nsid,
            blocks: size_bytes / u64::from(LBA_SIZE),
            chunks: HashMap::new(),
            nguid,
            uuid,
        }
    }

    /// The namespace id.
    pub fn nsid(&self) -> u32 {
        self.nsid
    }

    /// Size in logical blocks (NSZE).
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Namespace globally unique identifier.
    pub fn nguid(&self) -> [u8; 16] {
        self.nguid
    }

    /// Namespace UUID.
    pub fn uuid(&self) -> [u8; 16] {
        self.uuid
    }

    /// Bytes of RAM currently allocated for data.
    pub fn allocated_bytes(&self) -> u64 {
        self.chunks.len() as u64 * CHUNK
    }

    /// Whether blocks `slba .. slba + nlb` exist (no overflow, inside NSZE).
    pub fn in_range(&self, slba: u64, nlb: u64) -> bool {
        slba.checked_add(nlb).is_some_and(|end| end <= self.blocks)
    }

    /// Splits the byte range of `nlb` blocks at `slba` into per-chunk pieces:
    /// (chunk index, offset in chunk, length, offset in the request).
    fn pieces(slba: u64, nlb: u64) -> impl Iterator<Item = (u64, usize, usize, usize)> {
        let start = slba * u64::from(LBA_SIZE);
        let end = start + nlb * u64::from(LBA_SIZE);
        let mut pos = start;
        std::iter::from_fn(move || {
            if pos >= end {
                return None;
            }
            let chunk = pos / CHUNK;
            let in_chunk = pos % CHUNK;
            let len = (CHUNK - in_chunk).min(end - pos);
            let piece = (
                chunk,
                in_chunk as usize,
                len as usize,
                (pos - start) as usize,
            );
            pos += len;
            Some(piece)
        })
    }

    /// Copies blocks into `data` (which must hold `nlb * 512` bytes; the
    /// caller checks range and length).
    pub fn read(&self, slba: u64, nlb: u64, data: &mut DataBuffer<'_>) {
        for (chunk, off, len, at) in Self::pieces(slba, nlb) {
            match self.chunks.get(&chunk) {
                Some(c) => {
                    data.write_at(at, &c[off..off + len]);
                }
                None => {
                    data.zero_at(at, len);
                }
            }
        }
    }

    /// Copies blocks from `data` (which holds `nlb * 512` bytes).
    pub fn write(&mut self, slba: u64, nlb: u64, data: &DataBuffer<'_>) {
        for (chunk, off, len, at) in Self::pieces(slba, nlb) {
            let c = self
                .chunks
                .entry(chunk)
                .or_insert_with(|| vec![0u8; CHUNK as usize].into_boxed_slice());
            data.read_at(at, &mut c[off..off + len]);
        }
    }

    /// Sets blocks to zero, releasing chunks that become entirely zero by
    /// being covered completely.
    pub fn write_zeroes(&mut self, slba: u64, nlb: u64) {
        for (chunk, off, len, _) in Self::pieces(slba, nlb) {
            if len as u64 == CHUNK {
                self.chunks.remove(&chunk);
            } else if let Some(c) = self.chunks.get_mut(&chunk) {
                c[off..off + len].fill(0);
            }
        }
    }
}

/// 16 bytes from two FNV-1a 64 hashes of the NQN, the NSID and a salt.
fn derive_id(subnqn: &str, nsid: u32, salt: u64) -> [u8; 16] {
    fn fnv(bytes: impl Iterator<Item = u8>, seed: u64) -> u64 {
        let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
        for b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
    }
    let input = || subnqn.bytes().chain(nsid.to_le_bytes());
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&fnv(input(), salt).to_be_bytes());
    out[8..].copy_from_slice(&fnv(input(), salt.rotate_left(17) ^ 0x5a5a).to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_read_write_and_zeroes() {
        let mut ns = RamNamespace::new("nqn.test", 1, 1 << 20);
        assert_eq!(ns.blocks(), 2048);
        assert!(ns.in_range(2047, 1));
        assert!(!ns.in_range(2047, 2));
        assert!(!ns.in_range(u64::MAX, 2));
        // A write straddling a chunk boundary (chunk = 128 blocks).
        let pattern: Vec<u8> = (0..1024u32).map(|i| (i % 251) as u8).collect();
        let mut src = pattern.clone();
        ns.write(127, 2, &DataBuffer::single(&mut src));
        assert_eq!(ns.allocated_bytes(), 2 * CHUNK);
        let mut out = vec![0xffu8; 1536];
        ns.read(126, 3, &mut DataBuffer::single(&mut out));
        assert!(out[..512].iter().all(|&b| b == 0));
        assert_eq!(&out[512..], &pattern[..]);
        // Zero a whole chunk and half of the other.
        ns.write_zeroes(0, 128);
        assert_eq!(ns.allocated_bytes(), CHUNK);
        ns.read(126, 3, &mut DataBuffer::single(&mut out));
        assert!(out[..1024].iter().all(|&b| b == 0));
        assert_eq!(&out[1024..], &pattern[512..]);
    }

    #[test]
    fn identifiers_differ_per_namespace() {
        let a = RamNamespace::new("nqn.test", 1, 512);
        let b = RamNamespace::new("nqn.test", 2, 512);
        assert_ne!(a.nguid(), b.nguid());
        assert_ne!(a.uuid(), b.uuid());
        assert_eq!(a.uuid()[6] >> 4, 8);
        assert_eq!(a.uuid()[8] >> 6, 2);
    }
}
