//! A thin, synchronous wrapper around the real `git` command. Greenlight never links a git
//! library: the master, the workers and the fixtures all shell out to git, with arguments
//! passed as a vector (never through a shell), and turn failures into [`GitError`].

use std::path::{Path, PathBuf};
use std::process::Command;

/// A git command that failed.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// git could not be started at all.
    #[error("could not run git {args}: {source}")]
    Spawn {
        /// The arguments, space separated.
        args: String,
        /// Why it could not start.
        source: std::io::Error,
    },
    /// git ran and exited non-zero.
    #[error("git {args} failed: {stderr}")]
    Failed {
        /// The arguments, space separated.
        args: String,
        /// What git printed on standard error, trimmed.
        stderr: String,
    },
}

/// A repository directory (bare or with a work tree) that git commands run in.
#[derive(Debug, Clone)]
pub struct Git {
    dir: PathBuf,
}

impl Git {
    /// Commands run with `dir` as their working directory.
    pub fn new(dir: impl Into<PathBuf>) -> Git {
        Git { dir: dir.into() }
    }

    /// The directory commands run in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs git with `args` and returns its standard output as bytes.
    pub fn run_bytes<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Result<Vec<u8>, GitError> {
        let shown = || args.iter().map(|arg| arg.as_ref().to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ");
        let output = Command::new("git")
            .args(args)
            .current_dir(&self.dir)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("LC_ALL", "C")
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|source| GitError::Spawn { args: shown(), source })?;
        if !output.status.success() {
            return Err(GitError::Failed {
                args: shown(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        Ok(output.stdout)
    }

    /// Removes every untracked file of the work tree, ignored ones too, except those
    /// matching `keep` (`git clean` patterns such as `/target/`).
    pub fn clean_untracked(&self, keep: &[&str]) -> Result<(), GitError> {
        let mut args = vec!["clean", "-qfdx"];
        for pattern in keep {
            args.extend(["-e", pattern]);
        }
        self.run(&args).map(drop)
    }

    /// Runs git with `args` and returns its standard output, lossily decoded and trimmed.
    pub fn run<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Result<String, GitError> {
        let stdout = self.run_bytes(args)?;
        Ok(String::from_utf8_lossy(&stdout).trim().to_owned())
    }
}
