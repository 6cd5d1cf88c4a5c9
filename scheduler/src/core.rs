//! The scheduler state machine. It owns, for every running build, the state of each test
//! (waiting on dependencies, ready, leased, done), the ready queue ordered by priority,
//! the leases and the workers. Every method is an event with the time passed in; what it
//! returns is the decision. Nothing here reads a clock, touches a file or a socket.
//!
//! Dispatch is dynamic: a free worker asks ([`Scheduler::request_work`]) and gets a shard
//! cut from the ready queue, highest priority first (slowest first, generalised to the
//! DAG by [`crate::plan`]). A test becomes ready only when every dependency has passed; a
//! test whose dependency failed or was skipped is skipped with the reason.
//!
//! Shard sizing aims every worker at one common finish time. When a worker asks, the
//! scheduler estimates when each worker will be free (now for idle ones; for busy ones,
//! the time of their last reported progress plus the estimates of their unfinished
//! tests at the pace the lease has shown so far), and water-fills the work not yet leased
//! over them, each worker paying the shard overhead once more: that level is the target
//! finish `F`. The asking worker may fill
//! `F - now - overhead`. It gets all of that only when the rest would be a shard too small
//! to be worth its overhead (its last shard, however small); otherwise it gets
//! `1 - tail_fraction` of it, so that the tail is cut later, from fresher estimates, in
//! smaller shards that absorb the drift of real durations from history. Shards are thus
//! few (two or three a worker) and large early, small and balanced at the end.
//!
//! New tests (whose estimate is borrowed from their neighbours) are dispatched first
//! ([`BuildPlan::dispatch_priority`]) in shards of their own, no larger than the part of a
//! share held back for later: how long a new test takes is a guess, and a new browser
//! test "like its neighbours" may take ten times as long. Drawn early and apart from the
//! large shards, a long one only means its worker takes less afterwards; cut into a large
//! shard it would end the build late.
//!
//! A shard already running is not beyond repair: when a worker asks, the lease projected
//! to end last may give back the tests it has not started ([`Decision::LeaseShrunk`]):
//! those it cannot run by the common finish while other work is ready, or, when nothing
//! else is ready, those the asking worker would end sooner.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use greenlight_shared::api::TestStatus;

use crate::Seconds;
use crate::plan::{BuildPlan, PlanIndex};

/// How much longer than estimated a chain of dependants may run: a shard holding a test
/// others wait on ends early enough for the chain to take this many times its estimate.
const CHAIN_SAFETY: f64 = 2.0;

/// A build's id, as the master numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BuildId(pub u64);

/// A worker's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkerId(pub u64);

/// A lease's id, unique across builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseId(pub u64);

/// Knobs of the scheduler.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    /// Seconds without a heartbeat after which a lease is taken back.
    pub lease_timeout_s: Seconds,
    /// The least estimated work (seconds, overhead excluded) a shard is cut with, when
    /// that much is ready.
    pub min_shard_s: Seconds,
    /// The least work of a shard as a multiple of the shard overhead (2: the overhead is
    /// at most a third of a shard).
    pub min_shard_overheads: f64,
    /// The least part of a worker's share of the remaining work held back for later,
    /// smaller shards cut from fresher estimates.
    pub tail_fraction: f64,
    /// The expected relative error of a test's own estimate (its history).
    pub estimate_error: f64,
    /// The expected relative error of an estimate borrowed from neighbouring tests.
    pub borrowed_estimate_error: f64,
    /// A shard holds back at least this many standard deviations of its estimated length.
    pub reserve_sigmas: f64,
    /// How many times a test is leased without a result (lost workers, runner crashes,
    /// failed checkouts) before the scheduler gives up on it: the build then ends in error.
    pub max_attempts: u32,
    /// How many times a failed test is run again, on another worker when there is one,
    /// before its failure counts. A pass on a retry makes the test flaky.
    pub retries: u32,
    /// Consecutive shards a worker may lose to infrastructure (ended without all their
    /// results, or taken back) before it is benched.
    pub infra_failures_to_bench: u32,
    /// Seconds a benched worker gets no work; doubled for each further failure.
    pub bench_s: Seconds,
    /// The most estimated work (seconds) one shard may hold. Shard sizing divides the
    /// work among the workers live now; when a build starts with few of them (a farm
    /// starting, a restarted master whose workers come back one by one), this keeps the
    /// first ones from taking hours that the others, arriving seconds later, could share.
    pub max_shard_s: Seconds,
    /// Whether a running lease may give back the tests it has not started
    /// ([`Decision::LeaseShrunk`]) when it runs late or others would idle.
    pub split_running_leases: bool,
}

impl Default for SchedulerConfig {
    fn default() -> SchedulerConfig {
        SchedulerConfig {
            lease_timeout_s: 30.0,
            min_shard_s: 0.0,
            min_shard_overheads: 2.0,
            tail_fraction: 0.2,
            estimate_error: 0.5,
            borrowed_estimate_error: 1.0,
            reserve_sigmas: 1.5,
            max_attempts: 3,
            retries: 1,
            infra_failures_to_bench: 3,
            bench_s: 60.0,
            max_shard_s: 600.0,
            split_running_leases: true,
        }
    }
}

/// How a build ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Nothing failed.
    Green,
    /// These tests failed or errored on every attempt (ids, in plan order).
    Red {
        /// The failing ids.
        failed: Vec<String>,
    },
    /// Nothing failed, but these tests never got a result: the infrastructure failed them
    /// (workers lost, runners crashed) [`SchedulerConfig::max_attempts`] times.
    Error {
        /// The ids given up on, in plan order.
        gave_up: Vec<String>,
    },
}

/// A shard granted to a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseGrant {
    /// The lease.
    pub lease: LeaseId,
    /// Its build.
    pub build: BuildId,
    /// The worker.
    pub worker: WorkerId,
    /// The tests to run, in order (plan indices).
    pub tests: Vec<PlanIndex>,
    /// When it expires without a heartbeat.
    pub deadline: Seconds,
}

/// What the scheduler decided in answer to an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// A test will not run: record it as skipped with this reason.
    Skipped {
        /// The build.
        build: BuildId,
        /// The test (plan index).
        test: PlanIndex,
        /// Its id.
        test_id: String,
        /// Why.
        reason: String,
    },
    /// A test was given up on after too many attempts: record it as an error.
    GaveUp {
        /// The build.
        build: BuildId,
        /// The test (plan index).
        test: PlanIndex,
        /// Its id.
        test_id: String,
        /// Why.
        reason: String,
    },
    /// A test failed and will run again, on another worker when there is one: its failure
    /// is not final yet.
    Retrying {
        /// The build.
        build: BuildId,
        /// The test (plan index).
        test: PlanIndex,
        /// Its id.
        test_id: String,
        /// The attempt that failed.
        attempt: u32,
    },
    /// A lease was taken back; its unfinished tests are queued again.
    LeaseExpired {
        /// The lease.
        lease: LeaseId,
        /// Its worker, now considered lost.
        worker: WorkerId,
        /// How many tests went back to the queue.
        requeued: usize,
    },
    /// A worker lost too many shards in a row to infrastructure: it gets no work until
    /// `until`.
    WorkerBenched {
        /// The worker.
        worker: WorkerId,
        /// When it may have work again.
        until: Seconds,
    },
    /// A running lease gives back the tests it has not started (it runs late, or others
    /// would be idle): they are ready again, for the asking worker or the next, and the
    /// holder stops after the ones it keeps. Its worker is told (in the answer to its next
    /// report or heartbeat); a result it sends for a withdrawn test anyway is stale.
    LeaseShrunk {
        /// The build.
        build: BuildId,
        /// The lease.
        lease: LeaseId,
        /// Its worker.
        worker: WorkerId,
        /// The tests taken back (plan indices), in the lease's order.
        withdrawn: Vec<PlanIndex>,
    },
    /// New tests became ready: idle workers should ask again.
    WorkAvailable,
    /// Every test of the build has a result.
    BuildFinished {
        /// The build.
        build: BuildId,
        /// Green or red.
        verdict: Verdict,
    },
}

/// How a reported result was taken.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    /// Recorded now, as this attempt; the decisions follow from it.
    Accepted {
        /// The attempt (1 for the first lease of the test).
        attempt: u32,
        /// Whether this is the test's result, or a failure that will be retried.
        outcome: Outcome,
        /// What follows.
        decisions: Vec<Decision>,
    },
    /// The test already has a result from this lease: acknowledged, not counted again.
    Duplicate,
    /// The lease no longer holds the test (expired, requeued): ignored.
    Stale,
}

/// A result a restarted master had stored, for [`Scheduler::restore`].
#[derive(Debug, Clone, PartialEq)]
pub struct RestoredResult {
    /// The test id.
    pub test_id: String,
    /// What happened.
    pub status: TestStatus,
    /// Which attempt.
    pub attempt: u32,
    /// A failure that was to be run again, not the test's result.
    pub retried: bool,
    /// An error recorded because the scheduler gave up on the test (no worker ran it).
    pub gave_up: bool,
}

/// What an accepted result means for its test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The test's result in this build. `flaky`: it passed after failing on an earlier
    /// attempt.
    Final {
        /// Whether it passed only on a retry.
        flaky: bool,
    },
    /// A failure that will be run again: not the test's result yet.
    Retry,
}

/// An event the scheduler refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedulerError {
    /// No such lease.
    #[error("unknown lease {0}")]
    UnknownLease(u64),
    /// The lease belongs to another worker.
    #[error("lease {lease} is not held by worker {worker}")]
    NotYourLease {
        /// The lease.
        lease: u64,
        /// The worker who asked.
        worker: u64,
    },
    /// The test is not part of the lease.
    #[error("test {test_id:?} is not part of lease {lease}")]
    TestNotInLease {
        /// The lease.
        lease: u64,
        /// The test id.
        test_id: String,
    },
    /// A build id is already in use.
    #[error("build {0} already exists")]
    DuplicateBuild(u64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum TestState {
    Waiting { unfinished_dependencies: usize },
    Ready,
    Leased(LeaseId),
    Done(TestStatus),
}

#[derive(Debug, Clone, Copy)]
struct ReadyEntry {
    priority: f64,
    index: PlanIndex,
}

impl PartialEq for ReadyEntry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for ReadyEntry {}
impl PartialOrd for ReadyEntry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ReadyEntry {
    fn cmp(&self, other: &Self) -> Ordering {
        // Highest priority first; on a tie the earlier test in the suite.
        self.priority.total_cmp(&other.priority).then_with(|| other.index.cmp(&self.index))
    }
}

#[derive(Debug)]
struct BuildRun {
    plan: BuildPlan,
    states: Vec<TestState>,
    attempts: Vec<u32>,
    /// Failed attempts of each test.
    failures: Vec<u32>,
    /// The workers each test failed on or was lost by: it runs elsewhere when it can.
    avoid: HashMap<PlanIndex, Vec<WorkerId>>,
    /// The leases whose report of each test was accepted (more than one after a retry).
    reported_by: Vec<Vec<LeaseId>>,
    ready: BinaryHeap<ReadyEntry>,
    unleased_work: f64,
    unfinished: usize,
    failed: Vec<PlanIndex>,
    gave_up: Vec<PlanIndex>,
    /// How real durations compare with estimates, recent tests weighing most.
    drift: Drift,
    /// Urgent builds (culprit probes) are served before the others.
    urgent: bool,
}

impl BuildRun {
    /// Puts a test that was leased (or reported failed) back in the ready queue, its
    /// estimate back in the work not yet leased.
    fn requeue(&mut self, test: PlanIndex, priority: f64) {
        self.states[test] = TestState::Ready;
        self.unleased_work += self.plan.tests[test].estimate_s;
        self.ready.push(ReadyEntry { priority, index: test });
    }
}

/// The ratio of real to estimated durations over recently finished tests. Tests are
/// dispatched slowest first, so the recent ones resemble the ones still to cut: their
/// drift (a noisy history under- or over-states whole bands of tests) corrects the
/// estimates the shards are sized with.
#[derive(Debug, Clone, Copy)]
struct Drift {
    real: f64,
    estimated: f64,
}

impl Drift {
    /// Each finished test keeps this much of the weight of those before it.
    const MEMORY: f64 = 0.995;

    fn observe(&mut self, real: f64, estimated: f64) {
        self.real = self.real * Self::MEMORY + real;
        self.estimated = self.estimated * Self::MEMORY + estimated;
    }

    /// Real seconds per estimated second, within [0.5, 2]; 1 until something is known.
    fn ratio(&self) -> f64 {
        if self.estimated > 0.0 { (self.real / self.estimated).clamp(0.5, 2.0) } else { 1.0 }
    }
}

/// What a shard being cut aims at.
#[derive(Debug, Clone, Copy)]
struct ShardGoal {
    /// The asking worker's share of the unleased work: the estimated seconds that bring it
    /// to the common finish time (at least `smallest`, unless `last`).
    share: Seconds,
    /// The common finish time.
    finish: Seconds,
    /// The least work worth a shard's overhead.
    smallest: Seconds,
    /// Whether this is the worker's last shard: too little would be left to hold back.
    last: bool,
}

#[derive(Debug)]
struct LeaseState {
    build: BuildId,
    worker: WorkerId,
    tests: Vec<PlanIndex>,
    deadline: Seconds,
    active: bool,
    /// When the lease last made progress: its start plus the overhead, then each result.
    progress_at: Seconds,
    /// Estimated seconds of its tests not yet reported.
    remaining_estimate: Seconds,
    /// When its first test started: its start plus the overhead.
    running_from: Seconds,
    /// Estimated seconds of the tests it has reported.
    reported_estimate: Seconds,
    /// How many tests it has reported.
    reported: usize,
}

impl LeaseState {
    /// When the worker holding it should be free: its last progress plus its unreported
    /// estimates at its own [`LeaseState::pace`].
    fn free_at(&self, now: Seconds, drift: f64) -> Seconds {
        (self.progress_at + self.remaining_estimate * self.pace(drift)).max(now)
    }

    /// Real seconds per estimated second of this lease's tests so far (a shard holds tests
    /// alike, so its own pace says most about the rest of it), starting from the build's
    /// `drift`.
    fn pace(&self, drift: f64) -> f64 {
        let elapsed = (self.progress_at - self.running_from).max(0.0);
        ((elapsed + Self::PACE_PRIOR_S * drift) / (self.reported_estimate + Self::PACE_PRIOR_S)).clamp(0.5, 4.0)
    }

    /// How many estimated seconds of the build's drift a lease's pace starts from, before
    /// its own results outweigh it.
    const PACE_PRIOR_S: Seconds = 30.0;
}

#[derive(Debug, Default)]
struct WorkerState {
    lease: Option<LeaseId>,
    last_seen: Seconds,
    /// Shards in a row lost to infrastructure.
    infra_failures: u32,
    /// No work until then.
    benched_until: Seconds,
}

/// The scheduler: all running builds, their leases and the live workers.
#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    builds: BTreeMap<BuildId, BuildRun>,
    leases: HashMap<LeaseId, LeaseState>,
    workers: BTreeMap<WorkerId, WorkerState>,
    /// Leases of builds that ended: late reports about them are answered, not refused.
    retired: HashMap<LeaseId, WorkerId>,
    next_lease: u64,
    /// Seconds from a lease's grant to its first test's start, as leases showed it
    /// (recent ones weighing most): checkout, runner start-up and reporting, all a new
    /// shard costs, of which the suite's shard overhead is only the runner's part.
    startup_s: Option<Seconds>,
}

impl Scheduler {
    /// An empty scheduler.
    pub fn new(config: SchedulerConfig) -> Scheduler {
        Scheduler {
            config,
            builds: BTreeMap::new(),
            leases: HashMap::new(),
            workers: BTreeMap::new(),
            retired: HashMap::new(),
            next_lease: 1,
            startup_s: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Lease ids start after `next` (a restarted master continues its numbering).
    pub fn set_next_lease(&mut self, next: u64) {
        self.next_lease = self.next_lease.max(next);
    }

    /// Workers currently counted for shard sizing.
    pub fn live_workers(&self) -> usize {
        self.workers.len()
    }

    /// The plan of a running build.
    pub fn plan(&self, build: BuildId) -> Option<&BuildPlan> {
        self.builds.get(&build).map(|run| &run.plan)
    }

    /// Whether the build is still running.
    pub fn is_running(&self, build: BuildId) -> bool {
        self.builds.contains_key(&build)
    }

    /// The worker a lease was granted to, whether it is active, ended or retired.
    pub fn lease_holder(&self, lease: LeaseId) -> Option<WorkerId> {
        self.leases.get(&lease).map(|state| state.worker).or_else(|| self.retired.get(&lease).copied())
    }

    /// The build and tests of a lease, if it is known and still active.
    pub fn active_lease(&self, lease: LeaseId) -> Option<(BuildId, WorkerId, &[PlanIndex])> {
        let state = self.leases.get(&lease).filter(|state| state.active)?;
        Some((state.build, state.worker, &state.tests))
    }

    /// Event: a worker joined the fleet (registered). It counts for shard sizing from now.
    pub fn worker_joined(&mut self, worker: WorkerId, now: Seconds) {
        self.workers.entry(worker).or_default().last_seen = now;
    }

    /// Event: a build was planned. Tests without dependencies become ready.
    pub fn add_build(
        &mut self,
        build: BuildId,
        plan: BuildPlan,
        _now: Seconds,
    ) -> Result<Vec<Decision>, SchedulerError> {
        if self.builds.contains_key(&build) {
            return Err(SchedulerError::DuplicateBuild(build.0));
        }
        let mut ready = BinaryHeap::new();
        let states = plan
            .tests
            .iter()
            .enumerate()
            .map(|(index, test)| {
                if test.depends_on.is_empty() {
                    ready.push(ReadyEntry { priority: plan.dispatch_priority(index), index });
                    TestState::Ready
                } else {
                    TestState::Waiting { unfinished_dependencies: test.depends_on.len() }
                }
            })
            .collect();
        let run = BuildRun {
            unleased_work: plan.tests.iter().map(|test| test.estimate_s).sum(),
            unfinished: plan.len(),
            attempts: vec![0; plan.len()],
            failures: vec![0; plan.len()],
            avoid: HashMap::new(),
            reported_by: vec![Vec::new(); plan.len()],
            failed: Vec::new(),
            gave_up: Vec::new(),
            drift: Drift { real: 0.0, estimated: 0.0 },
            urgent: false,
            states,
            ready,
            plan,
        };
        let empty = run.unfinished == 0;
        self.builds.insert(build, run);
        if empty {
            return Ok(self.finish_build(build).into_iter().collect());
        }
        Ok(vec![Decision::WorkAvailable])
    }

    /// Event: a restarted master brings back the results it had stored for `build`, in
    /// attempt order. Final ones count as done, as if reported; their consequences
    /// (dependants unblocked or skipped, the build finished) follow. A failure that was to
    /// be retried counts as a failed attempt; the test runs again. Unknown ids are ignored
    /// (the plan is rebuilt from the same selection, so there should be none).
    pub fn restore(&mut self, build: BuildId, results: &[RestoredResult]) -> Vec<Decision> {
        let mut decisions = Vec::new();
        for RestoredResult { test_id, status, attempt, retried, gave_up } in results {
            let Some(run) = self.builds.get_mut(&build) else { break };
            let Some(index) = run.plan.index_of(test_id) else { continue };
            run.attempts[index] = run.attempts[index].max(*attempt);
            if *retried {
                run.failures[index] += 1;
                continue;
            }
            if matches!(run.states[index], TestState::Ready | TestState::Waiting { .. }) {
                run.unleased_work -= run.plan.tests[index].estimate_s;
                self.record(build, index, *status, *gave_up, &mut decisions);
            }
        }
        if let Some(run) = self.builds.get_mut(&build) {
            let ready = run
                .states
                .iter()
                .enumerate()
                .filter(|(_, state)| **state == TestState::Ready)
                .map(|(index, _)| ReadyEntry { priority: run.plan.dispatch_priority(index), index })
                .collect();
            run.ready = ready;
        }
        decisions
    }

    /// Serves `build` before the builds that are not urgent (a culprit probe: the gate waits
    /// on it).
    pub fn make_urgent(&mut self, build: BuildId) {
        if let Some(run) = self.builds.get_mut(&build) {
            run.urgent = true;
        }
    }

    /// Event: a build is abandoned (cancelled). Its leases end; nothing more is reported.
    pub fn remove_build(&mut self, build: BuildId) {
        self.builds.remove(&build);
        for lease in self.leases.values_mut().filter(|lease| lease.build == build) {
            lease.active = false;
        }
        self.forget_leases_of(build);
    }

    /// Event: a free worker asks for work. Returns a shard to run, if any test is ready.
    /// A worker that asks while holding a lease has abandoned it: it is taken back first.
    pub fn request_work(&mut self, worker: WorkerId, now: Seconds) -> (Option<LeaseGrant>, Vec<Decision>) {
        let mut decisions = Vec::new();
        let held = self.workers.get(&worker).and_then(|state| state.lease);
        if let Some(lease) = held {
            decisions.extend(self.take_back(lease, now));
        }
        let state = self.workers.entry(worker).or_default();
        state.last_seen = now;
        if state.benched_until > now {
            return (None, decisions);
        }
        let with_work = |urgent: bool| {
            self.builds.iter().find(|(_, run)| run.urgent == urgent && !run.ready.is_empty()).map(|(&build, _)| build)
        };
        let build = match with_work(true).or_else(|| with_work(false)) {
            Some(build) => {
                if let Some(shrunk) = self.split_laggard(worker, Some(build), now) {
                    // Withdrawn tests are ready: whatever this worker leaves, others may take.
                    decisions.extend([shrunk, Decision::WorkAvailable]);
                }
                build
            }
            // Nothing is ready: the worker would idle while another runs late. It takes
            // over the end of the lease that will end last, when that ends it sooner.
            None => match self.split_laggard(worker, None, now) {
                Some(shrunk @ Decision::LeaseShrunk { build, .. }) => {
                    decisions.extend([shrunk, Decision::WorkAvailable]);
                    build
                }
                _ => return (None, decisions),
            },
        };
        let goal = self.shard_goal(build, worker, now);
        let run = self.builds.get_mut(&build).expect("the build was just found");
        let overhead = run.plan.shard_overhead_s;
        let lease = LeaseId(self.next_lease);
        self.next_lease += 1;
        let mut tests: Vec<PlanIndex> = Vec::new();
        let mut work = 0.0;
        let mut variance = 0.0;
        let mut chain_cap = f64::INFINITY;
        // However few workers are live now, no shard locks up more than this: more may join.
        let max_shard = self.config.max_shard_s / run.drift.ratio();
        // A test that failed on, or was lost by, this worker runs elsewhere, unless no other
        // worker could take it.
        let others: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|&(&id, state)| id != worker && state.benched_until <= now)
            .map(|(&id, _)| id)
            .collect();
        let mut passed_over = Vec::new();
        while let Some(entry) = run.ready.peek().copied() {
            if let Some(avoid) = run.avoid.get(&entry.index)
                && avoid.contains(&worker)
                && others.iter().any(|other| !avoid.contains(other))
            {
                passed_over.push(run.ready.pop().expect("just peeked"));
                continue;
            }
            let planned = &run.plan.tests[entry.index];
            let estimate = planned.estimate_s;
            if let Some(&first) = tests.first() {
                // New tests and known ones are never in one shard; a shard of new tests is
                // no larger than the reserve.
                let new_shard = !run.plan.tests[first].estimate_known;
                if new_shard && (planned.estimate_known || work + estimate > goal.share * self.config.tail_fraction) {
                    break;
                }
                if !new_shard && !planned.estimate_known {
                    passed_over.push(run.ready.pop().expect("just peeked"));
                    continue;
                }
            }
            let relative_error =
                if planned.estimate_known { self.config.estimate_error } else { self.config.borrowed_estimate_error };
            let test_variance = (relative_error * estimate).powi(2);
            if !tests.is_empty() {
                if work >= chain_cap || work + estimate > max_shard {
                    break;
                }
                if goal.last {
                    if work >= goal.share {
                        break;
                    }
                } else {
                    // Hold back room for the drift of what is in the shard.
                    let reserve = (goal.share * self.config.tail_fraction)
                        .max(self.config.reserve_sigmas * (variance + test_variance).sqrt());
                    if work + estimate + reserve > goal.share && work >= goal.smallest {
                        break;
                    }
                }
            }
            run.ready.pop();
            if !planned.dependents.is_empty() {
                // The chain waiting on this test must still fit before the finish: end the
                // shard early enough for a worker to take it up (this one, at the latest).
                let chain_behind = planned.priority_s - estimate;
                let latest_end = goal.finish - now - 2.0 * overhead - CHAIN_SAFETY * chain_behind;
                chain_cap = chain_cap.min(latest_end.max(work + estimate));
            }
            work += estimate;
            variance += test_variance;
            run.unleased_work -= estimate;
            run.states[entry.index] = TestState::Leased(lease);
            run.attempts[entry.index] += 1;
            tests.push(entry.index);
        }
        run.ready.extend(passed_over);
        if tests.is_empty() {
            // Only retries of tests this worker failed were ready: another worker takes them.
            self.next_lease -= 1;
            return (None, decisions);
        }
        // Inside the shard, tests that others wait on run first, so their dependants become
        // ready as early as possible; the rest keep their priority order.
        tests.sort_by_key(|&index| run.plan.tests[index].dependents.is_empty());
        let deadline = now + self.config.lease_timeout_s;
        let state = LeaseState {
            build,
            worker,
            tests: tests.clone(),
            deadline,
            active: true,
            progress_at: now + run.plan.shard_overhead_s,
            remaining_estimate: work,
            running_from: now + run.plan.shard_overhead_s,
            reported_estimate: 0.0,
            reported: 0,
        };
        self.leases.insert(lease, state);
        if let Some(state) = self.workers.get_mut(&worker) {
            state.lease = Some(lease);
        }
        (Some(LeaseGrant { lease, build, worker, tests, deadline }), decisions)
    }

    /// Takes back the tests not yet started of the lease projected, at its own pace, to end
    /// last, when that ends its work sooner by more than twice what a new shard costs (the
    /// measured start-up of recent leases, at least the shard overhead). While `build`
    /// has other work ready, the holder keeps what it can run by the finish the other
    /// workers aim at (at least the test it is running) and the rest joins that work;
    /// when no build has work ready (`build` is `None`), it keeps what brings it level with
    /// the asking worker, which takes the rest. Only leases whose runner reports as it goes
    /// (`BuildPlan::leases_splittable`), that have reported a result (a runner that writes
    /// its report at exit never does, and could not stop after the kept tests) and that the
    /// asking worker does not hold are split.
    fn split_laggard(&mut self, worker: WorkerId, build: Option<BuildId>, now: Seconds) -> Option<Decision> {
        if !self.config.split_running_leases {
            return None;
        }
        let (id, end) = self
            .leases
            .iter()
            .filter(|(_, lease)| {
                lease.active && lease.reported > 0 && lease.worker != worker && build.is_none_or(|b| lease.build == b)
            })
            .filter_map(|(&id, lease)| {
                let run = self.builds.get(&lease.build).filter(|run| run.plan.leases_splittable)?;
                Some((id, lease.free_at(now, run.drift.ratio())))
            })
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))?;
        let lease = &self.leases[&id];
        let finish = build.map(|build| self.shard_goal(build, worker, now).finish);
        let run = &self.builds[&lease.build];
        let overhead = run.plan.shard_overhead_s;
        let pace = lease.pace(run.drift.ratio());
        let unreported: Vec<PlanIndex> =
            lease.tests.iter().copied().filter(|&test| run.states[test] == TestState::Leased(id)).collect();
        let seconds: Vec<Seconds> = unreported.iter().map(|&test| run.plan.tests[test].estimate_s * pace).collect();
        if seconds.len() < 2 {
            return None;
        }
        let total: Seconds = seconds.iter().sum();
        // Keep the first `kept` tests: the holder ends at `progress_at` plus them.
        let holder_end = |kept: usize| (lease.progress_at + seconds[..kept].iter().sum::<Seconds>()).max(now);
        // What a new shard really costs the worker taking the withdrawn tests.
        let startup = self.startup_s.unwrap_or(0.0).max(overhead);
        let (kept, split_end) = match finish {
            Some(finish) => {
                let kept = (1..seconds.len()).take_while(|&kept| holder_end(kept) <= finish).last().unwrap_or(1);
                (kept, holder_end(kept).max(finish))
            }
            None => (1..seconds.len())
                .map(|kept| {
                    let rest: Seconds = seconds[kept..].iter().sum();
                    (kept, holder_end(kept).max(now + startup + rest))
                })
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .expect("at least two tests"),
        };
        if end - split_end <= 2.0 * startup || total <= 0.0 {
            return None;
        }
        let withdrawn = unreported[kept..].to_vec();
        let lease = self.leases.get_mut(&id).expect("a lease just looked at");
        let run = self.builds.get_mut(&lease.build).expect("its build is running");
        for &test in &withdrawn {
            // Not an attempt: it never started.
            run.attempts[test] -= 1;
            lease.remaining_estimate = (lease.remaining_estimate - run.plan.tests[test].estimate_s).max(0.0);
            // A retry keeps its place at the head of the queue.
            let priority = if run.failures[test] > 0 { f64::INFINITY } else { run.plan.dispatch_priority(test) };
            run.requeue(test, priority);
        }
        Some(Decision::LeaseShrunk { build: lease.build, lease: id, worker: lease.worker, withdrawn })
    }

    /// What the next shard of `build` for `worker`, free at `now`, should aim at.
    fn shard_goal(&self, build: BuildId, worker: WorkerId, now: Seconds) -> ShardGoal {
        let run = &self.builds[&build];
        let overhead = run.plan.shard_overhead_s;
        let drift = run.drift.ratio();
        // In real seconds, as far as the recent drift of estimates tells.
        let unleased = run.unleased_work * drift;
        // When each live worker will be free; the asking one is free now.
        let mut free_at: Vec<Seconds> = self
            .workers
            .iter()
            .map(|(&id, state)| match state.lease.and_then(|lease| self.leases.get(&lease)) {
                Some(lease) if id != worker && lease.active => lease.free_at(now, drift),
                _ => now,
            })
            .collect();
        if free_at.is_empty() {
            free_at.push(now);
        }
        free_at.sort_by(f64::total_cmp);
        // Water-fill: the level F at which the free capacity of the workers below it, each
        // paying the overhead once, holds the unleased work.
        let mut capacity_base = 0.0;
        let mut finish = now + overhead + unleased;
        for (count, &available) in free_at.iter().enumerate() {
            capacity_base += available + overhead;
            finish = (unleased + capacity_base) / (count + 1) as f64;
            if free_at.get(count + 1).is_none_or(|&next| finish <= next + overhead) {
                break;
            }
        }
        // Back in estimated seconds, the unit shards are cut in.
        let share = (finish - now - overhead).max(0.0) / drift;
        let smallest = self.config.min_shard_s.max(self.config.min_shard_overheads * overhead);
        let last = share * self.config.tail_fraction < smallest;
        // A last shard holds just what brings this worker to the common finish, even less
        // than `smallest`: padding it to a worthwhile size would end this worker after the
        // others, who are free by then to take the rest.
        let share = if last { share } else { share.max(smallest) };
        ShardGoal { share, finish, smallest, last }
    }

    /// Event: a heartbeat. Returns whether the lease is still the worker's (and extends it).
    pub fn heartbeat(&mut self, lease: LeaseId, worker: WorkerId, now: Seconds) -> Result<bool, SchedulerError> {
        if self.check_retired(lease, worker)? {
            return Ok(false);
        }
        let timeout = self.config.lease_timeout_s;
        let state = self.leases.get_mut(&lease).ok_or(SchedulerError::UnknownLease(lease.0))?;
        if state.worker != worker {
            return Err(SchedulerError::NotYourLease { lease: lease.0, worker: worker.0 });
        }
        if let Some(worker_state) = self.workers.get_mut(&worker) {
            worker_state.last_seen = now;
        }
        if state.active {
            state.deadline = now + timeout;
        }
        Ok(state.active)
    }

    /// Event: a worker reports a finished test of its lease.
    pub fn test_finished(
        &mut self,
        lease: LeaseId,
        worker: WorkerId,
        test_id: &str,
        status: TestStatus,
        now: Seconds,
    ) -> Result<Report, SchedulerError> {
        if self.check_retired(lease, worker)? {
            return Ok(Report::Stale);
        }
        let lease_state = self.leases.get(&lease).ok_or(SchedulerError::UnknownLease(lease.0))?;
        if lease_state.worker != worker {
            return Err(SchedulerError::NotYourLease { lease: lease.0, worker: worker.0 });
        }
        let build = lease_state.build;
        let not_in_lease = || SchedulerError::TestNotInLease { lease: lease.0, test_id: test_id.to_owned() };
        let Some(run) = self.builds.get_mut(&build) else {
            // The build ended (or was cancelled): whatever this is, it is late.
            return Ok(Report::Stale);
        };
        let index = run.plan.index_of(test_id).ok_or_else(not_in_lease)?;
        if !lease_state.tests.contains(&index) {
            return Err(not_in_lease());
        }
        if let Some(worker_state) = self.workers.get_mut(&worker) {
            worker_state.last_seen = now;
        }
        match run.states[index] {
            TestState::Leased(holder) if holder == lease => {}
            _ if run.reported_by[index].contains(&lease) => return Ok(Report::Duplicate),
            _ => return Ok(Report::Stale),
        }
        run.reported_by[index].push(lease);
        let attempt = run.attempts[index];
        let estimate = run.plan.tests[index].estimate_s;
        if let Some(state) = self.leases.get_mut(&lease) {
            run.drift.observe((now - state.progress_at).max(0.0), estimate);
            if state.reported == 0 {
                // From the grant to the first test's start, as far as its estimate at the
                // build's drift tells.
                let granted = state.running_from - run.plan.shard_overhead_s;
                let sample = (now - granted - estimate * run.drift.ratio()).max(0.0);
                let previous = self.startup_s.unwrap_or(sample);
                self.startup_s = Some(0.9 * previous + 0.1 * sample);
            }
            state.progress_at = state.progress_at.max(now);
            state.remaining_estimate = (state.remaining_estimate - estimate).max(0.0);
            state.reported_estimate += estimate;
            state.reported += 1;
        }
        let mut decisions = Vec::new();
        if status.is_failure() && run.failures[index] < self.config.retries {
            // Not final yet: run it again, first in line, to tell a flake from a failure.
            run.failures[index] += 1;
            run.avoid.entry(index).or_default().push(worker);
            run.requeue(index, f64::INFINITY);
            decisions.push(Decision::Retrying { build, test: index, test_id: test_id.to_owned(), attempt });
            decisions.push(Decision::WorkAvailable);
            return Ok(Report::Accepted { attempt, outcome: Outcome::Retry, decisions });
        }
        let flaky = status == TestStatus::Passed && run.failures[index] > 0;
        self.record(build, index, status, false, &mut decisions);
        Ok(Report::Accepted { attempt, outcome: Outcome::Final { flaky }, decisions })
    }

    /// Event: the worker's shard process ended. Tests it did not report go back to the
    /// queue (or are given up on after [`SchedulerConfig::max_attempts`]).
    pub fn lease_finished(
        &mut self,
        lease: LeaseId,
        worker: WorkerId,
        now: Seconds,
    ) -> Result<Vec<Decision>, SchedulerError> {
        if self.check_retired(lease, worker)? {
            return Ok(Vec::new());
        }
        let state = self.leases.get(&lease).ok_or(SchedulerError::UnknownLease(lease.0))?;
        if state.worker != worker {
            return Err(SchedulerError::NotYourLease { lease: lease.0, worker: worker.0 });
        }
        if let Some(worker_state) = self.workers.get_mut(&worker) {
            worker_state.last_seen = now;
        }
        Ok(self.take_back(lease, now))
    }

    /// Event: time passed. Leases past their deadline are taken back and their workers
    /// counted as lost; idle workers not heard from for two lease timeouts are forgotten.
    pub fn tick(&mut self, now: Seconds) -> Vec<Decision> {
        let mut expired: Vec<LeaseId> =
            self.leases.iter().filter(|(_, state)| state.active && state.deadline < now).map(|(&id, _)| id).collect();
        expired.sort();
        let mut decisions = Vec::new();
        for lease in expired {
            // An earlier expiry in this tick may have ended the build and retired this lease.
            let Some(state) = self.leases.get(&lease) else { continue };
            let (worker, build) = (state.worker, state.build);
            let tests: Vec<PlanIndex> = self.builds.get(&build).map_or_else(Vec::new, |run| {
                state.tests.iter().copied().filter(|&test| run.states[test] == TestState::Leased(lease)).collect()
            });
            let consequences = self.take_back(lease, now);
            let requeued = self
                .builds
                .get(&build)
                .map_or(0, |run| tests.iter().filter(|&&test| run.states[test] == TestState::Ready).count());
            self.workers.remove(&worker);
            decisions.push(Decision::LeaseExpired { lease, worker, requeued });
            decisions.extend(consequences);
        }
        let forget_before = now - 2.0 * self.config.lease_timeout_s;
        self.workers.retain(|_, state| state.lease.is_some() || state.last_seen >= forget_before);
        decisions
    }

    /// Whether `lease` belongs to an ended build; an error if it is not `worker`'s.
    fn check_retired(&self, lease: LeaseId, worker: WorkerId) -> Result<bool, SchedulerError> {
        match self.retired.get(&lease) {
            None => Ok(false),
            Some(&holder) if holder == worker => Ok(true),
            Some(_) => Err(SchedulerError::NotYourLease { lease: lease.0, worker: worker.0 }),
        }
    }

    fn take_back(&mut self, lease: LeaseId, now: Seconds) -> Vec<Decision> {
        let mut decisions = Vec::new();
        let Some(state) = self.leases.get_mut(&lease) else { return decisions };
        if !state.active {
            return decisions;
        }
        state.active = false;
        let (build, worker) = (state.build, state.worker);
        let tests = state.tests.clone();
        if let Some(worker_state) = self.workers.get_mut(&worker)
            && worker_state.lease == Some(lease)
        {
            worker_state.lease = None;
        }
        let max_attempts = self.config.max_attempts;
        let Some(run) = self.builds.get_mut(&build) else { return decisions };
        let mut requeued = false;
        let mut gave_up = Vec::new();
        let mut unreported = 0;
        for test in tests {
            if run.states[test] != TestState::Leased(lease) {
                continue;
            }
            unreported += 1;
            if run.attempts[test] - run.failures[test] >= max_attempts {
                gave_up.push(test);
            } else {
                let priority = run.plan.dispatch_priority(test);
                run.requeue(test, priority);
                // A worker whose checkout or runner just failed should not get it straight back.
                run.avoid.entry(test).or_default().push(worker);
                requeued = true;
            }
        }
        if let Some(worker_state) = self.workers.get_mut(&worker) {
            if unreported == 0 {
                worker_state.infra_failures = 0;
            } else {
                worker_state.infra_failures += 1;
                let beyond = worker_state.infra_failures.saturating_sub(self.config.infra_failures_to_bench);
                if worker_state.infra_failures >= self.config.infra_failures_to_bench {
                    let until = now + self.config.bench_s * 2f64.powi(beyond.min(10) as i32);
                    worker_state.benched_until = until;
                    decisions.push(Decision::WorkerBenched { worker, until });
                }
            }
        }
        for test in gave_up {
            let run = &self.builds[&build];
            let attempts = run.attempts[test] - run.failures[test];
            decisions.push(Decision::GaveUp {
                build,
                test,
                test_id: run.plan.tests[test].id.clone(),
                reason: format!("no result after {attempts} attempts (workers lost or runner crashed)"),
            });
            self.record(build, test, TestStatus::Error, true, &mut decisions);
        }
        if requeued {
            decisions.push(Decision::WorkAvailable);
        }
        decisions
    }

    /// Records a final status and everything that follows from it. `gave_up`: an error
    /// of the infrastructure, not of the test.
    fn record(
        &mut self,
        build: BuildId,
        index: PlanIndex,
        status: TestStatus,
        gave_up: bool,
        decisions: &mut Vec<Decision>,
    ) {
        let Some(run) = self.builds.get_mut(&build) else { return };
        run.states[index] = TestState::Done(status);
        run.unfinished -= 1;
        if gave_up {
            run.gave_up.push(index);
        } else if status.is_failure() {
            run.failed.push(index);
        }
        if status == TestStatus::Passed {
            let mut unblocked = false;
            for position in 0..run.plan.tests[index].dependents.len() {
                let dependent = run.plan.tests[index].dependents[position];
                if let TestState::Waiting { unfinished_dependencies } = &mut run.states[dependent] {
                    *unfinished_dependencies -= 1;
                    if *unfinished_dependencies == 0 {
                        run.states[dependent] = TestState::Ready;
                        run.ready
                            .push(ReadyEntry { priority: run.plan.dispatch_priority(dependent), index: dependent });
                        unblocked = true;
                    }
                }
            }
            if unblocked {
                decisions.push(Decision::WorkAvailable);
            }
        } else {
            // Everything waiting on this test, transitively, will not run.
            let mut stack = vec![(index, run.plan.tests[index].id.clone(), status)];
            while let Some((blocker, blocker_id, blocker_status)) = stack.pop() {
                for position in 0..run.plan.tests[blocker].dependents.len() {
                    let dependent = run.plan.tests[blocker].dependents[position];
                    if !matches!(run.states[dependent], TestState::Waiting { .. }) {
                        continue;
                    }
                    run.states[dependent] = TestState::Done(TestStatus::Skipped);
                    run.unfinished -= 1;
                    run.unleased_work -= run.plan.tests[dependent].estimate_s;
                    let reason = format!("dependency {blocker_id:?} {}", blocker_status.as_str());
                    let test_id = run.plan.tests[dependent].id.clone();
                    decisions.push(Decision::Skipped { build, test: dependent, test_id, reason });
                    stack.push((dependent, run.plan.tests[dependent].id.clone(), TestStatus::Skipped));
                }
            }
        }
        if run.unfinished == 0 {
            decisions.extend(self.finish_build(build));
        }
    }

    fn finish_build(&mut self, build: BuildId) -> Option<Decision> {
        let run = self.builds.remove(&build)?;
        self.forget_leases_of(build);
        let ids = |mut indices: Vec<PlanIndex>| {
            indices.sort_unstable();
            indices.into_iter().map(|index| run.plan.tests[index].id.clone()).collect()
        };
        let verdict = if !run.failed.is_empty() {
            Verdict::Red { failed: ids(run.failed.clone()) }
        } else if !run.gave_up.is_empty() {
            Verdict::Error { gave_up: ids(run.gave_up.clone()) }
        } else {
            Verdict::Green
        };
        Some(Decision::BuildFinished { build, verdict })
    }

    fn forget_leases_of(&mut self, build: BuildId) {
        let workers = &mut self.workers;
        let retired = &mut self.retired;
        self.leases.retain(|lease, state| {
            if state.build != build {
                return true;
            }
            retired.insert(*lease, state.worker);
            if let Some(worker_state) = workers.get_mut(&state.worker)
                && worker_state.lease == Some(*lease)
            {
                worker_state.lease = None;
            }
            false
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{PlannedTest, planned};

    fn plan() -> BuildPlan {
        let test = |id: &str, depends_on: &[usize]| PlannedTest {
            id: id.into(),
            depends_on: depends_on.to_vec(),
            dependents: vec![],
            estimate_s: 1.0,
            estimate_known: true,
            priority_s: 0.0,
        };
        BuildPlan::from_tests(vec![test("a", &[]), test("b", &[0]), test("c", &[]), test("d", &[2])], 0.0)
    }

    fn restored(test_id: &str, status: TestStatus, attempt: u32, retried: bool) -> RestoredResult {
        RestoredResult { test_id: test_id.into(), status, attempt, retried, gave_up: false }
    }

    fn single(id: &str) -> BuildPlan {
        let test = PlannedTest {
            id: id.into(),
            depends_on: vec![],
            dependents: vec![],
            estimate_s: 1.0,
            estimate_known: true,
            priority_s: 0.0,
        };
        BuildPlan::from_tests(vec![test], 0.0)
    }

    fn accepted(report: Result<Report, SchedulerError>) -> (Outcome, Vec<Decision>) {
        match report.unwrap() {
            Report::Accepted { outcome, decisions, .. } => (outcome, decisions),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_failed_test_is_retried_on_another_worker_and_a_pass_there_makes_it_flaky() {
        let mut scheduler = Scheduler::new(SchedulerConfig::default());
        scheduler.worker_joined(WorkerId(1), 0.0);
        scheduler.worker_joined(WorkerId(2), 0.0);
        scheduler.add_build(BuildId(1), single("t"), 0.0).unwrap();
        let grant = scheduler.request_work(WorkerId(1), 0.0).0.unwrap();
        let (outcome, decisions) =
            accepted(scheduler.test_finished(grant.lease, WorkerId(1), "t", TestStatus::Failed, 1.0));
        assert_eq!(outcome, Outcome::Retry);
        assert!(decisions.iter().any(|d| matches!(d, Decision::Retrying { attempt: 1, .. })), "{decisions:?}");
        scheduler.lease_finished(grant.lease, WorkerId(1), 1.0).unwrap();
        // The worker it failed on is passed over while another can take it.
        assert_eq!(scheduler.request_work(WorkerId(1), 2.0).0, None);
        let retry = scheduler.request_work(WorkerId(2), 2.0).0.expect("the other worker gets the retry");
        let (outcome, decisions) =
            accepted(scheduler.test_finished(retry.lease, WorkerId(2), "t", TestStatus::Passed, 3.0));
        assert_eq!(outcome, Outcome::Final { flaky: true });
        assert!(decisions.contains(&Decision::BuildFinished { build: BuildId(1), verdict: Verdict::Green }));
    }

    #[test]
    fn a_test_that_fails_every_attempt_makes_the_build_red_and_one_worker_can_retry_alone() {
        let mut scheduler = Scheduler::new(SchedulerConfig { retries: 2, ..SchedulerConfig::default() });
        scheduler.worker_joined(WorkerId(1), 0.0);
        scheduler.add_build(BuildId(1), single("t"), 0.0).unwrap();
        for attempt in 1..=3u32 {
            let now = f64::from(attempt);
            let grant = scheduler.request_work(WorkerId(1), now).0.expect("the only worker retries");
            let (outcome, decisions) =
                accepted(scheduler.test_finished(grant.lease, WorkerId(1), "t", TestStatus::Failed, now));
            if attempt < 3 {
                assert_eq!(outcome, Outcome::Retry);
            } else {
                assert_eq!(outcome, Outcome::Final { flaky: false });
                let red = Verdict::Red { failed: vec!["t".into()] };
                assert!(decisions.contains(&Decision::BuildFinished { build: BuildId(1), verdict: red }));
            }
            scheduler.lease_finished(grant.lease, WorkerId(1), now).unwrap();
        }
    }

    #[test]
    fn tests_no_worker_could_run_end_the_build_in_error_not_red_and_bench_the_worker() {
        let config = SchedulerConfig {
            max_attempts: 2,
            infra_failures_to_bench: 2,
            bench_s: 60.0,
            ..SchedulerConfig::default()
        };
        let mut scheduler = Scheduler::new(config);
        scheduler.worker_joined(WorkerId(1), 0.0);
        scheduler.add_build(BuildId(1), single("t"), 0.0).unwrap();
        // The shard ends twice without its result (a runner crash, a failed checkout).
        let first = scheduler.request_work(WorkerId(1), 0.0).0.unwrap();
        let decisions = scheduler.lease_finished(first.lease, WorkerId(1), 1.0).unwrap();
        assert!(decisions.contains(&Decision::WorkAvailable));
        let second = scheduler.request_work(WorkerId(1), 1.0).0.unwrap();
        let decisions = scheduler.lease_finished(second.lease, WorkerId(1), 2.0).unwrap();
        let error = Verdict::Error { gave_up: vec!["t".into()] };
        assert!(decisions.contains(&Decision::BuildFinished { build: BuildId(1), verdict: error }), "{decisions:?}");
        // Two shards lost in a row: no work for a minute.
        scheduler.add_build(BuildId(2), single("u"), 2.0).unwrap();
        assert_eq!(scheduler.request_work(WorkerId(1), 30.0).0, None);
        assert!(scheduler.request_work(WorkerId(1), 62.5).0.is_some());
    }

    #[test]
    fn a_lone_worker_takes_no_more_than_the_largest_shard_and_a_worker_joining_later_shares_the_rest() {
        let tests = (0..100)
            .map(|index| PlannedTest {
                id: format!("t{index}"),
                depends_on: vec![],
                dependents: vec![],
                estimate_s: 60.0,
                estimate_known: true,
                priority_s: 0.0,
            })
            .collect();
        let mut scheduler = Scheduler::new(SchedulerConfig::default());
        scheduler.worker_joined(WorkerId(1), 0.0);
        scheduler.add_build(BuildId(1), BuildPlan::from_tests(tests, 1.0), 0.0).unwrap();
        let first = scheduler.request_work(WorkerId(1), 0.0).0.unwrap();
        assert_eq!(first.tests.len(), 10, "600 s of the 6000 s, not 80% of it");
        scheduler.worker_joined(WorkerId(2), 5.0);
        let second = scheduler.request_work(WorkerId(2), 5.0).0.unwrap();
        assert!(!second.tests.is_empty());
    }

    #[test]
    fn the_last_tests_are_split_evenly_among_the_free_workers_not_in_minimum_size_shards() {
        // One 10 s test and 40 of 0.1 s; 1.5 s overhead, so a shard is worth 3 s of work.
        let mut tests = vec![planned("long", 10.0, true)];
        tests.extend((0..40).map(|index| planned(&format!("tiny{index}"), 0.1, true)));
        let mut scheduler = Scheduler::new(SchedulerConfig::default());
        for worker in 1..=3 {
            scheduler.worker_joined(WorkerId(worker), 0.0);
        }
        scheduler.add_build(BuildId(1), BuildPlan::from_tests(tests, 1.5), 0.0).unwrap();
        let first = scheduler.request_work(WorkerId(1), 0.0).0.unwrap();
        assert_eq!(first.tests, [0], "the long test alone");
        // The other two share the 4 s of tiny tests: both end at 3.5 s. Padded to 3 s, the
        // second would end at 4.5 s and the third at 2.5 s.
        let second = scheduler.request_work(WorkerId(2), 0.0).0.unwrap();
        let third = scheduler.request_work(WorkerId(3), 0.0).0.unwrap();
        assert_eq!((second.tests.len(), third.tests.len()), (20, 20));
    }

    #[test]
    fn new_tests_run_first_in_shards_of_their_own_no_larger_than_the_reserve() {
        // Ten known tests of 30 s, ten new ones borrowing an estimate of 4 s.
        let mut tests: Vec<PlannedTest> = (0..10).map(|index| planned(&format!("known{index}"), 30.0, true)).collect();
        tests.extend((0..10).map(|index| planned(&format!("new{index}"), 4.0, false)));
        let mut scheduler = Scheduler::new(SchedulerConfig::default());
        scheduler.worker_joined(WorkerId(1), 0.0);
        scheduler.worker_joined(WorkerId(2), 0.0);
        scheduler.add_build(BuildId(1), BuildPlan::from_tests(tests, 1.0), 0.0).unwrap();
        let is_new = |index: &PlanIndex| *index >= 10;
        // Each worker's share is 170 s; a fifth of it (34 s) may be new tests: eight of them.
        let first = scheduler.request_work(WorkerId(1), 0.0).0.unwrap();
        assert_eq!(first.tests.len(), 8);
        assert!(first.tests.iter().all(is_new), "{:?}", first.tests);
        // The other two new tests, and nothing else, go to the next worker to ask.
        let second = scheduler.request_work(WorkerId(2), 0.0).0.unwrap();
        assert_eq!(second.tests.len(), 2);
        assert!(second.tests.iter().all(is_new), "{:?}", second.tests);
        for &test in &second.tests {
            let id = format!("new{}", test - 10);
            accepted(scheduler.test_finished(second.lease, WorkerId(2), &id, TestStatus::Passed, 9.0));
        }
        scheduler.lease_finished(second.lease, WorkerId(2), 9.0).unwrap();
        let third = scheduler.request_work(WorkerId(2), 9.0).0.unwrap();
        assert!(!third.tests.is_empty() && !third.tests.iter().any(is_new), "{:?}", third.tests);
    }

    #[test]
    fn tests_a_worker_lost_go_to_another_worker_first() {
        let mut scheduler = Scheduler::new(SchedulerConfig::default());
        scheduler.worker_joined(WorkerId(1), 0.0);
        scheduler.worker_joined(WorkerId(2), 0.0);
        scheduler.add_build(BuildId(1), single("t"), 0.0).unwrap();
        let grant = scheduler.request_work(WorkerId(1), 0.0).0.unwrap();
        // Its checkout failed: the shard ends without a result.
        scheduler.lease_finished(grant.lease, WorkerId(1), 0.1).unwrap();
        assert_eq!(scheduler.request_work(WorkerId(1), 0.2).0, None, "not straight back to the worker that lost it");
        let again = scheduler.request_work(WorkerId(2), 0.3).0.expect("the other worker takes it");
        assert_eq!(again.tests, vec![0]);
    }

    /// A scheduler that cuts a lone worker's shard from everything ready (up to
    /// `max_shard_s`), holding nothing back: the shapes of the split tests below are exact.
    fn greedy(max_shard_s: Seconds) -> Scheduler {
        Scheduler::new(SchedulerConfig {
            tail_fraction: 0.0,
            reserve_sigmas: 0.0,
            max_shard_s,
            ..SchedulerConfig::default()
        })
    }

    fn tens(count: usize) -> BuildPlan {
        BuildPlan::from_tests((0..count).map(|index| planned(&format!("t{index}"), 10.0, true)).collect(), 1.0)
    }

    /// A lone worker leases the whole of `plan` (tests of 10 s) and reports its first test
    /// after 20 s, twice its estimate; then a second worker joins. The first lease.
    fn first_test_took_twice_its_estimate(scheduler: &mut Scheduler, plan: BuildPlan) -> LeaseGrant {
        scheduler.worker_joined(WorkerId(1), 0.0);
        scheduler.add_build(BuildId(1), plan, 0.0).unwrap();
        let first = scheduler.request_work(WorkerId(1), 0.0).0.unwrap();
        assert_eq!(first.tests, [0, 1, 2, 3]);
        accepted(scheduler.test_finished(first.lease, WorkerId(1), "t0", TestStatus::Passed, 21.0));
        scheduler.worker_joined(WorkerId(2), 21.0);
        first
    }

    #[test]
    fn an_idle_worker_takes_over_the_unstarted_end_of_a_lease_running_late() {
        let mut scheduler = greedy(600.0);
        // Its first test took 20 s, not 10: at that pace it ends at 81 s.
        let first = first_test_took_twice_its_estimate(&mut scheduler, tens(4));
        let (second, decisions) = scheduler.request_work(WorkerId(2), 21.0);
        // Kept t1 and t2, it ends at 61 s; the newcomer runs t3 by 62 s.
        let shrunk =
            Decision::LeaseShrunk { build: BuildId(1), lease: first.lease, worker: WorkerId(1), withdrawn: vec![3] };
        assert_eq!(decisions, [shrunk, Decision::WorkAvailable]);
        let second = second.expect("the withdrawn test goes to the idle worker");
        assert_eq!(second.tests, [3]);
        // The holder ran t3 before it heard: stale, the other worker's result counts.
        assert_eq!(
            scheduler.test_finished(first.lease, WorkerId(1), "t3", TestStatus::Failed, 62.0).unwrap(),
            Report::Stale
        );
        accepted(scheduler.test_finished(first.lease, WorkerId(1), "t1", TestStatus::Passed, 41.0));
        accepted(scheduler.test_finished(first.lease, WorkerId(1), "t2", TestStatus::Passed, 61.0));
        // Ending after the kept tests is no infrastructure failure: nothing goes back.
        let ended = scheduler.lease_finished(first.lease, WorkerId(1), 61.0).unwrap();
        assert!(ended.is_empty(), "{ended:?}");
        let report = scheduler.test_finished(second.lease, WorkerId(2), "t3", TestStatus::Passed, 62.0).unwrap();
        let Report::Accepted { attempt, decisions, .. } = report else { panic!("{report:?}") };
        assert_eq!(attempt, 1, "a withdrawn test never started: its first attempt is the taker's");
        assert!(decisions.contains(&Decision::BuildFinished { build: BuildId(1), verdict: Verdict::Green }));
    }

    #[test]
    fn a_lease_that_has_reported_nothing_yet_is_not_split() {
        // Its runner may write its report only at exit: the scheduler knows neither its
        // pace nor which test it runs, and the worker could not stop after the kept ones.
        let mut scheduler = greedy(600.0);
        scheduler.worker_joined(WorkerId(1), 0.0);
        scheduler.add_build(BuildId(1), tens(4), 0.0).unwrap();
        let first = scheduler.request_work(WorkerId(1), 0.0).0.unwrap();
        scheduler.worker_joined(WorkerId(2), 21.0);
        assert_eq!(scheduler.request_work(WorkerId(2), 21.0), (None, vec![]));
        accepted(scheduler.test_finished(first.lease, WorkerId(1), "t0", TestStatus::Passed, 21.0));
        let (second, _) = scheduler.request_work(WorkerId(2), 21.0);
        assert_eq!(second.expect("once it reported, its end is taken over").tests, [3]);
    }

    #[test]
    fn splitting_can_be_switched_off() {
        let mut scheduler = Scheduler::new(SchedulerConfig { split_running_leases: false, ..greedy(600.0).config });
        first_test_took_twice_its_estimate(&mut scheduler, tens(4));
        assert_eq!(scheduler.request_work(WorkerId(2), 21.0), (None, vec![]));
    }

    #[test]
    fn a_lease_whose_runner_reports_only_at_exit_is_never_split() {
        let mut scheduler = greedy(600.0);
        let mut plan = tens(4);
        plan.leases_splittable = false;
        first_test_took_twice_its_estimate(&mut scheduler, plan);
        assert_eq!(scheduler.request_work(WorkerId(2), 21.0), (None, vec![]));
    }

    #[test]
    fn a_lease_running_late_gives_back_what_it_cannot_run_by_the_common_finish() {
        let mut scheduler = greedy(40.0);
        scheduler.worker_joined(WorkerId(1), 0.0);
        scheduler.add_build(BuildId(1), tens(6), 0.0).unwrap();
        let first = scheduler.request_work(WorkerId(1), 0.0).0.unwrap();
        assert_eq!(first.tests, [0, 1, 2, 3], "no shard above 40 s");
        // Its first test took 30 s: at its pace (2.25 against the build's 2) it ends at 98.5 s,
        // while the newcomer and the two tests still queued would end at 72 s.
        accepted(scheduler.test_finished(first.lease, WorkerId(1), "t0", TestStatus::Passed, 31.0));
        scheduler.worker_joined(WorkerId(2), 31.0);
        let (second, decisions) = scheduler.request_work(WorkerId(2), 31.0);
        let shrunk =
            Decision::LeaseShrunk { build: BuildId(1), lease: first.lease, worker: WorkerId(1), withdrawn: vec![2, 3] };
        assert_eq!(decisions, [shrunk, Decision::WorkAvailable]);
        let second = second.unwrap();
        assert!(second.tests.iter().all(|test| [2, 3, 4, 5].contains(test)), "{:?}", second.tests);
        assert_eq!(
            scheduler.test_finished(first.lease, WorkerId(1), "t2", TestStatus::Passed, 60.0).unwrap(),
            Report::Stale
        );
    }

    #[test]
    fn restored_results_count_as_done_and_unblock_or_skip_their_dependants() {
        let mut scheduler = Scheduler::new(SchedulerConfig::default());
        scheduler.worker_joined(WorkerId(1), 0.0);
        scheduler.add_build(BuildId(7), plan(), 0.0).unwrap();
        let decisions = scheduler.restore(
            BuildId(7),
            &[
                restored("a", TestStatus::Passed, 1, false),
                restored("c", TestStatus::Failed, 1, true),
                restored("c", TestStatus::Failed, 2, false),
                restored("gone", TestStatus::Passed, 1, false),
            ],
        );
        assert!(
            decisions.iter().any(|decision| matches!(decision, Decision::Skipped { test_id, .. } if test_id == "d"))
        );
        // Only b is left: a passed before the restart, c failed, d is skipped.
        let (grant, _) = scheduler.request_work(WorkerId(1), 1.0);
        let grant = grant.expect("b is ready");
        assert_eq!(grant.tests, vec![1]);
        let report = scheduler.test_finished(grant.lease, WorkerId(1), "b", TestStatus::Passed, 2.0).unwrap();
        let Report::Accepted { attempt, outcome, decisions } = report else { panic!("{report:?}") };
        assert_eq!((attempt, outcome), (1, Outcome::Final { flaky: false }));
        assert!(decisions.contains(&Decision::BuildFinished {
            build: BuildId(7),
            verdict: Verdict::Red { failed: vec!["c".into()] }
        }));
    }
}
