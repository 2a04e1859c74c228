//! The send-queue engine: executes a QP's WRs strictly in order inside the caller's thread,
//! moving payload with `process_vm_readv/writev`, and implements the RC error semantics
//! (first failing WR with its status, QP → ERR, everything else flushed, LAST_WQE_REACHED).

use crate::copy::{self, Ranges};
use crate::cq::{PushError, PushOrCopy};
use crate::faults::Action;
use crate::mr::{self, MrAccess, MrError};
use crate::qp::{complete, wait_no_delivery, wc, QpWrap, Sq};
use crate::runtime::Runtime;
use crate::util::{self, CopyError, SharedLock};
use smallvec::SmallVec;
use softrdma_abi::fabric::{Counter, QpRec, RecvWqe};
use softrdma_abi::verbs::*;
use std::sync::atomic::Ordering;

/// A posted send WR, copied out of the application's memory.
pub(crate) struct SendWr {
    pub wr_id: u64,
    pub opcode: u32,
    pub signaled: bool,
    pub sges: SmallVec<[ibv_sge; 4]>,
    pub inline: Option<SmallVec<[u8; 64]>>,
    pub len: u64,
    pub remote_addr: u64,
    pub rkey: u32,
    pub imm: u32,
    pub compare_add: u64,
    pub swap: u64,
    /// 1-based index among this QP's WRs of the same opcode.
    pub nth_of_op: u64,
    /// 1-based index among all this QP's WRs.
    pub nth: u64,
    /// Fault rules were already consulted for this WR (a stalled WR is retried, not redrawn).
    pub fault_checked: bool,
}

impl SendWr {
    /// Validate and copy one WR (errno on immediate post errors).
    ///
    /// # Safety
    /// `r.sg_list` must have `r.num_sge` readable entries, and inline SGEs must point to
    /// readable memory (caller contract of `ibv_post_send`).
    pub(crate) unsafe fn parse(r: &ibv_send_wr, w: &QpWrap) -> Result<SendWr, i32> {
        let op = r.opcode;
        let supported = matches!(
            op,
            IBV_WR_SEND
                | IBV_WR_SEND_WITH_IMM
                | IBV_WR_SEND_WITH_INV
                | IBV_WR_RDMA_WRITE
                | IBV_WR_RDMA_WRITE_WITH_IMM
                | IBV_WR_RDMA_READ
                | IBV_WR_ATOMIC_CMP_AND_SWP
                | IBV_WR_ATOMIC_FETCH_AND_ADD
        );
        if !supported || r.num_sge < 0 || r.num_sge as u32 > w.cap.max_send_sge {
            return Err(libc::EINVAL);
        }
        let mut sges: SmallVec<[ibv_sge; 4]> = SmallVec::with_capacity(r.num_sge as usize);
        for k in 0..r.num_sge as usize {
            // SAFETY: caller contract.
            sges.push(unsafe { *r.sg_list.add(k) });
        }
        let len: u64 = sges.iter().map(|s| s.length as u64).sum();
        let is_send = matches!(
            op,
            IBV_WR_SEND | IBV_WR_SEND_WITH_IMM | IBV_WR_SEND_WITH_INV
        );
        let is_write = matches!(op, IBV_WR_RDMA_WRITE | IBV_WR_RDMA_WRITE_WITH_IMM);
        let inline = if r.send_flags & IBV_SEND_INLINE != 0 && (is_send || is_write) {
            if len > w.cap.max_inline_data as u64 {
                return Err(libc::EINVAL);
            }
            let mut v = SmallVec::with_capacity(len as usize);
            for s in &sges {
                // SAFETY: inline payload is read at post time from the caller's buffers.
                v.extend_from_slice(unsafe {
                    std::slice::from_raw_parts(s.addr as *const u8, s.length as usize)
                });
            }
            Some(v)
        } else {
            None
        };
        if w.qp.qp_type == IBV_QPT_UC && !is_send && !is_write {
            return Err(libc::EINVAL);
        }
        // SAFETY: reading the union members that correspond to the opcode.
        let (remote_addr, rkey, compare_add, swap) = unsafe {
            match op {
                IBV_WR_ATOMIC_CMP_AND_SWP | IBV_WR_ATOMIC_FETCH_AND_ADD => {
                    let a = r.wr.atomic;
                    (a.remote_addr, a.rkey, a.compare_add, a.swap)
                }
                _ => (r.wr.rdma.remote_addr, r.wr.rdma.rkey, 0, 0),
            }
        };
        // SAFETY: imm_data / invalidate_rkey share the union; both are plain u32.
        let imm = unsafe { r.__bindgen_anon_1.imm_data };
        Ok(SendWr {
            wr_id: r.wr_id,
            opcode: op,
            signaled: w.sq_sig_all || r.send_flags & IBV_SEND_SIGNALED != 0,
            sges,
            inline,
            len,
            remote_addr,
            rkey,
            imm,
            compare_add,
            swap,
            nth_of_op: 0,
            nth: 0,
            fault_checked: false,
        })
    }
}

/// Why the head WR waits.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stall {
    pub since_ms: u64,
}

/// Stall reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StallKind {
    /// No receive WQE at the responder.
    Rnr,
    /// The responder QP is not (or no longer) in RTR/RTS, or gone: retry until the timeout.
    NotReady,
}

/// What executing one WR produced.
enum Exec {
    Done(u32),
    Stall(StallKind),
    Fail(u32),
}

fn wc_opcode(op: u32) -> u32 {
    match op {
        IBV_WR_RDMA_WRITE | IBV_WR_RDMA_WRITE_WITH_IMM => IBV_WC_RDMA_WRITE,
        IBV_WR_RDMA_READ => IBV_WC_RDMA_READ,
        IBV_WR_ATOMIC_CMP_AND_SWP => IBV_WC_COMP_SWAP,
        IBV_WR_ATOMIC_FETCH_AND_ADD => IBV_WC_FETCH_ADD,
        _ => IBV_WC_SEND,
    }
}

/// Run the send queue until it is empty or the head WR stalls.
pub(crate) fn run(rt: &Runtime, w: &QpWrap, sq: &mut Sq) {
    loop {
        let state = w.rec.state.load(Ordering::Acquire);
        if state == IBV_QPS_ERR {
            // Posted to (or found in) an ERR QP: flush, and make sure the ERR side effects ran.
            enter_error(rt, w, sq, "send queue found in ERR");
            return;
        }
        let Some(head) = sq.pending.front() else {
            w.set_stalled(false);
            return;
        };
        if state != IBV_QPS_RTS && state != IBV_QPS_SQD {
            return;
        }
        let batchable = matches!(head.opcode, IBV_WR_RDMA_WRITE | IBV_WR_RDMA_READ);
        if batchable && !head.fault_checked && !rt.faults.is_active() {
            match copy_batch(rt, w, sq) {
                Batch::NotApplicable => {}
                Batch::Progress => continue,
                Batch::Failed => return,
            }
        }
        let Some(head) = sq.pending.front() else {
            return;
        };
        let action = if head.fault_checked {
            None
        } else {
            rt.faults.on_wr(
                w.qpn,
                w.seq,
                head.opcode,
                head.nth_of_op,
                head.nth,
                head.wr_id,
            )
        };
        if let Some(h) = sq.pending.front_mut() {
            h.fault_checked = true;
        }
        let Some(head) = sq.pending.front() else {
            return;
        };
        let res = match action {
            Some(Action::Fail(st)) => Exec::Fail(st),
            Some(Action::QpError) => {
                enter_error(rt, w, sq, "injected qperr");
                return;
            }
            None => execute(rt, w, head),
        };
        match res {
            Exec::Done(byte_len) => complete_head(rt, w, sq, byte_len),
            Exec::Stall(kind) => {
                let attr = *w.attr.lock().unwrap_or_else(|e| e.into_inner());
                // A busy-polling requester retries a stalled head on every ibv_poll_cq: with
                // rnr_retry 7 (retry forever) an ongoing RNR stall needs no clock read.
                if kind == StallKind::Rnr && attr.rnr_retry >= 7 && sq.stall.is_some() {
                    w.set_stalled(true);
                    return;
                }
                let now = util::now_ms();
                let st = *sq.stall.get_or_insert_with(|| {
                    rt.count(Counter::RnrStalls, (kind == StallKind::Rnr) as i64);
                    Stall { since_ms: now }
                });
                let exhausted = match kind {
                    // rnr_retry 7 = retry forever; otherwise (rnr_retry + 1) × 10 ms.
                    StallKind::Rnr => {
                        attr.rnr_retry < 7 && now - st.since_ms > (attr.rnr_retry as u64 + 1) * 10
                    }
                    // timeout 0 = infinite per the spec; we bound it to 5 s anyway.
                    StallKind::NotReady => {
                        let per = if attr.timeout == 0 {
                            5000
                        } else {
                            (4096u64 << attr.timeout.min(31)) / 1_000_000
                        };
                        now - st.since_ms > (per * (attr.retry_cnt as u64 + 1)).clamp(100, 5000)
                    }
                };
                if exhausted {
                    let status = if kind == StallKind::Rnr {
                        IBV_WC_RNR_RETRY_EXC_ERR
                    } else {
                        IBV_WC_RETRY_EXC_ERR
                    };
                    fail_head(rt, w, sq, status);
                    return;
                }
                w.set_stalled(true);
                return;
            }
            Exec::Fail(status) => {
                fail_head(rt, w, sq, status);
                return;
            }
        }
    }
}

/// The head WR succeeded: pop it and complete it if signaled.
fn complete_head(rt: &Runtime, w: &QpWrap, sq: &mut Sq, byte_len: u32) {
    let Some(wr) = sq.pending.pop_front() else {
        return;
    };
    sq.stall = None;
    rt.count(Counter::OutstandingSends, -1);
    rt.count(Counter::BytesMoved, wr.len as i64);
    if wr.signaled {
        complete(
            rt,
            w,
            false,
            &wc(w, wr.wr_id, IBV_WC_SUCCESS, wc_opcode(wr.opcode), byte_len),
        );
    }
}

/// Most WRs [`copy_batch`] gathers into one system call.
const MAX_BATCH: usize = 16;

/// What [`copy_batch`] did.
enum Batch {
    /// Fewer than two WRs qualify: run the head alone.
    NotApplicable,
    /// The gathered WRs completed.
    Progress,
    /// A gathered WR failed; the QP is in ERR (the rest flushed).
    Failed,
}

/// Gather the consecutive plain RDMA WRITEs (or READs) at the head of the send queue whose
/// remote side is not mapped here (anonymous memory) into one `process_vm_writev` (`readv`).
/// Each WR is validated exactly as alone (keys, PD, access, bounds); the first one that does
/// not validate ends the batch and runs alone later. If the copy stops early, the WRs whose
/// bytes all landed complete, the first one that did not fails (REM_ACCESS_ERR, or
/// RETRY_EXC_ERR if the peer is gone) and the rest are flushed. Only used while no fault rule
/// is active (faults are drawn per WR).
fn copy_batch(rt: &Runtime, w: &QpWrap, sq: &mut Sq) -> Batch {
    let Some(opcode) = sq.pending.front().map(|wr| wr.opcode) else {
        return Batch::NotApplicable;
    };
    let write = opcode == IBV_WR_RDMA_WRITE;
    let (local_need, remote_need) = if write {
        (0, IBV_ACCESS_REMOTE_WRITE)
    } else {
        (IBV_ACCESS_LOCAL_WRITE, IBV_ACCESS_REMOTE_READ)
    };
    let n = sq
        .pending
        .iter()
        .take(MAX_BATCH)
        .take_while(|wr| wr.opcode == opcode && !wr.fault_checked)
        .count();
    if n < 2 {
        return Batch::NotApplicable;
    }
    let Ok(p) = peer(rt, w) else {
        return Batch::NotApplicable;
    };
    let Ok(_d) = enter(&p, w.qpn) else {
        return Batch::NotApplicable;
    };
    if p.rec.access.load(Ordering::Relaxed) & remote_need == 0 {
        return Batch::NotApplicable;
    }
    let pd = p.rec.pd.load(Ordering::Relaxed);
    let mut guards: SmallVec<[MrAccess; MAX_BATCH]> = SmallVec::new();
    let mut local_guards: SmallVec<[Guards; MAX_BATCH]> = SmallVec::new();
    let mut local = copy::Iov::new();
    let mut remote = copy::Iov::new();
    // Byte offset (in the gathered lists) at which each WR's payload ends.
    let mut ends: SmallVec<[usize; MAX_BATCH]> = SmallVec::new();
    let mut total = 0usize;
    for wr in sq.pending.iter().take(n) {
        let Ok((g, l)) = local_sges(rt, w, wr, local_need) else {
            break;
        };
        if wr.len > 0 {
            let need = remote_need;
            let Ok(r) = mr::check(wr.rkey, p.pid, pd, wr.remote_addr, wr.len, need) else {
                break;
            };
            if r.mapped.is_some() {
                break; // the memcpy path is faster than any system call
            }
            local.extend_from_slice(&l.addrs);
            remote.push((r.addr, wr.len as usize));
            guards.push(r);
            total += wr.len as usize;
        }
        local_guards.push(g);
        ends.push(total);
    }
    if ends.len() < 2 {
        return Batch::NotApplicable;
    }
    let res = util::transfer_counted(p.pid, &local, &remote, write);
    drop(guards);
    drop(local_guards);
    let landed = match res {
        Ok(()) => total,
        Err((d, _)) => d,
    };
    for &end in &ends {
        if end > landed {
            break;
        }
        let byte_len = match sq.pending.front() {
            Some(wr) if !write => wr.len as u32,
            _ => 0,
        };
        complete_head(rt, w, sq, byte_len);
    }
    match res {
        Ok(()) => Batch::Progress,
        Err((_, e)) => {
            let status = match e {
                CopyError::PeerGone => IBV_WC_RETRY_EXC_ERR,
                CopyError::Fault => {
                    responder_error(rt, &p, Some(IBV_EVENT_QP_ACCESS_ERR));
                    IBV_WC_REM_ACCESS_ERR
                }
            };
            fail_head(rt, w, sq, status);
            Batch::Failed
        }
    }
}

/// Complete the head WR with `status`, then move the QP to ERR (flushing the rest).
pub(crate) fn fail_head(rt: &Runtime, w: &QpWrap, sq: &mut Sq, status: u32) {
    if let Some(wr) = sq.pending.pop_front() {
        rt.count(Counter::OutstandingSends, -1);
        crate::log::debug(&format!(
            "QP {:#x}: wr_id {:#x} failed with status {status}",
            w.qpn, wr.wr_id
        ));
        complete(
            rt,
            w,
            false,
            &wc(w, wr.wr_id, status, wc_opcode(wr.opcode), 0),
        );
    }
    sq.stall = None;
    enter_error(rt, w, sq, "work request failed");
}

/// Move the QP to ERR: flush every outstanding send WR and (without SRQ) every posted receive
/// with WR_FLUSH_ERR, then raise LAST_WQE_REACHED once for SRQ-attached QPs.
pub(crate) fn enter_error(rt: &Runtime, w: &QpWrap, sq: &mut Sq, why: &str) {
    let prev = w.rec.state.swap(IBV_QPS_ERR, Ordering::SeqCst);
    if prev != IBV_QPS_ERR {
        crate::log::debug(&format!("QP {:#x} -> ERR ({why})", w.qpn));
    }
    w.attr.lock().unwrap_or_else(|e| e.into_inner()).qp_state = IBV_QPS_ERR;
    wait_no_delivery(w.rec);
    sq.stall = None;
    w.set_stalled(false);
    while let Some(wr) = sq.pending.pop_front() {
        rt.count(Counter::OutstandingSends, -1);
        complete(
            rt,
            w,
            false,
            &wc(w, wr.wr_id, IBV_WC_WR_FLUSH_ERR, wc_opcode(wr.opcode), 0),
        );
    }
    if w.srq.is_null() {
        loop {
            let wqe = {
                let _l = SharedLock::lock(&w.rec.rq_lock, rt.pid);
                let h = w.rec.rq_head.load(Ordering::Relaxed);
                if h == w.rec.rq_tail.load(Ordering::Acquire) || w.rq_cap == 0 {
                    break;
                }
                w.rec.rq_head.store(h + 1, Ordering::Release);
                // SAFETY: h < tail, slot published; ring has rq_cap entries.
                unsafe { *w.rq.add((h % w.rq_cap as u64) as usize) }
            };
            complete(
                rt,
                w,
                true,
                &wc(w, wqe.wr_id, IBV_WC_WR_FLUSH_ERR, IBV_WC_RECV, 0),
            );
        }
    } else if !w.last_wqe_sent.swap(true, Ordering::AcqRel) {
        // SAFETY: w.qp is the live application QP.
        unsafe {
            crate::events::raise_qp_event(
                &w.qp as *const ibv_qp as *mut ibv_qp,
                IBV_EVENT_QP_LAST_WQE_REACHED,
            )
        };
    }
}

/// The responder QP a WR targets.
struct Peer {
    rec: &'static QpRec,
    qpn: u32,
    pid: u32,
}

fn peer(rt: &Runtime, w: &QpWrap) -> Result<Peer, Exec> {
    let qpn = w.rec.peer_qpn.load(Ordering::Relaxed);
    let attr_dlid = w.attr.lock().unwrap_or_else(|e| e.into_inner()).ah_attr;
    if attr_dlid.is_global == 0 && attr_dlid.dlid != crate::device::PORT_LID {
        // Not a LID on our fabric: the packets go nowhere.
        return Err(Exec::Fail(IBV_WC_RETRY_EXC_ERR));
    }
    let slot = (qpn & 0xffff) as usize;
    let rec = rt.fabric.qp(slot);
    if qpn == 0 || rec.qpn.load(Ordering::Acquire) != qpn {
        // The responder QP is gone: like a real requester, retry until the transport timeout.
        return Err(Exec::Stall(StallKind::NotReady));
    }
    // Liveness is not probed here (that costs syscalls per WR): a dead peer makes the copy fail
    // with ESRCH, and the event thread's liveness scan moves our QP to ERR within ~100 ms.
    let pid = rec.owner.load(Ordering::Acquire);
    if pid == 0 {
        return Err(Exec::Fail(IBV_WC_RETRY_EXC_ERR));
    }
    // A port that is down (ours or the responder's) loses the packets: retry until the
    // transport timeout (RETRY_EXC_ERR), or resume if PORT_ACTIVE comes first.
    if crate::faults::port_down_for(rt, pid) {
        return Err(Exec::Stall(StallKind::NotReady));
    }
    Ok(Peer { rec, qpn, pid })
}

/// Holds the responder's `delivering` count while a WR touches it.
struct Delivering(&'static QpRec);
impl Drop for Delivering {
    fn drop(&mut self) {
        self.0.delivering.fetch_sub(1, Ordering::SeqCst);
    }
}

fn enter(p: &Peer, my_qpn: u32) -> Result<Delivering, Exec> {
    p.rec.delivering.fetch_add(1, Ordering::SeqCst);
    let d = Delivering(p.rec);
    match p.rec.state.load(Ordering::SeqCst) {
        IBV_QPS_RTR | IBV_QPS_RTS | IBV_QPS_SQD | IBV_QPS_SQE => {}
        // Not yet RTR, or in ERR (drops packets): the requester retries until its timeout.
        _ => return Err(Exec::Stall(StallKind::NotReady)),
    }
    if p.rec.peer_qpn.load(Ordering::Relaxed) != my_qpn {
        return Err(Exec::Stall(StallKind::NotReady));
    }
    Ok(d)
}

/// Tell the responder's owner its QP must go to ERR (and optionally raise `event`).
fn responder_error(rt: &Runtime, p: &Peer, event: Option<u32>) {
    p.rec.state.store(IBV_QPS_ERR, Ordering::SeqCst);
    let ev = event.map(|e| e as i64).unwrap_or(-1);
    rt.send_to(p.pid, &format!("rerr {} {ev}", p.qpn));
}

/// MR accesses held while a WR's payload moves (inline: four cover the common WR).
type Guards = SmallVec<[MrAccess; 4]>;

fn local_sges(rt: &Runtime, w: &QpWrap, wr: &SendWr, need: u32) -> Result<(Guards, Ranges), Exec> {
    if let Some(v) = &wr.inline {
        return Ok((Guards::new(), Ranges::own(v.as_ptr() as u64, v.len())));
    }
    let mut guards = Guards::new();
    let mut iov = Ranges::default();
    for s in &wr.sges {
        if s.length == 0 {
            continue;
        }
        match mr::check(s.lkey, rt.pid, w.pd, s.addr, s.length as u64, need) {
            Ok(g) => {
                iov.push(g.addr, s.length as usize, g.mapped);
                guards.push(g);
            }
            Err(_) => return Err(Exec::Fail(IBV_WC_LOC_PROT_ERR)),
        }
    }
    Ok((guards, iov))
}

/// Pop one receive WQE of the responder (its RQ or SRQ). None = RNR (and we registered as waiter).
fn pop_wqe(rt: &Runtime, p: &Peer, my_qpn: u32) -> Result<Option<(RecvWqe, u32)>, Exec> {
    let srq = p.rec.srq.load(Ordering::Relaxed);
    let (lock, head, tail, addr, cap, pd) = if srq != 0 {
        let s = rt.fabric.srq((srq - 1) as usize);
        (
            &s.lock,
            &s.head,
            &s.tail,
            &s.addr,
            s.cap.load(Ordering::Relaxed),
            s.pd.load(Ordering::Relaxed),
        )
    } else {
        let r = p.rec;
        (
            &r.rq_lock,
            &r.rq_head,
            &r.rq_tail,
            &r.rq_addr,
            r.rq_cap.load(Ordering::Relaxed),
            r.pd.load(Ordering::Relaxed),
        )
    };
    let _l = SharedLock::lock(lock, rt.pid);
    let h = head.load(Ordering::Relaxed);
    let base = addr.load(Ordering::Relaxed);
    if h == tail.load(Ordering::Acquire) || cap == 0 || base == 0 {
        p.rec.rnr_waiter_qpn.store(my_qpn, Ordering::Relaxed);
        p.rec.rnr_waiter.store(rt.pid, Ordering::Release);
        if srq != 0 {
            // ibv_post_srq_recv kicks the waiters of the SRQ's QPs when it sees this.
            rt.fabric
                .srq((srq - 1) as usize)
                .rnr_stalled
                .store(1, Ordering::Release);
        }
        return Ok(None);
    }
    let src = base + (h % cap as u64) * std::mem::size_of::<RecvWqe>() as u64;
    let mut wqe = RecvWqe::default();
    let n = std::mem::size_of::<RecvWqe>() as u64;
    if p.pid == rt.pid {
        // SAFETY: src is a published slot of our own live RQ/SRQ ring (we hold its lock).
        wqe = unsafe { std::ptr::read(src as *const RecvWqe) };
    } else if let Some(lp) = rt.peer_ptr(p.pid, src, n) {
        // SAFETY: lp maps the published slot inside the peer's arena (bounds checked); RecvWqe
        // is plain data, valid for any bit pattern; we hold the ring's lock.
        wqe = unsafe { std::ptr::read_volatile(lp as *const RecvWqe) };
    } else {
        let n = std::mem::size_of::<RecvWqe>();
        if util::read_from(p.pid, &[(&mut wqe as *mut RecvWqe as u64, n)], &[(src, n)]).is_err() {
            return Err(Exec::Fail(IBV_WC_RETRY_EXC_ERR));
        }
    }
    head.store(h + 1, Ordering::Release);
    if srq != 0 {
        // SRQ limit: when the number of WQEs drops below an armed limit, disarm it and have the
        // owner raise IBV_EVENT_SRQ_LIMIT_REACHED.
        let s = rt.fabric.srq((srq - 1) as usize);
        let limit = s.limit.load(Ordering::Relaxed);
        let left = tail.load(Ordering::Acquire) - (h + 1);
        if limit != 0
            && left < limit as u64
            && s.limit
                .compare_exchange(limit, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            rt.send_to(p.pid, &format!("srqlimit {}", srq - 1));
        }
    }
    Ok(Some((wqe, pd)))
}

/// Deliver `wr`'s payload (possibly empty) into a receive WQE of the responder and complete it
/// there. Returns the requester outcome.
fn deliver(
    rt: &Runtime,
    w: &QpWrap,
    p: &Peer,
    wr: &SendWr,
    local: &Ranges,
    wqe: RecvWqe,
    pd: u32,
) -> Exec {
    let recv_cq = p.rec.recv_cq.load(Ordering::Relaxed);
    let mut rwc: ibv_wc = Default::default();
    rwc.wr_id = wqe.wr_id;
    rwc.qp_num = p.qpn;
    rwc.src_qp = w.qpn;
    rwc.slid = crate::device::PORT_LID;
    let is_write_imm = wr.opcode == IBV_WR_RDMA_WRITE_WITH_IMM;
    rwc.opcode = if is_write_imm {
        IBV_WC_RECV_RDMA_WITH_IMM
    } else {
        IBV_WC_RECV
    };
    let mut responder_fail = |status: u32, requester: u32| {
        rwc.status = status;
        rwc.vendor_err = 0x100 + status;
        let _ = crate::cq::push(rt, recv_cq, p.pid, &rwc);
        responder_error(rt, p, None);
        Exec::Fail(requester)
    };
    let mut guards = Guards::new();
    let mut payload_remote = Ranges::default();
    if !is_write_imm {
        // Scatter into the WQE's SGEs.
        let mut remote = Ranges::default();
        let mut left = wr.len;
        let n = (wqe.num_sge as usize).min(wqe.sge.len());
        for s in &wqe.sge[..n] {
            if left == 0 {
                break;
            }
            let take = left.min(s.length as u64);
            if take == 0 {
                continue;
            }
            match mr::check(s.lkey, p.pid, pd, s.addr, take, IBV_ACCESS_LOCAL_WRITE) {
                Ok(g) => {
                    remote.push(g.addr, take as usize, g.mapped);
                    guards.push(g);
                }
                Err(_) => return responder_fail(IBV_WC_LOC_PROT_ERR, IBV_WC_REM_OP_ERR),
            }
            left -= take;
        }
        if left > 0 {
            return responder_fail(IBV_WC_LOC_LEN_ERR, IBV_WC_REM_INV_REQ_ERR);
        }
        payload_remote = remote;
    }
    rwc.status = IBV_WC_SUCCESS;
    rwc.byte_len = wr.len as u32;
    match wr.opcode {
        IBV_WR_SEND_WITH_IMM | IBV_WR_RDMA_WRITE_WITH_IMM => {
            rwc.wc_flags = IBV_WC_WITH_IMM;
            rwc.__bindgen_anon_1.imm_data = wr.imm;
        }
        IBV_WR_SEND_WITH_INV => {
            rwc.wc_flags = IBV_WC_WITH_INV;
            rwc.__bindgen_anon_1.invalidated_rkey = wr.imm;
            // The named key dies before the receive completes (later accesses fail).
            mr::invalidate(wr.imm, p.pid, pd);
        }
        _ => {}
    }
    let no_payload = Ranges::default();
    let payload_local = if payload_remote.addrs.is_empty() {
        &no_payload
    } else {
        local
    };
    // One copy for payload + completion; the completion is published after both landed.
    let r = crate::cq::push_with(rt, recv_cq, p.pid, &rwc, payload_local, &payload_remote);
    match r {
        Ok(()) => Exec::Done(0),
        Err(PushOrCopy::Push(PushError::Overrun)) => {
            // The data still lands; only the completion is lost (and the CQ reports CQ_ERR).
            let _ = copy::copy(rt, p.pid, payload_local, &payload_remote, true);
            crate::log::warn(&format!(
                "QP {:#x}: responder CQ overrun; completion dropped",
                p.qpn
            ));
            Exec::Done(0)
        }
        Err(PushOrCopy::Push(PushError::Gone)) | Err(PushOrCopy::Copy(CopyError::PeerGone)) => {
            Exec::Fail(IBV_WC_RETRY_EXC_ERR)
        }
        Err(PushOrCopy::Copy(CopyError::Fault)) => {
            rwc.status = IBV_WC_LOC_PROT_ERR;
            rwc.vendor_err = 0x100 + IBV_WC_LOC_PROT_ERR;
            let _ = crate::cq::push(rt, recv_cq, p.pid, &rwc);
            responder_error(rt, p, None);
            Exec::Fail(IBV_WC_REM_OP_ERR)
        }
    }
}

fn remote_range(
    rt: &Runtime,
    p: &Peer,
    wr: &SendWr,
    len: u64,
    need: u32,
) -> Result<MrAccess, Exec> {
    let qp_ok = p.rec.access.load(Ordering::Relaxed) & need == need;
    let pd = p.rec.pd.load(Ordering::Relaxed);
    match mr::check(wr.rkey, p.pid, pd, wr.remote_addr, len, need) {
        Ok(g) if qp_ok => Ok(g),
        r => {
            let why = match r {
                Ok(_) => "QP lacks the access right",
                Err(MrError::BadKey) => "bad rkey",
                Err(MrError::Range) => "out of range",
                Err(MrError::Access) => "MR lacks the access right",
            };
            crate::log::debug(&format!(
                "remote access error: QP {:#x} -> {:#x} rkey {:#x} addr {:#x} len {len}: {why}",
                p.qpn, p.qpn, wr.rkey, wr.remote_addr
            ));
            responder_error(rt, p, Some(IBV_EVENT_QP_ACCESS_ERR));
            Err(Exec::Fail(IBV_WC_REM_ACCESS_ERR))
        }
    }
}

fn execute(rt: &Runtime, w: &QpWrap, wr: &SendWr) -> Exec {
    let p = match peer(rt, w) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let _d = match enter(&p, w.qpn) {
        Ok(d) => d,
        Err(e) => return e,
    };
    match wr.opcode {
        IBV_WR_SEND | IBV_WR_SEND_WITH_IMM | IBV_WR_SEND_WITH_INV => {
            let (_g, local) = match local_sges(rt, w, wr, 0) {
                Ok(x) => x,
                Err(e) => return e,
            };
            match pop_wqe(rt, &p, w.qpn) {
                Ok(Some((wqe, pd))) => deliver(rt, w, &p, wr, &local, wqe, pd),
                Ok(None) => Exec::Stall(StallKind::Rnr),
                Err(e) => e,
            }
        }
        IBV_WR_RDMA_WRITE | IBV_WR_RDMA_WRITE_WITH_IMM => {
            let (_g, local) = match local_sges(rt, w, wr, 0) {
                Ok(x) => x,
                Err(e) => return e,
            };
            let remote = match remote_range(rt, &p, wr, wr.len, IBV_ACCESS_REMOTE_WRITE) {
                Ok(g) => g,
                Err(e) => return e,
            };
            let wqe = if wr.opcode == IBV_WR_RDMA_WRITE_WITH_IMM {
                match pop_wqe(rt, &p, w.qpn) {
                    Ok(Some(x)) => Some(x),
                    Ok(None) => return Exec::Stall(StallKind::Rnr),
                    Err(e) => return e,
                }
            } else {
                None
            };
            if wr.len > 0 {
                let mut dst = Ranges::default();
                dst.push(remote.addr, wr.len as usize, remote.mapped);
                match copy::copy(rt, p.pid, &local, &dst, true) {
                    Ok(()) => {}
                    Err(CopyError::PeerGone) => return Exec::Fail(IBV_WC_RETRY_EXC_ERR),
                    Err(CopyError::Fault) => {
                        responder_error(rt, &p, Some(IBV_EVENT_QP_ACCESS_ERR));
                        return Exec::Fail(IBV_WC_REM_ACCESS_ERR);
                    }
                }
            }
            drop(remote);
            match wqe {
                Some((wqe, pd)) => deliver(rt, w, &p, wr, &Ranges::default(), wqe, pd),
                None => Exec::Done(0),
            }
        }
        IBV_WR_RDMA_READ => {
            let (_g, local) = match local_sges(rt, w, wr, IBV_ACCESS_LOCAL_WRITE) {
                Ok(x) => x,
                Err(e) => return e,
            };
            let remote = match remote_range(rt, &p, wr, wr.len, IBV_ACCESS_REMOTE_READ) {
                Ok(g) => g,
                Err(e) => return e,
            };
            if wr.len > 0 {
                let mut src = Ranges::default();
                src.push(remote.addr, wr.len as usize, remote.mapped);
                match copy::copy(rt, p.pid, &local, &src, false) {
                    Ok(()) => {}
                    Err(CopyError::PeerGone) => return Exec::Fail(IBV_WC_RETRY_EXC_ERR),
                    Err(CopyError::Fault) => {
                        responder_error(rt, &p, Some(IBV_EVENT_QP_ACCESS_ERR));
                        return Exec::Fail(IBV_WC_REM_ACCESS_ERR);
                    }
                }
            }
            Exec::Done(wr.len as u32)
        }
        IBV_WR_ATOMIC_CMP_AND_SWP | IBV_WR_ATOMIC_FETCH_AND_ADD => {
            if wr.len < 8 || wr.remote_addr % 8 != 0 {
                return Exec::Fail(IBV_WC_REM_INV_REQ_ERR);
            }
            let (_g, local) = match local_sges(rt, w, wr, IBV_ACCESS_LOCAL_WRITE) {
                Ok(x) => x,
                Err(e) => return e,
            };
            let remote = match remote_range(rt, &p, wr, 8, IBV_ACCESS_REMOTE_ATOMIC) {
                Ok(g) => g,
                Err(e) => return e,
            };
            let _lock = SharedLock::lock(&rt.fabric.header().atomic_lock, rt.pid);
            let mut old = 0u64;
            let op = (&mut old as *mut u64 as u64, 8usize);
            if util::read_from(p.pid, &[op], &[(remote.addr, 8)]).is_err() {
                return Exec::Fail(IBV_WC_RETRY_EXC_ERR);
            }
            let new = if wr.opcode == IBV_WR_ATOMIC_FETCH_AND_ADD {
                old.wrapping_add(wr.compare_add)
            } else if old == wr.compare_add {
                wr.swap
            } else {
                old
            };
            if new != old
                && util::write_to(
                    p.pid,
                    &[(&new as *const u64 as u64, 8)],
                    &[(remote.addr, 8)],
                )
                .is_err()
            {
                return Exec::Fail(IBV_WC_RETRY_EXC_ERR);
            }
            // Return the old value into the local SGE(s).
            let old_src = [(&old as *const u64 as u64, 8usize)];
            let mut dst = Vec::new();
            let mut left = 8usize;
            for &(a, l) in &local.addrs {
                if left == 0 {
                    break;
                }
                let t = l.min(left);
                dst.push((a, t));
                left -= t;
            }
            if left == 0 && util::read_from(rt.pid, &dst, &old_src).is_err() {
                return Exec::Fail(IBV_WC_LOC_PROT_ERR);
            }
            Exec::Done(8)
        }
        _ => Exec::Fail(IBV_WC_LOC_QP_OP_ERR),
    }
}

/// The peer process of a local QP died: fail the head WR with RETRY_EXC_ERR and go to ERR.
pub(crate) fn peer_died(rt: &Runtime, w: &QpWrap, sq: &mut Sq, pid: u32) {
    crate::log::warn(&format!(
        "QP {:#x}: peer process {pid} is gone; QP -> ERR",
        w.qpn
    ));
    if sq.pending.is_empty() {
        enter_error(rt, w, sq, "peer process died");
    } else {
        fail_head(rt, w, sq, IBV_WC_RETRY_EXC_ERR);
    }
}
