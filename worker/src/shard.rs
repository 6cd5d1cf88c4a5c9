//! Running one leased shard: check the revision out, write the test ids to a file, start
//! the shard command (argv from the lease's template, never a shell), heartbeat while it
//! runs, read its JUnit report as it grows and stream each newly finished test to the
//! master, and when it exits report every leased test the runner never mentioned as an
//! error. The master is never told a test passed unless the report says so.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use greenlight_shared::api::{Lease, ShardOutcome, TestReport, TestStatus};

use crate::checkout::Checkout;
use crate::client::{Client, ClientError};
use crate::junit::{candidate_ids, parse_cases};

/// How often the growing JUnit report is read.
const REPORT_POLL: Duration = Duration::from_millis(250);
/// How much of the runner's output is attached to tests it never reported.
const OUTPUT_TAIL_BYTES: usize = 4096;

/// Files of the shard being run.
struct ShardFiles {
    ids: PathBuf,
    junit: PathBuf,
    log: PathBuf,
}

impl ShardFiles {
    fn create(workdir: &Path, lease: &Lease) -> std::io::Result<ShardFiles> {
        let dir = workdir.join("shard");
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        let files = ShardFiles { ids: dir.join("ids.txt"), junit: dir.join("junit.xml"), log: dir.join("output.log") };
        let mut ids = lease.tests.join("\n");
        ids.push('\n');
        std::fs::write(&files.ids, ids)?;
        Ok(files)
    }
}

/// The shard command's argv: `{ids}` (a whole argument) becomes one argument per test;
/// `{ids_file}`, `{junit}` and `{revision}` are replaced inside arguments.
pub fn expand_command(
    template: &[String],
    tests: &[String],
    ids_file: &Path,
    junit: &Path,
    revision: &str,
) -> Vec<String> {
    let mut argv = Vec::with_capacity(template.len() + tests.len());
    for argument in template {
        if argument == "{ids}" {
            argv.extend(tests.iter().cloned());
        } else {
            argv.push(
                argument
                    .replace("{ids_file}", &ids_file.to_string_lossy())
                    .replace("{junit}", &junit.to_string_lossy())
                    .replace("{revision}", revision),
            );
        }
    }
    argv
}

/// Reports results, retrying while the master is unreachable (results are never dropped
/// for a passing network fault).
async fn send_results(client: &Client, worker_id: u64, lease_id: u64, results: Vec<TestReport>) {
    let mut delay = Duration::from_millis(200);
    for _ in 0..12 {
        match client.results(worker_id, lease_id, results.clone()).await {
            Ok(answer) => {
                tracing::debug!(
                    lease_id,
                    accepted = answer.accepted,
                    duplicates = answer.duplicates,
                    stale = answer.stale,
                    "results sent"
                );
                return;
            }
            Err(ClientError::Unreachable(error)) => {
                tracing::warn!(lease_id, %error, "master unreachable while reporting; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(error) => {
                tracing::warn!(lease_id, %error, "master refused results");
                return;
            }
        }
    }
    tracing::error!(lease_id, "gave up reporting results: the master stayed unreachable");
}

/// Matches the report's complete cases to leased tests not yet reported.
fn new_results(
    junit: &Path,
    index: &HashMap<&str, usize>,
    reported: &mut HashSet<usize>,
    tests: &[String],
) -> Vec<TestReport> {
    let Ok(bytes) = std::fs::read(junit) else { return Vec::new() };
    let mut fresh = Vec::new();
    for case in parse_cases(&bytes) {
        let Some(position) = candidate_ids(&case).iter().find_map(|candidate| index.get(candidate.as_str()).copied())
        else {
            continue;
        };
        if reported.insert(position) {
            fresh.push(TestReport {
                test_id: tests[position].clone(),
                status: case.status,
                duration_s: case.time_s,
                output: case.output,
            });
        }
    }
    fresh
}

fn output_tail(log: &Path) -> String {
    let bytes = std::fs::read(log).unwrap_or_default();
    let start = bytes.len().saturating_sub(OUTPUT_TAIL_BYTES);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// Runs a lease to its end and says how it went.
#[tracing::instrument(skip_all, fields(lease_id = lease.lease_id, build_id = lease.build_id, tests = lease.tests.len()))]
pub async fn run_shard(client: &Client, worker_id: u64, workdir: &Path, lease: &Lease) -> ShardOutcome {
    let active = Arc::new(AtomicBool::new(true));
    let heartbeat = tokio::spawn(heartbeat_loop(
        client.clone(),
        worker_id,
        lease.lease_id,
        lease.heartbeat_interval_s,
        Arc::clone(&active),
    ));
    let outcome = run_shard_inner(client, worker_id, workdir, lease, &active).await;
    heartbeat.abort();
    outcome
}

async fn heartbeat_loop(client: Client, worker_id: u64, lease_id: u64, interval_s: f64, active: Arc<AtomicBool>) {
    let interval = Duration::from_secs_f64(interval_s.clamp(0.05, 3600.0));
    loop {
        tokio::time::sleep(interval).await;
        match client.heartbeat(worker_id, lease_id).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(lease_id, "the master took the lease back; stopping the shard");
                active.store(false, Ordering::SeqCst);
                return;
            }
            Err(error) => tracing::warn!(lease_id, %error, "heartbeat failed"),
        }
    }
}

async fn run_shard_inner(
    client: &Client,
    worker_id: u64,
    workdir: &Path,
    lease: &Lease,
    active: &AtomicBool,
) -> ShardOutcome {
    let infra = |message: String| {
        tracing::warn!(%message, "shard could not run");
        ShardOutcome::InfraError { message }
    };
    let checkout = Checkout::new(workdir);
    let prepared = {
        let (checkout, lease) = (checkout.clone(), lease.clone());
        tokio::task::spawn_blocking(move || {
            checkout.prepare(&lease.repository, &lease.revision, &lease.setup_command, &lease.env)
        })
        .await
    };
    match prepared {
        Ok(Ok(())) => {}
        Ok(Err(error)) => return infra(format!("checkout of {}: {error}", lease.revision)),
        Err(error) => return infra(format!("checkout task: {error}")),
    }
    let files = match ShardFiles::create(workdir, lease) {
        Ok(files) => files,
        Err(error) => return infra(format!("shard files: {error}")),
    };
    let argv = expand_command(&lease.run_command, &lease.tests, &files.ids, &files.junit, &lease.revision);
    let Some((program, arguments)) = argv.split_first() else { return infra("the shard command is empty".into()) };
    let log = match std::fs::File::create(&files.log).and_then(|file| Ok((file.try_clone()?, file))) {
        Ok(pair) => pair,
        Err(error) => return infra(format!("shard log: {error}")),
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(arguments)
        .current_dir(checkout.dir())
        .envs(lease.env.iter().map(|(key, value)| (key, value)))
        .env("GREENLIGHT_BUILD_ID", lease.build_id.to_string())
        .env("GREENLIGHT_LEASE_ID", lease.lease_id.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(log.0)
        .stderr(log.1)
        .kill_on_drop(true);
    crate::process::die_with_parent(&mut command);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => return infra(format!("cannot start {program:?}: {error}")),
    };

    let index: HashMap<&str, usize> =
        lease.tests.iter().enumerate().map(|(position, id)| (id.as_str(), position)).collect();
    let mut reported = HashSet::new();
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            () = tokio::time::sleep(REPORT_POLL) => {
                if !active.load(Ordering::SeqCst) {
                    let _ = child.kill().await;
                    return ShardOutcome::Completed;
                }
                let fresh = new_results(&files.junit, &index, &mut reported, &lease.tests);
                if !fresh.is_empty() {
                    send_results(client, worker_id, lease.lease_id, fresh).await;
                }
            }
        }
    };
    let exit = match &status {
        Ok(status) => status.to_string(),
        Err(error) => format!("unknown status ({error})"),
    };
    let mut last = new_results(&files.junit, &index, &mut reported, &lease.tests);
    let missing: Vec<usize> = (0..lease.tests.len()).filter(|position| !reported.contains(position)).collect();
    if !missing.is_empty() {
        let tail = output_tail(&files.log);
        tracing::warn!(missing = missing.len(), %exit, "runner did not report every leased test");
        for position in missing {
            last.push(TestReport {
                test_id: lease.tests[position].clone(),
                status: TestStatus::Error,
                duration_s: 0.0,
                output: Some(format!(
                    "not reported by the runner, which exited with {exit} (crashed or lost); last output:\n{tail}"
                )),
            });
        }
    }
    if !last.is_empty() {
        send_results(client, worker_id, lease.lease_id, last).await;
    }
    ShardOutcome::Completed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_expand_to_separate_arguments_never_a_shell_string() {
        let tests = vec!["a b; rm -rf /".to_owned(), "t[1-$(x)]".to_owned()];
        let argv = expand_command(
            &[
                "run".into(),
                "--junit={junit}".into(),
                "{ids}".into(),
                "--from".into(),
                "{ids_file}".into(),
                "{revision}".into(),
            ],
            &tests,
            Path::new("/w/ids.txt"),
            Path::new("/w/j.xml"),
            "abc",
        );
        assert_eq!(argv, vec!["run", "--junit=/w/j.xml", "a b; rm -rf /", "t[1-$(x)]", "--from", "/w/ids.txt", "abc"]);
    }
}
