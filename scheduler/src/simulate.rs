//! The scheduler against a virtual clock: N workers, every test taking exactly its real
//! duration, every shard paying the overhead once and a worker's first shard of a build
//! its start-up too ([`BuildPlan::worker_startup_s`]: a warm runner's collection, which its
//! later shards of the revision do not pay again). This is the very same [`Scheduler`]
//! the master drives; only the clock and the "workers" are simulated. A worker whose lease
//! is shrunk learns it at once and stops after the tests it keeps.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};

use greenlight_shared::api::TestStatus;

use crate::core::{BuildId, Decision, LeaseId, ReportedTest, Scheduler, SchedulerConfig, WorkerId};
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
    /// Its tests, in the order run (plan indices); without those it gave back when it was
    /// shrunk.
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
    simulate_fleet(plan, actual_s, &vec![1.0; n_workers.max(1)], config)
}

/// As [`simulate`], on a fleet where worker `w` takes `slowdown[w]` times as long for
/// everything it does (its tests and its shard overhead): an older machine, a noisy
/// neighbour. The scheduler is not told; the lower bound is the fleet's
/// ([`BuildPlan::lower_bound_on_fleet`]).
pub fn simulate_fleet(plan: &BuildPlan, actual_s: &[f64], slowdown: &[f64], config: SchedulerConfig) -> Simulation {
    simulate_fleet_after(plan, actual_s, slowdown, config, 0)
}

/// As [`simulate_fleet`], the build run after `earlier_builds` builds of the same plan on
/// the same fleet and scheduler, back to back, as in a farm that has run builds before:
/// the scheduler has seen how fast each worker is. The simulation is the last build's,
/// its times counted from its start.
pub fn simulate_fleet_after(
    plan: &BuildPlan,
    actual_s: &[f64],
    slowdown: &[f64],
    config: SchedulerConfig,
    earlier_builds: u64,
) -> Simulation {
    assert_eq!(plan.len(), actual_s.len(), "one actual duration per planned test");
    assert!(!slowdown.is_empty(), "a fleet has a worker");
    let lower_bound_s = plan.lower_bound_on_fleet(actual_s, slowdown);
    // Idle workers are woken at a straggling lease's heartbeats, so a straggler's copy
    // starts when it pays, not only when some shard ends.
    let poll_s = config.straggler_copies.then_some(POLL_S);
    let mut scheduler = Scheduler::new(SchedulerConfig { lease_timeout_s: f64::INFINITY, ..config });
    // Workers join in order, so worker 0 gets the first shard.
    for worker in 0..slowdown.len() {
        scheduler.worker_joined(WorkerId(worker as u64), 0.0);
        // Its tests all pass: a test after its prerequisite in a shard always runs.
        scheduler.worker_holds_dependents(WorkerId(worker as u64), true);
    }
    let fleet = Fleet { plan, actual_s, slowdown, poll_s };
    let mut start = 0.0;
    for build in 1..=earlier_builds {
        start = fleet.run(&mut scheduler, BuildId(build), start).0;
    }
    let (end, mut shards) = fleet.run(&mut scheduler, BuildId(earlier_builds + 1), start);
    if start > 0.0 {
        for shard in &mut shards {
            shard.start -= start;
            shard.end -= start;
        }
    }
    Simulation { makespan_s: end - start, lower_bound_s, shards }
}

/// A simulated fleet running a plan's builds.
struct Fleet<'a> {
    plan: &'a BuildPlan,
    actual_s: &'a [f64],
    slowdown: &'a [f64],
    poll_s: Option<f64>,
}

impl Fleet<'_> {
    /// Runs `build` of the plan from `start`, every worker idle: when its last test ended,
    /// and its shards.
    fn run(&self, scheduler: &mut Scheduler, build: BuildId, start: f64) -> (f64, Vec<SimulatedShard>) {
        let Fleet { plan, actual_s, slowdown, poll_s } = *self;
        let n_workers = slowdown.len();
        let mut finished = scheduler
            .add_build(build, plan.clone(), start)
            .expect("the fleet's builds run one at a time")
            .iter()
            .any(is_finish);
        let mut idle = vec![true; n_workers];
        // Idle workers that got nothing while tests were ready (left to others): they ask
        // again when a shard ends or work is said to be available, as a real worker's long
        // poll is woken.
        let mut declined = vec![false; n_workers];
        // A worker's first shard of the build pays its start-up too (checkout, a warm
        // runner's collection: [`BuildPlan::worker_startup_s`]); its later ones only the
        // shard overhead.
        let mut started = vec![false; n_workers];
        let mut running = Running::default();
        let mut now = start;
        let mut makespan_s: f64 = start;
        while !finished {
            for (worker, is_idle) in idle.iter_mut().enumerate() {
                if !*is_idle || declined[worker] {
                    continue;
                }
                let (grant, decisions) = scheduler.request_work(WorkerId(worker as u64), now);
                for decision in &decisions {
                    running.shrink(plan, decision, now);
                }
                let Some(grant) = grant else {
                    if scheduler.has_ready_work() {
                        // Left to another worker (a faster one, or one a retry did not fail on).
                        declined[worker] = true;
                        continue;
                    }
                    break;
                };
                *is_idle = false;
                let tests: Vec<PlanIndex> = grant.tests.iter().map(|id| index_of(plan, id)).collect();
                let startup_s = if std::mem::replace(&mut started[worker], true) { 0.0 } else { plan.worker_startup_s };
                let cost_s = plan.shard_overhead_s + startup_s;
                running.start(grant.lease.0, worker, tests, now, cost_s, actual_s, slowdown[worker]);
            }
            let Some(Reverse(Timed(time, _, _))) = running.events.peek().copied() else {
                panic!("the simulated build stalled with tests unfinished and no shard running");
            };
            if let Some(poll_s) = poll_s
                && idle.iter().any(|&idle| idle)
            {
                // The master wakes its idle workers at the heartbeats of a lease one of them
                // could copy ([`Scheduler::straggling`]).
                let mut tick = now + poll_s;
                while tick < time && !running.test_ends.keys().any(|&lease| scheduler.straggling(LeaseId(lease), tick))
                {
                    tick += poll_s;
                }
                if tick < time {
                    now = tick;
                    continue;
                }
            }
            now = time;
            while let Some(Reverse(Timed(time, event_sequence, event))) = running.events.peek().copied() {
                if time != now {
                    break;
                }
                running.events.pop();
                if !running.happens(event, event_sequence) {
                    continue;
                }
                match event {
                    Event::TestDone { lease, worker, test } => {
                        makespan_s = makespan_s.max(time);
                        let id = &plan.tests[test].id;
                        let reported = ReportedTest {
                            test_id: id,
                            status: TestStatus::Passed,
                            quarantined: false,
                            duration_s: Some(actual_s[test] * slowdown[worker]),
                        };
                        let report = scheduler
                            .report(LeaseId(lease), WorkerId(worker as u64), &[reported], now)
                            .expect("the simulated worker reports its own leased test")
                            .pop()
                            .expect("one report per result");
                        if let crate::core::Report::Accepted { decisions, .. } = report {
                            finished |= decisions.iter().any(is_finish);
                            for decision in &decisions {
                                running.shrink(plan, decision, now);
                            }
                            if decisions.contains(&Decision::WorkAvailable) {
                                declined.fill(false);
                            }
                        }
                    }
                    Event::ShardDone { lease, worker } => {
                        let decisions = scheduler
                            .lease_finished(LeaseId(lease), WorkerId(worker as u64), now)
                            .expect("the simulated worker finishes its own lease");
                        finished |= decisions.iter().any(is_finish);
                        idle[worker] = true;
                        declined.fill(false);
                        running.test_ends.remove(&lease);
                        makespan_s = makespan_s.max(running.shards[running.shard_of_lease[&lease]].end);
                    }
                }
            }
        }
        // Shards still "running" when the last result came in end at their last test.
        while let Some(Reverse(Timed(time, event_sequence, event))) = running.events.pop() {
            if running.happens(event, event_sequence) {
                makespan_s = makespan_s.max(time);
            }
        }
        (makespan_s, running.shards)
    }
}

/// How often a simulated lease heartbeats, waking the idle workers when one of them could
/// copy its running test (the master's default `[scheduler] heartbeat_interval_s`).
const POLL_S: f64 = 5.0;

/// The shards of a simulation and the events they will cause.
#[derive(Default)]
struct Running {
    events: BinaryHeap<Reverse<Timed>>,
    sequence: u64,
    shards: Vec<SimulatedShard>,
    shard_of_lease: HashMap<u64, usize>,
    /// When each test of a running lease ends.
    test_ends: HashMap<u64, Vec<(PlanIndex, f64)>>,
    /// The (lease, test) events withdrawn.
    withdrawn_events: HashSet<(u64, PlanIndex)>,
    /// The sequence number of each lease's current ShardDone event.
    shard_done_event: HashMap<u64, u64>,
}

impl Running {
    /// A granted shard starts on `worker` at `now`: it pays `overhead_s` (the shard's, and
    /// the worker's start-up on its first), then runs its tests back to back, `slowdown`
    /// times as long as they take.
    #[expect(clippy::too_many_arguments, reason = "one shard's whole description")]
    fn start(
        &mut self,
        lease: u64,
        worker: usize,
        tests: Vec<PlanIndex>,
        now: f64,
        overhead_s: f64,
        actual_s: &[f64],
        slowdown: f64,
    ) {
        let mut time = now + overhead_s * slowdown;
        let mut ends = Vec::with_capacity(tests.len());
        for &test in &tests {
            time += actual_s[test] * slowdown;
            self.sequence += 1;
            ends.push((test, time));
            self.events.push(Reverse(Timed(time, self.sequence, Event::TestDone { lease, worker, test })));
        }
        self.test_ends.insert(lease, ends);
        self.sequence += 1;
        self.shard_done_event.insert(lease, self.sequence);
        self.events.push(Reverse(Timed(time, self.sequence, Event::ShardDone { lease, worker })));
        self.shard_of_lease.insert(lease, self.shards.len());
        self.shards.push(SimulatedShard { worker, start: now, end: time, tests });
    }

    /// A lease was shrunk: its holder hears at once and stops after its last kept test
    /// (at once, if the test it runs was withdrawn: a copy's result came first).
    fn shrink(&mut self, plan: &BuildPlan, decision: &Decision, now: f64) {
        let Decision::LeaseShrunk { lease, worker: holder, withdrawn, .. } = decision else { return };
        let withdrawn: Vec<PlanIndex> = withdrawn.iter().map(|id| index_of(plan, id)).collect();
        let ends = self.test_ends.get_mut(&lease.0).expect("a shrunk lease is running");
        self.withdrawn_events.extend(withdrawn.iter().map(|&test| (lease.0, test)));
        ends.retain(|(test, _)| !withdrawn.contains(test));
        let end = ends.last().map_or(now, |&(_, end)| end).max(now);
        self.sequence += 1;
        self.shard_done_event.insert(lease.0, self.sequence);
        let holder = holder.0 as usize;
        self.events.push(Reverse(Timed(end, self.sequence, Event::ShardDone { lease: lease.0, worker: holder })));
        let shard = &mut self.shards[self.shard_of_lease[&lease.0]];
        shard.tests.retain(|test| !withdrawn.contains(test));
        shard.end = end;
    }

    /// Whether a scheduled event still happens: not the end of a test withdrawn from its
    /// lease, nor a shard end that a shrink moved earlier (`sequence` is no longer the
    /// lease's).
    fn happens(&self, event: Event, sequence: u64) -> bool {
        match event {
            Event::TestDone { lease, test, .. } => !self.withdrawn_events.contains(&(lease, test)),
            Event::ShardDone { lease, .. } => self.shard_done_event[&lease] == sequence,
        }
    }
}

/// The plan index of a test the scheduler named.
fn index_of(plan: &BuildPlan, test_id: &str) -> PlanIndex {
    plan.index_of(test_id).expect("the scheduler names only the plan's tests")
}

fn is_finish(decision: &crate::core::Decision) -> bool {
    matches!(decision, crate::core::Decision::BuildFinished { .. })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::planned;

    /// How many times each of a plan's `tests` ran in a simulation's shards.
    fn runs(result: &Simulation, tests: usize) -> Vec<usize> {
        let mut runs = vec![0; tests];
        for &test in result.shards.iter().flat_map(|shard| &shard.tests) {
            runs[test] += 1;
        }
        runs
    }

    #[test]
    fn a_slower_worker_takes_longer_for_everything_and_every_test_runs_once() {
        let plan = BuildPlan::from_tests((0..20).map(|index| planned(&format!("t{index}"), 5.0, true)).collect(), 1.0);
        let actual = vec![5.0; 20];
        let slowdown = [1.0, 3.0];
        let result = simulate_fleet(&plan, &actual, &slowdown, SchedulerConfig::default());
        for shard in &result.shards {
            let work: f64 = shard.tests.iter().map(|&test| actual[test]).sum();
            let took = shard.end - shard.start;
            assert!((took - slowdown[shard.worker] * (1.0 + work)).abs() < 1e-9, "{shard:?} took {took}");
        }
        assert_eq!(runs(&result, 20), vec![1; 20]);
        assert_eq!(result.lower_bound_s, plan.lower_bound_on_fleet(&actual, &slowdown));
        assert!(result.makespan_s >= result.lower_bound_s, "{result:?}");
        assert!(result.shards.iter().any(|shard| shard.worker == 1), "the slow worker did some of it");
    }

    #[test]
    fn a_fleet_that_ran_a_build_before_keeps_the_long_test_off_its_slower_machine() {
        // A 30 s test and thirty of 3 s on four workers, the first (the first to ask) three
        // times slower: 120 s over 3⅓ workers, 36 s, plus a shard's 1 s.
        let mut tests = vec![planned("long", 30.0, true)];
        tests.extend((0..30).map(|index| planned(&format!("t{index}"), 3.0, true)));
        let plan = BuildPlan::from_tests(tests, 1.0);
        let actual: Vec<f64> = plan.tests.iter().map(|test| test.estimate_s).collect();
        let slowdown = [3.0, 1.0, 1.0, 1.0];
        let first = simulate_fleet_after(&plan, &actual, &slowdown, SchedulerConfig::default(), 0);
        let after = simulate_fleet_after(&plan, &actual, &slowdown, SchedulerConfig::default(), 1);
        assert_eq!(after.lower_bound_s, first.lower_bound_s);
        assert!(after.ratio() <= 1.10, "{after:?}");
        assert!(after.makespan_s < first.makespan_s, "{first:?} {after:?}");
        let long_on = after.shards.iter().find(|shard| shard.tests.contains(&0)).expect("the long test ran").worker;
        assert_ne!(long_on, 0, "{after:?}");
        // The measured build's times count from its start; every test ran once.
        assert!(after.shards.iter().all(|shard| shard.start >= 0.0 && shard.end <= after.makespan_s + 1e-9));
        assert_eq!(runs(&after, plan.len()), vec![1; plan.len()]);
    }

    /// A 20 s test, eight 1 s tests each with a 1 s dependant, and fourteen of 6 s: 120 s
    /// (shards cost 1 s). Split fitted among three workers, the first takes the long test
    /// after four of the short ones (those with dependants run first).
    fn a_long_test_behind_short_chains() -> BuildPlan {
        let mut tests = vec![planned("long", 20.0, true)];
        for chain in 0..8 {
            tests.push(planned(&format!("s{chain}"), 1.0, true));
            let mut dependant = planned(&format!("d{chain}"), 1.0, true);
            dependant.depends_on = vec![tests.len() - 1];
            tests.push(dependant);
        }
        tests.extend((0..14).map(|index| planned(&format!("f{index}"), 6.0, true)));
        BuildPlan::from_tests(tests, 1.0)
    }

    #[test]
    fn a_machine_that_shows_itself_slow_in_a_first_build_gives_its_long_test_to_a_faster_one() {
        let plan = a_long_test_behind_short_chains();
        let actual: Vec<f64> = plan.tests.iter().map(|test| test.estimate_s).collect();
        let slowdown = [3.0, 1.0, 1.0];
        let result = simulate_fleet(&plan, &actual, &slowdown, SchedulerConfig::default());
        // The slow machine's first results (three times their estimates) show it before
        // it starts the long test: it gives that back with what it could not run by the
        // others' end, and a fast worker stops after its running test to take it. Left
        // there, the long test would take 60 s and end the build at 75 s (1.43).
        let long_on = result.shards.iter().find(|shard| shard.tests.contains(&0)).expect("the long test ran").worker;
        assert_ne!(long_on, 0, "{result:?}");
        assert!(result.ratio() <= 1.10, "{result:?}");
        assert_eq!(runs(&result, plan.len()), vec![1; plan.len()]);
    }

    #[test]
    fn where_shards_are_cheap_a_worker_is_free_for_the_second_test_waiting_on_a_long_one() {
        // A 30 s test with two waiting on it (3 s and 2 s) and sixty-three of 1.5 s, on four
        // warm workers (1.47 s of start-up, 0.03 s a shard): the bound is the chain,
        // 1.5 + 30 + 3 = 34.5 s; the other three workers share 96.5 s.
        let mut tests = vec![planned("long", 30.0, true)];
        for (id, estimate) in [("after", 3.0), ("also_after", 2.0)] {
            let mut dependant = planned(id, estimate, true);
            dependant.depends_on = vec![0];
            tests.push(dependant);
        }
        tests.extend((0..63).map(|index| planned(&format!("t{index}"), 1.5, true)));
        let mut plan = BuildPlan::from_tests(tests, 0.03);
        plan.worker_startup_s = 1.47;
        let actual: Vec<f64> = plan.tests.iter().map(|test| test.estimate_s).collect();
        let result = simulate(&plan, &actual, 4, SchedulerConfig::default());
        // One worker's part ends as the long test does, and it takes the second test
        // waiting on it. Counted whole with the long test, the chain left every other
        // worker busy to 33 s, and the second waited for one of them: 35.03 s (1.015).
        assert!(result.makespan_s <= result.lower_bound_s + 1e-9, "{result:?}");
        let ran_on = |test: usize| result.shards.iter().find(|shard| shard.tests.contains(&test)).unwrap().worker;
        assert_ne!(ran_on(2), ran_on(0), "{result:?}");
        assert_eq!(runs(&result, plan.len()), vec![1; plan.len()]);
    }
}
