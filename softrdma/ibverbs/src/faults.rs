//! Deterministic fault injection. Rules come from `SOFTRDMA_FAULTS` (`;`-separated) at start-up
//! and from `fault <rule>` control commands at run time. Grammar (docs/softrdma.md):
//!
//! ```text
//! fail:op=<send|send_imm|send_inv|write|write_imm|read|cas|faa|any>,nth=<N>,status=<N|name>[,qp=<filter>]
//! qperr:qp=<filter>,after=<N>          QP -> ERR when its N-th send WR is about to execute
//! delay:qp=<filter>,ms=<N>             hold this QP's completions for N ms (reorders across QPs)
//! loseflush:qp=<filter>[,count=<N>]    drop WR_FLUSH_ERR completions (all, or the next N)
//! cmdrop:qp=<filter>                   ask librdmacm to drop the connection of that QP
//! async:event=<port_err|port_active|device_fatal|N>[,after_ms=<N>]
//! random:seed=<N>,rate=<0..1>[,kinds=fail|qperr|delay|loseflush|cmdrop|async]
//! createfail:obj=<cq|qp|any>[,nth=<N>][,errno=<N|name>]   the N-th later ibv_create_<obj> fails
//! filter: * | <qpn, decimal or 0x hex> | #<N> (the N-th QP created by this process)
//! ```

use softrdma_abi::fabric::{Counter, MAX_NODES, NODE_PORT_DOWN};
use softrdma_abi::verbs::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Which QPs a rule applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum QpFilter {
    Any,
    Qpn(u32),
    Seq(u32),
}

impl QpFilter {
    fn parse(s: &str) -> Result<QpFilter, String> {
        if s == "*" {
            Ok(QpFilter::Any)
        } else if let Some(n) = s.strip_prefix('#') {
            n.parse()
                .map(QpFilter::Seq)
                .map_err(|_| format!("bad QP ordinal '{s}'"))
        } else {
            parse_u64(s).map(|v| QpFilter::Qpn(v as u32))
        }
    }
    /// Public parser for control commands.
    pub(crate) fn parse_pub(s: &str) -> Result<QpFilter, String> {
        QpFilter::parse(s)
    }
    /// Does the filter match a QP with number `qpn` and ordinal `seq` (0 = unknown)?
    pub(crate) fn matches(self, qpn: u32, seq: u32) -> bool {
        match self {
            QpFilter::Any => true,
            QpFilter::Qpn(q) => q == qpn,
            QpFilter::Seq(s) => s == seq && seq != 0,
        }
    }
}

fn parse_u64(s: &str) -> Result<u64, String> {
    let r = if let Some(h) = s.strip_prefix("0x") {
        u64::from_str_radix(h, 16)
    } else {
        s.parse()
    };
    r.map_err(|_| format!("bad number '{s}'"))
}

fn parse_op(s: &str) -> Result<Option<u32>, String> {
    Ok(Some(match s {
        "any" | "*" => return Ok(None),
        "send" => IBV_WR_SEND,
        "send_imm" => IBV_WR_SEND_WITH_IMM,
        "send_inv" => IBV_WR_SEND_WITH_INV,
        "write" => IBV_WR_RDMA_WRITE,
        "write_imm" => IBV_WR_RDMA_WRITE_WITH_IMM,
        "read" => IBV_WR_RDMA_READ,
        "cas" => IBV_WR_ATOMIC_CMP_AND_SWP,
        "faa" => IBV_WR_ATOMIC_FETCH_AND_ADD,
        _ => return Err(format!("unknown opcode '{s}'")),
    }))
}

fn parse_status(s: &str) -> Result<u32, String> {
    Ok(match s.to_ascii_lowercase().trim_start_matches("ibv_wc_") {
        "retry_exc_err" => IBV_WC_RETRY_EXC_ERR,
        "rnr_retry_exc_err" => IBV_WC_RNR_RETRY_EXC_ERR,
        "rem_access_err" => IBV_WC_REM_ACCESS_ERR,
        "rem_op_err" => IBV_WC_REM_OP_ERR,
        "rem_inv_req_err" => IBV_WC_REM_INV_REQ_ERR,
        "loc_prot_err" => IBV_WC_LOC_PROT_ERR,
        "loc_len_err" => IBV_WC_LOC_LEN_ERR,
        "loc_qp_op_err" => IBV_WC_LOC_QP_OP_ERR,
        "fatal_err" => IBV_WC_FATAL_ERR,
        "general_err" => IBV_WC_GENERAL_ERR,
        other => {
            let v = parse_u64(other)? as u32;
            if v == 0 || v == IBV_WC_WR_FLUSH_ERR || v > IBV_WC_TM_RNDV_INCOMPLETE {
                return Err(format!("status {v} is not an injectable error status"));
            }
            v
        }
    })
}

/// Pseudo async event `device_remove`: the device disappears ([`crate::device::remove`]).
pub(crate) const DEVICE_REMOVE: u32 = 0x1_0000;
/// Pseudo async event `device_add`: the device comes back ([`crate::device::add`]).
pub(crate) const DEVICE_ADD: u32 = 0x1_0001;
/// Pseudo async event `addr_change`: librdmacm reports `RDMA_CM_EVENT_ADDR_CHANGE` on every
/// listening cm id ([`addr_change`]).
pub(crate) const ADDR_CHANGE: u32 = 0x1_0002;
// Above every ibv_event_type, so they never shadow a numeric event.
const _: () = assert!(
    DEVICE_REMOVE > IBV_EVENT_GID_CHANGE && DEVICE_ADD > DEVICE_REMOVE && ADDR_CHANGE > DEVICE_ADD
);

/// Parse an async event name or number.
pub(crate) fn parse_event(s: &str) -> Result<u32, String> {
    Ok(match s {
        "device_remove" => DEVICE_REMOVE,
        "device_add" => DEVICE_ADD,
        "addr_change" => ADDR_CHANGE,
        "port_err" => IBV_EVENT_PORT_ERR,
        "port_active" => IBV_EVENT_PORT_ACTIVE,
        "device_fatal" => IBV_EVENT_DEVICE_FATAL,
        "lid_change" => IBV_EVENT_LID_CHANGE,
        "sm_change" => IBV_EVENT_SM_CHANGE,
        "client_reregister" => IBV_EVENT_CLIENT_REREGISTER,
        other => parse_u64(other)? as u32,
    })
}

#[derive(Debug, Clone)]
enum Rule {
    Fail {
        filter: QpFilter,
        op: Option<u32>,
        nth: u64,
        status: u32,
        fired: Vec<u32>,
    },
    QpErr {
        filter: QpFilter,
        after: u64,
        fired: Vec<u32>,
    },
    LoseFlush {
        filter: QpFilter,
        count: Option<u64>,
    },
    CmDrop {
        filter: QpFilter,
        fired: bool,
    },
    Async {
        event: u32,
        at_ms: u64,
        fired: bool,
    },
    CreateFail {
        obj: Option<CreateObj>,
        nth: u64,
        seen: u64,
        errno: i32,
    },
}

/// Objects whose creation a `createfail` rule can make fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CreateObj {
    /// `ibv_create_cq` (also the CQs `rdma_create_qp` creates).
    Cq,
    /// `ibv_create_qp` (also through `rdma_create_qp`).
    Qp,
}

fn parse_obj(s: &str) -> Result<Option<CreateObj>, String> {
    match s {
        "any" | "*" => Ok(None),
        "cq" => Ok(Some(CreateObj::Cq)),
        "qp" => Ok(Some(CreateObj::Qp)),
        _ => Err(format!("unknown object '{s}' (cq, qp or any)")),
    }
}

fn parse_errno(s: &str) -> Result<i32, String> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "enomem" => libc::ENOMEM,
        "einval" => libc::EINVAL,
        "enodev" => libc::ENODEV,
        "eagain" => libc::EAGAIN,
        "eio" => libc::EIO,
        "eperm" => libc::EPERM,
        other => {
            let v = parse_u64(other)?;
            if v == 0 || v > 4095 {
                return Err(format!("errno {v} out of range 1..4095"));
            }
            v as i32
        }
    })
}

#[derive(Debug, Default)]
struct Random {
    state: u64,
    rate: f64,
    kinds: Vec<&'static str>,
}

impl Random {
    fn next(&mut self) -> u64 {
        // xorshift64*: deterministic for a given seed and WR sequence.
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    random: Option<Random>,
    /// Delayed QPs (from delay rules and random delay), qpn → ms.
    delays: Vec<(QpFilter, u64)>,
    /// QPNs whose CM connection must be dropped (pending for librdmacm).
    cm_pending: Vec<u32>,
}

/// What the engine must do with a WR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Complete it with this error status, then QP → ERR.
    Fail(u32),
    /// Move the QP to ERR now (the WR is flushed).
    QpError,
}

/// Fault-injection state of the process.
pub(crate) struct Faults {
    st: Mutex<State>,
    active: AtomicBool,
    any_delay: AtomicBool,
}

static PORT_DOWN: AtomicBool = AtomicBool::new(false);

/// True after an injected port_err, until port_active.
pub(crate) fn port_down() -> bool {
    PORT_DOWN.load(Ordering::Relaxed)
}

/// Record the port state for this process and in its fabric node, where requesters in other
/// processes see it (their WRs to our QPs are lost while it is down, as on a real link).
fn set_port_down(down: bool) {
    if PORT_DOWN.swap(down, Ordering::AcqRel) == down {
        return;
    }
    let Some(rt) = crate::runtime::existing() else {
        return;
    };
    let node = rt.fabric.node(rt.node);
    let hdr = rt.fabric.header();
    if down {
        node.flags.fetch_or(NODE_PORT_DOWN, Ordering::SeqCst);
        hdr.ports_down.fetch_add(1, Ordering::SeqCst);
    } else {
        node.flags.fetch_and(!NODE_PORT_DOWN, Ordering::SeqCst);
        hdr.ports_down.fetch_sub(1, Ordering::SeqCst);
    }
}

/// True if the port of process `pid` (ours or a peer's) is down: its QPs neither send nor
/// receive. Costs one load unless some process's port is down.
pub(crate) fn port_down_for(rt: &crate::runtime::Runtime, pid: u32) -> bool {
    if port_down() {
        return true;
    }
    if rt.fabric.header().ports_down.load(Ordering::Relaxed) == 0 {
        return false;
    }
    (0..MAX_NODES).any(|i| {
        let n = rt.fabric.node(i);
        n.owner.load(Ordering::Acquire) == pid
            && n.flags.load(Ordering::Acquire) & NODE_PORT_DOWN != 0
    })
}

fn note(msg: String) {
    crate::log::fault(&msg);
    if let Some(rt) = crate::runtime::existing() {
        rt.count(Counter::FaultsInjected, 1);
    }
}

impl Faults {
    /// Rules from `SOFTRDMA_FAULTS` (invalid rules are reported and ignored).
    pub(crate) fn from_env() -> Faults {
        let f = Faults {
            st: Mutex::new(State::default()),
            active: AtomicBool::new(false),
            any_delay: AtomicBool::new(false),
        };
        if let Ok(spec) = std::env::var("SOFTRDMA_FAULTS") {
            for r in spec.split(';').map(str::trim).filter(|r| !r.is_empty()) {
                if let Err(e) = f.add(r) {
                    crate::log::warn(&format!("SOFTRDMA_FAULTS: ignoring rule '{r}': {e}"));
                }
            }
        }
        f
    }

    /// Add one rule (see the module docs).
    pub(crate) fn add(&self, rule: &str) -> Result<(), String> {
        let (kind, args) = rule.split_once(':').unwrap_or((rule, ""));
        let mut kv = std::collections::HashMap::new();
        for p in args.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = p
                .split_once('=')
                .ok_or_else(|| format!("expected key=value, got '{p}'"))?;
            kv.insert(k.trim(), v.trim());
        }
        let filter = QpFilter::parse(kv.get("qp").copied().unwrap_or("*"))?;
        let num = |k: &str, d: Option<u64>| -> Result<u64, String> {
            match kv.get(k) {
                Some(v) => parse_u64(v),
                None => d.ok_or_else(|| format!("missing '{k}='")),
            }
        };
        let mut st = self.st.lock().unwrap_or_else(|e| e.into_inner());
        match kind {
            "fail" => {
                let op = parse_op(kv.get("op").copied().unwrap_or("any"))?;
                let status = parse_status(kv.get("status").copied().unwrap_or("retry_exc_err"))?;
                st.rules.push(Rule::Fail {
                    filter,
                    op,
                    nth: num("nth", Some(1))?.max(1),
                    status,
                    fired: Vec::new(),
                });
            }
            "qperr" => st.rules.push(Rule::QpErr {
                filter,
                after: num("after", Some(1))?.max(1),
                fired: Vec::new(),
            }),
            "delay" => {
                let ms = num("ms", Some(10))?;
                st.delays.push((filter, ms));
                self.any_delay.store(true, Ordering::Relaxed);
            }
            "loseflush" => st.rules.push(Rule::LoseFlush {
                filter,
                count: kv.get("count").map(|v| parse_u64(v)).transpose()?,
            }),
            "cmdrop" => st.rules.push(Rule::CmDrop {
                filter,
                fired: false,
            }),
            "async" => {
                let event = parse_event(kv.get("event").copied().unwrap_or("port_err"))?;
                let at_ms = crate::util::now_ms() + num("after_ms", Some(0))?;
                st.rules.push(Rule::Async {
                    event,
                    at_ms,
                    fired: false,
                });
            }
            "createfail" => st.rules.push(Rule::CreateFail {
                obj: parse_obj(kv.get("obj").copied().unwrap_or("any"))?,
                nth: num("nth", Some(1))?.max(1),
                seen: 0,
                errno: parse_errno(kv.get("errno").copied().unwrap_or("enomem"))?,
            }),
            "random" => {
                let seed = num("seed", Some(1))?.max(1);
                let rate: f64 = kv
                    .get("rate")
                    .map(|v| v.parse::<f64>())
                    .transpose()
                    .map_err(|_| "bad rate".to_string())?
                    .unwrap_or(0.01);
                if !(0.0..=1.0).contains(&rate) {
                    return Err(format!("rate {rate} not in 0..1"));
                }
                let all = ["fail", "qperr", "delay", "loseflush", "cmdrop", "async"];
                let kinds: Vec<&'static str> = match kv.get("kinds") {
                    None => all.to_vec(),
                    Some(k) => {
                        let mut v = Vec::new();
                        for x in k.split('|') {
                            v.push(
                                *all.iter()
                                    .find(|a| **a == x)
                                    .ok_or_else(|| format!("unknown random kind '{x}'"))?,
                            );
                        }
                        v
                    }
                };
                st.random = Some(Random {
                    state: seed,
                    rate,
                    kinds,
                });
            }
            _ => return Err(format!("unknown fault kind '{kind}'")),
        }
        crate::log::debug(&format!("fault rule added: {rule}"));
        self.active.store(true, Ordering::Release);
        Ok(())
    }

    /// True while any rule exists (WRs must then be checked one by one).
    pub(crate) fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// True while rules exist whose effects are timed (held completions, delayed async
    /// events): the event thread then wakes every 20 ms instead of every 100 ms.
    pub(crate) fn needs_ticks(&self) -> bool {
        self.active.load(Ordering::Relaxed) || self.any_delay.load(Ordering::Relaxed)
    }

    /// Remove every rule.
    pub(crate) fn clear(&self) {
        let mut st = self.st.lock().unwrap_or_else(|e| e.into_inner());
        *st = State::default();
        self.active.store(false, Ordering::Release);
        self.any_delay.store(false, Ordering::Relaxed);
    }

    /// Called before a WR executes. `nth_of_op`/`nth` are 1-based per-QP counters.
    pub(crate) fn on_wr(
        &self,
        qpn: u32,
        seq: u32,
        opcode: u32,
        nth_of_op: u64,
        nth: u64,
        wr_id: u64,
    ) -> Option<Action> {
        if !self.active.load(Ordering::Acquire) {
            return None;
        }
        let mut st = self.st.lock().unwrap_or_else(|e| e.into_inner());
        for r in st.rules.iter_mut() {
            match r {
                Rule::Fail {
                    filter,
                    op,
                    nth: n,
                    status,
                    fired,
                } => {
                    let counter = if op.is_some() { nth_of_op } else { nth };
                    if filter.matches(qpn, seq)
                        && op.is_none_or(|o| o == opcode)
                        && counter == *n
                        && !fired.contains(&qpn)
                    {
                        fired.push(qpn);
                        let s = *status;
                        drop(st);
                        note(format!("kind=fail qp={qpn:#x} wr_id={wr_id:#x} opcode={opcode} nth={counter} status={s}"));
                        return Some(Action::Fail(s));
                    }
                }
                Rule::QpErr {
                    filter,
                    after,
                    fired,
                } => {
                    if filter.matches(qpn, seq) && nth >= *after && !fired.contains(&qpn) {
                        fired.push(qpn);
                        drop(st);
                        note(format!(
                            "kind=qperr qp={qpn:#x} wr_id={wr_id:#x} after={nth}"
                        ));
                        return Some(Action::QpError);
                    }
                }
                _ => {}
            }
        }
        let rnd = st.random.as_mut()?;
        if rnd.unit() >= rnd.rate {
            return None;
        }
        let k = (rnd.next() % rnd.kinds.len() as u64) as usize;
        let kind = rnd.kinds[k];
        let pick = rnd.next();
        match kind {
            "fail" => {
                let statuses = [
                    IBV_WC_RETRY_EXC_ERR,
                    IBV_WC_REM_ACCESS_ERR,
                    IBV_WC_RNR_RETRY_EXC_ERR,
                    IBV_WC_REM_OP_ERR,
                ];
                let s = statuses[(pick % 4) as usize];
                drop(st);
                note(format!(
                    "kind=random-fail qp={qpn:#x} wr_id={wr_id:#x} opcode={opcode} status={s}"
                ));
                Some(Action::Fail(s))
            }
            "qperr" => {
                drop(st);
                note(format!("kind=random-qperr qp={qpn:#x} wr_id={wr_id:#x}"));
                Some(Action::QpError)
            }
            "delay" => {
                let ms = 1 + pick % 20;
                st.delays.push((QpFilter::Qpn(qpn), ms));
                self.any_delay.store(true, Ordering::Relaxed);
                drop(st);
                note(format!(
                    "kind=random-delay qp={qpn:#x} wr_id={wr_id:#x} ms={ms}"
                ));
                None
            }
            "loseflush" => {
                st.rules.push(Rule::LoseFlush {
                    filter: QpFilter::Qpn(qpn),
                    count: Some(1),
                });
                drop(st);
                note(format!(
                    "kind=random-loseflush qp={qpn:#x} wr_id={wr_id:#x}"
                ));
                None
            }
            "async" => {
                // A port flap: PORT_ERR now, PORT_ACTIVE 10 ms later (raised by the event thread).
                let now = crate::util::now_ms();
                st.rules.push(Rule::Async {
                    event: IBV_EVENT_PORT_ERR,
                    at_ms: now,
                    fired: false,
                });
                st.rules.push(Rule::Async {
                    event: IBV_EVENT_PORT_ACTIVE,
                    at_ms: now + 10,
                    fired: false,
                });
                drop(st);
                crate::log::fault(&format!(
                    "kind=random-async qp={qpn:#x} wr_id={wr_id:#x} event=port_err+port_active"
                ));
                None
            }
            _ => {
                st.cm_pending.push(qpn);
                drop(st);
                note(format!("kind=random-cmdrop qp={qpn:#x} wr_id={wr_id:#x}"));
                None
            }
        }
    }

    /// Called at the start of `ibv_create_cq` / `ibv_create_qp`: the errno to fail with when a
    /// `createfail` rule fires (each rule fires once, on its N-th matching creation).
    pub(crate) fn on_create(&self, obj: CreateObj) -> Option<i32> {
        if !self.active.load(Ordering::Acquire) {
            return None;
        }
        let mut st = self.st.lock().unwrap_or_else(|e| e.into_inner());
        for r in st.rules.iter_mut() {
            if let Rule::CreateFail {
                obj: o,
                nth,
                seen,
                errno,
            } = r
            {
                if o.is_none_or(|o| o == obj) && *seen < *nth {
                    *seen += 1;
                    if *seen == *nth {
                        let (e, n) = (*errno, *nth);
                        drop(st);
                        note(format!(
                            "kind=createfail obj={obj:?} nth={n} errno={e} qp=- wr_id=-"
                        ));
                        return Some(e);
                    }
                }
            }
        }
        None
    }

    /// Completion delay for QP `qpn`, if a delay rule matches.
    pub(crate) fn delay_for(&self, qpn: u32) -> Option<u64> {
        if !self.any_delay.load(Ordering::Relaxed) {
            return None;
        }
        let seq = crate::runtime::existing()
            .and_then(|rt| qp_seq(rt, qpn))
            .unwrap_or(0);
        let st = self.st.lock().unwrap_or_else(|e| e.into_inner());
        st.delays
            .iter()
            .find(|(f, _)| f.matches(qpn, seq))
            .map(|x| x.1)
    }

    /// True if this flush completion must be dropped (logged).
    pub(crate) fn lose_flush(&self, qpn: u32, seq: u32, wr_id: u64) -> bool {
        if !self.active.load(Ordering::Acquire) {
            return false;
        }
        let mut st = self.st.lock().unwrap_or_else(|e| e.into_inner());
        for r in st.rules.iter_mut() {
            if let Rule::LoseFlush { filter, count } = r {
                if filter.matches(qpn, seq) && count.is_none_or(|c| c > 0) {
                    if let Some(c) = count {
                        *c -= 1;
                    }
                    drop(st);
                    note(format!("kind=loseflush qp={qpn:#x} wr_id={wr_id:#x}"));
                    return true;
                }
            }
        }
        false
    }

    /// librdmacm asks whether the connection of `qpn` must be dropped now (consumes the fault).
    pub(crate) fn cm_should_drop(&self, qpn: u32) -> bool {
        if !self.active.load(Ordering::Acquire) {
            return false;
        }
        let seq = crate::runtime::existing()
            .and_then(|rt| qp_seq(rt, qpn))
            .unwrap_or(0);
        let mut st = self.st.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = st.cm_pending.iter().position(|&q| q == qpn) {
            st.cm_pending.remove(i);
            return true;
        }
        for r in st.rules.iter_mut() {
            if let Rule::CmDrop { filter, fired } = r {
                if !*fired && filter.matches(qpn, seq) {
                    *fired = true;
                    drop(st);
                    note(format!("kind=cmdrop qp={qpn:#x} wr_id=-"));
                    return true;
                }
            }
        }
        false
    }

    /// Event-thread hook: due async events, pending CM drops.
    /// Async events are held back while no device context is open (nobody could receive them).
    pub(crate) fn tick(&self, have_contexts: bool) -> (Vec<u32>, Vec<u32>) {
        if !self.active.load(Ordering::Acquire) {
            return (Vec::new(), Vec::new());
        }
        let now = crate::util::now_ms();
        let mut st = self.st.lock().unwrap_or_else(|e| e.into_inner());
        let mut events = Vec::new();
        for r in st.rules.iter_mut() {
            if let Rule::Async {
                event,
                at_ms,
                fired,
            } = r
            {
                // Device removal and return need no open context.
                if !*fired && *at_ms <= now && (have_contexts || *event >= DEVICE_REMOVE) {
                    *fired = true;
                    events.push(*event);
                }
            }
        }
        let drops = std::mem::take(&mut st.cm_pending);
        (events, drops)
    }
}

fn qp_seq(rt: &crate::runtime::Runtime, qpn: u32) -> Option<u32> {
    let g = rt.qps.lock().unwrap_or_else(|e| e.into_inner());
    let p = *g.get(&(qpn & 0xffff))?;
    // SAFETY: registered QPs are live while the registry lock is held.
    let w = unsafe { &*(p as *const crate::qp::QpWrap) };
    (w.qpn == qpn).then_some(w.seq)
}

/// Raise an injected async event on every context (and track port state), or remove / bring
/// back the device.
pub(crate) fn raise_async(event: u32) {
    match event {
        ADDR_CHANGE => {
            if let Err(e) = addr_change() {
                crate::log::warn(&format!("addr_change: {e}"));
            }
            return;
        }
        DEVICE_REMOVE | DEVICE_ADD => {
            let (what, changed) = if event == DEVICE_REMOVE {
                ("device_remove", crate::device::remove())
            } else {
                ("device_add", crate::device::add())
            };
            if changed {
                note(format!("kind={what} qp=- wr_id=-"));
            } else {
                crate::log::warn(&format!("{what}: the device is already in that state"));
            }
            return;
        }
        IBV_EVENT_PORT_ERR => set_port_down(true),
        IBV_EVENT_PORT_ACTIVE => set_port_down(false),
        _ => {}
    }
    note(format!("kind=async event={event} qp=- wr_id=-"));
    crate::events::raise_device_event(event);
}

/// `RDMA_CM_EVENT_ADDR_CHANGE` on every listening cm id of the process, through librdmacm's
/// handler (logged and counted as a fault); returns how many ids got it.
pub(crate) fn addr_change() -> Result<i32, &'static str> {
    let rt = crate::runtime::get().ok_or("no softrdma runtime")?;
    let h = *rt.addr_change.lock().unwrap_or_else(|e| e.into_inner());
    let (f, arg) = h.ok_or("no CM handler registered (librdmacm not loaded)")?;
    note("kind=addr_change qp=- wr_id=-".into());
    // SAFETY: handler and arg were registered together by librdmacm through the vtable.
    Ok(unsafe { f(arg as *mut std::ffi::c_void) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        assert_eq!(QpFilter::parse("*"), Ok(QpFilter::Any));
        assert_eq!(QpFilter::parse("0x10005"), Ok(QpFilter::Qpn(0x10005)));
        assert_eq!(QpFilter::parse("65541"), Ok(QpFilter::Qpn(65541)));
        assert_eq!(QpFilter::parse("#3"), Ok(QpFilter::Seq(3)));
        assert!(QpFilter::parse("#x").is_err());
        assert!(QpFilter::Seq(2).matches(7, 2));
        assert!(!QpFilter::Seq(2).matches(7, 0));
        assert!(!QpFilter::Qpn(5).matches(6, 1));
    }

    #[test]
    fn createfail_fires_once_on_the_nth_matching_creation() {
        let f = Faults {
            st: Mutex::new(State::default()),
            active: AtomicBool::new(false),
            any_delay: AtomicBool::new(false),
        };
        assert_eq!(f.on_create(CreateObj::Qp), None, "no rule");
        f.add("createfail:obj=qp,nth=2,errno=eagain").unwrap();
        f.add("createfail:obj=cq").unwrap();
        assert_eq!(f.on_create(CreateObj::Qp), None);
        assert_eq!(f.on_create(CreateObj::Cq), Some(libc::ENOMEM));
        assert_eq!(f.on_create(CreateObj::Cq), None, "fired once");
        assert_eq!(f.on_create(CreateObj::Qp), Some(libc::EAGAIN));
        assert_eq!(f.on_create(CreateObj::Qp), None);
        assert!(f.add("createfail:obj=srq").is_err());
        assert!(f.add("createfail:obj=qp,errno=0").is_err());
        assert!(f.add("createfail:obj=qp,errno=12").is_ok());
    }

    #[test]
    fn statuses_and_ops() {
        assert_eq!(parse_status("retry_exc_err"), Ok(IBV_WC_RETRY_EXC_ERR));
        assert_eq!(
            parse_status("IBV_WC_REM_ACCESS_ERR"),
            Ok(IBV_WC_REM_ACCESS_ERR)
        );
        assert_eq!(parse_status("13"), Ok(IBV_WC_RNR_RETRY_EXC_ERR));
        assert!(parse_status("0").is_err(), "success is not a fault");
        assert!(parse_status("5").is_err(), "flush is not injectable");
        assert_eq!(parse_op("read"), Ok(Some(IBV_WR_RDMA_READ)));
        assert_eq!(parse_op("any"), Ok(None));
        assert!(parse_op("nop").is_err());
        assert_eq!(parse_event("port_err"), Ok(IBV_EVENT_PORT_ERR));
    }

    fn faults() -> Faults {
        Faults {
            st: Mutex::new(State::default()),
            active: AtomicBool::new(false),
            any_delay: AtomicBool::new(false),
        }
    }

    #[test]
    fn fail_nth_of_opcode_fires_once_per_qp() {
        let f = faults();
        f.add("fail:op=read,nth=3,status=rem_access_err,qp=*")
            .unwrap();
        assert_eq!(f.on_wr(0x10001, 1, IBV_WR_RDMA_READ, 1, 1, 1), None);
        assert_eq!(f.on_wr(0x10001, 1, IBV_WR_RDMA_WRITE, 1, 2, 2), None);
        assert_eq!(f.on_wr(0x10001, 1, IBV_WR_RDMA_READ, 2, 3, 3), None);
        assert_eq!(
            f.on_wr(0x10001, 1, IBV_WR_RDMA_READ, 3, 4, 4),
            Some(Action::Fail(IBV_WC_REM_ACCESS_ERR))
        );
        assert_eq!(
            f.on_wr(0x10001, 1, IBV_WR_RDMA_READ, 3, 4, 4),
            None,
            "fires once per QP"
        );
        assert_eq!(
            f.on_wr(0x10002, 2, IBV_WR_RDMA_READ, 3, 3, 9),
            Some(Action::Fail(IBV_WC_REM_ACCESS_ERR))
        );
    }

    #[test]
    fn qperr_after_and_loseflush_count() {
        let f = faults();
        f.add("qperr:qp=#2,after=2").unwrap();
        f.add("loseflush:qp=#1,count=1").unwrap();
        assert_eq!(f.on_wr(0x10001, 2, IBV_WR_SEND, 1, 1, 1), None);
        assert_eq!(
            f.on_wr(0x10001, 2, IBV_WR_SEND, 2, 2, 2),
            Some(Action::QpError)
        );
        assert!(f.lose_flush(0x10002, 1, 5));
        assert!(!f.lose_flush(0x10002, 1, 6), "count exhausted");
        assert!(!f.lose_flush(0x10003, 3, 7), "filter");
    }

    #[test]
    fn random_is_deterministic() {
        let run = || {
            let f = faults();
            f.add("random:seed=9,rate=0.3,kinds=fail|qperr").unwrap();
            (0..200)
                .map(|i| f.on_wr(0x10001, 1, IBV_WR_SEND, i, i, i))
                .collect::<Vec<_>>()
        };
        let a = run();
        assert_eq!(a, run());
        let fired = a.iter().filter(|x| x.is_some()).count();
        assert!(
            (20..=100).contains(&fired),
            "rate 0.3 over 200 WRs fired {fired}"
        );
    }

    #[test]
    fn bad_rules_are_rejected() {
        let f = faults();
        assert!(f.add("explode:qp=*").is_err());
        assert!(f.add("fail:op=read,nth=x").is_err());
        assert!(f.add("random:rate=2").is_err());
        assert!(f.add("fail:op=read,nth").is_err());
    }

    #[test]
    fn device_removal_events_are_not_real_event_numbers() {
        assert_eq!(parse_event("device_remove"), Ok(DEVICE_REMOVE));
        assert_eq!(parse_event("device_add"), Ok(DEVICE_ADD));
        assert_eq!(parse_event("addr_change"), Ok(ADDR_CHANGE));
        let f = faults();
        assert!(f.add("async:event=device_remove,after_ms=5").is_ok());
        // Due without any open context (the device may be removed with none open).
        std::thread::sleep(std::time::Duration::from_millis(10));
        assert_eq!(f.tick(false).0, vec![DEVICE_REMOVE]);
    }
}
