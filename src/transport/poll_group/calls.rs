//! The host's answers: push entry points, the fixed-capacity queue of
//! answers given during a group call, aborts, buffer grants.

use super::*;

impl<H: Host> PollGroup<H> {
    /// A command finished (SPDK `req_complete`). Applied at once, or queued
    /// if a group call is in progress on this thread.
    pub fn complete(&mut self, req: RequestHandle, completion: Completion, now: u64) {
        if self.answer_now() {
            self.apply_now(Call::Complete { req, completion }, now);
            return;
        }
        let pushed = self.calls.complete(req, completion);
        self.pushed(pushed, now);
    }

    /// A command is dropped without a response (SPDK `req_free`).
    pub fn free(&mut self, req: RequestHandle, now: u64) {
        if self.answer_now() {
            self.apply_now(Call::Free { req }, now);
            return;
        }
        let pushed = self.calls.free(req);
        self.pushed(pushed, now);
    }

    /// Whether an answer given now would be the next one applied: no group
    /// call is running and nothing is queued ahead of it.
    #[inline]
    fn answer_now(&self) -> bool {
        !self.in_call && self.calls.is_empty()
    }

    /// Applies `call` as queuing it and applying the queue would (it would
    /// be first), without the round trip through the queue; then what it
    /// queued; then, as [`PollGroup::pushed`] does, posts what it produced
    /// in interrupt mode (no poll follows an answer given outside a group
    /// call: the response would wait for the next completion event).
    fn apply_now(&mut self, call: Call, now: u64) {
        self.in_call = true;
        self.apply_call(call, now);
        self.in_call = false;
        self.apply_calls(now);
        self.flush_pushed(now);
    }

    /// Buffers for an earlier [`BufferGrant::Later`].
    pub fn buffers_ready(&mut self, req: RequestHandle, buffers: &RequestBuffers, now: u64) {
        let pushed = self.calls.buffers_ready(req, buffers);
        self.pushed(pushed, now);
    }

    /// The host wants the qpair gone (SPDK `qpair_fini`); `done` runs when
    /// the host may reuse the queue id (at once, as upstream); the
    /// transport's qpair lives until the NIC returned every WR.
    pub fn fini(&mut self, qpair: QpairHandle, done: Option<FiniDone>, now: u64) {
        let pushed = self.calls.fini(qpair, done);
        self.pushed(pushed, now);
    }

    /// Aborts command `cid` of `qpair` if the transport still holds it
    /// (SPDK `qpair_abort_request`), with a synchronous outcome.
    pub fn abort(&mut self, qpair: QpairHandle, cid: u16, now: u64) -> AbortResult {
        let Some(slot) = self.live_slot(qpair) else {
            return AbortResult::NotFound;
        };
        let mut result = AbortResult::NotFound;
        self.with_conn(slot, now, |c| {
            let outcome = c.engine.abort(cid)?;
            tracing::info!(qpair = %c.handle, cid, ?outcome, "abort");
            result = match outcome {
                engine::AbortOutcome::Aborted(_) => AbortResult::Aborted,
                engine::AbortOutcome::Executing(r) => AbortResult::Executing(request_handle(c, r)),
                engine::AbortOutcome::Busy(_) => AbortResult::Retrying,
                engine::AbortOutcome::NotFound | engine::AbortOutcome::TooLate(_) => {
                    AbortResult::NotFound
                }
            };
            Ok(())
        });
        if result == AbortResult::Retrying {
            let timeout = u64::from(self.opts.abort_timeout_sec) * 1_000_000_000;
            self.aborts.push(PendingAbort {
                qpair,
                cid,
                deadline: now.saturating_add(timeout),
            });
        }
        self.apply_calls(now);
        self.flush_pushed(now);
        result
    }

    /// Retries aborts whose victim was moving data.
    pub(super) fn retry_aborts(&mut self, now: u64) {
        if self.aborts.is_empty() {
            return;
        }
        let mut i = 0;
        while i < self.aborts.len() {
            let PendingAbort {
                qpair,
                cid,
                deadline,
            } = self.aborts[i];
            let mut outcome = None;
            if let Some(slot) = self.live_slot(qpair) {
                self.with_conn(slot, now, |c| {
                    outcome = Some(c.engine.abort(cid)?);
                    Ok(())
                });
            }
            let done = match outcome {
                Some(engine::AbortOutcome::Aborted(_)) => Some(true),
                Some(engine::AbortOutcome::Busy(_)) if now < deadline => None,
                _ => Some(false),
            };
            match done {
                Some(aborted) => {
                    self.aborts.swap_remove(i);
                    tracing::info!(%qpair, cid, aborted, "abort retry finished");
                    self.host.abort_finished(qpair, cid, aborted);
                }
                None => i += 1,
            }
        }
        self.apply_calls(now);
    }

    /// After a host answer was queued: applies the queue unless a group
    /// call is running (then the outermost one applies it before returning).
    pub(super) fn pushed(&mut self, pushed: Result<(), CallQueueFull>, now: u64) {
        if let Err(e) = pushed {
            tracing::error!(group = self.index, "host answer dropped: {e}");
        }
        self.apply_calls(now);
        self.flush_pushed(now);
    }

    /// Applies every queued host answer, in order, until none is left
    /// (answers may queue more). Nested calls return at once. Inlined:
    /// most calls (every poll, every engine event) find nothing queued.
    #[inline]
    pub(super) fn apply_calls(&mut self, now: u64) {
        if !self.in_call && !self.calls.is_empty() {
            self.apply_queued_calls(now);
        }
    }

    /// [`PollGroup::apply_calls`] with answers queued and no call running.
    #[inline(never)]
    fn apply_queued_calls(&mut self, now: u64) {
        self.in_call = true;
        while let Some(call) = self.calls.pop() {
            self.apply_call(call, now);
        }
        self.in_call = false;
    }

    pub(super) fn apply_call(&mut self, call: Call, now: u64) {
        match call {
            Call::Complete { req, completion } => {
                self.command_back(req);
                if let Some(slot) = self.live_slot(req.qpair) {
                    self.with_conn(slot, now, |c| {
                        c.engine
                            .handle_command_executed(ReqId(req.slot), completion)
                    });
                }
            }
            Call::Free { req } => {
                self.command_back(req);
                if let Some(slot) = self.live_slot(req.qpair) {
                    self.with_conn(slot, now, |c| {
                        c.engine.handle_command_freed(ReqId(req.slot))
                    });
                }
            }
            Call::BuffersReady { req } => {
                let Some(buffers) = self.calls.take_ready() else {
                    tracing::error!(%req, "buffers_ready without buffers");
                    return;
                };
                let Some(slot) = self.live_slot(req.qpair) else {
                    tracing::debug!(%req, "buffers for a qpair that is gone: returned");
                    self.host.release_buffers(req, &buffers, &mut self.calls);
                    return;
                };
                let Some(c) = self.conns[slot].as_mut() else {
                    return;
                };
                let holder = c.granted.get(req.slot as usize).map(RequestBuffers::len);
                if holder != Some(0) {
                    self.shared.internal_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(%req, held = ?holder, "internal error: buffers granted to a request that cannot hold them; returned");
                    self.host.release_buffers(req, &buffers, &mut self.calls);
                    return;
                }
                c.granted[req.slot as usize] = buffers;
                self.feed_grant(slot, ReqId(req.slot), now);
            }
            Call::Fini { qpair, done } => {
                if let Some(slot) = self.live_slot(qpair) {
                    let deadline = Timestamp(now + self.drain_timeout_ns);
                    self.fini_conn(slot, now, deadline);
                }
                if let Some(done) = done {
                    done(qpair);
                }
            }
        }
    }

    /// Feeds the buffers in the request's storage to the engine.
    pub(super) fn feed_grant(&mut self, slot: usize, req: ReqId, now: u64) {
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        grant(conn, req, &mut self.host, &mut self.calls, &self.held);
        self.run_actions(slot, now);
    }

    /// A command the host had comes back (completed or freed).
    pub(super) fn command_back(&self, req: RequestHandle) {
        if !self.held.take(Held::Commands, 1, &self.shared) {
            tracing::error!(%req, "internal error: the host answered a command it was not holding (commands_in_host already 0)");
        }
    }
}

/// Feeds the buffers in `req`'s storage to the engine; if it refuses them
/// (on error it took nothing) they go straight back to the host.
pub(super) fn grant<G: HostGroup>(
    c: &mut Conn,
    req: ReqId,
    host: &mut G,
    calls: &mut GroupCalls,
    held: &HeldCounts,
) {
    let Some(g) = c.granted.get_mut(req.index()) else {
        return;
    };
    let mut sges = [LocalSge {
        addr: 0,
        len: 0,
        lkey: 0,
    }; MAX_BUFFERS_PER_REQUEST];
    let mut n = 0;
    for (dst, s) in sges.iter_mut().zip(g.iter()) {
        *dst = LocalSge {
            addr: s.addr(),
            len: s.length(),
            lkey: s.lkey(),
        };
        n += 1;
    }
    if let Err(e) = c.engine.handle_buffers_granted(req, &sges[..n]) {
        // Nothing was taken (request withdrawn, qpair tearing down): the
        // buffers were never counted and go straight back.
        tracing::warn!(qpair = %c.handle, req = req.0, buffers = n, "buffer grant refused: {e}; returned");
        let h = RequestHandle {
            qpair: c.handle,
            slot: req.0,
            generation: 0,
        };
        host.release_buffers(h, g, calls);
        g.clear();
        return;
    }
    held.add(Held::Buffers, n as u64);
}
