//! Loopback tests of `nvmf_rdma_rs::verbs` over softrdma (no RDMA hardware).
//!
//! Each test re-executes this test binary for itself with
//! `LD_LIBRARY_PATH=<repo>/target/softrdma` (so the dynamic loader picks
//! softrdma's `libibverbs.so.1` / `librdmacm.so.1`) and runs its RDMA part
//! in that child. Build softrdma first: `bash scripts/build-softrdma.sh`.
//! Override the library directory with `SOFTRDMA_LIB_DIR`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use nvmf_rdma_rs::verbs::*;

/// The longest one re-executed test may run.
const CHILD_TIMEOUT: Duration = Duration::from_secs(300);

const CHILD_ENV: &str = "NVMF_VERBS_LOOPBACK_CHILD";

#[path = "support/reexec.rs"]
mod reexec;

/// Runs `name` in a child process over softrdma (the shared re-exec helper:
/// private fabric directory, the child must report one test passed).
fn run_in_child(name: &str, body: fn()) {
    if reexec::under_softrdma(CHILD_ENV, name, CHILD_TIMEOUT) {
        body();
    }
}

macro_rules! softrdma_test {
    ($name:ident, $body:expr) => {
        #[test]
        fn $name() {
            run_in_child(stringify!($name), $body);
        }
    };
}

const T: Duration = Duration::from_secs(10);

#[track_caller]
fn wait_event(ch: &EventChannel, want: CmEventKind) -> CmEvent {
    let deadline = Instant::now() + T;
    loop {
        if let Some(ev) = ch.get_event().expect("get cm event") {
            assert_eq!(ev.kind, want, "unexpected cm event {ev:?}");
            return ev;
        }
        assert!(Instant::now() < deadline, "timeout waiting for {want:?}");
        wait_readable(ch.fd(), Duration::from_millis(100)).expect("poll cm fd");
    }
}

#[track_caller]
fn poll_n(cq: &Cq, n: usize) -> Vec<WorkCompletion> {
    let deadline = Instant::now() + T;
    let mut buf = vec![WorkCompletion::EMPTY; 16];
    let mut out = Vec::new();
    while out.len() < n {
        let want = (n - out.len()).min(buf.len());
        let k = cq.poll(&mut buf[..want]).expect("poll cq");
        out.extend(buf[..k].iter().cloned());
        assert!(
            Instant::now() < deadline,
            "timeout: {} of {n} completions: {out:?}",
            out.len()
        );
        if k == 0 {
            std::thread::yield_now();
        }
    }
    out
}

struct Side {
    id: CmId,
    ch: EventChannel,
    cq: Cq,
    pd: Pd,
    buf: DmaBuf,
}

fn qp_init(cq: &Cq) -> QpInit<'_> {
    QpInit {
        send_cq: cq,
        recv_cq: cq,
        srq: None,
        max_send_wr: 16,
        max_recv_wr: 16,
        max_send_sge: 4,
        max_recv_sge: 2,
        max_inline_data: 0,
    }
}

/// Server: listen, take the request, create a QP, post `recvs` receives of
/// 64 bytes (wr ids recv(9, i)), accept with `accept_pd`.
fn server_accept(
    addr: SocketAddr,
    recvs: u32,
    accept_pd: &'static [u8],
    tx: std::sync::mpsc::Sender<SocketAddr>,
) -> (Side, CmEvent, CmId) {
    let ch = EventChannel::new().unwrap();
    let listen = CmId::new(&ch).unwrap();
    listen.bind_addr(addr).unwrap();
    assert!(
        listen.context().is_some(),
        "specific address binds a device"
    );
    listen.listen(8).unwrap();
    tx.send(listen.local_addr().expect("bound address"))
        .unwrap();
    let mut req = wait_event(&ch, CmEventKind::ConnectRequest);
    assert_eq!(req.listen_key, Some(listen.key()));
    let mut id = req.take_id().expect("new id");
    assert!(req.take_id().is_none());
    let ctx = id.context().expect("request id has a device");
    assert!(
        rdma_devices().unwrap().iter().any(|d| d.key() == ctx.key()),
        "cm_id->verbs is one of rdma_get_devices() (upstream compares the pointers)"
    );
    let pd = Pd::new(&ctx).unwrap();
    let cq = Cq::new(&ctx, 64, None).unwrap();
    let buf = DmaBuf::new(&pd, 8192, Access::LOCAL_WRITE).unwrap();
    id.create_qp(&pd, &qp_init(&cq)).unwrap();
    let mut rl = RecvWrList::with_capacity(16, 16);
    for i in 0..recvs {
        rl.push(WrId::recv(9, i), &[buf.sge(i as usize * 64, 64).unwrap()])
            .unwrap();
    }
    id.qp().unwrap().post_recv(&mut rl).unwrap();
    assert!(rl.is_empty(), "posted list is emptied");
    id.accept(&ConnParam {
        private_data: accept_pd,
        responder_resources: 0,
        initiator_depth: req.initiator_depth,
        retry_count: 7,
        rnr_retry_count: 7,
    })
    .unwrap();
    wait_event(&ch, CmEventKind::Established);
    (
        Side {
            id,
            ch,
            cq,
            pd,
            buf,
        },
        req,
        listen,
    )
}

fn client_connect(addr: SocketAddr, pdata: &[u8]) -> (Side, CmEvent) {
    let ch = EventChannel::new().unwrap();
    let mut id = CmId::new(&ch).unwrap();
    id.resolve_addr(None, addr, 2000).unwrap();
    wait_event(&ch, CmEventKind::AddrResolved);
    id.resolve_route(2000).unwrap();
    wait_event(&ch, CmEventKind::RouteResolved);
    let ctx = id.context().unwrap();
    let attr = ctx.query_device().unwrap();
    assert!(attr.max_qp_rd_atom > 0);
    let pd = Pd::new(&ctx).unwrap();
    let cq = Cq::new(&ctx, 64, None).unwrap();
    let buf = DmaBuf::new(&pd, 8192, Access::HOST_DATA).unwrap();
    id.create_qp(&pd, &qp_init(&cq)).unwrap();
    id.connect(&ConnParam {
        private_data: pdata,
        responder_resources: attr.max_qp_rd_atom.min(16) as u8,
        initiator_depth: 0,
        retry_count: 7,
        rnr_retry_count: 7,
    })
    .unwrap();
    let ev = wait_event(&ch, CmEventKind::Established);
    (
        Side {
            id,
            ch,
            cq,
            pd,
            buf,
        },
        ev,
    )
}

fn devices_body() {
    let list = DeviceList::get().unwrap();
    assert!(!list.is_empty(), "softrdma exposes a device");
    let name = list.name(0).unwrap();
    let ctx = list.open(0).unwrap();
    assert_eq!(ctx.name(), name);
    let attr = ctx.query_device().unwrap();
    assert!(attr.max_qp_wr > 0 && attr.max_sge > 0 && attr.max_cqe > 0);
    assert!(attr.vendor_id != 0 && attr.vendor_id != 0xff_ffff);
    let port = ctx.query_port(1).unwrap();
    assert_eq!(port.state, 4, "port active");
    ctx.set_async_nonblocking().unwrap();
    assert_eq!(
        ctx.get_async_event().unwrap(),
        None,
        "no async event pending"
    );
    assert!(list.open(list.len()).is_err());
    let devs = rdma_devices().unwrap();
    assert!(!devs.is_empty());
    // Objects on an opened context, dropped in any order (Arcs keep parents alive).
    let pd = Pd::new(&ctx).unwrap();
    let ch = CompChannel::new(&ctx).unwrap();
    ch.set_nonblocking().unwrap();
    let cq = Cq::new(&ctx, 32, Some(&ch)).unwrap();
    assert!(cq.capacity() >= 32);
    cq.resize(256).unwrap();
    assert!(
        cq.capacity() >= 256,
        "resize grows the CQ: {}",
        cq.capacity()
    );
    let mr = DmaBuf::new(&pd, 4096, Access::LOCAL_WRITE).unwrap();
    drop(ctx);
    drop(pd);
    assert!(mr.sge(4000, 200).is_err(), "range check");
    assert_eq!(ch.get_event().unwrap(), None);
    drop(ch);
    drop(cq);
    drop(mr);
}
softrdma_test!(devices_and_objects, devices_body);

fn connect_send_rdma_body() {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        let (mut s, req, _listen) = server_accept(addr, 4, b"accept-pd", tx);
        assert_eq!(&req.private_data()[..7], b"hello-1");
        assert!(
            req.initiator_depth > 0,
            "CM swaps host responder_resources into initiator_depth"
        );
        // Receive the client's buffer description: addr u64, rkey u32.
        let wc = poll_n(&s.cq, 1).remove(0);
        assert!(wc.is_success(), "{wc:?}");
        assert_eq!(wc.opcode(), Some(WcOpcode::Recv));
        let id = wc.wr_id().unwrap();
        assert_eq!((id.kind(), id.owner(), id.index()), (WrKind::Recv, 9, 0));
        assert_eq!(wc.byte_len(), 12);
        assert_eq!(wc.qp_num(), s.id.qp().unwrap().qp_num());
        let mut m = [0u8; 12];
        s.buf.read(0, &mut m).unwrap();
        let raddr = u64::from_le_bytes(m[0..8].try_into().unwrap());
        let rkey = u32::from_le_bytes(m[8..12].try_into().unwrap());

        // One chain: RDMA WRITE (2 SGEs) + RDMA READ + SEND, one doorbell.
        s.buf.fill(1024, 1024, 0xab).unwrap();
        s.buf.fill(2048, 1024, 0xcd).unwrap();
        let mut l = SendWrList::with_capacity(4, 8);
        let w = [
            s.buf.sge(1024, 1024).unwrap(),
            s.buf.sge(2048, 1024).unwrap(),
        ];
        l.push(
            WrId::data(9, 1),
            SendOp::RdmaWrite {
                remote_addr: raddr,
                rkey,
            },
            &w,
            SendFlags::SIGNALED,
        )
        .unwrap();
        let r = [s.buf.sge(4096, 512).unwrap()];
        l.push(
            WrId::data(9, 2),
            SendOp::RdmaRead {
                remote_addr: raddr + 4096,
                rkey,
            },
            &r,
            SendFlags::SIGNALED,
        )
        .unwrap();
        let sgl = [s.buf.sge(1024, 16).unwrap()];
        l.push(WrId::send(9, 3), SendOp::Send, &sgl, SendFlags::SIGNALED)
            .unwrap();
        s.id.qp().unwrap().post_send(&mut l).unwrap();
        let wcs = poll_n(&s.cq, 3);
        let kinds: Vec<_> = wcs
            .iter()
            .map(|w| (w.wr_id().unwrap().index(), w.opcode()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (1, Some(WcOpcode::RdmaWrite)),
                (2, Some(WcOpcode::RdmaRead)),
                (3, Some(WcOpcode::Send))
            ]
        );
        let mut got = [0u8; 512];
        s.buf.read(4096, &mut got).unwrap();
        assert!(
            got.iter().all(|&b| b == 0x5a),
            "RDMA READ fetched the client's bytes"
        );

        // A READ with a bad rkey fails; the next WR is flushed; error
        // completions expose no opcode.
        let mut l = SendWrList::with_capacity(2, 2);
        l.push(
            WrId::data(9, 4),
            SendOp::RdmaRead {
                remote_addr: raddr,
                rkey: rkey ^ 0x5555,
            },
            &r,
            SendFlags::SIGNALED,
        )
        .unwrap();
        l.push(WrId::send(9, 5), SendOp::Send, &sgl, SendFlags::SIGNALED)
            .unwrap();
        s.id.qp().unwrap().post_send(&mut l).unwrap();
        let wcs = poll_n(&s.cq, 2);
        assert_eq!(wcs[0].wr_id().unwrap().index(), 4);
        assert_eq!(wcs[0].status(), WcStatus::RemAccessErr, "{:?}", wcs[0]);
        assert_eq!(wcs[0].opcode(), None);
        assert_eq!(wcs[1].wr_id().unwrap().index(), 5);
        assert!(wcs[1].status().is_flush(), "{:?}", wcs[1]);
        // Non-SRQ: the 3 remaining receives are flushed by the error too.
        let wcs = poll_n(&s.cq, 3);
        assert!(wcs
            .iter()
            .all(|w| w.status().is_flush() && w.wr_id().unwrap().kind() == WrKind::Recv));
        assert_eq!(s.id.qp().unwrap().state().unwrap(), QpState::Err);
        // The peer disconnects.
        let deadline = Instant::now() + T;
        loop {
            match s.ch.get_event().unwrap() {
                Some(ev) if ev.kind == CmEventKind::Disconnected => break,
                Some(_) => {}
                None => {
                    assert!(Instant::now() < deadline, "no DISCONNECTED");
                    wait_readable(s.ch.fd(), Duration::from_millis(100)).unwrap();
                }
            }
        }
        drop(s.pd);
    });
    let addr = rx.recv_timeout(T).expect("server listening");
    assert_ne!(addr.port(), 0, "port 0 binds an ephemeral port");
    let mut pdata = [0u8; 32];
    pdata[..7].copy_from_slice(b"hello-1");
    let (mut c, est) = client_connect(addr, &pdata);
    assert_eq!(
        &est.private_data()[..9],
        b"accept-pd",
        "accept private data reaches the host"
    );
    assert_eq!(c.id.peer_addr(), Some(addr));
    assert_eq!(c.id.local_addr().map(|a| a.ip()), Some(addr.ip()));
    c.buf.fill(4096, 512, 0x5a).unwrap();
    let mut rl = RecvWrList::with_capacity(1, 1);
    rl.push(WrId::recv(1, 0), &[c.buf.sge(6000, 64).unwrap()])
        .unwrap();
    c.id.qp().unwrap().post_recv(&mut rl).unwrap();
    let mut msg = [0u8; 12];
    msg[..8].copy_from_slice(&c.buf.addr(0).to_le_bytes());
    msg[8..].copy_from_slice(&c.buf.rkey().to_le_bytes());
    c.buf.write(7000, &msg).unwrap();
    let mut l = SendWrList::with_capacity(1, 1);
    l.push(
        WrId::send(1, 0),
        SendOp::Send,
        &[c.buf.sge(7000, 12).unwrap()],
        SendFlags::SIGNALED,
    )
    .unwrap();
    c.id.qp().unwrap().post_send(&mut l).unwrap();
    let wcs = poll_n(&c.cq, 2);
    let mut ops: Vec<_> = wcs.iter().map(|w| w.opcode().unwrap()).collect();
    ops.sort_by_key(|o| format!("{o:?}"));
    assert_eq!(ops, vec![WcOpcode::Recv, WcOpcode::Send]);
    let mut got = vec![0u8; 2048];
    c.buf.read(0, &mut got).unwrap();
    assert!(
        got[..1024].iter().all(|&b| b == 0xab) && got[1024..].iter().all(|&b| b == 0xcd),
        "RDMA WRITE landed"
    );
    // Give the server time to run its error case, then disconnect.
    std::thread::sleep(Duration::from_millis(200));
    c.id.disconnect().unwrap();
    server.join().expect("server thread");
    drop(c.ch);
}
softrdma_test!(connect_send_rdma_and_errors, connect_send_rdma_body);

fn reject_body() {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        let ch = EventChannel::new().unwrap();
        let listen = CmId::new(&ch).unwrap();
        listen.bind_addr(addr).unwrap();
        listen.listen(4).unwrap();
        tx.send(listen.local_addr().unwrap()).unwrap();
        let mut req = wait_event(&ch, CmEventKind::ConnectRequest);
        let id = req.take_id().unwrap();
        id.reject(&[0, 0, 7, 0]).unwrap();
        std::thread::sleep(Duration::from_millis(200));
    });
    let addr = rx.recv_timeout(T).unwrap();
    let ch = EventChannel::new().unwrap();
    let mut id = CmId::new(&ch).unwrap();
    id.resolve_addr(None, addr, 2000).unwrap();
    wait_event(&ch, CmEventKind::AddrResolved);
    id.resolve_route(2000).unwrap();
    wait_event(&ch, CmEventKind::RouteResolved);
    let ctx = id.context().unwrap();
    let pd = Pd::new(&ctx).unwrap();
    let cq = Cq::new(&ctx, 16, None).unwrap();
    id.create_qp(&pd, &qp_init(&cq)).unwrap();
    assert!(id.create_qp(&pd, &qp_init(&cq)).is_err(), "one QP per id");
    id.connect(&ConnParam {
        private_data: &[1; 32],
        responder_resources: 4,
        initiator_depth: 0,
        retry_count: 7,
        rnr_retry_count: 7,
    })
    .unwrap();
    let ev = wait_event(&ch, CmEventKind::Rejected);
    assert_eq!(
        &ev.private_data()[..4],
        &[0, 0, 7, 0],
        "reject private data reaches the host"
    );
    server.join().unwrap();
}
softrdma_test!(reject_with_private_data, reject_body);

fn ipv6_srq_async_body() {
    let addr: SocketAddr = "[::1]:0".parse().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        let ch = EventChannel::new().unwrap();
        let listen = CmId::new(&ch).unwrap();
        listen.bind_addr(addr).unwrap();
        listen.listen(4).unwrap();
        let bound = listen.local_addr().unwrap();
        assert_eq!(bound.ip(), addr.ip());
        tx.send(bound).unwrap();
        let mut req = wait_event(&ch, CmEventKind::ConnectRequest);
        let mut id = req.take_id().unwrap();
        let ctx = id.context().unwrap();
        ctx.set_async_nonblocking().unwrap();
        let pd = Pd::new(&ctx).unwrap();
        let comp = CompChannel::new(&ctx).unwrap();
        comp.set_nonblocking().unwrap();
        let cq = Cq::new(&ctx, 64, Some(&comp)).unwrap();
        let srq = Srq::new(&pd, 32, 2).unwrap();
        assert!(srq.max_wr() >= 32);
        let buf = DmaBuf::new(&pd, 4096, Access::LOCAL_WRITE).unwrap();
        let mut rl = RecvWrList::with_capacity(8, 8);
        for i in 0..8u32 {
            rl.push(WrId::recv(3, i), &[buf.sge(i as usize * 64, 64).unwrap()])
                .unwrap();
        }
        srq.post_recv(&mut rl).unwrap();
        id.create_qp(
            &pd,
            &QpInit {
                srq: Some(&srq),
                ..qp_init(&cq)
            },
        )
        .unwrap();
        assert!(id.qp().unwrap().has_srq());
        cq.req_notify(false).unwrap();
        id.accept(&ConnParam {
            private_data: &[0; 32],
            responder_resources: 0,
            initiator_depth: req.initiator_depth,
            retry_count: 7,
            rnr_retry_count: 7,
        })
        .unwrap();
        wait_event(&ch, CmEventKind::Established);
        // Interrupt-style wait: comp channel fd becomes readable.
        assert!(
            wait_readable(comp.fd(), T).unwrap(),
            "completion channel fired"
        );
        assert_eq!(comp.get_event().unwrap(), Some(cq.key()));
        let wc = poll_n(&cq, 1).remove(0);
        assert!(wc.is_success());
        assert_eq!(wc.wr_id().unwrap().owner(), 3);
        let mut m = [0u8; 5];
        buf.read(wc.wr_id().unwrap().index() as usize * 64, &mut m)
            .unwrap();
        assert_eq!(&m, b"srq!!");
        // QP to error: remaining SRQ receives stay in the SRQ; the device
        // raises LAST_WQE_REACHED for the QP.
        let qpn = id.qp().unwrap().qp_num();
        id.qp().unwrap().set_error().unwrap();
        let deadline = Instant::now() + T;
        let ev = loop {
            if let Some(ev) = ctx.get_async_event().unwrap() {
                break ev;
            }
            assert!(Instant::now() < deadline, "no async event");
            wait_readable(ctx.async_fd(), Duration::from_millis(100)).unwrap();
        };
        assert_eq!(
            ev,
            AsyncEvent {
                kind: AsyncEventKind::QpLastWqeReached,
                element: AsyncElement::Qp { qp_num: qpn }
            }
        );
        id.destroy_qp();
        assert!(id.qp().is_none());
    });
    let addr = rx.recv_timeout(T).unwrap();
    let (c, _) = client_connect(addr, &[0; 32]);
    let mut c = c;
    c.buf.write(0, b"srq!!").unwrap();
    let mut l = SendWrList::with_capacity(1, 1);
    l.push(
        WrId::send(1, 0),
        SendOp::Send,
        &[c.buf.sge(0, 5).unwrap()],
        SendFlags::SIGNALED,
    )
    .unwrap();
    c.id.qp().unwrap().post_send(&mut l).unwrap();
    let wc = poll_n(&c.cq, 1).remove(0);
    assert!(wc.is_success(), "{wc:?}");
    server.join().expect("server thread");
}
softrdma_test!(ipv6_srq_comp_channel_and_last_wqe, ipv6_srq_async_body);
