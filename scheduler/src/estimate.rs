//! Duration estimates. A test's estimate is what the driver knows of it (the master: the
//! median of its recent runs, else the suite's `duration_s`; `greenlight simulate`: the
//! history file), else the median of the known tests sharing its tags, else the median of
//! every known test, else [`DEFAULT_ESTIMATE_S`]. A new test never gets zero.

use std::collections::HashMap;

use crate::suite::{Suite, TestSpec};

/// The estimate of a test when nothing at all is known in its suite.
pub const DEFAULT_ESTIMATE_S: f64 = 1.0;

/// The median of a list of durations, or `None` for an empty list.
pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    Some(if values.len() % 2 == 1 { values[middle] } else { (values[middle - 1] + values[middle]) / 2.0 })
}

/// One estimate per test of `suite`, in suite order. `known` gives what the driver knows
/// of a test's duration, if anything.
pub fn estimate(suite: &Suite, known: impl Fn(&TestSpec) -> Option<f64>) -> Vec<f64> {
    let usable = |value: &f64| value.is_finite() && *value >= 0.0;
    let known: Vec<Option<f64>> = suite.tests.iter().map(|test| known(test).filter(usable)).collect();
    if known.iter().all(Option::is_some) {
        return known.into_iter().map(|value| value.unwrap_or(DEFAULT_ESTIMATE_S)).collect();
    }
    let mut by_tag: HashMap<&str, Vec<f64>> = HashMap::new();
    let mut all = Vec::new();
    for (test, value) in suite.tests.iter().zip(&known) {
        if let Some(value) = *value {
            all.push(value);
            for tag in &test.tags {
                by_tag.entry(tag.as_str()).or_default().push(value);
            }
        }
    }
    let tag_median: HashMap<&str, f64> =
        by_tag.into_iter().filter_map(|(tag, mut values)| Some((tag, median(&mut values)?))).collect();
    let global = median(&mut all).unwrap_or(DEFAULT_ESTIMATE_S);
    suite
        .tests
        .iter()
        .zip(known)
        .map(|(test, value)| {
            value.unwrap_or_else(|| {
                let mut from_tags: Vec<f64> =
                    test.tags.iter().filter_map(|tag| tag_median.get(tag.as_str()).copied()).collect();
                median(&mut from_tags).unwrap_or(global)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use greenlight_shared::suite::{SuiteFile, SuiteTest};

    #[test]
    fn history_beats_suite_and_new_tests_borrow_from_their_tags() {
        let test = |id: &str, tag: &str, duration: Option<f64>| SuiteTest {
            id: id.into(),
            tags: vec![tag.into()],
            depends_on: vec![],
            duration_s: duration,
        };
        let suite = Suite::new(SuiteFile {
            name: "s".into(),
            shard_overhead_s: 0.0,
            tests: vec![
                test("a", "ui", Some(10.0)),
                test("b", "ui", Some(30.0)),
                test("c", "unit", Some(0.1)),
                test("new_ui", "ui", None),
                test("new_other", "other", None),
                test("from_history", "unit", Some(5.0)),
            ],
        })
        .unwrap();
        let history = |test: &TestSpec| if test.id == "from_history" { Some(0.2) } else { test.duration_s };
        // new_ui: median of ui (10, 30); new_other: median of all known (0.1, 0.2, 10, 30).
        assert_eq!(estimate(&suite, history), vec![10.0, 30.0, 0.1, 20.0, 5.1, 0.2]);
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }
}
