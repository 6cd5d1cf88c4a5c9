//! Makespan against the lower bound, side by side in one run: Greenlight's dynamic
//! scheduler, a split by test count, and a static split by estimated durations (LPT, one
//! shard per worker), on IMVU-shaped suites (15k tests, 4.4 machine-hours, 1.5 s shard
//! overhead), a hundred seeds, 36 and 50 workers, with exact history and with noisy history
//! (each duration off by a lognormal factor, sigma 0.5, and 5% of the tests new). Then
//! fleets of 50 with slower machines the scheduler is not told about, with and without
//! splitting running leases.
//!
//! `cargo bench -p greenlight-benches --bench makespan`
//!
//! Seeds 1–100 by default; `GREENLIGHT_BENCH_SEEDS=1-10` (a range or a comma list) sets them,
//! and `GREENLIGHT_BENCH_VERBOSE=1` prints each seed's ratio to stderr.

use std::collections::BTreeSet;

use greenlight_fixtures::imvu::{ImvuShape, generate, noisy_history};
use greenlight_scheduler::baseline::{simulate_static, simulate_static_fleet, split_by_count, split_by_estimate};
use greenlight_scheduler::core::SchedulerConfig;
use greenlight_scheduler::estimate::estimate;
use greenlight_scheduler::plan::BuildPlan;
use greenlight_scheduler::select::select;
use greenlight_scheduler::simulate::{simulate, simulate_fleet};
use greenlight_scheduler::suite::Suite;

/// Seeds run by default: a hundred, since a scheduler's worst case hides in the few.
const SEEDS: std::ops::RangeInclusive<u64> = 1..=100;

struct Row {
    greenlight: Vec<f64>,
    by_count: Vec<f64>,
    by_estimate: Vec<f64>,
    shards: Vec<usize>,
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 1 { sorted[middle] } else { (sorted[middle - 1] + sorted[middle]) / 2.0 }
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(0.0, f64::max)
}

/// `1-10` or `1,4,7`.
fn parse_seeds(text: &str) -> Option<Vec<u64>> {
    if let Some((first, last)) = text.split_once('-') {
        let (first, last) = (first.trim().parse::<u64>().ok()?, last.trim().parse::<u64>().ok()?);
        return (first <= last).then(|| (first..=last).collect());
    }
    text.split(',').map(|seed| seed.trim().parse().ok()).collect()
}

/// The whole generated suite of `seed` as planned (exact or noisy history) and the real
/// durations of its tests.
fn build(seed: u64, noisy: bool) -> (BuildPlan, Vec<f64>) {
    let file = generate(&ImvuShape { seed, ..ImvuShape::default() });
    let history = noisy.then(|| noisy_history(&file, 0.5, 0.05, seed));
    let suite = Suite::new(file).expect("a generated suite is valid");
    let selected = select(&suite, &BTreeSet::new());
    let estimates = match &history {
        Some(history) => estimate(&suite, |test| history.durations_s.get(&test.id).copied()),
        None => estimate(&suite, |test| test.duration_s),
    };
    let plan = BuildPlan::new(&suite, &selected, &estimates);
    let actual =
        selected.iter().map(|&index| suite.tests[index].duration_s.unwrap_or(estimates.seconds[index])).collect();
    (plan, actual)
}

/// Fleets of 50 workers with slower machines the scheduler is not told about, noisy
/// history: Greenlight, Greenlight without splitting running leases, and the static split
/// by estimate, against the fleet's own lower bound.
fn slow_fleets(seeds: &[u64]) {
    const N_WORKERS: usize = 50;
    let one_slow: Vec<f64> = (0..N_WORKERS).map(|worker| if worker == 0 { 3.0 } else { 1.0 }).collect();
    let tenth_slow: Vec<f64> = (0..N_WORKERS).map(|worker| if worker % 10 == 3 { 2.0 } else { 1.0 }).collect();
    println!();
    println!(
        "| 50 workers, noisy | Greenlight mean (max) | seeds above 1.02 | without splitting mean (max) | static by estimate mean (max) |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (name, slowdown) in
        [("one worker 3× slower (the first to ask)", &one_slow), ("every tenth worker 2× slower", &tenth_slow)]
    {
        let (mut greenlight, mut unsplit, mut by_estimate) = (vec![], vec![], vec![]);
        for &seed in seeds {
            let (plan, actual) = build(seed, true);
            greenlight.push(simulate_fleet(&plan, &actual, slowdown, SchedulerConfig::default()).ratio());
            let config = SchedulerConfig { split_running_leases: false, ..SchedulerConfig::default() };
            unsplit.push(simulate_fleet(&plan, &actual, slowdown, config).ratio());
            let assignment = split_by_estimate(&plan, N_WORKERS);
            by_estimate.push(simulate_static_fleet(&plan, &actual, &assignment, slowdown).ratio());
        }
        println!(
            "| {name} | {:.4} ({:.4}) | {} of {} | {:.3} ({:.3}) | {:.3} ({:.3}) |",
            mean(&greenlight),
            max(&greenlight),
            greenlight.iter().filter(|&&ratio| ratio > 1.02).count(),
            greenlight.len(),
            mean(&unsplit),
            max(&unsplit),
            mean(&by_estimate),
            max(&by_estimate),
        );
    }
}

fn main() {
    // `cargo test --benches` runs this with `--test`: keep that quick.
    let quick = std::env::args().any(|argument| argument == "--test");
    let seeds: Vec<u64> = match std::env::var("GREENLIGHT_BENCH_SEEDS") {
        Ok(text) => parse_seeds(&text).unwrap_or_else(|| panic!("GREENLIGHT_BENCH_SEEDS: not a range or list: {text}")),
        Err(_) if quick => vec![*SEEDS.start()],
        Err(_) => SEEDS.collect(),
    };
    let verbose = std::env::var_os("GREENLIGHT_BENCH_VERBOSE").is_some();
    println!(
        "| workers | history | Greenlight mean (max) | median | seeds above 1.02 | split by count mean (max) | static by estimate mean (max) | shards |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|");
    for n_workers in [36usize, 50] {
        for noisy in [false, true] {
            let mut row = Row { greenlight: vec![], by_count: vec![], by_estimate: vec![], shards: vec![] };
            for &seed in &seeds {
                let (plan, actual) = build(seed, noisy);
                let result = simulate(&plan, &actual, n_workers, SchedulerConfig::default());
                if verbose {
                    eprintln!("{n_workers} workers, noisy {noisy}, seed {seed}: {:.4}", result.ratio());
                }
                row.greenlight.push(result.ratio());
                row.shards.push(result.shards.len());
                row.by_count.push(simulate_static(&plan, &actual, &split_by_count(&plan, n_workers)).ratio());
                row.by_estimate.push(simulate_static(&plan, &actual, &split_by_estimate(&plan, n_workers)).ratio());
            }
            println!(
                "| {n_workers} | {} | {:.4} ({:.4}) | {:.4} | {} of {} | {:.3} ({:.3}) | {:.3} ({:.3}) | {:.0} |",
                if noisy { "noisy (σ 0.5, 5% new)" } else { "exact" },
                mean(&row.greenlight),
                max(&row.greenlight),
                median(&row.greenlight),
                row.greenlight.iter().filter(|&&ratio| ratio > 1.02).count(),
                row.greenlight.len(),
                mean(&row.by_count),
                max(&row.by_count),
                mean(&row.by_estimate),
                max(&row.by_estimate),
                row.shards.iter().sum::<usize>() as f64 / row.shards.len() as f64,
            );
        }
    }
    slow_fleets(&seeds);
}
