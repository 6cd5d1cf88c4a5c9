//! An oracle for the scheduler: on small suites (up to 6 tests, up to 3 workers, random
//! dependencies, shard overhead), brute force finds the optimal makespan, and the
//! scheduler (through `simulate`, with exact estimates) is checked against it.
//!
//! The optimum is taken in a relaxed model that can only be better than any real
//! schedule: every worker pays the shard overhead once, then runs its tests back to back,
//! waiting where a dependency is still running elsewhere. Any schedule the scheduler makes
//! (several shards, an overhead each, only ready tests) is feasible in it, so the relaxed
//! optimum is a lower bound on the scheduler's makespan, and the scheduler's makespan is
//! checked to stay within a factor of it: list scheduling's classic guarantee, `2 - 1/m`,
//! plus the shard overheads the relaxed model does not charge.

use greenlight_scheduler::core::SchedulerConfig;
use greenlight_scheduler::plan::{BuildPlan, PlannedTest};
use greenlight_scheduler::simulate::simulate;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::RngSeed;

#[derive(Debug, Clone)]
struct Case {
    durations: Vec<f64>,
    depends_on: Vec<Vec<usize>>,
    n_workers: usize,
    overhead: f64,
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..=6, 1usize..=3, 0u32..=2).prop_flat_map(|(n_tests, n_workers, overhead)| {
        let durations = proptest::collection::vec(1u32..=8, n_tests);
        // Each test may depend on any earlier test (a DAG by construction).
        let depends_on =
            (0..n_tests).map(|index| proptest::collection::vec(0..index.max(1), 0..=index.min(2))).collect::<Vec<_>>();
        (durations, depends_on).prop_map(move |(durations, depends_on)| Case {
            durations: durations.into_iter().map(f64::from).collect(),
            depends_on: depends_on
                .into_iter()
                .enumerate()
                .map(|(index, mut deps)| {
                    deps.retain(|&dep| dep < index);
                    deps.sort_unstable();
                    deps.dedup();
                    deps
                })
                .collect(),
            n_workers,
            overhead: f64::from(overhead) * 0.5,
        })
    })
}

fn plan(case: &Case) -> BuildPlan {
    let tests = case
        .durations
        .iter()
        .zip(&case.depends_on)
        .enumerate()
        .map(|(index, (&estimate_s, depends_on))| PlannedTest {
            id: format!("t{index}"),
            depends_on: depends_on.clone(),
            dependents: vec![],
            estimate_s,
            estimate_known: true,
            priority_s: 0.0,
        })
        .collect();
    BuildPlan::from_tests(tests, case.overhead)
}

/// Every order of `0..n` that puts dependencies first.
fn topological_orders(depends_on: &[Vec<usize>]) -> Vec<Vec<usize>> {
    fn extend(depends_on: &[Vec<usize>], order: &mut Vec<usize>, used: &mut Vec<bool>, out: &mut Vec<Vec<usize>>) {
        if order.len() == depends_on.len() {
            out.push(order.clone());
            return;
        }
        for test in 0..depends_on.len() {
            if !used[test] && depends_on[test].iter().all(|&dep| used[dep]) {
                used[test] = true;
                order.push(test);
                extend(depends_on, order, used, out);
                order.pop();
                used[test] = false;
            }
        }
    }
    let mut out = Vec::new();
    extend(depends_on, &mut Vec::new(), &mut vec![false; depends_on.len()], &mut out);
    out
}

/// The relaxed optimum: over every dependency-respecting order and every assignment of
/// tests to (identical) workers, each test starting as early as its worker and its
/// dependencies allow.
fn brute_force_optimum(case: &Case) -> f64 {
    /// Places `order[position..]`, each on a worker already used or on the first unused
    /// one (idle workers are interchangeable), and returns the best makespan found.
    fn place(case: &Case, order: &[usize], position: usize, worker_free: &mut Vec<f64>, end: &mut Vec<f64>) -> f64 {
        let Some(&test) = order.get(position) else {
            return end.iter().copied().fold(0.0, f64::max);
        };
        let ready = case.depends_on[test].iter().map(|&dep| end[dep]).fold(0.0, f64::max);
        let mut best = f64::INFINITY;
        for worker in 0..case.n_workers.min(worker_free.len() + 1) {
            let fresh = worker == worker_free.len();
            if fresh {
                worker_free.push(case.overhead);
            }
            let previous_free = worker_free[worker];
            let previous_end = end[test];
            end[test] = previous_free.max(ready) + case.durations[test];
            worker_free[worker] = end[test];
            best = best.min(place(case, order, position + 1, worker_free, end));
            worker_free[worker] = previous_free;
            end[test] = previous_end;
            if fresh {
                worker_free.pop();
            }
        }
        best
    }
    topological_orders(&case.depends_on)
        .iter()
        .map(|order| place(case, order, 0, &mut Vec::new(), &mut vec![0.0; case.durations.len()]))
        .fold(f64::INFINITY, f64::min)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 200,
        rng_seed: RngSeed::Fixed(20261122),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_scheduler_stays_within_list_scheduling_bounds_of_the_brute_force_optimum(case in case()) {
        let plan = plan(&case);
        let result = simulate(&plan, &case.durations, case.n_workers, SchedulerConfig::default());
        let optimum = brute_force_optimum(&case);
        prop_assert!(result.makespan_s + 1e-9 >= optimum, "beat the optimum: {} < {optimum}", result.makespan_s);
        prop_assert!(optimum + 1e-9 >= result.lower_bound_s, "optimum {optimum} below the lower bound {}", result.lower_bound_s);
        let m = case.n_workers as f64;
        let extra_overheads = result.shards.len() as f64 * case.overhead;
        prop_assert!(
            result.makespan_s <= (2.0 - 1.0 / m) * optimum + extra_overheads + 1e-9,
            "makespan {} against optimum {optimum} on {} workers ({} shards)",
            result.makespan_s,
            case.n_workers,
            result.shards.len()
        );
    }
}

#[test]
fn the_brute_force_is_right_on_hand_worked_cases() {
    let case = |durations: &[f64], depends_on: Vec<Vec<usize>>, n_workers, overhead| Case {
        durations: durations.to_vec(),
        depends_on,
        n_workers,
        overhead,
    };
    // Two workers, 3 + 3 against 2 + 2 + 2: 6 is optimal.
    assert_eq!(brute_force_optimum(&case(&[3.0, 3.0, 2.0, 2.0, 2.0], vec![vec![]; 5], 2, 0.0)), 6.0);
    // A chain forces the sum, whatever the workers; the overhead is paid once.
    assert_eq!(brute_force_optimum(&case(&[1.0, 2.0, 3.0], vec![vec![], vec![0], vec![1]], 3, 0.5)), 6.5);
    // One worker: the sum plus one overhead.
    assert_eq!(brute_force_optimum(&case(&[1.0, 2.0], vec![vec![], vec![]], 1, 1.0)), 4.0);
}

#[test]
fn on_small_suites_the_scheduler_is_usually_optimal() {
    // Not a bound but a measure: over a fixed set of cases, how often the scheduler
    // matches the optimum (zero overhead, so shards cost nothing).
    let mut runner = proptest::test_runner::TestRunner::new_with_rng(
        ProptestConfig::default(),
        proptest::test_runner::TestRng::from_seed(proptest::test_runner::RngAlgorithm::ChaCha, &[7; 32]),
    );
    let (mut optimal, mut total, mut worst) = (0, 0, 1.0f64);
    for _ in 0..200 {
        let mut case = case().new_tree(&mut runner).expect("a case").current();
        case.overhead = 0.0;
        let result = simulate(&plan(&case), &case.durations, case.n_workers, SchedulerConfig::default());
        let optimum = brute_force_optimum(&case);
        total += 1;
        if result.makespan_s <= optimum + 1e-9 {
            optimal += 1;
        }
        worst = worst.max(result.makespan_s / optimum);
    }
    // Measured when written: optimal in 196 of 200, worst ratio 1.11.
    assert!(optimal * 100 >= total * 95, "optimal in only {optimal} of {total} cases");
    assert!(worst <= 1.2, "worst ratio {worst}");
}
