//! Shared receive queues: a WQE ring in the owner's memory described by a fabric `SrqRec`;
//! requesters of every QP attached to it pop WQEs under the record's lock.

use crate::pd::pd_id;
use crate::runtime;
use crate::util::{set_errno, SharedLock};
use softrdma_abi::fabric::{Counter, RecvWqe, SrqRec, MAX_RECV_SGE, MAX_SRQS};
use softrdma_abi::verbs::*;
use std::ffi::c_int;
use std::sync::atomic::Ordering;

/// Private wrapper; `srq` must stay first.
#[repr(C)]
pub(crate) struct SrqWrap {
    pub srq: ibv_srq,
    pub slot: u32,
    pub rec: &'static SrqRec,
    pub ring: *mut RecvWqe,
    pub cap: u32,
    pub max_sge: u32,
}

pub(crate) unsafe extern "C" fn create_srq(
    pd: *mut ibv_pd,
    ia: *mut ibv_srq_init_attr,
) -> *mut ibv_srq {
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
    // SAFETY: ia is the caller's struct.
    let a = unsafe { &mut *ia };
    if a.attr.max_wr > crate::device::MAX_SRQ_WR || a.attr.max_sge > MAX_RECV_SGE as u32 {
        set_errno(libc::EINVAL);
        return std::ptr::null_mut();
    }
    a.attr.max_wr = a.attr.max_wr.max(1);
    a.attr.max_sge = a.attr.max_sge.max(1);
    let f = &rt.fabric;
    let Some(i) = rt.alloc_slot(MAX_SRQS, &f.header().srq_hint, |i| &f.srq(i).owner) else {
        set_errno(libc::ENOMEM);
        return std::ptr::null_mut();
    };
    let rec = f.srq(i);
    let cap = a.attr.max_wr;
    let ring = rt.alloc_ring::<RecvWqe>(cap as usize);
    rec.lock.store(0, Ordering::Relaxed);
    // SAFETY: pd is a live PD of ours.
    rec.pd.store(unsafe { pd_id(pd) }, Ordering::Relaxed);
    rec.head.store(0, Ordering::Relaxed);
    rec.tail.store(0, Ordering::Relaxed);
    rec.limit.store(a.attr.srq_limit, Ordering::Relaxed);
    rec.rnr_stalled.store(0, Ordering::Relaxed);
    rec.addr.store(ring as u64, Ordering::Relaxed);
    rec.cap.store(cap, Ordering::Release);
    let mut s: ibv_srq = Default::default();
    // SAFETY: pd is live.
    s.context = unsafe { (*pd).context };
    s.srq_context = a.srq_context;
    s.pd = pd;
    s.handle = i as u32;
    let w = Box::into_raw(Box::new(SrqWrap {
        srq: s,
        slot: i as u32,
        rec,
        ring,
        cap,
        max_sge: a.attr.max_sge,
    }));
    // SAFETY: fresh allocation.
    unsafe {
        libc::pthread_mutex_init(
            &mut (*w).srq.mutex as *mut _ as *mut libc::pthread_mutex_t,
            std::ptr::null(),
        );
        libc::pthread_cond_init(
            &mut (*w).srq.cond as *mut _ as *mut libc::pthread_cond_t,
            std::ptr::null(),
        );
    }
    rt.srqs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(i as u32, w as usize);
    rt.count(Counter::Srqs, 1);
    w as *mut ibv_srq
}

pub(crate) unsafe extern "C" fn modify_srq(
    srq: *mut ibv_srq,
    attr: *mut ibv_srq_attr,
    mask: c_int,
) -> c_int {
    if srq.is_null() || attr.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: srq is a live SRQ of ours, so its context is live too.
    if unsafe { crate::device::gone((*srq).context) } {
        return libc::EIO;
    }
    // SAFETY: live SRQ of ours; caller's attr.
    let (w, a) = unsafe { (&*(srq as *const SrqWrap), &*attr) };
    if mask as u32 & IBV_SRQ_MAX_WR != 0 {
        return libc::EINVAL;
    }
    if mask as u32 & IBV_SRQ_LIMIT != 0 {
        w.rec.limit.store(a.srq_limit, Ordering::Relaxed);
    }
    0
}

pub(crate) unsafe extern "C" fn query_srq(srq: *mut ibv_srq, attr: *mut ibv_srq_attr) -> c_int {
    if srq.is_null() || attr.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: srq is a live SRQ of ours, so its context is live too.
    if unsafe { crate::device::gone((*srq).context) } {
        return libc::EIO;
    }
    // SAFETY: live SRQ of ours; caller's out struct.
    unsafe {
        let w = &*(srq as *const SrqWrap);
        *attr = ibv_srq_attr {
            max_wr: w.cap,
            max_sge: w.max_sge,
            srq_limit: w.rec.limit.load(Ordering::Relaxed),
        };
    }
    0
}

pub(crate) unsafe extern "C" fn destroy_srq(srq: *mut ibv_srq) -> c_int {
    if srq.is_null() {
        return libc::EINVAL;
    }
    let Some(rt) = runtime::get() else {
        return libc::EINVAL;
    };
    // SAFETY: srq is live.
    let slot = unsafe { (*(srq as *const SrqWrap)).slot };
    rt.srqs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&slot);
    // SAFETY: created by create_srq and no longer registered.
    let w = unsafe { Box::from_raw(srq as *mut SrqWrap) };
    {
        let _l = SharedLock::lock(&w.rec.lock, rt.pid);
        w.rec.addr.store(0, Ordering::Relaxed);
        w.rec.cap.store(0, Ordering::Relaxed);
    }
    w.rec.owner.store(0, Ordering::Release);
    // SAFETY: the ring came from alloc_ring(cap) and is unreachable now.
    unsafe { rt.free_ring(w.ring, w.cap as usize) };
    rt.count(Counter::Srqs, -1);
    0
}

pub(crate) unsafe extern "C" fn post_srq_recv(
    srq: *mut ibv_srq,
    wr: *mut ibv_recv_wr,
    bad: *mut *mut ibv_recv_wr,
) -> c_int {
    let Some(rt) = runtime::get() else {
        return libc::EINVAL;
    };
    if srq.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: srq is a live SRQ of ours, so its context is live too.
    if unsafe { crate::device::gone((*srq).context) } {
        // SAFETY: bad is NULL or the caller's out pointer.
        unsafe { crate::qp::set_bad(bad, wr) };
        return libc::EIO;
    }
    // SAFETY: live SRQ of ours.
    let w = unsafe { &*(srq as *const SrqWrap) };
    let mut cur = wr;
    let mut err = 0;
    let mut posted = 0;
    while !cur.is_null() {
        // SAFETY: walking the caller's chain.
        let r = unsafe { &*cur };
        if r.num_sge < 0 || r.num_sge as u32 > w.max_sge {
            err = libc::EINVAL;
            break;
        }
        // SAFETY: r.num_sge was checked against max_sge above and sg_list has
        // num_sge entries (the caller's ibv_post_srq_recv contract).
        let wqe = unsafe { crate::qp::recv_wqe_from_wr(r) };
        let _l = SharedLock::lock(&w.rec.lock, rt.pid);
        let h = w.rec.head.load(Ordering::Acquire);
        let t = w.rec.tail.load(Ordering::Relaxed);
        if t - h >= w.cap as u64 {
            err = libc::ENOMEM;
            break;
        }
        // SAFETY: in-bounds slot of our ring, written under the SRQ lock.
        unsafe { *w.ring.add((t % w.cap as u64) as usize) = wqe };
        w.rec.tail.store(t + 1, Ordering::Release);
        posted += 1;
        cur = r.next;
    }
    rt.count(Counter::PostedRecvs, posted);
    if posted > 0
        && w.rec.rnr_stalled.load(Ordering::Acquire) != 0
        && w.rec.rnr_stalled.swap(0, Ordering::AcqRel) == 1
    {
        kick_srq_waiters(rt, w);
    }
    if err != 0 && !bad.is_null() {
        // SAFETY: caller's out pointer.
        unsafe { *bad = cur };
    }
    err
}

/// Wake, at once, every requester stalled on RNR against a QP that takes its receives from `w`.
fn kick_srq_waiters(rt: &crate::runtime::Runtime, w: &SrqWrap) {
    let me = w as *const SrqWrap as *mut SrqWrap;
    let g = rt.qps.lock().unwrap_or_else(|e| e.into_inner());
    for &p in g.values() {
        // SAFETY: registered QPs are live while the registry lock is held.
        let q = unsafe { &*(p as *const crate::qp::QpWrap) };
        if q.srq == me {
            crate::qp::kick_waiter(rt, q.rec);
        }
    }
}

/// Event-thread hook: raise IBV_EVENT_SRQ_LIMIT_REACHED for local SRQ `slot`.
pub(crate) fn limit_reached(rt: &crate::runtime::Runtime, slot: u32) {
    let g = rt.srqs.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(&p) = g.get(&slot) {
        let srq = p as *mut ibv_srq;
        let mut ev: ibv_async_event = Default::default();
        ev.element.srq = srq;
        ev.event_type = IBV_EVENT_SRQ_LIMIT_REACHED;
        // SAFETY: registered SRQs are live while the registry lock is held; so is their context.
        unsafe { crate::device::ctx_wrap((*srq).context) }
            .async_q
            .push(ev);
    }
}
