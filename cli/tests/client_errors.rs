//! What the client commands (`greenlight gate`, `submit`, `history import`, `worker`) say
//! when the master's URL is wrong, with real local listeners: a URL without a scheme, a
//! port nobody listens on (connection refused), a server that answers 404 (a base URL that
//! is not the master's root: a path too many, or something else at that port). Each
//! message names the URL and the fix. Worker logs carry no colour codes in a file, and
//! come as JSON lines with `--log-format json`.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Farm, FarmOptions, Process, test};
use greenlight_shared::suite::SuiteFile;

/// A server on 127.0.0.1 that answers every request `404 Not Found` in plain text, as a
/// web server or a proxy with nothing at that path does. Stopped when dropped.
struct NotFoundServer {
    url: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NotFoundServer {
    fn start() -> NotFoundServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                // The whole request, head and body, so that closing the connection resets nothing.
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|read| read == 1) {
                    head.push(byte[0]);
                }
                let length = String::from_utf8_lossy(&head)
                    .lines()
                    .find_map(|line| {
                        let (name, value) = line.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse::<u64>().ok())?
                    })
                    .unwrap_or(0);
                let _ = std::io::copy(&mut (&mut stream).take(length), &mut std::io::sink());
                let body = "Not Found";
                let _ = write!(
                    stream,
                    "HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        NotFoundServer { url, stop, thread: Some(thread) }
    }
}

impl Drop for NotFoundServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop up so that it sees the flag.
        let _ = TcpStream::connect(self.url.trim_start_matches("http://"));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A URL at which nothing listens: a port bound and let go.
fn refusing_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

/// Runs `greenlight ARGS`; (exit code, stdout, stderr).
fn run(args: &[&str]) -> (i32, String, String) {
    common::outcome(
        Command::new(common::greenlight())
            .args(args)
            .env_remove("GREENLIGHT_MASTER")
            .env_remove("GREENLIGHT_LOG_FORMAT")
            .stdin(Stdio::null()),
    )
}

fn refused(url: &str) -> String {
    format!("cannot connect to {url}: connection refused (is the master running, and listening at that address?)")
}

fn not_found(base: &str, url: &str, root: Option<&str>) -> String {
    let perhaps = root.map(|root| format!(" (perhaps {root})")).unwrap_or_default();
    format!(
        "{url} answered 404 Not Found: is {base} the master's root URL? Give the address `greenlight master` \
         prints, http://HOST:PORT without a path{perhaps}"
    )
}

#[test]
fn gate_submit_and_history_say_what_is_wrong_with_the_url_and_how_to_fix_it() {
    let down = refusing_url();
    let server = NotFoundServer::start();
    let wrong_path = format!("{}/greenlight", server.url);
    let report = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(report.path(), r#"<testsuite name="s"><testcase classname="a" name="t" time="1.5"/></testsuite>"#)
        .unwrap();
    let report = report.path().to_str().unwrap();

    // No scheme: reqwest alone says "builder error".
    let (code, stdout, stderr) = run(&["gate", "--master", "127.0.0.1:8080"]);
    assert_eq!(
        (code, stdout.as_str(), stderr.as_str()),
        (
            2,
            "",
            "greenlight gate: cannot ask the master: the master URL 127.0.0.1:8080 has no scheme: write it \
             http://127.0.0.1:8080\n"
        )
    );
    let (code, _, stderr) = run(&["submit", "--master", "localhost:8080"]);
    assert_eq!(
        (code, stderr.as_str()),
        (1, "error: the master URL localhost:8080 has no scheme: write it http://localhost:8080\n")
    );
    let (code, _, stderr) = run(&["history", "import", "--master", "ftp://127.0.0.1:8080", "--token", "t", report]);
    assert_eq!(
        (code, stderr.as_str()),
        (1, "error: the master URL ftp://127.0.0.1:8080 must start with http:// or https://, not ftp://\n")
    );

    // Nothing listening.
    let (code, _, stderr) = run(&["gate", "--master", &down]);
    assert_eq!(
        (code, stderr),
        (2, format!("greenlight gate: cannot ask the master: {}\n", refused(&format!("{down}/api/v1/gate"))))
    );
    let (code, _, stderr) = run(&["submit", "--master", &down]);
    assert_eq!((code, stderr), (1, format!("error: {}\n", refused(&format!("{down}/api/v1/changes")))));
    let (code, _, stderr) = run(&["history", "import", "--master", &down, "--token", "t", report]);
    assert_eq!(
        (code, stderr),
        (1, format!("error: {}; nothing was imported\n", refused(&format!("{down}/api/v1/admin/history/import"))))
    );

    // A 404 from a path too many.
    let (code, _, stderr) = run(&["gate", "--master", &wrong_path]);
    let expected = not_found(&wrong_path, &format!("{wrong_path}/api/v1/gate"), Some(&server.url));
    assert_eq!((code, stderr), (2, format!("greenlight gate: cannot ask the master: {expected}\n")));
    let (code, _, stderr) = run(&["submit", "--master", &wrong_path]);
    let expected = not_found(&wrong_path, &format!("{wrong_path}/api/v1/changes"), Some(&server.url));
    assert_eq!((code, stderr), (1, format!("error: {expected}\n")));
    let (code, _, stderr) = run(&["history", "import", "--master", &wrong_path, "--token", "t", report]);
    let expected = not_found(&wrong_path, &format!("{wrong_path}/api/v1/admin/history/import"), Some(&server.url));
    assert_eq!((code, stderr), (1, format!("error: {expected}; nothing was imported\n")));
}

#[test]
fn a_real_master_at_a_wrong_path_says_so_and_a_worker_stops_at_once() {
    let suite =
        SuiteFile { name: "urls".into(), shard_overhead_s: 0.0, tests: vec![test("a/test_a.py::t", &[], &[], 1.0)] };
    let farm = Farm::start(&suite, 0, FarmOptions::default());
    let wrong_path = format!("{}/api", farm.url);
    let (code, _, stderr) = run(&["gate", "--master", &wrong_path]);
    let expected = not_found(&wrong_path, &format!("{wrong_path}/api/v1/gate"), Some(&farm.url));
    assert_eq!((code, stderr), (2, format!("greenlight gate: cannot ask the master: {expected}\n")));

    // A worker pointed there stops at once, saying why, rather than retrying for ever.
    let workdir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = run(&[
        "worker",
        "--master",
        &wrong_path,
        "--token",
        common::TOKEN,
        "--name",
        "w",
        "--workdir",
        workdir.path().to_str().unwrap(),
    ]);
    let expected = not_found(&wrong_path, &format!("{wrong_path}/api/v1/workers/register"), Some(&farm.url));
    assert_eq!((code, stderr), (1, format!("error: {expected}\n")));
}

/// Starts a worker against `master` with `extra` arguments, its standard error in `log`.
fn start_worker(master: &str, workdir: &Path, log: &Path, extra: &[&str]) -> Process {
    let child = Command::new(common::greenlight())
        .args(["worker", "--master", master, "--name", "w", "--workdir"])
        .arg(workdir)
        .args(extra)
        .env("GREENLIGHT_LOG", "info")
        .env_remove("GREENLIGHT_LOG_FORMAT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    Process { child, name: "worker".into() }
}

/// Waits until `log` holds a line with `needle`; the whole log.
fn wait_for_line(log: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.lines().any(|line| line.contains(needle)) {
            return text;
        }
        assert!(Instant::now() < deadline, "no line with {needle:?} in:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_worker_says_where_it_cannot_connect_and_its_log_has_no_colour_codes_or_is_json() {
    let dir = tempfile::tempdir().unwrap();
    let down = refusing_url();
    let register = format!("{down}/api/v1/workers/register");

    // No scheme: it stops at once.
    let (code, _, stderr) = run(&["worker", "--master", "127.0.0.1:8080", "--name", "w", "--workdir", "/nonexistent"]);
    assert_eq!(
        (code, stderr.as_str()),
        (1, "error: the master URL 127.0.0.1:8080 has no scheme: write it http://127.0.0.1:8080\n")
    );

    // Nothing listening: it keeps asking (the master may be starting), saying where.
    let log = dir.path().join("worker.log");
    let mut worker = start_worker(&down, &dir.path().join("w"), &log, &[]);
    let text = wait_for_line(&log, "cannot register yet; retrying");
    worker.kill();
    let line = text.lines().find(|line| line.contains("cannot register yet")).unwrap();
    assert!(line.contains(" WARN "), "{line}");
    assert!(line.ends_with(&format!("cannot register yet; retrying error={}", refused(&register))), "{line}");
    assert!(!text.contains('\x1b'), "colour codes in a log file: {text:?}");

    // The same as JSON lines, for log shippers.
    let log = dir.path().join("worker.json");
    let mut worker = start_worker(&down, &dir.path().join("w"), &log, &["--log-format", "json"]);
    let text = wait_for_line(&log, "cannot register yet");
    worker.kill();
    let events: Vec<serde_json::Value> = text
        .lines()
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line:?}")))
        .collect();
    let warning = events.iter().find(|event| event["fields"]["message"] == "cannot register yet; retrying").unwrap();
    assert_eq!(warning["level"], "WARN");
    assert_eq!(warning["fields"]["error"], refused(&register).as_str());
}
