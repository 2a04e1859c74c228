//! The hosts of a run: SPDK's `spdk_nvme_perf` (load and measurement) and
//! this project's `nvmf-rdma-rs perf --verify` (the verified-I/O probe).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde::Serialize;

use crate::child::{Ended, Proc};
use crate::env::{Env, PERF_MEM_MB};
use crate::target::{Target, NQN_PROBES};

/// One `spdk_nvme_perf` invocation.
#[derive(Debug, Clone, Serialize)]
pub struct Load {
    /// `-w`.
    pub pattern: &'static str,
    /// `-o` in bytes.
    pub size: u32,
    /// `-O` in bytes (SPDK driver I/O unit: fragments each I/O's SGL).
    pub unit: Option<u32>,
    /// `-q`.
    pub qd: u32,
    /// `-t` in seconds.
    pub secs: u32,
    /// `-P`: I/O queues (one per target poll group).
    pub qpairs: u32,
    /// 0: no latency tracking, 1: `-L`, 2: `-LL`.
    pub latency: u8,
    /// Subsystem.
    pub nqn: &'static str,
}

impl Load {
    /// The `spdk_nvme_perf` argument list against `target`.
    pub fn args(&self, trid: &str) -> Vec<String> {
        let mut a: Vec<String> = [
            "-s",
            &PERF_MEM_MB.to_string(),
            "-g",
            "-c",
            "0x2",
            "-q",
            &self.qd.to_string(),
            "-o",
            &self.size.to_string(),
            "-w",
            self.pattern,
            "-t",
            &self.secs.to_string(),
            "-P",
            &self.qpairs.to_string(),
            "-r",
            trid,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(u) = self.unit {
            a.extend(["-O".to_string(), u.to_string()]);
        }
        match self.latency {
            0 => {}
            1 => a.push("-L".into()),
            _ => a.push("-LL".into()),
        }
        a
    }

    /// The command against `target`: SPDK_DIR's `spdk_nvme_perf` over
    /// softrdma, line-buffered (`stdbuf -oL`) so its progress lines reach
    /// the log while it runs.
    pub fn command(&self, env: &Env, target: &Target) -> Command {
        let mut cmd = Command::new("stdbuf");
        cmd.arg("-oL")
            .arg(&env.perf)
            .args(self.args(&target.trid(self.nqn)))
            .env("LD_LIBRARY_PATH", env.ld_path(&env.spdk.dir))
            .env("SOFTRDMA_SHM_DIR", &target.shm)
            .env("SOFTRDMA_QUIET", "1");
        cmd
    }

    /// Starts it against `target`, output in `log`.
    pub fn spawn(&self, env: &Env, target: &Target, log: &Path) -> std::io::Result<Proc> {
        Proc::spawn("spdk_nvme_perf", self.command(env, target), log)
    }

    /// Bound on its run: its duration plus start-up and teardown.
    pub fn deadline(&self) -> Duration {
        Duration::from_secs(u64::from(self.secs) + 45)
    }
}

/// What the verified-I/O probe found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Probe {
    /// Verified I/O completed on a fresh connection.
    Ok,
    /// A read returned other data than written.
    Mismatch(String),
    /// The initiator failed (connect, I/O error) — the text says how.
    Failed(String),
    /// It did not finish within its deadline.
    TimedOut,
}

/// How long a probe may take in all.
pub const PROBE_DEADLINE: Duration = Duration::from_secs(25);

/// Verified random read/write for `secs` on a fresh connection to
/// `target`'s probe subsystem `slot` (0..4; concurrent probes take
/// different slots).
pub fn probe(env: &Env, target: &Target, slot: usize, log: &Path, secs: f32) -> Probe {
    let mut cmd = Command::new(&env.initiator);
    cmd.args(["perf", "--addr", &format!("127.0.0.1:{}", target.port)])
        .args(["--nqn", NQN_PROBES[slot % NQN_PROBES.len()]])
        .args([
            "--workload",
            "randrw",
            "--verify",
            "--region",
            "4M",
            "-q",
            "8",
        ])
        .args(["--time", &secs.to_string()])
        .args([
            "--connect-timeout-ms",
            "5000",
            "--command-timeout-ms",
            "8000",
        ])
        .env("LD_LIBRARY_PATH", &env.softrdma)
        .env("SOFTRDMA_SHM_DIR", &target.shm)
        .env("SOFTRDMA_QUIET", "1")
        .env("NVMF_RDMA_RS_LOG", "warn");
    let mut p = match Proc::spawn("nvmf-rdma-rs perf", cmd, log) {
        Ok(p) => p,
        Err(e) => return Probe::Failed(format!("cannot start {}: {e}", env.initiator.display())),
    };
    let ended = p.wait_for(PROBE_DEADLINE);
    classify_probe(ended, &p.log_text())
}

/// A probe's result from how it ended and its output.
pub fn classify_probe(ended: Option<Ended>, out: &str) -> Probe {
    match ended {
        None => Probe::TimedOut,
        Some(e) if e.success() => Probe::Ok,
        Some(e) => {
            if let Some(l) = out.lines().find(|l| l.contains("data mismatch")) {
                Probe::Mismatch(l.trim().to_string())
            } else {
                let last = out
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("(no output)");
                Probe::Failed(format!("{e}: {}", last.trim()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_arguments() {
        let l = Load {
            pattern: "randwrite",
            size: 45056,
            unit: Some(4096),
            qd: 128,
            secs: 3,
            qpairs: 2,
            latency: 2,
            nqn: crate::target::NQN_NULL,
        };
        let a = l.args("trtype:RDMA x").join(" ");
        assert!(a.contains("-q 128 -o 45056 -w randwrite -t 3 -P 2 -r trtype:RDMA x -O 4096 -LL"));
        assert!(a.starts_with("-s 256 -g -c 0x2"));
    }

    #[test]
    fn probe_outcomes() {
        assert_eq!(classify_probe(None, ""), Probe::TimedOut);
        assert_eq!(classify_probe(Some(Ended::Code(0)), "ios 5"), Probe::Ok);
        assert_eq!(
            classify_probe(
                Some(Ended::Code(1)),
                "x\nnvmf-rdma-rs: 1 error(s): data mismatch at lba 8 (byte 3): expected 0x01 got 0x00\n"
            ),
            Probe::Mismatch(
                "nvmf-rdma-rs: 1 error(s): data mismatch at lba 8 (byte 3): expected 0x01 got 0x00"
                    .into()
            )
        );
        assert_eq!(
            classify_probe(
                Some(Ended::Code(1)),
                "nvmf-rdma-rs: perf: connect refused\n\n"
            ),
            Probe::Failed("exit code 1: nvmf-rdma-rs: perf: connect refused".into())
        );
    }
}
