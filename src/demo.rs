//! `nvmf-rdma-rs demo`: the standalone target and the project's initiator in
//! one process over softrdma, with the SPDK #3463 fault sequence injected.
//!
//! 1. Verified multi-descriptor writes/reads (each 32 KiB write is 8 keyed
//!    descriptors; the host grants a read depth of 2, so the target splits
//!    every write's RDMA READs into 4 batches).
//! 2. softrdma is told to fail the 3rd RDMA READ of the next QP with
//!    `IBV_WC_RETRY_EXC_ERR`: a READ of a write whose READ chain is split
//!    (READs still in flight and more waiting behind the read-depth limit),
//!    the situation that corrupted `pending_rdma_read_queue` in SPDK (#3463).
//! 3. The target tears the qpair down; the demo checks that every resource
//!    came back, reconnects and runs verified I/O again.

use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nvmf_rdma_rs::initiator::{
    run_perf, ControllerConfig, PerfConfig, PerfReport, SglMode, Workload,
};
use nvmf_rdma_rs::standalone::MiniHost;
use nvmf_rdma_rs::standalone::{Driver, RunConfig};
use nvmf_rdma_rs::transport::{ResourceCounters, TransportOptions};

const CHILD_ENV: &str = "NVMF_RDMA_RS_DEMO_CHILD";
const FAULT_RULE: &str = "fail:op=read,nth=3,status=retry_exc_err";

/// Flags of `demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Directory holding softrdma's libibverbs.so.1 / librdmacm.so.1 /
    /// softrdma-ctl (default: `target/softrdma` of the repository).
    #[arg(long, value_name = "DIR")]
    softrdma: Option<PathBuf>,
    /// Port on 127.0.0.1 to listen on.
    #[arg(long, default_value_t = 4430)]
    port: u16,
    /// Seconds of verified I/O before and after the fault.
    #[arg(long, default_value_t = 2)]
    seconds: u64,
}

fn find_softrdma(arg: &Option<PathBuf>) -> Option<PathBuf> {
    let ok = |d: &Path| d.join("libibverbs.so.1").is_file() && d.join("softrdma-ctl").is_file();
    if let Some(d) = arg {
        return ok(d).then(|| d.clone());
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // <repo>/target/<profile>/nvmf-rdma-rs or <CARGO_TARGET_DIR>/<profile>/...
        for a in exe.ancestors().skip(1).take(4) {
            candidates.push(a.join("softrdma"));
            candidates.push(a.join("target/softrdma"));
        }
    }
    if let Ok(cwd) = std::env::current_dir() {
        candidates.push(cwd.join("target/softrdma"));
    }
    candidates.into_iter().find(|d| ok(d))
}

/// Entry point: re-executes itself over softrdma if needed, then runs.
pub fn run(args: &DemoArgs) -> Result<(), String> {
    let dir = find_softrdma(&args.softrdma).ok_or_else(|| {
        "softrdma not found: run `bash scripts/build-softrdma.sh` (or pass --softrdma DIR)"
            .to_string()
    })?;
    if std::env::var_os(CHILD_ENV).is_none() {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let shm = std::env::temp_dir().join(format!("nvmf-rdma-rs-demo-{}", std::process::id()));
        std::fs::create_dir_all(&shm).map_err(|e| format!("creating {}: {e}", shm.display()))?;
        let log = shm.join("faults.log");
        let lib_path = match std::env::var("LD_LIBRARY_PATH") {
            Ok(p) if !p.is_empty() => format!("{}:{p}", dir.display()),
            _ => dir.display().to_string(),
        };
        let status = Process::new(exe)
            .args(std::env::args_os().skip(1))
            .env(CHILD_ENV, "1")
            .env("LD_LIBRARY_PATH", lib_path)
            .env("SOFTRDMA_SHM_DIR", &shm)
            .env("SOFTRDMA_FAULT_LOG", &log)
            .env("SOFTRDMA_QUIET", "1")
            .status()
            .map_err(|e| format!("re-executing over softrdma: {e}"))?;
        let _ = std::fs::remove_dir_all(&shm);
        return if status.success() {
            Ok(())
        } else {
            Err(format!("demo failed ({status})"))
        };
    }
    demo(args, &dir)
}

fn perf_config(addr: std::net::SocketAddr, nqn: &str, seconds: u64, verify: bool) -> PerfConfig {
    let mut ctrl = ControllerConfig::new(addr, nqn);
    ctrl.io_queues = 1;
    ctrl.io_depth = 4;
    ctrl.responder_resources = 2;
    ctrl.command_timeout = Duration::from_secs(5);
    let mut cfg = PerfConfig::new(ctrl);
    cfg.workload = if verify {
        Workload::RandRw { read_pct: 50 }
    } else {
        Workload::RandWrite
    };
    cfg.verify = verify;
    cfg.prefill = verify;
    cfg.io_size = 32 * 1024;
    cfg.queue_depth = 4;
    cfg.sgl = SglMode::MultiKeyed(8);
    cfg.region_bytes = 4 << 20;
    cfg.duration = Duration::from_secs(seconds);
    cfg
}

fn wait_idle(t: &Driver, stop: &AtomicBool) -> ResourceCounters {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = t.counters();
        let idle = c.live_qpairs == 0 && c.buffers_held == 0 && c.commands_in_host == 0;
        if idle || Instant::now() > deadline || stop.load(Ordering::SeqCst) {
            return c;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn faults_logged() -> usize {
    std::env::var_os("SOFTRDMA_FAULT_LOG")
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map_or(0, |s| s.lines().filter(|l| l.contains("kind=fail")).count())
}

fn ctl(dir: &Path, command: &[&str]) -> Result<(), String> {
    let pid = std::process::id().to_string();
    let out = Process::new(dir.join("softrdma-ctl"))
        .arg("send")
        .arg(&pid)
        .args(command)
        .output()
        .map_err(|e| format!("softrdma-ctl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "softrdma-ctl send {pid} {}: {}",
            command.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn phase(name: &str, r: &Result<PerfReport, String>) {
    match r {
        Ok(rep) => println!(
            "  {name}: {} I/Os ({} reads verified), {:.0} IOPS, errors {}",
            rep.ios,
            rep.verified,
            rep.iops,
            rep.errors.len()
        ),
        Err(e) => println!("  {name}: initiator stopped: {e}"),
    }
}

fn demo(args: &DemoArgs, dir: &Path) -> Result<(), String> {
    let nqn = "nqn.2016-06.io.nvmf-rdma-rs:demo";
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], args.port).into();
    let opts = TransportOptions::default();
    let host =
        Arc::new(MiniHost::new(nqn, vec![64 << 20], &opts, &[addr], 1).map_err(|e| e.to_string())?);
    let transport = Driver::start(host.clone(), opts, &[addr], RunConfig::default())
        .map_err(|e| format!("starting the target: {e}"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    ctrlc::set_handler(move || s.store(true, Ordering::SeqCst))
        .map_err(|e| format!("Ctrl-C handler: {e}"))?;
    println!(
        "nvmf-rdma-rs demo: target {nqn} on {addr} over softrdma ({})",
        dir.display()
    );
    println!("  each I/O: 32 KiB in 8 keyed SGL descriptors; host read depth 2 -> READs split in 4 batches");

    let mut total_ios = 0u64;
    let mut verified = 0u64;
    let mut failures = Vec::new();

    println!("[1/3] verified I/O");
    let r1 = run_perf(&perf_config(addr, nqn, args.seconds, true)).map_err(|e| e.to_string());
    phase("before fault", &r1);
    if let Ok(r) = &r1 {
        total_ios += r.ios;
        verified += r.verified;
        if !r.errors.is_empty() || r.verified == 0 {
            failures.push("verified I/O before the fault failed".to_string());
        }
    } else {
        failures.push("verified I/O before the fault failed".to_string());
    }
    let before = wait_idle(&transport, &stop);

    println!("[2/3] inject #3463: {FAULT_RULE} on the next QP");
    let faults0 = faults_logged();
    ctl(dir, &["fault", FAULT_RULE])?;
    let mut cfg = perf_config(addr, nqn, args.seconds, false);
    cfg.io_limit = 64;
    let r2 = run_perf(&cfg).map_err(|e| e.to_string());
    ctl(dir, &["clear"])?;
    phase("during fault", &r2);
    if let Ok(r) = &r2 {
        total_ios += r.ios;
    }
    let after = wait_idle(&transport, &stop);
    let injected = faults_logged() - faults0;
    let torn_down = after.qpairs_destroyed - before.qpairs_destroyed;
    println!(
        "  faults injected: {injected}; qpairs torn down: {torn_down}; work completion errors: {} (+{} flushed)",
        after.wc_errors - before.wc_errors,
        after.wc_flushed - before.wc_flushed
    );
    println!(
        "  target after teardown: live qpairs {}, data buffers held {}, commands in host {}, forced destroys {}",
        after.live_qpairs, after.buffers_held, after.commands_in_host, after.qpairs_forced
    );
    if injected == 0 {
        failures.push("no fault was injected".into());
    }
    if after.live_qpairs != 0 || after.buffers_held != 0 || after.commands_in_host != 0 {
        failures.push("the target did not return every resource".into());
    }

    println!("[3/3] reconnect and verified I/O again");
    let r3 = run_perf(&perf_config(addr, nqn, args.seconds, true)).map_err(|e| e.to_string());
    phase("after fault", &r3);
    let end = wait_idle(&transport, &stop);
    match &r3 {
        Ok(r) if r.errors.is_empty() && r.verified > 0 => {
            total_ios += r.ios;
            verified += r.verified;
        }
        _ => failures.push("verified I/O after the fault failed".into()),
    }
    let re_established = end.qpairs_created - after.qpairs_created;
    println!("summary:");
    println!("  I/Os done:                 {total_ios}");
    println!("  reads verified:            {verified}");
    println!("  faults injected:           {injected} (RDMA READ -> IBV_WC_RETRY_EXC_ERR)");
    println!("  qpairs torn down:          {}", end.qpairs_destroyed);
    println!("  qpairs re-established:     {re_established}");
    println!(
        "  resources at end:          live qpairs {}, buffers {}, commands {}",
        end.live_qpairs, end.buffers_held, end.commands_in_host
    );
    let _ = transport.shutdown();
    if failures.is_empty() {
        println!(
            "demo OK: the target survived the #3463 fault sequence and served verified I/O again"
        );
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}
