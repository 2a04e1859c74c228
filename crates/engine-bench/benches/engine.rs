//! Engine cost per I/O: events in → actions out through the public
//! [`Qpair`] API, driven the way a transport drives it, with an ideal NIC
//! (every WR completes at once, successfully) and an ideal host (buffers
//! granted and commands executed at once). What is measured is the engine's
//! own work plus a minimal driver loop; no verbs, no copies of data.
//!
//! - `read_4k`: 4 KiB READ (keyed SGL) → RECV, buffer grant, execute,
//!   RDMA WRITE + response SEND, SEND completion, receive re-posted.
//! - `write_4k`: 4 KiB WRITE (keyed SGL) → RECV, buffer grant, RDMA READ and
//!   its completion, execute, response SEND, SEND completion.
//! - `write_4k_in_capsule`: 4 KiB WRITE with in-capsule data → RECV, execute,
//!   response SEND, SEND completion.
//! - `read_4k_qd32`: 32 READs in flight per iteration (per-I/O time is the
//!   iteration time / 32).
//! - `read_4k_traced`: `read_4k` with state tracing on (nine
//!   `Action::RequestState` reports per I/O, each read by the driver): the
//!   cost of tracing when a host wants it.
//!
//! - `codec/*`: the codecs alone (SGL classification of one keyed
//!   descriptor and of a 16-descriptor list, CM request parse + negotiate).
//!
//! Run: `cargo bench -p nvmf-rdma-engine-bench --bench engine` (criterion
//! prints time per iteration). The engine is built as the transport links
//! it, without its test-only `sim` feature (a warning says when it is not).
//!
//! Instruction counts (repeatable on a loaded machine): with
//! `ENGINE_BENCH_COUNT=<scenario>:<ios>` the binary skips criterion and runs
//! exactly `<ios>` I/Os of one scenario (`read_4k`, `write_4k`,
//! `write_4k_in_capsule`, `read_4k_qd32`, `read_4k_traced`) after a warm-up, e.g. under
//! `valgrind --tool=callgrind`. Two runs with different `<ios>` give the
//! instructions per I/O as (Ir₂ − Ir₁) / (ios₂ − ios₁); see
//! `docs/benchmarks.md`.

// `criterion_group!` generates an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, Criterion, Throughput};
use nvmf_rdma_engine::codec::nvme::{io_opcode, Command, Completion, Status};
use nvmf_rdma_engine::codec::private_data::{negotiate, CmRequest, ConnectLimits};
use nvmf_rdma_engine::codec::sgl::{
    encode_in_capsule, encode_keyed, encode_last_segment, parse_data_layout, SglLimits,
};
use nvmf_rdma_engine::{Action, LocalSge, Qpair, QpairConfig, RecvId, ReqId, WcStatus, WrId};

const IO: u32 = 4096;
const QD: u16 = 128;

/// What the ideal NIC / host will feed back next.
#[derive(Clone, Copy)]
enum Event {
    Grant(ReqId),
    Executed(ReqId, u16),
    Complete(u64),
}

/// A transport-like driver around one qpair: a free-receive list, an event
/// queue (both reused, no allocation in steady state) and a buffer to grant.
struct Driver {
    qp: Qpair,
    free_recvs: Vec<RecvId>,
    events: Vec<Event>,
    buffer: [LocalSge; 1],
    capsule: Vec<u8>,
    /// Buffer releases seen.
    completed: u64,
    /// Response SENDs posted.
    responses: u64,
    /// State reports seen (state tracing on).
    reports: u64,
}

impl Driver {
    fn new() -> Driver {
        let mut cfg = QpairConfig::new(1, QD, 16);
        cfg.sq_size = QD;
        let qp = Qpair::new(cfg).expect("valid config");
        let mut d = Driver {
            qp,
            free_recvs: Vec::with_capacity(usize::from(QD)),
            events: Vec::with_capacity(4 * usize::from(QD)),
            buffer: [LocalSge {
                addr: 0x7f00_0000_0000,
                len: IO,
                lkey: 0x55,
            }],
            capsule: vec![0u8; 64 + IO as usize],
            completed: 0,
            responses: 0,
            reports: 0,
        };
        d.handle_actions();
        assert_eq!(d.free_recvs.len(), usize::from(QD), "receives posted");
        d
    }

    /// Handles every pending action, queuing the ideal NIC's / host's answers.
    fn handle_actions(&mut self) {
        while let Some(a) = self.qp.poll_action() {
            match a {
                Action::PostRecv { recv } => self.free_recvs.push(recv),
                Action::RequestBuffers { req, len } => {
                    assert!(len <= IO);
                    self.events.push(Event::Grant(req));
                }
                Action::PostReads { req, first, count } => {
                    for i in first..first + count {
                        let wr = self.qp.data_wr(req, i).expect("posted READ");
                        black_box(wr.sges);
                        self.events.push(Event::Complete(wr.wr_id.to_raw()));
                    }
                }
                Action::Execute { req } => {
                    let cmd = self.qp.command(req).expect("command");
                    black_box(self.qp.data(req));
                    self.events.push(Event::Executed(req, cmd.cid()));
                }
                Action::PostResponse { req, writes, recv } => {
                    self.free_recvs.extend(recv);
                    for i in 0..writes {
                        black_box(self.qp.data_wr(req, i).expect("posted WRITE").sges);
                    }
                    let send = self.qp.send_wr(req).expect("response");
                    black_box(send.response);
                    self.responses += 1;
                    self.events.push(Event::Complete(send.wr_id.to_raw()));
                }
                Action::ReleaseBuffers { .. } => self.completed += 1,
                Action::RequestState { .. } => {
                    black_box(a);
                    self.reports += 1;
                }
                Action::Notice(n) => panic!("unexpected notice {n:?}"),
                other => panic!("unexpected action {other:?}"),
            }
        }
    }

    /// Feeds queued events (FIFO) until none is left.
    fn run_events(&mut self) {
        let mut next = 0;
        while next < self.events.len() {
            let e = self.events[next];
            next += 1;
            let r = match e {
                Event::Grant(req) => self.qp.handle_buffers_granted(req, &self.buffer),
                Event::Executed(req, cid) => self
                    .qp
                    .handle_command_executed(req, Completion::new(cid, Status::SUCCESS)),
                Event::Complete(wr_id) => self.qp.handle_completion(wr_id, WcStatus::Success, &[]),
            };
            r.expect("engine accepts the event");
            self.handle_actions();
        }
        self.events.clear();
    }

    /// Delivers one command capsule (`len` bytes of `self.capsule`) on a
    /// free receive.
    fn receive(&mut self, len: usize) {
        let recv = self.free_recvs.pop().expect("a posted receive");
        self.qp
            .handle_completion(
                WrId::recv(recv).to_raw(),
                WcStatus::Success,
                &self.capsule[..len],
            )
            .expect("engine accepts the capsule");
        self.handle_actions();
    }

    fn set_command(&mut self, cmd: &Command) {
        self.capsule[..64].copy_from_slice(cmd.as_bytes());
    }
}

fn keyed_cmd(opcode: u8, cid: u16) -> Command {
    let mut c = Command::new(opcode, cid);
    c.set_nsid(1);
    c.set_psdt(1);
    c.set_cdw12(7); // 8 x 512-byte blocks
    c.set_sgl1(encode_keyed(
        0x1_0000_0000 + u64::from(cid) * 4096,
        IO,
        0x1234,
        false,
    ));
    c
}

fn one_io(d: &mut Driver, cmd: &Command, len: usize) {
    d.set_command(cmd);
    d.receive(len);
    d.run_events();
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine");
    let s = Scenarios::new();
    for sc in Scenario::ALL {
        // One iteration before measuring proves the path completes.
        let mut d = Driver::new();
        s.run(sc, &mut d);
        assert_eq!(d.responses, sc.ios(), "{} answered", sc.name());
        g.throughput(Throughput::Elements(sc.ios()));
        g.bench_function(sc.name(), |b| b.iter(|| s.run(sc, &mut d)));
    }
    g.finish();
}

/// The codecs alone: SGL classification and CM negotiation.
fn bench_codecs(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    let limits = SglLimits::default();
    let read = keyed_cmd(io_opcode::READ, 1);
    g.bench_function("parse_keyed", |b| {
        b.iter(|| parse_data_layout(black_box(&read), &[], &limits))
    });
    let list: Vec<u8> = (0..16u32)
        .flat_map(|i| encode_keyed(u64::from(i) << 20, IO, i, false).raw)
        .collect();
    let mut list_cmd = Command::new(io_opcode::WRITE, 2);
    list_cmd.set_sgl1(encode_last_segment(0, 16 * 16));
    g.bench_function("parse_list_16", |b| {
        b.iter(|| parse_data_layout(black_box(&list_cmd), black_box(&list), &limits))
    });
    let req = CmRequest {
        recfmt: 0,
        qid: 1,
        hrqsize: 128,
        hsqsize: 127,
        cntlid: 0xffff,
    }
    .to_bytes();
    let cl = ConnectLimits {
        max_queue_depth: 128,
        max_admin_queue_depth: 128,
        device_max_qp_wr: 16384,
        device_max_qp_rd_atom: 16,
        initiator_depth: 16,
        responder_resources: 0,
        srq: false,
    };
    g.bench_function("cm_request_negotiate", |b| {
        b.iter(|| CmRequest::parse(black_box(&req)).and_then(|r| negotiate(&r, &cl)))
    });
    g.finish();
}

/// The engine scenarios (bench names under `engine/`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Read4k,
    Write4k,
    Write4kInCapsule,
    Read4kQd32,
    Read4kTraced,
}

impl Scenario {
    const ALL: [Scenario; 5] = [
        Scenario::Read4k,
        Scenario::Write4k,
        Scenario::Write4kInCapsule,
        Scenario::Read4kQd32,
        Scenario::Read4kTraced,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::Read4k => "read_4k",
            Scenario::Write4k => "write_4k",
            Scenario::Write4kInCapsule => "write_4k_in_capsule",
            Scenario::Read4kQd32 => "read_4k_qd32",
            Scenario::Read4kTraced => "read_4k_traced",
        }
    }

    /// I/Os per iteration.
    fn ios(self) -> u64 {
        match self {
            Scenario::Read4kQd32 => u64::from(BATCH),
            _ => 1,
        }
    }
}

/// The commands of the scenarios: one definition for criterion and the
/// fixed-count mode.
struct Scenarios {
    read: Command,
    write: Command,
    icd_write: Command,
    reads: Vec<Command>,
}

/// I/Os per iteration of `read_4k_qd32`.
const BATCH: u16 = 32;

impl Scenarios {
    fn new() -> Scenarios {
        let mut icd_write = Command::new(io_opcode::WRITE, 3);
        icd_write.set_nsid(1);
        icd_write.set_cdw12(7);
        icd_write.set_sgl1(encode_in_capsule(0, IO));
        Scenarios {
            read: keyed_cmd(io_opcode::READ, 1),
            write: keyed_cmd(io_opcode::WRITE, 2),
            icd_write,
            reads: (0..BATCH).map(|i| keyed_cmd(io_opcode::READ, i)).collect(),
        }
    }

    /// One iteration of `sc` ([`Scenario::ios`] I/Os).
    fn run(&self, sc: Scenario, d: &mut Driver) {
        match sc {
            Scenario::Read4k => one_io(d, &self.read, 64),
            Scenario::Read4kTraced => {
                d.qp.set_state_tracing(true);
                one_io(d, &self.read, 64)
            }
            Scenario::Write4k => one_io(d, &self.write, 64),
            Scenario::Write4kInCapsule => one_io(d, &self.icd_write, 64 + IO as usize),
            Scenario::Read4kQd32 => {
                for cmd in &self.reads {
                    d.set_command(cmd);
                    d.receive(64);
                }
                d.run_events();
            }
        }
    }
}

/// `ENGINE_BENCH_COUNT=<scenario>:<ios>`: run exactly `ios` I/Os (after a
/// warm-up of one iteration) and check that each was answered.
fn run_count(spec: &str) {
    let (sc, ios) = nvmf_rdma_engine_bench::parse_count(
        "ENGINE_BENCH_COUNT",
        spec,
        &Scenario::ALL,
        Scenario::name,
    );
    let name = sc.name();
    let s = Scenarios::new();
    let mut d = Driver::new();
    s.run(sc, &mut d);
    let (released0, answered0, reports0) = (d.completed, d.responses, d.reports);
    let mut done = 0;
    while done < ios {
        s.run(sc, &mut d);
        done += sc.ios();
    }
    // In-capsule writes hold no buffers; every other I/O releases one grant.
    let expect = if sc == Scenario::Write4kInCapsule {
        0
    } else {
        done
    };
    assert_eq!(
        d.completed - released0,
        expect,
        "every I/O of {name} released its buffers"
    );
    assert_eq!(
        d.responses - answered0,
        done,
        "every I/O of {name} answered"
    );
    // NEW … COMPLETED: nine states per traced read, none untraced.
    let reports = if sc == Scenario::Read4kTraced { 9 } else { 0 };
    assert_eq!(
        d.reports - reports0,
        reports * done,
        "state reports of {name}"
    );
    let sim = if nvmf_rdma_engine::SIM_BUILD {
        "yes"
    } else {
        "no"
    };
    println!("{name}: {done} I/Os (sim build: {sim})");
}

fn main() {
    if nvmf_rdma_engine::SIM_BUILD {
        // Cargo unifies features: building this together with the engine's
        // own tests (`--workspace --all-targets`) turns `sim` on here too.
        eprintln!(
            "warning: measuring the engine's simulation build; run \
             `cargo bench -p nvmf-rdma-engine-bench` on its own"
        );
    }
    if let Ok(spec) = std::env::var("ENGINE_BENCH_COUNT") {
        run_count(&spec);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

criterion_group!(benches, bench, bench_codecs);
