//! The farm's health: what keeps it from testing, with one owner ([`Health`], in the farm's
//! core) and shown in four places: the gate (as warnings: an open gate says nothing about
//! revisions the farm cannot test), the page (through the gate's events), `/metrics` and
//! `GET /api/v1/health`. Three facts feed it:
//!
//! - the data directory's free space, measured before every write a client asks for and by
//!   the tick loop: below `[storage] min_free_bytes` no new build starts, below
//!   `reserve_bytes` every write is refused (503 `disk_full`) before anything is recorded;
//! - the store's own failure (see [`crate::store`]): nothing more is written until a restart;
//! - the poller's last fetch of the watched repository, with git's error when it failed.

use std::collections::BTreeMap;
use std::path::Path;

use greenlight_shared::API_VERSION;
use greenlight_shared::api::{FarmHealth, GateView, HealthKind, HealthProblem};
use greenlight_shared::git::GitError;

use super::{Core, Farm, FarmError};
use crate::store::StoreError;

/// What keeps the farm from testing, kept in the farm's core.
#[derive(Debug, Default)]
pub(super) struct Health {
    problems: BTreeMap<HealthKind, HealthProblem>,
    last_fetch_at: Option<f64>,
    writes_refused: u64,
}

impl Health {
    /// Sets (with its message) or clears the problem of `kind`; returns whether the
    /// problems changed.
    fn set(&mut self, kind: HealthKind, message: Option<String>, now: f64) -> bool {
        match message {
            Some(message) => match self.problems.get_mut(&kind) {
                Some(problem) if problem.message == message => false,
                Some(problem) => {
                    problem.message = message;
                    true
                }
                None => {
                    tracing::warn!(kind = kind.as_str(), %message, "farm health: problem");
                    self.problems.insert(kind, HealthProblem { kind, since: now, message });
                    true
                }
            },
            None => {
                let cleared = self.problems.remove(&kind);
                if let Some(problem) = &cleared {
                    tracing::info!(kind = kind.as_str(), since = problem.since, "farm health: problem gone");
                }
                cleared.is_some()
            }
        }
    }

    /// The problems now, in kind order.
    pub(super) fn problems(&self) -> Vec<HealthProblem> {
        self.problems.values().cloned().collect()
    }
}

/// Bytes free for an unprivileged writer on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    match fs2::available_space(dir) {
        Ok(free) => Some(free),
        Err(error) => {
            tracing::debug!(dir = %dir.display(), %error, "cannot measure free space");
            None
        }
    }
}

/// `bytes` for people (KiB, MiB, GiB).
fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

impl Farm {
    /// Measures the data directory's free space (outside the lock) and sets or clears the
    /// problems it and the store's failure make in the health. Returns the free bytes.
    pub fn measure_health(&self) -> Option<u64> {
        let free = free_bytes(&self.config.data_dir);
        let storage = &self.config.storage;
        let dir = self.config.data_dir.display();
        let disk = free.and_then(|free| {
            if free < storage.reserve_bytes {
                Some(format!(
                    "data_dir {dir} has less than reserve_bytes ({}) free: every write is refused and no build starts until space is freed",
                    human(storage.reserve_bytes)
                ))
            } else if free < storage.min_free_bytes {
                Some(format!(
                    "data_dir {dir} has less than min_free_bytes ({}) free: no new build starts until space is freed (running builds go on)",
                    human(storage.min_free_bytes)
                ))
            } else {
                None
            }
        });
        let store = self.store.failure().map(|failure| {
            format!("the store failed to write ({failure}): nothing more is recorded; restart the master once the cause is fixed")
        });
        if disk.is_none()
            && store.is_none()
            && !self.published_health_problem(&[HealthKind::DiskLow, HealthKind::StoreFailed])
        {
            // Nothing to set and nothing to clear: every write asks, and need not wait
            // for the farm's lock to hear it.
            return free;
        }
        let now = self.now();
        let mut core = self.core();
        let changed =
            core.health.set(HealthKind::DiskLow, disk, now) | core.health.set(HealthKind::StoreFailed, store, now);
        if changed {
            self.gate_changed(&core);
        }
        free
    }

    /// Why a write may not be made now: the store failed, or the data directory has less
    /// than `reserve_bytes` free. Every write a client asks for checks this before the
    /// scheduler hears of it, so a refused write leaves the farm as it was.
    pub fn check_writable(&self) -> Result<(), FarmError> {
        let refusal = self.write_refusal();
        if refusal.is_some() {
            self.core().health.writes_refused += 1;
        }
        refusal.map_or(Ok(()), Err)
    }

    /// As [`Farm::check_writable`], without counting a refusal (the farm's own loops).
    pub fn write_refusal(&self) -> Option<FarmError> {
        let free = self.measure_health();
        if let Some(failure) = self.store.failure() {
            return Some(FarmError::Store(StoreError::Failed(failure)));
        }
        let reserve_bytes = self.config.storage.reserve_bytes;
        free.filter(|&free| free < reserve_bytes).map(|free_bytes| FarmError::DiskFull {
            dir: self.config.data_dir.clone(),
            free_bytes,
            reserve_bytes,
        })
    }

    /// Whether a new build may start: the store works and the data directory has at least
    /// `min_free_bytes` free (else the health says why).
    pub(super) fn may_start_builds(&self) -> bool {
        let free = self.measure_health();
        self.store.failure().is_none() && free.is_none_or(|free| free >= self.config.storage.min_free_bytes)
    }

    /// The poller fetched the watched repository, or could not (`Err`, git's error).
    pub(super) fn fetched(&self, outcome: Result<(), &GitError>) {
        let now = self.now();
        let url = &self.config.repository.url;
        let problem = outcome
            .err()
            .map(|error| format!("the repository {url} cannot be fetched: no new change is seen or tested ({error})"));
        if problem.is_some() {
            self.metrics.poll_errors.inc();
        }
        let mut core = self.core();
        if problem.is_none() {
            core.health.last_fetch_at = Some(now);
        }
        if core.health.set(HealthKind::RepositoryUnreachable, problem, now) {
            self.gate_changed(&core);
        }
    }

    /// Whether the gate as last published shows a problem of one of `kinds`. The core's
    /// health changes it under the farm's lock and publishes it before releasing the lock,
    /// so a problem set is seen here once it is set.
    fn published_health_problem(&self, kinds: &[HealthKind]) -> bool {
        self.published_gate.borrow().health.iter().any(|problem| kinds.contains(&problem.kind))
    }

    /// The farm's health now.
    pub fn health(&self) -> FarmHealth {
        let free = self.measure_health();
        let core = self.core();
        let health = &core.health;
        FarmHealth {
            version: API_VERSION,
            problems: health.problems(),
            data_dir_free_bytes: free,
            min_free_bytes: self.config.storage.min_free_bytes,
            reserve_bytes: self.config.storage.reserve_bytes,
            last_fetch_at: health.last_fetch_at,
            writes_refused: health.writes_refused,
        }
    }

    /// The gate as it is shown: the stored gate with the health's problems as warnings.
    pub(super) fn gate_view(core: &Core) -> GateView {
        GateView { health: core.health.problems(), ..core.gate.clone() }
    }
}
