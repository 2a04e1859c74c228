//! `perf`-style load generator against an NVMe/RDMA target.
//!
//! ```text
//! LD_LIBRARY_PATH=target/softrdma cargo run --release --example initiator_perf -- \
//!     --addr 127.0.0.1:4420 --nqn nqn.2016-06.io.spdk:cnode1 \
//!     --workload randread --io-size 4096 --qd 32 --queues 1 --secs 5
//! ```
//!
//! Options (defaults in brackets): `--addr` [127.0.0.1:4420], `--nqn`
//! [nqn.2016-06.io.spdk:cnode1], `--workload` randread|randwrite|read|write|randrw
//! [randread], `--io-size` bytes [4096], `--qd` [32], `--queues` [1], `--secs` [5],
//! `--ios` total I/O limit [0 = none], `--sgl` keyed|icd|multi:N [keyed],
//! `--verify`, `--prefill`, `--region` bytes [whole namespace], `--nsid` [first],
//! `--busy-poll`, `--kato-ms` [0], `--seed` [1].

use std::process::ExitCode;
use std::time::Duration;

use nvmf_rdma_rs::initiator::{run_perf, ControllerConfig, PerfConfig, SglMode, Workload};

fn parse() -> Result<PerfConfig, String> {
    let mut args = std::env::args().skip(1);
    let mut cfg = PerfConfig::new(ControllerConfig::new(
        "127.0.0.1:4420".parse().map_err(|e| format!("{e}"))?,
        "nqn.2016-06.io.spdk:cnode1",
    ));
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        let num = |s: String| s.parse::<u64>().map_err(|e| format!("{a}: {e}"));
        match a.as_str() {
            "--addr" => cfg.controller.addr = val()?.parse().map_err(|e| format!("--addr: {e}"))?,
            "--nqn" => cfg.controller.subnqn = val()?,
            "--workload" => cfg.workload = val()?.parse::<Workload>().map_err(|e| e.to_string())?,
            "--io-size" => cfg.io_size = num(val()?)? as u32,
            "--qd" => cfg.queue_depth = num(val()?)? as u16,
            "--queues" => cfg.controller.io_queues = num(val()?)? as u16,
            "--secs" => {
                cfg.duration = Duration::from_secs_f64(
                    val()?.parse::<f64>().map_err(|e| format!("--secs: {e}"))?,
                )
            }
            "--ios" => cfg.io_limit = num(val()?)?,
            "--sgl" => {
                let v = val()?;
                cfg.sgl = match v.as_str() {
                    "keyed" => SglMode::Keyed,
                    "icd" | "in-capsule" => SglMode::InCapsule,
                    m if m.starts_with("multi:") => {
                        SglMode::MultiKeyed(num(m[6..].to_string())?.clamp(1, 16) as u8)
                    }
                    _ => return Err(format!("--sgl {v}: expected keyed|icd|multi:N")),
                }
            }
            "--verify" => cfg.verify = true,
            "--prefill" => cfg.prefill = true,
            "--region" => cfg.region_bytes = num(val()?)?,
            "--nsid" => cfg.nsid = num(val()?)? as u32,
            "--busy-poll" => cfg.controller.busy_poll = true,
            "--kato-ms" => cfg.controller.kato_ms = num(val()?)? as u32,
            "--seed" => cfg.seed = num(val()?)?,
            "-h" | "--help" => {
                return Err(
                    "see the doc comment of examples/initiator_perf.rs or docs/initiator.md".into(),
                )
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    cfg.controller.io_depth = cfg.queue_depth.max(2);
    cfg.controller.max_io_size = cfg.controller.max_io_size.max(cfg.io_size);
    Ok(cfg)
}

fn main() -> ExitCode {
    let cfg = match parse() {
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
