//! I/O through the RDMA_RS plugin in SPDK's own, unmodified `nvmf_tgt`
//! (opt-in: needs an SPDK v26.01 build in `SPDK_DIR`, at build and run time;
//! prints why it skips otherwise). Everything runs over softrdma with
//! `nvmf_tgt --no-huge` and `LD_PRELOAD=libnvmf_rdma_rs.so`:
//!
//! - `workloads_discovery_listeners_config`: the discovery log page (read
//!   with `spdk_nvme_identify`) shows `trtype` RDMA; `spdk_nvme_perf` 4 KiB randread/randwrite at QD 1/32/128,
//!   128 KiB sequential read and write, fragmented writes (`-o 45056 -O
//!   4096`, several RDMA READs per write); this project's verifying initiator;
//!   `bdevperf -w verify` through `bdev_nvme_attach_controller -t rdma`;
//!   `nvmf_get_stats`; a listener removed and re-added while a host is
//!   connected; `save_config` → `nvmf_tgt --json` round trip; SIGINT with a
//!   host connected.
//! - `no_srq_and_interrupt_mode`: the same I/O with `no_srq` (the transport
//!   created with the PyPI `spdk` package's `spdk-rpc` when installed:
//!   `SPDK_RPC` or `PATH`) and with `nvmf_tgt --interrupt-mode`.
//! - `connect_disconnect_cycles`: `SPDK_CYCLES` (default 1000)
//!   connect/I-O/disconnect cycles, then the target's live softrdma QPs are
//!   back to their baseline and a fresh verify passes.
//!
//! Environment: `SPDK_DIR`, `SPDK_RPC`, `SOFTRDMA_LIB_DIR`, `SPDK_MEM_MB`,
//! `SPDK_TEST_PORT`, `SPDK_PERF_SECS` (default 2), `SPDK_CYCLES`. See
//! docs/spdk-plugin.md.

mod spdk_common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};
use spdk_common::*;

const NQN: &str = "nqn.2016-06.io.spdk:cnode1";

/// One SPDK test at a time: each runs its own nvmf_tgt and initiators on a
/// 2-core budget.
static SERIAL: Mutex<()> = Mutex::new(());

fn our_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_nvmf-rdma-rs"))
}

fn secs() -> u64 {
    env_u64("SPDK_PERF_SECS", 2)
}

/// The target's live QPs and CM ids on the fabric (`softrdma-ctl stats PID`).
fn live_qps(t: &SpdkTarget) -> (u64, u64) {
    (t.softrdma_counter("qps"), t.softrdma_counter("cm_ids"))
}

/// The target's live QPs and CM ids once no host qpair is left (QPs 0, the
/// same counts twice 200 ms apart; at most 10 s): a host that just exited may
/// still be tearing its qpairs down on the target.
fn settled_qps(t: &SpdkTarget) -> (u64, u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut last = live_qps(t);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = live_qps(t);
        if (now == last && now.0 == 0) || std::time::Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// The RDMA_RS entry of poll group 0 in `nvmf_get_stats`.
fn rdma_rs_stats(t: &mut SpdkTarget) -> Value {
    let stats = t.rpc.call("nvmf_get_stats", Value::Null);
    let groups = stats["poll_groups"].as_array().cloned().unwrap_or_default();
    groups
        .iter()
        .flat_map(|g| g["transports"].as_array().cloned().unwrap_or_default())
        .find(|tr| tr["trtype"] == "RDMA_RS")
        .unwrap_or_else(|| panic!("no RDMA_RS transport in nvmf_get_stats: {stats}"))
}

/// The standard I/O set: perf workloads, our verify, bdevperf verify.
fn io_set(t: &mut SpdkTarget, port: u16, full: bool) {
    let mut workloads: Vec<Vec<&str>> = vec![
        vec!["-q", "32", "-o", "4096", "-w", "randread"],
        vec!["-q", "32", "-o", "4096", "-w", "randwrite"],
    ];
    if full {
        workloads.extend([
            vec!["-q", "1", "-o", "4096", "-w", "randread"],
            vec!["-q", "1", "-o", "4096", "-w", "randwrite"],
            vec!["-q", "128", "-o", "4096", "-w", "randread"],
            vec!["-q", "128", "-o", "4096", "-w", "randwrite"],
            vec!["-q", "16", "-o", "131072", "-w", "read"],
            vec!["-q", "16", "-o", "131072", "-w", "write"],
            vec!["-q", "128", "-o", "45056", "-O", "4096", "-w", "randwrite"],
        ]);
    }
    for w in &workloads {
        let r = spdk_perf(t, NQN, port, w, secs());
        assert!(r.ok, "spdk_nvme_perf {w:?} failed:\n{}", r.output);
        eprintln!(
            "spdk_nvme_perf {w:?}: {:.0} IOPS, avg {:.1} us",
            r.iops, r.avg_us
        );
        t.assert_alive(&format!("after spdk_nvme_perf {w:?}"));
    }
    let (ok, out) = our_perf(
        t,
        &our_bin(),
        port,
        &[
            "--workload",
            "verify",
            "--region",
            "8M",
            "-q",
            "32",
            "--time",
            &secs().to_string(),
        ],
        Duration::from_secs(secs() + 60),
    );
    assert!(ok, "nvmf-rdma-rs perf --verify failed:\n{out}");
    assert!(out.contains("errors 0"), "verify output: {out}");
    if full {
        if let Some((ok, out)) = bdevperf_verify(t, NQN, port, secs() + 1) {
            assert!(ok, "bdevperf -w verify failed:\n{out}");
        }
    }
}

fn spdk_or_skip(what: &str) -> Option<PathBuf> {
    spdk_dir_or_skip(what, cfg!(spdk))
}

fn scratch(name: &str) -> Scratch {
    let s = Scratch(std::env::temp_dir().join(format!("spdk-io-{name}-{}", std::process::id())));
    std::fs::create_dir_all(&s.0).expect("scratch dir");
    s
}

#[test]
fn workloads_discovery_listeners_config() {
    let Some(spdk) = spdk_or_skip("the RDMA_RS I/O test in SPDK's nvmf_tgt") else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let s = scratch("workloads");
    let lib = cdylib();
    let port = test_port(0);
    let mut t = SpdkTarget::start(&spdk, &s.0, "tgt", Some(&lib), &[], &[]);
    t.export("RDMA_RS", json!({}), NQN, port);

    // The discovery log page shows plain RDMA. Read with spdk_nvme_identify on
    // the discovery NQN (spdk_nvme_discover has no --no-huge and, over
    // softrdma, does not exit after printing, with upstream's RDMA as with
    // ours).
    let mut cmd = Command::new(spdk.join("build/bin/spdk_nvme_identify"));
    cmd.args(["--no-huge", "-s", "256", "-r"])
        .arg(format!(
            "trtype:RDMA adrfam:IPv4 traddr:127.0.0.1 trsvcid:{port} \
             subnqn:nqn.2014-08.org.nvmexpress.discovery"
        ))
        .env("LD_LIBRARY_PATH", t.ld_path())
        .env("SOFTRDMA_SHM_DIR", &t.shm)
        .env("SOFTRDMA_QUIET", "1");
    let mut disc = Proc::spawn("spdk_nvme_identify", cmd, s.0.join("discovery.log"));
    let status = disc.wait_bounded(Duration::from_secs(60));
    let text = disc.log_text();
    let entry = text
        .split("Discovery Log Entry 0")
        .nth(1)
        .unwrap_or_default();
    assert!(
        status.success()
            && entry
                .lines()
                .any(|l| l.contains("Transport Type") && l.contains("1 (RDMA)"))
            && entry.contains(NQN)
            && entry.lines().any(|l| {
                l.contains("Transport Service Identifier") && l.contains(&port.to_string())
            }),
        "the discovery log page does not list the RDMA listener ({status}):\n{text}"
    );

    let qps_before = settled_qps(&t);
    io_set(&mut t, port, true);
    let st = rdma_rs_stats(&mut t);
    eprintln!("nvmf_get_stats RDMA_RS: {st}");

    // Listener removed while a host is connected: as with upstream, SPDK's
    // generic layer disconnects the subsystem's qpairs that came through it
    // (their listen trid equals the removed one), a new connection is
    // refused; re-added, new connections work again.
    let bin = our_bin();
    let cmd = our_perf_cmd(
        &t,
        &bin,
        port,
        &[
            "--workload",
            "verify",
            "--region",
            "4M",
            "-q",
            "8",
            "--time",
            "6",
        ],
    );
    let mut host = Proc::spawn(
        "nvmf-rdma-rs perf (connected)",
        cmd,
        s.0.join("connected.log"),
    );
    std::thread::sleep(Duration::from_secs(2));
    t.rpc.call(
        "nvmf_subsystem_remove_listener",
        json!({ "nqn": NQN, "listen_address": {
            "trtype": "RDMA_RS", "adrfam": "IPv4", "traddr": "127.0.0.1",
            "trsvcid": port.to_string() } }),
    );
    let (ok, out) = our_perf(
        &t,
        &bin,
        port,
        &["--time", "0.2", "--connect-timeout-ms", "3000"],
        Duration::from_secs(30),
    );
    assert!(!ok, "a host connected to a removed listener:\n{out}");
    let status = host.wait_bounded(Duration::from_secs(60));
    assert!(
        !status.success() && host.log_text().contains("disconnected"),
        "the host of a removed listener was not disconnected ({status}):\n{}",
        host.log_tail()
    );
    t.assert_alive("after the listener was removed with a host connected");
    t.add_listener("RDMA_RS", NQN, port);
    io_set(&mut t, port, false);
    // Hosts left: the target's QPs are back to the baseline.
    assert_eq!(
        settled_qps(&t),
        qps_before,
        "target QPs leaked after the hosts left"
    );

    // save_config → nvmf_tgt --json: the same transport and listener.
    let out = Command::new("python3")
        .arg(spdk.join("scripts/rpc.py"))
        .arg("-s")
        .arg(&t.sock)
        .args(["-t", "30", "save_config"])
        .output()
        .expect("rpc.py save_config");
    assert!(out.status.success(), "save_config failed: {out:?}");
    let config = s.0.join("config.json");
    std::fs::write(&config, &out.stdout).expect("config file");
    let before = t.rpc.call("nvmf_get_transports", Value::Null);
    t.stop_clean();
    let config_arg = config.display().to_string();
    let mut t = SpdkTarget::start(
        &spdk,
        &s.0,
        "tgt2",
        Some(&lib),
        &["--json", &config_arg],
        &[],
    );
    let after = t.rpc.call("nvmf_get_transports", Value::Null);
    assert_eq!(
        before, after,
        "transports differ after save_config -> --json"
    );
    io_set(&mut t, port, false);

    // SIGINT with a host connected: a clean exit.
    let cmd = our_perf_cmd(
        &t,
        &bin,
        port,
        &["--workload", "randrw", "-q", "16", "--time", "30"],
    );
    let _host = Proc::spawn(
        "nvmf-rdma-rs perf (at SIGINT)",
        cmd,
        s.0.join("at-sigint.log"),
    );
    std::thread::sleep(Duration::from_secs(2));
    t.stop_clean();
    assert!(
        t.proc.log_text().contains("destroyed"),
        "the RDMA_RS transport was not destroyed at exit:\n{}",
        t.proc.log_tail()
    );
}

/// The PyPI `spdk` package's `spdk-rpc` (`SPDK_RPC`, else on `PATH`).
fn spdk_rpc_tool() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SPDK_RPC") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("spdk-rpc"))
            .find(|p| p.is_file())
    })
}

fn run_variant(spdk: &Path, name: &str, params: Value, extra: &[&str], port: u16) {
    let s = scratch(name);
    let lib = cdylib();
    let mut t = SpdkTarget::start(spdk, &s.0, name, Some(&lib), extra, &[]);
    t.export("RDMA_RS", params, NQN, port);
    io_variant(&mut t, name, port);
}

fn io_variant(t: &mut SpdkTarget, name: &str, port: u16) {
    io_set(t, port, false);
    let st = rdma_rs_stats(t);
    eprintln!("{name}: nvmf_get_stats RDMA_RS: {st}");
    t.stop_clean();
}

#[test]
fn no_srq_and_interrupt_mode() {
    let Some(spdk) = spdk_or_skip("the RDMA_RS no-SRQ / interrupt-mode test") else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // no_srq, the transport created with the PyPI `spdk` package's spdk-rpc
    // when it is installed (rpc.py creates it everywhere else).
    match spdk_rpc_tool() {
        Some(tool) => {
            let s = scratch("nosrq");
            let mut t = SpdkTarget::start(&spdk, &s.0, "nosrq", Some(&cdylib()), &[], &[]);
            let out = Command::new(&tool)
                .arg("-s")
                .arg(&t.sock)
                .args([
                    "nvmf_create_transport",
                    "-t",
                    "RDMA_RS",
                    "--no-srq",
                    "--num-cqe",
                    "2048",
                ])
                .output()
                .expect("spdk-rpc");
            assert!(
                out.status.success(),
                "{} nvmf_create_transport failed: {out:?}",
                tool.display()
            );
            let listed = t
                .rpc
                .call("nvmf_get_transports", json!({ "trtype": "RDMA_RS" }));
            assert_eq!(listed[0]["no_srq"], true, "{listed}");
            assert_eq!(listed[0]["num_cqe"], 2048, "{listed}");
            t.export_existing("RDMA_RS", NQN, test_port(1));
            io_variant(&mut t, "nosrq", test_port(1));
        }
        None => {
            eprintln!(
                "spdk-rpc (pip install spdk) not found on PATH and SPDK_RPC unset: the no_srq \
                 transport is created over JSON-RPC instead"
            );
            run_variant(&spdk, "nosrq", json!({ "no_srq": true }), &[], test_port(1));
        }
    }
    run_variant(
        &spdk,
        "intr",
        json!({}),
        &["--interrupt-mode"],
        test_port(2),
    );
}

#[test]
fn connect_disconnect_cycles() {
    let Some(spdk) = spdk_or_skip("the RDMA_RS connect/disconnect cycle test") else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cycles = env_u64("SPDK_CYCLES", 1000);
    let s = scratch("cycles");
    let lib = cdylib();
    let port = test_port(3);
    let mut t = SpdkTarget::start(&spdk, &s.0, "cycles", Some(&lib), &[], &[]);
    t.export("RDMA_RS", json!({}), NQN, port);
    let before = live_qps(&t);
    let (ok, out) = our_perf(
        &t,
        &our_bin(),
        port,
        &[
            "--ios",
            "1",
            "--time",
            "5",
            "-q",
            "1",
            "--cycles",
            &cycles.to_string(),
        ],
        Duration::from_secs(60 + cycles),
    );
    assert!(ok, "connect/disconnect cycles failed:\n{out}");
    assert!(
        out.contains(&format!(
            "cycles: {cycles} connect/I-O/disconnect cycles, 0 errors"
        )) || cycles == 1,
        "cycle summary missing:\n{out}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(live_qps(&t), before, "QPs leaked over {cycles} cycles");
    io_set(&mut t, port, false);
    t.stop_clean();
}
