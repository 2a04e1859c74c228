//! `nvmf-rdma-rs`: the standalone NVMe/RDMA target (`target`), the #3463
//! fault demo (`demo`) and an I/O generator driving the initiator (`perf`).
//!
//! See `docs/target.md` for every flag.

mod demo;

/// Environment variable holding the log filter (`EnvFilter` syntax).
const LOG_ENV: &str = "NVMF_RDMA_RS_LOG";

use std::io::IsTerminal;
use std::process::ExitCode;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use nvmf_rdma_rs::initiator::{run_perf as run_initiator_perf, PerfArgs};
use nvmf_rdma_rs::size::{parse_size, parse_size_u32};
use nvmf_rdma_rs::standalone::MiniHost;
use nvmf_rdma_rs::standalone::{Driver, RunConfig};
use nvmf_rdma_rs::transport::TransportOptions;

/// NVMe-oF RDMA target transport in Rust: standalone target, demo and perf.
#[derive(Parser, Debug)]
#[command(name = "nvmf-rdma-rs", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the standalone NVMe-oF target (RAM namespaces) until Ctrl-C.
    Target(TargetArgs),
    /// Drive I/O against an NVMe/RDMA target with the project's initiator.
    Perf(PerfArgs),
    /// Target + initiator over softrdma with the SPDK #3463 fault sequence.
    Demo(demo::DemoArgs),
}

/// Flags of `target`.
#[derive(Args, Debug)]
struct TargetArgs {
    /// Listen address, `IPv4:PORT` or `[IPv6]:PORT` (repeatable).
    #[arg(
        long = "listen",
        value_name = "ADDR:PORT",
        default_value = "127.0.0.1:4420"
    )]
    listen: Vec<std::net::SocketAddr>,
    /// Subsystem NQN served.
    #[arg(long, default_value = "nqn.2016-06.io.spdk:cnode1")]
    nqn: String,
    /// A RAM namespace of this size (e.g. `64M`, `64MiB`, `1G`; repeatable;
    /// nsid in order).
    #[arg(long = "ram-ns", value_name = "SIZE", value_parser = parse_size)]
    ram_ns: Vec<u64>,
    /// Poll group threads.
    #[arg(long, default_value_t = 1)]
    threads: u16,
    /// Poll groups never sleep when idle (lowest latency, one busy core per
    /// thread); by default an idle group naps 200 µs after ~2000 empty polls.
    #[arg(long)]
    busy_poll: bool,
    /// Test mode of the host: complete commands inside the transport's
    /// execute call and free held commands / finish the qpair inside its
    /// disconnect request, as SPDK's generic layer does.
    #[arg(long)]
    reentrant_host: bool,
    /// Poll groups never poll: each sleeps until a completion channel fd or
    /// a message wakes it (SPDK's interrupt mode); at most 10 ms between
    /// runs for the controller's timers.
    #[arg(long, conflicts_with = "busy_poll")]
    interrupt_mode: bool,
    /// Seconds a qpair's teardown waits for the NIC to return its WRs before
    /// it is destroyed anyway.
    #[arg(long, default_value_t = 2)]
    drain_timeout_sec: u64,
    /// Print the validated transport options (`dump_opts` JSON) and exit.
    #[arg(long)]
    dump_opts: bool,
    /// Write the listen addresses to this file once listening (for scripts).
    #[arg(long, value_name = "PATH")]
    ready_file: Option<std::path::PathBuf>,
    /// Print counters and per-poller statistics (one JSON line) every N ms.
    #[arg(long, value_name = "MS")]
    stats_interval_ms: Option<u64>,
    #[command(flatten)]
    transport: TransportArgs,
}

/// Transport options under `rpc.py nvmf_create_transport`'s long option names.
/// Unset flags keep upstream's RDMA defaults.
#[derive(Args, Debug, Default, Clone)]
pub struct TransportArgs {
    /// Max number of outstanding I/O per queue (default 128).
    #[arg(long)]
    max_queue_depth: Option<u16>,
    /// Max number of I/O qpairs per controller (default 127).
    #[arg(long)]
    max_io_qpairs_per_ctrlr: Option<u16>,
    /// Max in-capsule data size in bytes (default 4096).
    #[arg(long, value_name = "BYTES", value_parser = parse_size_u32)]
    in_capsule_data_size: Option<u32>,
    /// Max I/O size in bytes (default 131072).
    #[arg(long, value_name = "BYTES", value_parser = parse_size_u32)]
    max_io_size: Option<u32>,
    /// I/O unit (data buffer) size in bytes (default 8192).
    #[arg(long, value_name = "BYTES", value_parser = parse_size_u32)]
    io_unit_size: Option<u32>,
    /// Max number of admin commands per admin queue (default 128).
    #[arg(long)]
    max_aq_depth: Option<u32>,
    /// Number of pooled data buffers (default 4095).
    #[arg(long)]
    num_shared_buffers: Option<u32>,
    /// Shared buffers reserved per poll group (default: computed).
    #[arg(long)]
    buf_cache_size: Option<u32>,
    /// CQ entries when SRQ is off (default 4096).
    #[arg(long)]
    num_cqe: Option<i32>,
    /// SRQ depth per poller (default 4096).
    #[arg(long)]
    max_srq_depth: Option<u32>,
    /// Disable shared receive queues.
    #[arg(long)]
    no_srq: bool,
    /// Post every WR at once instead of batching per poll.
    #[arg(long)]
    no_wr_batching: bool,
    /// Pending connections allowed at one time (default 100).
    #[arg(long)]
    acceptor_backlog: Option<i32>,
    /// Abort execution timeout in seconds (default 1).
    #[arg(long)]
    abort_timeout_sec: Option<u32>,
    /// RDMA data WR pool size (default 4095).
    #[arg(long)]
    data_wr_pool_size: Option<u32>,
    /// Acceptor polling interval in microseconds (default 10000).
    #[arg(long)]
    acceptor_poll_rate: Option<u32>,
    /// Keep-alive support granularity, units of 100 ms (default 100).
    #[arg(long)]
    kas: Option<u16>,
    /// Minimum keep-alive timeout in ms (default 10000).
    #[arg(long)]
    min_kato: Option<u32>,
    /// Disallow command passthru.
    #[arg(long)]
    disable_command_passthru: bool,
    /// Transport options as an `nvmf_create_transport` params JSON object,
    /// applied before the flags above (unknown keys ignored).
    #[arg(long, value_name = "JSON")]
    transport_json: Option<String>,
}

impl TransportArgs {
    /// The options these flags describe (not yet validated).
    pub fn to_options(&self) -> Result<TransportOptions, String> {
        let mut o = match &self.transport_json {
            Some(j) => TransportOptions::from_json_params(j).map_err(|e| e.to_string())?,
            None => TransportOptions::default(),
        };
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { o.$f = v; } )* };
        }
        set!(
            max_queue_depth,
            in_capsule_data_size,
            max_io_size,
            io_unit_size,
            max_aq_depth,
            num_shared_buffers,
            buf_cache_size,
            num_cqe,
            max_srq_depth,
            acceptor_backlog,
            abort_timeout_sec,
            data_wr_pool_size,
            acceptor_poll_rate,
            kas,
            min_kato
        );
        if let Some(v) = self.max_io_qpairs_per_ctrlr {
            o.max_qpairs_per_ctrlr = v
                .checked_add(1)
                .ok_or_else(|| format!("--max-io-qpairs-per-ctrlr {v} is too large"))?;
        }
        o.no_srq |= self.no_srq;
        o.no_wr_batching |= self.no_wr_batching;
        o.disable_command_passthru |= self.disable_command_passthru;
        Ok(o)
    }
}

fn run_perf(a: &PerfArgs) -> Result<(), String> {
    let cfg = a.to_config()?;
    for cycle in 1..=a.cycles {
        let report = run_initiator_perf(&cfg).map_err(|e| format!("perf (cycle {cycle}): {e}"))?;
        if !report.errors.is_empty() {
            return Err(format!(
                "cycle {cycle}: {} error(s): {}",
                report.errors.len(),
                report.errors.join("; ")
            ));
        }
        if cycle == a.cycles {
            println!("{report}");
        }
    }
    if a.cycles > 1 {
        println!(
            "cycles: {} connect/I-O/disconnect cycles, 0 errors",
            a.cycles
        );
    }
    Ok(())
}

/// Logs go to stderr at `default_level` unless `NVMF_RDMA_RS_LOG` (an
/// `EnvFilter` directive, e.g. `info` or `nvmf_rdma_rs::transport=debug`)
/// says otherwise; ANSI colours only when stderr is a terminal.
fn init_logging(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env(LOG_ENV)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

fn run_target(args: &TargetArgs) -> Result<(), String> {
    let mut opts = args.transport.to_options()?;
    let notices = opts
        .validate(u32::from(args.threads.max(1)))
        .map_err(|e| format!("invalid transport options: {e}"))?;
    for n in &notices {
        tracing::warn!("{n}");
    }
    if args.dump_opts {
        println!("{}", opts.dump_opts_json());
        return Ok(());
    }
    let ns = if args.ram_ns.is_empty() {
        vec![64 << 20]
    } else {
        args.ram_ns.clone()
    };
    let threads = args.threads.max(1);
    let host = Arc::new(
        MiniHost::new(&args.nqn, ns.clone(), &opts, &args.listen, threads)
            .map_err(|e| format!("target configuration: {e}"))?
            .reentrant(args.reentrant_host),
    );
    let run = RunConfig {
        poll_groups: threads,
        busy_poll: args.busy_poll,
        interrupt_mode: args.interrupt_mode,
        drain_timeout: std::time::Duration::from_secs(args.drain_timeout_sec.max(1)),
        ..RunConfig::default()
    };
    let transport = Driver::start(host.clone(), opts, &args.listen, run)
        .map_err(|e| format!("starting the transport: {e}"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    ctrlc::set_handler(move || s.store(true, Ordering::SeqCst))
        .map_err(|e| format!("installing the Ctrl-C handler: {e}"))?;
    println!(
        "nvmf-rdma-rs target: {} on {:?}, {} namespace(s) {:?}, {} poll group(s); Ctrl-C to stop",
        args.nqn,
        transport.listen_addrs(),
        ns.len(),
        ns,
        threads
    );
    if let Some(path) = &args.ready_file {
        let addrs: Vec<String> = transport
            .listen_addrs()
            .iter()
            .map(|a| a.to_string())
            .collect();
        std::fs::write(path, addrs.join("\n") + "\n")
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    let mut last = std::time::Instant::now();
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(std::time::Duration::from_millis(10));
        if let Some(every) = args.stats_interval_ms {
            if last.elapsed().as_millis() >= u128::from(every.max(10)) {
                last = std::time::Instant::now();
                print_stats(&transport, &host);
            }
        }
    }
    println!("shutting down");
    print_stats(&transport, &host);
    let counters = transport.shutdown();
    println!(
        "stopped: {}",
        serde_json::Value::Object(counters_json(&counters, &host))
    );
    Ok(())
}

/// The transport's counters plus the standalone host's `host_internal_errors`.
fn counters_json(
    c: &nvmf_rdma_rs::transport::ResourceCounters,
    host: &MiniHost,
) -> serde_json::Map<String, serde_json::Value> {
    let mut m = c.to_json();
    m.insert("host_internal_errors".into(), host.internal_errors().into());
    m
}

fn print_stats(t: &Driver, host: &MiniHost) {
    let groups: Vec<serde_json::Value> = t
        .stats()
        .iter()
        .map(|g| serde_json::Value::Object(g.to_json()))
        .collect();
    println!(
        "{}",
        serde_json::json!({"counters": serde_json::Value::Object(counters_json(&t.counters(), host)), "poll_groups": groups})
    );
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo tells its story on stdout; its logs stay at warn so the
    // story is not drowned. The target and perf log at info as before.
    init_logging(match cli.command {
        Command::Demo(_) => "warn",
        Command::Target(_) | Command::Perf(_) => "info",
    });
    let result = match &cli.command {
        Command::Target(a) => run_target(a),
        Command::Perf(a) => run_perf(a),
        Command::Demo(a) => demo::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nvmf-rdma-rs: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_every_form_users_write() {
        let cli = Cli::try_parse_from([
            "nvmf-rdma-rs",
            "target",
            "--ram-ns",
            "64MiB",
            "--ram-ns",
            "64MB",
            "--ram-ns",
            "1G",
            "--ram-ns",
            "4096",
            "--io-unit-size",
            "8k",
            "--max-io-size",
            "128KiB",
        ])
        .unwrap();
        let Command::Target(t) = cli.command else {
            panic!("expected target");
        };
        assert_eq!(t.ram_ns, [64 << 20, 64 << 20, 1 << 30, 4096]);
        let o = t.transport.to_options().unwrap();
        assert_eq!((o.io_unit_size, o.max_io_size), (8192, 128 << 10));
        let p = Cli::try_parse_from([
            "nvmf-rdma-rs",
            "perf",
            "--io-size",
            "4k",
            "--region",
            "64MiB",
        ])
        .unwrap();
        let Command::Perf(p) = p.command else {
            panic!("expected perf");
        };
        assert_eq!((p.io_size, p.region), (4096, 64 << 20));
    }

    #[test]
    fn a_bad_size_names_the_option_and_the_value() {
        for (args, option, value) in [
            (["target", "--ram-ns", "64X"], "--ram-ns", "64X"),
            (["target", "--ram-ns", "0"], "--ram-ns", "0"),
            (["target", "--io-unit-size", "5G"], "--io-unit-size", "5G"),
            (["perf", "--io-size", "big"], "--io-size", "big"),
            (["perf", "--region", "1.5G"], "--region", "1.5G"),
        ] {
            let e = Cli::try_parse_from(std::iter::once("nvmf-rdma-rs").chain(args))
                .unwrap_err()
                .to_string();
            assert!(e.contains(option) && e.contains(value), "{args:?}: {e}");
        }
    }

    #[test]
    fn flags_overlay_defaults() {
        let cli = Cli::try_parse_from([
            "nvmf-rdma-rs",
            "target",
            "--listen",
            "127.0.0.1:4420",
            "--listen",
            "[::1]:4421",
            "--max-queue-depth",
            "64",
            "--max-io-qpairs-per-ctrlr",
            "3",
            "--no-srq",
            "--transport-json",
            r#"{"num_cqe": 1024, "unknown": 1}"#,
        ])
        .unwrap();
        let Command::Target(t) = cli.command else {
            panic!("expected target");
        };
        assert_eq!(t.listen.len(), 2);
        assert!(t.listen[1].is_ipv6());
        let o = t.transport.to_options().unwrap();
        assert_eq!(o.max_queue_depth, 64);
        assert_eq!(o.max_qpairs_per_ctrlr, 4);
        assert!(o.no_srq);
        assert_eq!(o.num_cqe, 1024);
    }
}
