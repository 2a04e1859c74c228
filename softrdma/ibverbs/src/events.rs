//! Async events (one [`EventFd`] of datagrams per context; each record is one
//! `struct ibv_async_event`).

use crate::device::ctx_wrap;
use crate::runtime;
use crate::util::set_errno;
use softrdma_abi::event_fd::EventFd;
use softrdma_abi::fabric::Counter;
use softrdma_abi::verbs::*;
use std::ffi::c_int;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

/// An event queue of async event records (one `ibv_async_event` per datagram). Reads consume
/// one event and honour O_NONBLOCK set by the application on `async_fd`, while softrdma itself
/// can always take records without blocking, which [`AsyncQueue::purge_qp`] needs.
pub(crate) struct AsyncQueue {
    q: EventFd,
    /// Serialises producers with a purge, so a purge never reorders events.
    producers: Mutex<()>,
}

/// True if `ev` is a QP event (its element is a QP).
fn is_qp_event(ty: ibv_event_type) -> bool {
    matches!(
        ty,
        IBV_EVENT_QP_FATAL
            | IBV_EVENT_QP_REQ_ERR
            | IBV_EVENT_QP_ACCESS_ERR
            | IBV_EVENT_COMM_EST
            | IBV_EVENT_SQ_DRAINED
            | IBV_EVENT_PATH_MIG
            | IBV_EVENT_PATH_MIG_ERR
            | IBV_EVENT_QP_LAST_WQE_REACHED
    )
}

impl AsyncQueue {
    /// A new queue (errno on failure).
    pub(crate) fn new() -> Result<AsyncQueue, i32> {
        Ok(AsyncQueue {
            q: EventFd::new(libc::SOCK_DGRAM)?,
            producers: Mutex::new(()),
        })
    }

    /// The fd applications poll (`ctx->async_fd`).
    pub(crate) fn read_fd(&self) -> c_int {
        self.q.app_fd()
    }

    fn send(&self, ev: &ibv_async_event) -> bool {
        self.q.send(as_bytes(ev))
    }

    /// Take the next event as a `read` of `async_fd` would (blocking unless the application
    /// set O_NONBLOCK): Ok(false) at EOF or on a short record.
    fn recv(&self, ev: &mut ibv_async_event) -> Result<bool, c_int> {
        let n = std::mem::size_of::<ibv_async_event>();
        // SAFETY: ev is a live, exclusively borrowed plain C struct of n bytes, and every
        // byte pattern is a valid ibv_async_event (a union of pointers / integers and an
        // integer event type that the reader treats as data).
        let buf = unsafe { std::slice::from_raw_parts_mut(ev as *mut _ as *mut u8, n) };
        self.q.recv(buf).map(|r| r == n)
    }

    /// Queue one event (dropped with a warning when the queue is full).
    pub(crate) fn push(&self, ev: ibv_async_event) {
        let _p = self.producers.lock().unwrap_or_else(|e| e.into_inner());
        if !self.send(&ev) {
            crate::log::warn(&format!(
                "async event {} dropped: event queue full",
                ev.event_type
            ));
        }
        if let Some(rt) = runtime::get() {
            rt.count(Counter::AsyncEvents, 1);
        }
    }

    /// Drop the unread events of QP `qp` (`ibv_destroy_qp`: the kernel drops them with the
    /// QP, so no event ever names a destroyed QP). Returns how many were dropped.
    pub(crate) fn purge_qp(&self, qp: *mut ibv_qp) -> usize {
        let _p = self.producers.lock().unwrap_or_else(|e| e.into_inner());
        let n = std::mem::size_of::<ibv_async_event>();
        let mut keep = Vec::new();
        let mut dropped = 0;
        loop {
            let mut ev: ibv_async_event = Default::default();
            // SAFETY: as in `recv`: a local plain C struct of n bytes, any bytes valid.
            let buf = unsafe { std::slice::from_raw_parts_mut(&mut ev as *mut _ as *mut u8, n) };
            if self.q.try_recv(buf) != Some(n) {
                break;
            }
            // SAFETY: element is a plain union of pointers/ints; reading the qp member of a
            // QP event record we wrote ourselves.
            if is_qp_event(ev.event_type) && unsafe { ev.element.qp } == qp {
                dropped += 1;
            } else {
                keep.push(ev);
            }
        }
        for ev in &keep {
            if !self.send(ev) {
                crate::log::warn(&format!(
                    "async event {} lost while purging a destroyed QP's events",
                    ev.event_type
                ));
            }
        }
        dropped
    }
}

/// The bytes of an event record.
fn as_bytes(ev: &ibv_async_event) -> &[u8] {
    // SAFETY: a live plain C struct viewed as its size_of bytes for the lifetime of the borrow.
    unsafe {
        std::slice::from_raw_parts(
            ev as *const _ as *const u8,
            std::mem::size_of::<ibv_async_event>(),
        )
    }
}

/// Raise a QP event on the QP's context.
///
/// # Safety
/// `qp` must be a live QP of ours.
pub(crate) unsafe fn raise_qp_event(qp: *mut ibv_qp, ty: ibv_event_type) {
    let mut ev: ibv_async_event = Default::default();
    ev.element.qp = qp;
    ev.event_type = ty;
    // SAFETY: qp is live, so its context is too.
    let ctx = unsafe { ctx_wrap((*qp).context) };
    // SAFETY: reading the qp_num of a live QP.
    let qpn = unsafe { (*qp).qp_num };
    crate::log::debug(&format!("async event {ty} on QP {qpn:#x}"));
    ctx.async_q.push(ev);
}

/// Raise a port / device event on every open context.
pub(crate) fn raise_device_event(ty: ibv_event_type) {
    let Some(rt) = runtime::get() else { return };
    let g = rt.contexts.lock().unwrap_or_else(|e| e.into_inner());
    for &w in g.iter() {
        let mut ev: ibv_async_event = Default::default();
        if ty != IBV_EVENT_DEVICE_FATAL {
            ev.element.port_num = 1;
        }
        ev.event_type = ty;
        // SAFETY: registered contexts are live until removed from this list (under the lock).
        unsafe { (*(w as *const crate::device::CtxWrap)).async_q.push(ev) };
    }
}

pub(crate) unsafe extern "C" fn get_async_event(
    ctx: *mut ibv_context,
    ev: *mut ibv_async_event,
) -> c_int {
    if ctx.is_null() || ev.is_null() {
        set_errno(libc::EINVAL);
        return -1;
    }
    // SAFETY: ctx is a live context of ours; ev is the caller's struct.
    match unsafe { ctx_wrap(ctx).async_q.recv(&mut *ev) } {
        Ok(true) => 0,
        Ok(false) => {
            set_errno(libc::EIO);
            -1
        }
        Err(e) => {
            set_errno(e);
            -1
        }
    }
}

fn bump(p: *mut u32) {
    // SAFETY: p points to a u32 counter inside a live verbs object; AtomicU32 has the same layout.
    unsafe { (*(p as *const AtomicU32)).fetch_add(1, Ordering::AcqRel) };
}

pub(crate) unsafe extern "C" fn ack_async_event(ev: *mut ibv_async_event) {
    if ev.is_null() {
        return;
    }
    // SAFETY: ev is the caller's event as returned by get_async_event; its element points to a
    // live object of the kind implied by event_type.
    unsafe {
        let e = &*ev;
        match e.event_type {
            IBV_EVENT_CQ_ERR => {
                if !e.element.cq.is_null() {
                    bump(&mut (*e.element.cq).async_events_completed);
                }
            }
            IBV_EVENT_SRQ_ERR | IBV_EVENT_SRQ_LIMIT_REACHED => {
                if !e.element.srq.is_null() {
                    bump(&mut (*e.element.srq).events_completed);
                }
            }
            t if is_qp_event(t) => {
                if !e.element.qp.is_null() {
                    bump(&mut (*e.element.qp).events_completed);
                }
            }
            _ => {}
        }
    }
}
