//! State shared by the acceptor and every poll group of one transport:
//! resource counters and the routes from CM ids / QP numbers to qpair
//! handles (so that CM and IB async events reach a qpair's group as a
//! message naming a checked handle, never a pointer).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

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

/// What one poll group holds of the host's: commands executing and data
/// buffers granted. Changed on every I/O, so each group has its own (no
/// cache line shared between groups) and only its thread writes them: a
/// relaxed load and store, no read-modify-write instruction. Any thread may
/// read them ([`Shared::counters`] adds every group's).
#[derive(Debug, Default)]
pub(crate) struct HeldCounts {
    commands_in_host: AtomicU64,
    buffers_held: AtomicU64,
}

/// Which count of [`HeldCounts`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Held {
    /// Commands handed to the host and not answered yet.
    Commands,
    /// Data buffers granted by the host and not returned yet.
    Buffers,
}

impl HeldCounts {
    fn counter(&self, what: Held) -> &AtomicU64 {
        match what {
            Held::Commands => &self.commands_in_host,
            Held::Buffers => &self.buffers_held,
        }
    }

    /// Adds `n` (the owning group's thread only).
    #[inline]
    pub(crate) fn add(&self, what: Held, n: u64) {
        let c = self.counter(what);
        c.store(c.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }

    /// Takes `n` (the owning group's thread only). Taking more than is held
    /// is a transport bug: the count is left as it is (it never wraps),
    /// `shared.internal_errors` counts it, and `false` tells the caller to
    /// log it with the qpair and request concerned.
    #[inline]
    pub(crate) fn take(&self, what: Held, n: u64, shared: &Shared) -> bool {
        let c = self.counter(what);
        let v = c.load(Ordering::Relaxed);
        if v < n {
            shared.internal_errors.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        c.store(v - n, Ordering::Relaxed);
        true
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
    /// Commands and buffers still counted by poll groups that are gone
    /// (0 unless a group was destroyed holding some: a leak to report).
    pub commands_in_host: AtomicU64,
    pub buffers_held: AtomicU64,
    /// The held counts of every live poll group.
    groups_held: Mutex<Vec<Arc<HeldCounts>>>,
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

    /// The held counts of a new poll group.
    pub(crate) fn register_group(&self) -> Arc<HeldCounts> {
        let h = Arc::new(HeldCounts::default());
        self.groups().push(h.clone());
        h
    }

    /// A poll group is gone: what it still counted stays visible in the
    /// transport's totals.
    pub(crate) fn unregister_group(&self, held: &Arc<HeldCounts>) {
        self.groups().retain(|g| !Arc::ptr_eq(g, held));
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        self.commands_in_host
            .fetch_add(l(&held.commands_in_host), Ordering::Relaxed);
        self.buffers_held
            .fetch_add(l(&held.buffers_held), Ordering::Relaxed);
    }

    fn groups(&self) -> MutexGuard<'_, Vec<Arc<HeldCounts>>> {
        self.groups_held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A snapshot of the counters.
    pub(crate) fn counters(&self) -> ResourceCounters {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (mut commands_in_host, mut buffers_held) =
            (l(&self.commands_in_host), l(&self.buffers_held));
        for g in self.groups().iter() {
            commands_in_host += l(&g.commands_in_host);
            buffers_held += l(&g.buffers_held);
        }
        ResourceCounters {
            live_qpairs: l(&self.live_qpairs),
            qpairs_created: l(&self.qpairs_created),
            qpairs_destroyed: l(&self.qpairs_destroyed),
            qpairs_forced: l(&self.qpairs_forced),
            connects_rejected: l(&self.connects_rejected),
            commands_in_host,
            buffers_held,
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_never_wraps_and_counts_an_internal_error() {
        let s = Shared::default();
        let g = s.register_group();
        g.add(Held::Buffers, 3);
        assert!(g.take(Held::Buffers, 2, &s));
        assert!(
            !g.take(Held::Buffers, 2, &s),
            "taking 2 of 1 held must fail"
        );
        let c = s.counters();
        assert_eq!((c.buffers_held, c.internal_errors), (1, 1));
        assert!(g.take(Held::Buffers, 1, &s));
        assert_eq!(s.counters().buffers_held, 0);
    }

    #[test]
    fn counters_add_every_group_and_keep_what_a_gone_group_held() {
        let s = Shared::default();
        let (a, b) = (s.register_group(), s.register_group());
        a.add(Held::Commands, 2);
        b.add(Held::Commands, 3);
        b.add(Held::Buffers, 4);
        let c = s.counters();
        assert_eq!((c.commands_in_host, c.buffers_held), (5, 4));
        s.unregister_group(&b);
        let c = s.counters();
        assert_eq!(
            (c.commands_in_host, c.buffers_held),
            (5, 4),
            "b's leak stays visible"
        );
        assert!(a.take(Held::Commands, 2, &s));
        assert_eq!(s.counters().commands_in_host, 3);
    }
}
