//! nextest's machine-readable event stream (`--message-format libtest-json-plus`, with
//! `NEXTEST_EXPERIMENTAL_LIBTEST_JSON=1`): one JSON object per line on the runner's
//! standard output, written and flushed as each test ends, so a nextest shard reports
//! test by test instead of through the JUnit file it writes at exit.
//!
//! A test event names the test `<package>::<binary name>$<test name>`, with `#<n>` after
//! it when nextest retried the test; `ok` is a pass, `failed` a failure (its `stdout`
//! holds the test's combined output; a timeout has a `reason` instead), `ignored` a skip.
//! Suite and `started` events carry no result. A line not yet complete (the runner is
//! writing it) or not JSON is left for later or ignored.

use greenlight_shared::api::TestStatus;
use serde::Deserialize;

/// Output kept per failed test.
const OUTPUT_LIMIT: usize = 64 * 1024;

/// One test's end, as the stream reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamedTest {
    /// `<package>::<binary name>`.
    pub binary: String,
    /// The test's name inside its binary.
    pub name: String,
    /// What happened.
    pub status: TestStatus,
    /// Seconds it took.
    pub duration_s: f64,
    /// The output of a failure.
    pub output: Option<String>,
}

#[derive(Deserialize)]
struct Event {
    #[serde(rename = "type")]
    kind: String,
    event: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    exec_time: Option<f64>,
    #[serde(default)]
    stdout: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

/// The test ends in the complete lines of `bytes`, in order.
pub fn parse_events(bytes: &[u8]) -> Vec<StreamedTest> {
    let complete = match bytes.iter().rposition(|&byte| byte == b'\n') {
        Some(end) => &bytes[..end],
        None => return Vec::new(),
    };
    complete.split(|&byte| byte == b'\n').filter_map(parse_line).collect()
}

fn parse_line(line: &[u8]) -> Option<StreamedTest> {
    let event: Event = serde_json::from_slice(line).ok()?;
    if event.kind != "test" {
        return None;
    }
    let status = match event.event.as_str() {
        "ok" => TestStatus::Passed,
        "failed" => TestStatus::Failed,
        "ignored" => TestStatus::Skipped,
        _ => return None,
    };
    let (binary, name) = event.name.split_once('$')?;
    // `#<n>`: the number of runs of a retried test, not part of its name.
    let name = match name.rsplit_once('#') {
        Some((base, runs)) if !runs.is_empty() && runs.bytes().all(|byte| byte.is_ascii_digit()) => base,
        _ => name,
    };
    let output = match status {
        TestStatus::Failed => {
            let mut text = event.stdout.or(event.reason).unwrap_or_default();
            if text.len() > OUTPUT_LIMIT {
                let mut cut = OUTPUT_LIMIT;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
                text.push_str("\n[output truncated by greenlight]");
            }
            Some(text)
        }
        _ => None,
    };
    Some(StreamedTest {
        binary: binary.to_owned(),
        name: name.to_owned(),
        status,
        duration_s: event.exec_time.filter(|seconds| seconds.is_finite() && *seconds >= 0.0).unwrap_or(0.0),
        output,
    })
}

/// How well nextest binary id `binary_id` fits a stream's `<package>::<binary name>`:
/// 3 for an integration test (`package::name`), 2 for a binary, example or bench
/// (`package::bin/name`), 1 for the library (the package itself), 0 for no fit.
pub fn binary_fit(binary_id: &str, binary: &str) -> u8 {
    let Some((package, binary_name)) = binary.split_once("::") else { return 0 };
    if binary_id == binary {
        3
    } else if binary_id
        .strip_prefix(package)
        .and_then(|rest| rest.strip_prefix("::"))
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(_, name)| name == binary_name)
    {
        2
    } else if binary_id == package {
        1
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// nextest 0.9.143's stream for a library with a passing, a failing and an ignored
    /// test and an integration test (cut after the failure's line).
    const STREAM: &str = concat!(
        r#"{"type":"suite","event":"started","test_count":3,"nextest":{"crate":"demo","test_binary":"demo","kind":"lib"}}"#,
        "\n",
        r#"{"type":"test","event":"started","name":"demo::demo$tests::ign"}"#,
        "\n",
        r#"{"type":"test","event":"ignored","name":"demo::demo$tests::ign"}"#,
        "\n",
        r#"{"type":"test","event":"ok","name":"demo::demo$tests::ok","exec_time":0.022385531}"#,
        "\n",
        r#"{"type":"test","event":"ok","name":"demo::it$it","exec_time":0.021743547}"#,
        "\n",
        r#"{"type":"suite","event":"ok","passed":1,"failed":0,"ignored":0,"measured":0,"filtered_out":0,"exec_time":0.02,"nextest":{"crate":"demo","test_binary":"it","kind":"test"}}"#,
        "\n",
        r#"{"type":"test","event":"failed","name":"demo::demo$tests::bad#2","exec_time":0.73,"stdout":"some output\n\nthread 'tests::bad' panicked at src/lib.rs:6:41:\nassertion `left == right` failed: arith\n"}"#,
        "\n",
        r#"{"type":"test","event":"failed","name":"demo::demo$tests::slow","exec_time":5.0,"reason":"time limit exceeded"}"#,
        "\n",
        r#"{"type":"test","event":"ok","name":"demo::demo$tests::half"#,
    );

    #[test]
    fn each_complete_test_event_becomes_a_result_and_a_partial_line_waits() {
        let tests = parse_events(STREAM.as_bytes());
        let summary: Vec<(&str, &str, TestStatus)> =
            tests.iter().map(|test| (test.binary.as_str(), test.name.as_str(), test.status)).collect();
        assert_eq!(
            summary,
            [
                ("demo::demo", "tests::ign", TestStatus::Skipped),
                ("demo::demo", "tests::ok", TestStatus::Passed),
                ("demo::it", "it", TestStatus::Passed),
                ("demo::demo", "tests::bad", TestStatus::Failed),
                ("demo::demo", "tests::slow", TestStatus::Failed),
            ]
        );
        assert!((tests[1].duration_s - 0.022385531).abs() < 1e-9);
        assert!(tests[3].output.as_deref().is_some_and(|output| output.contains("arith")), "{:?}", tests[3]);
        assert_eq!(tests[4].output.as_deref(), Some("time limit exceeded"));
        assert_eq!(tests[1].output, None);
        assert!(parse_events(b"not json\n{\"type\":\"test\"}\n").is_empty());
    }

    #[test]
    fn binary_ids_fit_the_stream_names_of_their_binaries() {
        for (binary_id, binary, fit) in [
            ("demo", "demo::demo", 1),
            ("my-crate", "my-crate::my_crate", 1),
            ("demo::it", "demo::it", 3),
            ("demo::bin/tool", "demo::tool", 2),
            ("demo::example/ex", "demo::ex", 2),
            ("other", "demo::demo", 0),
            ("demo::it", "demo::other", 0),
            ("demo", "nonsense", 0),
        ] {
            assert_eq!(binary_fit(binary_id, binary), fit, "{binary_id} vs {binary}");
        }
    }
}
