//! Duration estimates. A test's estimate is what the driver knows of it (the master: the
//! median of its recent runs, else the suite's `duration_s`; `greenlight simulate`: the
//! history file), else what its neighbours took: its file, its directory, its tags, the
//! suite ([`estimate`]), else [`DEFAULT_ESTIMATE_S`]. A new test never gets zero.

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

/// The file part of a test id (before the first `::`), if it has one.
fn file_of(id: &str) -> Option<&str> {
    id.split_once("::").map(|(file, _)| file)
}

/// The directory part of a test id's file (before the last `/`), if it has one.
fn directory_of(id: &str) -> Option<&str> {
    file_of(id).unwrap_or(id).rsplit_once('/').map(|(directory, _)| directory)
}

/// Sums and counts of known durations per group of tests.
#[derive(Default)]
struct GroupMeans<'a> {
    groups: HashMap<&'a str, (f64, usize)>,
}

impl<'a> GroupMeans<'a> {
    fn add(&mut self, key: &'a str, value: f64) {
        let entry = self.groups.entry(key).or_default();
        entry.0 += value;
        entry.1 += 1;
    }

    fn mean(&self, key: &str) -> Option<f64> {
        self.groups.get(key).map(|(sum, count)| sum / *count as f64)
    }
}

/// The estimates of a suite's tests, in suite order.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimates {
    /// Estimated seconds.
    pub seconds: Vec<f64>,
    /// Whether the estimate is the test's own (history or suite duration) rather than
    /// borrowed from its neighbours: borrowed ones are less certain.
    pub known: Vec<bool>,
}

/// One estimate per test of `suite`, in suite order. `known` gives what the driver knows
/// of a test's duration, if anything.
///
/// A test nothing is known of takes the mean of the known tests of its file (the id before
/// `::`), else of its directory, else of the tests with exactly its tags, else the largest
/// mean of one of its tags, else of the whole suite. Means, not medians: what a shard's
/// length needs is the expected sum of its tests.
pub fn estimate(suite: &Suite, known: impl Fn(&TestSpec) -> Option<f64>) -> Estimates {
    let usable = |value: &f64| value.is_finite() && *value >= 0.0;
    let known: Vec<Option<f64>> = suite.tests.iter().map(|test| known(test).filter(usable)).collect();
    let is_known: Vec<bool> = known.iter().map(Option::is_some).collect();
    if is_known.iter().all(|&known| known) {
        return Estimates {
            seconds: known.into_iter().map(|value| value.unwrap_or(DEFAULT_ESTIMATE_S)).collect(),
            known: is_known,
        };
    }
    let tag_sets: Vec<String> = suite.tests.iter().map(|test| test.tags.join("\u{0}")).collect();
    let (mut files, mut directories, mut exact_tags, mut single_tags) =
        (GroupMeans::default(), GroupMeans::default(), GroupMeans::default(), GroupMeans::default());
    let (mut sum, mut count) = (0.0, 0usize);
    for ((test, value), tag_set) in suite.tests.iter().zip(&known).zip(&tag_sets) {
        // A test known to take no time (a file pytest skips at collection, declared 0 s)
        // says nothing about what its neighbours take: lent, it would make every new test
        // of a first build free, and its shards unbounded.
        let Some(value) = value.filter(|&value| value > 0.0) else { continue };
        sum += value;
        count += 1;
        if let Some(file) = file_of(&test.id) {
            files.add(file, value);
        }
        if let Some(directory) = directory_of(&test.id) {
            directories.add(directory, value);
        }
        exact_tags.add(tag_set, value);
        for tag in &test.tags {
            single_tags.add(tag, value);
        }
    }
    let global = if count > 0 { sum / count as f64 } else { DEFAULT_ESTIMATE_S };
    let seconds = suite
        .tests
        .iter()
        .zip(known)
        .zip(&tag_sets)
        .map(|((test, value), tag_set)| {
            value.unwrap_or_else(|| {
                file_of(&test.id)
                    .and_then(|file| files.mean(file))
                    .or_else(|| directory_of(&test.id).and_then(|directory| directories.mean(directory)))
                    .or_else(|| if test.tags.is_empty() { None } else { exact_tags.mean(tag_set) })
                    .or_else(|| test.tags.iter().filter_map(|tag| single_tags.mean(tag)).reduce(f64::max))
                    .unwrap_or(global)
            })
        })
        .collect();
    Estimates { seconds, known: is_known }
}

#[cfg(test)]
mod tests {
    use super::*;
    use greenlight_shared::suite::{SuiteFile, SuiteTest};

    fn check(tests: &[(&str, &[&str], Option<f64>)], history: &[(&str, f64)], expected: &[f64]) {
        let suite = Suite::new(SuiteFile {
            name: "s".into(),
            shard_overhead_s: 0.0,
            tests: tests
                .iter()
                .map(|(id, tags, duration_s)| SuiteTest {
                    id: (*id).into(),
                    tags: tags.iter().map(|tag| (*tag).into()).collect(),
                    depends_on: vec![],
                    duration_s: *duration_s,
                })
                .collect(),
        })
        .unwrap();
        let known = |test: &TestSpec| {
            history.iter().find(|(id, _)| *id == test.id).map(|(_, value)| *value).or(test.duration_s)
        };
        let estimates = estimate(&suite, known);
        assert_eq!(estimates.seconds, expected);
        let borrowed: Vec<bool> =
            tests.iter().map(|(id, _, duration)| duration.is_some() || history.iter().any(|(h, _)| h == id)).collect();
        assert_eq!(estimates.known, borrowed);
    }

    #[test]
    fn history_beats_the_suite_file() {
        check(&[("a", &[], Some(5.0)), ("b", &[], Some(1.0))], &[("a", 0.5)], &[0.5, 1.0]);
    }

    #[test]
    fn a_new_test_borrows_from_its_file_then_directory_then_tags_then_the_suite() {
        check(
            &[
                ("ui/chat/test_a.py::one", &["chat", "browser"], Some(10.0)),
                ("ui/chat/test_a.py::two", &["chat", "browser"], Some(20.0)),
                ("ui/chat/test_b.py::one", &["chat", "browser"], Some(30.0)),
                ("unit/chat/test_c.py::one", &["chat"], Some(0.5)),
                ("unit/shop/test_d.py::one", &["shop"], Some(1.5)),
                // Same file as two known tests: their mean.
                ("ui/chat/test_a.py::new", &["chat", "browser"], None),
                // New file, known directory: the directory's mean.
                ("ui/chat/test_new.py::new", &["chat", "browser"], None),
                // New directory, known exact tags.
                ("elsewhere/test_x.py::new", &["chat", "browser"], None),
                // New directory and tag set: the largest single-tag mean.
                ("elsewhere/test_y.py::new", &["shop", "browser"], None),
                // Nothing in common: the suite's mean.
                ("lonely", &["nothing"], None),
            ],
            &[],
            &[10.0, 20.0, 30.0, 0.5, 1.5, 15.0, 20.0, 20.0, 20.0, 12.4],
        );
    }

    #[test]
    fn a_test_known_to_take_no_time_lends_nothing_to_its_neighbours() {
        check(
            &[
                ("pkg/test_skipped.py", &[], Some(0.0)),
                ("pkg/test_a.py::one", &[], None),
                ("other/test_b.py::one", &[], None),
            ],
            &[],
            &[0.0, DEFAULT_ESTIMATE_S, DEFAULT_ESTIMATE_S],
        );
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }
}
