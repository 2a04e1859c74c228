//! NVMe-oF RDMA transport binding: RDMA CM private data of the connect
//! request, accept and reject, and upstream's queue-depth negotiation
//! (`nvmf_rdma_connect`, upstream doc §5.4-5.6).
//!
//! All fields are little-endian u16. Request and accept are 32 bytes, reject
//! is 4 bytes; longer buffers are accepted (InfiniBand CM pads private data),
//! shorter ones are refused.

/// Size of the connect request private data.
pub const CM_REQUEST_SIZE: usize = 32;
/// Size of the accept private data.
pub const CM_ACCEPT_SIZE: usize = 32;
/// Size of the reject private data.
pub const CM_REJECT_SIZE: usize = 4;
/// The only record format defined (NVMe-oF RDMA binding 1.0).
pub const RECFMT_V0: u16 = 0;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// NVMe-oF RDMA connect-reject status (`STS`, `enum
/// spdk_nvmf_rdma_transport_error` / the binding's RDMA_CM_REJECT table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum RejectStatus {
    /// 1: private data missing or shorter than 32 bytes.
    #[error("invalid private data length")]
    InvalidPrivateDataLength,
    /// 2: record format not supported.
    #[error("invalid record format")]
    InvalidRecfmt,
    /// 3: invalid queue ID.
    #[error("invalid queue id")]
    InvalidQid,
    /// 4: invalid host send queue size.
    #[error("invalid host send queue size")]
    InvalidHsqsize,
    /// 5: invalid host receive queue size.
    #[error("invalid host receive queue size")]
    InvalidHrqsize,
    /// 6: the target has no resources for the queue.
    #[error("no resources")]
    NoResources,
    /// 7: invalid inbound RDMA read depth (the host's initiator depth is 0).
    #[error("invalid IRD")]
    InvalidIrd,
    /// 8: invalid outbound RDMA read depth.
    #[error("invalid ORD")]
    InvalidOrd,
    /// 9: invalid controller ID. Not in SPDK's or Linux's status enum;
    /// recognised when parsing, never sent by this target.
    #[error("invalid controller id")]
    InvalidCntlid,
}

impl RejectStatus {
    /// The wire value of `STS`.
    pub const fn code(self) -> u16 {
        match self {
            RejectStatus::InvalidPrivateDataLength => 1,
            RejectStatus::InvalidRecfmt => 2,
            RejectStatus::InvalidQid => 3,
            RejectStatus::InvalidHsqsize => 4,
            RejectStatus::InvalidHrqsize => 5,
            RejectStatus::NoResources => 6,
            RejectStatus::InvalidIrd => 7,
            RejectStatus::InvalidOrd => 8,
            RejectStatus::InvalidCntlid => 9,
        }
    }

    /// Decodes a wire `STS` value; `None` for values the binding does not define.
    pub const fn from_code(code: u16) -> Option<RejectStatus> {
        Some(match code {
            1 => RejectStatus::InvalidPrivateDataLength,
            2 => RejectStatus::InvalidRecfmt,
            3 => RejectStatus::InvalidQid,
            4 => RejectStatus::InvalidHsqsize,
            5 => RejectStatus::InvalidHrqsize,
            6 => RejectStatus::NoResources,
            7 => RejectStatus::InvalidIrd,
            8 => RejectStatus::InvalidOrd,
            9 => RejectStatus::InvalidCntlid,
            _ => return None,
        })
    }

    /// The reject private data a target sends for this status.
    pub fn to_reject(self) -> CmReject {
        CmReject {
            recfmt: RECFMT_V0,
            status: self,
        }
    }
}

/// Why accept or reject private data (received by an initiator) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum PrivateDataError {
    /// Fewer bytes than the structure needs.
    #[error("private data of {len} bytes, need at least {needed}")]
    TooShort {
        /// Bytes received.
        len: usize,
        /// Bytes needed.
        needed: usize,
    },
    /// A record format other than 0.
    #[error("unsupported record format {0}")]
    UnsupportedRecfmt(u16),
    /// An accept announcing a controller receive queue size of 0.
    #[error("accept with crqsize 0")]
    ZeroCrqsize,
    /// A reject status the binding does not define.
    #[error("unknown reject status {0}")]
    UnknownRejectStatus(u16),
}

/// Connect request private data (host → target).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CmRequest {
    /// Record format (must be 0).
    pub recfmt: u16,
    /// Queue ID (0 = admin queue).
    pub qid: u16,
    /// Host receive queue size (entries).
    pub hrqsize: u16,
    /// Host send queue size, 0's based (equals the Connect command's SQSIZE).
    pub hsqsize: u16,
    /// Controller ID (for I/O queues; not used by the transport).
    pub cntlid: u16,
}

impl CmRequest {
    /// Parses connect request private data with upstream's checks, in
    /// upstream's order: shorter than 32 bytes → INVALID_PRIVATE_DATA_LENGTH,
    /// `recfmt != 0` → INVALID_RECFMT. Other fields are checked by
    /// [`negotiate`].
    pub fn parse(b: &[u8]) -> Result<CmRequest, RejectStatus> {
        if b.len() < CM_REQUEST_SIZE {
            return Err(RejectStatus::InvalidPrivateDataLength);
        }
        let req = CmRequest {
            recfmt: le16(b, 0),
            qid: le16(b, 2),
            hrqsize: le16(b, 4),
            hsqsize: le16(b, 6),
            cntlid: le16(b, 8),
        };
        if req.recfmt != RECFMT_V0 {
            return Err(RejectStatus::InvalidRecfmt);
        }
        Ok(req)
    }

    /// The 32 wire bytes (reserved bytes zero).
    pub fn to_bytes(&self) -> [u8; 32] {
        let mut b = [0u8; CM_REQUEST_SIZE];
        b[0..2].copy_from_slice(&self.recfmt.to_le_bytes());
        b[2..4].copy_from_slice(&self.qid.to_le_bytes());
        b[4..6].copy_from_slice(&self.hrqsize.to_le_bytes());
        b[6..8].copy_from_slice(&self.hsqsize.to_le_bytes());
        b[8..10].copy_from_slice(&self.cntlid.to_le_bytes());
        b
    }
}

/// Accept private data (target → host).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CmAccept {
    /// Record format (0).
    pub recfmt: u16,
    /// Controller receive queue size: the negotiated queue depth.
    pub crqsize: u16,
}

impl CmAccept {
    /// The accept a target sends for a negotiated connection.
    pub fn for_negotiated(n: &Negotiated) -> CmAccept {
        CmAccept {
            recfmt: RECFMT_V0,
            crqsize: n.max_queue_depth,
        }
    }

    /// Parses accept private data (initiator side). At least `recfmt` and
    /// `crqsize` (4 bytes) must be present, like hosts require; `recfmt`
    /// must be 0 and `crqsize` non-zero.
    pub fn parse(b: &[u8]) -> Result<CmAccept, PrivateDataError> {
        if b.len() < 4 {
            return Err(PrivateDataError::TooShort {
                len: b.len(),
                needed: 4,
            });
        }
        let a = CmAccept {
            recfmt: le16(b, 0),
            crqsize: le16(b, 2),
        };
        if a.recfmt != RECFMT_V0 {
            return Err(PrivateDataError::UnsupportedRecfmt(a.recfmt));
        }
        if a.crqsize == 0 {
            return Err(PrivateDataError::ZeroCrqsize);
        }
        Ok(a)
    }

    /// The 32 wire bytes (reserved bytes zero).
    pub fn to_bytes(&self) -> [u8; 32] {
        let mut b = [0u8; CM_ACCEPT_SIZE];
        b[0..2].copy_from_slice(&self.recfmt.to_le_bytes());
        b[2..4].copy_from_slice(&self.crqsize.to_le_bytes());
        b
    }
}

/// Reject private data (target → host).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CmReject {
    /// Record format (0).
    pub recfmt: u16,
    /// Why the connection was rejected.
    pub status: RejectStatus,
}

impl CmReject {
    /// Parses reject private data (initiator side): 4 bytes, `recfmt` 0 and
    /// a defined status.
    pub fn parse(b: &[u8]) -> Result<CmReject, PrivateDataError> {
        if b.len() < CM_REJECT_SIZE {
            return Err(PrivateDataError::TooShort {
                len: b.len(),
                needed: CM_REJECT_SIZE,
            });
        }
        let recfmt = le16(b, 0);
        if recfmt != RECFMT_V0 {
            return Err(PrivateDataError::UnsupportedRecfmt(recfmt));
        }
        let sts = le16(b, 2);
        let status =
            RejectStatus::from_code(sts).ok_or(PrivateDataError::UnknownRejectStatus(sts))?;
        Ok(CmReject { recfmt, status })
    }

    /// The 4 wire bytes.
    pub fn to_bytes(&self) -> [u8; 4] {
        let mut b = [0u8; CM_REJECT_SIZE];
        b[0..2].copy_from_slice(&self.recfmt.to_le_bytes());
        b[2..4].copy_from_slice(&self.status.code().to_le_bytes());
        b
    }
}

/// The limits a connect request is negotiated against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectLimits {
    /// Transport option `max_queue_depth` (I/O queues; default 128).
    pub max_queue_depth: u16,
    /// Transport option `max_aq_depth` (admin queue; default 128).
    pub max_admin_queue_depth: u16,
    /// Device attribute `max_qp_wr`.
    pub device_max_qp_wr: u32,
    /// Device attribute `max_qp_init_rd_atom` (RDMA READs the target may
    /// have outstanding as initiator of the READs).
    pub device_max_qp_rd_atom: u32,
    /// From the CM event: the host's `initiator_depth` (how many RDMA READs
    /// the host lets the target issue).
    pub initiator_depth: u8,
    /// From the CM event: the host's `responder_resources` (only logged:
    /// the target serves no READs from the host).
    pub responder_resources: u8,
    /// Whether the qpair will use a shared receive queue (does not change
    /// the negotiation; kept for logging and for the caller's sizing).
    pub srq: bool,
}

/// Outcome of a successful negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Negotiated {
    /// Queue depth of the new qpair (also the accept's `crqsize`).
    pub max_queue_depth: u16,
    /// RDMA READs the target may have outstanding on the qpair (also the
    /// accept's `initiator_depth`).
    pub max_read_depth: u16,
    /// Queue ID from the request.
    pub qid: u16,
}

/// Upstream `nvmf_rdma_connect` negotiation (doc §5.4), after
/// [`CmRequest::parse`]:
/// - depth limit = `max_queue_depth` (`max_admin_queue_depth` for qid 0),
///   then `min` with `device_max_qp_wr`;
/// - read depth = the same option, `min` with `device_max_qp_rd_atom`;
/// - `initiator_depth == 0` → INVALID_IRD, else read depth `min`= it;
/// - `hrqsize == 0` → INVALID_HRQSIZE (upstream would create a qpair of
///   depth 0; we refuse it with the binding's status for it);
/// - depth = `min(depth, hrqsize, hsqsize + 1)`;
/// - a depth or read depth of 0 left after device limits → NO_RESOURCES.
///
/// `recfmt` is re-checked (INVALID_RECFMT) so a hand-built request cannot
/// bypass it. `qid` and `cntlid` are not checked here (the Connect command
/// handler checks them, as upstream).
pub fn negotiate(req: &CmRequest, limits: &ConnectLimits) -> Result<Negotiated, RejectStatus> {
    if req.recfmt != RECFMT_V0 {
        return Err(RejectStatus::InvalidRecfmt);
    }
    let option = if req.qid == 0 {
        limits.max_admin_queue_depth
    } else {
        limits.max_queue_depth
    };
    let mut depth = u32::from(option).min(limits.device_max_qp_wr);
    let mut read_depth = u32::from(option).min(limits.device_max_qp_rd_atom);
    if limits.responder_resources != 0 {
        tracing::debug!(
            qid = req.qid,
            responder_resources = limits.responder_resources,
            "connect request asks for responder resources; the target issues no RDMA READ responses"
        );
    }
    if limits.initiator_depth == 0 {
        return Err(RejectStatus::InvalidIrd);
    }
    read_depth = read_depth.min(u32::from(limits.initiator_depth));
    if req.hrqsize == 0 {
        return Err(RejectStatus::InvalidHrqsize);
    }
    depth = depth
        .min(u32::from(req.hrqsize))
        .min(u32::from(req.hsqsize) + 1);
    if depth == 0 || read_depth == 0 {
        return Err(RejectStatus::NoResources);
    }
    // Both are <= a u16 option value.
    Ok(Negotiated {
        max_queue_depth: depth as u16,
        max_read_depth: read_depth as u16,
        qid: req.qid,
    })
}
