//! The store's housekeeping after builds end, run off the async threads in small steps
//! (the master's `store_loop`): an ended build's results are packed into a few small
//! values (see [`crate::store::result_format`]), and the results and shards of builds
//! older than the newest `[storage] keep_results_builds`, or ended more than
//! `keep_results_days` ago, are removed. Build summaries, durations, flake records, the
//! gate and culprits are kept for ever; a read of a pruned build's results is answered
//! with [`FarmError::ResultsPruned`].

use super::{Farm, FarmError};

/// The most result or shard entries one retention step removes (one batch per tree), so
/// no step holds the store long.
pub const PRUNE_BATCH: usize = 2000;

impl Farm {
    /// One step of housekeeping: packs one ended build's results, or removes one batch of
    /// an expired build's results and shards. Returns whether there may be more to do.
    /// Blocking (store reads and writes): call it on [`super::blocking`].
    pub fn keep_store(&self) -> Result<bool, FarmError> {
        let Some(newest) = self.store.latest_builds(1)?.into_iter().next().map(|build| build.build_id) else {
            return Ok(false);
        };
        if self.prune_step(newest)? {
            return Ok(true);
        }
        self.pack_step(newest)
    }

    /// Whether this build has ended (or was never stored): it takes no more results.
    fn ended(&self, build_id: u64) -> Result<bool, FarmError> {
        Ok(self.store.build(build_id)?.is_none_or(|build| build.state.is_finished())
            && !self.core().running.contains_key(&build_id))
    }

    /// Packs the oldest ended build not yet packed; the watermark moves over the ended
    /// builds only, so a build still running is packed once it ends.
    fn pack_step(&self, newest: u64) -> Result<bool, FarmError> {
        let first = self.store.results_packed_below()?.max(self.store.results_pruned_below()?).max(1);
        // Below this id every build has ended and is packed.
        let mut watermark = first;
        let mut packed_one = false;
        for build_id in first..=newest {
            if !self.ended(build_id)? {
                continue;
            }
            let packed = self.store.pack_results(build_id)?;
            if watermark == build_id {
                watermark = build_id + 1;
            }
            if packed {
                tracing::debug!(build_id, "results packed");
                packed_one = true;
                break;
            }
        }
        if watermark > self.store.results_packed_below()? {
            self.store.set_results_packed_below(watermark)?;
        }
        let dropped = self.store.drop_running_results_below(watermark)?;
        if dropped > 0 {
            tracing::info!(dropped, "trees of running results left by an interrupted pack dropped");
        }
        Ok(packed_one)
    }

    /// Removes one batch of the oldest build past retention (`[storage]
    /// keep_results_builds` or `keep_results_days`, whichever comes first); returns whether
    /// it did. Builds lose their results oldest first, so a build still running holds back
    /// the ones after it.
    fn prune_step(&self, newest: u64) -> Result<bool, FarmError> {
        let storage = &self.config.storage;
        let oldest = self.store.results_pruned_below()?.max(1);
        if oldest > newest || !self.ended(oldest)? {
            return Ok(false);
        }
        let too_many = storage.keep_results_builds > 0 && oldest + storage.keep_results_builds <= newest;
        let too_old = storage.keep_results_days > 0.0
            && self.store.build(oldest)?.is_none_or(|build| {
                build
                    .finished_at
                    .is_some_and(|finished_at| self.now() - finished_at > storage.keep_results_days * 86_400.0)
            });
        if !too_many && !too_old {
            return Ok(false);
        }
        if self.store.prune_results(oldest, PRUNE_BATCH)? {
            self.store.set_results_pruned_below(oldest + 1)?;
            tracing::info!(build_id = oldest, "results and shards removed (retention)");
        }
        Ok(true)
    }
}
