//! The Greenlight worker: registers with the master, long-polls for work (a lease, or a
//! revision to prepare: see [`prepare`]), runs the shard in a cached checkout, streams per-test results, heartbeats, and finishes the
//! lease; then asks again. A master that goes away is retried with back-off, and a master
//! that forgot the worker (restarted) is registered with again, under the same session
//! (drawn when the process starts, see [`client::Client`]). A name held by another live
//! process is waited for: a restarted worker gets its name back once its old registration
//! has been silent for a lease timeout; a second machine under the same name keeps saying
//! so in its log until one of them is renamed.
#![warn(missing_docs)]

pub mod checkout;
pub mod client;
pub mod junit;
pub mod libtest;
pub mod prepare;
pub mod process;
pub mod shard;
pub mod warm;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use crate::client::{Client, ClientError, Work};

/// How a worker is started.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The master's base URL.
    pub master: String,
    /// The worker token, if the master wants one.
    pub token: Option<String>,
    /// This worker's name.
    pub name: String,
    /// Its directory: the cached checkout and the current shard's files.
    pub workdir: PathBuf,
    /// How long each lease request may wait on the master.
    pub wait_s: f64,
}

/// Why a worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The work directory could not be made.
    #[error("work directory {path}: {source}")]
    Workdir {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The master refused to let this worker in.
    #[error("the master refused registration: {0}")]
    Refused(ClientError),
    /// The master's URL is not one.
    #[error("{0}")]
    MasterUrl(String),
    /// Nothing at the master's URL knows the worker calls.
    #[error("{0}")]
    WrongUrl(ClientError),
}

/// How long a lease's finish is retried while the master is unreachable or answers 5xx.
const FINISH_PATIENCE: Duration = Duration::from_secs(120);

struct Backoff {
    delay: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff { delay: Duration::from_millis(200) }
    }
    async fn wait(&mut self) {
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(Duration::from_secs(5));
    }
    fn reset(&mut self) {
        self.delay = Duration::from_millis(200);
    }
}

/// Works until `shutdown` resolves (a shard in progress is stopped).
pub async fn run(config: WorkerConfig, shutdown: impl Future<Output = ()>) -> Result<(), WorkerError> {
    client::check_master_url(&config.master).map_err(WorkerError::MasterUrl)?;
    std::fs::create_dir_all(&config.workdir)
        .map_err(|source| WorkerError::Workdir { path: config.workdir.clone(), source })?;
    let client = Client::new(&config.master, config.token.clone());
    tokio::select! {
        result = work(&client, &config) => result,
        () = shutdown => {
            tracing::info!(name = %config.name, "worker shutting down");
            Ok(())
        }
    }
}

async fn register(client: &Client, config: &WorkerConfig, backoff: &mut Backoff) -> Result<u64, WorkerError> {
    loop {
        match client.register(&config.name).await {
            Ok(answer) => {
                backoff.reset();
                tracing::info!(name = %config.name, worker_id = answer.worker_id, "registered");
                return Ok(answer.worker_id);
            }
            Err(error @ ClientError::Refused { status: 401 | 403, .. }) => return Err(WorkerError::Refused(error)),
            Err(error @ ClientError::WrongUrl { .. }) => return Err(WorkerError::WrongUrl(error)),
            Err(error) if error.code() == Some("name_in_use") => {
                tracing::warn!(%error, "the name is held by a live worker; asking again until it is free");
                backoff.wait().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot register yet; retrying");
                backoff.wait().await;
            }
        }
    }
}

async fn work(client: &Client, config: &WorkerConfig) -> Result<(), WorkerError> {
    let mut backoff = Backoff::new();
    let mut worker_id = register(client, config, &mut backoff).await?;
    // The pytest process kept between the shards of a revision (warm leases).
    let mut warm = shard::WarmRunners::default();
    loop {
        let lease = match client.lease(worker_id, config.wait_s, warm.warm_revision()).await {
            Ok(lease) => {
                backoff.reset();
                lease
            }
            Err(error) if matches!(error.code(), Some("unknown_worker" | "wrong_session")) => {
                worker_id = register(client, config, &mut backoff).await?;
                continue;
            }
            Err(error) => {
                tracing::warn!(%error, "lease request failed; retrying");
                backoff.wait().await;
                continue;
            }
        };
        let lease = match lease {
            None => continue,
            Some(Work::Prepare(job)) => {
                // A runner kept for another revision goes before the checkout moves.
                let keep = match &job.runner {
                    greenlight_shared::runner::Runner::Pytest { args, .. } => {
                        Some((job.revision.as_str(), args.as_slice()))
                    }
                    _ => None,
                };
                warm.retire_unless(keep).await;
                prepare::run_prepare(client, worker_id, &config.workdir, &job, &mut warm).await;
                backoff.reset();
                continue;
            }
            Some(Work::WarmUp(job)) => {
                warm.warm_up(&config.workdir, &job).await;
                continue;
            }
            Some(Work::Lease(lease)) => lease,
        };
        let run = shard::run_shard(client, worker_id, &config.workdir, &lease, &mut warm).await;
        let mut retry = client::Retry::new(FINISH_PATIENCE);
        loop {
            match client.finish(worker_id, lease.lease_id, run.outcome.clone(), run.runner_wall_s).await {
                Ok(()) => break,
                Err(error) => {
                    tracing::warn!(%error, lease_id = lease.lease_id, "cannot finish the lease");
                    if !retry.again(&error).await {
                        break;
                    }
                }
            }
        }
        backoff.reset();
    }
}
