//! The fault campaign's scenario list, generated from a seed: every class of
//! issue 10 this harness implements, each instance with its softrdma rules,
//! timed actions, host load and transport variant (SRQ or not).

use serde::Serialize;
use serde_json::{json, Value};

use crate::hosts::Load;
use crate::rng::Rng;
use crate::target::{NQN_DELAY, NQN_MALLOC};

/// Scenario classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Class {
    /// Error status on a target SEND (response), RDMA WRITE (read data) or
    /// RDMA READ (write data).
    WrError,
    /// RDMA READ errors while writes are split by the read depth (#3463).
    ReadSplit,
    /// The host's capsule SEND fails: the target's RECV side sees the peer
    /// QP go to error and its receives flushed.
    HostSendError,
    /// Target QPs moved to error at a random point.
    QpError,
    /// QP to error with its flush completions lost.
    LostFlush,
    /// softrdma's random fault mix (seeded).
    RandomFaults,
    /// Port error held until the hosts time out.
    PortError,
    /// Port error and back, twice, under load.
    PortFlap,
    /// Device-fatal event under load.
    DeviceFatal,
    /// CM connection dropped mid-transfer.
    CmDisconnect,
    /// Host SIGKILLed mid-I/O.
    HostKilled,
    /// Connect/disconnect storm.
    ConnectStorm,
    /// Few shared buffers, large writes, new connections arriving.
    BufferExhaustion,
    /// Delay bdev; the host times its commands out and leaves.
    SlowBackend,
    /// SIGINT of nvmf_tgt under load.
    SigintUnderLoad,
    /// Malformed capsules from a misbehaving host.
    MalformedHost,
}

impl Class {
    /// Short name used in tables.
    pub fn name(self) -> &'static str {
        match self {
            Class::WrError => "WR error status (SEND/WRITE/READ)",
            Class::ReadSplit => "READ error, writes split by read depth (#3463)",
            Class::HostSendError => "host SEND error (target RECV side)",
            Class::QpError => "QP to error at a random point",
            Class::LostFlush => "QP error with lost flushes",
            Class::RandomFaults => "random fault mix",
            Class::PortError => "port error",
            Class::PortFlap => "port flap",
            Class::DeviceFatal => "device fatal",
            Class::CmDisconnect => "CM disconnect mid-transfer",
            Class::HostKilled => "host killed mid-I/O",
            Class::ConnectStorm => "connect/disconnect storm",
            Class::BufferExhaustion => "buffer exhaustion + new connections",
            Class::SlowBackend => "slow backend, host timeouts",
            Class::SigintUnderLoad => "SIGINT under load",
            Class::MalformedHost => "malformed capsules",
        }
    }
}

/// Something done at a point of the load.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Act {
    /// `softrdma-ctl send <nvmf_tgt pid> <command>`.
    Ctl(String),
    /// SIGKILL the load's host.
    KillHost,
    /// SIGINT nvmf_tgt.
    SigintTarget,
    /// Start this many (at most 3) verified-I/O probes at once (new
    /// connections) and wait for them.
    NewConnections(u32),
}

/// The host side of a scenario.
#[derive(Debug, Clone, Serialize)]
pub enum HostLoad {
    /// `spdk_nvme_perf`, optionally with its own softrdma rules.
    Perf {
        /// The run.
        load: Load,
        /// `SOFTRDMA_FAULTS` of the host.
        host_faults: Option<String>,
    },
    /// `cycles` rounds of `parallel` short verified runs.
    Storm {
        /// Rounds.
        cycles: u32,
        /// Hosts per round.
        parallel: u32,
    },
    /// This project's initiator against the delay subsystem with a command
    /// timeout shorter than the delay.
    TimeoutHost {
        /// Command timeout (ms).
        timeout_ms: u32,
    },
    /// The malformed-capsule host (this binary's `malformed-host` mode).
    Malformed {
        /// Seed of its choices.
        seed: u64,
    },
}

/// One scenario instance.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    /// Class.
    pub class: Class,
    /// Readable instance name (rules and variant).
    pub name: String,
    /// softrdma rules added to nvmf_tgt at run time (after the warm-up).
    pub rules: Vec<String>,
    /// Actions at ms offsets from the load's start.
    pub actions: Vec<(u64, Act)>,
    /// softrdma commands sent after the load, before the checks.
    pub after: Vec<String>,
    /// The host load.
    pub host: HostLoad,
    /// Extra `nvmf_create_transport` parameters (SRQ variant, buffers).
    pub transport: Value,
    /// Latency of the delay bdev (µs), if the scenario uses it.
    pub delay_us: Option<u64>,
    /// Where softrdma is unlike a real fabric in a way that may decide
    /// the outcome.
    pub note: Option<&'static str>,
}

/// Error statuses injected on target WRs.
pub const STATUSES: [&str; 7] = [
    "retry_exc_err",
    "rem_access_err",
    "rnr_retry_exc_err",
    "rem_op_err",
    "loc_prot_err",
    "loc_len_err",
    "general_err",
];

/// Campaign size and load length.
#[derive(Debug, Clone, Copy)]
pub struct Size {
    /// Instances per class (classes with several WR kinds get more).
    pub per_class: u32,
    /// Seconds of each load.
    pub secs: u32,
}

fn load(pattern: &'static str, size: u32, unit: Option<u32>, qd: u32, secs: u32) -> Load {
    Load {
        pattern,
        size,
        unit,
        qd,
        secs,
        qpairs: 1,
        latency: 0,
        nqn: NQN_MALLOC,
    }
}

/// The #3463 load: 44 KiB writes at 4 KiB SGL units, QD 128.
fn split_writes(secs: u32) -> Load {
    load("randwrite", 45056, Some(4096), 128, secs)
}

fn perf(load: Load) -> HostLoad {
    HostLoad::Perf {
        load,
        host_faults: None,
    }
}

const PORT_NOTE: &str =
    "softrdma's port_err loses the process's WRs until port_active, like a link loss; \
                         the context stays usable";
const FATAL_NOTE: &str =
    "softrdma keeps the device working after device_fatal (no removal, same context): \
                          a real device would be gone, so recovery here is easier than on hardware";

/// Appends a scenario with the SRQ variant `v` (transport parameters,
/// name suffix).
fn add(
    out: &mut Vec<Scenario>,
    class: Class,
    name: String,
    v: (Value, &str),
    rules: Vec<String>,
    actions: Vec<(u64, Act)>,
    host: HostLoad,
) {
    out.push(Scenario {
        class,
        name: format!("{name} [{}]", v.1),
        rules,
        actions,
        after: Vec::new(),
        host,
        transport: v.0,
        delay_us: None,
        note: None,
    });
}

/// The scenario list for `seed`.
pub fn scenarios(seed: u64, size: Size) -> Vec<Scenario> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    let k = size.per_class.max(1);
    let secs = size.secs.max(1);
    let mut srq_turn = 0u32;
    let mut variant = |rng: &mut Rng| {
        srq_turn += 1;
        let no_srq = (srq_turn + rng.range(0, 1) as u32) % 2 == 0;
        (
            if no_srq {
                json!({ "no_srq": true })
            } else {
                json!({})
            },
            if no_srq { "no-SRQ" } else { "SRQ" },
        )
    };

    for (i, op) in ["send", "write", "read"]
        .iter()
        .cycle()
        .take(3 * k as usize)
        .enumerate()
    {
        let status = STATUSES[(i + rng.range(0, 6) as usize) % STATUSES.len()];
        let nth = rng.range(1, 48);
        let l = match *op {
            "read" => split_writes(secs),
            _ => load("randread", 4096, None, 32, secs),
        };
        let rule = format!("fail:op={op},nth={nth},status={status}");
        let v = variant(&mut rng);
        add(
            &mut out,
            Class::WrError,
            rule.clone(),
            v,
            vec![rule],
            vec![],
            perf(l),
        );
    }
    for i in 0..k {
        let (nth, status) = if i == 0 {
            (3, "retry_exc_err")
        } else {
            (rng.range(1, 16), *rng.pick(&STATUSES))
        };
        let rule = format!("fail:op=read,nth={nth},status={status}");
        let v = variant(&mut rng);
        add(
            &mut out,
            Class::ReadSplit,
            rule.clone(),
            v,
            vec![rule],
            vec![],
            perf(split_writes(secs)),
        );
    }
    for _ in 0..k {
        let rule = format!(
            "fail:op=send,nth={},status={}",
            rng.range(2, 64),
            rng.pick(&STATUSES)
        );
        let v = variant(&mut rng);
        let host = HostLoad::Perf {
            load: load("randwrite", 4096, None, 32, secs),
            host_faults: Some(rule.clone()),
        };
        add(
            &mut out,
            Class::HostSendError,
            format!("host {rule}"),
            v,
            vec![],
            vec![],
            host,
        );
    }
    for _ in 0..k {
        let rule = format!("qperr:qp=*,after={}", rng.range(5, 400));
        let v = variant(&mut rng);
        add(
            &mut out,
            Class::QpError,
            rule.clone(),
            v,
            vec![rule],
            vec![],
            perf(split_writes(secs)),
        );
    }
    for _ in 0..k {
        let rules = vec![
            "loseflush:qp=*".to_string(),
            format!("qperr:qp=*,after={}", rng.range(5, 400)),
        ];
        let v = variant(&mut rng);
        add(
            &mut out,
            Class::LostFlush,
            rules.join(" + "),
            v,
            rules,
            vec![],
            perf(split_writes(secs)),
        );
    }
    for _ in 0..k {
        let rule = format!("random:seed={},rate=0.002", rng.next_u64() % 1_000_000);
        let v = variant(&mut rng);
        add(
            &mut out,
            Class::RandomFaults,
            rule.clone(),
            v,
            vec![rule],
            vec![],
            perf(split_writes(secs)),
        );
    }
    {
        let at = rng.range(500, 1500);
        let v = variant(&mut rng);
        add(
            &mut out,
            Class::PortError,
            format!("port_err at {at} ms, port_active after the load"),
            v,
            vec![],
            vec![(at, Act::Ctl("async port_err".into()))],
            perf(load("randwrite", 4096, None, 32, secs + 2)),
        );
        out.last_mut().unwrap().after = vec!["async port_active".into()];
        out.last_mut().unwrap().note = Some(PORT_NOTE);
    }
    {
        let at = rng.range(300, 900);
        let v = variant(&mut rng);
        let acts = vec![
            (at, Act::Ctl("async port_err".into())),
            (at + 150, Act::Ctl("async port_active".into())),
            (at + 600, Act::Ctl("async port_err".into())),
            (at + 700, Act::Ctl("async port_active".into())),
        ];
        add(
            &mut out,
            Class::PortFlap,
            format!("port_err/port_active at {at}, +150, +600, +700 ms"),
            v,
            vec![],
            acts,
            perf(split_writes(secs)),
        );
        out.last_mut().unwrap().note = Some(PORT_NOTE);
    }
    {
        let at = rng.range(500, 1500);
        let v = variant(&mut rng);
        add(
            &mut out,
            Class::DeviceFatal,
            format!("device_fatal at {at} ms"),
            v,
            vec![],
            vec![(at, Act::Ctl("async device_fatal".into()))],
            perf(split_writes(secs)),
        );
        out.last_mut().unwrap().note = Some(FATAL_NOTE);
    }
    for _ in 0..k {
        let at = rng.range(400, 1800);
        let v = variant(&mut rng);
        add(
            &mut out,
            Class::CmDisconnect,
            format!("cmdrop * at {at} ms"),
            v,
            vec![],
            vec![(at, Act::Ctl("cmdrop *".into()))],
            perf(split_writes(secs)),
        );
    }
    for _ in 0..k {
        let at = rng.range(400, 1800);
        let v = variant(&mut rng);
        add(
            &mut out,
            Class::HostKilled,
            format!("SIGKILL host at {at} ms"),
            v,
            vec![],
            vec![(at, Act::KillHost)],
            perf(split_writes(secs)),
        );
    }
    {
        let v = variant(&mut rng);
        add(
            &mut out,
            Class::ConnectStorm,
            "8 rounds of 3 short verified connections".into(),
            v,
            vec![],
            vec![],
            HostLoad::Storm {
                cycles: 8,
                parallel: 3,
            },
        );
    }
    {
        let v = variant(&mut rng);
        let mut t = v.0.clone();
        t["num_shared_buffers"] = json!(32);
        t["buf_cache_size"] = json!(0);
        add(
            &mut out,
            Class::BufferExhaustion,
            "num_shared_buffers 32, 128 KiB writes QD 128, 3 new connections at 1 s".into(),
            (t, v.1),
            vec![],
            vec![(1000, Act::NewConnections(3))],
            perf(load("randwrite", 131_072, None, 128, secs)),
        );
    }
    {
        let v = variant(&mut rng);
        add(
            &mut out,
            Class::SlowBackend,
            "delay bdev 300 ms, host command timeout 100 ms".into(),
            v,
            vec![],
            vec![],
            HostLoad::TimeoutHost { timeout_ms: 100 },
        );
        out.last_mut().unwrap().delay_us = Some(300_000);
    }
    {
        let at = rng.range(500, 1500);
        let v = variant(&mut rng);
        add(
            &mut out,
            Class::SigintUnderLoad,
            format!("SIGINT at {at} ms"),
            v,
            vec![],
            vec![(at, Act::SigintTarget)],
            perf(split_writes(secs)),
        );
    }
    for _ in 0..k {
        let s = rng.next_u64();
        let v = variant(&mut rng);
        add(
            &mut out,
            Class::MalformedHost,
            format!("malformed capsules, seed {s}"),
            v,
            vec![],
            vec![],
            HostLoad::Malformed { seed: s },
        );
    }
    out
}

/// The subsystem of the slow-backend host.
pub const SLOW_NQN: &str = NQN_DELAY;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_list() {
        let size = Size {
            per_class: 2,
            secs: 3,
        };
        let a = serde_json::to_string(&scenarios(42, size)).unwrap();
        let b = serde_json::to_string(&scenarios(42, size)).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, serde_json::to_string(&scenarios(43, size)).unwrap());
    }

    #[test]
    fn covers_every_class_and_both_srq_variants() {
        let list = scenarios(
            1,
            Size {
                per_class: 2,
                secs: 3,
            },
        );
        for c in [
            Class::WrError,
            Class::ReadSplit,
            Class::HostSendError,
            Class::QpError,
            Class::LostFlush,
            Class::RandomFaults,
            Class::PortError,
            Class::PortFlap,
            Class::DeviceFatal,
            Class::CmDisconnect,
            Class::HostKilled,
            Class::ConnectStorm,
            Class::BufferExhaustion,
            Class::SlowBackend,
            Class::SigintUnderLoad,
            Class::MalformedHost,
        ] {
            assert!(list.iter().any(|s| s.class == c), "{c:?} missing");
        }
        assert!(list.iter().any(|s| s.name.ends_with("[SRQ]")));
        assert!(list.iter().any(|s| s.name.ends_with("[no-SRQ]")));
        // The first #3463 instance is the known reproduction.
        let first = list.iter().find(|s| s.class == Class::ReadSplit).unwrap();
        assert_eq!(first.rules, vec!["fail:op=read,nth=3,status=retry_exc_err"]);
        // Every WR kind gets errors.
        for op in ["send", "write", "read"] {
            assert!(list
                .iter()
                .any(|s| s.class == Class::WrError && s.rules[0].contains(&format!("op={op},"))));
        }
    }
}
