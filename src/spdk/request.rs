//! Filling an SPDK request record before `spdk_nvmf_request_exec`, reading its
//! completion back, and answering abort commands.

use std::ffi::c_void;

use super::api::api;
use super::qpair::RsRequest;
use super::sys;
use crate::engine::codec::nvme::{Command, Completion, COMMAND_CAPSULE_SIZE, COMPLETION_SIZE};
use crate::transport::{CommandData, Direction};

/// Bit 0 of `spdk_nvmf_request`'s flag byte: `data_from_pool`.
const DATA_FROM_POOL: u8 = 1;

/// `enum spdk_nvme_data_transfer` of a direction.
fn xfer(direction: Direction) -> u8 {
    let x = match direction {
        Direction::None => sys::SPDK_NVME_DATA_NONE,
        Direction::HostToController => sys::SPDK_NVME_DATA_HOST_TO_CONTROLLER,
        Direction::ControllerToHost => sys::SPDK_NVME_DATA_CONTROLLER_TO_HOST,
    };
    x as u8
}

/// Copies `bytes` into an opaque blob of `u64`s (native order, as memory).
fn fill_words(words: &mut [u64], bytes: &[u8]) {
    for (w, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        *w = u64::from_ne_bytes(b);
    }
}

/// Prepares a record for `spdk_nvmf_request_exec`: what upstream resets
/// between uses (rdma.c `_nvmf_rdma_request_free` and state NEW), then the
/// command copy, a zeroed response, the transfer direction and length, and
/// for in-capsule data `iov[0]` pointing into the receive buffer (valid until
/// the response is sent). Granted buffers are already in `iov` (put there by
/// `spdk_nvmf_request_get_buffers`).
pub(crate) fn prepare(
    rec: &mut RsRequest,
    cmd: &Command,
    data: CommandData<'_>,
    direction: Direction,
) {
    let r = &mut rec.base;
    // SAFETY: a union of one byte and a bitfield byte: every bit pattern is
    // valid for both; `data_from_pool` is bit 0 (the first bitfield).
    unsafe { r.__bindgen_anon_1.raw &= DATA_FROM_POOL };
    r.zcopy_phase = 0;
    r.cmd_cb_fn = None;
    r.first_fused_req = std::ptr::null_mut();
    r.req_to_abort = std::ptr::null_mut();
    r.stripped_data = std::ptr::null_mut();
    r.memory_domain = std::ptr::null_mut();
    r.memory_domain_ctx = std::ptr::null_mut();
    r.accel_sequence = std::ptr::null_mut();
    r.dif = Default::default();
    let mut words = [0u64; COMMAND_CAPSULE_SIZE / 8];
    fill_words(&mut words, &cmd.as_bytes()[..]);
    rec.cmd = sys::nvmf_h2c_msg {
        _bindgen_opaque_blob: words,
    };
    rec.rsp = Default::default();
    r.cmd = &mut rec.cmd;
    r.rsp = &mut rec.rsp;
    r.xfer = xfer(direction);
    match data {
        CommandData::None => {
            r.length = 0;
            r.iovcnt = 0;
        }
        CommandData::InCapsule(bytes) => {
            r.iov[0].iov_base = bytes.as_ptr().cast_mut().cast::<c_void>();
            r.iov[0].iov_len = bytes.len();
            r.iovcnt = 1;
            r.length = bytes.len() as u32;
            r.__bindgen_anon_1.raw = 0;
        }
        CommandData::Buffers(b) => {
            r.length = b.total_len() as u32;
        }
    }
}

/// The completion SPDK wrote into a record.
pub(crate) fn completion(rec: &RsRequest) -> Completion {
    let mut b = [0u8; COMPLETION_SIZE];
    // SAFETY: the union's only field is its storage: plain integers, valid
    // for every bit pattern.
    let words = unsafe { rec.rsp._bindgen_opaque_blob };
    for (chunk, w) in b.chunks_exact_mut(4).zip(words.iter()) {
        chunk.copy_from_slice(&w.to_ne_bytes());
    }
    Completion::from_bytes(&b)
}

/// Answers an abort command: bit 0 of its cdw0 cleared when the victim was
/// aborted (the generic layer set it to 1, "not aborted"), then completed.
pub(crate) fn finish_abort(abort_req: *mut sys::spdk_nvmf_request, aborted: bool) {
    let Some(api) = api() else { return };
    if abort_req.is_null() {
        return;
    }
    if aborted {
        // SAFETY: an abort request SPDK handed to `qpair_abort_request` and
        // has not seen completed yet; its `rsp` points at its completion,
        // whose first 4 bytes are cdw0.
        unsafe {
            let cdw0 = (*abort_req).rsp.cast::<u32>();
            if !cdw0.is_null() {
                *cdw0 &= !1u32;
            }
        }
    }
    // SAFETY: as above; SPDK completes it on this (its qpair's) thread.
    unsafe { api.spdk_nvmf_request_complete(abort_req) };
}
