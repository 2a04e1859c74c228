//! The running transport: devices, listeners, the acceptor thread and one
//! thread per poll group (upstream `nvmf_rdma_create`, `listen`, the
//! acceptor poller, `poll_group_create` + the generic group poller).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::engine::codec::private_data::{
    negotiate, CmReject, CmRequest, ConnectLimits, RejectStatus,
};
use crate::verbs::{
    rdma_devices, wait_readable_any, AsyncElement, AsyncEventKind, CmEventKind, CmId, EventChannel,
    VerbsError,
};

use super::device::Device;
use super::host::Host;
use super::options::{OptionsError, TransportCdata, TransportOptions};
use super::poll_group::{GroupMsg, NewQpair, PollGroup, QpEventKind};
use super::shared::Shared;
use super::stats::{PollGroupStats, ResourceCounters};

/// Max CM events and IB async events handled per acceptor run (upstream 32).
const MAX_EVENTS_PER_POLL: usize = 32;

/// Why the transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// An option was refused.
    #[error("invalid transport options: {0}")]
    Options(#[from] OptionsError),
    /// No RDMA device exists.
    #[error("no RDMA device found (is LD_LIBRARY_PATH pointing at softrdma, or a NIC present?)")]
    NoDevice,
    /// A verbs call failed.
    #[error("{what}: {source}")]
    Verbs {
        /// What was being done.
        what: String,
        /// The error.
        source: VerbsError,
    },
    /// The listen address is not on an RDMA device (upstream: "ibv_context is null").
    #[error("listen address {0} does not belong to an RDMA device")]
    NotRdmaAddress(SocketAddr),
    /// A thread could not be spawned.
    #[error("spawning thread: {0}")]
    Thread(std::io::Error),
    /// There must be at least one poll group.
    #[error("--threads must be at least 1")]
    NoPollGroups,
}

fn verbs(what: impl Into<String>) -> impl FnOnce(VerbsError) -> TransportError {
    let what = what.into();
    move |source| TransportError::Verbs { what, source }
}

/// Transport-level settings that are not upstream options.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Poll group threads.
    pub poll_groups: u16,
    /// How long teardown waits for the NIC to return every WR of a qpair
    /// before destroying it anyway.
    pub drain_timeout: Duration,
    /// How long shutdown waits for all qpairs to finish.
    pub shutdown_timeout: Duration,
    /// Never sleep when idle (like SPDK's reactors); otherwise a poll group
    /// that found nothing to do for a while yields, then naps 200 µs.
    pub busy_poll: bool,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            poll_groups: 1,
            drain_timeout: Duration::from_secs(2),
            shutdown_timeout: Duration::from_secs(5),
            busy_poll: false,
        }
    }
}

/// A running NVMe/RDMA target transport (see the module docs of
/// [`crate::transport`]). Dropping it shuts it down.
pub struct Transport {
    opts: TransportOptions,
    shared: Arc<Shared>,
    listen: Vec<SocketAddr>,
    threads: Vec<JoinHandle<()>>,
}

impl Transport {
    /// Validates the options, opens every RDMA device, listens on `listen`
    /// and starts the acceptor and `run.poll_groups` poll-group threads.
    pub fn start<H: Host>(
        host: Arc<H>,
        mut opts: TransportOptions,
        listen: &[SocketAddr],
        run: RunConfig,
    ) -> Result<Transport, TransportError> {
        if run.poll_groups == 0 {
            return Err(TransportError::NoPollGroups);
        }
        for n in opts.validate(u32::from(run.poll_groups))? {
            tracing::warn!("{n}");
        }
        let contexts = rdma_devices().map_err(verbs("rdma_get_devices"))?;
        if contexts.is_empty() {
            return Err(TransportError::NoDevice);
        }
        let mut devices = Vec::new();
        for ctx in contexts {
            let name = ctx.name();
            devices.push(Device::new(ctx).map_err(verbs(format!("opening device {name}")))?);
        }
        let max_sge = devices.iter().map(|d| d.attr.max_sge).min().unwrap_or(16);
        if let Some(n) = opts.adjust_for_device_sge(max_sge) {
            tracing::info!("{n}");
        }
        tracing::info!(opts = %opts.dump_opts_json(), "transport options");
        let devices = Arc::new(devices);
        let ev = EventChannel::new().map_err(verbs("rdma_create_event_channel"))?;
        let mut listeners = Vec::new();
        let mut bound = Vec::new();
        for &addr in listen {
            let l = Listener::open(&ev, addr, &devices, opts.acceptor_backlog)?;
            bound.push(l.addr);
            listeners.push(l);
        }
        let shared = Arc::new(Shared::default());
        *shared.group_load.lock().unwrap_or_else(|e| e.into_inner()) =
            vec![0; usize::from(run.poll_groups)];
        *shared.group_stats.lock().unwrap_or_else(|e| e.into_inner()) =
            vec![PollGroupStats::default(); usize::from(run.poll_groups)];
        let mut threads = Vec::new();
        let mut senders = Vec::new();
        for g in 0..run.poll_groups {
            let (tx, rx) = channel();
            senders.push(tx);
            let host = host.clone();
            let devices = devices.clone();
            let shared = shared.clone();
            let opts = opts.clone();
            let run = run.clone();
            let t = std::thread::Builder::new()
                .name(format!("nvmf_rdma_pg{g}"))
                .spawn(move || group_thread(g, host, opts, devices, shared, rx, run))
                .map_err(TransportError::Thread)?;
            threads.push(t);
        }
        *shared
            .device_qpairs
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = vec![0; devices.len()];
        let acc = Acceptor {
            ev,
            listeners,
            retry_listen: Vec::new(),
            dead: vec![false; devices.len()],
            last_rescan: Instant::now(),
            devices,
            senders,
            shared: shared.clone(),
            opts: opts.clone(),
            next_admin: 0,
            next_io: 0,
        };
        let t = std::thread::Builder::new()
            .name("nvmf_rdma_acceptor".into())
            .spawn(move || acc.run())
            .map_err(TransportError::Thread)?;
        threads.push(t);
        Ok(Transport {
            opts,
            shared,
            listen: bound,
            threads,
        })
    }

    /// The options in effect (after validation and device adjustment).
    pub fn options(&self) -> &TransportOptions {
        &self.opts
    }

    /// The addresses listened on.
    pub fn listen_addrs(&self) -> &[SocketAddr] {
        &self.listen
    }

    /// The `cdata_init` values.
    pub fn cdata(&self) -> TransportCdata {
        self.opts.cdata()
    }

    /// Live-resource counters.
    pub fn counters(&self) -> ResourceCounters {
        self.shared.counters()
    }

    /// Latest per-group statistics (refreshed by each group about every 100 ms).
    pub fn stats(&self) -> Vec<PollGroupStats> {
        self.shared
            .group_stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Disconnects every qpair, waits (bounded) for teardown, stops all
    /// threads and returns the final counters.
    pub fn shutdown(mut self) -> ResourceCounters {
        self.stop();
        self.shared.counters()
    }

    fn stop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("a transport thread panicked");
            }
        }
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.stop();
    }
}

fn group_thread<H: Host>(
    index: u16,
    host: Arc<H>,
    opts: TransportOptions,
    devices: Arc<Vec<super::device::Device>>,
    shared: Arc<Shared>,
    rx: Receiver<GroupMsg>,
    run: RunConfig,
) {
    let start = Instant::now();
    let now_ns = || start.elapsed().as_nanos() as u64;
    let mut pg = match PollGroup::new(
        index,
        &*host,
        opts,
        devices,
        shared.clone(),
        run.drain_timeout.as_nanos() as u64,
    ) {
        Ok(pg) => pg,
        Err(e) => {
            tracing::error!(group = index, "creating poll group failed: {e}");
            return;
        }
    };
    let mut idle: u32 = 0;
    let mut last_stats = Instant::now();
    let mut shutdown_at: Option<Instant> = None;
    loop {
        let now = now_ns();
        let mut work = 0;
        while let Ok(msg) = rx.try_recv() {
            pg.handle_msg(msg, now);
            work += 1;
        }
        work += pg.poll(now);
        if last_stats.elapsed() >= Duration::from_millis(100) {
            last_stats = Instant::now();
            publish(&shared, index, &pg);
        }
        if shared.shutdown.load(Ordering::Relaxed) {
            match shutdown_at {
                None => {
                    shutdown_at = Some(Instant::now());
                    pg.disconnect_all(now);
                }
                Some(t) => {
                    if pg.live_qpairs() == 0 {
                        break;
                    }
                    if t.elapsed() > run.shutdown_timeout {
                        tracing::warn!(
                            group = index,
                            live = pg.live_qpairs(),
                            "shutdown timeout: dropping remaining qpairs"
                        );
                        break;
                    }
                }
            }
        }
        if work == 0 {
            idle = idle.saturating_add(1);
            if run.busy_poll {
                std::hint::spin_loop();
            } else if idle > 2000 {
                std::thread::sleep(Duration::from_micros(200));
            } else if idle > 200 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        } else {
            idle = 0;
        }
    }
    publish(&shared, index, &pg);
}

fn publish<H: Host>(shared: &Shared, index: u16, pg: &PollGroup<H>) {
    let i = usize::from(index);
    if let Some(s) = shared
        .group_stats
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_mut(i)
    {
        *s = pg.stats();
    }
    if let Some(l) = shared
        .group_load
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_mut(i)
    {
        *l = pg.live_qpairs() as u64;
    }
}

/// A listening CM id (upstream `spdk_nvmf_rdma_port`).
struct Listener {
    id: CmId,
    /// The address actually bound (port 0 resolved).
    addr: SocketAddr,
    /// Transport device index the address belongs to.
    device: usize,
}

impl Listener {
    /// `rdma_create_id` + `rdma_bind_addr` + `rdma_listen` on `addr`, which
    /// must belong to one of `devices`.
    fn open(
        ev: &EventChannel,
        addr: SocketAddr,
        devices: &[Device],
        backlog: i32,
    ) -> Result<Listener, TransportError> {
        let id = CmId::new(ev).map_err(verbs("rdma_create_id"))?;
        id.bind_addr(addr)
            .map_err(verbs(format!("rdma_bind_addr {addr}")))?;
        let Some(ctx) = id.context() else {
            return Err(TransportError::NotRdmaAddress(addr));
        };
        let Some(device) = devices.iter().position(|d| d.ctx == ctx) else {
            return Err(TransportError::NotRdmaAddress(addr));
        };
        id.listen(backlog)
            .map_err(verbs(format!("rdma_listen {addr}")))?;
        let actual = id.local_addr().unwrap_or(addr);
        tracing::info!(
            "*** NVMe/RDMA Target Listening on {} port {} ***",
            actual.ip(),
            actual.port()
        );
        Ok(Listener {
            id,
            addr: actual,
            device,
        })
    }
}

/// How often the acceptor looks for a device that had a fatal error to be
/// listed again (upstream rescans on every acceptor run with retry ports).
const RESCAN_PERIOD: Duration = Duration::from_millis(100);

struct Acceptor {
    ev: EventChannel,
    listeners: Vec<Listener>,
    /// Listen addresses stopped by a device's fatal error, with the device
    /// index: listened on again when the device is back.
    retry_listen: Vec<(SocketAddr, usize)>,
    /// Per device index: `IBV_EVENT_DEVICE_FATAL` seen, not back yet.
    dead: Vec<bool>,
    last_rescan: Instant,
    devices: Arc<Vec<Device>>,
    senders: Vec<Sender<GroupMsg>>,
    shared: Arc<Shared>,
    opts: TransportOptions,
    next_admin: usize,
    next_io: usize,
}

impl Acceptor {
    fn run(mut self) {
        let mut fds = vec![self.ev.fd()];
        fds.extend(self.devices.iter().map(|d| d.ctx.async_fd()));
        let period =
            Duration::from_micros(u64::from(self.opts.acceptor_poll_rate).clamp(100, 10_000));
        while !self.shared.shutdown.load(Ordering::Relaxed) {
            match wait_readable_any(&fds, period) {
                Ok(_) => {}
                Err(e) => {
                    tracing::error!("acceptor poll failed: {e}");
                    std::thread::sleep(period);
                }
            }
            self.process_cm_events();
            self.process_ib_events();
            self.retry_dead_devices();
        }
        // Keep acking CM events until the groups are gone so that ids can be
        // destroyed; the groups exit on their own deadline.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline
            && self
                .senders
                .iter()
                .any(|s| s.send(GroupMsg::CmDisconnected { id_key: 0 }).is_ok())
        {
            let _ = wait_readable_any(&fds, Duration::from_millis(10));
            self.process_cm_events();
            self.process_ib_events();
        }
    }

    fn broadcast(&self, mk: impl Fn() -> GroupMsg) {
        for s in &self.senders {
            let _ = s.send(mk());
        }
    }

    fn process_cm_events(&mut self) {
        for _ in 0..MAX_EVENTS_PER_POLL {
            let mut ev = match self.ev.get_event() {
                Ok(Some(ev)) => ev,
                Ok(None) => return,
                Err(e) => {
                    tracing::error!("rdma_get_cm_event failed: {e}");
                    return;
                }
            };
            tracing::debug!(?ev, "CM event");
            match ev.kind {
                CmEventKind::ConnectRequest => {
                    let id = ev.take_id();
                    let listen = self
                        .listeners
                        .iter()
                        .find(|l| Some(l.id.key()) == ev.listen_key)
                        .map(|l| l.addr);
                    if let (Some(id), Some(listen)) = (id, listen) {
                        self.connect(
                            id,
                            listen,
                            ev.private_data(),
                            ev.initiator_depth,
                            ev.responder_resources,
                        );
                    } else {
                        tracing::error!("CONNECT_REQUEST without an id or listener");
                    }
                }
                CmEventKind::Disconnected => {
                    let id_key = ev.id_key;
                    self.broadcast(|| GroupMsg::CmDisconnected { id_key });
                }
                // The host died or vanished between CONNECT_REQUEST and
                // ESTABLISHED: its qpair (already accepted, receives posted)
                // would otherwise never hear from it again (issue 7).
                CmEventKind::ConnectError | CmEventKind::Unreachable | CmEventKind::Rejected => {
                    let id_key = ev.id_key;
                    tracing::warn!(
                        kind = ?ev.kind, status = ev.status, id_key = format_args!("{id_key:#x}"),
                        "connection failed before it was established: tearing the qpair down"
                    );
                    self.broadcast(|| GroupMsg::CmDisconnected { id_key });
                }
                CmEventKind::DeviceRemoval => {
                    let id_key = ev.id_key;
                    if self.listeners.iter().any(|l| l.id.key() == id_key) {
                        tracing::error!("device removal on a listener: the listener stops");
                        self.listeners.retain(|l| l.id.key() != id_key);
                    } else {
                        self.broadcast(|| GroupMsg::CmDisconnected { id_key });
                    }
                }
                CmEventKind::AddrChange => {
                    tracing::warn!(id_key = ev.id_key, "address change on a listener (ignored)");
                }
                CmEventKind::Established
                | CmEventKind::TimewaitExit
                | CmEventKind::AddrResolved
                | CmEventKind::AddrError
                | CmEventKind::RouteResolved
                | CmEventKind::RouteError
                | CmEventKind::ConnectResponse
                | CmEventKind::MulticastJoin
                | CmEventKind::MulticastError => {}
                CmEventKind::Other(v) => tracing::error!(event = v, "unexpected CM event"),
            }
        }
    }

    fn reject(&self, id: CmId, status: RejectStatus, why: &str) {
        tracing::error!(peer = ?id.peer_addr(), ?status, "rejecting connect request: {why}");
        self.shared
            .connects_rejected
            .fetch_add(1, Ordering::Relaxed);
        let r = CmReject { recfmt: 0, status };
        if let Err(e) = id.reject(&r.to_bytes()) {
            tracing::warn!("rdma_reject failed: {e}");
        }
    }

    /// CONNECT_REQUEST validation and negotiation (upstream `nvmf_rdma_connect`).
    fn connect(
        &mut self,
        id: CmId,
        listen: SocketAddr,
        private_data: &[u8],
        initiator_depth: u8,
        responder_resources: u8,
    ) {
        let request = match CmRequest::parse(private_data) {
            Ok(r) => r,
            Err(status) => {
                let why = format!("private data of {} bytes refused", private_data.len());
                return self.reject(id, status, &why);
            }
        };
        let Some(device) = id
            .context()
            .and_then(|ctx| self.devices.iter().position(|d| d.ctx == ctx))
        else {
            return self.reject(id, RejectStatus::NoResources, "unknown device");
        };
        if self.dead[device] {
            let why = format!("device {} had a fatal error", self.devices[device].name);
            return self.reject(id, RejectStatus::NoResources, &why);
        }
        let attr = self.devices[device].attr;
        let limits = ConnectLimits {
            max_queue_depth: self.opts.max_queue_depth,
            // Upstream sizes admin QPs with max_queue_depth too (doc §7.1).
            max_admin_queue_depth: self.opts.max_queue_depth,
            device_max_qp_wr: attr.max_qp_wr,
            device_max_qp_rd_atom: attr.max_qp_init_rd_atom,
            initiator_depth,
            responder_resources,
            srq: false,
        };
        let negotiated = match negotiate(&request, &limits) {
            Ok(n) => n,
            Err(status) => {
                let why = format!("negotiation failed for {request:?}");
                return self.reject(id, status, &why);
            }
        };
        let group = self.pick_group(negotiated.qid);
        let msg = GroupMsg::NewQpair(Box::new(NewQpair {
            cm_id: id,
            device,
            negotiated,
            request,
            listen,
        }));
        if let Err(std::sync::mpsc::SendError(GroupMsg::NewQpair(n))) =
            self.senders[group].send(msg)
        {
            self.reject(n.cm_id, RejectStatus::NoResources, "poll group is gone");
        }
    }

    /// Upstream `get_optimal_poll_group`: admin round-robin, I/O least loaded.
    fn pick_group(&mut self, qid: u16) -> usize {
        let n = self.senders.len();
        if qid == 0 {
            let g = self.next_admin % n;
            self.next_admin = (g + 1) % n;
            return g;
        }
        let load = self
            .shared
            .group_load
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut best = self.next_io % n;
        for k in 0..n {
            let g = (self.next_io + k) % n;
            if load.get(g).copied().unwrap_or(0) < load.get(best).copied().unwrap_or(0) {
                best = g;
            }
            if load.get(g).copied().unwrap_or(0) == 0 {
                best = g;
                break;
            }
        }
        self.next_io = (best + 1) % n;
        best
    }

    /// `IBV_EVENT_DEVICE_FATAL` (upstream `need_destroy` + device removal):
    /// every qpair on the device is torn down (bounded by the drain
    /// deadline), its listeners stop, and connections to it are refused until
    /// [`Acceptor::retry_dead_devices`] takes it up again.
    fn device_fatal(&mut self, device: usize) {
        let name = self.devices[device].name.clone();
        if self.dead[device] {
            tracing::warn!(device = %name, "IBV_EVENT_DEVICE_FATAL again (already torn down)");
            return;
        }
        self.dead[device] = true;
        tracing::error!(
            device = %name,
            qpairs = self.shared.device_qpairs(device),
            "IBV_EVENT_DEVICE_FATAL: tearing down the device's qpairs and listeners"
        );
        self.broadcast(|| GroupMsg::DeviceFatal { device });
        let (stopped, kept): (Vec<Listener>, Vec<Listener>) = std::mem::take(&mut self.listeners)
            .into_iter()
            .partition(|l| l.device == device);
        self.listeners = kept;
        for l in stopped {
            tracing::warn!(device = %name, addr = %l.addr, "listener stopped until the device is back");
            self.retry_listen.push((l.addr, device));
        }
        self.last_rescan = Instant::now();
    }

    /// A dead device whose qpairs are all gone is taken up again once
    /// `rdma_get_devices` lists its context again (upstream
    /// `nvmf_rdma_rescan_devices` + `retry_listen_port`), and its listen
    /// addresses are listened on again; a failed listen is retried later.
    fn retry_dead_devices(&mut self) {
        if !self.dead.iter().any(|&d| d) || self.last_rescan.elapsed() < RESCAN_PERIOD {
            return;
        }
        self.last_rescan = Instant::now();
        let listed = match rdma_devices() {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("rescanning devices: rdma_get_devices failed: {e}");
                return;
            }
        };
        for device in 0..self.devices.len() {
            if !self.dead[device] || self.shared.device_qpairs(device) != 0 {
                continue;
            }
            let d = &self.devices[device];
            if !listed.contains(&d.ctx) {
                continue;
            }
            if let Err(e) = d.ctx.query_device() {
                tracing::warn!(device = %d.name, "device listed again but not usable yet: {e}");
                continue;
            }
            tracing::warn!(device = %d.name, "device is back: taking it up again");
            self.dead[device] = false;
            self.broadcast(|| GroupMsg::DeviceBack { device });
        }
        let mut retry = Vec::new();
        for (addr, device) in std::mem::take(&mut self.retry_listen) {
            if self.dead[device] {
                retry.push((addr, device));
                continue;
            }
            match Listener::open(&self.ev, addr, &self.devices, self.opts.acceptor_backlog) {
                Ok(l) => self.listeners.push(l),
                Err(e) => {
                    tracing::warn!(%addr, "listening again failed (retried): {e}");
                    retry.push((addr, device));
                }
            }
        }
        self.retry_listen = retry;
    }

    /// IB async events (upstream `nvmf_process_ib_event`).
    fn process_ib_events(&mut self) {
        let mut fatal = Vec::new();
        for (device, d) in self.devices.iter().enumerate() {
            for _ in 0..MAX_EVENTS_PER_POLL {
                let ev = match d.ctx.get_async_event() {
                    Ok(Some(ev)) => ev,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!(device = %d.name, "ibv_get_async_event failed: {e}");
                        break;
                    }
                };
                let qp_num = match ev.element {
                    AsyncElement::Qp { qp_num } => Some(qp_num),
                    _ => None,
                };
                match (ev.kind, qp_num) {
                    (AsyncEventKind::QpFatal, Some(qp_num)) => {
                        tracing::error!(device = %d.name, qp_num, "IBV_EVENT_QP_FATAL");
                        self.broadcast(|| GroupMsg::QpEvent {
                            device,
                            qp_num,
                            kind: QpEventKind::Fatal,
                        });
                    }
                    (AsyncEventKind::QpLastWqeReached, Some(qp_num)) => {
                        self.broadcast(|| GroupMsg::QpEvent {
                            device,
                            qp_num,
                            kind: QpEventKind::LastWqeReached,
                        });
                    }
                    (AsyncEventKind::DeviceFatal, _) => fatal.push(device),
                    (kind, _) => {
                        tracing::info!(device = %d.name, ?kind, ?qp_num, "async event")
                    }
                }
            }
        }
        for device in fatal {
            self.device_fatal(device);
        }
    }
}
