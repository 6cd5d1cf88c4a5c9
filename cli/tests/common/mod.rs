//! A farm made of the real `greenlight` binary for end-to-end tests: a fixture git
//! repository, a master process with a TOML configuration, worker processes, and a small
//! API client. Every process is killed when the harness is dropped; every file lives in
//! a temporary directory.

#![allow(dead_code, reason = "each test binary uses a different part of the harness")]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use greenlight_fixtures::repo::FixtureRepo;
use greenlight_shared::api::{
    BuildDetail, BuildKind, BuildState, BuildSummary, BuildTests, ChangeView, ErrorBody, GateView, PushView,
    ShardState, TestResultView, WorkerView,
};
use greenlight_shared::suite::{SuiteFile, SuiteTest};

pub const TOKEN: &str = "e2e-token";

pub fn greenlight() -> &'static str {
    env!("CARGO_BIN_EXE_greenlight")
}

/// Runs `command` to its end: (exit code, or -1 for a signal; stdout; stderr).
pub fn outcome(command: &mut Command) -> (i32, String, String) {
    let output = command.output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A child process killed (and reaped) on drop.
pub struct Process {
    pub child: Child,
    pub name: String,
}

impl Process {
    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends `request` and checks it is refused with `status` and the error `code`, with a
/// JSON body naming the problem.
pub fn expect_error(request: reqwest::blocking::RequestBuilder, status: u16, code: &str) -> ErrorBody {
    let response = request.send().expect("the master answers");
    assert_eq!(response.status().as_u16(), status, "expected {status} {code}");
    let body: ErrorBody = response.json().expect("errors have a JSON body");
    assert_eq!(body.error, code, "{body:?}");
    assert!(!body.message.is_empty());
    body
}

/// A suite test.
pub fn test(id: &str, tags: &[&str], depends_on: &[&str], duration_s: f64) -> SuiteTest {
    SuiteTest {
        id: id.to_owned(),
        tags: tags.iter().map(|tag| (*tag).to_owned()).collect(),
        depends_on: depends_on.iter().map(|dep| (*dep).to_owned()).collect(),
        duration_s: Some(duration_s),
    }
}

/// Knobs of a harness farm.
pub struct FarmOptions {
    pub scale: f64,
    pub lease_timeout_s: f64,
    pub heartbeat_interval_s: f64,
    pub max_body_bytes: usize,
    pub poll_interval_s: f64,
    /// Extra lines of the `[suite]` table; the suite comes from `file` unless they say otherwise.
    pub suite_toml: String,
    /// Tables appended to the configuration (`[push]`, `[gate]`).
    pub extra_toml: String,
    /// Top-level keys (`admin_token = "..."`).
    pub top_toml: String,
    /// The master's data directory (a [`Tmpfs`] that fills); a fresh one when `None`.
    pub data_dir: Option<PathBuf>,
    /// The master's binary (the load bench runs an older build side by side); this build's
    /// `greenlight` when `None`.
    pub master_binary: Option<PathBuf>,
    /// Environment variables of the master (tokens its configuration takes from there).
    pub master_env: Vec<(String, String)>,
    /// How long an idle worker's long poll for work lasts (`greenlight worker --wait`).
    pub worker_wait_s: u32,
}

impl Default for FarmOptions {
    fn default() -> FarmOptions {
        FarmOptions {
            scale: 0.05,
            lease_timeout_s: 10.0,
            heartbeat_interval_s: 1.0,
            max_body_bytes: 8 * 1024 * 1024,
            poll_interval_s: 0.2,
            suite_toml: "file = \"greenlight-suite.json\"".to_owned(),
            extra_toml: String::new(),
            top_toml: String::new(),
            data_dir: None,
            master_binary: None,
            master_env: Vec::new(),
            worker_wait_s: 5,
        }
    }
}

pub struct Farm {
    pub config: PathBuf,
    pub dir: tempfile::TempDir,
    pub repo: FixtureRepo,
    pub url: String,
    pub master: Process,
    pub workers: Vec<Process>,
    /// The binary the master runs (restarts included).
    pub master_binary: PathBuf,
    /// The master's environment besides the test's (restarts included).
    pub master_env: Vec<(String, String)>,
    /// The workers' `--wait` (seconds).
    pub worker_wait_s: u32,
    http: reqwest::blocking::Client,
}

impl Farm {
    /// A repository holding `suite`, a master watching it, and `n_workers` workers.
    pub fn start(suite: &SuiteFile, n_workers: usize, options: FarmOptions) -> Farm {
        Farm::start_with_repo(suite, n_workers, options, |_| {})
    }

    /// As [`Farm::start`], with `prepare` adding commits to the repository before the
    /// master first looks at it.
    pub fn start_with_repo(
        suite: &SuiteFile,
        n_workers: usize,
        options: FarmOptions,
        prepare: impl FnOnce(&FixtureRepo),
    ) -> Farm {
        let dir = tempfile::Builder::new().prefix("greenlight-e2e-").tempdir().expect("temp dir");
        let repo_dir = dir.path().join("repo");
        std::fs::create_dir_all(&repo_dir).unwrap();
        let repo = FixtureRepo::create(&repo_dir, suite).expect("fixture repository");
        prepare(&repo);
        let config = dir.path().join("greenlight-master.toml");
        let mut areas: Vec<&str> =
            suite.tests.iter().filter_map(|test| test.tags.first().map(String::as_str)).collect();
        areas.sort_unstable();
        areas.dedup();
        let rules: String = areas.iter().map(|area| format!("\"src/{area}/**\" = [\"{area}\"]\n")).collect();
        std::fs::write(
            &config,
            format!(
                r#"data_dir = {data:?}
listen = "127.0.0.1:0"
worker_token = "{TOKEN}"
max_body_bytes = {max_body}
{top}

[repository]
url = {repo:?}
poll_interval_s = {poll}

[suite]
{suite_toml}
run_command = [{exe:?}, "fixture-run", "--ids-file", "{{ids_file}}", "--junit", "{{junit}}", "--scale", "{scale}"]

[tags.paths]
{rules}
[scheduler]
lease_timeout_s = {lease}
heartbeat_interval_s = {heartbeat}

{extra}
"#,
                data = options.data_dir.clone().unwrap_or_else(|| dir.path().join("master")).to_string_lossy(),
                repo = repo_dir.to_string_lossy(),
                exe = greenlight(),
                scale = options.scale,
                lease = options.lease_timeout_s,
                heartbeat = options.heartbeat_interval_s,
                max_body = options.max_body_bytes,
                poll = options.poll_interval_s,
                suite_toml = options.suite_toml,
                extra = options.extra_toml,
                top = options.top_toml,
            ),
        )
        .unwrap();
        let master_binary = options.master_binary.unwrap_or_else(|| PathBuf::from(greenlight()));
        let (master, url) = start_master_with_env(&master_binary, &config, dir.path(), &[], &options.master_env);
        let mut farm = Farm {
            config,
            dir,
            repo,
            url,
            master,
            workers: Vec::new(),
            master_binary,
            master_env: options.master_env,
            worker_wait_s: options.worker_wait_s,
            http: reqwest::blocking::Client::new(),
        };
        for index in 0..n_workers {
            farm.start_worker(&format!("worker-{index}"));
        }
        farm
    }

    /// SIGKILLs the master and starts it again on the same address and data directory.
    pub fn restart_master(&mut self) {
        self.master.kill();
        let address = self.url.trim_start_matches("http://").to_owned();
        let (master, url) = start_master_with_env(
            &self.master_binary,
            &self.config,
            self.dir.path(),
            &["--listen", &address],
            &self.master_env,
        );
        assert_eq!(url, self.url);
        self.master = master;
    }

    pub fn start_worker(&mut self, name: &str) {
        self.start_worker_with_token(name, TOKEN);
    }

    /// Starts a worker presenting `token` (its own, `[workers.NAME] token`); its log (appended
    /// to, so a restarted worker's follows the first one's) is `NAME.log`.
    pub fn start_worker_with_token(&mut self, name: &str, token: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))
            .unwrap();
        let child = Command::new(greenlight())
            .args(["worker", "--master", &self.url, "--token", token, "--name", name, "--wait"])
            .arg(self.worker_wait_s.to_string())
            .arg("--workdir")
            .arg(self.dir.path().join("workers").join(name))
            .env("GREENLIGHT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start a worker");
        self.workers.push(Process { child, name: name.to_owned() });
    }

    /// The body of a GET as text, with its content type.
    pub fn get_text(&self, path: &str) -> (String, String) {
        let response = self.http.get(format!("{}{path}", self.url)).send().expect("the master answers");
        assert!(response.status().is_success(), "GET {path}: {}", response.status());
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (content_type, response.text().expect("a text body"))
    }

    pub fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        let response = self.http.get(format!("{}{path}", self.url)).send().expect("the master answers");
        assert!(response.status().is_success(), "GET {path}: {}", response.status());
        response.json().expect("a JSON body")
    }

    /// POSTs JSON with an optional bearer token; (status, JSON body).
    pub fn post(&self, path: &str, body: &serde_json::Value, token: Option<&str>) -> (u16, serde_json::Value) {
        self.post_with(path, body, token, None)
    }

    /// POSTs JSON with an optional bearer token and, as a worker process does, an optional
    /// session (`greenlight-session`); (status, JSON body). A worker played by hand without
    /// a session is taken for an older worker.
    pub fn post_with(
        &self,
        path: &str,
        body: &serde_json::Value,
        token: Option<&str>,
        session: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let mut request = self.http.post(format!("{}{path}", self.url)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(session) = session {
            request = request.header(greenlight_shared::api::SESSION_HEADER, session);
        }
        let response = request.send().expect("the master answers");
        let status = response.status().as_u16();
        (status, response.json().unwrap_or(serde_json::Value::Null))
    }

    /// GETs with an optional bearer token; (status, JSON body).
    pub fn get_with(&self, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
        let mut request = self.http.get(format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().expect("the master answers");
        let status = response.status().as_u16();
        (status, response.json().unwrap_or(serde_json::Value::Null))
    }

    pub fn builds(&self) -> Vec<BuildSummary> {
        self.get("/api/v1/builds?limit=1000")
    }

    pub fn build(&self, build_id: u64) -> BuildDetail {
        self.get(&format!("/api/v1/builds/{build_id}"))
    }

    pub fn tests(&self, build_id: u64) -> BuildTests {
        self.get(&format!("/api/v1/builds/{build_id}/tests"))
    }

    pub fn gate(&self) -> GateView {
        self.get("/api/v1/gate")
    }

    pub fn pushes(&self) -> Vec<PushView> {
        self.get("/api/v1/pushes")
    }

    pub fn changes(&self) -> Vec<ChangeView> {
        self.get("/api/v1/changes?limit=1000")
    }

    /// Runs `greenlight gate` against this master with `args`; (exit code, stdout, stderr).
    pub fn gate_command(&self, args: &[&str]) -> (i32, String, String) {
        outcome(Command::new(greenlight()).args(["gate", "--master", &self.url]).args(args))
    }

    pub fn workers(&self) -> Vec<WorkerView> {
        self.get("/api/v1/workers")
    }

    /// Waits until `condition` holds of the builds, or panics after `timeout`.
    pub fn wait_for<T>(&self, what: &str, timeout: Duration, mut condition: impl FnMut(&Farm) -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = condition(self) {
                return value;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; logs in {}", self.dir.path().display());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for a shard of the running build to run; returns its lease id and test count.
    pub fn running_shard(&self) -> (u64, u32) {
        self.wait_for("a running shard", Duration::from_secs(120), |farm| {
            let build = farm.builds().into_iter().find(|build| build.state == BuildState::Running)?;
            let detail = farm.build(build.build_id);
            detail
                .shards
                .iter()
                .find(|shard| shard.state == ShardState::Running)
                .map(|shard| (shard.lease_id, shard.tests))
        })
    }

    /// The finished regular build of `revision` (a culprit probe may test it too).
    pub fn finished_build_of(&self, revision: &str) -> BuildSummary {
        self.wait_for(&format!("a finished build of {revision}"), Duration::from_secs(180), |farm| {
            farm.builds().into_iter().find(|build| {
                build.revision == revision && build.kind == BuildKind::Regular && build.state.is_finished()
            })
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Starts `greenlight master` and reads the address from its first line of output.
pub fn start_master(config: &Path, dir: &Path, extra: &[&str]) -> (Process, String) {
    start_master_of(Path::new(greenlight()), config, dir, extra)
}

/// As [`start_master`], running the master of `binary`.
pub fn start_master_of(binary: &Path, config: &Path, dir: &Path, extra: &[&str]) -> (Process, String) {
    start_master_with_env(binary, config, dir, extra, &[])
}

/// As [`start_master_of`], with `env` added to the master's environment.
pub fn start_master_with_env(
    binary: &Path,
    config: &Path,
    dir: &Path,
    extra: &[&str],
    env: &[(String, String)],
) -> (Process, String) {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("master.log")).unwrap();
    let mut child = Command::new(binary)
        .args(["master", "--config"])
        .arg(config)
        .args(extra)
        .env("GREENLIGHT_LOG", "info")
        .envs(env.iter().map(|(name, value)| (name, value)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("start the master");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("the master prints its address");
    let url = line.trim().rsplit(' ').next().unwrap_or_default().to_owned();
    if !url.starts_with("http://127.0.0.1:") {
        let _ = child.wait();
        let log = std::fs::read_to_string(dir.join("master.log")).unwrap_or_default();
        panic!("the master did not start (first line {line:?}):\n{log}");
    }
    (Process { child, name: "master".into() }, url)
}

pub fn workdir_of(farm: &Farm, name: &str) -> PathBuf {
    farm.dir().join("workers").join(name)
}

/// A build's results by test id, each test's attempts in order.
pub fn by_id(results: Vec<TestResultView>) -> BTreeMap<String, Vec<TestResultView>> {
    let mut by_id: BTreeMap<String, Vec<TestResultView>> = BTreeMap::new();
    for result in results {
        by_id.entry(result.test_id.clone()).or_default().push(result);
    }
    by_id
}

/// A small tmpfs mounted for one test: a disk that fills. Unmounted when dropped, even when
/// the test fails (declare it before the [`Farm`] whose master writes to it, so that the
/// master is killed first). Mounting needs root, as `.ci/run` runs: without it the test
/// fails saying so, never skips.
pub struct Tmpfs {
    mount_point: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount -o size=`, e.g. `8m`).
    pub fn mount(size: &str) -> Tmpfs {
        let mount_point = tempfile::Builder::new().prefix("greenlight-tmpfs-").tempdir().expect("temp dir");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"])
            .arg(mount_point.path())
            .output();
        match mounted {
            Ok(output) if output.status.success() => Tmpfs { mount_point },
            Ok(output) => panic!(
                "this test needs a small tmpfs it can fill, mounted as root (`mount -t tmpfs`; .ci/run runs as root): {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ),
            Err(error) => panic!("this test needs `mount` (util-linux) and root to mount a small tmpfs: {error}"),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.mount_point.path().to_owned()
    }

    /// Free bytes on the tmpfs.
    pub fn free_bytes(&self) -> u64 {
        let output = Command::new("df").args(["--output=avail", "-B1"]).arg(self.mount_point.path()).output().unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        text.lines().nth(1).and_then(|line| line.trim().parse().ok()).expect("df prints the free bytes")
    }

    /// Fills the disk with a ballast file, leaving about `leave` bytes free (0: full, writes
    /// fail with ENOSPC). Returns the ballast, for [`Tmpfs::empty`].
    pub fn fill(&self, leave: u64) -> PathBuf {
        use std::io::Write;
        let ballast = self.mount_point.path().join(format!("ballast-{}", std::process::id()));
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&ballast).unwrap();
        let chunk = vec![0u8; 1024 * 1024];
        loop {
            let free = self.free_bytes();
            if free <= leave {
                break;
            }
            let take = (free - leave).min(chunk.len() as u64) as usize;
            match file.write_all(&chunk[..take]).and_then(|()| file.sync_data()) {
                Ok(()) => {}
                Err(error) if error.raw_os_error() == Some(28) => break,
                Err(error) => panic!("filling the tmpfs: {error}"),
            }
        }
        ballast
    }

    /// Removes a ballast: the disk has room again.
    pub fn empty(&self, ballast: &Path) {
        std::fs::remove_file(ballast).expect("remove the ballast");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a process of a failed test may still hold a file on it.
        let _ = Command::new("umount").arg("-l").arg(self.mount_point.path()).status();
    }
}
