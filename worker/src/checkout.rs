//! The worker's cached clone: one work tree per worker, fetched and checked out at each
//! lease's revision, cleaned between revisions, with the suite's setup command run once
//! per revision (remembered in a marker file, so a restarted worker does not redo it).

use std::path::{Path, PathBuf};

use greenlight_shared::git::{Git, GitError};

/// Why a checkout could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    /// git failed.
    #[error(transparent)]
    Git(#[from] GitError),
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The setup command failed.
    #[error("setup command {command:?} failed: {detail}")]
    Setup {
        /// The command.
        command: Vec<String>,
        /// Exit status and output tail.
        detail: String,
    },
}

/// A cached clone under the worker's directory.
#[derive(Debug, Clone)]
pub struct Checkout {
    dir: PathBuf,
    marker: PathBuf,
}

impl Checkout {
    /// The clone in `workdir/checkout`.
    pub fn new(workdir: &Path) -> Checkout {
        Checkout { dir: workdir.join("checkout"), marker: workdir.join("setup-done") }
    }

    /// The work tree.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes the work tree hold `revision` of `repository`, set up. Blocking. A cached
    /// clone git cannot use (a missing object, a broken index) is thrown away and cloned
    /// afresh once before the failure is reported.
    /// `keep`: untracked paths (`git clean` patterns) that survive a change of revision.
    pub fn prepare(
        &self,
        repository: &str,
        revision: &str,
        setup: &[Vec<String>],
        env: &[(String, String)],
        keep: &[&str],
    ) -> Result<(), CheckoutError> {
        match self.prepare_once(repository, revision, setup, env, keep) {
            Err(CheckoutError::Git(error)) if self.dir.exists() => {
                tracing::warn!(%error, "the cached clone is unusable; cloning afresh");
                let _ = std::fs::remove_file(&self.marker);
                std::fs::remove_dir_all(&self.dir)
                    .map_err(|source| CheckoutError::Io { path: self.dir.clone(), source })?;
                self.prepare_once(repository, revision, setup, env, keep)
            }
            other => other,
        }
    }

    fn prepare_once(
        &self,
        repository: &str,
        revision: &str,
        setup: &[Vec<String>],
        env: &[(String, String)],
        keep: &[&str],
    ) -> Result<(), CheckoutError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| CheckoutError::Io { path, source }
        };
        let git = Git::new(&self.dir);
        // The common case, a shard of the revision already checked out and set up, costs
        // one small file read and no git process.
        let done = std::fs::read_to_string(&self.marker).unwrap_or_default();
        if done.trim() == revision && self.dir.join(".git").exists() {
            return Ok(());
        }
        if !self.dir.join(".git").exists() {
            if self.dir.exists() {
                std::fs::remove_dir_all(&self.dir).map_err(io(&self.dir))?;
            }
            std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
            git.run(&["clone", "--quiet", "--no-checkout", repository, "."])?;
        }
        let wanted = format!("{revision}^{{commit}}");
        if git.run(&["cat-file", "-e", &wanted]).is_err() {
            git.run(&["fetch", "--quiet", "--no-tags", "origin", "+refs/heads/*:refs/remotes/origin/*"])?;
            if git.run(&["cat-file", "-e", &wanted]).is_err() {
                // Not on any branch head any more (or the server allows fetching by id).
                git.run(&["fetch", "--quiet", "--no-tags", "origin", revision])?;
            }
        }
        let _ = std::fs::remove_file(&self.marker);
        git.run(&["checkout", "--quiet", "--force", "--detach", revision])?;
        git.clean_untracked(keep)?;
        for setup in setup {
            let output = std::process::Command::new(&setup[0])
                .args(&setup[1..])
                .current_dir(&self.dir)
                .envs(env.iter().map(|(key, value)| (key, value)))
                .stdin(std::process::Stdio::null())
                .output()
                .map_err(|source| CheckoutError::Setup { command: setup.to_vec(), detail: source.to_string() })?;
            if !output.status.success() {
                let stderr = String::from_utf8_lossy(&output.stderr);
                let tail: String = stderr.chars().rev().take(2000).collect::<Vec<_>>().into_iter().rev().collect();
                return Err(CheckoutError::Setup {
                    command: setup.to_vec(),
                    detail: format!("{}: {tail}", output.status),
                });
            }
        }
        std::fs::write(&self.marker, revision).map_err(io(&self.marker))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(repo: &Git, dir: &Path, content: &str) -> String {
        std::fs::write(dir.join("file.txt"), content).unwrap();
        repo.run(&["add", "file.txt"]).unwrap();
        repo.run(&["-c", "user.name=t", "-c", "user.email=t@e", "commit", "--quiet", "-m", content]).unwrap();
        repo.run(&["rev-parse", "HEAD"]).unwrap().trim().to_owned()
    }

    #[test]
    fn a_new_revision_cleans_untracked_files_but_those_it_is_told_to_keep() {
        let origin_dir = tempfile::tempdir().unwrap();
        let origin = Git::new(origin_dir.path());
        origin.run(&["init", "--quiet", "-b", "main"]).unwrap();
        let first = commit(&origin, origin_dir.path(), "one");
        let second = commit(&origin, origin_dir.path(), "two");
        let url = origin_dir.path().to_string_lossy().into_owned();
        for (keep, target_survives) in [(&[][..], false), (&["/target/"][..], true)] {
            let work = tempfile::tempdir().unwrap();
            let checkout = Checkout::new(work.path());
            checkout.prepare(&url, &first, &[], &[], keep).unwrap();
            for untracked in ["target/debug/build.o", "stray.txt", "src/target/nested.txt"] {
                let path = checkout.dir().join(untracked);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, "left by a shard").unwrap();
            }
            checkout.prepare(&url, &second, &[], &[], keep).unwrap();
            assert_eq!(checkout.dir().join("target/debug/build.o").exists(), target_survives, "keep {keep:?}");
            assert!(!checkout.dir().join("stray.txt").exists(), "keep {keep:?}");
            assert!(!checkout.dir().join("src/target/nested.txt").exists(), "only the root's target/ is kept");
            assert_eq!(std::fs::read_to_string(checkout.dir().join("file.txt")).unwrap(), "two");
        }
    }

    #[test]
    fn a_clone_missing_an_object_is_cloned_afresh_and_the_checkout_succeeds() {
        let origin_dir = tempfile::tempdir().unwrap();
        let origin = Git::new(origin_dir.path());
        origin.run(&["init", "--quiet", "-b", "main"]).unwrap();
        let first = commit(&origin, origin_dir.path(), "one");
        let work = tempfile::tempdir().unwrap();
        let checkout = Checkout::new(work.path());
        let url = origin_dir.path().to_string_lossy().into_owned();
        checkout.prepare(&url, &first, &[], &[], &[]).unwrap();
        let second = commit(&origin, origin_dir.path(), "two");
        let clone = Git::new(checkout.dir());
        clone.run(&["fetch", "--quiet", "origin", "+refs/heads/*:refs/remotes/origin/*"]).unwrap();
        // Lose the new file's object, as a disk fault or an interrupted write would: the
        // commit is there, its content is not.
        let blob = clone.run(&["rev-parse", &format!("{second}:file.txt")]).unwrap().trim().to_owned();
        let loose = checkout.dir().join(".git/objects").join(&blob[..2]).join(&blob[2..]);
        std::fs::remove_file(&loose).unwrap_or_else(|error| panic!("{}: {error}", loose.display()));
        checkout.prepare(&url, &second, &[], &[], &[]).unwrap();
        assert_eq!(std::fs::read_to_string(checkout.dir().join("file.txt")).unwrap(), "two");
    }
}
