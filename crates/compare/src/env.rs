//! What every run needs: the SPDK trees, softrdma, this project's initiator
//! and plugin, a scratch directory and a port range.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};

use crate::tree::SpdkTree;

/// Memory (`-s`, MiB of hugepages) of each `nvmf_tgt`.
pub const TARGET_MEM_MB: u32 = 512;
/// Memory (`-s`, MiB of hugepages) of each `spdk_nvme_perf`.
pub const PERF_MEM_MB: u32 = 256;

/// Which transport a target runs.
#[derive(Debug, Clone)]
pub enum Kind {
    /// Upstream's `RDMA` of the tree.
    Upstream,
    /// This project's `RDMA_RS`, preloaded from this library.
    Ours(PathBuf),
}

/// One of the compared targets.
#[derive(Debug, Clone)]
pub struct TargetSpec {
    /// Name in the report (`upstream v26.01`, `RDMA_RS`…).
    pub label: String,
    /// The tree whose `nvmf_tgt` runs it.
    pub tree: SpdkTree,
    /// Transport.
    pub kind: Kind,
}

impl TargetSpec {
    /// `trtype` of `nvmf_create_transport` and of the listener.
    pub fn trtype(&self) -> &'static str {
        match self.kind {
            Kind::Upstream => "RDMA",
            Kind::Ours(_) => "RDMA_RS",
        }
    }

    /// Whether this is this project's transport.
    pub fn is_ours(&self) -> bool {
        matches!(self.kind, Kind::Ours(_))
    }
}

/// The fixed parts of a run.
pub struct Env {
    /// `SPDK_DIR`: its `spdk_nvme_perf` is the initiator of every run.
    pub spdk: SpdkTree,
    /// `spdk_nvme_perf` of `SPDK_DIR`.
    pub perf: PathBuf,
    /// softrdma's staged `libibverbs.so.1`, `librdmacm.so.1`, `softrdma-ctl`.
    pub softrdma: PathBuf,
    /// This project's `nvmf-rdma-rs` binary (verified-I/O probe).
    pub initiator: PathBuf,
    /// This binary (re-executed as the malformed host).
    pub self_exe: PathBuf,
    /// Scratch directory of the run.
    pub work: PathBuf,
    ports: AtomicU16,
    port_base: u16,
    port_count: u16,
    serial: AtomicU32,
}

impl Env {
    /// Assembles the environment; `ports` is `(first, count)`.
    pub fn new(
        spdk: SpdkTree,
        perf: PathBuf,
        softrdma: PathBuf,
        initiator: PathBuf,
        work: PathBuf,
        ports: (u16, u16),
    ) -> Env {
        Env {
            spdk,
            perf,
            softrdma,
            initiator,
            self_exe: std::env::current_exe().unwrap_or_else(|_| "nvmf-rdma-compare".into()),
            work,
            ports: AtomicU16::new(0),
            port_base: ports.0,
            port_count: ports.1.max(1),
            serial: AtomicU32::new(0),
        }
    }

    /// The next port of the range (round robin: a fresh one per target).
    pub fn next_port(&self) -> u16 {
        let i = self.ports.fetch_add(1, Ordering::Relaxed);
        self.port_base + i % self.port_count
    }

    /// A new numbered scratch directory named after `what`.
    pub fn scratch(&self, what: &str) -> std::io::Result<PathBuf> {
        let n = self.serial.fetch_add(1, Ordering::Relaxed) + 1;
        let slug: String = what
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let dir = self.work.join(format!("{n:04}-{slug}"));
        std::fs::create_dir_all(dir.join("shm"))?;
        Ok(dir)
    }

    /// `softrdma-ctl`.
    pub fn ctl(&self) -> PathBuf {
        self.softrdma.join("softrdma-ctl")
    }

    /// `LD_LIBRARY_PATH` for programs of `tree`: softrdma first.
    pub fn ld_path(&self, tree: &Path) -> String {
        format!(
            "{}:{}",
            self.softrdma.display(),
            tree.join("build/lib").display()
        )
    }
}
