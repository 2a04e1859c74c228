//! The harness has teeth: with SPDK #3463's mistake put back into the engine
//! (a request completed on the READ error path is left linked in the
//! pending-read queue and pushed onto the free queue over the same link), the
//! simulation must catch it within 1,000 seeds.

use nvmf_rdma_engine::sim::{run_seed, SimOptions};

#[test]
fn simulation_catches_reintroduced_bug_3463_within_1000_seeds() {
    let opts = SimOptions {
        bug_3463: true,
        ..SimOptions::default()
    };
    let mut caught = None;
    let mut count = 0;
    for seed in 0..1000u64 {
        if let Err(f) = run_seed(seed, &opts) {
            count += 1;
            caught.get_or_insert(f);
        }
    }
    println!("the #3463 mistake was caught in {count} of 1000 seeds");
    let f = caught.expect("the simulation did not catch the #3463 mistake in 1,000 seeds");
    println!("caught: {f}");
    assert!(
        f.what.contains("invariant violated"),
        "caught, but not by an invariant check: {}",
        f.what
    );
}

#[test]
fn same_seeds_pass_without_the_bug() {
    let opts = SimOptions::default();
    for seed in 0..1000u64 {
        if let Err(f) = run_seed(seed, &opts) {
            panic!("{f}");
        }
    }
}
