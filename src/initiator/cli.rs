//! Command-line options of the `perf` tool, shared by
//! `examples/initiator_perf.rs` and the project binary's `perf` subcommand.
//! Pure parsing, no I/O.

use std::time::Duration;

use super::controller::ControllerConfig;
use super::perf::{PerfConfig, Workload};
use super::queue::SglMode;

/// Help text listing every option.
pub const PERF_USAGE: &str = "\
perf options (defaults in brackets):
  --addr ADDR:PORT     target address, IPv4 or [IPv6] [127.0.0.1:4420]
  --nqn NQN            subsystem NQN [nqn.2016-06.io.spdk:cnode1]
  --hostnqn NQN        host NQN [nqn.2014-08.org.nvmexpress:uuid:6e766d66-...]
  --workload W         randread | randwrite | read | write | randrw [randread]
  --read-pct N         read percentage for randrw [50]
  --io-size BYTES      bytes per I/O, multiple of the block size [4096]
  --qd N               outstanding I/Os per queue [32]
  --queues N           I/O queues, one thread each [1]
  --secs S             run time in seconds (fractions allowed) [5]
  --ios N              stop after N I/Os in total [0 = no limit]
  --sgl MODE           keyed | icd | multi:N (N keyed descriptors, 1..16) [keyed]
  --verify             check every read against the last write of that chunk
  --prefill            write the whole region once before the run
  --region BYTES       use only the first BYTES of the namespace [whole]
  --nsid N             namespace id [first active]
  --max-io-size BYTES  per-command buffer size [max(131072, io-size)]
  --no-in-capsule      never use in-capsule data
  --responder-resources N  RDMA READs the target may have outstanding per queue [16]
  --busy-poll          spin instead of sleeping on the completion channel
  --kato-ms MS         keep-alive timeout to request; keep-alives every kato/2 [0]
  --connect-timeout-ms MS  [5000]
  --command-timeout-ms MS  [10000]
  --seed N             PRNG seed [1]";

/// Parse `perf` options (without the program name) into a [`PerfConfig`].
pub fn parse_perf_args<I: IntoIterator<Item = String>>(args: I) -> Result<PerfConfig, String> {
    let default_addr = std::net::SocketAddr::from(([127, 0, 0, 1], 4420));
    let mut cfg = PerfConfig::new(ControllerConfig::new(
        default_addr,
        "nqn.2016-06.io.spdk:cnode1",
    ));
    let mut read_pct: Option<u8> = None;
    let mut max_io: Option<u32> = None;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or(format!("{a} needs a value"));
        fn num<T: std::str::FromStr>(opt: &str, s: String) -> Result<T, String>
        where
            T::Err: std::fmt::Display,
        {
            s.parse::<T>().map_err(|e| format!("{opt} {s:?}: {e}"))
        }
        match a.as_str() {
            "--addr" => cfg.controller.addr = num("--addr", val()?)?,
            "--nqn" => cfg.controller.subnqn = val()?,
            "--hostnqn" => cfg.controller.hostnqn = val()?,
            "--workload" => cfg.workload = val()?.parse::<Workload>().map_err(|e| e.to_string())?,
            "--read-pct" => read_pct = Some(num::<u8>("--read-pct", val()?)?.min(100)),
            "--io-size" => cfg.io_size = num("--io-size", val()?)?,
            "--qd" => cfg.queue_depth = num("--qd", val()?)?,
            "--queues" => cfg.controller.io_queues = num("--queues", val()?)?,
            "--secs" => {
                let s: f64 = num("--secs", val()?)?;
                if !(s.is_finite() && s >= 0.0) {
                    return Err(format!("--secs {s}: must be a non-negative number"));
                }
                cfg.duration = Duration::from_secs_f64(s);
            }
            "--ios" => cfg.io_limit = num("--ios", val()?)?,
            "--sgl" => {
                let v = val()?;
                cfg.sgl = match v.as_str() {
                    "keyed" => SglMode::Keyed,
                    "icd" | "in-capsule" => SglMode::InCapsule,
                    m if m.starts_with("multi:") => {
                        let n: u8 = num("--sgl multi:N", m[6..].to_string())?;
                        if !(1..=16).contains(&n) {
                            return Err(format!("--sgl {v}: N must be 1..16"));
                        }
                        SglMode::MultiKeyed(n)
                    }
                    _ => return Err(format!("--sgl {v}: expected keyed | icd | multi:N")),
                }
            }
            "--verify" => cfg.verify = true,
            "--prefill" => cfg.prefill = true,
            "--region" => cfg.region_bytes = num("--region", val()?)?,
            "--nsid" => cfg.nsid = num("--nsid", val()?)?,
            "--max-io-size" => max_io = Some(num("--max-io-size", val()?)?),
            "--no-in-capsule" => cfg.controller.in_capsule = false,
            "--responder-resources" => {
                cfg.controller.responder_resources = num("--responder-resources", val()?)?
            }
            "--busy-poll" => cfg.controller.busy_poll = true,
            "--kato-ms" => cfg.controller.kato_ms = num("--kato-ms", val()?)?,
            "--connect-timeout-ms" => {
                cfg.controller.connect_timeout =
                    Duration::from_millis(num("--connect-timeout-ms", val()?)?)
            }
            "--command-timeout-ms" => {
                cfg.controller.command_timeout =
                    Duration::from_millis(num("--command-timeout-ms", val()?)?)
            }
            "--seed" => cfg.seed = num("--seed", val()?)?,
            other => return Err(format!("unknown option {other:?}\n{PERF_USAGE}")),
        }
    }
    if let Some(p) = read_pct {
        if let Workload::RandRw { read_pct } = &mut cfg.workload {
            *read_pct = p;
        } else {
            return Err("--read-pct applies to --workload randrw".into());
        }
    }
    if cfg.queue_depth == 0 || cfg.controller.io_queues == 0 {
        return Err("--qd and --queues must be at least 1".into());
    }
    cfg.controller.io_depth = cfg.queue_depth.max(2);
    cfg.controller.max_io_size = max_io.unwrap_or(131072).max(cfg.io_size);
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<PerfConfig, String> {
        parse_perf_args(s.split_whitespace().map(String::from))
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
        let c = parse(
            "--addr [::1]:4421 --nqn n1 --hostnqn h1 --workload randrw --read-pct 70 --io-size 8192 --qd 1 \
             --queues 2 --secs 0.5 --ios 100 --sgl multi:4 --verify --prefill --region 1048576 --nsid 3 \
             --max-io-size 262144 --no-in-capsule --responder-resources 2 --busy-poll --kato-ms 5000 \
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
    fn bad_input_is_an_error_not_a_panic() {
        for bad in [
            "--qd",
            "--qd x",
            "--qd 0",
            "--sgl multi:17",
            "--sgl multi:0",
            "--sgl foo",
            "--workload nope",
            "--read-pct 10",
            "--secs -1",
            "--addr localhost",
            "--bogus",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse("--io-size 1048576").unwrap().controller.max_io_size,
            1 << 20
        );
    }
}
