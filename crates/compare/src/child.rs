//! Child processes of a comparison run: output in a log file, bounded waits,
//! SIGINT/SIGKILL stops, and how they ended (exit code or signal).

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Ended {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal (`core`: a core file was written).
    Signal {
        /// Signal number.
        signal: i32,
        /// Whether the kernel dumped core.
        core: bool,
    },
}

impl Ended {
    /// From a wait status.
    pub fn of(status: ExitStatus) -> Ended {
        match (status.code(), status.signal()) {
            (Some(c), _) => Ended::Code(c),
            (None, Some(s)) => Ended::Signal {
                signal: s,
                core: status.core_dumped(),
            },
            (None, None) => Ended::Code(-1),
        }
    }

    /// Whether it ended with exit code 0.
    pub fn success(self) -> bool {
        self == Ended::Code(0)
    }
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Code(c) => write!(f, "exit code {c}"),
            Ended::Signal { signal, core } => {
                write!(f, "signal {signal} ({})", signal_name(*signal))?;
                if *core {
                    write!(f, ", core dumped")?;
                }
                Ok(())
            }
        }
    }
}

/// Conventional name of a Linux signal number.
pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        2 => "SIGINT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        _ => "?",
    }
}

/// A started child whose stdout and stderr go to `log`.
pub struct Proc {
    child: Child,
    /// Its log file.
    pub log: PathBuf,
    ended: Option<Ended>,
}

impl Proc {
    /// Starts `cmd` (`name` for errors) with its output in `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> std::io::Result<Proc> {
        let out = std::fs::File::create(log)?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = cmd
            .spawn()
            .map_err(|e| std::io::Error::new(e.kind(), format!("{name}: {e}")))?;
        Ok(Proc {
            child,
            log: log.to_path_buf(),
            ended: None,
        })
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How it ended, if it has.
    pub fn poll(&mut self) -> Option<Ended> {
        if self.ended.is_none() {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.ended = Some(Ended::of(s));
            }
        }
        self.ended
    }

    /// Waits up to `timeout`; `None` when it is still running.
    pub fn wait_for(&mut self, timeout: Duration) -> Option<Ended> {
        let start = Instant::now();
        loop {
            if let Some(e) = self.poll() {
                return Some(e);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends signal `sig` (by number) with `kill(1)`.
    pub fn signal(&self, sig: i32) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// SIGINT, then SIGKILL after `grace`; returns how it ended and whether
    /// it needed the SIGKILL.
    pub fn stop(&mut self, grace: Duration) -> (Ended, bool) {
        if let Some(e) = self.poll() {
            return (e, false);
        }
        self.signal(2);
        if let Some(e) = self.wait_for(grace) {
            return (e, false);
        }
        let _ = self.child.kill();
        let e = self.child.wait().map(Ended::of).unwrap_or(Ended::Code(-1));
        self.ended = Some(e);
        (e, true)
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log_text(), n)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.poll().is_none() {
            self.stop(Duration::from_secs(5));
        }
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endings() {
        let dir = std::env::temp_dir().join(format!("compare-child-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ok = Proc::spawn("true", Command::new("true"), &dir.join("a.log")).unwrap();
        assert_eq!(ok.wait_for(Duration::from_secs(10)), Some(Ended::Code(0)));
        let mut sleeper = Command::new("sleep");
        sleeper.arg("30");
        let mut s = Proc::spawn("sleep", sleeper, &dir.join("b.log")).unwrap();
        let (e, killed) = s.stop(Duration::from_secs(5));
        assert_eq!(
            e,
            Ended::Signal {
                signal: 2,
                core: false
            }
        );
        assert!(!killed);
        assert_eq!(e.to_string(), "signal 2 (SIGINT)");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tails() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
