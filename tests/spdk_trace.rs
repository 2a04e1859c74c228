//! The RDMA_RS plugin's trace group in SPDK's own `nvmf_tgt` (opt-in: needs
//! an SPDK build in `SPDK_DIR`, at build time and at run time).
//!
//! Starts `nvmf_tgt` with `LD_PRELOAD=libnvmf_rdma_rs.so -e nvmf_rdma_rs`
//! over softrdma and checks that the group is known and enabled
//! (`trace_get_tpoint_group_mask`) and that `spdk_trace -j` reads our
//! tracepoint descriptions from the trace file next to upstream rdma.c's,
//! which is still loaded; then what `spdk_nvme_perf` runs record: every
//! request state a 4 KiB read and a 4 KiB write go through, in order, qpair
//! events, `RS_QP_ERROR` after a softrdma QP-error fault, and per-tracepoint
//! masks honoured.
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
        ("RS_REQ_NEW", 0, true, 2),
        ("RS_REQ_EXECUTING", 6, false, 1),
        ("RS_REQ_COMPLETED", 13, false, 2),
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

/// Tracepoint names by id in `spdk_trace -j` output.
fn tpoint_names(trace: &Value) -> std::collections::HashMap<u64, String> {
    trace["tpoints"]
        .as_array()
        .expect("tpoints")
        .iter()
        .map(|t| {
            (
                t["id"].as_u64().expect("tpoint id"),
                t["name"].as_str().expect("tpoint name").to_string(),
            )
        })
        .collect()
}

/// The listen port of I/O test `n` (this file's range: 45500-45599).
fn port(n: u64) -> u64 {
    spdk_common::env_u64("SPDK_TRACE_TEST_PORT", 45510) + n
}

/// `RS_REQ_*` bits of our group's mask (tracepoints 0..14).
const REQUEST_TPOINTS: u64 = 0x3fff;
/// `RS_REQ_EXECUTING` and `RS_REQ_EXECUTED`.
const EXECUTING_TPOINTS: u64 = 0xc0;

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
    let port = port(0).to_string();
    for trtype in ["RDMA_RS", "RDMA"] {
        tgt.rpc_py(&["nvmf_create_transport", "-t", trtype])
            .unwrap_or_else(|e| panic!("nvmf_create_transport -t {trtype}: {e}"));
    }
    // Request states other than executing/executed off (fewer entries per
    // I/O): the transport still reports every state, the disabled ones are
    // not recorded.
    let others = format!("{:#x}", REQUEST_TPOINTS & !EXECUTING_TPOINTS);
    tgt.rpc_py(&["trace_clear_tpoint_mask", "nvmf_rdma_rs", &others])
        .unwrap_or_else(|e| panic!("trace_clear_tpoint_mask: {e}"));
    let trid = tgt.export_malloc(NQN, "RDMA_RS", &port);
    // At most 5000 I/Os (`-d`): two entries each stay well inside the ring
    // (a fast 2 s run, 16K I/Os or more, overwrote the qpair events).
    let out = tgt.perf(
        &trid,
        &["-q", "8", "-o", "4096", "-w", "randread", "-d", "5000"],
        2,
    );
    eprintln!("spdk_nvme_perf:\n{out}");

    // Events: count per tracepoint name. The host's admin qpair may still
    // be tearing down on the target when perf exits: read the trace again
    // (at most 5 s) until both qpairs' destruction is in it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let counts = loop {
        let trace = tgt.trace_json();
        let names = tpoint_names(&trace);
        let mut counts: std::collections::HashMap<String, u64> = Default::default();
        for e in trace["entries"].as_array().expect("entries") {
            let id = e["tpoint"].as_u64().expect("tpoint id");
            *counts.entry(names[&id].clone()).or_default() += 1;
        }
        let destroyed = counts.get("RS_QP_DESTROY").copied().unwrap_or(0);
        if destroyed >= 2 || std::time::Instant::now() > deadline {
            break counts;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    };
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
    assert!(
        !counts
            .keys()
            .any(|n| n.starts_with("RS_REQ_") && !n.starts_with("RS_REQ_EXECUT")),
        "disabled tracepoints recorded: {counts:?}"
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

/// The request-state tracepoints a 4 KiB read (keyed SGL, controller to
/// host) goes through when nothing waits, in order.
const READ_PATH: [&str; 9] = [
    "RS_REQ_NEW",
    "RS_REQ_NEED_BUFFER",
    "RS_REQ_HAVE_BUFFER",
    "RS_REQ_RDY_TO_EXECUTE",
    "RS_REQ_EXECUTING",
    "RS_REQ_EXECUTED",
    "RS_REQ_RDY_TO_COMPL",
    "RS_REQ_COMPLETING_C2H",
    "RS_REQ_COMPLETED",
];

/// The same for a 4 KiB write with its data fetched by RDMA READ (keyed
/// SGL, host to controller).
const WRITE_PATH: [&str; 10] = [
    "RS_REQ_NEW",
    "RS_REQ_NEED_BUFFER",
    "RS_REQ_HAVE_BUFFER",
    "RS_REQ_TX_H2C",
    "RS_REQ_RDY_TO_EXECUTE",
    "RS_REQ_EXECUTING",
    "RS_REQ_EXECUTED",
    "RS_REQ_RDY_TO_COMPL",
    "RS_REQ_COMPLETING",
    "RS_REQ_COMPLETED",
];

/// The codes `RS_QP_ERROR` records (src/spdk/trace.rs `error_code`): an
/// `ibv_wc_status`, or 0x100..=0x103.
fn is_error_code(code: u64) -> bool {
    (1..=23).contains(&code) || (0x100..=0x103).contains(&code)
}

/// One request's life in the trace: from `RS_REQ_NEW` to `RS_REQ_COMPLETED`.
#[derive(Debug)]
struct Life {
    /// Which I/O qpair (1 = the first one created), 0 = an admin qpair.
    io_qpair: usize,
    /// The qpair argument of its `RS_REQ_NEW`.
    qpair: u64,
    /// Tracepoint names in order.
    names: Vec<String>,
    /// `qd` of its `RS_REQ_NEW` and `RS_REQ_COMPLETED`.
    qd: (u64, u64),
    /// Every event named the same qpair.
    one_qpair: bool,
}

/// What a trace holds of ours: the request lives and the qpair events as
/// (name, qpair, code).
struct Parsed {
    lives: Vec<Life>,
    qpair_events: Vec<(String, u64, u64)>,
}

/// Splits our group's entries of `trace` (`spdk_trace -j`) into request
/// lives (by the request object, cut at `RS_REQ_NEW`) and qpair events.
fn parse(trace: &Value) -> Parsed {
    let names = tpoint_names(trace);
    let mut open: std::collections::HashMap<u64, Life> = Default::default();
    // The I/O qpair ordinal of each qpair pointer, as of its last create.
    let mut qpairs: std::collections::HashMap<u64, usize> = Default::default();
    let (mut io_qpairs, mut lives, mut qpair_events) = (0, Vec::new(), Vec::new());
    for e in trace["entries"].as_array().expect("entries") {
        let id = e["tpoint"].as_u64().expect("tpoint id");
        if id / 64 != GROUP_ID {
            continue;
        }
        let name = names[&id].clone();
        let arg = |i: usize| e["args"][i].as_u64().unwrap_or(u64::MAX);
        if name.starts_with("RS_QP_") {
            if name == "RS_QP_CREATE" {
                let ordinal = if arg(1) == 0 {
                    0
                } else {
                    io_qpairs += 1;
                    io_qpairs
                };
                qpairs.insert(arg(0), ordinal);
            }
            qpair_events.push((name, arg(0), arg(1)));
            continue;
        }
        let object = e["object"]["value"].as_u64().expect("request object");
        if name == "RS_REQ_NEW" {
            // A life cut short (its qpair went away) is dropped.
            open.insert(
                object,
                Life {
                    io_qpair: qpairs.get(&arg(0)).copied().unwrap_or(usize::MAX),
                    qpair: arg(0),
                    names: Vec::new(),
                    qd: (arg(1), 0),
                    one_qpair: true,
                },
            );
        }
        // Entries before the life's NEW (the ring wrapped) are skipped.
        let Some(life) = open.get_mut(&object) else {
            continue;
        };
        life.names.push(name.clone());
        life.one_qpair &= arg(0) == life.qpair;
        if name == "RS_REQ_COMPLETED" {
            life.qd.1 = arg(1);
            lives.extend(open.remove(&object));
        }
    }
    Parsed {
        lives,
        qpair_events,
    }
}

/// `spdk_nvme_perf` 4 KiB reads, then 4 KiB writes, one at a time, over
/// an `RDMA_RS` listener whose in-capsule data size (256) makes the writes
/// fetch their data by RDMA READ: `spdk_trace` shows every request state
/// each goes through, in order, with upstream's arguments. Then, with the
/// request tracepoints switched off, a softrdma QP-error fault in the
/// middle of a run records `RS_QP_ERROR` (and the disconnect and destroy
/// of the qpairs) and no request state of the new qpairs.
#[test]
fn rdma_rs_request_states_and_qp_error() {
    let Some(spdk) = spdk_common::spdk_dir_or_skip(
        "the RDMA_RS request-state and QP-error trace test in SPDK's nvmf_tgt",
        cfg!(spdk),
    ) else {
        return;
    };
    let lib = spdk_common::cdylib();
    let mut tgt = Tgt::start(
        &spdk,
        "spdk-trace-states",
        Some(&lib),
        &["-e", "nvmf_rdma_rs"],
    );
    let port = port(1).to_string();
    tgt.rpc_py(&["nvmf_create_transport", "-t", "RDMA_RS", "-c", "256"])
        .unwrap_or_else(|e| panic!("nvmf_create_transport -t RDMA_RS: {e}"));
    let trid = tgt.export_malloc(NQN, "RDMA_RS", &port);
    const IOS: usize = 200;
    for workload in ["read", "write"] {
        let ios = IOS.to_string();
        let out = tgt.perf(
            &trid,
            &["-q", "1", "-o", "4096", "-w", workload, "-d", &ios],
            30,
        );
        eprintln!("spdk_nvme_perf -w {workload}:\n{out}");
    }

    let parsed = parse(&tgt.trace_json());
    let mut paths: std::collections::BTreeMap<(usize, String), usize> = Default::default();
    for l in &parsed.lives {
        *paths.entry((l.io_qpair, l.names.join(" "))).or_default() += 1;
    }
    eprintln!("request paths per I/O qpair (0 = admin): {paths:#?}");
    eprintln!("qpair events: {:?}", parsed.qpair_events);
    for (ordinal, path) in [(1, &READ_PATH[..]), (2, &WRITE_PATH[..])] {
        let lives: Vec<&Life> = parsed
            .lives
            .iter()
            .filter(|l| l.io_qpair == ordinal)
            .collect();
        // First the Fabrics CONNECT: 1 KiB of data fetched by RDMA READ
        // (beyond the 256 bytes in capsule), the write path.
        assert_eq!(
            lives.len(),
            IOS + 1,
            "I/O qpair {ordinal}: request lives traced: {paths:#?}"
        );
        assert_eq!(lives[0].names, WRITE_PATH, "I/O qpair {ordinal}: CONNECT");
        for (i, l) in lives.iter().enumerate() {
            let want = if i == 0 { &WRITE_PATH[..] } else { path };
            assert_eq!(l.names, want, "I/O qpair {ordinal}, request {i}: {l:?}");
            // One command at a time: the qpair's requests in use is 1, or 2
            // when the next command arrives before the last SEND is reaped.
            let (new, done) = l.qd;
            assert!(
                (1..=2).contains(&new) && (1..=2).contains(&done),
                "I/O qpair {ordinal}: {l:?}"
            );
            assert!(l.one_qpair, "I/O qpair {ordinal}: {l:?}");
        }
        eprintln!(
            "I/O qpair {ordinal}: CONNECT, then {IOS} requests, each {}",
            path.join(" → ")
        );
    }
    // Admin commands (connect, identify, ...) are traced too.
    assert!(
        parsed.lives.iter().any(|l| l.io_qpair == 0),
        "no admin request traced"
    );

    // Request states off: the core stops reporting them at its next poll.
    tgt.rpc_py(&[
        "trace_clear_tpoint_mask",
        "nvmf_rdma_rs",
        &format!("{REQUEST_TPOINTS:#x}"),
    ])
    .unwrap_or_else(|e| panic!("trace_clear_tpoint_mask: {e}"));
    let pid = tgt.proc.child.id().to_string();
    let ctl_tgt = &tgt;
    let out = std::thread::scope(|s| {
        let fault = s.spawn(|| {
            std::thread::sleep(std::time::Duration::from_millis(1500));
            ctl_tgt.softrdma_ctl(&["send", &pid, "qperr", "*"])
        });
        let out = ctl_tgt.try_perf(&trid, &["-q", "8", "-o", "4096", "-w", "randread"], 4);
        eprintln!(
            "softrdma-ctl qperr: {}",
            fault.join().expect("fault thread")
        );
        out
    });
    eprintln!("spdk_nvme_perf through the QP error (may fail):\n{}", out.1);
    // The qpairs the error hit are torn down (bounded by the drain).
    std::thread::sleep(std::time::Duration::from_secs(3));

    let parsed = parse(&tgt.trace_json());
    let errors: Vec<&(String, u64, u64)> = parsed
        .qpair_events
        .iter()
        .filter(|e| e.0 == "RS_QP_ERROR")
        .collect();
    eprintln!("RS_QP_ERROR events: {errors:?}");
    assert!(
        !errors.is_empty(),
        "no RS_QP_ERROR: {:?}",
        parsed.qpair_events
    );
    for (_, qpair, code) in &errors {
        assert!(is_error_code(*code), "RS_QP_ERROR code {code:#x}");
        let created = parsed
            .qpair_events
            .iter()
            .any(|e| e.0 == "RS_QP_CREATE" && e.1 == *qpair);
        let destroyed = parsed
            .qpair_events
            .iter()
            .any(|e| e.0 == "RS_QP_DESTROY" && e.1 == *qpair);
        assert!(
            created && destroyed,
            "qpair {qpair:#x}: {:?}",
            parsed.qpair_events
        );
    }
    let late: Vec<&Life> = parsed.lives.iter().filter(|l| l.io_qpair > 2).collect();
    assert!(late.is_empty(), "request states traced while off: {late:?}");
    tgt.stop_cleanly();
}
