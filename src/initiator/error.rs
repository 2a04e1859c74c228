//! Initiator errors.

use crate::engine::codec::{RejectStatus, Status};
use crate::verbs::{VerbsError, WcStatus};

/// Everything that can go wrong talking to a target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InitiatorError {
    /// A verbs / rdma_cm call failed.
    #[error("queue {qid}: {source}")]
    Verbs {
        /// Queue id (0 = admin).
        qid: u16,
        /// The underlying error.
        #[source]
        source: VerbsError,
    },
    /// A wait ran out of time.
    #[error("queue {qid}: timed out after {ms} ms waiting for {what}")]
    Timeout {
        /// Queue id.
        qid: u16,
        /// What was awaited.
        what: &'static str,
        /// How long.
        ms: u64,
    },
    /// Address or route resolution failed.
    #[error("queue {qid}: {event} while connecting (status {status})")]
    Resolve {
        /// Queue id.
        qid: u16,
        /// The CM event received instead of success.
        event: &'static str,
        /// Its status.
        status: i32,
    },
    /// The target rejected the RDMA connection.
    #[error(
        "queue {qid}: connection rejected: {} (cm status {cm_status})",
        reject_reason(reason)
    )]
    Rejected {
        /// Queue id.
        qid: u16,
        /// The NVMe-oF reject reason from the private data, if parseable.
        reason: Option<RejectStatus>,
        /// `event->status`.
        cm_status: i32,
    },
    /// The target's accept private data was malformed.
    #[error("queue {qid}: bad accept private data ({len} bytes)")]
    BadAccept {
        /// Queue id.
        qid: u16,
        /// Private data length.
        len: usize,
    },
    /// The connection went away (DISCONNECTED / DEVICE_REMOVAL / error).
    #[error("queue {qid}: disconnected ({why})")]
    Disconnected {
        /// Queue id.
        qid: u16,
        /// Which event or condition.
        why: &'static str,
    },
    /// A work request completed with an error.
    #[error("queue {qid}: {kind} WR for cid {cid} completed with {status}")]
    WorkCompletion {
        /// Queue id.
        qid: u16,
        /// `send` or `recv`.
        kind: &'static str,
        /// Command id (or recv slot).
        cid: u32,
        /// The completion status.
        status: WcStatus,
    },
    /// An NVMe command completed with a non-success status.
    #[error("queue {qid}: command opcode {opcode:#04x} cid {cid} failed: sct {sct:#x} sc {sc:#04x}", sct = status.sct, sc = status.sc)]
    Nvme {
        /// Queue id.
        qid: u16,
        /// Command opcode (0x7f = fabrics).
        opcode: u8,
        /// Command id.
        cid: u16,
        /// The status.
        status: Status,
    },
    /// A response named a command id that is not outstanding.
    #[error("queue {qid}: response for unknown cid {cid}")]
    UnknownCid {
        /// Queue id.
        qid: u16,
        /// The cid.
        cid: u16,
    },
    /// No free command slot.
    #[error("queue {qid}: queue full ({depth} commands outstanding)")]
    QueueFull {
        /// Queue id.
        qid: u16,
        /// Depth.
        depth: u16,
    },
    /// A request does not fit the queue's limits.
    #[error("queue {qid}: {what} {value} exceeds limit {limit}")]
    TooLarge {
        /// Queue id.
        qid: u16,
        /// Which quantity.
        what: &'static str,
        /// Requested value.
        value: u64,
        /// Limit.
        limit: u64,
    },
    /// The controller did not become ready / reported a fatal status.
    #[error("controller not ready: CSTS {csts:#x}")]
    NotReady {
        /// Last CSTS value.
        csts: u32,
    },
    /// Identify data or other target data was unusable.
    #[error("bad target data: {0}")]
    BadTargetData(&'static str),
    /// Data read back did not match what was written.
    #[error("data mismatch at lba {lba} (byte {offset}): expected {expected:#04x} got {got:#04x}")]
    Verify {
        /// First LBA of the I/O.
        lba: u64,
        /// Byte offset in the I/O.
        offset: usize,
        /// Expected byte.
        expected: u8,
        /// Byte read.
        got: u8,
    },
    /// A configuration value is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
}

fn reject_reason(r: &Option<RejectStatus>) -> String {
    match r {
        Some(s) => format!("NVMe-oF status {s:?}"),
        None => "no NVMe-oF reject data (no listener at that address?)".to_string(),
    }
}

impl InitiatorError {
    /// True if the queue can no longer be used (reconnect needed).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            InitiatorError::Verbs { .. }
                | InitiatorError::Disconnected { .. }
                | InitiatorError::WorkCompletion { .. }
                | InitiatorError::Timeout { .. }
                | InitiatorError::UnknownCid { .. }
        )
    }
}

/// Result alias.
pub type Result<T> = std::result::Result<T, InitiatorError>;
