//! Parsing of `spdk_nvme_perf` output: the `Total` summary line, the `-L`
//! latency summary (percentile cut-offs) and the `-LL` histogram (cumulative
//! buckets). Formats are those of SPDK's `app/spdk_nvme_perf/perf.c`
//! (`print_performance`, `check_cutoff`, `print_bucket`).

use serde::Serialize;

/// What one `spdk_nvme_perf` run reported.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PerfOutput {
    /// Total I/Os per second.
    pub iops: f64,
    /// Total MiB/s.
    pub mib_s: f64,
    /// Mean latency (µs) of the `Total` line.
    pub mean_us: f64,
    /// Latency percentiles from the `-L` summary (µs).
    pub p50_us: Option<f64>,
    /// 99th percentile (µs).
    pub p99_us: Option<f64>,
    /// 99.9th percentile (µs).
    pub p999_us: Option<f64>,
    /// `-LL` histogram: (bucket end in µs, cumulative percent), ascending.
    pub cdf: Vec<(f64, f64)>,
}

/// Why an output could not be read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParseError {
    /// No `Total` line: the run completed no I/O or failed before the summary.
    #[error("no `Total` line in spdk_nvme_perf output")]
    NoTotal,
    /// A `Total` line whose numbers do not parse.
    #[error("malformed `Total` line: {0:?}")]
    BadTotal(String),
}

/// Parses a whole `spdk_nvme_perf` output.
pub fn parse(out: &str) -> Result<PerfOutput, ParseError> {
    let total = out
        .lines()
        .find(|l| l.trim_start().starts_with("Total") && l.contains(':'))
        .ok_or(ParseError::NoTotal)?;
    let nums: Vec<f64> = total
        .rsplit_once(':')
        .map(|(_, n)| {
            n.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    if nums.len() < 3 {
        return Err(ParseError::BadTotal(total.to_string()));
    }
    let mut p = PerfOutput {
        iops: nums[0],
        mib_s: nums[1],
        mean_us: nums[2],
        ..PerfOutput::default()
    };
    let mut section = Section::None;
    for line in out.lines() {
        if line.starts_with("Summary latency data for") {
            // Only the first device/core block: the comparison runs one worker.
            section = if p.p50_us.is_none() {
                Section::Summary
            } else {
                Section::None
            };
            continue;
        }
        if line.starts_with("Latency histogram for") {
            section = if p.cdf.is_empty() {
                Section::Histogram
            } else {
                Section::None
            };
            continue;
        }
        if line.trim().is_empty() {
            if !matches!(section, Section::None) && (p.p50_us.is_some() || !p.cdf.is_empty()) {
                section = Section::None;
            }
            continue;
        }
        match section {
            Section::Summary => {
                if let Some((pct, us)) = cutoff_line(line) {
                    match pct {
                        x if (x - 50.0).abs() < 1e-6 => p.p50_us = Some(us),
                        x if (x - 99.0).abs() < 1e-6 => p.p99_us = Some(us),
                        x if (x - 99.9).abs() < 1e-6 => p.p999_us = Some(us),
                        _ => {}
                    }
                }
            }
            Section::Histogram => {
                if let Some(point) = bucket_line(line) {
                    p.cdf.push(point);
                }
            }
            Section::None => {}
        }
    }
    Ok(p)
}

enum Section {
    None,
    Summary,
    Histogram,
}

/// ` 99.90000% :   123.456us` → (99.9, 123.456).
fn cutoff_line(line: &str) -> Option<(f64, f64)> {
    let (pct, us) = line.split_once("% :")?;
    let us = us.trim().strip_suffix("us")?;
    Some((pct.trim().parse().ok()?, us.trim().parse().ok()?))
}

/// `   10.123 -    10.456:    0.1234%  (      123)` → (10.456, 0.1234).
fn bucket_line(line: &str) -> Option<(f64, f64)> {
    let (range, rest) = line.split_once(':')?;
    let (_, end) = range.split_once(" - ")?;
    let (pct, _) = rest.split_once('%')?;
    Some((end.trim().parse().ok()?, pct.trim().parse().ok()?))
}

/// Lines of an initiator's output that mean some I/O failed.
pub fn error_lines(out: &str) -> Vec<&str> {
    out.lines()
        .filter(|l| {
            l.contains("errors occurred")
                || l.contains("completed with error")
                || l.contains("starting I/O failed")
                || l.contains("*ERROR*")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
Initializing NVMe Controllers
========================================================
                                                                           Latency(us)
Device Information                                     :       IOPS      MiB/s    Average        min        max
RDMA (addr:127.0.0.1 subnqn:nqn.2016-06.io.spdk:cnode1) NSID 1 from core  1:   15658.20      61.16    2043.12     120.50    9000.01
========================================================
Total                                                  :   15658.20      61.16    2043.12     120.50    9000.01

Summary latency data for RDMA (addr:127.0.0.1 subnqn:nqn.2016-06.io.spdk:cnode1) NSID 1 from core 1:
=================================================================================
  1.00000% :   200.100us
 50.00000% :  1900.250us
 99.00000% :  4000.000us
 99.90000% :  8000.500us
 99.99000% :  8999.000us

Latency histogram for RDMA (addr:127.0.0.1 subnqn:nqn.2016-06.io.spdk:cnode1) NSID 1 from core 1:
==============================================================================
       Range in us     Cumulative    IO count
  120.000 -   121.000:    0.0100%  (        3)
 1899.000 -  1901.000:   50.2000%  (    10000)
 8999.000 -  9001.000:  100.0000%  (        1)

";

    #[test]
    fn parses_total_percentiles_and_histogram() {
        let p = parse(SAMPLE).unwrap();
        assert_eq!(p.iops, 15658.20);
        assert_eq!(p.mib_s, 61.16);
        assert_eq!(p.mean_us, 2043.12);
        assert_eq!(p.p50_us, Some(1900.25));
        assert_eq!(p.p99_us, Some(4000.0));
        assert_eq!(p.p999_us, Some(8000.5));
        assert_eq!(p.cdf, vec![(121.0, 0.01), (1901.0, 50.2), (9001.0, 100.0)]);
    }

    #[test]
    fn no_total_is_an_error() {
        assert_eq!(
            parse("Initializing\nerrors occurred\n"),
            Err(ParseError::NoTotal)
        );
        assert!(matches!(
            parse("Total    : x y z\n"),
            Err(ParseError::BadTotal(_))
        ));
    }

    #[test]
    fn without_latency_tracking_percentiles_are_absent() {
        let only_total = SAMPLE.split("Summary").next().unwrap();
        let p = parse(only_total).unwrap();
        assert_eq!(p.p99_us, None);
        assert!(p.cdf.is_empty());
    }

    #[test]
    fn error_lines_found() {
        let out =
            "a\nstarting I/O failed\nb\nnvme_qpair.c: *ERROR*: READ sqid:1\nerrors occurred\n";
        assert_eq!(error_lines(out).len(), 3);
        assert!(error_lines(SAMPLE).is_empty());
    }
}
