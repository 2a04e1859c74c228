//! The standalone driver: the threads the transport core does not have.
//!
//! - One thread per poll group: creates its group with
//!   [`Transport::create_poll_group`], takes new qpairs and CM/IB events
//!   from a channel, polls, backs off when idle (spin, yield, then 200 µs
//!   naps unless [`RunConfig::busy_poll`]), publishes statistics every
//!   100 ms, and at shutdown disconnects every qpair and waits (bounded).
//! - With [`RunConfig::interrupt_mode`] a poll group thread never polls: it
//!   sleeps in `poll(2)` on its completion channel fds and an eventfd the
//!   acceptor signals after queueing a message, and runs
//!   [`PollGroup::handle_event`] when one fires, at the group's
//!   [`PollGroup::next_deadline`], or at the latest every 10 ms (the host's
//!   own timers: keep-alive, answers produced by another group).
//! - One acceptor thread: waits on [`Transport::acceptor_fds`], runs
//!   [`Transport::accept_poll`], places each new qpair with
//!   [`Transport::optimal_group`] and sends it, or the event, to its group.
//!
//! SPDK replaces this file: its reactors own the threads and call the same
//! core entry points.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::transport::{
    AcceptorEvent, DeviceMsg, Host, PendingQpair, PollGroup, PollGroupStats, PortMsg, QpairMsg,
    ResourceCounters, Transport, TransportCdata, TransportError, TransportOptions,
    DEFAULT_DRAIN_TIMEOUT,
};
use crate::verbs::{wait_readable_any, EventFd};

/// How often a poll group publishes its statistics.
const STATS_PERIOD: Duration = Duration::from_millis(100);
/// Idle polls before a poll group yields its core.
const IDLE_YIELD_AFTER: u32 = 200;
/// Idle polls before a poll group naps.
const IDLE_NAP_AFTER: u32 = 2000;
/// One idle nap.
const IDLE_NAP: Duration = Duration::from_micros(200);
/// Interrupt mode: the longest sleep, for the host's own timers.
const HOST_TICK: Duration = Duration::from_millis(10);
/// How long the acceptor keeps acknowledging CM events after shutdown
/// while the groups tear their qpairs down.
const ACCEPTOR_LINGER: Duration = Duration::from_secs(10);

/// Settings of the standalone driver (not upstream options).
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Poll group threads (also the core count options are validated with).
    pub poll_groups: u16,
    /// How long teardown waits for the NIC to return every WR of a qpair
    /// before destroying it anyway.
    pub drain_timeout: Duration,
    /// How long shutdown waits for all qpairs to finish.
    pub shutdown_timeout: Duration,
    /// Never sleep when idle (like SPDK's reactors); otherwise a poll group
    /// that found nothing to do for a while yields, then naps 200 µs.
    pub busy_poll: bool,
    /// Never poll: sleep until a completion channel or a message wakes the
    /// group (SPDK's interrupt mode).
    pub interrupt_mode: bool,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            poll_groups: 1,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            shutdown_timeout: Duration::from_secs(5),
            busy_poll: false,
            interrupt_mode: false,
        }
    }
}

/// Why the driver could not start.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The transport core refused.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// A thread could not be spawned.
    #[error("spawning thread {name}: {source}")]
    Thread {
        /// Thread name.
        name: String,
        /// The error.
        source: std::io::Error,
    },
    /// There must be at least one poll group.
    #[error("--threads must be at least 1")]
    NoPollGroups,
    /// A poll group thread exited before reporting its group.
    #[error("poll group thread {0} exited during start")]
    GroupLost(u16),
    /// The wake-up eventfd of a poll group could not be created.
    #[error("creating the wake-up eventfd of poll group thread {group}: {source}")]
    Wake {
        /// Thread number.
        group: u16,
        /// The error.
        source: crate::verbs::VerbsError,
    },
}

/// What the acceptor thread sends to a poll group thread.
enum GroupMsg {
    NewQpair(PendingQpair),
    Event(QpairMsg),
    Device(DeviceMsg),
    Port(PortMsg),
}

/// The acceptor's way to a group thread: the channel and the eventfd that
/// wakes the thread in interrupt mode.
struct GroupInbox {
    tx: Sender<GroupMsg>,
    wake: Arc<EventFd>,
}

/// State shared by the driver's threads.
struct DriverShared {
    shutdown: AtomicBool,
    groups_running: AtomicUsize,
    /// Latest statistics per group index.
    stats: Mutex<Vec<PollGroupStats>>,
}

/// A running standalone transport: the core plus its threads. Dropping it
/// shuts it down.
pub struct Driver {
    transport: Transport,
    shared: Arc<DriverShared>,
    listen: Vec<SocketAddr>,
    threads: Vec<JoinHandle<()>>,
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, DriverError> {
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(f)
        .map_err(|source| DriverError::Thread { name, source })
}

impl Driver {
    /// Creates the transport (options validated for `run.poll_groups`
    /// cores), listens on `listen`, and starts `run.poll_groups` poll group
    /// threads and the acceptor thread.
    pub fn start<H: Host>(
        host: Arc<H>,
        opts: TransportOptions,
        listen: &[SocketAddr],
        run: RunConfig,
    ) -> Result<Driver, DriverError> {
        if run.poll_groups == 0 {
            return Err(DriverError::NoPollGroups);
        }
        let transport = Transport::create(opts, u32::from(run.poll_groups))?;
        let mut bound = Vec::new();
        for &addr in listen {
            bound.push(transport.listen(addr)?);
        }
        let shared = Arc::new(DriverShared {
            shutdown: AtomicBool::new(false),
            groups_running: AtomicUsize::new(0),
            stats: Mutex::new(Vec::new()),
        });
        let mut driver = Driver {
            transport: transport.clone(),
            shared: shared.clone(),
            listen: bound,
            threads: Vec::new(),
        };
        // Group index → channel, filled as each thread reports its group.
        let mut senders: Vec<Option<GroupInbox>> = Vec::new();
        for g in 0..run.poll_groups {
            let (tx, rx) = channel();
            let (ready_tx, ready_rx) = channel();
            let wake =
                Arc::new(EventFd::new().map_err(|source| DriverError::Wake { group: g, source })?);
            let inbox = GroupInbox {
                tx,
                wake: wake.clone(),
            };
            let (host, transport, thread_shared, run) =
                (host.clone(), transport.clone(), shared.clone(), run.clone());
            shared.groups_running.fetch_add(1, Ordering::SeqCst);
            let spawned = spawn(format!("nvmf_rdma_pg{g}"), move || {
                let inbox = Inbox { rx, wake };
                group_thread(&*host, &transport, &thread_shared, inbox, ready_tx, &run);
                thread_shared.groups_running.fetch_sub(1, Ordering::SeqCst);
            });
            let t = match spawned {
                Ok(t) => t,
                Err(e) => {
                    shared.groups_running.fetch_sub(1, Ordering::SeqCst);
                    return Err(e);
                }
            };
            driver.threads.push(t);
            match ready_rx.recv() {
                Ok(Ok(index)) => {
                    let i = usize::from(index);
                    if senders.len() <= i {
                        senders.resize_with(i + 1, || None);
                    }
                    senders[i] = Some(inbox);
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err(DriverError::GroupLost(g)),
            }
        }
        let acc_transport = transport.clone();
        let acc_shared = shared.clone();
        let t = spawn("nvmf_rdma_acceptor".into(), move || {
            acceptor_thread(&acc_transport, &acc_shared, &senders)
        })?;
        driver.threads.push(t);
        Ok(driver)
    }

    /// The transport core.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// The options in effect (after validation and device adjustment).
    pub fn options(&self) -> &TransportOptions {
        self.transport.options()
    }

    /// The addresses listened on.
    pub fn listen_addrs(&self) -> &[SocketAddr] {
        &self.listen
    }

    /// The `cdata_init` values.
    pub fn cdata(&self) -> TransportCdata {
        self.transport.cdata()
    }

    /// Live-resource counters.
    pub fn counters(&self) -> ResourceCounters {
        self.transport.counters()
    }

    /// Latest per-group statistics (refreshed by each group every 100 ms).
    pub fn stats(&self) -> Vec<PollGroupStats> {
        self.shared
            .stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Disconnects every qpair, waits (bounded) for teardown, stops all
    /// threads and returns the final counters.
    pub fn shutdown(mut self) -> ResourceCounters {
        self.stop();
        self.transport.counters()
    }

    fn stop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("a transport thread panicked");
            }
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.stop();
    }
}

fn publish(shared: &DriverShared, stats: PollGroupStats, index: u16) {
    let mut all = shared.stats.lock().unwrap_or_else(|e| e.into_inner());
    let i = usize::from(index);
    if all.len() <= i {
        all.resize_with(i + 1, PollGroupStats::default);
    }
    all[i] = stats;
}

/// A group thread's end of its [`GroupInbox`].
struct Inbox {
    rx: Receiver<GroupMsg>,
    wake: Arc<EventFd>,
}

fn group_thread<H: Host>(
    host: &H,
    transport: &Transport,
    shared: &DriverShared,
    inbox: Inbox,
    ready: Sender<Result<u16, TransportError>>,
    run: &RunConfig,
) {
    let mut pg = match transport.create_poll_group(host) {
        Ok(pg) => pg,
        Err(e) => {
            tracing::error!("creating poll group failed: {e}");
            let _ = ready.send(Err(e));
            return;
        }
    };
    pg.set_drain_timeout(run.drain_timeout);
    let index = pg.index();
    publish(shared, pg.stats(), index);
    if ready.send(Ok(index)).is_err() {
        return;
    }
    let start = Instant::now();
    let now_ns = || start.elapsed().as_nanos() as u64;
    let event_fds = |pg: &mut PollGroup<H>| {
        let mut fds = pg.event_fds();
        fds.push(inbox.wake.fd());
        (fds, pg.event_fds_generation())
    };
    let (mut fds, mut fds_generation) = event_fds(&mut pg);
    if run.interrupt_mode {
        pg.arm();
    }
    let mut idle: u32 = 0;
    let mut last_stats = Instant::now();
    let mut shutdown_at: Option<Instant> = None;
    loop {
        let now = now_ns();
        let mut work = 0;
        if run.interrupt_mode {
            sleep_until_event(&pg, &fds, &inbox, now);
        }
        let now = now_ns();
        while let Ok(msg) = inbox.rx.try_recv() {
            handle_msg(&mut pg, msg, now);
            work += 1;
        }
        if pg.event_fds_generation() != fds_generation {
            // A device's poller was made or dropped: wait on the new set.
            (fds, fds_generation) = event_fds(&mut pg);
        }
        work += if run.interrupt_mode {
            pg.handle_event(now)
        } else {
            pg.poll(now)
        };
        if last_stats.elapsed() >= STATS_PERIOD {
            last_stats = Instant::now();
            publish(shared, pg.stats(), index);
        }
        if shared.shutdown.load(Ordering::Relaxed) {
            match shutdown_at {
                None => {
                    shutdown_at = Some(Instant::now());
                    pg.disconnect_all(now);
                }
                Some(t) => {
                    if pg.live_qpairs() == 0 {
                        break;
                    }
                    if t.elapsed() > run.shutdown_timeout {
                        tracing::warn!(
                            group = index,
                            live = pg.live_qpairs(),
                            "shutdown timeout: dropping remaining qpairs"
                        );
                        break;
                    }
                }
            }
        }
        if work == 0 && !run.interrupt_mode {
            idle = idle.saturating_add(1);
            if run.busy_poll || idle <= IDLE_YIELD_AFTER {
                std::hint::spin_loop();
            } else if idle > IDLE_NAP_AFTER {
                std::thread::sleep(IDLE_NAP);
            } else {
                std::thread::yield_now();
            }
        } else {
            idle = 0;
        }
    }
    publish(shared, pg.stats(), index);
}

/// Interrupt mode: sleeps in `poll(2)` until a completion channel or the
/// wake-up eventfd is readable, the group's next deadline, or [`HOST_TICK`].
fn sleep_until_event<H: Host>(
    pg: &PollGroup<H>,
    fds: &[std::os::fd::RawFd],
    inbox: &Inbox,
    now: u64,
) {
    let mut timeout = HOST_TICK;
    if let Some(d) = pg.next_deadline() {
        timeout = timeout.min(Duration::from_nanos(d.saturating_sub(now)));
    }
    if timeout > Duration::ZERO {
        if let Err(e) = wait_readable_any(fds, timeout) {
            tracing::error!(group = pg.index(), "waiting for events failed: {e}");
        }
    }
    inbox.wake.drain();
}

fn handle_msg<H: Host>(pg: &mut PollGroup<H>, msg: GroupMsg, now: u64) {
    match msg {
        GroupMsg::NewQpair(q) => {
            if let Err(e) = pg.add_qpair(q, now) {
                tracing::error!("{e}");
                // The host finishes the refused qpair (SPDK: qpair_fini).
                e.qpair.reject();
            }
        }
        GroupMsg::Event(m) => pg.deliver(m, now),
        GroupMsg::Device(m) => pg.deliver_device(m, now),
        GroupMsg::Port(m) => pg.deliver_port(m, now),
    }
}

fn acceptor_thread(transport: &Transport, shared: &DriverShared, senders: &[Option<GroupInbox>]) {
    let mut fds = transport.acceptor_fds();
    let mut fds_generation = transport.acceptor_fds_generation();
    let period =
        Duration::from_micros(u64::from(transport.options().acceptor_poll_rate).clamp(100, 10_000));
    let mut route = |ev: AcceptorEvent| {
        let (group, msg) = match ev {
            AcceptorEvent::Device(m) => {
                for s in senders.iter().flatten() {
                    let _ = s.tx.send(GroupMsg::Device(m));
                    s.wake.signal();
                }
                return;
            }
            AcceptorEvent::Port(m) => {
                for s in senders.iter().flatten() {
                    let _ = s.tx.send(GroupMsg::Port(m));
                    s.wake.signal();
                }
                return;
            }
            AcceptorEvent::NewQpair(q) => match transport.optimal_group(q.qid()) {
                Some(g) => (g, GroupMsg::NewQpair(q)),
                None => return q.reject(),
            },
            AcceptorEvent::Qpair(m) => (m.qpair.group, GroupMsg::Event(m)),
        };
        let sent = senders
            .get(usize::from(group))
            .and_then(Option::as_ref)
            .map(|s| {
                let sent = s.tx.send(msg);
                s.wake.signal();
                sent
            });
        match sent {
            Some(Ok(())) => {}
            Some(Err(std::sync::mpsc::SendError(GroupMsg::NewQpair(q)))) => q.reject(),
            _ => tracing::debug!(group, "poll group is gone: message dropped"),
        }
    };
    while !shared.shutdown.load(Ordering::Relaxed) {
        if let Err(e) = wait_readable_any(&fds, period) {
            tracing::error!("acceptor poll failed: {e}");
            std::thread::sleep(period);
        }
        transport.accept_poll(&mut route);
        if transport.acceptor_fds_generation() != fds_generation {
            // A device was removed or opened: its async fd left or joined.
            fds = transport.acceptor_fds();
            fds_generation = transport.acceptor_fds_generation();
        }
    }
    // Keep acking CM events until the groups are gone so that their ids can
    // be destroyed; the groups exit on their own deadline.
    let deadline = Instant::now() + ACCEPTOR_LINGER;
    while Instant::now() < deadline && shared.groups_running.load(Ordering::SeqCst) > 0 {
        let _ = wait_readable_any(&fds, Duration::from_millis(10));
        transport.accept_poll(&mut route);
    }
}
