//! The SPDK plugin glue (`cfg(spdk)`: built only when `SPDK_DIR` names an SPDK
//! tree, see build.rs): the `spdk_nvmf_transport_ops` table registered as
//! `RDMA_RS` (transport type RDMA) from an ELF constructor.
//!
//! Layers, each its own module (docs/spdk-plugin.md):
//! - [`sys`]: bindgen output for SPDK's public headers (generated, never
//!   committed).
//! - `api`: SPDK resolved at run time; no undefined SPDK symbol in the library.
//! - `guard`: the `catch_unwind` wrapper of every `extern "C"` entry, and
//!   its panic policy.
//! - `log`: `tracing` events forwarded to `spdk_log` (component `rdma_rs`).
//! - `json`: SPDK's parsed JSON values read into `serde_json`, and JSON
//!   written through SPDK's writer.
//! - `opts`: `spdk_nvmf_transport_opts` ↔ [`crate::transport::TransportOptions`].
//! - `objects`: the transport and poll-group objects SPDK holds.
//! - `ops`: the ops table, its entry points and the load-time constructor.
//!
//! What works today: loading anywhere, registration, `opts_init`, `create`
//! (decode, validate, write back), `dump_opts`, `destroy`, `cdata_init`, and
//! empty poll groups so the transport can be added to the target. `listen`
//! refuses with an error naming the address (the data path is not built yet),
//! so no qpair can exist and the qpair/request ops stay NULL.

pub mod sys;

mod api;
mod group;
mod guard;
mod interrupt;
mod json;
mod log;
mod memmap;
mod ops;
mod ops_data;
mod opts;
mod qpair;
mod request;
mod transport;
mod trid;

// The trace group, the `poll_group_dump_stat` writer, and what link mode
// (`spdk-patch/`, feature `link-mode`) adds.
#[cfg(feature = "link-mode")]
mod link_mode;
mod stats;
mod trace;
mod trace_file;
