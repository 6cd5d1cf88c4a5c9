//! What ends one makespan-bench build late: the build of a seed, simulated as the makespan
//! bench does with noisy history, and taken apart.
//!
//! `cargo run --release -p greenlight-benches --example diagnose -- SHAPE SEED [exact] [finer] [warm] [slow] [tenth] [after] [copies] [quiet] [shards]`
//!
//! SHAPE is a tag set of the 15k suite on 36 workers (`chat`, `rooms,checkout`, …), `full36`
//! or `full50` (the whole 15k suite), or `small8` / `small16` (a 1k suite). It prints the
//! ratio against the static split by estimate, where the time went (work, overheads, idle),
//! whether the build ended late as a whole (its median worker already past the target) or
//! by its tail, what gated the start of each test back from the one that ended last (the
//! tests before it in its shard, or a prerequisite), the longest and the most
//! underestimated tests with their start, and how real durations compare with estimates by
//! tenths of the tests sorted by estimate. `quiet` stops after the first lines; `shards`
//! lists every worker's shards; `exact` uses exact history; `finer` the finer sizing;
//! `warm` warm runners (the makespan bench's `warm` table: the 1.5 s is a worker's
//! start-up, and a shard costs 0.03 s); `slow` makes worker 0, the first to ask, 3× slower
//! (the `slow` table), `tenth` every tenth worker (3, 13, …) 2× slower; `after` simulates the build after one earlier build of it, where the
//! scheduler has seen each worker's speed; `copies` turns straggler copies on.

use std::collections::BTreeSet;

use greenlight_benches::on_warm_runners;
use greenlight_fixtures::imvu::{ImvuShape, generate, noisy_history};
use greenlight_scheduler::baseline::{simulate_free_dispatch, simulate_static_fleet, split_by_estimate};
use greenlight_scheduler::core::{SchedulerConfig, ShardSizing};
use greenlight_scheduler::estimate::estimate;
use greenlight_scheduler::plan::BuildPlan;
use greenlight_scheduler::select::select;
use greenlight_scheduler::simulate::{Simulation, simulate_fleet_after};
use greenlight_scheduler::suite::Suite;

/// How many tests back from the one that ends last are shown one by one.
const PATH_SHOWN: usize = 8;

/// Tests of the small suites, as in the makespan bench.
const SMALL_SUITE_TESTS: usize = 1_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let shape = args.get(1).cloned().unwrap_or_else(|| "chat".to_owned());
    let seed: u64 = args.get(2).and_then(|seed| seed.parse().ok()).unwrap_or(1);
    let flag = |name: &str| args.iter().skip(3).any(|arg| arg == name);
    let default = ImvuShape::default();
    let (file, tags, n_workers) = if let Some(workers) = shape.strip_prefix("small") {
        let total_s = default.total_s * SMALL_SUITE_TESTS as f64 / default.n_tests as f64;
        let file = generate(&ImvuShape { seed, n_tests: SMALL_SUITE_TESTS, total_s, ..default });
        (file, String::new(), workers.parse().expect("small8 or small16"))
    } else if let Some(workers) = shape.strip_prefix("full") {
        (generate(&ImvuShape { seed, ..default }), String::new(), workers.parse().expect("full36 or full50"))
    } else {
        (generate(&ImvuShape { seed, ..default }), shape.clone(), 36)
    };
    let history = noisy_history(&file, 0.5, 0.05, seed);
    let suite = Suite::new(file).expect("a generated suite is valid");
    let estimates = if flag("exact") {
        estimate(&suite, |test| test.duration_s)
    } else {
        estimate(&suite, |test| history.durations_s.get(&test.id).copied())
    };
    let tags: BTreeSet<String> = tags.split(',').filter(|tag| !tag.is_empty()).map(str::to_owned).collect();
    let selected = select(&suite, &tags);
    let mut plan = BuildPlan::new(&suite, &selected, &estimates);
    if flag("warm") {
        on_warm_runners(&mut plan);
    }
    let actual: Vec<f64> =
        selected.iter().map(|&index| suite.tests[index].duration_s.expect("generated with durations")).collect();
    let sizing = if flag("finer") { ShardSizing::Finer } else { ShardSizing::Fitted };
    let config =
        SchedulerConfig { shard_sizing: sizing, straggler_copies: flag("copies"), ..SchedulerConfig::default() };
    let slowdown: Vec<f64> = (0..n_workers)
        .map(|worker| match worker {
            0 if flag("slow") => 3.0,
            _ if flag("tenth") && worker % 10 == 3 => 2.0,
            _ => 1.0,
        })
        .collect();
    let run = simulate_fleet_after(&plan, &actual, &slowdown, config, u64::from(flag("after")));
    let by_estimate = simulate_static_fleet(&plan, &actual, &split_by_estimate(&plan, n_workers), &slowdown);
    let free = simulate_free_dispatch(&plan, &actual, &slowdown);
    let last = free.shards.iter().max_by(|a, b| a.end.total_cmp(&b.end)).expect("a test ran");
    let test = last.tests[0];
    println!(
        "free dispatch (one test a lease at no cost): {:.4}; ended last: estimated/real {:.1}/{:.1}{} from {:.1}, \
         after {} prerequisite(s)",
        free.ratio(),
        plan.tests[test].estimate_s,
        actual[test],
        if plan.tests[test].estimate_known { "" } else { " new" },
        last.start,
        plan.tests[test].depends_on.len(),
    );
    let build = Build { plan: &plan, actual: &actual, run: &run, n_workers, slowdown: &slowdown };
    build.summary(&shape, seed, by_estimate.ratio());
    if flag("quiet") {
        return;
    }
    if flag("shards") {
        build.shards();
    }
    build.longest();
    build.bands();
}

/// One simulated build.
struct Build<'a> {
    plan: &'a BuildPlan,
    actual: &'a [f64],
    run: &'a Simulation,
    n_workers: usize,
    /// How many times as long each worker takes for everything.
    slowdown: &'a [f64],
}

/// When a test ran: its start, its end, its shard and its place in it.
#[derive(Clone, Copy, Default)]
struct Ran {
    start: f64,
    end: f64,
    shard: usize,
    position: usize,
}

impl Build<'_> {
    fn ran(&self) -> Vec<Ran> {
        let mut ran = vec![Ran::default(); self.plan.len()];
        // A worker's first shard pays its start-up too.
        let mut first_start = vec![f64::INFINITY; self.n_workers];
        for simulated in &self.run.shards {
            first_start[simulated.worker] = first_start[simulated.worker].min(simulated.start);
        }
        for (shard, simulated) in self.run.shards.iter().enumerate() {
            let startup =
                if simulated.start == first_start[simulated.worker] { self.plan.worker_startup_s } else { 0.0 };
            let slowdown = self.slowdown[simulated.worker];
            let mut time = simulated.start + (self.plan.shard_overhead_s + startup) * slowdown;
            for (position, &test) in simulated.tests.iter().enumerate() {
                let took = self.actual[test] * slowdown;
                ran[test] = Ran { start: time, end: time + took, shard, position };
                time += took;
            }
        }
        ran
    }

    fn worker_ends(&self) -> Vec<f64> {
        (0..self.n_workers)
            .map(|worker| {
                self.run.shards.iter().filter(|shard| shard.worker == worker).map(|shard| shard.end).fold(0.0, f64::max)
            })
            .collect()
    }

    fn label(&self, test: usize) -> String {
        let planned = &self.plan.tests[test];
        let new = if planned.estimate_known { "" } else { " new" };
        format!("{:.1}/{:.1}{new}", planned.estimate_s, self.actual[test])
    }

    fn summary(&self, shape: &str, seed: u64, static_ratio: f64) {
        let (plan, run, workers) = (self.plan, self.run, self.n_workers as f64);
        let total: f64 = self.actual.iter().sum();
        let estimated: f64 = plan.tests.iter().map(|test| test.estimate_s).sum();
        let new = plan.tests.iter().filter(|test| !test.estimate_known).count();
        let busy: f64 = run.shards.iter().map(|shard| shard.end - shard.start).sum();
        let overheads = run.shards.len() as f64 * plan.shard_overhead_s + workers * plan.worker_startup_s;
        println!(
            "{shape} seed {seed}: ratio {:.4} (static by estimate {static_ratio:.4}), makespan {:.1} s, bound {:.1} s; \
             {} tests ({new} new), {total:.0} s ({estimated:.0} s estimated), {:.1} s a worker; \
             {} shards ({:.2} a worker), overheads {:.2} s a worker, idle {:.2} s a worker",
            run.ratio(),
            run.makespan_s,
            run.lower_bound_s,
            plan.len(),
            total / workers,
            run.shards.len(),
            run.shards.len() as f64 / workers,
            overheads / workers,
            (workers * run.makespan_s - busy) / workers,
        );
        let mut ends = self.worker_ends();
        ends.sort_by(f64::total_cmp);
        let median = ends[ends.len() / 2];
        println!(
            "  the median worker ends at {:.4} of the bound, the last at {:.4} of the median",
            median / run.lower_bound_s,
            run.makespan_s / median
        );
        // Back from the test that ends last, along what gated each start: the test before it
        // in its shard, or for the first test of a shard a prerequisite that ended then.
        let ran = self.ran();
        let mut test = (0..plan.len()).max_by(|&a, &b| ran[a].end.total_cmp(&ran[b].end)).expect("a test");
        let mut path = Vec::new();
        let (mut earlier, mut earlier_estimated, mut earlier_real) = (0, 0.0, 0.0);
        loop {
            if path.len() < PATH_SHOWN {
                path.push(format!("{} at {:.1}", self.label(test), ran[test].start));
            } else {
                earlier += 1;
                earlier_estimated += plan.tests[test].estimate_s;
                earlier_real += self.actual[test];
            }
            let Ran { shard, position, .. } = ran[test];
            if position > 0 {
                test = run.shards[shard].tests[position - 1];
                continue;
            }
            let shard_start = run.shards[shard].start;
            let gate = plan.tests[test]
                .depends_on
                .iter()
                .find(|&&dependency| (ran[dependency].end - shard_start).abs() < 1e-6);
            match gate {
                Some(&dependency) => {
                    path.push("(its prerequisite)".to_owned());
                    test = dependency;
                }
                None => {
                    let prerequisites: Vec<String> = plan.tests[test]
                        .depends_on
                        .iter()
                        .map(|&dependency| format!("{} ended at {:.1}", self.label(dependency), ran[dependency].end))
                        .collect();
                    if !prerequisites.is_empty() {
                        path.push(format!("(leased after its prerequisites: {})", prerequisites.join(", ")));
                    }
                    break;
                }
            }
        }
        if earlier > 0 {
            path.push(format!("{earlier} more ({earlier_estimated:.1}/{earlier_real:.1})"));
        }
        println!(
            "  what ended last (estimated/real seconds, start), back to its shard's start at {:.1}: {}",
            run.shards[ran[test].shard].start,
            path.join(" <- ")
        );
    }

    fn shards(&self) {
        for worker in 0..self.n_workers {
            let shards: Vec<String> = self
                .run
                .shards
                .iter()
                .filter(|shard| shard.worker == worker)
                .map(|shard| {
                    let estimated: f64 = shard.tests.iter().map(|&test| self.plan.tests[test].estimate_s).sum();
                    let real: f64 = shard.tests.iter().map(|&test| self.actual[test]).sum();
                    let new = shard.tests.iter().filter(|&&test| !self.plan.tests[test].estimate_known).count();
                    format!(
                        "[{:.1}-{:.1}: {} tests, {new} new, {estimated:.1}/{real:.1} s]",
                        shard.start,
                        shard.end,
                        shard.tests.len()
                    )
                })
                .collect();
            println!("  worker {worker}: {}", shards.join(" "));
        }
    }

    fn longest(&self) {
        let ran = self.ran();
        let mut order: Vec<usize> = (0..self.plan.len()).collect();
        let show = |title: &str, order: &[usize]| {
            println!("  {title} (estimated/real seconds):");
            for &test in order.iter().take(6) {
                let shard = &self.run.shards[ran[test].shard];
                println!(
                    "    {} from {:.1} to {:.1}, test {} of {} in worker {}'s shard of {:.1}-{:.1}",
                    self.label(test),
                    ran[test].start,
                    ran[test].end,
                    ran[test].position + 1,
                    shard.tests.len(),
                    shard.worker,
                    shard.start,
                    shard.end
                );
            }
        };
        order.sort_by(|&a, &b| self.actual[b].total_cmp(&self.actual[a]));
        show("the longest tests", &order);
        let over = |test: usize| self.actual[test] - self.plan.tests[test].estimate_s;
        order.sort_by(|&a, &b| over(b).total_cmp(&over(a)));
        show("the most underestimated", &order);
    }

    fn bands(&self) {
        let mut order: Vec<usize> = (0..self.plan.len()).filter(|&test| self.plan.tests[test].estimate_known).collect();
        order.sort_by(|&a, &b| self.plan.tests[b].estimate_s.total_cmp(&self.plan.tests[a].estimate_s));
        println!("  real over estimated seconds, by tenths of the tests with history sorted by estimate:");
        for band in order.chunks(order.len().div_ceil(10).max(1)) {
            let estimated: f64 = band.iter().map(|&test| self.plan.tests[test].estimate_s).sum();
            let real: f64 = band.iter().map(|&test| self.actual[test]).sum();
            let (low, high) = (self.plan.tests[band[band.len() - 1]].estimate_s, self.plan.tests[band[0]].estimate_s);
            println!("    estimated {low:.2}-{high:.2} s: {:.2}", real / estimated);
        }
    }
}
