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

/// The file in a repository that gives listed tests their tags and dependencies.
pub const REPOSITORY_FILE: &str = "greenlight.toml";

/// The nextest profile Greenlight defines (in a tool config file) to get a JUnit report.
pub const NEXTEST_PROFILE: &str = "greenlight";

/// Where `cargo nextest archive` leaves the revision's build, relative to the checkout.
pub const NEXTEST_ARCHIVE: &str = "target/greenlight-nextest.tar.zst";

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
        /// Arguments of the listing only (paths to collect, `-m` expressions, options).
        #[serde(default)]
        args: Vec<String>,
    },
    /// cargo-nextest: built once per revision into an archive, shards run from it.
    Nextest {
        /// The cargo to call (`cargo nextest ...`).
        cargo: String,
        /// Arguments of the listing and of the archive build (`--workspace`, `-p`, features).
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
    /// A directory private to the shard (nextest extracts its archive and finds its
    /// tool config there).
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

    /// The argv that lists the suite in a checkout, if the adapter lists.
    pub fn list_argv(&self) -> Option<Vec<String>> {
        match self {
            Runner::Command => None,
            Runner::Pytest { python, args } => {
                let mut argv = pytest_base(python);
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
        if let Runner::Nextest { cargo, args } = self {
            let mut argv = strings(&[cargo, "nextest", "archive", "--archive-file", NEXTEST_ARCHIVE]);
            argv.extend(args.iter().cloned());
            steps.push(argv);
        }
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
            Runner::Pytest { python, .. } => {
                let mut argv = pytest_base(python);
                argv.push(format!("--junitxml={}", paths.junit.to_string_lossy()));
                // One node id per line of the file: no shell, no argv length limit.
                argv.push(format!("@{}", paths.ids_file.to_string_lossy()));
                argv
            }
            Runner::Nextest { cargo, .. } => {
                let mut argv = nextest_run_base(cargo);
                argv.extend([
                    "--extract-to".to_owned(),
                    paths.shard_dir.join("extract").to_string_lossy().into_owned(),
                    "--extract-overwrite".to_owned(),
                    "--tool-config-file".to_owned(),
                    format!("greenlight:{}", paths.shard_dir.join("nextest.toml").to_string_lossy()),
                    "-E".to_owned(),
                    nextest_filter(tests),
                ]);
                argv
            }
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
            Runner::Pytest { python, .. } => {
                for step in self.setup_argv(setup) {
                    lines.push(shell_join(&step));
                }
                let mut argv = pytest_base(python);
                argv.extend(tests.iter().cloned());
                lines.push(shell_join(&argv));
            }
            Runner::Nextest { cargo, args } => {
                for step in self.setup_argv(setup).into_iter().filter(|step| !step.contains(&"archive".to_owned())) {
                    lines.push(shell_join(&step));
                }
                let mut argv = strings(&[cargo, "nextest", "run", "--no-fail-fast"]);
                argv.extend(args.iter().cloned());
                argv.extend(["-E".to_owned(), nextest_filter(tests)]);
                lines.push(shell_join(&argv));
            }
        }
        lines.join(" && ")
    }
}

fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|word| (*word).to_owned()).collect()
}

fn pytest_base(python: &str) -> Vec<String> {
    // --rootdir pins node ids to the checkout, whatever the install path; no cache
    // directory is written into the checkout.
    strings(&[python, "-m", "pytest", "-p", "no:cacheprovider", "--rootdir=."])
}

fn nextest_run_base(cargo: &str) -> Vec<String> {
    strings(&[
        cargo,
        "nextest",
        "run",
        "--archive-file",
        NEXTEST_ARCHIVE,
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

/// Node ids from `pytest --collect-only -q`: the lines up to the first blank line (a
/// warnings summary after it also contains `::`).
pub fn parse_pytest_collection(stdout: &str) -> Vec<String> {
    stdout.lines().take_while(|line| !line.trim().is_empty()).map(str::to_owned).collect()
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
/// its `greenlight.toml`. Blocking.
pub fn list_suite(runner: &Runner, dir: &Path, env: &[(String, String)]) -> Result<SuiteFile, ListError> {
    let argv = runner.list_argv().ok_or(ListError::NotListable)?;
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
        return Err(ListError::Failed { command: shell_join(&argv), status: output.status.to_string(), output: tail });
    }
    let ids = runner.parse_listing(&stdout)?;
    let repository_file = match std::fs::read_to_string(dir.join(REPOSITORY_FILE)) {
        Ok(text) => Some(text),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => return Err(ListError::RepositoryFile(error.to_string())),
    };
    suite_from_listing(runner.name(), ids, repository_file.as_deref())
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
    fn collection_stops_at_the_first_blank_line() {
        let stdout = "a.py::t[1]\nb.py::K::t\n\n=== warnings summary ===\na.py::t[1]\n  Warn\n\n3 tests collected\n";
        assert_eq!(parse_pytest_collection(stdout), vec!["a.py::t[1]", "b.py::K::t"]);
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

    #[test]
    fn reproduce_lines_quote_what_a_shell_would_split() {
        let pytest = Runner::Pytest { python: "python3".into(), args: vec![] };
        assert_eq!(
            pytest.reproduce(&[], &[], &["t.py::test[a b]".into(), "t.py::it's".into()], "abc123"),
            "git checkout --detach abc123 && python3 -m pytest -p no:cacheprovider --rootdir=. 't.py::test[a b]' 't.py::it'\\''s'"
        );
        let command = Runner::Command;
        assert_eq!(
            command.reproduce(&["make".into()], &["run".into(), "{ids}".into()], &["x;y".into()], "r"),
            "git checkout --detach r && make && run 'x;y'"
        );
    }
}
