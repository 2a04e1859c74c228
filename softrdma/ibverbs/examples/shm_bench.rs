//! Throughput of softrdma between two processes with shared-file (memfd) or anonymous memory:
//! 4 KiB SEND message rate, 128 KiB RDMA WRITE and READ bandwidth, against a memcpy of the same
//! cache-resident 128 KiB buffer. qperf registers anonymous memory only, so this is how the
//! memcpy fast path (docs/softrdma.md, "Performance") is measured.
//!
//! ```sh
//! bash scripts/build-softrdma.sh
//! cargo build --release -p softrdma-ibverbs --example shm_bench
//! LD_LIBRARY_PATH=target/softrdma target/release/examples/shm_bench [memfd|hugetlb|anon] [seconds] [local]
//! ```
//! The process forks: the parent is the responder, the child the requester (polling mode).
//! `hugetlb` is a memfd of 2 MiB huge pages (like SPDK's hugetlbfs memory; needs free huge
//! pages). `local` runs both QPs in one thread of one process instead (no scheduler in the
//! loop: the per-message cost of the data path itself).
#![allow(clippy::undocumented_unsafe_blocks)]

use rdma_sys::*;
use std::ptr::null_mut;
use std::time::{Duration, Instant};

const BIG: usize = 128 << 10;
const SMALL: usize = 4096;
const RECVS: usize = 1024;

struct Side {
    ctx: *mut ibv_context,
    pd: *mut ibv_pd,
    cq: *mut ibv_cq,
    qp: *mut ibv_qp,
    mr: *mut ibv_mr,
    mem: *mut u8,
}

/// Which memory the MRs use.
#[derive(Clone, Copy, PartialEq, Eq)]
enum MemKind {
    Memfd,
    Hugetlb,
    Anon,
}

fn alloc(len: usize, kind: MemKind) -> *mut u8 {
    unsafe {
        let (flags, fd) = if kind != MemKind::Anon {
            let huge = if kind == MemKind::Hugetlb {
                libc::MFD_HUGETLB
            } else {
                0
            };
            let fd = libc::memfd_create(c"shm_bench".as_ptr(), libc::MFD_CLOEXEC | huge);
            assert!(fd >= 0, "memfd_create");
            assert_eq!(
                libc::ftruncate(fd, len as i64),
                0,
                "ftruncate (free huge pages?)"
            );
            (libc::MAP_SHARED, fd)
        } else {
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1)
        };
        let p = libc::mmap(
            null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            fd,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        std::ptr::write_bytes(p as *mut u8, 0x5a, len);
        p as *mut u8
    }
}

fn open(kind: MemKind) -> Side {
    unsafe {
        let mut n = 0;
        let list = ibv_get_device_list(&mut n);
        assert!(!list.is_null() && n > 0, "no RDMA device");
        let ctx = ibv_open_device(*list);
        ibv_free_device_list(list);
        let pd = ibv_alloc_pd(ctx);
        let cq = ibv_create_cq(ctx, 4096, null_mut(), null_mut(), 0);
        let mut a: ibv_qp_init_attr = std::mem::zeroed();
        a.send_cq = cq;
        a.recv_cq = cq;
        a.qp_type = ibv_qp_type::IBV_QPT_RC;
        a.cap.max_send_wr = 1024;
        a.cap.max_recv_wr = RECVS as u32;
        a.cap.max_send_sge = 1;
        a.cap.max_recv_sge = 1;
        let qp = ibv_create_qp(pd, &mut a);
        assert!(!qp.is_null());
        let len = (BIG + RECVS * SMALL).next_multiple_of(2 << 20);
        let mem = alloc(len, kind);
        let acc = ibv_access_flags::IBV_ACCESS_LOCAL_WRITE
            | ibv_access_flags::IBV_ACCESS_REMOTE_WRITE
            | ibv_access_flags::IBV_ACCESS_REMOTE_READ;
        let mr = ibv_reg_mr(pd, mem as *mut _, len, acc.0 as i32);
        assert!(!mr.is_null());
        Side {
            ctx,
            pd,
            cq,
            qp,
            mr,
            mem,
        }
    }
}

fn connect(s: &Side, remote: u32) {
    use ibv_qp_attr_mask as m;
    unsafe {
        let mut a: ibv_qp_attr = std::mem::zeroed();
        a.qp_state = ibv_qp_state::IBV_QPS_INIT;
        a.port_num = 1;
        a.qp_access_flags = (ibv_access_flags::IBV_ACCESS_REMOTE_WRITE
            | ibv_access_flags::IBV_ACCESS_REMOTE_READ)
            .0;
        let mask = m::IBV_QP_STATE | m::IBV_QP_PKEY_INDEX | m::IBV_QP_PORT | m::IBV_QP_ACCESS_FLAGS;
        assert_eq!(ibv_modify_qp(s.qp, &mut a, mask.0 as i32), 0);
        let mut a: ibv_qp_attr = std::mem::zeroed();
        a.qp_state = ibv_qp_state::IBV_QPS_RTR;
        a.path_mtu = ibv_mtu::IBV_MTU_4096;
        a.dest_qp_num = remote;
        a.max_dest_rd_atomic = 16;
        a.ah_attr.dlid = 1;
        a.ah_attr.port_num = 1;
        let mask = m::IBV_QP_STATE
            | m::IBV_QP_AV
            | m::IBV_QP_PATH_MTU
            | m::IBV_QP_DEST_QPN
            | m::IBV_QP_RQ_PSN
            | m::IBV_QP_MAX_DEST_RD_ATOMIC
            | m::IBV_QP_MIN_RNR_TIMER;
        assert_eq!(ibv_modify_qp(s.qp, &mut a, mask.0 as i32), 0);
        let mut a: ibv_qp_attr = std::mem::zeroed();
        a.qp_state = ibv_qp_state::IBV_QPS_RTS;
        a.timeout = 14;
        a.retry_cnt = 7;
        a.rnr_retry = 7;
        a.max_rd_atomic = 16;
        let mask = m::IBV_QP_STATE
            | m::IBV_QP_SQ_PSN
            | m::IBV_QP_TIMEOUT
            | m::IBV_QP_RETRY_CNT
            | m::IBV_QP_RNR_RETRY
            | m::IBV_QP_MAX_QP_RD_ATOMIC;
        assert_eq!(ibv_modify_qp(s.qp, &mut a, mask.0 as i32), 0);
    }
}

fn post_recv(s: &Side, i: usize) {
    unsafe {
        let mut sge = ibv_sge {
            addr: s.mem as u64 + (BIG + i * SMALL) as u64,
            length: SMALL as u32,
            lkey: (*s.mr).lkey,
        };
        let mut wr: ibv_recv_wr = std::mem::zeroed();
        wr.wr_id = i as u64;
        wr.sg_list = &mut sge;
        wr.num_sge = 1;
        let mut bad = null_mut();
        assert_eq!(ibv_post_recv(s.qp, &mut wr, &mut bad), 0);
    }
}

fn post(s: &Side, opc: u32, len: usize, remote: (u64, u32)) {
    unsafe {
        let mut sge = ibv_sge {
            addr: s.mem as u64,
            length: len as u32,
            lkey: (*s.mr).lkey,
        };
        let mut wr: ibv_send_wr = std::mem::zeroed();
        wr.sg_list = &mut sge;
        wr.num_sge = 1;
        wr.opcode = opc;
        wr.send_flags = ibv_send_flags::IBV_SEND_SIGNALED.0;
        wr.wr.rdma.remote_addr = remote.0;
        wr.wr.rdma.rkey = remote.1;
        let mut bad = null_mut();
        assert_eq!(ibv_post_send(s.qp, &mut wr, &mut bad), 0);
    }
}

/// Poll until one completion; returns its wr_id.
fn wait_one(s: &Side) -> u64 {
    unsafe {
        let mut wc: ibv_wc = std::mem::zeroed();
        loop {
            let n = ibv_poll_cq(s.cq, 1, &mut wc);
            assert!(n >= 0);
            if n == 1 {
                assert_eq!(
                    wc.status,
                    ibv_wc_status::IBV_WC_SUCCESS,
                    "completion status"
                );
                return wc.wr_id;
            }
        }
    }
}

fn pipe() -> (i32, i32) {
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    (fds[0], fds[1])
}

fn send_u64s(fd: i32, v: &[u64]) {
    let n = unsafe { libc::write(fd, v.as_ptr() as *const _, v.len() * 8) };
    assert_eq!(n as usize, v.len() * 8);
}

fn recv_u64s(fd: i32, n: usize) -> Vec<u64> {
    let mut v = vec![0u64; n];
    let r = unsafe { libc::read(fd, v.as_mut_ptr() as *mut _, n * 8) };
    assert_eq!(r as usize, n * 8);
    v
}

fn memcpy_gbps(secs: f64) -> f64 {
    let src = vec![1u8; BIG];
    let mut dst = vec![0u8; BIG];
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed().as_secs_f64() < secs {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
        n += 1;
    }
    (n * BIG as u64) as f64 / t0.elapsed().as_secs_f64() / 1e9
}

/// Time `opc` of `len` bytes from `s` to `remote` for `secs`, one WR at a time; `between` runs
/// after each completion (the local mode re-posts the receive there).
fn run(
    s: &Side,
    opc: u32,
    len: usize,
    remote: (u64, u32),
    secs: f64,
    mut between: impl FnMut(),
) -> (u64, f64) {
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed() < Duration::from_secs_f64(secs) {
        for _ in 0..64 {
            post(s, opc, len, remote);
            wait_one(s);
            between();
        }
        n += 64;
    }
    (n, t0.elapsed().as_secs_f64())
}

fn report(mem: &str, s: &Side, remote: (u64, u32), secs: f64, mut between: impl FnMut()) {
    let (n, t) = run(
        s,
        ibv_wr_opcode::IBV_WR_SEND,
        SMALL,
        remote,
        secs,
        &mut between,
    );
    println!("{mem}: send 4 KiB: {:.0} K msg/s", n as f64 / t / 1e3);
    let (n, t) = run(
        s,
        ibv_wr_opcode::IBV_WR_RDMA_WRITE,
        BIG,
        remote,
        secs,
        || {},
    );
    println!(
        "{mem}: write 128 KiB: {:.2} GB/s",
        (n * BIG as u64) as f64 / t / 1e9
    );
    let (n, t) = run(s, ibv_wr_opcode::IBV_WR_RDMA_READ, BIG, remote, secs, || {});
    println!(
        "{mem}: read 128 KiB: {:.2} GB/s",
        (n * BIG as u64) as f64 / t / 1e9
    );
    println!(
        "memcpy 128 KiB (cache-resident): {:.2} GB/s",
        memcpy_gbps(secs)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (kind, mem) = match args.get(1).map(String::as_str) {
        Some("anon") => (MemKind::Anon, "anonymous"),
        Some("hugetlb") => (MemKind::Hugetlb, "hugetlb"),
        _ => (MemKind::Memfd, "memfd"),
    };
    let secs: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3.0);
    if args.get(3).map(String::as_str) == Some("local") {
        // One process, one thread: responder a, requester b.
        let a = open(kind);
        let b = Side {
            qp: unsafe {
                let mut ia: ibv_qp_init_attr = std::mem::zeroed();
                ia.send_cq = a.cq;
                ia.recv_cq = a.cq;
                ia.qp_type = ibv_qp_type::IBV_QPT_RC;
                ia.cap.max_send_wr = 1024;
                ia.cap.max_recv_wr = 16;
                ia.cap.max_send_sge = 1;
                ia.cap.max_recv_sge = 1;
                ibv_create_qp(a.pd, &mut ia)
            },
            ..open_shared_mr(&a, kind)
        };
        connect(&a, unsafe { (*b.qp).qp_num });
        connect(&b, unsafe { (*a.qp).qp_num });
        post_recv(&a, 0);
        let remote = (a.mem as u64, unsafe { (*a.mr).rkey });
        // The SEND's receive completion lands on the same CQ: take it and re-post.
        report(&format!("{mem}, one process"), &b, remote, secs, || {
            wait_one(&a);
            post_recv(&a, 0);
        });
        return;
    }
    let (p2c_r, p2c_w) = pipe();
    let (c2p_r, c2p_w) = pipe();
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid > 0 {
        // Responder: keep receives posted for the SEND phase, then wait for the child.
        let s = open(kind);
        send_u64s(
            p2c_w,
            &[
                unsafe { (*s.qp).qp_num } as u64,
                s.mem as u64,
                unsafe { (*s.mr).rkey } as u64,
            ],
        );
        let remote = recv_u64s(c2p_r, 1)[0] as u32;
        connect(&s, remote);
        for i in 0..RECVS {
            post_recv(&s, i);
        }
        send_u64s(p2c_w, &[1]);
        loop {
            let mut wc: ibv_wc = unsafe { std::mem::zeroed() };
            let n = unsafe { ibv_poll_cq(s.cq, 1, &mut wc) };
            if n == 1 {
                if wc.status != ibv_wc_status::IBV_WC_SUCCESS {
                    break;
                }
                post_recv(&s, wc.wr_id as usize);
                continue;
            }
            let mut st = 0;
            if unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) } == pid {
                assert!(
                    libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
                    "requester failed"
                );
                break;
            }
        }
        unsafe {
            ibv_destroy_qp(s.qp);
            ibv_dereg_mr(s.mr);
            ibv_destroy_cq(s.cq);
            ibv_dealloc_pd(s.pd);
            ibv_close_device(s.ctx);
        }
        return;
    }
    // Requester.
    let s = open(kind);
    let r = recv_u64s(p2c_r, 3);
    send_u64s(c2p_w, &[unsafe { (*s.qp).qp_num } as u64]);
    connect(&s, r[0] as u32);
    recv_u64s(p2c_r, 1);
    report(mem, &s, (r[1], r[2] as u32), secs, || {});
    unsafe { libc::_exit(0) };
}

/// A second registered buffer of `kind` in `a`'s PD and CQ (qp to be filled in).
fn open_shared_mr(a: &Side, kind: MemKind) -> Side {
    let len = (BIG + RECVS * SMALL).next_multiple_of(2 << 20);
    let mem = alloc(len, kind);
    let acc = ibv_access_flags::IBV_ACCESS_LOCAL_WRITE
        | ibv_access_flags::IBV_ACCESS_REMOTE_WRITE
        | ibv_access_flags::IBV_ACCESS_REMOTE_READ;
    let mr = unsafe { ibv_reg_mr(a.pd, mem as *mut _, len, acc.0 as i32) };
    assert!(!mr.is_null());
    Side {
        ctx: a.ctx,
        pd: a.pd,
        cq: a.cq,
        qp: null_mut(),
        mr,
        mem,
    }
}
