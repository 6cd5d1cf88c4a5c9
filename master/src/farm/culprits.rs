//! Culprit finding: a red regular build asks for its culprits; the build loop gathers the
//! candidate changes and each failing test's last green revision (reading earlier builds,
//! outside the lock) and runs probe builds that re-run failing tests at one candidate
//! each: first at the red revision itself (a failure that does not reproduce there is a
//! flake, nobody's fault), then bisecting each test's own interval. The bookkeeping is
//! [`crate::culprit::Bisection`]; this module plans and runs the probes, reads each
//! probe's per-test results, and names every culprit on the build, the change and the
//! gate as soon as it is proven (reverting it when configured), or records the flakes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use greenlight_scheduler::core::{BuildId, WorkerId};
use greenlight_shared::api::{
    BuildKind, BuildState, BuildSummary, ChangeView, CulpritView, MissedByTags, TestResultView, TestStatus,
};

use super::preparations::Readiness;
use super::{Core, Farm, FarmError, blocking};
use crate::culprit::{Bisection, Candidate};
use crate::gate;

/// How many earlier builds culprit finding looks back over for candidates.
const LOOK_BACK_BUILDS: usize = 200;

/// Whether a final result says the test failed there: failed, errored (given up
/// included), or not run because a dependency did not pass. A skip by the runner
/// itself is no failure.
fn failed_there(result: &TestResultView) -> bool {
    result.status.is_failure() || (result.status == TestStatus::Skipped && result.worker.is_none())
}

impl Farm {
    /// Starts the culprit findings red builds asked for, then the next probe of every
    /// bisection that has none running.
    pub(super) async fn advance_culprit_finding(self: &Arc<Self>) -> Result<(), FarmError> {
        for build_id in self.store.culprit_searches_wanted()? {
            let farm = Arc::clone(self);
            let bisection = match blocking(move || farm.new_bisection(build_id)).await? {
                Ok(bisection) => bisection,
                Err(error) => {
                    // Stored data that cannot be read will not heal: give this one up
                    // rather than keep every later build from starting.
                    tracing::error!(build_id, %error, "culprit finding could not start; given up");
                    None
                }
            };
            let mut core = self.core();
            if let Some(bisection) = bisection {
                tracing::info!(
                    build_id,
                    changes = bisection.candidates.len(),
                    tests = bisection.failing_tests.len(),
                    "culprit finding started"
                );
                self.settle_bisection(&mut core, bisection)?;
            }
            self.store.culprit_search_started(build_id)?;
        }
        self.advance_bisections().await
    }

    /// A culprit finding for red build `build_id`'s failing tests over the changes that
    /// may have broken them, oldest first: its own, and those of earlier builds back to,
    /// for each test, the last build that ran it (tag selection may have left it out of
    /// the builds between). A test that passed there is searched from there; one that
    /// failed there too was broken before and is no change of these's fault. `None`
    /// without a test to search. Reads many builds: never under the lock.
    fn new_bisection(&self, build_id: u64) -> Result<Option<Bisection>, FarmError> {
        let Some(build) = self.store.build(build_id)? else { return Ok(None) };
        let failing: BTreeSet<&str> = build.failed_tests.iter().map(String::as_str).collect();
        let mut sequences: BTreeSet<u64> = build.changes.iter().copied().collect();
        // Per test: the newest change of the build that last ran it, and whether it passed.
        let mut last_run: BTreeMap<String, (u64, bool)> = BTreeMap::new();
        for earlier in self.store.latest_builds(LOOK_BACK_BUILDS)? {
            if last_run.len() == failing.len() {
                break;
            }
            if earlier.build_id >= build.build_id || earlier.kind != BuildKind::Regular {
                continue;
            }
            let Some(&newest) = earlier.changes.last() else { continue };
            for result in self.store.results(earlier.build_id)? {
                if !result.retried && failing.contains(result.test_id.as_str()) {
                    last_run.entry(result.test_id.clone()).or_insert((newest, !failed_there(&result)));
                }
            }
            if last_run.len() < failing.len() {
                sequences.extend(earlier.changes.iter().copied());
            }
        }
        let mut candidates = Vec::with_capacity(sequences.len());
        for sequence in sequences {
            if let Some(change) = self.store.change(sequence)? {
                candidates.push(Candidate { sequence, revision: change.revision });
            }
        }
        let mut searched = Vec::new();
        let mut green_at = BTreeMap::new();
        for test in &build.failed_tests {
            match last_run.get(test) {
                Some(&(_, false)) => {
                    tracing::warn!(build_id, test_id = %test, "failing already when last run: no culprit among these changes");
                }
                Some(&(newest, true)) => {
                    green_at.insert(test.clone(), candidates.iter().filter(|c| c.sequence <= newest).count());
                    searched.push(test.clone());
                }
                None => searched.push(test.clone()),
            }
        }
        if candidates.is_empty() || searched.is_empty() {
            return Ok(None);
        }
        Ok(Some(Bisection::new(build_id, searched, candidates, green_at)))
    }

    /// Names the culprits and records the flakes the bisection has proven so far on the
    /// red build, the changes and the gate; keeps it for its next probe unless it has
    /// ended.
    fn settle_bisection(&self, core: &mut Core, bisection: Bisection) -> Result<(), FarmError> {
        self.unflushed_verdict();
        let build_id = bisection.build_id;
        let now = self.now();
        if let Some(mut build) = self.store.build(build_id)? {
            let mut changed = false;
            let probes = bisection.probe_builds();
            if build.probes != probes {
                build.probes = probes;
                changed = true;
            }
            for test_id in bisection.not_reproduced() {
                if build.not_reproduced.contains(&test_id) {
                    continue;
                }
                tracing::warn!(build_id, %test_id, "failure did not reproduce at its revision: a flake, no culprit");
                self.count_late_flake(&mut core.flakes, &test_id, now)?;
                build.not_reproduced.push(test_id);
                changed = true;
                let every_failure = !self.config.gate.flaky_fails_build
                    && (build.counts.failed + build.counts.error) as usize == build.not_reproduced.len();
                if gate::failure_not_reproduced(&mut core.gate, build_id, &build.not_reproduced, every_failure, now) {
                    self.save_gate(core)?;
                }
            }
            for (candidate, tests) in bisection.culprits() {
                let sequence = bisection.candidates[candidate].sequence;
                if build.culprits.iter().any(|culprit| culprit.change == sequence) {
                    continue;
                }
                let Some(change) = self.store.change(sequence)? else { continue };
                changed = true;
                self.culprit_named(core, &mut build, change, tests)?;
            }
            if changed {
                self.put_build(&build)?;
            }
        }
        if bisection.finished() {
            tracing::info!(build_id, probes = bisection.probe_builds().len(), "culprit finding ended");
            core.bisections.remove(&build_id);
            self.store.remove_bisection(build_id)?;
        } else {
            self.store.put_bisection(&bisection)?;
            core.bisections.insert(build_id, bisection);
            self.build_wanted.notify_one();
        }
        Ok(())
    }

    /// A culprit is proven: named on the red build, the change and the gate, and reverted
    /// when configured.
    fn culprit_named(
        &self,
        core: &mut Core,
        build: &mut BuildSummary,
        mut change: ChangeView,
        tests: Vec<String>,
    ) -> Result<(), FarmError> {
        let build_id = build.build_id;
        tracing::info!(build_id, culprit = %change.revision, tests = ?tests, "culprit found");
        let culprit = CulpritView {
            change: change.sequence,
            revision: change.revision.clone(),
            author: change.author.clone(),
            subject: change.message.lines().next().unwrap_or_default().to_owned(),
            tests,
        };
        build.culprits.push(culprit.clone());
        build.culprits.sort_by_key(|culprit| culprit.change);
        build.culprit = build.culprits.first().map(|culprit| culprit.change);
        if build.missed_by_tags.is_none()
            && let Some(covering) = change.build_id.filter(|&covering| covering != build_id)
        {
            tracing::warn!(build_id, change = change.sequence, covering, tests = ?culprit.tests, "failure missed by tags");
            build.missed_by_tags = Some(MissedByTags {
                change: change.sequence,
                tags: change.tags.clone(),
                build_id: covering,
                tests: culprit.tests.clone(),
            });
        }
        change.culprit_of = Some(build_id);
        self.put_change(&change)?;
        if gate::culprit_found(&mut core.gate, build_id, &change, &culprit) {
            self.save_gate(core)?;
        }
        if self.config.gate.revert_culprit {
            let (mirror, branch, url) =
                (self.mirror.clone(), self.config.repository.branch.clone(), self.config.repository.url.clone());
            let work_tree = self.config.data_dir.join("revert");
            let revision = change.revision;
            // git, so not under the lock.
            std::thread::spawn(move || match mirror.revert(&url, &branch, &revision, &work_tree) {
                Ok(revert) => tracing::info!(culprit = %revision, %revert, "culprit reverted on the branch"),
                Err(error) => tracing::error!(culprit = %revision, %error, "reverting the culprit failed"),
            });
        }
        Ok(())
    }

    /// A probe ended: which of its tests failed there narrows its bisection. A probe
    /// whose suite could not even be run counts as failing for all of them.
    pub(super) fn probe_finished(&self, core: &mut Core, probe: &BuildSummary) -> Result<(), FarmError> {
        let Some(red_build) = probe.probe_of else { return Ok(()) };
        let Some(mut bisection) = core.bisections.remove(&red_build) else { return Ok(()) };
        let failing: BTreeSet<String> = if probe.state == BuildState::Error && probe.counts.done() == 0 {
            bisection.failing_tests.iter().cloned().collect()
        } else {
            // One build's few results (the probed tests and their dependencies).
            self.store
                .results(probe.build_id)?
                .into_iter()
                .filter(|result| !result.retried && failed_there(result))
                .map(|result| result.test_id)
                .collect()
        };
        if !bisection.record(Some(probe.build_id), &failing) {
            core.bisections.insert(red_build, bisection);
            return Ok(());
        }
        self.settle_bisection(core, bisection)
    }

    /// The workers (by name) each of `tests` failed on in build `build_id`. Reads one
    /// build's results: not under the lock.
    fn failed_on(&self, build_id: u64, tests: &[String]) -> Result<Vec<(String, Vec<String>)>, FarmError> {
        let mut failed_on: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for result in self.store.results(build_id)? {
            if result.status.is_failure()
                && tests.contains(&result.test_id)
                && let Some(worker) = result.worker
            {
                failed_on.entry(result.test_id).or_default().push(worker);
            }
        }
        Ok(failed_on.into_iter().collect())
    }

    /// A probe was cancelled by an admin, or a restarted master could not resume it: it
    /// proved nothing, and its revision is probed again.
    pub(super) fn probe_cancelled(&self, core: &mut Core, probe: &BuildSummary) -> Result<(), FarmError> {
        let Some(red_build) = probe.probe_of else { return Ok(()) };
        let Some(mut bisection) = core.bisections.remove(&red_build) else { return Ok(()) };
        bisection.forget_probe(probe.build_id);
        self.settle_bisection(core, bisection)
    }

    /// Starts the next probe of every bisection that has none running.
    async fn advance_bisections(self: &Arc<Self>) -> Result<(), FarmError> {
        let due: Vec<(u64, crate::culprit::NextProbe, String)> = {
            let core = self.core();
            core.bisections
                .values()
                .filter(|bisection| !bisection.probe_running())
                .filter_map(|bisection| {
                    let next = bisection.next_probe()?;
                    let revision = bisection.candidates[next.candidate].revision.clone();
                    Some((bisection.build_id, next, revision))
                })
                .collect()
        };
        for (red_build, next, revision) in due {
            let listing = {
                let farm = Arc::clone(self);
                let (revision, tests) = (revision.clone(), next.tests.clone());
                blocking(move || farm.listing_for_tests(&revision, &tests)).await?
            };
            if self.readiness(&listing)? == Readiness::Preparing {
                // A worker lists the candidate first; the probe starts when it has.
                continue;
            }
            let farm = Arc::clone(self);
            let (plan_listing, plan_tests) = (listing.clone(), next.tests.clone());
            let confirmation = next.confirmation;
            let (planned, failed_on) = blocking(move || {
                // The confirmation re-runs each test away from the workers it failed on.
                let failed_on = if confirmation { farm.failed_on(red_build, &plan_tests) } else { Ok(Vec::new()) };
                (farm.plan_probe(&plan_listing, &plan_tests), failed_on)
            })
            .await?;
            let failed_on = failed_on?;
            self.forget_listing_failure(&listing);
            let now = self.now();
            let mut core = self.core();
            let core = &mut *core;
            let Some(mut bisection) = core.bisections.remove(&red_build) else { continue };
            if bisection.probe_running() || bisection.next_probe().as_ref() != Some(&next) {
                // Another pass of the build loop got here first.
                core.bisections.insert(red_build, bisection);
                continue;
            }
            match planned {
                Ok(plan) if plan.is_empty() => {
                    // None of the tests exists there: they cannot fail there.
                    bisection.start_probe(&next, None);
                    bisection.record(None, &BTreeSet::new());
                    self.settle_bisection(core, bisection)?;
                }
                planned => {
                    let build_id = self.store.next_id("build")?;
                    let mut summary = self.new_summary(build_id, revision, Vec::new(), Vec::new(), false, now);
                    summary.kind = BuildKind::Probe;
                    summary.collected = listing.paths.clone();
                    summary.probe_of = Some(red_build);
                    bisection.start_probe(&next, Some(build_id));
                    tracing::info!(
                        build_id,
                        red_build,
                        candidate = next.candidate,
                        tests = next.tests.len(),
                        "culprit probe started"
                    );
                    match planned {
                        Ok(plan) => {
                            self.settle_bisection(core, bisection)?;
                            self.run_build(core, summary, plan, now)?;
                            for (test_id, names) in &failed_on {
                                let workers: Vec<WorkerId> = names
                                    .iter()
                                    .filter_map(|name| core.worker_by_name.get(name).copied().map(WorkerId))
                                    .collect();
                                core.scheduler.prefer_other_workers(BuildId(build_id), test_id, &workers);
                            }
                        }
                        Err(error) => {
                            summary.state = BuildState::Error;
                            summary.error = Some(error.to_string());
                            summary.finished_at = Some(now);
                            self.put_build(&summary)?;
                            let failing = next.tests.iter().cloned().collect();
                            bisection.record(Some(build_id), &failing);
                            self.settle_bisection(core, bisection)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
