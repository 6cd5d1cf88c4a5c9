//! A real, third-party pytest suite through the farm: networkx 3.6.1 from PyPI (its
//! ~6,200 tests ship in its wheel and run offline), plus a small module of our own with
//! the node ids real suites have (brackets, spaces, `::`, unicode, shell metacharacters),
//! a failure, an expected failure, a skip and a module that skips itself at import.
//!
//! The test runs pytest itself once, directly, in a clone of the same repository, and
//! compares test by test: the farm (three workers, the `pytest` runner adapter) must
//! report every collected node id exactly once, with the outcome the direct run saw, and
//! every test file pytest skipped at collection (networkx has dozens: `importorskip` of
//! numpy, scipy, ...) as a skipped test of its own; and the farm's merged JUnit must hold
//! every case of the direct run's JUnit, with its outcome, those files included.
//!
//! It needs the virtualenv `.ci/run` makes at `target/pyenv` (or `GREENLIGHT_PYENV`):
//! `python3 -m venv target/pyenv && target/pyenv/bin/pip install pytest networkx==3.6.1`.
//! Without it the test fails saying so; it never skips.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Farm, FarmOptions};
use greenlight_shared::api::{BuildKind, BuildState, TestStatus};
use greenlight_shared::git::Git;
use greenlight_shared::runner::pytest_junit_key;
use greenlight_shared::suite::SuiteFile;

/// Our own module: every kind of node id and outcome networkx does not have.
const EDGE_TESTS: &str = r#"import pytest

NASTY = ["a b", "x::y", "[br]ack[ets]", "$(touch /tmp/pwned); `id` | & > 'q' \"d\"", "ü ñ 漢", "tab\there", "back\\slash"]


@pytest.mark.parametrize("value", NASTY, ids=NASTY)
def test_ids(value):
    assert value


def test_fails():
    assert 1 + 1 == 3, "arithmetic"


@pytest.mark.xfail(reason="known bug")
def test_expected_failure():
    assert False


@pytest.mark.xfail(reason="fixed meanwhile", strict=False)
def test_unexpectedly_passes():
    pass


@pytest.mark.skip(reason="not today")
def test_skipped():
    pass


class TestNested:
    @pytest.mark.parametrize("n", [1, 2])
    def test_in_class(self, n):
        print("output of", n)
        assert n
"#;

const SKIPPED_MODULE: &str = r#"import pytest

pytest.skip("this module skips itself at import", allow_module_level=True)


def test_never_collected():
    pass
"#;

/// A pytest plugin recording each node id's outcome as pytest itself sees it (not from
/// JUnit), so the comparison does not trust the code under test.
const OUTCOME_PLUGIN: &str = r#"import json, os

_outcomes = {}


def pytest_runtest_logreport(report):
    previous = _outcomes.get(report.nodeid)
    if report.when in ("setup", "teardown") and report.failed:
        outcome = "error"
    elif hasattr(report, "wasxfail"):
        outcome = "xfail" if report.skipped else "xpass"
    elif report.when == "call" or report.skipped:
        outcome = report.outcome
    else:
        return
    if previous != "error":
        _outcomes[report.nodeid] = outcome


def pytest_sessionfinish(session):
    with open(os.environ["GREENLIGHT_OUTCOMES"], "w", encoding="utf-8") as out:
        json.dump(_outcomes, out, ensure_ascii=False)
"#;

fn python() -> PathBuf {
    let venv = std::env::var_os("GREENLIGHT_PYENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv"));
    let python = venv.join("bin/python");
    let probe = Command::new(&python).args(["-c", "import pytest, networkx; print(networkx.__version__)"]).output();
    match probe {
        Ok(output) if output.status.success() && String::from_utf8_lossy(&output.stdout).trim() == "3.6.1" => python,
        _ => panic!(
            "this test needs a virtualenv with pytest and networkx 3.6.1 at {} (or GREENLIGHT_PYENV); make it with:\n  \
             python3 -m venv target/pyenv && target/pyenv/bin/pip install --quiet pytest networkx==3.6.1\n(.ci/run does)",
            venv.display()
        ),
    }
}

fn site_packages(python: &Path) -> PathBuf {
    let output = Command::new(python)
        .args(["-c", "import networkx, os; print(os.path.dirname(os.path.dirname(networkx.__file__)))"])
        .output()
        .unwrap();
    PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "__pycache__" {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The farm's outcome words, as the direct run's plugin writes them.
fn farm_outcome(status: TestStatus, output: Option<&str>) -> &'static str {
    match status {
        TestStatus::Passed => "passed",
        TestStatus::Failed => "failed",
        TestStatus::Error => "error",
        TestStatus::Skipped if output.is_some_and(|output| output.starts_with("[xfail]")) => "xfail",
        TestStatus::Skipped => "skipped",
    }
}

#[test]
fn networkx_through_the_farm_reports_what_a_direct_pytest_run_reports() {
    let python = python();
    let sources = site_packages(&python);
    let empty = SuiteFile { name: "unused".into(), shard_overhead_s: 0.0, tests: Vec::new() };
    let suite_toml = format!(
        "runner = \"pytest\"\npython = {python:?}\nrunner_args = [\"networkx\", \"edge_tests\"]\nenv = {{ PYTHONDONTWRITEBYTECODE = \"1\" }}",
        python = python.to_string_lossy()
    );
    let options = FarmOptions { suite_toml, ..FarmOptions::default() };
    let farm = Farm::start_with_repo(&empty, 3, options, |repo| {
        copy_tree(&sources.join("networkx"), &repo.dir().join("networkx"));
        std::fs::create_dir_all(repo.dir().join("edge_tests")).unwrap();
        std::fs::write(repo.dir().join("edge_tests/test_ünï code.py"), EDGE_TESTS).unwrap();
        std::fs::write(repo.dir().join("edge_tests/test_skipped_module.py"), SKIPPED_MODULE).unwrap();
        std::fs::write(
            repo.dir().join("greenlight.toml"),
            "[tests]\nshard_overhead_s = 5.0\n[tests.tags]\n\"networkx/algorithms/\" = [\"algorithms\"]\n\"edge_tests/\" = [\"edge\"]\n",
        )
        .unwrap();
        let git = Git::new(repo.dir());
        git.run(&["add", "-A"]).unwrap();
        git.run(&["commit", "--quiet", "-m", "networkx 3.6.1 with its tests"]).unwrap();
    });
    let revision = farm.repo.head().unwrap();

    // Meanwhile, the direct run: one pytest process in a clone of the same revision.
    let direct_dir = farm.dir().join("direct");
    let status = Command::new("git").args(["clone", "--quiet"]).arg(farm.repo.dir()).arg(&direct_dir).status().unwrap();
    assert!(status.success());
    let plugin_dir = farm.dir().join("plugin");
    std::fs::create_dir_all(&plugin_dir).unwrap();
    std::fs::write(plugin_dir.join("greenlight_outcomes.py"), OUTCOME_PLUGIN).unwrap();
    let collect = Command::new(&python)
        .args([
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--rootdir=.",
            "--collect-only",
            "-q",
            "networkx",
            "edge_tests",
        ])
        .current_dir(&direct_dir)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    assert!(collect.status.success(), "{}", String::from_utf8_lossy(&collect.stdout));
    let collected: Vec<String> = String::from_utf8(collect.stdout)
        .unwrap()
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .map(str::to_owned)
        .collect();
    let direct_started = Instant::now();
    let outcomes_file = farm.dir().join("direct-outcomes.json");
    let direct_junit = farm.dir().join("direct-junit.xml");
    let direct = Command::new(&python)
        .args(["-m", "pytest", "-p", "no:cacheprovider", "--rootdir=.", "-p", "greenlight_outcomes", "-q"])
        .arg(format!("--junitxml={}", direct_junit.display()))
        .args(["networkx", "edge_tests"])
        .current_dir(&direct_dir)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONPATH", &plugin_dir)
        .env("GREENLIGHT_OUTCOMES", &outcomes_file)
        .output()
        .unwrap();
    let direct_s = direct_started.elapsed().as_secs_f64();
    // Exit 1: some tests failed (ours does, on purpose).
    assert_eq!(direct.status.code(), Some(1), "{}", String::from_utf8_lossy(&direct.stdout));
    let expected: BTreeMap<String, String> =
        serde_json::from_slice(&std::fs::read(&outcomes_file).unwrap()).expect("the plugin's outcomes");
    assert!(expected.len() > 6000, "networkx collected only {} tests", expected.len());
    assert_eq!(
        expected.keys().cloned().collect::<BTreeSet<_>>(),
        collected.iter().cloned().collect(),
        "ran = collected"
    );

    let build = farm.wait_for("the networkx build to finish", Duration::from_secs(900), |farm| {
        farm.builds()
            .into_iter()
            .find(|build| build.revision == revision && build.kind == BuildKind::Regular && build.state.is_finished())
    });
    assert_eq!(build.state, BuildState::Red, "our failing test makes it red: {build:?}");
    // A failure is retried once on another worker before it counts: the final results are
    // what a direct run reports.
    let all_results = farm.tests(build.build_id).results;
    assert!(all_results.iter().any(|result| result.retried), "the failing test was retried");
    let results: Vec<_> = all_results.into_iter().filter(|result| !result.retried).collect();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for result in &results {
        *seen.entry(result.test_id.clone()).or_default() += 1;
    }
    assert!(seen.values().all(|&count| count == 1), "every node id reported exactly once");
    // The direct run's JUnit: every case, and the files skipped at collection among them.
    let direct_cases = greenlight_worker::junit::parse_cases(&std::fs::read(&direct_junit).unwrap());
    let junit_key =
        |case: &greenlight_worker::junit::JunitCase| (case.classname.clone().unwrap_or_default(), case.name.clone());
    let skipped_files: BTreeSet<(String, String)> = direct_cases
        .iter()
        .filter(|case| {
            case.output.as_deref().is_some_and(|output| output.starts_with("[skipped] collection skipped\n"))
        })
        .map(junit_key)
        .collect();
    assert!(skipped_files.len() > 30, "networkx skips dozens of files at import: {skipped_files:?}");
    assert!(skipped_files.contains(&(String::new(), "edge_tests.test_skipped_module".into())), "{skipped_files:?}");
    let collected_set: BTreeSet<String> = collected.iter().cloned().collect();
    let (ran_collected, beyond): (BTreeSet<String>, BTreeSet<String>) =
        seen.keys().cloned().partition(|id| collected_set.contains(id));
    assert_eq!(ran_collected, collected_set, "the farm ran every collected node id");
    assert_eq!(
        beyond.iter().map(|id| pytest_junit_key(id)).collect::<BTreeSet<_>>(),
        skipped_files,
        "besides them, exactly the files pytest skipped at collection: {beyond:?}"
    );
    let mut differences = Vec::new();
    for result in results.iter().filter(|result| beyond.contains(&result.test_id)) {
        // A file skipped at collection: skipped, with pytest's reason.
        let output = result.output.as_deref().unwrap_or_default();
        if result.status != TestStatus::Skipped || !output.starts_with("[skipped] collection skipped\n('") {
            differences
                .push(format!("{}: farm {:?} {output:?}, direct skipped at collection", result.test_id, result.status));
        }
    }
    for result in results.iter().filter(|result| !beyond.contains(&result.test_id)) {
        let got = farm_outcome(result.status, result.output.as_deref());
        // JUnit has no word for a non-strict XPASS: pytest writes it as passed.
        let want = match expected[&result.test_id].as_str() {
            "xpass" => "passed",
            other => other,
        };
        if got != want {
            differences.push(format!("{}: farm {got}, direct {want}", result.test_id));
        }
    }
    assert!(differences.is_empty(), "{} outcomes differ:\n{}", differences.len(), differences.join("\n"));
    let count = |word: &str| expected.values().filter(|outcome| outcome.as_str() == word).count();
    assert_eq!(count("failed"), 1);
    assert!(count("xfail") >= 2 && count("skipped") >= 1 && count("passed") > 5000);

    // The merged JUnit file parses back to the same outcomes, under pytest's own names.
    let (content_type, xml) = farm.get_text(&format!("/api/v1/builds/{}/junit.xml", build.build_id));
    assert!(content_type.starts_with("application/xml"), "{content_type}");
    let cases = greenlight_worker::junit::parse_cases(xml.as_bytes());
    assert_eq!(cases.len(), results.len());
    // Case by case, the direct run's JUnit: the same names, the same outcomes; a file
    // skipped at collection with the same message and reason (its path is the checkout's).
    let merged: BTreeMap<(String, String), &greenlight_worker::junit::JunitCase> =
        cases.iter().map(|case| (junit_key(case), case)).collect();
    assert_eq!(merged.len(), direct_cases.len(), "as many cases as the direct run's JUnit");
    let reason = |case: &greenlight_worker::junit::JunitCase| {
        let output = case.output.clone().unwrap_or_default();
        // `[skipped] collection skipped\n('/checkout/path.py', 8, "Skipped: ...")`: all but the path.
        output.split_once(".py', ").map(|(_, reason)| reason.trim_end().to_owned()).unwrap_or(output)
    };
    let mut junit_differences = Vec::new();
    for direct_case in &direct_cases {
        let key = junit_key(direct_case);
        let Some(case) = merged.get(&key) else {
            junit_differences.push(format!("{key:?}: not in the farm's JUnit"));
            continue;
        };
        let (want, got) = (
            farm_outcome(direct_case.status, direct_case.output.as_deref()),
            farm_outcome(case.status, case.output.as_deref()),
        );
        if want != got {
            junit_differences.push(format!("{key:?}: farm {got}, direct {want}"));
        } else if skipped_files.contains(&key) && reason(case) != reason(direct_case) {
            junit_differences.push(format!("{key:?}: farm {:?}, direct {:?}", case.output, direct_case.output));
        }
    }
    assert!(
        junit_differences.is_empty(),
        "{} JUnit cases differ:\n{}",
        junit_differences.len(),
        junit_differences.join("\n")
    );
    let by_name: BTreeMap<(String, String), &greenlight_worker::junit::JunitCase> =
        cases.iter().map(|case| ((case.classname.clone().unwrap_or_default(), case.name.clone()), case)).collect();
    for result in &results {
        let case = by_name[&pytest_junit_key(&result.test_id)];
        assert_eq!(
            farm_outcome(case.status, case.output.as_deref()),
            farm_outcome(result.status, result.output.as_deref()),
            "{}",
            result.test_id
        );
    }

    let detail = farm.build(build.build_id);
    let workers: BTreeSet<&str> = detail.shards.iter().map(|shard| shard.worker.as_str()).collect();
    assert!(workers.len() >= 2, "the suite was spread over workers: {workers:?}");
    assert!(detail.shards.iter().all(|shard| shard.reproduce.contains("-m pytest")), "{:?}", detail.shards[0]);
    // Both ran at once on a shared machine: the figures are informative, not a benchmark.
    eprintln!(
        "networkx: {} tests; direct pytest {direct_s:.1} s; farm build (3 workers, no history) queued to finished {:.1} s, \
         makespan {:.1} s, {} shards",
        expected.len(),
        build.finished_at.unwrap_or_default() - build.created_at,
        build.makespan_s.unwrap_or_default(),
        detail.shards.len()
    );
}

/// A pytest plugin shipped in the tested repository: a fixture reading an ini value that
/// only `-o` sets. Without `-p greenlight_probe` the fixture does not exist.
const PROBE_PLUGIN: &str = r#"import pytest


def pytest_addoption(parser):
    parser.addini("greenlight_flavour", "what the tests expect", default="unset")


@pytest.fixture
def flavour(pytestconfig):
    return pytestconfig.getini("greenlight_flavour")
"#;

const PROBE_TESTS: &str = r#"import pytest


@pytest.mark.parametrize("n", range(6))
def test_runs_with_the_users_options(flavour, n):
    assert flavour == "sharded"
"#;

#[test]
fn shards_run_with_the_runner_args_the_suite_was_listed_with() {
    let python = python();
    let empty = SuiteFile { name: "unused".into(), shard_overhead_s: 0.0, tests: Vec::new() };
    let suite_toml = format!(
        "runner = \"pytest\"\npython = {python:?}\n\
         runner_args = [\"-v\", \"-p\", \"greenlight_probe\", \"-o\", \"greenlight_flavour=sharded\", \"probe_tests\"]\n\
         env = {{ PYTHONDONTWRITEBYTECODE = \"1\" }}",
        python = python.to_string_lossy()
    );
    // `-v` too: it turns the listing's `--collect-only -q` into pytest's tree of
    // collectors, which must not be read as test ids.
    let options = FarmOptions { suite_toml, ..FarmOptions::default() };
    let farm = Farm::start_with_repo(&empty, 2, options, |repo| {
        std::fs::write(repo.dir().join("greenlight_probe.py"), PROBE_PLUGIN).unwrap();
        std::fs::create_dir_all(repo.dir().join("probe_tests")).unwrap();
        std::fs::write(repo.dir().join("probe_tests/test_probe.py"), PROBE_TESTS).unwrap();
        let git = Git::new(repo.dir());
        git.run(&["add", "-A"]).unwrap();
        git.run(&["commit", "--quiet", "-m", "tests that need a plugin and an ini value"]).unwrap();
    });
    let revision = farm.repo.head().unwrap();
    let build = farm.finished_build_of(&revision);
    let results = farm.tests(build.build_id).results;
    let not_passed = results.iter().find(|result| result.status != TestStatus::Passed);
    assert!(not_passed.is_none(), "a shard ran without the options: {not_passed:?}");
    assert_eq!(results.len(), 6, "{results:?}");
    assert_eq!(build.state, BuildState::Green, "{build:?}");
    // The reproduce line runs as the shard did: the options, not the listing's path.
    for shard in farm.build(build.build_id).shards {
        assert!(shard.reproduce.contains(" -p greenlight_probe -o greenlight_flavour=sharded "), "{}", shard.reproduce);
        assert!(!shard.reproduce.contains(" probe_tests "), "{}", shard.reproduce);
    }
}
