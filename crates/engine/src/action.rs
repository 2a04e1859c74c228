//! What the engine asks its driver to do.

use super::codec::nvme::Status;
use super::ids::{RecvId, ReqId};
use super::state::ReqState;
use super::wr::{WcStatus, WrId};

/// One thing for the transport to do, in order. Actions are small `Copy`
/// values; details (SGEs, response bytes, command) are read from the
/// [`crate::Qpair`] accessors while handling the action, before the
/// next event is fed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Post the RECV for `recv` (`WrId::recv(recv)`): to the QP without SRQ,
    /// to the SRQ with SRQ (then it is no longer this qpair's).
    PostRecv {
        /// The receive slot.
        recv: RecvId,
    },
    /// Post `count` RDMA READs of `req`, data WRs `first..first + count`,
    /// all signaled, as one chain ([`crate::Qpair::data_wr`]).
    PostReads {
        /// The request.
        req: ReqId,
        /// First data WR index.
        first: u8,
        /// Number of WRs.
        count: u8,
    },
    /// Post `writes` RDMA WRITEs of `req` (data WRs `0..writes`, unsignaled)
    /// followed by its response SEND (signaled) as one chain
    /// ([`crate::Qpair::data_wr`], [`crate::Qpair::send_wr`]). First, when
    /// `recv` is set, post that RECV exactly as for an [`Action::PostRecv`]
    /// (the request's capsule is done with: one action instead of two on
    /// every I/O).
    PostResponse {
        /// The request.
        req: ReqId,
        /// Number of RDMA WRITEs before the SEND (0 when no data goes back).
        writes: u8,
        /// The receive slot to post again before the chain, if any.
        recv: Option<RecvId>,
    },
    /// Ask the host for `len` bytes of data buffers for `req`; answer with
    /// `handle_buffers_granted` now or later.
    RequestBuffers {
        /// The request.
        req: ReqId,
        /// Bytes needed.
        len: u32,
    },
    /// Withdraw an unanswered [`Action::RequestBuffers`]: the host must not
    /// grant it any more.
    CancelBufferRequest {
        /// The request.
        req: ReqId,
    },
    /// Hand the command of `req` to the host ([`crate::Qpair::command`],
    /// [`crate::Qpair::data`]); answer with `handle_command_executed`.
    Execute {
        /// The request.
        req: ReqId,
    },
    /// Return the data buffers granted to `req` to the host. Emitted only when
    /// no WR references them any more.
    ReleaseBuffers {
        /// The request.
        req: ReqId,
    },
    /// Tell the host (SPDK's generic layer) that this qpair must go
    /// (`spdk_nvmf_qpair_disconnect`). The host answers later with
    /// `handle_fini`. Emitted once.
    HostDisconnect {
        /// Why.
        reason: DisconnectReason,
    },
    /// Move the QP to the error state (`rdma_disconnect`) so that every posted
    /// WR and RECV is flushed. Emitted once, when teardown starts.
    DisconnectQp,
    /// Destroy the QP (`rdma_destroy_qp`): after this no WR of this qpair
    /// can complete. Emitted once; `forced` when the drain deadline expired.
    DestroyQp {
        /// The drain deadline expired before every WR completed.
        forced: bool,
    },
    /// Every resource of the qpair has been returned; the transport may free
    /// the engine and report the qpair gone (`qpair_fini` callback). Emitted
    /// once, after [`Action::DestroyQp`]; no further actions follow.
    Finished,
    /// Something worth logging.
    Notice(Notice),
    /// Request `req` entered `state` (never [`ReqState::Free`]). Emitted
    /// only while state tracing is on ([`crate::Qpair::set_state_tracing`]),
    /// in order with the other actions: for trace points, nothing to do.
    RequestState {
        /// The request.
        req: ReqId,
        /// Its new state.
        state: ReqState,
        /// Request objects of the qpair not FREE at that moment, this one
        /// included (upstream's `qd` trace argument).
        in_use: u16,
    },
}

/// Why the engine asked for a disconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// A work completion with an error status.
    WcError {
        /// The WR.
        wr: WrId,
        /// Its status.
        status: WcStatus,
    },
    /// A fatal QP event (IBV_EVENT_QP_FATAL).
    QpFatal,
    /// The QP entered the error state without a fatal event or an error
    /// completion (SRQ: IBV_EVENT_QP_LAST_WQE_REACHED on an active qpair).
    QpInError,
    /// The host sent a capsule while `max_queue_depth` commands were
    /// outstanding.
    HostOverrun {
        /// Receives held when it happened.
        recv_depth: u16,
    },
    /// The peer disconnected (RDMA_CM_EVENT_DISCONNECTED and the like).
    PeerDisconnected,
    /// The transport reported a failure to post WRs.
    PostFailed,
}

/// A log-worthy event. Each names the qpair by [`crate::QpairConfig::label`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// A completion with an error status (`Flushed` ones are routine during
    /// teardown and worth at most a debug line).
    WcError {
        /// Qpair label.
        qpair: u32,
        /// The WR.
        wr: WrId,
        /// Its status.
        status: WcStatus,
    },
    /// A command failed in the transport and is answered with `status`.
    CommandFailed {
        /// Qpair label.
        qpair: u32,
        /// The request.
        req: ReqId,
        /// Command identifier.
        cid: u16,
        /// NVMe status sent back.
        status: Status,
    },
    /// The host overran the queue depth; the qpair is disconnected.
    HostOverrun {
        /// Qpair label.
        qpair: u32,
        /// Receives held.
        recv_depth: u16,
        /// The limit.
        max_queue_depth: u16,
    },
    /// The drain deadline expired; the qpair is destroyed anyway.
    DrainDeadlineExpired {
        /// Qpair label.
        qpair: u32,
        /// Send-queue WRs that never completed.
        lost_send_wrs: u32,
        /// Posted RECVs that never completed (without SRQ).
        lost_recvs: u32,
        /// With SRQ: IBV_EVENT_QP_LAST_WQE_REACHED never arrived.
        missing_last_wqe: bool,
    },
    /// A completion or host answer the engine did not expect; it was ignored.
    Unexpected {
        /// Qpair label.
        qpair: u32,
        /// What it was.
        what: Unexpected,
    },
    /// Teardown had to finish requests that were still queued.
    RequestDropped {
        /// Qpair label.
        qpair: u32,
        /// The request.
        req: ReqId,
        /// Its state when dropped.
        state: ReqState,
    },
}

/// Kinds of unexpected input (see [`crate::EngineError`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unexpected {
    /// Last-WQE-reached arrived twice (upstream reports -EALREADY).
    DuplicateLastWqe,
}
