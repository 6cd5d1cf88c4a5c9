//! Preparing a revision for the farm (the master hands it to one worker at a time):
//! check it out, run the setup (nextest: build the revision's test archive, once for the
//! whole farm), list the suite there (nextest: from the archive, so nothing is compiled
//! twice), upload the archive and then the listing. Heartbeats keep the preparation
//! while it runs. A listing that fails is the revision's answer (the build's error); a
//! checkout or an upload that fails is this worker's, and another worker tries.
//!
//! The archive a worker built or downloaded is remembered in `workdir/archive-revision`,
//! so that shards of the revision run from it ([`ensure_archive`]): a worker that did
//! not build it downloads it from the master, and builds it itself only when the master
//! has none.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use greenlight_shared::api::{Prepare, PrepareOutcome};
use greenlight_shared::runner::{NEXTEST_ARCHIVE, NEXTEST_EXTRACTED, Runner};

use crate::checkout::{Checkout, CheckoutError};
use crate::client::{Client, ClientError};
use crate::shard::WarmRunners;
use crate::warm::WarmError;

/// The file naming the revision whose archive is in the checkout's `target/`.
fn archive_marker(workdir: &Path) -> std::path::PathBuf {
    workdir.join("archive-revision")
}

/// The file naming the revision whose archive is extracted in the checkout's
/// [`NEXTEST_EXTRACTED`] (by this worker's listing or its first shard).
fn extracted_marker(workdir: &Path) -> std::path::PathBuf {
    workdir.join("extracted-revision")
}

/// Forgets what the checkout's [`NEXTEST_EXTRACTED`] held (its marker, an earlier
/// revision's binaries) and leaves it empty, ready for an extraction: nextest extracts only
/// into a directory that exists.
fn empty_extraction(workdir: &Path, checkout: &Checkout) -> Result<(), CheckoutError> {
    let _ = std::fs::remove_file(extracted_marker(workdir));
    let extracted = checkout.dir().join(NEXTEST_EXTRACTED);
    let io = |source| CheckoutError::Io { path: extracted.clone(), source };
    if extracted.exists() {
        std::fs::remove_dir_all(&extracted).map_err(io)?;
    }
    std::fs::create_dir_all(&extracted).map_err(io)
}

/// Prepares `job` and reports how it went.
#[tracing::instrument(skip_all, fields(prepare_id = job.prepare_id, revision = %job.revision))]
pub async fn run_prepare(client: &Client, worker_id: u64, workdir: &Path, job: &Prepare, warm: &mut WarmRunners) {
    let active = Arc::new(AtomicBool::new(true));
    let heartbeat = tokio::spawn(heartbeat_loop(
        client.clone(),
        worker_id,
        job.prepare_id,
        job.heartbeat_interval_s,
        Arc::clone(&active),
    ));
    let outcome = match (&job.runner, job.warm) {
        (Runner::Pytest { python, args }, true) => prepare_warm(workdir, job, python, args, warm).await,
        _ => prepare(client, worker_id, workdir, job).await,
    };
    heartbeat.abort();
    if !active.load(Ordering::SeqCst) {
        tracing::warn!("the master gave the preparation to another worker; not reporting");
        return;
    }
    match &outcome {
        PrepareOutcome::Listed { suite } => tracing::info!(tests = suite.tests.len(), "revision prepared"),
        PrepareOutcome::Failed { message } => tracing::warn!(message, "the revision cannot be listed"),
        PrepareOutcome::InfraError { message } => tracing::warn!(message, "could not prepare the revision"),
    }
    let mut delay = Duration::from_millis(200);
    for _ in 0..10 {
        match client.prepare_report(worker_id, job.prepare_id, outcome.clone()).await {
            Ok(()) => return,
            Err(ClientError::Unreachable(error)) => {
                tracing::warn!(%error, "master unreachable while reporting the preparation; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(error) => {
                tracing::warn!(%error, "the master refused the preparation's report");
                return;
            }
        }
    }
}

async fn heartbeat_loop(client: Client, worker_id: u64, prepare_id: u64, interval_s: f64, active: Arc<AtomicBool>) {
    let interval = Duration::from_secs_f64(interval_s.clamp(0.05, 3600.0));
    loop {
        tokio::time::sleep(interval).await;
        match client.prepare_heartbeat(worker_id, prepare_id).await {
            Ok(true) => {}
            Ok(false) => {
                active.store(false, Ordering::SeqCst);
                return;
            }
            Err(error) if error.code() == Some("unknown_preparation") => {
                active.store(false, Ordering::SeqCst);
                return;
            }
            Err(error) => tracing::warn!(prepare_id, %error, "preparation heartbeat failed"),
        }
    }
}

async fn prepare(client: &Client, worker_id: u64, workdir: &Path, job: &Prepare) -> PrepareOutcome {
    let checkout = Checkout::new(workdir);
    let listed = {
        let (checkout, job, workdir) = (checkout.clone(), job.clone(), workdir.to_owned());
        tokio::task::spawn_blocking(move || {
            let marker = archive_marker(&workdir);
            let _ = std::fs::remove_file(&marker);
            let setup = job.runner.setup_argv(&job.setup_command);
            checkout.prepare(&job.repository, &job.revision, &setup, &job.env, job.runner.kept_across_revisions())?;
            let extracted_marker = extracted_marker(&workdir);
            if job.runner.archive_argv().is_some() {
                if !checkout.dir().join(NEXTEST_ARCHIVE).exists() {
                    // Set up earlier with a downloaded archive that is gone since: build it.
                    run_archive_step(&checkout, &job.runner, &job.env)?;
                }
                std::fs::write(&marker, &job.revision)
                    .map_err(|source| CheckoutError::Io { path: marker.clone(), source })?;
                // The listing extracts the archive for this worker's shards.
                empty_extraction(&workdir, &checkout)?;
            }
            let listed = greenlight_shared::runner::list_prepared_suite(&job.runner, checkout.dir(), &job.env);
            if listed.is_ok() && job.runner.extract_argv().is_some() {
                tracing::info!(revision = %job.revision, "archive extracted for the revision's shards, while listing it");
                std::fs::write(&extracted_marker, &job.revision)
                    .map_err(|source| CheckoutError::Io { path: extracted_marker.clone(), source })?;
            }
            Ok::<_, CheckoutError>(listed)
        })
        .await
    };
    let suite = match listed {
        Ok(Ok(Ok(suite))) => suite,
        // The runner (or the repository's own file) says no: a compile error, a missing
        // runner. The build's error, as a listing on the master was.
        Ok(Ok(Err(error))) => return PrepareOutcome::Failed { message: error.to_string() },
        Ok(Err(error @ CheckoutError::Setup { .. })) => return PrepareOutcome::Failed { message: error.to_string() },
        Ok(Err(error)) => return PrepareOutcome::InfraError { message: format!("checkout: {error}") },
        Err(error) => return PrepareOutcome::InfraError { message: format!("preparation task: {error}") },
    };
    if job.upload_archive {
        let archive = checkout.dir().join(NEXTEST_ARCHIVE);
        if let Err(error) = client.upload_archive(worker_id, job.prepare_id, &archive).await {
            return PrepareOutcome::InfraError { message: format!("archive upload: {error}") };
        }
    }
    PrepareOutcome::Listed { suite }
}

/// Prepares a revision whose shards run in a warm pytest runner: checks it out, runs the
/// setup and starts the runner, whose collection (the listing's own arguments) is the
/// listing; the runner stays for this worker's shards of the revision, so the worker that
/// lists collects once, not twice.
async fn prepare_warm(
    workdir: &Path,
    job: &Prepare,
    python: &str,
    args: &[String],
    warm: &mut WarmRunners,
) -> PrepareOutcome {
    let checked_out =
        crate::shard::check_out(workdir, &job.repository, &job.revision, &job.runner, &job.setup_command, &job.env)
            .await;
    let checkout = match checked_out {
        Ok(checkout) => checkout,
        Err(error @ CheckoutError::Setup { .. }) => return PrepareOutcome::Failed { message: error.to_string() },
        Err(error) => return PrepareOutcome::InfraError { message: format!("checkout: {error}") },
    };
    let runner = match warm.runner(&job.revision, python, args, checkout.dir(), &job.env).await {
        Ok(runner) => runner,
        // pytest cannot collect this revision (not installed, a usage error, a conftest
        // that does not import), or the interpreter is missing: the revision's answer,
        // as the listing's failure was.
        Err(error @ (WarmError::Collection { .. } | WarmError::Start { .. })) => {
            return PrepareOutcome::Failed { message: error.to_string() };
        }
        Err(error) => return PrepareOutcome::InfraError { message: format!("the warm pytest runner: {error}") },
    };
    if let Some(first) = runner.collection_errors().first() {
        // A file that fails to import interrupts a direct run: the listing fails too.
        let more = runner.collection_errors().len() - 1;
        return PrepareOutcome::Failed {
            message: format!(
                "pytest could not collect {}{}:\n{}",
                first.node,
                if more > 0 { format!(" (and {more} more)") } else { String::new() },
                first.output
            ),
        };
    }
    tracing::info!(pid = runner.pid(), "listed by the warm runner, kept for the revision's shards");
    let listed = greenlight_shared::runner::suite_from_pytest_session(
        &job.runner,
        checkout.dir(),
        runner.collected().to_vec(),
        runner.skipped_files().to_vec(),
    );
    match listed {
        Ok(suite) => PrepareOutcome::Listed { suite },
        Err(error) => PrepareOutcome::Failed { message: error.to_string() },
    }
}

/// Runs the runner's archive step in the checkout (blocking).
fn run_archive_step(checkout: &Checkout, runner: &Runner, env: &[(String, String)]) -> Result<(), CheckoutError> {
    let Some(argv) = runner.archive_argv() else { return Ok(()) };
    let output = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .current_dir(checkout.dir())
        .envs(env.iter().map(|(key, value)| (key, value)))
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| CheckoutError::Setup { command: argv.clone(), detail: source.to_string() })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: String = stderr.chars().rev().take(2000).collect::<Vec<_>>().into_iter().rev().collect();
        return Err(CheckoutError::Setup { command: argv, detail: format!("{}: {tail}", output.status) });
    }
    Ok(())
}

/// Makes sure the checkout (at `revision`) holds `revision`'s archive before a shard runs
/// from it: already there (this worker built or downloaded it), else downloaded from the
/// master, else (the master has none) built here.
pub async fn ensure_archive(
    client: &Client,
    workdir: &Path,
    checkout: &Checkout,
    runner: &Runner,
    revision: &str,
    env: &[(String, String)],
) -> Result<(), String> {
    let marker = archive_marker(workdir);
    let archive = checkout.dir().join(NEXTEST_ARCHIVE);
    if std::fs::read_to_string(&marker).is_ok_and(|done| done.trim() == revision) && archive.exists() {
        return Ok(());
    }
    let _ = std::fs::remove_file(&marker);
    if let Some(parent) = archive.parent() {
        std::fs::create_dir_all(parent).map_err(|error| format!("{}: {error}", parent.display()))?;
    }
    match client.download_archive(revision, &archive).await {
        Ok(true) => tracing::info!(revision, "archive downloaded from the master"),
        Ok(false) => {
            tracing::info!(revision, "the master has no archive of the revision; building it here");
            let (checkout, runner, env) = (checkout.clone(), runner.clone(), env.to_vec());
            tokio::task::spawn_blocking(move || run_archive_step(&checkout, &runner, &env))
                .await
                .map_err(|error| format!("archive task: {error}"))?
                .map_err(|error| error.to_string())?;
        }
        Err(error) => return Err(format!("archive download: {error}")),
    }
    std::fs::write(&marker, revision).map_err(|error| format!("{}: {error}", marker.display()))
}

/// Makes sure the revision's archive is extracted once in the checkout
/// ([`greenlight_shared::runner::NEXTEST_EXTRACTED`]), for every shard of the revision to
/// run from, rather than each extracting the whole archive again.
pub async fn ensure_extracted(
    workdir: &Path,
    checkout: &Checkout,
    runner: &Runner,
    revision: &str,
    env: &[(String, String)],
) -> Result<(), String> {
    let Some(argv) = runner.extract_argv() else { return Ok(()) };
    let marker = extracted_marker(workdir);
    let metadata = checkout.dir().join(NEXTEST_EXTRACTED).join("target/nextest/binaries-metadata.json");
    if std::fs::read_to_string(&marker).is_ok_and(|done| done.trim() == revision) && metadata.exists() {
        return Ok(());
    }
    empty_extraction(workdir, checkout).map_err(|error| error.to_string())?;
    let (dir, env) = (checkout.dir().to_owned(), env.to_vec());
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .current_dir(&dir)
            .envs(env.iter().map(|(key, value)| (key, value)))
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|error| format!("cannot start {:?}: {error}", argv[0]))
    })
    .await
    .map_err(|error| format!("extraction task: {error}"))??;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: String = stderr.chars().rev().take(2000).collect::<Vec<_>>().into_iter().rev().collect();
        return Err(format!("extracting the archive exited with {}: {tail}", output.status));
    }
    tracing::info!(revision, "archive extracted for the revision's shards");
    std::fs::write(&marker, revision).map_err(|error| format!("{}: {error}", marker.display()))
}
