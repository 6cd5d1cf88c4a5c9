//! A build's plan: the selected tests renumbered densely, their estimates, the dependency
//! edges both ways, and each test's priority: its estimate plus the longest estimated
//! chain of tests waiting on it (slowest-first generalised to the DAG).

use std::collections::HashMap;

use crate::estimate::Estimates;
use crate::suite::{Suite, TestIndex};

/// Position of a test in a [`BuildPlan`].
pub type PlanIndex = usize;

/// One test of a plan.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedTest {
    /// The test id.
    pub id: String,
    /// Tests of the plan it depends on.
    pub depends_on: Vec<PlanIndex>,
    /// Tests of the plan that depend on it.
    pub dependents: Vec<PlanIndex>,
    /// Estimated seconds.
    pub estimate_s: f64,
    /// Whether the estimate is the test's own rather than borrowed from its neighbours.
    pub estimate_known: bool,
    /// Estimate plus the longest estimated chain behind it: the order of dispatch.
    pub priority_s: f64,
}

/// The tests of one build, ready for the scheduler.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildPlan {
    /// The tests, in suite order.
    pub tests: Vec<PlannedTest>,
    /// Seconds every shard pays once besides its tests, as the farm sees it: from the
    /// lease's grant to its last result, less the tests' own durations.
    pub shard_overhead_s: f64,
    /// Seconds a worker's first shard of the build pays on top of the shard overhead: the
    /// checkout of the revision, its setup, and the start-up of a runner kept for the
    /// worker's later shards (a warm pytest's collection). 0 when every shard pays its
    /// runner's start-up anyway (it is then part of the shard overhead).
    pub worker_startup_s: f64,
    /// Whether a running shard may give back the tests it has not started (its runner
    /// reports each test as it ends, so the worker can stop after the ones it keeps).
    /// True unless the master's runner reports only at exit (pytest, nextest).
    pub leases_splittable: bool,
    /// Whether a lease may hold a test together with tests that wait on it, after it in
    /// dependency order ([`crate::core::LeaseGrant::waits_on`]): the worker feeds its runner
    /// one test at a time and does not feed a test whose prerequisite in the lease did not
    /// pass (the warm pytest runner; the simulator). False where a runner runs a whole shard
    /// in one process (cold pytest, nextest, `command`): the worker could not hold a test
    /// back, so a test is leased only once its dependencies passed. True unless the master
    /// says otherwise.
    pub chains_in_lease: bool,
    by_id: HashMap<String, PlanIndex>,
    /// The highest `priority_s` of the plan.
    highest_priority_s: f64,
}

impl BuildPlan {
    /// A plan for the `selected` tests of `suite`, with `estimates` in suite order.
    /// `selected` must be closed under dependencies (as [`crate::select::select`] returns).
    pub fn new(suite: &Suite, selected: &[TestIndex], estimates: &Estimates) -> BuildPlan {
        let mut plan_index = vec![usize::MAX; suite.len()];
        for (position, &index) in selected.iter().enumerate() {
            plan_index[index] = position;
        }
        let tests = selected
            .iter()
            .map(|&index| {
                let spec = &suite.tests[index];
                PlannedTest {
                    id: spec.id.clone(),
                    depends_on: spec
                        .depends_on
                        .iter()
                        .map(|&dep| plan_index[dep])
                        .filter(|&p| p != usize::MAX)
                        .collect(),
                    dependents: Vec::new(),
                    estimate_s: estimates.seconds[index],
                    estimate_known: estimates.known[index],
                    priority_s: 0.0,
                }
            })
            .collect();
        BuildPlan::from_tests(tests, suite.shard_overhead_s)
    }

    /// A plan from tests whose `depends_on` are already plan indices (acyclic).
    /// `dependents` and `priority_s` are recomputed.
    pub fn from_tests(mut tests: Vec<PlannedTest>, shard_overhead_s: f64) -> BuildPlan {
        for test in &mut tests {
            test.dependents.clear();
        }
        for index in 0..tests.len() {
            for position in 0..tests[index].depends_on.len() {
                let dependency = tests[index].depends_on[position];
                tests[dependency].dependents.push(index);
            }
        }
        let priorities = longest_chains(&tests, |test| test.estimate_s);
        for (test, priority) in tests.iter_mut().zip(priorities) {
            test.priority_s = priority;
        }
        let by_id = tests.iter().enumerate().map(|(index, test)| (test.id.clone(), index)).collect();
        let highest_priority_s = tests.iter().map(|test| test.priority_s).fold(0.0, f64::max);
        BuildPlan {
            tests,
            shard_overhead_s,
            worker_startup_s: 0.0,
            leases_splittable: true,
            chains_in_lease: true,
            by_id,
            highest_priority_s,
        }
    }

    /// The order tests leave the ready queue, highest first: `priority_s`, except that the
    /// tests whose estimate is borrowed (new tests) come before all the others. Their
    /// durations are the least certain: an error early is absorbed by the shards cut after
    /// it, one in the tail is not. And a new test is the likeliest to fail.
    pub fn dispatch_priority(&self, index: PlanIndex) -> f64 {
        let test = &self.tests[index];
        if test.estimate_known { test.priority_s } else { test.priority_s + self.highest_priority_s }
    }

    /// The plan index of a test id.
    pub fn index_of(&self, id: &str) -> Option<PlanIndex> {
        self.by_id.get(id).copied()
    }

    /// Number of tests.
    pub fn len(&self) -> usize {
        self.tests.len()
    }

    /// Whether the plan has no test.
    pub fn is_empty(&self) -> bool {
        self.tests.is_empty()
    }

    /// The lower bound of DESIGN.md for `n_workers`, on the plan's estimates.
    pub fn lower_bound(&self, n_workers: usize) -> f64 {
        let durations: Vec<f64> = self.tests.iter().map(|test| test.estimate_s).collect();
        self.lower_bound_with(&durations, n_workers)
    }

    /// `max(total / N, longest test, critical path) + shard overhead + worker start-up` for
    /// the given durations (in plan order): every worker pays its start-up and at least
    /// one shard's overhead.
    pub fn lower_bound_with(&self, durations: &[f64], n_workers: usize) -> f64 {
        self.lower_bound_on_fleet(durations, &vec![1.0; n_workers.max(1)])
    }

    /// The same bound on a fleet where worker `w` takes `slowdown[w]` times as long for
    /// everything: the work over the fleet's capacity (`Σ 1/slowdown` full-speed workers),
    /// the longest test and the critical path at the fastest worker's speed, plus the
    /// overhead and start-up at that speed.
    pub fn lower_bound_on_fleet(&self, durations: &[f64], slowdown: &[f64]) -> f64 {
        self.lower_bound_with_costs(durations, slowdown, self.shard_overhead_s, self.worker_startup_s)
    }

    /// [`BuildPlan::lower_bound_on_fleet`] with other shard costs than the plan's (what a
    /// build's shards were measured to cost).
    pub fn lower_bound_with_costs(
        &self,
        durations: &[f64],
        slowdown: &[f64],
        shard_overhead_s: f64,
        worker_startup_s: f64,
    ) -> f64 {
        if self.tests.is_empty() {
            return 0.0;
        }
        let capacity: f64 = slowdown.iter().map(|slowdown| 1.0 / slowdown).sum::<f64>().max(f64::MIN_POSITIVE);
        let fastest = slowdown.iter().copied().fold(f64::INFINITY, f64::min);
        let fastest = if fastest.is_finite() { fastest } else { 1.0 };
        let total: f64 = durations.iter().sum();
        let longest = durations.iter().copied().fold(0.0, f64::max);
        let critical_path =
            longest_chains(&self.tests, |test| durations[self.by_id[&test.id]]).into_iter().fold(0.0, f64::max);
        (total / capacity).max(longest * fastest).max(critical_path * fastest)
            + (shard_overhead_s + worker_startup_s) * fastest
    }
}

/// A test with no dependencies, for the crate's unit tests.
#[cfg(test)]
pub(crate) fn planned(id: &str, estimate_s: f64, estimate_known: bool) -> PlannedTest {
    PlannedTest { id: id.into(), depends_on: vec![], dependents: vec![], estimate_s, estimate_known, priority_s: 0.0 }
}

/// For every test, its duration plus the longest chain of dependents behind it.
fn longest_chains(tests: &[PlannedTest], duration: impl Fn(&PlannedTest) -> f64) -> Vec<f64> {
    // Kahn's order from the sinks (tests nothing depends on) backwards.
    let mut waiting: Vec<usize> = tests.iter().map(|test| test.dependents.len()).collect();
    let mut stack: Vec<PlanIndex> = (0..tests.len()).filter(|&index| waiting[index] == 0).collect();
    let mut chain = vec![0.0; tests.len()];
    while let Some(index) = stack.pop() {
        let behind = tests[index].dependents.iter().map(|&dependent| chain[dependent]).fold(0.0, f64::max);
        chain[index] = duration(&tests[index]) + behind;
        for &dependency in &tests[index].depends_on {
            waiting[dependency] -= 1;
            if waiting[dependency] == 0 {
                stack.push(dependency);
            }
        }
    }
    chain
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test(id: &str, estimate_s: f64, depends_on: &[usize]) -> PlannedTest {
        PlannedTest {
            id: id.into(),
            depends_on: depends_on.to_vec(),
            dependents: vec![],
            estimate_s,
            estimate_known: true,
            priority_s: 0.0,
        }
    }

    #[test]
    fn priority_counts_the_chain_a_test_unblocks() {
        let plan = BuildPlan::from_tests(
            vec![test("a", 1.0, &[]), test("b", 5.0, &[0]), test("c", 2.0, &[1]), test("d", 4.0, &[])],
            0.5,
        );
        let priorities: Vec<f64> = plan.tests.iter().map(|t| t.priority_s).collect();
        assert_eq!(priorities, vec![8.0, 7.0, 2.0, 4.0]);
        // total 12 over 2 workers is 6; the chain a-b-c is 8; plus the overhead.
        assert_eq!(plan.lower_bound(2), 8.5);
        assert_eq!(plan.lower_bound(1), 12.5);
    }

    #[test]
    fn every_worker_pays_its_start_up_once_in_the_bound() {
        let mut plan = BuildPlan::from_tests((0..4).map(|index| test(&format!("t{index}"), 10.0, &[])).collect(), 0.5);
        plan.worker_startup_s = 8.0;
        // 40 s over 2 workers, one shard's overhead and one start-up each.
        assert_eq!(plan.lower_bound(2), 28.5);
    }

    #[test]
    fn a_slower_machine_counts_for_less_in_the_bound() {
        let plan = BuildPlan::from_tests((0..4).map(|index| test(&format!("t{index}"), 10.0, &[])).collect(), 1.0);
        let durations = [10.0; 4];
        assert_eq!(plan.lower_bound_on_fleet(&durations, &[1.0, 1.0]), plan.lower_bound_with(&durations, 2));
        // One full-speed worker and one at a third of the speed: 40 s over 4/3 workers.
        assert_eq!(plan.lower_bound_on_fleet(&durations, &[1.0, 3.0]), 31.0);
        // Two machines both twice as slow: the longest test and the overhead take twice as long too.
        let one = BuildPlan::from_tests(vec![test("long", 50.0, &[]), test("short", 1.0, &[])], 1.0);
        assert_eq!(one.lower_bound_on_fleet(&[50.0, 1.0], &[2.0, 2.0]), 102.0);
    }

    #[test]
    fn new_tests_are_dispatched_first_then_the_slowest() {
        let mut new = test("new", 0.5, &[]);
        new.estimate_known = false;
        let plan = BuildPlan::from_tests(
            vec![test("quick", 1.0, &[]), new, test("slow", 30.0, &[]), test("mid", 4.0, &[])],
            0.5,
        );
        let mut order: Vec<usize> = (0..plan.len()).collect();
        order.sort_by(|&a, &b| plan.dispatch_priority(b).total_cmp(&plan.dispatch_priority(a)));
        let ids: Vec<&str> = order.iter().map(|&index| plan.tests[index].id.as_str()).collect();
        assert_eq!(ids, ["new", "slow", "mid", "quick"]);
        // The chain priorities themselves (and the lower bound) are untouched.
        assert_eq!(plan.tests[1].priority_s, 0.5);
        assert_eq!(plan.lower_bound(2), 30.5);
    }
}
