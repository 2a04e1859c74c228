//! One NVMe/RDMA queue pair (admin or I/O) on the host side: RDMA CM
//! connection with NVMe-oF private data, command capsules out, response
//! capsules in, data through the target's RDMA READ/WRITE on our buffers.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::engine::codec::private_data::{CmAccept, CmReject, CmRequest};
use crate::engine::codec::sgl::{
    encode_in_capsule, encode_keyed, encode_last_segment, MAX_SGL_DESCRIPTORS,
};
use crate::engine::codec::{Command, Completion, COMMAND_CAPSULE_SIZE, COMPLETION_SIZE};
use crate::verbs::{
    wait_readable_any, Access, CmEventKind, CmId, CompChannel, ConnParam, Cq, DmaBuf, EventChannel,
    Pd, QpInit, RecvWrList, SendFlags, SendOp, SendWrList, VerbsError, WorkCompletion, WrId,
    WrKind,
};

use super::error::{InitiatorError, Result};

/// How a command's data is described to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SglMode {
    /// One keyed SGL descriptor (target does one RDMA READ/WRITE).
    Keyed,
    /// Writes: data inside the command capsule (needs in-capsule room);
    /// other transfers fall back to `Keyed`.
    InCapsule,
    /// A Last Segment descriptor pointing at `n` keyed descriptors in the
    /// capsule (target does `n` RDMA READs/WRITEs). `n` in 1..=16.
    MultiKeyed(u8),
}

/// Direction and size of a command's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// No data.
    None,
    /// Controller to host: `len` bytes land in the slot's data buffer.
    Read(u32),
    /// Host to controller: `len` bytes from the slot's data buffer.
    Write(u32),
}

/// Queue creation options.
#[derive(Debug, Clone)]
pub struct QueueOptions {
    /// Queue id (0 = admin).
    pub qid: u16,
    /// Entries requested (host receive queue size; hsqsize = depth - 1).
    pub depth: u16,
    /// Data buffer per command slot.
    pub max_io_size: u32,
    /// In-capsule room allocated after each 64-byte SQE (bytes); must not
    /// exceed what the target accepts when actually used.
    pub in_capsule_size: u32,
    /// Controller id put in the CM private data (0xFFFF for the admin queue).
    pub cntlid: u16,
    /// RDMA READs we let the target have outstanding (responder resources).
    pub responder_resources: u8,
    /// Timeout for address/route resolution and connection.
    pub connect_timeout: Duration,
    /// Timeout for one command.
    pub command_timeout: Duration,
    /// Spin instead of sleeping on the completion channel when idle.
    pub busy_poll: bool,
    /// Send these bytes as the CM connect private data instead of the
    /// NVMe-oF request built from the fields above (tests of a target's
    /// handling of bad private data).
    pub raw_private_data: Option<Vec<u8>>,
}

impl QueueOptions {
    /// Defaults for queue `qid` with `depth` entries.
    pub fn new(qid: u16, depth: u16) -> QueueOptions {
        QueueOptions {
            qid,
            depth,
            max_io_size: 128 * 1024,
            in_capsule_size: 0,
            cntlid: 0xffff,
            responder_resources: 16,
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(10),
            busy_poll: false,
            raw_private_data: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Free,
    Allocated,
    InFlight {
        send_done: bool,
        response: Option<Completion>,
        opcode: u8,
    },
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    state: SlotState,
    submitted: Instant,
}

/// A completed command: its cid (slot) and completion entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    /// Command id / slot.
    pub cid: u16,
    /// Opcode of the command.
    pub opcode: u8,
    /// The completion queue entry.
    pub completion: Completion,
    /// Time from submit to completion.
    pub latency: Duration,
}

/// A connected NVMe/RDMA queue.
pub struct Queue {
    // Field order = drop order: the CM id (and its QP) first.
    id: CmId,
    cq: Cq,
    comp: CompChannel,
    channel: EventChannel,
    cmd_buf: DmaBuf,
    rsp_buf: DmaBuf,
    data_buf: DmaBuf,
    _pd: Pd,
    opts: QueueOptions,
    capsule_stride: usize,
    depth: u16,
    crqsize: u16,
    slots: Vec<Slot>,
    free: Vec<u16>,
    outstanding: u16,
    send_list: SendWrList,
    recv_list: RecvWrList,
    wcs: Vec<WorkCompletion>,
    dead: Option<InitiatorError>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("qid", &self.opts.qid)
            .field("depth", &self.depth)
            .field("outstanding", &self.outstanding)
            .field("dead", &self.dead)
            .finish()
    }
}

fn wait_cm(
    channel: &EventChannel,
    qid: u16,
    deadline: Instant,
    what: &'static str,
) -> Result<crate::verbs::CmEvent> {
    let v = |source| InitiatorError::Verbs { qid, source };
    loop {
        if let Some(ev) = channel.get_event().map_err(v)? {
            return Ok(ev);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(InitiatorError::Timeout { qid, what, ms: 0 });
        }
        wait_readable_any(
            &[channel.fd()],
            (deadline - now).min(Duration::from_millis(100)),
        )
        .map_err(v)?;
    }
}

impl Queue {
    /// Resolve, create resources, connect with NVMe-oF private data, and
    /// post the receive buffers. The Fabrics Connect command is sent by the
    /// caller (see [`super::Controller`]).
    pub fn connect(addr: SocketAddr, opts: QueueOptions) -> Result<Queue> {
        let qid = opts.qid;
        let v = |source: VerbsError| InitiatorError::Verbs { qid, source };
        if opts.depth < 2 {
            return Err(InitiatorError::Config(format!(
                "queue {qid}: depth {} < 2",
                opts.depth
            )));
        }
        if opts.max_io_size == 0 || opts.max_io_size > 0x00ff_ffff {
            return Err(InitiatorError::Config(format!(
                "queue {qid}: max_io_size {} not in 1..2^24",
                opts.max_io_size
            )));
        }
        let deadline = Instant::now() + opts.connect_timeout;
        let channel = EventChannel::new().map_err(v)?;
        let mut id = CmId::new(&channel).map_err(v)?;
        let ms = opts.connect_timeout.as_millis().min(i32::MAX as u128) as i32;

        id.resolve_addr(None, addr, ms).map_err(v)?;
        let ev = wait_cm(&channel, qid, deadline, "ADDR_RESOLVED")?;
        if ev.kind != CmEventKind::AddrResolved {
            return Err(InitiatorError::Resolve {
                qid,
                event: "address resolution failed",
                status: ev.status,
            });
        }
        id.resolve_route(ms).map_err(v)?;
        let ev = wait_cm(&channel, qid, deadline, "ROUTE_RESOLVED")?;
        if ev.kind != CmEventKind::RouteResolved {
            return Err(InitiatorError::Resolve {
                qid,
                event: "route resolution failed",
                status: ev.status,
            });
        }

        let ctx = id.context().ok_or(InitiatorError::Verbs {
            qid,
            source: VerbsError::Missing("cm id device"),
        })?;
        let attr = ctx.query_device().map_err(v)?;
        let pd = Pd::new(&ctx).map_err(v)?;
        let comp = CompChannel::new(&ctx).map_err(v)?;
        comp.set_nonblocking().map_err(v)?;
        let depth = opts.depth;
        let cq = Cq::new(&ctx, depth as u32 * 2 + 4, Some(&comp)).map_err(v)?;

        let icd = opts.in_capsule_size.max((MAX_SGL_DESCRIPTORS * 16) as u32) as usize;
        let capsule_stride = (COMMAND_CAPSULE_SIZE + icd).next_multiple_of(64);
        let cmd_buf =
            DmaBuf::new(&pd, capsule_stride * depth as usize, Access::LOCAL_WRITE).map_err(v)?;
        let rsp_buf =
            DmaBuf::new(&pd, COMPLETION_SIZE * depth as usize, Access::LOCAL_WRITE).map_err(v)?;
        let data_buf = DmaBuf::new(
            &pd,
            opts.max_io_size as usize * depth as usize,
            Access::HOST_DATA,
        )
        .map_err(v)?;

        id.create_qp(
            &pd,
            &QpInit {
                send_cq: &cq,
                recv_cq: &cq,
                srq: None,
                max_send_wr: depth as u32,
                max_recv_wr: depth as u32,
                max_send_sge: 1,
                max_recv_sge: 1,
                max_inline_data: 0,
            },
        )
        .map_err(v)?;

        let mut recv_list = RecvWrList::with_capacity(depth as usize, depth as usize);
        for r in 0..depth as u32 {
            let sge = rsp_buf
                .sge(r as usize * COMPLETION_SIZE, COMPLETION_SIZE as u32)
                .map_err(v)?;
            recv_list
                .push(WrId::recv(qid as u32, r), &[sge])
                .map_err(v)?;
        }
        id.qp()
            .ok_or(InitiatorError::Verbs {
                qid,
                source: VerbsError::Missing("qp"),
            })?
            .post_recv(&mut recv_list)
            .map_err(v)?;

        let req = CmRequest {
            recfmt: 0,
            qid,
            hrqsize: depth,
            hsqsize: depth - 1,
            cntlid: opts.cntlid,
        };
        let built = req.to_bytes();
        let pdata: &[u8] = opts.raw_private_data.as_deref().unwrap_or(&built);
        let rr = opts
            .responder_resources
            .min(attr.max_qp_rd_atom.min(255) as u8)
            .max(1);
        id.connect(&ConnParam {
            private_data: pdata,
            responder_resources: rr,
            initiator_depth: 0,
            retry_count: 7,
            rnr_retry_count: 7,
        })
        .map_err(v)?;
        let ev = wait_cm(&channel, qid, deadline, "ESTABLISHED")?;
        let crqsize = match ev.kind {
            CmEventKind::Established => {
                let acc =
                    CmAccept::parse(ev.private_data()).map_err(|_| InitiatorError::BadAccept {
                        qid,
                        len: ev.private_data().len(),
                    })?;
                acc.crqsize
            }
            CmEventKind::Rejected => {
                let reason = CmReject::parse(ev.private_data()).ok().map(|r| r.status);
                return Err(InitiatorError::Rejected {
                    qid,
                    reason,
                    cm_status: ev.status,
                });
            }
            _ => {
                return Err(InitiatorError::Resolve {
                    qid,
                    event: "connect failed",
                    status: ev.status,
                })
            }
        };
        if crqsize == 0 {
            return Err(InitiatorError::BadAccept {
                qid,
                len: ev.private_data().len(),
            });
        }
        let effective = depth.min(crqsize);
        tracing::debug!(qid, depth, crqsize, effective, "nvme/rdma queue connected");

        let now = Instant::now();
        Ok(Queue {
            id,
            cq,
            comp,
            channel,
            cmd_buf,
            rsp_buf,
            data_buf,
            _pd: pd,
            capsule_stride,
            depth: effective,
            crqsize,
            slots: vec![
                Slot {
                    state: SlotState::Free,
                    submitted: now
                };
                depth as usize
            ],
            free: (0..effective).rev().collect(),
            outstanding: 0,
            send_list: SendWrList::with_capacity(depth as usize, depth as usize),
            recv_list,
            wcs: vec![WorkCompletion::EMPTY; 64],
            dead: None,
            opts,
        })
    }

    /// Queue id.
    pub fn qid(&self) -> u16 {
        self.opts.qid
    }

    /// Usable depth (commands that may be outstanding).
    pub fn depth(&self) -> u16 {
        self.depth
    }

    /// The target's negotiated receive queue size from the CM accept.
    pub fn crqsize(&self) -> u16 {
        self.crqsize
    }

    /// Commands submitted and not yet returned by [`Queue::poll`].
    pub fn outstanding(&self) -> u16 {
        self.outstanding
    }

    /// Per-slot data buffer size.
    pub fn max_io_size(&self) -> u32 {
        self.opts.max_io_size
    }

    /// Limit the usable in-capsule size (after learning IOCCSZ); never grows
    /// beyond what was allocated.
    pub fn set_in_capsule_size(&mut self, bytes: u32) {
        let room = (self.capsule_stride - COMMAND_CAPSULE_SIZE) as u32;
        self.opts.in_capsule_size = bytes.min(room);
    }

    /// Usable in-capsule data bytes per command.
    pub fn in_capsule_size(&self) -> u32 {
        self.opts.in_capsule_size
    }

    /// The error that killed this queue, if any.
    pub fn error(&self) -> Option<&InitiatorError> {
        self.dead.as_ref()
    }

    fn check_alive(&self) -> Result<()> {
        match &self.dead {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn kill(&mut self, e: InitiatorError) -> InitiatorError {
        if self.dead.is_none() {
            tracing::warn!(qid = self.opts.qid, error = %e, "nvme/rdma queue failed");
            self.dead = Some(e.clone());
        }
        self.dead.clone().unwrap_or(e)
    }

    /// Reserve a command slot; its data buffer may then be filled.
    pub fn alloc(&mut self) -> Result<u16> {
        self.check_alive()?;
        let cid = self.free.pop().ok_or(InitiatorError::QueueFull {
            qid: self.opts.qid,
            depth: self.depth,
        })?;
        self.slots[cid as usize].state = SlotState::Allocated;
        Ok(cid)
    }

    /// Return an allocated (not submitted) slot, or a slot handed back by
    /// [`Queue::poll`] after its data was consumed.
    pub fn release(&mut self, cid: u16) {
        if let Some(s) = self.slots.get_mut(cid as usize) {
            if s.state == SlotState::Allocated {
                s.state = SlotState::Free;
                self.free.push(cid);
            }
        }
    }

    fn data_off(&self, cid: u16, offset: usize, len: usize) -> Result<usize> {
        if offset + len > self.opts.max_io_size as usize {
            return Err(InitiatorError::TooLarge {
                qid: self.opts.qid,
                what: "data range",
                value: (offset + len) as u64,
                limit: self.opts.max_io_size as u64,
            });
        }
        Ok(cid as usize * self.opts.max_io_size as usize + offset)
    }

    /// Copy `data` into slot `cid`'s data buffer at `offset`.
    pub fn write_data(&mut self, cid: u16, offset: usize, data: &[u8]) -> Result<()> {
        let off = self.data_off(cid, offset, data.len())?;
        let qid = self.opts.qid;
        self.data_buf
            .write(off, data)
            .map_err(|source| InitiatorError::Verbs { qid, source })
    }

    /// Copy from slot `cid`'s data buffer at `offset` into `out`.
    pub fn read_data(&self, cid: u16, offset: usize, out: &mut [u8]) -> Result<()> {
        let off = self.data_off(cid, offset, out.len())?;
        let qid = self.opts.qid;
        self.data_buf
            .read(off, out)
            .map_err(|source| InitiatorError::Verbs { qid, source })
    }

    /// Queue command `cmd` in slot `cid` (from [`Queue::alloc`]) with its
    /// data description. It is posted at the next [`Queue::flush`] /
    /// [`Queue::poll`]. The command's cid and SGL are set here.
    pub fn submit(
        &mut self,
        cid: u16,
        mut cmd: Command,
        payload: Payload,
        mode: SglMode,
    ) -> Result<()> {
        self.check_alive()?;
        let qid = self.opts.qid;
        let v = |source| InitiatorError::Verbs { qid, source };
        match self.slots.get(cid as usize).map(|s| s.state) {
            Some(SlotState::Allocated) => {}
            _ => return Err(InitiatorError::UnknownCid { qid, cid }),
        }
        let len = match payload {
            Payload::None => 0,
            Payload::Read(l) | Payload::Write(l) => l,
        };
        if len > self.opts.max_io_size {
            return Err(InitiatorError::TooLarge {
                qid,
                what: "transfer",
                value: len as u64,
                limit: self.opts.max_io_size as u64,
            });
        }
        cmd.set_cid(cid);
        cmd.set_psdt(1);
        let capsule = cid as usize * self.capsule_stride;
        let data_addr = self
            .data_buf
            .addr(cid as usize * self.opts.max_io_size as usize);
        let rkey = self.data_buf.rkey();
        let mut extra = 0usize;
        match (payload, mode) {
            (Payload::None, _) => cmd.set_sgl1(encode_keyed(0, 0, 0, false)),
            (Payload::Write(l), SglMode::InCapsule) if l <= self.opts.in_capsule_size => {
                cmd.set_sgl1(encode_in_capsule(0, l));
                let mut tmp = [0u8; 4096];
                let mut done = 0usize;
                while done < l as usize {
                    let n = (l as usize - done).min(tmp.len());
                    let src = cid as usize * self.opts.max_io_size as usize + done;
                    self.data_buf.read(src, &mut tmp[..n]).map_err(v)?;
                    self.cmd_buf
                        .write(capsule + COMMAND_CAPSULE_SIZE + done, &tmp[..n])
                        .map_err(v)?;
                    done += n;
                }
                extra = l as usize;
            }
            (_, SglMode::MultiKeyed(n)) if n > 1 => {
                let n = (n as usize)
                    .min(MAX_SGL_DESCRIPTORS)
                    .min(len.max(1) as usize);
                let room = (self.capsule_stride - COMMAND_CAPSULE_SIZE)
                    .min(self.opts.in_capsule_size as usize);
                if n * 16 > room {
                    return Err(InitiatorError::TooLarge {
                        qid,
                        what: "SGL descriptor list bytes",
                        value: (n * 16) as u64,
                        limit: room as u64,
                    });
                }
                let seg = (len as usize).div_ceil(n);
                let mut off = 0usize;
                let mut count = 0usize;
                while off < len as usize {
                    let l = seg.min(len as usize - off);
                    let d = encode_keyed(data_addr + off as u64, l as u32, rkey, false);
                    self.cmd_buf
                        .write(capsule + COMMAND_CAPSULE_SIZE + count * 16, &d.raw)
                        .map_err(v)?;
                    off += l;
                    count += 1;
                }
                cmd.set_sgl1(encode_last_segment(0, (count * 16) as u32));
                extra = count * 16;
            }
            _ => cmd.set_sgl1(encode_keyed(data_addr, len, rkey, false)),
        }
        self.cmd_buf.write(capsule, cmd.as_bytes()).map_err(v)?;
        let sge = self
            .cmd_buf
            .sge(capsule, (COMMAND_CAPSULE_SIZE + extra) as u32)
            .map_err(v)?;
        self.send_list
            .push(
                WrId::send(qid as u32, cid as u32),
                SendOp::Send,
                &[sge],
                SendFlags::SIGNALED,
            )
            .map_err(v)?;
        let slot = &mut self.slots[cid as usize];
        slot.state = SlotState::InFlight {
            send_done: false,
            response: None,
            opcode: cmd.opcode(),
        };
        slot.submitted = Instant::now();
        self.outstanding += 1;
        Ok(())
    }

    /// Queue a raw command capsule in slot `cid`: `capsule` (64-byte SQE plus
    /// any in-capsule bytes, at most the allocated capsule size) is sent as
    /// is, except that bytes 2..4 are set to `cid` so the response can be
    /// matched. For tests of a target's handling of malformed commands (bad
    /// SGL types, descriptor counts, offsets, lengths, unknown opcodes).
    pub fn submit_raw(&mut self, cid: u16, capsule: &[u8]) -> Result<()> {
        self.check_alive()?;
        let qid = self.opts.qid;
        let v = |source| InitiatorError::Verbs { qid, source };
        match self.slots.get(cid as usize).map(|s| s.state) {
            Some(SlotState::Allocated) => {}
            _ => return Err(InitiatorError::UnknownCid { qid, cid }),
        }
        if capsule.len() < COMMAND_CAPSULE_SIZE || capsule.len() > self.capsule_stride {
            return Err(InitiatorError::TooLarge {
                qid,
                what: "raw capsule bytes",
                value: capsule.len() as u64,
                limit: self.capsule_stride as u64,
            });
        }
        let off = cid as usize * self.capsule_stride;
        self.cmd_buf.write(off, capsule).map_err(v)?;
        self.cmd_buf.write(off + 2, &cid.to_le_bytes()).map_err(v)?;
        let sge = self.cmd_buf.sge(off, capsule.len() as u32).map_err(v)?;
        self.send_list
            .push(
                WrId::send(qid as u32, cid as u32),
                SendOp::Send,
                &[sge],
                SendFlags::SIGNALED,
            )
            .map_err(v)?;
        let slot = &mut self.slots[cid as usize];
        slot.state = SlotState::InFlight {
            send_done: false,
            response: None,
            opcode: capsule[0],
        };
        slot.submitted = Instant::now();
        self.outstanding += 1;
        Ok(())
    }

    /// Address and rkey of slot `cid`'s data buffer (to build raw SGLs).
    pub fn data_region(&self, cid: u16) -> (u64, u32) {
        (
            self.data_buf
                .addr(cid as usize * self.opts.max_io_size as usize),
            self.data_buf.rkey(),
        )
    }

    /// Post queued command capsules (one doorbell).
    pub fn flush(&mut self) -> Result<()> {
        self.check_alive()?;
        if self.send_list.is_empty() {
            return Ok(());
        }
        let qid = self.opts.qid;
        let r = match self.id.qp() {
            Some(qp) => qp.post_send(&mut self.send_list),
            None => Err(VerbsError::Missing("qp")),
        };
        if let Err(source) = r {
            self.send_list.clear();
            return Err(self.kill(InitiatorError::Verbs { qid, source }));
        }
        Ok(())
    }

    /// Flush, reap completions, and push finished commands into `done`
    /// (their slots go back to `Allocated`: read the data, then
    /// [`Queue::release`]). Returns how many were added.
    pub fn poll(&mut self, done: &mut Vec<Done>) -> Result<usize> {
        self.flush()?;
        let qid = self.opts.qid;
        let before = done.len();
        loop {
            let n = match self.cq.poll(&mut self.wcs) {
                Ok(n) => n,
                Err(source) => return Err(self.kill(InitiatorError::Verbs { qid, source })),
            };
            for i in 0..n {
                let wc = self.wcs[i].clone();
                if let Err(e) = self.handle_wc(&wc, done) {
                    return Err(self.kill(e));
                }
            }
            if n < self.wcs.len() {
                break;
            }
        }
        if !self.recv_list.is_empty() {
            let r = match self.id.qp() {
                Some(qp) => qp.post_recv(&mut self.recv_list),
                None => Err(VerbsError::Missing("qp")),
            };
            if let Err(source) = r {
                self.recv_list.clear();
                return Err(self.kill(InitiatorError::Verbs { qid, source }));
            }
        }
        self.check_alive()?;
        Ok(done.len() - before)
    }

    fn handle_wc(&mut self, wc: &WorkCompletion, done: &mut Vec<Done>) -> Result<()> {
        let qid = self.opts.qid;
        let id = match wc.wr_id() {
            Ok(id) => id,
            Err(_) => {
                return Err(InitiatorError::WorkCompletion {
                    qid,
                    kind: "unknown",
                    cid: u32::MAX,
                    status: wc.status(),
                })
            }
        };
        if !wc.is_success() {
            let kind = match id.kind() {
                WrKind::Recv => "recv",
                WrKind::Send => "send",
                WrKind::Data => "data",
            };
            return Err(InitiatorError::WorkCompletion {
                qid,
                kind,
                cid: id.index(),
                status: wc.status(),
            });
        }
        match id.kind() {
            WrKind::Send => {
                let cid = id.index() as u16;
                let slot = self
                    .slots
                    .get_mut(cid as usize)
                    .ok_or(InitiatorError::UnknownCid { qid, cid })?;
                match &mut slot.state {
                    SlotState::InFlight { send_done, .. } => *send_done = true,
                    _ => return Err(InitiatorError::UnknownCid { qid, cid }),
                }
                self.maybe_done(cid, done);
            }
            WrKind::Recv => {
                let r = id.index() as usize;
                let v = |source| InitiatorError::Verbs { qid, source };
                let raw: [u8; COMPLETION_SIZE] =
                    self.rsp_buf.read_array(r * COMPLETION_SIZE).map_err(v)?;
                let cpl = Completion::from_bytes(&raw);
                let sge = self
                    .rsp_buf
                    .sge(r * COMPLETION_SIZE, COMPLETION_SIZE as u32)
                    .map_err(v)?;
                self.recv_list.push(id, &[sge]).map_err(v)?;
                let cid = cpl.cid;
                let slot = self
                    .slots
                    .get_mut(cid as usize)
                    .ok_or(InitiatorError::UnknownCid { qid, cid })?;
                match &mut slot.state {
                    SlotState::InFlight {
                        response: resp @ None,
                        ..
                    } => *resp = Some(cpl),
                    _ => return Err(InitiatorError::UnknownCid { qid, cid }),
                }
                self.maybe_done(cid, done);
            }
            WrKind::Data => {}
        }
        Ok(())
    }

    fn maybe_done(&mut self, cid: u16, done: &mut Vec<Done>) {
        let slot = &mut self.slots[cid as usize];
        if let SlotState::InFlight {
            send_done: true,
            response: Some(c),
            opcode,
        } = slot.state
        {
            slot.state = SlotState::Allocated;
            self.outstanding -= 1;
            done.push(Done {
                cid,
                opcode,
                completion: c,
                latency: slot.submitted.elapsed(),
            });
        }
    }

    fn check_cm(&mut self) -> Result<()> {
        let qid = self.opts.qid;
        loop {
            match self.channel.get_event() {
                Ok(Some(ev)) => match ev.kind {
                    CmEventKind::Disconnected => {
                        return Err(self.kill(InitiatorError::Disconnected {
                            qid,
                            why: "DISCONNECTED",
                        }))
                    }
                    CmEventKind::DeviceRemoval => {
                        return Err(self.kill(InitiatorError::Disconnected {
                            qid,
                            why: "DEVICE_REMOVAL",
                        }))
                    }
                    CmEventKind::TimewaitExit => {}
                    other => tracing::debug!(qid, ?other, "ignored cm event"),
                },
                Ok(None) => return Ok(()),
                Err(source) => return Err(self.kill(InitiatorError::Verbs { qid, source })),
            }
        }
    }

    fn check_timeouts(&mut self) -> Result<()> {
        let limit = self.opts.command_timeout;
        let late = self.slots.iter().any(|s| {
            matches!(s.state, SlotState::InFlight { .. }) && s.submitted.elapsed() > limit
        });
        if late {
            let qid = self.opts.qid;
            return Err(self.kill(InitiatorError::Timeout {
                qid,
                what: "command completion",
                ms: limit.as_millis() as u64,
            }));
        }
        Ok(())
    }

    /// Block until at least one command finishes (into `done`) or `timeout`
    /// passes (`Ok(0)`). Detects disconnects and per-command timeouts.
    pub fn wait(&mut self, done: &mut Vec<Done>, timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        let mut idle = 0u32;
        loop {
            let n = self.poll(done)?;
            if n > 0 {
                return Ok(n);
            }
            idle += 1;
            if idle % 64 == 0 {
                self.check_cm()?;
                self.check_timeouts()?;
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(0);
            }
            if self.opts.busy_poll || idle < 32 {
                std::hint::spin_loop();
                if idle % 8 == 0 {
                    std::thread::yield_now();
                }
                continue;
            }
            // Sleep on the completion channel (or a CM event), re-checking
            // the CQ after arming so no completion is missed.
            let qid = self.opts.qid;
            if let Err(source) = self.cq.req_notify(false) {
                return Err(self.kill(InitiatorError::Verbs { qid, source }));
            }
            let n = self.poll(done)?;
            if n > 0 {
                return Ok(n);
            }
            let nap = (deadline - now).min(Duration::from_millis(2));
            if let Err(source) = wait_readable_any(&[self.comp.fd(), self.channel.fd()], nap) {
                return Err(self.kill(InitiatorError::Verbs { qid, source }));
            }
            while let Ok(Some(_)) = self.comp.get_event() {}
        }
    }

    /// Submit one command and wait for it (admin-style); returns the
    /// completion (failing on a non-success status) and leaves the slot
    /// allocated so the caller can read its data, then releases it.
    pub fn execute(
        &mut self,
        cmd: Command,
        payload: Payload,
        mode: SglMode,
        data_out: Option<&mut [u8]>,
    ) -> Result<Completion> {
        let cid = self.alloc()?;
        self.execute_in(cid, cmd, payload, mode, data_out)
    }

    /// Like [`Queue::execute`] but on a slot already allocated (and filled).
    pub fn execute_in(
        &mut self,
        cid: u16,
        cmd: Command,
        payload: Payload,
        mode: SglMode,
        data_out: Option<&mut [u8]>,
    ) -> Result<Completion> {
        let qid = self.opts.qid;
        let opcode = cmd.opcode();
        if let Err(e) = self.submit(cid, cmd, payload, mode) {
            self.release(cid);
            return Err(e);
        }
        let deadline = Instant::now() + self.opts.command_timeout;
        let mut done = Vec::with_capacity(self.depth as usize);
        let mut mine = None;
        while mine.is_none() {
            let now = Instant::now();
            if now >= deadline {
                return Err(self.kill(InitiatorError::Timeout {
                    qid,
                    what: "command completion",
                    ms: self.opts.command_timeout.as_millis() as u64,
                }));
            }
            self.wait(&mut done, deadline - now)?;
            for d in done.drain(..) {
                if d.cid == cid {
                    mine = Some(d.completion);
                } else {
                    self.release(d.cid);
                }
            }
        }
        let c = mine.unwrap_or_else(|| {
            Completion::new(cid, crate::engine::codec::Status::INTERNAL_DEVICE_ERROR)
        });
        let r = if let Some(out) = data_out {
            self.read_data(cid, 0, out)
        } else {
            Ok(())
        };
        self.release(cid);
        r?;
        if !c.status.is_success() {
            return Err(InitiatorError::Nvme {
                qid,
                opcode,
                cid,
                status: c.status,
            });
        }
        Ok(c)
    }

    /// Disconnect (best effort); the queue is unusable afterwards.
    pub fn disconnect(&mut self) {
        if let Err(e) = self.id.disconnect() {
            tracing::debug!(qid = self.opts.qid, error = %e, "rdma_disconnect");
        }
        if self.dead.is_none() {
            let qid = self.opts.qid;
            self.dead = Some(InitiatorError::Disconnected {
                qid,
                why: "local disconnect",
            });
        }
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        if self.dead.is_none() {
            let _ = self.id.disconnect();
        }
    }
}
