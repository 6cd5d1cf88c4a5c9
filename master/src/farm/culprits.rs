//! Culprit finding: a red regular build asks for its culprit; the build loop gathers the
//! candidate changes (reading earlier builds, outside the lock) and bisects them with
//! probe builds that re-run only the failing tests at one candidate each. The bookkeeping
//! is [`crate::culprit::Bisection`]; this module plans and runs the probes and names the
//! culprit on the build, the change and the gate (and reverts it when configured).

use std::sync::Arc;

use greenlight_shared::api::{BuildKind, BuildState, BuildSummary, MissedByTags};

use super::preparations::Readiness;
use super::{Core, Farm, FarmError, blocking};
use crate::culprit::{Bisection, Candidate, Probe};
use crate::gate;

/// How many earlier builds culprit finding looks back over for candidates.
const LOOK_BACK_BUILDS: usize = 200;

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
                tracing::info!(build_id, changes = bisection.candidates.len(), "culprit finding started");
                self.settle_bisection(&mut core, bisection)?;
            }
            self.store.culprit_search_started(build_id)?;
        }
        self.advance_bisections().await
    }

    /// A bisection of red build `build_id`'s failing tests over the changes that may have
    /// broken them, oldest first: its own, and those of earlier builds that did not run
    /// any of the failing tests (tag selection left them out), back to the last build that
    /// ran one. `None` without candidates. Reads many builds: never under the lock.
    fn new_bisection(&self, build_id: u64) -> Result<Option<Bisection>, FarmError> {
        let Some(build) = self.store.build(build_id)? else { return Ok(None) };
        let mut sequences: Vec<u64> = Vec::new();
        for earlier in self.store.latest_builds(LOOK_BACK_BUILDS)? {
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
        Ok((!candidates.is_empty()).then(|| Bisection::new(build_id, build.failed_tests, candidates)))
    }

    /// Names the culprit if the bisection is narrowed to one; else keeps it for the next probe.
    fn settle_bisection(&self, core: &mut Core, bisection: Bisection) -> Result<(), FarmError> {
        self.unflushed_verdict();
        let Some(culprit) = bisection.culprit().cloned() else {
            self.store.put_bisection(&bisection)?;
            core.bisections.insert(bisection.build_id, bisection);
            self.build_wanted.notify_one();
            return Ok(());
        };
        core.bisections.remove(&bisection.build_id);
        self.store.remove_bisection(bisection.build_id)?;
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
                // git, so not under the lock.
                std::thread::spawn(move || match mirror.revert(&url, &branch, &revision, &work_tree) {
                    Ok(revert) => tracing::info!(culprit = %revision, %revert, "culprit reverted on the branch"),
                    Err(error) => tracing::error!(culprit = %revision, %error, "reverting the culprit failed"),
                });
            }
        }
        Ok(())
    }

    /// A probe ended: its verdict narrows its bisection.
    pub(super) fn probe_finished(&self, core: &mut Core, probe: &BuildSummary) -> Result<(), FarmError> {
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
            if self.readiness(&revision)? == Readiness::Preparing {
                // A worker lists the candidate first; the probe starts when it has.
                continue;
            }
            let farm = Arc::clone(self);
            let (plan_revision, plan_tests) = (revision.clone(), failing.clone());
            let planned = blocking(move || farm.plan_probe(&plan_revision, &plan_tests)).await?;
            self.forget_listing_failure(&revision);
            let now = self.now();
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
                            self.settle_bisection(core, bisection)?;
                            self.run_build(core, summary, plan, now)?;
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
}
