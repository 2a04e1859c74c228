//! Link mode: `nvmf_tgt` of an SPDK tree patched with `spdk-patch/` and
//! built with this crate's `link-mode` staticlib in place of
//! `lib/nvmf/rdma.c` (opt-in: needs `SPDK_PATCHED_DIR`, see
//! spdk-patch/README.md).
//!
//! Checks, over softrdma, without `LD_PRELOAD`:
//! - the patched `libspdk_nvmf.so` holds our transport and not rdma.c (our
//!   registration text in, rdma.c's tracepoint names out) and still exports
//!   `spdk_nvmf_rdma_init_hooks`;
//! - `nvmf_tgt` starts with rdma.c's log flag and trace group on the command
//!   line (`-L rdma -e nvmf_rdma`, as existing scripts have them) and logs our
//!   registration as `RDMA`;
//! - `nvmf_create_transport -t RDMA` (SPDK's `scripts/rpc.py`, unchanged
//!   arguments) creates *our* transport: our create log line, our RDMA keys in
//!   `nvmf_get_transports`, `RDMA_RS` unknown;
//! - an `-t RDMA` listener serves SPDK's `spdk_nvme_perf` (`trtype:RDMA`,
//!   4 KiB randread and randwrite, QD 8, 2 s each) and `nvmf_get_stats`
//!   counts the requests under `RDMA`;
//! - the trace file describes our tracepoints in group `nvmf_rdma` (id 0x4)
//!   and holds `RS_REQ_EXECUTING` events from the perf runs;
//! - SIGINT: exit 0, our transport destroyed, no panic.
//!
//! Environment: `SPDK_PATCHED_DIR` (unset: prints why it skips and passes),
//! `SPDK_LINK_TEST_PORT` (listen port, default 45511), `SOFTRDMA_LIB_DIR`,
//! `SPDK_MEM_MB` as in `spdk_upstream.rs`.

mod spdk_common;
mod spdk_tgt;

use std::path::PathBuf;

use serde_json::Value;
use spdk_tgt::{tpoint, Tgt};

const NQN: &str = "nqn.2016-06.io.spdk:cnode1";

/// Tracepoint id of `index` in the group `group` (`SPDK_TPOINT_ID`).
fn tpoint_id(group: u64, index: u64) -> u64 {
    group * 64 + index
}

#[test]
fn link_mode_nvmf_tgt_runs_our_transport_as_rdma() {
    let Some(spdk) = std::env::var_os("SPDK_PATCHED_DIR").map(PathBuf::from) else {
        eprintln!(
            "SPDK_PATCHED_DIR not set: skipping the link-mode test (an SPDK tree patched with \
             spdk-patch/ and built with the link-mode staticlib; see spdk-patch/README.md)"
        );
        return;
    };

    // The library itself: ours in, rdma.c out.
    let so = spdk.join("build/lib/libspdk_nvmf.so");
    let bytes = std::fs::read(&so).unwrap_or_else(|e| panic!("reading {}: {e}", so.display()));
    let has = |s: &str| bytes.windows(s.len()).any(|w| w == s.as_bytes());
    assert!(
        has("in place of SPDK's rdma.c"),
        "{} does not hold the link-mode build of nvmf-rdma-rs (was the patch applied and \
         NVMF_RDMA_RS_LIB built with --features link-mode?)",
        so.display()
    );
    assert!(
        !has("RDMA_REQ_NEW"),
        "{} still holds rdma.c (its tracepoint RDMA_REQ_NEW)",
        so.display()
    );
    let nm = std::process::Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&so)
        .output()
        .expect("running nm");
    assert!(
        String::from_utf8_lossy(&nm.stdout).contains(" T spdk_nvmf_rdma_init_hooks"),
        "{} does not export spdk_nvmf_rdma_init_hooks (spdk_nvmf.map)",
        so.display()
    );

    // rdma.c's log flag and trace group: nvmf_tgt refuses unknown ones.
    let mut tgt = Tgt::start(
        &spdk,
        "spdk-link-mode",
        None,
        &["-L", "rdma", "-e", "nvmf_rdma"],
    );
    assert!(
        tgt.proc.log_text().contains(
            "nvmf-rdma-rs: registered NVMe-oF transport RDMA (trtype RDMA, link mode: in place \
             of SPDK's rdma.c)"
        ),
        "no link-mode registration line:\n{}",
        tgt.proc.log_tail()
    );

    tgt.rpc_py(&[
        "nvmf_create_transport",
        "-t",
        "RDMA",
        "-u",
        "8192",
        "-s",
        "512",
    ])
    .unwrap_or_else(|e| panic!("nvmf_create_transport -t RDMA failed:\n{e}"));
    assert!(
        tgt.proc.log_text().contains("RDMA_RS: transport created"),
        "-t RDMA did not create our transport:\n{}",
        tgt.proc.log_tail()
    );
    let listed = tgt.rpc.call("nvmf_get_transports", Value::Null);
    let list = listed.as_array().expect("a list of transports");
    assert_eq!(list.len(), 1, "transports: {listed}");
    assert_eq!(list[0]["trtype"], "RDMA");
    assert_eq!(list[0]["max_srq_depth"], 512);
    assert_eq!(list[0]["io_unit_size"], 8192);
    let other = tgt.rpc_py(&["nvmf_create_transport", "-t", "RDMA_RS"]);
    assert!(other.is_err(), "RDMA_RS exists in link mode: {other:?}");

    // I/O with upstream's command lines: an `-t RDMA` listener and
    // `spdk_nvme_perf` with `trtype:RDMA`.
    let port = spdk_common::env_u64("SPDK_LINK_TEST_PORT", 45511).to_string();
    let trid = tgt.export_malloc(NQN, "RDMA", &port);
    for workload in ["randread", "randwrite"] {
        let out = tgt.perf(&trid, &["-q", "8", "-o", "4096", "-w", workload], 2);
        let total = out
            .lines()
            .find(|l| l.starts_with("Total"))
            .unwrap_or_else(|| panic!("no Total line from spdk_nvme_perf:\n{out}"));
        let iops: f64 = total
            .split(':')
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no IOPS in {total:?}"));
        assert!(iops > 0.0, "{workload}: no I/O completed:\n{out}");
        eprintln!("link mode, -t RDMA, {workload} QD 8: {total}");
    }
    let stats = tgt.rpc.call("nvmf_get_stats", Value::Null);
    let ours = &stats["poll_groups"][0]["transports"][0];
    assert_eq!(ours["trtype"], "RDMA", "{stats}");
    assert!(
        ours["devices"][0]["requests"].as_u64().unwrap_or(0) > 0,
        "{stats}"
    );

    // Our tracepoints, in rdma.c's group 0x4, enabled by -e nvmf_rdma.
    let groups = tgt.rpc.call("trace_get_tpoint_group_mask", Value::Null);
    assert_eq!(groups["nvmf_rdma"]["enabled"], true, "{groups}");
    assert_eq!(groups["nvmf_rdma"]["mask"], "0x10", "{groups}");
    let tpoints = tgt.tpoints();
    let new = tpoint(&tpoints, "RS_REQ_NEW");
    assert_eq!(new["id"], tpoint_id(4, 0));
    assert_eq!(new["new_object"], true);
    assert_eq!(tpoint(&tpoints, "RS_REQ_COMPLETED")["id"], tpoint_id(4, 13));
    assert_eq!(tpoint(&tpoints, "RS_QP_ERROR")["id"], tpoint_id(4, 0x13));
    assert!(
        !tpoints.iter().any(|t| t["name"] == "RDMA_REQ_NEW"),
        "rdma.c's tracepoints are registered too"
    );
    let executing = tpoint_id(4, 6);
    let recorded = tgt.trace_json()["entries"]
        .as_array()
        .map(|e| e.iter().filter(|e| e["tpoint"] == executing).count())
        .unwrap_or(0);
    assert!(
        recorded > 0,
        "no RS_REQ_EXECUTING events after the perf runs"
    );

    let log = tgt.stop_cleanly();
    assert!(
        log.contains("RDMA_RS: transport") && log.contains("destroyed"),
        "our transport was not destroyed at exit:\n{log}"
    );
    eprintln!("nvmf_tgt log:\n{log}");
}
