//! The `Host` contract: what the transport needs from the NVMe-oF layer above
//! it (SPDK's generic `lib/nvmf`, or the standalone mini controller).
//!
//! The contract follows `spdk/nvmf_transport.h` so that the SPDK glue stays
//! thin (docs/transport.md, "The Host contract"):
//!
//! - A command is handed over with [`HostGroup::execute`]. The host answers
//!   when it has the answer — **possibly inside `execute`** (SPDK: many
//!   commands complete synchronously inside `spdk_nvmf_request_exec`) — by
//!   pushing onto the [`GroupCalls`] it is given ([`GroupCalls::complete`],
//!   [`GroupCalls::free`]), or later through the poll group's own entry points
//!   ([`super::PollGroup::complete`], …) or from [`HostGroup::poll`].
//! - Calls pushed while a group call is in progress are queued in
//!   fixed-capacity storage and applied, in order, before the outermost
//!   group call returns; they never re-enter the engine.
//! - Buffers are granted into the request's own fixed storage (SPDK:
//!   `req->iov[33]`), now ([`BufferGrant::Granted`]) or later
//!   ([`GroupCalls::buffers_ready`]). They are [`Sge`]s: the host vouches
//!   for the registration once, the transport never translates them again.
//! - The transport asking for a disconnect ([`HostGroup::disconnect_requested`])
//!   may re-enter: the host may free held commands and finish the qpair
//!   from inside it (SPDK: `spdk_nvmf_qpair_disconnect` calls `req_free` and
//!   `qpair_fini` synchronously); those calls are deferred, never re-entered.
//! - [`GroupCalls::fini`]'s callback runs when the host may reuse the queue
//!   id; the transport's own qpair lives on until the NIC returned every WR
//!   (bounded by the drain timeout), then [`HostGroup::qpair_gone`].
//! - Each poll group is driven by one thread at a time; its `HostGroup` is
//!   only called from there. A qpair belongs to one poll group.

use std::net::SocketAddr;

use crate::engine::codec::nvme::{Command, Completion};
use crate::engine::{DisconnectReason, ReqState};
use crate::verbs::{DmaAllocator, HeapDma, Pd, Sge};

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

/// Most buffers one request can hold (`NVMF_REQ_MAX_BUFFERS` = 16 * 2 + 1;
/// SPDK's `req->iov[33]`).
pub const MAX_BUFFERS_PER_REQUEST: usize = 33;

/// The buffers of one request: fixed storage of [`MAX_BUFFERS_PER_REQUEST`]
/// SGEs, owned per request slot (SPDK: `req->iov` / `req->iovcnt`). The host
/// fills it in [`HostGroup::get_buffers`] or [`GroupCalls::buffers_ready`].
#[derive(Debug, Clone, Copy)]
pub struct RequestBuffers {
    sges: [Option<Sge>; MAX_BUFFERS_PER_REQUEST],
    count: usize,
}

impl Default for RequestBuffers {
    fn default() -> Self {
        RequestBuffers {
            sges: [None; MAX_BUFFERS_PER_REQUEST],
            count: 0,
        }
    }
}

/// [`RequestBuffers::push`] on full storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a request holds at most 33 buffers")]
pub struct TooManyBuffers;

impl RequestBuffers {
    /// Appends one buffer.
    pub fn push(&mut self, sge: Sge) -> Result<(), TooManyBuffers> {
        let slot = self.sges.get_mut(self.count).ok_or(TooManyBuffers)?;
        *slot = Some(sge);
        self.count += 1;
        Ok(())
    }

    /// The buffers, in order.
    pub fn iter(&self) -> impl Iterator<Item = Sge> + '_ {
        self.sges[..self.count].iter().flatten().copied()
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Total bytes.
    pub fn total_len(&self) -> u64 {
        self.iter().map(|s| u64::from(s.length())).sum()
    }

    /// Forgets every buffer.
    pub fn clear(&mut self) {
        self.count = 0;
    }

    /// The part `[addr, addr + len)` of a held buffer, if one covers it.
    pub(crate) fn covering(&self, addr: u64, len: u32) -> Option<Sge> {
        self.iter().find_map(|s| s.sub_range(addr, len))
    }
}

/// The answer to [`HostGroup::get_buffers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferGrant {
    /// Granted now: the host filled the request's [`RequestBuffers`] with
    /// buffers covering exactly the requested length (each at most
    /// `io_unit_size`).
    Granted,
    /// Not now; the host will call [`GroupCalls::buffers_ready`] (or
    /// [`super::PollGroup::buffers_ready`]) later unless the request is
    /// withdrawn with [`HostGroup::cancel_buffers`].
    Later,
}

/// Where the data of a command being executed is.
#[derive(Debug, Clone, Copy)]
pub enum CommandData<'a> {
    /// No data.
    None,
    /// In-capsule data, by reference into the transport's receive buffer,
    /// readable during [`HostGroup::execute`] only.
    InCapsule(&'a [u8]),
    /// Data in buffers the host granted earlier (already filled from the
    /// initiator for host-to-controller transfers; to be filled by the host
    /// for controller-to-host transfers).
    Buffers(&'a RequestBuffers),
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

/// Called once a qpair's queue id may be reused (SPDK: `qpair_fini`'s
/// `cb_fn(cb_arg)`). One per qpair teardown, never per I/O.
pub type FiniDone = Box<dyn FnOnce(QpairHandle) + Send>;

/// One host answer, applied by the poll group in order.
pub(crate) enum Call {
    /// SPDK `req_complete`.
    Complete {
        req: RequestHandle,
        completion: Completion,
    },
    /// SPDK `req_free`: drop without a response.
    Free { req: RequestHandle },
    /// SPDK: the iobuf wait satisfied; the buffers are the next entry of
    /// [`GroupCalls::take_ready`] (kept apart: they are large).
    BuffersReady { req: RequestHandle },
    /// SPDK `qpair_fini`.
    Fini {
        qpair: QpairHandle,
        done: Option<FiniDone>,
    },
}

/// [`GroupCalls`] is full: the host pushed more answers than the group has
/// request slots for (a host bug; the answer is dropped and logged).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("poll group call queue full ({capacity} entries)")]
pub struct CallQueueFull {
    /// The queue's capacity.
    pub capacity: usize,
}

/// Host answers pushed while a poll group call is in progress (from inside
/// [`HostGroup::execute`], [`HostGroup::disconnect_requested`],
/// [`HostGroup::release_buffers`] or [`HostGroup::poll`]). Fixed capacity,
/// sized for every request slot of the group's qpairs (grown only when a
/// qpair joins); applied before the outermost group call returns.
pub struct GroupCalls {
    queue: std::collections::VecDeque<Call>,
    /// The buffers of each queued [`Call::BuffersReady`], in order.
    ready: std::collections::VecDeque<RequestBuffers>,
    capacity: usize,
}

impl GroupCalls {
    pub(crate) fn new() -> GroupCalls {
        GroupCalls {
            queue: std::collections::VecDeque::new(),
            ready: std::collections::VecDeque::new(),
            capacity: 0,
        }
    }

    /// Makes room for `more` entries (a qpair joined; never on the I/O path).
    pub(crate) fn reserve(&mut self, more: usize) {
        self.capacity += more;
        self.queue
            .reserve(self.capacity.saturating_sub(self.queue.len()));
        self.ready
            .reserve(self.capacity.saturating_sub(self.ready.len()));
    }

    /// Gives back the room of a qpair that left (the storage is kept).
    pub(crate) fn unreserve(&mut self, less: usize) {
        self.capacity = self.capacity.saturating_sub(less);
    }

    pub(crate) fn pop(&mut self) -> Option<Call> {
        self.queue.pop_front()
    }

    /// The buffers of the [`Call::BuffersReady`] just popped.
    pub(crate) fn take_ready(&mut self) -> Option<RequestBuffers> {
        self.ready.pop_front()
    }

    fn push(&mut self, call: Call) -> Result<(), CallQueueFull> {
        if self.queue.len() >= self.capacity {
            return Err(CallQueueFull {
                capacity: self.capacity,
            });
        }
        self.queue.push_back(call);
        Ok(())
    }

    /// Calls waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether no call waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// A command finished (SPDK: `req_complete`). `cdw0`/status come from
    /// the controller; the transport fills `sqhd`, `sqid` and `cid`.
    pub fn complete(
        &mut self,
        req: RequestHandle,
        completion: Completion,
    ) -> Result<(), CallQueueFull> {
        self.push(Call::Complete { req, completion })
    }

    /// A command is dropped without a response (SPDK: `req_free`; e.g. an
    /// AER of a qpair being disconnected).
    pub fn free(&mut self, req: RequestHandle) -> Result<(), CallQueueFull> {
        self.push(Call::Free { req })
    }

    /// Buffers for an earlier [`BufferGrant::Later`] (SPDK: the iobuf wait
    /// satisfied): copied into the request's storage.
    pub fn buffers_ready(
        &mut self,
        req: RequestHandle,
        buffers: &RequestBuffers,
    ) -> Result<(), CallQueueFull> {
        self.push(Call::BuffersReady { req })?;
        self.ready.push_back(*buffers);
        Ok(())
    }

    /// The host wants the qpair gone (SPDK: `qpair_fini`, after
    /// `spdk_nvmf_qpair_disconnect`; keep-alive timeout, controller
    /// shutdown). Idempotent. `done` runs once the host may reuse the queue
    /// id.
    pub fn fini(
        &mut self,
        qpair: QpairHandle,
        done: Option<FiniDone>,
    ) -> Result<(), CallQueueFull> {
        self.push(Call::Fini { qpair, done })
    }
}

/// The synchronous outcome of [`super::PollGroup::abort`] (SPDK:
/// `qpair_abort_request`; the abort command's cdw0 bit 0 is 0 only for
/// [`AbortResult::Aborted`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortResult {
    /// The victim was waiting in the transport: it is answered with
    /// ABORTED_BY_REQUEST.
    Aborted,
    /// The victim is executing in the host: abort it there (SPDK:
    /// `spdk_nvmf_bdev_ctrlr_abort_cmd`).
    Executing(RequestHandle),
    /// The victim is moving data; the transport retries at every poll until
    /// `abort_timeout_sec`, then reports [`HostGroup::abort_finished`].
    Retrying,
    /// No command with that id (or past the point where it can be aborted).
    NotFound,
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

    /// Where the poll groups' receive and completion buffers come from (SPDK:
    /// `spdk_zmalloc` DMA memory, as upstream's transport; default: the heap).
    fn dma_allocator(&self) -> &'static dyn DmaAllocator {
        &HeapDma
    }

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

    /// Device `device` was removed and this group's last qpair on it is
    /// gone: drop what [`HostGroup::attach_device`] registered on it (its
    /// PD goes once nothing holds it). A device that comes back gets a new
    /// index and a new `attach_device`. No request of the device is held
    /// by the host any more (its qpairs are finished).
    fn detach_device(&mut self, device: usize) {
        let _ = device;
    }

    /// The transport needs the qpair gone (an error completion, a fatal QP
    /// event, the peer left; SPDK: the transport calls
    /// `spdk_nvmf_qpair_disconnect`). The host stops submitting to it, frees
    /// or completes what it holds of it and calls [`GroupCalls::fini`] —
    /// inside this call or later.
    fn disconnect_requested(&mut self, qpair: QpairHandle, calls: &mut GroupCalls);

    /// A new qpair joined this group (SPDK: the qpair after
    /// `spdk_nvmf_poll_group_add`). Returning `false` refuses it (the
    /// connection is rejected with NO_RESOURCES).
    fn qpair_added(&mut self, info: &QpairInfo) -> bool;

    /// Executes a command (SPDK: `spdk_nvmf_request_exec`). The host may
    /// answer inside this call ([`GroupCalls::complete`] /
    /// [`GroupCalls::free`]) or later. For host-to-controller data, the data
    /// is in `data`; for controller-to-host, the host fills the buffers in
    /// `data` before completing.
    fn execute(
        &mut self,
        req: RequestHandle,
        cmd: &Command,
        data: CommandData<'_>,
        direction: Direction,
        calls: &mut GroupCalls,
    );

    /// Asks for `len` bytes of data buffers for `req`, registered on
    /// `device` (SPDK: `spdk_nvmf_request_get_buffers`). On
    /// [`BufferGrant::Granted`] they are in `out` (empty on entry).
    fn get_buffers(
        &mut self,
        req: RequestHandle,
        len: u32,
        device: usize,
        out: &mut RequestBuffers,
    ) -> BufferGrant;

    /// Withdraws an unanswered [`BufferGrant::Later`].
    fn cancel_buffers(&mut self, req: RequestHandle);

    /// Returns granted buffers (SPDK: `spdk_nvmf_request_free_buffers`); may
    /// satisfy another waiter at once through `calls`.
    fn release_buffers(
        &mut self,
        req: RequestHandle,
        buffers: &RequestBuffers,
        calls: &mut GroupCalls,
    );

    /// A [`AbortResult::Retrying`] abort ended: `aborted` is whether the
    /// victim `cid` of `qpair` was aborted before `abort_timeout_sec`.
    fn abort_finished(&mut self, qpair: QpairHandle, cid: u16, aborted: bool) {
        let _ = (qpair, cid, aborted);
    }

    /// The transport's qpair is gone: the NIC returned every WR (or the
    /// drain deadline passed), every buffer came back, no request of it
    /// will be executed or answered again. Requests the host still holds for
    /// it must be dropped without a completion.
    fn qpair_gone(&mut self, qpair: QpairHandle);

    /// Lets the host push what it has to say. `now` is the group's
    /// monotonic clock in nanoseconds (keep-alive timers and the like).
    fn poll(&mut self, now: u64, calls: &mut GroupCalls);

    /// Whether the host wants [`HostGroup::request_state`] reports (SPDK: a
    /// request-state tracepoint of the transport's trace group is enabled).
    /// Asked once per [`super::PollGroup::poll`]; the answer holds until the
    /// next poll. Default: no, and then the reports cost the engine one test
    /// of a flag per state change.
    fn trace_requests(&mut self) -> bool {
        false
    }

    /// Request `req` entered `state` (never FREE), while
    /// [`HostGroup::trace_requests`] says yes: for tracepoints. `in_use` is
    /// the qpair's requests not FREE, this one included (upstream's `qd`).
    /// Called on the I/O path, in order with the other calls about `req`
    /// (`RS_REQ_EXECUTING` before [`HostGroup::execute`]).
    fn request_state(&mut self, req: RequestHandle, state: ReqState, in_use: u16) {
        let _ = (req, state, in_use);
    }

    /// `qpair` entered the error state because of `reason` (an error or
    /// flushed completion, a fatal QP event, a host overrun, a failed post,
    /// or the peer disconnected); called once, right before
    /// [`HostGroup::disconnect_requested`] for the same reason. Not called
    /// when the host itself tears the qpair down ([`GroupCalls::fini`]).
    fn qpair_error(&mut self, qpair: QpairHandle, reason: DisconnectReason) {
        let _ = (qpair, reason);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn req(slot: u16) -> RequestHandle {
        RequestHandle {
            qpair: QpairHandle {
                group: 0,
                slot: 1,
                generation: 1,
            },
            slot,
            generation: 0,
        }
    }

    #[test]
    fn group_calls_keep_order_and_refuse_beyond_capacity() {
        let mut c = GroupCalls::new();
        let ok = Completion::new(0, crate::engine::codec::nvme::Status::SUCCESS);
        assert_eq!(c.complete(req(0), ok), Err(CallQueueFull { capacity: 0 }));
        c.reserve(3);
        // Sges can only be made from registered memory; empty sets still
        // travel in order with their calls.
        let (one, two) = (RequestBuffers::default(), RequestBuffers::default());
        c.buffers_ready(req(1), &one).unwrap();
        c.free(req(2)).unwrap();
        c.buffers_ready(req(3), &two).unwrap();
        assert_eq!(
            c.free(req(4)),
            Err(CallQueueFull { capacity: 3 }),
            "a 4th call does not fit in 3"
        );
        assert!(matches!(c.pop(), Some(Call::BuffersReady { req: r }) if r == req(1)));
        assert!(c.take_ready().is_some());
        assert!(matches!(c.pop(), Some(Call::Free { req: r }) if r == req(2)));
        assert!(matches!(c.pop(), Some(Call::BuffersReady { req: r }) if r == req(3)));
        assert!(c.take_ready().is_some());
        assert!(c.pop().is_none() && c.take_ready().is_none());
        c.unreserve(3);
        assert!(c.free(req(5)).is_err());
    }

    #[test]
    fn request_buffers_hold_at_most_33() {
        let b = RequestBuffers::default();
        assert_eq!((b.len(), b.total_len()), (0, 0));
        assert_eq!(b.covering(0x1000, 16), None);
    }
}
