//! The sans-IO engine: request lifecycle, per-qpair queues, resource
//! accounting, qpair teardown rules and the NVMe-oF RDMA codecs.
//!
//! Events go in, actions come out; nothing here performs I/O or reads a clock.
#![forbid(unsafe_code)]
pub mod codec;
