//! `spdk_nvmf_transport_opts` ↔ [`TransportOptions`].
//!
//! The generic options come from SPDK's struct (SPDK decoded and checked them
//! already); the RDMA-specific keys come from `transport_specific`, decoded
//! like upstream's `rdma_transport_opts_decoder` (relaxed: other keys are
//! ignored) by [`TransportOptions::apply_json`]. Validation is
//! [`TransportOptions::validate`] with SPDK's core count, as upstream
//! (docs/spdk-plugin.md, "Options").

use serde_json::{Map, Value};

use super::json::{object_from_vals, object_tokens, JsonValError};
use super::sys;
use crate::transport::{DecodeError, OptionsError, OptionsNotice, TransportOptions};

/// The keys only the RDMA transport decodes from `transport_specific` and
/// writes in `dump_opts` (upstream `rdma_transport_opts_decoder`).
pub(crate) const RDMA_SPECIFIC_KEYS: [&str; 5] = [
    "max_srq_depth",
    "no_srq",
    "num_cqe",
    "acceptor_backlog",
    "no_wr_batching",
];

/// Why `create` refused the options; every variant names the option.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CreateOptionsError {
    /// `transport_specific` could not be read.
    #[error("cannot read the transport parameters: {0}")]
    Params(#[from] JsonValError),
    /// An RDMA-specific key has a value of the wrong type or range.
    #[error("{0}")]
    Decode(#[from] DecodeError),
    /// A value upstream's create refuses.
    #[error("{0}")]
    Invalid(#[from] OptionsError),
}

/// `buf_cache_size`: a plain field up to v26.01, a member of an anonymous
/// union with `iobuf_small_cache_size` from v26.05 (build.rs sets
/// `cfg(spdk_buf_cache_union)` when the bindings have the union).
#[cfg(not(spdk_buf_cache_union))]
fn buf_cache_size(o: &sys::spdk_nvmf_transport_opts) -> u32 {
    o.buf_cache_size
}

#[cfg(not(spdk_buf_cache_union))]
fn set_buf_cache_size(o: &mut sys::spdk_nvmf_transport_opts, v: u32) {
    o.buf_cache_size = v;
}

#[cfg(spdk_buf_cache_union)]
fn buf_cache_size(o: &sys::spdk_nvmf_transport_opts) -> u32 {
    // SAFETY: both members of the union are u32: every bit pattern is valid.
    unsafe { o.__bindgen_anon_1.buf_cache_size }
}

#[cfg(spdk_buf_cache_union)]
fn set_buf_cache_size(o: &mut sys::spdk_nvmf_transport_opts, v: u32) {
    o.__bindgen_anon_1.buf_cache_size = v;
}

/// Upstream's `nvmf_rdma_opts_init`: the RDMA defaults of the generic fields.
pub(crate) fn init_defaults(dst: &mut sys::spdk_nvmf_transport_opts) {
    let d = TransportOptions::default();
    dst.max_queue_depth = d.max_queue_depth;
    dst.max_qpairs_per_ctrlr = d.max_qpairs_per_ctrlr;
    dst.in_capsule_data_size = d.in_capsule_data_size;
    dst.max_io_size = d.max_io_size;
    dst.io_unit_size = d.io_unit_size;
    dst.max_aq_depth = d.max_aq_depth;
    dst.num_shared_buffers = d.num_shared_buffers;
    set_buf_cache_size(dst, d.buf_cache_size);
    dst.dif_insert_or_strip = d.dif_insert_or_strip;
    dst.abort_timeout_sec = d.abort_timeout_sec;
    dst.transport_specific = std::ptr::null();
    dst.data_wr_pool_size = d.data_wr_pool_size;
}

/// The generic fields of SPDK's struct over the defaults.
fn from_generic(src: &sys::spdk_nvmf_transport_opts) -> TransportOptions {
    TransportOptions {
        max_queue_depth: src.max_queue_depth,
        max_qpairs_per_ctrlr: src.max_qpairs_per_ctrlr,
        in_capsule_data_size: src.in_capsule_data_size,
        max_io_size: src.max_io_size,
        io_unit_size: src.io_unit_size,
        max_aq_depth: src.max_aq_depth,
        num_shared_buffers: src.num_shared_buffers,
        buf_cache_size: buf_cache_size(src),
        dif_insert_or_strip: src.dif_insert_or_strip,
        abort_timeout_sec: src.abort_timeout_sec,
        association_timeout: src.association_timeout,
        acceptor_poll_rate: src.acceptor_poll_rate,
        zcopy: src.zcopy,
        ack_timeout: src.ack_timeout,
        data_wr_pool_size: src.data_wr_pool_size,
        disable_command_passthru: src.disable_command_passthru,
        kas: src.kas,
        min_kato: src.min_kato,
        ..TransportOptions::default()
    }
}

/// Only the RDMA-specific keys of the parameters object.
fn rdma_specific(params: Map<String, Value>) -> Map<String, Value> {
    params
        .into_iter()
        .filter(|(k, _)| RDMA_SPECIFIC_KEYS.contains(&k.as_str()))
        .collect()
}

/// Decodes and validates what `create` got; `core_count` is SPDK's
/// `spdk_env_get_core_count()`.
///
/// # Safety
/// `src.transport_specific` must be NULL or SPDK's parsed parameters object,
/// alive for the call.
pub(crate) unsafe fn decode_and_validate(
    src: &sys::spdk_nvmf_transport_opts,
    core_count: u32,
) -> Result<(TransportOptions, Vec<OptionsNotice>), CreateOptionsError> {
    let mut o = from_generic(src);
    // SPDK v26.05 deprecated io_unit_size and num_shared_buffers: they reach
    // the transport as 0, buffers being sized and counted by SPDK's iobuf
    // pools. Validate those as upstream's defaults; `write_back` leaves
    // SPDK's 0 alone.
    let d = TransportOptions::default();
    if src.io_unit_size == 0 {
        o.io_unit_size = d.io_unit_size;
    }
    if src.num_shared_buffers == 0 {
        o.num_shared_buffers = d.num_shared_buffers;
    }
    let specific = src.transport_specific;
    if !specific.is_null() {
        // SAFETY: non-NULL `transport_specific` is SPDK's parsed params
        // object, alive for the call (caller's contract).
        let toks = unsafe { object_tokens(specific) }?;
        let keys = rdma_specific(object_from_vals(toks)?);
        tracing::debug!(
            "RDMA_RS: create: RDMA keys in the parameters: {}",
            serde_json::Value::Object(keys.clone())
        );
        o.apply_json(&keys)?;
    }
    let notices = o.validate(core_count)?;
    Ok((o, notices))
}

/// Writes the values `create` adjusted back into SPDK's struct (SPDK copies
/// it into the transport after `create`), with zero-copy off.
pub(crate) fn write_back(o: &TransportOptions, dst: &mut sys::spdk_nvmf_transport_opts) {
    dst.max_aq_depth = o.max_aq_depth;
    dst.min_kato = o.min_kato;
    if dst.io_unit_size != 0 {
        dst.io_unit_size = o.io_unit_size;
    }
    dst.in_capsule_data_size = o.in_capsule_data_size;
    dst.zcopy = false;
}

/// The RDMA-specific `dump_opts` entries, in upstream's order (`num_cqe`
/// only with `no_srq`).
pub(crate) fn rdma_dump_entries(o: &TransportOptions) -> Vec<(String, Value)> {
    o.dump_opts()
        .into_iter()
        .filter(|(k, _)| RDMA_SPECIFIC_KEYS.contains(&k.as_str()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opts_init_then_decode_gives_upstream_defaults() {
        // What spdk_nvmf_transport_opts_init sets before calling opts_init.
        let mut raw = sys::spdk_nvmf_transport_opts {
            kas: 100,
            min_kato: 10000,
            acceptor_poll_rate: 10000,
            association_timeout: 120000,
            ..Default::default()
        };
        init_defaults(&mut raw);
        // SAFETY: transport_specific is NULL.
        let (o, notices) = unsafe { decode_and_validate(&raw, 2) }.unwrap();
        assert_eq!(o, TransportOptions::default());
        assert!(notices.is_empty());
        let keys: Vec<String> = rdma_dump_entries(&o).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "max_srq_depth",
                "no_srq",
                "acceptor_backlog",
                "no_wr_batching"
            ]
        );
    }

    #[test]
    fn only_rdma_keys_are_taken_from_params() {
        let m = serde_json::json!({"max_queue_depth": 7, "no_srq": true, "num_cqe": 99})
            .as_object()
            .cloned()
            .unwrap();
        let r = rdma_specific(m);
        assert_eq!(r.len(), 2);
        assert!(!r.contains_key("max_queue_depth"));
    }

    #[test]
    fn write_back_turns_zcopy_off() {
        let mut raw = sys::spdk_nvmf_transport_opts {
            zcopy: true,
            ..Default::default()
        };
        let o = TransportOptions {
            in_capsule_data_size: 256,
            ..Default::default()
        };
        write_back(&o, &mut raw);
        assert!(!{ raw.zcopy });
        assert_eq!({ raw.in_capsule_data_size }, 256);
    }
}
