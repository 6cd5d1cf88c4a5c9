//! End to end with the real binary: a `greenlight master` process watching a git
//! repository made by the test, four `greenlight worker` processes running the fixture
//! runner, and the API as the only window. Commits go green, arrive in a batch, break a
//! test (whose dependants are skipped), and fix it; a worker is SIGKILLed mid-shard.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Farm, FarmOptions, by_id, test};
use greenlight_shared::api::{BuildDetail, BuildState, ShardState, TestStatus};
use greenlight_shared::suite::{SuiteFile, SuiteTest};

fn product_suite() -> SuiteFile {
    let mut tests: Vec<SuiteTest> = vec![
        test("chat/test_login.py::test_login", &["chat"], &[], 1.0),
        test("chat/test_send.py::test_send", &["chat"], &["chat/test_login.py::test_login"], 1.0),
        test("chat/test_send.py::test_emoji[😀 & <b>]", &["chat"], &["chat/test_send.py::test_send"], 1.0),
        test("smoke/test_boot.py::test_boot", &["smoke", "always"], &[], 0.5),
        // Long enough that the first build is still running when the batch is pushed.
        test("rooms/test_browser.py::test_tour", &["rooms"], &[], 100.0),
    ];
    for area in ["chat", "shop", "rooms"] {
        for index in 0..8 {
            tests.push(test(
                &format!("{area}/test_{area}.py::test_case_{index}"),
                &[area],
                &[],
                1.0 + index as f64 / 4.0,
            ));
        }
    }
    SuiteFile { name: "product".into(), shard_overhead_s: 0.5, tests }
}

fn ids_with_tags(suite: &SuiteFile, tags: &[&str]) -> BTreeSet<String> {
    suite
        .tests
        .iter()
        .filter(|test| test.tags.iter().any(|tag| tag == "always" || tags.contains(&tag.as_str())))
        .map(|test| test.id.clone())
        .collect()
}

#[test]
fn green_batch_red_and_fix_through_the_api() {
    let suite = product_suite();
    let farm = Farm::start(&suite, 4, FarmOptions::default());
    let initial = farm.repo.head().unwrap();

    // The first build covers the initial commit and runs everything.
    farm.wait_for("the first build to run", Duration::from_secs(120), |farm| {
        farm.builds().into_iter().find(|build| build.state == BuildState::Running)
    });
    // Two changes while it runs: one tagged by path, one by trailer. They ride together.
    farm.repo.touch_area("shop", "Shop: cache the catalogue").unwrap();
    let batch = farm.repo.commit("Rooms: doors\n\nTags: rooms", &[("docs/rooms.md", "doors\n")]).unwrap();

    let first = farm.finished_build_of(&initial);
    assert_eq!(first.state, BuildState::Green, "{first:?}");
    assert_eq!(first.counts.total as usize, suite.tests.len());
    let results = by_id(farm.tests(first.build_id).results);
    assert_eq!(results.len(), suite.tests.len(), "every test reported");
    for (id, attempts) in &results {
        assert_eq!(attempts.len(), 1, "{id} reported once");
        assert_eq!(attempts[0].status, TestStatus::Passed, "{id}");
        assert!(attempts[0].worker.as_deref().is_some_and(|name| name.starts_with("worker-")), "{id} names its worker");
    }
    let detail = farm.build(first.build_id);
    assert_eq!(detail.shards.iter().map(|shard| shard.tests).sum::<u32>() as usize, suite.tests.len());
    assert!(detail.shards.iter().all(|shard| shard.state == ShardState::Finished));
    // The same build as a Chrome trace (what Perfetto opens): a track per worker, a slice
    // per shard on its worker's track, and one per test inside its shard.
    let trace: serde_json::Value = farm.get(&format!("/api/v1/builds/{}/trace.json", first.build_id));
    let events = trace["traceEvents"].as_array().expect("traceEvents");
    let tracks: BTreeSet<&str> = events
        .iter()
        .filter(|event| event["name"] == "thread_name")
        .filter_map(|event| event["args"]["name"].as_str())
        .collect();
    let workers: BTreeSet<&str> = detail.shards.iter().map(|shard| shard.worker.as_str()).collect();
    assert_eq!(tracks, workers.iter().copied().chain(["build"]).collect(), "{trace}");
    assert_eq!(events.iter().filter(|event| event["cat"] == "shard").count(), detail.shards.len());
    let traced: BTreeSet<&str> =
        events.iter().filter(|event| event["cat"] == "test").filter_map(|event| event["name"].as_str()).collect();
    assert_eq!(traced, results.keys().map(String::as_str).collect(), "every test a slice");

    let second = farm.finished_build_of(&batch);
    assert_eq!(second.state, BuildState::Green);
    assert_eq!(second.changes.len(), 2, "both changes pushed during build 1 are covered by build 2");
    assert_eq!(second.tags, vec!["rooms".to_owned(), "shop".to_owned()]);
    let selected = ids_with_tags(&suite, &["rooms", "shop"]);
    let reported: BTreeSet<String> = farm.tests(second.build_id).results.into_iter().map(|r| r.test_id).collect();
    assert_eq!(reported, selected, "exactly the tagged tests and `always` ran");

    // Break the root of the chat chain: its dependants are skipped, not run.
    let login = "chat/test_login.py::test_login";
    let broken = farm.repo.set_failing("chat", &[login], "Chat: faster login").unwrap();
    let red = farm.finished_build_of(&broken);
    assert_eq!(red.state, BuildState::Red);
    assert_eq!(red.failed_tests, vec![login.to_owned()]);
    assert_eq!(red.counts.failed, 1);
    assert_eq!(red.counts.skipped, 2);
    let results = by_id(farm.tests(red.build_id).results);
    assert_eq!(results.keys().cloned().collect::<BTreeSet<_>>(), ids_with_tags(&suite, &["chat"]));
    let failure = &results[login][0];
    assert_eq!(failure.status, TestStatus::Failed);
    assert!(failure.output.as_deref().unwrap_or_default().contains("listed as failing"), "{failure:?}");
    let send = &results["chat/test_send.py::test_send"][0];
    assert_eq!(
        (send.status, send.output.as_deref()),
        (TestStatus::Skipped, Some(r#"dependency "chat/test_login.py::test_login" failed"#))
    );
    let emoji = &results["chat/test_send.py::test_emoji[😀 & <b>]"][0];
    assert_eq!(
        (emoji.status, emoji.output.as_deref()),
        (TestStatus::Skipped, Some(r#"dependency "chat/test_send.py::test_send" skipped"#))
    );

    let fixed = farm.repo.set_failing("chat", &[], "Chat: fix login [fix]").unwrap();
    let green = farm.finished_build_of(&fixed);
    assert_eq!(green.state, BuildState::Green);
    let results = by_id(farm.tests(green.build_id).results);
    assert!(results.values().all(|attempts| attempts.len() == 1 && attempts[0].status == TestStatus::Passed));
    assert_eq!(results.len(), ids_with_tags(&suite, &["chat"]).len());
}

#[test]
fn a_worker_killed_mid_shard_loses_no_test() {
    let tests: Vec<SuiteTest> =
        (0..16).map(|index| test(&format!("slow::test_{index:02}"), &["slow"], &[], 20.0)).collect();
    let suite = SuiteFile { name: "slow".into(), shard_overhead_s: 0.0, tests };
    let options = FarmOptions { scale: 0.1, lease_timeout_s: 3.0, heartbeat_interval_s: 0.5, ..FarmOptions::default() };
    let mut farm = Farm::start(&suite, 4, options);

    // Wait until some worker has held a lease for a second: it is inside its shard.
    let (victim, lease_id) = farm.wait_for("a worker inside a shard", Duration::from_secs(120), |farm| {
        let build = farm.builds().into_iter().find(|build| build.state == BuildState::Running)?;
        let detail = farm.build(build.build_id);
        let now = greenlight_shared::unix_now_s();
        detail
            .shards
            .iter()
            .find(|shard| shard.state == ShardState::Running && now - shard.started_at > 1.0)
            .map(|shard| (shard.worker.clone(), shard.lease_id))
    });
    let process = farm.workers.iter_mut().find(|process| process.name == victim).expect("the victim is ours");
    process.kill();

    let build = farm.finished_build_of(&farm.repo.head().unwrap());
    assert_eq!(build.state, BuildState::Green, "{build:?}");
    let results = by_id(farm.tests(build.build_id).results);
    assert_eq!(results.len(), 16, "every selected test reported");
    for (id, attempts) in &results {
        assert_eq!(attempts.len(), 1, "{id} reported exactly once: {attempts:?}");
        assert_eq!(attempts[0].status, TestStatus::Passed);
    }
    let detail = farm.build(build.build_id);
    let lost = detail.shards.iter().find(|shard| shard.lease_id == lease_id).expect("the lost shard is listed");
    assert_eq!(lost.state, ShardState::Expired, "the killed worker's lease expired");
    assert!(
        results.values().any(|attempts| attempts[0].attempt == 2),
        "the unfinished tests of the lost lease ran again elsewhere"
    );
}

#[test]
fn a_worker_that_joins_late_takes_over_the_unstarted_end_of_a_running_shard() {
    // 40 tests of half a second. The first worker, alone, leases most of them; the second,
    // started once that shard runs, would find little left, so the running shard gives
    // back the tests it has not started and the two share them.
    let tests: Vec<SuiteTest> =
        (0..40).map(|index| test(&format!("long::test_{index:02}"), &["long"], &[], 0.5)).collect();
    let suite = SuiteFile { name: "long".into(), shard_overhead_s: 0.0, tests };
    let options = FarmOptions { scale: 1.0, heartbeat_interval_s: 0.5, ..FarmOptions::default() };
    let mut farm = Farm::start(&suite, 1, options);
    let first = farm.running_shard();
    assert!(first.1 >= 30, "the lone worker leased most of the build: {first:?}");
    farm.start_worker("worker-late");

    let build = farm.finished_build_of(&farm.repo.head().unwrap());
    assert_eq!(build.state, BuildState::Green, "{build:?}");
    let results = by_id(farm.tests(build.build_id).results);
    assert_eq!(results.len(), 40, "every test has its result");
    for (id, attempts) in &results {
        assert_eq!(attempts.len(), 1, "{id} reported exactly once: {attempts:?}");
        assert_eq!((attempts[0].status, attempts[0].attempt), (TestStatus::Passed, 1), "{id}");
    }
    let detail: BuildDetail = farm.get(&format!("/api/v1/builds/{}?test_ids=true", build.build_id));
    let shrunk = detail.shards.iter().find(|shard| shard.lease_id == first.0).expect("the first shard is listed");
    assert!(shrunk.withdrawn > 0, "the first shard gave tests back: {shrunk:?}");
    assert_eq!(shrunk.state, ShardState::Finished, "stopping after the kept tests is no infrastructure error");
    assert_eq!(shrunk.tests + shrunk.withdrawn, first.1);
    assert_eq!(shrunk.test_ids.len() as u32, shrunk.tests);
    // Each test is in exactly one shard, and its result came from that shard's worker.
    let mut seen = BTreeSet::new();
    for shard in &detail.shards {
        for id in &shard.test_ids {
            assert!(seen.insert(id.clone()), "{id} is in two shards");
            assert_eq!(results[id][0].lease_id, Some(shard.lease_id), "{id}'s result came from its shard");
            assert_eq!(results[id][0].worker.as_deref(), Some(shard.worker.as_str()));
        }
    }
    assert_eq!(seen.len(), 40);
    assert!(results.values().any(|attempts| attempts[0].worker.as_deref() == Some("worker-late")));
    // Its runner did not go on into the given-back tests: it was stopped once the kept
    // ones had reported. (On a machine loaded enough that the late worker asked only in
    // the last seconds of the shard's 20, the runner may end by itself before a heartbeat
    // brings the withdrawal: there is nothing to stop then.)
    let natural_end = shrunk.started_at + 40.0 * 0.5;
    let late_start = detail
        .shards
        .iter()
        .filter(|shard| shard.worker == "worker-late")
        .map(|shard| shard.started_at)
        .fold(f64::INFINITY, f64::min);
    let log = std::fs::read_to_string(farm.dir().join("worker-0.log")).unwrap();
    if late_start < natural_end - 5.0 {
        assert!(log.contains("runner stopped after the tests the shard keeps"), "worker-0 log:\n{log}");
    } else {
        eprintln!(
            "the late worker asked {:.1} s before the shard's end: not enough to stop its runner",
            natural_end - late_start
        );
    }
}

#[test]
fn a_revision_whose_suite_is_broken_ends_as_an_error_naming_the_cycle() {
    let suite = SuiteFile {
        name: "small".into(),
        shard_overhead_s: 0.0,
        tests: vec![test("a", &["core"], &[], 1.0), test("b", &["core"], &["a"], 1.0)],
    };
    let farm = Farm::start(&suite, 2, FarmOptions::default());
    assert_eq!(farm.finished_build_of(&farm.repo.head().unwrap()).state, BuildState::Green);

    let mut cyclic = suite.clone();
    cyclic.tests[0].depends_on = vec!["b".into()];
    let broken = farm.repo.commit("Make a depend on b", &[("greenlight-suite.json", &cyclic.to_json())]).unwrap();
    let build = farm.finished_build_of(&broken);
    assert_eq!(build.state, BuildState::Error);
    assert_eq!(build.error.as_deref(), Some(r#"invalid suite: dependency cycle: "a" depends on "b" depends on "a""#));

    let repaired = farm.repo.commit("Untangle a and b", &[("greenlight-suite.json", &suite.to_json())]).unwrap();
    let build = farm.finished_build_of(&repaired);
    assert_eq!(build.state, BuildState::Green, "the farm carries on after a bad revision");
    assert_eq!(build.counts.passed, 2);
}

#[test]
fn a_listed_suite_set_up_once_per_revision_and_a_post_receive_hook() {
    let tests: Vec<SuiteTest> = (0..12).map(|index| test(&format!("t{index}"), &["core"], &[], 1.0)).collect();
    let suite = SuiteFile { name: "listed".into(), shard_overhead_s: 0.0, tests };
    let setup_log = tempfile::NamedTempFile::new().unwrap();
    let options = FarmOptions {
        // The poller looks once at start-up; after that only the hook says the branch moved.
        poll_interval_s: 3600.0,
        suite_toml: format!(
            r#"list_command = ["cat", "greenlight-suite.json"]
setup_command = ["sh", "-c", "echo \"$(pwd) $(git rev-parse HEAD)\" >> \"$SETUP_LOG\""]
env = {{ SETUP_LOG = {log:?} }}"#,
            log = setup_log.path().to_string_lossy()
        ),
        ..FarmOptions::default()
    };
    let farm = Farm::start(&suite, 3, options);
    let first = farm.finished_build_of(&farm.repo.head().unwrap());
    assert_eq!((first.state, first.counts.passed), (BuildState::Green, 12));

    let second = farm.repo.touch_area("core", "Core: tweak").unwrap();
    let output = std::process::Command::new(common::greenlight())
        .args(["submit", "--master", &farm.url, "--branch", "main", "--revision", &second, "--token", common::TOKEN])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains(&format!("queued {}", &second[..12])));
    let build = farm.finished_build_of(&second);
    assert_eq!((build.state, build.counts.passed), (BuildState::Green, 12));

    // Setup ran once per (worker checkout, revision), never twice for the same pair.
    let log = std::fs::read_to_string(setup_log.path()).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    let unique: BTreeSet<&str> = lines.iter().copied().collect();
    assert_eq!(unique.len(), lines.len(), "setup repeated for a revision:\n{log}");
    assert!(lines.iter().any(|line| line.ends_with(&second)), "setup ran for the new revision:\n{log}");

    // A hook for another branch is refused by name.
    let output = std::process::Command::new(common::greenlight())
        .args(["submit", "--master", &farm.url, "--branch", "release", "--token", common::TOKEN])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("unwatched_branch"));
}

#[test]
fn a_master_killed_mid_build_resumes_it_after_a_restart() {
    let tests: Vec<SuiteTest> =
        (0..24).map(|index| test(&format!("slow::test_{index:02}"), &["slow"], &[], 10.0)).collect();
    let suite = SuiteFile { name: "slow".into(), shard_overhead_s: 0.0, tests };
    let options = FarmOptions { scale: 0.1, lease_timeout_s: 3.0, heartbeat_interval_s: 0.5, ..FarmOptions::default() };
    let mut farm = Farm::start(&suite, 3, options);

    // Some results are in, the build is far from done: kill the master.
    let build = farm.wait_for("a build with a few results", Duration::from_secs(120), |farm| {
        let build = farm.builds().into_iter().find(|build| build.state == BuildState::Running)?;
        (build.counts.done() >= 3).then_some(build)
    });
    let before = by_id(farm.tests(build.build_id).results);
    // A result is shown once written and acknowledged once flushed: only after a flush
    // that began after this read has ended is every result in it stored. Flushes run one
    // at a time, so the second to begin after it is such a flush's end.
    let flushes = |farm: &Farm| -> u64 {
        let metrics = farm.get_text("/metrics").1;
        let line =
            metrics.lines().find(|line| line.starts_with("greenlight_store_flushes_total ")).expect("the flush count");
        line.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64
    };
    let read_at = flushes(&farm);
    farm.wait_for("a flush begun after the read to end", Duration::from_secs(60), |farm| {
        (flushes(farm) >= read_at + 2).then_some(())
    });
    farm.restart_master();

    let after = farm.finished_build_of(&farm.repo.head().unwrap());
    assert_eq!(after.build_id, build.build_id, "the same build resumed, not a new one");
    assert_eq!(after.state, BuildState::Green, "{after:?}");
    let results = by_id(farm.tests(after.build_id).results);
    assert_eq!(results.len(), 24, "every selected test reported");
    for (id, attempts) in &results {
        assert_eq!(attempts.len(), 1, "{id} reported exactly once: {attempts:?}");
    }
    for (id, attempts) in &before {
        assert_eq!(&results[id], attempts, "{id}: a result stored before the kill is kept as it was");
    }
    assert_eq!(farm.builds().len(), 1, "no change was built twice");
}
