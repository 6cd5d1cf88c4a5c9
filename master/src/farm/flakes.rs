//! Flakes and quarantine. Every final result of a regular build that ran on a worker
//! counts toward its test's flake record (kept only once the test has flaked); a flake
//! rate above the configured threshold quarantines the test automatically, and an admin
//! may quarantine or release one. A failure culprit finding could not reproduce at its
//! own revision counts as a flake too. Quarantine is input to the scheduler: a quarantined
//! test's failure does not count against its build. Both sets are kept in memory
//! (written through to the store) so that recording a result reads no key per test.

use std::collections::{HashMap, HashSet};

use greenlight_shared::api::{FlakeStats, QuarantineEntry};

use super::{Farm, FarmError};
use crate::store::{FlakeRecord, Store, StoreError};

/// The quarantine, and which tests have a flake record at all.
#[derive(Debug, Default)]
pub(super) struct Flakes {
    quarantine: HashMap<String, QuarantineEntry>,
    recorded: HashSet<String>,
}

impl Flakes {
    pub(super) fn load(store: &Store) -> Result<Flakes, StoreError> {
        Ok(Flakes {
            quarantine: store.quarantine_entries()?.into_iter().map(|entry| (entry.test_id.clone(), entry)).collect(),
            recorded: store.flake_records()?.into_iter().map(|record| record.test_id).collect(),
        })
    }

    /// Whether `test_id` is quarantined at `now`.
    pub(super) fn quarantined(&self, test_id: &str, now: f64) -> bool {
        self.quarantine.get(test_id).is_some_and(|entry| entry.expires_at > now)
    }

    /// The quarantines in force at `now`.
    fn in_force(&self, now: f64) -> impl Iterator<Item = &QuarantineEntry> {
        self.quarantine.values().filter(move |entry| entry.expires_at > now)
    }
}

impl Farm {
    /// Counts a final run of a test in a regular build for its flake rate; quarantines it
    /// when the rate reaches the configured threshold.
    pub(super) fn count_run(&self, flakes: &mut Flakes, test_id: &str, flaky: bool, now: f64) -> Result<(), FarmError> {
        if !flaky && !flakes.recorded.contains(test_id) {
            // Tests that never flaked keep no record: 15k keys a build would be noise.
            return Ok(());
        }
        let mut record = self.store.flake_record(test_id)?.unwrap_or_default();
        record.add_run(flaky, now);
        self.keep_flake_record(flakes, test_id, record, flaky, now)
    }

    /// A test's failure in a regular build turned out flaky (it passed when culprit
    /// finding re-ran it at the same revision): that run, counted as a plain failure when
    /// it ended, counts as a flake.
    pub(super) fn count_late_flake(&self, flakes: &mut Flakes, test_id: &str, now: f64) -> Result<(), FarmError> {
        let mut record = self.store.flake_record(test_id)?.unwrap_or_default();
        // The run was counted as not flaky only if the test had a record then; the newest
        // such run stands for it (the rate is the same whichever it is).
        match record.recent.iter_mut().rev().find(|flaky| !**flaky) {
            Some(run) if flakes.recorded.contains(test_id) => {
                *run = true;
                record.last_flaky_at = Some(now);
            }
            _ => record.add_run(true, now),
        }
        self.keep_flake_record(flakes, test_id, record, true, now)
    }

    fn keep_flake_record(
        &self,
        flakes: &mut Flakes,
        test_id: &str,
        mut record: FlakeRecord,
        flaky: bool,
        now: f64,
    ) -> Result<(), FarmError> {
        record.test_id = test_id.to_owned();
        self.store.put_flake_record(&record)?;
        flakes.recorded.insert(test_id.to_owned());
        let policy = &self.config.quarantine;
        let runs = record.recent.len() as u32;
        let rate = record.rate();
        if flaky
            && policy.flake_rate > 0.0
            && runs >= policy.min_runs
            && rate >= policy.flake_rate
            && !flakes.quarantined(test_id, now)
        {
            let entry = QuarantineEntry {
                test_id: test_id.to_owned(),
                reason: format!("flaked in {} of its last {runs} runs", record.flaky()),
                by: "auto".to_owned(),
                since: now,
                expires_at: now + policy.expires_in_s,
            };
            tracing::warn!(test_id, rate, "test quarantined automatically");
            self.store.put_quarantine(&entry)?;
            flakes.quarantine.insert(test_id.to_owned(), entry);
        }
        Ok(())
    }

    /// Quarantines a test (admin).
    pub fn quarantine(
        &self,
        test_id: &str,
        reason: &str,
        expires_in_s: Option<f64>,
    ) -> Result<QuarantineEntry, FarmError> {
        if test_id.is_empty() || reason.trim().is_empty() {
            return Err(FarmError::Invalid("test_id and reason must not be empty".to_owned()));
        }
        let expires_in_s = expires_in_s.unwrap_or(self.config.quarantine.expires_in_s);
        if !expires_in_s.is_finite() || expires_in_s <= 0.0 || expires_in_s > 366.0 * 24.0 * 3600.0 {
            return Err(FarmError::Invalid(format!("expires_in_s must be within 0..1 year, not {expires_in_s}")));
        }
        let now = self.now();
        let entry = QuarantineEntry {
            test_id: test_id.to_owned(),
            reason: reason.to_owned(),
            by: "admin".to_owned(),
            since: now,
            expires_at: now + expires_in_s,
        };
        let mut core = self.core();
        self.store.put_quarantine(&entry)?;
        core.flakes.quarantine.insert(test_id.to_owned(), entry.clone());
        tracing::info!(test_id, reason, "test quarantined by an admin");
        Ok(entry)
    }

    /// Lifts a quarantine (admin). Returns whether there was one.
    pub fn unquarantine(&self, test_id: &str) -> Result<bool, FarmError> {
        let mut core = self.core();
        self.store.remove_quarantine(test_id)?;
        Ok(core.flakes.quarantine.remove(test_id).is_some())
    }

    /// Quarantines in force, by test id.
    pub fn quarantine_list(&self) -> Vec<QuarantineEntry> {
        let now = self.now();
        let mut entries: Vec<QuarantineEntry> = self.core().flakes.in_force(now).cloned().collect();
        entries.sort_by(|a, b| a.test_id.cmp(&b.test_id));
        entries
    }

    /// Tests that flaked in their recent runs, flakiest first.
    pub fn flaky_tests(&self) -> Result<Vec<FlakeStats>, FarmError> {
        let records: Vec<FlakeRecord> = self.store.flake_records()?;
        let now = self.now();
        let core = self.core();
        let mut stats = Vec::new();
        for record in records.into_iter().filter(|record| record.flaky() > 0) {
            stats.push(FlakeStats {
                quarantined: core.flakes.quarantined(&record.test_id, now),
                flaky: record.flaky(),
                flake_rate: record.rate(),
                runs: record.recent.len() as u32,
                last_flaky_at: record.last_flaky_at,
                test_id: record.test_id,
            });
        }
        stats.sort_by(|a, b| b.flake_rate.total_cmp(&a.flake_rate).then_with(|| a.test_id.cmp(&b.test_id)));
        Ok(stats)
    }
}
