//! The farm: the master's state and every operation on it. It owns the scheduler core
//! (one owner, behind a short std mutex section that never spans an `.await`), the live
//! view of running builds and workers, and the store. HTTP handlers and background tasks
//! call these methods; each one hands an event to the scheduler, persists what it decided
//! and wakes whoever waits on it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use greenlight_scheduler::core::{
    BuildId, Decision, LeaseId, Outcome, Report, RestoredResult, Scheduler, SchedulerConfig, SchedulerError, Verdict,
    WorkerId,
};
use greenlight_scheduler::estimate::{estimate, median};
use greenlight_scheduler::plan::{BuildPlan, PlanIndex};
use greenlight_scheduler::select::{select, select_ids};
use greenlight_scheduler::suite::{Suite, SuiteError};
use greenlight_shared::api::{
    BuildDetail, BuildKind, BuildState, BuildSummary, BuildTests, ChangeView, FarmEvent, FlakeStats, GateView, Lease,
    MissedByTags, PushView, QuarantineEntry, RegisterResponse, ResultsResponse, ShardEvent, ShardOutcome, ShardView,
    TestCounts, TestHistory, TestReport, TestResultView, TestRun, TestStatus, WorkerView,
};
use greenlight_shared::git::GitError;
use greenlight_shared::runner::Runner;
use greenlight_shared::suite::{SuiteFile, SuiteFileError};
use greenlight_shared::{API_VERSION, unix_now_s};
use tokio::sync::Notify;

use crate::changes::{Mirror, Tagger};
use crate::config::Config;
use crate::culprit::{Bisection, Candidate, Probe};
use crate::gate;
use crate::store::{Store, StoreError};

/// How many failing test ids a build summary lists.
const LISTED_FAILURES: usize = 100;
/// Meta key: the sequence of the oldest change no build covers yet.
const NEXT_UNBUILT: &str = "next_unbuilt_change";
/// Meta key prefix: the last revision seen on a branch.
const LAST_SEEN: &str = "last_seen/";
/// Meta key prefix: culprit findings under way, by red build.
const BISECTION: &str = "bisection/";
/// Meta key prefix: the tests a running build selected, so a restarted master resumes it.
const SELECTION: &str = "selection/";
/// Meta key: the next lease id, so a restarted master never reuses one.
const NEXT_LEASE: &str = "next_lease";
/// Updates a slow page subscriber may fall behind by before it is told to resync.
const EVENT_BACKLOG: usize = 8192;
/// Meta key: regular builds since the last full run.
const BUILDS_SINCE_FULL_RUN: &str = "builds_since_full_run";
/// Meta key: when the last full run started (Unix seconds).
const LAST_FULL_RUN_AT: &str = "last_full_run_at";
/// Meta key: the build id of the newest revision pushed.
const LAST_PUSHED: &str = "last_pushed_build";
/// Meta key prefix: a test's recent runs, for its flake rate.
const FLAKE: &str = "flake/";
/// Meta key prefix: a quarantined test.
const QUARANTINE: &str = "quarantine/";
/// Meta key: an admin asked for a full run of the branch head.
const FORCE_FULL_RUN: &str = "force_full_run";
/// Recent runs a flake rate is computed over.
const FLAKE_WINDOW: usize = 50;

/// A test's recent runs in regular builds: `true` for a run that flaked.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct FlakeRecord {
    test_id: String,
    recent: std::collections::VecDeque<bool>,
    last_flaky_at: Option<f64>,
}

impl FlakeRecord {
    fn flaky(&self) -> u32 {
        self.recent.iter().filter(|&&flaky| flaky).count() as u32
    }
}

/// What every reported result is checked against, kept in memory (the store has the
/// same) so the results path reads no key per test: the quarantine, and which tests have
/// a flake record at all.
#[derive(Debug, Default)]
struct Flakes {
    quarantine: HashMap<String, QuarantineEntry>,
    recorded: HashSet<String>,
}

impl Flakes {
    fn load(store: &Store) -> Result<Flakes, StoreError> {
        let quarantine: Vec<QuarantineEntry> = store.meta_with_prefix(QUARANTINE)?;
        let records: Vec<FlakeRecord> = store.meta_with_prefix(FLAKE)?;
        Ok(Flakes {
            quarantine: quarantine.into_iter().map(|entry| (entry.test_id.clone(), entry)).collect(),
            recorded: records.into_iter().map(|record| record.test_id).collect(),
        })
    }

    /// Whether `test_id` is quarantined now.
    fn quarantined(&self, test_id: &str) -> bool {
        self.quarantine.get(test_id).is_some_and(|entry| entry.expires_at > unix_now_s())
    }

    /// The quarantines in force now.
    fn in_force(&self) -> impl Iterator<Item = &QuarantineEntry> {
        let now = unix_now_s();
        self.quarantine.values().filter(move |entry| entry.expires_at > now)
    }
}

fn gate_key(branch: &str) -> String {
    format!("gate/{branch}")
}

/// Why a farm operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FarmError {
    /// No worker with this id is registered.
    #[error("unknown worker {0}; register again")]
    UnknownWorker(u64),
    /// No build with this id.
    #[error("unknown build {0}")]
    UnknownBuild(u64),
    /// The build already ended.
    #[error("build {0} already ended")]
    BuildEnded(u64),
    /// An admin call with arguments that make no sense.
    #[error("{0}")]
    Invalid(String),
    /// The scheduler refused the event.
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// git failed.
    #[error(transparent)]
    Git(#[from] GitError),
    /// A background task died.
    #[error("internal task failed: {0}")]
    Task(String),
}

/// Runs blocking work (git, fsync) on tokio's blocking threads.
pub async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, FarmError> {
    tokio::task::spawn_blocking(work).await.map_err(|error| FarmError::Task(error.to_string()))
}

/// Why a revision could not be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The suite could not be read at the revision.
    #[error("cannot read the suite: {0}")]
    Git(#[from] GitError),
    /// The list command failed.
    #[error("suite list command failed: {0}")]
    ListCommand(String),
    /// The suite is not JSON of the suite format.
    #[error(transparent)]
    Format(#[from] SuiteFileError),
    /// The suite is invalid.
    #[error("invalid suite: {0}")]
    Invalid(#[from] SuiteError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug)]
struct LiveBuild {
    summary: BuildSummary,
    shards: BTreeMap<u64, ShardView>,
}

#[derive(Debug)]
struct WorkerInfo {
    name: String,
    last_seen: f64,
    lease: Option<u64>,
    benched_until: Option<f64>,
}

struct Core {
    scheduler: Scheduler,
    running: BTreeMap<u64, LiveBuild>,
    workers: BTreeMap<u64, WorkerInfo>,
    worker_by_name: HashMap<String, u64>,
    lease_build: HashMap<u64, u64>,
    gate: GateView,
    /// Culprit findings under way, by red build.
    bisections: BTreeMap<u64, Bisection>,
    /// Seconds of test time each running lease reported (to learn the shard overhead).
    lease_test_seconds: HashMap<u64, f64>,
    /// Tests withdrawn from each running lease, told to its worker in every answer until
    /// the lease ends.
    withdrawn: HashMap<u64, Vec<String>>,
    /// Quarantined tests and tests with a flake record.
    flakes: Flakes,
}

/// The master's state.
pub struct Farm {
    config: Config,
    store: Store,
    mirror: Mirror,
    tagger: Tagger,
    core: Mutex<Core>,
    /// Woken when tests become ready: long-polling workers ask again.
    pub work_available: Notify,
    /// Woken when a build may start (changes queued, a build ended, a probe is due).
    pub build_wanted: Notify,
    /// Woken when a green revision is queued for the push stage.
    pub push_wanted: Notify,
    events: tokio::sync::broadcast::Sender<FarmEvent>,
    /// Says `true` when the master shuts down: long-lived streams end.
    closing: tokio::sync::watch::Sender<bool>,
    poll_lock: tokio::sync::Mutex<()>,
}

impl Farm {
    /// A farm over `store`, recovering from builds a previous master left unfinished.
    pub fn new(config: Config, store: Store) -> Result<Farm, FarmError> {
        let tagger = Tagger::new(&config.tags).map_err(|error| FarmError::Task(error.to_string()))?;
        let scheduler = Scheduler::new(SchedulerConfig {
            lease_timeout_s: config.scheduler.lease_timeout_s,
            min_shard_s: config.scheduler.min_shard_s,
            min_shard_overheads: config.scheduler.min_shard_overheads,
            tail_fraction: config.scheduler.tail_fraction,
            max_attempts: config.scheduler.max_attempts,
            retries: config.scheduler.retries,
            infra_failures_to_bench: config.scheduler.infra_failures_to_bench,
            bench_s: config.scheduler.bench_s,
            max_shard_s: config.scheduler.max_shard_s,
            split_running_leases: config.scheduler.split_running_leases,
            ..SchedulerConfig::default()
        });
        let farm = Farm {
            mirror: Mirror::new(&config),
            tagger,
            core: Mutex::new(Core {
                scheduler,
                running: BTreeMap::new(),
                workers: BTreeMap::new(),
                worker_by_name: HashMap::new(),
                lease_build: HashMap::new(),
                lease_test_seconds: HashMap::new(),
                withdrawn: HashMap::new(),
                flakes: Flakes::load(&store)?,
                gate: match store.meta(&gate_key(&config.repository.branch))? {
                    Some(gate) => gate,
                    None => gate::new_gate(&config.repository.branch, &config.gate.fix_marker),
                },
                bisections: store
                    .meta_with_prefix::<Bisection>(BISECTION)?
                    .into_iter()
                    // A probe a previous master left running is resumed with the other builds.
                    .map(|bisection| (bisection.build_id, bisection))
                    .collect(),
            }),
            work_available: Notify::new(),
            build_wanted: Notify::new(),
            push_wanted: Notify::new(),
            events: tokio::sync::broadcast::channel(EVENT_BACKLOG).0,
            closing: tokio::sync::watch::channel(false).0,
            poll_lock: tokio::sync::Mutex::new(()),
            config,
            store,
        };
        Ok(farm)
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn core(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes back the builds a previous master left queued or running: each is planned
    /// again from the same selection at the same revision, its stored results count as
    /// done, and it goes on; its leases died with that master, so their unreported tests
    /// run again. A build whose selection was not stored, or whose suite cannot be read
    /// any more, ends as an error and its changes are queued again. Blocking (git).
    pub fn recover(&self) -> Result<(), FarmError> {
        let now = unix_now_s();
        let mut first_change: Option<u64> = None;
        let mut interrupted: Vec<BuildSummary> =
            self.store.latest_builds(200)?.into_iter().filter(|build| !build.state.is_finished()).collect();
        interrupted.reverse();
        let next_lease: u64 = self.store.meta(NEXT_LEASE)?.unwrap_or(1);
        self.core().scheduler.set_next_lease(next_lease);
        for mut build in interrupted {
            match self.replan(&build) {
                Ok(plan) => {
                    let results = self.store.results(build.build_id)?;
                    build.counts = TestCounts { total: plan.len() as u32, ..TestCounts::default() };
                    build.failed_tests.clear();
                    build.flaky_tests.clear();
                    for result in &results {
                        build.counts.add_result(result);
                        if result.counts_as_failure() && build.failed_tests.len() < LISTED_FAILURES {
                            build.failed_tests.push(result.test_id.clone());
                        }
                        if result.flaky && build.flaky_tests.len() < LISTED_FAILURES {
                            build.flaky_tests.push(result.test_id.clone());
                        }
                    }
                    let mut shards = BTreeMap::new();
                    for mut shard in self.store.shards(build.build_id)? {
                        if shard.finished_at.is_none() {
                            shard.finished_at = Some(now);
                            shard.state = "expired".to_owned();
                            self.put_shard(build.build_id, &shard)?;
                        }
                        shards.insert(shard.lease_id, shard);
                    }
                    tracing::warn!(
                        build_id = build.build_id,
                        results = results.len(),
                        "build taken back after a restart"
                    );
                    let mut restored: Vec<RestoredResult> = results
                        .into_iter()
                        .map(|result| RestoredResult {
                            gave_up: result.given_up(),
                            test_id: result.test_id,
                            status: result.status,
                            attempt: result.attempt,
                            retried: result.retried,
                        })
                        .collect();
                    // Failed attempts before the result they led to.
                    restored.sort_by_key(|result| !result.retried);
                    let mut core = self.core();
                    let core = &mut *core;
                    let urgent = build.kind == BuildKind::Probe;
                    core.running.insert(build.build_id, LiveBuild { summary: build.clone(), shards });
                    let mut decisions = core.scheduler.add_build(BuildId(build.build_id), plan, now)?;
                    if urgent {
                        core.scheduler.make_urgent(BuildId(build.build_id));
                    }
                    decisions.extend(core.scheduler.restore(BuildId(build.build_id), &restored));
                    self.apply(core, decisions, now)?;
                }
                Err(error) => {
                    build.state = BuildState::Error;
                    build.error = Some(format!(
                        "interrupted by a master restart and not resumable ({error}); its changes are queued again"
                    ));
                    build.finished_at = Some(now);
                    self.put_build(&build)?;
                    if let Some(&first) = build.changes.first() {
                        first_change = Some(first_change.map_or(first, |current: u64| current.min(first)));
                    }
                    tracing::warn!(build_id = build.build_id, %error, "interrupted build not resumable; changes queued again");
                    if build.kind == BuildKind::Probe {
                        let mut core = self.core();
                        self.probe_finished(&mut core, &build)?;
                    }
                }
            }
        }
        if let Some(first) = first_change {
            let watermark: u64 = self.store.meta(NEXT_UNBUILT)?.unwrap_or(1);
            self.store.set_meta(NEXT_UNBUILT, &watermark.min(first))?;
        }
        Ok(())
    }

    /// The plan of an interrupted build: its stored selection at its revision.
    fn replan(&self, build: &BuildSummary) -> Result<BuildPlan, PlanError> {
        let selected: Vec<String> = self
            .store
            .meta(&format!("{SELECTION}{}", build.build_id))?
            .ok_or_else(|| PlanError::ListCommand("its selection was not stored".to_owned()))?;
        let suite = self.suite_at(&build.revision)?;
        let indices = select_ids(&suite, selected.iter().map(String::as_str));
        self.plan_selected(&suite, &indices)
    }

    fn save_selection(&self, build_id: u64, plan: &BuildPlan) -> Result<(), FarmError> {
        let ids: Vec<&str> = plan.tests.iter().map(|test| test.id.as_str()).collect();
        self.store.set_meta(&format!("{SELECTION}{build_id}"), &ids)?;
        Ok(())
    }

    /// A worker registers (again): the same name keeps its id.
    pub fn register(&self, name: &str) -> Result<RegisterResponse, FarmError> {
        let now = unix_now_s();
        let mut core = self.core();
        let worker_id = match core.worker_by_name.get(name) {
            Some(&id) => id,
            None => {
                let id = self.store.next_id("worker")?;
                core.worker_by_name.insert(name.to_owned(), id);
                id
            }
        };
        core.workers
            .entry(worker_id)
            .or_insert(WorkerInfo { name: name.to_owned(), last_seen: now, lease: None, benched_until: None })
            .last_seen = now;
        core.scheduler.worker_joined(WorkerId(worker_id), now);
        tracing::info!(worker_id, name, "worker registered");
        Ok(RegisterResponse {
            version: API_VERSION,
            worker_id,
            heartbeat_interval_s: self.config.scheduler.heartbeat_interval_s,
        })
    }

    /// A worker asks for a shard. `None` when no test is ready now.
    pub fn try_lease(&self, worker_id: u64) -> Result<Option<Lease>, FarmError> {
        let now = unix_now_s();
        let mut core = self.core();
        let core = &mut *core;
        let worker = core.workers.get_mut(&worker_id).ok_or(FarmError::UnknownWorker(worker_id))?;
        worker.last_seen = now;
        let worker_name = worker.name.clone();
        let (grant, decisions) = core.scheduler.request_work(WorkerId(worker_id), now);
        self.apply(core, decisions, now)?;
        let Some(grant) = grant else {
            if let Some(worker) = core.workers.get_mut(&worker_id) {
                worker.lease = None;
            }
            return Ok(None);
        };
        let plan = core.scheduler.plan(grant.build).expect("a granted lease belongs to a running build");
        let tests: Vec<String> = grant.tests.iter().map(|&index| plan.tests[index].id.clone()).collect();
        let live = core.running.get_mut(&grant.build.0).expect("a scheduled build is live");
        if live.summary.state == BuildState::Queued {
            live.summary.state = BuildState::Running;
            live.summary.started_at = Some(now);
        }
        live.summary.shards += 1;
        let suite = &self.config.suite;
        let runner = suite.runner();
        let shard = ShardView {
            lease_id: grant.lease.0,
            worker: worker_name,
            tests: tests.len() as u32,
            withdrawn: 0,
            started_at: now,
            finished_at: None,
            state: "running".to_owned(),
            counts: TestCounts { total: tests.len() as u32, ..TestCounts::default() },
            test_ids: tests.clone(),
            runner_wall_s: None,
            reproduce: runner.reproduce(&suite.setup_command, &suite.run_command, &tests, &live.summary.revision),
        };
        self.put_shard(grant.build.0, &shard)?;
        self.put_build(&live.summary)?;
        live.shards.insert(grant.lease.0, shard);
        core.lease_build.insert(grant.lease.0, grant.build.0);
        self.store.set_meta(NEXT_LEASE, &(grant.lease.0 + 1))?;
        if let Some(worker) = core.workers.get_mut(&worker_id) {
            worker.lease = Some(grant.lease.0);
        }
        tracing::info!(
            worker_id,
            lease_id = grant.lease.0,
            build_id = grant.build.0,
            tests = tests.len(),
            "lease granted"
        );
        Ok(Some(Lease {
            lease_id: grant.lease.0,
            build_id: grant.build.0,
            repository: self.config.repository.url.clone(),
            revision: live.summary.revision.clone(),
            tests,
            setup_command: suite.setup_command.clone(),
            run_command: suite.run_command.clone(),
            env: suite.env.iter().map(|(key, value)| (key.clone(), value.clone())).collect(),
            heartbeat_interval_s: self.config.scheduler.heartbeat_interval_s,
            lease_timeout_s: self.config.scheduler.lease_timeout_s,
            runner,
        }))
    }

    /// A heartbeat; returns whether the worker still holds the lease, and the tests
    /// withdrawn from it.
    pub fn heartbeat(&self, lease_id: u64, worker_id: u64) -> Result<(bool, Vec<String>), FarmError> {
        let now = unix_now_s();
        let mut core = self.core();
        let worker = core.workers.get_mut(&worker_id).ok_or(FarmError::UnknownWorker(worker_id))?;
        worker.last_seen = now;
        let active = core.scheduler.heartbeat(LeaseId(lease_id), WorkerId(worker_id), now)?;
        Ok((active, core.withdrawn.get(&lease_id).cloned().unwrap_or_default()))
    }

    /// A batch of results from a lease. Each is stored once; duplicates and stale
    /// reports are acknowledged without being counted.
    pub fn report(&self, lease_id: u64, worker_id: u64, results: &[TestReport]) -> Result<ResultsResponse, FarmError> {
        let now = unix_now_s();
        let mut core = self.core();
        let core = &mut *core;
        let worker = core.workers.get_mut(&worker_id).ok_or(FarmError::UnknownWorker(worker_id))?;
        worker.last_seen = now;
        let worker_name = worker.name.clone();
        // Refuse the whole batch before recording any of it if one result is not ours.
        match core.scheduler.lease_holder(LeaseId(lease_id)) {
            None => return Err(SchedulerError::UnknownLease(lease_id).into()),
            Some(holder) if holder != WorkerId(worker_id) => {
                return Err(SchedulerError::NotYourLease { lease: lease_id, worker: worker_id }.into());
            }
            Some(_) => {}
        }
        for result in results {
            if let Some((_, _, tests)) = core.scheduler.active_lease(LeaseId(lease_id)) {
                let build = core.lease_build.get(&lease_id).copied();
                let known = build
                    .and_then(|build| core.scheduler.plan(BuildId(build)))
                    .and_then(|plan| plan.index_of(&result.test_id))
                    .is_some_and(|index| tests.contains(&index));
                if !known {
                    return Err(
                        SchedulerError::TestNotInLease { lease: lease_id, test_id: result.test_id.clone() }.into()
                    );
                }
            }
        }
        let mut response =
            ResultsResponse { version: API_VERSION, accepted: 0, duplicates: 0, stale: 0, withdrawn: Vec::new() };
        for result in results {
            let report = core.scheduler.test_finished(
                LeaseId(lease_id),
                WorkerId(worker_id),
                &result.test_id,
                result.status,
                now,
            )?;
            match report {
                Report::Accepted { attempt, outcome, decisions } => {
                    let build_id = core.lease_build[&lease_id];
                    let stored = TestResultView {
                        test_id: result.test_id.clone(),
                        attempt,
                        status: result.status,
                        duration_s: sanitize_duration(result.duration_s),
                        output: result.output.clone(),
                        worker: Some(worker_name.clone()),
                        retried: outcome == Outcome::Retry,
                        flaky: outcome == Outcome::Final { flaky: true },
                        quarantined: core.flakes.quarantined(&result.test_id),
                        lease_id: Some(lease_id),
                    };
                    self.record_result(core, build_id, &stored)?;
                    *core.lease_test_seconds.entry(lease_id).or_default() += stored.duration_s;
                    if matches!(result.status, TestStatus::Passed | TestStatus::Failed) && stored.duration_s > 0.0 {
                        self.store.add_duration(&result.test_id, stored.duration_s)?;
                    }
                    response.accepted += 1;
                    self.apply(core, decisions, now)?;
                }
                Report::Duplicate => response.duplicates += 1,
                Report::Stale => {
                    if result.status.is_failure() {
                        // Not counted: the lease no longer held the test (it expired, or the
                        // test was withdrawn and runs elsewhere). Left in the log, not lost.
                        tracing::warn!(
                            lease_id,
                            worker_id,
                            test_id = result.test_id,
                            status = result.status.as_str(),
                            "a failure arrived for a test this lease no longer holds; not counted"
                        );
                    }
                    response.stale += 1;
                }
            }
        }
        response.withdrawn = core.withdrawn.get(&lease_id).cloned().unwrap_or_default();
        Ok(response)
    }

    /// The worker's shard process ended; `runner_wall_s` is how long its runner ran.
    pub fn finish(
        &self,
        lease_id: u64,
        worker_id: u64,
        outcome: &ShardOutcome,
        runner_wall_s: Option<f64>,
    ) -> Result<(), FarmError> {
        let now = unix_now_s();
        let mut core = self.core();
        let core = &mut *core;
        let worker = core.workers.get_mut(&worker_id).ok_or(FarmError::UnknownWorker(worker_id))?;
        worker.last_seen = now;
        let decisions = core.scheduler.lease_finished(LeaseId(lease_id), WorkerId(worker_id), now)?;
        let test_seconds = core.lease_test_seconds.remove(&lease_id).unwrap_or(0.0);
        core.withdrawn.remove(&lease_id);
        if let (ShardOutcome::Completed, Some(wall_s)) = (outcome, runner_wall_s)
            && wall_s.is_finite()
            && wall_s >= 0.0
        {
            // What the runner spent besides its tests: start-up, imports, collection.
            self.store.add_shard_overhead(&self.overhead_key(), (wall_s - test_seconds).max(0.0))?;
        }
        if let Some(worker) = core.workers.get_mut(&worker_id)
            && worker.lease == Some(lease_id)
        {
            worker.lease = None;
        }
        let state = match outcome {
            ShardOutcome::Completed => "finished",
            ShardOutcome::InfraError { message } => {
                tracing::warn!(lease_id, worker_id, message, "shard failed to run; its tests go back to the queue");
                "infra_error"
            }
        };
        self.end_shard(core, lease_id, state, now, runner_wall_s)?;
        self.apply(core, decisions, now)
    }

    /// Time passed: expire leases whose heartbeats stopped.
    pub fn tick(&self) -> Result<(), FarmError> {
        let now = unix_now_s();
        let mut core = self.core();
        let decisions = core.scheduler.tick(now);
        self.apply(&mut core, decisions, now)
    }

    fn end_shard(
        &self,
        core: &mut Core,
        lease_id: u64,
        state: &str,
        now: f64,
        runner_wall_s: Option<f64>,
    ) -> Result<(), FarmError> {
        let Some(&build_id) = core.lease_build.get(&lease_id) else { return Ok(()) };
        let shard = match core.running.get_mut(&build_id) {
            Some(live) => live.shards.get_mut(&lease_id).cloned(),
            None => self.store.shards(build_id)?.into_iter().find(|shard| shard.lease_id == lease_id),
        };
        let Some(mut shard) = shard else { return Ok(()) };
        let runner_wall_s = runner_wall_s.filter(|wall_s| wall_s.is_finite() && *wall_s >= 0.0);
        if shard.finished_at.is_some() {
            // The build's last result closed the shard; the worker's finish, arriving just
            // after, still tells when it really ended and how long its runner ran.
            if shard.state == "finished" && shard.runner_wall_s.is_none() && runner_wall_s.is_some() {
                shard.finished_at = Some(now);
                shard.runner_wall_s = runner_wall_s;
                self.put_shard(build_id, &shard)?;
            }
            return Ok(());
        }
        shard.finished_at = Some(now);
        shard.state = state.to_owned();
        shard.runner_wall_s = runner_wall_s;
        self.put_shard(build_id, &shard)?;
        if let Some(live) = core.running.get_mut(&build_id) {
            live.shards.insert(lease_id, shard);
        }
        Ok(())
    }

    fn record_result(&self, core: &mut Core, build_id: u64, result: &TestResultView) -> Result<(), FarmError> {
        if !self.store.put_result(build_id, result)? {
            return Ok(());
        }
        if let Some(live) = core.running.get_mut(&build_id) {
            live.summary.counts.add_result(result);
            if result.counts_as_failure() && live.summary.failed_tests.len() < LISTED_FAILURES {
                live.summary.failed_tests.push(result.test_id.clone());
            }
            if result.flaky && live.summary.flaky_tests.len() < LISTED_FAILURES {
                live.summary.flaky_tests.push(result.test_id.clone());
            }
            self.publish(FarmEvent::Build(live.summary.clone()));
            // The shard's counts live in memory while it runs; they are stored when it ends.
            if let Some(shard) = result.lease_id.and_then(|lease_id| live.shards.get_mut(&lease_id)) {
                // Within its shard a failed attempt is a failure, even when a retry elsewhere
                // passes: the box says what happened on that worker.
                if result.retried {
                    shard.counts.add(result.status);
                } else {
                    shard.counts.add_result(result);
                }
                self.publish(FarmEvent::Shard(ShardEvent { build_id, shard: without_test_ids(shard) }));
            }
            let regular = live.summary.kind == BuildKind::Regular;
            if regular && !result.retried && result.worker.is_some() {
                self.count_run(&mut core.flakes, &result.test_id, result.flaky)?;
            }
            // A test that ran and failed on every attempt closes the gate now, not when the
            // build ends; a flaky one only if flaky tests fail builds here.
            let closes = result.counts_as_failure()
                || (result.flaky && !result.quarantined && self.config.gate.flaky_fails_build);
            if closes && regular {
                let revision = live.summary.revision.clone();
                if gate::test_failed(&mut core.gate, build_id, &revision, &result.test_id, unix_now_s()) {
                    self.save_gate(core)?;
                }
            }
        }
        Ok(())
    }

    fn save_gate(&self, core: &Core) -> Result<(), FarmError> {
        self.store.set_meta(&gate_key(&core.gate.branch), &core.gate)?;
        self.publish(FarmEvent::Gate(core.gate.clone()));
        Ok(())
    }

    fn put_build(&self, build: &BuildSummary) -> Result<(), FarmError> {
        self.store.put_build(build)?;
        self.publish(FarmEvent::Build(build.clone()));
        Ok(())
    }

    fn put_change(&self, change: &ChangeView) -> Result<(), FarmError> {
        self.store.put_change(change)?;
        self.publish(FarmEvent::Change(change.clone()));
        Ok(())
    }

    fn put_shard(&self, build_id: u64, shard: &ShardView) -> Result<(), FarmError> {
        self.store.put_shard(build_id, shard)?;
        self.publish(FarmEvent::Shard(ShardEvent { build_id, shard: without_test_ids(shard) }));
        Ok(())
    }

    fn publish(&self, event: FarmEvent) {
        // Nobody listening is fine.
        let _ = self.events.send(event);
    }

    /// Tells long-lived streams (the page's updates) to end: the master shuts down.
    pub fn close_streams(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves when the master shuts down.
    pub fn closing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Updates for the web page, as they happen.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<FarmEvent> {
        self.events.subscribe()
    }

    /// The gate of `branch`, if it is the watched branch.
    pub fn gate(&self, branch: &str) -> Option<GateView> {
        let core = self.core();
        (core.gate.branch == branch).then(|| core.gate.clone())
    }

    /// Carries out the scheduler's decisions.
    fn apply(&self, core: &mut Core, decisions: Vec<Decision>, now: f64) -> Result<(), FarmError> {
        for decision in decisions {
            match decision {
                Decision::WorkAvailable => self.work_available.notify_waiters(),
                Decision::Skipped { build, test_id, reason, .. } => {
                    self.record_result(core, build.0, &not_run(test_id, TestStatus::Skipped, reason))?;
                }
                Decision::GaveUp { build, test_id, reason, .. } => {
                    tracing::warn!(build_id = build.0, test_id, reason, "test given up: infrastructure");
                    self.record_result(core, build.0, &not_run(test_id, TestStatus::Error, reason))?;
                }
                Decision::Retrying { build, test_id, attempt, .. } => {
                    tracing::info!(build_id = build.0, test_id, attempt, "test failed; retrying on another worker");
                }
                Decision::WorkerBenched { worker, until } => {
                    tracing::warn!(worker_id = worker.0, for_s = until - now, "worker benched: it keeps losing shards");
                    if let Some(info) = core.workers.get_mut(&worker.0) {
                        info.benched_until = Some(until);
                    }
                }
                Decision::LeaseShrunk { build, lease, worker, withdrawn } => {
                    self.shrink_shard(core, build.0, lease.0, &withdrawn)?;
                    tracing::info!(
                        build_id = build.0,
                        lease_id = lease.0,
                        worker_id = worker.0,
                        withdrawn = withdrawn.len(),
                        "lease shrunk: an idle worker takes the tests it had not started"
                    );
                }
                Decision::LeaseExpired { lease, worker, requeued } => {
                    core.withdrawn.remove(&lease.0);
                    tracing::warn!(lease_id = lease.0, worker_id = worker.0, requeued, "lease expired: worker lost");
                    self.end_shard(core, lease.0, "expired", now, None)?;
                    if let Some(info) = core.workers.get_mut(&worker.0)
                        && info.lease == Some(lease.0)
                    {
                        info.lease = None;
                    }
                }
                Decision::BuildFinished { build, verdict } => self.finish_build(core, build.0, verdict, now)?,
            }
        }
        Ok(())
    }

    /// Records that `withdrawn` (plan indices) left a running shard: its worker is told,
    /// and the shard's view (stored, and sent to the page) no longer holds them.
    fn shrink_shard(
        &self,
        core: &mut Core,
        build_id: u64,
        lease_id: u64,
        withdrawn: &[PlanIndex],
    ) -> Result<(), FarmError> {
        let Some(plan) = core.scheduler.plan(BuildId(build_id)) else { return Ok(()) };
        let ids: Vec<String> = withdrawn.iter().map(|&index| plan.tests[index].id.clone()).collect();
        core.withdrawn.entry(lease_id).or_default().extend(ids.iter().cloned());
        let Some(live) = core.running.get_mut(&build_id) else { return Ok(()) };
        let Some(shard) = live.shards.get_mut(&lease_id) else { return Ok(()) };
        let gone: HashSet<&str> = ids.iter().map(String::as_str).collect();
        shard.test_ids.retain(|id| !gone.contains(id.as_str()));
        shard.tests = shard.test_ids.len() as u32;
        shard.withdrawn += ids.len() as u32;
        shard.counts.total = shard.tests;
        let suite = &self.config.suite;
        shard.reproduce =
            suite.runner().reproduce(&suite.setup_command, &suite.run_command, &shard.test_ids, &live.summary.revision);
        let shard = shard.clone();
        self.put_shard(build_id, &shard)
    }

    /// Forgets what was withdrawn from the leases of an ended build: they are retired, so
    /// their heartbeats answer inactive and nothing is left to tell.
    fn forget_withdrawn(core: &mut Core, build_id: u64) {
        let lease_build = &core.lease_build;
        core.withdrawn.retain(|lease, _| lease_build.get(lease) != Some(&build_id));
    }

    fn finish_build(&self, core: &mut Core, build_id: u64, verdict: Verdict, now: f64) -> Result<(), FarmError> {
        let Some(mut live) = core.running.remove(&build_id) else { return Ok(()) };
        Farm::forget_withdrawn(core, build_id);
        let summary = &mut live.summary;
        // The scheduler's failures are real (every attempt failed); quarantined ones and,
        // unless configured, flaky ones do not count against the build.
        let flaky_fails = self.config.gate.flaky_fails_build && !summary.flaky_tests.is_empty();
        match verdict {
            Verdict::Red { .. } if !summary.failed_tests.is_empty() => summary.state = BuildState::Red,
            _ if flaky_fails => {
                summary.state = BuildState::Red;
                summary.failed_tests = summary.flaky_tests.clone();
            }
            Verdict::Error { gave_up } => {
                summary.state = BuildState::Error;
                summary.error = Some(format!(
                    "{} test(s) got no result after {} attempts each (workers lost, runners crashed): {}",
                    gave_up.len(),
                    self.config.scheduler.max_attempts,
                    gave_up.iter().take(10).map(String::as_str).collect::<Vec<_>>().join(", ")
                ));
            }
            Verdict::Green | Verdict::Red { .. } => summary.state = BuildState::Green,
        }
        summary.finished_at = Some(now);
        summary.makespan_s = summary.started_at.map(|started| now - started);
        for shard in live.shards.values_mut().filter(|shard| shard.finished_at.is_none()) {
            shard.finished_at = Some(now);
            shard.state = "finished".to_owned();
            self.put_shard(build_id, shard)?;
        }
        self.put_build(summary)?;
        self.store.remove_meta(&format!("{SELECTION}{build_id}"))?;
        tracing::info!(build_id, state = ?summary.state, failed = summary.counts.failed + summary.counts.error, "build finished");
        let summary = live.summary;
        match (summary.kind, summary.state) {
            (BuildKind::Regular, BuildState::Green) => {
                if gate::build_green(&mut core.gate, build_id, &summary.revision, now) {
                    tracing::info!(build_id, "gate open");
                }
                self.save_gate(core)?;
                if crate::push::configured(&self.config.push) {
                    self.store.put_push(&crate::push::queued(build_id, &summary.revision))?;
                    self.push_wanted.notify_one();
                }
            }
            (BuildKind::Regular, BuildState::Error) => {
                // No verdict on the code: the gate keeps its state and says why.
                let reason = summary.error.clone().unwrap_or_default();
                gate::build_infra_error(&mut core.gate, build_id, &reason);
                self.save_gate(core)?;
            }
            (BuildKind::Regular, _) => {
                for test_id in &summary.failed_tests {
                    gate::test_failed(&mut core.gate, build_id, &summary.revision, test_id, now);
                }
                self.save_gate(core)?;
                self.start_culprit_finding(core, &summary)?;
            }
            (BuildKind::Probe, _) => self.probe_finished(core, &summary)?,
        }
        self.store.flush()?;
        self.build_wanted.notify_one();
        Ok(())
    }

    /// A red build covering several changes starts a bisection; with one change, that
    /// change is the culprit.
    fn start_culprit_finding(&self, core: &mut Core, build: &BuildSummary) -> Result<(), FarmError> {
        if !self.config.gate.find_culprit || build.failed_tests.is_empty() {
            return Ok(());
        }
        // Earlier builds that did not run any of the failing tests (tag selection left them
        // out) may hold the culprit too: go back to the last build that ran one.
        let mut sequences: Vec<u64> = Vec::new();
        for earlier in self.store.latest_builds(200)? {
            if earlier.build_id >= build.build_id || earlier.kind != BuildKind::Regular {
                continue;
            }
            let results = self.store.results(earlier.build_id)?;
            if results.iter().any(|result| build.failed_tests.contains(&result.test_id)) {
                break;
            }
            sequences.splice(0..0, earlier.changes.iter().copied());
        }
        sequences.extend(build.changes.iter().copied());
        let mut candidates = Vec::with_capacity(sequences.len());
        for sequence in sequences {
            if let Some(change) = self.store.change(sequence)? {
                candidates.push(Candidate { sequence, revision: change.revision });
            }
        }
        if candidates.is_empty() {
            return Ok(());
        }
        let bisection = Bisection::new(build.build_id, build.failed_tests.clone(), candidates);
        tracing::info!(build_id = build.build_id, changes = bisection.candidates.len(), "culprit finding started");
        self.settle_bisection(core, bisection)
    }

    /// Names the culprit if the bisection is narrowed to one; else keeps it for the next probe.
    fn settle_bisection(&self, core: &mut Core, bisection: Bisection) -> Result<(), FarmError> {
        let key = format!("{BISECTION}{}", bisection.build_id);
        let Some(culprit) = bisection.culprit().cloned() else {
            self.store.set_meta(&key, &bisection)?;
            core.bisections.insert(bisection.build_id, bisection);
            self.build_wanted.notify_one();
            return Ok(());
        };
        core.bisections.remove(&bisection.build_id);
        self.store.remove_meta(&key)?;
        let build_id = bisection.build_id;
        let probes: Vec<u64> = bisection.probes.iter().filter_map(|probe| probe.build_id).collect();
        tracing::info!(build_id, culprit = %culprit.revision, probes = probes.len(), "culprit found");
        let change = self.store.change(culprit.sequence)?;
        if let Some(mut build) = self.store.build(build_id)? {
            build.culprit = Some(culprit.sequence);
            build.probes = probes;
            if let Some(change) = &change
                && let Some(covering) = change.build_id.filter(|&covering| covering != build_id)
            {
                tracing::warn!(build_id, change = change.sequence, covering, tests = ?bisection.failing_tests, "failure missed by tags");
                build.missed_by_tags = Some(MissedByTags {
                    change: change.sequence,
                    tags: change.tags.clone(),
                    build_id: covering,
                    tests: bisection.failing_tests.clone(),
                });
            }
            self.put_build(&build)?;
        }
        if let Some(mut change) = change {
            change.culprit_of = Some(build_id);
            self.put_change(&change)?;
            if gate::culprit_found(&mut core.gate, build_id, &change) {
                self.save_gate(core)?;
            }
            if self.config.gate.revert_culprit {
                let (mirror, branch, url) =
                    (self.mirror.clone(), self.config.repository.branch.clone(), self.config.repository.url.clone());
                let work_tree = self.config.data_dir.join("revert");
                let revision = change.revision.clone();
                std::thread::spawn(move || match mirror.revert(&url, &branch, &revision, &work_tree) {
                    Ok(revert) => tracing::info!(culprit = %revision, %revert, "culprit reverted on the branch"),
                    Err(error) => tracing::error!(culprit = %revision, %error, "reverting the culprit failed"),
                });
            }
        }
        Ok(())
    }

    fn probe_finished(&self, core: &mut Core, probe: &BuildSummary) -> Result<(), FarmError> {
        let Some(red_build) = probe.probe_of else { return Ok(()) };
        let Some(mut bisection) = core.bisections.remove(&red_build) else { return Ok(()) };
        let Some(candidate) = bisection.probes.iter().find(|p| p.build_id == Some(probe.build_id)).map(|p| p.candidate)
        else {
            core.bisections.insert(red_build, bisection);
            return Ok(());
        };
        // A probe whose suite could not even run counts as failing at that revision.
        let failed = matches!(probe.state, BuildState::Red | BuildState::Error);
        bisection.record(candidate, failed);
        self.settle_bisection(core, bisection)
    }

    /// Starts the next probe of every bisection that has none running.
    async fn advance_bisections(self: &Arc<Self>) -> Result<(), FarmError> {
        let due: Vec<(u64, usize, String, Vec<String>)> = {
            let core = self.core();
            core.bisections
                .values()
                .filter(|bisection| bisection.probes.iter().all(|probe| probe.failed.is_some()))
                .filter_map(|bisection| {
                    let index = bisection.next_probe()?;
                    Some((
                        bisection.build_id,
                        index,
                        bisection.candidates[index].revision.clone(),
                        bisection.failing_tests.clone(),
                    ))
                })
                .collect()
        };
        for (red_build, index, revision, failing) in due {
            let farm = Arc::clone(self);
            let (plan_revision, plan_tests) = (revision.clone(), failing.clone());
            let planned = blocking(move || farm.plan_probe(&plan_revision, &plan_tests)).await?;
            let now = unix_now_s();
            let mut core = self.core();
            let core = &mut *core;
            let Some(mut bisection) = core.bisections.remove(&red_build) else { continue };
            match planned {
                Ok(plan) if plan.is_empty() => {
                    // None of the failing tests exists there: they cannot fail there.
                    bisection.probes.push(Probe { candidate: index, build_id: None, failed: None });
                    bisection.record(index, false);
                    self.settle_bisection(core, bisection)?;
                }
                planned => {
                    let build_id = self.store.next_id("build")?;
                    let mut summary = self.new_summary(build_id, revision, Vec::new(), Vec::new(), false, now);
                    summary.kind = BuildKind::Probe;
                    summary.probe_of = Some(red_build);
                    bisection.probes.push(Probe { candidate: index, build_id: Some(build_id), failed: None });
                    tracing::info!(build_id, red_build, candidate = index, "culprit probe started");
                    match planned {
                        Ok(plan) => {
                            summary.counts.total = plan.len() as u32;
                            summary.lower_bound_s = Some(plan.lower_bound(core.scheduler.live_workers().max(1)));
                            self.put_build(&summary)?;
                            self.save_selection(build_id, &plan)?;
                            core.running.insert(build_id, LiveBuild { summary, shards: BTreeMap::new() });
                            let decisions = core.scheduler.add_build(BuildId(build_id), plan, now)?;
                            core.scheduler.make_urgent(BuildId(build_id));
                            self.settle_bisection(core, bisection)?;
                            self.apply(core, decisions, now)?;
                        }
                        Err(error) => {
                            summary.state = BuildState::Error;
                            summary.error = Some(error.to_string());
                            summary.finished_at = Some(now);
                            self.put_build(&summary)?;
                            bisection.record(index, true);
                            self.settle_bisection(core, bisection)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The next revision to hand to the push stage: the newest pending one newer than the
    /// last pushed; older pending ones are marked superseded.
    pub fn next_push(&self) -> Result<Option<PushView>, FarmError> {
        let last_pushed: u64 = self.store.meta(LAST_PUSHED)?.unwrap_or(0);
        let mut pending: Vec<PushView> = self
            .store
            .pushes()?
            .into_iter()
            .filter(|push| push.state == "pending" || push.state == "pushing")
            .collect();
        let Some(newest) = pending.pop() else { return Ok(None) };
        for mut older in pending {
            older.state = "superseded".to_owned();
            older.finished_at = Some(unix_now_s());
            self.store.put_push(&older)?;
        }
        if newest.build_id <= last_pushed {
            let mut stale = newest;
            stale.state = "superseded".to_owned();
            stale.finished_at = Some(unix_now_s());
            self.store.put_push(&stale)?;
            return Ok(None);
        }
        Ok(Some(newest))
    }

    /// Records how a hand-off went.
    pub fn record_push(&self, push: &PushView) -> Result<(), FarmError> {
        self.store.put_push(push)?;
        if push.state == "pushed" {
            let last_pushed: u64 = self.store.meta(LAST_PUSHED)?.unwrap_or(0);
            self.store.set_meta(LAST_PUSHED, &last_pushed.max(push.build_id))?;
        }
        Ok(())
    }

    /// Every push hand-off, newest first.
    pub fn pushes(&self) -> Result<Vec<PushView>, FarmError> {
        let mut pushes = self.store.pushes()?;
        pushes.reverse();
        Ok(pushes)
    }

    /// Fetches the watched branch and queues the commits that arrived since the last look.
    pub async fn poll(self: &Arc<Self>) -> Result<Vec<ChangeView>, FarmError> {
        let _one_poll_at_a_time = self.poll_lock.lock().await;
        let farm = Arc::clone(self);
        let queued = blocking(move || farm.poll_blocking()).await??;
        if !queued.is_empty() {
            self.build_wanted.notify_one();
        }
        Ok(queued)
    }

    fn poll_blocking(&self) -> Result<Vec<ChangeView>, FarmError> {
        let branch = &self.config.repository.branch;
        let tip = self.mirror.fetch()?;
        let last_key = format!("{LAST_SEEN}{branch}");
        let last_seen: Option<String> = self.store.meta(&last_key)?;
        let revisions = self.mirror.new_revisions(last_seen.as_deref(), &tip)?;
        let mut queued = Vec::with_capacity(revisions.len());
        for revision in revisions {
            let commit = self.mirror.commit(&revision)?;
            let change = ChangeView {
                sequence: self.store.next_id("change")?,
                branch: branch.clone(),
                tags: self.tagger.tags(&commit),
                revision: commit.revision,
                author: commit.author,
                message: commit.message,
                paths: commit.paths,
                build_id: None,
                seen_at: unix_now_s(),
                culprit_of: None,
            };
            self.put_change(&change)?;
            tracing::info!(sequence = change.sequence, revision = %change.revision, tags = ?change.tags, "change queued");
            queued.push(change);
        }
        self.store.set_meta(&last_key, &tip)?;
        Ok(queued)
    }

    /// Starts a build covering every queued change, unless one is running. Returns its id.
    pub async fn start_next_build(self: &Arc<Self>) -> Result<Option<u64>, FarmError> {
        self.advance_bisections().await?;
        if self.core().running.values().any(|live| live.summary.kind == BuildKind::Regular) {
            return Ok(None);
        }
        let first: u64 = self.store.meta(NEXT_UNBUILT)?.unwrap_or(1);
        let forced: bool = self.store.meta(FORCE_FULL_RUN)?.unwrap_or(false);
        let pending = self.store.changes_from(first, 100_000)?;
        let (revision, newest_sequence) = match pending.last() {
            Some(newest) => (newest.revision.clone(), Some(newest.sequence)),
            None if forced => match self.store.latest_changes(1)?.into_iter().next() {
                Some(head) => (head.revision, None),
                None => return Ok(None),
            },
            None => return Ok(None),
        };
        if forced {
            self.store.remove_meta(FORCE_FULL_RUN)?;
        }
        let since_full: u64 = self.store.meta(BUILDS_SINCE_FULL_RUN)?.unwrap_or(0);
        let last_full_at: f64 = self.store.meta(LAST_FULL_RUN_AT)?.unwrap_or(0.0);
        let periodic = &self.config.full_runs;
        let full_run_due = (periodic.every_builds > 0 && since_full + 1 >= u64::from(periodic.every_builds))
            || (periodic.interval_s > 0.0 && unix_now_s() - last_full_at >= periodic.interval_s);
        let full_run = forced || full_run_due || pending.iter().any(|change| change.tags.is_empty());
        if full_run {
            self.store.set_meta(BUILDS_SINCE_FULL_RUN, &0u64)?;
            self.store.set_meta(LAST_FULL_RUN_AT, &unix_now_s())?;
        } else {
            self.store.set_meta(BUILDS_SINCE_FULL_RUN, &(since_full + 1))?;
        }
        let tags: BTreeSet<String> = if full_run {
            BTreeSet::new()
        } else {
            pending.iter().flat_map(|change| change.tags.iter().cloned()).collect()
        };
        let farm = Arc::clone(self);
        let (plan_revision, plan_tags) = (revision.clone(), tags.clone());
        let planned = blocking(move || farm.plan(&plan_revision, &plan_tags)).await?;

        let now = unix_now_s();
        let mut core = self.core();
        let core = &mut *core;
        let build_id = self.store.next_id("build")?;
        let changes = pending.iter().map(|change| change.sequence).collect();
        let mut summary = self.new_summary(build_id, revision, changes, tags.into_iter().collect(), full_run, now);
        for mut change in pending.iter().cloned() {
            change.build_id = Some(build_id);
            self.put_change(&change)?;
        }
        if let Some(newest) = newest_sequence {
            self.store.set_meta(NEXT_UNBUILT, &(newest + 1))?;
        }
        match planned {
            Ok(plan) => {
                summary.counts.total = plan.len() as u32;
                summary.lower_bound_s = Some(plan.lower_bound(core.scheduler.live_workers().max(1)));
                tracing::info!(build_id, tests = plan.len(), changes = summary.changes.len(), "build planned");
                self.put_build(&summary)?;
                self.save_selection(build_id, &plan)?;
                core.running.insert(build_id, LiveBuild { summary, shards: BTreeMap::new() });
                let decisions = core.scheduler.add_build(BuildId(build_id), plan, now)?;
                self.apply(core, decisions, now)?;
            }
            Err(error) => {
                tracing::error!(build_id, %error, "build could not be planned");
                summary.state = BuildState::Error;
                summary.error = Some(error.to_string());
                summary.finished_at = Some(now);
                self.put_build(&summary)?;
                if gate::build_errored(&mut core.gate, build_id, &summary.revision, &error.to_string(), now) {
                    self.save_gate(core)?;
                }
            }
        }
        Ok(Some(build_id))
    }

    fn new_summary(
        &self,
        build_id: u64,
        revision: String,
        changes: Vec<u64>,
        tags: Vec<String>,
        full_run: bool,
        now: f64,
    ) -> BuildSummary {
        BuildSummary {
            version: API_VERSION,
            build_id,
            branch: self.config.repository.branch.clone(),
            revision,
            state: BuildState::Queued,
            changes,
            tags,
            full_run,
            counts: TestCounts::default(),
            failed_tests: Vec::new(),
            flaky_tests: Vec::new(),
            error: None,
            created_at: now,
            started_at: None,
            finished_at: None,
            lower_bound_s: None,
            makespan_s: None,
            shards: 0,
            kind: BuildKind::Regular,
            probe_of: None,
            culprit: None,
            probes: Vec::new(),
            missed_by_tags: None,
        }
    }

    /// The suite at `revision`, validated.
    fn suite_at(&self, revision: &str) -> Result<Suite, PlanError> {
        Ok(Suite::new(self.suite_file_at(revision)?)?)
    }

    /// The suite file at `revision`, as read or listed (not validated).
    fn suite_file_at(&self, revision: &str) -> Result<SuiteFile, PlanError> {
        Ok(match &self.config.suite.file {
            Some(path) => SuiteFile::from_json(&self.mirror.read_file(revision, path)?)?,
            None if self.config.suite.list_command.is_empty() => self.list_with_runner(revision)?,
            None => SuiteFile::from_json(&self.list_suite(revision)?)?,
        })
    }

    /// The suite as the runner adapter lists it in a checkout of `revision`.
    fn list_with_runner(&self, revision: &str) -> Result<SuiteFile, PlanError> {
        let checkout = self.config.data_dir.join("checkout");
        self.mirror.checkout(revision, &checkout)?;
        let env: Vec<(String, String)> =
            self.config.suite.env.iter().map(|(key, value)| (key.clone(), value.clone())).collect();
        greenlight_shared::runner::list_suite(&self.config.suite.runner(), &checkout, &env)
            .map_err(|error| PlanError::ListCommand(error.to_string()))
    }

    /// The store key of the suite's learned shard overhead (a farm runs one suite).
    fn overhead_key(&self) -> String {
        format!("{}#{}", self.config.repository.url, self.config.repository.branch)
    }

    /// The suite's shard overhead as learned from real shards (the median of the recent
    /// samples, so one slow shard does not move it), and how many samples there are.
    pub fn learned_shard_overhead(&self) -> Result<(Option<f64>, usize), StoreError> {
        let mut samples = self.store.shard_overheads(&self.overhead_key())?;
        Ok((median(&mut samples), samples.len()))
    }

    /// A plan re-running `tests` (those the suite has at `revision`) with their dependencies.
    fn plan_probe(&self, revision: &str, tests: &[String]) -> Result<BuildPlan, PlanError> {
        let suite = self.suite_at(revision)?;
        let selected = select_ids(&suite, tests.iter().map(String::as_str));
        self.plan_selected(&suite, &selected)
    }

    /// Reads, validates and plans the suite at `revision` for `tags` (empty: everything).
    fn plan(&self, revision: &str, tags: &BTreeSet<String>) -> Result<BuildPlan, PlanError> {
        let suite = self.suite_at(revision)?;
        let selected = select(&suite, tags);
        self.plan_selected(&suite, &selected)
    }

    fn plan_selected(&self, suite: &Suite, selected: &[usize]) -> Result<BuildPlan, PlanError> {
        let mut history: HashMap<&str, f64> = HashMap::new();
        for &index in selected {
            let id = suite.tests[index].id.as_str();
            if let Some(value) = median(&mut self.store.durations(id)?) {
                history.insert(id, value);
            }
        }
        let estimates = estimate(suite, |test| history.get(test.id.as_str()).copied().or(test.duration_s));
        let mut plan = BuildPlan::new(suite, selected, &estimates);
        // A shard may give back the tests it has not started only if its runner reports each
        // test as it ends (pytest and nextest write their report at exit).
        plan.leases_splittable = self.config.suite.runner() == Runner::Command;
        // What real shards of this suite cost beats what its file declares.
        if let (Some(learned), _) = self.learned_shard_overhead()? {
            plan.shard_overhead_s = learned;
        }
        Ok(plan)
    }

    fn list_suite(&self, revision: &str) -> Result<Vec<u8>, PlanError> {
        let checkout = self.config.data_dir.join("checkout");
        self.mirror.checkout(revision, &checkout)?;
        let command = &self.config.suite.list_command;
        let output = std::process::Command::new(&command[0])
            .args(&command[1..])
            .current_dir(&checkout)
            .envs(&self.config.suite.env)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|error| PlanError::ListCommand(format!("{}: {error}", command[0])))?;
        if !output.status.success() {
            return Err(PlanError::ListCommand(format!(
                "{} exited with {}: {}",
                command[0],
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        Ok(output.stdout)
    }

    /// Counts a final run of a test in a regular build for its flake rate; quarantines it
    /// when the rate reaches the configured threshold.
    fn count_run(&self, flakes: &mut Flakes, test_id: &str, flaky: bool) -> Result<(), FarmError> {
        if !flaky && !flakes.recorded.contains(test_id) {
            // Tests that never flaked keep no record: 15k keys a build would be noise.
            return Ok(());
        }
        let key = format!("{FLAKE}{test_id}");
        let mut record: FlakeRecord = self.store.meta(&key)?.unwrap_or_default();
        record.test_id = test_id.to_owned();
        record.recent.push_back(flaky);
        if record.recent.len() > FLAKE_WINDOW {
            record.recent.pop_front();
        }
        if flaky {
            record.last_flaky_at = Some(unix_now_s());
        }
        self.store.set_meta(&key, &record)?;
        flakes.recorded.insert(test_id.to_owned());
        let policy = &self.config.quarantine;
        let runs = record.recent.len() as u32;
        let rate = f64::from(record.flaky()) / f64::from(runs.max(1));
        if flaky
            && policy.flake_rate > 0.0
            && runs >= policy.min_runs
            && rate >= policy.flake_rate
            && !flakes.quarantined(test_id)
        {
            let now = unix_now_s();
            let entry = QuarantineEntry {
                test_id: test_id.to_owned(),
                reason: format!("flaked in {} of its last {runs} runs", record.flaky()),
                by: "auto".to_owned(),
                since: now,
                expires_at: now + policy.expires_in_s,
            };
            tracing::warn!(test_id, rate, "test quarantined automatically");
            self.store.set_meta(&format!("{QUARANTINE}{test_id}"), &entry)?;
            flakes.quarantine.insert(test_id.to_owned(), entry);
        }
        Ok(())
    }

    /// Quarantines a test (admin).
    pub fn quarantine(
        &self,
        test_id: &str,
        reason: &str,
        expires_in_s: Option<f64>,
    ) -> Result<QuarantineEntry, FarmError> {
        if test_id.is_empty() || reason.trim().is_empty() {
            return Err(FarmError::Invalid("test_id and reason must not be empty".to_owned()));
        }
        let expires_in_s = expires_in_s.unwrap_or(self.config.quarantine.expires_in_s);
        if !expires_in_s.is_finite() || expires_in_s <= 0.0 || expires_in_s > 366.0 * 24.0 * 3600.0 {
            return Err(FarmError::Invalid(format!("expires_in_s must be within 0..1 year, not {expires_in_s}")));
        }
        let now = unix_now_s();
        let entry = QuarantineEntry {
            test_id: test_id.to_owned(),
            reason: reason.to_owned(),
            by: "admin".to_owned(),
            since: now,
            expires_at: now + expires_in_s,
        };
        let mut core = self.core();
        self.store.set_meta(&format!("{QUARANTINE}{test_id}"), &entry)?;
        core.flakes.quarantine.insert(test_id.to_owned(), entry.clone());
        tracing::info!(test_id, reason, "test quarantined by an admin");
        Ok(entry)
    }

    /// Lifts a quarantine (admin). Returns whether there was one.
    pub fn unquarantine(&self, test_id: &str) -> Result<bool, FarmError> {
        let mut core = self.core();
        self.store.remove_meta(&format!("{QUARANTINE}{test_id}"))?;
        Ok(core.flakes.quarantine.remove(test_id).is_some())
    }

    /// Quarantines in force, by test id.
    pub fn quarantine_list(&self) -> Vec<QuarantineEntry> {
        let mut entries: Vec<QuarantineEntry> = self.core().flakes.in_force().cloned().collect();
        entries.sort_by(|a, b| a.test_id.cmp(&b.test_id));
        entries
    }

    /// Tests that flaked in their recent runs, flakiest first.
    pub fn flaky_tests(&self) -> Result<Vec<FlakeStats>, FarmError> {
        let records: Vec<FlakeRecord> = self.store.meta_with_prefix(FLAKE)?;
        let core = self.core();
        let mut stats = Vec::new();
        for record in records.into_iter().filter(|record| record.flaky() > 0) {
            let runs = record.recent.len() as u32;
            stats.push(FlakeStats {
                quarantined: core.flakes.quarantined(&record.test_id),
                flaky: record.flaky(),
                flake_rate: f64::from(record.flaky()) / f64::from(runs.max(1)),
                runs,
                last_flaky_at: record.last_flaky_at,
                test_id: record.test_id,
            });
        }
        stats.sort_by(|a, b| b.flake_rate.total_cmp(&a.flake_rate).then_with(|| a.test_id.cmp(&b.test_id)));
        Ok(stats)
    }

    /// Cancels a running build (admin): its leases end, it is recorded as an error and
    /// its changes are queued again.
    pub fn cancel_build(&self, build_id: u64) -> Result<BuildSummary, FarmError> {
        let now = unix_now_s();
        let mut core = self.core();
        let core = &mut *core;
        let Some(mut live) = core.running.remove(&build_id) else {
            let stored = self.store.build(build_id)?.ok_or(FarmError::UnknownBuild(build_id))?;
            return Err(if stored.state.is_finished() {
                FarmError::BuildEnded(build_id)
            } else {
                FarmError::UnknownBuild(build_id)
            });
        };
        core.scheduler.remove_build(BuildId(build_id));
        Farm::forget_withdrawn(core, build_id);
        for shard in live.shards.values_mut().filter(|shard| shard.finished_at.is_none()) {
            shard.finished_at = Some(now);
            shard.state = "cancelled".to_owned();
            self.put_shard(build_id, shard)?;
        }
        for worker in core.workers.values_mut() {
            if worker.lease.is_some_and(|lease| core.lease_build.get(&lease) == Some(&build_id)) {
                worker.lease = None;
            }
        }
        let summary = &mut live.summary;
        summary.state = BuildState::Error;
        summary.error = Some("cancelled by an admin".to_owned());
        summary.finished_at = Some(now);
        self.put_build(summary)?;
        self.store.remove_meta(&format!("{SELECTION}{build_id}"))?;
        if summary.kind == BuildKind::Regular
            && let Some(&first) = summary.changes.first()
        {
            let watermark: u64 = self.store.meta(NEXT_UNBUILT)?.unwrap_or(1);
            self.store.set_meta(NEXT_UNBUILT, &watermark.min(first))?;
        }
        self.store.flush()?;
        tracing::warn!(build_id, "build cancelled by an admin");
        self.build_wanted.notify_one();
        Ok(live.summary)
    }

    /// Asks for a full run of the branch head (admin): the next build runs every test,
    /// and one starts even if no change is queued.
    pub fn force_full_run(&self) -> Result<(), FarmError> {
        self.store.set_meta(FORCE_FULL_RUN, &true)?;
        self.build_wanted.notify_one();
        Ok(())
    }

    /// A build's summary (live counts while it runs).
    pub fn build_summary(&self, build_id: u64) -> Result<BuildSummary, FarmError> {
        if let Some(live) = self.core().running.get(&build_id) {
            return Ok(live.summary.clone());
        }
        self.store.build(build_id)?.ok_or(FarmError::UnknownBuild(build_id))
    }

    /// The newest builds, newest first.
    pub fn builds(&self, limit: usize) -> Result<Vec<BuildSummary>, FarmError> {
        let mut builds = self.store.latest_builds(limit)?;
        let core = self.core();
        for build in &mut builds {
            if let Some(live) = core.running.get(&build.build_id) {
                *build = live.summary.clone();
            }
        }
        Ok(builds)
    }

    /// A build with its shards; their test ids only if `with_test_ids`.
    pub fn build_detail(&self, build_id: u64, with_test_ids: bool) -> Result<BuildDetail, FarmError> {
        let build = self.build_summary(build_id)?;
        let mut shards: Vec<ShardView> = match self.core().running.get(&build_id) {
            Some(live) => live.shards.values().cloned().collect(),
            None => self.store.shards(build_id)?,
        };
        if !with_test_ids {
            shards.iter_mut().for_each(|shard| shard.test_ids = Vec::new());
        }
        Ok(BuildDetail { build, shards })
    }

    /// One shard of a build, with its test ids.
    pub fn shard(&self, build_id: u64, lease_id: u64) -> Result<Option<ShardView>, FarmError> {
        let shards = self.build_detail(build_id, true)?.shards;
        Ok(shards.into_iter().find(|shard| shard.lease_id == lease_id))
    }

    /// One test across the newest `n_builds` builds: outcomes, durations, flake rate, and
    /// its tags and dependencies from the suite at the newest of those builds' revisions.
    /// Blocking (git).
    pub fn test_history(&self, test_id: &str, n_builds: usize) -> Result<TestHistory, FarmError> {
        let builds = self.builds(n_builds)?;
        let mut runs = Vec::new();
        for build in &builds {
            let attempts = self.store.results_of_test(build.build_id, test_id)?;
            let Some(last) = attempts.last() else { continue };
            let flaky = last.flaky;
            let output = attempts.iter().rev().find(|result| result.status.is_failure()).and_then(|r| r.output.clone());
            runs.push(TestRun {
                build_id: build.build_id,
                revision: build.revision.clone(),
                created_at: build.created_at,
                status: last.status,
                duration_s: last.duration_s,
                attempts: attempts.len() as u32,
                flaky,
                worker: last.worker.clone(),
                output: output.or_else(|| last.output.clone()),
            });
        }
        let flake_rate =
            if runs.is_empty() { 0.0 } else { runs.iter().filter(|run| run.flaky).count() as f64 / runs.len() as f64 };
        let mut history = TestHistory {
            version: API_VERSION,
            test_id: test_id.to_owned(),
            tags: Vec::new(),
            depends_on: Vec::new(),
            dependants: Vec::new(),
            recent_durations_s: self.store.durations(test_id)?,
            runs,
            flake_rate,
        };
        let revision = builds.iter().find(|build| build.state != BuildState::Error).map(|build| build.revision.clone());
        if let Some(suite) = revision.and_then(|revision| self.suite_file_at(&revision).ok()) {
            for test in &suite.tests {
                if test.id == test_id {
                    history.tags = test.tags.clone();
                    history.depends_on = test.depends_on.clone();
                } else if test.depends_on.iter().any(|dependency| dependency == test_id) {
                    history.dependants.push(test.id.clone());
                }
            }
        }
        Ok(history)
    }

    /// Every stored result of a build.
    pub fn build_tests(&self, build_id: u64) -> Result<BuildTests, FarmError> {
        self.build_summary(build_id)?;
        Ok(BuildTests { version: API_VERSION, build_id, results: self.store.results(build_id)? })
    }

    /// The newest changes, newest first.
    pub fn changes(&self, limit: usize) -> Result<Vec<ChangeView>, FarmError> {
        Ok(self.store.latest_changes(limit)?)
    }

    /// The workers the master knows.
    pub fn workers(&self) -> Vec<WorkerView> {
        let now = unix_now_s();
        let core = self.core();
        core.workers
            .iter()
            .map(|(&worker_id, info)| WorkerView {
                worker_id,
                name: info.name.clone(),
                lease_id: info.lease,
                last_seen: info.last_seen,
                benched_until: info.benched_until.filter(|&until| until > now),
                build_id: info.lease.and_then(|lease_id| core.lease_build.get(&lease_id).copied()),
                lost: now - info.last_seen > self.config.scheduler.lease_timeout_s,
            })
            .collect()
    }
}

/// The result of a test no worker ran (attempt 0): skipped for a dependency, or given up.
fn not_run(test_id: String, status: TestStatus, reason: String) -> TestResultView {
    TestResultView {
        test_id,
        attempt: 0,
        status,
        duration_s: 0.0,
        output: Some(reason),
        worker: None,
        retried: false,
        flaky: false,
        quarantined: false,
        lease_id: None,
    }
}

/// A shard as the event stream sends it: without its (possibly long) list of test ids and
/// its reproduce line (which names them), neither even cloned (this runs for every result,
/// under the farm's lock). The shard's own endpoint has both.
fn without_test_ids(shard: &ShardView) -> ShardView {
    ShardView {
        lease_id: shard.lease_id,
        worker: shard.worker.clone(),
        tests: shard.tests,
        withdrawn: shard.withdrawn,
        started_at: shard.started_at,
        finished_at: shard.finished_at,
        state: shard.state.clone(),
        counts: shard.counts.clone(),
        test_ids: Vec::new(),
        reproduce: String::new(),
        runner_wall_s: shard.runner_wall_s,
    }
}

fn sanitize_duration(duration_s: f64) -> f64 {
    if duration_s.is_finite() && duration_s >= 0.0 { duration_s } else { 0.0 }
}
