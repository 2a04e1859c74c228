//! The transport's cost per I/O: one poll group over softrdma with an ideal
//! host, and an in-process NVMe/RDMA initiator ([`Queue`]) on the same
//! thread, driven in lock step (submit, then target poll / initiator poll
//! until the command is answered). No SPDK.
//!
//! The ideal host grants each request slot its own registered buffer at
//! once and completes every command inside `execute` without touching the
//! data, so what the target side costs is the transport (completion
//! dispatch, engine, WR building, stats, batching) plus the verbs provider
//! (here softrdma, which also moves the data).
//!
//! Scenarios (one qpair, queue depth 128, 4 KiB, keyed SGL unless said):
//! - `read_4k`: READ → RECV, buffers, execute, RDMA WRITE + response SEND,
//!   SEND completion;
//! - `write_4k`: WRITE → RECV, buffers, RDMA READ and its completion,
//!   execute, response SEND, SEND completion;
//! - `write_4k_in_capsule`: WRITE with in-capsule data;
//! - `read_4k_qd32`: 32 READs submitted together, then answered (time per
//!   iteration / 32 = per I/O);
//! - `idle_poll`: one poll of the target with nothing to do (the cost of an
//!   empty CQ poll; its "I/Os" are polls).
//!
//! Run: `cargo bench --bench transport` (needs softrdma staged:
//! `bash scripts/build-softrdma.sh`). The binary re-executes itself with
//! `LD_LIBRARY_PATH` at softrdma and a private fabric directory. Criterion's
//! time covers the whole loop: initiator, target and softrdma on both sides.
//!
//! Instruction counts: with `TRANSPORT_BENCH_COUNT=<scenario>:<ios>` the
//! binary skips criterion and runs exactly that many I/Os after a warm-up;
//! `scripts/transport-icount.sh` runs it under callgrind and splits the
//! count per I/O into the target's poll group (transport + engine + host)
//! and the verbs provider (docs/benchmarks.md).

// `criterion_group!` generates an undocumented public function.
#![allow(missing_docs)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command as Process;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, Criterion, Throughput};
use nvmf_rdma_rs::engine::codec::nvme::{io_opcode, Command, Completion, Status};
use nvmf_rdma_rs::initiator::{Done, Payload, Queue, QueueOptions, SglMode};
use nvmf_rdma_rs::transport::{
    AcceptorEvent, BufferGrant, CommandData, Direction, GroupCalls, Host, HostError, HostGroup,
    PollGroup, QpairHandle, QpairInfo, RequestBuffers, RequestHandle, Transport, TransportOptions,
};
use nvmf_rdma_rs::verbs::{Access, DmaBuf, Pd};

/// Set in the re-executed child (the one running over softrdma).
const CHILD: &str = "TRANSPORT_BENCH_CHILD";
const IO: u32 = 4096;
const QD: u16 = 128;
/// I/Os per iteration of `read_4k_qd32`.
const BATCH: u16 = 32;
/// Polls of the target plus the initiator one command may take before the
/// bench declares it lost (an ideal fabric answers in a handful).
const MAX_ROUNDS: u32 = 100_000;

/// The ideal host: every request slot owns a registered buffer of
/// `max_io_size` bytes (granted at once, in `io_unit_size` pieces), and
/// every command completes successfully inside `execute`.
struct IdealHost {
    max_io_size: u32,
    io_unit_size: u32,
}

impl Host for IdealHost {
    type Group = IdealGroup;

    fn create_group(&self, _index: u16) -> IdealGroup {
        IdealGroup {
            max_io_size: self.max_io_size,
            io_unit_size: self.io_unit_size,
            pools: Vec::new(),
        }
    }
}

struct IdealGroup {
    max_io_size: u32,
    io_unit_size: u32,
    /// Per device: `QD` slots of `max_io_size` bytes.
    pools: Vec<DmaBuf>,
}

impl HostGroup for IdealGroup {
    fn attach_device(&mut self, device: usize, pd: &Pd) -> Result<(), HostError> {
        let len = self.max_io_size as usize * usize::from(QD);
        let buf =
            DmaBuf::new(pd, len, Access::LOCAL_WRITE).map_err(|e| HostError::Registration {
                device: format!("#{device}"),
                reason: e.to_string(),
            })?;
        assert_eq!(self.pools.len(), device, "devices attach in order");
        self.pools.push(buf);
        Ok(())
    }

    fn disconnect_requested(&mut self, qpair: QpairHandle, calls: &mut GroupCalls) {
        calls.fini(qpair, None).expect("room for the fini");
    }

    fn qpair_added(&mut self, info: &QpairInfo) -> bool {
        info.queue_depth <= QD
    }

    fn execute(
        &mut self,
        req: RequestHandle,
        cmd: &Command,
        _data: CommandData<'_>,
        _direction: Direction,
        calls: &mut GroupCalls,
    ) {
        calls
            .complete(req, Completion::new(cmd.cid(), Status::SUCCESS))
            .expect("room for the completion");
    }

    fn get_buffers(
        &mut self,
        req: RequestHandle,
        len: u32,
        device: usize,
        out: &mut RequestBuffers,
    ) -> BufferGrant {
        let pool = &self.pools[device];
        let base = usize::from(req.slot) * self.max_io_size as usize;
        let mut off = 0;
        while off < len {
            let n = (len - off).min(self.io_unit_size);
            let sge = pool.sge(base + off as usize, n).expect("slot buffer");
            out.push(sge).expect("at most 33 buffers");
            off += n;
        }
        BufferGrant::Granted
    }

    fn cancel_buffers(&mut self, _req: RequestHandle) {}

    fn release_buffers(
        &mut self,
        _req: RequestHandle,
        _buffers: &RequestBuffers,
        _calls: &mut GroupCalls,
    ) {
    }

    fn qpair_gone(&mut self, _qpair: QpairHandle) {}

    fn poll(&mut self, _now: u64, _calls: &mut GroupCalls) {}
}

/// The target (transport + poll group + ideal host) and the initiator's I/O
/// queue, both driven by this thread.
struct Bench {
    /// Keeps the listener and devices alive.
    _transport: Transport,
    pg: PollGroup<IdealHost>,
    queue: Queue,
    done: Vec<Done>,
    /// The target's clock: advanced by 1 µs per poll (deterministic).
    now: u64,
    /// Target polls, and those that found no work.
    polls: u64,
    idle_polls: u64,
    /// Commands answered successfully.
    answered: u64,
}

impl Bench {
    fn new() -> Bench {
        let opts = TransportOptions::default();
        let port = std::env::var("TRANSPORT_BENCH_PORT")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(4420);
        let transport = Transport::create(opts.clone(), 1).expect("transport over softrdma");
        let addr = transport
            .listen(SocketAddr::from(([127, 0, 0, 1], port)))
            .expect("listen");
        let host = Arc::new(IdealHost {
            max_io_size: opts.max_io_size,
            io_unit_size: opts.io_unit_size,
        });
        let pg = transport.create_poll_group(&*host).expect("poll group");
        let mut qo = QueueOptions::new(1, QD);
        qo.max_io_size = IO;
        qo.in_capsule_size = IO.min(opts.in_capsule_data_size);
        qo.busy_poll = true;
        // The initiator blocks in its CM handshake: connect on a helper
        // thread while this one runs the target.
        let connecting = std::thread::spawn(move || Queue::connect(addr, qo));
        let mut pg = pg;
        let mut now = 0;
        while !connecting.is_finished() {
            now += 1_000;
            accept(&transport, &mut pg, now);
            pg.poll(now);
            std::thread::sleep(Duration::from_micros(100));
        }
        let queue = connecting
            .join()
            .expect("connect thread")
            .expect("initiator connected");
        Bench {
            _transport: transport,
            pg,
            queue,
            done: Vec::with_capacity(usize::from(QD)),
            now,
            polls: 0,
            idle_polls: 0,
            answered: 0,
        }
    }

    /// Submits `cmds` (posted in one batch) and polls both sides until
    /// every one is answered.
    /// With no commands: one poll of the idle target (the cost of an
    /// empty CQ poll).
    fn run(&mut self, cmds: &[(Command, Payload, SglMode)]) {
        if cmds.is_empty() {
            self.now += 1_000;
            self.polls += 1;
            if self.pg.poll(self.now) == 0 {
                self.idle_polls += 1;
            }
            return;
        }
        for &(cmd, payload, mode) in cmds {
            let cid = self.queue.alloc().expect("a free command slot");
            self.queue
                .submit(cid, cmd, payload, mode)
                .expect("command queued");
        }
        let mut rounds = 0;
        while self.queue.outstanding() > 0 {
            self.now += 1_000;
            self.polls += 1;
            if self.pg.poll(self.now) == 0 {
                self.idle_polls += 1;
            }
            self.queue.poll(&mut self.done).expect("initiator poll");
            for d in self.done.drain(..) {
                assert_eq!(
                    d.completion.status,
                    Status::SUCCESS,
                    "command {} answered with an error",
                    d.cid
                );
                self.queue.release(d.cid);
                self.answered += 1;
            }
            rounds += 1;
            assert!(
                rounds < MAX_ROUNDS,
                "commands not answered in {rounds} polls"
            );
        }
    }
}

/// The acceptor: new qpairs join the group (setup only).
fn accept(transport: &Transport, pg: &mut PollGroup<IdealHost>, now: u64) {
    transport.accept_poll(&mut |ev| match ev {
        AcceptorEvent::NewQpair(q) => {
            if let Err(e) = pg.add_qpair(q, now) {
                e.qpair.reject();
            }
        }
        AcceptorEvent::Qpair(m) => pg.deliver(m, now),
        AcceptorEvent::Device(m) => pg.deliver_device(m, now),
        AcceptorEvent::Port(m) => pg.deliver_port(m, now),
    });
}

/// The bench scenarios.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Read4k,
    Write4k,
    Write4kInCapsule,
    Read4kQd32,
    IdlePoll,
}

impl Scenario {
    const ALL: [Scenario; 5] = [
        Scenario::Read4k,
        Scenario::Write4k,
        Scenario::Write4kInCapsule,
        Scenario::Read4kQd32,
        Scenario::IdlePoll,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::Read4k => "read_4k",
            Scenario::Write4k => "write_4k",
            Scenario::Write4kInCapsule => "write_4k_in_capsule",
            Scenario::Read4kQd32 => "read_4k_qd32",
            Scenario::IdlePoll => "idle_poll",
        }
    }

    /// The commands of one iteration.
    fn commands(self) -> Vec<(Command, Payload, SglMode)> {
        let io = |opcode: u8, payload: Payload, mode: SglMode| {
            let mut c = Command::new(opcode, 0);
            c.set_nsid(1);
            c.set_cdw12(IO / 512 - 1);
            (c, payload, mode)
        };
        let read = io(io_opcode::READ, Payload::Read(IO), SglMode::Keyed);
        match self {
            Scenario::Read4k => vec![read],
            Scenario::Write4k => vec![io(io_opcode::WRITE, Payload::Write(IO), SglMode::Keyed)],
            Scenario::Write4kInCapsule => {
                vec![io(io_opcode::WRITE, Payload::Write(IO), SglMode::InCapsule)]
            }
            Scenario::Read4kQd32 => vec![read; usize::from(BATCH)],
            Scenario::IdlePoll => Vec::new(),
        }
    }

    /// Units of one iteration: I/Os, or polls for `idle_poll`.
    fn units(self) -> u64 {
        match self {
            Scenario::Read4kQd32 => u64::from(BATCH),
            _ => 1,
        }
    }
}

fn bench(c: &mut Criterion) {
    let mut b = Bench::new();
    let mut g = c.benchmark_group("transport");
    for sc in Scenario::ALL {
        let cmds = sc.commands();
        b.run(&cmds);
        let (answered0, polls0, idle0) = (b.answered, b.polls, b.idle_polls);
        g.throughput(Throughput::Elements(sc.units()));
        g.bench_function(sc.name(), |it| it.iter(|| b.run(&cmds)));
        let units = (b.answered - answered0).max(1) as f64;
        if sc != Scenario::IdlePoll {
            println!(
                "{}: target polls per I/O {:.2} ({:.2} found nothing)",
                sc.name(),
                (b.polls - polls0) as f64 / units,
                (b.idle_polls - idle0) as f64 / units
            );
        }
    }
    g.finish();
}

/// `TRANSPORT_BENCH_COUNT=<scenario>:<ios>`: exactly `ios` I/Os after a
/// warm-up of one iteration, each checked to be answered successfully.
fn run_count(spec: &str) {
    let (sc, ios) = nvmf_rdma_engine_bench::parse_count(
        "TRANSPORT_BENCH_COUNT",
        spec,
        &Scenario::ALL,
        Scenario::name,
    );
    let name = sc.name();
    let cmds = sc.commands();
    let mut b = Bench::new();
    b.run(&cmds);
    let (answered0, polls0, idle0) = (b.answered, b.polls, b.idle_polls);
    let mut done = 0;
    while done < ios {
        b.run(&cmds);
        done += sc.units();
    }
    if sc == Scenario::IdlePoll {
        assert_eq!(b.idle_polls - idle0, done, "every idle poll found nothing");
    } else {
        assert_eq!(b.answered - answered0, done, "every I/O of {name} answered");
    }
    println!(
        "{name}: {done} I/Os, {} target polls ({} found nothing)",
        b.polls - polls0,
        b.idle_polls - idle0
    );
}

/// The staged softrdma libraries (`SOFTRDMA_LIB_DIR`, default
/// `target/softrdma`).
fn softrdma_dir() -> PathBuf {
    let d = std::env::var_os("SOFTRDMA_LIB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/softrdma"));
    assert!(
        d.join("libibverbs.so.1").is_file() && d.join("librdmacm.so.1").is_file(),
        "softrdma is not staged in {}: run `bash scripts/build-softrdma.sh` first \
         (or set SOFTRDMA_LIB_DIR)",
        d.display()
    );
    d
}

/// Runs this binary again with the same arguments over softrdma, in a
/// private fabric directory, and exits with its status.
fn reexec_over_softrdma() -> ! {
    let mut ld = softrdma_dir().into_os_string();
    if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
        ld.push(":");
        ld.push(old);
    }
    let shm = std::env::temp_dir().join(format!("transport-bench-{}", std::process::id()));
    std::fs::create_dir_all(&shm).expect("creating the private fabric directory");
    let status = Process::new(std::env::current_exe().expect("bench binary"))
        .args(std::env::args_os().skip(1))
        .env(CHILD, "1")
        .env("LD_LIBRARY_PATH", ld)
        .env("SOFTRDMA_SHM_DIR", &shm)
        .env("SOFTRDMA_QUIET", "1")
        .status()
        .expect("re-executing the bench over softrdma");
    let _ = std::fs::remove_dir_all(&shm);
    std::process::exit(status.code().unwrap_or(1));
}

fn main() {
    if std::env::var_os(CHILD).is_none() {
        reexec_over_softrdma();
    }
    if let Ok(spec) = std::env::var("TRANSPORT_BENCH_COUNT") {
        run_count(&spec);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

criterion_group!(benches, bench);
