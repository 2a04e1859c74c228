//! Event channels, cm ids, events, and the per-process CM event thread.
//!
//! * A [`Channel`] embeds `struct rdma_event_channel`; its `fd` is the poll fd of an
//!   [`EventFd`] over a `SOCK_STREAM` socketpair carrying one byte per queued event, so it is
//!   readable exactly while an event is queued, never writable, and honours O_NONBLOCK; the
//!   events themselves sit in an in-process queue.
//! * An [`IdBox`] embeds `struct rdma_cm_id` (first field, so the C pointer is the box).
//!   Both live in `Arc`s: the application holds one reference, queued events and the
//!   event thread hold others, so nothing an unacked event points to is freed early.
//! * The event thread waits in `epoll_wait` on listening and connection sockets and runs
//!   the [`crate::conn`] state machine.

use crate::addr::{self, NameKind};
use crate::conn::{Conn, Event, Output};
use crate::ffi::{self, debug, log};
use crate::proto::{self, Msg, Rep};
use softrdma_abi::cma::*;
use softrdma_abi::event_fd::EventFd;
use softrdma_abi::fabric::Counter;
use softrdma_abi::verbs::*;
use std::cell::UnsafeCell;
use std::collections::{HashMap, VecDeque};
use std::ffi::c_int;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// Zeroed C plain-old-data.
///
/// # Safety
/// `T` must be a C struct/union for which all-zero bytes are a valid value (integers, raw
/// pointers, nested such structs) — true of every rdma-core struct used here.
pub unsafe fn zeroed<T>() -> T {
    // SAFETY: guaranteed by the caller.
    unsafe { std::mem::zeroed() }
}

/// Lock, recovering from a poisoned mutex (a panic elsewhere must not wedge the CM).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ------------------------------------------------------------------------------------------
// Devices

/// The device librdmacm binds ids to (one process-wide context per device).
pub struct Device {
    /// The process-wide context returned by `rdma_get_devices` and put in `cm_id->verbs`.
    pub ctx: *mut ibv_context,
    /// Default PD, allocated on first use (`ucma_get_device`).
    pd: Mutex<usize>,
    /// Ids attached to the device and not destroyed, and whether the device was removed:
    /// the default PD of a removed device is deallocated once no id uses it (rdma-core's
    /// `ucma_put_device`), so a removal leaks nothing.
    refs: Mutex<(usize, bool)>,
    /// `max_qp_rd_atom` (responder resources limit), clamped to u8.
    pub max_resp_res: u8,
    /// `max_qp_init_rd_atom` (initiator depth limit), clamped to u8.
    pub max_init_depth: u8,
    /// Port 1 LID.
    pub lid: u16,
    /// Port 1 GID 0 (raw bytes).
    pub gid: [u8; 16],
    /// Port 1 active MTU (ibv_mtu).
    pub mtu: u32,
}

// SAFETY: the context pointer refers to a process-wide libibverbs object that is never
// closed; libibverbs objects are thread-safe. The PD is behind a mutex.
unsafe impl Send for Device {}
// SAFETY: see Send.
unsafe impl Sync for Device {}

impl Device {
    /// The default PD, allocating it the first time.
    pub fn pd(&self) -> *mut ibv_pd {
        let mut g = lock(&self.pd);
        if *g == 0 {
            // SAFETY: ctx is a valid open context.
            let pd = unsafe { ffi::ibv_alloc_pd(self.ctx) };
            if pd.is_null() {
                log(&format!(
                    "ibv_alloc_pd on the default device failed: errno {}",
                    ffi::errno()
                ));
            }
            *g = pd as usize;
        }
        *g as *mut ibv_pd
    }

    /// An id attached to the device.
    fn get(&self) {
        lock(&self.refs).0 += 1;
    }

    /// An id attached to the device was destroyed.
    pub fn put(&self) {
        let mut r = lock(&self.refs);
        r.0 = r.0.saturating_sub(1);
        if r.0 == 0 && r.1 {
            self.free_pd();
        }
    }

    /// The device was removed: its default PD goes now if no id uses it, else with the last.
    fn removed(&self) {
        let mut r = lock(&self.refs);
        r.1 = true;
        if r.0 == 0 {
            self.free_pd();
        }
    }

    fn free_pd(&self) {
        let mut g = lock(&self.pd);
        if *g != 0 {
            // SAFETY: our PD, allocated in `pd`, deallocated once (zeroed below); no id
            // of the removed device uses it any more.
            unsafe { ffi::ibv_dealloc_pd(*g as *mut ibv_pd) };
            *g = 0;
        }
    }
}

/// The device list: None until first use; then the result of the first open (an error is
/// final, like `ucma_init`'s) minus removed devices.
static DEVS: Mutex<Option<Result<Vec<&'static Device>, c_int>>> = Mutex::new(None);

/// The devices: opened on first use; a device removed later ([`remove_device`]) leaves the
/// list, and while the list is empty every call looks again, so a device that came back is
/// found as a new context (librdmacm's hot-plug behaviour).
pub fn devices() -> Result<Vec<&'static Device>, c_int> {
    let mut g = lock(&DEVS);
    let r = g.get_or_insert_with(|| open_devices().map(|v| v.into_iter().map(leak).collect()));
    if let Ok(list) = r {
        if list.is_empty() {
            if let Ok(v) = open_devices() {
                *list = v.into_iter().map(leak).collect();
                debug!("device back: new context {:p}", list[0].ctx);
            }
        }
    }
    r.clone()
}

/// Devices live for the process: ids keep `&'static` references, also to removed ones.
fn leak(d: Device) -> &'static Device {
    Box::leak(Box::new(d))
}

/// Forget the device whose context is `ctx` (it was removed); returns it.
fn remove_device(ctx: *mut ibv_context) -> Option<&'static Device> {
    let mut g = lock(&DEVS);
    let list = g.as_mut()?.as_mut().ok()?;
    let pos = list.iter().position(|d| d.ctx == ctx)?;
    Some(list.remove(pos))
}

fn open_devices() -> Result<Vec<Device>, c_int> {
    let mut ctxs = Vec::new();
    if let Some(p) = ffi::private() {
        // SAFETY: vtable function, non-NULL by contract.
        let c = unsafe { (p.shared_context)() };
        if !c.is_null() {
            ctxs.push(c);
        }
    }
    if ctxs.is_empty() {
        let mut n: c_int = 0;
        // SAFETY: plain libibverbs call with a valid out pointer.
        let list = unsafe { ffi::ibv_get_device_list(&mut n) };
        if list.is_null() {
            return Err(ffi::errno().max(libc::ENODEV));
        }
        for i in 0..n.max(0) as usize {
            // SAFETY: the list holds `n` valid device pointers.
            let dev = unsafe { *list.add(i) };
            // SAFETY: dev comes from the list.
            let c = unsafe { ffi::ibv_open_device(dev) };
            if !c.is_null() {
                ctxs.push(c);
            }
        }
        // SAFETY: list from ibv_get_device_list; opened contexts stay valid.
        unsafe { ffi::ibv_free_device_list(list) };
    }
    if ctxs.is_empty() {
        return Err(libc::ENODEV);
    }
    let mut out = Vec::new();
    for ctx in ctxs {
        // SAFETY: zero is valid for these POD structs.
        let mut da: ibv_device_attr = unsafe { zeroed() };
        // SAFETY: as above.
        let mut pa: ibv_port_attr = unsafe { zeroed() };
        // SAFETY: as above.
        let mut gid: ibv_gid = unsafe { zeroed() };
        // SAFETY: valid context and out pointers.
        let r1 = unsafe { ffi::ibv_query_device(ctx, &mut da) };
        // SAFETY: as above; the exported ibv_query_port writes at most sizeof(ibv_port_attr).
        let r2 = unsafe { ffi::ibv_query_port(ctx, 1, &mut pa) };
        // SAFETY: as above.
        let r3 = unsafe { ffi::ibv_query_gid(ctx, 1, 0, &mut gid) };
        if r1 != 0 || r2 != 0 {
            log(&format!(
                "device query failed (device {r1}, port {r2}); skipping it"
            ));
            continue;
        }
        let gid_bytes = if r3 == 0 {
            // SAFETY: ibv_gid is a union of a byte array and two u64; any bytes are valid.
            unsafe { gid.raw }
        } else {
            [0u8; 16]
        };
        out.push(Device {
            ctx,
            pd: Mutex::new(0),
            refs: Mutex::new((0, false)),
            max_resp_res: da.max_qp_rd_atom.clamp(0, 255) as u8,
            max_init_depth: da.max_qp_init_rd_atom.clamp(0, 255) as u8,
            lid: pa.lid,
            gid: gid_bytes,
            mtu: pa.active_mtu,
        });
    }
    if out.is_empty() {
        Err(libc::ENODEV)
    } else {
        Ok(out)
    }
}

/// The device an IP address maps to: there is one fabric, so always the first device.
pub fn device_for(_ip: &std::net::IpAddr) -> Result<&'static Device, c_int> {
    devices()?.first().copied().ok_or(libc::ENODEV)
}

// ------------------------------------------------------------------------------------------
// Events and channels

/// What kind of internal processing an event still needs in `rdma_get_cm_event`.
pub enum Pending {
    /// Report as is.
    Plain,
    /// Active side REP: turn into ESTABLISHED (QP moved to RTS, RTU sent) or
    /// CONNECT_RESPONSE when the id has no QP.
    ConnectResponse,
}

/// An `rdma_cm_event` plus what it keeps alive.
#[repr(C)]
pub struct EventBox {
    /// The C event handed to the application (first field).
    pub ev: rdma_cm_event,
    /// Deferred processing.
    pub pending: Pending,
    /// The id the event is about.
    pub id: Arc<IdBox>,
    /// The listener for CONNECT_REQUEST.
    pub listen: Option<Arc<IdBox>>,
    /// Private data buffer `ev.param.conn.private_data` points into.
    pub pdata: Vec<u8>,
}

// SAFETY: the raw pointers inside `ev` point at the Arc'd ids and the owned pdata buffer,
// which move with the box.
unsafe impl Send for EventBox {}

impl EventBox {
    /// A new event for `id`.
    pub fn new(id: &Arc<IdBox>, kind: rdma_cm_event_type, status: c_int) -> Box<EventBox> {
        // SAFETY: all-zero is a valid rdma_cm_event.
        let mut ev: rdma_cm_event = unsafe { zeroed() };
        ev.id = id.c_ptr();
        ev.event = kind;
        ev.status = status;
        Box::new(EventBox {
            ev,
            pending: Pending::Plain,
            id: id.clone(),
            listen: None,
            pdata: Vec::new(),
        })
    }

    /// Attach private data, zero-padded to `pad` bytes (IB CM fixed sizes).
    pub fn set_private_data(&mut self, data: &[u8], pad: usize) {
        if data.is_empty() && pad == 0 {
            return;
        }
        let mut v = data.to_vec();
        if v.len() < pad {
            v.resize(pad, 0);
        }
        self.pdata = v;
        self.ev.param.conn.private_data = self.pdata.as_ptr().cast();
        self.ev.param.conn.private_data_len = self.pdata.len().min(255) as u8;
    }
}

/// `struct rdma_event_channel` plus its queue.
#[repr(C)]
pub struct Channel {
    c: UnsafeCell<rdma_event_channel>,
    /// One byte per queued event; `c.fd` is its poll fd.
    tokens: EventFd,
    queue: Mutex<VecDeque<Box<EventBox>>>,
}

// SAFETY: the C struct is written only at creation; everything else is behind a mutex or
// is an fd.
unsafe impl Send for Channel {}
// SAFETY: see Send.
unsafe impl Sync for Channel {}

impl Channel {
    /// A new channel with a fresh event queue.
    pub fn new() -> Result<Arc<Channel>, c_int> {
        let tokens = EventFd::new(libc::SOCK_STREAM)?;
        count(Counter::CmChannels, 1);
        Ok(Arc::new(Channel {
            c: UnsafeCell::new(rdma_event_channel {
                fd: tokens.app_fd(),
            }),
            tokens,
            queue: Mutex::new(VecDeque::new()),
        }))
    }

    /// The C pointer handed out.
    pub fn c_ptr(self: &Arc<Self>) -> *mut rdma_event_channel {
        self.c.get()
    }

    /// Queue an event and make the fd readable.
    pub fn push(&self, ev: Box<EventBox>) {
        debug!(
            "queue {} status {} for cm_id {:p}",
            crate::api::event_name(ev.ev.event),
            ev.ev.status,
            ev.ev.id
        );
        let mut q = lock(&self.queue);
        q.push_back(ev);
        if !self.tokens.send(&[1u8]) {
            log(&format!(
                "event channel fd {}: cannot signal event (errno {}); {} events queued",
                self.tokens.app_fd(),
                ffi::errno(),
                q.len()
            ));
        }
    }

    /// Block (unless the fd is O_NONBLOCK) for the next event.
    pub fn pop(&self) -> Result<Box<EventBox>, c_int> {
        loop {
            let mut b = [0u8; 1];
            // Honours the O_NONBLOCK flag the application set on the channel's fd.
            let n = match self.tokens.recv(&mut b) {
                Ok(n) => n,
                Err(libc::EINTR) => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Err(libc::EIO);
            }
            if let Some(ev) = lock(&self.queue).pop_front() {
                return Ok(ev);
            }
            // A token whose event was migrated or dropped: read the next one.
        }
    }

    /// Remove the queued events matching `pred`, consuming their tokens.
    #[allow(clippy::vec_box)] // the boxes move on to another queue unchanged
    pub fn take_where(&self, pred: impl Fn(&EventBox) -> bool) -> Vec<Box<EventBox>> {
        let mut q = lock(&self.queue);
        let mut taken = Vec::new();
        let mut keep = VecDeque::new();
        while let Some(e) = q.pop_front() {
            if pred(&e) {
                taken.push(e);
            } else {
                keep.push_back(e);
            }
        }
        *q = keep;
        for _ in 0..taken.len() {
            let mut b = [0u8; 1];
            if self.tokens.try_recv(&mut b) != Some(1) {
                break; // a reader consumed it concurrently; pop() skips empty tokens.
            }
        }
        taken
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        count(Counter::CmChannels, -1);
    }
}

/// Add to one of this process's softrdma counters (readable with `softrdma-ctl stats`).
pub fn count(c: Counter, delta: i64) {
    if let Some(p) = ffi::private() {
        // SAFETY: vtable function; any counter index is accepted (unknown ones ignored).
        unsafe { (p.counter_add)(c as u32, delta) };
    }
}

/// Convert a C channel pointer into a new strong reference.
///
/// # Safety
/// `p` must come from [`Channel::c_ptr`] of a channel the application has not destroyed.
pub unsafe fn channel_ref(p: *mut rdma_event_channel) -> Arc<Channel> {
    let p = p as *const Channel;
    // SAFETY: per the contract, p is the data pointer of a live Arc<Channel>.
    unsafe {
        Arc::increment_strong_count(p);
        Arc::from_raw(p)
    }
}

// ------------------------------------------------------------------------------------------
// cm ids

/// Options set with `rdma_set_option`.
#[derive(Default, Clone, Copy, Debug)]
pub struct Options {
    /// RDMA_OPTION_ID_TOS.
    pub tos: Option<u8>,
    /// RDMA_OPTION_ID_REUSEADDR.
    pub reuseaddr: bool,
    /// RDMA_OPTION_ID_AFONLY.
    pub afonly: bool,
    /// RDMA_OPTION_ID_ACK_TIMEOUT.
    pub ack_timeout: Option<u8>,
}

/// The peer QP learned from the REQ/REP.
#[derive(Clone, Copy, Debug)]
pub struct Remote {
    /// Peer QPN.
    pub qpn: u32,
    /// Peer's starting PSN (our rq_psn).
    pub psn: u32,
    /// Peer LID.
    pub lid: u16,
}

/// Listening state.
pub struct Listening {
    /// The listening socket.
    pub fd: Arc<OwnedFd>,
    /// epoll key.
    pub key: u64,
    /// Max CONNECT_REQUESTs queued and not yet retrieved.
    pub backlog: usize,
    /// CONNECT_REQUESTs queued and not yet retrieved.
    pub pending: usize,
}

/// Connection state.
pub struct ConnIo {
    /// The connection socket.
    pub fd: Arc<OwnedFd>,
    /// epoll key.
    pub key: u64,
    /// Protocol state machine.
    pub machine: Conn,
}

/// Mutable state of an id (behind `IdBox::st`).
pub struct IdState {
    /// The channel events go to.
    pub channel: Arc<Channel>,
    /// Synchronous id (created with a NULL channel): calls wait for their event.
    pub sync: bool,
    /// Bound local address.
    pub local: Option<SocketAddr>,
    /// Port reservation socket.
    pub reservation: Option<OwnedFd>,
    /// Peer address.
    pub peer: Option<SocketAddr>,
    /// Device the id is bound to.
    pub dev: Option<&'static Device>,
    /// rdma_set_option values.
    pub opts: Options,
    /// Listening state.
    pub listen: Option<Listening>,
    /// Connection state.
    pub conn: Option<ConnIo>,
    /// Negotiated responder resources of the local QP.
    pub responder_resources: u8,
    /// Negotiated initiator depth of the local QP.
    pub initiator_depth: u8,
    /// Retry count for the local QP (RTS).
    pub retry_count: u8,
    /// RNR retry count for the local QP (RTS), as supplied by the peer.
    pub rnr_retry_count: u8,
    /// Peer QP.
    pub remote: Option<Remote>,
    /// Our starting PSN.
    pub local_psn: u32,
    /// rdma_create_qp created the CQs and channels.
    pub created_cqs: bool,
    /// Synthesized path record (route.path_rec points at it).
    pub path_rec: Option<Box<ibv_sa_path_rec>>,
    /// QP attributes for ids created by `rdma_get_request` (from `rdma_create_ep`).
    pub ep_qp_attr: Option<Box<ibv_qp_init_attr>>,
    /// PD for those.
    pub ep_pd: usize,
    /// The id has been destroyed by the application.
    pub destroyed: bool,
    /// QPN of the QP `rdma_create_qp` attached (0: none).
    pub qpn: u32,
    /// The id's device was removed: it got RDMA_CM_EVENT_DEVICE_REMOVAL and gets no other
    /// event; a removed listener refuses connection requests.
    pub removed: bool,
}

/// `struct rdma_cm_id` plus its state.
#[repr(C)]
pub struct IdBox {
    c: UnsafeCell<rdma_cm_id>,
    /// Mutable state.
    pub st: Mutex<IdState>,
}

// SAFETY: the C struct is only written by this library while holding `st` (the
// application reads it like the kernel-backed original); the rest is behind the mutex.
unsafe impl Send for IdBox {}
// SAFETY: see Send.
unsafe impl Sync for IdBox {}

impl IdBox {
    /// A new id.
    pub fn new(
        channel: Arc<Channel>,
        sync: bool,
        context: *mut std::ffi::c_void,
        ps: u32,
        qp_type: ibv_qp_type,
    ) -> Arc<IdBox> {
        // SAFETY: zero is valid for rdma_cm_id.
        let mut c: rdma_cm_id = unsafe { zeroed() };
        c.channel = channel.c_ptr();
        c.context = context;
        c.ps = ps;
        c.qp_type = qp_type;
        c.route.addr.addr.ibaddr.pkey = 0xffffu16.to_be();
        count(Counter::CmIds, 1);
        Arc::new(IdBox {
            c: UnsafeCell::new(c),
            st: Mutex::new(IdState {
                channel,
                sync,
                local: None,
                reservation: None,
                peer: None,
                dev: None,
                opts: Options::default(),
                listen: None,
                conn: None,
                responder_resources: 0,
                initiator_depth: 0,
                retry_count: 7,
                rnr_retry_count: 7,
                remote: None,
                local_psn: random_u32() & 0xff_ffff,
                created_cqs: false,
                path_rec: None,
                ep_qp_attr: None,
                ep_pd: 0,
                destroyed: false,
                qpn: 0,
                removed: false,
            }),
        })
    }

    /// The C pointer.
    pub fn c_ptr(&self) -> *mut rdma_cm_id {
        self.c.get()
    }

    /// Mutable access to the C struct.
    ///
    /// # Safety
    /// The caller holds `self.st` (all library writes are serialized by it) and does not
    /// keep the reference across unlocking.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn c_mut(&self) -> &mut rdma_cm_id {
        // SAFETY: per the contract, writes are serialized by st.
        unsafe { &mut *self.c.get() }
    }

    /// The QP the application attached (id->qp).
    pub fn qp(&self, _st: &IdState) -> *mut ibv_qp {
        // SAFETY: reading a pointer-sized field of our own struct while holding st.
        unsafe { (*self.c.get()).qp }
    }

    /// Port space.
    pub fn ps(&self) -> u32 {
        // SAFETY: ps is written only at creation.
        unsafe { (*self.c.get()).ps }
    }

    /// Bind the id to a device (verbs, pd, port, GIDs).
    pub fn attach_device(&self, st: &mut IdState, dev: &'static Device) {
        dev.get();
        if let Some(old) = st.dev.replace(dev) {
            old.put();
        }
        // SAFETY: st is held.
        let c = unsafe { self.c_mut() };
        c.verbs = dev.ctx;
        c.port_num = 1;
        if c.pd.is_null() {
            c.pd = dev.pd();
        }
        c.route.addr.addr.ibaddr.sgid.raw = dev.gid;
    }

    /// Record the local address in route.addr.src.
    pub fn set_src(&self, st: &mut IdState, a: SocketAddr) {
        st.local = Some(a);
        // SAFETY: st is held; src_storage is plain data.
        let c = unsafe { self.c_mut() };
        // SAFETY: writing the storage member of the union (any bytes valid).
        addr::to_storage(&a, unsafe {
            &mut c.route.addr.__bindgen_anon_1.src_storage
        });
    }

    /// Record the peer address in route.addr.dst.
    pub fn set_dst(&self, st: &mut IdState, a: SocketAddr) {
        st.peer = Some(a);
        // SAFETY: st is held.
        let c = unsafe { self.c_mut() };
        // SAFETY: writing the storage member of the union.
        addr::to_storage(&a, unsafe {
            &mut c.route.addr.__bindgen_anon_2.dst_storage
        });
    }

    /// Queue an event on the id's channel (none after DEVICE_REMOVAL: the kernel's id is
    /// detached from the device then).
    pub fn queue(self: &Arc<Self>, st: &IdState, ev: Box<EventBox>) {
        if st.removed {
            debug!(
                "cm_id {:p}: device removed; dropping event {}",
                self.c_ptr(),
                ev.ev.event
            );
            return;
        }
        st.channel.push(ev);
    }

    /// Execute state machine outputs. Holds `st`.
    pub fn run(self: &Arc<Self>, st: &mut IdState, outs: Vec<Output>) {
        for o in outs {
            match o {
                Output::Send(m) => {
                    if let Some(c) = &st.conn {
                        send_msg(c.fd.as_raw_fd(), &m, self.c_ptr());
                    }
                }
                Output::QpToError => {
                    let qp = self.qp(st);
                    if !qp.is_null() && qp_still_exists(st.qpn) {
                        qp_to_error(qp);
                    }
                }
                Output::Close => {
                    if let Some(c) = st.conn.as_ref() {
                        runtime().deregister(c.key, c.fd.as_raw_fd());
                        // SAFETY: shutting down our own socket; the fd stays open until
                        // the ConnIo drops.
                        unsafe { libc::shutdown(c.fd.as_raw_fd(), libc::SHUT_RDWR) };
                    }
                }
                Output::Event(e) => {
                    if st.destroyed {
                        continue;
                    }
                    let disconnected = e == Event::Disconnected;
                    let ev = self.make_event(st, e);
                    self.queue(st, ev);
                    if disconnected {
                        schedule_timewait_exit(self);
                    }
                }
            }
        }
    }

    fn make_event(self: &Arc<Self>, st: &mut IdState, e: Event) -> Box<EventBox> {
        match e {
            Event::ConnectResponse(rep) => {
                let mut ev = EventBox::new(self, RDMA_CM_EVENT_CONNECT_RESPONSE, 0);
                fill_conn_param(
                    &mut ev.ev,
                    rep.initiator_depth,
                    rep.responder_resources,
                    &rep,
                );
                ev.set_private_data(&rep.private_data, proto::REP_PRIVATE_DATA);
                ev.pending = Pending::ConnectResponse;
                ev
            }
            Event::Established => {
                let mut ev = EventBox::new(self, RDMA_CM_EVENT_ESTABLISHED, 0);
                ev.ev.param.conn.responder_resources = st.responder_resources;
                ev.ev.param.conn.initiator_depth = st.initiator_depth;
                ev.ev.param.conn.qp_num = st.remote.map_or(0, |r| r.qpn);
                ev
            }
            Event::Rejected {
                reason,
                private_data,
            } => {
                let mut ev = EventBox::new(self, RDMA_CM_EVENT_REJECTED, c_int::from(reason));
                if reason == proto::REJ_CONSUMER {
                    ev.set_private_data(&private_data, proto::REJ_PRIVATE_DATA);
                }
                ev
            }
            Event::Disconnected => EventBox::new(self, RDMA_CM_EVENT_DISCONNECTED, 0),
            Event::ConnectError => {
                EventBox::new(self, RDMA_CM_EVENT_CONNECT_ERROR, -libc::ECONNRESET)
            }
            Event::Unreachable => EventBox::new(self, RDMA_CM_EVENT_UNREACHABLE, -libc::ETIMEDOUT),
        }
    }
}

impl Drop for IdBox {
    fn drop(&mut self) {
        debug!("free cm_id {:p}", self.c.get());
        count(Counter::CmIds, -1);
    }
}

/// Fill the conn params of an event from a peer message (already swapped by the caller).
pub fn fill_conn_param(ev: &mut rdma_cm_event, resp_res: u8, init_depth: u8, rep: &Rep) {
    ev.param.conn.responder_resources = resp_res;
    ev.param.conn.initiator_depth = init_depth;
    ev.param.conn.flow_control = rep.flow_control;
    ev.param.conn.rnr_retry_count = rep.rnr_retry_count;
    ev.param.conn.srq = u8::from(rep.srq);
    ev.param.conn.qp_num = rep.qpn;
}

/// Convert a C id pointer into a reference valid while the application keeps the id.
///
/// # Safety
/// `p` must come from [`IdBox::c_ptr`] of an id the application has not destroyed.
pub unsafe fn id_ref<'a>(p: *mut rdma_cm_id) -> &'a IdBox {
    // SAFETY: per the contract, the IdBox (whose first field is the C struct) is alive.
    unsafe { &*(p as *const IdBox) }
}

/// A new strong reference from a C id pointer.
///
/// # Safety
/// As for [`id_ref`].
pub unsafe fn id_arc(p: *mut rdma_cm_id) -> Arc<IdBox> {
    let p = p as *const IdBox;
    // SAFETY: per the contract, p is the data pointer of a live Arc<IdBox>.
    unsafe {
        Arc::increment_strong_count(p);
        Arc::from_raw(p)
    }
}

/// Does the QP librdmacm created for an id still exist? Applications may free it with plain
/// `ibv_destroy_qp` before destroying the id (rping does); librdmacm must then not touch it.
/// Answered by softrdma's libibverbs; without it, assume yes.
pub fn qp_still_exists(qpn: u32) -> bool {
    match ffi::private() {
        Some(p) => {
            // SAFETY: vtable function taking a plain integer.
            let alive = unsafe { (p.qp_alive)(qpn) };
            alive != 0
        }
        None => true,
    }
}

/// Move a QP to ERR (errors are logged; a NULL QP is ignored).
pub fn qp_to_error(qp: *mut ibv_qp) {
    if qp.is_null() {
        return;
    }
    // SAFETY: zero is valid for ibv_qp_attr.
    let mut a: ibv_qp_attr = unsafe { zeroed() };
    a.qp_state = IBV_QPS_ERR;
    // SAFETY: qp is the application's live QP attached to the id.
    let r = unsafe { ffi::ibv_modify_qp(qp, &mut a, IBV_QP_STATE as c_int) };
    // SAFETY: reading qp_num of a live QP.
    let qpn = unsafe { (*qp).qp_num };
    if r != 0 {
        log(&format!("QP {qpn:#x}: move to ERR failed: errno {r}"));
    } else {
        debug!("QP {qpn:#x} moved to ERR");
    }
}

/// Send one CM message (non-blocking; failures are logged: the peer is gone or stuck).
pub fn send_msg(fd: RawFd, m: &Msg, id: *mut rdma_cm_id) {
    let b = m.encode();
    // SAFETY: sending a valid buffer on our socket.
    let n = unsafe {
        libc::send(
            fd,
            b.as_ptr().cast(),
            b.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        debug!(
            "cm_id {id:p}: send {:?} failed: errno {}",
            std::mem::discriminant(m),
            ffi::errno()
        );
    }
}

/// Set O_NONBLOCK.
pub fn set_nonblock(fd: RawFd) {
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

/// 32 random bits.
pub fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: filling a valid 4-byte buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 4, 0) };
    if n != 4 {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        return t ^ std::process::id().rotate_left(16);
    }
    u32::from_ne_bytes(b)
}

// ------------------------------------------------------------------------------------------
// Abstract UNIX sockets

/// Build an abstract `sockaddr_un` for `name`.
fn unix_addr(name: &str) -> (libc::sockaddr_un, libc::socklen_t) {
    // SAFETY: zero is valid for sockaddr_un.
    let mut a: libc::sockaddr_un = unsafe { zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = name.as_bytes();
    let n = bytes.len().min(a.sun_path.len() - 1);
    for (i, b) in bytes[..n].iter().enumerate() {
        a.sun_path[i + 1] = *b as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + 1 + n;
    (a, len as libc::socklen_t)
}

fn seqpacket_socket() -> Result<OwnedFd, c_int> {
    // SAFETY: plain socket creation.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(ffi::errno());
    }
    // SAFETY: fd was just created and is owned by us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Bind a new SEQPACKET socket to an abstract name.
pub fn bind_name(name: &str) -> Result<OwnedFd, c_int> {
    let s = seqpacket_socket()?;
    let (a, len) = unix_addr(name);
    // SAFETY: valid sockaddr_un and length.
    let r = unsafe { libc::bind(s.as_raw_fd(), (&a as *const libc::sockaddr_un).cast(), len) };
    if r != 0 {
        return Err(ffi::errno());
    }
    Ok(s)
}

/// Connect a new SEQPACKET socket to an abstract name (bounded wait if the backlog is full).
pub fn connect_name(name: &str) -> Result<OwnedFd, c_int> {
    let s = seqpacket_socket()?;
    let tv = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    // SAFETY: valid option buffer.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    let (a, len) = unix_addr(name);
    // SAFETY: valid sockaddr_un and length.
    let r = unsafe { libc::connect(s.as_raw_fd(), (&a as *const libc::sockaddr_un).cast(), len) };
    if r != 0 {
        return Err(ffi::errno());
    }
    set_nonblock(s.as_raw_fd());
    Ok(s)
}

/// Names of all bound abstract sockets (for wildcard conflict checks).
pub fn proc_net_unix() -> String {
    std::fs::read_to_string("/proc/net/unix").unwrap_or_default()
}

/// Reserve `ip:port` in `ps` (port 0: pick an ephemeral one). Returns the socket and port.
pub fn reserve(
    ps: u32,
    ip: std::net::IpAddr,
    port: u16,
    reuse: bool,
) -> Result<(OwnedFd, u16), c_int> {
    let ns = namespace();
    let try_port = |p: u16| -> Result<OwnedFd, c_int> {
        if !reuse {
            let existing = addr::reservations_in(&proc_net_unix(), ns, ps, p);
            if existing.iter().any(|o| addr::conflicts(&ip, o)) {
                return Err(libc::EADDRINUSE);
            }
        }
        let name = addr::socket_name(ns, NameKind::Bind, ps, &SocketAddr::new(ip, p));
        bind_name(&name)
    };
    if port != 0 {
        return try_port(port).map(|fd| (fd, port));
    }
    let (lo, hi) = (32768u32, 60999u32);
    let start = lo + random_u32() % (hi - lo + 1);
    for i in 0..(hi - lo + 1) {
        let p = (lo + (start - lo + i) % (hi - lo + 1)) as u16;
        match try_port(p) {
            Ok(fd) => return Ok((fd, p)),
            Err(libc::EADDRINUSE) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(libc::EADDRINUSE)
}

/// The socket-name namespace of this process (effective uid, fabric directory).
pub fn namespace() -> &'static str {
    static NS: OnceLock<String> = OnceLock::new();
    NS.get_or_init(|| {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        let dir = std::env::var("SOFTRDMA_SHM_DIR").ok();
        addr::namespace(euid, dir.as_deref())
    })
}

// ------------------------------------------------------------------------------------------
// The event thread

/// What an epoll key refers to.
#[derive(Clone)]
enum Handler {
    Listen(Arc<IdBox>, Arc<OwnedFd>),
    PendingReq(Arc<IdBox>, Arc<OwnedFd>),
    Conn(Arc<IdBox>, Arc<OwnedFd>),
}

/// The per-process CM runtime.
pub struct Runtime {
    epfd: OwnedFd,
    handlers: Mutex<(u64, HashMap<u64, Handler>)>,
    pid: u32,
}

/// The runtime of this process (re-created in a forked child).
pub fn runtime() -> Arc<Runtime> {
    match try_runtime() {
        Ok(rt) => rt,
        // Every entry point that creates CM state calls try_runtime first and fails cleanly,
        // so this is reached only if the process ran out of fds/threads in between.
        Err(e) => {
            log(&format!(
                "cannot start the CM event thread (errno {e}); aborting"
            ));
            std::process::abort()
        }
    }
}

/// The runtime of this process, started on first use (and again in a forked child, whose
/// parent's event thread does not exist). Fails with an errno if epoll or the thread cannot
/// be created.
pub fn try_runtime() -> Result<Arc<Runtime>, c_int> {
    static RT: Mutex<Option<Arc<Runtime>>> = Mutex::new(None);
    let mut g = lock(&RT);
    let pid = std::process::id();
    if let Some(rt) = g.as_ref() {
        if rt.pid == pid {
            return Ok(rt.clone());
        }
        // Forked child: leak the parent's state (its thread is gone; its fds are shared).
        if let Some(old) = g.take() {
            std::mem::forget(old);
        }
    }
    // SAFETY: plain epoll creation.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        let e = ffi::errno();
        log(&format!("epoll_create1 failed: errno {e}"));
        return Err(e);
    }
    // SAFETY: ep is a fresh fd we own.
    let epfd = unsafe { OwnedFd::from_raw_fd(ep) };
    let rt = Arc::new(Runtime {
        epfd,
        handlers: Mutex::new((1, HashMap::new())),
        pid,
    });
    let rt2 = rt.clone();
    if let Err(e) = std::thread::Builder::new()
        .name("softrdma-cm".into())
        .spawn(move || rt2.event_loop())
    {
        log(&format!("cannot spawn the CM event thread: {e}"));
        return Err(e.raw_os_error().unwrap_or(libc::EAGAIN));
    }
    install_fault_handler();
    *g = Some(rt.clone());
    Ok(rt)
}

impl Runtime {
    fn register(&self, fd: RawFd, h: Handler) -> u64 {
        let key = {
            let mut g = lock(&self.handlers);
            let k = g.0;
            g.0 += 1;
            g.1.insert(k, h);
            k
        };
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: key,
        };
        // SAFETY: valid epoll fd, fd and event struct.
        let r = unsafe { libc::epoll_ctl(self.epfd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if r != 0 {
            log(&format!(
                "epoll_ctl ADD fd {fd} failed: errno {}",
                ffi::errno()
            ));
        }
        key
    }

    /// Forget a key and stop watching its fd.
    pub fn deregister(&self, key: u64, fd: RawFd) {
        let removed = lock(&self.handlers).1.remove(&key);
        if removed.is_some() {
            // SAFETY: valid epoll fd; fd is still open (owned by the caller's Arc).
            unsafe {
                libc::epoll_ctl(
                    self.epfd.as_raw_fd(),
                    libc::EPOLL_CTL_DEL,
                    fd,
                    std::ptr::null_mut(),
                )
            };
        }
    }

    fn replace(&self, key: u64, h: Handler) {
        lock(&self.handlers).1.insert(key, h);
    }

    /// Register a listening id.
    pub fn add_listener(&self, id: &Arc<IdBox>, fd: Arc<OwnedFd>) -> u64 {
        self.register(fd.as_raw_fd(), Handler::Listen(id.clone(), fd.clone()))
    }

    /// Register a connection id.
    pub fn add_conn(&self, id: &Arc<IdBox>, fd: Arc<OwnedFd>) -> u64 {
        self.register(fd.as_raw_fd(), Handler::Conn(id.clone(), fd.clone()))
    }

    /// Every id with a listening socket, a connection, or a REQ being received, once each.
    fn ids(&self) -> Vec<Arc<IdBox>> {
        let mut v: Vec<Arc<IdBox>> = Vec::new();
        for h in lock(&self.handlers).1.values() {
            let (Handler::Listen(id, _) | Handler::PendingReq(id, _) | Handler::Conn(id, _)) = h;
            if !v.iter().any(|x| Arc::ptr_eq(x, id)) {
                v.push(id.clone());
            }
        }
        v
    }

    /// All connection handlers (fault injection).
    fn conns(&self) -> Vec<Arc<IdBox>> {
        lock(&self.handlers)
            .1
            .values()
            .filter_map(|h| match h {
                Handler::Conn(id, _) => Some(id.clone()),
                _ => None,
            })
            .collect()
    }

    fn event_loop(self: Arc<Self>) {
        // SAFETY: zero is valid for epoll_event.
        let mut evs: [libc::epoll_event; 32] = unsafe { zeroed() };
        loop {
            // SAFETY: valid epoll fd and output array.
            let n = unsafe { libc::epoll_wait(self.epfd.as_raw_fd(), evs.as_mut_ptr(), 32, -1) };
            if n < 0 {
                if ffi::errno() == libc::EINTR {
                    continue;
                }
                log(&format!(
                    "epoll_wait failed: errno {}; CM event thread exits",
                    ffi::errno()
                ));
                return;
            }
            for e in &evs[..n as usize] {
                let key = e.u64;
                let h = lock(&self.handlers).1.get(&key).cloned();
                match h {
                    None => {}
                    Some(Handler::Listen(id, fd)) => self.on_listen(&id, &fd),
                    Some(Handler::PendingReq(listener, fd)) => self.on_pending(key, &listener, &fd),
                    Some(Handler::Conn(id, fd)) => on_conn(key, &id, &fd),
                }
            }
        }
    }

    fn on_listen(&self, id: &Arc<IdBox>, fd: &Arc<OwnedFd>) {
        loop {
            // SAFETY: accept on our listening socket; NULL address buffers are allowed.
            let c = unsafe {
                libc::accept4(
                    fd.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                )
            };
            if c < 0 {
                let e = ffi::errno();
                if e != libc::EAGAIN && e != libc::EINTR {
                    debug!("cm_id {:p}: accept failed: errno {e}", id.c_ptr());
                }
                if e == libc::EINTR {
                    continue;
                }
                return;
            }
            // SAFETY: c is a fresh fd we own.
            let cfd = Arc::new(unsafe { OwnedFd::from_raw_fd(c) });
            self.register(c, Handler::PendingReq(id.clone(), cfd.clone()));
        }
    }

    fn on_pending(&self, key: u64, listener: &Arc<IdBox>, fd: &Arc<OwnedFd>) {
        let msg = match recv_msg(fd.as_raw_fd()) {
            RecvResult::Again => return,
            RecvResult::Eof => {
                self.deregister(key, fd.as_raw_fd());
                return;
            }
            RecvResult::Msg(m) => m,
            RecvResult::Bad(e) => {
                log(&format!(
                    "listener {:p}: bad CM message: {e}",
                    listener.c_ptr()
                ));
                self.deregister(key, fd.as_raw_fd());
                return;
            }
        };
        let Msg::Req(req) = msg else {
            log(&format!(
                "listener {:p}: expected REQ, got {msg:?}; dropping connection",
                listener.c_ptr()
            ));
            self.deregister(key, fd.as_raw_fd());
            return;
        };
        let mut lst = lock(&listener.st);
        if lst.listen.is_none() {
            drop(lst);
            self.deregister(key, fd.as_raw_fd());
            return;
        }
        // An IPv6 wildcard listener with RDMA_OPTION_ID_AFONLY does not take IPv4 peers; a
        // listener whose device was removed takes none (nothing listens there any more).
        let v6_only = lst.opts.afonly
            && lst
                .local
                .is_some_and(|a| a.is_ipv6() && a.ip().is_unspecified());
        let why = if lst.removed {
            Some("device removed")
        } else if v6_only && (req.dst.is_ipv4() || addr::is_v4_mapped(&req.dst)) {
            Some("AFONLY, IPv4 peer")
        } else {
            None
        };
        if let Some(why) = why {
            debug!(
                "listener {:p}: {why}; refusing REQ from {}",
                listener.c_ptr(),
                req.src
            );
            send_msg(
                fd.as_raw_fd(),
                &Msg::Rej {
                    reason: proto::REJ_INVALID_SERVICE_ID,
                    private_data: Vec::new(),
                },
                listener.c_ptr(),
            );
            drop(lst);
            self.deregister(key, fd.as_raw_fd());
            return;
        }
        let Some(l) = lst.listen.as_mut() else {
            drop(lst);
            self.deregister(key, fd.as_raw_fd());
            return;
        };
        if l.pending >= l.backlog {
            log(&format!(
                "listener {:p}: backlog {} full; rejecting REQ from {} (QPN {:#x})",
                listener.c_ptr(),
                l.backlog,
                req.src,
                req.qpn
            ));
            send_msg(
                fd.as_raw_fd(),
                &Msg::Rej {
                    reason: proto::REJ_TIMEOUT,
                    private_data: Vec::new(),
                },
                listener.c_ptr(),
            );
            drop(lst);
            self.deregister(key, fd.as_raw_fd());
            return;
        }
        l.pending += 1;
        // New id: inherits the listener's context, ps and qp_type.
        // SAFETY: reading fields of the listener's C struct while holding its st.
        let (context, ps, qp_type) = unsafe {
            let c = &*listener.c_ptr();
            (c.context, c.ps, c.qp_type)
        };
        let (channel, sync) = if lst.sync {
            match Channel::new() {
                Ok(c) => (c, true),
                Err(_) => (lst.channel.clone(), false),
            }
        } else {
            (lst.channel.clone(), false)
        };
        let nid = IdBox::new(channel, sync, context, ps, qp_type);
        // The application's reference, released by rdma_destroy_id.
        let _ = Arc::into_raw(nid.clone());
        let mut nst = lock(&nid.st);
        if let Ok(dev) = device_for(&req.dst.ip()) {
            nid.attach_device(&mut nst, dev);
        }
        let src = lst.local.map_or(
            req.dst,
            |l| {
                if l.ip().is_unspecified() {
                    req.dst
                } else {
                    l
                }
            },
        );
        nid.set_src(&mut nst, src);
        nid.set_dst(&mut nst, req.src);
        // SAFETY: nst is held.
        unsafe { nid.c_mut() }.route.addr.addr.ibaddr.dgid.raw = nst.dev.map_or([0; 16], |d| d.gid);
        // Kernel semantics: the passive side's view is swapped.
        nst.responder_resources = req.initiator_depth;
        nst.initiator_depth = req.responder_resources;
        nst.retry_count = req.retry_count;
        nst.rnr_retry_count = req.rnr_retry_count;
        nst.remote = Some(Remote {
            qpn: req.qpn,
            psn: req.psn,
            lid: req.lid,
        });
        nst.ep_qp_attr = None;
        nst.conn = Some(ConnIo {
            fd: fd.clone(),
            key,
            machine: Conn::passive(),
        });
        self.replace(key, Handler::Conn(nid.clone(), fd.clone()));
        let mut ev = EventBox::new(&nid, RDMA_CM_EVENT_CONNECT_REQUEST, 0);
        ev.ev.listen_id = listener.c_ptr();
        ev.listen = Some(listener.clone());
        let as_rep = Rep {
            qpn: req.qpn,
            psn: req.psn,
            lid: req.lid,
            srq: req.srq,
            responder_resources: req.responder_resources,
            initiator_depth: req.initiator_depth,
            flow_control: req.flow_control,
            rnr_retry_count: req.rnr_retry_count,
            private_data: Vec::new(),
        };
        fill_conn_param(
            &mut ev.ev,
            req.initiator_depth,
            req.responder_resources,
            &as_rep,
        );
        ev.ev.param.conn.retry_count = req.retry_count;
        ev.set_private_data(&req.private_data, proto::REQ_PRIVATE_DATA);
        debug!(
            "listener {:p}: REQ from {} QPN {:#x} -> new cm_id {:p}",
            listener.c_ptr(),
            req.src,
            req.qpn,
            nid.c_ptr()
        );
        drop(nst);
        // CONNECT_REQUEST is reported on the listener's channel.
        lst.channel.push(ev);
        drop(lst);
        // Data that raced in behind the REQ (e.g. an immediate REJ) is handled now.
        on_conn(key, &nid, fd);
    }
}

enum RecvResult {
    Msg(Msg),
    Again,
    Eof,
    Bad(proto::ProtoError),
}

fn recv_msg(fd: RawFd) -> RecvResult {
    let mut buf = [0u8; 512];
    loop {
        // SAFETY: receiving into a valid buffer from our socket.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n < 0 {
            let e = ffi::errno();
            if e == libc::EINTR {
                continue;
            }
            if e == libc::EAGAIN {
                return RecvResult::Again;
            }
            return RecvResult::Eof;
        }
        if n == 0 {
            return RecvResult::Eof;
        }
        return match Msg::decode(&buf[..n as usize]) {
            Ok(m) => RecvResult::Msg(m),
            Err(e) => RecvResult::Bad(e),
        };
    }
}

fn on_conn(key: u64, id: &Arc<IdBox>, fd: &Arc<OwnedFd>) {
    loop {
        let r = recv_msg(fd.as_raw_fd());
        let mut st = lock(&id.st);
        let same = st.conn.as_ref().is_some_and(|c| c.key == key);
        if !same {
            drop(st);
            runtime().deregister(key, fd.as_raw_fd());
            return;
        }
        let outs = match r {
            RecvResult::Again => return,
            RecvResult::Eof => {
                let qpn = qpn_of(id, &st);
                let c = st.conn.as_mut().expect("checked above");
                debug!(
                    "cm_id {:p} (QPN {qpn:#x}): connection EOF in state {:?}",
                    id.c_ptr(),
                    c.machine.state()
                );
                c.machine.on_eof()
            }
            RecvResult::Bad(e) => {
                log(&format!(
                    "cm_id {:p}: bad CM message: {e}; dropping",
                    id.c_ptr()
                ));
                st.conn.as_mut().expect("checked above").machine.on_eof()
            }
            RecvResult::Msg(m) => {
                if let Msg::Rep(rep) = &m {
                    // Active side learns the peer and the negotiated values (swapped).
                    st.remote = Some(Remote {
                        qpn: rep.qpn,
                        psn: rep.psn,
                        lid: rep.lid,
                    });
                    st.responder_resources = rep.initiator_depth;
                    st.initiator_depth = rep.responder_resources;
                    st.rnr_retry_count = rep.rnr_retry_count;
                }
                let c = st.conn.as_mut().expect("checked above");
                match c.machine.on_msg(m) {
                    Ok(o) => o,
                    Err(e) => {
                        log(&format!("cm_id {:p}: {e}; ignored", id.c_ptr()));
                        continue;
                    }
                }
            }
        };
        let closing = outs.iter().any(|o| matches!(o, Output::Close));
        let established = outs
            .iter()
            .any(|o| matches!(o, Output::Event(Event::Established)));
        id.run(&mut st, outs);
        drop(st);
        if established {
            // Fault kind f: a scheduled CM drop fires once the connection is established.
            maybe_fault(id);
        }
        if closing {
            return;
        }
    }
}

/// Local QPN of an id (0 without a QP).
pub fn qpn_of(_id: &IdBox, st: &IdState) -> u32 {
    // Recorded by rdma_create_qp: the application may destroy the QP behind our back with
    // ibv_destroy_qp (rping does), so the ibv_qp is not dereferenced here.
    st.qpn
}

/// Drop the CM connection of `id` as if the peer had vanished (fault kind f).
pub fn drop_connection(id: &Arc<IdBox>, why: &str) {
    let mut st = lock(&id.st);
    let qpn = qpn_of(id, &st);
    let Some(c) = st.conn.as_mut() else {
        return;
    };
    if c.machine.state() == crate::conn::State::Closed {
        return;
    }
    log(&format!(
        "fault: dropping CM connection of cm_id {:p} (QPN {qpn:#x}, state {:?}): {why}",
        id.c_ptr(),
        c.machine.state()
    ));
    let outs = c.machine.on_vanish();
    id.run(&mut st, outs);
}

/// Ask libibverbs whether a scheduled CM-drop fault fires now for this id; drop if so.
pub fn maybe_fault(id: &Arc<IdBox>) -> bool {
    let qpn = {
        let st = lock(&id.st);
        qpn_of(id, &st)
    };
    let Some(p) = ffi::private() else {
        return false;
    };
    // SAFETY: vtable function.
    if unsafe { (p.cm_should_drop)(qpn) } != 0 {
        // libibverbs already counted and logged the fault (kind=cmdrop).
        drop_connection(id, "scheduled cmdrop rule");
        true
    } else {
        false
    }
}

unsafe extern "C" fn fault_handler(_arg: *mut std::ffi::c_void, qpn: u32) {
    let rt = runtime();
    for id in rt.conns() {
        let this = {
            let st = lock(&id.st);
            qpn_of(&id, &st)
        };
        if qpn == 0 || this == qpn {
            // libibverbs counted and logged the fault before calling us.
            drop_connection(&id, "cmdrop requested through libibverbs");
        }
    }
}

/// libibverbs removed the device whose shared context is `ctx`: every id bound to it gets
/// RDMA_CM_EVENT_DEVICE_REMOVAL (once, and nothing after it) and the device leaves the list.
unsafe extern "C" fn device_removed(_arg: *mut std::ffi::c_void, ctx: *mut ibv_context) {
    let Some(dev) = remove_device(ctx) else {
        return;
    };
    dev.removed();
    let mut n = 0;
    for id in runtime().ids() {
        let mut st = lock(&id.st);
        if st.destroyed || st.removed || !st.dev.is_some_and(|d| std::ptr::eq(d, dev)) {
            continue;
        }
        let ev = EventBox::new(&id, RDMA_CM_EVENT_DEVICE_REMOVAL, 0);
        id.queue(&st, ev);
        st.removed = true;
        n += 1;
    }
    debug!("device context {ctx:p} removed: DEVICE_REMOVAL on {n} cm ids");
}

/// The control command `addr_change` (through libibverbs): every listening id not destroyed
/// or removed gets RDMA_CM_EVENT_ADDR_CHANGE, as when the address under it changes. Returns
/// how many got it.
unsafe extern "C" fn addr_changed(_arg: *mut std::ffi::c_void) -> c_int {
    let mut n = 0;
    for id in runtime().ids() {
        let st = lock(&id.st);
        if st.destroyed || st.removed || st.listen.is_none() {
            continue;
        }
        let ev = EventBox::new(&id, RDMA_CM_EVENT_ADDR_CHANGE, 0);
        id.queue(&st, ev);
        n += 1;
    }
    debug!("addr_change: ADDR_CHANGE on {n} listening cm ids");
    n
}

fn install_fault_handler() {
    if let Some(p) = ffi::private() {
        // SAFETY: vtable functions; the handlers are static functions valid forever.
        unsafe {
            (p.set_cm_drop_handler)(Some(fault_handler), std::ptr::null_mut());
            (p.set_device_handler)(Some(device_removed), std::ptr::null_mut());
            (p.set_addr_change_handler)(Some(addr_changed), std::ptr::null_mut());
        }
    }
}

// ------------------------------------------------------------------------------------------
// Timewait

/// How long a disconnected id stays in timewait before RDMA_CM_EVENT_TIMEWAIT_EXIT
/// (`SOFTRDMA_CM_TIMEWAIT_MS`, default 1000; 0 disables the event).
pub fn timewait_ms() -> u64 {
    static MS: OnceLock<u64> = OnceLock::new();
    *MS.get_or_init(|| {
        std::env::var("SOFTRDMA_CM_TIMEWAIT_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000)
    })
}

type TimewaitTx = std::sync::mpsc::Sender<(std::time::Instant, std::sync::Weak<IdBox>)>;

/// Queue TIMEWAIT_EXIT for `id` after the timewait, unless it is destroyed first (as in the
/// kernel, where the IB CM reports the end of timewait only to ids that still exist).
fn schedule_timewait_exit(id: &Arc<IdBox>) {
    let ms = timewait_ms();
    if ms == 0 {
        return;
    }
    static TX: Mutex<Option<(u32, TimewaitTx)>> = Mutex::new(None);
    let mut g = lock(&TX);
    let pid = std::process::id();
    if g.as_ref().is_none_or(|(p, _)| *p != pid) {
        let (tx, rx) = std::sync::mpsc::channel::<(std::time::Instant, std::sync::Weak<IdBox>)>();
        let spawned = std::thread::Builder::new()
            .name("softrdma-cm-tw".into())
            .spawn(move || timewait_thread(rx));
        if spawned.is_err() {
            log("cannot start the timewait thread; TIMEWAIT_EXIT disabled");
            return;
        }
        *g = Some((pid, tx));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(ms);
    if let Some((_, tx)) = g.as_ref() {
        let _ = tx.send((deadline, Arc::downgrade(id)));
    }
}

fn timewait_thread(rx: std::sync::mpsc::Receiver<(std::time::Instant, std::sync::Weak<IdBox>)>) {
    // Deadlines arrive in order (constant delay), so a FIFO suffices.
    let mut q: VecDeque<(std::time::Instant, std::sync::Weak<IdBox>)> = VecDeque::new();
    loop {
        let next = match q.front() {
            Some((d, _)) => {
                let now = std::time::Instant::now();
                if *d <= now {
                    let (_, w) = q.pop_front().expect("front exists");
                    if let Some(id) = w.upgrade() {
                        let st = lock(&id.st);
                        if !st.destroyed {
                            let ev = EventBox::new(&id, RDMA_CM_EVENT_TIMEWAIT_EXIT, 0);
                            id.queue(&st, ev);
                        }
                    }
                    continue;
                }
                rx.recv_timeout(*d - now)
            }
            None => rx
                .recv()
                .map_err(|_| std::sync::mpsc::RecvTimeoutError::Disconnected),
        };
        match next {
            Ok(item) => q.push_back(item),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}
