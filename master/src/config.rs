//! The master's configuration (`greenlight-master.toml`; `greenlight.toml`, its old name,
//! is still read with a warning). Everything has a default except the data directory, the
//! repository and the shard command: `greenlight config sample` prints every key with its
//! default ([`sample`]), `greenlight config check` finds what is wrong in a file
//! ([`check`]).
//!
//! ```toml
//! data_dir = "/var/lib/greenlight"
//! worker_token = "s3cret"
//!
//! [workers.build-07]                # optional: a worker with a token of its own
//! token = "only-build-07-knows"
//!
//! [repository]
//! url = "/srv/git/product.git"     # anything `git clone` accepts, reachable by workers too
//! branch = "main"
//! poll_interval_s = 10
//!
//! [suite]
//! file = "greenlight-suite.json"   # a suite file in the repository, or:
//! # list_command = ["./list-tests", "--json"]
//! setup_command = ["make", "deps"]
//! run_command = ["./run-tests", "--junit", "{junit}", "--ids-from", "{ids_file}"]
//!
//! [tags.paths]
//! "src/chat/**" = ["chat"]
//!
//! [storage]                        # free space on data_dir's filesystem, the store's memory
//! min_free_bytes = 1073741824      # below this no new build starts (the gate warns)
//! reserve_bytes = 67108864         # below this every write is refused (503; workers retry)
//! cache_bytes = 33554432           # the store's page cache in memory (sled's cache_capacity)
//! keep_results_builds = 500        # full results and shards of the newest 500 builds; 0: all
//! keep_results_days = 0            # and of builds that ended in the last N days; 0: no limit
//!
//! [scheduler]                      # every key optional; see `SchedulerSection` for all
//! shard_sizing = "fitted"          # one shard a worker where estimates hold; or "finer": 2-3
//! straggler_copies = false         # a backup copy of a test holding the build's end
//!
//! [forge]                          # commit statuses (`notify`); off without `kind`
//! kind = "github"                  # or "gitlab", "gitea" (Forgejo too)
//! repository = "acme/product"
//! token_env = "GREENLIGHT_FORGE_TOKEN"
//!
//! [notify]                         # gate closed, culprit found, gate reopened, build error
//! slack_webhook_env = "GREENLIGHT_SLACK_WEBHOOK"
//! ```
//!
//! Or a runner adapter instead of the templates (it lists, sets up and runs by itself):
//!
//! ```toml
//! [suite]
//! runner = "pytest"                # or "nextest"
//! runner_args = ["-W", "error", "tests"]  # shards get the options; paths, -k, -m only list
//! python = "/opt/venv/bin/python"  # pytest runner; `cargo` for nextest
//! warm = true                      # pytest: one process per worker and revision (default)
//! ```

pub mod check;
pub mod sample;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use greenlight_shared::runner::Runner;
use serde::{Deserialize, Serialize};

/// The master's configuration file, looked for in the working directory.
pub const CONFIG_FILE: &str = "greenlight-master.toml";

/// Its old name, shared with the tested repository's test metadata
/// ([`greenlight_shared::runner::REPOSITORY_FILE`]): still read, with a warning.
pub const OLD_CONFIG_FILE: &str = "greenlight.toml";

/// Whether `text` is a tested repository's test metadata (a `[tests]` table and no
/// `data_dir`) rather than a master's configuration.
pub fn is_repository_file(text: &str) -> bool {
    toml::from_str::<toml::Table>(text)
        .is_ok_and(|table| table.contains_key("tests") && !table.contains_key("data_dir"))
}

/// One problem on the line it is named on; several, counted, one a line under it.
fn one_per_line(problems: &[String]) -> String {
    match problems {
        [problem] => problem.clone(),
        _ => format!("{} problems\n  {}", problems.len(), problems.join("\n  ")),
    }
}

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("{path}: {error}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The error (not a `source`: its text is already in this one's).
        error: Box<toml::de::Error>,
    },
    /// The file has keys or values that do not fit, each told once.
    #[error("{path}: {}", one_per_line(problems))]
    Problems {
        /// The file.
        path: PathBuf,
        /// What is wrong, as `greenlight config check` says it.
        problems: Vec<String>,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// The file is a tested repository's test metadata, not the master's configuration.
    #[error(
        "{path} is a tested repository's test metadata (it has [tests]), not the master's configuration: \
         the master reads {CONFIG_FILE} (`greenlight config sample` prints one)"
    )]
    RepositoryFile {
        /// The file.
        path: PathBuf,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where sled and the git mirror live.
    pub data_dir: PathBuf,
    /// The address to listen on (`greenlight master` only; tests pass a listener).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The bearer token workers must present; `None` lets any worker in.
    #[serde(default)]
    pub worker_token: Option<String>,
    /// Or the environment variable holding it (read when the configuration is loaded), to
    /// keep the secret out of the file.
    #[serde(default)]
    pub worker_token_env: Option<String>,
    /// The bearer token of admin calls (cancel a build, quarantine, force a full run);
    /// `None` turns admin calls off.
    #[serde(default)]
    pub admin_token: Option<String>,
    /// Or the environment variable holding it.
    #[serde(default)]
    pub admin_token_env: Option<String>,
    /// Workers with a token of their own (`[workers.NAME] token = "..."`), as Buildbot gives
    /// each worker its password: only that token registers (and calls) as NAME, it acts
    /// as no other name, and the shared `worker_token` is not accepted for NAME, so one
    /// machine is revoked alone by changing or removing its entry.
    #[serde(default)]
    pub workers: BTreeMap<String, WorkerSection>,
    /// A bearer token a post-receive hook may present to announce changes
    /// (`POST /api/v1/changes`), besides the worker token; with neither set, anyone may.
    #[serde(default)]
    pub hook_token: Option<String>,
    /// Or the environment variable holding it.
    #[serde(default)]
    pub hook_token_env: Option<String>,
    /// A bearer token the read-only API and the page need; `None` leaves them open.
    #[serde(default)]
    pub read_token: Option<String>,
    /// Or the environment variable holding it.
    #[serde(default)]
    pub read_token_env: Option<String>,
    /// The largest request body accepted, in bytes.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// The longest a test may be reported to take, in seconds. A result claiming more is
    /// kept, its duration clamped to this, and it does not enter the duration history.
    #[serde(default = "default_max_test_duration_s")]
    pub max_test_duration_s: f64,
    /// The most output stored per result, in bytes: what a client sends beyond it is cut
    /// (the end is kept, where failures are), with a note saying so.
    #[serde(default = "default_max_output_bytes")]
    pub max_output_bytes: usize,
    /// The largest test archive (nextest) a worker may upload, in bytes; a larger one is
    /// refused with 413 and that worker's shards build the revision themselves.
    #[serde(default = "default_max_archive_bytes")]
    pub max_archive_bytes: u64,
    /// The watched repository.
    pub repository: RepositoryConfig,
    /// How to list and run the suite.
    pub suite: SuiteConfig,
    /// How changes are tagged.
    #[serde(default)]
    pub tags: TagsConfig,
    /// Scheduler knobs.
    #[serde(default)]
    pub scheduler: SchedulerSection,
    /// The commit gate.
    #[serde(default)]
    pub gate: GateConfig,
    /// The push stage green revisions are handed to.
    #[serde(default)]
    pub push: PushConfig,
    /// Periodic full runs, which catch what tag selection missed.
    #[serde(default)]
    pub full_runs: FullRunsConfig,
    /// Keeping flaky tests out of the gate.
    #[serde(default)]
    pub quarantine: QuarantineConfig,
    /// Free space the data directory needs.
    #[serde(default)]
    pub storage: StorageConfig,
    /// The address people reach the master's page at (`https://greenlight.example`), for
    /// the links in forge statuses and notifications; unset: `http://` and the address the
    /// master listens on.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Commit statuses on the watched repository's forge (GitHub, GitLab, Gitea/Forgejo).
    #[serde(default)]
    pub forge: ForgeConfig,
    /// Chat and webhook notifications of the gate and of builds in error.
    #[serde(default)]
    pub notify: NotifyConfig,
}

/// The forges whose commit status API the master speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ForgeKind {
    /// GitHub and GitHub Enterprise: `POST /repos/{owner}/{repo}/statuses/{sha}`.
    Github,
    /// GitLab: `POST /projects/{id}/statuses/{sha}`.
    Gitlab,
    /// Gitea and Forgejo: `POST /repos/{owner}/{repo}/statuses/{sha}`.
    Gitea,
}

impl ForgeKind {
    /// The public API root of the forge, when there is one (Gitea has none).
    pub fn default_api_url(self) -> Option<&'static str> {
        match self {
            ForgeKind::Github => Some("https://api.github.com"),
            ForgeKind::Gitlab => Some("https://gitlab.com/api/v4"),
            ForgeKind::Gitea => None,
        }
    }
}

/// Commit statuses on the watched repository's forge (`[forge]`): pending when a build
/// covering a revision starts, then success, failure or error with a link to the build.
/// Off while `kind` is unset.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ForgeConfig {
    /// `github`, `gitlab` or `gitea` (Forgejo too); unset: no statuses.
    #[serde(default)]
    pub kind: Option<ForgeKind>,
    /// The forge's API root, version included (`https://github.example/api/v3`,
    /// `https://gitlab.example/api/v4`, `https://gitea.example/api/v1`); unset: GitHub's
    /// and gitlab.com's public API (a Gitea forge must say where it is).
    #[serde(default)]
    pub api_url: Option<String>,
    /// The repository on the forge: `owner/name` (GitLab: the project's path or id).
    #[serde(default)]
    pub repository: Option<String>,
    /// The token statuses are posted with (GitHub: `statuses: write`; GitLab: `api`).
    #[serde(default)]
    pub token: Option<String>,
    /// Or the environment variable holding it.
    #[serde(default)]
    pub token_env: Option<String>,
    /// The name the statuses carry on the forge (GitHub's and Gitea's `context`, GitLab's
    /// `name`).
    #[serde(default = "default_forge_context")]
    pub context: String,
    /// Attempts before a status is given up (logged and counted).
    #[serde(default = "default_delivery_attempts")]
    pub attempts: u32,
    /// Seconds before the first retry; doubled for each next one, at most a minute.
    #[serde(default = "default_delivery_backoff_s")]
    pub backoff_s: f64,
}

impl Default for ForgeConfig {
    fn default() -> ForgeConfig {
        ForgeConfig {
            kind: None,
            api_url: None,
            repository: None,
            token: None,
            token_env: None,
            context: default_forge_context(),
            attempts: default_delivery_attempts(),
            backoff_s: default_delivery_backoff_s(),
        }
    }
}

fn default_forge_context() -> String {
    "greenlight".to_owned()
}

fn default_delivery_attempts() -> u32 {
    8
}

fn default_delivery_backoff_s() -> f64 {
    1.0
}

impl ForgeConfig {
    /// The API root statuses are posted to, when a forge is configured.
    pub fn api_root(&self) -> Option<String> {
        let kind = self.kind?;
        let url = self.api_url.as_deref().or(kind.default_api_url())?;
        Some(url.trim_end_matches('/').to_owned())
    }
}

/// Notifications (`[notify]`): the gate closed (its failing tests, then its culprit once
/// found), the gate reopened, a build in error; to a Slack-compatible webhook, a plain
/// JSON webhook, or both.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// A Slack incoming webhook (or anything taking Slack's `{"text", "blocks"}`: Mattermost,
    /// Rocket.Chat, Discord's `/slack` endpoint).
    #[serde(default)]
    pub slack_webhook: Option<String>,
    /// Or the environment variable holding it (a Slack webhook URL is a secret).
    #[serde(default)]
    pub slack_webhook_env: Option<String>,
    /// A URL that gets each notification as plain JSON (README: the schema).
    #[serde(default)]
    pub json_webhook: Option<String>,
    /// Or the environment variable holding it.
    #[serde(default)]
    pub json_webhook_env: Option<String>,
    /// Attempts before a notification is given up (logged and counted).
    #[serde(default = "default_delivery_attempts")]
    pub attempts: u32,
    /// Seconds before the first retry; doubled for each next one, at most a minute.
    #[serde(default = "default_delivery_backoff_s")]
    pub backoff_s: f64,
}

impl Default for NotifyConfig {
    fn default() -> NotifyConfig {
        NotifyConfig {
            slack_webhook: None,
            slack_webhook_env: None,
            json_webhook: None,
            json_webhook_env: None,
            attempts: default_delivery_attempts(),
            backoff_s: default_delivery_backoff_s(),
        }
    }
}

/// Free space on the data directory's filesystem (the master stops taking new work before
/// the disk is full, rather than failing inside a build), and what the store may hold in
/// memory.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Below this many free bytes no new build starts (running builds go on); the gate, the
    /// page, `/metrics` and `GET /api/v1/health` say why. 0: no floor.
    #[serde(default = "default_min_free_bytes")]
    pub min_free_bytes: u64,
    /// Below this many free bytes every write (results, shard ends, leases, registrations,
    /// changes) is refused with 503 `disk_full` before anything is recorded; workers retry
    /// it. At most `min_free_bytes`. 0: never refused (the store meets the full disk).
    #[serde(default = "default_reserve_bytes")]
    pub reserve_bytes: u64,
    /// The store's page cache (sled's `cache_capacity`), in bytes: what the master keeps of
    /// the store in memory, however many results it holds. Reads of older builds beyond it
    /// go to the disk. sled's own default, 1 GiB, is never what a master wants.
    #[serde(default = "default_cache_bytes")]
    pub cache_bytes: u64,
    /// Full results (output included) and shards are kept for the newest this many builds;
    /// older builds lose them in the background (their summaries, durations history, flake
    /// records, the gate and culprits are kept for ever). 0: keep everything.
    #[serde(default = "default_keep_results_builds")]
    pub keep_results_builds: u64,
    /// Full results and shards of a build that ended more than this many days ago are
    /// removed too (whichever limit comes first). 0: no limit by age.
    #[serde(default)]
    pub keep_results_days: f64,
}

fn default_keep_results_builds() -> u64 {
    500
}

fn default_cache_bytes() -> u64 {
    crate::store::DEFAULT_CACHE_BYTES
}

fn default_min_free_bytes() -> u64 {
    1024 * 1024 * 1024
}

fn default_reserve_bytes() -> u64 {
    64 * 1024 * 1024
}

impl Default for StorageConfig {
    fn default() -> StorageConfig {
        StorageConfig {
            min_free_bytes: default_min_free_bytes(),
            reserve_bytes: default_reserve_bytes(),
            cache_bytes: default_cache_bytes(),
            keep_results_builds: default_keep_results_builds(),
            keep_results_days: 0.0,
        }
    }
}

/// One worker's own settings (`[workers.NAME]`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSection {
    /// The bearer token only this worker presents, instead of the shared `worker_token`.
    #[serde(default)]
    pub token: Option<String>,
    /// Or the environment variable holding it.
    #[serde(default)]
    pub token_env: Option<String>,
}

impl Config {
    /// The token of the worker `name`, when it has one of its own.
    pub fn own_worker_token(&self, name: &str) -> Option<&str> {
        self.workers.get(name).and_then(|worker| worker.token.as_deref())
    }
}

/// Automatic quarantine of flaky tests.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineConfig {
    /// Quarantine a test whose flake rate over its recent runs reaches this (0: never
    /// automatically; admins still can).
    #[serde(default)]
    pub flake_rate: f64,
    /// ... once it has at least this many recent runs.
    #[serde(default = "default_quarantine_min_runs")]
    pub min_runs: u32,
    /// How long a quarantine lasts unless given (seconds; a week).
    #[serde(default = "default_quarantine_expires_in_s")]
    pub expires_in_s: f64,
}

fn default_quarantine_min_runs() -> u32 {
    10
}

fn default_quarantine_expires_in_s() -> f64 {
    7.0 * 24.0 * 3600.0
}

impl Default for QuarantineConfig {
    fn default() -> QuarantineConfig {
        QuarantineConfig {
            flake_rate: 0.0,
            min_runs: default_quarantine_min_runs(),
            expires_in_s: default_quarantine_expires_in_s(),
        }
    }
}

/// When a build ignores tags and runs the whole suite.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FullRunsConfig {
    /// Every this many builds (0: never by count).
    #[serde(default)]
    pub every_builds: u32,
    /// Or when this many seconds passed since the last full run (0: never by time); the
    /// next build of queued changes is then a full run.
    #[serde(default)]
    pub interval_s: f64,
}

/// The commit gate and culprit finding.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GateConfig {
    /// A commit message containing this marks a fix, let through a closed gate (git's own
    /// `Revert "..."` subjects are always let through).
    #[serde(default = "default_fix_marker")]
    pub fix_marker: String,
    /// Bisect a red batch to name the change that broke it.
    #[serde(default = "default_true")]
    pub find_culprit: bool,
    /// Commit the revert of a found culprit to the branch (off by default).
    #[serde(default)]
    pub revert_culprit: bool,
    /// Whether a flaky test (failed, then passed on a retry) makes the build red, as
    /// nextest's `--flaky-result fail`. Off: it is reported flaky and the gate stays open.
    #[serde(default)]
    pub flaky_fails_build: bool,
}

fn default_fix_marker() -> String {
    "[fix]".to_owned()
}

fn default_true() -> bool {
    true
}

impl Default for GateConfig {
    fn default() -> GateConfig {
        GateConfig {
            fix_marker: default_fix_marker(),
            find_culprit: true,
            revert_culprit: false,
            flaky_fails_build: false,
        }
    }
}

/// The push stage: a command or a webhook, called once per green revision, newest first.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    /// A command (argv) run with `GREENLIGHT_REVISION`, `GREENLIGHT_BUILD_ID` and
    /// `GREENLIGHT_BRANCH` in its environment; exit 0 means pushed.
    #[serde(default)]
    pub command: Vec<String>,
    /// Or a URL that gets a JSON POST `{"revision", "build_id", "branch"}`; 2xx means pushed.
    #[serde(default)]
    pub webhook: Option<String>,
    /// Attempts before a push is reported failed.
    #[serde(default = "default_push_attempts")]
    pub attempts: u32,
    /// Seconds before the first retry; doubled for each next one.
    #[serde(default = "default_push_backoff_s")]
    pub backoff_s: f64,
}

impl Default for PushConfig {
    fn default() -> PushConfig {
        PushConfig {
            command: Vec::new(),
            webhook: None,
            attempts: default_push_attempts(),
            backoff_s: default_push_backoff_s(),
        }
    }
}

fn default_push_attempts() -> u32 {
    3
}

fn default_push_backoff_s() -> f64 {
    1.0
}

fn default_listen() -> String {
    "127.0.0.1:8080".to_owned()
}

fn default_max_body_bytes() -> usize {
    8 * 1024 * 1024
}

fn default_max_test_duration_s() -> f64 {
    // A day: no unit, functional or browser test runs longer, and 1e300 poisons a plan.
    86_400.0
}

fn default_max_output_bytes() -> usize {
    64 * 1024
}

fn default_max_archive_bytes() -> u64 {
    4 * 1024 * 1024 * 1024
}

/// The watched repository and branch.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    /// Anything `git clone` accepts; workers clone from it too.
    pub url: String,
    /// The branch to watch.
    #[serde(default = "default_branch")]
    pub branch: String,
    /// Seconds between polls of the branch.
    #[serde(default = "default_poll_interval_s")]
    pub poll_interval_s: f64,
}

fn default_branch() -> String {
    "main".to_owned()
}

fn default_poll_interval_s() -> f64 {
    10.0
}

/// How to list the tests of a revision and how to run a shard.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SuiteConfig {
    /// A suite file (DESIGN.md format) at this path in the repository.
    #[serde(default)]
    pub file: Option<String>,
    /// Or a command (argv) run in a checkout of the revision that prints the suite JSON.
    #[serde(default)]
    pub list_command: Vec<String>,
    /// Run once per revision on each worker before its first shard (argv).
    #[serde(default)]
    pub setup_command: Vec<String>,
    /// The shard command template (argv): `{ids_file}`, `{junit}`, `{ids}`, `{revision}`.
    /// Required by the `command` runner, unused by the others.
    #[serde(default)]
    pub run_command: Vec<String>,
    /// Environment for the setup and shard commands.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The runner adapter: `command` (the templates above), `pytest` or `nextest`. The
    /// latter two list the suite themselves unless `file` or `list_command` is given.
    #[serde(default)]
    pub runner: RunnerName,
    /// The runner's arguments, as for a direct run; the listing gets them all.
    /// pytest: a shard and its `reproduce` line get the options, not what selects tests
    /// (paths and node ids, every word after `--`, `-k`, `-m`, `--deselect`, `--ignore`,
    /// `--ignore-glob`: a shard names its node ids). A plugin's option followed by a
    /// word (`-n 4`, `--runslow tests`) is refused: write `-n4`, or the paths first.
    /// nextest: build options (`--workspace`, `-p`, features) go to the archive build,
    /// configuration options (`--config-file`) to every step, filters (`-E`,
    /// `--run-ignored`, names) to the listing only: a shard runs exactly the listed tests.
    #[serde(default)]
    pub runner_args: Vec<String>,
    /// The Python interpreter with pytest (`pytest` runner).
    #[serde(default = "default_python")]
    pub python: String,
    /// The cargo with cargo-nextest (`nextest` runner).
    #[serde(default = "default_cargo")]
    pub cargo: String,
    /// `pytest` runner: each worker keeps one pytest process per revision that collects
    /// once and runs shard after shard, reporting test by test (so its shards show their
    /// pace and can give back what they have not started). `false`: a new pytest process
    /// per shard, for suites whose tests must not share a process across shards.
    #[serde(default = "default_warm")]
    pub warm: bool,
    /// `pytest` runner listed on workers: a tag-selected build (or a probe) collects only
    /// the paths its tags name in the repository's `greenlight.toml` (and the files of
    /// what their tests depend on), in place of the paths `runner_args` names. `false`:
    /// every build collects everything `runner_args` names.
    #[serde(default = "default_narrow_listing")]
    pub narrow_listing: bool,
}

fn default_narrow_listing() -> bool {
    true
}

fn default_warm() -> bool {
    true
}

impl SuiteConfig {
    /// Whether shards run in a warm runner kept between shards (pytest with `warm`).
    pub fn warm_runner(&self) -> bool {
        self.warm && self.runner == RunnerName::Pytest
    }

    /// The environment as the wire carries it (leases, preparations, warm-ups).
    pub fn env_pairs(&self) -> Vec<(String, String)> {
        self.env.iter().map(|(key, value)| (key.clone(), value.clone())).collect()
    }
}

/// The runner adapters a configuration can name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunnerName {
    /// Any command writing JUnit XML, from `run_command`.
    #[default]
    Command,
    /// pytest by node id.
    Pytest,
    /// cargo-nextest, built once per revision.
    Nextest,
}

fn default_python() -> String {
    "python3".to_owned()
}

fn default_cargo() -> String {
    "cargo".to_owned()
}

impl SuiteConfig {
    /// The adapter the leases carry.
    pub fn runner(&self) -> Runner {
        match self.runner {
            RunnerName::Command => Runner::Command,
            RunnerName::Pytest => Runner::Pytest { python: self.python.clone(), args: self.runner_args.clone() },
            RunnerName::Nextest => Runner::Nextest { cargo: self.cargo.clone(), args: self.runner_args.clone() },
        }
    }

    /// A suite configuration running `run_command` on the suite file `file`.
    pub fn command(file: &str, run_command: Vec<String>) -> SuiteConfig {
        SuiteConfig {
            file: Some(file.to_owned()),
            list_command: Vec::new(),
            setup_command: Vec::new(),
            run_command,
            env: BTreeMap::new(),
            runner: RunnerName::Command,
            runner_args: Vec::new(),
            python: default_python(),
            cargo: default_cargo(),
            warm: default_warm(),
            narrow_listing: default_narrow_listing(),
        }
    }
}

/// Tagging of changes beyond the `Tags:` trailer.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TagsConfig {
    /// Glob over changed paths to tags, e.g. `"src/chat/**" = ["chat"]`.
    #[serde(default)]
    pub paths: BTreeMap<String, Vec<String>>,
}

/// Scheduler knobs.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerSection {
    /// Seconds without a heartbeat before a lease is taken back.
    #[serde(default = "default_lease_timeout_s")]
    pub lease_timeout_s: f64,
    /// Seconds between a worker's heartbeats.
    #[serde(default = "default_heartbeat_interval_s")]
    pub heartbeat_interval_s: f64,
    /// The least estimated work of a shard (seconds).
    #[serde(default)]
    pub min_shard_s: f64,
    /// The least work of a shard as a multiple of the suite's shard overhead.
    #[serde(default = "default_min_shard_overheads")]
    pub min_shard_overheads: f64,
    /// How uncertain a shard's end may grow, in shard overheads, before it is cut there:
    /// where shards cost next to nothing (a warm runner), workers come back for more
    /// rather than commit to tests behind a long one.
    #[serde(default = "default_uncertain_shard_overheads")]
    pub uncertain_shard_overheads: f64,
    /// The part of a worker's share held back for later, smaller shards.
    #[serde(default = "default_tail_fraction")]
    pub tail_fraction: f64,
    /// Leases of one test without a result (lost workers, crashed runners) before it is
    /// given up on: the build then ends in error.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Runs of a failed test on another worker before its failure counts.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Shards in a row a worker may lose to infrastructure before it is benched.
    #[serde(default = "default_infra_failures_to_bench")]
    pub infra_failures_to_bench: u32,
    /// Seconds a benched worker gets no work (doubled for each further failure).
    #[serde(default = "default_bench_s")]
    pub bench_s: f64,
    /// The most estimated work one shard may hold (seconds), however few workers are live.
    #[serde(default = "default_max_shard_s")]
    pub max_shard_s: f64,
    /// Whether a running shard may give back the tests it has not started, when it runs
    /// late, other workers would idle, a retry needs a place, or its machine shows itself
    /// slow (runners that report as they go: `command`, warm pytest, nextest).
    #[serde(default = "default_split_running_leases")]
    pub split_running_leases: bool,
    /// How many shards a build is cut into: `"fitted"` (the default: one a worker while the
    /// build's estimates can be trusted, late leases split to correct what runs long; cut
    /// finer for builds with new tests, estimates found off, or shards that cannot be
    /// split) or `"finer"` (two or three shards a worker, each paying the shard overhead).
    #[serde(default)]
    pub shard_sizing: ShardSizingName,
    /// Whether a worker runs a backup copy of a test that holds the build's end on a slow or
    /// stalled machine, or on one that has not run a test here yet (a farm's first build);
    /// the first result counts, the other run is stopped (its worker kills the runner; a
    /// warm one is started again) and recorded on its shard (`stopped`; the copy's shard
    /// has `copy_of`). Off by default.
    #[serde(default)]
    pub straggler_copies: bool,
}

/// The shard sizings a configuration can name (`[scheduler] shard_sizing`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardSizingName {
    /// One shard a worker where the estimates can be trusted, finer otherwise.
    #[default]
    Fitted,
    /// Two or three shards a worker, always.
    Finer,
}

fn default_split_running_leases() -> bool {
    true
}

fn default_max_shard_s() -> f64 {
    600.0
}

fn default_retries() -> u32 {
    1
}
fn default_infra_failures_to_bench() -> u32 {
    3
}
fn default_bench_s() -> f64 {
    60.0
}

fn default_lease_timeout_s() -> f64 {
    30.0
}
fn default_heartbeat_interval_s() -> f64 {
    5.0
}
fn default_min_shard_overheads() -> f64 {
    2.0
}
fn default_uncertain_shard_overheads() -> f64 {
    greenlight_scheduler::core::SchedulerConfig::default().uncertain_shard_overheads
}
fn default_tail_fraction() -> f64 {
    0.2
}
fn default_max_attempts() -> u32 {
    3
}

impl Default for SchedulerSection {
    fn default() -> SchedulerSection {
        SchedulerSection {
            lease_timeout_s: default_lease_timeout_s(),
            heartbeat_interval_s: default_heartbeat_interval_s(),
            min_shard_s: 0.0,
            min_shard_overheads: default_min_shard_overheads(),
            uncertain_shard_overheads: default_uncertain_shard_overheads(),
            tail_fraction: default_tail_fraction(),
            max_attempts: default_max_attempts(),
            retries: default_retries(),
            infra_failures_to_bench: default_infra_failures_to_bench(),
            bench_s: default_bench_s(),
            max_shard_s: default_max_shard_s(),
            split_running_leases: default_split_running_leases(),
            shard_sizing: ShardSizingName::default(),
            straggler_copies: false,
        }
    }
}

impl Config {
    /// Reads and checks a TOML file, taking the tokens it names from the environment.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let mut config: Config = toml::from_str(&text).map_err(|error| {
            if is_repository_file(&text) {
                return ConfigError::RepositoryFile { path: path.to_owned() };
            }
            // Every problem, each with its line and a did-you-mean, as `greenlight config check` says them.
            match check::check_text(&text) {
                (_, problems) if !problems.is_empty() => ConfigError::Problems { path: path.to_owned(), problems },
                _ => ConfigError::Parse { path: path.to_owned(), error: Box::new(error) },
            }
        })?;
        if let Some(problem) = config.take_tokens_from(|name| std::env::var(name).ok()).into_iter().next() {
            return Err(ConfigError::Invalid(problem));
        }
        config.validate()?;
        Ok(config)
    }

    /// Fills each token from the environment variable its `…_env` key names (`env` looks
    /// one up); the problems: a variable not set or empty, a token given both ways.
    pub fn take_tokens_from(&mut self, env: impl Fn(&str) -> Option<String>) -> Vec<String> {
        let mut problems = Vec::new();
        let mut take = |name: &str, token: &mut Option<String>, variable: &Option<String>| {
            let Some(variable) = variable else { return };
            if token.is_some() {
                problems.push(format!("{name} and {name}_env are both set: keep one"));
                return;
            }
            match env(variable) {
                Some(value) if !value.is_empty() => *token = Some(value),
                Some(_) => problems.push(format!("{name}_env: the environment variable {variable} is empty")),
                None => problems.push(format!("{name}_env: the environment variable {variable} is not set")),
            }
        };
        take("worker_token", &mut self.worker_token, &self.worker_token_env);
        take("admin_token", &mut self.admin_token, &self.admin_token_env);
        take("read_token", &mut self.read_token, &self.read_token_env);
        take("hook_token", &mut self.hook_token, &self.hook_token_env);
        for (name, worker) in &mut self.workers {
            take(&format!("[workers.{name}] token"), &mut worker.token, &worker.token_env);
        }
        take("[forge] token", &mut self.forge.token, &self.forge.token_env);
        take("[notify] slack_webhook", &mut self.notify.slack_webhook, &self.notify.slack_webhook_env);
        take("[notify] json_webhook", &mut self.notify.json_webhook, &self.notify.json_webhook_env);
        problems
    }

    /// A configuration with defaults for everything but these.
    pub fn new(data_dir: PathBuf, repository_url: String, suite: SuiteConfig) -> Config {
        Config {
            data_dir,
            listen: default_listen(),
            worker_token: None,
            worker_token_env: None,
            workers: BTreeMap::new(),
            admin_token: None,
            admin_token_env: None,
            read_token: None,
            read_token_env: None,
            hook_token: None,
            hook_token_env: None,
            max_body_bytes: default_max_body_bytes(),
            max_test_duration_s: default_max_test_duration_s(),
            max_output_bytes: default_max_output_bytes(),
            max_archive_bytes: default_max_archive_bytes(),
            repository: RepositoryConfig {
                url: repository_url,
                branch: default_branch(),
                poll_interval_s: default_poll_interval_s(),
            },
            suite,
            tags: TagsConfig::default(),
            scheduler: SchedulerSection::default(),
            gate: GateConfig::default(),
            push: PushConfig::default(),
            full_runs: FullRunsConfig::default(),
            quarantine: QuarantineConfig::default(),
            storage: StorageConfig::default(),
            public_url: None,
            forge: ForgeConfig::default(),
            notify: NotifyConfig::default(),
        }
    }

    /// Checks ranges and consistency: the first problem, if any.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.problems().into_iter().next() {
            Some(problem) => Err(ConfigError::Invalid(problem)),
            None => Ok(()),
        }
    }

    /// Every value out of range or inconsistent with another, each said once.
    pub fn problems(&self) -> Vec<String> {
        let mut problems: Vec<String> = Vec::new();
        let mut check = |holds: bool, message: &str| {
            if !holds {
                problems.push(message.to_owned());
            }
        };
        let positive = |value: f64| value.is_finite() && value > 0.0;
        let non_negative = |value: f64| value.is_finite() && value >= 0.0;
        check(positive(self.max_test_duration_s), "max_test_duration_s must be a number of seconds > 0");
        check(
            self.suite.file.is_none() || self.suite.list_command.is_empty(),
            "[suite] takes `file` or `list_command`, not both",
        );
        if self.suite.runner == RunnerName::Command {
            check(
                self.suite.file.is_some() || !self.suite.list_command.is_empty(),
                "[suite] needs exactly one of `file` and `list_command`",
            );
            check(!self.suite.run_command.is_empty(), "[suite] run_command is empty");
        }
        check(
            (0.0..=1.0).contains(&self.quarantine.flake_rate) && positive(self.quarantine.expires_in_s),
            "[quarantine] flake_rate must be within 0..=1 and expires_in_s > 0",
        );
        check(positive(self.scheduler.max_shard_s), "[scheduler] max_shard_s must be > 0");
        check(non_negative(self.scheduler.bench_s), "[scheduler] bench_s must be >= 0");
        check(positive(self.repository.poll_interval_s), "[repository] poll_interval_s must be > 0");
        let timings_positive =
            positive(self.scheduler.lease_timeout_s) && positive(self.scheduler.heartbeat_interval_s);
        check(timings_positive, "[scheduler] lease_timeout_s and heartbeat_interval_s must be > 0");
        check(
            !timings_positive || self.scheduler.heartbeat_interval_s < self.scheduler.lease_timeout_s,
            "[scheduler] heartbeat_interval_s must be shorter than lease_timeout_s",
        );
        check(
            non_negative(self.scheduler.min_shard_s) && non_negative(self.scheduler.min_shard_overheads),
            "[scheduler] min_shard_s and min_shard_overheads must be >= 0",
        );
        check(positive(self.scheduler.uncertain_shard_overheads), "[scheduler] uncertain_shard_overheads must be > 0");
        check(
            non_negative(self.scheduler.tail_fraction) && self.scheduler.tail_fraction < 1.0,
            "[scheduler] tail_fraction must be in [0, 1)",
        );
        check(self.scheduler.max_attempts > 0, "[scheduler] max_attempts must be at least 1");
        check(
            self.push.command.is_empty() || self.push.webhook.is_none(),
            "[push] takes a command or a webhook, not both",
        );
        check(
            self.push.attempts > 0 && non_negative(self.push.backoff_s),
            "[push] attempts must be at least 1 and backoff_s >= 0",
        );
        check(non_negative(self.full_runs.interval_s), "[full_runs] interval_s must be >= 0");
        check(non_negative(self.storage.keep_results_days), "[storage] keep_results_days must be >= 0");
        check(
            self.storage.reserve_bytes <= self.storage.min_free_bytes,
            "[storage] reserve_bytes must not exceed min_free_bytes",
        );
        check(!self.gate.fix_marker.trim().is_empty(), "[gate] fix_marker must not be empty");
        for (name, token) in
            [("worker_token", &self.worker_token), ("admin_token", &self.admin_token), ("read_token", &self.read_token)]
        {
            if token.as_deref().is_some_and(str::is_empty) {
                problems.push(format!("{name} is empty: remove it or set a secret"));
            }
        }
        let mut tokens: Vec<&str> = [&self.worker_token, &self.admin_token, &self.read_token, &self.hook_token]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        for (name, worker) in &self.workers {
            match worker.token.as_deref() {
                Some("") => problems.push(format!("[workers.{name}] token is empty: remove it or set a secret")),
                // A token shared with another worker or role would say nothing of who calls.
                Some(token) if tokens.contains(&token) => problems.push(format!(
                    "[workers.{name}] token is also another token of this configuration: give each its own"
                )),
                Some(token) => tokens.push(token),
                None => {}
            }
        }
        for pattern in self.tags.paths.keys() {
            if let Err(error) = globset::Glob::new(pattern) {
                problems.push(format!("[tags.paths] {pattern:?}: {error}"));
            }
        }
        problems.extend(self.delivery_problems());
        problems
    }

    /// What is wrong with the public URL, `[forge]` and `[notify]`.
    fn delivery_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut url = |name: &str, value: Option<&str>| {
            if let Some(value) = value
                && !(value.starts_with("http://") || value.starts_with("https://"))
            {
                problems.push(format!("{name} {value:?} must start with http:// or https://"));
            }
        };
        url("public_url", self.public_url.as_deref());
        url("[forge] api_url", self.forge.api_url.as_deref());
        // Webhook URLs may be secrets: named, never printed.
        for (name, value) in [
            ("[notify] slack_webhook", &self.notify.slack_webhook),
            ("[notify] json_webhook", &self.notify.json_webhook),
        ] {
            if value.as_deref().is_some_and(|value| !(value.starts_with("http://") || value.starts_with("https://"))) {
                problems.push(format!("{name} must be a URL starting with http:// or https://"));
            }
        }
        let notifies = self.forge.kind.is_some()
            || [
                &self.notify.slack_webhook,
                &self.notify.slack_webhook_env,
                &self.notify.json_webhook,
                &self.notify.json_webhook_env,
            ]
            .iter()
            .any(|value| value.is_some());
        let listens_everywhere =
            self.listen.parse::<std::net::SocketAddr>().is_ok_and(|address| address.ip().is_unspecified());
        if notifies && self.public_url.is_none() && listens_everywhere {
            problems.push(format!(
                "public_url is unset and listen is {}: statuses and notifications would link there; \
                 set public_url to the address people open the page at",
                self.listen
            ));
        }
        let forge = &self.forge;
        let positive_backoff = |backoff_s: f64| backoff_s.is_finite() && backoff_s >= 0.0;
        if forge.attempts == 0 || !positive_backoff(forge.backoff_s) {
            problems.push("[forge] attempts must be at least 1 and backoff_s >= 0".to_owned());
        }
        if self.notify.attempts == 0 || !positive_backoff(self.notify.backoff_s) {
            problems.push("[notify] attempts must be at least 1 and backoff_s >= 0".to_owned());
        }
        let Some(kind) = forge.kind else {
            if forge.api_url.is_some() || forge.repository.is_some() {
                problems.push("[forge] needs `kind` (github, gitlab or gitea) to post statuses".to_owned());
            }
            return problems;
        };
        if forge.api_url.is_none() && kind.default_api_url().is_none() {
            problems.push("[forge] kind = \"gitea\" needs api_url (e.g. \"https://gitea.example/api/v1\")".to_owned());
        }
        match forge.repository.as_deref() {
            None | Some("") => {
                problems.push("[forge] needs `repository` (owner/name; GitLab: the project's path or id)".to_owned())
            }
            Some(repository)
                if kind != ForgeKind::Gitlab && repository.split('/').filter(|part| !part.is_empty()).count() != 2 =>
            {
                problems.push(format!("[forge] repository {repository:?} must be owner/name"))
            }
            Some(_) => {}
        }
        if forge.token.as_deref().is_none_or(str::is_empty) && forge.token_env.is_none() {
            problems.push("[forge] needs a token: token_env = \"VARIABLE\" (or token)".to_owned());
        }
        if forge.context.trim().is_empty() {
            problems.push("[forge] context must not be empty".to_owned());
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_full_file_and_rejects_nonsense() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("greenlight-master.toml");
        std::fs::write(
            &path,
            r#"
data_dir = "/tmp/g"
[repository]
url = "/srv/repo"
[suite]
file = "suite.json"
run_command = ["run", "{ids_file}"]
[tags.paths]
"src/chat/**" = ["chat"]
"#,
        )
        .unwrap();
        let config = Config::from_file(&path).unwrap();
        assert_eq!(config.repository.branch, "main");
        assert_eq!(config.tags.paths["src/chat/**"], vec!["chat".to_owned()]);

        std::fs::write(&path, "data_dir = 3\n").unwrap();
        assert!(Config::from_file(&path).unwrap_err().to_string().contains("invalid type"));

        std::fs::write(&path, "data_dir = \"/x\"\n[repository]\nurl = \"u\"\n[suite]\nrun_command = [\"r\"]\n")
            .unwrap();
        assert_eq!(
            Config::from_file(&path).unwrap_err().to_string(),
            "invalid configuration: [suite] needs exactly one of `file` and `list_command`"
        );
    }

    #[test]
    fn a_worker_may_have_a_token_of_its_own_that_is_no_other_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("greenlight-master.toml");
        let base = "data_dir = \"/x\"\nworker_token = \"shared\"\n[repository]\nurl = \"u\"\n[suite]\nfile = \"s.json\"\nrun_command = [\"r\"]\n";
        let with = |workers: &str| {
            std::fs::write(&path, format!("{base}{workers}")).unwrap();
            Config::from_file(&path)
        };
        let config = with("[workers.box-17]\ntoken = \"own\"\n[workers.box-18]\n").unwrap();
        assert_eq!((config.own_worker_token("box-17"), config.own_worker_token("box-18")), (Some("own"), None));
        assert_eq!(config.own_worker_token("box-19"), None);
        let refused = |workers: &str, expected: &str| {
            let error = with(workers).unwrap_err().to_string();
            assert!(error.contains(expected), "{workers}: {error}");
        };
        refused("[workers.a]\ntoken = \"\"\n", "[workers.a] token is empty");
        refused("[workers.a]\ntoken = \"shared\"\n", "[workers.a] token is also another token");
        refused("[workers.a]\ntoken = \"t\"\n[workers.b]\ntoken = \"t\"\n", "[workers.b] token is also another token");
        refused("[workers.a]\npassword = \"t\"\n", "line 9: [workers.a] unknown key `password`");
    }

    #[test]
    fn storage_floors_default_and_the_reserve_stays_under_the_floor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("greenlight-master.toml");
        let base = "data_dir = \"/x\"\n[repository]\nurl = \"u\"\n[suite]\nfile = \"s.json\"\nrun_command = [\"r\"]\n";
        std::fs::write(&path, base).unwrap();
        let storage = Config::from_file(&path).unwrap().storage;
        assert_eq!((storage.min_free_bytes, storage.reserve_bytes), (1 << 30, 64 << 20));
        assert_eq!(storage.cache_bytes, 32 << 20, "a small cache, not sled's 1 GiB");
        assert_eq!(storage.keep_results_builds, 500);
        std::fs::write(
            &path,
            format!("{base}[storage]\nmin_free_bytes = 0\nreserve_bytes = 0\ncache_bytes = 8388608\n"),
        )
        .unwrap();
        let storage = Config::from_file(&path).unwrap().storage;
        assert_eq!(storage.min_free_bytes, 0, "no floor at all");
        assert_eq!(storage.cache_bytes, 8 << 20);
        std::fs::write(&path, format!("{base}[storage]\nmin_free_bytes = 100\nreserve_bytes = 200\n")).unwrap();
        assert_eq!(
            Config::from_file(&path).unwrap_err().to_string(),
            "invalid configuration: [storage] reserve_bytes must not exceed min_free_bytes"
        );
        std::fs::write(&path, format!("{base}[storage]\nkeep_results_days = -1.0\n")).unwrap();
        assert_eq!(
            Config::from_file(&path).unwrap_err().to_string(),
            "invalid configuration: [storage] keep_results_days must be >= 0"
        );
    }

    #[test]
    fn the_scheduler_section_sets_the_shard_sizing_and_straggler_copies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("greenlight.toml");
        let base = "data_dir = \"/x\"\n[repository]\nurl = \"u\"\n[suite]\nfile = \"s.json\"\nrun_command = [\"r\"]\n";
        std::fs::write(&path, base).unwrap();
        let scheduler = Config::from_file(&path).unwrap().scheduler;
        assert_eq!((scheduler.shard_sizing, scheduler.straggler_copies), (ShardSizingName::Fitted, false));
        std::fs::write(&path, format!("{base}[scheduler]\nshard_sizing = \"finer\"\nstraggler_copies = true\n"))
            .unwrap();
        let scheduler = Config::from_file(&path).unwrap().scheduler;
        assert_eq!((scheduler.shard_sizing, scheduler.straggler_copies), (ShardSizingName::Finer, true));
        std::fs::write(&path, format!("{base}[scheduler]\nshard_sizing = \"fitted\"\n")).unwrap();
        assert_eq!(Config::from_file(&path).unwrap().scheduler.shard_sizing, ShardSizingName::Fitted);
        std::fs::write(&path, format!("{base}[scheduler]\nshard_sizing = \"coarse\"\n")).unwrap();
        let error = Config::from_file(&path).unwrap_err().to_string();
        assert!(error.contains("unknown variant `coarse`, expected `fitted` or `finer`"), "{error}");
        std::fs::write(&path, format!("{base}[scheduler]\nstraggler_copies = \"yes\"\n")).unwrap();
        assert!(Config::from_file(&path).unwrap_err().to_string().contains("invalid type"));
    }

    #[test]
    fn forge_and_notify_keys_are_checked_and_their_secrets_come_from_the_environment() {
        let base = "data_dir = \"/x\"\n[repository]\nurl = \"u\"\n[suite]\nfile = \"s.json\"\nrun_command = [\"r\"]\n";
        let env = |name: &str| (name == "FORGE_TOKEN" || name == "SLACK_URL").then(|| format!("value of {name}"));
        let load = |extra: &str| -> Result<Config, Vec<String>> {
            let (config, mut problems) = check::check_text(&format!("{base}{extra}"));
            let Some(mut config) = config else { return Err(problems) };
            problems.extend(config.take_tokens_from(env));
            if problems.is_empty() { Ok(config) } else { Err(problems) }
        };
        let config = load(
            "[forge]\nkind = \"github\"\nrepository = \"acme/product\"\ntoken_env = \"FORGE_TOKEN\"\n\
             [notify]\nslack_webhook_env = \"SLACK_URL\"\n",
        )
        .unwrap();
        assert_eq!(config.forge.api_root().as_deref(), Some("https://api.github.com"));
        assert_eq!(config.forge.token.as_deref(), Some("value of FORGE_TOKEN"));
        assert_eq!(config.notify.slack_webhook.as_deref(), Some("value of SLACK_URL"));
        assert_eq!(config.forge.context, "greenlight");
        let gitlab = load(
            "[forge]\nkind = \"gitlab\"\napi_url = \"https://gitlab.example/api/v4/\"\nrepository = \"group/sub/p\"\ntoken = \"t\"\n",
        )
        .unwrap();
        assert_eq!(gitlab.forge.api_root().as_deref(), Some("https://gitlab.example/api/v4"));
        let refused = |extra: &str, expected: &str| {
            let problems = load(extra).unwrap_err();
            assert!(problems.iter().any(|problem| problem.contains(expected)), "{extra}: {problems:?}");
        };
        refused(
            "[forge]\nkind = \"bitbucket\"\n",
            "unknown variant `bitbucket`, expected one of `github`, `gitlab`, `gitea`",
        );
        refused(
            "[forge]\nkind = \"gitea\"\nrepository = \"a/b\"\ntoken = \"t\"\n",
            "[forge] kind = \"gitea\" needs api_url",
        );
        refused(
            "[forge]\nkind = \"gitea\"\napi_url = \"gitea.example/api/v1\"\nrepository = \"a/b\"\ntoken = \"t\"\n",
            "[forge] api_url \"gitea.example/api/v1\" must start with http:// or https://",
        );
        refused("[forge]\nkind = \"github\"\nrepository = \"product\"\ntoken = \"t\"\n", "must be owner/name");
        refused("[forge]\nkind = \"github\"\nrepository = \"a/b\"\n", "[forge] needs a token");
        refused(
            "[forge]\nkind = \"github\"\nrepository = \"a/b\"\ntoken_env = \"UNSET_FORGE_TOKEN\"\n",
            "[forge] token_env: the environment variable UNSET_FORGE_TOKEN is not set",
        );
        refused("[forge]\nrepository = \"a/b\"\n", "[forge] needs `kind`");
        let (_, problems) = check::check_text(&format!("public_url = \"greenlight.example\"\n{base}"));
        assert_eq!(problems, ["public_url \"greenlight.example\" must start with http:// or https://"]);
        let problems = load("[notify]\nslack_webhook = \"hooks.slack.com/services/SECRET\"\n").unwrap_err();
        assert_eq!(problems, ["[notify] slack_webhook must be a URL starting with http:// or https://"]);
        refused("[notify]\nattempts = 0\n", "[notify] attempts must be at least 1");
        let (_, problems) = check::check_text(&format!(
            "listen = \"0.0.0.0:8080\"\n{base}[notify]\njson_webhook = \"https://ops.example/hook\"\n"
        ));
        assert_eq!(
            problems,
            ["public_url is unset and listen is 0.0.0.0:8080: statuses and notifications would link there; \
              set public_url to the address people open the page at"]
        );
        let (_, problems) = check::check_text(&format!(
            "listen = \"0.0.0.0:8080\"\npublic_url = \"http://ci.example:8080\"\n{base}[notify]\njson_webhook = \"https://ops.example/hook\"\n"
        ));
        assert_eq!(problems, Vec::<String>::new());
    }

    #[test]
    fn a_runner_adapter_needs_no_templates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("greenlight-master.toml");
        let base = "data_dir = \"/x\"\n[repository]\nurl = \"u\"\n[suite]\n";
        std::fs::write(
            &path,
            format!("{base}runner = \"pytest\"\npython = \"/venv/bin/python\"\nrunner_args = [\"tests\"]\n"),
        )
        .unwrap();
        let config = Config::from_file(&path).unwrap();
        assert_eq!(
            config.suite.runner(),
            Runner::Pytest { python: "/venv/bin/python".into(), args: vec!["tests".into()] }
        );
        std::fs::write(&path, format!("{base}runner = \"nextest\"\n")).unwrap();
        assert_eq!(
            Config::from_file(&path).unwrap().suite.runner(),
            Runner::Nextest { cargo: "cargo".into(), args: vec![] }
        );
        std::fs::write(&path, format!("{base}runner = \"jest\"\n")).unwrap();
        assert!(Config::from_file(&path).unwrap_err().to_string().contains("unknown variant `jest`"));
        std::fs::write(&path, format!("{base}runner = \"command\"\nfile = \"s.json\"\n")).unwrap();
        assert_eq!(
            Config::from_file(&path).unwrap_err().to_string(),
            "invalid configuration: [suite] run_command is empty"
        );
    }
}
