//! The farm learns what a suite's shards cost from real shards and plans with it: a suite
//! declares 50 s per shard while its runner (the fixture runner, scale 0.05) really pays
//! 2.5 s. The first build is planned with the declared 50 s; each shard's cost (from its
//! lease to its last result, less its tests' durations) is measured as its last test
//! reports, `/metrics` shows the learned value and the next build's lower bound is
//! computed with it.

mod common;

use std::time::Duration;

use common::{Farm, FarmOptions, test};
use greenlight_shared::suite::SuiteFile;

fn metric(farm: &Farm, name: &str) -> Option<f64> {
    let (_, text) = farm.get_text("/metrics");
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .map(|value| value.trim().parse().expect("a number"))
}

#[test]
fn the_learned_shard_overhead_replaces_the_declared_one_in_planning() {
    let declared_s = 50.0;
    let scale = 0.05;
    let tests = (0..12).map(|index| test(&format!("a/test_{index}.py::test"), &["a"], &[], 4.0)).collect();
    let suite = SuiteFile { name: "overhead".into(), shard_overhead_s: declared_s, tests };
    let farm = Farm::start(&suite, 2, FarmOptions { scale, ..FarmOptions::default() });
    let first = farm.finished_build_of(&farm.repo.head().unwrap());
    let first_bound = first.lower_bound_s.expect("a planned build has a lower bound");
    assert!(first_bound >= declared_s, "planned with the declared overhead: {first:?}");

    let shards = farm.build(first.build_id).shards.len();
    let samples = farm.wait_for("every shard to be learned from", Duration::from_secs(30), |farm| {
        metric(farm, "greenlight_shard_overhead_samples").filter(|&samples| samples as usize == shards)
    });
    assert!(samples >= 1.0);
    let learned = metric(&farm, "greenlight_shard_overhead_seconds").expect("a learned overhead");
    let real_s = declared_s * scale;
    assert!(learned >= real_s * 0.95 && learned < declared_s / 2.0, "learned {learned} s, runner pays {real_s} s");
    // The workers' first shards paid a checkout besides; a start-up figure is learned for
    // them (whatever it is, it is not the declared overhead).
    let startup = metric(&farm, "greenlight_worker_startup_seconds").expect("first shards were measured");
    assert!(startup >= 0.0 && startup < declared_s / 2.0, "start-up {startup} s");

    let second_revision = farm.repo.touch_area("a", "Touch a").unwrap();
    let second = farm.finished_build_of(&second_revision);
    let second_bound = second.lower_bound_s.unwrap();
    assert!(second_bound < declared_s, "planned with the learned {learned} s: {second:?}");
    assert!(second_bound >= learned + startup, "every worker pays the overhead and the start-up: {second:?}");
}
