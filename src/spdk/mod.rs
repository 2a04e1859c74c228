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
//! - `transport`, `group`, `qpair`: the objects SPDK holds (SPDK's struct
//!   first, magic-checked): the transport core with its acceptor poller and
//!   group table; a poll group with SPDK's generic layer as its host; qpairs
//!   with one request record per engine slot.
//! - `request`: filling a record for `spdk_nvmf_request_exec`, reading its
//!   completion, answering aborts.
//! - `clock`: the core's nanosecond clock from SPDK's ticks.
//! - `dma`: receive and completion buffers from `spdk_zmalloc`.
//! - `memmap`: one `spdk_mem_map` per device (an lkey for every SPDK buffer).
//! - `interrupt`: SPDK interrupts for `nvmf_tgt --interrupt-mode`.
//! - `trid`: transport ids and the discovery log entry.
//! - `stats`, `trace`, `trace_file`: `poll_group_dump_stat` and the trace group.
//! - `ops`, `ops_data`: the ops table, its entry points and the load-time
//!   constructor; `link_mode`: what the `link-mode` feature adds.

pub mod sys;

mod api;
mod clock;
mod dma;
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
