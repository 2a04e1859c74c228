//! Qpair and device lifecycle over softrdma (issue 7, defects 3 and 4):
//! hosts that die while connecting (so the target sees CONNECT_ERROR or a
//! failed `rdma_accept`) and target QPs moved to error right after
//! connecting must leave no qpair behind; `IBV_EVENT_DEVICE_FATAL` tears
//! down the device's qpairs, stops its listener, and the target takes the
//! device up again once it is listed. Counters (the target's and
//! softrdma's) are asserted at 0 after the hosts leave and after shutdown.

mod e2e_common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e_common::*;

/// softrdma's live QP count of the target process.
fn target_qps(t: &TargetProc) -> u64 {
    let line = t.softrdma_stats();
    softrdma_counter(&line, "qps").unwrap_or_else(|| panic!("no qps= in {line:?}"))
}

/// Waits (bounded) until softrdma counts no QP in the target.
fn wait_no_target_qps(t: &TargetProc, timeout: Duration) {
    let start = Instant::now();
    loop {
        let qps = target_qps(t);
        if qps == 0 {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "softrdma still counts {qps} target QPs after {timeout:?}: {}",
            t.softrdma_stats()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A host process running `perf` (2 I/O queues) for `secs` seconds.
fn spawn_host(t: &TargetProc, secs: &str, qd: &str, io_size: &str) -> Child {
    Command::new(bin())
        .args(["perf", "--addr", &t.addr.to_string()])
        .args(["--workload", "randrw", "--time", secs, "-q", qd])
        .args(["--io-size", io_size, "--io-queues", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning a host")
}

/// Asserts the final counters of a stopped target are all at 0.
fn assert_final_zero(fin: &serde_json::Value) {
    for k in ["live_qpairs", "buffers_held", "commands_in_host"] {
        assert_eq!(fin[k], 0, "{k} after shutdown: {fin}");
    }
    assert_eq!(fin["qpairs_created"], fin["qpairs_destroyed"], "{fin}");
}

/// 10 bursts of 8 hosts killed 10–150 ms into connecting, with the target's QPs
/// moved to error in the middle of each burst (SRQ on, the default).
#[test]
fn e2e_storm_of_hosts_dying_while_connecting() {
    if !under_softrdma(
        "e2e_storm_of_hosts_dying_while_connecting",
        Duration::from_secs(180),
    ) {
        return;
    }
    let mut t = TargetProc::start(&[]);
    // A fixed xorshift sequence: the kill delays are the same every run.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for burst in 0..10 {
        let mut hosts: Vec<(Child, Duration)> = (0..8)
            .map(|_| {
                (
                    spawn_host(&t, "5", "4", "4K"),
                    Duration::from_millis(10 + next() % 141),
                )
            })
            .collect();
        hosts.sort_by_key(|h| h.1);
        let start = Instant::now();
        let mut qp_error_sent = false;
        for (host, at) in &mut hosts {
            // The target's QPs go to error right after the first hosts connect.
            if !qp_error_sent && start.elapsed() >= Duration::from_millis(60) {
                ctl(t.pid(), &["qperr", "*"]);
                qp_error_sent = true;
            }
            if let Some(rest) = at.checked_sub(start.elapsed()) {
                std::thread::sleep(rest);
            }
            let _ = host.kill();
        }
        if !qp_error_sent {
            ctl(t.pid(), &["qperr", "*"]);
        }
        for (mut host, _) in hosts {
            let _ = host.wait();
        }
        println!("burst {burst} done");
    }
    let idle = t.wait_idle(Duration::from_secs(15));
    println!("after the storm: {}", idle["counters"]);
    wait_no_target_qps(&t, Duration::from_secs(5));
    // The target still serves a new host.
    let mut ok = perf_cfg(t.addr, 8, 4096, 200);
    ok.region_bytes = 1 << 20;
    verified_io(&ok);
    t.wait_idle(Duration::from_secs(15));
    wait_no_target_qps(&t, Duration::from_secs(5));
    let fin = t.stop();
    assert_final_zero(&fin);
}

/// `IBV_EVENT_DEVICE_FATAL` with a host doing I/O: the device's qpairs are
/// torn down (no qpair, buffer, command or softrdma QP left), the target
/// keeps running, and once the device is listed again (softrdma's device
/// never really disappears, so at once) a new host gets verified I/O.
#[test]
fn e2e_device_fatal_tears_down_and_comes_back() {
    if !under_softrdma(
        "e2e_device_fatal_tears_down_and_comes_back",
        Duration::from_secs(120),
    ) {
        return;
    }
    let mut t = TargetProc::start(&[]);
    let mut host = spawn_host(&t, "60", "16", "16K");
    assert!(t.wait_busy(Duration::from_secs(20)), "no I/O was running");
    ctl(t.pid(), &["async", "device_fatal"]);
    let idle = t.wait_idle(Duration::from_secs(15));
    println!("after DEVICE_FATAL: {}", idle["counters"]);
    wait_no_target_qps(&t, Duration::from_secs(5));
    assert!(t.alive(), "the target died");
    let _ = host.kill();
    let _ = host.wait();
    // The device is taken up again and its listener re-opened: a new host
    // connects (retried: the re-listen is asynchronous) and verifies data.
    let mut ok = perf_cfg(t.addr, 8, 4096, 200);
    ok.region_bytes = 1 << 20;
    let start = Instant::now();
    loop {
        match nvmf_rdma_rs::initiator::run_perf(&ok) {
            Ok(r) if r.errors.is_empty() && r.verified > 0 => break,
            other => {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "no verified I/O 10 s after the device came back: {other:?}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    t.wait_idle(Duration::from_secs(15));
    wait_no_target_qps(&t, Duration::from_secs(5));
    let fin = t.stop();
    assert_final_zero(&fin);
}

/// softrdma's live objects of the target that belong to its device (the
/// context, and everything made on it) and its CM ids.
const DEVICE_OBJECTS: [&str; 8] = [
    "contexts",
    "pds",
    "mrs",
    "cqs",
    "srqs",
    "comp_channels",
    "qps",
    "cm_ids",
];

fn device_objects(t: &TargetProc) -> Vec<(&'static str, u64)> {
    let line = t.softrdma_stats();
    DEVICE_OBJECTS
        .iter()
        .map(|k| {
            let v = softrdma_counter(&line, k).unwrap_or_else(|| panic!("no {k}= in {line:?}"));
            (*k, v)
        })
        .collect()
}

/// Waits (bounded) until the target's device objects equal `want`.
fn wait_device_objects(t: &TargetProc, want: &[(&'static str, u64)], what: &str) {
    let start = Instant::now();
    loop {
        let now = device_objects(t);
        if now == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{what}: softrdma objects of the target {now:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A fresh host's verified I/O passes within 15 s (retried while the target
/// re-opens the device and listens again).
fn verified_io_soon(t: &TargetProc, what: &str) {
    let mut ok = perf_cfg(t.addr, 8, 4096, 200);
    ok.region_bytes = 1 << 20;
    let start = Instant::now();
    loop {
        match nvmf_rdma_rs::initiator::run_perf(&ok) {
            Ok(r) if r.errors.is_empty() && r.verified > 0 => return,
            other => {
                assert!(
                    start.elapsed() < Duration::from_secs(15),
                    "{what}: no verified I/O within 15 s: {other:?}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// Device removal under I/O and its return as a new context, twice (issue 9):
/// the removal tears the qpairs down, every poller, buffer pool, the PD and
/// the listener of the device are released (softrdma counts no object of it
/// in the target), the target keeps running; after `device_add` the rescan
/// opens the new context, the groups make its pollers, the address is
/// listened on again and a new host verifies data — with exactly the objects
/// the target had at start.
#[test]
fn e2e_device_removal_and_return() {
    if !under_softrdma("e2e_device_removal_and_return", Duration::from_secs(150)) {
        return;
    }
    let mut t = TargetProc::start(&["--threads", "2"]);
    let baseline = device_objects(&t);
    println!("at start: {baseline:?}");
    let removed: Vec<(&str, u64)> = DEVICE_OBJECTS.iter().map(|k| (*k, 0)).collect();
    for round in 0..2 {
        let mut host = spawn_host(&t, "60", "16", "16K");
        assert!(t.wait_busy(Duration::from_secs(20)), "no I/O was running");
        ctl(t.pid(), &["async", "device_remove"]);
        let idle = t.wait_idle(Duration::from_secs(15));
        println!("round {round}, removed: {}", idle["counters"]);
        wait_device_objects(&t, &removed, "after device_remove");
        assert!(t.alive(), "the target died");
        let _ = host.kill();
        let _ = host.wait();
        ctl(t.pid(), &["async", "device_add"]);
        verified_io_soon(&t, "after device_add");
        t.wait_idle(Duration::from_secs(15));
        wait_device_objects(&t, &baseline, "back after device_add");
        println!("round {round}, back: {:?}", device_objects(&t));
    }
    let fin = t.stop();
    assert_final_zero(&fin);
}

/// `RDMA_CM_EVENT_ADDR_CHANGE` on the listener (softrdma's `addr_change`
/// command) with a host doing I/O: the host's qpairs are disconnected (it
/// stops long before its 60 s), the listener is back on the same address
/// (the target's CM ids return to their count at start) and a new host
/// verifies data.
#[test]
fn e2e_addr_change_relistens() {
    if !under_softrdma("e2e_addr_change_relistens", Duration::from_secs(120)) {
        return;
    }
    let mut t = TargetProc::start(&[]);
    let cm_ids = |t: &TargetProc| softrdma_counter(&t.softrdma_stats(), "cm_ids").expect("cm_ids=");
    let listening = cm_ids(&t);
    let mut host = spawn_host(&t, "60", "16", "4K");
    assert!(t.wait_busy(Duration::from_secs(20)), "no I/O was running");
    ctl(t.pid(), &["addr_change"]);
    let start = Instant::now();
    let status = loop {
        if let Some(s) = host.try_wait().expect("host status") {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the host is still connected 20 s after ADDR_CHANGE"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    println!(
        "host ended {:?} after ADDR_CHANGE: {status}",
        start.elapsed()
    );
    let idle = t.wait_idle(Duration::from_secs(15));
    println!("after ADDR_CHANGE: {}", idle["counters"]);
    wait_no_target_qps(&t, Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(10);
    while cm_ids(&t) != listening && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(cm_ids(&t), listening, "the listener is not back alone");
    verified_io_soon(&t, "after ADDR_CHANGE");
    t.wait_idle(Duration::from_secs(15));
    let fin = t.stop();
    assert_final_zero(&fin);
}
