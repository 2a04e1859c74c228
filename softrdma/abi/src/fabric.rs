//! Layout of the softrdma fabric segment: one sparse file (default
//! `/dev/shm/softrdma-<uid>/fabric`) mapped `MAP_SHARED` by every softrdma process of that uid.
//!
//! All records are plain data plus atomics, valid when all-zero (a fresh file is a valid, empty
//! fabric). A record is owned by the process whose pid is in its `owner` word; a record whose
//! owner is dead may be reclaimed by anyone. Peers never hold Rust references into peer
//! *private* memory: payload and queue entries there are moved with `process_vm_readv/writev`.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::ffi::CString;
use std::io;

/// Magic + layout version stored in [`FabricHeader::magic`].
pub const FABRIC_MAGIC: u64 = 0x534f_4654_5244_4d04;
/// Node (process) slots.
pub const MAX_NODES: usize = 4096;
/// QP records. QPN = `(generation << 16) | slot` with generation in 1..=255.
pub const MAX_QPS: usize = 65536;
/// CQ records.
pub const MAX_CQS: usize = 65536;
/// SRQ records.
pub const MAX_SRQS: usize = 8192;
/// MR records. Key = `(slot << 8) | generation8`, generation never 0.
pub const MAX_MRS: usize = 1 << 18;
/// Counters per node.
pub const NUM_COUNTERS: usize = 22;

/// Per-process counters (index into [`NodeRec::counters`]).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Open device contexts.
    Contexts = 0,
    /// Live protection domains.
    Pds,
    /// Live memory regions.
    Mrs,
    /// Live completion queues.
    Cqs,
    /// Live queue pairs.
    Qps,
    /// Live shared receive queues.
    Srqs,
    /// Live completion channels.
    CompChannels,
    /// Send WRs posted (total).
    PostedSends,
    /// Receive WRs posted, RQ and SRQ (total).
    PostedRecvs,
    /// Completions produced into this process's CQs (total).
    Completions,
    /// Error completions other than flushes (total).
    ErrorCompletions,
    /// WR_FLUSH_ERR completions (total).
    FlushCompletions,
    /// Faults injected (total).
    FaultsInjected,
    /// Async events raised (total).
    AsyncEvents,
    /// Live rdma_cm ids (maintained by librdmacm).
    CmIds,
    /// Live rdma_cm event channels (maintained by librdmacm).
    CmChannels,
    /// Outstanding (posted, not yet completed) send WRs.
    OutstandingSends,
    /// Live address handles.
    Ahs,
    /// Bytes moved by this process as requester (total).
    BytesMoved,
    /// RNR stalls observed (total).
    RnrStalls,
    /// Bytes this process moved by `memcpy` through a shared-file MR mapping, without a system
    /// call (total; a subset of `BytesMoved` plus receive-side bytes of SENDs it delivered).
    MappedBytes,
    /// `process_vm_readv` / `process_vm_writev` calls made by this process (total).
    CopyCalls,
}

impl Counter {
    /// Every counter, in index order.
    pub const ALL: [Counter; NUM_COUNTERS] = [
        Counter::Contexts,
        Counter::Pds,
        Counter::Mrs,
        Counter::Cqs,
        Counter::Qps,
        Counter::Srqs,
        Counter::CompChannels,
        Counter::PostedSends,
        Counter::PostedRecvs,
        Counter::Completions,
        Counter::ErrorCompletions,
        Counter::FlushCompletions,
        Counter::FaultsInjected,
        Counter::AsyncEvents,
        Counter::CmIds,
        Counter::CmChannels,
        Counter::OutstandingSends,
        Counter::Ahs,
        Counter::BytesMoved,
        Counter::RnrStalls,
        Counter::MappedBytes,
        Counter::CopyCalls,
    ];

    /// Stable snake_case name used by `softrdma-ctl stats`.
    pub fn name(self) -> &'static str {
        match self {
            Counter::Contexts => "contexts",
            Counter::Pds => "pds",
            Counter::Mrs => "mrs",
            Counter::Cqs => "cqs",
            Counter::Qps => "qps",
            Counter::Srqs => "srqs",
            Counter::CompChannels => "comp_channels",
            Counter::PostedSends => "posted_sends",
            Counter::PostedRecvs => "posted_recvs",
            Counter::Completions => "completions",
            Counter::ErrorCompletions => "error_completions",
            Counter::FlushCompletions => "flush_completions",
            Counter::FaultsInjected => "faults_injected",
            Counter::AsyncEvents => "async_events",
            Counter::CmIds => "cm_ids",
            Counter::CmChannels => "cm_channels",
            Counter::OutstandingSends => "outstanding_sends",
            Counter::Ahs => "ahs",
            Counter::BytesMoved => "bytes_moved",
            Counter::RnrStalls => "rnr_stalls",
            Counter::MappedBytes => "mapped_bytes",
            Counter::CopyCalls => "copy_calls",
        }
    }

    /// Counters that describe live objects (must return to 0 when everything is destroyed).
    pub fn is_live_object(self) -> bool {
        matches!(
            self,
            Counter::Contexts
                | Counter::Pds
                | Counter::Mrs
                | Counter::Cqs
                | Counter::Qps
                | Counter::Srqs
                | Counter::CompChannels
                | Counter::CmIds
                | Counter::CmChannels
                | Counter::OutstandingSends
                | Counter::Ahs
        )
    }
}

const _: () = assert!(size_of::<CqRec>() == 64, "CqRec must keep its layout");

/// Segment header (first 4 KiB).
#[repr(C, align(64))]
pub struct FabricHeader {
    /// [`FABRIC_MAGIC`] once initialised.
    pub magic: AtomicU64,
    /// Spin lock (holder pid) serialising emulated atomics machine-wide.
    pub atomic_lock: AtomicU32,
    /// Next protection-domain id.
    pub next_pd: AtomicU32,
    /// Rotating allocation hints.
    pub qp_hint: AtomicU32,
    /// Rotating allocation hint for MRs.
    pub mr_hint: AtomicU32,
    /// Rotating allocation hint for CQs.
    pub cq_hint: AtomicU32,
    /// Rotating allocation hint for SRQs.
    pub srq_hint: AtomicU32,
    /// Number of processes whose port is down (injected PORT_ERR); while 0, requesters skip
    /// looking up the responder's [`NODE_PORT_DOWN`] flag.
    pub ports_down: AtomicU32,
}

/// [`NodeRec::flags`] bit: the process's port is down (injected PORT_ERR, until PORT_ACTIVE):
/// packets to and from its QPs are lost, so requesters retry until their transport timeout.
pub const NODE_PORT_DOWN: u32 = 1;

/// One process.
#[repr(C, align(64))]
pub struct NodeRec {
    /// Owner pid, 0 = free.
    pub owner: AtomicU32,
    /// State flags ([`NODE_PORT_DOWN`]).
    pub flags: AtomicU32,
    /// Owner's start time (field 22 of `/proc/<pid>/stat`), against pid reuse.
    pub starttime: AtomicU64,
    /// Counters, indexed by [`Counter`].
    pub counters: [AtomicU64; NUM_COUNTERS],
    /// Owner's virtual address of its ring arena (`arena-<pid>-<starttime>` in the fabric dir),
    /// 0 = none. Peers map the same file and translate ring addresses by the difference.
    pub arena_base: AtomicU64,
    /// Length of the arena mapping in bytes.
    pub arena_len: AtomicU64,
}

const _: () = assert!(size_of::<NodeRec>() == 256, "NodeRec must keep its layout");

/// Path of the ring arena of process `pid` started at `starttime`.
pub fn arena_path(pid: u32, starttime: u64) -> String {
    format!("{}/arena-{pid}-{starttime}", fabric_dir())
}

/// One queue pair.
#[repr(C, align(64))]
pub struct QpRec {
    /// Owner pid, 0 = free.
    pub owner: AtomicU32,
    /// QP number (generation << 16 | slot); 0 while free.
    pub qpn: AtomicU32,
    /// Last generation used in this slot.
    pub generation: AtomicU32,
    /// `ibv_qp_state`.
    pub state: AtomicU32,
    /// `ibv_qp_type`.
    pub qp_type: AtomicU32,
    /// `qp_access_flags`.
    pub access: AtomicU32,
    /// Protection domain id.
    pub pd: AtomicU32,
    /// Peer QPN (dest_qp_num), set at RTR.
    pub peer_qpn: AtomicU32,
    /// SRQ slot + 1, 0 = own receive queue.
    pub srq: AtomicU32,
    /// Receive CQ slot.
    pub recv_cq: AtomicU32,
    /// Peers currently delivering into this QP.
    pub delivering: AtomicU32,
    /// Receive queue lock (holder pid).
    pub rq_lock: AtomicU32,
    /// Receive queue consumer index.
    pub rq_head: AtomicU64,
    /// Receive queue producer index.
    pub rq_tail: AtomicU64,
    /// Address of the owner's private `[RecvWqe]` ring.
    pub rq_addr: AtomicU64,
    /// Ring capacity in WQEs.
    pub rq_cap: AtomicU32,
    /// Pid of a requester stalled on RNR against this QP (kick it on post_recv), 0 = none.
    pub rnr_waiter: AtomicU32,
    /// QPN of the stalled requester.
    pub rnr_waiter_qpn: AtomicU32,
    /// max_dest_rd_atomic (responder resources).
    pub max_dest_rd_atomic: AtomicU32,
}

/// One completion queue; the ring of `ibv_wc` lives in the owner's private memory.
#[repr(C, align(64))]
pub struct CqRec {
    /// Owner pid, 0 = free.
    pub owner: AtomicU32,
    /// Producer lock (holder pid).
    pub lock: AtomicU32,
    /// Armed for a completion event (1) or not (0); 2: armed while the owner owes the
    /// consumer an event for entries present at arming (producers raise none, as for 0).
    pub armed: AtomicU32,
    /// Set when a producer found the ring full.
    pub overrun: AtomicU32,
    /// Consumer index.
    pub head: AtomicU64,
    /// Producer index.
    pub tail: AtomicU64,
    /// Address of the owner's `[ibv_wc]` ring.
    pub addr: AtomicU64,
    /// Ring capacity.
    pub cap: AtomicU32,
    /// Generation (bumped on every allocation).
    pub generation: AtomicU32,
    /// Owner's fd number + 1 of the completion channel's event socket (0 = no channel). Peers
    /// duplicate it with `pidfd_getfd` to queue completion events without a thread hop.
    pub chan_fd: AtomicU32,
    /// Owner's `ibv_cq*` (the event record written to the channel).
    pub cq_ptr: AtomicU64,
}

/// One shared receive queue; the WQE ring lives in the owner's private memory.
#[repr(C, align(64))]
pub struct SrqRec {
    /// Owner pid, 0 = free.
    pub owner: AtomicU32,
    /// Consumer/producer lock (holder pid).
    pub lock: AtomicU32,
    /// Protection domain id.
    pub pd: AtomicU32,
    /// Ring capacity.
    pub cap: AtomicU32,
    /// Consumer index.
    pub head: AtomicU64,
    /// Producer index.
    pub tail: AtomicU64,
    /// Address of the owner's `[RecvWqe]` ring.
    pub addr: AtomicU64,
    /// srq_limit (0 = disarmed).
    pub limit: AtomicU32,
    /// Set when the limit event must be raised by the owner.
    pub limit_hit: AtomicU32,
    /// Set by a requester that found the SRQ empty (RNR); the owner's `ibv_post_srq_recv`
    /// clears it and kicks the stalled requesters of the SRQ's QPs.
    pub rnr_stalled: AtomicU32,
}

/// One memory region.
#[repr(C, align(64))]
pub struct MrRec {
    /// Owner pid, 0 = free.
    pub owner: AtomicU32,
    /// Current key (lkey == rkey), 0 = invalid.
    pub key: AtomicU32,
    /// Last generation used in this slot.
    pub generation: AtomicU32,
    /// Protection domain id.
    pub pd: AtomicU32,
    /// `ibv_access_flags`.
    pub access: AtomicU32,
    /// Peers currently copying into / out of the region.
    pub inflight: AtomicU32,
    /// Start address in the owner's address space.
    pub addr: AtomicU64,
    /// Length in bytes.
    pub len: AtomicU64,
    /// I/O virtual address that `addr` corresponds to.
    pub iova: AtomicU64,
    /// Entries in the owner's table of [`BackingPiece`]s (0 = anonymous memory or not
    /// shareable: peers use `process_vm_*`). Peers read the table once, duplicate each piece's
    /// fd with `pidfd_getfd` and map the pieces at consecutive addresses.
    pub backing_pieces: AtomicU32,
    /// Address of that table in the owner's address space (valid while the key is).
    pub backing_table: AtomicU64,
}

/// One piece of the shared files behind a memory region: a page-aligned range of one file,
/// mapped by the owner at `vaddr`. A region's pieces are in address order and contiguous, so a
/// peer that maps each at the same distance from the first reproduces the owner's layout (a
/// region over DPDK's one-file-per-hugepage memory has one piece per hugepage).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackingPiece {
    /// The owner's fd of the file.
    pub fd: u32,
    /// Page size of the file's filesystem (the alignment a mapping of it needs).
    pub page: u32,
    /// Device of the file (`st_dev`), checked by the peer after duplicating `fd`.
    pub dev: u64,
    /// Inode of the file (`st_ino`), checked likewise.
    pub ino: u64,
    /// Owner virtual address of the piece's first byte (a multiple of `page`).
    pub vaddr: u64,
    /// Offset in the file of that byte (a multiple of `page`).
    pub off: u64,
    /// Length in bytes (a multiple of `page`).
    pub len: u64,
}

/// Maximum SGEs in a receive WQE.
pub const MAX_RECV_SGE: usize = 32;

/// A posted receive, as stored in an RQ/SRQ ring (owner-private memory, read by peers).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RecvWqe {
    /// Application's wr_id.
    pub wr_id: u64,
    /// Number of valid SGEs.
    pub num_sge: u32,
    /// Reserved.
    pub pad: u32,
    /// Scatter list: (addr, length, lkey).
    pub sge: [WqeSge; MAX_RECV_SGE],
}

/// One scatter entry of a [`RecvWqe`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct WqeSge {
    /// Address.
    pub addr: u64,
    /// Length.
    pub length: u32,
    /// Local key.
    pub lkey: u32,
}

const fn round_up(v: usize, a: usize) -> usize {
    v.div_ceil(a) * a
}

/// Byte offset of the node table.
pub const NODES_OFF: usize = 4096;
/// Byte offset of the QP table.
pub const QPS_OFF: usize = round_up(NODES_OFF + MAX_NODES * size_of::<NodeRec>(), 4096);
/// Byte offset of the CQ table.
pub const CQS_OFF: usize = round_up(QPS_OFF + MAX_QPS * size_of::<QpRec>(), 4096);
/// Byte offset of the SRQ table.
pub const SRQS_OFF: usize = round_up(CQS_OFF + MAX_CQS * size_of::<CqRec>(), 4096);
/// Byte offset of the MR table.
pub const MRS_OFF: usize = round_up(SRQS_OFF + MAX_SRQS * size_of::<SrqRec>(), 4096);
/// Total segment size.
pub const FABRIC_SIZE: usize = round_up(MRS_OFF + MAX_MRS * size_of::<MrRec>(), 4096);

use core::mem::size_of;

/// Directory holding the fabric file: `$SOFTRDMA_SHM_DIR`, else `/dev/shm/softrdma-<uid>`
/// (`/tmp/softrdma-<uid>` when there is no `/dev/shm`).
pub fn fabric_dir() -> String {
    if let Ok(d) = std::env::var("SOFTRDMA_SHM_DIR") {
        if !d.is_empty() {
            return d;
        }
    }
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    if std::path::Path::new("/dev/shm").is_dir() {
        format!("/dev/shm/softrdma-{uid}")
    } else {
        format!("/tmp/softrdma-{uid}")
    }
}

/// Abstract UNIX datagram socket name of the process `pid` (without the leading NUL).
pub fn node_socket_name(pid: u32) -> String {
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    format!("softrdma/{uid}/node/{pid}")
}

/// A mapping of the fabric segment. The mapping is never unmapped (it lives for the process), so
/// references handed out are `'static`.
pub struct Fabric {
    base: *mut u8,
}

// SAFETY: the mapping is process-wide and only accessed through atomics.
unsafe impl Send for Fabric {}
// SAFETY: as above; every field reached through it is an atomic.
unsafe impl Sync for Fabric {}

impl Fabric {
    /// Open (creating if needed) and map the fabric segment.
    pub fn open() -> io::Result<Fabric> {
        let dir = fabric_dir();
        let cdir =
            CString::new(dir.clone()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: cdir is a valid NUL-terminated path.
        let r = unsafe { libc::mkdir(cdir.as_ptr(), 0o700) };
        if r != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(e);
            }
        }
        let path = CString::new(format!("{dir}/fabric"))
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: path is a valid NUL-terminated path; flags are valid.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_CREAT | libc::O_CLOEXEC,
                0o600,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: st is plain data filled by fstat on a valid fd.
        let mut st: libc::stat = unsafe { core::mem::zeroed() };
        // SAFETY: fd is open; st is a valid out-pointer.
        if unsafe { libc::fstat(fd, &mut st) } != 0 {
            let e = io::Error::last_os_error();
            // SAFETY: fd is ours.
            unsafe { libc::close(fd) };
            return Err(e);
        }
        if (st.st_size as usize) < FABRIC_SIZE {
            // Growing only: concurrent creators all truncate to the same size.
            // SAFETY: fd is open for writing.
            if unsafe { libc::ftruncate(fd, FABRIC_SIZE as libc::off_t) } != 0 {
                let e = io::Error::last_os_error();
                // SAFETY: fd is ours.
                unsafe { libc::close(fd) };
                return Err(e);
            }
        }
        // SAFETY: mapping a file we opened read-write, shared, at a kernel-chosen address.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                FABRIC_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        // SAFETY: the mapping keeps the file alive; the fd is no longer needed.
        unsafe { libc::close(fd) };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let f = Fabric { base: p as *mut u8 };
        let h = f.header();
        match h.magic.compare_exchange(0, FABRIC_MAGIC, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {}
            Err(m) if m == FABRIC_MAGIC => {}
            Err(m) => {
                return Err(io::Error::other(format!(
                    "fabric segment {dir}/fabric has layout magic {m:#x}, expected {FABRIC_MAGIC:#x}; remove it"
                )))
            }
        }
        Ok(f)
    }

    fn at<T>(&self, off: usize) -> &'static T {
        debug_assert!(off + size_of::<T>() <= FABRIC_SIZE);
        // SAFETY: off is within the FABRIC_SIZE mapping (callers index bounded tables), the
        // mapping is never unmapped, T is made of atomics valid for any bit pattern including
        // all-zero, and offsets are multiples of T's alignment (tables are 4 KiB-aligned and T's
        // size is a multiple of its alignment).
        unsafe { &*(self.base.add(off) as *const T) }
    }

    /// The header.
    pub fn header(&self) -> &'static FabricHeader {
        self.at(0)
    }
    /// Node record `i` (`i < MAX_NODES`).
    pub fn node(&self, i: usize) -> &'static NodeRec {
        assert!(i < MAX_NODES);
        self.at(NODES_OFF + i * size_of::<NodeRec>())
    }
    /// QP record `i` (`i < MAX_QPS`).
    pub fn qp(&self, i: usize) -> &'static QpRec {
        assert!(i < MAX_QPS);
        self.at(QPS_OFF + i * size_of::<QpRec>())
    }
    /// CQ record `i` (`i < MAX_CQS`).
    pub fn cq(&self, i: usize) -> &'static CqRec {
        assert!(i < MAX_CQS);
        self.at(CQS_OFF + i * size_of::<CqRec>())
    }
    /// SRQ record `i` (`i < MAX_SRQS`).
    pub fn srq(&self, i: usize) -> &'static SrqRec {
        assert!(i < MAX_SRQS);
        self.at(SRQS_OFF + i * size_of::<SrqRec>())
    }
    /// MR record `i` (`i < MAX_MRS`).
    pub fn mr(&self, i: usize) -> &'static MrRec {
        assert!(i < MAX_MRS);
        self.at(MRS_OFF + i * size_of::<MrRec>())
    }
}

/// Start time of `pid` (field 22 of `/proc/<pid>/stat`), or None if the process does not exist.
pub fn pid_starttime(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    // rest starts at field 3 (state); starttime is field 22 → index 19 in rest.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// True if a process with this pid exists (it may be a zombie).
pub fn pid_alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for existence/permission.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    if r == 0 {
        // Zombies count as dead: their address space is gone.
        return !matches!(std::fs::read_to_string(format!("/proc/{pid}/stat")), Ok(s) if s.rfind(')').map(|i| s[i..].starts_with(") Z")).unwrap_or(false));
    }
    std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}
