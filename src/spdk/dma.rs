//! The poll groups' receive and completion buffers in SPDK's DMA memory.
//!
//! Upstream allocates its commands, completions and in-capsule buffers with
//! `spdk_zmalloc(…, 0x1000, NULL, SPDK_ENV_NUMA_ID_ANY, SPDK_MALLOC_DMA)`;
//! ours come from the same place (hugepages when `nvmf_tgt` has them, which
//! also lets softrdma's peers reach them with `memcpy` instead of a
//! `process_vm_writev` per receive).

use std::ptr::NonNull;

use super::api::api;
use super::sys;
use crate::verbs::DmaAllocator;

/// `spdk_zmalloc` / `spdk_free`.
pub(crate) struct SpdkDma;

// SAFETY: `spdk_zmalloc` returns null or `size` zeroed bytes aligned to
// `align`, valid until `spdk_free`; `free` hands back only such pointers.
unsafe impl DmaAllocator for SpdkDma {
    fn alloc(&self, len: usize, align: usize) -> Option<NonNull<u8>> {
        let api = api()?;
        // SAFETY: plain allocation call; the null physical-address pointer
        // is allowed (the argument is unused by SPDK).
        let p = unsafe {
            api.spdk_zmalloc(
                len,
                align,
                std::ptr::null_mut(),
                sys::SPDK_ENV_NUMA_ID_ANY,
                sys::SPDK_MALLOC_DMA,
            )
        };
        NonNull::new(p.cast())
    }

    unsafe fn free(&self, p: NonNull<u8>, _len: usize, _align: usize) {
        // `alloc` succeeded, so the API was resolved.
        if let Some(api) = api() {
            // SAFETY: the caller passes a pointer `spdk_zmalloc` returned,
            // once.
            unsafe { api.spdk_free(p.as_ptr().cast()) };
        }
    }
}
