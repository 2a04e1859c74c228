//! A poll group of ours inside SPDK: the transport core's [`PollGroup`] with
//! SPDK's generic layer as its host.
//!
//! SPDK calls back into the transport from inside functions the transport
//! calls (a command completing inside `spdk_nvmf_request_exec`, frees and
//! `qpair_fini` inside `spdk_nvmf_qpair_disconnect`). The core never lends
//! itself out twice: while one of its host callbacks runs, SPDK's answers go
//! into the [`GroupCalls`] that callback was given (the pointer is published
//! in [`GroupGlue::calls`] for the callback's duration); while any other
//! core call runs they wait in [`GroupGlue::deferred`], applied as soon as
//! it returns; otherwise they go straight to the core. All of it happens on
//! the group's SPDK thread.

use std::cell::{Cell, RefCell, UnsafeCell};
use std::collections::VecDeque;

use super::api::api;
use super::clock::now_ns;
use super::dma::SpdkDma;
use super::interrupt::{self, GroupInterrupts};
use super::memmap::DeviceMemMap;
use super::qpair::RsQpair;
use super::sys;
use super::trace::{self, QpairEvent};
use super::transport::RsTransport;
use crate::engine::codec::nvme::{Command, Completion};
use crate::engine::{DisconnectReason, ReqState};
use crate::transport::{
    BufferGrant, CommandData, DeviceMsg, Direction, FiniDone, GroupCalls, Host, HostError,
    HostGroup, PollGroup, PortMsg, QpairHandle, QpairInfo, QpairMsg, RequestBuffers, RequestHandle,
};
use crate::verbs::{DmaAllocator, Pd};

const POLL_GROUP_MAGIC: u64 = 0x5244_4d41_5f52_5047; // "RDMA_RPG"

/// An answer that arrived while a core call (not a host callback) was in
/// progress.
pub(crate) enum Deferred {
    Complete(RequestHandle, Completion),
    Free(RequestHandle),
    Fini(QpairHandle, FiniDone),
    Deliver(QpairMsg),
    DeliverDevice(DeviceMsg),
    DeliverPort(PortMsg),
}

impl Deferred {
    /// Hands the answer or event to the core. A command's completion or
    /// free gets `last_now`, the time the group last read the clock (the
    /// core stamps nothing with it that a fresh read would make truer: it
    /// starts no deadline and measures no latency there), which saves a
    /// clock read per I/O; everything else (a fini starts a drain
    /// deadline) reads the clock.
    fn apply(self, pg: &mut PollGroup<SpdkHost>, last_now: u64) {
        match self {
            Deferred::Complete(req, c) => pg.complete(req, c, last_now),
            Deferred::Free(req) => pg.free(req, last_now),
            Deferred::Fini(q, done) => pg.fini(q, Some(done), now_ns()),
            Deferred::Deliver(m) => pg.deliver(m, now_ns()),
            Deferred::DeliverDevice(m) => pg.deliver_device(m, now_ns()),
            Deferred::DeliverPort(m) => pg.deliver_port(m, now_ns()),
        }
    }
}

/// A request waiting for data buffers (upstream's pending buffer queue,
/// retried at every poll; SPDK's iobuf wait is not used, as upstream).
#[derive(Clone, Copy)]
struct Waiter {
    req: RequestHandle,
    len: u32,
    device: usize,
}

/// An abort the core is retrying (the victim was moving data).
struct PendingAbort {
    qpair: QpairHandle,
    cid: u16,
    abort_req: *mut sys::spdk_nvmf_request,
}

/// The state shared by the poll group object SPDK holds and the host side
/// the core calls. Single-threaded: only the group's SPDK thread touches it.
pub(crate) struct GroupGlue {
    transport: *mut RsTransport,
    /// SPDK's view of this group (the `base` of [`RsPollGroup`]).
    tgroup: *mut sys::spdk_nvmf_transport_poll_group,
    busy: Cell<bool>,
    /// What the last [`RsPollGroup::now`] read (for answers, see
    /// [`Deferred::apply`]).
    last_now: Cell<u64>,
    calls: Cell<*mut GroupCalls>,
    deferred: RefCell<VecDeque<Deferred>>,
    /// Our qpairs by the slot of their handle.
    qpairs: RefCell<Vec<*mut RsQpair>>,
    /// The qpair `poll_group_add` is adding (for `qpair_added`).
    pub(crate) adding: Cell<*mut RsQpair>,
    waiters: RefCell<VecDeque<Waiter>>,
    maps: RefCell<Vec<*const DeviceMemMap>>,
    aborts: RefCell<Vec<PendingAbort>>,
}

/// A poll group of ours; SPDK sees `&base`.
#[repr(C)]
pub(crate) struct RsPollGroup {
    base: sys::spdk_nvmf_transport_poll_group,
    magic: u64,
    pub(crate) glue: GroupGlue,
    core: UnsafeCell<Option<PollGroup<SpdkHost>>>,
    /// SPDK's thread of this group (messages from the acceptor go there).
    pub(crate) thread: *mut sys::spdk_thread,
    /// Interrupt mode: the channel interrupts and the deadline timer.
    intr: RefCell<Option<GroupInterrupts>>,
    /// The core's [`PollGroup::event_fds_generation`] `intr` was made for
    /// (a device's poller made or dropped changes the fds).
    intr_generation: Cell<u64>,
}

/// Makes the host side of a group ([`Host::create_group`]) pointing at its
/// glue.
pub(crate) struct SpdkHost(*const GroupGlue);

// SAFETY: the pointer is only dereferenced on the group's own thread, by the
// host group it is handed to; `Host` requires Send + Sync only because the
// standalone driver shares its host across threads.
unsafe impl Send for SpdkHost {}
// SAFETY: see Send.
unsafe impl Sync for SpdkHost {}

impl Host for SpdkHost {
    type Group = SpdkHostGroup;
    fn create_group(&self, _index: u16) -> SpdkHostGroup {
        SpdkHostGroup { glue: self.0 }
    }
    fn dma_allocator(&self) -> &'static dyn DmaAllocator {
        &SpdkDma
    }
}

/// The host side of one group: SPDK's generic layer.
pub(crate) struct SpdkHostGroup {
    glue: *const GroupGlue,
}

impl RsPollGroup {
    /// Creates a poll group on the calling SPDK thread.
    pub(crate) fn create(t: &mut RsTransport) -> Option<*mut sys::spdk_nvmf_transport_poll_group> {
        let api = api()?;
        let tptr: *mut RsTransport = t;
        let g = Box::into_raw(Box::new(RsPollGroup {
            base: Default::default(),
            magic: POLL_GROUP_MAGIC,
            glue: GroupGlue {
                transport: tptr,
                tgroup: std::ptr::null_mut(),
                busy: Cell::new(false),
                last_now: Cell::new(now_ns()),
                calls: Cell::new(std::ptr::null_mut()),
                deferred: RefCell::new(VecDeque::new()),
                qpairs: RefCell::new(Vec::new()),
                adding: Cell::new(std::ptr::null_mut()),
                waiters: RefCell::new(VecDeque::new()),
                maps: RefCell::new(Vec::new()),
                aborts: RefCell::new(Vec::new()),
            },
            core: UnsafeCell::new(None),
            intr: RefCell::new(None),
            intr_generation: Cell::new(0),
            // SAFETY: no arguments; called on an SPDK thread.
            thread: unsafe { api.spdk_get_thread() },
        }));
        // SAFETY: just allocated, not shared yet.
        let gr = unsafe { &mut *g };
        gr.glue.tgroup = &mut gr.base;
        let host = SpdkHost(&gr.glue);
        match t.core().create_poll_group(&host) {
            Ok(mut pg) => {
                let index = pg.index();
                let fds = interrupt::enabled().then(|| {
                    pg.arm();
                    pg.event_fds()
                });
                gr.intr_generation.set(pg.event_fds_generation());
                *gr.core.get_mut() = Some(pg);
                if let Some(fds) = fds {
                    *gr.intr.get_mut() = Some(GroupInterrupts::register(g, &fds));
                }
                t.groups.add(index, g, gr.thread);
                tracing::info!("RDMA_RS: poll group {index} created");
                Some(&mut gr.base)
            }
            Err(e) => {
                tracing::error!("RDMA_RS: poll_group_create failed: {e}");
                // SAFETY: ours, never handed out.
                drop(unsafe { Box::from_raw(g) });
                None
            }
        }
    }

    /// The group behind SPDK's pointer, or `None` when it is not ours.
    ///
    /// # Safety
    /// `p` must be NULL or a poll group SPDK handed to one of our ops, on its
    /// thread, not yet destroyed.
    pub(crate) unsafe fn from_raw<'a>(
        p: *mut sys::spdk_nvmf_transport_poll_group,
    ) -> Option<&'a RsPollGroup> {
        if p.is_null() {
            return None;
        }
        // SAFETY: our groups are `RsPollGroup`s (base first, repr(C)); the
        // magic is checked before anything else is used.
        let g = unsafe { &*p.cast::<RsPollGroup>() };
        (g.magic == POLL_GROUP_MAGIC).then_some(g)
    }

    /// The time on the core's clock, remembered for the answers that come
    /// later outside any core call ([`Deferred::apply`]).
    pub(crate) fn now(&self) -> u64 {
        let now = now_ns();
        self.glue.last_now.set(now);
        now
    }

    /// The core's index of this group.
    pub(crate) fn index(&self) -> Option<u16> {
        // SAFETY: read only, outside any core call (the index never changes).
        unsafe { (*self.core.get()).as_ref().map(PollGroup::index) }
    }

    /// Runs `f` on the core unless a core call is already in progress on
    /// this thread (then `None`), and applies what was deferred meanwhile.
    pub(crate) fn run<R>(&self, f: impl FnOnce(&mut PollGroup<SpdkHost>) -> R) -> Option<R> {
        if self.glue.busy.get() {
            return None;
        }
        self.glue.busy.set(true);
        // SAFETY: `busy` guarantees no other reference to the core exists:
        // every path to it goes through `run` on this (the group's only)
        // thread, and nested calls see `busy` and defer.
        let core = unsafe { &mut *self.core.get() };
        let r = core.as_mut().map(|pg| {
            let r = f(pg);
            loop {
                let next = self.glue.deferred.borrow_mut().pop_front();
                let Some(d) = next else { break };
                d.apply(pg, self.glue.last_now.get());
            }
            self.refresh_interrupts(pg);
            if let Some(intr) = self.intr.borrow().as_ref() {
                // Interrupt mode: the timer runs only while something is due
                // that no fd announces (a deadline, a buffer waiter).
                let waiting = !self.glue.waiters.borrow().is_empty();
                intr.want_timer(waiting || pg.next_deadline().is_some());
            }
            r
        });
        self.glue.busy.set(false);
        r
    }

    /// Interrupt mode: registers the channel fds again when a device's poller
    /// was made or dropped (SPDK allows removing an interrupt from inside its
    /// own handler). Asked after every core call: the check is inlined, the
    /// rare re-registration is not.
    #[inline]
    fn refresh_interrupts(&self, pg: &mut PollGroup<SpdkHost>) {
        let generation = pg.event_fds_generation();
        if generation != self.intr_generation.get() {
            self.register_again(pg, generation);
        }
    }

    #[cold]
    #[inline(never)]
    fn register_again(&self, pg: &mut PollGroup<SpdkHost>, generation: u64) {
        self.intr_generation.set(generation);
        let mut intr = self.intr.borrow_mut();
        if intr.is_none() {
            return;
        }
        // Old registrations first: the fds of a dropped poller close once
        // the core is told (`event_fds`) that nobody waits on them.
        drop(intr.take());
        let fds = pg.event_fds();
        pg.arm();
        let me: *const RsPollGroup = self;
        *intr = Some(GroupInterrupts::register(me, &fds));
    }

    /// Hands an answer to the core: into the current callback's calls, after
    /// the current core call, or now.
    pub(crate) fn answer(&self, d: Deferred) {
        let calls = self.glue.calls.get();
        if !calls.is_null() {
            // SAFETY: published by a host callback running below us on this
            // thread, for its duration only; nothing else uses it meanwhile
            // (the callback is inside SPDK, which called us).
            let calls = unsafe { &mut *calls };
            let r = match d {
                Deferred::Complete(req, c) => calls.complete(req, c),
                Deferred::Free(req) => calls.free(req),
                Deferred::Fini(q, done) => calls.fini(q, Some(done)),
                other => {
                    self.glue.deferred.borrow_mut().push_back(other);
                    Ok(())
                }
            };
            if let Err(e) = r {
                tracing::error!("RDMA_RS: poll group answer dropped: {e}");
            }
            return;
        }
        if self.glue.busy.get() {
            self.glue.deferred.borrow_mut().push_back(d);
            return;
        }
        let last_now = self.glue.last_now.get();
        self.run(|pg| d.apply(pg, last_now));
    }

    /// A pending abort of `abort_req` (victim `cid` of `qpair`) the core
    /// retries; answered in [`HostGroup::abort_finished`].
    pub(crate) fn push_abort(
        &self,
        qpair: QpairHandle,
        cid: u16,
        abort_req: *mut sys::spdk_nvmf_request,
    ) {
        self.glue.aborts.borrow_mut().push(PendingAbort {
            qpair,
            cid,
            abort_req,
        });
    }

    /// Frees a group made by [`RsPollGroup::create`]: the core group is
    /// dropped first (its qpairs are torn down, the host told they are gone).
    ///
    /// # Safety
    /// `p` must come from [`RsPollGroup::create`]; SPDK never uses it again.
    pub(crate) unsafe fn destroy(p: *mut sys::spdk_nvmf_transport_poll_group) {
        // SAFETY: the Box pointer `create` leaked (caller's contract).
        let mut g = unsafe { Box::from_raw(p.cast::<RsPollGroup>()) };
        let index = g.index();
        // SAFETY: the transport outlives its poll groups (SPDK destroys
        // groups before the transport).
        let t = unsafe { &*g.glue.transport };
        if let Some(i) = index {
            t.groups.remove(i);
        }
        drop(g.intr.get_mut().take());
        g.glue.busy.set(true);
        drop(g.core.get_mut().take());
        g.magic = 0;
        let left = g
            .glue
            .qpairs
            .borrow()
            .iter()
            .filter(|q| !q.is_null())
            .count();
        if left > 0 {
            tracing::warn!(
                "RDMA_RS: poll group {index:?} destroyed with {left} qpairs SPDK did not finish"
            );
        }
    }
}

impl GroupGlue {
    fn transport(&self) -> &RsTransport {
        // SAFETY: the transport outlives its poll groups.
        unsafe { &*self.transport }
    }

    /// Our qpair named by `h` (the slot must hold that very handle).
    // The qpairs are SPDK-shared objects reached through raw pointers on one
    // thread; the glue hands out one short-lived reference at a time.
    #[allow(clippy::mut_from_ref)]
    fn qpair(&self, h: QpairHandle) -> Option<&mut RsQpair> {
        let p = *self.qpairs.borrow().get(h.slot as usize)?;
        if p.is_null() {
            return None;
        }
        // SAFETY: table entries are live qpairs of this group (removed in
        // `qpair_gone` before they can be freed), used on this thread only;
        // callers hold no other reference across this use.
        let q = unsafe { &mut *p };
        (q.handle == Some(h)).then_some(q)
    }

    /// Removes every table entry naming `q` (a qpair whose add failed).
    pub(crate) fn forget(&self, q: *mut RsQpair) {
        for p in self.qpairs.borrow_mut().iter_mut() {
            if *p == q {
                *p = std::ptr::null_mut();
            }
        }
    }

    /// Runs `f` with `calls` published for SPDK's re-entrant answers.
    fn with_calls<R>(&self, calls: &mut GroupCalls, f: impl FnOnce() -> R) -> R {
        let prev = self.calls.replace(calls);
        let r = f();
        self.calls.set(prev);
        r
    }

    /// Asks SPDK for buffers; fills `out` with their SGEs on success.
    fn try_buffers(
        &self,
        req: RequestHandle,
        len: u32,
        device: usize,
        out: &mut RequestBuffers,
    ) -> bool {
        let Some(api) = api() else { return false };
        let Some(q) = self.qpair(req.qpair) else {
            return false;
        };
        let Some(rec) = q.record(req.slot) else {
            return false;
        };
        let map = self
            .maps
            .borrow()
            .get(device)
            .copied()
            .unwrap_or(std::ptr::null());
        if map.is_null() {
            tracing::error!("RDMA_RS: {req}: no memory map for device {device}");
            return false;
        }
        rec.base.length = len;
        // SAFETY: our record, its qpair set; SPDK's transport and our group.
        let rc = unsafe {
            api.spdk_nvmf_request_get_buffers(
                &mut rec.base,
                self.tgroup,
                self.transport().base_ptr(),
                len,
            )
        };
        if rc != 0 {
            return false;
        }
        // SAFETY: transport-wide maps live as long as the transport.
        let map = unsafe { &*map };
        let n = usize::from(rec.base.iovcnt);
        for iov in &rec.base.iov[..n] {
            let sge = u32::try_from(iov.iov_len)
                .ok()
                .and_then(|l| map.sge(iov.iov_base as u64, l));
            let pushed = sge.map(|s| out.push(s).is_ok()).unwrap_or(false);
            if !pushed {
                tracing::error!(
                    "RDMA_RS: {req}: buffer {:p}+{} has no registration on device {device}",
                    iov.iov_base,
                    iov.iov_len
                );
                // SAFETY: as above; returns what get_buffers gave.
                unsafe {
                    api.spdk_nvmf_request_free_buffers(
                        &mut rec.base,
                        self.tgroup,
                        self.transport().base_ptr(),
                    )
                };
                out.clear();
                return false;
            }
        }
        true
    }
}

impl SpdkHostGroup {
    fn glue(&self) -> &GroupGlue {
        // SAFETY: the glue lives in the `RsPollGroup` that owns the core group
        // owning this host group, so it outlives us; single-threaded.
        unsafe { &*self.glue }
    }
}

impl HostGroup for SpdkHostGroup {
    fn attach_device(&mut self, device: usize, pd: &Pd) -> Result<(), HostError> {
        let g = self.glue();
        let map = g
            .transport()
            .mem_map(device, pd)
            .ok_or_else(|| HostError::Registration {
                device: format!("{device}"),
                reason: "spdk_mem_map_alloc failed".to_string(),
            })?;
        let mut maps = g.maps.borrow_mut();
        if maps.len() <= device {
            maps.resize(device + 1, std::ptr::null());
        }
        maps[device] = map;
        Ok(())
    }

    fn detach_device(&mut self, device: usize) {
        // The map itself is transport-wide, freed when the device is retired
        // (every group detached).
        if let Some(m) = self.glue().maps.borrow_mut().get_mut(device) {
            *m = std::ptr::null();
        }
    }

    fn disconnect_requested(&mut self, qpair: QpairHandle, calls: &mut GroupCalls) {
        let g = self.glue();
        let Some(api) = api() else { return };
        let Some(q) = g.qpair(qpair) else {
            tracing::debug!("RDMA_RS: disconnect of {qpair}: not an SPDK qpair any more");
            return;
        };
        let base: *mut sys::spdk_nvmf_qpair = &mut q.base;
        trace::qpair_event(base.cast(), QpairEvent::Disconnect, 0);
        // SAFETY: a live qpair SPDK knows; SPDK may call our ops back inside,
        // which find `calls` published.
        let rc = g.with_calls(calls, || unsafe { api.spdk_nvmf_qpair_disconnect(base) });
        if rc != 0 && rc != -libc::EINPROGRESS {
            tracing::warn!("RDMA_RS: spdk_nvmf_qpair_disconnect({qpair}) returned {rc}");
        }
    }

    fn qpair_added(&mut self, info: &QpairInfo) -> bool {
        let g = self.glue();
        let p = g.adding.get();
        if p.is_null() {
            tracing::error!("RDMA_RS: {} joined outside poll_group_add", info.handle);
            return false;
        }
        // SAFETY: set by `poll_group_add` for the duration of the core call,
        // pointing at the live qpair being added.
        let q = unsafe { &mut *p };
        q.make_records(info.handle, info.queue_depth);
        q.local = info.local;
        q.group = g.tgroup;
        let mut t = g.qpairs.borrow_mut();
        let slot = info.handle.slot as usize;
        if t.len() <= slot {
            t.resize(slot + 1, std::ptr::null_mut());
        }
        t[slot] = p;
        trace::qpair_event(p.cast(), QpairEvent::Create, u64::from(info.qid));
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
        let g = self.glue();
        let Some(api) = api() else { return };
        let Some(q) = g.qpair(req.qpair) else {
            let _ = calls.free(req);
            return;
        };
        if !qpair_is_active(&q.base) {
            // Upstream: commands after the generic layer began a disconnect
            // are dropped without a response.
            let _ = calls.free(req);
            return;
        }
        let Some(rec) = q.record(req.slot) else {
            tracing::error!("RDMA_RS: {req}: no request record");
            let _ = calls.free(req);
            return;
        };
        super::request::prepare(rec, cmd, data, direction);
        let base: *mut sys::spdk_nvmf_request = &mut rec.base;
        // SAFETY: a prepared record of a live qpair; SPDK may complete it (or
        // others) inside, through our ops, which find `calls` published.
        g.with_calls(calls, || unsafe { api.spdk_nvmf_request_exec(base) });
    }

    fn get_buffers(
        &mut self,
        req: RequestHandle,
        len: u32,
        device: usize,
        out: &mut RequestBuffers,
    ) -> BufferGrant {
        let g = self.glue();
        let queued = !g.waiters.borrow().is_empty();
        if !queued && g.try_buffers(req, len, device, out) {
            return BufferGrant::Granted;
        }
        g.waiters
            .borrow_mut()
            .push_back(Waiter { req, len, device });
        BufferGrant::Later
    }

    fn cancel_buffers(&mut self, req: RequestHandle) {
        self.glue().waiters.borrow_mut().retain(|w| w.req != req);
    }

    fn release_buffers(
        &mut self,
        req: RequestHandle,
        _buffers: &RequestBuffers,
        calls: &mut GroupCalls,
    ) {
        let g = self.glue();
        let Some(api) = api() else { return };
        let Some(q) = g.qpair(req.qpair) else { return };
        let Some(rec) = q.record(req.slot) else {
            return;
        };
        let base: *mut sys::spdk_nvmf_request = &mut rec.base;
        let tgroup = g.tgroup;
        let transport = g.transport().base_ptr();
        // SAFETY: the record holds the buffers `get_buffers` gave (its iov).
        g.with_calls(calls, || unsafe {
            api.spdk_nvmf_request_free_buffers(base, tgroup, transport)
        });
    }

    fn abort_finished(&mut self, qpair: QpairHandle, cid: u16, aborted: bool) {
        let g = self.glue();
        let found = {
            let mut a = g.aborts.borrow_mut();
            a.iter()
                .position(|p| p.qpair == qpair && p.cid == cid)
                .map(|i| a.swap_remove(i))
        };
        if let Some(p) = found {
            super::request::finish_abort(p.abort_req, aborted);
        }
    }

    fn qpair_gone(&mut self, qpair: QpairHandle) {
        let g = self.glue();
        g.waiters.borrow_mut().retain(|w| w.req.qpair != qpair);
        let p = {
            let mut t = g.qpairs.borrow_mut();
            match t.get_mut(qpair.slot as usize) {
                Some(p) if !p.is_null() => std::mem::replace(p, std::ptr::null_mut()),
                _ => return,
            }
        };
        // SAFETY: was in our table: a live qpair of this group.
        let q = unsafe { &mut *p };
        q.life.gone = true;
        // Its group may be destroyed before SPDK finishes the qpair: late
        // answers must not reach it.
        q.group = std::ptr::null_mut();
        trace::qpair_event(p.cast(), QpairEvent::Destroy, 0);
        tracing::debug!(
            "RDMA_RS: {qpair} gone (fini called: {})",
            q.life.fini_called
        );
        if q.life.fini_called {
            // SAFETY: SPDK finished it and the transport is done with it.
            unsafe { RsQpair::free(p) };
        }
    }

    fn trace_requests(&mut self) -> bool {
        trace::requests_enabled()
    }

    fn request_state(&mut self, req: RequestHandle, state: ReqState, in_use: u16) {
        let Some(q) = self.glue().qpair(req.qpair) else {
            return;
        };
        let qpair = std::ptr::addr_of!(q.base).cast();
        if let Some(rec) = q.record(req.slot) {
            trace::request_state(std::ptr::addr_of!(rec.base).cast(), qpair, state, in_use);
        }
    }

    fn qpair_error(&mut self, qpair: QpairHandle, reason: DisconnectReason) {
        if let Some(q) = self.glue().qpair(qpair) {
            trace::qpair_error(std::ptr::addr_of!(q.base).cast(), reason);
        }
    }

    fn poll(&mut self, _now: u64, calls: &mut GroupCalls) {
        let g = self.glue();
        loop {
            let Some(w) = g.waiters.borrow().front().copied() else {
                break;
            };
            let mut b = RequestBuffers::default();
            if !g.try_buffers(w.req, w.len, w.device, &mut b) {
                break;
            }
            g.waiters.borrow_mut().pop_front();
            if let Err(e) = calls.buffers_ready(w.req, &b) {
                tracing::error!("RDMA_RS: {}: buffers ready dropped: {e}", w.req);
            }
        }
    }
}

/// SPDK's inline `spdk_nvmf_qpair_is_active`.
pub(crate) fn qpair_is_active(q: &sys::spdk_nvmf_qpair) -> bool {
    let s = u32::from(q.state);
    s == sys::SPDK_NVMF_QPAIR_CONNECTING
        || s == sys::SPDK_NVMF_QPAIR_AUTHENTICATING
        || s == sys::SPDK_NVMF_QPAIR_ENABLED
}
