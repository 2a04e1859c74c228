//! Fabrics Connect: decoding the command and its 1024-byte data, and the
//! "Connect Invalid Parameters" responses that point at the bad field.

use crate::engine::codec::admin::CONNECT_DATA_SIZE;
use crate::engine::codec::nvme::{Command, Status};

use super::data::DataBuffer;

/// NQN field size in the Connect data.
const NQN_FIELD: usize = 256;

/// Byte offsets of Connect command fields (for IPO when IATTR = 0).
pub(crate) mod cmd_field {
    /// QID.
    pub const QID: u16 = 42;
    /// SQSIZE.
    pub const SQSIZE: u16 = 44;
}

/// Byte offsets of Connect data fields (for IPO when IATTR = 1).
pub(crate) mod data_field {
    /// CNTLID.
    pub const CNTLID: u16 = 16;
    /// SUBNQN.
    pub const SUBNQN: u16 = 256;
    /// HOSTNQN.
    pub const HOSTNQN: u16 = 512;
}

/// A refused Connect: status and CQE dword 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub status: Status,
    pub cdw0: u32,
}

impl Refusal {
    /// "Connect Invalid Parameters" naming a field of the command
    /// (IATTR = 0, IPO = byte offset in the SQE).
    pub fn invalid_command_field(offset: u16) -> Refusal {
        Refusal {
            status: Status::CONNECT_INVALID_PARAMETERS,
            cdw0: u32::from(offset),
        }
    }

    /// "Connect Invalid Parameters" naming a field of the Connect data
    /// (IATTR = 1, IPO = byte offset in the data).
    pub fn invalid_data_field(offset: u16) -> Refusal {
        Refusal {
            status: Status::CONNECT_INVALID_PARAMETERS,
            cdw0: u32::from(offset) | (1 << 16),
        }
    }

    /// Any other status, dword 0 = 0.
    pub fn status(status: Status) -> Refusal {
        Refusal { status, cdw0: 0 }
    }
}

/// The fields of a Connect command and its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConnectRequest {
    pub recfmt: u16,
    pub qid: u16,
    /// 0-based submission queue size.
    pub sqsize: u16,
    /// Keep-alive timeout asked for, ms.
    pub kato_ms: u32,
    pub hostid: [u8; 16],
    pub cntlid: u16,
    pub subnqn: String,
    /// `None` when the field is not NUL-terminated UTF-8 (checked after
    /// the subsystem, as upstream does).
    pub hostnqn: Option<String>,
}

impl ConnectRequest {
    /// Decodes the command and its data. SUBNQN must be NUL-terminated
    /// UTF-8 inside its 256-byte field.
    pub fn parse(cmd: &Command, data: &DataBuffer<'_>) -> Result<ConnectRequest, Refusal> {
        let mut raw = [0u8; CONNECT_DATA_SIZE];
        if data.len() < CONNECT_DATA_SIZE || data.read_at(0, &mut raw) != CONNECT_DATA_SIZE {
            return Err(Refusal::status(Status::INVALID_FIELD));
        }
        let subnqn = nqn_field(&raw, data_field::SUBNQN)
            .ok_or(Refusal::invalid_data_field(data_field::SUBNQN))?;
        let hostnqn = nqn_field(&raw, data_field::HOSTNQN);
        let mut hostid = [0u8; 16];
        hostid.copy_from_slice(&raw[..16]);
        Ok(ConnectRequest {
            recfmt: cmd.cdw10() as u16,
            qid: (cmd.cdw10() >> 16) as u16,
            sqsize: cmd.cdw11() as u16,
            kato_ms: cmd.cdw12(),
            hostid,
            cntlid: u16::from_le_bytes([raw[16], raw[17]]),
            subnqn,
            hostnqn,
        })
    }
}

fn nqn_field(raw: &[u8; CONNECT_DATA_SIZE], at: u16) -> Option<String> {
    let field = &raw[usize::from(at)..usize::from(at) + NQN_FIELD];
    let end = field.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&field[..end]).ok().map(str::to_string)
}

/// Encodes Connect data (for tests and initiators).
pub fn connect_data(hostid: [u8; 16], cntlid: u16, subnqn: &str, hostnqn: &str) -> [u8; 1024] {
    let mut raw = [0u8; CONNECT_DATA_SIZE];
    raw[..16].copy_from_slice(&hostid);
    raw[16..18].copy_from_slice(&cntlid.to_le_bytes());
    let sub = subnqn.as_bytes();
    let n = sub.len().min(NQN_FIELD - 1);
    raw[256..256 + n].copy_from_slice(&sub[..n]);
    let host = hostnqn.as_bytes();
    let n = host.len().min(NQN_FIELD - 1);
    raw[512..512 + n].copy_from_slice(&host[..n]);
    raw
}
