//! What one lease costs the scheduler, that is how long the master holds its farm lock to
//! answer a worker asking for work: fitted against finer sizing, side by side in one run,
//! on a 15k-test IMVU-shaped build with exact history (so fitted sizing applies) and 50
//! workers. Each lease is timed alone (the state it starts from is built untimed):
//!
//! - `start`: the build has just been added and the 50 idle workers ask one after the
//!   other at t = 0, as they do when a build starts (each woken by `WorkAvailable`);
//!   every one of the 50 leases is a sample, and the first (the one that plans a fitted
//!   split) is also shown alone;
//! - `again after its shard`: worker 0 has run its whole shard (each test reported passed
//!   at its estimate, the lease finished) while the others run theirs, and asks again.
//!
//! `cargo bench -p greenlight-benches --bench lease`; `GREENLIGHT_BENCH_ROUNDS=N` sets how
//! many times each is repeated (30 by default).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use greenlight_fixtures::imvu::{ImvuShape, generate};
use greenlight_scheduler::core::{BuildId, ReportedTest, Scheduler, SchedulerConfig, ShardSizing, WorkerId};
use greenlight_scheduler::estimate::estimate;
use greenlight_scheduler::plan::BuildPlan;
use greenlight_scheduler::select::select;
use greenlight_scheduler::suite::Suite;
use greenlight_shared::api::TestStatus;

const N_WORKERS: u64 = 50;

/// A scheduler with `plan` added and the fleet joined, at t = 0.
fn started(plan: &BuildPlan, sizing: ShardSizing) -> Scheduler {
    let mut scheduler = Scheduler::new(SchedulerConfig { shard_sizing: sizing, ..SchedulerConfig::default() });
    for worker in 0..N_WORKERS {
        scheduler.worker_joined(WorkerId(worker), 0.0);
        // As the master's workers say they do: a fitted lease takes its chains whole.
        scheduler.worker_holds_dependents(WorkerId(worker), true);
    }
    scheduler.add_build(BuildId(1), plan.clone(), 0.0).expect("a fresh scheduler");
    scheduler
}

/// The 50 leases of a build's start, each timed; and how many tests each got.
fn start_wave(plan: &BuildPlan, sizing: ShardSizing) -> (Vec<Duration>, Vec<usize>) {
    let mut scheduler = started(plan, sizing);
    let mut times = Vec::new();
    let mut sizes = Vec::new();
    for worker in 0..N_WORKERS {
        let clock = Instant::now();
        let (grant, _) = std::hint::black_box(scheduler.request_work(WorkerId(worker), 0.0));
        times.push(clock.elapsed());
        sizes.push(grant.map_or(0, |grant| grant.tests.len()));
    }
    (times, sizes)
}

/// Worker 0 asking again after running its whole first shard, timed.
fn again_after_its_shard(plan: &BuildPlan, sizing: ShardSizing) -> Duration {
    let mut scheduler = started(plan, sizing);
    let mut grants: Vec<_> = (0..N_WORKERS).map(|worker| scheduler.request_work(WorkerId(worker), 0.0).0).collect();
    let grant = grants.swap_remove(0).expect("worker 0 has a shard");
    let mut now = plan.shard_overhead_s;
    for test_id in &grant.tests {
        let index = plan.index_of(test_id).expect("a planned test");
        now += plan.tests[index].estimate_s;
        let result = ReportedTest {
            test_id,
            status: TestStatus::Passed,
            quarantined: false,
            duration_s: Some(plan.tests[index].estimate_s),
        };
        scheduler.report(grant.lease, WorkerId(0), &[result], now).expect("its own test");
    }
    scheduler.lease_finished(grant.lease, WorkerId(0), now).expect("its own lease");
    let clock = Instant::now();
    std::hint::black_box(scheduler.request_work(WorkerId(0), now));
    clock.elapsed()
}

/// What one sizing's rounds measured.
#[derive(Default)]
struct Samples {
    /// Every lease of the build's start.
    every: Vec<Duration>,
    /// The first lease of the build's start.
    first: Vec<Duration>,
    /// Worker 0 asking again after its shard.
    again: Vec<Duration>,
    /// Tests each lease of the last start got.
    sizes: Vec<usize>,
}

/// Median, 99th percentile and largest of `samples`, and their mean.
fn summary(samples: &mut [Duration]) -> String {
    samples.sort();
    let at = |fraction: f64| samples[((samples.len() - 1) as f64 * fraction).round() as usize];
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    let micros = |duration: Duration| format!("{:.1} µs", duration.as_secs_f64() * 1e6);
    format!("{} | {} | {} | {}", micros(at(0.5)), micros(at(0.99)), micros(samples[samples.len() - 1]), micros(mean))
}

fn main() {
    // `cargo test --benches` runs this with `--test`: keep that quick.
    let quick = std::env::args().any(|argument| argument == "--test");
    let rounds: usize = match std::env::var("GREENLIGHT_BENCH_ROUNDS") {
        Ok(text) => text.parse().unwrap_or_else(|_| panic!("GREENLIGHT_BENCH_ROUNDS: not a number: {text}")),
        Err(_) if quick => 1,
        Err(_) => 30,
    };
    let file = generate(&ImvuShape { seed: 1, ..ImvuShape::default() });
    let suite = Suite::new(file).expect("a generated suite is valid");
    let selected = select(&suite, &BTreeSet::new());
    let estimates = estimate(&suite, |test| test.duration_s);
    let plan = BuildPlan::new(&suite, &selected, &estimates);
    println!(
        "| 15k tests, 50 workers, {rounds} rounds | sizing | median | p99 | largest | mean | tests a lease (start) |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    let sizings = [("fitted", ShardSizing::Fitted), ("finer", ShardSizing::Finer)];
    let mut samples: Vec<Samples> = sizings.iter().map(|_| Samples::default()).collect();
    // Round by round, the sizings in turn: a noisy machine's slow spells hit both.
    for _ in 0..rounds {
        for ((_, sizing), samples) in sizings.iter().zip(&mut samples) {
            let (times, tests) = start_wave(&plan, *sizing);
            samples.first.push(times[0]);
            samples.every.extend(times);
            samples.sizes = tests;
            samples.again.push(again_after_its_shard(&plan, *sizing));
        }
    }
    let mut rows: Vec<(&str, &str, String)> = Vec::new();
    for ((name, _), Samples { every, first, again, sizes }) in sizings.iter().zip(&mut samples) {
        let leased = sizes.iter().filter(|&&size| size > 0).count();
        let mean_tests = sizes.iter().sum::<usize>() as f64 / leased.max(1) as f64;
        rows.push(("start, each of the 50 leases", name, format!("{} | {mean_tests:.0}", summary(every))));
        rows.push(("start, the first lease", name, format!("{} | {}", summary(first), sizes[0])));
        rows.push(("again after its shard", name, format!("{} | –", summary(again))));
    }
    rows.sort_by_key(|row| row.0);
    for (scenario, name, figures) in rows {
        println!("| {scenario} | {name} | {figures} |");
    }
}
