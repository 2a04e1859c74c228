//! Memory regions: a record in the fabric MR table per region, keyed by lkey == rkey.

use crate::mrmap::{Backing, Mapping};
use crate::pd::pd_id;
use crate::runtime;
use crate::util::set_errno;
use softrdma_abi::fabric::{Counter, MrRec, MAX_MRS};
use softrdma_abi::verbs::*;
use std::ffi::{c_int, c_uint, c_void};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Private wrapper; `mr` must stay first.
#[repr(C)]
pub(crate) struct MrWrap {
    pub mr: ibv_mr,
    pub slot: u32,
    /// The shared file behind the region (fast path), kept open until deregistration.
    pub backing: Option<Backing>,
}

/// Access bits softrdma interprets; optional bits (20..29) are ignored.
const KNOWN_ACCESS: u32 = IBV_ACCESS_LOCAL_WRITE
    | IBV_ACCESS_REMOTE_WRITE
    | IBV_ACCESS_REMOTE_READ
    | IBV_ACCESS_REMOTE_ATOMIC
    | IBV_ACCESS_MW_BIND
    | IBV_ACCESS_ZERO_BASED
    | IBV_ACCESS_ON_DEMAND
    | IBV_ACCESS_HUGETLB
    | IBV_ACCESS_RELAXED_ORDERING;

unsafe fn reg(
    pd: *mut ibv_pd,
    addr: *mut c_void,
    len: usize,
    iova: u64,
    access: c_uint,
) -> *mut ibv_mr {
    let Some(rt) = runtime::get() else {
        set_errno(libc::ENODEV);
        return std::ptr::null_mut();
    };
    // SAFETY: pd is NULL or a live PD of ours, whose context is live.
    if !pd.is_null() && unsafe { crate::device::gone((*pd).context) } {
        set_errno(libc::EIO);
        return std::ptr::null_mut();
    }
    let access = access & !(0x3ff << 20) & KNOWN_ACCESS;
    if pd.is_null()
        || ((access & (IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_ATOMIC)) != 0
            && access & IBV_ACCESS_LOCAL_WRITE == 0)
    {
        set_errno(libc::EINVAL);
        return std::ptr::null_mut();
    }
    let f = &rt.fabric;
    let Some(i) = rt.alloc_slot(MAX_MRS - 1, &f.header().mr_hint, |i| &f.mr(i + 1).owner) else {
        crate::log::warn("memory region table full");
        set_errno(libc::ENOMEM);
        return std::ptr::null_mut();
    };
    let slot = i + 1;
    let rec = f.mr(slot);
    let mut gen = (rec.generation.load(Ordering::Relaxed) + 1) & 0xff;
    if gen == 0 {
        gen = 1;
    }
    rec.generation.store(gen, Ordering::Relaxed);
    let key = ((slot as u32) << 8) | gen;
    // SAFETY: pd is a live PD of ours.
    rec.pd.store(unsafe { pd_id(pd) }, Ordering::Relaxed);
    rec.access.store(access, Ordering::Relaxed);
    rec.addr.store(addr as u64, Ordering::Relaxed);
    rec.len.store(len as u64, Ordering::Relaxed);
    rec.iova.store(iova, Ordering::Relaxed);
    rec.inflight.store(0, Ordering::Relaxed);
    let backing = crate::mrmap::detect(addr as u64, len as u64);
    match &backing {
        Some(b) => {
            rt.maps
                .insert_own(slot as u32, rt.pid, key, b, addr as u64, len as u64);
            rec.backing_table
                .store(b.pieces.as_ptr() as u64, Ordering::Relaxed);
            rec.backing_pieces
                .store(b.pieces.len() as u32, Ordering::Relaxed);
        }
        None => rec.backing_pieces.store(0, Ordering::Relaxed),
    }
    crate::log::debug(&format!(
        "MR key {key:#x} addr {addr:p} len {len}: {}",
        match &backing {
            Some(b) => format!("shared files, {} pieces (memcpy path)", b.pieces.len()),
            None => "anonymous (process_vm_* path)".to_string(),
        }
    ));
    rec.key.store(key, Ordering::Release);
    let w = Box::new(MrWrap {
        mr: ibv_mr {
            // SAFETY: pd is live; reading its context pointer.
            context: unsafe { (*pd).context },
            pd,
            addr,
            length: len,
            handle: key,
            lkey: key,
            rkey: key,
        },
        slot: slot as u32,
        backing,
    });
    rt.count(Counter::Mrs, 1);
    Box::into_raw(w) as *mut ibv_mr
}

pub(crate) unsafe extern "C" fn reg_mr(
    pd: *mut ibv_pd,
    addr: *mut c_void,
    len: usize,
    access: c_int,
) -> *mut ibv_mr {
    // SAFETY: forwarding the caller's arguments.
    unsafe { reg(pd, addr, len, addr as u64, access as c_uint) }
}

pub(crate) unsafe extern "C" fn reg_mr_iova(
    pd: *mut ibv_pd,
    addr: *mut c_void,
    len: usize,
    iova: u64,
    access: c_int,
) -> *mut ibv_mr {
    // SAFETY: forwarding the caller's arguments.
    unsafe { reg(pd, addr, len, iova, access as c_uint) }
}

pub(crate) unsafe extern "C" fn reg_mr_iova2(
    pd: *mut ibv_pd,
    addr: *mut c_void,
    len: usize,
    iova: u64,
    access: c_uint,
) -> *mut ibv_mr {
    // SAFETY: forwarding the caller's arguments.
    unsafe { reg(pd, addr, len, iova, access) }
}

pub(crate) unsafe extern "C" fn dereg_mr(mr: *mut ibv_mr) -> c_int {
    if mr.is_null() {
        return libc::EINVAL;
    }
    let Some(rt) = runtime::get() else {
        return libc::EINVAL;
    };
    // SAFETY: mr was created by reg() as a Box<MrWrap>.
    let w = unsafe { Box::from_raw(mr as *mut MrWrap) };
    let rec = rt.fabric.mr(w.slot as usize);
    rec.key.store(0, Ordering::SeqCst);
    // No peer copy may land after dereg returns: wait for in-flight copies (bounded).
    let t0 = Instant::now();
    while rec.inflight.load(Ordering::SeqCst) != 0 && t0.elapsed() < Duration::from_secs(2) {
        std::thread::yield_now();
    }
    rt.maps.remove(w.slot);
    rec.backing_pieces.store(0, Ordering::Relaxed);
    drop(w);
    rec.owner.store(0, Ordering::Release);
    rt.count(Counter::Mrs, -1);
    0
}

/// Invalidate `key` (SEND_WITH_INV at the responder): if it names a live region of `owner` in
/// PD `pd`, the key stops working for every later access, local or remote, as after a remote
/// invalidation on hardware (the application still deregisters the region). False if the key
/// names no such region (nothing changes).
pub(crate) fn invalidate(key: u32, owner: u32, pd: u32) -> bool {
    let Some(rt) = runtime::get() else {
        return false;
    };
    let slot = (key >> 8) as usize;
    if slot == 0 || slot >= MAX_MRS {
        return false;
    }
    let rec = rt.fabric.mr(slot);
    if rec.owner.load(Ordering::Acquire) != owner || rec.pd.load(Ordering::Relaxed) != pd {
        return false;
    }
    let done = rec
        .key
        .compare_exchange(key, 0, Ordering::SeqCst, Ordering::Relaxed)
        .is_ok();
    if done {
        crate::log::debug(&format!(
            "MR key {key:#x} of pid {owner} invalidated (SEND_WITH_INV)"
        ));
    }
    done
}

/// Why an MR check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MrError {
    /// Unknown / stale key, wrong owner or PD.
    BadKey,
    /// Range outside the region.
    Range,
    /// Missing access right.
    Access,
}

/// A validated region access, holding the region's in-flight count until dropped.
pub(crate) struct MrAccess {
    rec: &'static MrRec,
    /// Translated address in the owner's address space.
    pub addr: u64,
    /// Our pointer to the same bytes when the region is shared-file backed and mapped here.
    pub mapped: Option<u64>,
    /// Keeps that mapping alive while the access lasts.
    _map: Option<Arc<Mapping>>,
}

impl Drop for MrAccess {
    fn drop(&mut self) {
        self.rec.inflight.fetch_sub(1, Ordering::Release);
    }
}

/// Validate `[va, va+len)` under `key` owned by `owner` in PD `pd` with `need` access bits.
pub(crate) fn check(
    key: u32,
    owner: u32,
    pd: u32,
    va: u64,
    len: u64,
    need: u32,
) -> Result<MrAccess, MrError> {
    let rt = runtime::get().ok_or(MrError::BadKey)?;
    let slot = (key >> 8) as usize;
    if slot == 0 || slot >= MAX_MRS {
        return Err(MrError::BadKey);
    }
    let rec = rt.fabric.mr(slot);
    rec.inflight.fetch_add(1, Ordering::SeqCst);
    let mut acc = MrAccess {
        rec,
        addr: 0,
        mapped: None,
        _map: None,
    };
    if rec.key.load(Ordering::SeqCst) != key || rec.owner.load(Ordering::Acquire) != owner {
        return Err(MrError::BadKey);
    }
    if rec.pd.load(Ordering::Relaxed) != pd {
        return Err(MrError::BadKey);
    }
    if rec.access.load(Ordering::Relaxed) & need != need {
        return Err(MrError::Access);
    }
    let iova = rec.iova.load(Ordering::Relaxed);
    let mlen = rec.len.load(Ordering::Relaxed);
    let end = va.checked_add(len).ok_or(MrError::Range)?;
    if va < iova || end > iova.saturating_add(mlen) {
        return Err(MrError::Range);
    }
    let mr_addr = rec.addr.load(Ordering::Relaxed);
    acc.addr = mr_addr + (va - iova);
    // The in-flight count we hold keeps the region (and its piece table) registered meanwhile.
    if let Some(m) = rt.maps.get(slot as u32, owner, key, rec) {
        acc.mapped = m.ptr(mr_addr, acc.addr, len);
        acc._map = Some(m);
    }
    Ok(acc)
}
