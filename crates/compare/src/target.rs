//! One `nvmf_tgt` of a comparison: started over softrdma with hugepages,
//! configured over RPC (transport, bdevs, subsystems, listener), stopped,
//! and examined after a crash (core backtrace, hugepage files removed).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::child::{tail, Ended, Proc};
use crate::env::{Env, Kind, TargetSpec, TARGET_MEM_MB};
use crate::rpc::{Rpc, RpcError};

/// Subsystem with the malloc bdev (the verified-I/O probe's and the fault
/// loads' namespace).
pub const NQN_MALLOC: &str = "nqn.2016-06.io.spdk:compare-malloc";
/// Subsystems of the verified-I/O probes, one small malloc bdev each:
/// probes running at the same time (and the loads) never write each
/// other's blocks, so a mismatch can only be the target's doing.
pub const NQN_PROBES: [&str; 4] = [
    "nqn.2016-06.io.spdk:compare-probe0",
    "nqn.2016-06.io.spdk:compare-probe1",
    "nqn.2016-06.io.spdk:compare-probe2",
    "nqn.2016-06.io.spdk:compare-probe3",
];
/// Size of each probe bdev: 8 MiB of 512-byte blocks.
const PROBE_BLOCKS: u64 = 16_384;
/// Subsystem with the null bdev.
pub const NQN_NULL: &str = "nqn.2016-06.io.spdk:compare-null";
/// Subsystem with the aio bdev of an interrupt-mode measurement
/// ([`TargetConfig::aio_file`]).
pub const NQN_AIO: &str = "nqn.2016-06.io.spdk:compare-aio";
/// Subsystem with a delay bdev over a second malloc bdev (slow backend).
pub const NQN_DELAY: &str = "nqn.2016-06.io.spdk:compare-delay";
/// Malloc bdev size: 64 MiB of 512-byte blocks.
const MALLOC_BLOCKS: u64 = 131_072;
/// Null bdev size: 1 GiB of 512-byte blocks.
const NULL_BLOCKS: u64 = 2_097_152;
/// How long a start-up may take.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How a target is set up.
#[derive(Debug, Clone, Default)]
pub struct TargetConfig {
    /// Reactor mask (`-m`).
    pub mask: String,
    /// Extra `nvmf_create_transport` parameters.
    pub transport: Value,
    /// `SOFTRDMA_FAULTS` from start-up.
    pub faults: Option<String>,
    /// Add the delay subsystem with this latency (µs) on every I/O.
    pub delay_us: Option<u64>,
    /// Program and arguments `nvmf_tgt` runs under (e.g. valgrind).
    pub wrapper: Vec<String>,
    /// Extra `nvmf_tgt` arguments.
    pub extra_args: Vec<String>,
    /// Start-up bound instead of the default 30 s.
    pub start_timeout: Option<Duration>,
    /// Serve only an aio bdev on this file (subsystem [`NQN_AIO`]) instead
    /// of the malloc, null and probe bdevs: SPDK's aio bdev sleeps in
    /// interrupt mode, while malloc and null bdevs have period-0 pollers
    /// that keep the reactor spinning (so whole-process counts would follow
    /// wall time).
    pub aio_file: Option<PathBuf>,
}

/// Why a target could not be brought up.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `nvmf_tgt` could not be started.
    #[error("starting {bin}: {err}")]
    Spawn {
        /// Program.
        bin: String,
        /// Error.
        err: String,
    },
    /// It ended during set-up.
    #[error("nvmf_tgt ended during set-up ({ended}); log tail:\n{tail}")]
    Exited {
        /// How.
        ended: Ended,
        /// Last log lines.
        tail: String,
    },
    /// Its RPC socket did not open.
    #[error("nvmf_tgt did not open its RPC socket in time; log tail:\n{0}")]
    NoRpc(String),
    /// A set-up call failed.
    #[error("{0}")]
    Rpc(#[from] RpcError),
    /// The transport refused the listener: the scenario cannot run on it.
    #[error("listener refused: {0}")]
    ListenRefused(String),
}

/// A configured, listening target.
pub struct Target {
    /// The process.
    pub proc: Proc,
    /// Its RPC client.
    pub rpc: Rpc,
    /// Listener port on 127.0.0.1.
    pub port: u16,
    /// Its fabric directory (`SOFTRDMA_SHM_DIR`) shared with its hosts.
    pub shm: PathBuf,
    /// Its scratch directory.
    pub dir: PathBuf,
    /// The `nvmf_tgt` program (for backtraces).
    pub bin: PathBuf,
    /// `LD_LIBRARY_PATH` it runs with.
    pub ld_path: String,
}

impl Target {
    /// Starts and configures a target of `spec`.
    pub fn start(env: &Env, spec: &TargetSpec, cfg: &TargetConfig) -> Result<Target, StartError> {
        let dir = env
            .scratch(&format!("{}-{}", spec.label, cfg.mask))
            .map_err(|e| StartError::Spawn {
                bin: "scratch dir".into(),
                err: e.to_string(),
            })?;
        let bin = spec.tree.nvmf_tgt();
        let sock = dir.join("nvmf_tgt.sock");
        let ld_path = env.ld_path(&spec.tree.dir);
        // Through sh so a crash leaves a core in `dir` for the backtrace.
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("ulimit -c unlimited 2>/dev/null; exec \"$0\" \"$@\"");
        match cfg.wrapper.split_first() {
            Some((prog, args)) => {
                cmd.arg(prog).args(args).arg(&bin);
            }
            None => {
                cmd.arg(&bin);
            }
        }
        cmd.args([
            "-m",
            &cfg.mask,
            "-s",
            &TARGET_MEM_MB.to_string(),
            "-g",
            "--no-pci",
            // Other SPDK programs on the machine may hold core 0 as well.
            "--disable-cpumask-locks",
            "-r",
        ])
        .arg(&sock)
        .args(&cfg.extra_args)
        .current_dir(&dir)
        .env("LD_LIBRARY_PATH", &ld_path)
        .env("SOFTRDMA_SHM_DIR", dir.join("shm"))
        .env("SOFTRDMA_QUIET", "1")
        .env("SOFTRDMA_FAULT_LOG", dir.join("faults.log"));
        if let Some(f) = &cfg.faults {
            cmd.env("SOFTRDMA_FAULTS", f);
        }
        if let Kind::Ours(lib) = &spec.kind {
            cmd.env("LD_PRELOAD", lib);
        }
        let proc = Proc::spawn("nvmf_tgt", cmd, &dir.join("nvmf_tgt.log")).map_err(|e| {
            StartError::Spawn {
                bin: bin.display().to_string(),
                err: e.to_string(),
            }
        })?;
        let mut t = Target {
            proc,
            rpc: Rpc::new(sock),
            port: env.next_port(),
            shm: dir.join("shm"),
            dir,
            bin,
            ld_path,
        };
        t.wait_rpc(cfg.start_timeout.unwrap_or(START_TIMEOUT))?;
        t.configure(spec, cfg)?;
        Ok(t)
    }

    fn wait_rpc(&mut self, timeout: Duration) -> Result<(), StartError> {
        let start = Instant::now();
        loop {
            if let Some(ended) = self.proc.poll() {
                return Err(StartError::Exited {
                    ended,
                    tail: self.proc.log_tail(20),
                });
            }
            if self.rpc.sock.exists() && self.rpc.call("spdk_get_version", Value::Null).is_ok() {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(StartError::NoRpc(self.proc.log_tail(20)));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn configure(&mut self, spec: &TargetSpec, cfg: &TargetConfig) -> Result<(), StartError> {
        let mut transport = json!({ "trtype": spec.trtype() });
        if let Some(extra) = cfg.transport.as_object() {
            for (k, v) in extra {
                transport[k] = v.clone();
            }
        }
        self.setup_call("nvmf_create_transport", transport)?;
        let subsystems = match &cfg.aio_file {
            Some(file) => {
                self.setup_call(
                    "bdev_aio_create",
                    json!({ "name": "Aio0", "filename": file, "block_size": 512 }),
                )?;
                vec![(NQN_AIO, "Aio0".to_string())]
            }
            None => self.standard_bdevs(cfg)?,
        };
        for (i, (nqn, bdev)) in subsystems.iter().enumerate() {
            self.setup_call(
                "nvmf_create_subsystem",
                json!({ "nqn": nqn, "allow_any_host": true,
                        "serial_number": format!("COMPARE{:013}", i + 1) }),
            )?;
            self.setup_call(
                "nvmf_subsystem_add_ns",
                json!({ "nqn": nqn, "namespace": { "bdev_name": bdev } }),
            )?;
            let listen = json!({ "nqn": nqn, "listen_address": {
                "trtype": spec.trtype(), "adrfam": "IPv4", "traddr": "127.0.0.1",
                "trsvcid": self.port.to_string() } });
            if let Err(e) = self.rpc.call("nvmf_subsystem_add_listener", listen) {
                return Err(StartError::ListenRefused(self.refusal_reason(e)));
            }
        }
        Ok(())
    }

    /// The fault campaign's and the matrix's bdevs: the malloc bdev, the
    /// null bdev, the probes' and (`cfg.delay_us`) the delay bdev; their
    /// subsystems' (NQN, bdev) pairs.
    fn standard_bdevs(
        &mut self,
        cfg: &TargetConfig,
    ) -> Result<Vec<(&'static str, String)>, StartError> {
        self.setup_call(
            "bdev_malloc_create",
            json!({ "name": "Malloc0", "num_blocks": MALLOC_BLOCKS, "block_size": 512 }),
        )?;
        self.setup_call(
            "bdev_null_create",
            json!({ "name": "Null0", "num_blocks": NULL_BLOCKS, "block_size": 512 }),
        )?;
        let mut subsystems = vec![
            (NQN_MALLOC, "Malloc0".to_string()),
            (NQN_NULL, "Null0".to_string()),
        ];
        for (i, nqn) in NQN_PROBES.iter().enumerate() {
            let name = format!("Probe{i}");
            self.setup_call(
                "bdev_malloc_create",
                json!({ "name": name, "num_blocks": PROBE_BLOCKS, "block_size": 512 }),
            )?;
            subsystems.push((nqn, name));
        }
        if let Some(us) = cfg.delay_us {
            self.setup_call(
                "bdev_malloc_create",
                json!({ "name": "Malloc1", "num_blocks": MALLOC_BLOCKS, "block_size": 512 }),
            )?;
            self.setup_call(
                "bdev_delay_create",
                json!({ "base_bdev_name": "Malloc1", "name": "Delay0",
                        "avg_read_latency": us, "p99_read_latency": us,
                        "avg_write_latency": us, "p99_write_latency": us }),
            )?;
            subsystems.push((NQN_DELAY, "Delay0".to_string()));
        }
        Ok(subsystems)
    }

    fn setup_call(&mut self, method: &str, params: Value) -> Result<Value, StartError> {
        self.rpc
            .call(method, params)
            .map_err(|e| match self.proc.poll() {
                Some(ended) => StartError::Exited {
                    ended,
                    tail: self.proc.log_tail(20),
                },
                None => StartError::Rpc(e),
            })
    }

    /// The transport's own log line about the listener (the text after
    /// SPDK's `*ERROR*:` tag; a transport's "cannot listen" line before
    /// the generic layer's), then the RPC error.
    fn refusal_reason(&self, e: RpcError) -> String {
        let log = self.proc.log_text();
        let pick = |want: &str| {
            log.lines().rev().find(|l| l.contains(want)).map(|l| {
                l.rsplit_once("*ERROR*: ")
                    .map_or(l, |(_, m)| m)
                    .trim()
                    .to_string()
            })
        };
        match pick("cannot listen").or_else(|| pick("listen")) {
            Some(l) => format!("{l} (RPC: {e})"),
            None => e.to_string(),
        }
    }

    /// `trtype:RDMA … subnqn:<nqn>` for `spdk_nvme_perf -r`.
    pub fn trid(&self, nqn: &str) -> String {
        format!(
            "trtype:RDMA adrfam:IPv4 traddr:127.0.0.1 trsvcid:{} subnqn:{nqn}",
            self.port
        )
    }

    /// Stops with SIGINT (SIGKILL after `grace`); how it ended and whether
    /// it needed the SIGKILL. Removes hugepage files a dead target left.
    pub fn stop(&mut self, grace: Duration) -> (Ended, bool) {
        let r = self.proc.stop(grace);
        self.cleanup_hugepages();
        r
    }

    /// Removes DPDK's files of this (dead) process: hugepage files and its
    /// runtime directory; a clean exit has removed them already.
    pub fn cleanup_hugepages(&self) {
        let prefix = format!("spdk_pid{}", self.proc.pid());
        for d in ["/dev/hugepages", "/var/run/dpdk"] {
            let Ok(rd) = std::fs::read_dir(d) else {
                continue;
            };
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let p = e.path();
                    let _ = if p.is_dir() {
                        std::fs::remove_dir_all(&p)
                    } else {
                        std::fs::remove_file(&p)
                    };
                }
            }
        }
    }

    /// After a crash: the backtrace of the core in the scratch directory
    /// (gdb), or `None`; the core is deleted afterwards.
    pub fn backtrace(&self) -> Option<String> {
        let core = std::fs::read_dir(&self.dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("core"))
            })?;
        let bt = gdb_backtrace(&self.bin, &core, &self.ld_path);
        let _ = std::fs::remove_file(&core);
        bt
    }
}

impl Drop for Target {
    /// A target dropped without [`Target::stop`] (a failed set-up, an
    /// early return) is stopped too, and its hugepage files removed.
    fn drop(&mut self) {
        self.stop(Duration::from_secs(15));
    }
}

/// `bt` of `core` with gdb (bounded by `timeout 120`): the frame lines.
fn gdb_backtrace(bin: &Path, core: &Path, ld_path: &str) -> Option<String> {
    let out = Command::new("timeout")
        .arg("120")
        .arg("gdb")
        .args(["-batch", "-nx", "-ex", "set pagination off", "-ex", "bt 12"])
        .arg(bin)
        .arg(core)
        .env("LD_LIBRARY_PATH", ld_path)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let frames: Vec<&str> = text.lines().filter(|l| l.starts_with('#')).collect();
    (!frames.is_empty()).then(|| tail(&frames.join("\n"), 12))
}
