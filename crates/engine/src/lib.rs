//! The sans-IO engine: request lifecycle, per-qpair queues, resource
//! accounting, qpair teardown rules and the NVMe-oF RDMA codecs.
//!
//! Events go in, actions come out; nothing here performs I/O or reads a clock.
//! The same events always give the same actions.
//!
//! # Driving a qpair
//!
//! One [`Qpair`] per RDMA queue pair, owned by the poll-group thread that
//! polls its CQ. The transport:
//!
//! 1. Creates it with [`Qpair::new`] from a [`QpairConfig`] (negotiated depths,
//!    SRQ or not, SGL limits). Without SRQ the engine immediately emits one
//!    [`Action::PostRecv`] per receive slot; post them before `rdma_accept`.
//!    With SRQ the transport fills the SRQ itself, naming each receive buffer
//!    with a [`RecvId`] and posting it with `WrId::recv(id).to_raw()` as `wr_id`.
//! 2. Feeds every event for the qpair:
//!    - each work completion: [`Qpair::handle_completion`] with the raw
//!      `wr_id`, the [`WcStatus`] and, for a successful RECV, the received
//!      bytes (`byte_len` bytes of that receive buffer). The engine decodes
//!      the [`WrId`]; it never looks at the completion's opcode;
//!    - host answers: [`Qpair::handle_buffers_granted`] (may come any time
//!      after [`Action::RequestBuffers`], never after
//!      [`Action::CancelBufferRequest`]), [`Qpair::handle_command_executed`]
//!      (SPDK's `req_complete`, never from inside the `Execute` call). Every
//!      `Execute` must be answered, also during teardown (commands the host
//!      keeps, like AERs, are answered with any status when the qpair goes:
//!      SPDK's `req_free`; the engine then drops them without a response);
//!    - QP and CM events: [`Qpair::handle_qp_fatal`],
//!      [`Qpair::handle_last_wqe_reached`], [`Qpair::handle_peer_disconnected`],
//!      [`Qpair::handle_wr_not_posted`];
//!    - teardown: [`Qpair::handle_fini`] (SPDK's `qpair_fini`) with a drain
//!      deadline, then [`Qpair::handle_timeout`] whenever
//!      [`Qpair::poll_timeout`] is due;
//!    - aborts: [`Qpair::abort`] from the host's ABORT command.
//! 3. After each event, handles every action from [`Qpair::poll_action`] (or
//!    [`Qpair::drain_actions`] into a reused buffer) **in order and before
//!    the next event**: WR-posting actions are read through
//!    [`Qpair::data_wr`] / [`Qpair::send_wr`], commands through
//!    [`Qpair::command`] / [`Qpair::data`]. Post actions may be batched into
//!    one `ibv_post_send` per qpair per poll (a [`Action::PostResponse`] is a
//!    WRITE chain + SEND, after the RECV it re-posts if it names one;
//!    [`Action::PostReads`] is a READ chain).
//! 4. Stops after [`Action::Finished`]: by then [`Action::DestroyQp`] was
//!    emitted (after which no completion of this QP may be fed) and every
//!    request, buffer and receive has been returned.
//!
//! For tracepoints, [`Qpair::set_state_tracing`] makes the engine also
//! report every request state change as [`Action::RequestState`], in order
//! with the other actions (nothing to do but record it); off by default.
//!
//! If a post fails, the transport calls [`Qpair::handle_wr_not_posted`] for
//! `bad_wr` and every WR after it in that post (not a completion: WRs before
//! `bad_wr` still belong to the NIC).
//!
//! Nothing on the per-I/O path allocates: requests live in a slab sized at
//! creation, queues are index-linked through it, data WRs use fixed arrays of
//! at most 16 WRs and 49 SGEs per request, and the action queue keeps its
//! capacity.
//!
//! `docs/engine.md` maps the states and queues to upstream SPDK's
//! `lib/nvmf/rdma.c` and lists where the engine deliberately differs.
#![forbid(unsafe_code)]

pub mod codec;

mod action;
mod action_ring;
mod config;
mod error;
mod ids;
mod qpair;
mod queues;
mod request;
mod state;
mod wr;

#[cfg(feature = "sim")]
pub mod sim;

/// Whether this build has the test-only `sim` feature (the simulation and the
/// extra checks it keeps on the hot path). The benches assert it is off.
pub const SIM_BUILD: bool = cfg!(feature = "sim");

pub use action::{Action, DisconnectReason, Notice, Unexpected};
pub use config::{ConfigError, QpairConfig, MIN_SEND_DEPTH};
pub use error::EngineError;
pub use ids::{RecvId, ReqId, Timestamp};
pub use qpair::{
    AbortOutcome, Counters, DataOpcode, DataRef, DataWr, InvariantViolation, Qpair, QpairState,
    SendWr, Stats,
};
pub use queues::QueueError;
pub use request::{LocalSge, PlanError, MAX_BUFFERS, MAX_SGES_PER_REQUEST, MAX_SGES_PER_WR};
pub use state::{QueueKind, ReqState};
pub use wr::{BadWrId, WcStatus, WrId, WrKind, MAX_DATA_WRS};
