//! The private C ABI between softrdma's libibverbs (which owns all state) and softrdma's
//! librdmacm. libibverbs exports `softrdma_private_v1@@SOFTRDMA_PRIVATE_1`, a function returning
//! a pointer to a static [`SoftrdmaPrivateV1`]. librdmacm looks it up with `dlsym` and must check
//! `abi_version == SOFTRDMA_PRIVATE_ABI_VERSION` and `size >= size_of::<SoftrdmaPrivateV1>()`.

use crate::verbs::ibv_context;
use core::ffi::{c_char, c_int, c_void};

/// Version of [`SoftrdmaPrivateV1`]; bumped on any incompatible change.
pub const SOFTRDMA_PRIVATE_ABI_VERSION: u32 = 1;

/// Name of the exported accessor function.
pub const SOFTRDMA_PRIVATE_SYMBOL: &str = "softrdma_private_v1";

/// Callback invoked (from libibverbs' event thread) when a "drop the CM connection" fault fires.
/// `qpn` is the QP number the fault targets, or 0 for "every connection".
pub type CmDropHandler = unsafe extern "C" fn(arg: *mut c_void, qpn: u32);

/// Callback invoked (from libibverbs' event thread) when the device is removed (fault
/// `device_remove`): `removed_ctx` is the shared context that went away; librdmacm reports
/// `RDMA_CM_EVENT_DEVICE_REMOVAL` on the ids bound to it and drops it from its device list.
pub type DeviceHandler = unsafe extern "C" fn(arg: *mut c_void, removed_ctx: *mut ibv_context);

/// Callback invoked (from libibverbs' event thread) for the control command `addr_change`:
/// librdmacm reports `RDMA_CM_EVENT_ADDR_CHANGE` on every listening id, as the kernel does when
/// the address of the netdev under a listener changes. Returns how many ids got the event.
pub type AddrChangeHandler = unsafe extern "C" fn(arg: *mut c_void) -> c_int;

/// Index of a counter in a node's counter array (see [`crate::fabric::Counter`]).
pub type CounterIndex = u32;

/// The vtable. All function pointers are always non-NULL.
#[repr(C)]
pub struct SoftrdmaPrivateV1 {
    /// Equals [`SOFTRDMA_PRIVATE_ABI_VERSION`].
    pub abi_version: u32,
    /// `size_of::<SoftrdmaPrivateV1>()` as seen by libibverbs.
    pub size: u32,
    /// The process-wide `ibv_context` for the softrdma device (opened once, never closed; a new
    /// one after the device was removed and came back; NULL while it is removed). This is
    /// what `rdma_get_devices()` must return and what `cm_id->verbs` must point to.
    pub shared_context: unsafe extern "C" fn() -> *mut ibv_context,
    /// Register the handler for the "drop CM connection" fault (kind f). Replaces any previous one.
    pub set_cm_drop_handler: unsafe extern "C" fn(handler: Option<CmDropHandler>, arg: *mut c_void),
    /// Returns 1 when a random / scheduled "drop CM connection" fault should fire now for `qpn`
    /// (consumes the fault and logs it), 0 otherwise. librdmacm may call this at each CM step.
    pub cm_should_drop: unsafe extern "C" fn(qpn: u32) -> c_int,
    /// Adds `delta` to one of this process's counters in the fabric segment.
    pub counter_add: unsafe extern "C" fn(counter: CounterIndex, delta: i64),
    /// Log one line to stderr with the "softrdma:" prefix (NUL-terminated message).
    pub log: unsafe extern "C" fn(msg: *const c_char),
    /// Returns 1 if the process owning QP number `qpn` is alive and the QP exists, 0 otherwise.
    pub qp_alive: unsafe extern "C" fn(qpn: u32) -> c_int,
    /// Pid of the process owning QP `qpn`, or 0 if unknown.
    pub qp_owner_pid: unsafe extern "C" fn(qpn: u32) -> i32,
    /// Record that a fault was injected on the CM side (bumps the counter and logs it).
    pub note_cm_fault: unsafe extern "C" fn(qpn: u32, what: *const c_char),
    /// Register the device-removal handler. Replaces any previous one. While the device is
    /// removed, `shared_context` returns NULL; once it is back, it opens a new context.
    pub set_device_handler: unsafe extern "C" fn(handler: Option<DeviceHandler>, arg: *mut c_void),
    /// Register the handler of the control command `addr_change`. Replaces any previous one.
    pub set_addr_change_handler:
        unsafe extern "C" fn(handler: Option<AddrChangeHandler>, arg: *mut c_void),
}
