//! The page in a real browser: Debian's Chromium, headless, under chromedriver, against a
//! real master and real workers. One page load follows a green build, a red one and its
//! fix without ever reloading (a marker set at load survives): the waterfall fills in
//! while the build runs, the failing test shows up with its output, the gate banner turns
//! closed and open again, and the console lists every change. The build page fetches the
//! failures alone first and every result only when asked. A worker killed mid-shard
//! shows as lost on the waterfall and the workers page. A build cancelled by an admin shows
//! its running shards cancelled, never passed, and the page's one shard mapping draws
//! every wire state (and one it does not know) as it should. A repository that cannot be
//! fetched shows under the gate banner, live, and goes when it can be. Screenshots are
//! kept in `target/browser-artifacts/`.

#[path = "common/browser.rs"]
mod browser;
mod common;

use std::time::Duration;

use browser::Browser;
use common::{Farm, FarmOptions, test};
use greenlight_shared::api::{BuildState, GateState, ShardState};
use greenlight_shared::suite::{SuiteFile, SuiteTest};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(90);
const ADMIN: &str = "browser-admin";
/// Every state the page draws a shard in, in the legend's order.
const DRAWN_STATES: [&str; 9] =
    ["queued", "running", "passed", "failed", "flaky", "gave-back", "lost", "cancelled", "unknown"];

/// A JS expression quoting `text` as a string literal.
fn js(text: &str) -> String {
    Value::String(text.to_owned()).to_string()
}

fn suite() -> SuiteFile {
    let mut tests: Vec<SuiteTest> = vec![
        test("core/widget_test.py::test_breaks[small]", &["core"], &[], 6.0),
        test("core/setup_test.py::test_db", &["core"], &[], 2.0),
        test("core/setup_test.py::test_uses_db", &["core"], &["core/setup_test.py::test_db"], 2.0),
    ];
    tests.extend((0..60).map(|index| test(&format!("core/unit_test.py::test_{index}"), &["core"], &[], 2.0)));
    SuiteFile { name: "browser".into(), shard_overhead_s: 0.5, tests }
}

#[test]
fn the_page_follows_a_red_build_and_its_fix_live_without_reloading() {
    let broken_test = "core/widget_test.py::test_breaks[small]";
    let farm = Farm::start(&suite(), 3, FarmOptions { scale: 0.15, ..FarmOptions::default() });
    let first = farm.finished_build_of(&farm.repo.head().unwrap());
    assert_eq!(first.state, BuildState::Green);

    let browser = Browser::start(1400, 900);
    browser.goto(&format!("{}/#/", farm.url));
    let marker = browser.wait_for("the page to load", WAIT, "return window.greenlightPageId;");
    browser.wait_for(
        "the first build's shards in the waterfall",
        WAIT,
        &format!("return document.querySelectorAll('.box[data-lease][data-build=\"{}\"]').length;", first.build_id),
    );
    browser.wait_for("the gate banner open", WAIT, "return document.getElementById('gate').dataset.state === 'open';");

    // A change that breaks one test: the waterfall fills in live.
    let broken = farm.repo.set_failing("core", &[broken_test], "Core: break the widget").unwrap();
    let red_build = farm.wait_for("the red build to start", WAIT, |farm| {
        farm.builds().into_iter().find(|build| build.revision == broken).map(|build| build.build_id)
    });
    browser.wait_for(
        "a running shard of the new build",
        WAIT,
        &format!(
            "return document.querySelector('.box[data-lease][data-build=\"{red_build}\"][data-state=\"running\"]');"
        ),
    );
    let running_boxes = browser
        .eval(&format!("return document.querySelectorAll('.box[data-lease][data-build=\"{red_build}\"]').length;"))
        .as_u64()
        .unwrap();
    let text = browser
        .eval(&format!(
            "return document.querySelector('.box[data-lease][data-build=\"{red_build}\"][data-state=\"running\"]').textContent;"
        ))
        .to_string();
    assert!(text.contains("running"), "the state is written in the box, not only coloured: {text}");
    browser.screenshot("1-waterfall-running");

    // The gate closes on the first real failure, naming the test.
    let gate = browser.wait_for(
        "the gate banner closed",
        WAIT,
        "const g = document.getElementById('gate'); return g.dataset.state === 'closed' && g.textContent;",
    );
    assert!(gate.as_str().unwrap().contains(broken_test), "the banner names the failing test: {gate}");
    assert!(gate.as_str().unwrap().contains("since"), "the banner says since when: {gate}");

    // The build ends red; the waterfall shows every shard finished, one failed.
    assert_eq!(farm.finished_build_of(&broken).state, BuildState::Red);
    let finished_boxes = browser.wait_for(
        "every shard of the red build finished, one failed",
        WAIT,
        &format!(
            "const boxes = [...document.querySelectorAll('.box[data-lease][data-build=\"{red_build}\"]')];
             return boxes.length > 0 && boxes.every(b => b.dataset.state !== 'running')
                 && boxes.some(b => b.dataset.state === 'failed') && boxes.length;"
        ),
    );
    assert!(
        finished_boxes.as_u64().unwrap() >= running_boxes,
        "boxes were added while the build ran ({running_boxes} then {finished_boxes})"
    );
    let culprit = browser.wait_for(
        "the culprit on the banner",
        WAIT,
        &format!(
            "const t = document.getElementById('gate').textContent; return t.includes('culprit: ' + {}) && t;",
            js(&broken[..10])
        ),
    );
    assert!(culprit.as_str().unwrap().contains("Core: break the widget"), "{culprit}");
    assert!(culprit.as_str().unwrap().contains(&format!("broke {broken_test}")), "with its test: {culprit}");
    browser.screenshot("2-waterfall-red-gate-closed");

    // The build page: failures first with output and worker, the timeline with the lower bound.
    // Only the failures are fetched for it; the rest comes when asked for.
    browser.eval(
        "window.fetched = []; const fetchOf = window.fetch;
         window.fetch = (url, options) => { window.fetched.push(String(url)); return fetchOf(url, options); };",
    );
    browser.eval(&format!("location.hash = '#/build/{red_build}';"));
    let failures = browser.wait_for(
        "the build page's failures",
        WAIT,
        "const f = document.getElementById('failures'); return f && document.getElementById('gantt') && f.textContent;",
    );
    assert!(failures.as_str().unwrap().contains(broken_test), "{failures}");
    assert!(failures.as_str().unwrap().contains("is listed as failing"), "{failures}");
    assert!(failures.as_str().unwrap().contains("worker-"), "the worker it ran on: {failures}");
    let progress = browser.eval("return document.getElementById('progress').textContent;");
    assert!(progress.as_str().unwrap().contains("63 of 63 tests done"), "{progress}");
    assert!(browser.eval("return !!document.getElementById('lower-bound');").as_bool().unwrap());
    let culprits = browser.wait_for(
        "the culprit on the build page",
        WAIT,
        "const c = [...document.querySelectorAll('p.culprit')].map(p => p.textContent); return c.length && c;",
    );
    assert_eq!(culprits.as_array().map(Vec::len), Some(1), "{culprits}");
    let named = culprits[0].as_str().unwrap();
    assert!(named.contains("Core: break the widget") && named.contains(&format!("broke {broken_test}")), "{named}");
    let results_fetched =
        format!("return window.fetched.filter(url => url.includes('/api/v1/builds/{red_build}/tests'));");
    let fetched = browser.eval(&results_fetched);
    let fetched: Vec<&str> = fetched.as_array().unwrap().iter().map(|url| url.as_str().unwrap()).collect();
    assert!(
        !fetched.is_empty() && fetched.iter().all(|url| url.contains("status=failed,error")),
        "the failures alone, not every result: {fetched:?}"
    );
    assert!(browser.eval("return !document.getElementById('results');").as_bool().unwrap());
    browser.screenshot("3-build-page");
    let button = browser.eval("const b = document.getElementById('show-all'); b.click(); return b.textContent;");
    assert!(button.as_str().unwrap().contains("show all"), "{button}");
    let rows = browser.wait_for(
        "every result of the build on demand",
        WAIT,
        "const r = document.getElementById('results'); return r && r.querySelectorAll('tbody tr').length >= 63 && r.textContent;",
    );
    assert!(rows.as_str().unwrap().contains("core/unit_test.py::test_59"), "{rows}");
    let fetched = browser.eval(&results_fetched);
    assert!(
        fetched.as_array().unwrap().iter().any(|url| url.as_str().unwrap().contains("tests?limit=")),
        "the rest was fetched in pages: {fetched}"
    );
    browser.screenshot("3b-build-page-all-results");

    // Click the failed box: its tests, the failure first, with the runner's output.
    browser.eval("location.hash = '#/';");
    browser.wait_for(
        "the red build's failed box",
        WAIT,
        &format!(
            "return document.querySelector('.box[data-lease][data-build=\"{red_build}\"][data-state=\"failed\"]');"
        ),
    );
    browser.eval(&format!(
        "document.querySelector('.box[data-lease][data-build=\"{red_build}\"][data-state=\"failed\"]').click();"
    ));
    let detail = browser.wait_for(
        "the failed shard's tests with output",
        WAIT,
        &format!(
            "const d = document.getElementById('detail'); const row = d.querySelector('tr[data-test]');
             return !d.hidden && row && row.dataset.test === {} && d.textContent;",
            js(broken_test)
        ),
    );
    assert!(detail.as_str().unwrap().contains("is listed as failing at this revision"), "output shown: {detail}");
    browser.screenshot("4-shard-detail");
    browser.eval("closeDetail();");

    // The fix opens the gate again.
    let fixed = farm.repo.set_failing("core", &[], "Core: fix the widget [fix]").unwrap();
    browser.eval("location.hash = '#/';");
    browser.wait_for(
        "the gate banner open again",
        WAIT,
        "return document.getElementById('gate').dataset.state === 'open';",
    );
    assert_eq!(farm.finished_build_of(&fixed).state, BuildState::Green);
    assert_eq!(farm.gate().state, GateState::Open);
    browser.screenshot("5-waterfall-gate-open-again");

    // The console lists each change with its build and verdict; the culprit is marked.
    browser.eval("location.hash = '#/console';");
    let changes = farm.changes();
    assert_eq!(changes.len(), 3, "the initial suite, the break and the fix");
    for change in &changes {
        let row = browser.wait_for(
            &format!("the console row of {}", &change.revision[..10]),
            WAIT,
            &format!(
                "const r = document.querySelector('tr[data-revision=\"{}\"]'); return r && r.textContent;",
                change.revision
            ),
        );
        let row = row.as_str().unwrap().to_owned();
        assert!(row.contains(&change.revision[..10]) && row.contains(change.message.lines().next().unwrap()), "{row}");
        let verdict = if change.revision == broken { "red" } else { "green" };
        assert!(row.contains(verdict), "{} is {verdict}: {row}", &change.revision[..10]);
        assert_eq!(row.contains("CULPRIT"), change.revision == broken, "{row}");
    }
    browser.screenshot("6-console");

    // The test page: outcomes across builds, tags, dependencies.
    browser.eval(&format!("location.hash = '#/test/' + encodeURIComponent({});", js("core/setup_test.py::test_db")));
    let test_page = browser.wait_for(
        "the test page",
        WAIT,
        "const r = document.getElementById('runs'); return r && r.querySelectorAll('tbody tr').length >= 3 && document.getElementById('view').textContent;",
    );
    let test_page = test_page.as_str().unwrap();
    assert!(test_page.contains("tags: core"), "{test_page}");
    assert!(test_page.contains("core/setup_test.py::test_uses_db"), "its dependant is listed: {test_page}");
    assert!(test_page.contains("flake rate 0.0%"), "{test_page}");
    browser.screenshot("7-test-page");

    browser.eval("location.hash = '#/workers';");
    let workers = browser.wait_for(
        "the workers page",
        WAIT,
        "return document.querySelectorAll('tr[data-worker]').length === 3 && document.getElementById('view').textContent;",
    );
    assert_eq!(workers.as_str().unwrap().matches("online").count(), 3, "{workers}");
    // Each says how fast it is against the others (on one machine under a test's load,
    // which is not pinned here).
    let speeds = browser.eval(
        "return [...document.querySelectorAll('tr[data-worker]')].map(r => r.children[2].textContent).join('|');",
    );
    let speeds = speeds.as_str().unwrap();
    assert!(
        speeds.split('|').all(|speed| speed == "as fast as the others"
            || speed.ends_with("× slower")
            || speed.ends_with("× faster")),
        "{speeds}"
    );
    browser.screenshot("8-workers");

    assert_eq!(browser.eval("return window.greenlightPageId;"), marker, "the page was never reloaded");
}

#[test]
fn a_worker_lost_mid_shard_shows_as_lost_on_the_waterfall_and_the_workers_page() {
    let tests: Vec<SuiteTest> =
        (0..60).map(|index| test(&format!("core/slow_test.py::test_{index}"), &["core"], &[], 4.0)).collect();
    let suite = SuiteFile { name: "lost".into(), shard_overhead_s: 0.5, tests };
    let mut farm = Farm::start(&suite, 3, FarmOptions { scale: 0.15, ..FarmOptions::default() });
    assert_eq!(farm.finished_build_of(&farm.repo.head().unwrap()).state, BuildState::Green);
    let browser = Browser::start(1400, 900);
    browser.goto(&format!("{}/#/", farm.url));
    let marker = browser.wait_for("the page to load", WAIT, "return window.greenlightPageId;");

    let tweaked = farm.repo.touch_area("core", "Core: tweak").unwrap();
    let (build_id, victim) = farm.wait_for("a worker holding a shard of the new build", WAIT, |farm| {
        let build = farm.builds().into_iter().find(|build| build.revision == tweaked)?;
        let worker = farm.workers().into_iter().find(|worker| worker.build_id == Some(build.build_id))?;
        Some((build.build_id, worker.name))
    });
    farm.workers.iter_mut().find(|process| process.name == victim).unwrap().kill();

    let lost = browser.wait_for(
        "the killed worker's shard shown lost",
        WAIT,
        &format!(
            "const b = document.querySelector('.box[data-lease][data-build=\"{build_id}\"][data-state=\"lost\"]');
             return b && b.textContent;"
        ),
    );
    assert!(lost.as_str().unwrap().contains("lost"), "the state is written in the box: {lost}");
    assert_eq!(farm.finished_build_of(&tweaked).state, BuildState::Green, "its tests ran elsewhere");
    browser.wait_for(
        "the build shown green",
        WAIT,
        &format!("return !!document.querySelector('.box[data-build=\"{build_id}\"][data-state=\"passed\"]:not([data-lease])');"),
    );
    browser.screenshot("9-waterfall-lost-worker");

    browser.eval("location.hash = '#/workers';");
    let row = browser.wait_for(
        "the killed worker shown lost",
        WAIT,
        &format!("const r = document.querySelector('tr[data-worker={}]'); return r && r.textContent.includes('lost') && r.textContent;", js(&victim)),
    );
    assert!(row.as_str().unwrap().contains(&victim), "{row}");
    let online = browser.eval("return document.getElementById('view').textContent.match(/online/g).length;");
    assert_eq!(online, 2, "the two other workers are online");
    browser.screenshot("10-workers-one-lost");
    assert_eq!(browser.eval("return window.greenlightPageId;"), marker, "the page was never reloaded");
}

#[test]
fn a_flaky_test_shows_as_flaky_on_the_waterfall_the_build_page_and_the_flaky_view() {
    let state = tempfile::tempdir().unwrap();
    let options = FarmOptions {
        suite_toml: format!(
            "file = \"greenlight-suite.json\"\nenv = {{ GREENLIGHT_FIXTURE_STATE = {:?} }}",
            state.path()
        ),
        ..FarmOptions::default()
    };
    let farm = Farm::start(&suite(), 2, options);
    assert_eq!(farm.finished_build_of(&farm.repo.head().unwrap()).state, BuildState::Green);
    let browser = Browser::start(1400, 900);
    browser.goto(&format!("{}/#/", farm.url));
    let marker = browser.wait_for("the page to load", WAIT, "return window.greenlightPageId;");

    // Fails on its first run, passes on the retry (the seed is searched, not guessed).
    let flaky = "core/unit_test.py::test_7";
    let seed = (0..10_000u64)
        .find(|&seed| {
            greenlight_fixtures::runner::flaky_fails(0.5, seed, flaky, 0)
                && !greenlight_fixtures::runner::flaky_fails(0.5, seed, flaky, 1)
        })
        .unwrap();
    let failing = format!("flaky 0.5 {seed} {flaky}\n");
    let revision = farm
        .repo
        .commit("Core: a flaky test", &[(greenlight_fixtures::FAILING_FILE, &failing), ("src/core/code.txt", "x\n")])
        .unwrap();
    let build = farm.finished_build_of(&revision);
    assert_eq!((build.state, build.flaky_tests.clone()), (BuildState::Green, vec![flaky.to_owned()]));
    let build_id = build.build_id;
    browser.wait_for(
        "a shard shown flaky",
        WAIT,
        &format!("const b = document.querySelector('.box[data-lease][data-build=\"{build_id}\"][data-state=\"flaky\"]'); return b && b.textContent;"),
    );
    browser.wait_for("the gate banner open", WAIT, "return document.getElementById('gate').dataset.state === 'open';");
    browser.screenshot("11-waterfall-flaky");

    browser.eval(&format!("location.hash = '#/build/{build_id}';"));
    let page = browser.wait_for(
        "the build page listing the flaky test",
        WAIT,
        &format!("const v = document.getElementById('view').textContent; return v.includes('Flaky tests (1)') && v.includes({}) && v;", js(flaky)),
    );
    assert!(page.as_str().unwrap().contains("1 flaky"), "{page}");

    browser.eval("location.hash = '#/flaky';");
    let row = browser.wait_for(
        "the flaky view listing the test",
        WAIT,
        "const t = document.querySelector('#flaky tbody tr'); return t && t.textContent;",
    );
    assert!(row.as_str().unwrap().contains(flaky) && row.as_str().unwrap().contains("1 / 1"), "{row}");
    browser.screenshot("12-flaky-view");
    assert_eq!(browser.eval("return window.greenlightPageId;"), marker, "the page was never reloaded");
}

#[test]
fn a_cancelled_build_shows_its_running_shards_cancelled_and_no_lost_shard_is_drawn_passed() {
    // Slow tests on two workers: the first build's shards run for many seconds.
    let tests: Vec<SuiteTest> =
        (0..30).map(|index| test(&format!("core/long_test.py::test_{index}"), &["core"], &[], 40.0)).collect();
    let suite = SuiteFile { name: "cancel".into(), shard_overhead_s: 0.5, tests };
    let options = FarmOptions { scale: 0.15, top_toml: format!("admin_token = \"{ADMIN}\""), ..FarmOptions::default() };
    let farm = Farm::start(&suite, 2, options);
    let browser = Browser::start(1400, 900);
    browser.goto(&format!("{}/#/", farm.url));
    let marker = browser.wait_for("the page to load", WAIT, "return window.greenlightPageId;");

    // The mapping itself, for every wire state and for one a newer master might send: what
    // each is drawn as, and a word its label or title must say.
    let finished =
        |counts: Value, withdrawn: u32| json!({"state": "finished", "counts": counts, "withdrawn": withdrawn});
    let passed = json!({"passed": 5, "failed": 0, "skipped": 1, "error": 0, "flaky": 0});
    let failed = json!({"passed": 4, "failed": 1, "skipped": 0, "error": 0, "flaky": 0});
    let errored = json!({"passed": 4, "failed": 0, "skipped": 0, "error": 1, "flaky": 0});
    let flaky = json!({"passed": 4, "failed": 0, "skipped": 0, "error": 0, "flaky": 1});
    let cases = [
        (json!({"state": "running", "counts": passed}), "running", "running"),
        (finished(passed.clone(), 0), "passed", "passed"),
        (finished(failed, 0), "failed", "failed"),
        (finished(errored, 2), "failed", "gave back 2"),
        (finished(flaky, 0), "flaky", "flaky"),
        (finished(passed.clone(), 3), "gave-back", "gave back 3"),
        // Straggler copies: the run stopped because the other copy reported first, and the copy.
        (
            json!({"state": "finished", "counts": passed, "withdrawn": 1, "stopped": "t::slow"}),
            "gave-back",
            "stopped t::slow",
        ),
        (json!({"state": "finished", "counts": passed, "copy_of": 7}), "passed", "backup copy of the test shard 7"),
        (json!({"state": "expired", "counts": passed}), "lost", "expired"),
        (json!({"state": "infra_error", "counts": passed}), "lost", "infrastructure error"),
        (json!({"state": "taken_back", "counts": passed}), "lost", "taken back"),
        (json!({"state": "cancelled", "counts": passed}), "cancelled", "cancelled"),
        (json!({"state": "paused_by_a_newer_master", "counts": passed}), "unknown", "paused_by_a_newer_master"),
        (json!({"state": "constructor", "counts": passed}), "unknown", "constructor"),
    ];
    let shards: Vec<&Value> = cases.iter().map(|(shard, _, _)| shard).collect();
    let looks = browser.eval(&format!("return {}.map(shardLook);", json!(shards)));
    for ((shard, drawn, says), look) in cases.iter().zip(looks.as_array().unwrap()) {
        assert_eq!(look["state"], *drawn, "{shard} is drawn {look}");
        let (label, why) = (look["label"].as_str().unwrap(), look["why"].as_str().unwrap());
        assert!(label.contains(says) || why.contains(says), "{shard} is drawn {look}, saying {says:?}");
        assert!(DRAWN_STATES.contains(drawn), "{drawn} has a style and a legend entry");
    }
    let legend = browser.wait_for(
        "the legend",
        WAIT,
        "return [...document.querySelectorAll('.legend span[data-state]')].map(s => s.dataset.state);",
    );
    assert_eq!(legend, json!(DRAWN_STATES));
    let not_passed = ["gave-back", "lost", "cancelled", "unknown"];
    let colours = browser.eval(&format!(
        "const colour = s => getComputedStyle(document.querySelector('.legend span[data-state=\"' + s + '\"] i')).background;
         return ['passed'].concat({}).map(colour);",
        json!(not_passed)
    ));
    let colours: Vec<&str> = colours.as_array().unwrap().iter().map(|colour| colour.as_str().unwrap()).collect();
    for (state, colour) in not_passed.iter().zip(&colours[1..]) {
        assert_ne!(*colour, colours[0], "{state} is not coloured like passed");
    }

    // Cancel the first build while its shards run.
    let build_id = farm.wait_for("the first build running", WAIT, |farm| {
        farm.builds().into_iter().find(|build| build.state == BuildState::Running).map(|build| build.build_id)
    });
    let running = browser.wait_for(
        "running shards of the build",
        WAIT,
        &format!(
            "const leases = [...document.querySelectorAll('.box[data-lease][data-build=\"{build_id}\"][data-state=\"running\"]')]
                 .map(b => Number(b.dataset.lease));
             return leases.length > 0 && leases;"
        ),
    );
    let running: Vec<u64> = running.as_array().unwrap().iter().map(|lease| lease.as_u64().unwrap()).collect();
    let (status, body) = farm.post(&format!("/api/v1/admin/builds/{build_id}/cancel"), &json!({}), Some(ADMIN));
    assert_eq!(status, 200, "{body}");
    let cancelled: Vec<u64> = farm
        .build(build_id)
        .shards
        .iter()
        .filter(|shard| shard.state == ShardState::Cancelled)
        .map(|shard| shard.lease_id)
        .collect();
    assert!(running.iter().all(|lease| cancelled.contains(lease)), "running {running:?}, cancelled {cancelled:?}");

    let boxes = browser.wait_for(
        "the running shards shown cancelled",
        WAIT,
        &format!(
            "const boxes = {}.map(lease => document.querySelector('.box[data-lease=\"' + lease + '\"]'));
             return boxes.every(b => b && b.dataset.state === 'cancelled') && boxes.map(b => b.textContent);",
            json!(cancelled)
        ),
    );
    for text in boxes.as_array().unwrap() {
        assert!(text.as_str().unwrap().starts_with("cancelled"), "the state is written in the box: {text}");
    }
    let states = browser.eval(&format!(
        "return [...document.querySelectorAll('.box[data-lease][data-build=\"{build_id}\"]')].map(b => b.dataset.state);"
    ));
    assert!(
        !states.as_array().unwrap().iter().any(|state| state == "running"),
        "nothing of a cancelled build runs: {states}"
    );
    browser.screenshot("13-waterfall-cancelled");

    browser.eval(&format!("location.hash = '#/build/{build_id}';"));
    let timeline = browser.wait_for(
        "the build page listing the shards cancelled",
        WAIT,
        &format!(
            "const segs = {}.map(lease => document.querySelector('#gantt .seg[data-lease=\"' + lease + '\"]'));
             return segs.every(s => s && s.dataset.state === 'cancelled') && segs.map(s => s.textContent);",
            json!(cancelled)
        ),
    );
    assert!(timeline.as_array().unwrap().iter().all(|text| text == "cancelled"), "{timeline}");
    browser.screenshot("14-build-page-cancelled");
    assert_eq!(browser.eval("return window.greenlightPageId;"), marker, "the page was never reloaded");
}

#[test]
fn a_repository_that_cannot_be_fetched_shows_under_the_gate_banner_live_and_goes_when_fetched_again() {
    let farm = Farm::start(&suite(), 0, FarmOptions::default());
    let browser = Browser::start(1400, 900);
    browser.goto(&format!("{}/#/", farm.url));
    let marker = browser.wait_for("the page to load", WAIT, "return window.greenlightPageId;");
    browser.wait_for("a healthy farm", WAIT, "return document.getElementById('gate').dataset.health === 'ok';");

    let repository = farm.dir().join("repo");
    let moved = farm.dir().join("repo-moved");
    std::fs::rename(&repository, &moved).unwrap();
    let banner = browser.wait_for(
        "the fetch failure under the gate banner",
        WAIT,
        "const g = document.getElementById('gate'); const h = g.querySelector('.health[data-kind=\"repository_unreachable\"]'); return g.dataset.health === 'problem' && h && h.textContent;",
    );
    let text = banner.as_str().unwrap();
    assert!(text.contains("cannot be fetched") && text.contains("does not appear to be a git repository"), "{text}");
    browser.screenshot("15-gate-banner-repository-unreachable");

    std::fs::rename(&moved, &repository).unwrap();
    browser.wait_for("the problem gone", WAIT, "return document.getElementById('gate').dataset.health === 'ok';");
    assert_eq!(browser.eval("return window.greenlightPageId;"), marker, "the page was never reloaded");
}
