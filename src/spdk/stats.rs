//! `poll_group_dump_stat`: a poll group's [`PollGroupStats`] written through
//! SPDK's JSON writer with upstream's keys, order and units
//! (`nvmf_rdma_poll_group_dump_stat`, docs/spdk-plugin.md "Stats").
//!
//! SPDK's generic `nvmf_get_stats` opens the transport's object and writes
//! `trtype` itself, so the op writes only what follows it:
//! `pending_data_buffer`, then the `devices` array, one object per poller
//! (`name`, then [`PollerStats::counters`] in their order; `request_latency`
//! in the core's clock ticks). `trtype` is never written here (SPDK would
//! emit the key twice).
//!
//! The order of writer calls is produced by [`write_stats`] over the small
//! [`JsonOut`] trait, so it is unit-tested with a recording writer; the SPDK
//! side ([`SpdkJsonOut`]) only forwards each call to SPDK's function.

use std::ffi::{CStr, CString};

use super::api::api;
use super::group::RsPollGroup;
use super::guard::guard;
use super::sys;
use crate::transport::{PollGroupStats, PollerStats};

/// Nanoseconds per second.
const NS_PER_SEC: u128 = 1_000_000_000;

/// The key of the group-level counter.
const PENDING_DATA_BUFFER: &CStr = c"pending_data_buffer";
/// The key of the per-poller array.
const DEVICES: &CStr = c"devices";
/// The key of a poller's device name.
const NAME: &CStr = c"name";

/// The JSON writer calls the stats need (a subset of SPDK's `spdk_json_write_*`).
pub(crate) trait JsonOut {
    /// `"name": value` for an unsigned integer.
    fn named_u64(&mut self, name: &CStr, value: u64);
    /// `"name": "value"`.
    fn named_string(&mut self, name: &CStr, value: &CStr);
    /// `"name": [`.
    fn named_array_begin(&mut self, name: &CStr);
    /// `]`.
    fn array_end(&mut self);
    /// `{` (an array element).
    fn object_begin(&mut self);
    /// `}`.
    fn object_end(&mut self);
}

/// A text as a C string; an interior NUL (never in a device name) becomes a
/// space rather than losing the entry.
fn c_text(s: &str) -> CString {
    CString::new(s.replace('\0', " ")).unwrap_or_default()
}

/// One poller's object.
fn write_poller(out: &mut impl JsonOut, p: &PollerStats) {
    out.object_begin();
    out.named_string(NAME, &c_text(&p.name));
    for (key, value) in p.counters() {
        out.named_u64(&c_text(key), value);
    }
    out.object_end();
}

/// Writes the group's entries (everything after `trtype`) to `out`.
pub(crate) fn write_stats(out: &mut impl JsonOut, stats: &PollGroupStats) {
    out.named_u64(PENDING_DATA_BUFFER, stats.pending_data_buffer);
    out.named_array_begin(DEVICES);
    for p in &stats.devices {
        write_poller(out, p);
    }
    out.array_end();
}

/// [`JsonOut`] over SPDK's writer.
struct SpdkJsonOut<'a> {
    api: &'a sys::SpdkApi,
    w: *mut sys::spdk_json_write_ctx,
}

// Every call below: `self.w` is the live writer SPDK passed to the op
// (contract of `dump_poll_group_stat`, the only maker of `SpdkJsonOut`), and
// each name or value is a NUL-terminated string alive for the call. SPDK's
// writer records its own errors in the context; the int result is ignored as
// upstream does.
impl JsonOut for SpdkJsonOut<'_> {
    fn named_u64(&mut self, name: &CStr, value: u64) {
        // SAFETY: see the comment on the impl.
        unsafe {
            self.api
                .spdk_json_write_named_uint64(self.w, name.as_ptr(), value)
        };
    }

    fn named_string(&mut self, name: &CStr, value: &CStr) {
        // SAFETY: see the comment on the impl.
        unsafe {
            self.api
                .spdk_json_write_named_string(self.w, name.as_ptr(), value.as_ptr())
        };
    }

    fn named_array_begin(&mut self, name: &CStr) {
        // SAFETY: see the comment on the impl.
        unsafe {
            self.api
                .spdk_json_write_named_array_begin(self.w, name.as_ptr())
        };
    }

    fn array_end(&mut self) {
        // SAFETY: see the comment on the impl.
        unsafe { self.api.spdk_json_write_array_end(self.w) };
    }

    fn object_begin(&mut self) {
        // SAFETY: see the comment on the impl.
        unsafe { self.api.spdk_json_write_object_begin(self.w) };
    }

    fn object_end(&mut self) {
        // SAFETY: see the comment on the impl.
        unsafe { self.api.spdk_json_write_object_end(self.w) };
    }
}

/// `ns` nanoseconds (the transport core's clock) in ticks of a clock of
/// `ticks_hz` (SPDK's `spdk_get_ticks`, whose rate `nvmf_get_stats` reports
/// as `tick_rate`): upstream's unit of `request_latency`.
fn ns_to_ticks(ns: u64, ticks_hz: u64) -> u64 {
    u64::try_from(u128::from(ns) * u128::from(ticks_hz) / NS_PER_SEC).unwrap_or(u64::MAX)
}

/// The `poll_group_dump_stat` op: the group's core statistics, with
/// `request_latency` in SPDK ticks, through [`dump_poll_group_stat`]. When
/// the core is busy (never, from SPDK's RPC thread message) zeros are
/// written, so the keys are always there.
pub(super) unsafe extern "C" fn poll_group_dump_stat(
    group: *mut sys::spdk_nvmf_transport_poll_group,
    w: *mut sys::spdk_json_write_ctx,
) {
    guard("poll_group_dump_stat", (), || {
        let Some(api) = api() else { return };
        // SAFETY: SPDK dumps a live group of ours on its thread
        // (`nvmf_get_stats` visits each poll group's channel).
        let Some(g) = (unsafe { RsPollGroup::from_raw(group) }) else {
            tracing::error!(
                "RDMA_RS: poll_group_dump_stat of {group:p}, not an RDMA_RS poll group"
            );
            return;
        };
        let mut stats = g.run(|pg| pg.stats()).unwrap_or_default();
        // SAFETY: no arguments; SPDK's env is up while RPCs run.
        let hz = unsafe { api.spdk_get_ticks_hz() };
        for d in &mut stats.devices {
            d.request_latency = ns_to_ticks(d.request_latency, hz);
        }
        // SAFETY: `w` is the writer SPDK passed for this call.
        unsafe { dump_poll_group_stat(w, &stats) };
    })
}

/// The body of the `poll_group_dump_stat` op: writes `stats` to SPDK's
/// writer `w` (nothing when SPDK is not resolved or `w` is NULL).
///
/// # Safety
/// `w` must be NULL or the live writer SPDK passed to `poll_group_dump_stat`,
/// used by nothing else during the call.
pub(crate) unsafe fn dump_poll_group_stat(
    w: *mut sys::spdk_json_write_ctx,
    stats: &PollGroupStats,
) {
    let Some(api) = api() else { return };
    if w.is_null() {
        tracing::error!("RDMA_RS: poll_group_dump_stat without a JSON writer");
        return;
    }
    write_stats(&mut SpdkJsonOut { api, w }, stats);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, Value};

    /// Builds the JSON the calls describe, and checks they nest properly.
    #[derive(Default)]
    struct Recorder {
        /// Open containers: (key it goes under, the value being built).
        stack: Vec<(Option<String>, Value)>,
        top: Map<String, Value>,
        calls: usize,
    }

    impl Recorder {
        fn key(name: &CStr) -> String {
            name.to_str().unwrap().to_string()
        }

        /// Puts `v` under `key` in the innermost open container.
        fn put(&mut self, key: Option<String>, v: Value) {
            self.calls += 1;
            match self.stack.last_mut() {
                None => {
                    let k = key.expect("a top-level value without a name");
                    assert!(self.top.insert(k.clone(), v).is_none(), "{k} twice");
                }
                Some((_, Value::Array(a))) => {
                    assert!(key.is_none(), "a named value in an array");
                    a.push(v);
                }
                Some((_, Value::Object(m))) => {
                    let k = key.expect("an unnamed value in an object");
                    assert!(m.insert(k.clone(), v).is_none(), "{k} twice");
                }
                Some(_) => unreachable!(),
            }
        }

        fn close(&mut self, array: bool) {
            let (key, v) = self.stack.pop().expect("end without begin");
            assert_eq!(v.is_array(), array, "mismatched end");
            self.put(key, v);
        }
    }

    impl JsonOut for Recorder {
        fn named_u64(&mut self, name: &CStr, value: u64) {
            self.put(Some(Self::key(name)), Value::from(value));
        }
        fn named_string(&mut self, name: &CStr, value: &CStr) {
            self.put(Some(Self::key(name)), Value::from(value.to_str().unwrap()));
        }
        fn named_array_begin(&mut self, name: &CStr) {
            self.stack
                .push((Some(Self::key(name)), Value::Array(Vec::new())));
        }
        fn array_end(&mut self) {
            self.close(true);
        }
        fn object_begin(&mut self) {
            self.stack.push((None, Value::Object(Map::new())));
        }
        fn object_end(&mut self) {
            self.close(false);
        }
    }

    fn poller(name: &str, base: u64) -> PollerStats {
        PollerStats {
            name: name.into(),
            polls: base + 1,
            idle_polls: base + 2,
            completions: base + 3,
            requests: base + 4,
            request_latency: base + 5,
            pending_free_request: base + 6,
            pending_rdma_read: base + 7,
            pending_rdma_write: base + 8,
            pending_rdma_send: base + 9,
            total_send_wrs: base + 10,
            send_doorbell_updates: base + 11,
            total_recv_wrs: base + 12,
            recv_doorbell_updates: base + 13,
        }
    }

    /// Upstream's keys in upstream's order (rdma.c v26.01
    /// `nvmf_rdma_poll_group_dump_stat`), written out here on purpose: the
    /// test fails if the shared list drifts from upstream.
    const UPSTREAM_DEVICE_KEYS: [&str; 14] = [
        "name",
        "polls",
        "idle_polls",
        "completions",
        "requests",
        "request_latency",
        "pending_free_request",
        "pending_rdma_read",
        "pending_rdma_write",
        "pending_rdma_send",
        "total_send_wrs",
        "send_doorbell_updates",
        "total_recv_wrs",
        "recv_doorbell_updates",
    ];

    #[test]
    fn writes_upstream_keys_in_order_without_trtype() {
        let stats = PollGroupStats {
            pending_data_buffer: 42,
            devices: vec![poller("softrdma0", 0), poller("softrdma1", 100)],
        };
        let mut r = Recorder::default();
        write_stats(&mut r, &stats);
        assert!(r.stack.is_empty(), "unclosed containers");
        let top: Vec<&String> = r.top.keys().collect();
        assert_eq!(top, ["pending_data_buffer", "devices"]);
        assert!(!r.top.contains_key("trtype"));
        assert_eq!(r.top["pending_data_buffer"], 42);
        let devices = r.top["devices"].as_array().unwrap();
        assert_eq!(devices.len(), 2);
        for (d, base) in devices.iter().zip([0u64, 100]) {
            let keys: Vec<&str> = d.as_object().unwrap().keys().map(|k| k.as_str()).collect();
            assert_eq!(keys, UPSTREAM_DEVICE_KEYS);
            for (i, k) in UPSTREAM_DEVICE_KEYS.iter().enumerate().skip(1) {
                assert_eq!(d[k], base + i as u64, "{k}");
            }
        }
        assert_eq!(devices[1]["name"], "softrdma1");
        // The same content as the transport core's own JSON, minus trtype.
        let mut core = stats.to_json();
        core.shift_remove("trtype");
        assert_eq!(Value::Object(core), Value::Object(r.top.clone()));
        // pending_data_buffer, 2 × (14 named values + the object), the array.
        assert_eq!(r.calls, 1 + 2 * (14 + 1) + 1);
    }

    #[test]
    fn no_devices_is_an_empty_array() {
        let mut r = Recorder::default();
        write_stats(&mut r, &PollGroupStats::default());
        assert_eq!(
            Value::Object(r.top),
            serde_json::json!({"pending_data_buffer": 0, "devices": []})
        );
    }

    #[test]
    fn latency_is_converted_to_ticks() {
        assert_eq!(ns_to_ticks(1_000_000_000, 2_600_000_000), 2_600_000_000);
        assert_eq!(ns_to_ticks(1_500, 2_600_000_000), 3_900);
        assert_eq!(ns_to_ticks(0, 2_600_000_000), 0);
        // No overflow on the way: a century of nanoseconds at 5 GHz.
        assert_eq!(ns_to_ticks(u64::MAX, u64::MAX), u64::MAX);
        assert_eq!(
            ns_to_ticks(100 * 365 * 86_400 * NS_PER_SEC as u64, 5_000_000_000),
            100 * 365 * 86_400 * 5_000_000_000
        );
    }

    #[test]
    fn a_nul_in_a_device_name_is_not_fatal() {
        assert_eq!(c_text("mlx5\u{0}0").as_bytes(), b"mlx5 0");
    }
}
