//! The simulated world: initiators, NIC, host, and the checks.

use std::collections::{BTreeMap, VecDeque};

use super::{Entropy, SimFailure, SimOptions};
use crate::codec::nvme::{io_opcode, sgl_type, Command, Completion, Fuse, Status};
use crate::codec::sgl::{
    encode_in_capsule, encode_keyed, encode_last_segment, SglLimits, MAX_SGL_DESCRIPTORS,
};
use crate::{
    AbortOutcome, Action, DataOpcode, DataRef, LocalSge, Notice, Qpair, QpairConfig, QpairState,
    RecvId, ReqId, ReqState, Timestamp, WcStatus, WrId, MIN_SEND_DEPTH,
};

/// Size of one host data buffer.
const UNIT: u32 = 4096;
/// Events allowed between the end of traffic and the last answer on healthy qpairs.
const QUIESCE_LIMIT: u64 = 20_000;
/// Status the simulated host uses for a failed command (LBA out of range).
const HOST_FAIL: Status = Status::new(0, 0x80);

/// Totals of one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimReport {
    /// Engine events fed (completions, host answers, QP/CM events, timeouts).
    pub events: u64,
    /// Commands the initiators sent.
    pub commands: u64,
    /// Responses the initiators received.
    pub responses: u64,
    /// Qpairs torn down.
    pub qpairs: u64,
    /// Drains that hit their deadline.
    pub forced_drains: u64,
    /// Error completions delivered (flushes included).
    pub error_completions: u64,
    /// READ chains the engine split.
    pub split_reads: u64,
    /// WRs reported as not posted (injected post failures).
    pub post_failures: u64,
    /// Capsules completed on a qpair that had already left the active state
    /// (never to be answered; their receive must come back).
    pub late_capsules: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SqKind {
    Read,
    Write,
    Send,
}

#[derive(Debug, Clone, Copy)]
struct SqEntry {
    raw: u64,
    kind: SqKind,
    req: ReqId,
    generation: u32,
    response: [u8; 16],
}

#[derive(Debug, Default)]
struct NicQp {
    sq: VecDeque<SqEntry>,
    rq: VecDeque<RecvId>,
    error: bool,
    lost: bool,
    destroyed: bool,
    last_wqe_sent: bool,
    /// The first WR_FLUSH_ERR of the send queue was delivered: no more
    /// successful completions on it.
    sq_flushing: bool,
    /// The same for the receive queue.
    rq_flushing: bool,
    unsignaled_done: u32,
    unsignaled_by_req: BTreeMap<(u16, u32), u32>,
}

/// What the initiator expects back for a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Success, a host failure, or an abort.
    Normal,
    /// Exactly this status (or an abort).
    Status(Status),
}

#[derive(Debug, Clone, Copy)]
struct Cmd {
    desc_lens: [u32; MAX_SGL_DESCRIPTORS],
    n: u8,
    c2h: bool,
    fused: bool,
    expect: Expect,
    /// In-capsule data length (0: none).
    icd_len: u32,
    /// The receive that carried the capsule.
    recv: RecvId,
    /// Keyed descriptor with subtype Invalidate Key.
    invalidate: bool,
}

#[derive(Debug, Default)]
struct Initiator {
    outstanding: BTreeMap<u16, Cmd>,
    next_cid: u16,
}

#[derive(Debug)]
struct SimQp {
    engine: Qpair,
    nic: NicQp,
    ini: Initiator,
    host_disconnects: u32,
    disconnect_qps: u32,
    destroys: u32,
    finished: u32,
    fini_called: bool,
    fini_at: Option<u64>,
    peer_gone: bool,
    /// With state tracing on (every other qpair): the last state reported
    /// for each request by [`Action::RequestState`].
    traced: Option<Vec<Option<ReqState>>>,
}

#[derive(Debug, Clone, Copy)]
struct HostExec {
    qp: usize,
    req: ReqId,
    ready_at: u64,
    aborted: bool,
}

#[derive(Debug, Clone, Copy)]
struct TraceEv {
    event: u64,
    now: u64,
    qp: usize,
    what: &'static str,
    a: u64,
    b: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SrqSlot {
    Posted,
    Consumed(usize),
}

#[derive(Debug, Clone, Copy)]
struct Knobs {
    srq: bool,
    err_rate: u32,
    lose_rate: u32,
    fault_rate: u32,
    exec_fail: u32,
    overrun_rate: u32,
    host_waits_outstanding: bool,
    drain_timeout: u64,
    max_latency: u32,
    multi_rate: u32,
    post_fail_rate: u32,
}

/// One simulated poll group.
#[derive(Debug)]
pub struct World<'a> {
    e: Entropy<'a>,
    opts: SimOptions,
    k: Knobs,
    qps: Vec<SimQp>,
    srq: VecDeque<RecvId>,
    srq_slots: Vec<SrqSlot>,
    pool_size: u32,
    pool_free: u32,
    granted: BTreeMap<(usize, u16), Vec<LocalSge>>,
    wait: VecDeque<(usize, ReqId, u32)>,
    exec: Vec<HostExec>,
    now: u64,
    /// Traffic stopped: every command on a healthy qpair must now be answered.
    quiesce_since: Option<u64>,
    teardown: bool,
    teardown_started: bool,
    traffic: u64,
    steps: u64,
    quiesce_steps: u64,
    /// WRs of a failed post, to report with `handle_wr_not_posted`.
    unposted: VecDeque<u64>,
    next_addr: u64,
    payload: Vec<u8>,
    trace: VecDeque<TraceEv>,
    report: SimReport,
}

type Res = Result<(), SimFailure>;

impl<'a> World<'a> {
    /// Builds a world from the entropy.
    pub fn new(mut e: Entropy<'a>, opts: &SimOptions) -> World<'a> {
        let nqp = e.range(1, 4) as usize;
        let srq = e.chance(500);
        let qd = [1u16, 2, 3, 4, 8, 16, 32][e.below(7) as usize];
        let read_depth = if opts.stress_split_reads {
            e.range(1, 3) as u16
        } else {
            e.range(1, 16) as u16
        };
        let send_depth = e.range(MIN_SEND_DEPTH, MIN_SEND_DEPTH + 2 * u32::from(qd));
        let icd = [0u32, 256, 1024, 4096][e.below(4) as usize];
        let max_io = UNIT * [4u32, 8, 16][e.below(3) as usize];
        let last_wqe_supported = e.chance(800);
        let k = Knobs {
            srq,
            err_rate: if opts.stress_split_reads {
                [20, 60][e.below(2) as usize]
            } else {
                [0, 5, 20, 60][e.below(4) as usize]
            },
            lose_rate: [0, 100, 500][e.below(3) as usize],
            fault_rate: [0, 5, 20][e.below(3) as usize],
            exec_fail: 50,
            overrun_rate: if srq { [0, 20][e.below(2) as usize] } else { 0 },
            host_waits_outstanding: e.chance(500),
            drain_timeout: u64::from(e.range(50, 500)),
            max_latency: e.range(1, 30),
            multi_rate: if opts.stress_split_reads { 600 } else { 250 },
            post_fail_rate: [0, 0, 3][e.below(3) as usize],
        };
        let mut qps = Vec::with_capacity(nqp);
        for i in 0..nqp {
            let mut cfg = QpairConfig::new(i as u32, qd, read_depth);
            cfg.max_send_depth = send_depth;
            cfg.srq = srq;
            cfg.last_wqe_reached_supported = last_wqe_supported;
            cfg.send_with_invalidate = e.chance(300);
            cfg.sq_size = qd;
            cfg.sgl = SglLimits {
                in_capsule_data_size: icd,
                max_io_size: max_io,
                max_descriptors: MAX_SGL_DESCRIPTORS,
            };
            let mut engine = Qpair::new(cfg).expect("simulated config is valid");
            engine.sim_reintroduce_bug_3463(opts.bug_3463);
            // Tracing must change nothing but add its reports: half the
            // qpairs trace (not with the #3463 switch, whose broken frees
            // the trace checks would report before the invariants do).
            let trace = i % 2 == 0 && !opts.bug_3463;
            engine.set_state_tracing(trace);
            qps.push(SimQp {
                engine,
                nic: NicQp::default(),
                ini: Initiator::default(),
                host_disconnects: 0,
                disconnect_qps: 0,
                destroys: 0,
                finished: 0,
                fini_called: false,
                fini_at: None,
                peer_gone: false,
                traced: trace.then(|| vec![None; usize::from(qd)]),
            });
        }
        let srq_size = if srq {
            u32::from(qd) * nqp as u32 + e.below(8)
        } else {
            0
        };
        // A fused FIRST keeps its buffers while its SECOND waits for some (as
        // upstream); with one such FIRST per qpair holding up to 16 buffers, a
        // pool below 16 * (qpairs + 1) can deadlock. Stay just above that so
        // exhaustion is still common.
        let floor = 16 * (nqp as u32 + 1);
        let pool_size = e.range(floor, floor + 48);
        let traffic = u64::from(e.range(
            opts.traffic_events / 5,
            opts.traffic_events.max(opts.traffic_events / 5),
        ));
        World {
            e,
            opts: *opts,
            k,
            qps,
            srq: (0..srq_size).map(RecvId).collect(),
            srq_slots: vec![SrqSlot::Posted; srq_size as usize],
            pool_size,
            pool_free: pool_size,
            granted: BTreeMap::new(),
            wait: VecDeque::new(),
            exec: Vec::new(),
            now: 0,
            quiesce_since: None,
            teardown: false,
            teardown_started: false,
            traffic,
            steps: 0,
            quiesce_steps: 0,
            unposted: VecDeque::new(),
            next_addr: 0x10_0000,
            payload: Vec::with_capacity(64 + 4096),
            trace: VecDeque::with_capacity(64),
            report: SimReport::default(),
        }
    }

    /// Plays the world to the end.
    pub fn run(&mut self) -> Result<SimReport, SimFailure> {
        for qp in 0..self.qps.len() {
            self.process_actions(qp)?;
            self.check(qp)?;
        }
        loop {
            if self.qps.iter().all(|q| q.finished > 0) {
                break;
            }
            self.steps += 1;
            if self.steps >= 4 * u64::from(self.opts.max_events) {
                return Err(self.fail(format!(
                    "step cap reached: nothing progresses; stuck: {}",
                    self.stuck_commands()
                )));
            }
            if self.report.events >= u64::from(self.opts.max_events) {
                return Err(self.fail("event cap reached: teardown did not finish".into()));
            }
            if self.quiesce_since.is_none()
                && (self.report.events >= self.traffic || self.e.exhausted())
            {
                self.quiesce_since = Some(self.report.events);
                self.quiesce_steps = self.steps;
            }
            if let (Some(since), false) = (self.quiesce_since, self.teardown) {
                if self.healthy_all_answered() {
                    self.teardown = true;
                } else if self.report.events - since > QUIESCE_LIMIT
                    || self.steps - self.quiesce_steps > 4 * QUIESCE_LIMIT
                {
                    return Err(self.fail(format!(
                        "{QUIESCE_LIMIT} events after traffic stopped, commands on a healthy qpair are still unanswered: {}",
                        self.stuck_commands()
                    )));
                }
            }
            if self.teardown && !self.teardown_started {
                self.teardown_started = true;
                for q in self.qps.iter_mut() {
                    if q.fini_at.is_none() {
                        q.fini_at = Some(self.now);
                    }
                }
            }
            self.step()?;
        }
        self.final_checks()?;
        self.report.qpairs = self.qps.len() as u64;
        Ok(self.report)
    }

    // ------------------------------------------------------------------
    // Event selection
    // ------------------------------------------------------------------

    fn step(&mut self) -> Res {
        self.now += 1;
        let srq = self.k.srq;
        let mut w = [0u32; 11];
        let can_send = |q: &SimQp, srq_has: bool| {
            !q.nic.error
                && !q.peer_gone
                && !q.fini_called
                && q.finished == 0
                && q.engine.state() == QpairState::Active
                && if srq { srq_has } else { !q.nic.rq.is_empty() }
        };
        let srq_has = !self.srq.is_empty();
        let traffic = self.quiesce_since.is_none();
        if traffic && self.qps.iter().any(|q| can_send(q, srq_has)) {
            w[0] = 30;
        }
        if self
            .qps
            .iter()
            .any(|q| !q.nic.error && !q.nic.destroyed && !q.nic.sq.is_empty())
        {
            w[1] = 40;
        }
        if self.qps.iter().any(Self::flushable) {
            w[2] = 25;
        }
        if self.exec.iter().any(|x| x.ready_at <= self.now) {
            w[3] = 25;
        }
        if let Some(&(_, _, n)) = self.wait.front() {
            if n <= self.pool_free {
                w[4] = 20;
            }
        }
        if traffic && self.qps.iter().any(|q| !q.ini.outstanding.is_empty()) {
            w[5] = 2;
        }
        if traffic && self.k.fault_rate > 0 {
            w[6] = self.k.fault_rate / 5;
        }
        w[7] = 3;
        if (0..self.qps.len()).any(|i| self.last_wqe_due(i)) {
            w[8] = 10;
        }
        if (0..self.qps.len()).any(|i| self.fini_due(i)) {
            w[9] = 20;
        }
        if (0..self.qps.len()).any(|i| self.late_srq_due(i)) {
            w[10] = 10;
        }
        let total: u32 = w.iter().sum();
        let mut pick = self.e.below(total);
        let mut ev = 7;
        for (i, wi) in w.iter().enumerate() {
            if pick < *wi {
                ev = i;
                break;
            }
            pick -= wi;
        }
        match ev {
            0 => {
                let qp = self.pick_qp(|w, i| can_send(&w.qps[i], srq_has));
                self.ev_send(qp)
            }
            1 => {
                let qp = self.pick_qp(|w, i| {
                    let q = &w.qps[i];
                    !q.nic.error && !q.nic.destroyed && !q.nic.sq.is_empty()
                });
                self.ev_nic_exec(qp)
            }
            2 => {
                let qp = self.pick_qp(|w, i| Self::flushable(&w.qps[i]));
                self.ev_flush(qp)
            }
            3 => self.ev_host_complete(),
            4 => self.ev_grant(),
            5 => {
                let qp = self.pick_qp(|w, i| !w.qps[i].ini.outstanding.is_empty());
                self.ev_abort(qp)
            }
            6 => self.ev_fault(),
            8 => {
                let qp = self.pick_qp(|w, i| w.last_wqe_due(i));
                self.ev_last_wqe(qp)
            }
            9 => {
                let qp = self.pick_qp(|w, i| w.fini_due(i));
                self.ev_fini(qp)
            }
            10 => {
                let qp = self.pick_qp(|w, i| w.late_srq_due(i));
                self.ev_late_srq(qp)
            }
            _ => self.ev_time(),
        }
    }

    fn pick_qp(&mut self, f: impl Fn(&World<'a>, usize) -> bool) -> usize {
        let mut cand = [0usize; 4];
        let mut n = 0;
        for i in 0..self.qps.len() {
            if f(self, i) {
                cand[n] = i;
                n += 1;
            }
        }
        cand[self.e.below(n as u32) as usize]
    }

    fn flushable(q: &SimQp) -> bool {
        q.nic.error
            && !q.nic.lost
            && !q.nic.destroyed
            && (!q.nic.sq.is_empty() || !q.nic.rq.is_empty())
    }

    fn last_wqe_due(&self, i: usize) -> bool {
        let q = &self.qps[i];
        self.k.srq
            && q.engine.config().last_wqe_reached_supported
            && q.nic.error
            && !q.nic.lost
            && !q.nic.destroyed
            && !q.nic.last_wqe_sent
            && q.finished == 0
    }

    /// An SRQ QP in error may still complete receives it had already taken
    /// from the SRQ (a capsule that arrived before the error, or a flush),
    /// until it reports last WQE reached.
    fn late_srq_due(&self, i: usize) -> bool {
        let q = &self.qps[i];
        self.k.srq
            && !self.srq.is_empty()
            && q.nic.error
            && !q.nic.lost
            && !q.nic.destroyed
            && !q.nic.last_wqe_sent
            && q.finished == 0
    }

    fn fini_due(&self, i: usize) -> bool {
        let q = &self.qps[i];
        match q.fini_at {
            Some(t) if !q.fini_called && t <= self.now && q.finished == 0 => {
                !self.k.host_waits_outstanding
                    || self.teardown
                    || !self.exec.iter().any(|x| x.qp == i)
            }
            _ => false,
        }
    }

    // ------------------------------------------------------------------
    // Events
    // ------------------------------------------------------------------

    fn ev_send(&mut self, qp: usize) -> Res {
        let overrun = self.e.chance(self.k.overrun_rate);
        let qd = usize::from(self.qps[qp].engine.config().max_queue_depth);
        let limit = if overrun { qd + 1 } else { qd };
        if self.qps[qp].ini.outstanding.len() >= limit {
            return Ok(());
        }
        let kind = self.e.below(1000);
        let recvs = if self.k.srq {
            self.srq.len()
        } else {
            self.qps[qp].nic.rq.len()
        };
        if kind < 30 && self.qps[qp].ini.outstanding.len() + 2 <= limit && recvs >= 2 {
            // A fused pair (sometimes broken).
            let broken = self.e.below(4);
            let first = if broken == 3 {
                Fuse::Normal
            } else {
                Fuse::First
            };
            let second = if broken == 2 {
                Fuse::Normal
            } else {
                Fuse::Second
            };
            self.send_one(qp, io_opcode::COMPARE, first, true)?;
            return self.send_one(qp, io_opcode::WRITE, second, true);
        }
        let opcode = match kind {
            30..=60 => io_opcode::FLUSH,
            61..=80 => 0x7f, // fabrics
            81..=95 => 0x03, // bidirectional
            _ => {
                if self.e.chance(500) {
                    io_opcode::READ
                } else {
                    io_opcode::WRITE
                }
            }
        };
        self.send_one(qp, opcode, Fuse::Normal, false)
    }

    fn send_one(&mut self, qp: usize, opcode: u8, fuse: Fuse, fused: bool) -> Res {
        let recv = if self.k.srq {
            match self.srq.pop_front() {
                Some(r) => {
                    self.srq_slots[r.0 as usize] = SrqSlot::Consumed(qp);
                    r
                }
                None => return Ok(()),
            }
        } else {
            match self.qps[qp].nic.rq.pop_front() {
                Some(r) => r,
                None => return Ok(()),
            }
        };
        // A receive that fails at the NIC (with SRQ too: the QP consumed the
        // SRQ receive and completes it in error).
        if self.e.chance(self.k.err_rate / 4) {
            let status = self.random_error();
            self.qp_error(qp);
            return self.deliver(qp, WrId::recv(recv).to_raw(), status, "recv-error");
        }
        let ini = &mut self.qps[qp].ini;
        let mut cid = ini.next_cid;
        while ini.outstanding.contains_key(&cid) {
            cid = cid.wrapping_add(1);
        }
        ini.next_cid = cid.wrapping_add(1);
        let mut cmd = if opcode == 0x7f {
            // CONNECT carries 1024 bytes of data (host to controller).
            Command::new_fabrics(crate::codec::nvme::fctype::CONNECT, cid)
        } else {
            Command::new(opcode, cid)
        };
        cmd.set_fuse(fuse);
        let cfg = *self.qps[qp].engine.config();
        let icd = cfg.sgl.in_capsule_data_size;
        let max_io = cfg.sgl.max_io_size;
        let mut info = Cmd {
            desc_lens: [0; MAX_SGL_DESCRIPTORS],
            n: 0,
            c2h: opcode & 3 == 2,
            fused,
            expect: Expect::Normal,
            icd_len: 0,
            recv,
            invalidate: false,
        };
        self.payload.clear();
        self.payload.resize(64, 0);
        let rkey = |i: u32| ((qp as u32) << 20) | (i << 16) | u32::from(cid);
        let addr = |i: u32| 0x1_0000_0000u64 * u64::from(i + 1);
        let dir = if opcode == 0x7f { 1 } else { opcode & 3 };
        match dir {
            0 => {}
            3 => {
                cmd.set_sgl1(encode_keyed(addr(0), 512, rkey(0), false));
                info.expect = Expect::Status(Status::INVALID_OPCODE);
            }
            _ => {
                let shape = self.e.below(1000);
                if opcode == 0x7f {
                    info.desc_lens[0] = 1024;
                    info.n = 1;
                    cmd.set_sgl1(encode_keyed(addr(0), 1024, rkey(0), false));
                } else if shape < 20 {
                    let mut d = encode_keyed(addr(0), 512, rkey(0), false);
                    d.set_type(sgl_type::BIT_BUCKET, 0);
                    cmd.set_sgl1(d);
                    info.expect = Expect::Status(Status::SGL_DESCRIPTOR_TYPE_INVALID);
                } else if shape < 35 {
                    cmd.set_sgl1(encode_keyed(addr(0), max_io + 1, rkey(0), false));
                    info.expect = Expect::Status(Status::DATA_SGL_LENGTH_INVALID);
                } else if shape < 200 && icd > 0 && !info.c2h {
                    let len = self.e.range(1, icd);
                    cmd.set_sgl1(encode_in_capsule(0, len));
                    self.payload.resize(64 + len as usize, 0xab);
                    info.icd_len = len;
                } else if shape < 200 + self.k.multi_rate && icd >= 32 {
                    let maxn = (icd / 16).min(MAX_SGL_DESCRIPTORS as u32);
                    let n = self.e.range(2, maxn);
                    let per = (max_io / n).max(1);
                    for i in 0..n {
                        let len = self.e.range(1, per);
                        info.desc_lens[i as usize] = len;
                        let d = encode_keyed(addr(i), len, rkey(i), false);
                        self.payload.extend_from_slice(&d.raw);
                    }
                    info.n = n as u8;
                    cmd.set_sgl1(encode_last_segment(0, n * 16));
                } else {
                    let len = self.e.range(1, max_io);
                    info.desc_lens[0] = len;
                    info.n = 1;
                    let inval = self.e.chance(200);
                    info.invalidate = inval;
                    cmd.set_sgl1(encode_keyed(addr(0), len, rkey(0), inval));
                }
            }
        }
        self.payload[..64].copy_from_slice(cmd.as_bytes());
        self.trace_ev(
            qp,
            "send-capsule",
            (u64::from(cid) << 16) | (u64::from(opcode) << 8) | u64::from(cmd.sgl1().raw[15]),
            u64::from(cmd.sgl1().length()),
        );
        self.qps[qp].ini.outstanding.insert(cid, info);
        self.report.commands += 1;
        let payload = std::mem::take(&mut self.payload);
        let r = self.deliver_bytes(qp, WrId::recv(recv).to_raw(), WcStatus::Success, &payload);
        self.payload = payload;
        r
    }

    fn ev_nic_exec(&mut self, qp: usize) -> Res {
        let Some(wr) = self.qps[qp].nic.sq.pop_front() else {
            return Ok(());
        };
        let status = if self.e.chance(self.k.err_rate) {
            self.random_error()
        } else {
            WcStatus::Success
        };
        if !status.is_success() {
            self.qp_error(qp);
        }
        self.complete_wr(qp, wr, status)
    }

    fn complete_wr(&mut self, qp: usize, wr: SqEntry, status: WcStatus) -> Res {
        let key = (wr.req.0, wr.generation);
        match wr.kind {
            SqKind::Read => self.deliver(qp, wr.raw, status, "read"),
            SqKind::Write => {
                if status.is_success() {
                    // Unsignaled: no completion; it stays counted until the SEND.
                    let nic = &mut self.qps[qp].nic;
                    nic.unsignaled_done += 1;
                    *nic.unsignaled_by_req.entry(key).or_insert(0) += 1;
                    Ok(())
                } else {
                    self.deliver(qp, wr.raw, status, "write")
                }
            }
            SqKind::Send => {
                let nic = &mut self.qps[qp].nic;
                if let Some(n) = nic.unsignaled_by_req.remove(&key) {
                    nic.unsignaled_done -= n;
                }
                if status.is_success() {
                    self.initiator_receives(qp, wr.response)?;
                }
                self.deliver(qp, wr.raw, status, "send")
            }
        }
    }

    fn ev_flush(&mut self, qp: usize) -> Res {
        // WRs the NIC executed before the error complete successfully (in
        // order, before the first flush); the rest flush.
        let late_ok = self.e.chance(150);
        if let Some(wr) = self.qps[qp].nic.sq.pop_front() {
            let nic = &mut self.qps[qp].nic;
            let status = if late_ok && !nic.sq_flushing {
                WcStatus::Success
            } else {
                nic.sq_flushing = true;
                WcStatus::Flushed
            };
            return self.complete_wr(qp, wr, status);
        }
        if let Some(r) = self.qps[qp].nic.rq.pop_front() {
            if late_ok && !self.qps[qp].nic.rq_flushing {
                return self.late_capsule(qp, r);
            }
            self.qps[qp].nic.rq_flushing = true;
            return self.deliver(qp, WrId::recv(r).to_raw(), WcStatus::Flushed, "recv-flush");
        }
        Ok(())
    }

    /// A receive an SRQ QP in error had already consumed: a capsule that
    /// arrived before the error, or a flush.
    fn ev_late_srq(&mut self, qp: usize) -> Res {
        let Some(r) = self.srq.pop_front() else {
            return Ok(());
        };
        self.srq_slots[r.0 as usize] = SrqSlot::Consumed(qp);
        if self.e.chance(500) {
            return self.late_capsule(qp, r);
        }
        self.deliver(
            qp,
            WrId::recv(r).to_raw(),
            WcStatus::Flushed,
            "srq-recv-flush",
        )
    }

    /// A capsule received on a qpair that is going away: it must never be
    /// answered (its CID is not outstanding, so an answer fails the run), and
    /// its receive must come back.
    fn late_capsule(&mut self, qp: usize, recv: RecvId) -> Res {
        let ini = &self.qps[qp].ini;
        let mut cid = ini.next_cid;
        while ini.outstanding.contains_key(&cid) {
            cid = cid.wrapping_add(1);
        }
        let cmd = Command::new(io_opcode::FLUSH, cid);
        self.trace_ev(qp, "late-capsule", u64::from(cid), u64::from(recv.0));
        self.report.late_capsules += 1;
        let payload = *cmd.as_bytes();
        self.deliver_bytes(qp, WrId::recv(recv).to_raw(), WcStatus::Success, &payload)
    }

    fn ev_host_complete(&mut self) -> Res {
        let ready: Vec<usize> = (0..self.exec.len())
            .filter(|&i| self.exec[i].ready_at <= self.now)
            .collect();
        let i = ready[self.e.below(ready.len() as u32) as usize];
        let x = self.exec.swap_remove(i);
        let status = if x.aborted {
            Status::ABORTED_BY_REQUEST
        } else if self.e.chance(self.k.exec_fail) {
            HOST_FAIL
        } else {
            Status::SUCCESS
        };
        let mut cpl = Completion::new(0, status);
        cpl.cdw0 = self.e.next_u32();
        self.trace_ev(
            x.qp,
            "host-complete",
            u64::from(x.req.0),
            u64::from(status.sc),
        );
        let r = self.qps[x.qp].engine.handle_command_executed(x.req, cpl);
        self.after(x.qp, r)
    }

    fn ev_grant(&mut self) -> Res {
        let Some((qp, req, n)) = self.wait.pop_front() else {
            return Ok(());
        };
        self.pool_free -= n;
        let mut bufs = Vec::with_capacity(n as usize);
        for _ in 0..n {
            bufs.push(LocalSge {
                addr: self.next_addr,
                len: UNIT,
                lkey: 0x5eed,
            });
            self.next_addr += u64::from(UNIT) * 2;
        }
        if self.granted.insert((qp, req.0), bufs.clone()).is_some() {
            return Err(self.fail(format!("qpair {qp}: buffers granted twice to {req:?}")));
        }
        self.trace_ev(qp, "grant", u64::from(req.0), u64::from(n));
        let r = self.qps[qp].engine.handle_buffers_granted(req, &bufs);
        self.after(qp, r)
    }

    fn ev_abort(&mut self, qp: usize) -> Res {
        let cids: Vec<u16> = self.qps[qp].ini.outstanding.keys().copied().collect();
        let cid = cids[self.e.below(cids.len() as u32) as usize];
        self.trace_ev(qp, "abort", u64::from(cid), 0);
        self.report.events += 1;
        let out = match self.qps[qp].engine.abort(cid) {
            Ok(o) => o,
            Err(e) => {
                if self.qps[qp].finished > 0 {
                    return Ok(());
                }
                return Err(self.fail(format!("qpair {qp}: abort refused: {e}")));
            }
        };
        if let AbortOutcome::Executing(req) = out {
            for x in self.exec.iter_mut() {
                if x.qp == qp && x.req == req {
                    x.aborted = true;
                }
            }
        }
        self.process_actions(qp)?;
        self.check(qp)
    }

    fn ev_fault(&mut self) -> Res {
        let live: Vec<usize> = (0..self.qps.len())
            .filter(|&i| self.qps[i].finished == 0 && !self.qps[i].fini_called)
            .collect();
        if live.is_empty() {
            return Ok(());
        }
        let qp = live[self.e.below(live.len() as u32) as usize];
        match self.e.below(3) {
            0 => {
                self.qp_error(qp);
                self.trace_ev(qp, "qp-fatal", 0, 0);
                let r = self.qps[qp].engine.handle_qp_fatal();
                self.after(qp, r)
            }
            1 => {
                self.qps[qp].peer_gone = true;
                self.qp_error(qp);
                self.trace_ev(qp, "peer-disconnected", 0, 0);
                let r = self.qps[qp].engine.handle_peer_disconnected();
                self.after(qp, r)
            }
            _ => self.ev_fini(qp),
        }
    }

    fn ev_fini(&mut self, qp: usize) -> Res {
        if self.qps[qp].fini_called || self.qps[qp].finished > 0 {
            return Ok(());
        }
        self.qps[qp].fini_called = true;
        let deadline = Timestamp(self.now + self.k.drain_timeout);
        self.trace_ev(qp, "fini", deadline.0, 0);
        let r = self.qps[qp].engine.handle_fini(deadline);
        self.after(qp, r)
    }

    fn ev_last_wqe(&mut self, qp: usize) -> Res {
        self.qps[qp].nic.last_wqe_sent = true;
        self.trace_ev(qp, "last-wqe", 0, 0);
        let r = self.qps[qp].engine.handle_last_wqe_reached();
        self.after(qp, r)
    }

    fn ev_time(&mut self) -> Res {
        self.now += u64::from(self.e.range(1, 40));
        for qp in 0..self.qps.len() {
            if let Some(t) = self.qps[qp].engine.poll_timeout() {
                if t.0 <= self.now && self.qps[qp].finished == 0 {
                    self.trace_ev(qp, "timeout", self.now, 0);
                    let r = self.qps[qp].engine.handle_timeout(Timestamp(self.now));
                    self.after(qp, r)?;
                }
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------------
    // Plumbing
    // ------------------------------------------------------------------

    fn random_error(&mut self) -> WcStatus {
        WcStatus::ERRORS[self.e.below(WcStatus::ERRORS.len() as u32) as usize]
    }

    fn qp_error(&mut self, qp: usize) {
        let lose = self.e.chance(self.k.lose_rate);
        let nic = &mut self.qps[qp].nic;
        if !nic.error {
            nic.error = true;
            nic.lost = lose;
        }
    }

    fn deliver(&mut self, qp: usize, raw: u64, status: WcStatus, what: &'static str) -> Res {
        self.deliver_bytes(qp, raw, status, &[]).map_err(|mut f| {
            f.what = format!("{} (while delivering {what})", f.what);
            f
        })
    }

    fn deliver_bytes(&mut self, qp: usize, raw: u64, status: WcStatus, payload: &[u8]) -> Res {
        if !status.is_success() {
            self.report.error_completions += 1;
        }
        self.trace_ev(qp, "completion", raw, u64::from(status.to_raw()));
        let r = self.qps[qp].engine.handle_completion(raw, status, payload);
        self.after(qp, r)
    }

    fn after(&mut self, qp: usize, r: Result<(), crate::EngineError>) -> Res {
        self.report.events += 1;
        if let Err(e) = r {
            return Err(self.fail(format!("qpair {qp}: engine refused an event: {e}")));
        }
        self.process_actions(qp)?;
        self.check(qp)
    }

    fn initiator_receives(&mut self, qp: usize, bytes: [u8; 16]) -> Res {
        let cpl = Completion::from_bytes(&bytes);
        self.report.responses += 1;
        let Some(cmd) = self.qps[qp].ini.outstanding.remove(&cpl.cid) else {
            return Err(self.fail(format!(
                "qpair {qp}: response for cid {} that is not outstanding (answered twice?)",
                cpl.cid
            )));
        };
        let st = Status {
            dnr: false,
            more: false,
            ..cpl.status
        };
        let ok = st == Status::ABORTED_BY_REQUEST
            || match cmd.expect {
                Expect::Status(s) => st.sct == s.sct && st.sc == s.sc,
                Expect::Normal => {
                    st == Status::SUCCESS
                        || (st.sct == HOST_FAIL.sct && st.sc == HOST_FAIL.sc)
                        || st == Status::DATA_SGL_LENGTH_INVALID
                        || (cmd.fused && st == Status::ABORTED_MISSING_FUSED)
                }
            };
        if !ok {
            return Err(self.fail(format!(
                "qpair {qp}: cid {} answered with unexpected status {:?} (expected {:?})",
                cpl.cid, st, cmd.expect
            )));
        }
        Ok(())
    }

    fn process_actions(&mut self, qp: usize) -> Res {
        loop {
            while let Some(a) = self.qps[qp].engine.poll_action() {
                self.action(qp, a)?;
            }
            // WRs from a failed post: reported once the actions are handled.
            let Some(raw) = self.unposted.pop_front() else {
                return Ok(());
            };
            self.trace_ev(qp, "not-posted", raw, 0);
            self.report.events += 1;
            self.report.post_failures += 1;
            if let Err(e) = self.qps[qp].engine.handle_wr_not_posted(raw) {
                return Err(self.fail(format!("qpair {qp}: engine refused a not-posted WR: {e}")));
            }
            if let Err(v) = self.qps[qp].engine.check_invariants() {
                return Err(self.fail(format!("{v}")));
            }
        }
    }

    /// A post of `len` WRs: the index of the first WR the post fails at
    /// (`len` when it succeeds).
    fn post_outcome(&mut self, len: usize) -> usize {
        if self.e.chance(self.k.post_fail_rate) {
            self.e.below(len as u32) as usize
        } else {
            len
        }
    }

    fn action(&mut self, qp: usize, a: Action) -> Res {
        match a {
            Action::PostRecv { recv } => {
                if self.k.srq {
                    let slot = self.srq_slots.get(recv.0 as usize).copied();
                    if slot != Some(SrqSlot::Consumed(qp)) {
                        return Err(self.fail(format!(
                            "qpair {qp}: re-posts SRQ receive {recv:?} it does not hold ({slot:?})"
                        )));
                    }
                    self.srq_slots[recv.0 as usize] = SrqSlot::Posted;
                    self.srq.push_back(recv);
                } else {
                    let nic = &self.qps[qp].nic;
                    if nic.destroyed {
                        return Err(self.fail(format!("qpair {qp}: PostRecv after DestroyQp")));
                    }
                    if nic.rq.contains(&recv) {
                        return Err(self.fail(format!("qpair {qp}: {recv:?} posted twice")));
                    }
                    if self.post_outcome(1) == 0 {
                        self.unposted.push_back(WrId::recv(recv).to_raw());
                    } else {
                        self.qps[qp].nic.rq.push_back(recv);
                    }
                }
            }
            Action::PostReads { req, first, count } => {
                let fail_at = self.post_outcome(usize::from(count));
                for (k, idx) in (first..first + count).enumerate() {
                    self.post_data(qp, req, idx, SqKind::Read, k < fail_at)?;
                }
            }
            Action::PostResponse { req, writes, recv } => {
                if let Some(recv) = recv {
                    self.action(qp, Action::PostRecv { recv })?;
                }
                let cid = self.cid_of(qp, req)?;
                let cmd = self.qps[qp].ini.outstanding.get(&cid).copied();
                let fail_at = self.post_outcome(usize::from(writes) + 1);
                for idx in 0..writes {
                    self.post_data(qp, req, idx, SqKind::Write, usize::from(idx) < fail_at)?;
                }
                let Some(s) = self.qps[qp].engine.send_wr(req) else {
                    return Err(self.fail(format!("qpair {qp}: no send WR for {req:?}")));
                };
                let cpl = Completion::from_bytes(&s.response);
                if let Some(c) = cmd {
                    let cfg = self.qps[qp].engine.config();
                    let want = (cfg.send_with_invalidate && c.invalidate)
                        .then_some(((qp as u32) << 20) | u32::from(cid));
                    if s.invalidate_rkey != want {
                        return Err(self.fail(format!(
                            "qpair {qp}: cid {cid} answered with invalidate {:?}, expected {want:?}",
                            s.invalidate_rkey
                        )));
                    }
                    if cpl.status == Status::SUCCESS && c.c2h && writes != c.n {
                        return Err(self.fail(format!(
                            "qpair {qp}: successful read cid {cid} answered with {writes} WRITEs for {} descriptors",
                            c.n
                        )));
                    }
                }
                let generation = self.generation_of(s.wr_id);
                if self.qps[qp].nic.destroyed {
                    return Err(self.fail(format!("qpair {qp}: PostResponse after DestroyQp")));
                }
                if fail_at <= usize::from(writes) {
                    self.unposted.push_back(s.wr_id.to_raw());
                    return Ok(());
                }
                self.qps[qp].nic.sq.push_back(SqEntry {
                    raw: s.wr_id.to_raw(),
                    kind: SqKind::Send,
                    req,
                    generation,
                    response: s.response,
                });
            }
            Action::RequestBuffers { req, len } => {
                if self.wait.iter().any(|&(q, r, _)| q == qp && r == req)
                    || self.granted.contains_key(&(qp, req.0))
                {
                    return Err(self.fail(format!("qpair {qp}: second buffer request for {req:?}")));
                }
                let n = len.div_ceil(UNIT).max(1);
                if n > self.pool_size {
                    return Err(self.fail(format!("qpair {qp}: {len} bytes can never be granted")));
                }
                self.wait.push_back((qp, req, n));
            }
            Action::CancelBufferRequest { req } => {
                let Some(pos) = self.wait.iter().position(|&(q, r, _)| q == qp && r == req) else {
                    return Err(self.fail(format!(
                        "qpair {qp}: cancels a buffer request for {req:?} that is not waiting"
                    )));
                };
                self.wait.remove(pos);
            }
            Action::Execute { req } => {
                if let Some(t) = &self.qps[qp].traced {
                    let last = t.get(req.index()).copied().flatten();
                    if last != Some(ReqState::Executing) {
                        return Err(self.fail(format!(
                            "qpair {qp}: Execute for {req:?} last traced as {last:?}"
                        )));
                    }
                }
                let e = &self.qps[qp].engine;
                if e.command(req).is_none() || e.request_state(req) != Some(ReqState::Executing) {
                    return Err(self.fail(format!("qpair {qp}: Execute for {req:?} not executing")));
                }
                if self.qps[qp].nic.sq.iter().any(|w| w.req == req) {
                    return Err(
                        self.fail(format!("qpair {qp}: {req:?} executes with WRs in flight"))
                    );
                }
                if self.exec.iter().any(|x| x.qp == qp && x.req == req) {
                    return Err(self.fail(format!("qpair {qp}: {req:?} executed twice")));
                }
                self.check_execute_data(qp, req)?;
                let ready_at = self.now + u64::from(self.e.below(self.k.max_latency));
                self.exec.push(HostExec {
                    qp,
                    req,
                    ready_at,
                    aborted: false,
                });
            }
            Action::ReleaseBuffers { req } => {
                let Some(bufs) = self.granted.remove(&(qp, req.0)) else {
                    return Err(self.fail(format!(
                        "qpair {qp}: releases buffers {req:?} does not hold"
                    )));
                };
                let nic = &self.qps[qp].nic;
                if !nic.destroyed
                    && (nic.sq.iter().any(|w| w.req == req)
                        || nic.unsignaled_by_req.keys().any(|k| k.0 == req.0))
                {
                    return Err(self.fail(format!(
                        "qpair {qp}: releases buffers of {req:?} while the NIC still owns its WRs"
                    )));
                }
                self.pool_free += bufs.len() as u32;
            }
            Action::HostDisconnect { .. } => {
                let q = &mut self.qps[qp];
                q.host_disconnects += 1;
                if q.host_disconnects > 1 {
                    return Err(self.fail(format!("qpair {qp}: HostDisconnect twice")));
                }
                if q.fini_at.is_none() {
                    q.fini_at = Some(self.now + u64::from(self.e.below(20)));
                }
            }
            Action::DisconnectQp => {
                self.qps[qp].disconnect_qps += 1;
                if self.qps[qp].disconnect_qps > 1 {
                    return Err(self.fail(format!("qpair {qp}: DisconnectQp twice")));
                }
                self.qp_error(qp);
            }
            Action::DestroyQp { forced } => {
                let srq = self.k.srq;
                let q = &mut self.qps[qp];
                q.destroys += 1;
                if q.destroys > 1 {
                    return Err(self.fail(format!("qpair {qp}: destroyed twice")));
                }
                let (sq, rq) = (q.nic.sq.len(), q.nic.rq.len());
                let wqe_missing =
                    srq && q.engine.config().last_wqe_reached_supported && !q.nic.last_wqe_sent;
                if !forced && (sq != 0 || (!srq && rq != 0)) {
                    return Err(self.fail(format!(
                        "qpair {qp}: destroyed with {sq} WRs and {rq} RECVs still posted"
                    )));
                }
                if !forced && wqe_missing {
                    return Err(self.fail(format!("qpair {qp}: destroyed before last WQE reached")));
                }
                let q = &mut self.qps[qp];
                q.nic.destroyed = true;
                q.nic.sq.clear();
                q.nic.rq.clear();
                q.nic.unsignaled_by_req.clear();
                q.nic.unsignaled_done = 0;
            }
            Action::Finished => {
                let q = &mut self.qps[qp];
                q.finished += 1;
                let (finished, destroys) = (q.finished, q.destroys);
                if finished > 1 || destroys != 1 {
                    return Err(self.fail(format!(
                        "qpair {qp}: Finished #{finished} after {destroys} destroys"
                    )));
                }
                if self.exec.iter().any(|x| x.qp == qp) {
                    return Err(self.fail(format!(
                        "qpair {qp}: finished while the host executes its commands"
                    )));
                }
                if self.wait.iter().any(|x| x.0 == qp) || self.granted.keys().any(|k| k.0 == qp) {
                    return Err(self.fail(format!("qpair {qp}: finished while holding buffers")));
                }
            }
            Action::Notice(n) => match n {
                Notice::DrainDeadlineExpired { .. } => self.report.forced_drains += 1,
                Notice::HostOverrun { .. } => {}
                _ => {}
            },
            Action::RequestState { req, state, in_use } => {
                self.traced_state(qp, req, state, in_use)?
            }
        }
        Ok(())
    }

    /// A reported state change: only from a tracing qpair, never FREE nor
    /// the state already reported, a life starts with NEW after COMPLETED
    /// (or first use) and never skips NEW; `in_use` within the depth.
    fn traced_state(&mut self, qp: usize, req: ReqId, state: ReqState, in_use: u16) -> Res {
        let qd = self.qps[qp].engine.config().max_queue_depth;
        let Some(last) = self.qps[qp]
            .traced
            .as_ref()
            .and_then(|t| t.get(req.index()).copied())
        else {
            return Err(self.fail(format!(
                "qpair {qp}: RequestState {req:?} {state:?} with tracing off or for no request"
            )));
        };
        let starts = matches!(last, None | Some(ReqState::Completed));
        let ok = state != ReqState::Free
            && last != Some(state)
            && (state == ReqState::New) == starts
            && (1..=qd).contains(&in_use);
        if !ok {
            return Err(self.fail(format!(
                "qpair {qp}: {req:?} reported {state:?} (in use {in_use}) after {last:?}"
            )));
        }
        if let Some(t) = self.qps[qp].traced.as_mut() {
            t[req.index()] = Some(state);
        }
        Ok(())
    }

    fn post_data(&mut self, qp: usize, req: ReqId, idx: u8, kind: SqKind, posted: bool) -> Res {
        let cid = self.cid_of(qp, req)?;
        let Some(w) = self.qps[qp].engine.data_wr(req, idx) else {
            return Err(self.fail(format!("qpair {qp}: no data WR {idx} for {req:?}")));
        };
        let want = if kind == SqKind::Read {
            DataOpcode::RdmaRead
        } else {
            DataOpcode::RdmaWrite
        };
        if w.opcode != want {
            return Err(self.fail(format!(
                "qpair {qp}: data WR {idx} of {req:?} has opcode {:?}",
                w.opcode
            )));
        }
        let expect_rkey = ((qp as u32) << 20) | (u32::from(idx) << 16) | u32::from(cid);
        let len: u64 = w.sges.iter().map(|s| u64::from(s.len)).sum();
        let desc = self.qps[qp]
            .ini
            .outstanding
            .get(&cid)
            .map(|c| c.desc_lens[usize::from(idx)]);
        if w.rkey != expect_rkey || desc.map(u64::from) != Some(len) {
            return Err(self.fail(format!(
                "qpair {qp}: data WR {idx} of {req:?} (cid {cid}) has rkey {:#x} len {len}, host sent rkey {expect_rkey:#x} len {desc:?}",
                w.rkey
            )));
        }
        let Some(bufs) = self.granted.get(&(qp, req.0)) else {
            return Err(self.fail(format!("qpair {qp}: data WR for {req:?} without buffers")));
        };
        for s in w.sges {
            let inside = bufs.iter().any(|b| {
                s.addr >= b.addr && s.addr + u64::from(s.len) <= b.addr + u64::from(b.len)
            });
            if !inside {
                return Err(self.fail(format!(
                    "qpair {qp}: SGE {s:?} of {req:?} outside its buffers"
                )));
            }
        }
        let generation = self.generation_of(w.wr_id);
        let raw = w.wr_id.to_raw();
        if self.qps[qp].nic.destroyed {
            return Err(self.fail(format!("qpair {qp}: data WR after DestroyQp")));
        }
        if !posted {
            self.unposted.push_back(raw);
            return Ok(());
        }
        self.qps[qp].nic.sq.push_back(SqEntry {
            raw,
            kind,
            req,
            generation,
            response: [0; 16],
        });
        Ok(())
    }

    /// What the host is handed matches what the initiator sent.
    fn check_execute_data(&self, qp: usize, req: ReqId) -> Res {
        let cid = self.cid_of(qp, req)?;
        let Some(c) = self.qps[qp].ini.outstanding.get(&cid).copied() else {
            return Err(self.fail(format!("qpair {qp}: executes cid {cid}, not outstanding")));
        };
        let data = self.qps[qp].engine.data(req);
        let ok = if c.icd_len > 0 {
            data == DataRef::InCapsule {
                recv: c.recv,
                offset: 0,
                len: c.icd_len,
            }
        } else if c.n > 0 {
            let total: u32 = c.desc_lens.iter().sum();
            match data {
                DataRef::Buffers { sges, len } => {
                    len == total && sges.iter().map(|s| s.len).sum::<u32>() == total
                }
                _ => false,
            }
        } else {
            data == DataRef::None
        };
        if !ok {
            return Err(self.fail(format!(
                "qpair {qp}: cid {cid} executes with data {data:?}, the initiator sent {c:?}"
            )));
        }
        Ok(())
    }

    fn generation_of(&self, id: WrId) -> u32 {
        match id.kind() {
            Ok(crate::WrKind::Data { generation, .. })
            | Ok(crate::WrKind::Send { generation, .. }) => generation,
            _ => 0,
        }
    }

    fn cid_of(&self, qp: usize, req: ReqId) -> Result<u16, SimFailure> {
        match self.qps[qp].engine.command(req) {
            Some(c) => Ok(c.cid()),
            None => Err(self.fail(format!("qpair {qp}: action for free request {req:?}"))),
        }
    }

    // ------------------------------------------------------------------
    // Checks
    // ------------------------------------------------------------------

    /// A qpair nothing has gone wrong with (no error, no teardown).
    fn healthy(q: &SimQp) -> bool {
        q.engine.state() == QpairState::Active
            && !q.nic.error
            && !q.peer_gone
            && !q.fini_called
            && q.fini_at.is_none()
            && q.finished == 0
    }

    fn healthy_all_answered(&self) -> bool {
        self.qps
            .iter()
            .all(|q| !Self::healthy(q) || q.ini.outstanding.is_empty())
    }

    fn stuck_commands(&self) -> String {
        let mut out = String::new();
        for (i, q) in self.qps.iter().enumerate() {
            if Self::healthy(q) && !q.ini.outstanding.is_empty() {
                let cids: Vec<u16> = q.ini.outstanding.keys().copied().collect();
                let qd = q.engine.config().max_queue_depth;
                let states: Vec<String> = (0..qd)
                    .filter_map(|r| {
                        let st = q.engine.request_state(ReqId(r))?;
                        (st != ReqState::Free).then(|| format!("{r}:{st:?}"))
                    })
                    .collect();
                out.push_str(&format!(
                    "qpair {i} cids {cids:?} counters {:?} requests {states:?}; ",
                    q.engine.counters()
                ));
            }
        }
        out.push_str(&format!(
            "host pool {}/{} wait {:?}",
            self.pool_free, self.pool_size, self.wait
        ));
        out
    }

    fn check(&self, qp: usize) -> Res {
        let q = &self.qps[qp];
        if let Err(v) = q.engine.check_invariants() {
            return Err(self.fail(format!("{v}")));
        }
        let internal = q.engine.stats().internal_errors;
        if internal != 0 {
            return Err(self.fail(format!(
                "qpair {qp}: {internal} engine internal error(s) (see the log)"
            )));
        }
        if self.k.srq {
            // Every SRQ receive this qpair took is either held by the engine
            // (recv depth) or was handed back with PostRecv.
            let taken = self
                .srq_slots
                .iter()
                .filter(|s| **s == SrqSlot::Consumed(qp))
                .count();
            let held = usize::from(q.engine.counters().recv_depth);
            if taken != held {
                return Err(self.fail(format!(
                    "qpair {qp}: took {taken} SRQ receives but the engine holds {held}: a receive was not returned to the SRQ"
                )));
            }
        }
        if q.finished > 0 || q.nic.destroyed {
            return Ok(());
        }
        // Fabrics commands jump the buffer queue (upstream 7251e4c26c): each
        // one waiting for buffers has its request with the host.
        for r in 0..q.engine.config().max_queue_depth {
            let req = ReqId(r);
            if q.engine.request_state(req) == Some(ReqState::NeedBuffer)
                && q.engine.command(req).is_some_and(|c| c.is_fabrics())
                && !self.wait.iter().any(|&(wq, wr, _)| wq == qp && wr == req)
            {
                return Err(self.fail(format!(
                    "qpair {qp}: fabrics command {req:?} waits for buffers the host was never asked for"
                )));
            }
        }
        // Every state change was reported: the last report is the state (a
        // FREE request's life ended with COMPLETED).
        if let Some(t) = &q.traced {
            for (r, last) in t.iter().enumerate() {
                let now = q.engine.request_state(ReqId(r as u16));
                let agrees = match now {
                    Some(ReqState::Free) => matches!(last, None | Some(ReqState::Completed)),
                    _ => *last == now,
                };
                if !agrees {
                    return Err(self.fail(format!(
                        "qpair {qp}: request {r} is {now:?}, last reported {last:?}"
                    )));
                }
            }
        }
        let c = q.engine.counters();
        let sq = q.nic.sq.len() as u32 + q.nic.unsignaled_done;
        let reads = q.nic.sq.iter().filter(|w| w.kind == SqKind::Read).count() as u16;
        if c.send_depth != sq {
            return Err(self.fail(format!(
                "qpair {qp}: send depth {} but the NIC owns {sq} send-queue WRs",
                c.send_depth
            )));
        }
        if c.read_depth != reads {
            return Err(self.fail(format!(
                "qpair {qp}: read depth {} but the NIC owns {reads} READs",
                c.read_depth
            )));
        }
        if !self.k.srq && usize::from(c.recvs_posted) != q.nic.rq.len() {
            return Err(self.fail(format!(
                "qpair {qp}: {} receives posted per the engine, {} on the NIC",
                c.recvs_posted,
                q.nic.rq.len()
            )));
        }
        for x in self.exec.iter().filter(|x| x.qp == qp) {
            if q.engine.request_state(x.req) != Some(ReqState::Executing) {
                return Err(self.fail(format!(
                    "qpair {qp}: host executes {:?}, engine disagrees",
                    x.req
                )));
            }
        }
        for &(_, r, _) in self.wait.iter().filter(|x| x.0 == qp) {
            if q.engine.request_state(r) != Some(ReqState::NeedBuffer) {
                return Err(self.fail(format!(
                    "qpair {qp}: host holds a buffer request for {r:?}, engine disagrees"
                )));
            }
        }
        Ok(())
    }

    fn final_checks(&mut self) -> Res {
        for (i, q) in self.qps.iter().enumerate() {
            if q.finished != 1 || q.destroys != 1 {
                return Err(self.fail(format!(
                    "qpair {i}: finished {} destroyed {}",
                    q.finished, q.destroys
                )));
            }
            self.report.split_reads += q.engine.stats().split_reads;
        }
        if !self.exec.is_empty() || !self.wait.is_empty() || !self.granted.is_empty() {
            return Err(self.fail("host still holds commands or buffers at the end".into()));
        }
        if self.pool_free != self.pool_size {
            return Err(self.fail(format!(
                "buffer pool {} of {} at the end",
                self.pool_free, self.pool_size
            )));
        }
        if self.srq.len() != self.srq_slots.len() {
            return Err(self.fail(format!(
                "SRQ holds {} of {} receives at the end",
                self.srq.len(),
                self.srq_slots.len()
            )));
        }
        Ok(())
    }

    fn trace_ev(&mut self, qp: usize, what: &'static str, a: u64, b: u64) {
        if self.trace.len() == 64 {
            self.trace.pop_front();
        }
        self.trace.push_back(TraceEv {
            event: self.report.events,
            now: self.now,
            qp,
            what,
            a,
            b,
        });
    }

    fn fail(&self, what: String) -> SimFailure {
        let trace = self
            .trace
            .iter()
            .map(|t| {
                let detail = if t.what == "completion" {
                    format!(
                        "{:?} status {}",
                        WrId::from_raw(t.a),
                        WcStatus::from_raw(t.b as u32)
                    )
                } else {
                    format!("{} {}", t.a, t.b)
                };
                format!("#{} t={} qp{} {} {}", t.event, t.now, t.qp, t.what, detail)
            })
            .collect();
        SimFailure {
            seed: None,
            what,
            event: self.report.events,
            trace,
            stress: false,
        }
    }
}
