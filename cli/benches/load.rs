//! The master under load (issue #16): a real master over a fixture repository with the
//! IMVU-shaped suite (15,000 tests), and 50 simulated workers, async tasks on one small
//! tokio runtime speaking the real worker HTTP API (register, long-poll for a lease,
//! results, heartbeat, finish), that report their shards' results as fast as the master
//! takes them. Measures, and prints as tables (asserting nothing about speed, see
//! BENCHMARKS.md):
//!
//! 1. ingest: results/s and the master's CPU per 1,000 results, with the batch sizes real
//!    workers send when their tests take about a second (1 to 3, 1.7 per POST on average),
//!    sent as fast as the master answers; with batches of up to 100; and paced as the real
//!    worker reports: its tests end one after another (all at `PACED_RATE` results/s over
//!    the fleet) and it sends what ended every 250 ms and at the shard's end;
//! 2. gate latency (`GET /api/v1/gate` from 64 connections) idle, while ingesting (as fast
//!    as the master answers, and paced), and
//!    while 4 clients read a finished build's whole results (following a cursor when the
//!    answer has one), and the time of one whole-build read;
//! 3. growth over `BUILDS` full builds back to back: the master's RSS, its data directory
//!    on disk and the bytes on disk per stored result;
//! 4. restart: `kill -9` in the middle of a build, the time until the restarted master
//!    answers the gate, and how many acknowledged results the restarted master lost.
//!
//! With `GREENLIGHT_BASELINE_BIN=/path/to/old/greenlight` every phase also runs against
//! that binary, alternately with this build's, in the same run (the machines are noisy):
//! both columns are printed with their ratio.
//!
//! ```sh
//! cargo bench -p greenlight --bench load
//! BUILDS=67 GREENLIGHT_BASELINE_BIN=target/baseline-greenlight \
//!   GREENLIGHT_LOAD_CONFIG='[storage]\ncache_bytes = 67108864' cargo bench -p greenlight --bench load
//! ```
//!
//! Environment (all optional): `BUILDS` (growth builds, 20), `INGEST_BUILDS` (builds per
//! ingest measurement, 2), `PROBE_SECONDS` (gate probing while idle and under readers, 8),
//! `GATE_CONNECTIONS` (64), `GATE_INTERVAL_MS` (pause of each gate connection between
//! requests, 100), `READERS` (4), `READ_PAGE_LIMIT` (`?limit=` of a results read, none),
//! `RESTART_AFTER` (results of the build acknowledged before the kill, 5000),
//! `GROWTH_BATCH` (results per POST in the growth phase, 0 = real workers' sizes),
//! `PACED_RATE` (results/s the paced fleet's tests end at, 25000),
//! `BENCH_THREADS` (threads of the workers' runtime, 2), `PHASES`
//! (`ingest,gate,growth,restart`), `GREENLIGHT_LOAD_CONFIG` / `GREENLIGHT_BASELINE_CONFIG`
//! (TOML appended to the configuration of this build's master / the baseline's; `\n`
//! stands for a newline; the configuration already has `[repository]`, `[suite]`,
//! `[tags.paths]` and `[scheduler]` tables).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Farm, FarmOptions, TOKEN};
use greenlight_fixtures::imvu::{ImvuShape, generate};
use greenlight_master::store::compact::disk_bytes;
use greenlight_shared::api::{
    BuildKind, BuildSummary, HeartbeatResponse, LeaseResponse, RegisterResponse, ResultsResponse, SESSION_HEADER,
    TestReport, TestStatus,
};
use greenlight_shared::suite::SuiteFile;
use serde::Deserialize;

const WORKERS: usize = 50;
/// How long a worker's lease request may be held open.
const LEASE_WAIT_S: f64 = 5.0;
const HEARTBEAT_INTERVAL_S: f64 = 5.0;
/// Results per POST of real workers, in turn: 1.7 on average, the mean issue #16 reports.
const REAL_BATCHES: [usize; 10] = [1, 2, 1, 2, 3, 1, 2, 1, 2, 2];
/// How often the real worker sends what finished (worker/src/shard.rs `REPORT_POLL`): a
/// runner's report is read every 250 ms, and everything new in it goes in one POST, as
/// does the rest when the runner exits.
const REPORT_POLL: Duration = Duration::from_millis(250);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|value| value.trim().parse().ok()).unwrap_or(default)
}

/// Seconds of CPU (user + system) a process has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    // Fields after the command (which may hold spaces) start at field 3; utime and stime
    // are fields 14 and 15.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |index: usize| fields.get(index - 3).and_then(|value| value.parse::<u64>().ok()).unwrap_or(0);
    field(14) + field(15)
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|output| String::from_utf8_lossy(&output.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The resident set of a process, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kilobytes| kilobytes * 1024)
}

/// A moment of the ingest window: wall clock and the CPU ticks of the master and the bench.
#[derive(Clone, Copy)]
struct Mark {
    at: Instant,
    master_ticks: u64,
    bench_ticks: u64,
}

impl Mark {
    fn now(master_pid: u32) -> Mark {
        Mark { at: Instant::now(), master_ticks: cpu_ticks(master_pid), bench_ticks: cpu_ticks(std::process::id()) }
    }
}

/// What the simulated workers of one farm share.
struct Fleet {
    url: String,
    http: reqwest::Client,
    /// Each test's result, serialised once.
    fragments: HashMap<String, String>,
    /// Results per POST: 0 for real workers' sizes ([`REAL_BATCHES`]).
    batch: AtomicUsize,
    /// Paced: each test takes this many nanoseconds, and a worker reports what finished
    /// as the real worker does ([`REPORT_POLL`]); 0: as fast as the master takes them.
    pace_ns: AtomicU64,
    /// Paced: seconds from the end of the oldest test of each POST to its acknowledgement.
    lags: Mutex<Vec<f64>>,
    master_pid: AtomicU64,
    /// Stop: the master is about to be killed.
    halt: AtomicBool,
    /// Results of the current build the master accepted; the window closes at `expected`.
    acked: AtomicU64,
    expected: AtomicU64,
    /// Results the master accepted, ever.
    stored: AtomicU64,
    /// Results POSTs in the current window.
    posts: AtomicU64,
    window_open: AtomicBool,
    first_post: Mutex<Option<Mark>>,
    last_ack: Mutex<Option<Mark>>,
    /// The latest acknowledgement of an accepted result in the current window.
    latest_ack: Mutex<Option<Instant>>,
    /// Test ids acknowledged in the current build, when `record_ids` (the restart check).
    record_ids: AtomicBool,
    acknowledged: Mutex<Vec<String>>,
    /// Acknowledged batches whose every id cannot be told stored (some were stale).
    unsure: AtomicU64,
    build_id: AtomicU64,
}

impl Fleet {
    fn new(url: &str, suite: &SuiteFile) -> Fleet {
        let fragments = suite
            .tests
            .iter()
            .map(|test| {
                let report = TestReport {
                    test_id: test.id.clone(),
                    status: TestStatus::Passed,
                    duration_s: test.duration_s.unwrap_or(1.0),
                    wall_s: None,
                    output: None,
                };
                (test.id.clone(), serde_json::to_string(&report).unwrap())
            })
            .collect();
        Fleet {
            url: url.to_owned(),
            http: reqwest::Client::builder().timeout(Duration::from_secs(120)).tcp_nodelay(true).build().unwrap(),
            fragments,
            batch: AtomicUsize::new(0),
            pace_ns: AtomicU64::new(0),
            lags: Mutex::new(Vec::new()),
            master_pid: AtomicU64::new(0),
            halt: AtomicBool::new(false),
            acked: AtomicU64::new(0),
            expected: AtomicU64::new(u64::MAX),
            stored: AtomicU64::new(0),
            posts: AtomicU64::new(0),
            window_open: AtomicBool::new(false),
            first_post: Mutex::new(None),
            last_ack: Mutex::new(None),
            latest_ack: Mutex::new(None),
            record_ids: AtomicBool::new(false),
            acknowledged: Mutex::new(Vec::new()),
            unsure: AtomicU64::new(0),
            build_id: AtomicU64::new(0),
        }
    }

    fn master_pid(&self) -> u32 {
        self.master_pid.load(Ordering::Relaxed) as u32
    }

    /// A new build: the window opens at its first results POST.
    fn reset(&self, expected: u64, batch: usize) {
        self.batch.store(batch, Ordering::Relaxed);
        self.acked.store(0, Ordering::Relaxed);
        self.posts.store(0, Ordering::Relaxed);
        self.expected.store(expected, Ordering::Relaxed);
        *self.first_post.lock().unwrap() = None;
        *self.last_ack.lock().unwrap() = None;
        *self.latest_ack.lock().unwrap() = None;
        self.acknowledged.lock().unwrap().clear();
        self.unsure.store(0, Ordering::Relaxed);
        self.window_open.store(false, Ordering::Relaxed);
    }

    fn before_post(&self) {
        self.posts.fetch_add(1, Ordering::Relaxed);
        if !self.window_open.load(Ordering::Relaxed) {
            let mut first = self.first_post.lock().unwrap();
            if first.is_none() {
                *first = Some(Mark::now(self.master_pid()));
                self.window_open.store(true, Ordering::Relaxed);
            }
        }
    }

    fn acknowledge(&self, ids: &[String], answer: &ResultsResponse) {
        let accepted = u64::from(answer.accepted);
        self.stored.fetch_add(accepted, Ordering::Relaxed);
        if self.record_ids.load(Ordering::Relaxed) {
            // Accepted or duplicates: stored. A stale result (its test withdrawn from the
            // lease before it arrived) is not, and the answer does not say which it was.
            if answer.stale == 0 {
                self.acknowledged.lock().unwrap().extend(ids.iter().cloned());
            } else {
                self.unsure.fetch_add(1, Ordering::Relaxed);
            }
        }
        if accepted > 0 {
            *self.latest_ack.lock().unwrap() = Some(Instant::now());
        }
        let acked = self.acked.fetch_add(accepted, Ordering::Relaxed) + accepted;
        if acked >= self.expected.load(Ordering::Relaxed) {
            let mut last = self.last_ack.lock().unwrap();
            if last.is_none() {
                *last = Some(Mark::now(self.master_pid()));
            }
        }
    }

    /// POSTs a JSON body as a worker process does (token, session); (status, body).
    async fn post(&self, path: &str, session: &str, body: String) -> Result<(u16, Vec<u8>), String> {
        let response = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(TOKEN)
            .header(SESSION_HEADER, session)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|error| format!("POST {path}: {error}"))?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(|error| format!("POST {path}: {error}"))?;
        Ok((status, body.to_vec()))
    }
}

/// One simulated worker: register, then lease and report shards until halted.
async fn worker(fleet: Arc<Fleet>, index: usize) {
    let session = format!("load-bench-session-{index:04}");
    let name = format!("load-{index:02}");
    let worker_id = loop {
        match fleet.post("/api/v1/workers/register", &session, format!("{{\"name\":{name:?}}}")).await {
            Ok((200, body)) => break serde_json::from_slice::<RegisterResponse>(&body).unwrap().worker_id,
            Ok((status, body)) => eprintln!("{name}: register: {status} {}", String::from_utf8_lossy(&body)),
            Err(error) => eprintln!("{name}: {error}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let lease_path = format!("/api/v1/workers/{worker_id}/lease");
    let lease_body = format!("{{\"wait_s\":{LEASE_WAIT_S}}}");
    let mut cycle = index;
    while !fleet.halt.load(Ordering::Relaxed) {
        let body = match fleet.post(&lease_path, &session, lease_body.clone()).await {
            Ok((200, body)) => body,
            Ok((status, body)) => {
                eprintln!("{name}: lease: {status} {}", String::from_utf8_lossy(&body));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(error) => {
                if !fleet.halt.load(Ordering::Relaxed) {
                    eprintln!("{name}: {error}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                continue;
            }
        };
        let Some(lease) = serde_json::from_slice::<LeaseResponse>(&body).unwrap().lease else { continue };
        fleet.build_id.store(lease.build_id, Ordering::Relaxed);
        let results_path = format!("/api/v1/leases/{}/results", lease.lease_id);
        let heartbeat_path = format!("/api/v1/leases/{}/heartbeat", lease.lease_id);
        let mut last_heartbeat = Instant::now();
        // Tests the master withdrew from the lease (another worker runs them): not reported.
        let mut withdrawn: HashSet<String> = HashSet::new();
        let mut next = 0;
        let pace = Duration::from_nanos(fleet.pace_ns.load(Ordering::Relaxed));
        let started = Instant::now();
        let mut last_report = started;
        loop {
            let mut ids: Vec<String> = Vec::new();
            let oldest_end = started + pace * (next as u32 + 1);
            if pace.is_zero() {
                let size = match fleet.batch.load(Ordering::Relaxed) {
                    0 => {
                        cycle += 1;
                        REAL_BATCHES[cycle % REAL_BATCHES.len()]
                    }
                    size => size,
                };
                while ids.len() < size && next < lease.tests.len() {
                    if !withdrawn.contains(&lease.tests[next]) {
                        ids.push(lease.tests[next].clone());
                    }
                    next += 1;
                }
            } else {
                // The runner runs the tests back to back; the worker reads its report every
                // REPORT_POLL, and at its exit, and sends whatever finished since.
                let end = started + pace * lease.tests.len() as u32;
                tokio::time::sleep_until((last_report + REPORT_POLL).min(end).into()).await;
                last_report = Instant::now();
                let finished = (last_report.duration_since(started).as_nanos() / pace.as_nanos()) as usize;
                while next < finished.min(lease.tests.len()) {
                    if !withdrawn.contains(&lease.tests[next]) {
                        ids.push(lease.tests[next].clone());
                    }
                    next += 1;
                }
                if ids.is_empty() && next < lease.tests.len() {
                    continue;
                }
            }
            if ids.is_empty() {
                break;
            }
            let mut body = String::with_capacity(40 + ids.len() * 160);
            write!(body, "{{\"worker_id\":{worker_id},\"results\":[").unwrap();
            for (position, id) in ids.iter().enumerate() {
                if position > 0 {
                    body.push(',');
                }
                body.push_str(&fleet.fragments[id]);
            }
            body.push_str("]}");
            loop {
                if fleet.halt.load(Ordering::Relaxed) {
                    return;
                }
                fleet.before_post();
                match fleet.post(&results_path, &session, body.clone()).await {
                    Ok((200, answer)) => {
                        let answer: ResultsResponse = serde_json::from_slice(&answer).unwrap();
                        fleet.acknowledge(&ids, &answer);
                        if !pace.is_zero() {
                            fleet.lags.lock().unwrap().push(oldest_end.elapsed().as_secs_f64());
                        }
                        withdrawn.extend(answer.withdrawn);
                        break;
                    }
                    Ok((status, answer)) => {
                        eprintln!("{name}: results: {status} {}", String::from_utf8_lossy(&answer));
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(error) => {
                        if fleet.halt.load(Ordering::Relaxed) {
                            return;
                        }
                        eprintln!("{name}: {error}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            if last_heartbeat.elapsed() >= Duration::from_secs_f64(HEARTBEAT_INTERVAL_S) {
                let heartbeat = format!("{{\"worker_id\":{worker_id}}}");
                if let Ok((200, answer)) = fleet.post(&heartbeat_path, &session, heartbeat).await {
                    let answer: HeartbeatResponse = serde_json::from_slice(&answer).unwrap();
                    withdrawn.extend(answer.withdrawn);
                }
                last_heartbeat = Instant::now();
            }
        }
        let finish = format!("{{\"worker_id\":{worker_id},\"outcome\":{{\"kind\":\"completed\"}}}}");
        match fleet.post(&format!("/api/v1/leases/{}/finish", lease.lease_id), &session, finish).await {
            Ok((204 | 200, _)) => {}
            Ok((status, answer)) => eprintln!("{name}: finish: {status} {}", String::from_utf8_lossy(&answer)),
            Err(error) if !fleet.halt.load(Ordering::Relaxed) => eprintln!("{name}: {error}"),
            Err(_) => return,
        }
    }
}

/// One page of `GET /api/v1/builds/{id}/tests`: the results, and the cursor of the next
/// page if the master paginates (under one of the names a paginated answer may use).
#[derive(Deserialize)]
struct ResultsPage {
    results: Vec<ResultRow>,
    #[serde(default)]
    next_cursor: Option<serde_json::Value>,
    #[serde(default)]
    next: Option<serde_json::Value>,
    #[serde(default)]
    cursor: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ResultRow {
    test_id: String,
}

/// A whole build's results as a client reads them.
struct WholeRead {
    /// Time spent waiting for the master (request sent to the last byte of each page).
    elapsed: Duration,
    pages: usize,
    bytes: usize,
    test_ids: Vec<String>,
}

/// `text` as a query string value.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(byte).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// Reads every result of `build_id`, following the cursor while the answer has one.
async fn read_whole_build(http: &reqwest::Client, url: &str, build_id: u64) -> Result<WholeRead, String> {
    let limit: Option<u64> = std::env::var("READ_PAGE_LIMIT").ok().and_then(|value| value.parse().ok());
    let mut read = WholeRead { elapsed: Duration::ZERO, pages: 0, bytes: 0, test_ids: Vec::new() };
    let mut cursor: Option<String> = None;
    let mut next_path: Option<String> = None;
    loop {
        let address = match &next_path {
            Some(path) if path.starts_with("http") => path.clone(),
            Some(path) => format!("{url}{path}"),
            None => {
                let mut query: Vec<String> = Vec::new();
                if let Some(limit) = limit {
                    query.push(format!("limit={limit}"));
                }
                if let Some(cursor) = &cursor {
                    query.push(format!("cursor={}", percent_encode(cursor)));
                }
                let query = if query.is_empty() { String::new() } else { format!("?{}", query.join("&")) };
                format!("{url}/api/v1/builds/{build_id}/tests{query}")
            }
        };
        let started = Instant::now();
        let response = http.get(address).send().await.map_err(|error| format!("read build {build_id}: {error}"))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|error| format!("read build {build_id}: {error}"))?;
        read.elapsed += started.elapsed();
        if !status.is_success() {
            return Err(format!("read build {build_id}: {status} {}", String::from_utf8_lossy(&body)));
        }
        read.pages += 1;
        read.bytes += body.len();
        let page: ResultsPage = serde_json::from_slice(&body).map_err(|error| format!("a results page: {error}"))?;
        read.test_ids.extend(page.results.into_iter().map(|row| row.test_id));
        let sent = cursor.take();
        let found = [page.next_cursor, page.next, page.cursor].into_iter().flatten().find_map(|value| match value {
            serde_json::Value::String(text) if Some(&text) != sent.as_ref() && !text.is_empty() => Some(text),
            serde_json::Value::Number(number) if Some(&number.to_string()) != sent.as_ref() => Some(number.to_string()),
            _ => None,
        });
        match found {
            None => return Ok(read),
            Some(found) if found.starts_with('/') || found.starts_with("http") => next_path = Some(found),
            Some(found) => {
                next_path = None;
                cursor = Some(found);
            }
        }
        if read.pages > 100_000 {
            return Err(format!("read build {build_id}: more than 100,000 pages"));
        }
    }
}

/// One master and its simulated workers.
struct Side {
    label: &'static str,
    farm: Farm,
    fleet: Arc<Fleet>,
    builds: usize,
}

impl Side {
    fn start(
        label: &'static str,
        binary: Option<PathBuf>,
        extra_toml: String,
        suite: &SuiteFile,
        runtime: &tokio::runtime::Runtime,
    ) -> Side {
        // The repository starts with a one-test suite, so that the workers have joined
        // (and the 15k builds are planned for 50 of them) before the big suite lands.
        let mut first = suite.tests[0].clone();
        first.depends_on.clear();
        let tiny = SuiteFile { name: "tiny".into(), shard_overhead_s: 0.0, tests: vec![first] };
        let farm = Farm::start(
            &tiny,
            0,
            FarmOptions {
                lease_timeout_s: 60.0,
                heartbeat_interval_s: HEARTBEAT_INTERVAL_S,
                extra_toml,
                master_binary: binary,
                ..FarmOptions::default()
            },
        );
        let fleet = Arc::new(Fleet::new(&farm.url, suite));
        fleet.master_pid.store(u64::from(farm.master.pid()), Ordering::Relaxed);
        for index in 0..WORKERS {
            runtime.spawn(worker(Arc::clone(&fleet), index));
        }
        farm.finished_build_of(&farm.repo.head().unwrap());
        farm.wait_for("50 workers", Duration::from_secs(60), |farm| (farm.workers().len() == WORKERS).then_some(()));
        let mut side = Side { label, farm, fleet, builds: 0 };
        // The first full build (warms the history of durations up); not measured.
        let suite_json = serde_json::to_string(suite).unwrap();
        side.run_build(100, &[(greenlight_fixtures::SUITE_FILE, &suite_json)]);
        eprintln!(
            "{label}: master {} (pid {}) ready in {}",
            side.farm.url,
            side.farm.master.pid(),
            side.data_dir().display()
        );
        side
    }

    fn data_dir(&self) -> PathBuf {
        self.farm.dir().join("master")
    }

    fn master_pid(&self) -> u32 {
        self.farm.master.pid()
    }

    /// Commits a revision that selects every test (no path rule tags it), or `files`.
    fn commit_build(&mut self, files: &[(&str, &str)]) -> String {
        self.builds += 1;
        let path = format!("bench/build-{}.txt", self.builds);
        let note = format!("load bench build {}\n", self.builds);
        let files: Vec<(&str, &str)> = if files.is_empty() { vec![(&path, &note)] } else { files.to_vec() };
        self.farm.repo.commit(&format!("Load bench build {}", self.builds), &files).unwrap()
    }

    /// The latest regular build of `revision`, once it appears.
    fn build_of(&self, revision: &str) -> Option<BuildSummary> {
        let builds: Vec<BuildSummary> = self.farm.get("/api/v1/builds?limit=5");
        builds.into_iter().find(|build| build.revision == revision && build.kind == BuildKind::Regular)
    }

    fn wait_finished(&self, revision: &str) -> BuildSummary {
        let deadline = Instant::now() + Duration::from_secs(1800);
        loop {
            if let Some(build) = self.build_of(revision).filter(|build| build.state.is_finished()) {
                return build;
            }
            assert!(Instant::now() < deadline, "{}: the build of {revision} did not finish", self.label);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One full build with `batch` results per POST (0: real workers' sizes), measured
    /// from its first results POST to the acknowledgement of its last result.
    fn run_build(&mut self, batch: usize, files: &[(&str, &str)]) -> Ingest {
        let expected = self.fleet.fragments.len() as u64;
        self.fleet.reset(expected, batch);
        let revision = self.commit_build(files);
        let build = self.wait_finished(&revision);
        let end = Mark::now(self.master_pid());
        let first = self.fleet.first_post.lock().unwrap().unwrap_or(end);
        // A build whose results were not all accepted here (a test withdrawn from one lease
        // and reported by two workers) ends at its latest acknowledgement; its CPU is then
        // counted to the build's end (its shards' finish calls included).
        let latest = self.fleet.latest_ack.lock().unwrap().map_or(end, |at| Mark { at, ..end });
        let last = self.fleet.last_ack.lock().unwrap().unwrap_or(latest);
        Ingest {
            build_id: build.build_id,
            results: self.fleet.acked.load(Ordering::Relaxed),
            posts: self.fleet.posts.load(Ordering::Relaxed),
            seconds: last.at.duration_since(first.at).as_secs_f64(),
            master_ticks: last.master_ticks.saturating_sub(first.master_ticks),
            bench_ticks: last.bench_ticks.saturating_sub(first.bench_ticks),
        }
    }
}

/// The ingest window of one build.
#[derive(Default, Clone, Copy)]
struct Ingest {
    build_id: u64,
    results: u64,
    posts: u64,
    seconds: f64,
    master_ticks: u64,
    bench_ticks: u64,
}

impl std::ops::AddAssign for Ingest {
    fn add_assign(&mut self, other: Ingest) {
        self.build_id = other.build_id;
        self.results += other.results;
        self.posts += other.posts;
        self.seconds += other.seconds;
        self.master_ticks += other.master_ticks;
        self.bench_ticks += other.bench_ticks;
    }
}

/// Latencies in seconds, sorted.
struct Latencies(Vec<f64>);

impl Latencies {
    fn new(mut samples: Vec<f64>) -> Latencies {
        samples.sort_by(f64::total_cmp);
        Latencies(samples)
    }

    fn quantile(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        self.0[((q * self.0.len() as f64) as usize).min(self.0.len() - 1)]
    }

    fn max(&self) -> f64 {
        self.0.last().copied().unwrap_or(f64::NAN)
    }
}

/// Gate requests from `connections` connections, each pausing `interval` between them,
/// while `during` runs; their latencies.
fn probe_gate<T>(probe_runtime: &tokio::runtime::Runtime, url: &str, during: impl FnOnce() -> T) -> (Latencies, T) {
    let connections: usize = env_or("GATE_CONNECTIONS", 64);
    let interval = Duration::from_millis(env_or("GATE_INTERVAL_MS", 100));
    let stop = Arc::new(AtomicBool::new(false));
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).tcp_nodelay(true).build().unwrap();
    let probes: Vec<_> = (0..connections)
        .map(|index| {
            let (http, stop, url) = (http.clone(), Arc::clone(&stop), format!("{url}/api/v1/gate"));
            probe_runtime.spawn(async move {
                // Spread the connections over the interval.
                tokio::time::sleep(interval * index as u32 / connections as u32).await;
                let mut samples = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    match http.get(&url).send().await {
                        Ok(response) if response.status().is_success() => {
                            let _ = response.bytes().await;
                            samples.push(started.elapsed().as_secs_f64());
                        }
                        Ok(response) => eprintln!("gate: {}", response.status()),
                        Err(error) => eprintln!("gate: {error}"),
                    }
                    tokio::time::sleep(interval).await;
                }
                samples
            })
        })
        .collect();
    let value = during();
    stop.store(true, Ordering::Relaxed);
    let samples = probes.into_iter().flat_map(|probe| probe_runtime.block_on(probe).unwrap()).collect();
    (Latencies::new(samples), value)
}

/// What the gate phase measured on one side.
struct GatePhase {
    idle: Latencies,
    ingesting: Latencies,
    ingest: Ingest,
    /// While the paced fleet ingests.
    paced: Latencies,
    reading: Latencies,
    reads: Latencies,
    pages: usize,
    read_results: usize,
    read_bytes: usize,
}

fn gate_phase(
    side: &mut Side,
    runtime: &tokio::runtime::Runtime,
    probe_runtime: &tokio::runtime::Runtime,
) -> GatePhase {
    let seconds = Duration::from_secs(env_or("PROBE_SECONDS", 8));
    let url = side.farm.url.clone();
    let (idle, ()) = probe_gate(probe_runtime, &url, || std::thread::sleep(seconds));
    let (ingesting, ingest) = probe_gate(probe_runtime, &url, || side.run_build(0, &[]));
    let pace = WORKERS as u64 * 1_000_000_000 / env_or::<u64>("PACED_RATE", 25_000).max(1);
    side.fleet.pace_ns.store(pace, Ordering::Relaxed);
    let (paced, _) = probe_gate(probe_runtime, &url, || side.run_build(0, &[]));
    side.fleet.pace_ns.store(0, Ordering::Relaxed);
    side.fleet.lags.lock().unwrap().clear();
    let build_id = ingest.build_id;
    let readers: usize = env_or("READERS", 4);
    let stop = Arc::new(AtomicBool::new(false));
    let http = reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap();
    let first = runtime.block_on(read_whole_build(&http, &side.farm.url, build_id)).unwrap();
    let (pages, read_results, read_bytes) = (first.pages, first.test_ids.len(), first.bytes);
    let (reading, reads) = probe_gate(probe_runtime, &url, || {
        let tasks: Vec<_> = (0..readers)
            .map(|_| {
                let (http, stop, url) = (http.clone(), Arc::clone(&stop), url.clone());
                runtime.spawn(async move {
                    let mut times = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        match read_whole_build(&http, &url, build_id).await {
                            Ok(read) => times.push(read.elapsed.as_secs_f64()),
                            Err(error) => eprintln!("reader: {error}"),
                        }
                    }
                    times
                })
            })
            .collect();
        std::thread::sleep(seconds);
        stop.store(true, Ordering::Relaxed);
        tasks.into_iter().flat_map(|task| runtime.block_on(task).unwrap()).collect::<Vec<f64>>()
    });
    GatePhase { idle, ingesting, ingest, paced, reading, reads: Latencies::new(reads), pages, read_results, read_bytes }
}

/// One growth sample.
struct Growth {
    stored: u64,
    rss: u64,
    disk: u64,
    build_s: f64,
}

/// What the restart phase measured on one side.
struct Restart {
    stored: u64,
    acknowledged: usize,
    unsure: u64,
    seconds: f64,
    lost: usize,
    present: usize,
}

fn restart_phase(side: &mut Side) -> Restart {
    let after: u64 = env_or("RESTART_AFTER", 5000);
    let fleet = Arc::clone(&side.fleet);
    fleet.reset(u64::MAX, 0);
    fleet.record_ids.store(true, Ordering::Relaxed);
    let revision = side.commit_build(&[]);
    let deadline = Instant::now() + Duration::from_secs(600);
    while fleet.acked.load(Ordering::Relaxed) < after {
        assert!(Instant::now() < deadline, "{}: {after} results were not acknowledged", side.label);
        std::thread::sleep(Duration::from_millis(1));
    }
    let build_id = side.build_of(&revision).map_or(fleet.build_id.load(Ordering::Relaxed), |build| build.build_id);
    fleet.halt.store(true, Ordering::Relaxed);
    side.farm.master.kill();
    let stored = fleet.stored.load(Ordering::Relaxed);
    let address = side.farm.url.trim_start_matches("http://").to_owned();
    let started = Instant::now();
    let (master, url) =
        common::start_master_of(&side.farm.master_binary, &side.farm.config, side.farm.dir(), &["--listen", &address]);
    assert_eq!(url, side.farm.url);
    side.farm.master = master;
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    loop {
        if http.get(format!("{url}/api/v1/gate")).send().is_ok_and(|response| response.status().is_success()) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(300), "{}: the restarted master never answered", side.label);
        std::thread::sleep(Duration::from_millis(2));
    }
    let seconds = started.elapsed().as_secs_f64();
    let acknowledged: HashSet<String> = fleet.acknowledged.lock().unwrap().iter().cloned().collect();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let read = runtime.block_on(read_whole_build(&fleet.http, &url, build_id)).unwrap();
    let present: HashSet<String> = read.test_ids.into_iter().collect();
    let lost = acknowledged.iter().filter(|id| !present.contains(*id)).count();
    Restart {
        stored,
        acknowledged: acknowledged.len(),
        unsure: fleet.unsure.load(Ordering::Relaxed),
        seconds,
        lost,
        present: present.len(),
    }
}

/// A row of the summary: a measure on each side.
struct Row {
    measure: String,
    values: Vec<f64>,
    unit: &'static str,
}

fn print_rows(labels: &[&str], rows: &[Row]) {
    let width = rows.iter().map(|row| row.measure.len()).max().unwrap_or(10);
    let mut header = format!("{:<width$}", "measure");
    for label in labels {
        write!(header, " | {label:>12}").unwrap();
    }
    if labels.len() == 2 {
        header.push_str(" | current/baseline");
    }
    println!("{header}");
    println!("{}", "-".repeat(header.len()));
    for row in rows {
        let mut line = format!("{:<width$}", row.measure);
        for value in &row.values {
            let text = if value.abs() >= 100.0 || value.fract() == 0.0 {
                format!("{value:.0}")
            } else if value.abs() >= 10.0 {
                format!("{value:.1}")
            } else {
                format!("{value:.2}")
            };
            write!(line, " | {:>12}", format!("{text} {}", row.unit)).unwrap();
        }
        if let [baseline, current] = row.values[..] {
            if baseline == 0.0 || !baseline.is_finite() || !current.is_finite() {
                write!(line, " | {:>9}", "-").unwrap();
            } else {
                write!(line, " | {:>8.2}x", current / baseline).unwrap();
            }
        }
        println!("{line}");
    }
}

fn main() {
    let phases = std::env::var("PHASES").unwrap_or_else(|_| "ingest,gate,growth,restart".to_owned());
    let phase = |name: &str| phases.split(',').any(|phase| phase.trim() == name);
    let tick_hz = clock_ticks_per_second();
    let suite = generate(&ImvuShape::default());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(env_or("BENCH_THREADS", 2))
        .enable_all()
        .build()
        .unwrap();
    let probe_runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let config = |name: &str| std::env::var(name).unwrap_or_default().replace("\\n", "\n");

    let mut sides = Vec::new();
    if let Ok(baseline) = std::env::var("GREENLIGHT_BASELINE_BIN") {
        // `cargo bench` runs in the package's directory: a relative path may also be meant
        // from the workspace's root.
        let binary = [PathBuf::from(&baseline), Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(&baseline)]
            .into_iter()
            .find(|binary| binary.is_file())
            .unwrap_or_else(|| panic!("GREENLIGHT_BASELINE_BIN={baseline} is not a file"));
        sides.push(Side::start("baseline", Some(binary), config("GREENLIGHT_BASELINE_CONFIG"), &suite, &runtime));
    }
    sides.push(Side::start("current", None, config("GREENLIGHT_LOAD_CONFIG"), &suite, &runtime));
    let labels: Vec<&str> = sides.iter().map(|side| side.label).collect();
    let mut rows = Vec::new();
    let per_thousand = |ticks: u64, results: u64| ticks as f64 / tick_hz * 1000.0 / (results.max(1) as f64 / 1000.0);

    if phase("ingest") {
        let builds: usize = env_or("INGEST_BUILDS", 2);
        let paced_rate: u64 = env_or("PACED_RATE", 25_000);
        let paced = format!("tests ending at {}k/s, reported every 250 ms", paced_rate / 1000);
        for (batch, pace, name) in [
            (0, 0, "real batches (1.7/POST)".to_owned()),
            (100, 0, "batches of 100".to_owned()),
            (0, WORKERS as u64 * 1_000_000_000 / paced_rate.max(1), paced),
        ] {
            let mut totals = vec![Ingest::default(); sides.len()];
            for _ in 0..builds {
                for (side, total) in sides.iter_mut().zip(&mut totals) {
                    side.fleet.pace_ns.store(pace, Ordering::Relaxed);
                    let ingest = side.run_build(batch, &[]);
                    side.fleet.pace_ns.store(0, Ordering::Relaxed);
                    eprintln!("{}: ingest, {name}: {} results in {:.2} s", side.label, ingest.results, ingest.seconds);
                    *total += ingest;
                }
            }
            let map = |f: &dyn Fn(&Ingest) -> f64| totals.iter().map(f).collect::<Vec<f64>>();
            if pace > 0 {
                let lags: Vec<Latencies> = sides
                    .iter()
                    .map(|side| Latencies::new(std::mem::take(&mut *side.fleet.lags.lock().unwrap())))
                    .collect();
                for (quantile, label) in [(0.5, "p50"), (0.99, "p99"), (1.0, "max")] {
                    rows.push(Row {
                        measure: format!("ingest, {name}: {label} from a test's end to its acknowledgement"),
                        values: lags.iter().map(|lags| lags.quantile(quantile) * 1e3).collect(),
                        unit: "ms",
                    });
                }
            }
            rows.push(Row {
                measure: format!("ingest, {name}: results/s"),
                values: map(&|t| t.results as f64 / t.seconds),
                unit: "/s",
            });
            rows.push(Row {
                measure: format!("ingest, {name}: master CPU per 1,000 results"),
                values: map(&|t| per_thousand(t.master_ticks, t.results)),
                unit: "ms",
            });
            rows.push(Row {
                measure: format!("ingest, {name}: bench CPU per 1,000 results"),
                values: map(&|t| per_thousand(t.bench_ticks, t.results)),
                unit: "ms",
            });
            rows.push(Row {
                measure: format!("ingest, {name}: results per POST"),
                values: map(&|t| t.results as f64 / t.posts.max(1) as f64),
                unit: "",
            });
        }
        print_rows(&labels, &rows);
    }

    if phase("gate") {
        let measured: Vec<GatePhase> =
            sides.iter_mut().map(|side| gate_phase(side, &runtime, &probe_runtime)).collect();
        let map = |f: &dyn Fn(&GatePhase) -> f64| measured.iter().map(f).collect::<Vec<f64>>();
        let mut gate_rows = vec![
            Row { measure: "gate p50, idle".into(), values: map(&|g| g.idle.quantile(0.5) * 1e3), unit: "ms" },
            Row { measure: "gate p99, idle".into(), values: map(&|g| g.idle.quantile(0.99) * 1e3), unit: "ms" },
            Row {
                measure: "gate p50, while ingesting".into(),
                values: map(&|g| g.ingesting.quantile(0.5) * 1e3),
                unit: "ms",
            },
            Row {
                measure: "gate p99, while ingesting".into(),
                values: map(&|g| g.ingesting.quantile(0.99) * 1e3),
                unit: "ms",
            },
            Row {
                measure: "gate p99, while the paced fleet ingests".into(),
                values: map(&|g| g.paced.quantile(0.99) * 1e3),
                unit: "ms",
            },
            Row {
                measure: "ingest (real batches) under gate probing".into(),
                values: map(&|g| g.ingest.results as f64 / g.ingest.seconds),
                unit: "/s",
            },
            Row {
                measure: "gate p50, while reading whole builds".into(),
                values: map(&|g| g.reading.quantile(0.5) * 1e3),
                unit: "ms",
            },
            Row {
                measure: "gate p99, while reading whole builds".into(),
                values: map(&|g| g.reading.quantile(0.99) * 1e3),
                unit: "ms",
            },
            Row { measure: "gate max, while reading".into(), values: map(&|g| g.reading.max() * 1e3), unit: "ms" },
            Row {
                measure: "whole-build read, median".into(),
                values: map(&|g| g.reads.quantile(0.5) * 1e3),
                unit: "ms",
            },
            Row { measure: "whole-build read, max".into(), values: map(&|g| g.reads.max() * 1e3), unit: "ms" },
            Row { measure: "whole-build reads done".into(), values: map(&|g| g.reads.0.len() as f64), unit: "" },
            Row { measure: "pages per whole-build read".into(), values: map(&|g| g.pages as f64), unit: "" },
            Row { measure: "results per whole-build read".into(), values: map(&|g| g.read_results as f64), unit: "" },
            Row {
                measure: "bytes per whole-build read".into(),
                values: map(&|g| g.read_bytes as f64 / 1e6),
                unit: "MB",
            },
            Row {
                measure: "gate requests (idle / ingesting / reading)".into(),
                values: map(&|g| (g.idle.0.len() + g.ingesting.0.len() + g.reading.0.len()) as f64),
                unit: "",
            },
        ];
        println!();
        print_rows(&labels, &gate_rows);
        rows.append(&mut gate_rows);
    }

    if phase("growth") {
        let builds: usize = env_or("BUILDS", 20);
        let batch: usize = env_or("GROWTH_BATCH", 0);
        let every = (builds / 25).max(1);
        let mut samples: Vec<Vec<Growth>> = sides.iter().map(|_| Vec::new()).collect();
        println!();
        let mut header = format!("{:>6} {:>10}", "builds", "stored");
        for label in &labels {
            write!(header, " | {:>9} {:>9} {:>7} {:>6}", format!("{label} RSS"), "disk", "B/res", "s").unwrap();
        }
        println!("{header}");
        for build in 1..=builds {
            for (side, samples) in sides.iter_mut().zip(&mut samples) {
                let ingest = side.run_build(batch, &[]);
                let pid = side.master_pid();
                samples.push(Growth {
                    stored: side.fleet.stored.load(Ordering::Relaxed),
                    rss: rss_bytes(pid),
                    disk: disk_bytes(&side.data_dir()),
                    build_s: ingest.seconds,
                });
            }
            if build % every == 0 || build == builds {
                let mut line = format!("{build:>6} {:>10}", samples.last().unwrap().last().unwrap().stored);
                for samples in &samples {
                    let sample = samples.last().unwrap();
                    write!(
                        line,
                        " | {:>6} MB {:>6} MB {:>7.0} {:>6.1}",
                        sample.rss / 1_000_000,
                        sample.disk / 1_000_000,
                        sample.disk as f64 / sample.stored.max(1) as f64,
                        sample.build_s
                    )
                    .unwrap();
                }
                println!("{line}");
            }
        }
        let last = |f: &dyn Fn(&Growth) -> f64| samples.iter().map(|s| f(s.last().unwrap())).collect::<Vec<f64>>();
        let mut growth_rows = vec![
            Row {
                measure: format!("after {builds} growth builds: results stored"),
                values: last(&|g| g.stored as f64),
                unit: "",
            },
            Row { measure: "master RSS at the end".into(), values: last(&|g| g.rss as f64 / 1e6), unit: "MB" },
            Row {
                measure: "master RSS, highest sample".into(),
                values: samples.iter().map(|s| s.iter().map(|g| g.rss).max().unwrap_or(0) as f64 / 1e6).collect(),
                unit: "MB",
            },
            Row { measure: "data directory on disk".into(), values: last(&|g| g.disk as f64 / 1e6), unit: "MB" },
            Row {
                measure: "bytes on disk per stored result".into(),
                values: last(&|g| g.disk as f64 / g.stored.max(1) as f64),
                unit: "B",
            },
            Row {
                measure: "ingest over the growth builds".into(),
                values: samples
                    .iter()
                    .map(|s| {
                        let seconds: f64 = s.iter().map(|g| g.build_s).sum();
                        (s.len() * suite.tests.len()) as f64 / seconds
                    })
                    .collect(),
                unit: "/s",
            },
        ];
        println!();
        print_rows(&labels, &growth_rows);
        rows.append(&mut growth_rows);
    }

    if phase("restart") {
        let measured: Vec<Restart> = sides.iter_mut().map(restart_phase).collect();
        let map = |f: &dyn Fn(&Restart) -> f64| measured.iter().map(f).collect::<Vec<f64>>();
        let mut restart_rows = vec![
            Row { measure: "results stored at the kill".into(), values: map(&|r| r.stored as f64), unit: "" },
            Row { measure: "restart until the gate answers".into(), values: map(&|r| r.seconds), unit: "s" },
            Row {
                measure: "results of the build acknowledged before the kill".into(),
                values: map(&|r| r.acknowledged as f64),
                unit: "",
            },
            Row {
                measure: "results of the build after the restart".into(),
                values: map(&|r| r.present as f64),
                unit: "",
            },
            Row {
                measure: "acknowledged batches with stale results (not checked)".into(),
                values: map(&|r| r.unsure as f64),
                unit: "",
            },
            Row { measure: "acknowledged results lost".into(), values: map(&|r| r.lost as f64), unit: "" },
        ];
        println!();
        print_rows(&labels, &restart_rows);
        for (label, restart) in labels.iter().zip(&measured) {
            println!("{label}: acknowledged results lost: {}", restart.lost);
        }
        rows.append(&mut restart_rows);
    }

    println!();
    println!("load average at the end: {}", std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim());
    println!("summary:");
    print_rows(&labels, &rows);
    for side in &sides {
        side.fleet.halt.store(true, Ordering::Relaxed);
    }
    runtime.shutdown_background();
    probe_runtime.shutdown_background();
}
