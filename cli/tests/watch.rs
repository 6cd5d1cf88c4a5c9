//! `greenlight watch` against real builds of a real master and workers: without a
//! terminal it prints plain lines (the build, its progress with the scheduler's ETA, each
//! final failure once with its worker, the verdict, the gate and the page) and exits 0 on
//! green, 1 on red, 2 for a build that does not exist or a master that stays unreachable;
//! it waits through a master restart. Under tmux (a real terminal) it draws a progress
//! bar that ends full above the verdict.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use common::{Farm, FarmOptions, Process, greenlight, outcome, test};
use greenlight_shared::api::{BuildState, BuildSummary};
use greenlight_shared::suite::SuiteFile;

const BROKEN: &str = "a/test_0.py::test";

/// Six tests of `duration_s` each (half a second for 10 s, at the harness's scale).
fn suite(duration_s: f64) -> SuiteFile {
    let tests = (0..6).map(|index| test(&format!("a/test_{index}.py::test"), &["a"], &[], duration_s)).collect();
    SuiteFile { name: "watch".into(), shard_overhead_s: 0.0, tests }
}

/// No culprit finding: its probes are builds the tests do not watch.
fn options() -> FarmOptions {
    FarmOptions { extra_toml: "[gate]\nfind_culprit = false\n".into(), ..FarmOptions::default() }
}

/// The lines a stream prints, as they come, read on a thread of their own.
fn lines_of(stream: impl Read + Send + 'static) -> Receiver<String> {
    let (sender, receiver) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

/// Reads `lines` into `seen` until one satisfies `condition`; panics after `timeout`.
fn wait_for_line(lines: &Receiver<String>, seen: &mut Vec<String>, what: &str, condition: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                let found = condition(&line);
                seen.push(line);
                if found {
                    return;
                }
            }
            Err(_) => panic!("timed out waiting for {what}; printed so far: {seen:#?}"),
        }
    }
}

/// Waits for `child` to exit (killing it after two minutes); its exit code.
fn exit_code(child: &mut Child) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("greenlight watch did not end");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every line still to come, until the stream ends.
fn rest(lines: &Receiver<String>, seen: &mut Vec<String>) {
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(10)) {
        seen.push(line);
    }
}

/// Whether `line` is a progress line of `build_id` (printed at most every
/// `--progress-every`, so how many there are depends on timing).
fn is_progress(line: &str, build_id: u64) -> bool {
    line.starts_with(&format!("build {build_id} queued: ")) || line.starts_with(&format!("build {build_id} running: "))
}

/// The verdict line with its duration (which depends on the machine) cut off.
fn without_duration(line: &str) -> String {
    match line.rsplit_once(" in ") {
        Some((head, took)) if took.ends_with('s') => head.to_owned(),
        _ => line.to_owned(),
    }
}

/// The lines of a watch that are not progress, durations cut, and the progress lines.
fn split(lines: &[String], build_id: u64) -> (Vec<String>, Vec<String>) {
    let (progress, other): (Vec<&String>, Vec<&String>) = lines.iter().partition(|line| is_progress(line, build_id));
    (other.into_iter().map(|line| without_duration(line)).collect(), progress.into_iter().cloned().collect())
}

fn heading(farm: &Farm, build: &BuildSummary) -> String {
    let tags = if build.full_run { String::new() } else { format!(", tags {}", build.tags.join(", ")) };
    format!(
        "watching build {id} of main at {revision} ({total} tests{tags}): {url}/#/build/{id}",
        id = build.build_id,
        revision = &build.revision[..12],
        total = build.counts.total,
        url = farm.url
    )
}

#[test]
fn a_green_build_is_watched_through_a_master_restart_to_exit_0_in_plain_lines() {
    // Two seconds a test: one worker runs the build for twelve.
    let mut farm = Farm::start(&suite(40.0), 0, options());
    let child = Command::new(greenlight())
        .args([
            "watch",
            "--master",
            &farm.url,
            "--poll-interval",
            "0.2",
            "--patience",
            "60",
            "--progress-every",
            "3600",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Killed on drop, should the test fail before it ends.
    let mut watch = Process { child, name: "watch".into() };
    let stdout = lines_of(watch.child.stdout.take().unwrap());
    let stderr = lines_of(watch.child.stderr.take().unwrap());
    let (mut printed, mut noted) = (Vec::new(), Vec::new());
    // No worker yet: the build waits, and the first progress line says so with an ETA.
    wait_for_line(&stdout, &mut printed, "the first progress line", |line| line.contains(" queued: 0/6 tests done"));

    // A worker starts the build; its first result acknowledged, the build's start is on
    // disk too (a master killed before that flush forgets the build's selection and ends
    // the build in error, and the watch rightly exits 2).
    farm.start_worker("worker-0");
    farm.wait_for("a first result", Duration::from_secs(120), |farm| {
        let build = farm.builds().into_iter().next()?;
        (build.counts.done() > 0).then_some(())
    });
    // The master goes away while it is watched, and comes back on the same address.
    farm.master.kill();
    wait_for_line(&stderr, &mut noted, "the watch to notice", |line| line.contains("trying again for up to 1m00s"));
    let address = farm.url.trim_start_matches("http://").to_owned();
    let (master, _) = common::start_master_of(&farm.master_binary, &farm.config, farm.dir(), &["--listen", &address]);
    farm.master = master;
    wait_for_line(&stderr, &mut noted, "the watch to reach it again", |line| line.contains("answers again"));

    farm.start_worker("worker-1");
    let code = exit_code(&mut watch.child);
    rest(&stdout, &mut printed);
    rest(&stderr, &mut noted);
    assert_eq!(code, 0, "green: {printed:#?} {noted:#?}; logs in {}", farm.dir().display());

    let builds = farm.builds();
    assert_eq!(builds.len(), 1, "{builds:?}");
    let build = &builds[0];
    assert_eq!(build.state, BuildState::Green);
    let (mut lines, progress) = split(&printed, build.build_id);
    if lines.first().is_some_and(|line| line.starts_with("no build yet")) {
        // The watch asked before the master's first poll of the branch.
        assert_eq!(lines.remove(0), "no build yet: waiting for the master to start one");
    }
    let id = build.build_id;
    assert_eq!(
        lines,
        [
            heading(&farm, build),
            format!("build {id} green: 6 passed of 6 tests"),
            "gate open on main".to_owned(),
            format!("see {}/#/build/{id}", farm.url),
        ]
    );
    // The first progress line is printed at once, the next not within the hour.
    assert_eq!(progress.len(), 1, "{progress:#?}");
    assert!(progress[0].starts_with(&format!("build {id} queued: 0/6 tests done, ETA ")), "{progress:?}");
    assert!(printed.iter().all(|line| !line.contains('\x1b')), "no escape codes: {printed:#?}");
    // Refused, or cut off if the kill came mid-request.
    assert!(noted[0].starts_with("greenlight watch: ") && noted[0].contains(&farm.url), "{noted:#?}");
    assert_eq!(noted.len(), 2, "one note when it went away, one when it came back: {noted:#?}");
    assert_eq!(noted[1], "greenlight watch: the master answers again");
}

#[test]
fn a_red_build_prints_its_failure_once_with_its_worker_and_exits_1() {
    let farm = Farm::start(&suite(10.0), 2, options());
    let green = farm.finished_build_of(&farm.repo.head().unwrap());
    assert_eq!(green.state, BuildState::Green);
    let broken = farm.repo.set_failing("a", &[BROKEN], "A: break test 0").unwrap();
    // A CI step of the pushed commit: the build that tests it, once there is one.
    let (code, stdout, stderr) = outcome(Command::new(greenlight()).args([
        "watch",
        "--revision",
        &broken[..10],
        "--master",
        &farm.url,
        "--poll-interval",
        "0.2",
    ]));
    assert_eq!(code, 1, "red: {stdout}{stderr}");
    assert_eq!(stderr, "");
    let red = farm.finished_build_of(&broken);
    assert_eq!(red.state, BuildState::Red);
    let id = red.build_id;
    // The failure that counts is the retry's, on the other worker.
    let results = farm.tests(id).results;
    let failure = results.iter().find(|result| result.test_id == BROKEN && !result.retried).unwrap();
    let worker = failure.worker.as_deref().unwrap();
    assert_eq!(failure.attempt, 2, "{results:?}");
    let output = failure.output.as_deref().unwrap().lines().find(|line| !line.trim().is_empty()).unwrap().trim();
    let printed: Vec<String> = stdout.lines().map(str::to_owned).collect();
    let (mut lines, _) = split(&printed, id);
    if lines.first().is_some_and(|line| line.starts_with("waiting for")) {
        // The watch asked before the master's poll saw the commit.
        assert_eq!(lines.remove(0), format!("waiting for a build of {}", &broken[..10]));
    }
    let expected = [
        heading(&farm, &red),
        format!("FAILED {BROKEN} on {worker} (attempt 2)"),
        format!("    {output}"),
        format!("build {id} red: 5 passed, 1 failed of 6 tests"),
        format!("gate closed on main by build {id}"),
        format!("see {}/#/build/{id}", farm.url),
    ];
    assert_eq!(lines, expected);
    assert_eq!(stdout.matches(BROKEN).count(), 1, "printed once: {stdout}");

    // The same build by its id, once it ended: the same lines, no progress.
    let (code, stdout, stderr) =
        outcome(Command::new(greenlight()).args(["watch", &id.to_string(), "--master", &farm.url]));
    assert_eq!((code, stderr.as_str()), (1, ""), "{stdout}");
    assert_eq!(
        stdout.lines().collect::<Vec<_>>().iter().map(|line| without_duration(line)).collect::<Vec<_>>(),
        expected
    );

    // A build the master does not have.
    let (code, stdout, stderr) = outcome(Command::new(greenlight()).args(["watch", "999", "--master", &farm.url]));
    assert_eq!((code, stdout.as_str()), (2, ""), "{stderr}");
    assert!(
        stderr.starts_with("greenlight watch: cannot ask the master: ") && stderr.contains("unknown_build"),
        "{stderr}"
    );
}

#[test]
fn a_master_that_stays_unreachable_ends_the_watch_with_exit_2() {
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", unused.local_addr().unwrap());
    drop(unused);
    let (code, stdout, stderr) =
        outcome(Command::new(greenlight()).args(["watch", "--master", &url, "--patience", "1"]));
    assert_eq!((code, stdout.as_str()), (2, ""), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(lines[0].ends_with("(is the master running, and listening at that address?); trying again for up to 1.0s"));
    assert!(
        lines[1]
            .starts_with(&format!("greenlight watch: cannot ask the master: cannot connect to {url}/api/v1/builds"))
    );
}

/// A tmux server of the test's own (its own socket), killed with everything in it on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn command(&self) -> Command {
        let mut command = Command::new("tmux");
        command.args(["-L", &self.socket]);
        command
    }

    /// Starts a detached 120x30 session running `shell_command`.
    fn start(shell_command: &str) -> Tmux {
        let tmux = Tmux { socket: format!("greenlight-watch-{}", std::process::id()) };
        let status = tmux
            .command()
            .args(["new-session", "-d", "-s", "watch", "-x", "120", "-y", "30", shell_command])
            .status()
            .unwrap_or_else(|error| panic!("tmux cannot run ({error}): install it (apt-get install tmux)"));
        assert!(status.success(), "tmux new-session failed");
        tmux
    }

    /// What the pane shows now.
    fn screen(&self) -> String {
        let output = self.command().args(["capture-pane", "-p", "-t", "watch"]).output().unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.command().arg("kill-server").status();
    }
}

/// What is between the brackets of a drawn progress bar.
fn bar_inside(line: &str) -> &str {
    &line[line.find('[').unwrap() + 1..line.rfind(']').unwrap()]
}

#[test]
fn on_a_terminal_a_progress_bar_ends_full_above_the_verdict() {
    let mut farm = Farm::start(&suite(10.0), 0, options());
    let tmux = Tmux::start(&format!(
        "{} watch --master {} --poll-interval 0.2; echo \"watch exited $?\"; exec cat",
        greenlight(),
        farm.url
    ));
    // No worker yet: an empty bar, with the scheduler's ETA.
    let deadline = Instant::now() + Duration::from_secs(120);
    let waiting = loop {
        let screen = tmux.screen();
        if let Some(line) = screen.lines().find(|line| line.contains("] 0/6 tests, ETA ")) {
            break line.trim_end().to_owned();
        }
        assert!(Instant::now() < deadline, "no empty bar; the screen:\n{screen}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(waiting.starts_with("build ") && waiting.contains(" queued ["), "{waiting}");
    let inside = bar_inside(&waiting);
    assert!(inside.len() > 50 && inside.chars().all(|c| c == ' '), "an empty bar: {waiting}");
    farm.start_worker("worker-0");
    farm.start_worker("worker-1");
    let screen = loop {
        let screen = tmux.screen();
        if screen.contains("watch exited") {
            break screen;
        }
        assert!(Instant::now() < deadline, "the watch did not end; the screen:\n{screen}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let build = farm.builds().into_iter().next().unwrap();
    let id = build.build_id;
    assert!(screen.contains("watch exited 0"), "{screen}");
    let lines: Vec<&str> = screen.lines().map(str::trim_end).filter(|line| !line.is_empty()).collect();
    let bar = lines
        .iter()
        .position(|line| line.starts_with(&format!("build {id} green [")))
        .unwrap_or_else(|| panic!("no progress bar:\n{screen}"));
    let drawn = lines[bar];
    assert!(drawn.ends_with("] 6/6 tests"), "{drawn}");
    let inside = bar_inside(drawn);
    assert!(inside.len() > 50 && inside.chars().all(|c| c == '='), "a full bar: {drawn}");
    assert_eq!(lines[bar - 1], heading(&farm, &build), "{screen}");
    let after: Vec<String> = lines[bar + 1..].iter().map(|line| without_duration(line)).collect();
    assert_eq!(
        after,
        [
            format!("build {id} green: 6 passed of 6 tests"),
            "gate open on main".to_owned(),
            format!("see {}/#/build/{id}", farm.url),
            "watch exited 0".to_owned(),
        ],
        "{screen}"
    );
}
