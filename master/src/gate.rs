//! The commit gate of a branch: open; closed as soon as a test of a build has really
//! failed (not when the build ends); open again when a build of a later revision is
//! fully green. Pure transitions over the [`GateView`] the API shows; the farm persists it.

use greenlight_shared::API_VERSION;
use greenlight_shared::api::{ChangeView, CulpritView, GateState, GateView};

/// How many failing tests the gate lists.
const LISTED: usize = 100;

/// A new, open gate.
pub fn new_gate(branch: &str, fix_marker: &str) -> GateView {
    GateView {
        version: API_VERSION,
        branch: branch.to_owned(),
        state: GateState::Open,
        since: None,
        build_id: None,
        revision: None,
        failing_tests: Vec::new(),
        culprit: None,
        culprits: Vec::new(),
        reason: None,
        warning: None,
        fix_marker: fix_marker.to_owned(),
        health: Vec::new(),
    }
}

/// A test of `build_id` (at `revision`) failed for real. Returns whether the gate changed.
pub fn test_failed(gate: &mut GateView, build_id: u64, revision: &str, test_id: &str, now: f64) -> bool {
    match (gate.state, gate.build_id) {
        (GateState::Closed, Some(closing)) if closing == build_id => {
            if gate.failing_tests.len() < LISTED && !gate.failing_tests.iter().any(|id| id == test_id) {
                gate.failing_tests.push(test_id.to_owned());
                return true;
            }
            false
        }
        (GateState::Closed, Some(closing)) if closing > build_id => false,
        _ => {
            // Open, or closed by an older build: the newest red build is the evidence.
            close(gate, build_id, revision, now);
            gate.failing_tests = vec![test_id.to_owned()];
            gate.reason = None;
            true
        }
    }
}

/// A build ended in error: tests no worker could run, or a suite that could not be read,
/// listed or planned (a runner missing, pytest not installed, a suite file that is not a
/// DAG). No test gave a verdict on the code, so the gate keeps its state and evidence, and
/// warns until a later build gives one. Returns whether the gate changed.
pub fn build_error(gate: &mut GateView, build_id: u64, reason: &str) -> bool {
    if gate.build_id.is_some_and(|verdict| verdict > build_id) {
        return false;
    }
    gate.warning = Some(format!("build {build_id} ended in error, not on a test: {reason}"));
    true
}

/// Closes the gate on `build_id`'s evidence; a gate already closed keeps its `since` and
/// its culprit.
fn close(gate: &mut GateView, build_id: u64, revision: &str, now: f64) {
    gate.warning = None;
    if gate.state == GateState::Open {
        gate.since = Some(now);
        gate.culprit = None;
        gate.culprits.clear();
    }
    gate.state = GateState::Closed;
    gate.build_id = Some(build_id);
    gate.revision = Some(revision.to_owned());
}

/// A build ended green: a closed gate opens if the build is newer than the one that closed it.
pub fn build_green(gate: &mut GateView, build_id: u64, revision: &str, now: f64) -> bool {
    if gate.state == GateState::Closed && gate.build_id.is_some_and(|closing| closing >= build_id) {
        return false;
    }
    let was_closed = gate.state == GateState::Closed;
    if was_closed || gate.since.is_none() {
        gate.since = Some(now);
    }
    gate.state = GateState::Open;
    gate.build_id = Some(build_id);
    gate.revision = Some(revision.to_owned());
    gate.failing_tests.clear();
    gate.culprit = None;
    gate.culprits.clear();
    gate.reason = None;
    gate.warning = None;
    was_closed
}

/// Culprit finding proved that `change` broke `culprit.tests` in `build_id`: the gate
/// closed on that build (or a later one) lists it; `culprit` stays the first named.
pub fn culprit_found(gate: &mut GateView, build_id: u64, change: &ChangeView, culprit: &CulpritView) -> bool {
    if gate.state != GateState::Closed
        || gate.build_id.is_none_or(|closing| closing < build_id)
        || gate.culprits.iter().any(|listed| listed.change == culprit.change)
    {
        return false;
    }
    if gate.culprit.is_none() {
        gate.culprit = Some(change.clone());
    }
    gate.culprits.push(culprit.clone());
    true
}

/// Culprit finding re-ran `tests`, failures of `build_id`, at its revision and they
/// passed: flakes, nobody's fault. The gate says so; if it was closed on that build and
/// `every_failure` of the build is such a flake, it opens (the build's failures were
/// flaky after all, as a failure that passes on a retry is). Returns whether it changed.
pub fn failure_not_reproduced(
    gate: &mut GateView,
    build_id: u64,
    tests: &[String],
    every_failure: bool,
    now: f64,
) -> bool {
    if tests.is_empty() || gate.state != GateState::Closed || gate.build_id != Some(build_id) {
        return false;
    }
    let listed: Vec<&str> = tests.iter().take(5).map(String::as_str).collect();
    let more =
        if tests.len() > listed.len() { format!(" and {} more", tests.len() - listed.len()) } else { String::new() };
    let warning = format!(
        "the failure of {}{more} in build {build_id} did not reproduce when re-run at its revision: flaky, no culprit",
        listed.join(", ")
    );
    if every_failure {
        gate.state = GateState::Open;
        gate.since = Some(now);
        gate.failing_tests.clear();
        gate.culprit = None;
        gate.culprits.clear();
        gate.reason = None;
    } else {
        gate.failing_tests.retain(|test| !tests.contains(test));
    }
    gate.warning = Some(warning);
    true
}

/// Whether a commit message marks a fix or a revert, which a closed gate lets through.
pub fn lets_through(message: &str, fix_marker: &str) -> bool {
    let subject = message.lines().next().unwrap_or_default().trim();
    message.contains(fix_marker) || (subject.starts_with("Revert \"") && subject.ends_with('"'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_on_the_first_failure_and_opens_on_a_later_green_build() {
        let mut gate = new_gate("main", "[fix]");
        assert!(!build_green(&mut gate, 1, "r1", 10.0), "an open gate stays open");
        assert_eq!((gate.state, gate.since), (GateState::Open, Some(10.0)));
        assert!(test_failed(&mut gate, 2, "r2", "a", 20.0));
        assert_eq!((gate.state, gate.build_id, gate.since), (GateState::Closed, Some(2), Some(20.0)));
        assert!(test_failed(&mut gate, 2, "r2", "b", 21.0));
        assert!(!test_failed(&mut gate, 2, "r2", "b", 22.0), "listed once");
        assert_eq!(gate.failing_tests, vec!["a", "b"]);
        // A later red build moves the evidence but keeps the time the gate closed.
        assert!(test_failed(&mut gate, 3, "r3", "c", 30.0));
        assert_eq!(
            (gate.build_id, gate.since, gate.failing_tests.clone()),
            (Some(3), Some(20.0), vec!["c".to_owned()])
        );
        // A late failure of an older build changes nothing; neither does an old green build.
        assert!(!test_failed(&mut gate, 2, "r2", "z", 31.0));
        assert!(!build_green(&mut gate, 3, "r3", 32.0));
        assert!(build_green(&mut gate, 4, "r4", 40.0));
        assert_eq!((gate.state, gate.since, gate.failing_tests.len()), (GateState::Open, Some(40.0), 0));
    }

    #[test]
    fn a_build_that_cannot_run_warns_without_opening_or_closing_the_gate() {
        let mut gate = new_gate("main", "[fix]");
        assert!(build_error(&mut gate, 5, "invalid suite: dependency cycle"));
        assert_eq!((gate.state, gate.build_id, gate.reason.as_deref()), (GateState::Open, None, None));
        assert_eq!(
            gate.warning.as_deref(),
            Some("build 5 ended in error, not on a test: invalid suite: dependency cycle")
        );
        assert!(!build_green(&mut gate, 6, "r6", 2.0), "it was open");
        assert_eq!((gate.state, gate.warning.as_deref()), (GateState::Open, None));
        assert!(!build_error(&mut gate, 4, "late"), "an older build's error says nothing once a newer one is green");
        assert_eq!(gate.warning, None);
    }

    #[test]
    fn an_infrastructure_error_warns_without_opening_or_closing_the_gate() {
        let mut gate = new_gate("main", "[fix]");
        assert!(test_failed(&mut gate, 2, "r2", "a", 20.0));
        assert!(build_error(&mut gate, 3, "1 test(s) got no result"));
        assert_eq!((gate.state, gate.build_id), (GateState::Closed, Some(2)));
        assert_eq!(gate.warning.as_deref(), Some("build 3 ended in error, not on a test: 1 test(s) got no result"));
        assert!(build_green(&mut gate, 4, "r4", 40.0));
        assert_eq!((gate.state, gate.warning.as_deref()), (GateState::Open, None));
    }

    fn change(sequence: u64) -> ChangeView {
        ChangeView {
            sequence,
            branch: "main".into(),
            revision: format!("r{sequence}"),
            author: "A <a@x>".into(),
            message: format!("Change {sequence}\n\nbody"),
            paths: Vec::new(),
            tags: Vec::new(),
            build_id: Some(2),
            seen_at: 0.0,
            culprit_of: None,
        }
    }

    fn culprit(sequence: u64, test: &str) -> CulpritView {
        CulpritView {
            change: sequence,
            revision: format!("r{sequence}"),
            author: "A <a@x>".into(),
            subject: format!("Change {sequence}"),
            tests: vec![test.to_owned()],
        }
    }

    #[test]
    fn every_culprit_of_the_closing_build_is_listed_the_first_kept_for_older_clients() {
        let mut gate = new_gate("main", "[fix]");
        assert!(!culprit_found(&mut gate, 2, &change(3), &culprit(3, "a")), "an open gate names nobody");
        assert!(test_failed(&mut gate, 2, "r2", "a", 20.0));
        assert!(test_failed(&mut gate, 2, "r2", "b", 20.0));
        assert!(culprit_found(&mut gate, 2, &change(6), &culprit(6, "b")));
        assert!(culprit_found(&mut gate, 2, &change(3), &culprit(3, "a")));
        assert!(!culprit_found(&mut gate, 2, &change(3), &culprit(3, "a")), "listed once");
        assert_eq!(gate.culprits.iter().map(|culprit| culprit.change).collect::<Vec<_>>(), vec![6, 3]);
        assert_eq!(gate.culprit.as_ref().map(|change| change.sequence), Some(6), "the first named");
        // A newer red build keeps them (its own may follow); a green build clears them.
        assert!(build_green(&mut gate, 4, "r4", 40.0));
        assert!(gate.culprits.is_empty() && gate.culprit.is_none());
    }

    #[test]
    fn a_failure_that_did_not_reproduce_warns_and_opens_the_gate_if_it_was_the_only_one() {
        let mut gate = new_gate("main", "[fix]");
        assert!(test_failed(&mut gate, 2, "r2", "a", 20.0));
        assert!(test_failed(&mut gate, 2, "r2", "b", 20.0));
        let flaky = vec!["a".to_owned()];
        assert!(!failure_not_reproduced(&mut gate, 1, &flaky, true, 30.0), "another build's flake");
        assert!(failure_not_reproduced(&mut gate, 2, &flaky, false, 30.0));
        assert_eq!((gate.state, gate.failing_tests.clone()), (GateState::Closed, vec!["b".to_owned()]));
        assert!(gate.warning.as_deref().unwrap_or_default().contains("a in build 2 did not reproduce"), "{gate:?}");
        assert!(failure_not_reproduced(&mut gate, 2, &["a".to_owned(), "b".to_owned()], true, 31.0));
        assert_eq!((gate.state, gate.since, gate.failing_tests.len()), (GateState::Open, Some(31.0), 0));
        assert!(gate.warning.is_some(), "the page says why it opened");
    }

    #[test]
    fn fixes_and_reverts_are_let_through() {
        let check = |message: &str, expected: bool| assert_eq!(lets_through(message, "[fix]"), expected, "{message:?}");
        check("Chat: fix the emoji regression [fix]", true);
        check("Revert \"Chat: faster emoji\"\n\nThis reverts commit abc.", true);
        check("Chat: faster emoji", false);
        check("Reverted nothing", false);
        check("Revert \"unterminated", false);
    }
}
