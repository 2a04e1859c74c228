//! softrdma ABI layer: stateless types shared by the softrdma libraries.
//!
//! * [`verbs`]: `#[repr(C)]` mirrors of rdma-core 44's `<infiniband/verbs.h>`, generated once with
//!   bindgen and committed; [`layout`] pins the offsets consumers depend on at compile time.
//! * [`fabric`]: the layout of the machine-wide shared fabric segment (node registry, QP/CQ/SRQ/MR
//!   records, counters) that every softrdma process maps.
//! * [`event_fd`]: the fd handed to applications for an event queue (readable while an event is
//!   queued, never writable).
//! * [`private`]: the private vtable `softrdma_private_v1@@SOFTRDMA_PRIVATE_1` exported by
//!   softrdma's libibverbs for softrdma's librdmacm.

#[allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    dead_code,
    missing_docs,
    clippy::all,
    clippy::undocumented_unsafe_blocks,
    unsafe_op_in_unsafe_fn
)]
pub mod verbs;

pub mod cma;
pub mod event_fd;
pub mod fabric;
pub mod layout;
pub mod private;
