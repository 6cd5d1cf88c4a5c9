//! The JUnit reader over reports real tools wrote (`fixtures/junit/`, made by its
//! `regenerate.sh`): pytest in both JUnit families, cargo-nextest with retries, a flaky
//! test and a 200 kB output, gotestsum, and files cut short or corrupted from them.

use std::collections::BTreeMap;
use std::path::Path;

use greenlight_shared::api::TestStatus;
use greenlight_shared::runner::pytest_junit_key;
use greenlight_worker::junit::{JunitCase, MAX_OUTPUT_BYTES, parse_cases};

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/junit").join(name);
    std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

fn by_name(cases: &[JunitCase]) -> BTreeMap<String, (TestStatus, Option<String>)> {
    cases.iter().map(|case| (case.name.clone(), (case.status, case.output.clone()))).collect()
}

#[test]
fn pytest_reports_of_both_families_map_back_to_every_collected_node_id() {
    let ids: Vec<String> = String::from_utf8(fixture("pytest-ids.txt")).unwrap().lines().map(str::to_owned).collect();
    assert_eq!(ids.len(), 12);
    for file in ["pytest-xunit1.xml", "pytest-xunit2.xml"] {
        let cases = parse_cases(&fixture(file));
        // Every collected id plus the module that skipped itself at import.
        assert_eq!(cases.len(), ids.len() + 1, "{file}");
        let keys: BTreeMap<(String, String), &JunitCase> =
            cases.iter().map(|case| ((case.classname.clone().unwrap_or_default(), case.name.clone()), case)).collect();
        let status = |id: &str| keys[&pytest_junit_key(id)].status;
        for id in &ids {
            assert!(keys.contains_key(&pytest_junit_key(id)), "{file}: {id} not found");
        }
        assert_eq!(status("pkg/test_real.py::test_ids[$(id); `id` | & > 'q']"), TestStatus::Passed);
        assert_eq!(status(r"pkg/test_real.py::test_ids[\xfc \xf1 \u6f22]"), TestStatus::Passed);
        assert_eq!(status("pkg/test_real.py::TestNested::test_in_class[2]"), TestStatus::Passed);
        assert_eq!(status("pkg/test_real.py::test_fails"), TestStatus::Failed);
        assert_eq!(status("pkg/test_real.py::test_setup_error"), TestStatus::Error);
        assert_eq!(status("pkg/test_real.py::test_skipped"), TestStatus::Skipped);
        let xfail = keys[&pytest_junit_key("pkg/test_real.py::test_xfail")];
        assert_eq!((xfail.status, xfail.output.as_deref()), (TestStatus::Skipped, Some("[xfail] known bug\n")));
        let module = keys[&pytest_junit_key("pkg/test_skipped_module.py")];
        assert_eq!(module.status, TestStatus::Skipped);
        // pytest's reason is only in the element's text: (file, line, "Skipped: reason").
        let reason = module.output.as_deref().unwrap_or_default();
        assert!(reason.starts_with("[skipped] collection skipped\n('"), "{file}: {reason}");
        assert!(
            reason.ends_with("test_skipped_module.py', 3, 'Skipped: this module skips itself at import')\n"),
            "{reason}"
        );
        let failure = keys[&pytest_junit_key("pkg/test_real.py::test_fails")].output.clone().unwrap();
        assert!(failure.starts_with("[failure] AssertionError: arithmetic"), "{failure}");
        assert!(failure.contains("E       assert (1 + 1) == 3"), "{failure}");
    }
}

#[test]
fn nextest_report_with_retries_flaky_test_and_huge_output() {
    let cases = by_name(&parse_cases(&fixture("nextest.xml")));
    assert_eq!(cases.len(), 4, "the ignored test is not in nextest's report: {cases:?}");
    assert_eq!(cases["tests::passes"].0, TestStatus::Passed);
    // Failed once, passed on the retry: flaky, not failed.
    assert_eq!(cases["tests::flaky"].0, TestStatus::Passed);
    let (status, output) = &cases["tests::fails"];
    assert_eq!(*status, TestStatus::Failed);
    let output = output.as_deref().unwrap();
    assert!(output.contains("arithmetic") && output.contains("[rerunFailure]"), "{output}");
    let (status, output) = &cases["tests::huge_output"];
    assert_eq!(*status, TestStatus::Failed);
    let output = output.as_deref().unwrap();
    assert!(output.len() <= MAX_OUTPUT_BYTES + 100, "{}", output.len());
    assert!(output.contains("[greenlight: output truncated, ") && output.ends_with("more bytes not kept]"));
    assert!(output.starts_with("[failure] thread 'tests::huge_output'"), "{}", &output[..200]);
}

#[test]
fn gotestsum_report_with_subtests_and_skips() {
    let cases = by_name(&parse_cases(&fixture("gotestsum.xml")));
    let statuses: BTreeMap<&str, TestStatus> =
        cases.iter().map(|(name, (status, _))| (name.as_str(), *status)).collect();
    assert_eq!(
        statuses,
        BTreeMap::from([
            ("TestFails", TestStatus::Failed),
            ("TestPasses", TestStatus::Passed),
            ("TestSkipped", TestStatus::Skipped),
            ("TestTable", TestStatus::Failed),
            ("TestTable/a_b", TestStatus::Passed),
            ("TestTable/ok", TestStatus::Passed),
            ("TestTable/x/y", TestStatus::Failed),
        ])
    );
    assert!(cases["TestFails"].1.as_deref().unwrap().contains("arithmetic: 2"));
    assert!(cases["TestSkipped"].1.as_deref().unwrap().contains("not today"));
}

#[test]
fn files_cut_short_keep_their_complete_cases() {
    for (cut, whole) in [("truncated-pytest.xml", "pytest-xunit2.xml"), ("truncated-nextest.xml", "nextest.xml")] {
        let cut_cases = parse_cases(&fixture(cut));
        let whole_cases = parse_cases(&fixture(whole));
        assert!(!cut_cases.is_empty() && cut_cases.len() < whole_cases.len(), "{cut}: {}", cut_cases.len());
        assert_eq!(cut_cases[..], whole_cases[..cut_cases.len()], "{cut}: complete cases read as in the whole file");
    }
}

#[test]
fn invalid_utf8_empty_and_garbage_files() {
    let cases = by_name(&parse_cases(&fixture("invalid-utf8.xml")));
    assert_eq!(cases.len(), 7);
    assert_eq!(cases["TestPasses\u{fffd}\u{fffd}"].0, TestStatus::Passed);
    assert!(cases["TestFails"].1.as_deref().unwrap().contains("to \u{fffd}(stdout"));
    assert!(parse_cases(&fixture("empty.xml")).is_empty());
    assert!(parse_cases(&fixture("not-xml.xml")).is_empty());
}
