//! Mapping between the engine's typed WR ids and the verbs layer's typed WR
//! ids (both are 64-bit values; the engine's payload fits the verbs layer's
//! 56 payload bits, so the mapping is a bijection).

use crate::engine;
use crate::verbs;

const PAYLOAD_MASK: u64 = 0x00ff_ffff_ffff_ffff;
const ENGINE_KIND_SHIFT: u32 = 62;

/// The verbs WR id to post for an engine WR id.
pub fn to_verbs(id: engine::WrId) -> verbs::WrId {
    let raw = id.to_raw();
    let kind = match raw >> ENGINE_KIND_SHIFT {
        1 => verbs::WrKind::Recv,
        2 => verbs::WrKind::Data,
        _ => verbs::WrKind::Send,
    };
    let payload = raw & PAYLOAD_MASK;
    verbs::WrId::new(kind, (payload >> 32) as u32, payload as u32)
}

/// The engine's raw WR id for a completion's raw `wr_id`, or `None` when the
/// value was not posted by this transport.
pub fn from_completion(raw: u64) -> Option<u64> {
    let id = verbs::WrId::from_raw(raw).ok()?;
    let kind: u64 = match id.kind() {
        verbs::WrKind::Recv => 1,
        verbs::WrKind::Data => 2,
        verbs::WrKind::Send => 3,
    };
    let payload = (u64::from(id.owner()) << 32) | u64::from(id.index());
    Some((kind << ENGINE_KIND_SHIFT) | payload)
}

/// Engine status from a verbs status (same numbering: `ibv_wc_status`).
pub fn status(s: verbs::WcStatus) -> engine::WcStatus {
    engine::WcStatus::from_raw(s.to_raw())
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
            WrKind::Send {
                req: ReqId(3),
                generation: 7,
            },
        ] {
            let id = engine::WrId::new(k);
            let back = from_completion(to_verbs(id).to_raw()).unwrap();
            assert_eq!(back, id.to_raw());
        }
        assert_eq!(from_completion(0), None);
    }
}
