//! The worker protocol: a worker registers, long-polls for a lease, heartbeats, reports
//! results in batches and finishes its lease; time passing expires the leases of workers
//! that went silent. Each call hands one event to the scheduler and carries out what it
//! decided; the scheduler checks every precondition (whose lease, which tests) once.
//!
//! **Who a worker is.** A name belongs to the live registration that holds it. A worker
//! process draws a session (a secret it keeps in memory) when it starts and presents it
//! with its registration and every later call ([`WorkerCredentials`]). The same session
//! registering again (its answer was lost, or the master restarted and forgot it) gets
//! its registration back. Another session under a live name is refused
//! ([`FarmError::NameInUse`]): two machines cloned with the same name is the usual cause,
//! and handing the second one an identity of its own would leave two workers the page
//! and the logs cannot tell apart, while the first would keep running under a name
//! someone else answers to. Only once the holder is lost (silent for a lease timeout,
//! not waiting in a long-poll: its process died, or its machine was replaced) does a new
//! session take the name, with an id of its own: the old registration's lease has
//! expired by then and is taken back, its tests run again, so nothing of it is inherited.
//! A restarted worker therefore gets back in by itself, within a lease timeout. A call
//! for a registration without its session is refused ([`FarmError::WrongSession`]); an
//! older worker that sends no session is taken on its id alone, as before. A worker with
//! a token of its own (`[workers.NAME] token`) is the only one that may act as NAME, and
//! its token acts as no other name.

use greenlight_scheduler::core::{LeaseId, Outcome, Report, ReportedTest, WorkerId};
use greenlight_shared::API_VERSION;
use greenlight_shared::api::{
    Lease, LeaseRequest, Prepare, RegisterResponse, ResultsResponse, ShardOutcome, ShardState, ShardView, TestCounts,
    TestReport, TestResultView, TestStatus, WarmUp,
};

use super::preparations::Listing;
use super::{Core, Farm, FarmError, Registration};
use crate::secret::constant_time_eq;

/// What a worker asking for work gets.
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    /// A shard to run.
    Lease(Lease),
    /// A revision to prepare.
    Prepare(Prepare),
    /// A revision whose warm runner to start while another worker prepares it.
    WarmUp(WarmUp),
}

/// The worker token a call presented, as the API checked it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerToken {
    /// The shared `worker_token` (or none, when the master asks for none).
    Shared,
    /// The token of `[workers.NAME]`: it acts as NAME only.
    Own(String),
}

/// Who a worker call says it is: the token it presented and the session of its process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerCredentials {
    /// The token.
    pub token: WorkerToken,
    /// The session (the `greenlight-session` header); `None` from an older worker.
    pub session: Option<String>,
}

impl Farm {
    /// A worker registers under `name`: the live registration holding the name when the
    /// session is its own, else a new one if the holder is lost (see the module's doc).
    pub fn register(&self, name: &str, credentials: &WorkerCredentials) -> Result<RegisterResponse, FarmError> {
        self.may_act_as(name, &credentials.token)?;
        let now = self.now();
        let lease_timeout_s = self.config.scheduler.lease_timeout_s;
        let mut core = self.core();
        let core = &mut *core;
        let holder = core.worker_by_name.get(name).and_then(|&id| Some((id, core.workers.get(&id)?)));
        let worker_id = match holder {
            Some((held_by, holder)) if same_session(holder.session.as_deref(), credentials.session.as_deref()) => {
                held_by
            }
            Some((held_by, holder)) if !holder.lost(now, lease_timeout_s) => {
                tracing::warn!(name, worker_id = held_by, "a registration under the name of a live worker refused");
                return Err(FarmError::NameInUse {
                    name: name.to_owned(),
                    worker_id: held_by,
                    silent_s: (now - holder.last_seen).max(0.0),
                    lease_timeout_s,
                });
            }
            Some((held_by, _)) => {
                // The holder is lost, so its lease is past its deadline: time passing
                // takes it back now (its tests run again), never handing it on.
                self.expire(core, now)?;
                core.workers.remove(&held_by);
                core.worker_by_name.remove(name);
                tracing::info!(
                    name,
                    old_worker_id = held_by,
                    "a silent worker's name taken over by a new registration"
                );
                self.new_registration(core, name, credentials, now)?
            }
            None => self.new_registration(core, name, credentials, now)?,
        };
        if let Some(registration) = core.workers.get_mut(&worker_id) {
            registration.last_seen = now;
        }
        core.scheduler.worker_joined(WorkerId(worker_id), now);
        if core.scheduler.worker_ratios(WorkerId(worker_id)).is_none() {
            // A machine seen before, under an earlier registration or by a master before
            // this one: its speed is known from its first shard.
            match self.store.worker_ratios(name) {
                Ok(Some(ratios)) => core.scheduler.restore_worker_ratios(WorkerId(worker_id), ratios),
                Ok(None) => {}
                Err(error) => tracing::warn!(name, %error, "what the worker showed of its speed is unreadable"),
            }
        }
        tracing::info!(worker_id, name, "worker registered");
        Ok(RegisterResponse {
            version: API_VERSION,
            worker_id,
            heartbeat_interval_s: self.config.scheduler.heartbeat_interval_s,
        })
    }

    fn new_registration(
        &self,
        core: &mut Core,
        name: &str,
        credentials: &WorkerCredentials,
        now: f64,
    ) -> Result<u64, FarmError> {
        let worker_id = self.store.next_id("worker")?;
        core.worker_by_name.insert(name.to_owned(), worker_id);
        let session = credentials.session.clone();
        core.workers
            .insert(worker_id, Registration { name: name.to_owned(), session, last_seen: now, waiting_until: now });
        Ok(worker_id)
    }

    /// Checks that a call for `worker_id` comes from the process that registered it, with
    /// a token that may act as it.
    pub fn authenticate(&self, worker_id: u64, credentials: &WorkerCredentials) -> Result<(), FarmError> {
        let core = self.core();
        let registration = core.workers.get(&worker_id).ok_or(FarmError::UnknownWorker(worker_id))?;
        self.may_act_as(&registration.name, &credentials.token)?;
        match &registration.session {
            // An older worker: it keeps no session.
            None => Ok(()),
            Some(session) if same_session(Some(session.as_str()), credentials.session.as_deref()) => Ok(()),
            Some(_) => Err(FarmError::WrongSession(worker_id)),
        }
    }

    /// Whether `token` may act as the worker `name`.
    fn may_act_as(&self, name: &str, token: &WorkerToken) -> Result<(), FarmError> {
        match (self.config.own_worker_token(name), token) {
            (None, WorkerToken::Shared) => Ok(()),
            (Some(_), WorkerToken::Own(holder)) if holder == name => Ok(()),
            (_, WorkerToken::Own(holder)) => Err(FarmError::WrongWorkerToken(format!(
                "the token presented is worker {holder:?}'s own: it acts as no other worker"
            ))),
            (Some(_), WorkerToken::Shared) => Err(FarmError::WrongWorkerToken(format!(
                "worker {name:?} has a token of its own ([workers.{name}] in the master's configuration); \
                 the shared worker token does not act as it"
            ))),
        }
    }

    /// Notes that a registered worker was heard now; returns its name.
    pub(super) fn heard_from(core: &mut Core, worker_id: u64, now: f64) -> Result<String, FarmError> {
        let worker = core.workers.get_mut(&worker_id).ok_or(FarmError::UnknownWorker(worker_id))?;
        worker.last_seen = now;
        Ok(worker.name.clone())
    }

    /// A worker waits up to `wait_s` in a long-poll for work: it is live until then.
    pub fn waiting(&self, worker_id: u64, wait_s: f64) -> Result<(), FarmError> {
        let now = self.now();
        let mut core = self.core();
        let worker = core.workers.get_mut(&worker_id).ok_or(FarmError::UnknownWorker(worker_id))?;
        worker.waiting_until = worker.waiting_until.max(now + wait_s);
        Ok(())
    }

    /// A worker asks for work: a revision to prepare (when it can, and a build waits on
    /// one), else a shard. `None` when there is nothing to do now.
    pub fn try_work(&self, worker_id: u64, request: &LeaseRequest) -> Result<Option<Work>, FarmError> {
        if request.can_prepare {
            let now = self.now();
            let mut core = self.core();
            let core = &mut *core;
            Farm::heard_from(core, worker_id, now)?;
            if let Some(prepare) = self.take_preparation(core, worker_id, now) {
                return Ok(Some(Work::Prepare(prepare)));
            }
        }
        // Whether it may be leased a dependency chain whole: it holds back a test whose
        // prerequisite in its lease did not pass (an older worker does not say so).
        self.core().scheduler.worker_holds_dependents(WorkerId(worker_id), request.can_hold_dependents);
        if let Some(lease) = self.try_lease(worker_id)? {
            return Ok(Some(Work::Lease(lease)));
        }
        if request.can_warm_up {
            return Ok(self.warm_up(&self.core(), request.warm_revision.as_deref()).map(Work::WarmUp));
        }
        Ok(None)
    }

    /// A worker asks for a shard. `None` when no test is ready now.
    pub fn try_lease(&self, worker_id: u64) -> Result<Option<Lease>, FarmError> {
        let now = self.now();
        let mut core = self.core();
        let core = &mut *core;
        let worker_name = Farm::heard_from(core, worker_id, now)?;
        let (grant, decisions) = core.scheduler.request_work(WorkerId(worker_id), now);
        self.apply(core, decisions, now)?;
        let Some(grant) = grant else { return Ok(None) };
        let (build_id, lease_id) = (grant.build.0, grant.lease.0);
        let tests = grant.tests;
        let live = core.running.get_mut(&build_id).expect("a scheduled build is live");
        if live.summary.state == greenlight_shared::api::BuildState::Queued {
            live.summary.state = greenlight_shared::api::BuildState::Running;
            live.summary.started_at = Some(now);
        }
        live.summary.shards += 1;
        let suite = &self.config.suite;
        // The runner its build was listed with: a warm runner collects what the listing did.
        let runner = Listing::of(&live.summary).runner(suite.runner());
        let shard = ShardView {
            lease_id,
            worker: worker_name,
            tests: tests.len() as u32,
            withdrawn: 0,
            started_at: now,
            finished_at: None,
            state: ShardState::Running,
            counts: TestCounts { total: tests.len() as u32, ..TestCounts::default() },
            test_ids: tests.clone(),
            runner_wall_s: None,
            copy_of: grant.copy_of.map(|primary| primary.0),
            stopped: None,
            // Written out when the shard is read (`Farm::build_detail`), not under the lock.
            reproduce: String::new(),
        };
        self.put_shard(build_id, &shard)?;
        self.put_build(&live.summary)?;
        let revision = live.summary.revision.clone();
        live.shards.insert(lease_id, shard);
        self.store.set_next_lease(lease_id + 1)?;
        tracing::info!(worker_id, lease_id, build_id, tests = tests.len(), "lease granted");
        self.metrics.leases_granted.inc();
        Ok(Some(Lease {
            lease_id,
            build_id,
            repository: self.config.repository.url.clone(),
            revision,
            tests,
            setup_command: suite.setup_command.clone(),
            run_command: suite.run_command.clone(),
            env: suite.env_pairs(),
            heartbeat_interval_s: self.config.scheduler.heartbeat_interval_s,
            lease_timeout_s: self.config.scheduler.lease_timeout_s,
            runner,
            warm: suite.warm_runner(),
            waits_on: grant.waits_on,
        }))
    }

    /// A heartbeat; returns whether the worker still holds the lease, and the tests
    /// withdrawn from it. Wakes the idle workers when one may run a backup copy of the
    /// test the lease is late with (`[scheduler] straggler_copies`).
    pub fn heartbeat(&self, lease_id: u64, worker_id: u64) -> Result<(bool, Vec<String>), FarmError> {
        let now = self.now();
        let mut core = self.core();
        Farm::heard_from(&mut core, worker_id, now)?;
        let active = core.scheduler.heartbeat(LeaseId(lease_id), WorkerId(worker_id), now)?;
        if core.scheduler.straggling(LeaseId(lease_id), now) {
            // An idle worker may run a backup copy of the test this lease is late with.
            self.work_available.notify_waiters();
        }
        Ok((active, core.scheduler.withdrawn(LeaseId(lease_id))))
    }

    /// A batch of results from a lease. The scheduler checks the whole batch before any of
    /// it is recorded; each accepted result is stored once, duplicates and stale reports
    /// are acknowledged without being counted. Not yet durable: the caller flushes before
    /// it answers.
    pub fn report(&self, lease_id: u64, worker_id: u64, results: &[TestReport]) -> Result<ResultsResponse, FarmError> {
        let mut observed = Vec::new();
        let response = self.report_locked(lease_id, worker_id, results, &mut observed)?;
        // The durations learned join the histories after the farm's lock is released; the
        // master writes them into the store every second (`Store::write_history`).
        self.store.add_durations(&observed);
        Ok(response)
    }

    fn report_locked<'a>(
        &self,
        lease_id: u64,
        worker_id: u64,
        results: &'a [TestReport],
        observed: &mut Vec<(&'a str, f64)>,
    ) -> Result<ResultsResponse, FarmError> {
        let now = self.now();
        let mut core = self.core();
        let core = &mut *core;
        let worker_name = Farm::heard_from(core, worker_id, now)?;
        let quarantined: Vec<bool> =
            results.iter().map(|result| core.flakes.quarantined(&result.test_id, now)).collect();
        let batch: Vec<ReportedTest<'_>> = results
            .iter()
            .zip(&quarantined)
            .map(|(result, &quarantined)| ReportedTest {
                test_id: &result.test_id,
                status: result.status,
                quarantined,
                duration_s: Some(self.bounded_duration(result.cost_s())),
            })
            .collect();
        let reports = core.scheduler.report(LeaseId(lease_id), WorkerId(worker_id), &batch, now)?;
        let build_id = core.scheduler.lease_build(LeaseId(lease_id));
        // The history is what a test takes on a machine of the farm's speed: a slower
        // one's durations are taken at its pace, or its tests' next estimates would be
        // its slowness too high (and a faster one's too low). As of its last request for
        // work: worked out anew at every batch, it would cost the farm's lock a pass over
        // the workers for a figure that moves slowly.
        let slowness = core.scheduler.slowness(WorkerId(worker_id));
        let mut response =
            ResultsResponse { version: API_VERSION, accepted: 0, duplicates: 0, stale: 0, withdrawn: Vec::new() };
        for ((result, quarantined), report) in results.iter().zip(quarantined).zip(reports) {
            match report {
                Report::Accepted { attempt, outcome, fails_build, decisions } => {
                    let build_id = build_id.expect("a lease that accepts results belongs to a build").0;
                    let stored = TestResultView {
                        test_id: result.test_id.clone(),
                        attempt,
                        status: result.status,
                        duration_s: self.bounded_duration(result.duration_s),
                        output: result
                            .output
                            .as_deref()
                            .map(|output| bounded_output(output, self.config.max_output_bytes)),
                        worker: Some(worker_name.clone()),
                        retried: outcome == Outcome::Retry,
                        flaky: outcome == Outcome::Final { flaky: true },
                        quarantined,
                        lease_id: Some(lease_id),
                    };
                    self.record_result(core, build_id, &stored, fails_build, now)?;
                    // The history keeps what the test cost its shard (a skip too: it
                    // will most likely skip again, and cost that again); an error's time
                    // (a crash, a timeout) and a duration that had to be clamped say
                    // nothing about the test.
                    let cost_s = self.bounded_duration(result.cost_s());
                    let believable = result.cost_s() <= self.config.max_test_duration_s;
                    if result.status != TestStatus::Error && cost_s > 0.0 && believable {
                        observed.push((&result.test_id, cost_s / slowness));
                    }
                    response.accepted += 1;
                    self.apply(core, decisions, now)?;
                }
                Report::Duplicate => response.duplicates += 1,
                Report::Stale => {
                    if result.status.is_failure() {
                        // Not counted: the lease no longer held the test (it expired, or the
                        // test was withdrawn and runs elsewhere). Left in the log, not lost.
                        tracing::warn!(
                            lease_id,
                            worker_id,
                            test_id = result.test_id,
                            status = result.status.as_str(),
                            "a failure arrived for a test this lease no longer holds; not counted"
                        );
                    }
                    response.stale += 1;
                }
            }
        }
        response.withdrawn = core.scheduler.withdrawn(LeaseId(lease_id));
        Ok(response)
    }

    /// The worker's shard process ended; `runner_wall_s` is how long its runner ran. Not
    /// yet durable: the caller flushes before it answers.
    pub fn finish(
        &self,
        lease_id: u64,
        worker_id: u64,
        outcome: &ShardOutcome,
        runner_wall_s: Option<f64>,
    ) -> Result<(), FarmError> {
        let now = self.now();
        let mut core = self.core();
        let core = &mut *core;
        Farm::heard_from(core, worker_id, now)?;
        let decisions = core.scheduler.lease_finished(LeaseId(lease_id), WorkerId(worker_id), now)?;
        if let (Some(ratios), Some(registration)) =
            (core.scheduler.worker_ratios(WorkerId(worker_id)), core.workers.get(&worker_id))
        {
            self.store.put_worker_ratios(&registration.name, &ratios)?;
        }
        let state = match outcome {
            ShardOutcome::Completed => ShardState::Finished,
            ShardOutcome::InfraError { message } => {
                tracing::warn!(lease_id, worker_id, message, "shard failed to run; its tests go back to the queue");
                ShardState::InfraError
            }
        };
        self.end_shard(core, lease_id, state, now, runner_wall_s)?;
        self.apply(core, decisions, now)
    }

    /// Time passed: expire leases whose heartbeats stopped. Returns whether anything
    /// changed (the caller then flushes).
    pub fn tick(&self) -> Result<bool, FarmError> {
        let now = self.now();
        let mut core = self.core();
        self.expire(&mut core, now)
    }

    /// Expires the leases and preparations past their deadline at `now`; whether any did.
    fn expire(&self, core: &mut Core, now: f64) -> Result<bool, FarmError> {
        let decisions = core.scheduler.tick(now);
        let changed = !decisions.is_empty();
        self.apply(core, decisions, now)?;
        let preparations_changed = self.expire_preparations(core, now);
        Ok(changed || preparations_changed)
    }
}

/// Whether a presented session is the registration's: both present and equal. An older
/// worker's registration has none, and nothing proves a second one is the same process.
fn same_session(registered: Option<&str>, presented: Option<&str>) -> bool {
    registered
        .zip(presented)
        .is_some_and(|(registered, presented)| constant_time_eq(registered.as_bytes(), presented.as_bytes()))
}

impl Farm {
    /// A reported duration as stored: not a number or negative is 0, beyond
    /// `max_test_duration_s` is clamped to it.
    fn bounded_duration(&self, duration_s: f64) -> f64 {
        if duration_s.is_nan() || duration_s < 0.0 { 0.0 } else { duration_s.min(self.config.max_test_duration_s) }
    }
}

/// `output` cut to its last `max_bytes` (on a character boundary), with a note saying how
/// much was left out.
fn bounded_output(output: &str, max_bytes: usize) -> String {
    if output.len() <= max_bytes {
        return output.to_owned();
    }
    let mut start = output.len() - max_bytes;
    while !output.is_char_boundary(start) {
        start += 1;
    }
    format!(
        "[greenlight: output cut to its last {} of {} bytes]\n{}",
        output.len() - start,
        output.len(),
        &output[start..]
    )
}

#[cfg(test)]
mod tests {
    use super::bounded_output;

    #[test]
    fn output_keeps_its_end_whole_characters_and_says_it_was_cut() {
        assert_eq!(bounded_output("short", 10), "short");
        let cut = bounded_output("ééééé", 5);
        assert_eq!(cut, "[greenlight: output cut to its last 4 of 10 bytes]\néé");
    }
}
