//! NVMe wire structures: the 64-byte submission queue entry (command capsule
//! SQE), the 16-byte SGL descriptor, the 16-byte completion queue entry and
//! NVMe status codes.
//!
//! Layouts follow NVMe Base 2.x and NVMe-oF 1.1; all multi-byte fields are
//! little-endian. Accessors never panic: every field of a 64-byte command is
//! readable whatever its bytes are.

use core::fmt;

/// Size of an NVMe command capsule's submission queue entry in bytes.
pub const COMMAND_CAPSULE_SIZE: usize = 64;
/// Size of an NVMe completion queue entry in bytes.
pub const COMPLETION_SIZE: usize = 16;
/// Size of one SGL descriptor in bytes.
pub const SGL_DESCRIPTOR_SIZE: usize = 16;

/// Opcode of every NVMe-oF fabrics command (the command type is in `fctype`).
pub const OPC_FABRICS: u8 = 0x7f;

/// Admin command set opcodes (NVMe Base, figure "Opcodes for Admin Commands").
pub mod admin_opcode {
    /// Delete I/O Submission Queue.
    pub const DELETE_IO_SQ: u8 = 0x00;
    /// Create I/O Submission Queue.
    pub const CREATE_IO_SQ: u8 = 0x01;
    /// Get Log Page.
    pub const GET_LOG_PAGE: u8 = 0x02;
    /// Delete I/O Completion Queue.
    pub const DELETE_IO_CQ: u8 = 0x04;
    /// Create I/O Completion Queue.
    pub const CREATE_IO_CQ: u8 = 0x05;
    /// Identify.
    pub const IDENTIFY: u8 = 0x06;
    /// Abort.
    pub const ABORT: u8 = 0x08;
    /// Set Features.
    pub const SET_FEATURES: u8 = 0x09;
    /// Get Features.
    pub const GET_FEATURES: u8 = 0x0a;
    /// Asynchronous Event Request.
    pub const ASYNC_EVENT_REQUEST: u8 = 0x0c;
    /// Namespace Management.
    pub const NS_MANAGEMENT: u8 = 0x0d;
    /// Firmware Commit.
    pub const FIRMWARE_COMMIT: u8 = 0x10;
    /// Firmware Image Download.
    pub const FIRMWARE_IMAGE_DOWNLOAD: u8 = 0x11;
    /// Namespace Attachment.
    pub const NS_ATTACHMENT: u8 = 0x15;
    /// Keep Alive.
    pub const KEEP_ALIVE: u8 = 0x18;
    /// Fabrics command (see [`super::fctype`]).
    pub const FABRICS: u8 = super::OPC_FABRICS;
}

/// NVM command set I/O opcodes (NVM Command Set specification).
pub mod io_opcode {
    /// Flush.
    pub const FLUSH: u8 = 0x00;
    /// Write.
    pub const WRITE: u8 = 0x01;
    /// Read.
    pub const READ: u8 = 0x02;
    /// Write Uncorrectable.
    pub const WRITE_UNCORRECTABLE: u8 = 0x04;
    /// Compare.
    pub const COMPARE: u8 = 0x05;
    /// Write Zeroes.
    pub const WRITE_ZEROES: u8 = 0x08;
    /// Dataset Management.
    pub const DATASET_MANAGEMENT: u8 = 0x09;
    /// Reservation Register.
    pub const RESERVATION_REGISTER: u8 = 0x0d;
    /// Reservation Report.
    pub const RESERVATION_REPORT: u8 = 0x0e;
    /// Reservation Acquire.
    pub const RESERVATION_ACQUIRE: u8 = 0x11;
    /// Reservation Release.
    pub const RESERVATION_RELEASE: u8 = 0x15;
}

/// NVMe-oF fabrics command types (`fctype`, byte 4 of a fabrics command).
pub mod fctype {
    /// Property Set.
    pub const PROPERTY_SET: u8 = 0x00;
    /// Connect.
    pub const CONNECT: u8 = 0x01;
    /// Property Get.
    pub const PROPERTY_GET: u8 = 0x04;
    /// Authentication Send.
    pub const AUTHENTICATION_SEND: u8 = 0x05;
    /// Authentication Receive.
    pub const AUTHENTICATION_RECV: u8 = 0x06;
    /// Disconnect.
    pub const DISCONNECT: u8 = 0x08;
}

/// SGL descriptor types (high nibble of the SGL identifier byte).
pub mod sgl_type {
    /// SGL Data Block (unkeyed; with subtype OFFSET: in-capsule data).
    pub const DATA_BLOCK: u8 = 0x0;
    /// SGL Bit Bucket.
    pub const BIT_BUCKET: u8 = 0x1;
    /// SGL Segment (points at a further segment).
    pub const SEGMENT: u8 = 0x2;
    /// SGL Last Segment (points at the last segment of a list).
    pub const LAST_SEGMENT: u8 = 0x3;
    /// Keyed SGL Data Block (remote address + length + rkey).
    pub const KEYED_DATA_BLOCK: u8 = 0x4;
    /// Transport SGL Data Block.
    pub const TRANSPORT_DATA_BLOCK: u8 = 0x5;
    /// Vendor specific.
    pub const VENDOR_SPECIFIC: u8 = 0xf;
}

/// SGL descriptor subtypes (low nibble of the SGL identifier byte).
pub mod sgl_subtype {
    /// The address field is a memory address.
    pub const ADDRESS: u8 = 0x0;
    /// The address field is an offset (into the capsule's data).
    pub const OFFSET: u8 = 0x1;
    /// Transport specific.
    pub const TRANSPORT: u8 = 0xa;
    /// Keyed data block whose key the host asks the target to invalidate
    /// (send with invalidate).
    pub const INVALIDATE_KEY: u8 = 0xf;
}

/// Status code types (SCT).
pub mod sct {
    /// Generic command status.
    pub const GENERIC: u8 = 0x0;
    /// Command specific status.
    pub const COMMAND_SPECIFIC: u8 = 0x1;
    /// Media and data integrity errors.
    pub const MEDIA_ERROR: u8 = 0x2;
    /// Path related status.
    pub const PATH: u8 = 0x3;
    /// Vendor specific.
    pub const VENDOR_SPECIFIC: u8 = 0x7;
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Fused operation field (CDW0 bits 9:8, byte 1 bits 1:0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fuse {
    /// Not fused.
    Normal,
    /// First command of a fused pair.
    First,
    /// Second command of a fused pair.
    Second,
    /// Reserved value 11b.
    Reserved,
}

impl Fuse {
    /// The two-bit field value.
    pub const fn bits(self) -> u8 {
        match self {
            Fuse::Normal => 0,
            Fuse::First => 1,
            Fuse::Second => 2,
            Fuse::Reserved => 3,
        }
    }

    /// Decodes the two low bits of `bits`.
    pub const fn from_bits(bits: u8) -> Fuse {
        match bits & 3 {
            0 => Fuse::Normal,
            1 => Fuse::First,
            2 => Fuse::Second,
            _ => Fuse::Reserved,
        }
    }
}

/// Data transfer direction encoded in an opcode's (or fctype's) two low bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataTransfer {
    /// No data transfer (00b).
    None,
    /// Host to controller, i.e. a write: the target RDMA-READs the data (01b).
    HostToController,
    /// Controller to host, i.e. a read: the target RDMA-WRITEs the data (10b).
    ControllerToHost,
    /// Bidirectional (11b); not supported by the RDMA transport.
    Bidirectional,
}

impl DataTransfer {
    /// Decodes the two low bits of an opcode or fabrics command type.
    pub const fn from_opcode(opcode: u8) -> DataTransfer {
        match opcode & 3 {
            0 => DataTransfer::None,
            1 => DataTransfer::HostToController,
            2 => DataTransfer::ControllerToHost,
            _ => DataTransfer::Bidirectional,
        }
    }
}

/// One 16-byte SGL descriptor, kept as raw bytes with typed accessors.
///
/// Layout: bytes 0..8 address (or offset); for unkeyed descriptors bytes
/// 8..12 length; for keyed descriptors bytes 8..11 a 24-bit length and bytes
/// 11..15 the key; byte 15 is the SGL identifier (type in bits 7:4, subtype
/// in bits 3:0).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SglDescriptor {
    /// The descriptor's 16 wire bytes.
    pub raw: [u8; 16],
}

/// Largest length a keyed SGL data block can carry (24-bit field).
pub const MAX_KEYED_LENGTH: u32 = 0x00ff_ffff;

impl SglDescriptor {
    /// Wraps 16 wire bytes.
    pub const fn from_bytes(raw: [u8; 16]) -> SglDescriptor {
        SglDescriptor { raw }
    }

    /// Descriptor type (see [`sgl_type`]).
    pub const fn sgl_type(&self) -> u8 {
        self.raw[15] >> 4
    }

    /// Descriptor subtype (see [`sgl_subtype`]).
    pub const fn subtype(&self) -> u8 {
        self.raw[15] & 0x0f
    }

    /// Address or offset field (bytes 0..8).
    pub fn address(&self) -> u64 {
        le64(&self.raw, 0)
    }

    /// 32-bit length of an unkeyed descriptor (bytes 8..12).
    pub fn unkeyed_length(&self) -> u32 {
        le32(&self.raw, 8)
    }

    /// 24-bit length of a keyed descriptor (bytes 8..11).
    pub fn keyed_length(&self) -> u32 {
        u32::from_le_bytes([self.raw[8], self.raw[9], self.raw[10], 0])
    }

    /// Key (rkey) of a keyed descriptor (bytes 11..15).
    pub fn key(&self) -> u32 {
        le32(&self.raw, 11)
    }

    /// Whether this is a keyed data block (type 0x4).
    pub const fn is_keyed(&self) -> bool {
        self.sgl_type() == sgl_type::KEYED_DATA_BLOCK
    }

    /// The length field as the type defines it: 24-bit for keyed data
    /// blocks, 32-bit for every other type.
    pub fn length(&self) -> u32 {
        if self.is_keyed() {
            self.keyed_length()
        } else {
            self.unkeyed_length()
        }
    }

    /// Sets type and subtype (each truncated to 4 bits).
    pub fn set_type(&mut self, sgl_type: u8, subtype: u8) {
        self.raw[15] = ((sgl_type & 0x0f) << 4) | (subtype & 0x0f);
    }

    /// Sets the address / offset field.
    pub fn set_address(&mut self, address: u64) {
        self.raw[0..8].copy_from_slice(&address.to_le_bytes());
    }

    /// Sets the 32-bit unkeyed length (bytes 8..12).
    pub fn set_unkeyed_length(&mut self, len: u32) {
        self.raw[8..12].copy_from_slice(&len.to_le_bytes());
    }

    /// Sets the 24-bit keyed length; values above [`MAX_KEYED_LENGTH`] are
    /// clamped to it.
    pub fn set_keyed_length(&mut self, len: u32) {
        let len = len.min(MAX_KEYED_LENGTH).to_le_bytes();
        self.raw[8..11].copy_from_slice(&len[0..3]);
    }

    /// Sets the key of a keyed descriptor (bytes 11..15).
    pub fn set_key(&mut self, key: u32) {
        self.raw[11..15].copy_from_slice(&key.to_le_bytes());
    }
}

impl fmt::Debug for SglDescriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("SglDescriptor");
        d.field("type", &self.sgl_type())
            .field("subtype", &self.subtype())
            .field("address", &format_args!("{:#x}", self.address()))
            .field("length", &self.length());
        if self.is_keyed() {
            d.field("key", &format_args!("{:#x}", self.key()));
        }
        d.finish()
    }
}

// SQE byte offsets.
const SQE_OPCODE: usize = 0;
const SQE_FLAGS: usize = 1;
const SQE_CID: usize = 2;
const SQE_NSID: usize = 4;
const SQE_FCTYPE: usize = 4;
const SQE_MPTR: usize = 16;
const SQE_DPTR: usize = 24;
const SQE_CDW10: usize = 40;

/// An NVMe submission queue entry as carried in an NVMe-oF command capsule.
///
/// Stored as its 64 wire bytes; accessors decode fields on demand, so a
/// command copied out of a receive buffer is never rejected for its content
/// here (validation is [`super::sgl::parse_data_layout`]'s job).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Command {
    raw: [u8; COMMAND_CAPSULE_SIZE],
}

impl Default for Command {
    fn default() -> Self {
        Command::ZERO
    }
}

impl Command {
    /// The all-zero command.
    pub const ZERO: Command = Command {
        raw: [0; COMMAND_CAPSULE_SIZE],
    };

    /// Copies a command out of its 64 wire bytes.
    pub fn from_bytes(b: &[u8; 64]) -> Command {
        Command { raw: *b }
    }

    /// Parses the first 64 bytes of a received capsule; `None` when `b` is
    /// shorter than a command.
    pub fn from_slice(b: &[u8]) -> Option<Command> {
        let raw: [u8; COMMAND_CAPSULE_SIZE] = b.get(..COMMAND_CAPSULE_SIZE)?.try_into().ok()?;
        Some(Command { raw })
    }

    /// The 64 wire bytes.
    pub fn as_bytes(&self) -> &[u8; 64] {
        &self.raw
    }

    /// A zeroed command with the given opcode and command identifier.
    pub fn new(opcode: u8, cid: u16) -> Command {
        let mut c = Command::default();
        c.set_opcode(opcode);
        c.set_cid(cid);
        c
    }

    /// A zeroed fabrics command (opcode 0x7f) of the given type.
    pub fn new_fabrics(fctype: u8, cid: u16) -> Command {
        let mut c = Command::new(OPC_FABRICS, cid);
        c.set_fctype(fctype);
        c
    }

    /// Opcode (byte 0).
    pub fn opcode(&self) -> u8 {
        self.raw[SQE_OPCODE]
    }

    /// Fused operation (byte 1 bits 1:0).
    pub fn fuse(&self) -> Fuse {
        Fuse::from_bits(self.raw[SQE_FLAGS])
    }

    /// PRP or SGL for data transfer (byte 1 bits 7:6).
    pub fn psdt(&self) -> u8 {
        self.raw[SQE_FLAGS] >> 6
    }

    /// Command identifier (bytes 2..4).
    pub fn cid(&self) -> u16 {
        le16(&self.raw, SQE_CID)
    }

    /// Namespace identifier (bytes 4..8); meaningless for fabrics commands.
    pub fn nsid(&self) -> u32 {
        le32(&self.raw, SQE_NSID)
    }

    /// Fabrics command type (byte 4); meaningful only when
    /// [`is_fabrics`](Self::is_fabrics).
    pub fn fctype(&self) -> u8 {
        self.raw[SQE_FCTYPE]
    }

    /// Metadata pointer (bytes 16..24).
    pub fn mptr(&self) -> u64 {
        le64(&self.raw, SQE_MPTR)
    }

    /// Command dword `n` (0..16); `None` when `n` is out of range.
    pub fn cdw(&self, n: usize) -> Option<u32> {
        (n < 16).then(|| le32(&self.raw, n * 4))
    }

    /// Command dword 10.
    pub fn cdw10(&self) -> u32 {
        le32(&self.raw, SQE_CDW10)
    }

    /// Command dword 11.
    pub fn cdw11(&self) -> u32 {
        le32(&self.raw, SQE_CDW10 + 4)
    }

    /// Command dword 12.
    pub fn cdw12(&self) -> u32 {
        le32(&self.raw, SQE_CDW10 + 8)
    }

    /// Command dword 13.
    pub fn cdw13(&self) -> u32 {
        le32(&self.raw, SQE_CDW10 + 12)
    }

    /// Command dword 14.
    pub fn cdw14(&self) -> u32 {
        le32(&self.raw, SQE_CDW10 + 16)
    }

    /// Command dword 15.
    pub fn cdw15(&self) -> u32 {
        le32(&self.raw, SQE_CDW10 + 20)
    }

    /// The first SGL descriptor (data pointer, bytes 24..40).
    pub fn sgl1(&self) -> SglDescriptor {
        let mut raw = [0u8; 16];
        raw.copy_from_slice(&self.raw[SQE_DPTR..SQE_DPTR + 16]);
        SglDescriptor { raw }
    }

    /// Whether this is a fabrics command (opcode 0x7f).
    pub fn is_fabrics(&self) -> bool {
        self.opcode() == OPC_FABRICS
    }

    /// Direction of the data transfer the command asks for, from opcode
    /// bits 1:0, or from the fabrics command type for fabrics commands. This
    /// ignores the SGL; see [`super::sgl::effective_data_transfer`] for the
    /// direction after upstream's "zero-length SGL means no data" rule.
    pub fn data_transfer(&self) -> DataTransfer {
        if self.is_fabrics() {
            DataTransfer::from_opcode(self.fctype())
        } else {
            DataTransfer::from_opcode(self.opcode())
        }
    }

    /// Sets the opcode.
    pub fn set_opcode(&mut self, opcode: u8) {
        self.raw[SQE_OPCODE] = opcode;
    }

    /// Sets the fused operation bits.
    pub fn set_fuse(&mut self, fuse: Fuse) {
        self.raw[SQE_FLAGS] = (self.raw[SQE_FLAGS] & !3) | fuse.bits();
    }

    /// Sets PSDT (two bits; 01b = SGL, what NVMe-oF hosts send).
    pub fn set_psdt(&mut self, psdt: u8) {
        self.raw[SQE_FLAGS] = (self.raw[SQE_FLAGS] & 0x3f) | ((psdt & 3) << 6);
    }

    /// Sets the command identifier.
    pub fn set_cid(&mut self, cid: u16) {
        self.raw[SQE_CID..SQE_CID + 2].copy_from_slice(&cid.to_le_bytes());
    }

    /// Sets the namespace identifier.
    pub fn set_nsid(&mut self, nsid: u32) {
        self.raw[SQE_NSID..SQE_NSID + 4].copy_from_slice(&nsid.to_le_bytes());
    }

    /// Sets the fabrics command type (byte 4, shared with the low NSID byte).
    pub fn set_fctype(&mut self, fctype: u8) {
        self.raw[SQE_FCTYPE] = fctype;
    }

    /// Sets the metadata pointer.
    pub fn set_mptr(&mut self, mptr: u64) {
        self.raw[SQE_MPTR..SQE_MPTR + 8].copy_from_slice(&mptr.to_le_bytes());
    }

    /// Sets command dword `n` (0..16); returns `false` (and changes nothing)
    /// when `n` is out of range.
    pub fn set_cdw(&mut self, n: usize, value: u32) -> bool {
        if n >= 16 {
            return false;
        }
        self.raw[n * 4..n * 4 + 4].copy_from_slice(&value.to_le_bytes());
        true
    }

    fn set_dword_at(&mut self, at: usize, value: u32) {
        self.raw[at..at + 4].copy_from_slice(&value.to_le_bytes());
    }

    /// Sets command dword 10.
    pub fn set_cdw10(&mut self, v: u32) {
        self.set_dword_at(SQE_CDW10, v);
    }

    /// Sets command dword 11.
    pub fn set_cdw11(&mut self, v: u32) {
        self.set_dword_at(SQE_CDW10 + 4, v);
    }

    /// Sets command dword 12.
    pub fn set_cdw12(&mut self, v: u32) {
        self.set_dword_at(SQE_CDW10 + 8, v);
    }

    /// Sets command dword 13.
    pub fn set_cdw13(&mut self, v: u32) {
        self.set_dword_at(SQE_CDW10 + 12, v);
    }

    /// Sets command dword 14.
    pub fn set_cdw14(&mut self, v: u32) {
        self.set_dword_at(SQE_CDW10 + 16, v);
    }

    /// Sets command dword 15.
    pub fn set_cdw15(&mut self, v: u32) {
        self.set_dword_at(SQE_CDW10 + 20, v);
    }

    /// Sets the first SGL descriptor.
    pub fn set_sgl1(&mut self, d: SglDescriptor) {
        self.raw[SQE_DPTR..SQE_DPTR + 16].copy_from_slice(&d.raw);
    }
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Command");
        d.field("opcode", &format_args!("{:#04x}", self.opcode()));
        if self.is_fabrics() {
            d.field("fctype", &format_args!("{:#04x}", self.fctype()));
        } else {
            d.field("nsid", &self.nsid());
        }
        d.field("cid", &self.cid())
            .field("fuse", &self.fuse())
            .field("sgl1", &self.sgl1())
            .finish()
    }
}

/// An NVMe completion status: status code type, status code, "more" and
/// "do not retry". The phase tag is not part of it (it is always 0 on
/// NVMe-oF, where completions travel in capsules).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Status {
    /// Status code type (3 bits, see [`sct`]).
    pub sct: u8,
    /// Status code.
    pub sc: u8,
    /// Do not retry.
    pub dnr: bool,
    /// More status information in a log page.
    pub more: bool,
}

impl Status {
    /// A status with the given type and code, DNR and M clear.
    pub const fn new(sct: u8, sc: u8) -> Status {
        Status {
            sct,
            sc,
            dnr: false,
            more: false,
        }
    }

    const fn generic(sc: u8) -> Status {
        Status::new(sct::GENERIC, sc)
    }

    /// Successful completion.
    pub const SUCCESS: Status = Status::generic(0x00);
    /// Invalid command opcode (also: bidirectional data transfer).
    pub const INVALID_OPCODE: Status = Status::generic(0x01);
    /// Invalid field in command.
    pub const INVALID_FIELD: Status = Status::generic(0x02);
    /// Command ID conflict.
    pub const COMMAND_ID_CONFLICT: Status = Status::generic(0x03);
    /// Data transfer error.
    pub const DATA_TRANSFER_ERROR: Status = Status::generic(0x04);
    /// Commands aborted due to power loss notification.
    pub const ABORTED_POWER_LOSS: Status = Status::generic(0x05);
    /// Internal error (e.g. posting an RDMA READ failed).
    pub const INTERNAL_DEVICE_ERROR: Status = Status::generic(0x06);
    /// Command abort requested.
    pub const ABORTED_BY_REQUEST: Status = Status::generic(0x07);
    /// Command aborted due to SQ deletion.
    pub const ABORTED_SQ_DELETION: Status = Status::generic(0x08);
    /// Command aborted due to failed fused command.
    pub const ABORTED_FAILED_FUSED: Status = Status::generic(0x09);
    /// Command aborted due to missing fused command.
    pub const ABORTED_MISSING_FUSED: Status = Status::generic(0x0a);
    /// Invalid namespace or format.
    pub const INVALID_NAMESPACE_OR_FORMAT: Status = Status::generic(0x0b);
    /// Command sequence error.
    pub const COMMAND_SEQUENCE_ERROR: Status = Status::generic(0x0c);
    /// Invalid SGL segment descriptor.
    pub const INVALID_SGL_SEGMENT_DESCRIPTOR: Status = Status::generic(0x0d);
    /// Invalid number of SGL descriptors.
    pub const INVALID_NUMBER_OF_SGL_DESCRIPTORS: Status = Status::generic(0x0e);
    /// Data SGL length invalid.
    pub const DATA_SGL_LENGTH_INVALID: Status = Status::generic(0x0f);
    /// Metadata SGL length invalid.
    pub const METADATA_SGL_LENGTH_INVALID: Status = Status::generic(0x10);
    /// SGL descriptor type invalid.
    pub const SGL_DESCRIPTOR_TYPE_INVALID: Status = Status::generic(0x11);
    /// Invalid use of controller memory buffer.
    pub const INVALID_CONTROLLER_MEM_BUF: Status = Status::generic(0x12);
    /// PRP offset invalid.
    pub const INVALID_PRP_OFFSET: Status = Status::generic(0x13);
    /// Atomic write unit exceeded.
    pub const ATOMIC_WRITE_UNIT_EXCEEDED: Status = Status::generic(0x14);
    /// Operation denied.
    pub const OPERATION_DENIED: Status = Status::generic(0x15);
    /// SGL offset invalid.
    pub const INVALID_SGL_OFFSET: Status = Status::generic(0x16);
    /// Host identifier inconsistent format.
    pub const HOSTID_INCONSISTENT_FORMAT: Status = Status::generic(0x18);
    /// Keep alive timer expired.
    pub const KEEP_ALIVE_EXPIRED: Status = Status::generic(0x19);
    /// Keep alive timeout invalid.
    pub const KEEP_ALIVE_INVALID: Status = Status::generic(0x1a);
    /// Command aborted due to preempt and abort.
    pub const ABORTED_PREEMPT: Status = Status::generic(0x1b);
    /// Sanitize failed.
    pub const SANITIZE_FAILED: Status = Status::generic(0x1c);
    /// Sanitize in progress.
    pub const SANITIZE_IN_PROGRESS: Status = Status::generic(0x1d);
    /// Namespace is write protected.
    pub const NAMESPACE_WRITE_PROTECTED: Status = Status::generic(0x20);
    /// Command interrupted.
    pub const COMMAND_INTERRUPTED: Status = Status::generic(0x21);
    /// Transient transport error.
    pub const TRANSIENT_TRANSPORT_ERROR: Status = Status::generic(0x22);
    /// LBA out of range.
    pub const LBA_OUT_OF_RANGE: Status = Status::generic(0x80);
    /// Capacity exceeded.
    pub const CAPACITY_EXCEEDED: Status = Status::generic(0x81);
    /// Namespace not ready.
    pub const NAMESPACE_NOT_READY: Status = Status::generic(0x82);
    /// Reservation conflict.
    pub const RESERVATION_CONFLICT: Status = Status::generic(0x83);
    /// Format in progress.
    pub const FORMAT_IN_PROGRESS: Status = Status::generic(0x84);

    /// Command specific: invalid queue identifier.
    pub const INVALID_QUEUE_IDENTIFIER: Status = Status::new(sct::COMMAND_SPECIFIC, 0x01);
    /// Command specific: invalid queue size.
    pub const INVALID_QUEUE_SIZE: Status = Status::new(sct::COMMAND_SPECIFIC, 0x02);
    /// Command specific: abort command limit exceeded.
    pub const ABORT_COMMAND_LIMIT_EXCEEDED: Status = Status::new(sct::COMMAND_SPECIFIC, 0x03);
    /// Command specific: asynchronous event request limit exceeded.
    pub const ASYNC_EVENT_REQUEST_LIMIT_EXCEEDED: Status = Status::new(sct::COMMAND_SPECIFIC, 0x05);
    /// Command specific: invalid log page.
    pub const INVALID_LOG_PAGE: Status = Status::new(sct::COMMAND_SPECIFIC, 0x09);
    /// Command specific: feature identifier not saveable.
    pub const FEATURE_ID_NOT_SAVEABLE: Status = Status::new(sct::COMMAND_SPECIFIC, 0x0d);
    /// Command specific: conflicting attributes (e.g. DSM on a read-only namespace).
    pub const CONFLICTING_ATTRIBUTES: Status = Status::new(sct::COMMAND_SPECIFIC, 0x80);
    /// Fabrics (command specific): connect incompatible format.
    pub const CONNECT_INCOMPATIBLE_FORMAT: Status = Status::new(sct::COMMAND_SPECIFIC, 0x80);
    /// Fabrics (command specific): connect controller busy.
    pub const CONNECT_CONTROLLER_BUSY: Status = Status::new(sct::COMMAND_SPECIFIC, 0x81);
    /// Fabrics (command specific): connect invalid parameters.
    pub const CONNECT_INVALID_PARAMETERS: Status = Status::new(sct::COMMAND_SPECIFIC, 0x82);
    /// Fabrics (command specific): connect restart discovery.
    pub const CONNECT_RESTART_DISCOVERY: Status = Status::new(sct::COMMAND_SPECIFIC, 0x83);
    /// Fabrics (command specific): connect invalid host.
    pub const CONNECT_INVALID_HOST: Status = Status::new(sct::COMMAND_SPECIFIC, 0x84);
    /// Fabrics (command specific): invalid queue type.
    pub const INVALID_QUEUE_TYPE: Status = Status::new(sct::COMMAND_SPECIFIC, 0x85);
    /// Fabrics (command specific): discover restart.
    pub const DISCOVER_RESTART: Status = Status::new(sct::COMMAND_SPECIFIC, 0x90);
    /// Fabrics (command specific): authentication required.
    pub const AUTH_REQUIRED: Status = Status::new(sct::COMMAND_SPECIFIC, 0x91);

    /// Media error: write fault.
    pub const WRITE_FAULTS: Status = Status::new(sct::MEDIA_ERROR, 0x80);
    /// Media error: unrecovered read error.
    pub const UNRECOVERED_READ_ERROR: Status = Status::new(sct::MEDIA_ERROR, 0x81);
    /// Media error: end-to-end guard check error (DIF verify).
    pub const GUARD_CHECK_ERROR: Status = Status::new(sct::MEDIA_ERROR, 0x82);
    /// Media error: end-to-end application tag check error (DIF verify).
    pub const APPLICATION_TAG_CHECK_ERROR: Status = Status::new(sct::MEDIA_ERROR, 0x83);
    /// Media error: end-to-end reference tag check error (DIF verify).
    pub const REFERENCE_TAG_CHECK_ERROR: Status = Status::new(sct::MEDIA_ERROR, 0x84);
    /// Media error: compare failure.
    pub const COMPARE_FAILURE: Status = Status::new(sct::MEDIA_ERROR, 0x85);
    /// Media error: access denied.
    pub const ACCESS_DENIED: Status = Status::new(sct::MEDIA_ERROR, 0x86);

    /// The same status with DNR set.
    pub const fn with_dnr(self) -> Status {
        Status { dnr: true, ..self }
    }

    /// Whether this is generic SUCCESS.
    pub const fn is_success(&self) -> bool {
        self.sct == sct::GENERIC && self.sc == 0
    }

    /// The 16-bit status field of a CQE (dword 3 bits 31:16) with the phase
    /// tag 0: bit 0 P, bits 8:1 SC, bits 11:9 SCT, bits 13:12 CRD (0),
    /// bit 14 M, bit 15 DNR.
    pub const fn to_field(&self) -> u16 {
        ((self.sc as u16) << 1)
            | (((self.sct & 0x7) as u16) << 9)
            | ((self.more as u16) << 14)
            | ((self.dnr as u16) << 15)
    }

    /// Decodes a CQE status field (phase tag and CRD are ignored).
    pub const fn from_field(field: u16) -> Status {
        Status {
            sct: ((field >> 9) & 0x7) as u8,
            sc: (field >> 1) as u8,
            more: field & (1 << 14) != 0,
            dnr: field & (1 << 15) != 0,
        }
    }

    /// A short name for the generic / transport-relevant codes, for logs.
    pub fn name(&self) -> &'static str {
        match (self.sct, self.sc) {
            (sct::GENERIC, 0x00) => "SUCCESS",
            (sct::GENERIC, 0x01) => "INVALID_OPCODE",
            (sct::GENERIC, 0x02) => "INVALID_FIELD",
            (sct::GENERIC, 0x04) => "DATA_TRANSFER_ERROR",
            (sct::GENERIC, 0x06) => "INTERNAL_DEVICE_ERROR",
            (sct::GENERIC, 0x07) => "ABORTED_BY_REQUEST",
            (sct::GENERIC, 0x08) => "ABORTED_SQ_DELETION",
            (sct::GENERIC, 0x09) => "ABORTED_FAILED_FUSED",
            (sct::GENERIC, 0x0a) => "ABORTED_MISSING_FUSED",
            (sct::GENERIC, 0x0b) => "INVALID_NAMESPACE_OR_FORMAT",
            (sct::GENERIC, 0x0c) => "COMMAND_SEQUENCE_ERROR",
            (sct::GENERIC, 0x0d) => "INVALID_SGL_SEGMENT_DESCRIPTOR",
            (sct::GENERIC, 0x0e) => "INVALID_NUMBER_OF_SGL_DESCRIPTORS",
            (sct::GENERIC, 0x0f) => "DATA_SGL_LENGTH_INVALID",
            (sct::GENERIC, 0x11) => "SGL_DESCRIPTOR_TYPE_INVALID",
            (sct::GENERIC, 0x16) => "INVALID_SGL_OFFSET",
            (sct::GENERIC, 0x80) => "LBA_OUT_OF_RANGE",
            (sct::MEDIA_ERROR, 0x82) => "GUARD_CHECK_ERROR",
            (sct::MEDIA_ERROR, 0x83) => "APPLICATION_TAG_CHECK_ERROR",
            (sct::MEDIA_ERROR, 0x84) => "REFERENCE_TAG_CHECK_ERROR",
            _ => "OTHER",
        }
    }
}

impl From<Status> for u16 {
    fn from(s: Status) -> u16 {
        s.to_field()
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sct {:#x} sc {:#04x} ({}){}{}",
            self.sct,
            self.sc,
            self.name(),
            if self.dnr { " dnr" } else { "" },
            if self.more { " more" } else { "" }
        )
    }
}

/// An NVMe completion queue entry as carried in an NVMe-oF response capsule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Completion {
    /// Command specific dword 0.
    pub cdw0: u32,
    /// Command specific dword 1.
    pub cdw1: u32,
    /// Submission queue head pointer.
    pub sqhd: u16,
    /// Submission queue identifier.
    pub sqid: u16,
    /// Identifier of the command being completed.
    pub cid: u16,
    /// Status (phase tag 0 on the wire).
    pub status: Status,
}

impl Completion {
    /// A completion for `cid` with `status` and every other field 0.
    pub const fn new(cid: u16, status: Status) -> Completion {
        Completion {
            cdw0: 0,
            cdw1: 0,
            sqhd: 0,
            sqid: 0,
            cid,
            status,
        }
    }

    /// The 16 wire bytes (phase tag 0).
    #[inline]
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; COMPLETION_SIZE];
        b[0..4].copy_from_slice(&self.cdw0.to_le_bytes());
        b[4..8].copy_from_slice(&self.cdw1.to_le_bytes());
        b[8..10].copy_from_slice(&self.sqhd.to_le_bytes());
        b[10..12].copy_from_slice(&self.sqid.to_le_bytes());
        b[12..14].copy_from_slice(&self.cid.to_le_bytes());
        b[14..16].copy_from_slice(&self.status.to_field().to_le_bytes());
        b
    }

    /// Decodes 16 wire bytes (the phase tag and CRD bits are dropped).
    pub fn from_bytes(b: &[u8; 16]) -> Completion {
        Completion {
            cdw0: le32(b, 0),
            cdw1: le32(b, 4),
            sqhd: le16(b, 8),
            sqid: le16(b, 10),
            cid: le16(b, 12),
            status: Status::from_field(le16(b, 14)),
        }
    }
}
