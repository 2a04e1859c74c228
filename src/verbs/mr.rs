//! Protection domains, memory regions and device-shared buffers.

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::Arc;

use rdma_sys as sys;

use super::device::Context;
use super::error::{Result, VerbsError};
use super::wr::Sge;

pub(crate) struct PdInner {
    ptr: NonNull<sys::ibv_pd>,
    ctx: Context,
}

// SAFETY: a PD is an immutable handle after allocation; verbs calls on it are
// thread-safe.
unsafe impl Send for PdInner {}
// SAFETY: see Send.
unsafe impl Sync for PdInner {}

impl Drop for PdInner {
    fn drop(&mut self) {
        // SAFETY: every MR, SRQ and QP created on this PD holds a `Pd` clone,
        // so none is alive when the last reference drops here.
        let rc = unsafe { sys::ibv_dealloc_pd(self.ptr.as_ptr()) };
        if rc != 0 {
            tracing::warn!(rc, device = %self.ctx.name(), "ibv_dealloc_pd failed");
        }
    }
}

/// A protection domain (`ibv_pd`). Cheap to clone (shared).
#[derive(Clone)]
pub struct Pd {
    inner: Arc<PdInner>,
}

impl std::fmt::Debug for Pd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pd").field("ptr", &self.inner.ptr).finish()
    }
}

impl Pd {
    /// `ibv_alloc_pd`.
    pub fn new(ctx: &Context) -> Result<Pd> {
        // SAFETY: the context is open (it is alive for as long as `ctx`).
        let p = unsafe { sys::ibv_alloc_pd(ctx.as_ptr()) };
        let ptr = NonNull::new(p).ok_or_else(|| VerbsError::null("ibv_alloc_pd"))?;
        Ok(Pd {
            inner: Arc::new(PdInner {
                ptr,
                ctx: ctx.clone(),
            }),
        })
    }

    /// The context this PD belongs to.
    pub fn context(&self) -> &Context {
        &self.inner.ctx
    }

    pub(crate) fn as_ptr(&self) -> *mut sys::ibv_pd {
        self.inner.ptr.as_ptr()
    }
}

/// MR access flags (`IBV_ACCESS_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access(pub u32);

impl Access {
    /// Local write (needed for RECV and RDMA READ sinks).
    pub const LOCAL_WRITE: Access = Access(1);
    /// Remote peers may RDMA WRITE here.
    pub const REMOTE_WRITE: Access = Access(2);
    /// Remote peers may RDMA READ from here.
    pub const REMOTE_READ: Access = Access(4);
    /// Everything an NVMe/RDMA host data buffer needs.
    pub const HOST_DATA: Access = Access(1 | 2 | 4);
}

impl std::ops::BitOr for Access {
    type Output = Access;
    fn bitor(self, rhs: Access) -> Access {
        Access(self.0 | rhs.0)
    }
}

/// A registered memory region (`ibv_mr`) over memory it does not own.
///
/// Deregistered on drop. After `ibv_dereg_mr` returns the device can no
/// longer reach the memory through this region's keys: a WR still naming it
/// completes with an error instead of touching the memory.
pub struct Mr {
    ptr: NonNull<sys::ibv_mr>,
    addr: u64,
    len: usize,
    lkey: u32,
    rkey: u32,
    _pd: Pd,
}

// SAFETY: the MR handle is immutable after registration; dereg is the only
// mutation and happens in Drop with exclusive access.
unsafe impl Send for Mr {}
// SAFETY: see Send; shared access only reads the cached keys.
unsafe impl Sync for Mr {}

impl std::fmt::Debug for Mr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mr")
            .field("addr", &format_args!("{:#x}", self.addr))
            .field("len", &self.len)
            .field("lkey", &format_args!("{:#x}", self.lkey))
            .field("rkey", &format_args!("{:#x}", self.rkey))
            .finish()
    }
}

impl Mr {
    /// Register `len` bytes at `addr` (`ibv_reg_mr_iova2` with iova = addr).
    ///
    /// # Safety
    /// The memory `[addr, addr+len)` must stay allocated until this `Mr` is
    /// dropped, and the caller must accept that the device (and, with remote
    /// access flags, the connected peer) may read or write it at any time while
    /// it is registered: no Rust reference to it may be held across such
    /// access.
    pub unsafe fn register_raw(pd: &Pd, addr: *mut u8, len: usize, access: Access) -> Result<Mr> {
        if len == 0 {
            return Err(VerbsError::InvalidArgument {
                name: "mr length",
                value: 0,
            });
        }
        // SAFETY: PD is alive; the caller guarantees the memory range.
        let p =
            unsafe { sys::ibv_reg_mr_iova2(pd.as_ptr(), addr.cast(), len, addr as u64, access.0) };
        let ptr = NonNull::new(p).ok_or_else(|| VerbsError::null("ibv_reg_mr_iova2"))?;
        // SAFETY: a successful registration returns a valid ibv_mr whose keys
        // never change.
        let (lkey, rkey) = unsafe { ((*p).lkey, (*p).rkey) };
        Ok(Mr {
            ptr,
            addr: addr as u64,
            len,
            lkey,
            rkey,
            _pd: pd.clone(),
        })
    }

    /// Local key.
    pub fn lkey(&self) -> u32 {
        self.lkey
    }

    /// Remote key.
    pub fn rkey(&self) -> u32 {
        self.rkey
    }

    /// Start address.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if the region is empty (never: registration rejects 0).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True if `[addr, addr+len)` lies inside this region.
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        addr >= self.addr
            && addr
                .checked_add(len)
                .is_some_and(|end| end <= self.addr + self.len as u64)
    }

    /// An SGE for `len` bytes at `offset` in this region.
    pub fn sge(&self, offset: usize, len: u32) -> Result<Sge> {
        check_range(self.len, offset, len as usize)?;
        Ok(Sge::from_region(self.addr + offset as u64, len, self.lkey))
    }
}

impl Drop for Mr {
    fn drop(&mut self) {
        // SAFETY: registered by us, deregistered exactly once.
        let rc = unsafe { sys::ibv_dereg_mr(self.ptr.as_ptr()) };
        if rc != 0 {
            tracing::warn!(rc, lkey = self.lkey, "ibv_dereg_mr failed");
        }
    }
}

fn check_range(total: usize, offset: usize, len: usize) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= total => Ok(()),
        _ => Err(VerbsError::InvalidArgument {
            name: "buffer range end",
            value: offset as u64 + len as u64,
        }),
    }
}

/// Where [`DmaBuf`] memory comes from: the heap by default ([`HeapDma`]), or
/// an environment's DMA-able memory (SPDK's `spdk_zmalloc`, as upstream's
/// transport allocates its receive and completion buffers).
///
/// # Safety
/// `alloc` returns `None` or a pointer to `len` zeroed, writable bytes aligned
/// to `align`, valid until given to `free` with the same `len` and `align`.
pub unsafe trait DmaAllocator: Sync {
    /// Allocates `len` (> 0) zeroed bytes aligned to `align` (a power of two).
    fn alloc(&self, len: usize, align: usize) -> Option<NonNull<u8>>;
    /// Frees memory from [`DmaAllocator::alloc`].
    ///
    /// # Safety
    /// `p` came from `alloc(len, align)` of this allocator and is freed once.
    unsafe fn free(&self, p: NonNull<u8>, len: usize, align: usize);
}

/// The process heap (`std::alloc`).
pub struct HeapDma;

// SAFETY: `alloc_zeroed` returns null or `len` zeroed bytes with the layout's
// alignment, valid until `dealloc` with the same layout.
unsafe impl DmaAllocator for HeapDma {
    fn alloc(&self, len: usize, align: usize) -> Option<NonNull<u8>> {
        let layout = Layout::from_size_align(len, align).ok()?;
        if layout.size() == 0 {
            return None;
        }
        // SAFETY: the layout has a non-zero size.
        NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })
    }

    unsafe fn free(&self, p: NonNull<u8>, len: usize, align: usize) {
        // The layout was valid when `alloc` made it, so it is now.
        if let Ok(layout) = Layout::from_size_align(len, align) {
            // SAFETY: the caller passes a pointer `alloc` made with this
            // layout, once.
            unsafe { std::alloc::dealloc(p.as_ptr(), layout) };
        }
    }
}

/// Alignment of every [`DmaBuf`] (one 4 KiB page, as upstream's buffers).
const DMA_ALIGN: usize = 4096;

/// Page-aligned memory owned by this struct and registered as one MR.
///
/// The memory is shared with the device: WRs may write it (RECV, RDMA READ
/// sinks, remote WRITEs) or read it at any time while registered, so it is
/// only accessed by copying through raw pointers ([`DmaBuf::read`],
/// [`DmaBuf::write`]); no Rust reference to it is ever formed. On drop the MR
/// is deregistered first (the device loses access), then the memory is freed.
pub struct DmaBuf {
    mr: Option<Mr>,
    mem: NonNull<u8>,
    len: usize,
    alloc: &'static dyn DmaAllocator,
}

// SAFETY: DmaBuf owns its allocation; writes need `&mut self`, reads copy
// through raw pointers; the allocator is `Sync`.
unsafe impl Send for DmaBuf {}
// SAFETY: `&self` methods only read (copy out) the memory.
unsafe impl Sync for DmaBuf {}

impl std::fmt::Debug for DmaBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaBuf").field("mr", &self.mr).finish()
    }
}

impl DmaBuf {
    /// Allocate `len` zeroed bytes (4 KiB aligned) from the heap and register
    /// them on `pd`.
    pub fn new(pd: &Pd, len: usize, access: Access) -> Result<DmaBuf> {
        DmaBuf::new_in(&HeapDma, pd, len, access)
    }

    /// Allocate `len` zeroed bytes (4 KiB aligned) from `alloc` and register
    /// them on `pd`.
    pub fn new_in(
        alloc: &'static dyn DmaAllocator,
        pd: &Pd,
        len: usize,
        access: Access,
    ) -> Result<DmaBuf> {
        if len == 0 {
            return Err(VerbsError::InvalidArgument {
                name: "dma buffer length",
                value: 0,
            });
        }
        let mem = alloc
            .alloc(len, DMA_ALIGN)
            .ok_or(VerbsError::InvalidArgument {
                name: "dma allocation",
                value: len as u64,
            })?;
        // SAFETY: the memory is owned by the DmaBuf being built and is freed
        // only in Drop after the MR is deregistered; it is never referenced,
        // only copied through raw pointers.
        let mr = unsafe { Mr::register_raw(pd, mem.as_ptr(), len, access) };
        match mr {
            Ok(mr) => Ok(DmaBuf {
                mr: Some(mr),
                mem,
                len,
                alloc,
            }),
            Err(e) => {
                // SAFETY: allocated above with this length and alignment,
                // never registered.
                unsafe { alloc.free(mem, len, DMA_ALIGN) };
                Err(e)
            }
        }
    }

    fn mr(&self) -> &Mr {
        // Invariant: `mr` is Some from construction until Drop.
        self.mr.as_ref().expect("DmaBuf MR present until drop")
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.mr().len()
    }

    /// Always false (zero-length buffers are rejected).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Address of byte `offset` as the device sees it (iova = virtual address).
    pub fn addr(&self, offset: usize) -> u64 {
        self.mr().addr() + offset as u64
    }

    /// Local key.
    pub fn lkey(&self) -> u32 {
        self.mr().lkey()
    }

    /// Remote key.
    pub fn rkey(&self) -> u32 {
        self.mr().rkey()
    }

    /// An SGE for `len` bytes at `offset`.
    pub fn sge(&self, offset: usize, len: u32) -> Result<Sge> {
        self.mr().sge(offset, len)
    }

    /// Copy `data` into the buffer at `offset`.
    pub fn write(&mut self, offset: usize, data: &[u8]) -> Result<()> {
        check_range(self.len(), offset, data.len())?;
        // SAFETY: range checked above; the destination is our allocation and
        // cannot overlap `data` (a Rust slice never aliases DmaBuf memory,
        // which is never handed out as a reference).
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.mem.as_ptr().add(offset), data.len())
        };
        Ok(())
    }

    /// Copy `data` into the buffer at `offset` and return the SGE naming
    /// those bytes ([`DmaBuf::write`] then [`DmaBuf::sge`], one range check).
    pub fn write_sge(&mut self, offset: usize, data: &[u8]) -> Result<Sge> {
        let len = u32::try_from(data.len()).map_err(|_| VerbsError::InvalidArgument {
            name: "sge length",
            value: data.len() as u64,
        })?;
        self.write(offset, data)?;
        Ok(Sge::from_region(self.addr(offset), len, self.lkey()))
    }

    /// Fill `len` bytes at `offset` with `byte`.
    pub fn fill(&mut self, offset: usize, len: usize, byte: u8) -> Result<()> {
        check_range(self.len(), offset, len)?;
        // SAFETY: range checked above; our allocation.
        unsafe { std::ptr::write_bytes(self.mem.as_ptr().add(offset), byte, len) };
        Ok(())
    }

    /// Copy `out.len()` bytes at `offset` out of the buffer.
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        check_range(self.len(), offset, out.len())?;
        // SAFETY: range checked above; see `write` for non-overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.mem.as_ptr().add(offset),
                out.as_mut_ptr(),
                out.len(),
            )
        };
        Ok(())
    }

    /// The `len` bytes at `offset`, borrowed (no copy): for memory the NIC
    /// wrote and will not write again while the borrow lives (a received
    /// capsule whose RECV is not re-posted until the request is done).
    pub fn view(&self, offset: usize, len: usize) -> Result<&[u8]> {
        check_range(self.len(), offset, len)?;
        // SAFETY: range checked above, inside our live allocation (freed only
        // in Drop, which needs the borrow of `self` to end). Rust code writes
        // only through `&mut self` (`write`), which the shared borrow
        // excludes. The NIC writes only into ranges named by a posted RECV;
        // the transport views a receive slot only between that RECV's
        // completion and its re-post, both of which happen on the thread
        // holding this borrow, so no DMA targets the range meanwhile.
        Ok(unsafe { std::slice::from_raw_parts(self.mem.as_ptr().add(offset), len) })
    }

    /// Read a little-endian u16/u32/u64-sized array at `offset`.
    pub fn read_array<const N: usize>(&self, offset: usize) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        self.read(offset, &mut a)?;
        Ok(a)
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        // Deregister first: afterwards no WR or peer can reach the memory.
        drop(self.mr.take());
        // SAFETY: allocated in `new_in` by `self.alloc` with this length and
        // alignment, freed exactly once, after the MR covering it was
        // deregistered.
        unsafe { self.alloc.free(self.mem, self.len, DMA_ALIGN) };
    }
}
