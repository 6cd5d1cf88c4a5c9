//! The page under load: a real master plans an IMVU-shaped build (15,000 tests, 4.4
//! machine-hours) and 50 simulated workers lease its shards over the real HTTP API and
//! stream results as their (scaled) durations elapse, while headless Chromium shows the
//! waterfall. Measures time to first paint and whether the main thread stays responsive
//! (long tasks, gaps between animation frames), then the build page of the finished
//! build. Prints a table; asserts nothing about speed (see BENCHMARKS.md).
//!
//! ```sh
//! cargo bench -p greenlight --bench page
//! ```

#[path = "../tests/common/browser.rs"]
mod browser;
#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use browser::Browser;
use common::{Farm, FarmOptions, TOKEN};
use greenlight_fixtures::imvu::{ImvuShape, generate};
use greenlight_shared::suite::SuiteFile;
use serde_json::{Value, json};

const WORKERS: usize = 50;
/// Seconds of wall time per second of test duration: 4.4 h / 50 workers ≈ 63 s.
const SCALE: f64 = 0.2;
const FAILING: usize = 3;

struct Fleet {
    durations: HashMap<String, f64>,
    failing: HashSet<String>,
    overhead_s: f64,
    stop: AtomicBool,
    results: AtomicU64,
}

fn post(http: &reqwest::blocking::Client, url: &str, body: Value) -> Value {
    let response = http
        .post(url)
        .header("Authorization", format!("Bearer {TOKEN}"))
        .json(&body)
        .send()
        .unwrap_or_else(|error| panic!("POST {url}: {error}"));
    let status = response.status();
    let answer = response.json().unwrap_or(Value::Null);
    assert!(status.is_success(), "POST {url}: {status} {answer}");
    answer
}

/// One simulated worker: lease, "run" each test for its duration × SCALE, report results
/// every 250 ms, heartbeat every second, finish, ask again.
fn fake_worker(master: String, name: String, fleet: Arc<Fleet>) {
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    let registered = post(&http, &format!("{master}/api/v1/workers/register"), json!({"name": name}));
    let worker_id = registered["worker_id"].as_u64().unwrap();
    while !fleet.stop.load(Ordering::Relaxed) {
        let answer = post(&http, &format!("{master}/api/v1/workers/{worker_id}/lease"), json!({"wait_s": 1.0}));
        let Some(lease) = answer["lease"].as_object() else { continue };
        let lease_id = lease["lease_id"].as_u64().unwrap();
        let tests: Vec<String> =
            lease["tests"].as_array().unwrap().iter().map(|id| id.as_str().unwrap().to_owned()).collect();
        let mut at = fleet.overhead_s * SCALE;
        let schedule: Vec<(f64, &String)> = tests
            .iter()
            .map(|id| {
                at += fleet.durations.get(id).copied().unwrap_or(1.0) * SCALE;
                (at, id)
            })
            .collect();
        let started = Instant::now();
        let mut last_heartbeat = Instant::now();
        let mut next = 0;
        while next < schedule.len() {
            std::thread::sleep(Duration::from_millis(250));
            let elapsed = started.elapsed().as_secs_f64();
            let mut batch = Vec::new();
            while next < schedule.len() && schedule[next].0 <= elapsed {
                let id = schedule[next].1;
                let duration_s = fleet.durations.get(id).copied().unwrap_or(1.0);
                batch.push(if fleet.failing.contains(id) {
                    json!({"test_id": id, "status": "failed", "duration_s": duration_s,
                           "output": format!("AssertionError: {id} failed on purpose (page bench)")})
                } else {
                    json!({"test_id": id, "status": "passed", "duration_s": duration_s})
                });
                next += 1;
            }
            if !batch.is_empty() {
                fleet.results.fetch_add(batch.len() as u64, Ordering::Relaxed);
                post(
                    &http,
                    &format!("{master}/api/v1/leases/{lease_id}/results"),
                    json!({"worker_id": worker_id, "results": batch}),
                );
            }
            if last_heartbeat.elapsed() >= Duration::from_secs(1) {
                post(&http, &format!("{master}/api/v1/leases/{lease_id}/heartbeat"), json!({"worker_id": worker_id}));
                last_heartbeat = Instant::now();
            }
        }
        post(
            &http,
            &format!("{master}/api/v1/leases/{lease_id}/finish"),
            json!({"worker_id": worker_id, "outcome": {"kind": "completed"}}),
        );
    }
}

/// Installed right after load: long tasks (buffered, so those of the load count too) and
/// the gap between consecutive animation frames.
const PROBE: &str = r#"
window.probe = {gaps: [], longtasks: [], last: performance.now()};
new PerformanceObserver(list => { for (const e of list.getEntries()) probe.longtasks.push({at: e.startTime, ms: e.duration}); })
  .observe({type: "longtask", buffered: true});
function probeFrame(t) { probe.gaps.push(t - probe.last); probe.last = t; requestAnimationFrame(probeFrame); }
requestAnimationFrame(probeFrame);
return true;
"#;

/// Summarises the probe since `since` (ms on the page's clock).
const REPORT: &str = r#"
const since = arguments[0];
const gaps = probe.gaps.slice().sort((a, b) => a - b);
const q = p => gaps.length ? gaps[Math.min(gaps.length - 1, Math.floor(p * gaps.length))] : 0;
const tasks = probe.longtasks.filter(t => t.at >= since);
return {frames: gaps.length, p50: q(0.5), p99: q(0.99), max: gaps.length ? gaps[gaps.length - 1] : 0,
        over100: gaps.filter(g => g > 100).length,
        longtasks: tasks.length, longest: Math.max(0, ...tasks.map(t => t.ms)),
        longtask_total: tasks.reduce((s, t) => s + t.ms, 0),
        renders: greenlight.renders, batches: greenlight.batches || 0,
        boxes: document.querySelectorAll('.box[data-lease]').length,
        heap_mb: performance.memory ? performance.memory.usedJSHeapSize / 1048576 : null};
"#;

fn main() {
    let suite = generate(&ImvuShape::default());
    let failing: HashSet<String> =
        suite.tests.iter().step_by(suite.tests.len() / FAILING).take(FAILING).map(|test| test.id.clone()).collect();
    let fleet = Arc::new(Fleet {
        durations: suite.tests.iter().map(|test| (test.id.clone(), test.duration_s.unwrap_or(1.0))).collect(),
        failing,
        overhead_s: suite.shard_overhead_s,
        stop: AtomicBool::new(false),
        results: AtomicU64::new(0),
    });
    // The repository starts with a one-test suite, so that the 50 workers have joined
    // (and the 15k build is planned for them) before the big suite lands.
    let mut first = suite.tests.iter().find(|test| !fleet.failing.contains(&test.id)).unwrap().clone();
    first.depends_on.clear();
    let tiny = SuiteFile { name: "tiny".into(), shard_overhead_s: 0.0, tests: vec![first] };
    let farm = Farm::start(&tiny, 0, FarmOptions { lease_timeout_s: 30.0, ..FarmOptions::default() });
    let workers: Vec<_> = (0..WORKERS)
        .map(|index| {
            let (master, fleet) = (farm.url.clone(), Arc::clone(&fleet));
            std::thread::spawn(move || fake_worker(master, format!("worker-{index:02}"), fleet))
        })
        .collect();
    farm.finished_build_of(&farm.repo.head().unwrap());
    farm.wait_for("50 workers", Duration::from_secs(60), |farm| (farm.workers().len() == WORKERS).then_some(()));
    let suite_json = serde_json::to_string(&suite).unwrap();
    let big = farm.repo.commit("The whole suite", &[(greenlight_fixtures::SUITE_FILE, &suite_json)]).unwrap();
    let started = Instant::now();
    // The page is opened while the build streams.
    let build_id = farm.wait_for("the 15k build streaming", Duration::from_secs(300), |farm| {
        farm.builds().into_iter().find(|b| b.revision == big && b.counts.done() >= 500).map(|b| b.build_id)
    });

    let browser = Browser::start(1366, 768);
    browser.goto(&format!("{}/#/", farm.url));
    browser.wait_for(
        "the page loaded",
        Duration::from_secs(30),
        "return window.greenlight && greenlight.firstDataRenderAt;",
    );
    browser.eval(PROBE);
    let paint = browser.eval(
        "const p = name => (performance.getEntriesByName(name)[0] || {}).startTime;
         const nav = performance.getEntriesByType('navigation')[0];
         return {first_paint: p('first-paint'), first_contentful_paint: p('first-contentful-paint'),
                 dom_content_loaded: nav.domContentLoadedEventEnd, load: nav.loadEventEnd,
                 waterfall_with_data: greenlight.firstDataRenderAt};",
    );
    println!("load of the waterfall while the build streams: {paint}");

    let stream_start: f64 = browser.eval("return performance.now();").as_f64().unwrap();
    let mut shot = false;
    let finished = loop {
        std::thread::sleep(Duration::from_secs(5));
        let build = farm.builds().into_iter().find(|b| b.build_id == build_id).unwrap();
        let sample = browser.eval(&format!("return (function() {{ {REPORT} }}).apply(null, [{stream_start}]);"));
        println!(
            "{:>5.1} s  results {:>5}  build {:?} {}/{}  page: {sample}",
            started.elapsed().as_secs_f64(),
            fleet.results.load(Ordering::Relaxed),
            build.state,
            build.counts.done(),
            build.counts.total
        );
        if !shot && build.counts.done() > build.counts.total / 2 {
            browser.screenshot("bench-waterfall-50-workers");
            shot = true;
        }
        if build.state.is_finished() {
            break build;
        }
        assert!(started.elapsed() < Duration::from_secs(900), "the build did not finish");
    };
    let streamed_s = started.elapsed().as_secs_f64();
    let state = if finished.state == greenlight_shared::api::BuildState::Green { "passed" } else { "failed" };
    browser.wait_for(
        "the page to show the verdict",
        Duration::from_secs(30),
        &format!(
            "return !!document.querySelector('.box[data-build=\"{}\"][data-state=\"{state}\"]:not([data-lease])');",
            finished.build_id
        ),
    );
    let during = browser.eval(&format!("return (function() {{ {REPORT} }}).apply(null, [{stream_start}]);"));
    browser.screenshot("bench-waterfall-finished");

    // The build page of the finished build: 15,000 results fetched once and rendered.
    let before: f64 = browser.eval("return performance.now();").as_f64().unwrap();
    browser.eval(&format!("location.hash = '#/build/{}';", finished.build_id));
    browser.wait_for("the build page", Duration::from_secs(60), "return !!document.getElementById('gantt');");
    let build_page_ms = browser.eval("return performance.now();").as_f64().unwrap() - before;
    let build_page = browser.eval(&format!("return (function() {{ {REPORT} }}).apply(null, [{before}]);"));
    browser.screenshot("bench-build-page");

    // A control: a deliberate 200 ms task must show up in the probe, or it measures nothing.
    let before_control: f64 = browser.eval("return performance.now();").as_f64().unwrap();
    browser.eval(
        "setTimeout(() => { const t = performance.now(); while (performance.now() - t < 200) {} }, 0); return true;",
    );
    browser.wait_for(
        "the control task to be seen",
        Duration::from_secs(10),
        &format!("return probe.longtasks.some(t => t.at >= {before_control} && t.ms >= 200);"),
    );
    let control = browser.eval(&format!("return (function() {{ {REPORT} }}).apply(null, [{before_control}]);"));

    fleet.stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _ = worker.join();
    }
    println!();
    println!(
        "build: {} tests, {} shards, {:?}, streamed for {streamed_s:.0} s",
        finished.counts.total, finished.shards, finished.state
    );
    println!(
        "first paint / first contentful paint / waterfall with data: {} / {} / {} ms",
        paint["first_paint"], paint["first_contentful_paint"], paint["waterfall_with_data"]
    );
    println!("while streaming: {during}");
    println!("control (a 200 ms busy loop): {control}");
    println!("build page: shown {build_page_ms:.0} ms after navigation (polled every 100 ms); {build_page}");
}
