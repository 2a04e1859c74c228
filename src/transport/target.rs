//! The transport core (upstream `nvmf_rdma_create`, `listen`/`stop_listen`,
//! the acceptor poller, `get_optimal_poll_group`, `poll_group_create`): no
//! thread, no sleep, no blocking call. A driver owns the threads: the
//! standalone target (`crate::standalone::driver`) or SPDK's reactors.

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::engine::codec::private_data::{
    negotiate, CmReject, CmRequest, ConnectLimits, RejectStatus,
};
use crate::verbs::{
    rdma_devices, AsyncElement, AsyncEventKind, CmEventKind, CmId, EventChannel, VerbsError,
};

use super::device::Device;
use super::host::Host;
use super::options::{OptionsError, TransportCdata, TransportOptions};
use super::pending::{AcceptorEvent, PendingInner, PendingQpair, QpairEvent, QpairMsg};
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
        let acceptor = Acceptor {
            ev,
            listeners: Vec::new(),
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
        if acc.listeners.iter().any(|(_, a)| *a == addr) {
            return Err(TransportError::AlreadyListening(addr));
        }
        let id = CmId::new(&acc.ev).map_err(verbs("rdma_create_id"))?;
        id.bind_addr(addr)
            .map_err(verbs(format!("rdma_bind_addr {addr}")))?;
        let Some(ctx) = id.context() else {
            return Err(TransportError::NotRdmaAddress(addr));
        };
        if !self.core.devices.iter().any(|d| d.ctx == ctx) {
            return Err(TransportError::NotRdmaAddress(addr));
        }
        id.listen(self.core.opts.acceptor_backlog)
            .map_err(verbs(format!("rdma_listen {addr}")))?;
        let actual = id.local_addr().unwrap_or(addr);
        tracing::info!(
            "*** NVMe/RDMA Target Listening on {} port {} ***",
            actual.ip(),
            actual.port()
        );
        acc.listeners.push((id, actual));
        Ok(actual)
    }

    /// Stops listening on `addr` (the bound address [`Transport::listen`]
    /// returned). Connected qpairs are left alone, as upstream. Returns
    /// whether a listener was removed.
    pub fn stop_listen(&self, addr: SocketAddr) -> bool {
        let mut acc = self.acceptor();
        let before = acc.listeners.len();
        acc.listeners.retain(|(_, a)| *a != addr);
        let removed = acc.listeners.len() != before;
        if removed {
            tracing::info!(%addr, "stopped listening");
        }
        removed
    }

    /// The addresses listened on.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.acceptor().listeners.iter().map(|(_, a)| *a).collect()
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

struct Acceptor {
    ev: EventChannel,
    listeners: Vec<(CmId, SocketAddr)>,
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
                        .find(|(l, _)| Some(l.key()) == ev.listen_key)
                        .map(|(_, a)| *a);
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
                CmEventKind::DeviceRemoval => {
                    let id_key = ev.id_key;
                    if self.listeners.iter().any(|(l, _)| l.key() == id_key) {
                        tracing::error!("device removal on a listener: the listener stops");
                        self.listeners.retain(|(l, _)| l.key() != id_key);
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
                | CmEventKind::ConnectError
                | CmEventKind::Unreachable
                | CmEventKind::Rejected
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

    /// IB async events (upstream `nvmf_process_ib_event`).
    fn process_ib_events(&mut self) {
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
                    (AsyncEventKind::DeviceFatal, _) => {
                        tracing::error!(device = %d.name, "IBV_EVENT_DEVICE_FATAL");
                    }
                    (kind, _) => {
                        tracing::info!(device = %d.name, ?kind, ?qp_num, "async event")
                    }
                }
            }
        }
    }
}
