//! Typed work-request ids.
//!
//! Every WR carries a 64-bit `wr_id` that comes back unchanged in its work
//! completion — including error and flush completions, for which the
//! completion's opcode is undefined. Completions are therefore dispatched by
//! the [`WrId`] alone, never by the opcode.
//!
//! Layout of the raw `u64` (stable, so ids survive a round trip through the
//! provider): bits 63..56 kind tag, bits 55..32 owner (24 bits, e.g. a qpair
//! slab index), bits 31..0 index (receive slot or request index).

/// What a work request was posted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WrKind {
    /// A receive of a command capsule or response into receive slot `index`.
    Recv,
    /// The SEND of a response capsule (target) or command capsule (host) of request `index`.
    Send,
    /// An RDMA READ or WRITE moving data of request `index`.
    Data,
}

impl WrKind {
    const fn tag(self) -> u8 {
        match self {
            WrKind::Recv => 0xA1,
            WrKind::Send => 0xA2,
            WrKind::Data => 0xA3,
        }
    }

    const fn from_tag(tag: u8) -> Option<WrKind> {
        match tag {
            0xA1 => Some(WrKind::Recv),
            0xA2 => Some(WrKind::Send),
            0xA3 => Some(WrKind::Data),
            _ => None,
        }
    }
}

/// Largest owner value that fits in a [`WrId`].
pub const MAX_WR_OWNER: u32 = (1 << 24) - 1;

/// A typed work-request id: kind, owner and index packed into the `wr_id` u64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WrId {
    kind: WrKind,
    owner: u32,
    index: u32,
}

/// A raw `wr_id` that does not decode to a [`WrId`] (not posted through this module).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown wr_id {0:#018x}")]
pub struct UnknownWrId(pub u64);

impl WrId {
    /// A WR id; `owner` is truncated to 24 bits (see [`MAX_WR_OWNER`]).
    pub const fn new(kind: WrKind, owner: u32, index: u32) -> WrId {
        WrId {
            kind,
            owner: owner & MAX_WR_OWNER,
            index,
        }
    }

    /// Receive into slot `slot` of `owner`.
    pub const fn recv(owner: u32, slot: u32) -> WrId {
        WrId::new(WrKind::Recv, owner, slot)
    }

    /// Capsule SEND of request `request` of `owner`.
    pub const fn send(owner: u32, request: u32) -> WrId {
        WrId::new(WrKind::Send, owner, request)
    }

    /// Data (RDMA READ/WRITE) WR of request `request` of `owner`.
    pub const fn data(owner: u32, request: u32) -> WrId {
        WrId::new(WrKind::Data, owner, request)
    }

    /// The kind of WR.
    pub const fn kind(self) -> WrKind {
        self.kind
    }

    /// The owner (24 bits).
    pub const fn owner(self) -> u32 {
        self.owner
    }

    /// The slot / request index.
    pub const fn index(self) -> u32 {
        self.index
    }

    /// The raw value given to the provider.
    pub const fn to_raw(self) -> u64 {
        ((self.kind.tag() as u64) << 56) | ((self.owner as u64) << 32) | self.index as u64
    }

    /// Decode a raw `wr_id` from a work completion.
    pub const fn from_raw(raw: u64) -> Result<WrId, UnknownWrId> {
        match WrKind::from_tag((raw >> 56) as u8) {
            Some(kind) => Ok(WrId {
                kind,
                owner: ((raw >> 32) as u32) & MAX_WR_OWNER,
                index: raw as u32,
            }),
            None => Err(UnknownWrId(raw)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_all_kinds_and_extremes() {
        for kind in [WrKind::Recv, WrKind::Send, WrKind::Data] {
            for owner in [0, 1, 0x1234, MAX_WR_OWNER] {
                for index in [0, 7, u32::MAX] {
                    let id = WrId::new(kind, owner, index);
                    let back = WrId::from_raw(id.to_raw()).unwrap();
                    assert_eq!(back, id);
                    assert_eq!(back.kind(), kind);
                    assert_eq!(back.owner(), owner);
                    assert_eq!(back.index(), index);
                }
            }
        }
    }

    #[test]
    fn owner_is_truncated_to_24_bits() {
        let id = WrId::recv(0xFF00_0001, 3);
        assert_eq!(id.owner(), 1);
    }

    #[test]
    fn foreign_ids_are_rejected() {
        assert_eq!(WrId::from_raw(0), Err(UnknownWrId(0)));
        assert_eq!(
            WrId::from_raw(0x7fff_ffff_dead_beef),
            Err(UnknownWrId(0x7fff_ffff_dead_beef))
        );
    }

    #[test]
    fn kinds_differ_in_raw_form() {
        let a = WrId::recv(5, 9).to_raw();
        let b = WrId::send(5, 9).to_raw();
        let c = WrId::data(5, 9).to_raw();
        assert!(a != b && b != c && a != c);
    }
}
