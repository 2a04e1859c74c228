//! The outcome of one fault scenario on one target, from what was observed.

use serde::Serialize;

use crate::child::Ended;
use crate::hosts::Probe;

/// Outcome classes, worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Outcome {
    /// The target died of a signal (or exited unasked).
    Crashed,
    /// Data read back differed from what was written.
    Corrupted,
    /// No verified I/O on a fresh connection within the deadline, or no
    /// clean exit on SIGINT.
    Hung,
    /// Live RDMA objects or qpairs not back to baseline after hosts left.
    Leaked,
    /// None of the above.
    Survived,
    /// Not run on this target (the reason is in the evidence).
    Skipped,
    /// The harness could not set the scenario up (the reason is in the
    /// evidence); not scored.
    SetupFailed,
}

impl Outcome {
    /// Every outcome, in table order.
    pub const ALL: [Outcome; 7] = [
        Outcome::Crashed,
        Outcome::Hung,
        Outcome::Leaked,
        Outcome::Corrupted,
        Outcome::Survived,
        Outcome::Skipped,
        Outcome::SetupFailed,
    ];

    /// Lower-case name used in tables.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Crashed => "crashed",
            Outcome::Corrupted => "corrupted",
            Outcome::Hung => "hung",
            Outcome::Leaked => "leaked",
            Outcome::Survived => "survived",
            Outcome::Skipped => "skipped",
            Outcome::SetupFailed => "setup failed",
        }
    }

    /// Whether this counts against the transport.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            Outcome::Crashed | Outcome::Corrupted | Outcome::Hung | Outcome::Leaked
        )
    }
}

/// What a scenario run observed on one target.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The target ended before the checks (`None`: it was alive).
    pub died: Option<Ended>,
    /// Whether the scenario itself asked the target to exit (SIGINT under load).
    pub exit_requested: bool,
    /// The verified-I/O probe on a fresh connection (`None`: not run).
    pub probe: Option<Probe>,
    /// Counters above baseline after hosts left (`qps 2→3`, `current_io_qpairs 1`).
    pub leaks: Vec<String>,
    /// The final SIGINT: how it ended and whether SIGKILL was needed.
    pub shutdown: Option<(Ended, bool)>,
    /// Seconds allowed for the SIGINT exit.
    pub shutdown_grace_s: u64,
}

/// The outcome and a one-line reason.
pub fn classify(o: &Observed) -> (Outcome, String) {
    if let Some(e) = o.died {
        match e {
            Ended::Signal { .. } => return (Outcome::Crashed, format!("nvmf_tgt died: {e}")),
            Ended::Code(0) if o.exit_requested => {}
            Ended::Code(_) if o.exit_requested => {
                return (Outcome::Crashed, format!("nvmf_tgt's exit on SIGINT: {e}"))
            }
            Ended::Code(_) => return (Outcome::Crashed, format!("nvmf_tgt exited unasked: {e}")),
        }
    }
    if let Some((e, killed)) = o.shutdown {
        if let Ended::Signal { signal, .. } = e {
            if !killed && signal != 2 {
                return (Outcome::Crashed, format!("nvmf_tgt died on SIGINT: {e}"));
            }
        }
    }
    match &o.probe {
        Some(Probe::Mismatch(l)) => return (Outcome::Corrupted, l.clone()),
        Some(Probe::Failed(why)) => {
            return (
                Outcome::Hung,
                format!("no verified I/O on a fresh connection: {why}"),
            )
        }
        Some(Probe::TimedOut) => {
            return (
                Outcome::Hung,
                "no verified I/O on a fresh connection: the probe did not finish".into(),
            )
        }
        Some(Probe::Ok) | None => {}
    }
    if let Some((e, true)) = o.shutdown {
        return (
            Outcome::Hung,
            format!(
                "no exit within {} s of SIGINT (SIGKILLed: {e})",
                o.shutdown_grace_s
            ),
        );
    }
    if let Some((e @ Ended::Code(c), false)) = o.shutdown {
        if c != 0 {
            return (Outcome::Crashed, format!("nvmf_tgt's exit on SIGINT: {e}"));
        }
    }
    if !o.leaks.is_empty() {
        return (
            Outcome::Leaked,
            format!("not back to baseline: {}", o.leaks.join(", ")),
        );
    }
    let mut why = String::from("verified I/O afterwards");
    if o.exit_requested {
        why = "clean exit on SIGINT under load".into();
    }
    if let Some((Ended::Code(0), false)) = o.shutdown {
        why.push_str(", exit 0 on SIGINT");
    }
    (Outcome::Survived, why)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Observed {
        Observed {
            probe: Some(Probe::Ok),
            shutdown: Some((Ended::Code(0), false)),
            shutdown_grace_s: 15,
            ..Observed::default()
        }
    }

    #[test]
    fn survived_when_everything_is_clean() {
        let (o, why) = classify(&healthy());
        assert_eq!(o, Outcome::Survived);
        assert!(why.contains("exit 0 on SIGINT"));
    }

    #[test]
    fn signal_is_a_crash_and_wins() {
        let mut ob = healthy();
        ob.died = Some(Ended::Signal {
            signal: 11,
            core: true,
        });
        ob.probe = Some(Probe::Mismatch("data mismatch".into()));
        let (o, why) = classify(&ob);
        assert_eq!(o, Outcome::Crashed);
        assert!(why.contains("SIGSEGV"), "{why}");
    }

    #[test]
    fn mismatch_is_corruption_before_hang_and_leak() {
        let mut ob = healthy();
        ob.probe = Some(Probe::Mismatch("data mismatch at lba 1".into()));
        ob.leaks = vec!["qps 1→2".into()];
        assert_eq!(classify(&ob).0, Outcome::Corrupted);
    }

    #[test]
    fn failed_probe_or_sigkill_is_a_hang() {
        let mut ob = healthy();
        ob.probe = Some(Probe::TimedOut);
        assert_eq!(classify(&ob).0, Outcome::Hung);
        let mut ob = healthy();
        ob.shutdown = Some((
            Ended::Signal {
                signal: 9,
                core: false,
            },
            true,
        ));
        let (o, why) = classify(&ob);
        assert_eq!(o, Outcome::Hung);
        assert!(why.contains("15 s"), "{why}");
    }

    #[test]
    fn leak_named() {
        let mut ob = healthy();
        ob.leaks = vec!["qps 1→2".into(), "current_io_qpairs 1".into()];
        let (o, why) = classify(&ob);
        assert_eq!(o, Outcome::Leaked);
        assert!(why.contains("qps 1→2, current_io_qpairs 1"));
    }

    #[test]
    fn requested_exit() {
        let ob = Observed {
            died: Some(Ended::Code(0)),
            exit_requested: true,
            ..Observed::default()
        };
        assert_eq!(classify(&ob).0, Outcome::Survived);
        let ob = Observed {
            died: Some(Ended::Code(1)),
            ..Observed::default()
        };
        assert_eq!(classify(&ob).0, Outcome::Crashed);
        let ob = Observed {
            died: Some(Ended::Signal {
                signal: 6,
                core: false,
            }),
            exit_requested: true,
            ..Observed::default()
        };
        assert_eq!(classify(&ob).0, Outcome::Crashed);
    }

    #[test]
    fn crash_during_shutdown() {
        let mut ob = healthy();
        ob.shutdown = Some((
            Ended::Signal {
                signal: 11,
                core: true,
            },
            false,
        ));
        assert_eq!(classify(&ob).0, Outcome::Crashed);
    }
}
