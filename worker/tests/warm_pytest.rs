//! The warm pytest runner against real pytest: one process runs several shards, collecting
//! once and keeping module fixtures between them; records stream as tests end; a test that
//! kills its runner is named; output on stdout (under `-s`) cannot corrupt the records.
//!
//! It needs the virtualenv `.ci/run` makes at `target/pyenv` (or `GREENLIGHT_PYENV`) with
//! pytest in it. Without it the tests fail saying so; they never skip.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use greenlight_shared::api::TestStatus;
use greenlight_shared::runner::{ListError, Runner, ShardPaths, list_suite};
use greenlight_worker::junit::parse_cases;
use greenlight_worker::warm::{WarmError, WarmRecord, WarmRunner};

/// Far above any honest run: only a hung runner reaches it.
const HANG_GUARD: Duration = Duration::from_secs(120);

fn python() -> String {
    let venv = std::env::var_os("GREENLIGHT_PYENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv"));
    let python = venv.join("bin/python");
    let probe = Command::new(&python).args(["-c", "import pytest"]).output();
    match probe {
        Ok(output) if output.status.success() => python.display().to_string(),
        _ => panic!(
            "no pytest in {}: python3 -m venv target/pyenv && target/pyenv/bin/pip install pytest (.ci/run does)",
            venv.display()
        ),
    }
}

const CONFTEST: &str = r#"
import os
import pytest

def _log(line):
    with open(os.environ["WARM_LOG"], "a") as log:
        log.write(line + "\n")

def pytest_collection_finish(session):
    _log("collected")

@pytest.fixture(autouse=True)
def _pid(request):
    _log(f"test {os.getpid()} {request.node.nodeid}")
"#;

const ALPHA: &str = r#"
import pytest
from conftest import _log

@pytest.fixture(scope="module")
def shared():
    _log("alpha setup")
    yield
    _log("alpha teardown")

@pytest.fixture
def broken():
    raise RuntimeError("fixture broke")

@pytest.fixture
def bad_teardown():
    yield
    raise RuntimeError("teardown broke")

def test_pass(shared):
    pass

def test_fail(shared):
    assert 1 == 2, "one is not two"

def test_skip():
    pytest.skip("no network here")

@pytest.mark.xfail(reason="known bug")
def test_xfail():
    assert False

@pytest.mark.xfail(reason="fixed now", strict=True)
def test_xpass_strict():
    pass

@pytest.mark.xfail(reason="maybe fixed")
def test_xpass():
    pass

def test_setup_error(broken):
    pass

def test_teardown_error(bad_teardown):
    pass

def test_prints(shared):
    print("hello from stdout")
    assert False, "printed then failed"
"#;

const BETA: &str = r#"
import pytest
from conftest import _log

@pytest.fixture(scope="module")
def beta():
    _log("beta setup")
    yield
    _log("beta teardown")

def test_beta_pass(beta):
    pass

def test_beta_prints(beta):
    print('{"kind": "done"}')
    print("not a record")
"#;

const STREAM: &str = r#"
import os
import time

def test_first():
    pass

def test_waits_for_the_gate():
    # The driver opens the gate when it has received test_first's record.
    for _ in range(6000):
        if os.path.exists(os.environ["WARM_GATE"]):
            return
        time.sleep(0.01)
    raise AssertionError("the gate never opened: test_first's record was not streamed")
"#;

const CRASH: &str = r#"
import os
import signal

def test_before():
    pass

def test_exits():
    os._exit(3)

def test_killed():
    os.kill(os.getpid(), signal.SIGKILL)

def test_after():
    pass
"#;

const GAMMA: &str = r#"
import pytest

@pytest.fixture(scope="module")
def leaky():
    yield
    raise RuntimeError("module teardown broke")

def test_uses_leaky(leaky):
    pass
"#;

/// A test file that skips itself at import: no test of it is collected, and pytest
/// reports the file itself as skipped.
const NEEDS_MISSING: &str = r#"import pytest

pytest.importorskip("no_such_module")


def test_never_collected():
    pass
"#;

struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    fn new() -> Project {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in [
            ("conftest.py", CONFTEST),
            ("test_alpha.py", ALPHA),
            ("test_beta.py", BETA),
            ("test_stream.py", STREAM),
            ("test_crash.py", CRASH),
            ("test_gamma.py", GAMMA),
            ("test_needs_missing.py", NEEDS_MISSING),
        ] {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        Project { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("WARM_LOG".into(), self.path().join("log.txt").display().to_string()),
            ("WARM_GATE".into(), self.path().join("gate").display().to_string()),
        ]
    }

    fn log(&self) -> Vec<String> {
        std::fs::read_to_string(self.path().join("log.txt")).unwrap_or_default().lines().map(str::to_owned).collect()
    }

    async fn start(&self, args: &[&str]) -> WarmRunner {
        let mut argv: Vec<String> =
            ["-p", "no:cacheprovider", "--rootdir=."].iter().map(|word| (*word).to_owned()).collect();
        argv.extend(args.iter().map(|word| (*word).to_owned()));
        tokio::time::timeout(HANG_GUARD, WarmRunner::start(&python(), &argv, self.path(), &self.env()))
            .await
            .expect("the runner hung while collecting")
            .unwrap_or_else(|error| panic!("the runner did not start: {error}"))
    }
}

fn ids(tests: &[&str]) -> Vec<String> {
    tests.iter().map(|test| (*test).to_owned()).collect()
}

async fn run(runner: &mut WarmRunner, tests: &[&str]) -> (Vec<WarmRecord>, Result<(), WarmError>) {
    let mut records = Vec::new();
    let result = tokio::time::timeout(HANG_GUARD, runner.run(&ids(tests), None, |record| records.push(record)))
        .await
        .expect("the shard hung");
    (records, result.map(|end| assert!(end.teardown_errors.is_empty(), "{:?}", end.teardown_errors)))
}

#[tokio::test]
async fn one_runner_runs_three_shards_collecting_once_with_module_fixtures_up_for_each_shard() {
    let project = Project::new();
    let mut runner = project.start(&["test_alpha.py", "test_beta.py"]).await;
    assert_eq!(runner.collected().len(), 11);
    assert!(runner.collection_errors().is_empty());
    let shards: [&[&str]; 3] = [
        &["test_beta.py::test_beta_pass", "test_beta.py::test_beta_prints", "test_alpha.py::test_pass"],
        &[
            "test_alpha.py::test_fail",
            "test_alpha.py::test_skip",
            "test_alpha.py::test_xfail",
            "test_alpha.py::test_xpass_strict",
        ],
        &[
            "test_alpha.py::test_xpass",
            "test_alpha.py::test_setup_error",
            "test_alpha.py::test_teardown_error",
            "test_alpha.py::test_prints",
        ],
    ];
    let mut records = BTreeMap::new();
    for shard in shards {
        let (got, result) = run(&mut runner, shard).await;
        result.unwrap();
        let names: Vec<&str> = got.iter().map(|record| record.test.as_str()).collect();
        assert_eq!(names, shard, "one record per test, in order, before the shard returns");
        records.extend(got.into_iter().map(|record| (record.test.clone(), record)));
    }
    let pid = runner.pid();

    let status = |test: &str| records[&format!("test_alpha.py::{test}")].status;
    let output = |test: &str| records[&format!("test_alpha.py::{test}")].output.clone().unwrap_or_default();
    assert_eq!(records["test_beta.py::test_beta_pass"].status, TestStatus::Passed);
    assert_eq!(records["test_beta.py::test_beta_prints"].status, TestStatus::Passed);
    assert_eq!(records["test_beta.py::test_beta_prints"].output, None);
    assert_eq!(status("test_pass"), TestStatus::Passed);
    assert_eq!(status("test_fail"), TestStatus::Failed);
    assert!(output("test_fail").contains("one is not two"), "{}", output("test_fail"));
    assert_eq!(status("test_skip"), TestStatus::Skipped);
    assert_eq!(output("test_skip"), "[skipped] no network here");
    assert_eq!(status("test_xfail"), TestStatus::Skipped);
    assert_eq!(output("test_xfail"), "[xfail] known bug");
    assert_eq!(status("test_xpass_strict"), TestStatus::Failed);
    assert!(output("test_xpass_strict").contains("XPASS(strict)"), "{}", output("test_xpass_strict"));
    assert_eq!(status("test_xpass"), TestStatus::Passed);
    assert_eq!(status("test_setup_error"), TestStatus::Error);
    assert!(output("test_setup_error").contains("fixture broke"), "{}", output("test_setup_error"));
    assert_eq!(status("test_teardown_error"), TestStatus::Error);
    assert!(output("test_teardown_error").contains("teardown broke"), "{}", output("test_teardown_error"));
    assert_eq!(status("test_prints"), TestStatus::Failed);
    assert!(output("test_prints").contains("hello from stdout"), "{}", output("test_prints"));
    assert!(output("test_prints").contains("printed then failed"), "{}", output("test_prints"));
    assert!(records.values().all(|record| record.duration_s >= 0.0));

    let before_shutdown = project.log();
    let teardown_errors = runner.shutdown(HANG_GUARD).await.unwrap();
    assert!(teardown_errors.is_empty(), "{teardown_errors:?}");
    let log = project.log();
    assert_eq!(&log[..before_shutdown.len()], before_shutdown.as_slice());
    let fixtures: Vec<&str> = log
        .iter()
        .map(String::as_str)
        .filter(|line| *line == "collected" || line.contains(" setup") || line.contains(" teardown"))
        .collect();
    // Collected once; beta torn down as the first shard moved on to alpha; alpha set up
    // once per shard for its tests there and torn down as each shard ended (a module's
    // teardown failure is then its shard's last test's error, as in a plain run).
    assert_eq!(
        fixtures,
        [
            "collected",
            "beta setup",
            "beta teardown",
            "alpha setup",
            "alpha teardown",
            "alpha setup",
            "alpha teardown",
            "alpha setup",
            "alpha teardown"
        ],
        "{log:?}"
    );
    assert_eq!(&log[before_shutdown.len()..], [] as [String; 0], "nothing of alpha was left for the shutdown: {log:?}");
    let pids: Vec<&str> =
        log.iter().filter_map(|line| line.strip_prefix("test ")).filter_map(|rest| rest.split(' ').next()).collect();
    assert_eq!(pids.len(), 11, "{log:?}");
    assert!(pids.iter().all(|test_pid| *test_pid == pid.to_string()), "every test ran in {pid}: {log:?}");
}

#[tokio::test]
async fn a_record_arrives_while_a_later_test_of_its_shard_still_runs() {
    let project = Project::new();
    let mut runner = project.start(&["test_stream.py"]).await;
    let gate = project.path().join("gate");
    let mut records = Vec::new();
    let shard = ids(&["test_stream.py::test_first", "test_stream.py::test_waits_for_the_gate"]);
    let result = tokio::time::timeout(
        HANG_GUARD,
        runner.run(&shard, None, |record| {
            if records.is_empty() {
                std::fs::write(&gate, "open").unwrap();
            }
            records.push(record);
        }),
    )
    .await
    .expect("the shard hung");
    result.unwrap();
    let statuses: Vec<(&str, TestStatus, Option<&str>)> =
        records.iter().map(|record| (record.test.as_str(), record.status, record.output.as_deref())).collect();
    assert_eq!(
        statuses,
        [
            ("test_stream.py::test_first", TestStatus::Passed, None),
            ("test_stream.py::test_waits_for_the_gate", TestStatus::Passed, None),
        ]
    );
    runner.shutdown(HANG_GUARD).await.unwrap();
}

#[tokio::test]
async fn a_test_that_kills_its_runner_is_named_and_a_new_runner_runs_the_rest() {
    let project = Project::new();
    for (crashing, status, code) in
        [("test_crash.py::test_exits", "exit status: 3", Some(3)), ("test_crash.py::test_killed", "signal: 9", None)]
    {
        let mut runner = project.start(&["test_crash.py"]).await;
        let (records, result) =
            run(&mut runner, &["test_crash.py::test_before", crashing, "test_crash.py::test_after"]).await;
        let names: Vec<&str> = records.iter().map(|record| record.test.as_str()).collect();
        assert_eq!(names, ["test_crash.py::test_before"]);
        assert_eq!(records[0].status, TestStatus::Passed);
        match result {
            Err(WarmError::Died { test, status: died_with, exit_code, .. }) => {
                assert_eq!(test.as_deref(), Some(crashing));
                assert!(died_with.contains(status), "{died_with}");
                assert_eq!(exit_code, code, "an exit by itself has a code; a signal has none");
            }
            other => panic!("expected the runner's death, got {other:?}"),
        }
        let (records, result) = run(&mut runner, &["test_crash.py::test_after"]).await;
        assert!(records.is_empty());
        assert!(matches!(result, Err(WarmError::Dead)), "{result:?}");

        let mut fresh = project.start(&["test_crash.py"]).await;
        let (records, result) = run(&mut fresh, &["test_crash.py::test_after"]).await;
        result.unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!((records[0].test.as_str(), records[0].status), ("test_crash.py::test_after", TestStatus::Passed));
        fresh.shutdown(HANG_GUARD).await.unwrap();
    }
}

#[tokio::test]
async fn stdout_under_no_capture_cannot_corrupt_records_and_unknown_ids_are_errors() {
    let project = Project::new();
    let mut runner = project.start(&["-s", "test_beta.py"]).await;
    let (records, result) = run(
        &mut runner,
        &["test_beta.py::test_beta_prints", "test_beta.py::test_nowhere", "test_beta.py::test_beta_pass"],
    )
    .await;
    result.unwrap();
    let statuses: Vec<(&str, TestStatus)> =
        records.iter().map(|record| (record.test.as_str(), record.status)).collect();
    assert_eq!(
        statuses,
        [
            ("test_beta.py::test_beta_prints", TestStatus::Passed),
            ("test_beta.py::test_nowhere", TestStatus::Error),
            ("test_beta.py::test_beta_pass", TestStatus::Passed),
        ]
    );
    assert!(records[1].output.as_deref().is_some_and(|output| output.contains("not collected")), "{records:?}");
    runner.shutdown(HANG_GUARD).await.unwrap();
}

#[tokio::test]
async fn a_module_teardown_failing_is_the_error_of_the_last_test_before_it_as_in_a_plain_run() {
    let project = Project::new();
    let mut runner = project.start(&["test_gamma.py", "test_beta.py"]).await;
    // The shard goes on with beta: gamma's module is torn down after its test.
    let mut records = Vec::new();
    let gamma = ids(&["test_gamma.py::test_uses_leaky"]);
    let end = runner.run(&gamma, Some("test_beta.py::test_beta_pass"), |record| records.push(record)).await.unwrap();
    assert!(end.teardown_errors.is_empty(), "{end:?}");
    assert_eq!(records[0].status, TestStatus::Error, "{records:?}");
    assert!(records[0].output.as_deref().is_some_and(|output| output.contains("module teardown broke")), "{records:?}");
    let (records, result) = run(&mut runner, &["test_beta.py::test_beta_pass"]).await;
    result.unwrap();
    assert_eq!(records[0].status, TestStatus::Passed);
    // The same at a shard's end.
    let (records, result) = run(&mut runner, &["test_gamma.py::test_uses_leaky"]).await;
    result.unwrap();
    assert_eq!(records[0].status, TestStatus::Error, "{records:?}");
    runner.shutdown(HANG_GUARD).await.unwrap();
}

#[tokio::test]
async fn a_shard_that_goes_on_in_the_same_module_keeps_it_set_up() {
    let project = Project::new();
    let mut runner = project.start(&["test_alpha.py"]).await;
    let mut records = Vec::new();
    let first = ids(&["test_alpha.py::test_pass"]);
    runner.run(&first, Some("test_alpha.py::test_prints"), |record| records.push(record)).await.unwrap();
    let (_, result) = run(&mut runner, &["test_alpha.py::test_prints"]).await;
    result.unwrap();
    let setups = project.log().iter().filter(|line| *line == "alpha setup").count();
    assert_eq!(setups, 1, "alpha set up once for both tests: {:?}", project.log());
    runner.shutdown(HANG_GUARD).await.unwrap();
}

#[tokio::test]
async fn a_runner_that_cannot_collect_says_why() {
    let project = Project::new();
    let argv = ids(&["-p", "no:cacheprovider", "--rootdir=.", "test_missing.py"]);
    let started = tokio::time::timeout(HANG_GUARD, WarmRunner::start(&python(), &argv, project.path(), &project.env()))
        .await
        .expect("the runner hung while collecting");
    match started {
        Err(WarmError::Collection { status, output }) => {
            assert!(status.contains("exit status: 4"), "{status}");
            assert!(output.contains("test_missing.py"), "{output}");
        }
        other => panic!("expected a collection error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_file_skipped_at_collection_is_listed_and_reported_skipped_warm_and_cold_alike() {
    let project = Project::new();
    let files = ["test_beta.py", "test_needs_missing.py"];
    let adapter = Runner::Pytest { python: python(), args: ids(&files) };
    // The listing names the file as a test; its never-collected test is not there.
    let suite = list_suite(&adapter, project.path(), &project.env()).unwrap();
    let listed: Vec<&str> = suite.tests.iter().map(|test| test.id.as_str()).collect();
    assert_eq!(listed, ["test_beta.py::test_beta_pass", "test_beta.py::test_beta_prints", "test_needs_missing.py"]);
    // It costs nothing, and is known to: not a new test to run first in every build.
    let declared: Vec<Option<f64>> = suite.tests.iter().map(|test| test.duration_s).collect();
    assert_eq!(declared, [None, None, Some(0.0)]);
    let reason =
        "test_needs_missing.py', 3, \"Skipped: could not import 'no_such_module': No module named 'no_such_module'\")";

    // Warm: the runner's collection saw the skip; fed the file's id, it reports it.
    let mut runner = project.start(&files).await;
    assert_eq!(runner.collected().len(), 2, "{:?}", runner.collected());
    let (records, result) = run(&mut runner, &["test_needs_missing.py", "test_beta.py::test_beta_pass"]).await;
    result.unwrap();
    let statuses: Vec<(&str, TestStatus)> =
        records.iter().map(|record| (record.test.as_str(), record.status)).collect();
    assert_eq!(
        statuses,
        [("test_needs_missing.py", TestStatus::Skipped), ("test_beta.py::test_beta_pass", TestStatus::Passed)]
    );
    let warm = records[0].output.clone().unwrap_or_default();
    assert!(warm.starts_with("[skipped] collection skipped\n('/"), "{warm}");
    assert!(warm.ends_with(reason), "{warm}");
    runner.shutdown(HANG_GUARD).await.unwrap();

    // Cold: the adapter's shard argv, the JUnit pytest writes, read back under the id's name.
    let tests = ids(&["test_needs_missing.py"]);
    let ids_file = project.path().join("ids.txt");
    let junit = project.path().join("junit.xml");
    std::fs::write(&ids_file, "test_needs_missing.py\n").unwrap();
    let paths = ShardPaths { ids_file: &ids_file, junit: &junit, shard_dir: project.path() };
    let argv = adapter.shard_argv(&[], &tests, &paths, "r");
    let status = Command::new(&argv[0])
        .args(&argv[1..])
        .current_dir(project.path())
        .envs(project.env())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    // pytest collected no test at all (exit 5), yet reported the file.
    assert_eq!(status.code(), Some(5));
    let cases = parse_cases(&std::fs::read(&junit).unwrap());
    assert_eq!(cases.len(), 1, "{cases:?}");
    let key = adapter.junit_key("test_needs_missing.py").unwrap();
    assert_eq!((cases[0].classname.clone().unwrap_or_default(), cases[0].name.clone()), key);
    assert_eq!(cases[0].status, TestStatus::Skipped);
    assert_eq!(cases[0].output.as_deref().map(str::trim_end), Some(warm.as_str()), "cold and warm say the same");
}

#[test]
fn a_file_that_fails_to_import_fails_the_listing_naming_it() {
    let project = Project::new();
    std::fs::write(project.path().join("test_broken.py"), "import no_such_module\n\ndef test_x():\n    pass\n")
        .unwrap();
    let adapter = Runner::Pytest { python: python(), args: ids(&["test_beta.py", "test_broken.py"]) };
    match list_suite(&adapter, project.path(), &project.env()) {
        Err(ListError::Failed { status, output, .. }) => {
            assert!(status.contains("exit status: 2"), "{status}");
            assert!(output.contains("ERROR collecting test_broken.py"), "{output}");
            assert!(output.contains("No module named 'no_such_module'"), "{output}");
            assert!(!output.contains("greenlight: test files skipped"), "{output}");
        }
        other => panic!("a collection error is no skip: {other:?}"),
    }
}
