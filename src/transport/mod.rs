//! The NVMe/RDMA target transport over real verbs, generic over [`Host`].
//!
//! - [`options`]: transport options (upstream names, defaults, validation,
//!   `dump_opts`, JSON decoding, cdata values).
//! - [`stats`]: per-poller statistics (`nvmf_get_stats` RDMA fields).
//! - [`host`]: the contract with the NVMe-oF layer above (SPDK's generic
//!   layer or the standalone controller).
//! - [`Transport`]: the core with no threads — devices, validated options,
//!   `listen`/`stop_listen` at any time, the acceptor (`accept_poll` and its
//!   fds: CM events, CONNECT_REQUEST validation, IB async events), the
//!   registry of poll groups and the placement of new qpairs.
//! - [`PollGroup`]: one poller (CQ) per device, its qpairs' engines
//!   (`crate::engine`) driven from work completions, host answers and CM/IB
//!   events addressed to it as [`QpairMsg`]s.
//!
//! Nothing here spawns, sleeps, blocks or joins: a driver owns the threads
//! (the standalone target's `crate::standalone::driver`, or SPDK).
//!
//! See `docs/transport.md`.
#![forbid(unsafe_code)]

mod device;
pub mod host;
pub mod options;
mod pending;
mod placement;
mod poll_group;
mod qpn_map;
mod shared;
pub mod stats;
mod target;
mod wrid;

pub use host::{
    AbortResult, BufferGrant, CallQueueFull, CommandData, Direction, FiniDone, GroupCalls, Host,
    HostError, HostGroup, QpairHandle, QpairInfo, RequestBuffers, RequestHandle, TooManyBuffers,
    MAX_BUFFERS_PER_REQUEST,
};
pub use options::{DecodeError, OptionsError, OptionsNotice, TransportCdata, TransportOptions};
pub use pending::{
    AcceptorEvent, AddQpairError, AddQpairFailure, DeviceEvent, DeviceMsg, PendingQpair, PortEvent,
    PortMsg, QpairEvent, QpairMsg,
};
pub use poll_group::{PollGroup, DEFAULT_DRAIN_TIMEOUT};
pub use stats::{PollGroupStats, PollerStats, ResourceCounters};
pub use target::{Transport, TransportError};
