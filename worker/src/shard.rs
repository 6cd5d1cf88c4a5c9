//! Running one leased shard: check the revision out, write the test ids to a file, start
//! the shard command (argv from the lease's runner adapter, never a shell), heartbeat
//! while it runs, read its results as they appear (nextest's event stream on its standard
//! output, test by test; the JUnit report as it grows) and stream each newly finished
//! test to the master, and when it exits report every leased test the runner never mentioned
//! as an error. The master is never told a test passed unless the report says so.
//!
//! The master may withdraw the tests a running shard has not started (an idle worker runs
//! them; this one is running late). Its answers to results and heartbeats say which: the
//! worker stops the runner once every test it keeps is reported, and reports nothing for
//! the withdrawn ones. With straggler copies the master may withdraw the test the shard is
//! running, too (a backup copy of it on another worker reported first, or this shard is
//! that copy and the original did): a cold runner is stopped at once, as it is then
//! running nothing the shard keeps; a warm one is killed and replaced, since a test cannot
//! be stopped inside its pytest process.
//!
//! A warm lease (the pytest runner with `[suite] warm`) runs in the worker's [`WarmRunners`]:
//! one pytest process per revision, kept between shards, fed the shard one test at a time
//! (so a withdrawn test is simply never fed) and reporting each test as it ends. Such a
//! lease may hold a dependency chain whole ([`Lease::waits_on`]): a test whose prerequisite
//! in the shard did not pass is never fed, and is reported `skipped` naming it.
//!
//! A runner killed by a signal (a segfault, an abort, the OOM killer) is the
//! infrastructure failing, not its tests: the unmentioned tests are not reported and the
//! shard ends as an infrastructure error, so the master runs them again (elsewhere, up to
//! `max_attempts`, then the build ends in error rather than red).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use greenlight_shared::api::{Lease, ShardOutcome, TestReport, TestStatus, WarmUp};
use greenlight_shared::runner::{Runner, ShardPaths};

use crate::checkout::{Checkout, CheckoutError};
use crate::client::{Client, Retry};
use crate::junit::{JunitCase, candidate_ids, parse_cases};
use crate::libtest::{StreamedTest, binary_fit, parse_events};
use crate::warm::{WarmError, WarmRunner};
use tokio::task::JoinHandle;

/// How often the growing JUnit report is read.
const REPORT_POLL: Duration = Duration::from_millis(250);
/// How often a warm runner's running test is checked for being withdrawn (its other copy
/// reported first).
const STOP_POLL: Duration = Duration::from_millis(100);
/// How much of the runner's output is attached to tests it never reported.
const OUTPUT_TAIL_BYTES: usize = 4096;

/// Files of the shard being run.
struct ShardFiles {
    dir: PathBuf,
    ids: PathBuf,
    junit: PathBuf,
    log: PathBuf,
}

impl ShardFiles {
    fn create(workdir: &Path, lease: &Lease) -> std::io::Result<ShardFiles> {
        let dir = workdir.join("shard");
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        let files = ShardFiles {
            ids: dir.join("ids.txt"),
            junit: dir.join("junit.xml"),
            log: dir.join("output.log"),
            dir: dir.clone(),
        };
        let mut ids = lease.tests.join("\n");
        ids.push('\n');
        std::fs::write(&files.ids, ids)?;
        for (name, contents) in lease.runner.shard_files() {
            std::fs::write(dir.join(name), contents)?;
        }
        Ok(files)
    }

    fn paths(&self) -> ShardPaths<'_> {
        ShardPaths { ids_file: &self.ids, junit: &self.junit, shard_dir: &self.dir }
    }
}

/// Finds which leased test a JUnit case reports: by the runner's exact naming when it
/// has one (pytest, nextest), else by the forms a generic runner may use.
struct TestIndex<'a> {
    by_id: HashMap<&'a str, usize>,
    by_junit_key: HashMap<(String, String), Vec<usize>>,
    /// nextest ids (`<binary id> <test name>`) by test name: (position, binary id).
    by_test_name: HashMap<&'a str, Vec<(usize, &'a str)>>,
}

impl<'a> TestIndex<'a> {
    fn new(runner: &Runner, tests: &'a [String]) -> TestIndex<'a> {
        let mut by_junit_key: HashMap<(String, String), Vec<usize>> = HashMap::new();
        for (position, id) in tests.iter().enumerate() {
            if let Some(key) = runner.junit_key(id) {
                by_junit_key.entry(key).or_default().push(position);
            }
        }
        let by_id = tests.iter().enumerate().map(|(position, id)| (id.as_str(), position)).collect();
        let mut by_test_name: HashMap<&'a str, Vec<(usize, &'a str)>> = HashMap::new();
        if matches!(runner, Runner::Nextest { .. }) {
            for (position, id) in tests.iter().enumerate() {
                if let Some((binary_id, name)) = id.split_once(' ') {
                    by_test_name.entry(name).or_default().push((position, binary_id));
                }
            }
        }
        TestIndex { by_id, by_junit_key, by_test_name }
    }

    /// The leased test a streamed nextest event reports: same test name, the binary id
    /// that fits the stream's binary best, one not yet reported first.
    fn find_streamed(&self, test: &StreamedTest, reported: &HashSet<usize>) -> Option<usize> {
        let candidates = self.by_test_name.get(test.name.as_str())?;
        candidates
            .iter()
            .map(|&(position, binary_id)| (position, binary_fit(binary_id, &test.binary)))
            .filter(|&(_, fit)| fit > 0)
            .max_by_key(|&(position, fit)| (!reported.contains(&position), fit, std::cmp::Reverse(position)))
            .map(|(position, _)| position)
    }

    /// The first leased test not yet reported that `case` names.
    fn find(&self, case: &JunitCase, reported: &HashSet<usize>) -> Option<usize> {
        let key = (case.classname.clone().unwrap_or_default(), case.name.clone());
        if let Some(positions) = self.by_junit_key.get(&key) {
            // Two ids with the same JUnit name (rare) are taken in order.
            return positions
                .iter()
                .copied()
                .find(|position| !reported.contains(position))
                .or(positions.first().copied());
        }
        candidate_ids(case).iter().find_map(|candidate| self.by_id.get(candidate.as_str()).copied())
    }
}

/// Test ids the master withdrew from the running lease, as its answers said.
#[derive(Debug, Clone, Default)]
struct Withdrawn(Arc<Mutex<HashSet<String>>>);

impl Withdrawn {
    fn is_empty(&self) -> bool {
        self.0.lock().expect("the withdrawn set is never poisoned").is_empty()
    }

    fn contains(&self, test: &str) -> bool {
        self.0.lock().expect("the withdrawn set is never poisoned").contains(test)
    }

    fn extend(&self, ids: Vec<String>) {
        if !ids.is_empty() {
            self.0.lock().expect("the withdrawn set is never poisoned").extend(ids);
        }
    }

    /// Positions of `tests` withdrawn.
    fn positions(&self, tests: &[String]) -> HashSet<usize> {
        let ids = self.0.lock().expect("the withdrawn set is never poisoned");
        if ids.is_empty() {
            return HashSet::new();
        }
        tests.iter().enumerate().filter(|(_, id)| ids.contains(id.as_str())).map(|(position, _)| position).collect()
    }
}

/// How long results are retried while the master is unreachable or answers 5xx (a full
/// disk): a master that refused them recorded nothing, so they are sent again.
const RESULTS_PATIENCE: Duration = Duration::from_secs(600);

/// Reports results, retrying while the master is unreachable or cannot record them now
/// (results are never dropped for a passing network fault or a disk full for a while).
async fn send_results(client: &Client, worker_id: u64, lease_id: u64, results: Vec<TestReport>, withdrawn: &Withdrawn) {
    let mut retry = Retry::new(RESULTS_PATIENCE);
    loop {
        match client.results(worker_id, lease_id, results.clone()).await {
            Ok(answer) => {
                withdrawn.extend(answer.withdrawn);
                tracing::debug!(
                    lease_id,
                    accepted = answer.accepted,
                    duplicates = answer.duplicates,
                    stale = answer.stale,
                    "results sent"
                );
                return;
            }
            Err(error) => {
                tracing::warn!(lease_id, %error, "reporting results failed");
                if !retry.again(&error).await {
                    tracing::error!(lease_id, %error, "gave up reporting results");
                    return;
                }
            }
        }
    }
}

/// Where a running shard's results appear: the runner's event stream (nextest) as each
/// test ends, and its JUnit report (as it grows, or at exit), which also fills in what a
/// stream did not say (an older runner, a stream cut short).
struct ResultSources<'a> {
    junit: &'a Path,
    events: Option<&'a Path>,
}

impl ResultSources<'_> {
    fn new_results(&self, index: &TestIndex<'_>, reported: &mut HashSet<usize>, tests: &[String]) -> Vec<TestReport> {
        let mut fresh = match self.events {
            Some(events) => new_streamed_results(events, index, reported, tests),
            None => Vec::new(),
        };
        fresh.extend(new_results(self.junit, index, reported, tests));
        fresh
    }
}

/// What the tests of a runner that runs several at once (nextest) cost their shard: each
/// test's duration scaled by the shard's elapsed time over the durations reported so far,
/// so that the walls add up to the runner's time, not to the threads' time added up. A
/// runner that runs one test at a time is left alone (the ratio is at least 1: its
/// start-up, not parallelism).
#[derive(Debug, Default)]
struct ParallelShare {
    reported_s: f64,
}

impl ParallelShare {
    fn share(&mut self, results: &mut [TestReport], elapsed_s: f64) {
        self.reported_s += results.iter().map(|result| result.duration_s).sum::<f64>();
        if self.reported_s <= 0.0 || elapsed_s >= self.reported_s {
            return;
        }
        let ratio = elapsed_s / self.reported_s;
        for result in results {
            result.wall_s = Some(result.duration_s * ratio);
        }
    }
}

/// Matches the stream's complete test events to leased tests not yet reported.
fn new_streamed_results(
    events: &Path,
    index: &TestIndex<'_>,
    reported: &mut HashSet<usize>,
    tests: &[String],
) -> Vec<TestReport> {
    let Ok(bytes) = std::fs::read(events) else { return Vec::new() };
    let mut fresh = Vec::new();
    for test in parse_events(&bytes) {
        let Some(position) = index.find_streamed(&test, reported) else { continue };
        if reported.insert(position) {
            fresh.push(TestReport {
                test_id: tests[position].clone(),
                status: test.status,
                duration_s: test.duration_s,
                wall_s: None,
                output: test.output,
            });
        }
    }
    fresh
}

/// Matches the report's complete cases to leased tests not yet reported.
fn new_results(
    junit: &Path,
    index: &TestIndex<'_>,
    reported: &mut HashSet<usize>,
    tests: &[String],
) -> Vec<TestReport> {
    let Ok(bytes) = std::fs::read(junit) else { return Vec::new() };
    let mut fresh = Vec::new();
    for case in parse_cases(&bytes) {
        let Some(position) = index.find(&case, reported) else {
            continue;
        };
        if reported.insert(position) {
            fresh.push(TestReport {
                test_id: tests[position].clone(),
                status: case.status,
                duration_s: case.time_s,
                wall_s: None,
                output: case.output,
            });
        }
    }
    fresh
}

fn output_tail(log: &Path) -> String {
    let bytes = std::fs::read(log).unwrap_or_default();
    let start = bytes.len().saturating_sub(OUTPUT_TAIL_BYTES);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// A shard the infrastructure could not run: its unreported tests go back to the queue.
fn infra(message: String) -> ShardRun {
    tracing::warn!(%message, "shard could not run");
    ShardRun { outcome: ShardOutcome::InfraError { message }, runner_wall_s: None }
}

/// A warm lease being run: fed to the kept runner one test at a time.
struct WarmShard<'a> {
    client: &'a Client,
    worker_id: u64,
    lease: &'a Lease,
    active: &'a AtomicBool,
    withdrawn: &'a Withdrawn,
}

impl WarmShard<'_> {
    async fn send(&self, results: &mut Vec<TestReport>) {
        if !results.is_empty() {
            let batch = std::mem::take(results);
            send_results(self.client, self.worker_id, self.lease.lease_id, batch, self.withdrawn).await;
        }
    }

    /// Returns once the master no longer wants `test`'s result: it was withdrawn (the
    /// answers to heartbeats and results are read as they come; this looks every
    /// [`STOP_POLL`]), or the lease was taken back.
    async fn stop_asked(&self, test: &str) {
        while !self.withdrawn.contains(test) && self.active.load(Ordering::SeqCst) {
            tokio::time::sleep(STOP_POLL).await;
        }
    }

    async fn run(&self, warm: &mut WarmRunners, python: &str, args: &[String], dir: &Path) -> ShardRun {
        let lease = self.lease;
        let started = Instant::now();
        let mut since = started;
        let mut pending: Vec<TestReport> = Vec::new();
        let mut last_sent = Instant::now();
        // How each test of the shard ended so far, for the tests waiting on them.
        let mut outcomes: HashMap<&str, TestStatus> = HashMap::new();
        for (position, test) in lease.tests.iter().enumerate() {
            if !self.active.load(Ordering::SeqCst) {
                // The master took the lease back: what is reported stands, the rest is its.
                self.send(&mut pending).await;
                return ShardRun { outcome: ShardOutcome::Completed, runner_wall_s: None };
            }
            if self.withdrawn.contains(test) {
                continue;
            }
            if let Some(held_back) = held_back(lease, test, &outcomes) {
                // A prerequisite in this shard did not pass: the test is not run.
                outcomes.insert(test, TestStatus::Skipped);
                pending.push(held_back);
                continue;
            }
            let runner = match warm.runner(&lease.revision, python, args, dir, &lease.env).await {
                Ok(runner) => runner,
                Err(WarmError::Collection { status, output }) => {
                    // pytest cannot even collect this revision (a conftest that does not
                    // import, a usage error): every test it keeps and has not run errs, as a
                    // cold run's would.
                    for test in lease.tests[position..].iter().filter(|test| !self.withdrawn.contains(test)) {
                        pending.push(TestReport {
                            test_id: test.clone(),
                            status: TestStatus::Error,
                            duration_s: 0.0,
                            wall_s: None,
                            output: Some(format!("pytest exited with {status} before it had collected:\n{output}")),
                        });
                    }
                    self.send(&mut pending).await;
                    return ShardRun { outcome: ShardOutcome::Completed, runner_wall_s: None };
                }
                Err(error) => {
                    self.send(&mut pending).await;
                    return infra(format!("cannot start the warm pytest runner: {error}"));
                }
            };
            // The test's share of the shard: from the end of the one before it (or the
            // runner being ready) to its own end, the worker's round trip included.
            let from = since.max(runner.ready_at());
            let mut record = None;
            // The test fed after this one, so that its module stays up if they share it;
            // after the shard's last test everything but the session is torn down.
            let next = lease.tests[position + 1..].iter().find(|later| !self.withdrawn.contains(later));
            let ran = {
                let run =
                    runner.run(std::slice::from_ref(test), next.map(String::as_str), |ended| record = Some(ended));
                tokio::pin!(run);
                tokio::select! {
                    ran = &mut run => Some(ran),
                    () = self.stop_asked(test) => None,
                }
            };
            let Some(ran) = ran else {
                // Withdrawn while it ran: a copy of it on another worker reported first
                // (straggler copies); or the lease is no longer this worker's (that result
                // ended the build). A test cannot be stopped inside its pytest process, so
                // the runner goes with it (killed as a group) and a new one runs the rest.
                warm.forget();
                tracing::info!(test_id = %test, "stopped the running test: the master no longer wants its result");
                since = Instant::now();
                continue;
            };
            let ended_at = Instant::now();
            since = ended_at;
            let reported = record.is_some();
            if let Some(ended) = record {
                outcomes.insert(test, ended.status);
                pending.push(TestReport {
                    test_id: test.clone(),
                    status: ended.status,
                    duration_s: ended.duration_s,
                    wall_s: Some(ended_at.duration_since(from).as_secs_f64()),
                    output: ended.output,
                });
            }
            match ran {
                Ok(end) => {
                    for error in end.teardown_errors {
                        tracing::warn!(nodes = ?error.nodes, output = %error.output, "a fixture failed to tear down");
                    }
                }
                Err(WarmError::Died { test: Some(dying), exit_code: Some(code), output, .. }) => {
                    // The test ended its process by itself (`os._exit`): its error, as a
                    // cold runner's exit would be. A new runner runs the rest.
                    warm.forget();
                    tracing::warn!(test_id = %dying, code, "a test ended the warm runner; starting another");
                    if !reported {
                        outcomes.insert(test, TestStatus::Error);
                        pending.push(TestReport {
                            test_id: test.clone(),
                            status: TestStatus::Error,
                            duration_s: 0.0,
                            wall_s: None,
                            output: Some(format!(
                                "the test ended its pytest process with exit code {code}; last output:\n{output}"
                            )),
                        });
                    }
                }
                Err(error) => {
                    // A signal (a segfault, the OOM killer) or a broken channel: the
                    // infrastructure. Its unreported tests run again, elsewhere first.
                    warm.forget();
                    self.send(&mut pending).await;
                    return infra(format!("the warm pytest runner failed: {error}"));
                }
            }
            if last_sent.elapsed() >= REPORT_POLL {
                self.send(&mut pending).await;
                last_sent = Instant::now();
            }
        }
        self.send(&mut pending).await;
        // This shard's runner time: its tests, plus the collection when it started the runner.
        let runner_wall_s = self.withdrawn.is_empty().then(|| started.elapsed().as_secs_f64());
        ShardRun { outcome: ShardOutcome::Completed, runner_wall_s }
    }
}

/// The report of `test` held back, `skipped` naming its first prerequisite in `lease`
/// ([`Lease::waits_on`]) that did not pass (its status in `outcomes`, the tests of the
/// shard that ended); `None` when it may run: each of them passed.
fn held_back(lease: &Lease, test: &str, outcomes: &HashMap<&str, TestStatus>) -> Option<TestReport> {
    let waits = lease.waits_on.iter().find(|waits| waits.test_id == test)?;
    let blocker = waits
        .depends_on
        .iter()
        .find(|prerequisite| outcomes.get(prerequisite.as_str()) != Some(&TestStatus::Passed))?;
    let how = outcomes.get(blocker.as_str()).map_or("did not run", |status| status.as_str());
    Some(TestReport {
        test_id: test.to_owned(),
        status: TestStatus::Skipped,
        duration_s: 0.0,
        wall_s: None,
        output: Some(format!("dependency {blocker:?} {how}")),
    })
}

/// How a shard went: its outcome, and how long its runner ran (when it ran).
#[derive(Debug, Clone)]
pub struct ShardRun {
    /// The outcome the master is told.
    pub outcome: ShardOutcome,
    /// Seconds from the runner's start to its exit.
    pub runner_wall_s: Option<f64>,
}

/// How long a warm runner may take to tear its fixtures down before it is killed.
const WARM_TEARDOWN: Duration = Duration::from_secs(60);

/// The warm runner a worker keeps between the shards of one revision, if any.
#[derive(Default)]
pub struct WarmRunners {
    slot: Option<WarmSlot>,
    /// The revision last warmed up ahead of its shards, started or not: the master does
    /// not ask for it again.
    warmed_up: Option<String>,
}

struct WarmSlot {
    revision: String,
    args: Vec<String>,
    held: Held,
}

enum Held {
    /// Collected and waiting for shards.
    Ready(Box<WarmRunner>),
    /// Collecting in the background, started by a warm-up.
    Starting(JoinHandle<Result<WarmRunner, WarmError>>),
}

impl WarmRunners {
    /// The revision the kept runner serves, or the last one warmed up (what a lease
    /// request tells the master).
    pub fn warm_revision(&self) -> Option<String> {
        self.slot.as_ref().map(|slot| slot.revision.clone()).or_else(|| self.warmed_up.clone())
    }

    /// Tears the kept runner down (its module and session fixtures' teardown runs) unless
    /// it serves `keep`, a revision and its pytest arguments. One still collecting is
    /// killed.
    pub async fn retire_unless(&mut self, keep: Option<(&str, &[String])>) {
        let serves =
            |slot: &WarmSlot| keep.is_some_and(|(revision, args)| slot.revision == revision && slot.args == args);
        if self.slot.as_ref().is_none_or(serves) {
            return;
        }
        let Some(slot) = self.slot.take() else { return };
        let runner = match slot.held {
            Held::Ready(runner) => *runner,
            Held::Starting(start) => {
                tracing::info!(revision = %slot.revision, "stopping the warm runner still collecting");
                start.abort();
                // Dropping the start kills the runner: wait for it before the checkout moves.
                let _ = start.await;
                return;
            }
        };
        tracing::info!(revision = %slot.revision, pid = runner.pid(), "retiring the warm runner");
        match runner.shutdown(WARM_TEARDOWN).await {
            Ok(errors) => {
                for error in errors {
                    tracing::warn!(nodes = ?error.nodes, output = %error.output, "a fixture failed to tear down");
                }
            }
            Err(error) => tracing::warn!(%error, "the warm runner did not end cleanly"),
        }
    }

    /// The runner for `revision` in `dir`: the one kept (waiting for a warm-up's
    /// collection to end), or a new one, started and collected now.
    pub(crate) async fn runner(
        &mut self,
        revision: &str,
        python: &str,
        args: &[String],
        dir: &Path,
        env: &[(String, String)],
    ) -> Result<&mut WarmRunner, WarmError> {
        if let Some(WarmSlot { held: Held::Starting(start), .. }) = &mut self.slot {
            let started = match start.await {
                Ok(started) => started,
                Err(error) => Err(WarmError::Prepare(std::io::Error::other(format!("the warm-up task: {error}")))),
            };
            match started {
                Ok(runner) => {
                    tracing::info!(pid = runner.pid(), "the warmed-up runner takes its first shard");
                    self.slot.as_mut().expect("the slot was just read").held = Held::Ready(Box::new(runner));
                }
                Err(error) => {
                    // Told by this lease, as a start now would be.
                    self.slot = None;
                    return Err(error);
                }
            }
        }
        if self.slot.is_none() {
            let session = greenlight_shared::runner::pytest_session_args(args);
            let runner = WarmRunner::start(python, &session, dir, env).await?;
            self.slot = Some(WarmSlot {
                revision: revision.to_owned(),
                args: args.to_vec(),
                held: Held::Ready(Box::new(runner)),
            });
        }
        match &mut self.slot.as_mut().expect("a runner was just kept").held {
            Held::Ready(runner) => Ok(&mut **runner),
            Held::Starting(_) => unreachable!("a starting runner was waited for"),
        }
    }

    /// Warms `job`'s revision up while another worker lists it: checks it out, runs its
    /// setup, and starts its pytest runner collecting in the background. The next lease of
    /// the revision takes the runner (waiting for the collection if it is not done); a
    /// lease or preparation of another revision stops it. Failures are only logged: the
    /// first lease starts the runner again and tells its error.
    pub async fn warm_up(&mut self, workdir: &Path, job: &WarmUp) {
        self.warmed_up = Some(job.revision.clone());
        let Runner::Pytest { python, args } = &job.runner else {
            return;
        };
        self.retire_unless(Some((&job.revision, args))).await;
        if self.slot.is_some() {
            return;
        }
        let checkout =
            match check_out(workdir, &job.repository, &job.revision, &job.runner, &job.setup_command, &job.env).await {
                Ok(checkout) => checkout,
                Err(error) => {
                    tracing::warn!(revision = %job.revision, %error, "cannot warm the revision up");
                    return;
                }
            };
        tracing::info!(revision = %job.revision, "warming up: the runner collects while the revision is listed");
        let session = greenlight_shared::runner::pytest_session_args(args);
        let (python, dir, env) = (python.clone(), checkout.dir().to_owned(), job.env.clone());
        let start = tokio::spawn(async move { WarmRunner::start(&python, &session, &dir, &env).await });
        self.slot = Some(WarmSlot { revision: job.revision.clone(), args: args.clone(), held: Held::Starting(start) });
    }

    /// Forgets a runner that died (it is dead for good).
    fn forget(&mut self) {
        self.slot = None;
    }
}

/// Runs a lease to its end and says how it went.
#[tracing::instrument(skip_all, fields(lease_id = lease.lease_id, build_id = lease.build_id, tests = lease.tests.len()))]
pub async fn run_shard(
    client: &Client,
    worker_id: u64,
    workdir: &Path,
    lease: &Lease,
    warm: &mut WarmRunners,
) -> ShardRun {
    let active = Arc::new(AtomicBool::new(true));
    let withdrawn = Withdrawn::default();
    let heartbeat = tokio::spawn(heartbeat_loop(
        client.clone(),
        worker_id,
        lease.lease_id,
        lease.heartbeat_interval_s,
        Arc::clone(&active),
        withdrawn.clone(),
    ));
    let outcome = run_shard_inner(client, worker_id, workdir, lease, &active, &withdrawn, warm).await;
    heartbeat.abort();
    outcome
}

async fn heartbeat_loop(
    client: Client,
    worker_id: u64,
    lease_id: u64,
    interval_s: f64,
    active: Arc<AtomicBool>,
    withdrawn: Withdrawn,
) {
    let interval = Duration::from_secs_f64(interval_s.clamp(0.05, 3600.0));
    loop {
        tokio::time::sleep(interval).await;
        match client.heartbeat(worker_id, lease_id).await {
            Ok(answer) if answer.active => withdrawn.extend(answer.withdrawn),
            Ok(_) => {
                tracing::warn!(lease_id, "the master took the lease back; stopping the shard");
                active.store(false, Ordering::SeqCst);
                return;
            }
            Err(error) => tracing::warn!(lease_id, %error, "heartbeat failed"),
        }
    }
}

/// The worker's checkout at `revision`, set up (nothing to do if it already is). The
/// runner's archive step (nextest) is left out: the archive comes from the master
/// ([`crate::prepare::ensure_archive`]).
pub(crate) async fn check_out(
    workdir: &Path,
    repository: &str,
    revision: &str,
    runner: &Runner,
    setup_command: &[String],
    env: &[(String, String)],
) -> Result<Checkout, CheckoutError> {
    let checkout = Checkout::new(workdir);
    let prepared = {
        let (checkout, repository, revision, runner, setup_command, env) = (
            checkout.clone(),
            repository.to_owned(),
            revision.to_owned(),
            runner.clone(),
            setup_command.to_vec(),
            env.to_vec(),
        );
        tokio::task::spawn_blocking(move || {
            let mut setup = runner.setup_argv(&setup_command);
            if let Some(archive) = runner.archive_argv() {
                setup.retain(|step| *step != archive);
            }
            checkout.prepare(&repository, &revision, &setup, &env, runner.kept_across_revisions())
        })
        .await
    };
    match prepared {
        Ok(Ok(())) => Ok(checkout),
        Ok(Err(error)) => Err(error),
        Err(error) => Err(CheckoutError::Io {
            path: workdir.to_owned(),
            source: std::io::Error::other(format!("checkout task: {error}")),
        }),
    }
}

async fn run_shard_inner(
    client: &Client,
    worker_id: u64,
    workdir: &Path,
    lease: &Lease,
    active: &AtomicBool,
    withdrawn: &Withdrawn,
    warm: &mut WarmRunners,
) -> ShardRun {
    let warm_pytest = match &lease.runner {
        Runner::Pytest { python, args } if lease.warm => Some((python.as_str(), args.as_slice())),
        _ => None,
    };
    // A runner of another revision goes before the checkout changes under it.
    warm.retire_unless(warm_pytest.map(|(_, args)| (lease.revision.as_str(), args))).await;
    let checkout =
        match check_out(workdir, &lease.repository, &lease.revision, &lease.runner, &lease.setup_command, &lease.env)
            .await
        {
            Ok(checkout) => checkout,
            Err(error) => return infra(format!("checkout of {}: {error}", lease.revision)),
        };
    if lease.runner.archive_argv().is_some()
        && let Err(error) =
            crate::prepare::ensure_archive(client, workdir, &checkout, &lease.runner, &lease.revision, &lease.env).await
    {
        return infra(format!("the archive of {}: {error}", lease.revision));
    }
    if let Err(error) =
        crate::prepare::ensure_extracted(workdir, &checkout, &lease.runner, &lease.revision, &lease.env).await
    {
        return infra(format!("the archive of {}: {error}", lease.revision));
    }
    if let Some((python, args)) = warm_pytest {
        let runner = WarmShard { client, worker_id, lease, active, withdrawn };
        return runner.run(warm, python, args, checkout.dir()).await;
    }
    let files = match ShardFiles::create(workdir, lease) {
        Ok(files) => files,
        Err(error) => return infra(format!("shard files: {error}")),
    };
    let argv = lease.runner.shard_argv(&lease.run_command, &lease.tests, &files.paths(), &lease.revision);
    let junit = lease.runner.junit_path(&files.paths(), checkout.dir());
    // A report left by an earlier shard must not be read as this one's.
    if junit != files.junit
        && let Err(error) = std::fs::remove_file(&junit)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        return infra(format!("stale report {}: {error}", junit.display()));
    }
    let Some((program, arguments)) = argv.split_first() else { return infra("the shard command is empty".into()) };
    let log = match std::fs::File::create(&files.log).and_then(|file| Ok((file.try_clone()?, file))) {
        Ok(pair) => pair,
        Err(error) => return infra(format!("shard log: {error}")),
    };
    // A runner that streams its events writes them on its standard output.
    let events = lease.runner.streams_events().then(|| files.dir.join("events.jsonl"));
    let stdout = match &events {
        Some(events) => match std::fs::File::create(events) {
            Ok(file) => file,
            Err(error) => return infra(format!("{}: {error}", events.display())),
        },
        None => log.0,
    };
    let sources = ResultSources { junit: &junit, events: events.as_deref() };
    let mut command = tokio::process::Command::new(program);
    command
        .args(arguments)
        .current_dir(checkout.dir())
        .envs(lease.env.iter().map(|(key, value)| (key, value)))
        .envs(lease.runner.shard_env().iter().map(|&(key, value)| (key, value)))
        .env("GREENLIGHT_BUILD_ID", lease.build_id.to_string())
        .env("GREENLIGHT_LEASE_ID", lease.lease_id.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(stdout)
        .stderr(log.1)
        .kill_on_drop(true)
        // Its own process group, so that stopping it stops whatever it started.
        .process_group(0);
    crate::process::die_with_parent(&mut command);
    let started = Instant::now();
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => return infra(format!("cannot start {program:?}: {error}")),
    };

    let index = TestIndex::new(&lease.runner, &lease.tests);
    let mut reported = HashSet::new();
    let mut parallel = ParallelShare::default();
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            () = tokio::time::sleep(REPORT_POLL) => {
                if !active.load(Ordering::SeqCst) {
                    crate::process::kill_group(&mut child).await;
                    // Every test reported, the build may have ended while the runner was
                    // still exiting: its time up to now is still a fair sample.
                    let done = reported.len() == lease.tests.len();
                    let runner_wall_s = done.then(|| started.elapsed().as_secs_f64());
                    return ShardRun { outcome: ShardOutcome::Completed, runner_wall_s };
                }
                let mut fresh = sources.new_results(&index, &mut reported, &lease.tests);
                if !fresh.is_empty() {
                    parallel.share(&mut fresh, started.elapsed().as_secs_f64());
                    send_results(client, worker_id, lease.lease_id, fresh, withdrawn).await;
                }
                let given_back = withdrawn.positions(&lease.tests);
                if !given_back.is_empty()
                    && (0..lease.tests.len()).all(|position| reported.contains(&position) || given_back.contains(&position))
                {
                    // Every test this shard keeps is reported; the rest run elsewhere.
                    crate::process::kill_group(&mut child).await;
                    tracing::info!(withdrawn = given_back.len(), "runner stopped after the tests the shard keeps");
                    let mut late: Vec<TestReport> = sources.new_results(&index, &mut reported, &lease.tests);
                    if !late.is_empty() {
                        parallel.share(&mut late, started.elapsed().as_secs_f64());
                        send_results(client, worker_id, lease.lease_id, late, withdrawn).await;
                    }
                    // A runner stopped part-way is no sample of the runner's own overhead.
                    return ShardRun { outcome: ShardOutcome::Completed, runner_wall_s: None };
                }
            }
        }
    };
    let runner_wall_s = started.elapsed().as_secs_f64();
    let exit = match &status {
        Ok(status) => status.to_string(),
        Err(error) => format!("unknown status ({error})"),
    };
    let mut last = sources.new_results(&index, &mut reported, &lease.tests);
    parallel.share(&mut last, runner_wall_s);
    // Withdrawn tests run elsewhere: not reporting them is no error of the runner.
    let given_back = withdrawn.positions(&lease.tests);
    let missing: Vec<usize> = (0..lease.tests.len())
        .filter(|position| !reported.contains(position) && !given_back.contains(position))
        .collect();
    let killed_by = status.as_ref().ok().and_then(std::os::unix::process::ExitStatusExt::signal);
    if let (Some(signal), false) = (killed_by, missing.is_empty()) {
        if !last.is_empty() {
            send_results(client, worker_id, lease.lease_id, last, withdrawn).await;
        }
        let tail = output_tail(&files.log);
        let message = format!(
            "the runner was killed by signal {signal} with {} of {} tests unreported (next: {:?}); last output:\n{tail}",
            missing.len(),
            lease.tests.len(),
            lease.tests[missing[0]]
        );
        tracing::warn!(signal, missing = missing.len(), "runner crashed; its unreported tests go back to the queue");
        return ShardRun { outcome: ShardOutcome::InfraError { message }, runner_wall_s: None };
    }
    if !missing.is_empty() {
        let tail = output_tail(&files.log);
        tracing::warn!(missing = missing.len(), %exit, "runner did not report every leased test");
        for position in missing {
            last.push(TestReport {
                test_id: lease.tests[position].clone(),
                status: TestStatus::Error,
                duration_s: 0.0,
                wall_s: None,
                output: Some(format!(
                    "not reported by the runner, which exited with {exit} (crashed or lost); last output:\n{tail}"
                )),
            });
        }
    }
    if !last.is_empty() {
        send_results(client, worker_id, lease.lease_id, last, withdrawn).await;
    }
    // Time spent on tests withdrawn meanwhile (their results stale) is no runner overhead.
    let runner_wall_s = withdrawn.is_empty().then_some(runner_wall_s);
    ShardRun { outcome: ShardOutcome::Completed, runner_wall_s }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_whose_prerequisite_in_its_shard_did_not_pass_is_held_back_and_reported_skipped() {
        let lease: Lease = serde_json::from_value(serde_json::json!({
            "lease_id": 1, "build_id": 1, "repository": "r", "revision": "v",
            "tests": ["a", "b", "c", "x"], "run_command": [], "heartbeat_interval_s": 5.0, "lease_timeout_s": 30.0,
            "warm": true,
            "waits_on": [{"test_id": "b", "depends_on": ["a"]}, {"test_id": "c", "depends_on": ["b"]}],
        }))
        .unwrap();
        let held = |outcomes: &[(&'static str, TestStatus)], test: &str| {
            let outcomes: HashMap<&str, TestStatus> = outcomes.iter().copied().collect();
            held_back(&lease, test, &outcomes).map(|report| (report.status, report.output.unwrap()))
        };
        let skipped = |reason: &str| Some((TestStatus::Skipped, reason.to_owned()));
        // a and x wait on nothing; b runs once a passed.
        assert_eq!(held(&[], "a"), None);
        assert_eq!(held(&[("a", TestStatus::Failed)], "x"), None);
        assert_eq!(held(&[("a", TestStatus::Passed)], "b"), None);
        // a failed: b is not run, nor c after it (b skipped).
        assert_eq!(held(&[("a", TestStatus::Failed)], "b"), skipped("dependency \"a\" failed"));
        assert_eq!(
            held(&[("a", TestStatus::Failed), ("b", TestStatus::Skipped)], "c"),
            skipped("dependency \"b\" skipped")
        );
        assert_eq!(held(&[("a", TestStatus::Error)], "b"), skipped("dependency \"a\" error"));
        // a never ran in this shard (its runner died before it): b is not run either.
        assert_eq!(held(&[], "b"), skipped("dependency \"a\" did not run"));
    }

    fn case(classname: Option<&str>, name: &str) -> JunitCase {
        JunitCase {
            name: name.to_owned(),
            classname: classname.map(str::to_owned),
            file: None,
            time_s: 0.0,
            status: TestStatus::Passed,
            output: None,
        }
    }

    #[test]
    fn tests_run_two_at_a_time_cost_their_shard_half_their_durations_and_serial_ones_are_left_alone() {
        let report = |duration_s: f64| TestReport {
            test_id: "t".to_owned(),
            status: TestStatus::Passed,
            duration_s,
            wall_s: None,
            output: None,
        };
        // Two threads: 4 s of tests reported 2 s into the shard, then 4 s more at 4 s.
        let mut parallel = ParallelShare::default();
        let mut first = vec![report(2.0), report(2.0)];
        parallel.share(&mut first, 2.0);
        let mut second = vec![report(1.0), report(3.0)];
        parallel.share(&mut second, 4.0);
        let walls: Vec<Option<f64>> = first.iter().chain(&second).map(|result| result.wall_s).collect();
        assert_eq!(walls, [Some(1.0), Some(1.0), Some(0.5), Some(1.5)]);
        // One at a time, with a start-up: the durations stand.
        let mut serial = ParallelShare::default();
        let mut results = vec![report(1.0), report(1.0)];
        serial.share(&mut results, 3.0);
        assert!(results.iter().all(|result| result.wall_s.is_none()), "{results:?}");
    }

    #[test]
    fn pytest_cases_map_back_to_exactly_the_leased_node_ids() {
        let tests: Vec<String> = [
            "pkg/test_a.py::test_x[a b]",
            "pkg/test_a.py::TestK::test_x[$(rm -rf) ; ::]",
            "pkg/test_a.py::test_ü[é]",
            "pkg/test_skip.py",
        ]
        .map(String::from)
        .to_vec();
        let runner = Runner::Pytest { python: "python3".into(), args: Vec::new() };
        let index = TestIndex::new(&runner, &tests);
        let none = HashSet::new();
        assert_eq!(index.find(&case(Some("pkg.test_a"), "test_x[a b]"), &none), Some(0));
        assert_eq!(index.find(&case(Some("pkg.test_a.TestK"), "test_x[$(rm -rf) ; ::]"), &none), Some(1));
        assert_eq!(index.find(&case(Some("pkg.test_a"), "test_ü[é]"), &none), Some(2));
        assert_eq!(index.find(&case(None, "pkg.test_skip"), &none), Some(3));
        assert_eq!(index.find(&case(Some("pkg.test_a"), "test_x[a  b]"), &none), None);
    }

    #[test]
    fn generic_cases_match_by_name_or_classname_forms() {
        let tests: Vec<String> = ["pkg.TestA.test_x", "plain"].map(String::from).to_vec();
        let index = TestIndex::new(&Runner::Command, &tests);
        let none = HashSet::new();
        assert_eq!(index.find(&case(Some("pkg.TestA"), "test_x"), &none), Some(0));
        assert_eq!(index.find(&case(None, "plain"), &none), Some(1));
        assert_eq!(index.find(&case(None, "other"), &none), None);
    }
}
