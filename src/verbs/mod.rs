//! Safe RAII wrappers over libibverbs / librdmacm (`rdma-sys`).
//!
//! Every ibverbs / rdma_cm `unsafe` call of the crate lives in this module;
//! each block carries a `// SAFETY:` comment with its ownership or lifetime
//! argument. Code outside (the transport, the initiator) is safe Rust.
//!
//! # Objects and ownership
//!
//! | type | C object | kept alive by |
//! |---|---|---|
//! | [`Context`] | `ibv_context` (opened with [`DeviceList::open`], or owned by librdmacm: [`rdma_devices`], [`CmId::context`]) | PDs, CQs, channels |
//! | [`Pd`] | `ibv_pd` | MRs, SRQs, QPs |
//! | [`Mr`] / [`DmaBuf`] | `ibv_mr` (+ owned memory for `DmaBuf`) | — |
//! | [`CompChannel`], [`Cq`] | `ibv_comp_channel`, `ibv_cq` | QPs using the CQ |
//! | [`Srq`] | `ibv_srq` | QPs attached to it |
//! | [`EventChannel`], [`CmId`] | `rdma_event_channel`, `rdma_cm_id` | ids on the channel |
//! | [`Qp`] | `ibv_qp`, owned by its [`CmId`] | — |
//!
//! Shared handles are `Arc`s, so destruction order is always children
//! first; no lifetime parameters leak into the transport's types.
//!
//! # The posting contract (the one real hazard)
//!
//! **Memory named by a posted WR must stay valid until its completion —
//! success, error or flush — is reaped, or its QP/SRQ is destroyed.** It is
//! stated once, on [`Sge::from_raw`] (the `unsafe` way to name arbitrary
//! registered memory, e.g. SPDK buffers); posting itself
//! ([`Qp::post_send`], [`Qp::post_recv`], [`Srq::post_recv`]) is safe because
//! every [`Sge`] either comes from that `unsafe` constructor or from
//! [`Mr::sge`] / [`DmaBuf::sge`]. For the latter the region's memory
//! outlives its registration (`DmaBuf` deregisters before freeing; `Mr`'s
//! constructor is `unsafe` with that requirement), and once an MR is
//! deregistered the device can no longer reach the memory through its keys:
//! a WR still naming it completes with an error instead of touching freed
//! memory. `DmaBuf` memory is never handed out as a Rust reference (only
//! copied in and out), because the device and the peer may write it at any
//! time.
//!
//! # Batching without allocation
//!
//! [`SendWrList`] / [`RecvWrList`] are created once with a capacity and
//! reused: `push` fills preallocated storage, posting links the chain and
//! rings one doorbell, and on success the list is emptied. A failed post
//! reports the index of the first WR that was not posted
//! ([`VerbsError::Post`]).
//!
//! # Completions are dispatched by typed WR id
//!
//! Every WR carries a [`WrId`] (kind + owner + index packed in the u64
//! `wr_id`). [`Cq::poll`] fills a caller-provided `[WorkCompletion]` (no
//! allocation); [`WorkCompletion::opcode`] returns `None` for error
//! completions, whose opcode is undefined — dispatch on
//! [`WorkCompletion::wr_id`].
//!
//! # Events and fds
//!
//! [`EventChannel`] (CM events), [`CompChannel`] (CQ events) and the device
//! async fd ([`Context::async_fd`]) are pollable fds; the `get_event`
//! functions are non-blocking and ack each event before returning a typed
//! copy, so ids and CQs can always be destroyed afterwards.
//! [`wait_readable`] waits on any of them with a timeout.
//!
//! # Example (active side, abbreviated)
//!
//! ```no_run
//! use nvmf_rdma_rs::verbs::*;
//! # fn main() -> Result<()> {
//! let ch = EventChannel::new()?;
//! let mut id = CmId::new(&ch)?;
//! id.resolve_addr(None, "127.0.0.1:4420".parse().unwrap(), 2000)?;
//! // wait_readable(ch.fd(), ..) then ch.get_event() == AddrResolved; resolve_route likewise
//! let ctx = id.context().ok_or(VerbsError::Missing("cm id device"))?;
//! let pd = Pd::new(&ctx)?;
//! let cq = Cq::new(&ctx, 256, None)?;
//! id.create_qp(&pd, &QpInit { send_cq: &cq, recv_cq: &cq, srq: None, max_send_wr: 64,
//!     max_recv_wr: 64, max_send_sge: 2, max_recv_sge: 1, max_inline_data: 0 })?;
//! id.connect(&ConnParam { private_data: &[0; 32], responder_resources: 16, initiator_depth: 0,
//!     retry_count: 7, rnr_retry_count: 7 })?;
//! # Ok(()) }
//! ```

mod cm;
mod cq;
mod device;
mod error;
mod fd;
mod mr;
mod qp;
mod srq;
mod wr;
mod wr_id;

pub use cm::{CmEvent, CmEventKind, CmId, ConnParam, EventChannel, MAX_PRIVATE_DATA};
pub use cq::{CompChannel, Cq, WcOpcode, WcStatus, WorkCompletion};
pub use device::{
    rdma_devices, AsyncElement, AsyncEvent, AsyncEventKind, Context, DeviceAttr, DeviceList,
    PortAttr, DEVICE_MEM_MGT_EXTENSIONS,
};
pub use error::{Errno, Result, VerbsError};
pub use fd::{wait_readable, wait_readable_any, EventFd};
pub use mr::{Access, DmaAllocator, DmaBuf, HeapDma, Mr, Pd};
pub use qp::{Qp, QpCaps, QpInit, QpState};
pub use srq::Srq;
pub use wr::{RecvWrList, SendFlags, SendOp, SendWrList, Sge};
pub use wr_id::{UnknownWrId, WrId, WrKind, MAX_WR_OWNER};
