//! The scheduler against a virtual clock: N workers, every test taking exactly its real
//! duration, every shard paying the overhead once. This is the very same [`Scheduler`]
//! the master drives; only the clock and the "workers" are simulated.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use greenlight_shared::api::TestStatus;

use crate::core::{BuildId, LeaseId, Scheduler, SchedulerConfig, WorkerId};
use crate::plan::{BuildPlan, PlanIndex};

/// One shard as it ran in the simulation.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulatedShard {
    /// The worker, 0..N-1.
    pub worker: usize,
    /// When it was leased.
    pub start: f64,
    /// When its last test ended.
    pub end: f64,
    /// Its tests, in the order run (plan indices).
    pub tests: Vec<PlanIndex>,
}

/// What a simulation found.
#[derive(Debug, Clone, PartialEq)]
pub struct Simulation {
    /// When the last test ended.
    pub makespan_s: f64,
    /// The lower bound on the real durations.
    pub lower_bound_s: f64,
    /// Every shard, in leasing order.
    pub shards: Vec<SimulatedShard>,
}

impl Simulation {
    /// `makespan / lower bound` (1 for an empty build).
    pub fn ratio(&self) -> f64 {
        if self.lower_bound_s > 0.0 { self.makespan_s / self.lower_bound_s } else { 1.0 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    TestDone { lease: u64, worker: usize, test: PlanIndex },
    ShardDone { lease: u64, worker: usize },
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Timed(f64, u64, Event);
impl Eq for Timed {}
impl PartialOrd for Timed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Timed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0).then(self.1.cmp(&other.1))
    }
}

/// Runs `plan` (whose estimates the scheduler sees) on `n_workers` workers where test `i`
/// really takes `actual_s[i]` seconds.
pub fn simulate(plan: &BuildPlan, actual_s: &[f64], n_workers: usize, config: SchedulerConfig) -> Simulation {
    assert_eq!(plan.len(), actual_s.len(), "one actual duration per planned test");
    let n_workers = n_workers.max(1);
    let lower_bound_s = plan.lower_bound_with(actual_s, n_workers);
    let mut scheduler = Scheduler::new(SchedulerConfig { lease_timeout_s: f64::INFINITY, ..config });
    let build = BuildId(1);
    let mut finished =
        scheduler.add_build(build, plan.clone(), 0.0).expect("a fresh scheduler has no build").iter().any(is_finish);
    let mut idle = vec![true; n_workers];
    let mut events: BinaryHeap<Reverse<Timed>> = BinaryHeap::new();
    let mut sequence = 0u64;
    let mut shards: Vec<SimulatedShard> = Vec::new();
    let mut shard_of_lease = std::collections::HashMap::new();
    let mut now = 0.0;
    let mut makespan_s: f64 = 0.0;
    // Workers join in order, so worker 0 gets the first shard.
    for worker in 0..n_workers {
        scheduler.worker_joined(WorkerId(worker as u64), 0.0);
    }
    while !finished {
        for (worker, is_idle) in idle.iter_mut().enumerate() {
            if !*is_idle {
                continue;
            }
            let (grant, _) = scheduler.request_work(WorkerId(worker as u64), now);
            let Some(grant) = grant else { break };
            *is_idle = false;
            let mut time = now + plan.shard_overhead_s;
            for &test in &grant.tests {
                time += actual_s[test];
                sequence += 1;
                events.push(Reverse(Timed(time, sequence, Event::TestDone { lease: grant.lease.0, worker, test })));
            }
            sequence += 1;
            events.push(Reverse(Timed(time, sequence, Event::ShardDone { lease: grant.lease.0, worker })));
            shard_of_lease.insert(grant.lease.0, shards.len());
            shards.push(SimulatedShard { worker, start: now, end: time, tests: grant.tests });
        }
        let Some(Reverse(Timed(time, _, _))) = events.peek().copied() else {
            panic!("the simulated build stalled with tests unfinished and no shard running");
        };
        now = time;
        while let Some(Reverse(Timed(time, _, event))) = events.peek().copied() {
            if time != now {
                break;
            }
            events.pop();
            match event {
                Event::TestDone { lease, worker, test } => {
                    makespan_s = makespan_s.max(time);
                    let id = &plan.tests[test].id;
                    let report = scheduler
                        .test_finished(LeaseId(lease), WorkerId(worker as u64), id, TestStatus::Passed, now)
                        .expect("the simulated worker reports its own leased test");
                    if let crate::core::Report::Accepted { decisions, .. } = report {
                        finished |= decisions.iter().any(is_finish);
                    }
                }
                Event::ShardDone { lease, worker } => {
                    let decisions = scheduler
                        .lease_finished(LeaseId(lease), WorkerId(worker as u64), now)
                        .expect("the simulated worker finishes its own lease");
                    finished |= decisions.iter().any(is_finish);
                    idle[worker] = true;
                    makespan_s = makespan_s.max(shards[shard_of_lease[&lease]].end);
                }
            }
        }
    }
    // Shards still "running" when the last result came in end at their last test.
    while let Some(Reverse(Timed(time, _, _))) = events.pop() {
        makespan_s = makespan_s.max(time);
    }
    Simulation { makespan_s, lower_bound_s, shards }
}

fn is_finish(decision: &crate::core::Decision) -> bool {
    matches!(decision, crate::core::Decision::BuildFinished { .. })
}
