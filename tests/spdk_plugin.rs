//! The RDMA_RS plugin in SPDK's own, unmodified `nvmf_tgt` (opt-in: needs an
//! SPDK build in `SPDK_DIR`, at build time and at run time).
//!
//! Starts `nvmf_tgt --no-huge` with `LD_PRELOAD=libnvmf_rdma_rs.so` over
//! softrdma and checks, with SPDK's `scripts/rpc.py`:
//! - the library registered `RDMA_RS` at load;
//! - bad option values fail `nvmf_create_transport` with a log line naming
//!   the option and the value (one refused by validation, one by decoding);
//! - good options succeed, and `nvmf_get_transports` and `save_config` show
//!   the same keys and values for `RDMA_RS` as for upstream's `RDMA` created
//!   with the same options;
//! - a listener on 127.0.0.1 is accepted and listed; one on a name that is
//!   not an IP address is refused with an error naming it;
//! - `nvmf_tgt` stays up and exits 0 on SIGINT, with no panic in its log.
//!
//! Environment: `SPDK_DIR` (unset: prints why it skips and passes),
//! `SOFTRDMA_LIB_DIR`, `SPDK_MEM_MB` as in `spdk_upstream.rs`. See
//! docs/spdk-plugin.md.

mod spdk_common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use spdk_common::*;

const NQN: &str = "nqn.2016-06.io.spdk:cnode1";

/// Runs SPDK's `scripts/rpc.py` against `sock`; returns (success, output).
fn rpc_py(spdk: &Path, sock: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("python3")
        .arg(spdk.join("scripts/rpc.py"))
        .arg("-s")
        .arg(sock)
        .args(["-t", "30"])
        .args(args)
        .output()
        .expect("running scripts/rpc.py");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The `params` of the transport named `trtype` with `trtype` removed.
fn without_trtype(list: &Value, trtype: &str) -> Value {
    let mut v = list
        .as_array()
        .and_then(|a| a.iter().find(|t| t["trtype"] == trtype))
        .unwrap_or_else(|| panic!("no {trtype} in {list}"))
        .clone();
    v.as_object_mut().unwrap().shift_remove("trtype");
    v
}

/// The `nvmf_create_transport` params objects of `save_config`'s nvmf section.
fn saved_transports(config: &Value) -> Value {
    let nvmf = config["subsystems"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["subsystem"] == "nvmf"))
        .unwrap_or_else(|| panic!("no nvmf subsystem in save_config: {config}"));
    Value::Array(
        nvmf["config"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["method"] == "nvmf_create_transport")
            .map(|e| e["params"].clone())
            .collect(),
    )
}

#[test]
fn rdma_rs_plugin_in_unmodified_nvmf_tgt() {
    let Some(spdk) = std::env::var_os("SPDK_DIR").map(PathBuf::from) else {
        eprintln!(
            "SPDK_DIR not set: skipping the RDMA_RS plugin test in SPDK's nvmf_tgt \
             (see docs/spdk-plugin.md)"
        );
        return;
    };
    if !cfg!(spdk) {
        panic!(
            "SPDK_DIR is set but this crate was built without it: the plugin glue is not in \
             the library. Rebuild with SPDK_DIR set (cargo rebuilds when it changes)."
        );
    }
    let lib = cdylib();
    let scratch = Scratch(std::env::temp_dir().join(format!("spdk-plugin-{}", std::process::id())));
    std::fs::create_dir_all(&scratch.0).expect("scratch dir");
    // `-L rdma_rs`: nvmf_tgt refuses to start on an unknown log flag, so
    // starting at all shows the component was registered at load.
    let SpdkTarget {
        proc: mut tgt,
        mut rpc,
        sock,
        ..
    } = SpdkTarget::start(
        &spdk,
        &scratch.0,
        "nvmf_tgt",
        Some(&lib),
        &["-L", "rdma_rs"],
        &[],
    );
    assert!(
        tgt.log_text()
            .contains("registered NVMe-oF transport RDMA_RS (trtype RDMA)"),
        "no registration line in the nvmf_tgt log:\n{}",
        tgt.log_tail()
    );

    // Debug lines are printed with SPDK's print level at DEBUG and only
    // while the rdma_rs flag is on: on for the first bad create, off for the
    // second.
    rpc.call("log_set_print_level", json!({ "level": "DEBUG" }));
    let debug_line = "RDMA_RS: create: RDMA keys in the parameters";
    // Bad values first: a second create of a name that exists is refused
    // before the transport sees its options.
    for (i, (args, named)) in [
        (
            &["-n", "16"][..],
            "num_shared_buffers 16 is below the minimum 32",
        ),
        (
            &["--max-srq-depth", "-1"][..],
            "option max_srq_depth: -1 is not an unsigned 32-bit integer",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let mut all = vec!["nvmf_create_transport", "-t", "RDMA_RS"];
        all.extend_from_slice(args);
        let (ok, out) = rpc_py(&spdk, &sock, &all);
        assert!(!ok, "nvmf_create_transport {args:?} succeeded:\n{out}");
        let log = tgt.log_text();
        assert!(
            log.contains(&format!("RDMA_RS: nvmf_create_transport refused: {named}")),
            "no error naming the option for {args:?} in the nvmf_tgt log:\n{}",
            tgt.log_tail()
        );
        assert_eq!(
            log.matches(debug_line).count(),
            1,
            "debug lines after create {i} (flag on for the first only):\n{}",
            tgt.log_tail()
        );
        if i == 0 {
            rpc.call("log_clear_flag", json!({ "flag": "rdma_rs" }));
        }
    }

    // Good options, the same for ours and upstream's.
    let good = [
        "-s", "1024", "-l", "50", "-r", "-d", "2048", "-c", "8192", "-q", "64",
    ];
    for trtype in ["RDMA_RS", "RDMA"] {
        let mut all = vec!["nvmf_create_transport", "-t", trtype];
        all.extend_from_slice(&good);
        let (ok, out) = rpc_py(&spdk, &sock, &all);
        assert!(
            ok,
            "nvmf_create_transport -t {trtype} failed:\n{out}\n{}",
            tgt.log_tail()
        );
    }
    let listed = rpc.call("nvmf_get_transports", Value::Null);
    let ours = without_trtype(&listed, "RDMA_RS");
    let upstream = without_trtype(&listed, "RDMA");
    assert_eq!(
        serde_json::to_string(&ours).unwrap(),
        serde_json::to_string(&upstream).unwrap(),
        "nvmf_get_transports: RDMA_RS and RDMA differ (keys, order or values)"
    );
    // SPDK's writer would emit a key twice if dump_opts wrote a generic key
    // again, and parsing keeps only one: count the keys in SPDK's raw reply.
    let raw = rpc.call_raw("nvmf_get_transports", Value::Null);
    for key in ours.as_object().unwrap().keys() {
        let n = raw.matches(&format!("\"{key}\":")).count();
        assert_eq!(n, 2, "key {key} appears {n} times for 2 transports:\n{raw}");
    }
    assert_eq!(ours["max_srq_depth"], 1024);
    assert_eq!(ours["num_cqe"], 2048);
    assert_eq!(ours["acceptor_backlog"], 50);
    assert_eq!(ours["no_srq"], true);
    assert_eq!(ours["in_capsule_data_size"], 8192);

    // save_config is rpc.py's own (it gathers framework_get_config per
    // subsystem): run it as a user would.
    let out = Command::new("python3")
        .arg(spdk.join("scripts/rpc.py"))
        .arg("-s")
        .arg(&sock)
        .args(["-t", "30", "save_config"])
        .output()
        .expect("running scripts/rpc.py save_config");
    assert!(out.status.success(), "save_config failed: {out:?}");
    let config: Value = serde_json::from_slice(&out.stdout).expect("save_config prints JSON");
    let saved = saved_transports(&config);
    let saved_ours = without_trtype(&saved, "RDMA_RS");
    assert_eq!(
        serde_json::to_string(&saved_ours).unwrap(),
        serde_json::to_string(&without_trtype(&saved, "RDMA")).unwrap(),
        "save_config: RDMA_RS and RDMA differ"
    );
    assert_eq!(
        saved_ours, ours,
        "save_config and nvmf_get_transports differ for RDMA_RS"
    );

    // A listener works; a malformed address is refused, naming it.
    rpc.call(
        "nvmf_create_subsystem",
        json!({ "nqn": NQN, "allow_any_host": true }),
    );
    let port = 44000 + (std::process::id() % 1000) as u16;
    rpc.call(
        "nvmf_subsystem_add_listener",
        json!({ "nqn": NQN, "listen_address": {
            "trtype": "RDMA_RS", "adrfam": "IPv4", "traddr": "127.0.0.1",
            "trsvcid": port.to_string() } }),
    );
    let listeners = rpc.call("nvmf_subsystem_get_listeners", json!({ "nqn": NQN }));
    assert!(
        listeners.to_string().contains(&port.to_string()),
        "listener not listed: {listeners}"
    );
    let refused = rpc.try_call(
        "nvmf_subsystem_add_listener",
        json!({ "nqn": NQN, "listen_address": {
            "trtype": "RDMA_RS", "adrfam": "IPv4", "traddr": "nothost", "trsvcid": "44999" } }),
    );
    assert!(
        refused.is_err(),
        "a listener on 'nothost' was accepted: {refused:?}"
    );
    assert!(
        tgt.log_text()
            .contains("traddr \"nothost\" is not an IP address"),
        "no listen error naming the address:\n{}",
        tgt.log_tail()
    );

    // Still up, then a clean exit on SIGINT.
    assert!(tgt.exited().is_none(), "nvmf_tgt died:\n{}", tgt.log_tail());
    let _ = Command::new("kill")
        .args(["-INT", &tgt.child.id().to_string()])
        .status();
    let status = tgt.wait_bounded(Duration::from_secs(60));
    let log = tgt.log_text();
    assert!(
        status.success(),
        "nvmf_tgt exited with {status}:\n{}",
        tgt.log_tail()
    );
    for bad in ["panic", "Segmentation", "Aborted"] {
        assert!(!log.contains(bad), "{bad} in the nvmf_tgt log:\n{log}");
    }
    assert!(
        log.contains("RDMA_RS: transport") && log.contains("destroyed"),
        "the RDMA_RS transport was not destroyed at exit:\n{}",
        tgt.log_tail()
    );
    eprintln!("nvmf_tgt log:\n{log}");
}
