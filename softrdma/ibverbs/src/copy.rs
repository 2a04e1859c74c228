//! Moving a WR's payload between the requester and the responder's memory: a `memcpy` when
//! every range on both sides is mapped here (shared-file MRs, see `mrmap`), otherwise one
//! `process_vm_writev` / `process_vm_readv` call.

use crate::runtime::Runtime;
use crate::util::{self, CopyError};
use smallvec::SmallVec;
use softrdma_abi::fabric::Counter;

/// Byte ranges `(address, length)`; four inline entries cover the common WR without allocating.
pub(crate) type Iov = SmallVec<[(u64, usize); 4]>;

/// One side of a copy: its ranges in the owning process's address space and, when all of them
/// are mapped here, our pointers to the same bytes.
#[derive(Default)]
pub(crate) struct Ranges {
    /// Addresses in the owner's address space (what `process_vm_*` needs).
    pub addrs: Iov,
    /// Our pointers, one per entry of `addrs` while every entry so far was mapped.
    mapped: Iov,
}

impl Ranges {
    /// Append a range; `mapped` is our pointer to it, if it is mapped here.
    pub(crate) fn push(&mut self, addr: u64, len: usize, mapped: Option<u64>) {
        if let Some(m) = mapped {
            if self.mapped.len() == self.addrs.len() {
                self.mapped.push((m, len));
            }
        }
        self.addrs.push((addr, len));
    }

    /// A range of our own memory that is always valid (e.g. a copy of inline data).
    pub(crate) fn own(addr: u64, len: usize) -> Ranges {
        let mut r = Ranges::default();
        r.push(addr, len, Some(addr));
        r
    }

    /// True if every range is mapped here (vacuously true when empty).
    pub(crate) fn all_mapped(&self) -> bool {
        self.mapped.len() == self.addrs.len()
    }

    /// Total bytes.
    pub(crate) fn total(&self) -> usize {
        self.addrs.iter().map(|r| r.1).sum()
    }
}

/// Copy `local` (this process) into `remote` (process `pid`) when `write`, else `remote` into
/// `local`. The MR accesses that produced mapped pointers must be held by the caller until this
/// returns (they keep the mappings and the registrations alive).
pub(crate) fn copy(
    rt: &Runtime,
    pid: u32,
    local: &Ranges,
    remote: &Ranges,
    write: bool,
) -> Result<(), CopyError> {
    if local.all_mapped() && remote.all_mapped() {
        let (src, dst) = if write {
            (&local.mapped, &remote.mapped)
        } else {
            (&remote.mapped, &local.mapped)
        };
        // SAFETY: every mapped pointer comes from a validated MR access (mr::check bounded the
        // range to the region, and the mapping covers the whole region) or from our own live
        // buffer (Ranges::own), and the caller holds those accesses for the duration.
        unsafe { scatter(src, dst) };
        rt.count(Counter::MappedBytes, local.total() as i64);
        return Ok(());
    }
    if write {
        util::write_to(pid, &local.addrs, &remote.addrs)
    } else {
        util::read_from(pid, &local.addrs, &remote.addrs)
    }
}

/// memmove the bytes of `src` ranges into `dst` ranges (same total length).
///
/// # Safety
/// Every range must be valid for reads (`src`) / writes (`dst`) for its length.
unsafe fn scatter(src: &[(u64, usize)], dst: &[(u64, usize)]) {
    let (mut si, mut so, mut di, mut d_off) = (0usize, 0usize, 0usize, 0usize);
    while si < src.len() && di < dst.len() {
        let (sa, sl) = src[si];
        let (da, dl) = dst[di];
        let n = (sl - so).min(dl - d_off);
        // SAFETY: [sa+so, +n) and [da+d_off, +n) lie inside their ranges (caller contract);
        // ptr::copy tolerates overlap (a QP writing into its own region).
        unsafe {
            std::ptr::copy(
                (sa as usize + so) as *const u8,
                (da as usize + d_off) as *mut u8,
                n,
            )
        };
        so += n;
        d_off += n;
        if so == sl {
            si += 1;
            so = 0;
        }
        if d_off == dl {
            di += 1;
            d_off = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scatter_across_uneven_ranges() {
        let src = *b"abcdefghij";
        let mut dst = [0u8; 10];
        let s = [(src.as_ptr() as u64, 3), (src.as_ptr() as u64 + 3, 7)];
        let d = dst.as_mut_ptr() as u64;
        let dr = [(d, 6), (d + 6, 0), (d + 6, 4)];
        // SAFETY: all ranges lie inside src / dst.
        unsafe { scatter(&s, &dr) };
        assert_eq!(&dst, b"abcdefghij");
    }

    #[test]
    fn ranges_mapped_only_when_every_entry_is() {
        let mut r = Ranges::default();
        assert!(r.all_mapped());
        r.push(1, 2, Some(10));
        assert!(r.all_mapped());
        r.push(3, 4, None);
        r.push(5, 6, Some(12));
        assert!(!r.all_mapped());
        assert_eq!(r.total(), 12);
    }
}
