//! Carrying out what the scheduler decided: results recorded (and the page told), shards
//! ended, shrunk or taken back, the gate closed the moment a failure counts, builds
//! finished. The scheduler's decisions name tests by id, as everything here does.

use std::collections::HashSet;

use greenlight_scheduler::core::{Decision, LeaseId};
use greenlight_shared::api::{BuildKind, FarmEvent, ShardEvent, ShardState, TestResultView, TestStatus};

use super::{Core, Farm, FarmError, add_to_summary, not_run};
use crate::gate;

impl Farm {
    /// Carries out the scheduler's decisions.
    pub(super) fn apply(&self, core: &mut Core, decisions: Vec<Decision>, now: f64) -> Result<(), FarmError> {
        for decision in decisions {
            match decision {
                Decision::WorkAvailable => self.work_available.notify_waiters(),
                Decision::Skipped { build, test_id, reason } => {
                    self.record_result(core, build.0, &not_run(test_id, TestStatus::Skipped, reason), false, now)?;
                }
                Decision::GaveUp { build, test_id, reason } => {
                    tracing::warn!(build_id = build.0, test_id, reason, "test given up: infrastructure");
                    self.record_result(core, build.0, &not_run(test_id, TestStatus::Error, reason), false, now)?;
                }
                Decision::Retrying { build, test_id, attempt } => {
                    tracing::info!(build_id = build.0, test_id, attempt, "test failed; retrying on another worker");
                }
                Decision::WorkerBenched { worker, until } => {
                    tracing::warn!(worker_id = worker.0, for_s = until - now, "worker benched: it keeps losing shards");
                }
                Decision::LeaseShrunk { build, lease, worker, withdrawn, stopped } => {
                    let (build_id, lease_id, worker_id) = (build.0, lease.0, worker.0);
                    match &stopped {
                        None => {
                            tracing::info!(
                                build_id,
                                lease_id,
                                worker_id,
                                withdrawn = withdrawn.len(),
                                "lease shrunk: an idle worker takes the tests it had not started"
                            );
                            self.metrics.leases_split.inc();
                        }
                        Some(test_id) => tracing::info!(
                            build_id,
                            lease_id,
                            worker_id,
                            test_id,
                            "test stopped: its other copy reported first"
                        ),
                    }
                    self.shrink_shard(core, build_id, lease_id, &withdrawn, stopped)?;
                }
                Decision::LeaseExpired { lease, worker, requeued, .. } => {
                    tracing::warn!(lease_id = lease.0, worker_id = worker.0, requeued, "lease expired: worker lost");
                    self.metrics.leases_expired.inc();
                    self.end_shard(core, lease.0, ShardState::Expired, now, None)?;
                }
                Decision::LeaseTakenBack { lease, worker, requeued, .. } => {
                    tracing::warn!(
                        lease_id = lease.0,
                        worker_id = worker.0,
                        requeued,
                        "lease taken back: its worker asked for new work while holding it"
                    );
                    self.end_shard(core, lease.0, ShardState::TakenBack, now, None)?;
                }
                Decision::ShardCostMeasured { build, lease, first_of_worker, cost_s } => {
                    tracing::debug!(build_id = build.0, lease_id = lease.0, first_of_worker, cost_s, "shard cost");
                    self.store.add_shard_cost(&self.overhead_key(), first_of_worker, cost_s)?;
                }
                Decision::BuildFinished { build, verdict, measured_bound_s } => {
                    self.finish_build(core, build.0, verdict, measured_bound_s, now)?;
                }
            }
        }
        Ok(())
    }

    /// Ends the shard of `lease_id` in `state`, unless it already ended.
    pub(super) fn end_shard(
        &self,
        core: &mut Core,
        lease_id: u64,
        state: ShardState,
        now: f64,
        runner_wall_s: Option<f64>,
    ) -> Result<(), FarmError> {
        let Some(build) = core.scheduler.lease_build(LeaseId(lease_id)) else { return Ok(()) };
        let build_id = build.0;
        // A running build's shard changes in place (its test ids are not copied); an ended
        // one's is read back.
        let mut stored;
        let shard = match core.running.get_mut(&build_id) {
            Some(live) => live.shards.get_mut(&lease_id),
            None => {
                stored = self.store.shard(build_id, lease_id)?;
                stored.as_mut()
            }
        };
        let Some(shard) = shard else { return Ok(()) };
        let runner_wall_s = runner_wall_s.filter(|wall_s| wall_s.is_finite() && *wall_s >= 0.0);
        if shard.finished_at.is_some() {
            // The build's last result closed the shard; the worker's finish, arriving just
            // after, still tells when it really ended and how long its runner ran.
            if shard.state == ShardState::Finished && shard.runner_wall_s.is_none() && runner_wall_s.is_some() {
                shard.finished_at = Some(now);
                shard.runner_wall_s = runner_wall_s;
                self.put_shard_state(build_id, shard)?;
            }
            return Ok(());
        }
        shard.finished_at = Some(now);
        shard.state = state;
        shard.runner_wall_s = runner_wall_s;
        self.put_shard_state(build_id, shard)
    }

    /// Records that `withdrawn` left a running shard: the shard's view (stored, and sent
    /// to the page) no longer holds them, and names the one it was `stopped` running (its
    /// other copy reported first). Its worker hears of them from the scheduler.
    fn shrink_shard(
        &self,
        core: &mut Core,
        build_id: u64,
        lease_id: u64,
        withdrawn: &[String],
        stopped: Option<String>,
    ) -> Result<(), FarmError> {
        let Some(live) = core.running.get_mut(&build_id) else { return Ok(()) };
        let Some(shard) = live.shards.get_mut(&lease_id) else { return Ok(()) };
        let gone: HashSet<&str> = withdrawn.iter().map(String::as_str).collect();
        shard.test_ids.retain(|id| !gone.contains(id.as_str()));
        shard.tests = shard.test_ids.len() as u32;
        shard.withdrawn += withdrawn.len() as u32;
        shard.counts.total = shard.tests;
        if stopped.is_some() {
            shard.stopped = stopped;
        }
        self.put_shard(build_id, shard)
    }

    fn count_result(&self, result: &TestResultView) {
        self.metrics.results.inc();
        if result.flaky {
            self.metrics.flaky_results.inc();
        }
    }

    /// Stores a result once and updates the live views; `fails_build` (the scheduler's
    /// word) closes the gate now, not when the build ends.
    pub(super) fn record_result(
        &self,
        core: &mut Core,
        build_id: u64,
        result: &TestResultView,
        fails_build: bool,
        now: f64,
    ) -> Result<(), FarmError> {
        let Some(live) = core.running.get_mut(&build_id) else {
            if self.store.put_result(build_id, result)? {
                self.count_result(result);
            }
            return Ok(());
        };
        if !self.store.put_running_result(build_id, result)? {
            return Ok(());
        }
        self.count_result(result);
        // Listed as the scheduler says it fails the build, the word the gate closes on.
        add_to_summary(&mut live.summary, result, fails_build);
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
            self.publish(FarmEvent::Shard(ShardEvent { build_id, shard: shard.without_test_ids() }));
        }
        let regular = live.summary.kind == BuildKind::Regular;
        if regular && !result.retried && result.worker.is_some() {
            self.count_run(&mut core.flakes, &result.test_id, result.flaky, now)?;
        }
        if fails_build && regular {
            let revision = live.summary.revision.clone();
            if gate::test_failed(&mut core.gate, build_id, &revision, &result.test_id, now) {
                self.save_gate(core)?;
            }
        }
        Ok(())
    }
}
