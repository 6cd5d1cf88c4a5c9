//! The one `greenlight` binary. It parses arguments and calls into the crates; each
//! subcommand's work lives in a library or in a module of its own here.

mod client;
mod config;
mod demo;
mod gate;
mod history;
mod simulate;
mod watch;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc's malloc: a master taking results from fifty workers spent a
/// quarter of its CPU in glibc's allocator (arena locks, consolidation), and its arenas
/// kept memory a long-running process had freed.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Greenlight: a distributed test-sharding farm.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// How logs are written to standard error: `text` (coloured only on a terminal), or
    /// `json`, one object a line, for log shippers.
    #[arg(long, global = true, value_enum, env = "GREENLIGHT_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// The formats logs can be written in.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the master: HTTP API, git poller, scheduler, state in sled.
    Master {
        /// The configuration file [default: greenlight-master.toml; the old name
        /// greenlight.toml is still read, with a warning].
        #[arg(long)]
        config: Option<PathBuf>,
        /// Listen here instead of the configuration's `listen`.
        #[arg(long)]
        listen: Option<String>,
    },
    /// Rewrite a stopped master's store as a fresh, compressed copy of what it holds (sled
    /// never shrinks its file; a store an older master wrote is not compressed).
    Compact {
        /// The master's configuration file, whose `data_dir` holds the store [default:
        /// greenlight-master.toml; the old name greenlight.toml is still read, with a warning].
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Check the master's configuration, or print a sample of it with every default.
    Config(config::ConfigArgs),
    /// Run a worker: lease shards from a master and run them.
    Worker {
        /// The master's URL (also read from GREENLIGHT_MASTER).
        #[arg(long, env = "GREENLIGHT_MASTER")]
        master: String,
        /// The worker token (also read from GREENLIGHT_WORKER_TOKEN): the shared one, or
        /// this worker's own (`[workers.NAME] token` on the master).
        #[arg(long, env = "GREENLIGHT_WORKER_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// This worker's name, unique in the fleet: while a live worker holds it, another
        /// is refused (and keeps asking); a restarted worker gets it back once its old
        /// registration has been silent for the master's lease timeout.
        #[arg(long)]
        name: String,
        /// Directory for the cached checkout and shard files.
        #[arg(long)]
        workdir: PathBuf,
        /// Seconds a lease request may wait on the master.
        #[arg(long, default_value_t = 20.0)]
        wait: f64,
    },
    /// Run the whole farm locally: a master, workers, a fixture repository and a script of commits.
    Demo(demo::DemoArgs),
    /// Run the real scheduler against a virtual clock.
    Simulate(simulate::SimulateArgs),
    /// Ask the commit gate (exit 0 open, 1 closed, 2 master unreachable); for git hooks.
    Gate(gate::GateArgs),
    /// Watch a build live: progress, ETA, failures as they arrive (with their worker), the
    /// verdict and the gate; exit 0 green, 1 red, 2 error. Plain lines without a terminal,
    /// for a CI step.
    Watch(watch::WatchArgs),
    /// Seed or inspect the master's duration history (`history import REPORT.xml…`).
    History(history::HistoryArgs),
    /// Tell the master the branch moved (for a post-receive hook).
    Submit {
        /// The master's URL.
        #[arg(long, env = "GREENLIGHT_MASTER", default_value = "http://127.0.0.1:8080")]
        master: String,
        /// The branch that moved (the watched branch when absent).
        #[arg(long)]
        branch: Option<String>,
        /// The new tip.
        #[arg(long)]
        revision: Option<String>,
        /// The master's hook token or worker token (also read from GREENLIGHT_HOOK_TOKEN).
        #[arg(long, env = "GREENLIGHT_HOOK_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// List a checkout's tests with a runner adapter and print the suite JSON (DESIGN.md
    /// format; tags and dependencies from the repository's greenlight.toml). Usable as
    /// `list_command`.
    List {
        /// The adapter: pytest or nextest.
        #[arg(long)]
        runner: ListRunner,
        /// The checkout to list.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The Python interpreter with pytest.
        #[arg(long, default_value = "python3")]
        python: String,
        /// The cargo with cargo-nextest.
        #[arg(long, default_value = "cargo")]
        cargo: String,
        /// Arguments for the runner's listing (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Fixture test runner: "run" tests by sleeping their scaled duration, write JUnit XML.
    FixtureRun {
        /// The suite file.
        #[arg(long, default_value = greenlight_fixtures::SUITE_FILE)]
        suite: PathBuf,
        /// The failing-tests file.
        #[arg(long, default_value = greenlight_fixtures::FAILING_FILE)]
        failing: PathBuf,
        /// The file of test ids to run.
        #[arg(long)]
        ids_file: PathBuf,
        /// Where to write JUnit XML.
        #[arg(long)]
        junit: PathBuf,
        /// Seconds slept per second of test duration.
        #[arg(long, default_value_t = 0.01)]
        scale: f64,
    },
    /// Write an IMVU-shaped fixture suite (DESIGN.md suite format).
    FixtureSuite {
        /// Number of tests.
        #[arg(long, default_value_t = 15_000)]
        tests: usize,
        /// Machine-hours the durations add up to.
        #[arg(long, default_value_t = 4.4)]
        hours: f64,
        /// The seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Output file (standard output when absent).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Runners `greenlight list` can list with.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ListRunner {
    Pytest,
    Nextest,
}

/// Logs to standard error at `default` level (or `GREENLIGHT_LOG`), in `format`; colour
/// codes only when standard error is a terminal (never in a log file).
fn init_tracing(default: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_env("GREENLIGHT_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
}

/// An error as one message: each cause whose text the message does not already hold is
/// added after a colon. Never a backtrace: these are a user's errors, not the program's.
fn error_message(error: &anyhow::Error) -> String {
    let mut message = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !message.contains(&cause) {
            message.push_str(": ");
            message.push_str(&cause);
        }
    }
    message
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("error: {}", error_message(&error));
            ExitCode::FAILURE
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// Runs the command; the exit code.
fn run(cli: Cli) -> anyhow::Result<u8> {
    let log_format = cli.log_format;
    match cli.command {
        Command::Master { config, listen } => {
            init_tracing("info", log_format);
            let path = config::master_config_path(config)?;
            let mut config = greenlight_master::config::Config::from_file(&path)?;
            if let Some(listen) = listen {
                config.listen = listen;
            }
            let runtime = tokio::runtime::Runtime::new()?;
            let served = runtime.block_on(async {
                let listen = config.listen.clone();
                // The data directory is checked (and the store recovered) before anything
                // listens: "listening" means ready.
                let master = greenlight_master::open(config).await?;
                let listener = tokio::net::TcpListener::bind(&listen)
                    .await
                    .with_context(|| format!("cannot listen on {listen}"))?;
                // The first line on standard output names the address (tests and scripts read it).
                println!("greenlight master listening on http://{}", listener.local_addr()?);
                master.serve(listener, shutdown_signal()).await?;
                anyhow::Ok(())
            });
            // A blocking call stuck in the store (a disk that failed under it) does not keep
            // the process alive: the master has already flushed what it could.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            served.map(|()| 0)
        }
        Command::Compact { config } => {
            init_tracing("info", log_format);
            let path = config::master_config_path(config)?;
            let config = greenlight_master::config::Config::from_file(&path)?;
            let db = config.data_dir.join("db");
            let compacted = greenlight_master::store::compact::compact(&db, config.storage.cache_bytes)
                .with_context(|| format!("cannot compact the store in {}", db.display()))?;
            println!(
                "compacted {}: {:.1} MB before{}, {:.1} MB after",
                db.display(),
                compacted.before_bytes as f64 / 1e6,
                if compacted.was_compressed { "" } else { " (uncompressed)" },
                compacted.after_bytes as f64 / 1e6
            );
            Ok(0)
        }
        Command::Config(args) => Ok(exit_code(config::run(&args))),
        Command::Worker { master, token, name, workdir, wait } => {
            init_tracing("info", log_format);
            let config = greenlight_worker::WorkerConfig { master, token, name, workdir, wait_s: wait };
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(greenlight_worker::run(config, shutdown_signal()))?;
            Ok(0)
        }
        Command::Demo(args) => {
            init_tracing("warn", log_format);
            let code = tokio::runtime::Runtime::new()?.block_on(demo::run(args))?;
            Ok(exit_code(code))
        }
        Command::Simulate(args) => simulate::run(&args).map(|()| 0),
        Command::Gate(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            Ok(exit_code(runtime.block_on(gate::run(&args))))
        }
        Command::Watch(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            Ok(exit_code(runtime.block_on(watch::run(&args))))
        }
        Command::History(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(history::run(&args)).map(|()| 0)
        }
        Command::Submit { master, branch, revision, token } => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(submit(&master, branch, revision, token.as_deref())).map(|()| 0)
        }
        Command::List { runner, dir, python, cargo, args } => {
            let runner = match runner {
                ListRunner::Pytest => greenlight_shared::runner::Runner::Pytest { python, args },
                ListRunner::Nextest => greenlight_shared::runner::Runner::Nextest { cargo, args },
            };
            let suite = greenlight_shared::runner::list_suite(&runner, &dir, &[])?;
            println!("{}", suite.to_json());
            Ok(0)
        }
        Command::FixtureRun { suite, failing, ids_file, junit, scale } => {
            let args = greenlight_fixtures::runner::RunnerArgs { suite, failing, ids_file, junit, scale };
            let summary = greenlight_fixtures::runner::run(&args)?;
            // Like a real runner: non-zero when a test failed.
            Ok(if summary.failed + summary.unknown > 0 { 1 } else { 0 })
        }
        Command::FixtureSuite { tests, hours, seed, out } => {
            if !(hours.is_finite() && hours > 0.0) {
                anyhow::bail!("--hours must be a positive number");
            }
            let shape = greenlight_fixtures::imvu::ImvuShape {
                n_tests: tests,
                total_s: hours * 3600.0,
                seed,
                ..Default::default()
            };
            let json = greenlight_fixtures::imvu::generate(&shape).to_json();
            match out {
                Some(path) => {
                    std::fs::write(&path, json).with_context(|| format!("cannot write {}", path.display()))?
                }
                None => println!("{json}"),
            }
            Ok(0)
        }
    }
}

/// A subcommand's exit code as a process's.
fn exit_code(code: i32) -> u8 {
    u8::try_from(code).unwrap_or(1)
}

/// Whether a 404's body says the path is no endpoint of a master (or is not a master's
/// error at all): the base URL is wrong, rather than the thing asked for unknown.
pub fn is_no_such_endpoint(body: &str) -> bool {
    serde_json::from_str::<greenlight_shared::api::ErrorBody>(body).map_or(true, |error| error.error == "not_found")
}

async fn submit(
    master: &str,
    branch: Option<String>,
    revision: Option<String>,
    token: Option<&str>,
) -> anyhow::Result<()> {
    let notice = greenlight_shared::api::ChangeNotice { version: greenlight_shared::API_VERSION, branch, revision };
    greenlight_worker::client::check_master_url(master).map_err(anyhow::Error::msg)?;
    let url = format!("{}/api/v1/changes", master.trim_end_matches('/'));
    let mut request = reqwest::Client::new().post(&url).json(&notice);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .map_err(|error| anyhow::anyhow!(greenlight_worker::client::describe_request_error(&error)))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if status == reqwest::StatusCode::NOT_FOUND && is_no_such_endpoint(&body) {
        anyhow::bail!(greenlight_worker::client::not_found_hint(master, &url));
    }
    if !status.is_success() {
        anyhow::bail!("the master refused the change notice ({status}): {body}");
    }
    let answer: greenlight_shared::api::ChangeNoticeResponse = serde_json::from_str(&body)?;
    for change in &answer.queued {
        println!(
            "queued {} {}",
            &change.revision[..change.revision.len().min(12)],
            change.message.lines().next().unwrap_or("")
        );
    }
    if answer.queued.is_empty() {
        println!("no new change");
    }
    Ok(())
}
