//! The exported C ABI: every librdmacm 44 symbol at its exact version.
//!
//! Each function is a mangled Rust `extern "C" fn`; a `.symver` directive attaches the public
//! versioned name (softrdma-scope §4.1). The version nodes are declared by the node-only
//! version script written in `build.rs`. `abi/librdmacm-44-exports.txt` is the golden list
//! (checked by `tests/exports.rs`).

use crate::api;
use crate::ffi::{err, note_once};
use softrdma_abi::cma::*;
use softrdma_abi::verbs::*;
use std::ffi::{c_char, c_int, c_void};

macro_rules! export {
    ($f:ident, $sym:literal) => {
        std::arch::global_asm!(
            concat!(".globl {f}\n.symver {f}, ", $sym),
            f = sym $f
        );
    };
}

// ---- implemented ------------------------------------------------------------------------

extern "C" fn create_event_channel() -> *mut rdma_event_channel {
    api::create_event_channel()
}
export!(
    create_event_channel,
    "rdma_create_event_channel@@RDMACM_1.0"
);

unsafe extern "C" fn destroy_event_channel(ch: *mut rdma_event_channel) {
    // SAFETY: C contract of rdma_destroy_event_channel.
    unsafe { api::destroy_event_channel(ch) }
}
export!(
    destroy_event_channel,
    "rdma_destroy_event_channel@@RDMACM_1.0"
);

unsafe extern "C" fn create_id(
    ch: *mut rdma_event_channel,
    id: *mut *mut rdma_cm_id,
    ctx: *mut c_void,
    ps: rdma_port_space,
) -> c_int {
    // SAFETY: C contract of rdma_create_id.
    unsafe { api::create_id(ch, id, ctx, ps, api::qp_type_for(ps)) }
}
export!(create_id, "rdma_create_id@@RDMACM_1.0");

unsafe extern "C" fn destroy_id(id: *mut rdma_cm_id) -> c_int {
    // SAFETY: C contract of rdma_destroy_id.
    unsafe { api::destroy_id(id) }
}
export!(destroy_id, "rdma_destroy_id@@RDMACM_1.0");

unsafe extern "C" fn bind_addr(id: *mut rdma_cm_id, a: *mut libc::sockaddr) -> c_int {
    // SAFETY: C contract of rdma_bind_addr.
    unsafe { api::bind_addr(id, a) }
}
export!(bind_addr, "rdma_bind_addr@@RDMACM_1.0");

unsafe extern "C" fn resolve_addr(
    id: *mut rdma_cm_id,
    src: *mut libc::sockaddr,
    dst: *mut libc::sockaddr,
    timeout_ms: c_int,
) -> c_int {
    // SAFETY: C contract of rdma_resolve_addr.
    unsafe { api::resolve_addr(id, src, dst, timeout_ms) }
}
export!(resolve_addr, "rdma_resolve_addr@@RDMACM_1.0");

unsafe extern "C" fn resolve_route(id: *mut rdma_cm_id, timeout_ms: c_int) -> c_int {
    // SAFETY: C contract of rdma_resolve_route.
    unsafe { api::resolve_route(id, timeout_ms) }
}
export!(resolve_route, "rdma_resolve_route@@RDMACM_1.0");

unsafe extern "C" fn create_qp(
    id: *mut rdma_cm_id,
    pd: *mut ibv_pd,
    attr: *mut ibv_qp_init_attr,
) -> c_int {
    // SAFETY: C contract of rdma_create_qp.
    unsafe { api::create_qp(id, pd, attr) }
}
export!(create_qp, "rdma_create_qp@@RDMACM_1.0");

unsafe extern "C" fn create_qp_ex(id: *mut rdma_cm_id, attr: *mut ibv_qp_init_attr_ex) -> c_int {
    if attr.is_null() {
        return err(libc::EINVAL);
    }
    // SAFETY: C contract of rdma_create_qp_ex: attr points at a valid ibv_qp_init_attr_ex.
    let a = unsafe { &mut *attr };
    if a.comp_mask & !IBV_QP_INIT_ATTR_PD != 0 || a.create_flags != 0 {
        note_once(
            "rdma_create_qp_ex",
            "only comp_mask IBV_QP_INIT_ATTR_PD is supported (EOPNOTSUPP)",
        );
        return err(libc::EOPNOTSUPP);
    }
    let pd = if a.comp_mask & IBV_QP_INIT_ATTR_PD != 0 {
        a.pd
    } else {
        std::ptr::null_mut()
    };
    let mut b = ibv_qp_init_attr {
        qp_context: a.qp_context,
        send_cq: a.send_cq,
        recv_cq: a.recv_cq,
        srq: a.srq,
        cap: ibv_qp_cap {
            max_send_wr: a.cap.max_send_wr,
            max_recv_wr: a.cap.max_recv_wr,
            max_send_sge: a.cap.max_send_sge,
            max_recv_sge: a.cap.max_recv_sge,
            max_inline_data: a.cap.max_inline_data,
        },
        qp_type: a.qp_type,
        sq_sig_all: a.sq_sig_all,
    };
    // SAFETY: C contract of rdma_create_qp (same id; b is a valid attr).
    let r = unsafe { api::create_qp(id, pd, &mut b) };
    if r == 0 {
        // Report back what was created (CQs librdmacm made, actual caps).
        a.send_cq = b.send_cq;
        a.recv_cq = b.recv_cq;
        a.cap.max_send_wr = b.cap.max_send_wr;
        a.cap.max_recv_wr = b.cap.max_recv_wr;
        a.cap.max_send_sge = b.cap.max_send_sge;
        a.cap.max_recv_sge = b.cap.max_recv_sge;
        a.cap.max_inline_data = b.cap.max_inline_data;
    }
    r
}
export!(create_qp_ex, "rdma_create_qp_ex@@RDMACM_1.0");

unsafe extern "C" fn destroy_qp(id: *mut rdma_cm_id) {
    // SAFETY: C contract of rdma_destroy_qp.
    unsafe { api::destroy_qp(id) }
}
export!(destroy_qp, "rdma_destroy_qp@@RDMACM_1.0");

unsafe extern "C" fn create_srq(
    id: *mut rdma_cm_id,
    pd: *mut ibv_pd,
    attr: *mut ibv_srq_init_attr,
) -> c_int {
    // SAFETY: C contract of rdma_create_srq.
    unsafe { api::create_srq(id, pd, attr) }
}
export!(create_srq, "rdma_create_srq@@RDMACM_1.0");

unsafe extern "C" fn destroy_srq(id: *mut rdma_cm_id) {
    // SAFETY: C contract of rdma_destroy_srq.
    unsafe { api::destroy_srq(id) }
}
export!(destroy_srq, "rdma_destroy_srq@@RDMACM_1.0");

unsafe extern "C" fn connect(id: *mut rdma_cm_id, p: *mut rdma_conn_param) -> c_int {
    // SAFETY: C contract of rdma_connect.
    unsafe { api::connect(id, p) }
}
export!(connect, "rdma_connect@@RDMACM_1.0");

unsafe extern "C" fn listen(id: *mut rdma_cm_id, backlog: c_int) -> c_int {
    // SAFETY: C contract of rdma_listen.
    unsafe { api::listen(id, backlog) }
}
export!(listen, "rdma_listen@@RDMACM_1.0");

unsafe extern "C" fn accept(id: *mut rdma_cm_id, p: *mut rdma_conn_param) -> c_int {
    // SAFETY: C contract of rdma_accept.
    unsafe { api::accept(id, p) }
}
export!(accept, "rdma_accept@@RDMACM_1.0");

unsafe extern "C" fn reject(id: *mut rdma_cm_id, pdata: *const c_void, len: u8) -> c_int {
    // SAFETY: C contract of rdma_reject.
    unsafe { api::reject(id, pdata, len) }
}
export!(reject, "rdma_reject@@RDMACM_1.0");

unsafe extern "C" fn reject_ece(id: *mut rdma_cm_id, pdata: *const c_void, len: u8) -> c_int {
    // SAFETY: C contract of rdma_reject_ece (ECE is not negotiated: a plain reject).
    unsafe { api::reject(id, pdata, len) }
}
export!(reject_ece, "rdma_reject_ece@@RDMACM_1.3");

unsafe extern "C" fn establish(id: *mut rdma_cm_id) -> c_int {
    // SAFETY: C contract of rdma_establish.
    unsafe { api::establish(id) }
}
export!(establish, "rdma_establish@@RDMACM_1.2");

unsafe extern "C" fn disconnect(id: *mut rdma_cm_id) -> c_int {
    // SAFETY: C contract of rdma_disconnect.
    unsafe { api::disconnect(id) }
}
export!(disconnect, "rdma_disconnect@@RDMACM_1.0");

unsafe extern "C" fn get_cm_event(
    ch: *mut rdma_event_channel,
    ev: *mut *mut rdma_cm_event,
) -> c_int {
    // SAFETY: C contract of rdma_get_cm_event.
    unsafe { api::get_cm_event(ch, ev) }
}
export!(get_cm_event, "rdma_get_cm_event@@RDMACM_1.0");

unsafe extern "C" fn ack_cm_event(ev: *mut rdma_cm_event) -> c_int {
    // SAFETY: C contract of rdma_ack_cm_event.
    unsafe { api::ack_cm_event(ev) }
}
export!(ack_cm_event, "rdma_ack_cm_event@@RDMACM_1.0");

extern "C" fn event_str(e: rdma_cm_event_type) -> *const c_char {
    api::event_cstr(e)
}
export!(event_str, "rdma_event_str@@RDMACM_1.0");

unsafe extern "C" fn get_devices(num: *mut c_int) -> *mut *mut ibv_context {
    // SAFETY: C contract of rdma_get_devices.
    unsafe { api::get_devices(num) }
}
export!(get_devices, "rdma_get_devices@@RDMACM_1.0");

unsafe extern "C" fn free_devices(list: *mut *mut ibv_context) {
    // SAFETY: the array was calloc'ed by rdma_get_devices.
    unsafe { libc::free(list.cast()) }
}
export!(free_devices, "rdma_free_devices@@RDMACM_1.0");

unsafe extern "C" fn set_option(
    id: *mut rdma_cm_id,
    level: c_int,
    optname: c_int,
    optval: *mut c_void,
    optlen: usize,
) -> c_int {
    // SAFETY: C contract of rdma_set_option.
    unsafe { api::set_option(id, level, optname, optval, optlen) }
}
export!(set_option, "rdma_set_option@@RDMACM_1.0");

unsafe extern "C" fn migrate_id(id: *mut rdma_cm_id, ch: *mut rdma_event_channel) -> c_int {
    // SAFETY: C contract of rdma_migrate_id.
    unsafe { api::migrate_id(id, ch) }
}
export!(migrate_id, "rdma_migrate_id@@RDMACM_1.0");

unsafe extern "C" fn get_src_port(id: *mut rdma_cm_id) -> u16 {
    // SAFETY: C contract of rdma_get_src_port.
    unsafe { api::get_port(id, false) }
}
export!(get_src_port, "rdma_get_src_port@@RDMACM_1.0");

unsafe extern "C" fn get_dst_port(id: *mut rdma_cm_id) -> u16 {
    // SAFETY: C contract of rdma_get_dst_port.
    unsafe { api::get_port(id, true) }
}
export!(get_dst_port, "rdma_get_dst_port@@RDMACM_1.0");

unsafe extern "C" fn init_qp_attr(
    id: *mut rdma_cm_id,
    attr: *mut ibv_qp_attr,
    mask: *mut c_int,
) -> c_int {
    // SAFETY: C contract of rdma_init_qp_attr.
    unsafe { api::init_qp_attr(id, attr, mask) }
}
export!(init_qp_attr, "rdma_init_qp_attr@@RDMACM_1.2");

unsafe extern "C" fn getaddrinfo(
    node: *const c_char,
    service: *const c_char,
    hints: *const rdma_addrinfo,
    res: *mut *mut rdma_addrinfo,
) -> c_int {
    // SAFETY: C contract of rdma_getaddrinfo.
    unsafe { api::getaddrinfo(node, service, hints, res) }
}
export!(getaddrinfo, "rdma_getaddrinfo@@RDMACM_1.0");

unsafe extern "C" fn freeaddrinfo(res: *mut rdma_addrinfo) {
    // SAFETY: C contract of rdma_freeaddrinfo.
    unsafe { api::freeaddrinfo(res) }
}
export!(freeaddrinfo, "rdma_freeaddrinfo@@RDMACM_1.0");

unsafe extern "C" fn create_ep(
    id: *mut *mut rdma_cm_id,
    res: *mut rdma_addrinfo,
    pd: *mut ibv_pd,
    attr: *mut ibv_qp_init_attr,
) -> c_int {
    // SAFETY: C contract of rdma_create_ep.
    unsafe { api::create_ep(id, res, pd, attr) }
}
export!(create_ep, "rdma_create_ep@@RDMACM_1.0");

unsafe extern "C" fn destroy_ep(id: *mut rdma_cm_id) {
    // SAFETY: C contract of rdma_destroy_ep.
    unsafe { api::destroy_ep(id) }
}
export!(destroy_ep, "rdma_destroy_ep@@RDMACM_1.0");

unsafe extern "C" fn get_request(listen: *mut rdma_cm_id, id: *mut *mut rdma_cm_id) -> c_int {
    // SAFETY: C contract of rdma_get_request.
    unsafe { api::get_request(listen, id) }
}
export!(get_request, "rdma_get_request@@RDMACM_1.0");

extern "C" fn notify(_id: *mut rdma_cm_id, _event: c_int) -> c_int {
    // IB: the kernel only uses this to report COMM_EST early; nothing to do here.
    0
}
export!(notify, "rdma_notify@@RDMACM_1.0");

unsafe extern "C" fn set_local_ece(_id: *mut rdma_cm_id, _ece: *mut c_void) -> c_int {
    note_once("rdma_set_local_ece", "ECE is not supported; ignored");
    0
}
export!(set_local_ece, "rdma_set_local_ece@@RDMACM_1.3");

unsafe extern "C" fn get_remote_ece(_id: *mut rdma_cm_id, ece: *mut [u32; 2]) -> c_int {
    if ece.is_null() {
        return err(libc::EINVAL);
    }
    // SAFETY: struct ibv_ece is {u32 vendor_id; u32 options; u32 comp_mask}; we clear the
    // first two (no ECE negotiated).
    unsafe { *ece = [0, 0] };
    0
}
export!(get_remote_ece, "rdma_get_remote_ece@@RDMACM_1.3");

unsafe extern "C" fn rpoll(fds: *mut libc::pollfd, nfds: libc::nfds_t, timeout: c_int) -> c_int {
    // No rsockets exist, so every fd is a plain fd.
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { libc::poll(fds, nfds, timeout) }
}
export!(rpoll, "rpoll@@RDMACM_1.0");

// ---- not implemented: ENOSYS and a one-time note ----------------------------------------

macro_rules! enosys {
    ($($f:ident => $sym:literal, $name:literal, $ret:ty = $val:expr;)*) => {$(
        extern "C" fn $f() -> $ret {
            note_once($name, "not implemented by softrdma (ENOSYS)");
            crate::ffi::set_errno(libc::ENOSYS);
            $val
        }
        export!($f, $sym);
    )*};
}

enosys! {
    create_srq_ex => "rdma_create_srq_ex@@RDMACM_1.0", "rdma_create_srq_ex", c_int = -1;
    join_multicast => "rdma_join_multicast@@RDMACM_1.0", "rdma_join_multicast", c_int = -1;
    join_multicast_ex => "rdma_join_multicast_ex@@RDMACM_1.1", "rdma_join_multicast_ex", c_int = -1;
    leave_multicast => "rdma_leave_multicast@@RDMACM_1.0", "rdma_leave_multicast", c_int = -1;
    raccept => "raccept@@RDMACM_1.0", "raccept", c_int = -1;
    rbind => "rbind@@RDMACM_1.0", "rbind", c_int = -1;
    rclose => "rclose@@RDMACM_1.0", "rclose", c_int = -1;
    rconnect => "rconnect@@RDMACM_1.0", "rconnect", c_int = -1;
    rfcntl => "rfcntl@@RDMACM_1.0", "rfcntl", c_int = -1;
    rgetpeername => "rgetpeername@@RDMACM_1.0", "rgetpeername", c_int = -1;
    rgetsockname => "rgetsockname@@RDMACM_1.0", "rgetsockname", c_int = -1;
    rgetsockopt => "rgetsockopt@@RDMACM_1.0", "rgetsockopt", c_int = -1;
    riomap => "riomap@@RDMACM_1.0", "riomap", i64 = -1;
    riounmap => "riounmap@@RDMACM_1.0", "riounmap", c_int = -1;
    riowrite => "riowrite@@RDMACM_1.0", "riowrite", isize = -1;
    rlisten => "rlisten@@RDMACM_1.0", "rlisten", c_int = -1;
    rread => "rread@@RDMACM_1.0", "rread", isize = -1;
    rreadv => "rreadv@@RDMACM_1.0", "rreadv", isize = -1;
    rrecv => "rrecv@@RDMACM_1.0", "rrecv", isize = -1;
    rrecvfrom => "rrecvfrom@@RDMACM_1.0", "rrecvfrom", isize = -1;
    rrecvmsg => "rrecvmsg@@RDMACM_1.0", "rrecvmsg", isize = -1;
    rselect => "rselect@@RDMACM_1.0", "rselect", c_int = -1;
    rsend => "rsend@@RDMACM_1.0", "rsend", isize = -1;
    rsendmsg => "rsendmsg@@RDMACM_1.0", "rsendmsg", isize = -1;
    rsendto => "rsendto@@RDMACM_1.0", "rsendto", isize = -1;
    rsetsockopt => "rsetsockopt@@RDMACM_1.0", "rsetsockopt", c_int = -1;
    rshutdown => "rshutdown@@RDMACM_1.0", "rshutdown", c_int = -1;
    rsocket => "rsocket@@RDMACM_1.0", "rsocket", c_int = -1;
    rwrite => "rwrite@@RDMACM_1.0", "rwrite", isize = -1;
    rwritev => "rwritev@@RDMACM_1.0", "rwritev", isize = -1;
}
