//! The standalone target: the mini NVMe-oF controller ([`crate::minitarget`])
//! as the transport's [`Host`], with a registered data-buffer pool.
//!
//! - One [`Target`] shared by every poll group (a controller's admin and I/O
//!   queues may sit in different groups), behind a mutex.
//! - Per poll group and device, one registered region of `pool_buffers`
//!   buffers of `io_unit_size` bytes. Buffers are handed out with the
//!   region's lkey; when the pool is exhausted the request waits (FIFO) and
//!   is granted when buffers come back ([`GroupCalls::buffers_ready`]).
//! - By default commands complete from [`HostGroup::poll`]; with
//!   [`MiniHost::reentrant`] (`target --reentrant-host`) they complete
//!   inside [`HostGroup::execute`] and a disconnect request frees the held
//!   commands and finishes the qpair inside
//!   [`HostGroup::disconnect_requested`] (what SPDK's generic layer does).
//!   Held commands (AERs) complete when the target produces their
//!   completion, or are freed without a response when their qpair goes away.
//! - A buffer returned twice, or a held command left at
//!   [`HostGroup::qpair_gone`], is an internal error: logged with the request
//!   and counted ([`MiniHost::internal_errors`]).
#![forbid(unsafe_code)]

pub mod driver;

pub use driver::{Driver, DriverError, RunConfig};

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::engine::codec::nvme::{Command, Completion};
use crate::minitarget::{
    DataBuffer as TargetData, Execution, Listener, QpairId, Target, TargetConfig,
};
use crate::transport::{
    BufferGrant, CommandData, Direction, FiniDone, GroupCalls, Host, HostError, HostGroup,
    QpairHandle, QpairInfo, RequestBuffers, RequestHandle, TransportOptions,
};
use crate::verbs::{Access, DmaBuf, Pd, Sge};

struct Inner {
    target: Target,
    /// qpair id → handle, for routing target-initiated events.
    handles: HashMap<QpairId, QpairHandle>,
    /// Held commands: (qpair, cid) → request.
    held: HashMap<(QpairId, u16), RequestHandle>,
    /// Answers for each group produced while another group held the lock.
    outbox: Vec<Vec<Answer>>,
    /// [`MiniHost::complete_outside`] mode: completions the driver hands to
    /// the group itself ([`MiniHost::take_completions`]).
    outside: Vec<(u16, RequestHandle, Completion)>,
}

/// A host answer waiting for its group's next [`HostGroup::poll`].
#[derive(Debug, Clone, Copy)]
enum Answer {
    Complete(RequestHandle, Completion),
    Free(RequestHandle),
    Fini(QpairHandle),
}

impl Answer {
    fn push(self, calls: &mut GroupCalls) {
        let pushed = match self {
            Answer::Complete(req, cpl) => calls.complete(req, cpl),
            Answer::Free(req) => calls.free(req),
            Answer::Fini(qpair) => calls.fini(qpair, None),
        };
        if let Err(e) = pushed {
            tracing::error!(answer = ?self, "{e}");
        }
    }
}

/// The standalone host (see the module docs).
pub struct MiniHost {
    inner: Arc<Mutex<Inner>>,
    internal_errors: Arc<AtomicU64>,
    io_unit_size: u32,
    pool_buffers: u32,
    start: Instant,
    reentrant: bool,
    complete_outside: bool,
}

fn qpair_id(h: QpairHandle) -> QpairId {
    QpairId(
        (u64::from(h.group) << 48) | (u64::from(h.slot & 0xffff) << 32) | u64::from(h.generation),
    )
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MiniHost {
    /// A host serving `subnqn` with RAM namespaces of `namespaces` bytes,
    /// advertising the transport limits of `opts`, for `poll_groups` groups.
    pub fn new(
        subnqn: &str,
        namespaces: Vec<u64>,
        opts: &TransportOptions,
        listen: &[SocketAddr],
        poll_groups: u16,
    ) -> Result<MiniHost, crate::minitarget::ConfigError> {
        let mut cfg = TargetConfig::new(subnqn, namespaces);
        cfg.transport.max_queue_depth = opts.max_queue_depth;
        cfg.transport.max_aq_depth = u16::try_from(opts.max_aq_depth).unwrap_or(u16::MAX);
        cfg.transport.max_qpairs_per_ctrlr = opts.max_qpairs_per_ctrlr;
        cfg.transport.in_capsule_data_size = opts.in_capsule_data_size;
        cfg.transport.max_io_size = opts.max_io_size;
        cfg.kas = opts.kas;
        cfg.min_kato_ms = opts.min_kato;
        cfg.listeners = listen.iter().map(|a| Listener::rdma(*a)).collect();
        let target = Target::new(cfg)?;
        let groups = u32::from(poll_groups.max(1));
        Ok(MiniHost {
            inner: Arc::new(Mutex::new(Inner {
                target,
                handles: HashMap::new(),
                held: HashMap::new(),
                outbox: vec![Vec::new(); usize::from(poll_groups.max(1))],
                outside: Vec::new(),
            })),
            internal_errors: Arc::new(AtomicU64::new(0)),
            io_unit_size: opts.io_unit_size,
            pool_buffers: (opts.num_shared_buffers / groups).max(2 * 33),
            start: Instant::now(),
            reentrant: false,
            complete_outside: false,
        })
    }

    /// Test mode: answer inside the transport's calls — complete commands
    /// inside `execute`, free held commands and finish the qpair (with a
    /// `qpair_fini` callback) inside `disconnect_requested` — as SPDK's
    /// generic layer does.
    pub fn reentrant(mut self, on: bool) -> MiniHost {
        self.reentrant = on;
        self
    }

    /// Test mode: command completions are not handed back inside the
    /// transport's calls; the driver takes them ([`MiniHost::take_completions`])
    /// and gives them to [`crate::transport::PollGroup::complete`] itself,
    /// outside any group call — as SPDK's bdev layer completes I/O.
    pub fn complete_outside(mut self, on: bool) -> MiniHost {
        self.complete_outside = on;
        self
    }

    /// [`MiniHost::complete_outside`] mode: the completions given since the
    /// last call, as (group index, request, completion).
    pub fn take_completions(&self) -> Vec<(u16, RequestHandle, Completion)> {
        std::mem::take(&mut lock(&self.inner).outside)
    }

    /// Read/write statistics of the target.
    pub fn io_stats(&self) -> crate::minitarget::IoStats {
        lock(&self.inner).target.stats()
    }

    /// Host bugs caught at run time (a buffer returned twice, a held command
    /// left when its qpair went). Always 0 unless the host is broken.
    pub fn internal_errors(&self) -> u64 {
        self.internal_errors.load(Ordering::Relaxed)
    }

    /// Qpairs the target knows (connected).
    pub fn qpair_count(&self) -> usize {
        lock(&self.inner).target.qpair_count()
    }
}

struct Pool {
    buf: DmaBuf,
    unit: u32,
    free: Vec<u32>,
    /// Per buffer: handed out and not yet returned.
    in_use: Vec<bool>,
    total: u32,
}

impl Pool {
    fn base(&self) -> u64 {
        self.buf.addr(0)
    }

    fn offset_of(&self, b: &Sge) -> Option<usize> {
        let off = b.addr().checked_sub(self.base())?;
        let end = off.checked_add(u64::from(b.length()))?;
        (b.lkey() == self.buf.lkey() && end <= self.buf.len() as u64).then_some(off as usize)
    }
}

/// The per-poll-group part of [`MiniHost`].
pub struct MiniGroup {
    index: u16,
    inner: Arc<Mutex<Inner>>,
    internal_errors: Arc<AtomicU64>,
    io_unit_size: u32,
    pool_buffers: u32,
    start: Instant,
    reentrant: bool,
    complete_outside: bool,
    pools: Vec<Option<Pool>>,
    waiting: VecDeque<(RequestHandle, u32, usize)>,
    /// Answers for the next poll (non-reentrant mode), with room for every
    /// request of the group's qpairs so that it never grows on the I/O path.
    answers: Vec<Answer>,
    answer_room: usize,
    scratch: Vec<u8>,
    held_scratch: Vec<(QpairId, u16)>,
}

impl Host for MiniHost {
    type Group = MiniGroup;

    fn create_group(&self, index: u16) -> MiniGroup {
        MiniGroup {
            index,
            inner: self.inner.clone(),
            internal_errors: self.internal_errors.clone(),
            io_unit_size: self.io_unit_size,
            pool_buffers: self.pool_buffers,
            start: self.start,
            reentrant: self.reentrant,
            complete_outside: self.complete_outside,
            pools: Vec::new(),
            waiting: VecDeque::new(),
            answers: Vec::new(),
            answer_room: 0,
            scratch: Vec::new(),
            held_scratch: Vec::new(),
        }
    }
}

impl MiniGroup {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Answers now (reentrant mode), at the next poll, or, completions in
    /// [`MiniHost::complete_outside`] mode, through the driver.
    fn answer(&mut self, a: Answer, calls: &mut GroupCalls) {
        if let (true, Answer::Complete(req, cpl)) = (self.complete_outside, a) {
            lock(&self.inner).outside.push((self.index, req, cpl));
        } else if self.reentrant {
            a.push(calls);
        } else {
            self.answers.push(a);
        }
    }

    /// Fills `out` with buffers for `len` bytes, or returns `false`.
    fn take(&mut self, len: u32, device: usize, out: &mut RequestBuffers) -> bool {
        let Some(pool) = self.pools.get_mut(device).and_then(Option::as_mut) else {
            return false;
        };
        let n = len.div_ceil(pool.unit).max(1) as usize;
        if pool.free.len() < n {
            return false;
        }
        out.clear();
        let mut left = len;
        for _ in 0..n {
            let Some(i) = pool.free.pop() else {
                return false;
            };
            pool.in_use[i as usize] = true;
            let l = left.min(pool.unit);
            left -= l;
            let sge = pool.buf.sge(i as usize * pool.unit as usize, l);
            match sge.map(|s| out.push(s)) {
                Ok(Ok(())) => {}
                _ => {
                    pool.in_use[i as usize] = false;
                    pool.free.push(i);
                    tracing::error!(group = self.index, len, "cannot describe a pool buffer");
                    return false;
                }
            }
        }
        true
    }

    fn grant_waiting(&mut self, calls: &mut GroupCalls) {
        while let Some(&(req, len, device)) = self.waiting.front() {
            let mut bufs = RequestBuffers::default();
            if !self.take(len, device, &mut bufs) {
                break;
            }
            self.waiting.pop_front();
            if let Err(e) = calls.buffers_ready(req, &bufs) {
                tracing::error!(%req, "{e}");
            }
        }
    }

    /// Frees every held command of `qpair` without a response.
    fn free_held(&mut self, inner: &mut Inner, qpair: QpairHandle, out: &mut Vec<Answer>) {
        let id = qpair_id(qpair);
        self.held_scratch.clear();
        self.held_scratch
            .extend(inner.held.keys().filter(|(q, _)| *q == id).copied());
        for k in self.held_scratch.drain(..) {
            if let Some(req) = inner.held.remove(&k) {
                out.push(Answer::Free(req));
            }
        }
    }

    fn copy_in(&mut self, bufs: &RequestBuffers, device: usize) -> usize {
        let total = bufs.total_len() as usize;
        if self.scratch.len() < total {
            self.scratch.resize(total, 0);
        }
        let mut at = 0;
        if let Some(Some(pool)) = self.pools.get(device) {
            for b in bufs.iter() {
                let len = b.length() as usize;
                if let Some(off) = pool.offset_of(&b) {
                    if let Err(e) = pool.buf.read(off, &mut self.scratch[at..at + len]) {
                        tracing::error!("reading data buffer: {e}");
                    }
                }
                at += len;
            }
        }
        total
    }

    fn copy_out(&mut self, bufs: &RequestBuffers, device: usize) {
        let mut at = 0;
        if let Some(Some(pool)) = self.pools.get_mut(device) {
            for b in bufs.iter() {
                let len = b.length() as usize;
                if let Some(off) = pool.offset_of(&b) {
                    if let Err(e) = pool.buf.write(off, &self.scratch[at..at + len]) {
                        tracing::error!("writing data buffer: {e}");
                    }
                }
                at += len;
            }
        }
    }

    fn device_of(&self, bufs: &RequestBuffers) -> usize {
        let Some(b) = bufs.iter().next() else {
            return 0;
        };
        self.pools
            .iter()
            .position(|p| p.as_ref().is_some_and(|p| p.offset_of(&b).is_some()))
            .unwrap_or(0)
    }
}

impl HostGroup for MiniGroup {
    fn attach_device(&mut self, device: usize, pd: &Pd) -> Result<(), HostError> {
        let unit = self.io_unit_size.max(512);
        let len = unit as usize * self.pool_buffers as usize;
        let buf =
            DmaBuf::new(pd, len, Access::LOCAL_WRITE).map_err(|e| HostError::Registration {
                device: format!("#{device}"),
                reason: e.to_string(),
            })?;
        while self.pools.len() <= device {
            self.pools.push(None);
        }
        self.pools[device] = Some(Pool {
            buf,
            unit,
            free: (0..self.pool_buffers).rev().collect(),
            in_use: vec![false; self.pool_buffers as usize],
            total: self.pool_buffers,
        });
        tracing::info!(
            group = self.index,
            device,
            buffers = self.pool_buffers,
            io_unit_size = unit,
            "data buffer pool registered"
        );
        Ok(())
    }

    fn detach_device(&mut self, device: usize) {
        if let Some(pool) = self.pools.get_mut(device).and_then(Option::take) {
            let lent = pool.total as usize - pool.free.len();
            if lent > 0 {
                tracing::error!(
                    group = self.index,
                    device,
                    lent,
                    "data buffer pool dropped with buffers lent"
                );
            }
            tracing::info!(
                group = self.index,
                device,
                "data buffer pool of a removed device released"
            );
        }
    }

    fn qpair_added(&mut self, info: &QpairInfo) -> bool {
        self.answer_room += 2 * usize::from(info.queue_depth);
        self.answers
            .reserve(self.answer_room.saturating_sub(self.answers.len()));
        let mut inner = lock(&self.inner);
        inner.handles.insert(qpair_id(info.handle), info.handle);
        true
    }

    fn execute(
        &mut self,
        req: RequestHandle,
        cmd: &Command,
        data: CommandData<'_>,
        direction: Direction,
        calls: &mut GroupCalls,
    ) {
        let now = self.now_ns();
        let id = qpair_id(req.qpair);
        let (exec, out) = match data {
            CommandData::None => {
                let e = lock(&self.inner)
                    .target
                    .execute(id, cmd, TargetData::none(), now);
                (e, None)
            }
            CommandData::InCapsule(bytes) => {
                let len = bytes.len();
                if self.scratch.len() < len {
                    self.scratch.resize(len, 0);
                }
                self.scratch[..len].copy_from_slice(bytes);
                let inner = self.inner.clone();
                let e = lock(&inner).target.execute(
                    id,
                    cmd,
                    TargetData::single(&mut self.scratch[..len]),
                    now,
                );
                (e, None)
            }
            CommandData::Buffers(bufs) => {
                let device = self.device_of(bufs);
                let total = if direction == Direction::HostToController {
                    self.copy_in(bufs, device)
                } else {
                    let t = bufs.total_len() as usize;
                    if self.scratch.len() < t {
                        self.scratch.resize(t, 0);
                    }
                    self.scratch[..t].fill(0);
                    t
                };
                let inner = self.inner.clone();
                let e = lock(&inner).target.execute(
                    id,
                    cmd,
                    TargetData::single(&mut self.scratch[..total]),
                    now,
                );
                (e, Some((bufs, device)))
            }
        };
        match exec {
            Execution::Complete(completion) => {
                if direction == Direction::ControllerToHost {
                    if let Some((b, device)) = out {
                        self.copy_out(b, device);
                    }
                }
                self.answer(Answer::Complete(req, completion), calls);
            }
            Execution::Held => {
                lock(&self.inner).held.insert((id, cmd.cid()), req);
            }
        }
    }

    fn get_buffers(
        &mut self,
        req: RequestHandle,
        len: u32,
        device: usize,
        out: &mut RequestBuffers,
    ) -> BufferGrant {
        if self.waiting.is_empty() && self.take(len, device, out) {
            return BufferGrant::Granted;
        }
        self.waiting.push_back((req, len, device));
        BufferGrant::Later
    }

    fn cancel_buffers(&mut self, req: RequestHandle) {
        // A grant already pushed (GroupCalls::buffers_ready) is refused by
        // the transport and comes back through release_buffers.
        self.waiting.retain(|(r, _, _)| *r != req);
    }

    fn release_buffers(
        &mut self,
        req: RequestHandle,
        buffers: &RequestBuffers,
        calls: &mut GroupCalls,
    ) {
        for b in buffers.iter() {
            let Some((pool, off)) = self
                .pools
                .iter_mut()
                .flatten()
                .find_map(|p| p.offset_of(&b).map(|off| (p, off)))
            else {
                self.internal_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%req, addr = b.addr(), lkey = b.lkey(), "internal error: released buffer is not from any pool");
                continue;
            };
            let i = off / pool.unit as usize;
            if i < pool.total as usize && pool.in_use[i] {
                pool.in_use[i] = false;
                pool.free.push(i as u32);
            } else {
                self.internal_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%req, buffer = i, addr = b.addr(), "internal error: buffer returned twice (or never handed out); ignored");
            }
        }
        self.grant_waiting(calls);
    }

    fn disconnect_requested(&mut self, qpair: QpairHandle, calls: &mut GroupCalls) {
        let inner = self.inner.clone();
        let mut guard = lock(&inner);
        let mut out = std::mem::take(&mut self.answers);
        self.free_held(&mut guard, qpair, &mut out);
        drop(guard);
        if self.reentrant {
            for a in out.drain(..) {
                a.push(calls);
            }
            // The queue id is reusable at once (upstream calls qpair_fini's
            // callback at once); the transport's qpair drains on its own.
            let inner = self.inner.clone();
            let done: FiniDone =
                Box::new(move |q| lock(&inner).target.qpair_disconnected(qpair_id(q)));
            if let Err(e) = calls.fini(qpair, Some(done)) {
                tracing::error!(%qpair, "{e}");
            }
        } else {
            out.push(Answer::Fini(qpair));
        }
        self.answers = out;
    }

    fn qpair_gone(&mut self, qpair: QpairHandle) {
        self.waiting.retain(|(r, _, _)| r.qpair != qpair);
        let mut inner = lock(&self.inner);
        let id = qpair_id(qpair);
        let before = inner.held.len();
        inner.held.retain(|(q, _), _| *q != id);
        let left = before - inner.held.len();
        if left > 0 {
            // The transport finishes a qpair only once the host answered all
            // of its requests (free_held at disconnect_requested).
            self.internal_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%qpair, held = left, "internal error: held commands left when the qpair went");
        }
        inner.handles.remove(&id);
        inner.target.qpair_disconnected(id);
    }

    fn poll(&mut self, now: u64, calls: &mut GroupCalls) {
        let _ = now;
        let now = self.now_ns();
        let inner = self.inner.clone();
        let mut guard = lock(&inner);
        let inner = &mut *guard;
        for d in inner.target.take_completions() {
            if let Some(req) = inner.held.remove(&(d.qpair, d.completion.cid)) {
                let g = usize::from(req.qpair.group);
                if let Some(o) = inner.outbox.get_mut(g) {
                    o.push(Answer::Complete(req, d.completion));
                }
            }
        }
        let due = inner.target.next_timeout().is_some_and(|t| t <= now);
        if due || !inner.handles.is_empty() {
            for d in inner.target.poll(now) {
                if let Some(&h) = inner.handles.get(&d.qpair) {
                    tracing::info!(qpair = %h, cntlid = d.cntlid, qid = d.qid, reason = ?d.reason, "controller asks for disconnect");
                    let mut evs = Vec::new();
                    self.free_held(inner, h, &mut evs);
                    evs.push(Answer::Fini(h));
                    if let Some(o) = inner.outbox.get_mut(usize::from(h.group)) {
                        o.extend(evs);
                    }
                }
            }
        }
        if let Some(o) = inner.outbox.get_mut(usize::from(self.index)) {
            self.answers.append(o);
        }
        drop(guard);
        for a in self.answers.drain(..) {
            a.push(calls);
        }
    }
}
