//! Log pages: error information (01h), SMART / health (02h), changed
//! namespace list (04h) and the discovery log (70h).

use crate::engine::codec::admin::CNTLID_DYNAMIC;

use super::config::TRTYPE_RDMA;
use super::controller::{Controller, ERROR_LOG_ENTRIES};
use super::identify::{put_str, put_u16, put_u32, put_u64};
use super::subsystem::Subsystem;

const ERROR_ENTRY_LEN: usize = 64;
const SMART_LEN: usize = 512;
const CHANGED_NS_LEN: usize = 4096;
const DISCOVERY_HEADER_LEN: usize = 1024;
const DISCOVERY_ENTRY_LEN: usize = 1024;

/// Discovery entry SUBTYPE: an NVM subsystem.
const SUBTYPE_NVM: u8 = 2;
/// TREQ: secure channel not required.
const TREQ_SECURE_CHANNEL_NOT_REQUIRED: u8 = 2;

/// Error Information (01h): the newest errors first, ELPE + 1 entries.
pub(crate) fn error_log(ctrl: &Controller) -> Vec<u8> {
    let mut b = vec![0u8; ERROR_LOG_ENTRIES * ERROR_ENTRY_LEN];
    for (i, e) in ctrl.errors.iter().enumerate() {
        let at = i * ERROR_ENTRY_LEN;
        put_u64(&mut b, at, e.count);
        put_u16(&mut b, at + 8, e.sqid);
        put_u16(&mut b, at + 10, e.cid);
        put_u16(&mut b, at + 12, e.status.to_field());
        put_u16(&mut b, at + 14, 0xffff); // parameter error location: n/a
        put_u64(&mut b, at + 16, e.lba);
        put_u32(&mut b, at + 24, e.nsid);
    }
    b
}

/// SMART / Health Information (02h): healthy, room temperature, and the
/// subsystem's read/write counters.
pub(crate) fn smart(sub: &Subsystem) -> Vec<u8> {
    let mut b = vec![0u8; SMART_LEN];
    put_u16(&mut b, 1, 293); // composite temperature, kelvin
    b[3] = 100; // available spare, %
    b[4] = 10; // available spare threshold, %
    let s = &sub.stats;
    // Data units are thousands of 512-byte units, rounded up.
    put_u64(&mut b, 32, s.blocks_read.div_ceil(1000));
    put_u64(&mut b, 48, s.blocks_written.div_ceil(1000));
    put_u64(&mut b, 64, s.read_commands);
    put_u64(&mut b, 80, s.write_commands);
    b
}

/// Changed Namespace List (04h): up to 1024 NSIDs, or FFFFFFFFh first if
/// more changed.
pub(crate) fn changed_namespaces(ctrl: &Controller) -> Vec<u8> {
    let mut b = vec![0u8; CHANGED_NS_LEN];
    if ctrl.changed_ns.len() > CHANGED_NS_LEN / 4 {
        put_u32(&mut b, 0, 0xffff_ffff);
    } else {
        for (i, &nsid) in ctrl.changed_ns.iter().enumerate() {
            put_u32(&mut b, i * 4, nsid);
        }
    }
    b
}

/// Discovery log (70h): one entry per listener of the NVM subsystem.
pub(crate) fn discovery(sub: &Subsystem) -> Vec<u8> {
    let listeners = sub.listeners();
    let mut b = vec![0u8; DISCOVERY_HEADER_LEN + listeners.len() * DISCOVERY_ENTRY_LEN];
    put_u64(&mut b, 0, sub.discovery_genctr);
    put_u64(&mut b, 8, listeners.len() as u64); // NUMREC
    put_u16(&mut b, 16, 0); // RECFMT
    for (i, l) in listeners.iter().enumerate() {
        let at = DISCOVERY_HEADER_LEN + i * DISCOVERY_ENTRY_LEN;
        b[at] = l.trtype;
        b[at + 1] = l.adrfam.code();
        b[at + 2] = SUBTYPE_NVM;
        b[at + 3] = TREQ_SECURE_CHANNEL_NOT_REQUIRED;
        put_u16(&mut b, at + 4, i as u16); // PORTID
        put_u16(&mut b, at + 6, CNTLID_DYNAMIC);
        put_u16(&mut b, at + 8, sub.config.transport.max_aq_depth); // ASQSZ
        put_str(&mut b, at + 32, 32, &l.trsvcid, b' ');
        put_str(&mut b, at + 256, 256, &sub.config.subnqn, 0);
        put_str(&mut b, at + 512, 256, &l.traddr, b' ');
        if l.trtype == TRTYPE_RDMA {
            b[at + 768] = 1; // RDMA_QPTYPE: reliable connected
            b[at + 769] = 1; // RDMA_PRTYPE: no provider specified
            b[at + 770] = 1; // RDMA_CMS: RDMA_IP_CM
        }
    }
    b
}
