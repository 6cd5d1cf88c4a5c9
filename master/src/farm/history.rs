//! Seeding the duration history from JUnit reports a CI already wrote (`POST
//! /api/v1/admin/history/import`, `greenlight history import`), as timing-based splitters
//! do: a farm's first build is then planned from real durations instead of guesses.
//!
//! The client sends the reports' test cases as read; the master, which knows the suite
//! and its runner, maps each case to a test id of the suite at the branch's newest
//! revision (pytest's and nextest's exact JUnit naming, a generic runner's usual forms)
//! and adds the time of each **passed** case to that test's history, where it counts
//! like a run on the farm (the median of the last five). A failed, erroring or skipped
//! case is not recorded: a failure stops anywhere, a skip runs nothing, so their times
//! say little about what a run costs. A time that is not a duration is refused for that
//! case, with the reason.

use greenlight_shared::API_VERSION;
use greenlight_shared::api::{HistoryImportRequest, HistoryImportResponse, ImportedCase, TestStatus};
use greenlight_shared::runner::{JunitMatcher, Runner};

use super::planning::PlanError;
use super::{Farm, FarmError};

/// How many unmatched or rejected cases an answer names.
const EXAMPLES: usize = 5;

/// What an import would record, and its answer.
#[derive(Debug, PartialEq)]
struct Import {
    /// (test id, seconds), in the reports' order.
    samples: Vec<(String, f64)>,
    answer: HistoryImportResponse,
}

/// A case's duration from its `time` attribute as written, or why it is not one: longer
/// than `max_s` (`max_test_duration_s`, a day by default) is a broken report, not a test.
fn duration_of(time: Option<&str>, max_s: f64) -> Result<f64, String> {
    let text = time.ok_or_else(|| "no time attribute".to_owned())?;
    let value: f64 = text.trim().parse().map_err(|_| format!("time {text:?} is not a number"))?;
    if !value.is_finite() {
        return Err(format!("time {text:?} is not a finite number"));
    }
    if value < 0.0 {
        return Err(format!("time {text:?} is negative"));
    }
    if value > max_s {
        return Err(format!("time {text:?} is more than max_test_duration_s ({max_s} s)"));
    }
    Ok(value)
}

/// How a case names itself in messages: `classname::name (file)`.
fn describe(case: &ImportedCase, report: &str) -> String {
    match &case.classname {
        Some(classname) => format!("{classname}::{} ({report})", case.name),
        None => format!("{} ({report})", case.name),
    }
}

/// Maps the reports' cases onto `ids` (named as `runner` names them) and sorts them into
/// what is recorded and what is not.
fn import(runner: &Runner, ids: &[String], request: &HistoryImportRequest, revision: &str, max_s: f64) -> Import {
    let matcher = JunitMatcher::new(runner, ids);
    let mut samples = Vec::new();
    let mut answer = HistoryImportResponse {
        version: API_VERSION,
        revision: revision.to_owned(),
        imported: 0,
        not_passed: 0,
        unmatched: 0,
        unmatched_examples: Vec::new(),
        rejected: 0,
        rejected_examples: Vec::new(),
    };
    for report in &request.reports {
        for case in &report.cases {
            let Some(test_id) = matcher.find(case.classname.as_deref(), &case.name, case.file.as_deref()) else {
                answer.unmatched += 1;
                if answer.unmatched_examples.len() < EXAMPLES {
                    answer.unmatched_examples.push(describe(case, &report.file));
                }
                continue;
            };
            if case.status != TestStatus::Passed {
                answer.not_passed += 1;
                continue;
            }
            match duration_of(case.time.as_deref(), max_s) {
                Ok(duration_s) => {
                    answer.imported += 1;
                    samples.push((test_id.to_owned(), duration_s));
                }
                Err(reason) => {
                    answer.rejected += 1;
                    if answer.rejected_examples.len() < EXAMPLES {
                        answer.rejected_examples.push(format!("{}: {reason}", describe(case, &report.file)));
                    }
                }
            }
        }
    }
    Import { samples, answer }
}

impl Farm {
    /// Adds the passed cases' times of `request` to the history of the tests they name in
    /// the suite at the branch's newest revision. Blocking (git, perhaps the runner's
    /// listing, store writes); the caller flushes.
    pub fn import_history(&self, request: &HistoryImportRequest) -> Result<HistoryImportResponse, FarmError> {
        if request.reports.is_empty() {
            return Err(FarmError::Invalid("no report to import".to_owned()));
        }
        let branch = &self.config.repository.branch;
        let revision = self.store.last_seen(branch)?.ok_or_else(|| {
            FarmError::Unavailable(format!(
                "no revision of {branch:?} seen yet: the suite to match the reports against is unknown; \
                 import once the master has polled the repository"
            ))
        })?;
        let (revision, suite) = match self.suite_file_at(&super::preparations::Listing::whole(&revision)) {
            Ok(suite) => (revision, suite),
            // Tag-selected builds list some paths only: the newest whole listing names the
            // suite's tests as well (a test's id rarely changes); the answer names its revision.
            Err(PlanError::NotPrepared(_)) => match self.store.newest_whole_listing()? {
                Some(newest) => newest,
                None => {
                    return Err(FarmError::Unavailable(format!(
                        "the suite at {revision} is not listed whole yet (a build of every test lists it: a \
                         commit without tags, or POST /api/v1/admin/full-run); import after that build"
                    )));
                }
            },
            Err(error) => return Err(FarmError::Unavailable(format!("cannot read the suite at {revision}: {error}"))),
        };
        let ids: Vec<String> = suite.tests.into_iter().map(|test| test.id).collect();
        let Import { samples, answer } =
            import(&self.config.suite.runner(), &ids, request, &revision, self.config.max_test_duration_s);
        for (test_id, duration_s) in &samples {
            self.store.add_duration(test_id, *duration_s);
        }
        // Imported is stored: the caller flushes before it answers.
        self.store.write_history()?;
        tracing::info!(
            %revision,
            imported = answer.imported,
            unmatched = answer.unmatched,
            rejected = answer.rejected,
            "history imported"
        );
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use greenlight_shared::api::ImportedReport;

    /// The default `max_test_duration_s`.
    const DAY: f64 = 86_400.0;

    fn case(classname: Option<&str>, name: &str, status: TestStatus, time: Option<&str>) -> ImportedCase {
        ImportedCase {
            name: name.to_owned(),
            classname: classname.map(str::to_owned),
            file: None,
            status,
            time: time.map(str::to_owned),
        }
    }

    /// The cases of one report `ci.xml` against a pytest suite of `ids`: the samples
    /// recorded, and (imported, not passed, unmatched examples, rejected examples).
    fn check(ids: &[&str], cases: Vec<ImportedCase>, samples: &[(&str, f64)], counts: (u32, u32, &[&str], &[&str])) {
        let ids: Vec<String> = ids.iter().map(|id| (*id).to_owned()).collect();
        let request = HistoryImportRequest {
            version: API_VERSION,
            reports: vec![ImportedReport { file: "ci.xml".into(), cases }],
        };
        let runner = Runner::Pytest { python: "python3".into(), args: vec![] };
        let Import { samples: got, answer } = import(&runner, &ids, &request, "abc", DAY);
        let expected: Vec<(String, f64)> = samples.iter().map(|(id, seconds)| ((*id).to_owned(), *seconds)).collect();
        assert_eq!(got, expected);
        let (imported, not_passed, unmatched, rejected) = counts;
        assert_eq!(answer.revision, "abc");
        assert_eq!((answer.imported, answer.not_passed), (imported, not_passed), "{answer:?}");
        assert_eq!(answer.unmatched as usize, unmatched.len(), "{answer:?}");
        assert_eq!(answer.unmatched_examples, unmatched, "{answer:?}");
        assert_eq!(answer.rejected_examples, rejected, "{answer:?}");
        assert_eq!(answer.rejected as usize, rejected.len(), "{answer:?}");
    }

    #[test]
    fn passed_cases_are_recorded_under_the_suites_ids() {
        check(
            &["pkg/test_a.py::TestK::test_x[a b]", "pkg/test_b.py::test_y", "pkg/test_skipped.py"],
            vec![
                case(Some("pkg.test_a.TestK"), "test_x[a b]", TestStatus::Passed, Some("12.5")),
                case(Some("pkg.test_b"), "test_y", TestStatus::Passed, Some(" 0.000 ")),
                // The same test in another run: a second sample.
                case(Some("pkg.test_a.TestK"), "test_x[a b]", TestStatus::Passed, Some("1e1")),
            ],
            &[
                ("pkg/test_a.py::TestK::test_x[a b]", 12.5),
                ("pkg/test_b.py::test_y", 0.0),
                ("pkg/test_a.py::TestK::test_x[a b]", 10.0),
            ],
            (3, 0, &[], &[]),
        );
    }

    #[test]
    fn failures_skips_and_unknown_tests_are_counted_not_recorded() {
        check(
            &["pkg/test_a.py::test_x", "pkg/test_skipped.py"],
            vec![
                case(Some("pkg.test_a"), "test_x", TestStatus::Failed, Some("3.0")),
                case(None, "pkg.test_skipped", TestStatus::Skipped, Some("0.000")),
                case(Some("pkg.test_a"), "test_gone", TestStatus::Passed, Some("1.0")),
                case(None, "orphan", TestStatus::Passed, Some("1.0")),
            ],
            &[],
            (0, 2, &["pkg.test_a::test_gone (ci.xml)", "orphan (ci.xml)"], &[]),
        );
    }

    #[test]
    fn times_that_are_no_durations_are_rejected_with_the_reason() {
        let id = "t.py::test_a";
        let bad = ["1e300", "NaN", "-1", "inf", "soon", "86400.5"];
        let mut cases: Vec<ImportedCase> =
            bad.iter().map(|time| case(Some("t"), "test_a", TestStatus::Passed, Some(time))).collect();
        cases.push(case(Some("t"), "test_a", TestStatus::Passed, None));
        cases.push(case(Some("t"), "test_a", TestStatus::Passed, Some("86400")));
        let request = HistoryImportRequest {
            version: API_VERSION,
            reports: vec![ImportedReport { file: "ci.xml".into(), cases }],
        };
        let runner = Runner::Pytest { python: "python3".into(), args: vec![] };
        let ids = vec![id.to_owned()];
        let Import { samples, answer } = import(&runner, &ids, &request, "abc", DAY);
        assert_eq!(samples, vec![(id.to_owned(), 86_400.0)]);
        assert_eq!((answer.imported, answer.rejected), (1, 7), "{answer:?}");
        assert_eq!(
            answer.rejected_examples,
            [
                "t::test_a (ci.xml): time \"1e300\" is more than max_test_duration_s (86400 s)",
                "t::test_a (ci.xml): time \"NaN\" is not a finite number",
                "t::test_a (ci.xml): time \"-1\" is negative",
                "t::test_a (ci.xml): time \"inf\" is not a finite number",
                "t::test_a (ci.xml): time \"soon\" is not a number",
            ]
        );
        assert_eq!(duration_of(None, DAY), Err("no time attribute".to_owned()));
    }
}
