//! The `Host` contract: what the transport needs from the NVMe-oF layer above
//! it (SPDK's generic `lib/nvmf`, or the standalone mini controller).
//!
//! The contract follows `spdk/nvmf_transport.h` so that the SPDK glue stays
//! thin (see `docs/ARCHITECTURE.md`, "Layers"):
//!
//! - A command is handed over with [`HostGroup::execute`] and completes
//!   **later**, never inside the call: the host reports it through
//!   [`HostGroup::poll`] as [`HostEvent::Completed`] (SPDK: the transport's
//!   `req_complete` op, called by the generic layer when the bdev finishes).
//! - A buffer request ([`HostGroup::get_buffers`]) may be granted now
//!   ([`BufferGrant::Granted`]) or later ([`HostEvent::BuffersGranted`];
//!   SPDK: `spdk_nvmf_request_get_buffers` with the iobuf wait queue and
//!   `req_get_buffers_done`). A pending request can be withdrawn
//!   ([`HostGroup::cancel_buffers`]).
//! - Buffers come with the lkey of the memory region covering them on the
//!   qpair's device (SPDK: `spdk_mem_map` translations of the device map).
//! - Each poll group is driven by one thread; the `HostGroup` of a poll group
//!   is only ever called from that thread. A qpair belongs to one poll group.
//! - The host may ask to disconnect a qpair at any moment
//!   ([`HostEvent::Disconnect`]; SPDK: `spdk_nvmf_qpair_disconnect` →
//!   `qpair_fini`); the transport reports when the qpair is really gone with
//!   [`HostGroup::qpair_gone`] (SPDK: `qpair_fini`'s callback).
//!
//! Mapping to `spdk_nvmf_transport_ops`: `create`/`listen`/`stop_listen`/
//! acceptor poller/`dump_opts`/`cdata_init` are `Transport`
//! methods; `poll_group_create`/`add`/`remove`/`poll`/`dump_stat` are
//! `PollGroup` methods; `req_complete` = [`HostEvent::Completed`];
//! `req_free` = [`HostEvent::Freed`]; `qpair_fini` = [`HostEvent::Disconnect`]
//! followed by [`HostGroup::qpair_gone`]; `qpair_abort_request` =
//! [`HostEvent::Abort`]; `qpair_get_*_trid` = [`QpairInfo`].

use std::net::SocketAddr;

use crate::engine::codec::nvme::{Command, Completion};
use crate::verbs::{Pd, Sge};

/// Names one qpair for the host: poll group index, slot in the group and a
/// generation so that a stale handle never names a newer qpair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QpairHandle {
    /// Poll group index.
    pub group: u16,
    /// Slot in the poll group.
    pub slot: u32,
    /// Generation of the slot.
    pub generation: u32,
}

impl std::fmt::Display for QpairHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "qpair {}.{}#{}", self.group, self.slot, self.generation)
    }
}

/// Names one request: its qpair plus the engine's request slot and the
/// generation of that slot (stale handles are ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestHandle {
    /// The qpair.
    pub qpair: QpairHandle,
    /// Request slot within the qpair.
    pub slot: u16,
    /// Reserved (0 today): a request slot is reused only after the host
    /// answered for it, and handles of a finished qpair are stale through
    /// [`QpairHandle::generation`].
    pub generation: u32,
}

impl std::fmt::Display for RequestHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} req {}#{}", self.qpair, self.slot, self.generation)
    }
}

/// One data buffer granted by the host: a virtual address range registered
/// on the qpair's device, with its lkey. The transport never dereferences
/// it; it only hands it to the NIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataBuffer {
    /// Virtual address of the first byte.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Local key of the memory region that covers the range.
    pub lkey: u32,
}

/// The answer to [`HostGroup::get_buffers`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BufferGrant {
    /// Granted now: the buffers, in order, covering exactly the requested
    /// length (each at most `io_unit_size`).
    Granted(Vec<DataBuffer>),
    /// Not now; the host will report [`HostEvent::BuffersGranted`] later
    /// unless the request is withdrawn with [`HostGroup::cancel_buffers`].
    Later,
}

/// Where the data of a command being executed is.
#[derive(Debug, Clone, Copy)]
pub enum CommandData<'a> {
    /// No data.
    None,
    /// In-capsule data, readable during [`HostGroup::execute`] only (it lives
    /// in the transport's receive buffer until the response is sent).
    InCapsule(&'a [u8]),
    /// Data in buffers the host granted earlier (already filled from the
    /// initiator for host-to-controller transfers; to be filled by the host
    /// for controller-to-host transfers).
    Buffers(&'a [DataBuffer]),
}

/// Which way the data of a command goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// No data.
    None,
    /// Initiator to target (write).
    HostToController,
    /// Target to initiator (read).
    ControllerToHost,
}

/// What the host learns about a new qpair (SPDK: `spdk_nvmf_tgt_new_qpair`
/// plus the `qpair_get_{peer,local,listen}_trid` getters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QpairInfo {
    /// The qpair.
    pub handle: QpairHandle,
    /// Queue id from the CM private data (0 = admin); a hint, the controller
    /// sets the real one at Fabrics CONNECT.
    pub qid: u16,
    /// Negotiated queue depth.
    pub queue_depth: u16,
    /// Initiator address (`qpair_get_peer_trid`).
    pub peer: Option<SocketAddr>,
    /// Local address of the connection (`qpair_get_local_trid`).
    pub local: Option<SocketAddr>,
    /// Address of the listener that accepted it (`qpair_get_listen_trid`).
    pub listen: SocketAddr,
    /// Device name.
    pub device: String,
}

/// Things the host tells the transport, collected by [`HostGroup::poll`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEvent {
    /// A command finished (SPDK: `req_complete`). `cdw0`/status come from the
    /// controller; the transport fills `sqhd`, `sqid` and `cid`.
    Completed {
        /// The request.
        req: RequestHandle,
        /// The completion.
        completion: Completion,
    },
    /// A held command (e.g. an AER) is dropped without a response because its
    /// qpair is going away (SPDK: `req_free`).
    Freed {
        /// The request.
        req: RequestHandle,
    },
    /// Buffers for an earlier [`BufferGrant::Later`] (SPDK:
    /// `req_get_buffers_done`).
    BuffersGranted {
        /// The request.
        req: RequestHandle,
        /// The buffers.
        buffers: Vec<DataBuffer>,
    },
    /// The host wants the qpair gone (SPDK: `spdk_nvmf_qpair_disconnect`,
    /// e.g. keep-alive timeout, controller shutdown). Idempotent.
    Disconnect {
        /// The qpair.
        qpair: QpairHandle,
    },
    /// Abort the request with this command id if the transport still holds it
    /// (SPDK: `qpair_abort_request`).
    Abort {
        /// The qpair.
        qpair: QpairHandle,
        /// Command id to abort.
        cid: u16,
    },
}

/// The transport-wide part of the host (SPDK: the `spdk_nvmf_tgt`).
/// Shared by every poll group thread and the acceptor.
pub trait Host: Send + Sync + 'static {
    /// The per-poll-group part.
    type Group: HostGroup;

    /// Creates the host side of poll group `index` (SPDK: the generic
    /// `spdk_nvmf_poll_group` that wraps `poll_group_create`). Called on the
    /// group's thread.
    fn create_group(&self, index: u16) -> Self::Group;

    /// A log line from the transport (SPDK: `SPDK_NOTICELOG` and friends).
    fn log(&self, level: tracing::Level, message: &str) {
        match level {
            tracing::Level::ERROR => tracing::error!("{message}"),
            tracing::Level::WARN => tracing::warn!("{message}"),
            tracing::Level::INFO => tracing::info!("{message}"),
            _ => tracing::debug!("{message}"),
        }
    }
}

/// The per-poll-group part of the host, driven only by the group's thread.
pub trait HostGroup: 'static {
    /// Device `device` (transport device index) is used by this group, with
    /// protection domain `pd`: register what the host needs on it (e.g. its
    /// data buffer pool). Called once per device before any qpair of it
    /// joins (SPDK: the device's `spdk_mem_map`).
    fn attach_device(&mut self, device: usize, pd: &Pd) -> Result<(), HostError>;

    /// Translates (part of) a granted buffer to an SGE the NIC may use
    /// (SPDK: `spdk_mem_map` translation). `None` if the range is not inside
    /// memory the host registered on `device`.
    fn translate(&self, device: usize, buf: DataBuffer) -> Option<Sge>;

    /// The transport needs the qpair gone (an error completion, a fatal QP
    /// event, the peer left; SPDK: the transport calls
    /// `spdk_nvmf_qpair_disconnect`). The host stops submitting to it and,
    /// once it holds no executing command of it, reports
    /// [`HostEvent::Disconnect`] (SPDK: `qpair_fini`).
    fn disconnect_requested(&mut self, qpair: QpairHandle);

    /// A new qpair joined this group (SPDK: the qpair after
    /// `spdk_nvmf_poll_group_add`). Returning `false` refuses it (the
    /// connection is rejected with NO_RESOURCES).
    fn qpair_added(&mut self, info: &QpairInfo) -> bool;

    /// Executes a command (SPDK: `spdk_nvmf_request_exec`). The host must not
    /// complete it inside this call; it reports [`HostEvent::Completed`]
    /// from a later [`HostGroup::poll`]. For host-to-controller data, the
    /// data is in `data`; for controller-to-host, the host fills the buffers
    /// in `data` before completing.
    fn execute(
        &mut self,
        req: RequestHandle,
        cmd: &Command,
        data: CommandData<'_>,
        direction: Direction,
    );

    /// Asks for `len` bytes of data buffers for `req`, on the device whose
    /// memory regions the lkeys must belong to (SPDK:
    /// `spdk_nvmf_request_get_buffers`).
    fn get_buffers(&mut self, req: RequestHandle, len: u32, device: usize) -> BufferGrant;

    /// Withdraws an unanswered [`BufferGrant::Later`].
    fn cancel_buffers(&mut self, req: RequestHandle);

    /// Returns granted buffers (SPDK: `spdk_nvmf_request_free_buffers`).
    fn release_buffers(&mut self, req: RequestHandle, buffers: &[DataBuffer]);

    /// The qpair is gone: every resource returned, no further request of it
    /// will be executed or completed (SPDK: `qpair_fini`'s callback). Requests
    /// the host still holds for it must be dropped without a completion.
    fn qpair_gone(&mut self, qpair: QpairHandle);

    /// Collects what the host has to say. `now` is the group's monotonic
    /// clock in nanoseconds (keep-alive timers and the like).
    fn poll(&mut self, now: u64, events: &mut Vec<HostEvent>);
}

/// Host-side failure reported to the transport.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// Registering host memory on a device failed.
    #[error("registering host memory on device {device} failed: {reason}")]
    Registration {
        /// The device.
        device: String,
        /// Why.
        reason: String,
    },
}
