//! Pure builders and parsers for the NVMe / NVMe-oF commands the initiator
//! sends (NVMe base 2.x, NVMe-oF 1.1). No I/O.

use crate::engine::codec::admin::{feature, CONNECT_DATA_SIZE};
use crate::engine::codec::nvme::{admin_opcode, fctype, io_opcode};
use crate::engine::codec::Command;

/// Fabrics Connect for queue `qid` with `sqsize` (0's based) and keep-alive `kato_ms`.
pub fn connect(cid: u16, qid: u16, sqsize: u16, kato_ms: u32) -> Command {
    let mut c = Command::new_fabrics(fctype::CONNECT, cid);
    c.set_cdw10((qid as u32) << 16); // RECFMT 0 | QID
    c.set_cdw11(sqsize as u32); // SQSIZE | CATTR 0
    c.set_cdw12(kato_ms);
    c
}

/// The 1024-byte Connect data: HOSTID @0, CNTLID @16, SUBNQN @256, HOSTNQN @512.
pub fn connect_data(
    hostid: &[u8; 16],
    cntlid: u16,
    subnqn: &str,
    hostnqn: &str,
) -> [u8; CONNECT_DATA_SIZE] {
    let mut d = [0u8; CONNECT_DATA_SIZE];
    d[0..16].copy_from_slice(hostid);
    d[16..18].copy_from_slice(&cntlid.to_le_bytes());
    let s = subnqn.as_bytes();
    let n = s.len().min(255);
    d[256..256 + n].copy_from_slice(&s[..n]);
    let h = hostnqn.as_bytes();
    let n = h.len().min(255);
    d[512..512 + n].copy_from_slice(&h[..n]);
    d
}

/// Property Get of `offset`; `eight` for 8-byte properties (CAP).
pub fn property_get(cid: u16, offset: u32, eight: bool) -> Command {
    let mut c = Command::new_fabrics(fctype::PROPERTY_GET, cid);
    c.set_cdw10(eight as u32);
    c.set_cdw11(offset);
    c
}

/// Property Set of a 4-byte property.
pub fn property_set(cid: u16, offset: u32, value: u32) -> Command {
    let mut c = Command::new_fabrics(fctype::PROPERTY_SET, cid);
    c.set_cdw10(0);
    c.set_cdw11(offset);
    c.set_cdw12(value);
    c.set_cdw13(0);
    c
}

/// Identify with `cns` for `nsid` (4096-byte data, controller to host).
pub fn identify(cid: u16, cns: u8, nsid: u32) -> Command {
    let mut c = Command::new(admin_opcode::IDENTIFY, cid);
    c.set_nsid(nsid);
    c.set_cdw10(u32::from(cns));
    c
}

/// Set Features / Number of Queues asking for `n` I/O SQs and CQs.
pub fn set_num_queues(cid: u16, n: u16) -> Command {
    let mut c = Command::new(admin_opcode::SET_FEATURES, cid);
    let z = n.saturating_sub(1) as u32;
    c.set_cdw10(u32::from(feature::NUMBER_OF_QUEUES));
    c.set_cdw11(z | (z << 16));
    c
}

/// Keep Alive.
pub fn keep_alive(cid: u16) -> Command {
    Command::new(admin_opcode::KEEP_ALIVE, cid)
}

/// Asynchronous Event Request: the controller holds it until it has an
/// event to report.
pub fn async_event_request(cid: u16) -> Command {
    Command::new(admin_opcode::ASYNC_EVENT_REQUEST, cid)
}

/// Read or Write of `nlb` blocks (1-based count) at `slba`.
pub fn read_write(cid: u16, write: bool, nsid: u32, slba: u64, nlb: u32) -> Command {
    let mut c = Command::new(
        if write {
            io_opcode::WRITE
        } else {
            io_opcode::READ
        },
        cid,
    );
    c.set_nsid(nsid);
    c.set_cdw10(slba as u32);
    c.set_cdw11((slba >> 32) as u32);
    c.set_cdw12(nlb.saturating_sub(1) & 0xffff);
    c
}

fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn le64(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

fn ascii(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).trim_end().to_string()
}

/// Decoded CAP register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap {
    /// Max queue entries supported (1-based).
    pub mqes: u32,
    /// Worst-case ready timeout in ms.
    pub timeout_ms: u64,
    /// Minimum memory page size in bytes.
    pub mps_min: u32,
}

impl Cap {
    /// Decode the 64-bit CAP value.
    pub fn parse(cap: u64) -> Cap {
        Cap {
            mqes: (cap & 0xffff) as u32 + 1,
            timeout_ms: ((cap >> 24) & 0xff) * 500,
            mps_min: 4096 << ((cap >> 48) & 0xf),
        }
    }
}

/// The Identify Controller fields the initiator uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerInfo {
    /// PCI vendor id.
    pub vid: u16,
    /// Serial number.
    pub serial: String,
    /// Model number.
    pub model: String,
    /// Firmware revision.
    pub firmware: String,
    /// Max data transfer size as a power of two of the min page size (0 = unlimited).
    pub mdts: u8,
    /// Controller id.
    pub cntlid: u16,
    /// Max outstanding commands (0 = not reported).
    pub maxcmd: u16,
    /// Number of namespaces.
    pub nn: u32,
    /// SGL support.
    pub sgls: u32,
    /// Subsystem NQN.
    pub subnqn: String,
    /// I/O queue command capsule size in 16-byte units.
    pub ioccsz: u32,
    /// I/O queue response capsule size in 16-byte units.
    pub iorcsz: u32,
    /// In-capsule data offset in 16-byte units.
    pub icdoff: u16,
    /// Max SGL data block descriptors (0 = no limit reported).
    pub msdbd: u8,
}

impl ControllerInfo {
    /// Parse 4096 bytes of Identify Controller data.
    pub fn parse(d: &[u8]) -> Option<ControllerInfo> {
        if d.len() < 4096 {
            return None;
        }
        Some(ControllerInfo {
            vid: le16(d, 0),
            serial: ascii(&d[4..24]),
            model: ascii(&d[24..64]),
            firmware: ascii(&d[64..72]),
            mdts: d[77],
            cntlid: le16(d, 78),
            maxcmd: le16(d, 514),
            nn: le32(d, 516),
            sgls: le32(d, 536),
            subnqn: ascii(&d[768..1024]),
            ioccsz: le32(d, 1792),
            iorcsz: le32(d, 1796),
            icdoff: le16(d, 1800),
            msdbd: d[1803],
        })
    }

    /// Bytes of in-capsule data an I/O command may carry (0 if none).
    pub fn in_capsule_data_size(&self) -> u32 {
        (self.ioccsz.saturating_mul(16)).saturating_sub(64)
    }

    /// Largest transfer in bytes given the min page size (None = unlimited).
    pub fn max_transfer(&self, mps_min: u32) -> Option<u64> {
        (self.mdts != 0).then(|| (mps_min as u64) << self.mdts.min(32))
    }

    /// True when the controller supports keyed SGL data blocks (SGLS bit 2).
    pub fn supports_keyed_sgl(&self) -> bool {
        self.sgls & (1 << 2) != 0
    }
}

/// The Identify Namespace fields the initiator uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamespaceInfo {
    /// Namespace id.
    pub nsid: u32,
    /// Size in logical blocks.
    pub nsze: u64,
    /// Capacity in logical blocks.
    pub ncap: u64,
    /// Logical block size in bytes.
    pub block_size: u32,
}

impl NamespaceInfo {
    /// Parse 4096 bytes of Identify Namespace data (None for an inactive
    /// namespace, i.e. all zeros, or a bad LBA format).
    pub fn parse(nsid: u32, d: &[u8]) -> Option<NamespaceInfo> {
        if d.len() < 4096 {
            return None;
        }
        let nsze = le64(d, 0);
        if nsze == 0 {
            return None;
        }
        let flbas = (d[26] & 0xf) as usize;
        let lbaf = le32(d, 128 + 4 * flbas);
        let lbads = (lbaf >> 16) & 0xff;
        if !(9..=24).contains(&lbads) {
            return None;
        }
        Some(NamespaceInfo {
            nsid,
            nsze,
            ncap: le64(d, 8),
            block_size: 1 << lbads,
        })
    }
}

/// Parse an Active Namespace ID list (zero-terminated u32s).
pub fn parse_ns_list(d: &[u8]) -> Vec<u32> {
    d.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .take_while(|&n| n != 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::codec::admin::{self, cc, property};

    #[test]
    fn connect_fields_at_spec_offsets() {
        let c = connect(3, 5, 127, 10_000);
        let b = c.as_bytes();
        assert_eq!(b[0], 0x7f);
        assert_eq!(b[4], fctype::CONNECT);
        assert_eq!(u16::from_le_bytes([b[40], b[41]]), 0, "recfmt");
        assert_eq!(u16::from_le_bytes([b[42], b[43]]), 5, "qid");
        assert_eq!(u16::from_le_bytes([b[44], b[45]]), 127, "sqsize");
        assert_eq!(
            u32::from_le_bytes([b[48], b[49], b[50], b[51]]),
            10_000,
            "kato"
        );
        let d = connect_data(&[9; 16], admin::CNTLID_DYNAMIC, "nqn.sub", "nqn.host");
        assert_eq!(&d[16..18], &[0xff, 0xff]);
        assert_eq!(&d[256..263], b"nqn.sub");
        assert_eq!(&d[512..520], b"nqn.host");
    }

    #[test]
    fn property_and_io_layouts() {
        let g = property_get(1, property::CAP, true);
        assert_eq!(g.as_bytes()[40], 1, "8-byte attrib");
        assert_eq!(g.cdw11(), 0);
        let s = property_set(2, property::CC, cc::EN | cc::QUEUE_ENTRY_SIZES);
        assert_eq!(s.as_bytes()[4], fctype::PROPERTY_SET);
        assert_eq!(
            u32::from_le_bytes(s.as_bytes()[44..48].try_into().unwrap()),
            property::CC
        );
        assert_eq!(
            u32::from_le_bytes(s.as_bytes()[48..52].try_into().unwrap()),
            0x0046_0001
        );
        let rw = read_write(9, true, 1, 0x1_0000_0002, 8);
        assert_eq!(rw.opcode(), io_opcode::WRITE);
        assert_eq!(rw.cdw10(), 2);
        assert_eq!(rw.cdw11(), 1);
        assert_eq!(rw.cdw12(), 7);
    }

    #[test]
    fn identify_parsing() {
        let mut d = vec![0u8; 4096];
        d[77] = 5;
        d[78..80].copy_from_slice(&7u16.to_le_bytes());
        d[516..520].copy_from_slice(&2u32.to_le_bytes());
        d[536..540].copy_from_slice(&0x0010_0005u32.to_le_bytes());
        d[1792..1796].copy_from_slice(&260u32.to_le_bytes());
        d[1803] = 16;
        d[768..775].copy_from_slice(b"nqn.x.y");
        let c = ControllerInfo::parse(&d).unwrap();
        assert_eq!(c.cntlid, 7);
        assert_eq!(c.in_capsule_data_size(), 4096);
        assert_eq!(c.max_transfer(4096), Some(131072));
        assert!(c.supports_keyed_sgl());
        assert_eq!(c.subnqn, "nqn.x.y");
        assert_eq!(c.msdbd, 16);

        let mut n = vec![0u8; 4096];
        assert_eq!(NamespaceInfo::parse(1, &n), None);
        n[0..8].copy_from_slice(&1000u64.to_le_bytes());
        n[26] = 1;
        n[132..136].copy_from_slice(&(12u32 << 16).to_le_bytes());
        assert_eq!(NamespaceInfo::parse(1, &n).unwrap().block_size, 4096);

        let mut l = vec![0u8; 16];
        l[0] = 1;
        l[4] = 3;
        assert_eq!(parse_ns_list(&l), vec![1, 3]);
        let cap = Cap::parse(0x0000_0000_2001_007f | (1u64 << 48));
        assert_eq!(cap.mqes, 128);
        assert_eq!(cap.timeout_ms, 16_000);
        assert_eq!(cap.mps_min, 8192);
    }
}
