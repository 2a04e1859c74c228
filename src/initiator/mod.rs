//! An NVMe/RDMA host (initiator) library, used by the tests and the demo.
//!
//! Layers, bottom up:
//! - [`Queue`]: one RDMA-connected NVMe queue (admin or I/O). It resolves
//!   the address and route, creates a PD, a CQ with a completion channel, a
//!   QP and three registered buffers (command capsules, response capsules,
//!   one data buffer per command slot), posts one receive per entry, and
//!   connects with the NVMe-oF RDMA CM private data (`qid`, `hrqsize`,
//!   `hsqsize`, `cntlid`). Commands are queued with [`Queue::submit`] and
//!   posted in one batch at the next [`Queue::flush`] / [`Queue::poll`]. A
//!   command finishes when both its SEND completion and its response are
//!   in. Data is described with a keyed SGL (the target RDMA READs/WRITEs
//!   our slot buffer), with in-capsule data for writes that fit, or with a
//!   Last Segment descriptor pointing at up to 16 keyed descriptors placed in
//!   the capsule (so one write needs several RDMA READs).
//! - [`Controller`]: admin queue + Fabrics Connect (cntlid 0xFFFF), Property
//!   Get CAP/VS, Property Set CC.EN and wait for CSTS.RDY, Identify
//!   controller / active namespace list / namespaces, Set Features Number of
//!   Queues, then N I/O queues connected with the admin's cntlid.
//! - [`run_perf`]: a load generator over all I/O queues (one thread each),
//!   with optional pattern verification and a latency histogram.
//!
//! Robustness: every wait has a timeout; every failure is an
//! [`InitiatorError`] naming the queue; a queue whose connection dropped
//! (CM DISCONNECTED, an error completion, a timeout) reports the error on
//! every later call, and [`Controller::reconnect`] builds a fresh
//! association.
//!
//! ```no_run
//! use nvmf_rdma_rs::initiator::*;
//! let mut cfg = ControllerConfig::new("127.0.0.1:4420".parse().unwrap(), "nqn.2016-06.io.spdk:cnode1");
//! cfg.io_queues = 1;
//! let mut perf = PerfConfig::new(cfg);
//! perf.workload = Workload::RandWrite;
//! perf.verify = true;
//! let report = run_perf(&perf).expect("connect");
//! println!("{report}");
//! ```
#![forbid(unsafe_code)]

mod cli;
mod controller;
mod error;
mod histogram;
pub mod pattern;
mod perf;
mod queue;
pub mod wire;

pub use cli::PerfArgs;
pub use controller::{Controller, ControllerConfig};
pub use error::{InitiatorError, Result};
pub use histogram::{LatencyHistogram, LatencySummary};
pub use perf::{run_perf, PerfConfig, PerfReport, Workload};
pub use queue::{Done, Payload, Queue, QueueOptions, SglMode};
