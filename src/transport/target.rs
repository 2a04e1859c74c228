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

use super::device::{Device, DeviceTable};
use super::host::Host;
use super::options::{OptionsError, TransportCdata, TransportOptions};
use super::pending::{
    AcceptorEvent, DeviceEvent, DeviceMsg, PendingInner, PendingQpair, PortEvent, PortMsg,
    QpairEvent, QpairMsg,
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
    pub devices: Arc<DeviceTable>,
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
        let mut opened = Vec::new();
        for ctx in contexts {
            let name = ctx.name();
            opened.push(Device::new(ctx).map_err(verbs(format!("opening device {name}")))?);
        }
        let max_sge = opened.iter().map(|d| d.attr.max_sge).min().unwrap_or(16);
        if let Some(n) = opts.adjust_for_device_sge(max_sge) {
            tracing::info!("{n}");
        }
        tracing::info!(opts = %opts.dump_opts_json(), "transport options");
        let devices = Arc::new(DeviceTable::default());
        for d in opened {
            devices.push(d);
        }
        let ev = EventChannel::new().map_err(verbs("rdma_create_event_channel"))?;
        let shared = Arc::new(Shared::default());
        let acceptor = Acceptor {
            ev,
            listeners: Vec::new(),
            retry_listen: Vec::new(),
            last_rescan: Instant::now(),
            fds_generation: 0,
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
        let l = match Listener::open(&acc.ev, addr, &acc.devices, acc.opts.acceptor_backlog) {
            // Upstream: no device for the address → rescan, in case it is
            // one that appeared since (then the next listen finds it).
            Err(TransportError::NotRdmaAddress(_)) if acc.rescan() => {
                Listener::open(&acc.ev, addr, &acc.devices, acc.opts.acceptor_backlog)?
            }
            other => other?,
        };
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
        acc.retry_listen.retain(|a| *a != addr);
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

    /// The fds the acceptor waits on: the CM event channel, then each live
    /// device's async event fd. All non-blocking; when any is readable,
    /// call [`Transport::accept_poll`]. The set changes when a device is
    /// removed or opened ([`Transport::acceptor_fds_generation`]).
    pub fn acceptor_fds(&self) -> Vec<RawFd> {
        let acc = self.acceptor();
        let mut fds = vec![acc.ev.fd()];
        fds.extend(acc.devices.live().iter().map(|(_, d)| d.ctx.async_fd()));
        fds
    }

    /// Changes whenever [`Transport::acceptor_fds`] may have changed (a
    /// device removed or opened): a driver that registered the fds
    /// registers them again.
    pub fn acceptor_fds_generation(&self) -> u64 {
        self.acceptor().fds_generation
    }

    /// Whether the acceptor has work no fd announces: a removed device
    /// still to be released once its qpairs and pollers are gone, or
    /// listeners waiting for a device (rescanned every 100 ms). An
    /// interrupt-mode driver runs [`Transport::accept_poll`] periodically
    /// only while this holds (otherwise when an acceptor fd is readable).
    pub fn acceptor_needs_timer(&self) -> bool {
        let acc = self.acceptor();
        !acc.retry_listen.is_empty() || acc.devices.any_dying()
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
            acc.maintain_devices();
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
    /// The address asked for (port 0 kept as 0; re-listened as given).
    requested: SocketAddr,
}

impl Listener {
    /// `rdma_create_id` + `rdma_bind_addr` + `rdma_listen` on `addr`, which
    /// must belong to one of the live `devices`.
    fn open(
        ev: &EventChannel,
        addr: SocketAddr,
        devices: &DeviceTable,
        backlog: i32,
    ) -> Result<Listener, TransportError> {
        let id = CmId::new(ev).map_err(verbs("rdma_create_id"))?;
        id.bind_addr(addr)
            .map_err(verbs(format!("rdma_bind_addr {addr}")))?;
        let Some(ctx) = id.context() else {
            return Err(TransportError::NotRdmaAddress(addr));
        };
        let Some(device) = devices.live_index(&ctx) else {
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
            requested: addr,
        })
    }
}

/// How often the acceptor rescans the devices while addresses wait to be
/// listened on again (upstream rescans on every acceptor run with retry
/// ports).
const RESCAN_PERIOD: Duration = Duration::from_millis(100);

struct Acceptor {
    ev: EventChannel,
    listeners: Vec<Listener>,
    /// Listen addresses stopped by a device's removal (upstream
    /// `retry_ports`): listened on again once a rescan found a device for
    /// them.
    retry_listen: Vec<SocketAddr>,
    last_rescan: Instant,
    /// Bumped when the live devices (and so the async fds) change.
    fds_generation: u64,
    devices: Arc<DeviceTable>,
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
                    // Upstream nvmf_rdma_handle_cm_event_port_removal: the
                    // listener's device goes (its ids are only good for
                    // destroying now).
                    let device = self
                        .listeners
                        .iter()
                        .find(|l| l.id.key() == id_key)
                        .map(|l| (l.device, l.addr));
                    match device {
                        Some((device, addr)) => {
                            tracing::error!(%addr, device, "RDMA_CM_EVENT_DEVICE_REMOVAL on a listener: removing the device");
                            self.remove_device(device, "RDMA_CM_EVENT_DEVICE_REMOVAL");
                        }
                        None => self.route_cm(id_key, QpairEvent::CmDisconnected),
                    }
                }
                CmEventKind::AddrChange => {
                    self.addr_change(ev.id_key);
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
        let Some((device, dev)) = id.context().and_then(|ctx| {
            let i = self.devices.live_index(&ctx)?;
            Some((i, self.devices.get_live(i)?))
        }) else {
            return self.reject(
                id,
                RejectStatus::NoResources,
                "its device is unknown, removed or being removed",
            );
        };
        let attr = dev.attr;
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

    /// Device removal (upstream `need_destroy` + `nvmf_rdma_handle_device_removal`,
    /// on `IBV_EVENT_DEVICE_FATAL`, `RDMA_CM_EVENT_DEVICE_REMOVAL` on a
    /// listener, or a stale context found by a rescan): every qpair on the
    /// device is torn down (bounded by the drain deadline), each group drops
    /// its poller once it is empty, the device's listeners stop and wait in
    /// the retry list, and [`Acceptor::maintain_devices`] retires the device
    /// and rescans.
    fn remove_device(&mut self, device: usize, why: &str) {
        let name = self.devices.name(device).unwrap_or_else(|| "?".into());
        if !self.devices.mark_dying(device) {
            tracing::warn!(device = %name, index = device, "{why} again (already being removed)");
            return;
        }
        self.fds_generation += 1;
        tracing::error!(
            device = %name,
            index = device,
            qpairs = self.shared.device_qpairs(device),
            "{why}: tearing down the device's qpairs, pollers and listeners"
        );
        self.out.push(AcceptorEvent::Device(DeviceMsg {
            device,
            event: DeviceEvent::Removed,
        }));
        let (stopped, kept): (Vec<Listener>, Vec<Listener>) = std::mem::take(&mut self.listeners)
            .into_iter()
            .partition(|l| l.device == device);
        self.listeners = kept;
        for l in stopped {
            tracing::warn!(device = %name, addr = %l.addr, "listener stopped until a device for it is back");
            self.retry_listen.push(l.addr);
        }
        self.last_rescan = Instant::now();
    }

    /// `RDMA_CM_EVENT_ADDR_CHANGE` (upstream
    /// `nvmf_rdma_handle_cm_event_addr_change`): only for a listener — its
    /// qpairs are disconnected (every group hears of it), it stops and
    /// listens again on the same address; a failed listen waits in the retry
    /// list.
    fn addr_change(&mut self, id_key: usize) {
        let Some(i) = self.listeners.iter().position(|l| l.id.key() == id_key) else {
            tracing::debug!(
                id_key = format_args!("{id_key:#x}"),
                "ADDR_CHANGE on an id that is not a listener ignored"
            );
            return;
        };
        let old = self.listeners.remove(i);
        let (addr, requested) = (old.addr, old.requested);
        tracing::warn!(%addr, "RDMA_CM_EVENT_ADDR_CHANGE on a listener: disconnecting its qpairs and listening again");
        self.out.push(AcceptorEvent::Port(PortMsg {
            addr,
            event: PortEvent::AddrChange,
        }));
        drop(old);
        // The bound port, unless the listener asked for any port: the same
        // address is listened on again.
        let again = if requested.port() == 0 {
            addr
        } else {
            requested
        };
        match Listener::open(&self.ev, again, &self.devices, self.opts.acceptor_backlog) {
            Ok(l) => self.listeners.push(l),
            Err(e) => {
                tracing::warn!(%addr, "listening again after ADDR_CHANGE failed (retried): {e}");
                self.retry_listen.push(addr);
            }
        }
    }

    /// Every acceptor run: dying devices no poller and no qpair uses any more
    /// are retired (upstream `_nvmf_rdma_remove_destroyed_device`); then,
    /// while addresses wait in the retry list and no device is dying, the
    /// devices are rescanned every [`RESCAN_PERIOD`] and the addresses
    /// listened on again (upstream `nvmf_rdma_rescan_devices` +
    /// `nvmf_rdma_retry_listen_port`).
    fn maintain_devices(&mut self) {
        let shared = self.shared.clone();
        for (device, name) in self.devices.retire_unused(|d| shared.device_qpairs(d)) {
            tracing::warn!(device = %name, index = device, "device released (no poller or qpair left on it)");
            self.out.push(AcceptorEvent::Device(DeviceMsg {
                device,
                event: DeviceEvent::Retired,
            }));
        }
        if self.retry_listen.is_empty()
            || self.devices.any_dying()
            || self.last_rescan.elapsed() < RESCAN_PERIOD
        {
            return;
        }
        self.last_rescan = Instant::now();
        self.rescan();
        let mut retry = Vec::new();
        for addr in std::mem::take(&mut self.retry_listen) {
            match Listener::open(&self.ev, addr, &self.devices, self.opts.acceptor_backlog) {
                Ok(l) => {
                    tracing::warn!(%addr, device = l.device, "listening again");
                    self.listeners.push(l);
                }
                Err(e) => {
                    tracing::debug!(%addr, "listening again failed (retried): {e}");
                    retry.push(addr);
                }
            }
        }
        self.retry_listen = retry;
    }

    /// Opens every device `rdma_get_devices` lists that is not a live device
    /// of ours (a new context after a removal, or the same one after a fatal
    /// error and its retirement), each in a new slot, and tells the groups
    /// (they make its poller; a group that gets a qpair on it first makes it
    /// then). A live device whose context is no longer listed while another
    /// context of the same name is (upstream
    /// `nvmf_rdma_check_devices_context`) is removed. Returns whether a
    /// device was opened.
    fn rescan(&mut self) -> bool {
        let listed = match rdma_devices() {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("rescanning devices: rdma_get_devices failed: {e}");
                return false;
            }
        };
        let live = self.devices.live();
        for (i, d) in &live {
            let stale = !listed.contains(&d.ctx) && listed.iter().any(|c| c.name() == d.name);
            if stale {
                self.remove_device(*i, "device listed with a new context");
            }
        }
        let mut opened = false;
        for ctx in listed {
            if live.iter().any(|(_, d)| d.ctx == ctx) {
                continue;
            }
            let name = ctx.name();
            if let Err(e) = ctx.query_device() {
                tracing::warn!(device = %name, "device listed but not usable yet: {e}");
                continue;
            }
            match Device::new(ctx) {
                Ok(d) => {
                    // io_unit_size was sized at create for the devices then.
                    let needed = self
                        .opts
                        .max_io_size
                        .div_ceil(self.opts.io_unit_size.max(1));
                    if d.attr.max_sge < needed {
                        tracing::warn!(device = %name, max_sge = d.attr.max_sge, needed, "device opened by a rescan has fewer SGEs than one I/O of max_io_size needs");
                    }
                    let device = self.devices.push(d);
                    self.fds_generation += 1;
                    opened = true;
                    tracing::warn!(device = %name, index = device, "device opened (rescan)");
                    self.out.push(AcceptorEvent::Device(DeviceMsg {
                        device,
                        event: DeviceEvent::Added,
                    }));
                }
                Err(e) => tracing::warn!(device = %name, "opening device found by a rescan: {e}"),
            }
        }
        opened
    }

    /// IB async events (upstream `nvmf_process_ib_event`).
    fn process_ib_events(&mut self) {
        let mut fatal = Vec::new();
        // Dying devices are not read (upstream skips `need_destroy` ones).
        // By index: no allocation on an acceptor run.
        for device in 0..self.devices.slot_count() {
            let Some(d) = self.devices.get_live(device) else {
                continue;
            };
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
            self.remove_device(device, "IBV_EVENT_DEVICE_FATAL");
        }
    }
}
