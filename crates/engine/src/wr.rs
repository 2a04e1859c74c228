//! Work-request identities and completion statuses.
//!
//! Every WR the engine hands to the NIC carries a [`WrId`] as its 64-bit
//! `wr_id`. Completions are dispatched by decoding that id, never by the
//! opcode of the completion (which is undefined for error completions).

use std::fmt;

use super::ids::{RecvId, ReqId};

/// Maximum number of RDMA data WRs one request can need (one per keyed SGL
/// descriptor; NVMF_DEFAULT_MSDBD = 16).
pub const MAX_DATA_WRS: usize = 16;

/// What a WR is, as encoded in its [`WrId`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WrKind {
    /// A RECV for one command capsule (`recv` names the receive slot).
    Recv {
        /// The receive slot.
        recv: RecvId,
    },
    /// One RDMA READ or WRITE of a request's data.
    Data {
        /// The request.
        req: ReqId,
        /// Index of the data WR within the request (`0..MAX_DATA_WRS`).
        index: u8,
        /// Generation of the request slot when the WR was posted.
        generation: u32,
    },
    /// The response SEND of a request.
    Send {
        /// The request.
        req: ReqId,
        /// Generation of the request slot when the WR was posted.
        generation: u32,
    },
}

/// A typed work-request id; [`WrId::to_raw`] gives the `wr_id` to post.
///
/// Layout of the raw value: bits 62..63 kind (1 recv, 2 data, 3 send);
/// recv: bits 0..31 the receive slot; data/send: bits 0..15 the request
/// slot, bits 16..19 the data WR index, bits 24..55 the slot generation.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct WrId(u64);

const KIND_SHIFT: u32 = 62;
const KIND_RECV: u64 = 1;
const KIND_DATA: u64 = 2;
const KIND_SEND: u64 = 3;

/// A raw `wr_id` that does not decode to a [`WrKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("wr_id {0:#018x} is not one the engine issued")]
pub struct BadWrId(pub u64);

impl WrId {
    /// Encodes a kind.
    pub fn new(kind: WrKind) -> WrId {
        match kind {
            WrKind::Recv { recv } => WrId((KIND_RECV << KIND_SHIFT) | u64::from(recv.0)),
            WrKind::Data {
                req,
                index,
                generation,
            } => WrId(
                (KIND_DATA << KIND_SHIFT)
                    | (u64::from(generation) << 24)
                    | (u64::from(index & 0xf) << 16)
                    | u64::from(req.0),
            ),
            WrKind::Send { req, generation } => {
                WrId((KIND_SEND << KIND_SHIFT) | (u64::from(generation) << 24) | u64::from(req.0))
            }
        }
    }

    /// The id of the RECV posted for receive slot `recv`.
    pub fn recv(recv: RecvId) -> WrId {
        WrId::new(WrKind::Recv { recv })
    }

    /// The raw 64-bit value to put into `ibv_send_wr.wr_id` / `ibv_recv_wr.wr_id`.
    pub fn to_raw(self) -> u64 {
        self.0
    }

    /// Decodes a raw value taken from a completion.
    pub fn from_raw(raw: u64) -> Result<WrId, BadWrId> {
        let id = WrId(raw);
        id.kind().map(|_| id)
    }

    /// Decodes a raw value once: the id and its kind.
    pub(crate) fn decode(raw: u64) -> Result<(WrId, WrKind), BadWrId> {
        let id = WrId(raw);
        id.kind().map(|kind| (id, kind))
    }

    /// The decoded kind.
    pub fn kind(self) -> Result<WrKind, BadWrId> {
        let raw = self.0;
        let req = ReqId((raw & 0xffff) as u16);
        let generation = ((raw >> 24) & 0xffff_ffff) as u32;
        match raw >> KIND_SHIFT {
            KIND_RECV if raw & 0x3fff_ffff_0000_0000 == 0 => Ok(WrKind::Recv {
                recv: RecvId(raw as u32),
            }),
            KIND_DATA if raw & 0x3f00_0000_00f0_0000 == 0 => Ok(WrKind::Data {
                req,
                index: ((raw >> 16) & 0xf) as u8,
                generation,
            }),
            KIND_SEND if raw & 0x3f00_0000_00ff_0000 == 0 => Ok(WrKind::Send { req, generation }),
            _ => Err(BadWrId(raw)),
        }
    }
}

impl fmt::Debug for WrId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind() {
            Ok(k) => write!(f, "WrId({k:?})"),
            Err(_) => write!(f, "WrId(invalid {:#x})", self.0),
        }
    }
}

/// Completion status of a work request (`enum ibv_wc_status`, verbs.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WcStatus {
    /// IBV_WC_SUCCESS (0).
    Success,
    /// IBV_WC_LOC_LEN_ERR (1).
    LocalLength,
    /// IBV_WC_LOC_QP_OP_ERR (2).
    LocalQpOperation,
    /// IBV_WC_LOC_EEC_OP_ERR (3).
    LocalEecOperation,
    /// IBV_WC_LOC_PROT_ERR (4).
    LocalProtection,
    /// IBV_WC_WR_FLUSH_ERR (5): the QP is in error and the WR was flushed.
    Flushed,
    /// IBV_WC_MW_BIND_ERR (6).
    MemoryWindowBind,
    /// IBV_WC_BAD_RESP_ERR (7).
    BadResponse,
    /// IBV_WC_LOC_ACCESS_ERR (8).
    LocalAccess,
    /// IBV_WC_REM_INV_REQ_ERR (9).
    RemoteInvalidRequest,
    /// IBV_WC_REM_ACCESS_ERR (10).
    RemoteAccess,
    /// IBV_WC_REM_OP_ERR (11).
    RemoteOperation,
    /// IBV_WC_RETRY_EXC_ERR (12): transport retry counter exceeded.
    RetryExceeded,
    /// IBV_WC_RNR_RETRY_EXC_ERR (13).
    RnrRetryExceeded,
    /// IBV_WC_LOC_RDD_VIOL_ERR (14).
    LocalRddViolation,
    /// IBV_WC_REM_INV_RD_REQ_ERR (15).
    RemoteInvalidRdRequest,
    /// IBV_WC_REM_ABORT_ERR (16).
    RemoteAborted,
    /// IBV_WC_INV_EECN_ERR (17).
    InvalidEecn,
    /// IBV_WC_INV_EEC_STATE_ERR (18).
    InvalidEecState,
    /// IBV_WC_FATAL_ERR (19).
    Fatal,
    /// IBV_WC_RESP_TIMEOUT_ERR (20).
    ResponseTimeout,
    /// IBV_WC_GENERAL_ERR (21).
    General,
    /// IBV_WC_TM_ERR (22).
    TagMatching,
    /// IBV_WC_TM_RNDV_INCOMPLETE (23).
    TagMatchingRendezvousIncomplete,
    /// A value this crate does not know.
    Other(u32),
}

impl WcStatus {
    /// Every error status a real NIC reports (for fault injection).
    pub const ERRORS: [WcStatus; 23] = [
        WcStatus::LocalLength,
        WcStatus::LocalQpOperation,
        WcStatus::LocalEecOperation,
        WcStatus::LocalProtection,
        WcStatus::Flushed,
        WcStatus::MemoryWindowBind,
        WcStatus::BadResponse,
        WcStatus::LocalAccess,
        WcStatus::RemoteInvalidRequest,
        WcStatus::RemoteAccess,
        WcStatus::RemoteOperation,
        WcStatus::RetryExceeded,
        WcStatus::RnrRetryExceeded,
        WcStatus::LocalRddViolation,
        WcStatus::RemoteInvalidRdRequest,
        WcStatus::RemoteAborted,
        WcStatus::InvalidEecn,
        WcStatus::InvalidEecState,
        WcStatus::Fatal,
        WcStatus::ResponseTimeout,
        WcStatus::General,
        WcStatus::TagMatching,
        WcStatus::TagMatchingRendezvousIncomplete,
    ];

    /// Converts the raw `ibv_wc.status`.
    pub fn from_raw(raw: u32) -> WcStatus {
        match raw {
            0 => WcStatus::Success,
            1..=23 => WcStatus::ERRORS[(raw - 1) as usize],
            other => WcStatus::Other(other),
        }
    }

    /// The raw `ibv_wc_status` value.
    pub fn to_raw(self) -> u32 {
        match self {
            WcStatus::Success => 0,
            WcStatus::Other(v) => v,
            s => {
                let pos = WcStatus::ERRORS.iter().position(|e| *e == s).unwrap_or(20);
                pos as u32 + 1
            }
        }
    }

    /// True for IBV_WC_SUCCESS.
    pub fn is_success(self) -> bool {
        self == WcStatus::Success
    }
}

impl fmt::Display for WcStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} ({})", self, self.to_raw())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wr_id_round_trips() {
        let kinds = [
            WrKind::Recv {
                recv: RecvId(0xdead_beef),
            },
            WrKind::Data {
                req: ReqId(65000),
                index: 15,
                generation: u32::MAX,
            },
            WrKind::Send {
                req: ReqId(3),
                generation: 7,
            },
        ];
        for k in kinds {
            let raw = WrId::new(k).to_raw();
            assert_eq!(WrId::from_raw(raw).unwrap().kind().unwrap(), k);
        }
        assert!(WrId::from_raw(0).is_err());
        assert!(WrId::from_raw(u64::MAX).is_err());
    }

    #[test]
    fn wc_status_round_trips() {
        for raw in 0..30 {
            assert_eq!(WcStatus::from_raw(raw).to_raw(), raw);
        }
    }
}
