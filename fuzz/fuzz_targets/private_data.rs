//! Fuzz target: RDMA CM private data (`engine::codec::private_data`) and the
//! connect negotiation.
//!
//! Input layout: 14 header bytes of connect limits (max_queue_depth u16,
//! max_admin_queue_depth u16, device_max_qp_wr u32, device_max_qp_rd_atom
//! u32 as a u16, initiator_depth, responder_resources; all LE), then the
//! private data.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nvmf_rdma_engine::codec::private_data::{
    negotiate, CmAccept, CmReject, CmRequest, ConnectLimits,
};

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 14 {
        return;
    }
    let (hdr, pd) = data.split_at(14);
    let limits = ConnectLimits {
        max_queue_depth: u16_at(hdr, 0),
        max_admin_queue_depth: u16_at(hdr, 2),
        device_max_qp_wr: u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]),
        device_max_qp_rd_atom: u32::from(u16_at(hdr, 8)),
        initiator_depth: hdr[10],
        responder_resources: hdr[11],
        srq: hdr[12] & 1 == 1,
    };
    match CmRequest::parse(pd) {
        Ok(req) => {
            assert_eq!(req.to_bytes()[..10], pd[..10]);
            if let Ok(n) = negotiate(&req, &limits) {
                let opt = if req.qid == 0 {
                    limits.max_admin_queue_depth
                } else {
                    limits.max_queue_depth
                };
                assert!(n.max_queue_depth >= 1 && n.max_queue_depth <= opt);
                assert!(n.max_queue_depth <= req.hrqsize);
                assert!(u32::from(n.max_queue_depth) <= u32::from(req.hsqsize) + 1);
                assert!(u32::from(n.max_queue_depth) <= limits.device_max_qp_wr);
                assert!(n.max_read_depth >= 1);
                assert!(n.max_read_depth <= u16::from(limits.initiator_depth));
                assert!(u32::from(n.max_read_depth) <= limits.device_max_qp_rd_atom);
                let acc = CmAccept::for_negotiated(&n);
                assert_eq!(CmAccept::parse(&acc.to_bytes()), Ok(acc));
            }
        }
        Err(sts) => {
            assert!(pd.len() < 32 || pd[..2] != [0, 0]);
            let rej = sts.to_reject();
            assert_eq!(CmReject::parse(&rej.to_bytes()), Ok(rej));
        }
    }
    if let Ok(a) = CmAccept::parse(pd) {
        assert_eq!(a.to_bytes()[..4], pd[..4]);
    }
    if let Ok(r) = CmReject::parse(pd) {
        assert_eq!(r.to_bytes()[..], pd[..4]);
    }
});
