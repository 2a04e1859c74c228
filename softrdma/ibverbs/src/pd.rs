//! Protection domains.

use crate::runtime;
use crate::util::set_errno;
use softrdma_abi::fabric::Counter;
use softrdma_abi::verbs::*;
use std::ffi::c_int;
use std::sync::atomic::Ordering;

/// Private wrapper; `pd` must stay first.
#[repr(C)]
pub(crate) struct PdWrap {
    pub pd: ibv_pd,
    /// Fabric-unique id, stored in MR and QP records for PD checks.
    pub id: u32,
}

/// The fabric id of a PD.
///
/// # Safety
/// `pd` must be a live PD of ours.
pub(crate) unsafe fn pd_id(pd: *mut ibv_pd) -> u32 {
    // SAFETY: every ibv_pd we hand out is the first field of a PdWrap.
    unsafe { (*(pd as *const PdWrap)).id }
}

pub(crate) unsafe extern "C" fn alloc_pd(ctx: *mut ibv_context) -> *mut ibv_pd {
    let Some(rt) = runtime::get() else {
        set_errno(libc::ENODEV);
        return std::ptr::null_mut();
    };
    if ctx.is_null() {
        set_errno(libc::EINVAL);
        return std::ptr::null_mut();
    }
    // SAFETY: ctx is a context of ours.
    if unsafe { crate::device::gone(ctx) } {
        set_errno(libc::EIO);
        return std::ptr::null_mut();
    }
    let id = rt
        .fabric
        .header()
        .next_pd
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_add(1)
        .max(1);
    let w = Box::new(PdWrap {
        pd: ibv_pd {
            context: ctx,
            handle: id,
        },
        id,
    });
    rt.count(Counter::Pds, 1);
    Box::into_raw(w) as *mut ibv_pd
}

pub(crate) unsafe extern "C" fn dealloc_pd(pd: *mut ibv_pd) -> c_int {
    if pd.is_null() {
        return libc::EINVAL;
    }
    if let Some(rt) = runtime::get() {
        rt.count(Counter::Pds, -1);
    }
    // SAFETY: pd was created by alloc_pd as a Box<PdWrap>.
    drop(unsafe { Box::from_raw(pd as *mut PdWrap) });
    0
}
