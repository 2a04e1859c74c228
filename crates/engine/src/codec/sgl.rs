//! Classification and validation of a command's data SGL (SGL1) for the
//! NVMe-oF RDMA transport (upstream `nvmf_rdma_request_parse_icd`,
//! `nvmf_rdma_request_parse_sgl`, `nvmf_rdma_request_fill_iovs_multi_sgl`).
//!
//! Three layouts are accepted, as upstream accepts them:
//! - Data Block (0x0) / Offset (0x1): in-capsule data.
//! - Keyed Data Block (0x4) / Address (0x0) or Invalidate Key (0xF): one
//!   remote buffer.
//! - Last Segment (0x3) / Offset (0x1): a list of Keyed Data Block / Address
//!   descriptors carried in the in-capsule data (at most MSDBD = 16).
//!
//! Everything else is rejected with the NVMe status upstream returns (see
//! [`SglError::status`]). Parsing copies at most 16 descriptors into a fixed
//! array; nothing is allocated.

use super::nvme::{
    sgl_subtype, sgl_type, Command, DataTransfer, SglDescriptor, Status, SGL_DESCRIPTOR_SIZE,
};

/// Maximum number of keyed descriptors in a Last Segment list
/// (upstream `NVMF_DEFAULT_MSDBD`, advertised as MSDBD in Identify).
pub const MAX_SGL_DESCRIPTORS: usize = 16;

/// Transport limits a command's SGL is validated against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SglLimits {
    /// Size of the in-capsule data area of each receive buffer
    /// (`in_capsule_data_size`, default 4096).
    pub in_capsule_data_size: u32,
    /// Largest data transfer of one command (`max_io_size`, default 131072).
    pub max_io_size: u32,
    /// Largest number of descriptors in a Last Segment list; values above
    /// [`MAX_SGL_DESCRIPTORS`] are treated as [`MAX_SGL_DESCRIPTORS`].
    pub max_descriptors: usize,
}

impl Default for SglLimits {
    /// Upstream's default transport options.
    fn default() -> Self {
        SglLimits {
            in_capsule_data_size: 4096,
            max_io_size: 131_072,
            max_descriptors: MAX_SGL_DESCRIPTORS,
        }
    }
}

/// One remote buffer named by a keyed SGL data block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct KeyedSegment {
    /// Remote virtual address.
    pub addr: u64,
    /// Length in bytes (at most 2^24 - 1).
    pub len: u32,
    /// Remote key.
    pub rkey: u32,
}

/// Up to [`MAX_SGL_DESCRIPTORS`] keyed segments in a fixed array (no heap).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct KeyedSegments {
    segs: [KeyedSegment; MAX_SGL_DESCRIPTORS],
    count: u8,
}

impl KeyedSegments {
    /// An empty list.
    pub const fn new() -> KeyedSegments {
        KeyedSegments {
            segs: [KeyedSegment {
                addr: 0,
                len: 0,
                rkey: 0,
            }; MAX_SGL_DESCRIPTORS],
            count: 0,
        }
    }

    /// A list holding one segment.
    pub fn one(s: KeyedSegment) -> KeyedSegments {
        let mut l = KeyedSegments::new();
        l.segs[0] = s;
        l.count = 1;
        l
    }

    /// The segments, in host order.
    pub fn as_slice(&self) -> &[KeyedSegment] {
        &self.segs[..usize::from(self.count)]
    }

    /// Appends a segment; [`SglError::TooManyDescriptors`] when full.
    pub fn push(&mut self, s: KeyedSegment) -> Result<(), SglError> {
        let n = usize::from(self.count);
        if n >= MAX_SGL_DESCRIPTORS {
            return Err(SglError::TooManyDescriptors {
                count: n + 1,
                max: MAX_SGL_DESCRIPTORS,
            });
        }
        self.segs[n] = s;
        self.count += 1;
        Ok(())
    }

    /// Number of segments.
    pub fn len(&self) -> usize {
        usize::from(self.count)
    }

    /// Whether there is no segment.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Sum of the segment lengths.
    pub fn total_len(&self) -> u64 {
        self.as_slice().iter().map(|s| u64::from(s.len)).sum()
    }
}

impl core::fmt::Debug for KeyedSegments {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

/// Where a command's data lives, once its SGL has been validated.
// The keyed variant carries up to 16 segments inline on purpose: the per-I/O
// path must not allocate, so boxing is not an option.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataLayout {
    /// No data transfer (the opcode moves no data, or the SGL length is 0).
    None,
    /// In-capsule data: `len` bytes at `offset` of the in-capsule data area
    /// of the receive buffer (already there for a host-to-controller
    /// transfer).
    InCapsule {
        /// Offset into the in-capsule data area.
        offset: u32,
        /// Length in bytes.
        len: u32,
    },
    /// Remote host memory named by one or more keyed descriptors; the target
    /// moves it with one RDMA READ or WRITE work request per segment.
    Keyed {
        /// The remote buffers, in order.
        segments: KeyedSegments,
        /// Sum of the segment lengths (at most `max_io_size`).
        total_len: u32,
        /// The key the host asked to invalidate (subtype Invalidate Key) —
        /// the response may be sent with SEND_WITH_INV when the device
        /// supports it.
        invalidate_rkey: Option<u32>,
    },
}

impl DataLayout {
    /// Number of data bytes the command moves.
    pub fn len(&self) -> u32 {
        match self {
            DataLayout::None => 0,
            DataLayout::InCapsule { len, .. } => *len,
            DataLayout::Keyed { total_len, .. } => *total_len,
        }
    }

    /// Whether the command moves no data.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A [`DataLayout`] without its keyed segments (16 bytes instead of 280):
/// what [`parse_data_shape`] returns while it writes the segments into the
/// caller's array, so a per-I/O path never moves the 16-segment array by
/// value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataShape {
    /// No data transfer.
    None,
    /// In-capsule data (as [`DataLayout::InCapsule`]).
    InCapsule {
        /// Offset into the in-capsule data area.
        offset: u32,
        /// Length in bytes.
        len: u32,
    },
    /// Keyed descriptors (as [`DataLayout::Keyed`]): the first `count`
    /// entries of the caller's segment array.
    Keyed {
        /// Number of segments written (1..=[`MAX_SGL_DESCRIPTORS`]).
        count: u8,
        /// Sum of the segment lengths.
        total_len: u32,
        /// The key the host asked to invalidate, if any.
        invalidate_rkey: Option<u32>,
    },
}

impl DataShape {
    /// Number of data bytes the command moves.
    pub fn len(&self) -> u32 {
        match *self {
            DataShape::None => 0,
            DataShape::InCapsule { len, .. } => len,
            DataShape::Keyed { total_len, .. } => total_len,
        }
    }

    /// Whether the command moves no data.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a command's SGL was refused. Each variant carries the offending
/// values; [`SglError::status`] is the NVMe status the host receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SglError {
    /// The opcode asks for a bidirectional transfer, which RDMA does not
    /// support (INVALID_OPCODE).
    #[error("opcode {opcode:#04x} asks for a bidirectional data transfer")]
    Bidirectional {
        /// The opcode (or fabrics command type).
        opcode: u8,
    },
    /// SGL1 has a type/subtype the RDMA transport does not accept
    /// (SGL_DESCRIPTOR_TYPE_INVALID).
    #[error("SGL1 type {sgl_type:#x} subtype {subtype:#x} is not supported")]
    UnsupportedDescriptor {
        /// Descriptor type.
        sgl_type: u8,
        /// Descriptor subtype.
        subtype: u8,
    },
    /// In-capsule data offset beyond the in-capsule data area
    /// (INVALID_SGL_OFFSET).
    #[error("in-capsule data offset {offset} exceeds in_capsule_data_size {capsule_size}")]
    InCapsuleOffset {
        /// The offset from SGL1.
        offset: u64,
        /// `in_capsule_data_size`.
        capsule_size: u32,
    },
    /// In-capsule data runs past the in-capsule data area
    /// (DATA_SGL_LENGTH_INVALID).
    #[error(
        "in-capsule data length {len} at offset {offset} exceeds in_capsule_data_size {capsule_size}"
    )]
    InCapsuleLength {
        /// The offset from SGL1.
        offset: u64,
        /// The length from SGL1.
        len: u32,
        /// `in_capsule_data_size`.
        capsule_size: u32,
    },
    /// The capsule carried fewer in-capsule bytes than SGL1 names
    /// (DATA_SGL_LENGTH_INVALID).
    #[error("SGL1 names in-capsule bytes up to {needed} but the capsule carried {received}")]
    InCapsuleTruncated {
        /// End offset SGL1 names.
        needed: u64,
        /// In-capsule bytes received after the 64-byte command.
        received: usize,
    },
    /// A keyed data block longer than `max_io_size`
    /// (DATA_SGL_LENGTH_INVALID).
    #[error("keyed SGL length {len} exceeds max_io_size {max_io_size}")]
    KeyedLengthTooLong {
        /// The length from SGL1.
        len: u32,
        /// `max_io_size`.
        max_io_size: u32,
    },
    /// The descriptors of a Last Segment list add up to more than
    /// `max_io_size` (DATA_SGL_LENGTH_INVALID).
    #[error("SGL list total length {total} exceeds max_io_size {max_io_size}")]
    TotalLengthTooLong {
        /// Sum of the descriptor lengths.
        total: u64,
        /// `max_io_size`.
        max_io_size: u32,
    },
    /// The descriptors of a Last Segment list add up to 0 bytes
    /// (DATA_SGL_LENGTH_INVALID).
    #[error("SGL list of {count} descriptors names no data")]
    EmptyList {
        /// Number of descriptors.
        count: usize,
    },
    /// A Last Segment length that is not a whole number of 16-byte
    /// descriptors (DATA_SGL_LENGTH_INVALID).
    #[error("last segment length {len} is not a multiple of 16")]
    SegmentLength {
        /// The length from SGL1.
        len: u32,
    },
    /// A Last Segment list naming no descriptor, or more than MSDBD
    /// (INVALID_NUMBER_OF_SGL_DESCRIPTORS).
    #[error("SGL list of {count} descriptors (allowed 1..={max})")]
    TooManyDescriptors {
        /// Number of descriptors named.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A Last Segment list starting beyond the in-capsule data area
    /// (INVALID_SGL_OFFSET).
    #[error("last segment offset {offset} exceeds in_capsule_data_size {capsule_size}")]
    SegmentOffset {
        /// The offset from SGL1.
        offset: u64,
        /// `in_capsule_data_size`.
        capsule_size: u32,
    },
    /// A Last Segment list running past the in-capsule data area
    /// (DATA_SGL_LENGTH_INVALID).
    #[error("last segment of {len} bytes at offset {offset} exceeds in_capsule_data_size {capsule_size}")]
    SegmentOutOfCapsule {
        /// The offset from SGL1.
        offset: u64,
        /// The length from SGL1.
        len: u32,
        /// `in_capsule_data_size`.
        capsule_size: u32,
    },
    /// A descriptor in a Last Segment list that is not a Keyed Data Block
    /// with subtype Address (DATA_SGL_LENGTH_INVALID, as upstream).
    #[error("SGL list descriptor {index} has type {sgl_type:#x} subtype {subtype:#x}, expected keyed data block / address")]
    BadListDescriptor {
        /// Index in the list.
        index: usize,
        /// Its type.
        sgl_type: u8,
        /// Its subtype.
        subtype: u8,
    },
}

impl SglError {
    /// The NVMe status upstream completes the command with (upstream doc §6.11).
    pub fn status(&self) -> Status {
        match self {
            SglError::Bidirectional { .. } => Status::INVALID_OPCODE,
            SglError::UnsupportedDescriptor { .. } => Status::SGL_DESCRIPTOR_TYPE_INVALID,
            SglError::InCapsuleOffset { .. } | SglError::SegmentOffset { .. } => {
                Status::INVALID_SGL_OFFSET
            }
            SglError::TooManyDescriptors { .. } => Status::INVALID_NUMBER_OF_SGL_DESCRIPTORS,
            SglError::InCapsuleLength { .. }
            | SglError::InCapsuleTruncated { .. }
            | SglError::KeyedLengthTooLong { .. }
            | SglError::TotalLengthTooLong { .. }
            | SglError::EmptyList { .. }
            | SglError::SegmentLength { .. }
            | SglError::SegmentOutOfCapsule { .. }
            | SglError::BadListDescriptor { .. } => Status::DATA_SGL_LENGTH_INVALID,
        }
    }
}

/// The data direction of a command after upstream's rule that an SGL1 of
/// length 0 moves no data (`spdk_nvmf_req_get_xfer`): the opcode's
/// direction, or [`DataTransfer::None`] when SGL1 is a Data Block, Bit
/// Bucket, Segment, Last Segment or Transport Data Block with a 32-bit
/// length of 0, or a Keyed Data Block with a 24-bit length of 0.
pub fn effective_data_transfer(cmd: &Command) -> DataTransfer {
    let xfer = cmd.data_transfer();
    if xfer == DataTransfer::None {
        return xfer;
    }
    let sgl = cmd.sgl1();
    let zero = match sgl.sgl_type() {
        sgl_type::DATA_BLOCK
        | sgl_type::BIT_BUCKET
        | sgl_type::SEGMENT
        | sgl_type::LAST_SEGMENT
        | sgl_type::TRANSPORT_DATA_BLOCK => sgl.unkeyed_length() == 0,
        sgl_type::KEYED_DATA_BLOCK => sgl.keyed_length() == 0,
        _ => false,
    };
    if zero {
        DataTransfer::None
    } else {
        xfer
    }
}

/// Validates SGL1 of `cmd` and says where its data lives.
///
/// `in_capsule` is the in-capsule data actually received after the 64-byte
/// command (receive byte length minus 64). For a host-to-controller
/// transfer with in-capsule data, and for a Last Segment list, the bytes SGL1
/// names must have been received (upstream only checks them against
/// `in_capsule_data_size`; reading stale receive-buffer bytes is refused here
/// with DATA_SGL_LENGTH_INVALID).
///
/// Returns the whole layout by value; the engine's per-I/O path uses
/// [`parse_data_shape`], which does the same checks.
pub fn parse_data_layout(
    cmd: &Command,
    in_capsule: &[u8],
    limits: &SglLimits,
) -> Result<DataLayout, SglError> {
    let mut segments = KeyedSegments::new();
    let shape = parse_data_shape(cmd, in_capsule, limits, &mut segments.segs)?;
    Ok(match shape {
        DataShape::None => DataLayout::None,
        DataShape::InCapsule { offset, len } => DataLayout::InCapsule { offset, len },
        DataShape::Keyed {
            count,
            total_len,
            invalidate_rkey,
        } => {
            segments.count = count;
            DataLayout::Keyed {
                segments,
                total_len,
                invalidate_rkey,
            }
        }
    })
}

/// [`parse_data_layout`] writing the keyed segments into `segments` (the
/// first `count` entries of [`DataShape::Keyed`]; the others are left as
/// they were) and returning only the 16-byte [`DataShape`]. Inlined (the
/// engine parses every capsule with it); the uncommon layouts are calls.
#[inline]
pub fn parse_data_shape(
    cmd: &Command,
    in_capsule: &[u8],
    limits: &SglLimits,
    segments: &mut [KeyedSegment; MAX_SGL_DESCRIPTORS],
) -> Result<DataShape, SglError> {
    let xfer = effective_data_transfer(cmd);
    match xfer {
        DataTransfer::None => return Ok(DataShape::None),
        DataTransfer::Bidirectional => {
            let opcode = if cmd.is_fabrics() {
                cmd.fctype()
            } else {
                cmd.opcode()
            };
            return Err(SglError::Bidirectional { opcode });
        }
        DataTransfer::HostToController | DataTransfer::ControllerToHost => {}
    }
    let sgl = cmd.sgl1();
    match (sgl.sgl_type(), sgl.subtype()) {
        (sgl_type::DATA_BLOCK, sgl_subtype::OFFSET) => {
            parse_in_capsule(&sgl, xfer, in_capsule, limits)
        }
        (sgl_type::KEYED_DATA_BLOCK, sgl_subtype::ADDRESS | sgl_subtype::INVALIDATE_KEY) => {
            parse_keyed(&sgl, limits, segments)
        }
        (sgl_type::LAST_SEGMENT, sgl_subtype::OFFSET) => {
            parse_list(&sgl, in_capsule, limits, segments)
        }
        (t, s) => Err(SglError::UnsupportedDescriptor {
            sgl_type: t,
            subtype: s,
        }),
    }
}

#[inline(never)]
fn parse_in_capsule(
    sgl: &SglDescriptor,
    xfer: DataTransfer,
    in_capsule: &[u8],
    limits: &SglLimits,
) -> Result<DataShape, SglError> {
    let offset = sgl.address();
    let len = sgl.unkeyed_length();
    let capsule_size = limits.in_capsule_data_size;
    if offset > u64::from(capsule_size) {
        return Err(SglError::InCapsuleOffset {
            offset,
            capsule_size,
        });
    }
    // offset <= capsule_size, so it fits in u32 and the subtraction holds.
    let offset32 = offset as u32;
    if len > capsule_size - offset32 {
        return Err(SglError::InCapsuleLength {
            offset,
            len,
            capsule_size,
        });
    }
    let end = offset + u64::from(len);
    if xfer == DataTransfer::HostToController && end > in_capsule.len() as u64 {
        return Err(SglError::InCapsuleTruncated {
            needed: end,
            received: in_capsule.len(),
        });
    }
    Ok(DataShape::InCapsule {
        offset: offset32,
        len,
    })
}

#[inline]
fn parse_keyed(
    sgl: &SglDescriptor,
    limits: &SglLimits,
    segments: &mut [KeyedSegment; MAX_SGL_DESCRIPTORS],
) -> Result<DataShape, SglError> {
    let len = sgl.keyed_length();
    if len > limits.max_io_size {
        return Err(SglError::KeyedLengthTooLong {
            len,
            max_io_size: limits.max_io_size,
        });
    }
    let rkey = sgl.key();
    let invalidate_rkey = (sgl.subtype() == sgl_subtype::INVALIDATE_KEY).then_some(rkey);
    segments[0] = KeyedSegment {
        addr: sgl.address(),
        len,
        rkey,
    };
    Ok(DataShape::Keyed {
        count: 1,
        total_len: len,
        invalidate_rkey,
    })
}

#[inline(never)]
fn parse_list(
    sgl: &SglDescriptor,
    in_capsule: &[u8],
    limits: &SglLimits,
    segments: &mut [KeyedSegment; MAX_SGL_DESCRIPTORS],
) -> Result<DataShape, SglError> {
    let offset = sgl.address();
    let len = sgl.unkeyed_length();
    let capsule_size = limits.in_capsule_data_size;
    if len % SGL_DESCRIPTOR_SIZE as u32 != 0 {
        return Err(SglError::SegmentLength { len });
    }
    let count = (len / SGL_DESCRIPTOR_SIZE as u32) as usize;
    let max = limits.max_descriptors.min(MAX_SGL_DESCRIPTORS);
    if count == 0 || count > max {
        return Err(SglError::TooManyDescriptors { count, max });
    }
    if offset > u64::from(capsule_size) {
        return Err(SglError::SegmentOffset {
            offset,
            capsule_size,
        });
    }
    let end = offset + u64::from(len);
    if end > u64::from(capsule_size) {
        return Err(SglError::SegmentOutOfCapsule {
            offset,
            len,
            capsule_size,
        });
    }
    // end <= capsule_size (a u32), so both fit in usize.
    let list =
        in_capsule
            .get(offset as usize..end as usize)
            .ok_or(SglError::InCapsuleTruncated {
                needed: end,
                received: in_capsule.len(),
            })?;
    let descriptors = || {
        list.chunks_exact(SGL_DESCRIPTOR_SIZE).map(|c| {
            let mut raw = [0u8; SGL_DESCRIPTOR_SIZE];
            raw.copy_from_slice(c);
            SglDescriptor::from_bytes(raw)
        })
    };
    // Upstream order: the total first, then each descriptor's type.
    let total: u64 = descriptors().map(|d| u64::from(d.keyed_length())).sum();
    if total > u64::from(limits.max_io_size) {
        return Err(SglError::TotalLengthTooLong {
            total,
            max_io_size: limits.max_io_size,
        });
    }
    // count <= MAX_SGL_DESCRIPTORS (checked above): every index fits.
    for ((index, d), slot) in descriptors().enumerate().zip(segments.iter_mut()) {
        if d.sgl_type() != sgl_type::KEYED_DATA_BLOCK || d.subtype() != sgl_subtype::ADDRESS {
            return Err(SglError::BadListDescriptor {
                index,
                sgl_type: d.sgl_type(),
                subtype: d.subtype(),
            });
        }
        *slot = KeyedSegment {
            addr: d.address(),
            len: d.keyed_length(),
            rkey: d.key(),
        };
    }
    if total == 0 {
        return Err(SglError::EmptyList { count });
    }
    Ok(DataShape::Keyed {
        count: count as u8,
        // total <= max_io_size, a u32.
        total_len: total as u32,
        invalidate_rkey: None,
    })
}

/// A Keyed Data Block descriptor (subtype Address, or Invalidate Key when
/// `invalidate`), as an initiator writes it. `len` above 2^24 - 1 is clamped.
pub fn encode_keyed(addr: u64, len: u32, rkey: u32, invalidate: bool) -> SglDescriptor {
    let mut d = SglDescriptor::default();
    d.set_type(
        sgl_type::KEYED_DATA_BLOCK,
        if invalidate {
            sgl_subtype::INVALIDATE_KEY
        } else {
            sgl_subtype::ADDRESS
        },
    );
    d.set_address(addr);
    d.set_keyed_length(len);
    d.set_key(rkey);
    d
}

/// A Data Block / Offset descriptor: `len` bytes of in-capsule data at
/// `offset` of the in-capsule data area.
pub fn encode_in_capsule(offset: u64, len: u32) -> SglDescriptor {
    let mut d = SglDescriptor::default();
    d.set_type(sgl_type::DATA_BLOCK, sgl_subtype::OFFSET);
    d.set_address(offset);
    d.set_unkeyed_length(len);
    d
}

/// A Last Segment / Offset descriptor: a list of `len / 16` keyed
/// descriptors at `offset` of the in-capsule data area.
pub fn encode_last_segment(offset: u64, len: u32) -> SglDescriptor {
    let mut d = SglDescriptor::default();
    d.set_type(sgl_type::LAST_SEGMENT, sgl_subtype::OFFSET);
    d.set_address(offset);
    d.set_unkeyed_length(len);
    d
}
