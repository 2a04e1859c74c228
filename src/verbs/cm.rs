//! RDMA connection manager: event channels, CM ids, connection events.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::Arc;

use rdma_sys as sys;

use super::device::Context;
use super::error::{Errno, Result, VerbsError};
use super::fd;
use super::mr::Pd;
use super::qp::{Qp, QpCaps, QpInit};

struct EventChannelInner {
    ptr: NonNull<sys::rdma_event_channel>,
}

// SAFETY: the channel wraps an fd; librdmacm calls on it are thread-safe.
unsafe impl Send for EventChannelInner {}
// SAFETY: see Send.
unsafe impl Sync for EventChannelInner {}

impl Drop for EventChannelInner {
    fn drop(&mut self) {
        // SAFETY: every CmId on this channel holds a clone, so none remains;
        // every event read was acked when read.
        unsafe { sys::rdma_destroy_event_channel(self.ptr.as_ptr()) };
    }
}

/// An rdma_cm event channel: a pollable fd carrying connection events for
/// the CM ids created on it. Cheap to clone (shared).
#[derive(Clone)]
pub struct EventChannel {
    inner: Arc<EventChannelInner>,
}

impl std::fmt::Debug for EventChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventChannel")
            .field("fd", &self.fd())
            .finish()
    }
}

impl EventChannel {
    /// `rdma_create_event_channel`, switched to non-blocking so
    /// [`EventChannel::get_event`] never blocks (wait on [`EventChannel::fd`]).
    pub fn new() -> Result<EventChannel> {
        // SAFETY: no preconditions.
        let p = unsafe { sys::rdma_create_event_channel() };
        let ptr = NonNull::new(p).ok_or_else(|| VerbsError::null("rdma_create_event_channel"))?;
        let ch = EventChannel {
            inner: Arc::new(EventChannelInner { ptr }),
        };
        fd::set_nonblocking(ch.fd())?;
        Ok(ch)
    }

    /// The fd to poll.
    pub fn fd(&self) -> RawFd {
        // SAFETY: `fd` is set at creation and never changes.
        unsafe { (*self.inner.ptr.as_ptr()).fd }
    }

    /// Fetch one event (`rdma_get_cm_event`) or `None` if none is pending.
    ///
    /// Everything the caller needs is copied out and the event is acked
    /// before returning, so a CM id can always be destroyed afterwards. For
    /// `ConnectRequest` the new id is wrapped in a [`CmId`] the caller owns
    /// ([`CmEvent::take_id`]); dropping it unaccepted destroys it.
    pub fn get_event(&self) -> Result<Option<CmEvent>> {
        let mut ev: *mut sys::rdma_cm_event = std::ptr::null_mut();
        // SAFETY: channel alive; `ev` is a valid out-parameter.
        let rc = unsafe { sys::rdma_get_cm_event(self.inner.ptr.as_ptr(), &mut ev) };
        if rc != 0 {
            let errno = Errno::last();
            if errno.is_would_block() {
                return Ok(None);
            }
            return Err(VerbsError::Call {
                call: "rdma_get_cm_event",
                errno,
            });
        }
        if ev.is_null() {
            return Err(VerbsError::null("rdma_get_cm_event"));
        }
        // SAFETY: `ev` is a valid event until acked below. The event type is
        // a plain u32 in rdma-sys' layout. Private data (if any) is valid
        // until the ack; it is copied into a fixed array first.
        let out = unsafe {
            let e = &*ev;
            let kind = CmEventKind::from_raw(e.event);
            let conn = e.param.conn;
            let mut private_data = [0u8; MAX_PRIVATE_DATA];
            let mut private_data_len = 0usize;
            if !conn.private_data.is_null() && kind.carries_conn_param() {
                private_data_len = (conn.private_data_len as usize).min(MAX_PRIVATE_DATA);
                std::ptr::copy_nonoverlapping(
                    conn.private_data.cast::<u8>(),
                    private_data.as_mut_ptr(),
                    private_data_len,
                );
            }
            let new_id = if kind == CmEventKind::ConnectRequest {
                NonNull::new(e.id).map(|p| CmId::wrap(p, self.clone()))
            } else {
                None
            };
            let out = CmEvent {
                kind,
                status: e.status,
                id_key: e.id as usize,
                listen_key: (!e.listen_id.is_null()).then_some(e.listen_id as usize),
                private_data,
                private_data_len,
                responder_resources: conn.responder_resources,
                initiator_depth: conn.initiator_depth,
                new_id,
            };
            sys::rdma_ack_cm_event(ev);
            out
        };
        Ok(Some(out))
    }
}

/// Largest private data kept from an event (REP carries up to 196 bytes).
pub const MAX_PRIVATE_DATA: usize = 256;

/// `rdma_cm_event_type`, with unknown values preserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum CmEventKind {
    AddrResolved,
    AddrError,
    RouteResolved,
    RouteError,
    ConnectRequest,
    ConnectResponse,
    ConnectError,
    Unreachable,
    Rejected,
    Established,
    Disconnected,
    DeviceRemoval,
    MulticastJoin,
    MulticastError,
    AddrChange,
    TimewaitExit,
    /// A value not known to this crate.
    Other(u32),
}

impl CmEventKind {
    /// Decode the C value.
    pub fn from_raw(v: u32) -> CmEventKind {
        use CmEventKind::*;
        match v {
            0 => AddrResolved,
            1 => AddrError,
            2 => RouteResolved,
            3 => RouteError,
            4 => ConnectRequest,
            5 => ConnectResponse,
            6 => ConnectError,
            7 => Unreachable,
            8 => Rejected,
            9 => Established,
            10 => Disconnected,
            11 => DeviceRemoval,
            12 => MulticastJoin,
            13 => MulticastError,
            14 => AddrChange,
            15 => TimewaitExit,
            o => Other(o),
        }
    }

    fn carries_conn_param(self) -> bool {
        matches!(
            self,
            CmEventKind::ConnectRequest
                | CmEventKind::ConnectResponse
                | CmEventKind::Established
                | CmEventKind::Rejected
                | CmEventKind::ConnectError
                | CmEventKind::Unreachable
        )
    }
}

/// One CM event (already acked), with its data copied out.
pub struct CmEvent {
    /// Event type.
    pub kind: CmEventKind,
    /// `event->status` (for `Rejected`: the reject reason from the CM).
    pub status: i32,
    /// [`CmId::key`] of the id the event is for (the new id for `ConnectRequest`).
    pub id_key: usize,
    /// [`CmId::key`] of the listening id (`ConnectRequest` only).
    pub listen_key: Option<usize>,
    private_data: [u8; MAX_PRIVATE_DATA],
    private_data_len: usize,
    /// `param.conn.responder_resources` (already swapped by the CM: on a
    /// `ConnectRequest` this is the requester's initiator depth).
    pub responder_resources: u8,
    /// `param.conn.initiator_depth` (on a `ConnectRequest`: the requester's
    /// responder resources, i.e. how many READs we may issue).
    pub initiator_depth: u8,
    new_id: Option<CmId>,
}

impl std::fmt::Debug for CmEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CmEvent")
            .field("kind", &self.kind)
            .field("status", &self.status)
            .field("id_key", &format_args!("{:#x}", self.id_key))
            .field("private_data_len", &self.private_data_len)
            .field("responder_resources", &self.responder_resources)
            .field("initiator_depth", &self.initiator_depth)
            .finish()
    }
}

impl CmEvent {
    /// Private data carried by the event (CONNECT_REQUEST, ESTABLISHED on the
    /// active side, REJECTED), possibly empty.
    pub fn private_data(&self) -> &[u8] {
        &self.private_data[..self.private_data_len]
    }

    /// Take ownership of the new CM id of a `ConnectRequest` (once).
    pub fn take_id(&mut self) -> Option<CmId> {
        self.new_id.take()
    }
}

/// Connection parameters for [`CmId::connect`] / [`CmId::accept`].
#[derive(Debug, Clone, Copy)]
pub struct ConnParam<'a> {
    /// Private data (≤ 56 bytes for connect, ≤ 196 for accept on IB).
    pub private_data: &'a [u8],
    /// RDMA READs the peer may have outstanding against us.
    pub responder_resources: u8,
    /// RDMA READs we may have outstanding against the peer.
    pub initiator_depth: u8,
    /// Transport retry count (0..7).
    pub retry_count: u8,
    /// RNR retry count (7 = infinite).
    pub rnr_retry_count: u8,
}

impl ConnParam<'_> {
    fn to_sys(self) -> Result<sys::rdma_conn_param> {
        let len =
            u8::try_from(self.private_data.len()).map_err(|_| VerbsError::InvalidArgument {
                name: "private data length",
                value: self.private_data.len() as u64,
            })?;
        Ok(sys::rdma_conn_param {
            private_data: if len == 0 {
                std::ptr::null()
            } else {
                self.private_data.as_ptr().cast()
            },
            private_data_len: len,
            responder_resources: self.responder_resources,
            initiator_depth: self.initiator_depth,
            flow_control: 1,
            retry_count: self.retry_count,
            rnr_retry_count: self.rnr_retry_count,
            srq: 0,
            qp_num: 0,
        })
    }
}

/// An rdma_cm identifier (`rdma_cm_id`, port space TCP), owning its QP.
///
/// Dropping it destroys the QP (`rdma_destroy_qp`) and then the id
/// (`rdma_destroy_id`, which disconnects a connected id).
pub struct CmId {
    ptr: NonNull<sys::rdma_cm_id>,
    qp: Option<Qp>,
    _channel: EventChannel,
}

// SAFETY: librdmacm calls on an id are thread-safe; the id is destroyed only
// in Drop with exclusive access.
unsafe impl Send for CmId {}
// SAFETY: `&self` methods map to thread-safe librdmacm / verbs calls.
unsafe impl Sync for CmId {}

impl std::fmt::Debug for CmId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CmId")
            .field("key", &format_args!("{:#x}", self.key()))
            .field("qp", &self.qp)
            .finish()
    }
}

fn to_sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; zero is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// # Safety
/// `sa` must point to a readable sockaddr whose family field tells its size.
unsafe fn from_sockaddr(sa: *const libc::sockaddr) -> Option<SocketAddr> {
    if sa.is_null() {
        return None;
    }
    // SAFETY: caller guarantees `sa` is readable; the family decides the cast.
    unsafe {
        match (*sa).sa_family as i32 {
            libc::AF_INET => {
                let sin = &*sa.cast::<libc::sockaddr_in>();
                let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
                Some(SocketAddr::V4(SocketAddrV4::new(
                    ip,
                    u16::from_be(sin.sin_port),
                )))
            }
            libc::AF_INET6 => {
                let sin6 = &*sa.cast::<libc::sockaddr_in6>();
                let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                Some(SocketAddr::V6(SocketAddrV6::new(
                    ip,
                    u16::from_be(sin6.sin6_port),
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

impl CmId {
    /// # Safety
    /// `ptr` must be a live rdma_cm_id on `channel` that nobody else destroys.
    unsafe fn wrap(ptr: NonNull<sys::rdma_cm_id>, channel: EventChannel) -> CmId {
        CmId {
            ptr,
            qp: None,
            _channel: channel,
        }
    }

    /// `rdma_create_id(channel, RDMA_PS_TCP)`.
    pub fn new(channel: &EventChannel) -> Result<CmId> {
        let mut id: *mut sys::rdma_cm_id = std::ptr::null_mut();
        // SAFETY: channel alive; `id` is a valid out-parameter.
        let rc = unsafe {
            sys::rdma_create_id(
                channel.inner.ptr.as_ptr(),
                &mut id,
                std::ptr::null_mut(),
                sys::rdma_port_space::RDMA_PS_TCP,
            )
        };
        if rc != 0 {
            return Err(VerbsError::last("rdma_create_id"));
        }
        let ptr = NonNull::new(id).ok_or_else(|| VerbsError::null("rdma_create_id"))?;
        // SAFETY: freshly created on `channel`, owned by the returned CmId.
        Ok(unsafe { CmId::wrap(ptr, channel.clone()) })
    }

    fn raw(&self) -> *mut sys::rdma_cm_id {
        self.ptr.as_ptr()
    }

    /// Identity of this id, as in [`CmEvent::id_key`] / [`CmEvent::listen_key`].
    pub fn key(&self) -> usize {
        self.raw() as usize
    }

    /// `rdma_bind_addr`. A specific local IP binds the id to its device
    /// ([`CmId::context`] becomes `Some`).
    pub fn bind_addr(&self, addr: SocketAddr) -> Result<()> {
        let (mut ss, _) = to_sockaddr(addr);
        // SAFETY: id alive; `ss` holds a valid sockaddr for the call.
        let rc = unsafe {
            sys::rdma_bind_addr(self.raw(), (&mut ss as *mut libc::sockaddr_storage).cast())
        };
        if rc != 0 {
            return Err(VerbsError::last("rdma_bind_addr"));
        }
        Ok(())
    }

    /// `rdma_listen` with the given backlog.
    pub fn listen(&self, backlog: i32) -> Result<()> {
        // SAFETY: id alive.
        let rc = unsafe { sys::rdma_listen(self.raw(), backlog) };
        if rc != 0 {
            return Err(VerbsError::last("rdma_listen"));
        }
        Ok(())
    }

    /// `rdma_resolve_addr`; completes with `AddrResolved` / `AddrError`.
    pub fn resolve_addr(
        &self,
        src: Option<SocketAddr>,
        dst: SocketAddr,
        timeout_ms: i32,
    ) -> Result<()> {
        let mut src_ss = src.map(to_sockaddr);
        let (mut dst_ss, _) = to_sockaddr(dst);
        let src_ptr = src_ss.as_mut().map_or(std::ptr::null_mut(), |(s, _)| {
            (s as *mut libc::sockaddr_storage).cast()
        });
        // SAFETY: id alive; the sockaddrs live for the call.
        let rc = unsafe {
            sys::rdma_resolve_addr(
                self.raw(),
                src_ptr,
                (&mut dst_ss as *mut libc::sockaddr_storage).cast(),
                timeout_ms,
            )
        };
        if rc != 0 {
            return Err(VerbsError::last("rdma_resolve_addr"));
        }
        Ok(())
    }

    /// `rdma_resolve_route`; completes with `RouteResolved` / `RouteError`.
    pub fn resolve_route(&self, timeout_ms: i32) -> Result<()> {
        // SAFETY: id alive.
        let rc = unsafe { sys::rdma_resolve_route(self.raw(), timeout_ms) };
        if rc != 0 {
            return Err(VerbsError::last("rdma_resolve_route"));
        }
        Ok(())
    }

    /// The device context the id is bound to (`id->verbs`), once bound /
    /// resolved / created by a connect request.
    pub fn context(&self) -> Option<Context> {
        // SAFETY: id alive; `verbs` is owned by librdmacm and stays open for
        // the life of the process.
        let v = unsafe { (*self.raw()).verbs };
        // SAFETY: see above.
        NonNull::new(v).map(|p| unsafe { Context::from_rdmacm(p) })
    }

    /// Create the id's RC QP (`rdma_create_qp`); the QP then follows the CM
    /// connection state. The PD must belong to [`CmId::context`].
    pub fn create_qp(&mut self, pd: &Pd, init: &QpInit<'_>) -> Result<&Qp> {
        if self.qp.is_some() {
            return Err(VerbsError::InvalidArgument {
                name: "qp already created on cm id",
                value: self.key() as u64,
            });
        }
        let mut attr = sys::ibv_qp_init_attr {
            qp_context: std::ptr::null_mut(),
            send_cq: init.send_cq.as_ptr(),
            recv_cq: init.recv_cq.as_ptr(),
            srq: init.srq.map_or(std::ptr::null_mut(), |s| s.as_ptr()),
            cap: sys::ibv_qp_cap {
                max_send_wr: init.max_send_wr,
                max_recv_wr: if init.srq.is_some() {
                    0
                } else {
                    init.max_recv_wr
                },
                max_send_sge: init.max_send_sge,
                max_recv_sge: if init.srq.is_some() {
                    0
                } else {
                    init.max_recv_sge
                },
                max_inline_data: init.max_inline_data,
            },
            qp_type: sys::ibv_qp_type::IBV_QPT_RC,
            sq_sig_all: 0,
        };
        // SAFETY: id, PD, CQs and SRQ are alive; the Qp built below keeps
        // the PD/CQs/SRQ alive until rdma_destroy_qp.
        let rc = unsafe { sys::rdma_create_qp(self.raw(), pd.as_ptr(), &mut attr) };
        if rc != 0 {
            return Err(VerbsError::last("rdma_create_qp"));
        }
        // SAFETY: on success rdma_create_qp set `id->qp`.
        let qp = unsafe { (*self.raw()).qp };
        let qp = NonNull::new(qp).ok_or_else(|| VerbsError::null("rdma_create_qp"))?;
        let caps = QpCaps {
            max_send_wr: attr.cap.max_send_wr,
            max_recv_wr: attr.cap.max_recv_wr,
            max_send_sge: attr.cap.max_send_sge,
            max_recv_sge: attr.cap.max_recv_sge,
            max_inline_data: attr.cap.max_inline_data,
        };
        Ok(self.qp.insert(Qp::new(qp, caps, pd, init)))
    }

    /// The QP, if created.
    pub fn qp(&self) -> Option<&Qp> {
        self.qp.as_ref()
    }

    /// Destroy the QP now (`rdma_destroy_qp`); outstanding WRs are gone with
    /// it, so their memory is no longer in use by the device afterwards.
    pub fn destroy_qp(&mut self) {
        if self.qp.take().is_some() {
            // SAFETY: id alive and owns a QP created by rdma_create_qp.
            unsafe { sys::rdma_destroy_qp(self.raw()) };
        }
    }

    /// `rdma_connect` (active side); completes with `Established` (carrying
    /// the accept private data), `Rejected`, `Unreachable` or `ConnectError`.
    pub fn connect(&self, param: &ConnParam<'_>) -> Result<()> {
        let mut p = param.to_sys()?;
        // SAFETY: id alive; `p` and the private data it points to live for the call
        // (librdmacm copies it).
        let rc = unsafe { sys::rdma_connect(self.raw(), &mut p) };
        if rc != 0 {
            return Err(VerbsError::last("rdma_connect"));
        }
        Ok(())
    }

    /// `rdma_accept` (passive side, on an id from a `ConnectRequest`).
    pub fn accept(&self, param: &ConnParam<'_>) -> Result<()> {
        let mut p = param.to_sys()?;
        // SAFETY: as in `connect`.
        let rc = unsafe { sys::rdma_accept(self.raw(), &mut p) };
        if rc != 0 {
            return Err(VerbsError::last("rdma_accept"));
        }
        Ok(())
    }

    /// `rdma_reject` with private data.
    pub fn reject(&self, private_data: &[u8]) -> Result<()> {
        let len = u8::try_from(private_data.len()).map_err(|_| VerbsError::InvalidArgument {
            name: "private data length",
            value: private_data.len() as u64,
        })?;
        let p = if len == 0 {
            std::ptr::null()
        } else {
            private_data.as_ptr().cast()
        };
        // SAFETY: id alive; the data lives for the call (copied by librdmacm).
        let rc = unsafe { sys::rdma_reject(self.raw(), p, len) };
        if rc != 0 {
            return Err(VerbsError::last("rdma_reject"));
        }
        Ok(())
    }

    /// `rdma_disconnect`: moves the local QP to error (flushing its WRs) and
    /// tells the peer; both sides get `Disconnected`.
    pub fn disconnect(&self) -> Result<()> {
        // SAFETY: id alive.
        let rc = unsafe { sys::rdma_disconnect(self.raw()) };
        if rc != 0 {
            return Err(VerbsError::last("rdma_disconnect"));
        }
        Ok(())
    }

    /// Local address (`rdma_get_local_addr`).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        // SAFETY: id alive; the route's address storage is inside the id.
        unsafe { from_sockaddr(sys::rdma_get_local_addr(&*self.raw())) }
    }

    /// Peer address (`rdma_get_peer_addr`).
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        // SAFETY: id alive; the route's address storage is inside the id.
        unsafe { from_sockaddr(sys::rdma_get_peer_addr(&*self.raw())) }
    }

    /// The local IP address family of a bound id, if any.
    pub fn local_ip(&self) -> Option<IpAddr> {
        self.local_addr().map(|a| a.ip())
    }
}

impl Drop for CmId {
    fn drop(&mut self) {
        self.destroy_qp();
        // SAFETY: id alive, destroyed exactly once; its events were acked.
        let rc = unsafe { sys::rdma_destroy_id(self.raw()) };
        if rc != 0 {
            tracing::warn!(errno = %Errno::last(), "rdma_destroy_id failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_round_trip() {
        for a in ["127.0.0.1:4420", "[::1]:4421", "10.1.2.3:1"] {
            let addr: SocketAddr = a.parse().unwrap();
            let (ss, len) = to_sockaddr(addr);
            assert!(len as usize <= std::mem::size_of_val(&ss));
            // SAFETY: test: `ss` holds a sockaddr written by to_sockaddr.
            let back = unsafe { from_sockaddr((&ss as *const libc::sockaddr_storage).cast()) };
            assert_eq!(back, Some(addr));
        }
    }

    #[test]
    fn conn_param_rejects_long_private_data() {
        let big = [0u8; 300];
        let p = ConnParam {
            private_data: &big,
            responder_resources: 0,
            initiator_depth: 0,
            retry_count: 7,
            rnr_retry_count: 7,
        };
        assert!(matches!(
            p.to_sys(),
            Err(VerbsError::InvalidArgument { .. })
        ));
    }

    #[test]
    fn event_kinds_decode() {
        assert_eq!(CmEventKind::from_raw(4), CmEventKind::ConnectRequest);
        assert_eq!(CmEventKind::from_raw(15), CmEventKind::TimewaitExit);
        assert_eq!(CmEventKind::from_raw(99), CmEventKind::Other(99));
    }
}
