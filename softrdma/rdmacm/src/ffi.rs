//! The libibverbs functions this library calls (public API, bound to softrdma's
//! libibverbs.so.1 at run time), the private vtable, errno and logging helpers.

use softrdma_abi::private::{SoftrdmaPrivateV1, SOFTRDMA_PRIVATE_ABI_VERSION};
use softrdma_abi::verbs::*;
use std::ffi::{c_int, c_void, CString};
use std::sync::OnceLock;

#[link(name = "ibverbs")]
extern "C" {
    pub fn ibv_get_device_list(num: *mut c_int) -> *mut *mut ibv_device;
    pub fn ibv_free_device_list(list: *mut *mut ibv_device);
    pub fn ibv_open_device(dev: *mut ibv_device) -> *mut ibv_context;
    pub fn ibv_query_device(ctx: *mut ibv_context, attr: *mut ibv_device_attr) -> c_int;
    /// The exported compat entry point; it fills the first 48 bytes of `ibv_port_attr`.
    pub fn ibv_query_port(ctx: *mut ibv_context, port: u8, attr: *mut ibv_port_attr) -> c_int;
    pub fn ibv_query_gid(ctx: *mut ibv_context, port: u8, index: c_int, gid: *mut ibv_gid)
        -> c_int;
    pub fn ibv_alloc_pd(ctx: *mut ibv_context) -> *mut ibv_pd;
    pub fn ibv_dealloc_pd(pd: *mut ibv_pd) -> c_int;
    pub fn ibv_create_qp(pd: *mut ibv_pd, attr: *mut ibv_qp_init_attr) -> *mut ibv_qp;
    pub fn ibv_destroy_qp(qp: *mut ibv_qp) -> c_int;
    pub fn ibv_modify_qp(qp: *mut ibv_qp, attr: *mut ibv_qp_attr, mask: c_int) -> c_int;
    pub fn ibv_create_cq(
        ctx: *mut ibv_context,
        cqe: c_int,
        cq_context: *mut c_void,
        channel: *mut ibv_comp_channel,
        comp_vector: c_int,
    ) -> *mut ibv_cq;
    pub fn ibv_destroy_cq(cq: *mut ibv_cq) -> c_int;
    pub fn ibv_create_comp_channel(ctx: *mut ibv_context) -> *mut ibv_comp_channel;
    pub fn ibv_destroy_comp_channel(ch: *mut ibv_comp_channel) -> c_int;
    pub fn ibv_create_srq(pd: *mut ibv_pd, attr: *mut ibv_srq_init_attr) -> *mut ibv_srq;
    pub fn ibv_destroy_srq(srq: *mut ibv_srq) -> c_int;
}

/// Set the calling thread's errno.
pub fn set_errno(e: c_int) {
    // SAFETY: __errno_location returns the calling thread's errno slot, valid for the
    // thread's lifetime.
    unsafe { *libc::__errno_location() = e };
}

/// The calling thread's errno.
pub fn errno() -> c_int {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// librdmacm's `ERR(e)`: set errno and return -1.
pub fn err(e: c_int) -> c_int {
    set_errno(e);
    -1
}

/// Log one line to stderr (through libibverbs' logger when available).
pub fn log(msg: &str) {
    if let Some(p) = private() {
        if let Ok(c) = CString::new(format!("rdmacm: {msg}")) {
            // SAFETY: `log` is a non-NULL function of the checked vtable; the string is
            // NUL-terminated and outlives the call.
            unsafe { (p.log)(c.as_ptr()) };
            return;
        }
    }
    eprintln!("softrdma: rdmacm: {msg}");
}

/// Debug logging, on when `SOFTRDMA_CM_DEBUG` is set.
pub fn debug_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("SOFTRDMA_CM_DEBUG").is_some_and(|v| v != "0"))
}

/// Log only when `SOFTRDMA_CM_DEBUG` is set.
macro_rules! debug {
    ($($t:tt)*) => {
        if $crate::ffi::debug_enabled() {
            $crate::ffi::log(&format!($($t)*));
        }
    };
}
pub(crate) use debug;

/// A `&'static` view of the private vtable.
pub struct Private(&'static SoftrdmaPrivateV1);

impl std::ops::Deref for Private {
    type Target = SoftrdmaPrivateV1;
    fn deref(&self) -> &SoftrdmaPrivateV1 {
        self.0
    }
}

/// softrdma's libibverbs private vtable, if the loaded libibverbs is softrdma's.
pub fn private() -> Option<Private> {
    static VT: OnceLock<usize> = OnceLock::new();
    let addr = *VT.get_or_init(|| {
        let name = c"softrdma_private_v1";
        // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name has no preconditions.
        let sym = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
        if sym.is_null() {
            return 0;
        }
        // SAFETY: softrdma's libibverbs exports `softrdma_private_v1` as
        // `extern "C" fn() -> *const SoftrdmaPrivateV1` (softrdma_abi::private).
        let f: extern "C" fn() -> *const SoftrdmaPrivateV1 = unsafe { std::mem::transmute(sym) };
        let vt = f();
        if vt.is_null() {
            return 0;
        }
        // SAFETY: non-NULL pointer to a static vtable; abi_version and size are its first
        // two u32 fields in every version.
        let (ver, size) = unsafe { ((*vt).abi_version, (*vt).size) };
        if ver != SOFTRDMA_PRIVATE_ABI_VERSION
            || (size as usize) < std::mem::size_of::<SoftrdmaPrivateV1>()
        {
            eprintln!(
                "softrdma: rdmacm: libibverbs private vtable version {ver} size {size} unsupported; \
                 running without it"
            );
            return 0;
        }
        vt as usize
    });
    if addr == 0 {
        None
    } else {
        // SAFETY: the vtable is a static inside libibverbs, which is never unloaded
        // (it is our DT_NEEDED); checked above.
        Some(Private(unsafe { &*(addr as *const SoftrdmaPrivateV1) }))
    }
}

/// Print `what: why` on stderr once per `what` (unimplemented entry points).
pub fn note_once(what: &'static str, why: &str) {
    static SEEN: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut g = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    if !g.contains(&what) {
        g.push(what);
        drop(g);
        eprintln!("softrdma: rdmacm: {what}: {why}");
    }
}
