//! The report: `compare-<date>.json` (everything) and `compare-<date>.md`
//! (outcome table first, performance ratios, plots, details, how to read).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::campaign::{Class, Scenario};
use crate::fault_run::ScenarioResult;
use crate::icount::Icount;
use crate::outcome::Outcome;
use crate::perf_run::{Matrix, PointResult};
use crate::stats::{median, min_med_max};

/// A compared target as the report names it.
#[derive(Debug, Clone, Serialize)]
pub struct TargetInfo {
    /// Label.
    pub label: String,
    /// SPDK tree of its `nvmf_tgt`.
    pub tree: String,
    /// `RDMA` or `RDMA_RS`.
    pub trtype: String,
    /// This project's transport.
    pub ours: bool,
}

/// Everything a run produced.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// UTC date of the start.
    pub date: String,
    /// UTC time of the start.
    pub time: String,
    /// The command line.
    pub command: String,
    /// Campaign seed.
    pub seed: u64,
    /// Online CPUs.
    pub cpus: usize,
    /// 1-minute load average at the start and at the end.
    pub load: (Option<f64>, Option<f64>),
    /// Targets, upstream of `SPDK_DIR` first.
    pub targets: Vec<TargetInfo>,
    /// Performance matrix (None: not run).
    pub matrix: Option<Matrix>,
    /// Performance results.
    pub perf: Vec<PointResult>,
    /// Scenario list.
    pub scenarios: Vec<Scenario>,
    /// Scenario results.
    pub faults: Vec<ScenarioResult>,
    /// Instructions per I/O.
    pub icount: Vec<Icount>,
    /// Plot files (relative to the report).
    pub plots: Vec<String>,
    /// Issue-10 parts this harness does not do, with the reason.
    pub not_done: Vec<String>,
    /// Wall-clock seconds of the whole run.
    pub elapsed_s: f64,
}

impl Report {
    fn baseline(&self) -> Option<&TargetInfo> {
        self.targets.iter().find(|t| !t.ours)
    }

    fn ours(&self) -> Option<&TargetInfo> {
        self.targets.iter().find(|t| t.ours)
    }

    /// Median IOPS of a point, or why there is none.
    fn med_iops(&self, target: &str, wl: &str, bdev: &str, groups: u32) -> Result<f64, String> {
        let p = self
            .perf
            .iter()
            .find(|p| {
                p.target == target && p.workload == wl && p.bdev == bdev && p.groups == groups
            })
            .ok_or_else(|| "not run".to_string())?;
        if let Some(s) = &p.skipped {
            return Err(format!("skipped: {s}"));
        }
        let v: Vec<f64> = p.samples.iter().map(|s| s.iops).collect();
        median(&v).ok_or_else(|| format!("{} failed runs", p.failures.len()))
    }
}

/// Cell text of `counts` (`2 survived, 1 crashed`).
fn counts_cell(counts: &BTreeMap<Outcome, usize>) -> String {
    let parts: Vec<String> = Outcome::ALL
        .iter()
        .filter_map(|o| {
            let n = *counts.get(o)?;
            let name = if o.is_failure() {
                format!("**{n} {}**", o.name())
            } else {
                format!("{n} {}", o.name())
            };
            (n > 0).then_some(name)
        })
        .collect();
    if parts.is_empty() {
        "—".into()
    } else {
        parts.join(", ")
    }
}

fn class_of(r: &Report, index: usize) -> Option<Class> {
    r.scenarios.get(index).map(|s| s.class)
}

fn ratio(a: Result<f64, String>, b: Result<f64, String>) -> String {
    match (a, b) {
        (Ok(a), Ok(b)) if b > 0.0 => format!("{:.2}", a / b),
        (Err(e), _) => format!("n/a ({})", short(&e)),
        (_, Err(e)) => format!("n/a ({})", short(&e)),
        _ => "n/a".into(),
    }
}

fn short(s: &str) -> String {
    let one = s.lines().next().unwrap_or("");
    if one.chars().count() > 90 {
        format!("{}…", one.chars().take(90).collect::<String>())
    } else {
        one.to_string()
    }
}

fn f(v: Option<f64>) -> String {
    match v {
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.1}"),
        None => "—".into(),
    }
}

/// The Markdown report.
pub fn markdown(r: &Report) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Side by side: RDMA_RS vs upstream RDMA — {} {} UTC\n",
        r.date, r.time
    );
    let _ = writeln!(
        md,
        "Command: `{}` · seed {} · {} CPUs · load average {} at start, {} at end · {:.0} s in all.\n",
        r.command,
        r.seed,
        r.cpus,
        f(r.load.0),
        f(r.load.1),
        r.elapsed_s
    );
    for t in &r.targets {
        let _ = writeln!(
            md,
            "- **{}**: `nvmf_tgt` of `{}`, transport `{}`",
            t.label, t.tree, t.trtype
        );
    }
    md.push('\n');
    goals(r, &mut md);
    outcome_table(r, &mut md);
    ratio_table(r, &mut md);
    if !r.plots.is_empty() {
        md.push_str("## Plots\n\n");
        for p in &r.plots {
            let _ = writeln!(md, "![{p}]({p})\n");
        }
    }
    icount_section(r, &mut md);
    perf_details(r, &mut md);
    fault_details(r, &mut md);
    md.push_str(HOW_TO_READ);
    if !r.not_done.is_empty() {
        md.push_str("\n## Not done by this harness\n\n");
        for n in &r.not_done {
            let _ = writeln!(md, "- {n}");
        }
    }
    md
}

fn goals(r: &Report, md: &mut String) {
    md.push_str("## Goals (issue 10)\n\n| goal | status |\n|---|---|\n");
    let Some(ours) = r.ours() else {
        md.push_str("| all | not measured: RDMA_RS was not part of this run |\n\n");
        return;
    };
    let mine: Vec<&ScenarioResult> = r.faults.iter().filter(|f| f.target == ours.label).collect();
    let bad = mine.iter().filter(|f| f.outcome.is_failure()).count();
    let ran = mine
        .iter()
        .filter(|f| !matches!(f.outcome, Outcome::Skipped | Outcome::SetupFailed))
        .count();
    let status = if mine.is_empty() {
        "not measured (no fault campaign in this run)".to_string()
    } else if ran == 0 {
        format!(
            "not measured: every scenario skipped ({})",
            short(&mine[0].reason)
        )
    } else if bad == 0 {
        format!("met in {ran} scenarios run ({} skipped)", mine.len() - ran)
    } else {
        format!("**not met**: {bad} of {ran} scenarios failed")
    };
    let _ = writeln!(
        md,
        "| ours never crashes, hangs, leaks or corrupts | {status} |"
    );
    let Some(base) = r.baseline() else {
        md.push('\n');
        return;
    };
    let qd_points: Vec<(&str, u32)> = r
        .perf
        .iter()
        .filter(|p| {
            p.target == ours.label && (p.workload.contains("qd32") || p.workload.contains("qd128"))
        })
        .filter(|p| p.workload.starts_with("4k"))
        .map(|p| (p.workload, p.groups))
        .collect();
    let mut worst: Option<f64> = None;
    let mut why_not = None;
    for p in r
        .perf
        .iter()
        .filter(|p| p.target == ours.label && qd_points.contains(&(p.workload, p.groups)))
    {
        match (
            r.med_iops(&ours.label, p.workload, p.bdev, p.groups),
            r.med_iops(&base.label, p.workload, p.bdev, p.groups),
        ) {
            (Ok(a), Ok(b)) if b > 0.0 => worst = Some(worst.map_or(a / b, |w: f64| w.min(a / b))),
            (Err(e), _) | (_, Err(e)) => why_not = Some(e),
            _ => {}
        }
    }
    let s = match (worst, why_not) {
        (Some(w), _) => format!(
            "{}: lowest ratio {w:.2}",
            if w >= 1.10 { "met" } else { "**not met**" }
        ),
        (None, Some(e)) => format!("not measured: {}", short(&e)),
        (None, None) => "not measured (no QD 32/128 points)".into(),
    };
    let _ = writeln!(
        md,
        "| ours ≥ 1.10 × {} IOPS at QD 32 and 128 | {s} |",
        base.label
    );
    let p99 = |label: &str| -> Result<f64, String> {
        let p = r
            .perf
            .iter()
            .find(|p| {
                p.target == label
                    && p.workload == "4k randread qd1"
                    && p.groups == 1
                    && p.bdev == "null"
            })
            .ok_or("no 4k randread qd1 point")?;
        if let Some(s) = &p.skipped {
            return Err(format!("skipped: {s}"));
        }
        median(
            &p.samples
                .iter()
                .filter_map(|s| s.p99_us)
                .collect::<Vec<_>>(),
        )
        .ok_or_else(|| "no p99".to_string())
    };
    let s = match (p99(&ours.label), p99(&base.label)) {
        (Ok(a), Ok(b)) => format!(
            "{}: {:.2} × ({a:.1} vs {b:.1} µs)",
            if a <= 0.95 * b { "met" } else { "**not met**" },
            a / b
        ),
        (Err(e), _) | (_, Err(e)) => format!("not measured: {}", short(&e)),
    };
    let _ = writeln!(
        md,
        "| QD 1 p99 latency ≤ 0.95 × {} (4 KiB randread, null bdev, 1 poll group) | {s} |",
        base.label
    );
    let ir = |label: &str| {
        r.icount
            .iter()
            .filter(|i| i.target == label && i.skipped.is_none() && i.ios > 0)
            .map(|i| i.ir_per_io)
            .collect::<Vec<_>>()
    };
    let s = match (ir(&ours.label).first(), ir(&base.label).first()) {
        (Some(a), Some(b)) => format!(
            "{}: {:.2} × ({a:.0} vs {b:.0})",
            if *a <= 0.85 * b { "met" } else { "**not met**" },
            a / b
        ),
        _ => {
            let why = r
                .icount
                .iter()
                .find(|i| i.target == ours.label)
                .and_then(|i| i.skipped.clone())
                .unwrap_or_else(|| "no callgrind figures in this run".into());
            format!("not measured: {}", short(&why))
        }
    };
    let _ = writeln!(
        md,
        "| instructions per I/O ≤ 0.85 × {} | {s} |\n",
        base.label
    );
}

fn outcome_table(r: &Report, md: &mut String) {
    md.push_str("## Fault campaign: outcomes\n\n");
    if r.faults.is_empty() {
        md.push_str("Not run.\n\n");
        return;
    }
    let _ = write!(md, "| scenario class | n |");
    for t in &r.targets {
        let _ = write!(md, " {} |", t.label);
    }
    md.push_str("\n|---|---|");
    for _ in &r.targets {
        md.push_str("---|");
    }
    md.push('\n');
    let mut classes: Vec<Class> = r.scenarios.iter().map(|s| s.class).collect();
    classes.dedup();
    for c in classes {
        let n = r.scenarios.iter().filter(|s| s.class == c).count();
        let _ = write!(md, "| {} | {n} |", c.name());
        for t in &r.targets {
            let mut counts = BTreeMap::new();
            for fr in r
                .faults
                .iter()
                .filter(|f| f.target == t.label && class_of(r, f.index) == Some(c))
            {
                *counts.entry(fr.outcome).or_insert(0) += 1;
            }
            let _ = write!(md, " {} |", counts_cell(&counts));
        }
        md.push('\n');
    }
    let _ = write!(md, "| **all** | {} |", r.scenarios.len());
    for t in &r.targets {
        let mut counts = BTreeMap::new();
        for fr in r.faults.iter().filter(|f| f.target == t.label) {
            *counts.entry(fr.outcome).or_insert(0) += 1;
        }
        let _ = write!(md, " {} |", counts_cell(&counts));
    }
    md.push_str("\n\n");
    let skipped: Vec<&ScenarioResult> = r
        .faults
        .iter()
        .filter(|f| f.outcome == Outcome::Skipped)
        .collect();
    let mut reasons: Vec<(&str, &str)> = skipped
        .iter()
        .map(|f| (f.target.as_str(), f.reason.as_str()))
        .collect();
    reasons.dedup();
    for (t, why) in reasons {
        let _ = writeln!(md, "Skipped on {t}: {}\n", short(why));
    }
}

fn ratio_table(r: &Report, md: &mut String) {
    md.push_str("## Performance: median IOPS and ratios\n\n");
    let Some(m) = &r.matrix else {
        md.push_str("Not run.\n\n");
        return;
    };
    let _ = writeln!(
        md,
        "`spdk_nvme_perf` of `SPDK_DIR` on core 1 (`-c 0x2`), {} s per run, {} runs per point (median shown); \
         target reactors on core 0 (1 poll group, `-m 0x1`) or cores 0–1 (2 poll groups, `-m 0x3`, `-P 2` I/O queues, QD 32/128 workloads only); \
         hugepages for every process (`-s 512 -g` target, `-s 256 -g` initiator).\n",
        m.secs, m.runs
    );
    let Some(base) = r.baseline() else { return };
    let others: Vec<&TargetInfo> = r.targets.iter().filter(|t| t.label != base.label).collect();
    let _ = write!(md, "| bdev | pg | workload |");
    for t in &r.targets {
        let _ = write!(md, " {} |", t.label);
    }
    for t in &others {
        let _ = write!(md, " {} / {} |", t.label, base.label);
    }
    md.push_str("\n|---|---|---|");
    for _ in 0..r.targets.len() + others.len() {
        md.push_str("---|");
    }
    md.push('\n');
    for bdev in &m.bdevs {
        for g in &m.groups {
            for wl in m.workloads_for(*g) {
                let _ = write!(md, "| {bdev} | {g} | {} |", wl.name);
                for t in &r.targets {
                    let cell = match r.med_iops(&t.label, wl.name, bdev, *g) {
                        Ok(v) => format!("{v:.0}"),
                        Err(e) if e.starts_with("skipped") => "skipped".into(),
                        Err(e) => short(&e),
                    };
                    let _ = write!(md, " {cell} |");
                }
                for t in &others {
                    let rt = ratio(
                        r.med_iops(&t.label, wl.name, bdev, *g),
                        r.med_iops(&base.label, wl.name, bdev, *g),
                    );
                    let rt = if rt.starts_with("n/a (skipped") {
                        "n/a (skipped)".into()
                    } else {
                        rt
                    };
                    let _ = write!(md, " {rt} |");
                }
                md.push('\n');
            }
        }
    }
    md.push('\n');
}

fn icount_section(r: &Report, md: &mut String) {
    if r.icount.is_empty() {
        return;
    }
    md.push_str("## Instructions per I/O inside the transport (callgrind)\n\n");
    md.push_str(
        "`nvmf_tgt --interrupt-mode` under `valgrind --tool=callgrind`, 4 KiB I/Os at QD 8 from \
         `nvmf-rdma-rs perf --ios` against an aio bdev on a file in /dev/shm (it sleeps in interrupt \
         mode; malloc and null bdevs have period-0 pollers that keep the reactor spinning): a run of \
         500 then one of 4500 I/Os with a dump after each; per I/O = (long − short) / 4000. \
         Transport = self cost of the transport's own code (upstream `lib/nvmf/rdma.c` and the RDMA \
         provider; ours `libnvmf_rdma_rs.so`) plus `libibverbs`/`librdmacm` (softrdma); wake-ups = \
         calls of `epoll_wait` in the whole `nvmf_tgt`.\n\n",
    );
    md.push_str("| target | workload | I/Os | transport Ir per I/O | own code | verbs (softrdma) | whole nvmf_tgt | wake-ups per I/O | top functions (self Ir per I/O) |\n|---|---|---|---|---|---|---|---|---|\n");
    for i in &r.icount {
        if let Some(s) = &i.skipped {
            let _ = writeln!(
                md,
                "| {} | {} | — | — | — | — | — | — | skipped: {} |",
                i.target,
                i.workload,
                short(s)
            );
            continue;
        }
        let top: Vec<String> = i
            .top
            .iter()
            .take(6)
            .map(|(f, v)| format!("`{f}` {v:.0}"))
            .collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {} |",
            i.target,
            i.workload,
            i.ios,
            i.ir_per_io,
            i.own_per_io,
            i.verbs_per_io,
            i.total_per_io,
            i.wakeups_per_io,
            top.join(", ")
        );
    }
    md.push('\n');
}

fn perf_details(r: &Report, md: &mut String) {
    if r.perf.is_empty() {
        return;
    }
    md.push_str("## Performance details (min / median / max over runs)\n\n");
    md.push_str(
        "| bdev | pg | workload | target | runs | IOPS | MiB/s | mean µs | p50 µs | p99 µs | p99.9 µs | target CPU µs/IO |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for p in &r.perf {
        if let Some(s) = &p.skipped {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | 0 | skipped: {} | | | | | | |",
                p.bdev,
                p.groups,
                p.workload,
                p.target,
                short(s)
            );
            continue;
        }
        let col = |get: &dyn Fn(&crate::perf_run::Sample) -> Option<f64>| -> String {
            let v: Vec<f64> = p.samples.iter().filter_map(get).collect();
            match min_med_max(&v) {
                Some((a, b, c)) => format!("{} / {} / {}", f(Some(a)), f(Some(b)), f(Some(c))),
                None => "—".into(),
            }
        };
        let med = |get: &dyn Fn(&crate::perf_run::Sample) -> Option<f64>| -> String {
            f(median(
                &p.samples.iter().filter_map(get).collect::<Vec<_>>(),
            ))
        };
        let fails = if p.failures.is_empty() {
            String::new()
        } else {
            format!(" ({} failed: {})", p.failures.len(), short(&p.failures[0]))
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {}{} | {} | {} | {} | {} | {} | {} | {} |",
            p.bdev,
            p.groups,
            p.workload,
            p.target,
            p.samples.len(),
            fails,
            col(&|s| Some(s.iops)),
            med(&|s| Some(s.mib_s)),
            med(&|s| Some(s.mean_us)),
            med(&|s| s.p50_us),
            med(&|s| s.p99_us),
            med(&|s| s.p999_us),
            med(&|s| s.cpu_us_per_io),
        );
    }
    md.push('\n');
}

fn fault_details(r: &Report, md: &mut String) {
    if r.faults.is_empty() {
        return;
    }
    md.push_str("## Fault scenarios in detail\n\n");
    for (i, sc) in r.scenarios.iter().enumerate() {
        let _ = writeln!(md, "### {}. {} — {}\n", i + 1, sc.class.name(), sc.name);
        if let Some(n) = sc.note {
            let _ = writeln!(md, "*softrdma note: {n}.*\n");
        }
        for fr in r.faults.iter().filter(|f| f.index == i) {
            let _ = writeln!(
                md,
                "- **{}**: {} — {} ({:.0} s)",
                fr.target,
                fr.outcome.name(),
                fr.reason,
                fr.secs
            );
            if fr.outcome == Outcome::Skipped {
                continue;
            }
            for e in &fr.evidence {
                if e.contains('\n') {
                    let _ = writeln!(md, "\n  ```\n  {}\n  ```\n", e.replace('\n', "\n  "));
                } else {
                    let _ = writeln!(md, "  - {e}");
                }
            }
        }
        md.push('\n');
    }
}

const HOW_TO_READ: &str = "## How to read this\n\n\
- **Outcomes.** Each scenario starts a fresh `nvmf_tgt` over a private softrdma fabric, checks it \
serves verified I/O (warm-up), takes softrdma's live-object counters as the baseline, adds the \
scenario's softrdma rules at run time (`softrdma-ctl send <pid> fault …`), runs the host load with \
its timed actions, clears the rules, waits for the hosts' qpairs to go, then runs a **fresh \
verified connection** (`nvmf-rdma-rs perf --verify`: random writes and reads, every read checked). \
*crashed*: the target died of a signal (backtrace from its core with gdb when there is one); \
*corrupted*: the probe read other data than it wrote; *hung*: no verified I/O on the fresh \
connection within its deadline, or no exit within 15 s of SIGINT; *leaked*: softrdma's live QP / \
CQ / MR / SRQ / CM-id counters of the target above the baseline, or `nvmf_get_stats` still showing \
qpairs, 10 s after the hosts left; *survived*: none of these. *skipped*: the scenario could not run \
on that target (reason given) and is never counted as passed; *setup failed*: the harness could not \
set the scenario up (reason given), not scored.\n\
- **Same seed, same scenarios**: the list is generated from the seed once and every target runs it.\n\
- **Performance.** Medians over the runs; the whiskers of the IOPS plots are min and max. This \
2-core machine is shared and noisy: read ratios, not absolute numbers, and only ratios well away \
from 1. Target CPU per I/O is user+system time of `nvmf_tgt` from `/proc/<pid>/stat` between \
`spdk_nvme_perf` launching its workers and its exit, divided by the I/Os it completed; SPDK \
reactors busy-poll, so it mostly reflects how many I/Os a fully used core completes.\n\
- **softrdma is not a NIC**: data moves by `memcpy` between processes (hugepages with `-g`), \
so transport costs weigh more than on hardware, and softrdma's own cost is in every number for \
every target alike.\n\
- **Instructions per I/O** (callgrind) do not depend on CPU speed or load, only on the code \
and on how many interrupt wake-ups the I/Os took (which timing changes a little: two runs of the \
same tree here differed by up to 7 %); they are the figure to track between versions.\n";

/// The JSON report.
pub fn json(r: &Report) -> String {
    serde_json::to_string_pretty(r).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::campaign::{scenarios, Size};
    use crate::perf_run::Sample;

    fn sample(iops: f64) -> Sample {
        Sample {
            iops,
            mib_s: iops / 256.0,
            mean_us: 10.0,
            p50_us: Some(9.0),
            p99_us: Some(20.0),
            p999_us: Some(30.0),
            cpu_us_per_io: Some(5.0),
        }
    }

    fn report() -> Report {
        let scen = scenarios(
            1,
            Size {
                per_class: 1,
                secs: 1,
            },
        );
        let mut faults = Vec::new();
        for (i, _) in scen.iter().enumerate() {
            faults.push(ScenarioResult {
                target: "upstream v26.01".into(),
                index: i,
                outcome: if i == 1 {
                    Outcome::Crashed
                } else {
                    Outcome::Survived
                },
                reason: if i == 1 {
                    "nvmf_tgt died: signal 11 (SIGSEGV)".into()
                } else {
                    "ok".into()
                },
                evidence: vec!["backtrace:\n#0 nvmf_rdma_request_process".into()],
                secs: 1.0,
            });
            faults.push(ScenarioResult {
                target: "RDMA_RS".into(),
                index: i,
                outcome: Outcome::Skipped,
                reason: "RDMA_RS: cannot listen on 127.0.0.1:45200: the RDMA_RS data path is not built yet".into(),
                evidence: vec![],
                secs: 0.5,
            });
        }
        let mut m = Matrix::new(true, 3);
        m.workloads.truncate(2);
        let mut perf = Vec::new();
        for wl in &m.workloads {
            perf.push(PointResult {
                target: "upstream v26.01".into(),
                workload: wl.name,
                bdev: "null",
                groups: 1,
                samples: vec![sample(100.0), sample(300.0), sample(200.0)],
                cdf: vec![(10.0, 50.0), (20.0, 100.0)],
                failures: vec![],
                skipped: None,
            });
            perf.push(PointResult {
                target: "upstream v24.01.1-pre".into(),
                workload: wl.name,
                bdev: "null",
                groups: 1,
                samples: vec![sample(50.0), sample(100.0), sample(150.0)],
                cdf: vec![],
                failures: vec![],
                skipped: None,
            });
            perf.push(PointResult {
                target: "RDMA_RS".into(),
                workload: wl.name,
                bdev: "null",
                groups: 1,
                samples: vec![],
                cdf: vec![],
                failures: vec![],
                skipped: Some("listener refused".into()),
            });
        }
        Report {
            date: "2026-12-03".into(),
            time: "04:00".into(),
            command: "nvmf-rdma-compare --quick".into(),
            seed: 1,
            cpus: 2,
            load: (Some(1.0), Some(2.0)),
            targets: vec![
                TargetInfo {
                    label: "upstream v26.01".into(),
                    tree: "/s".into(),
                    trtype: "RDMA".into(),
                    ours: false,
                },
                TargetInfo {
                    label: "upstream v24.01.1-pre".into(),
                    tree: "/t".into(),
                    trtype: "RDMA".into(),
                    ours: false,
                },
                TargetInfo {
                    label: "RDMA_RS".into(),
                    tree: "/s".into(),
                    trtype: "RDMA_RS".into(),
                    ours: true,
                },
            ],
            matrix: Some(m),
            perf,
            scenarios: scen,
            faults,
            icount: vec![],
            plots: vec!["iops.svg".into()],
            not_done: vec!["callgrind: not run".into()],
            elapsed_s: 10.0,
        }
    }

    #[test]
    fn outcome_table_leads_and_counts() {
        let md = markdown(&report());
        let outcomes = md.find("## Fault campaign: outcomes").unwrap();
        let perf = md.find("## Performance: median IOPS").unwrap();
        assert!(
            outcomes < perf,
            "outcome table must come before performance"
        );
        assert!(md.contains("**1 crashed**"), "{md}");
        // RDMA_RS rows are skipped, never passed.
        let all = md.lines().find(|l| l.starts_with("| **all** |")).unwrap();
        assert!(
            all.ends_with(&format!(" {} skipped |", report().scenarios.len())),
            "{all}"
        );
        assert!(md.contains("Skipped on RDMA_RS: RDMA_RS: cannot listen"));
    }

    #[test]
    fn ratios_and_medians() {
        let md = markdown(&report());
        // v24 median 100 vs v26 median 200 → 0.50; ours skipped → n/a.
        let row = md
            .lines()
            .find(|l| l.starts_with("| null | 1 | 4k randread qd1 |"))
            .unwrap();
        assert!(row.contains("| 200 | 100 | skipped |"), "{row}");
        assert!(row.contains("0.50"), "{row}");
        assert!(row.contains("n/a (skipped)"), "{row}");
        assert!(md.contains("100 / 200 / 300"));
    }

    #[test]
    fn goals_not_measured_when_skipped() {
        let md = markdown(&report());
        assert!(md.contains(
            "| ours never crashes, hangs, leaks or corrupts | not measured: every scenario skipped"
        ));
        assert!(md.contains("ours ≥ 1.10 × upstream v26.01 IOPS at QD 32 and 128 | not measured"));
    }

    #[test]
    fn json_round_trips() {
        let j = json(&report());
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["targets"][2]["label"], "RDMA_RS");
        assert_eq!(v["faults"][1]["outcome"], "Skipped");
    }
}
