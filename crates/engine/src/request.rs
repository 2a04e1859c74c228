//! One request object and the data-WR plan built from its SGL and buffers.

use super::codec::nvme::{Command, Completion, DataTransfer, Status};
use super::codec::sgl::{DataShape, KeyedSegment, MAX_SGL_DESCRIPTORS};
use super::ids::{RecvId, ReqId};
use super::state::ReqState;
use super::wr::MAX_DATA_WRS;

/// One local memory segment (an `ibv_sge`): a data buffer the host granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LocalSge {
    /// Virtual address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Local key of the memory region covering it.
    pub lkey: u32,
}

/// Most buffers one request may be granted (`NVMF_REQ_MAX_BUFFERS` = 16*2+1).
pub const MAX_BUFFERS: usize = 33;
/// Most SGEs in one data WR (`NVMF_DEFAULT_TX_SGE`).
pub const MAX_SGES_PER_WR: usize = 16;
/// Most SGEs of one request over all its data WRs: each granted buffer can be
/// cut once at each WR boundary.
pub const MAX_SGES_PER_REQUEST: usize = MAX_BUFFERS + MAX_DATA_WRS;

/// Why granted buffers could not be mapped onto the request's data WRs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// More buffers than [`MAX_BUFFERS`].
    #[error("{got} buffers granted, at most {MAX_BUFFERS} are accepted")]
    TooManyBuffers {
        /// Buffers granted.
        got: usize,
    },
    /// The buffers hold fewer bytes than the command moves.
    #[error("buffers hold {got} bytes, the command moves {need}")]
    TooShort {
        /// Bytes granted.
        got: u64,
        /// Bytes needed.
        need: u64,
    },
    /// A WR would need more than [`MAX_SGES_PER_WR`] SGEs.
    #[error("data WR {wr} needs more than {MAX_SGES_PER_WR} SGEs")]
    TooManySges {
        /// The WR index.
        wr: usize,
    },
}

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct WrPlan {
    pub remote_addr: u64,
    pub rkey: u32,
    pub sge_start: u8,
    pub sge_count: u8,
}

/// The data WRs of a keyed transfer: one WR per remote segment, each with the
/// local SGEs that cover it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DataPlan {
    pub wrs: [WrPlan; MAX_DATA_WRS],
    pub nwrs: u8,
    pub sges: [LocalSge; MAX_SGES_PER_REQUEST],
    pub nsges: u8,
}

impl DataPlan {
    pub const EMPTY: DataPlan = DataPlan {
        wrs: [WrPlan {
            remote_addr: 0,
            rkey: 0,
            sge_start: 0,
            sge_count: 0,
        }; MAX_DATA_WRS],
        nwrs: 0,
        sges: [LocalSge {
            addr: 0,
            len: 0,
            lkey: 0,
        }; MAX_SGES_PER_REQUEST],
        nsges: 0,
    };

    /// Maps `bufs` (in order) onto `segments` (in order). Inlined: the
    /// common case is a few stores; the general walk is a call.
    #[inline]
    pub fn build(&mut self, segments: &[KeyedSegment], bufs: &[LocalSge]) -> Result<(), PlanError> {
        // The common case (one remote segment, one buffer that holds it): one
        // WR with one SGE, without the general walk.
        if let ([seg], [b]) = (segments, bufs) {
            if b.len >= seg.len {
                self.sges[0] = LocalSge {
                    addr: b.addr,
                    len: seg.len,
                    lkey: b.lkey,
                };
                self.wrs[0] = WrPlan {
                    remote_addr: seg.addr,
                    rkey: seg.rkey,
                    sge_start: 0,
                    sge_count: u8::from(seg.len > 0),
                };
                self.nsges = u8::from(seg.len > 0);
                self.nwrs = 1;
                return Ok(());
            }
        }
        self.build_general(segments, bufs)
    }

    #[inline(never)]
    fn build_general(
        &mut self,
        segments: &[KeyedSegment],
        bufs: &[LocalSge],
    ) -> Result<(), PlanError> {
        if bufs.len() > MAX_BUFFERS {
            return Err(PlanError::TooManyBuffers { got: bufs.len() });
        }
        let need: u64 = segments.iter().map(|s| u64::from(s.len)).sum();
        let got: u64 = bufs.iter().map(|b| u64::from(b.len)).sum();
        if got < need {
            return Err(PlanError::TooShort { got, need });
        }
        self.nwrs = 0;
        self.nsges = 0;
        let (mut bi, mut boff) = (0usize, 0u32);
        for (wi, seg) in segments.iter().take(MAX_DATA_WRS).enumerate() {
            let start = self.nsges;
            let mut left = seg.len;
            while left > 0 {
                // `got >= need` guarantees a buffer remains while bytes are left.
                let b = bufs[bi];
                let avail = b.len - boff;
                if avail == 0 {
                    bi += 1;
                    boff = 0;
                    continue;
                }
                if usize::from(self.nsges - start) == MAX_SGES_PER_WR
                    || usize::from(self.nsges) == MAX_SGES_PER_REQUEST
                {
                    return Err(PlanError::TooManySges { wr: wi });
                }
                let take = avail.min(left);
                self.sges[usize::from(self.nsges)] = LocalSge {
                    addr: b.addr.wrapping_add(u64::from(boff)),
                    len: take,
                    lkey: b.lkey,
                };
                self.nsges += 1;
                boff += take;
                left -= take;
            }
            self.wrs[wi] = WrPlan {
                remote_addr: seg.addr,
                rkey: seg.rkey,
                sge_start: start,
                sge_count: self.nsges - start,
            };
            self.nwrs += 1;
        }
        Ok(())
    }

    #[inline]
    pub fn sges_of(&self, wr: usize) -> &[LocalSge] {
        let p = &self.wrs[wr];
        &self.sges[usize::from(p.sge_start)..usize::from(p.sge_start) + usize::from(p.sge_count)]
    }

    #[inline]
    pub fn all_sges(&self) -> &[LocalSge] {
        &self.sges[..usize::from(self.nsges)]
    }
}

/// A parsed command waiting for a request object (only when none was free
/// on arrival; otherwise the capsule is parsed straight into its request).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Incoming {
    pub recv: RecvId,
    pub cmd: Command,
    pub parsed: Result<DataShape, Status>,
    /// The keyed segments of `parsed` (its first `count` entries).
    pub segments: [KeyedSegment; MAX_SGL_DESCRIPTORS],
}

impl Incoming {
    /// An unfilled slot, to be parsed into in place.
    pub const EMPTY: Incoming = Incoming {
        recv: RecvId(0),
        cmd: Command::ZERO,
        parsed: Ok(DataShape::None),
        segments: [KeyedSegment {
            addr: 0,
            len: 0,
            rkey: 0,
        }; MAX_SGL_DESCRIPTORS],
    };
}

/// Fused-command role and pairing state.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Fused {
    pub pair: Option<ReqId>,
    pub failed: bool,
}

/// One request object of a qpair's slab. The fields every event touches
/// come first (`repr(C)` keeps them together in the first cache lines); the
/// command, the keyed segments and the WR plan follow.
#[derive(Debug, Clone)]
#[repr(C)]
pub(crate) struct Request {
    pub state: ReqState,
    pub xfer: DataTransfer,
    pub fabrics: bool,
    pub has_buffers: bool,
    pub buffers_asked: bool,
    /// The response SEND is owned by the NIC.
    pub send_inflight: bool,
    /// READ WRs posted so far (H2C).
    pub posted: u8,
    /// Bit i set: data WR i is owned by the NIC.
    pub inflight: u16,
    /// Bits set in `inflight` (kept alongside: x86-64's baseline has no
    /// popcount instruction, and every SEND completion needs the number).
    pub ninflight: u8,
    /// Bumped on every reuse; part of every WR id, so a stale completion
    /// cannot be attributed to a later command.
    pub generation: u32,
    pub recv: Option<RecvId>,
    /// Where the data is; for `Keyed`, the first `count` of `segments`.
    pub shape: DataShape,
    pub fused: Fused,
    /// The response (valid from EXECUTED or from a transport-generated status).
    pub cpl: Completion,
    pub cmd: Command,
    pub segments: [KeyedSegment; MAX_SGL_DESCRIPTORS],
    pub plan: DataPlan,
}

impl Request {
    pub fn new() -> Request {
        Request {
            state: ReqState::Free,
            xfer: DataTransfer::None,
            fabrics: false,
            has_buffers: false,
            buffers_asked: false,
            send_inflight: false,
            posted: 0,
            inflight: 0,
            ninflight: 0,
            generation: 0,
            recv: None,
            shape: DataShape::None,
            fused: Fused::default(),
            cpl: Completion::new(0, Status::SUCCESS),
            cmd: Command::ZERO,
            segments: Incoming::EMPTY.segments,
            plan: DataPlan::EMPTY,
        }
    }

    /// Number of data WRs the transfer needs.
    pub fn nwrs(&self) -> u8 {
        match self.shape {
            DataShape::Keyed { count, .. } => count,
            _ => 0,
        }
    }

    /// Data WRs owned by the NIC.
    #[inline]
    pub fn outstanding(&self) -> u32 {
        u32::from(self.ninflight)
    }

    pub fn remaining(&self) -> u8 {
        self.nwrs().saturating_sub(self.posted)
    }

    pub fn wrs_in_flight(&self) -> bool {
        self.inflight != 0 || self.send_inflight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(len: u32) -> KeyedSegment {
        KeyedSegment {
            addr: 0x1000,
            len,
            rkey: 7,
        }
    }
    fn buf(addr: u64, len: u32) -> LocalSge {
        LocalSge { addr, len, lkey: 9 }
    }

    #[test]
    fn plan_splits_buffers_across_wrs() {
        let mut p = DataPlan::EMPTY;
        p.build(&[seg(3000), seg(3000)], &[buf(0, 4096), buf(8192, 4096)])
            .unwrap();
        assert_eq!(p.nwrs, 2);
        assert_eq!(p.sges_of(0), &[buf(0, 3000)]);
        assert_eq!(p.sges_of(1), &[buf(3000, 1096), buf(8192, 1904)]);
    }

    #[test]
    fn plan_fast_path_matches_general_walk() {
        for (seg_len, buf_len) in [(4096, 4096), (512, 4096), (0, 4096), (4096, 8192)] {
            let (mut fast, mut general) = (DataPlan::EMPTY, DataPlan::EMPTY);
            let (s, b) = ([seg(seg_len)], [buf(0x10_0000, buf_len)]);
            fast.build(&s, &b).unwrap();
            general.build_general(&s, &b).unwrap();
            assert_eq!((fast.nwrs, fast.nsges), (general.nwrs, general.nsges));
            assert_eq!(fast.sges_of(0), general.sges_of(0));
            assert_eq!(fast.all_sges(), general.all_sges());
            assert_eq!(fast.wrs[0].remote_addr, general.wrs[0].remote_addr);
            assert_eq!(fast.wrs[0].rkey, general.wrs[0].rkey);
        }
    }

    #[test]
    fn plan_refuses_short_and_fragmented() {
        let mut p = DataPlan::EMPTY;
        assert!(matches!(
            p.build(&[seg(5000)], &[buf(0, 4096)]),
            Err(PlanError::TooShort { .. })
        ));
        let bufs: Vec<_> = (0..17).map(|i| buf(i * 4096, 1)).collect();
        assert!(matches!(
            p.build(&[seg(17)], &bufs),
            Err(PlanError::TooManySges { wr: 0 })
        ));
    }
}
