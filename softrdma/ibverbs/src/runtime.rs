//! The per-process runtime: fabric mapping, node identity, object registries, the control /
//! doorbell socket and the event thread. Created lazily on first use and re-created in a forked
//! child (objects created before `fork` are not usable in the child).

use crate::faults::Faults;
use softrdma_abi::fabric::{self, Counter, Fabric, MAX_NODES};
use std::collections::HashMap;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicPtr, AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Process-wide state.
pub(crate) struct Runtime {
    /// The shared fabric segment.
    pub fabric: Fabric,
    /// Our pid.
    pub pid: u32,
    /// Our node slot.
    pub node: usize,
    /// Local QPs by slot → `*mut QpWrap`.
    pub qps: Mutex<HashMap<u32, usize>>,
    /// Local SRQs by slot → `*mut SrqWrap`.
    pub srqs: Mutex<HashMap<u32, usize>>,
    /// Local CQs by slot → `*mut CqWrap`.
    pub cqs: Mutex<HashMap<u32, usize>>,
    /// Open contexts (`*mut CtxWrap`).
    pub contexts: Mutex<Vec<usize>>,
    /// Fault injection state.
    pub faults: Faults,
    /// Control / doorbell socket (bound to `@softrdma/<uid>/node/<pid>`).
    pub sock: UnixDatagram,
    /// The shared context handed to librdmacm.
    pub shared_ctx: Mutex<usize>,
    /// CM drop handler registered by librdmacm.
    pub cm_drop: Mutex<Option<(softrdma_abi::private::CmDropHandler, usize)>>,
    /// Device-removal handler registered by librdmacm.
    pub device_handler: Mutex<Option<(softrdma_abi::private::DeviceHandler, usize)>>,
    /// librdmacm's handler of the control command `addr_change` and its argument.
    pub addr_change: Mutex<Option<(softrdma_abi::private::AddrChangeHandler, usize)>>,
    /// Number of QPs created so far in this process (for `qp=#N` filters).
    pub qp_seq: AtomicU32,
    /// Peer event sockets duplicated with pidfd_getfd: (pid, cq slot, cq generation) → our fd.
    pub peer_fds: Mutex<HashMap<(u32, u32, u32), i32>>,
    /// Cached abstract socket addresses of peers' node sockets.
    pub peer_addrs: Mutex<HashMap<u32, SocketAddr>>,
    /// Our ring arena (None: rings live on the heap, peers use process_vm_*).
    pub arena: Option<crate::arena::Arena>,
    /// Peers' arenas mapped here.
    pub peers: crate::arena::Peers,
    /// Shared-file MRs (peers' and ours) mapped here: the memcpy data path.
    pub maps: crate::mrmap::MapCache,
}

static RT: AtomicPtr<Runtime> = AtomicPtr::new(std::ptr::null_mut());
static INIT: AtomicU32 = AtomicU32::new(0);
static ATFORK: std::sync::Once = std::sync::Once::new();

extern "C" fn atfork_child() {
    // The child has no event thread and a different pid: start from scratch on next use.
    RT.store(std::ptr::null_mut(), Ordering::SeqCst);
    INIT.store(0, Ordering::SeqCst);
}

/// The runtime if it already exists (never creates it).
pub(crate) fn existing() -> Option<&'static Runtime> {
    let p = RT.load(Ordering::Acquire);
    // SAFETY: RT only ever holds a leaked Box<Runtime>, never freed.
    (!p.is_null()).then(|| unsafe { &*p })
}

/// The runtime, creating it on first use. Returns None (after logging) if the fabric cannot
/// be set up.
pub(crate) fn get() -> Option<&'static Runtime> {
    loop {
        let p = RT.load(Ordering::Acquire);
        if !p.is_null() {
            // SAFETY: RT only ever holds a leaked Box<Runtime>, never freed.
            return Some(unsafe { &*p });
        }
        if INIT
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            ATFORK.call_once(|| {
                // SAFETY: registering a plain extern "C" child handler.
                unsafe { libc::pthread_atfork(None, None, Some(atfork_child)) };
            });
            match Runtime::create() {
                Ok(rt) => {
                    let rt: &'static Runtime = Box::leak(Box::new(rt));
                    RT.store(rt as *const Runtime as *mut Runtime, Ordering::Release);
                    let spawned = std::thread::Builder::new()
                        .name("softrdma-event".into())
                        .spawn(move || crate::event_loop::run(rt));
                    if let Err(e) = spawned {
                        crate::log::warn(&format!("cannot start the event thread: {e}"));
                    }
                    return Some(rt);
                }
                Err(e) => {
                    crate::log::warn(&format!("cannot initialise: {e}"));
                    INIT.store(0, Ordering::Release);
                    return None;
                }
            }
        }
        std::thread::sleep(Duration::from_micros(50));
    }
}

impl Runtime {
    fn create() -> std::io::Result<Runtime> {
        let fabric = Fabric::open()?;
        let pid = std::process::id();
        let start = fabric::pid_starttime(pid).unwrap_or(0);
        let mut node = None;
        for i in 0..MAX_NODES {
            let n = fabric.node(i);
            let owner = n.owner.load(Ordering::Acquire);
            let free = owner == 0
                || (owner != pid
                    && (!fabric::pid_alive(owner)
                        || fabric::pid_starttime(owner)
                            != Some(n.starttime.load(Ordering::Relaxed))));
            if free
                && n.owner
                    .compare_exchange(owner, pid, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                n.starttime.store(start, Ordering::Relaxed);
                // A dead previous owner may have left its port down.
                if n.flags.swap(0, Ordering::AcqRel) & fabric::NODE_PORT_DOWN != 0 {
                    fabric.header().ports_down.fetch_sub(1, Ordering::AcqRel);
                }
                for c in &n.counters {
                    c.store(0, Ordering::Relaxed);
                }
                node = Some(i);
                break;
            }
        }
        let node = node.ok_or_else(|| std::io::Error::other("fabric node table full"))?;
        let name = fabric::node_socket_name(pid);
        let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
        let sock = UnixDatagram::bind_addr(&addr)?;
        sock.set_nonblocking(true)?;
        let faults = Faults::from_env();
        let arena = crate::arena::Arena::create(&fabric, node, pid, start);
        if arena.is_none() {
            crate::log::debug("no ring arena: rings on the heap (process_vm_* for peers)");
        }
        crate::log::debug(&format!("runtime up: node slot {node}, socket @{name}"));
        Ok(Runtime {
            fabric,
            pid,
            node,
            qps: Mutex::new(HashMap::new()),
            cqs: Mutex::new(HashMap::new()),
            srqs: Mutex::new(HashMap::new()),
            contexts: Mutex::new(Vec::new()),
            faults,
            sock,
            shared_ctx: Mutex::new(0),
            cm_drop: Mutex::new(None),
            device_handler: Mutex::new(None),
            addr_change: Mutex::new(None),
            qp_seq: AtomicU32::new(0),
            peer_fds: Mutex::new(HashMap::new()),
            peer_addrs: Mutex::new(HashMap::new()),
            arena,
            peers: crate::arena::Peers::new(),
            maps: crate::mrmap::MapCache::new(),
        })
    }

    /// Allocate a zeroed ring of `n` `T`s: in the arena when possible, else on the heap.
    pub(crate) fn alloc_ring<T: Copy + Default>(&self, n: usize) -> *mut T {
        let bytes = n.max(1) * std::mem::size_of::<T>();
        if let Some(p) = self.arena.as_ref().and_then(|a| a.alloc(bytes)) {
            // All-zero is a valid T for the POD ring entries used here (RecvWqe, ibv_wc).
            return p as *mut T;
        }
        let v: Box<[T]> = vec![T::default(); n.max(1)].into_boxed_slice();
        Box::into_raw(v) as *mut T
    }

    /// Free a ring from [`Runtime::alloc_ring`] (same `n`).
    ///
    /// # Safety
    /// `p` must come from `alloc_ring::<T>(n)` and not be used afterwards.
    pub(crate) unsafe fn free_ring<T>(&self, p: *mut T, n: usize) {
        if p.is_null() {
            return;
        }
        match &self.arena {
            Some(a) if a.contains(p as *const u8) => {
                a.free(p as *mut u8, n.max(1) * std::mem::size_of::<T>())
            }
            // SAFETY: heap rings are boxed slices of n.max(1) entries (alloc_ring).
            _ => drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(p, n.max(1))) }),
        }
    }

    /// Our pointer to `[addr, addr+len)` of process `pid` if it lies in that process's arena.
    pub(crate) fn peer_ptr(&self, pid: u32, addr: u64, len: u64) -> Option<*mut u8> {
        self.peers.translate(&self.fabric, pid, addr, len)
    }

    /// Add `delta` to one of our counters.
    pub(crate) fn count(&self, c: Counter, delta: i64) {
        self.fabric.node(self.node).counters[c as usize].fetch_add(delta as u64, Ordering::Relaxed);
    }

    /// Send a datagram to the node socket of `pid` (best effort).
    pub(crate) fn send_to(&self, pid: u32, msg: &str) {
        let mut g = self.peer_addrs.lock().unwrap_or_else(|e| e.into_inner());
        if g.len() > 4096 {
            g.clear();
        }
        let addr = match g.get(&pid) {
            Some(a) => a.clone(),
            None => {
                let name = fabric::node_socket_name(pid);
                let Ok(a) = SocketAddr::from_abstract_name(name.as_bytes()) else {
                    return;
                };
                g.insert(pid, a.clone());
                a
            }
        };
        drop(g);
        if let Err(e) = self.sock.send_to_addr(msg.as_bytes(), &addr) {
            crate::log::debug(&format!("doorbell '{msg}' to pid {pid} failed: {e}"));
        }
    }

    /// Queue a completion event directly on a peer's channel (duplicating its event socket
    /// with pidfd_getfd once per CQ). False if that is not possible; the caller then rings the
    /// owner's doorbell instead.
    pub(crate) fn remote_cq_event(
        &self,
        pid: u32,
        slot: u32,
        rec: &softrdma_abi::fabric::CqRec,
    ) -> bool {
        let gen = rec.generation.load(Ordering::Acquire);
        let chan = rec.chan_fd.load(Ordering::Acquire);
        let cq_ptr = rec.cq_ptr.load(Ordering::Relaxed);
        if chan == 0 || cq_ptr == 0 {
            return false;
        }
        let key = (pid, slot, gen);
        let mut g = self.peer_fds.lock().unwrap_or_else(|e| e.into_inner());
        let fd = match g.get(&key) {
            Some(&fd) => fd,
            None => {
                if g.len() >= 1024 {
                    for (_, fd) in g.drain() {
                        // SAFETY: closing fds we duplicated.
                        unsafe { libc::close(fd) };
                    }
                }
                let Some(fd) = crate::util::pidfd_getfd(pid, chan - 1) else {
                    return false;
                };
                g.insert(key, fd);
                fd
            }
        };
        // The CQ must still be the same one (same generation, same channel) right now.
        if rec.generation.load(Ordering::Acquire) != gen
            || rec.chan_fd.load(Ordering::Acquire) != chan
        {
            return false;
        }
        crate::cq::send_event(fd, cq_ptr)
    }

    /// Allocate a free record among `n` using `owner_of(i)` words, starting at a rotating hint.
    /// Records whose owner died are reclaimed on a second pass.
    pub(crate) fn alloc_slot<F>(&self, n: usize, hint: &AtomicU32, owner_of: F) -> Option<usize>
    where
        F: Fn(usize) -> &'static AtomicU32,
    {
        let start = hint.fetch_add(1, Ordering::Relaxed) as usize;
        for pass in 0..2 {
            for k in 0..n {
                let i = (start + k) % n;
                let w = owner_of(i);
                let cur = w.load(Ordering::Relaxed);
                let claim = cur == 0 || (pass == 1 && cur != self.pid && !fabric::pid_alive(cur));
                if claim
                    && w.compare_exchange(cur, self.pid, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                {
                    hint.store((i + 1) as u32, Ordering::Relaxed);
                    return Some(i);
                }
            }
        }
        None
    }
}
