//! Unit tests of the scheduler core: retries and flakes, give-ups and benching, shard
//! sizing, splitting running leases, restored results.

use super::*;
use crate::plan::{BuildPlan, PlanIndex, PlannedTest, planned};

fn plan() -> BuildPlan {
    let test = |id: &str, depends_on: &[usize]| PlannedTest {
        id: id.into(),
        depends_on: depends_on.to_vec(),
        dependents: vec![],
        estimate_s: 1.0,
        estimate_known: true,
        priority_s: 0.0,
    };
    BuildPlan::from_tests(vec![test("a", &[]), test("b", &[0]), test("c", &[]), test("d", &[2])], 0.0)
}

fn restored(test_id: &str, status: TestStatus, attempt: u32, retried: bool) -> RestoredResult {
    RestoredResult { test_id: test_id.into(), status, attempt, retried, gave_up: false, quarantined: false }
}

fn single(id: &str) -> BuildPlan {
    let test = PlannedTest {
        id: id.into(),
        depends_on: vec![],
        dependents: vec![],
        estimate_s: 1.0,
        estimate_known: true,
        priority_s: 0.0,
    };
    BuildPlan::from_tests(vec![test], 0.0)
}

/// The builds that `decisions` finish, with their verdicts.
fn finished(decisions: &[Decision]) -> Vec<(BuildId, Verdict)> {
    decisions
        .iter()
        .filter_map(|decision| match decision {
            Decision::BuildFinished { build, verdict, .. } => Some((*build, verdict.clone())),
            _ => None,
        })
        .collect()
}

fn ids(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|&id| id.to_owned()).collect()
}

fn accepted(report: Result<Report, SchedulerError>) -> (Outcome, Vec<Decision>) {
    match report.unwrap() {
        Report::Accepted { outcome, decisions, .. } => (outcome, decisions),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_failed_test_is_retried_on_another_worker_and_a_pass_there_makes_it_flaky() {
    let mut scheduler = Scheduler::new(SchedulerConfig::default());
    scheduler.worker_joined(WorkerId(1), 0.0);
    scheduler.worker_joined(WorkerId(2), 0.0);
    scheduler.add_build(BuildId(1), single("t"), 0.0).unwrap();
    let grant = scheduler.request_work(WorkerId(1), 0.0).0.unwrap();
    let (outcome, decisions) =
        accepted(scheduler.test_finished(grant.lease, WorkerId(1), "t", TestStatus::Failed, 1.0));
    assert_eq!(outcome, Outcome::Retry);
    assert!(decisions.iter().any(|d| matches!(d, Decision::Retrying { attempt: 1, .. })), "{decisions:?}");
    scheduler.lease_finished(grant.lease, WorkerId(1), 1.0).unwrap();
    // The worker it failed on is passed over while another can take it.
    assert_eq!(scheduler.request_work(WorkerId(1), 2.0).0, None);
    let retry = scheduler.request_work(WorkerId(2), 2.0).0.expect("the other worker gets the retry");
    let (outcome, decisions) =
        accepted(scheduler.test_finished(retry.lease, WorkerId(2), "t", TestStatus::Passed, 3.0));
    assert_eq!(outcome, Outcome::Final { flaky: true });
    assert_eq!(finished(&decisions), [(BuildId(1), Verdict::Green)]);
}

#[test]
fn a_test_that_fails_every_attempt_makes_the_build_red_and_one_worker_can_retry_alone() {
    let mut scheduler = Scheduler::new(SchedulerConfig { retries: 2, ..SchedulerConfig::default() });
    scheduler.worker_joined(WorkerId(1), 0.0);
    scheduler.add_build(BuildId(1), single("t"), 0.0).unwrap();
    for attempt in 1..=3u32 {
        let now = f64::from(attempt);
        let grant = scheduler.request_work(WorkerId(1), now).0.expect("the only worker retries");
        let (outcome, decisions) =
            accepted(scheduler.test_finished(grant.lease, WorkerId(1), "t", TestStatus::Failed, now));
        if attempt < 3 {
            assert_eq!(outcome, Outcome::Retry);
        } else {
            assert_eq!(outcome, Outcome::Final { flaky: false });
            let red = Verdict::Red { failed: vec!["t".into()] };
            assert_eq!(finished(&decisions), [(BuildId(1), red)]);
        }
        scheduler.lease_finished(grant.lease, WorkerId(1), now).unwrap();
    }
}

#[test]
fn tests_no_worker_could_run_end_the_build_in_error_not_red_and_bench_the_worker() {
    let config =
        SchedulerConfig { max_attempts: 2, infra_failures_to_bench: 2, bench_s: 60.0, ..SchedulerConfig::default() };
    let mut scheduler = Scheduler::new(config);
    scheduler.worker_joined(WorkerId(1), 0.0);
    scheduler.add_build(BuildId(1), single("t"), 0.0).unwrap();
    // The shard ends twice without its result (a runner crash, a failed checkout).
    let first = scheduler.request_work(WorkerId(1), 0.0).0.unwrap();
    let decisions = scheduler.lease_finished(first.lease, WorkerId(1), 1.0).unwrap();
    assert!(decisions.contains(&Decision::WorkAvailable));
    let second = scheduler.request_work(WorkerId(1), 1.0).0.unwrap();
    let decisions = scheduler.lease_finished(second.lease, WorkerId(1), 2.0).unwrap();
    let error = Verdict::Error { gave_up: vec!["t".into()] };
    assert_eq!(finished(&decisions), [(BuildId(1), error)], "{decisions:?}");
    // Two shards lost in a row: no work for a minute.
    scheduler.add_build(BuildId(2), single("u"), 2.0).unwrap();
    assert_eq!(scheduler.request_work(WorkerId(1), 30.0).0, None);
    assert!(scheduler.request_work(WorkerId(1), 62.5).0.is_some());
}

#[test]
fn a_lone_worker_takes_no_more_than_the_largest_shard_and_a_worker_joining_later_shares_the_rest() {
    let tests = (0..100)
        .map(|index| PlannedTest {
            id: format!("t{index}"),
            depends_on: vec![],
            dependents: vec![],
            estimate_s: 60.0,
            estimate_known: true,
            priority_s: 0.0,
        })
        .collect();
    let mut scheduler = Scheduler::new(SchedulerConfig::default());
    scheduler.worker_joined(WorkerId(1), 0.0);
    scheduler.add_build(BuildId(1), BuildPlan::from_tests(tests, 1.0), 0.0).unwrap();
    let first = scheduler.request_work(WorkerId(1), 0.0).0.unwrap();
    assert_eq!(first.tests.len(), 10, "600 s of the 6000 s, not 80% of it");
    scheduler.worker_joined(WorkerId(2), 5.0);
    let second = scheduler.request_work(WorkerId(2), 5.0).0.unwrap();
    assert!(!second.tests.is_empty());
}

#[test]
fn the_last_tests_are_split_evenly_among_the_free_workers_not_in_minimum_size_shards() {
    // One 10 s test and 40 of 0.1 s; 1.5 s overhead, so a shard is worth 3 s of work.
    let mut tests = vec![planned("long", 10.0, true)];
    tests.extend((0..40).map(|index| planned(&format!("tiny{index}"), 0.1, true)));
    let mut scheduler = Scheduler::new(SchedulerConfig::default());
    for worker in 1..=3 {
        scheduler.worker_joined(WorkerId(worker), 0.0);
    }
    scheduler.add_build(BuildId(1), BuildPlan::from_tests(tests, 1.5), 0.0).unwrap();
    let first = scheduler.request_work(WorkerId(1), 0.0).0.unwrap();
    assert_eq!(first.tests, ["long"], "the long test alone");
    // The other two share the 4 s of tiny tests: both end at 3.5 s. Padded to 3 s, the
    // second would end at 4.5 s and the third at 2.5 s.
    let second = scheduler.request_work(WorkerId(2), 0.0).0.unwrap();
    let third = scheduler.request_work(WorkerId(3), 0.0).0.unwrap();
    assert_eq!((second.tests.len(), third.tests.len()), (20, 20));
}

/// The first two shards cut from a 10 s test and forty of 1 s on two workers, with noisy
/// history (Finer sizing), when a shard costs `overhead_s`.
fn first_two_shards(overhead_s: Seconds) -> (Vec<String>, Vec<String>) {
    let mut tests = vec![planned("long", 10.0, true)];
    tests.extend((0..40).map(|index| planned(&format!("quick{index}"), 1.0, true)));
    let mut scheduler =
        Scheduler::new(SchedulerConfig { shard_sizing: ShardSizing::Finer, ..SchedulerConfig::default() });
    scheduler.worker_joined(WorkerId(1), 0.0);
    scheduler.worker_joined(WorkerId(2), 0.0);
    scheduler.add_build(BuildId(1), BuildPlan::from_tests(tests, overhead_s), 0.0).unwrap();
    let first = scheduler.request_work(WorkerId(1), 0.0).0.unwrap();
    let second = scheduler.request_work(WorkerId(2), 0.0).0.unwrap();
    (first.tests, second.tests)
}

#[test]
fn where_shards_are_cheap_no_test_waits_behind_one_whose_length_is_in_doubt() {
    // A warm runner's shard costs 0.03 s: the long test (10 s, give or take 5) goes alone,
    // and the quick ones behind it start at once on the other worker, still several a
    // shard (their doubt adds up slowly).
    let (first, second) = first_two_shards(0.03);
    assert_eq!(first, ["long"]);
    assert!(second.len() > 1 && second.iter().all(|id| id.starts_with("quick")), "{second:?}");
    // A cold runner's 1.5 s shard is worth more than that doubt: the long test's shard
    // takes quick tests after it, as before.
    let (first, _) = first_two_shards(1.5);
    assert!(first.len() > 1 && first[0] == "long", "{first:?}");
}

#[test]
fn new_tests_run_first_in_shards_of_their_own_no_larger_than_the_reserve() {
    // Ten known tests of 30 s, ten new ones borrowing an estimate of 4 s.
    let mut tests: Vec<PlannedTest> = (0..10).map(|index| planned(&format!("known{index}"), 30.0, true)).collect();
    tests.extend((0..10).map(|index| planned(&format!("new{index}"), 4.0, false)));
    let mut scheduler = Scheduler::new(SchedulerConfig::default());
    scheduler.worker_joined(WorkerId(1), 0.0);
    scheduler.worker_joined(WorkerId(2), 0.0);
    scheduler.add_build(BuildId(1), BuildPlan::from_tests(tests, 1.0), 0.0).unwrap();
    let is_new = |id: &String| id.starts_with("new");
    // Each worker's share is 170 s; a fifth of it (34 s) may be new tests: eight of them.
    let first = scheduler.request_work(WorkerId(1), 0.0).0.unwrap();
    assert_eq!(first.tests.len(), 8);
    assert!(first.tests.iter().all(is_new), "{:?}", first.tests);
    // The other two new tests, and nothing else, go to the next worker to ask.
    let second = scheduler.request_work(WorkerId(2), 0.0).0.unwrap();
    assert_eq!(second.tests.len(), 2);
    assert!(second.tests.iter().all(is_new), "{:?}", second.tests);
    for id in &second.tests {
        accepted(scheduler.test_finished(second.lease, WorkerId(2), id, TestStatus::Passed, 9.0));
    }
    scheduler.lease_finished(second.lease, WorkerId(2), 9.0).unwrap();
    let third = scheduler.request_work(WorkerId(2), 9.0).0.unwrap();
    assert!(!third.tests.is_empty() && !third.tests.iter().any(is_new), "{:?}", third.tests);
}

#[test]
fn tests_a_worker_lost_go_to_another_worker_first() {
    let mut scheduler = Scheduler::new(SchedulerConfig::default());
    scheduler.worker_joined(WorkerId(1), 0.0);
    scheduler.worker_joined(WorkerId(2), 0.0);
    scheduler.add_build(BuildId(1), single("t"), 0.0).unwrap();
    let grant = scheduler.request_work(WorkerId(1), 0.0).0.unwrap();
    // Its checkout failed: the shard ends without a result.
    scheduler.lease_finished(grant.lease, WorkerId(1), 0.1).unwrap();
    assert_eq!(scheduler.request_work(WorkerId(1), 0.2).0, None, "not straight back to the worker that lost it");
    let again = scheduler.request_work(WorkerId(2), 0.3).0.expect("the other worker takes it");
    assert_eq!(again.tests, ["t"]);
}

#[test]
fn a_test_can_be_sent_to_other_workers_than_those_it_failed_on_before() {
    let mut scheduler = Scheduler::new(SchedulerConfig::default());
    scheduler.worker_joined(WorkerId(1), 0.0);
    scheduler.worker_joined(WorkerId(2), 0.0);
    scheduler.add_build(BuildId(1), single("t"), 0.0).unwrap();
    scheduler.prefer_other_workers(BuildId(1), "t", &[WorkerId(1)]);
    assert_eq!(scheduler.request_work(WorkerId(1), 0.1).0, None, "not to the worker it failed on");
    let grant = scheduler.request_work(WorkerId(2), 0.2).0.expect("the other worker takes it");
    assert_eq!(grant.tests, ["t"]);
    // Alone, a worker runs it anyway.
    let mut alone = Scheduler::new(SchedulerConfig::default());
    alone.worker_joined(WorkerId(1), 0.0);
    alone.add_build(BuildId(1), single("t"), 0.0).unwrap();
    alone.prefer_other_workers(BuildId(1), "t", &[WorkerId(1)]);
    assert!(alone.request_work(WorkerId(1), 0.1).0.is_some());
}

#[test]
fn a_last_shard_is_cut_at_the_pace_of_the_tests_estimated_alike_not_the_builds_drift() {
    // One test of 20 s and sixteen of 1 s; a shard costs 1 s, so a shard under 10 s of
    // work holds nothing back (it is its worker's last).
    let mut tests = vec![planned("long", 20.0, true)];
    tests.extend((0..16).map(|index| planned(&format!("short{index}"), 1.0, true)));
    // Cut finer (as where estimates are not trusted), and no lease gives back its end.
    let config =
        SchedulerConfig { shard_sizing: ShardSizing::Finer, split_running_leases: false, ..SchedulerConfig::default() };
    let mut scheduler = Scheduler::new(config);
    scheduler.worker_joined(WorkerId(1), 0.0);
    scheduler.worker_joined(WorkerId(2), 0.0);
    scheduler.add_build(BuildId(1), BuildPlan::from_tests(tests, 1.0), 0.0).unwrap();
    let long = scheduler.request_work(WorkerId(1), 0.0).0.unwrap();
    assert_eq!(long.tests, ["long"]);
    let shorts = scheduler.request_work(WorkerId(2), 0.0).0.unwrap();
    assert_eq!(shorts.tests.len(), 12);
    // The first five short tests take 2 s each, the long one 10 s: the build's drift is 20 s
    // for 25 estimated (0.8), but the tests estimated like those left took twice theirs.
    for (at, id) in shorts.tests.iter().take(5).enumerate() {
        let report =
            ReportedTest { test_id: id, status: TestStatus::Passed, quarantined: false, duration_s: Some(2.0) };
        scheduler.report(shorts.lease, WorkerId(2), &[report], 3.0 + 2.0 * at as f64).unwrap();
    }
    let report =
        ReportedTest { test_id: "long", status: TestStatus::Passed, quarantined: false, duration_s: Some(10.0) };
    scheduler.report(long.lease, WorkerId(1), &[report], 11.0).unwrap();
    scheduler.lease_finished(long.lease, WorkerId(1), 11.0).unwrap();
    // Four short tests are left, a last shard's worth: at the drift, worker 1 would take them
    // all; at the pace of the tests estimated like them (2.5 times the drift) it takes two,
    // and the other two wait for whichever worker is free first.
    let last = scheduler.request_work(WorkerId(1), 11.0).0.unwrap();
    assert_eq!(last.tests.len(), 2, "{:?}", last.tests);
    assert_eq!(scheduler.queued(), (2, 2.0));
}

/// A scheduler that cuts a lone worker's shard from everything ready (up to
/// `max_shard_s`), holding nothing back: the shapes of the split tests below are exact.
fn greedy(max_shard_s: Seconds) -> Scheduler {
    Scheduler::new(SchedulerConfig {
        tail_fraction: 0.0,
        reserve_sigmas: 0.0,
        max_shard_s,
        shard_sizing: ShardSizing::Finer,
        ..SchedulerConfig::default()
    })
}

fn tens(count: usize) -> BuildPlan {
    BuildPlan::from_tests((0..count).map(|index| planned(&format!("t{index}"), 10.0, true)).collect(), 1.0)
}

/// A lone worker leases the whole of `plan` (tests of 10 s) and reports its first test
/// after 20 s, twice its estimate; then a second worker joins. The first lease.
fn first_test_took_twice_its_estimate(scheduler: &mut Scheduler, plan: BuildPlan) -> LeaseGrant {
    scheduler.worker_joined(WorkerId(1), 0.0);
    scheduler.add_build(BuildId(1), plan, 0.0).unwrap();
    let first = scheduler.request_work(WorkerId(1), 0.0).0.unwrap();
    assert_eq!(first.tests, ["t0", "t1", "t2", "t3"]);
    accepted(scheduler.test_finished(first.lease, WorkerId(1), "t0", TestStatus::Passed, 21.0));
    scheduler.worker_joined(WorkerId(2), 21.0);
    first
}

#[test]
fn an_idle_worker_takes_over_the_unstarted_end_of_a_lease_running_late() {
    let mut scheduler = greedy(600.0);
    // Its first test took 20 s, not 10: at that pace it ends at 81 s.
    let first = first_test_took_twice_its_estimate(&mut scheduler, tens(4));
    let (second, decisions) = scheduler.request_work(WorkerId(2), 21.0);
    // Kept t1 and t2, it ends at 61 s; the newcomer runs t3 by 62 s.
    let shrunk = Decision::LeaseShrunk {
        build: BuildId(1),
        lease: first.lease,
        worker: WorkerId(1),
        withdrawn: ids(&["t3"]),
        stopped: None,
    };
    assert_eq!(decisions, [shrunk, Decision::WorkAvailable]);
    let second = second.expect("the withdrawn test goes to the idle worker");
    assert_eq!(second.tests, ["t3"]);
    // The holder ran t3 before it heard: stale, the other worker's result counts.
    assert_eq!(
        scheduler.test_finished(first.lease, WorkerId(1), "t3", TestStatus::Failed, 62.0).unwrap(),
        Report::Stale
    );
    accepted(scheduler.test_finished(first.lease, WorkerId(1), "t1", TestStatus::Passed, 41.0));
    accepted(scheduler.test_finished(first.lease, WorkerId(1), "t2", TestStatus::Passed, 61.0));
    // Ending after the kept tests is no infrastructure failure: nothing goes back.
    let ended = scheduler.lease_finished(first.lease, WorkerId(1), 61.0).unwrap();
    assert!(ended.is_empty(), "{ended:?}");
    let report = scheduler.test_finished(second.lease, WorkerId(2), "t3", TestStatus::Passed, 62.0).unwrap();
    let Report::Accepted { attempt, decisions, .. } = report else { panic!("{report:?}") };
    assert_eq!(attempt, 1, "a withdrawn test never started: its first attempt is the taker's");
    assert_eq!(finished(&decisions), [(BuildId(1), Verdict::Green)]);
}

/// A lone worker leases a build of three 10 s tests whole, and reports the first at 11 s
/// (on time). The scheduler and that lease.
fn three_tens_leased_and_one_reported() -> (Scheduler, LeaseGrant) {
    let mut scheduler = greedy(600.0);
    scheduler.worker_joined(WorkerId(1), 0.0);
    scheduler.add_build(BuildId(1), tens(3), 0.0).unwrap();
    let first = scheduler.request_work(WorkerId(1), 0.0).0.unwrap();
    assert_eq!(first.tests, ["t0", "t1", "t2"]);
    accepted(scheduler.test_finished(first.lease, WorkerId(1), "t0", TestStatus::Passed, 11.0));
    (scheduler, first)
}

#[test]
fn an_idle_worker_takes_over_the_end_of_a_lease_whose_running_test_is_far_past_its_estimate() {
    // t0 took its 10 s; t1 has run 49 s of its 10 when a second worker joins and asks. At
    // the lease's pace it would end now; taken to need as long again, t1 ends at 109 s, and
    // t2 is better run at once elsewhere.
    let (mut scheduler, first) = three_tens_leased_and_one_reported();
    scheduler.worker_joined(WorkerId(2), 60.0);
    let (second, decisions) = scheduler.request_work(WorkerId(2), 60.0);
    let shrunk = Decision::LeaseShrunk {
        build: BuildId(1),
        lease: first.lease,
        worker: WorkerId(1),
        withdrawn: ids(&["t2"]),
        stopped: None,
    };
    assert_eq!(decisions, [shrunk, Decision::WorkAvailable]);
    assert_eq!(second.expect("the test given back").tests, ["t2"]);
}

/// A build of eight 10 s tests (shards cost 1 s) cut fitted for workers 1 and 2: one shard
/// of four tests each, both granted at 0 s, running from 1 s to 41 s. Worker 3, when
/// given, joins later.
fn two_fitted_shards(third_worker: bool) -> (Scheduler, LeaseGrant, LeaseGrant) {
    let mut scheduler =
        Scheduler::new(SchedulerConfig { shard_sizing: ShardSizing::Fitted, ..SchedulerConfig::default() });
    scheduler.worker_joined(WorkerId(1), 0.0);
    scheduler.worker_joined(WorkerId(2), 0.0);
    scheduler.add_build(BuildId(1), tens(8), 0.0).unwrap();
    let first = scheduler.request_work(WorkerId(1), 0.0).0.unwrap();
    let second = scheduler.request_work(WorkerId(2), 0.0).0.unwrap();
    assert_eq!((first.tests.len(), second.tests.len()), (4, 4));
    if third_worker {
        scheduler.worker_joined(WorkerId(3), 5.0);
    }
    (scheduler, first, second)
}

fn shrinks(decisions: &[Decision]) -> Vec<&Decision> {
    decisions.iter().filter(|decision| matches!(decision, Decision::LeaseShrunk { .. })).collect()
}

#[test]
fn a_retry_waits_for_the_test_another_worker_runs_not_for_its_whole_shard() {
    let (mut scheduler, first, second) = two_fitted_shards(false);
    let failing = first.tests[0].as_str();
    // Worker 1's first test fails at 11 s. Worker 2 has reported nothing yet (its runner
    // may write its report only at exit): its lease cannot be split.
    let (outcome, decisions) =
        accepted(scheduler.test_finished(first.lease, WorkerId(1), failing, TestStatus::Failed, 11.0));
    assert_eq!(outcome, Outcome::Retry);
    assert!(shrinks(&decisions).is_empty(), "{decisions:?}");
    // Its first result, at 11 s: it keeps the test it runs now and gives back the rest.
    let (_, decisions) =
        accepted(scheduler.test_finished(second.lease, WorkerId(2), &second.tests[0], TestStatus::Passed, 11.0));
    let shrunk = Decision::LeaseShrunk {
        build: BuildId(1),
        lease: second.lease,
        worker: WorkerId(2),
        withdrawn: second.tests[2..].to_vec(),
        stopped: None,
    };
    assert_eq!(shrinks(&decisions), [&shrunk]);
    accepted(scheduler.test_finished(second.lease, WorkerId(2), &second.tests[1], TestStatus::Passed, 21.0));
    scheduler.lease_finished(second.lease, WorkerId(2), 21.0).unwrap();
    let next = scheduler.request_work(WorkerId(2), 21.0).0.expect("the retry and the tests given back");
    assert_eq!(next.tests[0], failing, "the retry runs first: {next:?}");
    assert!(second.tests[2..].iter().all(|test| next.tests.contains(test)), "{next:?}");
    // It fails again at 32 s: the build is red then, not when worker 1's shard ends (41 s).
    let report = scheduler.test_finished(next.lease, WorkerId(2), failing, TestStatus::Failed, 32.0).unwrap();
    let Report::Accepted { outcome, fails_build, .. } = report else { panic!("{report:?}") };
    assert_eq!((outcome, fails_build), (Outcome::Final { flaky: false }, true));
}

#[test]
fn a_retry_goes_to_a_free_worker_and_no_lease_is_split_for_it() {
    let (mut scheduler, first, second) = two_fitted_shards(true);
    let failing = first.tests[0].as_str();
    accepted(scheduler.test_finished(second.lease, WorkerId(2), &second.tests[0], TestStatus::Passed, 10.0));
    let (_, decisions) = accepted(scheduler.test_finished(first.lease, WorkerId(1), failing, TestStatus::Failed, 11.0));
    assert!(shrinks(&decisions).is_empty(), "{decisions:?}");
    assert!(decisions.contains(&Decision::WorkAvailable));
    let retry = scheduler.request_work(WorkerId(3), 11.0).0.expect("the free worker takes the retry");
    assert_eq!(retry.tests[0], failing);
}

#[test]
fn a_retry_splits_no_lease_when_splitting_is_off_or_only_the_worker_it_failed_on_is_left() {
    let config =
        SchedulerConfig { shard_sizing: ShardSizing::Finer, split_running_leases: false, ..SchedulerConfig::default() };
    for (config, workers) in [(config, 2), (SchedulerConfig::default(), 1)] {
        let mut scheduler = Scheduler::new(config);
        for worker in 1..=workers {
            scheduler.worker_joined(WorkerId(worker), 0.0);
        }
        scheduler.add_build(BuildId(1), tens(6), 0.0).unwrap();
        let grants: Vec<LeaseGrant> =
            (1..=workers).map(|worker| scheduler.request_work(WorkerId(worker), 0.0).0.unwrap()).collect();
        if let Some(other) = grants.get(1) {
            accepted(scheduler.test_finished(other.lease, WorkerId(2), &other.tests[0], TestStatus::Passed, 10.0));
        }
        let failing = grants[0].tests[0].as_str();
        let (outcome, decisions) =
            accepted(scheduler.test_finished(grants[0].lease, WorkerId(1), failing, TestStatus::Failed, 11.0));
        assert_eq!(outcome, Outcome::Retry);
        assert!(shrinks(&decisions).is_empty(), "{decisions:?}");
    }
}

#[test]
fn a_worker_joining_after_a_lone_worker_took_the_build_is_woken_by_its_first_result() {
    let mut scheduler =
        Scheduler::new(SchedulerConfig { shard_sizing: ShardSizing::Fitted, ..SchedulerConfig::default() });
    scheduler.worker_joined(WorkerId(1), 0.0);
    scheduler.add_build(BuildId(1), tens(4), 0.0).unwrap();
    let first = scheduler.request_work(WorkerId(1), 0.0).0.unwrap();
    assert_eq!(first.tests.len(), 4, "alone, it takes the whole build");
    scheduler.worker_joined(WorkerId(2), 2.0);
    assert_eq!(scheduler.request_work(WorkerId(2), 2.0), (None, vec![]), "nothing to split yet");
    let (_, decisions) = accepted(scheduler.test_finished(first.lease, WorkerId(1), "t0", TestStatus::Passed, 11.0));
    assert!(decisions.contains(&Decision::WorkAvailable), "the waiting worker asks again: {decisions:?}");
    let (second, _) = scheduler.request_work(WorkerId(2), 11.0);
    assert!(second.is_some_and(|second| !second.tests.is_empty()), "it takes over the end of the first lease");
    // Later results wake nobody: the idle worker has asked since.
    let (_, decisions) = accepted(scheduler.test_finished(first.lease, WorkerId(1), "t1", TestStatus::Passed, 21.0));
    assert!(!decisions.contains(&Decision::WorkAvailable), "{decisions:?}");
}

#[test]
fn a_lease_that_has_reported_nothing_yet_is_not_split() {
    // Its runner may write its report only at exit: the scheduler knows neither its
    // pace nor which test it runs, and the worker could not stop after the kept ones.
    let mut scheduler = greedy(600.0);
    scheduler.worker_joined(WorkerId(1), 0.0);
    scheduler.add_build(BuildId(1), tens(4), 0.0).unwrap();
    let first = scheduler.request_work(WorkerId(1), 0.0).0.unwrap();
    scheduler.worker_joined(WorkerId(2), 21.0);
    assert_eq!(scheduler.request_work(WorkerId(2), 21.0), (None, vec![]));
    accepted(scheduler.test_finished(first.lease, WorkerId(1), "t0", TestStatus::Passed, 21.0));
    let (second, _) = scheduler.request_work(WorkerId(2), 21.0);
    assert_eq!(second.expect("once it reported, its end is taken over").tests, ["t3"]);
}

#[test]
fn splitting_can_be_switched_off() {
    let mut scheduler = Scheduler::new(SchedulerConfig { split_running_leases: false, ..greedy(600.0).config });
    first_test_took_twice_its_estimate(&mut scheduler, tens(4));
    assert_eq!(scheduler.request_work(WorkerId(2), 21.0), (None, vec![]));
}

#[test]
fn a_lease_whose_runner_reports_only_at_exit_is_never_split() {
    let mut scheduler = greedy(600.0);
    let mut plan = tens(4);
    plan.leases_splittable = false;
    first_test_took_twice_its_estimate(&mut scheduler, plan);
    assert_eq!(scheduler.request_work(WorkerId(2), 21.0), (None, vec![]));
}

#[test]
fn a_lease_running_late_gives_back_what_it_cannot_run_by_the_common_finish() {
    let mut scheduler = greedy(40.0);
    scheduler.worker_joined(WorkerId(1), 0.0);
    scheduler.add_build(BuildId(1), tens(6), 0.0).unwrap();
    let first = scheduler.request_work(WorkerId(1), 0.0).0.unwrap();
    assert_eq!(first.tests, ["t0", "t1", "t2", "t3"], "no shard above 40 s");
    // Its first test took 30 s: at its pace (2.25 against the build's 2) it ends at 98.5 s,
    // while the newcomer and the two tests still queued would end at 72 s.
    accepted(scheduler.test_finished(first.lease, WorkerId(1), "t0", TestStatus::Passed, 31.0));
    scheduler.worker_joined(WorkerId(2), 31.0);
    let (second, decisions) = scheduler.request_work(WorkerId(2), 31.0);
    let shrunk = Decision::LeaseShrunk {
        build: BuildId(1),
        lease: first.lease,
        worker: WorkerId(1),
        withdrawn: ids(&["t2", "t3"]),
        stopped: None,
    };
    assert_eq!(decisions, [shrunk, Decision::WorkAvailable]);
    let second = second.unwrap();
    assert!(second.tests.iter().all(|test| ["t2", "t3", "t4", "t5"].contains(&test.as_str())), "{:?}", second.tests);
    assert_eq!(
        scheduler.test_finished(first.lease, WorkerId(1), "t2", TestStatus::Passed, 60.0).unwrap(),
        Report::Stale
    );
}

#[test]
fn restored_results_count_as_done_and_unblock_or_skip_their_dependants() {
    let mut scheduler = Scheduler::new(SchedulerConfig::default());
    scheduler.worker_joined(WorkerId(1), 0.0);
    scheduler.add_build(BuildId(7), plan(), 0.0).unwrap();
    let decisions = scheduler.restore(
        BuildId(7),
        &[
            restored("a", TestStatus::Passed, 1, false),
            restored("c", TestStatus::Failed, 1, true),
            restored("c", TestStatus::Failed, 2, false),
            restored("gone", TestStatus::Passed, 1, false),
        ],
    );
    assert!(decisions.iter().any(|decision| matches!(decision, Decision::Skipped { test_id, .. } if test_id == "d")));
    // Only b is left: a passed before the restart, c failed, d is skipped.
    let (grant, _) = scheduler.request_work(WorkerId(1), 1.0);
    let grant = grant.expect("b is ready");
    assert_eq!(grant.tests, ["b"]);
    let report = scheduler.test_finished(grant.lease, WorkerId(1), "b", TestStatus::Passed, 2.0).unwrap();
    let Report::Accepted { attempt, outcome, fails_build, decisions } = report else { panic!("{report:?}") };
    assert_eq!((attempt, outcome, fails_build), (1, Outcome::Final { flaky: false }, false));
    assert_eq!(finished(&decisions), [(BuildId(7), Verdict::Red { failed: vec!["c".into()] })]);
}

#[test]
fn a_worker_that_asks_for_work_while_holding_a_lease_has_that_lease_taken_back_by_name() {
    let (mut scheduler, first) = three_tens_leased_and_one_reported();
    // Its shard process died and the worker came back: it asks again, still holding the lease.
    let (second, decisions) = scheduler.request_work(WorkerId(1), 12.0);
    let taken_back =
        Decision::LeaseTakenBack { build: BuildId(1), lease: first.lease, worker: WorkerId(1), requeued: 2 };
    assert_eq!(decisions.first(), Some(&taken_back), "{decisions:?}");
    assert!(decisions.contains(&Decision::WorkAvailable), "{decisions:?}");
    // Alone, it takes the two unreported tests again; the old lease's late result is stale.
    let second = second.expect("the only worker takes its tests back");
    assert_eq!(second.tests, ["t1", "t2"]);
    assert_eq!(
        scheduler.test_finished(first.lease, WorkerId(1), "t1", TestStatus::Passed, 13.0).unwrap(),
        Report::Stale
    );
    // A lease its worker finishes is not taken back.
    let ended = scheduler.lease_finished(second.lease, WorkerId(1), 14.0).unwrap();
    assert!(!ended.iter().any(|decision| matches!(decision, Decision::LeaseTakenBack { .. })), "{ended:?}");
}

/// One attempt of a test in [`check_verdict`]: its status, and whether it was reported
/// quarantined.
type Attempt = (TestStatus, bool);

/// Tests `t0`, `t1`, … of 10 s run on a lone worker that leases every ready test at once
/// and reports each test's next scripted attempt in one batch (a test whose script is spent
/// goes unreported, so it is given up when its lease ends: one attempt allowed; a failure is
/// retried once). Checks which reports said `fails_build` and the verdict.
fn check_verdict(flaky_fails_build: bool, scripts: &[&[Attempt]], expected_fails_build: &[&str], expected: Verdict) {
    let mut scheduler =
        Scheduler::new(SchedulerConfig { max_attempts: 1, retries: 1, flaky_fails_build, ..greedy(600.0).config });
    scheduler.worker_joined(WorkerId(1), 0.0);
    scheduler.add_build(BuildId(1), tens(scripts.len()), 0.0).unwrap();
    let mut next_attempt = vec![0; scripts.len()];
    let (mut fails_build, mut verdicts) = (Vec::new(), Vec::new());
    for round in 0..scripts.len() * 3 {
        let now = round as f64 * 100.0;
        let Some(grant) = scheduler.request_work(WorkerId(1), now).0 else { break };
        let mut batch = Vec::new();
        for test_id in &grant.tests {
            let test: usize = test_id[1..].parse().unwrap();
            if let Some(&(status, quarantined)) = scripts[test].get(next_attempt[test]) {
                next_attempt[test] += 1;
                batch.push(ReportedTest { test_id, status, quarantined, duration_s: None });
            }
        }
        let reports = scheduler.report(grant.lease, WorkerId(1), &batch, now + 50.0).unwrap();
        let mut decisions = Vec::new();
        for (result, report) in batch.iter().zip(reports) {
            let Report::Accepted { outcome, fails_build: counts, decisions: more, .. } = report else {
                panic!("{report:?}")
            };
            assert!(!counts || matches!(outcome, Outcome::Final { .. }), "a retried failure counts for nothing yet");
            if counts {
                fails_build.push(result.test_id.to_owned());
            }
            decisions.extend(more);
        }
        decisions.extend(scheduler.lease_finished(grant.lease, WorkerId(1), now + 60.0).unwrap());
        verdicts.extend(decisions.into_iter().filter_map(|decision| match decision {
            Decision::BuildFinished { verdict, .. } => Some(verdict),
            _ => None,
        }));
    }
    assert_eq!(fails_build, expected_fails_build, "{scripts:?}");
    assert_eq!(verdicts, [expected], "{scripts:?}");
}

#[test]
fn the_verdict_counts_final_failures_not_quarantined_and_flaky_passes_only_when_configured() {
    use TestStatus::{Failed, Passed};
    let red = |ids: &[&str]| Verdict::Red { failed: self::ids(ids) };
    let gave_up = |ids: &[&str]| Verdict::Error { gave_up: self::ids(ids) };
    // A quarantined failure alone: green.
    check_verdict(false, &[&[(Failed, true), (Failed, true)]], &[], Verdict::Green);
    // Only the final attempt's quarantine counts.
    check_verdict(false, &[&[(Failed, true), (Failed, false)]], &["t0"], red(&["t0"]));
    check_verdict(false, &[&[(Failed, false), (Failed, true)]], &[], Verdict::Green);
    // A quarantined failure and a test no worker could run: error, not red (nor green).
    check_verdict(false, &[&[(Failed, true), (Failed, true)], &[]], &[], gave_up(&["t1"]));
    // A failure that counts outweighs a test given up on.
    check_verdict(false, &[&[(Failed, false), (Failed, false)], &[]], &["t0"], red(&["t0"]));
    // A flaky pass: green, unless flaky tests fail builds (and then only out of quarantine).
    check_verdict(false, &[&[(Failed, false), (Passed, false)]], &[], Verdict::Green);
    check_verdict(true, &[&[(Failed, false), (Passed, false)]], &["t0"], red(&["t0"]));
    check_verdict(true, &[&[(Failed, false), (Passed, true)]], &[], Verdict::Green);
    // Listed in plan order, whatever order they ended in.
    check_verdict(
        true,
        &[&[(Failed, false), (Passed, false)], &[(Failed, false), (Failed, false)], &[(Passed, false)]],
        &["t0", "t1"],
        red(&["t0", "t1"]),
    );
}

#[test]
fn a_restored_flaky_pass_or_quarantined_failure_counts_as_a_reported_one_would() {
    let check = |flaky_fails_build: bool, restored_results: &[RestoredResult], expected: Verdict| {
        let mut scheduler = Scheduler::new(SchedulerConfig { flaky_fails_build, ..SchedulerConfig::default() });
        scheduler.add_build(BuildId(1), single("t"), 0.0).unwrap();
        let decisions = scheduler.restore(BuildId(1), restored_results);
        assert_eq!(decisions.len(), 1, "{decisions:?}");
        assert_eq!(finished(&decisions), [(BuildId(1), expected)]);
    };
    let failed_then = |status: TestStatus, quarantined: bool| {
        vec![
            restored("t", TestStatus::Failed, 1, true),
            RestoredResult { quarantined, ..restored("t", status, 2, false) },
        ]
    };
    let red = Verdict::Red { failed: ids(&["t"]) };
    check(false, &failed_then(TestStatus::Passed, false), Verdict::Green);
    check(true, &failed_then(TestStatus::Passed, false), red.clone());
    check(true, &failed_then(TestStatus::Passed, true), Verdict::Green);
    check(false, &failed_then(TestStatus::Failed, false), red);
    check(false, &failed_then(TestStatus::Failed, true), Verdict::Green);
}

#[test]
fn a_batch_with_a_test_outside_the_lease_is_refused_whole_and_records_nothing() {
    let mut scheduler = greedy(20.0);
    scheduler.worker_joined(WorkerId(1), 0.0);
    scheduler.worker_joined(WorkerId(2), 0.0);
    scheduler.add_build(BuildId(1), tens(3), 0.0).unwrap();
    let first = scheduler.request_work(WorkerId(1), 0.0).0.unwrap();
    assert_eq!(first.tests, ["t0", "t1"], "no shard above 20 s");
    let passed = |test_id| ReportedTest { test_id, status: TestStatus::Passed, quarantined: false, duration_s: None };
    let refused = |test_id: &str| SchedulerError::TestNotInLease { lease: first.lease.0, test_id: test_id.into() };
    let refusals = [
        (first.lease, WorkerId(1), vec![passed("t0"), passed("t2")], refused("t2")),
        (first.lease, WorkerId(1), vec![passed("t0"), passed("no-such-test")], refused("no-such-test")),
        (
            first.lease,
            WorkerId(2),
            vec![passed("t0")],
            SchedulerError::NotYourLease { lease: first.lease.0, worker: 2 },
        ),
        (LeaseId(99), WorkerId(1), vec![passed("t0")], SchedulerError::UnknownLease(99)),
    ];
    for (lease, worker, batch, error) in refusals {
        assert_eq!(scheduler.report(lease, worker, &batch, 11.0), Err(error));
    }
    // Nothing of them was recorded: t0 is reported now for the first time, then repeated.
    let reports = scheduler.report(first.lease, WorkerId(1), &[passed("t0"), passed("t0")], 12.0).unwrap();
    assert!(
        matches!(reports.as_slice(), [Report::Accepted { attempt: 1, fails_build: false, .. }, Report::Duplicate]),
        "{reports:?}"
    );
}

#[test]
fn the_scheduler_answers_which_lease_a_worker_holds_its_build_and_what_was_withdrawn_from_it() {
    let mut scheduler = greedy(600.0);
    assert_eq!(scheduler.worker_lease(WorkerId(1)), None);
    let first = first_test_took_twice_its_estimate(&mut scheduler, tens(4));
    assert_eq!(scheduler.worker_lease(WorkerId(1)), Some((first.lease, BuildId(1))));
    assert_eq!(scheduler.withdrawn(first.lease), Vec::<String>::new());
    let second = scheduler.request_work(WorkerId(2), 21.0).0.unwrap();
    assert_eq!(scheduler.worker_lease(WorkerId(2)), Some((second.lease, BuildId(1))));
    // Told to its worker in every answer while the lease runs.
    assert_eq!(scheduler.withdrawn(first.lease), ["t3"]);
    accepted(scheduler.test_finished(first.lease, WorkerId(1), "t1", TestStatus::Passed, 41.0));
    assert_eq!(scheduler.withdrawn(first.lease), ["t3"]);
    accepted(scheduler.test_finished(first.lease, WorkerId(1), "t2", TestStatus::Passed, 61.0));
    scheduler.lease_finished(first.lease, WorkerId(1), 61.0).unwrap();
    // Ended: nothing more to tell, no lease held, the build still known.
    assert_eq!(scheduler.withdrawn(first.lease), Vec::<String>::new());
    assert_eq!(scheduler.worker_lease(WorkerId(1)), None);
    assert_eq!(scheduler.lease_build(first.lease), Some(BuildId(1)));
    assert_eq!(scheduler.lease_build(second.lease), Some(BuildId(1)));
    accepted(scheduler.test_finished(second.lease, WorkerId(2), "t3", TestStatus::Passed, 62.0));
    // The build ended: its leases are retired, still known by their build.
    assert!(!scheduler.is_running(BuildId(1)));
    assert_eq!(scheduler.worker_lease(WorkerId(2)), None);
    assert_eq!(scheduler.lease_build(second.lease), Some(BuildId(1)));
    assert_eq!(scheduler.lease_build(first.lease), Some(BuildId(1)));
    assert_eq!(scheduler.lease_build(LeaseId(99)), None);
}

#[test]
fn a_scheduler_running_for_months_remembers_the_leases_of_its_last_ended_builds_only() {
    let mut scheduler = Scheduler::new(SchedulerConfig::default());
    scheduler.worker_joined(WorkerId(1), 0.0);
    let mut leases = Vec::new();
    for build in 1..=(RETIRED_BUILDS as u64 + 10) {
        let now = build as f64 * 10.0;
        scheduler.add_build(BuildId(build), single(&format!("t{build}")), now).unwrap();
        let grant = scheduler.request_work(WorkerId(1), now).0.unwrap();
        accepted(scheduler.test_finished(
            grant.lease,
            WorkerId(1),
            &format!("t{build}"),
            TestStatus::Passed,
            now + 1.0,
        ));
        assert!(!scheduler.is_running(BuildId(build)));
        leases.push(grant.lease);
    }
    assert_eq!(scheduler.retired.len(), RETIRED_BUILDS, "one lease a build, for the last builds only");
    let newest = *leases.last().unwrap();
    assert_eq!(scheduler.lease_build(newest), Some(BuildId(RETIRED_BUILDS as u64 + 10)), "a late call is answered");
    assert_eq!(scheduler.lease_build(leases[0]), None, "the oldest are forgotten");
}

#[test]
fn what_was_withdrawn_from_a_lease_is_forgotten_when_its_build_is_cancelled() {
    let mut scheduler = greedy(600.0);
    let first = first_test_took_twice_its_estimate(&mut scheduler, tens(4));
    scheduler.request_work(WorkerId(2), 21.0).0.unwrap();
    assert_eq!(scheduler.withdrawn(first.lease), ["t3"]);
    scheduler.remove_build(BuildId(1));
    assert_eq!(scheduler.withdrawn(first.lease), Vec::<String>::new());
    assert_eq!(scheduler.worker_lease(WorkerId(1)), None);
    assert_eq!(scheduler.lease_build(first.lease), Some(BuildId(1)));
}

#[test]
fn the_scheduler_answers_until_when_a_worker_is_benched() {
    let config = SchedulerConfig { infra_failures_to_bench: 2, bench_s: 60.0, ..SchedulerConfig::default() };
    let mut scheduler = Scheduler::new(config);
    scheduler.worker_joined(WorkerId(1), 0.0);
    scheduler.add_build(BuildId(1), tens(1), 0.0).unwrap();
    for now in [0.0, 1.0] {
        assert_eq!(scheduler.benched_until(WorkerId(1), now), None);
        let grant = scheduler.request_work(WorkerId(1), now).0.unwrap();
        // Its checkout failed: the shard ends without a result.
        scheduler.lease_finished(grant.lease, WorkerId(1), now + 1.0).unwrap();
    }
    assert_eq!(scheduler.benched_until(WorkerId(1), 30.0), Some(62.0));
    assert_eq!(scheduler.benched_until(WorkerId(1), 62.0), None);
    assert_eq!(scheduler.benched_until(WorkerId(2), 30.0), None, "an unknown worker is not benched");
}

/// A first build: every estimate is the default guess (1 s), each test really takes 10 ms.
fn first_build(count: usize) -> (BuildPlan, Vec<f64>) {
    let plan = BuildPlan::from_tests((0..count).map(|index| planned(&format!("t{index}"), 1.0, false)).collect(), 0.2);
    (plan, vec![0.01; count])
}

#[test]
fn a_first_build_learns_what_its_new_tests_take_instead_of_cutting_one_test_shards() {
    let (plan, actual) = first_build(300);
    let fitted = SchedulerConfig { shard_sizing: ShardSizing::Fitted, ..SchedulerConfig::default() };
    let run = crate::simulate::simulate(&plan, &actual, 3, fitted);
    // Cut from the guess alone, shards of new tests shrink towards a single test and each
    // pays the overhead: the 3 s of tests would take more than twice their bound.
    assert!(run.shards.len() <= 12, "{} shards: {:?}", run.shards.len(), shard_sizes(&run));
    assert!(run.ratio() < 1.5, "makespan {} against a bound of {}", run.makespan_s, run.lower_bound_s);
}

fn shard_sizes(run: &crate::simulate::Simulation) -> Vec<usize> {
    run.shards.iter().map(|shard| shard.tests.len()).collect()
}

#[test]
fn estimates_corrected_inside_a_build_carry_to_the_leases_holding_them() {
    let (plan, _) = first_build(60);
    let mut scheduler = Scheduler::new(SchedulerConfig::default());
    scheduler.worker_joined(WorkerId(1), 0.0);
    scheduler.add_build(BuildId(1), plan, 0.0).unwrap();
    let grant = scheduler.request_work(WorkerId(1), 0.0).0.unwrap();
    assert!(grant.tests.len() >= 9, "a lone worker's first shard: {:?}", grant.tests);
    let unleased_before = scheduler.builds[&BuildId(1)].unleased_work;
    for (position, test_id) in grant.tests.iter().take(8).enumerate() {
        let reported = ReportedTest { test_id, status: TestStatus::Passed, quarantined: false, duration_s: Some(0.1) };
        let now = 0.2 + 0.1 * (position + 1) as f64;
        scheduler.report(grant.lease, WorkerId(1), &[reported], now).unwrap();
    }
    let run = &scheduler.builds[&BuildId(1)];
    // Ten times quicker than guessed: the rest of the build is a tenth of what it seemed.
    let unleased_after = run.unleased_work;
    assert!((unleased_after - unleased_before / 10.0).abs() < 1e-9, "{unleased_before} -> {unleased_after}");
    let left = (grant.tests.len() - 8) as f64 * 0.1;
    assert!((scheduler.leases[&grant.lease].remaining_estimate - left).abs() < 1e-9);
}

#[test]
fn a_workers_first_shard_pays_the_start_up_and_its_cost_is_measured() {
    let mut plan = tens(4);
    plan.worker_startup_s = 5.0;
    // Cut finer, the lone first worker leaves work for the second.
    let mut scheduler =
        Scheduler::new(SchedulerConfig { shard_sizing: ShardSizing::Finer, ..SchedulerConfig::default() });
    scheduler.worker_joined(WorkerId(1), 0.0);
    scheduler.add_build(BuildId(1), plan, 0.0).unwrap();
    let first = scheduler.request_work(WorkerId(1), 0.0).0.unwrap();
    assert_eq!(scheduler.leases[&first.lease].running_from, 6.0, "granted at 0, 1 s overhead, 5 s start-up");
    let mut measured = Vec::new();
    for (position, test_id) in first.tests.iter().enumerate() {
        let reported = ReportedTest { test_id, status: TestStatus::Passed, quarantined: false, duration_s: Some(10.0) };
        let now = 7.0 + 10.0 * (position + 1) as f64;
        let report = scheduler.report(first.lease, WorkerId(1), &[reported], now).unwrap().pop().unwrap();
        let Report::Accepted { decisions, .. } = report else { panic!("{report:?}") };
        measured
            .extend(decisions.into_iter().filter(|decision| matches!(decision, Decision::ShardCostMeasured { .. })));
    }
    // Its last test came 7 s after the grant plus its tests: the start-up it really paid.
    let expected =
        Decision::ShardCostMeasured { build: BuildId(1), lease: first.lease, first_of_worker: true, cost_s: 7.0 };
    assert_eq!(measured, [expected], "measured once, at its last test");
    assert_eq!(scheduler.builds[&BuildId(1)].costs.startup(), 6.0, "7 s, less the 1 s overhead every shard pays");
    // The rest, on a second worker; the build's end compares with the bound on what the
    // tests took (40 s on two workers, one of them idle but for its shard) and what its
    // shards cost.
    scheduler.worker_joined(WorkerId(2), 50.0);
    let mut decisions = Vec::new();
    let (mut now, mut cost) = (50.0, 7.0);
    while let Some(grant) = scheduler.request_work(WorkerId(2), now).0 {
        now += cost;
        for test_id in &grant.tests {
            now += 10.0;
            let reported =
                ReportedTest { test_id, status: TestStatus::Passed, quarantined: false, duration_s: Some(10.0) };
            let report = scheduler.report(grant.lease, WorkerId(2), &[reported], now).unwrap().pop().unwrap();
            let Report::Accepted { decisions: more, .. } = report else { panic!("{report:?}") };
            decisions.extend(more);
        }
        // Later shards of the build cost 1 s: the overhead.
        cost = 1.0;
    }
    let bound = decisions.iter().find_map(|decision| match decision {
        Decision::BuildFinished { measured_bound_s, .. } => Some(*measured_bound_s),
        _ => None,
    });
    // max(40 s / 2 workers, 10 s longest) + 1 s overhead + 6 s start-up.
    assert_eq!(bound, Some(27.0));
}

/// Known tests of these estimates, no dependencies.
fn known(estimates: &[f64]) -> BuildPlan {
    BuildPlan::from_tests(
        estimates.iter().enumerate().map(|(index, &estimate)| planned(&format!("t{index}"), estimate, true)).collect(),
        1.0,
    )
}

/// The estimated seconds of each shard of a simulated build, in leasing order.
fn shard_work(plan: &BuildPlan, run: &crate::simulate::Simulation) -> Vec<f64> {
    run.shards.iter().map(|shard| shard.tests.iter().map(|&test| plan.tests[test].estimate_s).sum()).collect()
}

#[test]
fn with_trusted_estimates_every_worker_gets_one_shard_split_longest_first() {
    // 36 s of work for three workers: 6 + 3 + 3 s each.
    let plan = known(&[3.0, 6.0, 3.0, 3.0, 6.0, 3.0, 3.0, 6.0, 3.0]);
    let actual: Vec<f64> = plan.tests.iter().map(|test| test.estimate_s).collect();
    let fitted = SchedulerConfig { shard_sizing: ShardSizing::Fitted, ..SchedulerConfig::default() };
    let run = crate::simulate::simulate(&plan, &actual, 3, fitted);
    assert_eq!(shard_work(&plan, &run), [12.0, 12.0, 12.0]);
    assert_eq!(run.makespan_s, run.lower_bound_s);
    // Cut finer, the same build pays for more shards and ends later.
    let finer = crate::simulate::simulate(
        &plan,
        &actual,
        3,
        SchedulerConfig { shard_sizing: ShardSizing::Finer, ..SchedulerConfig::default() },
    );
    assert!(finer.shards.len() > 3 && finer.makespan_s > run.makespan_s, "{finer:?}");
}

/// a (4 s) unblocks b (6 s); c, d, e are 5 s each; a shard costs 1 s. Which worker ran which
/// shards, on two workers with fitted sizing, and the makespan.
fn chain_and_three(chains_in_lease: bool) -> (Vec<(usize, Vec<String>)>, Seconds) {
    let tests = vec![
        planned("a", 4.0, true),
        PlannedTest { depends_on: vec![0], ..planned("b", 6.0, true) },
        planned("c", 5.0, true),
        planned("d", 5.0, true),
        planned("e", 5.0, true),
    ];
    let mut plan = BuildPlan::from_tests(tests, 1.0);
    plan.chains_in_lease = chains_in_lease;
    let actual: Vec<f64> = plan.tests.iter().map(|test| test.estimate_s).collect();
    let fitted = SchedulerConfig { shard_sizing: ShardSizing::Fitted, ..SchedulerConfig::default() };
    let run = crate::simulate::simulate(&plan, &actual, 2, fitted);
    let shards = run
        .shards
        .iter()
        .map(|shard| (shard.worker, shard.tests.iter().map(|&test| plan.tests[test].id.clone()).collect()))
        .collect();
    (shards, run.makespan_s)
}

#[test]
fn a_test_others_wait_on_leaves_room_in_its_workers_share_for_their_chain() {
    // A runner that runs a shard in one process: the worker taking a runs b after it, in a
    // second shard, so its first holds a alone (4 + 6 s and another overhead, 12 s) and c,
    // d, e (15 s) go to the other.
    let (shards, makespan) = chain_and_three(false);
    assert_eq!(shards, [(0, ids(&["a"])), (1, ids(&["c", "d", "e"])), (0, ids(&["b"]))]);
    assert_eq!(makespan, 16.0);
}

#[test]
fn a_fitted_part_takes_the_chain_behind_its_tests_in_the_same_lease() {
    // A runner fed one test at a time: a and b go in one lease, b right after a (the chain
    // first), one overhead (1 + 10 s); with e, the asking worker's on a tie, 16 s, as c and d
    // take the other 11 s.
    let (shards, makespan) = chain_and_three(true);
    assert_eq!(shards, [(0, ids(&["a", "b", "e"])), (1, ids(&["c", "d"]))]);
    assert_eq!(makespan, 16.0);
}

/// A scheduler with fitted sizing and `retries`, two workers that hold dependents back (or
/// not), and a build of a chain a → b → c (b and c 1 s, a 3 s) beside x and y (2 s each).
fn chain_build(retries: u32, holds_dependents: bool) -> Scheduler {
    let config = SchedulerConfig { shard_sizing: ShardSizing::Fitted, retries, ..SchedulerConfig::default() };
    let mut scheduler = Scheduler::new(config);
    for worker in [1, 2] {
        scheduler.worker_joined(WorkerId(worker), 0.0);
        scheduler.worker_holds_dependents(WorkerId(worker), holds_dependents);
    }
    let tests = vec![
        planned("a", 3.0, true),
        PlannedTest { depends_on: vec![0], ..planned("b", 1.0, true) },
        PlannedTest { depends_on: vec![1], ..planned("c", 1.0, true) },
        planned("x", 2.0, true),
        planned("y", 2.0, true),
    ];
    scheduler.add_build(BuildId(1), BuildPlan::from_tests(tests, 1.0), 0.0).unwrap();
    scheduler
}

fn waits(pairs: &[(&str, &[&str])]) -> Vec<LeaseDependency> {
    pairs
        .iter()
        .map(|(test_id, depends_on)| LeaseDependency { test_id: (*test_id).into(), depends_on: ids(depends_on) })
        .collect()
}

fn skipped(decisions: &[Decision]) -> Vec<(String, String)> {
    decisions
        .iter()
        .filter_map(|decision| match decision {
            Decision::Skipped { test_id, reason, .. } => Some((test_id.clone(), reason.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_chain_is_leased_whole_only_to_a_worker_that_holds_dependents_back_and_only_when_fitted() {
    let mut scheduler = chain_build(1, true);
    let grant = scheduler.request_work(WorkerId(1), 0.0).0.unwrap();
    assert_eq!(grant.tests, ids(&["a", "b", "c"]));
    assert_eq!(grant.waits_on, waits(&[("b", &["a"]), ("c", &["b"])]));
    // Reported in order, each is taken.
    for (test_id, now) in [("a", 4.0), ("b", 5.0), ("c", 6.0)] {
        let (outcome, _) =
            accepted(scheduler.test_finished(grant.lease, WorkerId(1), test_id, TestStatus::Passed, now));
        assert_eq!(outcome, Outcome::Final { flaky: false });
    }

    // A worker that does not say it holds them back gets a alone; b waits for a's result.
    let mut scheduler = chain_build(1, false);
    let grant = scheduler.request_work(WorkerId(1), 0.0).0.unwrap();
    assert_eq!((grant.tests, grant.waits_on), (ids(&["a"]), vec![]));

    // Nor with finer sizing, nor for a runner that runs a shard in one process.
    let mut finer = chain_build(1, true);
    finer.config.shard_sizing = ShardSizing::Finer;
    let grant = finer.request_work(WorkerId(1), 0.0).0.unwrap();
    assert!(grant.waits_on.is_empty() && !grant.tests.contains(&"b".to_owned()), "{grant:?}");
    let mut cold = chain_build(1, true);
    cold.builds.get_mut(&BuildId(1)).unwrap().plan.chains_in_lease = false;
    let grant = cold.request_work(WorkerId(1), 0.0).0.unwrap();
    assert_eq!((grant.tests, grant.waits_on), (ids(&["a"]), vec![]));
}

#[test]
fn a_failed_prerequisite_skips_the_tests_waiting_on_it_in_its_lease_whatever_the_worker_reports() {
    let mut scheduler = chain_build(0, true);
    let grant = scheduler.request_work(WorkerId(1), 0.0).0.unwrap();
    let other = scheduler.request_work(WorkerId(2), 0.0).0.unwrap();
    assert_eq!(grant.tests, ids(&["a", "b", "c"]));
    // A result for b before a's is not b's: b may not run before a passed.
    assert_eq!(scheduler.test_finished(grant.lease, WorkerId(1), "b", TestStatus::Passed, 2.0), Ok(Report::Stale));
    let (outcome, decisions) =
        accepted(scheduler.test_finished(grant.lease, WorkerId(1), "a", TestStatus::Failed, 4.0));
    assert_eq!(outcome, Outcome::Final { flaky: false });
    assert_eq!(
        skipped(&decisions),
        [
            ("b".to_owned(), "dependency \"a\" failed".to_owned()),
            ("c".to_owned(), "dependency \"b\" skipped".to_owned())
        ]
    );
    // The shard is over: its cost is measured with a's result.
    assert!(decisions.iter().any(|decision| matches!(decision, Decision::ShardCostMeasured { .. })), "{decisions:?}");
    // Whatever the worker sends for them is stale: they have their result.
    assert_eq!(scheduler.test_finished(grant.lease, WorkerId(1), "b", TestStatus::Skipped, 4.5), Ok(Report::Stale));
    assert_eq!(scheduler.test_finished(grant.lease, WorkerId(1), "c", TestStatus::Passed, 5.0), Ok(Report::Stale));
    assert_eq!(scheduler.lease_finished(grant.lease, WorkerId(1), 5.0), Ok(vec![]));
    let mut decisions = Vec::new();
    for (test_id, now) in other.tests.iter().zip([3.0, 5.0]) {
        decisions = accepted(scheduler.test_finished(other.lease, WorkerId(2), test_id, TestStatus::Passed, now)).1;
    }
    assert_eq!(finished(&decisions), [(BuildId(1), Verdict::Red { failed: ids(&["a"]) })]);
}

#[test]
fn a_prerequisite_to_be_retried_takes_the_tests_waiting_on_it_out_of_its_lease_until_it_passes() {
    let mut scheduler = chain_build(1, true);
    let grant = scheduler.request_work(WorkerId(1), 0.0).0.unwrap();
    let other = scheduler.request_work(WorkerId(2), 0.0).0.unwrap();
    let (outcome, decisions) =
        accepted(scheduler.test_finished(grant.lease, WorkerId(1), "a", TestStatus::Failed, 4.0));
    assert_eq!(outcome, Outcome::Retry);
    assert!(
        decisions.contains(&Decision::LeaseShrunk {
            build: BuildId(1),
            lease: grant.lease,
            worker: WorkerId(1),
            withdrawn: ids(&["b", "c"]),
            stopped: None,
        }),
        "{decisions:?}"
    );
    assert_eq!(scheduler.withdrawn(grant.lease), ids(&["b", "c"]));
    assert_eq!(scheduler.test_finished(grant.lease, WorkerId(1), "b", TestStatus::Skipped, 4.5), Ok(Report::Stale));
    scheduler.lease_finished(grant.lease, WorkerId(1), 4.5).unwrap();
    // The retry runs on the other worker, its chain with it once it is free; worker 1, which
    // a failed on, finds nothing it may run.
    for (test_id, now) in other.tests.iter().zip([3.0, 5.0]) {
        accepted(scheduler.test_finished(other.lease, WorkerId(2), test_id, TestStatus::Passed, now));
    }
    scheduler.lease_finished(other.lease, WorkerId(2), 5.0).unwrap();
    assert_eq!(scheduler.request_work(WorkerId(1), 5.0).0, None);
    let retry = scheduler.request_work(WorkerId(2), 5.0).0.unwrap();
    assert_eq!((retry.tests.clone(), retry.waits_on), (ids(&["a", "b", "c"]), waits(&[("b", &["a"]), ("c", &["b"])])));
    let (outcome, _) = accepted(scheduler.test_finished(retry.lease, WorkerId(2), "a", TestStatus::Passed, 9.0));
    assert_eq!(outcome, Outcome::Final { flaky: true });
    accepted(scheduler.test_finished(retry.lease, WorkerId(2), "b", TestStatus::Passed, 10.0));
    let (_, decisions) = accepted(scheduler.test_finished(retry.lease, WorkerId(2), "c", TestStatus::Passed, 11.0));
    assert_eq!(finished(&decisions), [(BuildId(1), Verdict::Green)]);
}

#[test]
fn a_lost_lease_gives_its_chain_back_to_wait_for_its_prerequisite_not_as_lost_attempts() {
    // Lost once: a is ready again, b and c wait for it, and all three are leased again.
    let mut scheduler = chain_build(0, true);
    let lost = scheduler.request_work(WorkerId(1), 0.0).0.unwrap();
    let decisions = scheduler.lease_finished(lost.lease, WorkerId(1), 1.0).unwrap();
    assert!(decisions.contains(&Decision::WorkAvailable), "{decisions:?}");
    let again = scheduler.request_work(WorkerId(2), 1.0).0.unwrap();
    assert_eq!((again.tests, again.waits_on), (ids(&["a", "b", "c"]), waits(&[("b", &["a"]), ("c", &["b"])])));

    // With one attempt a test: a is given up, b and c, which never started, are skipped with
    // it (each has one final result) and the build ends in error, not red.
    let mut scheduler = chain_build(0, true);
    scheduler.config.max_attempts = 1;
    let lost = scheduler.request_work(WorkerId(1), 0.0).0.unwrap();
    let other = scheduler.request_work(WorkerId(2), 0.0).0.unwrap();
    let decisions = scheduler.lease_finished(lost.lease, WorkerId(1), 1.0).unwrap();
    let gave_up: Vec<&Decision> =
        decisions.iter().filter(|decision| matches!(decision, Decision::GaveUp { .. })).collect();
    assert_eq!(gave_up.len(), 1, "{decisions:?}");
    assert_eq!(
        skipped(&decisions),
        [
            ("b".to_owned(), "dependency \"a\" error".to_owned()),
            ("c".to_owned(), "dependency \"b\" skipped".to_owned())
        ]
    );
    let mut decisions = Vec::new();
    for (test_id, now) in other.tests.iter().zip([3.0, 5.0]) {
        decisions = accepted(scheduler.test_finished(other.lease, WorkerId(2), test_id, TestStatus::Passed, now)).1;
    }
    assert_eq!(finished(&decisions), [(BuildId(1), Verdict::Error { gave_up: ids(&["a"]) })]);
}

#[test]
fn a_lease_running_a_chain_does_not_give_back_a_test_waiting_on_one_it_keeps() {
    // a (5 s) unblocks b (20 s), which unblocks c (20 s); z takes 5 s. The chain is one
    // worker's lease, z the other's. When z's worker is free, a has passed and b runs: c
    // waits on b, so given back it could not run before b ends, and would cost a shard of
    // its own: nothing is withdrawn.
    let config = SchedulerConfig { shard_sizing: ShardSizing::Fitted, ..SchedulerConfig::default() };
    let mut scheduler = Scheduler::new(config);
    for worker in [1, 2] {
        scheduler.worker_joined(WorkerId(worker), 0.0);
        scheduler.worker_holds_dependents(WorkerId(worker), true);
    }
    let tests = vec![
        planned("a", 5.0, true),
        PlannedTest { depends_on: vec![0], ..planned("b", 20.0, true) },
        PlannedTest { depends_on: vec![1], ..planned("c", 20.0, true) },
        planned("z", 5.0, true),
    ];
    scheduler.add_build(BuildId(1), BuildPlan::from_tests(tests, 1.0), 0.0).unwrap();
    let chain = scheduler.request_work(WorkerId(1), 0.0).0.unwrap();
    let other = scheduler.request_work(WorkerId(2), 0.0).0.unwrap();
    assert_eq!((chain.tests.clone(), other.tests.clone()), (ids(&["a", "b", "c"]), ids(&["z"])));
    accepted(scheduler.test_finished(chain.lease, WorkerId(1), "a", TestStatus::Passed, 6.0));
    accepted(scheduler.test_finished(other.lease, WorkerId(2), "z", TestStatus::Passed, 6.0));
    scheduler.lease_finished(other.lease, WorkerId(2), 6.0).unwrap();
    let (grant, decisions) = scheduler.request_work(WorkerId(2), 6.5);
    assert_eq!((grant, shrinks(&decisions)), (None, vec![]));
    assert!(scheduler.withdrawn(chain.lease).is_empty());
}

#[test]
fn a_build_with_new_tests_or_estimates_found_off_is_cut_finer() {
    let fitted_share = |plan: BuildPlan, first_results_s: Option<f64>| {
        let mut scheduler =
            Scheduler::new(SchedulerConfig { shard_sizing: ShardSizing::Fitted, ..SchedulerConfig::default() });
        for worker in 1..=3 {
            scheduler.worker_joined(WorkerId(worker), 0.0);
        }
        scheduler.add_build(BuildId(1), plan, 0.0).unwrap();
        let first = scheduler.request_work(WorkerId(1), 0.0).0.unwrap();
        let mut now = 1.0;
        if let Some(seconds) = first_results_s {
            for test_id in first.tests.iter().take(8) {
                now += seconds;
                let reported =
                    ReportedTest { test_id, status: TestStatus::Passed, quarantined: false, duration_s: Some(seconds) };
                scheduler.report(first.lease, WorkerId(1), &[reported], now).unwrap();
            }
        }
        let second = scheduler.request_work(WorkerId(2), now).0.unwrap();
        (first.tests.len(), second.tests.len())
    };
    // 90 known tests of 1 s on three workers: a third each, at once.
    assert_eq!(fitted_share(known(&[1.0; 90]), None), (30, 30));
    // Eight of them reported as estimated: still trusted. The second worker, asking 8 s
    // late, gets its part of the rest split three ways (the first is free at 32 s, the
    // others start at 10 s: (60 + 32 + 10 + 10) / 3 = 37.3 s each).
    assert_eq!(fitted_share(known(&[1.0; 90]), Some(1.0)), (30, 28));
    // Twice as long as estimated: the rest is cut finer, part of the share held back.
    // (Its part of the split would be 24 tests: (120 + 44.6 + 18 + 18) / 3 = 66.9 s.)
    let (_, second) = fitted_share(known(&[1.0; 90]), Some(2.0));
    assert!(second < 24, "{second} tests");
    // Two new tests in 90: not trusted from the start (new tests first, in a shard of
    // their own; then known tests held back from).
    let mut tests: Vec<PlannedTest> = (0..88).map(|index| planned(&format!("t{index}"), 1.0, true)).collect();
    tests.extend((0..2).map(|index| planned(&format!("new{index}"), 1.0, false)));
    let (first, second) = fitted_share(BuildPlan::from_tests(tests, 1.0), None);
    assert!(first == 2 && second < 30, "{first} and {second} tests");
}

/// A build of one 20 s test and four of 1 s on two workers with straggler copies: worker 1
/// runs the long test alone, worker 2 the rest by 5 s; at 30 s the long test has run 29 s
/// of its 20 and worker 2, idle, gets a copy of it. The two grants.
fn copied_straggler() -> (Scheduler, LeaseGrant, LeaseGrant) {
    let mut tests = vec![planned("long", 20.0, true)];
    tests.extend((0..4).map(|index| planned(&format!("s{index}"), 1.0, true)));
    let mut scheduler = Scheduler::new(SchedulerConfig { straggler_copies: true, ..SchedulerConfig::default() });
    scheduler.worker_joined(WorkerId(1), 0.0);
    scheduler.worker_joined(WorkerId(2), 0.0);
    scheduler.add_build(BuildId(1), BuildPlan::from_tests(tests, 1.0), 0.0).unwrap();
    let slow = scheduler.request_work(WorkerId(1), 0.0).0.unwrap();
    assert_eq!(slow.tests, ["long"]);
    let quick = scheduler.request_work(WorkerId(2), 0.0).0.unwrap();
    assert_eq!(quick.copy_of, None, "a copy now would end no sooner, and hold up the short tests");
    for (position, id) in quick.tests.iter().enumerate() {
        accepted(scheduler.test_finished(quick.lease, WorkerId(2), id, TestStatus::Passed, 2.0 + position as f64));
    }
    scheduler.lease_finished(quick.lease, WorkerId(2), 5.0).unwrap();
    // Due at 21 s, a copy now would end at 26 s: no copy yet.
    assert_eq!(scheduler.request_work(WorkerId(2), 5.0), (None, vec![]));
    // The master wakes its idle workers at the straggler's heartbeats once a copy pays:
    // from 24 s it has run 23 s of its 20, taken to need as long again, and a copy would
    // end by more than two shard costs sooner.
    assert!(!scheduler.straggling(slow.lease, 20.0), "not late yet");
    assert!(!scheduler.straggling(slow.lease, 23.0), "late, but a copy would not end sooner yet");
    assert!(scheduler.straggling(slow.lease, 25.0), "a copy pays, and worker 2 is idle");
    let copy = scheduler.request_work(WorkerId(2), 30.0).0.expect("a copy of the straggler");
    assert_eq!((copy.tests.as_slice(), copy.copy_of), (&["long".to_owned()][..], Some(slow.lease)));
    assert!(!scheduler.straggling(slow.lease, 31.0), "copied already");
    assert!(!scheduler.straggling(copy.lease, 60.0), "a copy is not copied");
    (scheduler, slow, copy)
}

#[test]
fn a_straggling_test_gets_a_backup_copy_and_the_first_result_wins() {
    // The copy ends first: the straggler's lease is told to stop the test it runs.
    let (mut scheduler, slow, copy) = copied_straggler();
    let (outcome, decisions) =
        accepted(scheduler.test_finished(copy.lease, WorkerId(2), "long", TestStatus::Passed, 51.0));
    assert_eq!(outcome, Outcome::Final { flaky: false });
    let stop = Decision::LeaseShrunk {
        build: BuildId(1),
        lease: slow.lease,
        worker: WorkerId(1),
        withdrawn: ids(&["long"]),
        stopped: Some("long".to_owned()),
    };
    assert!(decisions.contains(&stop), "{decisions:?}");
    assert_eq!(finished(&decisions), [(BuildId(1), Verdict::Green)]);
    assert_eq!(scheduler.test_finished(slow.lease, WorkerId(1), "long", TestStatus::Failed, 61.0), Ok(Report::Stale));

    // The stopped run had run the test 50 s of its 20: its machine is at least that slow.
    let ratios = scheduler.worker_ratios(WorkerId(1)).expect("the stopped run tells its worker's speed");
    assert_eq!(ratios.count, 1.0);
    assert!((ratios.sum - (50.0f64 / 20.0).ln()).abs() < 1e-9, "{ratios:?}");

    // The original ends first: the copy is told to stop, and its result is stale.
    let (mut scheduler, slow, copy) = copied_straggler();
    let (_, decisions) = accepted(scheduler.test_finished(slow.lease, WorkerId(1), "long", TestStatus::Passed, 35.0));
    let stop = Decision::LeaseShrunk {
        build: BuildId(1),
        lease: copy.lease,
        worker: WorkerId(2),
        withdrawn: ids(&["long"]),
        stopped: Some("long".to_owned()),
    };
    assert!(decisions.contains(&stop), "{decisions:?}");
    assert_eq!(finished(&decisions), [(BuildId(1), Verdict::Green)]);
    assert_eq!(scheduler.worker_ratios(WorkerId(2)), None, "a copy stopped within the estimate tells nothing");
    assert_eq!(scheduler.test_finished(copy.lease, WorkerId(2), "long", TestStatus::Passed, 51.0), Ok(Report::Stale));

    // The straggler's worker is lost: the test is the copy's, not queued a third time.
    let (mut scheduler, slow, copy) = copied_straggler();
    let ended = scheduler.lease_finished(slow.lease, WorkerId(1), 32.0).unwrap();
    assert!(!ended.contains(&Decision::WorkAvailable), "{ended:?}");
    assert_eq!(scheduler.request_work(WorkerId(1), 33.0), (None, vec![]));
    let (_, decisions) = accepted(scheduler.test_finished(copy.lease, WorkerId(2), "long", TestStatus::Passed, 51.0));
    assert_eq!(finished(&decisions), [(BuildId(1), Verdict::Green)]);
}

#[test]
fn straggler_copies_are_off_by_default() {
    let mut tests = vec![planned("long", 20.0, true)];
    tests.extend((0..4).map(|index| planned(&format!("s{index}"), 1.0, true)));
    let mut scheduler = Scheduler::new(SchedulerConfig::default());
    scheduler.worker_joined(WorkerId(1), 0.0);
    scheduler.worker_joined(WorkerId(2), 0.0);
    scheduler.add_build(BuildId(1), BuildPlan::from_tests(tests, 1.0), 0.0).unwrap();
    let long = scheduler.request_work(WorkerId(1), 0.0).0.unwrap();
    let quick = scheduler.request_work(WorkerId(2), 0.0).0.unwrap();
    for id in &quick.tests {
        accepted(scheduler.test_finished(quick.lease, WorkerId(2), id, TestStatus::Passed, 2.0));
    }
    scheduler.lease_finished(quick.lease, WorkerId(2), 5.0).unwrap();
    assert!(!scheduler.straggling(long.lease, 30.0), "no idle worker is woken for a copy");
    assert_eq!(scheduler.request_work(WorkerId(2), 30.0), (None, vec![]));
}

#[test]
fn on_a_slow_machine_a_copy_ends_the_simulated_build_sooner_and_every_test_runs_once() {
    // The slow machine asks first and draws the long test, which takes it 60 s there.
    let mut tests = vec![planned("long", 20.0, true)];
    tests.extend((0..10).map(|index| planned(&format!("s{index}"), 1.0, true)));
    let plan = BuildPlan::from_tests(tests, 1.0);
    let actual: Vec<f64> = plan.tests.iter().map(|test| test.estimate_s).collect();
    let slowdown = [3.0, 1.0, 1.0];
    let plain = crate::simulate::simulate_fleet(&plan, &actual, &slowdown, SchedulerConfig::default());
    let config = SchedulerConfig { straggler_copies: true, ..SchedulerConfig::default() };
    let copied = crate::simulate::simulate_fleet(&plan, &actual, &slowdown, config);
    assert_eq!(plain.makespan_s, 63.0, "{plain:?}");
    assert!(copied.makespan_s < 50.0, "{copied:?}");
    let mut runs = vec![0; plan.len()];
    for test in copied.shards.iter().flat_map(|shard| &shard.tests) {
        runs[*test] += 1;
    }
    assert_eq!(runs, vec![1; plan.len()], "the losing copy's run is not in its shard");
}

/// A build of one 20 s test and ten of 1 s on three workers with straggler copies (1 s a
/// shard), worker 1 known to run its tests at their estimates when `known`: the grants of
/// workers 1, 2 and 3, asking in turn at t = 0.
fn first_build_with_copies(known: bool) -> [LeaseGrant; 3] {
    let mut tests = vec![planned("long", 20.0, true)];
    tests.extend((0..10).map(|index| planned(&format!("s{index}"), 1.0, true)));
    let mut scheduler = Scheduler::new(SchedulerConfig { straggler_copies: true, ..SchedulerConfig::default() });
    for worker in 1..=3 {
        scheduler.worker_joined(WorkerId(worker), 0.0);
    }
    if known {
        let mut ratios = state::LogRatios::default();
        for _ in 0..10 {
            ratios.observe(1.0, 1.0);
        }
        scheduler.restore_worker_ratios(WorkerId(1), ratios);
    }
    scheduler.add_build(BuildId(1), BuildPlan::from_tests(tests, 1.0), 0.0).unwrap();
    [1, 2, 3].map(|worker| scheduler.request_work(WorkerId(worker), 0.0).0.expect("work for each"))
}

#[test]
fn with_copies_the_test_alone_holding_a_first_build_is_insured_on_a_machine_not_yet_known() {
    // Worker 1 takes the long test, which alone holds the build's end (21 s). Its machine
    // has run no test here: it may be three times slower. Worker 2 runs a copy from the
    // start, and worker 3 all the short tests (by 11 s): the split is planned again without
    // worker 2, which it had counted free.
    let [long, copy, rest] = first_build_with_copies(false);
    assert_eq!(long.tests, ["long"]);
    assert_eq!((copy.tests.as_slice(), copy.copy_of), (&["long".to_owned()][..], Some(long.lease)));
    assert_eq!(rest.tests.len(), 10, "{rest:?}");
    // A machine that has shown its speed is not insured: the short tests are shared.
    let [long, second, third] = first_build_with_copies(true);
    assert_eq!(long.tests, ["long"]);
    assert_eq!((second.copy_of, second.tests.len(), third.tests.len()), (None, 5, 5));
}

/// A fitted scheduler with workers 1..=`n_workers` joined and `plan` added at t = 0.
fn fitted_start(plan: BuildPlan, n_workers: u64) -> Scheduler {
    let mut scheduler =
        Scheduler::new(SchedulerConfig { shard_sizing: ShardSizing::Fitted, ..SchedulerConfig::default() });
    for worker in 1..=n_workers {
        scheduler.worker_joined(WorkerId(worker), 0.0);
    }
    scheduler.add_build(BuildId(1), plan, 0.0).unwrap();
    scheduler
}

/// The tests (plan indices) of the fitted part `worker` would get if the split were planned
/// afresh as it asks at `now`.
fn fresh_part(scheduler: &Scheduler, worker: WorkerId, now: Seconds) -> Vec<PlanIndex> {
    let workers: Vec<WorkerId> = scheduler.workers.keys().copied().collect();
    let split = scheduler.split_ready_work(BuildId(1), worker, workers, now).unwrap();
    split.parts[&worker].tests.iter().map(|entry| entry.index).collect()
}

fn indices(scheduler: &Scheduler, grant: &LeaseGrant) -> Vec<PlanIndex> {
    let plan = scheduler.plan(grant.build).unwrap();
    grant.tests.iter().map(|id| plan.index_of(id).unwrap()).collect()
}

#[test]
fn a_fitted_split_is_planned_once_and_each_worker_gets_the_part_a_fresh_split_would_give_it() {
    // Tests of 1 to 9 s, some of them others wait on, on four workers asking in turn at
    // the build's start: each gets what splitting the work left among all four again
    // would give it, though the split was planned once, when the first asked.
    let mut tests: Vec<PlannedTest> =
        (0..60).map(|index| planned(&format!("t{index}"), 1.0 + (index * 7 % 9) as f64, true)).collect();
    for (dependent, dependency) in [(10, 3), (11, 10), (20, 5), (33, 5)] {
        tests[dependent].depends_on = vec![dependency];
    }
    let mut scheduler = fitted_start(BuildPlan::from_tests(tests, 1.0), 4);
    for worker in (1..=4).map(WorkerId) {
        let mut expected = fresh_part(&scheduler, worker, 0.0);
        let grant = scheduler.request_work(worker, 0.0).0.unwrap();
        let mut granted = indices(&scheduler, &grant);
        expected.sort();
        granted.sort();
        assert_eq!(granted, expected, "{worker:?}");
        // The split lives on for the workers still to ask.
        let split = scheduler.builds[&BuildId(1)].fitted_split.as_ref().unwrap();
        assert_eq!(split.parts.len(), 4 - worker.0 as usize);
    }
    assert!(scheduler.builds[&BuildId(1)].ready.is_empty());
}

#[test]
fn a_fitted_split_is_planned_again_when_the_work_or_the_workers_change() {
    let planned_for = |scheduler: &Scheduler| {
        scheduler.builds[&BuildId(1)].fitted_split.as_ref().map(|split| split.parts.keys().count())
    };
    // A worker that joins after the split was planned: planned again when it asks.
    let mut scheduler = fitted_start(known(&[1.0; 90]), 3);
    let first = scheduler.request_work(WorkerId(1), 0.0).0.unwrap();
    assert_eq!((first.tests.len(), planned_for(&scheduler)), (30, Some(2)));
    scheduler.worker_joined(WorkerId(4), 0.0);
    let joined = scheduler.request_work(WorkerId(4), 0.0).0.unwrap();
    // Split among the four: 60 s left for the three free workers, 20 each (worker 1 is
    // busy until 31 s); the parts of workers 2 and 3 are kept (a busy worker plans again).
    assert_eq!((joined.tests.len(), planned_for(&scheduler)), (20, Some(2)));
    // A failed test to retry: planned again, the retry to the worker asking.
    let failed = ReportedTest {
        test_id: &first.tests[0],
        status: TestStatus::Failed,
        quarantined: false,
        duration_s: Some(1.0),
    };
    scheduler.report(first.lease, WorkerId(1), &[failed], 2.0).unwrap();
    assert_eq!(planned_for(&scheduler), None);
    let retry = scheduler.request_work(WorkerId(2), 2.0).0.unwrap();
    assert_eq!(retry.tests[0], first.tests[0]);
    // A worker asking much later than the split had it start: planned again (the test
    // above, `a_build_with_new_tests_or_estimates_found_off_is_cut_finer`, checks the
    // part), and within a shard's overhead of it: its part as planned.
    let mut scheduler = fitted_start(known(&[1.0; 90]), 3);
    scheduler.request_work(WorkerId(1), 0.0).0.unwrap();
    let part = scheduler.builds[&BuildId(1)].fitted_split.as_ref().unwrap().parts[&WorkerId(2)].tests.len();
    let second = scheduler.request_work(WorkerId(2), 0.5).0.unwrap();
    assert_eq!(second.tests.len(), part);
    assert_eq!(planned_for(&scheduler), Some(1));
}

#[test]
fn a_running_build_is_projected_to_end_when_its_leases_and_the_water_filled_rest_end() {
    let mut scheduler = greedy(1000.0);
    assert_eq!(scheduler.projected_end(BuildId(1), 0.0), None, "no such build");
    scheduler.worker_joined(WorkerId(1), 0.0);
    scheduler.worker_joined(WorkerId(2), 0.0);
    scheduler.add_build(BuildId(1), tens(4), 0.0).unwrap();
    // 40 s of tests over two idle workers, each paying the 1 s shard overhead.
    assert_eq!(scheduler.projected_end(BuildId(1), 0.0), Some(21.0));
    let first = scheduler.request_work(WorkerId(1), 0.0).0.unwrap();
    assert_eq!(first.tests, ["t0", "t1"]);
    assert_eq!(scheduler.projected_end(BuildId(1), 0.0), Some(21.0), "the plan holds");
    // Its first test took twice its estimate: the lease is projected to run late.
    accepted(scheduler.test_finished(first.lease, WorkerId(1), "t0", TestStatus::Passed, 21.0));
    let end = scheduler.projected_end(BuildId(1), 21.0).unwrap();
    assert!(end > 31.0, "{end}");
    let second = scheduler.request_work(WorkerId(2), 21.0).0.unwrap();
    for test in &second.tests {
        accepted(scheduler.test_finished(second.lease, WorkerId(2), test, TestStatus::Passed, 30.0));
    }
    accepted(scheduler.test_finished(first.lease, WorkerId(1), "t1", TestStatus::Passed, 31.0));
    assert_eq!(scheduler.projected_end(BuildId(1), 31.0), None, "the build ended");
}

/// Runs `grant` on `worker` from `start`: each test takes its 10 s estimate times `factor`,
/// by the runner's report; the lease ends after the last. When it ended.
fn run_tens(scheduler: &mut Scheduler, grant: &LeaseGrant, worker: WorkerId, factor: f64, start: Seconds) -> Seconds {
    let mut now = start;
    for test_id in &grant.tests {
        now += 10.0 * factor;
        let result =
            ReportedTest { test_id, status: TestStatus::Passed, quarantined: false, duration_s: Some(10.0 * factor) };
        let reports = scheduler.report(grant.lease, worker, &[result], now).unwrap();
        assert!(matches!(reports[..], [Report::Accepted { .. }]), "{reports:?}");
    }
    scheduler.lease_finished(grant.lease, worker, now).unwrap();
    now
}

#[test]
fn a_worker_seen_slower_in_an_earlier_build_gets_less_of_the_next_and_not_its_longest_test() {
    let mut scheduler =
        Scheduler::new(SchedulerConfig { shard_sizing: ShardSizing::Fitted, ..SchedulerConfig::default() });
    let (slow, others) = (WorkerId(1), [WorkerId(2), WorkerId(3)]);
    for worker in [slow, others[0], others[1]] {
        scheduler.worker_joined(worker, 0.0);
    }
    // The first build: worker 1 takes three times as long as its tests' history says.
    scheduler.add_build(BuildId(1), tens(6), 0.0).unwrap();
    let grants: Vec<(WorkerId, LeaseGrant)> =
        [slow, others[0], others[1]].map(|worker| (worker, scheduler.request_work(worker, 0.0).0.unwrap())).into();
    let mut end: Seconds = 0.0;
    for (worker, grant) in &grants {
        end = end.max(run_tens(&mut scheduler, grant, *worker, if *worker == slow { 3.0 } else { 1.0 }, 1.0));
    }
    scheduler.refresh_slowness();
    assert!(scheduler.slowness(slow) > 2.0, "{}", scheduler.slowness(slow));
    assert_eq!(others.map(|worker| scheduler.slowness(worker)), [1.0, 1.0]);
    // The next build: a 40 s test and eight of 10 s. Worker 1 asks first: split as if it
    // were as fast, it would take the 40 s test (120 s there) while the others end by 41 s.
    let mut tests = vec![planned("long", 40.0, true)];
    tests.extend((0..8).map(|index| planned(&format!("t{index}"), 10.0, true)));
    scheduler.add_build(BuildId(2), BuildPlan::from_tests(tests, 1.0), end).unwrap();
    let first = scheduler.request_work(slow, end).0.expect("the slow worker gets a part");
    assert!(!first.tests.contains(&"long".to_owned()), "{first:?}");
    // About its part at its pace (it is taken to be over twice as slow): 120 s over the
    // others' two workers and its half or third of one, about 50 s.
    assert!(first.tests.len() <= 2, "{first:?}");
    let rest: Vec<LeaseGrant> = others.map(|worker| scheduler.request_work(worker, end).0.unwrap()).into();
    assert_eq!(rest.iter().map(|grant| grant.tests.len()).sum::<usize>(), 9 - first.tests.len(), "{rest:?}");
}

#[test]
fn a_worker_is_taken_to_be_slower_in_a_few_tests_with_exact_history_and_in_tens_with_noise() {
    // Each worker's tests (of 10 s): the ratio each ran at, as the results record them.
    fn slowness_after(ratios: &[(WorkerId, Vec<f64>)]) -> f64 {
        let mut scheduler = Scheduler::new(SchedulerConfig::default());
        for (worker, ratios) in ratios {
            scheduler.worker_joined(*worker, 0.0);
            for ratio in ratios {
                scheduler.workers.get_mut(worker).unwrap().ratios.observe(10.0 * ratio, 10.0);
            }
        }
        scheduler.slowness_stale = true;
        scheduler.refresh_slowness();
        scheduler.slowness(WorkerId(1))
    }
    let exact = vec![(WorkerId(2), vec![1.0; 10]), (WorkerId(3), vec![1.0; 10])];
    let noisy = vec![(WorkerId(2), [0.6, 1.66].repeat(5)), (WorkerId(3), [1.66, 0.6].repeat(5))];
    let with = |others: &Vec<(WorkerId, Vec<f64>)>, own: Vec<f64>| [others.clone(), vec![(WorkerId(1), own)]].concat();
    // Four tests at 1.5 times their estimates: where every other test took its estimate, a
    // slower machine; where tests are off by a factor of 1.66 either way, chance.
    assert!(slowness_after(&with(&exact, vec![1.5; 4])) > 1.4, "{}", slowness_after(&with(&exact, vec![1.5; 4])));
    assert_eq!(slowness_after(&with(&noisy, vec![1.5; 4])), 1.0);
    // Thirty tests at 1.35 are no chance, even then; two are, even with exact history.
    assert!(slowness_after(&with(&noisy, vec![1.35; 30])) > 1.3);
    assert_eq!(slowness_after(&with(&exact, vec![1.35; 2])), 1.0);
    // A machine three times slower shows it in four tests of a noisy history.
    assert!(slowness_after(&with(&noisy, vec![3.0; 4])) > 2.0);
    // Faster machines too.
    assert!(slowness_after(&with(&exact, vec![0.5; 3])) < 0.7);
}

#[test]
fn a_workers_speed_shown_before_is_restored_and_a_record_that_could_not_be_is_ignored() {
    let mut first = Scheduler::new(SchedulerConfig::default());
    let mut ratios = state::LogRatios::default();
    for _ in 0..10 {
        ratios.observe(3.0, 1.0);
    }
    let mut fast = state::LogRatios::default();
    for _ in 0..10 {
        fast.observe(1.0, 1.0);
    }
    for (worker, shown) in [(1, ratios), (2, fast), (3, fast)] {
        first.worker_joined(WorkerId(worker), 0.0);
        first.restore_worker_ratios(WorkerId(worker), shown);
    }
    assert_eq!(first.worker_ratios(WorkerId(1)), Some(ratios));
    assert!((first.worker_slowness(WorkerId(1)) - 3.0).abs() < 0.1, "{}", first.worker_slowness(WorkerId(1)));
    assert_eq!(first.worker_slowness(WorkerId(2)), 1.0);
    // Sums no run of tests gives (squares below the square of the sum over the count, not
    // finite) are not taken: the worker stays unknown.
    for broken in [
        state::LogRatios { count: 10.0, sum: 10.0, squares: 1.0 },
        state::LogRatios { count: f64::NAN, sum: 0.0, squares: 0.0 },
        state::LogRatios { count: -1.0, sum: 0.0, squares: 0.0 },
    ] {
        first.worker_joined(WorkerId(4), 0.0);
        first.restore_worker_ratios(WorkerId(4), broken);
        assert_eq!(first.worker_ratios(WorkerId(4)), None, "{broken:?}");
    }
    assert_eq!(first.worker_ratios(WorkerId(5)), None, "a worker never seen");
}

/// A first build of 27 quick tests and three sleeping 1, 2 and 3 s, last in the file, none
/// with history, on three workers whose shards cost `overhead_s`: the shards.
fn small_first_build(overhead_s: Seconds) -> crate::simulate::Simulation {
    let plan =
        BuildPlan::from_tests((0..30).map(|index| planned(&format!("t{index}"), 1.0, false)).collect(), overhead_s);
    let mut actual = vec![0.002; 30];
    actual[27..].copy_from_slice(&[1.0, 2.0, 3.0]);
    crate::simulate::simulate(&plan, &actual, 3, SchedulerConfig::default())
}

#[test]
fn where_shards_are_cheap_the_last_new_tests_are_not_cut_into_one_shard_of_neighbours() {
    // Warm: once the first quick tests have scaled the guesses down to milliseconds, the
    // 21 tests left were cut at once into three shards of 8, 7 and 6, the last holding all
    // three sleeping tests: 6.1 s against a bound of 3.03 s (benches/small_suite.sh's
    // project, whose warm first build took 6 s one run in eight).
    let run = small_first_build(0.03);
    let holding = |test: usize| run.shards.iter().position(|shard| shard.tests.contains(&test)).unwrap();
    assert!(holding(27) != holding(28) && holding(28) != holding(29) && holding(27) != holding(29), "{run:?}");
    assert!(run.ratio() < 1.1, "makespan {} against a bound of {}", run.makespan_s, run.lower_bound_s);
    // Cold (a shard costs 1 s), each extra shard would pay a runner's start: cut as before.
    let cold = small_first_build(1.0);
    assert_eq!(shard_sizes(&cold), [2, 2, 2, 2, 2, 2, 6, 6, 6], "{cold:?}");
}
