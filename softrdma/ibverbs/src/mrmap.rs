//! The shared-file fast path of memory regions.
//!
//! When `ibv_reg_mr` is given memory that is a writable `MAP_SHARED` mapping of a file (a
//! hugetlbfs page file as SPDK uses, a memfd, a `/dev/shm` file), the owner keeps its own fd of
//! that file and publishes it in the MR record (`backing_fd`, `backing_off`). Any process that
//! accesses the region (a peer, or the owner itself) maps the covering file range once and
//! keeps the mapping in its [`MapCache`], keyed by MR slot and checked against the current key:
//! a SEND / WRITE / READ into or out of such a region is then a `memcpy` instead of a
//! `process_vm_*` call. Keys, PDs, access rights and bounds are still checked by `mr::check`
//! before every access, exactly as on the `process_vm_*` path; a mapping is only ever used for
//! a range that check accepted, so no access can leave the registered range.
//!
//! softrdma's own mapping is independent of the application's: unmapping the registered memory
//! in the application does not make the fabric fault (as with pinned pages on hardware).
//! Truncating the backing file below the registered range while the region is registered is not
//! supported (the next access would raise SIGBUS, as it would in the owner).

use softrdma_abi::fabric::MrRec;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

/// hugetlbfs `f_type` (linux/magic.h).
const HUGETLBFS_MAGIC: u32 = 0x9584_58f6;

/// A shared-file region backing an MR, found at registration.
pub(crate) struct Backing {
    /// Our fd of the file (owned; closed on drop).
    pub fd: i32,
    /// File offset of the region's first byte.
    pub off: u64,
}

impl Drop for Backing {
    fn drop(&mut self) {
        // SAFETY: closing the fd this struct owns.
        unsafe { libc::close(self.fd) };
    }
}

/// One line of `/proc/self/maps` that matters here.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MapLine {
    start: u64,
    end: u64,
    writable: bool,
    shared: bool,
    offset: u64,
    dev_major: u32,
    dev_minor: u32,
    inode: u64,
    path: String,
}

fn parse_line(l: &str) -> Option<MapLine> {
    let mut it = l.splitn(6, ' ');
    let range = it.next()?;
    let perms = it.next()?.as_bytes();
    let offset = u64::from_str_radix(it.next()?, 16).ok()?;
    let dev = it.next()?;
    let inode = it.next()?.parse().ok()?;
    let path = it.next().unwrap_or("").trim_start().to_string();
    let (s, e) = range.split_once('-')?;
    let (maj, min) = dev.split_once(':')?;
    if perms.len() < 4 {
        return None;
    }
    Some(MapLine {
        start: u64::from_str_radix(s, 16).ok()?,
        end: u64::from_str_radix(e, 16).ok()?,
        writable: perms[1] == b'w',
        shared: perms[3] == b's',
        offset,
        dev_major: u32::from_str_radix(maj, 16).ok()?,
        dev_minor: u32::from_str_radix(min, 16).ok()?,
        inode,
        path,
    })
}

/// The file range covering `[addr, addr+len)` if it is one writable shared file mapping (or
/// several adjacent ones of the same file at consecutive offsets): (first line, file offset of
/// `addr`).
fn covering(maps: &str, addr: u64, len: u64) -> Option<(MapLine, u64)> {
    let end = addr.checked_add(len)?;
    let mut first: Option<MapLine> = None;
    let mut next = addr;
    for l in maps.lines().filter_map(parse_line) {
        if l.end <= next || next >= end {
            continue;
        }
        if l.start > next || !l.writable || !l.shared || l.inode == 0 {
            return None;
        }
        match &first {
            None => first = Some(l.clone()),
            Some(f) => {
                let same_file =
                    (f.dev_major, f.dev_minor, f.inode) == (l.dev_major, l.dev_minor, l.inode);
                if !same_file || l.offset != f.offset + (l.start - f.start) {
                    return None;
                }
            }
        }
        next = l.end;
    }
    if next < end {
        return None;
    }
    let f = first?;
    let off = f.offset + (addr - f.start);
    Some((f, off))
}

fn same_file(fd: i32, l: &MapLine) -> bool {
    // SAFETY: fstat into a zeroed local stat struct; an invalid fd just fails.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return false;
    }
    st.st_ino == l.inode
        && libc::major(st.st_dev) == l.dev_major
        && libc::minor(st.st_dev) == l.dev_minor
}

/// Open `path` read-write (close-on-exec); -1 on failure.
fn open_rw(path: &str) -> i32 {
    let Ok(c) = std::ffi::CString::new(path) else {
        return -1;
    };
    // SAFETY: valid NUL-terminated path.
    unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) }
}

/// Our own read-write fd of the file behind `l`: its path (if not deleted), a duplicate of an
/// fd the application still holds (memfd, unlinked hugepage files), or `/proc/self/map_files`
/// (needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE).
fn file_fd(l: &MapLine) -> Option<i32> {
    if l.path.starts_with('/') && !l.path.ends_with(" (deleted)") {
        let fd = open_rw(&l.path);
        if fd >= 0 {
            if same_file(fd, l) {
                return Some(fd);
            }
            // SAFETY: closing the fd we just opened.
            unsafe { libc::close(fd) };
        }
    }
    if let Ok(rd) = std::fs::read_dir("/proc/self/fd") {
        for e in rd.flatten() {
            let Some(n) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            // SAFETY: F_GETFL on a number that may or may not be an open fd.
            let fl = unsafe { libc::fcntl(n, libc::F_GETFL) };
            if fl < 0 || fl & libc::O_ACCMODE != libc::O_RDWR || !same_file(n, l) {
                continue;
            }
            // SAFETY: duplicating an open fd of ours (close-on-exec).
            let fd = unsafe { libc::fcntl(n, libc::F_DUPFD_CLOEXEC, 0) };
            if fd >= 0 {
                return Some(fd);
            }
        }
    }
    let fd = open_rw(&format!("/proc/self/map_files/{:x}-{:x}", l.start, l.end));
    if fd >= 0 {
        if same_file(fd, l) {
            return Some(fd);
        }
        // SAFETY: closing the fd we just opened.
        unsafe { libc::close(fd) };
    }
    None
}

/// At registration: the shared file behind `[addr, addr+len)`, if any.
pub(crate) fn detect(addr: u64, len: u64) -> Option<Backing> {
    if len == 0 {
        return None;
    }
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let (line, off) = covering(&maps, addr, len)?;
    let fd = file_fd(&line)?;
    Some(Backing { fd, off })
}

/// Our mapping of an MR's file range.
pub(crate) struct Mapping {
    base: *mut u8,
    map_len: usize,
    /// Our pointer to the MR's first byte (`MrRec::addr`).
    start: *mut u8,
    /// The MR's length.
    len: u64,
}

// SAFETY: a Mapping is an immutable description of a shared mapping that lives until the last
// Arc is dropped; the memory itself is accessed only through raw copies bounded by mr::check.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping the range this Mapping created; the last user dropped its Arc.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.map_len) };
    }
}

impl Mapping {
    /// Map `len` bytes of `fd` starting at file offset `off` (aligned as the filesystem needs).
    fn new(fd: i32, off: u64, len: u64) -> Option<Mapping> {
        // SAFETY: fstat/fstatfs into zeroed locals.
        let (mut st, mut sf): (libc::stat, libc::statfs) = unsafe { std::mem::zeroed() };
        // SAFETY: as above; fd is an fd we hold.
        if unsafe { libc::fstat(fd, &mut st) } != 0 || unsafe { libc::fstatfs(fd, &mut sf) } != 0 {
            return None;
        }
        let end = off.checked_add(len)?;
        if (st.st_size as u64) < end {
            return None;
        }
        let align = if sf.f_type == HUGETLBFS_MAGIC as libc::__fsword_t && sf.f_bsize > 4096 {
            sf.f_bsize as u64
        } else {
            4096
        };
        let aligned = off - off % align;
        let map_len = (end - aligned).div_ceil(align) * align;
        // SAFETY: a fresh shared mapping of a file we hold; the kernel picks the address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                aligned as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        Some(Mapping {
            base: p as *mut u8,
            map_len: map_len as usize,
            // SAFETY: off - aligned < map_len: inside the mapping just created.
            start: unsafe { (p as *mut u8).add((off - aligned) as usize) },
            len,
        })
    }

    /// Our pointer to owner address `addr` of the region that starts at `mr_addr`, when
    /// `[addr, addr+len)` lies inside it.
    pub(crate) fn ptr(&self, mr_addr: u64, addr: u64, len: u64) -> Option<u64> {
        let rel = addr.checked_sub(mr_addr)?;
        if rel.checked_add(len)? > self.len {
            return None;
        }
        Some(self.start as u64 + rel)
    }
}

struct Entry {
    owner: u32,
    key: u32,
    /// None: the region is not mappable here (e.g. pidfd_getfd refused); use process_vm_*.
    map: Option<Arc<Mapping>>,
}

/// Mappings of shared-file MRs (peers' and our own) by MR slot.
pub(crate) struct MapCache {
    m: RwLock<HashMap<u32, Entry>>,
}

impl MapCache {
    pub(crate) fn new() -> MapCache {
        MapCache {
            m: RwLock::new(HashMap::new()),
        }
    }

    /// Map our own newly registered region (slot, key) now.
    pub(crate) fn insert_own(&self, slot: u32, owner: u32, key: u32, b: &Backing, len: u64) {
        let map = Mapping::new(b.fd, b.off, len).map(Arc::new);
        self.m
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(slot, Entry { owner, key, map });
    }

    /// Forget a region (deregistration); the mapping goes away when its last user is done.
    pub(crate) fn remove(&self, slot: u32) {
        self.m
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&slot);
    }

    /// The mapping of MR `slot` (current key `key`, owner `owner`, record `rec`), mapping it on
    /// first use. None: anonymous memory, or the file cannot be reached from here.
    pub(crate) fn get(&self, slot: u32, owner: u32, key: u32, rec: &MrRec) -> Option<Arc<Mapping>> {
        let fd = rec.backing_fd.load(Ordering::Acquire);
        if fd == 0 {
            return None;
        }
        {
            let g = self.m.read().unwrap_or_else(|e| e.into_inner());
            if let Some(e) = g.get(&slot) {
                if e.owner == owner && e.key == key {
                    return e.map.clone();
                }
            }
        }
        let off = rec.backing_off.load(Ordering::Relaxed);
        let len = rec.len.load(Ordering::Relaxed);
        let map = peer_fd(owner, fd - 1)
            .and_then(|pfd| {
                let m = Mapping::new(pfd, off, len);
                // SAFETY: closing the duplicate obtained above (the mapping keeps the file).
                unsafe { libc::close(pfd) };
                m.map(Arc::new)
            })
            // The fd number must still name this region's file: the key is unchanged (our caller
            // holds the region's in-flight count, which deregistration waits for).
            .filter(|_| rec.key.load(Ordering::SeqCst) == key);
        if map.is_none() {
            crate::log::debug(&format!(
                "MR slot {slot} key {key:#x} of pid {owner}: shared file not mappable here; \
                 using process_vm_*"
            ));
        }
        self.m.write().unwrap_or_else(|e| e.into_inner()).insert(
            slot,
            Entry {
                owner,
                key,
                map: map.clone(),
            },
        );
        map
    }

    /// Drop mappings of regions that were deregistered (or whose owner died). Event thread.
    pub(crate) fn sweep(&self, mr_of: impl Fn(u32) -> &'static MrRec) {
        let mut g = self.m.write().unwrap_or_else(|e| e.into_inner());
        g.retain(|&slot, e| {
            let r = mr_of(slot);
            r.key.load(Ordering::Acquire) == e.key && r.owner.load(Ordering::Acquire) == e.owner
        });
    }
}

/// Duplicate fd `fd` of process `pid` into ours (close-on-exec); None if not allowed.
fn peer_fd(pid: u32, fd: u32) -> Option<i32> {
    if pid == std::process::id() {
        // SAFETY: duplicating one of our own fds (the MR's backing fd).
        let d = unsafe { libc::fcntl(fd as i32, libc::F_DUPFD_CLOEXEC, 0) };
        return (d >= 0).then_some(d);
    }
    crate::util::pidfd_getfd(pid, fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0000000-55d0c0021000 rw-p 00000000 00:00 0                          [heap]
7f0000000000-7f0000200000 rw-s 00000000 00:2d 4242                       /dev/hugepages/spdk_map_0
7f0000200000-7f0000400000 rw-s 00200000 00:2d 4242                       /dev/hugepages/spdk_map_0
7f0000400000-7f0000401000 rw-s 00000000 00:01 77                         /memfd:bench (deleted)
7f0000401000-7f0000402000 r--s 00001000 00:01 77                         /memfd:bench (deleted)
7f0000500000-7f0000600000 rw-p 00000000 00:00 0
";

    #[test]
    fn parses_a_maps_line() {
        let l = parse_line(
            "7f0000400000-7f0000401000 rw-s 00003000 00:01 77     /memfd:bench (deleted)",
        )
        .unwrap();
        assert_eq!(
            (l.start, l.end, l.offset),
            (0x7f0000400000, 0x7f0000401000, 0x3000)
        );
        assert!(l.writable && l.shared);
        assert_eq!((l.dev_major, l.dev_minor, l.inode), (0, 1, 77));
        assert_eq!(l.path, "/memfd:bench (deleted)");
    }

    #[test]
    fn covering_rules() {
        // Inside one hugepage mapping; across two adjacent mappings of the same file.
        let (l, off) = covering(MAPS, 0x7f0000100000, 0x1000).unwrap();
        assert_eq!((l.inode, off), (4242, 0x100000));
        let (_, off) = covering(MAPS, 0x7f00001ff000, 0x2000).unwrap();
        assert_eq!(off, 0x1ff000);
        // Private / anonymous memory, read-only part, a gap, the heap: not shareable.
        assert!(covering(MAPS, 0x7f0000500000, 0x1000).is_none());
        assert!(covering(MAPS, 0x7f0000400800, 0x1000).is_none());
        assert!(covering(MAPS, 0x7f00003ff000, 0x2000).is_none());
        assert!(covering(MAPS, 0x55d0c0000000, 16).is_none());
        assert!(covering(MAPS, 0x1000, 16).is_none());
    }

    #[test]
    fn hugetlb_region_is_mapped_at_huge_page_alignment() {
        // SAFETY: test-only syscalls on a memfd we create.
        unsafe {
            let len = 4usize << 20;
            let fd = libc::memfd_create(
                c"mrmap-huge".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_HUGETLB,
            );
            if fd < 0 || libc::ftruncate(fd, len as i64) != 0 {
                eprintln!(
                    "hugetlb test not run: no hugetlbfs memfd (errno {})",
                    crate::util::errno()
                );
                return;
            }
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            );
            if p == libc::MAP_FAILED {
                eprintln!("hugetlb test not run: no free huge pages");
                libc::close(fd);
                return;
            }
            let p = p as *mut u8;
            // A region starting inside the second huge page, not page aligned.
            let addr = p as u64 + (2 << 20) + 12345;
            let b = detect(addr, 8192).expect("hugetlbfs mapping must be detected");
            assert_eq!(b.off, (2 << 20) + 12345);
            let m = Mapping::new(b.fd, b.off, 8192).expect("map at huge page alignment");
            assert_eq!(m.base as u64 % (2 << 20), 0, "huge-page aligned mapping");
            *(m.ptr(addr, addr, 1).unwrap() as *mut u8) = 0xa5;
            assert_eq!(*p.add((2 << 20) + 12345), 0xa5, "same pages");
            drop(m);
            drop(b);
            libc::munmap(p as *mut libc::c_void, len);
            libc::close(fd);
        }
    }

    #[test]
    fn memfd_region_is_detected_and_mapped() {
        // SAFETY: test-only syscalls on a memfd we create.
        unsafe {
            let fd = libc::memfd_create(c"mrmap-test".as_ptr(), libc::MFD_CLOEXEC);
            assert!(fd >= 0);
            assert_eq!(libc::ftruncate(fd, 3 * 4096), 0);
            let p = libc::mmap(
                std::ptr::null_mut(),
                3 * 4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            ) as *mut u8;
            assert_ne!(p as *mut libc::c_void, libc::MAP_FAILED);
            let addr = p as u64 + 4096 + 100;
            let b = detect(addr, 5000).expect("memfd mapping must be detected");
            assert_eq!(b.off, 4096 + 100);
            let m = Mapping::new(b.fd, b.off, 5000).expect("map");
            let q = m.ptr(addr, addr + 10, 4).unwrap() as *mut u8;
            *q = 0x5a;
            assert_eq!(*p.add(4096 + 110), 0x5a, "same pages");
            assert_eq!(m.ptr(addr, addr + 4999, 2), None, "past the region");
            assert_eq!(m.ptr(addr, addr - 1, 1), None, "before the region");
            let mut anon = vec![0u8; 64];
            assert!(detect(anon.as_mut_ptr() as u64, 64).is_none());
            libc::munmap(p as *mut libc::c_void, 3 * 4096);
            libc::close(fd);
        }
    }
}
