//! The scheduler's state: for every running build the state of each test, its ready queue
//! and how real durations drift from the estimates; the leases, active and ended; the
//! workers. Also the constructors and the read accessors; the events live in
//! [`super::dispatch`] and [`super::reports`].

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use greenlight_shared::api::TestStatus;

use super::{BuildId, Decision, LeaseId, SchedulerConfig, SchedulerError, WorkerId};
use crate::Seconds;
use crate::plan::{BuildPlan, PlanIndex};

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum TestState {
    Waiting { unfinished_dependencies: usize },
    Ready,
    Leased(LeaseId),
    Done(TestStatus),
}

#[derive(Debug, Clone, Copy)]
pub(super) struct ReadyEntry {
    pub(super) priority: f64,
    pub(super) index: PlanIndex,
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

/// A split of a build's ready work among the workers ([`ShardSizing::Fitted`](super::ShardSizing::Fitted)), planned
/// when one of them asked and kept for the others: each worker's part is its shard when
/// it asks, as long as nothing else changed the ready work or the workers it was split
/// among.
#[derive(Debug, Clone)]
pub(super) struct FittedSplit {
    /// The workers the work was split among, in the order of [`Scheduler::workers`] (the
    /// worker that asked last when it had not joined).
    pub(super) workers: Vec<WorkerId>,
    /// The parts not handed out yet, of the workers that were free when it was planned. A
    /// worker's part may be empty: it is then cut a shard the finer way.
    pub(super) parts: HashMap<WorkerId, FittedPart>,
}

/// One worker's part of a [`FittedSplit`].
#[derive(Debug, Clone)]
pub(super) struct FittedPart {
    /// When the split had the worker start its tests: if it asks much earlier or later,
    /// its part no longer fits and the split is planned again.
    pub(super) ready_at: Seconds,
    /// Its tests, highest priority first.
    pub(super) tests: Vec<ReadyEntry>,
}

#[derive(Debug)]
pub(super) struct BuildRun {
    pub(super) plan: BuildPlan,
    pub(super) states: Vec<TestState>,
    pub(super) attempts: Vec<u32>,
    /// Failed attempts of each test.
    pub(super) failures: Vec<u32>,
    /// The workers each test failed on or was lost by: it runs elsewhere when it can.
    pub(super) avoid: HashMap<PlanIndex, Vec<WorkerId>>,
    /// The leases whose report of each test was accepted (more than one after a retry).
    pub(super) reported_by: Vec<Vec<LeaseId>>,
    /// The tests ready to lease, highest priority last (`last`, `pop_last`): ordered, so
    /// that a fitted grant takes its tests out wherever they stand.
    pub(super) ready: BTreeSet<ReadyEntry>,
    /// The split of the ready work among the workers that [`ShardSizing::Fitted`](super::ShardSizing::Fitted) planned
    /// last, whose parts are handed out as their workers ask; dropped whenever the ready
    /// work changes otherwise (see [`BuildRun::ready_changed`]).
    pub(super) fitted_split: Option<FittedSplit>,
    /// How many of the plan's tests are new (their estimates borrowed).
    pub(super) new_in_plan: usize,
    /// The plan's tests that others depend on, in plan order.
    pub(super) heads: Vec<PlanIndex>,
    pub(super) unleased_work: f64,
    pub(super) unfinished: usize,
    /// Tests whose final result counts against the build (the verdict's red list).
    pub(super) fails_build: Vec<PlanIndex>,
    pub(super) gave_up: Vec<PlanIndex>,
    /// How real durations compare with estimates, recent tests weighing most.
    pub(super) drift: Drift,
    /// Urgent builds (culprit probes) are served before the others.
    pub(super) urgent: bool,
    /// The workers that have had a shard of this build: they have paid its start-up.
    pub(super) started: BTreeSet<WorkerId>,
    /// What this build's shards cost besides their tests.
    pub(super) costs: ShardCosts,
    /// How the new tests' borrowed estimates compare with what they take.
    pub(super) new_tests: NewTests,
    /// What each test took, by its last accepted report.
    pub(super) durations: Vec<Option<Seconds>>,
    /// Tests a backup copy runs (besides the lease holding them), and the copy's lease.
    pub(super) copies: HashMap<PlanIndex, LeaseId>,
    /// How far the tests with history of their own took from their estimates.
    pub(super) spread: Spread,
}

impl BuildRun {
    /// Puts a test that was leased (or reported failed) back in the ready queue, its
    /// estimate back in the work not yet leased. A test leased with a prerequisite of the same lease ([`super::LeaseGrant::waits_on`])
    /// goes back to waiting for the prerequisites that have not passed yet.
    pub(super) fn requeue(&mut self, test: PlanIndex, priority: f64) {
        self.unleased_work += self.plan.tests[test].estimate_s;
        let unfinished_dependencies = self.plan.tests[test]
            .depends_on
            .iter()
            .filter(|&&dependency| self.states[dependency] != TestState::Done(TestStatus::Passed))
            .count();
        if unfinished_dependencies > 0 {
            self.states[test] = TestState::Waiting { unfinished_dependencies };
        } else {
            self.states[test] = TestState::Ready;
            self.ready.insert(ReadyEntry { priority, index: test });
        }
        self.ready_changed();
    }

    /// Leases a ready test (already out of the ready queue) to `lease`: one more attempt.
    pub(super) fn lease_test(&mut self, test: PlanIndex, lease: LeaseId) {
        self.unleased_work -= self.plan.tests[test].estimate_s;
        self.states[test] = TestState::Leased(lease);
        self.attempts[test] += 1;
    }

    /// The tests of `lease` waiting on `test` (held back after it), transitively.
    pub(super) fn waiting_in_lease(&self, test: PlanIndex, lease: LeaseId) -> BTreeSet<PlanIndex> {
        let mut found = BTreeSet::new();
        let mut stack = vec![test];
        while let Some(blocker) = stack.pop() {
            for &dependent in &self.plan.tests[blocker].dependents {
                if self.states[dependent] == TestState::Leased(lease) && found.insert(dependent) {
                    stack.push(dependent);
                }
            }
        }
        found
    }

    /// The ready work changed other than by a fitted split's own grants (a test requeued,
    /// dependants unblocked, estimates corrected, a shard cut another way): the split no
    /// longer holds and is planned again when a worker next asks.
    pub(super) fn ready_changed(&mut self) {
        self.fitted_split = None;
    }

    /// What a shard of this build costs `worker` besides its tests, on a machine as fast as
    /// the farm's: the shard overhead, and the start-up when it is the worker's first shard
    /// of the build. [`Scheduler::shard_cost`] takes it at the worker's pace.
    pub(super) fn shard_cost(&self, worker: WorkerId) -> Seconds {
        let startup = if self.started.contains(&worker) { 0.0 } else { self.costs.startup() };
        self.costs.overhead() + startup
    }

    /// Learns from one reported new test (its estimate borrowed): once enough of them
    /// have ended, the estimates of the new tests not yet finished are scaled by how far
    /// off they were, so the rest of a first build is cut from what its first tests took
    /// rather than from a guess. Returns whether the estimates changed.
    pub(super) fn observe_new_test(&mut self, real: Seconds, estimated: Seconds) -> bool {
        let new = &mut self.new_tests;
        new.real += real;
        new.estimated += estimated;
        new.reported += 1;
        if new.reported < new.next_calibration {
            return false;
        }
        new.next_calibration *= 2;
        let ratio = if new.estimated > 0.0 {
            (new.real / new.estimated).clamp(NewTests::LEAST_RATIO, NewTests::MOST_RATIO)
        } else {
            NewTests::LEAST_RATIO
        };
        (new.real, new.estimated) = (0.0, 0.0);
        if (0.8..=1.25).contains(&ratio) {
            return false;
        }
        for (test, state) in self.plan.tests.iter_mut().zip(&self.states) {
            if !test.estimate_known && !matches!(state, TestState::Done(_)) {
                test.estimate_s *= ratio;
            }
        }
        self.unleased_work = self
            .plan
            .tests
            .iter()
            .zip(&self.states)
            .filter(|(_, state)| matches!(state, TestState::Ready | TestState::Waiting { .. }))
            .map(|(test, _)| test.estimate_s)
            .sum();
        // What drifted was the guess, now corrected: the drift starts again from it.
        self.drift = Drift { real: 0.0, estimated: 0.0 };
        self.ready_changed();
        true
    }
}

/// What a build's shards cost besides their tests, measured on its own shards (from the
/// grant to the last result, less the tests' durations) once they end, from the plan's
/// figures (the history of earlier builds) until then.
#[derive(Debug, Clone)]
pub(super) struct ShardCosts {
    planned_overhead: Seconds,
    planned_startup: Seconds,
    /// Workers' first shards of the build: the start-up and the overhead.
    first: Vec<Seconds>,
    /// Later shards: the overhead alone.
    later: Vec<Seconds>,
    /// [`ShardCosts::overhead`] and [`ShardCosts::startup`] as the samples stand: worked
    /// out when one is added, read for every worker at every projection.
    overhead: Seconds,
    startup: Seconds,
}

impl ShardCosts {
    /// Samples kept of each kind, the most recent.
    const KEPT: usize = 32;

    pub(super) fn planned(plan: &BuildPlan) -> ShardCosts {
        ShardCosts {
            planned_overhead: plan.shard_overhead_s,
            planned_startup: plan.worker_startup_s,
            first: Vec::new(),
            later: Vec::new(),
            overhead: plan.shard_overhead_s,
            startup: plan.worker_startup_s,
        }
    }

    pub(super) fn observe(&mut self, first: bool, cost: Seconds) {
        let samples = if first { &mut self.first } else { &mut self.later };
        if samples.len() == Self::KEPT {
            samples.remove(0);
        }
        samples.push(cost);
        let first = (!self.first.is_empty()).then(|| median_of(&self.first));
        self.overhead = if self.later.len() >= 2 {
            median_of(&self.later)
        } else {
            first.map_or(self.planned_overhead, |first| self.planned_overhead.min(first))
        };
        self.startup = first.map_or(self.planned_startup, |first| (first - self.overhead).max(0.0));
    }

    /// A shard's overhead: the median of this build's later shards once two have ended;
    /// until then the planned one, but no more than its first shards cost (they pay the
    /// overhead too).
    pub(super) fn overhead(&self) -> Seconds {
        self.overhead
    }

    /// A worker's start-up: what its first shards cost beyond the overhead.
    pub(super) fn startup(&self) -> Seconds {
        self.startup
    }
}

fn median_of(samples: &[Seconds]) -> Seconds {
    crate::estimate::median(&mut samples.to_vec()).unwrap_or(0.0)
}

/// The new tests of a build (estimates borrowed from their neighbours, or a default when
/// the suite has no history at all) against what they really took.
#[derive(Debug, Clone)]
pub(super) struct NewTests {
    real: Seconds,
    estimated: Seconds,
    reported: usize,
    /// How many reported new tests the next calibration waits for (doubling each time).
    next_calibration: usize,
}

impl NewTests {
    /// New tests that end before their estimates are first corrected.
    const FIRST_CALIBRATION: usize = 8;
    const LEAST_RATIO: f64 = 1e-3;
    const MOST_RATIO: f64 = 1e3;

    pub(super) fn new() -> NewTests {
        NewTests { real: 0.0, estimated: 0.0, reported: 0, next_calibration: Self::FIRST_CALIBRATION }
    }
}

/// How far the reported durations of tests with history of their own are from their
/// estimates: the root mean square of `ln(real / estimated)` (0 when history is exact; a
/// lognormal error of shape sigma gives sigma).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Spread {
    squares: f64,
    count: usize,
}

impl Spread {
    pub(super) fn observe(&mut self, real: Seconds, estimated: Seconds) {
        if real > 0.0 && estimated > 0.0 && real.is_finite() && estimated.is_finite() {
            self.squares += (real / estimated).ln().powi(2);
            self.count += 1;
        }
    }

    /// The spread once `least` tests were observed; `None` before.
    pub(super) fn after(&self, least: usize) -> Option<f64> {
        (self.count >= least.max(1)).then(|| (self.squares / self.count as f64).sqrt())
    }
}

/// The ratio of real to estimated durations over recently finished tests. Tests are
/// dispatched slowest first, so the recent ones resemble the ones still to cut: their
/// drift (a noisy history under- or over-states whole bands of tests) corrects the
/// estimates the shards are sized with.
#[derive(Debug, Clone, Copy)]
pub(super) struct Drift {
    pub(super) real: f64,
    pub(super) estimated: f64,
}

impl Drift {
    /// Each finished test keeps this much of the weight of those before it.
    const MEMORY: f64 = 0.995;

    pub(super) fn observe(&mut self, real: f64, estimated: f64) {
        self.real = self.real * Self::MEMORY + real;
        self.estimated = self.estimated * Self::MEMORY + estimated;
    }

    /// Real seconds per estimated second, within [0.5, 2]; 1 until something is known.
    pub(super) fn ratio(&self) -> f64 {
        if self.estimated > 0.0 { (self.real / self.estimated).clamp(0.5, 2.0) } else { 1.0 }
    }
}

#[derive(Debug)]
pub(super) struct LeaseState {
    pub(super) build: BuildId,
    pub(super) worker: WorkerId,
    pub(super) tests: Vec<PlanIndex>,
    pub(super) deadline: Seconds,
    pub(super) active: bool,
    /// When the lease last made progress: its start plus the overhead, then each result.
    pub(super) progress_at: Seconds,
    /// Estimated seconds of its tests not yet reported.
    pub(super) remaining_estimate: Seconds,
    /// When its first test started: its grant plus its cost (overhead, start-up).
    pub(super) running_from: Seconds,
    /// When it was granted.
    pub(super) granted_at: Seconds,
    /// Whether it is its worker's first shard of the build (it pays the start-up).
    pub(super) first_of_worker: bool,
    /// Seconds its reported tests took, by their own reports.
    pub(super) reported_s: Seconds,
    /// Estimated seconds of the tests it has reported.
    pub(super) reported_estimate: Seconds,
    /// How many tests it has reported.
    pub(super) reported: usize,
    /// The tests taken back from it before they started, in the order they were withdrawn
    /// (and a test it was running when a copy's result came first).
    pub(super) withdrawn: Vec<PlanIndex>,
    /// The lease whose running test this one copies.
    pub(super) copy_of: Option<LeaseId>,
    /// How many of its tests were skipped because a prerequisite in the lease did not
    /// pass ([`super::LeaseGrant::waits_on`]): they have their result without a report.
    pub(super) skipped: usize,
    /// Whether its cost was measured ([`super::Decision::ShardCostMeasured`]).
    pub(super) measured: bool,
    /// Its worker's [`Scheduler::slowness`] when it was granted: the pace its tests start
    /// from.
    pub(super) slowness: f64,
}

impl LeaseState {
    /// Whether every test of the lease has its result (reported, or skipped) or was
    /// withdrawn, with `skips` more about to be skipped: the shard's last test was reported.
    pub(super) fn settled(&self, skips: usize) -> bool {
        self.reported + self.withdrawn.len() + self.skipped + skips == self.tests.len()
    }
}

impl LeaseState {
    /// When the worker holding it should be free: its last progress plus its unreported
    /// estimates at its own [`LeaseState::pace`].
    pub(super) fn free_at(&self, now: Seconds, drift: f64) -> Seconds {
        (self.progress_at + self.remaining_estimate * self.pace(drift)).max(now)
    }

    /// When the test it runs, estimated `estimate` seconds and started at its last
    /// progress, should end at the lease's pace; once past that, it is taken to need as
    /// long again as it has run (a slow or stalled machine, or a test far off its estimate).
    pub(super) fn running_test_end(&self, estimate: Seconds, now: Seconds, drift: f64) -> Seconds {
        let projected = self.progress_at + estimate * self.pace(drift);
        if projected > now { projected } else { now + (now - self.progress_at) }
    }

    /// Real seconds per estimated second of this lease's tests so far (a shard holds tests
    /// alike, so its own pace says most about the rest of it), starting from the build's
    /// `drift` on its worker ([`LeaseState::slowness`]).
    pub(super) fn pace(&self, drift: f64) -> f64 {
        let elapsed = (self.progress_at - self.running_from).max(0.0);
        let prior = Self::PACE_PRIOR_S * drift * self.slowness;
        ((elapsed + prior) / (self.reported_estimate + Self::PACE_PRIOR_S)).clamp(0.5, 4.0)
    }

    /// How many estimated seconds of the build's drift a lease's pace starts from, before
    /// its own results outweigh it.
    const PACE_PRIOR_S: Seconds = 30.0;
}

#[derive(Debug, Default)]
pub(super) struct WorkerState {
    pub(super) lease: Option<LeaseId>,
    /// How far off their estimates its tests ran ([`Scheduler::slowness`]).
    pub(super) ratios: LogRatios,
    pub(super) last_seen: Seconds,
    /// Shards in a row lost to infrastructure.
    pub(super) infra_failures: u32,
    /// No work until then.
    pub(super) benched_until: Seconds,
    /// It holds back a test whose prerequisite in its lease did not pass: it may be leased
    /// a dependency chain whole ([`Scheduler::worker_holds_dependents`]).
    pub(super) holds_dependents: bool,
}

/// Running sums of `ln(real / estimated)` over reported tests with history of their own,
/// each test keeping [`LogRatios::MEMORY`] of the weight of those before it: a worker's
/// ([`WorkerState::ratios`]; [`Scheduler::slowness`] compares them).
/// In logarithms, a test off by its history's noise weighs as much as any other, however
/// long it is: a worker's pace is read from all its tests, not from its longest few.
/// A master keeps them under the worker's name ([`Scheduler::worker_ratios`],
/// [`Scheduler::restore_worker_ratios`]), so that a worker registering again, or a
/// restarted master, does not learn its speed anew.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LogRatios {
    /// How many tests, each weighing [`LogRatios::MEMORY`] of the one after it.
    pub count: f64,
    /// The sum of their `ln(real / estimated)`, weighed alike.
    pub sum: f64,
    /// The sum of their squares, weighed alike.
    pub squares: f64,
}

impl LogRatios {
    /// Each reported test keeps this much of the weight of those before it.
    pub const MEMORY: f64 = 0.998;

    /// Whether the sums could have come from [`LogRatios::observe`]: finite, a count not
    /// negative, squares at least the square of the sum over the count. A stored record
    /// that is not is ignored, not restored.
    pub fn is_valid(&self) -> bool {
        [self.count, self.sum, self.squares].iter().all(|value| value.is_finite())
            && self.count >= 0.0
            && self.squares >= 0.0
            && (self.count == 0.0 || self.squares * self.count >= self.sum * self.sum * (1.0 - 1e-9))
    }

    pub(super) fn observe(&mut self, real: Seconds, estimated: Seconds) {
        if real > 0.0 && estimated > 0.0 && real.is_finite() && estimated.is_finite() {
            let log_ratio = (real / estimated).ln();
            self.count = self.count * Self::MEMORY + 1.0;
            self.sum = self.sum * Self::MEMORY + log_ratio;
            self.squares = self.squares * Self::MEMORY + log_ratio * log_ratio;
        }
    }

    fn mean(&self) -> f64 {
        if self.count > 0.0 { self.sum / self.count } else { 0.0 }
    }

    /// The squares of the ratios' distances from their mean, summed.
    fn squared_deviations(&self) -> f64 {
        if self.count > 0.0 { (self.squares - self.sum * self.sum / self.count).max(0.0) } else { 0.0 }
    }
}

/// The standard deviation of the logarithm of a worker's slowness before its results
/// ([`Scheduler::slowness`]): most machines of a farm are within a factor of 1.6 of each
/// other.
const SLOWNESS_PRIOR_SIGMA: f64 = 0.5;

/// The noise of a history (the variance of `ln(real / estimated)` on one worker) taken
/// before tests tell it ([`Scheduler::refresh_slowness`]): a poor history's, each test off
/// by a factor of 1.6 ...
const NOISE_PRIOR: f64 = 0.25;

/// ... with the weight of this many tests' deviations.
const NOISE_PRIOR_TESTS: f64 = 4.0;

/// How many standard errors of its mean a worker's ratios must be off the farm's for it
/// to be taken as slower or faster ([`Scheduler::refresh_slowness`]). It is worked out
/// again at every request for work, so a worker of the farm's speed has many chances to
/// look off by chance in a build: at three, a worker of fifty with noisy history was
/// taken to be off on one held-out seed of the makespan bench (1.0241 against 1.0197).
const SLOWNESS_STANDARD_ERRORS: f64 = 4.0;

/// Within this factor of the others' pace, a worker is taken to be as fast as they are:
/// what is left is the noise of the estimates, not the machine.
const ALIKE_WORKERS: f64 = 1.25;

/// How many ended builds' leases the scheduler remembers.
pub const RETIRED_BUILDS: usize = 64;

/// What is kept of a lease of a build that ended: late calls about it are answered, not
/// refused.
#[derive(Debug, Clone, Copy)]
pub(super) struct RetiredLease {
    pub(super) worker: WorkerId,
    pub(super) build: BuildId,
}

/// The scheduler: all running builds, their leases and the live workers.
#[derive(Debug)]
pub struct Scheduler {
    pub(super) config: SchedulerConfig,
    pub(super) builds: BTreeMap<BuildId, BuildRun>,
    pub(super) leases: HashMap<LeaseId, LeaseState>,
    pub(super) workers: BTreeMap<WorkerId, WorkerState>,
    /// The workers slower or faster than the others, and how many times as long as they
    /// take ([`Scheduler::refresh_slowness`]).
    pub(super) slowness: HashMap<WorkerId, f64>,
    /// Whether results came in since `slowness` was worked out.
    pub(super) slowness_stale: bool,
    /// Leases of builds that ended: late reports about them are answered, not refused.
    /// Kept for the last [`RETIRED_BUILDS`] builds that ended (a late report comes within
    /// a lease timeout), so a master that runs for months does not grow with its builds.
    pub(super) retired: HashMap<LeaseId, RetiredLease>,
    /// The builds whose leases are in `retired`, in the order they ended.
    pub(super) retired_builds: std::collections::VecDeque<BuildId>,
    pub(super) next_lease: u64,
}

impl Scheduler {
    /// An empty scheduler.
    pub fn new(config: SchedulerConfig) -> Scheduler {
        Scheduler {
            config,
            builds: BTreeMap::new(),
            leases: HashMap::new(),
            workers: BTreeMap::new(),
            slowness: HashMap::new(),
            slowness_stale: false,
            retired: HashMap::new(),
            retired_builds: std::collections::VecDeque::new(),
            next_lease: 1,
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

    /// The build of a lease this scheduler granted, whether it is active, ended or retired.
    pub fn lease_build(&self, lease: LeaseId) -> Option<BuildId> {
        self.leases
            .get(&lease)
            .map(|state| state.build)
            .or_else(|| self.retired.get(&lease).map(|retired| retired.build))
    }

    /// The active lease a worker holds, and its build.
    pub fn worker_lease(&self, worker: WorkerId) -> Option<(LeaseId, BuildId)> {
        let lease = self.workers.get(&worker)?.lease?;
        let state = self.leases.get(&lease).filter(|state| state.active)?;
        Some((lease, state.build))
    }

    /// When a benched worker ([`Decision::WorkerBenched`]) may have work again, if that is
    /// later than `now`.
    pub fn benched_until(&self, worker: WorkerId, now: Seconds) -> Option<Seconds> {
        self.workers.get(&worker).map(|state| state.benched_until).filter(|&until| until > now)
    }

    /// Whether a running build has a test ready: a worker that got none may have left it to
    /// another ([`Scheduler::request_work`]: a slower machine leaves a long test to a
    /// faster one; a retry runs on another worker than the one it failed on).
    pub fn has_ready_work(&self) -> bool {
        self.builds.values().any(|run| !run.ready.is_empty())
    }

    /// Tests of running builds that no lease holds yet (ready, or waiting for their
    /// dependencies), and the seconds they are estimated to take.
    pub fn queued(&self) -> (usize, Seconds) {
        let mut tests = 0;
        let mut seconds = 0.0;
        for run in self.builds.values() {
            for (index, state) in run.states.iter().enumerate() {
                if matches!(state, TestState::Waiting { .. } | TestState::Ready) {
                    tests += 1;
                    seconds += run.plan.tests[index].estimate_s;
                }
            }
        }
        (tests, seconds)
    }

    /// When `build` is projected to end, by the estimates the shards are cut with: its
    /// leases end at their own pace ([`LeaseState::free_at`]), and the work no lease holds
    /// yet (at the build's drift) is water-filled over the live workers from when each is
    /// free, each paying its next shard's cost, as shard sizing aims it. `None` when the
    /// build is not running. With no live worker the rest is projected as if one joined
    /// now. Tests waiting on others count as work like the ready ones
    /// (the critical path is not followed), so a build held by a chain ends later than
    /// this; the projection is corrected with every result.
    pub fn projected_end(&self, build: BuildId, now: Seconds) -> Option<Seconds> {
        let run = self.builds.get(&build)?;
        let drift = run.drift.ratio();
        let leases_end = self
            .leases
            .values()
            .filter(|lease| lease.active && lease.build == build)
            .map(|lease| lease.free_at(now, drift))
            .fold(now, f64::max);
        if run.unleased_work <= 0.0 {
            return Some(leases_end);
        }
        let ready_at: Vec<(Seconds, f64)> = self
            .workers
            .iter()
            .map(|(&worker, state)| {
                let free_at = match state.lease.and_then(|lease| self.leases.get(&lease)) {
                    Some(lease) if lease.active => {
                        let holder_drift = self.builds.get(&lease.build).map_or(drift, |run| run.drift.ratio());
                        lease.free_at(now, holder_drift)
                    }
                    _ => now,
                };
                (free_at + self.shard_cost(run, worker), 1.0 / self.slowness(worker))
            })
            .collect();
        let unleased_end = super::dispatch::water_fill(run.unleased_work * drift, ready_at, now);
        Some(leases_end.max(unleased_end))
    }

    /// The tests (ids) withdrawn from a lease ([`Decision::LeaseShrunk`]), in the order they
    /// were withdrawn: its worker is to be told in every answer while the lease is active.
    /// Empty once the lease ended or expired, or its build ended.
    pub fn withdrawn(&self, lease: LeaseId) -> Vec<String> {
        let Some(state) = self.leases.get(&lease).filter(|state| state.active) else { return Vec::new() };
        let Some(run) = self.builds.get(&state.build) else { return Vec::new() };
        state.withdrawn.iter().map(|&test| run.plan.tests[test].id.clone()).collect()
    }

    /// Event: a worker joined the fleet (registered). It counts for shard sizing from now.
    pub fn worker_joined(&mut self, worker: WorkerId, now: Seconds) {
        self.workers.entry(worker).or_default().last_seen = now;
    }

    /// Event: a worker said whether it holds back a test of its lease whose prerequisite in
    /// the lease did not pass (the master hears it with each request for work). Only such
    /// a worker is leased a dependency chain whole ([`super::LeaseGrant::waits_on`]), and
    /// only for a build whose runner feeds tests one at a time
    /// ([`BuildPlan::chains_in_lease`]). Off until said; a worker not live is not made so.
    pub fn worker_holds_dependents(&mut self, worker: WorkerId, holds: bool) {
        if let Some(state) = self.workers.get_mut(&worker) {
            state.holds_dependents = holds;
        }
    }

    /// What `worker`'s tests showed of its speed so far, if it reported any with history
    /// of their own: for the master to keep under the worker's name.
    pub fn worker_ratios(&self, worker: WorkerId) -> Option<LogRatios> {
        self.workers.get(&worker).map(|state| state.ratios).filter(|ratios| ratios.count > 0.0)
    }

    /// Event: `worker` is a machine whose tests showed `ratios` before (under an earlier
    /// registration, or before the master restarted): its speed is known from its first
    /// shard. Added to what it has shown since, if anything; ignored if not
    /// [`LogRatios::is_valid`].
    pub fn restore_worker_ratios(&mut self, worker: WorkerId, ratios: LogRatios) {
        if !ratios.is_valid() {
            return;
        }
        let state = self.workers.entry(worker).or_default();
        state.ratios.count += ratios.count;
        state.ratios.sum += ratios.sum;
        state.ratios.squares += ratios.squares;
        self.slowness_stale = true;
    }

    /// How many times as long as the farm's other live workers `worker` takes for a test,
    /// as its results and theirs show now ([`Scheduler::refresh_slowness`]): 1 when not
    /// known or as fast as the others.
    pub fn worker_slowness(&mut self, worker: WorkerId) -> f64 {
        self.refresh_slowness();
        self.slowness(worker)
    }

    /// Whether `worker` is idle: not benched, and holding no active lease.
    pub(super) fn is_idle(&self, worker: &WorkerState, now: Seconds) -> bool {
        worker.benched_until <= now
            && worker.lease.and_then(|id| self.leases.get(&id)).is_none_or(|lease| !lease.active)
    }

    /// How many times as long as the farm's other workers `worker` takes for a test
    /// ([`Scheduler::refresh_slowness`]); 1 for a worker not known or as fast as the others.
    /// As of the last request for work (or [`Scheduler::worker_slowness`]): what a worker's
    /// reports since have shown is not in it yet.
    pub fn slowness(&self, worker: WorkerId) -> f64 {
        self.slowness.get(&worker).copied().unwrap_or(1.0)
    }

    /// What a shard of `run` costs `worker` besides its tests, at its pace: a slower
    /// machine takes longer for the overhead and start-up too.
    pub(super) fn shard_cost(&self, run: &BuildRun, worker: WorkerId) -> Seconds {
        run.shard_cost(worker) * self.slowness(worker)
    }

    /// Works out again, after results came in, how many times as long as the farm's other
    /// workers each worker takes for a test, within [1/4, 4]: how much further off their
    /// estimates its tests ran than the median worker's ([`LogRatios`], across builds: a
    /// slower machine, older or with a noisy neighbour, is slower in every build). Shrunk
    /// towards 1 as far as the history's noise says it could be chance (a normal prior on
    /// the logarithm, of standard deviation [`SLOWNESS_PRIOR_SIGMA`], against the spread of
    /// each worker's ratios about their mean, taken to be a poor history's until tests
    /// tell): with exact history a few tests tell, with a noisy one a 3× machine shows in
    /// four and a 1.35× one in tens. 1 within [`ALIKE_WORKERS`] of the others, or within
    /// [`SLOWNESS_STANDARD_ERRORS`] of them by its tests' noise. Done when a worker
    /// asks for work, not at every result: O(workers × log workers).
    pub(super) fn refresh_slowness(&mut self) {
        if !self.slowness_stale {
            return;
        }
        self.slowness_stale = false;
        self.slowness.clear();
        let (mut means, mut deviations, mut degrees) = (Vec::with_capacity(self.workers.len()), 0.0, 0.0);
        for state in self.workers.values().filter(|state| state.ratios.count > 0.0) {
            means.push(state.ratios.mean());
            // The noise: how far tests are off their estimates on one worker (a slower
            // one's are all off alike), pooled over the workers.
            deviations += state.ratios.squared_deviations();
            degrees += (state.ratios.count - 1.0).max(0.0);
        }
        if means.is_empty() {
            return;
        }
        // The farm's pace: its median worker's (the lower of two), which a few slower or
        // faster machines do not move.
        means.sort_by(f64::total_cmp);
        let farm = means[(means.len() - 1) / 2];
        // Until a few tests tell, a history is taken to be as noisy as a poor one.
        let noise = (deviations + NOISE_PRIOR_TESTS * NOISE_PRIOR) / (degrees + NOISE_PRIOR_TESTS);
        let shrink = noise / SLOWNESS_PRIOR_SIGMA.powi(2);
        for (&worker, state) in self.workers.iter().filter(|(_, state)| state.ratios.count > 0.0) {
            let own = state.ratios;
            let off = own.sum - own.count * farm;
            // Its distance from the farm in standard errors: a few tests off by the noise
            // are no sign of the machine.
            let significant = off.abs() >= SLOWNESS_STANDARD_ERRORS * (noise * own.count).sqrt();
            let log = off / (own.count + shrink);
            if significant && log.abs() >= ALIKE_WORKERS.ln() {
                self.slowness.insert(worker, log.exp().clamp(0.25, 4.0));
            }
        }
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
        let mut ready = BTreeSet::new();
        let states = plan
            .tests
            .iter()
            .enumerate()
            .map(|(index, test)| {
                if test.depends_on.is_empty() {
                    ready.insert(ReadyEntry { priority: plan.dispatch_priority(index), index });
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
            fails_build: Vec::new(),
            gave_up: Vec::new(),
            drift: Drift { real: 0.0, estimated: 0.0 },
            urgent: false,
            started: BTreeSet::new(),
            costs: ShardCosts::planned(&plan),
            new_tests: NewTests::new(),
            durations: vec![None; plan.len()],
            spread: Spread::default(),
            copies: HashMap::new(),
            states,
            ready,
            fitted_split: None,
            new_in_plan: plan.tests.iter().filter(|test| !test.estimate_known).count(),
            heads: (0..plan.len()).filter(|&index| !plan.tests[index].dependents.is_empty()).collect(),
            plan,
        };
        let empty = run.unfinished == 0;
        self.builds.insert(build, run);
        if empty {
            return Ok(self.finish_build(build).into_iter().collect());
        }
        Ok(vec![Decision::WorkAvailable])
    }

    /// `test_id` of `build` runs on another worker than `workers` when one is live and not
    /// benched (culprit finding's confirmation: a failure re-run where it did not fail).
    pub fn prefer_other_workers(&mut self, build: BuildId, test_id: &str, workers: &[WorkerId]) {
        let Some(run) = self.builds.get_mut(&build) else { return };
        let Some(index) = run.plan.index_of(test_id) else { return };
        run.ready_changed();
        let avoid = run.avoid.entry(index).or_default();
        for worker in workers {
            if !avoid.contains(worker) {
                avoid.push(*worker);
            }
        }
    }

    /// Serves `build` before the builds that are not urgent (a culprit probe: the gate waits
    /// on it).
    pub fn make_urgent(&mut self, build: BuildId) {
        if let Some(run) = self.builds.get_mut(&build) {
            run.urgent = true;
        }
    }
}
