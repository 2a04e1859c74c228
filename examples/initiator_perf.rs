//! `perf`-style load generator against an NVMe/RDMA target.
//!
//! ```text
//! LD_LIBRARY_PATH=target/softrdma cargo run --release --example initiator_perf -- \
//!     --addr 127.0.0.1:4420 --nqn nqn.2016-06.io.spdk:cnode1 \
//!     --workload randread --io-size 4096 --qd 32 --queues 1 --secs 5
//! ```
//!
//! Options: see `--help` ([`nvmf_rdma_rs::initiator::PERF_USAGE`]) or
//! `docs/initiator.md`. Exit status: 0 success, 1 connection or I/O errors,
//! 2 bad arguments.

use std::process::ExitCode;

use nvmf_rdma_rs::initiator::{parse_perf_args, run_perf, PERF_USAGE};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{PERF_USAGE}");
        return ExitCode::SUCCESS;
    }
    let cfg = match parse_perf_args(args) {
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
