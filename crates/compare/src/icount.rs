//! Instructions per I/O inside the transport from callgrind profiles:
//! the exclusive (self) cost of the transport's own code plus the RDMA
//! libraries it drives, read from `callgrind_annotate --inclusive=no`.
//! Self costs add up without counting a nested call twice.

use std::path::Path;
use std::process::Command;

use serde::Serialize;

/// What one callgrind measurement found.
#[derive(Debug, Clone, Serialize)]
pub struct Icount {
    /// Target label.
    pub target: String,
    /// Workload (`4k randread`, `4k randwrite`).
    pub workload: String,
    /// I/Os the figures are divided by.
    pub ios: u64,
    /// Self instructions of the transport and the verbs libraries.
    pub transport_ir: u64,
    /// `transport_ir / ios`.
    pub ir_per_io: f64,
    /// Of which the transport's own code, per I/O.
    pub own_per_io: f64,
    /// Of which `libibverbs` / `librdmacm` (softrdma), per I/O.
    pub verbs_per_io: f64,
    /// Whole `nvmf_tgt` instructions per I/O (context).
    pub total_per_io: f64,
    /// Calls of `epoll_wait` (reactor wake-ups) per I/O, whole `nvmf_tgt`.
    pub wakeups_per_io: f64,
    /// Top functions by self cost (name, Ir per I/O).
    pub top: Vec<(String, f64)>,
    /// Why it was not measured.
    pub skipped: Option<String>,
}

/// One `callgrind_annotate` row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Self instructions.
    pub ir: u64,
    /// Source file.
    pub file: String,
    /// Function.
    pub func: String,
    /// Object (shared library or program).
    pub object: String,
}

/// Whether a row is the transport's code or a verbs library it drives:
/// upstream's `lib/nvmf/rdma.c` and RDMA provider/utils, or this project's
/// plugin library; `libibverbs` / `librdmacm` (softrdma here) for both.
pub fn in_transport(r: &Row, ours: bool) -> bool {
    is_verbs(r) || is_own(r, ours)
}

/// Whether a row is in a verbs library.
pub fn is_verbs(r: &Row) -> bool {
    r.object.contains("libibverbs.so") || r.object.contains("librdmacm.so")
}

/// Whether a row is the transport's own code.
pub fn is_own(r: &Row, ours: bool) -> bool {
    if ours {
        r.object.contains("libnvmf_rdma_rs.so")
    } else {
        r.file.ends_with("lib/nvmf/rdma.c")
            || r.file.contains("lib/rdma_provider/")
            || r.file.contains("lib/rdma_utils/")
            || r.file.contains("lib/rdma/")
    }
}

/// Rows and the `PROGRAM TOTALS` of `callgrind_annotate` output.
pub fn parse_annotate(out: &str) -> (Vec<Row>, u64) {
    let mut total = 0;
    let mut rows = Vec::new();
    for l in out.lines() {
        let l = l.trim();
        let Some((num, rest)) = l.split_once(' ') else {
            continue;
        };
        let Ok(ir) = num.replace(',', "").parse::<u64>() else {
            continue;
        };
        let rest = rest.trim_start();
        // Call lines of annotated source (`=> file:fn (12x)`) are inclusive.
        if rest.contains("=>") || rest.ends_with("x)") {
            continue;
        }
        let rest = match rest.strip_prefix('(') {
            Some(r) => r.split_once(')').map_or(r, |x| x.1).trim_start(),
            None => rest,
        };
        if rest == "PROGRAM TOTALS" {
            total = ir;
            continue;
        }
        let (loc, object) = match rest.rsplit_once(" [") {
            Some((a, b)) => (a, b.trim_end_matches(']')),
            None => (rest, ""),
        };
        let (file, func) = loc.split_once(':').unwrap_or(("???", loc));
        rows.push(Row {
            ir,
            file: file.to_string(),
            func: func.to_string(),
            object: object.to_string(),
        });
    }
    (rows, total)
}

/// Self cost of the transport's own rows and of the verbs rows.
pub fn transport_cost(rows: &[Row], ours: bool) -> (u64, u64) {
    let sum = |f: &dyn Fn(&Row) -> bool| rows.iter().filter(|r| f(r)).map(|r| r.ir).sum();
    (sum(&|r| is_own(r, ours)), sum(&|r| is_verbs(r)))
}

/// Calls of function `name` in one callgrind dump (its `calls=` lines
/// under a `cfn=` of that name; names are compressed as `(id) name` once,
/// then `(id)`).
pub fn calls_to(dump: &str, name: &str) -> u64 {
    let mut names: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    let mut callee: Option<&str> = None;
    let mut calls = 0;
    for l in dump.lines() {
        let (is_call, rest) = match (l.strip_prefix("cfn="), l.strip_prefix("fn=")) {
            (Some(r), _) => (true, r),
            (None, Some(r)) => (false, r),
            (None, None) => {
                if let (Some(c), Some(r)) = (callee.take(), l.strip_prefix("calls=")) {
                    if c == name {
                        calls += r
                            .split_whitespace()
                            .next()
                            .and_then(|n| n.parse::<u64>().ok())
                            .unwrap_or(0);
                    }
                }
                continue;
            }
        };
        let f = match rest.strip_prefix('(').and_then(|r| r.split_once(')')) {
            Some((id, n)) if !n.trim().is_empty() => {
                names.insert(id, n.trim());
                n.trim()
            }
            Some((id, _)) => names.get(id).copied().unwrap_or(""),
            None => rest.trim(),
        };
        callee = is_call.then_some(f);
    }
    calls
}

/// Runs `callgrind_annotate --inclusive=no --auto=no` on `out_file` (no
/// source annotation: its call lines carry inclusive costs).
pub fn annotate(out_file: &Path) -> Result<String, String> {
    let o = Command::new("callgrind_annotate")
        .args(["--inclusive=no", "--auto=no", "--threshold=100"])
        .arg(out_file)
        .output()
        .map_err(|e| format!("callgrind_annotate: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "callgrind_annotate failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "\
--------------------------------------------------------------------------------
111,287,500 (100.0%)  PROGRAM TOTALS

--------------------------------------------------------------------------------
Ir                    file:function
--------------------------------------------------------------------------------
 17,486,420 (15.71%)  /s/lib/util/fd_group.c:spdk_fd_group_wait [/s/build/lib/libspdk_util.so.11.0]
  2,859,397 ( 2.57%)  /w/softrdma/ibverbs/src/cq.rs:ibverbs::cq::get_cq_event [/w/target/softrdma/libibverbs.so.1]
  2,474,436 ( 2.22%)  /s/lib/nvmf/rdma.c:nvmf_rdma_poll_group_intr [/s/build/lib/libspdk_nvmf.so.22.0]
  2,239,404 ( 2.01%)  /s/lib/nvmf/rdma.c:nvmf_rdma_request_process [/s/build/lib/libspdk_nvmf.so.22.0]
    100,000 ( 0.01%)  /w/src/spdk/ops.rs:nvmf_rdma_rs::spdk::ops::poll [/w/target/release/libnvmf_rdma_rs.so]
  7,446 ( 6.69%)  => /s/lib/nvmf/rdma.c:nvmf_rdma_request_process (4,502x)
";

    #[test]
    fn rows_totals_and_transport_share() {
        let (rows, total) = parse_annotate(OUT);
        assert_eq!(total, 111_287_500);
        assert_eq!(rows.len(), 5);
        assert_eq!(rows[1].func, "ibverbs::cq::get_cq_event");
        assert_eq!(rows[2].file, "/s/lib/nvmf/rdma.c");
        assert!(rows[2].object.ends_with("libspdk_nvmf.so.22.0"));
        assert_eq!(
            transport_cost(&rows, false),
            (2_474_436 + 2_239_404, 2_859_397)
        );
        assert_eq!(transport_cost(&rows, true), (100_000, 2_859_397));
        assert!(in_transport(&rows[1], true) && !in_transport(&rows[0], false));
    }

    #[test]
    fn calls_follow_compressed_names() {
        let dump = "\
fn=(1) spdk_fd_group_wait
cfn=(2) epoll_wait
calls=3 0x1234
5 10
cfn=(3) read
calls=7 0
1 2
fn=(4) reactor_run
cfn=(2)
calls=2 0
3 4
cfn=(1)
calls=9 0
";
        assert_eq!(calls_to(dump, "epoll_wait"), 5);
        assert_eq!(calls_to(dump, "read"), 7);
        assert_eq!(calls_to(dump, "spdk_fd_group_wait"), 9);
        assert_eq!(calls_to(dump, "missing"), 0);
    }
}
