//! The private vtable for softrdma's librdmacm (`softrdma_private_v1@@SOFTRDMA_PRIVATE_1`).

use crate::runtime;
use softrdma_abi::fabric::{self, Counter};
use softrdma_abi::private::{
    AddrChangeHandler, CmDropHandler, DeviceHandler, SoftrdmaPrivateV1,
    SOFTRDMA_PRIVATE_ABI_VERSION,
};
use softrdma_abi::verbs::ibv_context;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::atomic::Ordering;

unsafe extern "C" fn shared_context() -> *mut ibv_context {
    let Some(rt) = runtime::get() else {
        return std::ptr::null_mut();
    };
    let mut g = rt.shared_ctx.lock().unwrap_or_else(|e| e.into_inner());
    if *g == 0 && crate::device::present() {
        // SAFETY: opening our own device.
        let c = unsafe { crate::device::open_device(crate::device::device()) };
        *g = c as usize;
    }
    *g as *mut ibv_context
}

unsafe extern "C" fn set_cm_drop_handler(h: Option<CmDropHandler>, arg: *mut c_void) {
    if let Some(rt) = runtime::get() {
        *rt.cm_drop.lock().unwrap_or_else(|e| e.into_inner()) = h.map(|f| (f, arg as usize));
    }
}

unsafe extern "C" fn set_device_handler(h: Option<DeviceHandler>, arg: *mut c_void) {
    if let Some(rt) = runtime::get() {
        *rt.device_handler.lock().unwrap_or_else(|e| e.into_inner()) = h.map(|f| (f, arg as usize));
    }
}

unsafe extern "C" fn set_addr_change_handler(h: Option<AddrChangeHandler>, arg: *mut c_void) {
    if let Some(rt) = runtime::get() {
        *rt.addr_change.lock().unwrap_or_else(|e| e.into_inner()) = h.map(|f| (f, arg as usize));
    }
}

unsafe extern "C" fn cm_should_drop(qpn: u32) -> c_int {
    runtime::get()
        .map(|rt| rt.faults.cm_should_drop(qpn) as c_int)
        .unwrap_or(0)
}

unsafe extern "C" fn counter_add(counter: u32, delta: i64) {
    if let (Some(rt), Some(&c)) = (runtime::get(), Counter::ALL.get(counter as usize)) {
        rt.count(c, delta);
    }
}

unsafe extern "C" fn log(msg: *const c_char) {
    if !msg.is_null() {
        // SAFETY: caller passes a NUL-terminated string.
        crate::log::warn(&unsafe { CStr::from_ptr(msg) }.to_string_lossy());
    }
}

unsafe extern "C" fn qp_owner_pid(qpn: u32) -> i32 {
    let Some(rt) = runtime::get() else { return 0 };
    let rec = rt.fabric.qp((qpn & 0xffff) as usize);
    if qpn == 0 || rec.qpn.load(Ordering::Acquire) != qpn {
        return 0;
    }
    rec.owner.load(Ordering::Acquire) as i32
}

unsafe extern "C" fn qp_alive(qpn: u32) -> c_int {
    // SAFETY: plain call.
    let pid = unsafe { qp_owner_pid(qpn) };
    (pid != 0 && fabric::pid_alive(pid as u32)) as c_int
}

unsafe extern "C" fn note_cm_fault(qpn: u32, what: *const c_char) {
    let w = if what.is_null() {
        "cm".into()
    } else {
        // SAFETY: caller passes a NUL-terminated string.
        unsafe { CStr::from_ptr(what) }
            .to_string_lossy()
            .into_owned()
    };
    crate::log::fault(&format!("kind={w} qp={qpn:#x} wr_id=-"));
    if let Some(rt) = runtime::get() {
        rt.count(Counter::FaultsInjected, 1);
    }
}

static VTABLE: SoftrdmaPrivateV1 = SoftrdmaPrivateV1 {
    abi_version: SOFTRDMA_PRIVATE_ABI_VERSION,
    size: std::mem::size_of::<SoftrdmaPrivateV1>() as u32,
    shared_context,
    set_cm_drop_handler,
    cm_should_drop,
    counter_add,
    log,
    qp_alive,
    qp_owner_pid,
    note_cm_fault,
    set_device_handler,
    set_addr_change_handler,
};

/// Exported as `softrdma_private_v1@@SOFTRDMA_PRIVATE_1`.
pub(crate) extern "C" fn softrdma_private_v1() -> *const SoftrdmaPrivateV1 {
    &VTABLE
}
