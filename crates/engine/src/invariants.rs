//! Structural invariants of a qpair, checked by tests after every event.

use super::*;

/// A broken invariant (an engine bug). Names the qpair, what broke, and the
/// request involved if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("qpair {qpair}: invariant violated: {what} (request {req:?}, value {value})")]
pub struct InvariantViolation {
    /// Qpair label.
    pub qpair: u32,
    /// The invariant.
    pub what: &'static str,
    /// The request involved.
    pub req: Option<ReqId>,
    /// A value that shows the problem (a count, a state number).
    pub value: u64,
}

impl Qpair {
    /// Checks every structural invariant: queue ⇔ state, one queue per
    /// request, counters equal to the WRs actually owned by the NIC and within
    /// their limits, resources held only in states that may hold them.
    /// Cost is O(queue depth); meant for tests and debugging.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        let label = self.cfg.label;
        let fail = |what: &'static str, req: Option<ReqId>, value: u64| {
            Err(InvariantViolation {
                qpair: label,
                what,
                req,
                value,
            })
        };
        let n = self.reqs.len();

        // Queue walks: every member is on that queue and in a state mapping to it.
        let mut seen = vec![0u8; n];
        for q in QueueKind::ALL {
            let mut count = 0usize;
            let mut bad: Option<(ReqId, &'static str)> = None;
            let ended = self.queues.walk(q, n + 1, |r| {
                count += 1;
                if bad.is_some() {
                    return;
                }
                let i = r.index();
                if i >= n {
                    bad = Some((r, "queue names a slot outside the slab"));
                    return;
                }
                seen[i] = seen[i].saturating_add(1);
                if self.queues.on(r) != Some(q) {
                    bad = Some((r, "queue walk reaches a request linked elsewhere"));
                } else if self.reqs[i].state.queue() != Some(q) {
                    bad = Some((r, "request on a queue its state does not imply"));
                }
            });
            if let Some((r, what)) = bad {
                return fail(what, Some(r), q.index() as u64);
            }
            if !ended {
                return fail("queue walk does not terminate", None, q.index() as u64);
            }
            if count != self.queues.len(q) {
                return fail("queue length differs from its walk", None, count as u64);
            }
        }
        for (i, r) in self.reqs.iter().enumerate() {
            let req = ReqId(i as u16);
            let expected = r.state.queue();
            if self.queues.on(req) != expected {
                return fail(
                    "request not on the queue its state implies",
                    Some(req),
                    u64::from(r.state.upstream_number()),
                );
            }
            if seen[i] != u8::from(expected.is_some()) {
                return fail(
                    "request reached by a wrong number of queue walks",
                    Some(req),
                    u64::from(seen[i]),
                );
            }
        }

        // Counters against what the requests say is in flight.
        let mut send = 0u32;
        let mut read = 0u32;
        let mut held = self.incoming.len() as u32;
        let mut in_use = 0u32;
        for (i, r) in self.reqs.iter().enumerate() {
            let req = Some(ReqId(i as u16));
            let st = r.state;
            if r.outstanding() != r.inflight.count_ones() {
                return fail(
                    "data WR count differs from the in-flight bits",
                    req,
                    u64::from(r.ninflight),
                );
            }
            send += r.outstanding() + u32::from(r.send_inflight);
            if r.xfer == DataTransfer::HostToController {
                read += r.outstanding();
            }
            if r.recv.is_some() {
                held += 1;
            }
            if st != ReqState::Free {
                in_use += 1;
            }
            let data_ok = r.inflight == 0
                || matches!(
                    st,
                    ReqState::TransferringHostToController { .. }
                        | ReqState::TransferringControllerToHost
                );
            if !data_ok {
                return fail(
                    "data WRs in flight in a state that cannot have them",
                    req,
                    u64::from(st.upstream_number()),
                );
            }
            let send_ok = !r.send_inflight
                || matches!(
                    st,
                    ReqState::TransferringControllerToHost | ReqState::Completing
                );
            if !send_ok {
                return fail(
                    "SEND in flight in a state that cannot have it",
                    req,
                    u64::from(st.upstream_number()),
                );
            }
            if matches!(st, ReqState::TransferringHostToController { .. }) && r.inflight == 0 {
                return fail("transferring to controller with no READ in flight", req, 0);
            }
            // (A SEND that was never posted leaves only the WRITEs before it.)
            let sending = match st {
                ReqState::TransferringControllerToHost => r.send_inflight || r.inflight != 0,
                ReqState::Completing => r.send_inflight,
                _ => true,
            };
            if !sending {
                return fail("completing without a SEND in flight", req, 0);
            }
            if let ReqState::TransferringHostToController { partial } = st {
                if partial != (r.remaining() > 0) {
                    return fail(
                        "partial flag disagrees with remaining READs",
                        req,
                        u64::from(r.remaining()),
                    );
                }
            }
            if st == ReqState::Free
                && (r.recv.is_some() || r.has_buffers || r.buffers_asked || r.wrs_in_flight())
            {
                return fail("free request still holds resources", req, 0);
            }
            if r.buffers_asked && st != ReqState::NeedBuffer {
                return fail(
                    "buffer request outstanding outside NEED_BUFFER",
                    req,
                    u64::from(st.upstream_number()),
                );
            }
            if u32::from(r.inflight) >> r.nwrs().max(r.posted) != 0 {
                return fail(
                    "in-flight bit beyond the request's WRs",
                    req,
                    u64::from(r.inflight),
                );
            }
        }
        if send != self.send_depth {
            return fail(
                "send depth differs from WRs in flight",
                None,
                u64::from(self.send_depth),
            );
        }
        if read != u32::from(self.read_depth) {
            return fail(
                "read depth differs from READs in flight",
                None,
                u64::from(self.read_depth),
            );
        }
        if self.send_depth > self.cfg.max_send_depth {
            return fail(
                "send depth above its limit",
                None,
                u64::from(self.send_depth),
            );
        }
        if self.read_depth > self.cfg.max_read_depth {
            return fail(
                "read depth above its limit",
                None,
                u64::from(self.read_depth),
            );
        }
        if held != u32::from(self.recv_depth) {
            return fail(
                "recv depth differs from capsules held",
                None,
                u64::from(self.recv_depth),
            );
        }
        if self.recv_depth > self.cfg.max_queue_depth {
            return fail(
                "recv depth above the queue depth",
                None,
                u64::from(self.recv_depth),
            );
        }
        if in_use != u32::from(self.in_use) {
            return fail(
                "in-use count differs from non-free requests",
                None,
                u64::from(self.in_use),
            );
        }
        if !self.cfg.srq {
            let posted = self
                .recv_slots
                .iter()
                .filter(|s| **s == RecvSlot::Posted)
                .count();
            if posted != usize::from(self.recvs_posted) {
                return fail(
                    "posted receive count differs from slots",
                    None,
                    posted as u64,
                );
            }
            let held_slots = self
                .recv_slots
                .iter()
                .filter(|s| **s == RecvSlot::Held)
                .count();
            if held_slots != usize::from(self.recv_depth) {
                return fail(
                    "held receive slots differ from recv depth",
                    None,
                    held_slots as u64,
                );
            }
        }
        if self.state == QpairState::Active {
            if self.recv_slots.contains(&RecvSlot::Retired) {
                return fail("retired receive on an active qpair", None, 0);
            }
        } else if self.queues.len(QueueKind::PendingBuffer)
            + self.queues.len(QueueKind::PendingWrite)
            + self.queues.len(QueueKind::PendingSend)
            != 0
        {
            return fail("queued requests left on a qpair in error", None, 0);
        }
        if self.state == QpairState::Finished && (self.in_use != 0 || self.send_depth != 0) {
            return fail(
                "finished with requests or WRs outstanding",
                None,
                u64::from(self.in_use),
            );
        }
        if let Some(f) = self.fused_first {
            if self.reqs[f.index()].state == ReqState::Free {
                return fail("fused FIRST points at a free request", Some(f), 0);
            }
        }
        Ok(())
    }
}
