//! nvmf-rdma-rs: a memory-safe NVMe-over-Fabrics RDMA target transport.
//!
//! Layers (see `ARCHITECTURE.md`):
//! - [`engine`]: the sans-IO request state machine, queues, accounting,
//!   teardown rules and wire codecs. No `unsafe`, no I/O.
//! - `verbs`: safe RAII wrappers over libibverbs / librdmacm.
//! - `transport`: real resources driven by the engine, generic over `Host`.
//! - `minitarget`: a small NVMe-oF controller used standalone and in tests.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod engine;
pub mod initiator;
pub mod minitarget;
pub mod standalone;
pub mod transport;
pub mod verbs;
