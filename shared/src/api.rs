//! Wire types of the HTTP API (`/api/v1/...`). Every body carries `version`; fields are
//! only ever added, with defaults, so an older worker keeps talking to a newer master.
//!
//! Ids travel as plain numbers (`worker_id`, `lease_id`, `build_id`) and test ids as
//! strings, exactly as in the suite file.

use serde::{Deserialize, Serialize};

fn api_version() -> u32 {
    crate::API_VERSION
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

/// The header every call of a worker carries after it chose its session: a secret the
/// worker process draws at start, keeps in memory only and presents with its
/// registration and with every later call (`Greenlight-Session: <session>`, 16 to 128
/// visible ASCII characters). A name belongs to the live registration that holds it; the
/// same session registering again (a lost answer, a restarted master) gets the same
/// registration back, another one is refused (`409 name_in_use`) until the holder has
/// been silent for a lease timeout, and calls for a registration without its session are
/// refused (`403 wrong_session`). An older worker sends none: its registration is taken
/// on the name alone, as before.
pub const SESSION_HEADER: &str = "greenlight-session";

/// `POST /api/v1/workers/register`: a worker introduces itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// Wire version.
    #[serde(default = "api_version")]
    pub version: u32,
    /// The worker's name, unique in the fleet (`--name`). It belongs to one live
    /// registration at a time (see [`SESSION_HEADER`]).
    pub name: String,
}

/// The master's answer to a registration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterResponse {
    /// Wire version.
    #[serde(default = "api_version")]
    pub version: u32,
    /// The id to use in every later call. A registration that took over the name of a
    /// silent one gets an id of its own, never the silent one's (nor its lease).
    pub worker_id: u64,
    /// How often to heartbeat a lease.
    pub heartbeat_interval_s: f64,
}

/// `POST /api/v1/workers/{worker_id}/lease`: long-poll for work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseRequest {
    /// Wire version.
    #[serde(default = "api_version")]
    pub version: u32,
    /// How long the master may hold the request before answering "no work".
    #[serde(default = "default_wait_s")]
    pub wait_s: f64,
    /// The worker can prepare a revision ([`Prepare`]). An older worker never says so and
    /// is only ever given shards.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub can_prepare: bool,
    /// The worker can start a warm runner before its first shard of a revision
    /// ([`WarmUp`]). An older worker never says so and is never asked to.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub can_warm_up: bool,
    /// The revision the worker's warm runner serves, is starting for, or last failed to
    /// start for: the master does not ask it to warm that revision up again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_revision: Option<String>,
    /// The worker holds back a test of a warm lease whose prerequisite in the lease did not
    /// pass ([`Lease::waits_on`]): it may be leased a dependency chain whole. An older
    /// worker never says so and is leased only tests whose dependencies passed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub can_hold_dependents: bool,
}

impl LeaseRequest {
    /// A request from a worker that can do everything this version knows (prepare a
    /// revision, warm a runner up, hold back dependents), holding a warm runner for
    /// `warm_revision`.
    pub fn current(wait_s: f64, warm_revision: Option<String>) -> LeaseRequest {
        LeaseRequest {
            version: api_version(),
            wait_s,
            can_prepare: true,
            can_warm_up: true,
            warm_revision,
            can_hold_dependents: true,
        }
    }
}

fn default_wait_s() -> f64 {
    20.0
}

/// The answer to a lease request: a lease, or none when the wait ran out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseResponse {
    /// Wire version.
    #[serde(default = "api_version")]
    pub version: u32,
    /// The shard to run, if there is one.
    pub lease: Option<Lease>,
    /// Instead of a shard: a revision to prepare (only to a worker that said it can).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepare: Option<Prepare>,
    /// Instead of a shard, while another worker prepares (lists) a revision: start the
    /// revision's warm runner now (only to a worker that said it can), so that its first
    /// shard finds the suite collected; the worker asks for work again at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_up: Option<WarmUp>,
}

/// A revision to warm up: check it out, run its setup, and start the warm runner
/// (`python -m pytest` with the runner's arguments collects the suite) in the background;
/// the worker's next lease of the revision runs in that runner. Nothing is reported: a
/// runner that fails to start is started again, and its error told, by the first lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WarmUp {
    /// Where to fetch the revision from.
    pub repository: String,
    /// The revision.
    pub revision: String,
    /// The configured setup (argv), run before the runner's own setup.
    #[serde(default)]
    pub setup_command: Vec<String>,
    /// Environment variables for the setup and the runner.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// The runner adapter (pytest).
    pub runner: crate::runner::Runner,
}

/// A revision to prepare, handed to one worker at a time: check it out, run the setup
/// (for nextest: build the test archive), list the suite there, upload the archive
/// (`PUT /api/v1/prepares/{prepare_id}/archive?worker_id=N`, when `upload_archive`) and
/// then the listing (`POST /api/v1/prepares/{prepare_id}/listing`). Heartbeats
/// (`POST /api/v1/prepares/{prepare_id}/heartbeat`) keep it; without them for
/// `lease_timeout_s` another worker is given it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prepare {
    /// The preparation's id, used by every call about it.
    pub prepare_id: u64,
    /// Where to fetch the revision from.
    pub repository: String,
    /// The revision to prepare.
    pub revision: String,
    /// The configured setup (argv), run before the runner's own setup.
    #[serde(default)]
    pub setup_command: Vec<String>,
    /// Environment variables for the setup and the listing.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// The runner adapter that lists the suite.
    pub runner: crate::runner::Runner,
    /// Whether the runner's archive (nextest) must be uploaded before the listing.
    #[serde(default)]
    pub upload_archive: bool,
    /// Shards of the revision run in a warm runner (pytest): the worker lists the suite by
    /// starting that runner, whose collection is the listing, and keeps it for its own
    /// shards rather than collecting a second time.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub warm: bool,
    /// How often to heartbeat.
    pub heartbeat_interval_s: f64,
    /// Seconds after the last heartbeat at which the master gives the preparation to
    /// another worker.
    pub lease_timeout_s: f64,
}

/// How a preparation ended, from the worker's side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PrepareOutcome {
    /// The suite as the runner listed it at the revision.
    Listed {
        /// The listed suite (tags and dependencies from the repository's `greenlight.toml`).
        suite: crate::suite::SuiteFile,
    },
    /// The revision cannot be listed (a compile error, a missing runner): the build's
    /// error, with the runner's output.
    Failed {
        /// What went wrong, with the tail of the output.
        message: String,
    },
    /// The worker could not do it (a checkout failed, the master could not take the
    /// archive): another worker tries.
    InfraError {
        /// What went wrong.
        message: String,
    },
}

/// `POST /api/v1/prepares/{prepare_id}/listing`: the end of a preparation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrepareReport {
    /// Wire version.
    #[serde(default = "api_version")]
    pub version: u32,
    /// The worker holding the preparation.
    pub worker_id: u64,
    /// How it ended.
    pub outcome: PrepareOutcome,
}

/// A shard handed to one worker until `deadline` (heartbeats extend it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// The lease's id, used by every report about it.
    pub lease_id: u64,
    /// The build the shard belongs to.
    pub build_id: u64,
    /// Where to fetch the revision from (anything `git clone` accepts).
    pub repository: String,
    /// The revision to check out.
    pub revision: String,
    /// The tests to run, in this order.
    pub tests: Vec<String>,
    /// Run once per revision in the checkout before the first shard (argv, no shell).
    #[serde(default)]
    pub setup_command: Vec<String>,
    /// The shard command template (argv, no shell). `{ids_file}` is a file with one test
    /// id per line, `{junit}` the JUnit XML path to write, `{ids}` (a whole argument)
    /// expands to one argument per test id, `{revision}` the revision.
    pub run_command: Vec<String>,
    /// Environment variables set for the setup and run commands.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// How often to heartbeat.
    pub heartbeat_interval_s: f64,
    /// Seconds after the last heartbeat at which the master takes the shard back.
    pub lease_timeout_s: f64,
    /// The runner adapter: how to run the shard and match its JUnit report to test ids
    /// (`command` when absent: `run_command` as above).
    #[serde(default)]
    pub runner: crate::runner::Runner,
    /// The worker may run this shard in a runner it keeps between shards of the revision
    /// (pytest: one process that collected once), reporting test by test. An older master
    /// never sets it: one process per shard.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub warm: bool,
    /// The tests of this lease that wait on tests before them in it (a dependency chain
    /// leased whole, in dependency order, so it pays one shard's overhead): each is run only
    /// once every test it names here has passed in this shard; otherwise the worker does
    /// not run it and reports it `skipped`, naming the prerequisite. Only warm leases carry
    /// it (a runner fed one test at a time can hold a test back), and only to a worker
    /// that said it can ([`LeaseRequest::can_hold_dependents`]). The master records such a
    /// test skipped whatever the worker reports for it. Empty from an older master: every
    /// test of the lease is ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waits_on: Vec<LeaseDependency>,
}

/// A test of a lease and the tests before it in the same lease it waits on ([`Lease::waits_on`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseDependency {
    /// The test.
    pub test_id: String,
    /// Its prerequisites in the lease (ids, each earlier in [`Lease::tests`]); its other
    /// dependencies have passed already.
    pub depends_on: Vec<String>,
}

/// The outcome of one test, as the runner reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TestStatus {
    /// The test passed.
    Passed,
    /// The test failed its assertions.
    Failed,
    /// The runner skipped it, or it was not run because a dependency did not pass.
    Skipped,
    /// The test errored or the runner never reported it (crashed, lost).
    Error,
}

impl TestStatus {
    /// Whether this outcome makes a build red.
    pub fn is_failure(self) -> bool {
        matches!(self, TestStatus::Failed | TestStatus::Error)
    }

    /// The lowercase word used on the wire and in summaries.
    pub fn as_str(self) -> &'static str {
        match self {
            TestStatus::Passed => "passed",
            TestStatus::Failed => "failed",
            TestStatus::Skipped => "skipped",
            TestStatus::Error => "error",
        }
    }
}

/// One test's result, streamed by a worker while its shard runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestReport {
    /// The test id, exactly as leased.
    pub test_id: String,
    /// What happened.
    pub status: TestStatus,
    /// Seconds the test took, as its runner reports them (pytest: setup, call and
    /// teardown; shown on the page and in the JUnit report).
    #[serde(default)]
    pub duration_s: f64,
    /// Seconds of the shard the test took, from the end of the test before it (or from the
    /// runner being ready) to its own end: its duration plus the runner's work around it
    /// (pytest's hooks and reporting, fixtures torn down between modules, the worker's
    /// round trip). Sent by runners that run tests one by one (the warm pytest runner); the
    /// scheduler sizes shards by it and the duration history keeps it, since it is what
    /// the test costs a shard. `None`: the duration is all that is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_s: Option<f64>,
    /// Output of a failure or error (message, system-out, system-err), possibly truncated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

impl TestReport {
    /// What the test cost its shard, for scheduling: its wall time when the runner
    /// measured one, else its duration.
    pub fn cost_s(&self) -> f64 {
        self.wall_s.unwrap_or(self.duration_s)
    }
}

/// `POST /api/v1/leases/{lease_id}/results`: a batch of finished tests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultsRequest {
    /// Wire version.
    #[serde(default = "api_version")]
    pub version: u32,
    /// The worker holding the lease.
    pub worker_id: u64,
    /// Finished tests.
    pub results: Vec<TestReport>,
}

/// How the master took a batch of results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultsResponse {
    /// Wire version.
    #[serde(default = "api_version")]
    pub version: u32,
    /// Results stored now.
    pub accepted: u32,
    /// Results already stored before (a retried report): acknowledged, not counted again.
    pub duplicates: u32,
    /// Results for tests this lease no longer holds (it expired, or they were withdrawn):
    /// ignored.
    pub stale: u32,
    /// Tests withdrawn from the lease: another worker runs them. The worker should stop
    /// its runner once the tests it keeps are reported, and not report these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub withdrawn: Vec<String>,
}

/// `POST /api/v1/leases/{lease_id}/heartbeat`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    /// Wire version.
    #[serde(default = "api_version")]
    pub version: u32,
    /// The worker holding the lease.
    pub worker_id: u64,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// Wire version.
    #[serde(default = "api_version")]
    pub version: u32,
    /// False when the master no longer holds this lease for the worker (it expired or the
    /// build was cancelled): the worker should stop the shard.
    pub active: bool,
    /// Tests withdrawn from the lease, as in [`ResultsResponse::withdrawn`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub withdrawn: Vec<String>,
}

/// How a shard ended, from the worker's side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ShardOutcome {
    /// The runner ran and every leased test was reported.
    Completed,
    /// The shard could not run (checkout, setup or runner start failed): the tests that
    /// were not reported go back to the queue.
    InfraError {
        /// What went wrong.
        message: String,
    },
}

/// `POST /api/v1/leases/{lease_id}/finish`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinishRequest {
    /// Wire version.
    #[serde(default = "api_version")]
    pub version: u32,
    /// The worker holding the lease.
    pub worker_id: u64,
    /// How it ended.
    pub outcome: ShardOutcome,
    /// Seconds the shard's runner process ran (start to exit), when it ran; the master
    /// learns the suite's shard overhead from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_wall_s: Option<f64>,
}

/// `POST /api/v1/changes`: a post-receive hook says the branch moved.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChangeNotice {
    /// Wire version.
    #[serde(default = "api_version")]
    pub version: u32,
    /// The branch that moved; the watched branch when absent.
    #[serde(default)]
    pub branch: Option<String>,
    /// The new tip, for the record; the master fetches the branch itself.
    #[serde(default)]
    pub revision: Option<String>,
}

/// The answer to a change notice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeNoticeResponse {
    /// Wire version.
    #[serde(default = "api_version")]
    pub version: u32,
    /// Changes newly queued by the fetch the notice caused.
    pub queued: Vec<ChangeView>,
}

/// A change (one commit) as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeView {
    /// Order of arrival.
    pub sequence: u64,
    /// The branch it was seen on.
    pub branch: String,
    /// The full commit id.
    pub revision: String,
    /// `Name <email>`.
    pub author: String,
    /// The commit message.
    pub message: String,
    /// Paths the commit touched.
    pub paths: Vec<String>,
    /// Tags from the `Tags:` trailer and the path rules; empty means "run everything".
    pub tags: Vec<String>,
    /// The build that covers it, once one does.
    pub build_id: Option<u64>,
    /// When the master saw it (Unix seconds).
    pub seen_at: f64,
    /// The build this change was found to break (culprit finding), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub culprit_of: Option<u64>,
}

/// Where a build is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildState {
    /// Planned, no shard leased yet.
    Queued,
    /// Shards are running.
    Running,
    /// Every selected test passed or was skipped by its runner.
    Green,
    /// At least one test failed.
    Red,
    /// The build could not be planned (bad suite, missing revision).
    Error,
}

impl BuildState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            BuildState::Queued => "queued",
            BuildState::Running => "running",
            BuildState::Green => "green",
            BuildState::Red => "red",
            BuildState::Error => "error",
        }
    }

    /// Whether the build has ended.
    pub fn is_finished(self) -> bool {
        matches!(self, BuildState::Green | BuildState::Red | BuildState::Error)
    }
}

/// Counts of test outcomes in a build.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestCounts {
    /// Tests selected.
    pub total: u32,
    /// Passed.
    pub passed: u32,
    /// Failed.
    pub failed: u32,
    /// Skipped (by the runner or because a dependency did not pass).
    pub skipped: u32,
    /// Errored or never reported.
    pub error: u32,
    /// Passed only on a retry after failing (not counted in `passed`).
    #[serde(default)]
    pub flaky: u32,
    /// Failed or errored while quarantined: reported, not counted against the build.
    #[serde(default)]
    pub quarantined: u32,
}

impl TestCounts {
    /// Tests with a final result.
    pub fn done(&self) -> u32 {
        self.passed + self.failed + self.skipped + self.error + self.flaky + self.quarantined
    }

    /// Adds one stored result: a failure to be retried counts nothing yet.
    pub fn add_result(&mut self, result: &TestResultView) {
        if result.retried {
            return;
        }
        if result.flaky {
            self.flaky += 1;
        } else if result.quarantined && result.status.is_failure() {
            self.quarantined += 1;
        } else {
            self.add(result.status);
        }
    }

    /// Adds one outcome.
    pub fn add(&mut self, status: TestStatus) {
        match status {
            TestStatus::Passed => self.passed += 1,
            TestStatus::Failed => self.failed += 1,
            TestStatus::Skipped => self.skipped += 1,
            TestStatus::Error => self.error += 1,
        }
    }
}

/// A build as listed by `GET /api/v1/builds`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildSummary {
    /// Wire version.
    #[serde(default = "api_version")]
    pub version: u32,
    /// The build's id, increasing.
    pub build_id: u64,
    /// The branch.
    pub branch: String,
    /// The revision tested (the newest change it covers).
    pub revision: String,
    /// Where the build is.
    pub state: BuildState,
    /// Sequences of the changes it covers, oldest first.
    pub changes: Vec<u64>,
    /// Tags that selected the tests; empty with `full_run`.
    pub tags: Vec<String>,
    /// Whether every test of the suite was selected.
    pub full_run: bool,
    /// The paths a pytest suite was collected from for this build, where its tags (or a
    /// probe's tests) let the listing collect less than the runner's arguments name:
    /// the prefixes of the tags in the repository's `greenlight.toml` and the files of
    /// what their tests depend on. Empty: everything the arguments name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub collected: Vec<String>,
    /// Outcome counts so far.
    pub counts: TestCounts,
    /// Ids of failed or errored tests (first 100).
    pub failed_tests: Vec<String>,
    /// Ids of tests that passed only on a retry (first 100).
    #[serde(default)]
    pub flaky_tests: Vec<String>,
    /// Why the build is in `error`, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it was queued (Unix seconds).
    pub created_at: f64,
    /// When its first shard was leased.
    pub started_at: Option<f64>,
    /// When it ended.
    pub finished_at: Option<f64>,
    /// The scheduler's estimate of the time it should take on the fleet it had, planned
    /// before it started (from the history of durations and shard costs).
    pub lower_bound_s: Option<f64>,
    /// Once it ended: the same bound on what its tests really took, for the workers that
    /// took part, with what its shards were measured to cost. Its makespan over this says
    /// how close to the best possible it ran, a first build with no history included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_bound_s: Option<f64>,
    /// How long it took from first lease to last result.
    pub makespan_s: Option<f64>,
    /// Shards handed out.
    pub shards: u32,
    /// A regular build of the branch, or a probe of culprit finding.
    #[serde(default)]
    pub kind: BuildKind,
    /// For a probe: the red build whose culprit it looks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_of: Option<u64>,
    /// For a red build: the sequence of the (oldest) change found to break it, once
    /// found; kept for older clients, `culprits` names them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub culprit: Option<u64>,
    /// For a red build: every change culprit finding proved broke a failing test, oldest
    /// first, each with the tests it broke.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub culprits: Vec<CulpritView>,
    /// For a red build: failing tests that passed when re-run at the build's revision
    /// (culprit finding's confirmation): flakes, blamed on no change.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_reproduced: Vec<String>,
    /// For a red build: the probes culprit finding ran (ids, in order).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<u64>,
    /// For a red build whose culprit an earlier, tag-selected build let through without
    /// running the failing tests: which change and build, so the tag rules can be fixed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed_by_tags: Option<MissedByTags>,
}

impl BuildSummary {
    /// A build just queued: `build_id` testing `revision` of `branch` for `changes`,
    /// created at `now`; nothing run, no verdict.
    pub fn queued(build_id: u64, branch: String, revision: String, changes: Vec<u64>, now: f64) -> BuildSummary {
        BuildSummary {
            version: crate::API_VERSION,
            build_id,
            branch,
            revision,
            state: BuildState::Queued,
            changes,
            tags: Vec::new(),
            full_run: false,
            collected: Vec::new(),
            counts: TestCounts::default(),
            failed_tests: Vec::new(),
            flaky_tests: Vec::new(),
            error: None,
            created_at: now,
            started_at: None,
            finished_at: None,
            lower_bound_s: None,
            measured_bound_s: None,
            makespan_s: None,
            shards: 0,
            kind: BuildKind::Regular,
            probe_of: None,
            culprit: None,
            culprits: Vec::new(),
            not_reproduced: Vec::new(),
            probes: Vec::new(),
            missed_by_tags: None,
        }
    }
}

/// A change culprit finding named: a probe saw the tests fail at its revision and pass at
/// the revision before it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CulpritView {
    /// The change's sequence.
    pub change: u64,
    /// Its revision.
    pub revision: String,
    /// Its author, `Name <email>`.
    pub author: String,
    /// The first line of its message.
    pub subject: String,
    /// The failing tests it broke.
    pub tests: Vec<String>,
}

/// A failure a tag-selected build missed: the culprit change's build did not select the
/// failing tests, so they first failed in a later (often a periodic full) run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MissedByTags {
    /// The sequence of the change whose tags missed the tests.
    pub change: u64,
    /// That change's tags.
    pub tags: Vec<String>,
    /// The build that covered it and did not run the tests.
    pub build_id: u64,
    /// The failing tests it missed.
    pub tests: Vec<String>,
}

/// What a build is for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildKind {
    /// Tests a batch of changes at the newest revision.
    #[default]
    Regular,
    /// Re-runs a red build's failing tests at one of its changes, to find the culprit.
    Probe,
}

/// Whether the gate lets commits through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateState {
    /// Commits go through.
    Open,
    /// Only fixes and reverts go through.
    Closed,
}

/// `GET /api/v1/gate?branch=B`: the commit gate of a branch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateView {
    /// Wire version.
    #[serde(default = "api_version")]
    pub version: u32,
    /// The branch.
    pub branch: String,
    /// Open or closed.
    pub state: GateState,
    /// Since when (Unix seconds); absent before the first verdict.
    pub since: Option<f64>,
    /// The build that closed the gate (or last reopened it).
    pub build_id: Option<u64>,
    /// The revision that build tested.
    pub revision: Option<String>,
    /// Failing tests of the closing build (first 100).
    pub failing_tests: Vec<String>,
    /// The change found to break it, once culprit finding has named one (the oldest, if
    /// it named several; kept for older clients, `culprits` lists them all).
    pub culprit: Option<ChangeView>,
    /// Every change culprit finding named for the closing build, each with its tests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub culprits: Vec<CulpritView>,
    /// Why the gate is closed when no test failed. Older masters closed the gate on a
    /// build that could not run and said why here; such a build now only warns, and a
    /// current master never sets it (kept so that a gate stored by an older one reads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A later build ended in error (tests no worker could run, or a suite that could not
    /// be read, listed or planned: no test gave a verdict): the gate still rests on
    /// `build_id`, and says why the newer one gave no verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// A commit message containing this marks a fix, let through a closed gate.
    pub fix_marker: String,
    /// What keeps the farm from testing now (a data directory short of space, a store that
    /// failed, a repository it cannot fetch), from [`FarmHealth`]: an open gate says
    /// nothing about revisions the farm cannot test, so it carries these as warnings. Never
    /// stored with the gate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health: Vec<HealthProblem>,
}

/// `GET /api/v1/health`: the farm's health, what keeps it from testing. The gate (as
/// warnings), the page and `/metrics` show the same problems.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FarmHealth {
    /// Wire version.
    #[serde(default = "api_version")]
    pub version: u32,
    /// The problems now, in [`HealthKind`] order; empty when the farm is healthy.
    pub problems: Vec<HealthProblem>,
    /// Free bytes on the data directory's filesystem at the last look.
    #[serde(default)]
    pub data_dir_free_bytes: Option<u64>,
    /// Below this many free bytes no new build starts (`[storage] min_free_bytes`).
    #[serde(default)]
    pub min_free_bytes: u64,
    /// Below this many free bytes every write is refused (`[storage] reserve_bytes`).
    #[serde(default)]
    pub reserve_bytes: u64,
    /// When the watched repository was last fetched (Unix seconds), if ever.
    #[serde(default)]
    pub last_fetch_at: Option<f64>,
    /// Writes refused since the master started (a data directory short of space, a failed
    /// store): each was answered 503 before anything was recorded.
    #[serde(default)]
    pub writes_refused: u64,
}

/// One thing keeping the farm from testing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthProblem {
    /// What kind of problem.
    pub kind: HealthKind,
    /// Since when (Unix seconds).
    pub since: f64,
    /// A sentence for humans, with the underlying error (git's, the filesystem's).
    pub message: String,
}

/// The kinds of [`HealthProblem`]. The serde names are the wire strings (and the `kind`
/// label in `/metrics`); a kind a newer master sends reads as [`HealthKind::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthKind {
    /// The data directory's filesystem has less free space than `[storage]
    /// min_free_bytes`: no new build starts (below `reserve_bytes`, every write is refused).
    DiskLow,
    /// A write to the store failed: nothing more is written or acknowledged until the
    /// master is restarted (it then resumes from what the store holds).
    StoreFailed,
    /// The watched repository cannot be fetched: no new change is seen.
    RepositoryUnreachable,
    /// A kind this build does not know.
    #[serde(other)]
    Unknown,
}

impl HealthKind {
    /// Every kind a master reports.
    pub const ALL: [HealthKind; 3] = [HealthKind::DiskLow, HealthKind::StoreFailed, HealthKind::RepositoryUnreachable];

    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthKind::DiskLow => "disk_low",
            HealthKind::StoreFailed => "store_failed",
            HealthKind::RepositoryUnreachable => "repository_unreachable",
            HealthKind::Unknown => "unknown",
        }
    }
}

/// Where a shard stands. The serde names are the wire strings; a state a newer master
/// sends that this build does not know reads as [`ShardState::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardState {
    /// Its worker runs it.
    Running,
    /// Its worker finished it (a shard that gave tests back ends here too; see
    /// [`ShardView::withdrawn`]).
    Finished,
    /// Its heartbeats stopped: the lease was taken back, its unreported tests ran elsewhere.
    Expired,
    /// Its worker could not run it (checkout, setup or the runner failed); its unreported
    /// tests ran elsewhere.
    InfraError,
    /// Its worker asked for new work while holding it: taken back, its unreported tests
    /// ran elsewhere.
    TakenBack,
    /// Its build was cancelled by an admin while it ran.
    Cancelled,
    /// A state this build of Greenlight does not know (sent by a newer master).
    #[serde(other)]
    Unknown,
}

impl ShardState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ShardState::Running => "running",
            ShardState::Finished => "finished",
            ShardState::Expired => "expired",
            ShardState::InfraError => "infra_error",
            ShardState::TakenBack => "taken_back",
            ShardState::Cancelled => "cancelled",
            ShardState::Unknown => "unknown",
        }
    }

    /// Whether the shard has ended.
    pub fn is_ended(self) -> bool {
        self != ShardState::Running
    }
}

/// Where a push hand-off stands. The serde names are the wire strings; a state a newer
/// master sends that this build does not know reads as [`PushState::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushState {
    /// Queued, not tried yet.
    Pending,
    /// Tried and failed; it will be tried again.
    Pushing,
    /// Handed off.
    Pushed,
    /// Every attempt failed.
    Failed,
    /// A newer green revision was pushed first; older ones are never pushed after it.
    Superseded,
    /// A state this build of Greenlight does not know (sent by a newer master).
    #[serde(other)]
    Unknown,
}

impl PushState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            PushState::Pending => "pending",
            PushState::Pushing => "pushing",
            PushState::Pushed => "pushed",
            PushState::Failed => "failed",
            PushState::Superseded => "superseded",
            PushState::Unknown => "unknown",
        }
    }

    /// Whether the push stage still has to hand it off.
    pub fn is_open(self) -> bool {
        matches!(self, PushState::Pending | PushState::Pushing)
    }
}

/// One hand-off of a green revision to the push stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushView {
    /// The green build.
    pub build_id: u64,
    /// Its revision.
    pub revision: String,
    /// Where the hand-off stands.
    pub state: PushState,
    /// Attempts made.
    pub attempts: u32,
    /// The last error, when an attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When it was queued (Unix seconds).
    pub queued_at: f64,
    /// When it ended.
    pub finished_at: Option<f64>,
}

/// One shard of a build, for the API and the waterfall.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardView {
    /// The lease id.
    pub lease_id: u64,
    /// The worker's name.
    pub worker: String,
    /// Tests in it (without those withdrawn).
    pub tests: u32,
    /// Tests withdrawn from it while it ran, to be run by an idle worker: it was running
    /// late, or others had nothing left to do.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub withdrawn: u32,
    /// Leased at (Unix seconds).
    pub started_at: f64,
    /// Finished or expired at.
    pub finished_at: Option<f64>,
    /// Where the shard stands.
    pub state: ShardState,
    /// Outcomes of its tests reported so far.
    #[serde(default)]
    pub counts: TestCounts,
    /// The test ids it holds, in running order. Sent by `GET /api/v1/builds/{id}` and
    /// `GET /api/v1/builds/{id}/shards/{lease_id}`; left out of the event stream.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub test_ids: Vec<String>,
    /// A shell command line that reruns the shard by hand in a clone of the repository.
    #[serde(default)]
    pub reproduce: String,
    /// Seconds the worker's runner process ran (the rest of the shard's time, from lease
    /// to finish, is the farm's: checkout, setup, reporting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_wall_s: Option<f64>,
    /// A backup copy (`[scheduler] straggler_copies`) of the test the shard of this lease
    /// was running on a slow or stalled machine: the shard holds that one test, and the
    /// first of the two results counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_of: Option<u64>,
    /// The test this shard was running when the master told it to stop: the other copy of
    /// it (a straggler copy, or the straggler it copied) reported first, and that result
    /// counts. The run stopped here is no attempt and has no result; the test is among
    /// those `withdrawn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

impl ShardView {
    /// The shard without its (possibly long) list of test ids and its reproduce line
    /// (which names them), neither even cloned: what the event stream sends, and what the
    /// master rewrites while the shard runs.
    pub fn without_test_ids(&self) -> ShardView {
        ShardView {
            lease_id: self.lease_id,
            worker: self.worker.clone(),
            tests: self.tests,
            withdrawn: self.withdrawn,
            started_at: self.started_at,
            finished_at: self.finished_at,
            state: self.state,
            counts: self.counts.clone(),
            test_ids: Vec::new(),
            reproduce: String::new(),
            runner_wall_s: self.runner_wall_s,
            copy_of: self.copy_of,
            stopped: self.stopped.clone(),
        }
    }
}

/// A build with its shards, for `GET /api/v1/builds/{build_id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildDetail {
    /// The summary.
    pub build: BuildSummary,
    /// Its shards, in leasing order.
    pub shards: Vec<ShardView>,
    /// While it runs: the scheduler's estimate of the seconds left until it ends (its
    /// running shards at their own pace, the tests not leased yet spread over the live
    /// workers), relative so that a client's clock need not agree with the master's.
    /// Absent once it ended, and from a master older than this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_s: Option<f64>,
}

/// One stored test result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestResultView {
    /// The test id.
    pub test_id: String,
    /// 1 for the first run of the test in the build.
    pub attempt: u32,
    /// What happened.
    pub status: TestStatus,
    /// Seconds it took.
    pub duration_s: f64,
    /// Output of a failure, or the reason of a skip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// The worker that ran it, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// A failure that was run again: not the test's result.
    #[serde(default)]
    pub retried: bool,
    /// Passed on a retry after failing.
    #[serde(default)]
    pub flaky: bool,
    /// The test was quarantined: its failure does not count against the build.
    #[serde(default)]
    pub quarantined: bool,
    /// The lease (shard) it ran in, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<u64>,
}

impl TestResultView {
    /// Whether this result makes its build red: a final failure of a test a worker ran
    /// (an error no worker ran is the scheduler giving up: infrastructure), not
    /// quarantined.
    pub fn counts_as_failure(&self) -> bool {
        self.status.is_failure() && !self.retried && !self.quarantined && !self.given_up()
    }

    /// Whether this is the error the scheduler records when it gives up on a test no worker
    /// could run (workers lost, runners crashed): the only error without a worker.
    pub fn given_up(&self) -> bool {
        self.status == TestStatus::Error && self.worker.is_none()
    }
}

/// `GET /api/v1/builds/{build_id}/tests`: a build's stored results, every one of them
/// (no parameters) or the page a [`ResultsQuery`] asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildTests {
    /// Wire version.
    #[serde(default = "api_version")]
    pub version: u32,
    /// The build.
    pub build_id: u64,
    /// The stored results asked for, by test id then attempt.
    pub results: Vec<TestResultView>,
    /// Where the next page starts, to be passed back as `cursor`; absent on the last page
    /// (and always without `limit`, which answers every result asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// The query of `GET /api/v1/builds/{build_id}/tests`; every parameter is optional and
/// without any the answer holds every result (as before pages existed). Results come by
/// test id then attempt, so pages are stable while a running build adds results: a page
/// never repeats a result of an earlier one and skips none that was stored when the pages
/// before it were read (a result stored later for a test id before the cursor shows up
/// when the results are read again from the start).
///
/// `?status=failed,error` asks for the failures alone (the page shows them first, before
/// the rest); `?limit=1000` for pages of 1000, each answer's `next_cursor` asking for the
/// next. A status that is not one of `passed`, `failed`, `skipped`, `error`, a cursor not
/// given out by the master, a `limit` of 0 or above [`MAX_RESULTS_PAGE`]: `400` with
/// `invalid_status`, `invalid_cursor` or `invalid_limit`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResultsQuery {
    /// Only results with one of these statuses, as a comma-separated list
    /// (`failed,error`); every status without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// At most this many results (1 to [`MAX_RESULTS_PAGE`]); all of them without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Start after the last result of the page that gave out this `next_cursor` (an
    /// opaque string: the same filter should come with it); from the first without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// The largest `limit` of a page of results.
pub const MAX_RESULTS_PAGE: usize = 5000;

/// A worker as `GET /api/v1/workers` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerView {
    /// Its id.
    pub worker_id: u64,
    /// Its name.
    pub name: String,
    /// The lease it holds, if any.
    pub lease_id: Option<u64>,
    /// Last time it was heard from (Unix seconds).
    pub last_seen: f64,
    /// Taken out of rotation until then, for losing shards to infrastructure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub benched_until: Option<f64>,
    /// The build of the lease it holds, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<u64>,
    /// Whether it has been silent longer than the lease timeout (its shard is taken back).
    #[serde(default)]
    pub lost: bool,
    /// How many times as long as the farm's other workers it takes for a test, as their
    /// results show (kept under its name across its registrations and the master's
    /// restarts): 1 when as fast as the others or not known yet. The scheduler gives a
    /// slower machine less work and not the longest tests.
    #[serde(default = "default_slowness")]
    pub slowness: f64,
}

fn default_slowness() -> f64 {
    1.0
}

/// A test kept out of the gate: it runs and is reported, its failures do not count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuarantineEntry {
    /// The test id.
    pub test_id: String,
    /// Why.
    pub reason: String,
    /// Who: `auto` (flake rate over the threshold) or `admin`.
    pub by: String,
    /// Since when (Unix seconds).
    pub since: f64,
    /// Until when (Unix seconds); after it the test counts again.
    pub expires_at: f64,
}

/// `POST /api/v1/admin/quarantine`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineRequest {
    /// The test id.
    pub test_id: String,
    /// Why (required: a quarantine without a reason is forgotten).
    pub reason: String,
    /// How long, in seconds (default a week).
    #[serde(default)]
    pub expires_in_s: Option<f64>,
}

/// `POST /api/v1/admin/unquarantine`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnquarantineRequest {
    /// The test id.
    pub test_id: String,
}

/// A test's flakiness over its recent runs, for `GET /api/v1/flaky`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlakeStats {
    /// The test id.
    pub test_id: String,
    /// Runs counted (the most recent ones, at most 50).
    pub runs: u32,
    /// Of those, how many passed only on a retry.
    pub flaky: u32,
    /// `flaky / runs`.
    pub flake_rate: f64,
    /// When it last flaked (Unix seconds).
    pub last_flaky_at: Option<f64>,
    /// Whether it is quarantined now.
    pub quarantined: bool,
}

/// The JSON body of every error answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A stable machine-readable code, e.g. `unknown_lease`.
    pub error: String,
    /// A sentence for humans naming the problem.
    pub message: String,
}

/// One update on `GET /api/v1/events` (server-sent events). Updates are coalesced: each
/// SSE message (`event: batch`) carries a JSON array of the newest state of every build,
/// shard, gate and change that changed since the previous message, at most a few per
/// second. An `event: resync` message says updates were dropped: fetch the lists again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "data", rename_all = "snake_case")]
pub enum FarmEvent {
    /// A build's summary changed (queued, a result arrived, finished, culprit found).
    Build(BuildSummary),
    /// A shard was leased, finished or expired.
    Shard(ShardEvent),
    /// The gate changed.
    Gate(GateView),
    /// A change was queued or covered by a build.
    Change(ChangeView),
}

/// A shard and the build it belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardEvent {
    /// The build.
    pub build_id: u64,
    /// The shard.
    pub shard: ShardView,
}

/// `GET /api/v1/tests?id=TEST_ID`: one test across recent builds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestHistory {
    /// Wire version.
    #[serde(default = "api_version")]
    pub version: u32,
    /// The test id.
    pub test_id: String,
    /// Its tags, from the suite at the newest build's revision (empty if not found).
    #[serde(default)]
    pub tags: Vec<String>,
    /// The ids it depends on, from the same suite.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// The tests of that suite that depend on it.
    #[serde(default)]
    pub dependants: Vec<String>,
    /// Its recent measured durations (seconds, oldest first), as the estimates use them.
    #[serde(default)]
    pub recent_durations_s: Vec<f64>,
    /// Its outcome in each recent build that ran it, newest build first.
    pub runs: Vec<TestRun>,
    /// Builds in `runs` where it was flaky (failed, then passed on a retry), over builds
    /// in `runs`; 0 when it never ran.
    pub flake_rate: f64,
}

/// A test's outcome in one build, for [`TestHistory`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestRun {
    /// The build.
    pub build_id: u64,
    /// Its revision.
    pub revision: String,
    /// When the build was queued (Unix seconds).
    pub created_at: f64,
    /// The final outcome (of the last attempt).
    pub status: TestStatus,
    /// Seconds the last attempt took.
    pub duration_s: f64,
    /// Attempts stored.
    pub attempts: u32,
    /// Whether it failed and then passed on a retry.
    pub flaky: bool,
    /// The worker of the last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Output of the last failing attempt, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_and_push_states_keep_their_wire_names_and_read_unknown_ones_as_unknown() {
        for (state, wire) in [
            (ShardState::Running, "running"),
            (ShardState::Finished, "finished"),
            (ShardState::Expired, "expired"),
            (ShardState::InfraError, "infra_error"),
            (ShardState::TakenBack, "taken_back"),
            (ShardState::Cancelled, "cancelled"),
        ] {
            assert_eq!(serde_json::to_string(&state).unwrap(), format!("\"{wire}\""));
            assert_eq!(serde_json::from_str::<ShardState>(&format!("\"{wire}\"")).unwrap(), state);
            assert_eq!(state.as_str(), wire);
        }
        for (state, wire) in [
            (PushState::Pending, "pending"),
            (PushState::Pushing, "pushing"),
            (PushState::Pushed, "pushed"),
            (PushState::Failed, "failed"),
            (PushState::Superseded, "superseded"),
        ] {
            assert_eq!(serde_json::to_string(&state).unwrap(), format!("\"{wire}\""));
            assert_eq!(serde_json::from_str::<PushState>(&format!("\"{wire}\"")).unwrap(), state);
            assert_eq!(state.as_str(), wire);
        }
        assert_eq!(serde_json::from_str::<ShardState>("\"paused_by_a_newer_master\"").unwrap(), ShardState::Unknown);
        assert_eq!(serde_json::from_str::<PushState>("\"rolled_back\"").unwrap(), PushState::Unknown);
    }
}

/// `POST /api/v1/admin/history/import`: the test cases of JUnit reports a CI already
/// wrote, to seed the duration history (`greenlight history import`). The master maps
/// each case to a test id of the suite (the way the suite's runner names its tests in
/// JUnit) and records the time of each passed case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryImportRequest {
    /// Wire version.
    #[serde(default = "api_version")]
    pub version: u32,
    /// The reports, one per file.
    pub reports: Vec<ImportedReport>,
}

/// One JUnit file's test cases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportedReport {
    /// The file it was read from, for messages.
    pub file: String,
    /// Its `<testcase>` elements, in document order.
    pub cases: Vec<ImportedCase>,
}

/// One `<testcase>` as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportedCase {
    /// `name`.
    pub name: String,
    /// `classname`, if present and not empty.
    #[serde(default)]
    pub classname: Option<String>,
    /// `file`, if present.
    #[serde(default)]
    pub file: Option<String>,
    /// The outcome (a `<failure>`, `<error>` or `<skipped>` child, else passed).
    pub status: TestStatus,
    /// The `time` attribute exactly as written (`None` when absent): the master decides
    /// whether it is a duration.
    #[serde(default)]
    pub time: Option<String>,
}

/// What an import did: counts, and a few examples of what it left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryImportResponse {
    /// Wire version.
    #[serde(default = "api_version")]
    pub version: u32,
    /// The revision whose suite the cases were matched against.
    pub revision: String,
    /// Passed cases whose time was added to their test's history.
    pub imported: u32,
    /// Cases matched to a test that did not pass (failed, errors, skipped): their time
    /// says little about a full run, so it is not recorded.
    pub not_passed: u32,
    /// Cases naming no test of the suite.
    pub unmatched: u32,
    /// A few of them, as `classname::name` (or the name alone).
    pub unmatched_examples: Vec<String>,
    /// Passed cases whose time is not a duration (absent, not a number, negative, NaN,
    /// infinite, above a day): nothing recorded for them.
    pub rejected: u32,
    /// A few of them, each with the reason.
    pub rejected_examples: Vec<String>,
}

/// The address of build `build_id`'s page on the master whose page is at `base` (the
/// master's URL, or its configured `public_url`): `greenlight gate`, forge statuses and
/// notifications all link with it.
pub fn build_page_url(base: &str, build_id: u64) -> String {
    format!("{}/#/build/{build_id}", base.trim_end_matches('/'))
}

/// What a notification is about (`[notify]` webhooks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    /// A real failure closed the gate: its build, revision and failing tests (and its
    /// culprits, in the rare case they are already known).
    GateClosed,
    /// Culprit finding named the change(s) that broke the build that closed the gate.
    CulpritFound,
    /// A green build of a later revision reopened the gate.
    GateReopened,
    /// A build ended in error (no verdict: tests no worker could run, a suite that could
    /// not be listed or planned, a cancelled build).
    BuildError,
}

impl NotificationKind {
    /// Its name on the wire and in `/metrics`.
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationKind::GateClosed => "gate_closed",
            NotificationKind::CulpritFound => "culprit_found",
            NotificationKind::GateReopened => "gate_reopened",
            NotificationKind::BuildError => "build_error",
        }
    }
}

/// The body a `[notify] json_webhook` receives: one event, with what is needed to act on
/// it and a link to the build's page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Wire version.
    #[serde(default = "api_version")]
    pub version: u32,
    /// What happened.
    pub event: NotificationKind,
    /// The watched branch.
    pub branch: String,
    /// The build it is about: the one that closed the gate, reopened it, or ended in error.
    pub build_id: u64,
    /// The revision that build tested.
    pub revision: String,
    /// The failing tests (gate closed, culprit found); empty otherwise.
    #[serde(default)]
    pub failing_tests: Vec<String>,
    /// The changes culprit finding named, each with the tests it broke; empty otherwise.
    #[serde(default)]
    pub culprits: Vec<CulpritView>,
    /// Why the build is in error (build error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The build's page.
    pub url: String,
}
