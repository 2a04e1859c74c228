//! Completion channels, completion queues and typed work completions.

use std::mem::MaybeUninit;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::Arc;

use rdma_sys as sys;

use super::device::Context;
use super::error::{Errno, Result, VerbsError};
use super::fd;
use super::wr_id::{UnknownWrId, WrId};

struct CompChannelInner {
    ptr: NonNull<sys::ibv_comp_channel>,
    _ctx: Context,
}

// SAFETY: the channel is a handle around an fd; get/ack are thread-safe.
unsafe impl Send for CompChannelInner {}
// SAFETY: see Send.
unsafe impl Sync for CompChannelInner {}

impl Drop for CompChannelInner {
    fn drop(&mut self) {
        // SAFETY: every CQ using this channel holds a clone, so none remains.
        let rc = unsafe { sys::ibv_destroy_comp_channel(self.ptr.as_ptr()) };
        if rc != 0 {
            tracing::warn!(rc, "ibv_destroy_comp_channel failed");
        }
    }
}

/// A completion event channel (`ibv_comp_channel`): a pollable fd that
/// becomes readable when an armed CQ gets a completion.
#[derive(Clone)]
pub struct CompChannel {
    inner: Arc<CompChannelInner>,
}

impl std::fmt::Debug for CompChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompChannel")
            .field("fd", &self.fd())
            .finish()
    }
}

impl CompChannel {
    /// `ibv_create_comp_channel`.
    pub fn new(ctx: &Context) -> Result<CompChannel> {
        // SAFETY: the context is open.
        let p = unsafe { sys::ibv_create_comp_channel(ctx.as_ptr()) };
        let ptr = NonNull::new(p).ok_or_else(|| VerbsError::null("ibv_create_comp_channel"))?;
        Ok(CompChannel {
            inner: Arc::new(CompChannelInner {
                ptr,
                _ctx: ctx.clone(),
            }),
        })
    }

    /// The fd to poll.
    pub fn fd(&self) -> RawFd {
        // SAFETY: `fd` is set at creation and never changes.
        unsafe { (*self.inner.ptr.as_ptr()).fd }
    }

    /// Make [`CompChannel::get_event`] non-blocking.
    pub fn set_nonblocking(&self) -> Result<()> {
        fd::set_nonblocking(self.fd())
    }

    /// `ibv_get_cq_event` + `ibv_ack_cq_events(cq, 1)`: returns the
    /// [`Cq::key`] of the CQ that fired, or `None` if no event is pending on a
    /// non-blocking channel. Acking at once means a CQ can always be destroyed.
    /// The CQ is disarmed: call [`Cq::req_notify`] again, then poll it.
    pub fn get_event(&self) -> Result<Option<usize>> {
        let mut cq: *mut sys::ibv_cq = std::ptr::null_mut();
        let mut cq_ctx: *mut std::ffi::c_void = std::ptr::null_mut();
        // SAFETY: the channel is alive; out-parameters are valid.
        let rc = unsafe { sys::ibv_get_cq_event(self.inner.ptr.as_ptr(), &mut cq, &mut cq_ctx) };
        if rc != 0 {
            let errno = Errno::last();
            if errno.is_would_block() {
                return Ok(None);
            }
            return Err(VerbsError::Call {
                call: "ibv_get_cq_event",
                errno,
            });
        }
        if cq.is_null() {
            return Ok(None);
        }
        // SAFETY: the CQ reported by the channel cannot be destroyed before
        // its delivered events are acked (ibv_destroy_cq waits for that), so
        // it is alive here; ack exactly the one event just read.
        unsafe { sys::ibv_ack_cq_events(cq, 1) };
        Ok(Some(cq as usize))
    }
}

struct CqInner {
    ptr: NonNull<sys::ibv_cq>,
    ctx: Context,
    _channel: Option<CompChannel>,
}

// SAFETY: CQ verbs (poll, notify, resize) are thread-safe in libibverbs.
unsafe impl Send for CqInner {}
// SAFETY: see Send.
unsafe impl Sync for CqInner {}

impl Drop for CqInner {
    fn drop(&mut self) {
        // SAFETY: every QP using this CQ holds a clone, so none remains;
        // channel events were acked when read.
        let rc = unsafe { sys::ibv_destroy_cq(self.ptr.as_ptr()) };
        if rc != 0 {
            tracing::warn!(rc, device = %self.ctx.name(), "ibv_destroy_cq failed");
        }
    }
}

/// A completion queue (`ibv_cq`). Cheap to clone (shared with the QPs that use it).
#[derive(Clone)]
pub struct Cq {
    inner: Arc<CqInner>,
}

impl std::fmt::Debug for Cq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cq")
            .field("key", &self.key())
            .field("cqe", &self.capacity())
            .finish()
    }
}

impl Cq {
    /// `ibv_create_cq` with at least `cqe` entries, optionally attached to a
    /// completion channel.
    pub fn new(ctx: &Context, cqe: u32, channel: Option<&CompChannel>) -> Result<Cq> {
        let cqe_i = i32::try_from(cqe).map_err(|_| VerbsError::InvalidArgument {
            name: "cqe",
            value: cqe as u64,
        })?;
        let ch = channel.map_or(std::ptr::null_mut(), |c| c.inner.ptr.as_ptr());
        // SAFETY: context and channel (if any) are alive and kept alive by
        // the CqInner we build.
        let p = unsafe { sys::ibv_create_cq(ctx.as_ptr(), cqe_i, std::ptr::null_mut(), ch, 0) };
        let ptr = NonNull::new(p).ok_or_else(|| VerbsError::null("ibv_create_cq"))?;
        Ok(Cq {
            inner: Arc::new(CqInner {
                ptr,
                ctx: ctx.clone(),
                _channel: channel.cloned(),
            }),
        })
    }

    pub(crate) fn as_ptr(&self) -> *mut sys::ibv_cq {
        self.inner.ptr.as_ptr()
    }

    /// Identity of this CQ, as returned by [`CompChannel::get_event`].
    pub fn key(&self) -> usize {
        self.as_ptr() as usize
    }

    /// Actual number of entries (`cq->cqe`).
    pub fn capacity(&self) -> u32 {
        // SAFETY: `cqe` is maintained by the provider and valid while the CQ is.
        unsafe { (*self.as_ptr()).cqe.max(0) as u32 }
    }

    /// The context the CQ was created on.
    pub fn context(&self) -> &Context {
        &self.inner.ctx
    }

    /// Poll up to `out.len()` completions into `out` (no allocation);
    /// returns how many were written.
    pub fn poll(&self, out: &mut [WorkCompletion]) -> Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        let n = out.len().min(i32::MAX as usize) as i32;
        // SAFETY: the CQ and its context are alive; `WorkCompletion` is
        // repr(transparent) over ibv_wc, so `out` is a writable array of `n`
        // ibv_wc. The ops slot is checked instead of unwrapped.
        let rc = unsafe {
            let cq = self.as_ptr();
            let poll = (*(*cq).context)
                .ops
                .poll_cq
                .ok_or(VerbsError::NoProviderOp("poll_cq"))?;
            poll(cq, n, out.as_mut_ptr().cast::<sys::ibv_wc>())
        };
        if rc < 0 {
            return Err(VerbsError::code("ibv_poll_cq", -rc));
        }
        Ok(rc as usize)
    }

    /// `ibv_req_notify_cq`: arm the CQ so the next completion raises an event
    /// on its channel.
    pub fn req_notify(&self, solicited_only: bool) -> Result<()> {
        // SAFETY: CQ alive; the ops slot is checked.
        let rc = unsafe {
            let cq = self.as_ptr();
            let f = (*(*cq).context)
                .ops
                .req_notify_cq
                .ok_or(VerbsError::NoProviderOp("req_notify_cq"))?;
            f(cq, solicited_only as i32)
        };
        if rc != 0 {
            return Err(VerbsError::code("ibv_req_notify_cq", rc));
        }
        Ok(())
    }

    /// `ibv_resize_cq` (never shrinks below outstanding entries; the provider decides).
    pub fn resize(&self, cqe: u32) -> Result<()> {
        let cqe_i = i32::try_from(cqe).map_err(|_| VerbsError::InvalidArgument {
            name: "cqe",
            value: cqe as u64,
        })?;
        // SAFETY: CQ alive.
        let rc = unsafe { sys::ibv_resize_cq(self.as_ptr(), cqe_i) };
        if rc != 0 {
            return Err(VerbsError::code("ibv_resize_cq", rc));
        }
        Ok(())
    }
}

/// `ibv_wc_status`, with unknown values preserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum WcStatus {
    Success,
    LocLenErr,
    LocQpOpErr,
    LocEecOpErr,
    LocProtErr,
    WrFlushErr,
    MwBindErr,
    BadRespErr,
    LocAccessErr,
    RemInvReqErr,
    RemAccessErr,
    RemOpErr,
    RetryExcErr,
    RnrRetryExcErr,
    LocRddViolErr,
    RemInvRdReqErr,
    RemAbortErr,
    InvEecnErr,
    InvEecStateErr,
    FatalErr,
    RespTimeoutErr,
    GeneralErr,
    /// A value not known to this crate.
    Other(u32),
}

const WC_STATUS_TABLE: [WcStatus; 22] = [
    WcStatus::Success,
    WcStatus::LocLenErr,
    WcStatus::LocQpOpErr,
    WcStatus::LocEecOpErr,
    WcStatus::LocProtErr,
    WcStatus::WrFlushErr,
    WcStatus::MwBindErr,
    WcStatus::BadRespErr,
    WcStatus::LocAccessErr,
    WcStatus::RemInvReqErr,
    WcStatus::RemAccessErr,
    WcStatus::RemOpErr,
    WcStatus::RetryExcErr,
    WcStatus::RnrRetryExcErr,
    WcStatus::LocRddViolErr,
    WcStatus::RemInvRdReqErr,
    WcStatus::RemAbortErr,
    WcStatus::InvEecnErr,
    WcStatus::InvEecStateErr,
    WcStatus::FatalErr,
    WcStatus::RespTimeoutErr,
    WcStatus::GeneralErr,
];

impl WcStatus {
    /// Decode the C value.
    pub fn from_raw(v: u32) -> WcStatus {
        WC_STATUS_TABLE
            .get(v as usize)
            .copied()
            .unwrap_or(WcStatus::Other(v))
    }

    /// The C value.
    pub fn to_raw(self) -> u32 {
        match self {
            WcStatus::Other(v) => v,
            s => WC_STATUS_TABLE.iter().position(|x| *x == s).unwrap_or(0) as u32,
        }
    }

    /// True for `IBV_WC_WR_FLUSH_ERR` (the QP entered the error state earlier).
    pub fn is_flush(self) -> bool {
        self == WcStatus::WrFlushErr
    }
}

impl std::fmt::Display for WcStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} ({})", self, self.to_raw())
    }
}

/// `ibv_wc_opcode` of a successful completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum WcOpcode {
    Send,
    RdmaWrite,
    RdmaRead,
    CompSwap,
    FetchAdd,
    BindMw,
    LocalInv,
    Recv,
    RecvRdmaWithImm,
    /// A value not known to this crate.
    Other(u32),
}

impl WcOpcode {
    /// Decode the C value.
    pub fn from_raw(v: u32) -> WcOpcode {
        match v {
            0 => WcOpcode::Send,
            1 => WcOpcode::RdmaWrite,
            2 => WcOpcode::RdmaRead,
            3 => WcOpcode::CompSwap,
            4 => WcOpcode::FetchAdd,
            5 => WcOpcode::BindMw,
            6 => WcOpcode::LocalInv,
            128 => WcOpcode::Recv,
            129 => WcOpcode::RecvRdmaWithImm,
            other => WcOpcode::Other(other),
        }
    }
}

const IBV_WC_WITH_IMM: u32 = 1 << 1;
const IBV_WC_WITH_INV: u32 = 1 << 3;

/// One work completion (`ibv_wc`), filled in place by [`Cq::poll`].
#[repr(transparent)]
pub struct WorkCompletion(sys::ibv_wc);

impl Clone for WorkCompletion {
    fn clone(&self) -> WorkCompletion {
        // SAFETY: ibv_wc is plain data (integers and a union of integers);
        // a bitwise copy is a valid value.
        WorkCompletion(unsafe { std::ptr::read(&self.0) })
    }
}

impl Default for WorkCompletion {
    fn default() -> WorkCompletion {
        WorkCompletion::EMPTY
    }
}

impl std::fmt::Debug for WorkCompletion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkCompletion")
            .field("wr_id", &self.wr_id())
            .field("status", &self.status())
            .field("opcode", &self.opcode())
            .field("byte_len", &self.byte_len())
            .field("qp_num", &self.qp_num())
            .finish()
    }
}

impl WorkCompletion {
    /// A zeroed entry, to initialise poll buffers.
    // SAFETY: all-zero is a valid ibv_wc (plain integers and an integer union).
    pub const EMPTY: WorkCompletion =
        WorkCompletion(unsafe { MaybeUninit::zeroed().assume_init() });

    /// A completion built by hand (tests, simulations).
    pub fn synthetic(
        wr_id: u64,
        status: WcStatus,
        opcode: WcOpcode,
        byte_len: u32,
        qp_num: u32,
    ) -> WorkCompletion {
        let mut wc = WorkCompletion::EMPTY;
        wc.0.wr_id = wr_id;
        wc.0.status = status.to_raw();
        wc.0.opcode = match opcode {
            WcOpcode::Send => 0,
            WcOpcode::RdmaWrite => 1,
            WcOpcode::RdmaRead => 2,
            WcOpcode::CompSwap => 3,
            WcOpcode::FetchAdd => 4,
            WcOpcode::BindMw => 5,
            WcOpcode::LocalInv => 6,
            WcOpcode::Recv => 128,
            WcOpcode::RecvRdmaWithImm => 129,
            WcOpcode::Other(v) => v,
        };
        wc.0.byte_len = byte_len;
        wc.0.qp_num = qp_num;
        wc
    }

    /// The raw wr_id.
    pub fn raw_wr_id(&self) -> u64 {
        self.0.wr_id
    }

    /// The typed WR id — the only way completions should be dispatched.
    pub fn wr_id(&self) -> std::result::Result<WrId, UnknownWrId> {
        WrId::from_raw(self.0.wr_id)
    }

    /// Completion status.
    pub fn status(&self) -> WcStatus {
        WcStatus::from_raw(self.0.status)
    }

    /// The raw `ibv_wc_status` value ([`WcStatus::to_raw`] of
    /// [`WorkCompletion::status`]).
    #[inline]
    pub fn raw_status(&self) -> u32 {
        self.0.status
    }

    /// True when the status is success.
    pub fn is_success(&self) -> bool {
        self.0.status == 0
    }

    /// The opcode — `None` for error completions, where it is undefined.
    pub fn opcode(&self) -> Option<WcOpcode> {
        self.is_success().then(|| WcOpcode::from_raw(self.0.opcode))
    }

    /// Bytes received (RECV) or transferred.
    pub fn byte_len(&self) -> u32 {
        self.0.byte_len
    }

    /// The local QP number.
    pub fn qp_num(&self) -> u32 {
        self.0.qp_num
    }

    /// Vendor error syndrome.
    pub fn vendor_err(&self) -> u32 {
        self.0.vendor_err
    }

    /// The rkey the peer invalidated (SEND with invalidate), if any.
    pub fn invalidated_rkey(&self) -> Option<u32> {
        // SAFETY: reading a u32 from a union of two u32s (any bits are valid).
        let v = unsafe { self.0.imm_data_invalidated_rkey_union.invalidated_rkey };
        (self.is_success() && self.0.wc_flags & IBV_WC_WITH_INV != 0).then_some(v)
    }

    /// Immediate data (network byte order), if any.
    pub fn imm_data(&self) -> Option<u32> {
        // SAFETY: reading a u32 from a union of two u32s (any bits are valid).
        let v = unsafe { self.0.imm_data_invalidated_rkey_union.imm_data };
        (self.is_success() && self.0.wc_flags & IBV_WC_WITH_IMM != 0).then_some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verbs::WrKind;

    #[test]
    fn status_round_trip() {
        for v in 0..30u32 {
            assert_eq!(WcStatus::from_raw(v).to_raw(), v);
        }
        assert_eq!(WcStatus::from_raw(12), WcStatus::RetryExcErr);
        assert!(WcStatus::from_raw(5).is_flush());
    }

    #[test]
    fn error_completion_hides_opcode() {
        let ok = WorkCompletion::synthetic(
            WrId::data(2, 3).to_raw(),
            WcStatus::Success,
            WcOpcode::RdmaRead,
            4096,
            7,
        );
        assert_eq!(ok.opcode(), Some(WcOpcode::RdmaRead));
        let bad = WorkCompletion::synthetic(
            WrId::data(2, 3).to_raw(),
            WcStatus::RetryExcErr,
            WcOpcode::Recv,
            0,
            7,
        );
        assert_eq!(
            bad.opcode(),
            None,
            "error completions must be dispatched by wr_id"
        );
        assert_eq!(bad.wr_id().unwrap().kind(), WrKind::Data);
        assert_eq!(bad.clone().qp_num(), 7);
    }

    #[test]
    fn layout_is_ibv_wc() {
        assert_eq!(
            std::mem::size_of::<WorkCompletion>(),
            std::mem::size_of::<sys::ibv_wc>()
        );
        assert_eq!(std::mem::size_of::<sys::ibv_wc>(), 48);
    }
}
