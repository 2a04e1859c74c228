//! stderr logging with a `softrdma[pid]:` prefix. `SOFTRDMA_DEBUG=1` enables debug lines;
//! `SOFTRDMA_QUIET=1` silences warnings (fault logs are always printed).

use std::io::Write;
use std::sync::OnceLock;

fn level() -> u8 {
    static L: OnceLock<u8> = OnceLock::new();
    *L.get_or_init(|| {
        if std::env::var("SOFTRDMA_DEBUG").is_ok_and(|v| !v.is_empty() && v != "0") {
            2
        } else if std::env::var("SOFTRDMA_QUIET").is_ok_and(|v| !v.is_empty() && v != "0") {
            0
        } else {
            1
        }
    })
}

fn emit(msg: &str) {
    let line = format!("softrdma[{}]: {msg}\n", std::process::id());
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// A warning (on by default).
pub(crate) fn warn(msg: &str) {
    if level() >= 1 {
        emit(msg);
    }
}

/// A debug line (only with SOFTRDMA_DEBUG).
pub(crate) fn debug(msg: &str) {
    if level() >= 2 {
        emit(msg);
    }
}

/// Always printed (injected faults), also appended to `$SOFTRDMA_FAULT_LOG` if set.
pub(crate) fn fault(msg: &str) {
    emit(&format!("fault injected: {msg}"));
    if let Ok(p) = std::env::var("SOFTRDMA_FAULT_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            let _ = writeln!(f, "pid={} {msg}", std::process::id());
        }
    }
}
