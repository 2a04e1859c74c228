//! Interrupt mode: completion channel fds, arming, the "event arrived"
//! entry point and the next deadline.

use super::*;

impl<H: Host> PollGroup<H> {
    /// Interrupt mode: the fds that become readable when a completion
    /// arrives on an armed CQ (one completion channel per poller; upstream
    /// registers them with `SPDK_INTERRUPT_REGISTER_FOR_EVENTS`), in poller
    /// order. Call [`PollGroup::arm`] once, then
    /// [`PollGroup::handle_channel_event`] when fd `i` is readable (or
    /// [`PollGroup::handle_event`] when some fd is), and
    /// [`PollGroup::handle_deadline`] when [`PollGroup::next_deadline`]
    /// passed. The set changes when a device is removed or opened
    /// ([`PollGroup::event_fds_generation`]); asking for it again tells the
    /// group the driver no longer waits on the fds of dropped pollers, which
    /// are closed then.
    pub fn event_fds(&mut self) -> Vec<RawFd> {
        self.retired_channels.clear();
        self.pollers.iter().map(|p| p.channel.fd()).collect()
    }

    /// Arms every CQ so that its next completion makes its fd readable, and
    /// puts the group in interrupt mode: from now on the push entry points
    /// ([`PollGroup::complete`], [`PollGroup::free`], [`PollGroup::deliver`],
    /// …) post the WRs they queued before returning (upstream flushes
    /// `request_transfer_out`'s sends at once in interrupt mode), since no
    /// poll follows them: a response would otherwise wait for the next
    /// completion event or deadline.
    pub fn arm(&mut self) {
        self.armed = true;
        for p in 0..self.pollers.len() {
            self.arm_poller(p);
        }
    }

    /// Arms poller `p`'s CQ for its next completion.
    fn arm_poller(&self, p: usize) {
        let p = &self.pollers[p];
        if p.device_dead {
            return;
        }
        if let Err(e) = p.cq.req_notify(false) {
            tracing::error!(group = self.index, device = %p.stats.name, "ibv_req_notify_cq failed: {e}");
        }
    }

    /// "An event arrived" on one of the channels, not knowing which (the
    /// standalone driver waits on all of them at once): takes every pending
    /// channel event, re-arms the CQs, then polls until nothing is left
    /// ([`PollGroup::handle_deadline`]). Re-arming before the last poll
    /// means a completion that raced with it raises a new event. Returns the
    /// work done.
    pub fn handle_event(&mut self, now: u64) -> usize {
        // A removed device's channel fails with EIO once drained: not read.
        for p in 0..self.pollers.len() {
            if self.pollers[p].device_dead {
                continue;
            }
            while self.take_channel_event(p) {}
        }
        self.arm();
        self.handle_deadline(now)
    }

    /// "The channel of poller `poller` is readable" (upstream
    /// `nvmf_rdma_poll_group_intr`, one interrupt per poller, fd
    /// `event_fds()[poller]`): takes one event (one `read`, none when the
    /// provider already knows it is owed), re-arms that CQ, then polls until
    /// nothing is left. An fd with more events stays readable (level
    /// triggered) and comes back. Returns the work done.
    pub fn handle_channel_event(&mut self, poller: usize, now: u64) -> usize {
        if poller >= self.pollers.len() || self.pollers[poller].device_dead {
            tracing::debug!(
                group = self.index,
                poller,
                "event for a poller this group does not have (or whose device is gone)"
            );
            return 0;
        }
        if self.take_channel_event(poller) {
            self.arm_poller(poller);
        }
        self.handle_deadline(now)
    }

    /// A deadline passed ([`PollGroup::next_deadline`]) or the driver's tick:
    /// polls until nothing is left — completions reaped, host answers
    /// applied, deadlines fired, WRs flushed (at most a fixed number of
    /// rounds; if work is left then, `next_deadline` is due at once, since
    /// the completions left in a re-armed CQ raise no event). Returns the
    /// work done.
    pub fn handle_deadline(&mut self, now: u64) -> usize {
        let mut work = 0;
        self.backlog = true;
        for _ in 0..MAX_EVENT_ROUNDS {
            let n = self.poll(now);
            work += n;
            if n == 0 {
                self.backlog = false;
                break;
            }
        }
        work
    }

    /// Takes one pending event of poller `p`'s channel (acked at once).
    fn take_channel_event(&self, p: usize) -> bool {
        let p = &self.pollers[p];
        match p.channel.get_event() {
            Ok(Some(_)) => true,
            Ok(None) => false,
            Err(e) => {
                tracing::error!(group = self.index, device = %p.stats.name, "ibv_get_cq_event failed: {e}");
                false
            }
        }
    }

    /// Interrupt mode: does what the end of a poll does (posts what a push
    /// entry point queued, frees the qpairs that finished — a qpair whose
    /// last event came through `deliver` or `fini` would otherwise wait for a
    /// poll that no fd announces), not inside another entry point, whose end
    /// does it.
    pub(super) fn flush_pushed(&mut self, now: u64) {
        if self.armed && !self.in_call {
            self.settle(now);
        }
    }

    /// When this group next needs [`PollGroup::handle_event`] even if no fd
    /// fires (a drain deadline, an abort's timeout), on the `now` clock.
    /// Aborts of busy victims are also retried at every event.
    pub fn next_deadline(&self) -> Option<u64> {
        if self.backlog {
            // Entries already in a CQ when it was re-armed raise no event.
            return Some(0);
        }
        // Only a qpair told to fini has a drain deadline (`drain_timers`):
        // without one, no walk over every qpair per event.
        let draining: &[Option<Conn>] = if self.drain_timers { &self.conns } else { &[] };
        let drains = draining
            .iter()
            .flatten()
            .filter_map(|c| c.engine.poll_timeout().map(|t| t.0));
        let aborts = self.aborts.iter().map(|a| a.deadline);
        drains.chain(aborts).min()
    }
}
