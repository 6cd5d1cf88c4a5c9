//! The preparation protocol, played by hand against a real `greenlight master` whose
//! suite is listed by the nextest adapter (so by a worker): bad input to its routes gets
//! a clear error and loses nothing (unknown preparation or revision, wrong token, another
//! worker's preparation, an oversized archive, a listing before its archive, a malformed
//! listing), the archive a worker uploads is served back whole, and the listing it sends
//! plans the build. A preparer that goes silent is replaced, and a listing that fails is
//! the build's error.

mod common;

use std::time::Duration;

use common::{Farm, FarmOptions, TOKEN, expect_error};
use greenlight_shared::api::{BuildState, LeaseResponse, Prepare, RegisterResponse};
use greenlight_shared::suite::SuiteFile;
use reqwest::blocking::Client;
use serde_json::json;

fn nextest_farm(top_toml: &str, lease_timeout_s: f64) -> Farm {
    let empty = SuiteFile { name: "unused".into(), shard_overhead_s: 0.0, tests: Vec::new() };
    let options = FarmOptions {
        suite_toml: "runner = \"nextest\"".into(),
        top_toml: top_toml.into(),
        lease_timeout_s,
        heartbeat_interval_s: lease_timeout_s / 4.0,
        ..FarmOptions::default()
    };
    Farm::start(&empty, 0, options)
}

fn register(http: &Client, farm: &Farm, name: &str) -> u64 {
    let response: RegisterResponse = http
        .post(format!("{}/api/v1/workers/register", farm.url))
        .bearer_auth(TOKEN)
        .json(&json!({"name": name}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    response.worker_id
}

/// One long-poll for work (up to a second) as a worker that can prepare.
fn ask_for_work(http: &Client, farm: &Farm, worker_id: u64) -> LeaseResponse {
    http.post(format!("{}/api/v1/workers/{worker_id}/lease", farm.url))
        .bearer_auth(TOKEN)
        .json(&json!({"wait_s": 1.0, "can_prepare": true}))
        .send()
        .unwrap()
        .json()
        .unwrap()
}

/// Long-polls as a worker that can prepare until it is given a preparation.
fn wait_for_preparation(http: &Client, farm: &Farm, worker_id: u64) -> Prepare {
    farm.wait_for("a preparation", Duration::from_secs(60), |farm| {
        let answer = ask_for_work(http, farm, worker_id);
        assert!(answer.lease.is_none(), "no shard before the revision is listed: {answer:?}");
        answer.prepare
    })
}

#[test]
fn bad_preparation_calls_are_refused_with_a_named_problem_and_nothing_is_lost() {
    let farm = nextest_farm("max_archive_bytes = 4096", 30.0);
    let http = Client::new();
    let url = |path: &str| format!("{}{path}", farm.url);
    let revision = farm.repo.head().unwrap();

    let worker = register(&http, &farm, "preparer");
    let other = register(&http, &farm, "other");
    // A worker that does not say it can prepare gets no preparation (and no shard: the
    // build waits on the listing).
    let answer: LeaseResponse = http
        .post(url(&format!("/api/v1/workers/{other}/lease")))
        .bearer_auth(TOKEN)
        .json(&json!({"wait_s": 0.5}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!((answer.lease, answer.prepare), (None, None));
    let job = wait_for_preparation(&http, &farm, worker);
    assert_eq!(job.revision, revision);
    assert!(job.upload_archive);
    let id = job.prepare_id;
    let listing = |worker_id: u64, suite: serde_json::Value| {
        http.post(url(&format!("/api/v1/prepares/{id}/listing")))
            .bearer_auth(TOKEN)
            .json(&json!({"worker_id": worker_id, "outcome": {"kind": "listed", "suite": suite}}))
    };
    let good_suite = json!({"name": "nextest", "tests": [{"id": "alpha tests::adds"}, {"id": "beta it"}]});

    // Tokens, as on every worker route.
    expect_error(
        http.post(url(&format!("/api/v1/prepares/{id}/heartbeat"))).json(&json!({"worker_id": worker})),
        401,
        "missing_token",
    );
    expect_error(
        http.put(url(&format!("/api/v1/prepares/{id}/archive?worker_id={worker}"))).bearer_auth("nope").body("x"),
        403,
        "wrong_token",
    );
    expect_error(http.get(url(&format!("/api/v1/revisions/{revision}/archive"))), 401, "missing_token");

    // Unknown preparations (a listing for a revision nobody asked to prepare) and revisions.
    expect_error(
        http.post(url("/api/v1/prepares/999/listing"))
            .bearer_auth(TOKEN)
            .json(&json!({"worker_id": worker, "outcome": {"kind": "listed", "suite": good_suite}})),
        404,
        "unknown_preparation",
    );
    expect_error(
        http.post(url("/api/v1/prepares/999/heartbeat")).bearer_auth(TOKEN).json(&json!({"worker_id": worker})),
        404,
        "unknown_preparation",
    );
    expect_error(
        http.put(url(&format!("/api/v1/prepares/999/archive?worker_id={worker}"))).bearer_auth(TOKEN).body("x"),
        404,
        "unknown_preparation",
    );
    expect_error(
        http.get(url(&format!("/api/v1/revisions/{}/archive", "0".repeat(40)))).bearer_auth(TOKEN),
        404,
        "no_archive",
    );
    expect_error(http.get(url(&format!("/api/v1/revisions/{revision}/archive"))).bearer_auth(TOKEN), 404, "no_archive");
    expect_error(http.get(url("/api/v1/revisions/..%2F..%2Fetc/archive")).bearer_auth(TOKEN), 422, "invalid_revision");
    expect_error(
        http.put(url(&format!("/api/v1/prepares/{id}/archive"))).bearer_auth(TOKEN).body("x"),
        400,
        "invalid_query",
    );

    // Another worker's preparation.
    expect_error(listing(other, good_suite.clone()), 403, "not_your_preparation");
    expect_error(
        http.put(url(&format!("/api/v1/prepares/{id}/archive?worker_id={other}"))).bearer_auth(TOKEN).body("x"),
        403,
        "not_your_preparation",
    );
    let heartbeat: serde_json::Value = http
        .post(url(&format!("/api/v1/prepares/{id}/heartbeat")))
        .bearer_auth(TOKEN)
        .json(&json!({"worker_id": other}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(heartbeat["active"], false, "{heartbeat}");

    // The listing before the archive; an archive over `max_archive_bytes`, declared or not.
    expect_error(listing(worker, good_suite.clone()), 409, "archive_missing");
    expect_error(
        http.put(url(&format!("/api/v1/prepares/{id}/archive?worker_id={worker}")))
            .bearer_auth(TOKEN)
            .body(vec![7u8; 5000]),
        413,
        "archive_too_large",
    );
    // Without a length: the master counts as it writes.
    let streamed = reqwest::blocking::Body::new(std::io::Cursor::new(vec![7u8; 5000]));
    expect_error(
        http.put(url(&format!("/api/v1/prepares/{id}/archive?worker_id={worker}"))).bearer_auth(TOKEN).body(streamed),
        413,
        "archive_too_large",
    );
    expect_error(http.get(url(&format!("/api/v1/revisions/{revision}/archive"))).bearer_auth(TOKEN), 404, "no_archive");

    // A good archive is served back whole.
    let archive: Vec<u8> = (0..3000u32).map(|index| (index % 251) as u8).collect();
    let response = http
        .put(url(&format!("/api/v1/prepares/{id}/archive?worker_id={worker}")))
        .bearer_auth(TOKEN)
        .body(archive.clone())
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);
    let served = http.get(url(&format!("/api/v1/revisions/{revision}/archive"))).bearer_auth(TOKEN).send().unwrap();
    assert_eq!(served.status().as_u16(), 200);
    assert_eq!(served.bytes().unwrap().to_vec(), archive);

    // Malformed listings: not a suite, an id that spans lines. The preparation stays.
    expect_error(
        http.post(url(&format!("/api/v1/prepares/{id}/listing")))
            .bearer_auth(TOKEN)
            .json(&json!({"worker_id": worker, "outcome": {"kind": "listed", "suite": {"tests": "all"}}})),
        422,
        "invalid_body",
    );
    expect_error(
        http.post(url(&format!("/api/v1/prepares/{id}/listing")))
            .bearer_auth(TOKEN)
            .json(&json!({"worker_id": worker, "outcome": {"kind": "sideways"}})),
        422,
        "invalid_body",
    );
    expect_error(listing(worker, json!({"tests": [{"id": "a\nb"}]})), 422, "invalid_listing");

    // The good listing plans the build: its tests are leased, and the preparation is over.
    let response = listing(worker, good_suite.clone()).send().unwrap();
    assert_eq!(response.status().as_u16(), 204, "{:?}", response.text());
    expect_error(listing(worker, good_suite), 404, "unknown_preparation");
    let lease = farm.wait_for("a shard of the listed suite", Duration::from_secs(30), |farm| {
        let answer = ask_for_work(&http, farm, worker);
        assert!(answer.prepare.is_none(), "the revision is listed once: {answer:?}");
        answer.lease
    });
    assert_eq!(lease.revision, revision);
    let build = farm.builds().into_iter().find(|build| build.revision == revision).unwrap();
    assert_eq!(build.counts.total, 2, "{build:?}");
}

#[test]
fn a_silent_preparer_is_replaced_and_a_failed_listing_is_the_builds_error() {
    let farm = nextest_farm("", 1.0);
    let http = Client::new();
    let revision = farm.repo.head().unwrap();
    let silent = register(&http, &farm, "silent");
    let first = wait_for_preparation(&http, &farm, silent);
    // The silent worker never heartbeats: once its preparation times out, another worker
    // gets the same one.
    let next = register(&http, &farm, "next");
    let second = wait_for_preparation(&http, &farm, next);
    assert_eq!((second.prepare_id, second.revision.as_str()), (first.prepare_id, revision.as_str()));
    expect_error(
        http.post(format!("{}/api/v1/prepares/{}/listing", farm.url, first.prepare_id))
            .bearer_auth(TOKEN)
            .json(&json!({"worker_id": silent, "outcome": {"kind": "failed", "message": "late"}})),
        403,
        "not_your_preparation",
    );
    let response = http
        .post(format!("{}/api/v1/prepares/{}/listing", farm.url, second.prepare_id))
        .bearer_auth(TOKEN)
        .json(&json!({"worker_id": next, "outcome": {"kind": "failed", "message": "error[E0425]: cannot find value `x`"}}))
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);
    let build = farm.wait_for("the build to end", Duration::from_secs(30), |farm| {
        farm.builds().into_iter().find(|build| build.revision == revision && build.state.is_finished())
    });
    assert_eq!(build.state, BuildState::Error, "{build:?}");
    assert!(build.error.as_deref().is_some_and(|error| error.contains("E0425")), "{build:?}");
}
