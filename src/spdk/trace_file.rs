//! Where the trace group needs to look in SPDK's trace file: the tpoint mask
//! words, the object table and the tracepoint table.
//!
//! Up to v26.01 they are fields of `struct spdk_trace_file`; v26.05 splits the
//! file into sections found through `section_offsets` (what its
//! `spdk_trace_get_*_section` helpers do). build.rs sets
//! `cfg(spdk_trace_sections)` when the generated bindings have the sections,
//! so the same source builds against both; each accessor checks its index
//! against the table's length and answers `None` past it.

use super::sys;

/// One slot of the object table.
pub(crate) type ObjectSlot = sys::spdk_trace_object;
/// One slot of the tracepoint table.
pub(crate) type TpointSlot = sys::spdk_trace_tpoint;

/// The length of the array behind `_p`.
#[cfg(not(spdk_trace_sections))]
fn len_of<T, const N: usize>(_p: *const [T; N]) -> usize {
    N
}

/// The mask word of tracepoint group `group`.
///
/// # Safety
/// `file` must point to SPDK's live, mapped trace file.
#[cfg(not(spdk_trace_sections))]
#[inline]
pub(crate) unsafe fn mask_word(file: *mut sys::spdk_trace_file, group: usize) -> Option<*mut u64> {
    // SAFETY: a field of the live file (caller); no reference is made.
    let masks = unsafe { std::ptr::addr_of_mut!((*file).tpoint_mask) };
    // SAFETY: `group` is within the array (checked).
    (group < len_of(masks)).then(|| unsafe { masks.cast::<u64>().add(group) })
}

/// The object table's slot of object type `ty`.
///
/// # Safety
/// As [`mask_word`].
#[cfg(not(spdk_trace_sections))]
pub(crate) unsafe fn object_slot(
    file: *mut sys::spdk_trace_file,
    ty: u8,
) -> Option<*const ObjectSlot> {
    // SAFETY: a field of the live file (caller).
    let table = unsafe { std::ptr::addr_of!((*file).object) };
    let i = usize::from(ty);
    // SAFETY: `i` is within the array (checked).
    (i < len_of(table)).then(|| unsafe { table.cast::<ObjectSlot>().add(i) })
}

/// The tracepoint table's slot of tracepoint `id`.
///
/// # Safety
/// As [`mask_word`].
#[cfg(not(spdk_trace_sections))]
pub(crate) unsafe fn tpoint_slot(
    file: *mut sys::spdk_trace_file,
    id: u16,
) -> Option<*const TpointSlot> {
    // SAFETY: a field of the live file (caller).
    let table = unsafe { std::ptr::addr_of!((*file).tpoint) };
    let i = usize::from(id);
    // SAFETY: `i` is within the array (checked).
    (i < len_of(table)).then(|| unsafe { table.cast::<TpointSlot>().add(i) })
}

/// The start of section `ty` and its `count` (the length of its table), as
/// `spdk_trace_get_section` finds it.
///
/// # Safety
/// As [`mask_word`].
#[cfg(spdk_trace_sections)]
unsafe fn section(
    file: *mut sys::spdk_trace_file,
    ty: sys::spdk_trace_section_type,
) -> Option<*mut u8> {
    let ty = ty as usize;
    // SAFETY: header fields of the live file (caller).
    let (n, offsets) = unsafe {
        (
            usize::from((*file).num_sections),
            std::ptr::addr_of!((*file).section_offsets),
        )
    };
    // SAFETY: `ty` is below both the header's count and the array's length.
    let off = (ty < n && ty < unsafe { (*offsets).len() }).then(|| unsafe { (*offsets)[ty] })?;
    // SAFETY: SPDK's offsets point inside the mapped file.
    (off != 0).then(|| unsafe { file.cast::<u8>().add(off as usize) })
}

/// The mask word of tracepoint group `group`.
///
/// # Safety
/// `file` must point to SPDK's live, mapped trace file.
#[cfg(spdk_trace_sections)]
#[inline]
pub(crate) unsafe fn mask_word(file: *mut sys::spdk_trace_file, group: usize) -> Option<*mut u64> {
    // SAFETY: live file (caller).
    let s = unsafe { section(file, sys::SPDK_TRACE_SECTION_TPOINT_MASK) }?
        .cast::<sys::spdk_trace_section_tpoint_mask>();
    // SAFETY: the section holds its header and `count` words after it.
    unsafe {
        (group < usize::from((*s).count)).then(|| {
            std::ptr::addr_of_mut!((*s).tpoint_mask)
                .cast::<u64>()
                .add(group)
        })
    }
}

/// The object table's slot of object type `ty`.
///
/// # Safety
/// As [`mask_word`].
#[cfg(spdk_trace_sections)]
pub(crate) unsafe fn object_slot(
    file: *mut sys::spdk_trace_file,
    ty: u8,
) -> Option<*const ObjectSlot> {
    // SAFETY: live file (caller).
    let s = unsafe { section(file, sys::SPDK_TRACE_SECTION_OBJECT) }?
        .cast::<sys::spdk_trace_section_object>();
    let i = usize::from(ty);
    // SAFETY: the section holds its header and `count` slots after it.
    unsafe {
        (i < usize::from((*s).count))
            .then(|| std::ptr::addr_of!((*s).object).cast::<ObjectSlot>().add(i))
    }
}

/// The tracepoint table's slot of tracepoint `id`.
///
/// # Safety
/// As [`mask_word`].
#[cfg(spdk_trace_sections)]
pub(crate) unsafe fn tpoint_slot(
    file: *mut sys::spdk_trace_file,
    id: u16,
) -> Option<*const TpointSlot> {
    // SAFETY: live file (caller).
    let s = unsafe { section(file, sys::SPDK_TRACE_SECTION_TPOINT) }?
        .cast::<sys::spdk_trace_section_tpoint>();
    let i = usize::from(id);
    // SAFETY: the section holds its header and `count` slots after it.
    unsafe {
        (i < usize::from((*s).count))
            .then(|| std::ptr::addr_of!((*s).tpoint).cast::<TpointSlot>().add(i))
    }
}

/// A zeroed trace file in memory with `groups` mask words (and empty object
/// and tracepoint tables), for tests of the readers.
#[cfg(test)]
pub(crate) struct FakeFile {
    /// 8-byte aligned backing store.
    buf: Vec<u64>,
}

#[cfg(test)]
impl FakeFile {
    /// The file as SPDK's pointer.
    pub(crate) fn ptr(&mut self) -> *mut sys::spdk_trace_file {
        self.buf.as_mut_ptr().cast()
    }

    /// Sets the mask word of `group`.
    pub(crate) fn set_mask(&mut self, group: usize, mask: u64) {
        let file = self.ptr();
        // SAFETY: the fake file is laid out as SPDK's (`new`).
        let word = unsafe { mask_word(file, group) }.expect("group within the fake file");
        // SAFETY: `word` points into `buf`, which `&mut self` borrows.
        unsafe { word.write(mask) };
    }
}

#[cfg(all(test, not(spdk_trace_sections)))]
impl FakeFile {
    /// A zeroed `spdk_trace_file` (its arrays are fixed-size).
    pub(crate) fn new() -> FakeFile {
        let words = std::mem::size_of::<sys::spdk_trace_file>().div_ceil(8);
        FakeFile {
            buf: vec![0; words],
        }
    }
}

#[cfg(all(test, spdk_trace_sections))]
impl FakeFile {
    /// The header, then mask, object and tracepoint sections with
    /// `SPDK_TRACE_MAX_GROUP_ID`-like counts (20 groups, 256 objects, 1280
    /// tracepoints).
    pub(crate) fn new() -> FakeFile {
        use std::mem::size_of;
        let header = size_of::<sys::spdk_trace_file>();
        let mask_off = header.next_multiple_of(128);
        let object_off = (mask_off + 128 + 20 * 8).next_multiple_of(128);
        let tpoint_off = (object_off + 128 + 256 * size_of::<ObjectSlot>()).next_multiple_of(128);
        let end = tpoint_off + 128 + 1280 * size_of::<TpointSlot>();
        let mut f = FakeFile {
            buf: vec![0; end.div_ceil(8)],
        };
        let file = f.ptr();
        let base = file.cast::<u8>();
        // SAFETY: every write is inside `buf` (sized for them above) and
        // aligned (offsets are multiples of 128, fields at their offsets).
        unsafe {
            (*file).file_size = end as u64;
            (*file).num_sections = sys::SPDK_TRACE_NUM_SECTIONS as u16;
            for (ty, off, count) in [
                (sys::SPDK_TRACE_SECTION_TPOINT_MASK, mask_off, 20u16),
                (sys::SPDK_TRACE_SECTION_OBJECT, object_off, 256),
                (sys::SPDK_TRACE_SECTION_TPOINT, tpoint_off, 1280),
            ] {
                (*file).section_offsets[ty as usize] = off as u64;
                // Every section header starts with its `u16` count.
                base.add(off).cast::<u16>().write(count);
            }
        }
        f
    }
}
