//! The performance matrix: `spdk_nvme_perf` workloads against each target,
//! with null and malloc bdevs, 1 and 2 poll groups, every point several
//! times, rounds alternating between the targets.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::env::{Env, TargetSpec};
use crate::hosts::Load;
use crate::perfout;
use crate::procfs;
use crate::target::{StartError, Target, TargetConfig, NQN_MALLOC, NQN_NULL};

/// One workload of the matrix.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Workload {
    /// Name in the report.
    pub name: &'static str,
    /// `-w`.
    pub pattern: &'static str,
    /// `-o`.
    pub size: u32,
    /// `-O`.
    pub unit: Option<u32>,
    /// `-q`.
    pub qd: u32,
}

const fn w(name: &'static str, pattern: &'static str, size: u32, qd: u32) -> Workload {
    Workload {
        name,
        pattern,
        size,
        unit: None,
        qd,
    }
}

/// Every workload of issue 10.
pub const FULL: [Workload; 9] = [
    w("4k randread qd1", "randread", 4096, 1),
    w("4k randread qd32", "randread", 4096, 32),
    w("4k randread qd128", "randread", 4096, 128),
    w("4k randwrite qd1", "randwrite", 4096, 1),
    w("4k randwrite qd32", "randwrite", 4096, 32),
    w("4k randwrite qd128", "randwrite", 4096, 128),
    w("128k seq read qd8", "read", 131_072, 8),
    w("128k seq write qd8", "write", 131_072, 8),
    Workload {
        name: "44k frag write qd32 (-O 4096)",
        pattern: "randwrite",
        size: 45056,
        unit: Some(4096),
        qd: 32,
    },
];

/// The matrix to run.
#[derive(Debug, Clone, Serialize)]
pub struct Matrix {
    /// Workloads with 1 poll group.
    pub workloads: Vec<Workload>,
    /// Workloads with 2 poll groups (a subset, to keep the default run
    /// under 30 minutes).
    pub workloads_2pg: Vec<Workload>,
    /// Bdevs (`null`, `malloc`).
    pub bdevs: Vec<&'static str>,
    /// Poll-group counts (reactor masks 0x1 / 0x3).
    pub groups: Vec<u32>,
    /// Runs per point.
    pub runs: u32,
    /// Seconds per run.
    pub secs: u32,
}

impl Matrix {
    /// The default matrix, or the `--quick` one (four 4 KiB/fragmented
    /// workloads, null bdev, one poll group, 1 s runs).
    pub fn new(quick: bool, runs: u32) -> Matrix {
        if quick {
            Matrix {
                workloads: vec![FULL[0], FULL[1], FULL[4], FULL[8]],
                workloads_2pg: vec![],
                bdevs: vec!["null"],
                groups: vec![1],
                runs,
                secs: 1,
            }
        } else {
            Matrix {
                workloads: FULL.to_vec(),
                // QD 32 and 128, where a second poll group can matter.
                workloads_2pg: vec![FULL[1], FULL[2], FULL[4], FULL[5]],
                bdevs: vec!["null", "malloc"],
                groups: vec![1, 2],
                runs,
                secs: 2,
            }
        }
    }

    /// The workloads run with `groups` poll groups.
    pub fn workloads_for(&self, groups: u32) -> &[Workload] {
        if groups == 1 {
            &self.workloads
        } else {
            &self.workloads_2pg
        }
    }

    /// Number of `spdk_nvme_perf` runs per target.
    pub fn runs_per_target(&self) -> usize {
        let per_round: usize = self
            .groups
            .iter()
            .map(|g| self.workloads_for(*g).len() * self.bdevs.len())
            .sum();
        per_round * self.runs as usize
    }
}

/// One run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// IOPS.
    pub iops: f64,
    /// MiB/s.
    pub mib_s: f64,
    /// Mean latency (µs).
    pub mean_us: f64,
    /// p50 (µs).
    pub p50_us: Option<f64>,
    /// p99 (µs).
    pub p99_us: Option<f64>,
    /// p99.9 (µs).
    pub p999_us: Option<f64>,
    /// Target CPU (user+system) µs per I/O over the I/O phase.
    pub cpu_us_per_io: Option<f64>,
}

/// All runs of one point on one target.
#[derive(Debug, Clone, Serialize)]
pub struct PointResult {
    /// Target label.
    pub target: String,
    /// Workload name.
    pub workload: &'static str,
    /// Bdev.
    pub bdev: &'static str,
    /// Poll groups.
    pub groups: u32,
    /// Successful runs.
    pub samples: Vec<Sample>,
    /// Latency CDF of the last successful run: (µs, cumulative %).
    pub cdf: Vec<(f64, f64)>,
    /// Runs that failed, and why.
    pub failures: Vec<String>,
    /// Why the point was not run on this target.
    pub skipped: Option<String>,
}

/// Runs the matrix on every target; `progress` gets one line per run.
pub fn run(
    env: &Env,
    targets: &[TargetSpec],
    m: &Matrix,
    progress: &mut dyn FnMut(&str),
) -> Vec<PointResult> {
    let mut results: Vec<PointResult> = Vec::new();
    let tick_s = procfs::ticks_per_second();
    let total = m.runs_per_target() * targets.len();
    let mut done = 0usize;
    let started = Instant::now();
    for round in 0..m.runs {
        for &groups in &m.groups {
            for spec in targets {
                let mask = if groups == 1 { "0x1" } else { "0x3" };
                let cfg = TargetConfig {
                    mask: mask.into(),
                    ..TargetConfig::default()
                };
                let mut target = match Target::start(env, spec, &cfg) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        let why = match &e {
                            StartError::ListenRefused(r) => format!("listener refused: {r}"),
                            other => format!("target set-up failed: {other}"),
                        };
                        progress(&format!(
                            "{} ({groups} poll groups): skipped: {why}",
                            spec.label
                        ));
                        for bdev in &m.bdevs {
                            for wl in m.workloads_for(groups) {
                                let r = entry(&mut results, spec, wl, bdev, groups);
                                r.skipped.get_or_insert_with(|| why.clone());
                            }
                        }
                        done += m.workloads_for(groups).len() * m.bdevs.len();
                        None
                    }
                };
                let Some(t) = target.as_mut() else { continue };
                for bdev in &m.bdevs {
                    for wl in m.workloads_for(groups) {
                        done += 1;
                        let load = Load {
                            pattern: wl.pattern,
                            size: wl.size,
                            unit: wl.unit,
                            qd: wl.qd,
                            secs: m.secs,
                            qpairs: groups,
                            latency: 2,
                            nqn: if *bdev == "null" {
                                NQN_NULL
                            } else {
                                NQN_MALLOC
                            },
                        };
                        let log = t.dir.join(format!(
                            "perf-r{round}-{bdev}-{}.log",
                            wl.name.replace(' ', "_")
                        ));
                        let outcome = one_run(env, t, &load, &log, tick_s);
                        let line = match &outcome {
                            Ok(s) => format!("{:.0} IOPS", s.0.iops),
                            Err(e) => format!("failed: {e}"),
                        };
                        progress(&format!(
                            "perf {done}/{total} [{:.0} s] round {} {} | {} | {bdev} | {groups} pg: {line}",
                            started.elapsed().as_secs_f64(),
                            round + 1,
                            spec.label,
                            wl.name
                        ));
                        let r = entry(&mut results, spec, wl, bdev, groups);
                        match outcome {
                            Ok((s, cdf)) => {
                                r.samples.push(s);
                                if !cdf.is_empty() {
                                    r.cdf = downsample(&cdf, CDF_POINTS);
                                }
                            }
                            Err(e) => r.failures.push(e),
                        }
                    }
                }
                let (ended, killed) = t.stop(Duration::from_secs(15));
                if !ended.success() || killed {
                    progress(&format!(
                        "{}: nvmf_tgt stop: {ended} (SIGKILL: {killed})",
                        spec.label
                    ));
                }
            }
        }
    }
    results
}

/// Points of a latency CDF kept in the report (SPDK's histogram has
/// hundreds of buckets per run).
const CDF_POINTS: usize = 120;

/// At most about `max` points of `cdf`, evenly spaced by index, always
/// with the last one (100 %).
pub fn downsample(cdf: &[(f64, f64)], max: usize) -> Vec<(f64, f64)> {
    if cdf.len() <= max || max < 2 {
        return cdf.to_vec();
    }
    let step = cdf.len().div_ceil(max - 1);
    let mut v: Vec<(f64, f64)> = cdf.iter().step_by(step).copied().collect();
    if v.last() != cdf.last() {
        v.extend(cdf.last().copied());
    }
    v
}

fn entry<'a>(
    results: &'a mut Vec<PointResult>,
    spec: &TargetSpec,
    wl: &Workload,
    bdev: &'static str,
    groups: u32,
) -> &'a mut PointResult {
    let pos = results.iter().position(|r| {
        r.target == spec.label && r.workload == wl.name && r.bdev == bdev && r.groups == groups
    });
    match pos {
        Some(i) => &mut results[i],
        None => {
            results.push(PointResult {
                target: spec.label.clone(),
                workload: wl.name,
                bdev,
                groups,
                samples: Vec::new(),
                cdf: Vec::new(),
                failures: Vec::new(),
                skipped: None,
            });
            results.last_mut().unwrap()
        }
    }
}

/// One `spdk_nvme_perf` run with the target's CPU time sampled from the
/// moment perf launches its workers to its exit.
fn one_run(
    env: &Env,
    t: &Target,
    load: &Load,
    log: &std::path::Path,
    tick_s: f64,
) -> Result<(Sample, Vec<(f64, f64)>), String> {
    let mut p = load
        .spawn(env, t, log)
        .map_err(|e| format!("spdk_nvme_perf not started: {e}"))?;
    let deadline = Instant::now() + load.deadline();
    let pid = t.proc.pid();
    let mut t0 = None;
    let ended = loop {
        if let Some(e) = p.poll() {
            break Some(e);
        }
        if t0.is_none() && p.log_text().contains("Launching workers") {
            t0 = procfs::cpu_ticks(pid).map(|c| (c, Instant::now()));
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let t1 = procfs::cpu_ticks(pid);
    let Some(ended) = ended else {
        p.stop(Duration::from_secs(2));
        return Err(format!("no end within {:?}", load.deadline()));
    };
    let out = p.log_text();
    if !ended.success() {
        let errs = perfout::error_lines(&out);
        return Err(format!(
            "{ended}; {}",
            errs.first()
                .copied()
                .unwrap_or(crate::child::tail(&out, 1).as_str())
        ));
    }
    let parsed = perfout::parse(&out).map_err(|e| e.to_string())?;
    let ios = parsed.iops * f64::from(load.secs);
    let cpu_us_per_io = match (t0, t1) {
        (Some((c0, _)), Some(c1)) if ios > 0.0 => {
            Some((c1.saturating_sub(c0)) as f64 / tick_s * 1e6 / ios)
        }
        _ => None,
    };
    Ok((
        Sample {
            iops: parsed.iops,
            mib_s: parsed.mib_s,
            mean_us: parsed.mean_us,
            p50_us: parsed.p50_us,
            p99_us: parsed.p99_us,
            p999_us: parsed.p999_us,
            cpu_us_per_io,
        },
        parsed.cdf,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdf_downsampled_keeps_ends() {
        let cdf: Vec<(f64, f64)> = (1..=1000).map(|i| (i as f64, i as f64 / 10.0)).collect();
        let d = downsample(&cdf, 120);
        assert!(d.len() <= 121, "{}", d.len());
        assert_eq!(d.first(), cdf.first());
        assert_eq!(d.last(), Some(&(1000.0, 100.0)));
        assert_eq!(downsample(&cdf[..5], 120).len(), 5);
    }

    #[test]
    fn matrix_sizes() {
        assert_eq!(Matrix::new(false, 3).runs_per_target(), (9 + 4) * 2 * 3);
        assert_eq!(Matrix::new(true, 3).runs_per_target(), 4 * 3);
        assert!(FULL.iter().any(|w| w.unit == Some(4096) && w.size == 45056));
    }
}
