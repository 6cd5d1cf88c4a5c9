//! A small WebDriver client for the browser tests: Debian's `chromedriver` driving
//! `chromium` headless, spoken to as plain JSON over HTTP with the reqwest client the
//! tests already use (no WebDriver crate to compile). The driver runs in its own process
//! group; dropping the [`Browser`] ends the session and kills that group, so chromedriver
//! and every Chromium process it started go away, also when a test fails.

#![allow(dead_code, reason = "the browser test and the page bench use different parts")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const INSTALL: &str = "the browser tests need Debian's Chromium and its WebDriver: \
    run `apt-get update && apt-get install -y chromium chromium-driver` as root (.ci/run does)";

/// Where screenshots and other artefacts of the browser tests go: `target/browser-artifacts`.
pub fn artifacts_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("target dir").join("browser-artifacts");
    std::fs::create_dir_all(&dir).expect("create target/browser-artifacts");
    dir
}

/// A headless Chromium under chromedriver, with one WebDriver session.
pub struct Browser {
    http: reqwest::blocking::Client,
    base: String,
    session: Option<String>,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile, `width` x `height`.
    /// Panics with how to install them when either is missing.
    pub fn start(width: u32, height: u32) -> Browser {
        for program in [CHROMIUM, CHROMEDRIVER] {
            assert!(Path::new(program).exists(), "{program} not found: {INSTALL}");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = std::fs::File::create(artifacts_dir().join(format!("chromedriver-{port}.log"))).unwrap();
        let driver = {
            use std::os::unix::process::CommandExt;
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .process_group(0)
                .spawn()
                .unwrap_or_else(|error| panic!("cannot start {CHROMEDRIVER}: {error}; {INSTALL}"))
        };
        let profile = tempfile::Builder::new().prefix("greenlight-chromium-").tempdir().unwrap();
        let mut browser = Browser {
            http: reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().unwrap(),
            base: format!("http://127.0.0.1:{port}"),
            session: None,
            driver,
            _profile: profile,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = browser
                .http
                .get(format!("{}/status", browser.base))
                .send()
                .ok()
                .and_then(|response| response.json::<Value>().ok())
                .is_some_and(|status| status["value"]["ready"] == true);
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not come up on port {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            &format!("--window-size={width},{height}"),
            &format!("--user-data-dir={}", browser._profile.path().display()),
        ];
        let created = browser.call(
            "POST",
            "/session",
            json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
            }}}),
        );
        browser.session = Some(created["sessionId"].as_str().expect("a session id").to_owned());
        browser
    }

    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let request = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body),
        };
        let response = request.send().unwrap_or_else(|error| panic!("chromedriver {method} {path}: {error}"));
        let status = response.status();
        let answer: Value = response.json().unwrap_or(Value::Null);
        assert!(status.is_success(), "chromedriver {method} {path}: {status} {answer}");
        answer["value"].clone()
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session.as_deref().expect("a session"))
    }

    /// Loads `url` and waits for it.
    pub fn goto(&self, url: &str) {
        self.call("POST", &self.session_path("/url"), json!({"url": url}));
    }

    /// Runs `body` as a function in the page and returns what it returns.
    pub fn eval(&self, body: &str) -> Value {
        self.call("POST", &self.session_path("/execute/sync"), json!({"script": body, "args": []}))
    }

    /// Runs `body` as an async function (awaiting its promise) and returns its value.
    pub fn eval_async(&self, body: &str) -> Value {
        let script = format!(
            "const done = arguments[arguments.length - 1]; (async () => {{ {body} }})().then(done, e => done('error: ' + e));"
        );
        self.call("POST", &self.session_path("/execute/async"), json!({"script": script, "args": []}))
    }

    /// Polls `body` until it returns something truthy (not null, false, 0 or ""), which
    /// it returns; panics after `timeout`, with a screenshot named after `what`.
    pub fn wait_for(&self, what: &str, timeout: Duration, body: &str) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.eval(body);
            let truthy = match &value {
                Value::Null | Value::Bool(false) => false,
                Value::Number(number) => number.as_f64() != Some(0.0),
                Value::String(text) => !text.is_empty(),
                _ => true,
            };
            if truthy {
                return value;
            }
            if Instant::now() >= deadline {
                let name = format!("timeout-{}", what.replace(|c: char| !c.is_ascii_alphanumeric(), "-"));
                self.screenshot(&name);
                let text = self.eval("return document.body.innerText.slice(0, 3000);");
                panic!("timed out waiting for {what}; screenshot {name}.png; the page says:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Saves a PNG of the viewport as `target/browser-artifacts/{name}.png`.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let encoded = self.call("GET", &self.session_path("/screenshot"), Value::Null);
        let png = decode_base64(encoded.as_str().expect("a base64 screenshot"));
        let path = artifacts_dir().join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let _ =
                self.http.delete(format!("{}/session/{session}", self.base)).timeout(Duration::from_secs(10)).send();
        }
        // chromedriver leads its own process group, which holds the browser it started.
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.driver.id())]).status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Standard base64 (with padding), as WebDriver sends screenshots.
fn decode_base64(text: &str) -> Vec<u8> {
    let value = |byte: u8| -> u32 {
        match byte {
            b'A'..=b'Z' => u32::from(byte - b'A'),
            b'a'..=b'z' => u32::from(byte - b'a') + 26,
            b'0'..=b'9' => u32::from(byte - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            other => panic!("not base64: {other:?}"),
        }
    };
    let bytes: Vec<u8> = text.bytes().filter(|byte| !byte.is_ascii_whitespace() && *byte != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut word = 0u32;
        for (index, &byte) in chunk.iter().enumerate() {
            word |= value(byte) << (18 - 6 * index);
        }
        let produced = chunk.len() * 6 / 8;
        for index in 0..produced {
            out.push((word >> (16 - 8 * index)) as u8);
        }
    }
    out
}

#[test]
fn base64_decodes_what_webdriver_sends() {
    assert_eq!(decode_base64("aGVsbG8="), b"hello");
    assert_eq!(decode_base64("aGk="), b"hi");
    assert_eq!(decode_base64("YWJj"), b"abc");
}
