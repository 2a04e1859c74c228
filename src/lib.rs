//! nvmf-rdma-rs: a memory-safe NVMe-over-Fabrics RDMA target transport.
//!
//! Layers (see `docs/ARCHITECTURE.md`):
//! - [`engine`]: the sans-IO request state machine, queues, accounting,
//!   teardown rules and wire codecs. Its own crate (`crates/engine`,
//!   `nvmf-rdma-engine`): no `unsafe`, no I/O, no libibverbs; re-exported
//!   here so `crate::engine::…` paths keep working.
//! - `verbs`: safe RAII wrappers over libibverbs / librdmacm.
//! - `transport`: real resources driven by the engine, generic over `Host`.
//! - `minitarget`: a small NVMe-oF controller used standalone and in tests.
#![deny(unsafe_op_in_unsafe_fn)]

/// The engine crate (`crates/engine`), re-exported under its old path.
pub use nvmf_rdma_engine as engine;

pub mod ffi;
pub mod initiator;
pub mod minitarget;
pub mod size;
#[cfg(spdk)]
pub mod spdk;
pub mod standalone;
pub mod transport;
pub mod verbs;
