//! The build lifecycle: changes found by polling the branch are queued; a build covering
//! every queued change starts when no regular build runs; it finishes with the scheduler's
//! verdict (the gate, the push stage and culprit finding follow), or is cancelled by an
//! admin; a restarted master takes back the builds the previous one left unfinished.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use greenlight_scheduler::core::{BuildId, RestoredResult, Verdict};
use greenlight_scheduler::plan::BuildPlan;
use greenlight_shared::api::{BuildKind, BuildState, BuildSummary, ChangeView, ShardState, TestCounts};

use super::preparations::Readiness;
use super::{Core, Farm, FarmError, LISTED_FAILURES, LiveBuild, add_to_summary, blocking};
use crate::{gate, push};

impl Farm {
    /// Fetches the watched branch and queues the commits that arrived since the last look.
    /// Whether the fetch worked is the health's to show (with git's error).
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
        let fetched = self.mirror.fetch();
        self.fetched(fetched.as_ref().map(|_| ()));
        let tip = fetched?;
        let last_seen = self.store.last_seen(branch)?;
        let revisions = self.mirror.new_revisions(last_seen.as_deref(), &tip)?;
        let commits = revisions.iter().map(|revision| self.mirror.commit(revision)).collect::<Result<Vec<_>, _>>()?;
        // A build starting meanwhile takes the whole batch or none of it: the build loop's
        // tick once started a build of the first few commits while git read the rest.
        let _batch = self.queueing.lock().expect("the queueing lock is never poisoned");
        let mut queued = Vec::with_capacity(commits.len());
        for commit in commits {
            let change = ChangeView {
                sequence: self.store.next_id("change")?,
                branch: branch.clone(),
                tags: self.tagger.tags(&commit),
                revision: commit.revision,
                author: commit.author,
                message: commit.message,
                paths: commit.paths,
                build_id: None,
                seen_at: self.now(),
                culprit_of: None,
            };
            self.put_change(&change)?;
            tracing::info!(sequence = change.sequence, revision = %change.revision, tags = ?change.tags, "change queued");
            queued.push(change);
        }
        if last_seen.as_deref() != Some(tip.as_str()) {
            self.store.set_last_seen(branch, &tip)?;
        }
        Ok(queued)
    }

    /// Starts a build covering every queued change, unless one is running. Returns its id.
    /// Culprit findings due are advanced first. Nothing starts while the data directory is
    /// below `[storage] min_free_bytes` or the store failed (the health says so).
    pub async fn start_next_build(self: &Arc<Self>) -> Result<Option<u64>, FarmError> {
        if !self.may_start_builds() {
            return Ok(None);
        }
        self.advance_culprit_finding().await?;
        if self.core().running.values().any(|live| live.summary.kind == BuildKind::Regular) {
            return Ok(None);
        }
        let (forced, pending) = {
            let _batch = self.queueing.lock().expect("the queueing lock is never poisoned");
            let first = self.store.next_unbuilt_change()?;
            (self.store.full_run_forced()?, self.store.changes_from(first, 100_000)?)
        };
        let (revision, newest_sequence) = match pending.last() {
            Some(newest) => (newest.revision.clone(), Some(newest.sequence)),
            None if forced => match self.store.latest_changes(1)?.into_iter().next() {
                Some(head) => (head.revision, None),
                None => return Ok(None),
            },
            None => return Ok(None),
        };
        let (since_full, last_full_at) = self.store.full_runs()?;
        let periodic = &self.config.full_runs;
        let full_run_due = (periodic.every_builds > 0 && since_full + 1 >= u64::from(periodic.every_builds))
            || (periodic.interval_s > 0.0 && self.now() - last_full_at >= periodic.interval_s);
        let full_run = forced || full_run_due || pending.iter().any(|change| change.tags.is_empty());
        let tags: BTreeSet<String> = if full_run {
            BTreeSet::new()
        } else {
            pending.iter().flat_map(|change| change.tags.iter().cloned()).collect()
        };
        let listing = {
            let farm = Arc::clone(self);
            let (revision, tags) = (revision.clone(), tags.clone());
            blocking(move || farm.listing_for_tags(&revision, &tags)).await?
        };
        // A suite listed on workers: the first worker to ask prepares the revision; the
        // build starts when its listing (or its failure) arrives.
        if self.readiness(&listing)? == Readiness::Preparing {
            return Ok(None);
        }
        if forced {
            self.store.set_full_run_forced(false)?;
        }
        self.store.count_build(full_run, self.now())?;
        let farm = Arc::clone(self);
        let (plan_listing, plan_tags) = (listing.clone(), tags.clone());
        let planned = blocking(move || farm.plan(&plan_listing, &plan_tags)).await?;
        self.forget_listing_failure(&listing);

        let now = self.now();
        let mut core = self.core();
        let core = &mut *core;
        let build_id = self.store.next_id("build")?;
        let changes = pending.iter().map(|change| change.sequence).collect();
        let mut summary = self.new_summary(build_id, revision, changes, tags.into_iter().collect(), full_run, now);
        summary.collected = listing.paths;
        for mut change in pending.iter().cloned() {
            change.build_id = Some(build_id);
            self.put_change(&change)?;
        }
        if let Some(newest) = newest_sequence {
            self.store.set_next_unbuilt_change(newest + 1)?;
        }
        match planned {
            Ok(plan) => {
                tracing::info!(build_id, tests = plan.len(), changes = summary.changes.len(), "build planned");
                self.run_build(core, summary, plan, now)?;
            }
            Err(error) => {
                tracing::error!(build_id, %error, "build could not be planned");
                summary.state = BuildState::Error;
                summary.error = Some(error.to_string());
                summary.finished_at = Some(now);
                self.metrics.build_ended("error", None);
                self.put_build(&summary)?;
                // No test gave a verdict on the code: the gate keeps its state and warns.
                if gate::build_error(&mut core.gate, build_id, &error.to_string()) {
                    self.save_gate(core)?;
                }
            }
        }
        Ok(Some(build_id))
    }

    /// Hands a planned build to the scheduler: stored with its selection (so a restarted
    /// master resumes it), then live. Probes are urgent: the gate waits on them.
    pub(super) fn run_build(
        &self,
        core: &mut Core,
        mut summary: BuildSummary,
        plan: BuildPlan,
        now: f64,
    ) -> Result<(), FarmError> {
        let build_id = summary.build_id;
        summary.counts.total = plan.len() as u32;
        summary.lower_bound_s = Some(plan.lower_bound(core.scheduler.live_workers().max(1)));
        // The selection first: sled recovers a prefix of its log, so a build a restarted
        // master finds stored always has the selection it is resumed from.
        let selection: Vec<&str> = plan.tests.iter().map(|test| test.id.as_str()).collect();
        self.store.put_selection(build_id, &selection)?;
        self.put_build(&summary)?;
        // Made durable by the caller's next `flush_verdicts` (the build loop's, at once).
        self.unflushed_verdict();
        let urgent = summary.kind == BuildKind::Probe;
        core.running.insert(build_id, LiveBuild { summary, shards: BTreeMap::new() });
        let decisions = core.scheduler.add_build(BuildId(build_id), plan, now)?;
        if urgent {
            core.scheduler.make_urgent(BuildId(build_id));
        }
        self.apply(core, decisions, now)
    }

    pub(super) fn new_summary(
        &self,
        build_id: u64,
        revision: String,
        changes: Vec<u64>,
        tags: Vec<String>,
        full_run: bool,
        now: f64,
    ) -> BuildSummary {
        BuildSummary {
            tags,
            full_run,
            ..BuildSummary::queued(build_id, self.config.repository.branch.clone(), revision, changes, now)
        }
    }

    /// Every test has a result: the build takes the scheduler's verdict (which failures
    /// count is the scheduler's to say: quarantine and the flaky policy are its input),
    /// then the gate, the push stage or culprit finding follow.
    pub(super) fn finish_build(
        &self,
        core: &mut Core,
        build_id: u64,
        verdict: Verdict,
        measured_bound_s: f64,
        now: f64,
    ) -> Result<(), FarmError> {
        let Some(mut live) = core.running.remove(&build_id) else { return Ok(()) };
        self.unflushed_verdict();
        let summary = &mut live.summary;
        summary.measured_bound_s = Some(measured_bound_s);
        match verdict {
            Verdict::Red { failed } => {
                summary.state = BuildState::Red;
                summary.failed_tests = failed.into_iter().take(LISTED_FAILURES).collect();
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
            Verdict::Green => summary.state = BuildState::Green,
        }
        summary.finished_at = Some(now);
        summary.makespan_s = summary.started_at.map(|started| now - started);
        let ended = match summary.state {
            BuildState::Green => "green",
            BuildState::Red => "red",
            _ => "error",
        };
        self.metrics.build_ended(ended, summary.makespan_s);
        for shard in live.shards.values_mut().filter(|shard| shard.finished_at.is_none()) {
            // Its last result ended the build; the worker's finish may still add its wall time.
            shard.finished_at = Some(now);
            shard.state = ShardState::Finished;
            self.put_shard_state(build_id, shard)?;
        }
        self.put_build(summary)?;
        self.store.remove_selection(build_id)?;
        tracing::info!(build_id, state = ?summary.state, failed = summary.counts.failed + summary.counts.error, "build finished");
        let summary = live.summary;
        match (summary.kind, summary.state) {
            (BuildKind::Regular, BuildState::Green) => {
                if gate::build_green(&mut core.gate, build_id, &summary.revision, now) {
                    tracing::info!(build_id, "gate open");
                }
                self.save_gate(core)?;
                if push::configured(&self.config.push) {
                    push::enqueue(&self.store, build_id, &summary.revision, now)?;
                    self.push_wanted.notify_one();
                }
            }
            (BuildKind::Regular, BuildState::Error) => {
                // No verdict on the code: the gate keeps its state and says why.
                let reason = summary.error.clone().unwrap_or_default();
                if gate::build_error(&mut core.gate, build_id, &reason) {
                    self.save_gate(core)?;
                }
            }
            (BuildKind::Regular, _) => {
                for test_id in &summary.failed_tests {
                    gate::test_failed(&mut core.gate, build_id, &summary.revision, test_id, now);
                }
                self.save_gate(core)?;
                if self.config.gate.find_culprit && !summary.failed_tests.is_empty() {
                    // Finding the candidates reads many builds: not under the lock. The
                    // build loop starts it (and a restarted master would too).
                    self.store.want_culprit_search(build_id)?;
                }
            }
            (BuildKind::Probe, _) => self.probe_finished(core, &summary)?,
        }
        self.build_wanted.notify_one();
        Ok(())
    }

    /// Cancels a running build (admin): its leases end, its running shards show
    /// `cancelled`, it is recorded as an error and its changes are queued again. Not yet
    /// durable: the caller flushes.
    pub fn cancel_build(&self, build_id: u64) -> Result<BuildSummary, FarmError> {
        let now = self.now();
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
        self.unflushed_verdict();
        for shard in live.shards.values_mut().filter(|shard| shard.finished_at.is_none()) {
            shard.finished_at = Some(now);
            shard.state = ShardState::Cancelled;
            self.put_shard_state(build_id, shard)?;
        }
        let summary = &mut live.summary;
        summary.state = BuildState::Error;
        summary.error = Some("cancelled by an admin".to_owned());
        summary.finished_at = Some(now);
        self.metrics.build_ended("cancelled", summary.started_at.map(|started| now - started));
        self.put_build(summary)?;
        self.store.remove_selection(build_id)?;
        if summary.kind == BuildKind::Regular
            && let Some(&first) = summary.changes.first()
        {
            self.store.requeue_changes_from(first)?;
        }
        if summary.kind == BuildKind::Probe {
            // Its bisection probes that revision again.
            self.probe_cancelled(core, summary)?;
        }
        tracing::warn!(build_id, "build cancelled by an admin");
        self.build_wanted.notify_one();
        Ok(live.summary)
    }

    /// Asks for a full run of the branch head (admin): the next build runs every test,
    /// and one starts even if no change is queued.
    pub fn force_full_run(&self) -> Result<(), FarmError> {
        self.store.set_full_run_forced(true)?;
        self.build_wanted.notify_one();
        Ok(())
    }

    /// Takes back the builds a previous master left queued or running: each is planned
    /// again from the same selection at the same revision, its stored results count as
    /// done, and it goes on; its leases died with that master, so their unreported tests
    /// run again. A build whose selection was not stored, or whose suite cannot be read
    /// any more, ends as an error and its changes are queued again. Blocking (git, outside
    /// the lock).
    pub fn recover(&self) -> Result<(), FarmError> {
        let now = self.now();
        let mut interrupted: Vec<BuildSummary> =
            self.store.latest_builds(200)?.into_iter().filter(|build| !build.state.is_finished()).collect();
        interrupted.reverse();
        self.core().scheduler.set_next_lease(self.store.next_lease()?);
        for mut build in interrupted {
            match self.replan(&build) {
                Ok(plan) => self.resume(build, plan, now)?,
                Err(error) => {
                    build.state = BuildState::Error;
                    build.error = Some(format!(
                        "interrupted by a master restart and not resumable ({error}); its changes are queued again"
                    ));
                    build.finished_at = Some(now);
                    self.put_build(&build)?;
                    if let Some(&first) = build.changes.first() {
                        self.store.requeue_changes_from(first)?;
                    }
                    tracing::warn!(build_id = build.build_id, %error, "interrupted build not resumable; changes queued again");
                    if build.kind == BuildKind::Probe {
                        // It proved nothing: its revision is probed again.
                        let mut core = self.core();
                        self.probe_cancelled(&mut core, &build)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Resumes an interrupted build from its plan and stored results.
    fn resume(&self, mut build: BuildSummary, plan: BuildPlan, now: f64) -> Result<(), FarmError> {
        let build_id = build.build_id;
        let results = self.store.results(build_id)?;
        build.counts = TestCounts { total: plan.len() as u32, ..TestCounts::default() };
        build.failed_tests.clear();
        build.flaky_tests.clear();
        for result in &results {
            // The scheduler's word on each is not stored: the stored flags tell, until its
            // verdict names them all.
            add_to_summary(&mut build, result, result.counts_as_failure());
        }
        let mut shards = BTreeMap::new();
        for mut shard in self.store.shards(build_id)? {
            if shard.finished_at.is_none() {
                shard.finished_at = Some(now);
                shard.state = ShardState::Expired;
                self.put_shard_state(build_id, &shard)?;
            }
            shards.insert(shard.lease_id, shard);
        }
        tracing::warn!(build_id, results = results.len(), "build taken back after a restart");
        let mut restored: Vec<RestoredResult> = results
            .into_iter()
            .map(|result| RestoredResult {
                gave_up: result.given_up(),
                quarantined: result.quarantined,
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
        core.running.insert(build_id, LiveBuild { summary: build, shards });
        let mut decisions = core.scheduler.add_build(BuildId(build_id), plan, now)?;
        if urgent {
            core.scheduler.make_urgent(BuildId(build_id));
        }
        decisions.extend(core.scheduler.restore(BuildId(build_id), &restored));
        self.apply(core, decisions, now)
    }
}
