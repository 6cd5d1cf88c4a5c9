//! Changes: the git side of the master. It keeps a bare mirror of the watched branch,
//! finds the commits that arrived since the last look (like Buildbot's GitPoller), reads
//! each commit's author, message and paths, and tags it from its `Tags:` trailer and the
//! configured path rules. It also reads the suite of a revision. All of it is blocking
//! git work, run by the caller on a blocking thread.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};
use greenlight_shared::git::{Git, GitError};

use crate::config::{Config, TagsConfig};

/// A commit as read from git.
#[derive(Debug, Clone, PartialEq)]
pub struct Commit {
    /// The full revision.
    pub revision: String,
    /// `Name <email>`.
    pub author: String,
    /// The whole message.
    pub message: String,
    /// Paths it touched.
    pub paths: Vec<String>,
}

/// Tags changes by trailer and by path.
#[derive(Debug, Clone)]
pub struct Tagger {
    globs: GlobSet,
    tags_of_glob: Vec<Vec<String>>,
}

impl Tagger {
    /// A tagger for the configured path rules (validated with the configuration).
    pub fn new(config: &TagsConfig) -> Result<Tagger, globset::Error> {
        let mut builder = GlobSetBuilder::new();
        let mut tags_of_glob = Vec::new();
        for (pattern, tags) in &config.paths {
            builder.add(Glob::new(pattern)?);
            tags_of_glob.push(tags.clone());
        }
        Ok(Tagger { globs: builder.build()?, tags_of_glob })
    }

    /// The tags of a commit: its `Tags:` trailer lines (comma or space separated, any
    /// case of the key) and the tags of every path rule matching a changed path.
    pub fn tags(&self, commit: &Commit) -> Vec<String> {
        let mut tags = BTreeSet::new();
        for line in commit.message.lines() {
            let Some((key, value)) = line.split_once(':') else { continue };
            if key.trim().eq_ignore_ascii_case("tags") {
                tags.extend(value.split([',', ' ']).map(str::trim).filter(|tag| !tag.is_empty()).map(str::to_owned));
            }
        }
        for path in &commit.paths {
            for matched in self.globs.matches(path) {
                tags.extend(self.tags_of_glob[matched].iter().cloned());
            }
        }
        tags.into_iter().collect()
    }
}

/// The master's bare mirror of the watched repository.
#[derive(Debug, Clone)]
pub struct Mirror {
    git: Git,
    url: String,
    branch: String,
}

impl Mirror {
    /// The mirror under `data_dir` for `config`'s repository (created on first fetch).
    pub fn new(config: &Config) -> Mirror {
        Mirror {
            git: Git::new(config.data_dir.join("mirror.git")),
            url: config.repository.url.clone(),
            branch: config.repository.branch.clone(),
        }
    }

    /// Where the mirror lives.
    pub fn dir(&self) -> &Path {
        self.git.dir()
    }

    /// Fetches the branch and returns its tip.
    pub fn fetch(&self) -> Result<String, GitError> {
        if !self.dir().join("HEAD").exists() {
            std::fs::create_dir_all(self.dir()).map_err(|source| GitError::Spawn { args: "init".into(), source })?;
            self.git.run(&["init", "--quiet", "--bare"])?;
        }
        let refspec = format!("+refs/heads/{0}:refs/heads/{0}", self.branch);
        self.git.run(&["fetch", "--quiet", "--no-tags", &self.url, &refspec])?;
        self.git.run(&["rev-parse", "--verify", &format!("refs/heads/{}^{{commit}}", self.branch)])
    }

    /// The commits from `last_seen` (exclusive) to `tip`, oldest first. Without a last
    /// seen revision, or when history was rewritten past it, only the tip.
    pub fn new_revisions(&self, last_seen: Option<&str>, tip: &str) -> Result<Vec<String>, GitError> {
        match last_seen {
            Some(last) if last == tip => Ok(Vec::new()),
            Some(last) if self.git.run(&["merge-base", "--is-ancestor", last, tip]).is_ok() => {
                let listed = self.git.run(&["rev-list", "--reverse", "--topo-order", &format!("{last}..{tip}")])?;
                Ok(listed.lines().map(str::to_owned).collect())
            }
            _ => Ok(vec![tip.to_owned()]),
        }
    }

    /// Reads one commit.
    pub fn commit(&self, revision: &str) -> Result<Commit, GitError> {
        let header = self.git.run_bytes(&["show", "-s", "--format=%H%x00%an <%ae>%x00%B", revision])?;
        let header = String::from_utf8_lossy(&header);
        let mut parts = header.splitn(3, '\0');
        let full = parts.next().unwrap_or_default().trim().to_owned();
        let author = parts.next().unwrap_or_default().to_owned();
        let message = parts.next().unwrap_or_default().trim_end().to_owned();
        let paths =
            self.git.run_bytes(&["diff-tree", "--root", "--no-commit-id", "--name-only", "-r", "-z", revision])?;
        let paths = paths
            .split(|byte| *byte == 0)
            .filter(|path| !path.is_empty())
            .map(|path| String::from_utf8_lossy(path).into_owned())
            .collect();
        Ok(Commit { revision: full, author, message, paths })
    }

    /// The bytes of `path` at `revision`.
    pub fn read_file(&self, revision: &str, path: &str) -> Result<Vec<u8>, GitError> {
        self.git.run_bytes(&["show", &format!("{revision}:{path}")])
    }

    /// The entries of `directory` (`""`: the root) at `revision`, as paths from the root.
    pub fn entries(&self, revision: &str, directory: &str) -> Result<Vec<String>, GitError> {
        let mut args = vec!["ls-tree", "--name-only", "-z", revision];
        let inside = format!("{directory}/");
        if !directory.is_empty() {
            args.extend(["--", inside.as_str()]);
        }
        let listed = self.git.run_bytes(&args)?;
        Ok(listed
            .split(|byte| *byte == 0)
            .filter(|entry| !entry.is_empty())
            .map(|entry| String::from_utf8_lossy(entry).into_owned())
            .collect())
    }

    /// Whether `path` at `revision` is a directory (a tree; a file is a blob).
    pub fn is_directory(&self, revision: &str, path: &str) -> bool {
        self.git.run(&["cat-file", "-t", &format!("{revision}:{path}")]).is_ok_and(|kind| kind.trim() == "tree")
    }

    /// The bytes of `path` at `revision`, `None` where the commit has no such path.
    pub fn read_file_if_any(&self, revision: &str, path: &str) -> Result<Option<Vec<u8>>, GitError> {
        match self.read_file(revision, path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(_) if self.lacks_file(revision, path) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Whether the commit `revision` is here but has no `path` (what a failed
    /// [`Mirror::read_file`] meant, asked of git itself rather than read from its
    /// message, which depends on the locale).
    pub fn lacks_file(&self, revision: &str, path: &str) -> bool {
        self.git.run(&["cat-file", "-e", &format!("{revision}^{{commit}}")]).is_ok()
            && self.git.run(&["cat-file", "-e", &format!("{revision}:{path}")]).is_err()
    }

    /// Commits the revert of `culprit` on top of `branch` of the repository at `url` (in a
    /// work tree under `dir`) and pushes it. Returns the revert's revision.
    pub fn revert(&self, url: &str, branch: &str, culprit: &str, dir: &PathBuf) -> Result<String, GitError> {
        if !dir.join(".git").exists() {
            std::fs::create_dir_all(dir).map_err(|source| GitError::Spawn { args: "clone".into(), source })?;
            Git::new(dir).run(&["clone", "--quiet", "--no-checkout", url, "."])?;
        }
        let tree = Git::new(dir);
        tree.run(&["fetch", "--quiet", "origin", &format!("+refs/heads/{branch}:refs/remotes/origin/{branch}")])?;
        tree.run(&["checkout", "--quiet", "--force", "-B", "greenlight-revert", &format!("origin/{branch}")])?;
        let identity = ["-c", "user.name=Greenlight", "-c", "user.email=greenlight@localhost"];
        let mut revert: Vec<&str> = identity.to_vec();
        revert.extend(["revert", "--no-edit", culprit]);
        if let Err(error) = tree.run(&revert) {
            let _ = tree.run(&["revert", "--abort"]);
            return Err(error);
        }
        tree.run(&["push", "--quiet", "origin", &format!("HEAD:refs/heads/{branch}")])?;
        tree.run(&["rev-parse", "HEAD"])
    }

    /// A work tree of `revision` under `dir` (for a suite list command). Untracked files
    /// are removed but those matching `keep` (`git clean` patterns, such as cargo's
    /// `/target/`, so that listing the next revision builds incrementally).
    pub fn checkout(&self, revision: &str, dir: &PathBuf, keep: &[&str]) -> Result<(), GitError> {
        if !dir.join(".git").exists() {
            std::fs::create_dir_all(dir).map_err(|source| GitError::Spawn { args: "clone".into(), source })?;
            Git::new(dir).run(&["clone", "--quiet", "--no-checkout", &self.dir().to_string_lossy(), "."])?;
        }
        let checkout = Git::new(dir);
        checkout.run(&["fetch", "--quiet", "origin", revision])?;
        checkout.run(&["checkout", "--quiet", "--force", "--detach", revision])?;
        checkout.clean_untracked(keep)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(message: &str, paths: &[&str]) -> Commit {
        Commit {
            revision: "r".into(),
            author: "a".into(),
            message: message.into(),
            paths: paths.iter().map(|path| (*path).into()).collect(),
        }
    }

    fn check(message: &str, paths: &[&str], expected: &[&str]) {
        let mut rules = TagsConfig::default();
        rules.paths.insert("src/chat/**".into(), vec!["chat".into()]);
        rules.paths.insert("src/shop/*.py".into(), vec!["shop".into(), "payments".into()]);
        let tagger = Tagger::new(&rules).unwrap();
        assert_eq!(tagger.tags(&commit(message, paths)), expected);
    }

    #[test]
    fn tags_come_from_trailers_and_paths() {
        check("Fix emoji\n\nTags: chat, avatar", &[], &["avatar", "chat"]);
        check("Fix\n\ntags: rooms games", &["src/chat/deep/x.py"], &["chat", "games", "rooms"]);
        check("Price rounding", &["src/shop/cart.py", "README"], &["payments", "shop"]);
        check("Docs only", &["README"], &[]);
    }
}
