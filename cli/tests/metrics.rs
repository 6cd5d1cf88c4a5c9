//! `GET /metrics` through a real master and two workers: after a green build and a red
//! one, the counters say what happened (builds by state, leases, results, the durations
//! histogram, HTTP requests by route), and the gauges say where the farm is now (workers
//! by state, nothing queued, the gate of the watched branch closed by the red build).

mod common;

use common::{Farm, FarmOptions, test};
use greenlight_shared::api::BuildState;
use greenlight_shared::suite::SuiteFile;

/// The value of the sample whose name and labels are exactly `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn metrics_count_builds_leases_results_and_requests_and_show_the_farm_now() {
    let tests = (0..6).map(|index| test(&format!("a/test_{index}.py::test"), &["a"], &[], 1.0)).collect();
    let suite = SuiteFile { name: "metrics".into(), shard_overhead_s: 0.0, tests };
    // No culprit finding: its probe builds would add results while the metrics are read.
    let options = FarmOptions { extra_toml: "[gate]\nfind_culprit = false\n".into(), ..FarmOptions::default() };
    let farm = Farm::start(&suite, 2, options);
    let green = farm.finished_build_of(&farm.repo.head().unwrap());
    assert_eq!(green.state, BuildState::Green);
    let broken = farm.repo.set_failing("a", &["a/test_0.py::test"], "A: break test 0").unwrap();
    let red = farm.finished_build_of(&broken);
    assert_eq!(red.state, BuildState::Red);

    let (content_type, text) = farm.get_text("/metrics");
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let value = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
    assert_eq!(value("greenlight_builds_total{state=\"green\"}"), 1.0);
    assert_eq!(value("greenlight_builds_total{state=\"red\"}"), 1.0);
    assert_eq!(value("greenlight_builds_total{state=\"error\"}"), 0.0);
    assert_eq!(value("greenlight_build_duration_seconds_count"), 2.0);
    assert_eq!(value("greenlight_build_duration_seconds_bucket{le=\"+Inf\"}"), 2.0);
    // Six results a build, and the failed test's retry (on the other worker).
    let stored = (farm.tests(green.build_id).results.len() + farm.tests(red.build_id).results.len()) as f64;
    assert_eq!(value("greenlight_results_total"), stored);
    assert!(stored > 12.0, "the failure was retried: {stored} results");
    assert!(value("greenlight_leases_granted_total") >= 2.0);
    assert_eq!(value("greenlight_leases_expired_total"), 0.0);
    assert_eq!(value("greenlight_workers{state=\"idle\"}") + value("greenlight_workers{state=\"busy\"}"), 2.0);
    assert_eq!(value("greenlight_workers{state=\"lost\"}"), 0.0);
    assert_eq!(value("greenlight_queued_tests"), 0.0, "nothing left to run");
    assert_eq!(value("greenlight_gate_open{branch=\"main\"}"), 0.0, "the red build closed the gate");
    let posted = value(
        "greenlight_http_request_duration_seconds_count{method=\"POST\",route=\"/api/v1/leases/{lease_id}/results\",status=\"2xx\"}",
    );
    assert!(posted >= 2.0, "{text}");
    assert!(!text.contains(&format!("/builds/{}", green.build_id)), "routes by pattern, not by id");
}
