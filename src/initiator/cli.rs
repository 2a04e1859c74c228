//! Command-line options of the `perf` tool, defined once and shared by the
//! project binary's `perf` subcommand and `examples/initiator_perf.rs`.
//! Pure parsing, no I/O.

use std::time::Duration;

use clap::Args;

use super::controller::ControllerConfig;
use super::perf::{PerfConfig, Workload};
use super::queue::SglMode;
use crate::size::{parse_size_or_zero, parse_size_u32};

/// Flags of `perf` (defaults: 4 KiB random reads, QD 32, one queue, 5 s).
#[derive(Args, Debug, Clone)]
pub struct PerfArgs {
    /// Target address `ADDR:PORT`, IPv4 or `[IPv6]`.
    #[arg(long, default_value = "127.0.0.1:4420")]
    pub addr: std::net::SocketAddr,
    /// Subsystem NQN.
    #[arg(long, default_value = "nqn.2016-06.io.spdk:cnode1")]
    pub nqn: String,
    /// Host NQN (default: this project's fixed host NQN).
    #[arg(long)]
    pub hostnqn: Option<String>,
    /// randread | randwrite | read | write | randrw | verify (= randrw --verify).
    #[arg(long, default_value = "randread")]
    pub workload: String,
    /// Read percentage for randrw / verify (0..=100, default 50).
    #[arg(long = "read-pct", value_parser = clap::value_parser!(u8).range(0..=100))]
    pub read_pct: Option<u8>,
    /// Bytes per I/O, a multiple of the block size (e.g. 4096, 4K, 1M).
    #[arg(long = "io-size", default_value = "4096", value_parser = parse_size_u32)]
    pub io_size: u32,
    /// Outstanding I/Os per queue.
    #[arg(long = "queue-depth", short = 'q', visible_alias = "qd", default_value_t = 32,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub queue_depth: u16,
    /// I/O queues, one worker thread each.
    #[arg(long = "io-queues", visible_alias = "queues", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub io_queues: u16,
    /// Seconds to run (fractions allowed).
    #[arg(long, visible_alias = "secs", default_value_t = 5.0, value_parser = parse_seconds)]
    pub time: f64,
    /// Stop after this many I/Os in total (0 = time only).
    #[arg(long, default_value_t = 0)]
    pub ios: u64,
    /// Data descriptors: keyed, icd (in-capsule data), or multi:N (N keyed
    /// descriptors, 1..16).
    #[arg(long, default_value = "keyed", value_parser = parse_sgl)]
    pub sgl: SglMode,
    /// Check every read against the last write of that chunk (prefills the
    /// region first).
    #[arg(long)]
    pub verify: bool,
    /// Write the whole region once before the run.
    #[arg(long)]
    pub prefill: bool,
    /// Use only the first BYTES of the namespace (0 = all; e.g. 64M).
    #[arg(long, value_name = "BYTES", default_value = "0", value_parser = parse_size_or_zero)]
    pub region: u64,
    /// Namespace id (0 = the first active one).
    #[arg(long, default_value_t = 0)]
    pub nsid: u32,
    /// Per-command buffer size (default: max(128K, io-size)).
    #[arg(long = "max-io-size", value_name = "BYTES", value_parser = parse_size_u32)]
    pub max_io_size: Option<u32>,
    /// Never use in-capsule data.
    #[arg(long)]
    pub no_in_capsule: bool,
    /// RDMA READs the target may have outstanding per I/O queue (CM
    /// responder resources; a small value splits multi-descriptor writes
    /// into several READ batches).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u8).range(1..))]
    pub responder_resources: u8,
    /// Busy-poll the completion queue (lower latency, one core per queue).
    #[arg(long)]
    pub busy_poll: bool,
    /// Keep-alive timeout to request; keep-alives every kato/2 (0 = none).
    #[arg(long = "kato-ms", default_value_t = 0)]
    pub kato_ms: u32,
    /// Connect timeout in ms.
    #[arg(long = "connect-timeout-ms", default_value_t = 5000)]
    pub connect_timeout_ms: u64,
    /// Command timeout in ms.
    #[arg(long = "command-timeout-ms", default_value_t = 10000)]
    pub command_timeout_ms: u64,
    /// PRNG seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Repeat the whole run (connect, I/O, disconnect) this many times,
    /// stopping at the first failure: a connect/disconnect storm with
    /// `--ios 1`.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub cycles: u32,
}

impl PerfArgs {
    /// The [`PerfConfig`] these flags describe.
    pub fn to_config(&self) -> Result<PerfConfig, String> {
        let mut ctrl = ControllerConfig::new(self.addr, &self.nqn);
        if let Some(h) = &self.hostnqn {
            ctrl.hostnqn = h.clone();
        }
        ctrl.io_queues = self.io_queues;
        // The initiator needs a queue of at least 2 entries; QD 1 keeps one
        // I/O outstanding on such a queue.
        ctrl.io_depth = self.queue_depth.max(2);
        ctrl.busy_poll = self.busy_poll;
        ctrl.responder_resources = self.responder_resources;
        ctrl.in_capsule = !self.no_in_capsule;
        ctrl.kato_ms = self.kato_ms;
        ctrl.connect_timeout = Duration::from_millis(self.connect_timeout_ms);
        ctrl.command_timeout = Duration::from_millis(self.command_timeout_ms);
        ctrl.max_io_size = self
            .max_io_size
            .unwrap_or(ctrl.max_io_size)
            .max(self.io_size);
        let mut cfg = PerfConfig::new(ctrl);
        cfg.workload = self
            .workload
            .parse()
            .map_err(|e| format!("--workload {:?}: {e}", self.workload))?;
        if let Some(p) = self.read_pct {
            match &mut cfg.workload {
                Workload::RandRw { read_pct } => *read_pct = p,
                _ => {
                    return Err(format!(
                        "--read-pct {p} applies to --workload randrw / verify"
                    ))
                }
            }
        }
        cfg.io_size = self.io_size;
        cfg.queue_depth = self.queue_depth;
        cfg.duration = Duration::from_secs_f64(self.time);
        cfg.io_limit = self.ios;
        cfg.verify = self.verify || self.workload == "verify";
        cfg.prefill = self.prefill || cfg.verify;
        cfg.sgl = self.sgl;
        cfg.region_bytes = self.region;
        cfg.nsid = self.nsid;
        cfg.seed = self.seed;
        Ok(cfg)
    }
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..1e9).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds >= 0")),
    }
}

fn parse_sgl(s: &str) -> Result<SglMode, String> {
    match s {
        "keyed" => Ok(SglMode::Keyed),
        "icd" | "in-capsule" | "incapsule" => Ok(SglMode::InCapsule),
        _ => match s.strip_prefix("multi:").map(str::parse::<u8>) {
            Some(Ok(n)) if (1..=16).contains(&n) => Ok(SglMode::MultiKeyed(n)),
            _ => Err(format!("{s:?}: expected keyed, icd or multi:1..16")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        perf: PerfArgs,
    }

    fn parse(s: &str) -> Result<PerfConfig, String> {
        let cli = Cli::try_parse_from(std::iter::once("perf").chain(s.split_whitespace()))
            .map_err(|e| e.to_string())?;
        cli.perf.to_config()
    }

    #[test]
    fn defaults_and_all_options() {
        let d = parse("").unwrap();
        assert_eq!(d.controller.addr.port(), 4420);
        assert_eq!(d.workload, Workload::RandRead);
        assert_eq!(
            (d.io_size, d.queue_depth, d.controller.io_depth),
            (4096, 32, 32)
        );
        assert_eq!(d.duration, Duration::from_secs(5));
        assert_eq!(d.controller.max_io_size, 128 << 10);
        assert!(!d.verify && !d.prefill);
        let c = parse(
            "--addr [::1]:4421 --nqn n1 --hostnqn h1 --workload randrw --read-pct 70 --io-size 8K --qd 1 \
             --queues 2 --secs 0.5 --ios 100 --sgl multi:4 --verify --region 1MiB --nsid 3 \
             --max-io-size 256k --no-in-capsule --responder-resources 2 --busy-poll --kato-ms 5000 \
             --connect-timeout-ms 100 --command-timeout-ms 200 --seed 9",
        )
        .unwrap();
        assert_eq!(c.controller.addr, "[::1]:4421".parse().unwrap());
        assert_eq!(
            (c.controller.subnqn.as_str(), c.controller.hostnqn.as_str()),
            ("n1", "h1")
        );
        assert_eq!(c.workload, Workload::RandRw { read_pct: 70 });
        assert_eq!(
            (
                c.io_size,
                c.queue_depth,
                c.controller.io_depth,
                c.controller.io_queues
            ),
            (8192, 1, 2, 2)
        );
        assert_eq!(c.duration, Duration::from_millis(500));
        assert_eq!(
            (c.io_limit, c.region_bytes, c.nsid, c.seed),
            (100, 1 << 20, 3, 9)
        );
        assert_eq!(c.sgl, SglMode::MultiKeyed(4));
        assert!(c.verify && c.prefill && c.controller.busy_poll && !c.controller.in_capsule);
        assert_eq!(
            (
                c.controller.max_io_size,
                c.controller.responder_resources,
                c.controller.kato_ms
            ),
            (262144, 2, 5000)
        );
        assert_eq!(c.controller.connect_timeout, Duration::from_millis(100));
        assert_eq!(c.controller.command_timeout, Duration::from_millis(200));
    }

    #[test]
    fn binary_spellings_are_the_same_options() {
        let a = parse("-q 16 --io-queues 3 --time 2 --workload verify --sgl incapsule").unwrap();
        let b = parse("--qd 16 --queues 3 --secs 2 --workload verify --sgl icd").unwrap();
        for c in [&a, &b] {
            assert_eq!((c.queue_depth, c.controller.io_queues), (16, 3));
            assert_eq!(c.duration, Duration::from_secs(2));
            assert!(c.verify && c.prefill);
            assert_eq!(c.sgl, SglMode::InCapsule);
            assert_eq!(c.workload, Workload::RandRw { read_pct: 50 });
        }
    }

    #[test]
    fn bad_input_is_an_error_naming_the_option() {
        for (bad, names) in [
            ("--qd", "--queue-depth"),
            ("--qd x", "--queue-depth"),
            ("--qd 0", "--queue-depth"),
            ("--queues 0", "--io-queues"),
            ("--sgl multi:17", "--sgl"),
            ("--sgl multi:0", "--sgl"),
            ("--sgl foo", "--sgl"),
            ("--workload nope", "--workload"),
            ("--read-pct 10", "--read-pct"),
            ("--read-pct 101", "--read-pct"),
            ("--secs -1", "-1"),
            ("--secs nan", "--time"),
            ("--addr localhost", "--addr"),
            ("--io-size 4X", "--io-size"),
            ("--io-size 0", "--io-size"),
            ("--io-size 8G", "--io-size"),
            ("--region 1.5G", "--region"),
            ("--bogus", "--bogus"),
        ] {
            let e = parse(bad).expect_err(bad);
            assert!(e.contains(names), "{bad}: {e}");
        }
        assert_eq!(
            parse("--io-size 1M").unwrap().controller.max_io_size,
            1 << 20
        );
    }
}
