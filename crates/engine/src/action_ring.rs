//! The FIFO of actions a qpair has emitted and the transport not yet taken.
//!
//! A power-of-two ring over a slice allocated once: a push and a pop are an
//! index mask and a copy (`Action` is `Copy`), cheaper than `VecDeque`'s
//! general wrap-around. It grows (doubling, off the hot path) only if the
//! transport lets more actions pile up than the capacity chosen at creation.

use super::action::Action;

/// A growable-on-overflow ring of [`Action`]s. `head` and `tail` count
/// pops and pushes (wrapping); a slot is a count masked by `mask`
/// (`slots.len() - 1`), so a push or a pop is one mask and one copy.
#[derive(Debug)]
pub struct ActionRing {
    slots: Box<[Action]>,
    mask: usize,
    head: usize,
    tail: usize,
}

impl ActionRing {
    /// An empty ring holding at least `min_capacity` actions before growing.
    pub fn with_capacity(min_capacity: usize) -> ActionRing {
        let cap = min_capacity.max(1).next_power_of_two();
        ActionRing {
            slots: vec![Action::Finished; cap].into_boxed_slice(),
            mask: cap - 1,
            head: 0,
            tail: 0,
        }
    }

    /// Appends `a` (always inlined: a mask, a bounds test and a store).
    #[inline(always)]
    pub fn push_back(&mut self, a: Action) {
        if self.tail.wrapping_sub(self.head) > self.mask {
            self.grow();
        }
        self.slots[self.tail & self.mask] = a;
        self.tail = self.tail.wrapping_add(1);
    }

    /// Takes the oldest action.
    #[inline]
    pub fn pop_front(&mut self) -> Option<Action> {
        if self.head == self.tail {
            return None;
        }
        let a = self.slots[self.head & self.mask];
        self.head = self.head.wrapping_add(1);
        Some(a)
    }

    /// Moves every action, oldest first, to the end of `out`.
    pub fn drain_into(&mut self, out: &mut Vec<Action>) {
        out.reserve(self.tail.wrapping_sub(self.head));
        while let Some(a) = self.pop_front() {
            out.push(a);
        }
    }

    /// Doubles the capacity, oldest action first in the new slice.
    #[cold]
    fn grow(&mut self) {
        let len = self.tail.wrapping_sub(self.head);
        let mut slots = vec![Action::Finished; self.slots.len() * 2];
        for (i, slot) in slots.iter_mut().enumerate().take(len) {
            *slot = self.slots[self.head.wrapping_add(i) & self.mask];
        }
        self.slots = slots.into_boxed_slice();
        self.mask = self.slots.len() - 1;
        self.head = 0;
        self.tail = len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::RecvId;

    fn recv(i: u32) -> Action {
        Action::PostRecv { recv: RecvId(i) }
    }

    #[test]
    fn fifo_across_wrap_and_growth() {
        let mut r = ActionRing::with_capacity(3); // 4 slots
        for i in 0..3 {
            r.push_back(recv(i));
        }
        assert_eq!(r.pop_front(), Some(recv(0)));
        assert_eq!(r.pop_front(), Some(recv(1)));
        // Wraps: head at 2, then grows from 4 to 8 with the order kept.
        for i in 3..9 {
            r.push_back(recv(i));
        }
        let mut out = Vec::new();
        r.drain_into(&mut out);
        assert_eq!(out, (2..9).map(recv).collect::<Vec<_>>());
        assert_eq!(r.pop_front(), None);
    }
}
