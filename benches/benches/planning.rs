//! Planning cost: validating a suite, selecting, estimating and building the plan
//! (priorities over the DAG), and dispatching the whole build through the scheduler core
//! on a virtual clock, for IMVU-shaped suites of 1k, 15k and 100k tests.
//!
//! `cargo bench -p greenlight-benches --bench planning`

use std::collections::BTreeSet;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use greenlight_fixtures::imvu::{ImvuShape, generate};
use greenlight_scheduler::core::SchedulerConfig;
use greenlight_scheduler::estimate::estimate;
use greenlight_scheduler::plan::BuildPlan;
use greenlight_scheduler::select::select;
use greenlight_scheduler::simulate::simulate;
use greenlight_scheduler::suite::Suite;

fn planning(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("plan");
    group.sample_size(10);
    for n_tests in [1_000usize, 15_000, 100_000] {
        let file =
            generate(&ImvuShape { n_tests, total_s: 4.4 * 3600.0 * n_tests as f64 / 15_000.0, ..ImvuShape::default() });
        group.bench_with_input(BenchmarkId::new("validate+select+estimate+plan", n_tests), &file, |bench, file| {
            bench.iter(|| {
                let suite = Suite::new(file.clone()).expect("a generated suite is valid");
                let selected = select(&suite, &BTreeSet::new());
                let estimates = estimate(&suite, |test| test.duration_s);
                black_box(BuildPlan::new(&suite, &selected, &estimates))
            });
        });
        let suite = Suite::new(file.clone()).expect("a generated suite is valid");
        let selected = select(&suite, &BTreeSet::new());
        let estimates = estimate(&suite, |test| test.duration_s);
        let plan = BuildPlan::new(&suite, &selected, &estimates);
        group.bench_with_input(BenchmarkId::new("dispatch whole build, 36 workers", n_tests), &plan, |bench, plan| {
            bench.iter(|| black_box(simulate(plan, &estimates.seconds, 36, SchedulerConfig::default())));
        });
    }
    group.finish();
}

criterion_group!(benches, planning);
criterion_main!(benches);
