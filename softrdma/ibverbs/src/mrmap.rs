//! The shared-file fast path of memory regions.
//!
//! When `ibv_reg_mr` is given memory made of writable `MAP_SHARED` mappings of files (hugetlbfs
//! page files as SPDK uses — one file per hugepage in DPDK's default layout —, memfds, `/dev/shm`
//! files), the owner keeps its own fd of each file and publishes a table of the region's pieces
//! (one per contiguous range of one file: fd, file offset, address, length) in its memory, named
//! by the MR record (`backing_pieces`, `backing_table`). Any process that accesses the region (a
//! peer, or the owner itself) reads the table once, maps every piece at the same distance from
//! the first as in the owner (so the region is one contiguous range here too) and keeps the
//! mapping in its [`MapCache`], keyed by MR slot and checked against the current key: a SEND /
//! WRITE / READ into or out of such a region is then a `memcpy` instead of a `process_vm_*`
//! call. Keys, PDs, access rights and bounds are still checked by `mr::check` before every
//! access, exactly as on the `process_vm_*` path; a mapping is only ever used for a range that
//! check accepted, so no access can leave the registered range.
//!
//! softrdma's own mapping is independent of the application's: unmapping the registered memory
//! in the application does not make the fabric fault (as with pinned pages on hardware).
//! Truncating a backing file below the registered range while the region is registered is not
//! supported (the next access would raise SIGBUS, as it would in the owner).

use softrdma_abi::fabric::{BackingPiece, MrRec};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

/// hugetlbfs `f_type` (linux/magic.h).
const HUGETLBFS_MAGIC: u32 = 0x9584_58f6;

/// Most pieces one region may have on the fast path (128 GiB of 2 MiB hugepages, one file
/// each); a region made of more uses `process_vm_*`.
const MAX_PIECES: usize = 1 << 16;

/// Largest page size accepted in a piece table (1 GiB hugepages).
const MAX_PAGE: u32 = 1 << 30;

/// Backing-file fds this process holds for its regions (all [`Backing`]s).
static HELD_FDS: AtomicUsize = AtomicUsize::new(0);

/// The shared files behind an MR, found at registration: the piece table published to peers
/// and our fds of the files (one per distinct file), closed on drop.
pub(crate) struct Backing {
    /// The pieces in address order; peers read this table from our memory.
    pub pieces: Vec<BackingPiece>,
    fds: Vec<OwnedFd>,
}

impl Drop for Backing {
    fn drop(&mut self) {
        HELD_FDS.fetch_sub(self.fds.len(), Ordering::Relaxed);
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

impl MapLine {
    fn same_file(&self, o: &MapLine) -> bool {
        (self.dev_major, self.dev_minor, self.inode) == (o.dev_major, o.dev_minor, o.inode)
    }

    fn dev(&self) -> u64 {
        libc::makedev(self.dev_major, self.dev_minor)
    }
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

/// A run of adjacent mappings of one file at consecutive offsets, and the part of the region
/// that lies in it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Run {
    /// The run's first mapping.
    line: MapLine,
    /// End address of the run's last mapping.
    run_end: u64,
    /// The region's part: `[start, end)`.
    start: u64,
    end: u64,
}

impl Run {
    /// File offset of address `va` of the run.
    fn off_at(&self, va: u64) -> u64 {
        self.line.offset + (va - self.line.start)
    }
}

/// The runs covering `[addr, addr+len)` if every byte lies in a writable shared file mapping
/// (adjacent mappings of one file at consecutive offsets form one run), in address order.
fn covering(maps: &str, addr: u64, len: u64) -> Option<Vec<Run>> {
    let end = addr.checked_add(len)?;
    let mut runs: Vec<Run> = Vec::new();
    let mut next = addr;
    for l in maps.lines().filter_map(parse_line) {
        if l.end <= next || next >= end {
            continue;
        }
        if l.start > next || !l.writable || !l.shared || l.inode == 0 {
            return None;
        }
        let seg_end = l.end.min(end);
        match runs.last_mut() {
            Some(r)
                if r.line.same_file(&l)
                    && r.run_end == l.start
                    && r.off_at(r.run_end) == l.offset =>
            {
                r.run_end = l.end;
                r.end = seg_end;
            }
            _ => runs.push(Run {
                start: next,
                end: seg_end,
                run_end: l.end,
                line: l,
            }),
        }
        next = seg_end;
    }
    (next >= end && !runs.is_empty()).then_some(runs)
}

fn stat_fd(fd: i32) -> Option<libc::stat> {
    // SAFETY: fstat into a zeroed local stat struct; an invalid fd just fails.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    (unsafe { libc::fstat(fd, &mut st) } == 0).then_some(st)
}

fn same_file(fd: i32, l: &MapLine) -> bool {
    stat_fd(fd).is_some_and(|st| st.st_ino == l.inode && st.st_dev == l.dev())
}

/// Open `path` read-write (close-on-exec).
fn open_rw(path: &str) -> Option<OwnedFd> {
    let c = std::ffi::CString::new(path).ok()?;
    // SAFETY: valid NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    // SAFETY: a new fd that nothing else owns.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Duplicate one of our fds (close-on-exec).
fn dup(fd: i32) -> Option<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on an fd number; an invalid one just fails.
    let d = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    // SAFETY: a new fd that nothing else owns.
    (d >= 0).then(|| unsafe { OwnedFd::from_raw_fd(d) })
}

/// The application's read-write fds by (device, inode), read once from `/proc/self/fd`.
fn app_fds() -> HashMap<(u64, u64), i32> {
    let mut m = HashMap::new();
    let Ok(rd) = std::fs::read_dir("/proc/self/fd") else {
        return m;
    };
    for e in rd.flatten() {
        let Some(n) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: F_GETFL on a number that may or may not be an open fd.
        let fl = unsafe { libc::fcntl(n, libc::F_GETFL) };
        if fl < 0 || fl & libc::O_ACCMODE != libc::O_RDWR {
            continue;
        }
        if let Some(st) = stat_fd(n) {
            m.entry((st.st_dev, st.st_ino)).or_insert(n);
        }
    }
    m
}

/// Our own read-write fd of the file behind `l`: its path (if not deleted), a duplicate of an
/// fd the application holds (memfd, unlinked hugepage files; `app` is filled on first need), or
/// `/proc/self/map_files` (needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE).
fn file_fd(l: &MapLine, app: &mut Option<HashMap<(u64, u64), i32>>) -> Option<OwnedFd> {
    if l.path.starts_with('/') && !l.path.ends_with(" (deleted)") {
        if let Some(fd) = open_rw(&l.path).filter(|fd| same_file(fd.as_raw_fd(), l)) {
            return Some(fd);
        }
    }
    if let Some(fd) = app.get_or_insert_with(app_fds).get(&(l.dev(), l.inode)) {
        if let Some(d) = dup(*fd).filter(|d| same_file(d.as_raw_fd(), l)) {
            return Some(d);
        }
    }
    open_rw(&format!("/proc/self/map_files/{:x}-{:x}", l.start, l.end))
        .filter(|fd| same_file(fd.as_raw_fd(), l))
}

/// Page size a mapping of `fd` must be aligned to (the hugepage size on hugetlbfs).
fn page_size(fd: i32) -> Option<u32> {
    // SAFETY: fstatfs into a zeroed local.
    let mut sf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; fd is an fd we hold.
    if unsafe { libc::fstatfs(fd, &mut sf) } != 0 {
        return None;
    }
    if sf.f_type == HUGETLBFS_MAGIC as libc::__fsword_t && sf.f_bsize > 4096 {
        u32::try_from(sf.f_bsize).ok().filter(|p| *p <= MAX_PAGE)
    } else {
        Some(4096)
    }
}

/// How many backing fds this process may hold: a quarter of its fd limit, so that regions never
/// take the fds the application needs.
fn fd_budget() -> usize {
    // SAFETY: getrlimit into a zeroed local.
    let mut rl: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return 0;
    }
    (rl.rlim_cur / 4).min(1 << 20) as usize
}

/// At registration: the shared files behind `[addr, addr+len)`, if every byte has one.
pub(crate) fn detect(addr: u64, len: u64) -> Option<Backing> {
    if len == 0 {
        return None;
    }
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let runs = covering(&maps, addr, len)?;
    if runs.len() > MAX_PIECES {
        crate::log::debug(&format!(
            "region {addr:#x}+{len}: {} file pieces (more than {MAX_PIECES}); using process_vm_*",
            runs.len()
        ));
        return None;
    }
    let mut b = Backing {
        pieces: Vec::with_capacity(runs.len()),
        fds: Vec::new(),
    };
    let mut app = None;
    let mut known: HashMap<(u64, u64), (i32, u32)> = HashMap::new();
    for r in &runs {
        let id = (r.line.dev(), r.line.inode);
        let (fd, page) = match known.get(&id) {
            Some(&v) => v,
            None => {
                let budget = fd_budget();
                if HELD_FDS.load(Ordering::Relaxed) >= budget {
                    crate::log::debug(&format!(
                        "region {addr:#x}+{len}: {budget} backing fds held already; \
                         using process_vm_*"
                    ));
                    return None;
                }
                let fd = file_fd(&r.line, &mut app)?;
                let v = (fd.as_raw_fd(), page_size(fd.as_raw_fd())?);
                b.fds.push(fd);
                HELD_FDS.fetch_add(1, Ordering::Relaxed);
                known.insert(id, v);
                v
            }
        };
        let pg = u64::from(page);
        // Mappings of the file are page aligned, so the aligned range stays inside the run.
        let (start, end) = (r.start - r.start % pg, r.end.div_ceil(pg) * pg);
        if start < r.line.start || end > r.run_end {
            return None;
        }
        b.pieces.push(BackingPiece {
            fd: fd as u32,
            page,
            dev: id.0,
            ino: id.1,
            vaddr: start,
            off: r.off_at(start),
            len: end - start,
        });
    }
    Some(b)
}

/// Our mapping of an MR's pieces, laid out as in the owner.
pub(crate) struct Mapping {
    /// The reservation that holds every piece (unmapped as a whole).
    res: *mut u8,
    res_len: usize,
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
        // SAFETY: unmapping the reservation (and the pieces in it) this Mapping created; the
        // last user dropped its Arc.
        unsafe { libc::munmap(self.res as *mut libc::c_void, self.res_len) };
    }
}

/// True if `pieces` is a table [`Mapping::new`] can lay out: page sizes powers of two between
/// 4 KiB and [`MAX_PAGE`], every address, offset and length a multiple of its page, non-empty
/// pieces at contiguous addresses.
fn well_formed(pieces: &[BackingPiece]) -> bool {
    let mut next = pieces.first().map(|p| p.vaddr);
    pieces.iter().all(|p| {
        let pg = u64::from(p.page);
        let ok = p.page.is_power_of_two()
            && (4096..=MAX_PAGE).contains(&p.page)
            && p.len > 0
            && (p.vaddr | p.off | p.len) % pg == 0
            && next == Some(p.vaddr)
            && p.off.checked_add(p.len).is_some();
        next = p.vaddr.checked_add(p.len);
        ok
    })
}

impl Mapping {
    /// Map `pieces` (a region's table) so that the owner's address `addr` of the region of
    /// `len` bytes is [`Mapping::start`] here and every other byte is at the same distance from
    /// it as in the owner. `fd_of` gives an fd of a piece's file (closed after mapping; checked
    /// to be the file the table names). None if the table is malformed, a file is shorter than
    /// its piece or any mapping fails.
    fn new(
        pieces: &[BackingPiece],
        addr: u64,
        len: u64,
        mut fd_of: impl FnMut(&BackingPiece) -> Option<OwnedFd>,
    ) -> Option<Mapping> {
        if pieces.is_empty() || pieces.len() > MAX_PIECES || !well_formed(pieces) {
            return None;
        }
        let first = pieces[0].vaddr;
        let last = pieces[pieces.len() - 1];
        let total = last.vaddr + last.len - first;
        if addr < first || addr.checked_add(len)? > first + total {
            return None;
        }
        let align = pieces.iter().map(|p| u64::from(p.page)).max()?;
        let res_len = usize::try_from(total.checked_add(align)?).ok()?;
        // SAFETY: a fresh inaccessible reservation at a kernel-chosen address.
        let res = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                res_len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if res == libc::MAP_FAILED {
            return None;
        }
        let mut m = Mapping {
            res: res as *mut u8,
            res_len,
            start: std::ptr::null_mut(),
            len,
        };
        // `base` is congruent to the owner's first address modulo the largest page, so every
        // piece lands at an address aligned to its own page.
        let base = (res as u64).div_ceil(align) * align + first % align;
        for p in pieces {
            let fd = fd_of(p)?;
            let st = stat_fd(fd.as_raw_fd())?;
            if (st.st_dev, st.st_ino) != (p.dev, p.ino) || (st.st_size as u64) < p.off + p.len {
                return None;
            }
            let at = base + (p.vaddr - first);
            // SAFETY: replaces part of our own reservation ([at, at+len) lies inside it:
            // at - res < align and at + len <= base + total) with a shared mapping of a file we
            // hold, at an address and offset aligned to the file's page size.
            let q = unsafe {
                libc::mmap(
                    at as *mut libc::c_void,
                    p.len as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_FIXED,
                    fd.as_raw_fd(),
                    p.off as libc::off_t,
                )
            };
            if q as u64 != at {
                return None;
            }
        }
        m.start = (base + (addr - first)) as *mut u8;
        Some(m)
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

    /// Map our own newly registered region (slot, key, `[addr, addr+len)`) now.
    pub(crate) fn insert_own(
        &self,
        slot: u32,
        owner: u32,
        key: u32,
        b: &Backing,
        addr: u64,
        len: u64,
    ) {
        let map = Mapping::new(&b.pieces, addr, len, |p| dup(p.fd as i32)).map(Arc::new);
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
    /// first use. None: anonymous memory, or the files cannot be reached from here.
    pub(crate) fn get(&self, slot: u32, owner: u32, key: u32, rec: &MrRec) -> Option<Arc<Mapping>> {
        let n = rec.backing_pieces.load(Ordering::Acquire) as usize;
        if n == 0 {
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
        // The table and the fds it names stay valid while the key is unchanged: our caller
        // holds the region's in-flight count, which deregistration waits for.
        let map = peer_table(owner, n, rec.backing_table.load(Ordering::Relaxed))
            .and_then(|pieces| {
                let pidfd = crate::util::pidfd_open(owner)?;
                Mapping::new(
                    &pieces,
                    rec.addr.load(Ordering::Relaxed),
                    rec.len.load(Ordering::Relaxed),
                    |p| crate::util::pidfd_getfd_from(&pidfd, p.fd),
                )
            })
            .filter(|_| rec.key.load(Ordering::SeqCst) == key)
            .map(Arc::new);
        if map.is_none() {
            crate::log::debug(&format!(
                "MR slot {slot} key {key:#x} of pid {owner} ({n} file pieces): shared files \
                 not mappable here; using process_vm_*"
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

/// Read the `n` pieces of the table at `table` in process `pid` (which may be us).
fn peer_table(pid: u32, n: usize, table: u64) -> Option<Vec<BackingPiece>> {
    if n > MAX_PIECES {
        return None;
    }
    let mut v = vec![BackingPiece::default(); n];
    let bytes = n * std::mem::size_of::<BackingPiece>();
    crate::util::read_from(pid, &[(v.as_mut_ptr() as u64, bytes)], &[(table, bytes)]).ok()?;
    Some(v)
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
7f1000000000-7f1000200000 rw-s 00000000 00:2d 5001                       /dev/hugepages/spdk_pid7map_0
7f1000200000-7f1000400000 rw-s 00000000 00:2d 5002                       /dev/hugepages/spdk_pid7map_1
7f1000400000-7f1000600000 rw-s 00000000 00:2d 5003                       /dev/hugepages/spdk_pid7map_2
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
        // Inside one hugepage mapping; across two adjacent mappings of the same file (one run).
        let r = covering(MAPS, 0x7f0000100000, 0x1000).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].line.inode, r[0].off_at(r[0].start)), (4242, 0x100000));
        let r = covering(MAPS, 0x7f00001ff000, 0x2000).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].off_at(r[0].start), r[0].run_end),
            (0x1ff000, 0x7f0000400000)
        );
        // DPDK's default layout: one file per hugepage at consecutive addresses.
        let r = covering(MAPS, 0x7f10001ff000, 0x202000).unwrap();
        let parts: Vec<_> = r.iter().map(|r| (r.line.inode, r.start, r.end)).collect();
        assert_eq!(
            parts,
            [
                (5001, 0x7f10001ff000, 0x7f1000200000),
                (5002, 0x7f1000200000, 0x7f1000400000),
                (5003, 0x7f1000400000, 0x7f1000401000)
            ]
        );
        // Two kinds of file side by side are two runs.
        assert_eq!(covering(MAPS, 0x7f00003ff000, 0x2000).unwrap().len(), 2);
        // Private / anonymous memory, read-only part, a gap, the heap: not shareable.
        assert!(covering(MAPS, 0x7f0000500000, 0x1000).is_none());
        assert!(covering(MAPS, 0x7f0000400800, 0x1000).is_none());
        assert!(covering(MAPS, 0x7f0000401000, 0x100000).is_none());
        assert!(covering(MAPS, 0x7f1000400000, 0x300000).is_none());
        assert!(covering(MAPS, 0x55d0c0000000, 16).is_none());
        assert!(covering(MAPS, 0x1000, 16).is_none());
    }

    /// `n` memfds of `per_file` bytes each (hugetlbfs ones when `huge`), mapped shared at
    /// consecutive addresses (aligned to `per_file`): (first address, fds). None when hugetlbfs
    /// memory is not available (the reason is printed).
    fn consecutive_files(n: usize, per_file: usize, huge: bool) -> Option<(u64, Vec<i32>)> {
        let flags = libc::MFD_CLOEXEC | if huge { libc::MFD_HUGETLB } else { 0 };
        // SAFETY: test-only reservation at a kernel-chosen address.
        let res = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                (n + 1) * per_file,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(res, libc::MAP_FAILED);
        let base = (res as u64).div_ceil(per_file as u64) * per_file as u64;
        let mut fds = Vec::new();
        for i in 0..n {
            // SAFETY: test-only syscalls on a memfd we create, mapped inside our reservation.
            unsafe {
                let fd = libc::memfd_create(c"mrmap-piece".as_ptr(), flags);
                if fd < 0 || libc::ftruncate(fd, per_file as i64) != 0 {
                    eprintln!("test not run: no memfd (errno {})", crate::util::errno());
                    return None;
                }
                let at = base + (i * per_file) as u64;
                let p = libc::mmap(
                    at as *mut libc::c_void,
                    per_file,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_FIXED,
                    fd,
                    0,
                );
                if p as u64 != at {
                    eprintln!("test not run: mapping file {i} failed (no free huge pages?)");
                    return None;
                }
                fds.push(fd);
            }
        }
        Some((base, fds))
    }

    #[test]
    fn hugetlb_region_over_several_files_is_mapped_at_huge_page_alignment() {
        const HP: u64 = 2 << 20;
        let Some((base, fds)) = consecutive_files(3, HP as usize, true) else {
            return;
        };
        // A region starting inside the first huge page (not page aligned), ending in the third.
        let addr = base + 12345;
        let len = 2 * HP + 4096;
        let b = detect(addr, len).expect("hugetlbfs mappings must be detected");
        assert_eq!(b.pieces.len(), 3, "one piece per file: {:?}", b.pieces);
        for (i, p) in b.pieces.iter().enumerate() {
            assert_eq!(
                (p.page as u64, p.vaddr, p.off, p.len),
                (HP, base + i as u64 * HP, 0, HP)
            );
        }
        let m = Mapping::new(&b.pieces, addr, len, |p| dup(p.fd as i32)).expect("map");
        let q0 = m.ptr(addr, addr, 1).unwrap();
        assert_eq!((q0 - 12345) % HP, 0, "huge-page aligned layout");
        for k in [0, HP, 2 * HP] {
            // SAFETY: inside the mapping (ptr checked the range).
            unsafe { *(m.ptr(addr, addr + k, 1).unwrap() as *mut u8) = 0xa5 };
            // SAFETY: inside the application's mapping of the files.
            let seen = unsafe { *((addr + k) as *const u8) };
            assert_eq!(seen, 0xa5, "same pages at +{k}");
        }
        assert_eq!(m.ptr(addr, addr + len, 1), None, "past the region");
        drop(m);
        drop(b);
        for fd in fds {
            // SAFETY: closing our test fds (the mappings stay until the process exits).
            unsafe { libc::close(fd) };
        }
    }

    #[test]
    fn region_over_several_memfds_is_one_contiguous_mapping() {
        let Some((base, fds)) = consecutive_files(3, 2 * 4096, false) else {
            panic!("memfds must be available");
        };
        let addr = base + 4096 + 100;
        let len = 4 * 4096;
        let b = detect(addr, len).expect("memfd mappings must be detected");
        let got: Vec<_> = b
            .pieces
            .iter()
            .map(|p| (p.vaddr - base, p.off, p.len))
            .collect();
        assert_eq!(got, [(4096, 4096, 4096), (8192, 0, 8192), (16384, 0, 8192)]);
        assert_eq!(
            b.fds.len(),
            3,
            "one fd per distinct file, held by the registration"
        );
        let m = Mapping::new(&b.pieces, addr, len, |p| dup(p.fd as i32)).expect("map");
        let q0 = m.ptr(addr, addr, len).expect("the whole region at once");
        for k in [0, 4000, 4095, 8191, 8192, len - 1] {
            assert_eq!(m.ptr(addr, addr + k, 1), Some(q0 + k), "contiguous at +{k}");
            // SAFETY: inside the mapping.
            unsafe { *((q0 + k) as *mut u8) = k as u8 ^ 0x5a };
            // SAFETY: inside the application's mapping of the files.
            assert_eq!(unsafe { *((addr + k) as *const u8) }, k as u8 ^ 0x5a);
        }
        // A table naming another file than the fd it gets, a gap, a misaligned or empty piece.
        let mut wrong = b.pieces.clone();
        wrong[1].ino ^= 1;
        assert!(Mapping::new(&wrong, addr, len, |p| dup(p.fd as i32)).is_none());
        let mut gap = b.pieces.clone();
        gap[2].vaddr += 4096;
        assert!(!well_formed(&gap));
        let mut odd = b.pieces.clone();
        odd[0].off += 100;
        assert!(!well_formed(&odd));
        let mut empty = b.pieces.clone();
        empty[0].len = 0;
        assert!(!well_formed(&empty));
        let mut page = b.pieces.clone();
        page[1].page = 3000;
        assert!(!well_formed(&page));
        assert!(well_formed(&b.pieces));
        drop(m);
        drop(b);
        for fd in fds {
            // SAFETY: closing our test fds.
            unsafe { libc::close(fd) };
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
            assert_eq!(b.pieces.len(), 1);
            assert_eq!((b.pieces[0].off, b.pieces[0].len), (4096, 8192));
            let m = Mapping::new(&b.pieces, addr, 5000, |p| dup(p.fd as i32)).expect("map");
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
