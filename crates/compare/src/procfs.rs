//! CPU time of a process from `/proc/<pid>/stat` (user + system, in clock
//! ticks), for the target CPU time per I/O over a measured window.

use std::process::Command;

/// `utime + stime` (fields 14 and 15) of a `/proc/<pid>/stat` line. The
/// command name (field 2) may hold spaces and parentheses, so fields are
/// counted after its last `)`.
pub fn cpu_ticks_of_stat(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14 → index 11.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU ticks used so far by `pid`, or `None` when it is gone.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    cpu_ticks_of_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 when that fails, the
/// Linux value on every common architecture).
pub fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The 1-minute load average, for the report's context line.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_after_the_command_name() {
        let stat = "4242 (reactor_0 (x)) R 1 4242 4242 0 -1 4194560 500 0 0 0 \
                    1234 56 0 0 20 0 3 0 100 0 0";
        assert_eq!(cpu_ticks_of_stat(stat), Some(1290));
        assert_eq!(cpu_ticks_of_stat("4242 (short) R 1"), None);
        assert_eq!(cpu_ticks_of_stat("garbage"), None);
    }

    #[test]
    fn own_process_has_ticks() {
        assert!(cpu_ticks(std::process::id()).is_some());
    }
}
