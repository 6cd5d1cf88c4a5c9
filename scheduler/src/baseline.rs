//! Static baselines, for comparison only: what a split by test count and a static split by
//! estimated timings (what most CI services offer) would take on the same suite. Each
//! worker gets one shard, fixed before the build starts. Tests joined by dependencies
//! stay together on one worker, as a team without a dependency-aware scheduler would keep
//! them; a worker runs its tests in topological order.

use crate::plan::{BuildPlan, PlanIndex};
use crate::simulate::{SimulatedShard, Simulation};

/// The plan's tests in a topological order (dependencies first), ties in plan order.
pub fn topological_order(plan: &BuildPlan) -> Vec<PlanIndex> {
    let mut waiting: Vec<usize> = plan.tests.iter().map(|test| test.depends_on.len()).collect();
    let mut ready: std::collections::BTreeSet<PlanIndex> =
        (0..plan.len()).filter(|&index| waiting[index] == 0).collect();
    let mut order = Vec::with_capacity(plan.len());
    while let Some(index) = ready.pop_first() {
        order.push(index);
        for &dependent in &plan.tests[index].dependents {
            waiting[dependent] -= 1;
            if waiting[dependent] == 0 {
                ready.insert(dependent);
            }
        }
    }
    order
}

/// Groups of tests joined by dependencies (weakly connected components), each in
/// topological order, the groups ordered by their first test.
pub fn dependency_groups(plan: &BuildPlan) -> Vec<Vec<PlanIndex>> {
    let mut root: Vec<usize> = (0..plan.len()).collect();
    fn find(root: &mut [usize], index: usize) -> usize {
        let mut current = index;
        while root[current] != current {
            root[current] = root[root[current]];
            current = root[current];
        }
        current
    }
    for (index, test) in plan.tests.iter().enumerate() {
        for &dependency in &test.depends_on {
            let (a, b) = (find(&mut root, index), find(&mut root, dependency));
            root[a.max(b)] = a.min(b);
        }
    }
    let mut groups: std::collections::BTreeMap<usize, Vec<PlanIndex>> = std::collections::BTreeMap::new();
    for index in topological_order(plan) {
        let group = find(&mut root, index);
        groups.entry(group).or_default().push(index);
    }
    groups.into_values().collect()
}

/// `n_workers` contiguous runs of (nearly) equal test counts, in plan order, never
/// splitting a dependency group.
pub fn split_by_count(plan: &BuildPlan, n_workers: usize) -> Vec<Vec<PlanIndex>> {
    let n_workers = n_workers.max(1);
    let mut shards = vec![Vec::new(); n_workers];
    let mut placed = 0usize;
    for group in dependency_groups(plan) {
        let worker = (placed * n_workers / plan.len().max(1)).min(n_workers - 1);
        placed += group.len();
        shards[worker].extend(group);
    }
    shards
}

/// Longest-processing-time-first on the estimates: each dependency group, slowest first,
/// goes to the worker with the least estimated work so far.
pub fn split_by_estimate(plan: &BuildPlan, n_workers: usize) -> Vec<Vec<PlanIndex>> {
    let n_workers = n_workers.max(1);
    let group_estimate = |group: &Vec<PlanIndex>| group.iter().map(|&index| plan.tests[index].estimate_s).sum::<f64>();
    let mut groups = dependency_groups(plan);
    groups.sort_by(|a, b| group_estimate(b).total_cmp(&group_estimate(a)));
    let mut load: std::collections::BinaryHeap<std::cmp::Reverse<(u64, usize)>> =
        (0..n_workers).map(|worker| std::cmp::Reverse((0u64, worker))).collect();
    let mut shards = vec![Vec::new(); n_workers];
    for group in groups {
        let std::cmp::Reverse((work, worker)) = load.pop().expect("one entry per worker");
        // Microseconds keep the heap's order exact and total.
        let added = (group_estimate(&group) * 1e6).round() as u64;
        shards[worker].extend(group);
        load.push(std::cmp::Reverse((work + added, worker)));
    }
    shards
}

/// Runs a static assignment with real durations `actual_s` (plan order): each worker's
/// one shard pays the shard overhead and the worker's start-up.
pub fn simulate_static(plan: &BuildPlan, actual_s: &[f64], assignment: &[Vec<PlanIndex>]) -> Simulation {
    simulate_static_fleet(plan, actual_s, assignment, &vec![1.0; assignment.len().max(1)])
}

/// As [`simulate_static`], shard `w` on a worker `slowdown[w]` times slower (see
/// [`crate::simulate::simulate_fleet`]).
pub fn simulate_static_fleet(
    plan: &BuildPlan,
    actual_s: &[f64],
    assignment: &[Vec<PlanIndex>],
    slowdown: &[f64],
) -> Simulation {
    assert!(slowdown.len() >= assignment.len(), "a slowdown for each shard's worker");
    let order = topological_order(plan);
    let mut rank = vec![0usize; plan.len()];
    for (position, &index) in order.iter().enumerate() {
        rank[index] = position;
    }
    let queues: Vec<Vec<PlanIndex>> = assignment
        .iter()
        .map(|tests| {
            let mut tests = tests.clone();
            tests.sort_by_key(|&index| rank[index]);
            tests
        })
        .collect();
    let mut next = vec![0usize; queues.len()];
    let cost_s = plan.shard_overhead_s + plan.worker_startup_s;
    let mut clock: Vec<f64> = (0..queues.len()).map(|worker| cost_s * slowdown[worker]).collect();
    let mut end = vec![f64::NAN; plan.len()];
    let mut remaining: usize = queues.iter().map(Vec::len).sum();
    while remaining > 0 {
        // The next test of lowest topological rank has every dependency done.
        let worker = (0..queues.len())
            .filter(|&worker| next[worker] < queues[worker].len())
            .min_by_key(|&worker| rank[queues[worker][next[worker]]])
            .expect("a test remains");
        let index = queues[worker][next[worker]];
        let dependencies_done = plan.tests[index].depends_on.iter().map(|&dep| end[dep]).fold(0.0, f64::max);
        let start = clock[worker].max(dependencies_done);
        clock[worker] = start + actual_s[index] * slowdown[worker];
        end[index] = clock[worker];
        next[worker] += 1;
        remaining -= 1;
    }
    let shards: Vec<SimulatedShard> = queues
        .into_iter()
        .enumerate()
        .filter(|(_, tests)| !tests.is_empty())
        .map(|(worker, tests)| SimulatedShard { worker, start: 0.0, end: clock[worker], tests })
        .collect();
    let makespan_s = shards.iter().map(|shard| shard.end).fold(0.0, f64::max);
    Simulation { makespan_s, lower_bound_s: plan.lower_bound_on_fleet(actual_s, slowdown), shards }
}

/// An idealised online scheduler, for reference only: every test is its own lease and
/// costs nothing to hand out (a worker pays the shard overhead and its start-up once, at
/// the start), and whenever a worker is free it takes the ready test first in dispatch order
/// ([`BuildPlan::dispatch_priority`]), a dependency's dependents on any worker. It knows
/// the estimates and nothing else, as Greenlight does; no farm can run it (a shard pays its
/// runner's start-up), but on noisy history it shows what a scheduler that does not know
/// the real durations reaches at best with this order: how much of a build's end above
/// its bound is the noise's and how much the shards'. Free workers take tests in worker
/// order, `slowdown` as in [`simulate_static_fleet`]; each test is reported as a shard.
pub fn simulate_free_dispatch(plan: &BuildPlan, actual_s: &[f64], slowdown: &[f64]) -> Simulation {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    // Ready tests, first in dispatch order; ties in plan order.
    let mut ready: BinaryHeap<(u64, Reverse<PlanIndex>)> = BinaryHeap::new();
    let push_ready = |ready: &mut BinaryHeap<(u64, Reverse<PlanIndex>)>, index: PlanIndex| {
        // Microseconds keep the heap's order exact and total, as in `split_by_estimate`.
        ready.push(((plan.dispatch_priority(index) * 1e6).round() as u64, Reverse(index)));
    };
    let mut waiting: Vec<usize> = plan.tests.iter().map(|test| test.depends_on.len()).collect();
    for (index, _) in waiting.iter().enumerate().filter(|(_, waits)| **waits == 0) {
        push_ready(&mut ready, index);
    }
    // Events, earliest first: a worker free at a time, with the test it just ended, if
    // any. Times are not negative, so their bits order them as the numbers do.
    let mut events: BinaryHeap<Reverse<(u64, usize, Option<PlanIndex>)>> = (0..slowdown.len())
        .map(|worker| {
            Reverse((((plan.shard_overhead_s + plan.worker_startup_s) * slowdown[worker]).to_bits(), worker, None))
        })
        .collect();
    let mut idle: std::collections::BTreeSet<usize> = std::collections::BTreeSet::new();
    let mut shards = Vec::with_capacity(plan.len());
    let mut makespan_s: f64 = 0.0;
    while let Some(Reverse((now, worker, ended))) = events.pop() {
        let now = f64::from_bits(now);
        if let Some(test) = ended {
            makespan_s = makespan_s.max(now);
            for &dependent in &plan.tests[test].dependents {
                waiting[dependent] -= 1;
                if waiting[dependent] == 0 {
                    push_ready(&mut ready, dependent);
                }
            }
        }
        idle.insert(worker);
        // Everything free at this instant is free before anyone takes a test.
        if events.peek().is_some_and(|Reverse(next)| f64::from_bits(next.0) <= now) {
            continue;
        }
        while let Some(&worker) = idle.first() {
            let Some((_, Reverse(test))) = ready.pop() else { break };
            idle.remove(&worker);
            let end = now + actual_s[test] * slowdown[worker];
            shards.push(SimulatedShard { worker, start: now, end, tests: vec![test] });
            events.push(Reverse((end.to_bits(), worker, Some(test))));
        }
    }
    Simulation { makespan_s, lower_bound_s: plan.lower_bound_on_fleet(actual_s, slowdown), shards }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::PlannedTest;

    fn plan(estimates: &[f64], edges: &[(usize, usize)]) -> BuildPlan {
        let tests = estimates
            .iter()
            .enumerate()
            .map(|(index, &estimate_s)| PlannedTest {
                id: format!("t{index}"),
                depends_on: edges.iter().filter(|(test, _)| *test == index).map(|(_, dep)| *dep).collect(),
                dependents: vec![],
                estimate_s,
                estimate_known: true,
                priority_s: 0.0,
            })
            .collect();
        BuildPlan::from_tests(tests, 1.0)
    }

    #[test]
    fn count_split_and_lpt_split() {
        let plan = plan(&[5.0, 1.0, 1.0, 1.0, 4.0, 2.0], &[]);
        assert_eq!(split_by_count(&plan, 2), vec![vec![0, 1, 2], vec![3, 4, 5]]);
        let split = split_by_estimate(&plan, 2);
        let loads: Vec<f64> = split.iter().map(|tests| tests.iter().map(|&i| plan.tests[i].estimate_s).sum()).collect();
        assert_eq!(loads, vec![7.0, 7.0]);
    }

    #[test]
    fn dependency_groups_stay_on_one_worker() {
        let plan = plan(&[1.0, 1.0, 1.0, 1.0], &[(2, 0), (3, 2)]);
        assert_eq!(dependency_groups(&plan), vec![vec![0, 2, 3], vec![1]]);
        assert_eq!(split_by_count(&plan, 2), vec![vec![0, 2, 3], vec![1]]);
        assert_eq!(split_by_estimate(&plan, 2), vec![vec![0, 2, 3], vec![1]]);
    }

    #[test]
    fn free_dispatch_spreads_a_fan_out_and_hands_out_the_longest_first() {
        // t0 (2 s) fans out to t1, t2, t3 (3 s each); t4 (4 s) stands alone. Two workers
        // with 1 s of overhead: t4 and t0 start at 1; at 3, t1 follows t0 on worker 0; at
        // 5, t2 on worker 1; at 6, t3 on worker 0; it ends at 9. The static split keeps
        // the fan-out on one worker: 1 + 2 + 9 = 12.
        let plan = plan(&[2.0, 3.0, 3.0, 3.0, 4.0], &[(1, 0), (2, 0), (3, 0)]);
        let actual = [2.0, 3.0, 3.0, 3.0, 4.0];
        let free = simulate_free_dispatch(&plan, &actual, &[1.0, 1.0]);
        assert_eq!(free.makespan_s, 9.0);
        let start = |test: PlanIndex| free.shards.iter().find(|shard| shard.tests == vec![test]).unwrap().start;
        assert_eq!((start(0), start(4), start(1), start(2), start(3)), (1.0, 1.0, 3.0, 5.0, 6.0));
        assert_eq!(free.shards.len(), 5, "every test runs once");
        let fixed = simulate_static(&plan, &actual, &split_by_estimate(&plan, 2));
        assert_eq!(fixed.makespan_s, 12.0);
    }

    #[test]
    fn free_dispatch_does_not_know_a_slower_worker() {
        // Worker 0 is 3x slower, its overhead too (free at 3): worker 1 takes the 6 s test
        // at 1; worker 0 takes a 1 s test at 3 (to 6) and the other at 6, ending at 9.
        let plan = plan(&[6.0, 1.0, 1.0], &[]);
        let free = simulate_free_dispatch(&plan, &[6.0, 1.0, 1.0], &[3.0, 1.0]);
        assert_eq!(free.makespan_s, 9.0);
        assert_eq!(free.shards.iter().map(|shard| shard.worker).collect::<Vec<_>>(), vec![1, 0, 0]);
        assert_eq!(free.lower_bound_s, plan.lower_bound_on_fleet(&[6.0, 1.0, 1.0], &[3.0, 1.0]));
    }

    #[test]
    fn static_simulation_waits_for_dependencies_across_workers() {
        // t1 depends on t0; t0 on worker 1 takes 3 s, so t1 on worker 0 starts at 1 + 3.
        let plan = plan(&[3.0, 2.0], &[(1, 0)]);
        let result = simulate_static(&plan, &[3.0, 2.0], &[vec![1], vec![0]]);
        assert_eq!(result.makespan_s, 6.0);
        assert_eq!(result.lower_bound_s, 6.0);
    }
}
