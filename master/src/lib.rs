//! The Greenlight master: an axum server over a [`farm::Farm`] whose state lives in sled.
//! [`run`] serves on a given listener until `shutdown` resolves; `greenlight master` and
//! the tests both call it. Background tasks poll the watched branch, start builds when
//! changes are queued and no build runs, expire leases whose heartbeats stopped, and keep
//! the store (ended builds' results packed, old ones removed: `farm/retention.rs`).
#![warn(missing_docs)]

pub mod api;
pub mod changes;
pub mod clock;
pub mod config;
pub mod culprit;
pub mod farm;
pub mod gate;
pub mod junit;
pub mod metrics;
pub mod notify;
pub mod push;
pub mod secret;
pub mod store;
pub mod trace;

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::farm::{Farm, FarmError};
use crate::store::{Store, StoreError};

/// Why the master stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    /// The data directory cannot be created or written.
    #[error("data_dir {dir} is not usable: {source}")]
    DataDir {
        /// The directory.
        dir: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The store could not be opened.
    #[error("cannot open the store in {dir}: {source}")]
    Store {
        /// The directory.
        dir: std::path::PathBuf,
        /// The error.
        source: StoreError,
    },
    /// The farm could not start.
    #[error(transparent)]
    Farm(#[from] FarmError),
    /// Serving failed.
    #[error("server: {0}")]
    Serve(#[from] std::io::Error),
}

/// Serves the master on `listener` until `shutdown` resolves ([`open`], then
/// [`Master::serve`]).
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MasterError> {
    open(config).await?.serve(listener, shutdown).await
}

/// A master whose data directory is checked and locked and whose interrupted builds are
/// recovered: ready to serve.
pub struct Master {
    farm: Arc<Farm>,
}

/// Prepares the master's data directory (created, written to, its store locked against a
/// second master) and recovers what a previous run left, before anything listens: a
/// directory that cannot be used is an error naming it.
pub async fn open(config: Config) -> Result<Master, MasterError> {
    let data_dir = config.data_dir.clone();
    let unusable = |source| MasterError::DataDir { dir: data_dir.clone(), source };
    std::fs::create_dir_all(&data_dir).map_err(unusable)?;
    let probe = data_dir.join(".greenlight-write-check");
    std::fs::write(&probe, b"").and_then(|()| std::fs::remove_file(&probe)).map_err(unusable)?;
    let db_dir = data_dir.join("db");
    let store = Store::open_sled(&db_dir, config.storage.cache_bytes)
        .map_err(|source| MasterError::Store { dir: db_dir.clone(), source })?;
    let farm = Arc::new(Farm::new(config, store)?);
    let recovering = Arc::clone(&farm);
    farm::blocking(move || recovering.recover()).await??;
    farm.flush().await?;
    Ok(Master { farm })
}

impl Master {
    /// Serves on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), MasterError> {
        serve(self.farm, listener, shutdown).await
    }
}

async fn serve(
    farm: Arc<Farm>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MasterError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let tasks = vec![
        tokio::spawn(poll_loop(Arc::clone(&farm), stop_rx.clone())),
        tokio::spawn(build_loop(Arc::clone(&farm), stop_rx.clone())),
        tokio::spawn(tick_loop(Arc::clone(&farm), stop_rx.clone())),
        tokio::spawn(push_loop(Arc::clone(&farm), stop_rx.clone())),
        tokio::spawn(store_loop(Arc::clone(&farm), stop_rx.clone())),
        tokio::spawn(history_loop(Arc::clone(&farm), stop_rx.clone())),
        tokio::spawn(notify::run(Arc::clone(&farm), page_base(farm.config(), &listener)?, stop_rx.clone())),
    ];
    tracing::info!(address = %listener.local_addr()?, "master listening");
    let app = api::router(api::AppState { farm: Arc::clone(&farm) });
    let closing = Arc::clone(&farm);
    let shutdown = async move {
        shutdown.await;
        closing.close_streams();
    };
    // Requests still in flight get SHUTDOWN_GRACE once shutdown begins, however stuck the
    // store is: the master stops on SIGTERM whatever its store is doing.
    let mut shutting_down = farm.closing();
    let grace = async move {
        let _ = shutting_down.wait_for(|closing| *closing).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown).into_future();
    let served = tokio::select! {
        served = server => served,
        () = grace => {
            tracing::warn!(grace_s = SHUTDOWN_GRACE.as_secs(), "requests still running at shutdown; stopping without them");
            Ok(())
        }
    };
    let _ = stop_tx.send(true);
    for task in tasks {
        if tokio::time::timeout(SHUTDOWN_GRACE, task).await.is_err() {
            tracing::warn!("a background task did not stop in time; stopping without it");
        }
    }
    // The tasks have stopped and no request runs: what the last results taught is written.
    if let Err(error) = farm.store().write_history() {
        tracing::warn!(%error, "writing the last observed durations failed");
    }
    if let Err(error) = farm.flush().await {
        tracing::error!(%error, "the last flush failed; a restart resumes from what the store holds");
    }
    served.map_err(MasterError::Serve)
}

/// The page's address in links: `public_url`, else `http://` and the address listened on.
fn page_base(config: &Config, listener: &TcpListener) -> Result<String, std::io::Error> {
    match &config.public_url {
        Some(url) => Ok(url.trim_end_matches('/').to_owned()),
        None => Ok(format!("http://{}", listener.local_addr()?)),
    }
}

/// How long requests and background tasks may take to end once shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Resolves once `stop` says so.
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

async fn poll_loop(farm: Arc<Farm>, mut stop: watch::Receiver<bool>) {
    let interval = Duration::from_secs_f64(farm.config().repository.poll_interval_s);
    loop {
        // A fetch writes into the data directory, and new changes into the store.
        if let Some(refusal) = farm.write_refusal() {
            tracing::debug!(%refusal, "not polling: the master cannot write");
        } else if let Err(error) = farm.poll().await {
            tracing::warn!(%error, "polling the repository failed");
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = stopped(&mut stop) => return,
        }
    }
}

async fn build_loop(farm: Arc<Farm>, mut stop: watch::Receiver<bool>) {
    loop {
        if let Err(error) = farm.start_next_build().await {
            tracing::error!(%error, "starting a build failed");
        }
        if let Err(error) = farm.flush_verdicts().await {
            tracing::error!(%error, "flushing a build's end failed");
        }
        tokio::select! {
            () = farm.build_wanted.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = stopped(&mut stop) => return,
        }
    }
}

async fn tick_loop(farm: Arc<Farm>, mut stop: watch::Receiver<bool>) {
    loop {
        // Expiring a lease writes its shard's end: not while the master cannot write. The
        // health's free space is measured here too.
        let tick = match farm.write_refusal() {
            Some(refusal) => Err(refusal),
            None => farm.tick(),
        };
        match tick {
            Ok(false) => {}
            Ok(true) => {
                if let Err(error) = farm.flush().await {
                    tracing::error!(%error, "flushing after expiring leases failed");
                }
            }
            Err(error @ (FarmError::DiskFull { .. } | FarmError::Store(StoreError::Failed(_)))) => {
                tracing::debug!(%error, "not expiring leases: the master cannot write");
            }
            Err(error) => tracing::error!(%error, "expiring leases failed"),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            () = stopped(&mut stop) => return,
        }
    }
}

/// Keeps the store (packs ended builds' results, removes those past retention) until
/// `stop`: one bounded step at a time on a blocking thread, 20 ms apart while there is
/// work, then a look every 5 s.
/// Writes the durations observed since the last pass into the tests' histories, every
/// [`HISTORY_INTERVAL`] until `stop` (see the store's `Histories`).
async fn history_loop(farm: Arc<Farm>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(HISTORY_INTERVAL) => {}
            () = stopped(&mut stop) => return,
        }
        if farm.write_refusal().is_some() {
            continue;
        }
        let writing = Arc::clone(&farm);
        let written = farm::blocking(move || writing.store().write_history().map_err(FarmError::from)).await;
        if let Err(error) = written.and_then(|written| written) {
            tracing::warn!(%error, "writing observed durations failed");
        }
    }
}

/// How often observed durations are written into the tests' histories: at most this much
/// of what results taught is lost if the master is killed.
const HISTORY_INTERVAL: Duration = Duration::from_secs(1);

async fn store_loop(farm: Arc<Farm>, mut stop: watch::Receiver<bool>) {
    loop {
        let more = if farm.write_refusal().is_some() {
            false
        } else {
            let keeping = Arc::clone(&farm);
            match farm::blocking(move || keeping.keep_store()).await {
                Ok(Ok(more)) => more,
                Ok(Err(error)) | Err(error) => {
                    tracing::warn!(%error, "store housekeeping failed");
                    false
                }
            }
        };
        let pause = if more { Duration::from_millis(20) } else { Duration::from_secs(5) };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = stopped(&mut stop) => return,
        }
    }
}

/// Hands green revisions to the push stage until `stop`, one at a time, newest first
/// (see [`push`]); testing goes on meanwhile.
async fn push_loop(farm: Arc<Farm>, mut stop: watch::Receiver<bool>) {
    let config = farm.config().push.clone();
    let branch = farm.config().repository.branch.clone();
    loop {
        match push::next(farm.store(), farm.now()) {
            Ok(Some(mut hand_off)) => {
                // The green build it comes from must be on disk before anything deploys it.
                if let Err(error) = farm.flush().await {
                    tracing::error!(%error, "flushing before a push failed");
                }
                let mut delay = Duration::from_secs_f64(config.backoff_s);
                loop {
                    let outcome = push::attempt(&config, &branch, &hand_off.revision, hand_off.build_id).await;
                    push::attempted(&mut hand_off, outcome, config.attempts, farm.now());
                    if let Err(error) = push::record(farm.store(), &hand_off) {
                        tracing::error!(%error, "recording a push failed");
                    }
                    if !hand_off.state.is_open() {
                        break;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = stopped(&mut stop) => return,
                    }
                    delay *= 2;
                }
                tracing::info!(build_id = hand_off.build_id, revision = %hand_off.revision, state = hand_off.state.as_str(), "push handed off");
                continue;
            }
            Ok(None) => {}
            Err(error) => tracing::error!(%error, "reading the push queue failed"),
        }
        tokio::select! {
            () = farm.push_wanted.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
            () = stopped(&mut stop) => return,
        }
    }
}
