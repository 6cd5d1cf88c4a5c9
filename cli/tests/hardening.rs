//! Hardening against what clumsy users and broken machines do (issue #15), each with the
//! real binary: a data directory that cannot be used is named before the master listens;
//! absurd numbers are bounded; a worker's name and id answer only to the process that
//! registered them (and a worker's own token to it alone), while a restarted worker gets
//! back in by itself; a build that cannot run leaves the gate as it was, with a warning; a
//! data directory whose disk fills (a small tmpfs, mounted as root) loses no result, never
//! acknowledges one it did not store, keeps the master stoppable and stops new builds
//! before it is full; a repository that cannot be fetched is shown, not only logged.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Farm, FarmOptions, Process, TOKEN, Tmpfs, by_id, greenlight, test};
use greenlight_shared::api::{BuildState, FarmHealth, GateState, HealthKind, ShardState, TestStatus, WorkerView};
use greenlight_shared::suite::SuiteFile;
use serde_json::json;

/// Runs `greenlight master --config CONFIG` on any free port and waits (at most 30 s) for
/// it to give up: (exit code, stdout, stderr). A master that starts serving is killed and
/// the test fails.
fn master_refusing(config: &Path, dir: &Path) -> (Option<i32>, String, String) {
    let stdout = dir.join("refused.out");
    let stderr = dir.join("refused.err");
    let child = Command::new(greenlight())
        .args(["master", "--listen", "127.0.0.1:0", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let mut process = Process { child, name: "refused master".into() };
    let started = Instant::now();
    let status = loop {
        if let Some(status) = process.child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the master kept running");
        std::thread::sleep(Duration::from_millis(50));
    };
    (status.code(), std::fs::read_to_string(stdout).unwrap(), std::fs::read_to_string(stderr).unwrap())
}

#[test]
fn a_data_dir_that_cannot_be_used_or_is_in_use_is_named_before_the_master_listens() {
    let suite = SuiteFile { name: "hardening".into(), shard_overhead_s: 0.0, tests: vec![test("a", &["a"], &[], 1.0)] };
    let farm = Farm::start(&suite, 0, FarmOptions::default());
    let config = std::fs::read_to_string(&farm.config).unwrap();

    // A second master on the running one's data directory.
    let (code, stdout, stderr) = master_refusing(&farm.config, farm.dir());
    assert_ne!(code, Some(0), "{stderr}");
    assert!(!stdout.contains("listening"), "it said it listened: {stdout}");
    let db = farm.dir().join("master").join("db");
    assert!(stderr.contains("in use by another process") && stderr.contains(&db.display().to_string()), "{stderr}");
    // The first master never noticed.
    assert_eq!(farm.gate().branch, "main");

    // A data directory under a regular file cannot be created, even by root.
    let blocker = farm.dir().join("not-a-directory");
    std::fs::write(&blocker, "").unwrap();
    let unusable = blocker.join("data");
    let data_line = format!("data_dir = {:?}", farm.dir().join("master").to_string_lossy());
    assert!(config.contains(&data_line), "{config}");
    let broken = farm.dir().join("broken.toml");
    std::fs::write(&broken, config.replace(&data_line, &format!("data_dir = {:?}", unusable.to_string_lossy())))
        .unwrap();
    let (code, stdout, stderr) = master_refusing(&broken, farm.dir());
    assert_ne!(code, Some(0), "{stderr}");
    assert!(!stdout.contains("listening"), "it said it listened: {stdout}");
    assert!(stderr.contains("data_dir") && stderr.contains(&unusable.display().to_string()), "{stderr}");
}

/// Waits, as the worker `worker_id`, for its next lease.
fn next_lease(farm: &Farm, worker_id: u64) -> greenlight_shared::api::Lease {
    let http = reqwest::blocking::Client::new();
    farm.wait_for("a lease", Duration::from_secs(60), |farm| {
        let answer: greenlight_shared::api::LeaseResponse = http
            .post(format!("{}/api/v1/workers/{worker_id}/lease", farm.url))
            .bearer_auth(common::TOKEN)
            .json(&serde_json::json!({"wait_s": 1}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        answer.lease
    })
}

/// Finishes `lease` and waits for the next one.
fn lease_again(farm: &Farm, worker_id: u64, lease_id: u64) -> greenlight_shared::api::Lease {
    let (status, body) = farm.post(
        &format!("/api/v1/leases/{lease_id}/finish"),
        &serde_json::json!({"worker_id": worker_id, "outcome": {"kind": "completed"}}),
        Some(common::TOKEN),
    );
    assert_eq!(status, 204, "{body}");
    next_lease(farm, worker_id)
}

/// Plays a worker by hand: registers. Its worker id.
fn register_by_hand(farm: &Farm, name: &str) -> u64 {
    let (status, me) = farm.post("/api/v1/workers/register", &serde_json::json!({"name": name}), Some(common::TOKEN));
    assert_eq!(status, 200, "{me}");
    me["worker_id"].as_u64().expect("a worker id")
}

/// Plays a worker by hand: registers and waits for a lease.
fn lease_by_hand(farm: &Farm, name: &str) -> (u64, greenlight_shared::api::Lease) {
    let worker_id = register_by_hand(farm, name);
    (worker_id, next_lease(farm, worker_id))
}

#[test]
fn absurd_durations_and_huge_outputs_are_bounded_on_the_master_and_never_poison_estimates() {
    let tests = vec![test("a::absurd", &["a"], &[], 1.0), test("a::negative", &["a"], &[], 1.0)];
    let suite = SuiteFile { name: "bounds".into(), shard_overhead_s: 0.0, tests };
    let farm = Farm::start(&suite, 0, FarmOptions::default());
    let (worker_id, mut lease) = lease_by_hand(&farm, "by-hand");
    let build_id = lease.build_id;
    let output = format!("{}the end", "x".repeat(300 * 1024));
    let mut reported = std::collections::BTreeSet::new();
    loop {
        let results: Vec<serde_json::Value> = lease
            .tests
            .iter()
            .map(|test_id| {
                let duration_s = if test_id == "a::absurd" { 1e300 } else { -5.0 };
                serde_json::json!({"test_id": test_id, "status": "failed", "duration_s": duration_s, "output": output})
            })
            .collect();
        let (status, body) = farm.post(
            &format!("/api/v1/leases/{}/results", lease.lease_id),
            &serde_json::json!({"worker_id": worker_id, "results": results}),
            Some(common::TOKEN),
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["accepted"], lease.tests.len(), "kept, not refused: {body}");
        reported.extend(lease.tests.clone());
        if reported.len() == 2 {
            break;
        }
        lease = lease_again(&farm, worker_id, lease.lease_id);
    }
    let stored = farm.tests(build_id).results;
    let absurd = stored.iter().find(|result| result.test_id == "a::absurd").unwrap();
    assert_eq!(absurd.duration_s, 86_400.0, "clamped to max_test_duration_s");
    let negative = stored.iter().find(|result| result.test_id == "a::negative").unwrap();
    assert_eq!(negative.duration_s, 0.0);
    for result in &stored {
        let kept = result.output.as_deref().unwrap();
        assert!(kept.len() <= 64 * 1024 + 100, "{} bytes stored", kept.len());
        assert!(kept.starts_with("[greenlight: output cut to its last 65536 of 307207 bytes]"), "{}", &kept[..80]);
        assert!(kept.ends_with("the end"), "the end of the output is kept");
    }
    // Neither enters the history the next plans estimate from.
    for test_id in ["a::absurd", "a::negative"] {
        let history: greenlight_shared::api::TestHistory = farm.get(&format!("/api/v1/tests?id={test_id}"));
        assert!(history.recent_durations_s.is_empty(), "{test_id}: {:?}", history.recent_durations_s);
    }
}

/// The worker registered under `name`, as the master lists it.
fn worker_named(farm: &Farm, name: &str) -> Option<WorkerView> {
    farm.workers().into_iter().find(|worker| worker.name == name)
}

/// Waits for a running shard of the worker `name`: (build id, lease id).
fn running_shard_of(farm: &Farm, name: &str) -> (u64, u64) {
    farm.wait_for(&format!("a running shard of {name}"), Duration::from_secs(60), |farm| {
        let build = farm.builds().into_iter().find(|build| build.state == BuildState::Running)?;
        let shards = farm.build(build.build_id).shards;
        let shard = shards.iter().find(|shard| shard.worker == name && shard.state == ShardState::Running)?;
        Some((build.build_id, shard.lease_id))
    })
}

/// Waits for `build_id` to end; checks it is green with every test of `suite` reported
/// once, and returns its shards.
fn green_with_each_test_once(farm: &Farm, build_id: u64, suite: &SuiteFile) -> Vec<greenlight_shared::api::ShardView> {
    let build = farm.wait_for("the build to end", Duration::from_secs(120), |farm| {
        farm.builds().into_iter().find(|build| build.build_id == build_id && build.state.is_finished())
    });
    assert_eq!((build.state, build.counts.passed), (BuildState::Green, suite.tests.len() as u32), "{build:?}");
    let results = common::by_id(farm.tests(build_id).results);
    assert_eq!(results.len(), suite.tests.len());
    assert!(results.values().all(|attempts| attempts.len() == 1), "each test reported once: {results:?}");
    farm.build(build_id).shards
}

const OWN_TOKEN: &str = "only-own-token-has-it";

#[test]
fn a_second_worker_under_a_live_workers_name_is_refused_and_a_restarted_one_gets_back_in_by_itself() {
    let tests = (0..16).map(|index| test(&format!("core::t{index}"), &["core"], &[], 1.0)).collect();
    let suite = SuiteFile { name: "identity".into(), shard_overhead_s: 0.0, tests };
    let options = FarmOptions {
        scale: 0.5,
        lease_timeout_s: 3.0,
        heartbeat_interval_s: 0.5,
        extra_toml: format!("[workers.own-token]\ntoken = \"{OWN_TOKEN}\"\n"),
        ..FarmOptions::default()
    };
    let mut farm = Farm::start(&suite, 0, options);
    farm.start_worker("twin");
    farm.start_worker_with_token("own-token", OWN_TOKEN);
    let (build_id, lease_id) = running_shard_of(&farm, "twin");
    let twin = worker_named(&farm, "twin").expect("twin registered").worker_id;

    // A second machine under twin's name (a clone), with a session of its own or none (an
    // older worker): refused, and it may not call as twin either.
    for session in [Some("session-of-a-cloned-machine"), None] {
        let register = json!({"name": "twin"});
        let (status, body) = farm.post_with("/api/v1/workers/register", &register, Some(TOKEN), session);
        assert_eq!((status, body["error"].as_str()), (409, Some("name_in_use")), "{body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains("another machine running a worker under the same name"), "{message}");
        let lease = format!("/api/v1/workers/{twin}/lease");
        let (status, body) = farm.post_with(&lease, &json!({"wait_s": 0}), Some(TOKEN), session);
        assert_eq!((status, body["error"].as_str()), (403, Some("wrong_session")), "took twin's lease: {body}");
        let report = json!({"worker_id": twin, "results": [{"test_id": "core::t0", "status": "failed"}]});
        let results = format!("/api/v1/leases/{lease_id}/results");
        let (status, body) = farm.post_with(&results, &report, Some(TOKEN), session);
        assert_eq!((status, body["error"].as_str()), (403, Some("wrong_session")), "reported as twin: {body}");
    }
    let (status, body) =
        farm.post_with("/api/v1/workers/register", &json!({"name": "short"}), Some(TOKEN), Some("guessable"));
    assert_eq!((status, body["error"].as_str()), (422, Some("invalid_session")), "{body}");
    // A worker with a token of its own: the shared token does not act as it, its token as
    // no other worker.
    let (status, body) = farm.post("/api/v1/workers/register", &json!({"name": "own-token"}), Some(TOKEN));
    assert_eq!((status, body["error"].as_str()), (403, Some("wrong_token")), "{body}");
    let (status, body) = farm.post("/api/v1/workers/register", &json!({"name": "stranger"}), Some(OWN_TOKEN));
    assert_eq!((status, body["error"].as_str()), (403, Some("wrong_token")), "{body}");
    let own = worker_named(&farm, "own-token").expect("own-token registered with its token").worker_id;
    let (status, body) = farm.post(&format!("/api/v1/workers/{own}/lease"), &json!({"wait_s": 0}), Some(TOKEN));
    assert_eq!((status, body["error"].as_str()), (403, Some("wrong_token")), "{body}");

    // The real twin never noticed: no lease was taken from it, each test reported once.
    let shards = green_with_each_test_once(&farm, build_id, &suite);
    assert!(shards.iter().all(|shard| shard.state != ShardState::TakenBack), "{shards:?}");
    assert!(shards.iter().any(|shard| shard.worker == "own-token"), "the worker with its own token ran: {shards:?}");

    // twin restarts while it holds a shard (killed, started again under the same name, as
    // a supervisor would): it gets back in by itself once its old registration is
    // silent, with an id of its own; the old lease is taken back (expired), never inherited.
    let revision = farm.repo.touch_area("core", "Core: once more").unwrap();
    let (build_id, lease_id) = running_shard_of(&farm, "twin");
    farm.workers.iter_mut().find(|process| process.name == "twin").expect("twin's process").kill();
    farm.start_worker("twin");
    let back = farm.wait_for("twin back in", Duration::from_secs(60), |farm| {
        worker_named(farm, "twin").filter(|worker| worker.worker_id != twin && !worker.lost)
    });
    assert_eq!(farm.workers().iter().filter(|worker| worker.name == "twin").count(), 1, "the old registration is gone");
    let shards = green_with_each_test_once(&farm, build_id, &suite);
    assert_eq!(farm.build(build_id).build.revision, revision);
    let killed = shards.iter().find(|shard| shard.lease_id == lease_id).expect("the killed worker's shard");
    assert_eq!(killed.state, ShardState::Expired, "taken back: {killed:?}");
    assert!(back.worker_id > twin);
}

#[test]
fn a_build_whose_suite_cannot_be_listed_leaves_the_gate_as_it_was_with_a_warning() {
    // A pytest suite whose python has no pytest: isolated (-I) and without site-packages (-S).
    let bin = tempfile::tempdir().unwrap();
    let python = bin.path().join("python-without-pytest");
    std::fs::write(&python, "#!/bin/sh\nexec python3 -I -S \"$@\"\n").unwrap();
    let mut permissions = std::fs::metadata(&python).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&python, permissions).unwrap();
    let suite_toml = format!("runner = \"pytest\"\npython = {:?}", python.to_string_lossy());
    let suite = SuiteFile { name: "pytest".into(), shard_overhead_s: 0.0, tests: vec![test("a", &["a"], &[], 1.0)] };
    let farm = Farm::start(&suite, 1, FarmOptions { suite_toml, ..FarmOptions::default() });
    let build = farm.finished_build_of(&farm.repo.head().unwrap());
    assert_eq!(build.state, BuildState::Error, "{build:?}");
    let error = build.error.clone().unwrap_or_default();
    // `python -m pytest` (the warm runner that lists) says "No module named pytest".
    assert!(
        error.contains("No module named") && error.contains("pytest"),
        "the build's error names the cause: {error}"
    );

    // No test gave a verdict: the gate is as it was (open), and says why the build gave none.
    let gate = farm.gate();
    assert_eq!((gate.state, gate.reason.as_deref()), (GateState::Open, None), "{gate:?}");
    let warning = gate.warning.clone().unwrap_or_default();
    assert!(warning.contains(&format!("build {} ended in error", build.build_id)), "{gate:?}");
    let (code, stdout, stderr) = farm.gate_command(&[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains(&format!("warning: {warning}")), "greenlight gate shows the warning: {stdout}");
}

/// A farm whose data directory is `disk`, with these `[storage]` floors.
fn on_disk(disk: &Tmpfs, min_free_bytes: u64, reserve_bytes: u64) -> FarmOptions {
    FarmOptions {
        data_dir: Some(disk.path()),
        extra_toml: format!("[storage]\nmin_free_bytes = {min_free_bytes}\nreserve_bytes = {reserve_bytes}\n"),
        ..FarmOptions::default()
    }
}

fn suite_of(n: usize, duration_s: f64) -> SuiteFile {
    let tests = (0..n).map(|index| test(&format!("a/test_a.py::test_{index:02}"), &["a"], &[], duration_s)).collect();
    SuiteFile { name: "disk".into(), shard_overhead_s: 0.0, tests }
}

/// Reports `test_ids` passed on `lease_id`, as the worker `worker_id`: (status, body).
fn report(farm: &Farm, worker_id: u64, lease_id: u64, test_ids: &[String]) -> (u16, serde_json::Value) {
    let results: Vec<serde_json::Value> = test_ids
        .iter()
        .map(|test_id| serde_json::json!({"test_id": test_id, "status": "passed", "duration_s": 0.5}))
        .collect();
    farm.post(
        &format!("/api/v1/leases/{lease_id}/results"),
        &serde_json::json!({"worker_id": worker_id, "results": results}),
        Some(TOKEN),
    )
}

fn health(farm: &Farm) -> FarmHealth {
    farm.get("/api/v1/health")
}

fn has_problem(health: &FarmHealth, kind: HealthKind) -> bool {
    health.problems.iter().any(|problem| problem.kind == kind)
}

/// Sends SIGTERM to `process` and waits (at most 30 s) for it to exit.
fn terminate(process: &mut Process) -> std::process::ExitStatus {
    let sent = Command::new("kill").args(["-TERM", &process.pid().to_string()]).status().unwrap();
    assert!(sent.success());
    let started = Instant::now();
    loop {
        if let Some(status) = process.child.try_wait().unwrap() {
            return status;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{} ignored SIGTERM for 30 s", process.name);
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn results_sent_while_the_disk_is_full_are_refused_unrecorded_and_accepted_when_sent_again() {
    let disk = Tmpfs::mount("8m");
    let farm = Farm::start(&suite_of(2, 1.0), 0, on_disk(&disk, 1 << 20, 256 << 10));
    let (worker_id, lease) = lease_by_hand(&farm, "by-hand");
    let build_id = lease.build_id;
    let first = lease.tests[..1].to_vec();

    let ballast = disk.fill(0);
    let (status, body) = report(&farm, worker_id, lease.lease_id, &first);
    assert_eq!(status, 503, "refused, and the worker told to retry: {body}");
    assert_eq!(body["error"], "disk_full", "{body}");
    assert!(body["message"].as_str().unwrap().contains("reserve_bytes"), "{body}");
    assert!(farm.tests(build_id).results.is_empty(), "nothing recorded");
    let full = health(&farm);
    assert!(has_problem(&full, HealthKind::DiskLow) && full.writes_refused >= 1, "{full:?}");

    disk.empty(&ballast);
    let (status, body) = report(&farm, worker_id, lease.lease_id, &first);
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["accepted"].as_u64(), body["duplicates"].as_u64()), (Some(1), Some(0)), "{body}");
    // The rest of the build, by hand: it ends green with one result per test.
    let mut lease = lease;
    let mut reported: std::collections::BTreeSet<String> = first.into_iter().collect();
    loop {
        let rest: Vec<String> = lease.tests.iter().filter(|id| !reported.contains(*id)).cloned().collect();
        let (status, body) = report(&farm, worker_id, lease.lease_id, &rest);
        assert_eq!(status, 200, "{body}");
        reported.extend(rest);
        if reported.len() == 2 {
            break;
        }
        lease = lease_again(&farm, worker_id, lease.lease_id);
    }
    let build = farm.wait_for("the build's end", Duration::from_secs(60), |farm| {
        farm.builds().into_iter().find(|build| build.build_id == build_id && build.state.is_finished())
    });
    assert_eq!(build.state, BuildState::Green, "{build:?}");
    let stored = by_id(farm.tests(build_id).results);
    assert_eq!(stored.len(), 2);
    assert!(stored.values().all(|attempts| attempts.len() == 1), "{stored:?}");
}

#[test]
fn a_worker_whose_results_meet_a_full_disk_sends_them_again_and_the_build_loses_none() {
    let disk = Tmpfs::mount("8m");
    // Six tests of a second each in one shard: the disk fills while it runs.
    let farm = Farm::start(&suite_of(6, 20.0), 1, on_disk(&disk, 1 << 20, 256 << 10));
    farm.running_shard();
    let ballast = disk.fill(0);
    farm.wait_for("a write refused for the full disk", Duration::from_secs(60), |farm| {
        (health(farm).writes_refused > 0).then_some(())
    });
    disk.empty(&ballast);
    let build = farm.finished_build_of(&farm.repo.head().unwrap());
    assert_eq!(build.state, BuildState::Green, "{build:?}");
    let stored = by_id(farm.tests(build.build_id).results);
    assert_eq!(stored.len(), 6, "every test has its result: {stored:?}");
    for (test_id, attempts) in &stored {
        assert_eq!(attempts.len(), 1, "{test_id}: {attempts:?}");
        assert_eq!((attempts[0].status, attempts[0].attempt), (TestStatus::Passed, 1), "{test_id}");
    }
}

#[test]
fn after_a_store_write_fails_the_master_answers_at_once_records_nothing_more_and_stops_on_sigterm() {
    let disk = Tmpfs::mount("8m");
    // No reserve: the store itself meets the full disk.
    let mut farm = Farm::start(&suite_of(40, 1.0), 0, on_disk(&disk, 0, 0));
    let (worker_id, lease) = lease_by_hand(&farm, "by-hand");
    let ballast = disk.fill(0);
    let refused = lease.tests.iter().find_map(|test_id| {
        let (status, body) = report(&farm, worker_id, lease.lease_id, std::slice::from_ref(test_id));
        (status != 200).then_some((status, body))
    });
    let (status, body) = refused.expect("a write on a full disk fails");
    assert_eq!((status, body["error"].as_str()), (503, Some("store_failed")), "{body}");
    assert!(has_problem(&health(&farm), HealthKind::StoreFailed));

    // Space freed: the next report is answered at once, and refused (the store takes no
    // more writes until a restart), never left hanging.
    disk.empty(&ballast);
    let quick = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let answer = quick
        .post(format!("{}/api/v1/leases/{}/results", farm.url, lease.lease_id))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"worker_id": worker_id, "results": [
            {"test_id": lease.tests.last().unwrap(), "status": "passed", "duration_s": 0.5}
        ]}))
        .send()
        .expect("answered within 10 s");
    assert_eq!(answer.status().as_u16(), 503);
    let gate = farm.gate();
    assert!(gate.health.iter().any(|problem| problem.kind == HealthKind::StoreFailed), "{gate:?}");

    let status = terminate(&mut farm.master);
    assert!(status.code().is_some(), "it exited by itself: {status:?}");
}

/// Every test id in `acknowledged` has a stored result in build `build_id`.
fn assert_all_stored(farm: &Farm, build_id: u64, acknowledged: &std::collections::BTreeSet<String>) {
    let stored: std::collections::BTreeSet<String> =
        farm.tests(build_id).results.into_iter().map(|result| result.test_id).collect();
    let missing: Vec<&String> = acknowledged.difference(&stored).collect();
    assert!(missing.is_empty(), "acknowledged but not stored: {missing:?} ({} acknowledged)", acknowledged.len());
}

#[test]
fn results_acknowledged_around_a_full_disk_are_all_in_the_data_directory_after_a_crash() {
    let disk = Tmpfs::mount("8m");
    // No reserve: the store itself meets the full disk.
    let mut farm = Farm::start(&suite_of(45, 1.0), 0, on_disk(&disk, 0, 0));
    let (worker_id, lease) = lease_by_hand(&farm, "by-hand");
    let build_id = lease.build_id;
    assert!(lease.tests.len() > 6, "{} tests leased", lease.tests.len());
    // Each result sent alone; a 200 (accepted, or a duplicate of one accepted before)
    // acknowledges it.
    let mut acknowledged = std::collections::BTreeSet::new();
    let mut send = |test_id: &String| {
        let (status, _) = report(&farm, worker_id, lease.lease_id, std::slice::from_ref(test_id));
        if status == 200 {
            acknowledged.insert(test_id.clone());
        }
        status
    };
    let statuses: Vec<u16> = lease.tests[..5].iter().map(&mut send).collect();
    assert_eq!(statuses, [200; 5], "before the disk fills");
    let ballast = disk.fill(0);
    let refused = lease.tests[5..].iter().map(&mut send).filter(|&status| status != 200).count();
    assert!(refused > 0, "the full disk refused something");
    // Space freed: everything sent again (the worker's retries).
    disk.empty(&ballast);
    for test_id in &lease.tests {
        send(test_id);
    }

    // A crash: the restarted master finds what its disk holds.
    farm.master.kill();
    farm.restart_master();
    assert_all_stored(&farm, build_id, &acknowledged);
}

#[test]
fn results_acknowledged_to_concurrent_reporters_sharing_flushes_are_all_there_after_a_kill_9() {
    let mut farm = Farm::start(&suite_of(600, 1.0), 0, FarmOptions::default());
    // All six are live before the first asks, so the build is shared among them (a worker
    // alone takes all it may, and one that joins later gets a part of it only once it has
    // reported, which these do only when all six have a lease).
    let worker_ids: Vec<u64> = (0..6).map(|index| register_by_hand(&farm, &format!("reporter-{index}"))).collect();
    let reporters: Vec<(u64, greenlight_shared::api::Lease)> =
        worker_ids.into_iter().map(|worker_id| (worker_id, next_lease(&farm, worker_id))).collect();
    let build_id = reporters[0].1.build_id;
    // Each reporter sends its shard's results one or two at a time, as fast as it is
    // answered, all at once: their flushes are shared. The master is killed mid-stream.
    let acknowledged = std::sync::Mutex::new(std::collections::BTreeSet::new());
    let sent = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for (worker_id, lease) in &reporters {
            let (acknowledged, sent, url) = (&acknowledged, &sent, farm.url.clone());
            scope.spawn(move || {
                let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
                for batch in lease.tests.chunks(1 + lease.lease_id as usize % 2) {
                    let results: Vec<serde_json::Value> = batch
                        .iter()
                        .map(|test_id| serde_json::json!({"test_id": test_id, "status": "passed", "duration_s": 0.5}))
                        .collect();
                    let answer = http
                        .post(format!("{url}/api/v1/leases/{}/results", lease.lease_id))
                        .bearer_auth(TOKEN)
                        .json(&serde_json::json!({"worker_id": worker_id, "results": results}))
                        .send();
                    match answer {
                        Ok(answer) if answer.status() == 200 => {
                            acknowledged.lock().unwrap().extend(batch.iter().cloned());
                            sent.fetch_add(batch.len(), std::sync::atomic::Ordering::SeqCst);
                        }
                        _ => return,
                    }
                }
            });
        }
        let started = std::time::Instant::now();
        while sent.load(std::sync::atomic::Ordering::SeqCst) < 150 && started.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(1));
        }
        farm.master.kill();
    });
    let acknowledged = acknowledged.into_inner().unwrap();
    let leased: usize = reporters.iter().map(|(_, lease)| lease.tests.len()).sum();
    assert!(
        acknowledged.len() >= 150 && acknowledged.len() < leased,
        "killed mid-stream: {} of {leased}",
        acknowledged.len()
    );

    farm.restart_master();
    assert_all_stored(&farm, build_id, &acknowledged);
}

#[test]
fn below_min_free_bytes_no_new_build_starts_and_the_gate_and_metrics_say_why_until_space_is_freed() {
    let disk = Tmpfs::mount("8m");
    let farm = Farm::start(&suite_of(2, 1.0), 1, on_disk(&disk, 3 << 20, 256 << 10));
    let first = farm.finished_build_of(&farm.repo.head().unwrap());
    assert_eq!(first.state, BuildState::Green);

    // Between the reserve and the floor: changes are still seen, no build starts.
    let ballast = disk.fill(1 << 20);
    farm.wait_for("the disk reported low", Duration::from_secs(30), |farm| {
        has_problem(&health(farm), HealthKind::DiskLow).then_some(())
    });
    let revision = farm.repo.commit("A: more", &[("src/a/code.txt", "2\n")]).unwrap();
    farm.wait_for("the change seen", Duration::from_secs(30), |farm| {
        farm.changes().into_iter().any(|change| change.revision == revision).then_some(())
    });
    let (code, _, stderr) = farm.gate_command(&[]);
    assert_eq!(code, 0, "the gate itself is open: {stderr}");
    assert!(stderr.contains("warning:") && stderr.contains("min_free_bytes"), "{stderr}");
    let (_, metrics) = farm.get_text("/metrics");
    assert!(metrics.contains("greenlight_health_problem{kind=\"disk_low\"} 1"), "{metrics}");
    assert!(metrics.contains("greenlight_data_dir_free_bytes "), "{metrics}");
    assert_eq!(farm.gate().state, GateState::Open);
    assert!(farm.builds().iter().all(|build| build.revision != revision), "no build started below the floor");

    disk.empty(&ballast);
    let second = farm.finished_build_of(&revision);
    assert_eq!(second.state, BuildState::Green);
    assert!(!has_problem(&health(&farm), HealthKind::DiskLow));
}

#[test]
fn a_repository_that_cannot_be_fetched_shows_on_the_gate_the_metrics_and_the_api_with_gits_error() {
    let farm = Farm::start(&suite_of(1, 1.0), 0, FarmOptions::default());
    farm.wait_for("the first fetch", Duration::from_secs(30), |farm| health(farm).last_fetch_at);
    let repository = farm.dir().join("repo");
    let moved = farm.dir().join("repo-moved");
    std::fs::rename(&repository, &moved).unwrap();

    let problem = farm.wait_for("the failed fetch shown", Duration::from_secs(30), |farm| {
        health(farm).problems.into_iter().find(|problem| problem.kind == HealthKind::RepositoryUnreachable)
    });
    let url = repository.display().to_string();
    assert!(problem.message.contains(&url) && problem.message.contains("git fetch"), "{problem:?}");
    assert!(problem.message.contains("does not appear to be a git repository"), "git's own error: {problem:?}");
    let gate = farm.gate();
    assert_eq!(gate.state, GateState::Open);
    assert_eq!(gate.health, vec![problem.clone()]);
    let (code, _, stderr) = farm.gate_command(&[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("warning:") && stderr.contains("cannot be fetched"), "{stderr}");
    let (_, metrics) = farm.get_text("/metrics");
    assert!(metrics.contains("greenlight_health_problem{kind=\"repository_unreachable\"} 1"), "{metrics}");
    let poll_errors = metrics.lines().find_map(|line| line.strip_prefix("greenlight_poll_errors_total "));
    assert!(poll_errors.is_some_and(|count| count.parse::<f64>().unwrap() >= 1.0), "{metrics}");

    std::fs::rename(&moved, &repository).unwrap();
    farm.wait_for("the fetch working again", Duration::from_secs(30), |farm| {
        health(farm).problems.is_empty().then_some(())
    });
    let (_, metrics) = farm.get_text("/metrics");
    assert!(metrics.contains("greenlight_health_problem{kind=\"repository_unreachable\"} 0"), "{metrics}");
}

#[test]
fn a_master_told_to_stop_answers_its_waiting_workers_and_stops_without_cutting_requests_off() {
    let mut farm = Farm::start(&suite_of(2, 0.1), 2, FarmOptions::default());
    farm.finished_build_of(&farm.repo.head().unwrap());
    // Both workers without a lease now: each asks for one in a long poll (`wait_s` 20 s).
    farm.wait_for("both workers idle", Duration::from_secs(30), |farm| {
        let workers = farm.workers();
        (workers.len() == 2 && workers.iter().all(|worker| worker.lease_id.is_none())).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    let status = terminate(&mut farm.master);
    assert!(status.success(), "{status:?}");
    let log = std::fs::read_to_string(farm.dir.path().join("master.log")).unwrap();
    assert!(!log.contains("requests still running at shutdown"), "the long polls were answered, not cut off:\n{log}");
}
