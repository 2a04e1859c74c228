//! Heap allocations per I/O through a real poll group and the standalone
//! host in steady state: 0.
//!
//! This process is the target: the transport core, the standalone host
//! (`MiniHost`, RAM namespace) and one `PollGroup`, driven by hand on the
//! test thread over softrdma — acceptor, `add_qpair`, `poll`. The initiator
//! is `nvmf-rdma-rs perf` in another process, so only the target's
//! allocations are counted (softrdma's own libraries use their own
//! allocator). A counting global allocator (`stats_alloc`, as in
//! `tests/engine_alloc.rs`) wraps the system allocator; after a warm-up the
//! count over thousands of 4 KiB I/Os (keyed reads/writes, then in-capsule
//! writes) must not move. The I/O stays in the first 1 MiB of the namespace
//! so that the warm-up writes touch every 64 KiB chunk of the RAM
//! namespace, which allocates a chunk at its first write (a first-touch
//! allocation of the backing store, not a per-I/O one).

mod e2e_common;

use std::alloc::System;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e_common::{accept_into, bin, local_transport, under_softrdma};
use nvmf_rdma_rs::standalone::MiniHost;
use nvmf_rdma_rs::transport::{PollGroup, Transport};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const NQN: &str = "nqn.2016-06.io.nvmf-rdma-rs:alloc";
const WARMUP_IOS: u64 = 3_000;
const MEASURED_IOS: u64 = 20_000;
const PHASE_TIMEOUT: Duration = Duration::from_secs(120);

struct Target {
    transport: Transport,
    host: Arc<MiniHost>,
    pg: PollGroup<MiniHost>,
    start: Instant,
}

impl Target {
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// One driver iteration: acceptor, then the group.
    fn step(&mut self) {
        let now = self.now();
        accept_into(&self.transport, &mut self.pg, now);
        self.pg.poll(now);
    }

    fn ios(&self) -> u64 {
        let s = self.host.io_stats();
        s.read_commands + s.write_commands
    }

    /// Runs until `n` more I/Os completed (or the perf child exits).
    fn run_ios(&mut self, n: u64, perf: &mut Child) -> u64 {
        let start = self.ios();
        let deadline = Instant::now() + PHASE_TIMEOUT;
        while self.ios() - start < n {
            self.step();
            if let Some(status) = perf.try_wait().expect("perf status") {
                let out = std::fs::read_to_string(perf_log()).unwrap_or_default();
                panic!(
                    "perf exited early ({status}) after {} I/Os:\n{out}",
                    self.ios() - start
                );
            }
            assert!(
                Instant::now() < deadline,
                "{n} I/Os not done in {PHASE_TIMEOUT:?}"
            );
        }
        self.ios() - start
    }
}

/// Where the perf child's stderr goes (shown if it exits early).
fn perf_log() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("nvmf-alloc-perf-{}.log", std::process::id()))
}

fn perf(addr: std::net::SocketAddr, workload: &str, sgl: &str) -> Child {
    let stderr = std::fs::File::create(perf_log()).expect("perf log");
    Command::new(bin())
        .arg("perf")
        .args(["--addr", &addr.to_string(), "--nqn", NQN])
        .args(["--workload", workload, "--io-size", "4K", "-q", "32"])
        .args(["--sgl", sgl, "--time", "600", "--region", "1M"])
        .env("NVMF_RDMA_RS_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawning perf")
}

#[test]
fn zero_heap_allocations_per_io_through_the_poll_group() {
    if !under_softrdma(
        "zero_heap_allocations_per_io_through_the_poll_group",
        Duration::from_secs(600),
    ) {
        return;
    }
    let (opts, transport, addr) = local_transport(1);
    let host = Arc::new(MiniHost::new(NQN, vec![16 << 20], &opts, &[addr], 1).expect("host"));
    let pg = transport.create_poll_group(&*host).expect("poll group");
    let mut t = Target {
        transport,
        host,
        pg,
        start: Instant::now(),
    };
    let mut checked = 0;
    for (workload, sgl) in [("randrw", "keyed"), ("randwrite", "incapsule")] {
        let mut p = perf(addr, workload, sgl);
        t.run_ios(WARMUP_IOS, &mut p);
        let region = Region::new(GLOBAL);
        let ios = t.run_ios(MEASURED_IOS, &mut p);
        let change = region.change();
        let _ = p.kill();
        let _ = p.wait();
        let allocs = change.allocations + change.reallocations;
        println!(
            "{workload}/{sgl}: {ios} I/Os, {} allocations, {} reallocations, {} bytes",
            change.allocations, change.reallocations, change.bytes_allocated
        );
        assert_eq!(
            allocs, 0,
            "{workload}/{sgl}: {allocs} heap allocations over {ios} 4 KiB I/Os through the poll group"
        );
        checked += ios;
        // Let the killed initiator's qpairs go before the next phase.
        let deadline = Instant::now() + Duration::from_secs(30);
        while t.pg.live_qpairs() > 0 && Instant::now() < deadline {
            t.step();
        }
    }
    assert!(checked >= 2 * MEASURED_IOS);
}
