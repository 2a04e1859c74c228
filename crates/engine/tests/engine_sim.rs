//! Deterministic simulation campaign over the engine (see `engine::sim`).
//!
//! - `ENGINE_SIM_SEED=<n>`: replay one seed (prints its report).
//! - `ENGINE_SIM_SEEDS=<n>`: campaign size (default 20,000 seeds).
//! - `ENGINE_SIM_START=<n>`: first seed of the campaign (default 0).
//! - `ENGINE_SIM_STRESS=1`: worlds biased to split READ chains and fail them.

use std::time::Instant;

use nvmf_rdma_engine::sim::{run_seed, SimOptions, SimReport};

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    match v.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => panic!("{name}={v:?} is not a number"),
    }
}

fn add(total: &mut SimReport, r: &SimReport) {
    total.events += r.events;
    total.commands += r.commands;
    total.responses += r.responses;
    total.qpairs += r.qpairs;
    total.forced_drains += r.forced_drains;
    total.error_completions += r.error_completions;
    total.split_reads += r.split_reads;
    total.post_failures += r.post_failures;
    total.late_capsules += r.late_capsules;
}

#[test]
fn simulation_campaign() {
    let opts = SimOptions {
        stress_split_reads: env_u64("ENGINE_SIM_STRESS").unwrap_or(0) != 0,
        ..SimOptions::default()
    };
    if let Some(seed) = env_u64("ENGINE_SIM_SEED") {
        match run_seed(seed, &opts) {
            Ok(r) => println!("seed {seed}: {r:?}"),
            Err(f) => panic!("{f}"),
        }
        return;
    }
    let seeds = env_u64("ENGINE_SIM_SEEDS").unwrap_or(20_000);
    let start = env_u64("ENGINE_SIM_START").unwrap_or(0);
    let t0 = Instant::now();
    let mut total = SimReport::default();
    for seed in start..start + seeds {
        match run_seed(seed, &opts) {
            Ok(r) => add(&mut total, &r),
            Err(f) => panic!("{f}"),
        }
    }
    let secs = t0.elapsed().as_secs_f64().max(1e-9);
    println!(
        "engine simulation: {seeds} seeds, {} events in {secs:.2} s: {:.0} seeds/s, {:.0} events/s",
        total.events,
        seeds as f64 / secs,
        total.events as f64 / secs
    );
    println!("totals: {total:?}");
    if seeds >= 20_000 {
        assert!(
            total.events >= 1_000_000,
            "campaign too small: {} events",
            total.events
        );
    }
    // The campaign must actually reach the interesting paths.
    assert!(total.split_reads > 0, "no READ chain was ever split");
    assert!(
        total.forced_drains > 0 || seeds < 1000,
        "no drain ever hit its deadline"
    );
    assert!(
        total.error_completions > 0,
        "no error completion was ever delivered"
    );
    assert!(
        total.late_capsules > 0 || seeds < 1000,
        "no capsule ever arrived on a qpair that was going away"
    );
}
