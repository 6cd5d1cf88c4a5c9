//! Culprit finding's bookkeeping: which revision to probe next and with which tests, and
//! what the probes so far prove. The farm plans and runs the probes.
//!
//! A red build covers `N` changes (candidates, oldest first; candidate `i` is revision
//! index `i + 1`, index 0 the revision before the oldest). Each failing test has its own
//! search over those revisions, derived from what probes observed of *that test*:
//!
//! - **Confirmation first.** The first probe re-runs the failing tests at the red revision
//!   itself (index `N`). A test that passes there did not reproduce: it is a flake, never
//!   a change's fault, and its search ends with no culprit.
//! - **Per-test intervals.** For a confirmed test, `bad` is the lowest index where a probe
//!   saw it fail and `good` the highest index below that where it was seen to pass, or its
//!   lower bound: the revision where an earlier build last ran it and it passed (index 0
//!   unless the look-back over earlier builds found a later one). That earlier build is
//!   the evidence for the lower bound, so it is not probed again.
//! - **A culprit is named** when `bad == good + 1`: a probe showed the change red and the
//!   revision before it green (or that is the lower bound) for the same test. Tests with
//!   the same culprit are named together.
//! - **Shared probes.** The next probe is the midpoint of the widest open interval, and it
//!   runs every open test whose interval contains it, so one probe answers all of them.
//!   One culprit in `N` changes takes at most `ceil(log2 N)` probes after the
//!   confirmation; several take no more than their separate searches would.
//!
//! Persisted by the farm as JSON: fields are only added, with defaults. A bisection
//! stored by an older master (one pass/fail range for all tests, no per-test results)
//! decodes with no per-test observations and simply starts again with the confirmation.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// A change the bisection may name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// The change's sequence.
    pub sequence: u64,
    /// Its revision.
    pub revision: String,
}

/// One probe: some failing tests re-run at a candidate's revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    /// The candidate probed (index into the candidates).
    pub candidate: usize,
    /// The probe build, once started (none when no test exists at that revision).
    pub build_id: Option<u64>,
    /// Whether a test it ran failed there, once known.
    pub failed: Option<bool>,
    /// The tests it runs.
    #[serde(default)]
    pub tests: Vec<String>,
    /// The tests of `tests` that failed there, once known. `None` on a probe an older
    /// master recorded: it says nothing per test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing: Option<Vec<String>>,
}

impl Probe {
    /// Whether the probe has ended.
    pub fn ended(&self) -> bool {
        self.failed.is_some()
    }
}

/// The state of one culprit finding, persisted by the farm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bisection {
    /// The red build.
    pub build_id: u64,
    /// The tests that failed in it and are searched for.
    pub failing_tests: Vec<String>,
    /// The changes that may have broken them, oldest first; the last is the red build's
    /// revision.
    pub candidates: Vec<Candidate>,
    /// The probes so far.
    pub probes: Vec<Probe>,
    /// Per test, the revision index where an earlier build ran it and it passed (absent:
    /// 0, the revision before the oldest candidate).
    #[serde(default)]
    pub green_at: BTreeMap<String, usize>,
}

/// What to probe next: a candidate and the tests to run there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextProbe {
    /// The candidate (index into the candidates).
    pub candidate: usize,
    /// The tests whose search the probe answers.
    pub tests: Vec<String>,
    /// Whether it is the confirmation (at the red revision, before any bisecting).
    pub confirmation: bool,
}

/// Where one test's search stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Search {
    /// Not yet re-run at the red revision.
    Unconfirmed,
    /// Passed when re-run at the red revision: a flake.
    NotReproduced,
    /// Red at revision index `bad`, green at `good` (`good < bad`).
    Open { good: usize, bad: usize },
}

impl Bisection {
    /// A culprit finding for red build `build_id`'s `failing_tests` over `candidates`
    /// (non-empty, oldest first), with each test's lower bound in `green_at`.
    pub fn new(
        build_id: u64,
        failing_tests: Vec<String>,
        candidates: Vec<Candidate>,
        green_at: BTreeMap<String, usize>,
    ) -> Bisection {
        Bisection { build_id, failing_tests, candidates, probes: Vec::new(), green_at }
    }

    /// The revision index of the red build (the newest candidate).
    fn red_index(&self) -> usize {
        self.candidates.len()
    }

    /// What the ended probes saw of `test_id`: (revision index, failed).
    fn observations<'a>(&'a self, test_id: &'a str) -> impl Iterator<Item = (usize, bool)> + 'a {
        self.probes.iter().filter_map(move |probe| {
            let failing = probe.failing.as_ref()?;
            let failed = failing.iter().any(|test| test == test_id);
            probe.tests.iter().any(|test| test == test_id).then_some((probe.candidate + 1, failed))
        })
    }

    fn search(&self, test_id: &str) -> Search {
        let red = self.red_index();
        let lower = self.green_at.get(test_id).copied().unwrap_or(0).min(red - 1);
        let mut at_red = None;
        let mut bad = None::<usize>;
        for (index, failed) in self.observations(test_id) {
            if index == red {
                // Reproduced once is enough: a later flaky pass there changes nothing.
                at_red = Some(at_red.unwrap_or(false) || failed);
            }
            if failed && index > lower {
                bad = Some(bad.map_or(index, |bad| bad.min(index)));
            }
        }
        match at_red {
            None => Search::Unconfirmed,
            Some(false) => Search::NotReproduced,
            Some(true) => {
                let bad = bad.unwrap_or(red);
                let good = self
                    .observations(test_id)
                    .filter(|&(index, failed)| !failed && index < bad)
                    .map(|(index, _)| index)
                    .fold(lower, usize::max);
                Search::Open { good, bad }
            }
        }
    }

    /// Whether a probe is under way.
    pub fn probe_running(&self) -> bool {
        self.probes.iter().any(|probe| !probe.ended())
    }

    /// The probe to run next, if a search is still open. The confirmation at the red
    /// revision comes first; then the midpoint of the widest open interval (the oldest of
    /// equals), with every open test whose interval holds it.
    pub fn next_probe(&self) -> Option<NextProbe> {
        let unconfirmed: Vec<String> =
            self.failing_tests.iter().filter(|test| self.search(test) == Search::Unconfirmed).cloned().collect();
        if !unconfirmed.is_empty() {
            return Some(NextProbe { candidate: self.red_index() - 1, tests: unconfirmed, confirmation: true });
        }
        let open: Vec<(&String, usize, usize)> = self
            .failing_tests
            .iter()
            .filter_map(|test| match self.search(test) {
                Search::Open { good, bad } if bad - good >= 2 => Some((test, good, bad)),
                _ => None,
            })
            .collect();
        let &(_, good, bad) = open.iter().min_by_key(|&&(_, good, bad)| (std::cmp::Reverse(bad - good), good))?;
        let probed = good + (bad - good) / 2;
        let tests = open
            .iter()
            .filter(|&&(_, good, bad)| good < probed && probed < bad)
            .map(|&(test, ..)| test.clone())
            .collect();
        Some(NextProbe { candidate: probed - 1, tests, confirmation: false })
    }

    /// Records a probe about to run (`build_id` once its build exists).
    pub fn start_probe(&mut self, next: &NextProbe, build_id: Option<u64>) {
        self.probes.push(Probe {
            candidate: next.candidate,
            build_id,
            failed: None,
            tests: next.tests.clone(),
            failing: None,
        });
    }

    /// Records the outcome of the running probe of build `build_id` (`None`: the probe
    /// that ran no build): which of its tests failed. Returns whether a probe matched.
    pub fn record(&mut self, build_id: Option<u64>, failing: &BTreeSet<String>) -> bool {
        let Some(probe) = self.probes.iter_mut().rev().find(|probe| probe.build_id == build_id && !probe.ended())
        else {
            return false;
        };
        let failing: Vec<String> = probe.tests.iter().filter(|test| failing.contains(*test)).cloned().collect();
        probe.failed = Some(!failing.is_empty());
        probe.failing = Some(failing);
        true
    }

    /// Forgets the running probe of build `build_id` (cancelled: it proved nothing), so
    /// the same revision is probed again. Returns whether there was one.
    pub fn forget_probe(&mut self, build_id: u64) -> bool {
        let before = self.probes.len();
        self.probes.retain(|probe| probe.build_id != Some(build_id) || probe.ended());
        self.probes.len() != before
    }

    /// Whether every search has ended (and no probe runs).
    pub fn finished(&self) -> bool {
        !self.probe_running() && self.next_probe().is_none()
    }

    /// The tests that passed when re-run at the red revision: flakes, nobody's fault.
    pub fn not_reproduced(&self) -> Vec<String> {
        self.failing_tests.iter().filter(|test| self.search(test) == Search::NotReproduced).cloned().collect()
    }

    /// The culprits proven so far, oldest first: each candidate index with the tests it
    /// broke (red there, green at the revision before it).
    pub fn culprits(&self) -> Vec<(usize, Vec<String>)> {
        let mut culprits: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for test in &self.failing_tests {
            if let Search::Open { good, bad } = self.search(test)
                && bad == good + 1
            {
                culprits.entry(bad - 1).or_default().push(test.clone());
            }
        }
        culprits.into_iter().collect()
    }

    /// Probe builds run so far, in order.
    pub fn probe_builds(&self) -> Vec<u64> {
        self.probes.iter().filter_map(|probe| probe.build_id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidates(n_changes: usize) -> Vec<Candidate> {
        (0..n_changes)
            .map(|index| Candidate { sequence: index as u64 + 1, revision: format!("r{}", index + 1) })
            .collect()
    }

    /// Runs a culprit finding over `n_changes` changes for `tests`, where `fails(test,
    /// revision index)` says whether the test fails there. Returns the bisection at its
    /// end and the probes it ran.
    fn run(
        n_changes: usize,
        tests: &[&str],
        green_at: &[(&str, usize)],
        fails: impl Fn(&str, usize) -> bool,
    ) -> (Bisection, usize) {
        let tests: Vec<String> = tests.iter().map(|test| (*test).to_owned()).collect();
        let green_at = green_at.iter().map(|(test, index)| ((*test).to_owned(), *index)).collect();
        let mut bisection = Bisection::new(7, tests, candidates(n_changes), green_at);
        let mut probes = 0u64;
        while let Some(next) = bisection.next_probe() {
            probes += 1;
            assert!(!next.tests.is_empty(), "a probe runs tests");
            bisection.start_probe(&next, Some(probes));
            let failing = next.tests.iter().filter(|test| fails(test, next.candidate + 1)).cloned().collect();
            assert!(bisection.record(Some(probes), &failing));
            assert!(probes < 100, "the search ends");
        }
        assert!(bisection.finished());
        check_evidence(&bisection);
        (bisection, probes as usize)
    }

    /// Every culprit named has a probe showing it red and one showing the revision before
    /// it green (or that revision is the test's lower bound), for each of its tests.
    fn check_evidence(bisection: &Bisection) {
        for (candidate, tests) in bisection.culprits() {
            let index = candidate + 1;
            for test in &tests {
                let seen: Vec<(usize, bool)> = bisection.observations(test).collect();
                assert!(seen.contains(&(index, true)), "{test} seen red at {index}: {seen:?}");
                let lower = bisection.green_at.get(test).copied().unwrap_or(0);
                assert!(index - 1 == lower || seen.contains(&(index - 1, false)), "{test} seen green before {index}");
            }
        }
    }

    fn ceil_log2(n: usize) -> usize {
        n.next_power_of_two().trailing_zeros() as usize
    }

    #[test]
    fn one_culprit_in_n_changes_takes_at_most_ceil_log2_n_probes_after_the_confirmation() {
        for n_changes in 1..=16usize {
            for culprit in 1..=n_changes {
                for tests in [&["a"][..], &["a", "b", "c"]] {
                    let (bisection, probes) = run(n_changes, tests, &[], |_, index| index >= culprit);
                    let expected: Vec<String> = tests.iter().map(|test| (*test).to_owned()).collect();
                    assert_eq!(bisection.culprits(), vec![(culprit - 1, expected)], "{n_changes} changes");
                    assert!(
                        probes <= ceil_log2(n_changes) + 1,
                        "{probes} probes for {n_changes} changes, culprit {culprit}"
                    );
                    assert!(bisection.not_reproduced().is_empty());
                }
            }
        }
    }

    #[test]
    fn two_culprits_are_both_named_with_no_more_probes_than_two_searches() {
        for n_changes in 2..=16usize {
            for first in 1..=n_changes {
                for second in first..=n_changes {
                    let (bisection, probes) =
                        run(
                            n_changes,
                            &["a", "b"],
                            &[],
                            |test, index| {
                                if test == "a" { index >= first } else { index >= second }
                            },
                        );
                    let expected = if first == second {
                        vec![(first - 1, vec!["a".to_owned(), "b".to_owned()])]
                    } else {
                        vec![(first - 1, vec!["a".to_owned()]), (second - 1, vec!["b".to_owned()])]
                    };
                    assert_eq!(bisection.culprits(), expected, "{n_changes} changes");
                    let separate = if first == second { 1 } else { 2 } * ceil_log2(n_changes);
                    assert!(probes <= separate + 1, "{probes} probes for culprits {first} and {second} of {n_changes}");
                }
            }
        }
    }

    #[test]
    fn a_failure_that_does_not_reproduce_at_the_red_revision_names_nobody() {
        for n_changes in 1..=8 {
            let (bisection, probes) = run(n_changes, &["a", "b"], &[], |_, _| false);
            assert_eq!((bisection.culprits(), probes), (Vec::new(), 1), "one confirmation probe, no culprit");
            assert_eq!(bisection.not_reproduced(), vec!["a".to_owned(), "b".to_owned()]);
        }
        // One real failure beside a flake: the real one is bisected, the flake is not.
        let (bisection, probes) = run(8, &["flaky", "real"], &[], |test, index| test == "real" && index >= 3);
        assert_eq!(bisection.culprits(), vec![(2, vec!["real".to_owned()])]);
        assert_eq!(bisection.not_reproduced(), vec!["flaky".to_owned()]);
        assert_eq!(probes, 4);
    }

    #[test]
    fn a_test_last_seen_green_after_the_oldest_candidate_is_searched_from_there() {
        // `a` ran (and passed) in an earlier build at index 4 of 8 candidates.
        for culprit in 5..=8 {
            let (bisection, probes) = run(8, &["a"], &[("a", 4)], |_, index| index >= culprit);
            assert_eq!(bisection.culprits(), vec![(culprit - 1, vec!["a".to_owned()])]);
            assert!(probes <= 3, "four candidates: confirmation and two probes, ran {probes}");
        }
    }

    #[test]
    fn whatever_the_tests_do_a_culprit_is_named_only_on_red_after_green_evidence() {
        // Every pattern of red and green over 6 revisions for two tests, flaky or broken
        // and fixed again: `run` checks the evidence of every culprit it names.
        for pattern in 0u32..(1 << 12) {
            let (bisection, _) = run(6, &["a", "b"], &[], |test, index| {
                let bit = if test == "a" { index - 1 } else { 6 + index - 1 };
                pattern & (1 << bit) != 0
            });
            let red_at_tip = |test: &str| pattern & (1 << if test == "a" { 5 } else { 11 }) != 0;
            for test in ["a", "b"] {
                assert_eq!(bisection.not_reproduced().contains(&test.to_owned()), !red_at_tip(test));
            }
        }
    }

    #[test]
    fn a_bisection_stored_by_an_older_master_decodes_and_starts_with_the_confirmation() {
        let stored = r#"{"build_id":9,"failing_tests":["t"],"candidates":[{"sequence":1,"revision":"r1"},
            {"sequence":2,"revision":"r2"},{"sequence":3,"revision":"r3"}],"low":0,"high":1,
            "probes":[{"candidate":1,"build_id":12,"failed":true}]}"#;
        let mut bisection: Bisection = serde_json::from_str(stored).unwrap();
        assert!(!bisection.probe_running());
        let next = bisection.next_probe().unwrap();
        assert_eq!(
            next,
            NextProbe { candidate: 2, tests: vec!["t".to_owned()], confirmation: true },
            "the old aggregate is not evidence"
        );
        // A probe the older master left running still answers when it ends.
        let stored = stored.replace(r#""failed":true"#, r#""failed":null"#);
        bisection = serde_json::from_str(&stored).unwrap();
        assert!(bisection.probe_running());
        assert!(bisection.record(Some(12), &BTreeSet::new()));
        assert!(!bisection.probe_running());
    }
}
