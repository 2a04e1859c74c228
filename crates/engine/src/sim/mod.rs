//! Deterministic simulation of the engine (feature `sim`, test support only).
//!
//! One run ([`run_seed`], or [`run_bytes`] for a fuzzer) builds a random
//! world from its entropy: one poll group with 1–4 qpairs (all with or all
//! without SRQ), random queue/read/send depths, in-capsule data size, buffer
//! pool size and fault rates. Then it plays, one event at a time:
//!
//! - a simulated **initiator** per qpair sending command capsules (reads,
//!   writes with one or up to 16 keyed descriptors, in-capsule writes, no-data
//!   commands, fabrics commands, fused pairs, invalid SGLs, bidirectional
//!   opcodes, occasional queue-depth overruns) and checking that each command
//!   is answered at most once;
//! - a simulated **NIC** holding every posted WR and RECV, executing them in
//!   order per QP and in any order across QPs, injecting error completions of
//!   every `ibv_wc_status`, moving QPs to error and then flushing every
//!   outstanding WR and RECV with WR_FLUSH_ERR (or losing the flushes),
//!   raising last-WQE-reached for SRQ QPs (or not);
//! - a simulated **host** (SPDK's generic layer) with random execution
//!   latency and failures, a small buffer pool with a FIFO wait queue, aborts,
//!   and disconnects at random points.
//!
//! After **every** event it checks the engine's invariants
//! ([`crate::Qpair::check_invariants`]) and compares the engine's
//! counters with what the simulated NIC actually holds; at the end it checks
//! that every request, receive, buffer and WR came back and that each qpair
//! was destroyed and finished exactly once. A failure carries the seed and the
//! last events.
#![allow(missing_docs)]

mod world;

use std::fmt;

pub use world::{SimReport, World};

/// A source of decisions: a seeded PRNG, or a fuzzer's bytes.
#[derive(Debug, Clone)]
pub enum Entropy<'a> {
    /// xoshiro256** seeded through SplitMix64.
    Seeded([u64; 4]),
    /// Bytes consumed in order; zeros once exhausted.
    Bytes {
        /// The bytes.
        data: &'a [u8],
        /// Next position.
        pos: usize,
    },
}

impl<'a> Entropy<'a> {
    /// A PRNG from a 64-bit seed.
    pub fn seeded(seed: u64) -> Entropy<'static> {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Entropy::Seeded([next(), next(), next(), next()])
    }

    /// Decisions from fuzzer bytes.
    pub fn bytes(data: &'a [u8]) -> Entropy<'a> {
        Entropy::Bytes { data, pos: 0 }
    }

    /// The next 32 random bits.
    pub fn next_u32(&mut self) -> u32 {
        match self {
            Entropy::Seeded(s) => {
                let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
                let t = s[1] << 17;
                s[2] ^= s[0];
                s[3] ^= s[1];
                s[1] ^= s[2];
                s[0] ^= s[3];
                s[2] ^= t;
                s[3] = s[3].rotate_left(45);
                (result >> 32) as u32
            }
            Entropy::Bytes { data, pos } => {
                let mut v = [0u8; 2];
                for b in v.iter_mut() {
                    *b = data.get(*pos).copied().unwrap_or(0);
                    *pos += 1;
                }
                // Repeat the 16 bits so that `below` (which uses the high bits)
                // sees them.
                let v = u32::from(u16::from_le_bytes(v));
                (v << 16) | v
            }
        }
    }

    /// Uniform in `0..n` (0 when `n == 0`).
    pub fn below(&mut self, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        ((u64::from(self.next_u32()) * u64::from(n)) >> 32) as u32
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u32, hi: u32) -> u32 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `per_mille / 1000`.
    pub fn chance(&mut self, per_mille: u32) -> bool {
        self.below(1000) < per_mille
    }

    /// True when a fuzzer's bytes are used up.
    pub fn exhausted(&self) -> bool {
        match self {
            Entropy::Seeded(_) => false,
            Entropy::Bytes { data, pos } => *pos >= data.len(),
        }
    }
}

/// Knobs of a run that are not drawn from the entropy.
#[derive(Debug, Clone, Copy)]
pub struct SimOptions {
    /// Reintroduce SPDK #3463's mistake in every qpair (teeth test).
    pub bug_3463: bool,
    /// Upper bound of the traffic phase, in events (each world draws its own
    /// length between a fifth of this and this). Then traffic stops, every
    /// command on a healthy qpair must be answered (liveness), and the host
    /// tears everything down.
    pub traffic_events: u32,
    /// Hard cap on events; reaching it is a failure (teardown must finish).
    pub max_events: u32,
    /// Make the world likelier to split READ chains and fail them mid-way.
    pub stress_split_reads: bool,
}

impl Default for SimOptions {
    fn default() -> SimOptions {
        SimOptions {
            bug_3463: false,
            traffic_events: 250,
            max_events: 100_000,
            stress_split_reads: false,
        }
    }
}

/// A failed run: what broke, with the seed (when seeded) and the last events.
#[derive(Debug, Clone)]
pub struct SimFailure {
    /// The seed, for [`run_seed`] runs.
    pub seed: Option<u64>,
    /// What broke.
    pub what: String,
    /// Event number at which it broke.
    pub event: u64,
    /// The last events, oldest first.
    pub trace: Vec<String>,
    /// The run used [`SimOptions::stress_split_reads`] (replay needs it too).
    pub stress: bool,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.seed {
            Some(s) => writeln!(
                f,
                "simulation failed, seed {s} (replay: {}ENGINE_SIM_SEED={s}) at event {}: {}",
                if self.stress {
                    "ENGINE_SIM_STRESS=1 "
                } else {
                    ""
                },
                self.event,
                self.what
            )?,
            None => writeln!(
                f,
                "simulation failed at event {}: {}",
                self.event, self.what
            )?,
        }
        writeln!(f, "last events:")?;
        for t in &self.trace {
            writeln!(f, "  {t}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SimFailure {}

/// Runs one seeded world.
pub fn run_seed(seed: u64, opts: &SimOptions) -> Result<SimReport, SimFailure> {
    let mut w = World::new(Entropy::seeded(seed), opts);
    w.run().map_err(|mut f| {
        f.seed = Some(seed);
        f.stress = opts.stress_split_reads;
        f
    })
}

/// Runs one world driven by a fuzzer's bytes.
pub fn run_bytes(data: &[u8], opts: &SimOptions) -> Result<SimReport, SimFailure> {
    let mut w = World::new(Entropy::bytes(data), opts);
    w.run()
}
