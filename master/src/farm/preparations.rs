//! Preparing a revision on a worker: when a suite is listed by its runner adapter (no
//! suite file, no `list_command`), the master neither checks out nor lists. The first
//! worker that asks for work while a build waits on a revision's listing gets a
//! *preparation* instead of a shard: it checks the revision out, runs the setup (nextest:
//! builds the test archive, once for the whole farm), lists the suite there, uploads the
//! archive (kept in the data directory, the last few revisions only) and the listing
//! (kept in the store per revision, so a retry, a probe or a resumed build of the
//! revision never lists again). Other workers' shards download the archive instead of
//! compiling.
//!
//! The worker that prepared the last revision is preferred for the next one while it is
//! heard from (its `target/` is warm: an incremental build instead of a cold one).
//! A preparation is held like a lease: heartbeats extend it; a holder that goes silent
//! for `lease_timeout_s`, or that asks for work again, loses it, and the next worker to
//! ask gets it. After `max_attempts` holders lost it, the build ends in error.
//! A listing that fails (a compile error, a missing runner) is the build's error, with the
//! runner's output.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use greenlight_shared::api::{BuildSummary, Prepare, PrepareOutcome, WarmUp};
use greenlight_shared::runner::Runner;

use super::{Core, Farm, FarmError};

/// How many revisions' archives the master keeps.
pub const KEPT_ARCHIVES: usize = 3;

/// What a worker lists: a revision's suite, whole (no paths) or, for a tag-selected pytest
/// build or a probe, only the tests under `paths`
/// ([`greenlight_shared::runner::collection_paths`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct Listing {
    pub(super) revision: String,
    pub(super) paths: Vec<String>,
}

impl Listing {
    /// The whole suite at `revision`.
    pub(super) fn whole(revision: &str) -> Listing {
        Listing { revision: revision.to_owned(), paths: Vec::new() }
    }

    /// What `build` was planned from.
    pub(super) fn of(build: &BuildSummary) -> Listing {
        Listing { revision: build.revision.clone(), paths: build.collected.clone() }
    }

    /// The runner that collects it, and runs the shards of the build planned from it: the
    /// configured one, narrowed to its paths.
    pub(super) fn runner(&self, configured: Runner) -> Runner {
        if self.paths.is_empty() {
            return configured;
        }
        configured.collecting(&self.paths)
    }
}

/// The preparations the farm waits on, by what they list, and the listings that failed (until
/// the build that wanted them takes the failure as its error).
#[derive(Debug, Default)]
pub(super) struct Preparations {
    by_listing: BTreeMap<Listing, Preparation>,
    failed: HashMap<Listing, String>,
    /// The worker that prepared the last revision: its target directory is warm, so the
    /// next revision builds there incrementally. It gets the next preparation while it is
    /// heard from; another worker gets it once it has been silent for `lease_timeout_s`.
    last_preparer: Option<u64>,
}

#[derive(Debug)]
struct Preparation {
    prepare_id: u64,
    holder: Option<Holder>,
    /// Holders that lost it (went silent, or could not do it).
    lost: u32,
    last_loss: Option<String>,
    archive_uploaded: bool,
}

#[derive(Debug, Clone, Copy)]
struct Holder {
    worker_id: u64,
    deadline: f64,
}

/// Whether a revision's suite can be planned now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Readiness {
    /// It is read from git or listed on the master, or a worker listed it (or failed to).
    Ready,
    /// A worker is to list it first; the build waits.
    Preparing,
}

impl Farm {
    /// Whether the suite is listed by workers (a runner adapter, no suite file, no
    /// `list_command`).
    pub(super) fn lists_on_workers(&self) -> bool {
        let suite = &self.config.suite;
        suite.file.is_none() && suite.list_command.is_empty() && suite.runner() != Runner::Command
    }

    /// Whether `revision` can be planned now; if a worker must list it first, asks for
    /// that (once) and says so.
    pub(super) fn readiness(&self, listing: &Listing) -> Result<Readiness, FarmError> {
        if !self.lists_on_workers() || self.store.listing(&listing.revision, &listing.paths)?.is_some() {
            return Ok(Readiness::Ready);
        }
        let mut core = self.core();
        if core.preparations.failed.contains_key(listing) {
            return Ok(Readiness::Ready);
        }
        if !core.preparations.by_listing.contains_key(listing) {
            let prepare_id = self.store.next_id("prepare")?;
            tracing::info!(prepare_id, revision = listing.revision, paths = ?listing.paths, "a worker is to prepare the revision");
            core.preparations.by_listing.insert(
                listing.clone(),
                Preparation { prepare_id, holder: None, lost: 0, last_loss: None, archive_uploaded: false },
            );
            drop(core);
            self.work_available.notify_waiters();
        }
        Ok(Readiness::Preparing)
    }

    /// The failure of a listing, if it failed (planning reads it).
    pub(super) fn listing_failure(&self, listing: &Listing) -> Option<String> {
        self.core().preparations.failed.get(listing).cloned()
    }

    /// A build took a listing's failure as its error: a later build lists again.
    pub(super) fn forget_listing_failure(&self, listing: &Listing) {
        self.core().preparations.failed.remove(listing);
    }

    /// A preparation for `worker_id` if one waits for a worker. A preparation it already
    /// holds is given up first (it asks for work: it restarted).
    pub(super) fn take_preparation(&self, core: &mut Core, worker_id: u64, now: f64) -> Option<Prepare> {
        for preparation in core.preparations.by_listing.values_mut() {
            if preparation.holder.is_some_and(|holder| holder.worker_id == worker_id) {
                preparation.holder = None;
                preparation.lost += 1;
                preparation.last_loss = Some("its worker asked for other work".to_owned());
            }
        }
        let scheduler = &self.config.scheduler;
        if let Some(preferred) = core.preparations.last_preparer
            && preferred != worker_id
            && core.workers.get(&preferred).is_some_and(|worker| now - worker.last_seen < scheduler.lease_timeout_s)
        {
            return None;
        }
        let (listing, preparation) =
            core.preparations.by_listing.iter_mut().find(|(_, preparation)| preparation.holder.is_none())?;
        preparation.holder = Some(Holder { worker_id, deadline: now + scheduler.lease_timeout_s });
        tracing::info!(
            worker_id,
            prepare_id = preparation.prepare_id,
            revision = listing.revision,
            paths = ?listing.paths,
            "preparation handed out"
        );
        let suite = &self.config.suite;
        let runner = listing.runner(suite.runner());
        Some(Prepare {
            prepare_id: preparation.prepare_id,
            repository: self.config.repository.url.clone(),
            revision: listing.revision.clone(),
            setup_command: suite.setup_command.clone(),
            env: suite.env_pairs(),
            upload_archive: runner.archive_argv().is_some(),
            warm: suite.warm_runner(),
            runner,
            heartbeat_interval_s: scheduler.heartbeat_interval_s,
            lease_timeout_s: scheduler.lease_timeout_s,
        })
    }

    /// A warm-up for a worker with nothing to do while another worker prepares a
    /// revision: its warm pytest runner collects the suite while the build waits for the
    /// listing, so its first shard of the revision does not. `warm_revision` is what the
    /// worker's runner serves (or last failed to start for): never asked twice.
    pub(super) fn warm_up(&self, core: &Core, warm_revision: Option<&str>) -> Option<WarmUp> {
        let suite = &self.config.suite;
        if !suite.warm_runner() {
            return None;
        }
        // Held, or waiting for the worker that prepared the last one.
        let listing = core.preparations.by_listing.keys().next()?;
        if warm_revision == Some(listing.revision.as_str()) {
            return None;
        }
        Some(WarmUp {
            repository: self.config.repository.url.clone(),
            revision: listing.revision.clone(),
            setup_command: suite.setup_command.clone(),
            env: suite.env_pairs(),
            runner: listing.runner(suite.runner()),
        })
    }

    /// What preparation `prepare_id` lists, if `worker_id` holds it.
    fn held(core: &Core, prepare_id: u64, worker_id: u64) -> Result<Listing, FarmError> {
        let (listing, preparation) = core
            .preparations
            .by_listing
            .iter()
            .find(|(_, preparation)| preparation.prepare_id == prepare_id)
            .ok_or(FarmError::UnknownPreparation(prepare_id))?;
        match preparation.holder {
            Some(holder) if holder.worker_id == worker_id => Ok(listing.clone()),
            _ => Err(FarmError::NotYourPreparation { prepare_id, worker_id }),
        }
    }

    /// A heartbeat of a preparation: whether the worker still holds it.
    pub fn prepare_heartbeat(&self, prepare_id: u64, worker_id: u64) -> Result<bool, FarmError> {
        let now = self.now();
        let mut core = self.core();
        let core = &mut *core;
        Farm::heard_from(core, worker_id, now)?;
        let Some(preparation) =
            core.preparations.by_listing.values_mut().find(|preparation| preparation.prepare_id == prepare_id)
        else {
            return Err(FarmError::UnknownPreparation(prepare_id));
        };
        match &mut preparation.holder {
            Some(holder) if holder.worker_id == worker_id => {
                holder.deadline = now + self.config.scheduler.lease_timeout_s;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Where the archive of `revision` is kept.
    pub fn archive_path(&self, revision: &str) -> PathBuf {
        self.config.data_dir.join("archives").join(format!("{revision}.tar.zst"))
    }

    /// Checks that `worker_id` holds `prepare_id` and may upload its archive; returns the
    /// revision and a fresh temporary path to write the upload to.
    pub fn archive_upload_start(&self, prepare_id: u64, worker_id: u64) -> Result<(String, PathBuf), FarmError> {
        let now = self.now();
        let mut core = self.core();
        Farm::heard_from(&mut core, worker_id, now)?;
        let revision = Farm::held(&core, prepare_id, worker_id)?.revision;
        if self.config.suite.runner().archive_argv().is_none() {
            return Err(FarmError::Invalid(format!("the {} runner has no archive", self.config.suite.runner().name())));
        }
        let directory = self.config.data_dir.join("archives");
        Ok((revision, directory.join(format!("upload-{prepare_id}-{worker_id}.part"))))
    }

    /// The upload at `part` is complete: it becomes the revision's archive (if the worker
    /// still holds the preparation), and archives of older revisions beyond the last
    /// [`KEPT_ARCHIVES`] are deleted. Blocking (file system).
    pub fn archive_upload_done(&self, prepare_id: u64, worker_id: u64, part: &Path) -> Result<(), FarmError> {
        let io = |error: std::io::Error| FarmError::Task(format!("{}: {error}", part.display()));
        let listing = {
            let core = self.core();
            Farm::held(&core, prepare_id, worker_id)
        };
        let listing = match listing {
            Ok(listing) => listing,
            Err(error) => {
                let _ = std::fs::remove_file(part);
                return Err(error);
            }
        };
        std::fs::rename(part, self.archive_path(&listing.revision)).map_err(io)?;
        if let Some(preparation) = self.core().preparations.by_listing.get_mut(&listing) {
            preparation.archive_uploaded = true;
        }
        tracing::info!(prepare_id, worker_id, revision = listing.revision, "archive uploaded");
        self.prune_archives();
        Ok(())
    }

    /// Deletes all but the newest [`KEPT_ARCHIVES`] archives (and stray partial uploads
    /// older than them).
    fn prune_archives(&self) {
        let directory = self.config.data_dir.join("archives");
        let Ok(entries) = std::fs::read_dir(&directory) else { return };
        let mut archives: Vec<(std::time::SystemTime, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter(|entry| entry.file_name().to_string_lossy().ends_with(".tar.zst"))
            .filter_map(|entry| Some((entry.metadata().ok()?.modified().ok()?, entry.path())))
            .collect();
        archives.sort();
        let excess = archives.len().saturating_sub(KEPT_ARCHIVES);
        for (_, path) in archives.into_iter().take(excess) {
            if let Err(error) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), %error, "cannot delete an old archive");
            }
        }
    }

    /// The end of a preparation: a listing (stored for the revision; the build waiting on
    /// it may start), a failure (the build's error), or an infrastructure error (another
    /// worker tries). Not yet durable: the caller flushes.
    pub fn prepare_report(&self, prepare_id: u64, worker_id: u64, outcome: &PrepareOutcome) -> Result<(), FarmError> {
        let now = self.now();
        let mut core = self.core();
        let core = &mut *core;
        Farm::heard_from(core, worker_id, now)?;
        let listing = Farm::held(core, prepare_id, worker_id)?;
        let revision = listing.revision.as_str();
        match outcome {
            PrepareOutcome::Listed { suite } => {
                if let Some(test) = suite.tests.iter().find(|test| test.id.is_empty() || test.id.contains(['\n', '\r']))
                {
                    return Err(FarmError::InvalidListing(format!("test id {:?} is empty or spans lines", test.id)));
                }
                let preparation = &core.preparations.by_listing[&listing];
                if self.config.suite.runner().archive_argv().is_some() && !preparation.archive_uploaded {
                    return Err(FarmError::PreparationIncomplete(format!(
                        "upload the archive of preparation {prepare_id} before its listing"
                    )));
                }
                self.store.put_listing(revision, &listing.paths, suite)?;
                tracing::info!(prepare_id, worker_id, revision, tests = suite.tests.len(), "revision prepared");
            }
            PrepareOutcome::Failed { message } => {
                tracing::warn!(prepare_id, worker_id, revision, message, "the revision cannot be listed");
                core.preparations.failed.insert(listing.clone(), message.clone());
            }
            PrepareOutcome::InfraError { message } => {
                tracing::warn!(prepare_id, worker_id, revision, message, "a worker could not prepare the revision");
                let preparation = core.preparations.by_listing.get_mut(&listing).expect("held above");
                preparation.holder = None;
                preparation.lost += 1;
                preparation.last_loss = Some(message.clone());
                self.give_up_lost_preparations(core);
                self.work_available.notify_waiters();
                self.build_wanted.notify_one();
                return Ok(());
            }
        }
        core.preparations.by_listing.remove(&listing);
        core.preparations.last_preparer = Some(worker_id);
        self.build_wanted.notify_one();
        Ok(())
    }

    /// Time passed: preparations whose holder went silent go to the next worker to ask.
    /// Returns whether anything changed.
    pub(super) fn expire_preparations(&self, core: &mut Core, now: f64) -> bool {
        let mut changed = false;
        for (listing, preparation) in &mut core.preparations.by_listing {
            if let Some(holder) = preparation.holder.filter(|holder| holder.deadline <= now) {
                tracing::warn!(
                    prepare_id = preparation.prepare_id,
                    worker_id = holder.worker_id,
                    revision = listing.revision,
                    "a preparation's worker went silent; another worker gets it"
                );
                preparation.holder = None;
                preparation.lost += 1;
                preparation.last_loss = Some(format!("worker {} went silent", holder.worker_id));
                changed = true;
            }
        }
        if changed {
            self.give_up_lost_preparations(core);
            self.work_available.notify_waiters();
            self.build_wanted.notify_one();
        }
        changed
    }

    /// Preparations lost by `max_attempts` workers become their build's error.
    fn give_up_lost_preparations(&self, core: &mut Core) {
        let max_attempts = self.config.scheduler.max_attempts.max(1);
        let lost: Vec<Listing> = core
            .preparations
            .by_listing
            .iter()
            .filter(|(_, preparation)| preparation.lost >= max_attempts)
            .map(|(listing, _)| listing.clone())
            .collect();
        for listing in lost {
            let preparation = core.preparations.by_listing.remove(&listing).expect("listed above");
            let message = format!(
                "no worker could prepare the revision ({} tried; last: {})",
                preparation.lost,
                preparation.last_loss.unwrap_or_default()
            );
            tracing::error!(revision = listing.revision, message, "preparation given up");
            core.preparations.failed.insert(listing, message);
        }
    }
}
