//! Adding a qpair (upstream `poll_group_add`): resources, the host's
//! consent, initial RECVs, accept.

use super::*;

impl<H: Host> PollGroup<H> {
    /// Adds a connection to this group (upstream `poll_group_add`): CQ
    /// sizing, QP, engine, receive and response memory, the host's
    /// [`HostGroup::qpair_added`], initial RECVs, then `rdma_accept`. On
    /// failure nothing of the group changed and the qpair comes back in the
    /// error, still alive until the host finishes it
    /// ([`PendingQpair::reject`]).
    pub fn add_qpair(
        &mut self,
        mut pending: PendingQpair,
        now: u64,
    ) -> Result<QpairHandle, AddQpairError> {
        match self.setup_qpair(&mut pending) {
            Ok(conn) => Ok(self.start_qpair(conn, pending, now)),
            Err(failure) => Err(AddQpairError {
                group: self.index,
                failure,
                qpair: pending,
            }),
        }
    }

    /// Builds everything a qpair needs; on error undoes the CQ reservation.
    pub(super) fn setup_qpair(
        &mut self,
        pending: &mut PendingQpair,
    ) -> Result<Conn, AddQpairFailure> {
        let pending = &mut *pending.0;
        let device = pending.device;
        let poller_idx = match self.ensure_poller(device) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(
                    group = self.index,
                    device,
                    "no poller for the qpair's device: {e}"
                );
                return Err(AddQpairFailure::NoPoller(device));
            }
        };
        if self.pollers[poller_idx].device_dead {
            return Err(AddQpairFailure::DeviceDead(device));
        }
        let Some(cm_id) = pending.cm_id.as_mut() else {
            return Err(AddQpairFailure::Config(
                "the qpair was already finished".into(),
            ));
        };
        let negotiated = pending.negotiated;
        let dev = self.pollers[poller_idx].dev.clone();
        let qd = negotiated.max_queue_depth.max(1);
        let opts = &self.opts;
        let has_srq = self.pollers[poller_idx].srq.is_some();
        // CQ sizing (upstream nvmf_rdma_resize_cq, non-SRQ; with SRQ the CQ
        // is sized once for the SRQ and never resized).
        let need = if has_srq { 0 } else { 3 * u32::from(qd) + 2 };
        if !has_srq {
            let p = &mut self.pollers[poller_idx];
            let required = p.required_wr + need;
            if required > p.max_cqe {
                return Err(AddQpairFailure::CqFull {
                    required,
                    max_cqe: p.max_cqe,
                });
            }
            if p.cq.capacity() < required {
                let new = (2 * p.cq.capacity()).max(required).min(p.max_cqe);
                p.cq.resize(new).map_err(|e| AddQpairFailure::Verbs {
                    what: "ibv_resize_cq",
                    reason: format!("to {new}: {e}"),
                })?;
            }
            p.required_wr = required;
        }
        let undo = |pollers: &mut Vec<Poller>, failure: AddQpairFailure| {
            pollers[poller_idx].required_wr -= need;
            failure
        };
        let max_send_wr = (2 * u32::from(qd)).max(MIN_SEND_DEPTH);
        let max_send_sge = dev.attr.max_sge.clamp(1, 16);
        let qp = {
            let p = &self.pollers[poller_idx];
            let cq = &p.cq;
            cm_id.create_qp(
                &dev.pd,
                &QpInit {
                    send_cq: cq,
                    recv_cq: cq,
                    srq: p.srq.as_ref().map(|s| &s.srq),
                    max_send_wr,
                    max_recv_wr: u32::from(qd),
                    max_send_sge,
                    max_recv_sge: 1,
                    max_inline_data: 0,
                },
            )
        };
        let (qp_num, caps) = match qp {
            Ok(qp) => (qp.qp_num(), qp.caps()),
            Err(e) => {
                let f = AddQpairFailure::Verbs {
                    what: "rdma_create_qp",
                    reason: e.to_string(),
                };
                return Err(undo(&mut self.pollers, f));
            }
        };
        let cfg = QpairConfig {
            label: qp_num,
            max_queue_depth: qd,
            max_read_depth: negotiated.max_read_depth.max(1),
            max_send_depth: caps.max_send_wr.min(max_send_wr),
            sq_size: pending.request.hsqsize.saturating_add(1).max(1),
            srq: has_srq,
            last_wqe_reached_supported: !dev.soft_roce,
            send_with_invalidate: dev.send_with_invalidate,
            sgl: SglLimits {
                in_capsule_data_size: opts.in_capsule_data_size,
                max_io_size: opts.max_io_size,
                max_descriptors: MAX_SGL_DESCRIPTORS,
            },
        };
        let mut engine = match engine::Qpair::new(cfg) {
            Ok(e) => e,
            Err(e) => {
                let f = AddQpairFailure::Config(e.to_string());
                return Err(undo(&mut self.pollers, f));
            }
        };
        engine.set_state_tracing(self.trace_requests);
        let slot_size = CAPSULE + opts.in_capsule_data_size as usize;
        let n = usize::from(qd);
        let bufs = if has_srq {
            Ok(None)
        } else {
            RecvArea::new(self.dma, &dev.pd, n, slot_size).map(Some)
        }
        .and_then(|r| {
            let cpl = DmaBuf::new_in(self.dma, &dev.pd, n * RESPONSE, Access::LOCAL_WRITE)?;
            Ok((r, cpl))
        });
        let (recv, cpl_buf) = match bufs {
            Ok(b) => b,
            Err(e) => {
                let f = AddQpairFailure::Verbs {
                    what: "allocating qpair memory",
                    reason: e.to_string(),
                };
                return Err(undo(&mut self.pollers, f));
            }
        };
        let slot = match self.conns.iter().position(Option::is_none) {
            Some(s) => s,
            None => {
                self.conns.push(None);
                self.generations.push(0);
                self.conns.len() - 1
            }
        };
        self.generations[slot] = self.generations[slot].wrapping_add(1);
        let handle = QpairHandle {
            group: self.index,
            slot: slot as u32,
            generation: self.generations[slot],
        };
        let info = QpairInfo {
            handle,
            qid: negotiated.qid,
            queue_depth: qd,
            peer: cm_id.peer_addr(),
            local: cm_id.local_addr(),
            listen: pending.listen,
            device: dev.name.clone(),
        };
        let sges = max_send_sge as usize;
        if !self.host.qpair_added(&info) {
            return Err(undo(&mut self.pollers, AddQpairFailure::HostRefused));
        }
        let Some(cm_id) = pending.cm_id.take() else {
            return Err(undo(
                &mut self.pollers,
                AddQpairFailure::Config("the qpair was already finished".into()),
            ));
        };
        Ok(Conn {
            cm_id,
            handle,
            device,
            listen: pending.listen,
            poller: poller_idx,
            qp_num,
            engine,
            recv,
            cpl_buf,
            granted: vec![RequestBuffers::default(); n],
            req_start: vec![0; n],
            sends: SendWrList::with_capacity(max_send_wr as usize, max_send_wr as usize * sges),
            dirty: false,
            cq_reserved: need,
            qp_destroyed: false,
            finished: false,
            failed: Vec::new(),
        })
    }

    /// Installs a set-up qpair, posts its initial RECVs and accepts.
    pub(super) fn start_qpair(
        &mut self,
        conn: Conn,
        pending: PendingQpair,
        now: u64,
    ) -> QpairHandle {
        let handle = conn.handle;
        let slot = handle.slot as usize;
        let (device, qp_num, id_key) = (conn.device, conn.qp_num, conn.cm_id.key());
        let qd = conn.engine.config().max_queue_depth;
        self.calls.reserve(calls_per_qpair(qd));
        self.conns[slot] = Some(conn);
        self.by_qpn.insert((device, qp_num), slot);
        {
            let mut routes = self.shared.routes();
            routes.by_qpn.insert((device, qp_num), handle);
            routes.by_cm.insert(id_key, handle);
        }
        // Post the initial RECVs (engine actions), then accept.
        self.run_actions(slot, now);
        self.flush(slot, now);
        let Some(conn) = self.conns[slot].as_mut() else {
            return handle;
        };
        let accept = CmAccept {
            recfmt: 0,
            crqsize: qd,
        };
        let pd = accept.to_bytes();
        let param = ConnParam {
            private_data: &pd,
            responder_resources: 0,
            initiator_depth: u8::try_from(conn.engine.config().max_read_depth).unwrap_or(u8::MAX),
            retry_count: 7,
            rnr_retry_count: 7,
        };
        self.shared.qpairs_created.fetch_add(1, Ordering::Relaxed);
        self.shared.live_qpairs.fetch_add(1, Ordering::Relaxed);
        self.shared.count_device_qpair(device, 1);
        match conn.cm_id.accept(&param) {
            Ok(()) => tracing::info!(
                qpair = %handle, qp_num, qid = pending.0.negotiated.qid, queue_depth = qd,
                read_depth = pending.0.negotiated.max_read_depth, peer = ?conn.cm_id.peer_addr(), "qpair accepted"
            ),
            Err(e) => {
                tracing::error!(qpair = %handle, qp_num, "rdma_accept failed: {e}");
                let r = CmReject {
                    recfmt: 0,
                    status: RejectStatus::NoResources,
                };
                let _ = conn.cm_id.reject(&r.to_bytes());
                let deadline = Timestamp(now + self.drain_timeout_ns);
                self.host.disconnect_requested(handle, &mut self.calls);
                self.fini_conn(slot, now, deadline);
            }
        }
        handle
    }
}
