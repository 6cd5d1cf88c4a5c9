//! `greenlight watch [BUILD]`: one build, live, in a terminal or a CI log. A progress bar
//! (tests done of the build's total, failures so far, the ETA the scheduler projects) on a
//! terminal; plain lines otherwise (no escape codes; a progress line at most every
//! `--progress-every` seconds). Each failure is printed once, when its final result is
//! stored (a failure the farm retries is printed only if the retry fails too, a flake that
//! passes on its retry never), with the worker that ran it. At the end: the verdict, the
//! gate of the build's branch and the build's page.
//!
//! Exit 0: green. 1: red. 2: the build ended in error (tests no worker could run, a suite
//! that could not be listed or planned, cancelled by an admin: the farm gave no verdict
//! on the code), the build does not exist, or the master stayed unreachable for
//! `--patience` seconds.
//!
//! Without BUILD it watches the newest regular build still running or queued, else the
//! newest regular build; when the master has no build yet it waits for the first one (a
//! CI step started with a fresh farm would otherwise fail before the master's first poll
//! of the branch). With `--revision REV` it watches the build covering that commit,
//! waiting for the master to see it and start the build (a CI step of a pushed commit:
//! the newest build may still be the one before it).
//!
//! It polls the read API (`GET /api/v1/builds/{id}` each `--poll-interval`; the failed
//! results when the counts say there are new ones) rather than following the event
//! stream: a poll carries the whole state, so a dropped connection or a restarted master
//! costs nothing but the retries (200 ms doubling to 5 s), and the failures must be read
//! from the results anyway (the events carry no worker).

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use greenlight_shared::api::{
    BuildDetail, BuildKind, BuildState, BuildSummary, BuildTests, ChangeView, GateState, GateView, TestCounts,
};
use greenlight_worker::client::{ClientError, Retry, check_master_url};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::de::DeserializeOwned;

use crate::client::{get_json, url};

/// Arguments of `greenlight watch`.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// The build's id [default: the newest regular build running or queued, else the newest
    /// regular build; with none yet, the first one to start].
    build: Option<u64>,
    /// Watch the build that tests this commit (a full id, or a prefix of at least 7
    /// hexadecimal digits) once the master has seen it on the branch and started it;
    /// waits until then. For a CI step of a pushed commit.
    #[arg(long, conflicts_with = "build")]
    revision: Option<String>,
    /// The master's URL.
    #[arg(long, env = "GREENLIGHT_MASTER", default_value = "http://127.0.0.1:8080")]
    master: String,
    /// The master's `read_token`, when it sets one.
    #[arg(long, env = "GREENLIGHT_READ_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Seconds between looks at the build.
    #[arg(long, default_value_t = 1.0)]
    poll_interval: f64,
    /// Without a terminal: seconds at least between two progress lines.
    #[arg(long, default_value_t = 30.0)]
    progress_every: f64,
    /// Seconds the master may stay unreachable (retried meanwhile) before watch gives up
    /// with exit 2.
    #[arg(long, default_value_t = 300.0)]
    patience: f64,
    /// Plain lines even on a terminal.
    #[arg(long)]
    plain: bool,
}

/// The exit code of a green build.
const EXIT_GREEN: i32 = 0;
/// The exit code of a red build.
const EXIT_RED: i32 = 1;
/// The exit code when no verdict was had: the build in error, the master unreachable.
const EXIT_ERROR: i32 = 2;

/// The largest page of results asked for at once.
const FAILURES_PAGE: usize = 1000;

/// Runs the command; returns the exit code.
pub async fn run(args: &WatchArgs) -> i32 {
    let master = args.master.trim_end_matches('/');
    if let Err(error) = check_master_url(master) {
        eprintln!("greenlight watch: cannot ask the master: {error}");
        return EXIT_ERROR;
    }
    if let Some(revision) = &args.revision
        && !is_commit_id(revision)
    {
        eprintln!("greenlight watch: --revision takes a commit id (7 to 64 hexadecimal digits), not {revision:?}");
        return EXIT_ERROR;
    }
    let terminal = !args.plain && std::io::stdout().is_terminal();
    let mut view = View::new(terminal, seconds(args.progress_every, 0.0, 86_400.0));
    let reader = Reader {
        http: reqwest::Client::new(),
        master,
        token: args.token.as_deref(),
        patience: seconds(args.patience, 0.0, 86_400.0),
    };
    let poll = seconds(args.poll_interval, 0.05, 600.0);
    let watched = async {
        let build_id = match (args.build, &args.revision) {
            (Some(build_id), _) => build_id,
            (None, Some(revision)) => build_of(&reader, &view, revision, poll).await?,
            (None, None) => newest_build(&reader, &view, poll).await?,
        };
        watch(&reader, &mut view, build_id, poll).await
    };
    match watched.await {
        Ok(code) => code,
        Err(error) => {
            view.abandon();
            eprintln!("greenlight watch: cannot ask the master: {error}");
            EXIT_ERROR
        }
    }
}

/// A number of seconds a user gave, within `least..=most` (`least` for NaN).
fn seconds(value: f64, least: f64, most: f64) -> Duration {
    Duration::from_secs_f64(if value.is_nan() { least } else { value.clamp(least, most) })
}

/// Reads of one master, each retried while the master cannot answer, for up to the
/// patience.
struct Reader<'a> {
    http: reqwest::Client,
    master: &'a str,
    token: Option<&'a str>,
    patience: Duration,
}

impl Reader<'_> {
    /// GETs `path` with `query`, retried with back-off while the master is unreachable or
    /// answers 5xx (it is restarting, its disk is full), saying so once on standard error
    /// and once again when it answers.
    async fn read<T: DeserializeOwned>(
        &self,
        view: &View,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<T, ClientError> {
        let url = url(self.master, path, query);
        let mut retry = Retry::new(self.patience);
        let mut told = false;
        loop {
            match get_json(&self.http, self.master, &url, self.token).await {
                Ok(answer) => {
                    if told {
                        view.note("the master answers again");
                    }
                    return Ok(answer);
                }
                Err(error) => {
                    if error.is_retryable() && !told {
                        view.note(&format!(
                            "{error}; trying again for up to {}",
                            duration_text(self.patience.as_secs_f64())
                        ));
                        told = true;
                    }
                    if !retry.again(&error).await {
                        return Err(error);
                    }
                }
            }
        }
    }

    /// The build's page.
    fn page(&self, build_id: u64) -> String {
        format!("{}/#/build/{build_id}", self.master)
    }
}

/// The build to watch when none was named: the newest regular build running or queued,
/// else the newest regular one; waits for the first one when there is none.
async fn newest_build(reader: &Reader<'_>, view: &View, poll: Duration) -> Result<u64, ClientError> {
    let mut said_waiting = false;
    loop {
        let builds: Vec<BuildSummary> = reader.read(view, "/api/v1/builds", &[("limit", "50")]).await?;
        let regular = || builds.iter().filter(|build| build.kind == BuildKind::Regular);
        if let Some(build) = regular().find(|build| !build.state.is_finished()).or_else(|| regular().next()) {
            return Ok(build.build_id);
        }
        if !said_waiting {
            view.line("no build yet: waiting for the master to start one");
            said_waiting = true;
        }
        tokio::time::sleep(poll).await;
    }
}

/// Whether `text` can be (a prefix of) a commit id: 7 to 64 hexadecimal digits.
fn is_commit_id(text: &str) -> bool {
    (7..=64).contains(&text.len()) && text.chars().all(|c| c.is_ascii_hexdigit())
}

/// The build that tests `revision` (a prefix of a change's commit id): the build that
/// covers the change, once the master has seen it and started one; waits until then.
async fn build_of(reader: &Reader<'_>, view: &View, revision: &str, poll: Duration) -> Result<u64, ClientError> {
    let wanted = revision.to_ascii_lowercase();
    let mut said_waiting = false;
    loop {
        let changes: Vec<ChangeView> = reader.read(view, "/api/v1/changes", &[("limit", "1000")]).await?;
        if let Some(build_id) =
            changes.iter().find(|change| change.revision.starts_with(&wanted)).and_then(|change| change.build_id)
        {
            return Ok(build_id);
        }
        if !said_waiting {
            view.line(&format!("waiting for a build of {revision}"));
            said_waiting = true;
        }
        tokio::time::sleep(poll).await;
    }
}

/// Follows the build to its end; the exit code of its verdict.
async fn watch(reader: &Reader<'_>, view: &mut View, build_id: u64, poll: Duration) -> Result<i32, ClientError> {
    let path = format!("/api/v1/builds/{build_id}");
    let mut printed = BTreeSet::new();
    let mut started = false;
    loop {
        let detail: BuildDetail = reader.read(view, &path, &[]).await?;
        let build = &detail.build;
        if !started {
            view.line(&heading(build, &reader.page(build_id)));
            started = true;
        }
        let finished = build.state.is_finished();
        if finished || failures_counted(&build.counts) > printed.len() {
            print_new_failures(reader, view, build, &mut printed).await?;
        }
        if finished {
            view.finish(build);
            return Ok(verdict(reader, view, build).await);
        }
        view.progress(build, detail.remaining_s, Instant::now());
        tokio::time::sleep(poll).await;
    }
}

/// `watching build 3 of main at 0123456789ab (6 tests, tags chat): URL`.
fn heading(build: &BuildSummary, page: &str) -> String {
    let selection = if build.full_run || build.tags.is_empty() {
        String::new()
    } else {
        format!(", tags {}", build.tags.join(", "))
    };
    let probe = build.probe_of.map(|red| format!(" (a culprit probe of build {red})")).unwrap_or_default();
    format!(
        "watching build {}{probe} of {} at {} ({} tests{selection}): {page}",
        build.build_id,
        build.branch,
        short(&build.revision),
        build.counts.total
    )
}

/// Final results that failed, counted or not (quarantined, given up): those printed.
fn failures_counted(counts: &TestCounts) -> usize {
    (counts.failed + counts.error + counts.quarantined) as usize
}

/// Prints the build's final failures not printed yet, with their workers.
async fn print_new_failures(
    reader: &Reader<'_>,
    view: &View,
    build: &BuildSummary,
    printed: &mut BTreeSet<(String, u32)>,
) -> Result<(), ClientError> {
    let path = format!("/api/v1/builds/{}/tests", build.build_id);
    let limit = FAILURES_PAGE.to_string();
    let mut cursor: Option<String> = None;
    loop {
        let mut query = vec![("status", "failed,error"), ("limit", limit.as_str())];
        if let Some(cursor) = &cursor {
            query.push(("cursor", cursor.as_str()));
        }
        let page: BuildTests = match reader.read(view, &path, &query).await {
            Ok(page) => page,
            // Past retention only the summary's list of failures is left.
            Err(ClientError::Refused { body, .. }) if body.error == "results_pruned" => {
                for test_id in &build.failed_tests {
                    if printed.insert((test_id.clone(), 0)) {
                        view.line(&format!("FAILED {test_id} (its results are pruned: no worker known)"));
                    }
                }
                return Ok(());
            }
            Err(error) => return Err(error),
        };
        for result in page.results.iter().filter(|result| result.status.is_failure() && !result.retried) {
            if !printed.insert((result.test_id.clone(), result.attempt)) {
                continue;
            }
            let status = result.status.as_str().to_uppercase();
            let mut text = match &result.worker {
                Some(worker) => format!("{status} {} on {worker}", result.test_id),
                None => format!("{status} {}: no worker could run it", result.test_id),
            };
            if result.attempt > 1 {
                text.push_str(&format!(" (attempt {})", result.attempt));
            }
            if result.quarantined {
                text.push_str(" (quarantined: does not count)");
            }
            if let Some(first) =
                result.output.as_deref().and_then(|output| output.lines().find(|line| !line.trim().is_empty()))
            {
                text.push_str(&format!("\n    {}", first.trim().chars().take(200).collect::<String>()));
            }
            view.line(&text);
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(()),
        }
    }
}

/// Prints the verdict, the gate and the page; the exit code.
async fn verdict(reader: &Reader<'_>, view: &View, build: &BuildSummary) -> i32 {
    let mut line = format!(
        "build {} {}: {} of {} tests",
        build.build_id,
        build.state.as_str(),
        counts_text(&build.counts),
        build.counts.total
    );
    let took = build.makespan_s.or_else(|| Some(build.finished_at? - build.started_at?));
    if let Some(took) = took {
        line.push_str(&format!(" in {}", duration_text(took)));
    }
    view.line(&line);
    if let Some(error) = &build.error {
        view.line(&format!("error: {error}"));
    }
    match reader.read::<GateView>(view, "/api/v1/gate", &[("branch", &build.branch)]).await {
        Ok(gate) => view.line(&gate_text(&gate)),
        Err(error) => view.note(&format!("the gate of {} is not known: {error}", build.branch)),
    }
    view.line(&format!("see {}", reader.page(build.build_id)));
    match build.state {
        BuildState::Green => EXIT_GREEN,
        BuildState::Red => EXIT_RED,
        BuildState::Error | BuildState::Queued | BuildState::Running => EXIT_ERROR,
    }
}

/// `gate open on main`, or `gate closed on main by build 3`, with the gate's warning.
fn gate_text(gate: &GateView) -> String {
    let mut text = match (gate.state, gate.build_id) {
        (GateState::Open, _) => format!("gate open on {}", gate.branch),
        (GateState::Closed, Some(build_id)) => format!("gate closed on {} by build {build_id}", gate.branch),
        (GateState::Closed, None) => format!("gate closed on {}", gate.branch),
    };
    if let Some(warning) = &gate.warning {
        text.push_str(&format!("\ngate warning: {warning}"));
    }
    text
}

/// The outcomes that happened, `5 passed, 1 failed`; `nothing run` when none did.
fn counts_text(counts: &TestCounts) -> String {
    let parts: Vec<String> = [
        (counts.passed, "passed"),
        (counts.failed, "failed"),
        (counts.error, "errors"),
        (counts.skipped, "skipped"),
        (counts.flaky, "flaky"),
        (counts.quarantined, "quarantined"),
    ]
    .into_iter()
    .filter(|(count, _)| *count > 0)
    .map(|(count, word)| format!("{count} {word}"))
    .collect();
    if parts.is_empty() { "nothing run".to_owned() } else { parts.join(", ") }
}

/// The first 12 characters of a revision.
fn short(revision: &str) -> &str {
    &revision[..revision.len().min(12)]
}

/// `42s`, `3m05s`, `2h01m`: seconds as a person reads them.
fn duration_text(seconds: f64) -> String {
    let seconds = if seconds.is_finite() { seconds.max(0.0) } else { 0.0 };
    if seconds < 10.0 {
        return format!("{seconds:.1}s");
    }
    let whole = seconds.round() as u64;
    match whole {
        0..60 => format!("{whole}s"),
        60..3600 => format!("{}m{:02}s", whole / 60, whole % 60),
        _ => format!("{}h{:02}m", whole / 3600, whole % 3600 / 60),
    }
}

/// What the progress says besides the counts: `, 1 failed, ETA 42s`.
fn progress_text(build: &BuildSummary, remaining_s: Option<f64>) -> String {
    let mut text = String::new();
    let failed = failures_counted(&build.counts) - build.counts.quarantined as usize;
    if failed > 0 {
        text.push_str(&format!(", {failed} failed"));
    }
    if let Some(remaining_s) = remaining_s {
        text.push_str(&format!(", ETA {}", duration_text(remaining_s)));
    }
    text
}

/// Whether a plain progress line saying `text` is printed at `now`: the first at once,
/// then one at least `every` after the last, and only if it says something new.
fn progress_due(last: Option<&(Instant, String)>, every: Duration, now: Instant, text: &str) -> bool {
    match last {
        None => true,
        Some((at, said)) => now.saturating_duration_since(*at) >= every && said != text,
    }
}

/// Where the watch is shown: a progress bar on a terminal, plain lines otherwise.
enum View {
    /// A terminal: lines are printed above the bar.
    Bar(ProgressBar),
    /// A log: lines as they come, progress at most every `every`.
    Plain {
        /// The least time between two progress lines.
        every: Duration,
        /// When the last progress line was printed, and what it said.
        last: Option<(Instant, String)>,
    },
}

impl View {
    fn new(terminal: bool, every: Duration) -> View {
        if !terminal {
            return View::Plain { every, last: None };
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout());
        let style = ProgressStyle::with_template("{prefix} [{wide_bar}] {pos}/{len} tests{msg}")
            .expect("the template is valid")
            .progress_chars("=> ");
        bar.set_style(style);
        View::Bar(bar)
    }

    /// A line of the watch's output (standard output).
    fn line(&self, text: &str) {
        match self {
            View::Bar(bar) => bar.println(text),
            View::Plain { .. } => println!("{text}"),
        }
    }

    /// A note on the watch itself (standard error): the master unreachable, and back.
    fn note(&self, text: &str) {
        match self {
            View::Bar(bar) => bar.suspend(|| eprintln!("greenlight watch: {text}")),
            View::Plain { .. } => eprintln!("greenlight watch: {text}"),
        }
    }

    /// Where the running build stands.
    fn progress(&mut self, build: &BuildSummary, remaining_s: Option<f64>, now: Instant) {
        let done = u64::from(build.counts.done());
        let total = u64::from(build.counts.total);
        match self {
            View::Bar(bar) => {
                bar.set_length(total);
                bar.set_position(done);
                bar.set_prefix(format!("build {} {}", build.build_id, build.state.as_str()));
                bar.set_message(progress_text(build, remaining_s));
            }
            View::Plain { every, last } => {
                let text = format!(
                    "build {} {}: {done}/{total} tests done{}",
                    build.build_id,
                    build.state.as_str(),
                    progress_text(build, remaining_s)
                );
                if progress_due(last.as_ref(), *every, now, &text) {
                    println!("{text}");
                    *last = Some((now, text));
                }
            }
        }
    }

    /// The build ended: the bar shows its end and stays, and what follows (the verdict)
    /// is printed under it.
    fn finish(&mut self, build: &BuildSummary) {
        if let View::Bar(bar) = self {
            bar.set_length(u64::from(build.counts.total));
            bar.set_position(u64::from(build.counts.done()));
            bar.set_prefix(format!("build {} {}", build.build_id, build.state.as_str()));
            bar.set_message(progress_text(build, None));
            bar.finish();
            *self = View::Plain { every: Duration::ZERO, last: None };
        }
    }

    /// The watch stops without a verdict: the bar stays as it was.
    fn abandon(&self) {
        if let View::Bar(bar) = self {
            bar.abandon();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(seconds: f64, expected: &str) {
        assert_eq!(duration_text(seconds), expected, "{seconds}");
    }

    #[test]
    fn durations_read_as_a_person_says_them() {
        check(0.0, "0.0s");
        check(3.24, "3.2s");
        check(-1.0, "0.0s");
        check(f64::NAN, "0.0s");
        check(42.4, "42s");
        check(59.6, "1m00s");
        check(185.0, "3m05s");
        check(7260.0, "2h01m");
    }

    #[test]
    fn a_revision_is_7_to_64_hexadecimal_digits() {
        for (text, expected) in [
            ("3f2a9c0", true),
            ("3F2A9C01D4E7", true),
            (&"a".repeat(40), true),
            (&"a".repeat(64), true),
            ("3f2a9c", false),
            (&"a".repeat(65), false),
            ("main", false),
            ("HEAD~1x", false),
        ] {
            assert_eq!(is_commit_id(text), expected, "{text}");
        }
    }

    #[test]
    fn a_plain_progress_line_comes_at_once_then_at_most_every_period_and_only_when_new() {
        let start = Instant::now();
        let every = Duration::from_secs(30);
        let last = (start, "build 1 running: 2/6 tests done".to_owned());
        for (last, after_s, text, expected) in [
            (None, 0, "build 1 queued: 0/6 tests done", true),
            (Some(&last), 10, "build 1 running: 3/6 tests done", false),
            (Some(&last), 30, "build 1 running: 3/6 tests done", true),
            (Some(&last), 90, "build 1 running: 2/6 tests done", false),
        ] {
            let now = start + Duration::from_secs(after_s);
            assert_eq!(progress_due(last, every, now, text), expected, "{after_s} s: {text}");
        }
    }

    #[test]
    fn progress_says_the_failures_and_the_eta_and_a_closed_gate_names_its_build() {
        let mut build: BuildSummary = serde_json::from_value(serde_json::json!({
            "build_id": 3, "branch": "main", "revision": "0123456789abcdef", "state": "running",
            "changes": [], "tags": ["chat"], "full_run": false,
            "counts": {"total": 9, "passed": 2, "failed": 1, "skipped": 0, "error": 1, "quarantined": 1},
            "failed_tests": [], "created_at": 1.0, "started_at": 2.0, "finished_at": null,
            "lower_bound_s": 30.0, "makespan_s": null, "shards": 2
        }))
        .unwrap();
        assert_eq!(progress_text(&build, Some(125.0)), ", 2 failed, ETA 2m05s");
        assert_eq!(
            heading(&build, "http://m/#/build/3"),
            "watching build 3 of main at 0123456789ab (9 tests, tags chat): http://m/#/build/3"
        );
        build.counts = TestCounts { total: 9, passed: 9, ..TestCounts::default() };
        build.full_run = true;
        assert_eq!(progress_text(&build, None), "");
        assert_eq!(heading(&build, "U"), "watching build 3 of main at 0123456789ab (9 tests): U");
        let mut gate: GateView = serde_json::from_value(serde_json::json!({
            "branch": "main", "state": "closed", "since": 5.0, "build_id": 3, "revision": "0123",
            "failing_tests": ["t"], "culprit": null, "fix_marker": "[fix]"
        }))
        .unwrap();
        assert_eq!(gate_text(&gate), "gate closed on main by build 3");
        gate.state = GateState::Open;
        gate.warning = Some("build 4 ended in error".into());
        assert_eq!(gate_text(&gate), "gate open on main\ngate warning: build 4 ended in error");
    }

    #[test]
    fn counts_name_only_the_outcomes_that_happened() {
        let counts = TestCounts { total: 9, passed: 5, failed: 1, flaky: 2, ..TestCounts::default() };
        assert_eq!(counts_text(&counts), "5 passed, 1 failed, 2 flaky");
        assert_eq!(counts_text(&TestCounts::default()), "nothing run");
    }
}
