//! Runs one scenario of the campaign on one target and gathers the
//! evidence its outcome is classified from.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::campaign::{Act, HostLoad, Scenario, SLOW_NQN};
use crate::child::{tail, Ended, Proc};
use crate::env::{Env, TargetSpec};
use crate::fabric;
use crate::hosts::{probe, Probe};
use crate::outcome::{classify, Observed, Outcome};
use crate::rpc::poll_group_sum;
use crate::target::{StartError, Target, TargetConfig};

/// Seconds a target has to exit after SIGINT.
pub const SHUTDOWN_GRACE_S: u64 = 15;
/// How long hosts' qpairs may take to go away after they leave.
const SETTLE: Duration = Duration::from_secs(10);

/// The record of one scenario on one target.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    /// Target label.
    pub target: String,
    /// Index in the scenario list.
    pub index: usize,
    /// Outcome.
    pub outcome: Outcome,
    /// Why (one line).
    pub reason: String,
    /// Supporting lines: backtrace, log lines, host result, faults injected.
    pub evidence: Vec<String>,
    /// Seconds it took.
    pub secs: f64,
}

/// Runs `sc` on `spec`.
pub fn run(env: &Env, spec: &TargetSpec, sc: &Scenario, index: usize) -> ScenarioResult {
    let started = Instant::now();
    let (outcome, reason, evidence) = match run_inner(env, spec, sc) {
        Ok(r) => r,
        Err(Setup::Skip(why)) => (Outcome::Skipped, why, vec![]),
        Err(Setup::Failed(why, ev)) => (Outcome::SetupFailed, why, ev),
    };
    ScenarioResult {
        target: spec.label.clone(),
        index,
        outcome,
        reason,
        evidence,
        secs: started.elapsed().as_secs_f64(),
    }
}

enum Setup {
    Skip(String),
    Failed(String, Vec<String>),
}

type Found = (Outcome, String, Vec<String>);

fn run_inner(env: &Env, spec: &TargetSpec, sc: &Scenario) -> Result<Found, Setup> {
    let cfg = TargetConfig {
        mask: "0x1".into(),
        transport: sc.transport.clone(),
        faults: None,
        delay_us: sc.delay_us,
        ..TargetConfig::default()
    };
    let mut t = match Target::start(env, spec, &cfg) {
        Ok(t) => t,
        Err(StartError::ListenRefused(why)) => return Err(Setup::Skip(why)),
        Err(StartError::Exited { ended, tail }) if matches!(ended, Ended::Signal { .. }) => {
            return Ok((
                Outcome::Crashed,
                format!("nvmf_tgt died during set-up: {ended}"),
                vec![tail],
            ))
        }
        Err(e) => return Err(Setup::Failed(e.to_string(), vec![])),
    };
    let warm = probe(env, &t, 0, &t.dir.join("warmup.log"), 0.5);
    if warm != Probe::Ok {
        let ev = vec![t.proc.log_tail(15)];
        t.stop(Duration::from_secs(SHUTDOWN_GRACE_S));
        return Err(Setup::Failed(
            format!("warm-up probe before any fault: {warm:?}"),
            ev,
        ));
    }
    let _ = wait_idle(&mut t);
    let baseline = fabric::read_stats(&env.ctl(), &t.shm, t.proc.pid());
    for rule in &sc.rules {
        if let Err(e) = ctl(env, &t, &format!("fault {rule}")) {
            t.stop(Duration::from_secs(SHUTDOWN_GRACE_S));
            return Err(Setup::Failed(e, vec![]));
        }
    }

    let mut evidence = Vec::new();
    let exit_requested = drive_host(env, &mut t, sc, &mut evidence);
    if t.proc.poll().is_none() {
        let _ = ctl(env, &t, "clear");
        for cmd in &sc.after {
            if let Err(e) = ctl(env, &t, cmd) {
                evidence.push(e);
            }
        }
    }
    let mut ob = Observed {
        exit_requested,
        shutdown_grace_s: SHUTDOWN_GRACE_S,
        ..Observed::default()
    };
    if exit_requested {
        ob.died = t.proc.wait_for(Duration::from_secs(SHUTDOWN_GRACE_S));
        if ob.died.is_none() {
            let (e, killed) = t.stop(Duration::from_secs(1));
            ob.shutdown = Some((e, killed));
        }
    } else {
        ob.died = t.proc.poll();
    }
    if ob.died.is_none() && !exit_requested {
        let _ = wait_idle(&mut t);
        ob.probe = Some(probe(env, &t, 0, &t.dir.join("probe.log"), 1.0));
        let left_after = wait_idle(&mut t);
        ob.died = t.proc.poll();
        if ob.died.is_none() {
            ob.leaks.extend(left_after);
            if let Some(b) = baseline.as_ref() {
                ob.leaks.extend(wait_fabric_baseline(env, &t, b));
            }
            ob.shutdown = Some(t.stop(Duration::from_secs(SHUTDOWN_GRACE_S)));
        }
    }
    let (outcome, reason) = classify(&ob);
    if outcome == Outcome::Crashed {
        match t.backtrace() {
            Some(bt) => evidence.push(format!("backtrace:\n{bt}")),
            None => evidence.push("no core file (backtrace unavailable)".into()),
        }
        let log = t.proc.log_text();
        let errs: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
        if let Some(last) = errs.last() {
            evidence.push(format!("last target error: {}", last.trim()));
        }
        evidence.push(format!("target log tail:\n{}", tail(&log, 8)));
    } else if outcome.is_failure() {
        evidence.push(format!("target log tail:\n{}", t.proc.log_tail(8)));
    }
    let injected = std::fs::read_to_string(t.dir.join("faults.log"))
        .map(|s| s.lines().count())
        .unwrap_or(0);
    evidence.push(format!("softrdma faults injected on nvmf_tgt: {injected}"));
    t.cleanup_hugepages();
    Ok((outcome, reason, evidence))
}

/// `softrdma-ctl send <pid> <cmd>`: `Err` names the refusal.
fn ctl(env: &Env, t: &Target, cmd: &str) -> Result<(), String> {
    let out = Command::new(env.ctl())
        .args(["send", &t.proc.pid().to_string()])
        .args(cmd.split_whitespace())
        .env("SOFTRDMA_SHM_DIR", &t.shm)
        .output()
        .map_err(|e| format!("softrdma-ctl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "softrdma-ctl send {cmd:?} refused: {}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Waits until the target reports no qpairs and no pending bdev I/O;
/// returns what is left (empty when idle) after [`SETTLE`].
fn wait_idle(t: &mut Target) -> Vec<String> {
    let start = Instant::now();
    loop {
        let left = match t.rpc.call("nvmf_get_stats", Value::Null) {
            Ok(s) => [
                "current_admin_qpairs",
                "current_io_qpairs",
                "pending_bdev_io",
            ]
            .iter()
            .filter_map(|k| {
                let n = poll_group_sum(&s, k);
                (n > 0).then(|| format!("{k} {n}"))
            })
            .collect(),
            Err(e) => vec![format!("nvmf_get_stats: {e}")],
        };
        if left.is_empty() || start.elapsed() > SETTLE || t.proc.poll().is_some() {
            return left;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits (≤ [`SETTLE`]) until the target's live softrdma objects are back
/// at `baseline`: a transport may still be draining a qpair SPDK already
/// let go of (its QP, CM id and MR go once the NIC returned every WR).
/// Returns what is still above baseline then (nothing if the counters
/// cannot be read).
fn wait_fabric_baseline(env: &Env, t: &Target, baseline: &BTreeMap<String, u64>) -> Vec<String> {
    let start = Instant::now();
    loop {
        let grown = match fabric::read_stats(&env.ctl(), &t.shm, t.proc.pid()) {
            Some(now) => fabric::grown(baseline, &now),
            None => Vec::new(),
        };
        if grown.is_empty() || start.elapsed() > SETTLE {
            return grown;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs the host side with its timed actions; true when the scenario asked
/// the target to exit.
fn drive_host(env: &Env, t: &mut Target, sc: &Scenario, ev: &mut Vec<String>) -> bool {
    let mut exit_requested = false;
    match &sc.host {
        HostLoad::Perf { load, host_faults } => {
            let log = t.dir.join("load.log");
            let mut cmd = load.command(env, t);
            if let Some(f) = host_faults {
                cmd.env("SOFTRDMA_FAULTS", f);
            }
            let mut host = match Proc::spawn("spdk_nvme_perf", cmd, &log) {
                Ok(h) => h,
                Err(e) => {
                    ev.push(format!("load not started: {e}"));
                    return false;
                }
            };
            let start = Instant::now();
            for (at, act) in &sc.actions {
                let due = Duration::from_millis(*at);
                if let Some(left) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(left);
                }
                if t.proc.poll().is_some() {
                    break;
                }
                match act {
                    Act::Ctl(c) => {
                        if let Err(e) = ctl(env, t, c) {
                            ev.push(e);
                        }
                    }
                    Act::KillHost => host.signal(9),
                    Act::SigintTarget => {
                        t.proc.signal(2);
                        exit_requested = true;
                    }
                    Act::NewConnections(n) => {
                        let r = parallel_probes(env, t, *n, 0.5, "newconn");
                        ev.push(format!("{n} new connections during the load: {r}"));
                    }
                }
            }
            let ended = wait_host(&mut host, t, load.deadline());
            let ended = ended.unwrap_or_else(|| {
                ev.push(format!(
                    "load did not end within {:?}: killed",
                    load.deadline()
                ));
                host.stop(Duration::from_secs(2)).0
            });
            let out = host.log_text();
            let errors = crate::perfout::error_lines(&out).len();
            let iops = crate::perfout::parse(&out).map(|p| p.iops).unwrap_or(0.0);
            ev.push(format!(
                "load spdk_nvme_perf {}: {ended}, {iops:.0} IOPS, {errors} error lines",
                load.args("…").join(" ")
            ));
        }
        HostLoad::Storm { cycles, parallel } => {
            let mut fails = 0;
            for i in 0..*cycles {
                let r = parallel_probes(env, t, *parallel, 0.1, &format!("storm{i}"));
                if !r.starts_with("all") {
                    fails += 1;
                    ev.push(format!("storm round {i}: {r}"));
                }
                if t.proc.poll().is_some() {
                    break;
                }
            }
            ev.push(format!(
                "{cycles} storm rounds of {parallel} hosts, {fails} with failed hosts"
            ));
        }
        HostLoad::TimeoutHost { timeout_ms } => {
            let mut cmd = Command::new(&env.initiator);
            cmd.args(["perf", "--addr", &format!("127.0.0.1:{}", t.port)])
                .args([
                    "--nqn",
                    SLOW_NQN,
                    "--workload",
                    "randrw",
                    "-q",
                    "16",
                    "--time",
                    "2",
                ])
                .args(["--command-timeout-ms", &timeout_ms.to_string()])
                .env("LD_LIBRARY_PATH", &env.softrdma)
                .env("SOFTRDMA_SHM_DIR", &t.shm)
                .env("SOFTRDMA_QUIET", "1")
                .env("NVMF_RDMA_RS_LOG", "warn");
            match Proc::spawn("timeout host", cmd, &t.dir.join("slowhost.log")) {
                Ok(mut h) => {
                    let e = h.wait_for(Duration::from_secs(40));
                    ev.push(format!(
                        "timing-out host: {}; {}",
                        e.map(|e| e.to_string()).unwrap_or("did not end".into()),
                        h.log_tail(1)
                    ));
                }
                Err(e) => ev.push(format!("timing-out host not started: {e}")),
            }
        }
        HostLoad::Malformed { seed } => {
            let mut cmd = Command::new(&env.self_exe);
            cmd.args(["malformed-host", "--addr", &format!("127.0.0.1:{}", t.port)])
                .args([
                    "--nqn",
                    crate::target::NQN_MALLOC,
                    "--seed",
                    &seed.to_string(),
                ])
                .env("LD_LIBRARY_PATH", &env.softrdma)
                .env("SOFTRDMA_SHM_DIR", &t.shm)
                .env("SOFTRDMA_QUIET", "1");
            match Proc::spawn("malformed host", cmd, &t.dir.join("malformed.log")) {
                Ok(mut h) => {
                    let e = h.wait_for(Duration::from_secs(120));
                    if e.is_none() {
                        h.stop(Duration::from_secs(2));
                    }
                    ev.push(format!(
                        "malformed host: {}; {}",
                        e.map(|e| e.to_string())
                            .unwrap_or("did not end in 120 s".into()),
                        h.log_tail(3).replace('\n', " | ")
                    ));
                }
                Err(e) => ev.push(format!("malformed host not started: {e}")),
            }
        }
    }
    exit_requested
}

/// Waits for the load's host up to `deadline`, or up to 5 s once the
/// target is gone (a host of a dead target may wait for its timeouts).
fn wait_host(host: &mut Proc, t: &mut Target, deadline: Duration) -> Option<Ended> {
    let start = Instant::now();
    let mut target_gone: Option<Instant> = None;
    loop {
        if let Some(e) = host.wait_for(Duration::from_millis(100)) {
            return Some(e);
        }
        if target_gone.is_none() && t.proc.poll().is_some() {
            target_gone = Some(Instant::now());
        }
        let late = target_gone.is_some_and(|g| g.elapsed() > Duration::from_secs(5));
        if late || start.elapsed() > deadline {
            return None;
        }
    }
}

/// Starts `n` verified probes at once and waits for them: a summary.
fn parallel_probes(env: &Env, t: &Target, n: u32, secs: f32, tag: &str) -> String {
    let results: Vec<Probe> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|i| {
                let log = t.dir.join(format!("{tag}-{i}.log"));
                s.spawn(move || probe(env, t, 1 + i as usize, &log, secs))
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or(Probe::Failed("probe thread panicked".into()))
            })
            .collect()
    });
    let bad: Vec<String> = results
        .iter()
        .filter(|p| **p != Probe::Ok)
        .map(|p| format!("{p:?}"))
        .collect();
    if bad.is_empty() {
        format!("all {n} verified")
    } else {
        format!("{} of {n} failed: {}", bad.len(), bad.join("; "))
    }
}
