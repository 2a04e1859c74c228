//! Group destroy (upstream `poll_group_destroy`): force-finish every qpair
//! and return every buffer; forgetting a reaped qpair.

use super::*;

impl<H: Host> PollGroup<H> {
    /// Force-finishes every qpair (upstream `poll_group_destroy`): the drain
    /// deadline is now, so each QP is destroyed at once and the buffers its
    /// WRs named are released; a qpair whose commands the host still holds
    /// is dropped after its buffers went back (the host is told with
    /// `qpair_gone` and must drop those commands). Returns with every buffer
    /// returned to the host and no qpair left.
    pub(super) fn force_finish_all(&mut self, now: u64) {
        let deadline = Timestamp(now);
        for slot in 0..self.conns.len() {
            self.fini_conn(slot, now, deadline);
            self.with_conn(slot, now, |c| c.engine.handle_timeout(deadline));
        }
        self.apply_calls(now);
        self.reap(now);
        for slot in 0..self.conns.len() {
            let Some(mut conn) = self.conns[slot].take() else {
                continue;
            };
            let mut held = 0u64;
            for i in 0..conn.granted.len() {
                let req = ReqId(i as u16);
                if conn.engine.request_state(req) == Some(engine::ReqState::Executing) {
                    held += 1;
                }
                let h = request_handle(&conn, req);
                let g = &mut conn.granted[i];
                if !g.is_empty() {
                    if !self.held.take(Held::Buffers, g.len() as u64, &self.shared) {
                        tracing::error!(%h, buffers = g.len(), "internal error: releasing buffers that are not counted as held");
                    }
                    self.host.release_buffers(h, g, &mut self.calls);
                    g.clear();
                }
            }
            if !self.held.take(Held::Commands, held, &self.shared) {
                tracing::error!(qpair = %conn.handle, held, "internal error: commands_in_host below the commands dropped");
            }
            if !conn.finished {
                self.host.qpair_gone(conn.handle);
            }
            tracing::warn!(qpair = %conn.handle, commands_in_host = held, "poll group destroyed: qpair dropped");
            self.forget(&conn);
            self.shared.qpairs_forced.fetch_add(1, Ordering::Relaxed);
        }
        // Answers the host gave meanwhile are for qpairs that are gone.
        while self.calls.pop().is_some() {}
        while self.calls.take_ready().is_some() {}
    }

    /// Removes a qpair's routes and counts it destroyed.
    pub(super) fn forget(&mut self, conn: &Conn) {
        self.by_qpn.remove(&(conn.device, conn.qp_num));
        self.shared
            .routes()
            .remove(conn.cm_id.key(), (conn.device, conn.qp_num), conn.handle);
        self.pollers[conn.poller].required_wr -= conn.cq_reserved;
        self.calls
            .unreserve(calls_per_qpair(conn.engine.config().max_queue_depth));
        add_engine_waits(&mut self.pollers[conn.poller].stats, &conn.engine.stats());
        self.shared.live_qpairs.fetch_sub(1, Ordering::Relaxed);
        self.shared.count_device_qpair(conn.device, -1);
        self.shared.qpairs_destroyed.fetch_add(1, Ordering::Relaxed);
    }
}

impl<H: Host> Drop for PollGroup<H> {
    /// Upstream `poll_group_destroy`: force-finishes every qpair and returns
    /// every buffer before the host's group goes, then leaves placement.
    fn drop(&mut self) {
        let live = self.live_qpairs();
        if live > 0 {
            tracing::warn!(
                group = self.index,
                live,
                "destroying a poll group with live qpairs"
            );
            // The engine's clock: only the relative drain deadline matters.
            self.force_finish_all(u64::MAX / 2);
        }
        for p in self.pollers.drain(..) {
            self.devices.release(p.device);
        }
        self.shared.unregister_group(&self.held);
        self.core.groups.unregister(self.index);
    }
}
