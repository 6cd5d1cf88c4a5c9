//! Planning: the suite at a revision (read from git, listed by the configured list
//! command in the master's checkout, or listed by the runner adapter on a worker that
//! prepared the revision: see [`super::preparations`]), validated into a DAG, the tests selected by tags (or by id for a
//! probe or a resumed build), estimated from history, and the learned shard overhead.
//! All of it is blocking work, run before the farm's lock is taken. The suites of the
//! last few revisions a test's history asked for are kept parsed ([`SuiteCache`]).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, MutexGuard, PoisonError};

use greenlight_scheduler::estimate::{estimate, median};
use greenlight_scheduler::plan::BuildPlan;
use greenlight_scheduler::select::{ALWAYS, select, select_ids};
use greenlight_scheduler::suite::{Suite, SuiteError};
use greenlight_shared::api::BuildSummary;
use greenlight_shared::git::GitError;
use greenlight_shared::runner::{
    ListError, PYTEST_CONFIG_FILES, REPOSITORY_FILE, Runner, collection_paths, pytest_default_paths, test_paths,
};
use greenlight_shared::suite::{SuiteFile, SuiteFileError};

use super::Farm;
use super::preparations::Listing;
use crate::config::RunnerName;
use crate::store::StoreError;

/// Why a revision could not be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The suite could not be read at the revision.
    #[error("cannot read the suite: {0}")]
    Git(#[from] GitError),
    /// The configured suite file is not in the repository at the revision.
    #[error("the suite file {path:?} ([suite] file) is not in the repository at {revision}: {fix}")]
    SuiteFileMissing {
        /// `[suite] file`.
        path: String,
        /// The revision read.
        revision: String,
        /// What to do about it, for the configured runner.
        fix: &'static str,
    },
    /// The list command failed.
    #[error("suite list command failed: {0}")]
    ListCommand(String),
    /// The runner's listing on a worker failed.
    #[error("the suite cannot be listed: {0}")]
    Listing(String),
    /// No worker has listed the revision yet.
    #[error("the revision {0} is not listed yet (a worker is to prepare it)")]
    NotPrepared(String),
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

/// What a suite's shards cost besides their tests, learned from earlier shards.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LearnedCosts {
    /// What every shard pays: the median of recent shards that were not their worker's
    /// first of a build (of first shards, when there are no others yet).
    pub overhead_s: Option<f64>,
    /// What a worker's first shard of a build pays on top: checkout, setup, a kept
    /// runner's start-up.
    pub startup_s: Option<f64>,
    /// How many shards the figures come from.
    pub samples: usize,
}

impl Farm {
    /// The plan of an interrupted build: its stored selection at its revision.
    pub(super) fn replan(&self, build: &BuildSummary) -> Result<BuildPlan, PlanError> {
        let selected = self
            .store
            .selection(build.build_id)?
            .ok_or_else(|| PlanError::ListCommand("its selection was not stored".to_owned()))?;
        let suite = self.suite_at(&Listing::of(build))?;
        let indices = select_ids(&suite, selected.iter().map(String::as_str));
        self.plan_selected(&suite, &indices)
    }

    /// The suite of a listing, validated.
    fn suite_at(&self, listing: &Listing) -> Result<Suite, PlanError> {
        Ok(Suite::new(self.suite_file_at(listing)?)?)
    }

    /// The suite file of a listing (its paths matter only to a suite listed on workers), as
    /// read or listed (not validated).
    pub(super) fn suite_file_at(&self, listing: &Listing) -> Result<SuiteFile, PlanError> {
        let revision = listing.revision.as_str();
        Ok(match &self.config.suite.file {
            Some(path) => SuiteFile::from_json(&self.mirror.read_file(revision, path).map_err(|error| {
                if !self.mirror.lacks_file(revision, path) {
                    return PlanError::Git(error);
                }
                let fix = match self.config.suite.runner {
                    RunnerName::Command => "commit it, or set [suite] list_command instead of `file`",
                    RunnerName::Pytest | RunnerName::Nextest => {
                        "commit it, or remove `file` from [suite] to have the runner list the tests itself"
                    }
                };
                PlanError::SuiteFileMissing { path: path.clone(), revision: revision.to_owned(), fix }
            })?)?,
            None if self.config.suite.list_command.is_empty() => self.listed_on_a_worker(listing)?,
            None => SuiteFile::from_json(&self.list_suite(revision)?)?,
        })
    }

    /// The suite as the runner adapter listed it on the worker that prepared it.
    fn listed_on_a_worker(&self, listing: &Listing) -> Result<SuiteFile, PlanError> {
        if let Some(suite) = self.store.listing(&listing.revision, &listing.paths)? {
            return Ok(suite);
        }
        match self.listing_failure(listing) {
            Some(message) => Err(PlanError::Listing(message)),
            None => Err(PlanError::NotPrepared(listing.revision.clone())),
        }
    }

    /// What a build of `revision` selecting `tags` lists: where the suite is listed on
    /// workers by pytest (`[suite] narrow_listing`), only the paths at the revision that
    /// the prefixes of the tags (and `always`) in the repository's `greenlight.toml` begin,
    /// and the files of what their tests depend on, if the runner's arguments can be
    /// narrowed to them (the paths they name, or else pytest's `testpaths` or the
    /// checkout); else the whole suite. A listing kept that holds those paths (the whole
    /// one) serves it. Blocking (git).
    pub(super) fn listing_for_tags(&self, revision: &str, tags: &BTreeSet<String>) -> Listing {
        if tags.is_empty() {
            return Listing::whole(revision);
        }
        let mut tags = tags.clone();
        tags.insert(ALWAYS.to_owned());
        self.narrowed_listing(revision, |file, entries| collection_paths(file, &tags, entries))
    }

    /// What a probe re-running `tests` at `revision` lists: the files of the tests and of
    /// what they depend on, as [`Farm::listing_for_tags`] does. Blocking (git).
    pub(super) fn listing_for_tests(&self, revision: &str, tests: &[String]) -> Listing {
        self.narrowed_listing(revision, |file, entries| test_paths(file, tests, entries))
    }

    /// `paths` of the revision's `greenlight.toml` (and its tree), narrowing the runner.
    /// A path the revision lacks holds no test: it is left out.
    fn narrowed_listing(
        &self,
        revision: &str,
        paths: impl FnOnce(Option<&str>, &dyn Fn(&str) -> Vec<String>) -> Result<Option<Vec<String>>, ListError>,
    ) -> Listing {
        let whole = Listing::whole(revision);
        let suite = &self.config.suite;
        // PYTEST_ADDOPTS may name paths of its own.
        if !suite.narrow_listing || !self.lists_on_workers() || suite.env.contains_key("PYTEST_ADDOPTS") {
            return whole;
        }
        let file = match self.mirror.read_file_if_any(revision, REPOSITORY_FILE) {
            Ok(bytes) => bytes.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
            Err(error) => {
                tracing::warn!(revision, %error, "cannot read {REPOSITORY_FILE}: the whole suite is listed");
                return whole;
            }
        };
        // A directory git cannot list must not look empty: its tests would go missing.
        let unlisted = std::cell::Cell::new(false);
        let entries = |directory: &str| {
            self.mirror.entries(revision, directory).unwrap_or_else(|error| {
                tracing::warn!(revision, directory, %error, "cannot list a directory: the whole suite is listed");
                unlisted.set(true);
                Vec::new()
            })
        };
        // A file that does not parse fails the listing itself, with the reason.
        let Ok(Some(mut paths)) = paths(file.as_deref(), &entries) else { return whole };
        if unlisted.get() {
            return whole;
        }
        paths.retain(|path| !self.mirror.lacks_file(revision, path));
        // pytest collects a file named on its command line whatever `python_files` says
        // (`tests/chat` begins `tests/chat_helpers.py` too): only a file it would collect
        // by itself may be named.
        let pytest = PytestConfiguration::read(self, revision);
        let python_files = pytest.may_set("python_files");
        if let Some(file) = paths
            .iter()
            .find(|path| !self.mirror.is_directory(revision, path) && (python_files || !is_default_test_file(path)))
        {
            tracing::info!(revision, file, "pytest would not collect the file by itself: the whole suite is listed");
            return whole;
        }
        let unnamed = pytest.unnamed_paths();
        let Some(paths) = suite.runner().narrowed_paths(&paths, unnamed.as_deref()) else {
            return whole;
        };
        // A listing kept that holds them serves them, and the workers' runners that
        // collected it (a probe at a red tag-selected build's revision).
        let paths = self.store.covering_listing(revision, &paths).ok().flatten().unwrap_or(paths);
        Listing { revision: revision.to_owned(), paths }
    }

    /// The suite as the configured list command prints it in a checkout of `revision`.
    fn list_suite(&self, revision: &str) -> Result<Vec<u8>, PlanError> {
        let _checkout = self.checkout_lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let checkout = self.config.data_dir.join("checkout");
        self.mirror.checkout(revision, &checkout, &[])?;
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

    /// The store key of the suite's learned shard overhead (a farm runs one suite).
    pub(super) fn overhead_key(&self) -> String {
        format!("{}#{}", self.config.repository.url, self.config.repository.branch)
    }

    /// What the suite's shards cost besides their tests, as learned from real shards (the
    /// medians of recent samples, so one slow shard does not move them).
    pub fn learned_shard_costs(&self) -> Result<LearnedCosts, StoreError> {
        let mut first = self.store.shard_costs(&self.overhead_key(), true)?;
        let mut later = self.store.shard_costs(&self.overhead_key(), false)?;
        let samples = first.len() + later.len();
        let first = median(&mut first);
        // With only first shards seen, every shard is assumed to pay what they paid.
        let overhead_s = median(&mut later).or(first);
        let startup_s = first.zip(overhead_s).map(|(first, overhead)| (first - overhead).max(0.0));
        Ok(LearnedCosts { overhead_s, startup_s, samples })
    }

    /// A plan re-running `tests` (those the suite has at `revision`) with their dependencies.
    pub(super) fn plan_probe(&self, listing: &Listing, tests: &[String]) -> Result<BuildPlan, PlanError> {
        let suite = self.suite_at(listing)?;
        let selected = select_ids(&suite, tests.iter().map(String::as_str));
        self.plan_selected(&suite, &selected)
    }

    /// Reads, validates and plans a listing's suite for `tags` (empty: everything).
    pub(super) fn plan(&self, listing: &Listing, tags: &BTreeSet<String>) -> Result<BuildPlan, PlanError> {
        let suite = self.suite_at(listing)?;
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
        // test as it ends: a command writing JUnit as it goes, the warm pytest runner, or
        // nextest's event stream (pytest run cold writes its report at exit).
        let runner = self.config.suite.runner();
        plan.leases_splittable =
            runner == Runner::Command || runner.streams_events() || self.config.suite.warm_runner();
        // A lease may hold a dependency chain whole only where the worker feeds its runner one
        // test at a time and can hold a test back when its prerequisite fails: the warm
        // pytest runner. Elsewhere the shard is one process that would run it anyway.
        plan.chains_in_lease = self.config.suite.warm_runner();
        // What real shards of this suite cost beats what its file declares.
        let learned = self.learned_shard_costs()?;
        if let Some(overhead_s) = learned.overhead_s {
            plan.shard_overhead_s = overhead_s;
        }
        plan.worker_startup_s = learned.startup_s.unwrap_or(0.0);
        Ok(plan)
    }
}

/// What pytest may read for its configuration at a revision: the runner's arguments and
/// the configuration files at the checkout's root, each read once.
struct PytestConfiguration<'a> {
    args: &'a [String],
    /// Each of [`PYTEST_CONFIG_FILES`]: its text, `Some(None)` where there is none, `None`
    /// where git could not read it.
    files: Vec<(&'static str, Option<Option<String>>)>,
}

impl<'a> PytestConfiguration<'a> {
    /// Blocking (git).
    fn read(farm: &'a Farm, revision: &str) -> PytestConfiguration<'a> {
        let files = PYTEST_CONFIG_FILES
            .into_iter()
            .map(|name| {
                let text = farm.mirror.read_file_if_any(revision, name).ok();
                (name, text.map(|bytes| bytes.map(|bytes| String::from_utf8_lossy(&bytes).into_owned())))
            })
            .collect();
        PytestConfiguration { args: &farm.config.suite.runner_args, files }
    }

    /// Whether the arguments name a configuration file of their own (`-c`, `--config-file`).
    fn names_another_file(&self) -> bool {
        self.args.iter().any(|arg| arg.starts_with("-c") || arg.starts_with("--config-file"))
    }

    /// Whether pytest may be configured with `option` (`python_files`): the arguments or a
    /// configuration file mention it, one cannot be read, or the arguments name another.
    fn may_set(&self, option: &str) -> bool {
        self.names_another_file()
            || self.args.iter().any(|arg| arg.contains(option))
            || self.files.iter().any(|(_, text)| match text {
                Some(Some(text)) => text.contains(option),
                Some(None) => false,
                None => true,
            })
    }

    /// What pytest collects when no path is named: its `testpaths`, else the checkout
    /// ([`pytest_default_paths`]). `None` where that is not known: the arguments set
    /// `testpaths` or name another configuration file, or a file cannot be read.
    fn unnamed_paths(&self) -> Option<Vec<String>> {
        if self.names_another_file() || self.args.iter().any(|arg| arg.contains("testpaths")) {
            return None;
        }
        pytest_default_paths(&|name: &str| {
            self.files.iter().find(|(file, _)| *file == name).map_or(Some(None), |(_, text)| text.clone())
        })
    }
}

/// Whether pytest's default `python_files` (`test_*.py`, `*_test.py`) take the file.
fn is_default_test_file(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.ends_with(".py") && (name.starts_with("test_") || name.ends_with("_test.py"))
}

/// How many revisions' suites [`SuiteCache`] keeps.
const CACHED_SUITES: usize = 4;

/// The suite files of the last few listings read for a test's history, parsed once: a
/// suite is megabytes of JSON read from git (or listed), and a revision's never changes.
#[derive(Default)]
pub(super) struct SuiteCache {
    /// The most recently used last.
    suites: VecDeque<(Listing, Arc<SuiteFile>)>,
}

impl SuiteCache {
    fn get(&mut self, listing: &Listing) -> Option<Arc<SuiteFile>> {
        let at = self.suites.iter().position(|(cached, _)| cached == listing)?;
        let entry = self.suites.remove(at)?;
        let suite = Arc::clone(&entry.1);
        self.suites.push_back(entry);
        Some(suite)
    }

    fn insert(&mut self, listing: &Listing, suite: Arc<SuiteFile>) {
        self.suites.retain(|(cached, _)| cached != listing);
        if self.suites.len() == CACHED_SUITES {
            self.suites.pop_front();
        }
        self.suites.push_back((listing.clone(), suite));
    }
}

impl Farm {
    /// The suite file of a listing, as [`Farm::suite_file_at`] reads it, from the cache
    /// when it was read lately. Blocking (git): call it off the async threads.
    pub(super) fn cached_suite_file_at(&self, listing: &Listing) -> Result<Arc<SuiteFile>, PlanError> {
        if let Some(suite) = self.suite_cache().get(listing) {
            return Ok(suite);
        }
        // Read with the cache unlocked: no reader waits on another's git.
        let suite = Arc::new(self.suite_file_at(listing)?);
        self.suite_cache().insert(listing, Arc::clone(&suite));
        Ok(suite)
    }

    fn suite_cache(&self) -> MutexGuard<'_, SuiteCache> {
        self.suites.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
