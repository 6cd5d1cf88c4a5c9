//! Retention through the real master: with `[storage] keep_results_builds = 1`, an older
//! build's results are removed in the background once a newer build ends; its summary
//! stays, and reading its results answers 410 Gone with code `results_pruned`. The newest
//! build's results read as the worker reported them (packed by then).

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Farm, FarmOptions, expect_error, greenlight, test};
use greenlight_shared::api::{BuildState, TestStatus};
use greenlight_shared::suite::SuiteFile;

#[test]
fn an_old_builds_results_are_removed_and_reading_them_says_so() {
    let suite = SuiteFile {
        name: "tiny".into(),
        shard_overhead_s: 0.0,
        tests: vec![test("a::one", &["a"], &[], 1.0), test("a::two", &["a"], &[], 1.0)],
    };
    let options = FarmOptions { extra_toml: "[storage]\nkeep_results_builds = 1\n".into(), ..FarmOptions::default() };
    let farm = Farm::start(&suite, 1, options);
    let first = farm.finished_build_of(&farm.repo.head().unwrap());
    assert_eq!(farm.tests(first.build_id).results.len(), 2, "kept while it is the newest");
    let second = farm.finished_build_of(&farm.repo.touch_area("a", "A: again").unwrap());
    assert_eq!(second.state, BuildState::Green);

    let http = reqwest::blocking::Client::new();
    let url = format!("{}/api/v1/builds/{}/tests", farm.url, first.build_id);
    farm.wait_for("the first build's results to be removed", Duration::from_secs(60), |_| {
        let status = http.get(&url).send().expect("the master answers").status().as_u16();
        (status != 200).then_some(())
    });
    let body = expect_error(http.get(&url), 410, "results_pruned");
    assert!(body.message.contains("keep_results_builds"), "the message says why: {body:?}");
    let summary = farm.build(first.build_id).build;
    assert_eq!((summary.state, summary.counts.passed), (BuildState::Green, 2), "the summary is kept");

    let results = farm.tests(second.build_id).results;
    assert_eq!(results.len(), 2, "{results:?}");
    assert!(results.iter().all(|result| result.status == TestStatus::Passed && result.worker.is_some()));
}

/// `greenlight compact` refuses a store its master holds; once the master is stopped it
/// rewrites the store, and the restarted master serves the same builds and results.
#[test]
fn a_stopped_masters_store_is_compacted_and_serves_the_same_builds() {
    let suite = SuiteFile {
        name: "tiny".into(),
        shard_overhead_s: 0.0,
        tests: vec![test("a::one", &["a"], &[], 1.0), test("a::two", &["a"], &[], 1.0)],
    };
    let mut farm = Farm::start(&suite, 1, FarmOptions::default());
    let build = farm.finished_build_of(&farm.repo.head().unwrap());
    let results = farm.tests(build.build_id).results;
    assert_eq!(results.len(), 2);
    let compact =
        |farm: &Farm| Command::new(greenlight()).arg("compact").arg("--config").arg(&farm.config).output().unwrap();

    let refused = compact(&farm);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("another master"), "{stderr}");

    farm.master.kill();
    let done = compact(&farm);
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    assert!(stdout.contains("compacted") && stdout.contains("MB after"), "{stdout}");

    farm.restart_master();
    assert_eq!(farm.build(build.build_id).build.state, build.state);
    assert_eq!(farm.tests(build.build_id).results, results, "the same results after compaction");
    let next = farm.finished_build_of(&farm.repo.touch_area("a", "A: after compaction").unwrap());
    assert_eq!(next.state, BuildState::Green, "the compacted store takes new builds");
}
