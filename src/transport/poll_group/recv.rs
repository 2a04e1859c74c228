//! Receive buffers: per-qpair receive areas and the poller's SRQ.

use super::*;

/// Receive buffers: one slot of 64 + `in_capsule_data_size` bytes per
/// receive, the time each slot last completed, and the RECVs waiting to be
/// posted. Per qpair without SRQ, per poller with SRQ.
pub(super) struct RecvArea {
    pub(super) buf: DmaBuf,
    pub(super) slot_size: usize,
    pub(super) time: Vec<u64>,
    pub(super) list: RecvWrList,
}

impl RecvArea {
    pub(super) fn new(
        dma: &'static dyn DmaAllocator,
        pd: &crate::verbs::Pd,
        slots: usize,
        slot_size: usize,
    ) -> Result<RecvArea, VerbsError> {
        Ok(RecvArea {
            buf: DmaBuf::new_in(dma, pd, slots * slot_size, Access::LOCAL_WRITE)?,
            slot_size,
            time: vec![0; slots],
            list: RecvWrList::with_capacity(slots, slots),
        })
    }

    /// Queues the RECV of slot `recv`.
    pub(super) fn queue(&mut self, recv: RecvId) -> Result<(), VerbsError> {
        let sge = self
            .buf
            .sge(recv.0 as usize * self.slot_size, self.slot_size as u32)?;
        self.list.push(wrid::recv_to_verbs(recv), &[sge])
    }
}

/// A poller's shared receive queue and its receive buffers.
pub(super) struct SrqRecv {
    pub(super) srq: Srq,
    pub(super) area: RecvArea,
    /// Slots whose post failed, re-queued at the next flush.
    pub(super) retry: Vec<RecvId>,
}

/// The receive area of a qpair: its own, or its poller's SRQ area.
pub(super) fn recv_area<'a>(
    own: &'a mut Option<RecvArea>,
    srq: &'a mut Option<SrqRecv>,
) -> Option<&'a mut RecvArea> {
    match own {
        Some(a) => Some(a),
        None => srq.as_mut().map(|s| &mut s.area),
    }
}

/// Posts the SRQ's queued RECVs (one `ibv_post_srq_recv`).
pub(super) fn flush_srq(srq: &mut SrqRecv, stats: &mut PollerStats) {
    if !srq.retry.is_empty() {
        requeue_failed(srq);
    }
    if srq.area.list.is_empty() {
        return;
    }
    stats.recv_doorbell_updates += 1;
    if let Err(e) = srq.srq.post_recv(&mut srq.area.list) {
        tracing::error!("posting SRQ receives failed: {e}");
        let first = match e {
            VerbsError::Post { first_failed, .. } => first_failed,
            _ => 0,
        };
        for i in first..srq.area.list.len() {
            let recv = srq
                .area
                .list
                .raw_wr_id(i)
                .and_then(wrid::from_completion)
                .and_then(|raw| engine::WrId::from_raw(raw).ok())
                .and_then(|w| w.kind().ok());
            if let Some(engine::WrKind::Recv { recv }) = recv {
                srq.retry.push(recv);
            }
        }
        srq.area.list.clear();
    }
}

/// Queues again the receives whose post failed (off the I/O path).
#[cold]
fn requeue_failed(srq: &mut SrqRecv) {
    for r in std::mem::take(&mut srq.retry) {
        if srq.area.queue(r).is_err() {
            srq.retry.push(r);
        }
    }
}
