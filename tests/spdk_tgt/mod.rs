//! An `nvmf_tgt` of a given SPDK tree over softrdma, for the link-mode and
//! trace tests (`spdk_link_mode.rs`, `spdk_trace.rs`): start it, drive it with
//! the tree's `scripts/rpc.py`, read its trace file with the tree's
//! `spdk_trace`, stop it. Uses `spdk_common` (declared by the test file).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::spdk_common::{
    env_u64, softrdma_ctl_in, softrdma_dir, wait_for_rpc, Proc, RpcClient, Scratch,
};

/// A running `nvmf_tgt`; stopped, then its scratch directory removed, on drop.
pub struct Tgt {
    /// The process (its log holds stdout and stderr).
    pub proc: Proc,
    /// JSON-RPC client on its socket.
    pub rpc: RpcClient,
    /// The SPDK tree it came from.
    pub spdk: PathBuf,
    /// Its softrdma fabric directory and socket; removed last.
    pub scratch: Scratch,
}

impl Tgt {
    /// Starts `<spdk>/build/bin/nvmf_tgt --no-huge` on core 0 (no core lock) with its
    /// libraries from `<spdk>/build/lib` and softrdma's, `LD_PRELOAD`ing
    /// `preload` when given, plus `extra` arguments; waits for its RPC socket.
    pub fn start(spdk: &Path, tag: &str, preload: Option<&Path>, extra: &[&str]) -> Tgt {
        let softrdma = softrdma_dir();
        let scratch = Scratch(std::env::temp_dir().join(format!("{tag}-{}", std::process::id())));
        let shm = scratch.0.join("shm");
        std::fs::create_dir_all(&shm).expect("scratch dir");
        let sock = scratch.0.join("nvmf_tgt.sock");
        let mem = env_u64("SPDK_MEM_MB", 512).to_string();
        let mut cmd = Command::new(spdk.join("build/bin/nvmf_tgt"));
        // No core lock: other SPDK processes on the machine may run on
        // core 0 too (a lock would make the second start fail).
        cmd.args(["--no-huge", "-s", &mem, "--no-pci", "-m", "0x1"])
            .arg("--disable-cpumask-locks")
            .arg("-r")
            .arg(&sock)
            .args(extra)
            .env("LD_LIBRARY_PATH", lib_path(&softrdma, spdk))
            .env("SOFTRDMA_SHM_DIR", &shm)
            .env("SOFTRDMA_QUIET", "1");
        if let Some(lib) = preload {
            cmd.env("LD_PRELOAD", lib);
        }
        let mut proc = Proc::spawn("nvmf_tgt", cmd, scratch.0.join("nvmf_tgt.log"));
        let mut rpc = RpcClient { sock, next_id: 0 };
        wait_for_rpc(&mut proc, &mut rpc);
        Tgt {
            proc,
            rpc,
            spdk: spdk.to_path_buf(),
            scratch,
        }
    }

    /// Runs the tree's `scripts/rpc.py` against this target: `Ok(stdout)`
    /// or `Err(stdout + stderr)`.
    pub fn rpc_py(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("python3")
            .arg(self.spdk.join("scripts/rpc.py"))
            .arg("-s")
            .arg(&self.rpc.sock)
            .args(["-t", "30"])
            .args(args)
            .output()
            .expect("running scripts/rpc.py");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(stdout + &String::from_utf8_lossy(&out.stderr))
        }
    }

    /// Exports a 16 MiB malloc bdev as namespace 1 of subsystem `nqn`, with
    /// a `trtype` listener on 127.0.0.1:`port` (the transport must exist);
    /// returns the `-r` argument of `spdk_nvme_perf` for it.
    pub fn export_malloc(&self, nqn: &str, trtype: &str, port: &str) -> String {
        let listener = [
            "nvmf_subsystem_add_listener",
            nqn,
            "-t",
            trtype,
            "-a",
            "127.0.0.1",
            "-s",
            port,
            "-f",
            "ipv4",
        ];
        for args in [
            &["bdev_malloc_create", "-b", "Malloc0", "32", "512"][..],
            &[
                "nvmf_create_subsystem",
                nqn,
                "-a",
                "-s",
                "SPDK00000000000001",
            ],
            &["nvmf_subsystem_add_ns", nqn, "Malloc0"],
            &listener,
        ] {
            self.rpc_py(args)
                .unwrap_or_else(|e| panic!("{args:?}: {e}\n{}", self.proc.log_tail()));
        }
        format!("trtype:RDMA adrfam:IPv4 traddr:127.0.0.1 trsvcid:{port} subnqn:{nqn}")
    }

    /// The tracepoint definitions in this target's trace file, as the tree's
    /// `spdk_trace -j` prints them (`{name, id, new_object, args}` objects).
    pub fn tpoints(&self) -> Vec<Value> {
        let v = self.trace_json();
        v["tpoints"]
            .as_array()
            .unwrap_or_else(|| panic!("no tpoints in spdk_trace -j output: {v}"))
            .clone()
    }

    /// `spdk_trace -j` over this target's trace file: `tsc_rate`, `tpoints`
    /// (definitions) and `entries` (recorded events, `tpoint` = id).
    pub fn trace_json(&self) -> Value {
        let out = Command::new(self.spdk.join("build/bin/spdk_trace"))
            .args(["-j", "-s", "nvmf", "-p", &self.proc.child.id().to_string()])
            .env("LD_LIBRARY_PATH", self.spdk.join("build/lib"))
            .output()
            .expect("running spdk_trace");
        assert!(out.status.success(), "spdk_trace failed: {out:?}");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "spdk_trace -j printed no JSON ({e}):\n{}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Runs the tree's `spdk_nvme_perf` (core 1, no hugepages) against an
    /// RDMA listener of this target for `secs` seconds; returns its output
    /// (panics when it fails).
    pub fn perf(&self, trid: &str, args: &[&str], secs: u64) -> String {
        let (ok, text) = self.try_perf(trid, args, secs);
        assert!(ok, "spdk_nvme_perf failed:\n{text}");
        text
    }

    /// [`Tgt::perf`] that may fail: whether it exited 0, and its output.
    pub fn try_perf(&self, trid: &str, args: &[&str], secs: u64) -> (bool, String) {
        let mem = env_u64("SPDK_MEM_MB", 512).to_string();
        // `timeout` bounds a perf that would not finish on its own.
        let out = Command::new("timeout")
            .arg((secs + 60).to_string())
            .arg(self.spdk.join("build/bin/spdk_nvme_perf"))
            .args(["--no-huge", "-s", &mem, "-c", "0x2"])
            .args(args)
            .args(["-t", &secs.to_string(), "-r", trid])
            .env("LD_LIBRARY_PATH", lib_path(&softrdma_dir(), &self.spdk))
            .env("SOFTRDMA_SHM_DIR", self.scratch.0.join("shm"))
            .env("SOFTRDMA_QUIET", "1")
            .output()
            .expect("running spdk_nvme_perf");
        let text = format!(
            "{}{}({})",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            out.status
        );
        (out.status.success(), text)
    }

    /// `softrdma-ctl <args>` against this target's fabric (panics when it
    /// fails); e.g. `send <pid> qperr *`.
    pub fn softrdma_ctl(&self, args: &[&str]) -> String {
        softrdma_ctl_in(&softrdma_dir(), &self.scratch.0.join("shm"), args)
    }

    /// SIGINT, then asserts a clean exit (status 0, no panic or crash in the
    /// log); returns the log.
    pub fn stop_cleanly(&mut self) -> String {
        assert!(
            self.proc.exited().is_none(),
            "nvmf_tgt died:\n{}",
            self.proc.log_tail()
        );
        let _ = Command::new("kill")
            .args(["-INT", &self.proc.child.id().to_string()])
            .status();
        let status = self.proc.wait_bounded(Duration::from_secs(60));
        let log = self.proc.log_text();
        assert!(status.success(), "nvmf_tgt exited with {status}:\n{log}");
        for bad in ["panic", "Segmentation", "Aborted"] {
            assert!(!log.contains(bad), "{bad} in the nvmf_tgt log:\n{log}");
        }
        log
    }
}

/// softrdma's libraries first, then the SPDK tree's.
fn lib_path(softrdma: &Path, spdk: &Path) -> String {
    format!(
        "{}:{}",
        softrdma.display(),
        spdk.join("build/lib").display()
    )
}

/// The tracepoint named `name` among `tpoints`, or a panic listing them.
pub fn tpoint<'a>(tpoints: &'a [Value], name: &str) -> &'a Value {
    tpoints
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| {
            let names: Vec<&Value> = tpoints.iter().map(|t| &t["name"]).collect();
            panic!("no tracepoint {name} in the trace file; it has {names:?}")
        })
}
