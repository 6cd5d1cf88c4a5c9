//! Forge statuses and notifications end to end: a real master, real workers, a real git
//! repository going green, red and green again, and a local fake forge and webhook
//! receiver that records every request. It checks exactly what arrives: for each
//! revision its statuses (pending, then the verdict, with a link to the build's page), the
//! gate closed (failing tests), its culprit, the gate reopened, in Slack's JSON and in
//! plain JSON (GitHub); a forge that fails for a while: the builds go on meanwhile, and
//! the statuses arrive once it is back, a master restarted in between included (Gitea);
//! a cancelled build: an error on its revision, a build_error notification, and its
//! rebuild's statuses after it (GitLab).

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use common::{Farm, FarmOptions, test};
use greenlight_shared::api::{BuildState, GateState, Notification, NotificationKind};
use greenlight_shared::suite::{SuiteFile, SuiteTest};

const BROKEN: &str = "core/test_core.py::test_breaks";
const FORGE_TOKEN: &str = "forge-s3cret";

fn suite() -> SuiteFile {
    let mut tests: Vec<SuiteTest> = vec![test(BROKEN, &["core"], &[], 20.0)];
    tests.extend((0..4).map(|index| test(&format!("core/test_core.py::test_{index}"), &["core"], &[], 10.0)));
    SuiteFile { name: "notify".into(), shard_overhead_s: 0.0, tests }
}

/// One request the fake server received.
#[derive(Debug, Clone)]
struct Received {
    method: Method,
    path: String,
    headers: BTreeMap<String, String>,
    body: serde_json::Value,
}

#[derive(Default)]
struct Recorder {
    /// Requests answered 2xx, in order.
    accepted: Mutex<Vec<Received>>,
    /// Forge requests answered 503 while the forge was down.
    refused: AtomicUsize,
    forge_down: AtomicBool,
}

/// A fake forge (`/forge/...`) and webhook receiver (`/slack`, `/json`) on 127.0.0.1.
struct FakeServer {
    url: String,
    recorder: Arc<Recorder>,
    _runtime: tokio::runtime::Runtime,
}

async fn receive(
    State(recorder): State<Arc<Recorder>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let path = uri.path().to_owned();
    if path.starts_with("/forge/") && recorder.forge_down.load(Ordering::SeqCst) {
        recorder.refused.fetch_add(1, Ordering::SeqCst);
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let headers = headers
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), value.to_str().unwrap_or("<binary>").to_owned()))
        .collect();
    let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    recorder.accepted.lock().unwrap().push(Received { method, path: path.clone(), headers, body });
    if path.starts_with("/forge/") { StatusCode::CREATED } else { StatusCode::OK }
}

impl FakeServer {
    fn start() -> FakeServer {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let recorder = Arc::new(Recorder::default());
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new().fallback(receive).with_state(Arc::clone(&recorder));
        runtime.spawn(async move { axum::serve(listener, app).await });
        FakeServer { url, recorder, _runtime: runtime }
    }

    fn accepted(&self) -> Vec<Received> {
        self.recorder.accepted.lock().unwrap().clone()
    }

    /// The statuses `revision` received, in order.
    fn statuses(&self, revision: &str) -> Vec<Received> {
        self.accepted().into_iter().filter(|request| request.path.ends_with(&format!("/statuses/{revision}"))).collect()
    }

    fn states(&self, revision: &str) -> Vec<String> {
        self.statuses(revision).iter().map(|status| status.body["state"].as_str().unwrap().to_owned()).collect()
    }

    /// The plain JSON notifications received, in order.
    fn notifications(&self) -> Vec<Notification> {
        self.accepted()
            .into_iter()
            .filter(|request| request.path == "/json")
            .map(|request| serde_json::from_value(request.body).expect("a notification"))
            .collect()
    }

    /// The Slack messages received, in order.
    fn slack_texts(&self) -> Vec<String> {
        self.accepted()
            .into_iter()
            .filter(|request| request.path == "/slack")
            .map(|request| request.body["text"].as_str().expect("Slack JSON has text").to_owned())
            .collect()
    }
}

fn options(extra_toml: String) -> FarmOptions {
    FarmOptions {
        extra_toml,
        master_env: vec![("GREENLIGHT_TEST_FORGE_TOKEN".to_owned(), FORGE_TOKEN.to_owned())],
        ..FarmOptions::default()
    }
}

/// Checks the method, headers and body of every status `revision` received on GitHub's API.
fn check_github_statuses(fake: &FakeServer, farm: &Farm, revision: &str, build_id: u64) {
    for status in fake.statuses(revision) {
        assert_eq!(status.method, Method::POST);
        assert_eq!(status.path, format!("/forge/api/v3/repos/acme/product/statuses/{revision}"));
        assert_eq!(status.headers["authorization"], format!("Bearer {FORGE_TOKEN}"));
        assert_eq!(status.headers["accept"], "application/vnd.github+json");
        assert_eq!(status.headers["content-type"], "application/json");
        assert!(status.headers["user-agent"].starts_with("greenlight/"), "{status:?}");
        let body = status.body.as_object().unwrap();
        assert_eq!(
            body.keys().map(String::as_str).collect::<Vec<_>>(),
            ["context", "description", "state", "target_url"],
            "{status:?}"
        );
        assert_eq!(body["context"], "greenlight");
        assert_eq!(body["target_url"], format!("{}/#/build/{build_id}", farm.url));
        assert!(body["description"].as_str().unwrap().starts_with(&format!("build {build_id} ")), "{status:?}");
    }
}

#[test]
fn statuses_and_notifications_follow_a_green_a_red_and_a_fixed_build() {
    let fake = FakeServer::start();
    let extra = format!(
        r#"[forge]
kind = "github"
api_url = "{fake}/forge/api/v3"
repository = "acme/product"
token_env = "GREENLIGHT_TEST_FORGE_TOKEN"

[notify]
slack_webhook = "{fake}/slack"
json_webhook = "{fake}/json"
"#,
        fake = fake.url
    );
    let farm = Farm::start(&suite(), 2, options(extra));
    let wait = |what: &str, mut condition: Box<dyn FnMut() -> bool + '_>| {
        farm.wait_for(what, Duration::from_secs(180), |_| condition().then_some(()));
    };

    // Green: pending, then success.
    let first = farm.repo.head().unwrap();
    let first_build = farm.finished_build_of(&first);
    assert_eq!(first_build.state, BuildState::Green);
    wait("the first revision's success", Box::new(|| fake.states(&first).last().is_some_and(|s| s == "success")));
    assert_eq!(fake.states(&first), ["pending", "success"]);
    check_github_statuses(&fake, &farm, &first, first_build.build_id);
    let success = &fake.statuses(&first)[1].body;
    assert_eq!(success["description"], format!("build {} green: 5 passed", first_build.build_id));

    // Red: the gate closes (failing test), culprit finding names the change.
    let broken = farm.repo.set_failing("core", &[BROKEN], "Core: faster everything").unwrap();
    let red = farm.finished_build_of(&broken);
    assert_eq!(red.state, BuildState::Red);
    wait(
        "the red revision's failure naming its culprit",
        Box::new(|| {
            fake.statuses(&broken)
                .last()
                .is_some_and(|status| status.body["description"].as_str().unwrap().contains("culprit"))
        }),
    );
    wait(
        "gate closed and culprit found, in both formats",
        Box::new(|| fake.notifications().len() == 2 && fake.slack_texts().len() == 2),
    );
    let states = fake.states(&broken);
    assert_eq!(states[0], "pending", "{states:?}");
    assert!(states[1..].iter().all(|state| state == "failure"), "{states:?}");
    check_github_statuses(&fake, &farm, &broken, red.build_id);
    let last = fake.statuses(&broken).last().unwrap().body.clone();
    assert_eq!(
        last["description"],
        format!("build {} red: 1 test failed; culprit {}", red.build_id, &broken[..10]),
        "{last}"
    );
    let notifications = fake.notifications();
    let page = format!("{}/#/build/{}", farm.url, red.build_id);
    let closed = &notifications[0];
    assert_eq!(
        (closed.event, closed.branch.as_str(), closed.build_id, closed.revision.as_str()),
        (NotificationKind::GateClosed, "main", red.build_id, broken.as_str())
    );
    assert_eq!((closed.failing_tests.as_slice(), closed.url.as_str()), ([BROKEN.to_owned()].as_slice(), page.as_str()));
    let found = &notifications[1];
    assert_eq!((found.event, found.build_id), (NotificationKind::CulpritFound, red.build_id));
    assert_eq!(found.culprits.len(), 1, "{found:?}");
    assert_eq!(
        (found.culprits[0].revision.as_str(), found.culprits[0].tests.as_slice()),
        (broken.as_str(), [BROKEN.to_owned()].as_slice())
    );
    let texts = fake.slack_texts();
    assert!(texts[0].starts_with(":red_circle: Gate closed on *main*"), "{texts:?}");
    assert!(texts[0].contains(BROKEN) && texts[0].contains(&page), "{texts:?}");
    assert!(texts[1].contains(&broken[..12]) && texts[1].contains("Core: faster everything"), "{texts:?}");

    // Fixed: success on the fix, the gate reopened.
    let fixed = farm.repo.set_failing("core", &[], "Core: put it back [fix]").unwrap();
    let green = farm.finished_build_of(&fixed);
    assert_eq!(green.state, BuildState::Green);
    assert_eq!(farm.gate().state, GateState::Open);
    wait(
        "the gate reopened, in both formats, and the fix's success",
        Box::new(|| {
            fake.notifications().len() == 3
                && fake.slack_texts().len() == 3
                && fake.states(&fixed).last().is_some_and(|s| s == "success")
        }),
    );
    let reopened = &fake.notifications()[2];
    assert_eq!(
        (reopened.event, reopened.build_id, reopened.revision.as_str()),
        (NotificationKind::GateReopened, green.build_id, fixed.as_str())
    );
    assert!(fake.slack_texts()[2].starts_with(":large_green_circle: Gate open again on *main*"));
    assert_eq!(fake.states(&fixed), ["pending", "success"]);
    check_github_statuses(&fake, &farm, &fixed, green.build_id);

    // Nothing else arrives: no status for the probes, nothing told twice.
    let metrics = farm.get_text("/metrics").1;
    let before = fake.accepted().len();
    let statuses = fake.accepted().iter().filter(|request| request.path.starts_with("/forge/")).count();
    assert!(
        metrics
            .contains(&format!("greenlight_notifications_total{{kind=\"status\",outcome=\"delivered\"}} {statuses}")),
        "{metrics}"
    );
    assert!(
        metrics.contains("greenlight_notifications_total{kind=\"gate_closed\",outcome=\"delivered\"} 2"),
        "{metrics}"
    );
    // The notifier looks again at least every 5 s: after one more look, still nothing new.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(fake.accepted().len(), before, "{:#?}", &fake.accepted()[before..]);
    let revisions: Vec<&str> = [first.as_str(), broken.as_str(), fixed.as_str()].to_vec();
    assert!(
        fake.accepted()
            .iter()
            .filter(|request| request.path.starts_with("/forge/"))
            .all(|request| revisions.iter().any(|revision| request.path.ends_with(revision))),
        "statuses only for the changes of regular builds"
    );
}

#[test]
fn a_forge_down_for_a_while_delays_no_build_and_gets_its_statuses_once_back_even_across_a_restart() {
    let fake = FakeServer::start();
    fake.recorder.forge_down.store(true, Ordering::SeqCst);
    let extra = format!(
        r#"[forge]
kind = "gitea"
api_url = "{fake}/forge/api/v1"
repository = "acme/product"
token_env = "GREENLIGHT_TEST_FORGE_TOKEN"
context = "ci/greenlight"
attempts = 20
backoff_s = 0.1
"#,
        fake = fake.url
    );
    let mut farm = Farm::start(&suite(), 2, options(extra));
    let first = farm.repo.head().unwrap();
    // The build ends while every status is refused: delivery waits, the farm does not.
    let build = farm.finished_build_of(&first);
    assert_eq!(build.state, BuildState::Green);
    farm.wait_for("the forge to be tried", Duration::from_secs(60), |_| {
        (fake.recorder.refused.load(Ordering::SeqCst) >= 2).then_some(())
    });
    assert_eq!(fake.accepted().len(), 0, "the forge is down");
    // A master restarted meanwhile knows from its store what it still owes.
    farm.restart_master();
    let refused = fake.recorder.refused.load(Ordering::SeqCst);
    farm.wait_for("the restarted master to try the forge", Duration::from_secs(60), |_| {
        (fake.recorder.refused.load(Ordering::SeqCst) > refused).then_some(())
    });
    fake.recorder.forge_down.store(false, Ordering::SeqCst);
    farm.wait_for("the success once the forge is back", Duration::from_secs(120), |_| {
        fake.states(&first).last().is_some_and(|state| state == "success").then_some(())
    });
    // The pending status was superseded by the success while the forge was down.
    assert_eq!(fake.states(&first), ["success"]);
    let status = &fake.statuses(&first)[0];
    assert_eq!(status.path, format!("/forge/api/v1/repos/acme/product/statuses/{first}"));
    assert_eq!(status.headers["authorization"], format!("token {FORGE_TOKEN}"));
    assert_eq!(
        status.body,
        serde_json::json!({
            "state": "success",
            "context": "ci/greenlight",
            "description": format!("build {} green: 5 passed", build.build_id),
            "target_url": format!("{}/#/build/{}", farm.url, build.build_id),
        })
    );
    // And the next build's statuses go straight through.
    let next = farm.repo.touch_area("core", "Core: tidy").unwrap();
    let next_build = farm.finished_build_of(&next);
    farm.wait_for("the next revision's success", Duration::from_secs(60), |_| {
        fake.states(&next).last().is_some_and(|state| state == "success").then_some(())
    });
    assert_eq!(fake.states(&next), ["pending", "success"], "build {}", next_build.build_id);
}

#[test]
fn a_cancelled_build_is_an_error_on_its_revision_on_gitlab_and_in_the_chat_and_its_rebuild_posts_again() {
    const ADMIN: &str = "notify-admin";
    let fake = FakeServer::start();
    let extra = format!(
        r#"[forge]
kind = "gitlab"
api_url = "{fake}/forge/api/v4"
repository = "acme/sub/product"
token_env = "GREENLIGHT_TEST_FORGE_TOKEN"

[notify]
json_webhook = "{fake}/json"
"#,
        fake = fake.url
    );
    let tests: Vec<SuiteTest> =
        (0..6).map(|index| test(&format!("core/test_long.py::test_{index}"), &["core"], &[], 20.0)).collect();
    let suite = SuiteFile { name: "cancel".into(), shard_overhead_s: 0.0, tests };
    let options = FarmOptions { scale: 0.15, top_toml: format!("admin_token = \"{ADMIN}\""), ..options(extra) };
    let farm = Farm::start(&suite, 2, options);
    let first = farm.repo.head().unwrap();
    farm.wait_for("the first build's pending status", Duration::from_secs(120), |_| {
        (fake.states(&first) == ["pending"]).then_some(())
    });
    let cancelled = farm.builds().into_iter().find(|build| build.revision == first).unwrap();
    let (status, body) =
        farm.post(&format!("/api/v1/admin/builds/{}/cancel", cancelled.build_id), &serde_json::json!({}), Some(ADMIN));
    assert_eq!(status, 200, "{body}");
    // Its change is tested again by the next build, whose statuses replace the error.
    farm.wait_for("the rebuild's success", Duration::from_secs(180), |_| {
        (fake.states(&first).len() == 4).then_some(())
    });
    // GitLab's words: a build in error is `failed` there, its description says why.
    assert_eq!(fake.states(&first), ["pending", "failed", "pending", "success"]);
    let statuses = fake.statuses(&first);
    for status in &statuses {
        assert_eq!(status.path, format!("/forge/api/v4/projects/acme%2Fsub%2Fproduct/statuses/{first}"));
        assert_eq!(status.headers["private-token"], FORGE_TOKEN);
        assert!(!status.headers.contains_key("authorization"), "{status:?}");
        let body = status.body.as_object().unwrap();
        assert_eq!(body.keys().map(String::as_str).collect::<Vec<_>>(), ["description", "name", "state", "target_url"]);
        assert_eq!(body["name"], "greenlight");
    }
    assert_eq!(statuses[1].body["description"], format!("build {} error: cancelled by an admin", cancelled.build_id));
    let rebuild = farm.finished_build_of(&first);
    assert_eq!(
        (rebuild.state, statuses[3].body["target_url"].as_str()),
        (BuildState::Green, Some(format!("{}/#/build/{}", farm.url, rebuild.build_id).as_str()))
    );
    farm.wait_for("the build error notification", Duration::from_secs(60), |_| {
        (!fake.notifications().is_empty()).then_some(())
    });
    let notifications = fake.notifications();
    assert_eq!(notifications.len(), 1, "{notifications:?}");
    let error = &notifications[0];
    assert_eq!(
        (error.event, error.build_id, error.revision.as_str(), error.error.as_deref()),
        (NotificationKind::BuildError, cancelled.build_id, first.as_str(), Some("cancelled by an admin"))
    );
}
