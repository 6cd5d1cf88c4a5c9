//! `greenlight demo`: the whole farm on this machine. A master (sled in a temporary
//! directory) in this process, a fleet of worker processes, a generated fixture
//! repository with an IMVU-shaped suite, and a script of commits: the initial suite, a
//! batch of three changes pushed while the first build runs, a change that breaks a test,
//! and its fix. Each build is printed as it ends; `--headless` prints a summary table and
//! exits 0 only when every build got the verdict the script expects.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use greenlight_fixtures::imvu::{AREAS, ImvuShape, generate};
use greenlight_fixtures::repo::FixtureRepo;
use greenlight_master::config::{Config, SuiteConfig};
use greenlight_shared::api::{BuildKind, BuildState, BuildSummary, GateState, GateView, PushState, PushView};
use tokio::process::{Child, Command};

/// Arguments of `greenlight demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Worker processes to start.
    #[arg(long, default_value_t = 36, value_parser = clap::value_parser!(u32).range(1..=200))]
    workers: u32,
    /// Tests in the generated suite.
    #[arg(long, default_value_t = 15_000)]
    tests: usize,
    /// Seconds slept per second of test duration (0.04: the 4.4 h suite takes ~20 s on 36 workers).
    #[arg(long, default_value_t = 0.04)]
    scale: f64,
    /// Port for the master (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Run the script to the end, print a summary and exit (0 when every verdict is as expected).
    #[arg(long)]
    headless: bool,
}

/// One step of the script: what it commits and the verdict its build must get.
struct Step {
    title: &'static str,
    expected: BuildState,
    /// The gate once the step's build ended.
    gate: GateState,
    /// The revision whose build ends the step.
    revision: String,
    /// The test the build must name as failing, for a red step.
    failing: Option<String>,
}

struct Fleet {
    children: Vec<Child>,
}

impl Fleet {
    fn start(n: u32, url: &str, token: &str, dir: &Path) -> anyhow::Result<Fleet> {
        let exe = std::env::current_exe().context("cannot find the greenlight executable")?;
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        let mut children = Vec::new();
        for index in 1..=n {
            let name = format!("worker-{index:02}");
            let log = std::fs::File::create(logs.join(format!("{name}.log")))?;
            let mut command = Command::new(&exe);
            command
                .args(["worker", "--master", url, "--name", &name, "--workdir"])
                .arg(dir.join("workers").join(&name))
                .env("GREENLIGHT_WORKER_TOKEN", token)
                .env("GREENLIGHT_LOG", "warn")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .kill_on_drop(true);
            greenlight_worker::process::die_with_parent(&mut command);
            children.push(command.spawn().context("cannot start a worker")?);
        }
        Ok(Fleet { children })
    }

    async fn stop(mut self) {
        for child in &mut self.children {
            let _ = child.kill().await;
        }
    }
}

async fn builds(http: &reqwest::Client, url: &str) -> anyhow::Result<Vec<BuildSummary>> {
    Ok(http.get(format!("{url}/api/v1/builds?limit=100")).send().await?.error_for_status()?.json().await?)
}

/// Waits for the build testing `revision` to end, printing builds as they end.
async fn wait_for_build(
    http: &reqwest::Client,
    url: &str,
    revision: &str,
    printed: &mut BTreeMap<u64, ()>,
    start: Instant,
) -> anyhow::Result<BuildSummary> {
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        for build in builds(http, url).await?.into_iter().rev() {
            if build.state.is_finished() && printed.insert(build.build_id, ()).is_none() {
                print_build(&build, start);
            }
            if is_step_build(&build, revision) && build.state.is_finished() {
                return Ok(build);
            }
        }
        if Instant::now() > deadline {
            bail!("no build of {revision} finished within 15 minutes");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn gate(http: &reqwest::Client, url: &str) -> anyhow::Result<GateView> {
    Ok(http.get(format!("{url}/api/v1/gate")).send().await?.error_for_status()?.json().await?)
}

/// The push stage's record once nothing is pending any more.
async fn settled_pushes(http: &reqwest::Client, url: &str) -> anyhow::Result<Vec<PushView>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pushes: Vec<PushView> =
            http.get(format!("{url}/api/v1/pushes")).send().await?.error_for_status()?.json().await?;
        if pushes.iter().all(|push| !push.state.is_open()) || Instant::now() > deadline {
            return Ok(pushes);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn gate_word(state: GateState) -> &'static str {
    match state {
        GateState::Open => "open",
        GateState::Closed => "closed",
    }
}

async fn wait_until_running(http: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        if builds(http, url).await?.iter().any(|build| build.state == BuildState::Running) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the first build did not start within 5 minutes")
}

fn state_word(state: BuildState) -> &'static str {
    match state {
        BuildState::Queued => "queued",
        BuildState::Running => "running",
        BuildState::Green => "green",
        BuildState::Red => "red",
        BuildState::Error => "error",
    }
}

/// A figure of the table, or `-` when there is none.
fn seconds(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |value| format!("{value:.1}"))
}

fn print_build(build: &BuildSummary, start: Instant) {
    let selection = if build.full_run { "full run".to_owned() } else { format!("tags {}", build.tags.join(",")) };
    let failed = if build.failed_tests.is_empty() {
        String::new()
    } else {
        format!("  failed: {}", build.failed_tests.join(", "))
    };
    println!(
        "[{:>6.1}s] build #{} {} {:<5} {} change(s), {}, {} tests in {:.1} s{}",
        start.elapsed().as_secs_f64(),
        build.build_id,
        &build.revision[..10.min(build.revision.len())],
        state_word(build.state),
        build.changes.len(),
        selection,
        build.counts.total,
        build.makespan_s.unwrap_or(0.0),
        failed
    );
}

fn demo_config(dir: &Path, repo: &Path, token: &str) -> anyhow::Result<Config> {
    let exe = std::env::current_exe()?.to_string_lossy().into_owned();
    let suite = SuiteConfig::command(
        greenlight_fixtures::SUITE_FILE,
        vec![
            exe,
            "fixture-run".into(),
            "--ids-file".into(),
            "{ids_file}".into(),
            "--junit".into(),
            "{junit}".into(),
            "--scale".into(),
            "1".into(),
        ],
    );
    let mut config = Config::new(dir.join("master"), repo.to_string_lossy().into_owned(), suite);
    config.worker_token = Some(token.to_owned());
    // The push stage: every green revision is recorded in pushed.txt.
    let pushed = dir.join("pushed.txt").to_string_lossy().into_owned();
    config.push.command =
        vec!["sh".into(), "-c".into(), format!("echo \"$GREENLIGHT_BUILD_ID $GREENLIGHT_REVISION\" >> '{pushed}'")];
    config.repository.poll_interval_s = 0.5;
    config.scheduler.lease_timeout_s = 10.0;
    config.scheduler.heartbeat_interval_s = 2.0;
    for area in AREAS {
        config.tags.paths.insert(format!("src/{area}/**"), vec![area.to_owned()]);
    }
    config.validate()?;
    Ok(config)
}

/// Runs the demo; returns the process exit code.
pub async fn run(args: DemoArgs) -> anyhow::Result<i32> {
    if !(args.scale.is_finite() && args.scale >= 0.0) {
        bail!("--scale must be a number >= 0");
    }
    let start = Instant::now();
    let dir = tempfile::Builder::new().prefix("greenlight-demo-").tempdir()?;
    let repo_dir = dir.path().join("repo");
    std::fs::create_dir_all(&repo_dir)?;
    // The suite's durations are scaled down, so that the scheduler's estimates, the
    // history and the wall clock all speak the same seconds.
    let mut suite = generate(&ImvuShape { n_tests: args.tests, ..ImvuShape::default() });
    let machine_hours = suite.tests.iter().filter_map(|test| test.duration_s).sum::<f64>() / 3600.0;
    suite.shard_overhead_s *= args.scale;
    for test in &mut suite.tests {
        test.duration_s = test.duration_s.map(|duration| duration * args.scale);
    }
    let victim = suite
        .tests
        .iter()
        .find(|test| test.tags.iter().any(|tag| tag == "chat") && test.depends_on.is_empty())
        .map(|test| test.id.clone())
        .context("the generated suite has no chat test to break")?;
    let repo = FixtureRepo::create(&repo_dir, &suite)?;
    let token = format!("demo-{}", std::process::id());
    let config = demo_config(dir.path(), &repo_dir, &token)?;

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{} (try --port 0)", args.port))?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop_master, master_stopped) = tokio::sync::oneshot::channel::<()>();
    let master = tokio::spawn(greenlight_master::run(listener, config, async {
        let _ = master_stopped.await;
    }));
    println!("Greenlight demo: master at {url}  (the page: {url}/ , the API: {url}/api/v1/builds)");
    println!(
        "  {} tests, {machine_hours:.1} machine-hours scaled by {} to {:.1} machine-minutes, {} workers; files in {}",
        suite.tests.len(),
        args.scale,
        machine_hours * 60.0 * args.scale,
        args.workers,
        dir.path().display()
    );
    let fleet = Fleet::start(args.workers, &url, &token, dir.path())?;
    let http = reqwest::Client::new();

    let outcome = script(&http, &url, &repo, &victim, start).await;
    let code = match outcome {
        Ok(steps) => {
            let all_builds = builds(&http, &url).await?;
            let pushes = settled_pushes(&http, &url).await?;
            let ok = report(&steps, &all_builds, &pushes, args.headless);
            if !args.headless {
                println!("Script done. The farm keeps running at {url} ; Ctrl-C to stop.");
                crate::shutdown_signal().await;
            }
            if ok { 0 } else { 1 }
        }
        Err(error) => {
            eprintln!("demo failed: {error:#}");
            eprintln!("worker logs are in {}", dir.path().join("logs").display());
            1
        }
    };
    fleet.stop().await;
    let _ = stop_master.send(());
    match master.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => eprintln!("master: {error}"),
        Err(error) => eprintln!("master task: {error}"),
    }
    Ok(code)
}

async fn script(
    http: &reqwest::Client,
    url: &str,
    repo: &FixtureRepo,
    victim: &str,
    start: Instant,
) -> anyhow::Result<Vec<Step>> {
    let mut printed = BTreeMap::new();
    let mut steps = Vec::new();
    let mut step = async |title, expected, revision: String, failing: Option<String>| -> anyhow::Result<()> {
        wait_for_build(http, url, &revision, &mut printed, start).await?;
        let gate = gate(http, url).await?;
        print!("         gate {}", gate_word(gate.state));
        if let Some(culprit) = &gate.culprit {
            print!(", culprit {} {:?}", &culprit.revision[..10], culprit.message.lines().next().unwrap_or(""));
        }
        println!();
        steps.push(Step { title, expected, gate: gate.state, revision, failing });
        Ok(())
    };

    let initial = repo.head()?;
    println!("step 1: the initial suite is built in full");
    wait_until_running(http, url).await?;
    println!("step 2: three changes land while build 1 runs; they ride in one batch");
    repo.commit("Chat: shorter typing indicator\n\nTags: chat", &[("src/chat/typing.txt", "short\n")])?;
    repo.touch_area("shop", "Shop: cache the catalogue")?;
    let batch_tip = repo.touch_area("rooms", "Rooms: fix the door animation")?;
    step("initial suite", BuildState::Green, initial, None).await?;
    step("batch of three", BuildState::Green, batch_tip, None).await?;

    println!("step 3: a change breaks {victim}");
    let broken = repo.set_failing("chat", &[victim], "Chat: render emoji faster")?;
    step("breaking change", BuildState::Red, broken, Some(victim.to_owned())).await?;

    println!("step 4: the fix");
    let fixed = repo.set_failing("chat", &[], "Chat: fix the emoji regression [fix]")?;
    step("the fix", BuildState::Green, fixed, None).await?;
    Ok(steps)
}

/// Prints the summary table; true when every step's build got its expected verdict, the
/// gate followed (closed after the red build, open after green ones), and the push stage
/// got every green revision but never the red one.
fn report(steps: &[Step], builds: &[BuildSummary], pushes: &[PushView], table: bool) -> bool {
    if table {
        println!();
        println!(
            "{:<6} {:<18} {:<10} {:>7} {:>7} {:>7} {:>8} {:>8} {:>8}  {:<8} {:<7} {:<10} expected",
            "build",
            "step",
            "revision",
            "changes",
            "tests",
            "failed",
            "wall s",
            "bound s",
            "measured",
            "verdict",
            "gate",
            "push"
        );
    }
    let mut ok = true;
    for step in steps {
        let Some(build) = builds.iter().find(|build| is_step_build(build, &step.revision)) else {
            println!("no build for step {:?}", step.title);
            ok = false;
            continue;
        };
        let names_failure = match &step.failing {
            Some(test) => build.failed_tests.iter().any(|failed| failed == test),
            None => build.failed_tests.is_empty(),
        };
        let push = pushes.iter().find(|push| push.build_id == build.build_id).map_or("-", |push| push.state.as_str());
        let (expected_gate, expected_push) = match step.expected {
            BuildState::Green => (GateState::Open, ["pushed", "superseded"].as_slice()),
            _ => (GateState::Closed, ["-"].as_slice()),
        };
        let good = build.state == step.expected
            && names_failure
            && step.gate == expected_gate
            && expected_push.contains(&push);
        ok &= good;
        if table {
            println!(
                "#{:<5} {:<18} {:<10} {:>7} {:>7} {:>7} {:>8.1} {:>8} {:>8}  {:<8} {:<7} {:<10} {}{}",
                build.build_id,
                step.title,
                &build.revision[..10.min(build.revision.len())],
                build.changes.len(),
                build.counts.total,
                build.counts.failed + build.counts.error,
                build.makespan_s.unwrap_or(0.0),
                seconds(build.lower_bound_s),
                seconds(build.measured_bound_s),
                state_word(build.state),
                gate_word(step.gate),
                push,
                state_word(step.expected),
                if good { "" } else { "  <- UNEXPECTED" }
            );
        }
    }
    // The last revision handed to the push stage is the fix.
    let last_pushed = pushes.iter().filter(|push| push.state == PushState::Pushed).map(|push| push.build_id).max();
    let fix_build = steps.last().and_then(|step| builds.iter().find(|build| is_step_build(build, &step.revision)));
    if last_pushed.is_none() || last_pushed != fix_build.map(|build| build.build_id) {
        println!("the fix's revision was not the last one pushed");
        ok = false;
    }
    println!(
        "{}",
        if ok { "every build got the expected verdict" } else { "some build did not get the expected verdict" }
    );
    ok
}

/// Whether `build` is the build of a step that pushed `revision`: the regular build, not a
/// probe the culprit search ran at the same revision (a red build of one change is probed
/// at its own revision).
fn is_step_build(build: &BuildSummary, revision: &str) -> bool {
    build.revision == revision && build.kind == BuildKind::Regular
}
