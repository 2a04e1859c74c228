//! The data-path members of the ops table: poll groups, qpairs, requests.
//! Each runs on the SPDK thread of the poll group concerned (except
//! `get_optimal_poll_group`, called on the acceptor's thread from inside
//! `spdk_nvmf_tgt_new_qpair`), inside [`guard`].

use std::ffi::{c_int, c_void};

use super::api::api;
use super::group::{Deferred, RsPollGroup};
use super::guard::guard;
use super::qpair::{request_from_raw, RsQpair};
use super::request::{completion, finish_abort};
use super::sys;
use super::transport::RsTransport;
use super::trid::fill_trid;
use crate::transport::{AbortResult, FiniDone};

pub(super) unsafe extern "C" fn poll_group_create(
    transport: *mut sys::spdk_nvmf_transport,
    _group: *mut sys::spdk_nvmf_poll_group,
) -> *mut sys::spdk_nvmf_transport_poll_group {
    guard("poll_group_create", std::ptr::null_mut(), || {
        // SAFETY: SPDK passes its live transport (ours).
        let Some(t) = (unsafe { RsTransport::from_raw(transport) }) else {
            return std::ptr::null_mut();
        };
        RsPollGroup::create(t).unwrap_or(std::ptr::null_mut())
    })
}

pub(super) unsafe extern "C" fn poll_group_destroy(
    group: *mut sys::spdk_nvmf_transport_poll_group,
) {
    guard("poll_group_destroy", (), || {
        // SAFETY: SPDK destroys a poll group our `poll_group_create` returned.
        if unsafe { RsPollGroup::from_raw(group) }.is_some() {
            // SAFETY: ours (checked); SPDK never uses it after destroy.
            unsafe { RsPollGroup::destroy(group) };
        } else if !group.is_null() {
            tracing::error!("RDMA_RS: poll_group_destroy of {group:p}, not an RDMA_RS poll group");
        }
    })
}

pub(super) unsafe extern "C" fn poll_group_poll(
    group: *mut sys::spdk_nvmf_transport_poll_group,
) -> c_int {
    guard("poll_group_poll", -libc::EIO, || {
        // SAFETY: SPDK polls a live group of ours on its thread.
        let Some(g) = (unsafe { RsPollGroup::from_raw(group) }) else {
            return -libc::EINVAL;
        };
        let now = g.now();
        let n = g.run(|pg| pg.poll(now)).unwrap_or(0);
        c_int::try_from(n).unwrap_or(c_int::MAX)
    })
}

pub(super) unsafe extern "C" fn get_optimal_poll_group(
    qpair: *mut sys::spdk_nvmf_qpair,
) -> *mut sys::spdk_nvmf_transport_poll_group {
    guard("get_optimal_poll_group", std::ptr::null_mut(), || {
        // SAFETY: called from inside `spdk_nvmf_tgt_new_qpair` with the qpair
        // our acceptor just announced; only its qid and transport are read.
        let Some(q) = (unsafe { RsQpair::from_raw(qpair) }) else {
            return std::ptr::null_mut();
        };
        // SAFETY: the qpair's transport is our live transport.
        let Some(t) = (unsafe { RsTransport::from_raw(q.base.transport) }) else {
            return std::ptr::null_mut();
        };
        t.core()
            .optimal_group(q.qid)
            .and_then(|i| t.group_base(i))
            .unwrap_or(std::ptr::null_mut())
    })
}

pub(super) unsafe extern "C" fn poll_group_add(
    group: *mut sys::spdk_nvmf_transport_poll_group,
    qpair: *mut sys::spdk_nvmf_qpair,
) -> c_int {
    guard("poll_group_add", -libc::EIO, || {
        // SAFETY: SPDK adds our qpair to our group, on the group's thread.
        let (Some(g), Some(q)) = (unsafe { RsPollGroup::from_raw(group) }, unsafe {
            RsQpair::from_raw(qpair)
        }) else {
            return -libc::EINVAL;
        };
        let Some(pending) = q.pending.take() else {
            tracing::error!("RDMA_RS: poll_group_add of qpair {qpair:p} twice");
            return -libc::EINVAL;
        };
        let qp: *mut RsQpair = q;
        g.glue.adding.set(qp);
        let now = g.now();
        let r = g.run(|pg| pg.add_qpair(pending, now));
        g.glue.adding.set(std::ptr::null_mut());
        match r {
            Some(Ok(_)) => 0,
            Some(Err(e)) => {
                tracing::error!(
                    "RDMA_RS: qpair {qpair:p} not added to poll group {}: {}",
                    e.group,
                    e.failure
                );
                // Not joined after all (the host side may already have been
                // told in `qpair_added`): forget it there, keep the pending
                // connection for `qpair_fini` to reject.
                g.glue.forget(qp);
                // SAFETY: still the live qpair (SPDK calls qpair_fini next).
                unsafe {
                    (*qp).handle = None;
                    (*qp).group = std::ptr::null_mut();
                    (*qp).pending = Some(e.qpair);
                }
                -libc::EIO
            }
            None => -libc::EBUSY,
        }
    })
}

pub(super) unsafe extern "C" fn poll_group_remove(
    _group: *mut sys::spdk_nvmf_transport_poll_group,
    _qpair: *mut sys::spdk_nvmf_qpair,
) -> c_int {
    // Nothing to undo here: requests waiting for buffers wait in our own
    // queue (not SPDK's iobuf queue, which would reach `qpair->group` after
    // SPDK cleared it) and leave it when the core cancels them.
    0
}

pub(super) unsafe extern "C" fn req_complete(req: *mut sys::spdk_nvmf_request) {
    guard("req_complete", (), || {
        // SAFETY: SPDK completes a request of ours on its qpair's thread.
        let Some((q, slot)) = (unsafe { request_from_raw(req) }) else {
            tracing::error!("RDMA_RS: req_complete of {req:p}, not an RDMA_RS request");
            return;
        };
        let rec = &q.records[slot];
        let (handle, cpl) = (rec.handle, completion(rec));
        // SAFETY: the group a joined qpair belongs to lives while it does.
        match unsafe { RsPollGroup::from_raw(q.group) } {
            Some(g) => g.answer(Deferred::Complete(handle, cpl)),
            None => tracing::error!("RDMA_RS: req_complete of {handle}: qpair has no poll group"),
        }
    })
}

pub(super) unsafe extern "C" fn req_free(req: *mut sys::spdk_nvmf_request) {
    guard("req_free", (), || {
        // SAFETY: SPDK frees a request of ours on its qpair's thread.
        let Some((q, slot)) = (unsafe { request_from_raw(req) }) else {
            tracing::error!("RDMA_RS: req_free of {req:p}, not an RDMA_RS request");
            return;
        };
        let handle = q.records[slot].handle;
        // SAFETY: as in `req_complete`.
        match unsafe { RsPollGroup::from_raw(q.group) } {
            Some(g) => g.answer(Deferred::Free(handle)),
            None => tracing::error!("RDMA_RS: req_free of {handle}: qpair has no poll group"),
        }
    })
}

/// SPDK's `qpair_fini` callback, carried to the core's `fini` (runs once,
/// on the group's thread).
struct FiniCb {
    cb: sys::spdk_nvmf_transport_qpair_fini_cb,
    arg: *mut c_void,
    qpair: *mut RsQpair,
}

// SAFETY: created and run on the qpair's group thread (the core calls `done`
// on the thread driving the group); never shared.
unsafe impl Send for FiniCb {}

impl FiniCb {
    fn run(self) {
        // SAFETY: the qpair is alive until this marks it finished (it is
        // freed by whichever of this and `qpair_gone` comes last).
        let q = unsafe { &mut *self.qpair };
        q.life.fini_called = true;
        let gone = q.life.gone;
        if let Some(cb) = self.cb {
            // SAFETY: SPDK's callback and argument, called once.
            unsafe { cb(self.arg) };
        }
        if gone {
            // SAFETY: the transport and SPDK are both done with it.
            unsafe { RsQpair::free(self.qpair) };
        }
    }
}

pub(super) unsafe extern "C" fn qpair_fini(
    qpair: *mut sys::spdk_nvmf_qpair,
    cb_fn: sys::spdk_nvmf_transport_qpair_fini_cb,
    cb_arg: *mut c_void,
) {
    guard("qpair_fini", (), || {
        // SAFETY: SPDK finishes a qpair of ours, once.
        let Some(q) = (unsafe { RsQpair::from_raw(qpair) }) else {
            tracing::error!("RDMA_RS: qpair_fini of {qpair:p}, not an RDMA_RS qpair");
            return;
        };
        let qp: *mut RsQpair = q;
        let fini = FiniCb {
            cb: cb_fn,
            arg: cb_arg,
            qpair: qp,
        };
        let target = match (q.handle, q.life.gone) {
            (Some(h), false) => {
                // SAFETY: the group of a joined, not yet gone qpair lives.
                unsafe { RsPollGroup::from_raw(q.group) }.map(|g| (g, h))
            }
            _ => None,
        };
        match target {
            Some((g, h)) => {
                let done: FiniDone = Box::new(move |_| fini.run());
                g.answer(Deferred::Fini(h, done));
            }
            None => {
                // Never joined (or already gone): reject what is pending,
                // answer SPDK, free.
                q.life.gone = true;
                fini.run();
            }
        }
    })
}

unsafe fn qpair_trid(
    qpair: *mut sys::spdk_nvmf_qpair,
    trid: *mut sys::spdk_nvme_transport_id,
    which: &str,
) -> c_int {
    // SAFETY: SPDK asks about a live qpair of ours and passes the trid to fill.
    let (Some(q), Some(trid)) = (unsafe { RsQpair::from_raw(qpair) }, unsafe {
        trid.as_mut()
    }) else {
        return -libc::EINVAL;
    };
    match which {
        "listen" => {
            *trid = q.listen_trid;
            0
        }
        _ => {
            let addr = if which == "peer" { q.peer } else { q.local };
            match addr {
                Some(a) => {
                    fill_trid(trid, a);
                    0
                }
                None => -libc::ENOENT,
            }
        }
    }
}

pub(super) unsafe extern "C" fn qpair_get_peer_trid(
    qpair: *mut sys::spdk_nvmf_qpair,
    trid: *mut sys::spdk_nvme_transport_id,
) -> c_int {
    // SAFETY: forwarded as received.
    guard("qpair_get_peer_trid", -libc::EIO, || unsafe {
        qpair_trid(qpair, trid, "peer")
    })
}

pub(super) unsafe extern "C" fn qpair_get_local_trid(
    qpair: *mut sys::spdk_nvmf_qpair,
    trid: *mut sys::spdk_nvme_transport_id,
) -> c_int {
    // SAFETY: forwarded as received.
    guard("qpair_get_local_trid", -libc::EIO, || unsafe {
        qpair_trid(qpair, trid, "local")
    })
}

pub(super) unsafe extern "C" fn qpair_get_listen_trid(
    qpair: *mut sys::spdk_nvmf_qpair,
    trid: *mut sys::spdk_nvme_transport_id,
) -> c_int {
    // SAFETY: forwarded as received.
    guard("qpair_get_listen_trid", -libc::EIO, || unsafe {
        qpair_trid(qpair, trid, "listen")
    })
}

/// The command id an abort command names (cdw10 bits 31:16).
fn abort_victim_cid(abort_req: *mut sys::spdk_nvmf_request) -> Option<u16> {
    // SAFETY: SPDK's abort request with its command (64 bytes at `cmd`).
    let cmd = unsafe { (*abort_req).cmd };
    if cmd.is_null() {
        return None;
    }
    // SAFETY: cdw10 is bytes 40..44 of the 64-byte command.
    let cdw10 = unsafe { cmd.cast::<u8>().add(40).cast::<u32>().read_unaligned() };
    Some((u32::from_le(cdw10) >> 16) as u16)
}

pub(super) unsafe extern "C" fn qpair_abort_request(
    qpair: *mut sys::spdk_nvmf_qpair,
    abort_req: *mut sys::spdk_nvmf_request,
) {
    guard("qpair_abort_request", (), || {
        let Some(api) = api() else { return };
        // SAFETY: SPDK asks on the victim qpair's thread; the abort request is
        // live until completed.
        let (Some(q), Some(cid)) = (
            unsafe { RsQpair::from_raw(qpair) },
            abort_victim_cid(abort_req),
        ) else {
            finish_abort(abort_req, false);
            return;
        };
        // SAFETY: the group of a joined qpair lives while it does.
        let (Some(h), Some(g)) = (q.handle, unsafe { RsPollGroup::from_raw(q.group) }) else {
            finish_abort(abort_req, false);
            return;
        };
        let now = g.now();
        let outcome = g
            .run(|pg| pg.abort(h, cid, now))
            .unwrap_or(AbortResult::NotFound);
        match outcome {
            AbortResult::Aborted => finish_abort(abort_req, true),
            AbortResult::NotFound => finish_abort(abort_req, false),
            AbortResult::Retrying => g.push_abort(h, cid, abort_req),
            AbortResult::Executing(victim) => {
                let Some(rec) = q.record(victim.slot) else {
                    finish_abort(abort_req, false);
                    return;
                };
                let victim_req: *mut sys::spdk_nvmf_request = &mut rec.base;
                // SAFETY: SPDK's abort request, live until completed.
                unsafe { (*abort_req).req_to_abort = victim_req };
                let mut bdev = std::ptr::null_mut();
                let mut desc = std::ptr::null_mut();
                let mut ch = std::ptr::null_mut();
                // SAFETY: SPDK's abort request; out-pointers to locals.
                let nsid = unsafe { (*victim_req).cmd }.cast::<u8>();
                // SAFETY: nsid is bytes 4..8 of the victim's 64-byte command.
                let nsid = unsafe { u32::from_le(nsid.add(4).cast::<u32>().read_unaligned()) };
                // SAFETY: as above.
                let rc = unsafe {
                    api.spdk_nvmf_request_get_bdev(nsid, abort_req, &mut bdev, &mut desc, &mut ch)
                };
                if rc != 0 {
                    finish_abort(abort_req, false);
                    return;
                }
                // SAFETY: the bdev, descriptor and channel SPDK just gave; it
                // completes `abort_req` itself.
                let rc = unsafe {
                    api.spdk_nvmf_bdev_ctrlr_abort_cmd(bdev, desc, ch, abort_req, victim_req)
                };
                if rc != 0 {
                    finish_abort(abort_req, false);
                }
            }
        }
    })
}
