//! The initiator against a small in-test NVMe/RDMA responder over softrdma.
//!
//! The responder here is test scaffolding, not the project's transport: one
//! thread, one CQ per connection, commands handled one at a time, built
//! from `verbs` + `engine::codec` + the sans-IO `minitarget::Target`. It is
//! enough to exercise the initiator end to end: CM private data, Fabrics
//! Connect, properties, Identify, keyed SGLs (RDMA READ/WRITE), in-capsule
//! data, multi-descriptor SGLs (several RDMA READs per write), queue depth,
//! and a target that drops connections.
//!
//! Like `verbs_loopback`, each test re-executes itself with
//! `LD_LIBRARY_PATH=<repo>/target/softrdma`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nvmf_rdma_rs::engine::codec::{
    parse_data_layout, CmAccept, CmRequest, Command, Completion, DataLayout, DataTransfer,
    SglLimits,
};
use nvmf_rdma_rs::initiator::*;
use nvmf_rdma_rs::minitarget::{DataBuffer, Execution, QpairId, Target, TargetConfig};
use nvmf_rdma_rs::verbs::*;

/// The longest one re-executed test may run.
const CHILD_TIMEOUT: Duration = Duration::from_secs(300);

const CHILD_ENV: &str = "NVMF_INITIATOR_LOOPBACK_CHILD";
const NQN: &str = "nqn.2016-06.io.spdk:cnode1";
const ICD: usize = 4096;
const MAX_IO: usize = 131072;

#[path = "support/reexec.rs"]
mod reexec;

/// Runs `name` in a child process over softrdma (the shared re-exec helper:
/// private fabric directory, the child must report one test passed).
fn run_in_child(name: &str, body: fn()) {
    if reexec::under_softrdma(CHILD_ENV, name, CHILD_TIMEOUT) {
        body();
    }
}

macro_rules! softrdma_test {
    ($name:ident, $body:expr) => {
        #[test]
        fn $name() {
            run_in_child(stringify!($name), $body);
        }
    };
}

// ---------------------------------------------------------------- responder

struct Conn {
    id: CmId,
    cq: Cq,
    recv: DmaBuf,
    rsp: DmaBuf,
    data: DmaBuf,
    qid: u16,
    qpair: QpairId,
    stash: VecDeque<WorkCompletion>,
    dead: bool,
    sends: SendWrList,
    recvs: RecvWrList,
}

const STRIDE: usize = 64 + ICD;

struct Responder {
    target: Target,
    conns: Vec<Conn>,
    next_qpair: u64,
    limits: SglLimits,
    start: Instant,
    /// Disconnect every I/O connection once this many commands were served (0 = never).
    drop_io_after: Arc<AtomicU64>,
    served: u64,
}

impl Responder {
    fn accept(&mut self, mut ev: CmEvent) {
        let Some(mut id) = ev.take_id() else { return };
        let req = match CmRequest::parse(ev.private_data()) {
            Ok(r) => r,
            Err(st) => {
                let _ = id.reject(&st.to_reject().to_bytes());
                return;
            }
        };
        let depth = req.hrqsize.min(req.hsqsize + 1).min(128);
        let ctx = id.context().expect("device");
        let pd = Pd::new(&ctx).unwrap();
        let cq = Cq::new(&ctx, depth as u32 * 4 + 64, None).unwrap();
        id.create_qp(
            &pd,
            &QpInit {
                send_cq: &cq,
                recv_cq: &cq,
                srq: None,
                max_send_wr: depth as u32 * 3 + 16,
                max_recv_wr: depth as u32,
                max_send_sge: 16,
                max_recv_sge: 1,
                max_inline_data: 0,
            },
        )
        .unwrap();
        let recv = DmaBuf::new(&pd, STRIDE * depth as usize, Access::LOCAL_WRITE).unwrap();
        let rsp = DmaBuf::new(&pd, 16 * depth as usize, Access::LOCAL_WRITE).unwrap();
        let data = DmaBuf::new(&pd, MAX_IO * depth as usize, Access::LOCAL_WRITE).unwrap();
        let mut rl = RecvWrList::with_capacity(depth as usize, depth as usize);
        for r in 0..depth as u32 {
            rl.push(
                WrId::recv(0, r),
                &[recv.sge(r as usize * STRIDE, STRIDE as u32).unwrap()],
            )
            .unwrap();
        }
        id.qp().unwrap().post_recv(&mut rl).unwrap();
        let acc = CmAccept {
            recfmt: 0,
            crqsize: depth,
        }
        .to_bytes();
        id.accept(&ConnParam {
            private_data: &acc,
            responder_resources: 0,
            initiator_depth: ev.initiator_depth.max(1),
            retry_count: 7,
            rnr_retry_count: 7,
        })
        .unwrap();
        self.next_qpair += 1;
        self.conns.push(Conn {
            id,
            cq,
            recv,
            rsp,
            data,
            qid: req.qid,
            qpair: QpairId(self.next_qpair),
            stash: VecDeque::new(),
            dead: false,
            sends: SendWrList::with_capacity(32, 64),
            recvs: RecvWrList::with_capacity(1, 1),
        });
    }

    fn run(
        &mut self,
        addr: SocketAddr,
        stop: &AtomicBool,
        ready: std::sync::mpsc::Sender<SocketAddr>,
    ) {
        let ch = EventChannel::new().unwrap();
        let listen = CmId::new(&ch).unwrap();
        listen.bind_addr(addr).unwrap();
        listen.listen(16).unwrap();
        ready
            .send(listen.local_addr().expect("bound address"))
            .unwrap();
        let mut wcs = vec![WorkCompletion::EMPTY; 16];
        while !stop.load(Ordering::Relaxed) {
            while let Some(ev) = ch.get_event().unwrap() {
                match ev.kind {
                    CmEventKind::ConnectRequest => self.accept(ev),
                    CmEventKind::Disconnected => {
                        if let Some(c) = self.conns.iter_mut().find(|c| c.id.key() == ev.id_key) {
                            c.dead = true;
                        }
                    }
                    _ => {}
                }
            }
            let limit = self.drop_io_after.load(Ordering::Relaxed);
            let mut busy = false;
            for i in 0..self.conns.len() {
                if limit > 0
                    && self.served >= limit
                    && self.conns[i].qid != 0
                    && !self.conns[i].dead
                {
                    let _ = self.conns[i].id.disconnect();
                    self.conns[i].dead = true;
                }
                if self.conns[i].dead {
                    continue;
                }
                let mut pending: Vec<WorkCompletion> = self.conns[i].stash.drain(..).collect();
                let n = self.conns[i].cq.poll(&mut wcs).unwrap_or(0);
                pending.extend(wcs[..n].iter().cloned());
                busy |= !pending.is_empty();
                for wc in pending {
                    self.handle(i, &wc);
                }
            }
            let now = self.start.elapsed().as_nanos() as u64;
            for d in self.target.poll(now) {
                if let Some(c) = self.conns.iter_mut().find(|c| c.qpair == d.qpair) {
                    let _ = c.id.disconnect();
                    c.dead = true;
                }
            }
            let target = &mut self.target;
            self.conns.retain(|c| {
                if c.dead {
                    target.qpair_disconnected(c.qpair);
                }
                !c.dead
            });
            if !busy {
                std::thread::yield_now();
            }
        }
    }

    /// Wait for the data WR completions of one command on connection `i`.
    fn wait_data(&mut self, i: usize, n: usize) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = 0;
        let mut wcs = vec![WorkCompletion::EMPTY; 16];
        while got < n && Instant::now() < deadline {
            let k = self.conns[i].cq.poll(&mut wcs).unwrap_or(0);
            for wc in &wcs[..k] {
                match wc.wr_id() {
                    Ok(id) if id.kind() == WrKind::Data => {
                        if !wc.is_success() {
                            return false;
                        }
                        got += 1;
                    }
                    _ => self.conns[i].stash.push_back(wc.clone()),
                }
            }
        }
        got == n
    }

    fn handle(&mut self, i: usize, wc: &WorkCompletion) {
        if !wc.is_success() {
            self.conns[i].dead = true;
            return;
        }
        let Ok(id) = wc.wr_id() else { return };
        if id.kind() != WrKind::Recv {
            return;
        }
        self.served += 1;
        let r = id.index() as usize;
        let len = (wc.byte_len() as usize).min(STRIDE);
        let mut capsule = vec![0u8; len.max(64)];
        self.conns[i]
            .recv
            .read(r * STRIDE, &mut capsule[..len])
            .unwrap();
        let cmd = Command::from_bytes(capsule[..64].try_into().unwrap());
        let now = self.start.elapsed().as_nanos() as u64;
        let qpair = self.conns[i].qpair;
        let mut data_wrs = 0usize;
        let (exec, c2h) = match parse_data_layout(&cmd, &capsule[64..len], &self.limits) {
            Err(e) => (
                Execution::Complete(Completion::new(cmd.cid(), e.status())),
                None,
            ),
            Ok(DataLayout::None) => (
                self.target.execute(qpair, &cmd, DataBuffer::none(), now),
                None,
            ),
            Ok(DataLayout::InCapsule { offset, len: l }) => {
                let mut v = capsule[64 + offset as usize..64 + (offset + l) as usize].to_vec();
                (
                    self.target
                        .execute(qpair, &cmd, DataBuffer::single(&mut v), now),
                    None,
                )
            }
            Ok(DataLayout::Keyed {
                segments,
                total_len,
                ..
            }) => {
                let base = r * MAX_IO;
                let mut v = vec![0u8; total_len as usize];
                if cmd.data_transfer() == DataTransfer::HostToController {
                    let c = &mut self.conns[i];
                    let mut off = 0usize;
                    for s in segments.as_slice() {
                        let sge = c.data.sge(base + off, s.len).unwrap();
                        c.sends
                            .push(
                                WrId::data(0, r as u32),
                                SendOp::RdmaRead {
                                    remote_addr: s.addr,
                                    rkey: s.rkey,
                                },
                                &[sge],
                                SendFlags::SIGNALED,
                            )
                            .unwrap();
                        off += s.len as usize;
                    }
                    let n = segments.len();
                    if c.id.qp().unwrap().post_send(&mut c.sends).is_err() || !self.wait_data(i, n)
                    {
                        self.conns[i].dead = true;
                        return;
                    }
                    self.conns[i].data.read(base, &mut v).unwrap();
                    (
                        self.target
                            .execute(qpair, &cmd, DataBuffer::single(&mut v), now),
                        None,
                    )
                } else {
                    let e = self
                        .target
                        .execute(qpair, &cmd, DataBuffer::single(&mut v), now);
                    (e, Some((segments, v)))
                }
            }
        };
        let Execution::Complete(cpl) = exec else {
            return;
        };
        let c = &mut self.conns[i];
        c.rsp.write(r * 16, &cpl.to_bytes()).unwrap();
        if let Some((segments, v)) = c2h {
            if cpl.status.is_success() {
                let base = r * MAX_IO;
                c.data.write(base, &v).unwrap();
                let mut off = 0usize;
                for s in segments.as_slice() {
                    let sge = c.data.sge(base + off, s.len).unwrap();
                    c.sends
                        .push(
                            WrId::data(0, r as u32),
                            SendOp::RdmaWrite {
                                remote_addr: s.addr,
                                rkey: s.rkey,
                            },
                            &[sge],
                            SendFlags::UNSIGNALED,
                        )
                        .unwrap();
                    off += s.len as usize;
                    data_wrs += 1;
                }
            }
        }
        let _ = data_wrs;
        c.recvs
            .push(
                WrId::recv(0, r as u32),
                &[c.recv.sge(r * STRIDE, STRIDE as u32).unwrap()],
            )
            .unwrap();
        let sge = c.rsp.sge(r * 16, 16).unwrap();
        c.sends
            .push(
                WrId::send(0, r as u32),
                SendOp::Send,
                &[sge],
                SendFlags::SIGNALED,
            )
            .unwrap();
        let qp = c.id.qp().unwrap();
        if qp.post_recv(&mut c.recvs).is_err() || qp.post_send(&mut c.sends).is_err() {
            c.dead = true;
        }
        c.sends.clear();
        c.recvs.clear();
    }
}

struct Server {
    stop: Arc<AtomicBool>,
    drop_io_after: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
    addr: SocketAddr,
}

impl Server {
    fn start(addr: SocketAddr, ns_bytes: u64) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let drop_io_after = Arc::new(AtomicU64::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        let (s2, d2) = (stop.clone(), drop_io_after.clone());
        let thread = std::thread::spawn(move || {
            let target =
                Target::new(TargetConfig::new(NQN, vec![ns_bytes])).expect("target config");
            let mut r = Responder {
                target,
                conns: Vec::new(),
                next_qpair: 0,
                limits: SglLimits::default(),
                start: Instant::now(),
                drop_io_after: d2,
                served: 0,
            };
            r.run(addr, &s2, tx);
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("responder listening");
        Server {
            stop,
            drop_io_after,
            thread: Some(thread),
            addr,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn addr(v6: bool) -> SocketAddr {
    // Port 0: the responder binds an ephemeral port (see Server::start).
    if v6 {
        "[::1]:0".parse().unwrap()
    } else {
        "127.0.0.1:0".parse().unwrap()
    }
}

// ---------------------------------------------------------------- tests

fn connect_identify_rw_body() {
    let srv = Server::start(addr(false), 64 << 20);
    let mut cfg = ControllerConfig::new(srv.addr, NQN);
    cfg.io_queues = 2;
    cfg.io_depth = 16;
    let mut ctrl = Controller::connect(cfg).expect("controller connect");
    assert_ne!(ctrl.cntlid(), 0xffff);
    assert_eq!(ctrl.info().subnqn, NQN);
    assert_eq!(ctrl.info().in_capsule_data_size(), ICD as u32);
    assert!(ctrl.info().supports_keyed_sgl());
    assert_eq!(ctrl.namespaces().len(), 1);
    let ns = ctrl.namespaces()[0];
    assert_eq!(ns.nsze * ns.block_size as u64, 64 << 20);
    assert_eq!(ctrl.io_queues().len(), 2);

    let bs = ns.block_size as usize;
    for (i, (size, mode)) in [
        (bs, SglMode::Keyed),
        (4096, SglMode::InCapsule),
        (8192, SglMode::InCapsule), // too big for ICD: falls back to keyed
        (65536, SglMode::MultiKeyed(4)),
        (131072, SglMode::MultiKeyed(16)),
        (12288, SglMode::MultiKeyed(3)),
    ]
    .into_iter()
    .enumerate()
    {
        let lba = 1000 * i as u64;
        let mut data = vec![0u8; size];
        pattern::fill(&mut data, 42, lba, i as u32 + 1);
        let q = i % 2;
        ctrl.write(q, ns.nsid, lba, &data, mode)
            .unwrap_or_else(|e| panic!("write {size} {mode:?}: {e}"));
        let mut back = vec![0u8; size];
        ctrl.read(1 - q, ns.nsid, lba, &mut back, mode)
            .unwrap_or_else(|e| panic!("read {size} {mode:?}: {e}"));
        assert!(back == data, "data mismatch for {size} bytes with {mode:?}");
    }
    // A bad LBA gets an NVMe error, not a dead queue.
    let mut out = vec![0u8; bs];
    match ctrl.read(0, ns.nsid, ns.nsze + 10, &mut out, SglMode::Keyed) {
        Err(InitiatorError::Nvme { status, .. }) => assert_eq!(status.sc, 0x80, "LBA out of range"),
        other => panic!("expected an NVMe error, got {other:?}"),
    }
    ctrl.read(0, ns.nsid, 0, &mut out, SglMode::Keyed)
        .expect("queue still usable");
    ctrl.keep_alive().expect("keep alive");
    ctrl.shutdown().expect("shutdown");
    drop(srv);
}
softrdma_test!(
    connect_identify_read_write_all_sgl_modes,
    connect_identify_rw_body
);

fn perf_verify_body() {
    let srv = Server::start(addr(true), 32 << 20);
    for (qd, size, sgl, workload) in [
        (
            1u16,
            4096u32,
            SglMode::Keyed,
            Workload::RandRw { read_pct: 50 },
        ),
        (
            32,
            4096,
            SglMode::InCapsule,
            Workload::RandRw { read_pct: 50 },
        ),
        (
            8,
            65536,
            SglMode::MultiKeyed(8),
            Workload::RandRw { read_pct: 50 },
        ),
        (16, 512, SglMode::Keyed, Workload::SeqWrite),
    ] {
        let mut cfg = ControllerConfig::new(srv.addr, NQN);
        cfg.io_queues = 1;
        cfg.io_depth = qd.max(2);
        let mut p = PerfConfig::new(cfg);
        p.workload = workload;
        p.io_size = size;
        p.queue_depth = qd;
        p.sgl = sgl;
        p.verify = true;
        p.prefill = true;
        p.region_bytes = 4 << 20;
        p.duration = Duration::from_secs(30);
        p.io_limit = 400;
        let rep = run_perf(&p).expect("perf connect");
        println!("perf qd={qd} size={size} sgl={sgl:?} {workload:?}:\n{rep}");
        assert!(rep.errors.is_empty(), "errors: {:?}", rep.errors);
        assert!(rep.ios >= 400, "ios {}", rep.ios);
        if workload != Workload::SeqWrite {
            assert!(rep.verified > 0, "reads verified");
        }
        assert!(rep.latency.p50 <= rep.latency.p99 && rep.latency.p99 <= rep.latency.max);
    }
    drop(srv);
}
softrdma_test!(perf_verify_qd_sizes_and_sgl_modes, perf_verify_body);

fn target_drop_body() {
    let srv = Server::start(addr(false), 8 << 20);
    let mut cfg = ControllerConfig::new(srv.addr, NQN);
    cfg.io_queues = 1;
    cfg.io_depth = 8;
    cfg.command_timeout = Duration::from_secs(3);
    let mut ctrl = Controller::connect(cfg).expect("connect");
    let nsid = ctrl.namespaces()[0].nsid;
    let data = vec![7u8; 4096];
    ctrl.write(0, nsid, 0, &data, SglMode::Keyed).unwrap();
    // The responder disconnects every I/O queue from now on.
    srv.drop_io_after.store(1, Ordering::Relaxed);
    let t0 = Instant::now();
    let mut err = None;
    for _ in 0..20 {
        if let Err(e) = ctrl.write(0, nsid, 0, &data, SglMode::Keyed) {
            err = Some(e);
            break;
        }
    }
    let err = err.expect("dropped connection surfaces as an error");
    assert!(err.is_fatal(), "{err}");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "bounded by timeouts"
    );
    // Later calls fail fast with the same error.
    assert!(ctrl.io_queues()[0].error().is_some());
    assert!(ctrl.write(0, nsid, 0, &data, SglMode::Keyed).is_err());
    // Reconnect: a fresh association works and sees the data.
    srv.drop_io_after.store(0, Ordering::Relaxed);
    let mut ctrl = ctrl.reconnect().expect("reconnect");
    let mut back = vec![0u8; 4096];
    ctrl.read(0, nsid, 0, &mut back, SglMode::Keyed).unwrap();
    assert_eq!(back, data);
    drop(ctrl);
    drop(srv);
}
softrdma_test!(target_drops_connection_then_reconnect, target_drop_body);

fn reject_and_timeout_body() {
    // Nobody listens: connect fails with an error, within the timeout.
    let mut cfg = ControllerConfig::new("127.0.0.1:9".parse().unwrap(), NQN);
    cfg.connect_timeout = Duration::from_secs(2);
    let t0 = Instant::now();
    let e = Controller::connect(cfg).expect_err("no target");
    assert!(t0.elapsed() < Duration::from_secs(8), "bounded: {e}");
    // Wrong subsystem NQN: Fabrics Connect fails with an NVMe status.
    let srv = Server::start(addr(false), 1 << 20);
    let cfg = ControllerConfig::new(srv.addr, "nqn.2016-06.io.spdk:nope");
    match Controller::connect(cfg) {
        Err(InitiatorError::Nvme { opcode: 0x7f, .. }) => {}
        other => panic!("expected a Connect failure, got {other:?}"),
    }
    drop(srv);
}
softrdma_test!(unreachable_and_wrong_nqn, reject_and_timeout_body);

/// Opt-in measurement: `INITIATOR_PERF_SECS=5 cargo test --release --test
/// initiator_loopback perf_numbers -- --nocapture` runs 4 KiB randread and
/// randwrite at QD 1 and 32 against the in-test responder and prints the
/// reports. Without the variable it does nothing.
fn perf_numbers_body() {
    let Some(secs) = std::env::var("INITIATOR_PERF_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
    else {
        println!("perf: INITIATOR_PERF_SECS not set; skipping measurement");
        return;
    };
    let srv = Server::start(addr(false), 256 << 20);
    for workload in [Workload::RandRead, Workload::RandWrite] {
        for qd in [1u16, 32] {
            let mut cfg = ControllerConfig::new(srv.addr, NQN);
            cfg.io_depth = qd.max(2);
            let mut p = PerfConfig::new(cfg);
            p.workload = workload;
            p.queue_depth = qd;
            p.duration = Duration::from_secs_f64(secs);
            let rep = run_perf(&p).expect("perf");
            println!("perf 4KiB {workload:?} qd={qd}:\n{rep}");
            assert!(rep.errors.is_empty(), "{:?}", rep.errors);
        }
    }
    drop(srv);
}
softrdma_test!(perf_numbers, perf_numbers_body);

/// Malformed input through the raw APIs the e2e tests use: bad CM private
/// data is rejected with the NVMe-oF status, and raw capsules get the NVMe
/// status the codecs give them.
fn raw_inputs_body() {
    use nvmf_rdma_rs::engine::codec::{encode_keyed, encode_last_segment, RejectStatus, Status};
    let srv = Server::start(addr(false), 1 << 20);
    let mut o = QueueOptions::new(1, 4);
    let bad = CmRequest {
        recfmt: 1,
        qid: 1,
        hrqsize: 4,
        hsqsize: 3,
        cntlid: 1,
    }
    .to_bytes()
    .to_vec();
    o.raw_private_data = Some(bad);
    match Queue::connect(srv.addr, o) {
        Err(InitiatorError::Rejected { reason, .. }) => {
            assert_eq!(reason, Some(RejectStatus::InvalidRecfmt))
        }
        other => panic!("expected a reject, got {other:?}"),
    }
    // (A short private data length cannot be tested over IB-style CM: the
    // CM pads REQ private data to its fixed size, as the kernel does.)

    let mut ctrl = Controller::connect(ControllerConfig::new(srv.addr, NQN)).expect("connect");
    let nsid = ctrl.namespaces()[0].nsid;
    let q = &mut ctrl.io_queues()[0];
    let mut done = Vec::new();
    let mut run = |q: &mut Queue, capsule: &[u8]| -> Status {
        let cid = q.alloc().unwrap();
        q.submit_raw(cid, capsule).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            q.wait(&mut done, Duration::from_millis(100)).unwrap();
            if let Some(d) = done.pop() {
                q.release(d.cid);
                return d.completion.status;
            }
            assert!(Instant::now() < deadline, "no response");
        }
    };
    // Unknown I/O opcode.
    let mut cmd = Command::new(0xc5, 0);
    cmd.set_nsid(nsid);
    assert_eq!(run(q, cmd.as_bytes()), Status::INVALID_OPCODE.with_dnr());
    // Last Segment list of 17 descriptors (> MSDBD 16).
    let (a, k) = q.data_region(0);
    let mut cmd = nvmf_rdma_rs::initiator::wire::read_write(0, true, nsid, 0, 1);
    cmd.set_psdt(1);
    cmd.set_sgl1(encode_last_segment(0, 17 * 16));
    let mut capsule = cmd.as_bytes().to_vec();
    for _ in 0..17 {
        capsule.extend_from_slice(&encode_keyed(a, 32, k, false).raw);
    }
    let st = run(q, &capsule);
    assert!(!st.is_success(), "17 descriptors refused: {st:?}");
    // Keyed length above max_io_size.
    let mut cmd = nvmf_rdma_rs::initiator::wire::read_write(0, false, nsid, 0, 1);
    cmd.set_sgl1(encode_keyed(a, 1 << 20, k, false));
    assert_eq!(run(q, cmd.as_bytes()), Status::DATA_SGL_LENGTH_INVALID);
    // The queue is still usable.
    let mut out = vec![0u8; 512];
    ctrl.read(0, nsid, 0, &mut out, SglMode::Keyed)
        .expect("queue usable after bad commands");
    drop(ctrl);
    drop(srv);
}
softrdma_test!(raw_capsules_and_bad_private_data, raw_inputs_body);
