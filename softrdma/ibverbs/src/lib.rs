//! softrdma's drop-in `libibverbs.so.1`: the complete rdma-core 44 libibverbs ABI (180 symbols at
//! their exact versions, see `exports`), one emulated InfiniBand device, and a cross-process RC
//! fabric: per-process objects described in a shared fabric segment, payload moved by the
//! requester with `process_vm_readv/writev`, private CQ rings fed by peers, a per-process event
//! thread for doorbells, retries, liveness and fault-injection control. See docs/softrdma.md.

// Verbs structs are plain C structs filled field by field, as the C library does.
#![allow(
    clippy::field_reassign_with_default,
    clippy::collapsible_match,
    clippy::type_complexity
)]
// Unit tests build without the export table, so the exported entry points look unused there.
#![cfg_attr(test, allow(dead_code, unused_imports, unused_macros))]

mod arena;
mod copy;
mod cq;
mod device;
mod engine;
mod event_loop;
mod events;
// The .symver table only makes sense in the shared library, not in the unit-test executable.
#[cfg(not(test))]
mod exports;
mod faults;
mod log;
mod mr;
mod mrmap;
mod pd;
mod private;
mod qp;
mod runtime;
mod srq;
mod strings;
mod stubs;
mod util;
