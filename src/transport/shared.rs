//! State shared by the acceptor and every poll group of one transport:
//! resource counters and the routes from CM ids / QP numbers to qpair
//! handles (so that CM and IB async events reach a qpair's group as a
//! message naming a checked handle, never a pointer).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::host::QpairHandle;
use super::stats::ResourceCounters;

/// Where the acceptor finds the qpair an event is for. Written by a poll
/// group when a qpair joins and when it is reaped; read by the acceptor.
/// Connection setup and teardown only, never the I/O path.
#[derive(Default)]
pub(crate) struct Routes {
    /// [`crate::verbs::CmId::key`] → qpair.
    pub by_cm: HashMap<usize, QpairHandle>,
    /// (device index, QP number) → qpair.
    pub by_qpn: HashMap<(usize, u32), QpairHandle>,
}

impl Routes {
    /// Forgets the routes of `qpair` (only if they still name it: a newer
    /// qpair may have reused the CM id address or the QP number).
    pub(crate) fn remove(&mut self, cm_key: usize, qpn: (usize, u32), qpair: QpairHandle) {
        if self.by_cm.get(&cm_key) == Some(&qpair) {
            self.by_cm.remove(&cm_key);
        }
        if self.by_qpn.get(&qpn) == Some(&qpair) {
            self.by_qpn.remove(&qpn);
        }
    }
}

/// Atomic resource counters plus the event routes.
#[derive(Default)]
pub(crate) struct Shared {
    pub live_qpairs: AtomicU64,
    pub qpairs_created: AtomicU64,
    pub qpairs_destroyed: AtomicU64,
    pub qpairs_forced: AtomicU64,
    pub connects_rejected: AtomicU64,
    pub commands_in_host: AtomicU64,
    pub buffers_held: AtomicU64,
    pub wc_errors: AtomicU64,
    pub wc_flushed: AtomicU64,
    /// Releases of resources that were not held (see [`Shared::take`]).
    pub internal_errors: AtomicU64,
    routes: Mutex<Routes>,
    /// Live qpairs per device index, over all groups (the acceptor takes a
    /// device that had `IBV_EVENT_DEVICE_FATAL` up again only at 0).
    pub device_qpairs: Mutex<Vec<u64>>,
}

impl Shared {
    /// Adds `delta` to the live-qpair count of `device`.
    pub(crate) fn count_device_qpair(&self, device: usize, delta: i64) {
        let mut v = self.device_qpairs.lock().unwrap_or_else(|e| e.into_inner());
        if v.len() <= device {
            v.resize(device + 1, 0);
        }
        v[device] = v[device].saturating_add_signed(delta);
    }

    /// Live qpairs on `device`.
    pub(crate) fn device_qpairs(&self, device: usize) -> u64 {
        let v = self.device_qpairs.lock().unwrap_or_else(|e| e.into_inner());
        v.get(device).copied().unwrap_or(0)
    }

    /// A snapshot of the counters.
    pub(crate) fn counters(&self) -> ResourceCounters {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ResourceCounters {
            live_qpairs: l(&self.live_qpairs),
            qpairs_created: l(&self.qpairs_created),
            qpairs_destroyed: l(&self.qpairs_destroyed),
            qpairs_forced: l(&self.qpairs_forced),
            connects_rejected: l(&self.connects_rejected),
            commands_in_host: l(&self.commands_in_host),
            buffers_held: l(&self.buffers_held),
            wc_errors: l(&self.wc_errors),
            wc_flushed: l(&self.wc_flushed),
            internal_errors: l(&self.internal_errors),
        }
    }

    /// The event routes (poisoning is ignored: the maps stay consistent
    /// because every update is a single insert or remove).
    pub(crate) fn routes(&self) -> MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes `n` from `counter`, a count of things held (`buffers_held`,
    /// `commands_in_host`). Taking more than is held is a transport bug: the
    /// counter is left as it is (it never wraps), `internal_errors` counts
    /// it, and `false` tells the caller to log it with the qpair and request
    /// concerned.
    pub(crate) fn take(&self, counter: &AtomicU64, n: u64) -> bool {
        let ok = counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(n))
            .is_ok();
        if !ok {
            self.internal_errors.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_never_wraps_and_counts_an_internal_error() {
        let s = Shared::default();
        s.buffers_held.fetch_add(3, Ordering::Relaxed);
        assert!(s.take(&s.buffers_held, 2));
        assert!(!s.take(&s.buffers_held, 2), "taking 2 of 1 held must fail");
        let c = s.counters();
        assert_eq!((c.buffers_held, c.internal_errors), (1, 1));
        assert!(s.take(&s.buffers_held, 1));
        assert_eq!(s.counters().buffers_held, 0);
    }
}
