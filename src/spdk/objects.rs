//! The objects SPDK holds pointers to: the transport and its poll groups.
//!
//! Each embeds SPDK's struct as its first field (`#[repr(C)]`), as upstream
//! does, so the pointer SPDK gets is the pointer to ours. A magic number
//! checks the way back: a pointer that is not ours is refused and logged,
//! never dereferenced as ours.

use super::sys;
use crate::transport::TransportOptions;

const TRANSPORT_MAGIC: u64 = 0x5244_4d41_5f52_5354; // "RDMA_RST"
const POLL_GROUP_MAGIC: u64 = 0x5244_4d41_5f52_5047; // "RDMA_RPG"

/// Our transport; SPDK sees `&base`.
#[repr(C)]
pub(crate) struct RsTransport {
    base: sys::spdk_nvmf_transport,
    magic: u64,
    /// The options as validated by `create`.
    pub(crate) options: TransportOptions,
}

impl RsTransport {
    /// A new transport on the heap, as the pointer SPDK keeps.
    pub(crate) fn into_raw(options: TransportOptions) -> *mut sys::spdk_nvmf_transport {
        let t = Box::new(RsTransport {
            base: Default::default(),
            magic: TRANSPORT_MAGIC,
            options,
        });
        Box::into_raw(t).cast()
    }

    /// The transport behind SPDK's pointer, or `None` when it is not one of ours.
    ///
    /// # Safety
    /// `p` must be NULL or a `spdk_nvmf_transport` SPDK handed to one of our
    /// ops, not yet destroyed, with no other live reference to it.
    pub(crate) unsafe fn from_raw<'a>(
        p: *mut sys::spdk_nvmf_transport,
    ) -> Option<&'a mut RsTransport> {
        if p.is_null() {
            return None;
        }
        let t = p.cast::<RsTransport>();
        // SAFETY: SPDK only hands our ops transports our `create` returned,
        // which are `RsTransport`s (base first, repr(C)); the magic check
        // catches anything else before it is used as ours.
        let t = unsafe { &mut *t };
        (t.magic == TRANSPORT_MAGIC).then_some(t)
    }

    /// Frees a transport made by [`RsTransport::into_raw`].
    ///
    /// # Safety
    /// `p` must come from [`RsTransport::into_raw`] and not be used again.
    pub(crate) unsafe fn free(p: *mut sys::spdk_nvmf_transport) {
        // SAFETY: `p` is the Box pointer `into_raw` leaked (caller's contract).
        let mut t = unsafe { Box::from_raw(p.cast::<RsTransport>()) };
        t.magic = 0;
    }
}

/// A poll group of ours. Until the data path lands it holds no qpair (the
/// transport cannot listen), so it only has to exist for SPDK to add the
/// transport to its poll groups.
#[repr(C)]
pub(crate) struct RsPollGroup {
    base: sys::spdk_nvmf_transport_poll_group,
    magic: u64,
}

impl RsPollGroup {
    /// A new, empty poll group, as the pointer SPDK keeps.
    pub(crate) fn into_raw() -> *mut sys::spdk_nvmf_transport_poll_group {
        Box::into_raw(Box::new(RsPollGroup {
            base: Default::default(),
            magic: POLL_GROUP_MAGIC,
        }))
        .cast()
    }

    /// Whether `p` is one of ours.
    ///
    /// # Safety
    /// `p` must be NULL or a poll group SPDK handed to one of our ops, not yet
    /// destroyed.
    pub(crate) unsafe fn is_ours(p: *mut sys::spdk_nvmf_transport_poll_group) -> bool {
        // SAFETY: see `RsTransport::from_raw`; only the magic is read.
        !p.is_null() && unsafe { (*p.cast::<RsPollGroup>()).magic } == POLL_GROUP_MAGIC
    }

    /// Frees a poll group made by [`RsPollGroup::into_raw`].
    ///
    /// # Safety
    /// `p` must come from [`RsPollGroup::into_raw`] and not be used again.
    pub(crate) unsafe fn free(p: *mut sys::spdk_nvmf_transport_poll_group) {
        // SAFETY: `p` is the Box pointer `into_raw` leaked (caller's contract).
        let mut g = unsafe { Box::from_raw(p.cast::<RsPollGroup>()) };
        g.magic = 0;
    }
}
