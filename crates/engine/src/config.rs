//! Per-qpair configuration, fixed when the qpair is created.

use super::codec::sgl::{SglLimits, MAX_SGL_DESCRIPTORS};

/// What the engine needs to know about one qpair. The transport fills it from
/// the negotiated CM parameters (`codec::private_data::negotiate`), the QP
/// capabilities and the transport options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpairConfig {
    /// A label for logs and notices (the transport's qpair number, e.g. qp_num).
    pub label: u32,
    /// Negotiated queue depth: request objects, and (without SRQ) receive slots.
    pub max_queue_depth: u16,
    /// Negotiated RDMA READ depth (initiator depth of the QP).
    pub max_read_depth: u16,
    /// Send-queue depth: data WRs + response SENDs in flight
    /// (upstream: `min(2 * max_queue_depth, cap.max_send_wr)`).
    pub max_send_depth: u32,
    /// `sqhd` in responses counts up and wraps to 0 when it reaches this
    /// value (upstream's `sq_head_max`, set from the CONNECT command's SQSIZE).
    pub sq_size: u16,
    /// Receives come from a shared receive queue owned by the transport.
    pub srq: bool,
    /// With SRQ: the device raises IBV_EVENT_QP_LAST_WQE_REACHED (false for
    /// SoftRoCE and iWARP, upstream §3.6); teardown then does not wait for it.
    pub last_wqe_reached_supported: bool,
    /// Answer with SEND_WITH_INV when the host asked to invalidate its key.
    pub send_with_invalidate: bool,
    /// SGL validation limits (in-capsule data size, max I/O size, MSDBD).
    pub sgl: SglLimits,
}

/// A configuration the engine refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The queue depth must be at least 1 and below 65535.
    #[error("qpair {label}: max_queue_depth {value} is out of range 1..=65534")]
    QueueDepth {
        /// Qpair label.
        label: u32,
        /// The value.
        value: u16,
    },
    /// The READ depth must be at least 1.
    #[error("qpair {label}: max_read_depth is 0")]
    ReadDepth {
        /// Qpair label.
        label: u32,
    },
    /// The send depth must fit the longest WRITE chain plus its SEND.
    #[error(
        "qpair {label}: max_send_depth {value} cannot hold {needed} WRs (16 RDMA WRITEs + SEND)"
    )]
    SendDepth {
        /// Qpair label.
        label: u32,
        /// The value.
        value: u32,
        /// The minimum.
        needed: u32,
    },
    /// The SQ size must be at least 1.
    #[error("qpair {label}: sq_size is 0")]
    SqSize {
        /// Qpair label.
        label: u32,
    },
}

impl QpairConfig {
    /// A configuration with upstream's defaults for the given depths
    /// (in-capsule data 4096, max I/O 131072, MSDBD 16, no SRQ).
    pub fn new(label: u32, max_queue_depth: u16, max_read_depth: u16) -> QpairConfig {
        QpairConfig {
            label,
            max_queue_depth,
            max_read_depth,
            max_send_depth: (2 * u32::from(max_queue_depth)).max(MIN_SEND_DEPTH),
            sq_size: max_queue_depth,
            srq: false,
            last_wqe_reached_supported: true,
            send_with_invalidate: false,
            sgl: SglLimits {
                in_capsule_data_size: 4096,
                max_io_size: 131072,
                max_descriptors: MAX_SGL_DESCRIPTORS,
            },
        }
    }

    /// Checks the limits the engine relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let label = self.label;
        if self.max_queue_depth == 0 || self.max_queue_depth == u16::MAX {
            return Err(ConfigError::QueueDepth {
                label,
                value: self.max_queue_depth,
            });
        }
        if self.max_read_depth == 0 {
            return Err(ConfigError::ReadDepth { label });
        }
        if self.max_send_depth < MIN_SEND_DEPTH {
            return Err(ConfigError::SendDepth {
                label,
                value: self.max_send_depth,
                needed: MIN_SEND_DEPTH,
            });
        }
        if self.sq_size == 0 {
            return Err(ConfigError::SqSize { label });
        }
        Ok(())
    }
}

/// The smallest send depth the engine accepts: the longest WRITE chain
/// (16 WRs, one per descriptor) plus the response SEND. Upstream accepts less
/// and then waits forever on such a chain (upstream doc §6.5).
pub const MIN_SEND_DEPTH: u32 = MAX_SGL_DESCRIPTORS as u32 + 1;
