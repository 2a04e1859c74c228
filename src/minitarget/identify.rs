//! Identify data structures (CNS 00h, 01h, 02h, 03h), 4096 bytes each.

use super::config::{DISCOVERY_NQN, LBA_SIZE};
use super::controller::{Controller, ControllerKind, ERROR_LOG_ENTRIES, NVME_VERSION};
use super::namespace::RamNamespace;
use super::subsystem::Subsystem;

/// Size of every Identify data structure.
pub(crate) const IDENTIFY_LEN: usize = 4096;

/// ONCS bit 3: Write Zeroes supported.
const ONCS_WRITE_ZEROES: u16 = 1 << 3;
/// OAES bit 8: namespace attribute notices supported.
const OAES_NS_ATTR: u32 = 1 << 8;
/// CTRATT bit 0: 128-bit host identifier supported.
const CTRATT_HOST_ID_128: u32 = 1;
/// LPA bit 2: extended data for Get Log Page (NUMDU, LPO).
const LPA_EXTENDED: u8 = 1 << 2;
/// Abort command limit, 0-based (upstream: 3).
const ACL: u8 = 3;
/// Controller type: I/O controller.
const CNTRLTYPE_IO: u8 = 1;
/// Controller type: discovery controller.
const CNTRLTYPE_DISCOVERY: u8 = 2;
/// Namespace identifier types.
const NIDT_NGUID: u8 = 0x2;
const NIDT_UUID: u8 = 0x3;

pub(crate) fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
/// Copies `s` into `b[at..at + len]` and pads the rest with `pad`.
pub(crate) fn put_str(b: &mut [u8], at: usize, len: usize, s: &str, pad: u8) {
    let field = &mut b[at..at + len];
    field.fill(pad);
    let n = s.len().min(len);
    field[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// Identify Controller (CNS 01h) with the NVMe-oF attributes.
pub(crate) fn controller(ctrl: &Controller, sub: &Subsystem) -> Vec<u8> {
    let cfg = &sub.config;
    let t = &cfg.transport;
    let nvm = ctrl.kind == ControllerKind::Nvm;
    let mut b = vec![0u8; IDENTIFY_LEN];
    put_str(&mut b, 4, 20, &cfg.serial, b' '); // SN
    put_str(&mut b, 24, 40, &cfg.model, b' '); // MN
    put_str(&mut b, 64, 8, env!("CARGO_PKG_VERSION"), b' '); // FR
    b[72] = 6; // RAB
    b[76] = 1 << 1; // CMIC: may be one of several controllers
    b[77] = t.mdts();
    put_u16(&mut b, 78, ctrl.cntlid);
    put_u32(&mut b, 80, NVME_VERSION);
    if nvm {
        put_u32(&mut b, 92, OAES_NS_ATTR);
    }
    put_u32(&mut b, 96, CTRATT_HOST_ID_128);
    b[111] = if nvm {
        CNTRLTYPE_IO
    } else {
        CNTRLTYPE_DISCOVERY
    };
    b[258] = ACL;
    b[259] = cfg.aerl;
    b[261] = LPA_EXTENDED;
    b[262] = (ERROR_LOG_ENTRIES - 1) as u8; // ELPE
    put_u16(&mut b, 320, cfg.kas);
    b[512] = 0x66; // SQES: 64-byte entries
    b[513] = 0x44; // CQES: 16-byte entries
    put_u16(&mut b, 514, t.max_queue_depth); // MAXCMD
    if nvm {
        put_u32(&mut b, 516, cfg.max_namespaces); // NN
        put_u16(&mut b, 520, ONCS_WRITE_ZEROES);
        b[525] = 1; // VWC present
    }
    put_u32(&mut b, 536, t.sgls);
    let nqn = if nvm {
        cfg.subnqn.as_str()
    } else {
        DISCOVERY_NQN
    };
    put_str(&mut b, 768, 256, nqn, 0);
    put_u32(&mut b, 1792, t.ioccsz());
    put_u32(&mut b, 1796, t.iorcsz());
    put_u16(&mut b, 1800, 0); // ICDOFF
    b[1802] = 0; // FCATT: dynamic controller model
    b[1803] = t.msdbd;
    b
}

/// Identify Namespace (CNS 00h): one LBA format, 512-byte blocks.
pub(crate) fn namespace(ns: &RamNamespace) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_LEN];
    put_u64(&mut b, 0, ns.blocks()); // NSZE
    put_u64(&mut b, 8, ns.blocks()); // NCAP
    put_u64(&mut b, 16, ns.blocks()); // NUSE
    b[25] = 0; // NLBAF: one format
    b[26] = 0; // FLBAS: format 0
    b[104..120].copy_from_slice(&ns.nguid());
    // LBAF0: MS = 0, LBADS = log2(512), RP = 0.
    put_u32(&mut b, 128, LBA_SIZE.trailing_zeros() << 16);
    b
}

/// Active Namespace ID list (CNS 02h): active NSIDs above `after`, ascending.
pub(crate) fn active_namespaces(sub: &Subsystem, after: u32) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_LEN];
    let ids = sub
        .namespaces
        .range(after.saturating_add(1)..)
        .map(|(&nsid, _)| nsid)
        .filter(|&nsid| nsid > after);
    for (i, nsid) in ids.take(IDENTIFY_LEN / 4).enumerate() {
        put_u32(&mut b, i * 4, nsid);
    }
    b
}

/// Namespace Identification Descriptor list (CNS 03h): NGUID and UUID.
pub(crate) fn namespace_descriptors(ns: &RamNamespace) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_LEN];
    let mut at = 0;
    for (nidt, id) in [(NIDT_NGUID, ns.nguid()), (NIDT_UUID, ns.uuid())] {
        b[at] = nidt;
        b[at + 1] = 16; // NIDL
        b[at + 4..at + 20].copy_from_slice(&id);
        at += 20;
    }
    b
}
