//! A build's timeline in the Chrome trace event format, as
//! `GET /api/v1/builds/{id}/trace.json` serves it: Perfetto (<https://ui.perfetto.dev>) and
//! `chrome://tracing` open it. One track per worker, its shards as slices, the tests each
//! shard ran as slices inside them; a track of its own for the build.
//!
//! Times are microseconds from the build's start. The master records when a shard started
//! and ended and how long each test took, not when each test started: a shard's tests are
//! laid end to end in the order the shard listed them, ending when the shard ended (the
//! worker's checkout and runner start-up come first), or, for a shard still running,
//! starting when it started. Each test slice says so (`args.start`).

use std::collections::BTreeMap;

use greenlight_shared::api::{BuildDetail, ShardView, TestResultView};
use serde_json::{Value, json};

/// The single process of the trace (Perfetto groups tracks by process).
const PID: u32 = 1;

/// The build's own track; workers' tracks are numbered from 1, by name.
const BUILD_TID: u32 = 0;

/// The trace of a build whose results are `results`, drawn at time `now` (Unix seconds:
/// the end of what is still running).
pub fn render(detail: &BuildDetail, results: &[TestResultView], now: f64) -> Value {
    let build = &detail.build;
    let origin = build
        .started_at
        .into_iter()
        .chain(detail.shards.iter().map(|shard| shard.started_at))
        .fold(f64::INFINITY, f64::min);
    let origin = if origin.is_finite() { origin } else { now };
    let micros = |at: f64| ((at - origin) * 1e6).max(0.0);

    let workers: BTreeMap<&str, u32> = {
        let mut names: Vec<&str> = detail.shards.iter().map(|shard| shard.worker.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names.into_iter().zip(BUILD_TID + 1..).collect()
    };
    let mut events = vec![
        json!({"ph": "M", "name": "process_name", "pid": PID, "tid": BUILD_TID,
               "args": {"name": format!("build {} ({})", build.build_id, short(&build.revision))}}),
        json!({"ph": "M", "name": "thread_name", "pid": PID, "tid": BUILD_TID, "args": {"name": "build"}}),
    ];
    for (worker, tid) in &workers {
        events.push(json!({"ph": "M", "name": "thread_name", "pid": PID, "tid": tid, "args": {"name": worker}}));
    }
    if let Some(started_at) = build.started_at {
        let ended_at = build.finished_at.unwrap_or(now);
        events.push(json!({
            "ph": "X", "cat": "build", "name": format!("build {}: {:?}", build.build_id, build.state).to_lowercase(),
            "pid": PID, "tid": BUILD_TID, "ts": micros(started_at), "dur": micros(ended_at) - micros(started_at),
            "args": {"build_id": build.build_id, "revision": build.revision, "state": build.state, "counts": build.counts},
        }));
    }

    let mut by_lease: BTreeMap<u64, Vec<&TestResultView>> = BTreeMap::new();
    for result in results {
        if let Some(lease_id) = result.lease_id {
            by_lease.entry(lease_id).or_default().push(result);
        }
    }
    for shard in &detail.shards {
        let tid = workers[shard.worker.as_str()];
        let ended_at = shard.finished_at.unwrap_or(now).max(shard.started_at);
        events.push(json!({
            "ph": "X", "cat": "shard", "name": format!("shard {}", shard.lease_id),
            "pid": PID, "tid": tid, "ts": micros(shard.started_at), "dur": micros(ended_at) - micros(shard.started_at),
            "args": {"lease_id": shard.lease_id, "state": shard.state, "tests": shard.tests,
                     "withdrawn": shard.withdrawn, "counts": shard.counts, "runner_wall_s": shard.runner_wall_s},
        }));
        let ran = in_shard_order(shard, by_lease.remove(&shard.lease_id).unwrap_or_default());
        let total: f64 = ran.iter().map(|result| result.duration_s.max(0.0)).sum();
        let (mut at, start) = match shard.finished_at {
            Some(_) => ((ended_at - total).max(shard.started_at), "laid end to end, ending with the shard"),
            None => (shard.started_at, "laid end to end from the shard's start"),
        };
        for result in ran {
            let dur = result.duration_s.max(0.0);
            let until = (at + dur).min(ended_at);
            events.push(json!({
                "ph": "X", "cat": "test", "name": result.test_id,
                "pid": PID, "tid": tid, "ts": micros(at), "dur": micros(until) - micros(at),
                "args": {"status": result.status, "attempt": result.attempt, "duration_s": result.duration_s,
                         "retried": result.retried, "flaky": result.flaky, "start": start},
            }));
            at = until;
        }
    }
    json!({
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {"build_id": build.build_id, "revision": build.revision, "origin_unix_s": origin},
    })
}

/// A shard's results in the order the shard listed its tests (results of tests it no
/// longer lists, withdrawn after they ran, last, by id).
fn in_shard_order<'a>(shard: &ShardView, mut ran: Vec<&'a TestResultView>) -> Vec<&'a TestResultView> {
    let position: BTreeMap<&str, usize> =
        shard.test_ids.iter().enumerate().map(|(index, id)| (id.as_str(), index)).collect();
    ran.sort_by(|a, b| {
        let key = |result: &TestResultView| {
            (position.get(result.test_id.as_str()).copied().unwrap_or(usize::MAX), result.attempt)
        };
        key(a).cmp(&key(b)).then_with(|| a.test_id.cmp(&b.test_id))
    });
    ran
}

fn short(revision: &str) -> &str {
    revision.get(..12).unwrap_or(revision)
}

#[cfg(test)]
mod tests {
    use greenlight_shared::api::{BuildState, BuildSummary, ShardState, TestCounts, TestStatus};

    use super::*;

    fn shard(lease_id: u64, worker: &str, started_at: f64, finished_at: Option<f64>, test_ids: &[&str]) -> ShardView {
        ShardView {
            lease_id,
            worker: worker.into(),
            tests: test_ids.len() as u32,
            withdrawn: 0,
            started_at,
            finished_at,
            state: if finished_at.is_some() { ShardState::Finished } else { ShardState::Running },
            counts: TestCounts::default(),
            test_ids: test_ids.iter().map(|id| (*id).to_owned()).collect(),
            reproduce: String::new(),
            runner_wall_s: None,
            copy_of: None,
            stopped: None,
        }
    }

    fn result(test_id: &str, lease_id: u64, duration_s: f64, status: TestStatus) -> TestResultView {
        TestResultView {
            test_id: test_id.into(),
            attempt: 1,
            status,
            duration_s,
            output: None,
            worker: None,
            retried: false,
            flaky: false,
            quarantined: false,
            lease_id: Some(lease_id),
        }
    }

    fn slices<'a>(trace: &'a Value, category: &str) -> Vec<&'a Value> {
        trace["traceEvents"].as_array().unwrap().iter().filter(|event| event["cat"] == category).collect()
    }

    #[test]
    fn workers_are_tracks_shards_their_slices_and_tests_nest_inside_in_the_shards_order() {
        let build: BuildSummary = serde_json::from_value(json!({
            "build_id": 7, "branch": "main", "revision": "0123456789abcdef", "state": "red",
            "changes": [], "tags": [], "full_run": true, "counts": TestCounts::default(),
            "failed_tests": [], "created_at": 999.0, "started_at": 1000.0, "finished_at": 1030.0,
            "lower_bound_s": null, "makespan_s": 30.0, "shards": 3
        }))
        .unwrap();
        assert_eq!(build.state, BuildState::Red);
        let detail = BuildDetail {
            build,
            shards: vec![
                shard(1, "worker-b", 1001.0, Some(1011.0), &["t::slow", "t::quick"]),
                shard(2, "worker-a", 1002.0, Some(1020.0), &["t::other"]),
                shard(3, "worker-b", 1012.0, None, &["t::late"]),
            ],
            remaining_s: None,
        };
        let results = vec![
            result("t::quick", 1, 1.0, TestStatus::Passed),
            result("t::slow", 1, 6.0, TestStatus::Failed),
            result("t::other", 2, 3.0, TestStatus::Passed),
            result("t::late", 3, 2.0, TestStatus::Passed),
        ];
        let trace = render(&detail, &results, 1025.0);

        let names: Vec<(u64, &str)> = trace["traceEvents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|event| event["name"] == "thread_name")
            .map(|event| (event["tid"].as_u64().unwrap(), event["args"]["name"].as_str().unwrap()))
            .collect();
        assert_eq!(names, [(0, "build"), (1, "worker-a"), (2, "worker-b")]);

        let build_slice = &slices(&trace, "build")[0];
        assert_eq!((build_slice["ts"].as_f64(), build_slice["dur"].as_f64()), (Some(0.0), Some(30e6)));
        let shards = slices(&trace, "shard");
        assert_eq!(shards.len(), 3);
        assert_eq!((shards[0]["tid"].as_u64(), shards[0]["ts"].as_f64()), (Some(2), Some(1e6)));
        assert_eq!(shards[2]["dur"].as_f64(), Some(13e6), "a running shard runs until now");

        let tests = slices(&trace, "test");
        let order: Vec<&str> = tests.iter().map(|test| test["name"].as_str().unwrap()).collect();
        assert_eq!(order, ["t::slow", "t::quick", "t::other", "t::late"], "in each shard's order");
        // A finished shard's tests end with it; a running one's start with it.
        assert_eq!((tests[0]["ts"].as_f64(), tests[0]["dur"].as_f64()), (Some(4e6), Some(6e6)));
        assert_eq!((tests[1]["ts"].as_f64(), tests[1]["dur"].as_f64()), (Some(10e6), Some(1e6)));
        assert_eq!(tests[3]["ts"].as_f64(), Some(12e6));
        assert_eq!(tests[0]["args"]["status"], "failed");
        for (test, shard) in tests.iter().zip([0, 0, 1, 2]) {
            let (start, end) = (shards[shard]["ts"].as_f64().unwrap(), shards[shard]["dur"].as_f64().unwrap());
            let (ts, dur) = (test["ts"].as_f64().unwrap(), test["dur"].as_f64().unwrap());
            assert!(ts >= start && ts + dur <= start + end, "{test} inside {}", shards[shard]);
            assert_eq!(test["tid"], shards[shard]["tid"]);
        }
    }

    #[test]
    fn tests_longer_than_their_shard_are_cut_at_its_edges() {
        let build: BuildSummary = serde_json::from_value(json!({
            "build_id": 1, "branch": "main", "revision": "r", "state": "green", "changes": [], "tags": [],
            "full_run": true, "counts": TestCounts::default(), "failed_tests": [], "created_at": 0.0,
            "started_at": 0.0, "finished_at": null, "lower_bound_s": null, "makespan_s": null, "shards": 1
        }))
        .unwrap();
        let detail = BuildDetail { build, shards: vec![shard(1, "w", 0.0, Some(2.0), &["a", "b"])], remaining_s: None };
        let results = vec![result("a", 1, 5.0, TestStatus::Passed), result("b", 1, 5.0, TestStatus::Passed)];
        let trace = render(&detail, &results, 10.0);
        for test in slices(&trace, "test") {
            let (ts, dur) = (test["ts"].as_f64().unwrap(), test["dur"].as_f64().unwrap());
            assert!(ts >= 0.0 && dur >= 0.0 && ts + dur <= 2e6, "{test}");
        }
    }
}
