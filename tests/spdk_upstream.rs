//! Upstream SPDK over softrdma (opt-in: needs an SPDK build in `SPDK_DIR`).
//!
//! Starts SPDK's own `nvmf_tgt` with `LD_LIBRARY_PATH` pointing at softrdma,
//! configures it over its JSON-RPC UNIX socket (RDMA transport, a malloc
//! bdev, a subsystem with one namespace and an RDMA listener on 127.0.0.1),
//! then drives I/O through it with SPDK's `spdk_nvme_perf` (4 KiB randread)
//! and with this project's initiator (`nvmf-rdma-rs perf`, verified randrw).
//! Both must finish without I/O errors. Every wait is bounded and every
//! process is stopped when the test ends, passes or fails.
//!
//! Environment:
//! - `SPDK_DIR`: an SPDK tree built with `--with-shared --with-rdma`
//!   (`build/bin/nvmf_tgt`, `build/bin/spdk_nvme_perf`, `build/lib`). Unset:
//!   the test prints why it skips and passes.
//! - `SOFTRDMA_LIB_DIR`: softrdma's staged libraries (default
//!   `<repo>/target/softrdma`, made by `bash scripts/build-softrdma.sh`).
//! - `SPDK_PERF_SECS`: seconds of each I/O run (default 3).
//! - `SPDK_MEM_MB`: `-s` memory size of each SPDK process (default 1024).
//!
//! See docs/spdk.md.

mod spdk_common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use spdk_common::*;

const NQN: &str = "nqn.2016-06.io.spdk:cnode1";
/// Extra time a timed I/O run may take beyond its duration (connect, teardown).
const RUN_SLACK: Duration = Duration::from_secs(60);

/// A port unlikely to collide with other tests running on this machine.
fn port() -> u16 {
    if let Ok(p) = std::env::var("SPDK_TEST_PORT") {
        return p.parse().expect("SPDK_TEST_PORT is a port number");
    }
    44000 + (std::process::id() % 1000) as u16
}

/// `Total : IOPS MiB/s avg min max` of spdk_nvme_perf's summary.
fn spdk_perf_total_iops(out: &str) -> Option<f64> {
    let line = out.lines().find(|l| l.trim_start().starts_with("Total"))?;
    let (_, nums) = line.rsplit_once(':')?;
    nums.split_whitespace().next()?.parse().ok()
}

#[test]
fn upstream_nvmf_tgt_over_softrdma() {
    let Some(spdk) = std::env::var_os("SPDK_DIR").map(PathBuf::from) else {
        eprintln!(
            "SPDK_DIR not set: skipping the upstream SPDK nvmf_tgt / spdk_nvme_perf test \
             over softrdma (see docs/spdk.md)"
        );
        return;
    };
    let nvmf_tgt = spdk.join("build/bin/nvmf_tgt");
    let spdk_perf = spdk.join("build/bin/spdk_nvme_perf");
    for bin in [&nvmf_tgt, &spdk_perf] {
        assert!(
            bin.is_file(),
            "SPDK_DIR={} has no {}: build SPDK with --with-shared --with-rdma",
            spdk.display(),
            bin.display()
        );
    }
    let softrdma = softrdma_dir();
    let secs = env_u64("SPDK_PERF_SECS", 3);
    let mem_mb = env_u64("SPDK_MEM_MB", 1024).to_string();

    let scratch =
        Scratch(std::env::temp_dir().join(format!("spdk-upstream-{}", std::process::id())));
    std::fs::create_dir_all(scratch.0.join("shm")).unwrap();
    let ld_path = format!(
        "{}:{}",
        softrdma.display(),
        spdk.join("build/lib").display()
    );
    let with_env = |cmd: &mut Command| {
        cmd.env("LD_LIBRARY_PATH", &ld_path)
            .env("SOFTRDMA_SHM_DIR", scratch.0.join("shm"))
            .env("SOFTRDMA_QUIET", "1");
    };

    // The target: one reactor on core 0, no hugepages, no PCI probing, its own
    // RPC socket.
    let sock = scratch.0.join("nvmf_tgt.sock");
    let mut cmd = Command::new(&nvmf_tgt);
    cmd.args(["--no-huge", "-s", &mem_mb, "--no-pci", "-m", "0x1", "-r"])
        .arg(&sock);
    with_env(&mut cmd);
    let mut tgt = Proc::spawn("nvmf_tgt", cmd, scratch.0.join("nvmf_tgt.log"));
    let mut rpc = RpcClient { sock, next_id: 0 };
    let version = wait_for_rpc(&mut tgt, &mut rpc);
    eprintln!("nvmf_tgt up: {version}");

    let port = port();
    rpc.call("nvmf_create_transport", json!({ "trtype": "RDMA" }));
    rpc.call(
        "bdev_malloc_create",
        json!({ "name": "Malloc0", "num_blocks": 65536, "block_size": 512 }),
    );
    rpc.call(
        "nvmf_create_subsystem",
        json!({ "nqn": NQN, "allow_any_host": true, "serial_number": "SPDK00000000000001" }),
    );
    rpc.call(
        "nvmf_subsystem_add_ns",
        json!({ "nqn": NQN, "namespace": { "bdev_name": "Malloc0" } }),
    );
    rpc.call(
        "nvmf_subsystem_add_listener",
        json!({ "nqn": NQN, "listen_address": {
            "trtype": "RDMA", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()
        }}),
    );
    let transports = rpc.call("nvmf_get_transports", Value::Null);
    assert!(
        transports
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["trtype"] == "RDMA")),
        "nvmf_get_transports shows no RDMA transport: {transports}"
    );
    eprintln!("RDMA transport: {transports}");

    // SPDK's own initiator: 4 KiB random reads at QD 32, on core 1.
    let trid = format!("trtype:RDMA adrfam:IPv4 traddr:127.0.0.1 trsvcid:{port} subnqn:{NQN}");
    let mut cmd = Command::new(&spdk_perf);
    cmd.args([
        "--no-huge",
        "-s",
        &mem_mb,
        "-c",
        "0x2",
        "-q",
        "32",
        "-o",
        "4096",
    ])
    .args(["-w", "randread", "-t", &secs.to_string(), "-r", &trid]);
    with_env(&mut cmd);
    let mut perf = Proc::spawn("spdk_nvme_perf", cmd, scratch.0.join("spdk_nvme_perf.log"));
    let status = perf.wait_bounded(Duration::from_secs(secs) + RUN_SLACK);
    let out = perf.log_text();
    eprintln!("spdk_nvme_perf ({status}):\n{out}");
    assert!(
        tgt.exited().is_none(),
        "nvmf_tgt died during spdk_nvme_perf; log:\n{}",
        tgt.log_tail()
    );
    assert!(status.success(), "spdk_nvme_perf failed ({status}):\n{out}");
    for bad in ["completed with error", "starting I/O failed", "ERROR"] {
        assert!(
            !out.contains(bad),
            "spdk_nvme_perf reported {bad:?}:\n{out}"
        );
    }
    let iops = spdk_perf_total_iops(&out)
        .unwrap_or_else(|| panic!("no `Total` line in spdk_nvme_perf output:\n{out}"));
    assert!(iops > 0.0, "spdk_nvme_perf completed no I/O:\n{out}");

    // This project's initiator against the same target: verified mixed I/O.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nvmf-rdma-rs"));
    cmd.args(["perf", "--addr", &format!("127.0.0.1:{port}"), "--nqn", NQN])
        .args([
            "--workload",
            "randrw",
            "--verify",
            "--region",
            "8M",
            "-q",
            "32",
        ])
        .args(["--time", &secs.to_string()]);
    with_env(&mut cmd);
    let mut ours = Proc::spawn("nvmf-rdma-rs perf", cmd, scratch.0.join("ours.log"));
    let status = ours.wait_bounded(Duration::from_secs(secs) + RUN_SLACK);
    let out = ours.log_text();
    eprintln!("nvmf-rdma-rs perf ({status}):\n{out}");
    assert!(
        status.success(),
        "nvmf-rdma-rs perf against nvmf_tgt failed ({status}):\n{out}\nnvmf_tgt log:\n{}",
        tgt.log_tail()
    );

    // The target saw the traffic on its RDMA transport and is still healthy.
    let stats = rpc.call("nvmf_get_stats", Value::Null);
    eprintln!("nvmf_get_stats: {stats}");
    assert!(
        stats.to_string().contains("\"trtype\":\"RDMA\""),
        "nvmf_get_stats has no RDMA poll-group statistics: {stats}"
    );
    let completed: u64 = stats["poll_groups"]
        .as_array()
        .map(|groups| {
            groups
                .iter()
                .filter_map(|g| g["completed_nvme_io"].as_u64())
                .sum()
        })
        .unwrap_or(0);
    assert!(
        completed > 0,
        "nvmf_get_stats reports no completed NVMe I/O: {stats}"
    );
    tgt.stop();
    let log = tgt.log_text();
    assert!(
        !log.contains("Segmentation fault") && !log.contains("Assertion"),
        "nvmf_tgt log shows a crash:\n{log}"
    );
}
