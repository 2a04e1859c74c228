//! Named regression tests: SPDK issue #3463 (the sequence and the three places
//! its fix 4e45c5636b touched, upstream doc §2.3-2.4) and the later upstream
//! fixes of §2.5 whose trigger lives in the engine. Each test scripts the
//! events by hand and checks the engine's invariants after every event.

use nvmf_rdma_engine::codec::nvme::{
    fctype, io_opcode, sgl_type, Command, Completion, Fuse, Status,
};
use nvmf_rdma_engine::codec::sgl::{encode_in_capsule, encode_keyed, encode_last_segment};
use nvmf_rdma_engine::{
    AbortOutcome, Action, DisconnectReason, EngineError, LocalSge, Notice, Qpair, QpairConfig,
    QpairState, RecvId, ReqId, ReqState, Timestamp, Unexpected, WcStatus, WrId, WrKind,
};

// ---------------------------------------------------------------------------
// A scripted driver
// ---------------------------------------------------------------------------

struct D {
    q: Qpair,
    next_buf: u64,
}

impl D {
    fn new(cfg: QpairConfig) -> (D, Vec<Action>) {
        let mut d = D {
            q: Qpair::new(cfg).expect("valid config"),
            next_buf: 0x100_0000,
        };
        let a = d.take();
        (d, a)
    }

    fn take(&mut self) -> Vec<Action> {
        let mut v = Vec::new();
        while let Some(a) = self.q.poll_action() {
            v.push(a);
        }
        if let Err(e) = self.q.check_invariants() {
            panic!("{e}");
        }
        v
    }

    fn recv(&mut self, slot: u32, bytes: &[u8]) -> Vec<Action> {
        self.q
            .handle_completion(WrId::recv(RecvId(slot)).to_raw(), WcStatus::Success, bytes)
            .unwrap();
        self.take()
    }

    fn wc(&mut self, wr: WrId, status: WcStatus) -> Vec<Action> {
        self.q.handle_completion(wr.to_raw(), status, &[]).unwrap();
        self.take()
    }

    fn data(&self, req: ReqId, idx: u8) -> WrId {
        self.q.data_wr(req, idx).expect("data WR").wr_id
    }

    fn send(&self, req: ReqId) -> WrId {
        self.q.send_wr(req).expect("send WR").wr_id
    }

    fn grant(&mut self, req: ReqId, len: u32) -> Vec<Action> {
        let n = len.div_ceil(4096).max(1);
        let bufs: Vec<LocalSge> = (0..n)
            .map(|_| {
                self.next_buf += 0x10000;
                LocalSge {
                    addr: self.next_buf,
                    len: 4096,
                    lkey: 1,
                }
            })
            .collect();
        self.q.handle_buffers_granted(req, &bufs).unwrap();
        self.take()
    }

    fn executed(&mut self, req: ReqId, status: Status) -> Vec<Action> {
        self.q
            .handle_command_executed(req, Completion::new(0, status))
            .unwrap();
        self.take()
    }

    fn state(&self, req: ReqId) -> ReqState {
        self.q.request_state(req).unwrap()
    }

    fn response(&self, req: ReqId) -> Completion {
        Completion::from_bytes(&self.q.send_wr(req).unwrap().response)
    }
}

fn cfg(qd: u16, read_depth: u16) -> QpairConfig {
    QpairConfig::new(7, qd, read_depth)
}

fn srq_cfg(qd: u16) -> QpairConfig {
    let mut c = QpairConfig::new(9, qd, 4);
    c.srq = true;
    c
}

fn capsule(cmd: &Command, icd: &[u8]) -> Vec<u8> {
    let mut v = cmd.as_bytes().to_vec();
    v.extend_from_slice(icd);
    v
}

fn write_keyed(cid: u16, len: u32) -> Vec<u8> {
    let mut c = Command::new(io_opcode::WRITE, cid);
    c.set_sgl1(encode_keyed(0x1000, len, 0x42, false));
    capsule(&c, &[])
}

fn read_keyed(cid: u16, len: u32) -> Vec<u8> {
    let mut c = Command::new(io_opcode::READ, cid);
    c.set_sgl1(encode_keyed(0x1000, len, 0x42, false));
    capsule(&c, &[])
}

fn multi(opcode: u8, cid: u16, n: u32, each: u32) -> Vec<u8> {
    let mut c = Command::new(opcode, cid);
    c.set_sgl1(encode_last_segment(0, n * 16));
    let mut icd = Vec::new();
    for i in 0..n {
        icd.extend_from_slice(
            &encode_keyed(0x10_0000 * u64::from(i + 1), each, 0x100 + i, false).raw,
        );
    }
    capsule(&c, &icd)
}

fn no_data(opcode: u8, cid: u16, fuse: Fuse) -> Vec<u8> {
    let mut c = Command::new(opcode, cid);
    c.set_fuse(fuse);
    capsule(&c, &[])
}

fn asked(acts: &[Action]) -> Vec<ReqId> {
    acts.iter()
        .filter_map(|a| match a {
            Action::RequestBuffers { req, .. } => Some(*req),
            _ => None,
        })
        .collect()
}

fn executes(acts: &[Action]) -> Vec<ReqId> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Execute { req } => Some(*req),
            _ => None,
        })
        .collect()
}

/// `a` is `want`; a response matches one of the same request and WRITE
/// count whatever receive it re-posts (asserted where it matters).
fn same(a: &Action, want: &Action) -> bool {
    match (a, want) {
        (
            Action::PostResponse { req, writes, .. },
            Action::PostResponse {
                req: want_req,
                writes: want_writes,
                ..
            },
        ) => (req, writes) == (want_req, want_writes),
        _ => a == want,
    }
}

fn has(acts: &[Action], want: Action) -> bool {
    acts.iter().any(|a| same(a, &want))
}

fn pos(acts: &[Action], want: Action) -> usize {
    acts.iter()
        .position(|a| same(a, &want))
        .unwrap_or_else(|| panic!("{want:?} not in {acts:?}"))
}

/// R1: a write with 4 descriptors and read depth 2, so its READ chain is
/// split; R2 and R3: writes queued behind it. Returns the three requests.
fn split_read_setup(d: &mut D) -> (ReqId, ReqId, ReqId) {
    let a = d.recv(0, &multi(io_opcode::WRITE, 1, 4, 1024));
    let r1 = asked(&a)[0];
    let a = d.grant(r1, 4096);
    assert!(
        has(
            &a,
            Action::PostReads {
                req: r1,
                first: 0,
                count: 2
            }
        ),
        "{a:?}"
    );
    assert_eq!(
        d.state(r1),
        ReqState::TransferringHostToController { partial: true }
    );
    let a = d.recv(1, &write_keyed(2, 4096));
    let r2 = asked(&a)[0];
    d.grant(r2, 4096);
    let a = d.recv(2, &write_keyed(3, 4096));
    let r3 = asked(&a)[0];
    d.grant(r3, 4096);
    assert_eq!(d.state(r2), ReqState::DataTransferToControllerPending);
    assert_eq!(d.state(r3), ReqState::DataTransferToControllerPending);
    assert_eq!(d.q.counters().read_depth, 2);
    assert_eq!(d.q.stats().split_reads, 1);
    (r1, r2, r3)
}

// ---------------------------------------------------------------------------
// #3463 and the three places of its fix
// ---------------------------------------------------------------------------

/// The whole #3463 sequence (doc §2.3): split READ chain, RETRY_EXC on the
/// first READ, disconnect, drain, flushes. Upstream crashed in the drain.
#[test]
fn issue_3463_sequence() {
    let (mut d, _) = D::new(cfg(8, 2));
    let (r1, r2, r3) = split_read_setup(&mut d);
    let a = d.wc(d.data(r1, 0), WcStatus::RetryExceeded);
    assert!(matches!(
        a.iter()
            .find(|x| matches!(x, Action::HostDisconnect { .. })),
        Some(Action::HostDisconnect {
            reason: DisconnectReason::WcError {
                status: WcStatus::RetryExceeded,
                ..
            }
        })
    ));
    // R2 and R3 own no WR: dropped now. R1 still has READ 1 in flight.
    assert!(
        has(&a, Action::ReleaseBuffers { req: r2 }) && has(&a, Action::ReleaseBuffers { req: r3 })
    );
    assert!(!has(&a, Action::ReleaseBuffers { req: r1 }));
    assert_eq!(
        d.state(r1),
        ReqState::TransferringHostToController { partial: true }
    );
    assert_eq!(d.state(r2), ReqState::Free);
    let a = d.q.handle_fini(Timestamp(1000)).map(|_| d.take()).unwrap();
    assert_eq!(a, vec![Action::DisconnectQp]);
    assert_eq!(
        d.state(r1),
        ReqState::TransferringHostToController { partial: true }
    );
    let read1 = d.data(r1, 1);
    let a = d.wc(read1, WcStatus::Flushed);
    assert!(has(&a, Action::ReleaseBuffers { req: r1 }));
    assert_eq!(d.state(r1), ReqState::Free);
    // The 5 receives still posted are flushed; then the qpair goes.
    for slot in 3..8 {
        let a =
            d.q.handle_completion(WrId::recv(RecvId(slot)).to_raw(), WcStatus::Flushed, &[]);
        a.unwrap();
        let a = d.take();
        if slot == 7 {
            assert_eq!(
                a,
                vec![Action::DestroyQp { forced: false }, Action::Finished]
            );
        } else {
            assert!(a.is_empty(), "{a:?}");
        }
    }
    // A late duplicate of the READ flush is refused, not applied.
    assert!(matches!(
        d.q.handle_completion(read1.to_raw(), WcStatus::Flushed, &[]),
        Err(EngineError::Finished { .. })
    ));
}

/// Fix place 1 (poller DATA-error branch): the last outstanding READ fails
/// while READs remain unposted; the request must leave the read queue and be
/// freed, not linger in COMPLETED while still linked.
#[test]
fn read_error_on_last_outstanding_read_with_remaining_wrs() {
    let (mut d, _) = D::new(cfg(8, 2));
    let (r1, _r2, _r3) = split_read_setup(&mut d);
    let a = d.wc(d.data(r1, 0), WcStatus::Success);
    assert!(a.is_empty(), "{a:?}");
    let a = d.wc(d.data(r1, 1), WcStatus::RemoteAccess);
    assert!(has(&a, Action::ReleaseBuffers { req: r1 }));
    assert_eq!(d.state(r1), ReqState::Free);
    let c = d.q.counters();
    assert_eq!((c.read_depth, c.send_depth), (0, 0));
    // No further READs of the dead chain were posted.
    assert!(!a.iter().any(|x| matches!(x, Action::PostReads { .. })));
}

/// Fix place 2 (error-state prologue): the qpair enters error while a request
/// with remaining READs is mid-transfer; it must not be force-completed while
/// its READs are in flight, and must not post the rest.
#[test]
fn qpair_error_while_split_read_is_mid_transfer() {
    let (mut d, _) = D::new(cfg(8, 2));
    let (r1, r2, r3) = split_read_setup(&mut d);
    d.q.handle_qp_fatal().unwrap();
    let a = d.take();
    assert!(has(
        &a,
        Action::HostDisconnect {
            reason: DisconnectReason::QpFatal
        }
    ));
    assert!(!has(&a, Action::ReleaseBuffers { req: r1 }));
    assert_eq!(
        d.state(r1),
        ReqState::TransferringHostToController { partial: true }
    );
    assert_eq!((d.state(r2), d.state(r3)), (ReqState::Free, ReqState::Free));
    let a = d.wc(d.data(r1, 0), WcStatus::Success);
    assert!(a.is_empty(), "{a:?}");
    let a = d.wc(d.data(r1, 1), WcStatus::Success);
    assert!(!a
        .iter()
        .any(|x| matches!(x, Action::PostReads { .. } | Action::Execute { .. })));
    assert!(has(&a, Action::ReleaseBuffers { req: r1 }));
    assert_eq!(d.state(r1), ReqState::Free);
}

/// Fix place 3 (process_pending in drain mode): the drain must skip read-queue
/// entries whose READs are in flight and only drop the ones still waiting.
#[test]
fn drain_does_not_force_complete_in_flight_requests() {
    let (mut d, _) = D::new(cfg(8, 2));
    let (r1, r2, r3) = split_read_setup(&mut d);
    d.q.handle_fini(Timestamp(1000)).unwrap();
    let a = d.take();
    assert_eq!(a[0], Action::DisconnectQp);
    assert!(
        has(&a, Action::ReleaseBuffers { req: r2 }) && has(&a, Action::ReleaseBuffers { req: r3 })
    );
    assert_eq!(
        d.state(r1),
        ReqState::TransferringHostToController { partial: true }
    );
    assert_eq!(d.q.counters().send_depth, 2);
    let a = d.wc(d.data(r1, 0), WcStatus::Flushed);
    assert!(a.is_empty(), "{a:?}");
    let a = d.wc(d.data(r1, 1), WcStatus::Flushed);
    assert!(has(&a, Action::ReleaseBuffers { req: r1 }));
}

// ---------------------------------------------------------------------------
// Later upstream fixes (doc §2.5)
// ---------------------------------------------------------------------------

/// 5469bd2d12: `rdma_accept` failed after the receives were posted; the qpair
/// must not be destroyed before every receive has been flushed back.
#[test]
fn accept_failure_after_receives_posted_waits_for_their_flushes() {
    let (mut d, a) = D::new(cfg(4, 4));
    assert_eq!(a.len(), 4);
    d.q.handle_fini(Timestamp(1000)).unwrap();
    assert_eq!(d.take(), vec![Action::DisconnectQp]);
    for slot in 0..4 {
        d.q.handle_completion(WrId::recv(RecvId(slot)).to_raw(), WcStatus::Flushed, &[])
            .unwrap();
        let a = d.take();
        if slot < 3 {
            assert!(a.is_empty(), "destroyed with receives posted: {a:?}");
        } else {
            assert_eq!(
                a,
                vec![Action::DestroyQp { forced: false }, Action::Finished]
            );
        }
    }
}

/// 470cee22fb (#2937): with SRQ, a request finished on an error path still
/// owns its receive; it must go back to the SRQ.
#[test]
fn srq_receive_returned_on_error_path() {
    let (mut d, a) = D::new(srq_cfg(8));
    assert!(a.is_empty());
    let a = d.recv(77, &write_keyed(1, 4096));
    let r1 = asked(&a)[0];
    let a = d.recv(78, &no_data(io_opcode::FLUSH, 2, Fuse::Normal));
    let r2 = executes(&a)[0];
    d.q.handle_peer_disconnected().unwrap();
    let a = d.take();
    assert!(has(&a, Action::CancelBufferRequest { req: r1 }));
    assert!(has(&a, Action::PostRecv { recv: RecvId(77) }), "{a:?}");
    // The executing one returns its receive when the host gives it back.
    let a = d.executed(r2, Status::SUCCESS);
    assert!(has(&a, Action::PostRecv { recv: RecvId(78) }), "{a:?}");
    assert!(!a.iter().any(|x| matches!(x, Action::PostResponse { .. })));
}

/// #2937 class, SRQ receive error path: a receive the QP took from the SRQ
/// and completed in error (or flushed) goes back to the SRQ at once.
#[test]
fn srq_receive_completed_in_error_is_returned() {
    let (mut d, _) = D::new(srq_cfg(8));
    let a = d.wc(WrId::recv(RecvId(5)), WcStatus::LocalLength);
    assert!(has(&a, Action::PostRecv { recv: RecvId(5) }), "{a:?}");
    assert!(a.iter().any(|x| matches!(x, Action::HostDisconnect { .. })));
    let a = d.wc(WrId::recv(RecvId(6)), WcStatus::Flushed);
    assert_eq!(a, vec![Action::PostRecv { recv: RecvId(6) }]);
    assert_eq!(d.q.counters().recv_depth, 0);
}

/// #2937 class, late capsule: a capsule the QP took from the SRQ before it
/// went to error, completed successfully after the engine left the active
/// state, is never answered and its receive goes back to the SRQ.
#[test]
fn srq_capsule_arriving_on_a_dying_qpair_is_returned_unanswered() {
    let (mut d, _) = D::new(srq_cfg(8));
    d.q.handle_peer_disconnected().unwrap();
    d.take();
    let a = d.recv(9, &no_data(io_opcode::FLUSH, 1, Fuse::Normal));
    assert_eq!(a, vec![Action::PostRecv { recv: RecvId(9) }]);
    assert_eq!(d.q.counters().recv_depth, 0);
    assert_eq!(d.q.counters().requests_in_use, 0);
}

/// e775a7a4cf (#3646): a response waiting in the pending-send queue must go
/// out as soon as send depth frees up, on whatever event frees it.
#[test]
fn pending_send_progresses_when_depth_frees() {
    let mut c = cfg(8, 4);
    c.max_send_depth = 17;
    let (mut d, _) = D::new(c);
    let a = d.recv(0, &multi(io_opcode::READ, 1, 16, 512));
    let r1 = asked(&a)[0];
    let a = d.grant(r1, 16 * 512);
    assert_eq!(executes(&a), vec![r1]);
    let a = d.executed(r1, Status::SUCCESS);
    assert!(has(
        &a,
        Action::PostResponse {
            req: r1,
            writes: 16,
            recv: None
        }
    ));
    assert_eq!(d.q.counters().send_depth, 17);
    let a = d.recv(1, &no_data(io_opcode::FLUSH, 2, Fuse::Normal));
    let r2 = executes(&a)[0];
    let a = d.executed(r2, Status::SUCCESS);
    assert!(
        a.iter().all(|x| !matches!(x, Action::PostResponse { .. })),
        "{a:?}"
    );
    assert_eq!(d.state(r2), ReqState::ReadyToCompletePending);
    let a = d.wc(d.send(r1), WcStatus::Success);
    assert!(
        has(
            &a,
            Action::PostResponse {
                req: r2,
                writes: 0,
                recv: None
            }
        ),
        "{a:?}"
    );
}

/// 7251e4c26c (#3556): a fabrics command must not wait behind non-fabrics
/// commands that are starved of buffers.
#[test]
fn fabrics_command_jumps_the_buffer_queue() {
    let (mut d, _) = D::new(cfg(8, 4));
    let a = d.recv(0, &write_keyed(1, 8192));
    let r1 = asked(&a)[0];
    let a = d.recv(1, &write_keyed(2, 8192));
    assert!(
        asked(&a).is_empty(),
        "only the head non-fabrics command asks"
    );
    let mut connect = Command::new_fabrics(fctype::CONNECT, 3);
    connect.set_sgl1(encode_keyed(0x2000, 1024, 0x43, false));
    let a = d.recv(2, &capsule(&connect, &[]));
    let r3 = asked(&a)[0];
    assert_ne!(r3, r1);
    let a = d.grant(r3, 1024);
    assert!(has(
        &a,
        Action::PostReads {
            req: r3,
            first: 0,
            count: 1
        }
    ));
    assert_eq!(d.state(r1), ReqState::NeedBuffer);
}

/// f4c10e1a8e (#3646): commands with in-capsule data skip the buffer queue,
/// so they run while buffers are exhausted.
#[test]
fn in_capsule_command_skips_the_buffer_queue() {
    let (mut d, _) = D::new(cfg(8, 4));
    let a = d.recv(0, &write_keyed(1, 8192));
    assert_eq!(asked(&a).len(), 1);
    let mut c = Command::new(io_opcode::WRITE, 2);
    c.set_sgl1(encode_in_capsule(0, 512));
    let a = d.recv(1, &capsule(&c, &[0xee; 512]));
    assert_eq!(executes(&a).len(), 1, "{a:?}");
}

/// 43f6d33853 / 5e156a6e79 (#3541): a duplicate last-WQE-reached event is
/// reported and harmless; the qpair is destroyed once.
#[test]
fn duplicate_last_wqe_reached_is_harmless() {
    let (mut d, _) = D::new(srq_cfg(4));
    d.q.handle_fini(Timestamp(100)).unwrap();
    assert_eq!(d.take(), vec![Action::DisconnectQp]);
    d.q.handle_last_wqe_reached().unwrap();
    assert_eq!(
        d.take(),
        vec![Action::DestroyQp { forced: false }, Action::Finished]
    );
    assert_eq!(d.q.state(), QpairState::Finished);
    assert!(d.q.handle_last_wqe_reached().is_err());

    let (mut d, _) = D::new(srq_cfg(4));
    d.q.handle_last_wqe_reached().unwrap();
    d.take();
    d.q.handle_last_wqe_reached().unwrap();
    let a = d.take();
    assert!(matches!(
        a[..],
        [Action::Notice(Notice::Unexpected {
            what: Unexpected::DuplicateLastWqe,
            ..
        })]
    ));
}

/// Issue 7 defect 3: an SRQ qpair whose host died right after connecting has
/// no WR outstanding, so the only sign that its QP went to error is
/// LAST_WQE_REACHED. The qpair must go to error (host told to disconnect),
/// and teardown must then finish without waiting for another event.
#[test]
fn last_wqe_reached_on_an_active_srq_qpair_disconnects_it() {
    let (mut d, _) = D::new(srq_cfg(4));
    d.q.handle_last_wqe_reached().unwrap();
    assert_eq!(
        d.take(),
        vec![Action::HostDisconnect {
            reason: DisconnectReason::QpInError
        }]
    );
    assert_eq!(d.q.state(), QpairState::Error);
    d.q.handle_fini(Timestamp(100)).unwrap();
    assert_eq!(
        d.take(),
        vec![
            Action::DisconnectQp,
            Action::DestroyQp { forced: false },
            Action::Finished
        ]
    );
}

/// f6149e6f69 + §6.9: aborting a queued request answers it with
/// ABORTED_BY_REQUEST carrying its own CID and sqid 0.
#[test]
fn abort_of_queued_request_answers_with_victim_cid() {
    let (mut d, _) = D::new(cfg(8, 4));
    let a = d.recv(0, &write_keyed(0x1234, 8192));
    let r1 = asked(&a)[0];
    assert_eq!(d.q.abort(0x1234).unwrap(), AbortOutcome::Aborted(r1));
    let a = d.take();
    assert!(
        pos(&a, Action::CancelBufferRequest { req: r1 })
            < pos(
                &a,
                Action::PostResponse {
                    req: r1,
                    writes: 0,
                    recv: None
                }
            )
    );
    let cpl = d.response(r1);
    assert_eq!((cpl.cid, cpl.sqid), (0x1234, 0));
    assert_eq!(
        (cpl.status.sct, cpl.status.sc),
        (0, Status::ABORTED_BY_REQUEST.sc)
    );
    assert_eq!(d.q.abort(0x9999).unwrap(), AbortOutcome::NotFound);
    // Executing: the host must abort it.
    let a = d.recv(1, &no_data(io_opcode::FLUSH, 7, Fuse::Normal));
    let r2 = executes(&a)[0];
    assert_eq!(d.q.abort(7).unwrap(), AbortOutcome::Executing(r2));
}

/// 39cd694ac5: a completion with a non-generic status type and sc 0 is an
/// error: no read data goes back.
#[test]
fn non_generic_status_with_zero_sc_sends_no_data() {
    let (mut d, _) = D::new(cfg(8, 4));
    let a = d.recv(0, &read_keyed(1, 4096));
    let r1 = asked(&a)[0];
    d.grant(r1, 4096);
    let a = d.executed(r1, Status::new(1, 0));
    assert!(
        has(
            &a,
            Action::PostResponse {
                req: r1,
                writes: 0,
                recv: None
            }
        ),
        "{a:?}"
    );
}

/// 9b7f593329 / 886fdf7fbf: a reused request carries no stale state (here: a
/// failed fused SECOND's flag must not fail the next command in that slot).
#[test]
fn reused_request_carries_no_stale_fused_state() {
    let (mut d, _) = D::new(cfg(8, 4));
    let a = d.recv(0, &no_data(io_opcode::WRITE, 1, Fuse::Second));
    let r1 = match a.iter().find(|x| matches!(x, Action::PostResponse { .. })) {
        Some(Action::PostResponse { req, .. }) => *req,
        _ => panic!("{a:?}"),
    };
    assert_eq!(d.response(r1).status, Status::ABORTED_MISSING_FUSED);
    d.wc(d.send(r1), WcStatus::Success);
    let a = d.recv(1, &no_data(io_opcode::FLUSH, 2, Fuse::Normal));
    assert_eq!(
        executes(&a),
        vec![r1],
        "the same slot is reused (LIFO) and executes"
    );
}

// ---------------------------------------------------------------------------
// Engine rules beyond upstream's fixes
// ---------------------------------------------------------------------------

/// Bounded drain: flushes never come; at the deadline the QP is destroyed
/// first, and only then are the buffers the lost WRs named released.
#[test]
fn bounded_drain_destroys_qp_before_releasing_buffers() {
    let (mut d, _) = D::new(cfg(4, 4));
    let a = d.recv(0, &write_keyed(1, 4096));
    let r1 = asked(&a)[0];
    d.grant(r1, 4096);
    d.q.handle_fini(Timestamp(100)).unwrap();
    d.take();
    assert_eq!(d.q.poll_timeout(), Some(Timestamp(100)));
    d.q.handle_timeout(Timestamp(99)).unwrap();
    assert!(d.take().is_empty());
    d.q.handle_timeout(Timestamp(100)).unwrap();
    let a = d.take();
    assert!(
        matches!(
            a[0],
            Action::Notice(Notice::DrainDeadlineExpired {
                lost_send_wrs: 1,
                lost_recvs: 3,
                ..
            })
        ),
        "{a:?}"
    );
    assert!(
        pos(&a, Action::DestroyQp { forced: true }) < pos(&a, Action::ReleaseBuffers { req: r1 })
    );
    assert_eq!(*a.last().unwrap(), Action::Finished);
    assert_eq!(d.q.poll_timeout(), None);
}

/// Upstream open issue #3885: the qpair is reported gone only after the host
/// returned every request it was executing.
#[test]
fn finished_only_after_host_returns_executing_requests() {
    let (mut d, _) = D::new(cfg(2, 4));
    let a = d.recv(0, &no_data(io_opcode::FLUSH, 1, Fuse::Normal));
    let r1 = executes(&a)[0];
    d.q.handle_fini(Timestamp(100)).unwrap();
    d.take();
    let a = d.wc(WrId::recv(RecvId(1)), WcStatus::Flushed);
    assert_eq!(a, vec![Action::DestroyQp { forced: false }]);
    assert_eq!(
        d.q.state(),
        QpairState::Draining {
            deadline: Timestamp(100)
        }
    );
    let a = d.executed(r1, Status::SUCCESS);
    assert_eq!(a.last(), Some(&Action::Finished));
    assert!(!a.iter().any(|x| matches!(x, Action::PostResponse { .. })));
}

/// A host sending more capsules than the queue depth is disconnected (SRQ);
/// the extra receive goes back to the SRQ (upstream drops it).
#[test]
fn host_overrunning_queue_depth_is_disconnected() {
    let (mut d, _) = D::new(srq_cfg(2));
    d.recv(10, &no_data(io_opcode::FLUSH, 1, Fuse::Normal));
    d.recv(11, &no_data(io_opcode::FLUSH, 2, Fuse::Normal));
    let a = d.recv(12, &no_data(io_opcode::FLUSH, 3, Fuse::Normal));
    assert!(a
        .iter()
        .any(|x| matches!(x, Action::Notice(Notice::HostOverrun { recv_depth: 2, .. }))));
    assert!(has(
        &a,
        Action::HostDisconnect {
            reason: DisconnectReason::HostOverrun { recv_depth: 2 }
        }
    ));
    assert!(has(&a, Action::PostRecv { recv: RecvId(12) }));
    assert_eq!(d.q.state(), QpairState::Error);
}

/// A completion for a WR the NIC does not own is refused without effect.
#[test]
fn stale_and_foreign_completions_are_refused() {
    let (mut d, _) = D::new(cfg(4, 4));
    let a = d.recv(0, &no_data(io_opcode::FLUSH, 1, Fuse::Normal));
    let r1 = executes(&a)[0];
    d.executed(r1, Status::SUCCESS);
    let send = d.send(r1);
    d.wc(send, WcStatus::Success);
    let before = d.q.counters();
    assert!(matches!(
        d.q.handle_completion(send.to_raw(), WcStatus::Success, &[]),
        Err(EngineError::StaleWr { .. })
    ));
    assert!(matches!(
        d.q.handle_completion(0xdead, WcStatus::Success, &[]),
        Err(EngineError::BadWrId(_))
    ));
    assert!(matches!(
        d.q.handle_completion(WrId::recv(RecvId(99)).to_raw(), WcStatus::Success, &[]),
        Err(EngineError::UnknownRecv { .. })
    ));
    // The decoded-kind entry point refuses the same ids, and a data WR index
    // no id can carry.
    assert!(matches!(
        d.q.handle_wr_completion(send.kind().unwrap(), WcStatus::Success, &[]),
        Err(EngineError::StaleWr { .. })
    ));
    let bad_index = WrKind::Data {
        req: r1,
        index: 16,
        generation: 0,
    };
    assert!(matches!(
        d.q.handle_wr_completion(bad_index, WcStatus::Success, &[]),
        Err(EngineError::BadWrId(_))
    ));
    assert_eq!(d.q.counters(), before);
    d.take();
}

/// Fused pair: executed back to back, FIRST then SECOND, once both are ready;
/// a FIRST followed by a normal command fails with ABORTED_MISSING_FUSED.
#[test]
fn fused_ordering() {
    let (mut d, _) = D::new(cfg(8, 4));
    let a = d.recv(0, &no_data(io_opcode::COMPARE, 1, Fuse::First));
    assert!(executes(&a).is_empty());
    let first = ReqId(0);
    assert_eq!(d.state(first), ReqState::ReadyToExecute);
    let a = d.recv(1, &no_data(io_opcode::WRITE, 2, Fuse::Second));
    let ex = executes(&a);
    assert_eq!(ex.len(), 2);
    assert_eq!(d.q.command(ex[0]).unwrap().cid(), 1);
    assert_eq!(d.q.command(ex[1]).unwrap().cid(), 2);

    let a = d.recv(2, &no_data(io_opcode::COMPARE, 3, Fuse::First));
    assert!(executes(&a).is_empty());
    let a = d.recv(3, &no_data(io_opcode::FLUSH, 4, Fuse::Normal));
    let broken = a
        .iter()
        .find_map(|x| match x {
            Action::PostResponse { req, .. } => Some(*req),
            _ => None,
        })
        .expect("the lone FIRST is answered");
    assert_eq!(d.response(broken).status, Status::ABORTED_MISSING_FUSED);
    assert_eq!(d.response(broken).cid, 3);
    assert_eq!(executes(&a).len(), 1);
}

/// Invalid SGLs and bidirectional opcodes are answered with the status upstream
/// returns, without asking for buffers.
#[test]
fn invalid_commands_are_answered_with_upstream_status() {
    let (mut d, _) = D::new(cfg(8, 4));
    let mut c = Command::new(io_opcode::WRITE, 1);
    let mut sgl = encode_keyed(0x1000, 512, 1, false);
    sgl.set_type(sgl_type::BIT_BUCKET, 0);
    c.set_sgl1(sgl);
    let a = d.recv(0, &capsule(&c, &[]));
    assert!(asked(&a).is_empty());
    assert_eq!(
        d.response(ReqId(0)).status,
        Status::SGL_DESCRIPTOR_TYPE_INVALID
    );
    let mut c = Command::new(0x03, 2);
    c.set_sgl1(encode_keyed(0x1000, 512, 1, false));
    d.recv(1, &capsule(&c, &[]));
    assert_eq!(d.response(ReqId(1)).status, Status::INVALID_OPCODE);
    let a = d.recv(2, &write_keyed(3, 1 << 20));
    assert!(asked(&a).is_empty());
    assert_eq!(d.response(ReqId(2)).status, Status::DATA_SGL_LENGTH_INVALID);
    let a = d.recv(3, &[0u8; 10]);
    assert!(
        a.iter().any(|x| matches!(x, Action::PostResponse { .. })),
        "a short capsule is answered"
    );
}

/// The happy paths, with the WR details the transport reads.
#[test]
fn read_and_write_happy_paths() {
    let (mut d, a) = D::new(cfg(4, 4));
    assert_eq!(a.len(), 4);
    // Write: READ then execute then SEND.
    let a = d.recv(0, &write_keyed(1, 6000));
    let w = asked(&a)[0];
    assert!(matches!(a[..], [Action::RequestBuffers { len: 6000, .. }]));
    let a = d.grant(w, 6000);
    assert_eq!(
        a,
        vec![Action::PostReads {
            req: w,
            first: 0,
            count: 1
        }]
    );
    let wr = d.q.data_wr(w, 0).unwrap();
    assert_eq!((wr.remote_addr, wr.rkey, wr.sges.len()), (0x1000, 0x42, 2));
    assert_eq!(wr.sges.iter().map(|s| s.len).sum::<u32>(), 6000);
    let a = d.wc(d.data(w, 0), WcStatus::Success);
    assert_eq!(a, vec![Action::Execute { req: w }]);
    let a = d.executed(w, Status::SUCCESS);
    assert_eq!(
        a,
        vec![Action::PostResponse {
            req: w,
            writes: 0,
            recv: Some(RecvId(0))
        }]
    );
    assert_eq!(d.response(w).cid, 1);
    assert_eq!(d.response(w).sqhd, 1);
    let a = d.wc(d.send(w), WcStatus::Success);
    assert_eq!(a, vec![Action::ReleaseBuffers { req: w }]);
    // Read: execute, then WRITE + SEND.
    let a = d.recv(1, &read_keyed(2, 4096));
    let r = asked(&a)[0];
    let a = d.grant(r, 4096);
    assert_eq!(a, vec![Action::Execute { req: r }]);
    let a = d.executed(r, Status::SUCCESS);
    assert!(has(
        &a,
        Action::PostResponse {
            req: r,
            writes: 1,
            recv: None
        }
    ));
    assert_eq!(d.q.counters().send_depth, 2);
    let a = d.wc(d.send(r), WcStatus::Success);
    assert_eq!(a, vec![Action::ReleaseBuffers { req: r }]);
    let c = d.q.counters();
    assert_eq!(
        (
            c.send_depth,
            c.read_depth,
            c.recv_depth,
            c.recvs_posted,
            c.requests_in_use
        ),
        (0, 0, 0, 4, 0)
    );
}

/// The named sequence has teeth too: with the #3463 mistake switched back on
/// (feature `sim` only), the same events break the queue invariant.
#[test]
fn reintroduced_bug_3463_breaks_the_named_sequence() {
    let (mut d, _) = D::new(cfg(8, 2));
    d.q.sim_reintroduce_bug_3463(true);
    let (r1, _r2, _r3) = split_read_setup(&mut d);
    d.wc(d.data(r1, 0), WcStatus::Success);
    d.q.handle_completion(d.data(r1, 1).to_raw(), WcStatus::RemoteAccess, &[])
        .unwrap();
    let v =
        d.q.check_invariants()
            .expect_err("the corruption must be detected");
    println!("detected: {v}");
}

/// A failed post is not a completion (upstream §4.11 `_qp_reset_failed_sends`):
/// with WRITE 0 posted and WRITE 1 + the SEND refused, the buffers stay held
/// until WRITE 0 is flushed; reporting the unposted SEND must not retire the
/// posted WRITE.
#[test]
fn failed_post_keeps_posted_writes_owned_by_the_nic() {
    let (mut d, _) = D::new(cfg(4, 4));
    let a = d.recv(0, &multi(io_opcode::READ, 1, 2, 512));
    let r1 = asked(&a)[0];
    d.grant(r1, 1024);
    let a = d.executed(r1, Status::SUCCESS);
    assert!(has(
        &a,
        Action::PostResponse {
            req: r1,
            writes: 2,
            recv: None
        }
    ));
    // The post fails at WRITE 1: WRITE 1 and the SEND never reached the NIC.
    d.q.handle_wr_not_posted(d.data(r1, 1).to_raw()).unwrap();
    let a = d.take();
    assert!(has(
        &a,
        Action::HostDisconnect {
            reason: DisconnectReason::PostFailed
        }
    ));
    d.q.handle_wr_not_posted(d.send(r1).to_raw()).unwrap();
    let a = d.take();
    assert!(!has(&a, Action::ReleaseBuffers { req: r1 }), "{a:?}");
    assert_eq!(d.q.counters().send_depth, 1);
    d.q.handle_fini(Timestamp(50)).unwrap();
    d.take();
    let a = d.wc(d.data(r1, 0), WcStatus::Flushed);
    assert!(has(&a, Action::ReleaseBuffers { req: r1 }), "{a:?}");
    assert_eq!(d.q.counters().send_depth, 0);
}

/// SPDK's `req_free` (spdk-plugin: the generic layer frees AERs and queued
/// commands of a qpair it disconnects): the request is dropped without a
/// response — no SEND, its buffers and RECV go back, the object is free.
#[test]
fn freed_command_sends_no_response_and_returns_everything() {
    let (mut d, _) = D::new(cfg(8, 4));
    let a = d.recv(0, &read_keyed(5, 4096));
    let r = asked(&a)[0];
    let a = d.grant(r, 4096);
    assert_eq!(executes(&a), vec![r]);
    d.q.handle_command_freed(r).unwrap();
    let a = d.take();
    assert!(
        a.iter().all(|x| !matches!(x, Action::PostResponse { .. })),
        "{a:?}"
    );
    assert!(has(&a, Action::ReleaseBuffers { req: r }), "{a:?}");
    assert!(has(&a, Action::PostRecv { recv: RecvId(0) }), "{a:?}");
    assert_eq!(d.state(r), ReqState::Free);
    assert_eq!(d.q.counters().requests_in_use, 0);
    // Only an executing command can be freed.
    assert!(d.q.handle_command_freed(r).is_err());
}

// ---------------------------------------------------------------------------
// Issue 7: the engine side of the transport's buffer and req_free handling
// (the engine was not at fault; these guard what the transport relies on)
// ---------------------------------------------------------------------------

/// A grant that arrives after the request was withdrawn (teardown emitted
/// `CancelBufferRequest`) is refused and nothing is taken: the transport must
/// return those buffers to the host and must not count them, and the engine
/// never asks to release them.
#[test]
fn grant_after_withdrawal_is_refused_and_nothing_is_taken() {
    let (mut d, _) = D::new(cfg(8, 2));
    let a = d.recv(0, &write_keyed(1, 16384));
    let r = asked(&a)[0];
    d.q.handle_fini(Timestamp(1000)).unwrap();
    let a = d.take();
    assert!(has(&a, Action::CancelBufferRequest { req: r }), "{a:?}");
    let bufs = [LocalSge {
        addr: 0x10_0000,
        len: 16384,
        lkey: 1,
    }];
    assert!(d.q.handle_buffers_granted(r, &bufs).is_err());
    let a = d.take();
    assert!(!has(&a, Action::ReleaseBuffers { req: r }), "{a:?}");
}

/// A command the host holds (an AER) and frees at teardown (SPDK
/// `req_free`; the transport answers it after `handle_fini`) is dropped
/// without a response SEND and its request goes back to the free list.
#[test]
fn held_command_freed_after_fini_gets_no_response() {
    let (mut d, _) = D::new(cfg(8, 2));
    let a = d.recv(0, &no_data(io_opcode::FLUSH, 3, Fuse::Normal));
    let r = executes(&a)[0];
    d.q.handle_fini(Timestamp(1000)).unwrap();
    let a = d.take();
    assert_eq!(d.state(r), ReqState::Executing, "{a:?}");
    let a = d.executed(r, Status::ABORTED_SQ_DELETION);
    assert!(
        !a.iter().any(|x| matches!(x, Action::PostResponse { .. })),
        "a freed command was answered: {a:?}"
    );
    assert_eq!(d.state(r), ReqState::Free);
}

/// The states reported with state tracing on, as (request, state, in use).
fn reported(acts: &[Action]) -> Vec<(ReqId, ReqState, u16)> {
    acts.iter()
        .filter_map(|a| match a {
            Action::RequestState { req, state, in_use } => Some((*req, *state, *in_use)),
            _ => None,
        })
        .collect()
}

/// The actions but the reports.
fn without_reports(acts: &[Action]) -> Vec<Action> {
    acts.iter()
        .filter(|a| !matches!(a, Action::RequestState { .. }))
        .copied()
        .collect()
}

/// State tracing: a 4 KiB write and a 4 KiB read (keyed), an in-capsule
/// write and a command that waits for send depth report every state they
/// enter, in order, once, each before the action it leads to (EXECUTING
/// before `Execute`); the other actions are those of an untraced qpair
/// fed the same events; a QP error reports the queued request's COMPLETED.
#[test]
fn state_tracing_reports_every_state_once_in_order() {
    use ReqState::*;
    let mut c = cfg(8, 4);
    c.max_send_depth = 17;
    let (mut d, _) = D::new(c);
    let (mut plain, _) = D::new(c);
    d.q.set_state_tracing(true);
    assert!(d.q.state_tracing() && !plain.q.state_tracing());
    // Both qpairs get the same events; the traced one's actions minus its
    // reports must equal the plain one's.
    let mut all = Vec::new();
    let mut step = |d: &mut D, plain: &mut D, f: &dyn Fn(&mut D) -> Vec<Action>| {
        let a = f(d);
        assert_eq!(without_reports(&a), f(plain), "tracing changed the actions");
        all.extend(a.iter().copied());
        a
    };
    let a = step(&mut d, &mut plain, &|d| d.recv(0, &write_keyed(1, 4096)));
    let w = asked(&a)[0];
    assert_eq!(reported(&a), [(w, New, 1), (w, NeedBuffer, 1)]);
    let a = step(&mut d, &mut plain, &|d| d.grant(w, 4096));
    assert_eq!(
        reported(&a),
        [
            (w, HaveBuffer, 1),
            (w, TransferringHostToController { partial: false }, 1)
        ]
    );
    let a = step(&mut d, &mut plain, &|d| {
        d.wc(d.data(w, 0), WcStatus::Success)
    });
    assert_eq!(reported(&a), [(w, ReadyToExecute, 1), (w, Executing, 1)]);
    assert_eq!(
        a.last(),
        Some(&Action::Execute { req: w }),
        "EXECUTING is reported before Execute"
    );
    let a = step(&mut d, &mut plain, &|d| d.executed(w, Status::SUCCESS));
    assert_eq!(
        reported(&a),
        [
            (w, Executed, 1),
            (w, ReadyToComplete, 1),
            (w, Completing, 1)
        ]
    );
    let a = step(&mut d, &mut plain, &|d| d.wc(d.send(w), WcStatus::Success));
    assert_eq!(
        reported(&a),
        [(w, Completed, 1)],
        "COMPLETED once, FREE never"
    );

    let a = step(&mut d, &mut plain, &|d| d.recv(1, &read_keyed(2, 4096)));
    let r = asked(&a)[0];
    let a2 = step(&mut d, &mut plain, &|d| d.grant(r, 4096));
    let a3 = step(&mut d, &mut plain, &|d| d.executed(r, Status::SUCCESS));
    let a4 = step(&mut d, &mut plain, &|d| d.wc(d.send(r), WcStatus::Success));
    let states: Vec<ReqState> = [a, a2, a3, a4]
        .iter()
        .flat_map(|a| reported(a))
        .map(|(req, s, _)| {
            assert_eq!(req, r);
            s
        })
        .collect();
    assert_eq!(
        states,
        [
            New,
            NeedBuffer,
            HaveBuffer,
            ReadyToExecute,
            Executing,
            Executed,
            ReadyToComplete,
            TransferringControllerToHost,
            Completed
        ]
    );

    // A 16-WRITE read fills the send queue (17): a FLUSH then waits for
    // send depth (READY_TO_COMPLETE_PENDING), with 2 requests in use.
    let a = step(&mut d, &mut plain, &|d| {
        d.recv(2, &multi(io_opcode::READ, 3, 16, 512))
    });
    let big = asked(&a)[0];
    step(&mut d, &mut plain, &|d| d.grant(big, 16 * 512));
    step(&mut d, &mut plain, &|d| d.executed(big, Status::SUCCESS));
    let a = step(&mut d, &mut plain, &|d| {
        d.recv(3, &no_data(io_opcode::FLUSH, 4, Fuse::Normal))
    });
    let f = executes(&a)[0];
    assert_eq!(
        reported(&a),
        [(f, New, 2), (f, ReadyToExecute, 2), (f, Executing, 2)]
    );
    let a = step(&mut d, &mut plain, &|d| d.executed(f, Status::SUCCESS));
    assert_eq!(
        reported(&a),
        [(f, Executed, 2), (f, ReadyToCompletePending, 2)]
    );
    // The QP fails: the queued FLUSH is dropped (COMPLETED), the big read
    // waits for its SEND's flush.
    let a = step(&mut d, &mut plain, &|d| {
        d.q.handle_qp_fatal().unwrap();
        d.take()
    });
    assert_eq!(reported(&a), [(f, Completed, 2)]);
    assert!(has(
        &a,
        Action::HostDisconnect {
            reason: DisconnectReason::QpFatal
        }
    ));
    let a = step(&mut d, &mut plain, &|d| {
        d.wc(d.send(big), WcStatus::Flushed)
    });
    assert_eq!(reported(&a), [(big, Completed, 1)]);

    // Every report is a change: no request reports the same state twice in
    // a row.
    let mut last = std::collections::HashMap::new();
    for (req, s, _) in reported(&all) {
        assert_ne!(last.insert(req, s), Some(s), "{req:?} reported {s:?} twice");
    }
    // Off again: no more reports.
    d.q.set_state_tracing(false);
    let a = d.recv(4, &no_data(io_opcode::FLUSH, 5, Fuse::Normal));
    assert!(reported(&a).is_empty(), "{a:?}");
}
