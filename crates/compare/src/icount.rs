//! Instructions per I/O inside the transport: `nvmf_tgt` under callgrind
//! for a fixed number of 4 KiB I/Os, the inclusive cost of the transport's
//! entry points summed from `callgrind_annotate --inclusive=yes`.

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
    /// I/Os completed during the collection.
    pub ios: u64,
    /// Inclusive instructions of the transport's entry points.
    pub transport_ir: u64,
    /// `transport_ir / ios`.
    pub ir_per_io: f64,
    /// Top functions by inclusive cost (name, Ir per I/O).
    pub top: Vec<(String, f64)>,
    /// Why it was not measured.
    pub skipped: Option<String>,
}

/// Whether a function (as callgrind names it) is a transport entry point:
/// upstream's `nvmf_rdma_*` for `RDMA`, the `RDMA_RS` ops for ours.
pub fn is_entry(func: &str, ours: bool) -> bool {
    let name = func.split(['(', ' ']).next().unwrap_or(func);
    if ours {
        name.starts_with("nvmf_rdma_rs") || name.contains("nvmf_rdma_rs::spdk::ops")
    } else {
        name.starts_with("nvmf_rdma_") && !name.starts_with("nvmf_rdma_rs")
    }
}

/// `(Ir, function)` rows of `callgrind_annotate --inclusive=yes` output.
pub fn parse_annotate(out: &str) -> Vec<(u64, String)> {
    out.lines()
        .filter_map(|l| {
            let l = l.trim();
            let (num, rest) = l.split_once(' ')?;
            let ir: u64 = num.replace(',', "").parse().ok()?;
            let rest = rest.trim_start();
            // `(12.34%)  file:function [lib]` or `file:function [lib]`.
            let rest = match rest.strip_prefix('(') {
                Some(r) => r.split_once(')')?.1.trim_start(),
                None => rest,
            };
            let func = rest.rsplit_once(':').map(|(_, f)| f).unwrap_or(rest);
            let func = func.split(" [").next().unwrap_or(func).trim();
            Some((ir, func.to_string()))
        })
        .collect()
}

/// The transport's inclusive cost: the largest inclusive figure among the
/// entry points that are not called by other entry points is what the
/// poller and the generic layer spend inside it. Callgrind's inclusive
/// cost of a function already holds its callees, so summing nested entry
/// points would count twice: the roots are the poll function and the
/// non-polling ops, approximated here by the sum over top-level names.
pub fn transport_cost(rows: &[(u64, String)], ours: bool, roots: &[&str]) -> u64 {
    rows.iter()
        .filter(|(_, f)| is_entry(f, ours) && roots.iter().any(|r| f.starts_with(r)))
        .map(|(ir, _)| *ir)
        .sum()
}

/// Runs `callgrind_annotate --inclusive=yes` on `out_file`.
pub fn annotate(out_file: &Path) -> Result<String, String> {
    let o = Command::new("callgrind_annotate")
        .args(["--inclusive=yes", "--threshold=100"])
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
Ir
--------------------------------------------------------------------------------
1,000,000 (100.0%)  PROGRAM TOTALS

Ir                  file:function
--------------------------------------------------------------------------------
900,000 (90.00%)  ???:spdk_thread_poll [/x/libspdk_thread.so.10.0]
500,000 (50.00%)  rdma.c:nvmf_rdma_poll_group_poll [/x/libspdk_nvmf.so.19.0]
300,000 (30.00%)  rdma.c:nvmf_rdma_request_process [/x/libspdk_nvmf.so.19.0]
 20,000  (2.00%)  rdma.c:nvmf_rdma_accept [/x/libspdk_nvmf.so.19.0]
 40,000  (4.00%)  ???:ibv_poll_cq [/x/libibverbs.so.1]
";

    #[test]
    fn rows_and_entry_points() {
        let rows = parse_annotate(OUT);
        assert!(rows.contains(&(500_000, "nvmf_rdma_poll_group_poll".to_string())));
        assert!(rows.contains(&(40_000, "ibv_poll_cq".to_string())));
        assert!(is_entry("nvmf_rdma_request_process", false));
        assert!(!is_entry("spdk_thread_poll", false));
        assert!(!is_entry("nvmf_rdma_rs_poll_group_poll", false));
        assert!(is_entry("nvmf_rdma_rs_poll_group_poll", true));
        let roots = ["nvmf_rdma_poll_group_poll", "nvmf_rdma_accept"];
        assert_eq!(transport_cost(&rows, false, &roots), 520_000);
    }
}
