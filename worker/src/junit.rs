//! Reading JUnit XML as real runners write it, with a real XML parser (quick-xml), and
//! tolerant of what they get wrong: nested `testsuites`, missing `classname` or `file`,
//! `skipped` / `error` / `failure` / `flakyFailure`, `system-out` and `system-err`, huge
//! outputs (truncated with a note), invalid UTF-8 (replaced), and a file that stops
//! half-written. Only complete `<testcase>` elements are returned, so the same function
//! reads a report that is still being written: call it again later for more.

use greenlight_shared::api::TestStatus;
use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};

/// The `message` of pytest's `<skipped>` for a test file that skipped itself at import.
pub const PYTEST_COLLECTION_SKIPPED: &str = "collection skipped";

/// The most bytes of output kept per test.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// One complete `<testcase>`.
#[derive(Debug, Clone, PartialEq)]
pub struct JunitCase {
    /// `name`.
    pub name: String,
    /// `classname`, if present.
    pub classname: Option<String>,
    /// `file`, if present.
    pub file: Option<String>,
    /// `time` in seconds (0 when absent or not a number).
    pub time_s: f64,
    /// The outcome.
    pub status: TestStatus,
    /// Failure message and text, then system-out and system-err (failures and errors);
    /// for a skip, `[skipped] reason` or `[xfail] reason` (pytest's expected failures),
    /// and for a file pytest skipped at collection `[skipped] collection skipped` and the
    /// element's text on the next line.
    pub output: Option<String>,
}

/// Appends `text` to `output` without letting it grow past [`MAX_OUTPUT_BYTES`].
fn append_output(output: &mut String, truncated: &mut usize, text: &str) {
    if text.is_empty() {
        return;
    }
    let room = MAX_OUTPUT_BYTES.saturating_sub(output.len());
    if text.len() <= room {
        output.push_str(text);
        return;
    }
    let mut cut = room;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    output.push_str(&text[..cut]);
    *truncated += text.len() - cut;
}

fn attribute(element: &BytesStart<'_>, key: &[u8]) -> Option<String> {
    element.attributes().flatten().find(|attribute| attribute.key.as_ref() == key).map(|attribute| {
        attribute
            .unescape_value()
            .map(|value| value.into_owned())
            .unwrap_or_else(|_| String::from_utf8_lossy(&attribute.value).into_owned())
    })
}

#[derive(Default)]
struct CaseBuilder {
    /// The `time` attribute as written.
    time_text: Option<String>,
    name: String,
    classname: Option<String>,
    file: Option<String>,
    time_s: f64,
    status: Option<TestStatus>,
    output: String,
    truncated: usize,
    /// The child element whose text is being collected, if any.
    collecting: Option<Vec<u8>>,
}

impl CaseBuilder {
    fn start(element: &BytesStart<'_>) -> CaseBuilder {
        let time_text = attribute(element, b"time");
        let time_s = time_text
            .as_deref()
            .and_then(|time| time.trim().parse::<f64>().ok())
            .filter(|time| time.is_finite() && *time >= 0.0)
            .unwrap_or(0.0);
        CaseBuilder {
            name: attribute(element, b"name").unwrap_or_default(),
            classname: attribute(element, b"classname").filter(|value| !value.is_empty()),
            file: attribute(element, b"file").filter(|value| !value.is_empty()),
            time_s,
            time_text,
            ..CaseBuilder::default()
        }
    }

    fn child(&mut self, element: &BytesStart<'_>, empty: bool) {
        let tag = element.local_name().as_ref().to_vec();
        let status = match tag.as_slice() {
            b"failure" => Some(TestStatus::Failed),
            b"error" => Some(TestStatus::Error),
            b"skipped" => Some(TestStatus::Skipped),
            _ => None,
        };
        if let Some(status) = status {
            // A failure or error outranks a skip; the first failure wins.
            if !matches!(self.status, Some(TestStatus::Failed | TestStatus::Error)) {
                self.status = Some(status);
            }
        }
        if tag.as_slice() == b"skipped" {
            // pytest marks an expected failure as a skip of type `pytest.xfail`.
            let label = match attribute(element, b"type").as_deref() {
                Some("pytest.xfail") => "xfail",
                _ => "skipped",
            };
            let message = attribute(element, b"message").unwrap_or_default();
            if label == "xfail" || !message.is_empty() {
                append_output(&mut self.output, &mut self.truncated, &format!("[{label}] {message}\n"));
            }
            // A test file pytest skipped while collecting it gives its reason only in the
            // text: `('/abs/test_x.py', 3, 'Skipped: no numpy')`.
            if !empty && message == PYTEST_COLLECTION_SKIPPED {
                self.collecting = Some(tag.clone());
            }
        }
        if matches!(
            tag.as_slice(),
            b"failure" | b"error" | b"flakyFailure" | b"flakyError" | b"rerunFailure" | b"rerunError"
        ) && let Some(message) = attribute(element, b"message")
        {
            let label = String::from_utf8_lossy(&tag).into_owned();
            append_output(&mut self.output, &mut self.truncated, &format!("[{label}] {message}\n"));
        }
        if !empty
            && matches!(
                tag.as_slice(),
                b"failure" | b"error" | b"system-out" | b"system-err" | b"flakyFailure" | b"flakyError"
            )
        {
            self.collecting = Some(tag);
        }
    }

    fn text(&mut self, text: &str) {
        if self.collecting.is_some() {
            append_output(&mut self.output, &mut self.truncated, text);
        }
    }

    fn finish(mut self) -> JunitCase {
        let status = self.status.unwrap_or(TestStatus::Passed);
        if self.truncated > 0 {
            self.output.push_str(&format!("\n[greenlight: output truncated, {} more bytes not kept]", self.truncated));
        }
        let keep_output = (status.is_failure() || status == TestStatus::Skipped) && !self.output.trim().is_empty();
        JunitCase {
            name: self.name,
            classname: self.classname,
            file: self.file,
            time_s: self.time_s,
            status,
            output: keep_output.then_some(self.output),
        }
    }
}

/// Every complete `<testcase>` in `bytes`, in document order. Parsing stops quietly at
/// the first malformed or missing part (a runner that crashed mid-write).
pub fn parse_cases(bytes: &[u8]) -> Vec<JunitCase> {
    let mut reader = Reader::from_reader(bytes);
    reader.config_mut().check_end_names = false;
    let mut cases = Vec::new();
    let mut current: Option<CaseBuilder> = None;
    let mut buffer = Vec::new();
    // A parse error ends the document: what came before it stands.
    while let Ok(event) = reader.read_event_into(&mut buffer) {
        match event {
            Event::Eof => break,
            Event::Start(element) if element.local_name().as_ref() == b"testcase" => {
                current = Some(CaseBuilder::start(&element));
            }
            Event::Empty(element) if element.local_name().as_ref() == b"testcase" => {
                cases.push(CaseBuilder::start(&element).finish());
            }
            Event::Start(element) => {
                if let Some(case) = current.as_mut() {
                    case.child(&element, false);
                }
            }
            Event::Empty(element) => {
                if let Some(case) = current.as_mut() {
                    case.child(&element, true);
                }
            }
            Event::Text(text) => {
                if let Some(case) = current.as_mut() {
                    let decoded = text
                        .unescape()
                        .map(|text| text.into_owned())
                        .unwrap_or_else(|_| String::from_utf8_lossy(&text).into_owned());
                    case.text(&decoded);
                }
            }
            Event::CData(data) => {
                if let Some(case) = current.as_mut() {
                    case.text(&String::from_utf8_lossy(&data));
                }
            }
            Event::End(element) => {
                let name = element.local_name();
                if name.as_ref() == b"testcase" {
                    if let Some(case) = current.take() {
                        cases.push(case.finish());
                    }
                } else if let Some(case) = current.as_mut()
                    && case.collecting.as_deref() == Some(name.as_ref())
                {
                    case.collecting = None;
                    if !case.output.ends_with('\n') && !case.output.is_empty() {
                        case.output.push('\n');
                    }
                }
            }
            _ => {}
        }
        buffer.clear();
    }
    cases
}

/// The ways a case may name a test id, most specific first.
pub fn candidate_ids(case: &JunitCase) -> Vec<String> {
    greenlight_shared::runner::junit_candidates(case.classname.as_deref(), &case.name, case.file.as_deref())
}

/// One `<testcase>` of a whole report ([`read_report`]), with its `time` as written.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportCase {
    /// The case, read as [`parse_cases`] reads it.
    pub case: JunitCase,
    /// The `time` attribute exactly as written, if any (the case's `time_s` is 0 for
    /// anything that is not a duration; an importer must tell those apart).
    pub time: Option<String>,
}

/// Why a file is not a readable JUnit report.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReportError {
    /// The XML is malformed (or ends early) at this place.
    #[error("malformed XML at line {line}, column {column}: {message}")]
    Malformed {
        /// 1-based line.
        line: usize,
        /// 1-based column, in bytes.
        column: usize,
        /// What the parser found.
        message: String,
    },
    /// Well-formed XML, but not JUnit.
    #[error("not a JUnit report: {0}")]
    NotJunit(String),
}

/// (line, column), both from 1, of byte `offset` in `bytes`.
fn line_and_column(bytes: &[u8], offset: usize) -> (usize, usize) {
    let before = &bytes[..offset.min(bytes.len())];
    let line = before.iter().filter(|byte| **byte == b'\n').count() + 1;
    let column = before.len() - before.iter().rposition(|byte| *byte == b'\n').map_or(0, |newline| newline + 1) + 1;
    (line, column)
}

fn malformed(bytes: &[u8], offset: u64, message: String) -> ReportError {
    let (line, column) = line_and_column(bytes, usize::try_from(offset).unwrap_or(usize::MAX));
    ReportError::Malformed { line, column, message }
}

/// Every `<testcase>` of a complete report, strictly: unlike [`parse_cases`] (which reads
/// reports still being written and stops quietly at the first bad byte), a malformed
/// document, one that ends inside an element, or one whose root is not `<testsuites>` or
/// `<testsuite>` is an error saying where or what.
pub fn read_report(bytes: &[u8]) -> Result<Vec<ReportCase>, ReportError> {
    let mut reader = Reader::from_reader(bytes);
    reader.config_mut().check_end_names = true;
    let mut cases = Vec::new();
    let mut current: Option<CaseBuilder> = None;
    let mut open: Vec<Vec<u8>> = Vec::new();
    let mut root_seen = false;
    let mut buffer = Vec::new();
    loop {
        let event = reader
            .read_event_into(&mut buffer)
            .map_err(|error| malformed(bytes, reader.error_position(), error.to_string()))?;
        let element = match &event {
            Event::Start(element) | Event::Empty(element) => Some(element.local_name().as_ref().to_vec()),
            _ => None,
        };
        if let Some(name) = &element
            && open.is_empty()
        {
            if root_seen {
                return Err(malformed(bytes, reader.buffer_position(), "a second root element".into()));
            }
            root_seen = true;
            if name.as_slice() != b"testsuites" && name.as_slice() != b"testsuite" {
                return Err(ReportError::NotJunit(format!(
                    "its root element is <{}>, not <testsuites> or <testsuite>",
                    String::from_utf8_lossy(name)
                )));
            }
        }
        match event {
            Event::Eof => break,
            Event::Start(element) => {
                let name = element.local_name().as_ref().to_vec();
                if name.as_slice() == b"testcase" {
                    current = Some(CaseBuilder::start(&element));
                } else if let Some(case) = current.as_mut() {
                    case.child(&element, false);
                }
                open.push(name);
            }
            Event::Empty(element) => {
                if element.local_name().as_ref() == b"testcase" {
                    let case = CaseBuilder::start(&element);
                    let time = case.time_text.clone();
                    cases.push(ReportCase { case: case.finish(), time });
                } else if let Some(case) = current.as_mut() {
                    case.child(&element, true);
                }
            }
            Event::Text(text) => {
                if let Some(case) = current.as_mut() {
                    let decoded = text
                        .unescape()
                        .map_err(|error| malformed(bytes, reader.buffer_position(), error.to_string()))?;
                    case.text(&decoded);
                }
            }
            Event::CData(data) => {
                if let Some(case) = current.as_mut() {
                    case.text(&String::from_utf8_lossy(&data));
                }
            }
            Event::End(element) => {
                open.pop();
                let name = element.local_name();
                if name.as_ref() == b"testcase" {
                    if let Some(case) = current.take() {
                        let time = case.time_text.clone();
                        cases.push(ReportCase { case: case.finish(), time });
                    }
                } else if let Some(case) = current.as_mut()
                    && case.collecting.as_deref() == Some(name.as_ref())
                {
                    case.collecting = None;
                    if !case.output.ends_with('\n') && !case.output.is_empty() {
                        case.output.push('\n');
                    }
                }
            }
            _ => {}
        }
        buffer.clear();
    }
    if let Some(inside) = open.last() {
        return Err(malformed(
            bytes,
            reader.buffer_position(),
            format!("the document ends inside <{}>", String::from_utf8_lossy(inside)),
        ));
    }
    if !root_seen {
        return Err(ReportError::NotJunit("no root element (an empty file?)".into()));
    }
    Ok(cases)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statuses(xml: &[u8]) -> Vec<(String, TestStatus)> {
        parse_cases(xml).into_iter().map(|case| (case.name, case.status)).collect()
    }

    #[test]
    fn reads_nested_suites_and_every_outcome() {
        let xml = br#"<?xml version="1.0"?>
<testsuites><testsuite name="outer"><testsuite name="inner">
  <testcase name="ok" classname="pkg.mod" time="0.25"/>
  <testcase name="bad" time="1"><failure message="boom">trace &lt;here&gt;</failure><system-out>printed</system-out></testcase>
  <testcase name="err"><error message="crash"/></testcase>
  <testcase name="skip"><skipped/></testcase>
  <testcase name="flaky-but-passed"><flakyFailure message="first try">t</flakyFailure></testcase>
</testsuite></testsuite></testsuites>"#;
        let cases = parse_cases(xml);
        assert_eq!(
            statuses(xml),
            vec![
                ("ok".into(), TestStatus::Passed),
                ("bad".into(), TestStatus::Failed),
                ("err".into(), TestStatus::Error),
                ("skip".into(), TestStatus::Skipped),
                ("flaky-but-passed".into(), TestStatus::Passed),
            ]
        );
        assert_eq!(cases[0].classname.as_deref(), Some("pkg.mod"));
        assert_eq!(cases[0].time_s, 0.25);
        assert_eq!(cases[1].output.as_deref(), Some("[failure] boom\ntrace <here>\nprinted\n"));
        assert_eq!(cases[2].output.as_deref(), Some("[error] crash\n"));
        assert_eq!(cases[3].output, None);
        let xfail = br#"<testsuite><testcase name="x"><skipped type="pytest.xfail" message="known bug"/></testcase>
            <testcase name="s"><skipped type="pytest.skip" message="no numpy">file.py:3: no numpy</skipped></testcase></testsuite>"#;
        let cases = parse_cases(xfail);
        assert_eq!(cases[0].output.as_deref(), Some("[xfail] known bug\n"));
        assert_eq!(cases[1].output.as_deref(), Some("[skipped] no numpy\n"));
        // pytest 9 for a module calling `pytest.importorskip("numpy")` on its line 8.
        let collection = br#"<testsuite><testcase classname="" name="pkg.test_np" time="0.000"><skipped message="collection skipped">('/w/pkg/test_np.py', 8, "Skipped: could not import 'numpy': No module named 'numpy'")</skipped></testcase></testsuite>"#;
        let cases = parse_cases(collection);
        assert_eq!((cases[0].classname.as_deref(), cases[0].name.as_str()), (None, "pkg.test_np"));
        assert_eq!(cases[0].status, TestStatus::Skipped);
        assert_eq!(
            cases[0].output.as_deref(),
            Some(
                "[skipped] collection skipped\n('/w/pkg/test_np.py', 8, \"Skipped: could not import 'numpy': No module named 'numpy'\")\n"
            )
        );
    }

    #[test]
    fn a_half_written_file_yields_its_complete_cases() {
        let xml = br#"<testsuites><testsuite><testcase name="a"/><testcase name="b"><failure>partial outp"#;
        assert_eq!(statuses(xml), vec![("a".into(), TestStatus::Passed)]);
        assert_eq!(statuses(b""), vec![]);
        assert_eq!(statuses(b"\x00\xff garbage <<<"), vec![]);
    }

    #[test]
    fn invalid_utf8_is_replaced_not_fatal() {
        let xml = b"<testsuite><testcase name=\"caf\xe9\"><failure>bad \xff byte</failure></testcase></testsuite>";
        let cases = parse_cases(xml);
        assert_eq!(cases.len(), 1);
        assert_eq!(cases[0].name, "caf\u{fffd}");
        assert_eq!(cases[0].status, TestStatus::Failed);
        assert!(cases[0].output.as_deref().unwrap().contains("bad \u{fffd} byte"));
    }

    #[test]
    fn huge_output_is_truncated_with_a_note() {
        let body = "x".repeat(MAX_OUTPUT_BYTES * 2);
        let xml = format!("<testsuite><testcase name=\"a\"><failure>{body}</failure></testcase></testsuite>");
        let output = parse_cases(xml.as_bytes()).remove(0).output.unwrap();
        assert!(output.len() < MAX_OUTPUT_BYTES + 200);
        assert!(
            output.ends_with(&format!("[greenlight: output truncated, {} more bytes not kept]", MAX_OUTPUT_BYTES)),
            "{}",
            &output[output.len() - 100..]
        );
    }

    /// A case as `check_report` expects it: name, status, `time` as written.
    type Expected<'a> = (&'a str, TestStatus, Option<&'a str>);

    fn check_report(xml: &str, expected: Result<Vec<Expected<'_>>, &str>) {
        let got = read_report(xml.as_bytes())
            .map(|cases| {
                cases.into_iter().map(|report| (report.case.name, report.case.status, report.time)).collect::<Vec<_>>()
            })
            .map_err(|error| error.to_string());
        let expected = expected
            .map(|cases| {
                cases
                    .into_iter()
                    .map(|(name, status, time)| (name.to_owned(), status, time.map(str::to_owned)))
                    .collect::<Vec<_>>()
            })
            .map_err(str::to_owned);
        assert_eq!(got, expected, "{xml}");
    }

    #[test]
    fn a_whole_report_is_read_strictly_with_times_as_written() {
        check_report(
            "<testsuites><testsuite name=\"s\">\n<testcase name=\"a\" time=\"1e300\"/>\n\
             <testcase name=\"b\" time=\"NaN\"><failure message=\"x\">t</failure></testcase>\n\
             <testcase name=\"c\"><skipped/></testcase></testsuite></testsuites>",
            Ok(vec![
                ("a", TestStatus::Passed, Some("1e300")),
                ("b", TestStatus::Failed, Some("NaN")),
                ("c", TestStatus::Skipped, None),
            ]),
        );
        check_report(
            "<testsuite><testcase name=\"a\" time=\"-2\"/></testsuite>",
            Ok(vec![("a", TestStatus::Passed, Some("-2"))]),
        );
        // Malformed: mismatched tags, an unclosed document, a broken attribute; with the place.
        check_report(
            "<testsuites>\n  <testsuite>\n    <testcase name=\"a\"></testsuite>\n</testsuites>",
            Err(
                "malformed XML at line 3, column 24: ill-formed document: expected `</testcase>`, but `</testsuite>` was found",
            ),
        );
        check_report(
            "<testsuite>\n<testcase name=\"a\"/>\n<testcase name=\"b\">",
            Err("malformed XML at line 3, column 20: the document ends inside <testcase>"),
        );
        // Not JUnit: another root, or nothing at all.
        check_report(
            "<html><body/></html>",
            Err("not a JUnit report: its root element is <html>, not <testsuites> or <testsuite>"),
        );
        check_report("", Err("not a JUnit report: no root element (an empty file?)"));
        check_report("just some text\n", Err("not a JUnit report: no root element (an empty file?)"));
    }

    #[test]
    fn candidates_cover_classname_and_file_forms() {
        let case = JunitCase {
            name: "test_x[1]".into(),
            classname: Some("pkg.TestA".into()),
            file: Some("pkg/test_a.py".into()),
            time_s: 0.0,
            status: TestStatus::Passed,
            output: None,
        };
        assert_eq!(
            candidate_ids(&case),
            vec!["test_x[1]", "pkg.TestA::test_x[1]", "pkg.TestA.test_x[1]", "pkg/test_a.py::test_x[1]"]
        );
    }
}
