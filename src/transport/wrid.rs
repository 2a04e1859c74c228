//! Mapping between the engine's typed WR ids and the verbs layer's typed WR
//! ids, through both layers' public APIs ([`engine::WrKind`] and
//! [`verbs::WrId`]'s kind / owner / index): neither raw layout is known here.
//!
//! | engine kind                       | verbs kind | owner (24 bits)             | index (32 bits) |
//! |-----------------------------------|------------|-----------------------------|-----------------|
//! | `Recv { recv }`                   | `Recv`     | 0                           | `recv`          |
//! | `Data { req, index, generation }` | `Data`     | `req` \| `index` << 16      | `generation`    |
//! | `Send { req, generation }`        | `Send`     | `req`                       | `generation`    |
//!
//! A data WR index is below [`engine::MAX_DATA_WRS`] (16), so the data owner
//! stays below 2^20. Decoding rejects every verbs id this table cannot
//! produce, so a stray `wr_id` never reaches the engine as a valid one.

use crate::engine;
use crate::verbs;

/// Bits of the verbs owner holding the request slot ([`engine::ReqId`] is a `u16`).
const REQ_BITS: u32 = u16::BITS;

/// The verbs WR id to post for an engine WR id.
///
/// Every id the engine issues decodes; an id that does not (impossible by the
/// engine's construction) maps to a RECV id with a non-zero owner, which
/// [`from_completion`] rejects, so its completion is reported as unknown.
#[inline]
pub fn to_verbs(id: engine::WrId) -> verbs::WrId {
    match id.kind() {
        Ok(engine::WrKind::Recv { recv }) => verbs::WrId::recv(0, recv.0),
        Ok(engine::WrKind::Data {
            req,
            index,
            generation,
        }) => verbs::WrId::data(
            u32::from(req.0) | (u32::from(index) << REQ_BITS),
            generation,
        ),
        Ok(engine::WrKind::Send { req, generation }) => {
            verbs::WrId::send(u32::from(req.0), generation)
        }
        Err(_) => verbs::WrId::recv(verbs::MAX_WR_OWNER, 0),
    }
}

/// The engine's raw WR id for a completion's raw `wr_id`, or `None` when the
/// value was not posted by this transport.
pub fn from_completion(raw: u64) -> Option<u64> {
    decode_completion(raw).map(|kind| engine::WrId::new(kind).to_raw())
}

/// The engine kind of a completion's raw `wr_id` (what
/// [`engine::Qpair::handle_wr_completion`] takes, so the engine does not
/// decode an id again), or `None` when the value was not posted by this
/// transport.
#[inline]
pub fn decode_completion(raw: u64) -> Option<engine::WrKind> {
    let id = verbs::WrId::from_raw(raw).ok()?;
    let owner = id.owner();
    let req = engine::ReqId((owner & u32::from(u16::MAX)) as u16);
    let kind = match id.kind() {
        verbs::WrKind::Recv if owner == 0 => engine::WrKind::Recv {
            recv: engine::RecvId(id.index()),
        },
        verbs::WrKind::Data if (owner >> REQ_BITS) < engine::MAX_DATA_WRS as u32 => {
            engine::WrKind::Data {
                req,
                index: (owner >> REQ_BITS) as u8,
                generation: id.index(),
            }
        }
        verbs::WrKind::Send if owner >> REQ_BITS == 0 => engine::WrKind::Send {
            req,
            generation: id.index(),
        },
        _ => return None,
    };
    Some(kind)
}

/// The verbs WR id of the RECV of receive slot `recv` (what [`to_verbs`]
/// gives for `engine::WrId::recv(recv)`, without the engine id round trip).
#[inline]
pub fn recv_to_verbs(recv: engine::RecvId) -> verbs::WrId {
    verbs::WrId::recv(0, recv.0)
}

/// Engine status of a work completion, from its raw `ibv_wc_status` (same
/// numbering in both layers; no round trip through the verbs enum, whose
/// `to_raw` searches a table).
#[inline]
pub fn wc_status(wc: &verbs::WorkCompletion) -> engine::WcStatus {
    engine::WcStatus::from_raw(wc.raw_status())
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::{RecvId, ReqId, WrKind};

    #[test]
    fn round_trip() {
        for k in [
            WrKind::Recv {
                recv: RecvId(0xdead_beef),
            },
            WrKind::Data {
                req: ReqId(65000),
                index: 15,
                generation: u32::MAX,
            },
            WrKind::Data {
                req: ReqId(0),
                index: 0,
                generation: 0,
            },
            WrKind::Send {
                req: ReqId(u16::MAX),
                generation: 7,
            },
        ] {
            let id = engine::WrId::new(k);
            let back = from_completion(to_verbs(id).to_raw()).unwrap();
            assert_eq!(back, id.to_raw(), "{k:?}");
        }
    }

    #[test]
    fn recv_shortcut_matches_the_table() {
        for r in [0, 1, 4095, u32::MAX] {
            let via_engine = to_verbs(engine::WrId::recv(RecvId(r)));
            assert_eq!(recv_to_verbs(RecvId(r)), via_engine);
        }
    }

    #[test]
    fn raw_status_matches_the_enum_route() {
        for v in 0..40u32 {
            let s = verbs::WcStatus::from_raw(v);
            let wc = verbs::WorkCompletion::synthetic(0, s, verbs::WcOpcode::Send, 0, 1);
            let via_enum = engine::WcStatus::from_raw(wc.status().to_raw());
            assert_eq!(wc_status(&wc), via_enum, "status {v}");
            assert_eq!(wc_status(&wc).to_raw(), v, "status {v}");
        }
    }

    #[test]
    fn ids_the_table_cannot_produce_are_rejected() {
        assert_eq!(from_completion(0), None);
        for bad in [
            verbs::WrId::recv(1, 0),
            verbs::WrId::data(16 << REQ_BITS, 0),
            verbs::WrId::send(1 << REQ_BITS, 0),
            verbs::WrId::recv(verbs::MAX_WR_OWNER, 0),
        ] {
            assert_eq!(from_completion(bad.to_raw()), None, "{bad:?}");
        }
    }
}
