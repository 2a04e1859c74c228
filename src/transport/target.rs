//! The transport core (upstream `nvmf_rdma_create`, `listen`/`stop_listen`,
//! the acceptor poller, `get_optimal_poll_group`, `poll_group_create`): no
//! thread, no sleep, no blocking call. A driver owns the threads: the
//! standalone target (`crate::standalone::driver`) or SPDK's reactors.

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::engine::codec::private_data::{
    negotiate, CmReject, CmRequest, ConnectLimits, RejectStatus,
};
use crate::verbs::{
    rdma_devices, AsyncElement, AsyncEventKind, CmEventKind, CmId, EventChannel, VerbsError,
};

use super::device::Device;
use super::host::Host;
use super::options::{OptionsError, TransportCdata, TransportOptions};
use super::pending::{
    AcceptorEvent, DeviceEvent, DeviceMsg, PendingInner, PendingQpair, QpairEvent, QpairMsg,
};
use super::placement::GroupRegistry;
use super::poll_group::PollGroup;
use super::shared::Shared;
use super::stats::ResourceCounters;

/// Max CM events and IB async events handled per acceptor run (upstream 32).
const MAX_EVENTS_PER_POLL: usize = 32;

/// Why a transport call failed.
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
    /// `listen` on an address already listened on.
    #[error("already listening on {0}")]
    AlreadyListening(SocketAddr),
    /// The core count given by the driver is 0.
    #[error("core count must be at least 1")]
    NoCores,
    /// 65536 poll groups are live.
    #[error("too many poll groups")]
    TooManyPollGroups,
}

pub(crate) fn verbs(what: impl Into<String>) -> impl FnOnce(VerbsError) -> TransportError {
    let what = what.into();
    move |source| TransportError::Verbs { what, source }
}

/// What every poll group and the acceptor share.
pub(crate) struct Core {
    pub opts: TransportOptions,
    pub devices: Arc<Vec<Device>>,
    pub shared: Arc<Shared>,
    pub groups: GroupRegistry,
    acceptor: Mutex<Acceptor>,
}

/// The NVMe/RDMA target transport with no threads (see the module docs of
/// [`crate::transport`]). Cheap to clone (one shared core); every method
/// takes `&self` and may be called from any thread.
#[derive(Clone)]
pub struct Transport {
    core: Arc<Core>,
}

impl Transport {
    /// Validates the options against `cores` (the driver's core count;
    /// upstream `spdk_env_get_core_count`), opens every RDMA device and
    /// adjusts the options to them (upstream `nvmf_rdma_create`). Listens
    /// nowhere yet.
    pub fn create(mut opts: TransportOptions, cores: u32) -> Result<Transport, TransportError> {
        if cores == 0 {
            return Err(TransportError::NoCores);
        }
        for n in opts.validate(cores)? {
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
        let shared = Arc::new(Shared::default());
        *shared
            .device_qpairs
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = vec![0; devices.len()];
        let acceptor = Acceptor {
            ev,
            listeners: Vec::new(),
            retry_listen: Vec::new(),
            dead: vec![false; devices.len()],
            last_rescan: Instant::now(),
            devices: devices.clone(),
            shared: shared.clone(),
            opts: opts.clone(),
            out: Vec::new(),
        };
        Ok(Transport {
            core: Arc::new(Core {
                opts,
                devices,
                shared,
                groups: GroupRegistry::default(),
                acceptor: Mutex::new(acceptor),
            }),
        })
    }

    fn acceptor(&self) -> MutexGuard<'_, Acceptor> {
        self.core.acceptor.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Listens on `addr` (IPv4 or IPv6; port 0 picks one) and returns the
    /// bound address. Callable at any time (upstream `listen`).
    pub fn listen(&self, addr: SocketAddr) -> Result<SocketAddr, TransportError> {
        let mut acc = self.acceptor();
        if acc.listeners.iter().any(|l| l.addr == addr) {
            return Err(TransportError::AlreadyListening(addr));
        }
        let l = Listener::open(
            &acc.ev,
            addr,
            &self.core.devices,
            self.core.opts.acceptor_backlog,
        )?;
        let actual = l.addr;
        acc.listeners.push(l);
        Ok(actual)
    }

    /// Stops listening on `addr` (the bound address [`Transport::listen`]
    /// returned). Connected qpairs are left alone, as upstream. Returns
    /// whether a listener was removed.
    pub fn stop_listen(&self, addr: SocketAddr) -> bool {
        let mut acc = self.acceptor();
        let before = acc.listeners.len() + acc.retry_listen.len();
        acc.listeners.retain(|l| l.addr != addr);
        acc.retry_listen.retain(|(a, _)| *a != addr);
        let removed = acc.listeners.len() + acc.retry_listen.len() != before;
        if removed {
            tracing::info!(%addr, "stopped listening");
        }
        removed
    }

    /// The addresses listened on.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.acceptor().listeners.iter().map(|l| l.addr).collect()
    }

    /// The fds the acceptor waits on: the CM event channel, then each
    /// device's async event fd. All non-blocking; when any is readable,
    /// call [`Transport::accept_poll`].
    pub fn acceptor_fds(&self) -> Vec<RawFd> {
        let acc = self.acceptor();
        let mut fds = vec![acc.ev.fd()];
        fds.extend(self.core.devices.iter().map(|d| d.ctx.async_fd()));
        fds
    }

    /// Whether the acceptor has work no fd announces: a device that had a
    /// fatal error, rescanned periodically until it is listed again. An
    /// interrupt-mode driver runs [`Transport::accept_poll`] periodically
    /// only while this holds (otherwise when an acceptor fd is readable).
    pub fn acceptor_needs_timer(&self) -> bool {
        self.acceptor().dead.contains(&true)
    }

    /// One acceptor run (upstream's acceptor poller): handles up to 32 CM
    /// events and 32 async events per device, never blocks, and hands the
    /// results to `sink` after releasing the acceptor (so `sink` may call
    /// [`Transport::optimal_group`], `listen` or anything else). Returns the
    /// number of events handed over.
    pub fn accept_poll(&self, sink: &mut dyn FnMut(AcceptorEvent)) -> usize {
        let mut out = {
            let mut acc = self.acceptor();
            acc.process_cm_events();
            acc.process_ib_events();
            acc.retry_dead_devices();
            std::mem::take(&mut acc.out)
        };
        let n = out.len();
        for ev in out.drain(..) {
            sink(ev);
        }
        let mut acc = self.acceptor();
        if acc.out.is_empty() {
            acc.out = out;
        }
        n
    }

    /// Registers a new poll group for `host` (upstream `poll_group_create`,
    /// on the group's own thread): one poller (CQ, SRQ) per device.
    pub fn create_poll_group<H: Host>(&self, host: &H) -> Result<PollGroup<H>, TransportError> {
        let index = self
            .core
            .groups
            .register()
            .ok_or(TransportError::TooManyPollGroups)?;
        PollGroup::new(index, host, self.core.clone()).map_err(|e| {
            self.core.groups.unregister(index);
            TransportError::Verbs {
                what: format!("creating poll group {index}"),
                source: e,
            }
        })
    }

    /// The group a new qpair with queue id `qid` should join (upstream
    /// `get_optimal_poll_group`: admin and I/O round-robin separately), or
    /// `None` if no group exists. Takes only the registry's lock: safe to call
    /// from inside [`Transport::accept_poll`]'s sink.
    pub fn optimal_group(&self, qid: u16) -> Option<u16> {
        self.core.groups.place(qid)
    }

    /// Poll groups currently registered.
    pub fn poll_groups(&self) -> usize {
        self.core.groups.count()
    }

    /// The options in effect (after validation and device adjustment).
    pub fn options(&self) -> &TransportOptions {
        &self.core.opts
    }

    /// The `cdata_init` values.
    pub fn cdata(&self) -> TransportCdata {
        self.core.opts.cdata()
    }

    /// Live-resource counters.
    pub fn counters(&self) -> ResourceCounters {
        self.core.shared.counters()
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
    shared: Arc<Shared>,
    opts: TransportOptions,
    /// Events for the driver, handed over by `accept_poll`.
    out: Vec<AcceptorEvent>,
}

impl Acceptor {
    /// Sends `event` to the qpair `cm_key` names, if any.
    fn route_cm(&mut self, cm_key: usize, event: QpairEvent) {
        let qpair = self.shared.routes().by_cm.get(&cm_key).copied();
        match qpair {
            Some(qpair) => self
                .out
                .push(AcceptorEvent::Qpair(QpairMsg { qpair, event })),
            None => tracing::debug!(cm_key, ?event, "CM event for no qpair ignored"),
        }
    }

    /// Sends `event` to the qpair QP `qp_num` of `device` belongs to, if any.
    fn route_qp(&mut self, device: usize, qp_num: u32, event: QpairEvent) {
        let qpair = self.shared.routes().by_qpn.get(&(device, qp_num)).copied();
        match qpair {
            Some(qpair) => self
                .out
                .push(AcceptorEvent::Qpair(QpairMsg { qpair, event })),
            None => tracing::debug!(device, qp_num, ?event, "async event for no qpair ignored"),
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
                    self.route_cm(ev.id_key, QpairEvent::CmDisconnected);
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
                    self.route_cm(id_key, QpairEvent::CmDisconnected);
                }
                CmEventKind::DeviceRemoval => {
                    let id_key = ev.id_key;
                    if self.listeners.iter().any(|l| l.id.key() == id_key) {
                        tracing::error!("device removal on a listener: the listener stops");
                        self.listeners.retain(|l| l.id.key() != id_key);
                    } else {
                        self.route_cm(id_key, QpairEvent::CmDisconnected);
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
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
        self.out.push(AcceptorEvent::NewQpair(PendingQpair(Box::new(
            PendingInner {
                cm_id: Some(id),
                device,
                negotiated,
                request,
                listen,
                shared: self.shared.clone(),
            },
        ))));
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
        self.out.push(AcceptorEvent::Device(DeviceMsg {
            device,
            event: DeviceEvent::Fatal,
        }));
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
            self.out.push(AcceptorEvent::Device(DeviceMsg {
                device,
                event: DeviceEvent::Back,
            }));
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
        let devices = self.devices.clone();
        for (device, d) in devices.iter().enumerate() {
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
                        self.route_qp(device, qp_num, QpairEvent::QpFatal);
                    }
                    (AsyncEventKind::QpLastWqeReached, Some(qp_num)) => {
                        self.route_qp(device, qp_num, QpairEvent::LastWqeReached);
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
