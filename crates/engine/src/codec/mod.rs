//! Wire codecs of the NVMe-oF RDMA transport, sans-IO and allocation-free:
//!
//! - [`nvme`]: the 64-byte command (SQE), SGL descriptors, the 16-byte
//!   completion (CQE) and NVMe status codes;
//! - [`sgl`]: classification and validation of a command's data SGL
//!   (in-capsule data, keyed data block, last-segment lists), each invalid
//!   input mapped to the NVMe status upstream SPDK returns;
//! - [`admin`]: property offsets, CC / CSTS bits, Identify CNS, feature and
//!   log page ids, Connect constants (shared by initiator and controller);
//! - [`private_data`]: RDMA CM private data (connect request, accept,
//!   reject) and the queue-depth negotiation of a connect request.
//!
//! Parsers take bytes from the network and never panic, whatever the bytes.

pub mod admin;
pub mod nvme;
pub mod private_data;
pub mod sgl;

pub use nvme::{
    Command, Completion, DataTransfer, Fuse, SglDescriptor, Status, COMMAND_CAPSULE_SIZE,
    COMPLETION_SIZE,
};
pub use private_data::{
    negotiate, CmAccept, CmReject, CmRequest, ConnectLimits, Negotiated, PrivateDataError,
    RejectStatus,
};
pub use sgl::{
    encode_in_capsule, encode_keyed, encode_last_segment, parse_data_layout, parse_data_shape,
    DataLayout, DataShape, KeyedSegment, KeyedSegments, SglError, SglLimits, MAX_SGL_DESCRIPTORS,
};
