//! One SPDK memory map per RDMA device, so every buffer SPDK hands out
//! (iobuf, `spdk_dma_malloc`) has an lkey on the device's protection domain.
//!
//! SPDK calls the map's notify callback for every region registered with
//! `spdk_mem_register` — the existing ones when the map is made, later ones as
//! they come, on any thread, under its global memory-map mutex. Each region
//! becomes one `ibv_reg_mr` with local write access (upstream registers its
//! target maps the same way, rdma.c `create_ib_device`); the map's translation
//! of the region is a pointer to our [`Mr`]. A buffer is translated on the I/O
//! path with the lock-free `spdk_mem_map_translate`.

use std::ffi::{c_int, c_void};

use super::api::api;
use super::guard::guard;
use super::sys;
use crate::verbs::{Access, Mr, Pd, Sge};

/// What the notify callback needs: the PD regions are registered on.
struct MapCtx {
    pd: Pd,
    device: String,
}

/// A device's memory map (transport-wide; freed with the transport).
pub(crate) struct DeviceMemMap {
    map: *mut sys::spdk_mem_map,
    ctx: *mut MapCtx,
}

// SAFETY: the map is SPDK's, which serialises its changes under its own
// mutex and translates lock-free from any thread; `ctx` is only read by the
// notify callback (under that mutex) and freed after the map.
unsafe impl Send for DeviceMemMap {}
// SAFETY: see Send: shared use is `translate`, which SPDK allows concurrently.
unsafe impl Sync for DeviceMemMap {}

/// Two adjacent map entries are one translation only when they name the same
/// MR (upstream `rdma_check_contiguous_entries`).
unsafe extern "C" fn are_contiguous(a: u64, b: u64) -> c_int {
    c_int::from(a == b)
}

/// SPDK's notify callback: registers or deregisters one region.
unsafe extern "C" fn notify(
    cb_ctx: *mut c_void,
    map: *mut sys::spdk_mem_map,
    action: sys::spdk_mem_map_notify_action,
    vaddr: *mut c_void,
    size: usize,
) -> c_int {
    guard("mem_map_notify", -libc::EIO, || {
        let Some(api) = api() else {
            return -libc::EIO;
        };
        // SAFETY: `cb_ctx` is the `MapCtx` this map was allocated with
        // (`DeviceMemMap::new`); it is freed only after the map.
        let ctx = unsafe { &*cb_ctx.cast::<MapCtx>() };
        let addr = vaddr as u64;
        if action == sys::SPDK_MEM_MAP_NOTIFY_REGISTER {
            // SAFETY: SPDK registers memory it keeps mapped until it
            // unregisters it, which reaches this callback first (the MR is
            // dropped there). Only the NIC accesses it through the MR.
            let mr =
                match unsafe { Mr::register_raw(&ctx.pd, vaddr.cast(), size, Access::LOCAL_WRITE) }
                {
                    Ok(mr) => mr,
                    Err(e) => {
                        tracing::error!(
                        "RDMA_RS: registering SPDK memory {addr:#x}+{size:#x} on device {}: {e}",
                        ctx.device
                    );
                        return -libc::ENOMEM;
                    }
                };
            let mr = Box::into_raw(Box::new(mr));
            // SAFETY: `map` is the map SPDK is notifying about; the range is
            // the one being registered.
            let rc = unsafe { api.spdk_mem_map_set_translation(map, addr, size as u64, mr as u64) };
            if rc != 0 {
                // SAFETY: not stored anywhere: ours alone to free.
                drop(unsafe { Box::from_raw(mr) });
            }
            rc
        } else {
            // SAFETY: lock-free lookup on the map being notified; `size` may
            // be NULL.
            let t = unsafe { api.spdk_mem_map_translate(map, addr, std::ptr::null_mut()) };
            if t != 0 {
                // SAFETY: every non-zero translation of this map is an MR box
                // made above, stored once per registered region.
                drop(unsafe { Box::from_raw(t as *mut Mr) });
            }
            // SAFETY: as above.
            unsafe { api.spdk_mem_map_clear_translation(map, addr, size as u64) }
        }
    })
}

static MAP_OPS: sys::spdk_mem_map_ops = sys::spdk_mem_map_ops {
    notify_cb: Some(notify),
    are_contiguous: Some(are_contiguous),
};

impl DeviceMemMap {
    /// A map registering SPDK's memory on `pd` (device `device`).
    pub(crate) fn new(pd: &Pd, device: &str) -> Option<DeviceMemMap> {
        let api = api()?;
        let ctx = Box::into_raw(Box::new(MapCtx {
            pd: pd.clone(),
            device: device.to_string(),
        }));
        // SAFETY: the ops table is static; `ctx` lives until after
        // `spdk_mem_map_free` (Drop).
        let map = unsafe { api.spdk_mem_map_alloc(0, &MAP_OPS, ctx.cast()) };
        if map.is_null() {
            // SAFETY: not shared with SPDK (the allocation failed).
            drop(unsafe { Box::from_raw(ctx) });
            tracing::error!("RDMA_RS: spdk_mem_map_alloc for device {device} failed");
            return None;
        }
        Some(DeviceMemMap { map, ctx })
    }

    /// An SGE for `len` bytes at `addr`, if one registered region covers them
    /// all (upstream `spdk_rdma_utils_get_translation`).
    #[inline]
    pub(crate) fn sge(&self, addr: u64, len: u32) -> Option<Sge> {
        let api = api()?;
        let mut size = u64::from(len);
        // SAFETY: a live map; lock-free lookup.
        let t = unsafe { api.spdk_mem_map_translate(self.map, addr, &mut size) };
        if t == 0 || size < u64::from(len) {
            return None;
        }
        // SAFETY: non-zero translations are MR boxes alive while registered.
        let lkey = unsafe { (*(t as *const Mr)).lkey() };
        // SAFETY: the range lies in a region registered with `lkey` (the map
        // said so, `size` covers `len`). It is an SPDK buffer the generic
        // layer gave this request; it stays allocated and untouched by Rust
        // references until the request's buffers are released, which the
        // engine does only after every WR naming them completed.
        Some(unsafe { Sge::from_raw(addr, len, lkey) })
    }
}

impl Drop for DeviceMemMap {
    fn drop(&mut self) {
        if let Some(api) = api() {
            // SAFETY: our map; SPDK calls `notify` UNREGISTER for every
            // region, which drops the MRs, then frees it and NULLs the pointer.
            unsafe { api.spdk_mem_map_free(&mut self.map) };
        }
        // SAFETY: the map that used it is gone.
        drop(unsafe { Box::from_raw(self.ctx) });
    }
}
