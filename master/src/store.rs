//! The master's storage, behind a narrow interface. [`Store`] offers typed operations
//! (changes, builds, results, shards, duration history, counters) over a [`Kv`] backend
//! of a few ordered trees. Only [`SledKv`] knows sled; [`MemoryKv`] serves tests. Values
//! are JSON, except test results (binary, see [`result_format`]); integer keys are
//! big-endian so trees iterate in numeric order.
//!
//! A test result is written with [`Kv::put_new`], keyed by (build, test, attempt): a
//! second write of the same key is refused, so a result is stored exactly once. Once a
//! build has ended its results are packed into a few values ([`Store::pack_results`]), and
//! builds past retention lose their results and shards ([`Store::prune_results`]); their
//! summaries and everything else stay.
//!
//! **A failed write fails the store.** sled keeps its first I/O error (a full disk) and
//! refuses everything after it, and what it held in memory then may never reach the disk.
//! The [`Store`] keeps that fact too: after a backend write or flush fails, every later
//! write and flush is refused at once with [`StoreError::Failed`] (never reaching the
//! backend, which could hang), so nothing written afterwards can be acknowledged as
//! stored. A restarted master resumes from what the disk holds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use greenlight_scheduler::core::LogRatios;
use greenlight_shared::api::{
    BuildSummary, ChangeView, GateView, PushView, QuarantineEntry, ShardView, TestResultView,
};
use greenlight_shared::suite::SuiteFile;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::culprit::Bisection;

pub mod compact;
pub mod result_format;

use self::result_format::{
    CHUNK_KEY_LEN, chunk_first_test_id, chunk_key, decode_entry, encode_chunks, encode_result, result_key, test_prefix,
};

/// How many recent durations of a test the history keeps.
pub const HISTORY_SAMPLES: usize = 5;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed.
    #[error("store backend: {0}")]
    Backend(String),
    /// Another process (or a store not yet fully closed) holds the database's lock.
    #[error("{dir} is in use by another process (is another master running with this data_dir?)")]
    InUse {
        /// The database directory.
        dir: PathBuf,
    },
    /// An earlier write failed: the store takes no more writes until the master restarts.
    #[error("the store failed earlier ({0}); restart the master once the cause is fixed")]
    Failed(String),
    /// A stored value could not be decoded.
    #[error("stored value in {tree} is corrupt: {reason}")]
    Corrupt {
        /// The tree.
        tree: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// The trees of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tree {
    /// Changes by sequence.
    Changes,
    /// Build summaries by id.
    Builds,
    /// Ended builds' test results, packed (see [`Store::pack_results`]), and results
    /// stored after their build ended, by (build, test id, attempt).
    Results,
    /// A running build's test results by (build, test id, attempt): a tree of its own,
    /// dropped whole once the build's results are packed into [`Tree::Results`].
    ///
    /// Why a tree a build: sled reclaims the log space of a page only when a segment's
    /// live bytes fall below half, and a build's results written one by one into a tree
    /// shared with every other build, then removed one by one when packed, left the log
    /// 10–17 times the size of the live data (662–721 bytes on disk per stored result
    /// over the load bench). Dropping a tree frees its pages at once: see BENCHMARKS.md.
    RunningResults(u64),
    /// Shards by (build, lease), without their test ids: what changes while a shard runs.
    Shards,
    /// The test ids of shards by (build, lease, chunk), in chunks of at
    /// most [`LARGE_CHUNK`] bytes, written when the shard is leased or its tests change
    /// (see [`Store::put_shard`]).
    ShardTests,
    /// Recent durations by test id.
    History,
    /// Push hand-offs by build.
    Pushes,
    /// Counters and watermarks by name.
    Meta,
    /// Large records (a build's selection, a revision's listing) by name, cut into chunks
    /// of at most [`LARGE_CHUNK`] bytes: see [`Store::put_large`].
    Large,
}

impl Tree {
    fn name(self) -> &'static str {
        match self {
            Tree::Changes => "changes",
            Tree::Builds => "builds",
            Tree::Results => "results",
            Tree::RunningResults(_) => "running_results",
            Tree::Shards => "shards",
            Tree::ShardTests => "shard_tests",
            Tree::History => "history",
            Tree::Pushes => "pushes",
            Tree::Meta => "meta",
            Tree::Large => "large",
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
    /// Sets every `puts` entry and removes every `removes` key, all or none.
    fn apply_batch(&self, tree: Tree, puts: &[Entry], removes: &[Vec<u8>]) -> Result<(), StoreError>;
    /// Entries whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, tree: Tree, prefix: &[u8]) -> Result<Vec<Entry>, StoreError>;
    /// Entries with key `>= start`, in key order, at most `limit`.
    fn scan_from(&self, tree: Tree, start: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError>;
    /// The last `limit` entries, newest (largest key) first.
    fn scan_last(&self, tree: Tree, limit: usize) -> Result<Vec<Entry>, StoreError>;
    /// Makes every write so far durable.
    fn flush(&self) -> Result<(), StoreError>;
    /// Removes a tree and everything in it (nothing if it does not exist).
    fn drop_tree(&self, tree: Tree) -> Result<(), StoreError>;
    /// The builds that have a [`Tree::RunningResults`], in id order.
    fn running_result_trees(&self) -> Result<Vec<u64>, StoreError>;
}

/// How long opening a store waits for a lock held by a closing handle.
const LOCK_WAIT: Duration = Duration::from_secs(3);

/// The cache a sled store keeps in memory when not told otherwise (`[storage]
/// cache_bytes`): sled's own default (1 GiB) is what a long-running master grew to. sled
/// holds about twice its nominal cache: through the load bench, the master's RSS was
/// 240–280 MB with 64 MiB and 200–235 MB with 32 MiB (BENCHMARKS.md).
pub const DEFAULT_CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// The sled backend: the only code in Greenlight that knows sled.
pub struct SledKv {
    db: sled::Db,
}

fn backend(error: sled::Error) -> StoreError {
    StoreError::Backend(error.to_string())
}

impl SledKv {
    /// Opens (or creates) the database in `dir`, keeping at most about `cache_bytes` of it
    /// in memory (sled's page cache; the process holds more: sled's index and buffers).
    ///
    /// sled releases its file lock from a background thread some moments after the last
    /// handle is dropped (spacejam/sled#1234), so a store closed and reopened in one process
    /// can find its own lock still held: the lock is waited for up to [`LOCK_WAIT`] before the
    /// directory is reported in use.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<SledKv, StoreError> {
        SledKv::open_waiting(dir, cache_bytes, LOCK_WAIT)
    }

    fn open_waiting(dir: &Path, cache_bytes: u64, wait: Duration) -> Result<SledKv, StoreError> {
        compact::finish_interrupted(dir)?;
        let deadline = Instant::now() + wait;
        let mut pause = Duration::from_millis(5);
        loop {
            let config = sled::Config::new()
                .path(dir)
                .cache_capacity(cache_bytes)
                .flush_every_ms(Some(200))
                .use_compression(compresses(dir))
                .compression_factor(COMPRESSION_LEVEL);
            match config.open() {
                Ok(db) => return Ok(SledKv { db }),
                Err(error) if error.to_string().contains("could not acquire lock") => {
                    if Instant::now() >= deadline {
                        return Err(StoreError::InUse { dir: dir.to_path_buf() });
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                Err(error) => return Err(backend(error)),
            }
        }
    }

    /// The sled tree of `tree`, created if it does not exist.
    fn tree(&self, tree: Tree) -> Result<sled::Tree, StoreError> {
        self.db.open_tree(SledKv::tree_name(tree)).map_err(backend)
    }

    /// The sled tree of `tree` to read from: `None` for a build's running results that
    /// were never written (a read must not create a tree).
    fn tree_to_read(&self, tree: Tree) -> Result<Option<sled::Tree>, StoreError> {
        if let Tree::RunningResults(_) = tree {
            let name = SledKv::tree_name(tree);
            if !self.db.tree_names().iter().any(|existing| existing.as_ref() == name.as_bytes()) {
                return Ok(None);
            }
        }
        self.tree(tree).map(Some)
    }

    fn tree_name(tree: Tree) -> String {
        match tree {
            Tree::RunningResults(build_id) => format!("{RUNNING_RESULTS_PREFIX}{build_id}"),
            tree => tree.name().to_owned(),
        }
    }
}

/// The zstd level sled compresses the log with: the cheapest. Over the load bench it
/// stored a result in a quarter of the bytes (BENCHMARKS.md, "Storage and API under load").
const COMPRESSION_LEVEL: i32 = 1;

/// Whether the sled database in `dir` compresses its log: a new one does. One created
/// without (by a master before compression) keeps that, as sled refuses to open a database
/// with the other setting; `greenlight compact` rewrites it compressed (see [`compact`]).
fn compresses(dir: &Path) -> bool {
    // sled's `conf` is a few text lines and a binary checksum.
    match std::fs::read(dir.join("conf")) {
        Ok(conf) => String::from_utf8_lossy(&conf).lines().any(|line| line.trim() == "use_compression: true"),
        Err(_) => true,
    }
}

/// The names of sled's trees of running results: this and the build id in decimal.
const RUNNING_RESULTS_PREFIX: &str = "running_results/";

fn collect(iter: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>) -> Result<Vec<Entry>, StoreError> {
    iter.map(|entry| entry.map(|(key, value)| (key.to_vec(), value.to_vec())).map_err(backend)).collect()
}

impl Kv for SledKv {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(tree) = self.tree_to_read(tree)? else { return Ok(None) };
        Ok(tree.get(key).map_err(backend)?.map(|value| value.to_vec()))
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
    fn apply_batch(&self, tree: Tree, puts: &[Entry], removes: &[Vec<u8>]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for key in removes {
            batch.remove(key.as_slice());
        }
        for (key, value) in puts {
            batch.insert(key.as_slice(), value.as_slice());
        }
        self.tree(tree)?.apply_batch(batch).map_err(backend)
    }
    fn scan_prefix(&self, tree: Tree, prefix: &[u8]) -> Result<Vec<Entry>, StoreError> {
        let Some(tree) = self.tree_to_read(tree)? else { return Ok(Vec::new()) };
        collect(tree.scan_prefix(prefix))
    }
    fn scan_from(&self, tree: Tree, start: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError> {
        let Some(tree) = self.tree_to_read(tree)? else { return Ok(Vec::new()) };
        collect(tree.range(start..).take(limit))
    }
    fn scan_last(&self, tree: Tree, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let Some(tree) = self.tree_to_read(tree)? else { return Ok(Vec::new()) };
        collect(tree.iter().rev().take(limit))
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(backend)?;
        Ok(())
    }
    fn drop_tree(&self, tree: Tree) -> Result<(), StoreError> {
        self.db.drop_tree(SledKv::tree_name(tree)).map_err(backend)?;
        Ok(())
    }
    fn running_result_trees(&self) -> Result<Vec<u64>, StoreError> {
        let mut builds: Vec<u64> = self
            .db
            .tree_names()
            .iter()
            .filter_map(|name| std::str::from_utf8(name).ok()?.strip_prefix(RUNNING_RESULTS_PREFIX)?.parse().ok())
            .collect();
        builds.sort_unstable();
        Ok(builds)
    }
}

type MemoryTrees = BTreeMap<(Tree, Vec<u8>), Vec<u8>>;

/// An in-memory backend for tests.
#[derive(Default)]
pub struct MemoryKv {
    trees: Mutex<MemoryTrees>,
    /// While set, writes and flushes fail as a full disk makes sled's fail.
    pub fail_writes: std::sync::atomic::AtomicBool,
}

impl MemoryKv {
    fn refuse_if_failing(&self) -> Result<(), StoreError> {
        if self.fail_writes.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Backend("No space left on device (os error 28)".to_owned()));
        }
        Ok(())
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, MemoryTrees> {
        self.trees.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Kv for MemoryKv {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.entries().get(&(tree, key.to_vec())).cloned())
    }
    fn put(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.refuse_if_failing()?;
        self.entries().insert((tree, key.to_vec()), value.to_vec());
        Ok(())
    }
    fn remove(&self, tree: Tree, key: &[u8]) -> Result<(), StoreError> {
        self.refuse_if_failing()?;
        self.entries().remove(&(tree, key.to_vec()));
        Ok(())
    }
    fn put_new(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<bool, StoreError> {
        self.refuse_if_failing()?;
        let mut entries = self.entries();
        let slot = (tree, key.to_vec());
        if entries.contains_key(&slot) {
            return Ok(false);
        }
        entries.insert(slot, value.to_vec());
        Ok(true)
    }
    fn apply_batch(&self, tree: Tree, puts: &[Entry], removes: &[Vec<u8>]) -> Result<(), StoreError> {
        self.refuse_if_failing()?;
        let mut entries = self.entries();
        for key in removes {
            entries.remove(&(tree, key.clone()));
        }
        for (key, value) in puts {
            entries.insert((tree, key.clone()), value.clone());
        }
        Ok(())
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
        self.refuse_if_failing()
    }
    fn drop_tree(&self, tree: Tree) -> Result<(), StoreError> {
        self.refuse_if_failing()?;
        self.entries().retain(|(entry_tree, _), _| *entry_tree != tree);
        Ok(())
    }
    fn running_result_trees(&self) -> Result<Vec<u64>, StoreError> {
        let mut builds: Vec<u64> = self
            .entries()
            .keys()
            .filter_map(|(tree, _)| match tree {
                Tree::RunningResults(build_id) => Some(*build_id),
                _ => None,
            })
            .collect();
        builds.dedup();
        Ok(builds)
    }
}

/// A backend whose first failed write fails it for good (see the module's introduction).
struct FailStop {
    inner: Arc<dyn Kv>,
    /// The first write or flush error, once there was one.
    failure: Mutex<Option<String>>,
}

impl FailStop {
    fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Runs a write unless the store already failed; a backend error fails it.
    fn write<T>(&self, write: impl FnOnce(&dyn Kv) -> Result<T, StoreError>) -> Result<T, StoreError> {
        if let Some(failure) = self.failure() {
            return Err(StoreError::Failed(failure));
        }
        let written = write(&*self.inner);
        if let Err(StoreError::Backend(error)) = &written {
            let mut failure = self.failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if failure.is_none() {
                tracing::error!(%error, "a store write failed: the store takes no more writes");
                *failure = Some(error.clone());
            }
        }
        written
    }
}

impl Kv for FailStop {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(tree, key)
    }
    fn put(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.write(|kv| kv.put(tree, key, value))
    }
    fn put_new(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<bool, StoreError> {
        self.write(|kv| kv.put_new(tree, key, value))
    }
    fn remove(&self, tree: Tree, key: &[u8]) -> Result<(), StoreError> {
        self.write(|kv| kv.remove(tree, key))
    }
    fn apply_batch(&self, tree: Tree, puts: &[Entry], removes: &[Vec<u8>]) -> Result<(), StoreError> {
        self.write(|kv| kv.apply_batch(tree, puts, removes))
    }
    fn scan_prefix(&self, tree: Tree, prefix: &[u8]) -> Result<Vec<Entry>, StoreError> {
        self.inner.scan_prefix(tree, prefix)
    }
    fn scan_from(&self, tree: Tree, start: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError> {
        self.inner.scan_from(tree, start, limit)
    }
    fn scan_last(&self, tree: Tree, limit: usize) -> Result<Vec<Entry>, StoreError> {
        self.inner.scan_last(tree, limit)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.write(|kv| kv.flush())
    }
    fn drop_tree(&self, tree: Tree) -> Result<(), StoreError> {
        self.write(|kv| kv.drop_tree(tree))
    }
    fn running_result_trees(&self) -> Result<Vec<u64>, StoreError> {
        self.inner.running_result_trees()
    }
}

/// The typed store the rest of the master uses.
#[derive(Clone)]
pub struct Store {
    kv: Arc<FailStop>,
    counters: Arc<Mutex<()>>,
    histories: Arc<Histories>,
}

/// Durations observed and not yet written to [`Tree::History`].
///
/// A results report only adds its tests' durations here: reading, growing and writing
/// back one history per result cost the ingest path a read and a write per result, each
/// in a different leaf of the tree. [`Store::write_history`] writes what gathered in one
/// pass in key order, each test once (the master does so every second and at shutdown);
/// [`Store::durations`] reads the stored samples and these together, so nothing reads
/// stale. A crash loses at most the observations not yet written: history is an
/// estimate, unlike the results it came from, which are durable when acknowledged.
#[derive(Default)]
struct Histories {
    pending: Mutex<std::collections::HashMap<String, Vec<f64>>>,
    /// Held for reading while a history is read, for writing while the pending
    /// observations move into the tree: no reader sees them twice or not at all.
    moving: std::sync::RwLock<()>,
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("store records always serialise")
}

fn decode<T: DeserializeOwned>(tree: Tree, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|error| StoreError::Corrupt { tree: tree.name(), reason: error.to_string() })
}

/// The first byte of a history stored as binary: the samples follow as little-endian
/// `f64`s. Histories written before are JSON arrays (their first byte is `[`) and still read.
const SAMPLES_BINARY: u8 = 1;

/// A test's recent durations as stored: a tag byte and 8 bytes a sample (JSON took ~15).
fn encode_samples(samples: &[f64]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(1 + 8 * samples.len());
    bytes.push(SAMPLES_BINARY);
    for sample in samples {
        bytes.extend_from_slice(&sample.to_le_bytes());
    }
    bytes
}

fn decode_samples(bytes: &[u8]) -> Result<Vec<f64>, StoreError> {
    match bytes.split_first() {
        Some((&SAMPLES_BINARY, samples)) if samples.len() % 8 == 0 => Ok(samples
            .chunks_exact(8)
            .map(|sample| f64::from_le_bytes(sample.try_into().expect("chunks of 8 bytes")))
            .collect()),
        _ => decode(Tree::History, bytes),
    }
}

/// Appends `newer` samples to a history, keeping the last [`HISTORY_SAMPLES`].
fn grow_history(samples: &mut Vec<f64>, newer: &[f64]) {
    samples.extend_from_slice(newer);
    let excess = samples.len().saturating_sub(HISTORY_SAMPLES);
    samples.drain(..excess);
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The results of a build's entries in the results tree (`entries`: packed chunks, loose
/// results) and in its tree of running results, by test id then attempt, each once.
fn merge_results(build_id: u64, entries: &[Entry], running: &[Entry]) -> Result<Vec<TestResultView>, StoreError> {
    let chunks = entries.iter().filter(|(key, _)| key.len() == CHUNK_KEY_LEN).count();
    let mut results = Vec::with_capacity(entries.len() + running.len());
    for (key, value) in entries.iter().chain(running) {
        results.extend(decode_results(key, value)?);
    }
    if (chunks > 0 && entries.len() > chunks) || (!running.is_empty() && !entries.is_empty()) {
        // Results stored after the pack, or a running build's results in both trees (an
        // older master wrote them into the results tree): merged in key order, once each.
        sort_and_dedup(build_id, &mut results);
    }
    Ok(results)
}

/// Puts results of one build read from two places in key order, each (test, attempt) once.
fn sort_and_dedup(build_id: u64, results: &mut Vec<TestResultView>) {
    results.sort_by_cached_key(|result| result_key(build_id, &result.test_id, result.attempt));
    results.dedup_by(|later, earlier| later.test_id == earlier.test_id && later.attempt == earlier.attempt);
}

/// The results an entry of the results tree holds (one, or a packed build's).
fn decode_results(key: &[u8], value: &[u8]) -> Result<Vec<TestResultView>, StoreError> {
    decode_entry(key, value)
        .map_err(|error| StoreError::Corrupt { tree: Tree::Results.name(), reason: error.to_string() })
}

impl Store {
    /// A store over `kv`.
    pub fn new(kv: Arc<dyn Kv>) -> Store {
        Store {
            kv: Arc::new(FailStop { inner: kv, failure: Mutex::new(None) }),
            counters: Arc::new(Mutex::new(())),
            histories: Arc::new(Histories::default()),
        }
    }

    /// Why the store takes no more writes, once a write failed.
    pub fn failure(&self) -> Option<String> {
        self.kv.failure()
    }

    /// Fails the store for `reason` (a flush that never came back): no more writes.
    pub fn fail(&self, reason: &str) {
        let mut failure = self.kv.failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if failure.is_none() {
            tracing::error!(reason, "the store failed: it takes no more writes");
            *failure = Some(reason.to_owned());
        }
    }

    /// A store over sled in `dir` with sled's cache bounded to `cache_bytes`.
    pub fn open_sled(dir: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        Ok(Store::new(Arc::new(SledKv::open(dir, cache_bytes)?)))
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
    fn meta<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StoreError> {
        self.kv.get(Tree::Meta, name.as_bytes())?.map(|bytes| decode(Tree::Meta, &bytes)).transpose()
    }

    /// Sets a meta value.
    fn set_meta<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StoreError> {
        self.kv.put(Tree::Meta, name.as_bytes(), &encode(value))
    }

    /// Every meta value whose name starts with `prefix`.
    fn meta_with_prefix<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>, StoreError> {
        self.kv.scan_prefix(Tree::Meta, prefix.as_bytes())?.iter().map(|(_, value)| decode(Tree::Meta, value)).collect()
    }

    /// Removes a meta value.
    fn remove_meta(&self, name: &str) -> Result<(), StoreError> {
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

    /// Stores a result of an ended build unless one is already stored for (build, test,
    /// attempt); returns whether it was written. It joins the build's packed results when
    /// the build is packed again (see [`Store::pack_results`]).
    pub fn put_result(&self, build_id: u64, result: &TestResultView) -> Result<bool, StoreError> {
        let key = result_key(build_id, &result.test_id, result.attempt);
        if self.results_packed(build_id)? {
            let packed = self.results(build_id)?;
            if packed.iter().any(|stored| stored.test_id == result.test_id && stored.attempt == result.attempt) {
                return Ok(false);
            }
        } else if self.kv.get(Tree::RunningResults(build_id), &key)?.is_some() {
            return Ok(false);
        }
        self.kv.put_new(Tree::Results, &key, &encode_result(result))
    }

    /// Stores a result of a running build (into its [`Tree::RunningResults`]) unless one is
    /// already stored for (build, test, attempt); returns whether it was written. A running
    /// build is never packed (the housekeeping packs ended builds only), so no pack is
    /// looked up first.
    pub fn put_running_result(&self, build_id: u64, result: &TestResultView) -> Result<bool, StoreError> {
        self.kv.put_new(
            Tree::RunningResults(build_id),
            &result_key(build_id, &result.test_id, result.attempt),
            &encode_result(result),
        )
    }

    /// Every stored result of a build, by test id then attempt; none once pruned (see
    /// [`Store::results_pruned`]).
    pub fn results(&self, build_id: u64) -> Result<Vec<TestResultView>, StoreError> {
        let (entries, running) = self.stored_results(build_id)?;
        merge_results(build_id, &entries, &running)
    }

    /// A build's entries in the results tree, and in its tree of running results unless it
    /// is packed: a packed build's running results, if any are left, were packed with it
    /// (their tree is dropped right after the pack, and by the housekeeping after a crash).
    fn stored_results(&self, build_id: u64) -> Result<(Vec<Entry>, Vec<Entry>), StoreError> {
        let prefix = build_id.to_be_bytes();
        let entries = self.kv.scan_prefix(Tree::Results, &prefix)?;
        let packed = entries.iter().any(|(key, _)| key.len() == CHUNK_KEY_LEN);
        let running = if packed { Vec::new() } else { self.kv.scan_prefix(Tree::RunningResults(build_id), &prefix)? };
        Ok((entries, running))
    }

    /// The stored attempts of one test in one build, by attempt.
    pub fn results_of_test(&self, build_id: u64, test_id: &str) -> Result<Vec<TestResultView>, StoreError> {
        if self.results_packed(build_id)? {
            return self.packed_results_of_test(build_id, test_id);
        }
        let prefix = test_prefix(build_id, test_id);
        let mut attempts = Vec::new();
        let mut entries = self.kv.scan_prefix(Tree::Results, &prefix)?;
        let in_both = !entries.is_empty();
        entries.extend(self.kv.scan_prefix(Tree::RunningResults(build_id), &prefix)?);
        for (key, value) in entries {
            // An id that itself continues with a NUL byte shares the prefix: keep exact matches.
            attempts.extend(decode_results(&key, &value)?.into_iter().filter(|result| result.test_id == test_id));
        }
        if in_both {
            sort_and_dedup(build_id, &mut attempts);
        }
        Ok(attempts)
    }

    /// [`Store::results_of_test`] of a packed build: only the chunks whose range of test
    /// ids holds it are decoded (all of them for an id with a NUL byte, whose key order
    /// need not be its order as a string).
    fn packed_results_of_test(&self, build_id: u64, test_id: &str) -> Result<Vec<TestResultView>, StoreError> {
        let corrupt = |error: result_format::FormatError| StoreError::Corrupt {
            tree: Tree::Results.name(),
            reason: error.to_string(),
        };
        let entries = self.kv.scan_prefix(Tree::Results, &build_id.to_be_bytes())?;
        let mut firsts = Vec::with_capacity(entries.len());
        for (key, value) in &entries {
            firsts.push(if key.len() == CHUNK_KEY_LEN { chunk_first_test_id(value).map_err(corrupt)? } else { None });
        }
        let mut attempts = Vec::new();
        for (index, (key, value)) in entries.iter().enumerate() {
            let wanted = if key.len() != CHUNK_KEY_LEN || test_id.contains('\0') {
                true
            } else {
                let starts_at_or_before = firsts[index].as_deref().is_some_and(|first| first <= test_id);
                let next_first = firsts[index + 1..].iter().flatten().next();
                starts_at_or_before && next_first.is_none_or(|next| test_id <= next.as_str())
            };
            if wanted {
                attempts.extend(decode_results(key, value)?.into_iter().filter(|result| result.test_id == test_id));
            }
        }
        attempts.sort_by_key(|result| result.attempt);
        Ok(attempts)
    }

    /// Whether a build's results are packed (see [`Store::pack_results`]).
    pub fn results_packed(&self, build_id: u64) -> Result<bool, StoreError> {
        Ok(self.kv.get(Tree::Results, &chunk_key(build_id, 0))?.is_some())
    }

    /// Packs an ended build's results into a few chunks (see [`result_format`]), in one
    /// atomic batch with the removal of their own entries from the results tree (and of the
    /// chunks of an earlier pack), then drops the build's [`Tree::RunningResults`]; returns
    /// whether there was anything to pack. Only for a build that takes no more results:
    /// one stored while it is packed could be stored twice.
    pub fn pack_results(&self, build_id: u64) -> Result<bool, StoreError> {
        let (entries, running) = self.stored_results(build_id)?;
        if running.is_empty() && entries.iter().all(|(key, _)| key.len() == CHUNK_KEY_LEN) {
            self.kv.drop_tree(Tree::RunningResults(build_id))?;
            return Ok(false);
        }
        let results = merge_results(build_id, &entries, &running)?;
        let chunks: Vec<Entry> = encode_chunks(&results)
            .into_iter()
            .enumerate()
            .map(|(index, chunk)| (chunk_key(build_id, index as u32), chunk))
            .collect();
        let new_keys: std::collections::BTreeSet<&Vec<u8>> = chunks.iter().map(|(key, _)| key).collect();
        let replaced: Vec<Vec<u8>> =
            entries.into_iter().map(|(key, _)| key).filter(|key| !new_keys.contains(key)).collect();
        self.kv.apply_batch(Tree::Results, &chunks, &replaced)?;
        // A crash here leaves the tree to the housekeeping: the pack is what is read.
        self.kv.drop_tree(Tree::RunningResults(build_id))?;
        Ok(true)
    }

    /// Drops the [`Tree::RunningResults`] of builds below `build_id` (ended and packed, or
    /// pruned: what a crash between a pack and its drop leaves); returns how many.
    pub fn drop_running_results_below(&self, build_id: u64) -> Result<usize, StoreError> {
        let stale: Vec<u64> =
            self.kv.running_result_trees()?.into_iter().filter(|&running| running < build_id).collect();
        for &running in &stale {
            self.kv.drop_tree(Tree::RunningResults(running))?;
        }
        Ok(stale.len())
    }

    /// Removes up to `limit` of a build's stored results (entries: a chunk counts as one)
    /// and shards, one batch per tree; returns whether none is left. The build's summary
    /// stays.
    pub fn prune_results(&self, build_id: u64, limit: usize) -> Result<bool, StoreError> {
        let mut done = true;
        for tree in [Tree::Results, Tree::Shards, Tree::ShardTests] {
            // One more than a batch, to know whether it is the last: never the whole build.
            let prefix = build_id.to_be_bytes();
            let keys: Vec<Vec<u8>> = self
                .kv
                .scan_from(tree, &prefix, limit + 1)?
                .into_iter()
                .map(|(key, _)| key)
                .take_while(|key| key.starts_with(&prefix))
                .collect();
            done &= keys.len() <= limit;
            let batch: Vec<Vec<u8>> = keys.into_iter().take(limit).collect();
            if !batch.is_empty() {
                self.kv.apply_batch(tree, &[], &batch)?;
            }
        }
        if done {
            self.kv.drop_tree(Tree::RunningResults(build_id))?;
        }
        Ok(done)
    }

    /// Whether retention removed this build's results and shards (its summary stays).
    pub fn results_pruned(&self, build_id: u64) -> Result<bool, StoreError> {
        Ok(build_id < self.results_pruned_below()?)
    }

    /// Builds below this id have had their results and shards removed by retention.
    pub fn results_pruned_below(&self) -> Result<u64, StoreError> {
        Ok(self.meta(keys::RESULTS_PRUNED_BELOW)?.unwrap_or(0))
    }

    /// Records that every build below `build_id` has had its results removed.
    pub fn set_results_pruned_below(&self, build_id: u64) -> Result<(), StoreError> {
        self.set_meta(keys::RESULTS_PRUNED_BELOW, &build_id)
    }

    /// Builds below this id have had their results packed (or had none, or were pruned).
    pub fn results_packed_below(&self) -> Result<u64, StoreError> {
        Ok(self.meta(keys::RESULTS_PACKED_BELOW)?.unwrap_or(0))
    }

    /// Records that every build below `build_id` has had its results packed.
    pub fn set_results_packed_below(&self, build_id: u64) -> Result<(), StoreError> {
        self.set_meta(keys::RESULTS_PACKED_BELOW, &build_id)
    }

    /// Writes a shard whole: its state under (build, lease), its test ids apart, in chunks.
    /// Its reproduce line is not stored: it is written out from the ids when read.
    ///
    /// Why apart: a shard's ids run to kilobytes, and the shard's
    /// state changes while it runs (it ends, its worker's runner time comes in). Written
    /// whole with each change, under the farm's lock, a lease's end cost 2–8 ms of sled
    /// node rewrites (sled rewrites the node holding a key, and the shards of a build share
    /// nodes) while every other request waited.
    pub fn put_shard(&self, build_id: u64, shard: &ShardView) -> Result<(), StoreError> {
        self.put_shard_state(build_id, &shard.without_test_ids())?;
        self.put_chunked(Tree::ShardTests, &shard_key(build_id, shard.lease_id), &encode(&shard.test_ids))
    }

    /// Writes what changed in a shard whose tests did not (since [`Store::put_shard`] wrote
    /// it): its state, counts, times. `shard`'s test ids are not written.
    pub fn put_shard_state(&self, build_id: u64, shard: &ShardView) -> Result<(), StoreError> {
        let state = if shard.test_ids.is_empty() && shard.reproduce.is_empty() {
            encode(shard)
        } else {
            encode(&shard.without_test_ids())
        };
        self.kv.put(Tree::Shards, &shard_key(build_id, shard.lease_id), &state)
    }

    /// The shards of a build, in lease order, with their test ids.
    pub fn shards(&self, build_id: u64) -> Result<Vec<ShardView>, StoreError> {
        let prefix = build_id.to_be_bytes();
        let mut tests: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for (key, chunk) in self.kv.scan_prefix(Tree::ShardTests, &prefix)? {
            tests.entry(key[..16].to_vec()).or_default().extend_from_slice(&chunk);
        }
        self.kv
            .scan_prefix(Tree::Shards, &prefix)?
            .into_iter()
            .map(|(key, state)| with_tests(decode(Tree::Shards, &state)?, tests.get(&key)))
            .collect()
    }

    /// One shard of a build, with its test ids.
    pub fn shard(&self, build_id: u64, lease_id: u64) -> Result<Option<ShardView>, StoreError> {
        let key = shard_key(build_id, lease_id);
        let Some(state) = self.kv.get(Tree::Shards, &key)? else { return Ok(None) };
        let tests = self.chunked(Tree::ShardTests, &key)?;
        with_tests(decode(Tree::Shards, &state)?, tests.as_ref()).map(Some)
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
    pub fn add_duration(&self, test_id: &str, duration_s: f64) {
        self.add_durations(&[(test_id, duration_s)]);
    }

    /// Adds a batch of observed durations (a results report's) to their tests' histories;
    /// [`Store::write_history`] stores them. A negative or non-finite duration is no
    /// observation.
    pub fn add_durations(&self, observed: &[(&str, f64)]) {
        let mut pending = lock(&self.histories.pending);
        for &(test_id, duration_s) in observed {
            if !duration_s.is_finite() || duration_s < 0.0 {
                continue;
            }
            match pending.get_mut(test_id) {
                Some(samples) => grow_history(samples, &[duration_s]),
                None => {
                    pending.insert(test_id.to_owned(), vec![duration_s]);
                }
            }
        }
    }

    /// Writes the observed durations not yet stored into their tests' histories, in one
    /// batch; returns how many tests it wrote. Not yet durable: the caller flushes.
    pub fn write_history(&self) -> Result<usize, StoreError> {
        let _moving = self.histories.moving.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut observed: Vec<(String, Vec<f64>)> =
            std::mem::take(&mut *lock(&self.histories.pending)).into_iter().collect();
        if observed.is_empty() {
            return Ok(0);
        }
        observed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut puts = Vec::with_capacity(observed.len());
        for (test_id, new) in &observed {
            let mut samples = self.stored_durations(test_id)?;
            grow_history(&mut samples, new);
            puts.push((test_id.as_bytes().to_vec(), encode_samples(&samples)));
        }
        if let Err(error) = self.kv.apply_batch(Tree::History, &puts, &[]) {
            // Not written: kept for the next pass (the store refuses writes from now on
            // anyway, but the readers keep seeing them).
            let mut pending = lock(&self.histories.pending);
            for (test_id, mut samples) in observed {
                if let Some(newer) = pending.remove(&test_id) {
                    grow_history(&mut samples, &newer);
                }
                pending.insert(test_id, samples);
            }
            return Err(error);
        }
        Ok(puts.len())
    }

    /// A test's recent durations, oldest first.
    pub fn durations(&self, test_id: &str) -> Result<Vec<f64>, StoreError> {
        let _moving = self.histories.moving.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut samples = self.stored_durations(test_id)?;
        if let Some(pending) = lock(&self.histories.pending).get(test_id) {
            grow_history(&mut samples, pending);
        }
        Ok(samples)
    }

    fn stored_durations(&self, test_id: &str) -> Result<Vec<f64>, StoreError> {
        Ok(self
            .kv
            .get(Tree::History, test_id.as_bytes())?
            .map(|bytes| decode_samples(&bytes))
            .transpose()?
            .unwrap_or_default())
    }

    /// Adds what a shard cost besides its tests (from its grant to its last result, less
    /// the tests' durations) to the suite's recent samples of its kind: a worker's first
    /// shard of a build (start-up included) or a later one.
    pub fn add_shard_cost(&self, suite: &str, first_of_worker: bool, cost_s: f64) -> Result<(), StoreError> {
        if !cost_s.is_finite() || cost_s < 0.0 {
            return Ok(());
        }
        let mut samples = self.shard_costs(suite, first_of_worker)?;
        samples.push(cost_s);
        if samples.len() > COST_SAMPLES {
            samples.remove(0);
        }
        self.set_meta(&shard_cost_key(suite, first_of_worker), &samples)
    }

    /// The suite's recent shard costs of one kind, oldest first.
    pub fn shard_costs(&self, suite: &str, first_of_worker: bool) -> Result<Vec<f64>, StoreError> {
        Ok(self.meta(&shard_cost_key(suite, first_of_worker))?.unwrap_or_default())
    }

    /// Records what a worker's tests showed of its speed, under its name (`[count, sum,
    /// squares]` of [`LogRatios`]).
    pub fn put_worker_ratios(&self, name: &str, ratios: &LogRatios) -> Result<(), StoreError> {
        self.set_meta(&format!("{}{name}", keys::WORKER_RATIOS), &[ratios.count, ratios.sum, ratios.squares])
    }

    /// What the worker named `name` showed of its speed, if it ever reported a test with
    /// history.
    pub fn worker_ratios(&self, name: &str) -> Result<Option<LogRatios>, StoreError> {
        let sums: Option<[f64; 3]> = self.meta(&format!("{}{name}", keys::WORKER_RATIOS))?;
        Ok(sums.map(|[count, sum, squares]| LogRatios { count, sum, squares }))
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.kv.flush()
    }

    /// One page of a build's stored results: at most `limit` of those `keep` accepts, in
    /// the order of [`Store::results`], after the result of (test id, attempt) `after`
    /// (from the first without). A page costs what it reads: a running build's entries
    /// are scanned from the cursor; a packed build's chunks wholly before the cursor are
    /// skipped undecoded (by their first test ids), and decoding stops once the page is full.
    pub fn results_after(
        &self,
        build_id: u64,
        after: Option<(&str, u32)>,
        limit: usize,
        mut keep: impl FnMut(&TestResultView) -> bool,
    ) -> Result<Vec<TestResultView>, StoreError> {
        let start = after.map(|(test_id, attempt)| result_key(build_id, test_id, attempt));
        let is_after = |result: &TestResultView| {
            start.as_ref().is_none_or(|start| result_key(build_id, &result.test_id, result.attempt) > *start)
        };
        let mut page = Vec::new();
        if limit == 0 {
            return Ok(page);
        }
        if self.results_packed(build_id)? {
            let entries = self.kv.scan_prefix(Tree::Results, &build_id.to_be_bytes())?;
            let cursor_id = after.map(|(test_id, _)| test_id);
            let loose = entries.iter().any(|(key, _)| key.len() != CHUNK_KEY_LEN);
            if loose || cursor_id.is_some_and(|id| id.contains('\0')) {
                // Results stored after the pack, or an id whose key order is not its order
                // as a string: the whole build, in order.
                return Ok(self.results(build_id)?.into_iter().filter(is_after).filter(keep).take(limit).collect());
            }
            // The first chunk that may hold a result after the cursor: the last one whose
            // first test id comes before the cursor's (a test's attempts may straddle two
            // chunks, so a chunk starting with the cursor's test may have some before it).
            let mut first = 0;
            if let Some(cursor_id) = cursor_id {
                for (index, (_, value)) in entries.iter().enumerate() {
                    let chunk_first = chunk_first_test_id(value).map_err(|error| StoreError::Corrupt {
                        tree: Tree::Results.name(),
                        reason: error.to_string(),
                    })?;
                    if chunk_first.is_some_and(|id| id.as_str() >= cursor_id) {
                        break;
                    }
                    first = index;
                }
            }
            for (key, value) in &entries[first..] {
                for result in decode_results(key, value)? {
                    if is_after(&result) && keep(&result) {
                        page.push(result);
                        if page.len() == limit {
                            return Ok(page);
                        }
                    }
                }
            }
            return Ok(page);
        }
        let prefix = build_id.to_be_bytes();
        if self.kv.scan_from(Tree::Results, &prefix, 1)?.first().is_some_and(|(key, _)| key.starts_with(&prefix)) {
            // An unpacked build with results in the results tree: stored after it ended, or
            // by an older master. The whole build, merged, in order.
            return Ok(self.results(build_id)?.into_iter().filter(is_after).filter(keep).take(limit).collect());
        }
        // A running build: one entry a result, in key order from the cursor on.
        const BATCH: usize = 1024;
        let mut from = start.clone().map_or_else(
            || prefix.to_vec(),
            |mut key| {
                key.push(0);
                key
            },
        );
        loop {
            let entries = self.kv.scan_from(Tree::RunningResults(build_id), &from, BATCH)?;
            let complete = entries.len() < BATCH;
            for (key, value) in entries {
                if !key.starts_with(&prefix) {
                    return Ok(page);
                }
                for result in decode_results(&key, &value)? {
                    if is_after(&result) && keep(&result) {
                        page.push(result);
                        if page.len() == limit {
                            return Ok(page);
                        }
                    }
                }
                from = key;
                from.push(0);
            }
            if complete {
                return Ok(page);
            }
        }
    }
}

/// How many shard costs of each kind are kept per suite (the estimate is their median).
const COST_SAMPLES: usize = 21;

fn shard_cost_key(suite: &str, first_of_worker: bool) -> String {
    let prefix = if first_of_worker { keys::FIRST_SHARD_COST } else { keys::SHARD_OVERHEAD };
    format!("{prefix}{suite}")
}

/// The longest chunk of a large record: small enough that sled keeps every node of the
/// tree in its log (see [`Store::put_large`]).
const LARGE_CHUNK: usize = 4096;

/// The key prefix of a large record's chunks: its name and a NUL.
fn large_prefix(name: &str) -> Vec<u8> {
    let mut prefix = name.as_bytes().to_vec();
    prefix.push(0);
    prefix
}

fn shard_key(build_id: u64, lease_id: u64) -> Vec<u8> {
    let mut key = build_id.to_be_bytes().to_vec();
    key.extend_from_slice(&lease_id.to_be_bytes());
    key
}

/// A stored shard state with its test ids, if they were stored apart; a shard an older
/// master wrote whole has them already.
fn with_tests(mut shard: ShardView, tests: Option<&Vec<u8>>) -> Result<ShardView, StoreError> {
    if let Some(tests) = tests {
        shard.test_ids = decode(Tree::ShardTests, tests)?;
    }
    Ok(shard)
}

/// How many listings the store keeps (a revision's whole one and those of some paths).
pub const KEPT_LISTINGS: usize = 50;

/// The store's name of a listing: the revision, then each path it was collected from.
fn listing_key(revision: &str, paths: &[String]) -> String {
    std::iter::once(revision).chain(paths.iter().map(String::as_str)).collect::<Vec<_>>().join("\n")
}

/// Recent runs a flake rate is computed over.
pub const FLAKE_WINDOW: usize = 50;

/// The names of the meta tree's keys: the store's whole layout besides its typed trees.
/// The strings are what data directories already hold; they never change.
mod keys {
    /// The sequence of the oldest change no build covers yet.
    pub const NEXT_UNBUILT: &str = "next_unbuilt_change";
    /// Prefix: the last revision seen on a branch.
    pub const LAST_SEEN: &str = "last_seen/";
    /// Prefix: culprit findings under way, by red build.
    pub const BISECTION: &str = "bisection/";
    /// Prefix: red builds whose culprit finding is still to start.
    pub const CULPRIT_WANTED: &str = "culprit_wanted/";
    /// Prefix: the tests a running build selected, so a restarted master resumes it.
    pub const SELECTION: &str = "selection/";
    /// The next lease id, so a restarted master never reuses one.
    pub const NEXT_LEASE: &str = "next_lease";
    /// Regular builds since the last full run.
    pub const BUILDS_SINCE_FULL_RUN: &str = "builds_since_full_run";
    /// When the last full run started (Unix seconds).
    pub const LAST_FULL_RUN_AT: &str = "last_full_run_at";
    /// The build id of the newest revision pushed.
    pub const LAST_PUSHED: &str = "last_pushed_build";
    /// Prefix: a test's recent runs, for its flake rate.
    pub const FLAKE: &str = "flake/";
    /// Prefix: a quarantined test.
    pub const QUARANTINE: &str = "quarantine/";
    /// An admin asked for a full run of the branch head.
    pub const FORCE_FULL_RUN: &str = "force_full_run";
    /// Prefix: the gate of a branch.
    pub const GATE: &str = "gate/";
    /// Prefix: the recent costs of a suite's shards besides their tests, workers' first
    /// shards of a build apart.
    pub const SHARD_OVERHEAD: &str = "shard_overhead/";
    /// Prefix: the same for workers' first shards of a build (start-up included).
    pub const FIRST_SHARD_COST: &str = "first_shard_cost/";
    /// `worker_ratios/<name>`: what a worker's tests showed of its speed
    /// ([`greenlight_scheduler::core::LogRatios`]), kept across its registrations and the
    /// master's restarts.
    pub const WORKER_RATIOS: &str = "worker_ratios/";
    /// `listing/<revision>`: the suite a worker listed at the revision (runner adapters);
    /// `listing/<revision>\n<path>\n<path>…` what it listed under those paths only.
    pub const LISTING: &str = "listing/";
    /// `listing_order/<sequence>`: the revision of the n-th listing kept, oldest first.
    pub const LISTING_ORDER: &str = "listing_order/";
    /// Builds below this id have had their results and shards removed by retention.
    pub const RESULTS_PRUNED_BELOW: &str = "results_pruned_below";
    /// Builds below this id have had their results packed into one value each.
    pub const RESULTS_PACKED_BELOW: &str = "results_packed_below";
}

/// A test's recent runs in regular builds (`true` for a run that flaked), kept once it
/// has flaked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct FlakeRecord {
    /// The test.
    pub test_id: String,
    /// Its last [`FLAKE_WINDOW`] runs, oldest first.
    pub recent: std::collections::VecDeque<bool>,
    /// When it last flaked (Unix seconds).
    pub last_flaky_at: Option<f64>,
}

impl FlakeRecord {
    /// Runs that flaked.
    pub fn flaky(&self) -> u32 {
        self.recent.iter().filter(|&&flaky| flaky).count() as u32
    }

    /// Flaky runs over runs (0 without runs).
    pub fn rate(&self) -> f64 {
        f64::from(self.flaky()) / (self.recent.len().max(1) as f64)
    }

    /// Adds a run, forgetting the oldest beyond the window.
    pub fn add_run(&mut self, flaky: bool, now: f64) {
        self.recent.push_back(flaky);
        if self.recent.len() > FLAKE_WINDOW {
            self.recent.pop_front();
        }
        if flaky {
            self.last_flaky_at = Some(now);
        }
    }
}

/// The meta tree, typed: every record besides the typed trees has its accessor here.
impl Store {
    /// The sequence of the oldest change no build covers yet (1 at first).
    pub fn next_unbuilt_change(&self) -> Result<u64, StoreError> {
        Ok(self.meta(keys::NEXT_UNBUILT)?.unwrap_or(1))
    }

    /// Sets the oldest change no build covers yet.
    pub fn set_next_unbuilt_change(&self, sequence: u64) -> Result<(), StoreError> {
        self.set_meta(keys::NEXT_UNBUILT, &sequence)
    }

    /// Queues the changes from `first` on again (a build covering them did not finish).
    pub fn requeue_changes_from(&self, first: u64) -> Result<(), StoreError> {
        let next = self.next_unbuilt_change()?;
        self.set_next_unbuilt_change(next.min(first))
    }

    /// The last revision seen on `branch`.
    pub fn last_seen(&self, branch: &str) -> Result<Option<String>, StoreError> {
        self.meta(&format!("{}{branch}", keys::LAST_SEEN))
    }

    /// Records the last revision seen on `branch`.
    pub fn set_last_seen(&self, branch: &str, revision: &str) -> Result<(), StoreError> {
        self.set_meta(&format!("{}{branch}", keys::LAST_SEEN), &revision)
    }

    /// Culprit findings under way.
    pub fn bisections(&self) -> Result<Vec<Bisection>, StoreError> {
        self.meta_with_prefix(keys::BISECTION)
    }

    /// Writes a culprit finding under way.
    pub fn put_bisection(&self, bisection: &Bisection) -> Result<(), StoreError> {
        self.set_meta(&format!("{}{}", keys::BISECTION, bisection.build_id), bisection)
    }

    /// Removes the culprit finding of red build `build_id`.
    pub fn remove_bisection(&self, build_id: u64) -> Result<(), StoreError> {
        self.remove_meta(&format!("{}{build_id}", keys::BISECTION))
    }

    /// Red builds whose culprit finding is still to start, oldest first.
    pub fn culprit_searches_wanted(&self) -> Result<Vec<u64>, StoreError> {
        let mut wanted: Vec<u64> = self.meta_with_prefix(keys::CULPRIT_WANTED)?;
        wanted.sort_unstable();
        Ok(wanted)
    }

    /// Asks for the culprit of red build `build_id` to be found.
    pub fn want_culprit_search(&self, build_id: u64) -> Result<(), StoreError> {
        self.set_meta(&format!("{}{build_id:020}", keys::CULPRIT_WANTED), &build_id)
    }

    /// The culprit finding of `build_id` has started (or is not needed).
    pub fn culprit_search_started(&self, build_id: u64) -> Result<(), StoreError> {
        self.remove_meta(&format!("{}{build_id:020}", keys::CULPRIT_WANTED))
    }

    /// Writes a large record as chunks of at most [`LARGE_CHUNK`] bytes, keyed by its name,
    /// a 0 byte and the chunk's number, in one batch that also removes its former chunks.
    ///
    /// Why: sled 0.34 rewrites a whole tree node now and then when any key in it changes,
    /// and writes a node over 128 KiB as a file of its own under `db/blobs` that it does
    /// not delete when the node is replaced. A megabyte-long selection among the meta
    /// tree's counters made every lease rewrite it (half the cost of a lease under load)
    /// and left a file behind each time.
    fn put_large(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.put_chunked(Tree::Large, &large_prefix(name), bytes)?;
        // The copy an older master kept in the meta tree is superseded.
        if self.kv.get(Tree::Meta, name.as_bytes())?.is_some() {
            self.remove_meta(name)?;
        }
        Ok(())
    }

    /// Writes `bytes` in `tree` as chunks of at most [`LARGE_CHUNK`] bytes keyed `prefix`
    /// and a big-endian chunk number, in one batch with the removal of any chunk a longer
    /// value left under `prefix`.
    fn put_chunked(&self, tree: Tree, prefix: &[u8], bytes: &[u8]) -> Result<(), StoreError> {
        let puts: Vec<Entry> = bytes
            .chunks(LARGE_CHUNK)
            .enumerate()
            .map(|(index, chunk)| {
                let mut key = prefix.to_vec();
                key.extend_from_slice(&(index as u32).to_be_bytes());
                (key, chunk.to_vec())
            })
            .collect();
        let removes: Vec<Vec<u8>> = self
            .kv
            .scan_prefix(tree, prefix)?
            .into_iter()
            .map(|(key, _)| key)
            .filter(|key| !puts.iter().any(|(put, _)| put == key))
            .collect();
        self.kv.apply_batch(tree, &puts, &removes)
    }

    /// The value [`Store::put_chunked`] wrote under `prefix`, its chunks joined; `None` when
    /// there is none.
    fn chunked(&self, tree: Tree, prefix: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let chunks = self.kv.scan_prefix(tree, prefix)?;
        Ok((!chunks.is_empty()).then(|| chunks.into_iter().flat_map(|(_, chunk)| chunk).collect()))
    }

    /// A large record, from its chunks; a record an older master kept in the meta tree
    /// under the same name still reads.
    fn large<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StoreError> {
        match self.chunked(Tree::Large, &large_prefix(name))? {
            Some(bytes) => decode(Tree::Large, &bytes).map(Some),
            None => self.meta(name),
        }
    }

    /// Removes a large record (and its older copy in the meta tree).
    fn remove_large(&self, name: &str) -> Result<(), StoreError> {
        let removes: Vec<Vec<u8>> =
            self.kv.scan_prefix(Tree::Large, &large_prefix(name))?.into_iter().map(|(key, _)| key).collect();
        if !removes.is_empty() {
            self.kv.apply_batch(Tree::Large, &[], &removes)?;
        }
        if self.kv.get(Tree::Meta, name.as_bytes())?.is_some() {
            self.remove_meta(name)?;
        }
        Ok(())
    }

    /// The suite listed at `revision` under `paths` (empty: the whole suite), or by a
    /// listing of the revision that covers them ([`Store::covering_listing`]).
    pub fn listing(&self, revision: &str, paths: &[String]) -> Result<Option<SuiteFile>, StoreError> {
        match self.covering_listing(revision, paths)? {
            Some(listed) => self.large(&format!("{}{}", keys::LISTING, listing_key(revision, &listed))),
            None => Ok(None),
        }
    }

    /// The paths of a stored listing of `revision` that holds every test under `paths`:
    /// the first kept of exactly those and the whole suite (no paths), else the first of
    /// wider ones.
    pub fn covering_listing(&self, revision: &str, paths: &[String]) -> Result<Option<Vec<String>>, StoreError> {
        let mut covering = None;
        for (_, value) in self.kv.scan_prefix(Tree::Meta, keys::LISTING_ORDER.as_bytes())? {
            let key: String = decode(Tree::Meta, &value)?;
            let mut parts = key.split('\n');
            if parts.next() != Some(revision) {
                continue;
            }
            let listed: Vec<String> = parts.map(str::to_owned).collect();
            if listed.as_slice() == paths || listed.is_empty() {
                return Ok(Some(listed));
            }
            if covering.is_none() && greenlight_shared::runner::covers(&listed, paths) {
                covering = Some(listed);
            }
        }
        Ok(covering)
    }

    /// The newest whole listing kept (of any revision), with its revision.
    pub fn newest_whole_listing(&self) -> Result<Option<(String, SuiteFile)>, StoreError> {
        for (_, value) in self.kv.scan_prefix(Tree::Meta, keys::LISTING_ORDER.as_bytes())?.into_iter().rev() {
            let key: String = decode(Tree::Meta, &value)?;
            if !key.contains('\n')
                && let Some(suite) = self.large(&format!("{}{key}", keys::LISTING))?
            {
                return Ok(Some((key, suite)));
            }
        }
        Ok(None)
    }

    /// Keeps the suite listed at `revision` under `paths` (empty: the whole suite): later
    /// builds of it (a retry, a probe, a build resumed after a restart) plan from it
    /// without listing again. Only the newest [`KEPT_LISTINGS`] listings are kept (an
    /// older one is listed again if ever needed).
    pub fn put_listing(&self, revision: &str, paths: &[String], suite: &SuiteFile) -> Result<(), StoreError> {
        let listed = listing_key(revision, paths);
        let key = format!("{}{listed}", keys::LISTING);
        let new = self.large::<SuiteFile>(&key)?.is_none();
        self.put_large(&key, &encode(suite))?;
        if !new {
            return Ok(());
        }
        let sequence = self.next_id("listing")?;
        self.set_meta(&format!("{}{sequence:020}", keys::LISTING_ORDER), &listed)?;
        let order = self.kv.scan_prefix(Tree::Meta, keys::LISTING_ORDER.as_bytes())?;
        for (order_key, value) in order.iter().take(order.len().saturating_sub(KEPT_LISTINGS)) {
            let old: String = decode(Tree::Meta, value)?;
            self.remove_large(&format!("{}{old}", keys::LISTING))?;
            self.kv.remove(Tree::Meta, order_key)?;
        }
        Ok(())
    }

    /// The tests a running build selected.
    pub fn selection(&self, build_id: u64) -> Result<Option<Vec<String>>, StoreError> {
        self.large(&format!("{}{build_id}", keys::SELECTION))
    }

    /// Records the tests a build selected, until it ends.
    pub fn put_selection(&self, build_id: u64, test_ids: &[&str]) -> Result<(), StoreError> {
        self.put_large(&format!("{}{build_id}", keys::SELECTION), &encode(&test_ids))
    }

    /// Forgets an ended build's selection.
    pub fn remove_selection(&self, build_id: u64) -> Result<(), StoreError> {
        self.remove_large(&format!("{}{build_id}", keys::SELECTION))
    }

    /// The next lease id (1 at first).
    pub fn next_lease(&self) -> Result<u64, StoreError> {
        Ok(self.meta(keys::NEXT_LEASE)?.unwrap_or(1))
    }

    /// Records the next lease id.
    pub fn set_next_lease(&self, next: u64) -> Result<(), StoreError> {
        self.set_meta(keys::NEXT_LEASE, &next)
    }

    /// Regular builds since the last full run, and when the last full run started (Unix
    /// seconds, 0 if never).
    pub fn full_runs(&self) -> Result<(u64, f64), StoreError> {
        Ok((self.meta(keys::BUILDS_SINCE_FULL_RUN)?.unwrap_or(0), self.meta(keys::LAST_FULL_RUN_AT)?.unwrap_or(0.0)))
    }

    /// A regular build started: a full run at `now` resets the count, any other adds one.
    pub fn count_build(&self, full_run: bool, now: f64) -> Result<(), StoreError> {
        if full_run {
            self.set_meta(keys::BUILDS_SINCE_FULL_RUN, &0u64)?;
            self.set_meta(keys::LAST_FULL_RUN_AT, &now)
        } else {
            let (since, _) = self.full_runs()?;
            self.set_meta(keys::BUILDS_SINCE_FULL_RUN, &(since + 1))
        }
    }

    /// Whether an admin asked for a full run not started yet.
    pub fn full_run_forced(&self) -> Result<bool, StoreError> {
        Ok(self.meta(keys::FORCE_FULL_RUN)?.unwrap_or(false))
    }

    /// Asks for (or, with `false`, clears the request for) a full run.
    pub fn set_full_run_forced(&self, forced: bool) -> Result<(), StoreError> {
        if forced { self.set_meta(keys::FORCE_FULL_RUN, &true) } else { self.remove_meta(keys::FORCE_FULL_RUN) }
    }

    /// The build id of the newest revision pushed (0 if none).
    pub fn last_pushed(&self) -> Result<u64, StoreError> {
        Ok(self.meta(keys::LAST_PUSHED)?.unwrap_or(0))
    }

    /// Records that build `build_id`'s revision was pushed.
    pub fn set_last_pushed(&self, build_id: u64) -> Result<(), StoreError> {
        let last = self.last_pushed()?;
        self.set_meta(keys::LAST_PUSHED, &last.max(build_id))
    }

    /// A test's flake record.
    pub fn flake_record(&self, test_id: &str) -> Result<Option<FlakeRecord>, StoreError> {
        self.meta(&format!("{}{test_id}", keys::FLAKE))
    }

    /// Every flake record.
    pub fn flake_records(&self) -> Result<Vec<FlakeRecord>, StoreError> {
        self.meta_with_prefix(keys::FLAKE)
    }

    /// Writes a flake record.
    pub fn put_flake_record(&self, record: &FlakeRecord) -> Result<(), StoreError> {
        self.set_meta(&format!("{}{}", keys::FLAKE, record.test_id), record)
    }

    /// Every quarantine entry, expired ones included.
    pub fn quarantine_entries(&self) -> Result<Vec<QuarantineEntry>, StoreError> {
        self.meta_with_prefix(keys::QUARANTINE)
    }

    /// Writes a quarantine entry.
    pub fn put_quarantine(&self, entry: &QuarantineEntry) -> Result<(), StoreError> {
        self.set_meta(&format!("{}{}", keys::QUARANTINE, entry.test_id), entry)
    }

    /// Lifts a test's quarantine.
    pub fn remove_quarantine(&self, test_id: &str) -> Result<(), StoreError> {
        self.remove_meta(&format!("{}{test_id}", keys::QUARANTINE))
    }

    /// The gate of `branch`, once one was stored.
    pub fn gate(&self, branch: &str) -> Result<Option<GateView>, StoreError> {
        self.meta(&format!("{}{branch}", keys::GATE))
    }

    /// Writes the gate of its branch.
    pub fn put_gate(&self, gate: &GateView) -> Result<(), StoreError> {
        self.set_meta(&format!("{}{}", keys::GATE, gate.branch), gate)
    }

    /// The meta key of the notifier's record of what it delivered (a few KiB: the
    /// newest builds' keys).
    const NOTIFY_LEDGER: &'static str = "notify_ledger";

    /// What the notifier (`notify`) delivered, once it recorded anything.
    pub fn notify_ledger<T: DeserializeOwned>(&self) -> Result<Option<T>, StoreError> {
        self.meta(Store::NOTIFY_LEDGER)
    }

    /// Records what the notifier delivered.
    pub fn put_notify_ledger<T: Serialize>(&self, ledger: &T) -> Result<(), StoreError> {
        self.set_meta(Store::NOTIFY_LEDGER, ledger)
    }
}

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

    #[test]
    fn a_builds_selection_is_kept_in_small_chunks_apart_from_the_counters_and_an_older_masters_copy_still_reads() {
        let kv = Arc::new(MemoryKv::default());
        let store = Store::new(kv.clone());
        let ids: Vec<String> =
            (0..15_000).map(|index| format!("tests/area_{}/test_{index}.py::test_case", index % 40)).collect();
        let selected: Vec<&str> = ids.iter().map(String::as_str).collect();
        store.put_selection(7, &selected).unwrap();
        assert_eq!(store.selection(7).unwrap().as_deref(), Some(&ids[..]));
        let chunks = kv.scan_prefix(Tree::Large, b"").unwrap();
        assert!(
            chunks.len() > 100 && chunks.iter().all(|(_, chunk)| chunk.len() <= LARGE_CHUNK),
            "{} chunks",
            chunks.len()
        );
        assert!(
            kv.scan_prefix(Tree::Meta, b"").unwrap().iter().all(|(_, value)| value.len() < 1024),
            "nothing large among the counters"
        );
        // Stored again shorter: no chunk of the longer one is left.
        store.put_selection(7, &selected[..10]).unwrap();
        assert_eq!(store.selection(7).unwrap().map(|ids| ids.len()), Some(10));
        assert_eq!(kv.scan_prefix(Tree::Large, b"").unwrap().len(), 1);
        store.remove_selection(7).unwrap();
        assert_eq!(store.selection(7).unwrap(), None);
        assert!(kv.scan_prefix(Tree::Large, b"").unwrap().is_empty());

        // A data directory from before: the selection in the meta tree.
        kv.put(Tree::Meta, b"selection/9", br#"["a","b"]"#).unwrap();
        assert_eq!(store.selection(9).unwrap(), Some(vec!["a".to_owned(), "b".to_owned()]));
        store.remove_selection(9).unwrap();
        assert_eq!(store.selection(9).unwrap(), None);
        assert_eq!(kv.get(Tree::Meta, b"selection/9").unwrap(), None, "the old copy is removed too");
    }

    #[test]
    fn a_shards_ids_are_written_apart_from_its_state_in_small_chunks_and_an_older_masters_whole_shard_still_reads() {
        let kv = Arc::new(MemoryKv::default());
        let store = Store::new(kv.clone());
        let ids: Vec<String> =
            (0..400).map(|index| format!("tests/area_{}/test_{index}.py::test_case", index % 7)).collect();
        let mut shard = ShardView {
            lease_id: 12,
            worker: "w".into(),
            tests: ids.len() as u32,
            withdrawn: 0,
            started_at: 1.0,
            finished_at: None,
            state: greenlight_shared::api::ShardState::Running,
            counts: Default::default(),
            test_ids: ids.clone(),
            reproduce: String::new(),
            runner_wall_s: None,
            copy_of: None,
            stopped: None,
        };
        store.put_shard(3, &shard).unwrap();
        let chunks = kv.scan_prefix(Tree::ShardTests, b"").unwrap();
        assert!(chunks.len() > 1 && chunks.iter().all(|(_, chunk)| chunk.len() <= LARGE_CHUNK), "{}", chunks.len());

        // It ends: only its small state is written again, and its ids stay.
        shard.state = greenlight_shared::api::ShardState::Finished;
        shard.finished_at = Some(5.0);
        shard.runner_wall_s = Some(3.0);
        store.put_shard_state(3, &shard).unwrap();
        let state = kv.get(Tree::Shards, &shard_key(3, 12)).unwrap().unwrap();
        assert!(state.len() < 512, "{} bytes", state.len());
        assert_eq!(store.shard(3, 12).unwrap().as_ref(), Some(&shard));
        assert_eq!(store.shards(3).unwrap(), vec![shard.clone()]);

        // Shrunk and written whole again: no chunk of the longer list is left.
        shard.test_ids.truncate(2);
        store.put_shard(3, &shard).unwrap();
        assert_eq!(store.shard(3, 12).unwrap().map(|shard| shard.test_ids), Some(ids[..2].to_vec()));
        assert_eq!(kv.scan_prefix(Tree::ShardTests, b"").unwrap().len(), 1);

        // A data directory from before: the shard whole, its reproduce line in it.
        let old = ShardView { lease_id: 13, test_ids: vec!["a".into()], reproduce: "pytest a".into(), ..shard.clone() };
        kv.put(Tree::Shards, &shard_key(3, 13), &encode(&old)).unwrap();
        assert_eq!(store.shard(3, 13).unwrap().as_ref(), Some(&old));
        assert_eq!(store.shards(3).unwrap(), vec![shard, old]);
        assert_eq!(store.shard(3, 14).unwrap(), None);
    }

    #[test]
    fn pages_of_a_packed_build_and_of_a_running_one_read_every_result_once_in_order() {
        let store = Store::in_memory();
        let mut expected = Vec::new();
        for index in 0..3000 {
            let id = format!("tests/test_{:05}.py::case", index / 3);
            let stored =
                result(&id, 1 + index % 3, if index % 7 == 0 { TestStatus::Failed } else { TestStatus::Passed });
            assert!(store.put_running_result(1, &stored).unwrap());
            expected.push(stored);
        }
        let read_in_pages = |store: &Store, limit: usize, failed_only: bool| {
            let mut read: Vec<TestResultView> = Vec::new();
            loop {
                let after = read.last().map(|last| (last.test_id.clone(), last.attempt));
                let page = store
                    .results_after(1, after.as_ref().map(|(id, attempt)| (id.as_str(), *attempt)), limit, |result| {
                        !failed_only || result.status == TestStatus::Failed
                    })
                    .unwrap();
                if page.is_empty() {
                    return read;
                }
                read.extend(page);
            }
        };
        let all = store.results(1).unwrap();
        assert_eq!(all.len(), 3000);
        let failed: Vec<TestResultView> = all.iter().filter(|r| r.status == TestStatus::Failed).cloned().collect();
        assert_eq!(read_in_pages(&store, 7, false), all, "running: every result once, in order");
        assert_eq!(read_in_pages(&store, 5, true), failed);
        store.pack_results(1).unwrap();
        assert!(store.results_packed(1).unwrap());
        assert_eq!(store.results(1).unwrap(), all);
        for limit in [1, 7, 100, 5000] {
            assert_eq!(read_in_pages(&store, limit, false), all, "packed, pages of {limit}");
        }
        assert_eq!(read_in_pages(&store, 5, true), failed);
    }

    fn running_results_live_in_a_tree_of_their_own_until_packed(store: &Store) {
        let ids: Vec<String> = (0..40).map(|index| format!("tests/test_{index:02}.py::case")).collect();
        for id in ids.iter().rev() {
            assert!(store.put_running_result(3, &result(id, 1, TestStatus::Passed)).unwrap());
        }
        assert!(!store.put_running_result(3, &result(&ids[0], 1, TestStatus::Failed)).unwrap(), "stored once");
        assert_eq!(store.kv.running_result_trees().unwrap(), vec![3]);
        assert!(store.kv.scan_prefix(Tree::Results, &3u64.to_be_bytes()).unwrap().is_empty());
        // An older master wrote a running build's results into the results tree: one of
        // them again (the same test and attempt), one new.
        for (id, status) in [(ids[5].as_str(), TestStatus::Passed), ("tests/test_05.py::older", TestStatus::Failed)] {
            let older = result(id, 1, status);
            store.kv.put(Tree::Results, &result_key(3, id, 1), &encode_result(&older)).unwrap();
        }
        let read = store.results(3).unwrap();
        let mut expected: Vec<String> = ids.clone();
        expected.push("tests/test_05.py::older".into());
        expected.sort();
        assert_eq!(read.iter().map(|r| r.test_id.clone()).collect::<Vec<_>>(), expected, "merged, in order, once each");
        let mut paged: Vec<TestResultView> = Vec::new();
        loop {
            let after = paged.last().map(|last| (last.test_id.as_str(), last.attempt));
            let page = store.results_after(3, after, 7, |_| true).unwrap();
            if page.is_empty() {
                break;
            }
            paged.extend(page);
        }
        assert_eq!(paged, read, "pages read the same");
        assert_eq!(store.results_of_test(3, &ids[5]).unwrap().len(), 1);
        // The build ended: a late result of a test already stored is refused.
        assert!(!store.put_result(3, &result(&ids[7], 1, TestStatus::Failed)).unwrap());

        assert!(store.pack_results(3).unwrap());
        assert!(store.kv.running_result_trees().unwrap().is_empty(), "the pack drops the build's tree");
        assert_eq!(store.results(3).unwrap(), read);
        // A crash between a pack and the drop leaves the tree: it is not read, and the
        // housekeeping drops it.
        let ghost = result("tests/zz.py::ghost", 1, TestStatus::Failed);
        store.kv.put(Tree::RunningResults(3), &result_key(3, &ghost.test_id, 1), &encode_result(&ghost)).unwrap();
        assert_eq!(store.results(3).unwrap(), read, "a packed build reads its pack only");
        assert_eq!(store.drop_running_results_below(3).unwrap(), 0, "only builds below the watermark");
        assert_eq!(store.drop_running_results_below(4).unwrap(), 1);
        assert!(store.kv.running_result_trees().unwrap().is_empty());
        // A build never written creates no tree when read.
        assert!(store.results(9).unwrap().is_empty() && store.results_of_test(9, "x").unwrap().is_empty());
        assert!(store.results_after(9, None, 10, |_| true).unwrap().is_empty());
        assert!(store.kv.running_result_trees().unwrap().is_empty());
        store.flush().unwrap();
    }

    #[test]
    fn a_running_builds_results_live_in_a_tree_of_their_own_that_the_pack_drops() {
        running_results_live_in_a_tree_of_their_own_until_packed(&Store::in_memory());
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sled(dir.path(), DEFAULT_CACHE_BYTES).unwrap();
        running_results_live_in_a_tree_of_their_own_until_packed(&store);
        let packed = store.results(3).unwrap();
        assert!(store.put_running_result(4, &result("t", 1, TestStatus::Passed)).unwrap());
        store.flush().unwrap();
        drop(store);
        let reopened = Store::open_sled(dir.path(), DEFAULT_CACHE_BYTES).unwrap();
        assert_eq!(reopened.results(3).unwrap(), packed, "the pack survives a restart");
        assert_eq!(reopened.results(4).unwrap().len(), 1, "and so do a running build's results");
        assert_eq!(reopened.kv.running_result_trees().unwrap(), vec![4]);
    }

    #[test]
    fn the_newest_listings_are_kept_and_a_listing_stored_again_keeps_its_place() {
        let store = Store::in_memory();
        let suite = |name: &str| SuiteFile { name: name.into(), shard_overhead_s: 0.0, tests: Vec::new() };
        for index in 0..KEPT_LISTINGS + 2 {
            store.put_listing(&format!("rev{index}"), &[], &suite("first")).unwrap();
        }
        store.put_listing("rev2", &[], &suite("again")).unwrap();
        assert_eq!(store.listing("rev0", &[]).unwrap(), None, "the oldest are dropped");
        assert_eq!(store.listing("rev1", &[]).unwrap(), None);
        assert_eq!(store.listing("rev2", &[]).unwrap().map(|suite| suite.name), Some("again".to_owned()));
        let newest = format!("rev{}", KEPT_LISTINGS + 1);
        assert_eq!(store.listing(&newest, &[]).unwrap().map(|suite| suite.name), Some("first".to_owned()));
        store.put_listing("rev99", &[], &suite("newer")).unwrap();
        assert_eq!(store.listing("rev2", &[]).unwrap(), None, "stored again is not newer");
        assert!(store.listing("rev3", &[]).unwrap().is_some());
    }

    #[test]
    fn a_listing_of_some_paths_serves_paths_inside_them_and_the_whole_listing_serves_every_one() {
        let store = Store::in_memory();
        let suite = |name: &str| SuiteFile { name: name.into(), shard_overhead_s: 0.0, tests: Vec::new() };
        let paths = |words: &[&str]| words.iter().map(|word| (*word).to_owned()).collect::<Vec<_>>();
        store.put_listing("a", &paths(&["pkg/chat", "pkg/db.py"]), &suite("a chat")).unwrap();
        let name =
            |revision: &str, wanted: &[&str]| store.listing(revision, &paths(wanted)).unwrap().map(|suite| suite.name);
        assert_eq!(name("a", &["pkg/chat", "pkg/db.py"]), Some("a chat".to_owned()));
        assert_eq!(name("a", &["pkg/chat/test_send.py"]), Some("a chat".to_owned()), "a probe of one file");
        assert_eq!(name("a", &["pkg/shop"]), None, "other paths are listed on their own");
        assert_eq!(name("a", &[]), None, "a part is not the whole");
        assert_eq!(name("b", &["pkg/chat"]), None, "another revision");
        store.put_listing("b", &[], &suite("b whole")).unwrap();
        assert_eq!(name("b", &["pkg/shop"]), Some("b whole".to_owned()));
        assert_eq!(
            store.covering_listing("a", &paths(&["pkg/chat/x.py"])).unwrap(),
            Some(paths(&["pkg/chat", "pkg/db.py"]))
        );
        assert_eq!(store.covering_listing("b", &paths(&["pkg/chat"])).unwrap(), Some(Vec::new()));
        store.put_listing("c", &paths(&["pkg/chat"]), &suite("c chat")).unwrap();
        let newest = store.newest_whole_listing().unwrap().map(|(revision, suite)| (revision, suite.name));
        assert_eq!(newest, Some(("b".to_owned(), "b whole".to_owned())), "a listing of some paths is not the suite");
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
        packing_keeps_every_result(&store);
        for duration in 1..=7 {
            store.add_duration("t", duration as f64);
        }
        assert_eq!(store.durations("t").unwrap(), vec![3.0, 4.0, 5.0, 6.0, 7.0]);
        store.set_last_seen("main", "abc").unwrap();
        assert_eq!(store.last_seen("main").unwrap().as_deref(), Some("abc"));
        assert_eq!(store.last_seen("other").unwrap(), None);
        assert_eq!(store.next_unbuilt_change().unwrap(), 1);
        store.set_next_unbuilt_change(9).unwrap();
        store.requeue_changes_from(4).unwrap();
        store.requeue_changes_from(6).unwrap();
        assert_eq!(store.next_unbuilt_change().unwrap(), 4, "requeueing only ever moves the watermark back");
        store.want_culprit_search(12).unwrap();
        store.want_culprit_search(3).unwrap();
        assert_eq!(store.culprit_searches_wanted().unwrap(), vec![3, 12], "oldest first, numerically");
        store.culprit_search_started(3).unwrap();
        assert_eq!(store.culprit_searches_wanted().unwrap(), vec![12]);
    }

    /// Build 1 holds ("a", 1), ("a", 2), ("a\0b", 1); build 2 holds ("a", 1).
    fn packing_keeps_every_result(store: &Store) {
        let mut detailed = result("b/long/path.py::test_x", 1, TestStatus::Failed);
        detailed.output = Some("boom".into());
        detailed.worker = Some("box-1".into());
        detailed.lease_id = Some(9);
        assert!(store.put_result(1, &detailed).unwrap());
        let before = store.results(1).unwrap();
        assert!(store.pack_results(1).unwrap());
        assert!(!store.pack_results(1).unwrap(), "nothing left to pack");
        assert_eq!(store.results(1).unwrap(), before, "a packed build reads as before");
        assert_eq!(store.results(2).unwrap().len(), 1, "the next build is untouched");
        let attempts: Vec<u32> = store.results_of_test(1, "a").unwrap().iter().map(|r| r.attempt).collect();
        assert_eq!(attempts, vec![1, 2]);
        assert_eq!(store.results_of_test(1, "b/long/path.py::test_x").unwrap(), vec![detailed]);
        assert!(!store.put_result(1, &result("a", 2, TestStatus::Failed)).unwrap(), "a packed result is stored once");
        assert!(store.put_result(1, &result("a", 3, TestStatus::Passed)).unwrap(), "a new attempt is stored");
        let order: Vec<(String, u32)> = store.results(1).unwrap().into_iter().map(|r| (r.test_id, r.attempt)).collect();
        let expected = [("a", 1), ("a", 2), ("a", 3), ("a\0b", 1), ("b/long/path.py::test_x", 1)];
        assert_eq!(order, expected.map(|(id, attempt)| (id.to_owned(), attempt)), "packed and later results in order");
        assert_eq!(store.results_of_test(1, "a").unwrap().len(), 3);
        assert!(store.pack_results(1).unwrap(), "the later result joins the pack");
        assert_eq!(store.results(1).unwrap().len(), 5);
    }

    fn one_test_of_a_packed_build_reads_from_its_chunks(store: Store) {
        let mut ids: Vec<String> = (0..1500).map(|index| format!("suite/test_{index:04}")).collect();
        ids.push("suite/test_0700\0twin".into());
        for (index, id) in ids.iter().enumerate() {
            for attempt in 1..=(1 + (index % 3) as u32) {
                assert!(store.put_result(5, &result(id, attempt, TestStatus::Passed)).unwrap());
            }
        }
        let before: Vec<Vec<TestResultView>> = ids.iter().map(|id| store.results_of_test(5, id).unwrap()).collect();
        assert!(store.pack_results(5).unwrap());
        assert!(store.kv.scan_prefix(Tree::Results, &5u64.to_be_bytes()).unwrap().len() > 10, "several chunks");
        for (id, before) in ids.iter().zip(&before) {
            assert!(!before.is_empty());
            assert_eq!(&store.results_of_test(5, id).unwrap(), before, "{id:?}");
        }
        assert!(store.results_of_test(5, "suite/test_0700\0").unwrap().is_empty());
        assert!(
            store.results_of_test(5, "zzz").unwrap().is_empty() && store.results_of_test(5, "a").unwrap().is_empty()
        );
    }

    #[test]
    fn one_test_of_a_packed_build_reads_the_same_as_before_packing() {
        one_test_of_a_packed_build_reads_from_its_chunks(Store::in_memory());
        let dir = tempfile::tempdir().unwrap();
        one_test_of_a_packed_build_reads_from_its_chunks(Store::open_sled(dir.path(), DEFAULT_CACHE_BYTES).unwrap());
    }

    #[test]
    fn a_failed_write_fails_the_store_for_good_and_reads_go_on() {
        let kv = Arc::new(MemoryKv::default());
        let store = Store::new(kv.clone());
        assert!(store.put_result(1, &result("a", 1, TestStatus::Passed)).unwrap());
        kv.fail_writes.store(true, std::sync::atomic::Ordering::SeqCst);
        let failed = store.put_result(1, &result("b", 1, TestStatus::Passed));
        assert!(matches!(failed, Err(StoreError::Backend(_))), "{failed:?}");
        // The backend takes writes again; the store does not.
        kv.fail_writes.store(false, std::sync::atomic::Ordering::SeqCst);
        assert!(matches!(store.flush(), Err(StoreError::Failed(_))));
        assert!(matches!(store.put_result(1, &result("b", 1, TestStatus::Passed)), Err(StoreError::Failed(_))));
        assert!(matches!(store.next_id("build"), Err(StoreError::Failed(_))));
        assert_eq!(store.results(1).unwrap().len(), 1, "reads go on");
        assert!(store.failure().is_some_and(|failure| failure.contains("No space left")), "{:?}", store.failure());
    }

    #[test]
    fn a_history_written_as_json_by_an_older_master_reads_and_grows_in_the_compact_form() {
        let kv = Arc::new(MemoryKv::default());
        kv.put(Tree::History, b"old::test", b"[0.5,1.25]").unwrap();
        let store = Store::new(kv.clone());
        assert_eq!(store.durations("old::test").unwrap(), vec![0.5, 1.25]);
        store.add_durations(&[("old::test", 2.0), ("new::test", 0.1), ("old::test", f64::NAN)]);
        assert_eq!(store.durations("old::test").unwrap(), vec![0.5, 1.25, 2.0]);
        assert_eq!(store.durations("new::test").unwrap(), vec![0.1]);
        assert_eq!(store.write_history().unwrap(), 2, "two tests observed");
        let stored = kv.get(Tree::History, b"old::test").unwrap().unwrap();
        assert_eq!(stored.len(), 1 + 3 * 8, "a tag byte and 8 bytes a sample: {stored:?}");
    }

    #[test]
    fn observed_durations_read_at_once_and_are_written_in_one_pass_each_once() {
        let kv = Arc::new(MemoryKv::default());
        let store = Store::new(kv.clone());
        store.add_durations(&[("a", 1.0), ("b", 7.0), ("a", 2.0)]);
        assert_eq!(store.durations("a").unwrap(), vec![1.0, 2.0], "read before they are written");
        assert!(kv.get(Tree::History, b"a").unwrap().is_none(), "a results report writes no history");
        assert_eq!(store.write_history().unwrap(), 2);
        assert_eq!(store.write_history().unwrap(), 0, "nothing twice");
        assert_eq!(store.durations("a").unwrap(), vec![1.0, 2.0], "written, not counted again");
        store.add_durations(&[("a", 3.0), ("a", 4.0), ("a", 5.0), ("a", 6.0)]);
        assert_eq!(store.durations("a").unwrap(), vec![2.0, 3.0, 4.0, 5.0, 6.0], "the newest {HISTORY_SAMPLES}");
        store.write_history().unwrap();
        let reopened = Store::new(kv.clone());
        assert_eq!(reopened.durations("a").unwrap(), vec![2.0, 3.0, 4.0, 5.0, 6.0], "what was written stays");
        assert_eq!(reopened.durations("b").unwrap(), vec![7.0]);
    }

    #[test]
    fn a_failed_history_write_keeps_the_observations_for_the_readers() {
        let kv = Arc::new(MemoryKv::default());
        let store = Store::new(kv.clone());
        store.add_durations(&[("a", 1.0)]);
        kv.fail_writes.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(store.write_history().is_err());
        store.add_durations(&[("a", 2.0)]);
        assert_eq!(store.durations("a").unwrap(), vec![1.0, 2.0], "kept, in order");
    }

    #[test]
    fn memory_store_keeps_results_once_and_bounded_history() {
        exercise(Store::in_memory());
    }

    #[test]
    fn sled_store_behaves_the_same_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        exercise(Store::open_sled(dir.path(), DEFAULT_CACHE_BYTES).unwrap());
        let reopened = Store::open_sled(dir.path(), DEFAULT_CACHE_BYTES).unwrap();
        assert_eq!(reopened.next_id("build").unwrap(), 3);
        assert_eq!(reopened.results(1).unwrap().len(), 5, "the pack survives reopening");
        assert_eq!(reopened.results(2).unwrap().len(), 1);
    }

    /// Results as the store wrote them before the binary format: JSON values.
    fn write_old_format(kv: &dyn Kv) -> Vec<TestResultView> {
        let mut old = vec![result("x", 1, TestStatus::Failed), result("x", 2, TestStatus::Passed)];
        old[0].output = Some("AssertionError".into());
        old[0].worker = Some("box-2".into());
        old[0].retried = true;
        old[1].flaky = true;
        for stored in &old {
            let key = result_key(4, &stored.test_id, stored.attempt);
            kv.put(Tree::Results, &key, &serde_json::to_vec(stored).unwrap()).unwrap();
        }
        old
    }

    fn old_format_reads(store: &Store, old: &[TestResultView]) {
        assert_eq!(store.results(4).unwrap(), old);
        assert_eq!(store.results_of_test(4, "x").unwrap(), old);
        assert!(!store.put_result(4, &old[0]).unwrap(), "an old result is stored once");
        assert!(store.pack_results(4).unwrap());
        assert_eq!(store.results(4).unwrap(), old, "old results pack like new ones");
    }

    #[test]
    fn results_stored_as_json_by_an_earlier_master_still_read() {
        let kv = Arc::new(MemoryKv::default());
        let old = write_old_format(&*kv);
        old_format_reads(&Store::new(kv), &old);

        let dir = tempfile::tempdir().unwrap();
        let kv = SledKv::open(dir.path(), DEFAULT_CACHE_BYTES).unwrap();
        let old = write_old_format(&kv);
        kv.flush().unwrap();
        drop(kv);
        let upgraded = Store::open_sled(dir.path(), DEFAULT_CACHE_BYTES).unwrap();
        assert_eq!(upgraded.results(4).unwrap(), old, "a master upgraded in place reads its history");
        old_format_reads(&upgraded, &old);
    }

    fn pruning_removes_results_and_shards_only(store: Store) {
        let shard = |lease_id| ShardView {
            lease_id,
            worker: "w".into(),
            tests: 1,
            withdrawn: 0,
            started_at: 0.0,
            finished_at: None,
            state: greenlight_shared::api::ShardState::Running,
            counts: Default::default(),
            test_ids: vec!["t0".into()],
            reproduce: String::new(),
            runner_wall_s: None,
            copy_of: None,
            stopped: None,
        };
        for build_id in [1, 2] {
            for index in 0..5 {
                assert!(store.put_result(build_id, &result(&format!("t{index}"), 1, TestStatus::Passed)).unwrap());
                store.put_shard(build_id, &shard(index)).unwrap();
            }
        }
        store.pack_results(1).unwrap();
        store.put_result(1, &result("late", 1, TestStatus::Passed)).unwrap();
        store.add_duration("t0", 2.0);
        assert!(!store.prune_results(1, 3).unwrap(), "a bounded batch leaves the rest");
        assert!(store.prune_results(1, 3).unwrap());
        assert!(store.results(1).unwrap().is_empty() && store.shards(1).unwrap().is_empty());
        assert_eq!(store.results(2).unwrap().len(), 5, "the next build keeps its results");
        assert_eq!(store.shards(2).unwrap().len(), 5);
        assert_eq!(store.durations("t0").unwrap(), vec![2.0], "history stays");
        assert!(!store.results_pruned(1).unwrap());
        store.set_results_pruned_below(2).unwrap();
        assert!(store.results_pruned(1).unwrap() && !store.results_pruned(2).unwrap());
        store.flush().unwrap();
    }

    #[test]
    fn pruning_a_build_removes_its_results_and_shards_in_bounded_batches() {
        pruning_removes_results_and_shards_only(Store::in_memory());
        let dir = tempfile::tempdir().unwrap();
        pruning_removes_results_and_shards_only(Store::open_sled(dir.path(), DEFAULT_CACHE_BYTES).unwrap());
        let reopened = Store::open_sled(dir.path(), DEFAULT_CACHE_BYTES).unwrap();
        assert!(reopened.results(1).unwrap().is_empty() && reopened.results_pruned(1).unwrap(), "pruned for good");
    }

    /// sled compresses each log message with the patched `zstd::block::compress` (a short
    /// one stored in a raw block, see vendor/zstd/GREENLIGHT.md) and reads it back with
    /// `zstd::stream::decode_all` (its snapshots with `block::decompress`).
    #[test]
    fn every_message_sled_compresses_reads_back_whole() {
        for length in (0..=300).chain([4096, 70_000]) {
            let message: Vec<u8> = (0..length).map(|index| (index * 7 % 251) as u8).collect();
            let frame = zstd::block::compress(&message, COMPRESSION_LEVEL).unwrap();
            assert_eq!(zstd::stream::decode_all(frame.as_slice()).unwrap(), message, "{length} bytes");
            assert_eq!(zstd::block::decompress(&frame, length.max(1)).unwrap(), message, "{length} bytes");
            if length <= 255 {
                assert_eq!(frame.len(), length + 9, "stored, not compressed");
            }
        }
    }

    #[test]
    fn a_new_store_compresses_and_one_an_older_master_wrote_uncompressed_still_opens() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("fresh");
        let store = Store::open_sled(&fresh, DEFAULT_CACHE_BYTES).unwrap();
        assert!(store.put_running_result(1, &result("t", 1, TestStatus::Passed)).unwrap());
        store.flush().unwrap();
        drop(store);
        assert!(compresses(&fresh), "{}", std::fs::read_to_string(fresh.join("conf")).unwrap());
        assert_eq!(Store::open_sled(&fresh, DEFAULT_CACHE_BYTES).unwrap().results(1).unwrap().len(), 1);

        // sled refuses to open a database with the other compression setting.
        let older = dir.path().join("older");
        let db = sled::Config::new().path(&older).use_compression(false).open().unwrap();
        let stored = result("old", 1, TestStatus::Failed);
        db.open_tree("results").unwrap().insert(result_key(2, "old", 1), encode_result(&stored)).unwrap();
        db.flush().unwrap();
        drop(db);
        assert!(!compresses(&older));
        let reopened = SledKv::open(&older, DEFAULT_CACHE_BYTES).unwrap();
        assert_eq!(Store::new(Arc::new(reopened)).results(2).unwrap(), vec![stored]);
    }

    #[test]
    fn a_store_held_open_is_reported_in_use_naming_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let _held = SledKv::open(dir.path(), DEFAULT_CACHE_BYTES).unwrap();
        let error = SledKv::open_waiting(dir.path(), DEFAULT_CACHE_BYTES, Duration::from_millis(50))
            .err()
            .expect("the lock is held");
        assert!(matches!(error, StoreError::InUse { .. }), "{error:?}");
        let message = error.to_string();
        assert!(message.contains(&dir.path().display().to_string()) && message.contains("another master"), "{message}");
    }
}
