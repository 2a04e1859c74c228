//! Interrupt mode: completion channel fds, arming, the "event arrived"
//! entry point and the next deadline.

use super::*;

impl<H: Host> PollGroup<H> {
    /// Interrupt mode: the fds that become readable when a completion
    /// arrives on an armed CQ (one completion channel per poller; upstream
    /// registers them with `SPDK_INTERRUPT_REGISTER_FOR_EVENTS`). Call
    /// [`PollGroup::arm`] once, then [`PollGroup::handle_event`] whenever one
    /// is readable or [`PollGroup::next_deadline`] passed.
    /// The set changes when a device is removed or opened
    /// ([`PollGroup::event_fds_generation`]); asking for it again tells the
    /// group the driver no longer waits on the fds of dropped pollers, which
    /// are closed then.
    pub fn event_fds(&mut self) -> Vec<RawFd> {
        self.retired_channels.clear();
        self.pollers.iter().map(|p| p.channel.fd()).collect()
    }

    /// Arms every CQ so that its next completion makes its fd readable
    /// (and marks the group as driven by events).
    pub fn arm(&mut self) {
        self.armed = true;
        for p in self.pollers.iter().filter(|p| !p.device_dead) {
            if let Err(e) = p.cq.req_notify(false) {
                tracing::error!(group = self.index, device = %p.stats.name, "ibv_req_notify_cq failed: {e}");
            }
        }
    }

    /// "An event arrived" (upstream `nvmf_rdma_poller_intr`-style handler):
    /// takes every pending channel event, re-arms the CQs, then polls until
    /// nothing is left — completions reaped, host answers applied, deadlines
    /// fired, WRs flushed. Re-arming before the last poll means a completion
    /// that raced with it raises a new event. Returns the work done.
    pub fn handle_event(&mut self, now: u64) -> usize {
        // A removed device's channel fails with EIO once drained: not read.
        for p in self.pollers.iter().filter(|p| !p.device_dead) {
            loop {
                match p.channel.get_event() {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!(group = self.index, device = %p.stats.name, "ibv_get_cq_event failed: {e}");
                        break;
                    }
                }
            }
        }
        self.arm();
        let mut work = 0;
        for _ in 0..MAX_EVENT_ROUNDS {
            let n = self.poll(now);
            work += n;
            if n == 0 {
                break;
            }
        }
        work
    }

    /// When this group next needs [`PollGroup::handle_event`] even if no fd
    /// fires (a drain deadline, an abort's timeout), on the `now` clock.
    /// Aborts of busy victims are also retried at every event.
    pub fn next_deadline(&self) -> Option<u64> {
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
