//! The RDMA_RS plugin's trace group in SPDK's own `nvmf_tgt` (opt-in: needs
//! an SPDK build in `SPDK_DIR`, at build time and at run time).
//!
//! Starts `nvmf_tgt` with `LD_PRELOAD=libnvmf_rdma_rs.so -e nvmf_rdma_rs`
//! over softrdma and checks that the group is known and enabled
//! (`trace_get_tpoint_group_mask`) and that `spdk_trace -j` reads our
//! tracepoint descriptions from the trace file next to upstream rdma.c's,
//! which is still loaded. Recorded events come with the data path.
//!
//! Environment: `SPDK_DIR` (unset: prints why it skips and passes),
//! `SOFTRDMA_LIB_DIR`, `SPDK_MEM_MB` as in `spdk_upstream.rs`. See
//! docs/spdk-plugin.md, "Traces".

mod spdk_common;
mod spdk_tgt;

use std::path::PathBuf;

use serde_json::Value;
use spdk_tgt::{tpoint, Tgt};

/// Our group id in the plugin (src/spdk/trace.rs).
const GROUP_ID: u64 = 0x7;

#[test]
fn rdma_rs_trace_group_is_registered() {
    let Some(spdk) = std::env::var_os("SPDK_DIR").map(PathBuf::from) else {
        eprintln!(
            "SPDK_DIR not set: skipping the RDMA_RS trace group test in SPDK's nvmf_tgt \
             (see docs/spdk-plugin.md)"
        );
        return;
    };
    if !cfg!(spdk) {
        panic!("SPDK_DIR is set but this crate was built without it: rebuild with SPDK_DIR set");
    }
    let lib = std::env::current_exe()
        .expect("current_exe")
        .with_file_name("libnvmf_rdma_rs.so");
    assert!(lib.is_file(), "{} not built", lib.display());

    // nvmf_tgt refuses an unknown group name, so starting shows it exists.
    let mut tgt = Tgt::start(&spdk, "spdk-trace", Some(&lib), &["-e", "nvmf_rdma_rs"]);
    let groups = tgt.rpc.call("trace_get_tpoint_group_mask", Value::Null);
    let ours = &groups["nvmf_rdma_rs"];
    assert_eq!(ours["enabled"], true, "{groups}");
    assert_eq!(ours["mask"], format!("{:#x}", 1u64 << GROUP_ID), "{groups}");
    assert_eq!(groups["nvmf_rdma"]["enabled"], false, "{groups}");
    let info = tgt.rpc.call("trace_get_info", Value::Null);
    assert_eq!(
        info["nvmf_rdma_rs"]["tpoint_mask"], "0xffffffffffffffff",
        "{info}"
    );

    let tpoints = tgt.tpoints();
    let expect = [
        ("RS_REQ_NEW", 0, true, 1),
        ("RS_REQ_EXECUTING", 6, false, 1),
        ("RS_REQ_COMPLETED", 13, false, 1),
        ("RS_QP_CREATE", 0x10, false, 2),
        ("RS_QP_DISCONNECT", 0x11, false, 2),
        ("RS_QP_DESTROY", 0x12, false, 2),
        ("RS_QP_ERROR", 0x13, false, 2),
    ];
    for (name, index, new_object, args) in expect {
        let t = tpoint(&tpoints, name);
        assert_eq!(t["id"], GROUP_ID * 64 + index, "{t}");
        assert_eq!(t["new_object"], new_object, "{t}");
        assert_eq!(t["args"].as_array().map(Vec::len), Some(args), "{t}");
        assert_eq!(t["args"][0]["name"], "qpair", "{t}");
    }
    let ours = tpoints
        .iter()
        .filter(|t| t["id"].as_u64().is_some_and(|id| id / 64 == GROUP_ID))
        .count();
    assert_eq!(ours, 18, "tracepoints in group {GROUP_ID:#x}");
    // Upstream's group is untouched next to ours.
    assert_eq!(tpoint(&tpoints, "RDMA_REQ_NEW")["id"], 4 * 64);

    let log = tgt.stop_cleanly();
    assert!(
        !log.contains("trace group nvmf_rdma_rs not registered") && !log.contains("not described"),
        "the trace group was refused:\n{log}"
    );
}

/// The listen port of the I/O test (this test's range: 45500-45599).
fn port() -> u64 {
    spdk_common::env_u64("SPDK_TRACE_TEST_PORT", 45510)
}

const NQN: &str = "nqn.2016-06.io.spdk:cnode1";

/// After `spdk_nvme_perf` over an `RDMA_RS` listener: the trace file holds
/// our qpair and request events, and `nvmf_get_stats` has, for `RDMA_RS`,
/// exactly upstream RDMA's keys in its order (both transports in one target),
/// with counts that add up.
#[test]
fn rdma_rs_events_and_stats_after_io() {
    let Some(spdk) = std::env::var_os("SPDK_DIR").map(PathBuf::from) else {
        eprintln!(
            "SPDK_DIR not set: skipping the RDMA_RS trace events and stats test in SPDK's \
             nvmf_tgt (see docs/spdk-plugin.md)"
        );
        return;
    };
    if !cfg!(spdk) {
        panic!("SPDK_DIR is set but this crate was built without it: rebuild with SPDK_DIR set");
    }
    let lib = std::env::current_exe()
        .expect("current_exe")
        .with_file_name("libnvmf_rdma_rs.so");
    let mut tgt = Tgt::start(&spdk, "spdk-trace-io", Some(&lib), &["-e", "nvmf_rdma_rs"]);
    let port = port().to_string();
    for trtype in ["RDMA_RS", "RDMA"] {
        tgt.rpc_py(&["nvmf_create_transport", "-t", trtype])
            .unwrap_or_else(|e| panic!("nvmf_create_transport -t {trtype}: {e}"));
    }
    let trid = tgt.export_malloc(NQN, "RDMA_RS", &port);
    let out = tgt.perf(&trid, &["-q", "8", "-o", "4096", "-w", "randread"], 2);
    eprintln!("spdk_nvme_perf:\n{out}");

    // Events: count per tracepoint name.
    let trace = tgt.trace_json();
    let names: std::collections::HashMap<u64, String> = trace["tpoints"]
        .as_array()
        .expect("tpoints")
        .iter()
        .map(|t| {
            (
                t["id"].as_u64().unwrap(),
                t["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut counts: std::collections::HashMap<&str, u64> = Default::default();
    for e in trace["entries"].as_array().expect("entries") {
        let id = e["tpoint"].as_u64().expect("tpoint id");
        *counts.entry(names[&id].as_str()).or_default() += 1;
    }
    eprintln!("trace events: {counts:?}");
    // perf connects an admin and an I/O qpair and leaves: both created and
    // destroyed.
    assert!(
        counts.get("RS_QP_CREATE").copied().unwrap_or(0) >= 2,
        "{counts:?}"
    );
    assert!(
        counts.get("RS_QP_DESTROY").copied().unwrap_or(0) >= 2,
        "{counts:?}"
    );
    let executing = counts.get("RS_REQ_EXECUTING").copied().unwrap_or(0);
    let executed = counts.get("RS_REQ_EXECUTED").copied().unwrap_or(0);
    assert!(executing > 100, "{counts:?}");
    // Every executed request was executing; a few may still run (AERs).
    assert!(
        executed <= executing && executing - executed < 8,
        "{counts:?}"
    );
    assert!(
        !counts.keys().any(|n| n.starts_with("RDMA_")),
        "upstream's group recorded: {counts:?}"
    );

    // Stats: upstream's keys, in its order, for ours.
    let raw = tgt.rpc.call_raw("nvmf_get_stats", Value::Null);
    let stats: Value = serde_json::from_str(&raw).expect("nvmf_get_stats reply");
    let group = &stats["result"]["poll_groups"][0];
    let entry = |trtype: &str| {
        group["transports"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["trtype"] == trtype))
            .unwrap_or_else(|| panic!("no {trtype} in nvmf_get_stats: {stats}"))
            .clone()
    };
    let (ours, upstream) = (entry("RDMA_RS"), entry("RDMA"));
    let keys = |v: &Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    assert_eq!(keys(&ours), keys(&upstream), "transport keys");
    let (od, ud) = (&ours["devices"][0], &upstream["devices"][0]);
    assert_eq!(
        keys(od),
        keys(ud),
        "device keys:\nours {ours}\nupstream {upstream}"
    );
    assert_eq!(od["name"], ud["name"]);
    // trtype once per transport in SPDK's raw text (we never write it).
    assert_eq!(raw.matches("\"trtype\"").count(), 2, "{raw}");
    let requests = od["requests"].as_u64().unwrap();
    assert!(
        requests >= executed,
        "requests {requests} < executed {executed}: {ours}"
    );
    assert!(od["completions"].as_u64().unwrap() >= requests, "{ours}");
    assert!(
        od["polls"].as_u64().unwrap() >= od["idle_polls"].as_u64().unwrap(),
        "{ours}"
    );
    assert!(od["total_send_wrs"].as_u64().unwrap() >= requests, "{ours}");
    // request_latency in ticks: the mean is above 1 µs and below 1 s.
    let tick_rate = stats["result"]["tick_rate"].as_u64().expect("tick_rate");
    let mean = od["request_latency"].as_u64().unwrap() / requests.max(1);
    assert!(
        mean > tick_rate / 1_000_000 && mean < tick_rate,
        "mean latency {mean} ticks at {tick_rate} Hz: {ours}"
    );
    eprintln!("nvmf_get_stats RDMA_RS: {ours}");

    tgt.stop_cleanly();
}
