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
