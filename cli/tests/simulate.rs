//! `greenlight simulate` as DESIGN.md specifies it: the real scheduler on a virtual clock,
//! its printed figures, the schedule file, and clear errors for bad suites and histories.

use std::process::Command;

use serde_json::Value;

fn simulate(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_greenlight")).arg("simulate").args(args).output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn figure(stdout: &str, label: &str) -> f64 {
    let line = stdout.lines().find(|line| line.starts_with(label)).unwrap_or_else(|| panic!("no {label} in {stdout}"));
    line[label.len()..].trim().trim_end_matches(" s").parse().unwrap()
}

#[test]
fn simulates_a_suite_and_writes_the_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let suite = dir.path().join("suite.json");
    std::fs::write(
        &suite,
        r#"{"name": "t", "shard_overhead_s": 1.0, "tests": [
            {"id": "a", "duration_s": 4.0}, {"id": "b", "duration_s": 3.0, "depends_on": ["a"]},
            {"id": "c", "duration_s": 2.0, "tags": ["x"]}, {"id": "d", "duration_s": 2.0}]}"#,
    )
    .unwrap();
    let schedule = dir.path().join("schedule.json");
    let (ok, stdout, stderr) =
        simulate(&["--suite", suite.to_str().unwrap(), "--workers", "2", "--schedule-out", schedule.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    // Lower bound: max(11 / 2, 4, a then b = 7) + 1 = 8.
    assert_eq!(figure(&stdout, "lower bound:"), 8.0);
    let makespan = figure(&stdout, "makespan:");
    assert!(makespan >= 8.0, "{stdout}");
    assert_eq!(figure(&stdout, "ratio:"), (makespan / 8.0 * 1000.0).round() / 1000.0);
    let schedule: Value = serde_json::from_slice(&std::fs::read(&schedule).unwrap()).unwrap();
    let shards = schedule["shards"].as_array().unwrap();
    let mut ids: Vec<&str> = shards
        .iter()
        .flat_map(|shard| shard["tests"].as_array().unwrap().iter().map(|id| id.as_str().unwrap()))
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, vec!["a", "b", "c", "d"], "every test scheduled exactly once");
    // Each test's start and end as DESIGN.md defines a shard: its start, the overhead, then
    // its tests back to back in the order listed; b starts after a ended, in another shard
    // or the same one.
    let duration = |id: &str| match id {
        "a" => 4.0,
        "b" => 3.0,
        _ => 2.0,
    };
    let mut times = std::collections::HashMap::new();
    for shard in shards {
        let mut time = shard["start"].as_f64().unwrap() + 1.0;
        for id in shard["tests"].as_array().unwrap().iter().map(|id| id.as_str().unwrap()) {
            times.insert(id, (time, time + duration(id)));
            time += duration(id);
        }
        assert_eq!(shard["end"].as_f64().unwrap(), time, "a shard ends after its last test: {shard}");
    }
    assert!(times["b"].0 >= times["a"].1, "b starts after a ends: {times:?}");

    // Tags select `x` only (and `always`, none here).
    let (ok, stdout, _) = simulate(&["--suite", suite.to_str().unwrap(), "--workers", "2", "--tags", "x"]);
    assert!(ok);
    assert!(stdout.contains("(1 of 4 tests selected)"), "{stdout}");
}

#[test]
fn bad_suites_and_histories_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let suite = dir.path().join("suite.json");
    let check = |content: &str, extra: &[&str], expected: &str| {
        std::fs::write(&suite, content).unwrap();
        let mut args = vec!["--suite", suite.to_str().unwrap(), "--workers", "3"];
        args.extend_from_slice(extra);
        let (ok, _, stderr) = simulate(&args);
        assert!(!ok, "should fail: {content}");
        assert!(stderr.contains(expected), "expected {expected:?} in {stderr}");
    };
    check(
        r#"{"tests": [{"id": "a", "depends_on": ["b"]}, {"id": "b", "depends_on": ["a"]}]}"#,
        &[],
        r#"dependency cycle: "a" depends on "b" depends on "a""#,
    );
    check(r#"{"tests": [{"id": "a"}, {"id": "a"}]}"#, &[], r#"duplicate test id "a""#);
    check(
        r#"{"tests": [{"id": "a", "depends_on": ["zz"]}]}"#,
        &[],
        r#"depends on "zz", which is not a test of the suite"#,
    );
    check(r#"{"tests": [{"id": "a", "duration_s": -3}]}"#, &[], "duration_s of a is -3");
    check(r#"{"tests": [{"id": "a"}"#, &[], "not valid JSON of the suite format");
    let history = dir.path().join("history.json");
    std::fs::write(&history, r#"{"durations": {}}"#).unwrap();
    check(r#"{"tests": [{"id": "a"}]}"#, &["--history", history.to_str().unwrap()], "is not a history file");
    std::fs::write(&history, r#"{"durations_s": {"a": -1}}"#).unwrap();
    check(r#"{"tests": [{"id": "a"}]}"#, &["--history", history.to_str().unwrap()], r#"duration of "a" is -1"#);
}
