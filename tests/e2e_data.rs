//! End-to-end data path over softrdma: verified I/O at queue depths 1…128
//! and sizes 512 B…1 MiB (keyed, in-capsule and multi-descriptor SGLs),
//! many qpairs over several poll groups, and connect/disconnect cycles with
//! no leak. See `docs/transport.md` ("Tests").

mod e2e_common;

use std::time::Duration;

use e2e_common::*;
use nvmf_rdma_rs::initiator::{Controller, ControllerConfig, SglMode};

const BIG: &[&str] = &[
    "--ram-ns",
    "64M",
    "--max-io-size",
    "1048576",
    "--io-unit-size",
    "65536",
    "--num-shared-buffers",
    "512",
];

#[test]
fn e2e_integrity_depths_and_sizes() {
    if !under_softrdma("e2e_integrity_depths_and_sizes", Duration::from_secs(300)) {
        return;
    }
    let mut t = TargetProc::start(BIG);
    let cases: &[(u16, u32, SglMode)] = &[
        (1, 512, SglMode::Keyed),
        (1, 4096, SglMode::Keyed),
        (2, 1024, SglMode::InCapsule),
        (4, 8192, SglMode::Keyed),
        (8, 4096, SglMode::InCapsule),
        (16, 65536, SglMode::Keyed),
        (32, 4096, SglMode::Keyed),
        (64, 16384, SglMode::MultiKeyed(4)),
        (128, 4096, SglMode::Keyed),
        (4, 131072, SglMode::MultiKeyed(16)),
        (2, 1 << 20, SglMode::Keyed),
        (4, 1 << 20, SglMode::MultiKeyed(16)),
    ];
    for &(qd, size, sgl) in cases {
        let mut cfg = perf_cfg(t.addr, qd, size, 0);
        cfg.io_limit = if size >= 1 << 20 { 64 } else { 1000 };
        cfg.sgl = sgl;
        let r = verified_io(&cfg);
        println!(
            "qd {qd} size {size} {sgl:?}: {} I/Os, {} verified",
            r.ios, r.verified
        );
    }
    let idle = t.wait_idle(Duration::from_secs(10));
    assert_eq!(idle["counters"]["wc_errors"], 0, "{idle}");
    let fin = t.stop();
    assert_eq!(fin["live_qpairs"], 0);
    assert_eq!(fin["qpairs_created"], fin["qpairs_destroyed"]);
}

#[test]
fn e2e_integrity_without_srq() {
    if !under_softrdma("e2e_integrity_without_srq", Duration::from_secs(300)) {
        return;
    }
    let mut args = BIG.to_vec();
    args.extend(["--no-srq", "--num-cqe", "64"]);
    let mut t = TargetProc::start(&args);
    for &(qd, size, sgl) in &[
        (1, 512, SglMode::Keyed),
        (8, 4096, SglMode::InCapsule),
        (32, 65536, SglMode::MultiKeyed(8)),
        (128, 4096, SglMode::Keyed),
        (4, 1 << 20, SglMode::Keyed),
    ] {
        let mut cfg = perf_cfg(t.addr, qd, size, 0);
        cfg.io_limit = if size >= 1 << 20 { 64 } else { 1000 };
        cfg.sgl = sgl;
        cfg.controller.io_queues = 2;
        cfg.region_bytes = 16 << 20;
        verified_io(&cfg);
    }
    t.wait_idle(Duration::from_secs(10));
    let fin = t.stop();
    assert_eq!(fin["qpairs_created"], fin["qpairs_destroyed"]);
}

#[test]
fn e2e_ipv6_and_ipv4_listeners() {
    if !under_softrdma("e2e_ipv6_and_ipv4_listeners", Duration::from_secs(120)) {
        return;
    }
    let v6: std::net::SocketAddr = format!("[::1]:{}", port()).parse().unwrap();
    let mut t = TargetProc::start(&["--listen", &v6.to_string()]);
    for addr in [v6, t.addr] {
        let mut cfg = perf_cfg(addr, 8, 4096, 500);
        cfg.region_bytes = 1 << 20;
        verified_io(&cfg);
    }
    t.wait_idle(Duration::from_secs(10));
    let fin = t.stop();
    assert_eq!(fin["qpairs_created"], 4);
}

#[test]
fn e2e_many_qpairs_several_poll_groups() {
    if !under_softrdma(
        "e2e_many_qpairs_several_poll_groups",
        Duration::from_secs(240),
    ) {
        return;
    }
    let mut t = TargetProc::start(&["--threads", "3", "--ram-ns", "16M", "--ram-ns", "16M"]);
    // Two controllers with 6 I/O queues each, at the same time, each on its
    // own namespace.
    let addr = t.addr;
    let workers: Vec<_> = (0..2)
        .map(|i| {
            std::thread::spawn(move || {
                let mut cfg = perf_cfg(addr, 8, 4096, 3000);
                cfg.controller.io_queues = 6;
                cfg.seed = 7 + i;
                cfg.nsid = i as u32 + 1;
                cfg.region_bytes = 2 << 20;
                verified_io(&cfg)
            })
        })
        .collect();
    for w in workers {
        let r = w.join().expect("perf worker panicked");
        assert!(r.ios >= 3000, "{r}");
    }
    let idle = t.wait_idle(Duration::from_secs(10));
    let groups = idle["poll_groups"].as_array().unwrap();
    assert_eq!(groups.len(), 3);
    let busy = groups
        .iter()
        .filter(|g| g["devices"][0]["requests"].as_u64().unwrap_or(0) > 0)
        .count();
    assert!(busy >= 2, "I/O should spread over poll groups: {idle}");
    let fin = t.stop();
    assert_eq!(fin["qpairs_created"], 14);
    assert_eq!(fin["qpairs_destroyed"], 14);
}

/// Connect / disconnect cycles (controller with one I/O queue, one write and
/// read each); afterwards the target holds no qpair, buffer or command and
/// softrdma shows no QP of the target left. `NVMF_E2E_CYCLES` sets the
/// number of cycles (default 1000, about 10 s).
#[test]
fn e2e_connect_disconnect_cycles_no_leak() {
    if !under_softrdma(
        "e2e_connect_disconnect_cycles_no_leak",
        Duration::from_secs(900),
    ) {
        return;
    }
    let cycles: u64 = std::env::var("NVMF_E2E_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let mut t = TargetProc::start(&[]);
    // Only the data-buffer pool and the SRQ receive buffers of the one poll
    // group stay registered.
    let mrs0 = Some(2);
    let base = t.softrdma_stats();
    for i in 0..cycles {
        let mut cfg = ControllerConfig::new(t.addr, "nqn.2016-06.io.spdk:cnode1");
        cfg.io_queues = 1;
        cfg.io_depth = 4;
        let mut c = Controller::connect(cfg).unwrap_or_else(|e| panic!("cycle {i}: {e}"));
        let data = vec![(i % 251) as u8; 4096];
        c.write(0, 1, i * 8 % 1024, &data, SglMode::Keyed)
            .unwrap_or_else(|e| panic!("cycle {i} write: {e}"));
        let mut back = vec![0u8; 4096];
        c.read(0, 1, i * 8 % 1024, &mut back, SglMode::Keyed)
            .unwrap_or_else(|e| panic!("cycle {i} read: {e}"));
        assert_eq!(back, data, "cycle {i}: data mismatch");
        c.shutdown()
            .unwrap_or_else(|e| panic!("cycle {i} shutdown: {e}"));
    }
    let idle = t.wait_idle(Duration::from_secs(20));
    let c = &idle["counters"];
    assert_eq!(c["qpairs_created"], 2 * cycles, "{idle}");
    assert_eq!(c["qpairs_destroyed"], 2 * cycles, "{idle}");
    assert_eq!(c["qpairs_forced"], 0, "{idle}");
    let after = t.softrdma_stats();
    println!("softrdma before: {base}\nsoftrdma after:  {after}");
    assert_eq!(softrdma_counter(&after, "qps"), Some(0), "{after}");
    assert_eq!(softrdma_counter(&after, "mrs"), mrs0, "{after}");
    let fin = t.stop();
    assert_eq!(fin["live_qpairs"], 0);
}
