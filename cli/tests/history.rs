//! `greenlight history import` against a real master: the durations of a JUnit report
//! seed the history, and the next build's plan uses them (its lower bound, which the API
//! exposes, is at least the imported duration of its longest test). Bad input (a
//! malformed file, a file that is not JUnit, a wrong token, an oversized body, an
//! unreachable master) is refused with a message naming it, and imports nothing.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Farm, FarmOptions, greenlight, test};
use greenlight_shared::api::TestHistory;
use greenlight_shared::suite::SuiteFile;

const ADMIN: &str = "history-admin";
/// The test the report says is slow; the suite declares 1 s.
const SLOW: &str = "slow/test_big.py::test_big";

/// A generic runner's report of the last CI run: the slow test took 500 s.
const REPORT: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites>
  <testsuite name="ci" tests="5">
    <testcase classname="slow/test_big.py" name="test_big" time="500.0"/>
    <testcase classname="fast/test_a.py" name="test_1" time="2.5"/>
    <testcase classname="fast/test_a.py" name="test_2" time="1e300"/>
    <testcase classname="fast/test_a.py" name="test_3" time="0.4"><failure message="boom">trace</failure></testcase>
    <testcase classname="gone/test_old.py" name="test_removed" time="3.0"/>
  </testsuite>
</testsuites>
"#;

/// Runs `greenlight history import` with `args`; (exit code, stdout, stderr).
fn import(args: &[&str], token: Option<&str>) -> (i32, String, String) {
    let mut command = Command::new(greenlight());
    command.args(["history", "import"]).args(args).env_remove("GREENLIGHT_ADMIN_TOKEN").env_remove("GREENLIGHT_MASTER");
    if let Some(token) = token {
        command.env("GREENLIGHT_ADMIN_TOKEN", token);
    }
    common::outcome(&mut command)
}

fn history_of(farm: &Farm, test_id: &str) -> Vec<f64> {
    let encoded = test_id.replace('/', "%2F").replace(':', "%3A");
    farm.get::<TestHistory>(&format!("/api/v1/tests?id={encoded}")).recent_durations_s
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn an_imported_report_seeds_the_history_the_next_plan_uses_and_bad_input_imports_nothing() {
    let mut tests = vec![test(SLOW, &["slow"], &[], 1.0)];
    tests.extend((1..=3).map(|n| test(&format!("fast/test_a.py::test_{n}"), &["fast"], &[], 1.0)));
    let suite = SuiteFile { name: "history".into(), shard_overhead_s: 0.0, tests };
    let options = FarmOptions {
        top_toml: format!("admin_token = \"{ADMIN}\""),
        max_body_bytes: 64 * 1024,
        ..FarmOptions::default()
    };
    // The first build the master sees runs only the fast tests: the slow one has no
    // history of the farm's own.
    let farm = Farm::start_with_repo(&suite, 2, options, |repo| {
        repo.commit("Touch the fast tests\n\nTags: fast", &[("notes.txt", "fast\n")]).unwrap();
    });
    let first = farm.finished_build_of(&farm.repo.head().unwrap());
    assert_eq!(first.counts.total, 3, "{first:?}");
    let first_bound = first.lower_bound_s.unwrap();
    assert!(first_bound < 50.0, "planned from the declared 1 s per test: {first_bound}");
    assert!(history_of(&farm, SLOW).is_empty());

    let scratch = tempfile::tempdir().unwrap();
    let report = write(scratch.path(), "ci-report.xml", REPORT);
    let master = ["--master", farm.url.as_str()];

    // Bad input first: each refused with a message naming it, nothing imported.
    let malformed =
        write(scratch.path(), "cut.xml", "<testsuites>\n<testsuite>\n<testcase name=\"a\" time=\"1\">\n</testsuite>");
    let (code, _, stderr) = import(&[&master[..], &[&report, &malformed]].concat(), Some(ADMIN));
    assert_ne!(code, 0);
    assert!(stderr.contains(&format!("{malformed}: malformed XML at line 4, column 1")), "{stderr}");
    let html = write(scratch.path(), "page.xml", "<html><body>not a report</body></html>");
    let (code, _, stderr) = import(&[&master[..], &[&html]].concat(), Some(ADMIN));
    assert_ne!(code, 0);
    assert!(stderr.contains(&format!("{html}: not a JUnit report: its root element is <html>")), "{stderr}");
    let missing = scratch.path().join("missing.xml").display().to_string();
    let (code, _, stderr) = import(&[&master[..], &[&missing]].concat(), Some(ADMIN));
    assert_ne!(code, 0);
    assert!(stderr.contains(&format!("cannot read {missing}")), "{stderr}");
    let (code, _, stderr) = import(&[&master[..], &[&report]].concat(), Some("not-the-token"));
    assert_ne!(code, 0);
    assert!(stderr.contains("refused the import (403 Forbidden): wrong_token"), "{stderr}");
    assert!(stderr.contains("nothing was imported"), "{stderr}");
    let (code, _, stderr) = import(&[&master[..], &[&report]].concat(), None);
    assert_ne!(code, 0);
    assert!(stderr.contains("(401 Unauthorized): missing_token"), "{stderr}");
    let many_cases: String = (0..2000)
        .map(|n| format!("<testcase classname=\"fast/test_a.py\" name=\"test_{n}\" time=\"1.0\"/>\n"))
        .collect();
    let huge = write(scratch.path(), "huge.xml", &format!("<testsuite>\n{many_cases}</testsuite>\n"));
    let (code, _, stderr) = import(&[&master[..], &[&huge]].concat(), Some(ADMIN));
    assert_ne!(code, 0);
    assert!(stderr.contains("(413 Payload Too Large)") && stderr.contains("import fewer files at once"), "{stderr}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let (code, _, stderr) = import(&["--master", &nowhere, &report], Some(ADMIN));
    assert_ne!(code, 0);
    assert!(
        stderr.contains(&format!("cannot connect to {nowhere}/api/v1/admin/history/import: connection refused")),
        "{stderr}"
    );
    assert!(history_of(&farm, SLOW).is_empty(), "no bad import recorded anything");
    assert!(history_of(&farm, "fast/test_a.py::test_1").len() == 1, "only the first build's run");

    // The report: two passed cases imported, a failure not recorded, an unknown test
    // named, an absurd time refused with the reason.
    let (code, stdout, stderr) = import(&[&master[..], &[&report]].concat(), Some(ADMIN));
    assert_eq!(code, 0, "{stdout}{stderr}");
    for line in [
        "5 test cases in 1 files",
        "imported: 2 durations",
        "not passed (not recorded): 1",
        "unmatched: 1",
        "gone/test_old.py::test_removed",
        "rejected: 1",
        "fast/test_a.py::test_2",
        "time \"1e300\" is more than max_test_duration_s",
    ] {
        assert!(stdout.contains(line), "{line:?} in:\n{stdout}");
    }
    assert_eq!(history_of(&farm, SLOW), vec![500.0]);
    assert_eq!(*history_of(&farm, "fast/test_a.py::test_1").last().unwrap(), 2.5);
    assert_eq!(history_of(&farm, "fast/test_a.py::test_2").len(), 1, "the refused time was not added");

    // The next build (untagged: every test) is planned from the imported 500 s.
    let revision = farm.repo.commit("Touch everything", &[("notes.txt", "all\n")]).unwrap();
    let next = farm.finished_build_of(&revision);
    assert_eq!(next.counts.total, 4, "{next:?}");
    let next_bound = next.lower_bound_s.unwrap();
    assert!(next_bound >= 500.0, "the plan's lower bound holds the imported 500 s test: {next_bound}");
}
