//! Hardening against what clumsy users and broken machines do (issue #15), each with the
//! real binary: a data directory that cannot be used is named before the master listens;
//! absurd numbers are bounded; a build that cannot run leaves the gate as it was, with a
//! warning.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Farm, FarmOptions, Process, greenlight, test};
use greenlight_shared::api::{BuildState, GateState};
use greenlight_shared::suite::SuiteFile;

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

/// Plays a worker by hand: registers and waits for a lease.
fn lease_by_hand(farm: &Farm, name: &str) -> (u64, greenlight_shared::api::Lease) {
    let (status, me) = farm.post("/api/v1/workers/register", &serde_json::json!({"name": name}), Some(common::TOKEN));
    assert_eq!(status, 200, "{me}");
    let worker_id = me["worker_id"].as_u64().expect("a worker id");
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
    assert!(error.contains("No module named 'pytest'"), "the build's error names the cause: {error}");

    // No test gave a verdict: the gate is as it was (open), and says why the build gave none.
    let gate = farm.gate();
    assert_eq!((gate.state, gate.reason.as_deref()), (GateState::Open, None), "{gate:?}");
    let warning = gate.warning.clone().unwrap_or_default();
    assert!(warning.contains(&format!("build {} ended in error", build.build_id)), "{gate:?}");
    let (code, stdout, stderr) = farm.gate_command(&[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains(&format!("warning: {warning}")), "greenlight gate shows the warning: {stdout}");
}
