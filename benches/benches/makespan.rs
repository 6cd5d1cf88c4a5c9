//! Makespan against the lower bound, side by side in one run: Greenlight's dynamic
//! scheduler, a split by test count, a static split by estimated durations (LPT, one
//! shard per worker), and an idealised online scheduler that hands out one test at a time
//! at no cost (free dispatch: what knowing only the estimates allows at best with
//! slowest-first order), on the builds users run:
//!
//! - `full`: the whole IMVU-shaped suite (15k tests, 4.4 machine-hours, 1.5 s shard
//!   overhead) on 36 and 50 workers;
//! - `tags`: tag-selected builds of that suite (a tenth of it or so) on 36 workers;
//! - `small`: 1k-test suites of the same shape on 8 and 16 workers;
//! - `slow`: fleets with slower machines the scheduler is not told about, in a farm's first
//!   build (no machine known) and after a build of the same plan on the same scheduler
//!   (", after a build": the slower machines have shown themselves);
//! - `warm`: the tag-selected, 1k, full and slow-fleet builds on warm runners (pytest's
//!   `[suite] warm`): a worker's first shard of a build pays 1.47 s of start-up (the
//!   collection of its runner) and every shard 0.03 s (the most the master learned from
//!   real warm builds), the same 1.5 s a worker as the cold rows' first shard.
//!
//! Each with exact history and with noisy history (each duration off by a lognormal factor,
//! sigma 0.5, and 5% of the tests new), a hundred seeds. Every row prints the mean, the
//! worst seed, the seeds above the row's target, and the seeds on which Greenlight is worse
//! than the static split by estimate by more than 0.01.
//!
//! `cargo bench -p greenlight-benches --bench makespan`
//!
//! Seeds 1–100 by default; `GREENLIGHT_BENCH_SEEDS=1-10` (a range or a comma list) sets them,
//! `GREENLIGHT_BENCH_SHAPES=tags,small` (any of `full`, `tags`, `small`, `slow`, `warm`) picks the
//! tables, `GREENLIGHT_BENCH_VERBOSE=1` prints each seed's ratios to stderr, and
//! `GREENLIGHT_BENCH_EARLIER_BUILDS=3` runs every row after that many builds of its plan.

use std::collections::BTreeSet;

use greenlight_benches::{Summary, on_warm_runners, parse_seeds};
use greenlight_fixtures::imvu::{ImvuShape, generate, noisy_history};
use greenlight_scheduler::baseline::{
    simulate_free_dispatch, simulate_static_fleet, split_by_count, split_by_estimate,
};
use greenlight_scheduler::core::{SchedulerConfig, ShardSizing};
use greenlight_scheduler::estimate::{Estimates, estimate};
use greenlight_scheduler::plan::BuildPlan;
use greenlight_scheduler::select::select;
use greenlight_scheduler::simulate::simulate_fleet_after;
use greenlight_scheduler::suite::Suite;
use greenlight_shared::suite::SuiteFile;

/// Seeds run by default: a hundred, since a scheduler's worst case hides in the few.
const SEEDS: std::ops::RangeInclusive<u64> = 1..=100;

/// Tests of a small suite; its machine time is the IMVU suite's scaled to it.
const SMALL_SUITE_TESTS: usize = 1_000;

/// The tag sets of the tag-selected builds: one area, two areas (one of them a tag no test
/// has), as a change's tags name them.
const TAG_SETS: [&str; 4] = ["chat", "rooms,checkout", "search", "avatar,friends"];

/// Which suite a row runs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum SuiteSize {
    /// The 15k-test IMVU-shaped suite.
    Full,
    /// A 1k-test suite of the same shape.
    Small,
}

/// How the fleet's machines compare.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fleet {
    Equal,
    /// Worker 0 (the first to ask) takes 3× as long for everything.
    OneThreeTimesSlower,
    /// Every tenth worker (3, 13, …) takes 2× as long.
    EveryTenthTwiceSlower,
}

impl Fleet {
    fn slowdown(self, n_workers: usize) -> Vec<f64> {
        (0..n_workers)
            .map(|worker| match self {
                Fleet::Equal => 1.0,
                Fleet::OneThreeTimesSlower if worker == 0 => 3.0,
                Fleet::EveryTenthTwiceSlower if worker % 10 == 3 => 2.0,
                _ => 1.0,
            })
            .collect()
    }

    fn name(self) -> &'static str {
        match self {
            Fleet::Equal => "",
            Fleet::OneThreeTimesSlower => ", one worker 3× slower",
            Fleet::EveryTenthTwiceSlower => ", every tenth worker 2× slower",
        }
    }
}

/// One row of a table: a build shape on a fleet, with one kind of history.
#[derive(Debug, Clone)]
struct Shape {
    table: &'static str,
    suite: SuiteSize,
    /// Comma-separated tags; empty for the whole suite.
    tags: &'static str,
    n_workers: usize,
    fleet: Fleet,
    noisy: bool,
    /// The target for the worst seed.
    target: f64,
    /// How many builds of the same plan the fleet ran before, on the same scheduler: 0 for
    /// a farm's first build (no worker's speed known), 1 for one whose slower machines
    /// the scheduler has seen.
    earlier_builds: u64,
    /// Warm runners: the suite's shard overhead is paid once a worker (its start-up), and
    /// each shard costs [`greenlight_benches::WARM_SHARD_S`].
    warm: bool,
}

impl Shape {
    fn build_name(&self) -> String {
        let suite = match self.suite {
            SuiteSize::Full => "15k",
            SuiteSize::Small => "1k",
        };
        let tags = if self.tags.is_empty() { "all".to_owned() } else { format!("`{}`", self.tags) };
        let after = match self.earlier_builds {
            0 => String::new(),
            1 => ", after a build".to_owned(),
            builds => format!(", after {builds} builds"),
        };
        let warm = if self.warm { ", warm" } else { "" };
        format!("{suite}, {tags}{}{after}{warm}", self.fleet.name())
    }
}

/// The rows of `tables`, each run after `earlier_builds` builds; the slow fleets' also
/// after one build, where the scheduler has seen the slower machines.
fn shapes(tables: &BTreeSet<String>, earlier_builds: u64) -> Vec<Shape> {
    let mut shapes = Vec::new();
    let mut add = |table: &'static str, suite, tags, n_workers, fleet, target_exact, target_noisy| {
        let warm = table == "warm";
        if !tables.contains(table) {
            return;
        }
        let mut runs = vec![earlier_builds];
        if fleet != Fleet::Equal && earlier_builds == 0 {
            runs.push(1);
        }
        for earlier_builds in runs {
            for noisy in [false, true] {
                let target = if noisy { target_noisy } else { target_exact };
                shapes.push(Shape { table, suite, tags, n_workers, fleet, noisy, target, earlier_builds, warm });
            }
        }
    };
    for n_workers in [36, 50] {
        add("full", SuiteSize::Full, "", n_workers, Fleet::Equal, 1.02, 1.02);
    }
    for tags in TAG_SETS {
        add("tags", SuiteSize::Full, tags, 36, Fleet::Equal, 1.01, 1.04);
    }
    for n_workers in [8, 16] {
        add("small", SuiteSize::Small, "", n_workers, Fleet::Equal, 1.01, 1.04);
    }
    add("slow", SuiteSize::Full, "", 50, Fleet::OneThreeTimesSlower, 1.10, 1.10);
    add("slow", SuiteSize::Full, "chat", 36, Fleet::OneThreeTimesSlower, 1.10, 1.10);
    add("slow", SuiteSize::Small, "", 16, Fleet::OneThreeTimesSlower, 1.10, 1.10);
    add("slow", SuiteSize::Full, "", 50, Fleet::EveryTenthTwiceSlower, 1.10, 1.10);
    for tags in TAG_SETS {
        add("warm", SuiteSize::Full, tags, 36, Fleet::Equal, 1.01, 1.04);
    }
    for n_workers in [8, 16] {
        add("warm", SuiteSize::Small, "", n_workers, Fleet::Equal, 1.01, 1.04);
    }
    for n_workers in [36, 50] {
        add("warm", SuiteSize::Full, "", n_workers, Fleet::Equal, 1.02, 1.02);
    }
    add("warm", SuiteSize::Full, "chat", 36, Fleet::OneThreeTimesSlower, 1.10, 1.10);
    add("warm", SuiteSize::Small, "", 16, Fleet::OneThreeTimesSlower, 1.10, 1.10);
    shapes
}

/// A generated suite with its estimates: exact (the durations themselves) and noisy.
struct Generated {
    suite: Suite,
    exact: Estimates,
    noisy: Estimates,
}

impl Generated {
    fn new(file: SuiteFile, seed: u64) -> Generated {
        let history = noisy_history(&file, 0.5, 0.05, seed);
        let suite = Suite::new(file).expect("a generated suite is valid");
        let exact = estimate(&suite, |test| test.duration_s);
        let noisy = estimate(&suite, |test| history.durations_s.get(&test.id).copied());
        Generated { suite, exact, noisy }
    }

    /// The plan of the tests `tags` select and their real durations.
    /// On warm runners ([`Shape::warm`]) the suite's shard overhead is a worker's start-up,
    /// and a shard costs [`greenlight_benches::WARM_SHARD_S`].
    fn build(&self, tags: &str, noisy: bool, warm: bool) -> (BuildPlan, Vec<f64>) {
        let tags: BTreeSet<String> = tags.split(',').filter(|tag| !tag.is_empty()).map(str::to_owned).collect();
        let selected = select(&self.suite, &tags);
        let estimates = if noisy { &self.noisy } else { &self.exact };
        let mut plan = BuildPlan::new(&self.suite, &selected, estimates);
        if warm {
            on_warm_runners(&mut plan);
        }
        let actual = selected
            .iter()
            .map(|&index| self.suite.tests[index].duration_s.unwrap_or(estimates.seconds[index]))
            .collect();
        (plan, actual)
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
    let tables: BTreeSet<String> = match std::env::var("GREENLIGHT_BENCH_SHAPES") {
        Ok(text) => text.split(',').map(|table| table.trim().to_owned()).collect(),
        Err(_) => ["full", "tags", "small", "slow", "warm"].map(str::to_owned).into(),
    };
    let verbose = std::env::var_os("GREENLIGHT_BENCH_VERBOSE").is_some();
    let earlier_builds = match std::env::var("GREENLIGHT_BENCH_EARLIER_BUILDS") {
        Ok(text) => text.parse().unwrap_or_else(|_| panic!("GREENLIGHT_BENCH_EARLIER_BUILDS: not a count: {text}")),
        Err(_) => 0,
    };
    let shapes = shapes(&tables, earlier_builds);
    let mut summaries: Vec<Summary> = shapes.iter().map(|_| Summary::default()).collect();
    for &seed in &seeds {
        let needs = |size: SuiteSize| shapes.iter().any(|shape| shape.suite == size);
        let full =
            needs(SuiteSize::Full).then(|| Generated::new(generate(&ImvuShape { seed, ..ImvuShape::default() }), seed));
        let small = needs(SuiteSize::Small).then(|| {
            let default = ImvuShape::default();
            let total_s = default.total_s * SMALL_SUITE_TESTS as f64 / default.n_tests as f64;
            Generated::new(generate(&ImvuShape { seed, n_tests: SMALL_SUITE_TESTS, total_s, ..default }), seed)
        });
        for (shape, summary) in shapes.iter().zip(&mut summaries) {
            let generated = match shape.suite {
                SuiteSize::Full => full.as_ref(),
                SuiteSize::Small => small.as_ref(),
            }
            .expect("generated above");
            let (plan, actual) = generated.build(shape.tags, shape.noisy, shape.warm);
            let slowdown = shape.fleet.slowdown(shape.n_workers);
            let fitted_config = SchedulerConfig { shard_sizing: ShardSizing::Fitted, ..SchedulerConfig::default() };
            let simulate = |config| simulate_fleet_after(&plan, &actual, &slowdown, config, shape.earlier_builds);
            let greenlight = simulate(fitted_config.clone());
            let finer = simulate(SchedulerConfig { shard_sizing: ShardSizing::Finer, ..SchedulerConfig::default() });
            let copies = simulate(SchedulerConfig { straggler_copies: true, ..fitted_config });
            summary.copies.push(copies.ratio());
            let free = simulate_free_dispatch(&plan, &actual, &slowdown);
            summary.free_dispatch.push(free.ratio());
            let by_count = simulate_static_fleet(&plan, &actual, &split_by_count(&plan, shape.n_workers), &slowdown);
            let by_estimate =
                simulate_static_fleet(&plan, &actual, &split_by_estimate(&plan, shape.n_workers), &slowdown);
            if verbose {
                eprintln!(
                    "{} on {} workers, {}, seed {seed}: Greenlight {:.4} ({} shards), finer {:.4}, copies {:.4}, static by estimate {:.4}, free dispatch {:.4}",
                    shape.build_name(),
                    shape.n_workers,
                    if shape.noisy { "noisy" } else { "exact" },
                    greenlight.ratio(),
                    greenlight.shards.len(),
                    finer.ratio(),
                    copies.ratio(),
                    by_estimate.ratio(),
                    free.ratio(),
                );
            }
            summary.add(
                greenlight.ratio(),
                greenlight.shards.len() as f64 / shape.n_workers as f64,
                by_count.ratio(),
                by_estimate.ratio(),
                finer.ratio(),
            );
        }
    }
    let mut table = "";
    for (shape, summary) in shapes.iter().zip(&summaries) {
        if shape.table != table {
            table = shape.table;
            println!();
            println!(
                "| {table}: build | workers | history | Greenlight mean (worst) | above target | worse than static by estimate by > 0.01 | shards a worker | finer (before #17) mean (worst) | above target | worse than static | with straggler copies mean (worst) | above target | worse than static | split by count mean (worst) | static by estimate mean (worst) | free dispatch (ideal) mean (worst) | above target |"
            );
            println!("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        }
        println!(
            "| {} | {} | {} | {:.4} ({:.4}) | {} of {} above {:.2} | {} | {:.2} | {:.4} ({:.4}) | {} | {} | {:.4} ({:.4}) | {} | {} | {:.3} ({:.3}) | {:.3} ({:.3}) | {:.4} ({:.4}) | {} |",
            shape.build_name(),
            shape.n_workers,
            if shape.noisy { "noisy" } else { "exact" },
            summary.greenlight.mean(),
            summary.greenlight.worst(),
            summary.greenlight.above(shape.target),
            summary.greenlight.len(),
            shape.target,
            summary.worse_than_static(0.01),
            summary.shards_per_worker.mean(),
            summary.finer.mean(),
            summary.finer.worst(),
            summary.finer.above(shape.target),
            Summary::worse(&summary.finer, &summary.by_estimate, 0.01),
            summary.copies.mean(),
            summary.copies.worst(),
            summary.copies.above(shape.target),
            Summary::worse(&summary.copies, &summary.by_estimate, 0.01),
            summary.by_count.mean(),
            summary.by_count.worst(),
            summary.by_estimate.mean(),
            summary.by_estimate.worst(),
            summary.free_dispatch.mean(),
            summary.free_dispatch.worst(),
            summary.free_dispatch.above(shape.target),
        );
    }
}
