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
//! That is [`ShardSizing::Finer`], and each extra shard pays the overhead again: on a
//! tag-selected build of 40 s, 4% a shard. Where the estimates can be trusted
//! ([`ShardSizing::Fitted`]: at most 1% of the build's tests new, the tests reported so
//! far within about 20% of their estimates, leases that can be split) a worker that asks
//! gets its part of a split of all the ready work among the live workers at once, longest
//! first (LPT, the busy workers counted from when they will be free), so each worker has
//! one shard and only what runs late is corrected, by splitting leases. A test others
//! wait on counts with its chain: its worker ends early enough to run the chain after it,
//! paying an overhead for each step of its longest chain (its chains share those shards).
//! Where shards are cheap (a warm runner), only the longest path of the chain counts with
//! it: its other branches count as work for another worker, whose part then ends about
//! when the test does, free to take one. Tests waiting on running ones count as work for
//! the other workers. The split is planned
//! once and kept: the workers that were free then get their parts as they ask, until the
//! ready work or the workers change (`BuildRun::fitted_split`), so a build's start costs
//! one split, not one a worker.
//!
//! A fitted part takes the chains behind its tests along ([`LeaseGrant::waits_on`]): a
//! test waiting on tests of the lease (its other dependencies passed) rides in it after
//! them, so a chain pays one shard's overhead, as in a static split, not one a step. Only
//! where the worker can hold such a test back when its prerequisite fails (the plan says
//! the runner is fed one test at a time, [`crate::plan::BuildPlan::chains_in_lease`], and
//! the worker says it does, [`Scheduler::worker_holds_dependents`]). The scheduler does
//! not rely on the worker for the result: a prerequisite's failure skips them, a retry
//! takes them out of the lease to wait for it ([`Decision::LeaseShrunk`]).
//!
//! New tests (whose estimate is borrowed from their neighbours) are dispatched first
//! ([`BuildPlan::dispatch_priority`](crate::plan::BuildPlan::dispatch_priority)) in
//! shards of their own, no larger than the part of a share held back for later: how long
//! a new test takes is a guess, and a new browser test "like its neighbours" may take ten
//! times as long. Drawn early and apart from the large shards, a long one only means its
//! worker takes less afterwards; cut into a large shard it would end the build late.
//!
//! A shard already running is not beyond repair: when a worker asks, the lease projected
//! to end last may give back the tests it has not started ([`Decision::LeaseShrunk`]):
//! those it cannot run by the common finish while other work is ready, or, when nothing
//! else is ready, those the asking worker would end sooner.
//!
//! A failed test runs again on another worker (a retry tells a flake from a failure) and
//! the gate waits on that result, so a retry never waits for a whole shard to end: it runs
//! first in the next shard of a worker it did not fail on, and when every such worker
//! holds a lease, the one whose running test ends first gives back the tests it has not
//! started ([`Decision::LeaseShrunk`]) and asks for work after that test.
//!
//! Workers are not all alike: a machine that runs its tests slower than the others (older
//! hardware, a noisy neighbour) shows it in its results, across builds
//! (`Scheduler::slowness`, shrunk towards the others as far as the history's noise says
//! it could be chance). Every projection of a worker's time takes it at its pace: the
//! fitted split gives each test to the worker that would end it first, and a slower worker
//! cutting finer leaves to a faster one the tests it would end later, and the new ones.
//! A machine that shows itself slow during a build (a farm's first, or a neighbour that
//! got noisy) does not keep the part it was given as a fast one: at its results, its
//! lease gives back what it cannot run by the others' end, and for each test given back
//! that would end late waiting for a free worker, the lease of a faster one whose running
//! test ends first gives back what it has not started, so that worker asks after that
//! test and the work is split again (`Scheduler::move_work_off_slow_machine`).
//!
//! A single test cannot be split. With [`SchedulerConfig::straggler_copies`] (off by
//! default), a worker with nothing better to do runs a backup copy of the test that holds
//! the build's end on a slow or stalled machine ([`LeaseGrant::copy_of`]); the first
//! result counts and the other lease is told to stop, by a [`Decision::LeaseShrunk`]
//! that withdraws the test it is running. A copy is also insurance, while the build still
//! has work ready, where the test alone holds the build's end (the rest ends before it
//! even with the copier busy) and its machine has shown itself slow, or, where the
//! estimates are trusted to say which test that is, has not run a test with history yet:
//! a farm's first build cannot tell a slow machine otherwise.
//!
//! The module is split by concern: this file holds the vocabulary (ids, configuration,
//! decisions, reports, verdicts); `state` the scheduler's state and its read accessors;
//! `dispatch` the answer to a worker asking for work, with the shard sizing maths;
//! `reports` every other event (heartbeats, results, finished and expired leases,
//! restored results) and what follows from a final result, up to the verdict.

mod dispatch;
mod reports;
mod state;
#[cfg(test)]
mod tests;

use greenlight_shared::api::{LeaseDependency, TestStatus};

use crate::Seconds;

pub use state::{LogRatios, RETIRED_BUILDS, Scheduler};

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
    /// How uncertain a shard's end may grow, in shard overheads, before the shard is cut
    /// there ([`ShardSizing::Finer`]): the uncertainty is
    /// [`SchedulerConfig::reserve_sigmas`] standard deviations of its estimated work. Where a
    /// shard costs next to nothing (a warm runner: 0.002–0.03 s learned), a worker had better
    /// come back for more than commit to tests behind one whose length nobody can tell;
    /// with a cold runner's 1.5 s it allows 150 s and seldom binds.
    pub uncertain_shard_overheads: f64,
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
    /// Whether a test that passed only on a retry (flaky) counts against the build: the
    /// build is red and the result closes the gate, as a failure would.
    pub flaky_fails_build: bool,
    /// How many shards a build is cut into: fitted to the build (one a worker where the
    /// estimates can be trusted; the default, here and in the master's `[scheduler]
    /// shard_sizing`), or always finer. A fitted build's split is planned once, not at
    /// every lease (BENCHMARKS.md, "What a lease costs").
    pub shard_sizing: ShardSizing,
    /// Whether a worker that finds nothing to do runs a backup copy of the test that holds
    /// the build's end on a slow or stalled machine ([`LeaseGrant::copy_of`]); the first
    /// result wins, and the other lease is told to stop: a [`Decision::LeaseShrunk`] that
    /// withdraws the test it is running and names it stopped; the worker stops it (a cold
    /// runner at once, a warm one killed and started again). Off by default.
    pub straggler_copies: bool,
}

/// How many shards a build is cut into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardSizing {
    /// Fitted to the build: while the ready work is tests with history of their own and
    /// running leases can give back what they have not started, every worker gets one
    /// shard, the work split among the workers longest first (LPT), and only what runs late
    /// is corrected, by splitting leases. Otherwise (new tests, runners that report only at
    /// exit), as [`ShardSizing::Finer`].
    Fitted,
    /// Two or three shards a worker: each cut holds back
    /// [`SchedulerConfig::tail_fraction`] of the worker's share for later, smaller shards
    /// cut from fresher estimates (the only sizing before issue #17).
    Finer,
}

impl Default for SchedulerConfig {
    fn default() -> SchedulerConfig {
        SchedulerConfig {
            lease_timeout_s: 30.0,
            min_shard_s: 0.0,
            min_shard_overheads: 2.0,
            uncertain_shard_overheads: 100.0,
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
            flaky_fails_build: false,
            shard_sizing: ShardSizing::Fitted,
            straggler_copies: false,
        }
    }
}

/// How a build ended. Decided here, once: the master records it as it is.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Nothing counts against the build, and every test has a result from a worker (or was
    /// skipped): quarantined failures, and flaky passes unless
    /// [`SchedulerConfig::flaky_fails_build`], do not count.
    Green,
    /// These tests' final results count against the build (ids, in plan order): they failed
    /// or errored on every attempt and are not quarantined, or, with
    /// [`SchedulerConfig::flaky_fails_build`], passed only on a retry (and are not
    /// quarantined).
    Red {
        /// The ids whose final result counts against the build.
        failed: Vec<String>,
    },
    /// Nothing counts against the build, but these tests never got a result: the
    /// infrastructure failed them (workers lost, runners crashed)
    /// [`SchedulerConfig::max_attempts`] times.
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
    /// The tests to run, by id, in running order.
    pub tests: Vec<String>,
    /// The tests that wait on tests before them in this lease (a dependency chain leased
    /// whole, so it pays one shard's overhead), each with those prerequisites: it runs only
    /// once they passed. Its other dependencies have passed. If one of its prerequisites
    /// fails or is skipped, the scheduler records it skipped naming that prerequisite,
    /// whatever the worker reports for it; if one is to be retried, it is withdrawn
    /// ([`Decision::LeaseShrunk`]) and waits again. Empty unless the plan allows it
    /// ([`crate::plan::BuildPlan::chains_in_lease`]) and the worker holds such tests back
    /// ([`Scheduler::worker_holds_dependents`]).
    pub waits_on: Vec<LeaseDependency>,
    /// When it expires without a heartbeat.
    pub deadline: Seconds,
    /// A backup copy of a straggling test that this other lease is running: its one test.
    /// The first result of the two counts; the other lease is told to stop.
    pub copy_of: Option<LeaseId>,
}

/// What the scheduler decided in answer to an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// A test will not run: record it as skipped with this reason.
    Skipped {
        /// The build.
        build: BuildId,
        /// The test.
        test_id: String,
        /// Why.
        reason: String,
    },
    /// A test was given up on after too many attempts: record it as an error.
    GaveUp {
        /// The build.
        build: BuildId,
        /// The test.
        test_id: String,
        /// Why.
        reason: String,
    },
    /// A test failed and will run again, on another worker when there is one: its failure
    /// is not final yet.
    Retrying {
        /// The build.
        build: BuildId,
        /// The test.
        test_id: String,
        /// The attempt that failed.
        attempt: u32,
    },
    /// A lease passed its deadline without a heartbeat and was taken back; its unfinished
    /// tests are queued again.
    LeaseExpired {
        /// Its build.
        build: BuildId,
        /// The lease.
        lease: LeaseId,
        /// Its worker, now considered lost.
        worker: WorkerId,
        /// How many tests went back to the queue.
        requeued: usize,
    },
    /// A worker asked for work while it still held an active lease: it abandoned that lease
    /// (its shard process is gone), which is taken back like an expired one, its unfinished
    /// tests queued again. (A lease its worker finishes is not "taken back".)
    LeaseTakenBack {
        /// Its build.
        build: BuildId,
        /// The lease.
        lease: LeaseId,
        /// Its worker, which asks for work again.
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
    /// With [`SchedulerConfig::straggler_copies`], the first test withdrawn may be the one
    /// the lease is running: another lease ran it too and its result came first, so the
    /// holder is to stop it at once.
    LeaseShrunk {
        /// The build.
        build: BuildId,
        /// The lease.
        lease: LeaseId,
        /// Its worker.
        worker: WorkerId,
        /// The tests taken back (ids), in the lease's order.
        withdrawn: Vec<String>,
        /// The test the lease is running, stopped (it is also the first of `withdrawn`): a
        /// backup copy of it on another lease reported first ([`LeaseGrant::copy_of`]). Its
        /// run there is no attempt and has no result. `None` when only tests not started
        /// are taken back.
        stopped: Option<String>,
    },
    /// A shard's last test was reported: what the shard cost besides its tests (from its
    /// grant to that result, less the tests' own durations), for the plans of later builds.
    /// This build already sizes its shards with it.
    ShardCostMeasured {
        /// The build.
        build: BuildId,
        /// The lease.
        lease: LeaseId,
        /// Whether it was its worker's first shard of the build (the cost includes the
        /// worker's start-up: checkout, setup, a kept runner's collection).
        first_of_worker: bool,
        /// Seconds.
        cost_s: Seconds,
    },
    /// New tests became ready: idle workers should ask again.
    WorkAvailable,
    /// Every test of the build has a result.
    BuildFinished {
        /// The build.
        build: BuildId,
        /// The lower bound on what its tests really took, for the workers that took part
        /// and with what its shards cost ([`crate::plan::BuildPlan::lower_bound_with_costs`]):
        /// what its makespan compares with once it is known.
        measured_bound_s: Seconds,
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
        /// Whether this result counts against the build now (a final failure not
        /// quarantined, or a flaky pass with [`SchedulerConfig::flaky_fails_build`]): the
        /// build will be red, and the gate may close at once.
        fails_build: bool,
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
    /// The test was quarantined when it was reported: its failure (or flaky pass) does
    /// not count against the build.
    pub quarantined: bool,
}

/// One reported result of a batch ([`Scheduler::report`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReportedTest<'a> {
    /// The test id; it must be one of the lease's tests.
    pub test_id: &'a str,
    /// What happened.
    pub status: TestStatus,
    /// The test is quarantined: its failure is still its result (and still skips its
    /// dependants) but does not count against the build.
    pub quarantined: bool,
    /// Seconds the test took, by the runner's report (what the shard's cost is measured
    /// apart from, and what the build's new tests are calibrated with); `None` when the
    /// runner did not say: taken as its estimate.
    pub duration_s: Option<Seconds>,
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
