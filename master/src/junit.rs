//! A whole build as one JUnit XML file (`GET /api/v1/builds/{id}/junit.xml`), the shape
//! Jenkins, GitLab and CircleCI display: `<testsuites>` holding one `<testsuite>` with a
//! `<testcase>` per test, its last attempt, and `<failure>`, `<error>` or `<skipped>`.
//!
//! Test ids are named the way their runner names them (pytest's dotted classname and
//! name, nextest's binary id and test name), so the file reads like the runner's own.
//! Text is escaped, never put in CDATA, and characters XML 1.0 forbids are replaced, so
//! any output a test printed yields a well-formed file.

use std::collections::BTreeMap;
use std::fmt::Write;

use greenlight_shared::api::{BuildSummary, TestResultView, TestStatus};
use greenlight_shared::runner::Runner;

/// `text` escaped for XML text or a double-quoted attribute, with characters XML 1.0
/// does not allow (most control characters) replaced by U+FFFD.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(character),
            '\u{0}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}' => out.push('\u{fffd}'),
            other => out.push(other),
        }
    }
    out
}

/// (`classname`, `name`) of a test id: the runner's own naming when it has one, else the
/// part before the last `::` and the rest.
fn names(runner: &Runner, test_id: &str) -> (String, String) {
    if let Some(key) = runner.junit_key(test_id) {
        return key;
    }
    match test_id.rsplit_once("::") {
        Some((classname, name)) => (classname.to_owned(), name.to_owned()),
        None => (String::new(), test_id.to_owned()),
    }
}

/// A skip's `<skipped>` from its stored output (`[label] reason`, then more lines), the
/// way pytest writes it: an expected failure as `type="pytest.xfail"` with its reason; a
/// test file skipped at collection as `message="collection skipped"` (no type) with
/// pytest's `(file, line, reason)` as the text; any other skip with its reason.
fn skipped_element(output: &str) -> String {
    let (first, rest) = output.split_once('\n').unwrap_or((output, ""));
    let (kind, message) = match (first.strip_prefix("[xfail] "), first.strip_prefix("[skipped] ")) {
        (Some(reason), _) => (Some("pytest.xfail"), reason),
        (None, Some("collection skipped")) => (None, "collection skipped"),
        (None, Some(reason)) => (Some("skipped"), reason),
        (None, None) => (Some("skipped"), first),
    };
    let kind = kind.map(|kind| format!(" type=\"{kind}\"")).unwrap_or_default();
    let text = rest.trim_end();
    if text.is_empty() {
        format!("<skipped{kind} message=\"{}\"/>", escape(message))
    } else {
        format!("<skipped{kind} message=\"{}\">{}</skipped>", escape(message), escape(text))
    }
}

/// The build's JUnit report: each test's last attempt; a flaky test's failed attempts
/// appear inside its passing `<testcase>` as `<flakyFailure>`, as Maven Surefire writes.
pub fn render(build: &BuildSummary, runner: &Runner, results: &[TestResultView]) -> String {
    let mut last: BTreeMap<&str, &TestResultView> = BTreeMap::new();
    let mut retried: BTreeMap<&str, Vec<&TestResultView>> = BTreeMap::new();
    for result in results {
        if result.retried {
            retried.entry(result.test_id.as_str()).or_default().push(result);
        }
        let entry = last.entry(result.test_id.as_str()).or_insert(result);
        if result.attempt > entry.attempt {
            *entry = result;
        }
    }
    let count = |status: TestStatus| last.values().filter(|result| result.status == status).count();
    let time: f64 = last.values().map(|result| result.duration_s).sum();
    let suite_name = format!("greenlight build {} ({})", build.build_id, build.revision);
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let counts = format!(
        "tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{time:.3}\"",
        last.len(),
        count(TestStatus::Failed),
        count(TestStatus::Error),
        count(TestStatus::Skipped),
    );
    let _ = writeln!(xml, "<testsuites name=\"{}\" {counts}>", escape(&suite_name));
    let _ = writeln!(xml, "  <testsuite name=\"{}\" {counts}>", escape(&suite_name));
    for result in last.values() {
        let (classname, name) = names(runner, &result.test_id);
        let _ = write!(
            xml,
            "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
            escape(&classname),
            escape(&name),
            result.duration_s
        );
        if let Some(worker) = &result.worker {
            let _ = write!(xml, " greenlight-worker=\"{}\"", escape(worker));
        }
        let output = result.output.as_deref().unwrap_or("");
        let message = escape(output.lines().next().unwrap_or(""));
        let flaky_failures = retried.get(result.test_id.as_str()).filter(|_| result.flaky);
        match result.status {
            TestStatus::Passed if flaky_failures.is_some() => {
                xml.push_str(">\n");
                for failure in flaky_failures.into_iter().flatten() {
                    let output = failure.output.as_deref().unwrap_or("");
                    let _ = writeln!(
                        xml,
                        "      <flakyFailure message=\"{}\"><stackTrace>{}</stackTrace></flakyFailure>",
                        escape(output.lines().next().unwrap_or("")),
                        escape(output)
                    );
                }
                xml.push_str("    </testcase>\n");
            }
            TestStatus::Passed => xml.push_str("/>\n"),
            TestStatus::Failed | TestStatus::Error => {
                let tag = if result.status == TestStatus::Failed { "failure" } else { "error" };
                let _ =
                    writeln!(xml, ">\n      <{tag} message=\"{message}\">{}</{tag}>\n    </testcase>", escape(output));
            }
            TestStatus::Skipped => {
                let _ = writeln!(xml, ">\n      {}\n    </testcase>", skipped_element(output));
            }
        }
    }
    xml.push_str("  </testsuite>\n</testsuites>\n");
    xml
}

#[cfg(test)]
mod tests {
    use super::*;
    use greenlight_shared::api::BuildState;
    use quick_xml::Reader;
    use quick_xml::events::Event;

    fn result(test_id: &str, attempt: u32, status: TestStatus, output: Option<&str>) -> TestResultView {
        TestResultView {
            test_id: test_id.to_owned(),
            attempt,
            status,
            duration_s: 0.5,
            output: output.map(str::to_owned),
            worker: Some("w<1>".into()),
            retried: false,
            flaky: false,
            quarantined: false,
            lease_id: None,
        }
    }

    fn build() -> BuildSummary {
        BuildSummary {
            state: BuildState::Red,
            full_run: true,
            ..BuildSummary::queued(7, "main".into(), "abc".into(), vec![], 0.0)
        }
    }

    /// Every (classname, name, outcome, text) in a strictly parsed document.
    fn parse_strictly(xml: &str) -> Vec<(String, String, String, String)> {
        let mut reader = Reader::from_str(xml);
        reader.config_mut().check_end_names = true;
        let mut cases = Vec::new();
        let mut inside_outcome = false;
        loop {
            match reader.read_event().expect("well-formed XML") {
                Event::Eof => break,
                Event::End(_) => inside_outcome = false,
                Event::Start(element) | Event::Empty(element) => {
                    let attribute = |key: &[u8]| {
                        element
                            .attributes()
                            .flatten()
                            .find(|attribute| attribute.key.as_ref() == key)
                            .map(|attribute| attribute.unescape_value().unwrap().into_owned())
                            .unwrap_or_default()
                    };
                    match element.name().as_ref() {
                        b"testcase" => {
                            cases.push((attribute(b"classname"), attribute(b"name"), "passed".into(), String::new()))
                        }
                        tag @ (b"failure" | b"error" | b"skipped") => {
                            let case = cases.last_mut().unwrap();
                            case.2 = String::from_utf8_lossy(tag).into_owned();
                            case.3 = attribute(b"message");
                            inside_outcome = true;
                        }
                        _ => {}
                    }
                }
                Event::Text(text) if inside_outcome => {
                    if let Some(case) = cases.last_mut() {
                        case.3.push_str(&text.unescape().unwrap());
                    }
                }
                _ => {}
            }
        }
        cases
            .into_iter()
            .map(|(classname, name, outcome, text)| (classname, name, outcome, text.trim().to_owned()))
            .collect()
    }

    #[test]
    fn a_build_renders_as_well_formed_junit_that_parses_back() {
        let nasty = "]]> <![CDATA[ & \"quoted\" 'single' \u{1b}[31mred\u{0} é 漢";
        let results = vec![
            result("pkg/test_a.py::TestK::test_x[a b]", 1, TestStatus::Passed, None),
            result("pkg/test_a.py::test_fail", 1, TestStatus::Error, Some("lost")),
            result("pkg/test_a.py::test_fail", 2, TestStatus::Failed, Some(nasty)),
            result("pkg/test_a.py::test_xfail", 1, TestStatus::Skipped, Some("[xfail] known bug")),
            result("pkg/test_skip.py::test_s", 1, TestStatus::Skipped, Some("[skipped] no network\n")),
            result(
                "pkg/test_np.py",
                1,
                TestStatus::Skipped,
                Some("[skipped] collection skipped\n('/w/pkg/test_np.py', 8, \"Skipped: no <numpy>\")\n"),
            ),
        ];
        let runner = Runner::Pytest { python: "python3".into(), args: vec![] };
        let xml = render(&build(), &runner, &results);
        assert!(xml.contains("tests=\"5\" failures=\"1\" errors=\"0\" skipped=\"3\""), "{xml}");
        // As pytest writes a file that skipped itself at import.
        assert!(
            xml.contains(
                "<testcase classname=\"\" name=\"pkg.test_np\" time=\"0.500\" greenlight-worker=\"w&lt;1&gt;\">\n      \
                 <skipped message=\"collection skipped\">(&apos;/w/pkg/test_np.py&apos;, 8, &quot;Skipped: no &lt;numpy&gt;&quot;)</skipped>"
            ),
            "{xml}"
        );
        let cases = parse_strictly(&xml);
        let nasty_escaped = nasty.replace(['\u{1b}', '\u{0}'], "\u{fffd}");
        assert_eq!(
            cases,
            vec![
                ("pkg.test_a.TestK".into(), "test_x[a b]".into(), "passed".into(), String::new()),
                ("pkg.test_a".into(), "test_fail".into(), "failure".into(), format!("{nasty_escaped}{nasty_escaped}")),
                ("pkg.test_a".into(), "test_xfail".into(), "skipped".into(), "known bug".into()),
                (
                    String::new(),
                    "pkg.test_np".into(),
                    "skipped".into(),
                    "collection skipped('/w/pkg/test_np.py', 8, \"Skipped: no <numpy>\")".into()
                ),
                ("pkg.test_skip".into(), "test_s".into(), "skipped".into(), "no network".into()),
            ]
        );
    }

    #[test]
    fn a_flaky_test_passes_with_its_failed_attempt_as_a_flaky_failure() {
        let mut failed = result("pkg/test_b.py::test_flake", 1, TestStatus::Failed, Some("boom <once>"));
        failed.retried = true;
        let mut passed = result("pkg/test_b.py::test_flake", 2, TestStatus::Passed, None);
        passed.flaky = true;
        let runner = Runner::Pytest { python: "python3".into(), args: vec![] };
        let xml = render(&build(), &runner, &[failed, passed]);
        assert!(xml.contains("tests=\"1\" failures=\"0\" errors=\"0\""), "{xml}");
        assert!(xml.contains("<flakyFailure message=\"boom &lt;once&gt;\">"), "{xml}");
        let cases = parse_strictly(&xml);
        assert_eq!(cases, vec![("pkg.test_b".into(), "test_flake".into(), "passed".into(), String::new())]);
    }
}
