//! Bad input gets a clear error and loses nothing. The test plays a worker by hand
//! against a real `greenlight master` process: missing and wrong tokens, malformed JSON,
//! wrong types, oversized bodies, unknown ids, a result for a test outside the lease, a
//! report on another worker's lease, and a repeated report. Every refusal is a 4xx with a
//! JSON body naming the problem, and the master keeps serving.

mod common;

use common::{Farm, FarmOptions, TOKEN, expect_error, test};
use greenlight_shared::api::{
    Lease, LeaseResponse, RegisterResponse, ResultsResponse, ShardView, TestHistory, TestStatus,
};
use greenlight_shared::suite::SuiteFile;
use reqwest::blocking::Client;
use serde_json::json;

#[test]
fn bad_requests_are_refused_with_a_named_problem_and_nothing_is_lost() {
    let suite = SuiteFile {
        name: "tiny".into(),
        shard_overhead_s: 0.0,
        tests: vec![test("a::one", &["a"], &[], 1.0), test("a::two", &["a"], &[], 1.0)],
    };
    // A small body limit, so that the oversized body is written whole before the answer
    // (a multi-megabyte one races the server closing the connection).
    let farm = Farm::start(&suite, 0, FarmOptions { max_body_bytes: 64 * 1024, ..FarmOptions::default() });
    let http = Client::new();
    let url = |path: &str| format!("{}{path}", farm.url);
    let post = |path: &str| http.post(url(path)).bearer_auth(TOKEN);

    // Strangers.
    expect_error(http.post(url("/api/v1/workers/register")).json(&json!({"name": "x"})), 401, "missing_token");
    expect_error(
        http.post(url("/api/v1/workers/register")).bearer_auth("nope").json(&json!({"name": "x"})),
        403,
        "wrong_token",
    );

    // Malformed and mistyped bodies.
    let body = expect_error(
        post("/api/v1/workers/register").header("content-type", "application/json").body("{\"name\": "),
        400,
        "malformed_json",
    );
    assert!(body.message.contains("EOF") || body.message.contains("parse"), "{body:?}");
    let body = expect_error(post("/api/v1/workers/register").json(&json!({"name": 42})), 422, "invalid_body");
    assert!(body.message.contains("name"), "the message names the field: {body:?}");
    expect_error(post("/api/v1/workers/register").body("name=x"), 415, "not_json");
    expect_error(post("/api/v1/workers/register").json(&json!({"name": ""})), 422, "invalid_name");
    let huge = format!("{{\"name\": \"{}\"}}", "x".repeat(100 * 1024));
    expect_error(
        post("/api/v1/workers/register").header("content-type", "application/json").body(huge),
        413,
        "body_too_large",
    );
    expect_error(
        post("/api/v1/workers/register").header("content-type", "application/json").body(vec![0xff, 0xfe, b'{']),
        400,
        "malformed_json",
    );

    // Out-of-range numbers, in bodies, paths and queries.
    expect_error(post("/api/v1/leases/1/heartbeat").json(&json!({"worker_id": -1})), 422, "invalid_body");
    expect_error(
        post("/api/v1/leases/1/heartbeat")
            .header("content-type", "application/json")
            .body("{\"worker_id\": 18446744073709551616}"),
        422,
        "invalid_body",
    );
    expect_error(
        post("/api/v1/workers/1/lease").header("content-type", "application/json").body("{\"wait_s\": 1e999}"),
        400,
        "malformed_json",
    );
    expect_error(
        post("/api/v1/leases/18446744073709551616/heartbeat").json(&json!({"worker_id": 1})),
        400,
        "invalid_path",
    );
    expect_error(post("/api/v1/workers/-3/lease").json(&json!({"wait_s": 0})), 400, "invalid_path");
    expect_error(http.get(url("/api/v1/builds/abc")), 400, "invalid_path");
    expect_error(http.get(url("/api/v1/builds?limit=-5")), 400, "invalid_query");

    // Unknown ids.
    expect_error(post("/api/v1/workers/999/lease").json(&json!({"wait_s": 0})), 404, "unknown_worker");
    expect_error(post("/api/v1/leases/999/heartbeat").json(&json!({"worker_id": 1})), 404, "unknown_worker");
    expect_error(http.get(url("/api/v1/builds/999")), 404, "unknown_build");
    expect_error(http.get(url("/api/v1/nothing-here")), 404, "not_found");

    // Play two workers by hand.
    let me: RegisterResponse =
        post("/api/v1/workers/register").json(&json!({"name": "by-hand"})).send().unwrap().json().unwrap();
    let other: RegisterResponse =
        post("/api/v1/workers/register").json(&json!({"name": "other"})).send().unwrap().json().unwrap();
    expect_error(
        post(&format!("/api/v1/workers/{}/lease", me.worker_id)).json(&json!({"wait_s": -1})),
        422,
        "invalid_wait",
    );
    let lease: Lease = loop {
        let answer: LeaseResponse = post(&format!("/api/v1/workers/{}/lease", me.worker_id))
            .json(&json!({"wait_s": 5}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        if let Some(lease) = answer.lease {
            break lease;
        }
    };
    let results_url = format!("/api/v1/leases/{}/results", lease.lease_id);
    let report = |worker_id: u64, test_id: &str| {
        post(&results_url).json(
            &json!({"worker_id": worker_id, "results": [{"test_id": test_id, "status": "passed", "duration_s": 0.5}]}),
        )
    };
    expect_error(report(me.worker_id, "a::not-in-the-suite"), 409, "test_not_in_lease");
    expect_error(report(other.worker_id, &lease.tests[0]), 403, "not_your_lease");
    expect_error(
        post("/api/v1/leases/12345/results").json(&json!({"worker_id": me.worker_id, "results": []})),
        404,
        "unknown_lease",
    );
    expect_error(
        post(&results_url)
            .json(&json!({"worker_id": me.worker_id, "results": [{"test_id": lease.tests[0], "status": "exploded"}]})),
        422,
        "invalid_body",
    );

    // A good report counts once; the same report again is acknowledged as a duplicate.
    let first: ResultsResponse = report(me.worker_id, &lease.tests[0]).send().unwrap().json().unwrap();
    assert_eq!((first.accepted, first.duplicates, first.stale), (1, 0, 0));
    let again: ResultsResponse = report(me.worker_id, &lease.tests[0]).send().unwrap().json().unwrap();
    assert_eq!((again.accepted, again.duplicates, again.stale), (0, 1, 0));

    // Nothing above hurt the build: it still has exactly one result, and the master serves.
    let build = farm.builds().into_iter().next().expect("a build");
    let results = farm.tests(build.build_id).results;
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].test_id, lease.tests[0]);
    assert_eq!(build.counts.done(), 1);

    // The page's read endpoints: the shard knows its tests and counts, the result its
    // lease, the test its history; unknown or missing ids are named.
    let shard: ShardView = farm.get(&format!("/api/v1/builds/{}/shards/{}", build.build_id, lease.lease_id));
    assert_eq!(shard.test_ids, lease.tests);
    assert_eq!((shard.counts.passed, shard.state.as_str()), (1, "running"));
    assert!(farm.build(build.build_id).shards.iter().all(|shard| shard.test_ids.is_empty()), "ids only on request");
    assert_eq!(results[0].lease_id, Some(lease.lease_id));
    let history: TestHistory = farm.get(&format!("/api/v1/tests?id={}", lease.tests[0].replace(':', "%3A")));
    assert_eq!((history.runs.len(), history.runs[0].status), (1, TestStatus::Passed));
    assert_eq!(history.tags, vec!["a".to_owned()]);
    expect_error(http.get(url(&format!("/api/v1/builds/{}/shards/999", build.build_id))), 404, "unknown_shard");
    expect_error(http.get(url("/api/v1/tests")), 422, "invalid_test_id");
}
