//! Reads that never stall the farm: a build's results in stable pages, filtered by status;
//! heavy reads served off the async runtime's threads; the suite of a revision read from
//! git once for a test's history. The HTTP tests serve the real router on loopback.

use std::future::IntoFuture;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use greenlight_shared::api::{BuildTests, ErrorBody, ResultsQuery, TestResultView, TestStatus};

use super::{Harness, passing, suite};
use crate::api::{AppState, router};
use crate::farm::{Farm, ResultsPage};
use crate::store::{Kv, MemoryKv, StoreError, Tree};

type Entry = (Vec<u8>, Vec<u8>);

/// Every result `query` selects, page after page, following each page's cursor.
fn every_page(farm: &Farm, build_id: u64, query: ResultsQuery) -> (Vec<TestResultView>, usize) {
    let mut query = query;
    let mut results = Vec::new();
    let mut pages = 0;
    loop {
        let page = farm.build_tests_page(build_id, &ResultsPage::from_query(&query).unwrap()).unwrap();
        pages += 1;
        results.extend(page.results);
        match page.next_cursor {
            Some(cursor) => query.cursor = Some(cursor),
            None => return (results, pages),
        }
    }
}

fn fails_1_and_4(test_id: &str) -> TestStatus {
    if matches!(test_id, "t1" | "t4") { TestStatus::Failed } else { TestStatus::Passed }
}

#[tokio::test]
async fn a_builds_results_come_in_pages_each_result_once_and_failures_alone_when_asked() {
    let ids: Vec<String> = (0..9).map(|index| format!("t{index}")).collect();
    let harness = Harness::new(&suite(&ids.iter().map(String::as_str).collect::<Vec<_>>()), |_| {});
    let build_id = harness.next_build().await;
    let worker = harness.register("w1");
    harness.run_all(worker, fails_1_and_4);
    let everything = harness.farm.build_tests(build_id).unwrap().results;
    assert!(everything.len() > ids.len(), "the failures were retried: {everything:?}");

    let (paged, pages) = every_page(&harness.farm, build_id, ResultsQuery { limit: Some(2), ..Default::default() });
    assert_eq!(paged, everything, "the pages together are every result, in order, each once");
    assert_eq!(pages, everything.len().div_ceil(2));

    let failures = ResultsQuery { status: Some("failed,error".to_owned()), limit: Some(1), ..Default::default() };
    let (failed, _) = every_page(&harness.farm, build_id, failures);
    let expected: Vec<&TestResultView> = everything.iter().filter(|result| result.status.is_failure()).collect();
    assert!(!expected.is_empty());
    assert_eq!(failed.iter().collect::<Vec<_>>(), expected, "the failures alone");
    let unpaged = harness.farm.build_tests_page(build_id, &ResultsPage::default()).unwrap();
    assert_eq!((unpaged.results, unpaged.next_cursor), (everything, None), "no parameters: everything at once");
}

#[tokio::test]
async fn pages_read_while_the_build_runs_neither_repeat_nor_skip_a_result() {
    let ids: Vec<String> = (0..6).map(|index| format!("t{index}")).collect();
    let harness = Harness::new(&suite(&ids.iter().map(String::as_str).collect::<Vec<_>>()), |_| {});
    let build_id = harness.next_build().await;
    let worker = harness.register("w1");
    let lease = harness.lease(worker);
    let mut tests = lease.tests.clone();
    tests.sort();
    let (early, late) = tests.split_at(3);
    for test_id in early {
        harness.report(&lease, worker, &[(test_id, TestStatus::Passed)]).unwrap();
    }
    let first = harness
        .farm
        .build_tests_page(
            build_id,
            &ResultsPage::from_query(&ResultsQuery { limit: Some(2), ..Default::default() }).unwrap(),
        )
        .unwrap();
    // Results arrive between two pages.
    for test_id in late {
        harness.report(&lease, worker, &[(test_id, TestStatus::Passed)]).unwrap();
    }
    let rest = ResultsQuery { limit: Some(2), cursor: first.next_cursor.clone(), ..Default::default() };
    let (rest, _) = every_page(&harness.farm, build_id, rest);
    let read: Vec<&str> = first.results.iter().chain(&rest).map(|result| result.test_id.as_str()).collect();
    assert_eq!(read, tests.iter().map(String::as_str).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_tests_history_reads_the_suite_of_a_revision_from_git_once() {
    let mut tested = suite(&["a", "b"]);
    tested.tests[1].depends_on = vec!["a".to_owned()];
    let harness = Harness::new(&tested, |_| {});
    let build_id = harness.next_build().await;
    let worker = harness.register("w1");
    harness.run_all(worker, passing);
    let first = harness.farm.test_history("a", 10).unwrap();
    assert_eq!((first.tags.clone(), first.dependants.clone()), (vec!["core".to_owned()], vec!["b".to_owned()]));
    assert_eq!(first.runs[0].build_id, build_id);
    // git cannot answer any more: the second read knows the test's place in the suite all the same.
    std::fs::remove_dir_all(harness.config.data_dir.join("mirror.git")).unwrap();
    assert_eq!(harness.farm.test_history("a", 10).unwrap(), first);
}

/// A backend whose scans of results wait while they are held, as a slow disk's would.
struct HeldReads {
    inner: Arc<MemoryKv>,
    held: Mutex<bool>,
    released: Condvar,
    /// Whether a scan of results has begun.
    began: AtomicBool,
}

impl HeldReads {
    fn new(inner: Arc<MemoryKv>) -> HeldReads {
        HeldReads { inner, held: Mutex::new(false), released: Condvar::new(), began: AtomicBool::new(false) }
    }

    fn set_held(&self, held: bool) {
        *self.held.lock().unwrap() = held;
        self.released.notify_all();
    }

    fn is_held(&self) -> bool {
        *self.held.lock().unwrap()
    }

    fn wait_if_held(&self, tree: Tree) {
        if !matches!(tree, Tree::Results | Tree::RunningResults(_)) {
            return;
        }
        self.began.store(true, Ordering::SeqCst);
        let held = self.held.lock().unwrap();
        drop(self.released.wait_while(held, |held| *held).unwrap());
    }
}

impl Kv for HeldReads {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(tree, key)
    }
    fn put(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.inner.put(tree, key, value)
    }
    fn put_new(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<bool, StoreError> {
        self.inner.put_new(tree, key, value)
    }
    fn remove(&self, tree: Tree, key: &[u8]) -> Result<(), StoreError> {
        self.inner.remove(tree, key)
    }
    fn scan_prefix(&self, tree: Tree, prefix: &[u8]) -> Result<Vec<Entry>, StoreError> {
        self.wait_if_held(tree);
        self.inner.scan_prefix(tree, prefix)
    }
    fn scan_from(&self, tree: Tree, start: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError> {
        self.wait_if_held(tree);
        self.inner.scan_from(tree, start, limit)
    }
    fn scan_last(&self, tree: Tree, limit: usize) -> Result<Vec<Entry>, StoreError> {
        self.inner.scan_last(tree, limit)
    }
    fn apply_batch(&self, tree: Tree, puts: &[Entry], removes: &[Vec<u8>]) -> Result<(), StoreError> {
        self.inner.apply_batch(tree, puts, removes)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }
    fn drop_tree(&self, tree: Tree) -> Result<(), StoreError> {
        self.inner.drop_tree(tree)
    }
    fn running_result_trees(&self) -> Result<Vec<u64>, StoreError> {
        self.inner.running_result_trees()
    }
}

/// The master's router for `farm`, served on loopback; its base URL.
async fn serve(farm: &Arc<Farm>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, router(AppState { farm: Arc::clone(farm) })).into_future());
    url
}

/// One runtime thread (the farm's machine has two, for every request): a read of a build's
/// results that would decode on it would hold up every other request until it ends.
#[tokio::test(flavor = "current_thread")]
async fn the_gate_answers_while_a_slow_read_of_a_builds_results_is_under_way() {
    let memory = Arc::new(MemoryKv::default());
    let reads = Arc::new(HeldReads::new(Arc::clone(&memory)));
    let harness = Harness::over(&suite(&["a", "b", "c"]), |_| {}, memory, reads.clone());
    let build_id = harness.next_build().await;
    let worker = harness.register("w1");
    harness.run_all(worker, passing);
    let url = serve(&harness.farm).await;

    reads.set_held(true);
    // Were the read on the runtime's one thread, nothing could release it but this.
    let watchdog = Arc::clone(&reads);
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(20));
        watchdog.set_held(false);
    });
    let client = reqwest::Client::new();
    let results = tokio::spawn(client.get(format!("{url}/api/v1/builds/{build_id}/tests")).send());
    while !reads.began.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let gate = client.get(format!("{url}/api/v1/gate")).send().await.unwrap();
    let answered_while_held = reads.is_held();
    reads.set_held(false);
    assert_eq!(gate.status(), 200);
    assert!(answered_while_held, "the gate waited for the read of the build's results");
    let results = results.await.unwrap().unwrap();
    assert_eq!(results.status(), 200);
    let results: BuildTests = serde_json::from_slice(&results.bytes().await.unwrap()).unwrap();
    assert_eq!(results.results.len(), 3);
}

/// `GET url` answers `status` with the error `code`.
async fn expect_error(url: &str, status: u16, code: &str) -> ErrorBody {
    let answer = reqwest::get(url).await.unwrap();
    assert_eq!(answer.status(), status, "{url}");
    let body: ErrorBody = serde_json::from_slice(&answer.bytes().await.unwrap()).unwrap();
    assert_eq!(body.error, code, "{url}: {body:?}");
    body
}

#[tokio::test]
async fn a_page_of_results_asked_for_wrongly_is_refused_naming_the_problem() {
    let harness = Harness::new(&suite(&["a", "b"]), |_| {});
    let build_id = harness.next_build().await;
    let worker = harness.register("w1");
    harness.run_all(worker, passing);
    let url = serve(&harness.farm).await;
    let tests = format!("{url}/api/v1/builds/{build_id}/tests");

    let body = expect_error(&format!("{tests}?status=failed,broken"), 400, "invalid_status").await;
    assert!(body.message.contains("\"broken\"") && body.message.contains("passed, failed"), "{body:?}");
    expect_error(&format!("{tests}?status="), 400, "invalid_status").await;
    for cursor in ["zz", "abc", "00000001", "00000001ff"] {
        expect_error(&format!("{tests}?cursor={cursor}"), 400, "invalid_cursor").await;
    }
    let body = expect_error(&format!("{tests}?limit=0"), 400, "invalid_limit").await;
    assert!(body.message.contains("1 to 5000"), "{body:?}");
    expect_error(&format!("{tests}?limit=5001"), 400, "invalid_limit").await;
    expect_error(&format!("{tests}?limit=many"), 400, "invalid_query").await;
    expect_error(&format!("{url}/api/v1/builds/99/tests?limit=10"), 404, "unknown_build").await;

    // The call without parameters answers as it always did: everything, no cursor.
    let answer = reqwest::get(&tests).await.unwrap();
    assert_eq!(answer.headers()["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_slice(&answer.bytes().await.unwrap()).unwrap();
    assert_eq!(body["results"].as_array().map(Vec::len), Some(2));
    assert!(body.get("next_cursor").is_none(), "{body}");
    let page: BuildTests = serde_json::from_slice(
        &reqwest::get(format!("{tests}?limit=1&status=passed")).await.unwrap().bytes().await.unwrap(),
    )
    .unwrap();
    assert_eq!(page.results.len(), 1);
    let cursor = page.next_cursor.expect("a second page");
    let last: BuildTests = serde_json::from_slice(
        &reqwest::get(format!("{tests}?limit=1&status=passed&cursor={cursor}")).await.unwrap().bytes().await.unwrap(),
    )
    .unwrap();
    assert_eq!((last.results[0].test_id.as_str(), last.next_cursor), ("b", None));
}
