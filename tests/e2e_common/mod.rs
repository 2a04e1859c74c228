//! Shared harness of the end-to-end tests over softrdma.
//!
//! Each test re-executes its own test binary with `LD_LIBRARY_PATH` pointing
//! at `target/softrdma` and a private `SOFTRDMA_SHM_DIR` ([`under_softrdma`]),
//! so the initiator library runs over softrdma in the child. The target is
//! the `nvmf-rdma-rs target` binary in a separate process ([`TargetProc`]),
//! printing its counters as JSON every 100 ms. Every wait is bounded.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nvmf_rdma_rs::initiator::{
    run_perf, ControllerConfig, PerfConfig, PerfReport, SglMode, Workload,
};
use nvmf_rdma_rs::transport::{AcceptorEvent, Host, PollGroup, Transport, TransportOptions};
use serde_json::Value;

#[path = "../support/reexec.rs"]
mod reexec;

const CHILD: &str = "NVMF_E2E_CHILD";

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `target/softrdma` (or `SOFTRDMA_LIB_DIR`), or a panic telling how to build it.
pub fn softrdma_dir() -> PathBuf {
    reexec::softrdma_dir()
}

/// The `nvmf-rdma-rs` binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_nvmf-rdma-rs"))
}

/// In the parent: re-runs test `name` under softrdma (see
/// `tests/support/reexec.rs`), waits at most `timeout`, asserts the child ran
/// and passed exactly that test, and returns `false`. In the child: `true`.
pub fn under_softrdma(name: &str, timeout: Duration) -> bool {
    reexec::under_softrdma(CHILD, name, timeout)
}

/// Extra `target` flags for every target of the suite, from
/// `NVMF_E2E_TARGET_ARGS` (whitespace-separated; e.g. `--reentrant-host` or
/// `--interrupt-mode`): how `scripts/test.d/50-e2e-driver-modes.sh` runs the
/// same suites under each way of driving the transport.
pub fn driver_args() -> Vec<String> {
    std::env::var("NVMF_E2E_TARGET_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect()
}

static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// A port unlikely to collide with other test processes.
pub fn port() -> u16 {
    let base = 20000 + (std::process::id() % 2000) as u16 * 10;
    base + NEXT_PORT.fetch_add(1, Ordering::Relaxed) % 10
}

/// A target process.
pub struct TargetProc {
    child: Child,
    /// Its listen address.
    pub addr: SocketAddr,
    latest: Arc<Mutex<(u64, Option<Value>)>>,
    lines: Arc<Mutex<Vec<String>>>,
}

impl TargetProc {
    /// Starts `nvmf-rdma-rs target` on 127.0.0.1 with `extra` flags.
    pub fn start(extra: &[&str]) -> TargetProc {
        let p = port();
        let addr: SocketAddr = format!("127.0.0.1:{p}").parse().unwrap();
        let ready = std::env::temp_dir().join(format!("nvmf-e2e-ready-{}-{p}", std::process::id()));
        let _ = std::fs::remove_file(&ready);
        let mut child = Command::new(bin())
            .arg("target")
            .args(["--listen", &addr.to_string()])
            .args(["--stats-interval-ms", "100"])
            .arg("--ready-file")
            .arg(&ready)
            .args(extra)
            .args(driver_args())
            .env(
                "NVMF_RDMA_RS_LOG",
                std::env::var("NVMF_RDMA_RS_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawning the target");
        let latest = Arc::new(Mutex::new((0u64, None)));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        {
            let latest = latest.clone();
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        let mut l = latest.lock().unwrap();
                        l.0 += 1;
                        l.1 = Some(v);
                    }
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let start = Instant::now();
        while !ready.exists() {
            if let Some(s) = child.try_wait().unwrap() {
                panic!("target exited at start: {s}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "target did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_file(&ready);
        TargetProc {
            child,
            addr,
            latest,
            lines,
        }
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn snapshot(&self) -> (u64, Option<Value>) {
        self.latest.lock().unwrap().clone()
    }

    /// Waits for a fresh stats line where nothing is live (no qpair, no
    /// buffer, no command), and returns it; panics after `timeout`.
    pub fn wait_idle(&mut self, timeout: Duration) -> Value {
        let start = Instant::now();
        let (seq0, _) = self.snapshot();
        loop {
            assert!(self.alive(), "the target died");
            let (seq, v) = self.snapshot();
            if seq > seq0 {
                if let Some(v) = v {
                    let c = &v["counters"];
                    assert_no_internal_errors(c);
                    if c["live_qpairs"] == 0 && c["buffers_held"] == 0 && c["commands_in_host"] == 0
                    {
                        return v;
                    }
                }
            }
            assert!(
                start.elapsed() < timeout,
                "target not idle after {timeout:?}: {:?}",
                self.snapshot().1
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (at most `timeout`) for a stats line showing an I/O qpair
    /// (two live qpairs) with commands in flight or completed.
    pub fn wait_busy(&mut self, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let (_, Some(v)) = self.snapshot() {
                if v["counters"]["live_qpairs"].as_u64().unwrap_or(0) >= 2 {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Adds softrdma fault rules (`;`-separated) in the target process;
    /// `softrdma-ctl send` returns once the process acknowledged each rule.
    pub fn fault(&self, rule: &str) {
        for r in rule.split(';') {
            ctl(self.pid(), &["fault", r]);
        }
    }

    /// Removes every softrdma fault rule of the target process (acknowledged).
    pub fn clear_faults(&self) {
        ctl(self.pid(), &["clear"]);
    }

    /// softrdma's counters line for the target process.
    pub fn softrdma_stats(&self) -> String {
        let out = Command::new(softrdma_dir().join("softrdma-ctl"))
            .args(["stats", &self.pid().to_string()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Ctrl-C (SIGINT), bounded wait, and the final counters line.
    pub fn stop(mut self) -> Value {
        let _ = Command::new("kill")
            .args(["-INT", &self.pid().to_string()])
            .status();
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = self.child.kill();
                panic!("target did not stop on SIGINT");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "target exit status {status}");
        std::thread::sleep(Duration::from_millis(100));
        let lines = self.lines.lock().unwrap().clone();
        let stopped = lines
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix("stopped: "))
            .expect("no final counters line");
        let fin: Value = serde_json::from_str(stopped).unwrap();
        assert_no_internal_errors(&fin);
        fin
    }

    /// Every value `key` took in the counters lines printed so far.
    pub fn counter_samples(&self, key: &str) -> Vec<u64> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v["counters"][key].as_u64())
            .collect()
    }

    /// The latest counters line's poll group statistics summed over `key`
    /// (e.g. `pending_data_buffer`).
    pub fn group_stat(&self, key: &str) -> u64 {
        self.snapshot().1.map_or(0, |v| {
            v["poll_groups"]
                .as_array()
                .map_or(0, |g| g.iter().filter_map(|g| g[key].as_u64()).sum())
        })
    }
}

/// Panics if a counters object reports a transport or host internal error
/// (a release of something not held: the counters would have wrapped).
pub fn assert_no_internal_errors(c: &Value) {
    assert_eq!(c["internal_errors"], 0, "transport internal errors: {c}");
    assert_eq!(c["host_internal_errors"], 0, "host internal errors: {c}");
}

impl Drop for TargetProc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A transport with default options for `groups` poll groups, listening on
/// 127.0.0.1 at a fresh port: (options, transport, listen address).
pub fn local_transport(groups: u32) -> (TransportOptions, Transport, SocketAddr) {
    let opts = TransportOptions::default();
    let transport = Transport::create(opts.clone(), groups).expect("transport");
    let addr = transport
        .listen(([127, 0, 0, 1], port()).into())
        .expect("listen on 127.0.0.1");
    (opts, transport, addr)
}

/// One acceptor pass of a transport driven by hand into its one poll group
/// `pg`: new qpairs join it (rejected when they cannot), qpair and device
/// events are delivered to it.
pub fn accept_into<H: Host>(transport: &Transport, pg: &mut PollGroup<H>, now: u64) {
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

/// `softrdma-ctl send <pid> <command...>`.
pub fn ctl(pid: u32, command: &[&str]) {
    let out = Command::new(softrdma_dir().join("softrdma-ctl"))
        .arg("send")
        .arg(pid.to_string())
        .args(command)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "softrdma-ctl send {pid} {command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of `key=N` in a softrdma stats line.
pub fn softrdma_counter(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
}

/// A perf configuration: `ios` I/Os of `size` bytes at depth `qd`.
pub fn perf_cfg(addr: SocketAddr, qd: u16, size: u32, ios: u64) -> PerfConfig {
    let mut ctrl = ControllerConfig::new(addr, "nqn.2016-06.io.spdk:cnode1");
    ctrl.io_depth = qd.max(2);
    ctrl.max_io_size = size.max(128 * 1024);
    ctrl.command_timeout = Duration::from_secs(10);
    let mut cfg = PerfConfig::new(ctrl);
    cfg.workload = Workload::RandRw { read_pct: 50 };
    cfg.io_size = size;
    cfg.queue_depth = qd;
    cfg.io_limit = ios;
    cfg.duration = Duration::from_secs(30);
    cfg.verify = true;
    cfg.prefill = true;
    cfg.region_bytes = 4 << 20;
    cfg.sgl = SglMode::Keyed;
    cfg
}

/// Runs perf and asserts verified data and no error.
pub fn verified_io(cfg: &PerfConfig) -> PerfReport {
    let r = run_perf(cfg).unwrap_or_else(|e| panic!("perf {cfg:?}: {e}"));
    assert!(r.errors.is_empty(), "perf errors: {:?}", r.errors);
    assert!(r.verified > 0, "no read was verified: {r}");
    r
}
