//! Fuzz target: the engine's deterministic simulation (`engine::sim`, cargo
//! feature `sim`) driven by the fuzzer's bytes instead of a seeded PRNG.
//!
//! Input layout: 1 header byte (bits 0-5: traffic phase length in units of
//! 16 events, plus 16; bit 6: stress split READ chains), then the bytes the
//! simulated world draws its decisions from (world shape, initiator
//! commands, NIC ordering and faults, host latencies, disconnects). The
//! fuzzer's bytes are followed by a pseudo-random tail derived from them, so
//! the world never runs on all-zero decisions once the input is used up
//! (with constant decisions the simulation's event picker can select the
//! same idle event forever). Any invariant violation, double answer, leaked
//! resource or unfinished teardown the simulation detects is a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nvmf_rdma_engine::sim::{run_bytes, SimOptions};

/// Length of the pseudo-random tail appended to the input.
const TAIL: usize = 1 << 17;

fuzz_target!(|data: &[u8]| {
    let Some((&hdr, rest)) = data.split_first() else {
        return;
    };
    let opts = SimOptions {
        traffic_events: 16 + 16 * u32::from(hdr & 0x3f),
        stress_split_reads: hdr & 0x40 != 0,
        ..SimOptions::default()
    };
    // FNV-1a of the input seeds a xorshift64* stream for the tail.
    let mut x = data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    }) | 1;
    let mut bytes = Vec::with_capacity(rest.len() + TAIL);
    bytes.extend_from_slice(rest);
    while bytes.len() < rest.len() + TAIL {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        bytes.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    if let Err(failure) = run_bytes(&bytes, &opts) {
        panic!("engine simulation failed: {failure}");
    }
});
