//! The per-qpair engine: request slab, queues, counters, lifecycle.

use std::collections::VecDeque;

use super::action::{Action, DisconnectReason, Notice, Unexpected};
use super::action_ring::ActionRing;
use super::codec::nvme::{Command, Completion, DataTransfer, Fuse, Status};
use super::codec::sgl::{effective_data_transfer, parse_data_shape, DataShape, KeyedSegment};
use super::codec::sgl::{SglLimits, MAX_SGL_DESCRIPTORS};
use super::config::{ConfigError, QpairConfig};
use super::error::{Bug, EngineError};
use super::ids::{RecvId, ReqId, Timestamp};
use super::queues::Queues;
use super::request::{Incoming, LocalSge, Request};
use super::state::{QueueKind, ReqState};
use super::wr::{BadWrId, WcStatus, WrId, WrKind, MAX_DATA_WRS};

/// Lifecycle of a qpair (upstream §3: active → error/disconnecting →
/// draining → destroyable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QpairState {
    /// Normal operation.
    Active,
    /// An error was seen (or the peer left); the host has been told with
    /// [`Action::HostDisconnect`] and the engine waits for `handle_fini`. No
    /// new WRs are posted; queued requests are dropped.
    Error,
    /// `handle_fini` was called: the QP was moved to error and the engine
    /// waits for every WR, RECV and request to come back, or the deadline.
    Draining {
        /// When the drain gives up waiting for the NIC.
        deadline: Timestamp,
    },
    /// [`Action::Finished`] was emitted; the engine accepts no more events.
    Finished,
}

/// State of a receive slot owned by a qpair (without SRQ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecvSlot {
    /// Posted on the QP: owned by the NIC.
    Posted,
    /// Completed: holds a command (incoming or attached to a request).
    Held,
    /// Back from the NIC for good (the qpair is going away).
    Retired,
}

/// Counters of one qpair (what is in flight and held).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    /// Data WRs + response SENDs owned by the NIC.
    pub send_depth: u32,
    /// RDMA READs owned by the NIC.
    pub read_depth: u16,
    /// Received capsules held by the engine (incoming or attached to a request).
    pub recv_depth: u16,
    /// RECVs posted on the QP (without SRQ).
    pub recvs_posted: u16,
    /// Request objects not FREE.
    pub requests_in_use: u16,
    /// Received capsules waiting for a request object.
    pub incoming: u16,
}

/// Statistics (upstream's poller stats that the engine can know).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Commands received.
    pub requests: u64,
    /// Times the pending-read head had to wait (`pending_rdma_read`).
    pub pending_rdma_read: u64,
    /// Times the pending-write head had to wait (`pending_rdma_write`).
    pub pending_rdma_write: u64,
    /// Times the pending-send head had to wait (`pending_rdma_send`).
    pub pending_rdma_send: u64,
    /// Times a capsule waited for a free request (`pending_free_request`).
    pub pending_free_request: u64,
    /// READ chains posted in more than one part.
    pub split_reads: u64,
    /// Completions with an error status.
    pub wc_errors: u64,
    /// Engine bugs caught at run time (an internal step was refused, e.g. a
    /// request with WRs in flight about to be completed). Always 0 unless the
    /// engine is broken; each one is also logged. Tests assert it stays 0.
    pub internal_errors: u64,
}

/// Outcome of [`Qpair::abort`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortOutcome {
    /// No outstanding command with that CID.
    NotFound,
    /// The victim was queued; it is answered with ABORTED_BY_REQUEST.
    Aborted(ReqId),
    /// The victim is executing in the host: abort it there.
    Executing(ReqId),
    /// The victim is moving data; retry until the abort timeout.
    Busy(ReqId),
    /// The victim is past the point where it can be aborted.
    TooLate(ReqId),
}

/// Direction of a data WR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataOpcode {
    /// IBV_WR_RDMA_READ (host to controller), signaled.
    RdmaRead,
    /// IBV_WR_RDMA_WRITE (controller to host), unsignaled.
    RdmaWrite,
}

/// Everything needed to build one data `ibv_send_wr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataWr<'a> {
    /// `wr_id`.
    pub wr_id: WrId,
    /// Opcode.
    pub opcode: DataOpcode,
    /// Whether to set IBV_SEND_SIGNALED.
    pub signaled: bool,
    /// `wr.rdma.remote_addr`.
    pub remote_addr: u64,
    /// `wr.rdma.rkey`.
    pub rkey: u32,
    /// Local SGEs.
    pub sges: &'a [LocalSge],
}

/// Everything needed to build the response SEND.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendWr {
    /// `wr_id`.
    pub wr_id: WrId,
    /// The 16-byte completion queue entry to send.
    pub response: [u8; 16],
    /// Send with invalidate of this rkey (IBV_WR_SEND_WITH_INV), if any.
    pub invalidate_rkey: Option<u32>,
}

/// Where a command's data is, for the host executing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataRef<'a> {
    /// The command moves no data.
    None,
    /// In the receive buffer `recv`, at `offset` of its in-capsule area.
    InCapsule {
        /// The receive slot.
        recv: RecvId,
        /// Offset into the in-capsule data area.
        offset: u32,
        /// Length.
        len: u32,
    },
    /// In the granted buffers (in order).
    Buffers {
        /// The segments.
        sges: &'a [LocalSge],
        /// Total length.
        len: u32,
    },
}

/// The engine of one qpair. See the module documentation of
/// [`crate`] for how a transport drives it.
#[derive(Debug)]
pub struct Qpair {
    cfg: QpairConfig,
    reqs: Vec<Request>,
    queues: Queues,
    incoming: VecDeque<Incoming>,
    recv_slots: Vec<RecvSlot>,
    send_depth: u32,
    read_depth: u16,
    recv_depth: u16,
    recvs_posted: u16,
    in_use: u16,
    sq_head: u16,
    fused_first: Option<ReqId>,
    /// The pending-buffer queue changed since buffers were last asked for.
    buffers_dirty: bool,
    /// Fused partners to re-run because their mate was freed.
    kicks: VecDeque<ReqId>,
    state: QpairState,
    host_told: bool,
    qp_disconnected: bool,
    last_wqe: bool,
    qp_destroyed: bool,
    actions: ActionRing,
    stats: Stats,
    /// Emit [`Action::RequestState`] on every state change.
    trace_states: bool,
    #[cfg(feature = "sim")]
    sim_bug_3463: bool,
}

impl Qpair {
    /// Creates the engine of a new qpair. Without SRQ this emits one
    /// [`Action::PostRecv`] per receive slot (post them before `rdma_accept`).
    pub fn new(cfg: QpairConfig) -> Result<Qpair, ConfigError> {
        cfg.validate()?;
        let n = usize::from(cfg.max_queue_depth);
        let mut q = Qpair {
            cfg,
            reqs: (0..n).map(|_| Request::new()).collect(),
            queues: Queues::new(n),
            incoming: VecDeque::with_capacity(n),
            recv_slots: Vec::with_capacity(if cfg.srq { 0 } else { n }),
            send_depth: 0,
            read_depth: 0,
            recv_depth: 0,
            recvs_posted: 0,
            in_use: 0,
            sq_head: 0,
            fused_first: None,
            buffers_dirty: false,
            kicks: VecDeque::with_capacity(n),
            state: QpairState::Active,
            host_told: false,
            qp_disconnected: false,
            last_wqe: false,
            qp_destroyed: false,
            actions: ActionRing::with_capacity(8 * n + 64),
            stats: Stats::default(),
            trace_states: false,
            #[cfg(feature = "sim")]
            sim_bug_3463: false,
        };
        for i in (0..n).rev() {
            q.queues
                .push_front(QueueKind::Free, ReqId(i as u16))
                .map_err(|_| ConfigError::QueueDepth {
                    label: cfg.label,
                    value: cfg.max_queue_depth,
                })?;
        }
        if !cfg.srq {
            for i in 0..n {
                q.recv_slots.push(RecvSlot::Posted);
                q.recvs_posted += 1;
                q.actions.push_back(Action::PostRecv {
                    recv: RecvId(i as u32),
                });
            }
        }
        Ok(q)
    }

    // ------------------------------------------------------------------
    // Accessors
    // ------------------------------------------------------------------

    /// The configuration.
    pub fn config(&self) -> &QpairConfig {
        &self.cfg
    }

    /// The lifecycle state.
    pub fn state(&self) -> QpairState {
        self.state
    }

    /// Current counters.
    pub fn counters(&self) -> Counters {
        Counters {
            send_depth: self.send_depth,
            read_depth: self.read_depth,
            recv_depth: self.recv_depth,
            recvs_posted: self.recvs_posted,
            requests_in_use: self.in_use,
            incoming: self.incoming.len() as u16,
        }
    }

    /// Statistics.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The state of request `req`.
    pub fn request_state(&self, req: ReqId) -> Option<ReqState> {
        self.reqs.get(req.index()).map(|r| r.state)
    }

    /// The command of request `req` (valid from NEW until FREE).
    #[inline]
    pub fn command(&self, req: ReqId) -> Option<&Command> {
        self.reqs
            .get(req.index())
            .filter(|r| r.state != ReqState::Free)
            .map(|r| &r.cmd)
    }

    /// The receive slot holding the capsule of `req`, until its response is
    /// queued.
    pub fn recv_of(&self, req: ReqId) -> Option<RecvId> {
        self.reqs.get(req.index()).and_then(|r| r.recv)
    }

    /// Where the data of `req` is (for [`Action::Execute`]).
    #[inline]
    pub fn data(&self, req: ReqId) -> DataRef<'_> {
        let Some(r) = self.reqs.get(req.index()) else {
            return DataRef::None;
        };
        match r.shape {
            DataShape::None => DataRef::None,
            DataShape::InCapsule { offset, len } => match r.recv {
                Some(recv) => DataRef::InCapsule { recv, offset, len },
                None => DataRef::None,
            },
            DataShape::Keyed { total_len, .. } if r.has_buffers => DataRef::Buffers {
                sges: r.plan.all_sges(),
                len: total_len,
            },
            DataShape::Keyed { .. } => DataRef::None,
        }
    }

    /// Data WR `index` of `req` (for [`Action::PostReads`] / [`Action::PostResponse`]).
    #[inline]
    pub fn data_wr(&self, req: ReqId, index: u8) -> Option<DataWr<'_>> {
        let r = self.reqs.get(req.index())?;
        if !r.has_buffers || index >= r.plan.nwrs {
            return None;
        }
        let p = &r.plan.wrs[usize::from(index)];
        let read = r.xfer == DataTransfer::HostToController;
        Some(DataWr {
            wr_id: WrId::new(WrKind::Data {
                req,
                index,
                generation: r.generation,
            }),
            opcode: if read {
                DataOpcode::RdmaRead
            } else {
                DataOpcode::RdmaWrite
            },
            signaled: read,
            remote_addr: p.remote_addr,
            rkey: p.rkey,
            sges: r.plan.sges_of(usize::from(index)),
        })
    }

    /// The response SEND of `req` (for [`Action::PostResponse`]).
    #[inline]
    pub fn send_wr(&self, req: ReqId) -> Option<SendWr> {
        let r = self.reqs.get(req.index())?;
        let invalidate_rkey = match r.shape {
            DataShape::Keyed {
                invalidate_rkey, ..
            } if self.cfg.send_with_invalidate => invalidate_rkey,
            _ => None,
        };
        Some(SendWr {
            wr_id: WrId::new(WrKind::Send {
                req,
                generation: r.generation,
            }),
            response: r.cpl.to_bytes(),
            invalidate_rkey,
        })
    }

    /// The next action, in order. Handle every action before feeding the next
    /// event.
    #[inline]
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Moves all pending actions into `out` (which keeps its capacity).
    pub fn drain_actions(&mut self, out: &mut Vec<Action>) {
        self.actions.drain_into(out);
    }

    /// Turns state tracing on or off: while on, every request state change
    /// (but to FREE) also emits an [`Action::RequestState`], in order with
    /// the other actions; nothing else changes. Off by default; when off it
    /// costs one test of this flag per state change.
    pub fn set_state_tracing(&mut self, on: bool) {
        self.trace_states = on;
    }

    /// Whether state tracing is on ([`Qpair::set_state_tracing`]).
    pub fn state_tracing(&self) -> bool {
        self.trace_states
    }

    /// When [`Qpair::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        match self.state {
            QpairState::Draining { deadline } if !self.qp_destroyed => Some(deadline),
            _ => None,
        }
    }

    /// Test-only switch (feature `sim`): reintroduce SPDK #3463's mistake of
    /// leaving a request linked in the pending-read queue when its READ chain
    /// fails mid-way. Absent from builds without the `sim` feature.
    #[cfg(feature = "sim")]
    pub fn sim_reintroduce_bug_3463(&mut self, on: bool) {
        self.sim_bug_3463 = on;
    }

    // ------------------------------------------------------------------
    // Events
    // ------------------------------------------------------------------

    /// A work completion for this qpair: dispatched by its `wr_id`, never by
    /// its opcode. `payload` is the received bytes (64-byte command + in-capsule
    /// data, i.e. `byte_len` bytes of the receive buffer) for a successful
    /// RECV, ignored otherwise.
    pub fn handle_completion(
        &mut self,
        wr_id: u64,
        status: WcStatus,
        payload: &[u8],
    ) -> Result<(), EngineError> {
        self.check_open()?;
        // A decoded id names a data WR below MAX_DATA_WRS (4 bits).
        let (_, kind) = WrId::decode(wr_id)?;
        self.wr_completion(kind, status, payload)
    }

    /// [`Qpair::handle_completion`] for a `wr_id` the transport already
    /// decoded (every [`WrKind`] value is one the engine can have issued:
    /// stale or unknown slots are refused as for a raw id).
    pub fn handle_wr_completion(
        &mut self,
        kind: WrKind,
        status: WcStatus,
        payload: &[u8],
    ) -> Result<(), EngineError> {
        self.check_open()?;
        if let WrKind::Data { index, .. } = kind {
            if usize::from(index) >= MAX_DATA_WRS {
                return Err(BadWrId(WrId::new(kind).to_raw()).into());
            }
        }
        self.wr_completion(kind, status, payload)
    }

    /// [`Qpair::handle_wr_completion`] once the qpair is known open and a
    /// data WR's index below [`MAX_DATA_WRS`].
    #[inline(always)]
    fn wr_completion(
        &mut self,
        kind: WrKind,
        status: WcStatus,
        payload: &[u8],
    ) -> Result<(), EngineError> {
        if !status.is_success() {
            self.count_wc_error(WrId::new(kind), status);
        }
        let r = match kind {
            WrKind::Recv { recv } => self.on_recv(recv, status, payload),
            WrKind::Data {
                req,
                index,
                generation,
            } => self.on_data(req, index, generation, status),
            WrKind::Send { req, generation } => self.on_send(req, generation, status),
        };
        self.after_event();
        r
    }

    /// Counts an error completion; a notice unless it is a flush (routine
    /// during teardown).
    #[cold]
    fn count_wc_error(&mut self, wr: WrId, status: WcStatus) {
        self.stats.wc_errors += 1;
        if status != WcStatus::Flushed {
            self.notice(Notice::WcError {
                qpair: self.cfg.label,
                wr,
                status,
            });
        }
    }

    /// The host granted buffers for `req` (answer to [`Action::RequestBuffers`]).
    /// On error nothing was taken: the buffers still belong to the host.
    pub fn handle_buffers_granted(
        &mut self,
        req: ReqId,
        bufs: &[LocalSge],
    ) -> Result<(), EngineError> {
        self.check_open()?;
        let r = self.req(req)?;
        if r.state != ReqState::NeedBuffer || !r.buffers_asked {
            return Err(self.wrong_state(req, "buffers granted"));
        }
        if !matches!(r.shape, DataShape::Keyed { .. }) {
            return Err(self.wrong_state(req, "buffers granted"));
        }
        let r = &mut self.reqs[req.index()];
        r.buffers_asked = false;
        r.has_buffers = true;
        let n = usize::from(r.nwrs());
        let built = r.plan.build(&r.segments[..n], bufs);
        match built {
            Ok(()) => self.leave_buffer_queue(req).map_err(|b| self.lift(b))?,
            Err(_) => self
                .fail_request(req, Status::DATA_SGL_LENGTH_INVALID)
                .map_err(|b| self.lift(b))?,
        }
        self.drive(req).map_err(|b| self.lift(b))?;
        self.after_event();
        Ok(())
    }

    /// NEED_BUFFER → HAVE_BUFFER: the relink of [`Qpair::set_state`]
    /// written out for it (off the pending-buffer queue, which needs a new
    /// walk only if others still wait), inline instead of the general relink.
    #[inline(always)]
    fn leave_buffer_queue(&mut self, req: ReqId) -> Result<(), Bug> {
        let i = req.index();
        // NEED_BUFFER is on the pending-buffer queue; the simulation build
        // also checks the link (see leave_free).
        #[cfg(feature = "sim")]
        let linked = self.queues.on(req) == Some(QueueKind::PendingBuffer);
        #[cfg(not(feature = "sim"))]
        let linked = true;
        if self.reqs[i].state != ReqState::NeedBuffer || !linked {
            return self.set_state(req, ReqState::HaveBuffer);
        }
        self.queues.remove(req);
        if !self.queues.is_empty(QueueKind::PendingBuffer) {
            self.buffers_dirty = true;
        }
        self.reqs[i].state = ReqState::HaveBuffer;
        self.traced(req, ReqState::HaveBuffer);
        Ok(())
    }

    /// The host finished executing `req` (SPDK's `req_complete`). `cpl.sqhd`
    /// and `cpl.cid` are filled in by the engine.
    pub fn handle_command_executed(
        &mut self,
        req: ReqId,
        cpl: Completion,
    ) -> Result<(), EngineError> {
        self.check_open()?;
        if self.req(req)?.state != ReqState::Executing {
            return Err(self.wrong_state(req, "command executed"));
        }
        let i = req.index();
        let cid = self.reqs[i].cmd.cid();
        self.reqs[i].cpl = Completion { cid, ..cpl };
        self.step(req, ReqState::Executed)
            .map_err(|b| self.lift(b))?;
        self.drive(req).map_err(|b| self.lift(b))?;
        self.after_event();
        Ok(())
    }

    /// The host dropped `req` without a response (SPDK's `req_free`: an AER
    /// or a queued command of a qpair being disconnected). Nothing is sent;
    /// the request's buffers and RECV are returned and the object is freed.
    pub fn handle_command_freed(&mut self, req: ReqId) -> Result<(), EngineError> {
        self.check_open()?;
        if self.req(req)?.state != ReqState::Executing {
            return Err(self.wrong_state(req, "command freed"));
        }
        self.set_state(req, ReqState::Completed)
            .map_err(|b| self.lift(b))?;
        self.complete(req).map_err(|b| self.lift(b))?;
        self.after_event();
        Ok(())
    }

    /// IBV_EVENT_QP_FATAL (or another QP error event): the QP is in error.
    pub fn handle_qp_fatal(&mut self) -> Result<(), EngineError> {
        self.check_open()?;
        self.enter_error(DisconnectReason::QpFatal);
        self.after_event();
        Ok(())
    }

    /// The peer disconnected (RDMA_CM_EVENT_DISCONNECTED, DEVICE_REMOVAL, ...).
    pub fn handle_peer_disconnected(&mut self) -> Result<(), EngineError> {
        self.check_open()?;
        self.enter_error(DisconnectReason::PeerDisconnected);
        self.after_event();
        Ok(())
    }

    /// `ibv_post_send` / `ibv_post_recv` failed: call this for `bad_wr` and
    /// for every WR after it in the same post (they never reached the NIC).
    /// WRs before `bad_wr` were posted and still belong to the NIC. The qpair
    /// goes to error ([`Action::HostDisconnect`]).
    ///
    /// This is not a completion: a response SEND that was never posted does
    /// not imply that the RDMA WRITEs posted before it are done, so their
    /// buffers stay held until those WRITEs complete or flush (or the drain
    /// deadline passes).
    pub fn handle_wr_not_posted(&mut self, wr_id: u64) -> Result<(), EngineError> {
        self.check_open()?;
        let (wr, kind) = WrId::decode(wr_id)?;
        match kind {
            WrKind::Recv { recv } => {
                if !self.cfg.srq {
                    let posted = self.recv_slots.get(recv.0 as usize) == Some(&RecvSlot::Posted);
                    if !posted {
                        return Err(EngineError::UnknownRecv {
                            qpair: self.cfg.label,
                            recv,
                        });
                    }
                    self.recv_slots[recv.0 as usize] = RecvSlot::Retired;
                    self.recvs_posted -= 1;
                }
            }
            WrKind::Data {
                req,
                index,
                generation,
            } => {
                self.retire_data_wr(req, index, generation)?;
            }
            WrKind::Send { req, generation } => {
                let r = self.req(req)?;
                if r.generation != generation || !r.send_inflight {
                    return Err(EngineError::StaleWr {
                        qpair: self.cfg.label,
                        wr,
                    });
                }
                self.reqs[req.index()].send_inflight = false;
                self.send_depth -= 1;
            }
        }
        self.enter_error(DisconnectReason::PostFailed);
        self.after_event();
        Ok(())
    }

    /// IBV_EVENT_QP_LAST_WQE_REACHED (SRQ): the QP will consume no more
    /// receives. The NIC raises it when an SRQ-attached QP enters the error
    /// state, so on a qpair that is not yet going away it also means the QP
    /// failed: the qpair goes to error ([`Action::HostDisconnect`]). Without
    /// this an SRQ qpair with no WR outstanding (one whose host died right
    /// after connecting) would never learn that its QP is dead.
    pub fn handle_last_wqe_reached(&mut self) -> Result<(), EngineError> {
        self.check_open()?;
        if self.last_wqe {
            self.notice(Notice::Unexpected {
                qpair: self.cfg.label,
                what: Unexpected::DuplicateLastWqe,
            });
        }
        self.last_wqe = true;
        self.enter_error(DisconnectReason::QpInError);
        self.after_event();
        Ok(())
    }

    /// The host tears the qpair down (SPDK's `qpair_fini`). The engine moves
    /// the QP to error ([`Action::DisconnectQp`]) and drains; if the NIC has
    /// not returned everything by `deadline`, teardown finishes anyway (see
    /// [`Qpair::handle_timeout`]). Repeated calls are ignored.
    pub fn handle_fini(&mut self, deadline: Timestamp) -> Result<(), EngineError> {
        self.check_open()?;
        if matches!(self.state, QpairState::Draining { .. }) {
            return Ok(());
        }
        self.host_told = true;
        self.state = QpairState::Draining { deadline };
        if !self.qp_disconnected {
            self.qp_disconnected = true;
            self.actions.push_back(Action::DisconnectQp);
        }
        self.after_event();
        Ok(())
    }

    /// Time passed. When draining and `now >= deadline`, every WR still owned
    /// by the NIC is declared lost: the QP is destroyed ([`Action::DestroyQp`]
    /// with `forced`), and only then are the buffers those WRs named released.
    pub fn handle_timeout(&mut self, now: Timestamp) -> Result<(), EngineError> {
        self.check_open()?;
        if let QpairState::Draining { deadline } = self.state {
            if now >= deadline && !self.qp_destroyed {
                self.force_drain().map_err(|b| self.lift(b))?;
            }
        }
        self.after_event();
        Ok(())
    }

    /// Abort the outstanding command `cid` (SPDK's `qpair_abort_request`,
    /// upstream §6.9).
    pub fn abort(&mut self, cid: u16) -> Result<AbortOutcome, EngineError> {
        self.check_open()?;
        let Some(i) = self
            .reqs
            .iter()
            .position(|r| r.state != ReqState::Free && r.cmd.cid() == cid)
        else {
            return Ok(AbortOutcome::NotFound);
        };
        let req = ReqId(i as u16);
        let outcome = match self.reqs[i].state {
            ReqState::NeedBuffer
            | ReqState::DataTransferToControllerPending
            | ReqState::DataTransferToHostPending
            | ReqState::ReadyToCompletePending => {
                self.cancel_buffer_ask(req);
                let mut cpl = Completion::new(cid, Status::ABORTED_BY_REQUEST);
                cpl.sqid = 0;
                self.reqs[i].cpl = cpl;
                // Re-queue at the tail of the send queue.
                self.set_state(req, ReqState::ReadyToComplete)
                    .map_err(|b| self.lift(b))?;
                self.set_state(req, ReqState::ReadyToCompletePending)
                    .map_err(|b| self.lift(b))?;
                self.drive(req).map_err(|b| self.lift(b))?;
                AbortOutcome::Aborted(req)
            }
            ReqState::Executing => AbortOutcome::Executing(req),
            ReqState::TransferringHostToController { .. } => AbortOutcome::Busy(req),
            _ => AbortOutcome::TooLate(req),
        };
        self.after_event();
        Ok(outcome)
    }

    // ------------------------------------------------------------------
    // Completion handlers
    // ------------------------------------------------------------------

    #[inline(always)]
    fn on_recv(
        &mut self,
        recv: RecvId,
        status: WcStatus,
        payload: &[u8],
    ) -> Result<(), EngineError> {
        if !self.cfg.srq {
            let slot =
                self.recv_slots
                    .get_mut(recv.0 as usize)
                    .ok_or(EngineError::UnknownRecv {
                        qpair: self.cfg.label,
                        recv,
                    })?;
            if *slot != RecvSlot::Posted {
                return Err(EngineError::UnknownRecv {
                    qpair: self.cfg.label,
                    recv,
                });
            }
            *slot = RecvSlot::Held;
            self.recvs_posted -= 1;
        }
        if !status.is_success() {
            self.enter_error(DisconnectReason::WcError {
                wr: WrId::recv(recv),
                status,
            });
            self.give_back_recv(recv);
            return Ok(());
        }
        if self.state != QpairState::Active {
            // The qpair is going away: the command is never answered.
            self.give_back_recv(recv);
            return Ok(());
        }
        if self.recv_depth >= self.cfg.max_queue_depth {
            self.notice(Notice::HostOverrun {
                qpair: self.cfg.label,
                recv_depth: self.recv_depth,
                max_queue_depth: self.cfg.max_queue_depth,
            });
            self.enter_error(DisconnectReason::HostOverrun {
                recv_depth: self.recv_depth,
            });
            self.give_back_recv(recv);
            return Ok(());
        }
        self.stats.requests += 1;
        self.recv_depth += 1;
        // With nothing queued ahead of it (no capsule waiting, no pending
        // request or fused partner that process_pending would run first),
        // starting the command now gives the same actions as queuing it for
        // process_pending; it is then parsed straight into its request
        // object, the command and layout are never copied again.
        if self.incoming.is_empty() && self.kicks.is_empty() && !self.queues.any_pending() {
            if let Some(req) = self.queues.head(QueueKind::Free) {
                let r = &mut self.reqs[req.index()];
                let parsed = read_capsule(payload, &self.cfg.sgl, &mut r.cmd, &mut r.segments);
                if let Err(e) = self.start(req, recv, parsed) {
                    self.internal_error(e);
                }
                return Ok(());
            }
        }
        // No request object free (or others queued first): the capsule
        // waits, parsed in place in the incoming ring.
        self.incoming.push_back(Incoming::EMPTY);
        if let Some(slot) = self.incoming.back_mut() {
            slot.recv = recv;
            slot.parsed = read_capsule(payload, &self.cfg.sgl, &mut slot.cmd, &mut slot.segments);
        }
        Ok(())
    }

    /// The NIC is done with data WR `index` of `req` (completed, flushed or
    /// never posted): refuses a stale or duplicate id, clears its in-flight
    /// bit and returns its send-depth (and, for an RDMA READ, read-depth)
    /// credit. Returns whether it was a READ.
    #[inline]
    fn retire_data_wr(
        &mut self,
        req: ReqId,
        index: u8,
        generation: u32,
    ) -> Result<bool, EngineError> {
        let bit = 1u16 << index;
        let r = self.req(req)?;
        if r.generation != generation || r.inflight & bit == 0 {
            return Err(EngineError::StaleWr {
                qpair: self.cfg.label,
                wr: data_wr_id(req, index, generation),
            });
        }
        let read = r.xfer == DataTransfer::HostToController;
        let r = &mut self.reqs[req.index()];
        r.inflight &= !bit;
        r.ninflight -= 1;
        self.send_depth -= 1;
        if read {
            self.read_depth -= 1;
        }
        Ok(read)
    }

    /// Data WR `index` of `req` (generation `generation`) completed. The WR
    /// id is rebuilt only for an error (the callers pass its parts).
    fn on_data(
        &mut self,
        req: ReqId,
        index: u8,
        generation: u32,
        status: WcStatus,
    ) -> Result<(), EngineError> {
        let read = self.retire_data_wr(req, index, generation)?;
        if !status.is_success() {
            let wr = data_wr_id(req, index, generation);
            self.enter_error(DisconnectReason::WcError { wr, status });
        }
        self.data_done(req, read).map_err(|b| self.lift(b))
    }

    /// [`Qpair::on_data`] once the WR is retired.
    #[inline]
    fn data_done(&mut self, req: ReqId, read: bool) -> Result<(), Bug> {
        let i = req.index();
        if !read || self.reqs[i].inflight != 0 {
            // WRITE: the chained SEND's completion finishes the request.
            return Ok(());
        }
        // The last outstanding READ of this part of the chain.
        let partial = self.reqs[i].remaining() > 0;
        if self.state != QpairState::Active {
            #[cfg(feature = "sim")]
            if self.sim_bug_3463 && partial {
                self.sim_buggy_complete(req);
                return Ok(());
            }
            return self.complete(req);
        }
        if partial {
            self.set_state(req, ReqState::DataTransferToControllerPending)?;
        } else {
            // The whole chain was posted: TRANSFERRING_HOST_TO_CONTROLLER
            // without `partial`, on no queue.
            self.step(req, ReqState::ReadyToExecute)?;
        }
        self.drive(req)
    }

    /// The response SEND of `req` (generation `generation`) completed.
    #[inline(always)]
    fn on_send(
        &mut self,
        req: ReqId,
        generation: u32,
        status: WcStatus,
    ) -> Result<(), EngineError> {
        let r = self.req(req)?;
        if r.generation != generation || !r.send_inflight {
            return Err(EngineError::StaleWr {
                qpair: self.cfg.label,
                wr: WrId::new(WrKind::Send { req, generation }),
            });
        }
        self.send_done(req, generation, status)
            .map_err(|b| self.lift(b))
    }

    /// [`Qpair::on_send`] once the SEND is known to be in flight.
    #[inline]
    fn send_done(&mut self, req: ReqId, generation: u32, status: WcStatus) -> Result<(), Bug> {
        let i = req.index();
        // RC ordering: the SEND completing means every WRITE before it is done.
        let n = self.reqs[i].outstanding();
        self.send_depth -= n + 1;
        self.reqs[i].inflight = 0;
        self.reqs[i].ninflight = 0;
        self.reqs[i].send_inflight = false;
        if !status.is_success() {
            let wr = WrId::new(WrKind::Send { req, generation });
            self.enter_error(DisconnectReason::WcError { wr, status });
        }
        self.step(req, ReqState::Completed)?;
        self.complete(req)
    }

    // ------------------------------------------------------------------
    // The state machine
    // ------------------------------------------------------------------

    /// Changes a request's state: unlinks it from the queue of the old state
    /// and links it into the queue of the new one, and reports the change
    /// when state tracing is on. The only other code that changes a state is
    /// the written-out copies of this for the transitions every request
    /// makes (`leave_free`, `enter_free`, `on_new`, `leave_buffer_queue`),
    /// which change state and links together too, and report it (but FREE),
    /// and [`Qpair::step`] for moves between two states without a queue.
    // Always inlined: with its trace test it grew past the inliner's
    // threshold, and an out-of-line call per transition cost ~20 % per I/O.
    #[inline(always)]
    fn set_state(&mut self, req: ReqId, new: ReqState) -> Result<(), Bug> {
        let i = req.index();
        let old = self.reqs[i].state;
        let (oq, nq) = (old.queue(), new.queue());
        // Only set_state (and its written-out copies) links and unlinks, so
        // a request is on `old.queue()`; the simulation build also relinks
        // one that is not (the #3463 teeth test corrupts the links on
        // purpose).
        #[cfg(feature = "sim")]
        let relink = oq != nq || self.queues.on(req) != oq;
        #[cfg(not(feature = "sim"))]
        let relink = oq != nq;
        if relink {
            self.relink(req, oq, nq)?;
        }
        self.reqs[i].state = new;
        self.traced(req, new);
        Ok(())
    }

    /// [`Qpair::set_state`] for a move between two states without a queue
    /// (the callers' states are fixed by where they are: EXECUTING →
    /// EXECUTED, READY_TO_COMPLETE → COMPLETING, ...): nothing to relink, so
    /// the release build only stores the state. The simulation build checks
    /// that neither state has a queue (a panic: every simulated event would
    /// find a caller that breaks it) and takes the general path.
    #[inline(always)]
    fn step(&mut self, req: ReqId, new: ReqState) -> Result<(), Bug> {
        #[cfg(feature = "sim")]
        {
            let old = self.reqs[req.index()].state;
            assert!(
                old.queue().is_none() && new.queue().is_none(),
                "qpair {}: step of {req:?} from {old:?} to {new:?} crosses a queue",
                self.cfg.label
            );
            self.set_state(req, new)
        }
        #[cfg(not(feature = "sim"))]
        {
            let r = &mut self.reqs[req.index()];
            debug_assert!(r.state.queue().is_none() && new.queue().is_none());
            r.state = new;
            self.traced(req, new);
            Ok(())
        }
    }

    /// Reports `req` entering `state` when state tracing is on: one test of
    /// the flag when off (the push is out of line). Callers change the
    /// state (`complete` does not set COMPLETED again), so no state is
    /// reported twice in a row.
    #[inline(always)]
    fn traced(&mut self, req: ReqId, state: ReqState) {
        if self.trace_states {
            self.push_trace(req, state);
        }
    }

    /// Emits [`Action::RequestState`] (none for FREE, which upstream does
    /// not trace either).
    #[cold]
    #[inline(never)]
    fn push_trace(&mut self, req: ReqId, state: ReqState) {
        if state != ReqState::Free {
            self.actions.push_back(Action::RequestState {
                req,
                state,
                in_use: self.in_use,
            });
        }
    }

    /// Moves `req` from queue `oq` to queue `nq` (part of [`Qpair::set_state`]).
    #[inline(never)]
    fn relink(
        &mut self,
        req: ReqId,
        oq: Option<QueueKind>,
        nq: Option<QueueKind>,
    ) -> Result<(), Bug> {
        // Only FREE is on the free queue.
        if oq == Some(QueueKind::Free) {
            self.in_use += 1;
        } else if nq == Some(QueueKind::Free) {
            self.in_use -= 1;
        }
        self.queues.remove(req);
        // Whom to ask for buffers changes when a request joins the
        // pending-buffer queue, or leaves it while others still wait (one
        // leaving an otherwise empty queue leaves nobody to ask).
        let pb = Some(QueueKind::PendingBuffer);
        if nq == pb || (oq == pb && !self.queues.is_empty(QueueKind::PendingBuffer)) {
            self.buffers_dirty = true;
        }
        if let Some(q) = nq {
            self.link(q, req)?;
        }
        Ok(())
    }

    #[inline]
    fn link(&mut self, q: QueueKind, req: ReqId) -> Result<(), Bug> {
        match q {
            // LIFO keeps recently used objects warm (upstream INSERT_HEAD).
            QueueKind::Free => self.queues.push_front(q, req)?,
            // Fabrics commands go ahead of every non-fabrics one (7251e4c26c).
            QueueKind::PendingBuffer if self.reqs[req.index()].fabrics => {
                let mut anchor = self.queues.head(q);
                while let Some(a) = anchor {
                    if !self.reqs[a.index()].fabrics {
                        break;
                    }
                    anchor = self.queues.next(a);
                }
                match anchor {
                    Some(a) => self.queues.insert_before(q, req, a)?,
                    None => self.queues.push_back(q, req)?,
                }
            }
            _ => self.queues.push_back(q, req)?,
        }
        Ok(())
    }

    /// Runs `req` until it waits (upstream `nvmf_rdma_request_process`).
    fn drive(&mut self, req: ReqId) -> Result<(), Bug> {
        loop {
            let i = req.index();
            let state = self.reqs[i].state;
            if self.state != QpairState::Active && self.can_drop(req) {
                if state != ReqState::Free {
                    return self.complete(req);
                }
                return Ok(());
            }
            match state {
                ReqState::Free
                | ReqState::NeedBuffer
                | ReqState::TransferringHostToController { .. }
                | ReqState::Executing
                | ReqState::TransferringControllerToHost
                | ReqState::Completing => return Ok(()),
                ReqState::New => {
                    if !self.on_new(req)? {
                        return Ok(());
                    }
                }
                ReqState::HaveBuffer => {
                    if self.reqs[i].xfer != DataTransfer::HostToController {
                        // READY_TO_EXECUTE's step at once: nothing between
                        // the two can change what the loop would do.
                        self.step(req, ReqState::ReadyToExecute)?;
                        if !self.try_execute(req)? {
                            return Ok(());
                        }
                        continue;
                    }
                    // Nobody queued ahead and room for (part of) the chain:
                    // the request would be the pending-read head at once.
                    if self.queues.is_empty(QueueKind::PendingRead) {
                        if let Some(count) = self.read_room(req) {
                            self.post_reads(req, count)?;
                            continue;
                        }
                    }
                    self.set_state(req, ReqState::DataTransferToControllerPending)?;
                }
                ReqState::DataTransferToControllerPending => {
                    if self.queues.head(QueueKind::PendingRead) != Some(req) {
                        return Ok(());
                    }
                    let Some(count) = self.read_room(req) else {
                        self.stats.pending_rdma_read += 1;
                        return Ok(());
                    };
                    self.post_reads(req, count)?;
                }
                ReqState::ReadyToExecute => {
                    if !self.try_execute(req)? {
                        return Ok(());
                    }
                }
                ReqState::Executed => {
                    let r = &self.reqs[i];
                    let ok = r.cpl.status.sct == 0 && r.cpl.status.sc == 0;
                    if ok
                        && r.xfer == DataTransfer::ControllerToHost
                        && matches!(r.shape, DataShape::Keyed { .. })
                    {
                        // Nobody queued ahead and room for WRITEs + SEND: the
                        // request would pass the pending-write head at once.
                        let next = if self.queues.is_empty(QueueKind::PendingWrite)
                            && self.write_room(req)
                        {
                            ReqState::ReadyToComplete
                        } else {
                            ReqState::DataTransferToHostPending
                        };
                        if next == ReqState::ReadyToComplete {
                            self.step(req, next)?;
                            return self.transfer_out(req);
                        }
                        self.set_state(req, next)?;
                    } else if self.queue_response(req)? {
                        return self.transfer_out(req);
                    }
                }
                ReqState::DataTransferToHostPending => {
                    if self.queues.head(QueueKind::PendingWrite) != Some(req) {
                        return Ok(());
                    }
                    if !self.write_room(req) {
                        self.stats.pending_rdma_write += 1;
                        return Ok(());
                    }
                    self.set_state(req, ReqState::ReadyToComplete)?;
                    return self.transfer_out(req);
                }
                ReqState::ReadyToCompletePending => {
                    if self.queues.head(QueueKind::PendingSend) != Some(req) {
                        return Ok(());
                    }
                    if self.send_depth >= self.cfg.max_send_depth {
                        self.stats.pending_rdma_send += 1;
                        return Ok(());
                    }
                    self.set_state(req, ReqState::ReadyToComplete)?;
                    return self.transfer_out(req);
                }
                ReqState::ReadyToComplete => return self.transfer_out(req),
                ReqState::Completed => return self.complete(req),
            }
        }
    }

    /// NEW's step; returns whether [`Qpair::drive`] must go on with `req`
    /// (false: it waits, for its buffers or in EXECUTING). A command without
    /// keyed data takes READY_TO_EXECUTE's step at once.
    fn on_new(&mut self, req: ReqId) -> Result<bool, Bug> {
        self.check_fused(req)?;
        match self.reqs[req.index()].shape {
            DataShape::None | DataShape::InCapsule { .. } => {
                self.set_state(req, ReqState::ReadyToExecute)?;
                self.try_execute(req)
            }
            DataShape::Keyed { .. } => {
                let i = req.index();
                if self.queues.is_empty(QueueKind::PendingBuffer)
                    && self.reqs[i].state == ReqState::New
                    && self.queues.on(req).is_none()
                {
                    // Alone on the queue: set_state's relink written out,
                    // and the walk of ask_buffers would ask for exactly
                    // this request.
                    self.queues.push_back(QueueKind::PendingBuffer, req)?;
                    self.reqs[i].state = ReqState::NeedBuffer;
                    self.traced(req, ReqState::NeedBuffer);
                    self.buffers_dirty = false;
                    self.ask_for(req);
                } else {
                    self.set_state(req, ReqState::NeedBuffer)?;
                    self.ask_buffers();
                }
                // NEED_BUFFER waits for the grant (another event).
                Ok(false)
            }
        }
    }

    /// Upstream `nvmf_rdma_check_fused_ordering` (§6.10). Inlined: a normal
    /// command with no FIRST waiting (nearly every command) has nothing to do.
    #[inline]
    fn check_fused(&mut self, req: ReqId) -> Result<(), Bug> {
        let fuse = self.reqs[req.index()].cmd.fuse();
        if fuse == Fuse::Normal && self.fused_first.is_none() {
            return Ok(());
        }
        self.check_fused_slow(req, fuse)
    }

    /// [`Qpair::check_fused`] for a fused command or with a FIRST waiting.
    #[inline(never)]
    fn check_fused_slow(&mut self, req: ReqId, fuse: Fuse) -> Result<(), Bug> {
        if let Some(first) = self.fused_first.take() {
            if fuse == Fuse::Second {
                self.reqs[first.index()].fused.pair = Some(req);
                self.reqs[req.index()].fused.pair = Some(first);
                return Ok(());
            }
            self.fail_fused(first)?;
        }
        match fuse {
            Fuse::First => self.fused_first = Some(req),
            Fuse::Second => self.reqs[req.index()].fused.failed = true,
            Fuse::Normal | Fuse::Reserved => {}
        }
        Ok(())
    }

    fn fail_fused(&mut self, req: ReqId) -> Result<(), Bug> {
        let r = &mut self.reqs[req.index()];
        r.fused.failed = true;
        r.fused.pair = None;
        if r.state == ReqState::ReadyToExecute {
            self.drive(req)?;
        }
        Ok(())
    }

    /// READY_TO_EXECUTE's step; returns whether [`Qpair::drive`] must go on
    /// with `req` (only when it was answered with an error: an executed
    /// request waits in EXECUTING, a fused one for its partner).
    #[inline(always)]
    fn try_execute(&mut self, req: ReqId) -> Result<bool, Bug> {
        let fused = self.reqs[req.index()].fused;
        if !fused.failed && fused.pair.is_none() && self.fused_first.is_none() {
            // Not fused (nearly every command): hand it to the host.
            self.execute(req)?;
            return Ok(false);
        }
        self.try_execute_fused(req)
    }

    /// [`Qpair::try_execute`] for a fused command (or with a FIRST waiting).
    #[inline(never)]
    fn try_execute_fused(&mut self, req: ReqId) -> Result<bool, Bug> {
        let i = req.index();
        if self.reqs[i].fused.failed {
            self.fail_request(req, Status::ABORTED_MISSING_FUSED)?;
            return Ok(true);
        }
        if self.fused_first == Some(req) {
            return Ok(false); // a FIRST waiting for its SECOND
        }
        if let Some(partner) = self.reqs[i].fused.pair {
            if self.reqs[partner.index()].state != ReqState::ReadyToExecute {
                return Ok(false);
            }
            let (first, second) = if self.reqs[i].cmd.fuse() == Fuse::First {
                (req, partner)
            } else {
                (partner, req)
            };
            self.reqs[first.index()].fused.pair = None;
            self.reqs[second.index()].fused.pair = None;
            self.execute(first)?;
            self.execute(second)?;
            return Ok(false);
        }
        self.execute(req)?;
        Ok(false)
    }

    #[inline(always)]
    fn execute(&mut self, req: ReqId) -> Result<(), Bug> {
        self.step(req, ReqState::Executing)?;
        self.actions.push_back(Action::Execute { req });
        Ok(())
    }

    /// Answer `req` with a transport-generated error status.
    fn fail_request(&mut self, req: ReqId, status: Status) -> Result<(), Bug> {
        let i = req.index();
        let cid = self.reqs[i].cmd.cid();
        self.reqs[i].cpl = Completion::new(cid, status);
        self.notice(Notice::CommandFailed {
            qpair: self.cfg.label,
            req,
            cid,
            status,
        });
        self.queue_response(req)?;
        Ok(())
    }

    /// A response without data to send: READY_TO_COMPLETE_PENDING, or
    /// straight to READY_TO_COMPLETE when nobody is queued ahead and the send
    /// queue has room (the request would pass the pending-send head at once).
    /// The caller drives the request on. Returns whether it went straight to
    /// READY_TO_COMPLETE.
    fn queue_response(&mut self, req: ReqId) -> Result<bool, Bug> {
        let now = self.queues.is_empty(QueueKind::PendingSend)
            && self.send_depth < self.cfg.max_send_depth;
        let next = if now {
            ReqState::ReadyToComplete
        } else {
            ReqState::ReadyToCompletePending
        };
        self.set_state(req, next)?;
        Ok(now)
    }

    /// Whether the send queue has room for the WRITE chain of `req` and its
    /// SEND (upstream state 9's check).
    fn write_room(&self, req: ReqId) -> bool {
        let n = u32::from(self.reqs[req.index()].nwrs());
        self.send_depth + n < self.cfg.max_send_depth
    }

    /// How many READs of `req`'s chain the read and send depths allow now
    /// (`None`: none).
    fn read_room(&self, req: ReqId) -> Option<u32> {
        let remaining = u32::from(self.reqs[req.index()].remaining());
        let reads = u32::from(self.cfg.max_read_depth - self.read_depth);
        let sends = self.cfg.max_send_depth - self.send_depth;
        let count = remaining.min(reads).min(sends);
        (count > 0).then_some(count)
    }

    /// Posts the next `count` READs of `req`'s chain (`count` from
    /// [`Qpair::read_room`]; upstream state 4, with the split of
    /// `request_prepare_transfer_in_part`).
    fn post_reads(&mut self, req: ReqId, count: u32) -> Result<(), Bug> {
        let i = req.index();
        let remaining = u32::from(self.reqs[i].remaining());
        if count < remaining && self.reqs[i].posted == 0 {
            self.stats.split_reads += 1;
        }
        let first = self.reqs[i].posted;
        let count8 = count as u8;
        for k in first..first + count8 {
            self.reqs[i].inflight |= 1 << k;
        }
        self.reqs[i].ninflight += count8;
        self.reqs[i].posted += count8;
        self.read_depth += count as u16;
        self.send_depth += count;
        let partial = self.reqs[i].remaining() > 0;
        self.set_state(req, ReqState::TransferringHostToController { partial })?;
        self.actions.push_back(Action::PostReads {
            req,
            first,
            count: count8,
        });
        Ok(())
    }

    /// Upstream `request_transfer_out`: re-post the RECV, then post the
    /// WRITE chain (on success of a C2H command) and the SEND (one
    /// [`Action::PostResponse`] says all three).
    #[inline]
    fn transfer_out(&mut self, req: ReqId) -> Result<(), Bug> {
        let i = req.index();
        self.sq_head += 1;
        if self.sq_head >= self.cfg.sq_size {
            self.sq_head = 0;
        }
        self.reqs[i].cpl.sqhd = self.sq_head;
        let recv = match self.reqs[i].recv.take() {
            Some(recv) => {
                self.recv_depth -= 1;
                self.repost_recv(recv)
            }
            None => None,
        };
        let r = &self.reqs[i];
        let ok = r.cpl.status.sct == 0 && r.cpl.status.sc == 0;
        let writes = if ok && r.xfer == DataTransfer::ControllerToHost && r.has_buffers {
            r.nwrs()
        } else {
            0
        };
        let r = &mut self.reqs[i];
        r.inflight = if writes == 0 {
            0
        } else {
            (((1u32 << writes) - 1) & 0xffff) as u16
        };
        r.ninflight = writes;
        r.send_inflight = true;
        self.send_depth += u32::from(writes) + 1;
        self.actions
            .push_back(Action::PostResponse { req, writes, recv });
        if writes > 0 {
            self.step(req, ReqState::TransferringControllerToHost)
        } else {
            self.step(req, ReqState::Completing)
        }
    }

    /// A request nobody will answer any more can be dropped only when no WR
    /// names it and the host does not hold it.
    fn can_drop(&self, req: ReqId) -> bool {
        let r = &self.reqs[req.index()];
        !r.wrs_in_flight() && !r.state.host_owned()
    }

    /// COMPLETED → FREE: returns buffers, the RECV (SRQ) and the object.
    fn complete(&mut self, req: ReqId) -> Result<(), Bug> {
        let i = req.index();
        if self.reqs[i].wrs_in_flight() || self.reqs[i].state.host_owned() {
            return Err(Bug::InFlight {
                req,
                state: self.reqs[i].state,
            });
        }
        let state = self.reqs[i].state;
        if self.state != QpairState::Active
            && !matches!(state, ReqState::Completed | ReqState::Free)
        {
            self.notice(Notice::RequestDropped {
                qpair: self.cfg.label,
                req,
                state,
            });
        }
        // Most arrive COMPLETED already (the response SEND completed, the
        // host freed it): setting it again would change nothing.
        if state != ReqState::Completed {
            self.set_state(req, ReqState::Completed)?;
        }
        self.release(req);
        self.enter_free(req)
    }

    /// COMPLETED → FREE, the transition every request makes: the relink of
    /// [`Qpair::set_state`] written out for it (an unlinked request goes to
    /// the head of the free queue), inline instead of the general relink.
    #[inline]
    fn enter_free(&mut self, req: ReqId) -> Result<(), Bug> {
        let i = req.index();
        // COMPLETED is on no queue; the simulation build also checks the
        // link (see leave_free).
        #[cfg(feature = "sim")]
        let unlinked = self.queues.on(req).is_none();
        #[cfg(not(feature = "sim"))]
        let unlinked = true;
        if self.reqs[i].state != ReqState::Completed || !unlinked {
            return self.set_state(req, ReqState::Free);
        }
        self.queues.push_front(QueueKind::Free, req)?;
        self.in_use -= 1;
        self.reqs[i].state = ReqState::Free;
        Ok(())
    }

    /// Returns what a finished request holds (upstream `_nvmf_rdma_request_free`).
    fn release(&mut self, req: ReqId) {
        let i = req.index();
        self.cancel_buffer_ask(req);
        if self.reqs[i].has_buffers {
            self.reqs[i].has_buffers = false;
            self.actions.push_back(Action::ReleaseBuffers { req });
        }
        if let Some(recv) = self.reqs[i].recv.take() {
            // Also with SRQ (upstream 470cee22fb): an error-path completion
            // still owns its RECV.
            self.recv_depth -= 1;
            self.give_back_recv(recv);
        }
        if self.fused_first == Some(req) {
            self.fused_first = None;
        }
        let r = &mut self.reqs[i];
        let partner = r.fused.pair.take();
        r.fused = Default::default();
        r.posted = 0;
        r.shape = DataShape::None;
        r.xfer = DataTransfer::None;
        r.fabrics = false;
        r.plan.nwrs = 0;
        r.plan.nsges = 0;
        r.generation = r.generation.wrapping_add(1);
        if let Some(p) = partner {
            let pr = &mut self.reqs[p.index()];
            pr.fused.pair = None;
            pr.fused.failed = true;
            if pr.state == ReqState::ReadyToExecute {
                self.kicks.push_back(p);
            }
        }
    }

    /// The #3463 mistake, for the teeth test only: the request is completed on
    /// the error path while still linked in the pending-read queue, and put on
    /// the free queue over the same link.
    #[cfg(feature = "sim")]
    fn sim_buggy_complete(&mut self, req: ReqId) {
        self.release(req);
        self.reqs[req.index()].state = ReqState::Free;
        self.in_use -= 1;
        self.queues.corrupt_push_front(QueueKind::Free, req);
    }

    fn cancel_buffer_ask(&mut self, req: ReqId) {
        let r = &mut self.reqs[req.index()];
        if r.buffers_asked {
            r.buffers_asked = false;
            self.actions.push_back(Action::CancelBufferRequest { req });
        }
    }

    /// Asks the host for buffers for every queued fabrics command and for the
    /// first queued non-fabrics one (only when the pending-buffer queue
    /// changed since the last time: inlined, that check costs no call).
    #[inline]
    fn ask_buffers(&mut self) {
        if self.buffers_dirty {
            self.ask_buffers_now();
        }
    }

    /// [`Qpair::ask_buffers`] once the pending-buffer queue changed.
    #[inline(never)]
    fn ask_buffers_now(&mut self) {
        self.buffers_dirty = false;
        let mut cur = self.queues.head(QueueKind::PendingBuffer);
        while let Some(req) = cur {
            cur = self.queues.next(req);
            self.ask_for(req);
            if !self.reqs[req.index()].fabrics {
                break;
            }
        }
    }

    /// Asks the host for `req`'s buffers unless that was done already.
    #[inline(always)]
    fn ask_for(&mut self, req: ReqId) {
        let r = &mut self.reqs[req.index()];
        if !r.buffers_asked {
            r.buffers_asked = true;
            let len = r.shape.len();
            self.actions.push_back(Action::RequestBuffers { req, len });
        }
    }

    #[inline(always)]
    fn give_back_recv(&mut self, recv: RecvId) {
        if let Some(recv) = self.repost_recv(recv) {
            self.actions.push_back(Action::PostRecv { recv });
        }
    }

    /// A capsule's receive slot is done with: whether to post it again
    /// (`Some`, counted as posted) or retire it (the qpair is going away).
    #[inline(always)]
    fn repost_recv(&mut self, recv: RecvId) -> Option<RecvId> {
        if self.cfg.srq {
            // The SRQ outlives this qpair: always re-post.
            return Some(recv);
        }
        let slot = &mut self.recv_slots[recv.0 as usize];
        if self.state == QpairState::Active {
            *slot = RecvSlot::Posted;
            self.recvs_posted += 1;
            Some(recv)
        } else {
            *slot = RecvSlot::Retired;
            None
        }
    }

    fn enter_error(&mut self, reason: DisconnectReason) {
        if self.state == QpairState::Active {
            self.state = QpairState::Error;
        }
        if !self.host_told {
            self.host_told = true;
            self.actions.push_back(Action::HostDisconnect { reason });
        }
    }

    /// Run after every event: pending queues (upstream `process_pending`, on
    /// every event so nothing waits for a completion that will not come), then
    /// the teardown checks.
    ///
    /// Inlined: after most events of an active qpair nothing waits anywhere,
    /// and that check alone is cheaper than a call.
    #[inline]
    fn after_event(&mut self) {
        if self.state == QpairState::Active && self.nothing_pending() {
            return;
        }
        self.after_event_slow();
    }

    /// [`Qpair::after_event`] when something may wait, or the qpair is not
    /// active.
    #[inline(never)]
    fn after_event_slow(&mut self) {
        if let Err(e) = self.process_pending() {
            self.internal_error(e);
        }
        self.try_finish();
    }

    /// Nothing for `process_pending` to do on an active qpair: no pending
    /// request, no waiting capsule, no fused partner to re-run, no buffer
    /// request to make.
    #[inline]
    fn nothing_pending(&self) -> bool {
        !self.queues.any_pending()
            && self.incoming.is_empty()
            && self.kicks.is_empty()
            && !self.buffers_dirty
    }

    /// An internal step was refused: only an engine bug gets here; surface it
    /// loudly in tests, count and log it in release builds.
    #[cold]
    fn internal_error(&mut self, b: Bug) {
        let e = self.lift(b);
        self.stats.internal_errors += 1;
        debug_assert!(false, "engine internal error: {e}");
        tracing::error!(qpair = self.cfg.label, error = %e, "engine internal error");
    }

    fn process_pending(&mut self) -> Result<(), Bug> {
        if self.state != QpairState::Active {
            return self.drop_everything_droppable();
        }
        // The common case after an event: nothing waits anywhere.
        if self.nothing_pending() {
            return Ok(());
        }
        loop {
            let mut progress = false;
            for q in [
                QueueKind::PendingSend,
                QueueKind::PendingRead,
                QueueKind::PendingWrite,
            ] {
                while let Some(head) = self.queues.head(q) {
                    let before = self.reqs[head.index()].state;
                    self.drive(head)?;
                    if self.queues.head(q) == Some(head) && self.reqs[head.index()].state == before
                    {
                        break;
                    }
                    progress = true;
                }
            }
            while !self.incoming.is_empty() {
                let Some(req) = self.queues.head(QueueKind::Free) else {
                    self.stats.pending_free_request += 1;
                    break;
                };
                let Some(inc) = self.incoming.front() else {
                    break;
                };
                let (recv, parsed) = (inc.recv, inc.parsed);
                let r = &mut self.reqs[req.index()];
                r.cmd = inc.cmd;
                if let Ok(DataShape::Keyed { count, .. }) = parsed {
                    let n = usize::from(count);
                    r.segments[..n].copy_from_slice(&inc.segments[..n]);
                }
                self.incoming.pop_front();
                self.start(req, recv, parsed)?;
                progress = true;
            }
            self.ask_buffers();
            // Fused partners whose mate was freed.
            while let Some(k) = self.kicks.pop_front() {
                if self.reqs[k.index()].state == ReqState::ReadyToExecute {
                    self.drive(k)?;
                    progress = true;
                }
            }
            if !progress {
                return Ok(());
            }
        }
    }

    /// A free request takes the capsule in `recv`, whose command (and keyed
    /// segments) are already in the request object, and runs.
    #[inline(always)]
    fn start(
        &mut self,
        req: ReqId,
        recv: RecvId,
        parsed: Result<DataShape, Status>,
    ) -> Result<(), Bug> {
        let r = &mut self.reqs[req.index()];
        r.recv = Some(recv);
        r.fabrics = r.cmd.is_fabrics();
        r.cpl = Completion::new(r.cmd.cid(), Status::SUCCESS);
        match parsed {
            Ok(shape) => {
                r.shape = shape;
                // A layout other than None means the command's own direction
                // (the SGL parser refused bidirectional and zero-length ones).
                r.xfer = match shape {
                    DataShape::None => DataTransfer::None,
                    _ => r.cmd.data_transfer(),
                };
                debug_assert!(
                    shape == DataShape::None || r.xfer == effective_data_transfer(&r.cmd),
                    "layout and direction disagree"
                );
                self.leave_free(req)?;
                self.drive(req)
            }
            Err(status) => {
                r.shape = DataShape::None;
                r.xfer = effective_data_transfer(&r.cmd);
                self.leave_free(req)?;
                self.check_fused(req)?;
                self.fail_request(req, status)?;
                self.drive(req)
            }
        }
    }

    /// FREE → NEW, the transition every command makes: the relink of
    /// [`Qpair::set_state`] written out for it (off the free queue), inline
    /// instead of the general relink.
    #[inline(always)]
    fn leave_free(&mut self, req: ReqId) -> Result<(), Bug> {
        let i = req.index();
        // A FREE request is on the free queue (only set_state and its
        // written-out copies link); the simulation build also checks the
        // link (the #3463 teeth test corrupts links on purpose).
        #[cfg(feature = "sim")]
        let linked = self.queues.on(req) == Some(QueueKind::Free);
        #[cfg(not(feature = "sim"))]
        let linked = true;
        if self.reqs[i].state != ReqState::Free || !linked {
            return self.set_state(req, ReqState::New);
        }
        self.queues.remove(req);
        self.in_use += 1;
        self.reqs[i].state = ReqState::New;
        self.traced(req, ReqState::New);
        Ok(())
    }

    /// Error/draining: every request that no WR names and the host does not
    /// hold is finished without a response, and unpaired capsules are dropped.
    fn drop_everything_droppable(&mut self) -> Result<(), Bug> {
        while let Some(inc) = self.incoming.pop_front() {
            self.recv_depth -= 1;
            self.give_back_recv(inc.recv);
        }
        for i in 0..self.reqs.len() {
            let req = ReqId(i as u16);
            if self.reqs[i].state != ReqState::Free && self.can_drop(req) {
                self.complete(req)?;
            }
        }
        Ok(())
    }

    fn nic_drained(&self) -> bool {
        if self.send_depth != 0 {
            return false;
        }
        if self.cfg.srq {
            self.last_wqe || !self.cfg.last_wqe_reached_supported
        } else {
            self.recvs_posted == 0
        }
    }

    fn try_finish(&mut self) {
        if !matches!(self.state, QpairState::Draining { .. }) {
            return;
        }
        if !self.qp_destroyed && self.nic_drained() {
            self.qp_destroyed = true;
            self.actions.push_back(Action::DestroyQp { forced: false });
        }
        if self.qp_destroyed && self.in_use == 0 && self.incoming.is_empty() {
            self.state = QpairState::Finished;
            self.actions.push_back(Action::Finished);
        }
    }

    /// The drain deadline expired: declare every WR the NIC still owns lost,
    /// destroy the QP first, then release what those WRs named.
    fn force_drain(&mut self) -> Result<(), Bug> {
        let missing_last_wqe =
            self.cfg.srq && self.cfg.last_wqe_reached_supported && !self.last_wqe;
        self.notice(Notice::DrainDeadlineExpired {
            qpair: self.cfg.label,
            lost_send_wrs: self.send_depth,
            lost_recvs: u32::from(self.recvs_posted),
            missing_last_wqe,
        });
        self.qp_destroyed = true;
        self.actions.push_back(Action::DestroyQp { forced: true });
        for r in self.reqs.iter_mut() {
            r.inflight = 0;
            r.ninflight = 0;
            r.send_inflight = false;
        }
        self.send_depth = 0;
        self.read_depth = 0;
        for slot in self.recv_slots.iter_mut() {
            if *slot == RecvSlot::Posted {
                *slot = RecvSlot::Retired;
            }
        }
        self.recvs_posted = 0;
        for i in 0..self.reqs.len() {
            let req = ReqId(i as u16);
            if self.reqs[i].state != ReqState::Free && !self.reqs[i].state.host_owned() {
                self.complete(req)?;
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------------
    // Helpers
    // ------------------------------------------------------------------

    /// The error a refused internal step is reported as (with the qpair).
    #[cold]
    fn lift(&self, b: Bug) -> EngineError {
        b.with_qpair(self.cfg.label)
    }

    fn check_open(&self) -> Result<(), EngineError> {
        if self.state == QpairState::Finished {
            return Err(EngineError::Finished {
                qpair: self.cfg.label,
            });
        }
        Ok(())
    }

    fn req(&self, req: ReqId) -> Result<&Request, EngineError> {
        self.reqs
            .get(req.index())
            .ok_or(EngineError::UnknownRequest {
                qpair: self.cfg.label,
                req,
            })
    }

    fn wrong_state(&self, req: ReqId, event: &'static str) -> EngineError {
        EngineError::WrongState {
            qpair: self.cfg.label,
            req,
            state: self.reqs[req.index()].state,
            event,
        }
    }

    fn notice(&mut self, n: Notice) {
        self.actions.push_back(Action::Notice(n));
    }
}

/// The id of data WR `index` of `req` at `generation` (for errors).
#[cold]
fn data_wr_id(req: ReqId, index: u8, generation: u32) -> WrId {
    WrId::new(WrKind::Data {
        req,
        index,
        generation,
    })
}

/// Copies the command out of a received capsule into `cmd` and validates its
/// SGL, writing keyed segments into `segments`. A capsule shorter than a
/// command is answered with INVALID_FIELD (its CID is whatever arrived, 0 if
/// none).
#[inline(always)]
fn read_capsule(
    payload: &[u8],
    limits: &SglLimits,
    cmd: &mut Command,
    segments: &mut [KeyedSegment; MAX_SGL_DESCRIPTORS],
) -> Result<DataShape, Status> {
    let Some(c) = payload.get(..64).and_then(Command::from_slice) else {
        let mut raw = [0u8; 64];
        let n = payload.len().min(64);
        raw[..n].copy_from_slice(&payload[..n]);
        *cmd = Command::from_bytes(&raw);
        return Err(Status::INVALID_FIELD);
    };
    *cmd = c;
    // A WRITE chain and its SEND are posted together (upstream never splits
    // C2H); at most 16 WRITEs + SEND always fit, as QpairConfig::validate
    // requires max_send_depth >= MIN_SEND_DEPTH.
    parse_data_shape(cmd, &payload[64..], limits, segments).map_err(|e| e.status())
}

// The longest WRITE chain (one WR per descriptor) plus its SEND fits every
// send queue QpairConfig::validate accepts.
const _: () = assert!((MAX_SGL_DESCRIPTORS as u32) < super::config::MIN_SEND_DEPTH);

#[path = "invariants.rs"]
mod invariants;
pub use invariants::InvariantViolation;
