//! The warm pytest runner through the real farm: each worker keeps one pytest process per
//! revision that collects once and runs shard after shard, reporting test by test. So a
//! build of many shards runs in about as many processes as there are workers, a shard
//! can give back the tests it has not started when a worker joins late, and a test that
//! kills its process is retried on another worker while the others keep their results.
//!
//! Needs pytest in the virtualenv `.ci/run` makes at `target/pyenv` (or `GREENLIGHT_PYENV`);
//! without it the test fails saying so.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::{Farm, FarmOptions, by_id, test};
use greenlight_shared::api::{BuildDetail, BuildState, ShardState, TestStatus};
use greenlight_shared::git::Git;
use greenlight_shared::suite::{SuiteFile, SuiteTest};

fn python() -> PathBuf {
    let venv = std::env::var_os("GREENLIGHT_PYENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv"));
    let python = venv.join("bin/python");
    let probe = std::process::Command::new(&python).args(["-c", "import pytest"]).output();
    match probe {
        Ok(output) if output.status.success() => python,
        _ => panic!(
            "this test needs a virtualenv with pytest at {} (or GREENLIGHT_PYENV): \
             python3 -m venv target/pyenv && target/pyenv/bin/pip install pytest (.ci/run does)",
            venv.display()
        ),
    }
}

/// Every test notes the process it ran in; one kills its process the first time it runs.
const CONFTEST: &str = r#"import os

import pytest


@pytest.fixture(autouse=True)
def note_the_process():
    with open(os.environ["GREENLIGHT_PIDS"], "a", encoding="utf-8") as pids:
        pids.write(f"{os.getpid()}\n")
    yield
"#;

const MANY_TESTS: &str = r#"import time

import pytest


@pytest.mark.parametrize("n", range(40))
def test_many(n):
    time.sleep(0.05)
"#;

const CRASH_TEST: &str = r#"import os
import signal


def test_crashes_its_process_once():
    marker = os.environ["GREENLIGHT_PIDS"] + ".crashed"
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
"#;

fn suite_toml(python: &Path, pids: &Path, extra: &str) -> String {
    format!(
        "runner = \"pytest\"\npython = {python:?}\n{extra}\nenv = {{ PYTHONDONTWRITEBYTECODE = \"1\", GREENLIGHT_PIDS = {pids:?} }}",
        python = python.to_string_lossy(),
        pids = pids.to_string_lossy(),
    )
}

fn commit_project(repo_dir: &Path, files: &[(&str, &str)]) {
    for (path, contents) in files {
        let path = repo_dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }
    let git = Git::new(repo_dir);
    git.run(&["add", "-A"]).unwrap();
    git.run(&["commit", "--quiet", "-m", "a pytest project"]).unwrap();
}

/// A farm of 2 workers over a pytest project of `files` that the workers list (no suite
/// file); the scratch directory holds `pids`, where the tests note their processes.
fn two_workers_listing(files: &[(&str, &str)]) -> (Farm, tempfile::TempDir) {
    two_workers_listing_with("runner_args = [\"tests\"]", files)
}

/// [`two_workers_listing`] with `args` (a line of `[suite]`) for the runner's arguments.
fn two_workers_listing_with(args: &str, files: &[(&str, &str)]) -> (Farm, tempfile::TempDir) {
    let python = python();
    let scratch = tempfile::tempdir().unwrap();
    let pids = scratch.path().join("pids");
    let empty = SuiteFile { name: "unused".into(), shard_overhead_s: 0.0, tests: Vec::new() };
    let options = FarmOptions { suite_toml: suite_toml(&python, &pids, args), ..FarmOptions::default() };
    let farm = Farm::start_with_repo(&empty, 2, options, |repo| commit_project(repo.dir(), files));
    (farm, scratch)
}

#[test]
fn shards_run_in_one_pytest_process_per_worker_and_a_test_that_kills_its_process_is_retried_elsewhere() {
    let (farm, scratch) = two_workers_listing(&[
        ("tests/conftest.py", CONFTEST),
        ("tests/test_many.py", MANY_TESTS),
        ("tests/test_crash.py", CRASH_TEST),
    ]);
    let pids = scratch.path().join("pids");
    let build = farm.finished_build_of(&farm.repo.head().unwrap());
    assert_eq!(build.state, BuildState::Green, "{build:?}");
    let results = by_id(farm.tests(build.build_id).results);
    assert_eq!(results.len(), 41, "every collected test has a result");
    for (id, attempts) in &results {
        let last = attempts.last().unwrap();
        assert_eq!(last.status, TestStatus::Passed, "{id}: {attempts:?}");
    }

    // The crash: its shard ended as an infrastructure error, the test ran again on the
    // other worker and passed; the tests its shard had reported kept their results.
    let detail: BuildDetail = farm.get(&format!("/api/v1/builds/{}?test_ids=true", build.build_id));
    let crashed = detail
        .shards
        .iter()
        .find(|shard| shard.state == ShardState::InfraError)
        .unwrap_or_else(|| panic!("the crash ended its shard as an infrastructure error: {:?}", detail.shards));
    let crash = &results["tests/test_crash.py::test_crashes_its_process_once"];
    assert_eq!(crash.len(), 1, "the lost attempt is no result: {crash:?}");
    assert_eq!(crash[0].attempt, 2, "{crash:?}");
    assert_ne!(crash[0].worker.as_deref(), Some(crashed.worker.as_str()), "retried on the other worker");
    for id in crashed.test_ids.iter().filter(|id| !id.contains("test_crash")) {
        if let Some(attempts) = results.get(id)
            && attempts[0].lease_id == Some(crashed.lease_id)
        {
            assert_eq!(attempts.len(), 1, "{id} reported before the crash keeps its result");
        }
    }

    // Many shards, few processes: one per worker, and one more where a runner died.
    let processes: BTreeSet<String> = std::fs::read_to_string(&pids).unwrap().lines().map(str::to_owned).collect();
    assert!(processes.len() <= 3, "{} pytest processes for 2 workers and one crash", processes.len());
    assert!(
        build.shards as usize > processes.len(),
        "{} shards ran in {} processes: several shards per process",
        build.shards,
        processes.len()
    );
}

#[test]
fn a_warm_shard_gives_back_the_tests_it_has_not_started_when_a_worker_joins_late() {
    // 40 tests of half a second, with known durations: the lone worker leases most of the
    // build in one shard; once a second worker asks, that running shard (which shows its
    // pace test by test) gives back the tests it has not started.
    let python = python();
    let scratch = tempfile::tempdir().unwrap();
    let pids = scratch.path().join("pids");
    let tests: Vec<SuiteTest> =
        (0..40).map(|n| test(&format!("tests/test_slow.py::test_slow[{n}]"), &["slow"], &[], 0.5)).collect();
    let suite = SuiteFile { name: "slow".into(), shard_overhead_s: 0.0, tests };
    let options = FarmOptions {
        heartbeat_interval_s: 0.5,
        suite_toml: suite_toml(&python, &pids, "file = \"greenlight-suite.json\"\nrunner_args = [\"tests\"]"),
        ..FarmOptions::default()
    };
    const SLOW_TESTS: &str = "import time\n\nimport pytest\n\n\n@pytest.mark.parametrize(\"n\", range(40))\ndef test_slow(n):\n    time.sleep(0.5)\n";
    let mut farm = Farm::start_with_repo(&suite, 1, options, |repo| {
        commit_project(repo.dir(), &[("tests/conftest.py", CONFTEST), ("tests/test_slow.py", SLOW_TESTS)]);
    });
    let first = farm.running_shard();
    assert!(first.1 >= 30, "the lone worker leased most of the build: {first:?}");
    farm.start_worker("worker-late");

    let build = farm.finished_build_of(&farm.repo.head().unwrap());
    assert_eq!(build.state, BuildState::Green, "{build:?}");
    let results = by_id(farm.tests(build.build_id).results);
    assert_eq!(results.len(), 40, "every test has its result");
    for (id, attempts) in &results {
        assert_eq!(attempts.len(), 1, "{id} reported exactly once: {attempts:?}");
        assert_eq!((attempts[0].status, attempts[0].attempt), (TestStatus::Passed, 1), "{id}");
    }
    let detail: BuildDetail = farm.get(&format!("/api/v1/builds/{}?test_ids=true", build.build_id));
    let shrunk = detail.shards.iter().find(|shard| shard.lease_id == first.0).expect("the first shard is listed");
    assert!(shrunk.withdrawn > 0, "the first shard gave tests back: {shrunk:?}");
    assert_eq!(shrunk.state, ShardState::Finished, "giving tests back is no infrastructure error");
    let late: Vec<&str> = results
        .values()
        .filter(|attempts| attempts[0].worker.as_deref() == Some("worker-late"))
        .map(|attempts| attempts[0].test_id.as_str())
        .collect();
    assert!(!late.is_empty(), "the late worker ran some of the given-back tests");
}

#[test]
fn the_lister_collects_once_an_idle_worker_collects_meanwhile_and_their_shards_run_in_those_runners() {
    // The worker that prepares the revision lists it by starting its warm runner, whose
    // collection is the listing (no `--collect-only` process); a worker with nothing to do
    // meanwhile starts its own runner at once. Collection takes 3 s more here, so the
    // idle worker's runner has started well before the first shard is leased.
    const CONFTEST_NOTING_RUNNERS: &str = r#"import os
import time

import pytest


def pytest_configure(config):
    if config.option.collectonly:
        open(os.environ["GREENLIGHT_PIDS"] + ".collect-only", "a").close()
    else:
        with open(os.environ["GREENLIGHT_PIDS"] + ".started", "a", encoding="utf-8") as out:
            out.write(f"{os.getpid()} {time.time()}\n")


def pytest_collection_finish(session):
    time.sleep(3)


@pytest.fixture(autouse=True)
def note_the_process(request):
    with open(os.environ["GREENLIGHT_PIDS"], "a", encoding="utf-8") as pids:
        pids.write(f"{os.getpid()} {request.node.nodeid}\n")
    yield
"#;
    let (farm, scratch) =
        two_workers_listing(&[("tests/conftest.py", CONFTEST_NOTING_RUNNERS), ("tests/test_many.py", MANY_TESTS)]);
    let pids = scratch.path().join("pids");
    let build = farm.finished_build_of(&farm.repo.head().unwrap());
    assert_eq!(build.state, BuildState::Green, "{build:?}");
    assert_eq!(by_id(farm.tests(build.build_id).results).len(), 40, "every test has its result");
    assert!(
        !pids.with_extension("collect-only").exists(),
        "the revision was listed by a warm runner, not --collect-only"
    );

    let detail: BuildDetail = farm.get(&format!("/api/v1/builds/{}", build.build_id));
    let first_lease = detail.shards.iter().map(|shard| shard.started_at).fold(f64::INFINITY, f64::min);
    let started: Vec<(String, f64)> = std::fs::read_to_string(pids.with_extension("started"))
        .unwrap()
        .lines()
        .map(|line| {
            let (pid, at) = line.split_once(' ').unwrap();
            (pid.to_owned(), at.parse().unwrap())
        })
        .collect();
    assert_eq!(started.len(), 2, "one pytest process per worker, the listing's included: {started:?}");
    assert!(
        started.iter().all(|(_, at)| *at < first_lease),
        "both runners started before the first shard was leased at {first_lease}: {started:?}"
    );
    let ran: BTreeSet<String> = std::fs::read_to_string(&pids)
        .unwrap()
        .lines()
        .map(|line| line.split_once(' ').unwrap().0.to_owned())
        .collect();
    let runners: BTreeSet<String> = started.into_iter().map(|(pid, _)| pid).collect();
    assert!(ran.is_subset(&runners), "the tests ran in those runners: {ran:?} in {runners:?}");
}

#[test]
fn a_chain_leased_whole_does_not_run_the_tests_after_a_prerequisite_that_failed() {
    // Fitted sizing leases the lone worker a with the chain behind it (b waits on a, c on b)
    // in one shard. a fails on its run and on its retry: b and c never run (each would note
    // it) and are skipped naming the prerequisite that did not pass; x runs.
    let python = python();
    let scratch = tempfile::tempdir().unwrap();
    let pids = scratch.path().join("pids");
    let id = |name: &str| format!("tests/test_chain.py::test_{name}");
    let suite = SuiteFile {
        name: "chain".into(),
        shard_overhead_s: 0.0,
        tests: vec![
            test(&id("a"), &["chain"], &[], 0.2),
            test(&id("b"), &["chain"], &[&id("a")], 0.2),
            test(&id("c"), &["chain"], &[&id("b")], 0.2),
            test(&id("x"), &["chain"], &[], 0.2),
        ],
    };
    let options = FarmOptions {
        suite_toml: suite_toml(&python, &pids, "file = \"greenlight-suite.json\"\nrunner_args = [\"tests\"]"),
        extra_toml: "shard_sizing = \"fitted\"".to_owned(),
        ..FarmOptions::default()
    };
    const CHAIN_TESTS: &str = r#"import os


def note(name):
    with open(os.environ["GREENLIGHT_PIDS"] + ".ran", "a", encoding="utf-8") as ran:
        ran.write(name + "\n")


def test_a():
    note("a")
    assert False, "a breaks"


def test_b():
    note("b")


def test_c():
    note("c")


def test_x():
    note("x")
"#;
    let farm = Farm::start_with_repo(&suite, 1, options, |repo| {
        commit_project(repo.dir(), &[("tests/conftest.py", CONFTEST), ("tests/test_chain.py", CHAIN_TESTS)]);
    });
    let build = farm.finished_build_of(&farm.repo.head().unwrap());
    assert_eq!(build.state, BuildState::Red, "{build:?}");

    let detail: BuildDetail = farm.get(&format!("/api/v1/builds/{}?test_ids=true", build.build_id));
    assert!(
        detail.shards.iter().any(|shard| [id("a"), id("b"), id("c")].iter().all(|test| shard.test_ids.contains(test))),
        "the chain was leased whole: {:?}",
        detail.shards
    );
    let ran = std::fs::read_to_string(scratch.path().join("pids.ran")).unwrap();
    // (Culprit finding's probes run a again, on their own.)
    assert!(ran.lines().filter(|name| *name == "a").count() >= 2, "a ran and was retried: {ran:?}");
    assert!(!ran.lines().any(|name| name == "b" || name == "c"), "b and c never ran: {ran:?}");
    assert!(ran.lines().any(|name| name == "x"), "{ran:?}");

    let results = by_id(farm.tests(build.build_id).results);
    for (test, blocker) in [("b", "a"), ("c", "b")] {
        let attempts = &results[&id(test)];
        assert_eq!(attempts.len(), 1, "{test}: one result: {attempts:?}");
        assert_eq!(attempts[0].status, TestStatus::Skipped, "{test}: {attempts:?}");
        let reason = attempts[0].output.as_deref().unwrap_or_default();
        assert!(reason.contains(&format!("dependency {:?}", id(blocker))), "{test}: {reason:?}");
    }
    assert_eq!(results[&id("x")].last().unwrap().status, TestStatus::Passed);
}

/// A test that stalls the first time it runs (its machine hangs, say) and passes at once
/// when run again; it notes the process it stalled in.
const STALL_TESTS: &str = r#"import os
import time


def test_stalls_the_first_time():
    marker = os.environ["GREENLIGHT_PIDS"] + ".stalled"
    if not os.path.exists(marker):
        with open(marker, "w", encoding="utf-8") as noted:
            noted.write(f"{os.getpid()}\n")
        time.sleep(300)


def test_quick_one():
    time.sleep(0.2)


def test_quick_two():
    time.sleep(0.2)


def test_quick_three():
    time.sleep(0.2)
"#;

/// With `[scheduler] straggler_copies`, a worker with nothing left to do runs a backup copy
/// of a test that stalls on another worker, woken for it at the stalled lease's heartbeat
/// (not when its long poll ends); the copy's result counts, the stalled run is
/// stopped (its process killed, well before it would have ended) and the shards record
/// which was the copy and which run was stopped. `warm`: the pytest runner kept between
/// shards (the stalled test's whole process goes), or started for each shard.
fn a_stalled_test_is_copied_and_the_stalled_run_stopped(warm: bool) {
    let python = python();
    let scratch = tempfile::tempdir().unwrap();
    let pids = scratch.path().join("pids");
    let id = |name: &str| format!("tests/test_stall.py::test_{name}");
    let mut tests = vec![test(&id("stalls_the_first_time"), &["stall"], &[], 1.0)];
    tests.extend(["quick_one", "quick_two", "quick_three"].map(|name| test(&id(name), &["stall"], &[], 0.2)));
    let suite = SuiteFile { name: "stall".into(), shard_overhead_s: 0.0, tests };
    let suite_lines = format!("file = \"greenlight-suite.json\"\nrunner_args = [\"tests\"]\nwarm = {warm}");
    let options = FarmOptions {
        heartbeat_interval_s: 0.5,
        suite_toml: suite_toml(&python, &pids, &suite_lines),
        extra_toml: "straggler_copies = true".to_owned(),
        // Idle workers wait a minute for work: the master wakes them when a copy pays.
        worker_wait_s: 60,
        ..FarmOptions::default()
    };
    let started = std::time::Instant::now();
    let farm = Farm::start_with_repo(&suite, 2, options, |repo| {
        commit_project(repo.dir(), &[("tests/conftest.py", CONFTEST), ("tests/test_stall.py", STALL_TESTS)]);
    });
    let build = farm.finished_build_of(&farm.repo.head().unwrap());
    assert_eq!(build.state, BuildState::Green, "{build:?}");
    assert!(
        started.elapsed().as_secs() < 45,
        "the build waited neither for the stalled run (300 s) nor for an idle worker's long poll (60 s): {:?}",
        started.elapsed()
    );

    let results = by_id(farm.tests(build.build_id).results);
    assert_eq!(results.len(), 4, "every test has a result: {results:?}");
    for (test, attempts) in &results {
        assert_eq!(attempts.len(), 1, "{test}: one result, the stopped run is none: {attempts:?}");
        assert_eq!((attempts[0].status, attempts[0].attempt), (TestStatus::Passed, 1), "{test}: {attempts:?}");
    }
    let detail: BuildDetail = farm.get(&format!("/api/v1/builds/{}?test_ids=true", build.build_id));
    let stalled = id("stalls_the_first_time");
    let copy = detail
        .shards
        .iter()
        .find(|shard| shard.copy_of.is_some())
        .unwrap_or_else(|| panic!("a backup copy ran: {:?}", detail.shards));
    assert_eq!(copy.test_ids, std::slice::from_ref(&stalled), "{copy:?}");
    assert_eq!(results[&stalled][0].lease_id, Some(copy.lease_id), "the copy's result counts");
    let original = detail
        .shards
        .iter()
        .find(|shard| Some(shard.lease_id) == copy.copy_of)
        .unwrap_or_else(|| panic!("the copied shard is listed: {:?}", detail.shards));
    assert_ne!(original.worker, copy.worker, "the copy ran on the other worker");
    assert_eq!(
        original.stopped.as_deref(),
        Some(stalled.as_str()),
        "the stalled run is recorded as stopped: {original:?}"
    );
    assert_eq!(original.state, ShardState::Finished, "a stopped run is no infrastructure error: {original:?}");
    assert!(!original.test_ids.contains(&stalled), "{original:?}");

    // The stalled run's process is gone, long before its 300 s sleep would end.
    let noted = std::fs::read_to_string(scratch.path().join("pids.stalled")).unwrap();
    let pid: i32 = noted.trim().parse().unwrap();
    farm.wait_for("the stalled process to be gone", std::time::Duration::from_secs(20), |_| {
        // Gone, or dead and not yet reaped (a zombie: state `Z`).
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z'));
        (state.is_none() || state == Some(true)).then_some(())
    });
}

#[test]
fn a_stalled_test_in_a_warm_runner_is_copied_and_its_runner_stopped() {
    a_stalled_test_is_copied_and_the_stalled_run_stopped(true);
}

#[test]
fn a_stalled_test_in_a_cold_runner_is_copied_and_its_runner_stopped() {
    a_stalled_test_is_copied_and_the_stalled_run_stopped(false);
}

/// Two tests in a file.
const TEST_PAIR: &str = "def test_one():\n    pass\n\n\ndef test_two():\n    pass\n";

/// A project whose test directories are tagged by `greenlight.toml`; each directory's
/// conftest notes every pytest process that collects it in `GREENLIGHT_PIDS.collected`.
fn tagged_project() -> Vec<(&'static str, String)> {
    let note = |name: &str| {
        format!(
            "import os\n\nwith open(os.environ[\"GREENLIGHT_PIDS\"] + \".collected\", \"a\") as out:\n    out.write(\"{name} \" + str(os.getpid()) + \"\\n\")\n"
        )
    };
    const REPOSITORY_FILE: &str = r#"[tests.tags]
"tests/chat/" = ["chat"]
"tests/shop/" = ["shop"]
"tests/users/" = ["users"]
"tests/test_smoke.py" = ["always"]
[tests.depends_on]
"tests/chat/test_send.py::test_one" = ["tests/users/test_login.py::test_one"]
"#;
    vec![
        ("greenlight.toml", REPOSITORY_FILE.to_owned()),
        ("tests/chat/conftest.py", note("chat")),
        ("tests/chat/test_send.py", TEST_PAIR.to_owned()),
        ("tests/shop/conftest.py", note("shop")),
        ("tests/shop/test_cart.py", TEST_PAIR.to_owned()),
        ("tests/users/conftest.py", note("users")),
        ("tests/users/test_login.py", TEST_PAIR.to_owned()),
        ("tests/users/test_logout.py", TEST_PAIR.to_owned()),
        ("tests/test_smoke.py", "def test_smoke():\n    pass\n".to_owned()),
    ]
}

#[test]
fn a_tag_selected_build_collects_only_the_paths_its_tags_name_and_what_their_tests_depend_on() {
    // The first build (no tags) collects everything; the second commit says `Tags: chat`,
    // so its build collects the chat tests, the file of the test they depend on and what
    // always runs, and never imports the shop directory, on the lister or on any runner.
    // The runner's arguments name the tests' directory, or no path at all: bare pytest
    // collects the checkout, or its `testpaths`.
    let testpaths = ("pyproject.toml", "[tool.pytest.ini_options]\ntestpaths = [\"tests\"]\n");
    for (args, extra) in [
        ("runner_args = [\"tests\"]", None),
        ("runner_args = [\"-q\"]", None),
        ("runner_args = [\"-q\"]", Some(testpaths)),
    ] {
        tag_selected_build_collects_its_paths(args, extra);
    }
}

fn tag_selected_build_collects_its_paths(args: &str, extra: Option<(&str, &str)>) {
    let files = tagged_project();
    let mut files: Vec<(&str, &str)> = files.iter().map(|(path, text)| (*path, text.as_str())).collect();
    files.extend(extra);
    let (farm, scratch) = two_workers_listing_with(args, &files);
    let collected = scratch.path().join("pids.collected");
    let first = farm.finished_build_of(&farm.repo.head().unwrap());
    assert_eq!((first.state, first.counts.total), (BuildState::Green, 9), "{args}: {first:?}");
    assert!(first.collected.is_empty(), "a build of every test collects everything: {first:?}");
    let before = std::fs::read_to_string(&collected).unwrap();
    assert!(before.contains("shop "), "the first build collected the shop tests: {before}");
    std::fs::remove_file(&collected).unwrap();

    std::fs::write(farm.repo.dir().join("tests/chat/test_send.py"), format!("{TEST_PAIR}\n# changed\n")).unwrap();
    let git = Git::new(farm.repo.dir());
    git.run(&["commit", "--quiet", "-am", "Change the chat tests\n\nTags: chat"]).unwrap();
    let second = farm.finished_build_of(&farm.repo.head().unwrap());
    assert_eq!(second.state, BuildState::Green, "{second:?}");
    assert_eq!(second.tags, vec!["chat".to_owned()]);
    assert_eq!(
        second.collected,
        ["tests/chat", "tests/test_smoke.py", "tests/users/test_login.py"].map(str::to_owned),
        "the chat tests, what always runs and the file of the test they depend on"
    );
    let ran: BTreeSet<String> = by_id(farm.tests(second.build_id).results).into_keys().collect();
    let expected: BTreeSet<String> = [
        "tests/chat/test_send.py::test_one",
        "tests/chat/test_send.py::test_two",
        "tests/test_smoke.py::test_smoke",
        "tests/users/test_login.py::test_one",
    ]
    .map(str::to_owned)
    .into();
    assert_eq!(ran, expected, "{args}: the chat tests, the one they depend on, and what always runs");
    let after = std::fs::read_to_string(&collected).unwrap();
    assert!(!after.contains("shop "), "nothing collected the shop tests: {after}");
    assert!(after.contains("chat ") && after.contains("users "), "{after}");
}

#[test]
fn culprit_probes_of_a_tag_selected_build_collect_only_the_files_of_the_tests_they_rerun() {
    // Two `Tags: chat` changes land in one batch; the second breaks a chat test. The red
    // build collected the chat paths; its probes name the second change: the
    // confirmation at the red revision runs from the red build's listing (and the
    // runners that collected it), the probe of the first change collects only the failing
    // test's file and its dependency's. Nothing collects the shop tests.
    let files = tagged_project();
    let files: Vec<(&str, &str)> = files.iter().map(|(path, text)| (*path, text.as_str())).collect();
    let (farm, scratch) = two_workers_listing(&files);
    let collected = scratch.path().join("pids.collected");
    assert_eq!(farm.finished_build_of(&farm.repo.head().unwrap()).state, BuildState::Green);
    std::fs::remove_file(&collected).unwrap();

    let git = Git::new(farm.repo.dir());
    git.run(&["checkout", "--quiet", "-b", "batch"]).unwrap();
    let send = farm.repo.dir().join("tests/chat/test_send.py");
    std::fs::write(&send, format!("{TEST_PAIR}\n# harmless\n")).unwrap();
    git.run(&["commit", "--quiet", "-am", "Chat: a harmless change\n\nTags: chat"]).unwrap();
    let harmless = farm.repo.head().unwrap();
    std::fs::write(
        &send,
        TEST_PAIR.replace("def test_two():\n    pass", "def test_two():\n    assert False, \"broken\""),
    )
    .unwrap();
    git.run(&["commit", "--quiet", "-am", "Chat: the bad change\n\nTags: chat"]).unwrap();
    let bad = farm.repo.head().unwrap();
    git.run(&["checkout", "--quiet", "main"]).unwrap();
    git.run(&["merge", "--quiet", "--ff-only", "batch"]).unwrap();

    let red = farm.finished_build_of(&bad);
    assert_eq!((red.state, red.changes.len()), (BuildState::Red, 2), "{red:?}");
    assert_eq!(red.collected, ["tests/chat", "tests/test_smoke.py", "tests/users/test_login.py"].map(str::to_owned));
    let red = farm.wait_for("the culprit", std::time::Duration::from_secs(120), |farm| {
        farm.builds().into_iter().find(|build| build.build_id == red.build_id && build.culprit.is_some())
    });
    let culprit = farm.changes().into_iter().find(|change| Some(change.sequence) == red.culprit).unwrap();
    assert_eq!(culprit.revision, bad, "the bad change is named");
    let probes: Vec<_> = farm.builds().into_iter().filter(|build| build.probe_of == Some(red.build_id)).collect();
    let revisions: BTreeSet<&str> = probes.iter().map(|probe| probe.revision.as_str()).collect();
    assert_eq!(revisions, [bad.as_str(), harmless.as_str()].into(), "confirmed, then the change before: {probes:?}");
    for probe in &probes {
        if probe.revision == bad {
            assert_eq!(probe.collected, red.collected, "the red build's listing serves its confirmation: {probe:?}");
        } else {
            assert_eq!(
                probe.collected,
                ["tests/chat/test_send.py", "tests/users/test_login.py"].map(str::to_owned),
                "the failing test's file and its dependency's: {probe:?}"
            );
        }
    }
    let notes = std::fs::read_to_string(&collected).unwrap();
    assert!(!notes.contains("shop "), "nothing collected the shop tests: {notes}");
}
