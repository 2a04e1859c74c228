//! One poll group: driven by one thread, a poller (CQ) per device, the
//! qpairs assigned to it, and the host's per-group part.
//!
//! Upstream: `nvmf_rdma_poll_group_create/add/poll/destroy`,
//! `nvmf_rdma_poller_poll`, `request_transfer_in/out` and the WR batching of
//! doc §4. The request logic itself is the engine's: this file turns work
//! completions, host answers and CM/IB events into engine events, and engine
//! actions into verbs calls.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::codec::nvme::{Completion, DataTransfer};
use crate::engine::codec::private_data::{CmAccept, CmReject, RejectStatus};
use crate::engine::codec::sgl::{SglLimits, MAX_SGL_DESCRIPTORS};
use crate::engine::{
    self, Action, DataRef, LocalSge, Notice, QpairConfig, RecvId, ReqId, Timestamp, WcStatus,
    MIN_SEND_DEPTH,
};
use crate::verbs::{
    Access, CmId, CompChannel, ConnParam, Cq, DmaBuf, QpInit, RecvWrList, SendFlags, SendOp,
    SendWrList, Sge, Srq, VerbsError, WorkCompletion,
};

use super::device::Device;
use super::host::{
    AbortResult, BufferGrant, Call, CallQueueFull, CommandData, Direction, FiniDone, GroupCalls,
    Host, HostGroup, QpairHandle, QpairInfo, RequestBuffers, RequestHandle,
    MAX_BUFFERS_PER_REQUEST,
};
use super::options::TransportOptions;
use super::pending::{
    AddQpairError, AddQpairFailure, DeviceEvent, DeviceMsg, PendingQpair, QpairEvent, QpairMsg,
};
use super::shared::Shared;
use super::stats::{PollGroupStats, PollerStats};
use super::target::Core;
use super::wrid;

/// Completions reaped per CQ per poll (upstream: 32).
const WC_BATCH: usize = 32;
/// Most polls one [`PollGroup::handle_event`] runs before returning (the
/// fd stays readable or the deadline due if work is left).
const MAX_EVENT_ROUNDS: usize = 64;
/// Bytes of one command capsule.
const CAPSULE: usize = 64;
/// Bytes of one response capsule.
const RESPONSE: usize = 16;
/// How long a qpair's teardown waits for the NIC to return every WR before
/// destroying the QP anyway, unless [`PollGroup::set_drain_timeout`] says
/// otherwise.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Receive buffers: one slot of 64 + `in_capsule_data_size` bytes per
/// receive, the time each slot last completed, and the RECVs waiting to be
/// posted. Per qpair without SRQ, per poller with SRQ.
struct RecvArea {
    buf: DmaBuf,
    slot_size: usize,
    time: Vec<u64>,
    list: RecvWrList,
}

impl RecvArea {
    fn new(pd: &crate::verbs::Pd, slots: usize, slot_size: usize) -> Result<RecvArea, VerbsError> {
        Ok(RecvArea {
            buf: DmaBuf::new(pd, slots * slot_size, Access::LOCAL_WRITE)?,
            slot_size,
            time: vec![0; slots],
            list: RecvWrList::with_capacity(slots, slots),
        })
    }

    /// Queues the RECV of slot `recv`.
    fn queue(&mut self, recv: RecvId) -> Result<(), VerbsError> {
        let sge = self
            .buf
            .sge(recv.0 as usize * self.slot_size, self.slot_size as u32)?;
        self.list
            .push(wrid::to_verbs(engine::WrId::recv(recv)), &[sge])
    }
}

/// A poller's shared receive queue and its receive buffers.
struct SrqRecv {
    srq: Srq,
    area: RecvArea,
    /// Slots whose post failed, re-queued at the next flush.
    retry: Vec<RecvId>,
}

struct Poller {
    device: usize,
    /// Completion channel of `cq` (interrupt mode; unused while polling).
    channel: CompChannel,
    /// The device had `IBV_EVENT_DEVICE_FATAL` and is not back yet: new
    /// qpairs are refused. The CQ is still polled so that flushes end the
    /// drain early; the drain deadline bounds it when the NIC returns nothing.
    device_dead: bool,
    cq: Cq,
    required_wr: u32,
    max_cqe: u32,
    stats: PollerStats,
    wcs: Vec<WorkCompletion>,
    srq: Option<SrqRecv>,
}

/// The receive area of a qpair: its own, or its poller's SRQ area.
fn recv_area<'a>(
    own: &'a mut Option<RecvArea>,
    srq: &'a mut Option<SrqRecv>,
) -> Option<&'a mut RecvArea> {
    match own {
        Some(a) => Some(a),
        None => srq.as_mut().map(|s| &mut s.area),
    }
}

/// Posts the SRQ's queued RECVs (one `ibv_post_srq_recv`).
fn flush_srq(srq: &mut SrqRecv, stats: &mut PollerStats) {
    for r in std::mem::take(&mut srq.retry) {
        if srq.area.queue(r).is_err() {
            srq.retry.push(r);
        }
    }
    if srq.area.list.is_empty() {
        return;
    }
    stats.recv_doorbell_updates += 1;
    if let Err(e) = srq.srq.post_recv(&mut srq.area.list) {
        tracing::error!("posting SRQ receives failed: {e}");
        let first = match e {
            VerbsError::Post { first_failed, .. } => first_failed,
            _ => 0,
        };
        for i in first..srq.area.list.len() {
            let recv = srq
                .area
                .list
                .raw_wr_id(i)
                .and_then(wrid::from_completion)
                .and_then(|raw| engine::WrId::from_raw(raw).ok())
                .and_then(|w| w.kind().ok());
            if let Some(engine::WrKind::Recv { recv }) = recv {
                srq.retry.push(recv);
            }
        }
        srq.area.list.clear();
    }
}

/// One qpair: its CM id (owning the QP), the engine, and the receive and
/// response memory. Field order matters for drop: the CM id (and QP) goes
/// before the memory it names.
struct Conn {
    cm_id: CmId,
    handle: QpairHandle,
    device: usize,
    poller: usize,
    qp_num: u32,
    engine: engine::Qpair,
    /// Receive buffers (without SRQ).
    recv: Option<RecvArea>,
    cpl_buf: DmaBuf,
    /// Buffers granted per request slot (SPDK: `req->iov`).
    granted: Vec<RequestBuffers>,
    req_start: Vec<u64>,
    sends: SendWrList,
    dirty: bool,
    cq_reserved: u32,
    qp_destroyed: bool,
    finished: bool,
    /// Raw engine WR ids whose post failed (fed back as flushed).
    failed: Vec<u64>,
}

/// An abort the engine could not do yet (victim moving data), retried at
/// every poll until its deadline (upstream `nvmf_rdma_qpair_abort_request`
/// with its `abort_timeout_sec` poller).
struct PendingAbort {
    qpair: QpairHandle,
    cid: u16,
    deadline: u64,
}

/// One poll group (upstream `spdk_nvmf_rdma_poll_group`), created with
/// [`super::Transport::create_poll_group`] and driven by one thread at a
/// time. Dropping it removes it from placement.
pub struct PollGroup<H: Host> {
    core: Arc<Core>,
    index: u16,
    host: H::Group,
    opts: TransportOptions,
    devices: Arc<Vec<Device>>,
    pollers: Vec<Poller>,
    conns: Vec<Option<Conn>>,
    generations: Vec<u32>,
    by_qpn: HashMap<(usize, u32), usize>,
    /// Host answers pushed during a group call, applied before it returns.
    calls: GroupCalls,
    /// Requests granted buffers synchronously during the current action
    /// batch (fed to the engine after it; reused, never shrunk).
    granted_now: Vec<ReqId>,
    /// Whether a public entry point is running (nested ones only queue).
    in_call: bool,
    aborts: Vec<PendingAbort>,
    shared: Arc<Shared>,
    pending_data_buffer: u64,
    drain_timeout_ns: u64,
}

impl<H: Host> PollGroup<H> {
    /// Creates the group (upstream `poll_group_create`): one CQ per device.
    pub(crate) fn new(index: u16, host: &H, core: Arc<Core>) -> Result<PollGroup<H>, VerbsError> {
        let opts = core.opts.clone();
        let devices = core.devices.clone();
        let shared = core.shared.clone();
        let mut group = host.create_group(index);
        let mut pollers = Vec::new();
        for (i, d) in devices.iter().enumerate() {
            // SRQ (upstream: unless no_srq or the device has none): one
            // SRQ of max_srq_depth RECVs and a CQ of 3 * max_srq_depth.
            // Without SRQ the CQ starts at `num_cqe` and grows per qpair
            // (upstream nvmf_rdma_resize_cq).
            let mut srq = None;
            let mut num_cqe = u32::try_from(opts.num_cqe.max(1)).unwrap_or(4096);
            if !opts.no_srq && d.attr.max_srq > 0 {
                let (depth, notice) = opts.srq_depth_for_device(d.attr.max_srq_wr);
                if let Some(n) = notice {
                    tracing::warn!(device = %d.name, "{n}");
                }
                let depth = depth.max(1);
                let slot_size = CAPSULE + opts.in_capsule_data_size as usize;
                let s = Srq::new(&d.pd, u32::from(depth), 1)?;
                let mut area = RecvArea::new(&d.pd, usize::from(depth), slot_size)?;
                for i in 0..depth {
                    area.queue(RecvId(u32::from(i)))?;
                }
                let mut sr = SrqRecv {
                    srq: s,
                    area,
                    retry: Vec::new(),
                };
                let mut st = PollerStats::new(d.name.clone());
                st.total_recv_wrs += u64::from(depth);
                flush_srq(&mut sr, &mut st);
                num_cqe = 3 * u32::from(depth);
                srq = Some((sr, st));
            }
            let num_cqe = num_cqe.min(d.attr.max_cqe.max(1));
            let channel = CompChannel::new(&d.ctx)?;
            channel.set_nonblocking()?;
            let cq = Cq::new(&d.ctx, num_cqe, Some(&channel))?;
            let (srq, stats) = match srq {
                Some((sr, st)) => (Some(sr), st),
                None => (None, PollerStats::new(d.name.clone())),
            };
            if let Err(e) = group.attach_device(i, &d.pd) {
                tracing::error!(group = index, device = %d.name, "host cannot use device: {e}");
            }
            pollers.push(Poller {
                device: i,
                channel,
                device_dead: false,
                cq,
                required_wr: 0,
                max_cqe: d.attr.max_cqe,
                stats,
                wcs: vec![WorkCompletion::EMPTY; WC_BATCH],
                srq,
            });
        }
        Ok(PollGroup {
            core,
            index,
            host: group,
            opts,
            devices,
            pollers,
            conns: Vec::new(),
            generations: Vec::new(),
            by_qpn: HashMap::new(),
            calls: GroupCalls::new(),
            granted_now: Vec::with_capacity(64),
            in_call: false,
            aborts: Vec::new(),
            shared,
            pending_data_buffer: 0,
            drain_timeout_ns: DEFAULT_DRAIN_TIMEOUT.as_nanos() as u64,
        })
    }

    /// This group's index (the `group` of its [`QpairHandle`]s).
    pub fn index(&self) -> u16 {
        self.index
    }

    /// How long a qpair's teardown waits for the NIC before destroying the
    /// QP anyway (default [`DEFAULT_DRAIN_TIMEOUT`]).
    pub fn set_drain_timeout(&mut self, timeout: Duration) {
        self.drain_timeout_ns = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
    }

    /// Interrupt mode: the fds that become readable when a completion
    /// arrives on an armed CQ (one completion channel per poller; upstream
    /// registers them with `SPDK_INTERRUPT_REGISTER_FOR_EVENTS`). Call
    /// [`PollGroup::arm`] once, then [`PollGroup::handle_event`] whenever one
    /// is readable or [`PollGroup::next_deadline`] passed.
    pub fn event_fds(&self) -> Vec<RawFd> {
        self.pollers.iter().map(|p| p.channel.fd()).collect()
    }

    /// Arms every CQ so that its next completion makes its fd readable.
    pub fn arm(&mut self) {
        for p in &self.pollers {
            if let Err(e) = p.cq.req_notify(false) {
                tracing::error!(group = self.index, device = %p.stats.name, "ibv_req_notify_cq failed: {e}");
            }
        }
    }

    /// "An event arrived" (upstream `nvmf_rdma_poller_intr`-style handler):
    /// takes every pending channel event, re-arms the CQs, then polls until
    /// nothing is left — completions reaped, host answers applied, deadlines
    /// fired, WRs flushed. Re-arming before the last poll means a completion
    /// that raced with it raises a new event. Returns the work done.
    pub fn handle_event(&mut self, now: u64) -> usize {
        for p in &self.pollers {
            loop {
                match p.channel.get_event() {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!(group = self.index, device = %p.stats.name, "ibv_get_cq_event failed: {e}");
                        break;
                    }
                }
            }
        }
        self.arm();
        let mut work = 0;
        for _ in 0..MAX_EVENT_ROUNDS {
            let n = self.poll(now);
            work += n;
            if n == 0 {
                break;
            }
        }
        work
    }

    /// When this group next needs [`PollGroup::handle_event`] even if no fd
    /// fires (a drain deadline, an abort's timeout), on the `now` clock.
    /// Aborts of busy victims are also retried at every event.
    pub fn next_deadline(&self) -> Option<u64> {
        let drains = self
            .conns
            .iter()
            .flatten()
            .filter_map(|c| c.engine.poll_timeout().map(|t| t.0));
        let aborts = self.aborts.iter().map(|a| a.deadline);
        drains.chain(aborts).min()
    }

    /// Live qpairs in this group.
    pub fn live_qpairs(&self) -> usize {
        self.conns.iter().filter(|c| c.is_some()).count()
    }

    /// Statistics (upstream `poll_group_dump_stat`).
    pub fn stats(&self) -> PollGroupStats {
        let mut devices: Vec<PollerStats> = self.pollers.iter().map(|p| p.stats.clone()).collect();
        // The engine counts waits per qpair: add the live qpairs' counts to
        // those of the qpairs already gone (folded in at reap).
        for c in self.conns.iter().flatten() {
            if let Some(d) = devices.get_mut(c.poller) {
                add_engine_waits(d, &c.engine.stats());
            }
        }
        PollGroupStats {
            pending_data_buffer: self.pending_data_buffer,
            devices,
        }
    }

    /// Handles a CM / IB async event the acceptor addressed to one of this
    /// group's qpairs (stale handles are ignored).
    pub fn deliver(&mut self, msg: QpairMsg, now: u64) {
        let Some(slot) = self.live_slot(msg.qpair) else {
            tracing::debug!(qpair = %msg.qpair, event = ?msg.event, "event for a qpair that is gone ignored");
            return;
        };
        self.with_conn(slot, now, |c| match msg.event {
            QpairEvent::CmDisconnected => c.engine.handle_peer_disconnected(),
            QpairEvent::QpFatal => c.engine.handle_qp_fatal(),
            QpairEvent::LastWqeReached => c.engine.handle_last_wqe_reached(),
        });
    }

    /// Handles a device event the acceptor sent to every group: on
    /// `IBV_EVENT_DEVICE_FATAL` every qpair on the device is torn down
    /// (bounded by the drain deadline) and new ones are refused until the
    /// device is back.
    pub fn deliver_device(&mut self, msg: DeviceMsg, now: u64) {
        let DeviceMsg { device, event } = msg;
        for p in self.pollers.iter_mut().filter(|p| p.device == device) {
            p.device_dead = event == DeviceEvent::Fatal;
        }
        if event == DeviceEvent::Fatal {
            for slot in 0..self.conns.len() {
                let on_device = self.conns[slot]
                    .as_ref()
                    .is_some_and(|c| c.device == device && !c.finished);
                if on_device {
                    self.with_conn(slot, now, |c| c.engine.handle_qp_fatal());
                }
            }
        }
    }

    /// The slot of `qpair` if it is a live, unfinished qpair of this group.
    fn live_slot(&self, qpair: QpairHandle) -> Option<usize> {
        let slot = qpair.slot as usize;
        let live = qpair.group == self.index
            && self
                .conns
                .get(slot)
                .is_some_and(|c| c.as_ref().is_some_and(|c| c.handle == qpair && !c.finished));
        live.then_some(slot)
    }

    /// Asks every qpair to go (shutdown): like a host disconnect.
    pub fn disconnect_all(&mut self, now: u64) {
        for slot in 0..self.conns.len() {
            let deadline = Timestamp(now + self.drain_timeout_ns);
            let Some(handle) = self.conns[slot]
                .as_ref()
                .filter(|c| !c.finished)
                .map(|c| c.handle)
            else {
                continue;
            };
            self.host.disconnect_requested(handle, &mut self.calls);
            self.with_conn(slot, now, |c| c.engine.handle_fini(deadline));
        }
    }

    /// Feeds one engine event to the qpair in `slot` and handles the actions.
    fn with_conn(
        &mut self,
        slot: usize,
        now: u64,
        f: impl FnOnce(&mut Conn) -> Result<(), engine::EngineError>,
    ) {
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if conn.finished {
            return;
        }
        if let Err(e) = f(conn) {
            tracing::warn!(qpair = %conn.handle, qp_num = conn.qp_num, "engine refused event: {e}");
        }
        self.run_actions(slot, now);
        // Host answers given during the batch, after it (nested: no-op).
        self.apply_calls(now);
    }

    /// Adds a connection to this group (upstream `poll_group_add`): CQ
    /// sizing, QP, engine, receive and response memory, the host's
    /// [`HostGroup::qpair_added`], initial RECVs, then `rdma_accept`. On
    /// failure nothing of the group changed and the qpair comes back in the
    /// error, still alive until the host finishes it
    /// ([`PendingQpair::reject`]).
    pub fn add_qpair(
        &mut self,
        mut pending: PendingQpair,
        now: u64,
    ) -> Result<QpairHandle, AddQpairError> {
        match self.setup_qpair(&mut pending) {
            Ok(conn) => Ok(self.start_qpair(conn, pending, now)),
            Err(failure) => Err(AddQpairError {
                group: self.index,
                failure,
                qpair: pending,
            }),
        }
    }

    /// Builds everything a qpair needs; on error undoes the CQ reservation.
    fn setup_qpair(&mut self, pending: &mut PendingQpair) -> Result<Conn, AddQpairFailure> {
        let pending = &mut *pending.0;
        let device = pending.device;
        let Some(poller_idx) = self.pollers.iter().position(|p| p.device == device) else {
            return Err(AddQpairFailure::NoPoller(device));
        };
        if self.pollers[poller_idx].device_dead {
            return Err(AddQpairFailure::DeviceDead(device));
        }
        let Some(cm_id) = pending.cm_id.as_mut() else {
            return Err(AddQpairFailure::Config(
                "the qpair was already finished".into(),
            ));
        };
        let negotiated = pending.negotiated;
        let dev = &self.devices[device];
        let qd = negotiated.max_queue_depth.max(1);
        let opts = &self.opts;
        let has_srq = self.pollers[poller_idx].srq.is_some();
        // CQ sizing (upstream nvmf_rdma_resize_cq, non-SRQ; with SRQ the CQ
        // is sized once for the SRQ and never resized).
        let need = if has_srq { 0 } else { 3 * u32::from(qd) + 2 };
        if !has_srq {
            let p = &mut self.pollers[poller_idx];
            let required = p.required_wr + need;
            if required > p.max_cqe {
                return Err(AddQpairFailure::CqFull {
                    required,
                    max_cqe: p.max_cqe,
                });
            }
            if p.cq.capacity() < required {
                let new = (2 * p.cq.capacity()).max(required).min(p.max_cqe);
                p.cq.resize(new).map_err(|e| AddQpairFailure::Verbs {
                    what: "ibv_resize_cq",
                    reason: format!("to {new}: {e}"),
                })?;
            }
            p.required_wr = required;
        }
        let undo = |pollers: &mut Vec<Poller>, failure: AddQpairFailure| {
            pollers[poller_idx].required_wr -= need;
            failure
        };
        let max_send_wr = (2 * u32::from(qd)).max(MIN_SEND_DEPTH);
        let max_send_sge = dev.attr.max_sge.clamp(1, 16);
        let qp = {
            let p = &self.pollers[poller_idx];
            let cq = &p.cq;
            cm_id.create_qp(
                &dev.pd,
                &QpInit {
                    send_cq: cq,
                    recv_cq: cq,
                    srq: p.srq.as_ref().map(|s| &s.srq),
                    max_send_wr,
                    max_recv_wr: u32::from(qd),
                    max_send_sge,
                    max_recv_sge: 1,
                    max_inline_data: 0,
                },
            )
        };
        let (qp_num, caps) = match qp {
            Ok(qp) => (qp.qp_num(), qp.caps()),
            Err(e) => {
                let f = AddQpairFailure::Verbs {
                    what: "rdma_create_qp",
                    reason: e.to_string(),
                };
                return Err(undo(&mut self.pollers, f));
            }
        };
        let cfg = QpairConfig {
            label: qp_num,
            max_queue_depth: qd,
            max_read_depth: negotiated.max_read_depth.max(1),
            max_send_depth: caps.max_send_wr.min(max_send_wr),
            sq_size: pending.request.hsqsize.saturating_add(1).max(1),
            srq: has_srq,
            last_wqe_reached_supported: !dev.soft_roce,
            send_with_invalidate: dev.send_with_invalidate,
            sgl: SglLimits {
                in_capsule_data_size: opts.in_capsule_data_size,
                max_io_size: opts.max_io_size,
                max_descriptors: MAX_SGL_DESCRIPTORS,
            },
        };
        let engine = match engine::Qpair::new(cfg) {
            Ok(e) => e,
            Err(e) => {
                let f = AddQpairFailure::Config(e.to_string());
                return Err(undo(&mut self.pollers, f));
            }
        };
        let slot_size = CAPSULE + opts.in_capsule_data_size as usize;
        let n = usize::from(qd);
        let bufs = if has_srq {
            Ok(None)
        } else {
            RecvArea::new(&dev.pd, n, slot_size).map(Some)
        }
        .and_then(|r| Ok((r, DmaBuf::new(&dev.pd, n * RESPONSE, Access::LOCAL_WRITE)?)));
        let (recv, cpl_buf) = match bufs {
            Ok(b) => b,
            Err(e) => {
                let f = AddQpairFailure::Verbs {
                    what: "allocating qpair memory",
                    reason: e.to_string(),
                };
                return Err(undo(&mut self.pollers, f));
            }
        };
        let slot = match self.conns.iter().position(Option::is_none) {
            Some(s) => s,
            None => {
                self.conns.push(None);
                self.generations.push(0);
                self.conns.len() - 1
            }
        };
        self.generations[slot] = self.generations[slot].wrapping_add(1);
        let handle = QpairHandle {
            group: self.index,
            slot: slot as u32,
            generation: self.generations[slot],
        };
        let info = QpairInfo {
            handle,
            qid: negotiated.qid,
            queue_depth: qd,
            peer: cm_id.peer_addr(),
            local: cm_id.local_addr(),
            listen: pending.listen,
            device: dev.name.clone(),
        };
        let sges = max_send_sge as usize;
        if !self.host.qpair_added(&info) {
            return Err(undo(&mut self.pollers, AddQpairFailure::HostRefused));
        }
        let Some(cm_id) = pending.cm_id.take() else {
            return Err(undo(
                &mut self.pollers,
                AddQpairFailure::Config("the qpair was already finished".into()),
            ));
        };
        Ok(Conn {
            cm_id,
            handle,
            device,
            poller: poller_idx,
            qp_num,
            engine,
            recv,
            cpl_buf,
            granted: vec![RequestBuffers::default(); n],
            req_start: vec![0; n],
            sends: SendWrList::with_capacity(max_send_wr as usize, max_send_wr as usize * sges),
            dirty: false,
            cq_reserved: need,
            qp_destroyed: false,
            finished: false,
            failed: Vec::new(),
        })
    }

    /// Installs a set-up qpair, posts its initial RECVs and accepts.
    fn start_qpair(&mut self, conn: Conn, pending: PendingQpair, now: u64) -> QpairHandle {
        let handle = conn.handle;
        let slot = handle.slot as usize;
        let (device, qp_num, id_key) = (conn.device, conn.qp_num, conn.cm_id.key());
        let qd = conn.engine.config().max_queue_depth;
        self.calls.reserve(calls_per_qpair(qd));
        self.conns[slot] = Some(conn);
        self.by_qpn.insert((device, qp_num), slot);
        {
            let mut routes = self.shared.routes();
            routes.by_qpn.insert((device, qp_num), handle);
            routes.by_cm.insert(id_key, handle);
        }
        // Post the initial RECVs (engine actions), then accept.
        self.run_actions(slot, now);
        self.flush(slot, now);
        let Some(conn) = self.conns[slot].as_mut() else {
            return handle;
        };
        let accept = CmAccept {
            recfmt: 0,
            crqsize: qd,
        };
        let pd = accept.to_bytes();
        let param = ConnParam {
            private_data: &pd,
            responder_resources: 0,
            initiator_depth: u8::try_from(conn.engine.config().max_read_depth).unwrap_or(u8::MAX),
            retry_count: 7,
            rnr_retry_count: 7,
        };
        self.shared.qpairs_created.fetch_add(1, Ordering::Relaxed);
        self.shared.live_qpairs.fetch_add(1, Ordering::Relaxed);
        self.shared.count_device_qpair(device, 1);
        match conn.cm_id.accept(&param) {
            Ok(()) => tracing::info!(
                qpair = %handle, qp_num, qid = pending.0.negotiated.qid, queue_depth = qd,
                read_depth = pending.0.negotiated.max_read_depth, peer = ?conn.cm_id.peer_addr(), "qpair accepted"
            ),
            Err(e) => {
                tracing::error!(qpair = %handle, qp_num, "rdma_accept failed: {e}");
                let r = CmReject {
                    recfmt: 0,
                    status: RejectStatus::NoResources,
                };
                let _ = conn.cm_id.reject(&r.to_bytes());
                let deadline = Timestamp(now + self.drain_timeout_ns);
                self.host.disconnect_requested(handle, &mut self.calls);
                self.with_conn(slot, now, |c| c.engine.handle_fini(deadline));
            }
        }
        handle
    }

    /// One pass: completions, host answers, timers, WR flush. Returns the
    /// amount of work done (0 = idle).
    pub fn poll(&mut self, now: u64) -> usize {
        let mut work = 0;
        for p in 0..self.pollers.len() {
            work += self.poll_cq(p, now);
        }
        self.host.poll(now, &mut self.calls);
        work += self.calls.len();
        self.apply_calls(now);
        self.retry_aborts(now);
        for slot in 0..self.conns.len() {
            let due = self.conns[slot]
                .as_ref()
                .and_then(|c| c.engine.poll_timeout())
                .is_some_and(|t| t.0 <= now);
            if due {
                self.with_conn(slot, now, |c| c.engine.handle_timeout(Timestamp(now)));
            }
        }
        for slot in 0..self.conns.len() {
            if self.conns[slot].as_ref().is_some_and(|c| c.dirty) {
                self.flush(slot, now);
            }
        }
        for p in &mut self.pollers {
            if let Some(srq) = p.srq.as_mut() {
                if !srq.area.list.is_empty() || !srq.retry.is_empty() {
                    flush_srq(srq, &mut p.stats);
                }
            }
        }
        self.reap(now);
        work
    }

    fn poll_cq(&mut self, p: usize, now: u64) -> usize {
        let mut wcs = std::mem::take(&mut self.pollers[p].wcs);
        let n = match self.pollers[p].cq.poll(&mut wcs) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(group = self.index, "ibv_poll_cq failed: {e}");
                0
            }
        };
        {
            let st = &mut self.pollers[p].stats;
            st.polls += 1;
            if n == 0 {
                st.idle_polls += 1;
            }
            st.completions += n as u64;
        }
        let device = self.pollers[p].device;
        for wc in &wcs[..n] {
            self.handle_wc(p, device, wc, now);
        }
        self.pollers[p].wcs = wcs;
        n
    }

    fn handle_wc(&mut self, p: usize, device: usize, wc: &WorkCompletion, now: u64) {
        let Some(&slot) = self.by_qpn.get(&(device, wc.qp_num())) else {
            // SRQ: a receive consumed by a QP that is gone goes straight back
            // to the SRQ (upstream nvmf_rdma_poller_poll).
            let recv = wrid::from_completion(wc.raw_wr_id())
                .and_then(|raw| engine::WrId::from_raw(raw).ok())
                .and_then(|w| w.kind().ok());
            if let (Some(engine::WrKind::Recv { recv }), Some(srq)) =
                (recv, self.pollers[p].srq.as_mut())
            {
                if srq.area.queue(recv).is_err() {
                    srq.retry.push(recv);
                }
                self.pollers[p].stats.total_recv_wrs += 1;
                return;
            }
            tracing::debug!(
                qp_num = wc.qp_num(),
                wr_id = wc.raw_wr_id(),
                "completion for an unknown QP ignored"
            );
            return;
        };
        let Some(raw) = wrid::from_completion(wc.raw_wr_id()) else {
            tracing::error!(
                qp_num = wc.qp_num(),
                wr_id = wc.raw_wr_id(),
                "completion with a foreign wr_id ignored"
            );
            return;
        };
        let status = wrid::status(wc.status());
        if status == WcStatus::Flushed {
            self.shared.wc_flushed.fetch_add(1, Ordering::Relaxed);
        } else if !status.is_success() {
            self.shared.wc_errors.fetch_add(1, Ordering::Relaxed);
        }
        let Some(conn) = self.conns[slot].as_mut() else {
            return;
        };
        let kind = engine::WrId::from_raw(raw).ok().and_then(|w| w.kind().ok());
        let mut recv_slot = None;
        match kind {
            Some(engine::WrKind::Recv { recv }) if status.is_success() => {
                let poller = &mut self.pollers[p];
                if let Some(area) = recv_area(&mut conn.recv, &mut poller.srq) {
                    recv_slot = Some((recv, (wc.byte_len() as usize).min(area.slot_size)));
                    if let Some(t) = area.time.get_mut(recv.0 as usize) {
                        *t = now;
                    }
                }
                poller.stats.requests += 1;
            }
            Some(engine::WrKind::Send { req, .. }) if status.is_success() => {
                if let Some(t) = conn.req_start.get(req.index()) {
                    self.pollers[p].stats.request_latency += now.saturating_sub(*t);
                }
            }
            _ => {}
        }
        // The capsule is read in place: the slot is not re-posted before the
        // engine returns it (Action::PostRecv).
        let area = recv_area(&mut conn.recv, &mut self.pollers[p].srq);
        let payload = match (recv_slot, area) {
            (Some((recv, len)), Some(area)) => area
                .buf
                .view(recv.0 as usize * area.slot_size, len)
                .unwrap_or_else(|e| {
                    tracing::error!(qpair = %conn.handle, "reading receive slot {}: {e}", recv.0);
                    &[]
                }),
            _ => &[],
        };
        if let Err(e) = conn.engine.handle_completion(raw, status, payload) {
            tracing::warn!(qpair = %conn.handle, qp_num = conn.qp_num, %status, "completion refused by the engine: {e}");
        }
        self.run_actions(slot, now);
    }

    /// A command finished (SPDK `req_complete`). Applied at once, or queued
    /// if a group call is in progress on this thread.
    pub fn complete(&mut self, req: RequestHandle, completion: Completion, now: u64) {
        let pushed = self.calls.complete(req, completion);
        self.pushed(pushed, now);
    }

    /// A command is dropped without a response (SPDK `req_free`).
    pub fn free(&mut self, req: RequestHandle, now: u64) {
        let pushed = self.calls.free(req);
        self.pushed(pushed, now);
    }

    /// Buffers for an earlier [`BufferGrant::Later`].
    pub fn buffers_ready(&mut self, req: RequestHandle, buffers: &RequestBuffers, now: u64) {
        let pushed = self.calls.buffers_ready(req, buffers);
        self.pushed(pushed, now);
    }

    /// The host wants the qpair gone (SPDK `qpair_fini`); `done` runs when
    /// the host may reuse the queue id (at once, as upstream); the
    /// transport's qpair lives until the NIC returned every WR.
    pub fn fini(&mut self, qpair: QpairHandle, done: Option<FiniDone>, now: u64) {
        let pushed = self.calls.fini(qpair, done);
        self.pushed(pushed, now);
    }

    /// Aborts command `cid` of `qpair` if the transport still holds it
    /// (SPDK `qpair_abort_request`), with a synchronous outcome.
    pub fn abort(&mut self, qpair: QpairHandle, cid: u16, now: u64) -> AbortResult {
        let Some(slot) = self.live_slot(qpair) else {
            return AbortResult::NotFound;
        };
        let mut result = AbortResult::NotFound;
        self.with_conn(slot, now, |c| {
            let outcome = c.engine.abort(cid)?;
            tracing::info!(qpair = %c.handle, cid, ?outcome, "abort");
            result = match outcome {
                engine::AbortOutcome::Aborted(_) => AbortResult::Aborted,
                engine::AbortOutcome::Executing(r) => AbortResult::Executing(request_handle(c, r)),
                engine::AbortOutcome::Busy(_) => AbortResult::Retrying,
                engine::AbortOutcome::NotFound | engine::AbortOutcome::TooLate(_) => {
                    AbortResult::NotFound
                }
            };
            Ok(())
        });
        if result == AbortResult::Retrying {
            let timeout = u64::from(self.opts.abort_timeout_sec) * 1_000_000_000;
            self.aborts.push(PendingAbort {
                qpair,
                cid,
                deadline: now.saturating_add(timeout),
            });
        }
        self.apply_calls(now);
        result
    }

    /// Retries aborts whose victim was moving data.
    fn retry_aborts(&mut self, now: u64) {
        let mut i = 0;
        while i < self.aborts.len() {
            let PendingAbort {
                qpair,
                cid,
                deadline,
            } = self.aborts[i];
            let mut outcome = None;
            if let Some(slot) = self.live_slot(qpair) {
                self.with_conn(slot, now, |c| {
                    outcome = Some(c.engine.abort(cid)?);
                    Ok(())
                });
            }
            let done = match outcome {
                Some(engine::AbortOutcome::Aborted(_)) => Some(true),
                Some(engine::AbortOutcome::Busy(_)) if now < deadline => None,
                _ => Some(false),
            };
            match done {
                Some(aborted) => {
                    self.aborts.swap_remove(i);
                    tracing::info!(%qpair, cid, aborted, "abort retry finished");
                    self.host.abort_finished(qpair, cid, aborted);
                }
                None => i += 1,
            }
        }
        self.apply_calls(now);
    }

    /// After a host answer was queued: applies the queue unless a group
    /// call is running (then the outermost one applies it before returning).
    fn pushed(&mut self, pushed: Result<(), CallQueueFull>, now: u64) {
        if let Err(e) = pushed {
            tracing::error!(group = self.index, "host answer dropped: {e}");
        }
        self.apply_calls(now);
    }

    /// Applies every queued host answer, in order, until none is left
    /// (answers may queue more). Nested calls return at once.
    fn apply_calls(&mut self, now: u64) {
        if self.in_call {
            return;
        }
        self.in_call = true;
        while let Some(call) = self.calls.pop() {
            self.apply_call(call, now);
        }
        self.in_call = false;
    }

    fn apply_call(&mut self, call: Call, now: u64) {
        match call {
            Call::Complete { req, completion } => {
                self.command_back(req);
                if let Some(slot) = self.live_slot(req.qpair) {
                    self.with_conn(slot, now, |c| {
                        c.engine
                            .handle_command_executed(ReqId(req.slot), completion)
                    });
                }
            }
            Call::Free { req } => {
                self.command_back(req);
                if let Some(slot) = self.live_slot(req.qpair) {
                    self.with_conn(slot, now, |c| {
                        c.engine.handle_command_freed(ReqId(req.slot))
                    });
                }
            }
            Call::BuffersReady { req } => {
                let Some(buffers) = self.calls.take_ready() else {
                    tracing::error!(%req, "buffers_ready without buffers");
                    return;
                };
                let Some(slot) = self.live_slot(req.qpair) else {
                    tracing::debug!(%req, "buffers for a qpair that is gone: returned");
                    self.host.release_buffers(req, &buffers, &mut self.calls);
                    return;
                };
                let Some(c) = self.conns[slot].as_mut() else {
                    return;
                };
                let holder = c.granted.get(req.slot as usize).map(RequestBuffers::len);
                if holder != Some(0) {
                    self.shared.internal_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(%req, held = ?holder, "internal error: buffers granted to a request that cannot hold them; returned");
                    self.host.release_buffers(req, &buffers, &mut self.calls);
                    return;
                }
                c.granted[req.slot as usize] = buffers;
                self.feed_grant(slot, ReqId(req.slot), now);
            }
            Call::Fini { qpair, done } => {
                if let Some(slot) = self.live_slot(qpair) {
                    let deadline = Timestamp(now + self.drain_timeout_ns);
                    self.with_conn(slot, now, |c| c.engine.handle_fini(deadline));
                }
                if let Some(done) = done {
                    done(qpair);
                }
            }
        }
    }

    /// Feeds the buffers in the request's storage to the engine.
    fn feed_grant(&mut self, slot: usize, req: ReqId, now: u64) {
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        grant(conn, req, &mut self.host, &mut self.calls, &self.shared);
        self.run_actions(slot, now);
    }

    /// A command the host had comes back (completed or freed).
    fn command_back(&self, req: RequestHandle) {
        if !self.shared.take(&self.shared.commands_in_host, 1) {
            tracing::error!(%req, "internal error: the host answered a command it was not holding (commands_in_host already 0)");
        }
    }

    /// Handles every pending engine action of the qpair in `slot`, in order,
    /// then feeds answers the host gave synchronously, until quiet.
    fn run_actions(&mut self, slot: usize, now: u64) {
        let batching = !self.opts.no_wr_batching;
        loop {
            let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
                return;
            };
            let poller = &mut self.pollers[conn.poller];
            let mut ctx = ActionCtx {
                host: &mut self.host,
                calls: &mut self.calls,
                stats: &mut poller.stats,
                srq: &mut poller.srq,
                shared: &self.shared,
                granted_now: &mut self.granted_now,
                pending_data_buffer: &mut self.pending_data_buffer,
                now,
            };
            while let Some(action) = conn.engine.poll_action() {
                handle_action(action, conn, &mut ctx);
                if !batching && conn.dirty {
                    flush_conn(conn, ctx.stats);
                }
                if !batching {
                    if let Some(srq) = ctx.srq.as_mut() {
                        flush_srq(srq, ctx.stats);
                    }
                }
            }
            if conn.qp_destroyed {
                conn.sends.clear();
                if let Some(r) = conn.recv.as_mut() {
                    r.list.clear();
                }
            }
            if !conn.failed.is_empty() {
                // These WRs never reached the NIC: they are not completions
                // (a SEND reported as flushed would tell the engine that the
                // WRITEs before it are done while they may still be in flight).
                for raw in conn.failed.drain(..) {
                    if let Err(e) = conn.engine.handle_wr_not_posted(raw) {
                        tracing::warn!(qpair = %conn.handle, wr_id = raw, "unposted WR refused by the engine: {e}");
                    }
                }
                continue;
            }
            if self.granted_now.is_empty() {
                return;
            }
            for req in self.granted_now.drain(..) {
                grant(conn, req, &mut self.host, &mut self.calls, &self.shared);
            }
        }
    }

    fn flush(&mut self, slot: usize, now: u64) {
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        flush_conn(conn, &mut self.pollers[conn.poller].stats);
        if !conn.failed.is_empty() {
            self.run_actions(slot, now);
        }
    }

    /// Frees qpairs the engine declared finished.
    fn reap(&mut self, _now: u64) {
        for slot in 0..self.conns.len() {
            let done = self.conns[slot].as_ref().is_some_and(|c| c.finished);
            if !done {
                continue;
            }
            if let Some(conn) = self.conns[slot].take() {
                self.forget(&conn);
                tracing::info!(qpair = %conn.handle, qp_num = conn.qp_num, "qpair destroyed");
                drop(conn);
            }
        }
    }
}

impl<H: Host> PollGroup<H> {
    /// Force-finishes every qpair (upstream `poll_group_destroy`): the drain
    /// deadline is now, so each QP is destroyed at once and the buffers its
    /// WRs named are released; a qpair whose commands the host still holds
    /// is dropped after its buffers went back (the host is told with
    /// `qpair_gone` and must drop those commands). Returns with every buffer
    /// returned to the host and no qpair left.
    fn force_finish_all(&mut self, now: u64) {
        let deadline = Timestamp(now);
        for slot in 0..self.conns.len() {
            self.with_conn(slot, now, |c| c.engine.handle_fini(deadline));
            self.with_conn(slot, now, |c| c.engine.handle_timeout(deadline));
        }
        self.apply_calls(now);
        self.reap(now);
        for slot in 0..self.conns.len() {
            let Some(mut conn) = self.conns[slot].take() else {
                continue;
            };
            let mut held = 0u64;
            for i in 0..conn.granted.len() {
                let req = ReqId(i as u16);
                if conn.engine.request_state(req) == Some(engine::ReqState::Executing) {
                    held += 1;
                }
                let h = request_handle(&conn, req);
                let g = &mut conn.granted[i];
                if !g.is_empty() {
                    if !self.shared.take(&self.shared.buffers_held, g.len() as u64) {
                        tracing::error!(%h, buffers = g.len(), "internal error: releasing buffers that are not counted as held");
                    }
                    self.host.release_buffers(h, g, &mut self.calls);
                    g.clear();
                }
            }
            if !self.shared.take(&self.shared.commands_in_host, held) {
                tracing::error!(qpair = %conn.handle, held, "internal error: commands_in_host below the commands dropped");
            }
            if !conn.finished {
                self.host.qpair_gone(conn.handle);
            }
            tracing::warn!(qpair = %conn.handle, commands_in_host = held, "poll group destroyed: qpair dropped");
            self.forget(&conn);
            self.shared.qpairs_forced.fetch_add(1, Ordering::Relaxed);
        }
        // Answers the host gave meanwhile are for qpairs that are gone.
        while self.calls.pop().is_some() {}
        while self.calls.take_ready().is_some() {}
    }

    /// Removes a qpair's routes and counts it destroyed.
    fn forget(&mut self, conn: &Conn) {
        self.by_qpn.remove(&(conn.device, conn.qp_num));
        self.shared
            .routes()
            .remove(conn.cm_id.key(), (conn.device, conn.qp_num), conn.handle);
        self.pollers[conn.poller].required_wr -= conn.cq_reserved;
        self.calls
            .unreserve(calls_per_qpair(conn.engine.config().max_queue_depth));
        add_engine_waits(&mut self.pollers[conn.poller].stats, &conn.engine.stats());
        self.shared.live_qpairs.fetch_sub(1, Ordering::Relaxed);
        self.shared.count_device_qpair(conn.device, -1);
        self.shared.qpairs_destroyed.fetch_add(1, Ordering::Relaxed);
    }
}

impl<H: Host> Drop for PollGroup<H> {
    /// Upstream `poll_group_destroy`: force-finishes every qpair and returns
    /// every buffer before the host's group goes, then leaves placement.
    fn drop(&mut self) {
        let live = self.live_qpairs();
        if live > 0 {
            tracing::warn!(
                group = self.index,
                live,
                "destroying a poll group with live qpairs"
            );
            // The engine's clock: only the relative drain deadline matters.
            self.force_finish_all(u64::MAX / 2);
        }
        self.core.groups.unregister(self.index);
    }
}

/// Host answers one qpair can have queued at once: per request slot one
/// completion or free and one buffer grant, plus a fini.
fn calls_per_qpair(queue_depth: u16) -> usize {
    2 * usize::from(queue_depth) + 1
}

fn add_engine_waits(d: &mut PollerStats, s: &engine::Stats) {
    d.pending_free_request += s.pending_free_request;
    d.pending_rdma_read += s.pending_rdma_read;
    d.pending_rdma_write += s.pending_rdma_write;
    d.pending_rdma_send += s.pending_rdma_send;
}
/// Feeds the buffers in `req`'s storage to the engine; if it refuses them
/// (on error it took nothing) they go straight back to the host.
fn grant<G: HostGroup>(
    c: &mut Conn,
    req: ReqId,
    host: &mut G,
    calls: &mut GroupCalls,
    shared: &Shared,
) {
    let Some(g) = c.granted.get_mut(req.index()) else {
        return;
    };
    let mut sges = [LocalSge {
        addr: 0,
        len: 0,
        lkey: 0,
    }; MAX_BUFFERS_PER_REQUEST];
    let mut n = 0;
    for (dst, s) in sges.iter_mut().zip(g.iter()) {
        *dst = LocalSge {
            addr: s.addr(),
            len: s.length(),
            lkey: s.lkey(),
        };
        n += 1;
    }
    if let Err(e) = c.engine.handle_buffers_granted(req, &sges[..n]) {
        // Nothing was taken (request withdrawn, qpair tearing down): the
        // buffers were never counted and go straight back.
        tracing::warn!(qpair = %c.handle, req = req.0, buffers = n, "buffer grant refused: {e}; returned");
        let h = RequestHandle {
            qpair: c.handle,
            slot: req.0,
            generation: 0,
        };
        host.release_buffers(h, g, calls);
        g.clear();
        return;
    }
    shared.buffers_held.fetch_add(n as u64, Ordering::Relaxed);
}

fn request_handle(c: &Conn, req: ReqId) -> RequestHandle {
    RequestHandle {
        qpair: c.handle,
        slot: req.0,
        generation: 0,
    }
}

fn flush_conn(conn: &mut Conn, stats: &mut PollerStats) {
    conn.dirty = false;
    let recvs = conn.recv.as_mut().map(|r| &mut r.list);
    let Some(qp) = conn.cm_id.qp().filter(|_| !conn.qp_destroyed) else {
        conn.sends.clear();
        if let Some(l) = recvs {
            l.clear();
        }
        return;
    };
    if let Some(recvs) = recvs.filter(|l| !l.is_empty()) {
        stats.recv_doorbell_updates += 1;
        if let Err(e) = qp.post_recv(recvs) {
            tracing::error!(qpair = %conn.handle, qp_num = conn.qp_num, "posting RECVs failed: {e}");
            let first = match e {
                VerbsError::Post { first_failed, .. } => first_failed,
                _ => 0,
            };
            for i in first..recvs.len() {
                if let Some(raw) = recvs.raw_wr_id(i).and_then(wrid::from_completion) {
                    conn.failed.push(raw);
                }
            }
            recvs.clear();
        }
    }
    if !conn.sends.is_empty() {
        stats.send_doorbell_updates += 1;
        if let Err(e) = qp.post_send(&mut conn.sends) {
            tracing::error!(qpair = %conn.handle, qp_num = conn.qp_num, "posting sends failed: {e}");
            let first = match e {
                VerbsError::Post { first_failed, .. } => first_failed,
                _ => 0,
            };
            for i in first..conn.sends.len() {
                if let Some(raw) = conn.sends.raw_wr_id(i).and_then(wrid::from_completion) {
                    conn.failed.push(raw);
                }
            }
            conn.sends.clear();
        }
    }
}

/// What action handling needs besides the qpair (split borrows of the
/// group's fields).
struct ActionCtx<'a, G: HostGroup> {
    host: &'a mut G,
    calls: &'a mut GroupCalls,
    stats: &'a mut PollerStats,
    srq: &'a mut Option<SrqRecv>,
    shared: &'a Shared,
    granted_now: &'a mut Vec<ReqId>,
    pending_data_buffer: &'a mut u64,
    now: u64,
}

fn handle_action<G: HostGroup>(action: Action, conn: &mut Conn, cx: &mut ActionCtx<'_, G>) {
    match action {
        Action::PostRecv { recv } => {
            let own = conn.recv.is_some();
            match recv_area(&mut conn.recv, cx.srq).map(|a| a.queue(recv)) {
                Some(Ok(())) => {
                    cx.stats.total_recv_wrs += 1;
                    conn.dirty |= own;
                }
                Some(Err(e)) if own => {
                    tracing::error!(qpair = %conn.handle, "queueing RECV {}: {e}", recv.0);
                    conn.failed.push(engine::WrId::recv(recv).to_raw());
                }
                Some(Err(e)) => {
                    tracing::warn!(qpair = %conn.handle, "queueing SRQ RECV {}: {e}; retried", recv.0);
                    if let Some(s) = cx.srq.as_mut() {
                        s.retry.push(recv);
                    }
                }
                None => {
                    tracing::error!(qpair = %conn.handle, "no receive area for RECV {}", recv.0)
                }
            }
        }
        Action::PostReads { req, first, count } => {
            for i in first..first.saturating_add(count) {
                queue_data_wr(conn, cx.stats, req, i);
            }
        }
        Action::PostResponse { req, writes } => {
            for i in 0..writes {
                queue_data_wr(conn, cx.stats, req, i);
            }
            let Some(send) = conn.engine.send_wr(req) else {
                tracing::error!(qpair = %conn.handle, req = req.0, "no response SEND to post");
                return;
            };
            let off = req.index() * RESPONSE;
            let sge = conn
                .cpl_buf
                .write(off, &send.response)
                .and_then(|()| conn.cpl_buf.sge(off, RESPONSE as u32));
            let pushed = sge.and_then(|sge| {
                let op = match send.invalidate_rkey {
                    Some(rkey) => SendOp::SendWithInvalidate { rkey },
                    None => SendOp::Send,
                };
                conn.sends
                    .push(wrid::to_verbs(send.wr_id), op, &[sge], SendFlags::SIGNALED)
            });
            match pushed {
                Ok(()) => {
                    cx.stats.total_send_wrs += 1;
                    conn.dirty = true;
                }
                Err(e) => {
                    tracing::error!(qpair = %conn.handle, req = req.0, "queueing response SEND: {e}");
                    conn.failed.push(send.wr_id.to_raw());
                }
            }
        }
        Action::RequestBuffers { req, len } => {
            let h = request_handle(conn, req);
            let Some(out) = conn.granted.get_mut(req.index()) else {
                tracing::error!(qpair = %conn.handle, req = req.0, "buffer request for an unknown slot");
                return;
            };
            if !out.is_empty() {
                cx.shared.internal_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(qpair = %conn.handle, req = req.0, held = out.len(), "internal error: buffer request for a request holding buffers");
                return;
            }
            match cx.host.get_buffers(h, len, conn.device, out) {
                // Counted in grant(), once the engine took them.
                BufferGrant::Granted => cx.granted_now.push(req),
                BufferGrant::Later => *cx.pending_data_buffer += 1,
            }
        }
        Action::CancelBufferRequest { req } => cx.host.cancel_buffers(request_handle(conn, req)),
        Action::ReleaseBuffers { req } => {
            let h = request_handle(conn, req);
            let Some(g) = conn.granted.get_mut(req.index()) else {
                return;
            };
            if g.is_empty() || !cx.shared.take(&cx.shared.buffers_held, g.len() as u64) {
                if g.is_empty() {
                    cx.shared.internal_errors.fetch_add(1, Ordering::Relaxed);
                }
                tracing::error!(qpair = %conn.handle, req = req.0, buffers = g.len(), "internal error: releasing buffers that are not counted as held");
            }
            cx.host.release_buffers(h, g, cx.calls);
            g.clear();
        }
        Action::Execute { req } => {
            let Some(cmd) = conn.engine.command(req).copied() else {
                tracing::error!(qpair = %conn.handle, req = req.0, "execute without a command");
                return;
            };
            let received = conn.engine.recv_of(req).and_then(|recv| {
                recv_area(&mut conn.recv, cx.srq).and_then(|a| a.time.get(recv.0 as usize).copied())
            });
            if let Some(s) = conn.req_start.get_mut(req.index()) {
                *s = received.unwrap_or(cx.now);
            }
            let direction = match cmd.data_transfer() {
                DataTransfer::HostToController => Direction::HostToController,
                DataTransfer::ControllerToHost => Direction::ControllerToHost,
                _ => Direction::None,
            };
            let h = request_handle(conn, req);
            cx.shared.commands_in_host.fetch_add(1, Ordering::Relaxed);
            let data = match conn.engine.data(req) {
                DataRef::None => CommandData::None,
                DataRef::InCapsule { recv, offset, len } => {
                    // By reference into the receive slot, which stays ours
                    // until the request is done.
                    let view = match recv_area(&mut conn.recv, cx.srq) {
                        Some(a) => {
                            let off = recv.0 as usize * a.slot_size + CAPSULE + offset as usize;
                            a.buf.view(off, len as usize)
                        }
                        None => Err(VerbsError::Missing("receive area")),
                    };
                    match view {
                        Ok(bytes) => CommandData::InCapsule(bytes),
                        Err(e) => {
                            tracing::error!(qpair = %conn.handle, req = req.0, "in-capsule data: {e}");
                            CommandData::None
                        }
                    }
                }
                DataRef::Buffers { .. } => match conn.granted.get(req.index()) {
                    Some(b) => CommandData::Buffers(b),
                    None => CommandData::None,
                },
            };
            cx.host.execute(h, &cmd, data, direction, cx.calls);
        }
        Action::HostDisconnect { reason } => {
            tracing::info!(qpair = %conn.handle, qp_num = conn.qp_num, ?reason, "qpair disconnect requested");
            // What the host answers from inside is queued (cx.calls) and
            // applied after this batch: the request is never re-entered.
            cx.host.disconnect_requested(conn.handle, cx.calls);
        }
        Action::DisconnectQp => {
            if let Err(e) = conn.cm_id.disconnect() {
                tracing::debug!(qpair = %conn.handle, "rdma_disconnect: {e}; moving the QP to error");
                if let Some(qp) = conn.cm_id.qp() {
                    if let Err(e) = qp.set_error() {
                        tracing::warn!(qpair = %conn.handle, "moving QP to error failed: {e}");
                    }
                }
            }
        }
        Action::DestroyQp { forced } => {
            if forced {
                cx.shared.qpairs_forced.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(qpair = %conn.handle, qp_num = conn.qp_num, "drain deadline expired: destroying the QP with WRs outstanding");
            }
            conn.sends.clear();
            if let Some(r) = conn.recv.as_mut() {
                r.list.clear();
            }
            conn.cm_id.destroy_qp();
            conn.qp_destroyed = true;
        }
        Action::Finished => {
            conn.finished = true;
            cx.host.qpair_gone(conn.handle);
        }
        Action::Notice(n) => log_notice(conn.handle, n),
    }
}

/// Queues data WR `index` of `req`. Its SGEs are sub-ranges of the buffers
/// the host granted (already translated once, by the host).
fn queue_data_wr(conn: &mut Conn, stats: &mut PollerStats, req: ReqId, index: u8) {
    let Some(dw) = conn.engine.data_wr(req, index) else {
        tracing::error!(qpair = %conn.handle, req = req.0, index, "no data WR to post");
        return;
    };
    let granted = conn.granted.get(req.index());
    let mut sges: [Option<Sge>; engine::MAX_SGES_PER_WR] = [None; engine::MAX_SGES_PER_WR];
    let mut n = 0;
    let mut ok = dw.sges.len() <= sges.len();
    for s in dw.sges.iter().take(sges.len()) {
        match granted.and_then(|g| g.covering(s.addr, s.len)) {
            Some(sge) => {
                sges[n] = Some(sge);
                n += 1;
            }
            None => {
                tracing::error!(qpair = %conn.handle, req = req.0, addr = s.addr, len = s.len, "data SGE outside the granted buffers");
                ok = false;
            }
        }
    }
    let op = match dw.opcode {
        engine::DataOpcode::RdmaRead => SendOp::RdmaRead {
            remote_addr: dw.remote_addr,
            rkey: dw.rkey,
        },
        engine::DataOpcode::RdmaWrite => SendOp::RdmaWrite {
            remote_addr: dw.remote_addr,
            rkey: dw.rkey,
        },
    };
    let flags = if dw.signaled {
        SendFlags::SIGNALED
    } else {
        SendFlags::UNSIGNALED
    };
    let pushed = if ok {
        conn.sends.push_sges(
            wrid::to_verbs(dw.wr_id),
            op,
            sges[..n].iter().flatten().copied(),
            flags,
        )
    } else {
        Err(VerbsError::InvalidArgument {
            name: "data buffer",
            value: 0,
        })
    };
    match pushed {
        Ok(()) => {
            stats.total_send_wrs += 1;
            conn.dirty = true;
        }
        Err(e) => {
            tracing::error!(qpair = %conn.handle, req = req.0, index, "queueing data WR: {e}");
            conn.failed.push(dw.wr_id.to_raw());
        }
    }
}

fn log_notice(q: QpairHandle, n: Notice) {
    match n {
        Notice::WcError {
            wr,
            status: WcStatus::Flushed,
            ..
        } => {
            tracing::debug!(qpair = %q, ?wr, "flushed")
        }
        Notice::WcError { wr, status, .. } => {
            tracing::error!(qpair = %q, ?wr, %status, "work completion error")
        }
        Notice::CommandFailed {
            req, cid, status, ..
        } => {
            tracing::info!(qpair = %q, req = req.0, cid, %status, "command failed in the transport")
        }
        Notice::DrainDeadlineExpired {
            lost_send_wrs,
            lost_recvs,
            missing_last_wqe,
            ..
        } => tracing::warn!(
            qpair = %q, lost_send_wrs, lost_recvs, missing_last_wqe, "drain deadline expired"
        ),
        other => tracing::info!(qpair = %q, ?other, "engine notice"),
    }
}
