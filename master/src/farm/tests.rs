//! The farm's use cases, driven by hand: an in-memory store, a fake clock, a small git
//! repository made by the test, and no worker processes. The test plays the workers
//! through the same calls the HTTP handlers make, and moves time itself.

use std::sync::Arc;

use greenlight_fixtures::SUITE_FILE;
use greenlight_fixtures::repo::FixtureRepo;
use greenlight_scheduler::core::{SchedulerError, ShardSizing};
use greenlight_shared::api::{
    BuildState, BuildSummary, GateState, HealthKind, Lease, PushState, ResultsResponse, ShardOutcome, ShardState,
    TestReport, TestStatus,
};
use greenlight_shared::suite::{SuiteFile, SuiteTest};

use super::{Farm, FarmError, WorkerCredentials, WorkerToken};
use crate::clock::{Clock, FakeClock};
use crate::config::{Config, ShardSizingName, SuiteConfig};
use crate::store::{Kv, MemoryKv, Store, StoreError};

const START: f64 = 1_000_000.0;

fn suite(ids: &[&str]) -> SuiteFile {
    SuiteFile {
        name: "unit".to_owned(),
        shard_overhead_s: 0.0,
        tests: ids
            .iter()
            .map(|id| SuiteTest {
                id: (*id).to_owned(),
                tags: vec!["core".to_owned()],
                depends_on: Vec::new(),
                duration_s: Some(1.0),
            })
            .collect(),
    }
}

/// Test statuses where `a` fails its first run and everything else passes: a flake of `a`
/// once a retry passes.
fn a_fails_once() -> impl Fn(&str) -> TestStatus {
    let failed_once = std::sync::Mutex::new(false);
    move |id: &str| {
        let mut failed = failed_once.lock().unwrap();
        if id == "a" && !*failed {
            *failed = true;
            TestStatus::Failed
        } else {
            TestStatus::Passed
        }
    }
}

/// A farm over a fresh repository holding `suite`, on a fake clock.
struct Harness {
    /// Holds the repository and the data directory until the test ends.
    _dir: tempfile::TempDir,
    repo: FixtureRepo,
    clock: FakeClock,
    /// The store's backend, whose writes a test can make fail as a full disk does.
    kv: Arc<MemoryKv>,
    store: Store,
    config: Config,
    farm: Arc<Farm>,
}

impl Harness {
    fn new(suite: &SuiteFile, configure: impl FnOnce(&mut Config)) -> Harness {
        let kv = Arc::new(MemoryKv::default());
        Harness::over(suite, configure, kv.clone(), kv)
    }

    /// A farm whose store goes through `backend`, a wrapper of `kv`.
    fn over(
        suite: &SuiteFile,
        configure: impl FnOnce(&mut Config),
        kv: Arc<MemoryKv>,
        backend: Arc<dyn crate::store::Kv>,
    ) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let repo_dir = dir.path().join("repo");
        std::fs::create_dir_all(&repo_dir).unwrap();
        let repo = FixtureRepo::create(&repo_dir, suite).unwrap();
        let mut config = Config::new(
            dir.path().join("data"),
            repo_dir.to_str().unwrap().to_owned(),
            SuiteConfig::command(SUITE_FILE, vec!["true".to_owned()]),
        );
        configure(&mut config);
        let clock = FakeClock::at(START);
        let store = Store::new(backend);
        let farm = Harness::farm(&config, &store, &clock);
        Harness { _dir: dir, repo, clock, kv, store, config, farm }
    }

    fn farm(config: &Config, store: &Store, clock: &FakeClock) -> Arc<Farm> {
        let farm = Farm::with_clock(config.clone(), store.clone(), Arc::new(clock.clone())).unwrap();
        farm.recover().unwrap();
        Arc::new(farm)
    }

    /// A new master over the same store, as after a crash.
    fn restart(&mut self) {
        self.farm = Harness::farm(&self.config, &self.store, &self.clock);
    }

    /// Polls the branch and starts the build it calls for.
    async fn next_build(&self) -> u64 {
        self.farm.poll().await.unwrap();
        self.farm.start_next_build().await.unwrap().expect("a build starts")
    }

    /// Registers `name` as its worker process would, with a session of its own.
    fn register(&self, name: &str) -> u64 {
        self.farm.register(name, &session_of(name)).unwrap().worker_id
    }

    fn lease(&self, worker_id: u64) -> Lease {
        self.farm.try_lease(worker_id).unwrap().expect("a test is ready")
    }

    fn report(
        &self,
        lease: &Lease,
        worker_id: u64,
        results: &[(&str, TestStatus)],
    ) -> Result<ResultsResponse, FarmError> {
        self.clock.advance(1.0);
        let reports: Vec<TestReport> = results
            .iter()
            .map(|(test_id, status)| TestReport {
                test_id: (*test_id).to_owned(),
                status: *status,
                duration_s: 1.0,
                wall_s: None,
                output: None,
            })
            .collect();
        self.farm.report(lease.lease_id, worker_id, &reports)
    }

    /// `worker_id` takes shards until none is ready, reporting `status_of` for each test.
    fn run_all(&self, worker_id: u64, status_of: impl Fn(&str) -> TestStatus) {
        while let Some(lease) = self.farm.try_lease(worker_id).unwrap() {
            for test_id in &lease.tests {
                self.report(&lease, worker_id, &[(test_id, status_of(test_id))]).unwrap();
            }
            self.farm.finish(lease.lease_id, worker_id, &ShardOutcome::Completed, Some(1.0)).unwrap();
        }
    }

    fn build(&self, build_id: u64) -> BuildSummary {
        self.farm.build_summary(build_id).unwrap()
    }

    fn shard_state(&self, build_id: u64, lease_id: u64) -> ShardState {
        self.farm.shard(build_id, lease_id).unwrap().expect("the shard exists").state
    }

    fn gate(&self) -> GateState {
        self.farm.gate("main").unwrap().state
    }
}

/// The credentials of the process `name` (its session: `session-of-NAME`), with the
/// shared token.
fn session_of(name: &str) -> WorkerCredentials {
    WorkerCredentials { token: WorkerToken::Shared, session: Some(format!("session-of-{name}")) }
}

fn passing(_: &str) -> TestStatus {
    TestStatus::Passed
}

mod reads;

#[tokio::test]
async fn a_worker_runs_a_build_to_green_and_the_scheduler_says_what_it_holds() {
    let harness = Harness::new(&suite(&["a", "b", "c"]), |_| {});
    let build_id = harness.next_build().await;
    let worker = harness.register("w1");
    let lease = harness.lease(worker);
    let view = harness.farm.workers();
    assert_eq!((view[0].lease_id, view[0].build_id), (Some(lease.lease_id), Some(build_id)), "{view:?}");
    assert_eq!(harness.build(build_id).state, BuildState::Running);
    for test_id in &lease.tests {
        harness.report(&lease, worker, &[(test_id, TestStatus::Passed)]).unwrap();
    }
    harness.farm.finish(lease.lease_id, worker, &ShardOutcome::Completed, Some(3.5)).unwrap();
    harness.run_all(worker, passing);
    let build = harness.build(build_id);
    assert_eq!((build.state, build.counts.passed), (BuildState::Green, 3), "{build:?}");
    assert_eq!(harness.shard_state(build_id, lease.lease_id), ShardState::Finished);
    assert_eq!(harness.farm.workers()[0].lease_id, None, "a finished lease is no longer held");
    assert_eq!(harness.gate(), GateState::Open);
}

/// Commit hooks ask the gate all day. Its answer must not wait for the farm's lock, which
/// a lease, a batch of results or a build's start holds for milliseconds under load, and
/// it must still show every change the moment it is made.
#[tokio::test]
async fn the_gate_answers_while_the_farms_lock_is_held_and_shows_each_change_at_once() {
    let harness = Harness::new(&suite(&["a", "b"]), |_| {});
    let build_id = harness.next_build().await;
    let worker = harness.register("w1");
    let held = harness.farm.core();
    let (answered, answer) = std::sync::mpsc::channel();
    let farm = Arc::clone(&harness.farm);
    std::thread::spawn(move || answered.send(farm.gate("main").map(|gate| gate.state)));
    let state = answer.recv_timeout(std::time::Duration::from_secs(10));
    drop(held);
    assert_eq!(state, Ok(Some(GateState::Open)), "the gate answered while the lock was held");
    assert_eq!(harness.farm.gate("other"), None, "an unwatched branch has no gate");

    let lease = harness.lease(worker);
    let failing = lease.tests[0].clone();
    harness.report(&lease, worker, &[(&failing, TestStatus::Failed)]).unwrap();
    harness.farm.finish(lease.lease_id, worker, &ShardOutcome::Completed, None).unwrap();
    let retry = harness.lease(worker);
    assert_eq!(retry.tests[0], failing);
    harness.report(&retry, worker, &[(&failing, TestStatus::Failed)]).unwrap();
    let gate = harness.farm.gate("main").unwrap();
    assert_eq!((gate.state, gate.failing_tests.len()), (GateState::Closed, 1), "closed at the real failure: {gate:?}");
    harness.run_all(worker, passing);
    assert_eq!(harness.build(build_id).state, BuildState::Red);
    assert_eq!(harness.farm.gate("main").unwrap().state, GateState::Closed);
}

/// A shard's test ids are stored once, apart from its state, and its reproduce line is
/// written out from them when it is read: both must still be there once the shard has
/// ended (its state rewritten without them) and after a restart.
#[tokio::test]
async fn a_shard_keeps_its_tests_and_reproduce_line_after_it_ends_and_after_a_restart() {
    let mut harness = Harness::new(&suite(&["a", "b", "c"]), |config| {
        config.suite.run_command = vec!["run-tests".to_owned(), "{ids}".to_owned()];
    });
    let build_id = harness.next_build().await;
    let worker = harness.register("w1");
    let lease = harness.lease(worker);
    let check = |harness: &Harness, finished: bool| {
        let shard = harness.farm.shard(build_id, lease.lease_id).unwrap().expect("the shard exists");
        assert_eq!(shard.test_ids, lease.tests);
        assert!(
            shard.reproduce.ends_with(&format!("run-tests {}", lease.tests.join(" "))),
            "the reproduce line runs the shard's tests: {}",
            shard.reproduce
        );
        assert_eq!(shard.finished_at.is_some(), finished, "{shard:?}");
        let detail = harness.farm.build_detail(build_id, false).unwrap();
        let listed = detail.shards.iter().find(|listed| listed.lease_id == lease.lease_id).unwrap();
        assert!(listed.test_ids.is_empty(), "ids only when asked for");
        assert_eq!(listed.reproduce, shard.reproduce);
        // The scheduler's estimate of the time left, while the build runs.
        assert_eq!(detail.remaining_s.is_some(), !finished, "{:?}", detail.remaining_s);
    };
    check(&harness, false);
    for test_id in &lease.tests {
        harness.report(&lease, worker, &[(test_id, TestStatus::Passed)]).unwrap();
    }
    harness.farm.finish(lease.lease_id, worker, &ShardOutcome::Completed, Some(1.0)).unwrap();
    harness.run_all(worker, passing);
    assert_eq!(harness.build(build_id).state, BuildState::Green);
    check(&harness, true);
    harness.restart();
    check(&harness, true);
}

#[tokio::test]
async fn a_batch_naming_a_test_outside_the_lease_is_refused_whole_and_records_nothing() {
    let harness = Harness::new(&suite(&["a", "b"]), |_| {});
    let build_id = harness.next_build().await;
    let worker = harness.register("w1");
    let lease = harness.lease(worker);
    let first = lease.tests[0].clone();
    let refused = harness.report(&lease, worker, &[(&first, TestStatus::Passed), ("not-leased", TestStatus::Passed)]);
    assert!(
        matches!(refused, Err(FarmError::Scheduler(SchedulerError::TestNotInLease { ref test_id, .. })) if test_id == "not-leased"),
        "{refused:?}"
    );
    assert!(harness.farm.build_tests(build_id).unwrap().results.is_empty(), "nothing of the batch was stored");
    let accepted = harness.report(&lease, worker, &[(&first, TestStatus::Passed)]).unwrap();
    assert_eq!(accepted.accepted, 1, "the good result is still taken on its own");
    let other = harness.register("w2");
    let stolen = harness.report(&lease, other, &[(&first, TestStatus::Failed)]);
    assert!(matches!(stolen, Err(FarmError::Scheduler(SchedulerError::NotYourLease { .. }))), "{stolen:?}");
}

#[tokio::test]
async fn a_silent_worker_loses_its_lease_when_the_clock_passes_the_timeout() {
    let harness = Harness::new(&suite(&["a", "b"]), |config| config.scheduler.lease_timeout_s = 30.0);
    let build_id = harness.next_build().await;
    let silent = harness.register("silent");
    let lease = harness.lease(silent);
    harness.clock.advance(29.0);
    assert!(!harness.farm.tick().unwrap(), "not yet past the timeout");
    assert_eq!(harness.shard_state(build_id, lease.lease_id), ShardState::Running);
    harness.clock.advance(2.0);
    assert!(harness.farm.tick().unwrap());
    assert_eq!(harness.shard_state(build_id, lease.lease_id), ShardState::Expired);
    let late = harness.report(&lease, silent, &[(&lease.tests[0], TestStatus::Failed)]).unwrap();
    assert_eq!((late.accepted, late.stale), (0, 1), "a report from the lost lease is stale");
    let rescuer = harness.register("rescuer");
    harness.run_all(rescuer, passing);
    let build = harness.build(build_id);
    assert_eq!((build.state, build.counts.passed, build.counts.failed), (BuildState::Green, 2, 0), "{build:?}");
}

#[tokio::test]
async fn a_worker_that_asks_again_while_holding_a_lease_has_it_taken_back_and_it_never_shows_running() {
    let harness = Harness::new(&suite(&["a", "b", "c", "d"]), |_| {});
    let build_id = harness.next_build().await;
    let worker = harness.register("w1");
    let abandoned = harness.lease(worker);
    harness.report(&abandoned, worker, &[(&abandoned.tests[0], TestStatus::Passed)]).unwrap();
    // The worker restarted and asks for work: its old shard is over.
    harness.lease(worker);
    assert_eq!(harness.shard_state(build_id, abandoned.lease_id), ShardState::TakenBack);
    harness.run_all(worker, passing);
    assert_eq!(harness.shard_state(build_id, abandoned.lease_id), ShardState::TakenBack, "not `finished` at the end");
    assert_eq!(harness.build(build_id).state, BuildState::Green);
}

#[tokio::test]
async fn a_cancelled_build_shows_its_running_shards_cancelled_and_queues_its_changes_again() {
    let harness = Harness::new(&suite(&["a", "b"]), |_| {});
    let build_id = harness.next_build().await;
    let worker = harness.register("w1");
    let lease = harness.lease(worker);
    let cancelled = harness.farm.cancel_build(build_id).unwrap();
    assert_eq!(cancelled.state, BuildState::Error);
    assert_eq!(harness.shard_state(build_id, lease.lease_id), ShardState::Cancelled);
    assert_eq!(harness.farm.workers()[0].lease_id, None, "the scheduler ended the lease");
    assert!(matches!(harness.farm.cancel_build(build_id), Err(FarmError::BuildEnded(_))));
    let again = harness.farm.start_next_build().await.unwrap().expect("its changes are queued again");
    assert_eq!(harness.build(again).changes, cancelled.changes);
}

#[tokio::test]
async fn a_real_failure_closes_the_gate_at_once_and_a_green_build_reopens_it() {
    let harness = Harness::new(&suite(&["a", "b", "c", "d", "e", "f"]), |config| {
        config.scheduler.shard_sizing = ShardSizingName::Fitted;
    });
    let red = harness.next_build().await;
    let (first, second) = (harness.register("w1"), harness.register("w2"));
    // One shard each (fitted): three tests.
    let lease = harness.lease(first);
    let other = harness.lease(second);
    assert_eq!((lease.tests.len(), other.tests.len()), (3, 3));
    let failing = lease.tests[0].clone();
    harness.report(&lease, first, &[(&failing, TestStatus::Failed)]).unwrap();
    assert_eq!(harness.gate(), GateState::Open, "one failed attempt is retried before it counts");
    // The retry runs on the other worker, which does not finish its whole shard first: it
    // keeps the test it runs and gives back the rest.
    let answer = harness.report(&other, second, &[(&other.tests[0], TestStatus::Passed)]).unwrap();
    assert_eq!(answer.withdrawn, other.tests[2..]);
    harness.report(&other, second, &[(&other.tests[1], TestStatus::Passed)]).unwrap();
    harness.farm.finish(other.lease_id, second, &ShardOutcome::Completed, None).unwrap();
    let retry = harness.lease(second);
    assert_eq!(retry.tests[0], failing, "the retry comes first");
    harness.report(&retry, second, &[(&failing, TestStatus::Failed)]).unwrap();
    assert_eq!(harness.gate(), GateState::Closed, "closed before the build ends");
    assert_eq!(harness.build(red).state, BuildState::Running);
    for test_id in &retry.tests[1..] {
        harness.report(&retry, second, &[(test_id, TestStatus::Passed)]).unwrap();
    }
    harness.farm.finish(retry.lease_id, second, &ShardOutcome::Completed, None).unwrap();
    for test_id in &lease.tests[1..] {
        harness.report(&lease, first, &[(test_id, TestStatus::Passed)]).unwrap();
    }
    harness.farm.finish(lease.lease_id, first, &ShardOutcome::Completed, None).unwrap();
    harness.run_all(first, passing);
    let build = harness.build(red);
    assert_eq!((build.state, build.failed_tests.clone()), (BuildState::Red, vec![failing]), "{build:?}");
    harness.repo.touch_area("core", "Fix it").unwrap();
    let green = harness.next_build().await;
    harness.run_all(first, passing);
    harness.run_all(second, passing);
    assert_eq!(harness.build(green).state, BuildState::Green);
    assert_eq!(harness.gate(), GateState::Open);
}

#[tokio::test]
async fn a_quarantined_failure_neither_closes_the_gate_nor_makes_the_build_red_until_it_expires() {
    let harness = Harness::new(&suite(&["a", "b"]), |_| {});
    harness.farm.quarantine("a", "known broken", Some(60.0)).unwrap();
    let build_id = harness.next_build().await;
    let worker = harness.register("w1");
    harness.run_all(worker, |id| if id == "a" { TestStatus::Failed } else { TestStatus::Passed });
    let build = harness.build(build_id);
    assert_eq!((build.state, build.counts.quarantined), (BuildState::Green, 1), "{build:?}");
    assert_eq!(harness.gate(), GateState::Open);
    // The fake clock passes the quarantine's expiry: the same failure counts again.
    harness.clock.advance(120.0);
    assert!(harness.farm.quarantine_list().is_empty());
    harness.repo.touch_area("core", "Touch").unwrap();
    let next = harness.next_build().await;
    harness.run_all(worker, |id| if id == "a" { TestStatus::Failed } else { TestStatus::Passed });
    assert_eq!(harness.build(next).state, BuildState::Red);
    assert_eq!(harness.gate(), GateState::Closed);
}

#[tokio::test]
async fn a_flaky_test_is_green_by_default_and_red_when_flaky_tests_fail_builds() {
    for flaky_fails_build in [false, true] {
        let harness = Harness::new(&suite(&["a", "b"]), |config| config.gate.flaky_fails_build = flaky_fails_build);
        let build_id = harness.next_build().await;
        let worker = harness.register("w1");
        harness.run_all(worker, a_fails_once());
        let build = harness.build(build_id);
        assert_eq!(build.counts.flaky, 1, "{build:?}");
        if flaky_fails_build {
            assert_eq!((build.state, build.failed_tests), (BuildState::Red, vec!["a".to_owned()]));
            assert_eq!(harness.gate(), GateState::Closed);
        } else {
            assert_eq!(build.state, BuildState::Green);
            assert_eq!(harness.gate(), GateState::Open);
        }
        let flaky = harness.farm.flaky_tests().unwrap();
        assert_eq!((flaky[0].test_id.as_str(), flaky[0].flaky, flaky[0].runs), ("a", 1, 1));
    }
}

#[tokio::test]
async fn a_test_that_flakes_above_the_threshold_is_quarantined_automatically() {
    let harness = Harness::new(&suite(&["a", "b"]), |config| {
        config.quarantine.flake_rate = 0.5;
        config.quarantine.min_runs = 2;
    });
    let worker = harness.register("w1");
    harness.next_build().await;
    harness.run_all(worker, a_fails_once());
    assert!(harness.farm.quarantine_list().is_empty(), "one run is below `min_runs`");
    harness.repo.touch_area("core", "Again").unwrap();
    harness.next_build().await;
    harness.run_all(worker, a_fails_once());
    let quarantined = harness.farm.quarantine_list();
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
    assert_eq!((quarantined[0].test_id.as_str(), quarantined[0].by.as_str()), ("a", "auto"));
    let since = quarantined[0].since;
    assert!(since > START && since <= Clock::now(&harness.clock), "quarantined at the farm's clock's time: {since}");
}

/// When [`drive`] restarts the master, as after a crash.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Restart {
    Never,
    /// As soon as the red build ends, before culprit finding started.
    WhenRed,
    /// While the second probe runs, before its worker reported anything.
    MidBisection,
}

/// Drives the build loop and one worker until no build is left to run: the worker fails
/// a test where `fails(test, revision, probe)` says so (`probe`: the lease is a probe's).
/// Returns the probes run.
async fn drive(
    harness: &mut Harness,
    mut worker: u64,
    red: u64,
    restart: Restart,
    fails: impl Fn(&str, &str, bool) -> bool,
) -> usize {
    let mut probes = 0;
    let mut restarted = restart == Restart::Never;
    loop {
        let Some(lease) = harness.farm.try_lease(worker).unwrap() else {
            if !restarted && restart == Restart::WhenRed {
                assert_eq!(harness.build(red).state, BuildState::Red);
                harness.restart();
                worker = harness.register("w1");
                restarted = true;
            }
            // Culprit finding and its probes start from the build loop.
            let before = harness.farm.builds(100).unwrap().len();
            harness.farm.start_next_build().await.unwrap();
            if harness.farm.builds(100).unwrap().len() == before {
                break;
            }
            probes += 1;
            continue;
        };
        let probe = lease.build_id != red;
        if probe && probes == 2 && !restarted {
            harness.restart();
            worker = harness.register("w1");
            restarted = true;
            continue;
        }
        for test_id in &lease.tests {
            let status = if fails(test_id, &lease.revision, probe) { TestStatus::Failed } else { TestStatus::Passed };
            harness.report(&lease, worker, &[(test_id, status)]).unwrap();
        }
        harness.farm.finish(lease.lease_id, worker, &ShardOutcome::Completed, None).unwrap();
    }
    probes
}

/// Three changes in one batch, the second breaking `a`; a worker fails `a` wherever it is
/// broken. Returns the harness, the red build, the breaking revision and the probes run.
async fn find_the_culprit(restart: Restart) -> (Harness, u64, String, usize) {
    let mut harness = Harness::new(&suite(&["a", "b"]), |_| {});
    let worker = harness.register("w1");
    harness.next_build().await;
    harness.run_all(worker, passing);
    let _first = harness.repo.touch_area("core", "One").unwrap();
    let breaking = harness.repo.touch_area("core", "Two breaks a").unwrap();
    let last = harness.repo.touch_area("core", "Three").unwrap();
    let broken_from = [breaking.clone(), last];
    let red = harness.next_build().await;
    assert_eq!(harness.build(red).changes.len(), 3);
    let probes = drive(&mut harness, worker, red, restart, |test_id, revision, _| {
        test_id == "a" && broken_from.iter().any(|bad| bad == revision)
    })
    .await;
    (harness, red, breaking, probes)
}

#[tokio::test]
async fn culprit_finding_names_the_change_that_broke_a_test_in_a_batch() {
    for restart in [Restart::Never, Restart::WhenRed, Restart::MidBisection] {
        let (harness, red, breaking, probes) = find_the_culprit(restart).await;
        let build = harness.build(red);
        assert_eq!(build.state, BuildState::Red);
        let culprit = harness.farm.store().change(build.culprit.expect("a culprit is named")).unwrap().unwrap();
        assert_eq!(culprit.revision, breaking, "{restart:?}");
        assert_eq!(build.culprits.len(), 1);
        assert_eq!(
            (build.culprits[0].change, build.culprits[0].tests.clone()),
            (culprit.sequence, vec!["a".to_owned()])
        );
        assert_eq!(probes, 3, "the confirmation, then two probes for three candidates");
        assert_eq!(build.probes.len(), 3);
        let gate = harness.farm.gate("main").unwrap();
        assert_eq!(gate.culprit.map(|change| change.revision), Some(breaking));
        assert_eq!(gate.culprits.len(), 1);
        assert!(harness.store.culprit_searches_wanted().unwrap().is_empty(), "the request is done with");
        assert!(harness.store.bisections().unwrap().is_empty(), "the finding has ended");
    }
}

#[tokio::test]
async fn a_failure_that_passes_at_its_own_revision_is_a_flake_blamed_on_nobody() {
    for restart in [Restart::Never, Restart::WhenRed] {
        let mut harness = Harness::new(&suite(&["a", "b"]), |_| {});
        let worker = harness.register("w1");
        harness.next_build().await;
        harness.run_all(worker, passing);
        harness.repo.touch_area("core", "One").unwrap();
        harness.repo.touch_area("core", "Two").unwrap();
        let red = harness.next_build().await;
        // `a` fails on its run and its retry in the build, and passes when re-run there.
        let probes = drive(&mut harness, worker, red, restart, |test_id, _, probe| test_id == "a" && !probe).await;
        let build = harness.build(red);
        assert_eq!((build.state, build.failed_tests.clone()), (BuildState::Red, vec!["a".to_owned()]));
        assert_eq!((build.culprit, build.culprits.len()), (None, 0), "nobody is blamed");
        assert_eq!(build.not_reproduced, vec!["a".to_owned()]);
        assert_eq!(probes, 1, "the confirmation only");
        let gate = harness.farm.gate("main").unwrap();
        assert_eq!(gate.state, GateState::Open, "its only failure was a flake");
        assert!(gate.warning.as_deref().unwrap_or_default().contains("did not reproduce"), "{gate:?}");
        assert!(harness.store.changes_from(1, 100).unwrap().iter().all(|change| change.culprit_of.is_none()));
        let flaky = harness.farm.flaky_tests().unwrap();
        assert_eq!((flaky.len(), flaky[0].test_id.as_str(), flaky[0].flaky), (1, "a", 1), "{flaky:?}");
    }
}

#[tokio::test]
async fn a_test_failing_already_when_last_run_blames_none_of_the_new_changes() {
    let mut harness = Harness::new(&suite(&["a", "b"]), |_| {});
    let worker = harness.register("w1");
    harness.next_build().await;
    harness.run_all(worker, passing);
    let breaking = harness.repo.touch_area("core", "Breaks a").unwrap();
    let first_red = harness.next_build().await;
    drive(&mut harness, worker, first_red, Restart::Never, |test_id, _, _| test_id == "a").await;
    assert_eq!(harness.build(first_red).culprits[0].revision, breaking);
    // A fix that does not fix it: the next red build is not the fix's fault.
    harness.repo.touch_area("core", "Does not fix a [fix]").unwrap();
    let second_red = harness.next_build().await;
    let probes = drive(&mut harness, worker, second_red, Restart::Never, |test_id, _, _| test_id == "a").await;
    let build = harness.build(second_red);
    assert_eq!((build.state, build.culprits.len(), probes), (BuildState::Red, 0, 0), "{build:?}");
}

#[tokio::test]
async fn a_restarted_master_resumes_the_build_keeping_the_results_it_stored() {
    let mut harness = Harness::new(&suite(&["a", "b", "c", "d"]), |_| {});
    let build_id = harness.next_build().await;
    let worker = harness.register("w1");
    let lease = harness.lease(worker);
    let reported = lease.tests[0].clone();
    harness.report(&lease, worker, &[(&reported, TestStatus::Passed)]).unwrap();
    harness.restart();
    assert_eq!(harness.shard_state(build_id, lease.lease_id), ShardState::Expired, "its lease died with the master");
    assert!(matches!(harness.farm.try_lease(worker), Err(FarmError::UnknownWorker(_))), "workers register again");
    let worker = harness.register("w1");
    let mut rerun = Vec::new();
    while let Some(lease) = harness.farm.try_lease(worker).unwrap() {
        for test_id in &lease.tests {
            rerun.push(test_id.clone());
            harness.report(&lease, worker, &[(test_id, TestStatus::Passed)]).unwrap();
        }
        harness.farm.finish(lease.lease_id, worker, &ShardOutcome::Completed, None).unwrap();
    }
    assert!(!rerun.contains(&reported), "a stored result is not run again: {rerun:?}");
    assert_eq!(rerun.len(), 3);
    let build = harness.build(build_id);
    assert_eq!((build.state, build.counts.passed), (BuildState::Green, 4), "{build:?}");
}

#[tokio::test]
async fn a_green_build_is_queued_for_the_push_stage() {
    let harness = Harness::new(&suite(&["a"]), |config| config.push.command = vec!["true".to_owned()]);
    let build_id = harness.next_build().await;
    let worker = harness.register("w1");
    harness.run_all(worker, passing);
    let pushes = harness.farm.pushes().unwrap();
    assert_eq!(pushes.len(), 1);
    assert_eq!((pushes[0].build_id, pushes[0].state), (build_id, PushState::Pending));
}

#[tokio::test]
async fn a_build_whose_only_failure_is_quarantined_and_that_lost_a_test_ends_in_error_not_green() {
    let harness = Harness::new(&suite(&["a", "b"]), |config| {
        config.scheduler.retries = 0;
        config.scheduler.max_attempts = 1;
        config.scheduler.lease_timeout_s = 30.0;
    });
    harness.farm.quarantine("a", "known broken", None).unwrap();
    let build_id = harness.next_build().await;
    let worker = harness.register("w1");
    // `a` fails (quarantined); `b` is never reported: its worker goes silent.
    loop {
        let lease = harness.lease(worker);
        if lease.tests.iter().any(|id| id == "a") {
            harness.report(&lease, worker, &[("a", TestStatus::Failed)]).unwrap();
        }
        if lease.tests.iter().any(|id| id == "b") {
            break;
        }
        harness.farm.finish(lease.lease_id, worker, &ShardOutcome::Completed, None).unwrap();
    }
    harness.clock.advance(31.0);
    harness.farm.tick().unwrap();
    let build = harness.build(build_id);
    assert_eq!((build.state, build.counts.quarantined, build.counts.error), (BuildState::Error, 1, 1), "{build:?}");
    assert_eq!(harness.gate(), GateState::Open, "no verdict on the code");
}

#[tokio::test]
async fn what_shards_cost_is_measured_learned_for_the_next_plan_and_bounds_the_build() {
    let ids: Vec<String> = (0..12).map(|index| format!("t{index}")).collect();
    // Cut finer, so that one worker runs several shards (fitted, it would run one).
    let harness = Harness::new(&suite(&ids.iter().map(String::as_str).collect::<Vec<_>>()), |config| {
        config.scheduler.shard_sizing = ShardSizingName::Finer;
    });
    let build_id = harness.next_build().await;
    let worker = harness.register("w1");
    let mut leases = 0;
    while let Some(lease) = harness.farm.try_lease(worker).unwrap() {
        // The first shard checks the revision out and starts its runner: 5 s before its
        // first test; each later one 0.5 s. Every test takes the second it reports.
        harness.clock.advance(if leases == 0 { 5.0 } else { 0.5 });
        for test_id in &lease.tests {
            harness.report(&lease, worker, &[(test_id, TestStatus::Passed)]).unwrap();
        }
        harness.farm.finish(lease.lease_id, worker, &ShardOutcome::Completed, None).unwrap();
        leases += 1;
    }
    assert!(leases >= 3, "one worker, twelve 1 s tests: several shards ({leases})");
    let learned = harness.farm.learned_shard_costs().unwrap();
    assert_eq!(learned.samples, leases, "every shard measured once");
    assert_eq!(learned.overhead_s, Some(0.5), "{learned:?}");
    assert_eq!(learned.startup_s, Some(4.5), "{learned:?}");
    let build = harness.build(build_id);
    assert_eq!(build.state, BuildState::Green);
    // 12 s of tests on one worker, one shard's overhead and one start-up.
    assert_eq!(build.measured_bound_s, Some(17.0), "{build:?}");
    let makespan = build.makespan_s.unwrap();
    assert!(makespan >= 17.0, "no build beats its bound: {makespan} s");
}

/// Runs every shard of the build on `worker`: each test reports the status, duration and
/// wall `timing` gives it (the clock moves by what the shard spent).
fn run_timed(harness: &Harness, worker: u64, timing: impl Fn(&str) -> (TestStatus, f64, Option<f64>)) {
    while let Some(lease) = harness.farm.try_lease(worker).unwrap() {
        for test_id in &lease.tests {
            let (status, duration_s, wall_s) = timing(test_id);
            harness.clock.advance(wall_s.unwrap_or(duration_s));
            let report = TestReport { test_id: test_id.clone(), status, duration_s, wall_s, output: None };
            harness.farm.report(lease.lease_id, worker, &[report]).unwrap();
        }
        harness.farm.finish(lease.lease_id, worker, &ShardOutcome::Completed, None).unwrap();
    }
}

#[tokio::test]
async fn what_a_test_cost_its_shard_is_what_the_next_plan_counts_and_the_page_keeps_its_own_duration() {
    // A warm pytest runner's test reports 1 s of setup, call and teardown but holds the
    // shard 1.5 s (pytest's hooks and reporting, the worker's round trip); a skipped one
    // reports nothing and holds it 0.5 s.
    let timing = |test_id: &str| {
        if test_id == "t0" { (TestStatus::Skipped, 0.0, Some(0.5)) } else { (TestStatus::Passed, 1.0, Some(1.5)) }
    };
    let ids: Vec<String> = (0..8).map(|index| format!("t{index}")).collect();
    let harness = Harness::new(&suite(&ids.iter().map(String::as_str).collect::<Vec<_>>()), |_| {});
    let first = harness.next_build().await;
    let worker = harness.register("w1");
    run_timed(&harness, worker, timing);
    let build = harness.build(first);
    assert_eq!(build.state, BuildState::Green);
    // The shard costs are what is left after the tests' walls: nothing here.
    let learned = harness.farm.learned_shard_costs().unwrap();
    assert_eq!(learned.overhead_s.unwrap_or(0.0), 0.0, "{learned:?}");
    assert_eq!(build.measured_bound_s, Some(11.0), "7 tests at 1.5 s and a skip at 0.5 s on one worker: {build:?}");
    let shown = harness.farm.build_tests(first).unwrap().results;
    let durations: Vec<f64> = shown.iter().map(|result| result.duration_s).collect();
    assert_eq!(durations.iter().sum::<f64>(), 7.0, "the runner's own durations are shown: {shown:?}");

    harness.repo.touch_area("core", "Next").unwrap();
    let second = harness.next_build().await;
    let planned = harness.build(second).lower_bound_s.unwrap();
    assert!((planned - 11.0).abs() < 1e-9, "planned with what each test cost its shard, the skip's too: {planned}");
    run_timed(&harness, worker, timing);
    assert_eq!(harness.build(second).makespan_s, Some(11.0));
}

#[tokio::test]
async fn a_worker_waiting_in_a_long_poll_is_live_and_one_that_stopped_calling_is_lost() {
    let harness = Harness::new(&suite(&["a"]), |_| {});
    let worker = harness.register("w1");
    let timeout = harness.config.scheduler.lease_timeout_s;
    // It asks for work and waits (the long-poll of `POST …/lease`) longer than a timeout.
    harness.farm.waiting(worker, timeout + 20.0).unwrap();
    harness.clock.advance(timeout + 10.0);
    assert!(!harness.farm.workers()[0].lost, "waiting for work is not missing heartbeats");
    // Its wait ended and it never called again.
    harness.clock.advance(20.0);
    assert!(harness.farm.workers()[0].lost);
}

/// A farm whose suite the pytest adapter lists, so on a worker (a preparation).
/// A lease request from a worker that can prepare (or an older one that cannot), and
/// warms nothing up.
fn asks(can_prepare: bool) -> greenlight_shared::api::LeaseRequest {
    greenlight_shared::api::LeaseRequest {
        can_prepare,
        can_warm_up: false,
        ..greenlight_shared::api::LeaseRequest::current(0.0, None)
    }
}

fn listed_on_workers(config: &mut Config) {
    config.suite.file = None;
    config.suite.runner = crate::config::RunnerName::Pytest;
}

fn take_preparation(harness: &Harness, worker_id: u64) -> Option<greenlight_shared::api::Prepare> {
    match harness.farm.try_work(worker_id, &asks(true)).unwrap() {
        Some(super::Work::Prepare(prepare)) => Some(prepare),
        Some(super::Work::Lease(lease)) => panic!("a shard before the listing: {lease:?}"),
        Some(super::Work::WarmUp(warm_up)) => panic!("a warm-up for a worker that cannot: {warm_up:?}"),
        None => None,
    }
}

fn listed(ids: &[&str]) -> greenlight_shared::api::PrepareOutcome {
    greenlight_shared::api::PrepareOutcome::Listed { suite: suite(ids) }
}

#[tokio::test]
async fn a_revision_listed_on_workers_is_prepared_once_and_its_listing_kept() {
    let harness = Harness::new(&suite(&["unused"]), listed_on_workers);
    let (first, second) = (harness.register("first"), harness.register("second"));
    harness.farm.poll().await.unwrap();
    assert_eq!(harness.farm.start_next_build().await.unwrap(), None, "the build waits for its listing");
    assert!(
        harness.farm.try_work(second, &asks(false)).unwrap().is_none(),
        "an older worker is never asked to prepare"
    );
    let job = take_preparation(&harness, first).expect("the first worker to ask prepares");
    assert_eq!(job.revision, harness.repo.head().unwrap());
    assert!(!job.upload_archive, "pytest has no archive");
    assert!(take_preparation(&harness, second).is_none(), "one preparation, one holder");
    assert_eq!(harness.farm.start_next_build().await.unwrap(), None);
    harness.farm.prepare_report(job.prepare_id, first, &listed(&["a", "b"])).unwrap();
    assert!(matches!(
        harness.farm.prepare_report(job.prepare_id, first, &listed(&["a"])),
        Err(FarmError::UnknownPreparation(_))
    ));
    let build_id = harness.farm.start_next_build().await.unwrap().expect("the build starts once listed");
    assert_eq!(harness.build(build_id).counts.total, 2);
    harness.run_all(second, |_| TestStatus::Passed);
    assert_eq!(harness.build(build_id).state, BuildState::Green);

    // A full run of the same revision plans from the kept listing: nobody lists again.
    harness.farm.force_full_run().unwrap();
    let again = harness.farm.start_next_build().await.unwrap().expect("no preparation needed");
    assert_eq!(harness.build(again).counts.total, 2);
    let Some(super::Work::Lease(lease)) = harness.farm.try_work(second, &asks(true)).unwrap() else {
        panic!("a shard, not a second preparation");
    };
    for test_id in &lease.tests {
        harness.report(&lease, second, &[(test_id, TestStatus::Passed)]).unwrap();
    }
    harness.farm.finish(lease.lease_id, second, &ShardOutcome::Completed, Some(1.0)).unwrap();
    harness.run_all(second, |_| TestStatus::Passed);
    assert_eq!(harness.build(again).state, BuildState::Green);
}

#[tokio::test]
async fn idle_workers_warm_their_runner_up_while_another_worker_lists_the_revision() {
    let warming = |warm_revision: Option<&str>| {
        greenlight_shared::api::LeaseRequest::current(0.0, warm_revision.map(str::to_owned))
    };
    for warm in [true, false] {
        let harness = Harness::new(&suite(&["unused"]), |config| {
            listed_on_workers(config);
            config.suite.warm = warm;
        });
        let (lister, idle) = (harness.register("lister"), harness.register("idle"));
        harness.farm.poll().await.unwrap();
        assert_eq!(harness.farm.start_next_build().await.unwrap(), None);
        let job = take_preparation(&harness, lister).unwrap();
        let work = harness.farm.try_work(idle, &warming(None)).unwrap();
        if !warm {
            assert_eq!(work, None, "a cold suite has no runner to warm up");
            continue;
        }
        let Some(super::Work::WarmUp(warm_up)) = work else {
            panic!("a warm-up while the revision is listed: {work:?}")
        };
        assert_eq!(warm_up.revision, job.revision);
        assert!(matches!(warm_up.runner, greenlight_shared::runner::Runner::Pytest { .. }));
        let work = harness.farm.try_work(idle, &warming(Some(&job.revision))).unwrap();
        assert_eq!(work, None, "once per revision: its runner is warm (or failed to start)");
        assert_eq!(harness.farm.try_work(idle, &asks(true)).unwrap(), None, "only to a worker that can");

        harness.farm.prepare_report(job.prepare_id, lister, &listed(&["a", "b"])).unwrap();
        harness.farm.start_next_build().await.unwrap().expect("the build starts once listed");
        let work = harness.farm.try_work(idle, &warming(Some(&job.revision))).unwrap();
        let Some(super::Work::Lease(lease)) = work else { panic!("the warmed-up worker gets a shard: {work:?}") };
        assert!(lease.warm && lease.revision == job.revision, "{lease:?}");
    }
}

#[tokio::test]
async fn the_last_preparer_prepares_the_next_revision_unless_it_went_silent() {
    let harness = Harness::new(&suite(&["unused"]), listed_on_workers);
    let (warm, cold) = (harness.register("warm"), harness.register("cold"));
    harness.farm.poll().await.unwrap();
    harness.farm.start_next_build().await.unwrap();
    let job = take_preparation(&harness, warm).unwrap();
    harness.farm.prepare_report(job.prepare_id, warm, &listed(&["a"])).unwrap();
    harness.farm.start_next_build().await.unwrap().unwrap();
    harness.run_all(cold, |_| TestStatus::Passed);

    harness.repo.commit("next", &[("next.txt", "2")]).unwrap();
    harness.farm.poll().await.unwrap();
    assert_eq!(harness.farm.start_next_build().await.unwrap(), None);
    // The worker whose target directory is warm was heard from lately: it gets it.
    assert!(take_preparation(&harness, cold).is_none(), "the last preparer is preferred");
    let next = take_preparation(&harness, warm).expect("the last preparer prepares the next revision");
    // It goes silent: past the lease timeout, the other worker gets the same preparation.
    harness.clock.advance(harness.config.scheduler.lease_timeout_s + 1.0);
    assert!(harness.farm.prepare_heartbeat(next.prepare_id, cold).is_ok_and(|active| !active));
    harness.farm.tick().unwrap();
    let taken_over = take_preparation(&harness, cold).expect("a silent preparer is replaced");
    assert_eq!(taken_over.prepare_id, next.prepare_id);
    assert!(matches!(
        harness.farm.prepare_report(next.prepare_id, warm, &listed(&["a"])),
        Err(FarmError::NotYourPreparation { .. })
    ));
    assert!(!harness.farm.prepare_heartbeat(next.prepare_id, warm).unwrap(), "the silent one lost it");
    let failure = greenlight_shared::api::PrepareOutcome::Failed { message: "error[E0425]: x".to_owned() };
    harness.farm.prepare_report(next.prepare_id, cold, &failure).unwrap();
    let build_id = harness.farm.start_next_build().await.unwrap().expect("the failure ends the build");
    let build = harness.build(build_id);
    assert_eq!(build.state, BuildState::Error);
    assert!(build.error.as_deref().is_some_and(|error| error.contains("E0425")), "{build:?}");
}

#[tokio::test]
async fn a_revision_no_worker_could_prepare_ends_its_build_in_error() {
    let harness = Harness::new(&suite(&["unused"]), |config| {
        listed_on_workers(config);
        config.scheduler.max_attempts = 2;
    });
    let workers = [harness.register("one"), harness.register("two")];
    harness.farm.poll().await.unwrap();
    harness.farm.start_next_build().await.unwrap();
    for worker in workers {
        let job = take_preparation(&harness, worker).expect("the preparation goes round");
        let lost = greenlight_shared::api::PrepareOutcome::InfraError { message: "disk full".to_owned() };
        harness.farm.prepare_report(job.prepare_id, worker, &lost).unwrap();
    }
    assert!(take_preparation(&harness, workers[0]).is_none(), "given up after max_attempts");
    let build_id = harness.farm.start_next_build().await.unwrap().expect("the build ends");
    let build = harness.build(build_id);
    assert_eq!(build.state, BuildState::Error);
    assert!(build.error.as_deref().is_some_and(|error| error.contains("disk full")), "{build:?}");
}

/// Credentials of another process than `name`'s own, with the shared token.
fn another_process(session: Option<&str>) -> WorkerCredentials {
    WorkerCredentials { token: WorkerToken::Shared, session: session.map(str::to_owned) }
}

#[tokio::test]
async fn a_live_workers_name_is_refused_to_another_process_and_its_id_answers_only_to_its_own() {
    let harness = Harness::new(&suite(&["a", "b"]), |_| {});
    let build_id = harness.next_build().await;
    let real = harness.register("w1");
    let lease = harness.lease(real);
    assert_eq!(harness.register("w1"), real, "the same process again (its answer was lost): the same registration");
    // A second machine under the name (a clone), or an older worker that sends no session.
    let impostors = [another_process(Some("session-of-a-clone")), another_process(None)];
    for impostor in &impostors {
        let refused = harness.farm.register("w1", impostor);
        assert!(matches!(refused, Err(FarmError::NameInUse { worker_id, .. }) if worker_id == real), "{refused:?}");
        let message = refused.unwrap_err().to_string();
        assert!(message.contains("another machine running a worker under the same name"), "{message}");
        let call = harness.farm.authenticate(real, impostor);
        assert!(matches!(call, Err(FarmError::WrongSession(id)) if id == real), "{call:?}");
    }
    harness.farm.authenticate(real, &session_of("w1")).unwrap();
    // Waiting in a long-poll longer than a lease timeout, it is still live.
    let timeout = harness.config.scheduler.lease_timeout_s;
    harness.farm.waiting(real, timeout * 3.0).unwrap();
    harness.clock.advance(timeout * 2.0);
    assert!(matches!(harness.farm.register("w1", &impostors[0]), Err(FarmError::NameInUse { .. })));
    // Nothing of the real worker's was touched: its lease runs, its report counts.
    assert_eq!(harness.shard_state(build_id, lease.lease_id), ShardState::Running);
    let report = harness.report(&lease, real, &[(&lease.tests[0], TestStatus::Passed)]).unwrap();
    assert_eq!((report.accepted, report.stale), (1, 0));
}

#[tokio::test]
async fn a_restarted_worker_gets_its_name_back_once_the_old_registration_is_silent_and_its_lease_is_taken_back() {
    let harness = Harness::new(&suite(&["a", "b", "c", "d"]), |config| config.scheduler.lease_timeout_s = 30.0);
    let build_id = harness.next_build().await;
    let old = harness.register("w1");
    let lease = harness.lease(old);
    let kept = lease.tests[0].clone();
    harness.report(&lease, old, &[(&kept, TestStatus::Passed)]).unwrap();
    // The process died holding the lease; a new one starts under the name, with a new session.
    let restarted = another_process(Some("session-of-w1-restarted"));
    harness.clock.advance(29.0);
    assert!(
        matches!(harness.farm.register("w1", &restarted), Err(FarmError::NameInUse { .. })),
        "heard from within a lease timeout, the old one may be alive"
    );
    harness.clock.advance(2.0);
    let new = harness.farm.register("w1", &restarted).unwrap().worker_id;
    assert_ne!(new, old, "an identity of its own");
    assert_eq!(harness.shard_state(build_id, lease.lease_id), ShardState::Expired, "the old lease taken back");
    assert!(matches!(harness.farm.try_lease(old), Err(FarmError::UnknownWorker(_))), "the old id is gone");
    let workers = harness.farm.workers();
    assert_eq!(workers.iter().map(|worker| (worker.worker_id, worker.lease_id)).collect::<Vec<_>>(), [(new, None)]);
    // The old lease's other tests run again, under the new registration; the reported one is kept.
    let mut rerun = Vec::new();
    while let Some(lease) = harness.farm.try_lease(new).unwrap() {
        for test_id in &lease.tests {
            rerun.push(test_id.clone());
            harness.report(&lease, new, &[(test_id, TestStatus::Passed)]).unwrap();
        }
        harness.farm.finish(lease.lease_id, new, &ShardOutcome::Completed, None).unwrap();
    }
    assert!(!rerun.contains(&kept) && rerun.len() == 3, "{rerun:?}");
    let build = harness.build(build_id);
    assert_eq!((build.state, build.counts.passed), (BuildState::Green, 4), "{build:?}");
}

#[tokio::test]
async fn a_worker_with_a_token_of_its_own_is_the_only_one_that_may_act_as_it() {
    let harness = Harness::new(&suite(&["a"]), |config| {
        config
            .workers
            .insert("w1".into(), crate::config::WorkerSection { token: Some("w1-own-token".into()), token_env: None });
    });
    let own = |holder: &str, session: &str| WorkerCredentials {
        token: WorkerToken::Own(holder.to_owned()),
        session: Some(session.to_owned()),
    };
    let refused = harness.farm.register("w1", &session_of("w1"));
    assert!(
        matches!(refused, Err(FarmError::WrongWorkerToken(ref message)) if message.contains("has a token of its own")),
        "the shared token does not act as w1: {refused:?}"
    );
    let w1 = harness.farm.register("w1", &own("w1", "session-of-w1")).unwrap().worker_id;
    let refused = harness.farm.register("w2", &own("w1", "session-of-w2"));
    assert!(
        matches!(refused, Err(FarmError::WrongWorkerToken(ref message)) if message.contains("acts as no other worker")),
        "w1's token does not act as w2: {refused:?}"
    );
    let w2 = harness.register("w2");
    assert!(matches!(harness.farm.authenticate(w1, &session_of("w1")), Err(FarmError::WrongWorkerToken(_))));
    assert!(matches!(harness.farm.authenticate(w2, &own("w1", "session-of-w2")), Err(FarmError::WrongWorkerToken(_))));
    harness.farm.authenticate(w1, &own("w1", "session-of-w1")).unwrap();
    harness.farm.authenticate(w2, &session_of("w2")).unwrap();
}

/// Commits `broken` (a suite that cannot run) and checks that its build ends `error` and
/// leaves the gate `state` on `closing`'s evidence, with a warning naming the build.
async fn check_error_build(harness: &Harness, broken: &SuiteFile, closing: u64, state: GateState, failing: &[&str]) {
    harness.repo.commit("Tangle a and b", &[(SUITE_FILE, &broken.to_json())]).unwrap();
    let errored = harness.next_build().await;
    assert_eq!(harness.build(errored).state, BuildState::Error);
    let gate = harness.farm.gate("main").unwrap();
    assert_eq!((gate.state, gate.build_id), (state, Some(closing)));
    assert_eq!(gate.failing_tests, failing, "the evidence is kept");
    let warning = gate.warning.unwrap_or_default();
    assert!(warning.contains(&format!("build {errored}")) && warning.contains("dependency cycle"), "{warning}");
}

#[tokio::test]
async fn a_build_that_cannot_run_keeps_the_gate_as_it_was_and_warns() {
    let tests = suite(&["a", "b"]);
    let harness = Harness::new(&tests, |_| {});
    let worker = harness.register("w1");
    let red = harness.next_build().await;
    harness.run_all(worker, |test_id| if test_id == "a" { TestStatus::Failed } else { TestStatus::Passed });
    assert_eq!(harness.build(red).state, BuildState::Red);
    let mut cyclic = tests.clone();
    cyclic.tests[0].depends_on = vec!["b".to_owned()];
    cyclic.tests[1].depends_on = vec!["a".to_owned()];
    // Closed by a red build: it stays closed on that build's evidence.
    check_error_build(&harness, &cyclic, red, GateState::Closed, &["a"]).await;
    harness.repo.commit("Untangle a and b, fix a [fix]", &[(SUITE_FILE, &tests.to_json())]).unwrap();
    let green = harness.next_build().await;
    harness.run_all(worker, passing);
    let gate = harness.farm.gate("main").unwrap();
    assert_eq!((gate.state, gate.build_id, gate.warning), (GateState::Open, Some(green), None));
    // Open: it stays open.
    check_error_build(&harness, &cyclic, green, GateState::Open, &[]).await;
}

#[tokio::test]
async fn a_store_that_fails_under_a_report_acknowledges_nothing_and_takes_no_write_after_it() {
    let harness = Harness::new(&suite(&["a", "b"]), |_| {});
    let build_id = harness.next_build().await;
    let worker = harness.register("w1");
    let lease = harness.lease(worker);
    harness.kv.fail_writes.store(true, std::sync::atomic::Ordering::SeqCst);
    let failed = harness.report(&lease, worker, &[(&lease.tests[0], TestStatus::Passed)]);
    assert!(matches!(failed, Err(FarmError::Store(StoreError::Backend(_)))), "{failed:?}");
    // Room again on the disk: the store still takes nothing (what it held when the write
    // failed may never reach the disk), so nothing more can be acknowledged as stored.
    harness.kv.fail_writes.store(false, std::sync::atomic::Ordering::SeqCst);
    let refused = harness.farm.check_writable();
    assert!(matches!(refused, Err(FarmError::Store(StoreError::Failed(_)))), "{refused:?}");
    assert!(harness.farm.flush().await.is_err(), "a flush is refused too");
    assert!(harness.store.put_result(build_id, &super::not_run("b".into(), TestStatus::Error, "x".into())).is_err());
    let health = harness.farm.health();
    assert_eq!(health.problems.iter().map(|problem| problem.kind).collect::<Vec<_>>(), vec![HealthKind::StoreFailed]);
    assert!(health.problems[0].message.contains("No space left on device"), "{health:?}");
    assert_eq!(health.writes_refused, 1);
    assert_eq!(harness.farm.gate("main").unwrap().health, health.problems, "the gate warns");
}

#[tokio::test]
async fn a_repository_that_cannot_be_fetched_is_a_health_problem_with_gits_error_until_a_fetch_works() {
    let harness = Harness::new(&suite(&["a"]), |_| {});
    harness.farm.poll().await.unwrap();
    let fetched_at = harness.farm.health().last_fetch_at;
    assert!(fetched_at.is_some() && harness.farm.health().problems.is_empty());
    let moved = harness.repo.dir().with_extension("moved");
    std::fs::rename(harness.repo.dir(), &moved).unwrap();
    harness.clock.advance(5.0);
    assert!(matches!(harness.farm.poll().await, Err(FarmError::Git(_))));
    let health = harness.farm.health();
    assert_eq!(health.problems.len(), 1, "{health:?}");
    let problem = &health.problems[0];
    assert_eq!((problem.kind, problem.since), (HealthKind::RepositoryUnreachable, START + 5.0));
    assert!(problem.message.contains("does not appear to be a git repository"), "git's error: {problem:?}");
    assert_eq!(health.last_fetch_at, fetched_at, "the last fetch that worked");
    let gate = harness.farm.gate("main").unwrap();
    assert_eq!((gate.state, gate.health.clone()), (GateState::Open, health.problems.clone()));
    // A second failure is the same problem, since the first.
    harness.clock.advance(5.0);
    assert!(harness.farm.poll().await.is_err());
    assert_eq!(harness.farm.health().problems[0].since, START + 5.0);
    std::fs::rename(&moved, harness.repo.dir()).unwrap();
    harness.farm.poll().await.unwrap();
    assert!(harness.farm.health().problems.is_empty());
    assert!(harness.farm.gate("main").unwrap().health.is_empty());
}

#[tokio::test]
async fn below_the_free_space_floor_no_build_starts_and_the_gate_says_why() {
    let harness = Harness::new(&suite(&["a"]), |config| config.storage.min_free_bytes = u64::MAX);
    std::fs::create_dir_all(&harness.config.data_dir).unwrap();
    harness.farm.poll().await.unwrap();
    assert_eq!(harness.farm.start_next_build().await.unwrap(), None, "no build below the floor");
    let gate = harness.farm.gate("main").unwrap();
    assert_eq!(gate.state, GateState::Open);
    assert_eq!(gate.health.len(), 1, "{gate:?}");
    assert_eq!(gate.health[0].kind, HealthKind::DiskLow);
    assert!(gate.health[0].message.contains("min_free_bytes"), "{gate:?}");
    assert!(harness.farm.check_writable().is_ok(), "above the reserve, running builds go on writing");
    assert!(harness.farm.health().data_dir_free_bytes.is_some());
}

/// A backend that numbers its writes and takes a while to flush, recording which writes
/// each flush made durable.
#[derive(Default)]
struct SlowFlushKv {
    inner: MemoryKv,
    writes: std::sync::atomic::AtomicU64,
    durable: std::sync::atomic::AtomicU64,
    flushes: std::sync::atomic::AtomicU64,
}

impl crate::store::Kv for SlowFlushKv {
    fn get(&self, tree: crate::store::Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(tree, key)
    }
    fn put(&self, tree: crate::store::Tree, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.inner.put(tree, key, value)?;
        self.writes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
    fn put_new(&self, tree: crate::store::Tree, key: &[u8], value: &[u8]) -> Result<bool, StoreError> {
        self.inner.put_new(tree, key, value)
    }
    fn remove(&self, tree: crate::store::Tree, key: &[u8]) -> Result<(), StoreError> {
        self.inner.remove(tree, key)
    }
    fn scan_prefix(&self, tree: crate::store::Tree, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        self.inner.scan_prefix(tree, prefix)
    }
    fn scan_from(
        &self,
        tree: crate::store::Tree,
        start: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        self.inner.scan_from(tree, start, limit)
    }
    fn scan_last(&self, tree: crate::store::Tree, limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        self.inner.scan_last(tree, limit)
    }
    fn apply_batch(
        &self,
        tree: crate::store::Tree,
        puts: &[(Vec<u8>, Vec<u8>)],
        removes: &[Vec<u8>],
    ) -> Result<(), StoreError> {
        self.inner.apply_batch(tree, puts, removes)
    }
    fn drop_tree(&self, tree: crate::store::Tree) -> Result<(), StoreError> {
        self.inner.drop_tree(tree)
    }
    fn running_result_trees(&self) -> Result<Vec<u64>, StoreError> {
        self.inner.running_result_trees()
    }
    fn flush(&self) -> Result<(), StoreError> {
        let covered = self.writes.load(std::sync::atomic::Ordering::SeqCst);
        self.flushes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(30));
        self.durable.fetch_max(covered, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_share_flushes_and_none_is_answered_before_its_write_is_durable() {
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let config = Config::new(
        dir.path().join("data"),
        dir.path().join("repo").display().to_string(),
        SuiteConfig::command(SUITE_FILE, vec!["true".to_owned()]),
    );
    let kv = Arc::new(SlowFlushKv::default());
    let store = Store::new(kv.clone());
    let farm = Arc::new(Farm::with_clock(config, store.clone(), Arc::new(FakeClock::at(START))).unwrap());
    let writers: Vec<_> = (0..64)
        .map(|index| {
            let (farm, store, kv) = (Arc::clone(&farm), store.clone(), Arc::clone(&kv));
            tokio::spawn(async move {
                for round in 0..3 {
                    store.set_last_seen(&format!("branch-{index}-{round}"), "abc").unwrap();
                    let written = kv.writes.load(SeqCst);
                    farm.flush().await.unwrap();
                    // What a handler acknowledges after this call is on disk.
                    assert!(kv.durable.load(SeqCst) >= written, "answered before its write was flushed");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let flushes = kv.flushes.load(SeqCst);
    assert!(flushes <= 64, "192 writes waited for {flushes} flushes: concurrent callers share them");
    assert_eq!(kv.durable.load(SeqCst), 192);
    assert_eq!(farm.store_flushes(), flushes, "greenlight_store_flushes_total counts the flushes made");
}

#[tokio::test]
async fn retention_removes_old_builds_results_and_shards_and_keeps_their_summaries_history_and_flakes() {
    let harness = Harness::new(&suite(&["a", "b"]), |config| config.storage.keep_results_builds = 2);
    let worker = harness.register("w1");
    let mut builds = Vec::new();
    for round in 0..4 {
        if round > 0 {
            harness.repo.touch_area("core", &format!("Round {round}")).unwrap();
        }
        builds.push(harness.next_build().await);
        harness.run_all(worker, a_fails_once());
    }
    let results_before: Vec<_> = builds.iter().map(|&id| harness.store.results(id).unwrap()).collect();
    assert!(results_before.iter().all(|results| results.len() == 3), "{results_before:?}");
    let mut steps = 0;
    while harness.farm.keep_store().unwrap() {
        steps += 1;
        assert!(steps < 100, "housekeeping ends");
    }
    for (&build_id, before) in builds.iter().zip(&results_before) {
        let pruned = build_id <= builds[1];
        assert_eq!(harness.store.results_pruned(build_id).unwrap(), pruned, "build {build_id}");
        if pruned {
            assert!(harness.store.results(build_id).unwrap().is_empty(), "build {build_id}");
            assert!(harness.store.shards(build_id).unwrap().is_empty(), "build {build_id}");
            let read = harness.farm.build_tests(build_id);
            assert!(
                matches!(read, Err(FarmError::ResultsPruned(id)) if id == build_id),
                "a pruned read says so: {read:?}"
            );
        } else {
            assert_eq!(&harness.store.results(build_id).unwrap(), before, "a kept build reads the same, packed");
            let entries = harness.kv.scan_prefix(crate::store::Tree::Results, &build_id.to_be_bytes()).unwrap();
            assert!(harness.store.results_packed(build_id).unwrap(), "an ended build's results are packed");
            assert!(entries.iter().all(|(key, _)| key.len() == 12), "and nothing else: {entries:?}");
            assert!(!harness.store.shards(build_id).unwrap().is_empty());
        }
        let summary = harness.build(build_id);
        assert_eq!((summary.state, summary.counts.flaky), (BuildState::Green, 1), "summaries are kept for ever");
    }
    assert_eq!(harness.store.durations("a").unwrap().len(), crate::store::HISTORY_SAMPLES, "durations are kept");
    let flake = harness.store.flake_record("a").unwrap().expect("the flake record is kept");
    assert_eq!(flake.flaky(), 4);
}

#[tokio::test]
async fn retention_by_age_removes_the_results_of_builds_that_ended_too_long_ago() {
    let harness = Harness::new(&suite(&["a", "b"]), |config| {
        config.storage.keep_results_builds = 0;
        config.storage.keep_results_days = 1.0;
    });
    let worker = harness.register("w1");
    let old = harness.next_build().await;
    harness.run_all(worker, passing);
    harness.clock.advance(86_400.0 / 2.0);
    harness.repo.touch_area("core", "Half a day later").unwrap();
    let recent = harness.next_build().await;
    harness.run_all(worker, passing);
    while harness.farm.keep_store().unwrap() {}
    assert!(!harness.store.results_pruned(old).unwrap(), "a build that ended half a day ago keeps its results");
    harness.clock.advance(86_400.0 * 0.75);
    while harness.farm.keep_store().unwrap() {}
    assert!(harness.store.results_pruned(old).unwrap() && harness.store.results(old).unwrap().is_empty());
    assert!(matches!(harness.farm.build_tests(old), Err(FarmError::ResultsPruned(_))));
    assert!(!harness.store.results_pruned(recent).unwrap());
    assert_eq!(harness.farm.build_tests(recent).unwrap().results.len(), 2);
}

#[tokio::test]
async fn a_running_build_is_packed_only_once_it_ends_and_reads_the_same_before_and_after() {
    let harness = Harness::new(&suite(&["a", "b"]), |_| {});
    let worker = harness.register("w1");
    let build_id = harness.next_build().await;
    let lease = harness.lease(worker);
    harness.report(&lease, worker, &[(lease.tests[0].as_str(), TestStatus::Failed)]).unwrap();
    while harness.farm.keep_store().unwrap() {}
    assert!(!harness.store.results_packed(build_id).unwrap(), "a running build takes results: not packed");
    for test_id in &lease.tests {
        harness.report(&lease, worker, &[(test_id.as_str(), TestStatus::Passed)]).unwrap();
    }
    harness.farm.finish(lease.lease_id, worker, &ShardOutcome::Completed, Some(1.0)).unwrap();
    harness.run_all(worker, passing);
    assert!(harness.build(build_id).state.is_finished());
    let before = harness.farm.build_tests(build_id).unwrap().results;
    while harness.farm.keep_store().unwrap() {}
    assert!(harness.store.results_packed(build_id).unwrap(), "an ended build is packed");
    assert_eq!(harness.farm.build_tests(build_id).unwrap().results, before);
    assert!(before.iter().any(|result| result.retried), "{before:?}");
}

/// `[scheduler] shard_sizing` and `straggler_copies` reach the scheduler the master leases
/// with: fitted, two workers of a build of twelve 1 s tests each lease half of it; cut
/// finer (the default), the first worker gets less and leaves the rest for later shards.
#[tokio::test]
async fn the_configured_shard_sizing_decides_how_much_a_lease_holds() {
    let ids: Vec<String> = (0..12).map(|index| format!("t{index:02}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    for (sizing, copies) in [(None, false), (Some(ShardSizingName::Finer), true), (Some(ShardSizingName::Fitted), true)]
    {
        let harness = Harness::new(&suite(&ids), |config| {
            if let Some(sizing) = sizing {
                config.scheduler.shard_sizing = sizing;
            }
            config.scheduler.straggler_copies = copies;
        });
        let config = harness.farm.core().scheduler.config().clone();
        assert_eq!(config.straggler_copies, copies);
        harness.next_build().await;
        let first = harness.register("w1");
        harness.register("w2");
        let lease = harness.lease(first);
        if sizing == Some(ShardSizingName::Finer) {
            assert_eq!(config.shard_sizing, ShardSizing::Finer);
            assert!(lease.tests.len() < 6, "cut finer: {:?}", lease.tests);
        } else {
            assert_eq!(config.shard_sizing, ShardSizing::Fitted);
            assert_eq!(lease.tests.len(), 6, "fitted: half the build: {:?}", lease.tests);
        }
    }
}

#[tokio::test]
async fn a_suite_file_missing_from_the_repository_ends_the_build_saying_what_to_do() {
    // A new user's first mistake: the sample's `file` kept while the runner is pytest.
    for (runner, fix) in [
        (crate::config::RunnerName::Command, "set [suite] list_command"),
        (crate::config::RunnerName::Pytest, "remove `file` from [suite]"),
    ] {
        let harness = Harness::new(&suite(&["a"]), |config| {
            config.suite.file = Some("not-committed.json".to_owned());
            config.suite.runner = runner;
        });
        harness.farm.poll().await.unwrap();
        let build_id = harness.farm.start_next_build().await.unwrap().expect("the build ends at once");
        let build = harness.build(build_id);
        assert_eq!(build.state, BuildState::Error);
        let error = build.error.unwrap_or_default();
        assert!(error.contains("\"not-committed.json\" ([suite] file) is not in the repository at"), "{error}");
        assert!(error.contains(fix), "{runner:?}: {error}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_workers_request_waiting_for_its_turn_leaves_the_thread_to_other_requests() {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    let harness = Harness::new(&suite(&["a", "b"]), |_| {});
    let worker = harness.register("w1");
    let changed = Arc::new(AtomicBool::new(false));
    // Another worker's request is changing the farm: its turn is taken.
    let turn = harness.farm.workers_turn.lock().await;
    let waiting = tokio::spawn({
        let (farm, changed) = (Arc::clone(&harness.farm), Arc::clone(&changed));
        async move {
            farm.in_turn(|| {
                changed.store(true, SeqCst);
                farm.waiting(worker, 1.0)
            })
            .await
        }
    });
    // On this runtime's only thread: had the waiting request parked the thread on the
    // farm's lock, nothing below would run.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(!waiting.is_finished() && !changed.load(SeqCst), "the request waits for its turn");
    assert_eq!(harness.gate(), GateState::Open, "the gate is answered meanwhile");
    drop(turn);
    waiting.await.unwrap().unwrap();
    assert!(changed.load(SeqCst), "its change ran in its turn");
}

#[tokio::test]
async fn a_slower_machine_is_known_by_its_name_after_the_master_restarts() {
    let ids: Vec<String> = (0..30).map(|index| format!("t{index}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut harness = Harness::new(&suite(&ids), |config| {
        config.scheduler.shard_sizing = ShardSizingName::Fitted;
    });
    let build_id = harness.next_build().await;
    let names = ["slow", "fast1", "fast2"];
    let workers: Vec<u64> = names.iter().map(|name| harness.register(name)).collect();
    let leases: Vec<Lease> = workers.iter().map(|&worker| harness.lease(worker)).collect();
    assert!(leases.iter().all(|lease| lease.tests.len() == 10), "one fitted shard each");
    // Every test has history of 1 s; "slow" takes 3 s for each of its own. The fast
    // workers report as their tests end; the slow one sends its shard's results in one
    // batch as it ends, at 30 s (reported one by one, they would show it slow mid-build,
    // and it would give its tests away: `Scheduler::move_work_off_slow_machine`).
    let report = |harness: &Harness, at: usize, tests: std::ops::Range<usize>, duration_s: f64| {
        let reports: Vec<TestReport> = tests
            .map(|position| TestReport {
                test_id: leases[at].tests[position].clone(),
                status: TestStatus::Passed,
                duration_s,
                wall_s: None,
                output: None,
            })
            .collect();
        harness.farm.report(leases[at].lease_id, workers[at], &reports).unwrap();
    };
    for position in 0..10 {
        harness.clock.advance(1.0);
        for at in [1, 2] {
            report(&harness, at, position..position + 1, 1.0);
        }
    }
    for at in [1, 2] {
        harness.farm.finish(leases[at].lease_id, workers[at], &ShardOutcome::Completed, None).unwrap();
    }
    harness.clock.advance(20.0);
    report(&harness, 0, 0..10, 3.0);
    harness.farm.finish(leases[0].lease_id, workers[0], &ShardOutcome::Completed, None).unwrap();
    assert_eq!(harness.build(build_id).state, BuildState::Green);
    let slowness = |harness: &Harness| -> Vec<(String, f64)> {
        let mut view: Vec<(String, f64)> =
            harness.farm.workers().into_iter().map(|worker| (worker.name, worker.slowness)).collect();
        view.sort_by(|a, b| a.0.cmp(&b.0));
        view
    };
    let known = slowness(&harness);
    assert_eq!(known.iter().map(|(_, slowness)| (slowness * 10.0).round() / 10.0).collect::<Vec<_>>(), [1.0, 1.0, 3.0]);
    // A new master over the same store: the workers register again, under new ids, and
    // the slower machine is known before it runs anything.
    harness.restart();
    let again: Vec<u64> = names.iter().map(|name| harness.register(name)).collect();
    assert!(again.iter().all(|id| !workers.contains(id)), "new registrations");
    assert_eq!(slowness(&harness), known);
    // The next build: what the slower machine runs joins the history at the farm's pace,
    // not at its own (the next estimates of those tests stay 1 s, not 3 s). It is left
    // less work: it asks once the others have theirs.
    harness.repo.touch_area("core", "Change it").unwrap();
    let next = harness.next_build().await;
    for &fast in &again[1..] {
        harness.lease(fast);
    }
    let lease = harness.lease(again[0]);
    assert!(lease.tests.len() < 10, "the slower machine takes less than a third: {:?}", lease.tests);
    for test_id in &lease.tests {
        harness.clock.advance(3.0);
        let report = TestReport {
            test_id: test_id.clone(),
            status: TestStatus::Passed,
            duration_s: 3.0,
            wall_s: None,
            output: None,
        };
        harness.farm.report(lease.lease_id, again[0], &[report]).unwrap();
    }
    harness.store.write_history().unwrap();
    for test_id in &lease.tests {
        let history = harness.store.durations(test_id).unwrap();
        let last = history.last().copied().unwrap();
        assert!((last - 1.0).abs() < 0.1, "{test_id}: {history:?}");
    }
    assert_eq!(harness.build(next).state, BuildState::Running);
    // A machine never seen is taken to be as fast as the others.
    harness.register("new");
    assert_eq!(slowness(&harness).iter().find(|(name, _)| name == "new").map(|(_, slowness)| *slowness), Some(1.0));
}

#[tokio::test]
async fn a_tag_selected_build_lists_only_its_tags_paths_where_pytest_would_collect_them_so() {
    // Each commit says `Tags: chat`; what the preparation's runner collects depends on
    // what pytest would collect given no path, and on whether the prefixes are paths.
    let repository_file = "[tests.tags]\n\"tests/chat/\" = [\"chat\"]\n\"tests/test_smoke.py\" = [\"always\"]\n";
    let collecting = |args: &[&str], files_of_the_case: &[(&'static str, &'static str)]| {
        let harness = Harness::new(&suite(&["unused"]), |config| {
            listed_on_workers(config);
            config.suite.runner_args = args.iter().map(|arg| (*arg).to_owned()).collect();
        });
        let worker = harness.register("w1");
        // The case's files last: they may replace these.
        let mut files = [
            ("greenlight.toml", repository_file),
            ("tests/chat/test_a.py", "def test_a():\n    pass\n"),
            ("tests/test_smoke.py", "def test_smoke():\n    pass\n"),
        ]
        .to_vec();
        files.extend(files_of_the_case);
        harness.repo.commit("Chat\n\nTags: chat", &files).unwrap();
        (harness, worker)
    };
    let args_of = |job: &greenlight_shared::api::Prepare| match &job.runner {
        greenlight_shared::runner::Runner::Pytest { args, .. } => args.clone(),
        other => panic!("{other:?}"),
    };
    // The runner's arguments, files of the project, the arguments the listing runs with.
    type Case = (&'static [&'static str], &'static [(&'static str, &'static str)], &'static [&'static str]);
    const NO_SLASH: &str = "[tests.tags]\n\"tests/chat\" = [\"chat\"]\n";
    let cases: [Case; 10] = [
        (&["tests", "-q"], &[], &["tests/chat", "tests/test_smoke.py", "-q"]),
        // `tests/chat` begins the ids of tests/chat/ and of nothing else here ...
        (&["tests"], &[("greenlight.toml", NO_SLASH)], &["tests/chat"]),
        // ... but here it begins tests/chat_helpers.py, which pytest would not collect by
        // itself and would if named: the whole suite is listed.
        (&["tests"], &[("greenlight.toml", NO_SLASH), ("tests/chat_helpers.py", "X = 1\n")], &["tests"]),
        // With `python_files` configured, no file is named.
        (&["tests"], &[("pytest.ini", "[pytest]\npython_files = check_*.py test_*.py\n")], &["tests"]),
        (&["-q"], &[], &["tests/chat", "tests/test_smoke.py", "-q"]),
        // No path named: pytest collects its testpaths; those the tags reach are named.
        (
            &["-q"],
            &[("pyproject.toml", "[tool.pytest.ini_options]\ntestpaths = [\"tests\"]\n")],
            &["tests/chat", "tests/test_smoke.py", "-q"],
        ),
        // testpaths that hold none of them, or a glob: the whole suite.
        (&["-q"], &[("pytest.ini", "[pytest]\ntestpaths = integration\n")], &["-q"]),
        (&["-q"], &[("pytest.ini", "[pytest]\ntestpaths = test*\n")], &["-q"]),
        (&["--pyargs", "tests"], &[], &["--pyargs", "tests"]),
        (&["other"], &[], &["other"]),
    ];
    for (args, files, expected) in cases {
        let (harness, worker) = collecting(args, files);
        harness.farm.poll().await.unwrap();
        assert_eq!(harness.farm.start_next_build().await.unwrap(), None, "the build waits for its listing");
        let job = take_preparation(&harness, worker).unwrap();
        assert_eq!(
            args_of(&job),
            expected.iter().map(|arg| (*arg).to_owned()).collect::<Vec<_>>(),
            "{args:?} {files:?}"
        );
        // What the worker lists: tags by greenlight.toml.
        let mut chat = suite(&["tests/chat/test_a.py::test_a"]);
        chat.tests[0].tags = vec!["chat".to_owned()];
        let outcome = greenlight_shared::api::PrepareOutcome::Listed { suite: chat };
        harness.farm.prepare_report(job.prepare_id, worker, &outcome).unwrap();
        let build_id = harness.farm.start_next_build().await.unwrap().expect("listed");
        let build = harness.build(build_id);
        let narrowed = expected != args;
        assert_eq!(build.collected.is_empty(), !narrowed, "{build:?}");
        if narrowed {
            let Some(super::Work::Lease(lease)) = harness.farm.try_work(worker, &asks(true)).unwrap() else {
                panic!("a shard")
            };
            assert_eq!(lease.runner, job.runner, "the shards run in a runner collecting what the listing did");
        }
    }
}

#[tokio::test]
async fn after_tag_selected_builds_an_import_and_the_test_page_read_the_newest_whole_listing() {
    let harness = Harness::new(&suite(&["unused"]), |config| {
        listed_on_workers(config);
        config.suite.runner_args = vec!["tests".to_owned()];
    });
    let worker = harness.register("w1");
    let files = [
        ("greenlight.toml", "[tests.tags]\n\"tests/chat/\" = [\"chat\"]\n"),
        ("tests/chat/test_a.py", "def test_a():\n    pass\n"),
        ("tests/shop/test_b.py", "def test_b():\n    pass\n"),
    ];
    let ids = ["tests/chat/test_a.py::test_a", "tests/shop/test_b.py::test_b"];
    let mut whole = suite(&ids);
    whole.tests[0].tags = vec!["chat".to_owned()];
    whole.tests[1].tags = vec!["shop".to_owned()];
    let chat = SuiteFile { tests: whole.tests[..1].to_vec(), ..whole.clone() };
    let request = greenlight_shared::api::HistoryImportRequest {
        version: 1,
        reports: vec![greenlight_shared::api::ImportedReport {
            file: "old-ci.xml".to_owned(),
            cases: vec![greenlight_shared::api::ImportedCase {
                name: "test_b".to_owned(),
                classname: Some("tests.shop.test_b".to_owned()),
                file: None,
                status: TestStatus::Passed,
                time: Some("2.5".to_owned()),
            }],
        }],
    };
    // Build the tagged revision; each build's listing is reported as the worker would.
    let build = |message: &'static str, listed_suite: &SuiteFile| {
        let harness = &harness;
        let listed_suite = listed_suite.clone();
        async move {
            harness.repo.commit(message, &files).unwrap();
            harness.farm.poll().await.unwrap();
            assert_eq!(harness.farm.start_next_build().await.unwrap(), None);
            let job = take_preparation(harness, worker).unwrap();
            let outcome = greenlight_shared::api::PrepareOutcome::Listed { suite: listed_suite };
            harness.farm.prepare_report(job.prepare_id, worker, &outcome).unwrap();
            let build_id = harness.farm.start_next_build().await.unwrap().unwrap();
            harness.run_all(worker, |_| TestStatus::Passed);
            harness.build(build_id)
        }
    };
    let tagged = build("Chat\n\nTags: chat", &chat).await;
    assert!(!tagged.collected.is_empty(), "{tagged:?}");
    let error = harness.farm.import_history(&request).unwrap_err().to_string();
    assert!(error.contains("not listed whole yet") && error.contains("full-run"), "{error}");

    harness.farm.force_full_run().unwrap();
    let full = build("Every test", &whole).await;
    assert!(full.collected.is_empty() && full.full_run, "{full:?}");
    let tagged = build("Chat again\n\nTags: chat", &chat).await;
    assert!(!tagged.collected.is_empty());
    // The test page reads a test's tags from the newest whole listing, not the newer
    // tag-selected one that lacks the test.
    let shop = harness.farm.test_history("tests/shop/test_b.py::test_b", 50).unwrap();
    assert_eq!(shop.tags, vec!["shop".to_owned()], "{shop:?}");
    let answer = harness.farm.import_history(&request).unwrap();
    assert_eq!((answer.imported, answer.unmatched), (1, 0), "{answer:?}");
    assert_eq!(answer.revision, full.revision, "matched against the whole listing, and says which");
}
