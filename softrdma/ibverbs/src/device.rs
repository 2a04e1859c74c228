//! The one emulated device (`softrdma0`), contexts, and the device/port/GID queries.

use crate::events;
use crate::runtime;
use crate::util::set_errno;
use softrdma_abi::fabric::Counter;
use softrdma_abi::verbs::*;
use std::ffi::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// Vendor id reported by the device (not 0 / 0xFFFFFF, which SPDK treats as Soft-RoCE).
pub(crate) const VENDOR_ID: u32 = 0x5FDB1;
/// Node / system-image GUID (host order; reported big-endian).
pub(crate) const NODE_GUID: u64 = 0x5fdb_0100_0000_0001;
/// LID of the single port (every process shares it; QPNs are machine-unique).
pub(crate) const PORT_LID: u16 = 1;
/// Device limits.
pub(crate) const MAX_QP_WR: u32 = 16384;
pub(crate) const MAX_SGE: u32 = 32;
pub(crate) const MAX_CQE: u32 = 4_194_303;
pub(crate) const MAX_SRQ_WR: u32 = 32767;
pub(crate) const MAX_SRQ_SGE: u32 = 32;
pub(crate) const MAX_RD_ATOM: u32 = 16;
pub(crate) const MAX_INLINE: u32 = 512;

struct DevPtr(*mut ibv_device);
// SAFETY: the device struct is immutable after creation and lives forever.
unsafe impl Send for DevPtr {}
// SAFETY: as above.
unsafe impl Sync for DevPtr {}

fn copy_str(dst: &mut [c_char], s: &str) {
    for (d, b) in dst.iter_mut().zip(s.bytes().chain(std::iter::once(0))) {
        *d = b as c_char;
    }
}

/// The process-lifetime device.
pub(crate) fn device() -> *mut ibv_device {
    static DEV: OnceLock<DevPtr> = OnceLock::new();
    DEV.get_or_init(|| {
        let mut d: ibv_device = Default::default();
        d.node_type = IBV_NODE_CA;
        d.transport_type = IBV_TRANSPORT_IB;
        copy_str(&mut d.name, "softrdma0");
        copy_str(&mut d.dev_name, "uverbs0");
        copy_str(&mut d.dev_path, "/sys/class/infiniband_verbs/uverbs0");
        copy_str(&mut d.ibdev_path, "/sys/class/infiniband/softrdma0");
        DevPtr(Box::into_raw(Box::new(d)))
    })
    .0
}

/// Private wrapper of a context: the `verbs_context` must come first.
#[repr(C)]
pub(crate) struct CtxWrap {
    pub vctx: verbs_context,
    pub async_q: events::AsyncQueue,
    /// The device was removed under this context (fault `device_remove`): every verb on it
    /// except the destroy / dealloc / dereg / close calls fails with EIO, as after a hot
    /// removal on hardware. A context opened after `device_add` is a new one.
    pub removed: AtomicBool,
}

/// The device is present: false between an injected `device_remove` and `device_add`.
static PRESENT: AtomicBool = AtomicBool::new(true);
/// Some context was removed, ever (until then [`gone`] costs one load).
static ANY_REMOVED: AtomicBool = AtomicBool::new(false);

/// True if the device is present (listed, openable).
pub(crate) fn present() -> bool {
    PRESENT.load(Ordering::Acquire)
}

/// True if `ctx` is a context of a removed device (verbs on it fail with EIO).
///
/// # Safety
/// `ctx` must be NULL or a context returned by [`open_device`] and not yet closed.
pub(crate) unsafe fn gone(ctx: *mut ibv_context) -> bool {
    // SAFETY: per the contract, a non-NULL ctx is a live context of ours.
    ANY_REMOVED.load(Ordering::Relaxed)
        && !ctx.is_null()
        && unsafe { ctx_wrap(ctx) }.removed.load(Ordering::Acquire)
}

/// Remove the device (fault `device_remove`), as a hot unplug does on hardware: every open
/// context gets `IBV_EVENT_DEVICE_FATAL` and is dead from now on ([`gone`]); the process's QPs
/// leave the fabric (their records go to ERR, so peers' WRs to them time out with
/// `RETRY_EXC_ERR`; no local completion is produced any more — the hardware is gone);
/// completion channels of CQs on the device report EIO to readers once drained; the device
/// leaves `ibv_get_device_list` and librdmacm (through its handler) reports
/// `RDMA_CM_EVENT_DEVICE_REMOVAL` on the ids bound to it. False if it was already removed.
pub(crate) fn remove() -> bool {
    let Some(rt) = runtime::get() else {
        return false;
    };
    if !PRESENT.swap(false, Ordering::AcqRel) {
        return false;
    }
    ANY_REMOVED.store(true, Ordering::Release);
    for &w in rt.contexts.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        // SAFETY: registered contexts are live while the registry lock is held.
        unsafe {
            (*(w as *const CtxWrap))
                .removed
                .store(true, Ordering::Release)
        };
    }
    events::raise_device_event(IBV_EVENT_DEVICE_FATAL);
    crate::qp::detach_all(rt);
    crate::cq::close_channels(rt);
    // librdmacm's shared context is never closed: it stops counting as live here, stays
    // allocated (ids of the removed device still name it) and a new one is opened on next use.
    let shared = std::mem::take(&mut *rt.shared_ctx.lock().unwrap_or_else(|e| e.into_inner()));
    if shared != 0 {
        rt.contexts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|&w| w != shared - std::mem::offset_of!(verbs_context, context));
        rt.count(Counter::Contexts, -1);
    }
    let handler = *rt.device_handler.lock().unwrap_or_else(|e| e.into_inner());
    if let (Some((f, arg)), true) = (handler, shared != 0) {
        // SAFETY: handler and arg were registered together by librdmacm through the vtable;
        // the removed context stays allocated (contexts of a removed device are never freed
        // while librdmacm may name them).
        unsafe { f(arg as *mut c_void, shared as *mut ibv_context) };
    }
    true
}

/// Bring the device back (fault `device_add`): it is listed again and `ibv_open_device` (and
/// librdmacm's `rdma_get_devices`) give a new context; removed contexts stay dead. False if it
/// was present.
pub(crate) fn add() -> bool {
    !PRESENT.swap(true, Ordering::AcqRel)
}

/// `ibv_context*` → wrapper.
///
/// # Safety
/// `ctx` must be a context returned by [`open_device`] and not yet closed.
pub(crate) unsafe fn ctx_wrap<'a>(ctx: *mut ibv_context) -> &'a CtxWrap {
    // SAFETY: contexts we hand out are `&vctx.context` inside a CtxWrap whose vctx is at offset 0;
    // the context lives in verbs_context at offset 320 (asserted in softrdma-abi).
    unsafe {
        &*((ctx as *mut u8).sub(core::mem::offset_of!(verbs_context, context)) as *const CtxWrap)
    }
}

pub(crate) unsafe extern "C" fn get_device_list(num: *mut c_int) -> *mut *mut ibv_device {
    if runtime::get().is_none() {
        set_errno(libc::ENOSYS);
        return std::ptr::null_mut();
    }
    let n = present() as usize;
    // SAFETY: allocating 2 pointers with malloc so that free_device_list (or the app) can free().
    let list =
        unsafe { libc::calloc(2, std::mem::size_of::<*mut ibv_device>()) } as *mut *mut ibv_device;
    if list.is_null() {
        set_errno(libc::ENOMEM);
        return list;
    }
    if n == 1 {
        // SAFETY: list has room for 2 entries; the second stays NULL (terminator).
        unsafe { *list = device() };
    }
    if !num.is_null() {
        // SAFETY: caller-provided out pointer.
        unsafe { *num = n as c_int };
    }
    list
}

pub(crate) unsafe extern "C" fn free_device_list(list: *mut *mut ibv_device) {
    // SAFETY: list came from get_device_list (calloc); devices themselves are never freed.
    unsafe { libc::free(list as *mut c_void) };
}

pub(crate) unsafe extern "C" fn get_device_name(dev: *mut ibv_device) -> *const c_char {
    if dev.is_null() {
        return std::ptr::null();
    }
    // SAFETY: dev points to a live ibv_device (ours).
    unsafe { (*dev).name.as_ptr() }
}

pub(crate) unsafe extern "C" fn get_device_guid(_dev: *mut ibv_device) -> u64 {
    NODE_GUID.to_be()
}

pub(crate) unsafe extern "C" fn get_device_index(_dev: *mut ibv_device) -> c_int {
    0
}

macro_rules! dummy {
    ($name:ident ( $($a:ident : $t:ty),* ) -> $r:ty = $v:expr) => {
        unsafe extern "C" fn $name($($a: $t),*) -> $r {
            $(let _ = $a;)*
            set_errno(libc::EOPNOTSUPP);
            $v
        }
    };
}
dummy!(d_alloc_mw(pd: *mut ibv_pd, t: ibv_mw_type) -> *mut ibv_mw = std::ptr::null_mut());
dummy!(d_bind_mw(qp: *mut ibv_qp, mw: *mut ibv_mw, b: *mut ibv_mw_bind) -> c_int = libc::EOPNOTSUPP);
dummy!(d_dealloc_mw(mw: *mut ibv_mw) -> c_int = libc::EOPNOTSUPP);
dummy!(d_close_xrcd(x: *mut ibv_xrcd) -> c_int = libc::EOPNOTSUPP);
dummy!(d_open_xrcd(c: *mut ibv_context, a: *mut ibv_xrcd_init_attr) -> *mut ibv_xrcd = std::ptr::null_mut());
dummy!(d_create_qp_ex(c: *mut ibv_context, a: *mut ibv_qp_init_attr_ex) -> *mut ibv_qp = std::ptr::null_mut());
dummy!(d_create_cq_ex(c: *mut ibv_context, a: *mut ibv_cq_init_attr_ex) -> *mut ibv_cq_ex = std::ptr::null_mut());
dummy!(d_create_srq_ex(c: *mut ibv_context, a: *mut ibv_srq_init_attr_ex) -> *mut ibv_srq = std::ptr::null_mut());
dummy!(d_get_srq_num(s: *mut ibv_srq, n: *mut u32) -> c_int = libc::EOPNOTSUPP);
dummy!(d_open_qp(c: *mut ibv_context, a: *mut ibv_qp_open_attr) -> *mut ibv_qp = std::ptr::null_mut());
dummy!(d_create_flow(q: *mut ibv_qp, a: *mut ibv_flow_attr) -> *mut ibv_flow = std::ptr::null_mut());
dummy!(d_destroy_flow(f: *mut ibv_flow) -> c_int = libc::EOPNOTSUPP);
dummy!(d_modify_cq(c: *mut ibv_cq, a: *mut ibv_modify_cq_attr) -> c_int = libc::EOPNOTSUPP);
dummy!(d_alloc_td(c: *mut ibv_context, a: *mut ibv_td_init_attr) -> *mut ibv_td = std::ptr::null_mut());
dummy!(d_dealloc_td(t: *mut ibv_td) -> c_int = libc::EOPNOTSUPP);
dummy!(d_alloc_pdom(c: *mut ibv_context, a: *mut ibv_parent_domain_init_attr) -> *mut ibv_pd = std::ptr::null_mut());
dummy!(d_create_wq(c: *mut ibv_context, a: *mut ibv_wq_init_attr) -> *mut ibv_wq = std::ptr::null_mut());
dummy!(d_modify_wq(w: *mut ibv_wq, a: *mut ibv_wq_attr) -> c_int = libc::EOPNOTSUPP);
dummy!(d_destroy_wq(w: *mut ibv_wq) -> c_int = libc::EOPNOTSUPP);
dummy!(d_create_rwq(c: *mut ibv_context, a: *mut ibv_rwq_ind_table_init_attr) -> *mut ibv_rwq_ind_table = std::ptr::null_mut());
dummy!(d_destroy_rwq(t: *mut ibv_rwq_ind_table) -> c_int = libc::EOPNOTSUPP);
dummy!(d_query_rt(c: *mut ibv_context, v: *mut ibv_values_ex) -> c_int = libc::EOPNOTSUPP);
dummy!(d_post_srq_ops(s: *mut ibv_srq, o: *mut ibv_ops_wr, b: *mut *mut ibv_ops_wr) -> c_int = libc::EOPNOTSUPP);
dummy!(d_alloc_dm(c: *mut ibv_context, a: *mut ibv_alloc_dm_attr) -> *mut ibv_dm = std::ptr::null_mut());
dummy!(d_free_dm(d: *mut ibv_dm) -> c_int = libc::EOPNOTSUPP);
dummy!(d_reg_dm_mr(p: *mut ibv_pd, d: *mut ibv_dm, o: u64, l: usize, a: u32) -> *mut ibv_mr = std::ptr::null_mut());
dummy!(d_advise_mr(p: *mut ibv_pd, a: ib_uverbs_advise_mr_advice, f: u32, s: *mut ibv_sge, n: u32) -> c_int = libc::EOPNOTSUPP);
dummy!(d_alloc_null_mr(p: *mut ibv_pd) -> *mut ibv_mr = std::ptr::null_mut());
dummy!(d_read_counters(c: *mut ibv_counters, v: *mut u64, n: u32, f: u32) -> c_int = libc::EOPNOTSUPP);
dummy!(d_attach_counters(c: *mut ibv_counters, a: *mut ibv_counter_attach_attr, f: *mut ibv_flow) -> c_int = libc::EOPNOTSUPP);
dummy!(d_create_counters(c: *mut ibv_context, a: *mut ibv_counters_init_attr) -> *mut ibv_counters = std::ptr::null_mut());
dummy!(d_destroy_counters(c: *mut ibv_counters) -> c_int = libc::EOPNOTSUPP);
dummy!(d_modify_esp(a: *mut ibv_flow_action, b: *mut ibv_flow_action_esp_attr) -> c_int = libc::EOPNOTSUPP);
dummy!(d_destroy_fa(a: *mut ibv_flow_action) -> c_int = libc::EOPNOTSUPP);
dummy!(d_create_esp(c: *mut ibv_context, a: *mut ibv_flow_action_esp_attr) -> *mut ibv_flow_action = std::ptr::null_mut());
dummy!(d_rate_limit(q: *mut ibv_qp, a: *mut ibv_qp_rate_limit_attr) -> c_int = libc::EOPNOTSUPP);

unsafe extern "C" fn compat_query_port(
    ctx: *mut ibv_context,
    port: u8,
    attr: *mut _compat_ibv_port_attr,
) -> c_int {
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { query_port_compat(ctx, port, attr as *mut ibv_port_attr) }
}

pub(crate) unsafe extern "C" fn open_device(dev: *mut ibv_device) -> *mut ibv_context {
    let Some(rt) = runtime::get() else {
        set_errno(libc::ENODEV);
        return std::ptr::null_mut();
    };
    if dev != device() || !present() {
        set_errno(libc::ENODEV);
        return std::ptr::null_mut();
    }
    let async_q = match events::AsyncQueue::new() {
        Ok(q) => q,
        Err(e) => {
            set_errno(e);
            return std::ptr::null_mut();
        }
    };
    let mut w = Box::new(CtxWrap {
        vctx: Default::default(),
        async_q,
        removed: AtomicBool::new(false),
    });
    let v = &mut w.vctx;
    v.query_port = Some(query_port_ex);
    v.query_device_ex = Some(query_device_ex);
    v.sz = std::mem::size_of::<verbs_context>();
    v.advise_mr = Some(d_advise_mr);
    v.alloc_null_mr = Some(d_alloc_null_mr);
    v.read_counters = Some(d_read_counters);
    v.attach_counters_point_flow = Some(d_attach_counters);
    v.create_counters = Some(d_create_counters);
    v.destroy_counters = Some(d_destroy_counters);
    v.reg_dm_mr = Some(d_reg_dm_mr);
    v.alloc_dm = Some(d_alloc_dm);
    v.free_dm = Some(d_free_dm);
    v.modify_flow_action_esp = Some(d_modify_esp);
    v.destroy_flow_action = Some(d_destroy_fa);
    v.create_flow_action_esp = Some(d_create_esp);
    v.modify_qp_rate_limit = Some(d_rate_limit);
    v.alloc_parent_domain = Some(d_alloc_pdom);
    v.dealloc_td = Some(d_dealloc_td);
    v.alloc_td = Some(d_alloc_td);
    v.modify_cq = Some(d_modify_cq);
    v.post_srq_ops = Some(d_post_srq_ops);
    v.destroy_rwq_ind_table = Some(d_destroy_rwq);
    v.create_rwq_ind_table = Some(d_create_rwq);
    v.destroy_wq = Some(d_destroy_wq);
    v.modify_wq = Some(d_modify_wq);
    v.create_wq = Some(d_create_wq);
    v.query_rt_values = Some(d_query_rt);
    v.create_cq_ex = Some(d_create_cq_ex);
    v.ibv_destroy_flow = Some(d_destroy_flow);
    v.ibv_create_flow = Some(d_create_flow);
    v.open_qp = Some(d_open_qp);
    v.create_qp_ex = Some(d_create_qp_ex);
    v.get_srq_num = Some(d_get_srq_num);
    v.create_srq_ex = Some(d_create_srq_ex);
    v.open_xrcd = Some(d_open_xrcd);
    v.close_xrcd = Some(d_close_xrcd);
    let c = &mut v.context;
    c.device = dev;
    c.ops._compat_query_device = Some(query_device);
    c.ops._compat_query_port = Some(compat_query_port);
    c.ops.alloc_mw = Some(d_alloc_mw);
    c.ops.bind_mw = Some(d_bind_mw);
    c.ops.dealloc_mw = Some(d_dealloc_mw);
    c.ops.poll_cq = Some(crate::cq::poll_cq);
    c.ops.req_notify_cq = Some(crate::cq::req_notify_cq);
    c.ops.post_srq_recv = Some(crate::srq::post_srq_recv);
    c.ops.post_send = Some(crate::qp::post_send);
    c.ops.post_recv = Some(crate::qp::post_recv);
    c.cmd_fd = -1;
    c.async_fd = w.async_q.read_fd();
    c.num_comp_vectors = 1;
    c.abi_compat = usize::MAX as *mut c_void;
    let w = Box::into_raw(w);
    // SAFETY: w is a fresh, uniquely owned allocation; the mutex is initialised in place once.
    let ctx = unsafe {
        libc::pthread_mutex_init(
            &mut (*w).vctx.context.mutex as *mut pthread_mutex_t as *mut libc::pthread_mutex_t,
            std::ptr::null(),
        );
        &mut (*w).vctx.context as *mut ibv_context
    };
    rt.contexts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(w as usize);
    rt.count(Counter::Contexts, 1);
    ctx
}

pub(crate) unsafe extern "C" fn close_device(ctx: *mut ibv_context) -> c_int {
    if ctx.is_null() {
        return libc::EINVAL;
    }
    let Some(rt) = runtime::get() else {
        return libc::EINVAL;
    };
    // SAFETY: ctx was returned by open_device.
    let w = unsafe { ctx_wrap(ctx) } as *const CtxWrap as *mut CtxWrap;
    {
        let mut g = rt.contexts.lock().unwrap_or_else(|e| e.into_inner());
        let Some(pos) = g.iter().position(|&p| p == w as usize) else {
            return libc::EINVAL;
        };
        g.remove(pos);
    }
    if *rt.shared_ctx.lock().unwrap_or_else(|e| e.into_inner()) == ctx as usize {
        // The shared context (librdmacm's) is never freed.
        return 0;
    }
    rt.count(Counter::Contexts, -1);
    // SAFETY: w was created by Box::into_raw in open_device and is no longer registered.
    drop(unsafe { Box::from_raw(w) });
    0
}

fn fill_device_attr(a: &mut ibv_device_attr) {
    *a = Default::default();
    copy_str(&mut a.fw_ver, "softrdma 0.1.0");
    a.node_guid = NODE_GUID.to_be();
    a.sys_image_guid = NODE_GUID.to_be();
    a.max_mr_size = u64::MAX;
    a.page_size_cap = 0xFFFF_F000;
    a.vendor_id = VENDOR_ID;
    a.vendor_part_id = 1;
    a.hw_ver = 1;
    a.max_qp = 65535;
    a.max_qp_wr = MAX_QP_WR as c_int;
    a.device_cap_flags = IBV_DEVICE_RC_RNR_NAK_GEN
        | IBV_DEVICE_SYS_IMAGE_GUID
        | IBV_DEVICE_PORT_ACTIVE_EVENT
        | IBV_DEVICE_CHANGE_PHY_PORT
        | IBV_DEVICE_CURR_QP_STATE_MOD
        | IBV_DEVICE_SHUTDOWN_PORT
        | IBV_DEVICE_RESIZE_MAX_WR
        | IBV_DEVICE_MEM_MGT_EXTENSIONS;
    a.max_sge = MAX_SGE as c_int;
    a.max_sge_rd = MAX_SGE as c_int;
    a.max_cq = 65535;
    a.max_cqe = MAX_CQE as c_int;
    a.max_mr = (softrdma_abi::fabric::MAX_MRS - 1) as c_int;
    a.max_pd = 1 << 20;
    a.max_qp_rd_atom = MAX_RD_ATOM as c_int;
    a.max_res_rd_atom = (MAX_RD_ATOM * 65535) as c_int;
    a.max_qp_init_rd_atom = MAX_RD_ATOM as c_int;
    a.atomic_cap = IBV_ATOMIC_HCA;
    a.max_ah = 65535;
    a.max_srq = (softrdma_abi::fabric::MAX_SRQS - 1) as c_int;
    a.max_srq_wr = MAX_SRQ_WR as c_int;
    a.max_srq_sge = MAX_SRQ_SGE as c_int;
    a.max_pkeys = 1;
    a.local_ca_ack_delay = 16;
    a.phys_port_cnt = 1;
}

pub(crate) unsafe extern "C" fn query_device(
    ctx: *mut ibv_context,
    attr: *mut ibv_device_attr,
) -> c_int {
    if ctx.is_null() || attr.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: ctx is a context of ours.
    if unsafe { gone(ctx) } {
        return libc::EIO;
    }
    // SAFETY: attr is the caller's writable ibv_device_attr.
    fill_device_attr(unsafe { &mut *attr });
    0
}

unsafe extern "C" fn query_device_ex(
    ctx: *mut ibv_context,
    input: *const ibv_query_device_ex_input,
    attr: *mut ibv_device_attr_ex,
    attr_size: usize,
) -> c_int {
    if ctx.is_null() || attr.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: ctx is a context of ours.
    if unsafe { gone(ctx) } {
        return libc::EIO;
    }
    // SAFETY: input, if non-NULL, is the caller's struct.
    if !input.is_null() && unsafe { (*input).comp_mask } != 0 {
        return libc::EINVAL;
    }
    let mut full: ibv_device_attr_ex = Default::default();
    fill_device_attr(&mut full.orig_attr);
    full.max_dm_size = 0;
    full.device_cap_flags_ex = full.orig_attr.device_cap_flags as u64;
    let n = attr_size.min(std::mem::size_of::<ibv_device_attr_ex>());
    // SAFETY: attr has at least attr_size writable bytes (caller contract); we copy min(size).
    unsafe { std::ptr::copy_nonoverlapping(&full as *const _ as *const u8, attr as *mut u8, n) };
    0
}

fn fill_port_attr(a: &mut ibv_port_attr) {
    *a = Default::default();
    let down = crate::faults::port_down();
    a.state = if down { IBV_PORT_DOWN } else { IBV_PORT_ACTIVE };
    a.max_mtu = IBV_MTU_4096;
    a.active_mtu = IBV_MTU_4096;
    a.gid_tbl_len = 1;
    a.port_cap_flags = IBV_PORT_CM_SUP | IBV_PORT_SYS_IMAGE_GUID_SUP;
    a.max_msg_sz = 0x8000_0000;
    a.pkey_tbl_len = 1;
    a.lid = PORT_LID;
    a.sm_lid = PORT_LID;
    a.lmc = 0;
    a.max_vl_num = 1;
    a.subnet_timeout = 18;
    a.active_width = 2;
    a.active_speed = 32;
    a.phys_state = if down { 3 } else { 5 };
    a.link_layer = IBV_LINK_LAYER_INFINIBAND as u8;
}

unsafe extern "C" fn query_port_ex(
    ctx: *mut ibv_context,
    port: u8,
    attr: *mut ibv_port_attr,
    len: usize,
) -> c_int {
    if ctx.is_null() || attr.is_null() || port != 1 {
        return libc::EINVAL;
    }
    // SAFETY: ctx is a context of ours.
    if unsafe { gone(ctx) } {
        return libc::EIO;
    }
    let mut full = ibv_port_attr::default();
    fill_port_attr(&mut full);
    let n = len.min(std::mem::size_of::<ibv_port_attr>());
    // SAFETY: attr has `len` writable bytes per the verbs_context contract.
    unsafe { std::ptr::copy_nonoverlapping(&full as *const _ as *const u8, attr as *mut u8, n) };
    0
}

/// Exported `ibv_query_port@@IBVERBS_1.1`: fills the 48-byte compat layout.
pub(crate) unsafe extern "C" fn query_port_compat(
    ctx: *mut ibv_context,
    port: u8,
    attr: *mut ibv_port_attr,
) -> c_int {
    // SAFETY: forwarding; the compat struct is 48 bytes.
    unsafe {
        query_port_ex(
            ctx, port, attr,
            48, /* sizeof(struct _compat_ibv_port_attr): ibv_port_attr without port_cap_flags2 and padding */
        )
    }
}

fn port_gid() -> ibv_gid {
    let mut g = ibv_gid::default();
    let mut raw = [0u8; 16];
    raw[0] = 0xfe;
    raw[1] = 0x80;
    raw[8..].copy_from_slice(&NODE_GUID.to_be_bytes());
    g.raw = raw;
    g
}

pub(crate) unsafe extern "C" fn query_gid(
    ctx: *mut ibv_context,
    port: u8,
    index: c_int,
    gid: *mut ibv_gid,
) -> c_int {
    if ctx.is_null() || gid.is_null() || port != 1 || index != 0 {
        set_errno(libc::EINVAL);
        return -1;
    }
    // SAFETY: ctx is a context of ours.
    if unsafe { gone(ctx) } {
        set_errno(libc::EIO);
        return -1;
    }
    // SAFETY: gid is the caller's out pointer.
    unsafe { *gid = port_gid() };
    0
}

pub(crate) unsafe extern "C" fn query_gid_ex(
    ctx: *mut ibv_context,
    port: u32,
    index: u32,
    entry: *mut ibv_gid_entry,
    _flags: u32,
    entry_size: usize,
) -> c_int {
    if ctx.is_null() || entry.is_null() || port != 1 || index != 0 {
        return libc::EINVAL;
    }
    // SAFETY: ctx is a context of ours.
    if unsafe { gone(ctx) } {
        return libc::EIO;
    }
    let mut e = ibv_gid_entry {
        gid: port_gid(),
        gid_index: 0,
        port_num: 1,
        gid_type: 0,
        ndev_ifindex: 0,
    };
    e.gid_type = IBV_GID_TYPE_IB;
    let n = entry_size.min(std::mem::size_of::<ibv_gid_entry>());
    // SAFETY: entry has entry_size writable bytes.
    unsafe { std::ptr::copy_nonoverlapping(&e as *const _ as *const u8, entry as *mut u8, n) };
    0
}

pub(crate) unsafe extern "C" fn query_gid_table(
    ctx: *mut ibv_context,
    entries: *mut ibv_gid_entry,
    max: usize,
    flags: u32,
    entry_size: usize,
) -> isize {
    if max == 0 {
        return 0;
    }
    // SAFETY: forwarding to query_gid_ex with the first entry.
    let r = unsafe { query_gid_ex(ctx, 1, 0, entries, flags, entry_size) };
    if r != 0 {
        return -(r as isize);
    }
    1
}

pub(crate) unsafe extern "C" fn query_pkey(
    ctx: *mut ibv_context,
    port: u8,
    index: c_int,
    pkey: *mut u16,
) -> c_int {
    if ctx.is_null() || pkey.is_null() || port != 1 || index != 0 {
        set_errno(libc::EINVAL);
        return -1;
    }
    // SAFETY: ctx is a context of ours.
    if unsafe { gone(ctx) } {
        set_errno(libc::EIO);
        return -1;
    }
    // SAFETY: pkey is the caller's out pointer.
    unsafe { *pkey = 0xffffu16.to_be() };
    0
}

pub(crate) unsafe extern "C" fn get_pkey_index(
    _ctx: *mut ibv_context,
    port: u8,
    pkey: u16,
) -> c_int {
    if port == 1 && u16::from_be(pkey) == 0xffff {
        0
    } else {
        set_errno(libc::ENOENT);
        -1
    }
}

pub(crate) unsafe extern "C" fn query_gid_type(
    _ctx: *mut ibv_context,
    port: u8,
    index: u32,
    ty: *mut u32,
) -> c_int {
    if port != 1 || index != 0 || ty.is_null() {
        set_errno(libc::EINVAL);
        return -1;
    }
    // SAFETY: ty is the caller's out pointer (enum ibv_gid_type_sysfs).
    unsafe { *ty = 0 };
    0
}

pub(crate) unsafe extern "C" fn read_sysfs_file(
    _dir: *const c_char,
    _file: *const c_char,
    _buf: *mut c_char,
    _size: usize,
) -> c_int {
    set_errno(libc::ENOENT);
    -1
}

pub(crate) unsafe extern "C" fn read_ibdev_sysfs_file(
    _buf: *mut c_char,
    _size: usize,
    _sysfs: *mut c_void,
    _fnfmt: *const c_char,
) -> c_int {
    set_errno(libc::ENOENT);
    -1
}

pub(crate) unsafe extern "C" fn fork_init() -> c_int {
    0
}

pub(crate) unsafe extern "C" fn is_fork_initialized() -> c_int {
    // IBV_FORK_UNNEEDED: no pinning, fork is always safe.
    2
}

pub(crate) unsafe extern "C" fn dontfork_range(_base: *mut c_void, _size: usize) -> c_int {
    0
}

pub(crate) unsafe extern "C" fn dofork_range(_base: *mut c_void, _size: usize) -> c_int {
    0
}
