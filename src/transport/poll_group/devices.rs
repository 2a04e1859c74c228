//! Pollers come and go with devices (upstream `nvmf_rdma_poller_create`,
//! `_nvmf_rdma_register_poller_in_group`, `nvmf_rdma_poller_destroy`): one
//! is made per live device when the group is created, when a device is
//! opened by a rescan (a message, or lazily by the first qpair on it), and
//! dropped once its device was removed and its last qpair is gone.

use super::*;

impl<H: Host> PollGroup<H> {
    /// Makes the poller of live device `device` (CQ, completion channel,
    /// SRQ with its receives posted) and lets the host register on its PD.
    /// Counted in the device table until [`PollGroup::drop_dead_pollers`]
    /// (or the group's drop) releases it.
    pub(super) fn add_poller(&mut self, device: usize) -> Result<usize, VerbsError> {
        let Some(d) = self.devices.claim(device) else {
            return Err(VerbsError::InvalidArgument {
                name: "device index (not live)",
                value: device as u64,
            });
        };
        match make_poller(device, d, &self.opts, self.dma) {
            Ok(p) => {
                if let Err(e) = self.host.attach_device(device, &p.dev.pd) {
                    tracing::error!(group = self.index, device = %p.dev.name, "host cannot use device: {e}");
                }
                tracing::info!(group = self.index, device = %p.dev.name, index = device, "poller created");
                self.pollers.push(p);
                self.fds_generation += 1;
                if self.armed {
                    self.arm();
                }
                Ok(self.pollers.len() - 1)
            }
            Err(e) => {
                self.devices.release(device);
                Err(e)
            }
        }
    }

    /// The poller of `device`, made now if the device is live and this
    /// group has none yet (a qpair or the `Added` message arrived first).
    pub(super) fn ensure_poller(&mut self, device: usize) -> Result<usize, VerbsError> {
        match self.pollers.iter().position(|p| p.device == device) {
            Some(p) => Ok(p),
            None => self.add_poller(device),
        }
    }

    /// Drops every poller whose device was removed and which has no qpair
    /// left (upstream `nvmf_rdma_poller_destroy`): the host forgets the
    /// device first, then the SRQ, CQ and channel go (in interrupt mode the
    /// channel stays open until the driver took the new fd set).
    pub(super) fn drop_dead_pollers(&mut self) {
        let mut p = 0;
        while p < self.pollers.len() {
            let busy =
                !self.pollers[p].device_dead || self.conns.iter().flatten().any(|c| c.poller == p);
            if busy {
                p += 1;
                continue;
            }
            let poller = self.pollers.remove(p);
            for c in self.conns.iter_mut().flatten() {
                if c.poller > p {
                    c.poller -= 1;
                }
            }
            let device = poller.device;
            self.host.detach_device(device);
            tracing::info!(group = self.index, device = %poller.dev.name, index = device, "poller of a removed device dropped");
            if self.armed {
                self.retired_channels.push(poller.channel.clone());
            }
            drop(poller);
            self.devices.release(device);
            self.fds_generation += 1;
        }
    }

    /// Changes whenever [`PollGroup::event_fds`] may have changed (a poller
    /// made or dropped): an interrupt-mode driver registers the fds again.
    pub fn event_fds_generation(&self) -> u64 {
        self.fds_generation
    }
}

/// A poller for `d` (index `device`): with SRQ (upstream: unless `no_srq` or
/// the device has none) one SRQ of `max_srq_depth` RECVs and a CQ of
/// 3 × that; without, the CQ starts at `num_cqe` and grows per qpair
/// (upstream `nvmf_rdma_resize_cq`).
fn make_poller(
    device: usize,
    d: Arc<Device>,
    opts: &TransportOptions,
    dma: &'static dyn DmaAllocator,
) -> Result<Poller, VerbsError> {
    let mut srq = None;
    let mut num_cqe = u32::try_from(opts.num_cqe.max(1)).unwrap_or(4096);
    if !opts.no_srq && d.attr.max_srq > 0 {
        let (depth, notice) = opts.srq_depth_for_device(d.attr.max_srq_wr);
        if let Some(n) = notice {
            tracing::warn!(device = %d.name, "{n}");
        }
        let depth = depth.max(1);
        let slot_size = CAPSULE + opts.in_capsule_data_size as usize;
        let s = Srq::new(&d.pd, u32::from(depth), 1)?;
        let mut area = RecvArea::new(dma, &d.pd, usize::from(depth), slot_size)?;
        for i in 0..depth {
            area.queue(RecvId(u32::from(i)))?;
        }
        let mut sr = SrqRecv {
            srq: s,
            area,
            retry: Vec::new(),
        };
        let mut st = PollerStats::new(d.name.clone());
        st.total_recv_wrs += u64::from(depth);
        flush_srq(&mut sr, &mut st);
        num_cqe = 3 * u32::from(depth);
        srq = Some((sr, st));
    }
    let num_cqe = num_cqe.min(d.attr.max_cqe.max(1));
    let channel = CompChannel::new(&d.ctx)?;
    channel.set_nonblocking()?;
    let cq = Cq::new(&d.ctx, num_cqe, Some(&channel))?;
    let (srq, stats) = match srq {
        Some((sr, st)) => (Some(sr), st),
        None => (None, PollerStats::new(d.name.clone())),
    };
    Ok(Poller {
        device,
        channel,
        device_dead: false,
        cq,
        required_wr: 0,
        max_cqe: d.attr.max_cqe,
        stats,
        wcs: vec![WorkCompletion::EMPTY; WC_BATCH],
        srq,
        dev: d,
    })
}
