//! The NVMe/RDMA target transport over real verbs, generic over [`Host`].
//!
//! - [`options`]: transport options (upstream names, defaults, validation,
//!   `dump_opts`, JSON decoding, cdata values).
//! - [`stats`]: per-poller statistics (`nvmf_get_stats` RDMA fields).
//! - [`host`]: the contract with the NVMe-oF layer above (SPDK's generic
//!   layer or the standalone controller).
//! - [`Transport`]: devices, listeners, the acceptor thread (CM events,
//!   CONNECT_REQUEST validation, accept/reject, IB async events) and one
//!   thread per poll group; each poll group has one poller (CQ) per device
//!   and drives its qpairs' engines (`crate::engine`) from work completions,
//!   host answers and CM/IB events.
//!
//! See `docs/transport.md`.
#![forbid(unsafe_code)]

mod device;
pub mod host;
pub mod options;
mod poll_group;
mod shared;
pub mod stats;
mod target;
mod wrid;

pub use host::{
    BufferGrant, CommandData, DataBuffer, Direction, Host, HostError, HostEvent, HostGroup,
    QpairHandle, QpairInfo, RequestHandle,
};
pub use options::{DecodeError, OptionsError, OptionsNotice, TransportCdata, TransportOptions};
pub use stats::{PollGroupStats, PollerStats, ResourceCounters};
pub use target::{RunConfig, Transport, TransportError};
