//! Index-linked request queues of one qpair.
//!
//! Each request slot has one link (like upstream's shared `state_link`), plus
//! a record of which queue it is on. Linking a slot that is already on a
//! queue is refused, so a slot can never sit on two queues.

use super::ids::ReqId;
use super::state::QueueKind;

const NIL: u16 = u16::MAX;

#[derive(Debug, Clone, Copy)]
struct Link {
    prev: u16,
    next: u16,
    on: Option<QueueKind>,
}

#[derive(Debug, Clone, Copy)]
struct Ends {
    head: u16,
    tail: u16,
    len: u16,
}

/// A queue-membership error: the caller tried to break "one slot, one queue".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The slot is already linked into a queue.
    #[error("request {req:?} is already on queue {on:?}")]
    AlreadyLinked {
        /// The slot.
        req: ReqId,
        /// The queue it is on.
        on: QueueKind,
    },
    /// The anchor slot is not on the queue.
    #[error("request {req:?} is not on queue {queue:?}")]
    NotOnQueue {
        /// The slot.
        req: ReqId,
        /// The queue.
        queue: QueueKind,
    },
}

/// The five request queues of a qpair over one link array.
#[derive(Debug, Clone)]
pub struct Queues {
    ends: [Ends; 5],
    links: Vec<Link>,
}

impl Queues {
    /// `slots` unlinked slots, all queues empty.
    pub fn new(slots: usize) -> Queues {
        Queues {
            ends: [Ends {
                head: NIL,
                tail: NIL,
                len: 0,
            }; 5],
            links: vec![
                Link {
                    prev: NIL,
                    next: NIL,
                    on: None,
                };
                slots
            ],
        }
    }

    /// The queue `req` is linked into.
    pub fn on(&self, req: ReqId) -> Option<QueueKind> {
        self.links[req.index()].on
    }

    /// Head of `q`.
    pub fn head(&self, q: QueueKind) -> Option<ReqId> {
        opt(self.ends[q.index()].head)
    }

    /// Successor of `req` on its queue.
    pub fn next(&self, req: ReqId) -> Option<ReqId> {
        opt(self.links[req.index()].next)
    }

    /// Whether any of the pending-read, pending-write or pending-send queues
    /// holds a request (the queues a new command could be queued behind).
    pub fn any_pending(&self) -> bool {
        (self.ends[QueueKind::PendingRead.index()].head
            & self.ends[QueueKind::PendingWrite.index()].head
            & self.ends[QueueKind::PendingSend.index()].head)
            != NIL
    }

    /// Whether `q` is empty.
    pub fn is_empty(&self, q: QueueKind) -> bool {
        self.ends[q.index()].head == NIL
    }

    /// Number of slots on `q`.
    pub fn len(&self, q: QueueKind) -> usize {
        usize::from(self.ends[q.index()].len)
    }

    /// Appends `req` to `q`.
    #[inline]
    pub fn push_back(&mut self, q: QueueKind, req: ReqId) -> Result<(), QueueError> {
        self.check_unlinked(req)?;
        let tail = self.ends[q.index()].tail;
        self.link_between(q, req, tail, NIL);
        Ok(())
    }

    /// Prepends `req` to `q`.
    #[inline]
    pub fn push_front(&mut self, q: QueueKind, req: ReqId) -> Result<(), QueueError> {
        self.check_unlinked(req)?;
        let head = self.ends[q.index()].head;
        self.link_between(q, req, NIL, head);
        Ok(())
    }

    /// Inserts `req` right before `anchor`, which must be on `q`.
    pub fn insert_before(
        &mut self,
        q: QueueKind,
        req: ReqId,
        anchor: ReqId,
    ) -> Result<(), QueueError> {
        self.check_unlinked(req)?;
        if self.on(anchor) != Some(q) {
            return Err(QueueError::NotOnQueue {
                req: anchor,
                queue: q,
            });
        }
        let prev = self.links[anchor.index()].prev;
        self.link_between(q, req, prev, anchor.0);
        Ok(())
    }

    /// Unlinks `req` from whatever queue it is on (no-op when unlinked).
    #[inline(always)]
    pub fn remove(&mut self, req: ReqId) {
        let Link { prev, next, on } = self.links[req.index()];
        let Some(q) = on else { return };
        let ends = &mut self.ends[q.index()];
        if prev == NIL {
            ends.head = next;
        } else {
            self.links[usize::from(prev)].next = next;
        }
        let ends = &mut self.ends[q.index()];
        if next == NIL {
            ends.tail = prev;
        } else {
            self.links[usize::from(next)].prev = prev;
        }
        self.ends[q.index()].len -= 1;
        self.links[req.index()] = Link {
            prev: NIL,
            next: NIL,
            on: None,
        };
    }

    /// Walks `q` from its head, at most `limit` steps, calling `f` for each
    /// slot. Returns false if the walk did not reach the end within `limit`.
    /// Used by invariant checks, which must survive a corrupted list.
    pub fn walk(&self, q: QueueKind, limit: usize, mut f: impl FnMut(ReqId)) -> bool {
        let mut cur = self.ends[q.index()].head;
        for _ in 0..limit {
            if cur == NIL {
                return true;
            }
            if usize::from(cur) >= self.links.len() {
                return false;
            }
            f(ReqId(cur));
            cur = self.links[usize::from(cur)].next;
        }
        cur == NIL
    }

    /// Reproduces upstream's `STAILQ_INSERT_HEAD(free_queue)` on a request
    /// that is still linked elsewhere: only for the #3463 teeth test.
    #[cfg(feature = "sim")]
    pub(crate) fn corrupt_push_front(&mut self, q: QueueKind, req: ReqId) {
        let head = self.ends[q.index()].head;
        self.link_between(q, req, NIL, head);
    }

    #[inline]
    fn check_unlinked(&self, req: ReqId) -> Result<(), QueueError> {
        match self.links[req.index()].on {
            Some(on) => Err(QueueError::AlreadyLinked { req, on }),
            None => Ok(()),
        }
    }

    #[inline]
    fn link_between(&mut self, q: QueueKind, req: ReqId, prev: u16, next: u16) {
        self.links[req.index()] = Link {
            prev,
            next,
            on: Some(q),
        };
        if prev == NIL {
            self.ends[q.index()].head = req.0;
        } else {
            self.links[usize::from(prev)].next = req.0;
        }
        if next == NIL {
            self.ends[q.index()].tail = req.0;
        } else {
            self.links[usize::from(next)].prev = req.0;
        }
        self.ends[q.index()].len += 1;
    }
}

fn opt(v: u16) -> Option<ReqId> {
    (v != NIL).then_some(ReqId(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(q: &Queues, k: QueueKind) -> Vec<u16> {
        let mut v = Vec::new();
        assert!(q.walk(k, 100, |r| v.push(r.0)));
        v
    }

    #[test]
    fn push_remove_insert() {
        let mut q = Queues::new(8);
        for i in 0..4 {
            q.push_back(QueueKind::PendingRead, ReqId(i)).unwrap();
        }
        q.push_front(QueueKind::PendingRead, ReqId(4)).unwrap();
        q.insert_before(QueueKind::PendingRead, ReqId(5), ReqId(2))
            .unwrap();
        assert_eq!(collect(&q, QueueKind::PendingRead), vec![4, 0, 1, 5, 2, 3]);
        q.remove(ReqId(4));
        q.remove(ReqId(3));
        q.remove(ReqId(5));
        assert_eq!(collect(&q, QueueKind::PendingRead), vec![0, 1, 2]);
        assert_eq!(q.len(QueueKind::PendingRead), 3);
        assert_eq!(
            q.push_back(QueueKind::Free, ReqId(1)),
            Err(QueueError::AlreadyLinked {
                req: ReqId(1),
                on: QueueKind::PendingRead
            })
        );
        q.remove(ReqId(7));
        assert_eq!(q.len(QueueKind::Free), 0);
    }
}
