//! Fuzz target: command capsule + SGL parsing (`engine::codec::sgl`), plus
//! the completion codec.
//!
//! Input layout: 5 header bytes choosing the limits (in_capsule_data_size
//! u16 LE, max_io_size u16 LE scaled by 32, max_descriptors byte), then the
//! 64-byte command, then the in-capsule data actually "received".
#![no_main]

use libfuzzer_sys::fuzz_target;
use nvmf_rdma_engine::codec::sgl::{encode_keyed, parse_data_layout, DataLayout, SglLimits};
use nvmf_rdma_engine::codec::{Command, Completion, Status, MAX_SGL_DESCRIPTORS};

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 + 64 {
        return;
    }
    let (hdr, rest) = data.split_at(5);
    let limits = SglLimits {
        in_capsule_data_size: u32::from(u16::from_le_bytes([hdr[0], hdr[1]])),
        max_io_size: u32::from(u16::from_le_bytes([hdr[2], hdr[3]])) << 5,
        max_descriptors: usize::from(hdr[4] % 20),
    };
    let (sqe, icd) = rest.split_at(64);
    let Some(cmd) = Command::from_slice(sqe) else {
        return;
    };
    let _ = format!("{cmd:?}");
    match parse_data_layout(&cmd, icd, &limits) {
        Ok(DataLayout::None) => {}
        Ok(DataLayout::InCapsule { offset, len }) => {
            assert!(u64::from(offset) + u64::from(len) <= u64::from(limits.in_capsule_data_size));
        }
        Ok(DataLayout::Keyed {
            segments,
            total_len,
            invalidate_rkey,
        }) => {
            assert!(total_len <= limits.max_io_size);
            assert!(!segments.is_empty() && segments.len() <= MAX_SGL_DESCRIPTORS);
            assert_eq!(segments.total_len(), u64::from(total_len));
            if segments.len() == 1 && cmd.sgl1().is_keyed() {
                // A single keyed descriptor re-encodes to the same bytes.
                let s = segments.as_slice()[0];
                let again = encode_keyed(s.addr, s.len, s.rkey, invalidate_rkey.is_some());
                assert_eq!(again, cmd.sgl1());
            }
        }
        Err(e) => {
            let s = e.status();
            assert_eq!(s.sct, 0);
            assert!([0x01, 0x0e, 0x0f, 0x11, 0x16].contains(&s.sc), "{e}");
            let _ = e.to_string();
        }
    }
    // The first 16 bytes as a completion: decode, re-encode, compare
    // (phase and CRD bits are not kept).
    let mut cqe = [0u8; 16];
    cqe.copy_from_slice(&sqe[..16]);
    let c = Completion::from_bytes(&cqe);
    let again = c.to_bytes();
    assert_eq!(again[..14], cqe[..14]);
    let field = u16::from_le_bytes([cqe[14], cqe[15]]);
    assert_eq!(u16::from_le_bytes([again[14], again[15]]), field & !0x3001);
    assert_eq!(Status::from_field(c.status.to_field()), c.status);
});
