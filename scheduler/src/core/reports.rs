//! Every event but a request for work: heartbeats, reported results, finished and expired
//! leases, restored results and cancelled builds; and what follows from a final result
//! (dependants unblocked or skipped, the build finished with its verdict).

use greenlight_shared::api::TestStatus;

use super::state::{RETIRED_BUILDS, ReadyEntry, RetiredLease, TestState};
use super::{
    BuildId, Decision, LeaseId, Outcome, Report, ReportedTest, RestoredResult, Scheduler, SchedulerConfig,
    SchedulerError, Verdict, WorkerId,
};
use crate::Seconds;
use crate::plan::PlanIndex;

impl Scheduler {
    /// Event: a restarted master brings back the results it had stored for `build`, in
    /// attempt order. Final ones count as done, as if reported (a pass after restored
    /// failures is flaky; quarantined ones do not count against the build); their
    /// consequences (dependants unblocked or skipped, the build finished) follow. A failure that was to
    /// be retried counts as a failed attempt; the test runs again. Unknown ids are ignored
    /// (the plan is rebuilt from the same selection, so there should be none).
    pub fn restore(&mut self, build: BuildId, results: &[RestoredResult]) -> Vec<Decision> {
        let mut decisions = Vec::new();
        for RestoredResult { test_id, status, attempt, retried, gave_up, quarantined } in results {
            let Some(run) = self.builds.get_mut(&build) else { break };
            let Some(index) = run.plan.index_of(test_id) else { continue };
            run.attempts[index] = run.attempts[index].max(*attempt);
            if *retried {
                run.failures[index] += 1;
                continue;
            }
            if matches!(run.states[index], TestState::Ready | TestState::Waiting { .. }) {
                run.unleased_work -= run.plan.tests[index].estimate_s;
                // How long it took is not restored: its estimate stands in.
                run.durations[index] = Some(run.plan.tests[index].estimate_s);
                let counts = if *gave_up {
                    CountsAgainst::Infrastructure
                } else {
                    let flaky = *status == TestStatus::Passed && run.failures[index] > 0;
                    counts_against(&self.config, *status, flaky, *quarantined)
                };
                self.record(build, index, *status, counts, &mut decisions);
            }
        }
        if let Some(run) = self.builds.get_mut(&build) {
            let ready = run
                .states
                .iter()
                .enumerate()
                .filter(|(_, state)| **state == TestState::Ready)
                .map(|(index, _)| ReadyEntry { priority: run.plan.dispatch_priority(index), index })
                .collect();
            run.ready = ready;
            run.ready_changed();
        }
        decisions
    }

    /// Event: a build is abandoned (cancelled). Its leases end; nothing more is reported.
    pub fn remove_build(&mut self, build: BuildId) {
        self.builds.remove(&build);
        for lease in self.leases.values_mut().filter(|lease| lease.build == build) {
            lease.active = false;
        }
        self.forget_leases_of(build);
    }

    /// Event: a heartbeat. Returns whether the lease is still the worker's (and extends it).
    pub fn heartbeat(&mut self, lease: LeaseId, worker: WorkerId, now: Seconds) -> Result<bool, SchedulerError> {
        if self.check_retired(lease, worker)? {
            return Ok(false);
        }
        let timeout = self.config.lease_timeout_s;
        let state = self.leases.get_mut(&lease).ok_or(SchedulerError::UnknownLease(lease.0))?;
        if state.worker != worker {
            return Err(SchedulerError::NotYourLease { lease: lease.0, worker: worker.0 });
        }
        if let Some(worker_state) = self.workers.get_mut(&worker) {
            worker_state.last_seen = now;
        }
        if state.active {
            state.deadline = now + timeout;
        }
        Ok(state.active)
    }

    /// Event: a worker reports a batch of finished tests of its lease. The whole batch is
    /// checked first and refused whole, nothing recorded, if the lease is unknown, held by
    /// another worker, or does not hold one of the tests; a lease whose build ended (or was
    /// cancelled) answers [`Report::Stale`] to each result. Then each result is taken in
    /// order: one [`Report`] per result.
    pub fn report(
        &mut self,
        lease: LeaseId,
        worker: WorkerId,
        results: &[ReportedTest<'_>],
        now: Seconds,
    ) -> Result<Vec<Report>, SchedulerError> {
        let late = || vec![Report::Stale; results.len()];
        if self.check_retired(lease, worker)? {
            return Ok(late());
        }
        let lease_state = self.leases.get(&lease).ok_or(SchedulerError::UnknownLease(lease.0))?;
        if lease_state.worker != worker {
            return Err(SchedulerError::NotYourLease { lease: lease.0, worker: worker.0 });
        }
        let build = lease_state.build;
        let Some(run) = self.builds.get(&build) else {
            // The build ended (or was cancelled): whatever this is, it is late.
            return Ok(late());
        };
        let indices = results
            .iter()
            .map(|result| {
                run.plan.index_of(result.test_id).filter(|index| lease_state.tests.contains(index)).ok_or_else(|| {
                    SchedulerError::TestNotInLease { lease: lease.0, test_id: result.test_id.to_owned() }
                })
            })
            .collect::<Result<Vec<PlanIndex>, SchedulerError>>()?;
        if let Some(worker_state) = self.workers.get_mut(&worker) {
            worker_state.last_seen = now;
        }
        let first_results = lease_state.reported == 0;
        let mut reports: Vec<Report> =
            results.iter().zip(indices).map(|(result, index)| self.take_result(lease, index, result, now)).collect();
        // A retry does not wait for a whole shard to end: room is made for it once the
        // batch is taken (not within it: the lease reporting may be the one shrunk, and
        // what it kept must not be a test it has just reported).
        let mut room = self.make_room_for_retries(now);
        if room.is_empty() {
            room = self.move_work_off_slow_machine(lease, now);
        }
        if first_results && room.is_empty() && self.splittable_with_idle_workers(lease, now) {
            // Its first results show it can give back what it has not started: a worker
            // that found nothing to do (it joined after the build was split) may now
            // take a part of it.
            room.push(Decision::WorkAvailable);
        }
        if let Some(Report::Accepted { decisions, .. }) =
            reports.iter_mut().rev().find(|report| matches!(report, Report::Accepted { .. }))
        {
            decisions.extend(room);
        }
        Ok(reports)
    }

    /// Whether `lease` is active, has reported, could give back what it has not started
    /// ([`Scheduler::split_laggard`]'s conditions) and some worker is idle: not benched,
    /// holding no active lease.
    fn splittable_with_idle_workers(&self, lease: LeaseId, now: Seconds) -> bool {
        let Some(state) = self.leases.get(&lease).filter(|state| state.active && state.reported > 0) else {
            return false;
        };
        let splittable = self.config.split_running_leases
            && state.copy_of.is_none()
            && self.builds.get(&state.build).is_some_and(|run| run.plan.leases_splittable);
        splittable && self.workers.values().any(|worker| self.is_idle(worker, now))
    }

    /// Event: a worker reports one finished test of its lease, not quarantined, that took
    /// its estimate: a batch of one for [`Scheduler::report`].
    pub fn test_finished(
        &mut self,
        lease: LeaseId,
        worker: WorkerId,
        test_id: &str,
        status: TestStatus,
        now: Seconds,
    ) -> Result<Report, SchedulerError> {
        let result = ReportedTest { test_id, status, quarantined: false, duration_s: None };
        let mut reports = self.report(lease, worker, &[result], now)?;
        Ok(reports.pop().expect("one report per result"))
    }

    /// Takes one result of a checked batch: `index` is one of `lease`'s tests.
    fn take_result(&mut self, lease: LeaseId, index: PlanIndex, result: &ReportedTest<'_>, now: Seconds) -> Report {
        let ReportedTest { test_id, status, quarantined, duration_s } = *result;
        let slowness = self.leases.get(&lease).map_or(1.0, |state| self.slowness(state.worker));
        let Some(lease_state) = self.leases.get_mut(&lease) else {
            // An earlier result of the batch ended the build, retiring the lease.
            return Report::Stale;
        };
        let (build, worker) = (lease_state.build, lease_state.worker);
        let Some(run) = self.builds.get_mut(&build) else { return Report::Stale };
        // The lease holding the test, or a backup copy of it: the first result counts, the
        // other lease is stopped.
        let loser = match run.states[index] {
            TestState::Leased(holder) if holder == lease => run.copies.remove(&index),
            TestState::Leased(holder) if run.copies.get(&index) == Some(&lease) => {
                run.copies.remove(&index);
                Some(holder)
            }
            _ if run.reported_by[index].contains(&lease) => return Report::Duplicate,
            _ => return Report::Stale,
        };
        if run.plan.tests[index]
            .depends_on
            .iter()
            .any(|&dependency| run.states[dependency] != TestState::Done(TestStatus::Passed))
        {
            // Leased with a prerequisite of the same lease that has not passed yet: it may
            // not have run before it, whatever the worker says.
            return Report::Stale;
        }
        run.reported_by[index].push(lease);
        let attempt = run.attempts[index];
        let estimate = run.plan.tests[index].estimate_s;
        let reported_s = duration_s.filter(|seconds| seconds.is_finite() && *seconds >= 0.0);
        if let Some(real) = reported_s
            && run.plan.tests[index].estimate_known
        {
            // How far off the estimates are, on a machine as fast as the others.
            run.spread.observe(real / slowness, estimate);
            if let Some(worker_state) = self.workers.get_mut(&worker) {
                worker_state.ratios.observe(real, estimate);
                self.slowness_stale = true;
            }
        }
        let duration_s = reported_s.unwrap_or(estimate);
        run.durations[index] = Some(duration_s);
        run.drift.observe((now - lease_state.progress_at).max(0.0), estimate);
        lease_state.progress_at = lease_state.progress_at.max(now);
        lease_state.remaining_estimate = (lease_state.remaining_estimate - estimate).max(0.0);
        lease_state.reported_estimate += estimate;
        lease_state.reported += 1;
        lease_state.reported_s += duration_s;
        let mut decisions = Vec::new();
        if !run.plan.tests[index].estimate_known && run.observe_new_test(duration_s, estimate) {
            // The new tests' estimates were corrected: so is what the leases holding them
            // have left.
            for (&id, lease_state) in self.leases.iter_mut().filter(|(_, state)| state.active && state.build == build) {
                lease_state.remaining_estimate = lease_state
                    .tests
                    .iter()
                    .filter(|&&test| test != index && run.states[test] == TestState::Leased(id))
                    .map(|&test| run.plan.tests[test].estimate_s)
                    .sum();
            }
        }
        if let Some(loser) = loser {
            self.stop_copy(loser, index, now, &mut decisions);
        }
        let Some(run) = self.builds.get_mut(&build) else { return Report::Stale };
        if status.is_failure() && run.failures[index] < self.config.retries {
            // Not final yet: run it again, first in line, to tell a flake from a failure.
            run.failures[index] += 1;
            run.avoid.entry(index).or_default().push(worker);
            run.requeue(index, f64::INFINITY);
            // The tests of this lease waiting on it wait for its retry instead.
            let waiting = run.waiting_in_lease(index, lease);
            decisions.push(Decision::Retrying { build, test_id: test_id.to_owned(), attempt });
            if !waiting.is_empty() {
                // In the lease's order.
                let waiting = self.leases[&lease].tests.iter().copied().filter(|test| waiting.contains(test)).collect();
                decisions.push(self.withdraw(lease, waiting));
            }
            decisions.push(Decision::WorkAvailable);
            self.measure_if_settled(lease, now, 0, &mut decisions);
            return Report::Accepted { attempt, outcome: Outcome::Retry, fails_build: false, decisions };
        }
        let flaky = status == TestStatus::Passed && run.failures[index] > 0;
        let counts = counts_against(&self.config, status, flaky, quarantined);
        // Measured before the result is recorded (it may end the build), counting the tests
        // of the lease it will skip.
        let skips = if status == TestStatus::Passed { 0 } else { run.waiting_in_lease(index, lease).len() };
        self.measure_if_settled(lease, now, skips, &mut decisions);
        self.record(build, index, status, counts, &mut decisions);
        Report::Accepted {
            attempt,
            outcome: Outcome::Final { flaky },
            fails_build: counts == CountsAgainst::Build,
            decisions,
        }
    }

    /// Once every test of `lease` has its result (or was withdrawn), `skips` more of them
    /// about to be skipped: what the shard cost besides its tests, from the grant to now
    /// ([`Decision::ShardCostMeasured`]), once.
    fn measure_if_settled(&mut self, lease: LeaseId, now: Seconds, skips: usize, decisions: &mut Vec<Decision>) {
        let Some(lease_state) = self.leases.get_mut(&lease) else { return };
        if lease_state.measured || !lease_state.settled(skips) {
            return;
        }
        lease_state.measured = true;
        let Some(run) = self.builds.get_mut(&lease_state.build) else { return };
        let cost_s = (now - lease_state.granted_at - lease_state.reported_s).max(0.0);
        let first_of_worker = lease_state.first_of_worker;
        run.costs.observe(first_of_worker, cost_s);
        decisions.push(Decision::ShardCostMeasured { build: lease_state.build, lease, first_of_worker, cost_s });
    }

    /// Event: the worker's shard process ended. Tests it did not report go back to the
    /// queue (or are given up on after
    /// [`SchedulerConfig::max_attempts`](super::SchedulerConfig::max_attempts)).
    pub fn lease_finished(
        &mut self,
        lease: LeaseId,
        worker: WorkerId,
        now: Seconds,
    ) -> Result<Vec<Decision>, SchedulerError> {
        if self.check_retired(lease, worker)? {
            return Ok(Vec::new());
        }
        let state = self.leases.get(&lease).ok_or(SchedulerError::UnknownLease(lease.0))?;
        if state.worker != worker {
            return Err(SchedulerError::NotYourLease { lease: lease.0, worker: worker.0 });
        }
        if let Some(worker_state) = self.workers.get_mut(&worker) {
            worker_state.last_seen = now;
        }
        Ok(self.take_back(lease, now).1)
    }

    /// Event: time passed. Leases past their deadline are taken back and their workers
    /// counted as lost; idle workers not heard from for two lease timeouts are forgotten.
    pub fn tick(&mut self, now: Seconds) -> Vec<Decision> {
        let mut expired: Vec<LeaseId> =
            self.leases.iter().filter(|(_, state)| state.active && state.deadline < now).map(|(&id, _)| id).collect();
        expired.sort();
        let mut decisions = Vec::new();
        for lease in expired {
            // An earlier expiry in this tick may have ended the build and retired this lease.
            let Some(state) = self.leases.get(&lease) else { continue };
            let (worker, build) = (state.worker, state.build);
            let (requeued, consequences) = self.take_back(lease, now);
            self.workers.remove(&worker);
            decisions.push(Decision::LeaseExpired { build, lease, worker, requeued });
            decisions.extend(consequences);
        }
        let forget_before = now - 2.0 * self.config.lease_timeout_s;
        self.workers.retain(|_, state| state.lease.is_some() || state.last_seen >= forget_before);
        decisions
    }

    /// Whether `lease` belongs to an ended build; an error if it is not `worker`'s.
    pub(super) fn check_retired(&self, lease: LeaseId, worker: WorkerId) -> Result<bool, SchedulerError> {
        match self.retired.get(&lease) {
            None => Ok(false),
            Some(retired) if retired.worker == worker => Ok(true),
            Some(_) => Err(SchedulerError::NotYourLease { lease: lease.0, worker: worker.0 }),
        }
    }

    /// Ends an active lease: its unreported tests go back to the queue, or are given up
    /// on after [`SchedulerConfig::max_attempts`](super::SchedulerConfig::max_attempts);
    /// its worker is benched after too many such losses in a row. Returns how many tests
    /// went back to the queue, and what follows.
    pub(super) fn take_back(&mut self, lease: LeaseId, now: Seconds) -> (usize, Vec<Decision>) {
        let mut decisions = Vec::new();
        let Some(state) = self.leases.get_mut(&lease) else { return (0, decisions) };
        if !state.active {
            return (0, decisions);
        }
        state.active = false;
        let (build, worker) = (state.build, state.worker);
        let tests = state.tests.clone();
        if let Some(worker_state) = self.workers.get_mut(&worker)
            && worker_state.lease == Some(lease)
        {
            worker_state.lease = None;
        }
        let max_attempts = self.config.max_attempts;
        let Some(run) = self.builds.get_mut(&build) else { return (0, decisions) };
        let mut requeued = 0;
        let mut gave_up = Vec::new();
        let mut unreported = 0;
        for test in tests {
            if run.copies.get(&test) == Some(&lease) {
                // A copy ended without a result: the lease it copies runs on.
                run.copies.remove(&test);
            }
            if run.states[test] != TestState::Leased(lease) {
                continue;
            }
            unreported += 1;
            if let Some(copy) = run.copies.remove(&test)
                && self.leases.get(&copy).is_some_and(|copy| copy.active)
            {
                // Its copy still runs: the test is the copy's now.
                run.states[test] = TestState::Leased(copy);
                continue;
            }
            if run.plan.tests[test]
                .depends_on
                .iter()
                .any(|&dependency| run.states[dependency] != TestState::Done(TestStatus::Passed))
            {
                // It waited on a test of this lease that has no result: it never started, and
                // waits for that test again (or is skipped with it).
                run.attempts[test] -= 1;
                run.requeue(test, run.plan.dispatch_priority(test));
                requeued += 1;
                continue;
            }
            if run.attempts[test] - run.failures[test] >= max_attempts {
                gave_up.push(test);
            } else {
                let priority = run.plan.dispatch_priority(test);
                run.requeue(test, priority);
                // A worker whose checkout or runner just failed should not get it straight back.
                run.avoid.entry(test).or_default().push(worker);
                requeued += 1;
            }
        }
        if let Some(worker_state) = self.workers.get_mut(&worker) {
            if unreported == 0 {
                worker_state.infra_failures = 0;
            } else {
                worker_state.infra_failures += 1;
                let beyond = worker_state.infra_failures.saturating_sub(self.config.infra_failures_to_bench);
                if worker_state.infra_failures >= self.config.infra_failures_to_bench {
                    let until = now + self.config.bench_s * 2f64.powi(beyond.min(10) as i32);
                    worker_state.benched_until = until;
                    decisions.push(Decision::WorkerBenched { worker, until });
                }
            }
        }
        for test in gave_up {
            let run = &self.builds[&build];
            let attempts = run.attempts[test] - run.failures[test];
            decisions.push(Decision::GaveUp {
                build,
                test_id: run.plan.tests[test].id.clone(),
                reason: format!("no result after {attempts} attempts (workers lost or runner crashed)"),
            });
            self.record(build, test, TestStatus::Error, CountsAgainst::Infrastructure, &mut decisions);
        }
        if requeued > 0 {
            decisions.push(Decision::WorkAvailable);
        }
        (requeued, decisions)
    }

    /// `test` ran on two leases and the other's result came first: `loser` is to stop it.
    /// It gives back the tests it has not started and withdraws `test` (a
    /// [`Decision::LeaseShrunk`] naming the test it runs first), so it ends with nothing
    /// to requeue. A run stopped after more than the test's estimate tells its worker's
    /// speed as a test reported after that long would (a lower bound): a slow machine whose
    /// long test was copied reports nothing else, and would be unknown to the next build.
    fn stop_copy(&mut self, loser: LeaseId, test: PlanIndex, now: Seconds, decisions: &mut Vec<Decision>) {
        let Some(state) = self.leases.get_mut(&loser).filter(|state| state.active) else { return };
        let Some(run) = self.builds.get_mut(&state.build) else { return };
        let (ran_s, estimate) = (now - state.progress_at, run.plan.tests[test].estimate_s);
        if run.plan.tests[test].estimate_known
            && ran_s > estimate
            && let Some(worker_state) = self.workers.get_mut(&state.worker)
        {
            worker_state.ratios.observe(ran_s, estimate);
            self.slowness_stale = true;
        }
        let mut withdrawn = vec![test];
        for &other in &state.tests {
            if other != test && run.states[other] == TestState::Leased(loser) {
                // Not an attempt: it never started.
                run.attempts[other] -= 1;
                state.remaining_estimate = (state.remaining_estimate - run.plan.tests[other].estimate_s).max(0.0);
                let priority = if run.failures[other] > 0 { f64::INFINITY } else { run.plan.dispatch_priority(other) };
                run.requeue(other, priority);
                withdrawn.push(other);
            }
        }
        state.remaining_estimate = 0.0;
        state.withdrawn.extend_from_slice(&withdrawn);
        let requeued = withdrawn.len() > 1;
        let withdrawn: Vec<String> = withdrawn.iter().map(|&test| run.plan.tests[test].id.clone()).collect();
        let stopped = Some(withdrawn[0].clone());
        decisions.push(Decision::LeaseShrunk {
            build: state.build,
            lease: loser,
            worker: state.worker,
            withdrawn,
            stopped,
        });
        if requeued {
            decisions.push(Decision::WorkAvailable);
        }
    }

    /// Records a final status and everything that follows from it; `counts` says what it
    /// counts against, for the verdict.
    fn record(
        &mut self,
        build: BuildId,
        index: PlanIndex,
        status: TestStatus,
        counts: CountsAgainst,
        decisions: &mut Vec<Decision>,
    ) {
        let Some(run) = self.builds.get_mut(&build) else { return };
        run.states[index] = TestState::Done(status);
        run.unfinished -= 1;
        match counts {
            CountsAgainst::Build => run.fails_build.push(index),
            CountsAgainst::Infrastructure => run.gave_up.push(index),
            CountsAgainst::Nothing => {}
        }
        if status == TestStatus::Passed {
            let mut unblocked = false;
            for position in 0..run.plan.tests[index].dependents.len() {
                let dependent = run.plan.tests[index].dependents[position];
                if let TestState::Waiting { unfinished_dependencies } = &mut run.states[dependent] {
                    *unfinished_dependencies -= 1;
                    if *unfinished_dependencies == 0 {
                        run.states[dependent] = TestState::Ready;
                        run.ready
                            .insert(ReadyEntry { priority: run.plan.dispatch_priority(dependent), index: dependent });
                        unblocked = true;
                    }
                }
            }
            if unblocked {
                run.ready_changed();
                decisions.push(Decision::WorkAvailable);
            }
        } else {
            // Everything waiting on this test, transitively, will not run: waiting, or leased
            // after it in its lease (the worker holds it back).
            let mut stack = vec![(index, run.plan.tests[index].id.clone(), status)];
            while let Some((blocker, blocker_id, blocker_status)) = stack.pop() {
                for position in 0..run.plan.tests[blocker].dependents.len() {
                    let dependent = run.plan.tests[blocker].dependents[position];
                    match run.states[dependent] {
                        TestState::Waiting { .. } => run.unleased_work -= run.plan.tests[dependent].estimate_s,
                        TestState::Leased(holder) => {
                            if let Some(lease) = self.leases.get_mut(&holder) {
                                lease.skipped += 1;
                                lease.remaining_estimate =
                                    (lease.remaining_estimate - run.plan.tests[dependent].estimate_s).max(0.0);
                            }
                        }
                        _ => continue,
                    }
                    run.states[dependent] = TestState::Done(TestStatus::Skipped);
                    run.unfinished -= 1;
                    let reason = format!("dependency {blocker_id:?} {}", blocker_status.as_str());
                    let test_id = run.plan.tests[dependent].id.clone();
                    decisions.push(Decision::Skipped { build, test_id, reason });
                    stack.push((dependent, run.plan.tests[dependent].id.clone(), TestStatus::Skipped));
                }
            }
        }
        if run.unfinished == 0 {
            decisions.extend(self.finish_build(build));
        }
    }

    pub(super) fn finish_build(&mut self, build: BuildId) -> Option<Decision> {
        let run = self.builds.remove(&build)?;
        self.forget_leases_of(build);
        let ids = |mut indices: Vec<PlanIndex>| {
            indices.sort_unstable();
            indices.into_iter().map(|index| run.plan.tests[index].id.clone()).collect()
        };
        let verdict = if !run.fails_build.is_empty() {
            Verdict::Red { failed: ids(run.fails_build.clone()) }
        } else if !run.gave_up.is_empty() {
            Verdict::Error { gave_up: ids(run.gave_up.clone()) }
        } else {
            Verdict::Green
        };
        // The bound on what the tests took (a test no worker ran took nothing), for the
        // workers that took part, with what the build's shards cost.
        let durations: Vec<Seconds> = run.durations.iter().map(|duration| duration.unwrap_or(0.0)).collect();
        let measured_bound_s = run.plan.lower_bound_with_costs(
            &durations,
            &vec![1.0; run.started.len().max(1)],
            run.costs.overhead(),
            run.costs.startup(),
        );
        Some(Decision::BuildFinished { build, verdict, measured_bound_s })
    }

    pub(super) fn forget_leases_of(&mut self, build: BuildId) {
        let workers = &mut self.workers;
        let retired = &mut self.retired;
        self.leases.retain(|lease, state| {
            if state.build != build {
                return true;
            }
            retired.insert(*lease, RetiredLease { worker: state.worker, build });
            if let Some(worker_state) = workers.get_mut(&state.worker)
                && worker_state.lease == Some(*lease)
            {
                worker_state.lease = None;
            }
            false
        });
        if !self.retired_builds.contains(&build) {
            self.retired_builds.push_back(build);
        }
        if self.retired_builds.len() > RETIRED_BUILDS
            && let Some(oldest) = self.retired_builds.pop_front()
        {
            self.retired.retain(|_, retired| retired.build != oldest);
        }
    }
}

/// What a final result counts against, for the verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CountsAgainst {
    /// The build: it is red.
    Build,
    /// The infrastructure: the test was given up on, no worker ran it.
    Infrastructure,
    /// Nothing: a pass, a skip, or a result out of the gate's reach.
    Nothing,
}

/// What the final result of a test that ran counts against: a failure, or with
/// [`SchedulerConfig::flaky_fails_build`] a pass after a failed attempt, counts against
/// the build unless the test is quarantined.
fn counts_against(config: &SchedulerConfig, status: TestStatus, flaky: bool, quarantined: bool) -> CountsAgainst {
    let fails = status.is_failure() || (flaky && config.flaky_fails_build);
    if fails && !quarantined { CountsAgainst::Build } else { CountsAgainst::Nothing }
}
