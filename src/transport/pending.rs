//! What the acceptor hands to its driver: connections waiting for a poll
//! group, and CM / IB async events addressed to a qpair by handle.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::engine::codec::private_data::{CmReject, CmRequest, Negotiated, RejectStatus};
use crate::verbs::CmId;

use super::host::QpairHandle;
use super::shared::Shared;

/// A validated connect request not yet in a poll group (SPDK: the qpair
/// passed to `spdk_nvmf_tgt_new_qpair`, UNINITIALIZED until
/// `poll_group_add`). It is owned: give it to [`super::PollGroup::add_qpair`];
/// if that fails it comes back in [`AddQpairError`] and stays alive until
/// the host finishes it with [`PendingQpair::reject`] (or drops it, which
/// rejects too).
pub struct PendingQpair(pub(crate) Box<PendingInner>);

/// The parts of a [`PendingQpair`] (boxed: it travels by value through
/// channels and errors).
pub(crate) struct PendingInner {
    /// `None` once accepted into a group or rejected.
    pub(crate) cm_id: Option<CmId>,
    /// Transport device index.
    pub(crate) device: usize,
    /// Negotiated depths.
    pub(crate) negotiated: Negotiated,
    /// The parsed private data.
    pub(crate) request: CmRequest,
    /// Listener address.
    pub(crate) listen: SocketAddr,
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for PendingQpair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingQpair")
            .field("qid", &self.0.negotiated.qid)
            .field("queue_depth", &self.0.negotiated.max_queue_depth)
            .field("listen", &self.0.listen)
            .field("peer", &self.peer())
            .finish()
    }
}

impl PendingQpair {
    /// Queue id from the CM private data (0 = admin): what placement uses.
    pub fn qid(&self) -> u16 {
        self.0.negotiated.qid
    }

    /// The listener that accepted the connect request.
    pub fn listen_addr(&self) -> SocketAddr {
        self.0.listen
    }

    /// The initiator's address.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.0.cm_id.as_ref().and_then(CmId::peer_addr)
    }

    /// Rejects the connection with NO_RESOURCES and releases its CM id
    /// (SPDK: `qpair_fini` of a qpair that never joined a group).
    pub fn reject(mut self) {
        self.reject_now("the host finished the qpair without adding it");
    }

    pub(crate) fn reject_now(&mut self, why: &str) {
        let inner = &mut *self.0;
        let Some(id) = inner.cm_id.take() else {
            return;
        };
        tracing::error!(listen = %inner.listen, peer = ?id.peer_addr(), qid = inner.negotiated.qid,
            "rejecting connection (NO_RESOURCES): {why}");
        inner
            .shared
            .connects_rejected
            .fetch_add(1, Ordering::Relaxed);
        let r = CmReject {
            recfmt: 0,
            status: RejectStatus::NoResources,
        };
        if let Err(e) = id.reject(&r.to_bytes()) {
            tracing::warn!(listen = %inner.listen, "rdma_reject failed: {e}");
        }
    }
}

impl Drop for PendingQpair {
    fn drop(&mut self) {
        self.reject_now("dropped before joining a poll group");
    }
}

/// Why [`super::PollGroup::add_qpair`] refused a qpair.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddQpairFailure {
    /// The group has no poller for the qpair's device.
    #[error("no poller for device {0} in this group")]
    NoPoller(usize),
    /// The qpair's device had a fatal error or was removed.
    #[error("device {0} had a fatal error or was removed")]
    DeviceDead(usize),
    /// Without SRQ the CQ would exceed the device's `max_cqe`.
    #[error("CQ cannot hold another qpair: {required} entries needed, device max_cqe {max_cqe}")]
    CqFull {
        /// Entries needed.
        required: u32,
        /// Device limit.
        max_cqe: u32,
    },
    /// A verbs call failed.
    #[error("{what}: {reason}")]
    Verbs {
        /// Which call.
        what: &'static str,
        /// The error.
        reason: String,
    },
    /// The engine refused the configuration.
    #[error("qpair configuration refused: {0}")]
    Config(String),
    /// [`super::HostGroup::qpair_added`] returned `false`.
    #[error("the host refused the qpair")]
    HostRefused,
    /// The group is shutting down (being destroyed).
    #[error("the poll group is being destroyed")]
    GroupClosing,
}

/// A failed [`super::PollGroup::add_qpair`]: the reason, and the qpair back,
/// still alive until the host finishes it ([`PendingQpair::reject`]).
#[derive(Debug, thiserror::Error)]
#[error("adding qpair (qid {}) to poll group {group}: {failure}", .qpair.qid())]
pub struct AddQpairError {
    /// The group that refused it.
    pub group: u16,
    /// Why.
    pub failure: AddQpairFailure,
    /// The qpair, not yet rejected.
    pub qpair: PendingQpair,
}

/// A CM or IB async event for one qpair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QpairEvent {
    /// RDMA_CM_EVENT_DISCONNECTED, or DEVICE_REMOVAL of the connection.
    CmDisconnected,
    /// IBV_EVENT_QP_FATAL: disconnect.
    QpFatal,
    /// IBV_EVENT_QP_LAST_WQE_REACHED.
    LastWqeReached,
}

/// A message for the poll group `qpair.group` (SPDK: `spdk_thread_send_msg`
/// to the group's thread). The group checks the handle's generation, so a
/// late message never reaches a newer qpair in the same slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpairMsg {
    /// The qpair.
    pub qpair: QpairHandle,
    /// What happened.
    pub event: QpairEvent,
}

/// A device-wide event every poll group must hear of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceEvent {
    /// The device had `IBV_EVENT_DEVICE_FATAL` or was removed
    /// (`RDMA_CM_EVENT_DEVICE_REMOVAL` on its listener; upstream
    /// `need_destroy`): tear down its qpairs, take no new ones on it, and
    /// drop the poller (CQ, SRQ, the host's registrations) once it is empty.
    Removed,
    /// A device was opened at this index (a rescan found it after a
    /// removal): make a poller for it (upstream
    /// `_nvmf_rdma_register_poller_in_group`).
    Added,
    /// Every group dropped its poller on the device and the transport let it
    /// go (upstream `destroy_ib_device`): the driver frees what it keeps per
    /// device (SPDK: the memory map). Groups ignore it.
    Retired,
}

/// A [`DeviceEvent`] for transport device index `device`: deliver it to
/// every poll group with [`super::PollGroup::deliver_device`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMsg {
    /// Transport device index.
    pub device: usize,
    /// What happened.
    pub event: DeviceEvent,
}

/// A listener-wide event every poll group must hear of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortEvent {
    /// `RDMA_CM_EVENT_ADDR_CHANGE` on the listener (upstream
    /// `nvmf_rdma_handle_cm_event_addr_change`): every qpair accepted
    /// through it is disconnected; the acceptor listens again.
    AddrChange,
}

/// A [`PortEvent`] for the listener on `addr`: deliver it to every poll
/// group with [`super::PollGroup::deliver_port`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortMsg {
    /// The listen address (as [`PendingQpair::listen_addr`] names it).
    pub addr: SocketAddr,
    /// What happened.
    pub event: PortEvent,
}

/// What [`super::Transport::accept_poll`] hands to its driver.
#[derive(Debug)]
pub enum AcceptorEvent {
    /// A validated connection: place it ([`super::Transport::optimal_group`])
    /// and give it to that group's [`super::PollGroup::add_qpair`] on the
    /// group's thread.
    NewQpair(PendingQpair),
    /// An event for a qpair: deliver it to group `msg.qpair.group` with
    /// [`super::PollGroup::deliver`] on the group's thread.
    Qpair(QpairMsg),
    /// A device event: deliver it to every group.
    Device(DeviceMsg),
    /// A listener event: deliver it to every group.
    Port(PortMsg),
}
