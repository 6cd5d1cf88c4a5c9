//! The master's storage, behind a narrow interface. [`Store`] offers typed operations
//! (changes, builds, results, shards, duration history, counters) over a [`Kv`] backend
//! of a few ordered trees. Only [`SledKv`] knows sled; [`MemoryKv`] serves tests. Values
//! are JSON; integer keys are big-endian so trees iterate in numeric order.
//!
//! A test result is written with [`Kv::put_new`], keyed by (build, test, attempt): a
//! second write of the same key is refused, so a result is stored exactly once.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use greenlight_shared::api::{BuildSummary, ChangeView, PushView, ShardView, TestResultView};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// How many recent durations of a test the history keeps.
pub const HISTORY_SAMPLES: usize = 5;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed.
    #[error("store backend: {0}")]
    Backend(String),
    /// A stored value could not be decoded.
    #[error("stored value in {tree} is corrupt: {source}")]
    Corrupt {
        /// The tree.
        tree: &'static str,
        /// The decoding error.
        source: serde_json::Error,
    },
}

/// The trees of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tree {
    /// Changes by sequence.
    Changes,
    /// Build summaries by id.
    Builds,
    /// Test results by (build, test id, attempt).
    Results,
    /// Shards by (build, lease).
    Shards,
    /// Recent durations by test id.
    History,
    /// Push hand-offs by build.
    Pushes,
    /// Counters and watermarks by name.
    Meta,
}

impl Tree {
    fn name(self) -> &'static str {
        match self {
            Tree::Changes => "changes",
            Tree::Builds => "builds",
            Tree::Results => "results",
            Tree::Shards => "shards",
            Tree::History => "history",
            Tree::Pushes => "pushes",
            Tree::Meta => "meta",
        }
    }
}

type Entry = (Vec<u8>, Vec<u8>);

/// An ordered key-value backend with a few trees.
pub trait Kv: Send + Sync {
    /// The value at `key`.
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Sets `key` to `value`.
    fn put(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
    /// Sets `key` to `value` only if `key` is absent; returns whether it was written.
    fn put_new(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<bool, StoreError>;
    /// Removes `key`.
    fn remove(&self, tree: Tree, key: &[u8]) -> Result<(), StoreError>;
    /// Entries whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, tree: Tree, prefix: &[u8]) -> Result<Vec<Entry>, StoreError>;
    /// Entries with key `>= start`, in key order, at most `limit`.
    fn scan_from(&self, tree: Tree, start: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError>;
    /// The last `limit` entries, newest (largest key) first.
    fn scan_last(&self, tree: Tree, limit: usize) -> Result<Vec<Entry>, StoreError>;
    /// Makes every write so far durable.
    fn flush(&self) -> Result<(), StoreError>;
}

/// The sled backend: the only code in Greenlight that knows sled.
pub struct SledKv {
    db: sled::Db,
}

fn backend(error: sled::Error) -> StoreError {
    StoreError::Backend(error.to_string())
}

impl SledKv {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<SledKv, StoreError> {
        let db = sled::Config::new().path(dir).flush_every_ms(Some(200)).open().map_err(backend)?;
        Ok(SledKv { db })
    }

    fn tree(&self, tree: Tree) -> Result<sled::Tree, StoreError> {
        self.db.open_tree(tree.name()).map_err(backend)
    }
}

fn collect(iter: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>) -> Result<Vec<Entry>, StoreError> {
    iter.map(|entry| entry.map(|(key, value)| (key.to_vec(), value.to_vec())).map_err(backend)).collect()
}

impl Kv for SledKv {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree(tree)?.get(key).map_err(backend)?.map(|value| value.to_vec()))
    }
    fn put(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.tree(tree)?.insert(key, value).map_err(backend)?;
        Ok(())
    }
    fn remove(&self, tree: Tree, key: &[u8]) -> Result<(), StoreError> {
        self.tree(tree)?.remove(key).map_err(backend)?;
        Ok(())
    }
    fn put_new(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<bool, StoreError> {
        let swapped = self.tree(tree)?.compare_and_swap(key, None as Option<&[u8]>, Some(value)).map_err(backend)?;
        Ok(swapped.is_ok())
    }
    fn scan_prefix(&self, tree: Tree, prefix: &[u8]) -> Result<Vec<Entry>, StoreError> {
        collect(self.tree(tree)?.scan_prefix(prefix))
    }
    fn scan_from(&self, tree: Tree, start: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError> {
        collect(self.tree(tree)?.range(start..).take(limit))
    }
    fn scan_last(&self, tree: Tree, limit: usize) -> Result<Vec<Entry>, StoreError> {
        collect(self.tree(tree)?.iter().rev().take(limit))
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(backend)?;
        Ok(())
    }
}

type MemoryTrees = BTreeMap<(Tree, Vec<u8>), Vec<u8>>;

/// An in-memory backend for tests.
#[derive(Default)]
pub struct MemoryKv {
    trees: Mutex<MemoryTrees>,
}

impl MemoryKv {
    fn entries(&self) -> std::sync::MutexGuard<'_, MemoryTrees> {
        self.trees.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Kv for MemoryKv {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.entries().get(&(tree, key.to_vec())).cloned())
    }
    fn put(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.entries().insert((tree, key.to_vec()), value.to_vec());
        Ok(())
    }
    fn remove(&self, tree: Tree, key: &[u8]) -> Result<(), StoreError> {
        self.entries().remove(&(tree, key.to_vec()));
        Ok(())
    }
    fn put_new(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<bool, StoreError> {
        let mut entries = self.entries();
        let slot = (tree, key.to_vec());
        if entries.contains_key(&slot) {
            return Ok(false);
        }
        entries.insert(slot, value.to_vec());
        Ok(true)
    }
    fn scan_prefix(&self, tree: Tree, prefix: &[u8]) -> Result<Vec<Entry>, StoreError> {
        Ok(self
            .entries()
            .range((tree, prefix.to_vec())..)
            .take_while(|((entry_tree, key), _)| *entry_tree == tree && key.starts_with(prefix))
            .map(|((_, key), value)| (key.clone(), value.clone()))
            .collect())
    }
    fn scan_from(&self, tree: Tree, start: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError> {
        Ok(self
            .entries()
            .range((tree, start.to_vec())..)
            .take_while(|((entry_tree, _), _)| *entry_tree == tree)
            .take(limit)
            .map(|((_, key), value)| (key.clone(), value.clone()))
            .collect())
    }
    fn scan_last(&self, tree: Tree, limit: usize) -> Result<Vec<Entry>, StoreError> {
        Ok(self
            .entries()
            .range((tree, Vec::new())..)
            .take_while(|((entry_tree, _), _)| *entry_tree == tree)
            .map(|((_, key), value)| (key.clone(), value.clone()))
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .take(limit)
            .collect())
    }
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The typed store the rest of the master uses.
#[derive(Clone)]
pub struct Store {
    kv: Arc<dyn Kv>,
    counters: Arc<Mutex<()>>,
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("store records always serialise")
}

fn decode<T: DeserializeOwned>(tree: Tree, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt { tree: tree.name(), source })
}

fn result_key(build_id: u64, test_id: &str, attempt: u32) -> Vec<u8> {
    let mut key = build_id.to_be_bytes().to_vec();
    key.extend_from_slice(test_id.as_bytes());
    key.push(0);
    key.extend_from_slice(&attempt.to_be_bytes());
    key
}

impl Store {
    /// A store over `kv`.
    pub fn new(kv: Arc<dyn Kv>) -> Store {
        Store { kv, counters: Arc::new(Mutex::new(())) }
    }

    /// A store over sled in `dir`.
    pub fn open_sled(dir: &Path) -> Result<Store, StoreError> {
        Ok(Store::new(Arc::new(SledKv::open(dir)?)))
    }

    /// An empty in-memory store.
    pub fn in_memory() -> Store {
        Store::new(Arc::new(MemoryKv::default()))
    }

    /// Increments the counter `name` and returns its new value (the first is 1).
    pub fn next_id(&self, name: &str) -> Result<u64, StoreError> {
        let _guard = self.counters.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = format!("counter/{name}");
        let current =
            self.kv.get(Tree::Meta, key.as_bytes())?.map(|bytes| decode::<u64>(Tree::Meta, &bytes)).transpose()?;
        let next = current.unwrap_or(0) + 1;
        self.kv.put(Tree::Meta, key.as_bytes(), &encode(&next))?;
        Ok(next)
    }

    /// A meta value.
    pub fn meta<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StoreError> {
        self.kv.get(Tree::Meta, name.as_bytes())?.map(|bytes| decode(Tree::Meta, &bytes)).transpose()
    }

    /// Sets a meta value.
    pub fn set_meta<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StoreError> {
        self.kv.put(Tree::Meta, name.as_bytes(), &encode(value))
    }

    /// Every meta value whose name starts with `prefix`.
    pub fn meta_with_prefix<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>, StoreError> {
        self.kv.scan_prefix(Tree::Meta, prefix.as_bytes())?.iter().map(|(_, value)| decode(Tree::Meta, value)).collect()
    }

    /// Removes a meta value.
    pub fn remove_meta(&self, name: &str) -> Result<(), StoreError> {
        self.kv.remove(Tree::Meta, name.as_bytes())
    }

    /// Writes a change.
    pub fn put_change(&self, change: &ChangeView) -> Result<(), StoreError> {
        self.kv.put(Tree::Changes, &change.sequence.to_be_bytes(), &encode(change))
    }

    /// The change with this sequence.
    pub fn change(&self, sequence: u64) -> Result<Option<ChangeView>, StoreError> {
        self.kv.get(Tree::Changes, &sequence.to_be_bytes())?.map(|bytes| decode(Tree::Changes, &bytes)).transpose()
    }

    /// Changes with sequence `>= first`, oldest first, at most `limit`.
    pub fn changes_from(&self, first: u64, limit: usize) -> Result<Vec<ChangeView>, StoreError> {
        self.kv
            .scan_from(Tree::Changes, &first.to_be_bytes(), limit)?
            .iter()
            .map(|(_, value)| decode(Tree::Changes, value))
            .collect()
    }

    /// The newest `limit` changes, newest first.
    pub fn latest_changes(&self, limit: usize) -> Result<Vec<ChangeView>, StoreError> {
        self.kv.scan_last(Tree::Changes, limit)?.iter().map(|(_, value)| decode(Tree::Changes, value)).collect()
    }

    /// Writes a build summary.
    pub fn put_build(&self, build: &BuildSummary) -> Result<(), StoreError> {
        self.kv.put(Tree::Builds, &build.build_id.to_be_bytes(), &encode(build))
    }

    /// A build summary.
    pub fn build(&self, build_id: u64) -> Result<Option<BuildSummary>, StoreError> {
        self.kv.get(Tree::Builds, &build_id.to_be_bytes())?.map(|bytes| decode(Tree::Builds, &bytes)).transpose()
    }

    /// The newest `limit` builds, newest first.
    pub fn latest_builds(&self, limit: usize) -> Result<Vec<BuildSummary>, StoreError> {
        self.kv.scan_last(Tree::Builds, limit)?.iter().map(|(_, value)| decode(Tree::Builds, value)).collect()
    }

    /// Stores a result unless one is already stored for (build, test, attempt); returns
    /// whether it was written.
    pub fn put_result(&self, build_id: u64, result: &TestResultView) -> Result<bool, StoreError> {
        self.kv.put_new(Tree::Results, &result_key(build_id, &result.test_id, result.attempt), &encode(result))
    }

    /// Every stored result of a build, by test id then attempt.
    pub fn results(&self, build_id: u64) -> Result<Vec<TestResultView>, StoreError> {
        self.kv
            .scan_prefix(Tree::Results, &build_id.to_be_bytes())?
            .iter()
            .map(|(_, value)| decode(Tree::Results, value))
            .collect()
    }

    /// The stored attempts of one test in one build, by attempt.
    pub fn results_of_test(&self, build_id: u64, test_id: &str) -> Result<Vec<TestResultView>, StoreError> {
        let mut prefix = build_id.to_be_bytes().to_vec();
        prefix.extend_from_slice(test_id.as_bytes());
        prefix.push(0);
        let mut attempts = Vec::new();
        for (_, value) in self.kv.scan_prefix(Tree::Results, &prefix)? {
            let result: TestResultView = decode(Tree::Results, &value)?;
            // An id that itself continues with a NUL byte shares the prefix: keep exact matches.
            if result.test_id == test_id {
                attempts.push(result);
            }
        }
        Ok(attempts)
    }

    /// Writes a shard.
    pub fn put_shard(&self, build_id: u64, shard: &ShardView) -> Result<(), StoreError> {
        let mut key = build_id.to_be_bytes().to_vec();
        key.extend_from_slice(&shard.lease_id.to_be_bytes());
        self.kv.put(Tree::Shards, &key, &encode(shard))
    }

    /// The shards of a build, in lease order.
    pub fn shards(&self, build_id: u64) -> Result<Vec<ShardView>, StoreError> {
        self.kv
            .scan_prefix(Tree::Shards, &build_id.to_be_bytes())?
            .iter()
            .map(|(_, value)| decode(Tree::Shards, value))
            .collect()
    }

    /// Writes a push hand-off.
    pub fn put_push(&self, push: &PushView) -> Result<(), StoreError> {
        self.kv.put(Tree::Pushes, &push.build_id.to_be_bytes(), &encode(push))
    }

    /// Every push hand-off, oldest build first.
    pub fn pushes(&self) -> Result<Vec<PushView>, StoreError> {
        self.kv.scan_prefix(Tree::Pushes, &[])?.iter().map(|(_, value)| decode(Tree::Pushes, value)).collect()
    }

    /// Adds an observed duration to a test's history.
    pub fn add_duration(&self, test_id: &str, duration_s: f64) -> Result<(), StoreError> {
        if !duration_s.is_finite() || duration_s < 0.0 {
            return Ok(());
        }
        let mut samples = self.durations(test_id)?;
        samples.push(duration_s);
        if samples.len() > HISTORY_SAMPLES {
            samples.remove(0);
        }
        self.kv.put(Tree::History, test_id.as_bytes(), &encode(&samples))
    }

    /// A test's recent durations, oldest first.
    pub fn durations(&self, test_id: &str) -> Result<Vec<f64>, StoreError> {
        Ok(self
            .kv
            .get(Tree::History, test_id.as_bytes())?
            .map(|bytes| decode(Tree::History, &bytes))
            .transpose()?
            .unwrap_or_default())
    }

    /// Adds an observed shard overhead (a shard's runner wall time minus its tests' time)
    /// to the suite's recent samples.
    pub fn add_shard_overhead(&self, suite: &str, overhead_s: f64) -> Result<(), StoreError> {
        if !overhead_s.is_finite() || overhead_s < 0.0 {
            return Ok(());
        }
        let mut samples = self.shard_overheads(suite)?;
        samples.push(overhead_s);
        if samples.len() > OVERHEAD_SAMPLES {
            samples.remove(0);
        }
        self.set_meta(&format!("{SHARD_OVERHEAD}{suite}"), &samples)
    }

    /// The suite's recent shard overheads, oldest first.
    pub fn shard_overheads(&self, suite: &str) -> Result<Vec<f64>, StoreError> {
        Ok(self.meta(&format!("{SHARD_OVERHEAD}{suite}"))?.unwrap_or_default())
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.kv.flush()
    }
}

/// Meta key prefix: the recent shard overheads of a suite.
const SHARD_OVERHEAD: &str = "shard_overhead/";
/// How many shard overheads are kept per suite (the estimate is their median).
const OVERHEAD_SAMPLES: usize = 21;

#[cfg(test)]
mod tests {
    use super::*;
    use greenlight_shared::api::TestStatus;

    fn result(test_id: &str, attempt: u32, status: TestStatus) -> TestResultView {
        TestResultView {
            test_id: test_id.into(),
            attempt,
            status,
            duration_s: 1.0,
            output: None,
            worker: None,
            retried: false,
            flaky: false,
            quarantined: false,
            lease_id: None,
        }
    }

    fn exercise(store: Store) {
        assert_eq!(store.next_id("build").unwrap(), 1);
        assert_eq!(store.next_id("build").unwrap(), 2);
        assert!(store.put_result(1, &result("a", 1, TestStatus::Failed)).unwrap());
        assert!(!store.put_result(1, &result("a", 1, TestStatus::Passed)).unwrap(), "a result is stored once");
        assert!(store.put_result(1, &result("a", 2, TestStatus::Passed)).unwrap());
        assert!(store.put_result(2, &result("a", 1, TestStatus::Passed)).unwrap());
        let stored: Vec<(String, u32, TestStatus)> =
            store.results(1).unwrap().into_iter().map(|r| (r.test_id, r.attempt, r.status)).collect();
        assert_eq!(stored, vec![("a".into(), 1, TestStatus::Failed), ("a".into(), 2, TestStatus::Passed)]);
        assert!(store.put_result(1, &result("a\0b", 1, TestStatus::Passed)).unwrap());
        let attempts: Vec<u32> = store.results_of_test(1, "a").unwrap().iter().map(|r| r.attempt).collect();
        assert_eq!(attempts, vec![1, 2], "only the test's own attempts");
        assert!(store.results_of_test(2, "b").unwrap().is_empty());
        for duration in 1..=7 {
            store.add_duration("t", duration as f64).unwrap();
        }
        assert_eq!(store.durations("t").unwrap(), vec![3.0, 4.0, 5.0, 6.0, 7.0]);
        store.set_meta("last", &"abc").unwrap();
        assert_eq!(store.meta::<String>("last").unwrap().as_deref(), Some("abc"));
    }

    #[test]
    fn memory_store_keeps_results_once_and_bounded_history() {
        exercise(Store::in_memory());
    }

    #[test]
    fn sled_store_behaves_the_same_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        exercise(Store::open_sled(dir.path()).unwrap());
        let reopened = Store::open_sled(dir.path()).unwrap();
        assert_eq!(reopened.next_id("build").unwrap(), 3);
        assert_eq!(reopened.results(1).unwrap().len(), 3);
    }
}
