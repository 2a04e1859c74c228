//! The transport object SPDK holds: the thread-free transport core plus what
//! SPDK needs around it — the poll groups by index (with their SPDK threads,
//! for the acceptor's messages), the listeners' trids, one memory map per
//! device, and the acceptor poller.

use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use super::api::api;
use super::group::{Deferred, RsPollGroup};
use super::guard::guard;
use super::interrupt::{self, Interrupts, Timer, TIMER_US};
use super::memmap::DeviceMemMap;
use super::qpair::RsQpair;
use super::sys;
use crate::transport::{AcceptorEvent, DeviceEvent, Transport, TransportOptions};
use crate::verbs::Pd;

const TRANSPORT_MAGIC: u64 = 0x5244_4d41_5f52_5354; // "RDMA_RST"

/// A live poll group: its core index, the object and its SPDK thread.
#[derive(Clone, Copy)]
struct GroupEntry {
    index: u16,
    group: *mut RsPollGroup,
    thread: *mut sys::spdk_thread,
}

/// The poll groups by core index (read by the acceptor on its thread, changed
/// by the groups on theirs).
#[derive(Default)]
pub(crate) struct GroupTable(Mutex<Vec<GroupEntry>>);

// SAFETY: the pointers are only dereferenced on the group's own thread (the
// table is used to find where to send a message and, on arrival, to check the
// group is still the same live one).
unsafe impl Send for GroupTable {}
// SAFETY: see Send; the Vec is behind a mutex.
unsafe impl Sync for GroupTable {}

impl GroupTable {
    fn lock(&self) -> MutexGuard<'_, Vec<GroupEntry>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a new group.
    pub(crate) fn add(&self, index: u16, group: *mut RsPollGroup, thread: *mut sys::spdk_thread) {
        self.lock().push(GroupEntry {
            index,
            group,
            thread,
        });
    }

    /// Removes a group that is being destroyed.
    pub(crate) fn remove(&self, index: u16) {
        self.lock().retain(|e| e.index != index);
    }

    fn get(&self, index: u16) -> Option<GroupEntry> {
        self.lock().iter().find(|e| e.index == index).copied()
    }

    fn all(&self) -> Vec<GroupEntry> {
        self.lock().clone()
    }

    /// Whether `group` is still the live group `index`.
    fn is_live(&self, index: u16, group: *mut RsPollGroup) -> bool {
        self.lock()
            .iter()
            .any(|e| e.index == index && e.group == group)
    }
}

/// Our transport; SPDK sees `&base`.
#[repr(C)]
pub(crate) struct RsTransport {
    base: sys::spdk_nvmf_transport,
    magic: u64,
    /// The options as validated by `create`.
    pub(crate) options: TransportOptions,
    core: Transport,
    /// Live poll groups (shared with messages in flight).
    pub(crate) groups: Arc<GroupTable>,
    /// Each listener's address and SPDK's trid for it.
    listeners: Mutex<Vec<(SocketAddr, sys::spdk_nvme_transport_id)>>,
    /// One memory map per device, made when the first group attaches it.
    maps: Mutex<Vec<Option<Box<DeviceMemMap>>>>,
    /// Polling mode: the acceptor poller (`acceptor_poll_rate`).
    acceptor: *mut sys::spdk_poller,
    /// Interrupt mode: the acceptor's CM and async fds (registered again
    /// when a device is removed or opened; app thread only).
    acceptor_intr: RefCell<Option<Interrupts>>,
    /// The core's `acceptor_fds_generation` `acceptor_intr` was made for.
    acceptor_fds_generation: Cell<u64>,
    /// Interrupt mode: the acceptor's timer, registered only while
    /// [`Transport::acceptor_needs_timer`] (upstream registers no acceptor
    /// poller in interrupt mode).
    acceptor_timer: Option<Timer>,
}

impl RsTransport {
    /// A new transport on the heap, as the pointer SPDK keeps, with its
    /// acceptor poller registered on the calling (SPDK app) thread.
    pub(crate) fn into_raw(
        options: TransportOptions,
        core: Transport,
    ) -> *mut sys::spdk_nvmf_transport {
        let rate = u64::from(options.acceptor_poll_rate);
        let t = Box::into_raw(Box::new(RsTransport {
            base: Default::default(),
            magic: TRANSPORT_MAGIC,
            options,
            core,
            groups: Arc::default(),
            listeners: Mutex::new(Vec::new()),
            maps: Mutex::new(Vec::new()),
            acceptor: std::ptr::null_mut(),
            acceptor_intr: RefCell::new(None),
            acceptor_fds_generation: Cell::new(0),
            acceptor_timer: None,
        }));
        // SAFETY: just allocated, not yet shared.
        let tr = unsafe { &mut *t };
        if interrupt::enabled() {
            // `t` lives until `free`, which drops these first.
            tr.acceptor_fds_generation
                .set(tr.core.acceptor_fds_generation());
            let fds = tr.core.acceptor_fds();
            *tr.acceptor_intr.get_mut() = Some(register_acceptor_fds(&fds, t.cast()));
            tr.acceptor_timer = Some(Timer::new(acceptor_poll, t.cast(), TIMER_US, ACCEPTOR_NAME));
        } else if let Some(api) = api() {
            // SAFETY: `t` lives until `free`, which unregisters the poller
            // first; the name is a static C string.
            tr.acceptor = unsafe {
                api.spdk_poller_register_named(
                    Some(acceptor_poll),
                    t.cast(),
                    rate,
                    ACCEPTOR_NAME.as_ptr(),
                )
            };
        }
        t.cast()
    }

    /// The transport behind SPDK's pointer, or `None` when it is not ours.
    ///
    /// # Safety
    /// `p` must be NULL or a transport SPDK handed to one of our ops, not yet
    /// destroyed.
    pub(crate) unsafe fn from_raw<'a>(
        p: *mut sys::spdk_nvmf_transport,
    ) -> Option<&'a mut RsTransport> {
        if p.is_null() {
            return None;
        }
        // SAFETY: our transports are `RsTransport`s (base first, repr(C));
        // the magic check catches anything else before it is used.
        let t = unsafe { &mut *p.cast::<RsTransport>() };
        (t.magic == TRANSPORT_MAGIC).then_some(t)
    }

    /// Frees a transport made by [`RsTransport::into_raw`].
    ///
    /// # Safety
    /// `p` must come from [`RsTransport::into_raw`], on the thread that made
    /// it, and not be used again.
    pub(crate) unsafe fn free(p: *mut sys::spdk_nvmf_transport) {
        // SAFETY: the Box pointer `into_raw` leaked (caller's contract).
        let mut t = unsafe { Box::from_raw(p.cast::<RsTransport>()) };
        drop(t.acceptor_intr.get_mut().take());
        drop(t.acceptor_timer.take());
        if let Some(api) = api() {
            // SAFETY: our poller, unregistered on its thread; NULLs it.
            unsafe { api.spdk_poller_unregister(&mut t.acceptor) };
        }
        t.magic = 0;
    }

    /// SPDK's pointer to this transport.
    pub(crate) fn base_ptr(&self) -> *mut sys::spdk_nvmf_transport {
        (&self.base as *const sys::spdk_nvmf_transport).cast_mut()
    }

    /// The transport core.
    pub(crate) fn core(&self) -> &Transport {
        &self.core
    }

    /// The memory map of `device` (made on first use, registering every
    /// region SPDK has on `pd`).
    pub(crate) fn mem_map(&self, device: usize, pd: &Pd) -> Option<*const DeviceMemMap> {
        let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        if maps.len() <= device {
            maps.resize_with(device + 1, || None);
        }
        if maps[device].is_none() {
            maps[device] = Some(Box::new(DeviceMemMap::new(
                pd,
                &format!("device {device}"),
            )?));
        }
        maps[device].as_deref().map(|m| m as *const DeviceMemMap)
    }

    /// Frees the memory map of a retired device (every group detached it:
    /// nothing translates through it any more).
    fn free_mem_map(&self, device: usize) {
        let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = maps.get_mut(device).and_then(Option::take) {
            drop(m);
            tracing::info!("RDMA_RS: memory map of retired device {device} freed");
        }
    }

    /// Interrupt mode: registers the acceptor's fds again when a device was
    /// removed or opened (its async fd left or joined the set).
    fn refresh_acceptor_interrupts(&self) {
        let generation = self.core.acceptor_fds_generation();
        if generation == self.acceptor_fds_generation.get() {
            return;
        }
        self.acceptor_fds_generation.set(generation);
        let mut intr = self.acceptor_intr.borrow_mut();
        if intr.is_some() {
            drop(intr.take());
            let fds = self.core.acceptor_fds();
            let me: *const RsTransport = self;
            *intr = Some(register_acceptor_fds(&fds, me.cast_mut().cast()));
        }
    }

    /// Starts listening on `addr`, remembering SPDK's trid for it.
    pub(crate) fn listen(
        &self,
        addr: SocketAddr,
        trid: &sys::spdk_nvme_transport_id,
    ) -> Result<(), String> {
        let bound = self.core.listen(addr).map_err(|e| e.to_string())?;
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((bound, *trid));
        Ok(())
    }

    /// Stops listening on `addr`.
    pub(crate) fn stop_listen(&self, addr: SocketAddr) -> bool {
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(a, _)| *a != addr);
        self.core.stop_listen(addr)
    }

    fn listen_trid(&self, addr: SocketAddr) -> sys::spdk_nvme_transport_id {
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(a, _)| *a == addr)
            .map(|(_, t)| *t)
            .unwrap_or_default()
    }

    /// The SPDK poll group object of core group `index`.
    pub(crate) fn group_base(
        &self,
        index: u16,
    ) -> Option<*mut sys::spdk_nvmf_transport_poll_group> {
        self.groups.get(index).map(|e| e.group.cast())
    }
}

/// A CM or async event on its way to a group's thread.
struct GroupMsgCtx {
    groups: Arc<GroupTable>,
    index: u16,
    group: *mut RsPollGroup,
    msg: Deferred,
}

/// Runs on the group's thread: delivers the event if the group still lives.
unsafe extern "C" fn deliver_msg(ctx: *mut c_void) {
    // SAFETY: made by `send_to_group` with Box::into_raw, run once.
    let ctx = unsafe { Box::from_raw(ctx.cast::<GroupMsgCtx>()) };
    guard("group message", (), || {
        if !ctx.groups.is_live(ctx.index, ctx.group) {
            return;
        }
        // SAFETY: live (checked under the table's lock just now) and this is
        // its thread, the only one that destroys it.
        let g = unsafe { &*ctx.group };
        let GroupMsgCtx { msg, .. } = *ctx;
        g.answer(msg);
    })
}

fn send_to_group(groups: &Arc<GroupTable>, e: GroupEntry, msg: Deferred) {
    let Some(api) = api() else { return };
    let ctx = Box::into_raw(Box::new(GroupMsgCtx {
        groups: groups.clone(),
        index: e.index,
        group: e.group,
        msg,
    }));
    // SAFETY: a live SPDK thread (its group is in the table); `ctx` is freed
    // by `deliver_msg`, or here if the message could not be sent.
    let rc = unsafe { api.spdk_thread_send_msg(e.thread, Some(deliver_msg), ctx.cast()) };
    if rc != 0 {
        // SAFETY: not sent: still ours.
        drop(unsafe { Box::from_raw(ctx) });
        tracing::error!("RDMA_RS: event for poll group {} not sent ({rc})", e.index);
    }
}

/// The acceptor poller (upstream `nvmf_rdma_accept`): CM and async events;
/// new connections are announced to SPDK, qpair events sent to their group.
unsafe extern "C" fn acceptor_poll(arg: *mut c_void) -> i32 {
    guard("acceptor", 0, || {
        let Some(api) = api() else { return 0 };
        // SAFETY: the poller's argument is our live transport (unregistered
        // before it is freed), used on the app thread.
        let t = unsafe { &*arg.cast::<RsTransport>() };
        let n = t.core.accept_poll(&mut |ev| match ev {
            AcceptorEvent::NewQpair(p) => {
                let trid = t.listen_trid(p.listen_addr());
                let q = RsQpair::into_raw(t.base_ptr(), p, trid);
                // SAFETY: `tgt` is set by the generic layer when the
                // transport is added to a target; the qpair is ours, owned by
                // SPDK from here until `qpair_fini`.
                unsafe { api.spdk_nvmf_tgt_new_qpair(t.base.tgt, &mut (*q).base) };
            }
            AcceptorEvent::Qpair(m) => match t.groups.get(m.qpair.group) {
                Some(e) => send_to_group(&t.groups, e, Deferred::Deliver(m)),
                None => tracing::debug!("RDMA_RS: {:?} for a group that is gone", m),
            },
            // Every group dropped its poller on it: its map goes.
            AcceptorEvent::Device(m) if m.event == DeviceEvent::Retired => t.free_mem_map(m.device),
            AcceptorEvent::Device(m) => {
                for e in t.groups.all() {
                    send_to_group(&t.groups, e, Deferred::DeliverDevice(m));
                }
            }
            AcceptorEvent::Port(m) => {
                for e in t.groups.all() {
                    send_to_group(&t.groups, e, Deferred::DeliverPort(m));
                }
            }
        });
        t.refresh_acceptor_interrupts();
        if let Some(timer) = &t.acceptor_timer {
            timer.want(t.core.acceptor_needs_timer());
        }
        i32::from(n > 0)
    })
}

/// Registers the acceptor's CM and async fds (interrupt mode).
fn register_acceptor_fds(fds: &[std::os::fd::RawFd], t: *mut c_void) -> Interrupts {
    Interrupts::register(fds, acceptor_poll, |_| t, ACCEPTOR_NAME)
}

/// The name of the acceptor's poller, interrupts and timer.
const ACCEPTOR_NAME: &std::ffi::CStr = c"nvmf_rdma_rs_accept";
