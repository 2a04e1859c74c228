//! Completion queues and completion channels.
//!
//! A CQ is a ring of `ibv_wc` in the owner's private memory, described by a fabric `CqRec`
//! (head/tail/lock/armed). Producers (this process for send completions and flushes, peers for
//! receive completions) append under the record's lock; the owner consumes in `ibv_poll_cq`
//! without the lock. An armed CQ that receives an entry queues one event on its channel:
//! directly when the producer is local, through the owner's event thread otherwise.

use crate::copy::{self, Ranges};
use crate::runtime::{self, Runtime};
use crate::util::{self, set_errno, SharedLock};
use softrdma_abi::event_fd::{self, EventFd};
use softrdma_abi::fabric::{Counter, CqRec, MAX_CQS};
use softrdma_abi::verbs::*;
use std::collections::VecDeque;
use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

/// Private wrapper of a completion channel; `ch` must stay first.
#[repr(C)]
pub(crate) struct ChannelWrap {
    pub ch: ibv_comp_channel,
    /// The event queue: `ch.fd` is its [`EventFd::app_fd`]; each 8-byte datagram is one
    /// `ibv_cq*` record.
    pub q: EventFd,
    /// A CQ of this channel (`*mut CqWrap`, 0 = none) owed an event for entries it held
    /// when it was armed; see [`owe_event`].
    pub owed: AtomicU64,
}

/// Private wrapper of a CQ; `cq` must stay first.
#[repr(C)]
pub(crate) struct CqWrap {
    pub cq: ibv_cq,
    pub slot: u32,
    pub rec: &'static CqRec,
    /// Serialises consumers (`poll_cq`, `resize_cq`).
    pub consumer: Mutex<Held>,
    /// An event is owed for entries that were present when the CQ was armed. See
    /// [`owe_event`].
    pub owes: AtomicBool,
}

/// Completions held back by the delay fault, in arrival order.
pub(crate) struct Held {
    pub q: VecDeque<(u64, ibv_wc)>,
}

/// Queue one event record (`cq_ptr`) on a channel's write end, ours or a peer's duplicate
/// (never blocks, never raises SIGPIPE).
pub(crate) fn send_event(fd: c_int, cq_ptr: u64) -> bool {
    event_fd::send_on(fd, &cq_ptr.to_ne_bytes())
}

pub(crate) unsafe extern "C" fn create_comp_channel(
    ctx: *mut ibv_context,
) -> *mut ibv_comp_channel {
    let Some(rt) = runtime::get() else {
        set_errno(libc::ENODEV);
        return std::ptr::null_mut();
    };
    // SAFETY: ctx is NULL or a context of ours.
    if unsafe { crate::device::gone(ctx) } {
        set_errno(libc::EIO);
        return std::ptr::null_mut();
    }
    let q = match EventFd::new(libc::SOCK_DGRAM) {
        Ok(q) => q,
        Err(e) => {
            set_errno(e);
            return std::ptr::null_mut();
        }
    };
    rt.count(Counter::CompChannels, 1);
    let w = Box::new(ChannelWrap {
        ch: ibv_comp_channel {
            context: ctx,
            fd: q.app_fd(),
            refcnt: 0,
        },
        q,
        owed: AtomicU64::new(0),
    });
    Box::into_raw(w) as *mut ibv_comp_channel
}

pub(crate) unsafe extern "C" fn destroy_comp_channel(ch: *mut ibv_comp_channel) -> c_int {
    if ch.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: ch was created by create_comp_channel.
    unsafe {
        if (*ch).refcnt != 0 {
            return libc::EBUSY;
        }
        drop(Box::from_raw(ch as *mut ChannelWrap));
    }
    if let Some(rt) = runtime::get() {
        rt.count(Counter::CompChannels, -1);
    }
    0
}

fn alloc_ring(cap: usize) -> *mut ibv_wc {
    match runtime::get() {
        Some(rt) => rt.alloc_ring::<ibv_wc>(cap),
        None => {
            let v: Box<[ibv_wc]> = (0..cap.max(1)).map(|_| ibv_wc::default()).collect();
            Box::into_raw(v) as *mut ibv_wc
        }
    }
}

/// # Safety
/// `p`/`cap` must come from `alloc_ring`.
unsafe fn free_ring(p: *mut ibv_wc, cap: usize) {
    if let Some(rt) = runtime::get() {
        // SAFETY: p/cap come from alloc_ring (caller contract).
        unsafe { rt.free_ring(p, cap) };
    }
}

pub(crate) unsafe extern "C" fn create_cq(
    ctx: *mut ibv_context,
    cqe: c_int,
    cq_context: *mut c_void,
    channel: *mut ibv_comp_channel,
    _comp_vector: c_int,
) -> *mut ibv_cq {
    let Some(rt) = runtime::get() else {
        set_errno(libc::ENODEV);
        return std::ptr::null_mut();
    };
    if ctx.is_null() || cqe < 1 || cqe as u32 > crate::device::MAX_CQE {
        set_errno(libc::EINVAL);
        return std::ptr::null_mut();
    }
    // SAFETY: ctx is a context of ours.
    if unsafe { crate::device::gone(ctx) } {
        set_errno(libc::EIO);
        return std::ptr::null_mut();
    }
    if let Some(e) = rt.faults.on_create(crate::faults::CreateObj::Cq) {
        set_errno(e);
        return std::ptr::null_mut();
    }
    let f = &rt.fabric;
    let Some(slot) = rt.alloc_slot(MAX_CQS, &f.header().cq_hint, |i| &f.cq(i).owner) else {
        set_errno(libc::ENOMEM);
        return std::ptr::null_mut();
    };
    let rec = f.cq(slot);
    let cap = (cqe as usize).max(16);
    let ring = alloc_ring(cap);
    rec.lock.store(0, Ordering::Relaxed);
    rec.armed.store(0, Ordering::Relaxed);
    rec.overrun.store(0, Ordering::Relaxed);
    rec.head.store(0, Ordering::Relaxed);
    rec.tail.store(0, Ordering::Relaxed);
    rec.addr.store(ring as u64, Ordering::Relaxed);
    rec.cap.store(cap as u32, Ordering::Relaxed);
    rec.generation.fetch_add(1, Ordering::Release);
    rec.chan_fd.store(0, Ordering::Relaxed);
    rec.cq_ptr.store(0, Ordering::Relaxed);
    let mut cq: ibv_cq = Default::default();
    cq.context = ctx;
    cq.channel = channel;
    cq.cq_context = cq_context;
    cq.handle = slot as u32;
    cq.cqe = cap as c_int;
    let w = Box::into_raw(Box::new(CqWrap {
        cq,
        slot: slot as u32,
        rec,
        consumer: Mutex::new(Held { q: VecDeque::new() }),
        owes: AtomicBool::new(false),
    }));
    // SAFETY: w is a fresh allocation; channel (if any) is a live channel of ours.
    unsafe {
        libc::pthread_mutex_init(
            &mut (*w).cq.mutex as *mut _ as *mut libc::pthread_mutex_t,
            std::ptr::null(),
        );
        libc::pthread_cond_init(
            &mut (*w).cq.cond as *mut _ as *mut libc::pthread_cond_t,
            std::ptr::null(),
        );
        if !channel.is_null() {
            (*(&mut (*channel).refcnt as *mut c_int as *const AtomicU32))
                .fetch_add(1, Ordering::AcqRel);
        }
    }
    if !channel.is_null() {
        // SAFETY: channel is a live ChannelWrap of ours.
        let wfd = unsafe { (*(channel as *const ChannelWrap)).q.write_end() };
        rec.cq_ptr.store(w as u64, Ordering::Relaxed);
        rec.chan_fd.store(wfd as u32 + 1, Ordering::Release);
    }
    rt.cqs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(slot as u32, w as usize);
    rt.count(Counter::Cqs, 1);
    w as *mut ibv_cq
}

pub(crate) unsafe extern "C" fn destroy_cq(cq: *mut ibv_cq) -> c_int {
    if cq.is_null() {
        return libc::EINVAL;
    }
    let Some(rt) = runtime::get() else {
        return libc::EINVAL;
    };
    let w = cq as *mut CqWrap;
    // SAFETY: cq was created by create_cq.
    let slot = unsafe { (*w).slot };
    rt.cqs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&slot);
    // SAFETY: w is live until freed below; its channel must not name it any more.
    clear_note(unsafe { &*w });
    // SAFETY: as above.
    let rec = unsafe { (*w).rec };
    let (ring, cap) = {
        let _l = SharedLock::lock(&rec.lock, rt.pid);
        let r = (
            rec.addr.swap(0, Ordering::AcqRel),
            rec.cap.swap(0, Ordering::AcqRel),
        );
        rec.armed.store(0, Ordering::Relaxed);
        rec.chan_fd.store(0, Ordering::Relaxed);
        r
    };
    rec.owner.store(0, Ordering::Release);
    // SAFETY: the ring is no longer reachable from the record; nobody writes it any more.
    unsafe {
        free_ring(ring as *mut ibv_wc, cap as usize);
        let ch = (*w).cq.channel;
        if !ch.is_null() {
            (*(&mut (*ch).refcnt as *mut c_int as *const AtomicU32)).fetch_sub(1, Ordering::AcqRel);
        }
        drop(Box::from_raw(w));
    }
    rt.count(Counter::Cqs, -1);
    0
}

pub(crate) unsafe extern "C" fn resize_cq(cq: *mut ibv_cq, cqe: c_int) -> c_int {
    if cq.is_null() || cqe < 1 || cqe as u32 > crate::device::MAX_CQE {
        return libc::EINVAL;
    }
    let Some(rt) = runtime::get() else {
        return libc::EINVAL;
    };
    // SAFETY: cq is a live CQ of ours, so its context is live too.
    if unsafe { crate::device::gone((*cq).context) } {
        return libc::EIO;
    }
    // The ring is rebuilt: an event owed for its entries is raised now.
    // SAFETY: cq is a live CQ of ours.
    unsafe { raise_owed(cq as *mut CqWrap) };
    // SAFETY: cq is a live CQ of ours.
    let w = unsafe { &*(cq as *const CqWrap) };
    let _c = w.consumer.lock().unwrap_or_else(|e| e.into_inner());
    let rec = w.rec;
    let _l = SharedLock::lock(&rec.lock, rt.pid);
    let head = rec.head.load(Ordering::Acquire);
    let tail = rec.tail.load(Ordering::Acquire);
    let count = (tail - head) as usize;
    let new_cap = (cqe as usize).max(16).max(count);
    let old = rec.addr.load(Ordering::Relaxed) as *mut ibv_wc;
    let old_cap = rec.cap.load(Ordering::Relaxed) as usize;
    let new = alloc_ring(new_cap);
    for k in 0..count {
        // SAFETY: both rings are live local allocations; indices are in bounds.
        unsafe { *new.add(k) = *old.add(((head as usize) + k) % old_cap) };
    }
    rec.addr.store(new as u64, Ordering::Relaxed);
    rec.cap.store(new_cap as u32, Ordering::Relaxed);
    rec.head.store(0, Ordering::Relaxed);
    rec.tail.store(count as u64, Ordering::Release);
    // SAFETY: the old ring is unreachable (we hold the producer lock and the consumer lock).
    unsafe {
        free_ring(old, old_cap);
        (*cq).cqe = new_cap as c_int;
    }
    0
}

/// Why a completion could not be appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The ring is full (CQ overrun).
    Overrun,
    /// The CQ is gone or its owner died.
    Gone,
}

/// Append `wc` to the CQ in record slot `slot` owned by `owner`.
pub(crate) fn push(rt: &Runtime, slot: u32, owner: u32, wc: &ibv_wc) -> Result<(), PushError> {
    let none = Ranges::default();
    push_with(rt, slot, owner, wc, &none, &none).map_err(|e| match e {
        PushOrCopy::Push(p) => p,
        PushOrCopy::Copy(_) => PushError::Gone,
    })
}

/// Failure of [`push_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushOrCopy {
    /// The completion could not be appended (nothing was copied).
    Push(PushError),
    /// The payload copy failed (nothing was published).
    Copy(util::CopyError),
}

/// Copy `local` (ours) to `remote` (in `owner`'s memory) and append `wc`: a `memcpy` plus a
/// store when the payload ranges are mapped here and the ring is in the owner's arena, else a
/// single `process_vm_writev` carrying payload and entry. The entry is published (release store
/// of the tail) only after payload and entry landed.
pub(crate) fn push_with(
    rt: &Runtime,
    slot: u32,
    owner: u32,
    wc: &ibv_wc,
    local: &Ranges,
    remote: &Ranges,
) -> Result<(), PushOrCopy> {
    let rec = rt.fabric.cq(slot as usize);
    {
        let _l = SharedLock::lock(&rec.lock, rt.pid);
        if rec.owner.load(Ordering::Acquire) != owner {
            return Err(PushOrCopy::Push(PushError::Gone));
        }
        let cap = rec.cap.load(Ordering::Relaxed) as u64;
        let addr = rec.addr.load(Ordering::Relaxed);
        if cap == 0 || addr == 0 {
            return Err(PushOrCopy::Push(PushError::Gone));
        }
        let head = rec.head.load(Ordering::Acquire);
        let tail = rec.tail.load(Ordering::Relaxed);
        if tail - head >= cap {
            rec.overrun.store(1, Ordering::Relaxed);
            return Err(PushOrCopy::Push(PushError::Overrun));
        }
        let dst = addr + (tail % cap) * std::mem::size_of::<ibv_wc>() as u64;
        if owner == rt.pid {
            copy::copy(rt, owner, local, remote, true).map_err(PushOrCopy::Copy)?;
            // SAFETY: dst is inside our own live ring (cap/addr read under the producer lock, which
            // resize/destroy also take).
            unsafe { std::ptr::write(dst as *mut ibv_wc, *wc) };
        } else if let Some(p) = rt.peer_ptr(owner, dst, 48) {
            // Fast path: the ring lives in the owner's arena, mapped here.
            copy::copy(rt, owner, local, remote, true).map_err(PushOrCopy::Copy)?;
            // SAFETY: p is our mapping of the 48-byte slot inside the owner's live ring (bounds
            // checked by peer_ptr); the slot is reserved for us by the producer lock.
            unsafe { std::ptr::write_volatile(p as *mut ibv_wc, *wc) };
        } else {
            let mut l: Vec<(u64, usize)> = local.addrs.to_vec();
            let mut r: Vec<(u64, usize)> = remote.addrs.to_vec();
            l.push((wc as *const ibv_wc as u64, 48));
            r.push((dst, 48));
            util::write_to(owner, &l, &r).map_err(PushOrCopy::Copy)?;
        }
        rec.tail.store(tail + 1, Ordering::Release);
    }
    if rec.armed.swap(DISARMED, Ordering::AcqRel) == ARMED {
        if owner == rt.pid {
            notify_local(rt, slot);
        } else if !rt.remote_cq_event(owner, slot, rec) {
            rt.send_to(owner, &format!("cq {slot}"));
        }
    }
    Ok(())
}

/// Queue a completion event on the channel of local CQ `slot` (if it still exists).
pub(crate) fn notify_local(rt: &Runtime, slot: u32) {
    let g = rt.cqs.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(&p) = g.get(&slot) {
        // SAFETY: registered CQs are live while in the registry (removed under this lock first).
        unsafe { notify(p as *mut CqWrap) };
    }
}

/// # Safety
/// `w` must be a live CQ.
unsafe fn notify(w: *mut CqWrap) {
    // SAFETY: w is live; its channel, if set, is a live ChannelWrap.
    unsafe {
        let ch = (*w).cq.channel;
        if ch.is_null() {
            return;
        }
        let cw = ch as *mut ChannelWrap;
        let p = w as *mut ibv_cq as u64;
        if !(*cw).q.send(&p.to_ne_bytes()) {
            crate::log::warn("completion event dropped: channel pipe full");
        }
    }
}

pub(crate) unsafe extern "C" fn poll_cq(cq: *mut ibv_cq, n: c_int, wc: *mut ibv_wc) -> c_int {
    if cq.is_null() || n < 0 || (n > 0 && wc.is_null()) {
        return -libc::EINVAL;
    }
    let Some(rt) = runtime::get() else {
        return -libc::EINVAL;
    };
    // SAFETY: cq is a live CQ of ours.
    let w = unsafe { &*(cq as *const CqWrap) };
    let mut held = w.consumer.lock().unwrap_or_else(|e| e.into_inner());
    let rec = w.rec;
    let mut out = 0usize;
    let n = n as usize;
    // The clock is read only when a delayed completion is involved: a busy-polling consumer
    // (an SPDK reactor) calls this millions of times a second, mostly on an empty CQ.
    let mut now_cache: Option<u64> = None;
    let mut now = || *now_cache.get_or_insert_with(util::now_ms);
    // Held (delayed) completions first, when due.
    while out < n {
        match held.q.front() {
            Some(&(t, _)) if t <= now() => {
                let (_, e) = held.q.pop_front().unwrap_or((0, ibv_wc::default()));
                // SAFETY: out < n entries of the caller's array.
                unsafe { *wc.add(out) = e };
                out += 1;
            }
            _ => break,
        }
    }
    let cap = rec.cap.load(Ordering::Relaxed) as u64;
    let ring = rec.addr.load(Ordering::Relaxed) as *const ibv_wc;
    let head0 = rec.head.load(Ordering::Relaxed);
    let mut head = head0;
    let tail = rec.tail.load(Ordering::Acquire);
    while out < n && head < tail && cap > 0 {
        // SAFETY: head < tail so the slot was published (release) by a producer; ring is our own
        // live allocation of cap entries.
        let e = unsafe { *ring.add((head % cap) as usize) };
        head += 1;
        if let Some(ms) = rt.faults.delay_for(e.qp_num) {
            held.q.push_back((now() + ms, e));
            continue;
        }
        if !held.q.is_empty() && held.q.iter().any(|(_, h)| h.qp_num == e.qp_num) {
            // Keep per-QP order behind held entries of the same QP.
            let t = held.q.back().map(|x| x.0).unwrap_or_else(&mut now);
            held.q.push_back((t, e));
            continue;
        }
        // SAFETY: out < n entries of the caller's array.
        unsafe { *wc.add(out) = e };
        out += 1;
    }
    // Producers read `head` from another process: write the shared line only when it moved.
    if head != head0 {
        rec.head.store(head, Ordering::Release);
    }
    let drained = head == tail && held.q.is_empty();
    drop(held);
    if w.owes.load(Ordering::Relaxed) {
        // SAFETY: cq is a live CQ of ours.
        unsafe { after_owed_poll(cq, drained) };
    }
    if out == 0 {
        crate::qp::progress_stalled(rt, w.slot);
    }
    if out > 0 {
        rt.count(Counter::Completions, out as i64);
        for k in 0..out {
            // SAFETY: entries 0..out were written above.
            let st = unsafe { (*wc.add(k)).status };
            if st == IBV_WC_WR_FLUSH_ERR {
                rt.count(Counter::FlushCompletions, 1);
            } else if st != IBV_WC_SUCCESS {
                rt.count(Counter::ErrorCompletions, 1);
            }
        }
    }
    if rec.overrun.load(Ordering::Relaxed) != 0 && rec.overrun.swap(0, Ordering::Relaxed) == 1 {
        crate::log::warn(&format!("CQ {} overrun (capacity {cap})", w.slot));
        let mut ev: ibv_async_event = Default::default();
        ev.element.cq = cq;
        ev.event_type = IBV_EVENT_CQ_ERR;
        // SAFETY: the CQ's context is live.
        unsafe { crate::device::ctx_wrap((*cq).context) }
            .async_q
            .push(ev);
    }
    out as c_int
}

/// True if the CQ has entries the application has not polled yet.
fn nonempty(w: &CqWrap) -> bool {
    let rec = w.rec;
    rec.tail.load(Ordering::Acquire) != rec.head.load(Ordering::Acquire)
        || !w
            .consumer
            .try_lock()
            .map(|h| h.q.is_empty())
            .unwrap_or(true)
}

/// [`CqRec::armed`](softrdma_abi::fabric::CqRec) values: not armed; armed (the next entry
/// raises an event); armed with an event owed by the consumer for entries present at arming
/// (producers then add to the debt without raising anything: `swap(0) == ARMED` is false).
const DISARMED: u32 = 0;
const ARMED: u32 = 1;
const OWED: u32 = 2;

/// `ibv_req_notify_cq` found entries in the CQ: they are owed an event (softrdma never loses a
/// wake-up). Consumers almost always poll right after arming (get the event, ack, arm, poll),
/// which takes those entries, so instead of a datagram on the channel now (a system call, and
/// another to read it) the debt is noted on the channel and the CQ marked `OWED`: entries that
/// producers add meanwhile join it without a datagram; a poll that drains the CQ settles it
/// and re-arms the CQ ([`after_owed_poll`]); `ibv_get_cq_event` pays it at once without a
/// system call ([`take_owed`]); otherwise the event thread raises it as a datagram on its
/// next pass (within its 100 ms tick, [`raise_owed`]), so a consumer waiting on the channel
/// fd without draining the CQ still wakes. False if the debt cannot be noted (no channel,
/// delayed completions held, another CQ of the channel owes one): the caller raises the event
/// now.
///
/// # Safety
/// `cq` must be a live CQ of ours, armed by the caller.
unsafe fn owe_event(cq: *mut ibv_cq) -> bool {
    // SAFETY: per the contract; its channel, if any, is a live ChannelWrap.
    let (w, ch) = unsafe { (&*(cq as *const CqWrap), (*cq).channel as *const ChannelWrap) };
    let held_empty = w
        .consumer
        .try_lock()
        .map(|h| h.q.is_empty())
        .unwrap_or(false);
    if ch.is_null() || !held_empty {
        return false;
    }
    // SAFETY: as above.
    let owed = unsafe { &(*ch).owed };
    let me = cq as u64;
    if owed
        .compare_exchange(0, me, Ordering::AcqRel, Ordering::Acquire)
        .is_err_and(|cur| cur != me)
    {
        return false;
    }
    w.owes.store(true, Ordering::Release);
    if w.rec
        .armed
        .compare_exchange(ARMED, OWED, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        // A producer took the arm meanwhile and raised the event itself.
        if w.owes.swap(false, Ordering::AcqRel) {
            clear_note(w);
        }
    }
    true
}

/// Forget the channel's note of `w`'s debt.
fn clear_note(w: &CqWrap) {
    if !w.cq.channel.is_null() {
        // SAFETY: the channel of a live CQ is a live ChannelWrap.
        let ch = unsafe { &*(w.cq.channel as *const ChannelWrap) };
        let _ = ch.owed.compare_exchange(
            w as *const CqWrap as u64,
            0,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }
}

/// After a poll of a CQ that owes an event: once the CQ is drained the consumer has seen every
/// entry, so the debt is settled and the CQ armed again for the next entry (arm-then-check as
/// in `ibv_req_notify_cq`); while entries remain the debt stays and producers stay silent.
///
/// # Safety
/// `cq` must be a live CQ of ours.
unsafe fn after_owed_poll(cq: *mut ibv_cq, drained: bool) {
    // SAFETY: per the contract.
    let w = unsafe { &*(cq as *const CqWrap) };
    if !drained {
        // A producer that took the arm (0) raised nothing: the debt still covers its entry.
        let _ = w
            .rec
            .armed
            .compare_exchange(DISARMED, OWED, Ordering::AcqRel, Ordering::Relaxed);
        return;
    }
    if !w.owes.swap(false, Ordering::AcqRel) {
        return;
    }
    clear_note(w);
    // SAFETY: per the contract.
    unsafe { arm(cq) };
}

/// Arm `cq` for the next entry, then check: entries already present are owed an event (no
/// lost wake-ups), noted ([`owe_event`]) or raised now.
///
/// # Safety
/// `cq` must be a live CQ of ours.
unsafe fn arm(cq: *mut ibv_cq) {
    // SAFETY: per the contract.
    let w = unsafe { &*(cq as *const CqWrap) };
    w.rec.armed.store(ARMED, Ordering::SeqCst);
    if !nonempty(w) {
        return;
    }
    // SAFETY: per the contract; armed just above.
    let noted = unsafe { owe_event(cq) };
    if !noted && w.rec.armed.swap(DISARMED, Ordering::AcqRel) == ARMED {
        // SAFETY: w is live.
        unsafe { notify(cq as *mut CqWrap) };
    }
}

/// Raise the event `w` owes, if any, as a datagram now (event thread, `ibv_resize_cq`).
///
/// # Safety
/// `w` must be a live CQ of ours.
unsafe fn raise_owed(w: *mut CqWrap) {
    // SAFETY: per the contract.
    let r = unsafe { &*w };
    if r.owes.swap(false, Ordering::AcqRel) {
        clear_note(r);
        r.rec.armed.store(DISARMED, Ordering::SeqCst);
        // SAFETY: per the contract.
        unsafe { notify(w) };
    }
}

/// `ibv_get_cq_event`: pay the event a CQ of this channel owes, if any (its CQ), without a
/// system call.
///
/// # Safety
/// `ch` must be a live channel of ours whose CQs are live.
unsafe fn take_owed(ch: *mut ibv_comp_channel) -> Option<*mut CqWrap> {
    // SAFETY: per the contract.
    let c = unsafe { &*(ch as *const ChannelWrap) }
        .owed
        .swap(0, Ordering::AcqRel);
    if c == 0 {
        return None;
    }
    // SAFETY: a CQ clears its note on this channel before it is destroyed.
    let w = unsafe { &*(c as *const CqWrap) };
    if !w.owes.swap(false, Ordering::AcqRel) {
        return None;
    }
    w.rec.armed.store(DISARMED, Ordering::SeqCst);
    Some(c as *mut CqWrap)
}

pub(crate) unsafe extern "C" fn req_notify_cq(cq: *mut ibv_cq, _solicited_only: c_int) -> c_int {
    if cq.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: cq is a live CQ of ours, so its context is live too.
    if unsafe { crate::device::gone((*cq).context) } {
        return libc::EIO;
    }
    // SAFETY: cq is a live CQ of ours.
    unsafe { arm(cq) };
    0
}

/// Device removal: readers of the completion channels of CQs on the removed device get EIO
/// (`ibv_get_cq_event` fails) once the events already queued are read, as when the kernel
/// closes the event queue of a disassociated device; the CQs raise no more events.
pub(crate) fn close_channels(rt: &Runtime) {
    let g = rt.cqs.lock().unwrap_or_else(|e| e.into_inner());
    for &p in g.values() {
        // SAFETY: registered CQs are live while the registry lock is held, and so are their
        // contexts and channels.
        unsafe {
            let w = &*(p as *const CqWrap);
            if !crate::device::gone(w.cq.context) {
                continue;
            }
            w.rec.armed.store(0, Ordering::SeqCst);
            if !w.cq.channel.is_null() {
                (*(w.cq.channel as *const ChannelWrap)).q.shut_read();
            }
        }
    }
}

/// Event-thread hook: CQs with due held completions and armed → notify.
pub(crate) fn tick(rt: &Runtime) {
    let g = rt.cqs.lock().unwrap_or_else(|e| e.into_inner());
    let now = util::now_ms();
    for &p in g.values() {
        // SAFETY: registered CQs are live while the registry lock is held.
        let w = unsafe { &*(p as *const CqWrap) };
        let due = w
            .consumer
            .try_lock()
            .map(|h| h.q.front().is_some_and(|x| x.0 <= now))
            .unwrap_or(false);
        if due && w.rec.armed.swap(DISARMED, Ordering::AcqRel) == ARMED {
            // SAFETY: w is live (registry lock held).
            unsafe { notify(p as *mut CqWrap) };
        }
        // An event still owed for entries present at arming (the consumer did not poll them).
        // SAFETY: w is live (registry lock held).
        unsafe { raise_owed(p as *mut CqWrap) };
    }
}

pub(crate) unsafe extern "C" fn get_cq_event(
    ch: *mut ibv_comp_channel,
    cq: *mut *mut ibv_cq,
    cq_context: *mut *mut c_void,
) -> c_int {
    if ch.is_null() || cq.is_null() || cq_context.is_null() {
        set_errno(libc::EINVAL);
        return -1;
    }
    let p: u64;
    // SAFETY: ch is a live channel of ours.
    if let Some(c) = unsafe { take_owed(ch) } {
        p = c as u64;
    } else {
        let mut b = [0u8; 8];
        // SAFETY: ch is a live channel of ours.
        match unsafe { &*(ch as *const ChannelWrap) }.q.recv(&mut b) {
            Ok(8) => p = u64::from_ne_bytes(b),
            Ok(_) => {
                set_errno(libc::EIO);
                return -1;
            }
            Err(e) => {
                set_errno(e);
                return -1;
            }
        }
    }
    let c = p as *mut ibv_cq;
    // SAFETY: the record holds a CQ pointer written by notify(); the application must not destroy
    // a CQ with unacknowledged events, so it is live.
    unsafe {
        *cq = c;
        *cq_context = (*c).cq_context;
    }
    0
}

pub(crate) unsafe extern "C" fn ack_cq_events(cq: *mut ibv_cq, n: u32) {
    if cq.is_null() {
        return;
    }
    // SAFETY: cq is a live CQ; the counter is a u32 inside it (same layout as AtomicU32).
    unsafe {
        (*(&mut (*cq).comp_events_completed as *mut u32 as *const AtomicU32))
            .fetch_add(n, Ordering::AcqRel)
    };
}

/// Remove the not-yet-polled completions of QP `qpn` from local CQ `slot`, as hardware providers
/// do on `ibv_destroy_qp`, so no completion of a destroyed QP is returned later. With
/// `keep_recv`, receive completions stay (SRQ WQEs must reach the application to be re-posted).
/// Returns how many entries were removed.
pub(crate) fn purge_qp(rt: &Runtime, slot: u32, qpn: u32, keep_recv: bool) -> usize {
    let w = {
        let g = rt.cqs.lock().unwrap_or_else(|e| e.into_inner());
        match g.get(&slot) {
            Some(&p) => p as *const CqWrap,
            None => return 0,
        }
    };
    // SAFETY: the CQ was registered a moment ago; the application must not destroy a CQ that a
    // QP being destroyed still uses (verbs rule), so it stays live during this call.
    let w = unsafe { &*w };
    let drop_it = |e: &ibv_wc| e.qp_num == qpn && !(keep_recv && e.opcode & IBV_WC_RECV != 0);
    let mut held = w.consumer.lock().unwrap_or_else(|e| e.into_inner());
    let before = held.q.len();
    held.q.retain(|(_, e)| !drop_it(e));
    let mut removed = before - held.q.len();
    let rec = w.rec;
    let _l = SharedLock::lock(&rec.lock, rt.pid);
    let cap = rec.cap.load(Ordering::Relaxed) as u64;
    let ring = rec.addr.load(Ordering::Relaxed) as *mut ibv_wc;
    if cap == 0 || ring.is_null() {
        return removed;
    }
    let head = rec.head.load(Ordering::Acquire);
    let tail = rec.tail.load(Ordering::Acquire);
    let mut out = head;
    for i in head..tail {
        // SAFETY: i in [head, tail): a published slot of our own ring; we hold both the consumer
        // and the producer lock, so nobody else reads or writes the ring now.
        let e = unsafe { *ring.add((i % cap) as usize) };
        if drop_it(&e) {
            removed += 1;
            continue;
        }
        // SAFETY: out <= i < tail, same ring and locks as above.
        unsafe { *ring.add((out % cap) as usize) = e };
        out += 1;
    }
    rec.tail.store(out, Ordering::Release);
    removed
}
