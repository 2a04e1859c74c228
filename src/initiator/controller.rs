//! An NVMe-oF controller association over RDMA: admin queue, Fabrics
//! Connect, controller enable, Identify, I/O queues.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::engine::codec::admin::{cc, cns, csts, property, CNTLID_DYNAMIC};
use crate::engine::codec::Command;

use super::error::{InitiatorError, Result};
use super::queue::{Payload, Queue, QueueOptions, SglMode};
use super::wire::{self, Cap, ControllerInfo, NamespaceInfo};

/// How to reach and use a target.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Target address (IPv4 or IPv6).
    pub addr: SocketAddr,
    /// Subsystem NQN to connect to.
    pub subnqn: String,
    /// Our host NQN.
    pub hostnqn: String,
    /// Our host id.
    pub hostid: [u8; 16],
    /// Admin queue entries.
    pub admin_depth: u16,
    /// Number of I/O queues to create.
    pub io_queues: u16,
    /// Entries per I/O queue.
    pub io_depth: u16,
    /// Largest I/O (bytes); also the per-slot buffer size.
    pub max_io_size: u32,
    /// Use in-capsule data for writes that fit the target's IOCCSZ.
    pub in_capsule: bool,
    /// Keep-alive timeout to request (ms, 0 = none).
    pub kato_ms: u32,
    /// Connection / resolution timeout.
    pub connect_timeout: Duration,
    /// Per-command timeout.
    pub command_timeout: Duration,
    /// Busy-poll instead of sleeping on the completion channel.
    pub busy_poll: bool,
    /// RDMA READs each I/O queue lets the target have outstanding (CM
    /// responder resources; the target's read depth is at most this).
    pub responder_resources: u8,
}

impl ControllerConfig {
    /// Defaults for `addr` / `subnqn`.
    pub fn new(addr: SocketAddr, subnqn: &str) -> ControllerConfig {
        ControllerConfig {
            addr,
            subnqn: subnqn.to_string(),
            hostnqn: "nqn.2014-08.org.nvmexpress:uuid:6e766d66-7264-6d61-2d72-732d686f7374"
                .to_string(),
            hostid: *b"nvmf-rdma-rs-hst",
            admin_depth: 32,
            io_queues: 1,
            io_depth: 32,
            max_io_size: 128 * 1024,
            in_capsule: true,
            kato_ms: 0,
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(10),
            busy_poll: false,
            responder_resources: 16,
        }
    }
}

/// A connected, enabled controller.
#[derive(Debug)]
pub struct Controller {
    admin: Queue,
    io: Vec<Queue>,
    cntlid: u16,
    cap: Cap,
    vs: u32,
    info: ControllerInfo,
    namespaces: Vec<NamespaceInfo>,
    cfg: ControllerConfig,
}

fn fabrics_connect(q: &mut Queue, cfg: &ControllerConfig, cntlid: u16, sqsize: u16) -> Result<u16> {
    let cid = q.alloc()?;
    let data = wire::connect_data(&cfg.hostid, cntlid, &cfg.subnqn, &cfg.hostnqn);
    if let Err(e) = q.write_data(cid, 0, &data) {
        q.release(cid);
        return Err(e);
    }
    let cmd = wire::connect(
        0,
        q.qid(),
        sqsize,
        if q.qid() == 0 { cfg.kato_ms } else { 0 },
    );
    let c = q.execute_in(
        cid,
        cmd,
        Payload::Write(data.len() as u32),
        SglMode::Keyed,
        None,
    )?;
    Ok(c.cdw0 as u16)
}

impl Controller {
    /// Connect the admin queue, enable the controller, identify it and its
    /// namespaces, and connect the I/O queues.
    pub fn connect(cfg: ControllerConfig) -> Result<Controller> {
        if cfg.io_depth < 2 || cfg.admin_depth < 2 {
            return Err(InitiatorError::Config("queue depths must be >= 2".into()));
        }
        let mut aopts = QueueOptions::new(0, cfg.admin_depth);
        aopts.max_io_size = 4096;
        aopts.connect_timeout = cfg.connect_timeout;
        aopts.command_timeout = cfg.command_timeout;
        aopts.cntlid = CNTLID_DYNAMIC;
        let mut admin = Queue::connect(cfg.addr, aopts)?;
        let sqsize = admin.depth() - 1;
        let cntlid = fabrics_connect(&mut admin, &cfg, CNTLID_DYNAMIC, sqsize)?;

        let c = admin.execute(
            wire::property_get(0, property::CAP, true),
            Payload::None,
            SglMode::Keyed,
            None,
        )?;
        let cap = Cap::parse(c.cdw0 as u64 | (c.cdw1 as u64) << 32);
        let vs = admin
            .execute(
                wire::property_get(0, property::VS, false),
                Payload::None,
                SglMode::Keyed,
                None,
            )?
            .cdw0;

        let cc = cc::EN | cc::QUEUE_ENTRY_SIZES;
        admin.execute(
            wire::property_set(0, property::CC, cc),
            Payload::None,
            SglMode::Keyed,
            None,
        )?;
        let ready_limit = Duration::from_millis(cap.timeout_ms.clamp(500, 30_000))
            .min(cfg.connect_timeout.max(Duration::from_secs(1)));
        let deadline = Instant::now() + ready_limit;
        loop {
            let csts = admin
                .execute(
                    wire::property_get(0, property::CSTS, false),
                    Payload::None,
                    SglMode::Keyed,
                    None,
                )?
                .cdw0;
            if csts & csts::CFS != 0 {
                return Err(InitiatorError::NotReady { csts });
            }
            if csts & csts::RDY != 0 {
                break;
            }
            if Instant::now() >= deadline {
                return Err(InitiatorError::NotReady { csts });
            }
            std::thread::sleep(Duration::from_millis(1));
        }

        let mut buf = vec![0u8; 4096];
        admin.execute(
            wire::identify(0, cns::CONTROLLER, 0),
            Payload::Read(4096),
            SglMode::Keyed,
            Some(&mut buf),
        )?;
        let info = ControllerInfo::parse(&buf)
            .ok_or(InitiatorError::BadTargetData("identify controller"))?;

        let nsids = match admin.execute(
            wire::identify(0, cns::ACTIVE_NS_LIST, 0),
            Payload::Read(4096),
            SglMode::Keyed,
            Some(&mut buf),
        ) {
            Ok(_) => wire::parse_ns_list(&buf),
            Err(InitiatorError::Nvme { .. }) => (1..=info.nn.min(16)).collect(),
            Err(e) => return Err(e),
        };
        let mut namespaces = Vec::new();
        for nsid in nsids.into_iter().take(64) {
            admin.execute(
                wire::identify(0, cns::NAMESPACE, nsid),
                Payload::Read(4096),
                SglMode::Keyed,
                Some(&mut buf),
            )?;
            if let Some(ns) = NamespaceInfo::parse(nsid, &buf) {
                namespaces.push(ns);
            }
        }

        let mut n_io = cfg.io_queues;
        if n_io > 0 {
            match admin.execute(
                wire::set_num_queues(0, n_io),
                Payload::None,
                SglMode::Keyed,
                None,
            ) {
                Ok(c) => {
                    let granted = ((c.cdw0 & 0xffff).min(c.cdw0 >> 16) + 1) as u16;
                    n_io = n_io.min(granted);
                }
                Err(InitiatorError::Nvme { status, .. }) => {
                    tracing::debug!(
                        ?status,
                        "Set Features Number of Queues failed; keeping requested count"
                    )
                }
                Err(e) => return Err(e),
            }
        }

        let mut max_io = cfg.max_io_size;
        if let Some(mt) = info.max_transfer(cap.mps_min) {
            max_io = max_io.min(mt.min(u32::MAX as u64) as u32);
        }
        let icd = if cfg.in_capsule && info.icdoff == 0 {
            info.in_capsule_data_size()
        } else {
            0
        };
        let depth = cfg.io_depth.min(cap.mqes.min(u16::MAX as u32) as u16);
        let mut io = Vec::with_capacity(n_io as usize);
        for qid in 1..=n_io {
            let mut o = QueueOptions::new(qid, depth);
            o.max_io_size = max_io;
            o.in_capsule_size = icd;
            o.cntlid = cntlid;
            o.connect_timeout = cfg.connect_timeout;
            o.command_timeout = cfg.command_timeout;
            o.busy_poll = cfg.busy_poll;
            o.responder_resources = cfg.responder_resources;
            let mut q = Queue::connect(cfg.addr, o)?;
            q.set_in_capsule_size(icd);
            let sq = q.depth() - 1;
            fabrics_connect(&mut q, &cfg, cntlid, sq)?;
            io.push(q);
        }
        tracing::info!(
            cntlid,
            io_queues = io.len(),
            namespaces = namespaces.len(),
            icd,
            max_io,
            "nvme/rdma controller connected"
        );
        Ok(Controller {
            admin,
            io,
            cntlid,
            cap,
            vs,
            info,
            namespaces,
            cfg,
        })
    }

    /// Tear down and connect again with the same configuration.
    pub fn reconnect(self) -> Result<Controller> {
        let cfg = self.cfg.clone();
        drop(self);
        Controller::connect(cfg)
    }

    /// Controller id assigned by the target.
    pub fn cntlid(&self) -> u16 {
        self.cntlid
    }

    /// Decoded CAP.
    pub fn cap(&self) -> Cap {
        self.cap
    }

    /// VS register.
    pub fn version(&self) -> u32 {
        self.vs
    }

    /// Identify Controller data.
    pub fn info(&self) -> &ControllerInfo {
        &self.info
    }

    /// Active namespaces.
    pub fn namespaces(&self) -> &[NamespaceInfo] {
        &self.namespaces
    }

    /// The configuration used.
    pub fn config(&self) -> &ControllerConfig {
        &self.cfg
    }

    /// The admin queue.
    pub fn admin(&mut self) -> &mut Queue {
        &mut self.admin
    }

    /// I/O queues.
    pub fn io_queues(&mut self) -> &mut [Queue] {
        &mut self.io
    }

    /// Move the I/O queues out (e.g. one per worker thread).
    pub fn take_io_queues(&mut self) -> Vec<Queue> {
        std::mem::take(&mut self.io)
    }

    /// Give I/O queues back.
    pub fn return_io_queues(&mut self, qs: Vec<Queue>) {
        self.io = qs;
    }

    /// Run an admin command synchronously.
    pub fn admin_command(
        &mut self,
        cmd: Command,
        payload: Payload,
        data_out: Option<&mut [u8]>,
    ) -> Result<crate::engine::codec::Completion> {
        self.admin.execute(cmd, payload, SglMode::Keyed, data_out)
    }

    /// Send a Keep Alive.
    pub fn keep_alive(&mut self) -> Result<()> {
        self.admin
            .execute(wire::keep_alive(0), Payload::None, SglMode::Keyed, None)
            .map(|_| ())
    }

    /// Posts `n` Asynchronous Event Requests on the admin queue without
    /// waiting for them (the controller holds each until it has an event;
    /// SPDK's initiator keeps 4 posted). Returns their command ids; their
    /// slots stay allocated and a later admin poll reports their completions.
    /// Note that they count against the admin queue's command timeout.
    pub fn post_async_event_requests(&mut self, n: u16) -> Result<Vec<u16>> {
        let mut cids = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            let cid = self.admin.alloc()?;
            self.admin.submit(
                cid,
                wire::async_event_request(cid),
                Payload::None,
                SglMode::Keyed,
            )?;
            cids.push(cid);
        }
        self.admin.flush()?;
        Ok(cids)
    }

    /// Synchronous write of `data` at `lba` on I/O queue `q`.
    pub fn write(
        &mut self,
        q: usize,
        nsid: u32,
        lba: u64,
        data: &[u8],
        mode: SglMode,
    ) -> Result<()> {
        let bs = self.block_size(nsid)?;
        let queue = self
            .io
            .get_mut(q)
            .ok_or(InitiatorError::Config(format!("no I/O queue {q}")))?;
        let cid = queue.alloc()?;
        if let Err(e) = queue.write_data(cid, 0, data) {
            queue.release(cid);
            return Err(e);
        }
        let nlb = (data.len() as u32).div_ceil(bs);
        queue
            .execute_in(
                cid,
                wire::read_write(0, true, nsid, lba, nlb),
                Payload::Write(data.len() as u32),
                mode,
                None,
            )
            .map(|_| ())
    }

    /// Synchronous read into `out` at `lba` on I/O queue `q`.
    pub fn read(
        &mut self,
        q: usize,
        nsid: u32,
        lba: u64,
        out: &mut [u8],
        mode: SglMode,
    ) -> Result<()> {
        let bs = self.block_size(nsid)?;
        let queue = self
            .io
            .get_mut(q)
            .ok_or(InitiatorError::Config(format!("no I/O queue {q}")))?;
        let nlb = (out.len() as u32).div_ceil(bs);
        let len = out.len() as u32;
        queue
            .execute(
                wire::read_write(0, false, nsid, lba, nlb),
                Payload::Read(len),
                mode,
                Some(out),
            )
            .map(|_| ())
    }

    /// Block size of namespace `nsid`.
    pub fn block_size(&self, nsid: u32) -> Result<u32> {
        self.namespaces
            .iter()
            .find(|n| n.nsid == nsid)
            .map(|n| n.block_size)
            .ok_or(InitiatorError::BadTargetData("namespace not found"))
    }

    /// Normal shutdown: CC.SHN, wait for CSTS.SHST complete (best effort,
    /// bounded by the command timeout), then disconnect all queues.
    pub fn shutdown(mut self) -> Result<()> {
        for q in &mut self.io {
            q.disconnect();
        }
        let cc = cc::EN | cc::QUEUE_ENTRY_SIZES | cc::SHN_NORMAL;
        self.admin.execute(
            wire::property_set(0, property::CC, cc),
            Payload::None,
            SglMode::Keyed,
            None,
        )?;
        let deadline = Instant::now() + self.cfg.command_timeout;
        while Instant::now() < deadline {
            let csts = self
                .admin
                .execute(
                    wire::property_get(0, property::CSTS, false),
                    Payload::None,
                    SglMode::Keyed,
                    None,
                )?
                .cdw0;
            if csts & csts::SHST_MASK == csts::SHST_COMPLETE {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.admin.disconnect();
        Ok(())
    }
}
