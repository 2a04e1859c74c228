//! The NVMe/RDMA target transport over real verbs, generic over [`Host`].
//!
//! - [`options`]: transport options (upstream names, defaults, validation,
//!   `dump_opts`, JSON decoding, cdata values).
//! - [`stats`]: per-poller statistics (`nvmf_get_stats` RDMA fields).
//! - [`host`]: the contract with the NVMe-oF layer above (SPDK's generic
//!   layer or the standalone controller).

pub mod host;
pub mod options;
pub mod stats;

pub use host::{
    BufferGrant, CommandData, DataBuffer, Direction, Host, HostError, HostEvent, HostGroup,
    QpairHandle, QpairInfo, RequestHandle,
};
pub use options::{DecodeError, OptionsError, OptionsNotice, TransportCdata, TransportOptions};
pub use stats::{PollGroupStats, PollerStats, ResourceCounters};
