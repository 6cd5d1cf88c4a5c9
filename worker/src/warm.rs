//! The warm pytest runner: one long-lived `python -m pytest` per worker and revision that
//! collects once and then runs the shards it is fed, one after another, streaming one
//! record per test as it ends (the way pytest-xdist feeds its workers). Shards after the
//! first pay no interpreter start-up, imports or collection, and module, class and
//! session fixtures stay set up between them.
//!
//! The runner is pytest with the `greenlight_warm` plugin (`assets/greenlight_warm.py`,
//! embedded here and written to a private directory put on `PYTHONPATH`). Commands and
//! records travel over a socket pair whose child end the runner inherits, named by
//! `GREENLIGHT_WARM_FD`: never stdin or stdout, so tests that print (even under `-s`) or
//! read stdin cannot corrupt them. The protocol is described in the plugin's docstring.
//!
//! The runner runs in its own process group, dies with the worker, and is killed as a
//! group when dropped. A runner that dies mid-shard (a test calls `os._exit`, a signal)
//! is dead for good: [`WarmRunner::run`] names the test that was running and the caller
//! starts a new one.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use greenlight_shared::api::TestStatus;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::task::JoinHandle;

/// The plugin the runner loads with `-p greenlight_warm`.
const PLUGIN_SOURCE: &str = include_str!("../assets/greenlight_warm.py");
/// The plugin's module name.
const PLUGIN_MODULE: &str = "greenlight_warm";
/// The environment variable naming the runner's end of the channel.
const FD_VARIABLE: &str = "GREENLIGHT_WARM_FD";
/// The protocol version this driver speaks.
const PROTOCOL_VERSION: u32 = 1;
/// How much of the runner's own output (stdout and stderr) is kept for error messages.
const OUTPUT_TAIL_BYTES: usize = 16 * 1024;
/// How long a dead runner's output pipes are drained before its error is written.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// One test's result, as the runner reported it when the test ended.
#[derive(Debug, Clone, PartialEq)]
pub struct WarmRecord {
    /// The pytest node id, as it was fed.
    pub test: String,
    /// The outcome, decided as pytest's JUnit report decides it.
    pub status: TestStatus,
    /// Setup, call and teardown, in seconds.
    pub duration_s: f64,
    /// For failures, errors and skips: the report and captured output (`[xfail] reason`,
    /// `[skipped] reason` for skips); `None` for a pass.
    pub output: Option<String>,
}

/// A collection error the runner met (its module's tests are not collected).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CollectionError {
    /// The collector's node id (usually a file).
    pub node: String,
    /// pytest's report.
    pub output: String,
}

/// A failure tearing down collectors (modules, classes, the session) between shards or at
/// shutdown. A plain pytest run pins it on the last test before the teardown; that test's
/// record was already sent.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TeardownError {
    /// The node ids of the collectors torn down.
    pub nodes: Vec<String>,
    /// The exception, formatted.
    pub output: String,
}

/// What a shard ended with, beyond its tests' records.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShardEnd {
    /// Collectors the previous shard left set up that failed to tear down.
    pub teardown_errors: Vec<TeardownError>,
}

/// Why a warm runner could not start, run a shard or shut down.
#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    /// The plugin directory or the channel could not be made.
    #[error("cannot prepare the warm runner: {0}")]
    Prepare(io::Error),
    /// The interpreter could not be started.
    #[error("cannot start {program}: {source}")]
    Start {
        /// The interpreter.
        program: String,
        /// The error.
        source: io::Error,
    },
    /// pytest ended before it was ready (a usage error, a conftest that does not import).
    #[error("pytest exited with {status} before it had collected: {output}")]
    Collection {
        /// How it ended.
        status: String,
        /// The tail of its output.
        output: String,
    },
    /// The runner died while running a shard; it cannot be used again.
    #[error("the warm runner died ({status}) {during}: {output}")]
    Died {
        /// The test it was running, if one had started and not ended.
        test: Option<String>,
        /// Where it died, for humans: `while running "<id>"` or `between tests`.
        during: String,
        /// How it ended.
        status: String,
        /// The code it exited with, when it exited by itself (a test called `os._exit`);
        /// `None` when a signal killed it (a crash, the OOM killer) or it had to be killed.
        exit_code: Option<i32>,
        /// The tail of its output.
        output: String,
    },
    /// The runner sent a line that is not a record of the protocol.
    #[error("malformed record from the warm runner: {reason}: {line:?}")]
    Malformed {
        /// The line, as received.
        line: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The runner speaks another version of the protocol.
    #[error("the warm runner speaks protocol {found}, this worker {PROTOCOL_VERSION}")]
    Version {
        /// The version it announced.
        found: u32,
    },
    /// Reading or writing the channel failed.
    #[error("the warm runner's channel failed: {0}")]
    Channel(io::Error),
    /// An earlier error left this runner unusable.
    #[error("the warm runner is dead; start a new one")]
    Dead,
    /// The runner did not finish its teardown within the time given.
    #[error("the warm runner did not tear down within {0:?}; its process group was killed")]
    ShutdownTimeout(Duration),
}

/// A message from the runner (the wire is the plugin's; see its docstring).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Message {
    Ready {
        version: u32,
        collected: Vec<String>,
        #[serde(default)]
        errors: Vec<CollectionError>,
        #[serde(default)]
        skipped_files: Vec<String>,
    },
    Start {
        test: String,
    },
    Test {
        test: String,
        outcome: TestStatus,
        duration_s: f64,
        #[serde(default)]
        output: String,
    },
    TeardownError {
        nodes: Vec<String>,
        output: String,
    },
    Done,
    Bye,
}

/// A command to the runner.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Command<'a> {
    Run {
        tests: &'a [String],
        /// The test the shard goes on with after these; `None`: the shard ends with them.
        next: Option<&'a str>,
    },
    Exit,
}

fn parse_message(line: &str) -> Result<Message, WarmError> {
    serde_json::from_str(line)
        .map_err(|error| WarmError::Malformed { line: line.to_owned(), reason: error.to_string() })
}

impl From<Message> for Option<WarmRecord> {
    fn from(message: Message) -> Option<WarmRecord> {
        match message {
            Message::Test { test, outcome, duration_s, output } => {
                Some(WarmRecord { test, status: outcome, duration_s, output: (!output.is_empty()).then_some(output) })
            }
            _ => None,
        }
    }
}

/// The last bytes the runner wrote to its stdout and stderr.
#[derive(Debug, Clone, Default)]
struct OutputTail(Arc<Mutex<Vec<u8>>>);

impl OutputTail {
    fn push(&self, bytes: &[u8]) {
        let mut tail = self.0.lock().expect("the output tail is never poisoned");
        tail.extend_from_slice(bytes);
        if tail.len() > OUTPUT_TAIL_BYTES {
            let excess = tail.len() - OUTPUT_TAIL_BYTES;
            tail.drain(..excess);
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("the output tail is never poisoned")).into_owned()
    }

    fn drain(&self, mut pipe: impl AsyncRead + Unpin + Send + 'static) -> JoinHandle<()> {
        let tail = self.clone();
        tokio::spawn(async move {
            let mut buffer = [0u8; 8192];
            while let Ok(read) = pipe.read(&mut buffer).await {
                if read == 0 {
                    break;
                }
                tail.push(&buffer[..read]);
            }
        })
    }
}

/// A running warm pytest: collected, waiting for shards.
#[derive(Debug)]
pub struct WarmRunner {
    child: tokio::process::Child,
    pid: u32,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    collected: Vec<String>,
    collection_errors: Vec<CollectionError>,
    skipped_files: Vec<String>,
    output: OutputTail,
    drains: Vec<JoinHandle<()>>,
    dead: bool,
    /// When it had collected and was ready for its first test.
    ready_at: Instant,
    /// Holds the plugin; removed with the runner.
    _plugin_dir: tempfile::TempDir,
}

impl WarmRunner {
    /// Starts `python -m pytest -p greenlight_warm ARGS` in `checkout` with `env` added,
    /// and returns once it has collected. `args` are the whole pytest argument list
    /// (options and paths to collect). There is no timeout here: wrap the call in one;
    /// dropping the future kills the runner.
    pub async fn start(
        python: &str,
        args: &[String],
        checkout: &Path,
        env: &[(String, String)],
    ) -> Result<WarmRunner, WarmError> {
        let plugin_dir = tempfile::Builder::new().prefix("greenlight-warm-").tempdir().map_err(WarmError::Prepare)?;
        std::fs::write(plugin_dir.path().join(format!("{PLUGIN_MODULE}.py")), PLUGIN_SOURCE)
            .map_err(WarmError::Prepare)?;
        let inherited_path = env
            .iter()
            .rev()
            .find(|(key, _)| key == "PYTHONPATH")
            .map(|(_, value)| value.clone())
            .or_else(|| std::env::var("PYTHONPATH").ok())
            .filter(|value| !value.is_empty());
        let python_path = match inherited_path {
            Some(rest) => format!("{}:{rest}", plugin_dir.path().display()),
            None => plugin_dir.path().display().to_string(),
        };

        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(WarmError::Prepare)?;
        ours.set_nonblocking(true).map_err(WarmError::Prepare)?;
        let ours = UnixStream::from_std(ours).map_err(WarmError::Prepare)?;
        let theirs = OwnedFd::from(theirs);
        let their_fd = theirs.as_raw_fd();

        let mut command = tokio::process::Command::new(python);
        command
            .args(["-m", "pytest", "-p", PLUGIN_MODULE])
            .args(args)
            .current_dir(checkout)
            .envs(env.iter().map(|(key, value)| (key, value)))
            .env("PYTHONPATH", python_path)
            .env(FD_VARIABLE, their_fd.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        crate::process::die_with_parent(&mut command);
        inherit_fd(&mut command, their_fd);
        let mut child = command.spawn().map_err(|source| WarmError::Start { program: python.to_owned(), source })?;
        // Only the runner holds its end now: its death closes the channel.
        drop(theirs);
        let pid = child.id().unwrap_or_default();

        let output = OutputTail::default();
        let mut drains = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            drains.push(output.drain(stdout));
        }
        if let Some(stderr) = child.stderr.take() {
            drains.push(output.drain(stderr));
        }
        let (read_half, writer) = ours.into_split();
        let mut runner = WarmRunner {
            child,
            pid,
            reader: BufReader::new(read_half),
            writer,
            collected: Vec::new(),
            collection_errors: Vec::new(),
            skipped_files: Vec::new(),
            output,
            drains,
            dead: false,
            ready_at: Instant::now(),
            _plugin_dir: plugin_dir,
        };
        tracing::debug!(pid, "warm runner started, collecting");
        match runner.receive().await {
            Ok(Some(Message::Ready { version, collected, errors, skipped_files })) => {
                if version != PROTOCOL_VERSION {
                    runner.kill().await;
                    return Err(WarmError::Version { found: version });
                }
                runner.collected = collected;
                runner.collection_errors = errors;
                runner.skipped_files = skipped_files;
                runner.ready_at = Instant::now();
                tracing::info!(pid, collected = runner.collected.len(), "warm runner ready");
                Ok(runner)
            }
            Ok(None) => {
                let (status, _, output) = runner.ended().await;
                Err(WarmError::Collection { status, output })
            }
            Ok(Some(other)) => {
                runner.kill().await;
                Err(WarmError::Malformed { line: format!("{other:?}"), reason: "expected the ready record".into() })
            }
            Err(error) => {
                runner.kill().await;
                Err(error)
            }
        }
    }

    /// The runner's process id (it leads its process group).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// When it had collected: a test's wall time never reaches back past it.
    pub fn ready_at(&self) -> Instant {
        self.ready_at
    }

    /// The node ids it collected, in collection order.
    pub fn collected(&self) -> &[String] {
        &self.collected
    }

    /// The collection errors it met.
    pub fn collection_errors(&self) -> &[CollectionError] {
        &self.collection_errors
    }

    /// The test files skipped at collection (they are not among [`WarmRunner::collected`]).
    pub fn skipped_files(&self) -> &[String] {
        &self.skipped_files
    }

    /// Runs `tests` (node ids, in this order), calling `on_record` with each test's record
    /// as it ends, and returns when the last has ended. `next` is the test the shard goes
    /// on with (its module stays set up if the last of `tests` shares it); `None` ends the
    /// shard: everything but the session is torn down after the last test, so a module or
    /// class fixture failing to tear down is that test's error, as in a plain pytest run.
    /// On an error the runner is dead (killed) and every later call fails with
    /// [`WarmError::Dead`]; the records received before it were already given to
    /// `on_record`.
    pub async fn run(
        &mut self,
        tests: &[String],
        next: Option<&str>,
        mut on_record: impl FnMut(WarmRecord),
    ) -> Result<ShardEnd, WarmError> {
        if self.dead {
            return Err(WarmError::Dead);
        }
        let result = self.run_inner(tests, next, &mut on_record).await;
        if result.is_err() && !self.dead {
            self.kill().await;
        }
        result
    }

    async fn run_inner(
        &mut self,
        tests: &[String],
        next: Option<&str>,
        on_record: &mut impl FnMut(WarmRecord),
    ) -> Result<ShardEnd, WarmError> {
        self.send(&Command::Run { tests, next }).await?;
        let mut end = ShardEnd::default();
        let mut running: Option<String> = None;
        loop {
            match self.receive().await? {
                Some(Message::Start { test }) => running = Some(test),
                Some(message @ Message::Test { .. }) => {
                    running = None;
                    if let Some(record) = Option::<WarmRecord>::from(message) {
                        on_record(record);
                    }
                }
                Some(Message::TeardownError { nodes, output }) => {
                    end.teardown_errors.push(TeardownError { nodes, output })
                }
                Some(Message::Done) => return Ok(end),
                Some(other @ (Message::Ready { .. } | Message::Bye)) => {
                    return Err(WarmError::Malformed {
                        line: format!("{other:?}"),
                        reason: "not expected while a shard runs".into(),
                    });
                }
                None => {
                    let (status, exit_code, output) = self.ended().await;
                    let during = match &running {
                        Some(test) => format!("while running {test:?}"),
                        None => "between tests".to_owned(),
                    };
                    return Err(WarmError::Died { test: running, during, status, exit_code, output });
                }
            }
        }
    }

    /// Asks the runner to tear every fixture down and exit, waits up to `timeout` for it,
    /// then kills its process group (whatever the tests left running dies with it).
    pub async fn shutdown(mut self, timeout: Duration) -> Result<Vec<TeardownError>, WarmError> {
        if self.dead {
            return Err(WarmError::Dead);
        }
        let result = tokio::time::timeout(timeout, self.shutdown_inner()).await;
        self.kill().await;
        match result {
            Ok(result) => result,
            Err(_) => Err(WarmError::ShutdownTimeout(timeout)),
        }
    }

    async fn shutdown_inner(&mut self) -> Result<Vec<TeardownError>, WarmError> {
        self.send(&Command::Exit).await?;
        let mut errors = Vec::new();
        loop {
            match self.receive().await? {
                Some(Message::TeardownError { nodes, output }) => errors.push(TeardownError { nodes, output }),
                Some(Message::Bye) => break,
                Some(other) => {
                    return Err(WarmError::Malformed {
                        line: format!("{other:?}"),
                        reason: "not expected while shutting down".into(),
                    });
                }
                None => {
                    let (status, exit_code, output) = self.ended().await;
                    return Err(WarmError::Died {
                        test: None,
                        during: "while tearing down".into(),
                        status,
                        exit_code,
                        output,
                    });
                }
            }
        }
        // pytest finishes its session (summary, plugins' hooks) and exits.
        self.child.wait().await.map_err(WarmError::Channel)?;
        Ok(errors)
    }

    async fn send(&mut self, command: &Command<'_>) -> Result<(), WarmError> {
        let mut line = serde_json::to_vec(command).expect("commands always serialize");
        line.push(b'\n');
        // A runner that died has closed its end: reading tells why, so a failed write
        // is left to the next read.
        if let Err(error) = self.writer.write_all(&line).await {
            tracing::debug!(pid = self.pid, %error, "cannot write to the warm runner");
        }
        Ok(())
    }

    /// The next message, or `None` when the runner closed the channel.
    async fn receive(&mut self) -> Result<Option<Message>, WarmError> {
        let mut line = String::new();
        let read = self.reader.read_line(&mut line).await.map_err(WarmError::Channel)?;
        if read == 0 {
            return Ok(None);
        }
        parse_message(line.trim_end_matches('\n')).map(Some)
    }

    /// After the channel closed: how the runner ended and the tail of its output. Kills
    /// its group if it does not end by itself.
    async fn ended(&mut self) -> (String, Option<i32>, String) {
        let (status, exit_code) = match tokio::time::timeout(DRAIN_GRACE, self.child.wait()).await {
            Ok(Ok(status)) => (status.to_string(), status.code()),
            Ok(Err(error)) => (format!("unknown status ({error})"), None),
            Err(_) => ("no exit after closing its channel".to_owned(), None),
        };
        self.kill().await;
        for drain in &mut self.drains {
            let _ = tokio::time::timeout(DRAIN_GRACE, drain).await;
        }
        (status, exit_code, self.output.text())
    }

    async fn kill(&mut self) {
        self.dead = true;
        crate::process::kill_group(&mut self.child).await;
    }
}

impl Drop for WarmRunner {
    fn drop(&mut self) {
        if !self.dead {
            kill_group_now(self.pid);
        }
        for drain in &self.drains {
            drain.abort();
        }
    }
}

/// SIGKILLs the process group `pid` leads, without waiting (the child itself is reaped by
/// tokio, as `kill_on_drop` asks).
fn kill_group_now(pid: u32) {
    if let Ok(pid) = i32::try_from(pid)
        && pid > 0
    {
        #[expect(unsafe_code, reason = "kill(2) on a process group this worker started; no memory is touched")]
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

/// Lets the child keep `fd` across exec (the socket pair is made close-on-exec).
fn inherit_fd(command: &mut tokio::process::Command, fd: i32) {
    #[expect(unsafe_code, reason = "pre_exec runs between fork and exec; fcntl is async-signal-safe")]
    unsafe {
        command.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(line: &str, expected: Result<Message, &str>) {
        match (parse_message(line), expected) {
            (Ok(message), Ok(expected)) => assert_eq!(message, expected, "{line}"),
            (Err(error), Err(needle)) => {
                let text = error.to_string();
                assert!(text.contains(needle) && text.contains("malformed record"), "{line}: {text}");
            }
            (got, expected) => panic!("{line}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn records_are_read_and_malformed_lines_are_errors_naming_them() {
        check(
            r#"{"kind":"ready","version":1,"collected":["a.py::t"],"errors":[{"node":"b.py","output":"boom"}]}"#,
            Ok(Message::Ready {
                version: 1,
                collected: vec!["a.py::t".into()],
                errors: vec![CollectionError { node: "b.py".into(), output: "boom".into() }],
                skipped_files: Vec::new(),
            }),
        );
        check(
            r#"{"kind":"ready","version":1,"collected":[],"skipped_files":["c.py"]}"#,
            Ok(Message::Ready {
                version: 1,
                collected: Vec::new(),
                errors: Vec::new(),
                skipped_files: vec!["c.py".into()],
            }),
        );
        check(
            r#"{"kind":"test","test":"a.py::t","outcome":"error","duration_s":0.5,"output":"not collected"}"#,
            Ok(Message::Test {
                test: "a.py::t".into(),
                outcome: TestStatus::Error,
                duration_s: 0.5,
                output: "not collected".into(),
            }),
        );
        check(r#"{"kind":"done"}"#, Ok(Message::Done));
        check(
            r#"{"kind":"teardown_error","nodes":["a.py"],"output":"x"}"#,
            Ok(Message::TeardownError { nodes: vec!["a.py".into()], output: "x".into() }),
        );
        check("hello from a test", Err("hello from a test"));
        check(r#"{"kind":"test","test":"a.py::t","outcome":"exploded","duration_s":1}"#, Err("exploded"));
        check(r#"{"kind":"launch"}"#, Err("launch"));
    }

    #[test]
    fn a_pass_has_no_output_and_other_outcomes_keep_theirs() {
        let record = |outcome, output: &str| {
            Option::<WarmRecord>::from(Message::Test {
                test: "t".into(),
                outcome,
                duration_s: 1.0,
                output: output.into(),
            })
        };
        assert_eq!(record(TestStatus::Passed, "").and_then(|record| record.output), None);
        assert_eq!(
            record(TestStatus::Skipped, "[xfail] known").and_then(|record| record.output).as_deref(),
            Some("[xfail] known")
        );
        assert_eq!(Option::<WarmRecord>::from(Message::Done), None);
    }

    #[test]
    fn commands_are_one_json_line_each() {
        let tests = vec!["a.py::t".to_owned()];
        assert_eq!(
            serde_json::to_string(&Command::Run { tests: &tests, next: Some("b.py::t") }).unwrap(),
            r#"{"kind":"run","tests":["a.py::t"],"next":"b.py::t"}"#
        );
        assert_eq!(
            serde_json::to_string(&Command::Run { tests: &tests, next: None }).unwrap(),
            r#"{"kind":"run","tests":["a.py::t"],"next":null}"#
        );
        assert_eq!(serde_json::to_string(&Command::Exit).unwrap(), r#"{"kind":"exit"}"#);
    }
}
