//! The librdmacm entry points (called from the `extern "C"` shims in `exports.rs`).
//!
//! Conventions as in rdma-core's cma.c: functions return 0, or -1 with errno set;
//! constructors return NULL with errno set.

use crate::addr;
use crate::conn::State;
use crate::core::*;
use crate::ffi::{self, debug, err, log, set_errno};
use crate::proto::{self, Msg, Rep, Req};
use softrdma_abi::cma::*;
use softrdma_abi::verbs::*;
use std::ffi::{c_char, c_int, c_void};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;

/// Text of an event type.
pub fn event_name(e: rdma_cm_event_type) -> &'static str {
    match e {
        RDMA_CM_EVENT_ADDR_RESOLVED => "RDMA_CM_EVENT_ADDR_RESOLVED",
        RDMA_CM_EVENT_ADDR_ERROR => "RDMA_CM_EVENT_ADDR_ERROR",
        RDMA_CM_EVENT_ROUTE_RESOLVED => "RDMA_CM_EVENT_ROUTE_RESOLVED",
        RDMA_CM_EVENT_ROUTE_ERROR => "RDMA_CM_EVENT_ROUTE_ERROR",
        RDMA_CM_EVENT_CONNECT_REQUEST => "RDMA_CM_EVENT_CONNECT_REQUEST",
        RDMA_CM_EVENT_CONNECT_RESPONSE => "RDMA_CM_EVENT_CONNECT_RESPONSE",
        RDMA_CM_EVENT_CONNECT_ERROR => "RDMA_CM_EVENT_CONNECT_ERROR",
        RDMA_CM_EVENT_UNREACHABLE => "RDMA_CM_EVENT_UNREACHABLE",
        RDMA_CM_EVENT_REJECTED => "RDMA_CM_EVENT_REJECTED",
        RDMA_CM_EVENT_ESTABLISHED => "RDMA_CM_EVENT_ESTABLISHED",
        RDMA_CM_EVENT_DISCONNECTED => "RDMA_CM_EVENT_DISCONNECTED",
        RDMA_CM_EVENT_DEVICE_REMOVAL => "RDMA_CM_EVENT_DEVICE_REMOVAL",
        RDMA_CM_EVENT_MULTICAST_JOIN => "RDMA_CM_EVENT_MULTICAST_JOIN",
        RDMA_CM_EVENT_MULTICAST_ERROR => "RDMA_CM_EVENT_MULTICAST_ERROR",
        RDMA_CM_EVENT_ADDR_CHANGE => "RDMA_CM_EVENT_ADDR_CHANGE",
        RDMA_CM_EVENT_TIMEWAIT_EXIT => "RDMA_CM_EVENT_TIMEWAIT_EXIT",
        _ => "UNKNOWN EVENT",
    }
}

/// `rdma_event_str` as a static C string.
pub fn event_cstr(e: rdma_cm_event_type) -> *const c_char {
    let s: &'static std::ffi::CStr = match e {
        RDMA_CM_EVENT_ADDR_RESOLVED => c"RDMA_CM_EVENT_ADDR_RESOLVED",
        RDMA_CM_EVENT_ADDR_ERROR => c"RDMA_CM_EVENT_ADDR_ERROR",
        RDMA_CM_EVENT_ROUTE_RESOLVED => c"RDMA_CM_EVENT_ROUTE_RESOLVED",
        RDMA_CM_EVENT_ROUTE_ERROR => c"RDMA_CM_EVENT_ROUTE_ERROR",
        RDMA_CM_EVENT_CONNECT_REQUEST => c"RDMA_CM_EVENT_CONNECT_REQUEST",
        RDMA_CM_EVENT_CONNECT_RESPONSE => c"RDMA_CM_EVENT_CONNECT_RESPONSE",
        RDMA_CM_EVENT_CONNECT_ERROR => c"RDMA_CM_EVENT_CONNECT_ERROR",
        RDMA_CM_EVENT_UNREACHABLE => c"RDMA_CM_EVENT_UNREACHABLE",
        RDMA_CM_EVENT_REJECTED => c"RDMA_CM_EVENT_REJECTED",
        RDMA_CM_EVENT_ESTABLISHED => c"RDMA_CM_EVENT_ESTABLISHED",
        RDMA_CM_EVENT_DISCONNECTED => c"RDMA_CM_EVENT_DISCONNECTED",
        RDMA_CM_EVENT_DEVICE_REMOVAL => c"RDMA_CM_EVENT_DEVICE_REMOVAL",
        RDMA_CM_EVENT_MULTICAST_JOIN => c"RDMA_CM_EVENT_MULTICAST_JOIN",
        RDMA_CM_EVENT_MULTICAST_ERROR => c"RDMA_CM_EVENT_MULTICAST_ERROR",
        RDMA_CM_EVENT_ADDR_CHANGE => c"RDMA_CM_EVENT_ADDR_CHANGE",
        RDMA_CM_EVENT_TIMEWAIT_EXIT => c"RDMA_CM_EVENT_TIMEWAIT_EXIT",
        _ => c"UNKNOWN EVENT",
    };
    s.as_ptr()
}

// ---------------------------------------------------------------------------------------
// Devices

/// rdma_get_devices.
///
/// # Safety
/// `num` is NULL or writable.
pub unsafe fn get_devices(num: *mut c_int) -> *mut *mut ibv_context {
    let devs = match devices() {
        Ok(d) => d,
        Err(e) => {
            if !num.is_null() {
                // SAFETY: caller-provided writable pointer.
                unsafe { *num = 0 };
            }
            set_errno(e);
            return std::ptr::null_mut();
        }
    };
    let n = devs.len();
    // SAFETY: plain allocation; freed by rdma_free_devices with free().
    let arr = unsafe { libc::calloc(n + 1, std::mem::size_of::<*mut ibv_context>()) }
        as *mut *mut ibv_context;
    if arr.is_null() {
        set_errno(libc::ENOMEM);
        return arr;
    }
    for (i, d) in devs.iter().enumerate() {
        // SAFETY: arr has n+1 slots.
        unsafe { *arr.add(i) = d.ctx };
    }
    if !num.is_null() {
        // SAFETY: caller-provided writable pointer.
        unsafe { *num = n as c_int };
    }
    arr
}

// ---------------------------------------------------------------------------------------
// Channels and ids

/// rdma_create_event_channel.
pub fn create_event_channel() -> *mut rdma_event_channel {
    // Like librdmacm's ucma_init: no RDMA device, no event channel (SPDK reports
    // "rdma_create_event_channel() failed, No such device").
    if let Err(e) = devices() {
        set_errno(e);
        return std::ptr::null_mut();
    }
    match Channel::new() {
        Ok(c) => {
            let p = c.c_ptr();
            let _ = Arc::into_raw(c);
            p
        }
        Err(e) => {
            set_errno(e);
            std::ptr::null_mut()
        }
    }
}

/// rdma_destroy_event_channel.
///
/// # Safety
/// `ch` comes from rdma_create_event_channel and is not used afterwards.
pub unsafe fn destroy_event_channel(ch: *mut rdma_event_channel) {
    if ch.is_null() {
        return;
    }
    // SAFETY: releases the reference created by create_event_channel.
    drop(unsafe { Arc::from_raw(ch as *const Channel) });
}

/// rdma_create_id / rdma_create_id2.
///
/// # Safety
/// `id` writable; `channel` NULL or live.
pub unsafe fn create_id(
    channel: *mut rdma_event_channel,
    id: *mut *mut rdma_cm_id,
    context: *mut c_void,
    ps: u32,
    qp_type: ibv_qp_type,
) -> c_int {
    if id.is_null() {
        return err(libc::EINVAL);
    }
    if let Err(e) = devices() {
        return err(e);
    }
    if let Err(e) = try_runtime() {
        return err(e);
    }
    let (ch, sync) = if channel.is_null() {
        match Channel::new() {
            Ok(c) => (c, true),
            Err(e) => return err(e),
        }
    } else {
        // SAFETY: per the contract the channel is live.
        (unsafe { channel_ref(channel) }, false)
    };
    let b = IdBox::new(ch, sync, context, ps, qp_type);
    let p = b.c_ptr();
    let _ = Arc::into_raw(b);
    // SAFETY: writable per the contract.
    unsafe { *id = p };
    debug!("create_id {p:p} ps {ps:#x} sync {sync}");
    0
}

/// Default QP type for a port space.
pub fn qp_type_for(ps: u32) -> ibv_qp_type {
    if ps == RDMA_PS_UDP || ps == RDMA_PS_IPOIB {
        IBV_QPT_UD
    } else {
        IBV_QPT_RC
    }
}

/// rdma_destroy_id.
///
/// # Safety
/// `idp` is a live id; not used afterwards.
pub unsafe fn destroy_id(idp: *mut rdma_cm_id) -> c_int {
    if idp.is_null() {
        return err(libc::EINVAL);
    }
    // SAFETY: takes back the application's reference.
    let id = unsafe { Arc::from_raw(idp as *const IdBox) };
    let rt = runtime();
    let mut st = lock(&id.st);
    st.destroyed = true;
    // Implicit DREQ on a connected id (kernel behaviour).
    if let Some(c) = st.conn.as_mut() {
        if matches!(
            c.machine.state(),
            State::Established | State::RepSent | State::RepRcvd
        ) {
            send_msg(c.fd.as_raw_fd(), &Msg::Dreq, idp);
        } else if c.machine.state() == State::ReqRcvd {
            send_msg(
                c.fd.as_raw_fd(),
                &Msg::Rej {
                    reason: proto::REJ_TIMEOUT,
                    private_data: Vec::new(),
                },
                idp,
            );
        }
        rt.deregister(c.key, c.fd.as_raw_fd());
        // SAFETY: shutting down our own socket.
        unsafe { libc::shutdown(c.fd.as_raw_fd(), libc::SHUT_RDWR) };
    }
    st.conn = None;
    if let Some(l) = st.listen.take() {
        rt.deregister(l.key, l.fd.as_raw_fd());
    }
    st.reservation = None;
    if let Some(dev) = st.dev.take() {
        dev.put();
    }
    let channel = st.channel.clone();
    let sync = st.sync;
    // SAFETY: st is held.
    let c = unsafe { id.c_mut() };
    let pending_ev = std::mem::replace(&mut c.event, std::ptr::null_mut());
    drop(st);
    // Drop undelivered events of this id; CONNECT_REQUESTs of a listener take their new
    // ids down with them (their peers see the connection close).
    let me = Arc::as_ptr(&id);
    let dropped = channel.take_where(|e| {
        Arc::as_ptr(&e.id) == me || e.listen.as_ref().is_some_and(|l| Arc::as_ptr(l) == me)
    });
    for e in dropped {
        if e.ev.event == RDMA_CM_EVENT_CONNECT_REQUEST && Arc::as_ptr(&e.id) != me {
            let raw = e.id.c_ptr();
            drop(e);
            // SAFETY: the child id was never handed to the application, so the
            // application reference taken when it was created is still ours to release.
            unsafe { destroy_id(raw) };
        }
    }
    if !pending_ev.is_null() {
        // SAFETY: the id's stored event came from get_cm_event and was not acked.
        unsafe { ack_cm_event(pending_ev) };
    }
    drop(channel);
    let _ = sync;
    debug!(
        "destroy_id {idp:p} ({} other references until freed)",
        Arc::strong_count(&id) - 1
    );
    0
}

/// rdma_migrate_id.
///
/// # Safety
/// Live id; channel NULL (new sync channel) or live.
pub unsafe fn migrate_id(idp: *mut rdma_cm_id, channel: *mut rdma_event_channel) -> c_int {
    if idp.is_null() {
        return err(libc::EINVAL);
    }
    // SAFETY: live per the contract.
    let id = unsafe { id_arc(idp) };
    let (newch, sync) = if channel.is_null() {
        match Channel::new() {
            Ok(c) => (c, true),
            Err(e) => return err(e),
        }
    } else {
        // SAFETY: live per the contract.
        (unsafe { channel_ref(channel) }, false)
    };
    let mut st = lock(&id.st);
    let old = std::mem::replace(&mut st.channel, newch.clone());
    st.sync = sync;
    // SAFETY: st is held.
    unsafe { id.c_mut() }.channel = newch.c_ptr();
    let me = Arc::as_ptr(&id);
    let moved = old.take_where(|e| {
        if let Some(l) = &e.listen {
            Arc::as_ptr(l) == me
        } else {
            Arc::as_ptr(&e.id) == me
        }
    });
    for e in moved {
        newch.push(e);
    }
    0
}

// ---------------------------------------------------------------------------------------
// Addresses

/// Read a C sockaddr (AF_INET / AF_INET6).
///
/// # Safety
/// `sa` NULL or pointing at a sockaddr of its family's size.
pub unsafe fn read_sockaddr(sa: *const libc::sockaddr) -> Result<SocketAddr, c_int> {
    if sa.is_null() {
        return Err(libc::EINVAL);
    }
    // SAFETY: sa points at least at a sockaddr header.
    let fam = c_int::from(unsafe { (*sa).sa_family });
    let len = match fam {
        libc::AF_INET => std::mem::size_of::<libc::sockaddr_in>(),
        libc::AF_INET6 => std::mem::size_of::<libc::sockaddr_in6>(),
        libc::AF_IB => return Err(libc::EAFNOSUPPORT),
        _ => return Err(libc::EAFNOSUPPORT),
    };
    let mut st = addr::zeroed_storage();
    // SAFETY: copying the family-sized prefix into a 128-byte storage.
    unsafe {
        std::ptr::copy_nonoverlapping(
            sa as *const u8,
            (&mut st as *mut libc::sockaddr_storage).cast::<u8>(),
            len,
        )
    };
    addr::from_storage(&st).map_err(|_| libc::EAFNOSUPPORT)
}

/// Is `ip` an address of this host (bindable)?
fn is_local(ip: &IpAddr) -> bool {
    if ip.is_unspecified() || ip.is_loopback() {
        return true;
    }
    std::net::UdpSocket::bind(SocketAddr::new(*ip, 0)).is_ok()
}

/// Bind `id` to `a` (shared by rdma_bind_addr and rdma_resolve_addr).
fn bind_locked(id: &Arc<IdBox>, st: &mut IdState, a: SocketAddr) -> Result<(), c_int> {
    if st.local.is_some() {
        return Err(libc::EINVAL);
    }
    if !is_local(&a.ip()) {
        return Err(libc::EADDRNOTAVAIL);
    }
    let (fd, port) = reserve(id.ps(), a.ip(), a.port(), st.opts.reuseaddr)?;
    st.reservation = Some(fd);
    let bound = SocketAddr::new(a.ip(), port);
    id.set_src(st, bound);
    if !a.ip().is_unspecified() {
        let dev = device_for(&a.ip())?;
        id.attach_device(st, dev);
    }
    debug!("cm_id {:p} bound to {bound}", id.c_ptr());
    Ok(())
}

/// rdma_bind_addr.
///
/// # Safety
/// Live id; `sa` valid sockaddr.
pub unsafe fn bind_addr(idp: *mut rdma_cm_id, sa: *const libc::sockaddr) -> c_int {
    if idp.is_null() {
        return err(libc::EINVAL);
    }
    // SAFETY: per the contract.
    let a = match unsafe { read_sockaddr(sa) } {
        Ok(a) => a,
        Err(e) => return err(e),
    };
    // SAFETY: live per the contract.
    let id = unsafe { id_arc(idp) };
    let mut st = lock(&id.st);
    match bind_locked(&id, &mut st, a) {
        Ok(()) => 0,
        Err(e) => err(e),
    }
}

/// Pick the source address for `dst` (kernel routing via a connected UDP socket).
fn pick_source(dst: &SocketAddr) -> Result<IpAddr, c_int> {
    if dst.ip().is_loopback() {
        return Ok(dst.ip());
    }
    let any: SocketAddr = match dst {
        SocketAddr::V4(_) => "0.0.0.0:0".parse().expect("literal"),
        SocketAddr::V6(_) => "[::]:0".parse().expect("literal"),
    };
    let s = std::net::UdpSocket::bind(any).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
    let port = if dst.port() == 0 { 9 } else { dst.port() };
    s.connect(SocketAddr::new(dst.ip(), port))
        .map_err(|e| e.raw_os_error().unwrap_or(libc::ENETUNREACH))?;
    let l = s.local_addr().map_err(|_| libc::EIO)?;
    Ok(l.ip())
}

/// rdma_resolve_addr.
///
/// # Safety
/// Live id; `src` NULL or valid; `dst` valid.
pub unsafe fn resolve_addr(
    idp: *mut rdma_cm_id,
    src: *const libc::sockaddr,
    dst: *const libc::sockaddr,
    _timeout_ms: c_int,
) -> c_int {
    if idp.is_null() {
        return err(libc::EINVAL);
    }
    // SAFETY: per the contract.
    let dst = match unsafe { read_sockaddr(dst) } {
        Ok(a) => a,
        Err(e) => return err(e),
    };
    let src = if src.is_null() {
        None
    } else {
        // SAFETY: per the contract.
        match unsafe { read_sockaddr(src) } {
            Ok(a) => Some(a),
            Err(e) => return err(e),
        }
    };
    // SAFETY: live per the contract.
    let id = unsafe { id_arc(idp) };
    let mut st = lock(&id.st);
    let status = (|| -> Result<(), c_int> {
        // Reachability: only addresses of this host exist on the emulated fabric.
        if !is_local(&dst.ip()) {
            return Err(libc::EHOSTUNREACH);
        }
        if st.local.is_none() || st.local.is_some_and(|l| l.ip().is_unspecified()) {
            let ip = match src {
                Some(s) if !s.ip().is_unspecified() => s.ip(),
                _ => pick_source(&dst)?,
            };
            if let Some(l) = st.local {
                // Bound to a wildcard: keep the port, adopt the concrete address.
                id.set_src(&mut st, SocketAddr::new(ip, l.port()));
                let dev = device_for(&ip)?;
                id.attach_device(&mut st, dev);
            } else {
                let port = src.map_or(0, |s| s.port());
                bind_locked(&id, &mut st, SocketAddr::new(ip, port))?;
            }
        }
        id.set_dst(&mut st, dst);
        let dgid = st.dev.map_or([0; 16], |d| d.gid);
        // SAFETY: st is held.
        unsafe { id.c_mut() }.route.addr.addr.ibaddr.dgid.raw = dgid;
        Ok(())
    })();
    let ev = match status {
        Ok(()) => EventBox::new(&id, RDMA_CM_EVENT_ADDR_RESOLVED, 0),
        Err(e) => {
            if e == libc::EINVAL || e == libc::EADDRINUSE || e == libc::EADDRNOTAVAIL {
                // Immediate failures of the call itself.
                return err(e);
            }
            EventBox::new(&id, RDMA_CM_EVENT_ADDR_ERROR, -e)
        }
    };
    id.queue(&st, ev);
    let sync = st.sync;
    drop(st);
    if sync {
        // SAFETY: live id.
        return unsafe { complete(idp) };
    }
    0
}

/// rdma_resolve_route.
///
/// # Safety
/// Live id.
pub unsafe fn resolve_route(idp: *mut rdma_cm_id, _timeout_ms: c_int) -> c_int {
    if idp.is_null() {
        return err(libc::EINVAL);
    }
    // SAFETY: live per the contract.
    let id = unsafe { id_arc(idp) };
    let mut st = lock(&id.st);
    let Some(dev) = st.dev else {
        return err(libc::EINVAL);
    };
    if st.peer.is_none() {
        return err(libc::EINVAL);
    }
    // One synthesized IB path record, as the kernel provides after ROUTE_RESOLVED.
    // SAFETY: zero is valid for ibv_sa_path_rec.
    let mut pr: Box<ibv_sa_path_rec> = Box::new(unsafe { zeroed() });
    pr.sgid.raw = dev.gid;
    pr.dgid.raw = dev.gid;
    pr.slid = dev.lid.to_be();
    pr.dlid = dev.lid.to_be();
    pr.pkey = 0xffffu16.to_be();
    pr.mtu = dev.mtu as u8;
    pr.rate = 7;
    pr.packet_life_time = 14;
    pr.hop_limit = 0;
    pr.reversible = 1;
    pr.numb_path = 1;
    // SAFETY: st is held; the box lives in st as long as the id.
    let c = unsafe { id.c_mut() };
    c.route.path_rec = &mut *pr;
    c.route.num_paths = 1;
    st.path_rec = Some(pr);
    let ev = EventBox::new(&id, RDMA_CM_EVENT_ROUTE_RESOLVED, 0);
    id.queue(&st, ev);
    let sync = st.sync;
    drop(st);
    if sync {
        // SAFETY: live id.
        return unsafe { complete(idp) };
    }
    0
}

/// rdma_listen.
///
/// # Safety
/// Live id.
pub unsafe fn listen(idp: *mut rdma_cm_id, backlog: c_int) -> c_int {
    if idp.is_null() {
        return err(libc::EINVAL);
    }
    // SAFETY: live per the contract.
    let id = unsafe { id_arc(idp) };
    let mut st = lock(&id.st);
    if st.listen.is_some() {
        return 0;
    }
    if st.local.is_none() {
        // Listening on an unbound id binds the IPv4 wildcard with an ephemeral port.
        if let Err(e) = bind_locked(&id, &mut st, "0.0.0.0:0".parse().expect("literal")) {
            return err(e);
        }
    }
    let local = st.local.expect("bound above");
    let name = addr::socket_name(namespace(), addr::NameKind::Listen, id.ps(), &local);
    let fd = match bind_name(&name) {
        Ok(f) => f,
        Err(e) => return err(e),
    };
    // SAFETY: listen on our own bound socket.
    if unsafe { libc::listen(fd.as_raw_fd(), 1024) } != 0 {
        return err(ffi::errno());
    }
    set_nonblock(fd.as_raw_fd());
    let fd = Arc::new(fd);
    let key = runtime().add_listener(&id, fd.clone());
    let backlog = if backlog <= 0 || backlog > 1024 {
        1024
    } else {
        backlog as usize
    };
    st.listen = Some(Listening {
        fd,
        key,
        backlog,
        pending: 0,
    });
    debug!("cm_id {idp:p} listening on {local} backlog {backlog}");
    0
}

// ---------------------------------------------------------------------------------------
// QPs

/// The init attributes for `state` (rdma_init_qp_attr).
fn init_qp_attr_locked(
    id: &IdBox,
    st: &IdState,
    attr: &mut ibv_qp_attr,
    mask: &mut c_int,
) -> Result<(), c_int> {
    let dev = st.dev.ok_or(libc::EINVAL)?;
    let ud = qp_type_for(id.ps()) == IBV_QPT_UD;
    match attr.qp_state {
        IBV_QPS_INIT => {
            attr.pkey_index = 0;
            attr.port_num = 1;
            let mut m = IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT;
            if ud {
                attr.qkey = RDMA_UDP_QKEY;
                m |= IBV_QP_QKEY;
            } else {
                // Before the CM exchange the kernel grants nothing; after it, remote write,
                // plus read/atomic when the QP has responder resources.
                attr.qp_access_flags = if st.remote.is_some() {
                    IBV_ACCESS_REMOTE_WRITE
                        | if st.responder_resources > 0 {
                            IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC
                        } else {
                            0
                        }
                } else {
                    0
                };
                m |= IBV_QP_ACCESS_FLAGS;
            }
            *mask = m as c_int;
        }
        IBV_QPS_RTR => {
            if ud {
                *mask = IBV_QP_STATE as c_int;
                return Ok(());
            }
            let r = st.remote.ok_or(libc::EINVAL)?;
            attr.path_mtu = dev.mtu;
            attr.dest_qp_num = r.qpn;
            attr.rq_psn = r.psn;
            attr.max_dest_rd_atomic = st.responder_resources;
            attr.min_rnr_timer = 12;
            attr.ah_attr.dlid = r.lid;
            attr.ah_attr.port_num = 1;
            attr.ah_attr.sl = 0;
            attr.ah_attr.is_global = 0;
            *mask = (IBV_QP_STATE
                | IBV_QP_AV
                | IBV_QP_PATH_MTU
                | IBV_QP_DEST_QPN
                | IBV_QP_RQ_PSN
                | IBV_QP_MAX_DEST_RD_ATOMIC
                | IBV_QP_MIN_RNR_TIMER) as c_int;
        }
        IBV_QPS_RTS => {
            attr.sq_psn = st.local_psn;
            if ud {
                *mask = (IBV_QP_STATE | IBV_QP_SQ_PSN) as c_int;
                return Ok(());
            }
            st.remote.ok_or(libc::EINVAL)?;
            attr.timeout = st.opts.ack_timeout.unwrap_or(14);
            attr.retry_cnt = st.retry_count;
            attr.rnr_retry = st.rnr_retry_count;
            attr.max_rd_atomic = st.initiator_depth;
            *mask = (IBV_QP_STATE
                | IBV_QP_SQ_PSN
                | IBV_QP_TIMEOUT
                | IBV_QP_RETRY_CNT
                | IBV_QP_RNR_RETRY
                | IBV_QP_MAX_QP_RD_ATOMIC) as c_int;
        }
        _ => return Err(libc::EINVAL),
    }
    Ok(())
}

/// rdma_init_qp_attr.
///
/// # Safety
/// Live id; attr/mask writable.
pub unsafe fn init_qp_attr(
    idp: *mut rdma_cm_id,
    attr: *mut ibv_qp_attr,
    mask: *mut c_int,
) -> c_int {
    if idp.is_null() || attr.is_null() || mask.is_null() {
        return err(libc::EINVAL);
    }
    // SAFETY: live per the contract.
    let id = unsafe { id_ref(idp) };
    let st = lock(&id.st);
    // SAFETY: writable per the contract.
    let (attr, mask) = unsafe { (&mut *attr, &mut *mask) };
    match init_qp_attr_locked(id, &st, attr, mask) {
        Ok(()) => 0,
        Err(e) => err(e),
    }
}

/// Move the id's QP to `state` with the CM-derived attributes.
fn modify_qp_to(
    id: &IdBox,
    st: &IdState,
    qp: *mut ibv_qp,
    state: ibv_qp_state,
) -> Result<(), c_int> {
    // SAFETY: zero is valid for ibv_qp_attr.
    let mut a: ibv_qp_attr = unsafe { zeroed() };
    a.qp_state = state;
    let mut mask = 0;
    init_qp_attr_locked(id, st, &mut a, &mut mask)?;
    // SAFETY: qp is the application's live QP attached to the id.
    let r = unsafe { ffi::ibv_modify_qp(qp, &mut a, mask) };
    if r != 0 {
        // SAFETY: live QP.
        let qpn = unsafe { (*qp).qp_num };
        log(&format!(
            "cm_id {:p}: QP {qpn:#x} to state {state} failed: errno {r}",
            id.c_ptr()
        ));
        return Err(r);
    }
    Ok(())
}

/// INIT(re-apply) → RTR → RTS with the negotiated values (ucma_modify_qp_rtr/rts).
fn qp_rtr_rts(id: &IdBox, st: &IdState, qp: *mut ibv_qp) -> Result<(), c_int> {
    if qp.is_null() {
        return Ok(());
    }
    // SAFETY: live QP.
    let cur = unsafe { (*qp).state };
    if cur == IBV_QPS_INIT || cur == IBV_QPS_RESET {
        modify_qp_to(id, st, qp, IBV_QPS_INIT)?;
    }
    modify_qp_to(id, st, qp, IBV_QPS_RTR)?;
    modify_qp_to(id, st, qp, IBV_QPS_RTS)
}

/// rdma_create_qp.
///
/// # Safety
/// Live id; `pd` NULL or live; `attr` valid.
pub unsafe fn create_qp(
    idp: *mut rdma_cm_id,
    pd: *mut ibv_pd,
    attr: *mut ibv_qp_init_attr,
) -> c_int {
    if idp.is_null() || attr.is_null() {
        return err(libc::EINVAL);
    }
    // SAFETY: live per the contract.
    let id = unsafe { id_arc(idp) };
    let mut st = lock(&id.st);
    // SAFETY: st is held.
    let c = unsafe { id.c_mut() };
    if c.verbs.is_null() {
        return err(libc::EINVAL);
    }
    let pd = if pd.is_null() { c.pd } else { pd };
    // SAFETY: pd is a live PD (application's or the device default).
    if pd.is_null() || unsafe { (*pd).context } != c.verbs {
        return err(libc::EINVAL);
    }
    // SAFETY: valid per the contract.
    let attr = unsafe { &mut *attr };
    let mut created = false;
    if attr.send_cq.is_null() || attr.recv_cq.is_null() {
        // One comp channel and CQ per missing direction, cq_context = id (ucma_create_cqs).
        if attr.recv_cq.is_null() {
            // SAFETY: live context.
            let ch = unsafe { ffi::ibv_create_comp_channel(c.verbs) };
            if ch.is_null() {
                return -1;
            }
            let n = attr.cap.max_recv_wr.max(1) as c_int;
            // SAFETY: live context and channel.
            let cq = unsafe { ffi::ibv_create_cq(c.verbs, n, idp.cast(), ch, 0) };
            if cq.is_null() {
                // SAFETY: channel just created.
                unsafe { ffi::ibv_destroy_comp_channel(ch) };
                return -1;
            }
            c.recv_cq_channel = ch;
            c.recv_cq = cq;
            attr.recv_cq = cq;
            created = true;
        }
        if attr.send_cq.is_null() {
            // SAFETY: live context.
            let ch = unsafe { ffi::ibv_create_comp_channel(c.verbs) };
            if ch.is_null() {
                return -1;
            }
            let n = attr.cap.max_send_wr.max(1) as c_int;
            // SAFETY: live context and channel.
            let cq = unsafe { ffi::ibv_create_cq(c.verbs, n, idp.cast(), ch, 0) };
            if cq.is_null() {
                // SAFETY: channel just created.
                unsafe { ffi::ibv_destroy_comp_channel(ch) };
                return -1;
            }
            c.send_cq_channel = ch;
            c.send_cq = cq;
            attr.send_cq = cq;
            created = true;
        }
    }
    if attr.srq.is_null() && !c.srq.is_null() {
        attr.srq = c.srq;
    }
    // SAFETY: pd and attr valid.
    let qp = unsafe { ffi::ibv_create_qp(pd, attr) };
    if qp.is_null() {
        let e = ffi::errno();
        if created {
            destroy_own_cqs(c);
        }
        return err(e);
    }
    st.created_cqs = created;
    // SAFETY: qp was just created.
    st.qpn = unsafe { (*qp).qp_num };
    // SAFETY: st is held.
    let c = unsafe { id.c_mut() };
    c.qp = qp;
    c.pd = pd;
    // Connected QPs go to INIT now; UD QPs all the way to RTS (ucma_init_ud_qp).
    let r = if qp_type_for(id.ps()) == IBV_QPT_UD {
        modify_qp_to(&id, &st, qp, IBV_QPS_INIT)
            .and_then(|_| modify_qp_to(&id, &st, qp, IBV_QPS_RTR))
            .and_then(|_| modify_qp_to(&id, &st, qp, IBV_QPS_RTS))
    } else {
        modify_qp_to(&id, &st, qp, IBV_QPS_INIT)
    };
    if let Err(e) = r {
        // SAFETY: st is held.
        let c = unsafe { id.c_mut() };
        c.qp = std::ptr::null_mut();
        // SAFETY: the QP was just created and is not in use.
        unsafe { ffi::ibv_destroy_qp(qp) };
        if created {
            destroy_own_cqs(c);
        }
        return err(e);
    }
    // SAFETY: live QP.
    debug!("cm_id {idp:p}: created QP {:#x}", unsafe { (*qp).qp_num });
    0
}

fn destroy_own_cqs(c: &mut rdma_cm_id) {
    // SAFETY: the CQs and channels were created by create_qp for this id.
    unsafe {
        if !c.send_cq.is_null() {
            ffi::ibv_destroy_cq(c.send_cq);
        }
        if !c.recv_cq.is_null() {
            ffi::ibv_destroy_cq(c.recv_cq);
        }
        if !c.send_cq_channel.is_null() {
            ffi::ibv_destroy_comp_channel(c.send_cq_channel);
        }
        if !c.recv_cq_channel.is_null() {
            ffi::ibv_destroy_comp_channel(c.recv_cq_channel);
        }
    }
    c.send_cq = std::ptr::null_mut();
    c.recv_cq = std::ptr::null_mut();
    c.send_cq_channel = std::ptr::null_mut();
    c.recv_cq_channel = std::ptr::null_mut();
}

/// rdma_destroy_qp.
///
/// # Safety
/// Live id.
pub unsafe fn destroy_qp(idp: *mut rdma_cm_id) {
    if idp.is_null() {
        return;
    }
    // SAFETY: live per the contract.
    let id = unsafe { id_ref(idp) };
    let mut st = lock(&id.st);
    // SAFETY: st is held.
    let c = unsafe { id.c_mut() };
    if !c.qp.is_null() {
        // SAFETY: the QP attached to the id.
        let r = unsafe { ffi::ibv_destroy_qp(c.qp) };
        if r != 0 {
            log(&format!("cm_id {idp:p}: ibv_destroy_qp failed: errno {r}"));
        }
        c.qp = std::ptr::null_mut();
    }
    st.qpn = 0;
    if st.created_cqs {
        destroy_own_cqs(c);
        st.created_cqs = false;
    }
}

/// rdma_create_srq.
///
/// # Safety
/// Live id; pd NULL or live; attr valid.
pub unsafe fn create_srq(
    idp: *mut rdma_cm_id,
    pd: *mut ibv_pd,
    attr: *mut ibv_srq_init_attr,
) -> c_int {
    if idp.is_null() || attr.is_null() {
        return err(libc::EINVAL);
    }
    // SAFETY: live per the contract.
    let id = unsafe { id_ref(idp) };
    let _st = lock(&id.st);
    // SAFETY: st held.
    let c = unsafe { id.c_mut() };
    let pd = if pd.is_null() { c.pd } else { pd };
    if pd.is_null() {
        return err(libc::EINVAL);
    }
    // SAFETY: live pd, valid attr.
    let srq = unsafe { ffi::ibv_create_srq(pd, attr) };
    if srq.is_null() {
        return -1;
    }
    c.srq = srq;
    0
}

/// rdma_destroy_srq.
///
/// # Safety
/// Live id.
pub unsafe fn destroy_srq(idp: *mut rdma_cm_id) {
    if idp.is_null() {
        return;
    }
    // SAFETY: live per the contract.
    let id = unsafe { id_ref(idp) };
    let _st = lock(&id.st);
    // SAFETY: st held.
    let c = unsafe { id.c_mut() };
    if !c.srq.is_null() {
        // SAFETY: the SRQ created for this id.
        unsafe { ffi::ibv_destroy_srq(c.srq) };
        c.srq = std::ptr::null_mut();
    }
}

// ---------------------------------------------------------------------------------------
// Connection establishment

fn param_private_data(p: Option<&rdma_conn_param>, limit: usize) -> Result<Vec<u8>, c_int> {
    let Some(p) = p else {
        return Ok(Vec::new());
    };
    if p.private_data.is_null() || p.private_data_len == 0 {
        return Ok(Vec::new());
    }
    let n = usize::from(p.private_data_len);
    if n > limit {
        return Err(libc::EINVAL);
    }
    // SAFETY: the application supplies private_data_len readable bytes.
    Ok(unsafe { std::slice::from_raw_parts(p.private_data.cast::<u8>(), n) }.to_vec())
}

/// rdma_connect.
///
/// # Safety
/// Live id; param NULL or valid.
pub unsafe fn connect(idp: *mut rdma_cm_id, param: *const rdma_conn_param) -> c_int {
    if idp.is_null() {
        return err(libc::EINVAL);
    }
    // SAFETY: live per the contract.
    let id = unsafe { id_arc(idp) };
    // SAFETY: NULL or valid per the contract.
    let p = unsafe { param.as_ref() };
    let mut st = lock(&id.st);
    let qp = id.qp(&st);
    let (Some(dev), Some(dst), Some(src)) = (st.dev, st.peer, st.local) else {
        return err(libc::EINVAL);
    };
    if st.conn.is_some() || st.listen.is_some() {
        return err(libc::EINVAL);
    }
    if id.ps() != RDMA_PS_TCP && id.ps() != RDMA_PS_IB {
        ffi::note_once(
            "rdma_connect",
            "RDMA_PS_UDP (SIDR) connections are not supported by softrdma",
        );
        return err(libc::EOPNOTSUPP);
    }
    if qp.is_null() && p.is_none() {
        return err(libc::EINVAL);
    }
    let rr = p.map_or(255, |p| p.responder_resources);
    let idp_ = p.map_or(255, |p| p.initiator_depth);
    if (rr != 255 && rr > dev.max_resp_res) || (idp_ != 255 && idp_ > dev.max_init_depth) {
        return err(libc::EINVAL);
    }
    let pdata = match param_private_data(p, proto::REQ_PRIVATE_DATA) {
        Ok(d) => d,
        Err(e) => return err(e),
    };
    st.responder_resources = if rr == 255 { dev.max_resp_res } else { rr };
    st.initiator_depth = if idp_ == 255 {
        dev.max_init_depth
    } else {
        idp_
    };
    st.retry_count = p.map_or(7, |p| p.retry_count);
    let (qpn, srq) = if qp.is_null() {
        (p.map_or(0, |p| p.qp_num), p.is_some_and(|p| p.srq != 0))
    } else {
        // SAFETY: live QP.
        unsafe { ((*qp).qp_num, !(*qp).srq.is_null()) }
    };
    let req = Req {
        ps: id.ps() as u16,
        qpn,
        psn: st.local_psn,
        lid: dev.lid,
        srq,
        responder_resources: st.responder_resources,
        initiator_depth: st.initiator_depth,
        flow_control: p.map_or(1, |p| p.flow_control),
        retry_count: st.retry_count,
        rnr_retry_count: p.map_or(7, |p| p.rnr_retry_count),
        src,
        dst,
        private_data: pdata,
    };
    // Find the listener: exact address, then wildcards. A port that is bound but not yet
    // listening (qperf 0.4.11 sends its port before rdma_listen) gets the REQ retried for a
    // bounded time, as the IB CM retransmits an unanswered REQ; then REJECTED (status 8).
    let ns = namespace();
    let cands = addr::connect_candidates(&dst);
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(req_retry_ms());
    let sock = loop {
        let found = cands.iter().find_map(|cand| {
            let name = addr::socket_name(ns, addr::NameKind::Listen, id.ps(), cand);
            connect_name(&name).ok()
        });
        if found.is_some() || std::time::Instant::now() >= deadline {
            break found;
        }
        let bound = addr::reservations_in(&proc_net_unix(), ns, id.ps(), dst.port())
            .iter()
            .any(|ip| cands.iter().any(|c| c.ip() == *ip));
        if !bound {
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    };
    let Some(sock) = sock else {
        debug!("cm_id {idp:p}: nobody listens on {dst}");
        let ev = EventBox::new(
            &id,
            RDMA_CM_EVENT_REJECTED,
            c_int::from(proto::REJ_INVALID_SERVICE_ID),
        );
        qp_to_error(qp);
        id.queue(&st, ev);
        let sync = st.sync;
        drop(st);
        if sync {
            // SAFETY: live id.
            return unsafe { complete(idp) };
        }
        return 0;
    };
    send_msg(sock.as_raw_fd(), &Msg::Req(req), idp);
    let fd = Arc::new(sock);
    let key = runtime().add_conn(&id, fd.clone());
    st.conn = Some(ConnIo {
        fd,
        key,
        machine: crate::conn::Conn::active(),
    });
    debug!("cm_id {idp:p}: REQ sent to {dst} (QPN {qpn:#x})");
    let sync = st.sync;
    drop(st);
    if sync {
        // SAFETY: live id.
        return unsafe { complete(idp) };
    }
    0
}

/// How long a REQ to a bound-but-not-listening port is retried (`SOFTRDMA_CM_REQ_RETRY_MS`,
/// default 1000).
fn req_retry_ms() -> u64 {
    static MS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *MS.get_or_init(|| {
        std::env::var("SOFTRDMA_CM_REQ_RETRY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000)
    })
}

/// rdma_accept.
///
/// # Safety
/// Live id; param NULL or valid.
pub unsafe fn accept(idp: *mut rdma_cm_id, param: *const rdma_conn_param) -> c_int {
    if idp.is_null() {
        return err(libc::EINVAL);
    }
    // SAFETY: live per the contract.
    let id = unsafe { id_arc(idp) };
    // SAFETY: NULL or valid per the contract.
    let p = unsafe { param.as_ref() };
    let mut st = lock(&id.st);
    let qp = id.qp(&st);
    let Some(dev) = st.dev else {
        return err(libc::EINVAL);
    };
    if st.conn.as_ref().map(|c| c.machine.state()) != Some(State::ReqRcvd) {
        return err(libc::EINVAL);
    }
    if qp.is_null() && p.is_none() && id.ps() == RDMA_PS_TCP {
        return err(libc::EINVAL);
    }
    let rr = p.map_or(255, |p| p.responder_resources);
    let idp_ = p.map_or(255, |p| p.initiator_depth);
    if (rr != 255 && rr > dev.max_resp_res) || (idp_ != 255 && idp_ > dev.max_init_depth) {
        return err(libc::EINVAL);
    }
    let pdata = match param_private_data(p, proto::REP_PRIVATE_DATA) {
        Ok(d) => d,
        Err(e) => return err(e),
    };
    st.initiator_depth = if idp_ == 255 {
        st.initiator_depth.min(dev.max_init_depth)
    } else {
        idp_
    };
    st.responder_resources = if rr == 255 {
        st.responder_resources.min(dev.max_resp_res)
    } else {
        rr
    };
    if let Err(e) = qp_rtr_rts(&id, &st, qp) {
        qp_to_error(qp);
        return err(e);
    }
    let (qpn, srq) = if qp.is_null() {
        (p.map_or(0, |p| p.qp_num), p.is_some_and(|p| p.srq != 0))
    } else {
        // SAFETY: live QP.
        unsafe { ((*qp).qp_num, !(*qp).srq.is_null()) }
    };
    let rep = Rep {
        qpn,
        psn: st.local_psn,
        lid: dev.lid,
        srq,
        responder_resources: st.responder_resources,
        initiator_depth: st.initiator_depth,
        flow_control: p.map_or(1, |p| p.flow_control),
        rnr_retry_count: p.map_or(7, |p| p.rnr_retry_count),
        private_data: pdata,
    };
    let outs = match st.conn.as_mut().expect("checked").machine.accept(rep) {
        Ok(o) => o,
        Err(e) => {
            log(&format!("cm_id {idp:p}: {e}"));
            return err(libc::EINVAL);
        }
    };
    id.run(&mut st, outs);
    debug!("cm_id {idp:p}: accepted (QPN {qpn:#x})");
    let sync = st.sync;
    drop(st);
    if sync {
        // SAFETY: live id.
        return unsafe { complete(idp) };
    }
    0
}

/// rdma_reject.
///
/// # Safety
/// Live id; pdata readable for len bytes.
pub unsafe fn reject(idp: *mut rdma_cm_id, pdata: *const c_void, len: u8) -> c_int {
    if idp.is_null() {
        return err(libc::EINVAL);
    }
    let data = if pdata.is_null() || len == 0 {
        Vec::new()
    } else {
        if usize::from(len) > proto::REJ_PRIVATE_DATA {
            return err(libc::EINVAL);
        }
        // SAFETY: readable per the contract.
        unsafe { std::slice::from_raw_parts(pdata.cast::<u8>(), usize::from(len)) }.to_vec()
    };
    // SAFETY: live per the contract.
    let id = unsafe { id_arc(idp) };
    let mut st = lock(&id.st);
    let Some(c) = st.conn.as_mut() else {
        return err(libc::EINVAL);
    };
    match c.machine.reject(proto::REJ_CONSUMER, data) {
        Ok(outs) => {
            id.run(&mut st, outs);
            0
        }
        Err(e) => {
            log(&format!("cm_id {idp:p}: {e}"));
            err(libc::EINVAL)
        }
    }
}

/// rdma_establish.
///
/// # Safety
/// Live id.
pub unsafe fn establish(idp: *mut rdma_cm_id) -> c_int {
    if idp.is_null() {
        return err(libc::EINVAL);
    }
    // SAFETY: live per the contract.
    let id = unsafe { id_arc(idp) };
    let mut st = lock(&id.st);
    if !id.qp(&st).is_null() {
        return err(libc::EINVAL);
    }
    let Some(c) = st.conn.as_mut() else {
        return err(libc::EINVAL);
    };
    match c.machine.establish() {
        Ok(outs) => {
            id.run(&mut st, outs);
            0
        }
        Err(e) => {
            log(&format!("cm_id {idp:p}: {e}"));
            err(libc::EINVAL)
        }
    }
}

/// rdma_disconnect.
///
/// # Safety
/// Live id.
pub unsafe fn disconnect(idp: *mut rdma_cm_id) -> c_int {
    if idp.is_null() {
        return err(libc::EINVAL);
    }
    // SAFETY: live per the contract.
    let id = unsafe { id_arc(idp) };
    let mut st = lock(&id.st);
    let Some(c) = st.conn.as_mut() else {
        return err(libc::EINVAL);
    };
    let outs = match c.machine.disconnect() {
        Ok(o) => o,
        Err(e) => {
            debug!("cm_id {idp:p}: {e}");
            return err(libc::EINVAL);
        }
    };
    let sent_dreq = outs
        .iter()
        .any(|o| matches!(o, crate::conn::Output::Send(_)));
    id.run(&mut st, outs);
    let sync = st.sync;
    drop(st);
    if sync && sent_dreq {
        // SAFETY: live id.
        return unsafe { complete(idp) };
    }
    0
}

// ---------------------------------------------------------------------------------------
// Events

/// Process a dequeued event in the caller's thread (active-side REP handling).
fn finish_event(ev: &mut EventBox) {
    if let Some(l) = &ev.listen {
        if let Some(li) = lock(&l.st).listen.as_mut() {
            li.pending = li.pending.saturating_sub(1);
        }
    }
    let Pending::ConnectResponse = &ev.pending else {
        return;
    };
    ev.pending = Pending::Plain;
    let id = ev.id.clone();
    let mut st = lock(&id.st);
    let qp = id.qp(&st);
    if qp.is_null() {
        return; // CONNECT_RESPONSE; the application calls rdma_establish.
    }
    let Some(c) = st.conn.as_ref() else {
        return;
    };
    if c.machine.state() != State::RepRcvd {
        return; // the connection died meanwhile; its own event follows.
    }
    // A QP the application already freed with ibv_destroy_qp cannot be connected.
    let r = if qp_still_exists(st.qpn) {
        qp_rtr_rts(&id, &st, qp)
    } else {
        Err(libc::EINVAL)
    };
    match r {
        Ok(()) => {
            let outs = st
                .conn
                .as_mut()
                .expect("checked")
                .machine
                .establish()
                .unwrap_or_default();
            id.run(&mut st, outs);
            ev.ev.event = RDMA_CM_EVENT_ESTABLISHED;
            drop(st);
            // Fault kind f: a scheduled CM drop fires once the connection is established.
            maybe_fault(&id);
        }
        Err(e) => {
            let outs = st.conn.as_mut().expect("checked").machine.fail_rep();
            id.run(&mut st, outs);
            ev.ev.event = RDMA_CM_EVENT_CONNECT_ERROR;
            ev.ev.status = -e;
        }
    }
}

/// rdma_get_cm_event.
///
/// # Safety
/// Live channel; `out` writable.
pub unsafe fn get_cm_event(ch: *mut rdma_event_channel, out: *mut *mut rdma_cm_event) -> c_int {
    if ch.is_null() || out.is_null() {
        return err(libc::EINVAL);
    }
    // SAFETY: live per the contract.
    let ch = unsafe { channel_ref(ch) };
    match ch.pop() {
        Ok(mut ev) => {
            finish_event(&mut ev);
            debug!(
                "get_cm_event: {} status {} cm_id {:p}",
                event_name(ev.ev.event),
                ev.ev.status,
                ev.ev.id
            );
            let p = Box::into_raw(ev);
            // SAFETY: writable per the contract; EventBox starts with the C event.
            unsafe { *out = p.cast() };
            0
        }
        Err(e) => err(e),
    }
}

/// rdma_ack_cm_event.
///
/// # Safety
/// `ev` from get_cm_event, not acked before.
pub unsafe fn ack_cm_event(ev: *mut rdma_cm_event) -> c_int {
    if ev.is_null() {
        return err(libc::EINVAL);
    }
    // SAFETY: returned by get_cm_event via Box::into_raw.
    drop(unsafe { Box::from_raw(ev as *mut EventBox) });
    0
}

/// Wait for the next event of a synchronous id (ucma_complete).
///
/// # Safety
/// Live id.
pub unsafe fn complete(idp: *mut rdma_cm_id) -> c_int {
    // SAFETY: live per the contract.
    let id = unsafe { id_ref(idp) };
    let (ch, prev) = {
        let _st = lock(&id.st);
        // SAFETY: st held.
        let c = unsafe { id.c_mut() };
        (
            c.channel,
            std::mem::replace(&mut c.event, std::ptr::null_mut()),
        )
    };
    if !prev.is_null() {
        // SAFETY: the id's stored event, unacked.
        unsafe { ack_cm_event(prev) };
    }
    let mut ev: *mut rdma_cm_event = std::ptr::null_mut();
    // SAFETY: the id's channel is live while the id is.
    if unsafe { get_cm_event(ch, &mut ev) } != 0 {
        return -1;
    }
    {
        let _st = lock(&id.st);
        // SAFETY: st held.
        unsafe { id.c_mut() }.event = ev;
    }
    // SAFETY: ev is a valid event we own until acked.
    let (kind, status) = unsafe { ((*ev).event, (*ev).status) };
    if status != 0 {
        if kind == RDMA_CM_EVENT_REJECTED {
            return err(libc::ECONNREFUSED);
        }
        return err(if status < 0 { -status } else { libc::EINVAL });
    }
    0
}

/// rdma_get_request.
///
/// # Safety
/// Live listening sync id; `out` writable.
pub unsafe fn get_request(listen: *mut rdma_cm_id, out: *mut *mut rdma_cm_id) -> c_int {
    if listen.is_null() || out.is_null() {
        return err(libc::EINVAL);
    }
    // SAFETY: live per the contract.
    let lid = unsafe { id_ref(listen) };
    let (sync, ch, prev, qp_attr, pd) = {
        let st = lock(&lid.st);
        // SAFETY: st held.
        let c = unsafe { lid.c_mut() };
        (
            st.sync,
            c.channel,
            std::mem::replace(&mut c.event, std::ptr::null_mut()),
            st.ep_qp_attr.as_ref().map(|a| {
                // SAFETY: copying a POD struct field by field via ptr::read of our own box.
                unsafe { std::ptr::read(&**a) }
            }),
            st.ep_pd,
        )
    };
    if !sync {
        return err(libc::EINVAL);
    }
    if !prev.is_null() {
        // SAFETY: unacked stored event.
        unsafe { ack_cm_event(prev) };
    }
    let mut ev: *mut rdma_cm_event = std::ptr::null_mut();
    // SAFETY: live channel.
    if unsafe { get_cm_event(ch, &mut ev) } != 0 {
        return -1;
    }
    // SAFETY: valid event.
    let (kind, status, nid) = unsafe { ((*ev).event, (*ev).status, (*ev).id) };
    if status != 0 || kind != RDMA_CM_EVENT_CONNECT_REQUEST {
        // SAFETY: our event.
        unsafe { ack_cm_event(ev) };
        return err(if status < 0 { -status } else { libc::EINVAL });
    }
    if let Some(mut a) = qp_attr {
        a.qp_context = nid.cast();
        // SAFETY: nid is the new live id; a is a valid attr.
        if unsafe { create_qp(nid, pd as *mut ibv_pd, &mut a) } != 0 {
            let e = ffi::errno();
            // SAFETY: our event; the new id was never handed out.
            unsafe {
                ack_cm_event(ev);
                reject(nid, std::ptr::null(), 0);
                destroy_id(nid);
            }
            return err(e);
        }
    }
    // SAFETY: nid is live; store the event there as librdmacm does.
    unsafe {
        let nidb = id_ref(nid);
        let _st = lock(&nidb.st);
        nidb.c_mut().event = ev;
        *out = nid;
    }
    0
}

// ---------------------------------------------------------------------------------------
// Options and ports

/// rdma_set_option.
///
/// # Safety
/// Live id; optval readable for optlen.
pub unsafe fn set_option(
    idp: *mut rdma_cm_id,
    level: c_int,
    optname: c_int,
    optval: *const c_void,
    optlen: usize,
) -> c_int {
    if idp.is_null() || optval.is_null() {
        return err(libc::EINVAL);
    }
    // SAFETY: live per the contract.
    let id = unsafe { id_ref(idp) };
    let mut st = lock(&id.st);
    // SAFETY: readable per the contract; sizes checked before each read.
    let rd_u8 = || unsafe { *(optval as *const u8) };
    // SAFETY: as above.
    let rd_int = || unsafe { std::ptr::read_unaligned(optval as *const c_int) };
    match (level as u32, optname as u32) {
        (RDMA_OPTION_ID, RDMA_OPTION_ID_TOS) if optlen >= 1 => st.opts.tos = Some(rd_u8()),
        (RDMA_OPTION_ID, RDMA_OPTION_ID_REUSEADDR) if optlen >= 4 => {
            st.opts.reuseaddr = rd_int() != 0
        }
        (RDMA_OPTION_ID, RDMA_OPTION_ID_AFONLY) if optlen >= 4 => st.opts.afonly = rd_int() != 0,
        (RDMA_OPTION_ID, RDMA_OPTION_ID_ACK_TIMEOUT) if optlen >= 1 => {
            st.opts.ack_timeout = Some(rd_u8())
        }
        (RDMA_OPTION_IB, RDMA_OPTION_IB_PATH) => {}
        _ => return err(libc::EINVAL),
    }
    0
}

/// Port of route src (`dst == false`) or dst.
///
/// # Safety
/// Live id.
pub unsafe fn get_port(idp: *mut rdma_cm_id, dst: bool) -> u16 {
    if idp.is_null() {
        return 0;
    }
    // SAFETY: live per the contract.
    let id = unsafe { id_ref(idp) };
    let st = lock(&id.st);
    let a = if dst { st.peer } else { st.local };
    a.map_or(0, |a| a.port().to_be())
}

// ---------------------------------------------------------------------------------------
// Endpoints (rdma_verbs.h style synchronous API)

/// rdma_create_ep.
///
/// # Safety
/// `out` writable; res valid; pd NULL or live; attr NULL or valid.
pub unsafe fn create_ep(
    out: *mut *mut rdma_cm_id,
    res: *const rdma_addrinfo,
    pd: *mut ibv_pd,
    attr: *mut ibv_qp_init_attr,
) -> c_int {
    if out.is_null() || res.is_null() {
        return err(libc::EINVAL);
    }
    // SAFETY: valid per the contract.
    let res = unsafe { &*res };
    let mut idp: *mut rdma_cm_id = std::ptr::null_mut();
    // SAFETY: NULL channel creates a sync id.
    if unsafe {
        create_id(
            std::ptr::null_mut(),
            &mut idp,
            std::ptr::null_mut(),
            res.ai_port_space as u32,
            res.ai_qp_type as ibv_qp_type,
        )
    } != 0
    {
        return -1;
    }
    let fail = |idp| {
        let e = ffi::errno();
        // SAFETY: the id was just created and not handed out.
        unsafe { destroy_id(idp) };
        err(e)
    };
    if res.ai_flags & RAI_PASSIVE != 0 {
        // SAFETY: ai_src_addr points at a sockaddr of ai_src_len bytes.
        if unsafe { bind_addr(idp, res.ai_src_addr) } != 0 {
            return fail(idp);
        }
        if !attr.is_null() {
            // SAFETY: live id.
            let id = unsafe { id_ref(idp) };
            let mut st = lock(&id.st);
            // SAFETY: attr valid per the contract; POD copy.
            st.ep_qp_attr = Some(Box::new(unsafe { std::ptr::read(attr) }));
            st.ep_pd = pd as usize;
        }
        // SAFETY: out writable.
        unsafe { *out = idp };
        return 0;
    }
    // SAFETY: addresses from the addrinfo.
    if unsafe { resolve_addr(idp, res.ai_src_addr, res.ai_dst_addr, 2000) } != 0 {
        return fail(idp);
    }
    // SAFETY: live id.
    if unsafe { resolve_route(idp, 2000) } != 0 {
        return fail(idp);
    }
    // SAFETY: live id, attr valid.
    if !attr.is_null() && unsafe { create_qp(idp, pd, attr) } != 0 {
        return fail(idp);
    }
    // SAFETY: out writable.
    unsafe { *out = idp };
    0
}

/// rdma_destroy_ep.
///
/// # Safety
/// Live id.
pub unsafe fn destroy_ep(idp: *mut rdma_cm_id) {
    if idp.is_null() {
        return;
    }
    // SAFETY: live per the contract.
    unsafe {
        destroy_qp(idp);
        destroy_srq(idp);
        destroy_id(idp);
    }
}

// ---------------------------------------------------------------------------------------
// rdma_getaddrinfo

fn node_service(
    node: *const c_char,
    service: *const c_char,
) -> (Option<std::ffi::CString>, Option<std::ffi::CString>) {
    let cv = |p: *const c_char| {
        // SAFETY: NULL-checked; a NUL-terminated string from the application.
        (!p.is_null()).then(|| unsafe { std::ffi::CStr::from_ptr(p) }.to_owned())
    };
    (cv(node), cv(service))
}

/// rdma_getaddrinfo.
///
/// # Safety
/// node/service NULL or C strings; hints NULL or valid; res writable.
pub unsafe fn getaddrinfo(
    node: *const c_char,
    service: *const c_char,
    hints: *const rdma_addrinfo,
    res: *mut *mut rdma_addrinfo,
) -> c_int {
    if res.is_null() || (node.is_null() && service.is_null()) {
        return err(libc::EINVAL);
    }
    // SAFETY: NULL or valid per the contract.
    let h = unsafe { hints.as_ref() };
    let flags = h.map_or(0, |h| h.ai_flags);
    let family = h.map_or(0, |h| h.ai_family);
    if family == AF_IB {
        return err(libc::EAFNOSUPPORT);
    }
    let (node_c, service_c) = node_service(node, service);
    // SAFETY: zero is valid for addrinfo.
    let mut ai_h: libc::addrinfo = unsafe { zeroed() };
    ai_h.ai_family = family;
    ai_h.ai_flags = if flags & RAI_PASSIVE != 0 {
        libc::AI_PASSIVE
    } else {
        0
    } | if flags & RAI_NUMERICHOST != 0 {
        libc::AI_NUMERICHOST
    } else {
        0
    };
    let ps = h.map_or(0, |h| h.ai_port_space);
    let qpt = h.map_or(0, |h| h.ai_qp_type);
    ai_h.ai_socktype = if ps == RDMA_PS_UDP as c_int || qpt == IBV_QPT_UD as c_int {
        libc::SOCK_DGRAM
    } else {
        libc::SOCK_STREAM
    };
    let mut ai: *mut libc::addrinfo = std::ptr::null_mut();
    // SAFETY: valid C strings or NULL; valid hints and out pointer.
    let r = unsafe {
        libc::getaddrinfo(
            node_c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            service_c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            &ai_h,
            &mut ai,
        )
    };
    if r != 0 || ai.is_null() {
        set_errno(if r == libc::EAI_SYSTEM {
            ffi::errno()
        } else {
            libc::ENOENT
        });
        return r;
    }
    // SAFETY: ai is a valid list head from getaddrinfo.
    let first = unsafe { &*ai };
    let len = first.ai_addrlen as usize;
    // SAFETY: calloc; freed by freeaddrinfo.
    let rai =
        unsafe { libc::calloc(1, std::mem::size_of::<rdma_addrinfo>()) } as *mut rdma_addrinfo;
    // SAFETY: calloc for the address copy.
    let sa = unsafe { libc::calloc(1, len.max(std::mem::size_of::<libc::sockaddr_storage>())) }
        as *mut libc::sockaddr;
    if rai.is_null() || sa.is_null() {
        // SAFETY: freeing what we allocated (free(NULL) is fine) and the getaddrinfo list.
        unsafe {
            libc::free(rai.cast());
            libc::free(sa.cast());
            libc::freeaddrinfo(ai);
        }
        set_errno(libc::ENOMEM);
        return libc::EAI_MEMORY;
    }
    // SAFETY: copying len bytes of the resolved address into our buffer.
    unsafe { std::ptr::copy_nonoverlapping(first.ai_addr as *const u8, sa.cast::<u8>(), len) };
    // SAFETY: rai is a zeroed, writable rdma_addrinfo.
    let r = unsafe { &mut *rai };
    r.ai_flags = flags;
    r.ai_family = first.ai_family;
    r.ai_qp_type = if qpt != 0 {
        qpt
    } else if first.ai_socktype == libc::SOCK_DGRAM {
        IBV_QPT_UD as c_int
    } else {
        IBV_QPT_RC as c_int
    };
    r.ai_port_space = if ps != 0 {
        ps
    } else if first.ai_socktype == libc::SOCK_DGRAM {
        RDMA_PS_UDP as c_int
    } else {
        RDMA_PS_TCP as c_int
    };
    if flags & RAI_PASSIVE != 0 {
        r.ai_src_addr = sa;
        r.ai_src_len = len as libc::socklen_t;
    } else {
        r.ai_dst_addr = sa;
        r.ai_dst_len = len as libc::socklen_t;
        // Copy the hint's source address if given.
        if let Some(h) = h {
            if !h.ai_src_addr.is_null() && h.ai_src_len > 0 {
                let n = h.ai_src_len as usize;
                // SAFETY: allocating and copying n bytes the application supplied.
                unsafe {
                    let s = libc::calloc(1, n.max(128)) as *mut libc::sockaddr;
                    if !s.is_null() {
                        std::ptr::copy_nonoverlapping(
                            h.ai_src_addr as *const u8,
                            s.cast::<u8>(),
                            n,
                        );
                        r.ai_src_addr = s;
                        r.ai_src_len = h.ai_src_len;
                    }
                }
            }
        }
    }
    // SAFETY: freeing the libc list; we copied what we need.
    unsafe {
        libc::freeaddrinfo(ai);
        *res = rai;
    }
    0
}

/// rdma_freeaddrinfo.
///
/// # Safety
/// `res` from getaddrinfo.
pub unsafe fn freeaddrinfo(mut res: *mut rdma_addrinfo) {
    while !res.is_null() {
        // SAFETY: a list node we allocated with calloc; its members too.
        unsafe {
            let next = (*res).ai_next;
            libc::free((*res).ai_src_addr.cast());
            libc::free((*res).ai_dst_addr.cast());
            libc::free((*res).ai_src_canonname.cast());
            libc::free((*res).ai_dst_canonname.cast());
            libc::free((*res).ai_route);
            libc::free((*res).ai_connect);
            libc::free(res.cast());
            res = next;
        }
    }
}
