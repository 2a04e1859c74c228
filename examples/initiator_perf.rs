//! `perf`-style load generator against an NVMe/RDMA target: the same options
//! as the project binary's `nvmf-rdma-rs perf` (one definition,
//! [`nvmf_rdma_rs::initiator::PerfArgs`]).
//!
//! ```text
//! LD_LIBRARY_PATH=target/softrdma cargo run --release --example initiator_perf -- \
//!     --addr 127.0.0.1:4420 --nqn nqn.2016-06.io.spdk:cnode1 \
//!     --workload randread --io-size 4K --qd 32 --queues 1 --secs 5
//! ```
//!
//! Options: see `--help` or `docs/initiator.md`. Exit status: 0 success,
//! 1 connection or I/O errors, 2 bad arguments.

use std::process::ExitCode;

use clap::Parser;
use nvmf_rdma_rs::initiator::{run_perf, PerfArgs};

/// Drive I/O against an NVMe/RDMA target with the project's initiator.
#[derive(Parser)]
#[command(name = "initiator_perf")]
struct Cli {
    #[command(flatten)]
    perf: PerfArgs,
}

fn main() -> ExitCode {
    // Usage errors exit with status 2 (clap's convention).
    let cli = Cli::parse();
    let cfg = match cli.perf.to_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("initiator_perf: {e}");
            return ExitCode::from(2);
        }
    };
    match run_perf(&cfg) {
        Ok(rep) => {
            print!("{rep}");
            if rep.errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("initiator_perf: {e}");
            ExitCode::FAILURE
        }
    }
}
