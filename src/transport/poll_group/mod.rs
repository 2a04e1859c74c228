//! One poll group: driven by one thread, a poller (CQ) per device, the
//! qpairs assigned to it, and the host's per-group part.
//!
//! Upstream: `nvmf_rdma_poll_group_create/add/poll/destroy`,
//! `nvmf_rdma_poller_poll`, `request_transfer_in/out` and the WR batching of
//! doc §4. The request logic itself is the engine's: this module turns work
//! completions, host answers and CM/IB events into engine events, and engine
//! actions into verbs calls. By job:
//!
//! - `mod.rs`: the group (creation, pollers), event delivery, the poll pass
//!   (completion dispatch), the action loop, reaping;
//! - [`setup`]: adding a qpair (`poll_group_add`);
//! - [`actions`]: engine actions to verbs calls and host calls;
//! - [`calls`]: the host's answers (push entry points, the re-entrancy
//!   queue, aborts, grants);
//! - [`recv`]: receive areas and the SRQ;
//! - [`interrupt`]: completion channels and the event entry point;
//! - [`teardown`]: group destroy.

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
    Access, CmId, CompChannel, ConnParam, Cq, DmaAllocator, DmaBuf, QpInit, RecvWrList, SendFlags,
    SendOp, SendWrList, Srq, VerbsError, WorkCompletion,
};

use super::device::{Device, DeviceTable};
use super::host::{
    AbortResult, BufferGrant, Call, CallQueueFull, CommandData, Direction, FiniDone, GroupCalls,
    Host, HostGroup, QpairHandle, QpairInfo, RequestBuffers, RequestHandle,
    MAX_BUFFERS_PER_REQUEST,
};
use super::options::TransportOptions;
use super::pending::{
    AddQpairError, AddQpairFailure, DeviceEvent, DeviceMsg, PendingQpair, PortEvent, PortMsg,
    QpairEvent, QpairMsg,
};
use super::qpn_map::QpnMap;
use super::shared::{Held, HeldCounts, Shared};
use super::stats::{PollGroupStats, PollerStats};
use super::target::Core;
use super::wrid;

mod actions;
mod calls;
mod devices;
mod interrupt;
mod recv;
mod setup;
mod teardown;

use actions::{flush_conn, flush_now, handle_action, ActionCtx};
use calls::grant;
use recv::{flush_srq, recv_area, RecvArea, SrqRecv};

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

struct Poller {
    device: usize,
    /// The device (its PD, attributes), held while the poller lives.
    dev: Arc<Device>,
    /// Completion channel of `cq` (interrupt mode; unused while polling).
    channel: CompChannel,
    /// The device had `IBV_EVENT_DEVICE_FATAL` or was removed: new qpairs
    /// are refused, and the poller is dropped once its last qpair is gone.
    /// The CQ is still polled so that flushes end the drain early; the drain
    /// deadline bounds it when the NIC returns nothing.
    device_dead: bool,
    cq: Cq,
    required_wr: u32,
    max_cqe: u32,
    stats: PollerStats,
    wcs: Vec<WorkCompletion>,
    srq: Option<SrqRecv>,
}

/// One qpair: its CM id (owning the QP), the engine, and the receive and
/// response memory. Field order matters for drop: the CM id (and QP) goes
/// before the memory it names.
struct Conn {
    cm_id: CmId,
    handle: QpairHandle,
    device: usize,
    /// The listener that accepted it (ADDR_CHANGE disconnects by listener).
    listen: std::net::SocketAddr,
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
    devices: Arc<DeviceTable>,
    pollers: Vec<Poller>,
    /// Interrupt mode ([`PollGroup::arm`] was called): push entry points
    /// post the WRs they queued before returning, since no poll follows; the
    /// channels of dropped pollers stay open until the driver next asks for
    /// [`PollGroup::event_fds`] (it may still be waiting on them).
    armed: bool,
    retired_channels: Vec<CompChannel>,
    /// Bumped when the pollers (and so [`PollGroup::event_fds`]) change.
    fds_generation: u64,
    conns: Vec<Option<Conn>>,
    generations: Vec<u32>,
    by_qpn: QpnMap<usize>,
    /// Host answers pushed during a group call, applied before it returns.
    calls: GroupCalls,
    /// Requests granted buffers synchronously during the current action
    /// batch (fed to the engine after it; reused, never shrunk).
    granted_now: Vec<ReqId>,
    /// Whether a public entry point is running (nested ones only queue).
    in_call: bool,
    aborts: Vec<PendingAbort>,
    shared: Arc<Shared>,
    /// Commands and buffers this group holds of the host's (registered in
    /// `shared`, written only here).
    held: Arc<HeldCounts>,
    pending_data_buffer: u64,
    drain_timeout_ns: u64,
    /// A qpair finished since the last reap (the engine emitted
    /// `Finished`): the next poll frees it. Saves a walk of every slot on
    /// every poll.
    reap_due: bool,
    /// Where receive and completion buffers come from (the host's choice).
    dma: &'static dyn DmaAllocator,
    /// A qpair may be draining towards a deadline (one was told to fini
    /// since the last pass found none): only then does a poll walk the
    /// qpairs for due deadlines.
    drain_timers: bool,
    /// Interrupt mode: the last [`PollGroup::handle_deadline`] stopped at
    /// its round limit with work left (completions an armed CQ raises no
    /// event for): [`PollGroup::next_deadline`] is due at once.
    backlog: bool,
    /// The host wants request states reported ([`HostGroup::trace_requests`]
    /// at the last poll): every engine of the group traces its states.
    trace_requests: bool,
    /// Some qpair may have WRs queued (`Conn::dirty`, set only by action
    /// batches in `run_actions`): only then does a flush walk the qpairs.
    wrs_queued: bool,
}

impl<H: Host> PollGroup<H> {
    /// Creates the group (upstream `poll_group_create`): one CQ per device.
    pub(crate) fn new(index: u16, host: &H, core: Arc<Core>) -> Result<PollGroup<H>, VerbsError> {
        let opts = core.opts.clone();
        let devices = core.devices.clone();
        let shared = core.shared.clone();
        let group = host.create_group(index);
        let dma = host.dma_allocator();
        let mut pg = PollGroup {
            core,
            index,
            host: group,
            opts,
            devices,
            pollers: Vec::new(),
            armed: false,
            retired_channels: Vec::new(),
            fds_generation: 0,
            conns: Vec::new(),
            generations: Vec::new(),
            by_qpn: QpnMap::default(),
            calls: GroupCalls::new(),
            granted_now: Vec::with_capacity(64),
            in_call: false,
            aborts: Vec::new(),
            held: shared.register_group(),
            shared,
            pending_data_buffer: 0,
            drain_timeout_ns: DEFAULT_DRAIN_TIMEOUT.as_nanos() as u64,
            reap_due: false,
            dma,
            drain_timers: false,
            backlog: false,
            trace_requests: false,
            wrs_queued: false,
        };
        for (device, _) in pg.devices.live() {
            // On error, dropping `pg` releases the pollers made so far.
            pg.add_poller(device)?;
        }
        Ok(pg)
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
        self.flush_pushed(now);
    }

    /// Handles a device event the acceptor sent to every group:
    /// [`DeviceEvent::Removed`] tears every qpair on the device down
    /// (bounded by the drain deadline), refuses new ones and drops the
    /// poller once it is empty; [`DeviceEvent::Added`] makes the new
    /// device's poller (a failure is logged; the first qpair on it tries
    /// again).
    pub fn deliver_device(&mut self, msg: DeviceMsg, now: u64) {
        let DeviceMsg { device, event } = msg;
        match event {
            DeviceEvent::Removed => {
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
                self.drop_dead_pollers();
            }
            // A device removed again before this message arrived gets no
            // poller (on a live one, the first qpair would make it too).
            DeviceEvent::Added if self.devices.get_live(device).is_none() => {
                tracing::debug!(group = self.index, device, "device added and already gone");
            }
            DeviceEvent::Added => {
                if let Err(e) = self.ensure_poller(device) {
                    tracing::error!(
                        group = self.index,
                        device,
                        "no poller for the new device: {e}"
                    );
                }
            }
            DeviceEvent::Retired => {}
        }
        self.flush_pushed(now);
    }

    /// Handles a listener event the acceptor sent to every group:
    /// [`PortEvent::AddrChange`] disconnects every qpair accepted through
    /// `msg.addr` (upstream `nvmf_rdma_disconnect_qpairs_on_port`).
    pub fn deliver_port(&mut self, msg: PortMsg, now: u64) {
        let PortMsg { addr, event } = msg;
        match event {
            PortEvent::AddrChange => {
                for slot in 0..self.conns.len() {
                    let on_port = self.conns[slot]
                        .as_ref()
                        .is_some_and(|c| c.listen == addr && !c.finished);
                    if on_port {
                        self.with_conn(slot, now, |c| c.engine.handle_peer_disconnected());
                    }
                }
            }
        }
        self.flush_pushed(now);
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
            self.fini_conn(slot, now, deadline);
        }
        self.flush_pushed(now);
    }

    /// Tells the qpair in `slot` to drain until `deadline` (the only way
    /// into the engine's draining state, so from here on a poll checks
    /// drain deadlines).
    fn fini_conn(&mut self, slot: usize, now: u64, deadline: Timestamp) {
        self.drain_timers = true;
        self.with_conn(slot, now, |c| c.engine.handle_fini(deadline));
    }

    /// Feeds the time to every qpair whose drain deadline is due, and
    /// notes whether any still has one.
    fn check_drain_deadlines(&mut self, now: u64) {
        // Cleared first: a fini given while walking sets it again.
        self.drain_timers = false;
        let mut armed = false;
        for slot in 0..self.conns.len() {
            let timeout = |c: &Option<Conn>| c.as_ref().and_then(|c| c.engine.poll_timeout());
            if timeout(&self.conns[slot]).is_some_and(|t| t.0 <= now) {
                self.with_conn(slot, now, |c| c.engine.handle_timeout(Timestamp(now)));
            }
            armed |= timeout(&self.conns[slot]).is_some();
        }
        self.drain_timers |= armed;
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

    /// One pass: completions, host answers, timers, WR flush. Returns the
    /// amount of work done (0 = idle).
    pub fn poll(&mut self, now: u64) -> usize {
        let trace = self.host.trace_requests();
        if trace != self.trace_requests {
            self.set_state_tracing(trace);
        }
        let mut work = 0;
        for p in 0..self.pollers.len() {
            work += self.poll_cq(p, now);
        }
        self.host.poll(now, &mut self.calls);
        work += self.calls.len();
        self.apply_calls(now);
        self.retry_aborts(now);
        if self.drain_timers {
            self.check_drain_deadlines(now);
        }
        self.settle(now);
        work
    }

    /// The end of every poll, and of every push entry point in interrupt
    /// mode (no poll follows those): posts the WRs and SRQ receives queued,
    /// then frees the qpairs that finished.
    #[inline]
    fn settle(&mut self, now: u64) {
        self.flush_dirty(now);
        for p in &mut self.pollers {
            // A dead device's SRQ refuses every post (EIO): its receives stay
            // queued instead of failing (and logging) at every poll.
            if p.device_dead {
                continue;
            }
            if let Some(srq) = p.srq.as_mut() {
                if !srq.area.list.is_empty() || !srq.retry.is_empty() {
                    flush_srq(srq, &mut p.stats);
                }
            }
        }
        if self.reap_due {
            self.reap(now);
        }
    }

    /// Turns the request-state reports of every qpair on or off (the host's
    /// [`HostGroup::trace_requests`] changed; qpairs added later follow).
    #[cold]
    fn set_state_tracing(&mut self, on: bool) {
        self.trace_requests = on;
        for c in self.conns.iter_mut().flatten() {
            c.engine.set_state_tracing(on);
        }
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
            let recv = wrid::decode_completion(wc.raw_wr_id());
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
        let Some(kind) = wrid::decode_completion(wc.raw_wr_id()) else {
            tracing::error!(
                qp_num = wc.qp_num(),
                wr_id = wc.raw_wr_id(),
                "completion with a foreign wr_id ignored"
            );
            return;
        };
        let status = wrid::wc_status(wc);
        if status == WcStatus::Flushed {
            self.shared.wc_flushed.fetch_add(1, Ordering::Relaxed);
        } else if !status.is_success() {
            self.shared.wc_errors.fetch_add(1, Ordering::Relaxed);
        }
        let Some(conn) = self.conns[slot].as_mut() else {
            return;
        };
        let mut recv_slot = None;
        match kind {
            engine::WrKind::Recv { recv } if status.is_success() => {
                let poller = &mut self.pollers[p];
                if let Some(area) = recv_area(&mut conn.recv, &mut poller.srq) {
                    recv_slot = Some((recv, (wc.byte_len() as usize).min(area.slot_size)));
                    if let Some(t) = area.time.get_mut(recv.0 as usize) {
                        *t = now;
                    }
                }
                poller.stats.requests += 1;
            }
            engine::WrKind::Send { req, .. } if status.is_success() => {
                if let Some(t) = conn.req_start.get(req.index()) {
                    self.pollers[p].stats.request_latency += now.saturating_sub(*t);
                }
            }
            _ => {}
        }
        // The capsule is read in place: the slot is not re-posted before the
        // engine returns it (Action::PostRecv, or with its response).
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
        if let Err(e) = conn.engine.handle_wr_completion(kind, status, payload) {
            tracing::warn!(qpair = %conn.handle, qp_num = conn.qp_num, %status, "completion refused by the engine: {e}");
        }
        self.run_actions(slot, now);
    }

    /// Handles every pending engine action of the qpair in `slot`, in order,
    /// then feeds answers the host gave synchronously, until quiet.
    fn run_actions(&mut self, slot: usize, now: u64) {
        let batching = !self.opts.no_wr_batching;
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let Some(poller) = self.pollers.get_mut(conn.poller) else {
            return;
        };
        let mut ctx = ActionCtx {
            host: &mut self.host,
            calls: &mut self.calls,
            stats: &mut poller.stats,
            srq: &mut poller.srq,
            shared: &self.shared,
            held: &self.held,
            granted_now: &mut self.granted_now,
            pending_data_buffer: &mut self.pending_data_buffer,
            now,
        };
        loop {
            while let Some(action) = conn.engine.poll_action() {
                handle_action(action, conn, &mut ctx);
                if !batching {
                    flush_now(conn, &mut ctx);
                }
            }
            self.reap_due |= conn.finished;
            self.wrs_queued |= conn.dirty;
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
            if ctx.granted_now.is_empty() {
                return;
            }
            for req in ctx.granted_now.drain(..) {
                grant(conn, req, ctx.host, ctx.calls, ctx.held);
            }
        }
    }

    /// Posts the WRs every qpair has queued (one doorbell per qpair). Asked
    /// at every poll and push: the walk over the qpairs runs only when an
    /// action batch queued something since the last one.
    #[inline]
    fn flush_dirty(&mut self, now: u64) {
        if self.wrs_queued {
            self.flush_dirty_conns(now);
        }
    }

    fn flush_dirty_conns(&mut self, now: u64) {
        // Cleared first: a batch run while flushing (WRs that failed to
        // post) sets it again.
        self.wrs_queued = false;
        for slot in 0..self.conns.len() {
            if self.conns[slot].as_ref().is_some_and(|c| c.dirty) {
                self.flush(slot, now);
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

    /// Frees qpairs the engine declared finished (then the pollers of
    /// removed devices that became empty).
    fn reap(&mut self, _now: u64) {
        self.reap_due = false;
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
        self.drop_dead_pollers();
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
fn request_handle(c: &Conn, req: ReqId) -> RequestHandle {
    RequestHandle {
        qpair: c.handle,
        slot: req.0,
        generation: 0,
    }
}
