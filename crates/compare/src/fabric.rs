//! softrdma's per-process live-object counters (`softrdma-ctl stats PID`),
//! the leak evidence of the fault campaign.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// Live-object counters that must return to their baseline once every host
/// has left (softrdma's `Counter` names).
pub const LIVE: [&str; 6] = ["qps", "cqs", "mrs", "srqs", "cm_ids", "outstanding_sends"];

/// The counters of the line of process `pid` in `softrdma-ctl stats` output
/// (`pid=123 state=alive contexts=1 pds=1 mrs=2 …`).
pub fn parse_stats(out: &str, pid: u32) -> Option<BTreeMap<String, u64>> {
    let want = format!("pid={pid}");
    let line = out
        .lines()
        .find(|l| l.split_whitespace().next() == Some(want.as_str()))?;
    Some(
        line.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
            .collect(),
    )
}

/// Counters of `pid` read from the fabric in `shm_dir`.
pub fn read_stats(ctl: &Path, shm_dir: &Path, pid: u32) -> Option<BTreeMap<String, u64>> {
    let out = Command::new(ctl)
        .args(["stats", &pid.to_string()])
        .env("SOFTRDMA_SHM_DIR", shm_dir)
        .output()
        .ok()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    parse_stats(&text, pid)
}

/// The live counters that are above `baseline`, as `name baseline→now`.
pub fn grown(baseline: &BTreeMap<String, u64>, now: &BTreeMap<String, u64>) -> Vec<String> {
    LIVE.iter()
        .filter_map(|k| {
            let (b, n) = (baseline.get(*k).copied()?, now.get(*k).copied()?);
            (n > b).then(|| format!("{k} {b}→{n}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "pid=10 state=alive contexts=1 pds=1 mrs=2 cqs=1 qps=2 srqs=0 cm_ids=1\n\
                       pid=1077 state=dead contexts=0 pds=0 mrs=0 cqs=0 qps=0 srqs=0 cm_ids=0\n";

    #[test]
    fn finds_the_process_line() {
        let s = parse_stats(OUT, 10).unwrap();
        assert_eq!(s["qps"], 2);
        assert_eq!(s["mrs"], 2);
        assert!(!s.contains_key("state"));
        assert_eq!(parse_stats(OUT, 1077).unwrap()["qps"], 0);
        assert!(
            parse_stats(OUT, 107).is_none(),
            "pid=107 must not match pid=1077"
        );
    }

    #[test]
    fn growth_is_named() {
        let base = parse_stats(OUT, 10).unwrap();
        let mut now = base.clone();
        assert!(grown(&base, &now).is_empty());
        now.insert("qps".into(), 5);
        now.insert("mrs".into(), 1);
        assert_eq!(grown(&base, &now), vec!["qps 2→5".to_string()]);
    }
}
