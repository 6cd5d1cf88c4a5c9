//! `greenlight history import REPORT.xml…`: seeds the master's duration history from
//! JUnit reports a CI already wrote (its last run), as timing-based splitters do, so the
//! farm's first build is planned from real durations.
//!
//! The files are read here, strictly (a malformed file is named with the place, a file
//! that is not JUnit is named, and nothing is sent); their test cases go to the master
//! in one admin call (`POST /api/v1/admin/history/import`), which maps them to the
//! suite's test ids and records the passed ones' times (see `master/src/farm/history.rs`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use greenlight_shared::API_VERSION;
use greenlight_shared::api::{ErrorBody, HistoryImportRequest, HistoryImportResponse, ImportedCase, ImportedReport};

/// Arguments of `greenlight history`.
#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    #[command(subcommand)]
    command: HistoryCommand,
}

#[derive(Debug, clap::Subcommand)]
enum HistoryCommand {
    /// Seed the duration history from JUnit reports (a CI's last run).
    #[command(long_about = IMPORT_ABOUT)]
    Import(ImportArgs),
}

const IMPORT_ABOUT: &str = "\
Seed the master's duration history from JUnit XML reports you already have (your CI's last
run), so the first builds are planned from real durations instead of guesses.

Reads each REPORT.xml (pytest, cargo-nextest, Maven Surefire, gotestsum or any JUnit
writer; nested <testsuites> are fine) and sends its test cases to the master, which maps
each to a test of the suite at the watched branch's newest revision, named the way the
suite's runner names it in JUnit (pytest: classname + name; nextest: binary id + test
name; other runners: name, classname::name, classname.name or file::name). Only passed
cases are recorded (one sample each, as if the farm had run the test); failed, erroring
and skipped cases are counted, not recorded. A time that is absent, not a number,
negative, infinite, NaN or above a day is rejected for that case, with the reason.

Prints how many durations were imported, how many cases named no test of the suite (with
examples) and how many were rejected. A malformed file (named, with line and column) or
a file that is not JUnit stops the import before anything is sent.

Needs the master's admin_token (--token or GREENLIGHT_ADMIN_TOKEN).";

/// Arguments of `greenlight history import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// JUnit XML files.
    #[arg(required = true, value_name = "REPORT.xml")]
    reports: Vec<PathBuf>,
    /// The master's URL.
    #[arg(long, env = "GREENLIGHT_MASTER", default_value = "http://127.0.0.1:8080")]
    master: String,
    /// The master's `admin_token`.
    #[arg(long, env = "GREENLIGHT_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Seconds to wait for the master's answer (it may list the suite first).
    #[arg(long, default_value_t = 600.0)]
    timeout: f64,
}

/// Runs `greenlight history …`.
pub async fn run(args: &HistoryArgs) -> anyhow::Result<()> {
    match &args.command {
        HistoryCommand::Import(import) => run_import(import).await,
    }
}

/// One report file's cases, read strictly.
fn read_report(path: &PathBuf) -> anyhow::Result<ImportedReport> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let cases = greenlight_worker::junit::read_report(&bytes)
        .map_err(|error| anyhow::anyhow!("{}: {error}; nothing was imported", path.display()))?;
    let cases = cases
        .into_iter()
        .map(|report| ImportedCase {
            name: report.case.name,
            classname: report.case.classname,
            file: report.case.file,
            status: report.case.status,
            time: report.time,
        })
        .collect();
    Ok(ImportedReport { file: path.display().to_string(), cases })
}

async fn run_import(args: &ImportArgs) -> anyhow::Result<()> {
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        anyhow::bail!("--timeout must be a positive number of seconds");
    }
    // Every file is read before anything is sent: a bad one imports nothing.
    let reports = args.reports.iter().map(read_report).collect::<anyhow::Result<Vec<_>>>()?;
    let n_cases: usize = reports.iter().map(|report| report.cases.len()).sum();
    let request = HistoryImportRequest { version: API_VERSION, reports };
    greenlight_worker::client::check_master_url(&args.master).map_err(anyhow::Error::msg)?;
    let url = format!("{}/api/v1/admin/history/import", args.master.trim_end_matches('/'));
    let mut call = reqwest::Client::new().post(&url).json(&request).timeout(Duration::from_secs_f64(args.timeout));
    if let Some(token) = &args.token {
        call = call.bearer_auth(token);
    }
    let response = call.send().await.map_err(|error| {
        anyhow::anyhow!("{}; nothing was imported", greenlight_worker::client::describe_request_error(&error))
    })?;
    let status = response.status();
    let body = response.text().await.with_context(|| format!("no answer from the master at {url}"))?;
    if status == reqwest::StatusCode::NOT_FOUND && crate::is_no_such_endpoint(&body) {
        anyhow::bail!("{}; nothing was imported", greenlight_worker::client::not_found_hint(&args.master, &url));
    }
    if !status.is_success() {
        let message = serde_json::from_str::<ErrorBody>(&body)
            .map(|error| format!("{}: {}", error.error, error.message))
            .unwrap_or(body);
        let hint = match status.as_u16() {
            401 | 403 => "; give the master's admin_token with --token or GREENLIGHT_ADMIN_TOKEN",
            413 => "; import fewer files at once, or raise the master's max_body_bytes",
            _ => "",
        };
        anyhow::bail!("the master at {url} refused the import ({status}): {message}{hint}; nothing was imported");
    }
    let answer: HistoryImportResponse =
        serde_json::from_str(&body).with_context(|| format!("unexpected answer from {url}: {body}"))?;
    let revision = &answer.revision[..answer.revision.len().min(12)];
    println!("{n_cases} test cases in {} files, matched against the suite at {revision}", args.reports.len());
    println!("imported: {} durations", answer.imported);
    println!("not passed (not recorded): {}", answer.not_passed);
    println!("unmatched: {}", answer.unmatched);
    for example in &answer.unmatched_examples {
        println!("  {example}");
    }
    println!("rejected: {}", answer.rejected);
    for example in &answer.rejected_examples {
        println!("  {example}");
    }
    Ok(())
}
