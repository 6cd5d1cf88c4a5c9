//! What the read-only API and the page read: builds (live while they run), shards,
//! results, a test's history, changes, workers, the gate and the push queue. Reads of many
//! builds or of git happen outside the lock; the lock is taken only to look at live state.

use greenlight_scheduler::core::{BuildId, WorkerId};
use greenlight_shared::API_VERSION;
use greenlight_shared::api::{
    BuildDetail, BuildState, BuildSummary, BuildTests, ChangeView, GateView, MAX_RESULTS_PAGE, PushView, ResultsQuery,
    ShardView, TestHistory, TestResultView, TestRun, TestStatus, WorkerView,
};

use super::preparations::Listing;
use super::{Farm, FarmError};
use crate::push;

impl Farm {
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
        let now = self.now();
        let (live, remaining_s) = {
            let core = self.core();
            let shards: Option<Vec<ShardView>> =
                core.running.get(&build_id).map(|live| live.shards.values().cloned().collect());
            let end = core.scheduler.projected_end(BuildId(build_id), now);
            (shards, end.map(|end| (end - now).max(0.0)))
        };
        let mut shards = match live {
            Some(shards) => shards,
            None => self.store.shards(build_id)?,
        };
        for shard in &mut shards {
            self.write_reproduce(shard, &build.revision);
            if !with_test_ids {
                shard.test_ids = Vec::new();
            }
        }
        Ok(BuildDetail { build, shards, remaining_s })
    }

    /// Fills in a shard's reproduce line from its test ids (a shard an older master
    /// stored has its own).
    fn write_reproduce(&self, shard: &mut ShardView, revision: &str) {
        if shard.reproduce.is_empty() {
            let suite = &self.config.suite;
            shard.reproduce =
                suite.runner().reproduce(&suite.setup_command, &suite.run_command, &shard.test_ids, revision);
        }
    }

    /// One shard of a build, with its test ids.
    pub fn shard(&self, build_id: u64, lease_id: u64) -> Result<Option<ShardView>, FarmError> {
        let build = self.build_summary(build_id)?;
        let live = self.core().running.get(&build_id).map(|live| live.shards.get(&lease_id).cloned());
        let shard = match live {
            Some(shard) => shard,
            None => self.store.shard(build_id, lease_id)?,
        };
        Ok(shard.map(|mut shard| {
            self.write_reproduce(&mut shard, &build.revision);
            shard
        }))
    }

    /// One test across the newest `n_builds` builds: outcomes, durations, flake rate, and
    /// its tags and dependencies from the suite at the newest of those builds' revisions
    /// that listed it whole (else the newest).
    /// Blocking (git, many builds): call it off the async threads.
    pub fn test_history(&self, test_id: &str, n_builds: usize) -> Result<TestHistory, FarmError> {
        let builds = self.builds(n_builds)?;
        let mut runs = Vec::new();
        for build in &builds {
            let attempts = self.store.results_of_test(build.build_id, test_id)?;
            let Some(last) = attempts.last() else { continue };
            let output = attempts.iter().rev().find(|result| result.status.is_failure()).and_then(|r| r.output.clone());
            runs.push(TestRun {
                build_id: build.build_id,
                revision: build.revision.clone(),
                created_at: build.created_at,
                status: last.status,
                duration_s: last.duration_s,
                attempts: attempts.len() as u32,
                flaky: last.flaky,
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
        // The newest whole suite names every test and whatever depends on it; a
        // tag-selected build's listing may hold neither.
        let listed = builds.iter().filter(|build| build.state != BuildState::Error);
        let listing =
            listed.clone().find(|build| build.collected.is_empty()).or_else(|| listed.clone().next()).map(Listing::of);
        if let Some(suite) = listing.and_then(|listing| self.cached_suite_file_at(&listing).ok()) {
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
        if self.store.results_pruned(build_id)? {
            return Err(FarmError::ResultsPruned(build_id));
        }
        Ok(BuildTests { version: API_VERSION, build_id, results: self.store.results(build_id)?, next_cursor: None })
    }

    /// The page of a build's stored results that `page` asks for, with the cursor of the
    /// next if there are more. Blocking (decodes up to a whole build): call it off the
    /// async threads.
    pub fn build_tests_page(&self, build_id: u64, page: &ResultsPage) -> Result<BuildTests, FarmError> {
        self.build_summary(build_id)?;
        if self.store.results_pruned(build_id)? {
            return Err(FarmError::ResultsPruned(build_id));
        }
        let limit = page.limit.unwrap_or(usize::MAX);
        let after = page.after.as_ref().map(|cursor| (cursor.test_id.as_str(), cursor.attempt));
        // One more than the page, to know whether another follows.
        let mut results =
            self.store.results_after(build_id, after, limit.saturating_add(1), |result| page.accepts(result))?;
        let next_cursor = if results.len() > limit {
            results.truncate(limit);
            results.last().map(|last| ResultsCursor::after(last).encode())
        } else {
            None
        };
        Ok(BuildTests { version: API_VERSION, build_id, results, next_cursor })
    }

    /// The newest changes, newest first.
    pub fn changes(&self, limit: usize) -> Result<Vec<ChangeView>, FarmError> {
        Ok(self.store.latest_changes(limit)?)
    }

    /// Tests of running builds no lease holds yet, and their estimated seconds (the
    /// scheduler's).
    pub fn queued(&self) -> (usize, f64) {
        self.core().scheduler.queued()
    }

    /// The workers the master knows: who they are and when they were last heard (the
    /// farm's registry), what they hold and whether they are benched (the scheduler's).
    pub fn workers(&self) -> Vec<WorkerView> {
        let now = self.now();
        let mut core = self.core();
        let core = &mut *core;
        core.workers
            .iter()
            .map(|(&worker_id, registration)| {
                let lease = core.scheduler.worker_lease(WorkerId(worker_id));
                let slowness = core.scheduler.worker_slowness(WorkerId(worker_id));
                WorkerView {
                    worker_id,
                    name: registration.name.clone(),
                    lease_id: lease.map(|(lease, _)| lease.0),
                    build_id: lease.map(|(_, build)| build.0),
                    last_seen: registration.last_seen,
                    benched_until: core.scheduler.benched_until(WorkerId(worker_id), now),
                    lost: registration.lost(now, self.config.scheduler.lease_timeout_s),
                    slowness,
                }
            })
            .collect()
    }

    /// The gate of `branch`, if it is the watched branch.
    pub fn gate(&self, branch: &str) -> Option<GateView> {
        let view = self.published_gate.borrow();
        (view.branch == branch).then(|| view.clone())
    }

    /// Every push hand-off, newest first.
    pub fn pushes(&self) -> Result<Vec<PushView>, FarmError> {
        Ok(push::list(&self.store)?)
    }
}

/// Which of a build's results a read asks for: a checked [`ResultsQuery`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResultsPage {
    /// Only results with one of these statuses; all of them when `None`.
    pub statuses: Option<Vec<TestStatus>>,
    /// Start after this result; from the first when `None`.
    pub after: Option<ResultsCursor>,
    /// At most this many (1 to [`MAX_RESULTS_PAGE`]); every one when `None`.
    pub limit: Option<usize>,
}

/// Why a [`ResultsQuery`] asks for no page.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResultsQueryError {
    /// A status that is none of the four.
    #[error("status {0:?} is none of passed, failed, skipped, error (give one or several, comma-separated)")]
    Status(String),
    /// A cursor the master did not give out.
    #[error("the cursor is not one the master gave out (pass a page's next_cursor as it came)")]
    Cursor,
    /// A limit of 0 or above the largest page.
    #[error("limit {0} is out of range: a page holds 1 to {MAX_RESULTS_PAGE} results")]
    Limit(usize),
}

impl ResultsPage {
    /// The page `query` asks for, checked.
    pub fn from_query(query: &ResultsQuery) -> Result<ResultsPage, ResultsQueryError> {
        let statuses = query
            .status
            .as_deref()
            .map(|list| list.split(',').map(parse_status).collect::<Result<Vec<_>, _>>())
            .transpose()?;
        let after = query
            .cursor
            .as_deref()
            .map(|text| ResultsCursor::decode(text).ok_or(ResultsQueryError::Cursor))
            .transpose()?;
        if let Some(limit) = query.limit
            && !(1..=MAX_RESULTS_PAGE).contains(&limit)
        {
            return Err(ResultsQueryError::Limit(limit));
        }
        Ok(ResultsPage { statuses, after, limit: query.limit })
    }

    fn accepts(&self, result: &TestResultView) -> bool {
        self.statuses.as_ref().is_none_or(|statuses| statuses.contains(&result.status))
    }
}

fn parse_status(word: &str) -> Result<TestStatus, ResultsQueryError> {
    let word = word.trim();
    [TestStatus::Passed, TestStatus::Failed, TestStatus::Skipped, TestStatus::Error]
        .into_iter()
        .find(|status| status.as_str() == word)
        .ok_or_else(|| ResultsQueryError::Status(word.to_owned()))
}

/// Where a page of results ended: its last (test id, attempt), given out as hexadecimal
/// (the attempt's four bytes, then the test id's), opaque to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultsCursor {
    test_id: String,
    attempt: u32,
}

impl ResultsCursor {
    /// The cursor of a page that ends with `result`.
    fn after(result: &TestResultView) -> ResultsCursor {
        ResultsCursor { test_id: result.test_id.clone(), attempt: result.attempt }
    }

    /// The cursor as the wire carries it.
    pub fn encode(&self) -> String {
        let mut bytes = self.attempt.to_be_bytes().to_vec();
        bytes.extend_from_slice(self.test_id.as_bytes());
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    /// A cursor [`ResultsCursor::encode`] gave out; `None` for anything else.
    pub fn decode(text: &str) -> Option<ResultsCursor> {
        if !text.len().is_multiple_of(2) || !text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
            return None;
        }
        let bytes = (0..text.len())
            .step_by(2)
            .map(|at| u8::from_str_radix(&text[at..at + 2], 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        let (attempt, test_id) = bytes.split_at_checked(4)?;
        let test_id = String::from_utf8(test_id.to_vec()).ok().filter(|id| !id.is_empty())?;
        Some(ResultsCursor { test_id, attempt: u32::from_be_bytes(attempt.try_into().ok()?) })
    }
}
