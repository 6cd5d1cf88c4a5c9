//! `greenlight config check`: every problem of a configuration file, each said once,
//! before a farm is started with it. [`check_text`] reads the file alone: TOML syntax,
//! unknown keys (with the known key it is most likely a typo of), values of the wrong
//! type, values out of range. [`check_environment`] then asks this machine what the
//! configuration needs: the tokens it names in the environment, the repository fetchable
//! (`git ls-remote`, with a timeout), the runner present (pytest importable by the
//! configured interpreter, `cargo nextest` installed).

use std::ops::Range;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::sample::{KEYS, sections};
use super::{Config, RunnerName};

/// A key with a value in the file.
#[derive(Debug)]
struct Entry {
    /// From the top: `["scheduler", "retries"]`.
    path: Vec<String>,
    key_span: Range<usize>,
    value_span: Range<usize>,
}

/// The line (from 1) of byte `offset` of `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|byte| *byte == b'\n').count() + 1
}

/// `[section] ` before a message about a key in that table, nothing at the top level.
fn table_prefix(path: &[String]) -> String {
    match path.len() {
        0 | 1 => String::new(),
        _ => format!("[{}] ", path[..path.len() - 1].join(".")),
    }
}

/// The known key `unknown` is most likely a typo of, if any is close enough: a few
/// letters off (edit distance), or the same start (`listen_addr` for `listen`).
fn did_you_mean<'a>(unknown: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (unknown.chars().count() / 3).max(2);
    known
        .filter(|candidate| {
            strsim::damerau_levenshtein(unknown, candidate) <= limit || strsim::jaro_winkler(unknown, candidate) >= 0.85
        })
        .max_by(|a, b| strsim::jaro_winkler(unknown, a).total_cmp(&strsim::jaro_winkler(unknown, b)))
}

/// The schema's name of a table at `path` (`workers.*` for any worker's table).
fn section_of(path: &[String]) -> String {
    match path {
        [] => String::new(),
        [workers, _] if workers == "workers" => "workers.*".to_owned(),
        _ => path.join("."),
    }
}

/// Walks `table` (at `path`): records every key with a value, and says which are unknown.
fn walk(
    table: &DeTable<'_>,
    path: &[String],
    text: &str,
    entries: &mut Vec<Entry>,
    unknown: &mut Vec<(usize, String)>,
) {
    let section = section_of(path);
    let tables = sections();
    for (key, value) in table {
        let name = key.get_ref().to_string();
        let mut inner = path.to_vec();
        inner.push(name.clone());
        let is_known_key = KEYS.iter().any(|known| known.section == section && known.key == name);
        let inner_section = section_of(&inner);
        let is_table = section.is_empty() && (tables.contains(&inner_section.as_str()) || name == "workers")
            || section == "workers" && !path.is_empty();
        match value.get_ref() {
            DeValue::Table(inner_table) if is_table && !is_known_key => {
                walk(inner_table, &inner, text, entries, unknown);
            }
            _ if is_known_key => {
                entries.push(Entry { path: inner, key_span: key.span(), value_span: value.span() });
            }
            _ => {
                let line = line_of(text, key.span().start);
                unknown.push((line, unknown_key(&section, &name, &inner)));
                entries.push(Entry { path: inner, key_span: key.span(), value_span: value.span() });
            }
        }
    }
}

/// What to say of an unknown key `name` in table `section`.
fn unknown_key(section: &str, name: &str, path: &[String]) -> String {
    let prefix = table_prefix(path);
    if section.is_empty() && name == "tests" {
        return format!(
            "unknown key `tests`: this is a tested repository's test metadata ({}), not the master's configuration",
            greenlight_shared::runner::REPOSITORY_FILE
        );
    }
    if section.is_empty() && (name == "workers" || sections().contains(&name)) {
        let header = if name == "workers" { "[workers.NAME]".to_owned() } else { format!("[{name}]") };
        return format!("`{name}` must be a table: {header}");
    }
    if section == "workers" {
        return format!("[workers] `{name}` must be a table: `[workers.NAME]` with `token` or `token_env`");
    }
    let here = KEYS.iter().filter(|key| key.section == section).map(|key| key.key);
    let tables: Vec<&str> = if section.is_empty() {
        sections().into_iter().filter(|table| !table.is_empty() && !table.contains('*')).chain(["workers"]).collect()
    } else {
        Vec::new()
    };
    if let Some(suggestion) = did_you_mean(name, here.chain(tables.iter().copied())) {
        return format!("{prefix}unknown key `{name}`; did you mean `{suggestion}`?");
    }
    if let Some(elsewhere) = KEYS.iter().find(|key| key.key == name && key.section != section) {
        let table = match elsewhere.section {
            "" => "at the top, before any [table]".to_owned(),
            "workers.*" => "in a [workers.NAME] table".to_owned(),
            table => format!("in [{table}]"),
        };
        return format!("{prefix}unknown key `{name}`; it belongs {table}");
    }
    format!("{prefix}unknown key `{name}` (`greenlight config sample` lists every key)")
}

/// Removes the key at `path` from `table`.
fn remove(table: &mut DeTable<'_>, path: &[String]) {
    match path {
        [] => {}
        [name] => {
            let found = table.keys().find(|key| key.get_ref() == name).cloned();
            if let Some(key) = found {
                table.remove(&key);
            }
        }
        [name, rest @ ..] => {
            for (key, value) in table.iter_mut() {
                if key.get_ref() == name
                    && let DeValue::Table(inner) = value.get_mut()
                {
                    remove(inner, rest);
                }
            }
        }
    }
}

/// Reads the text of a configuration alone: the configuration it gives (bad keys and
/// values left at their defaults, when the rest still makes one) and every problem.
pub fn check_text(text: &str) -> (Option<Config>, Vec<String>) {
    let mut document: Spanned<DeTable<'_>> = match DeTable::parse(text) {
        Ok(document) => document,
        Err(error) => {
            let at = error.span().map(|span| format!("line {}: ", line_of(text, span.start))).unwrap_or_default();
            return (None, vec![format!("{at}{}", error.message().trim())]);
        }
    };
    let mut entries = Vec::new();
    let mut unknown = Vec::new();
    walk(document.get_ref(), &[], text, &mut entries, &mut unknown);
    let mut problems: Vec<(usize, String)> = unknown;
    let unknown_paths: Vec<Vec<String>> = entries
        .iter()
        .filter(|entry| {
            let section = section_of(&entry.path[..entry.path.len() - 1]);
            !KEYS.iter().any(|key| key.section == section && Some(key.key) == entry.path.last().map(String::as_str))
        })
        .map(|entry| entry.path.clone())
        .collect();
    for path in &unknown_paths {
        remove(document.get_mut(), path);
    }
    let mut removed = unknown_paths;
    // Values of the wrong type, one at a time: each is named, taken out, and the rest read again.
    let mut config = None;
    for _ in 0..=entries.len() {
        match Config::deserialize(toml::de::Deserializer::from(document.clone())) {
            Ok(parsed) => {
                config = Some(parsed);
                break;
            }
            Err(error) => {
                let message = error.message().trim().to_owned();
                let culprit = error.span().and_then(|span| {
                    entries
                        .iter()
                        .filter(|entry| !removed.contains(&entry.path))
                        .filter(|entry| {
                            entry.key_span.contains(&span.start)
                                || entry.value_span.contains(&span.start)
                                || entry.value_span == span
                        })
                        .min_by_key(|entry| entry.value_span.len())
                });
                match culprit {
                    Some(entry) => {
                        let line = line_of(text, entry.key_span.start);
                        let key = entry.path.last().cloned().unwrap_or_default();
                        problems.push((line, format!("{}{key}: {message}", table_prefix(&entry.path))));
                        remove(document.get_mut(), &entry.path);
                        removed.push(entry.path.clone());
                    }
                    None => {
                        // A missing key is told at its table's header (the top level: no line).
                        let at = error.span().filter(|span| span.start > 0).map(|span| line_of(text, span.start));
                        let message = match message.strip_prefix("missing field ") {
                            Some(key) => format!("missing required key {key}"),
                            None => message,
                        };
                        problems.push((at.unwrap_or(0), message));
                        break;
                    }
                }
            }
        }
    }
    problems.sort_by_key(|(line, _)| if *line == 0 { usize::MAX } else { *line });
    let mut said: Vec<String> = problems
        .into_iter()
        .map(|(line, message)| if line > 0 { format!("line {line}: {message}") } else { message })
        .collect();
    if let Some(config) = &config {
        said.extend(config.problems());
    }
    (config, said)
}

/// How [`check_environment`] looks.
#[derive(Debug, Clone)]
pub struct EnvironmentCheck {
    /// The longest `git ls-remote` and each runner probe may take.
    pub timeout: Duration,
}

/// What the configuration needs from this machine, and what was found. Fills the tokens
/// from the environment variables the configuration names (`env` looks one up).
pub fn check_environment(
    config: &mut Config,
    env: impl Fn(&str) -> Option<String>,
    options: &EnvironmentCheck,
) -> (Vec<String>, Vec<String>) {
    let mut problems = config.take_tokens_from(env);
    let mut fine = Vec::new();
    match check_repository(&config.repository.url, &config.repository.branch, options.timeout) {
        Ok(()) => fine.push(format!("repository {} has {}", config.repository.url, config.repository.branch)),
        Err(problem) => problems.push(problem),
    }
    match check_runner(config, options.timeout) {
        Ok(Some(found)) => fine.push(found),
        Ok(None) => {}
        Err(problem) => problems.push(problem),
    }
    (problems, fine)
}

/// How a probe command ended.
enum Ran {
    Exited { success: bool, stderr: String },
    NotFound,
    TimedOut,
    Failed(std::io::Error),
}

/// Runs `command` to its end or `timeout`, killing it then.
fn run_with_timeout(command: &mut Command, timeout: Duration) -> Ran {
    let child = command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ran::NotFound,
        Err(error) => return Ran::Failed(error),
    };
    // The error output is read beside the wait, so a talkative command never blocks on a full pipe.
    let mut stderr = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let stderr = reader.join().unwrap_or_default();
                return Ran::Exited { success: status.success(), stderr };
            }
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Ran::TimedOut;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(error) => return Ran::Failed(error),
        }
    }
}

/// The last non-empty line of a command's error output (a Python traceback's error).
fn last_line(stderr: &str) -> &str {
    stderr.lines().rev().map(str::trim).find(|line| !line.is_empty()).unwrap_or("no error output")
}

/// The first non-empty line of a command's error output (git's `fatal: ...`).
fn first_line(stderr: &str) -> &str {
    stderr.lines().map(str::trim).find(|line| !line.is_empty()).unwrap_or("no error output")
}

/// Whether `git ls-remote` reaches `url` and finds `branch` there.
fn check_repository(url: &str, branch: &str, timeout: Duration) -> Result<(), String> {
    let mut command = Command::new("git");
    command
        .args(["ls-remote", "--exit-code", "--", url, &format!("refs/heads/{branch}")])
        // Never wait for a password nobody will type.
        .env("GIT_TERMINAL_PROMPT", "0");
    if std::env::var_os("GIT_SSH_COMMAND").is_none() {
        command.env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes");
    }
    match run_with_timeout(&mut command, timeout) {
        Ran::Exited { success: true, .. } => Ok(()),
        // --exit-code: 2 when the repository answered without the branch.
        Ran::Exited { success: false, stderr } if stderr.trim().is_empty() => {
            Err(format!("[repository] {url} has no branch `{branch}`"))
        }
        Ran::Exited { success: false, stderr } => {
            Err(format!("[repository] cannot fetch {url}: {}", first_line(&stderr)))
        }
        Ran::TimedOut => {
            Err(format!("[repository] {url} did not answer `git ls-remote` within {} s", timeout.as_secs()))
        }
        Ran::NotFound => Err("[repository] git is not installed on this machine (the master needs it)".to_owned()),
        Ran::Failed(error) => Err(format!("[repository] cannot run git: {error}")),
    }
}

/// Whether the configured runner is installed here (workers need it too); what was found.
fn check_runner(config: &Config, timeout: Duration) -> Result<Option<String>, String> {
    let suite = &config.suite;
    let (program, mut command, what) = match suite.runner {
        RunnerName::Command => return Ok(None),
        RunnerName::Pytest => {
            let mut command = Command::new(&suite.python);
            command.args(["-c", "import pytest"]);
            (&suite.python, command, "import pytest")
        }
        RunnerName::Nextest => {
            let mut command = Command::new(&suite.cargo);
            command.args(["nextest", "--version"]);
            (&suite.cargo, command, "run `nextest --version`")
        }
    };
    command.envs(&suite.env);
    let runner = match suite.runner {
        RunnerName::Pytest => "pytest",
        _ => "nextest",
    };
    let key = if suite.runner == RunnerName::Pytest { "python" } else { "cargo" };
    match run_with_timeout(&mut command, timeout) {
        Ran::Exited { success: true, .. } => Ok(Some(format!("runner {runner} found ({program})"))),
        Ran::Exited { success: false, stderr } => Err(format!(
            "[suite] runner {runner}: `{program}` cannot {what}: {} (install it, or set [suite] {key})",
            last_line(&stderr)
        )),
        Ran::NotFound => {
            Err(format!("[suite] runner {runner}: `{program}` is not found on this machine (set [suite] {key})"))
        }
        Ran::TimedOut => {
            Err(format!("[suite] runner {runner}: `{program}` did not {what} within {} s", timeout.as_secs()))
        }
        Ran::Failed(error) => Err(format!("[suite] runner {runner}: cannot run `{program}`: {error}")),
    }
}

/// The whole check of a file: its problems (empty when it is fine) and, when fine, what
/// was found (for the OK line).
pub fn check_file(
    path: &Path,
    env: impl Fn(&str) -> Option<String>,
    options: &EnvironmentCheck,
) -> Result<Vec<String>, Vec<String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) => return Err(vec![format!("cannot read {}: {error}", path.display())]),
    };
    let (config, mut problems) = check_text(&text);
    let Some(mut config) = config else { return Err(problems) };
    let (found_problems, fine) = check_environment(&mut config, env, options);
    problems.extend(found_problems);
    if problems.is_empty() { Ok(fine) } else { Err(problems) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str =
        "data_dir = \"/x\"\n[repository]\nurl = \"u\"\n[suite]\nfile = \"s.json\"\nrun_command = [\"r\"]\n";

    fn check(text: &str, expected: &[&str]) {
        let (_, problems) = check_text(text);
        assert_eq!(problems, expected, "{text}");
    }

    #[test]
    fn every_problem_of_the_text_is_said_once() {
        check(BASE, &[]);
        check(&format!("listen_addr = \"x\"\n{BASE}"), &["line 1: unknown key `listen_addr`; did you mean `listen`?"]);
        check(
            &format!("{BASE}[scheduler]\nlease_timeout = 3\nretries = \"2\"\nmax_attempts = 0\n"),
            &[
                "line 8: [scheduler] unknown key `lease_timeout`; did you mean `lease_timeout_s`?",
                "line 9: [scheduler] retries: invalid type: string \"2\", expected u32",
                "[scheduler] max_attempts must be at least 1",
            ],
        );
        check(
            &format!("{BASE}[scheduler]\nfix_marker = \"x\"\n"),
            &["line 8: [scheduler] unknown key `fix_marker`; it belongs in [gate]"],
        );
        check(
            &format!("{BASE}[sheduler]\nretries = 2\n"),
            &["line 7: unknown key `sheduler`; did you mean `scheduler`?"],
        );
        check(&format!("scheduler = 3\n{BASE}"), &["line 1: `scheduler` must be a table: [scheduler]"]);
        check(
            &format!("{BASE}[workers]\nbox = \"t\"\n"),
            &["line 8: [workers] `box` must be a table: `[workers.NAME]` with `token` or `token_env`"],
        );
        check(
            "[tests]\nshard_overhead_s = 1.0\n",
            &[
                "line 1: unknown key `tests`: this is a tested repository's test metadata (greenlight.toml), not the master's configuration",
                "missing required key `data_dir`",
            ],
        );
        check(
            "data_dir = \"/x\"\n[repository]\nbranch = \"main\"\n[suite]\nrunner = \"pytest\"\n",
            &["line 2: missing required key `url`"],
        );
        check("data_dir = \n", &["line 1: string values must be quoted, expected literal string"]);
        check(
            &format!("{BASE}runner = \"jest\"\n"),
            &["line 7: [suite] runner: unknown variant `jest`, expected one of `command`, `pytest`, `nextest`"],
        );
    }
}
