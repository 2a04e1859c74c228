//! The transport core driven by hand, as SPDK's threads would drive it,
//! over softrdma: no thread of the transport's own. This test's main thread
//! is "every reactor": it runs the acceptor and two poll groups; the
//! project's initiator runs in another thread.
//!
//! Checks: placement from inside the acceptor's sink (which may call back
//! into the transport), admin and I/O qpairs round-robin separately, abort
//! with a synchronous outcome,
//! `listen` on IPv6 at run time, `stop_listen` with a host connected leaves
//! its qpairs working and refuses new connections, and destroying a poll
//! group with live qpairs force-finishes them and returns every buffer
//! before the drop returns. In interrupt mode, a completion given outside
//! any group call (as SPDK's bdev layer gives it) is posted before
//! `complete` returns: no poll follows it.

mod e2e_common;

use std::net::SocketAddr;
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e_common::{accept_into, local_transport, port, under_softrdma};
use nvmf_rdma_rs::initiator::{Controller, ControllerConfig, SglMode};
use nvmf_rdma_rs::standalone::MiniHost;
use nvmf_rdma_rs::transport::{AbortResult, AcceptorEvent, PollGroup, QpairHandle, Transport};

const NQN: &str = "nqn.2016-06.io.nvmf-rdma-rs:core";
const WAIT: Duration = Duration::from_secs(60);

struct Reactors {
    transport: Transport,
    groups: Vec<Option<PollGroup<MiniHost>>>,
    /// (group the qpair joined, its qid hint), in arrival order.
    placed: Vec<(u16, u16)>,
    /// The handles, in the same order.
    handles: Vec<QpairHandle>,
    start: Instant,
}

impl Reactors {
    fn step(&mut self) {
        let now = self.start.elapsed().as_nanos() as u64;
        let transport = self.transport.clone();
        let mut arrived = Vec::new();
        let mut msgs = Vec::new();
        let mut devs = Vec::new();
        let mut ports = Vec::new();
        self.transport.accept_poll(&mut |ev| match ev {
            AcceptorEvent::NewQpair(q) => {
                // Inside the notification: placement, and a call that takes
                // the acceptor's own lock, must both work (a deadlock here
                // would time the test out).
                let g = transport.optimal_group(q.qid());
                assert!(!transport.listen_addrs().is_empty());
                arrived.push((g, q));
            }
            AcceptorEvent::Qpair(m) => msgs.push(m),
            AcceptorEvent::Device(m) => devs.push(m),
            AcceptorEvent::Port(m) => ports.push(m),
        });
        for m in devs {
            for pg in self.groups.iter_mut().flatten() {
                pg.deliver_device(m, now);
            }
        }
        for m in ports {
            for pg in self.groups.iter_mut().flatten() {
                pg.deliver_port(m, now);
            }
        }
        for (g, q) in arrived {
            let qid = q.qid();
            let Some(pg) = g.and_then(|g| self.groups.get_mut(usize::from(g))?.as_mut()) else {
                q.reject();
                continue;
            };
            match pg.add_qpair(q, now) {
                Ok(h) => {
                    self.placed.push((h.group, qid));
                    self.handles.push(h);
                }
                Err(e) => e.qpair.reject(),
            }
        }
        for m in msgs {
            if let Some(pg) = self
                .groups
                .get_mut(usize::from(m.qpair.group))
                .and_then(Option::as_mut)
            {
                pg.deliver(m, now);
            }
        }
        for pg in self.groups.iter_mut().flatten() {
            pg.poll(now);
        }
    }

    /// Drives everything until `rx` yields.
    fn until<T>(&mut self, rx: &Receiver<T>, what: &str) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(v) = rx.try_recv() {
                return v;
            }
            assert!(Instant::now() < deadline, "{what}: timed out");
            self.step();
        }
    }
}

/// Connects a controller with `io_queues` I/O queues, writes and reads back
/// one 8 KiB block on each, and hands the controller back.
fn connect_and_verify(addr: SocketAddr, io_queues: u16) -> Receiver<Result<Controller, String>> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let r = (|| {
            let mut cfg = ControllerConfig::new(addr, NQN);
            cfg.io_queues = io_queues;
            let mut c = Controller::connect(cfg).map_err(|e| format!("connect {addr}: {e}"))?;
            verify(&mut c)?;
            Ok(c)
        })();
        let _ = tx.send(r);
    });
    rx
}

fn verify(c: &mut Controller) -> Result<(), String> {
    for q in 0..c.io_queues().len() {
        let data: Vec<u8> = (0..8192).map(|i| (i * 7 + q) as u8).collect();
        c.write(q, 1, 16 * q as u64, &data, SglMode::Keyed)
            .map_err(|e| format!("write on queue {q}: {e}"))?;
        let mut back = vec![0; data.len()];
        c.read(q, 1, 16 * q as u64, &mut back, SglMode::Keyed)
            .map_err(|e| format!("read on queue {q}: {e}"))?;
        if back != data {
            return Err(format!("queue {q}: data read back differs"));
        }
    }
    Ok(())
}

#[test]
fn core_driven_by_hand_listen_place_stop_listen_destroy() {
    if !under_softrdma(
        "core_driven_by_hand_listen_place_stop_listen_destroy",
        Duration::from_secs(300),
    ) {
        return;
    }
    let (opts, transport, v4) = local_transport(2);
    let host = Arc::new(
        MiniHost::new(NQN, vec![16 << 20], &opts, &[v4], 2)
            .expect("host")
            .reentrant(true),
    );
    let groups = (0..2)
        .map(|_| Some(transport.create_poll_group(&*host).expect("group")))
        .collect();
    assert_eq!(transport.poll_groups(), 2);
    let mut r = Reactors {
        transport: transport.clone(),
        groups,
        placed: Vec::new(),
        handles: Vec::new(),
        start: Instant::now(),
    };

    // Admin and I/O qpairs round-robin separately over the two groups.
    let rx = connect_and_verify(v4, 3);
    let mut c1 = r.until(&rx, "first controller").expect("first controller");
    let admin: Vec<u16> = r.placed.iter().filter(|p| p.1 == 0).map(|p| p.0).collect();
    let io: Vec<u16> = r.placed.iter().filter(|p| p.1 != 0).map(|p| p.0).collect();
    assert_eq!(admin, [0], "admin placement: {:?}", r.placed);
    assert_eq!(io, [0, 1, 0], "I/O placement: {:?}", r.placed);

    // Abort with a synchronous outcome (SPDK qpair_abort_request): an AER
    // the host holds is executing; an unknown command id, or a stale
    // handle, is not found.
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let cids = c1.post_async_event_requests(2);
        let _ = tx.send((c1, cids));
    });
    let (c1, cids) = r.until(&rx, "posting AERs");
    let cids = cids.expect("AERs posted");
    let deadline = Instant::now() + WAIT;
    while transport.counters().commands_in_host < 2 {
        assert!(Instant::now() < deadline, "the host never held the AERs");
        r.step();
    }
    let admin = r.handles[0];
    let now = r.start.elapsed().as_nanos() as u64;
    let pg0 = r.groups[0].as_mut().expect("group 0");
    assert!(
        matches!(pg0.abort(admin, cids[0], now), AbortResult::Executing(req) if req.qpair == admin),
        "an AER held by the host is executing"
    );
    assert_eq!(pg0.abort(admin, 0xfff0, now), AbortResult::NotFound);
    let stale = QpairHandle {
        generation: admin.generation.wrapping_add(1),
        ..admin
    };
    assert_eq!(pg0.abort(stale, cids[0], now), AbortResult::NotFound);
    let mut c1 = c1;

    // Listening on IPv6 at run time, with groups and qpairs live.
    let v6 = transport
        .listen(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port())))
        .expect("listen IPv6 at run time");
    let rx = connect_and_verify(v6, 1);
    let c2 = r.until(&rx, "IPv6 controller").expect("IPv6 controller");
    assert_eq!(
        r.placed.iter().rev().find(|p| p.1 == 0).map(|p| p.0),
        Some(1),
        "second admin qpair goes to the next group: {:?}",
        r.placed
    );

    // stop_listen with a host connected: its qpairs keep working, new
    // connections to that address are refused.
    assert!(transport.stop_listen(v4));
    assert!(
        !transport.stop_listen(v4),
        "a second stop_listen finds nothing"
    );
    assert_eq!(transport.listen_addrs(), [v6]);
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let r = verify(&mut c1).map(|()| c1);
        let _ = tx.send(r);
    });
    let c1 = r
        .until(&rx, "I/O after stop_listen")
        .expect("the connected host still works after stop_listen");
    let rx = connect_and_verify(v4, 1);
    let refused = r.until(&rx, "connect after stop_listen");
    assert!(
        refused.is_err(),
        "a connection to a stopped listener was accepted"
    );

    // Destroying group 1 with live qpairs: force-finished, every buffer
    // back before the drop returns; placement skips it afterwards.
    let before = transport.counters();
    assert!(before.live_qpairs >= 6, "{before:?}");
    let pg1 = r.groups[1].take().expect("group 1");
    let on_pg1 = pg1.live_qpairs();
    assert!(on_pg1 >= 2, "group 1 holds qpairs: {on_pg1}");
    drop(pg1);
    let after = transport.counters();
    assert_eq!(
        after.live_qpairs,
        before.live_qpairs - on_pg1 as u64,
        "{after:?}"
    );
    assert_eq!(transport.poll_groups(), 1);
    assert_eq!(transport.optimal_group(0), Some(0));
    assert_eq!(transport.optimal_group(1), Some(0));

    // Group 0 keeps serving; then everything goes and nothing is left.
    drop(c1);
    drop(c2);
    let deadline = Instant::now() + WAIT;
    while r.groups[0].as_ref().is_some_and(|g| g.live_qpairs() > 0) {
        assert!(Instant::now() < deadline, "qpairs of group 0 did not go");
        r.step();
    }
    r.groups.clear();
    let end = transport.counters();
    assert_eq!(
        (end.live_qpairs, end.buffers_held, end.commands_in_host),
        (0, 0, 0),
        "{end:?}"
    );
    assert_eq!(end.internal_errors, 0, "{end:?}");
    assert_eq!(host.internal_errors(), 0);
}

/// Interrupt mode (`nvmf_tgt --interrupt-mode`): no poll runs unless a
/// completion channel fires or a deadline passes, so a host completion given
/// outside any group call must be on the wire when `PollGroup::complete`
/// returns — its SEND must not wait in the group's queues for an event that
/// only the host's next command would raise (a CONNECT or a QD 1 read would
/// hang). Each completion is checked on the group's send doorbell count.
#[test]
fn interrupt_mode_completion_outside_a_call_is_posted_at_once() {
    if !under_softrdma(
        "interrupt_mode_completion_outside_a_call_is_posted_at_once",
        Duration::from_secs(300),
    ) {
        return;
    }
    let (opts, transport, addr) = local_transport(1);
    let host = Arc::new(
        MiniHost::new(NQN, vec![16 << 20], &opts, &[addr], 1)
            .expect("host")
            .complete_outside(true),
    );
    let mut pg = transport.create_poll_group(&*host).expect("group");
    pg.arm();
    let start = Instant::now();
    let sends = |pg: &PollGroup<MiniHost>| -> u64 {
        pg.stats()
            .devices
            .iter()
            .map(|d| d.send_doorbell_updates)
            .sum()
    };
    let rx = connect_and_verify(addr, 1);
    let deadline = Instant::now() + WAIT;
    let mut answered = 0;
    let controller = loop {
        if let Ok(c) = rx.try_recv() {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "connect and verify timed out ({answered} completions given)"
        );
        let now = start.elapsed().as_nanos() as u64;
        accept_into(&transport, &mut pg, now);
        // What a channel interrupt's handler does (here whether or not a
        // channel fired: it only takes events that are there).
        pg.handle_event(now);
        for (_, req, completion) in host.take_completions() {
            let before = sends(&pg);
            pg.complete(req, completion, now);
            assert!(
                sends(&pg) > before,
                "interrupt mode: the response to {req} was not posted by complete() \
                 ({answered} completions posted before it)"
            );
            answered += 1;
        }
    };
    let controller = controller.expect("connect and verify in interrupt mode");
    // CONNECT, the admin commands of bring-up, the I/O queue's CONNECT and
    // the verify's write and read: every one went through the check above.
    assert!(answered >= 6, "only {answered} completions given outside");
    drop(controller);
    drop(pg);
    let end = transport.counters();
    assert_eq!(
        (end.live_qpairs, end.buffers_held, end.commands_in_host),
        (0, 0, 0),
        "{end:?}"
    );
    assert_eq!(host.internal_errors(), 0);
}
