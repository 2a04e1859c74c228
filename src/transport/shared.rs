//! Counters shared between the acceptor and the poll group threads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use super::stats::{PollGroupStats, ResourceCounters};

/// Atomic resource counters plus the latest per-group statistics.
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
    pub shutdown: AtomicBool,
    /// Live qpairs per group (connection scheduling).
    pub group_load: Mutex<Vec<u64>>,
    /// Latest statistics per group.
    pub group_stats: Mutex<Vec<PollGroupStats>>,
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
        }
    }
}
