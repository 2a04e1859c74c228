//! The per-process ring arena: a sparse file (`arena-<pid>-<starttime>` in the fabric directory)
//! mapped shared, from which receive-queue, SRQ and CQ rings are allocated. Peers map the same
//! file, so popping a receive WQE or appending a completion is a plain memory access instead of
//! a `process_vm_*` call. Rings that do not fit (or when the arena cannot be created, or tmpfs is
//! full) fall back to the heap and the `process_vm_*` path.

use softrdma_abi::fabric::{self, Fabric, MAX_NODES};
use std::collections::HashMap;
use std::ffi::CString;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

/// Virtual size of an arena (sparse; pages are reserved with fallocate when a ring is allocated).
const ARENA_LEN: usize = 1 << 32;
/// Larger rings stay on the heap (and use process_vm_* from peers).
const MAX_RING_BYTES: usize = 32 << 20;
/// Stop using the arena once this much is reserved (tmpfs may be small, e.g. 64 MiB in Docker).
const MAX_ARENA_BYTES: usize = 48 << 20;

struct State {
    next: usize,
    reserved: usize,
    free: HashMap<usize, Vec<usize>>,
}

/// Our own arena.
pub(crate) struct Arena {
    base: usize,
    fd: i32,
    st: Mutex<State>,
}

impl Arena {
    /// Create the arena of this process (removing arenas of dead processes first).
    pub(crate) fn create(f: &Fabric, node: usize, pid: u32, starttime: u64) -> Option<Arena> {
        cleanup_stale();
        let path = CString::new(fabric::arena_path(pid, starttime)).ok()?;
        // SAFETY: valid path; plain open/ftruncate/mmap on a file we create.
        unsafe {
            let fd = libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
                0o600,
            );
            if fd < 0 {
                return None;
            }
            if libc::ftruncate(fd, ARENA_LEN as libc::off_t) != 0 {
                libc::close(fd);
                libc::unlink(path.as_ptr());
                return None;
            }
            let p = libc::mmap(
                std::ptr::null_mut(),
                ARENA_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            );
            if p == libc::MAP_FAILED {
                libc::close(fd);
                libc::unlink(path.as_ptr());
                return None;
            }
            let n = f.node(node);
            n.arena_len.store(ARENA_LEN as u64, Ordering::Relaxed);
            n.arena_base.store(p as u64, Ordering::Release);
            Some(Arena {
                base: p as usize,
                fd,
                st: Mutex::new(State {
                    next: 0,
                    reserved: 0,
                    free: HashMap::new(),
                }),
            })
        }
    }

    /// Allocate `bytes` of zeroed, page-aligned memory in the arena.
    pub(crate) fn alloc(&self, bytes: usize) -> Option<*mut u8> {
        let size = bytes.max(1).div_ceil(4096) * 4096;
        if size > MAX_RING_BYTES {
            return None;
        }
        let mut st = self.st.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(off) = st.free.get_mut(&size).and_then(|v| v.pop()) {
            let p = (self.base + off) as *mut u8;
            // SAFETY: [off, off+size) is a previously reserved block of our mapping.
            unsafe { std::ptr::write_bytes(p, 0, size) };
            return Some(p);
        }
        if st.reserved + size > MAX_ARENA_BYTES || st.next + size > ARENA_LEN {
            return None;
        }
        let off = st.next;
        // Reserve the pages now so a full tmpfs fails here (ENOSPC) instead of SIGBUS later.
        // SAFETY: fallocate on our own fd within the file size.
        if unsafe { libc::fallocate(self.fd, 0, off as libc::off_t, size as libc::off_t) } != 0 {
            return None;
        }
        st.next += size;
        st.reserved += size;
        Some((self.base + off) as *mut u8)
    }

    /// True if `p` was allocated from this arena.
    pub(crate) fn contains(&self, p: *const u8) -> bool {
        let a = p as usize;
        a >= self.base && a < self.base + ARENA_LEN
    }

    /// Return a block from [`Arena::alloc`].
    pub(crate) fn free(&self, p: *mut u8, bytes: usize) {
        let size = bytes.max(1).div_ceil(4096) * 4096;
        let off = p as usize - self.base;
        let mut st = self.st.lock().unwrap_or_else(|e| e.into_inner());
        st.free.entry(size).or_default().push(off);
    }
}

/// Remove arena files of processes that no longer exist.
fn cleanup_stale() {
    let dir = fabric::fabric_dir();
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("arena-") else {
            continue;
        };
        let mut it = rest.split('-');
        let (Some(pid), Some(st)) = (
            it.next().and_then(|p| p.parse::<u32>().ok()),
            it.next().and_then(|s| s.parse::<u64>().ok()),
        ) else {
            continue;
        };
        if !fabric::pid_alive(pid) || fabric::pid_starttime(pid) != Some(st) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// A peer's arena mapped into our address space.
#[derive(Clone, Copy)]
struct PeerMap {
    node: usize,
    starttime: u64,
    owner_base: u64,
    len: u64,
    local_base: u64,
}

/// Cache of peer arena mappings (never unmapped: a concurrent user may still hold a pointer).
pub(crate) struct Peers {
    map: Mutex<HashMap<u32, Option<PeerMap>>>,
}

impl Peers {
    pub(crate) fn new() -> Peers {
        Peers {
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Our address of `[addr, addr+len)` in `pid`'s memory, if it lies in `pid`'s arena.
    pub(crate) fn translate(&self, f: &Fabric, pid: u32, addr: u64, len: u64) -> Option<*mut u8> {
        let mut g = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let cached = g.get(&pid).copied();
        let m = match cached {
            Some(Some(m)) if valid(f, pid, &m) => m,
            Some(None) => return None,
            _ => {
                let m = map_peer(f, pid);
                g.insert(pid, m);
                m?
            }
        };
        drop(g);
        let end = addr.checked_add(len)?;
        if addr < m.owner_base || end > m.owner_base + m.len {
            return None;
        }
        Some((m.local_base + (addr - m.owner_base)) as *mut u8)
    }
}

fn valid(f: &Fabric, pid: u32, m: &PeerMap) -> bool {
    let n = f.node(m.node);
    n.owner.load(Ordering::Acquire) == pid && n.starttime.load(Ordering::Relaxed) == m.starttime
}

fn map_peer(f: &Fabric, pid: u32) -> Option<PeerMap> {
    let node = (0..MAX_NODES).find(|&i| f.node(i).owner.load(Ordering::Acquire) == pid)?;
    let n = f.node(node);
    let starttime = n.starttime.load(Ordering::Relaxed);
    let owner_base = n.arena_base.load(Ordering::Acquire);
    let len = n.arena_len.load(Ordering::Relaxed);
    if owner_base == 0 || len == 0 {
        return None;
    }
    let path = CString::new(fabric::arena_path(pid, starttime)).ok()?;
    // SAFETY: open + shared mapping of a peer's arena file; the fd is closed after mmap.
    let p = unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if fd < 0 {
            return None;
        }
        let p = libc::mmap(
            std::ptr::null_mut(),
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        );
        libc::close(fd);
        p
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    Some(PeerMap {
        node,
        starttime,
        owner_base,
        len,
        local_base: p as u64,
    })
}
