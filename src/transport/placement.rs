//! The registry of poll groups created and destroyed at run time, and the
//! placement of new qpairs on them (upstream `nvmf_rdma_get_optimal_poll_group`:
//! admin and I/O qpairs round-robin separately).
//!
//! Placement takes only this registry's mutex and calls nothing, so it is
//! safe to call from inside the acceptor's "new qpair" notification (SPDK
//! calls `get_optimal_poll_group` synchronously inside
//! `spdk_nvmf_tgt_new_qpair`).

use std::sync::{Mutex, MutexGuard};

/// Live group indices and the two round-robin cursors.
#[derive(Default)]
pub(crate) struct GroupRegistry {
    inner: Mutex<Slots>,
}

#[derive(Default)]
struct Slots {
    live: Vec<bool>,
    next_admin: usize,
    next_io: usize,
}

impl GroupRegistry {
    fn lock(&self) -> MutexGuard<'_, Slots> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new group and returns its index (the lowest free one),
    /// or `None` if 65536 groups are live.
    pub(crate) fn register(&self) -> Option<u16> {
        let mut s = self.lock();
        let i = match s.live.iter().position(|l| !l) {
            Some(i) => i,
            None => {
                s.live.push(false);
                s.live.len() - 1
            }
        };
        let index = u16::try_from(i).ok()?;
        s.live[i] = true;
        Some(index)
    }

    /// Removes group `index` from placement.
    pub(crate) fn unregister(&self, index: u16) {
        if let Some(l) = self.lock().live.get_mut(usize::from(index)) {
            *l = false;
        }
    }

    /// Live groups.
    pub(crate) fn count(&self) -> usize {
        self.lock().live.iter().filter(|l| **l).count()
    }

    /// The group for a new qpair with queue id `qid` (0 = admin): the next
    /// live group after the previous pick of the same kind.
    pub(crate) fn place(&self, qid: u16) -> Option<u16> {
        let mut s = self.lock();
        let n = s.live.len();
        let start = if qid == 0 { s.next_admin } else { s.next_io };
        let pick = (0..n).map(|k| (start + k) % n).find(|&g| s.live[g])?;
        if qid == 0 {
            s.next_admin = pick + 1;
        } else {
            s.next_io = pick + 1;
        }
        u16::try_from(pick).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_and_io_round_robin_separately() {
        let r = GroupRegistry::default();
        assert_eq!(r.place(0), None);
        for want in 0..3 {
            assert_eq!(r.register(), Some(want));
        }
        let admin: Vec<_> = (0..4).map(|_| r.place(0).unwrap()).collect();
        assert_eq!(admin, [0, 1, 2, 0]);
        let io: Vec<_> = (0..4).map(|_| r.place(1).unwrap()).collect();
        assert_eq!(io, [0, 1, 2, 0]);
        assert_eq!(r.place(0), Some(1));
    }

    #[test]
    fn destroyed_groups_are_skipped_and_indices_reused() {
        let r = GroupRegistry::default();
        for _ in 0..3 {
            r.register();
        }
        r.unregister(1);
        assert_eq!(r.count(), 2);
        let io: Vec<_> = (0..4).map(|_| r.place(5).unwrap()).collect();
        assert_eq!(io, [0, 2, 0, 2]);
        assert_eq!(r.register(), Some(1));
        r.unregister(0);
        r.unregister(1);
        r.unregister(2);
        assert_eq!(r.place(0), None);
        assert_eq!(r.place(3), None);
    }
}
