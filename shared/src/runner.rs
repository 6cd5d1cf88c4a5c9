//! Runner adapters: how Greenlight lists the tests of a checked-out revision, runs a
//! shard of them, and matches the runner's JUnit report back to test ids, for pytest,
//! cargo-nextest and any command that writes JUnit ("command", the generic adapter).
//!
//! Everything here is argv (never a shell string) and pure text handling, except
//! [`list_suite`], which runs the runner's own listing in a checkout, the way
//! [`crate::git`] runs git. The master lists with it, workers build their shard argv with
//! it, and `greenlight list` prints what it finds.
//!
//! Tags, dependencies and the shard overhead of a listed suite come from an optional
//! `greenlight.toml` at the root of the repository:
//!
//! ```toml
//! [tests]
//! shard_overhead_s = 2.0
//! [tests.tags]                      # test id prefix -> tags
//! "networkx/algorithms/" = ["algorithms"]
//! [tests.depends_on]                # test id -> ids that must pass first
//! "pkg/test_b.py::test_b" = ["pkg/test_a.py::test_a"]
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::suite::{SuiteFile, SuiteTest};

mod scope;
pub use scope::{PYTEST_CONFIG_FILES, collection_paths, covers, pytest_default_paths, test_paths};

/// The file in a repository that gives listed tests their tags and dependencies.
pub const REPOSITORY_FILE: &str = "greenlight.toml";

/// The nextest profile Greenlight defines (in a tool config file) to get a JUnit report.
pub const NEXTEST_PROFILE: &str = "greenlight";

/// Where `cargo nextest archive` leaves the revision's build, relative to the checkout.
pub const NEXTEST_ARCHIVE: &str = "target/greenlight-nextest.tar.zst";

/// Where a worker extracts the revision's archive once, relative to the checkout: every
/// shard of the revision runs from it rather than extracting the archive again.
pub const NEXTEST_EXTRACTED: &str = "target/greenlight-nextest-extracted";

/// Which adapter runs the suite; travels in every lease.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Runner {
    /// The generic adapter: the configured command templates and a JUnit file.
    #[default]
    Command,
    /// pytest, by node id, run as `PYTHON -m pytest` with `--rootdir` pinned to the checkout.
    Pytest {
        /// The interpreter that has pytest (a path or a name on `PATH`).
        python: String,
        /// The user's pytest arguments. The listing gets them all; a shard and its
        /// `reproduce` line get the options except the selecting ones (see
        /// [`split_pytest_args`]): paths, `-k`, `-m`, `--deselect`, `--ignore`.
        #[serde(default)]
        args: Vec<String>,
    },
    /// cargo-nextest: built once per revision into an archive, shards run from it.
    Nextest {
        /// The cargo to call (`cargo nextest ...`).
        cargo: String,
        /// The user's `cargo nextest list` arguments. The listing gets them all; the
        /// archive build, a shard and its `reproduce` line get what applies to them (see
        /// [`NextestArgs`]).
        #[serde(default)]
        args: Vec<String>,
    },
}

/// The files of one shard that adapters refer to.
#[derive(Debug, Clone)]
pub struct ShardPaths<'a> {
    /// One test id per line.
    pub ids_file: &'a Path,
    /// Where the generic adapter's runner writes JUnit.
    pub junit: &'a Path,
    /// A directory private to the shard (nextest finds its tool config there).
    pub shard_dir: &'a Path,
}

/// Why the tests of a checkout could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// The listing command could not start.
    #[error("cannot start {program}: {source}")]
    Start {
        /// The program.
        program: String,
        /// The error.
        source: std::io::Error,
    },
    /// The listing command failed.
    #[error("{command} exited with {status}: {output}")]
    Failed {
        /// The command, for humans.
        command: String,
        /// Its exit status.
        status: String,
        /// The tail of its output.
        output: String,
    },
    /// The user's arguments cannot be split between the listing and the shards.
    #[error(transparent)]
    Arguments(#[from] UnclearArgument),
    /// Its output was not what the runner prints.
    #[error("cannot read the test listing: {0}")]
    Output(String),
    /// The repository's `greenlight.toml` is unusable.
    #[error("{REPOSITORY_FILE}: {0}")]
    RepositoryFile(String),
    /// The generic adapter cannot list (it uses `file` or `list_command`).
    #[error("the command runner does not list tests; configure `file` or `list_command`")]
    NotListable,
}

impl Runner {
    /// The adapter's name: `command`, `pytest` or `nextest`.
    pub fn name(&self) -> &'static str {
        match self {
            Runner::Command => "command",
            Runner::Pytest { .. } => "pytest",
            Runner::Nextest { .. } => "nextest",
        }
    }

    /// Untracked paths of the checkout that survive a change of revision (`git clean`
    /// patterns): nextest keeps cargo's `target/`, so the next revision's archive builds
    /// incrementally instead of from scratch.
    pub fn kept_across_revisions(&self) -> &'static [&'static str] {
        match self {
            Runner::Nextest { .. } => &["/target/"],
            Runner::Command | Runner::Pytest { .. } => &[],
        }
    }

    /// The argv that lists the suite in a checkout, if the adapter lists.
    pub fn list_argv(&self) -> Option<Vec<String>> {
        match self {
            Runner::Command => None,
            Runner::Pytest { python, args } => {
                // pytest's own `--collect-only -q`, run by a small script that also names
                // the test files pytest skipped while collecting them (see
                // [`PYTEST_LIST_SCRIPT`]).
                let mut argv = strings(&[python, "-c", PYTEST_LIST_SCRIPT]);
                argv.extend(pytest_base(python).split_off(3));
                argv.extend(["--collect-only".to_owned(), "-q".to_owned()]);
                argv.extend(args.iter().cloned());
                Some(argv)
            }
            Runner::Nextest { cargo, args } => {
                let mut argv = strings(&[cargo, "nextest", "list", "--message-format", "json"]);
                argv.extend(args.iter().cloned());
                Some(argv)
            }
        }
    }

    /// The argv that lists the suite on the worker that prepares a revision, after its
    /// setup ([`Runner::setup_argv`]): nextest lists from the archive the setup built (no
    /// second build), pytest collects as [`Runner::list_argv`] does.
    pub fn prepared_list_argv(&self) -> Option<Vec<String>> {
        match self {
            Runner::Nextest { cargo, args } => {
                // What the listing extracts stays for the preparer's own shards.
                let mut argv = nextest_extracting_list(cargo);
                argv.extend(strings(&["--message-format", "json"]));
                argv.extend(split_nextest_args(args).list_archive);
                Some(argv)
            }
            Runner::Command | Runner::Pytest { .. } => self.list_argv(),
        }
    }

    /// The step that builds the revision's archive (nextest), which a worker may skip by
    /// downloading the archive another worker built.
    pub fn archive_argv(&self) -> Option<Vec<String>> {
        match self {
            Runner::Nextest { cargo, args } => {
                let mut argv = strings(&[cargo, "nextest", "archive", "--archive-file", NEXTEST_ARCHIVE]);
                argv.extend(split_nextest_args(args).archive);
                Some(argv)
            }
            Runner::Command | Runner::Pytest { .. } => None,
        }
    }

    /// The argv that extracts the revision's archive into [`NEXTEST_EXTRACTED`] once (a
    /// listing from the archive that keeps what it extracted), if the adapter has one.
    pub fn extract_argv(&self) -> Option<Vec<String>> {
        match self {
            Runner::Nextest { cargo, args } => {
                let mut argv = nextest_extracting_list(cargo);
                argv.extend(split_nextest_args(args).shard);
                Some(argv)
            }
            Runner::Command | Runner::Pytest { .. } => None,
        }
    }

    /// The test ids in the listing's standard output.
    pub fn parse_listing(&self, stdout: &str) -> Result<Vec<String>, ListError> {
        match self {
            Runner::Command => Err(ListError::NotListable),
            Runner::Pytest { .. } => Ok(parse_pytest_collection(stdout)),
            Runner::Nextest { .. } => parse_nextest_list(stdout),
        }
    }

    /// The setup once per revision, given the configured one (which runs first).
    pub fn setup_argv(&self, configured: &[String]) -> Vec<Vec<String>> {
        let mut steps: Vec<Vec<String>> = Vec::new();
        if !configured.is_empty() {
            steps.push(configured.to_vec());
        }
        steps.extend(self.archive_argv());
        steps
    }

    /// The shard's argv. `template` is the configured run command (the generic adapter's
    /// only input; `{ids}` is a whole argument becoming one per test, `{ids_file}`,
    /// `{junit}` and `{revision}` are replaced inside arguments).
    pub fn shard_argv(
        &self,
        template: &[String],
        tests: &[String],
        paths: &ShardPaths<'_>,
        revision: &str,
    ) -> Vec<String> {
        match self {
            Runner::Command => expand_template(template, tests, paths, revision),
            Runner::Pytest { python, args } => {
                let mut argv = pytest_base(python);
                argv.extend(pytest_run_args(args));
                // After the user's options: a `--junitxml` of theirs is overridden.
                argv.push(format!("--junitxml={}", paths.junit.to_string_lossy()));
                // One node id per line of the file: no shell, no argv length limit.
                argv.push(format!("@{}", paths.ids_file.to_string_lossy()));
                argv
            }
            Runner::Nextest { cargo, args } => {
                let mut argv = nextest_run_base(cargo);
                argv.extend(split_nextest_args(args).shard);
                argv.extend([
                    "--tool-config-file".to_owned(),
                    format!("greenlight:{}", paths.shard_dir.join("nextest.toml").to_string_lossy()),
                    // One JSON line per test as it ends, on standard output.
                    "--message-format".to_owned(),
                    "libtest-json-plus".to_owned(),
                    // The listing chose the tests: ignored ones and ones outside the
                    // default filter it listed run too.
                    "--run-ignored".to_owned(),
                    "all".to_owned(),
                    "--ignore-default-filter".to_owned(),
                    "-E".to_owned(),
                    nextest_filter(tests),
                ]);
                argv
            }
        }
    }

    /// Whether the shard's runner writes one machine-readable event per finished test on
    /// its standard output (nextest's `libtest-json-plus`), read as it runs.
    pub fn streams_events(&self) -> bool {
        matches!(self, Runner::Nextest { .. })
    }

    /// Environment the shard's runner needs (nextest's event stream is experimental).
    pub fn shard_env(&self) -> &'static [(&'static str, &'static str)] {
        match self {
            Runner::Nextest { .. } => &[("NEXTEST_EXPERIMENTAL_LIBTEST_JSON", "1")],
            Runner::Command | Runner::Pytest { .. } => &[],
        }
    }

    /// Files the shard needs besides the id list: (path in the shard dir, contents).
    pub fn shard_files(&self) -> Vec<(&'static str, String)> {
        match self {
            Runner::Nextest { .. } => vec![("nextest.toml", nextest_tool_config())],
            _ => Vec::new(),
        }
    }

    /// Where the runner's JUnit report appears, relative paths against the checkout.
    pub fn junit_path(&self, paths: &ShardPaths<'_>, checkout: &Path) -> std::path::PathBuf {
        match self {
            Runner::Nextest { .. } => checkout.join("target/nextest").join(NEXTEST_PROFILE).join("junit.xml"),
            _ => paths.junit.to_owned(),
        }
    }

    /// How a JUnit `<testcase>` of this runner names `test_id`: (`classname`, `name`),
    /// when the runner's naming is known exactly.
    pub fn junit_key(&self, test_id: &str) -> Option<(String, String)> {
        match self {
            Runner::Command => None,
            Runner::Pytest { .. } => Some(pytest_junit_key(test_id)),
            Runner::Nextest { .. } => {
                let (binary_id, name) = test_id.split_once(' ')?;
                Some((binary_id.to_owned(), name.to_owned()))
            }
        }
    }

    /// A command line to rerun a shard by hand in a checkout of `revision` (for a shell:
    /// every word is quoted as needed).
    pub fn reproduce(&self, setup: &[String], template: &[String], tests: &[String], revision: &str) -> String {
        let mut lines = vec![format!("git checkout --detach {}", shell_quote(revision))];
        match self {
            Runner::Command => {
                for step in self.setup_argv(setup) {
                    lines.push(shell_join(&step));
                }
                let argv = expand_template(
                    template,
                    tests,
                    &ShardPaths {
                        ids_file: Path::new("greenlight-ids.txt"),
                        junit: Path::new("greenlight-junit.xml"),
                        shard_dir: Path::new("."),
                    },
                    revision,
                );
                if template.iter().any(|argument| argument.contains("{ids_file}")) {
                    lines.push(format!("printf '%s\\n' {} > greenlight-ids.txt", shell_join(tests)));
                }
                lines.push(shell_join(&argv));
            }
            Runner::Pytest { python, args } => {
                for step in self.setup_argv(setup) {
                    lines.push(shell_join(&step));
                }
                let mut argv = pytest_base(python);
                argv.extend(pytest_run_args(args));
                argv.extend(tests.iter().cloned());
                lines.push(shell_join(&argv));
            }
            Runner::Nextest { cargo, args } => {
                for step in self.setup_argv(setup).into_iter().filter(|step| !step.contains(&"archive".to_owned())) {
                    lines.push(shell_join(&step));
                }
                let mut argv = strings(&[cargo, "nextest", "run", "--no-fail-fast"]);
                argv.extend(split_nextest_args(args).reproduce);
                argv.extend(strings(&["--run-ignored", "all", "--ignore-default-filter", "-E"]));
                argv.push(nextest_filter(tests));
                lines.push(shell_join(&argv));
            }
        }
        lines.join(" && ")
    }
}

/// A user's argument whose role cannot be told: the option is not one the runner's parser
/// is known to have, so the next word may be its value or a path to collect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "runner_args: cannot tell whether {word:?} is the value of {option} or a path to collect; \
     write `{option}=VALUE` if it takes a value, or put the paths before it if it does not"
)]
pub struct UnclearArgument {
    /// The option the runner's parser is not known to have.
    pub option: String,
    /// The word after it.
    pub word: String,
}

/// How a runner's parser reads its command line: which options take a value. A word
/// beginning with `-` is an option, `--NAME=VALUE` and `-XVALUE` carry their value, short
/// flags cluster (`-vx`), `--` ends the options, and `@FILE` is a file of arguments.
struct Syntax {
    /// Short options taking a value (`-p X`, `-pX`).
    short_values: &'static str,
    /// Short options taking none.
    short_flags: &'static str,
    /// Long options taking a value (`--rootdir X`, `--rootdir=X`).
    long_values: &'static [&'static str],
    /// Long options whose value is optional: the next word unless it is an option.
    long_optional: &'static [&'static str],
    /// Long options taking none.
    long_flags: &'static [&'static str],
}

/// One argument as the runner's parser reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Argument {
    /// An option by its name (`-p`, `--rootdir`) and its words (itself, its value if separate).
    Option { name: String, words: Vec<String> },
    /// A path, node id, test name filter, or any word after `--`.
    Positional(String),
    /// An option the syntax does not know.
    Unknown(String),
    /// A file of arguments (`@FILE`): what is in it is unknown here.
    ArgumentsFile(String),
}

impl Syntax {
    fn read(&self, args: &[String]) -> Vec<Argument> {
        let mut read = Vec::with_capacity(args.len());
        let mut words = args.iter();
        while let Some(word) = words.next() {
            if word == "--" {
                read.extend(words.by_ref().map(|word| Argument::Positional(word.clone())));
            } else if word.starts_with('@') {
                read.push(Argument::ArgumentsFile(word.clone()));
            } else if let Some(long) = word.strip_prefix("--") {
                let name = format!("--{}", long.split_once('=').map_or(long, |(name, _)| name));
                if long.contains('=') || self.long_flags.contains(&name.as_str()) {
                    read.push(Argument::Option { name, words: vec![word.clone()] });
                } else if self.long_values.contains(&name.as_str()) {
                    let value = words.next().cloned();
                    read.push(Argument::Option {
                        name,
                        words: [Some(word.clone()), value].into_iter().flatten().collect(),
                    });
                } else if self.long_optional.contains(&name.as_str()) {
                    let value = words.as_slice().first().filter(|next| !next.starts_with('-')).cloned();
                    if value.is_some() {
                        words.next();
                    }
                    read.push(Argument::Option {
                        name,
                        words: [Some(word.clone()), value].into_iter().flatten().collect(),
                    });
                } else {
                    read.push(Argument::Unknown(word.clone()));
                }
            } else if word.len() > 1 && word.starts_with('-') {
                self.read_short_cluster(word, &mut words, &mut read);
            } else {
                read.push(Argument::Positional(word.clone()));
            }
        }
        read
    }

    /// `-vx`, `-pNAME`, `-p NAME`, `-vk EXPR`: one option per letter until one takes a
    /// value (the rest of the word, or the next word).
    fn read_short_cluster(&self, word: &str, words: &mut std::slice::Iter<'_, String>, read: &mut Vec<Argument>) {
        let letters = &word[1..];
        for (at, letter) in letters.char_indices() {
            let name = format!("-{letter}");
            let rest = &letters[at + letter.len_utf8()..];
            if self.short_values.contains(letter) {
                let words = if rest.is_empty() {
                    [Some(name.clone()), words.next().cloned()].into_iter().flatten().collect()
                } else {
                    vec![format!("{name}{rest}")]
                };
                read.push(Argument::Option { name, words });
                return;
            } else if self.short_flags.contains(letter) {
                read.push(Argument::Option { name: name.clone(), words: vec![name] });
            } else {
                // An unknown letter: a value of its own may follow attached; only a
                // word ending with it leaves the next word unclear.
                read.push(if rest.is_empty() {
                    Argument::Unknown(name)
                } else {
                    Argument::Option { name: name.clone(), words: vec![format!("{name}{rest}")] }
                });
                return;
            }
        }
    }
}

/// pytest 9.2's own options (`_pytest`'s parser, the cache provider disabled as Greenlight
/// disables it). An option a plugin adds is unknown here.
const PYTEST_SYNTAX: Syntax = Syntax {
    short_values: "kmWcpor",
    short_flags: "xVhvqls",
    long_values: &[
        "--maxfail",
        "--max-warnings",
        "--pythonwarnings",
        "--ignore",
        "--ignore-glob",
        "--deselect",
        "--confcutdir",
        "--import-mode",
        "--config-file",
        "--rootdir",
        "--basetemp",
        "--durations",
        "--durations-min",
        "--override-ini",
        "--verbosity",
        "--report-chars",
        "--tb",
        "--show-capture",
        "--color",
        "--code-highlight",
        "--pdbcls",
        "--capture",
        "--pastebin",
        "--assert",
        "--junitxml",
        "--junit-xml",
        "--junitprefix",
        "--junit-prefix",
        "--doctest-report",
        "--doctest-glob",
        "--log-level",
        "--log-format",
        "--log-date-format",
        "--log-cli-level",
        "--log-cli-format",
        "--log-cli-date-format",
        "--log-file",
        "--log-file-mode",
        "--log-file-level",
        "--log-file-format",
        "--log-file-date-format",
        "--log-auto-indent",
        "--log-disable",
    ],
    long_optional: &["--debug"],
    long_flags: &[
        "--markers",
        "--exitfirst",
        "--strict-config",
        "--strict-markers",
        "--strict",
        "--collectonly",
        "--collect-only",
        "--co",
        "--pyargs",
        "--noconftest",
        "--keepduplicates",
        "--keep-duplicates",
        "--collect-in-virtualenv",
        "--continue-on-collection-errors",
        "--fixtures",
        "--funcargs",
        "--fixtures-per-test",
        "--version",
        "--help",
        "--disable-plugin-autoload",
        "--traceconfig",
        "--trace-config",
        "--verbose",
        "--no-header",
        "--no-summary",
        "--no-fold-skipped",
        "--force-short-summary",
        "--quiet",
        "--disable-warnings",
        "--disable-pytest-warnings",
        "--showlocals",
        "--no-showlocals",
        "--xfail-tb",
        "--fulltrace",
        "--full-trace",
        "--pdb",
        "--trace",
        "--runxfail",
        "--doctest-modules",
        "--doctest-ignore-import-errors",
        "--doctest-continue-on-failure",
        "--setuponly",
        "--setup-only",
        "--setupshow",
        "--setup-show",
        "--setupplan",
        "--setup-plan",
    ],
};

/// pytest options that choose what to collect: the listing's, never a shard's (a shard
/// names its node ids).
const PYTEST_SELECTION: &[&str] =
    &["-k", "-m", "--deselect", "--ignore", "--ignore-glob", "--collect-only", "--collectonly", "--co"];

/// The user's pytest arguments split by use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PytestArgs {
    /// The options a shard runs with, as the user wrote them (a short cluster split).
    pub run: Vec<String>,
    /// What the listing alone gets: paths and node ids, `-k`, `-m`, `--deselect`,
    /// `--ignore`, `--ignore-glob`, an `@FILE`.
    pub selection: Vec<String>,
}

/// Splits the user's pytest arguments into the options a shard runs with and the
/// selection the listing alone uses, with the words whose role is unclear.
///
/// A word beginning with `-` is an option; pytest's own options take their value from the
/// same word (`--rootdir=X`, `-pX`) or the next (`-p X`, `--rootdir X`); anything else is
/// a path or node id to collect, as is every word after `--`. An option a plugin adds
/// (`-n 4`, `--runslow`) followed by a word that is not an option is unclear: the listing
/// refuses it ([`list_suite`]); a shard counts the word as a path, so a value-taking
/// option left without its value makes the shard fail loudly rather than run more.
pub fn split_pytest_args(args: &[String]) -> (PytestArgs, Vec<UnclearArgument>) {
    let mut split = PytestArgs::default();
    let mut unclear = Vec::new();
    let mut read = PYTEST_SYNTAX.read(args).into_iter().peekable();
    while let Some(argument) = read.next() {
        match argument {
            Argument::Option { name, words } if PYTEST_SELECTION.contains(&name.as_str()) => {
                split.selection.extend(words)
            }
            Argument::Option { words, .. } => split.run.extend(words),
            Argument::Positional(word) | Argument::ArgumentsFile(word) => split.selection.push(word),
            Argument::Unknown(option) => {
                if let Some(Argument::Positional(word)) = read.peek() {
                    unclear.push(UnclearArgument { option: option.clone(), word: word.clone() });
                }
                split.run.push(option);
            }
        }
    }
    (split, unclear)
}

/// cargo-nextest 0.9's `list` options.
const NEXTEST_SYNTAX: Syntax = Syntax {
    short_values: "pFZETP",
    short_flags: "vhr",
    long_values: &[
        "--color",
        "--package",
        "--exclude",
        "--bin",
        "--example",
        "--test",
        "--bench",
        "--features",
        "--build-jobs",
        "--cargo-profile",
        "--target",
        "--target-dir",
        "--manifest-path",
        "--cargo-message-format",
        "--config",
        "--run-ignored",
        "--partition",
        "--platform-filter",
        "--filterset",
        "--message-format",
        "--list-type",
        "--show-progress",
        "--archive-file",
        "--archive-format",
        "--extract-to",
        "--cargo-metadata",
        "--workspace-remap",
        "--binaries-metadata",
        "--target-dir-remap",
        "--build-dir-remap",
        "--config-file",
        "--user-config-file",
        "--tool-config-file",
        "--profile",
    ],
    long_optional: &[],
    long_flags: &[],
};

/// nextest options that say how to build the tests (cargo's): the listing, the archive
/// and a run from source (`reproduce`) get them; a run from the archive must not.
const NEXTEST_BUILD: &[&str] = &[
    "-p",
    "--package",
    "--workspace",
    "--exclude",
    "--all",
    "--lib",
    "--bin",
    "--bins",
    "--example",
    "--examples",
    "--test",
    "--tests",
    "--bench",
    "--benches",
    "--all-targets",
    "-F",
    "--features",
    "--all-features",
    "--no-default-features",
    "--build-jobs",
    "-r",
    "--release",
    "--cargo-profile",
    "--target",
    "--target-dir",
    "--unit-graph",
    "--timings",
    "--manifest-path",
    "--frozen",
    "--locked",
    "--offline",
    "--cargo-message-format",
    "--cargo-quiet",
    "--cargo-verbose",
    "--ignore-rust-version",
    "--future-incompat-report",
    "--config",
    "-Z",
];

/// nextest's configuration options: every step gets them.
const NEXTEST_CONFIG: &[&str] =
    &["--config-file", "--user-config-file", "--tool-config-file", "--override-version-check"];

/// nextest's profile options: the listing, the archive and `reproduce` get them; a shard
/// runs under Greenlight's profile (a nextest profile cannot inherit from another file's).
const NEXTEST_PROFILE_OPTIONS: &[&str] = &["-P", "--profile"];

/// The user's `cargo nextest list` arguments for the other steps, in the user's order;
/// the listing gets all of them. Filters (`-E`, test names, `--partition`,
/// `--platform-filter`, `--run-ignored`, `--ignore-default-filter`) and output options
/// are the listing's alone: every shard runs exactly the listed tests, ignored ones and
/// ones outside the default filter alike.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NextestArgs {
    /// For the archive build: build, configuration and profile options.
    pub archive: Vec<String>,
    /// For a shard's run from the archive: configuration options (it refuses build
    /// options; it runs under Greenlight's profile).
    pub shard: Vec<String>,
    /// For a run from source (`reproduce`): build, configuration and profile options.
    pub reproduce: Vec<String>,
    /// For the listing from the archive (on the worker that built it): everything but the
    /// build options (it refuses them) and the output format (Greenlight reads JSON).
    pub list_archive: Vec<String>,
}

/// Splits the user's nextest arguments (see [`NextestArgs`]). An option nextest does not
/// have makes the listing fail, so unknown words are left to the listing.
pub fn split_nextest_args(args: &[String]) -> NextestArgs {
    let mut split = NextestArgs::default();
    for argument in NEXTEST_SYNTAX.read(args) {
        // nextest's long flags are not in its syntax: they read as unknown, alone.
        let (name, words) = match argument {
            Argument::Option { name, words } => (name, words),
            Argument::Unknown(word) => (word.clone(), vec![word]),
            Argument::Positional(word) | Argument::ArgumentsFile(word) => {
                split.list_archive.push(word);
                continue;
            }
        };
        let name = name.as_str();
        if !NEXTEST_BUILD.contains(&name) && name != "--message-format" {
            split.list_archive.extend(words.iter().cloned());
        }
        if NEXTEST_CONFIG.contains(&name) {
            split.shard.extend(words.iter().cloned());
        }
        if NEXTEST_BUILD.contains(&name) || NEXTEST_CONFIG.contains(&name) || NEXTEST_PROFILE_OPTIONS.contains(&name) {
            split.archive.extend(words.iter().cloned());
            split.reproduce.extend(words);
        }
    }
    split
}

fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|word| (*word).to_owned()).collect()
}

/// The arguments of a warm pytest runner's session (after `-m pytest`): the options every
/// pytest run of the farm has, then the configured ones, paths included: it collects what
/// the listing collects, then runs the node ids it is fed.
pub fn pytest_session_args(args: &[String]) -> Vec<String> {
    let mut session: Vec<String> = pytest_base("python").split_off(3);
    session.extend(args.iter().cloned());
    session
}

fn pytest_base(python: &str) -> Vec<String> {
    // --rootdir pins node ids to the checkout, whatever the install path; no cache
    // directory is written into the checkout.
    strings(&[python, "-m", "pytest", "-p", "no:cacheprovider", "--rootdir=."])
}

/// The user's pytest options a shard runs with (see [`split_pytest_args`]; the listing
/// refused what is unclear, unless the suite is not listed by pytest).
fn pytest_run_args(args: &[String]) -> Vec<String> {
    split_pytest_args(args).0.run
}

/// A listing from the revision's archive, with the checkout as the workspace, that keeps
/// what it extracts in [`NEXTEST_EXTRACTED`] for the shards to run from.
fn nextest_extracting_list(cargo: &str) -> Vec<String> {
    strings(&[
        cargo,
        "nextest",
        "list",
        "--archive-file",
        NEXTEST_ARCHIVE,
        "--workspace-remap",
        ".",
        "--extract-to",
        NEXTEST_EXTRACTED,
        "--extract-overwrite",
    ])
}

/// A run from the archive the worker extracted once ([`Runner::extract_argv`]): its
/// metadata, its target directory, the checkout as the workspace.
fn nextest_run_base(cargo: &str) -> Vec<String> {
    let metadata = format!("{NEXTEST_EXTRACTED}/target/nextest");
    strings(&[
        cargo,
        "nextest",
        "run",
        "--binaries-metadata",
        &format!("{metadata}/binaries-metadata.json"),
        "--cargo-metadata",
        &format!("{metadata}/cargo-metadata.json"),
        "--target-dir-remap",
        &format!("{NEXTEST_EXTRACTED}/target"),
        "--workspace-remap",
        ".",
        "--profile",
        NEXTEST_PROFILE,
    ])
}

fn nextest_tool_config() -> String {
    format!(
        "[profile.{NEXTEST_PROFILE}]\nfail-fast = false\n\n[profile.{NEXTEST_PROFILE}.junit]\npath = \"junit.xml\"\n"
    )
}

/// An exact nextest filterset for `tests` (ids `"<binary-id> <test name>"`), grouped by
/// binary.
pub fn nextest_filter(tests: &[String]) -> String {
    let mut by_binary: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for test in tests {
        let (binary_id, name) = test.split_once(' ').unwrap_or((test.as_str(), ""));
        by_binary.entry(binary_id).or_default().push(name);
    }
    let groups: Vec<String> = by_binary
        .into_iter()
        .map(|(binary_id, names)| {
            let names: Vec<String> = names.iter().map(|name| format!("test(={name})")).collect();
            format!("(binary_id(={binary_id}) & ({}))", names.join(" | "))
        })
        .collect();
    if groups.is_empty() { "none()".to_owned() } else { groups.join(" | ") }
}

/// The generic adapter's expansion of a run command template.
pub fn expand_template(template: &[String], tests: &[String], paths: &ShardPaths<'_>, revision: &str) -> Vec<String> {
    let mut argv = Vec::with_capacity(template.len() + tests.len());
    for argument in template {
        if argument == "{ids}" {
            argv.extend(tests.iter().cloned());
        } else {
            argv.push(
                argument
                    .replace("{ids_file}", &paths.ids_file.to_string_lossy())
                    .replace("{junit}", &paths.junit.to_string_lossy())
                    .replace("{revision}", revision),
            );
        }
    }
    argv
}

/// The line after which the pytest listing names the test files skipped at collection.
pub const PYTEST_SKIPPED_MARKER: &str = "greenlight: test files skipped at collection:";

/// The line after which the pytest listing names every collected node id, one per line,
/// up to a blank line: what the session collected, whatever the terminal printed (`-v`,
/// `-qq` or a plugin change what `--collect-only` prints).
pub const PYTEST_COLLECTED_MARKER: &str = "greenlight: collected node ids:";

/// What the pytest listing runs (`python -c SCRIPT ARGS`): `pytest.main(ARGS)`, that is
/// pytest's own `--collect-only -q`, then, after [`PYTEST_COLLECTED_MARKER`], the node ids
/// the session collected (whatever verbosity the arguments ask for), then, after
/// [`PYTEST_SKIPPED_MARKER`], one node id
/// per line for each test file that skipped itself while pytest imported it
/// (`pytest.importorskip`, a module-level `pytest.skip(allow_module_level=True)`).
/// `--collect-only` does not print those, yet a run reports each as a skipped test case
/// (JUnit `classname=""`, `name` the dotted path, `<skipped message="collection
/// skipped">`), so the suite holds them as tests whose id is the file's node id: a shard
/// given that id makes pytest collect the file again and report the same skip. Only
/// files: a directory whose `conftest.py` skips cannot be named to pytest (it fails
/// loading that conftest as an initial one), so it is left out. A file that fails to
/// import is a collection error: pytest exits 2 and the listing fails, as a direct run
/// is interrupted.
pub const PYTEST_LIST_SCRIPT: &str = "import sys
import pytest


class GreenlightListing:
    def __init__(self):
        self.skipped = []
        self.collected = []

    def pytest_configure(self, config):
        self.root = config.rootpath

    def pytest_collection_finish(self, session):
        self.collected = [item.nodeid for item in session.items]

    def pytest_collectreport(self, report):
        nodeid = report.nodeid
        if report.skipped and nodeid and '::' not in nodeid and nodeid not in self.skipped:
            if (self.root / nodeid).is_file():
                self.skipped.append(nodeid)


listing = GreenlightListing()
status = pytest.main(sys.argv[1:], plugins=[listing])
print()
print('greenlight: collected node ids:')
print('\\n'.join(listing.collected))
print()
if listing.skipped:
    print()
    print('greenlight: test files skipped at collection:')
    print('\\n'.join(listing.skipped))
sys.exit(int(status))
";

/// Node ids from the pytest listing ([`PYTEST_LIST_SCRIPT`]): the lines after the last
/// [`PYTEST_COLLECTED_MARKER`] up to a blank line (without the marker, as an older listing
/// printed them: the lines of `--collect-only -q` up to the first blank line, since a
/// warnings summary after it also contains `::`), then the test files skipped at
/// collection, named after the last [`PYTEST_SKIPPED_MARKER`].
pub fn parse_pytest_collection(stdout: &str) -> Vec<String> {
    let marker = format!("\n{PYTEST_COLLECTED_MARKER}\n");
    let collected = match stdout.rfind(&marker) {
        Some(at) => &stdout[at + marker.len()..],
        None => stdout,
    };
    let mut ids: Vec<String> =
        collected.lines().take_while(|line| !line.trim().is_empty()).map(str::to_owned).collect();
    ids.extend(pytest_skipped_files(stdout));
    ids
}

/// The test files the pytest listing names as skipped at collection: the lines after the
/// last [`PYTEST_SKIPPED_MARKER`].
fn pytest_skipped_files(stdout: &str) -> Vec<String> {
    let marker = format!("\n{PYTEST_SKIPPED_MARKER}\n");
    match stdout.rfind(&marker) {
        Some(at) => {
            stdout[at + marker.len()..].lines().filter(|line| !line.trim().is_empty()).map(str::to_owned).collect()
        }
        None => Vec::new(),
    }
}

/// pytest's JUnit naming of a node id (`mangle_test_address` in `_pytest/junitxml.py`):
/// the file path with `/` as `.` and without `.py`, then the classes, joined by `.` as
/// `classname`; the last part with its parameters as `name`.
pub fn pytest_junit_key(node_id: &str) -> (String, String) {
    let (path, params) = match node_id.find('[') {
        Some(bracket) => (&node_id[..bracket], &node_id[bracket..]),
        None => (node_id, ""),
    };
    let mut names: Vec<String> = path.split("::").map(str::to_owned).collect();
    let file = names[0].replace('/', ".");
    names[0] = file.strip_suffix(".py").map(str::to_owned).unwrap_or(file);
    let last = names.len() - 1;
    names[last].push_str(params);
    let name = names.pop().unwrap_or_default();
    (names.join("."), name)
}

/// The test ids a JUnit `<testcase>` may name under a runner with no exact naming of its
/// own (the generic adapter), most specific first: `name`, `classname::name`,
/// `classname.name`, `file::name`.
pub fn junit_candidates(classname: Option<&str>, name: &str, file: Option<&str>) -> Vec<String> {
    let mut candidates = vec![name.to_owned()];
    if let Some(classname) = classname {
        candidates.push(format!("{classname}::{name}"));
        candidates.push(format!("{classname}.{name}"));
    }
    if let Some(file) = file {
        candidates.push(format!("{file}::{name}"));
    }
    candidates
}

/// Finds which test of a suite a JUnit `<testcase>` reports: by the runner's exact JUnit
/// naming when it has one ([`Runner::junit_key`]: pytest, nextest), else by the forms of
/// [`junit_candidates`].
#[derive(Debug)]
pub struct JunitMatcher<'a> {
    by_key: std::collections::HashMap<(String, String), &'a str>,
    by_id: std::collections::HashSet<&'a str>,
}

impl<'a> JunitMatcher<'a> {
    /// A matcher over `ids`, named as `runner` names them.
    pub fn new(runner: &Runner, ids: &'a [String]) -> JunitMatcher<'a> {
        let mut by_key = std::collections::HashMap::new();
        for id in ids {
            if let Some(key) = runner.junit_key(id) {
                by_key.entry(key).or_insert(id.as_str());
            }
        }
        JunitMatcher { by_key, by_id: ids.iter().map(String::as_str).collect() }
    }

    /// The test id the case names, if any.
    pub fn find(&self, classname: Option<&str>, name: &str, file: Option<&str>) -> Option<&'a str> {
        let key = (classname.unwrap_or_default().to_owned(), name.to_owned());
        if let Some(id) = self.by_key.get(&key) {
            return Some(id);
        }
        junit_candidates(classname, name, file).iter().find_map(|candidate| self.by_id.get(candidate.as_str()).copied())
    }
}

#[derive(Deserialize)]
struct NextestList {
    #[serde(rename = "rust-suites")]
    rust_suites: BTreeMap<String, NextestSuite>,
}

#[derive(Deserialize)]
struct NextestSuite {
    #[serde(rename = "binary-id")]
    binary_id: String,
    testcases: BTreeMap<String, NextestCase>,
}

#[derive(Deserialize)]
struct NextestCase {
    #[serde(rename = "filter-match")]
    filter_match: NextestFilterMatch,
}

#[derive(Deserialize)]
struct NextestFilterMatch {
    status: String,
}

/// Test ids (`"<binary-id> <test name>"`, nextest's own way of writing a test) from
/// `cargo nextest list --message-format json`. Tests nextest would not run (ignored ones,
/// without `--run-ignored`) are left out, as a direct run leaves them out.
pub fn parse_nextest_list(stdout: &str) -> Result<Vec<String>, ListError> {
    let start = stdout.find('{').ok_or_else(|| ListError::Output("no JSON in the output".into()))?;
    let list: NextestList =
        serde_json::from_str(stdout[start..].trim()).map_err(|error| ListError::Output(error.to_string()))?;
    let mut ids = Vec::new();
    for suite in list.rust_suites.values() {
        for (name, case) in &suite.testcases {
            if case.filter_match.status == "matches" {
                ids.push(format!("{} {name}", suite.binary_id));
            }
        }
    }
    Ok(ids)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RepositoryFile {
    #[serde(default)]
    tests: TestsSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestsSection {
    #[serde(default)]
    shard_overhead_s: f64,
    #[serde(default)]
    tags: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    depends_on: BTreeMap<String, Vec<String>>,
}

/// A suite file from listed ids and the repository's `greenlight.toml` (if any): tags by
/// id prefix, dependencies by id. Validation (known ids, no cycle) is the scheduler's.
pub fn suite_from_listing(name: &str, ids: Vec<String>, repository_file: Option<&str>) -> Result<SuiteFile, ListError> {
    let file: RepositoryFile = match repository_file {
        Some(text) => toml::from_str(text).map_err(|error| ListError::RepositoryFile(error.to_string()))?,
        None => RepositoryFile::default(),
    };
    let tests = ids
        .into_iter()
        .map(|id| {
            let mut tags: Vec<String> = file
                .tests
                .tags
                .iter()
                .filter(|(prefix, _)| id.starts_with(prefix.as_str()))
                .flat_map(|(_, tags)| tags.iter().cloned())
                .collect();
            tags.sort_unstable();
            tags.dedup();
            let depends_on = file.tests.depends_on.get(&id).cloned().unwrap_or_default();
            SuiteTest { id, tags, depends_on, duration_s: None }
        })
        .collect();
    Ok(SuiteFile { name: name.to_owned(), shard_overhead_s: file.tests.shard_overhead_s, tests })
}

/// Lists the suite of the checkout in `dir` with `runner`, tags and dependencies from
/// its `greenlight.toml` (a pytest file skipped at collection declares `duration_s` 0).
/// Blocking.
pub fn list_suite(runner: &Runner, dir: &Path, env: &[(String, String)]) -> Result<SuiteFile, ListError> {
    let argv = runner.list_argv().ok_or(ListError::NotListable)?;
    list_with(runner, &argv, dir, env)
}

/// Lists the suite of a checkout a worker has just set up ([`Runner::setup_argv`] ran in
/// it): nextest from the archive it built. Blocking.
pub fn list_prepared_suite(runner: &Runner, dir: &Path, env: &[(String, String)]) -> Result<SuiteFile, ListError> {
    let argv = runner.prepared_list_argv().ok_or(ListError::NotListable)?;
    list_with(runner, &argv, dir, env)
}

fn list_with(runner: &Runner, argv: &[String], dir: &Path, env: &[(String, String)]) -> Result<SuiteFile, ListError> {
    if let Runner::Pytest { args, .. } = runner {
        // What a shard would drop or keep must be clear before the suite is listed.
        if let Some(unclear) = split_pytest_args(args).1.into_iter().next() {
            return Err(unclear.into());
        }
    }
    let output = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .current_dir(dir)
        .envs(env.iter().map(|(key, value)| (key, value)))
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| ListError::Start { program: argv[0].clone(), source })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let mut text = stdout.into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        let tail: String = text.chars().rev().take(3000).collect::<Vec<_>>().into_iter().rev().collect();
        return Err(ListError::Failed { command: shell_join(argv), status: output.status.to_string(), output: tail });
    }
    let ids = runner.parse_listing(&stdout)?;
    let skipped = match runner {
        Runner::Pytest { .. } => pytest_skipped_files(&stdout),
        _ => Vec::new(),
    };
    suite_in(runner, dir, ids, &skipped)
}

/// The suite of the checkout `dir` from the ids its runner listed, with the repository's
/// own file ([`REPOSITORY_FILE`]: tags, dependencies, durations); `skipped` (also among
/// `ids`) are pytest files skipped at collection.
fn suite_in(runner: &Runner, dir: &Path, ids: Vec<String>, skipped: &[String]) -> Result<SuiteFile, ListError> {
    let repository_file = match std::fs::read_to_string(dir.join(REPOSITORY_FILE)) {
        Ok(text) => Some(text),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => return Err(ListError::RepositoryFile(error.to_string())),
    };
    let mut suite = suite_from_listing(runner.name(), ids, repository_file.as_deref())?;
    // pytest reports a file skipped at collection at once (time 0). Known to cost nothing,
    // it is not a new test that the scheduler runs first and apart in every build.
    let skipped: std::collections::HashSet<&str> = skipped.iter().map(String::as_str).collect();
    for test in suite.tests.iter_mut().filter(|test| skipped.contains(test.id.as_str())) {
        test.duration_s = Some(0.0);
    }
    Ok(suite)
}

/// The suite of the checkout `dir` as a warm pytest runner collected it
/// (`pytest_session_args`, the listing's own arguments): the node ids it collected, then
/// the test files it found skipped at collection, as [`PYTEST_LIST_SCRIPT`] lists them. The
/// worker that prepares a revision lists it so, and keeps the runner for its shards.
pub fn suite_from_pytest_session(
    runner: &Runner,
    dir: &Path,
    collected: Vec<String>,
    skipped_files: Vec<String>,
) -> Result<SuiteFile, ListError> {
    if let Runner::Pytest { args, .. } = runner
        && let Some(unclear) = split_pytest_args(args).1.into_iter().next()
    {
        return Err(unclear.into());
    }
    let mut ids = collected;
    ids.extend(skipped_files.iter().cloned());
    suite_in(runner, dir, ids, &skipped_files)
}

/// `word` quoted for a POSIX shell when it needs to be.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word.chars().all(|character| character.is_ascii_alphanumeric() || "-_./=:,+@%".contains(character));
    if plain { word.to_owned() } else { format!("'{}'", word.replace('\'', r"'\''")) }
}

/// `argv` as one shell command line.
pub fn shell_join(argv: &[String]) -> String {
    argv.iter().map(|word| shell_quote(word)).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_key(node_id: &str, classname: &str, name: &str) {
        assert_eq!(pytest_junit_key(node_id), (classname.to_owned(), name.to_owned()), "{node_id}");
    }

    #[test]
    fn pytest_node_ids_map_to_junit_names_as_pytest_writes_them() {
        check_key("pkg/tests/test_a.py::test_x", "pkg.tests.test_a", "test_x");
        check_key("pkg/test_a.py::TestK::test_x[1-2]", "pkg.test_a.TestK", "test_x[1-2]");
        check_key("t.py::test[a::b/c.py]", "t", "test[a::b/c.py]");
        check_key("t.py::test[ sp ace; $(rm) 'q' \"d\" ]", "t", "test[ sp ace; $(rm) 'q' \"d\" ]");
        check_key("dé/t.py::tëst[ü]", "dé.t", "tëst[ü]");
        // A module that skips itself at import is reported under its own path.
        check_key("pkg/test_skipped.py", "", "pkg.test_skipped");
    }

    #[test]
    fn junit_cases_match_suite_ids_the_way_their_runner_names_them() {
        let ids: Vec<String> =
            ["pkg/test_a.py::TestK::test_x[a b]", "pkg/test_b.py", "t.py::test_y"].map(String::from).to_vec();
        let pytest = Runner::Pytest { python: "python3".into(), args: vec![] };
        let matcher = JunitMatcher::new(&pytest, &ids);
        assert_eq!(
            matcher.find(Some("pkg.test_a.TestK"), "test_x[a b]", None),
            Some("pkg/test_a.py::TestK::test_x[a b]")
        );
        assert_eq!(matcher.find(None, "pkg.test_b", None), Some("pkg/test_b.py"));
        assert_eq!(matcher.find(Some("t"), "test_y", Some("t.py")), Some("t.py::test_y"));
        assert_eq!(matcher.find(Some("pkg.test_a"), "test_x[a b]", None), None);
        let ids: Vec<String> = ["alpha tests::adds", "pkg.Suite.test_z", "plain"].map(String::from).to_vec();
        let nextest = Runner::Nextest { cargo: "cargo".into(), args: vec![] };
        assert_eq!(
            JunitMatcher::new(&nextest, &ids).find(Some("alpha"), "tests::adds", None),
            Some("alpha tests::adds")
        );
        let generic = JunitMatcher::new(&Runner::Command, &ids);
        assert_eq!(generic.find(Some("pkg.Suite"), "test_z", None), Some("pkg.Suite.test_z"));
        assert_eq!(generic.find(None, "plain", None), Some("plain"));
        assert_eq!(generic.find(Some("x"), "gone", Some("x.go")), None);
    }

    #[test]
    fn collection_stops_at_the_first_blank_line() {
        let stdout = "a.py::t[1]\nb.py::K::t\n\n=== warnings summary ===\na.py::t[1]\n  Warn\n\n3 tests collected\n";
        assert_eq!(parse_pytest_collection(stdout), vec!["a.py::t[1]", "b.py::K::t"]);
    }

    #[test]
    fn collected_ids_follow_the_marker_whatever_the_terminal_printed_before() {
        assert!(PYTEST_LIST_SCRIPT.contains(&format!("print('{PYTEST_COLLECTED_MARKER}')")));
        // `-v` turns `--collect-only -q` back into pytest's tree of collectors.
        let stdout = format!(
            "<Dir proj>\n  <Module a.py>\n    <Function t[1]>\n\n== 1 test collected ==\n\n\
             {PYTEST_COLLECTED_MARKER}\na.py::t[1]\nb.py::K::t\n\n{PYTEST_SKIPPED_MARKER}\nc.py\n"
        );
        assert_eq!(parse_pytest_collection(&stdout), vec!["a.py::t[1]", "b.py::K::t", "c.py"]);
        // Nothing collected: nothing listed (not the terminal's lines).
        let stdout = format!("no tests ran\n\n{PYTEST_COLLECTED_MARKER}\n\n\n");
        assert_eq!(parse_pytest_collection(&stdout), Vec::<String>::new());
    }

    #[test]
    fn files_skipped_at_collection_follow_the_marker_the_listing_script_prints() {
        assert!(PYTEST_LIST_SCRIPT.contains(&format!("print('{PYTEST_SKIPPED_MARKER}')")));
        let stdout = format!(
            "a.py::t\n\n=== short test summary info ===\nSKIPPED [1] b.py:3: no numpy\n1 test collected\n\n\
             {PYTEST_SKIPPED_MARKER}\npkg/test_b.py\ndé/test_c.py\n"
        );
        assert_eq!(parse_pytest_collection(&stdout), vec!["a.py::t", "pkg/test_b.py", "dé/test_c.py"]);
        // A test printing the marker while collected is captured; only the last one counts.
        let stdout = format!("a.py::t\n\n{PYTEST_SKIPPED_MARKER}\nfake.py\n\n{PYTEST_SKIPPED_MARKER}\nb.py\n");
        assert_eq!(parse_pytest_collection(&stdout), vec!["a.py::t", "b.py"]);
    }

    #[test]
    fn nextest_listing_leaves_out_what_a_run_skips() {
        let stdout = r#"{"rust-suites":{"alpha":{"binary-id":"alpha","testcases":{
            "tests::adds":{"ignored":false,"filter-match":{"status":"matches"}},
            "tests::ignored":{"ignored":true,"filter-match":{"status":"mismatch","reason":"ignored"}}}},
          "beta::it":{"binary-id":"beta::it","testcases":{"one":{"ignored":false,"filter-match":{"status":"matches"}}}}}}"#;
        assert_eq!(parse_nextest_list(stdout).unwrap(), vec!["alpha tests::adds", "beta::it one"]);
        assert_eq!(
            nextest_filter(&["alpha tests::adds".into(), "beta::it one".into(), "alpha tests::b".into()]),
            "(binary_id(=alpha) & (test(=tests::adds) | test(=tests::b))) | (binary_id(=beta::it) & (test(=one)))"
        );
    }

    #[test]
    fn the_repository_file_gives_tags_dependencies_and_overhead() {
        let suite = suite_from_listing(
            "s",
            vec!["a/x.py::t".into(), "a/y.py::t".into(), "b/z.py::t".into()],
            Some(
                "[tests]\nshard_overhead_s = 1.5\n[tests.tags]\n\"a/\" = [\"a\"]\n\"a/y\" = [\"y\", \"a\"]\n[tests.depends_on]\n\"a/y.py::t\" = [\"a/x.py::t\"]\n",
            ),
        )
        .unwrap();
        assert_eq!(suite.shard_overhead_s, 1.5);
        assert_eq!(suite.tests[0].tags, vec!["a"]);
        assert_eq!(suite.tests[1].tags, vec!["a", "y"]);
        assert_eq!(suite.tests[1].depends_on, vec!["a/x.py::t"]);
        assert!(suite.tests[2].tags.is_empty());
        assert!(suite_from_listing("s", vec![], Some("[tests]\nbogus = 1\n")).is_err());
    }

    #[test]
    fn ids_expand_to_separate_arguments_never_a_shell_string() {
        let tests = vec!["a b; rm -rf /".to_owned(), "t[1-$(x)]".to_owned()];
        let paths =
            ShardPaths { ids_file: Path::new("/w/ids.txt"), junit: Path::new("/w/j.xml"), shard_dir: Path::new("/w") };
        let template: Vec<String> =
            ["run", "--junit={junit}", "{ids}", "--from", "{ids_file}", "{revision}"].map(String::from).to_vec();
        assert_eq!(
            Runner::Command.shard_argv(&template, &tests, &paths, "abc"),
            vec!["run", "--junit=/w/j.xml", "a b; rm -rf /", "t[1-$(x)]", "--from", "/w/ids.txt", "abc"]
        );
        let pytest = Runner::Pytest { python: "py".into(), args: vec!["tests".into()] };
        assert_eq!(
            pytest.shard_argv(&template, &tests, &paths, "abc"),
            vec!["py", "-m", "pytest", "-p", "no:cacheprovider", "--rootdir=.", "--junitxml=/w/j.xml", "@/w/ids.txt"]
        );
    }

    fn words(words: &[&str]) -> Vec<String> {
        words.iter().map(|word| (*word).to_owned()).collect()
    }

    /// The user's pytest `args`: the listing gets them all after its own options; a shard
    /// gets `shard_options` between its own and its JUnit and id file.
    fn check(args: &[&str], list_argv: &[&str], shard_options: &[&str]) {
        let runner = Runner::Pytest { python: "py".into(), args: words(args) };
        let base = ["py", "-m", "pytest", "-p", "no:cacheprovider", "--rootdir=."];
        let expected_list: Vec<&str> = ["py", "-c", PYTEST_LIST_SCRIPT]
            .iter()
            .chain(&base[3..])
            .chain(&["--collect-only", "-q"])
            .chain(list_argv)
            .copied()
            .collect();
        assert_eq!(runner.list_argv().unwrap(), expected_list, "listing of {args:?}");
        let paths =
            ShardPaths { ids_file: Path::new("/w/ids"), junit: Path::new("/w/j.xml"), shard_dir: Path::new("/w") };
        let expected_shard: Vec<&str> =
            base.iter().chain(shard_options).chain(&["--junitxml=/w/j.xml", "@/w/ids"]).copied().collect();
        assert_eq!(runner.shard_argv(&[], &[], &paths, "r"), expected_shard, "shard of {args:?}");
        assert!(split_pytest_args(&words(args)).1.is_empty(), "{args:?} is clear");
    }

    #[test]
    fn a_shard_gets_the_pytest_options_but_not_what_selects_the_tests() {
        // Paths and node ids are the listing's: a shard names its node ids.
        check(&["tests", "pkg/test_a.py::test_x[1]"], &["tests", "pkg/test_a.py::test_x[1]"], &[]);
        // Plugins, separate value or attached.
        check(&["-p", "no:randomly", "tests"], &["-p", "no:randomly", "tests"], &["-p", "no:randomly"]);
        check(&["-pmy_plugin", "tests"], &["-pmy_plugin", "tests"], &["-pmy_plugin"]);
        // Ini overrides: short and long, `--opt=value` and `--opt value`.
        check(&["-o", "xfail_strict=true", "t"], &["-o", "xfail_strict=true", "t"], &["-o", "xfail_strict=true"]);
        check(&["-oxfail_strict=true"], &["-oxfail_strict=true"], &["-oxfail_strict=true"]);
        check(&["--override-ini", "a=b", "t"], &["--override-ini", "a=b", "t"], &["--override-ini", "a=b"]);
        check(&["--override-ini=a=b", "t"], &["--override-ini=a=b", "t"], &["--override-ini=a=b"]);
        // Warnings filters.
        check(
            &["-W", "error::DeprecationWarning", "tests"],
            &["-W", "error::DeprecationWarning", "tests"],
            &["-W", "error::DeprecationWarning"],
        );
        check(
            &["-Werror", "--pythonwarnings=ignore"],
            &["-Werror", "--pythonwarnings=ignore"],
            &["-Werror", "--pythonwarnings=ignore"],
        );
        // Import mode, config file, root and conftest directories.
        check(&["--import-mode=importlib", "t"], &["--import-mode=importlib", "t"], &["--import-mode=importlib"]);
        check(
            &["--import-mode", "importlib", "t"],
            &["--import-mode", "importlib", "t"],
            &["--import-mode", "importlib"],
        );
        check(&["-c", "other.ini", "t"], &["-c", "other.ini", "t"], &["-c", "other.ini"]);
        check(&["--config-file=other.ini"], &["--config-file=other.ini"], &["--config-file=other.ini"]);
        check(&["--rootdir", "sub", "sub/t"], &["--rootdir", "sub", "sub/t"], &["--rootdir", "sub"]);
        check(&["--confcutdir", ".", "t"], &["--confcutdir", ".", "t"], &["--confcutdir", "."]);
        // Selection is the listing's: -k and -m in every form, deselect, ignore.
        check(&["-k", "not slow", "-m", "fast", "t"], &["-k", "not slow", "-m", "fast", "t"], &[]);
        check(
            &["-knot slow", "--deselect=t.py::a", "--ignore", "t/x"],
            &["-knot slow", "--deselect=t.py::a", "--ignore", "t/x"],
            &[],
        );
        // Flags, alone or clustered; a cluster ending in a value-taking letter.
        check(
            &["--strict-markers", "t", "-rA", "-x"],
            &["--strict-markers", "t", "-rA", "-x"],
            &["--strict-markers", "-rA", "-x"],
        );
        check(&["-vk", "expr", "-vx"], &["-vk", "expr", "-vx"], &["-v", "-v", "-x"]);
        check(&["--doctest-modules", "pkg"], &["--doctest-modules", "pkg"], &["--doctest-modules"]);
        // An optional value is the next word unless that is an option.
        check(&["--debug", "out.log", "t"], &["--debug", "out.log", "t"], &["--debug", "out.log"]);
        check(&["--debug", "--tb=short"], &["--debug", "--tb=short"], &["--debug", "--tb=short"]);
        // After `--` every word is a path; an argument file is the listing's.
        check(&["-x", "--", "-odd-dir"], &["-x", "--", "-odd-dir"], &["-x"]);
        check(&["@args.txt", "-q"], &["@args.txt", "-q"], &["-q"]);
        // A plugin's option with its value attached, or last, or before another option.
        check(
            &["-n4", "--timeout=10", "t", "--runslow"],
            &["-n4", "--timeout=10", "t", "--runslow"],
            &["-n4", "--timeout=10", "--runslow"],
        );
        check(&["--runslow", "-x", "t"], &["--runslow", "-x", "t"], &["--runslow", "-x"]);
    }

    #[test]
    fn a_plugin_option_before_a_word_is_unclear_and_the_listing_refuses_it() {
        for (args, option, word) in
            [(&["-n", "4", "t"][..], "-n", "4"), (&["--runslow", "tests"], "--runslow", "tests")]
        {
            let (split, unclear) = split_pytest_args(&words(args));
            assert_eq!(unclear, vec![UnclearArgument { option: option.into(), word: word.into() }], "{args:?}");
            // A shard counts the word as a path: a missing value fails loudly.
            assert_eq!(split.run, vec![option]);
            let runner = Runner::Pytest { python: "/nonexistent/python".into(), args: words(args) };
            let error = list_suite(&runner, Path::new("."), &[]).unwrap_err();
            assert!(matches!(error, ListError::Arguments(_)), "{error}");
            assert!(error.to_string().contains(&format!("write `{option}=VALUE`")), "{error}");
        }
    }

    /// The user's nextest `args`: the listing gets them all; the archive build, a shard
    /// (between its filter options and its filterset) and the reproduce line get what is
    /// given.
    fn check_nextest(args: &[&str], archive_options: &[&str], shard_options: &[&str], reproduce_options: &[&str]) {
        let runner = Runner::Nextest { cargo: "cargo".into(), args: words(args) };
        let list: Vec<&str> =
            ["cargo", "nextest", "list", "--message-format", "json"].iter().chain(args).copied().collect();
        assert_eq!(runner.list_argv().unwrap(), list, "listing of {args:?}");
        let archive: Vec<&str> = ["cargo", "nextest", "archive", "--archive-file", NEXTEST_ARCHIVE]
            .iter()
            .chain(archive_options)
            .copied()
            .collect();
        assert_eq!(runner.setup_argv(&[]), vec![archive], "archive of {args:?}");
        let paths =
            ShardPaths { ids_file: Path::new("/w/ids"), junit: Path::new("/w/j.xml"), shard_dir: Path::new("/w") };
        let shard = runner.shard_argv(&[], &["b t".into()], &paths, "r");
        let shard_start = shard.iter().position(|word| word == "--workspace-remap").unwrap() + 4;
        let shard_end = shard.iter().position(|word| word == "--tool-config-file").unwrap();
        assert_eq!(shard[shard_start..shard_end], words(shard_options), "shard of {args:?}");
        assert_eq!(
            shard[shard_end..].iter().skip(4).map(String::as_str).collect::<Vec<_>>(),
            ["--run-ignored", "all", "--ignore-default-filter", "-E", "(binary_id(=b) & (test(=t)))"]
        );
        let reproduce = runner.reproduce(&[], &[], &["b t".into()], "r");
        let expected = format!(
            "git checkout --detach r && cargo nextest run --no-fail-fast {}--run-ignored all --ignore-default-filter -E '(binary_id(=b) & (test(=t)))'",
            reproduce_options.iter().map(|word| format!("{} ", shell_quote(word))).collect::<String>()
        );
        assert_eq!(reproduce, expected, "reproduce of {args:?}");
    }

    #[test]
    fn the_listing_from_the_archive_gets_every_argument_but_the_build_options() {
        let runner = Runner::Nextest {
            cargo: "cargo".into(),
            args: words(&[
                "--workspace",
                "-p",
                "a",
                "-E",
                "test(foo)",
                "--run-ignored",
                "all",
                "-P",
                "ci",
                "--config-file",
                "c.toml",
                "--message-format",
                "json-pretty",
                "name",
            ]),
        };
        assert_eq!(
            runner.prepared_list_argv().unwrap(),
            words(&[
                "cargo",
                "nextest",
                "list",
                "--archive-file",
                NEXTEST_ARCHIVE,
                "--workspace-remap",
                ".",
                "--extract-to",
                NEXTEST_EXTRACTED,
                "--extract-overwrite",
                "--message-format",
                "json",
                "-E",
                "test(foo)",
                "--run-ignored",
                "all",
                "-P",
                "ci",
                "--config-file",
                "c.toml",
                "name",
            ])
        );
        let pytest = Runner::Pytest { python: "python3".into(), args: words(&["-k", "x"]) };
        assert_eq!(pytest.prepared_list_argv(), pytest.list_argv());
    }

    #[test]
    fn nextest_steps_get_the_arguments_that_apply_to_them() {
        // Build options: the listing, the archive, a run from source; never a run from the archive.
        check_nextest(
            &["--workspace", "-p", "a", "--features=x", "-F", "y", "--release", "--cargo-profile", "ci"],
            &["--workspace", "-p", "a", "--features=x", "-F", "y", "--release", "--cargo-profile", "ci"],
            &[],
            &["--workspace", "-p", "a", "--features=x", "-F", "y", "--release", "--cargo-profile", "ci"],
        );
        // Filters are the listing's: a shard runs the listed tests, ignored ones included.
        check_nextest(
            &[
                "-E",
                "test(foo)",
                "--run-ignored",
                "all",
                "--ignore-default-filter",
                "--partition=count:1/2",
                "name",
                "--",
                "--exact",
            ],
            &[],
            &[],
            &[],
        );
        // Configuration reaches every step; the profile all but a shard (Greenlight's own).
        check_nextest(
            &["--config-file", "ci.toml", "--tool-config-file=t:/abs.toml", "-P", "ci", "--lib"],
            &["--config-file", "ci.toml", "--tool-config-file=t:/abs.toml", "-P", "ci", "--lib"],
            &["--config-file", "ci.toml", "--tool-config-file=t:/abs.toml"],
            &["--config-file", "ci.toml", "--tool-config-file=t:/abs.toml", "-P", "ci", "--lib"],
        );
    }

    #[test]
    fn reproduce_lines_quote_what_a_shell_would_split() {
        let pytest = Runner::Pytest { python: "python3".into(), args: vec![] };
        assert_eq!(
            pytest.reproduce(&[], &[], &["t.py::test[a b]".into(), "t.py::it's".into()], "abc123"),
            "git checkout --detach abc123 && python3 -m pytest -p no:cacheprovider --rootdir=. 't.py::test[a b]' 't.py::it'\\''s'"
        );
        let pytest = Runner::Pytest { python: "python3".into(), args: words(&["-o", "a=b c", "-k", "x", "tests"]) };
        assert_eq!(
            pytest.reproduce(&[], &[], &["t.py::t".into()], "abc123"),
            "git checkout --detach abc123 && python3 -m pytest -p no:cacheprovider --rootdir=. -o 'a=b c' t.py::t"
        );
        let command = Runner::Command;
        assert_eq!(
            command.reproduce(&["make".into()], &["run".into(), "{ids}".into()], &["x;y".into()], "r"),
            "git checkout --detach r && make && run 'x;y'"
        );
    }
}
