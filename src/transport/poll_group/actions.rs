//! Engine actions to verbs calls: WR queueing and batching, buffer
//! requests and releases, execute, teardown steps.

use super::*;

pub(super) fn flush_conn(conn: &mut Conn, stats: &mut PollerStats) {
    conn.dirty = false;
    let recvs = conn.recv.as_mut().map(|r| &mut r.list);
    let Some(qp) = conn.cm_id.qp().filter(|_| !conn.qp_destroyed) else {
        conn.sends.clear();
        if let Some(l) = recvs {
            l.clear();
        }
        return;
    };
    if let Some(recvs) = recvs.filter(|l| !l.is_empty()) {
        stats.recv_doorbell_updates += 1;
        if let Err(e) = qp.post_recv(recvs) {
            tracing::error!(qpair = %conn.handle, qp_num = conn.qp_num, "posting RECVs failed: {e}");
            let first = match e {
                VerbsError::Post { first_failed, .. } => first_failed,
                _ => 0,
            };
            for i in first..recvs.len() {
                if let Some(raw) = recvs.raw_wr_id(i).and_then(wrid::from_completion) {
                    conn.failed.push(raw);
                }
            }
            recvs.clear();
        }
    }
    if !conn.sends.is_empty() {
        stats.send_doorbell_updates += 1;
        if let Err(e) = qp.post_send(&mut conn.sends) {
            tracing::error!(qpair = %conn.handle, qp_num = conn.qp_num, "posting sends failed: {e}");
            let first = match e {
                VerbsError::Post { first_failed, .. } => first_failed,
                _ => 0,
            };
            for i in first..conn.sends.len() {
                if let Some(raw) = conn.sends.raw_wr_id(i).and_then(wrid::from_completion) {
                    conn.failed.push(raw);
                }
            }
            conn.sends.clear();
        }
    }
}

/// Without WR batching: posts what the last action queued at once.
pub(super) fn flush_now<G: HostGroup>(conn: &mut Conn, cx: &mut ActionCtx<'_, G>) {
    if conn.dirty {
        flush_conn(conn, cx.stats);
    }
    if let Some(srq) = cx.srq.as_mut() {
        flush_srq(srq, cx.stats);
    }
}

/// What action handling needs besides the qpair (split borrows of the
/// group's fields).
pub(super) struct ActionCtx<'a, G: HostGroup> {
    pub(super) host: &'a mut G,
    pub(super) calls: &'a mut GroupCalls,
    pub(super) stats: &'a mut PollerStats,
    pub(super) srq: &'a mut Option<SrqRecv>,
    pub(super) shared: &'a Shared,
    pub(super) held: &'a HeldCounts,
    pub(super) granted_now: &'a mut Vec<ReqId>,
    pub(super) pending_data_buffer: &'a mut u64,
    pub(super) now: u64,
}

/// Handles one engine action. Inlined into the action loop: a read or
/// write runs four of these per I/O, and a call per action (saving and
/// restoring the registers of this large function) cost about as much as
/// the work of the common arms. The rare arms (teardown, notices, state
/// traces) live out of line in [`handle_rare_action`].
#[inline(always)]
pub(super) fn handle_action<G: HostGroup>(
    action: Action,
    conn: &mut Conn,
    cx: &mut ActionCtx<'_, G>,
) {
    match action {
        Action::PostRecv { recv } => queue_recv(conn, cx, recv),
        Action::PostReads { req, first, count } => {
            for i in first..first.saturating_add(count) {
                queue_data_wr(conn, cx.stats, req, i);
            }
        }
        Action::PostResponse { req, writes, recv } => {
            if let Some(recv) = recv {
                queue_recv(conn, cx, recv);
            }
            for i in 0..writes {
                queue_data_wr(conn, cx.stats, req, i);
            }
            let Some(send) = conn.engine.send_wr(req) else {
                tracing::error!(qpair = %conn.handle, req = req.0, "no response SEND to post");
                return;
            };
            let off = req.index() * RESPONSE;
            let sge = conn.cpl_buf.write_sge(off, &send.response);
            let pushed = sge.and_then(|sge| {
                let op = match send.invalidate_rkey {
                    Some(rkey) => SendOp::SendWithInvalidate { rkey },
                    None => SendOp::Send,
                };
                conn.sends
                    .push(wrid::to_verbs(send.wr_id), op, &[sge], SendFlags::SIGNALED)
            });
            match pushed {
                Ok(()) => {
                    cx.stats.total_send_wrs += 1;
                    conn.dirty = true;
                }
                Err(e) => {
                    tracing::error!(qpair = %conn.handle, req = req.0, "queueing response SEND: {e}");
                    conn.failed.push(send.wr_id.to_raw());
                }
            }
        }
        Action::RequestBuffers { req, len } => {
            let h = request_handle(conn, req);
            let Some(out) = conn.granted.get_mut(req.index()) else {
                tracing::error!(qpair = %conn.handle, req = req.0, "buffer request for an unknown slot");
                return;
            };
            if !out.is_empty() {
                cx.shared.internal_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(qpair = %conn.handle, req = req.0, held = out.len(), "internal error: buffer request for a request holding buffers");
                return;
            }
            match cx.host.get_buffers(h, len, conn.device, out) {
                // Counted in grant(), once the engine took them.
                BufferGrant::Granted => cx.granted_now.push(req),
                BufferGrant::Later => *cx.pending_data_buffer += 1,
            }
        }
        Action::ReleaseBuffers { req } => {
            let h = request_handle(conn, req);
            let Some(g) = conn.granted.get_mut(req.index()) else {
                return;
            };
            if g.is_empty() || !cx.held.take(Held::Buffers, g.len() as u64, cx.shared) {
                if g.is_empty() {
                    cx.shared.internal_errors.fetch_add(1, Ordering::Relaxed);
                }
                tracing::error!(qpair = %conn.handle, req = req.0, buffers = g.len(), "internal error: releasing buffers that are not counted as held");
            }
            cx.host.release_buffers(h, g, cx.calls);
            g.clear();
        }
        Action::Execute { req } => {
            // Borrowed, not copied: the host copies the command once, into
            // its own request.
            let Some(cmd) = conn.engine.command(req) else {
                tracing::error!(qpair = %conn.handle, req = req.0, "execute without a command");
                return;
            };
            let received = conn.engine.recv_of(req).and_then(|recv| {
                recv_area(&mut conn.recv, cx.srq).and_then(|a| a.time.get(recv.0 as usize).copied())
            });
            if let Some(s) = conn.req_start.get_mut(req.index()) {
                *s = received.unwrap_or(cx.now);
            }
            let direction = match cmd.data_transfer() {
                DataTransfer::HostToController => Direction::HostToController,
                DataTransfer::ControllerToHost => Direction::ControllerToHost,
                _ => Direction::None,
            };
            let h = request_handle(conn, req);
            cx.held.add(Held::Commands, 1);
            let data = match conn.engine.data(req) {
                DataRef::None => CommandData::None,
                DataRef::InCapsule { recv, offset, len } => {
                    // By reference into the receive slot, which stays ours
                    // until the request is done.
                    let view = match recv_area(&mut conn.recv, cx.srq) {
                        Some(a) => {
                            let off = recv.0 as usize * a.slot_size + CAPSULE + offset as usize;
                            a.buf.view(off, len as usize)
                        }
                        None => Err(VerbsError::Missing("receive area")),
                    };
                    match view {
                        Ok(bytes) => CommandData::InCapsule(bytes),
                        Err(e) => {
                            tracing::error!(qpair = %conn.handle, req = req.0, "in-capsule data: {e}");
                            CommandData::None
                        }
                    }
                }
                DataRef::Buffers { .. } => match conn.granted.get(req.index()) {
                    Some(b) => CommandData::Buffers(b),
                    None => CommandData::None,
                },
            };
            cx.host.execute(h, cmd, data, direction, cx.calls);
        }
        rare => handle_rare_action(rare, conn, cx),
    }
}

/// The engine actions that are not on the I/O path: buffer request
/// cancels, teardown steps, notices and request-state reports.
#[cold]
#[inline(never)]
fn handle_rare_action<G: HostGroup>(action: Action, conn: &mut Conn, cx: &mut ActionCtx<'_, G>) {
    match action {
        Action::CancelBufferRequest { req } => cx.host.cancel_buffers(request_handle(conn, req)),
        Action::HostDisconnect { reason } => {
            tracing::info!(qpair = %conn.handle, qp_num = conn.qp_num, ?reason, "qpair disconnect requested");
            cx.host.qpair_error(conn.handle, reason);
            // What the host answers from inside is queued (cx.calls) and
            // applied after this batch: the request is never re-entered.
            cx.host.disconnect_requested(conn.handle, cx.calls);
        }
        Action::DisconnectQp => {
            if let Err(e) = conn.cm_id.disconnect() {
                tracing::debug!(qpair = %conn.handle, "rdma_disconnect: {e}; moving the QP to error");
                if let Some(qp) = conn.cm_id.qp() {
                    if let Err(e) = qp.set_error() {
                        tracing::warn!(qpair = %conn.handle, "moving QP to error failed: {e}");
                    }
                }
            }
        }
        Action::DestroyQp { forced } => {
            if forced {
                cx.shared.qpairs_forced.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(qpair = %conn.handle, qp_num = conn.qp_num, "drain deadline expired: destroying the QP with WRs outstanding");
            }
            conn.sends.clear();
            if let Some(r) = conn.recv.as_mut() {
                r.list.clear();
            }
            conn.cm_id.destroy_qp();
            conn.qp_destroyed = true;
        }
        Action::Finished => {
            conn.finished = true;
            cx.host.qpair_gone(conn.handle);
        }
        Action::Notice(n) => log_notice(conn.handle, n),
        Action::RequestState { req, state, in_use } => {
            cx.host
                .request_state(request_handle(conn, req), state, in_use)
        }
        Action::PostRecv { .. }
        | Action::PostReads { .. }
        | Action::PostResponse { .. }
        | Action::RequestBuffers { .. }
        | Action::ReleaseBuffers { .. }
        | Action::Execute { .. } => {
            // `handle_action` handles these itself and never passes them on.
            tracing::error!(qpair = %conn.handle, ?action, "internal error: common action on the rare path");
        }
    }
}

/// Queues the RECV of slot `recv`: on the qpair's own receive queue, or
/// the SRQ (retried at the next flush if it cannot be queued now).
fn queue_recv<G: HostGroup>(conn: &mut Conn, cx: &mut ActionCtx<'_, G>, recv: RecvId) {
    let own = conn.recv.is_some();
    match recv_area(&mut conn.recv, cx.srq).map(|a| a.queue(recv)) {
        Some(Ok(())) => {
            cx.stats.total_recv_wrs += 1;
            conn.dirty |= own;
        }
        Some(Err(e)) if own => {
            tracing::error!(qpair = %conn.handle, "queueing RECV {}: {e}", recv.0);
            conn.failed.push(engine::WrId::recv(recv).to_raw());
        }
        Some(Err(e)) => {
            tracing::warn!(qpair = %conn.handle, "queueing SRQ RECV {}: {e}; retried", recv.0);
            if let Some(s) = cx.srq.as_mut() {
                s.retry.push(recv);
            }
        }
        None => {
            tracing::error!(qpair = %conn.handle, "no receive area for RECV {}", recv.0)
        }
    }
}

/// Queues data WR `index` of `req`. Its SGEs are sub-ranges of the buffers
/// the host granted (already translated once, by the host).
pub(super) fn queue_data_wr(conn: &mut Conn, stats: &mut PollerStats, req: ReqId, index: u8) {
    let Some(dw) = conn.engine.data_wr(req, index) else {
        tracing::error!(qpair = %conn.handle, req = req.0, index, "no data WR to post");
        return;
    };
    // Each local SGE of the plan as the part of a granted buffer that
    // covers it (checked for all first, so nothing is half queued).
    let granted = conn.granted.get(req.index());
    let covered = |s: &LocalSge| granted.and_then(|g| g.covering(s.addr, s.len));
    let mut ok = dw.sges.len() <= engine::MAX_SGES_PER_WR;
    for s in dw.sges {
        if covered(s).is_none() {
            tracing::error!(qpair = %conn.handle, req = req.0, addr = s.addr, len = s.len, "data SGE outside the granted buffers");
            ok = false;
        }
    }
    let op = match dw.opcode {
        engine::DataOpcode::RdmaRead => SendOp::RdmaRead {
            remote_addr: dw.remote_addr,
            rkey: dw.rkey,
        },
        engine::DataOpcode::RdmaWrite => SendOp::RdmaWrite {
            remote_addr: dw.remote_addr,
            rkey: dw.rkey,
        },
    };
    let flags = if dw.signaled {
        SendFlags::SIGNALED
    } else {
        SendFlags::UNSIGNALED
    };
    let pushed = if ok {
        conn.sends.push_sges(
            wrid::to_verbs(dw.wr_id),
            op,
            dw.sges.iter().filter_map(covered),
            flags,
        )
    } else {
        Err(VerbsError::InvalidArgument {
            name: "data buffer",
            value: 0,
        })
    };
    match pushed {
        Ok(()) => {
            stats.total_send_wrs += 1;
            conn.dirty = true;
        }
        Err(e) => {
            tracing::error!(qpair = %conn.handle, req = req.0, index, "queueing data WR: {e}");
            conn.failed.push(dw.wr_id.to_raw());
        }
    }
}

pub(super) fn log_notice(q: QpairHandle, n: Notice) {
    match n {
        Notice::WcError {
            wr,
            status: WcStatus::Flushed,
            ..
        } => {
            tracing::debug!(qpair = %q, ?wr, "flushed")
        }
        Notice::WcError { wr, status, .. } => {
            tracing::error!(qpair = %q, ?wr, %status, "work completion error")
        }
        Notice::CommandFailed {
            req, cid, status, ..
        } => {
            tracing::info!(qpair = %q, req = req.0, cid, %status, "command failed in the transport")
        }
        Notice::DrainDeadlineExpired {
            lost_send_wrs,
            lost_recvs,
            missing_last_wqe,
            ..
        } => tracing::warn!(
            qpair = %q, lost_send_wrs, lost_recvs, missing_last_wqe, "drain deadline expired"
        ),
        other => tracing::info!(qpair = %q, ?other, "engine notice"),
    }
}
