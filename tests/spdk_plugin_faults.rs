//! Network faults against the RDMA_RS plugin inside SPDK's unmodified
//! `nvmf_tgt` (opt-in: needs an SPDK v26.01 build in `SPDK_DIR`, at build and
//! run time; prints why it skips otherwise).
//!
//! Each scenario starts its own `nvmf_tgt` over softrdma with a fault — set
//! at start (`SOFTRDMA_FAULTS` on the target) or injected at run time with
//! `softrdma-ctl send <pid> …` while a host is doing I/O — and then requires:
//! `nvmf_tgt` still running, the fault really injected (softrdma's
//! `faults_injected` counter or the event delivered), the rules cleared and a
//! fresh connection's verified I/O passing (the host reconnects), the
//! target's live QPs and CM ids back to their baseline once the hosts left,
//! `nvmf_get_stats` still answering with the RDMA_RS group, and a clean exit
//! on SIGINT. Device removal and return, and `RDMA_CM_EVENT_ADDR_CHANGE`,
//! also check the target's log for its account of the recovery (device
//! released, reopened, listening again). The first scenarios are SPDK issue #3463's sequence: an RDMA
//! READ of a write split by the read depth completing with "transport retry
//! counter exceeded", at several positions.
//!
//! Environment: as `spdk_plugin_io.rs`; `SPDK_FAULTS` = a comma-separated
//! list of scenario names runs only those.

mod spdk_common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use spdk_common::*;

const NQN: &str = "nqn.2016-06.io.spdk:cnode1";

/// The I/O running while the fault hits.
#[derive(Clone, Copy)]
enum Load {
    /// `spdk_nvme_perf -q 128 -o 45056 -O 4096 -w randwrite`: several RDMA
    /// READs per write, more than the read depth (the #3463 shape).
    Fragmented,
    /// `spdk_nvme_perf -q 32 -o 4096 -w randread` (RDMA WRITE + SEND).
    RandRead,
    /// This project's initiator, killed with SIGKILL after a second.
    KilledHost,
}

struct Scenario {
    name: &'static str,
    /// `SOFTRDMA_FAULTS` of the target.
    at_start: Option<&'static str>,
    /// `softrdma-ctl send <target pid>` commands, one second into the load.
    at_run: &'static [&'static str],
    /// Commands after the load (before the rules are cleared).
    after: &'static [&'static str],
    load: Load,
    /// Whether softrdma must count an injected fault on the target.
    counts_fault: bool,
    /// Lines the target's log must hold afterwards (the transport's own
    /// account of what it did).
    logged: &'static [&'static str],
    /// `nvmf_tgt` runs with `--interrupt-mode` (the groups' and the
    /// acceptor's fds change with the device).
    interrupt_mode: bool,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "3463-read-retry-exc-nth1",
        at_start: Some("fail:op=read,nth=1,status=retry_exc_err"),
        at_run: &[],
        after: &[],
        load: Load::Fragmented,
        counts_fault: true,
        logged: &[],
        interrupt_mode: false,
    },
    Scenario {
        name: "3463-read-retry-exc-nth3",
        at_start: Some("fail:op=read,nth=3,status=retry_exc_err"),
        at_run: &[],
        after: &[],
        load: Load::Fragmented,
        counts_fault: true,
        logged: &[],
        interrupt_mode: false,
    },
    Scenario {
        name: "3463-read-retry-exc-nth7",
        at_start: Some("fail:op=read,nth=7,status=retry_exc_err"),
        at_run: &[],
        after: &[],
        load: Load::Fragmented,
        counts_fault: true,
        logged: &[],
        interrupt_mode: false,
    },
    Scenario {
        name: "read-rem-access-err",
        at_start: Some("fail:op=read,nth=2,status=rem_access_err"),
        at_run: &[],
        after: &[],
        load: Load::Fragmented,
        counts_fault: true,
        logged: &[],
        interrupt_mode: false,
    },
    Scenario {
        name: "write-retry-exc",
        at_start: Some("fail:op=write,nth=3,status=retry_exc_err"),
        at_run: &[],
        after: &[],
        load: Load::RandRead,
        counts_fault: true,
        logged: &[],
        interrupt_mode: false,
    },
    Scenario {
        name: "send-rem-op-err",
        at_start: Some("fail:op=send,nth=5,status=rem_op_err"),
        at_run: &[],
        after: &[],
        load: Load::RandRead,
        counts_fault: true,
        logged: &[],
        interrupt_mode: false,
    },
    Scenario {
        name: "any-wr-rnr-retry-exc",
        at_start: Some("fail:op=any,nth=40,status=rnr_retry_exc_err"),
        at_run: &[],
        after: &[],
        load: Load::Fragmented,
        counts_fault: true,
        logged: &[],
        interrupt_mode: false,
    },
    Scenario {
        name: "qp-error-mid-io",
        at_start: None,
        at_run: &["qperr *"],
        after: &[],
        load: Load::Fragmented,
        counts_fault: false,
        logged: &[],
        interrupt_mode: false,
    },
    Scenario {
        name: "qp-error-lost-flushes",
        at_start: Some("loseflush:qp=*"),
        at_run: &["qperr *"],
        after: &[],
        load: Load::Fragmented,
        counts_fault: false,
        logged: &[],
        interrupt_mode: false,
    },
    Scenario {
        name: "port-error-then-active",
        at_start: None,
        at_run: &["async port_err"],
        after: &["async port_active"],
        load: Load::RandRead,
        counts_fault: false,
        logged: &[],
        interrupt_mode: false,
    },
    Scenario {
        name: "device-fatal",
        at_start: None,
        at_run: &["async device_fatal"],
        after: &[],
        load: Load::RandRead,
        counts_fault: false,
        logged: &[],
        interrupt_mode: false,
    },
    Scenario {
        name: "device-removal-and-return",
        at_start: None,
        at_run: &["async device_remove"],
        after: &["async device_add"],
        load: Load::RandRead,
        counts_fault: false,
        logged: &[
            "RDMA_CM_EVENT_DEVICE_REMOVAL on a listener",
            "device released (no poller or qpair left on it)",
            "device opened (rescan)",
            "listening again",
        ],
        interrupt_mode: false,
    },
    Scenario {
        name: "device-removal-and-return-interrupt-mode",
        at_start: None,
        at_run: &["async device_remove"],
        after: &["async device_add"],
        load: Load::RandRead,
        counts_fault: false,
        logged: &["device opened (rescan)", "listening again"],
        interrupt_mode: true,
    },
    Scenario {
        name: "addr-change",
        at_start: None,
        at_run: &["addr_change"],
        after: &[],
        load: Load::RandRead,
        counts_fault: true,
        logged: &["RDMA_CM_EVENT_ADDR_CHANGE on a listener"],
        interrupt_mode: false,
    },
    Scenario {
        name: "cm-drop",
        at_start: None,
        at_run: &["cmdrop *"],
        after: &[],
        load: Load::Fragmented,
        counts_fault: false,
        logged: &[],
        interrupt_mode: false,
    },
    Scenario {
        name: "host-killed-mid-io",
        at_start: None,
        at_run: &[],
        after: &[],
        load: Load::KilledHost,
        counts_fault: false,
        logged: &[],
        interrupt_mode: false,
    },
];

fn send(t: &SpdkTarget, cmd: &str) {
    let pid = t.proc.child.id().to_string();
    let mut args = vec!["send", pid.as_str()];
    args.extend(cmd.split(' '));
    t.softrdma_ctl(&args);
}

fn run_scenario(spdk: &std::path::Path, sc: &Scenario, port: u16) {
    eprintln!("=== fault scenario {} ===", sc.name);
    let s = Scratch(std::env::temp_dir().join(format!(
        "spdk-fault-{}-{}",
        sc.name,
        std::process::id()
    )));
    std::fs::create_dir_all(&s.0).expect("scratch");
    let lib = cdylib();
    let env: Vec<(&str, &str)> = sc
        .at_start
        .map(|f| vec![("SOFTRDMA_FAULTS", f)])
        .unwrap_or_default();
    let extra: &[&str] = if sc.interrupt_mode {
        &["--interrupt-mode"]
    } else {
        &[]
    };
    let mut t = SpdkTarget::start(spdk, &s.0, "tgt", Some(&lib), extra, &env);
    t.export("RDMA_RS", json!({}), NQN, port);
    let baseline = (t.softrdma_counter("qps"), t.softrdma_counter("cm_ids"));
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_nvmf-rdma-rs"));

    let perf_args: &[&str] = match sc.load {
        Load::Fragmented => &["-q", "128", "-o", "45056", "-O", "4096", "-w", "randwrite"],
        Load::RandRead | Load::KilledHost => &["-q", "32", "-o", "4096", "-w", "randread"],
    };
    let mut host = match sc.load {
        Load::KilledHost => {
            let cmd = our_perf_cmd(
                &t,
                &bin,
                port,
                &["--workload", "randrw", "-q", "32", "--time", "30"],
            );
            Proc::spawn("nvmf-rdma-rs perf", cmd, s.0.join("host.log"))
        }
        _ => {
            let mut cmd = Command::new(spdk.join("build/bin/spdk_nvme_perf"));
            cmd.args(["--no-huge", "-s", "512", "-c", "0x2", "-t", "4"])
                .args(perf_args)
                .arg("-r")
                .arg(format!(
                    "trtype:RDMA adrfam:IPv4 traddr:127.0.0.1 trsvcid:{port} subnqn:{NQN}"
                ))
                .env("LD_LIBRARY_PATH", t.ld_path())
                .env("SOFTRDMA_SHM_DIR", &t.shm)
                .env("SOFTRDMA_QUIET", "1");
            Proc::spawn("spdk_nvme_perf", cmd, s.0.join("host.log"))
        }
    };
    std::thread::sleep(Duration::from_millis(1500));
    for c in sc.at_run {
        send(&t, c);
    }
    match sc.load {
        Load::KilledHost => {
            let _ = host.child.kill();
            let _ = host.child.wait();
        }
        _ => {
            // Errors on the faulted connection are expected; hanging is not.
            host.wait_bounded(Duration::from_secs(90));
        }
    }
    t.assert_alive(&format!("after fault {}", sc.name));
    if sc.counts_fault {
        assert!(
            t.softrdma_counter("faults_injected") > 0,
            "{}: the fault never fired (host log:\n{})",
            sc.name,
            host.log_tail()
        );
    }
    for c in sc.after {
        send(&t, c);
    }
    send(&t, "clear");
    drop(host);

    // A fresh connection's verified I/O passes (retried while the target
    // tears the faulted connection down).
    let mut last = String::new();
    let mut passed = false;
    for _ in 0..5 {
        let (ok, out) = our_perf(
            &t,
            &bin,
            port,
            &[
                "--workload",
                "verify",
                "--region",
                "8M",
                "-q",
                "16",
                "--time",
                "2",
            ],
            Duration::from_secs(60),
        );
        if ok {
            passed = true;
            break;
        }
        last = out;
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        passed,
        "{}: verified I/O on a fresh connection failed after the fault:\n{last}\ntarget:\n{}",
        sc.name,
        t.proc.log_tail()
    );
    t.assert_alive(&format!("after verify ({})", sc.name));

    for want in sc.logged {
        assert!(
            t.proc.log_text().contains(want),
            "{}: the target's log lacks {want:?}:\n{}",
            sc.name,
            t.proc.log_tail()
        );
    }

    // Everything of the faulted hosts is gone (after a device removal: the
    // listener's CM id is back on the new device); stats still answer.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut now = (t.softrdma_counter("qps"), t.softrdma_counter("cm_ids"));
    while now != baseline && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        now = (t.softrdma_counter("qps"), t.softrdma_counter("cm_ids"));
    }
    assert_eq!(
        now,
        baseline,
        "{}: target (qps, cm_ids) not back to baseline:\n{}",
        sc.name,
        t.proc.log_tail()
    );
    let stats = t.rpc.call("nvmf_get_stats", Value::Null);
    assert!(
        stats.to_string().contains("RDMA_RS"),
        "{}: nvmf_get_stats lacks RDMA_RS: {stats}",
        sc.name
    );
    t.stop_clean();
}

#[test]
fn rdma_rs_survives_faults() {
    let Some(spdk) = spdk_dir_or_skip("the RDMA_RS fault scenarios in SPDK's nvmf_tgt", cfg!(spdk))
    else {
        return;
    };
    let only: Option<Vec<String>> = std::env::var("SPDK_FAULTS")
        .ok()
        .map(|v| v.split(',').map(str::to_string).collect());
    let mut ran = 0;
    for (i, sc) in SCENARIOS.iter().enumerate() {
        if only
            .as_ref()
            .is_some_and(|o| !o.iter().any(|n| n == sc.name))
        {
            continue;
        }
        run_scenario(&spdk, sc, test_port(10 + i as u16));
        ran += 1;
    }
    assert!(ran > 0, "SPDK_FAULTS matched no scenario");
    eprintln!("{ran} fault scenarios passed");
}
