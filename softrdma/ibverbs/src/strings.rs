//! The string and rate helpers of libibverbs.

use softrdma_abi::verbs::*;
use std::ffi::{c_char, c_int};

fn s(b: &'static [u8]) -> *const c_char {
    b.as_ptr() as *const c_char
}

pub(crate) unsafe extern "C" fn event_type_str(ev: ibv_event_type) -> *const c_char {
    const N: [&[u8]; 20] = [
        b"CQ error\0",
        b"local work queue catastrophic error\0",
        b"invalid request local work queue error\0",
        b"local access violation work queue error\0",
        b"communication established\0",
        b"send queue drained\0",
        b"path migrated\0",
        b"path migration request error\0",
        b"local catastrophic error\0",
        b"port active\0",
        b"port error\0",
        b"LID change\0",
        b"P_Key change\0",
        b"SM change\0",
        b"SRQ catastrophic error\0",
        b"SRQ limit reached\0",
        b"last WQE reached\0",
        b"client reregistration\0",
        b"GID table change\0",
        b"WQ fatal\0",
    ];
    N.get(ev as usize).map(|b| s(b)).unwrap_or(s(b"unknown\0"))
}

pub(crate) unsafe extern "C" fn wc_status_str(st: ibv_wc_status) -> *const c_char {
    const N: [&[u8]; 24] = [
        b"success\0",
        b"local length error\0",
        b"local QP operation error\0",
        b"local EE context operation error\0",
        b"local protection error\0",
        b"Work Request Flushed Error\0",
        b"memory management operation error\0",
        b"bad response error\0",
        b"local access error\0",
        b"remote invalid request error\0",
        b"remote access error\0",
        b"remote operation error\0",
        b"transport retry counter exceeded\0",
        b"RNR retry counter exceeded\0",
        b"local RDD violation error\0",
        b"remote invalid RD request\0",
        b"aborted error\0",
        b"invalid EE context number\0",
        b"invalid EE context state\0",
        b"fatal error\0",
        b"response timeout error\0",
        b"general error\0",
        b"TM error\0",
        b"TM software rendezvous\0",
    ];
    N.get(st as usize).map(|b| s(b)).unwrap_or(s(b"unknown\0"))
}

pub(crate) unsafe extern "C" fn node_type_str(t: ibv_node_type) -> *const c_char {
    match t {
        IBV_NODE_CA => s(b"InfiniBand channel adapter\0"),
        IBV_NODE_SWITCH => s(b"InfiniBand switch\0"),
        IBV_NODE_ROUTER => s(b"InfiniBand router\0"),
        IBV_NODE_RNIC => s(b"iWARP NIC\0"),
        IBV_NODE_USNIC => s(b"usNIC\0"),
        IBV_NODE_USNIC_UDP => s(b"usNIC UDP\0"),
        IBV_NODE_UNSPECIFIED => s(b"unspecified\0"),
        _ => s(b"unknown\0"),
    }
}

pub(crate) unsafe extern "C" fn port_state_str(st: ibv_port_state) -> *const c_char {
    match st {
        IBV_PORT_NOP => s(b"PORT_NOP\0"),
        IBV_PORT_DOWN => s(b"PORT_DOWN\0"),
        IBV_PORT_INIT => s(b"PORT_INIT\0"),
        IBV_PORT_ARMED => s(b"PORT_ARMED\0"),
        IBV_PORT_ACTIVE => s(b"PORT_ACTIVE\0"),
        IBV_PORT_ACTIVE_DEFER => s(b"PORT_ACTIVE_DEFER\0"),
        _ => s(b"invalid state\0"),
    }
}

const RATES: [(c_int, c_int); 18] = [
    (2, 2500),
    (3, 10000),
    (4, 30000),
    (5, 5000),
    (6, 20000),
    (7, 40000),
    (8, 60000),
    (9, 80000),
    (10, 120000),
    (11, 14062),
    (12, 56250),
    (13, 112500),
    (14, 168750),
    (15, 25781),
    (16, 103125),
    (17, 206250),
    (18, 309375),
    (21, 100000),
];

pub(crate) unsafe extern "C" fn rate_to_mbps(rate: c_int) -> c_int {
    RATES
        .iter()
        .find(|r| r.0 == rate)
        .map(|r| r.1)
        .unwrap_or(-1)
}

pub(crate) unsafe extern "C" fn mbps_to_rate(mbps: c_int) -> c_int {
    RATES.iter().find(|r| r.1 == mbps).map(|r| r.0).unwrap_or(0)
}
