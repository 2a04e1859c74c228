//! The transport's own SPDK trace group: tracepoints for request state
//! changes and qpair lifecycle events, readable with `spdk_trace`
//! (docs/spdk-plugin.md "Traces").
//!
//! Registration is what `SPDK_TRACE_REGISTER_FN` does in C, with SPDK
//! resolved at run time: the load-time constructor calls [`register`], which
//! adds a `spdk_trace_register_fn` for the group (after checking that no other
//! group has its id or name); SPDK calls [`describe`] from `spdk_trace_init`
//! once the trace file exists, and it registers the object type and the
//! tracepoint descriptions after checking their slots are free. Only then is
//! recording switched on.
//!
//! Recording ([`request_state`], [`qpair_event`]) first checks the tpoint
//! mask in the trace file, as the `spdk_trace_record` macro does, so a
//! disabled tracepoint costs two loads and a test; only an enabled one calls
//! the variadic `_spdk_trace_record`, with exactly the arguments its
//! description declares. `g_trace_file` is data, so it is looked up with
//! `dlsym` like every SPDK function (no undefined SPDK symbol).
//!
//! Ids: in the plugin (`RDMA_RS` next to upstream's rdma.c) the group is
//! `nvmf_rdma_rs`, id 0x7, and requests are object type 0x41 (prefix `R`):
//! unused in SPDK v26.01 (`include/spdk_internal/trace_defs.h`; 0x7 was
//! blobfs's, removed). In link mode (`link-mode` feature, rdma.c not built)
//! the group takes rdma.c's place: `nvmf_rdma`, id 0x4, object 0x40 (prefix
//! `r`), so `-e nvmf_rdma` in existing command lines keeps working.

use std::ffi::{c_char, c_void, CStr};
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use super::api::api;
use super::guard::guard;
use super::sys;
use super::trace_file;
use crate::engine::{DisconnectReason, ReqState};

/// The group: (id, name, request object type, its id prefix).
#[cfg(not(feature = "link-mode"))]
const GROUP: (u8, &CStr, u8, u8) = (0x7, c"nvmf_rdma_rs", 0x41, b'R');
/// The group in link mode: rdma.c's (it is not built).
#[cfg(feature = "link-mode")]
const GROUP: (u8, &CStr, u8, u8) = (0x4, c"nvmf_rdma", 0x40, b'r');

/// Tracepoints per group (`SPDK_TPOINT_ID`: `group * 64 + tpoint`).
const TPOINTS_PER_GROUP: u16 = 64;
/// `SPDK_TRACE_ARG_TYPE_INT`.
const ARG_INT: u8 = 0;
/// `SPDK_TRACE_ARG_TYPE_PTR`.
const ARG_PTR: u8 = 1;
/// `OBJECT_NONE`.
const OBJECT_NONE: u8 = 0;
/// bdev's `TRACE_BDEV_IO_START` / `TRACE_BDEV_IO_DONE` (group 0x3, tpoints
/// 0 and 1): related to our request object, as upstream does, so
/// `spdk_trace` ties a bdev I/O to the request that issued it.
const BDEV_IO_RELATIONS: [(u16, u8); 2] = [(3 * 64, 1), (3 * 64 + 1, 0)];

/// A qpair lifecycle event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QpairEvent {
    /// The qpair joined its poll group (`code`: its queue id, 0 = admin).
    Create,
    /// The transport asked SPDK to disconnect it (`code`: 0).
    Disconnect,
    /// The transport is done with it (`code`: 0).
    Destroy,
    /// An error moved the qpair to error (`code`: [`error_code`]).
    Error,
}

/// `code` of `RS_QP_ERROR` when a QP event reported the error: the QP is
/// fatal (`IBV_EVENT_QP_FATAL`, or the device's `IBV_EVENT_DEVICE_FATAL`).
const CODE_QP_FATAL: u64 = 0x100;
/// The QP went to error with no fatal event nor error completion (SRQ:
/// last WQE reached on an active qpair).
const CODE_QP_IN_ERROR: u64 = 0x101;
/// The host sent more commands than the queue depth.
const CODE_HOST_OVERRUN: u64 = 0x102;
/// A WR could not be posted.
const CODE_POST_FAILED: u64 = 0x103;

/// The `code` argument of `RS_QP_ERROR` for `reason`: the `ibv_wc_status`
/// of an error completion (1–23, e.g. 5 = `IBV_WC_WR_FLUSH_ERR`), or one of
/// the `CODE_*` values (0x100 and up). `None` when the peer disconnected:
/// that is no error (`RS_QP_DISCONNECT` records the disconnect).
fn error_code(reason: DisconnectReason) -> Option<u64> {
    Some(match reason {
        DisconnectReason::WcError { status, .. } => u64::from(status.to_raw()),
        DisconnectReason::QpFatal => CODE_QP_FATAL,
        DisconnectReason::QpInError => CODE_QP_IN_ERROR,
        DisconnectReason::HostOverrun { .. } => CODE_HOST_OVERRUN,
        DisconnectReason::PostFailed => CODE_POST_FAILED,
        DisconnectReason::PeerDisconnected => return None,
    })
}

/// One tracepoint description.
struct Tpoint {
    /// Index in the group (0..64).
    index: u16,
    name: &'static CStr,
    /// On the request object (or on no object).
    request: bool,
    /// Starts a request's life (`new_object`).
    new_object: bool,
    /// Arguments: the request's qpair (and, when a request starts or ends,
    /// the qpair's requests in use), or the qpair and an event code.
    args: &'static [(&'static CStr, u8)],
}

const REQ_ARGS: &[(&CStr, u8)] = &[(c"qpair", ARG_PTR)];
/// Upstream's `RDMA_REQ_NEW` / `RDMA_REQ_COMPLETED` arguments: the qpair and
/// `qd`, its requests not FREE (this one included).
const REQ_QD_ARGS: &[(&CStr, u8)] = &[(c"qpair", ARG_PTR), (c"qd", ARG_INT)];
const QP_ARGS: &[(&CStr, u8)] = &[(c"qpair", ARG_PTR), (c"code", ARG_INT)];

/// Index of `RS_REQ_NEW` (the `new_object` tracepoint).
const NEW_INDEX: u16 = 0;
/// Index of `RS_REQ_COMPLETED`.
const COMPLETED_INDEX: u16 = 13;

const fn req(index: u16, name: &'static CStr) -> Tpoint {
    Tpoint {
        index,
        name,
        request: true,
        new_object: index == NEW_INDEX,
        args: if index == NEW_INDEX || index == COMPLETED_INDEX {
            REQ_QD_ARGS
        } else {
            REQ_ARGS
        },
    }
}

const fn qp(index: u16, name: &'static CStr) -> Tpoint {
    Tpoint {
        index,
        name,
        request: false,
        new_object: false,
        args: QP_ARGS,
    }
}

/// First qpair event index (request states use 0..14).
const QP_BASE: u16 = 0x10;
/// The bits of the request-state tracepoints in the group's mask word.
const REQUEST_MASK: u64 = (1 << (COMPLETED_INDEX + 1)) - 1;

/// Every tracepoint of the group. Request states keep upstream's order
/// (`ReqState`, which mirrors `spdk_nvmf_rdma_request_state`); `Free` is
/// never traced, as upstream.
const TPOINTS: [Tpoint; 18] = [
    req(NEW_INDEX, c"RS_REQ_NEW"),
    req(1, c"RS_REQ_NEED_BUFFER"),
    req(2, c"RS_REQ_HAVE_BUFFER"),
    req(3, c"RS_REQ_TX_PENDING_H2C"),
    req(4, c"RS_REQ_TX_H2C"),
    req(5, c"RS_REQ_RDY_TO_EXECUTE"),
    req(6, c"RS_REQ_EXECUTING"),
    req(7, c"RS_REQ_EXECUTED"),
    req(8, c"RS_REQ_TX_PENDING_C2H"),
    req(9, c"RS_REQ_RDY2COMPL_PEND"),
    req(10, c"RS_REQ_RDY_TO_COMPL"),
    req(11, c"RS_REQ_COMPLETING_C2H"),
    req(12, c"RS_REQ_COMPLETING"),
    req(COMPLETED_INDEX, c"RS_REQ_COMPLETED"),
    qp(QP_BASE, c"RS_QP_CREATE"),
    qp(QP_BASE + 1, c"RS_QP_DISCONNECT"),
    qp(QP_BASE + 2, c"RS_QP_DESTROY"),
    qp(QP_BASE + 3, c"RS_QP_ERROR"),
];

/// The tracepoint index of a request state (`None` for `Free`).
#[inline]
fn state_index(state: ReqState) -> Option<u16> {
    Some(match state {
        ReqState::Free => return None,
        ReqState::New => NEW_INDEX,
        ReqState::NeedBuffer => 1,
        ReqState::HaveBuffer => 2,
        ReqState::DataTransferToControllerPending => 3,
        ReqState::TransferringHostToController { .. } => 4,
        ReqState::ReadyToExecute => 5,
        ReqState::Executing => 6,
        ReqState::Executed => 7,
        ReqState::DataTransferToHostPending => 8,
        ReqState::ReadyToCompletePending => 9,
        ReqState::ReadyToComplete => 10,
        ReqState::TransferringControllerToHost => 11,
        ReqState::Completing => 12,
        ReqState::Completed => COMPLETED_INDEX,
    })
}

/// The tracepoint index of a qpair event.
#[inline]
fn event_index(event: QpairEvent) -> u16 {
    QP_BASE
        + match event {
            QpairEvent::Create => 0,
            QpairEvent::Disconnect => 1,
            QpairEvent::Destroy => 2,
            QpairEvent::Error => 3,
        }
}

/// The SPDK tracepoint id of our tracepoint `index`.
#[inline]
fn tpoint_id(index: u16) -> u16 {
    u16::from(GROUP.0) * TPOINTS_PER_GROUP + index
}

/// Where `g_trace_file` lives (the address of SPDK's pointer variable), set
/// once [`describe`] registered every description: until then, and forever
/// when registration was refused, nothing is recorded.
static TRACE_FILE_VAR: AtomicPtr<AtomicPtr<sys::spdk_trace_file>> =
    AtomicPtr::new(std::ptr::null_mut());

/// Whether the tracepoint `id` is enabled (the `spdk_trace_tpoint_enabled`
/// check): our group registered, a trace file, and the id's bit in its mask.
#[inline]
fn enabled(id: u16) -> bool {
    mask_of(id >> 6) & (1u64 << (id & 0x3f)) != 0
}

/// Whether any request-state tracepoint of the group is enabled: the
/// transport core asks once per poll (`HostGroup::trace_requests`) and
/// reports request states only while this holds.
pub(crate) fn requests_enabled() -> bool {
    mask_of(u16::from(GROUP.0)) & REQUEST_MASK != 0
}

/// The tpoint mask word of `group` in the trace file (0 until our group is
/// described, or without a trace file).
#[inline]
fn mask_of(group: u16) -> u64 {
    let var = TRACE_FILE_VAR.load(Ordering::Relaxed);
    if var.is_null() {
        return 0;
    }
    // SAFETY: `var` is the address of SPDK's `g_trace_file` (dlsym), a
    // pointer-sized, aligned variable living as long as the process; an
    // `AtomicPtr` has the layout of the pointer it wraps.
    let file = unsafe { &*var }.load(Ordering::Relaxed);
    if file.is_null() {
        return 0;
    }
    // SAFETY: a non-NULL `g_trace_file` points to the mapped trace file until
    // `spdk_trace_cleanup`, which runs after every poller (and so every
    // recording call) stopped.
    let Some(word) = (unsafe { trace_file::mask_word(file, usize::from(group)) }) else {
        return 0;
    };
    // SAFETY: an aligned `u64` of the mapped file, which SPDK's RPCs write
    // from another thread: read atomically.
    unsafe { AtomicU64::from_ptr(word) }.load(Ordering::Relaxed)
}

/// Records a request's new state: `req` is its `spdk_nvmf_request` (the
/// object id, as upstream, so `spdk_trace` relates bdev I/O to it), `qpair`
/// its `spdk_nvmf_qpair`, `in_use` the qpair's requests not FREE (the `qd`
/// argument of `RS_REQ_NEW` and `RS_REQ_COMPLETED`, as upstream). Costs a
/// mask check when the tracepoint is off.
#[inline]
pub(crate) fn request_state(
    req: *const c_void,
    qpair: *const c_void,
    state: ReqState,
    in_use: u16,
) {
    let Some(index) = state_index(state) else {
        return;
    };
    let id = tpoint_id(index);
    if !enabled(id) {
        return;
    }
    if index == NEW_INDEX || index == COMPLETED_INDEX {
        record(id, req as u64, &[qpair as u64, u64::from(in_use)]);
    } else {
        record(id, req as u64, &[qpair as u64]);
    }
}

/// Records `RS_QP_ERROR` for `qpair` (its `spdk_nvmf_qpair`) moved to error
/// by `reason`, with [`error_code`] as its code; nothing when the peer
/// disconnected.
pub(crate) fn qpair_error(qpair: *const c_void, reason: DisconnectReason) {
    if let Some(code) = error_code(reason) {
        qpair_event(qpair, QpairEvent::Error, code);
    }
}

/// Records a qpair lifecycle event for `qpair` (its `spdk_nvmf_qpair`) with
/// an event-specific `code` (see [`QpairEvent`]).
#[inline]
pub(crate) fn qpair_event(qpair: *const c_void, event: QpairEvent, code: u64) {
    let id = tpoint_id(event_index(event));
    if enabled(id) {
        record(id, 0, &[qpair as u64, code]);
    }
}

/// Calls `_spdk_trace_record` with `args` (one or two `u64`, as the
/// description of `id` declares: size 8 each).
#[cold]
fn record(id: u16, object_id: u64, args: &[u64]) {
    let Some(api) = api() else { return };
    let f = api._spdk_trace_record;
    // SAFETY: `id` is one of our registered tracepoints (`enabled` is true
    // only after `describe` registered all of them) and the variadic
    // arguments match its description: `num_args` 64-bit integers, read by
    // SPDK with `va_arg(uint64_t)` for size-8 arguments. tsc 0 makes SPDK
    // take the time itself.
    unsafe {
        match args {
            [a] => f(0, id, 0, 0, object_id, 1, *a),
            [a, b] => f(0, id, 0, 0, object_id, 2, *a, *b),
            _ => {}
        }
    }
}

/// The group's name as text, for messages.
fn group_name() -> &'static str {
    GROUP.1.to_str().unwrap_or("?")
}

/// Adds the group's register function (from the load-time constructor, once
/// SPDK resolved). Refuses, with an error on stderr, when the trace file
/// variable is missing or another group already has the id or the name
/// (SPDK would assert in a debug build).
pub(crate) fn register(api: &'static sys::SpdkApi) {
    // SAFETY: a NUL-terminated name; dlsym only looks it up.
    let var = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"g_trace_file".as_ptr()) };
    if var.is_null() {
        eprintln!(
            "nvmf-rdma-rs: trace group {} not registered: SPDK has no g_trace_file",
            group_name()
        );
        return;
    }
    // SAFETY: no arguments; walks SPDK's static list of register functions,
    // which constructors (this one included) only append to.
    let mut cur = unsafe { api.spdk_trace_get_first_register_fn() };
    // SAFETY: `cur` is NULL or a live element of that list (SPDK keeps
    // registered structs for the life of the process).
    while let Some(f) = unsafe { cur.as_ref() } {
        // SAFETY: `spdk_trace_add_register_fn` only keeps entries with a
        // non-NULL name, a C string that lives as long as the entry.
        let name = unsafe { CStr::from_ptr(f.name) };
        if f.tgroup_id == GROUP.0 || name == GROUP.1 {
            eprintln!(
                "nvmf-rdma-rs: trace group {} (id {:#x}) not registered: SPDK already has \
                 group {} (id {:#x})",
                group_name(),
                GROUP.0,
                name.to_string_lossy(),
                f.tgroup_id
            );
            return;
        }
        // SAFETY: as above.
        cur = unsafe { api.spdk_trace_get_next_register_fn(cur) };
    }
    PENDING_VAR.store(var.cast(), Ordering::Release);
    let reg = Box::leak(Box::new(sys::spdk_trace_register_fn {
        name: GROUP.1.as_ptr(),
        tgroup_id: GROUP.0,
        reg_fn: Some(describe),
        next: std::ptr::null_mut(),
    }));
    // SAFETY: `reg` is leaked, so it lives as long as SPDK's list; its name is
    // a static C string and `describe` a plain C-ABI function.
    unsafe { api.spdk_trace_add_register_fn(reg) };
}

/// `g_trace_file`'s address between [`register`] and [`describe`].
static PENDING_VAR: AtomicPtr<AtomicPtr<sys::spdk_trace_file>> =
    AtomicPtr::new(std::ptr::null_mut());

/// What stops [`describe`] from registering.
#[derive(Debug, thiserror::Error)]
enum DescribeError {
    #[error("no trace file")]
    NoTraceFile,
    #[error("object type {0:#x} is taken")]
    ObjectTaken(u8),
    #[error("tracepoint id {id} is taken by {name}")]
    TpointTaken { id: u16, name: String },
    #[error("the trace file has no slot for {0}")]
    NoSlot(&'static str),
}

/// Checks every slot we are about to fill is free.
///
/// # Safety
/// `file` must be SPDK's live trace file, not being written concurrently
/// (`spdk_trace_init` calls register functions before any reactor runs).
unsafe fn check_free(file: *mut sys::spdk_trace_file) -> Result<(), DescribeError> {
    // SAFETY: live trace file (caller).
    let object = unsafe { trace_file::object_slot(file, GROUP.2) }
        .ok_or(DescribeError::NoSlot("the request object"))?;
    // SAFETY: a slot of the live file, not written during `spdk_trace_init`.
    if unsafe { (*object).type_ } != 0 {
        return Err(DescribeError::ObjectTaken(GROUP.2));
    }
    for t in &TPOINTS {
        let id = tpoint_id(t.index);
        // SAFETY: live trace file (caller).
        let slot = unsafe { trace_file::tpoint_slot(file, id) }
            .ok_or(DescribeError::NoSlot("a tracepoint"))?;
        // SAFETY: as for the object slot.
        let slot = unsafe { &*slot };
        if slot.tpoint_id != 0 {
            // SAFETY: SPDK stores tracepoint names NUL-terminated within
            // the array (snprintf).
            let name = unsafe { CStr::from_ptr(slot.name.as_ptr()) };
            return Err(DescribeError::TpointTaken {
                id,
                name: name.to_string_lossy().into_owned(),
            });
        }
    }
    Ok(())
}

/// The descriptions, as SPDK's `spdk_trace_tpoint_opts`.
fn descriptions() -> Vec<sys::spdk_trace_tpoint_opts> {
    TPOINTS
        .iter()
        .map(|t| {
            let mut o = sys::spdk_trace_tpoint_opts {
                name: t.name.as_ptr(),
                tpoint_id: tpoint_id(t.index),
                owner_type: 0,
                object_type: if t.request { GROUP.2 } else { OBJECT_NONE },
                new_object: u8::from(t.new_object),
                ..Default::default()
            };
            for (dst, (name, ty)) in o.args.iter_mut().zip(t.args) {
                dst.name = name.as_ptr();
                dst.type_ = *ty;
                dst.size = 8;
            }
            o
        })
        .collect()
}

/// The group's register function, called by SPDK from `spdk_trace_init`.
extern "C" fn describe() {
    guard("trace describe", (), || {
        let Some(api) = api() else { return };
        let var = PENDING_VAR.load(Ordering::Acquire);
        if var.is_null() {
            return;
        }
        // SAFETY: `var` is `g_trace_file`'s address (see `enabled`).
        let file = unsafe { &*var }.load(Ordering::Acquire);
        let checked = if file.is_null() {
            Err(DescribeError::NoTraceFile)
        } else {
            // SAFETY: SPDK calls register functions from `spdk_trace_init`
            // right after mapping the file, before any reactor runs.
            unsafe { check_free(file) }
        };
        if let Err(e) = checked {
            tracing::error!(
                "RDMA_RS: trace group {} (id {:#x}) not described: {e}; its tracepoints stay off",
                group_name(),
                GROUP.0
            );
            return;
        }
        let opts = descriptions();
        // SAFETY: trace file live (checked); `opts` and the static names it
        // points to outlive the calls, which copy them.
        unsafe {
            api.spdk_trace_register_object(GROUP.2, GROUP.3 as c_char);
            api.spdk_trace_register_description_ext(opts.as_ptr(), opts.len());
            for (tpoint, arg) in BDEV_IO_RELATIONS {
                api.spdk_trace_tpoint_register_relation(tpoint, GROUP.2, arg);
            }
        }
        TRACE_FILE_VAR.store(var, Ordering::Release);
        tracing::debug!(
            "RDMA_RS: trace group {} (id {:#x}) described: {} tracepoints",
            group_name(),
            GROUP.0,
            TPOINTS.len()
        );
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The length of an array field, read from the bindgen type.
    fn len_of<S, T, const N: usize>(_field: fn(&S) -> &[T; N]) -> usize {
        N
    }

    #[test]
    fn ids_fit_spdk_limits() {
        // This SPDK's limits (bindgen constants of its trace.h).
        let groups = sys::SPDK_TRACE_MAX_GROUP_ID as usize;
        let tpoints = sys::SPDK_TRACE_MAX_TPOINT_ID as usize;
        let name_len = len_of(|t: &sys::spdk_trace_tpoint| &t.name);
        let arg_name_len = len_of(|a: &sys::spdk_trace_argument| &a.name);
        let max_args = len_of(|o: &sys::spdk_trace_tpoint_opts| &o.args);
        assert!(usize::from(GROUP.0) < groups);
        for t in &TPOINTS {
            assert!(t.index < TPOINTS_PER_GROUP, "{:?}", t.name);
            assert!(usize::from(tpoint_id(t.index)) < tpoints);
            // Names are stored with their NUL.
            assert!(t.name.to_bytes().len() < name_len, "{:?} too long", t.name);
            assert!(t.args.len() <= max_args);
            for (n, _) in t.args {
                assert!(n.to_bytes().len() < arg_name_len);
            }
        }
        assert_ne!(GROUP.2, OBJECT_NONE);
    }

    #[test]
    fn every_traced_state_and_event_has_its_own_tracepoint() {
        use ReqState::*;
        let states = [
            New,
            NeedBuffer,
            HaveBuffer,
            DataTransferToControllerPending,
            TransferringHostToController { partial: false },
            ReadyToExecute,
            Executing,
            Executed,
            DataTransferToHostPending,
            ReadyToCompletePending,
            ReadyToComplete,
            TransferringControllerToHost,
            Completing,
            Completed,
        ];
        assert_eq!(state_index(Free), None);
        assert_eq!(
            state_index(TransferringHostToController { partial: true }),
            Some(4)
        );
        let events = [
            QpairEvent::Create,
            QpairEvent::Disconnect,
            QpairEvent::Destroy,
            QpairEvent::Error,
        ];
        let mut indexes: Vec<u16> = states.iter().map(|s| state_index(*s).unwrap()).collect();
        indexes.extend(events.iter().map(|e| event_index(*e)));
        // Each maps to a described tracepoint with the right shape, and no
        // two share one.
        for (i, idx) in indexes.iter().enumerate() {
            let t = TPOINTS.iter().find(|t| t.index == *idx).expect("described");
            assert_eq!(t.request, i < states.len());
            // Upstream's shapes: NEW and COMPLETED carry the queue depth.
            let ends = t.request && matches!(states[i], New | Completed);
            assert_eq!(t.args.len(), if t.request && !ends { 1 } else { 2 });
            assert_eq!(t.new_object, t.request && states[i] == New);
        }
        let mut sorted = indexes.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), TPOINTS.len());
        let mut names: Vec<&CStr> = TPOINTS.iter().map(|t| t.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), TPOINTS.len());
    }

    #[test]
    fn descriptions_match_the_table() {
        let d = descriptions();
        assert_eq!(d.len(), TPOINTS.len());
        let first = &d[0];
        assert_eq!(first.tpoint_id, tpoint_id(0));
        assert_eq!(first.object_type, GROUP.2);
        assert_eq!(first.new_object, 1);
        assert_eq!(first.args[0].type_, ARG_PTR);
        assert_eq!(first.args[1].type_, ARG_INT);
        assert!(first.args[2].name.is_null());
        assert!(
            d[1].args[1].name.is_null(),
            "RS_REQ_NEED_BUFFER: qpair only"
        );
        let last = d.last().unwrap();
        assert_eq!(last.object_type, OBJECT_NONE);
        assert_eq!(last.args[1].type_, ARG_INT);
        assert_eq!(last.args[1].size, 8);
    }

    #[test]
    fn error_codes_name_the_reason() {
        use crate::engine::{RecvId, WcStatus, WrId};
        let wc = |status| DisconnectReason::WcError {
            wr: WrId::recv(RecvId(0)),
            status,
        };
        assert_eq!(error_code(wc(WcStatus::Flushed)), Some(5));
        assert_eq!(error_code(wc(WcStatus::RetryExceeded)), Some(12));
        let codes = [
            DisconnectReason::QpFatal,
            DisconnectReason::QpInError,
            DisconnectReason::HostOverrun { recv_depth: 3 },
            DisconnectReason::PostFailed,
        ]
        .map(|r| error_code(r).expect("an error"));
        assert_eq!(codes, [0x100, 0x101, 0x102, 0x103]);
        assert_eq!(error_code(DisconnectReason::PeerDisconnected), None);
    }

    /// The only test that touches `TRACE_FILE_VAR` (tests share the process).
    #[test]
    fn the_mask_check_follows_registration_and_the_trace_file() {
        // Not registered: every tracepoint reads as off, and the calls
        // return without touching SPDK.
        assert!(!enabled(tpoint_id(0)));
        request_state(std::ptr::null(), std::ptr::null(), ReqState::New, 1);
        qpair_event(std::ptr::null(), QpairEvent::Error, 5);
        assert!(!requests_enabled());

        // Registered, no trace file (g_trace_file NULL): still off.
        let var = Box::leak(Box::new(AtomicPtr::<sys::spdk_trace_file>::new(
            std::ptr::null_mut(),
        )));
        TRACE_FILE_VAR.store(var, Ordering::Release);
        assert!(!enabled(tpoint_id(0)));

        // A trace file: only the bits of our group's mask word count.
        let mut file = trace_file::FakeFile::new();
        let group = usize::from(GROUP.0);
        file.set_mask(group, 1 << 13); // RS_REQ_COMPLETED only
        file.set_mask(group + 1, u64::MAX); // another group: ignored
        var.store(file.ptr(), Ordering::Release);
        let on: Vec<u16> = TPOINTS
            .iter()
            .map(|t| t.index)
            .filter(|i| enabled(tpoint_id(*i)))
            .collect();
        assert_eq!(on, [13]);
        assert!(requests_enabled());
        // Only qpair events on: no request state to report.
        file.set_mask(group, 1 << QP_BASE);
        var.store(file.ptr(), Ordering::Release);
        assert!(!requests_enabled());
        file.set_mask(group, u64::MAX);
        // (The pointer is taken again after each write through `file`.)
        var.store(file.ptr(), Ordering::Release);
        assert!(TPOINTS.iter().all(|t| enabled(tpoint_id(t.index))));
        // Enabled but SPDK not resolved: `record` returns without calling.
        request_state(std::ptr::null(), std::ptr::null(), ReqState::Completed, 1);
        qpair_error(std::ptr::null(), DisconnectReason::QpFatal);
        // Every slot describe() fills is free in an empty file.
        // SAFETY: the fake file is laid out as SPDK's.
        assert!(unsafe { check_free(file.ptr()) }.is_ok());

        var.store(std::ptr::null_mut(), Ordering::Release);
        TRACE_FILE_VAR.store(std::ptr::null_mut(), Ordering::Release);
        drop(file);
    }
}
