//! Trust under faults, end to end with the real binaries: a flaky test is told from a
//! real failure by a retry on another worker, quarantine keeps a test out of the gate,
//! strangers are turned away from worker and admin calls, and a build disturbed by
//! SIGKILLed workers, a SIGKILLed master and reports of a lost lease replayed by someone
//! without the worker's session (refused) ends with the same per-test results as an
//! undisturbed run of the same revision, each test counted once.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Farm, FarmOptions, TOKEN, test};
use greenlight_fixtures::FAILING_FILE;
use greenlight_fixtures::runner::flaky_fails;
use greenlight_shared::api::{BuildState, BuildSummary, GateState, ShardState, TestResultView, TestStatus};
use greenlight_shared::suite::SuiteFile;
use serde_json::json;

const ADMIN: &str = "admin-secret";

fn core_suite(n: usize, duration_s: f64) -> SuiteFile {
    let tests =
        (0..n).map(|index| test(&format!("core/test_core.py::test_{index}"), &["core"], &[], duration_s)).collect();
    SuiteFile { name: "core".into(), shard_overhead_s: 0.2, tests }
}

/// Options with the run counter of the fixture runner in `state` (so a flaky test's
/// sequence of outcomes is reproducible) and an admin token.
fn options(state: &std::path::Path) -> FarmOptions {
    FarmOptions {
        suite_toml: format!("file = \"greenlight-suite.json\"\nenv = {{ GREENLIGHT_FIXTURE_STATE = {:?} }}", state),
        top_toml: format!("admin_token = \"{ADMIN}\""),
        ..FarmOptions::default()
    }
}

fn attempts_of(farm: &Farm, build_id: u64, test_id: &str) -> Vec<TestResultView> {
    let mut attempts: Vec<TestResultView> =
        farm.tests(build_id).results.into_iter().filter(|result| result.test_id == test_id).collect();
    attempts.sort_by_key(|result| result.attempt);
    attempts
}

#[test]
fn a_flake_passes_on_another_worker_a_real_failure_closes_the_gate_and_quarantine_reopens_it() {
    let state = tempfile::tempdir().unwrap();
    let farm = Farm::start(&core_suite(6, 1.0), 2, options(state.path()));
    let first = farm.finished_build_of(&farm.repo.head().unwrap());
    assert_eq!(first.state, BuildState::Green);

    // A test that fails with probability 0.5: a seed whose first run fails and second passes.
    let flaky = "core/test_core.py::test_1";
    let seed = (0..10_000u64)
        .find(|&seed| flaky_fails(0.5, seed, flaky, 0) && !flaky_fails(0.5, seed, flaky, 1))
        .expect("some seed fails then passes");
    let revision = farm
        .repo
        .commit(
            "Core: a flaky test",
            &[(FAILING_FILE, &format!("flaky 0.5 {seed} {flaky}\n")), ("src/core/code.txt", "1\n")],
        )
        .unwrap();
    let build = farm.finished_build_of(&revision);
    assert_eq!(build.state, BuildState::Green, "a flake does not make the build red: {build:?}");
    assert_eq!((build.counts.flaky, build.flaky_tests.clone()), (1, vec![flaky.to_owned()]));
    let attempts = attempts_of(&farm, build.build_id, flaky);
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!((attempts[0].status, attempts[0].retried), (TestStatus::Failed, true));
    assert_eq!((attempts[1].status, attempts[1].flaky), (TestStatus::Passed, true));
    assert_ne!(attempts[0].worker, attempts[1].worker, "the retry runs on another worker");
    assert_eq!(farm.gate().state, GateState::Open);
    let (status, flaky_view) = farm.get_with("/api/v1/flaky", None);
    assert_eq!(status, 200);
    assert_eq!(flaky_view["tests"][0]["test_id"], flaky);
    assert_eq!(flaky_view["tests"][0]["flaky"], 1);

    // A test that fails every time: red after its retry fails too, on the other worker.
    let broken = "core/test_core.py::test_4";
    let revision = farm.repo.set_failing("core", &[broken], "Core: break test_4").unwrap();
    let red = farm.finished_build_of(&revision);
    assert_eq!((red.state, red.failed_tests.clone()), (BuildState::Red, vec![broken.to_owned()]));
    let attempts = attempts_of(&farm, red.build_id, broken);
    assert_eq!(
        attempts.iter().map(|result| (result.status, result.retried)).collect::<Vec<_>>(),
        vec![(TestStatus::Failed, true), (TestStatus::Failed, false)]
    );
    assert_ne!(attempts[0].worker, attempts[1].worker);
    let gate = farm.gate();
    assert_eq!(
        (gate.state, gate.build_id, gate.failing_tests),
        (GateState::Closed, Some(red.build_id), vec![broken.into()])
    );

    // Quarantined by an admin (with a reason), it still runs and is reported, but the gate
    // no longer rests on it.
    let request = json!({"test_id": broken, "reason": "tracked in BUG-12", "expires_in_s": 3600});
    let (status, entry) = farm.post("/api/v1/admin/quarantine", &request, Some(ADMIN));
    assert_eq!(status, 200, "{entry}");
    assert_eq!((entry["by"].as_str(), entry["reason"].as_str()), (Some("admin"), Some("tracked in BUG-12")));
    let revision = farm.repo.touch_area("core", "Core: unrelated change").unwrap();
    let build = farm.finished_build_of(&revision);
    assert_eq!(build.state, BuildState::Green, "{build:?}");
    assert_eq!((build.counts.quarantined, build.counts.failed), (1, 0));
    assert!(attempts_of(&farm, build.build_id, broken).iter().all(|result| result.quarantined));
    assert_eq!(farm.gate().state, GateState::Open);
    let (_, list) = farm.get_with("/api/v1/quarantine", None);
    assert_eq!(list["quarantined"][0]["test_id"], broken);
    let (status, _) = farm.post("/api/v1/admin/unquarantine", &json!({"test_id": broken}), Some(ADMIN));
    assert_eq!(status, 200);
    let (status, body) = farm.post("/api/v1/admin/unquarantine", &json!({"test_id": broken}), Some(ADMIN));
    assert_eq!((status, body["error"].as_str()), (404, Some("not_quarantined")));
}

#[test]
fn worker_admin_and_read_calls_without_or_with_a_wrong_token_are_refused() {
    let state = tempfile::tempdir().unwrap();
    let mut options = options(state.path());
    options.top_toml.push_str("\nread_token = \"reader\"\nhook_token = \"hooked\"");
    let farm = Farm::start(&core_suite(2, 0.2), 0, options);
    let register = json!({"name": "stranger"});
    for (path, body) in [
        ("/api/v1/workers/register", register.clone()),
        ("/api/v1/admin/full-run", json!({})),
        ("/api/v1/admin/quarantine", json!({"test_id": "t", "reason": "r"})),
        ("/api/v1/admin/builds/1/cancel", json!({})),
    ] {
        let (status, body_without) = farm.post(path, &body, None);
        assert_eq!((status, body_without["error"].as_str()), (401, Some("missing_token")), "{path}");
        let (status, body_wrong) = farm.post(path, &body, Some("guess"));
        assert_eq!((status, body_wrong["error"].as_str()), (403, Some("wrong_token")), "{path}");
    }
    // The worker token is not an admin token, nor the other way round.
    assert_eq!(farm.post("/api/v1/admin/full-run", &json!({}), Some(TOKEN)).0, 403);
    assert_eq!(farm.post("/api/v1/workers/register", &register, Some(ADMIN)).0, 403);
    assert_eq!(farm.post("/api/v1/workers/register", &register, Some(TOKEN)).0, 200);
    // Bad admin input is named.
    let (status, body) = farm.post("/api/v1/admin/quarantine", &json!({"test_id": "t", "reason": " "}), Some(ADMIN));
    assert_eq!((status, body["error"].as_str()), (422, Some("invalid")));
    let (status, body) = farm.post("/api/v1/admin/builds/999/cancel", &json!({}), Some(ADMIN));
    assert_eq!((status, body["error"].as_str()), (404, Some("unknown_build")));
    // With a read token the page and the read API want it too, as a header or a query.
    assert_eq!(farm.get_with("/api/v1/builds", None).0, 401);
    assert_eq!(farm.get_with("/api/v1/builds", Some("guess")).0, 403);
    assert_eq!(farm.get_with("/api/v1/builds", Some("reader")).0, 200);
    assert_eq!(farm.get_with("/api/v1/gate?token=reader", None).0, 200);
    // The merged report holds every test id and failure output: it is read API too.
    assert_eq!(farm.get_with("/api/v1/builds/1/junit.xml", None).0, 401);
    assert_eq!(farm.get_with("/api/v1/builds/1/junit.xml", Some("guess")).0, 403);
    let (status, _) = farm.get_with("/api/v1/builds/1/junit.xml", Some("reader"));
    assert!(matches!(status, 200 | 404), "the reader passes: {status}");
    // A change announcement needs the hook token or the worker token.
    let notice = json!({"branch": "main"});
    assert_eq!(farm.post("/api/v1/changes", &notice, None).0, 401);
    assert_eq!(farm.post("/api/v1/changes", &notice, Some("guess")).0, 403);
    assert_eq!(farm.post("/api/v1/changes", &notice, Some(TOKEN)).0, 202);
    assert_eq!(farm.post("/api/v1/changes", &notice, Some("hooked")).0, 202);
    assert_eq!(farm.gate_command(&[]).0, 2, "without the read token the hook cannot ask");
    assert_eq!(farm.gate_command(&["--token", "reader"]).0, 0);
    // The tokens never reach the log.
    let log = std::fs::read_to_string(farm.dir().join("master.log")).unwrap();
    for secret in [ADMIN, TOKEN, "reader", "hooked"] {
        assert!(!log.contains(secret), "{secret} is in the log");
    }
}

/// The final result of each test (its last attempt) and how many final results it has.
fn final_results(farm: &Farm, build_id: u64) -> BTreeMap<String, (TestStatus, usize)> {
    let mut finals: BTreeMap<String, (TestStatus, usize)> = BTreeMap::new();
    for result in farm.tests(build_id).results.into_iter().filter(|result| !result.retried) {
        let entry = finals.entry(result.test_id).or_insert((result.status, 0));
        entry.0 = result.status;
        entry.1 += 1;
    }
    finals
}

#[test]
fn a_build_disturbed_by_killed_workers_a_killed_master_and_replayed_reports_ends_as_an_undisturbed_one() {
    let state = tempfile::tempdir().unwrap();
    let mut suite = core_suite(0, 0.0);
    for index in 0..48 {
        let depends_on: Vec<String> =
            if index % 6 == 5 { vec![format!("core/test_core.py::test_{}", index - 1)] } else { vec![] };
        let depends: Vec<&str> = depends_on.iter().map(String::as_str).collect();
        suite.tests.push(test(
            &format!("core/test_core.py::test_{index}"),
            &["core"],
            &depends,
            0.6 + (index % 5) as f64 * 0.3,
        ));
    }
    let mut options = options(state.path());
    options.scale = 1.0;
    options.lease_timeout_s = 3.0;
    options.heartbeat_interval_s = 0.5;
    let mut farm = Farm::start(&suite, 4, options);
    // Two tests fail at this revision (one with a dependant, which is skipped).
    let revision = farm
        .repo
        .set_failing("core", &["core/test_core.py::test_10", "core/test_core.py::test_22"], "Core: two failures")
        .unwrap();
    let undisturbed = farm.finished_build_of(&revision);
    let expected = final_results(&farm, undisturbed.build_id);
    assert_eq!(expected.len(), 48);

    // The same revision again, as a forced full run, with chaos.
    assert_eq!(farm.post("/api/v1/admin/full-run", &json!({}), Some(ADMIN)).0, 202);
    let running = |farm: &Farm| -> Option<BuildSummary> {
        farm.builds().into_iter().find(|build| build.build_id > undisturbed.build_id && build.counts.done() >= 6)
    };
    let chaos = farm.wait_for("the chaos build to get going", Duration::from_secs(60), running);
    assert_eq!(chaos.revision, revision);
    assert!(chaos.full_run);
    // worker-0 may still be running a culprit probe of the undisturbed build: it is killed
    // holding a shard of the chaos build, or it would lose no lease of it.
    farm.wait_for("worker-0 to hold a shard of the chaos build", Duration::from_secs(60), |farm| {
        farm.workers()
            .into_iter()
            .any(|worker| worker.name == "worker-0" && worker.build_id == Some(chaos.build_id))
            .then_some(())
    });
    farm.workers[0].kill();
    farm.start_worker("replacement-0");

    // Replay reports of the lease the killed worker lost: never counted. Only worker-0's
    // own process had its session, so a replay from anyone else is refused whole (a late
    // report from the process itself would be answered as stale: `farm/tests.rs`).
    let lost = farm.wait_for("the lease of worker-0 taken back", Duration::from_secs(30), |farm| {
        farm.build(chaos.build_id)
            .shards
            .into_iter()
            .find(|shard| shard.worker == "worker-0" && shard.state == ShardState::Expired)
    });
    let worker_id = farm.workers().into_iter().find(|worker| worker.name == "worker-0").expect("still known").worker_id;
    for test in &suite.tests {
        let body =
            json!({"worker_id": worker_id, "results": [{"test_id": test.id, "status": "failed", "duration_s": 0.1}]});
        let (status, answer) = farm.post(&format!("/api/v1/leases/{}/results", lost.lease_id), &body, Some(TOKEN));
        assert_eq!((status, answer["error"].as_str()), (403, Some("wrong_session")), "a replay is refused: {answer}");
    }

    farm.restart_master();
    std::thread::sleep(Duration::from_millis(800));
    farm.workers[1].kill();
    farm.start_worker("replacement-1");
    let done = farm.wait_for("the chaos build to finish", Duration::from_secs(180), |farm| {
        farm.builds().into_iter().find(|build| build.build_id == chaos.build_id && build.state.is_finished())
    });
    assert_eq!(done.state, BuildState::Red, "{done:?}");
    let log = std::fs::read_to_string(farm.dir().join("master.log")).unwrap();
    assert!(log.contains("build taken back after a restart"), "the master was killed mid-build");
    let disturbed = final_results(&farm, done.build_id);
    assert_eq!(disturbed, expected, "the same result for every test, each counted once");
    assert!(disturbed.values().all(|&(_, count)| count == 1));
    assert_eq!(done.counts.done(), 48);
    let shards = farm.build(done.build_id).shards;
    assert!(
        shards.iter().any(|shard| shard.state == ShardState::Expired),
        "the chaos did take leases back: {shards:?}"
    );
}

#[test]
fn a_runner_crash_reruns_its_tests_and_a_test_that_always_crashes_ends_the_build_in_error_not_red() {
    let state = tempfile::tempdir().unwrap();
    let farm = Farm::start(&core_suite(8, 1.0), 2, options(state.path()));
    assert_eq!(farm.finished_build_of(&farm.repo.head().unwrap()).state, BuildState::Green);

    // The runner aborts (SIGABRT) when it reaches this test the first time only.
    let crasher = "core/test_core.py::test_2";
    let revision = farm
        .repo
        .commit("Core: crash once", &[(FAILING_FILE, &format!("crash {crasher}\n")), ("src/core/code.txt", "1\n")])
        .unwrap();
    let build = farm.finished_build_of(&revision);
    assert_eq!(build.state, BuildState::Green, "a crash is infrastructure, its tests ran again: {build:?}");
    assert_eq!((build.counts.error, build.counts.failed, build.counts.passed), (0, 0, 8));
    let attempts = attempts_of(&farm, build.build_id, crasher);
    assert_eq!(attempts.iter().map(|result| result.status).collect::<Vec<_>>(), vec![TestStatus::Passed]);
    assert!(attempts[0].attempt >= 2, "it ran again after the crash: {attempts:?}");
    let shards = farm.build(build.build_id).shards;
    assert!(shards.iter().any(|shard| shard.state == ShardState::InfraError), "{shards:?}");

    // A test that crashes its runner every time: given up after max_attempts leases; the
    // build ends in error, never red, and the gate stays open, with a warning.
    let doomed = "core/test_core.py::test_3";
    let revision = farm
        .repo
        .commit(
            "Core: crash always",
            &[(FAILING_FILE, &format!("crash-always {doomed}\n")), ("src/core/code.txt", "2\n")],
        )
        .unwrap();
    let build = farm.finished_build_of(&revision);
    assert_eq!(build.state, BuildState::Error, "{build:?}");
    assert!(build.failed_tests.is_empty());
    let error = build.error.clone().unwrap_or_default();
    assert!(error.contains(doomed) && error.contains("no result after 3 attempts"), "{error}");
    let gate = farm.gate();
    assert_eq!(gate.state, GateState::Open);
    assert!(
        gate.warning.as_deref().is_some_and(|warning| warning.contains(&format!("build {}", build.build_id))),
        "{gate:?}"
    );
    let (code, _, _) = farm.gate_command(&[]);
    assert_eq!(code, 0, "an infrastructure error does not close the gate");
}
