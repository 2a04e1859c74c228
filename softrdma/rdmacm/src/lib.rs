//! softrdma's drop-in `librdmacm.so.1` (rdma-core 44 ABI, RDMACM_1.0–1.3).
//!
//! The connection manager runs over abstract UNIX `SOCK_SEQPACKET` sockets keyed by
//! IP:port (`@softrdma/<uid>/cm/<ps>/<ip>/<port>`), one per listener and one per
//! connection, with one event thread per process. Verbs work goes through the public
//! `ibv_*` API of libibverbs (softrdma's at run time, via `LD_LIBRARY_PATH`); the
//! process-wide device context, logging and the "drop CM connection" fault come from the
//! private vtable `softrdma_private_v1` (`softrdma_abi::private`), looked up with `dlsym`.
//!
//! Private-vtable entries used: `shared_context`, `set_cm_drop_handler`, `cm_should_drop`,
//! `log`, `set_device_handler` (device removal: RDMA_CM_EVENT_DEVICE_REMOVAL).
//!
//! Layout: [`proto`] (wire messages) and [`conn`] (connection state machine) are sans-IO;
//! [`addr`] maps addresses to socket names; `core` holds channels, ids and the event
//! thread; `api` implements the entry points; `exports` attaches the versioned symbols.

pub mod addr;
mod api;
pub mod conn;
mod core;
mod exports;
mod ffi;
pub mod proto;
