//! One poll group: driven by one thread, a poller (CQ) per device, the
//! qpairs assigned to it, and the host's per-group part.
//!
//! Upstream: `nvmf_rdma_poll_group_create/add/poll/destroy`,
//! `nvmf_rdma_poller_poll`, `request_transfer_in/out` and the WR batching of
//! doc §4. The request logic itself is the engine's: this file turns work
//! completions, host answers and CM/IB events into engine events, and engine
//! actions into verbs calls.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::engine::codec::nvme::{Completion, DataTransfer, Status};
use crate::engine::codec::private_data::{CmAccept, CmReject, CmRequest, Negotiated, RejectStatus};
use crate::engine::codec::sgl::{SglLimits, MAX_SGL_DESCRIPTORS};
use crate::engine::{
    self, Action, DataRef, LocalSge, Notice, QpairConfig, RecvId, ReqId, Timestamp, WcStatus,
    MIN_SEND_DEPTH,
};
use crate::verbs::{
    Access, CmId, ConnParam, Cq, DmaBuf, QpInit, RecvWrList, SendFlags, SendOp, SendWrList, Sge,
    Srq, VerbsError, WorkCompletion,
};

use super::device::Device;
use super::host::{
    BufferGrant, CommandData, DataBuffer, Direction, Host, HostEvent, HostGroup, QpairHandle,
    QpairInfo, RequestHandle,
};
use super::options::TransportOptions;
use super::shared::Shared;
use super::stats::{PollGroupStats, PollerStats};
use super::wrid;

/// Completions reaped per CQ per poll (upstream: 32).
const WC_BATCH: usize = 32;
/// Bytes of one command capsule.
const CAPSULE: usize = 64;
/// Bytes of one response capsule.
const RESPONSE: usize = 16;

/// A connection handed from the acceptor to a poll group.
pub(crate) struct NewQpair {
    /// The CM id of the connect request.
    pub cm_id: CmId,
    /// Transport device index.
    pub device: usize,
    /// Negotiated depths.
    pub negotiated: Negotiated,
    /// The parsed private data.
    pub request: CmRequest,
    /// Listener address.
    pub listen: SocketAddr,
}

/// What other threads send to a poll group.
pub(crate) enum GroupMsg {
    /// Add this qpair (upstream `poll_group_add`).
    NewQpair(Box<NewQpair>),
    /// RDMA_CM_EVENT_DISCONNECTED / DEVICE_REMOVAL, or CONNECT_ERROR /
    /// UNREACHABLE / REJECTED (the host went before ESTABLISHED), for the id
    /// with this key.
    CmDisconnected {
        /// [`CmId::key`].
        id_key: usize,
    },
    /// `IBV_EVENT_DEVICE_FATAL` on this device index: tear down its qpairs
    /// and take no new ones until [`GroupMsg::DeviceBack`].
    DeviceFatal {
        /// Device index.
        device: usize,
    },
    /// The device is listed again after a fatal error: take qpairs on it.
    DeviceBack {
        /// Device index.
        device: usize,
    },
    /// An IB async event for a QP.
    QpEvent {
        /// Device index.
        device: usize,
        /// QP number.
        qp_num: u32,
        /// What happened.
        kind: QpEventKind,
    },
}

/// QP-scoped async events the engine cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QpEventKind {
    /// IBV_EVENT_QP_FATAL: disconnect.
    Fatal,
    /// IBV_EVENT_QP_LAST_WQE_REACHED.
    LastWqeReached,
}

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
    granted: Vec<Vec<DataBuffer>>,
    req_start: Vec<u64>,
    sends: SendWrList,
    dirty: bool,
    cq_reserved: u32,
    qp_destroyed: bool,
    finished: bool,
    /// Raw engine WR ids whose post failed (fed back as flushed).
    failed: Vec<u64>,
}

/// A host answer to feed after the current batch of actions.
enum Deferred {
    Granted(ReqId, Vec<DataBuffer>),
}

/// One poll group (upstream `spdk_nvmf_rdma_poll_group`).
pub(crate) struct PollGroup<H: Host> {
    index: u16,
    host: H::Group,
    opts: TransportOptions,
    devices: Arc<Vec<Device>>,
    pollers: Vec<Poller>,
    conns: Vec<Option<Conn>>,
    generations: Vec<u32>,
    by_qpn: HashMap<(usize, u32), usize>,
    by_cm: HashMap<usize, usize>,
    events: Vec<HostEvent>,
    scratch: Vec<u8>,
    shared: Arc<Shared>,
    pending_data_buffer: u64,
    drain_timeout_ns: u64,
}

impl<H: Host> PollGroup<H> {
    /// Creates the group (upstream `poll_group_create`): one CQ per device.
    pub(crate) fn new(
        index: u16,
        host: &H,
        opts: TransportOptions,
        devices: Arc<Vec<Device>>,
        shared: Arc<Shared>,
        drain_timeout_ns: u64,
    ) -> Result<PollGroup<H>, VerbsError> {
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
            let cq = Cq::new(&d.ctx, num_cqe, None)?;
            let (srq, stats) = match srq {
                Some((sr, st)) => (Some(sr), st),
                None => (None, PollerStats::new(d.name.clone())),
            };
            if let Err(e) = group.attach_device(i, &d.pd) {
                tracing::error!(group = index, device = %d.name, "host cannot use device: {e}");
            }
            pollers.push(Poller {
                device: i,
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
            index,
            host: group,
            opts,
            devices,
            pollers,
            conns: Vec::new(),
            generations: Vec::new(),
            by_qpn: HashMap::new(),
            by_cm: HashMap::new(),
            events: Vec::new(),
            scratch: vec![0; 64 * 1024],
            shared,
            pending_data_buffer: 0,
            drain_timeout_ns,
        })
    }

    /// Live qpairs in this group.
    pub(crate) fn live_qpairs(&self) -> usize {
        self.conns.iter().filter(|c| c.is_some()).count()
    }

    /// Statistics (upstream `poll_group_dump_stat`).
    pub(crate) fn stats(&self) -> PollGroupStats {
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

    /// Handles a message from another thread.
    pub(crate) fn handle_msg(&mut self, msg: GroupMsg, now: u64) {
        match msg {
            GroupMsg::NewQpair(n) => self.add_qpair(*n, now),
            GroupMsg::CmDisconnected { id_key } => {
                if let Some(&slot) = self.by_cm.get(&id_key) {
                    self.with_conn(slot, now, |c| c.engine.handle_peer_disconnected());
                }
            }
            GroupMsg::DeviceFatal { device } => {
                for p in self.pollers.iter_mut().filter(|p| p.device == device) {
                    p.device_dead = true;
                }
                for slot in 0..self.conns.len() {
                    let on_device = self.conns[slot]
                        .as_ref()
                        .is_some_and(|c| c.device == device && !c.finished);
                    if on_device {
                        self.with_conn(slot, now, |c| c.engine.handle_qp_fatal());
                    }
                }
            }
            GroupMsg::DeviceBack { device } => {
                for p in self.pollers.iter_mut().filter(|p| p.device == device) {
                    p.device_dead = false;
                }
            }
            GroupMsg::QpEvent {
                device,
                qp_num,
                kind,
            } => {
                if let Some(&slot) = self.by_qpn.get(&(device, qp_num)) {
                    self.with_conn(slot, now, |c| match kind {
                        QpEventKind::Fatal => c.engine.handle_qp_fatal(),
                        QpEventKind::LastWqeReached => c.engine.handle_last_wqe_reached(),
                    });
                }
            }
        }
    }

    /// Asks every qpair to go (shutdown): like a host disconnect.
    /// The host hears of each one (SPDK: `spdk_nvmf_qpair_disconnect`) so
    /// that it frees what it holds for it (AERs: [`HostEvent::Freed`]); a
    /// qpair cannot finish while the host holds one of its requests.
    pub(crate) fn disconnect_all(&mut self, now: u64) {
        for slot in 0..self.conns.len() {
            let deadline = Timestamp(now + self.drain_timeout_ns);
            let Some(handle) = self.conns[slot]
                .as_ref()
                .filter(|c| !c.finished)
                .map(|c| c.handle)
            else {
                continue;
            };
            self.host.disconnect_requested(handle);
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
    }

    fn add_qpair(&mut self, n: NewQpair, now: u64) {
        let NewQpair {
            mut cm_id,
            device,
            negotiated,
            request,
            listen,
        } = n;
        let reject = |id: &CmId, why: &str| {
            tracing::error!(%listen, "rejecting connection (NO_RESOURCES): {why}");
            let r = CmReject {
                recfmt: 0,
                status: RejectStatus::NoResources,
            };
            if let Err(e) = id.reject(&r.to_bytes()) {
                tracing::warn!("rdma_reject failed: {e}");
            }
        };
        let Some(poller_idx) = self
            .pollers
            .iter()
            .position(|p| p.device == device && !p.device_dead)
        else {
            reject(&cm_id, "no poller for the device (or the device is dead)");
            self.shared
                .connects_rejected
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
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
                reject(&cm_id, "CQ cannot hold another qpair");
                self.shared
                    .connects_rejected
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
            if p.cq.capacity() < required {
                let new = (2 * p.cq.capacity()).max(required).min(p.max_cqe);
                if let Err(e) = p.cq.resize(new) {
                    reject(&cm_id, &format!("ibv_resize_cq to {new} failed: {e}"));
                    self.shared
                        .connects_rejected
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            p.required_wr = required;
        }
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
                self.pollers[poller_idx].required_wr -= need;
                reject(&cm_id, &format!("rdma_create_qp failed: {e}"));
                self.shared
                    .connects_rejected
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let cfg = QpairConfig {
            label: qp_num,
            max_queue_depth: qd,
            max_read_depth: negotiated.max_read_depth.max(1),
            max_send_depth: caps.max_send_wr.min(max_send_wr),
            sq_size: request.hsqsize.saturating_add(1).max(1),
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
                self.pollers[poller_idx].required_wr -= need;
                reject(&cm_id, &format!("qpair configuration refused: {e}"));
                self.shared
                    .connects_rejected
                    .fetch_add(1, Ordering::Relaxed);
                return;
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
                self.pollers[poller_idx].required_wr -= need;
                reject(&cm_id, &format!("allocating qpair memory failed: {e}"));
                self.shared
                    .connects_rejected
                    .fetch_add(1, Ordering::Relaxed);
                return;
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
            listen,
            device: dev.name.clone(),
        };
        let id_key = cm_id.key();
        let sges = max_send_sge as usize;
        let conn = Conn {
            cm_id,
            handle,
            device,
            poller: poller_idx,
            qp_num,
            engine,
            recv,
            cpl_buf,
            granted: vec![Vec::new(); n],
            req_start: vec![0; n],
            sends: SendWrList::with_capacity(max_send_wr as usize, max_send_wr as usize * sges),
            dirty: false,
            cq_reserved: need,
            qp_destroyed: false,
            finished: false,
            failed: Vec::new(),
        };
        if !self.host.qpair_added(&info) {
            self.pollers[poller_idx].required_wr -= need;
            reject(&conn.cm_id, "the host refused the qpair");
            self.shared
                .connects_rejected
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.conns[slot] = Some(conn);
        self.by_qpn.insert((device, qp_num), slot);
        self.by_cm.insert(id_key, slot);
        // Post the initial RECVs (engine actions), then accept.
        self.run_actions(slot, now);
        self.flush(slot, now);
        let Some(conn) = self.conns[slot].as_mut() else {
            return;
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
                qpair = %handle, qp_num, qid = negotiated.qid, queue_depth = qd,
                read_depth = negotiated.max_read_depth, peer = ?info.peer, "qpair accepted"
            ),
            Err(e) => {
                tracing::error!(qpair = %handle, qp_num, "rdma_accept failed: {e}");
                let r = CmReject {
                    recfmt: 0,
                    status: RejectStatus::NoResources,
                };
                let _ = conn.cm_id.reject(&r.to_bytes());
                let deadline = Timestamp(now + self.drain_timeout_ns);
                self.host.disconnect_requested(handle);
                self.with_conn(slot, now, |c| c.engine.handle_fini(deadline));
            }
        }
    }

    /// One pass: completions, host answers, timers, WR flush. Returns the
    /// amount of work done (0 = idle).
    pub(crate) fn poll(&mut self, now: u64) -> usize {
        let mut work = 0;
        for p in 0..self.pollers.len() {
            work += self.poll_cq(p, now);
        }
        self.events.clear();
        let mut events = std::mem::take(&mut self.events);
        self.host.poll(now, &mut events);
        work += events.len();
        for ev in events.drain(..) {
            self.handle_host_event(ev, now);
        }
        self.events = events;
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
        let mut len = 0;
        match kind {
            Some(engine::WrKind::Recv { recv }) if status.is_success() => {
                let poller = &mut self.pollers[p];
                if let Some(area) = recv_area(&mut conn.recv, &mut poller.srq) {
                    let off = recv.0 as usize * area.slot_size;
                    len = (wc.byte_len() as usize).min(area.slot_size);
                    if self.scratch.len() < len {
                        self.scratch.resize(len, 0);
                    }
                    if let Err(e) = area.buf.read(off, &mut self.scratch[..len]) {
                        tracing::error!(qpair = %conn.handle, "reading receive slot {}: {e}", recv.0);
                        len = 0;
                    }
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
        if let Err(e) = conn
            .engine
            .handle_completion(raw, status, &self.scratch[..len])
        {
            tracing::warn!(qpair = %conn.handle, qp_num = conn.qp_num, %status, "completion refused by the engine: {e}");
        }
        self.run_actions(slot, now);
    }

    fn handle_host_event(&mut self, ev: HostEvent, now: u64) {
        let (qpair, f): (QpairHandle, HostEventFn) = match ev {
            HostEvent::Completed { req, completion } => {
                self.command_back(req);
                (
                    req.qpair,
                    Box::new(move |c: &mut Conn, _| {
                        c.engine
                            .handle_command_executed(ReqId(req.slot), completion)
                    }),
                )
            }
            HostEvent::Freed { req } => {
                self.command_back(req);
                let t = self.drain_timeout_ns;
                (
                    req.qpair,
                    Box::new(move |c: &mut Conn, now| {
                        // SPDK `req_free`: the qpair is going away and the
                        // request is dropped without a response. Teardown
                        // starts first so that the engine drops the request
                        // instead of answering it.
                        c.engine.handle_fini(Timestamp(now + t))?;
                        let cid = c.engine.command(ReqId(req.slot)).map_or(0, |cmd| cmd.cid());
                        c.engine.handle_command_executed(
                            ReqId(req.slot),
                            Completion::new(cid, Status::ABORTED_SQ_DELETION),
                        )
                    }),
                )
            }
            HostEvent::BuffersGranted { req, buffers } => {
                self.grant_later(req, buffers, now);
                return;
            }
            HostEvent::Disconnect { qpair } => {
                let t = self.drain_timeout_ns;
                (
                    qpair,
                    Box::new(move |c: &mut Conn, now| c.engine.handle_fini(Timestamp(now + t))),
                )
            }
            HostEvent::Abort { qpair, cid } => (
                qpair,
                Box::new(move |c: &mut Conn, _| {
                    let outcome = c.engine.abort(cid)?;
                    tracing::info!(qpair = %c.handle, cid, ?outcome, "abort");
                    Ok(())
                }),
            ),
        };
        let slot = qpair.slot as usize;
        let live = qpair.group == self.index
            && self
                .conns
                .get(slot)
                .is_some_and(|c| c.as_ref().is_some_and(|c| c.handle == qpair && !c.finished));
        if !live {
            tracing::debug!(%qpair, "host event for a qpair that is gone ignored");
            return;
        }
        self.with_conn(slot, now, |c| f(c, now));
    }

    /// A command the host had comes back (completed or freed).
    fn command_back(&self, req: RequestHandle) {
        if !self.shared.take(&self.shared.commands_in_host, 1) {
            tracing::error!(%req, "internal error: the host answered a command it was not holding (commands_in_host already 0)");
        }
    }

    /// Buffers granted after a wait ([`HostEvent::BuffersGranted`]). If the
    /// qpair is gone they go straight back to the host.
    fn grant_later(&mut self, req: RequestHandle, buffers: Vec<DataBuffer>, now: u64) {
        let slot = req.qpair.slot as usize;
        let conn = self
            .conns
            .get_mut(slot)
            .and_then(Option::as_mut)
            .filter(|c| req.qpair.group == self.index && c.handle == req.qpair && !c.finished);
        let Some(conn) = conn else {
            tracing::debug!(%req, buffers = buffers.len(), "buffers granted to a qpair that is gone: returned");
            self.host.release_buffers(req, &buffers);
            return;
        };
        grant(conn, &mut self.host, &self.shared, ReqId(req.slot), buffers);
        self.run_actions(slot, now);
    }

    /// Handles every pending engine action of the qpair in `slot`, in order,
    /// then feeds answers the host gave synchronously, until quiet.
    fn run_actions(&mut self, slot: usize, now: u64) {
        let batching = !self.opts.no_wr_batching;
        loop {
            let mut deferred: Vec<Deferred> = Vec::new();
            {
                let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
                    return;
                };
                let poller = &mut self.pollers[conn.poller];
                while let Some(action) = conn.engine.poll_action() {
                    handle_action(
                        action,
                        conn,
                        &mut self.host,
                        &mut poller.stats,
                        &mut poller.srq,
                        &mut self.scratch,
                        &self.shared,
                        &mut deferred,
                        &mut self.pending_data_buffer,
                        now,
                    );
                    if !batching && conn.dirty {
                        flush_conn(conn, &mut poller.stats);
                    }
                    if !batching {
                        if let Some(srq) = poller.srq.as_mut() {
                            flush_srq(srq, &mut poller.stats);
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
                    let failed = std::mem::take(&mut conn.failed);
                    // These WRs never reached the NIC: they are not completions
                    // (a SEND reported as flushed would tell the engine that the
                    // WRITEs before it are done while they may still be in flight).
                    for raw in failed {
                        if let Err(e) = conn.engine.handle_wr_not_posted(raw) {
                            tracing::warn!(qpair = %conn.handle, wr_id = raw, "unposted WR refused by the engine: {e}");
                        }
                    }
                    continue;
                }
                if deferred.is_empty() {
                    return;
                }
                for d in deferred.drain(..) {
                    match d {
                        Deferred::Granted(req, bufs) => {
                            grant(conn, &mut self.host, &self.shared, req, bufs);
                        }
                    }
                }
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
                self.by_qpn.remove(&(conn.device, conn.qp_num));
                self.by_cm.remove(&conn.cm_id.key());
                self.pollers[conn.poller].required_wr -= conn.cq_reserved;
                add_engine_waits(&mut self.pollers[conn.poller].stats, &conn.engine.stats());
                self.shared.live_qpairs.fetch_sub(1, Ordering::Relaxed);
                self.shared.count_device_qpair(conn.device, -1);
                self.shared.qpairs_destroyed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(qpair = %conn.handle, qp_num = conn.qp_num, "qpair destroyed");
                drop(conn);
            }
        }
    }
}

type EngineResult = Result<(), engine::EngineError>;

fn add_engine_waits(d: &mut PollerStats, s: &engine::Stats) {
    d.pending_free_request += s.pending_free_request;
    d.pending_rdma_read += s.pending_rdma_read;
    d.pending_rdma_write += s.pending_rdma_write;
    d.pending_rdma_send += s.pending_rdma_send;
}
type HostEventFn = Box<dyn FnOnce(&mut Conn, u64) -> EngineResult>;

/// Hands buffers the host granted (now or after a wait) to the engine. The
/// one place where `buffers_held` grows: only buffers the engine took are
/// counted and kept for [`Action::ReleaseBuffers`]; refused ones (the request
/// was withdrawn or the qpair is tearing down) go straight back to the host.
fn grant<G: HostGroup>(
    c: &mut Conn,
    host: &mut G,
    shared: &Shared,
    req: ReqId,
    buffers: Vec<DataBuffer>,
) {
    let sges: Vec<LocalSge> = buffers
        .iter()
        .map(|b| LocalSge {
            addr: b.addr,
            len: b.len,
            lkey: b.lkey,
        })
        .collect();
    let holder = c.granted.get(req.index()).map(Vec::len);
    if holder != Some(0) {
        shared.internal_errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!(qpair = %c.handle, req = req.0, held = ?holder, "internal error: buffers granted to a request that cannot hold them; returned");
        host.release_buffers(request_handle(c, req), &buffers);
        return;
    }
    if let Err(e) = c.engine.handle_buffers_granted(req, &sges) {
        tracing::warn!(qpair = %c.handle, req = req.0, buffers = buffers.len(), "buffer grant refused: {e}; returned");
        host.release_buffers(request_handle(c, req), &buffers);
        return;
    }
    shared
        .buffers_held
        .fetch_add(buffers.len() as u64, Ordering::Relaxed);
    c.granted[req.index()] = buffers;
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

#[allow(clippy::too_many_arguments)]
fn handle_action<G: HostGroup>(
    action: Action,
    conn: &mut Conn,
    host: &mut G,
    stats: &mut PollerStats,
    srq: &mut Option<SrqRecv>,
    scratch: &mut Vec<u8>,
    shared: &Shared,
    deferred: &mut Vec<Deferred>,
    pending_data_buffer: &mut u64,
    now: u64,
) {
    match action {
        Action::PostRecv { recv } => {
            let own = conn.recv.is_some();
            match recv_area(&mut conn.recv, srq).map(|a| a.queue(recv)) {
                Some(Ok(())) => {
                    stats.total_recv_wrs += 1;
                    conn.dirty |= own;
                }
                Some(Err(e)) if own => {
                    tracing::error!(qpair = %conn.handle, "queueing RECV {}: {e}", recv.0);
                    conn.failed.push(engine::WrId::recv(recv).to_raw());
                }
                Some(Err(e)) => {
                    tracing::warn!(qpair = %conn.handle, "queueing SRQ RECV {}: {e}; retried", recv.0);
                    if let Some(s) = srq.as_mut() {
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
                queue_data_wr(conn, host, stats, req, i);
            }
        }
        Action::PostResponse { req, writes } => {
            for i in 0..writes {
                queue_data_wr(conn, host, stats, req, i);
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
                    stats.total_send_wrs += 1;
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
            match host.get_buffers(h, len, conn.device) {
                BufferGrant::Granted(bufs) => deferred.push(Deferred::Granted(req, bufs)),
                BufferGrant::Later => *pending_data_buffer += 1,
            }
        }
        Action::CancelBufferRequest { req } => host.cancel_buffers(request_handle(conn, req)),
        Action::ReleaseBuffers { req } => {
            let bufs = conn
                .granted
                .get_mut(req.index())
                .map(std::mem::take)
                .unwrap_or_default();
            if bufs.is_empty() || !shared.take(&shared.buffers_held, bufs.len() as u64) {
                if bufs.is_empty() {
                    shared.internal_errors.fetch_add(1, Ordering::Relaxed);
                }
                tracing::error!(qpair = %conn.handle, req = req.0, buffers = bufs.len(), "internal error: releasing buffers that are not counted as held");
            }
            host.release_buffers(request_handle(conn, req), &bufs);
        }
        Action::Execute { req } => {
            let Some(cmd) = conn.engine.command(req).copied() else {
                tracing::error!(qpair = %conn.handle, req = req.0, "execute without a command");
                return;
            };
            let received = conn.engine.recv_of(req).and_then(|recv| {
                recv_area(&mut conn.recv, srq).and_then(|a| a.time.get(recv.0 as usize).copied())
            });
            if let Some(s) = conn.req_start.get_mut(req.index()) {
                *s = received.unwrap_or(now);
            }
            let direction = match cmd.data_transfer() {
                DataTransfer::HostToController => Direction::HostToController,
                DataTransfer::ControllerToHost => Direction::ControllerToHost,
                _ => Direction::None,
            };
            let h = request_handle(conn, req);
            shared.commands_in_host.fetch_add(1, Ordering::Relaxed);
            match conn.engine.data(req) {
                DataRef::None => host.execute(h, &cmd, CommandData::None, direction),
                DataRef::InCapsule { recv, offset, len } => {
                    let len = len as usize;
                    if scratch.len() < len {
                        scratch.resize(len, 0);
                    }
                    let read = match recv_area(&mut conn.recv, srq) {
                        Some(a) => {
                            let off = recv.0 as usize * a.slot_size + CAPSULE + offset as usize;
                            a.buf.read(off, &mut scratch[..len])
                        }
                        None => Err(VerbsError::Missing("receive area")),
                    };
                    match read {
                        Ok(()) => host.execute(
                            h,
                            &cmd,
                            CommandData::InCapsule(&scratch[..len]),
                            direction,
                        ),
                        Err(e) => {
                            tracing::error!(qpair = %conn.handle, req = req.0, "in-capsule data: {e}");
                            host.execute(h, &cmd, CommandData::None, direction)
                        }
                    }
                }
                DataRef::Buffers { .. } => {
                    let bufs = conn.granted.get(req.index()).map_or(&[][..], |b| &b[..]);
                    host.execute(h, &cmd, CommandData::Buffers(bufs), direction)
                }
            }
        }
        Action::HostDisconnect { reason } => {
            tracing::info!(qpair = %conn.handle, qp_num = conn.qp_num, ?reason, "qpair disconnect requested");
            host.disconnect_requested(conn.handle);
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
                shared.qpairs_forced.fetch_add(1, Ordering::Relaxed);
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
            host.qpair_gone(conn.handle);
        }
        Action::Notice(n) => log_notice(conn.handle, n),
    }
}

fn queue_data_wr<G: HostGroup>(
    conn: &mut Conn,
    host: &G,
    stats: &mut PollerStats,
    req: ReqId,
    index: u8,
) {
    let Some(dw) = conn.engine.data_wr(req, index) else {
        tracing::error!(qpair = %conn.handle, req = req.0, index, "no data WR to post");
        return;
    };
    let mut sges: [Option<Sge>; 16] = [None; 16];
    let mut n = 0;
    let mut ok = dw.sges.len() <= sges.len();
    for s in dw.sges.iter().take(sges.len()) {
        match host.translate(
            conn.device,
            DataBuffer {
                addr: s.addr,
                len: s.len,
                lkey: s.lkey,
            },
        ) {
            Some(sge) => {
                sges[n] = Some(sge);
                n += 1;
            }
            None => {
                tracing::error!(qpair = %conn.handle, req = req.0, addr = s.addr, len = s.len, "buffer not translatable");
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
