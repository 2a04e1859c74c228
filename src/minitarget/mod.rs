//! A small NVMe-oF controller over RAM namespaces: the standalone target's
//! "generic layer" and the harness the transport is tested against.
//!
//! [`Target`] is sans-IO and transport-agnostic. The transport tells it
//! which qpair a command arrived on, hands over the command and its data
//! buffers, and gets back what to send:
//!
//! - [`Target::execute`] runs one command to completion
//!   ([`Execution::Complete`]) or keeps it ([`Execution::Held`]: an
//!   Asynchronous Event Request). Held commands complete later through
//!   [`Target::take_completions`].
//! - [`Target::poll`] enforces keep-alive timeouts and returns the qpairs the
//!   transport should disconnect ([`Disconnect`]); [`Target::next_timeout`]
//!   says when to call it next.
//! - [`Target::qpair_disconnecting`] tells the target the transport started
//!   tearing a qpair down and returns the held commands to free without a
//!   response; [`Target::qpair_disconnected`] tells it the qpair is gone: an
//!   admin qpair takes its controller with it.
//!
//! What it implements: Fabrics Connect (dynamic controller model, admin and
//! I/O queues), Property Get/Set (CAP, VS, CC, CSTS with enable, reset and
//! shutdown), Identify (CNS 00h-03h), Set/Get Features (Number of Queues,
//! Keep Alive Timer, Async Event Configuration, Volatile Write Cache), Keep
//! Alive, Asynchronous Event Request, Abort (of held AERs), Get Log Page
//! (error, SMART / health, changed namespace list, discovery log for
//! [`DISCOVERY_NQN`]), and Read / Write / Flush / Write Zeroes. Everything
//! else gets the NVMe status the spec (or upstream SPDK, where the spec
//! leaves a choice) gives it. Error statuses carry DNR except aborts. See
//! `docs/minitarget.md`.
//!
//! ```
//! use nvmf_rdma_rs::engine::codec::nvme::{fctype, io_opcode, Command};
//! use nvmf_rdma_rs::minitarget::{connect_data, DataBuffer, QpairId, Target, TargetConfig};
//!
//! let nqn = "nqn.2026-01.io.example:demo";
//! let mut target = Target::new(TargetConfig::new(nqn, vec![1 << 20])).unwrap();
//! let (admin, io) = (QpairId(1), QpairId(2));
//!
//! // Admin Connect (QID 0, SQSIZE 31, controller id FFFFh = any).
//! let mut connect = Command::new_fabrics(fctype::CONNECT, 1);
//! connect.set_cdw11(31);
//! let mut data = connect_data([0; 16], 0xffff, nqn, "nqn.2014-08.org.nvmexpress:host");
//! let done = target.execute(admin, &connect, DataBuffer::single(&mut data), 0);
//! let cntlid = done.completion().unwrap().cdw0 as u16;
//!
//! // Property Set CC: EN = 1, IOSQES = 6, IOCQES = 4.
//! let mut cc = Command::new_fabrics(fctype::PROPERTY_SET, 2);
//! cc.set_cdw11(0x14);
//! cc.set_cdw12(1 | 6 << 16 | 4 << 20);
//! assert!(target.execute(admin, &cc, DataBuffer::none(), 0).completion().unwrap().status.is_success());
//!
//! // I/O Connect (QID 1) naming the controller, then read block 0 of namespace 1.
//! connect.set_cdw10(1 << 16);
//! let mut data = connect_data([0; 16], cntlid, nqn, "nqn.2014-08.org.nvmexpress:host");
//! target.execute(io, &connect, DataBuffer::single(&mut data), 0);
//! let mut read = Command::new(io_opcode::READ, 3);
//! read.set_nsid(1);
//! let mut block = [0xffu8; 512];
//! let done = target.execute(io, &read, DataBuffer::single(&mut block), 0);
//! assert!(done.completion().unwrap().status.is_success());
//! assert!(block.iter().all(|&b| b == 0));
//! ```
#![forbid(unsafe_code)]

mod admin;
pub mod config;
mod connect;
mod controller;
mod data;
mod identify;
mod io;
mod log_page;
mod namespace;
mod subsystem;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::engine::codec::nvme::{fctype, Command, Completion, Fuse, Status};

pub use config::{
    AddressFamily, ConfigError, Listener, TargetConfig, TransportConfig, DISCOVERY_NQN, LBA_SIZE,
    TRTYPE_RDMA, TRTYPE_TCP,
};
pub use connect::connect_data;
pub use controller::ControllerKind;
pub use data::DataBuffer;
pub use namespace::RamNamespace;
pub use subsystem::IoStats;

use crate::engine::codec::admin::{csts, CNTLID_DYNAMIC};
use connect::{ConnectRequest, Refusal};
use controller::{CcChange, Controller};
use subsystem::Subsystem;

/// The transport's name for one queue pair (one RDMA QP / connection).
/// The target learns which controller and queue it is from its Connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QpairId(pub u64);

impl fmt::Display for QpairId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "qpair {}", self.0)
    }
}

/// What became of a command handed to [`Target::execute`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Execution {
    /// Send this completion now.
    Complete(Completion),
    /// The command is kept (an Asynchronous Event Request); its completion
    /// comes from [`Target::take_completions`] later, or never if the qpair
    /// disconnects first.
    Held,
}

impl Execution {
    /// The completion, if the command completed.
    pub fn completion(self) -> Option<Completion> {
        match self {
            Execution::Complete(c) => Some(c),
            Execution::Held => None,
        }
    }
}

/// A completion of a held command, for the given qpair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeferredCompletion {
    /// The admin qpair the command arrived on.
    pub qpair: QpairId,
    /// What to send.
    pub completion: Completion,
}

/// Why the target asks for a qpair to be disconnected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The controller's keep-alive timer expired.
    KeepAliveTimeout,
    /// The host reset the controller (CC.EN 1 -> 0): its I/O queues go.
    ControllerReset,
    /// The host shut the controller down (CC.SHN): its I/O queues go.
    ControllerShutdown,
    /// The controller's admin queue disconnected: its I/O queues go.
    AdminQueueGone,
}

/// A qpair the transport should disconnect, then report with
/// [`Target::qpair_disconnected`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disconnect {
    /// The qpair.
    pub qpair: QpairId,
    /// Its controller.
    pub cntlid: u16,
    /// Its queue id.
    pub qid: u16,
    /// Why.
    pub reason: DisconnectReason,
}

/// Outcome of one command inside the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Done {
        status: Status,
        cdw0: u32,
        cdw1: u32,
    },
    Held,
}

impl Outcome {
    pub(crate) fn success() -> Outcome {
        Outcome::value(0)
    }

    pub(crate) fn value(cdw0: u32) -> Outcome {
        Outcome::Done {
            status: Status::SUCCESS,
            cdw0,
            cdw1: 0,
        }
    }

    pub(crate) fn value64(v: u64) -> Outcome {
        Outcome::Done {
            status: Status::SUCCESS,
            cdw0: v as u32,
            cdw1: (v >> 32) as u32,
        }
    }

    /// A failure; DNR is set unless the status is an abort, which a host
    /// may retry.
    pub(crate) fn fail(status: Status) -> Outcome {
        Outcome::Done {
            status: with_retry_hint(status),
            cdw0: 0,
            cdw1: 0,
        }
    }
}

fn with_retry_hint(status: Status) -> Status {
    let retryable = status == Status::ABORTED_SQ_DELETION || status == Status::ABORTED_BY_REQUEST;
    if status.is_success() || retryable {
        status
    } else {
        status.with_dnr()
    }
}

/// Whether a qpair still serves commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QpairState {
    Active,
    /// Its controller was reset, shut down, timed out or destroyed; the
    /// transport has been asked to disconnect it. Commands are aborted.
    Defunct,
}

/// A connected qpair.
#[derive(Debug)]
struct Qpair {
    cntlid: u16,
    qid: u16,
    /// Submission queue entries (SQSIZE + 1), for SQHD wrap-around.
    sq_entries: u32,
    sq_head: u16,
    state: QpairState,
}

impl Qpair {
    /// Consumes one submission queue entry and returns the new head.
    fn advance_head(&mut self) -> u16 {
        self.sq_head = ((u32::from(self.sq_head) + 1) % self.sq_entries) as u16;
        self.sq_head
    }
}

/// The NVM subsystem with its RAM namespaces, the discovery subsystem, and
/// every controller and qpair connected to them.
#[derive(Debug)]
pub struct Target {
    subsystem: Subsystem,
    controllers: BTreeMap<u16, Controller>,
    qpairs: HashMap<QpairId, Qpair>,
    next_cntlid: u16,
    deferred: Vec<DeferredCompletion>,
    disconnects: Vec<Disconnect>,
}

/// Highest controller id of the dynamic model (FFF0h-FFFFh are reserved).
const MAX_CNTLID: u16 = 0xffef;

impl Target {
    /// A target serving `config`'s subsystem; fails on an invalid config.
    pub fn new(config: TargetConfig) -> Result<Target, ConfigError> {
        Ok(Target {
            subsystem: Subsystem::new(config)?,
            controllers: BTreeMap::new(),
            qpairs: HashMap::new(),
            next_cntlid: 1,
            deferred: Vec::new(),
            disconnects: Vec::new(),
        })
    }

    /// The configuration in force (listeners included).
    pub fn config(&self) -> &TargetConfig {
        &self.subsystem.config
    }

    /// Executes one command that arrived on `qpair`. `data` holds the
    /// request's data buffers (host data already placed for host-to-
    /// controller commands; to be filled for controller-to-host ones).
    /// `now_ns` is the caller's monotonic clock in nanoseconds.
    pub fn execute(
        &mut self,
        qpair: QpairId,
        cmd: &Command,
        mut data: DataBuffer<'_>,
        now_ns: u64,
    ) -> Execution {
        let Some(q) = self.qpairs.get_mut(&qpair) else {
            return Execution::Complete(self.execute_unconnected(qpair, cmd, &data, now_ns));
        };
        let sqhd = q.advance_head();
        let (cntlid, qid, state) = (q.cntlid, q.qid, q.state);
        let ctrl = match (state, self.controllers.get_mut(&cntlid)) {
            (QpairState::Active, Some(ctrl)) => ctrl,
            _ => {
                let status = Status::ABORTED_SQ_DELETION;
                tracing::debug!(%qpair, cid = cmd.cid(), "command on a qpair being disconnected");
                return Execution::Complete(completion(cmd.cid(), qid, sqhd, status, 0, 0));
            }
        };
        let mut change = CcChange::None;
        let outcome = if cmd.is_fabrics() {
            let (outcome, c) = admin::fabrics(ctrl, qid, cmd);
            change = c;
            outcome
        } else if cmd.fuse() != Fuse::Normal {
            // FUSES = 0: fused operations are not supported.
            Outcome::fail(Status::INVALID_FIELD)
        } else if qid == 0 {
            admin::execute(ctrl, &mut self.subsystem, cmd, &mut data, now_ns)
        } else {
            io::execute(ctrl, &mut self.subsystem, cmd, &mut data)
        };
        let result = match outcome {
            Outcome::Held => Execution::Held,
            Outcome::Done { status, cdw0, cdw1 } => {
                if !status.is_success() {
                    let lba = if qid != 0 { io::lba_range(cmd).0 } else { 0 };
                    ctrl.record_error(qid, cmd.cid(), status, cmd.nsid(), lba);
                    tracing::debug!(%qpair, cntlid, qid, cid = cmd.cid(), opcode = cmd.opcode(), %status, "command failed");
                }
                Execution::Complete(completion(cmd.cid(), qid, sqhd, status, cdw0, cdw1))
            }
        };
        match change {
            CcChange::Reset => self.drop_io_queues(cntlid, DisconnectReason::ControllerReset),
            CcChange::Shutdown => self.drop_io_queues(cntlid, DisconnectReason::ControllerShutdown),
            CcChange::None | CcChange::Enabled => {}
        }
        if qid == 0 {
            self.collect_late(cntlid);
        }
        result
    }

    /// Checks keep-alive timers at `now_ns` and returns every qpair the
    /// transport should disconnect (timeouts, and queues dropped by reset,
    /// shutdown or a lost admin queue since the last call).
    pub fn poll(&mut self, now_ns: u64) -> Vec<Disconnect> {
        let expired: Vec<u16> = self
            .controllers
            .values()
            .filter(|c| c.keep_alive_deadline().is_some_and(|d| now_ns > d))
            .map(|c| c.cntlid)
            .collect();
        for cntlid in expired {
            let Some(ctrl) = self.controllers.get_mut(&cntlid) else {
                continue;
            };
            tracing::warn!(cntlid, kato_ms = ctrl.kato_ms, hostnqn = %ctrl.hostnqn, "keep-alive timeout: tearing the controller down");
            ctrl.expired = true;
            ctrl.csts |= csts::CFS;
            let admin = ctrl.admin_qpair;
            let io: Vec<QpairId> = std::mem::take(&mut ctrl.io_qpairs).into_values().collect();
            self.request_disconnect(admin, DisconnectReason::KeepAliveTimeout);
            for q in io {
                self.request_disconnect(q, DisconnectReason::KeepAliveTimeout);
            }
        }
        std::mem::take(&mut self.disconnects)
    }

    /// The earliest time [`Target::poll`] has something to do, if any:
    /// `Some(0)` (already due) while disconnect requests wait to be
    /// collected, else the nearest keep-alive deadline.
    pub fn next_timeout(&self) -> Option<u64> {
        if !self.disconnects.is_empty() {
            return Some(0);
        }
        self.controllers
            .values()
            .filter_map(Controller::keep_alive_deadline)
            .min()
    }

    /// Completions of held commands that finished since the last call.
    pub fn take_completions(&mut self) -> Vec<DeferredCompletion> {
        std::mem::take(&mut self.deferred)
    }

    /// The transport starts tearing `qpair` down (for any reason: a
    /// [`Disconnect`] from [`Target::poll`], the host disconnecting, a
    /// transport error). From now on its commands are aborted. Returns the
    /// command ids of held commands (AERs, including ones whose
    /// [`DeferredCompletion`] was not taken yet) that the transport must free
    /// without a response (SPDK: `req_free`), so that the qpair can drain.
    pub fn qpair_disconnecting(&mut self, qpair: QpairId) -> Vec<u16> {
        self.disconnects.retain(|d| d.qpair != qpair);
        let Some(q) = self.qpairs.get_mut(&qpair) else {
            return Vec::new();
        };
        q.state = QpairState::Defunct;
        let (cntlid, qid) = (q.cntlid, q.qid);
        let Some(ctrl) = self.controllers.get_mut(&cntlid) else {
            return Vec::new();
        };
        if qid != 0 {
            if ctrl.io_qpairs.get(&qid) == Some(&qpair) {
                ctrl.io_qpairs.remove(&qid);
            }
            return Vec::new();
        }
        let mut released: Vec<u16> = ctrl.held_aers.drain(..).collect();
        released.extend(ctrl.late.drain(..).map(|l| l.cid));
        self.deferred.retain(|d| {
            if d.qpair == qpair {
                released.push(d.completion.cid);
                false
            } else {
                true
            }
        });
        if !released.is_empty() {
            tracing::debug!(%qpair, cntlid, ?released, "held commands released");
        }
        released
    }

    /// The transport reports `qpair` gone (for any reason). Forgets it; an
    /// admin qpair destroys its controller, drops its held AERs and asks
    /// (through [`Target::poll`]) for its I/O qpairs to be disconnected.
    pub fn qpair_disconnected(&mut self, qpair: QpairId) {
        self.disconnects.retain(|d| d.qpair != qpair);
        let Some(q) = self.qpairs.remove(&qpair) else {
            tracing::debug!(%qpair, "disconnect of a qpair that never connected");
            return;
        };
        if q.qid != 0 {
            if let Some(ctrl) = self.controllers.get_mut(&q.cntlid) {
                if ctrl.io_qpairs.get(&q.qid) == Some(&qpair) {
                    ctrl.io_qpairs.remove(&q.qid);
                }
            }
            return;
        }
        let Some(ctrl) = self.controllers.remove(&q.cntlid) else {
            return;
        };
        tracing::info!(cntlid = q.cntlid, hostnqn = %ctrl.hostnqn, "admin queue gone: controller destroyed");
        self.deferred.retain(|d| d.qpair != qpair);
        for io in ctrl.io_qpairs.into_values() {
            self.request_disconnect(io, DisconnectReason::AdminQueueGone);
        }
    }

    /// Adds a RAM namespace at the lowest free NSID and sends a namespace
    /// attribute notice to every controller that enabled them.
    pub fn add_namespace(&mut self, size_bytes: u64) -> Result<u32, ConfigError> {
        let nsid = self.subsystem.add_namespace(size_bytes)?;
        self.namespace_changed(nsid);
        Ok(nsid)
    }

    /// Removes namespace `nsid` (its data is dropped) and notifies as
    /// [`Target::add_namespace`] does.
    pub fn remove_namespace(&mut self, nsid: u32) -> Result<(), ConfigError> {
        self.subsystem
            .namespaces
            .remove(&nsid)
            .ok_or(ConfigError::NoSuchNamespace(nsid))?;
        self.namespace_changed(nsid);
        Ok(())
    }

    /// Adds a listener to the discovery log (bumping its generation counter).
    pub fn add_listener(&mut self, listener: Listener) -> Result<(), ConfigError> {
        if listener.traddr.len() > 256 || listener.trsvcid.len() > 32 {
            return Err(ConfigError::Listener(format!(
                "{}:{}",
                listener.traddr, listener.trsvcid
            )));
        }
        self.subsystem.config.listeners.push(listener);
        self.subsystem.discovery_genctr += 1;
        Ok(())
    }

    /// The namespace `nsid`, if active.
    pub fn namespace(&self, nsid: u32) -> Option<&RamNamespace> {
        self.subsystem.namespaces.get(&nsid)
    }

    /// Read/write counters of the subsystem.
    pub fn stats(&self) -> IoStats {
        self.subsystem.stats
    }

    /// Ids of the live controllers.
    pub fn controller_ids(&self) -> Vec<u16> {
        self.controllers.keys().copied().collect()
    }

    /// Qpairs that completed Connect and were not reported disconnected.
    pub fn qpair_count(&self) -> usize {
        self.qpairs.len()
    }

    fn namespace_changed(&mut self, nsid: u32) {
        let ids: Vec<u16> = self.controllers.keys().copied().collect();
        for cntlid in ids {
            if let Some(ctrl) = self.controllers.get_mut(&cntlid) {
                ctrl.namespace_changed(nsid);
            }
            self.collect_late(cntlid);
        }
    }

    /// Moves a controller's finished held commands to the deferred list.
    fn collect_late(&mut self, cntlid: u16) {
        let Some(ctrl) = self.controllers.get_mut(&cntlid) else {
            return;
        };
        if ctrl.late.is_empty() {
            return;
        }
        let admin = ctrl.admin_qpair;
        let sqhd = self.qpairs.get(&admin).map_or(0, |q| q.sq_head);
        for late in ctrl.late.drain(..) {
            let status = with_retry_hint(late.status);
            self.deferred.push(DeferredCompletion {
                qpair: admin,
                completion: completion(late.cid, 0, sqhd, status, late.cdw0, 0),
            });
        }
    }

    /// Reset or shutdown: every I/O queue of the controller goes.
    fn drop_io_queues(&mut self, cntlid: u16, reason: DisconnectReason) {
        let Some(ctrl) = self.controllers.get_mut(&cntlid) else {
            return;
        };
        let io: Vec<QpairId> = std::mem::take(&mut ctrl.io_qpairs).into_values().collect();
        for q in io {
            self.request_disconnect(q, reason);
        }
    }

    fn request_disconnect(&mut self, qpair: QpairId, reason: DisconnectReason) {
        if let Some(q) = self.qpairs.get_mut(&qpair) {
            if q.state == QpairState::Active {
                q.state = QpairState::Defunct;
                tracing::info!(%qpair, cntlid = q.cntlid, qid = q.qid, ?reason, "asking the transport to disconnect");
                self.disconnects.push(Disconnect {
                    qpair,
                    cntlid: q.cntlid,
                    qid: q.qid,
                    reason,
                });
            }
        }
    }

    /// A command on a qpair without a controller: only Connect is valid.
    fn execute_unconnected(
        &mut self,
        qpair: QpairId,
        cmd: &Command,
        data: &DataBuffer<'_>,
        now_ns: u64,
    ) -> Completion {
        if !(cmd.is_fabrics() && cmd.fctype() == fctype::CONNECT) {
            tracing::debug!(%qpair, cid = cmd.cid(), opcode = cmd.opcode(), "command before Connect");
            let status = with_retry_hint(Status::COMMAND_SEQUENCE_ERROR);
            return completion(cmd.cid(), 0, 0, status, 0, 0);
        }
        let qid = (cmd.cdw10() >> 16) as u16;
        match self.connect(qpair, cmd, data, now_ns) {
            Ok((cntlid, sqhd)) => {
                completion(cmd.cid(), qid, sqhd, Status::SUCCESS, cntlid.into(), 0)
            }
            Err(refusal) => {
                tracing::info!(%qpair, qid, status = %refusal.status, cdw0 = refusal.cdw0, "connect refused");
                let status = with_retry_hint(refusal.status);
                completion(cmd.cid(), qid, 0, status, refusal.cdw0, 0)
            }
        }
    }

    /// Fabrics Connect; the controller id and the qpair's SQ head on success.
    fn connect(
        &mut self,
        qpair: QpairId,
        cmd: &Command,
        data: &DataBuffer<'_>,
        now_ns: u64,
    ) -> Result<(u16, u16), Refusal> {
        let req = ConnectRequest::parse(cmd, data)?;
        let config = &self.subsystem.config;
        let kind = if req.subnqn == config.subnqn {
            ControllerKind::Nvm
        } else if req.subnqn == DISCOVERY_NQN {
            ControllerKind::Discovery
        } else {
            return Err(Refusal::invalid_data_field(connect::data_field::SUBNQN));
        };
        if req.recfmt != 0 {
            return Err(Refusal::status(Status::CONNECT_INCOMPATIBLE_FORMAT));
        }
        let max_depth = if req.qid == 0 {
            config.transport.max_aq_depth
        } else {
            config.transport.max_queue_depth
        };
        if req.sqsize == 0 || req.sqsize >= max_depth {
            return Err(Refusal::invalid_command_field(connect::cmd_field::SQSIZE));
        }
        let Some(hostnqn) = req.hostnqn.clone() else {
            return Err(Refusal::invalid_data_field(connect::data_field::HOSTNQN));
        };
        if kind == ControllerKind::Nvm && !self.subsystem.host_allowed(&hostnqn) {
            return Err(Refusal::status(Status::CONNECT_INVALID_HOST));
        }
        let cntlid = if req.qid == 0 {
            self.connect_admin(qpair, &req, kind, hostnqn, now_ns)?
        } else {
            self.connect_io(qpair, &req, kind, &hostnqn)?
        };
        let mut q = Qpair {
            cntlid,
            qid: req.qid,
            sq_entries: u32::from(req.sqsize) + 1,
            sq_head: 0,
            state: QpairState::Active,
        };
        let sqhd = q.advance_head();
        self.qpairs.insert(qpair, q);
        tracing::info!(%qpair, cntlid, qid = req.qid, sqsize = req.sqsize, "connected");
        Ok((cntlid, sqhd))
    }

    fn connect_admin(
        &mut self,
        qpair: QpairId,
        req: &ConnectRequest,
        kind: ControllerKind,
        hostnqn: String,
        now_ns: u64,
    ) -> Result<u16, Refusal> {
        if req.cntlid != CNTLID_DYNAMIC {
            // Only the dynamic controller model is supported.
            return Err(Refusal::invalid_data_field(connect::data_field::CNTLID));
        }
        let cntlid = self
            .allocate_cntlid()
            .ok_or(Refusal::status(Status::CONNECT_CONTROLLER_BUSY))?;
        let config = &self.subsystem.config;
        let mut kato_ms = admin::grant_kato(config, req.kato_ms);
        if kind == ControllerKind::Discovery && kato_ms == 0 && config.kas != 0 {
            kato_ms = config.discovery_kato_ms;
        }
        let mut ctrl = Controller::new(cntlid, kind, hostnqn, req.hostid, qpair, now_ns, config);
        ctrl.kato_ms = kato_ms;
        self.controllers.insert(cntlid, ctrl);
        Ok(cntlid)
    }

    fn connect_io(
        &mut self,
        qpair: QpairId,
        req: &ConnectRequest,
        kind: ControllerKind,
        hostnqn: &str,
    ) -> Result<u16, Refusal> {
        use connect::{cmd_field, data_field};
        let max_qpairs = self.subsystem.config.transport.max_qpairs_per_ctrlr;
        let Some(ctrl) = self.controllers.get_mut(&req.cntlid) else {
            return Err(Refusal::invalid_data_field(data_field::CNTLID));
        };
        if ctrl.kind != kind {
            // The controller belongs to the other subsystem.
            return Err(Refusal::invalid_data_field(data_field::SUBNQN));
        }
        if ctrl.hostnqn != hostnqn || ctrl.hostid != req.hostid {
            return Err(Refusal::invalid_data_field(data_field::HOSTNQN));
        }
        let admin_active = self
            .qpairs
            .get(&ctrl.admin_qpair)
            .is_some_and(|q| q.state == QpairState::Active);
        if ctrl.kind == ControllerKind::Discovery
            || !admin_active
            || ctrl.expired
            || !ctrl.enabled()
            || ctrl.shutting_down()
            // IOSQES must give 64-byte SQEs and IOCQES 16-byte CQEs.
            || ctrl.io_entry_sizes() != (6, 4)
        {
            return Err(Refusal::invalid_command_field(cmd_field::QID));
        }
        if req.qid >= max_qpairs || ctrl.io_qpairs.contains_key(&req.qid) {
            return Err(Refusal::status(Status::INVALID_QUEUE_IDENTIFIER));
        }
        ctrl.io_qpairs.insert(req.qid, qpair);
        Ok(ctrl.cntlid)
    }

    fn allocate_cntlid(&mut self) -> Option<u16> {
        for _ in 0..MAX_CNTLID {
            let id = self.next_cntlid;
            self.next_cntlid = if id >= MAX_CNTLID { 1 } else { id + 1 };
            if !self.controllers.contains_key(&id) {
                return Some(id);
            }
        }
        None
    }
}

fn completion(cid: u16, sqid: u16, sqhd: u16, status: Status, cdw0: u32, cdw1: u32) -> Completion {
    Completion {
        cdw0,
        cdw1,
        sqhd,
        sqid,
        cid,
        status,
    }
}
