//! End-to-end tests of softrdma's libibverbs through `rdma-sys` (which binds to whatever
//! `libibverbs.so.1` the loader finds). The test binary is its own child: the parent (this file's
//! `main`) re-executes itself with `LD_LIBRARY_PATH=<repo>/target/softrdma` and a scenario name,
//! so the RDMA part always runs over softrdma. Build the libraries first:
//! `bash scripts/build-softrdma.sh`. Every wait is bounded; no scenario can hang.
//!
//! Scenarios: SRQ + LAST_WQE_REACHED, remote access error, each fault kind (fail Nth WR, QP to
//! error via the control socket, delayed/reordered completions, lost flushes, async events, CM
//! drop request, seeded random faults — run twice and compared), and peer death (kill -9).
#![allow(
    clippy::undocumented_unsafe_blocks,
    clippy::missing_safety_doc,
    clippy::too_many_arguments
)]

use rdma_sys::*;
use softrdma_abi::fabric::{self, Counter, Fabric, MAX_NODES};
use std::io::{BufRead, BufReader, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::ptr::null_mut;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- verbs helpers (child side)

struct Dev {
    ctx: *mut ibv_context,
    pd: *mut ibv_pd,
    cq: *mut ibv_cq,
}

fn open_dev() -> Dev {
    unsafe {
        let mut n = 0;
        let list = ibv_get_device_list(&mut n);
        assert!(
            !list.is_null() && n >= 1,
            "no RDMA device (is softrdma on LD_LIBRARY_PATH?)"
        );
        let name = std::ffi::CStr::from_ptr(ibv_get_device_name(*list))
            .to_string_lossy()
            .into_owned();
        assert_eq!(name, "softrdma0", "not running over softrdma");
        let ctx = ibv_open_device(*list);
        ibv_free_device_list(list);
        assert!(!ctx.is_null());
        let pd = ibv_alloc_pd(ctx);
        assert!(!pd.is_null());
        let cq = ibv_create_cq(ctx, 256, null_mut(), null_mut(), 0);
        assert!(!cq.is_null());
        Dev { ctx, pd, cq }
    }
}

/// Registered memory: heap (anonymous) or shared memfd mappings (the memcpy fast path): one
/// memfd, or several mapped at consecutive addresses (as DPDK maps one file per hugepage).
enum Mem {
    Heap(Vec<u8>),
    Shared {
        ptr: *mut u8,
        len: usize,
        map_len: usize,
        fds: Vec<i32>,
    },
}

impl std::ops::Deref for Mem {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Mem::Heap(v) => v,
            Mem::Shared { ptr, len, .. } => unsafe { std::slice::from_raw_parts(*ptr, *len) },
        }
    }
}

impl std::ops::DerefMut for Mem {
    fn deref_mut(&mut self) -> &mut [u8] {
        match self {
            Mem::Heap(v) => v,
            Mem::Shared { ptr, len, .. } => unsafe { std::slice::from_raw_parts_mut(*ptr, *len) },
        }
    }
}

impl Drop for Mem {
    fn drop(&mut self) {
        if let Mem::Shared {
            ptr, map_len, fds, ..
        } = self
        {
            unsafe {
                libc::munmap(*ptr as *mut _, *map_len);
                for fd in fds {
                    libc::close(*fd);
                }
            }
        }
    }
}

struct Buf {
    mr: *mut ibv_mr,
    mem: Mem,
}

impl Buf {
    fn addr(&self) -> u64 {
        self.mem.as_ptr() as u64
    }
    fn lkey(&self) -> u32 {
        unsafe { (*self.mr).lkey }
    }
    fn rkey(&self) -> u32 {
        unsafe { (*self.mr).rkey }
    }
}

fn reg(d: &Dev, len: usize, access: u32) -> Buf {
    let mut mem = vec![0u8; len];
    let mr = unsafe { ibv_reg_mr(d.pd, mem.as_mut_ptr() as *mut _, len, access as i32) };
    assert!(!mr.is_null(), "ibv_reg_mr failed");
    Buf {
        mr,
        mem: Mem::Heap(mem),
    }
}

/// Register `len` bytes of a memfd mapped MAP_SHARED (the fd stays open, as applications keep it).
fn reg_memfd(d: &Dev, len: usize, access: u32) -> Buf {
    reg_memfds(d, len, len, access)
}

/// Register `len` bytes of memfds of `piece` bytes each, mapped MAP_SHARED at consecutive
/// addresses (one region over several files, like DPDK's hugepages); the fds stay open.
fn reg_memfds(d: &Dev, len: usize, piece: usize, access: u32) -> Buf {
    let n = len.div_ceil(piece);
    let map_len = n * piece;
    unsafe {
        let p = libc::mmap(
            null_mut(),
            map_len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        let mut fds = Vec::new();
        for i in 0..n {
            let fd = libc::memfd_create(c"softrdma-test".as_ptr(), libc::MFD_CLOEXEC);
            assert!(fd >= 0, "memfd_create");
            assert_eq!(libc::ftruncate(fd, piece as i64), 0);
            let at = (p as *mut u8).add(i * piece) as *mut libc::c_void;
            let q = libc::mmap(
                at,
                piece,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd,
                0,
            );
            assert_eq!(q, at, "mapping memfd {i}");
            fds.push(fd);
        }
        let mr = ibv_reg_mr(d.pd, p, len, access as i32);
        assert!(!mr.is_null(), "ibv_reg_mr (memfd) failed");
        Buf {
            mr,
            mem: Mem::Shared {
                ptr: p as *mut u8,
                len,
                map_len,
                fds,
            },
        }
    }
}

const LW: u32 = ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0;
const RW: u32 = ibv_access_flags::IBV_ACCESS_REMOTE_WRITE.0;
const RR: u32 = ibv_access_flags::IBV_ACCESS_REMOTE_READ.0;

fn create_qp(d: &Dev, srq: *mut ibv_srq) -> *mut ibv_qp {
    unsafe {
        let mut a: ibv_qp_init_attr = std::mem::zeroed();
        a.send_cq = d.cq;
        a.recv_cq = d.cq;
        a.srq = srq;
        a.qp_type = ibv_qp_type::IBV_QPT_RC;
        a.cap.max_send_wr = 64;
        a.cap.max_recv_wr = 64;
        a.cap.max_send_sge = 2;
        a.cap.max_recv_sge = 2;
        a.qp_context = 0x5eed as *mut _;
        let qp = ibv_create_qp(d.pd, &mut a);
        assert!(!qp.is_null(), "ibv_create_qp failed");
        qp
    }
}

fn qpn(qp: *mut ibv_qp) -> u32 {
    unsafe { (*qp).qp_num }
}

/// RESET → INIT → RTR → RTS towards `remote`.
fn connect(qp: *mut ibv_qp, remote: u32, access: u32) {
    use ibv_qp_attr_mask as m;
    unsafe {
        let mut a: ibv_qp_attr = std::mem::zeroed();
        a.qp_state = ibv_qp_state::IBV_QPS_INIT;
        a.port_num = 1;
        a.qp_access_flags = access;
        let r = ibv_modify_qp(
            qp,
            &mut a,
            (m::IBV_QP_STATE | m::IBV_QP_PKEY_INDEX | m::IBV_QP_PORT | m::IBV_QP_ACCESS_FLAGS).0
                as i32,
        );
        assert_eq!(r, 0, "INIT");
        let mut a: ibv_qp_attr = std::mem::zeroed();
        a.qp_state = ibv_qp_state::IBV_QPS_RTR;
        a.path_mtu = ibv_mtu::IBV_MTU_4096;
        a.dest_qp_num = remote;
        a.max_dest_rd_atomic = 16;
        a.min_rnr_timer = 1;
        a.ah_attr.dlid = 1;
        a.ah_attr.port_num = 1;
        let mask = m::IBV_QP_STATE
            | m::IBV_QP_AV
            | m::IBV_QP_PATH_MTU
            | m::IBV_QP_DEST_QPN
            | m::IBV_QP_RQ_PSN
            | m::IBV_QP_MAX_DEST_RD_ATOMIC
            | m::IBV_QP_MIN_RNR_TIMER;
        assert_eq!(ibv_modify_qp(qp, &mut a, mask.0 as i32), 0, "RTR");
        let mut a: ibv_qp_attr = std::mem::zeroed();
        a.qp_state = ibv_qp_state::IBV_QPS_RTS;
        a.timeout = 8; // ~1 ms per retry: quick RETRY_EXC_ERR in tests
        a.retry_cnt = 3;
        a.rnr_retry = 7;
        a.max_rd_atomic = 16;
        let mask = m::IBV_QP_STATE
            | m::IBV_QP_SQ_PSN
            | m::IBV_QP_TIMEOUT
            | m::IBV_QP_RETRY_CNT
            | m::IBV_QP_RNR_RETRY
            | m::IBV_QP_MAX_QP_RD_ATOMIC;
        assert_eq!(ibv_modify_qp(qp, &mut a, mask.0 as i32), 0, "RTS");
    }
}

fn to_err(qp: *mut ibv_qp) {
    unsafe {
        let mut a: ibv_qp_attr = std::mem::zeroed();
        a.qp_state = ibv_qp_state::IBV_QPS_ERR;
        assert_eq!(
            ibv_modify_qp(qp, &mut a, ibv_qp_attr_mask::IBV_QP_STATE.0 as i32),
            0
        );
    }
}

fn post_send(
    qp: *mut ibv_qp,
    wr_id: u64,
    op: u32,
    b: &Buf,
    off: usize,
    len: u32,
    remote: Option<(u64, u32)>,
) -> i32 {
    unsafe {
        let mut sge = ibv_sge {
            addr: b.addr() + off as u64,
            length: len,
            lkey: b.lkey(),
        };
        let mut wr: ibv_send_wr = std::mem::zeroed();
        wr.wr_id = wr_id;
        wr.sg_list = &mut sge;
        wr.num_sge = 1;
        wr.opcode = op;
        wr.send_flags = ibv_send_flags::IBV_SEND_SIGNALED.0;
        if let Some((addr, rkey)) = remote {
            wr.wr.rdma.remote_addr = addr;
            wr.wr.rdma.rkey = rkey;
        }
        let mut bad = null_mut();
        ibv_post_send(qp, &mut wr, &mut bad)
    }
}

fn post_recv(qp: *mut ibv_qp, wr_id: u64, b: &Buf, off: usize, len: u32) {
    unsafe {
        let mut sge = ibv_sge {
            addr: b.addr() + off as u64,
            length: len,
            lkey: b.lkey(),
        };
        let mut wr: ibv_recv_wr = std::mem::zeroed();
        wr.wr_id = wr_id;
        wr.sg_list = &mut sge;
        wr.num_sge = 1;
        let mut bad = null_mut();
        assert_eq!(ibv_post_recv(qp, &mut wr, &mut bad), 0, "post_recv");
    }
}

fn post_srq(srq: *mut ibv_srq, wr_id: u64, b: &Buf, off: usize, len: u32) {
    unsafe {
        let mut sge = ibv_sge {
            addr: b.addr() + off as u64,
            length: len,
            lkey: b.lkey(),
        };
        let mut wr: ibv_recv_wr = std::mem::zeroed();
        wr.wr_id = wr_id;
        wr.sg_list = &mut sge;
        wr.num_sge = 1;
        let mut bad = null_mut();
        assert_eq!(
            ibv_post_srq_recv(srq, &mut wr, &mut bad),
            0,
            "post_srq_recv"
        );
    }
}

/// Poll until `n` completions arrived or `ms` elapsed.
fn poll(cq: *mut ibv_cq, n: usize, ms: u64) -> Vec<ibv_wc> {
    let mut out = Vec::new();
    let t0 = Instant::now();
    while out.len() < n && t0.elapsed() < Duration::from_millis(ms) {
        let mut wc: ibv_wc = unsafe { std::mem::zeroed() };
        let r = unsafe { ibv_poll_cq(cq, 1, &mut wc) };
        assert!(r >= 0, "ibv_poll_cq failed");
        if r == 1 {
            out.push(wc);
        } else {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    out
}

fn statuses(v: &[ibv_wc]) -> Vec<(u64, u32)> {
    v.iter().map(|w| (w.wr_id, w.status)).collect()
}

/// Next async event within `ms` (non-blocking fd + poll()).
fn async_event(ctx: *mut ibv_context, ms: i32) -> Option<(u32, *mut ibv_qp)> {
    unsafe {
        let fd = (*ctx).async_fd;
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        if libc::poll(&mut p, 1, ms) != 1 {
            return None;
        }
        let mut ev: ibv_async_event = std::mem::zeroed();
        if ibv_get_async_event(ctx, &mut ev) != 0 {
            return None;
        }
        let t = ev.event_type as u32;
        let qp = ev.element.qp;
        ibv_ack_async_event(&mut ev);
        Some((t, qp))
    }
}

fn my_counter(c: Counter) -> i64 {
    let f = Fabric::open().expect("fabric");
    let pid = std::process::id();
    for i in 0..MAX_NODES {
        let n = f.node(i);
        if n.owner.load(Ordering::Acquire) == pid {
            return n.counters[c as usize].load(Ordering::Relaxed) as i64;
        }
    }
    panic!("no fabric node for pid {pid}");
}

/// Two connected QPs of one process: (responder a, requester b).
fn pair(d: &Dev, srq: *mut ibv_srq, access: u32) -> (*mut ibv_qp, *mut ibv_qp) {
    let a = create_qp(d, srq);
    let b = create_qp(d, null_mut());
    connect(a, qpn(b), access);
    connect(b, qpn(a), access);
    (a, b)
}

use ibv_wc_status as st;
use ibv_wr_opcode as op;

// ---------------------------------------------------------------- scenarios (child side)

fn sc_srq() {
    let d = open_dev();
    let srq = unsafe {
        let mut a: ibv_srq_init_attr = std::mem::zeroed();
        a.attr.max_wr = 16;
        a.attr.max_sge = 1;
        ibv_create_srq(d.pd, &mut a)
    };
    assert!(!srq.is_null());
    let (a, b) = pair(&d, srq, LW | RW | RR);
    let rx = reg(&d, 4096, LW);
    let mut tx = reg(&d, 4096, LW);
    for i in 0..4 {
        post_srq(srq, 100 + i, &rx, i as usize * 1024, 1024);
    }
    unsafe {
        let mut sa: ibv_srq_attr = std::mem::zeroed();
        sa.srq_limit = 2;
        assert_eq!(
            ibv_modify_srq(srq, &mut sa, ibv_srq_attr_mask::IBV_SRQ_LIMIT.0 as i32),
            0
        );
        assert_eq!(ibv_query_srq(srq, &mut sa), 0);
        assert_eq!((sa.max_wr, sa.srq_limit), (16, 2));
    }
    for i in 0..3u64 {
        tx.mem[i as usize * 8..i as usize * 8 + 8].copy_from_slice(&(0xabc0 + i).to_le_bytes());
        assert_eq!(
            post_send(b, i, op::IBV_WR_SEND, &tx, i as usize * 8, 8, None),
            0
        );
    }
    let wcs = poll(d.cq, 6, 5000);
    assert_eq!(wcs.len(), 6, "3 sends + 3 receives: {:?}", statuses(&wcs));
    let recvs: Vec<_> = wcs
        .iter()
        .filter(|w| w.opcode == ibv_wc_opcode::IBV_WC_RECV)
        .collect();
    assert_eq!(recvs.len(), 3);
    for (k, w) in recvs.iter().enumerate() {
        assert_eq!(w.status, st::IBV_WC_SUCCESS);
        assert_eq!(w.qp_num, qpn(a), "SRQ receive must carry the QP number");
        assert_eq!(w.wr_id, 100 + k as u64, "SRQ WQEs consumed in FIFO order");
        assert_eq!(w.byte_len, 8);
        let off = (w.wr_id - 100) as usize * 1024;
        assert_eq!(
            u64::from_le_bytes(rx.mem[off..off + 8].try_into().unwrap()),
            0xabc0 + k as u64
        );
    }
    // Fewer WQEs than the armed limit (1 < 2): SRQ_LIMIT_REACHED once, and the limit disarms.
    let ev = async_event(d.ctx, 5000).expect("SRQ_LIMIT_REACHED within 5 s");
    assert_eq!(ev.0, ibv_event_type::IBV_EVENT_SRQ_LIMIT_REACHED as u32);
    assert_eq!(ev.1 as usize, srq as usize);
    // SRQ-attached QP to ERR: LAST_WQE_REACHED exactly once, SRQ WQEs are not flushed.
    to_err(a);
    let ev = async_event(d.ctx, 5000).expect("LAST_WQE_REACHED within 5 s");
    assert_eq!(ev.0, ibv_event_type::IBV_EVENT_QP_LAST_WQE_REACHED as u32);
    assert_eq!(ev.1, a);
    assert_eq!(unsafe { (*ev.1).qp_context } as usize, 0x5eed);
    to_err(a);
    assert!(
        async_event(d.ctx, 200).is_none(),
        "LAST_WQE_REACHED must be raised once"
    );
    assert!(
        poll(d.cq, 1, 200).is_empty(),
        "SRQ WQEs must not be flushed"
    );
    // The requester now talks to a QP in ERR: transport retries exhaust → RETRY_EXC_ERR.
    assert_eq!(post_send(b, 9, op::IBV_WR_SEND, &tx, 0, 8, None), 0);
    let w = poll(d.cq, 1, 10000);
    assert_eq!(statuses(&w), vec![(9, st::IBV_WC_RETRY_EXC_ERR)]);
    cleanup(d, &[a, b], &[rx, tx], Some(srq));
}

fn cleanup(d: Dev, qps: &[*mut ibv_qp], bufs: &[Buf], srq: Option<*mut ibv_srq>) {
    unsafe {
        for &q in qps {
            assert_eq!(ibv_destroy_qp(q), 0);
        }
        if let Some(s) = srq {
            assert_eq!(ibv_destroy_srq(s), 0);
        }
        for b in bufs {
            assert_eq!(ibv_dereg_mr(b.mr), 0);
        }
        assert_eq!(ibv_destroy_cq(d.cq), 0);
        assert_eq!(ibv_dealloc_pd(d.pd), 0);
        assert_eq!(ibv_close_device(d.ctx), 0);
    }
    for c in Counter::ALL.into_iter().filter(|c| c.is_live_object()) {
        assert_eq!(
            my_counter(c),
            0,
            "leaked: counter {} is not 0 after cleanup",
            c.name()
        );
    }
    println!("CLEAN");
}

fn post_send_ex(
    qp: *mut ibv_qp,
    wr_id: u64,
    opc: u32,
    b: &Buf,
    off: usize,
    len: u32,
    flags: u32,
    imm: u32,
    remote: Option<(u64, u32)>,
) -> i32 {
    unsafe {
        let mut sge = ibv_sge {
            addr: b.addr() + off as u64,
            length: len,
            lkey: b.lkey(),
        };
        let mut wr: ibv_send_wr = std::mem::zeroed();
        wr.wr_id = wr_id;
        wr.sg_list = &mut sge;
        wr.num_sge = 1;
        wr.opcode = opc;
        wr.send_flags = flags;
        wr.imm_data_invalidated_rkey_union.imm_data = imm;
        if let Some((addr, rkey)) = remote {
            wr.wr.rdma.remote_addr = addr;
            wr.wr.rdma.rkey = rkey;
        }
        let mut bad = null_mut();
        ibv_post_send(qp, &mut wr, &mut bad)
    }
}

fn post_atomic(
    qp: *mut ibv_qp,
    wr_id: u64,
    opc: u32,
    b: &Buf,
    off: usize,
    remote: (u64, u32),
    compare_add: u64,
    swap: u64,
) -> i32 {
    unsafe {
        let mut sge = ibv_sge {
            addr: b.addr() + off as u64,
            length: 8,
            lkey: b.lkey(),
        };
        let mut wr: ibv_send_wr = std::mem::zeroed();
        wr.wr_id = wr_id;
        wr.sg_list = &mut sge;
        wr.num_sge = 1;
        wr.opcode = opc;
        wr.send_flags = ibv_send_flags::IBV_SEND_SIGNALED.0;
        wr.wr.atomic.remote_addr = remote.0;
        wr.wr.atomic.rkey = remote.1;
        wr.wr.atomic.compare_add = compare_add;
        wr.wr.atomic.swap = swap;
        let mut bad = null_mut();
        ibv_post_send(qp, &mut wr, &mut bad)
    }
}

fn sc_opcodes() {
    let d = open_dev();
    let (a, b) = pair(
        &d,
        null_mut(),
        LW | RW | RR | ibv_access_flags::IBV_ACCESS_REMOTE_ATOMIC.0,
    );
    let mut rx = reg(
        &d,
        8192,
        LW | RW | RR | ibv_access_flags::IBV_ACCESS_REMOTE_ATOMIC.0,
    );
    let mut tx = reg(&d, 8192, LW);
    let sig = ibv_send_flags::IBV_SEND_SIGNALED.0;
    let of = |w: &[ibv_wc], q: *mut ibv_qp| {
        w.iter()
            .filter(|c| c.qp_num == qpn(q))
            .map(|c| (c.wr_id, c.status, c.opcode, c.byte_len, c.wc_flags))
            .collect::<Vec<_>>()
    };
    // SEND_WITH_IMM, SEND_WITH_INV, inline SEND (buffer overwritten right after the post).
    for i in 0..4 {
        post_recv(a, 10 + i, &rx, i as usize * 256, 256);
    }
    tx.mem[..5].copy_from_slice(b"hello");
    assert_eq!(
        post_send_ex(
            b,
            1,
            op::IBV_WR_SEND_WITH_IMM,
            &tx,
            0,
            5,
            sig,
            0x1234_5678u32.to_be(),
            None
        ),
        0
    );
    assert_eq!(
        post_send_ex(b, 2, op::IBV_WR_SEND_WITH_INV, &tx, 0, 5, sig, 0xabcd, None),
        0
    );
    tx.mem[..6].copy_from_slice(b"inline");
    assert_eq!(
        post_send_ex(
            b,
            3,
            op::IBV_WR_SEND,
            &tx,
            0,
            6,
            sig | ibv_send_flags::IBV_SEND_INLINE.0,
            0,
            None
        ),
        0
    );
    tx.mem[..6].copy_from_slice(b"XXXXXX");
    // Unsignaled WRITE then WRITE_WITH_IMM: only the latter completes at the requester; the
    // responder sees RECV_RDMA_WITH_IMM after the data of both writes.
    tx.mem[100..104].copy_from_slice(b"data");
    assert_eq!(
        post_send_ex(
            b,
            4,
            op::IBV_WR_RDMA_WRITE,
            &tx,
            100,
            4,
            0,
            0,
            Some((rx.addr() + 4096, rx.rkey()))
        ),
        0
    );
    assert_eq!(
        post_send_ex(
            b,
            5,
            op::IBV_WR_RDMA_WRITE_WITH_IMM,
            &tx,
            100,
            4,
            sig,
            7u32.to_be(),
            Some((rx.addr() + 4100, rx.rkey()))
        ),
        0
    );
    let w = poll(d.cq, 8, 3000);
    let flags_imm = ibv_wc_flags::IBV_WC_WITH_IMM.0;
    let flags_inv = ibv_wc_flags::IBV_WC_WITH_INV.0;
    assert_eq!(
        of(&w, b),
        vec![
            (1, 0, ibv_wc_opcode::IBV_WC_SEND, 0, 0),
            (2, 0, ibv_wc_opcode::IBV_WC_SEND, 0, 0),
            (3, 0, ibv_wc_opcode::IBV_WC_SEND, 0, 0),
            (5, 0, ibv_wc_opcode::IBV_WC_RDMA_WRITE, 0, 0)
        ]
    );
    assert_eq!(
        of(&w, a),
        vec![
            (10, 0, ibv_wc_opcode::IBV_WC_RECV, 5, flags_imm),
            (11, 0, ibv_wc_opcode::IBV_WC_RECV, 5, flags_inv),
            (12, 0, ibv_wc_opcode::IBV_WC_RECV, 6, 0),
            (
                13,
                0,
                ibv_wc_opcode::IBV_WC_RECV_RDMA_WITH_IMM,
                4,
                flags_imm
            )
        ]
    );
    let imm: Vec<u32> = w
        .iter()
        .filter(|c| c.qp_num == qpn(a))
        .map(|c| unsafe { c.imm_data_invalidated_rkey_union.imm_data })
        .collect();
    assert_eq!(imm[0], 0x1234_5678u32.to_be());
    assert_eq!(imm[1], 0xabcd, "invalidated rkey reported");
    assert_eq!(imm[3], 7u32.to_be());
    assert_eq!(&rx.mem[0..5], b"hello");
    assert_eq!(
        &rx.mem[512..518],
        b"inline",
        "inline payload copied at post time"
    );
    assert_eq!(&rx.mem[4096..4104], b"datadata");
    // Atomics: CAS then FAA, old values returned.
    rx.mem[6000..6008].copy_from_slice(&5u64.to_le_bytes());
    let raddr = rx.addr() + 6000;
    assert_eq!(
        post_atomic(
            b,
            20,
            op::IBV_WR_ATOMIC_CMP_AND_SWP,
            &tx,
            0,
            (raddr, rx.rkey()),
            5,
            9
        ),
        0
    );
    assert_eq!(
        post_atomic(
            b,
            21,
            op::IBV_WR_ATOMIC_FETCH_AND_ADD,
            &tx,
            8,
            (raddr, rx.rkey()),
            10,
            0
        ),
        0
    );
    assert_eq!(statuses(&poll(d.cq, 2, 3000)), vec![(20, 0), (21, 0)]);
    assert_eq!(u64::from_le_bytes(tx.mem[0..8].try_into().unwrap()), 5);
    assert_eq!(u64::from_le_bytes(tx.mem[8..16].try_into().unwrap()), 9);
    assert_eq!(
        u64::from_le_bytes(rx.mem[6000..6008].try_into().unwrap()),
        19
    );
    // RNR: a SEND without a posted receive waits (rnr_retry 7), a later WRITE waits behind it,
    // and both complete once a receive is posted.
    assert_eq!(post_send(b, 30, op::IBV_WR_SEND, &tx, 0, 8, None), 0);
    assert_eq!(
        post_send(
            b,
            31,
            op::IBV_WR_RDMA_WRITE,
            &tx,
            0,
            8,
            Some((rx.addr() + 7000, rx.rkey()))
        ),
        0
    );
    assert!(
        poll(d.cq, 1, 100).is_empty(),
        "RNR: nothing completes without a receive"
    );
    post_recv(a, 32, &rx, 0, 64);
    let w = poll(d.cq, 3, 3000);
    assert_eq!(
        of(&w, b).iter().map(|x| (x.0, x.1)).collect::<Vec<_>>(),
        vec![(30, 0), (31, 0)]
    );
    assert!(my_counter(Counter::RnrStalls) >= 1);
    // Completion channel: non-blocking EAGAIN, then one event after arming and a completion.
    unsafe {
        let ch = ibv_create_comp_channel(d.ctx);
        let cq2 = ibv_create_cq(d.ctx, 16, 0x77 as *mut _, ch, 0);
        let fd = (*ch).fd;
        libc::fcntl(
            fd,
            libc::F_SETFL,
            libc::fcntl(fd, libc::F_GETFL) | libc::O_NONBLOCK,
        );
        let (mut ecq, mut ectx) = (null_mut(), null_mut());
        assert_eq!(ibv_get_cq_event(ch, &mut ecq, &mut ectx), -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EAGAIN)
        );
        let q1 = create_qp(
            &Dev {
                ctx: d.ctx,
                pd: d.pd,
                cq: cq2,
            },
            null_mut(),
        );
        let q2 = create_qp(&d, null_mut());
        connect(q1, qpn(q2), LW);
        connect(q2, qpn(q1), LW);
        post_recv(q1, 40, &rx, 0, 64);
        assert_eq!(ibv_req_notify_cq(cq2, 0), 0);
        assert_eq!(post_send(q2, 41, op::IBV_WR_SEND, &tx, 0, 8, None), 0);
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        assert_eq!(
            libc::poll(&mut p, 1, 5000),
            1,
            "channel fd readable after the completion"
        );
        assert_eq!(ibv_get_cq_event(ch, &mut ecq, &mut ectx), 0);
        assert_eq!((ecq, ectx as usize), (cq2, 0x77));
        ibv_ack_cq_events(cq2, 1);
        // Resize with a completion pending: it survives and cqe reflects the new size.
        assert_eq!(ibv_resize_cq(cq2, 100), 0);
        assert!((*cq2).cqe >= 100);
        assert_eq!(statuses(&poll(cq2, 1, 1000)), vec![(40, 0)]);
        assert_eq!(statuses(&poll(d.cq, 1, 1000)), vec![(41, 0)]);
        // Arming a CQ that holds an entry owes an event (no lost wake-up): ibv_get_cq_event
        // pays it at once; a consumer that waits on the fd without polling is woken by the
        // event thread; a poll that takes the entry settles it (no event, fd not readable).
        post_recv(q1, 44, &rx, 0, 64);
        assert_eq!(post_send(q2, 45, op::IBV_WR_SEND, &tx, 0, 8, None), 0);
        assert_eq!(statuses(&poll(d.cq, 1, 1000)), vec![(45, 0)]);
        assert_eq!(ibv_req_notify_cq(cq2, 0), 0);
        assert_eq!(ibv_get_cq_event(ch, &mut ecq, &mut ectx), 0, "owed event");
        assert_eq!(ecq, cq2);
        ibv_ack_cq_events(cq2, 1);
        assert_eq!(ibv_req_notify_cq(cq2, 0), 0);
        let t0 = std::time::Instant::now();
        assert_eq!(
            libc::poll(&mut p, 1, 5000),
            1,
            "owed event raised on the fd"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "within the event thread's tick"
        );
        assert_eq!(ibv_get_cq_event(ch, &mut ecq, &mut ectx), 0);
        assert_eq!(ecq, cq2);
        ibv_ack_cq_events(cq2, 1);
        assert_eq!(ibv_req_notify_cq(cq2, 0), 0);
        assert_eq!(statuses(&poll(cq2, 1, 1000)), vec![(44, 0)]);
        assert_eq!(
            libc::poll(&mut p, 1, 300),
            0,
            "settled by the poll: no event"
        );
        assert_eq!(ibv_get_cq_event(ch, &mut ecq, &mut ectx), -1);
        // Receive buffer too small: LOC_LEN_ERR at the responder, REM_INV_REQ_ERR at the requester.
        post_recv(q1, 42, &rx, 0, 4);
        assert_eq!(post_send(q2, 43, op::IBV_WR_SEND, &tx, 0, 8, None), 0);
        assert_eq!(
            statuses(&poll(cq2, 1, 3000)),
            vec![(42, st::IBV_WC_LOC_LEN_ERR)]
        );
        assert_eq!(
            statuses(&poll(d.cq, 1, 3000)),
            vec![(43, st::IBV_WC_REM_INV_REQ_ERR)]
        );
        assert_eq!(ibv_destroy_qp(q1), 0);
        assert_eq!(ibv_destroy_qp(q2), 0);
        assert_eq!(ibv_destroy_cq(cq2), 0);
        assert_eq!(ibv_destroy_comp_channel(ch), 0);
    }
    // ibv_destroy_qp purges the QP's unpolled completions (here: 3 receive flushes).
    let q3 = create_qp(&d, null_mut());
    let q4 = create_qp(&d, null_mut());
    connect(q3, qpn(q4), LW);
    connect(q4, qpn(q3), LW);
    for i in 0..3 {
        post_recv(q3, 50 + i, &rx, 0, 64);
    }
    to_err(q3);
    unsafe {
        assert_eq!(ibv_destroy_qp(q3), 0);
        assert_eq!(ibv_destroy_qp(q4), 0);
    }
    assert!(
        poll(d.cq, 1, 200).is_empty(),
        "no completion of a destroyed QP"
    );
    cleanup(d, &[a, b], &[rx, tx], None);
}

fn sc_remote_access() {
    let d = open_dev();
    let (a, b) = pair(&d, null_mut(), LW | RW);
    let target = reg(&d, 4096, LW | RW);
    let src = reg(&d, 4096, LW);
    for i in 0..3 {
        post_recv(a, 200 + i, &target, 0, 64);
    }
    // Good write, then a write with a bad rkey, then one that would be fine: it must be flushed.
    assert_eq!(
        post_send(
            b,
            1,
            op::IBV_WR_RDMA_WRITE,
            &src,
            0,
            64,
            Some((target.addr(), target.rkey()))
        ),
        0
    );
    assert_eq!(
        post_send(
            b,
            2,
            op::IBV_WR_RDMA_WRITE,
            &src,
            0,
            64,
            Some((target.addr(), target.rkey() ^ 0x100))
        ),
        0
    );
    assert_eq!(
        post_send(
            b,
            3,
            op::IBV_WR_RDMA_WRITE,
            &src,
            0,
            64,
            Some((target.addr(), target.rkey()))
        ),
        0
    );
    let w = poll(d.cq, 6, 5000);
    let of = |q: *mut ibv_qp| {
        w.iter()
            .filter(|c| c.qp_num == qpn(q))
            .map(|c| (c.wr_id, c.status))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        of(b),
        vec![
            (1, st::IBV_WC_SUCCESS),
            (2, st::IBV_WC_REM_ACCESS_ERR),
            (3, st::IBV_WC_WR_FLUSH_ERR)
        ]
    );
    // Responder: QP_ACCESS_ERR and its posted receives flushed.
    assert_eq!(
        of(a),
        vec![
            (200, st::IBV_WC_WR_FLUSH_ERR),
            (201, st::IBV_WC_WR_FLUSH_ERR),
            (202, st::IBV_WC_WR_FLUSH_ERR)
        ]
    );
    let ev = async_event(d.ctx, 5000).expect("QP_ACCESS_ERR");
    assert_eq!(ev.0, ibv_event_type::IBV_EVENT_QP_ACCESS_ERR as u32);
    assert_eq!(ev.1, a);
    cleanup(d, &[a, b], &[target, src], None);
}

fn sc_fault_fail() {
    // SOFTRDMA_FAULTS=fail:op=read,nth=3,status=retry_exc_err,qp=#2 (set by the parent)
    let d = open_dev();
    let (a, b) = pair(&d, null_mut(), LW | RW | RR);
    let remote = reg(&d, 4096, LW | RR);
    let local = reg(&d, 4096, LW);
    post_recv(b, 300, &local, 0, 64);
    for i in 1..=5 {
        assert_eq!(
            post_send(
                b,
                i,
                op::IBV_WR_RDMA_READ,
                &local,
                0,
                64,
                Some((remote.addr(), remote.rkey()))
            ),
            0
        );
    }
    let w = poll(d.cq, 6, 3000);
    let (recv, send): (Vec<_>, Vec<_>) = statuses(&w).into_iter().partition(|x| x.0 == 300);
    // Send queue in order: the 3rd READ fails as injected, later WRs are flushed.
    assert_eq!(
        send,
        vec![
            (1, st::IBV_WC_SUCCESS),
            (2, st::IBV_WC_SUCCESS),
            (3, st::IBV_WC_RETRY_EXC_ERR),
            (4, st::IBV_WC_WR_FLUSH_ERR),
            (5, st::IBV_WC_WR_FLUSH_ERR),
        ]
    );
    assert_eq!(
        recv,
        vec![(300, st::IBV_WC_WR_FLUSH_ERR)],
        "posted receive flushed"
    );
    assert_eq!(my_counter(Counter::FaultsInjected), 1);
    // Posting to the ERR QP is accepted and flushed.
    assert_eq!(
        post_send(
            b,
            6,
            op::IBV_WR_RDMA_READ,
            &local,
            0,
            64,
            Some((remote.addr(), remote.rkey()))
        ),
        0
    );
    assert_eq!(
        statuses(&poll(d.cq, 1, 2000)),
        vec![(6, st::IBV_WC_WR_FLUSH_ERR)]
    );
    cleanup(d, &[a, b], &[remote, local], None);
}

fn ready_and_wait() {
    println!("READY");
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
}

fn sc_fault_qperr() {
    // The parent sends "qperr qp=#1" on the control socket after READY.
    let d = open_dev();
    let (a, b) = pair(&d, null_mut(), LW);
    let rx = reg(&d, 4096, LW);
    for i in 0..4 {
        post_recv(a, 400 + i, &rx, 0, 64);
    }
    ready_and_wait();
    let w = poll(d.cq, 4, 5000);
    assert_eq!(
        statuses(&w),
        (400..404)
            .map(|i| (i, st::IBV_WC_WR_FLUSH_ERR))
            .collect::<Vec<_>>()
    );
    let mut attr: ibv_qp_attr = unsafe { std::mem::zeroed() };
    let mut init: ibv_qp_init_attr = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe {
            ibv_query_qp(
                a,
                &mut attr,
                ibv_qp_attr_mask::IBV_QP_STATE.0 as i32,
                &mut init,
            )
        },
        0
    );
    assert_eq!(attr.qp_state, ibv_qp_state::IBV_QPS_ERR);
    cleanup(d, &[a, b], &[rx], None);
}

fn sc_fault_delay() {
    // SOFTRDMA_FAULTS=delay:qp=#2,ms=1500 — completions of QP #2 are held; QP #4's overtake them.
    let d = open_dev();
    let (a1, b1) = pair(&d, null_mut(), LW | RW);
    let (a2, b2) = pair(&d, null_mut(), LW | RW);
    let m = reg(&d, 4096, LW | RW);
    assert_eq!(
        post_send(
            b1,
            1,
            op::IBV_WR_RDMA_WRITE,
            &m,
            0,
            8,
            Some((m.addr() + 1024, m.rkey()))
        ),
        0
    );
    assert_eq!(
        post_send(
            b1,
            2,
            op::IBV_WR_RDMA_WRITE,
            &m,
            0,
            8,
            Some((m.addr() + 1024, m.rkey()))
        ),
        0
    );
    assert_eq!(
        post_send(
            b2,
            3,
            op::IBV_WR_RDMA_WRITE,
            &m,
            0,
            8,
            Some((m.addr() + 2048, m.rkey()))
        ),
        0
    );
    let w = poll(d.cq, 3, 5000);
    assert_eq!(
        statuses(&w),
        vec![(3, 0), (1, 0), (2, 0)],
        "QP #2's completions delayed behind QP #4's, in order"
    );
    cleanup(d, &[a1, b1, a2, b2], &[m], None);
}

fn sc_fault_loseflush() {
    // SOFTRDMA_FAULTS=loseflush:qp=#1,count=2 — two of the four flush completions are lost.
    let d = open_dev();
    let (a, b) = pair(&d, null_mut(), LW);
    let rx = reg(&d, 4096, LW);
    for i in 0..4 {
        post_recv(a, 500 + i, &rx, 0, 64);
    }
    to_err(a);
    let w = poll(d.cq, 4, 500);
    assert_eq!(
        statuses(&w),
        vec![
            (502, st::IBV_WC_WR_FLUSH_ERR),
            (503, st::IBV_WC_WR_FLUSH_ERR)
        ]
    );
    assert_eq!(my_counter(Counter::FaultsInjected), 2);
    cleanup(d, &[a, b], &[rx], None);
}

fn sc_fault_async() {
    // SOFTRDMA_FAULTS=async:event=device_fatal,after_ms=50; the parent then sends
    // "async port_err" on the control socket.
    let d = open_dev();
    let ev = async_event(d.ctx, 5000).expect("device_fatal from the env rule");
    assert_eq!(ev.0, ibv_event_type::IBV_EVENT_DEVICE_FATAL as u32);
    ready_and_wait();
    let ev = async_event(d.ctx, 5000).expect("port_err from the control socket");
    assert_eq!(ev.0, ibv_event_type::IBV_EVENT_PORT_ERR as u32);
    let mut pa: ibv_port_attr = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { ___ibv_query_port(d.ctx, 1, &mut pa) }, 0);
    assert_eq!(pa.state, ibv_port_state::IBV_PORT_DOWN);
    cleanup(d, &[], &[], None);
}

static CM_DROPS: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

unsafe extern "C" fn on_drop(_arg: *mut std::ffi::c_void, qpn: u32) {
    CM_DROPS.lock().unwrap().push(qpn);
}

fn sc_fault_cmdrop() {
    // The CM drop request (fault f) reaches librdmacm through the private vtable; here the test
    // registers the handler itself and the parent sends "cmdrop qp=#1".
    let d = open_dev();
    let (a, b) = pair(&d, null_mut(), LW);
    let vt = unsafe {
        let f = libc::dlsym(libc::RTLD_DEFAULT, c"softrdma_private_v1".as_ptr());
        assert!(!f.is_null(), "softrdma_private_v1 not exported");
        let f: extern "C" fn() -> *const softrdma_abi::private::SoftrdmaPrivateV1 =
            std::mem::transmute(f);
        &*f()
    };
    assert_eq!(
        vt.abi_version,
        softrdma_abi::private::SOFTRDMA_PRIVATE_ABI_VERSION
    );
    unsafe { (vt.set_cm_drop_handler)(Some(on_drop), null_mut()) };
    ready_and_wait();
    let t0 = Instant::now();
    while CM_DROPS.lock().unwrap().is_empty() && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(*CM_DROPS.lock().unwrap(), vec![qpn(a)]);
    unsafe { (vt.set_cm_drop_handler)(None, null_mut()) };
    cleanup(d, &[a, b], &[], None);
}

fn sc_fault_random() {
    // SOFTRDMA_FAULTS=random:seed=42,rate=0.15,kinds=fail|qperr — prints the outcome sequence.
    let d = open_dev();
    let (a, b) = pair(&d, null_mut(), LW | RW);
    let m = reg(&d, 4096, LW | RW);
    let mut log = Vec::new();
    for i in 0..200u64 {
        assert_eq!(
            post_send(
                b,
                i,
                op::IBV_WR_RDMA_WRITE,
                &m,
                0,
                8,
                Some((m.addr() + 64, m.rkey()))
            ),
            0
        );
        let w = poll(d.cq, 1, 2000);
        assert_eq!(w.len(), 1);
        log.push(format!("{}:{}", w[0].wr_id, w[0].status));
        if w[0].status != st::IBV_WC_SUCCESS {
            break;
        }
    }
    println!("RANDOM {}", log.join(","));
    cleanup(d, &[a, b], &[m], None);
}

const STRESS_MSGS: u64 = 3000;

fn read_line() -> String {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    line.trim().to_string()
}

/// Responder: one SRQ shared by 4 QPs, fed by 2 requester processes × 2 QPs concurrently.
fn sc_stress_responder() {
    let d = open_dev();
    let srq = unsafe {
        let mut a: ibv_srq_init_attr = std::mem::zeroed();
        a.attr.max_wr = 64;
        a.attr.max_sge = 1;
        ibv_create_srq(d.pd, &mut a)
    };
    assert!(!srq.is_null());
    let rx = reg(&d, 64 * 64, LW);
    let qps: Vec<_> = (0..4).map(|_| create_qp(&d, srq)).collect();
    println!(
        "QPNS {}",
        qps.iter()
            .map(|&q| qpn(q).to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    std::io::stdout().flush().unwrap();
    let peers: Vec<u32> = read_line()
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    for (q, p) in qps.iter().zip(&peers) {
        connect(*q, *p, LW);
    }
    for i in 0..64u64 {
        post_srq(srq, i, &rx, i as usize * 64, 64);
    }
    println!("READY");
    std::io::stdout().flush().unwrap();
    let mut next = [0u64; 4];
    let mut total = 0;
    let t0 = Instant::now();
    while total < 4 * STRESS_MSGS {
        assert!(
            t0.elapsed() < Duration::from_secs(40),
            "stress: only {total} messages arrived"
        );
        let mut wc: [ibv_wc; 16] = unsafe { std::mem::zeroed() };
        let n = unsafe { ibv_poll_cq(d.cq, 16, wc.as_mut_ptr()) };
        assert!(n >= 0);
        for w in &wc[..n as usize] {
            assert_eq!(
                w.status,
                st::IBV_WC_SUCCESS,
                "stress: recv wr_id {} failed",
                w.wr_id
            );
            let k = qps
                .iter()
                .position(|&q| qpn(q) == w.qp_num)
                .expect("qp_num of an SRQ receive");
            let off = w.wr_id as usize * 64;
            let seq = u64::from_le_bytes(rx.mem[off..off + 8].try_into().unwrap());
            assert_eq!(seq, next[k], "stress: QP {k} out of order");
            next[k] += 1;
            total += 1;
            post_srq(srq, w.wr_id, &rx, off, 64);
        }
        if n == 0 {
            std::thread::yield_now();
        }
    }
    println!("RECEIVED {total}");
    std::io::stdout().flush().unwrap();
    read_line(); // requesters done
    cleanup(d, &qps, &[rx], Some(srq));
}

/// Requester: 2 QPs, STRESS_MSGS SENDs each, interleaved, bounded outstanding.
fn sc_stress_requester() {
    let d = open_dev();
    let mut tx = reg(&d, 4096, LW);
    let qps: Vec<_> = (0..2).map(|_| create_qp(&d, null_mut())).collect();
    println!(
        "QPNS {}",
        qps.iter()
            .map(|&q| qpn(q).to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    std::io::stdout().flush().unwrap();
    let peers: Vec<u32> = read_line()
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    for (q, p) in qps.iter().zip(&peers) {
        connect(*q, *p, LW);
    }
    read_line(); // go
    let mut sent = [0u64; 2];
    let mut done = 0u64;
    let mut outstanding = 0;
    let t0 = Instant::now();
    while done < 2 * STRESS_MSGS {
        assert!(
            t0.elapsed() < Duration::from_secs(40),
            "stress: requester stuck at {done}"
        );
        for k in 0..2 {
            if sent[k] < STRESS_MSGS && outstanding < 32 {
                let slot = k * 1024 + (sent[k] as usize % 64) * 16;
                tx.mem[slot..slot + 8].copy_from_slice(&sent[k].to_le_bytes());
                assert_eq!(
                    post_send(qps[k], sent[k], op::IBV_WR_SEND, &tx, slot, 8, None),
                    0
                );
                sent[k] += 1;
                outstanding += 1;
            }
        }
        let mut wc: [ibv_wc; 16] = unsafe { std::mem::zeroed() };
        let n = unsafe { ibv_poll_cq(d.cq, 16, wc.as_mut_ptr()) };
        for w in &wc[..n.max(0) as usize] {
            assert_eq!(
                w.status,
                st::IBV_WC_SUCCESS,
                "stress: send {} failed",
                w.wr_id
            );
            done += 1;
            outstanding -= 1;
        }
    }
    println!("SENT {done}");
    std::io::stdout().flush().unwrap();
    cleanup(d, &qps, &[tx], None);
}

fn sc_peer(role: &str) {
    // Two processes; the parent relays QPNs and later kill -9s the "victim".
    let d = open_dev();
    let q = create_qp(&d, null_mut());
    let rx = reg(&d, 4096, LW | RW);
    println!("QPN {}", qpn(q));
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    let remote: u32 = line.trim().parse().expect("peer QPN");
    connect(q, remote, LW | RW);
    for i in 0..4 {
        post_recv(q, 600 + i, &rx, 0, 64);
    }
    if role == "victim" {
        println!("READY");
        std::io::stdout().flush().unwrap();
        std::thread::sleep(Duration::from_secs(30));
        return;
    }
    // Survivor: one SEND works while the peer lives.
    line.clear();
    std::io::stdin().read_line(&mut line).unwrap(); // "go" once the victim is connected
    assert_eq!(post_send(q, 1, op::IBV_WR_SEND, &rx, 0, 16, None), 0);
    assert_eq!(
        statuses(&poll(d.cq, 1, 5000)),
        vec![(1, st::IBV_WC_SUCCESS)]
    );
    println!("READY");
    std::io::stdout().flush().unwrap();
    line.clear();
    std::io::stdin().read_line(&mut line).unwrap(); // "killed"
                                                    // Within a bounded time our QP goes to ERR and the posted receives are flushed.
    let w = poll(d.cq, 4, 5000);
    assert_eq!(
        statuses(&w),
        (600..604)
            .map(|i| (i, st::IBV_WC_WR_FLUSH_ERR))
            .collect::<Vec<_>>()
    );
    assert_eq!(post_send(q, 2, op::IBV_WR_SEND, &rx, 0, 16, None), 0);
    assert_eq!(
        statuses(&poll(d.cq, 1, 5000)),
        vec![(2, st::IBV_WC_WR_FLUSH_ERR)]
    );
    cleanup(d, &[q], &[rx], None);
}

// Shared-memory fast path across two processes: memfd-backed MRs on both sides move SEND,
// WRITE and READ payload by memcpy (counted in mapped_bytes), also when each region is made of
// several files (24 KiB memfds at consecutive addresses, so the WRITE and the READ cross file
// boundaries on both sides); an anonymous local buffer falls back to process_vm_*; keys and
// bounds are checked exactly as before (out of range and a deregistered rkey fail with
// REM_ACCESS_ERR).
const SHM_LEN: usize = 128 << 10;
/// Size of each memfd behind the shared regions of `sc_shm`.
const SHM_PIECE: usize = 24 << 10;

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn sc_shm(role: &str) {
    let d = open_dev();
    let q = create_qp(&d, null_mut());
    let mut line = String::new();
    if role == "responder" {
        let mut rx = reg_memfds(&d, SHM_LEN, SHM_PIECE, LW | RW | RR);
        rx.mem[64 << 10..80 << 10].copy_from_slice(&pattern(7, 16 << 10));
        println!("QPN {} {} {}", qpn(q), rx.addr(), rx.rkey());
        std::io::stdout().flush().unwrap();
        std::io::stdin().read_line(&mut line).unwrap();
        connect(q, line.trim().parse().expect("peer QPN"), LW | RW | RR);
        post_recv(q, 1, &rx, 0, 4096);
        println!("READY");
        std::io::stdout().flush().unwrap();
        line.clear();
        std::io::stdin().read_line(&mut line).unwrap(); // "check"
        let w = poll(d.cq, 1, 5000);
        assert_eq!(statuses(&w), vec![(1, st::IBV_WC_SUCCESS)]);
        assert_eq!(w[0].byte_len, 4096);
        assert_eq!(&rx.mem[..4096], &pattern(1, 4096)[..], "SEND payload");
        assert_eq!(
            &rx.mem[16 << 10..32 << 10],
            &pattern(2, 16 << 10)[..],
            "WRITE payload"
        );
        assert_eq!(
            &rx.mem[32 << 10..36 << 10],
            &pattern(3, 4096)[..],
            "anonymous WRITE"
        );
        // Deregister: the peer's cached mapping must not let the old rkey through.
        unsafe { assert_eq!(ibv_dereg_mr(rx.mr), 0) };
        let mem_copy = rx.mem[96 << 10..].to_vec();
        println!("DEREGISTERED");
        std::io::stdout().flush().unwrap();
        line.clear();
        std::io::stdin().read_line(&mut line).unwrap(); // "done"
        assert_eq!(&rx.mem[96 << 10..], &mem_copy[..], "no write after dereg");
        assert_eq!(
            async_event(d.ctx, 5000).map(|e| e.0),
            Some(ibv_event_type::IBV_EVENT_QP_ACCESS_ERR as u32)
        );
        cleanup(d, &[q], &[], None);
        drop(rx);
        return;
    }
    let mut tx = reg_memfds(&d, SHM_LEN, SHM_PIECE, LW);
    let mut anon = reg(&d, 4096, LW);
    println!("QPN {}", qpn(q));
    std::io::stdout().flush().unwrap();
    std::io::stdin().read_line(&mut line).unwrap();
    let v: Vec<u64> = line
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    let (raddr, rkey) = (v[1], v[2] as u32);
    connect(q, v[0] as u32, LW | RW | RR);
    line.clear();
    std::io::stdin().read_line(&mut line).unwrap(); // "go"
    tx.mem[..4096].copy_from_slice(&pattern(1, 4096));
    tx.mem[16 << 10..32 << 10].copy_from_slice(&pattern(2, 16 << 10));
    anon.mem.copy_from_slice(&pattern(3, 4096));
    let m0 = my_counter(Counter::MappedBytes);
    assert_eq!(post_send(q, 10, op::IBV_WR_SEND, &tx, 0, 4096, None), 0);
    let remote = |off: u64| Some((raddr + off, rkey));
    let w = op::IBV_WR_RDMA_WRITE;
    assert_eq!(
        post_send(q, 11, w, &tx, 16 << 10, 16 << 10, remote(16 << 10)),
        0
    );
    let r = op::IBV_WR_RDMA_READ;
    assert_eq!(
        post_send(q, 12, r, &tx, 64 << 10, 16 << 10, remote(64 << 10)),
        0
    );
    let done = poll(d.cq, 3, 5000);
    assert_eq!(
        statuses(&done),
        vec![(10, 0), (11, 0), (12, 0)]
            .into_iter()
            .map(|(a, _)| (a, st::IBV_WC_SUCCESS))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        &tx.mem[64 << 10..80 << 10],
        &pattern(7, 16 << 10)[..],
        "READ payload"
    );
    let m1 = my_counter(Counter::MappedBytes);
    assert_eq!(
        m1 - m0,
        (4096 + 2 * (16 << 10)) as i64,
        "all three moved by memcpy"
    );
    // Anonymous local memory: correct data through process_vm_*, not counted as mapped.
    assert_eq!(post_send(q, 13, w, &anon, 0, 4096, remote(32 << 10)), 0);
    assert_eq!(
        statuses(&poll(d.cq, 1, 5000)),
        vec![(13, st::IBV_WC_SUCCESS)]
    );
    assert_eq!(
        my_counter(Counter::MappedBytes),
        m1,
        "anonymous source is not mapped"
    );
    println!("PHASE1");
    std::io::stdout().flush().unwrap();
    line.clear();
    std::io::stdin().read_line(&mut line).unwrap(); // "deregistered"
                                                    // Our cached mapping of the region must not let the stale rkey through.
    assert_eq!(post_send(q, 14, w, &tx, 0, 4096, remote(96 << 10)), 0);
    assert_eq!(
        statuses(&poll(d.cq, 1, 5000)),
        vec![(14, st::IBV_WC_REM_ACCESS_ERR)]
    );
    cleanup(d, &[q], &[tx, anon], None);
}

// SEND_WITH_INV invalidates the named rkey of the responder: a later WRITE with it fails with
// REM_ACCESS_ERR (as on hardware); a key that names no region of the responder changes nothing.
fn sc_send_inv() {
    let d = open_dev();
    let (a, b) = pair(&d, null_mut(), LW | RW | RR);
    let rx = reg(&d, 4096, LW);
    let target = reg(&d, 4096, LW | RW);
    let tx = reg(&d, 4096, LW);
    let sig = ibv_send_flags::IBV_SEND_SIGNALED.0;
    let w = op::IBV_WR_RDMA_WRITE;
    let remote = Some((target.addr(), target.rkey()));
    // The key works before.
    assert_eq!(post_send(b, 1, w, &tx, 0, 16, remote), 0);
    assert_eq!(
        statuses(&poll(d.cq, 1, 5000)),
        vec![(1, st::IBV_WC_SUCCESS)]
    );
    // An unknown key: delivered, nothing invalidated.
    post_recv(a, 100, &rx, 0, 64);
    let inv = op::IBV_WR_SEND_WITH_INV;
    assert_eq!(post_send_ex(b, 2, inv, &tx, 0, 8, sig, 0xabcd, None), 0);
    assert_eq!(poll(d.cq, 2, 5000).len(), 2);
    assert_eq!(post_send(b, 3, w, &tx, 0, 16, remote), 0);
    assert_eq!(
        statuses(&poll(d.cq, 1, 5000)),
        vec![(3, st::IBV_WC_SUCCESS)]
    );
    // Invalidate the target's key.
    post_recv(a, 101, &rx, 0, 64);
    assert_eq!(
        post_send_ex(b, 4, inv, &tx, 0, 8, sig, target.rkey(), None),
        0
    );
    let got = poll(d.cq, 2, 5000);
    let recv = got
        .iter()
        .find(|x| x.wr_id == 101)
        .expect("receive completion");
    assert_eq!(recv.status, st::IBV_WC_SUCCESS);
    assert_ne!(recv.wc_flags & ibv_wc_flags::IBV_WC_WITH_INV.0, 0);
    assert_eq!(
        unsafe { recv.imm_data_invalidated_rkey_union.invalidated_rkey },
        target.rkey()
    );
    assert_eq!(post_send(b, 5, w, &tx, 0, 16, remote), 0);
    let got = poll(d.cq, 1, 5000);
    assert_eq!(
        statuses(&got),
        vec![(5, st::IBV_WC_REM_ACCESS_ERR)],
        "stale key must fail"
    );
    let _ = poll(d.cq, 8, 300);
    cleanup(d, &[a, b], &[rx, target, tx], None);
}

// ibv_destroy_qp drops the QP's unread async events (the kernel does); other QPs' events stay.
fn sc_destroy_events() {
    let d = open_dev();
    let (a1, b1) = pair(&d, null_mut(), LW | RW | RR);
    let (a2, b2) = pair(&d, null_mut(), LW | RW | RR);
    let ro = reg(&d, 4096, LW); // no REMOTE_WRITE: a WRITE to it is a remote access error
    let tx = reg(&d, 4096, LW);
    let before = my_counter(Counter::AsyncEvents);
    let w = op::IBV_WR_RDMA_WRITE;
    assert_eq!(
        post_send(b1, 1, w, &tx, 0, 8, Some((ro.addr(), ro.rkey()))),
        0
    );
    assert_eq!(
        post_send(b2, 2, w, &tx, 0, 8, Some((ro.addr(), ro.rkey()))),
        0
    );
    let t0 = Instant::now();
    while my_counter(Counter::AsyncEvents) < before + 2 && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        my_counter(Counter::AsyncEvents),
        before + 2,
        "two QP_ACCESS_ERR raised"
    );
    let _ = poll(d.cq, 16, 300);
    unsafe { assert_eq!(ibv_destroy_qp(a1), 0) };
    let access = ibv_event_type::IBV_EVENT_QP_ACCESS_ERR as u32;
    assert_eq!(
        async_event(d.ctx, 2000),
        Some((access, a2)),
        "a2's event stays, a1's is gone"
    );
    assert_eq!(
        async_event(d.ctx, 200),
        None,
        "nothing names the destroyed QP"
    );
    cleanup(d, &[b1, a2, b2], &[ro, tx], None);
}

/// `poll(2)` of `fd` for IN and OUT with a 0 timeout: (readable, writable).
fn fd_ready(fd: i32) -> (bool, bool) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN | libc::POLLOUT,
        revents: 0,
    };
    assert!(unsafe { libc::poll(&mut p, 1, 0) } >= 0, "poll fd {fd}");
    (
        p.revents & libc::POLLIN != 0,
        p.revents & libc::POLLOUT != 0,
    )
}

/// Wait up to `ms` for `fd` to become readable.
fn wait_readable(fd: i32, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    unsafe { libc::poll(&mut p, 1, ms) == 1 }
}

// The event fds (a completion channel's, the context's async_fd) behave like the kernel's
// uverbs event files: readable exactly while an event is queued and never writable (an fd
// that is always writable keeps an application that registers it for EPOLLOUT, as upstream
// SPDK's rdma transport does, awake without end).
fn sc_event_fds() {
    let d = open_dev();
    let rx = reg(&d, 4096, LW);
    let tx = reg(&d, 4096, LW);
    unsafe {
        let ch = ibv_create_comp_channel(d.ctx);
        assert!(!ch.is_null());
        let cq2 = ibv_create_cq(d.ctx, 16, null_mut(), ch, 0);
        assert!(!cq2.is_null());
        let (fd, afd) = ((*ch).fd, (*d.ctx).async_fd);
        assert_eq!(fd_ready(fd), (false, false), "new completion channel");
        assert_eq!(fd_ready(afd), (false, false), "new context's async_fd");
        let q1 = create_qp(
            &Dev {
                ctx: d.ctx,
                pd: d.pd,
                cq: cq2,
            },
            null_mut(),
        );
        let q2 = create_qp(&d, null_mut());
        connect(q1, qpn(q2), LW);
        connect(q2, qpn(q1), LW);
        for round in 0..2u64 {
            post_recv(q1, 10 + round, &rx, 0, 64);
            assert_eq!(ibv_req_notify_cq(cq2, 0), 0);
            assert_eq!(fd_ready(fd), (false, false), "armed, no completion yet");
            assert_eq!(
                post_send(q2, 20 + round, op::IBV_WR_SEND, &tx, 0, 8, None),
                0
            );
            assert!(wait_readable(fd, 5000), "an event after the completion");
            assert_eq!(fd_ready(fd), (true, false), "event queued: readable only");
            let (mut ecq, mut ectx) = (null_mut(), null_mut());
            assert_eq!(ibv_get_cq_event(ch, &mut ecq, &mut ectx), 0);
            assert_eq!(ecq, cq2);
            assert_eq!(fd_ready(fd), (false, false), "event read: neither");
            ibv_ack_cq_events(cq2, 1);
            assert_eq!(statuses(&poll(cq2, 1, 1000)), vec![(10 + round, 0)]);
            assert_eq!(statuses(&poll(d.cq, 1, 1000)), vec![(20 + round, 0)]);
            assert_eq!(fd_ready(fd), (false, false), "polled: neither");
        }
        // A completion that arrives after arming a CQ that still held an entry (the event is
        // owed, see docs/softrdma.md) wakes the fd only when the event thread raises the debt
        // (its 100 ms tick); a kernel provider would raise an event for it at once.
        for i in 0..2u64 {
            post_recv(q1, 40 + i, &rx, 0, 64);
            assert_eq!(post_send(q2, 50 + i, op::IBV_WR_SEND, &tx, 0, 8, None), 0);
        }
        assert_eq!(poll(d.cq, 2, 2000).len(), 2);
        assert_eq!(ibv_req_notify_cq(cq2, 0), 0);
        assert_eq!(
            statuses(&poll(cq2, 1, 1000)),
            vec![(40, 0)],
            "a partial poll"
        );
        assert_eq!(
            fd_ready(fd),
            (false, false),
            "the debt is not on the fd yet"
        );
        post_recv(q1, 42, &rx, 0, 64);
        assert_eq!(post_send(q2, 52, op::IBV_WR_SEND, &tx, 0, 8, None), 0);
        assert_eq!(statuses(&poll(d.cq, 1, 2000)), vec![(52, 0)]);
        let t0 = Instant::now();
        assert!(wait_readable(fd, 2000), "the owed event reaches the fd");
        println!("OWED_WAKE_MS {}", t0.elapsed().as_millis());
        assert_eq!(
            fd_ready(fd),
            (true, false),
            "owed event raised: readable only"
        );
        let (mut ecq, mut ectx) = (null_mut(), null_mut());
        assert_eq!(ibv_get_cq_event(ch, &mut ecq, &mut ectx), 0);
        ibv_ack_cq_events(cq2, 1);
        assert_eq!(statuses(&poll(cq2, 2, 1000)), vec![(41, 0), (42, 0)]);
        assert_eq!(fd_ready(fd), (false, false), "all read and polled: neither");
        // async_fd: a WRITE to a region without REMOTE_WRITE raises QP_ACCESS_ERR on q1.
        assert_eq!(
            post_send(
                q2,
                30,
                op::IBV_WR_RDMA_WRITE,
                &tx,
                0,
                8,
                Some((rx.addr(), rx.rkey()))
            ),
            0
        );
        assert!(
            wait_readable(afd, 5000),
            "an async event after the access error"
        );
        assert_eq!(
            fd_ready(afd),
            (true, false),
            "async event queued: readable only"
        );
        let mut ev: ibv_async_event = std::mem::zeroed();
        assert_eq!(ibv_get_async_event(d.ctx, &mut ev), 0);
        assert_eq!(
            (ev.event_type as u32, ev.element.qp),
            (ibv_event_type::IBV_EVENT_QP_ACCESS_ERR as u32, q1)
        );
        ibv_ack_async_event(&mut ev);
        assert_eq!(fd_ready(afd), (false, false), "async event read: neither");
        let _ = poll(d.cq, 16, 300);
        assert_eq!(ibv_destroy_qp(q1), 0);
        assert_eq!(ibv_destroy_cq(cq2), 0);
        assert_eq!(ibv_destroy_comp_channel(ch), 0);
        cleanup(d, &[q2], &[rx, tx], None);
    }
}

// createfail rules (SOFTRDMA_FAULTS="createfail:obj=cq,nth=2;createfail:obj=qp,errno=eagain"):
// the second ibv_create_cq and the first ibv_create_qp fail with the rule's errno, once.
fn sc_fault_create() {
    let d = open_dev(); // first CQ
    unsafe {
        let cq = ibv_create_cq(d.ctx, 16, null_mut(), null_mut(), 0);
        assert!(cq.is_null(), "second ibv_create_cq must fail");
        assert_eq!(*libc::__errno_location(), libc::ENOMEM);
        let cq = ibv_create_cq(d.ctx, 16, null_mut(), null_mut(), 0);
        assert!(!cq.is_null(), "the rule fires once");
        let mut a: ibv_qp_init_attr = std::mem::zeroed();
        a.send_cq = d.cq;
        a.recv_cq = d.cq;
        a.qp_type = ibv_qp_type::IBV_QPT_RC;
        a.cap.max_send_wr = 4;
        a.cap.max_recv_wr = 4;
        a.cap.max_send_sge = 1;
        a.cap.max_recv_sge = 1;
        let qp = ibv_create_qp(d.pd, &mut a);
        assert!(qp.is_null(), "first ibv_create_qp must fail");
        assert_eq!(*libc::__errno_location(), libc::EAGAIN);
        let qp = ibv_create_qp(d.pd, &mut a);
        assert!(!qp.is_null());
        assert_eq!(my_counter(Counter::FaultsInjected), 2);
        assert_eq!(ibv_destroy_cq(cq), 0);
        cleanup(d, &[qp], &[], None);
    }
}

// An injected PORT_ERR affects the port's QPs as a link loss does: a WR retries until the
// transport timeout and fails with RETRY_EXC_ERR (the QP goes to ERR, the rest is flushed);
// after PORT_ACTIVE new connections work again.
fn sc_port_err() {
    let d = open_dev();
    let (a, b) = pair(&d, null_mut(), LW | RW | RR);
    let target = reg(&d, 4096, LW | RW);
    let tx = reg(&d, 4096, LW);
    let w = op::IBV_WR_RDMA_WRITE;
    let remote = Some((target.addr(), target.rkey()));
    assert_eq!(post_send(b, 1, w, &tx, 0, 8, remote), 0);
    assert_eq!(
        statuses(&poll(d.cq, 1, 5000)),
        vec![(1, st::IBV_WC_SUCCESS)]
    );
    control(std::process::id(), "async port_err");
    let port_err = ibv_event_type::IBV_EVENT_PORT_ERR as u32;
    assert_eq!(async_event(d.ctx, 5000).map(|e| e.0), Some(port_err));
    assert_eq!(post_send(b, 2, w, &tx, 0, 8, remote), 0);
    assert_eq!(post_send(b, 3, w, &tx, 0, 8, remote), 0);
    let got = poll(d.cq, 2, 10000);
    assert_eq!(
        statuses(&got),
        vec![(2, st::IBV_WC_RETRY_EXC_ERR), (3, st::IBV_WC_WR_FLUSH_ERR)],
        "a WR over a down port times out"
    );
    control(std::process::id(), "async port_active");
    let port_active = ibv_event_type::IBV_EVENT_PORT_ACTIVE as u32;
    assert_eq!(async_event(d.ctx, 5000).map(|e| e.0), Some(port_active));
    let (c, e) = pair(&d, null_mut(), LW | RW | RR);
    assert_eq!(post_send(e, 4, w, &tx, 0, 8, remote), 0);
    assert_eq!(
        statuses(&poll(d.cq, 1, 5000)),
        vec![(4, st::IBV_WC_SUCCESS)]
    );
    let _ = poll(d.cq, 16, 200);
    cleanup(d, &[a, b, c, e], &[target, tx], None);
}

/// Post RDMA WRITEs (or READs, `opc`) `(wr_id, local offset, remote address, len)` as one chain.
fn post_chain(
    qp: *mut ibv_qp,
    opc: u32,
    b: &Buf,
    rkey: u32,
    wrs: &[(u64, usize, u64, u32)],
) -> i32 {
    unsafe {
        let mut sges: Vec<ibv_sge> = wrs
            .iter()
            .map(|&(_, off, _, len)| ibv_sge {
                addr: b.addr() + off as u64,
                length: len,
                lkey: b.lkey(),
            })
            .collect();
        let mut list: Vec<ibv_send_wr> = (0..wrs.len()).map(|_| std::mem::zeroed()).collect();
        for (i, &(id, _, raddr, _)) in wrs.iter().enumerate() {
            list[i].wr_id = id;
            list[i].sg_list = &mut sges[i];
            list[i].num_sge = 1;
            list[i].opcode = opc;
            list[i].send_flags = ibv_send_flags::IBV_SEND_SIGNALED.0;
            list[i].wr.rdma.remote_addr = raddr;
            list[i].wr.rdma.rkey = rkey;
        }
        for i in 1..list.len() {
            let next: *mut ibv_send_wr = &mut list[i];
            list[i - 1].next = next;
        }
        let mut bad = null_mut();
        ibv_post_send(qp, list.as_mut_ptr(), &mut bad)
    }
}

// A chain of RDMA WRITEs into anonymous memory takes one process_vm_writev (copy_calls + 1),
// and a chain whose second WRITE cannot land (its page was unmapped after registration) fails
// exactly that WR: the first completes and its bytes landed, the third is flushed.
fn sc_write_chain() {
    let d = open_dev();
    let (a, b) = pair(&d, null_mut(), LW | RW | RR);
    let pg = 4096usize;
    let target = unsafe {
        let p = libc::mmap(
            null_mut(),
            3 * pg,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        let mr = ibv_reg_mr(d.pd, p, 3 * pg, (LW | RW | RR) as i32);
        assert!(!mr.is_null());
        Buf {
            mr,
            mem: Mem::Shared {
                ptr: p as *mut u8,
                len: 3 * pg,
                map_len: 3 * pg,
                fds: Vec::new(),
            },
        }
    };
    let mut tx = reg(&d, 4096, LW);
    tx.mem[..48].copy_from_slice(&pattern(5, 48));
    let (t, rk) = (target.addr(), target.rkey());
    let w = op::IBV_WR_RDMA_WRITE;
    let calls = my_counter(Counter::CopyCalls);
    let chain = [
        (1, 0, t, 16),
        (2, 16, t + 16, 16),
        (3, 32, t + 2 * pg as u64, 16),
    ];
    assert_eq!(post_chain(b, w, &tx, rk, &chain), 0);
    assert_eq!(
        statuses(&poll(d.cq, 3, 5000)),
        vec![
            (1, st::IBV_WC_SUCCESS),
            (2, st::IBV_WC_SUCCESS),
            (3, st::IBV_WC_SUCCESS)
        ]
    );
    assert_eq!(
        my_counter(Counter::CopyCalls) - calls,
        1,
        "three WRITEs, one system call"
    );
    assert_eq!(&target.mem[..32], &pattern(5, 48)[..32]);
    assert_eq!(&target.mem[2 * pg..2 * pg + 16], &pattern(5, 48)[32..]);
    // The same bytes read back by a READ chain into tx[1024..1072]: one system call too.
    let calls = my_counter(Counter::CopyCalls);
    let chain = [
        (7, 1024, t, 16),
        (8, 1040, t + 16, 16),
        (9, 1056, t + 2 * pg as u64, 16),
    ];
    assert_eq!(post_chain(b, op::IBV_WR_RDMA_READ, &tx, rk, &chain), 0);
    let got = poll(d.cq, 3, 5000);
    assert_eq!(
        statuses(&got),
        vec![
            (7, st::IBV_WC_SUCCESS),
            (8, st::IBV_WC_SUCCESS),
            (9, st::IBV_WC_SUCCESS)
        ]
    );
    assert!(
        got.iter().all(|c| c.byte_len == 16),
        "READ completions carry byte_len"
    );
    assert_eq!(
        my_counter(Counter::CopyCalls) - calls,
        1,
        "three READs, one system call"
    );
    assert_eq!(&tx.mem[1024..1072], &pattern(5, 48)[..]);
    // Unmap the middle page behind the registration's back; reset the landing zones.
    unsafe {
        assert_eq!(libc::munmap((t + pg as u64) as *mut _, pg), 0);
        std::ptr::write_bytes(t as *mut u8, 0, 16);
        std::ptr::write_bytes((t + 2 * pg as u64) as *mut u8, 0, 16);
    }
    let chain = [
        (4, 0, t, 16),
        (5, 16, t + pg as u64, 16),
        (6, 32, t + 2 * pg as u64, 16),
    ];
    assert_eq!(post_chain(b, w, &tx, rk, &chain), 0);
    assert_eq!(
        statuses(&poll(d.cq, 3, 5000)),
        vec![
            (4, st::IBV_WC_SUCCESS),
            (5, st::IBV_WC_REM_ACCESS_ERR),
            (6, st::IBV_WC_WR_FLUSH_ERR)
        ]
    );
    unsafe {
        assert_eq!(
            std::slice::from_raw_parts(t as *const u8, 16),
            &pattern(5, 48)[..16]
        );
        let third = std::slice::from_raw_parts((t + 2 * pg as u64) as *const u8, 16);
        assert_eq!(third, &[0u8; 16], "nothing after the failed WR landed");
    }
    let _ = poll(d.cq, 8, 200);
    unsafe { assert_eq!(ibv_dereg_mr(target.mr), 0) };
    let Mem::Shared { ptr, .. } = target.mem else {
        unreachable!()
    };
    unsafe {
        libc::munmap(ptr as *mut _, pg);
        libc::munmap(ptr.add(2 * pg) as *mut _, pg);
    }
    std::mem::forget(target.mem);
    cleanup(d, &[a, b], &[tx], None);
}

fn sc_shm_dereg() {
    // Same process: a region mapped by an earlier access, then deregistered; the rkey must fail.
    let d = open_dev();
    let (a, b) = pair(&d, null_mut(), LW | RW | RR);
    let rx = reg_memfd(&d, SHM_LEN, LW | RW);
    let mut tx = reg_memfd(&d, 4096, LW);
    tx.mem.copy_from_slice(&pattern(9, 4096));
    let m0 = my_counter(Counter::MappedBytes);
    let w = op::IBV_WR_RDMA_WRITE;
    let (raddr, rkey) = (rx.addr(), rx.rkey());
    assert_eq!(post_send(b, 1, w, &tx, 0, 4096, Some((raddr, rkey))), 0);
    assert_eq!(
        statuses(&poll(d.cq, 1, 5000)),
        vec![(1, st::IBV_WC_SUCCESS)]
    );
    assert_eq!(&rx.mem[..4096], &pattern(9, 4096)[..]);
    assert_eq!(my_counter(Counter::MappedBytes) - m0, 4096);
    // One byte past the region: remote access error.
    let end = raddr + SHM_LEN as u64 - 8;
    assert_eq!(post_send(b, 2, w, &tx, 0, 16, Some((end, rkey))), 0);
    assert_eq!(
        statuses(&poll(d.cq, 1, 5000)),
        vec![(2, st::IBV_WC_REM_ACCESS_ERR)]
    );
    assert_eq!(
        my_counter(Counter::MappedBytes) - m0,
        4096,
        "nothing copied"
    );
    // A deregistered rkey fails although the region was mapped before.
    let (c, e) = pair(&d, null_mut(), LW | RW | RR);
    unsafe { assert_eq!(ibv_dereg_mr(rx.mr), 0) };
    assert_eq!(post_send(e, 3, w, &tx, 0, 16, Some((raddr, rkey))), 0);
    let mut got = poll(d.cq, 4, 5000);
    got.retain(|x| x.wr_id == 3);
    assert_eq!(statuses(&got), vec![(3, st::IBV_WC_REM_ACCESS_ERR)]);
    drop(rx);
    cleanup(d, &[a, b, c, e], &[tx], None);
}

// ---------------------------------------------------------------- parent side

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

fn libdir() -> PathBuf {
    let d = repo_root().join("target/softrdma");
    assert!(
        d.join("libibverbs.so.1").exists(),
        "softrdma is not built: {} is missing. Run `bash scripts/build-softrdma.sh` first.",
        d.join("libibverbs.so.1").display()
    );
    d
}

struct Child {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
    deadline: Instant,
}

fn spawn(scenario: &str, shm: &str, faults: Option<&str>) -> Child {
    let exe = std::env::current_exe().unwrap();
    let mut c = Command::new("timeout");
    c.arg("60").arg(exe).arg("child").arg(scenario);
    c.env("LD_LIBRARY_PATH", libdir())
        .env("SOFTRDMA_SHM_DIR", shm)
        .env_remove("SOFTRDMA_FAULTS");
    if let Some(f) = faults {
        c.env("SOFTRDMA_FAULTS", f);
    }
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = c.spawn().expect("spawn child");
    let out = BufReader::new(child.stdout.take().unwrap());
    Child {
        child,
        out,
        deadline: Instant::now() + Duration::from_secs(60),
    }
}

impl Child {
    fn pid(&self) -> u32 {
        self.child.id()
    }
    /// Next stdout line (the timeout(1) wrapper bounds the wait).
    fn line(&mut self) -> String {
        let mut s = String::new();
        self.out.read_line(&mut s).expect("child stdout");
        assert!(Instant::now() < self.deadline, "child timed out");
        s.trim().to_string()
    }
    fn expect_line(&mut self, prefix: &str) -> String {
        loop {
            let l = self.line();
            assert!(!l.is_empty(), "child exited before printing '{prefix}'");
            if let Some(rest) = l.strip_prefix(prefix) {
                return rest.trim().to_string();
            }
        }
    }
    fn send(&mut self, s: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{s}").unwrap();
        stdin.flush().unwrap();
    }
    fn finish(mut self) -> Vec<String> {
        let mut rest = Vec::new();
        loop {
            let l = self.line();
            if l.is_empty() {
                break;
            }
            rest.push(l);
        }
        let st = self.child.wait().unwrap();
        assert!(st.success(), "child failed: {st}");
        rest
    }
}

/// The pid of the softrdma process behind `timeout 60 <exe>` (the wrapper's child).
fn rdma_pid(wrapper: u32) -> u32 {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{wrapper}/task/{wrapper}/children")) {
            if let Some(p) = s.split_whitespace().next() {
                return p.parse().unwrap();
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("no child of {wrapper}");
}

fn control(pid: u32, cmd: &str) {
    let name = fabric::node_socket_name(pid);
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    UnixDatagram::unbound()
        .unwrap()
        .send_to_addr(cmd.as_bytes(), &addr)
        .expect("control socket");
}

fn run_simple(name: &str, shm: &str, faults: Option<&str>) -> Vec<String> {
    println!("scenario {name} (faults: {faults:?})");
    let c = spawn(name, shm, faults);
    let rest = c.finish();
    assert!(rest.iter().any(|l| l == "CLEAN"), "{name}: no CLEAN line");
    rest
}

fn parent() {
    libdir();
    let shm_dir = std::env::temp_dir().join(format!("softrdma-fabric-test-{}", std::process::id()));
    let shm = shm_dir.to_str().unwrap().to_string();
    run_simple("srq", &shm, None);
    run_simple("remote_access", &shm, None);
    run_simple("opcodes", &shm, None);
    run_simple(
        "fault_fail",
        &shm,
        Some("fail:op=read,nth=3,status=retry_exc_err,qp=#2"),
    );
    run_simple("fault_delay", &shm, Some("delay:qp=#2,ms=1500"));
    run_simple("fault_loseflush", &shm, Some("loseflush:qp=#1,count=2"));
    for (name, faults, cmd) in [
        ("fault_qperr", None, "qperr qp=#1"),
        (
            "fault_async",
            Some("async:event=device_fatal,after_ms=50"),
            "async port_err",
        ),
        ("fault_cmdrop", None, "cmdrop qp=#1"),
    ] {
        println!("scenario {name} (control: {cmd})");
        let mut c = spawn(name, &shm, faults);
        c.expect_line("READY");
        control(rdma_pid(c.pid()), cmd);
        c.send("go");
        assert!(c.finish().iter().any(|l| l == "CLEAN"));
    }
    let r1 = run_simple(
        "fault_random",
        &shm,
        Some("random:seed=42,rate=0.15,kinds=fail|qperr"),
    );
    let r2 = run_simple(
        "fault_random",
        &shm,
        Some("random:seed=42,rate=0.15,kinds=fail|qperr"),
    );
    let seq = |r: &[String]| {
        r.iter()
            .find(|l| l.starts_with("RANDOM"))
            .cloned()
            .expect("RANDOM line")
    };
    assert_eq!(
        seq(&r1),
        seq(&r2),
        "same seed must give the same fault sequence"
    );
    assert!(
        seq(&r1)
            .split(',')
            .next_back()
            .is_some_and(|x| !x.ends_with(":0")),
        "a random fault must have fired"
    );
    run_simple("shm_dereg", &shm, None);
    run_simple("send_inv", &shm, None);
    run_simple("destroy_events", &shm, None);
    let owed = run_simple("event_fds", &shm, None);
    if let Some(l) = owed.iter().find(|l| l.starts_with("OWED_WAKE_MS")) {
        println!(
            "event_fds: a completion after arming with an entry owed woke the fd after {} ms",
            &l[13..]
        );
    }
    run_simple("port_err", &shm, None);
    run_simple("write_chain", &shm, None);
    run_simple(
        "fault_create",
        &shm,
        Some("createfail:obj=cq,nth=2;createfail:obj=qp,errno=eagain"),
    );
    println!("scenario cross-process shared-memory fast path");
    let mut resp = spawn("shm_responder", &shm, None);
    let mut req = spawn("shm_requester", &shm, None);
    let rline = resp.expect_line("QPN ");
    let qline = req.expect_line("QPN ");
    resp.send(&qline);
    req.send(&rline);
    resp.expect_line("READY");
    req.send("go");
    req.expect_line("PHASE1");
    resp.send("check");
    resp.expect_line("DEREGISTERED");
    req.send("deregistered");
    assert!(req.finish().iter().any(|l| l == "CLEAN"));
    resp.send("done");
    assert!(resp.finish().iter().any(|l| l == "CLEAN"));
    // Cross-process SRQ stress: 2 requester processes × 2 QPs into one SRQ shared by 4 QPs.
    println!("scenario cross-process SRQ stress");
    let mut r = spawn("stress_responder", &shm, None);
    let mut q1 = spawn("stress_requester", &shm, None);
    let mut q2 = spawn("stress_requester", &shm, None);
    let rq: Vec<String> = r
        .expect_line("QPNS ")
        .split(' ')
        .map(str::to_string)
        .collect();
    let a = q1.expect_line("QPNS ");
    let b = q2.expect_line("QPNS ");
    r.send(&format!("{a} {b}"));
    q1.send(&rq[..2].join(" "));
    q2.send(&rq[2..].join(" "));
    r.expect_line("READY");
    q1.send("go");
    q2.send("go");
    assert_eq!(r.expect_line("RECEIVED "), (4 * STRESS_MSGS).to_string());
    assert_eq!(q1.expect_line("SENT "), (2 * STRESS_MSGS).to_string());
    assert_eq!(q2.expect_line("SENT "), (2 * STRESS_MSGS).to_string());
    assert!(q1.finish().iter().any(|l| l == "CLEAN"));
    assert!(q2.finish().iter().any(|l| l == "CLEAN"));
    r.send("done");
    assert!(r.finish().iter().any(|l| l == "CLEAN"));
    // Peer death.
    println!("scenario peer death (kill -9)");
    let mut v = spawn("peer_victim", &shm, None);
    let mut s = spawn("peer_survivor", &shm, None);
    let vq = v.expect_line("QPN ");
    let sq = s.expect_line("QPN ");
    v.send(&sq);
    s.send(&vq);
    v.expect_line("READY");
    s.send("go");
    s.expect_line("READY");
    let victim = rdma_pid(v.pid());
    // SAFETY-free in tests: plain kill(2).
    unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    let _ = v.child.wait();
    s.send("killed");
    assert!(s.finish().iter().any(|l| l == "CLEAN"));
    let _ = std::fs::remove_dir_all(&shm_dir);
    println!("all softrdma fabric scenarios passed");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child") {
        match args.get(2).map(String::as_str).unwrap_or("") {
            "srq" => sc_srq(),
            "remote_access" => sc_remote_access(),
            "opcodes" => sc_opcodes(),
            "fault_fail" => sc_fault_fail(),
            "fault_qperr" => sc_fault_qperr(),
            "fault_delay" => sc_fault_delay(),
            "fault_loseflush" => sc_fault_loseflush(),
            "fault_async" => sc_fault_async(),
            "fault_cmdrop" => sc_fault_cmdrop(),
            "fault_random" => sc_fault_random(),
            "stress_responder" => sc_stress_responder(),
            "stress_requester" => sc_stress_requester(),
            "peer_victim" => sc_peer("victim"),
            "shm_responder" => sc_shm("responder"),
            "shm_requester" => sc_shm("requester"),
            "shm_dereg" => sc_shm_dereg(),
            "send_inv" => sc_send_inv(),
            "destroy_events" => sc_destroy_events(),
            "event_fds" => sc_event_fds(),
            "port_err" => sc_port_err(),
            "write_chain" => sc_write_chain(),
            "fault_create" => sc_fault_create(),
            "peer_survivor" => sc_peer("survivor"),
            other => panic!("unknown scenario {other}"),
        }
        return;
    }
    // `cargo test` passes harness flags (e.g. --nocapture, filters); ignore them.
    if args.iter().any(|a| a == "--list") {
        println!("fabric: test");
        return;
    }
    parent();
}
