//! Resource accounting over softrdma (issue 7, defects 1 and 2): data
//! buffers granted after a wait are counted and returned exactly once, and
//! SIGINT with I/O in flight and AERs held by the controller finishes
//! promptly with every counter at 0. Every counters line the target printed
//! is checked, not only the last one.

mod e2e_common;

use std::time::{Duration, Instant};

use e2e_common::*;
use nvmf_rdma_rs::initiator::{run_perf, Controller, SglMode, Workload};

/// Data buffers in the target's pool (`--num-shared-buffers`, one poll
/// group); the pool holds at least 66 (two requests of 33 buffers).
const POOL_FLOOR: u64 = 66;

/// The target's shutdown timeout (`RunConfig::shutdown_timeout` default).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Checks every counters line printed so far: no held count above what can
/// exist (a wrapped u64 is far above), no internal error.
fn assert_samples_sane(t: &TargetProc, max_buffers: u64) {
    let held = t.counter_samples("buffers_held");
    assert!(!held.is_empty(), "no counters line was printed");
    let top = held.iter().copied().max().unwrap_or(0);
    assert!(
        top <= max_buffers,
        "buffers_held reached {top} (pool {max_buffers}): a release was counted without its grant"
    );
    for key in ["internal_errors", "host_internal_errors"] {
        let bad: Vec<u64> = t
            .counter_samples(key)
            .into_iter()
            .filter(|&n| n != 0)
            .collect();
        assert!(bad.is_empty(), "{key} during the run: {bad:?}");
    }
}

#[test]
fn e2e_buffer_wait_two_hosts_counts_to_zero() {
    if !under_softrdma(
        "e2e_buffer_wait_two_hosts_counts_to_zero",
        Duration::from_secs(180),
    ) {
        return;
    }
    // 256 KiB writes need 16 buffers of 16 KiB: with 66 buffers at most four
    // requests hold data at once and the rest wait for buffers.
    let mut t = TargetProc::start(&[
        "--num-shared-buffers",
        "64",
        "--io-unit-size",
        "16384",
        "--max-io-size",
        "262144",
        "--ram-ns",
        "8M",
        "--ram-ns",
        "8M",
    ]);
    let hosts: Vec<_> = [1u32, 2]
        .into_iter()
        .map(|nsid| {
            // One namespace per host so that each verifies its own data: a
            // buffer handed to two requests at once shows as a mismatch.
            let mut cfg = perf_cfg(t.addr, 16, 256 * 1024, 160);
            cfg.controller.max_io_size = 256 * 1024;
            cfg.nsid = nsid;
            cfg.seed = u64::from(nsid);
            cfg.sgl = SglMode::MultiKeyed(16);
            cfg.workload = Workload::RandRw { read_pct: 30 };
            std::thread::spawn(move || verified_io(&cfg))
        })
        .collect();
    for h in hosts {
        let r = h.join().expect("a perf host panicked");
        println!("host: {r}");
    }
    let idle = t.wait_idle(Duration::from_secs(20));
    let waits = t.group_stat("pending_data_buffer");
    println!("after both hosts left: {}", idle["counters"]);
    assert!(
        waits > 0,
        "no request waited for buffers: the scenario did not happen"
    );
    assert_samples_sane(&t, POOL_FLOOR);
    let fin = t.stop();
    for key in ["live_qpairs", "buffers_held", "commands_in_host"] {
        assert_eq!(fin[key], 0, "{key} after shutdown: {fin}");
    }
    println!("pending_data_buffer {waits}; stopped: {fin}");
}

#[test]
fn e2e_sigint_with_io_and_aers_is_prompt_and_complete() {
    if !under_softrdma(
        "e2e_sigint_with_io_and_aers_is_prompt_and_complete",
        Duration::from_secs(120),
    ) {
        return;
    }
    let mut t = TargetProc::start(&["--threads", "2", "--num-shared-buffers", "128"]);
    // A controller that keeps 4 AERs posted, as SPDK's initiator does.
    let mut ctrl_cfg = perf_cfg(t.addr, 8, 4096, 0).controller;
    ctrl_cfg.command_timeout = Duration::from_secs(60);
    let mut aer_host = Controller::connect(ctrl_cfg).expect("connecting the AER host");
    let aers = aer_host.post_async_event_requests(4).expect("posting AERs");
    assert_eq!(aers.len(), 4);
    // Load that keeps requests executing and waiting for buffers.
    let mut cfg = perf_cfg(t.addr, 64, 64 * 1024, 0);
    cfg.verify = false;
    cfg.prefill = false;
    cfg.workload = Workload::RandWrite;
    cfg.sgl = SglMode::MultiKeyed(4);
    cfg.controller.io_queues = 2;
    cfg.controller.command_timeout = Duration::from_secs(5);
    cfg.duration = Duration::from_secs(60);
    cfg.region_bytes = 32 << 20;
    let load = std::thread::spawn(move || run_perf(&cfg).map(|r| r.ios));
    // Wait until the 4 AERs are held and the load's queues are connected
    // (AER host: admin + 1 I/O queue; load: admin + 2), then let I/O run.
    let start = Instant::now();
    loop {
        let in_host = t.counter_samples("commands_in_host");
        let live = t.counter_samples("live_qpairs");
        if in_host.last().copied().unwrap_or(0) >= 4 && live.last().copied().unwrap_or(0) >= 5 {
            break;
        }
        assert!(
            !load.is_finished(),
            "the load ended early: {:?}",
            load.join()
        );
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never saw the AERs held with I/O running: commands_in_host {in_host:?} live_qpairs {live:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !load.is_finished(),
        "the load ended before SIGINT: {:?}",
        load.join()
    );
    assert!(t.alive());
    assert_samples_sane(&t, 2 * 128);
    let sigint = Instant::now();
    let fin = t.stop();
    let took = sigint.elapsed();
    println!("SIGINT to exit: {took:?}; stopped: {fin}");
    for key in ["live_qpairs", "buffers_held", "commands_in_host"] {
        assert_eq!(fin[key], 0, "{key} after shutdown: {fin}");
    }
    assert_eq!(fin["qpairs_created"], fin["qpairs_destroyed"], "{fin}");
    assert!(
        took < SHUTDOWN_TIMEOUT - Duration::from_secs(1),
        "shutdown took {took:?}: it ran into the {SHUTDOWN_TIMEOUT:?} timeout"
    );
    let _ = load.join().expect("the perf host panicked");
    drop(aer_host);
}
