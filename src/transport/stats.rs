//! Per-poller statistics with the meaning of upstream's `nvmf_get_stats`
//! RDMA fields (`nvmf_rdma_poll_group_dump_stat`, doc §7.5).

use serde_json::{Map, Value};

/// Counters of one poller (one device in one poll group).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollerStats {
    /// Device name (`ibv_get_device_name`).
    pub name: String,
    /// Calls of the poller's poll function.
    pub polls: u64,
    /// Polls that reaped no completion.
    pub idle_polls: u64,
    /// Work completions reaped.
    pub completions: u64,
    /// Command capsules received.
    pub requests: u64,
    /// Sum of request latencies (receive to response completion), in the
    /// clock's ticks (nanoseconds here; upstream uses TSC ticks).
    pub request_latency: u64,
    /// Times a received capsule waited for a free request object.
    pub pending_free_request: u64,
    /// Times a request waited for RDMA READ depth.
    pub pending_rdma_read: u64,
    /// Times a request waited for send depth to post RDMA WRITEs.
    pub pending_rdma_write: u64,
    /// Times a request waited for send depth to post its response.
    pub pending_rdma_send: u64,
    /// Send-queue WRs submitted (SENDs, READs, WRITEs).
    pub total_send_wrs: u64,
    /// `ibv_post_send` calls.
    pub send_doorbell_updates: u64,
    /// RECVs submitted (to the QPs, or to the SRQ).
    pub total_recv_wrs: u64,
    /// `ibv_post_recv` / `ibv_post_srq_recv` calls.
    pub recv_doorbell_updates: u64,
}

impl PollerStats {
    /// A zeroed set for the device `name`.
    pub fn new(name: impl Into<String>) -> PollerStats {
        PollerStats {
            name: name.into(),
            ..Default::default()
        }
    }

    /// The counters after `name`, as (upstream key, value) in upstream's
    /// order (`nvmf_rdma_poll_group_dump_stat`): the one list both
    /// [`PollerStats::to_json`] and the SPDK plugin's stats writer use.
    pub fn counters(&self) -> [(&'static str, u64); 13] {
        [
            ("polls", self.polls),
            ("idle_polls", self.idle_polls),
            ("completions", self.completions),
            ("requests", self.requests),
            ("request_latency", self.request_latency),
            ("pending_free_request", self.pending_free_request),
            ("pending_rdma_read", self.pending_rdma_read),
            ("pending_rdma_write", self.pending_rdma_write),
            ("pending_rdma_send", self.pending_rdma_send),
            ("total_send_wrs", self.total_send_wrs),
            ("send_doorbell_updates", self.send_doorbell_updates),
            ("total_recv_wrs", self.total_recv_wrs),
            ("recv_doorbell_updates", self.recv_doorbell_updates),
        ]
    }

    /// The JSON object for this poller, upstream key order.
    pub fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("name".into(), Value::from(self.name.clone()));
        for (k, v) in self.counters() {
            m.insert(k.into(), Value::from(v));
        }
        m
    }
}

/// Statistics of one poll group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollGroupStats {
    /// Times a request waited for data buffers.
    pub pending_data_buffer: u64,
    /// One entry per poller (device).
    pub devices: Vec<PollerStats>,
}

impl PollGroupStats {
    /// The transport's entry in `nvmf_get_stats` → `poll_groups[].transports[]`:
    /// `trtype`, `pending_data_buffer`, `devices`.
    pub fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("trtype".into(), Value::from("RDMA"));
        m.insert(
            "pending_data_buffer".into(),
            Value::from(self.pending_data_buffer),
        );
        m.insert(
            "devices".into(),
            Value::Array(
                self.devices
                    .iter()
                    .map(|d| Value::Object(d.to_json()))
                    .collect(),
            ),
        );
        m
    }
}

/// Live-object counters of the whole transport, used by tests and the demo
/// to prove that teardown returns every resource.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourceCounters {
    /// Qpairs that exist (accepted and not yet finished).
    pub live_qpairs: u64,
    /// Qpairs created since start.
    pub qpairs_created: u64,
    /// Qpairs fully torn down since start.
    pub qpairs_destroyed: u64,
    /// Qpairs whose drain deadline expired (forced destroy).
    pub qpairs_forced: u64,
    /// Connect requests rejected.
    pub connects_rejected: u64,
    /// Commands handed to the host and not yet completed.
    pub commands_in_host: u64,
    /// Data buffers granted and not yet released.
    pub buffers_held: u64,
    /// Work completions with an error status other than flush.
    pub wc_errors: u64,
    /// Flushed work completions.
    pub wc_flushed: u64,
    /// Transport bugs caught at run time: a release of something not held
    /// (a buffer or a host command counted out twice). Always 0 unless the
    /// transport is broken; each one is logged with its qpair and request.
    /// Tests assert it stays 0.
    pub internal_errors: u64,
}

impl ResourceCounters {
    /// As JSON.
    pub fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        for (k, v) in [
            ("live_qpairs", self.live_qpairs),
            ("qpairs_created", self.qpairs_created),
            ("qpairs_destroyed", self.qpairs_destroyed),
            ("qpairs_forced", self.qpairs_forced),
            ("connects_rejected", self.connects_rejected),
            ("commands_in_host", self.commands_in_host),
            ("buffers_held", self.buffers_held),
            ("wc_errors", self.wc_errors),
            ("wc_flushed", self.wc_flushed),
            ("internal_errors", self.internal_errors),
        ] {
            m.insert(k.into(), Value::from(v));
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_group_json_shape() {
        let mut p = PollerStats::new("softrdma0");
        p.polls = 10;
        p.idle_polls = 7;
        p.total_send_wrs = 3;
        let g = PollGroupStats {
            pending_data_buffer: 2,
            devices: vec![p],
        };
        let j = Value::Object(g.to_json());
        assert_eq!(j["trtype"], "RDMA");
        assert_eq!(j["pending_data_buffer"], 2);
        assert_eq!(j["devices"][0]["name"], "softrdma0");
        assert_eq!(j["devices"][0]["idle_polls"], 7);
        let keys: Vec<_> = j["devices"][0]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(keys.len(), 14);
        assert_eq!(keys[0], "name");
        assert_eq!(keys[13], "recv_doorbell_updates");
    }
}
