//! Queue pairs (created through a CM id, see [`super::CmId::create_qp`]).

use std::ptr::NonNull;

use rdma_sys as sys;

use super::cq::Cq;
use super::error::{Errno, Result, VerbsError};
use super::mr::Pd;
use super::srq::Srq;
use super::wr::{RecvWrList, SendWrList};

/// Requested QP sizes and attachments.
#[derive(Debug, Clone)]
pub struct QpInit<'a> {
    /// CQ for send-queue completions.
    pub send_cq: &'a Cq,
    /// CQ for receive completions.
    pub recv_cq: &'a Cq,
    /// Shared receive queue, if any (then `max_recv_wr` is ignored).
    pub srq: Option<&'a Srq>,
    /// Send-queue depth.
    pub max_send_wr: u32,
    /// Receive-queue depth.
    pub max_recv_wr: u32,
    /// SGEs per send WR.
    pub max_send_sge: u32,
    /// SGEs per receive WR.
    pub max_recv_sge: u32,
    /// Max inline payload.
    pub max_inline_data: u32,
}

/// Actual QP capabilities after creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpCaps {
    /// Send-queue depth.
    pub max_send_wr: u32,
    /// Receive-queue depth.
    pub max_recv_wr: u32,
    /// SGEs per send WR.
    pub max_send_sge: u32,
    /// SGEs per receive WR.
    pub max_recv_sge: u32,
    /// Max inline payload.
    pub max_inline_data: u32,
}

/// `ibv_qp_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum QpState {
    Reset,
    Init,
    Rtr,
    Rts,
    Sqd,
    Sqe,
    Err,
    Unknown(u32),
}

impl QpState {
    fn from_raw(v: u32) -> QpState {
        match v {
            0 => QpState::Reset,
            1 => QpState::Init,
            2 => QpState::Rtr,
            3 => QpState::Rts,
            4 => QpState::Sqd,
            5 => QpState::Sqe,
            6 => QpState::Err,
            o => QpState::Unknown(o),
        }
    }
}

/// An RC queue pair owned by its [`super::CmId`]; destroyed with
/// `rdma_destroy_qp` before the id.
pub struct Qp {
    pub(crate) ptr: NonNull<sys::ibv_qp>,
    qp_num: u32,
    caps: QpCaps,
    has_srq: bool,
    _pd: Pd,
    _send_cq: Cq,
    _recv_cq: Cq,
    _srq: Option<Srq>,
}

// SAFETY: QP verbs (post, modify, query) are thread-safe in libibverbs; the
// handle is only destroyed by the owning CmId with exclusive access.
unsafe impl Send for Qp {}
// SAFETY: see Send.
unsafe impl Sync for Qp {}

impl std::fmt::Debug for Qp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qp")
            .field("qp_num", &self.qp_num)
            .field("caps", &self.caps)
            .finish()
    }
}

impl Qp {
    pub(crate) fn new(ptr: NonNull<sys::ibv_qp>, caps: QpCaps, pd: &Pd, init: &QpInit<'_>) -> Qp {
        // SAFETY: `ptr` is the QP rdma_create_qp just created.
        let qp_num = unsafe { (*ptr.as_ptr()).qp_num };
        Qp {
            ptr,
            qp_num,
            caps,
            has_srq: init.srq.is_some(),
            _pd: pd.clone(),
            _send_cq: init.send_cq.clone(),
            _recv_cq: init.recv_cq.clone(),
            _srq: init.srq.cloned(),
        }
    }

    /// QP number (as in work completions and async events).
    pub fn qp_num(&self) -> u32 {
        self.qp_num
    }

    /// Actual capabilities.
    pub fn caps(&self) -> QpCaps {
        self.caps
    }

    /// True if attached to an SRQ.
    pub fn has_srq(&self) -> bool {
        self.has_srq
    }

    /// Post all WRs in `list` as one chain with one `ibv_post_send`.
    ///
    /// On success the list is emptied. On failure it is left intact and the
    /// error's `first_failed` names the first WR that was not posted (WRs
    /// before it were posted and will complete); the caller then clears it.
    /// Memory safety of the SGEs is the contract of how they were built (see
    /// [`super::Sge::from_raw`]).
    pub fn post_send(&self, list: &mut SendWrList) -> Result<()> {
        let head = list.link();
        if head.is_null() {
            return Ok(());
        }
        let mut bad: *mut sys::ibv_send_wr = std::ptr::null_mut();
        // SAFETY: QP alive (owned by a live CmId); `head` is a well-formed
        // chain inside `list`, borrowed for the call; the ops slot is
        // checked. SGE memory validity is the Sge constructors' contract.
        let rc = unsafe {
            let qp = self.ptr.as_ptr();
            let f = (*(*qp).context)
                .ops
                .post_send
                .ok_or(VerbsError::NoProviderOp("post_send"))?;
            f(qp, head, &mut bad)
        };
        if rc != 0 {
            let first_failed = if bad.is_null() { 0 } else { list.index_of(bad) };
            return Err(VerbsError::Post {
                call: "ibv_post_send",
                errno: Errno(rc.abs()),
                first_failed,
                count: list.len(),
            });
        }
        list.clear();
        Ok(())
    }

    /// Post all receives in `list` with one `ibv_post_recv` (QP without SRQ).
    /// Same list semantics as [`Qp::post_send`].
    pub fn post_recv(&self, list: &mut RecvWrList) -> Result<()> {
        let head = list.link();
        if head.is_null() {
            return Ok(());
        }
        let mut bad: *mut sys::ibv_recv_wr = std::ptr::null_mut();
        // SAFETY: as in `post_send`.
        let rc = unsafe {
            let qp = self.ptr.as_ptr();
            let f = (*(*qp).context)
                .ops
                .post_recv
                .ok_or(VerbsError::NoProviderOp("post_recv"))?;
            f(qp, head, &mut bad)
        };
        if rc != 0 {
            let first_failed = if bad.is_null() { 0 } else { list.index_of(bad) };
            return Err(VerbsError::Post {
                call: "ibv_post_recv",
                errno: Errno(rc.abs()),
                first_failed,
                count: list.len(),
            });
        }
        list.clear();
        Ok(())
    }

    /// Move the QP to the error state (`ibv_modify_qp(IBV_QPS_ERR)`): every
    /// outstanding WR completes with a flush error; with an SRQ the device
    /// then raises `QpLastWqeReached`.
    pub fn set_error(&self) -> Result<()> {
        // SAFETY: ibv_qp_attr is plain data; zero is valid.
        let mut attr: sys::ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = sys::ibv_qp_state::IBV_QPS_ERR;
        // SAFETY: QP alive; only the state field is selected by the mask.
        let rc = unsafe {
            sys::ibv_modify_qp(
                self.ptr.as_ptr(),
                &mut attr,
                sys::ibv_qp_attr_mask::IBV_QP_STATE.0 as i32,
            )
        };
        if rc != 0 {
            return Err(VerbsError::code("ibv_modify_qp(ERR)", rc));
        }
        Ok(())
    }

    /// Current QP state (`ibv_query_qp`).
    pub fn state(&self) -> Result<QpState> {
        // SAFETY: plain data; zero is valid.
        let mut attr: sys::ibv_qp_attr = unsafe { std::mem::zeroed() };
        // SAFETY: plain data; zero is valid.
        let mut init: sys::ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        // SAFETY: QP alive; out-parameters are valid.
        let rc = unsafe {
            sys::ibv_query_qp(
                self.ptr.as_ptr(),
                &mut attr,
                sys::ibv_qp_attr_mask::IBV_QP_STATE.0 as i32,
                &mut init,
            )
        };
        if rc != 0 {
            return Err(VerbsError::code("ibv_query_qp", rc));
        }
        Ok(QpState::from_raw(attr.qp_state))
    }
}
