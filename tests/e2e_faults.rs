//! Faults over softrdma: every WR kind the target posts (RDMA READ, RDMA
//! WRITE, SEND) failing with each error status, QP errors, lost flush
//! completions, CM drops, the exact SPDK #3463 sequence, and a host killed
//! mid-I/O. After each: the target is alive, returns every resource, accepts
//! a new connection and serves verified I/O.

mod e2e_common;

use std::process::Command;
use std::time::{Duration, Instant};

use e2e_common::*;
use nvmf_rdma_rs::initiator::{run_perf, SglMode, Workload};

const STATUSES: &[&str] = &[
    "retry_exc_err",
    "rnr_retry_exc_err",
    "rem_access_err",
    "rem_op_err",
    "rem_inv_req_err",
    "loc_prot_err",
    "loc_len_err",
    "loc_qp_op_err",
    "fatal_err",
    "general_err",
];

fn faults_logged() -> usize {
    std::env::var_os("SOFTRDMA_FAULT_LOG")
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map_or(0, |s| s.lines().count())
}

/// Runs faulty I/O with `rule` armed, then checks recovery.
fn fault_round(t: &mut TargetProc, rule: &str, multi: u8, responder_resources: u8, qd: u16) {
    let before = t.wait_idle(Duration::from_secs(10));
    let logged = faults_logged();
    t.fault(rule);
    let mut cfg = perf_cfg(t.addr, qd, 16384, 300);
    cfg.verify = false;
    cfg.prefill = false;
    cfg.workload = Workload::RandRw { read_pct: 50 };
    cfg.sgl = SglMode::MultiKeyed(multi);
    cfg.controller.responder_resources = responder_resources;
    cfg.controller.command_timeout = Duration::from_secs(5);
    let start = Instant::now();
    let r = run_perf(&cfg);
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{rule}: perf took too long"
    );
    t.clear_faults();
    let injected = faults_logged() - logged;
    let after = t.wait_idle(Duration::from_secs(15));
    let (b, a) = (&before["counters"], &after["counters"]);
    println!(
        "{rule}: perf {}; injected {injected}; wc_errors {} -> {}; forced {}",
        match &r {
            Ok(r) => format!("{} I/Os, {} errors", r.ios, r.errors.len()),
            Err(e) => format!("failed: {e}"),
        },
        b["wc_errors"],
        a["wc_errors"],
        a["qpairs_forced"]
    );
    assert!(injected >= 1, "{rule}: no fault was injected");
    assert_eq!(
        a["qpairs_created"], a["qpairs_destroyed"],
        "{rule}: {after}"
    );
    // The target accepts a new connection and serves verified I/O.
    let mut ok = perf_cfg(t.addr, 8, 8192, 200);
    ok.region_bytes = 1 << 20;
    ok.sgl = SglMode::MultiKeyed(2);
    verified_io(&ok);
    assert!(t.alive(), "{rule}: the target died");
}

#[test]
fn e2e_wr_errors_every_kind_and_status() {
    if !under_softrdma(
        "e2e_wr_errors_every_kind_and_status",
        Duration::from_secs(600),
    ) {
        return;
    }
    let mut t = TargetProc::start(&[]);
    for op in ["read", "write", "send"] {
        for status in STATUSES {
            fault_round(
                &mut t,
                &format!("fail:op={op},nth=2,status={status}"),
                4,
                2,
                8,
            );
        }
    }
    let fin = t.stop();
    assert_eq!(fin["live_qpairs"], 0);
    assert_eq!(fin["buffers_held"], 0);
    assert_eq!(fin["commands_in_host"], 0);
}

#[test]
fn e2e_qp_error_lost_flushes_and_cm_drop() {
    if !under_softrdma(
        "e2e_qp_error_lost_flushes_and_cm_drop",
        Duration::from_secs(300),
    ) {
        return;
    }
    let mut t = TargetProc::start(&["--ram-ns", "64M", "--no-srq"]);
    // The QP goes to error before its 20th send-queue WR: every posted RECV
    // and WR completes flushed.
    fault_round(&mut t, "qperr:qp=*,after=20", 4, 2, 8);
    // A READ fails and every flush completion of the QP is lost: teardown
    // can only end by the drain deadline (forced destroy), bounded in time.
    let before = t.wait_idle(Duration::from_secs(10));
    fault_round(
        &mut t,
        "fail:op=read,nth=2,status=retry_exc_err;loseflush:qp=*",
        4,
        2,
        8,
    );
    let after = t.wait_idle(Duration::from_secs(10));
    let forced = |c: &serde_json::Value| c["counters"]["qpairs_forced"].as_u64().unwrap_or(0);
    println!("forced destroys: {} -> {}", forced(&before), forced(&after));
    assert!(
        forced(&after) > forced(&before),
        "lost flushes must end in a forced destroy at the drain deadline: {} -> {}",
        forced(&before),
        forced(&after)
    );
    // The connection manager drops a connection.
    fault_round(&mut t, "cmdrop:qp=*", 4, 2, 8);
    t.stop();
}

/// SPDK #3463: a write whose RDMA READs are split by the read depth (8
/// descriptors, host read depth 2), then IBV_WC_RETRY_EXC_ERR on one READ
/// while others are outstanding and more wait behind the read-depth limit.
#[test]
fn e2e_issue_3463_sequence() {
    if !under_softrdma("e2e_issue_3463_sequence", Duration::from_secs(120)) {
        return;
    }
    for srq in [true, false] {
        let mut t = TargetProc::start(if srq { &[] } else { &["--no-srq"] });
        for nth in [2, 3, 5, 8] {
            for qd in [1, 4] {
                let rule = format!("fail:op=read,nth={nth},status=retry_exc_err");
                fault_round(&mut t, &rule, 8, 2, qd);
            }
        }
        let fin = t.stop();
        assert_eq!(fin["live_qpairs"], 0);
        assert_eq!(fin["buffers_held"], 0);
    }
}

/// The host process is killed with SIGKILL in the middle of I/O.
#[test]
fn e2e_host_killed_mid_io() {
    if !under_softrdma("e2e_host_killed_mid_io", Duration::from_secs(120)) {
        return;
    }
    let mut t = TargetProc::start(&[]);
    for round in 0..3 {
        let mut host = Command::new(bin())
            .args(["perf", "--addr", &t.addr.to_string()])
            .args(["--workload", "randrw", "--time", "30", "-q", "32"])
            .args(["--io-size", "16K", "--sgl", "multi:4"])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(800));
        let busy = t.wait_busy(Duration::from_secs(10));
        assert!(busy, "round {round}: no I/O was running");
        host.kill().unwrap();
        host.wait().unwrap();
        let idle = t.wait_idle(Duration::from_secs(20));
        println!("round {round}: after kill {}", idle["counters"]);
        let mut ok = perf_cfg(t.addr, 8, 4096, 200);
        ok.region_bytes = 1 << 20;
        verified_io(&ok);
    }
    let fin = t.stop();
    assert_eq!(fin["live_qpairs"], 0);
}
