//! Codec tests: one unit test per validation rule (each invalid input → the
//! NVMe status or reject reason upstream SPDK returns), round trips and
//! "never panics on arbitrary bytes" properties.

use nvmf_rdma_engine::codec::nvme::{fctype, io_opcode, sct, sgl_subtype, sgl_type, OPC_FABRICS};
use nvmf_rdma_engine::codec::private_data::{CM_ACCEPT_SIZE, CM_REQUEST_SIZE};
use nvmf_rdma_engine::codec::sgl::effective_data_transfer;
use nvmf_rdma_engine::codec::*;
use proptest::prelude::*;

const ICD: u32 = 4096;
const MAX_IO: u32 = 131_072;

fn limits() -> SglLimits {
    SglLimits {
        in_capsule_data_size: ICD,
        max_io_size: MAX_IO,
        max_descriptors: MAX_SGL_DESCRIPTORS,
    }
}

fn cmd_with(opcode: u8, sgl: SglDescriptor) -> Command {
    let mut c = Command::new(opcode, 7);
    c.set_sgl1(sgl);
    c
}

fn raw_sgl(t: u8, st: u8, addr: u64, len: u32) -> SglDescriptor {
    let mut d = SglDescriptor::default();
    d.set_type(t, st);
    d.set_address(addr);
    d.set_unkeyed_length(len);
    d
}

fn list_bytes(descs: &[SglDescriptor]) -> Vec<u8> {
    descs.iter().flat_map(|d| d.raw).collect()
}

fn parse(cmd: &Command, icd: &[u8]) -> Result<DataLayout, SglError> {
    parse_data_layout(cmd, icd, &limits())
}

fn status_of(cmd: &Command, icd: &[u8]) -> Status {
    parse(cmd, icd).expect_err("expected an SGL error").status()
}

// ---- nvme: command, descriptor, completion layouts ----

#[test]
fn command_field_offsets() {
    let mut b = [0u8; 64];
    b[0] = 0x02; // opcode
    b[1] = 0x41; // psdt 01b, fuse FIRST
    b[2..4].copy_from_slice(&0xbeefu16.to_le_bytes());
    b[4..8].copy_from_slice(&0x1234_5678u32.to_le_bytes());
    b[16..24].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
    for (i, n) in (10..16).enumerate() {
        b[n * 4..n * 4 + 4].copy_from_slice(&(0xa0 + i as u32).to_le_bytes());
    }
    b[39] = 0x40; // SGL1 identifier: keyed, address
    let c = Command::from_bytes(&b);
    assert_eq!(c.opcode(), 0x02);
    assert_eq!(c.fuse(), Fuse::First);
    assert_eq!(c.psdt(), 1);
    assert_eq!(c.cid(), 0xbeef);
    assert_eq!(c.nsid(), 0x1234_5678);
    assert_eq!(c.mptr(), 0x1122_3344_5566_7788);
    assert_eq!(
        [
            c.cdw10(),
            c.cdw11(),
            c.cdw12(),
            c.cdw13(),
            c.cdw14(),
            c.cdw15()
        ],
        [0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5]
    );
    assert_eq!(c.cdw(10), Some(0xa0));
    assert_eq!(c.cdw(16), None);
    assert_eq!(c.sgl1().sgl_type(), sgl_type::KEYED_DATA_BLOCK);
    assert_eq!(c.data_transfer(), DataTransfer::ControllerToHost);
    assert!(!c.is_fabrics());
    assert_eq!(c.as_bytes(), &b);
}

#[test]
fn command_setters_round_trip() {
    let mut c = Command::new(io_opcode::WRITE, 0x55aa);
    c.set_fuse(Fuse::Second);
    c.set_psdt(1);
    c.set_nsid(3);
    c.set_cdw10(10);
    c.set_cdw11(11);
    c.set_cdw12(12);
    c.set_cdw13(13);
    c.set_cdw14(14);
    c.set_cdw15(15);
    assert!(c.set_cdw(2, 2));
    assert!(!c.set_cdw(16, 1));
    c.set_sgl1(encode_keyed(0xdead_beef_0000, 4096, 0x1234, true));
    let back = Command::from_bytes(c.as_bytes());
    assert_eq!(back, c);
    assert_eq!(back.fuse(), Fuse::Second);
    assert_eq!(back.psdt(), 1);
    assert_eq!(back.cid(), 0x55aa);
    assert_eq!(back.nsid(), 3);
    assert_eq!(back.cdw(2), Some(2));
    assert_eq!(back.cdw15(), 15);
    let s = back.sgl1();
    assert_eq!(
        (s.sgl_type(), s.subtype()),
        (sgl_type::KEYED_DATA_BLOCK, sgl_subtype::INVALIDATE_KEY)
    );
    assert_eq!(
        (s.address(), s.keyed_length(), s.key()),
        (0xdead_beef_0000, 4096, 0x1234)
    );
    assert_eq!(Command::from_slice(&[0u8; 63]), None);
    assert_eq!(Command::from_slice(&[0u8; 100]), Some(Command::default()));
}

#[test]
fn keyed_descriptor_wire_layout() {
    let d = encode_keyed(0x0102_0304_0506_0708, 0x00ab_cdef, 0x1122_3344, false);
    assert_eq!(
        d.raw,
        [
            0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, // address
            0xef, 0xcd, 0xab, // 24-bit length
            0x44, 0x33, 0x22, 0x11, // key
            0x40, // type 4, subtype 0
        ]
    );
    // Lengths above 24 bits are clamped, never wrapped.
    assert_eq!(
        encode_keyed(0, 1 << 24, 1, false).keyed_length(),
        0x00ff_ffff
    );
    let d = encode_in_capsule(16, 512);
    assert_eq!(d.raw[15], 0x01);
    assert_eq!(d.unkeyed_length(), 512);
    assert_eq!(d.length(), 512);
    let d = encode_last_segment(0, 32);
    assert_eq!(d.raw[15], 0x31);
}

#[test]
fn fabrics_direction_comes_from_fctype() {
    let dir = |t| Command::new_fabrics(t, 1).data_transfer();
    assert_eq!(dir(fctype::CONNECT), DataTransfer::HostToController);
    assert_eq!(dir(fctype::PROPERTY_GET), DataTransfer::None);
    assert_eq!(dir(fctype::PROPERTY_SET), DataTransfer::None);
    assert_eq!(
        dir(fctype::AUTHENTICATION_SEND),
        DataTransfer::HostToController
    );
    assert_eq!(
        dir(fctype::AUTHENTICATION_RECV),
        DataTransfer::ControllerToHost
    );
    assert_eq!(dir(fctype::DISCONNECT), DataTransfer::None);
    let c = Command::new_fabrics(fctype::CONNECT, 1);
    assert!(c.is_fabrics());
    assert_eq!(c.opcode(), OPC_FABRICS);
    assert_eq!(c.fctype(), fctype::CONNECT);
}

#[test]
fn status_field_layout() {
    // SC in bits 8:1, SCT in 11:9, M bit 14, DNR bit 15, phase bit 0 = 0.
    assert_eq!(Status::SUCCESS.to_field(), 0);
    assert_eq!(Status::DATA_SGL_LENGTH_INVALID.to_field(), 0x0f << 1);
    assert_eq!(Status::GUARD_CHECK_ERROR.to_field(), (0x82 << 1) | (2 << 9));
    let s = Status {
        sct: sct::COMMAND_SPECIFIC,
        sc: 0x82,
        dnr: true,
        more: true,
    };
    assert_eq!(s.to_field(), (0x82 << 1) | (1 << 9) | (1 << 14) | (1 << 15));
    assert_eq!(u16::from(s), s.to_field());
    assert_eq!(Status::from_field(s.to_field()), s);
    // Phase and CRD bits are dropped on decode.
    assert_eq!(Status::from_field(0x0001 | (3 << 12)), Status::SUCCESS);
    assert!(Status::SUCCESS.is_success());
    assert!(!Status::ABORTED_BY_REQUEST.is_success());
    assert!(Status::INVALID_FIELD.with_dnr().dnr);
    assert_eq!(
        Status::INVALID_SGL_OFFSET.to_string(),
        "sct 0x0 sc 0x16 (INVALID_SGL_OFFSET)"
    );
}

#[test]
fn status_constants_match_the_spec() {
    let generic = [
        (Status::INVALID_OPCODE, 0x01),
        (Status::INVALID_FIELD, 0x02),
        (Status::INTERNAL_DEVICE_ERROR, 0x06),
        (Status::ABORTED_BY_REQUEST, 0x07),
        (Status::ABORTED_SQ_DELETION, 0x08),
        (Status::ABORTED_MISSING_FUSED, 0x0a),
        (Status::INVALID_NAMESPACE_OR_FORMAT, 0x0b),
        (Status::COMMAND_SEQUENCE_ERROR, 0x0c),
        (Status::INVALID_NUMBER_OF_SGL_DESCRIPTORS, 0x0e),
        (Status::DATA_SGL_LENGTH_INVALID, 0x0f),
        (Status::SGL_DESCRIPTOR_TYPE_INVALID, 0x11),
        (Status::INVALID_SGL_OFFSET, 0x16),
        (Status::LBA_OUT_OF_RANGE, 0x80),
    ];
    for (s, sc) in generic {
        assert_eq!(
            (s.sct, s.sc, s.dnr, s.more),
            (sct::GENERIC, sc, false, false)
        );
    }
    assert_eq!(
        (
            Status::REFERENCE_TAG_CHECK_ERROR.sct,
            Status::REFERENCE_TAG_CHECK_ERROR.sc
        ),
        (sct::MEDIA_ERROR, 0x84)
    );
}

#[test]
fn completion_wire_layout() {
    let c = Completion {
        cdw0: 0x0403_0201,
        cdw1: 0x0807_0605,
        sqhd: 0x0a09,
        sqid: 0x0c0b,
        cid: 0x0e0d,
        status: Status::ABORTED_BY_REQUEST,
    };
    let b = c.to_bytes();
    assert_eq!(&b[..14], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]);
    assert_eq!(u16::from_le_bytes([b[14], b[15]]), 0x07 << 1);
    assert_eq!(Completion::from_bytes(&b), c);
    assert_eq!(Completion::new(5, Status::SUCCESS).to_bytes()[12], 5);
}

// ---- sgl: direction rules (doc §6.1) ----

#[test]
fn no_data_opcode_gives_none_whatever_the_sgl() {
    let c = cmd_with(io_opcode::FLUSH, raw_sgl(0xe, 0xe, u64::MAX, u32::MAX));
    assert_eq!(parse(&c, &[]), Ok(DataLayout::None));
}

#[test]
fn zero_length_sgl_gives_none() {
    for t in [
        sgl_type::DATA_BLOCK,
        sgl_type::BIT_BUCKET,
        sgl_type::SEGMENT,
        sgl_type::LAST_SEGMENT,
        sgl_type::TRANSPORT_DATA_BLOCK,
    ] {
        let c = cmd_with(io_opcode::WRITE, raw_sgl(t, 0x7, 5, 0));
        assert_eq!(effective_data_transfer(&c), DataTransfer::None, "type {t}");
        assert_eq!(parse(&c, &[]), Ok(DataLayout::None));
    }
    // Keyed: only the 24-bit length counts; the key byte overlapping the
    // unkeyed length's top byte does not.
    let c = cmd_with(io_opcode::READ, encode_keyed(0x1000, 0, 0xffff_ffff, false));
    assert_eq!(parse(&c, &[]), Ok(DataLayout::None));
}

#[test]
fn bidirectional_is_invalid_opcode() {
    let c = cmd_with(0x03, encode_keyed(0x1000, 4096, 1, false));
    assert_eq!(
        parse(&c, &[]),
        Err(SglError::Bidirectional { opcode: 0x03 })
    );
    assert_eq!(status_of(&c, &[]), Status::INVALID_OPCODE);
    // Fabrics: direction from fctype 0x07 (bits 11b).
    let mut f = Command::new_fabrics(0x07, 1);
    f.set_sgl1(encode_keyed(0x1000, 16, 1, false));
    assert_eq!(status_of(&f, &[]), Status::INVALID_OPCODE);
    // With a zero-length SGL it moves no data and is accepted.
    let c = cmd_with(0x03, encode_keyed(0x1000, 0, 1, false));
    assert_eq!(parse(&c, &[]), Ok(DataLayout::None));
}

#[test]
fn unsupported_types_are_sgl_descriptor_type_invalid() {
    let cases = [
        (sgl_type::DATA_BLOCK, sgl_subtype::ADDRESS),
        (sgl_type::BIT_BUCKET, 0),
        (sgl_type::SEGMENT, sgl_subtype::OFFSET),
        (sgl_type::LAST_SEGMENT, sgl_subtype::ADDRESS),
        (sgl_type::KEYED_DATA_BLOCK, sgl_subtype::OFFSET),
        (sgl_type::KEYED_DATA_BLOCK, sgl_subtype::TRANSPORT),
        (sgl_type::TRANSPORT_DATA_BLOCK, sgl_subtype::TRANSPORT),
        (0x6, 0x0),
        (sgl_type::VENDOR_SPECIFIC, 0xf),
    ];
    for (t, st) in cases {
        let c = cmd_with(io_opcode::WRITE, raw_sgl(t, st, 0, 0x0100_0100));
        assert_eq!(
            parse(&c, &[0; 4096]),
            Err(SglError::UnsupportedDescriptor {
                sgl_type: t,
                subtype: st
            })
        );
        assert_eq!(status_of(&c, &[]), Status::SGL_DESCRIPTOR_TYPE_INVALID);
    }
}

// ---- sgl: in-capsule data (doc §6.2) ----

#[test]
fn in_capsule_ok() {
    let c = cmd_with(io_opcode::WRITE, encode_in_capsule(0, 4096));
    assert_eq!(
        parse(&c, &[0; 4096]),
        Ok(DataLayout::InCapsule {
            offset: 0,
            len: 4096
        })
    );
    let c = cmd_with(io_opcode::WRITE, encode_in_capsule(96, 4000));
    assert_eq!(parse(&c, &[0; 4096]).map(|l| l.len()), Ok(4000));
}

#[test]
fn in_capsule_offset_beyond_capsule_is_invalid_sgl_offset() {
    let c = cmd_with(io_opcode::WRITE, encode_in_capsule(4097, 1));
    assert_eq!(
        parse(&c, &[0; 8192]),
        Err(SglError::InCapsuleOffset {
            offset: 4097,
            capsule_size: ICD
        })
    );
    assert_eq!(status_of(&c, &[]), Status::INVALID_SGL_OFFSET);
    let c = cmd_with(io_opcode::WRITE, encode_in_capsule(u64::MAX, 1));
    assert_eq!(status_of(&c, &[]), Status::INVALID_SGL_OFFSET);
}

#[test]
fn in_capsule_too_long_is_data_sgl_length_invalid() {
    let c = cmd_with(io_opcode::WRITE, encode_in_capsule(0, 4097));
    assert_eq!(status_of(&c, &[0; 8192]), Status::DATA_SGL_LENGTH_INVALID);
    let c = cmd_with(io_opcode::WRITE, encode_in_capsule(4096, 1));
    assert_eq!(status_of(&c, &[0; 8192]), Status::DATA_SGL_LENGTH_INVALID);
    let c = cmd_with(io_opcode::WRITE, encode_in_capsule(1, u32::MAX));
    assert!(matches!(
        parse(&c, &[]),
        Err(SglError::InCapsuleLength { .. })
    ));
}

#[test]
fn in_capsule_disabled_refuses_any_length() {
    let l = SglLimits {
        in_capsule_data_size: 0,
        ..limits()
    };
    let c = cmd_with(io_opcode::WRITE, encode_in_capsule(0, 1));
    assert_eq!(
        parse_data_layout(&c, &[0; 16], &l).unwrap_err().status(),
        Status::DATA_SGL_LENGTH_INVALID
    );
}

#[test]
fn in_capsule_write_needs_the_bytes_received() {
    let c = cmd_with(io_opcode::WRITE, encode_in_capsule(512, 512));
    assert_eq!(
        parse(&c, &[0; 1023]),
        Err(SglError::InCapsuleTruncated {
            needed: 1024,
            received: 1023
        })
    );
    assert_eq!(status_of(&c, &[0; 1023]), Status::DATA_SGL_LENGTH_INVALID);
    assert!(parse(&c, &[0; 1024]).is_ok());
    // A controller-to-host command with an in-capsule descriptor is not
    // checked against received bytes (upstream does not check direction).
    let c = cmd_with(io_opcode::READ, encode_in_capsule(0, 512));
    assert!(parse(&c, &[]).is_ok());
}

// ---- sgl: single keyed data block (doc §6.3, §6.7) ----

#[test]
fn keyed_ok_and_invalidate() {
    let c = cmd_with(io_opcode::READ, encode_keyed(0xabc000, 4096, 0x77, false));
    let want = KeyedSegment {
        addr: 0xabc000,
        len: 4096,
        rkey: 0x77,
    };
    match parse(&c, &[]) {
        Ok(DataLayout::Keyed {
            segments,
            total_len,
            invalidate_rkey,
        }) => {
            assert_eq!(segments.as_slice(), &[want]);
            assert_eq!(total_len, 4096);
            assert_eq!(invalidate_rkey, None);
        }
        other => panic!("unexpected {other:?}"),
    }
    let c = cmd_with(io_opcode::WRITE, encode_keyed(0xabc000, MAX_IO, 0x77, true));
    match parse(&c, &[]) {
        Ok(DataLayout::Keyed {
            invalidate_rkey,
            total_len,
            ..
        }) => {
            assert_eq!(invalidate_rkey, Some(0x77));
            assert_eq!(total_len, MAX_IO);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn keyed_longer_than_max_io_size_is_data_sgl_length_invalid() {
    let c = cmd_with(io_opcode::READ, encode_keyed(0, MAX_IO + 1, 1, false));
    assert_eq!(
        parse(&c, &[]),
        Err(SglError::KeyedLengthTooLong {
            len: MAX_IO + 1,
            max_io_size: MAX_IO
        })
    );
    assert_eq!(status_of(&c, &[]), Status::DATA_SGL_LENGTH_INVALID);
}

// ---- sgl: last-segment lists (doc §6.4) ----

fn list_cmd(n: usize) -> (Command, Vec<u8>) {
    let descs: Vec<_> = (0..n)
        .map(|i| encode_keyed(0x10_0000 * (i as u64 + 1), 4096, 100 + i as u32, false))
        .collect();
    let c = cmd_with(io_opcode::WRITE, encode_last_segment(0, (n * 16) as u32));
    (c, list_bytes(&descs))
}

#[test]
fn list_of_sixteen_ok() {
    let (c, icd) = list_cmd(16);
    match parse(&c, &icd) {
        Ok(DataLayout::Keyed {
            segments,
            total_len,
            invalidate_rkey,
        }) => {
            assert_eq!(segments.len(), 16);
            assert_eq!(total_len, 16 * 4096);
            assert_eq!(invalidate_rkey, None);
            assert_eq!(segments.as_slice()[15].rkey, 115);
            assert_eq!(segments.as_slice()[0].addr, 0x10_0000);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn list_at_offset_ok() {
    let descs = [encode_keyed(0x1000, 512, 9, false)];
    let mut icd = vec![0u8; 64];
    icd.extend(list_bytes(&descs));
    let c = cmd_with(io_opcode::READ, encode_last_segment(64, 16));
    assert_eq!(parse(&c, &icd).map(|l| l.len()), Ok(512));
}

#[test]
fn list_too_many_descriptors() {
    let (mut c, mut icd) = list_cmd(16);
    icd.extend(list_bytes(&[encode_keyed(0, 1, 1, false)]));
    c.set_sgl1(encode_last_segment(0, 17 * 16));
    assert_eq!(
        parse(&c, &icd),
        Err(SglError::TooManyDescriptors { count: 17, max: 16 })
    );
    assert_eq!(
        status_of(&c, &icd),
        Status::INVALID_NUMBER_OF_SGL_DESCRIPTORS
    );
    // A lower configured limit is honoured.
    let (c, icd) = list_cmd(3);
    let l = SglLimits {
        max_descriptors: 2,
        ..limits()
    };
    assert_eq!(
        parse_data_layout(&c, &icd, &l).unwrap_err().status(),
        Status::INVALID_NUMBER_OF_SGL_DESCRIPTORS
    );
}

#[test]
fn list_length_not_multiple_of_sixteen() {
    let (mut c, icd) = list_cmd(2);
    c.set_sgl1(encode_last_segment(0, 31));
    assert_eq!(parse(&c, &icd), Err(SglError::SegmentLength { len: 31 }));
    assert_eq!(status_of(&c, &icd), Status::DATA_SGL_LENGTH_INVALID);
    c.set_sgl1(encode_last_segment(0, 8));
    assert_eq!(status_of(&c, &icd), Status::DATA_SGL_LENGTH_INVALID);
}

#[test]
fn list_offset_beyond_capsule_is_invalid_sgl_offset() {
    let (mut c, icd) = list_cmd(1);
    c.set_sgl1(encode_last_segment(4097, 16));
    assert_eq!(status_of(&c, &icd), Status::INVALID_SGL_OFFSET);
    c.set_sgl1(encode_last_segment(u64::MAX - 3, 16));
    assert_eq!(status_of(&c, &icd), Status::INVALID_SGL_OFFSET);
}

#[test]
fn list_running_past_capsule_is_data_sgl_length_invalid() {
    let (mut c, icd) = list_cmd(1);
    c.set_sgl1(encode_last_segment(4090, 16));
    assert!(matches!(
        parse(&c, &icd),
        Err(SglError::SegmentOutOfCapsule { .. })
    ));
    assert_eq!(status_of(&c, &icd), Status::DATA_SGL_LENGTH_INVALID);
}

#[test]
fn list_not_received_is_data_sgl_length_invalid() {
    let (c, icd) = list_cmd(4);
    assert_eq!(
        parse(&c, &icd[..63]),
        Err(SglError::InCapsuleTruncated {
            needed: 64,
            received: 63
        })
    );
    assert_eq!(status_of(&c, &icd[..63]), Status::DATA_SGL_LENGTH_INVALID);
}

#[test]
fn list_total_beyond_max_io_size() {
    let descs = [
        encode_keyed(0, MAX_IO, 1, false),
        encode_keyed(0, 1, 1, false),
    ];
    let c = cmd_with(io_opcode::READ, encode_last_segment(0, 32));
    assert_eq!(
        parse(&c, &list_bytes(&descs)),
        Err(SglError::TotalLengthTooLong {
            total: u64::from(MAX_IO) + 1,
            max_io_size: MAX_IO
        })
    );
    assert_eq!(
        status_of(&c, &list_bytes(&descs)),
        Status::DATA_SGL_LENGTH_INVALID
    );
}

#[test]
fn list_with_non_keyed_address_descriptor() {
    let bad = [
        encode_keyed(0, 16, 1, true),
        encode_in_capsule(0, 16),
        raw_sgl(sgl_type::KEYED_DATA_BLOCK, sgl_subtype::OFFSET, 0, 16),
        encode_last_segment(0, 16),
    ];
    for b in bad {
        let descs = [encode_keyed(0, 16, 1, false), b];
        let c = cmd_with(io_opcode::READ, encode_last_segment(0, 32));
        let err = parse(&c, &list_bytes(&descs)).unwrap_err();
        assert!(
            matches!(err, SglError::BadListDescriptor { index: 1, .. }),
            "{err:?}"
        );
        assert_eq!(err.status(), Status::DATA_SGL_LENGTH_INVALID);
    }
}

#[test]
fn list_naming_no_data_is_refused() {
    let descs = [encode_keyed(0, 0, 1, false), encode_keyed(0, 0, 2, false)];
    let c = cmd_with(io_opcode::WRITE, encode_last_segment(0, 32));
    assert_eq!(
        parse(&c, &list_bytes(&descs)),
        Err(SglError::EmptyList { count: 2 })
    );
}

#[test]
fn keyed_segments_capacity() {
    let mut s = KeyedSegments::new();
    assert!(s.is_empty());
    for i in 0..16 {
        s.push(KeyedSegment {
            addr: i,
            len: 1,
            rkey: 2,
        })
        .unwrap();
    }
    let err = s.push(KeyedSegment::default()).unwrap_err();
    assert_eq!(err.status(), Status::INVALID_NUMBER_OF_SGL_DESCRIPTORS);
    assert_eq!(s.len(), 16);
    assert_eq!(s.total_len(), 16);
}

// ---- private data (doc §5.4-5.6) ----

fn req_bytes(recfmt: u16, qid: u16, hrqsize: u16, hsqsize: u16) -> [u8; 32] {
    CmRequest {
        recfmt,
        qid,
        hrqsize,
        hsqsize,
        cntlid: 0xffff,
    }
    .to_bytes()
}

fn connect_limits() -> ConnectLimits {
    ConnectLimits {
        max_queue_depth: 128,
        max_admin_queue_depth: 32,
        device_max_qp_wr: 16384,
        device_max_qp_rd_atom: 16,
        initiator_depth: 16,
        responder_resources: 0,
        srq: false,
    }
}

#[test]
fn cm_request_wire_layout() {
    let b = req_bytes(0, 0x0102, 0x0304, 0x0506);
    assert_eq!(&b[..10], &[0, 0, 2, 1, 4, 3, 6, 5, 0xff, 0xff]);
    assert!(b[10..].iter().all(|&x| x == 0));
    let r = CmRequest::parse(&b).unwrap();
    assert_eq!(
        (r.qid, r.hrqsize, r.hsqsize, r.cntlid),
        (0x0102, 0x0304, 0x0506, 0xffff)
    );
}

#[test]
fn cm_request_short_is_invalid_private_data_length() {
    for len in [0, 1, 10, 31] {
        assert_eq!(
            CmRequest::parse(&req_bytes(0, 1, 32, 31)[..len]),
            Err(RejectStatus::InvalidPrivateDataLength)
        );
    }
    // Longer (padded by the CM) is fine.
    let mut long = req_bytes(0, 1, 32, 31).to_vec();
    long.extend([0xee; 24]);
    assert!(CmRequest::parse(&long).is_ok());
}

#[test]
fn cm_request_recfmt_is_invalid_recfmt() {
    assert_eq!(
        CmRequest::parse(&req_bytes(1, 1, 32, 31)),
        Err(RejectStatus::InvalidRecfmt)
    );
    // Length is checked before recfmt.
    assert_eq!(
        CmRequest::parse(&req_bytes(1, 1, 32, 31)[..8]),
        Err(RejectStatus::InvalidPrivateDataLength)
    );
}

#[test]
fn negotiation_takes_the_minimum() {
    let l = connect_limits();
    let io = CmRequest::parse(&req_bytes(0, 1, 64, 127)).unwrap();
    assert_eq!(
        negotiate(&io, &l),
        Ok(Negotiated {
            max_queue_depth: 64,
            max_read_depth: 16,
            qid: 1
        })
    );
    // hsqsize is 0's based.
    let io = CmRequest::parse(&req_bytes(0, 1, 1024, 99)).unwrap();
    assert_eq!(negotiate(&io, &l).unwrap().max_queue_depth, 100);
    // Admin queue uses the admin depth.
    let admin = CmRequest::parse(&req_bytes(0, 0, 1024, 1023)).unwrap();
    assert_eq!(negotiate(&admin, &l).unwrap().max_queue_depth, 32);
    // Device limits apply.
    let small = ConnectLimits {
        device_max_qp_wr: 8,
        device_max_qp_rd_atom: 4,
        initiator_depth: 255,
        ..l
    };
    let n = negotiate(&io, &small).unwrap();
    assert_eq!((n.max_queue_depth, n.max_read_depth), (8, 4));
    // initiator depth caps the read depth.
    let ird = ConnectLimits {
        initiator_depth: 2,
        ..l
    };
    assert_eq!(negotiate(&io, &ird).unwrap().max_read_depth, 2);
    // hsqsize 0xffff does not overflow.
    let big = CmRequest::parse(&req_bytes(0, 1, 0xffff, 0xffff)).unwrap();
    assert_eq!(negotiate(&big, &l).unwrap().max_queue_depth, 128);
    // responder_resources is only logged.
    let rr = ConnectLimits {
        responder_resources: 4,
        ..l
    };
    assert!(negotiate(&io, &rr).is_ok());
}

#[test]
fn negotiation_rejects() {
    let l = connect_limits();
    let io = CmRequest::parse(&req_bytes(0, 1, 64, 63)).unwrap();
    let no_ird = ConnectLimits {
        initiator_depth: 0,
        ..l
    };
    assert_eq!(negotiate(&io, &no_ird), Err(RejectStatus::InvalidIrd));
    let zero_hrq = CmRequest { hrqsize: 0, ..io };
    assert_eq!(negotiate(&zero_hrq, &l), Err(RejectStatus::InvalidHrqsize));
    let bad_fmt = CmRequest { recfmt: 3, ..io };
    assert_eq!(negotiate(&bad_fmt, &l), Err(RejectStatus::InvalidRecfmt));
    let no_wr = ConnectLimits {
        device_max_qp_wr: 0,
        ..l
    };
    assert_eq!(negotiate(&io, &no_wr), Err(RejectStatus::NoResources));
    let no_atom = ConnectLimits {
        device_max_qp_rd_atom: 0,
        ..l
    };
    assert_eq!(negotiate(&io, &no_atom), Err(RejectStatus::NoResources));
}

#[test]
fn accept_and_reject_wire_layout() {
    let n = Negotiated {
        max_queue_depth: 0x0102,
        max_read_depth: 16,
        qid: 1,
    };
    let a = CmAccept::for_negotiated(&n).to_bytes();
    assert_eq!(a.len(), CM_ACCEPT_SIZE);
    assert_eq!(&a[..4], &[0, 0, 2, 1]);
    assert!(a[4..].iter().all(|&x| x == 0));
    assert_eq!(CmAccept::parse(&a).unwrap().crqsize, 0x0102);
    for (sts, code) in [
        (RejectStatus::InvalidPrivateDataLength, 1u8),
        (RejectStatus::InvalidRecfmt, 2),
        (RejectStatus::InvalidQid, 3),
        (RejectStatus::InvalidHsqsize, 4),
        (RejectStatus::InvalidHrqsize, 5),
        (RejectStatus::NoResources, 6),
        (RejectStatus::InvalidIrd, 7),
        (RejectStatus::InvalidOrd, 8),
        (RejectStatus::InvalidCntlid, 9),
    ] {
        let r = sts.to_reject().to_bytes();
        assert_eq!(r, [0, 0, code, 0]);
        assert_eq!(CmReject::parse(&r).unwrap().status, sts);
    }
    assert_eq!(CM_REQUEST_SIZE, 32);
}

#[test]
fn accept_and_reject_parse_errors() {
    assert_eq!(
        CmAccept::parse(&[0, 0, 1]),
        Err(PrivateDataError::TooShort { len: 3, needed: 4 })
    );
    assert_eq!(
        CmAccept::parse(&[1, 0, 1, 0]),
        Err(PrivateDataError::UnsupportedRecfmt(1))
    );
    assert_eq!(
        CmAccept::parse(&[0; 32]),
        Err(PrivateDataError::ZeroCrqsize)
    );
    assert_eq!(
        CmReject::parse(&[0, 0, 6]),
        Err(PrivateDataError::TooShort { len: 3, needed: 4 })
    );
    assert_eq!(
        CmReject::parse(&[0, 0, 0, 0]),
        Err(PrivateDataError::UnknownRejectStatus(0))
    );
    assert_eq!(
        CmReject::parse(&[0, 0, 10, 0]),
        Err(PrivateDataError::UnknownRejectStatus(10))
    );
    assert_eq!(
        CmReject::parse(&[2, 0, 6, 0]),
        Err(PrivateDataError::UnsupportedRecfmt(2))
    );
}

// ---- properties ----

fn any_status() -> impl Strategy<Value = Status> {
    (0u8..8, any::<u8>(), any::<bool>(), any::<bool>()).prop_map(|(sct, sc, dnr, more)| Status {
        sct,
        sc,
        dnr,
        more,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn command_bytes_round_trip(b in proptest::array::uniform32(any::<u8>()),
                                c in proptest::array::uniform32(any::<u8>())) {
        let mut raw = [0u8; 64];
        raw[..32].copy_from_slice(&b);
        raw[32..].copy_from_slice(&c);
        let cmd = Command::from_bytes(&raw);
        prop_assert_eq!(cmd.as_bytes(), &raw);
        let mut rebuilt = Command::new(cmd.opcode(), cmd.cid());
        rebuilt.set_fuse(cmd.fuse());
        rebuilt.set_psdt(cmd.psdt());
        rebuilt.set_nsid(cmd.nsid());
        rebuilt.set_mptr(cmd.mptr());
        for n in 1..16 {
            if !(4..6).contains(&n) {
                rebuilt.set_cdw(n, cmd.cdw(n).unwrap());
            }
        }
        // Byte 1 bits 5:2 are reserved; copy the whole dword 0 to compare.
        rebuilt.set_cdw(0, cmd.cdw(0).unwrap());
        rebuilt.set_sgl1(cmd.sgl1());
        prop_assert_eq!(rebuilt, cmd);
    }

    #[test]
    fn completion_round_trip(cdw0: u32, cdw1: u32, sqhd: u16, sqid: u16, cid: u16,
                             status in any_status()) {
        let c = Completion { cdw0, cdw1, sqhd, sqid, cid, status };
        let b = c.to_bytes();
        prop_assert_eq!(b[14] & 1, 0, "phase bit must be 0");
        prop_assert_eq!(Completion::from_bytes(&b), c);
    }

    #[test]
    fn completion_parse_total(b in proptest::array::uniform16(any::<u8>())) {
        let c = Completion::from_bytes(&b);
        // Re-encoding keeps everything but the phase and CRD bits.
        let again = c.to_bytes();
        prop_assert_eq!(&again[..14], &b[..14]);
        prop_assert_eq!(u16::from_le_bytes([again[14], again[15]]),
                        u16::from_le_bytes([b[14], b[15]]) & !0x3001);
    }

    #[test]
    fn keyed_round_trip(addr: u64, len in 1u32..=MAX_IO, rkey: u32, inv: bool, read: bool) {
        let op = if read { io_opcode::READ } else { io_opcode::WRITE };
        let c = cmd_with(op, encode_keyed(addr, len, rkey, inv));
        let layout = parse(&c, &[]).unwrap();
        let DataLayout::Keyed { segments, total_len, invalidate_rkey } = layout else {
            return Err(TestCaseError::fail(format!("not keyed: {layout:?}")));
        };
        prop_assert_eq!(segments.as_slice(), &[KeyedSegment { addr, len, rkey }]);
        prop_assert_eq!(total_len, len);
        prop_assert_eq!(invalidate_rkey, inv.then_some(rkey));
    }

    #[test]
    fn in_capsule_round_trip(offset in 0u32..=ICD, len in 1u32..=ICD) {
        prop_assume!(offset + len <= ICD);
        let c = cmd_with(io_opcode::WRITE, encode_in_capsule(u64::from(offset), len));
        prop_assert_eq!(parse(&c, &[0u8; ICD as usize]),
                        Ok(DataLayout::InCapsule { offset, len }));
    }

    #[test]
    fn list_round_trip(segs in proptest::collection::vec((any::<u64>(), 1u32..8192, any::<u32>()), 1..=16),
                       offset in 0usize..256) {
        let descs: Vec<_> = segs.iter().map(|&(a, l, k)| encode_keyed(a, l, k, false)).collect();
        let mut icd = vec![0xa5u8; offset];
        icd.extend(list_bytes(&descs));
        let c = cmd_with(io_opcode::READ, encode_last_segment(offset as u64, (segs.len() * 16) as u32));
        let layout = parse(&c, &icd).unwrap();
        let DataLayout::Keyed { segments, total_len, invalidate_rkey } = layout else {
            return Err(TestCaseError::fail(format!("not keyed: {layout:?}")));
        };
        let want: Vec<_> = segs.iter().map(|&(addr, len, rkey)| KeyedSegment { addr, len, rkey }).collect();
        prop_assert_eq!(segments.as_slice(), &want[..]);
        prop_assert_eq!(u64::from(total_len), segs.iter().map(|s| u64::from(s.1)).sum::<u64>());
        prop_assert_eq!(invalidate_rkey, None);
    }

    /// Whatever the bytes, parsing never panics, and a success is
    /// self-consistent with the limits.
    #[test]
    fn parse_data_layout_total(raw in proptest::collection::vec(any::<u8>(), 64..64 + 600),
                               icd_size in 0u32..8192, max_io in 0u32..(1 << 25),
                               max_desc in 0usize..20, sgl_id: u8, small_len: u8) {
        let mut b = [0u8; 64];
        b.copy_from_slice(&raw[..64]);
        // Bias toward interesting SGLs: real type/subtype, short lengths.
        b[39] = sgl_id;
        if small_len & 1 == 1 { b[32..36].copy_from_slice(&u32::from(small_len).to_le_bytes()); b[24..32].fill(0); }
        let cmd = Command::from_bytes(&b);
        let limits = SglLimits { in_capsule_data_size: icd_size, max_io_size: max_io, max_descriptors: max_desc };
        match parse_data_layout(&cmd, &raw[64..], &limits) {
            Ok(DataLayout::None) => {}
            Ok(DataLayout::InCapsule { offset, len }) => {
                prop_assert!(u64::from(offset) + u64::from(len) <= u64::from(icd_size));
            }
            Ok(DataLayout::Keyed { segments, total_len, .. }) => {
                prop_assert!(total_len <= max_io);
                prop_assert!(!segments.is_empty() && segments.len() <= MAX_SGL_DESCRIPTORS);
                prop_assert_eq!(segments.total_len(), u64::from(total_len));
            }
            Err(e) => {
                let s = e.status();
                prop_assert_eq!(s.sct, sct::GENERIC);
                prop_assert!([0x01, 0x0e, 0x0f, 0x11, 0x16].contains(&s.sc), "{}", e);
                let _ = e.to_string();
            }
        }
    }

    #[test]
    fn cm_request_round_trip(qid: u16, hrqsize: u16, hsqsize: u16, cntlid: u16) {
        let r = CmRequest { recfmt: 0, qid, hrqsize, hsqsize, cntlid };
        prop_assert_eq!(CmRequest::parse(&r.to_bytes()), Ok(r));
    }

    #[test]
    fn cm_accept_round_trip(crqsize in 1u16..) {
        let a = CmAccept { recfmt: 0, crqsize };
        prop_assert_eq!(CmAccept::parse(&a.to_bytes()), Ok(a));
    }

    #[test]
    fn private_data_parse_total(b in proptest::collection::vec(any::<u8>(), 0..80)) {
        let _ = CmRequest::parse(&b);
        let _ = CmAccept::parse(&b);
        let _ = CmReject::parse(&b);
        if let Ok(r) = CmReject::parse(&b) {
            prop_assert_eq!(&r.to_bytes()[..], &b[..4]);
        }
    }

    #[test]
    fn negotiate_within_limits(req in (any::<u16>(), any::<u16>(), any::<u16>(), any::<u16>()),
                               l in (any::<u16>(), any::<u16>(), any::<u32>(), any::<u32>(), any::<u8>(), any::<u8>(), any::<bool>())) {
        let req = CmRequest { recfmt: 0, qid: req.0, hrqsize: req.1, hsqsize: req.2, cntlid: req.3 };
        let limits = ConnectLimits { max_queue_depth: l.0, max_admin_queue_depth: l.1, device_max_qp_wr: l.2,
            device_max_qp_rd_atom: l.3, initiator_depth: l.4, responder_resources: l.5, srq: l.6 };
        if let Ok(n) = negotiate(&req, &limits) {
            let opt = if req.qid == 0 { limits.max_admin_queue_depth } else { limits.max_queue_depth };
            prop_assert!(n.max_queue_depth >= 1 && n.max_queue_depth <= opt);
            prop_assert!(u32::from(n.max_queue_depth) <= limits.device_max_qp_wr);
            prop_assert!(n.max_queue_depth <= req.hrqsize);
            prop_assert!(u32::from(n.max_queue_depth) <= u32::from(req.hsqsize) + 1);
            prop_assert!(n.max_read_depth >= 1 && n.max_read_depth <= opt);
            prop_assert!(u32::from(n.max_read_depth) <= limits.device_max_qp_rd_atom);
            prop_assert!(n.max_read_depth <= u16::from(limits.initiator_depth));
            prop_assert_eq!(n.qid, req.qid);
        }
    }
}
