//! RC queue pairs: creation, the state machine, receive posting and send posting (which runs
//! the send-queue engine synchronously, see `engine`).

use crate::cq::{self, CqWrap};
use crate::engine::{self, SendWr};
use crate::pd::pd_id;
use crate::runtime::{self, Runtime};
use crate::srq::SrqWrap;
use crate::util::{set_errno, SharedLock};
use softrdma_abi::fabric::{Counter, QpRec, RecvWqe, WqeSge, MAX_QPS, MAX_RECV_SGE};
use softrdma_abi::verbs::*;
use std::collections::VecDeque;
use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Send-queue state (private to the owner).
pub(crate) struct Sq {
    /// WRs not yet executed, in post order.
    pub pending: VecDeque<SendWr>,
    /// Set while the head WR waits (RNR or peer not ready).
    pub stall: Option<engine::Stall>,
    /// Per-opcode count of posted WRs (fault injection "Nth WR of an opcode").
    pub op_counts: [u64; 16],
    /// Total WRs posted.
    pub posted: u64,
}

/// Private wrapper of a QP; `qp` must stay first.
#[repr(C)]
pub(crate) struct QpWrap {
    pub qp: ibv_qp,
    pub slot: u32,
    pub qpn: u32,
    pub rec: &'static QpRec,
    pub send_cq: u32,
    pub recv_cq: u32,
    pub srq: *mut SrqWrap,
    pub pd: u32,
    pub sq_sig_all: bool,
    pub cap: ibv_qp_cap,
    /// 1-based creation ordinal in this process (fault filter `qp=#N`).
    pub seq: u32,
    pub rq: *mut RecvWqe,
    pub rq_cap: u32,
    pub sq: Mutex<Sq>,
    pub attr: Mutex<ibv_qp_attr>,
    pub stalled: AtomicBool,
    pub last_wqe_sent: AtomicBool,
}

// SAFETY: all mutable state is behind Mutex/atomics; raw pointers point to process-lifetime or
// QP-lifetime allocations only touched under the documented locks.
unsafe impl Send for QpWrap {}
// SAFETY: as above.
unsafe impl Sync for QpWrap {}

/// Number of local QPs whose send queue is stalled (RNR / peer not ready).
pub(crate) static STALLED_QPS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl QpWrap {
    /// Mark the send queue stalled or not (keeps [`STALLED_QPS`] exact).
    pub(crate) fn set_stalled(&self, on: bool) {
        if self.stalled.swap(on, Ordering::AcqRel) != on {
            if on {
                STALLED_QPS.fetch_add(1, Ordering::AcqRel);
            } else {
                STALLED_QPS.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

/// Give stalled send queues whose send CQ is `cq_slot` a retry (called from an empty
/// `ibv_poll_cq`, so busy-polling applications make progress without the event thread).
pub(crate) fn progress_stalled(rt: &Runtime, cq_slot: u32) {
    if STALLED_QPS.load(Ordering::Acquire) == 0 {
        return;
    }
    let Ok(g) = rt.qps.try_lock() else { return };
    for &p in g.values() {
        // SAFETY: registered QPs are live while the registry lock is held.
        let w = unsafe { &*(p as *const QpWrap) };
        if w.send_cq == cq_slot && w.stalled.load(Ordering::Relaxed) {
            if let Ok(mut sq) = w.sq.try_lock() {
                engine::run(rt, w, &mut sq);
            }
        }
    }
}

/// # Safety
/// `qp` must be a live QP of ours.
pub(crate) unsafe fn wrap<'a>(qp: *mut ibv_qp) -> &'a QpWrap {
    // SAFETY: every ibv_qp we hand out is the first field of a QpWrap.
    unsafe { &*(qp as *const QpWrap) }
}

fn alloc_rq(rt: &Runtime, cap: usize) -> *mut RecvWqe {
    rt.alloc_ring::<RecvWqe>(cap)
}

pub(crate) unsafe extern "C" fn create_qp(
    pd: *mut ibv_pd,
    ia: *mut ibv_qp_init_attr,
) -> *mut ibv_qp {
    let Some(rt) = runtime::get() else {
        set_errno(libc::ENODEV);
        return std::ptr::null_mut();
    };
    if pd.is_null() || ia.is_null() {
        set_errno(libc::EINVAL);
        return std::ptr::null_mut();
    }
    // SAFETY: pd is a live PD of ours, so its context is live too.
    if unsafe { crate::device::gone((*pd).context) } {
        set_errno(libc::EIO);
        return std::ptr::null_mut();
    }
    if let Some(e) = rt.faults.on_create(crate::faults::CreateObj::Qp) {
        set_errno(e);
        return std::ptr::null_mut();
    }
    // SAFETY: ia is the caller's init attr.
    let a = unsafe { &mut *ia };
    if a.qp_type != IBV_QPT_RC && a.qp_type != IBV_QPT_UC {
        crate::log::warn(&format!(
            "ibv_create_qp: QP type {} not supported (RC only)",
            a.qp_type
        ));
        set_errno(libc::EOPNOTSUPP);
        return std::ptr::null_mut();
    }
    if a.send_cq.is_null() || a.recv_cq.is_null() {
        set_errno(libc::EINVAL);
        return std::ptr::null_mut();
    }
    let c = &mut a.cap;
    if c.max_send_wr > crate::device::MAX_QP_WR
        || c.max_recv_wr > crate::device::MAX_QP_WR
        || c.max_send_sge > crate::device::MAX_SGE
        || c.max_recv_sge > MAX_RECV_SGE as u32
        || c.max_inline_data > crate::device::MAX_INLINE
    {
        set_errno(libc::EINVAL);
        return std::ptr::null_mut();
    }
    c.max_send_wr = c.max_send_wr.max(1);
    c.max_send_sge = c.max_send_sge.max(1);
    c.max_inline_data = c.max_inline_data.max(256);
    if a.srq.is_null() {
        c.max_recv_wr = c.max_recv_wr.max(1);
        c.max_recv_sge = c.max_recv_sge.max(1);
    } else {
        c.max_recv_wr = 0;
        c.max_recv_sge = 0;
    }
    let f = &rt.fabric;
    let Some(slot) = rt.alloc_slot(MAX_QPS, &f.header().qp_hint, |i| &f.qp(i).owner) else {
        set_errno(libc::ENOMEM);
        return std::ptr::null_mut();
    };
    let rec = f.qp(slot);
    let mut gen = (rec.generation.load(Ordering::Relaxed) % 255) + 1;
    if gen == 0 {
        gen = 1;
    }
    rec.generation.store(gen, Ordering::Relaxed);
    let qpn = (gen << 16) | slot as u32;
    let rq_cap = c.max_recv_wr as usize;
    let rq = if a.srq.is_null() {
        alloc_rq(rt, rq_cap)
    } else {
        std::ptr::null_mut()
    };
    // SAFETY: pd, CQs and SRQ are live objects of ours.
    let (pdid, scq, rcq) = unsafe {
        (
            pd_id(pd),
            (*(a.send_cq as *const CqWrap)).slot,
            (*(a.recv_cq as *const CqWrap)).slot,
        )
    };
    rec.state.store(IBV_QPS_RESET, Ordering::Relaxed);
    rec.qp_type.store(a.qp_type, Ordering::Relaxed);
    rec.access.store(0, Ordering::Relaxed);
    rec.pd.store(pdid, Ordering::Relaxed);
    rec.peer_qpn.store(0, Ordering::Relaxed);
    // SAFETY: a.srq, if set, is a live SRQ of ours.
    let srq_ref = if a.srq.is_null() {
        0
    } else {
        // SAFETY: a.srq is a live SRQ of ours.
        (unsafe { (*(a.srq as *const SrqWrap)).slot }) + 1
    };
    rec.srq.store(srq_ref, Ordering::Relaxed);
    rec.recv_cq.store(rcq, Ordering::Relaxed);
    rec.delivering.store(0, Ordering::Relaxed);
    rec.rq_lock.store(0, Ordering::Relaxed);
    rec.rq_head.store(0, Ordering::Relaxed);
    rec.rq_tail.store(0, Ordering::Relaxed);
    rec.rq_addr.store(rq as u64, Ordering::Relaxed);
    rec.rq_cap.store(rq_cap as u32, Ordering::Relaxed);
    rec.rnr_waiter.store(0, Ordering::Relaxed);
    rec.qpn.store(qpn, Ordering::Release);
    let mut qp: ibv_qp = Default::default();
    // SAFETY: pd is live.
    qp.context = unsafe { (*pd).context };
    qp.qp_context = a.qp_context;
    qp.pd = pd;
    qp.send_cq = a.send_cq;
    qp.recv_cq = a.recv_cq;
    qp.srq = a.srq;
    qp.handle = qpn;
    qp.qp_num = qpn;
    qp.state = IBV_QPS_RESET;
    qp.qp_type = a.qp_type;
    let seq = rt.qp_seq.fetch_add(1, Ordering::Relaxed) + 1;
    let mut attr: ibv_qp_attr = Default::default();
    attr.qp_state = IBV_QPS_RESET;
    attr.cap = *c;
    let w = Box::into_raw(Box::new(QpWrap {
        qp,
        slot: slot as u32,
        qpn,
        rec,
        send_cq: scq,
        recv_cq: rcq,
        srq: a.srq as *mut SrqWrap,
        pd: pdid,
        sq_sig_all: a.sq_sig_all != 0,
        cap: *c,
        seq,
        rq,
        rq_cap: rq_cap as u32,
        sq: Mutex::new(Sq {
            pending: VecDeque::new(),
            stall: None,
            op_counts: [0; 16],
            posted: 0,
        }),
        attr: Mutex::new(attr),
        stalled: AtomicBool::new(false),
        last_wqe_sent: AtomicBool::new(false),
    }));
    // SAFETY: w is a fresh allocation.
    unsafe {
        libc::pthread_mutex_init(
            &mut (*w).qp.mutex as *mut _ as *mut libc::pthread_mutex_t,
            std::ptr::null(),
        );
        libc::pthread_cond_init(
            &mut (*w).qp.cond as *mut _ as *mut libc::pthread_cond_t,
            std::ptr::null(),
        );
    }
    rt.qps
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(slot as u32, w as usize);
    rt.count(Counter::Qps, 1);
    crate::log::debug(&format!("created QP {qpn:#x} (#{seq}) slot {slot}"));
    w as *mut ibv_qp
}

fn required(cur: u32, new: u32) -> Option<(u32, u32)> {
    // (required mask, allowed optional mask) for RC, after IBV_QP_STATE.
    const S: u32 = IBV_QP_STATE;
    let init_opt = IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS;
    let rts_opt = IBV_QP_ACCESS_FLAGS
        | IBV_QP_MIN_RNR_TIMER
        | IBV_QP_ALT_PATH
        | IBV_QP_PATH_MIG_STATE
        | IBV_QP_CUR_STATE
        | IBV_QP_TIMEOUT
        | IBV_QP_RETRY_CNT
        | IBV_QP_RNR_RETRY
        | IBV_QP_MAX_QP_RD_ATOMIC
        | IBV_QP_SQ_PSN;
    match (cur, new) {
        (_, IBV_QPS_RESET) | (_, IBV_QPS_ERR) => Some((S, !0)),
        (IBV_QPS_RESET, IBV_QPS_INIT) => {
            Some((S | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS, 0))
        }
        (IBV_QPS_INIT, IBV_QPS_INIT) => Some((S, init_opt)),
        (IBV_QPS_INIT, IBV_QPS_RTR) => Some((
            S | IBV_QP_AV
                | IBV_QP_PATH_MTU
                | IBV_QP_DEST_QPN
                | IBV_QP_RQ_PSN
                | IBV_QP_MAX_DEST_RD_ATOMIC
                | IBV_QP_MIN_RNR_TIMER,
            init_opt | IBV_QP_ALT_PATH,
        )),
        (IBV_QPS_RTR, IBV_QPS_RTS) => Some((
            S | IBV_QP_SQ_PSN
                | IBV_QP_TIMEOUT
                | IBV_QP_RETRY_CNT
                | IBV_QP_RNR_RETRY
                | IBV_QP_MAX_QP_RD_ATOMIC,
            rts_opt,
        )),
        (IBV_QPS_RTS, IBV_QPS_RTS) | (IBV_QPS_SQD, IBV_QPS_RTS) | (IBV_QPS_SQE, IBV_QPS_RTS) => {
            Some((S, rts_opt))
        }
        (IBV_QPS_RTS, IBV_QPS_SQD) => Some((S, IBV_QP_EN_SQD_ASYNC_NOTIFY)),
        (IBV_QPS_SQD, IBV_QPS_SQD) => Some((S, rts_opt | IBV_QP_AV | IBV_QP_MAX_DEST_RD_ATOMIC)),
        _ => None,
    }
}

/// UC QPs use the RC table minus the read/atomic attributes.
fn uc_adjust(req: u32) -> u32 {
    req & !(IBV_QP_MAX_DEST_RD_ATOMIC
        | IBV_QP_MIN_RNR_TIMER
        | IBV_QP_TIMEOUT
        | IBV_QP_RETRY_CNT
        | IBV_QP_RNR_RETRY
        | IBV_QP_MAX_QP_RD_ATOMIC)
}

pub(crate) unsafe extern "C" fn modify_qp(
    qp: *mut ibv_qp,
    attr: *mut ibv_qp_attr,
    mask: c_int,
) -> c_int {
    if qp.is_null() || attr.is_null() {
        return libc::EINVAL;
    }
    let Some(rt) = runtime::get() else {
        return libc::EINVAL;
    };
    // SAFETY: qp is a live QP of ours, so its context is live too.
    if unsafe { crate::device::gone((*qp).context) } {
        return libc::EIO;
    }
    // SAFETY: qp is a live QP of ours; attr is the caller's struct.
    let (w, a) = unsafe { (wrap(qp), &*attr) };
    let mask = mask as u32;
    let cur = w.rec.state.load(Ordering::Acquire);
    let new = if mask & IBV_QP_STATE != 0 {
        a.qp_state
    } else {
        cur
    };
    if mask & IBV_QP_STATE == 0 {
        // Attribute-only modify (e.g. qperf's MIN_RNR_TIMER on an RTS QP): store and accept.
        if cur == IBV_QPS_RESET {
            return libc::EINVAL;
        }
    } else {
        let Some((req, opt)) = required(cur, new) else {
            crate::log::debug(&format!(
                "QP {:#x}: invalid transition {cur} -> {new}",
                w.qpn
            ));
            return libc::EINVAL;
        };
        let req = if w.qp.qp_type == IBV_QPT_UC {
            uc_adjust(req)
        } else {
            req
        };
        if mask & req != req
            || mask & !(req | opt | IBV_QP_CUR_STATE) != 0
                && new != IBV_QPS_RESET
                && new != IBV_QPS_ERR
        {
            crate::log::debug(&format!(
                "QP {:#x}: transition {cur} -> {new} with attr mask {mask:#x}, required {req:#x}",
                w.qpn
            ));
            return libc::EINVAL;
        }
    }
    if mask & IBV_QP_MAX_QP_RD_ATOMIC != 0 && a.max_rd_atomic as u32 > crate::device::MAX_RD_ATOM
        || mask & IBV_QP_MAX_DEST_RD_ATOMIC != 0
            && a.max_dest_rd_atomic as u32 > crate::device::MAX_RD_ATOM
        || mask & IBV_QP_PORT != 0 && a.port_num != 1
    {
        return libc::EINVAL;
    }
    {
        let mut s = w.attr.lock().unwrap_or_else(|e| e.into_inner());
        macro_rules! take {
            ($bit:expr, $($f:ident),+) => {
                if mask & $bit != 0 {
                    $( s.$f = a.$f; )+
                }
            };
        }
        take!(IBV_QP_PKEY_INDEX, pkey_index);
        take!(IBV_QP_PORT, port_num);
        take!(IBV_QP_ACCESS_FLAGS, qp_access_flags);
        take!(IBV_QP_AV, ah_attr);
        take!(IBV_QP_PATH_MTU, path_mtu);
        take!(IBV_QP_DEST_QPN, dest_qp_num);
        take!(IBV_QP_RQ_PSN, rq_psn);
        take!(IBV_QP_SQ_PSN, sq_psn);
        take!(IBV_QP_MAX_DEST_RD_ATOMIC, max_dest_rd_atomic);
        take!(IBV_QP_MAX_QP_RD_ATOMIC, max_rd_atomic);
        take!(IBV_QP_MIN_RNR_TIMER, min_rnr_timer);
        take!(IBV_QP_TIMEOUT, timeout);
        take!(IBV_QP_RETRY_CNT, retry_cnt);
        take!(IBV_QP_RNR_RETRY, rnr_retry);
        take!(
            IBV_QP_ALT_PATH,
            alt_ah_attr,
            alt_pkey_index,
            alt_port_num,
            alt_timeout
        );
        take!(IBV_QP_PATH_MIG_STATE, path_mig_state);
        take!(IBV_QP_QKEY, qkey);
        s.qp_state = new;
        if mask & IBV_QP_ACCESS_FLAGS != 0 {
            w.rec.access.store(a.qp_access_flags, Ordering::Relaxed);
        }
        if mask & IBV_QP_MAX_DEST_RD_ATOMIC != 0 {
            w.rec
                .max_dest_rd_atomic
                .store(a.max_dest_rd_atomic as u32, Ordering::Relaxed);
        }
        if mask & IBV_QP_DEST_QPN != 0 {
            w.rec.peer_qpn.store(a.dest_qp_num, Ordering::Relaxed);
        }
    }
    if mask & IBV_QP_STATE != 0 {
        match new {
            IBV_QPS_ERR => {
                let mut sq = w.sq.lock().unwrap_or_else(|e| e.into_inner());
                engine::enter_error(rt, w, &mut sq, "ibv_modify_qp(ERR)");
            }
            IBV_QPS_RESET => {
                let mut sq = w.sq.lock().unwrap_or_else(|e| e.into_inner());
                drop_silently(rt, w, &mut sq, IBV_QPS_RESET);
                let _l = SharedLock::lock(&w.rec.rq_lock, rt.pid);
                let t = w.rec.rq_tail.load(Ordering::Relaxed);
                w.rec.rq_head.store(t, Ordering::Relaxed);
                w.rec.peer_qpn.store(0, Ordering::Relaxed);
                w.last_wqe_sent.store(false, Ordering::Relaxed);
            }
            s => w.rec.state.store(s, Ordering::SeqCst),
        }
        // SAFETY: qp is live; rdma-core updates qp->state on successful modify.
        unsafe { (*qp).state = new };
    }
    0
}

/// Report `wr` as the failed WR of a post call.
///
/// # Safety
/// `bad` must be NULL or writable.
pub(crate) unsafe fn set_bad<T>(bad: *mut *mut T, wr: *mut T) {
    if !bad.is_null() {
        // SAFETY: per the contract.
        unsafe { *bad = wr };
    }
}

/// Device removal: every local QP leaves the fabric as if its hardware were gone: the record
/// goes to ERR (peers' WRs to it are retried until their transport timeout, then
/// `RETRY_EXC_ERR`), nothing is delivered into it any more and its unexecuted send WRs are
/// dropped without completions (a removed device produces none).
pub(crate) fn detach_all(rt: &Runtime) {
    let g = rt.qps.lock().unwrap_or_else(|e| e.into_inner());
    for &p in g.values() {
        // SAFETY: registered QPs are live while the registry lock is held.
        let w = unsafe { &*(p as *const QpWrap) };
        let mut sq = w.sq.lock().unwrap_or_else(|e| e.into_inner());
        drop_silently(rt, w, &mut sq, IBV_QPS_ERR);
    }
}

/// Move the QP to `state` (RESET, or ERR for a removed device) with no completion for its
/// unexecuted send WRs: peers stop delivering (waited for) and the send queue is emptied.
fn drop_silently(rt: &Runtime, w: &QpWrap, sq: &mut Sq, state: u32) {
    w.rec.state.store(state, Ordering::SeqCst);
    wait_no_delivery(w.rec);
    rt.count(Counter::OutstandingSends, -(sq.pending.len() as i64));
    sq.pending.clear();
    sq.stall = None;
    w.set_stalled(false);
}

/// Wait (bounded) until no peer is in the middle of delivering into this QP.
pub(crate) fn wait_no_delivery(rec: &QpRec) {
    let t0 = Instant::now();
    while rec.delivering.load(Ordering::SeqCst) != 0 && t0.elapsed() < Duration::from_millis(500) {
        std::thread::yield_now();
    }
}

pub(crate) unsafe extern "C" fn query_qp(
    qp: *mut ibv_qp,
    attr: *mut ibv_qp_attr,
    _mask: c_int,
    init: *mut ibv_qp_init_attr,
) -> c_int {
    if qp.is_null() || attr.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: qp is a live QP of ours, so its context is live too.
    if unsafe { crate::device::gone((*qp).context) } {
        return libc::EIO;
    }
    // SAFETY: qp is live; attr/init are the caller's out structs.
    unsafe {
        let w = wrap(qp);
        let mut s = *w.attr.lock().unwrap_or_else(|e| e.into_inner());
        s.qp_state = w.rec.state.load(Ordering::Acquire);
        s.cur_qp_state = s.qp_state;
        s.cap = w.cap;
        *attr = s;
        (*qp).state = s.qp_state;
        if !init.is_null() {
            let i = &mut *init;
            i.qp_context = (*qp).qp_context;
            i.send_cq = (*qp).send_cq;
            i.recv_cq = (*qp).recv_cq;
            i.srq = (*qp).srq;
            i.cap = w.cap;
            i.qp_type = (*qp).qp_type;
            i.sq_sig_all = w.sq_sig_all as c_int;
        }
    }
    0
}

pub(crate) unsafe extern "C" fn query_qp_data_in_order(
    _qp: *mut ibv_qp,
    _op: u32,
    _flags: u32,
) -> c_int {
    // Data of one RC WR is written in address order and before its completion: in order.
    1
}

pub(crate) unsafe extern "C" fn destroy_qp(qp: *mut ibv_qp) -> c_int {
    if qp.is_null() {
        return libc::EINVAL;
    }
    let Some(rt) = runtime::get() else {
        return libc::EINVAL;
    };
    // SAFETY: qp is live.
    let slot = unsafe { wrap(qp).slot };
    rt.qps
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&slot);
    // SAFETY: qp was created by create_qp; it is no longer registered, so only this thread uses it.
    let w = unsafe { Box::from_raw(qp as *mut QpWrap) };
    w.rec.state.store(IBV_QPS_RESET, Ordering::SeqCst);
    w.rec.qpn.store(0, Ordering::SeqCst);
    wait_no_delivery(w.rec);
    {
        let _l = SharedLock::lock(&w.rec.rq_lock, rt.pid);
        w.rec.rq_addr.store(0, Ordering::Relaxed);
        w.rec.rq_cap.store(0, Ordering::Relaxed);
    }
    w.set_stalled(false);
    // No completion of a destroyed QP is returned afterwards (SRQ receives excepted).
    let has_srq = !w.srq.is_null();
    let purged = if w.recv_cq == w.send_cq {
        cq::purge_qp(rt, w.send_cq, w.qpn, has_srq)
    } else {
        cq::purge_qp(rt, w.send_cq, w.qpn, false) + cq::purge_qp(rt, w.recv_cq, w.qpn, has_srq)
    };
    if purged > 0 {
        crate::log::debug(&format!(
            "QP {:#x}: {purged} unpolled completions purged on destroy",
            w.qpn
        ));
    }
    // Nor any async event: unread events naming this QP go with it, as in the kernel.
    // SAFETY: the QP's context outlives its QPs (verbs rule).
    let ctx = unsafe { crate::device::ctx_wrap(w.qp.context) };
    let dropped = ctx.async_q.purge_qp(qp);
    if dropped > 0 {
        crate::log::debug(&format!(
            "QP {:#x}: {dropped} unread async events dropped on destroy",
            w.qpn
        ));
    }
    let pending = w.sq.lock().unwrap_or_else(|e| e.into_inner()).pending.len();
    rt.count(Counter::OutstandingSends, -(pending as i64));
    w.rec.owner.store(0, Ordering::Release);
    if !w.rq.is_null() {
        // SAFETY: the ring was allocated by alloc_rq with rq_cap entries and is unreachable now.
        unsafe { rt.free_ring(w.rq, w.rq_cap as usize) };
    }
    rt.count(Counter::Qps, -1);
    0
}

/// Push a completion for a WR of this QP to its send CQ (or recv CQ when `recv`).
pub(crate) fn complete(rt: &Runtime, w: &QpWrap, recv: bool, wc: &ibv_wc) {
    let slot = if recv { w.recv_cq } else { w.send_cq };
    if wc.status == IBV_WC_WR_FLUSH_ERR && rt.faults.lose_flush(w.qpn, w.seq, wc.wr_id) {
        return;
    }
    if let Err(e) = cq::push(rt, slot, rt.pid, wc) {
        crate::log::warn(&format!(
            "QP {:#x}: completion wr_id {:#x} lost: {e:?}",
            w.qpn, wc.wr_id
        ));
    }
}

/// A completion with the fields every CQE carries.
pub(crate) fn wc(w: &QpWrap, wr_id: u64, status: u32, opcode: u32, byte_len: u32) -> ibv_wc {
    let mut c: ibv_wc = Default::default();
    c.wr_id = wr_id;
    c.status = status;
    c.opcode = opcode;
    c.byte_len = byte_len;
    c.qp_num = w.qpn;
    c.slid = crate::device::PORT_LID;
    c.vendor_err = if status == IBV_WC_SUCCESS || status == IBV_WC_WR_FLUSH_ERR {
        0
    } else {
        0x100 + status
    };
    c
}

pub(crate) unsafe extern "C" fn post_recv(
    qp: *mut ibv_qp,
    wr: *mut ibv_recv_wr,
    bad: *mut *mut ibv_recv_wr,
) -> c_int {
    let Some(rt) = runtime::get() else {
        return libc::EINVAL;
    };
    if qp.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: qp is a live QP of ours, so its context is live too.
    if unsafe { crate::device::gone((*qp).context) } {
        // SAFETY: bad is NULL or the caller's out pointer.
        unsafe { set_bad(bad, wr) };
        return libc::EIO;
    }
    // SAFETY: qp is live.
    let w = unsafe { wrap(qp) };
    let mut cur = wr;
    let mut err = 0;
    let mut posted = 0i64;
    while !cur.is_null() {
        // SAFETY: cur walks the caller's WR chain.
        let r = unsafe { &*cur };
        let state = w.rec.state.load(Ordering::Acquire);
        if !w.srq.is_null()
            || state == IBV_QPS_RESET
            || r.num_sge < 0
            || r.num_sge as u32 > w.cap.max_recv_sge
        {
            err = libc::EINVAL;
            break;
        }
        if state == IBV_QPS_ERR {
            complete(
                rt,
                w,
                true,
                &wc(w, r.wr_id, IBV_WC_WR_FLUSH_ERR, IBV_WC_RECV, 0),
            );
            posted += 1;
            cur = r.next;
            continue;
        }
        // SAFETY: r.num_sge was checked against max_recv_sge above and sg_list has
        // num_sge entries (the caller's ibv_post_recv contract).
        let wqe = unsafe { recv_wqe_from_wr(r) };
        let _l = SharedLock::lock(&w.rec.rq_lock, rt.pid);
        let head = w.rec.rq_head.load(Ordering::Acquire);
        let tail = w.rec.rq_tail.load(Ordering::Relaxed);
        if tail - head >= w.rq_cap as u64 {
            err = libc::ENOMEM;
            break;
        }
        // SAFETY: rq has rq_cap entries; we hold the RQ lock, so no peer reads this slot now.
        unsafe { *w.rq.add((tail % w.rq_cap as u64) as usize) = wqe };
        w.rec.rq_tail.store(tail + 1, Ordering::Release);
        posted += 1;
        cur = r.next;
    }
    rt.count(Counter::PostedRecvs, posted);
    kick_waiter(rt, w.rec);
    if err != 0 && !bad.is_null() {
        // SAFETY: bad is the caller's out pointer.
        unsafe { *bad = cur };
    }
    err
}

/// Wake a requester stalled on RNR against `rec` (after new receives were posted).
pub(crate) fn kick_waiter(rt: &Runtime, rec: &QpRec) {
    let waiter = rec.rnr_waiter.swap(0, Ordering::AcqRel);
    if waiter != 0 {
        let qpn = rec.rnr_waiter_qpn.load(Ordering::Relaxed);
        rt.send_to(waiter, &format!("kick {qpn}"));
    }
}

pub(crate) unsafe extern "C" fn post_send(
    qp: *mut ibv_qp,
    wr: *mut ibv_send_wr,
    bad: *mut *mut ibv_send_wr,
) -> c_int {
    let Some(rt) = runtime::get() else {
        return libc::EINVAL;
    };
    if qp.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: qp is a live QP of ours, so its context is live too.
    if unsafe { crate::device::gone((*qp).context) } {
        // SAFETY: bad is NULL or the caller's out pointer.
        unsafe { set_bad(bad, wr) };
        return libc::EIO;
    }
    // SAFETY: qp is live.
    let w = unsafe { wrap(qp) };
    let mut sq = w.sq.lock().unwrap_or_else(|e| e.into_inner());
    let mut cur = wr;
    let mut err = 0;
    while !cur.is_null() {
        // SAFETY: cur walks the caller's WR chain.
        let r = unsafe { &*cur };
        let state = w.rec.state.load(Ordering::Acquire);
        if !matches!(state, IBV_QPS_RTS | IBV_QPS_SQD | IBV_QPS_SQE | IBV_QPS_ERR) {
            err = libc::EINVAL;
            break;
        }
        // SAFETY: r is a valid WR per the caller contract (sg_list has num_sge entries).
        let parsed = match unsafe { SendWr::parse(r, w) } {
            Ok(p) => p,
            Err(e) => {
                err = e;
                break;
            }
        };
        if sq.pending.len() >= w.cap.max_send_wr as usize {
            err = libc::ENOMEM;
            break;
        }
        rt.count(Counter::PostedSends, 1);
        rt.count(Counter::OutstandingSends, 1);
        sq.posted += 1;
        sq.op_counts[(parsed.opcode as usize) & 15] += 1;
        let nth = sq.op_counts[(parsed.opcode as usize) & 15];
        let mut p = parsed;
        p.nth_of_op = nth;
        p.nth = sq.posted;
        sq.pending.push_back(p);
        cur = r.next;
    }
    engine::run(rt, w, &mut sq);
    drop(sq);
    if err != 0 && !bad.is_null() {
        // SAFETY: bad is the caller's out pointer.
        unsafe { *bad = cur };
    }
    err
}

/// Copies a caller's receive WR into the ring format shared by RQs and SRQs.
///
/// # Safety
/// `r.sg_list` must point at `r.num_sge` readable entries, and
/// `0 <= r.num_sge <= MAX_RECV_SGE` (the callers check it against the QP's or
/// SRQ's `max_sge`, which is at most `MAX_RECV_SGE`).
pub(crate) unsafe fn recv_wqe_from_wr(r: &ibv_recv_wr) -> RecvWqe {
    let mut wqe = RecvWqe {
        wr_id: r.wr_id,
        num_sge: r.num_sge as u32,
        ..Default::default()
    };
    for k in 0..r.num_sge as usize {
        // SAFETY: k < num_sge entries of sg_list (function contract).
        let s = unsafe { *r.sg_list.add(k) };
        wqe.sge[k] = WqeSge {
            addr: s.addr,
            length: s.length,
            lkey: s.lkey,
        };
    }
    wqe
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rc_transition_table() {
        let (req, _) = required(IBV_QPS_RESET, IBV_QPS_INIT).unwrap();
        assert_eq!(
            req,
            IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS
        );
        let (req, _) = required(IBV_QPS_INIT, IBV_QPS_RTR).unwrap();
        assert!(req & IBV_QP_DEST_QPN != 0 && req & IBV_QP_MAX_DEST_RD_ATOMIC != 0);
        let (req, _) = required(IBV_QPS_RTR, IBV_QPS_RTS).unwrap();
        assert!(req & IBV_QP_SQ_PSN != 0 && req & IBV_QP_MAX_QP_RD_ATOMIC != 0);
        assert!(required(IBV_QPS_RESET, IBV_QPS_RTS).is_none());
        assert!(required(IBV_QPS_INIT, IBV_QPS_RTS).is_none());
        assert!(required(IBV_QPS_RTS, IBV_QPS_RTR).is_none());
        for s in [
            IBV_QPS_RESET,
            IBV_QPS_INIT,
            IBV_QPS_RTR,
            IBV_QPS_RTS,
            IBV_QPS_ERR,
        ] {
            assert!(required(s, IBV_QPS_ERR).is_some());
            assert!(required(s, IBV_QPS_RESET).is_some());
        }
        assert_eq!(
            uc_adjust(required(IBV_QPS_RTR, IBV_QPS_RTS).unwrap().0),
            IBV_QP_STATE | IBV_QP_SQ_PSN
        );
    }
}
