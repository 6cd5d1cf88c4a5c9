//! The farm: the master's state and its use cases. [`Farm`] holds the state (this file);
//! each use case is a module of `impl Farm` blocks:
//!
//! - [`workers`]: the worker protocol (register, lease, heartbeat, results, finish, tick);
//! - [`decisions`]: carrying out what the scheduler decided (results recorded, shards
//!   ended or shrunk, the gate closed as soon as a failure is real);
//! - [`builds`]: the build lifecycle (poll, start, finish, cancel, recover after a restart);
//! - [`planning`]: reading the suite at a revision and planning it from history;
//! - [`preparations`]: a revision prepared on a worker (set up, listed, its nextest
//!   archive uploaded) before its build can be planned;
//! - [`culprits`]: bisection of a red build's changes with probe builds;
//! - [`flakes`]: flake records and quarantine;
//! - [`health`]: what keeps the farm from testing (a data directory short of space, a
//!   failed store, a repository it cannot fetch), shown on the gate, the page and `/metrics`;
//! - [`queries`]: what the read-only API and the page read;
//! - [`retention`]: the store's housekeeping after builds end (results packed, old
//!   builds' results and shards removed).
//!
//! **One owner per fact.** The scheduler core owns leases, workers' leases and benches, the
//! tests withdrawn from a lease, and the verdict; the farm asks it and never mirrors it. The
//! farm owns what the core does not know: worker names and when each was last heard, the
//! live views of running builds (summaries and shards, for the page), the gate, the
//! bisections and the quarantine. The store owns its key layout.
//!
//! **The lock.** All of that sits behind one std mutex, held for short sections that never
//! span an `.await`, and never across an fsync, a git command or a read of many builds:
//! those run before the lock is taken or after it is released. Time comes in through the
//! [`Clock`] the farm is given.

mod builds;
mod culprits;
mod decisions;
mod flakes;
mod health;
mod history;
mod planning;
mod preparations;
mod queries;
mod retention;
mod workers;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use greenlight_scheduler::core::{Scheduler, SchedulerConfig, SchedulerError, ShardSizing};
use greenlight_shared::api::{
    BuildSummary, ChangeView, FarmEvent, GateView, ShardEvent, ShardView, TestResultView, TestStatus,
};
use greenlight_shared::git::GitError;
use tokio::sync::Notify;

use self::flakes::Flakes;
use self::health::Health;
pub use self::planning::PlanError;
pub use self::preparations::KEPT_ARCHIVES;
use self::preparations::Preparations;
pub use self::queries::{ResultsCursor, ResultsPage, ResultsQueryError};
pub use self::workers::{Work, WorkerCredentials, WorkerToken};
use crate::changes::{Mirror, Tagger};
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, ShardSizingName};
use crate::culprit::Bisection;
use crate::gate;
use crate::store::{Store, StoreError};

/// How many failing test ids a build summary lists.
const LISTED_FAILURES: usize = 100;
/// Updates a slow page subscriber may fall behind by before it is told to resync.
const EVENT_BACKLOG: usize = 8192;
/// The longest a flush may take before the store is taken to have failed (a flush takes
/// milliseconds; sled's, after an I/O error, may never come back).
const FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Why a farm operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FarmError {
    /// No worker with this id is registered.
    #[error("unknown worker {0}; register again")]
    UnknownWorker(u64),
    /// Another live registration holds the name (see [`workers`]).
    #[error(
        "worker name {name:?} is held by a live worker (id {worker_id}, heard from {silent_s:.1} s ago); \
         is another machine running a worker under the same name? Give each its own --name. \
         A worker that restarted gets its name back once the old registration has been silent for \
         the lease timeout ({lease_timeout_s} s)"
    )]
    NameInUse {
        /// The name.
        name: String,
        /// The registration holding it.
        worker_id: u64,
        /// How long ago the holder was heard from.
        silent_s: f64,
        /// How long the holder must be silent before the name is free.
        lease_timeout_s: f64,
    },
    /// A call for a registration without the session it registered with.
    #[error(
        "worker {0} registered with another session: only the process that registered it may call as it \
         (the `greenlight-session` header)"
    )]
    WrongSession(u64),
    /// The token presented may not act as this worker (its own token, or another's).
    #[error("{0}")]
    WrongWorkerToken(String),
    /// No build with this id.
    #[error("unknown build {0}")]
    UnknownBuild(u64),
    /// The build's results and shards were removed by retention (its summary stays).
    #[error(
        "the results of build {0} were removed by retention ([storage] keep_results_builds, keep_results_days); \
         its summary is kept"
    )]
    ResultsPruned(u64),
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
    /// The data directory has too little free space for any write.
    #[error(
        "data_dir {} has {free_bytes} bytes free, below [storage] reserve_bytes ({reserve_bytes}): writes are refused until space is freed; retry later",
        .dir.display()
    )]
    DiskFull {
        /// The data directory.
        dir: std::path::PathBuf,
        /// Its free bytes.
        free_bytes: u64,
        /// The configured reserve.
        reserve_bytes: u64,
    },
    /// git failed.
    #[error(transparent)]
    Git(#[from] GitError),
    /// No preparation with this id is under way.
    #[error("unknown preparation {0}")]
    UnknownPreparation(u64),
    /// The preparation is held by another worker (or by none: it was given to another).
    #[error("preparation {prepare_id} is not held by worker {worker_id}")]
    NotYourPreparation {
        /// The preparation.
        prepare_id: u64,
        /// The worker that asked.
        worker_id: u64,
    },
    /// A listing a worker sent is not a suite.
    #[error("invalid listing: {0}")]
    InvalidListing(String),
    /// A preparation's listing arrived before its archive.
    #[error("{0}")]
    PreparationIncomplete(String),
    /// A background task died.
    #[error("internal task failed: {0}")]
    Task(String),
    /// What the call needs from the repository is not there (yet): no revision polled,
    /// a suite that cannot be read.
    #[error("{0}")]
    Unavailable(String),
}

/// Runs blocking work (git, fsync) on tokio's blocking threads.
pub async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, FarmError> {
    tokio::task::spawn_blocking(work).await.map_err(|error| FarmError::Task(error.to_string()))
}

/// A running build as the page sees it: its summary with live counts, and its shards.
#[derive(Debug)]
struct LiveBuild {
    summary: BuildSummary,
    shards: BTreeMap<u64, ShardView>,
}

/// A registered worker: who it is, the session of the process that registered it, and
/// when it was last heard. What it holds and whether it is benched are the scheduler's to
/// say.
#[derive(Debug)]
struct Registration {
    name: String,
    /// The secret the registering process presents with every call; `None` for an older
    /// worker that sends none (its calls are taken on its id alone).
    session: Option<String>,
    last_seen: f64,
    /// Until when it waits in a long-poll for work: a worker waiting is live, however
    /// long ago its call began.
    waiting_until: f64,
}

impl Registration {
    /// Missed heartbeats: not heard from for a lease timeout, and not waiting in a
    /// long-poll for work. A lost registration's lease has expired and its name is free.
    fn lost(&self, now: f64, lease_timeout_s: f64) -> bool {
        now - self.last_seen > lease_timeout_s && now > self.waiting_until
    }
}

/// Everything behind the farm's lock.
struct Core {
    scheduler: Scheduler,
    running: BTreeMap<u64, LiveBuild>,
    workers: BTreeMap<u64, Registration>,
    worker_by_name: HashMap<String, u64>,
    gate: GateView,
    /// Culprit findings under way, by red build.
    bisections: BTreeMap<u64, Bisection>,
    /// Quarantined tests and tests with a flake record.
    flakes: Flakes,
    /// Revisions a worker is to prepare (list, build the archive) before their build plans.
    preparations: Preparations,
    /// What keeps the farm from testing now.
    health: Health,
}

/// The master's state.
pub struct Farm {
    config: Config,
    store: Store,
    clock: Arc<dyn Clock>,
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
    /// Held while a poll writes the changes it found, and while a build reads the changes
    /// it covers: a batch is built whole.
    queueing: std::sync::Mutex<()>,
    /// Held while the master's checkout (`data_dir/checkout`) is used to list a suite:
    /// the build loop and a history import may both need it.
    checkout_lock: Mutex<()>,
    /// A build ended, was cancelled, or a culprit was named since the last flush: the
    /// caller flushes once the lock is released ([`Farm::flush_verdicts`]).
    verdicts_unflushed: AtomicBool,
    /// Concurrent flushes share one ([`Farm::flush`]).
    commits: GroupCommit,
    /// The workers' requests' turns at the farm's lock ([`Farm::in_turn`]).
    workers_turn: tokio::sync::Mutex<()>,
    /// The suites of the last few revisions a test's history read, parsed.
    suites: Mutex<planning::SuiteCache>,
    /// The gate as last published ([`Farm::gate_changed`]): read by `GET /api/v1/gate`
    /// and the commit hooks without taking the farm's lock, so a hook's answer never waits
    /// for a lease or a build's start. The core's gate and health own the facts; this is
    /// their view, replaced whenever either changes.
    published_gate: tokio::sync::watch::Sender<GateView>,
    /// What the farm counts as it goes, for `GET /metrics`.
    metrics: crate::metrics::Metrics,
}

/// Group commit: callers that want their writes durable at the same time share one flush
/// of the store. Each caller takes a ticket once its writes are done; a flush covers every
/// ticket taken before it started, and a caller returns once a flush covering its ticket
/// has finished. One flush runs at a time; while it does, the callers queue behind it and
/// the next flush covers all of them.
#[derive(Default)]
struct GroupCommit {
    /// The last ticket taken.
    taken: AtomicU64,
    /// Every ticket up to this one is durable.
    durable: AtomicU64,
    /// Held by the flush under way; waited for in turn (tokio's mutex is fair).
    turn: tokio::sync::Mutex<()>,
    /// Flushes made so far.
    flushes: AtomicU64,
}

/// The scheduler's knobs from the master's configuration.
fn scheduler_config(config: &Config) -> SchedulerConfig {
    let scheduler = &config.scheduler;
    SchedulerConfig {
        lease_timeout_s: scheduler.lease_timeout_s,
        min_shard_s: scheduler.min_shard_s,
        min_shard_overheads: scheduler.min_shard_overheads,
        uncertain_shard_overheads: scheduler.uncertain_shard_overheads,
        tail_fraction: scheduler.tail_fraction,
        max_attempts: scheduler.max_attempts,
        retries: scheduler.retries,
        infra_failures_to_bench: scheduler.infra_failures_to_bench,
        bench_s: scheduler.bench_s,
        max_shard_s: scheduler.max_shard_s,
        split_running_leases: scheduler.split_running_leases,
        flaky_fails_build: config.gate.flaky_fails_build,
        shard_sizing: match scheduler.shard_sizing {
            ShardSizingName::Fitted => ShardSizing::Fitted,
            ShardSizingName::Finer => ShardSizing::Finer,
        },
        straggler_copies: scheduler.straggler_copies,
        ..SchedulerConfig::default()
    }
}

impl Farm {
    /// A farm over `store` on the wall clock. Call [`Farm::recover`] before serving.
    pub fn new(config: Config, store: Store) -> Result<Farm, FarmError> {
        Farm::with_clock(config, store, Arc::new(SystemClock))
    }

    /// What the farm has counted since it started.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// A farm over `store` reading the time from `clock`.
    pub fn with_clock(config: Config, store: Store, clock: Arc<dyn Clock>) -> Result<Farm, FarmError> {
        let tagger = Tagger::new(&config.tags).map_err(|error| FarmError::Task(error.to_string()))?;
        let gate = match store.gate(&config.repository.branch)? {
            Some(gate) => gate,
            None => gate::new_gate(&config.repository.branch, &config.gate.fix_marker),
        };
        let core = Core {
            scheduler: Scheduler::new(scheduler_config(&config)),
            running: BTreeMap::new(),
            workers: BTreeMap::new(),
            worker_by_name: HashMap::new(),
            flakes: Flakes::load(&store)?,
            preparations: Preparations::default(),
            health: Health::default(),
            gate,
            // A probe a previous master left running is resumed with the other builds.
            bisections: store.bisections()?.into_iter().map(|bisection| (bisection.build_id, bisection)).collect(),
        };
        let published_gate = tokio::sync::watch::channel(Farm::gate_view(&core)).0;
        Ok(Farm {
            published_gate,
            metrics: crate::metrics::Metrics::default(),
            mirror: Mirror::new(&config),
            tagger,
            core: Mutex::new(core),
            work_available: Notify::new(),
            build_wanted: Notify::new(),
            push_wanted: Notify::new(),
            events: tokio::sync::broadcast::channel(EVENT_BACKLOG).0,
            closing: tokio::sync::watch::channel(false).0,
            poll_lock: tokio::sync::Mutex::new(()),
            queueing: std::sync::Mutex::new(()),
            checkout_lock: Mutex::new(()),
            verdicts_unflushed: AtomicBool::new(false),
            commits: GroupCommit::default(),
            workers_turn: tokio::sync::Mutex::new(()),
            suites: Mutex::default(),
            clock,
            config,
            store,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Now, by the farm's clock (Unix seconds).
    pub fn now(&self) -> f64 {
        self.clock.now()
    }

    fn core(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes every write so far durable, on a blocking thread (never under the lock).
    /// Concurrent callers share one flush ([`GroupCommit`]): none returns before a flush
    /// that started after its call has finished. A flush that has not come back after
    /// [`FLUSH_TIMEOUT`] fails the store: what it was to make durable is never
    /// acknowledged, and nothing after it is written.
    pub async fn flush(self: &Arc<Self>) -> Result<(), FarmError> {
        let ticket = self.commits.taken.fetch_add(1, Ordering::SeqCst) + 1;
        let _turn = self.commits.turn.lock().await;
        if self.commits.durable.load(Ordering::SeqCst) >= ticket {
            return Ok(());
        }
        // Requests ready to run on this thread record their writes and take their tickets
        // first, so that this flush covers them too (fewer, larger flushes under load).
        tokio::task::yield_now().await;
        // Every ticket taken so far was taken after its writes: this flush covers them.
        let covered = self.commits.taken.load(Ordering::SeqCst);
        self.commits.flushes.fetch_add(1, Ordering::Relaxed);
        self.flush_store().await?;
        self.commits.durable.fetch_max(covered, Ordering::SeqCst);
        Ok(())
    }

    async fn flush_store(self: &Arc<Self>) -> Result<(), FarmError> {
        let farm = Arc::clone(self);
        match tokio::time::timeout(FLUSH_TIMEOUT, blocking(move || farm.store.flush())).await {
            Ok(flushed) => Ok(flushed??),
            Err(_) => {
                let reason = format!("a flush did not finish within {} s", FLUSH_TIMEOUT.as_secs());
                self.store.fail(&reason);
                Err(FarmError::Store(StoreError::Failed(reason)))
            }
        }
    }

    /// Runs `change`, a request's change to the farm, in its turn. The requests of workers
    /// (leases, results, heartbeats, finishes) take their turns here before the farm's lock:
    /// one waiting for another's turn yields its thread to other requests instead of
    /// parking it on the lock. Without turns, a lease planning a fitted split (milliseconds
    /// under the lock) and the requests queued behind it could hold every runtime thread,
    /// and the gate, which needs no lock, waited for them (issue #16).
    pub async fn in_turn<T>(&self, change: impl FnOnce() -> T) -> T {
        let _turn = self.workers_turn.lock().await;
        change()
    }

    /// Flushes of the store so far (each covers every request that waited for it).
    pub fn store_flushes(&self) -> u64 {
        self.commits.flushes.load(Ordering::Relaxed)
    }

    /// Makes durable, if there are any, the started and ended builds and named culprits
    /// not yet flushed. Every path that may end a build calls it after releasing the lock (the
    /// results, finish and cancel handlers flush anyway).
    pub async fn flush_verdicts(self: &Arc<Self>) -> Result<(), FarmError> {
        if self.verdicts_unflushed.swap(false, Ordering::SeqCst) {
            self.flush().await?;
        }
        Ok(())
    }

    /// Notes that a verdict (a build's end, a culprit) or a build's start waits for a flush.
    fn unflushed_verdict(&self) {
        self.verdicts_unflushed.store(true, Ordering::SeqCst);
    }

    fn save_gate(&self, core: &Core) -> Result<(), FarmError> {
        self.store.put_gate(&core.gate)?;
        self.gate_changed(core);
        Ok(())
    }

    /// The gate or the farm's health changed: the gate's readers and the page see it.
    fn gate_changed(&self, core: &Core) {
        let view = Farm::gate_view(core);
        self.published_gate.send_replace(view.clone());
        self.publish(FarmEvent::Gate(view));
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

    /// Writes a shard whole: when it is leased, or its tests change.
    fn put_shard(&self, build_id: u64, shard: &ShardView) -> Result<(), FarmError> {
        self.store.put_shard(build_id, shard)?;
        self.publish(FarmEvent::Shard(ShardEvent { build_id, shard: shard.without_test_ids() }));
        Ok(())
    }

    /// Writes what changed in a shard while its tests did not (it ended, was cancelled).
    fn put_shard_state(&self, build_id: u64, shard: &ShardView) -> Result<(), FarmError> {
        let state = shard.without_test_ids();
        self.store.put_shard_state(build_id, &state)?;
        self.publish(FarmEvent::Shard(ShardEvent { build_id, shard: state }));
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
}

/// Counts a stored result in a build's summary; `fails_build`: list it among the failures
/// (the first [`LISTED_FAILURES`]), as a flaky one among the flaky.
fn add_to_summary(summary: &mut BuildSummary, result: &TestResultView, fails_build: bool) {
    summary.counts.add_result(result);
    if fails_build && summary.failed_tests.len() < LISTED_FAILURES {
        summary.failed_tests.push(result.test_id.clone());
    }
    if result.flaky && summary.flaky_tests.len() < LISTED_FAILURES {
        summary.flaky_tests.push(result.test_id.clone());
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

#[cfg(test)]
mod tests;
