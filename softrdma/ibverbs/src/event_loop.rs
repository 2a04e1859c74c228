//! The per-process event thread: doorbells from peers (`cq`, `kick`, `rerr`), runtime control
//! commands (fault injection, stats), RNR / not-ready retries, delayed completions and peer
//! liveness checks.

use crate::engine;
use crate::qp::QpWrap;
use crate::runtime::Runtime;
use softrdma_abi::fabric::{self, Counter};
use softrdma_abi::verbs::*;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;

/// Poll timeout while a send queue is stalled (RNR / responder not ready), ms.
const STALLED_TICK_MS: i32 = 1;
/// Poll timeout while timed fault rules exist (delayed completions, async after_ms), ms.
const FAULT_TICK_MS: i32 = 20;
/// Period of the peer liveness scan, and the poll timeout of an idle process, ms.
const LIVENESS_MS: u64 = 100;

/// Thread body.
pub(crate) fn run(rt: &'static Runtime) {
    let fd = rt.sock.as_raw_fd();
    let mut buf = [0u8; 2048];
    let mut last_liveness = 0u64;
    loop {
        // Idle processes (an application asleep in ibv_get_cq_event) are woken only by
        // doorbells and the liveness scan, not by a 20 ms tick.
        let timeout = if crate::qp::STALLED_QPS.load(Ordering::Acquire) > 0 {
            STALLED_TICK_MS
        } else if rt.faults.needs_ticks() {
            FAULT_TICK_MS
        } else {
            LIVENESS_MS as i32
        };
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, timeout) };
        while let Ok((n, from)) = rt.sock.recv_from(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            let reply = handle(rt, msg.trim());
            // Acknowledge to a bound sender (softrdma-ctl binds an abstract name and waits for
            // this reply, so a rule is in force when `softrdma-ctl send` returns).
            if let Some(r) = reply {
                if !from.is_unnamed() {
                    let _ = rt.sock.send_to_addr(r.as_bytes(), &from);
                }
            }
        }
        retry_stalled(rt);
        crate::cq::tick(rt);
        let have_ctx = !rt
            .contexts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty();
        let (events, drops) = rt.faults.tick(have_ctx);
        for e in events {
            crate::faults::raise_async(e);
        }
        for q in drops {
            cm_drop(rt, q);
        }
        let now = crate::util::now_ms();
        if now - last_liveness >= LIVENESS_MS {
            last_liveness = now;
            liveness(rt);
            rt.maps.sweep(|slot| rt.fabric.mr(slot as usize));
        }
    }
}

fn with_qp<F: FnOnce(&QpWrap)>(rt: &Runtime, qpn: u32, f: F) -> bool {
    let g = rt.qps.lock().unwrap_or_else(|e| e.into_inner());
    let Some(&p) = g.get(&(qpn & 0xffff)) else {
        return false;
    };
    // SAFETY: registered QPs are live while the registry lock is held.
    let w = unsafe { &*(p as *const QpWrap) };
    if w.qpn != qpn {
        return false;
    }
    f(w);
    true
}

fn matching_qps(rt: &Runtime, filter: crate::faults::QpFilter) -> Vec<u32> {
    let g = rt.qps.lock().unwrap_or_else(|e| e.into_inner());
    g.values()
        .map(|&p| {
            // SAFETY: registered QPs are live while the registry lock is held.
            unsafe { &*(p as *const QpWrap) }
        })
        .filter(|w| filter.matches(w.qpn, w.seq))
        .map(|w| w.qpn)
        .collect()
}

fn cm_drop(rt: &Runtime, qpn: u32) {
    let h = *rt.cm_drop.lock().unwrap_or_else(|e| e.into_inner());
    match h {
        // SAFETY: handler and arg were registered together by librdmacm through the vtable.
        Some((f, arg)) => unsafe { f(arg as *mut std::ffi::c_void, qpn) },
        None => crate::log::warn(&format!(
            "cmdrop for QP {qpn:#x}: no CM handler registered (librdmacm not loaded)"
        )),
    }
}

fn parse_filter(s: &str) -> Option<crate::faults::QpFilter> {
    let s = s.trim().trim_start_matches("qp=");
    let s = if s.is_empty() { "*" } else { s };
    match crate::faults::QpFilter::parse_pub(s) {
        Ok(f) => Some(f),
        Err(e) => {
            crate::log::warn(&format!("control: {e}"));
            None
        }
    }
}

/// Handle one datagram; returns an optional reply (sent only to bound senders).
fn handle(rt: &Runtime, msg: &str) -> Option<String> {
    let (cmd, rest) = msg.split_once(' ').unwrap_or((msg, ""));
    match cmd {
        "cq" => {
            if let Ok(slot) = rest.parse::<u32>() {
                crate::cq::notify_local(rt, slot);
            }
            None
        }
        "srqlimit" => {
            if let Ok(slot) = rest.parse::<u32>() {
                crate::srq::limit_reached(rt, slot);
            }
            None
        }
        "kick" => {
            if let Ok(qpn) = rest.parse::<u32>() {
                with_qp(rt, qpn, |w| {
                    if let Ok(mut sq) = w.sq.try_lock() {
                        engine::run(rt, w, &mut sq);
                    } else {
                        w.set_stalled(true);
                    }
                });
            }
            None
        }
        "rerr" => {
            let mut it = rest.split_whitespace();
            let qpn = it.next().and_then(|q| q.parse::<u32>().ok())?;
            let ev = it.next().and_then(|e| e.parse::<i64>().ok()).unwrap_or(-1);
            with_qp(rt, qpn, |w| {
                let mut sq = w.sq.lock().unwrap_or_else(|e| e.into_inner());
                engine::enter_error(rt, w, &mut sq, "error reported by the requester");
                if ev >= 0 {
                    // SAFETY: w.qp is the live application QP.
                    unsafe {
                        crate::events::raise_qp_event(
                            &w.qp as *const ibv_qp as *mut ibv_qp,
                            ev as u32,
                        )
                    };
                }
            });
            None
        }
        "fault" => Some(match rt.faults.add(rest) {
            Ok(()) => "ok".into(),
            Err(e) => {
                crate::log::warn(&format!("control: bad fault rule '{rest}': {e}"));
                format!("error {e}")
            }
        }),
        "clear" => {
            rt.faults.clear();
            Some("ok".into())
        }
        "qperr" => {
            let Some(f) = parse_filter(rest) else {
                return Some(format!("error bad qp filter '{rest}'"));
            };
            for qpn in matching_qps(rt, f) {
                with_qp(rt, qpn, |w| {
                    let mut sq = w.sq.lock().unwrap_or_else(|e| e.into_inner());
                    crate::log::fault(&format!("kind=qperr qp={qpn:#x} wr_id=-"));
                    rt.count(Counter::FaultsInjected, 1);
                    engine::enter_error(rt, w, &mut sq, "injected qperr (control)");
                });
            }
            Some("ok".into())
        }
        "async" => match crate::faults::parse_event(rest.trim().trim_start_matches("event=")) {
            Ok(e) => {
                crate::faults::raise_async(e);
                Some("ok".into())
            }
            Err(e) => {
                crate::log::warn(&format!("control: {e}"));
                Some(format!("error {e}"))
            }
        },
        "cmdrop" => {
            let Some(f) = parse_filter(rest) else {
                return Some(format!("error bad qp filter '{rest}'"));
            };
            let qpns = if f == crate::faults::QpFilter::Any {
                vec![0]
            } else {
                matching_qps(rt, f)
            };
            for q in qpns {
                crate::log::fault(&format!("kind=cmdrop qp={q:#x} wr_id=-"));
                rt.count(Counter::FaultsInjected, 1);
                cm_drop(rt, q);
            }
            Some("ok".into())
        }
        "addr_change" => Some(match crate::faults::addr_change() {
            Ok(n) => format!("addr_change listeners={n}"),
            Err(e) => {
                crate::log::warn(&format!("control: addr_change: {e}"));
                format!("error {e}")
            }
        }),
        "stats" => {
            let n = rt.fabric.node(rt.node);
            let mut line = String::from("stats");
            for c in Counter::ALL {
                line.push_str(&format!(
                    " {}={}",
                    c.name(),
                    n.counters[c as usize].load(Ordering::Relaxed) as i64
                ));
            }
            crate::log::warn(&line);
            Some(line)
        }
        _ => {
            crate::log::warn(&format!("control: unknown command '{msg}'"));
            Some("error unknown command".into())
        }
    }
}

fn retry_stalled(rt: &Runtime) {
    let g = rt.qps.lock().unwrap_or_else(|e| e.into_inner());
    for &p in g.values() {
        // SAFETY: registered QPs are live while the registry lock is held.
        let w = unsafe { &*(p as *const QpWrap) };
        if w.stalled.load(Ordering::Relaxed) {
            if let Ok(mut sq) = w.sq.try_lock() {
                engine::run(rt, w, &mut sq);
            }
        }
    }
}

fn liveness(rt: &Runtime) {
    let g = rt.qps.lock().unwrap_or_else(|e| e.into_inner());
    let mut dead: Vec<u32> = Vec::new();
    let mut alive: Vec<u32> = Vec::new();
    for &p in g.values() {
        // SAFETY: registered QPs are live while the registry lock is held.
        let w = unsafe { &*(p as *const QpWrap) };
        let st = w.rec.state.load(Ordering::Acquire);
        if !matches!(st, IBV_QPS_RTR | IBV_QPS_RTS | IBV_QPS_SQD | IBV_QPS_SQE) {
            continue;
        }
        let peer = w.rec.peer_qpn.load(Ordering::Relaxed);
        let prec = rt.fabric.qp((peer & 0xffff) as usize);
        if peer == 0 || prec.qpn.load(Ordering::Acquire) != peer {
            continue;
        }
        let pid = prec.owner.load(Ordering::Acquire);
        if pid == rt.pid || alive.contains(&pid) {
            continue;
        }
        let is_dead = dead.contains(&pid) || !fabric::pid_alive(pid);
        if !is_dead {
            alive.push(pid);
            continue;
        }
        dead.push(pid);
        if let Ok(mut sq) = w.sq.try_lock() {
            engine::peer_died(rt, w, &mut sq, pid);
        }
    }
}
