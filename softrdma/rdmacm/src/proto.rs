//! The CM wire protocol between two softrdma processes (sans-IO).
//!
//! One `SOCK_SEQPACKET` connection per CM connection; every datagram is one
//! [`Msg`]. The messages mirror the InfiniBand CM MADs the kernel would send
//! (REQ, REP, RTU, REJ, DREQ, DREP) with only the fields librdmacm exposes.
//! Encoding: one tag byte, fixed little-endian fields, then the private data.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Largest private data a REQ may carry for RDMA_PS_TCP (IB CM REQ 92 bytes
/// minus the 36-byte CMA IP header).
pub const REQ_PRIVATE_DATA: usize = 56;
/// Largest private data of a REP.
pub const REP_PRIVATE_DATA: usize = 196;
/// Largest private data of a REJ.
pub const REJ_PRIVATE_DATA: usize = 148;
/// Largest private data of a DREQ/DREP (IB CM: 220 bytes).
pub const DREQ_PRIVATE_DATA: usize = 220;

/// IB CM reject reason: consumer reject (`rdma_reject`).
pub const REJ_CONSUMER: u8 = 28;
/// IB CM reject reason: invalid service id (nobody listens there).
pub const REJ_INVALID_SERVICE_ID: u8 = 8;
/// IB CM reject reason: timeout (used when a listener's backlog is full).
pub const REJ_TIMEOUT: u8 = 1;
/// IB CM reject reason `IB_CM_REJ_TIMEOUT` (4): what the kernel CM of a host whose process
/// died sends for a REQ still waiting for its REP (`cm_destroy_id` in state REQ_SENT).
pub const REJ_PEER_GONE_IN_REQ: u8 = 4;

/// Connection parameters the active side sends in its REQ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Req {
    /// Port space (RDMA_PS_TCP / RDMA_PS_UDP).
    pub ps: u16,
    /// Requester's QP number.
    pub qpn: u32,
    /// Requester's starting send PSN.
    pub psn: u32,
    /// Requester's port LID.
    pub lid: u16,
    /// Requester uses an SRQ.
    pub srq: bool,
    /// Requester's responder resources (incoming RDMA READ depth).
    pub responder_resources: u8,
    /// Requester's initiator depth (outgoing RDMA READ depth).
    pub initiator_depth: u8,
    /// Flow control flag.
    pub flow_control: u8,
    /// Transport retry count.
    pub retry_count: u8,
    /// RNR retry count the passive QP should use.
    pub rnr_retry_count: u8,
    /// Requester's address and port.
    pub src: SocketAddr,
    /// The address and port the requester connected to.
    pub dst: SocketAddr,
    /// Requester's private data (≤ [`REQ_PRIVATE_DATA`]).
    pub private_data: Vec<u8>,
}

/// The passive side's answer to a REQ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rep {
    /// Responder's QP number.
    pub qpn: u32,
    /// Responder's starting send PSN.
    pub psn: u32,
    /// Responder's port LID.
    pub lid: u16,
    /// Responder uses an SRQ.
    pub srq: bool,
    /// Responder's (negotiated) responder resources.
    pub responder_resources: u8,
    /// Responder's (negotiated) initiator depth.
    pub initiator_depth: u8,
    /// Flow control flag.
    pub flow_control: u8,
    /// RNR retry count the active QP should use.
    pub rnr_retry_count: u8,
    /// Accept private data (≤ [`REP_PRIVATE_DATA`]).
    pub private_data: Vec<u8>,
}

/// A CM message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Msg {
    /// Connection request (active → passive).
    Req(Req),
    /// Connection reply (passive → active, `rdma_accept`).
    Rep(Rep),
    /// Ready to use (active → passive): the connection is established.
    Rtu,
    /// Reject, with the IB reason code and private data.
    Rej {
        /// IB CM reject reason (28 = consumer).
        reason: u8,
        /// Reject private data (≤ [`REJ_PRIVATE_DATA`]).
        private_data: Vec<u8>,
    },
    /// Disconnect request.
    Dreq,
    /// Disconnect reply.
    Drep,
}

/// Why a datagram could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    /// The datagram is shorter than its fixed fields.
    #[error("CM message truncated: tag {tag:#x}, {len} bytes")]
    Truncated {
        /// Message tag.
        tag: u8,
        /// Datagram length.
        len: usize,
    },
    /// Unknown message tag.
    #[error("unknown CM message tag {0:#x}")]
    UnknownTag(u8),
    /// Private data longer than the message type allows.
    #[error("CM message tag {tag:#x} carries {len} bytes of private data, limit {limit}")]
    PrivateDataTooLong {
        /// Message tag.
        tag: u8,
        /// Length found.
        len: usize,
        /// Limit for this message.
        limit: usize,
    },
    /// An address family byte is neither 4 nor 6.
    #[error("bad address family byte {0}")]
    BadFamily(u8),
    /// An empty datagram.
    #[error("empty CM message")]
    Empty,
}

const TAG_REQ: u8 = 1;
const TAG_REP: u8 = 2;
const TAG_RTU: u8 = 3;
const TAG_REJ: u8 = 4;
const TAG_DREQ: u8 = 5;
const TAG_DREP: u8 = 6;

fn put_addr(out: &mut Vec<u8>, a: &SocketAddr) {
    match a.ip() {
        IpAddr::V4(v4) => {
            out.push(4);
            out.extend_from_slice(&v4.octets());
            out.extend_from_slice(&[0u8; 12]);
        }
        IpAddr::V6(v6) => {
            out.push(6);
            out.extend_from_slice(&v6.octets());
        }
    }
    out.extend_from_slice(&a.port().to_le_bytes());
}

/// A bounds-checked little-endian reader over one datagram.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    tag: u8,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or(ProtoError::Truncated {
            tag: self.tag,
            len: self.buf.len(),
        })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, ProtoError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, ProtoError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, ProtoError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn addr(&mut self) -> Result<SocketAddr, ProtoError> {
        let fam = self.u8()?;
        let raw = self.take(16)?;
        let port = self.u16()?;
        let ip = match fam {
            4 => IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3])),
            6 => {
                let mut o = [0u8; 16];
                o.copy_from_slice(raw);
                IpAddr::V6(Ipv6Addr::from(o))
            }
            f => return Err(ProtoError::BadFamily(f)),
        };
        Ok(SocketAddr::new(ip, port))
    }
    fn private_data(&mut self, limit: usize) -> Result<Vec<u8>, ProtoError> {
        let rest = &self.buf[self.pos..];
        if rest.len() > limit {
            return Err(ProtoError::PrivateDataTooLong {
                tag: self.tag,
                len: rest.len(),
                limit,
            });
        }
        self.pos = self.buf.len();
        Ok(rest.to_vec())
    }
}

impl Msg {
    /// Encode into one datagram.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        match self {
            Msg::Req(r) => {
                out.push(TAG_REQ);
                out.extend_from_slice(&r.ps.to_le_bytes());
                out.extend_from_slice(&r.qpn.to_le_bytes());
                out.extend_from_slice(&r.psn.to_le_bytes());
                out.extend_from_slice(&r.lid.to_le_bytes());
                out.extend_from_slice(&[
                    u8::from(r.srq),
                    r.responder_resources,
                    r.initiator_depth,
                    r.flow_control,
                    r.retry_count,
                    r.rnr_retry_count,
                ]);
                put_addr(&mut out, &r.src);
                put_addr(&mut out, &r.dst);
                out.extend_from_slice(&r.private_data);
            }
            Msg::Rep(r) => {
                out.push(TAG_REP);
                out.extend_from_slice(&r.qpn.to_le_bytes());
                out.extend_from_slice(&r.psn.to_le_bytes());
                out.extend_from_slice(&r.lid.to_le_bytes());
                out.extend_from_slice(&[
                    u8::from(r.srq),
                    r.responder_resources,
                    r.initiator_depth,
                    r.flow_control,
                    r.rnr_retry_count,
                ]);
                out.extend_from_slice(&r.private_data);
            }
            Msg::Rtu => out.push(TAG_RTU),
            Msg::Rej {
                reason,
                private_data,
            } => {
                out.push(TAG_REJ);
                out.push(*reason);
                out.extend_from_slice(private_data);
            }
            Msg::Dreq => out.push(TAG_DREQ),
            Msg::Drep => out.push(TAG_DREP),
        }
        out
    }

    /// Decode one datagram.
    pub fn decode(buf: &[u8]) -> Result<Msg, ProtoError> {
        let tag = *buf.first().ok_or(ProtoError::Empty)?;
        let mut r = Reader { buf, pos: 1, tag };
        match tag {
            TAG_REQ => {
                let ps = r.u16()?;
                let qpn = r.u32()?;
                let psn = r.u32()?;
                let lid = r.u16()?;
                let f = r.take(6)?;
                let (srq, rr, id, fc, rc, rnr) = (f[0] != 0, f[1], f[2], f[3], f[4], f[5]);
                let src = r.addr()?;
                let dst = r.addr()?;
                let private_data = r.private_data(REQ_PRIVATE_DATA)?;
                Ok(Msg::Req(Req {
                    ps,
                    qpn,
                    psn,
                    lid,
                    srq,
                    responder_resources: rr,
                    initiator_depth: id,
                    flow_control: fc,
                    retry_count: rc,
                    rnr_retry_count: rnr,
                    src,
                    dst,
                    private_data,
                }))
            }
            TAG_REP => {
                let qpn = r.u32()?;
                let psn = r.u32()?;
                let lid = r.u16()?;
                let f = r.take(5)?;
                let private_data = r.private_data(REP_PRIVATE_DATA)?;
                Ok(Msg::Rep(Rep {
                    qpn,
                    psn,
                    lid,
                    srq: f[0] != 0,
                    responder_resources: f[1],
                    initiator_depth: f[2],
                    flow_control: f[3],
                    rnr_retry_count: f[4],
                    private_data,
                }))
            }
            TAG_RTU => Ok(Msg::Rtu),
            TAG_REJ => {
                let reason = r.u8()?;
                let private_data = r.private_data(REJ_PRIVATE_DATA)?;
                Ok(Msg::Rej {
                    reason,
                    private_data,
                })
            }
            TAG_DREQ => Ok(Msg::Dreq),
            TAG_DREP => Ok(Msg::Drep),
            t => Err(ProtoError::UnknownTag(t)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> Req {
        Req {
            ps: 0x106,
            qpn: 0x12345,
            psn: 0xabcdef,
            lid: 1,
            srq: true,
            responder_resources: 16,
            initiator_depth: 0,
            flow_control: 1,
            retry_count: 7,
            rnr_retry_count: 6,
            src: "127.0.0.1:40000".parse().unwrap(),
            dst: "[::1]:4420".parse().unwrap(),
            private_data: vec![1, 2, 3],
        }
    }

    #[test]
    fn roundtrip_every_message() {
        let msgs = [
            Msg::Req(req()),
            Msg::Rep(Rep {
                qpn: 7,
                psn: 9,
                lid: 1,
                srq: false,
                responder_resources: 0,
                initiator_depth: 16,
                flow_control: 0,
                rnr_retry_count: 7,
                private_data: vec![0xee; REP_PRIVATE_DATA],
            }),
            Msg::Rtu,
            Msg::Rej {
                reason: REJ_CONSUMER,
                private_data: vec![4, 5],
            },
            Msg::Dreq,
            Msg::Drep,
        ];
        for m in msgs {
            assert_eq!(Msg::decode(&m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn rejects_oversized_private_data() {
        let mut r = req();
        r.private_data = vec![0; REQ_PRIVATE_DATA + 1];
        let err = Msg::decode(&Msg::Req(r).encode()).unwrap_err();
        assert_eq!(
            err,
            ProtoError::PrivateDataTooLong {
                tag: TAG_REQ,
                len: 57,
                limit: 56
            }
        );
    }

    #[test]
    fn rejects_truncated_and_garbage() {
        let full = Msg::Req(req()).encode();
        for cut in 1..40 {
            assert!(matches!(
                Msg::decode(&full[..cut]),
                Err(ProtoError::Truncated { .. })
            ));
        }
        assert_eq!(Msg::decode(&[]), Err(ProtoError::Empty));
        assert_eq!(Msg::decode(&[0x77]), Err(ProtoError::UnknownTag(0x77)));
        let mut bad = full.clone();
        bad[1 + 2 + 4 + 4 + 2 + 6] = 5; // src family byte
        assert_eq!(Msg::decode(&bad), Err(ProtoError::BadFamily(5)));
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary datagrams never panic the decoder, and whatever decodes survives an
        /// encode/decode round trip unchanged.
        #[test]
        fn decode_is_total_and_canonical(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(m) = Msg::decode(&bytes) {
                let again = Msg::decode(&m.encode()).expect("re-decode");
                prop_assert_eq!(again, m);
            }
        }
    }
}
