//! Culprit finding: when a build covering several changes goes red, bisect over the
//! changes it covers, re-running only the failing tests (with their dependencies) at each
//! probe. The red build's own revision (the newest change) is known to fail; the
//! revision before its oldest change is taken as passing. Each probe halves the
//! candidates, so `k` changes take at most `ceil(log2 k)` probes. This module is the
//! bookkeeping only; the farm plans and runs the probes.

use serde::{Deserialize, Serialize};

/// A change the bisection may name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// The change's sequence.
    pub sequence: u64,
    /// Its revision.
    pub revision: String,
}

/// One probe: the failing tests re-run at a candidate's revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    /// The candidate probed (index into the candidates).
    pub candidate: usize,
    /// The probe build, once started.
    pub build_id: Option<u64>,
    /// Whether a failing test failed again there, once known.
    pub failed: Option<bool>,
}

/// The state of one bisection, persisted by the farm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bisection {
    /// The red build.
    pub build_id: u64,
    /// The tests that failed in it.
    pub failing_tests: Vec<String>,
    /// The changes it covers, oldest first; the last is known to fail.
    pub candidates: Vec<Candidate>,
    /// The culprit is among `candidates[low..=high]`.
    pub low: usize,
    /// See `low`.
    pub high: usize,
    /// The probes so far.
    pub probes: Vec<Probe>,
}

impl Bisection {
    /// A bisection of `candidates` (non-empty, oldest first) for a red build.
    pub fn new(build_id: u64, failing_tests: Vec<String>, candidates: Vec<Candidate>) -> Bisection {
        let high = candidates.len().saturating_sub(1);
        Bisection { build_id, failing_tests, candidates, low: 0, high, probes: Vec::new() }
    }

    /// The candidate to probe next, if the culprit is not yet known.
    pub fn next_probe(&self) -> Option<usize> {
        (self.low < self.high).then(|| (self.low + self.high) / 2)
    }

    /// Records whether the failing tests failed at candidate `index`.
    pub fn record(&mut self, index: usize, failed: bool) {
        if let Some(probe) =
            self.probes.iter_mut().rev().find(|probe| probe.candidate == index && probe.failed.is_none())
        {
            probe.failed = Some(failed);
        }
        if failed {
            self.high = index.min(self.high);
        } else {
            self.low = (index + 1).min(self.high);
        }
    }

    /// The culprit, once the candidates are narrowed to one.
    pub fn culprit(&self) -> Option<&Candidate> {
        (self.low == self.high).then(|| &self.candidates[self.low])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(n_changes: usize, culprit: usize) -> (usize, usize) {
        let candidates =
            (0..n_changes).map(|index| Candidate { sequence: index as u64, revision: format!("r{index}") }).collect();
        let mut bisection = Bisection::new(1, vec!["t".into()], candidates);
        let mut probes = 0;
        while let Some(index) = bisection.next_probe() {
            probes += 1;
            bisection.probes.push(Probe { candidate: index, build_id: None, failed: None });
            bisection.record(index, index >= culprit);
        }
        (bisection.culprit().expect("narrowed to one").sequence as usize, probes)
    }

    #[test]
    fn finds_every_culprit_in_at_most_log2_probes() {
        for n_changes in 1..=17usize {
            let bound = (n_changes as f64).log2().ceil() as usize;
            for culprit in 0..n_changes {
                let (found, probes) = run(n_changes, culprit);
                assert_eq!(found, culprit, "{n_changes} changes");
                assert!(probes <= bound, "{probes} probes for {n_changes} changes");
            }
        }
    }
}
