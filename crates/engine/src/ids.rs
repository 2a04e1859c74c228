//! Typed indices and time.

/// A request slot of one qpair (index into its request slab).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReqId(pub u16);

impl ReqId {
    /// The slab index.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// A receive slot. Without SRQ the engine numbers a qpair's receive slots
/// `0..max_queue_depth`; with SRQ the transport numbers the SRQ's slots and the
/// engine only passes them back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecvId(pub u32);

/// A point in time on the caller's monotonic clock (any unit, usually
/// nanoseconds). The engine never reads a clock; it only compares these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Timestamp(pub u64);
