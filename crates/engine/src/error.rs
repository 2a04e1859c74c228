//! Errors the engine returns for input it cannot accept.
//!
//! An error never changes engine state: the event is refused and the caller
//! keeps whatever it offered (e.g. granted buffers stay the host's).

use super::ids::{RecvId, ReqId};
use super::queues::QueueError;
use super::state::ReqState;
use super::wr::{BadWrId, WrId};

/// An event the engine refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// A completion whose `wr_id` the engine never issued.
    #[error(transparent)]
    BadWrId(#[from] BadWrId),
    /// A completion for a WR the NIC does not own (already completed, or from
    /// an earlier use of the request slot).
    #[error("qpair {qpair}: completion for {wr:?}, which is not in flight")]
    StaleWr {
        /// Qpair label.
        qpair: u32,
        /// The WR.
        wr: WrId,
    },
    /// A RECV completion for a slot that is not posted.
    #[error("qpair {qpair}: completion for receive {recv:?}, which is not posted")]
    UnknownRecv {
        /// Qpair label.
        qpair: u32,
        /// The slot.
        recv: RecvId,
    },
    /// A request index outside the slab.
    #[error("qpair {qpair}: no request {req:?}")]
    UnknownRequest {
        /// Qpair label.
        qpair: u32,
        /// The index.
        req: ReqId,
    },
    /// An answer that does not fit the request's state.
    #[error("qpair {qpair}: request {req:?} in state {state:?} cannot take '{event}'")]
    WrongState {
        /// Qpair label.
        qpair: u32,
        /// The request.
        req: ReqId,
        /// Its state.
        state: ReqState,
        /// The event.
        event: &'static str,
    },
    /// The qpair already finished.
    #[error("qpair {qpair}: already finished")]
    Finished {
        /// Qpair label.
        qpair: u32,
    },
    /// Internal: an attempt to finish a request the NIC or host still owns.
    #[error(
        "qpair {qpair}: request {req:?} in state {state:?} still has WRs in flight or is executing"
    )]
    InFlight {
        /// Qpair label.
        qpair: u32,
        /// The request.
        req: ReqId,
        /// Its state.
        state: ReqState,
    },
    /// Internal: a queue-membership violation.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// An internal step the engine refused: only an engine bug gets here. Kept
/// to a few bytes (no qpair label, added by [`Bug::with_qpair`] where it
/// leaves the engine) so that the state machine's `Result`s are returned in
/// a register and each `?` is one test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bug {
    /// An attempt to finish a request the NIC or host still owns.
    InFlight {
        /// The request.
        req: ReqId,
        /// Its state.
        state: ReqState,
    },
    /// A queue-membership violation.
    Queue(QueueError),
}

impl From<QueueError> for Bug {
    fn from(e: QueueError) -> Bug {
        Bug::Queue(e)
    }
}

impl Bug {
    /// The public error, naming qpair `qpair`.
    pub(crate) fn with_qpair(self, qpair: u32) -> EngineError {
        match self {
            Bug::InFlight { req, state } => EngineError::InFlight { qpair, req, state },
            Bug::Queue(e) => EngineError::Queue(e),
        }
    }
}
