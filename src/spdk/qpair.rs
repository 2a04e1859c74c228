//! The qpair and request objects SPDK holds pointers to.
//!
//! As upstream, SPDK's structs are embedded first (`#[repr(C)]`), so the
//! pointer SPDK gets is the pointer to ours: an [`RsQpair`] starts with its
//! `spdk_nvmf_qpair`, and owns one [`RsRequest`] record per engine request
//! slot, each starting with its `spdk_nvmf_request`. A request pointer coming
//! back from SPDK is mapped to its slot through `req->qpair` (magic-checked)
//! and a range and stride check against that qpair's records, never trusted
//! blindly.

use std::net::SocketAddr;

use super::sys;
use crate::transport::{PendingQpair, QpairHandle, RequestHandle};

const QPAIR_MAGIC: u64 = 0x5244_4d41_5f52_5150; // "RDMA_RQP"

/// One request record: SPDK's request, then the command copy SPDK reads
/// (and may write) and the completion it fills.
#[repr(C)]
pub(crate) struct RsRequest {
    /// SPDK's request (first: SPDK's pointer is ours).
    pub(crate) base: sys::spdk_nvmf_request,
    /// The command capsule's SQE, copied at execute (`req->cmd`).
    pub(crate) cmd: sys::nvmf_h2c_msg,
    /// The completion SPDK fills (`req->rsp`).
    pub(crate) rsp: sys::nvmf_c2h_msg,
    /// The transport's name for this request.
    pub(crate) handle: RequestHandle,
}

/// Where a qpair is in its life on our side.
pub(crate) struct QpairLife {
    /// SPDK called `qpair_fini` (and was answered).
    pub(crate) fini_called: bool,
    /// The transport's qpair is gone (`HostGroup::qpair_gone`), or it never
    /// joined a poll group.
    pub(crate) gone: bool,
}

/// A qpair of ours; SPDK sees `&base`.
#[repr(C)]
pub(crate) struct RsQpair {
    /// SPDK's qpair (first).
    pub(crate) base: sys::spdk_nvmf_qpair,
    magic: u64,
    /// The accepted connection until `poll_group_add` takes it (or it comes
    /// back from a failed add, to be rejected at `qpair_fini`).
    pub(crate) pending: Option<PendingQpair>,
    /// The transport's handle once the qpair joined a poll group.
    pub(crate) handle: Option<QpairHandle>,
    /// The poll group it joined (`RsPollGroup`), NULL before.
    pub(crate) group: *mut sys::spdk_nvmf_transport_poll_group,
    /// One record per engine request slot (made when the qpair joins).
    pub(crate) records: Box<[RsRequest]>,
    /// Initiator address.
    pub(crate) peer: Option<SocketAddr>,
    /// Local address of the connection.
    pub(crate) local: Option<SocketAddr>,
    /// The trid of the listener that accepted it (verbatim, as SPDK made it).
    pub(crate) listen_trid: sys::spdk_nvme_transport_id,
    /// Queue id from the CM private data.
    pub(crate) qid: u16,
    /// Teardown progress.
    pub(crate) life: QpairLife,
}

impl RsQpair {
    /// A new qpair for SPDK, owning the accepted connection.
    pub(crate) fn into_raw(
        transport: *mut sys::spdk_nvmf_transport,
        pending: PendingQpair,
        listen_trid: sys::spdk_nvme_transport_id,
    ) -> *mut RsQpair {
        let base = sys::spdk_nvmf_qpair {
            transport,
            qid: pending.qid(),
            ..Default::default()
        };
        let q = Box::new(RsQpair {
            base,
            magic: QPAIR_MAGIC,
            peer: pending.peer(),
            local: None,
            qid: pending.qid(),
            pending: Some(pending),
            handle: None,
            group: std::ptr::null_mut(),
            records: Box::new([]),
            listen_trid,
            life: QpairLife {
                fini_called: false,
                gone: false,
            },
        });
        Box::into_raw(q)
    }

    /// The qpair behind SPDK's pointer, or `None` when it is not ours.
    ///
    /// # Safety
    /// `p` must be NULL or a qpair SPDK handed to one of our ops (made by
    /// [`RsQpair::into_raw`] and not yet freed), used from its poll group's
    /// thread, with no other live reference to it.
    pub(crate) unsafe fn from_raw<'a>(p: *mut sys::spdk_nvmf_qpair) -> Option<&'a mut RsQpair> {
        if p.is_null() {
            return None;
        }
        // SAFETY: SPDK only hands our ops qpairs we announced with
        // `spdk_nvmf_tgt_new_qpair`, which are `RsQpair`s (base first,
        // repr(C)); the magic check catches anything else before use.
        let q = unsafe { &mut *p.cast::<RsQpair>() };
        (q.magic == QPAIR_MAGIC).then_some(q)
    }

    /// Makes the request records once the queue depth is known (when the
    /// qpair joins its group): `depth` records, each pointing back at this
    /// qpair, named by `handle`.
    pub(crate) fn make_records(&mut self, handle: QpairHandle, depth: u16) {
        let me: *mut sys::spdk_nvmf_qpair = &mut self.base;
        self.records = (0..depth)
            .map(|slot| {
                let mut r = RsRequest {
                    base: Default::default(),
                    cmd: Default::default(),
                    rsp: Default::default(),
                    handle: RequestHandle {
                        qpair: handle,
                        slot,
                        generation: 0,
                    },
                };
                r.base.qpair = me;
                r
            })
            .collect();
        self.handle = Some(handle);
    }

    /// The record of `slot`.
    pub(crate) fn record(&mut self, slot: u16) -> Option<&mut RsRequest> {
        self.records.get_mut(usize::from(slot))
    }

    /// Frees a qpair made by [`RsQpair::into_raw`] (its pending connection,
    /// if any, is rejected).
    ///
    /// # Safety
    /// `p` must come from [`RsQpair::into_raw`]; neither SPDK nor the
    /// transport may use it again.
    pub(crate) unsafe fn free(p: *mut RsQpair) {
        // SAFETY: the Box pointer `into_raw` leaked (caller's contract).
        let mut q = unsafe { Box::from_raw(p) };
        q.magic = 0;
        if let Some(pending) = q.pending.take() {
            pending.reject();
        }
    }
}

/// The record behind a request pointer SPDK hands back, checked against the
/// qpair `req->qpair` names: inside its records, on a record boundary.
///
/// # Safety
/// `req` must be NULL or a request pointer SPDK handed to one of our ops,
/// on its qpair's poll group thread.
pub(crate) unsafe fn request_from_raw<'a>(
    req: *mut sys::spdk_nvmf_request,
) -> Option<(&'a mut RsQpair, usize)> {
    if req.is_null() {
        return None;
    }
    // SAFETY: a request SPDK hands back is one we gave it (a record's base),
    // so reading its `qpair` field is reading our record.
    let qp = unsafe { (*req).qpair };
    // SAFETY: see `RsQpair::from_raw` (magic-checked).
    let q = unsafe { RsQpair::from_raw(qp) }?;
    let start = q.records.as_ptr() as usize;
    let size = std::mem::size_of::<RsRequest>();
    let off = (req as usize).checked_sub(start)?;
    let slot = off / size;
    (off % size == 0 && slot < q.records.len()).then_some((q, slot))
}
