//! Devices, device contexts, device/port attributes and IB async events.

use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::Arc;

use rdma_sys as sys;

use super::error::{Errno, Result, VerbsError};
use super::fd;

/// Shared owner of an `ibv_context`.
pub(crate) struct ContextInner {
    ptr: NonNull<sys::ibv_context>,
    /// True when opened by us with `ibv_open_device` (closed on drop); false
    /// for contexts owned by librdmacm (`rdma_get_devices`, `cm_id->verbs`).
    owned: bool,
}

// SAFETY: libibverbs objects may be used from any thread (the library and its
// providers lock internally); the pointer is only dereferenced through ibv_*
// calls and the immutable fields set at open time.
unsafe impl Send for ContextInner {}
// SAFETY: see Send; all methods take `&self` and map to thread-safe verbs calls.
unsafe impl Sync for ContextInner {}

impl Drop for ContextInner {
    fn drop(&mut self) {
        if self.owned {
            // SAFETY: we opened this context and every object created from it
            // (PD, CQ, channel) holds an `Arc<ContextInner>`, so none is alive
            // when the last reference drops here.
            let rc = unsafe { sys::ibv_close_device(self.ptr.as_ptr()) };
            if rc != 0 {
                tracing::warn!(rc, "ibv_close_device failed");
            }
        }
    }
}

/// An open RDMA device context (`ibv_context`). Cheap to clone (shared).
#[derive(Clone)]
pub struct Context {
    pub(crate) inner: Arc<ContextInner>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("name", &self.name())
            .field("ptr", &self.inner.ptr)
            .finish()
    }
}

impl PartialEq for Context {
    fn eq(&self, other: &Context) -> bool {
        self.inner.ptr == other.inner.ptr
    }
}
impl Eq for Context {}

impl Context {
    /// Wrap a context owned by librdmacm (never closed by us).
    ///
    /// # Safety
    /// `ptr` must be a valid `ibv_context` that stays open for the life of the
    /// process (librdmacm keeps its device contexts open until unload).
    pub(crate) unsafe fn from_rdmacm(ptr: NonNull<sys::ibv_context>) -> Context {
        Context {
            inner: Arc::new(ContextInner { ptr, owned: false }),
        }
    }

    pub(crate) fn as_ptr(&self) -> *mut sys::ibv_context {
        self.inner.ptr.as_ptr()
    }

    /// A stable identity for this context (its address), e.g. to match
    /// `cm_id->verbs` against the device list as upstream does.
    pub fn key(&self) -> usize {
        self.inner.ptr.as_ptr() as usize
    }

    /// The device name (e.g. `softrdma0`, `mlx5_0`).
    pub fn name(&self) -> String {
        // SAFETY: `device` is set by the provider when the context is opened
        // and is valid while the context is; ibv_get_device_name returns a
        // pointer to a NUL-terminated name inside the device struct.
        unsafe {
            let dev = (*self.as_ptr()).device;
            if dev.is_null() {
                return String::from("?");
            }
            let name = sys::ibv_get_device_name(dev);
            if name.is_null() {
                return String::from("?");
            }
            CStr::from_ptr(name).to_string_lossy().into_owned()
        }
    }

    /// True when the device's transport is iWARP (cannot resize CQs, needs
    /// REMOTE_WRITE on READ sinks).
    pub fn is_iwarp(&self) -> bool {
        // SAFETY: `device` is valid while the context is open (see `name`).
        unsafe {
            let dev = (*self.as_ptr()).device;
            !dev.is_null() && (*dev).transport_type == sys::ibv_transport_type::IBV_TRANSPORT_IWARP
        }
    }

    /// `ibv_query_device`.
    pub fn query_device(&self) -> Result<DeviceAttr> {
        let mut attr = MaybeUninit::<sys::ibv_device_attr>::zeroed();
        // SAFETY: the context is open; `attr` is a writable ibv_device_attr.
        let rc = unsafe { sys::ibv_query_device(self.as_ptr(), attr.as_mut_ptr()) };
        if rc != 0 {
            return Err(VerbsError::code("ibv_query_device", rc));
        }
        // SAFETY: zero-initialised plain-data struct, filled by the provider.
        let a = unsafe { attr.assume_init() };
        Ok(DeviceAttr::from_sys(&a))
    }

    /// `ibv_query_port` (ports are numbered from 1).
    pub fn query_port(&self, port: u8) -> Result<PortAttr> {
        let mut attr = MaybeUninit::<sys::ibv_port_attr>::zeroed();
        // SAFETY: the context is open; `attr` is a writable ibv_port_attr of
        // the size the inline passes to the provider's query_port op.
        let rc = unsafe { sys::___ibv_query_port(self.as_ptr(), port, attr.as_mut_ptr()) };
        if rc != 0 {
            return Err(VerbsError::code("ibv_query_port", rc));
        }
        // SAFETY: zero-initialised plain-data struct, filled by the provider.
        let a = unsafe { attr.assume_init() };
        Ok(PortAttr {
            state: a.state,
            max_mtu: a.max_mtu,
            active_mtu: a.active_mtu,
            lid: a.lid,
            link_layer: a.link_layer,
            max_msg_sz: a.max_msg_sz,
        })
    }

    /// The async event fd (`context->async_fd`), for `poll`/`epoll`.
    pub fn async_fd(&self) -> RawFd {
        // SAFETY: `async_fd` is set at open time and never changes.
        unsafe { (*self.as_ptr()).async_fd }
    }

    /// Make the async fd non-blocking so [`Context::get_async_event`] never blocks.
    pub fn set_async_nonblocking(&self) -> Result<()> {
        fd::set_nonblocking(self.async_fd())
    }

    /// Fetch and acknowledge one async event; `Ok(None)` when none is pending
    /// (non-blocking fd). The event is acked before returning, so the typed
    /// copy never refers to freed memory.
    pub fn get_async_event(&self) -> Result<Option<AsyncEvent>> {
        let mut ev = MaybeUninit::<sys::ibv_async_event>::zeroed();
        // SAFETY: the context is open; `ev` is writable storage for one event.
        let rc = unsafe { sys::ibv_get_async_event(self.as_ptr(), ev.as_mut_ptr()) };
        if rc != 0 {
            let errno = Errno::last();
            if errno.is_would_block() {
                return Ok(None);
            }
            return Err(VerbsError::Call {
                call: "ibv_get_async_event",
                errno,
            });
        }
        let p = ev.as_mut_ptr();
        // SAFETY: the event was filled by the library. The event type is read
        // as a raw u32 (not as the Rust enum, which would be UB for a value
        // unknown to the bindings). The element union is read according to
        // the type; QP/CQ/SRQ pointers are valid until the event is acked.
        let typed = unsafe {
            let raw_type = std::ptr::addr_of!((*p).event_type).cast::<u32>().read();
            let kind = AsyncEventKind::from_raw(raw_type);
            let element = match kind.element_kind() {
                ElementKind::Qp => {
                    let qp = (*p).element.qp;
                    if qp.is_null() {
                        AsyncElement::Unknown
                    } else {
                        AsyncElement::Qp {
                            qp_num: (*qp).qp_num,
                        }
                    }
                }
                ElementKind::Cq => AsyncElement::Cq {
                    key: (*p).element.cq as usize,
                },
                ElementKind::Srq => AsyncElement::Srq {
                    key: (*p).element.srq as usize,
                },
                ElementKind::Port => AsyncElement::Port {
                    port: (*p).element.port_num,
                },
                ElementKind::Device => AsyncElement::Device,
                ElementKind::Unknown => AsyncElement::Unknown,
            };
            sys::ibv_ack_async_event(p);
            AsyncEvent { kind, element }
        };
        Ok(Some(typed))
    }
}

/// The subset of `ibv_device_attr` the transport and initiator use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceAttr {
    /// Largest MR.
    pub max_mr_size: u64,
    /// PCI vendor id (0 / 0xFFFFFF = SoftRoCE in upstream's eyes).
    pub vendor_id: u32,
    /// Vendor part id.
    pub vendor_part_id: u32,
    /// Max QPs.
    pub max_qp: u32,
    /// Max outstanding WRs per queue.
    pub max_qp_wr: u32,
    /// `IBV_DEVICE_*` capability flags.
    pub device_cap_flags: u32,
    /// Max SGEs per WR.
    pub max_sge: u32,
    /// Max CQs.
    pub max_cq: u32,
    /// Max CQEs per CQ.
    pub max_cqe: u32,
    /// Max MRs.
    pub max_mr: u32,
    /// Max PDs.
    pub max_pd: u32,
    /// Max RDMA READ/atomic operations a QP can be the target of.
    pub max_qp_rd_atom: u32,
    /// Max RDMA READ/atomic operations a QP can initiate.
    pub max_qp_init_rd_atom: u32,
    /// Max SRQs.
    pub max_srq: u32,
    /// Max WRs per SRQ.
    pub max_srq_wr: u32,
    /// Max SGEs per SRQ WR.
    pub max_srq_sge: u32,
    /// Number of physical ports.
    pub phys_port_cnt: u8,
}

/// `IBV_DEVICE_MEM_MGT_EXTENSIONS` (send with invalidate support).
pub const DEVICE_MEM_MGT_EXTENSIONS: u32 = 1 << 21;

fn nonneg(v: i32) -> u32 {
    v.max(0) as u32
}

impl DeviceAttr {
    fn from_sys(a: &sys::ibv_device_attr) -> DeviceAttr {
        DeviceAttr {
            max_mr_size: a.max_mr_size,
            vendor_id: a.vendor_id,
            vendor_part_id: a.vendor_part_id,
            max_qp: nonneg(a.max_qp),
            max_qp_wr: nonneg(a.max_qp_wr),
            device_cap_flags: a.device_cap_flags,
            max_sge: nonneg(a.max_sge),
            max_cq: nonneg(a.max_cq),
            max_cqe: nonneg(a.max_cqe),
            max_mr: nonneg(a.max_mr),
            max_pd: nonneg(a.max_pd),
            max_qp_rd_atom: nonneg(a.max_qp_rd_atom),
            max_qp_init_rd_atom: nonneg(a.max_qp_init_rd_atom),
            max_srq: nonneg(a.max_srq),
            max_srq_wr: nonneg(a.max_srq_wr),
            max_srq_sge: nonneg(a.max_srq_sge),
            phys_port_cnt: a.phys_port_cnt,
        }
    }
}

/// The subset of `ibv_port_attr` callers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortAttr {
    /// `IBV_PORT_*` state (4 = ACTIVE).
    pub state: u32,
    /// Max MTU enum.
    pub max_mtu: u32,
    /// Active MTU enum.
    pub active_mtu: u32,
    /// LID.
    pub lid: u16,
    /// `IBV_LINK_LAYER_*` (1 = InfiniBand, 2 = Ethernet).
    pub link_layer: u8,
    /// Max message size.
    pub max_msg_sz: u32,
}

/// `ibv_event_type`, with unknown values preserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum AsyncEventKind {
    CqErr,
    QpFatal,
    QpReqErr,
    QpAccessErr,
    CommEst,
    SqDrained,
    PathMig,
    PathMigErr,
    DeviceFatal,
    PortActive,
    PortErr,
    LidChange,
    PkeyChange,
    SmChange,
    SrqErr,
    SrqLimitReached,
    QpLastWqeReached,
    ClientReregister,
    GidChange,
    WqFatal,
    /// A value not known to this crate.
    Other(u32),
}

enum ElementKind {
    Qp,
    Cq,
    Srq,
    Port,
    Device,
    Unknown,
}

impl AsyncEventKind {
    /// Decode the C enum value.
    pub fn from_raw(v: u32) -> AsyncEventKind {
        use AsyncEventKind::*;
        match v {
            0 => CqErr,
            1 => QpFatal,
            2 => QpReqErr,
            3 => QpAccessErr,
            4 => CommEst,
            5 => SqDrained,
            6 => PathMig,
            7 => PathMigErr,
            8 => DeviceFatal,
            9 => PortActive,
            10 => PortErr,
            11 => LidChange,
            12 => PkeyChange,
            13 => SmChange,
            14 => SrqErr,
            15 => SrqLimitReached,
            16 => QpLastWqeReached,
            17 => ClientReregister,
            18 => GidChange,
            19 => WqFatal,
            other => Other(other),
        }
    }

    fn element_kind(self) -> ElementKind {
        use AsyncEventKind::*;
        match self {
            QpFatal | QpReqErr | QpAccessErr | CommEst | SqDrained | PathMig | PathMigErr
            | QpLastWqeReached => ElementKind::Qp,
            CqErr => ElementKind::Cq,
            SrqErr | SrqLimitReached => ElementKind::Srq,
            PortActive | PortErr | LidChange | PkeyChange | SmChange | ClientReregister
            | GidChange => ElementKind::Port,
            DeviceFatal => ElementKind::Device,
            WqFatal | Other(_) => ElementKind::Unknown,
        }
    }
}

/// What an async event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsyncElement {
    /// A QP, identified by its number.
    Qp {
        /// `qp->qp_num`.
        qp_num: u32,
    },
    /// A CQ, identified by [`super::Cq::key`].
    Cq {
        /// Address of the `ibv_cq`.
        key: usize,
    },
    /// An SRQ, identified by [`super::Srq::key`].
    Srq {
        /// Address of the `ibv_srq`.
        key: usize,
    },
    /// A port.
    Port {
        /// Port number.
        port: i32,
    },
    /// The whole device.
    Device,
    /// Unknown element (unknown event type or NULL object).
    Unknown,
}

/// One IB async event (already acknowledged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AsyncEvent {
    /// Event type.
    pub kind: AsyncEventKind,
    /// The object it concerns.
    pub element: AsyncElement,
}

/// The list from `ibv_get_device_list`.
pub struct DeviceList {
    list: NonNull<*mut sys::ibv_device>,
    len: usize,
}

impl DeviceList {
    /// `ibv_get_device_list`.
    pub fn get() -> Result<DeviceList> {
        let mut n: i32 = 0;
        // SAFETY: `n` is a valid out-parameter.
        let list = unsafe { sys::ibv_get_device_list(&mut n) };
        let list = NonNull::new(list).ok_or_else(|| VerbsError::null("ibv_get_device_list"))?;
        Ok(DeviceList {
            list,
            len: n.max(0) as usize,
        })
    }

    /// Number of devices.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no device exists.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn device(&self, i: usize) -> *mut sys::ibv_device {
        debug_assert!(i < self.len);
        // SAFETY: the array holds `len` device pointers (NULL-terminated) and
        // lives until `ibv_free_device_list` in Drop.
        unsafe { *self.list.as_ptr().add(i) }
    }

    /// Name of device `i`.
    pub fn name(&self, i: usize) -> Option<String> {
        if i >= self.len {
            return None;
        }
        // SAFETY: device pointers are valid while the list is; the name is a
        // NUL-terminated string inside the device.
        unsafe {
            let p = sys::ibv_get_device_name(self.device(i));
            (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
        }
    }

    /// `ibv_open_device` on device `i`; the context is closed when the last
    /// clone of the returned [`Context`] (and everything made from it) drops.
    pub fn open(&self, i: usize) -> Result<Context> {
        if i >= self.len {
            return Err(VerbsError::InvalidArgument {
                name: "device index",
                value: i as u64,
            });
        }
        // SAFETY: the device pointer is valid while the list is; the opened
        // context stays valid after the list is freed (rdma-core contract).
        let ctx = unsafe { sys::ibv_open_device(self.device(i)) };
        let ptr = NonNull::new(ctx).ok_or_else(|| VerbsError::null("ibv_open_device"))?;
        Ok(Context {
            inner: Arc::new(ContextInner { ptr, owned: true }),
        })
    }
}

impl Drop for DeviceList {
    fn drop(&mut self) {
        // SAFETY: the list came from ibv_get_device_list and is freed once.
        unsafe { sys::ibv_free_device_list(self.list.as_ptr()) };
    }
}

/// `rdma_get_devices`: the device contexts librdmacm opened. These are the
/// same pointers that later appear as `cm_id->verbs`; compare with
/// [`Context::key`].
pub fn rdma_devices() -> Result<Vec<Context>> {
    let mut n: i32 = 0;
    // SAFETY: `n` is a valid out-parameter.
    let list = unsafe { sys::rdma_get_devices(&mut n) };
    if list.is_null() {
        return Err(VerbsError::null("rdma_get_devices"));
    }
    let mut out = Vec::with_capacity(n.max(0) as usize);
    for i in 0..n.max(0) as usize {
        // SAFETY: the array holds `n` context pointers; librdmacm keeps these
        // contexts open for the life of the process.
        let ctx = unsafe { *list.add(i) };
        if let Some(p) = NonNull::new(ctx) {
            // SAFETY: see above: librdmacm-owned, never closed by us.
            out.push(unsafe { Context::from_rdmacm(p) });
        }
    }
    // SAFETY: frees only the array returned above, not the contexts.
    unsafe { sys::rdma_free_devices(list) };
    Ok(out)
}
