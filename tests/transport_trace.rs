//! The transport core's tracing hooks (`HostGroup::trace_requests`,
//! `request_state`, `qpair_error`) over softrdma, without SPDK: a host that
//! wraps the standalone one and records what the core reports, one poll
//! group driven on the test thread, the project's initiator in another.
//!
//! Checks: with tracing on, a 4 KiB write and a 4 KiB read (keyed SGLs)
//! report exactly the states they go through, with 1 request in use, and
//! EXECUTING comes right before the command reaches the host; once the host
//! says no, nothing more is reported; a softrdma QP-error fault on the
//! target's QPs reports the error (SRQ: last WQE reached on an active
//! qpair) through `qpair_error`.

mod e2e_common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e_common::{accept_into, ctl, local_transport, under_softrdma};
use nvmf_rdma_rs::engine::codec::nvme::Command;
use nvmf_rdma_rs::engine::{DisconnectReason, ReqState};
use nvmf_rdma_rs::initiator::{Controller, ControllerConfig, SglMode};
use nvmf_rdma_rs::standalone::MiniHost;
use nvmf_rdma_rs::transport::{
    BufferGrant, CommandData, Direction, GroupCalls, Host, HostError, HostGroup, PollGroup,
    QpairHandle, QpairInfo, RequestBuffers, RequestHandle, Transport,
};
use nvmf_rdma_rs::verbs::Pd;

const NQN: &str = "nqn.2016-06.io.nvmf-rdma-rs:trace";
const WAIT: Duration = Duration::from_secs(60);

/// What the core told the host, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    State(RequestHandle, ReqState, u16),
    Execute(RequestHandle),
    Error(QpairHandle, DisconnectReason),
    Added(QpairHandle, u16),
}

/// The standalone host, recording the trace hooks; tracing while `on`.
struct TraceHost {
    inner: MiniHost,
    on: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

struct TraceGroup {
    inner: <MiniHost as Host>::Group,
    on: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl TraceGroup {
    fn see(&self, s: Seen) {
        self.seen.lock().unwrap().push(s);
    }
}

impl Host for TraceHost {
    type Group = TraceGroup;

    fn create_group(&self, index: u16) -> TraceGroup {
        TraceGroup {
            inner: self.inner.create_group(index),
            on: self.on.clone(),
            seen: self.seen.clone(),
        }
    }
}

impl HostGroup for TraceGroup {
    fn attach_device(&mut self, device: usize, pd: &Pd) -> Result<(), HostError> {
        self.inner.attach_device(device, pd)
    }

    fn disconnect_requested(&mut self, qpair: QpairHandle, calls: &mut GroupCalls) {
        self.inner.disconnect_requested(qpair, calls)
    }

    fn qpair_added(&mut self, info: &QpairInfo) -> bool {
        self.see(Seen::Added(info.handle, info.qid));
        self.inner.qpair_added(info)
    }

    fn execute(
        &mut self,
        req: RequestHandle,
        cmd: &Command,
        data: CommandData<'_>,
        direction: Direction,
        calls: &mut GroupCalls,
    ) {
        self.see(Seen::Execute(req));
        self.inner.execute(req, cmd, data, direction, calls)
    }

    fn get_buffers(
        &mut self,
        req: RequestHandle,
        len: u32,
        device: usize,
        out: &mut RequestBuffers,
    ) -> BufferGrant {
        self.inner.get_buffers(req, len, device, out)
    }

    fn cancel_buffers(&mut self, req: RequestHandle) {
        self.inner.cancel_buffers(req)
    }

    fn release_buffers(
        &mut self,
        req: RequestHandle,
        buffers: &RequestBuffers,
        calls: &mut GroupCalls,
    ) {
        self.inner.release_buffers(req, buffers, calls)
    }

    fn abort_finished(&mut self, qpair: QpairHandle, cid: u16, aborted: bool) {
        self.inner.abort_finished(qpair, cid, aborted)
    }

    fn qpair_gone(&mut self, qpair: QpairHandle) {
        self.inner.qpair_gone(qpair)
    }

    fn poll(&mut self, now: u64, calls: &mut GroupCalls) {
        self.inner.poll(now, calls)
    }

    fn trace_requests(&mut self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    fn request_state(&mut self, req: RequestHandle, state: ReqState, in_use: u16) {
        self.see(Seen::State(req, state, in_use));
    }

    fn qpair_error(&mut self, qpair: QpairHandle, reason: DisconnectReason) {
        self.see(Seen::Error(qpair, reason));
    }
}

struct Target {
    transport: Transport,
    pg: PollGroup<TraceHost>,
    start: Instant,
}

impl Target {
    fn step(&mut self) {
        let now = self.start.elapsed().as_nanos() as u64;
        accept_into(&self.transport, &mut self.pg, now);
        self.pg.poll(now);
    }

    /// Drives the target until `rx` yields.
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

/// Runs `f` on the controller in another thread while the target is driven;
/// hands the controller back with `f`'s result.
fn on_host<R: Send + 'static>(
    t: &mut Target,
    c: Controller,
    what: &str,
    f: impl FnOnce(&mut Controller) -> R + Send + 'static,
) -> (Controller, R) {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let mut c = c;
        let r = f(&mut c);
        let _ = tx.send((c, r));
    });
    t.until(&rx, what)
}

fn connect(t: &mut Target, addr: SocketAddr) -> Controller {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let mut cfg = ControllerConfig::new(addr, NQN);
        cfg.io_queues = 1;
        let _ = tx.send(Controller::connect(cfg).map_err(|e| format!("connect {addr}: {e}")));
    });
    t.until(&rx, "connect").expect("controller")
}

/// The states reported for each request of `qpair`, one life (NEW …) per
/// use of a request slot, in the order the lives started. (Lives overlap: a
/// response reaches the initiator before the target reaps its SEND, so the
/// next command may start first.)
fn lives(seen: &[Seen], qpair: QpairHandle) -> Vec<Vec<(ReqState, u16)>> {
    let mut out: Vec<Vec<(ReqState, u16)>> = Vec::new();
    let mut current = std::collections::HashMap::new();
    for s in seen {
        if let Seen::State(r, state, in_use) = *s {
            if r.qpair != qpair {
                continue;
            }
            if state == ReqState::New {
                current.insert(r, out.len());
                out.push(Vec::new());
            }
            if let Some(&i) = current.get(&r) {
                out[i].push((state, in_use));
            }
        }
    }
    out
}

#[test]
fn trace_hooks_report_states_and_qpair_errors() {
    if !under_softrdma(
        "trace_hooks_report_states_and_qpair_errors",
        Duration::from_secs(180),
    ) {
        return;
    }
    use ReqState::*;
    let (opts, transport, addr) = local_transport(1);
    let on = Arc::new(AtomicBool::new(true));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let host = TraceHost {
        inner: MiniHost::new(NQN, vec![16 << 20], &opts, &[addr], 1).expect("host"),
        on: on.clone(),
        seen: seen.clone(),
    };
    let pg = transport.create_poll_group(&host).expect("group");
    let mut t = Target {
        transport: transport.clone(),
        pg,
        start: Instant::now(),
    };

    let c = connect(&mut t, addr);
    let io = seen
        .lock()
        .unwrap()
        .iter()
        .find_map(|s| match *s {
            Seen::Added(h, qid) if qid != 0 => Some(h),
            _ => None,
        })
        .expect("an I/O qpair joined");
    // Admin commands were traced too (tracing was on from the start).
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .any(|s| matches!(s, Seen::State(r, New, _) if r.qpair != io)),
        "no admin request traced"
    );
    let before = lives(&seen.lock().unwrap(), io).len();
    let data: Vec<u8> = (0..4096).map(|i| (i * 13) as u8).collect();
    let sent = data.clone();
    let (c, r) = on_host(&mut t, c, "4 KiB write and read", move |c| {
        c.write(0, 1, 8, &sent, SglMode::Keyed)?;
        let mut back = vec![0; 4096];
        c.read(0, 1, 8, &mut back, SglMode::Keyed)?;
        Ok::<_, nvmf_rdma_rs::initiator::InitiatorError>(back)
    });
    assert!(r.expect("I/O") == data, "data read back differs");
    let log = seen.lock().unwrap().clone();
    let io_lives = lives(&log, io);
    // One command at a time from the initiator: 1 request in use, 2 when
    // the next one starts before the previous one's SEND is reaped.
    for (state, in_use) in io_lives[before..].iter().flatten() {
        assert!((1..=2).contains(in_use), "{state:?} with {in_use} in use");
    }
    let states = |l: &Vec<(ReqState, u16)>| -> Vec<ReqState> { l.iter().map(|s| s.0).collect() };
    assert_eq!(
        io_lives[before..].iter().map(states).collect::<Vec<_>>(),
        [
            vec![
                New,
                NeedBuffer,
                HaveBuffer,
                TransferringHostToController { partial: false },
                ReadyToExecute,
                Executing,
                Executed,
                ReadyToComplete,
                Completing,
                Completed
            ],
            vec![
                New,
                NeedBuffer,
                HaveBuffer,
                ReadyToExecute,
                Executing,
                Executed,
                ReadyToComplete,
                TransferringControllerToHost,
                Completed
            ],
        ],
        "the write's and the read's states"
    );
    // Every command reached the host right after its EXECUTING report.
    for (i, s) in log.iter().enumerate() {
        if let Seen::Execute(r) = *s {
            assert!(
                matches!(log[..i].last(), Some(Seen::State(q, Executing, _)) if *q == r),
                "{r}: {:?} before its execute",
                log[..i].last()
            );
        }
    }

    // The host stops wanting the reports: none after the next poll.
    on.store(false, Ordering::Relaxed);
    t.step();
    let n = seen.lock().unwrap().len();
    let (c, r) = on_host(&mut t, c, "4 KiB read, untraced", |c| {
        let mut back = vec![0; 4096];
        c.read(0, 1, 8, &mut back, SglMode::Keyed)
    });
    r.expect("untraced read");
    let late: Vec<Seen> = seen.lock().unwrap()[n..]
        .iter()
        .filter(|s| matches!(s, Seen::State(..)))
        .copied()
        .collect();
    assert!(late.is_empty(), "reported with tracing off: {late:?}");

    // The target's QPs (and this process's initiator ones) go to error:
    // the target learns it from an error completion.
    ctl(std::process::id(), &["qperr", "*"]);
    let deadline = Instant::now() + WAIT;
    let errors = loop {
        let errors: Vec<(QpairHandle, DisconnectReason)> = seen
            .lock()
            .unwrap()
            .iter()
            .filter_map(|s| match *s {
                Seen::Error(q, r) => Some((q, r)),
                _ => None,
            })
            .collect();
        if errors.len() >= 2 {
            break errors;
        }
        assert!(Instant::now() < deadline, "qpair errors: {errors:?}");
        t.step();
    };
    eprintln!("qpair errors: {errors:?}");
    // With an SRQ (the default) the QP's error shows as last-WQE-reached
    // on an active qpair; without, as a flushed receive.
    assert!(
        errors.iter().any(|(q, r)| *q == io
            && matches!(
                r,
                DisconnectReason::QpInError | DisconnectReason::WcError { .. }
            )),
        "{errors:?}"
    );
    drop(c);
    let deadline = Instant::now() + WAIT;
    while t.pg.live_qpairs() > 0 {
        assert!(Instant::now() < deadline, "qpairs not torn down");
        t.step();
    }
}
