//! Rewriting a stopped master's sled database into a fresh one that holds only its live
//! data (`greenlight compact`), compressed.
//!
//! sled 0.34 never shrinks its file and reclaims the log space of rewritten pages only in
//! part, so a store that lived through many builds, or one an older master wrote without
//! compression, can hold many times its data. sled's own export and import copy every
//! tree; the copy is written beside the database and swapped in:
//!
//! 1. the copy goes to `<db>.compacting`, is flushed and closed, then marked complete
//!    (a [`COMPLETE`] file);
//! 2. `<db>` is renamed `<db>.before-compaction`, the copy is renamed `<db>`;
//! 3. the old database is removed.
//!
//! A crash at any point leaves one complete database: [`finish_interrupted`], which every
//! open runs first, completes the swap or undoes it.

use std::path::{Path, PathBuf};

use super::{SledKv, StoreError, compresses};

/// Marks a copy as complete: written, flushed and closed.
const COMPLETE: &str = "greenlight-compaction-complete";

/// What a compaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    /// Bytes the database took on disk before.
    pub before_bytes: u64,
    /// Bytes it takes after.
    pub after_bytes: u64,
    /// Whether it was compressed before (it is after).
    pub was_compressed: bool,
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    dir.with_file_name(name)
}

fn io_error(what: &str, path: &Path, error: &std::io::Error) -> StoreError {
    StoreError::Backend(format!("{what} {}: {error}", path.display()))
}

/// The bytes the files under `dir` take on disk (allocated blocks, as `du` counts them).
pub fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(metadata) if metadata.is_dir() => metadata.blocks() * 512 + disk_bytes(&entry.path()),
            Ok(metadata) => metadata.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// Makes renames and removals in `dir`'s parent durable.
fn sync_parent(dir: &Path) -> Result<(), StoreError> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::File::open(parent)
        .and_then(|parent| parent.sync_all())
        .map_err(|error| io_error("syncing", parent, &error))
}

/// Completes or undoes a compaction a crash interrupted, leaving `dir` the one database.
pub(super) fn finish_interrupted(dir: &Path) -> Result<(), StoreError> {
    let copy = sibling(dir, ".compacting");
    let before = sibling(dir, ".before-compaction");
    let mut changed = false;
    if !dir.exists() {
        // Between the two renames: the copy is complete (it is marked before the first).
        let from = if copy.join(COMPLETE).exists() { &copy } else { &before };
        if from.exists() {
            std::fs::rename(from, dir).map_err(|error| io_error("restoring", from, &error))?;
            tracing::warn!(dir = %dir.display(), from = %from.display(), "an interrupted compaction was finished");
            changed = true;
        }
    }
    if dir.join(COMPLETE).exists() {
        std::fs::remove_file(dir.join(COMPLETE)).map_err(|error| io_error("removing", dir, &error))?;
        changed = true;
    }
    for leftover in [&copy, &before] {
        if leftover.exists() && dir.exists() {
            std::fs::remove_dir_all(leftover).map_err(|error| io_error("removing", leftover, &error))?;
            changed = true;
        }
    }
    if changed { sync_parent(dir) } else { Ok(()) }
}

/// Rewrites the sled database in `dir` (which must exist, and no master may hold) into a
/// fresh compressed one with the same contents, and puts it in its place.
pub fn compact(dir: &Path, cache_bytes: u64) -> Result<Compacted, StoreError> {
    finish_interrupted(dir)?;
    if !dir.join("conf").exists() {
        return Err(StoreError::Backend(format!("{} holds no store (no sled conf file)", dir.display())));
    }
    let was_compressed = compresses(dir);
    let before_bytes = disk_bytes(dir);
    let copy = sibling(dir, ".compacting");
    if copy.exists() {
        std::fs::remove_dir_all(&copy).map_err(|error| io_error("removing", &copy, &error))?;
    }
    {
        let old = SledKv::open(dir, cache_bytes)?;
        let new = SledKv::open(&copy, cache_bytes)?;
        new.db.import(old.db.export());
        new.db.flush().map_err(super::backend)?;
        // Both closed before anything moves (a crash now leaves the old one in place).
    }
    let marker = copy.join(COMPLETE);
    std::fs::File::create(&marker)
        .and_then(|file| file.sync_all())
        .map_err(|error| io_error("marking", &marker, &error))?;
    sync_parent(&copy)?;
    let before = sibling(dir, ".before-compaction");
    std::fs::rename(dir, &before).map_err(|error| io_error("moving", dir, &error))?;
    std::fs::rename(&copy, dir).map_err(|error| io_error("moving", &copy, &error))?;
    sync_parent(dir)?;
    finish_interrupted(dir)?;
    Ok(Compacted { before_bytes, after_bytes: disk_bytes(dir), was_compressed })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use greenlight_shared::api::{TestResultView, TestStatus};

    use super::*;
    use crate::store::{DEFAULT_CACHE_BYTES, Kv as _, Store, Tree, encode_result, result_key};

    fn result(test_id: &str, status: TestStatus) -> TestResultView {
        TestResultView {
            test_id: test_id.into(),
            attempt: 1,
            status,
            duration_s: 0.5,
            output: Some(format!("output of {test_id}")),
            worker: Some("w1".into()),
            retried: false,
            flaky: false,
            quarantined: false,
            lease_id: Some(3),
        }
    }

    /// A database an older master wrote: uncompressed, its results rewritten many times.
    fn older_store(dir: &Path) -> Vec<TestResultView> {
        let db = sled::Config::new().path(dir).use_compression(false).open().unwrap();
        let results = db.open_tree("results").unwrap();
        let history = db.open_tree("history").unwrap();
        let mut stored = Vec::new();
        for round in 0..20 {
            for index in 0..500 {
                let id = format!("tests/test_{index:03}.py::case");
                let kept = result(&id, if round % 2 == 0 { TestStatus::Passed } else { TestStatus::Failed });
                results.insert(result_key(1, &id, 1), encode_result(&kept)).unwrap();
                history.insert(id.as_bytes(), vec![round as u8; 40]).unwrap();
                if round == 19 {
                    stored.push(kept);
                }
            }
        }
        db.flush().unwrap();
        stored
    }

    #[test]
    fn compacting_keeps_every_record_compresses_and_frees_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        let stored = older_store(&db);
        let compacted = compact(&db, DEFAULT_CACHE_BYTES).unwrap();
        assert!(!compacted.was_compressed && compresses(&db));
        assert!(
            compacted.after_bytes * 4 < compacted.before_bytes,
            "{} bytes before, {} after",
            compacted.before_bytes,
            compacted.after_bytes
        );
        let store = Store::open_sled(&db, DEFAULT_CACHE_BYTES).unwrap();
        assert_eq!(store.results(1).unwrap(), stored);
        assert_eq!(store.kv.get(Tree::History, b"tests/test_007.py::case").unwrap(), Some(vec![19; 40]));
        let leftovers: Vec<_> =
            std::fs::read_dir(dir.path()).unwrap().map(|entry| entry.unwrap().file_name()).collect();
        assert_eq!(leftovers, ["db"], "nothing beside the database");
    }

    #[test]
    fn a_store_a_master_holds_is_not_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sled(dir.path(), DEFAULT_CACHE_BYTES).unwrap();
        store.put_running_result(1, &result("t", TestStatus::Passed)).unwrap();
        store.flush().unwrap();
        let error = compact(dir.path(), DEFAULT_CACHE_BYTES).unwrap_err();
        assert!(matches!(error, StoreError::InUse { .. }), "{error}");
        assert_eq!(store.results(1).unwrap().len(), 1);
        let missing = compact(&dir.path().join("nothing"), DEFAULT_CACHE_BYTES).unwrap_err();
        assert!(missing.to_string().contains("holds no store"), "{missing}");
    }

    /// Each state a crash can leave, and what the next open makes of it.
    #[test]
    fn an_open_finishes_or_undoes_an_interrupted_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        let copy = sibling(&db, ".compacting");
        let before = sibling(&db, ".before-compaction");
        let write = |path: &Path, test_id: &str| {
            let store = Store::open_sled(path, DEFAULT_CACHE_BYTES).unwrap();
            store.put_running_result(1, &result(test_id, TestStatus::Passed)).unwrap();
            store.flush().unwrap();
        };
        let read = |path: &Path| {
            let kv = Arc::new(SledKv::open(path, DEFAULT_CACHE_BYTES).unwrap());
            Store::new(kv).results(1).unwrap().into_iter().map(|result| result.test_id).collect::<Vec<_>>()
        };

        // A copy half written: the database stays, the copy goes.
        write(&db, "old");
        write(&copy, "new");
        assert_eq!(read(&db), ["old"]);
        assert!(!copy.exists());

        // Between the renames, the copy complete: it becomes the database.
        std::fs::rename(&db, &before).unwrap();
        write(&copy, "new");
        std::fs::File::create(copy.join(COMPLETE)).unwrap();
        assert_eq!(read(&db), ["new"]);
        assert!(!copy.exists() && !before.exists() && !db.join(COMPLETE).exists());

        // Between the renames, no complete copy: the old database comes back.
        std::fs::rename(&db, &before).unwrap();
        assert_eq!(read(&db), ["new"]);
        assert!(!before.exists());
    }
}
