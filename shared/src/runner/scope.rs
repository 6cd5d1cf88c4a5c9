//! What a tag-selected pytest build collects: only the paths its tags can select.
//!
//! A tag-selected build runs a tenth of the suite or less, but listing it meant
//! collecting all of it (networkx: 6,209 tests, most of a 4 s build's wall), on the
//! worker that lists and on every worker's warm runner. Tags come from the repository's
//! `greenlight.toml` by test id prefix, and a pytest id begins with its file's path, so
//! the paths a selection can reach are known before anything is collected: the paths a
//! prefix of the build's tags (or `always`) begins, and the files of the tests those
//! depend on, transitively. [`collection_paths`] finds them; [`Runner::narrowed_paths`]
//! fits them to the paths the runner's arguments name and [`Runner::collecting`] puts
//! them there. Where that cannot be done safely (an `@FILE`, `--pyargs`, a prefix
//! matching every id) the whole suite is listed, as before.

use std::collections::BTreeSet;

use super::{Argument, ListError, PYTEST_SYNTAX, RepositoryFile, Runner};

/// The paths (files or directories, relative to the checkout) that hold every test a
/// build selecting `tags` can run, by the repository's `greenlight.toml`
/// (`repository_file`; `tags` should hold `always`): for each prefix mapped to one of the
/// tags, the paths whose ids it begins ([`prefix_paths`]), and the file of every test
/// one of those paths holds depends on, transitively. `entries` lists a directory of the
/// revision (`""`: its root) as paths from the root. `None` where a prefix matches every
/// id (the whole suite must be collected); an empty list where no prefix has the tags.
pub fn collection_paths(
    repository_file: Option<&str>,
    tags: &BTreeSet<String>,
    entries: &dyn Fn(&str) -> Vec<String>,
) -> Result<Option<Vec<String>>, ListError> {
    let file = read(repository_file)?;
    let prefixes = file
        .tests
        .tags
        .iter()
        .filter(|(_, prefix_tags)| prefix_tags.iter().any(|tag| tags.contains(tag)))
        .map(|(prefix, _)| prefix.as_str());
    Ok(reach(&file, prefixes, entries))
}

/// The paths that hold the tests `ids` and what they depend on, transitively (a probe
/// re-running them), as [`collection_paths`] finds them.
pub fn test_paths(
    repository_file: Option<&str>,
    ids: &[String],
    entries: &dyn Fn(&str) -> Vec<String>,
) -> Result<Option<Vec<String>>, ListError> {
    let file = read(repository_file)?;
    Ok(reach(&file, ids.iter().map(String::as_str), entries))
}

fn read(repository_file: Option<&str>) -> Result<RepositoryFile, ListError> {
    match repository_file {
        Some(text) => toml::from_str(text).map_err(|error| ListError::RepositoryFile(error.to_string())),
        None => Ok(RepositoryFile::default()),
    }
}

/// The paths holding every id `prefix` begins, as a string: up to its `::`, one file;
/// ending with `/`, that directory; else each entry of its directory whose path it
/// begins (`tests/chat` is `tests/chat/` and `tests/chatbot.py`; `tests/test_ch` is
/// `tests/test_chat.py`). `None` for a prefix every id has.
pub fn prefix_paths(prefix: &str, entries: &dyn Fn(&str) -> Vec<String>) -> Option<Vec<String>> {
    let mut prefix = prefix;
    while let Some(rest) = prefix.strip_prefix("./") {
        prefix = rest;
    }
    if let Some((file, _)) = prefix.split_once("::") {
        return (!file.is_empty()).then(|| vec![file.to_owned()]);
    }
    if let Some(directory) = prefix.strip_suffix('/') {
        return (!directory.is_empty()).then(|| vec![directory.to_owned()]);
    }
    if prefix.is_empty() {
        return None;
    }
    let parent = prefix.rsplit_once('/').map_or("", |(parent, _)| parent);
    Some(entries(parent).into_iter().filter(|entry| entry.starts_with(prefix)).collect())
}

/// The paths of `prefixes` and of what the tests under them depend on, transitively;
/// `None` where one is every path.
fn reach<'a>(
    file: &RepositoryFile,
    prefixes: impl Iterator<Item = &'a str>,
    entries: &dyn Fn(&str) -> Vec<String>,
) -> Option<Vec<String>> {
    let mut paths: Vec<String> = Vec::new();
    let add = |paths: &mut Vec<String>, prefix: &str| {
        for path in prefix_paths(prefix, entries)? {
            if !paths.iter().any(|known| within(&path, known)) {
                paths.push(path);
            }
        }
        Some(())
    };
    for prefix in prefixes {
        add(&mut paths, prefix)?;
    }
    let mut at = 0;
    while at < paths.len() {
        let path = paths[at].clone();
        for (test, dependencies) in &file.tests.depends_on {
            if within(test, &path) {
                for dependency in dependencies {
                    add(&mut paths, dependency)?;
                }
            }
        }
        at += 1;
    }
    Some(outermost(paths))
}

impl Runner {
    /// The paths a listing of `paths` (from [`collection_paths`]) collects in place of
    /// what the runner's arguments name: each path the arguments name replaced by those of
    /// `paths` inside it (or kept where it lies inside one of them). With no path named,
    /// pytest collects `unnamed`, its `testpaths` or else the checkout
    /// ([`pytest_default_paths`]; `None`: not known). `None` where the arguments cannot be
    /// narrowed safely: another runner, an `@FILE`, `--pyargs` (module names, not paths),
    /// an absolute or `..` path, no path named and `unnamed` not known, or nothing left to
    /// collect.
    pub fn narrowed_paths(&self, paths: &[String], unnamed: Option<&[String]>) -> Option<Vec<String>> {
        let Runner::Pytest { args, .. } = self else { return None };
        let mut named = Vec::new();
        for argument in PYTEST_SYNTAX.read(args) {
            match argument {
                Argument::Positional(word) => named.push(word),
                Argument::ArgumentsFile(_) => return None,
                Argument::Option { name, .. } if name == "--pyargs" => return None,
                Argument::Option { .. } | Argument::Unknown(_) => {}
            }
        }
        if named.is_empty() {
            named = unnamed?.to_vec();
        }
        let mut collected = Vec::new();
        for word in &named {
            let named = normal(word);
            if word.starts_with('/') || word.starts_with('-') || named.split('/').any(|part| part == "..") {
                return None;
            }
            for path in paths {
                if within(path, named) {
                    collected.push(path.clone());
                } else if within(named, path) {
                    collected.push(named.to_owned());
                }
            }
        }
        let collected = outermost(collected);
        (!collected.is_empty()).then_some(collected)
    }

    /// The runner collecting `paths` (from [`Runner::narrowed_paths`]) in place of the
    /// paths its arguments name, every option kept; another runner as it is.
    pub fn collecting(&self, paths: &[String]) -> Runner {
        let Runner::Pytest { python, args } = self else { return self.clone() };
        // The paths first: no option before them can take one as its value.
        let mut collecting = paths.to_vec();
        for argument in PYTEST_SYNTAX.read(args) {
            match argument {
                Argument::Positional(_) => {}
                Argument::Option { words, .. } => collecting.extend(words),
                Argument::Unknown(word) | Argument::ArgumentsFile(word) => collecting.push(word),
            }
        }
        Runner::Pytest { python: python.clone(), args: collecting }
    }
}

/// The configuration files pytest reads at the checkout's root, in the order it looks
/// for them.
pub const PYTEST_CONFIG_FILES: [&str; 5] = ["pytest.ini", ".pytest.ini", "pyproject.toml", "tox.ini", "setup.cfg"];

/// What pytest collects when no path is named, by the configuration file it reads at the
/// checkout's root (the first of `pytest.ini`, `.pytest.ini`, `pyproject.toml` with a
/// `[tool.pytest…]` table, `tox.ini` with `[pytest]`, `setup.cfg` with `[tool:pytest]`):
/// its `testpaths`, else the checkout (`.`). `read` gives a file's text (`Some(None)`:
/// there is none; `None`: it cannot be read). `None` where it is not known: a file that
/// cannot be read or parsed, or `testpaths` with a glob.
pub fn pytest_default_paths(read: &dyn Fn(&str) -> Option<Option<String>>) -> Option<Vec<String>> {
    for name in PYTEST_CONFIG_FILES {
        let Some(text) = read(name)? else { continue };
        let testpaths = match name {
            "pyproject.toml" => {
                let document: toml::Table = toml::from_str(&text).ok()?;
                let Some(pytest) = document.get("tool").and_then(|tool| tool.get("pytest")) else { continue };
                let value = pytest.get("ini_options").and_then(|options| options.get("testpaths"));
                match value.or_else(|| pytest.get("testpaths")) {
                    None => None,
                    Some(toml::Value::String(words)) => Some(words.split_whitespace().map(str::to_owned).collect()),
                    Some(toml::Value::Array(items)) => {
                        Some(items.iter().map(|item| item.as_str().map(str::to_owned)).collect::<Option<Vec<_>>>()?)
                    }
                    Some(_) => return None,
                }
            }
            _ => {
                let section = if name == "setup.cfg" { "tool:pytest" } else { "pytest" };
                match ini_value(&text, section, "testpaths") {
                    Some(value) => value.map(|words| words.split_whitespace().map(str::to_owned).collect()),
                    // pytest.ini is pytest's whatever it holds; the others only with the section.
                    None if name.contains("pytest.ini") => None,
                    None => continue,
                }
            }
        };
        return match testpaths {
            Some(paths) if paths.iter().any(|path: &String| path.contains(['*', '?', '['])) => None,
            Some(paths) if !paths.is_empty() => Some(paths),
            _ => Some(vec![".".to_owned()]),
        };
    }
    Some(vec![".".to_owned()])
}

/// In an INI text, `key`'s value in `[section]` (continuation lines joined): `None` when
/// the section is absent, `Some(None)` when it has no such key.
fn ini_value(text: &str, section: &str, key: &str) -> Option<Option<String>> {
    let mut in_section = false;
    let mut found = false;
    let mut value: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        if trimmed.starts_with('[') && trimmed.ends_with(']') {
            if value.is_some() {
                break;
            }
            in_section = trimmed[1..trimmed.len() - 1].trim() == section;
            found |= in_section;
            continue;
        }
        if !in_section {
            continue;
        }
        if let Some(current) = value.as_mut()
            && line.starts_with([' ', '\t'])
            && !trimmed.is_empty()
        {
            current.push(' ');
            current.push_str(trimmed);
            continue;
        }
        if value.is_some() {
            break;
        }
        if let Some((name, rest)) = trimmed.split_once(['=', ':'])
            && name.trim() == key
        {
            value = Some(rest.trim().to_owned());
        }
    }
    found.then_some(value)
}

/// Whether what was collected from `collected` holds every test under `wanted` (an empty
/// list is everything the runner's arguments name).
pub fn covers(collected: &[String], wanted: &[String]) -> bool {
    collected.is_empty()
        || (!wanted.is_empty() && wanted.iter().all(|path| collected.iter().any(|outer| within(path, outer))))
}

/// `path` without a leading `./` or a trailing `/`.
fn normal(path: &str) -> &str {
    let mut path = path;
    while let Some(rest) = path.strip_prefix("./") {
        path = rest;
    }
    let path = path.trim_end_matches('/');
    if path == "." { "" } else { path }
}

/// Whether `inner` (a path or node id) is `outer` or lies inside it.
fn within(inner: &str, outer: &str) -> bool {
    outer.is_empty()
        || inner == outer
        || inner.strip_prefix(outer).is_some_and(|rest| rest.starts_with('/') || rest.starts_with("::"))
}

/// The paths none of the others holds, sorted.
fn outermost(paths: Vec<String>) -> Vec<String> {
    let paths: BTreeSet<String> = paths.into_iter().collect();
    paths.iter().filter(|path| !paths.iter().any(|other| other != *path && within(path, other))).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    fn pytest(args: &[&str]) -> Runner {
        Runner::Pytest { python: "python3".into(), args: args.iter().map(|arg| (*arg).to_owned()).collect() }
    }

    fn strings(words: &[&str]) -> Vec<String> {
        words.iter().map(|word| (*word).to_owned()).collect()
    }

    /// The files of a revision; `entries` lists a directory of them.
    const TREE: &[&str] = &[
        "pkg/chat/test_send.py",
        "pkg/chatbot.py",
        "pkg/chatter/test_talk.py",
        "pkg/smoke.py",
        "pkg/db/test_schema.py",
        "pkg/users/test_login.py",
        "pkg/shop/tests/test_cart.py",
        "pkg/bank/test_card.py",
        "setup.py",
    ];

    fn entries(directory: &str) -> Vec<String> {
        let inside = if directory.is_empty() { String::new() } else { format!("{directory}/") };
        let mut entries: Vec<String> = TREE
            .iter()
            .filter_map(|path| path.strip_prefix(inside.as_str()))
            .map(|rest| format!("{inside}{}", rest.split('/').next().unwrap()))
            .collect();
        entries.dedup();
        entries
    }

    fn collection(file: Option<&str>, names: &[&str]) -> Option<Vec<String>> {
        collection_paths(file, &tags(names), &entries).unwrap()
    }

    const FILE: &str = r#"
[tests.tags]
"pkg/chat/" = ["chat"]
"pkg/shop/tests/test_cart.py::TestCart" = ["shop"]
"pkg/smoke.py" = ["always"]
"pkg/search/" = ["search"]
[tests.depends_on]
"pkg/chat/test_send.py::test_send" = ["pkg/users/test_login.py::test_login"]
"pkg/users/test_login.py::test_login" = ["pkg/db/test_schema.py::test_schema"]
"pkg/search/test_find.py::test_find" = ["pkg/other/test_x.py::test_x"]
"pkg/shop/tests/test_cart.py::TestPay::test_pay" = ["pkg/bank/test_card.py::test_card"]
"#;

    #[test]
    fn the_paths_are_the_tags_prefixes_and_the_files_of_what_they_depend_on_transitively() {
        let paths = collection(Some(FILE), &["chat", "always"]).unwrap();
        assert_eq!(
            paths,
            strings(&["pkg/chat", "pkg/db/test_schema.py", "pkg/smoke.py", "pkg/users/test_login.py"]),
            "the chat tests, their dependency and its own, and what always runs"
        );
        let paths = collection(Some(FILE), &["shop", "always"]).unwrap();
        assert_eq!(
            paths,
            strings(&["pkg/bank/test_card.py", "pkg/shop/tests/test_cart.py", "pkg/smoke.py"]),
            "a node id prefix collects its file, and so what the file's other tests depend on"
        );
        let probe = test_paths(Some(FILE), &strings(&["pkg/users/test_login.py::test_login", "pkg/x.py::t"]), &entries);
        assert_eq!(probe.unwrap(), Some(strings(&["pkg/db/test_schema.py", "pkg/users/test_login.py", "pkg/x.py"])));
    }

    #[test]
    fn a_prefix_that_is_not_a_whole_name_collects_every_entry_it_begins() {
        let file = "[tests.tags]\n\"pkg/chat\" = [\"chat\"]\n\"pkg/sm\" = [\"smoke\"]\n\"pkg/none\" = [\"none\"]\n";
        assert_eq!(
            collection(Some(file), &["chat"]),
            Some(strings(&["pkg/chat", "pkg/chatbot.py", "pkg/chatter"])),
            "the ids `pkg/chat` begins are in each of them"
        );
        assert_eq!(collection(Some(file), &["smoke"]), Some(strings(&["pkg/smoke.py"])));
        assert_eq!(collection(Some(file), &["none"]), Some(Vec::new()), "no id begins with it");
        assert_eq!(prefix_paths("setup", &entries), Some(strings(&["setup.py"])), "at the root");
    }

    #[test]
    fn a_prefix_every_id_has_lists_the_whole_suite_and_tags_no_prefix_has_collect_nothing() {
        let file = "[tests.tags]\n\"\" = [\"everything\"]\n\"./\" = [\"root\"]\n";
        assert_eq!(collection(Some(file), &["everything"]), None);
        assert_eq!(collection(Some(file), &["root"]), None);
        assert_eq!(collection(Some(file), &["other"]), Some(Vec::new()));
        assert_eq!(collection(None, &["chat"]), Some(Vec::new()));
        assert!(matches!(
            collection_paths(Some("[tests]\ntagz = 1\n"), &tags(&["chat"]), &entries),
            Err(ListError::RepositoryFile(_))
        ));
    }

    /// The runner narrowed to `paths`, as the master does it; with no path named, pytest
    /// collects the checkout if `collects_checkout`, else it is not known what.
    fn narrowed(runner: &Runner, paths: &[&str], collects_checkout: bool) -> Option<Runner> {
        let checkout = strings(&["."]);
        let unnamed = collects_checkout.then_some(checkout.as_slice());
        runner.narrowed_paths(&strings(paths), unnamed).map(|paths| runner.collecting(&paths))
    }

    #[test]
    fn narrowing_replaces_the_named_paths_by_those_inside_them_and_keeps_every_option() {
        let runner = pytest(&["-x", "networkx", "-k", "not slow", "--ignore", "networkx/drawing"]);
        assert_eq!(
            narrowed(&runner, &["networkx/generators"], false),
            Some(pytest(&["networkx/generators", "-x", "-k", "not slow", "--ignore", "networkx/drawing"]))
        );
        // A named path inside a wider one is kept as named; one outside every path goes.
        let runner = pytest(&["pkg/tests/reshape", "./pkg/tests/tools/", "pkg/tests/io", "--no-strict-data-files"]);
        assert_eq!(
            narrowed(&runner, &["pkg/tests", "pkg/tests/tools/test_a.py"], false),
            Some(pytest(&["pkg/tests/io", "pkg/tests/reshape", "pkg/tests/tools", "--no-strict-data-files"]))
        );
        assert_eq!(
            narrowed(&pytest(&["."]), &["a/test_x.py", "b"], false),
            Some(pytest(&["a/test_x.py", "b"])),
            "the checkout's root holds every path"
        );
        assert_eq!(
            narrowed(&pytest(&["tests/test_a.py::test_one"]), &["tests"], false),
            Some(pytest(&["tests/test_a.py::test_one"])),
            "a node id inside a path stays"
        );
        assert_eq!(
            narrowed(&pytest(&["-q"]), &["tests/chat"], true),
            Some(pytest(&["tests/chat", "-q"])),
            "no path named and no testpaths: pytest collects the checkout"
        );
        let collecting = pytest(&["tests/chat", "-q"]);
        assert_eq!(collecting.collecting(&strings(&["tests/chat"])), collecting, "narrowing twice changes nothing");
    }

    #[test]
    fn with_no_path_named_pytest_collects_the_testpaths_of_the_file_it_reads_or_the_checkout() {
        let unnamed = |files: &[(&str, &str)]| {
            let files: Vec<(String, String)> =
                files.iter().map(|(name, text)| ((*name).to_owned(), (*text).to_owned())).collect();
            pytest_default_paths(&move |name: &str| {
                Some(files.iter().find(|(file, _)| file == name).map(|(_, text)| text.clone()))
            })
        };
        let root = Some(strings(&["."]));
        assert_eq!(unnamed(&[]), root, "no configuration: the checkout");
        assert_eq!(unnamed(&[("pytest.ini", "[pytest]\naddopts = -q\n")]), root);
        assert_eq!(
            unnamed(&[("pytest.ini", "[pytest]\ntestpaths =\n    tests\n    integration\nxfail_strict = true\n")]),
            Some(strings(&["tests", "integration"]))
        );
        assert_eq!(
            unnamed(&[("pyproject.toml", "[tool.pytest.ini_options]\ntestpaths = [\"tests\"]\n")]),
            Some(strings(&["tests"]))
        );
        assert_eq!(
            unnamed(&[("pyproject.toml", "[tool.pytest]\ntestpaths = [\"src/tests\"]\n")]),
            Some(strings(&["src/tests"]))
        );
        // A file without pytest's table is not pytest's: the next one is read.
        assert_eq!(
            unnamed(&[
                ("pyproject.toml", "[tool.black]\nline-length = 99\n"),
                ("setup.cfg", "[tool:pytest]\ntestpaths = t\n")
            ]),
            Some(strings(&["t"]))
        );
        assert_eq!(unnamed(&[("tox.ini", "[tox]\nenvlist = py3\n")]), root);
        // pytest.ini comes first, whatever the others say.
        assert_eq!(
            unnamed(&[
                ("pytest.ini", "[pytest]\n"),
                ("pyproject.toml", "[tool.pytest.ini_options]\ntestpaths = [\"x\"]\n")
            ]),
            root
        );
        assert_eq!(unnamed(&[("pytest.ini", "[pytest]\ntestpaths = tests/*\n")]), None, "a glob");
        assert_eq!(unnamed(&[("pyproject.toml", "not toml [")]), None);
        assert_eq!(pytest_default_paths(&|_: &str| None), None, "a file that cannot be read");
    }

    #[test]
    fn a_listing_covers_the_paths_inside_its_own_and_the_whole_one_covers_all() {
        let generators = strings(&["networkx/generators"]);
        assert!(covers(&[], &generators), "the whole listing");
        assert!(covers(&generators, &strings(&["networkx/generators/tests/test_a.py", "networkx/generators"])));
        assert!(!covers(&generators, &strings(&["networkx/generators_x"])));
        assert!(!covers(&generators, &strings(&["networkx/generators/a.py", "networkx/drawing"])));
        assert!(!covers(&generators, &[]), "a part is not the whole");
    }

    #[test]
    fn what_cannot_be_narrowed_safely_is_listed_whole() {
        let paths = strings(&["tests/chat"]);
        let root = strings(&["."]);
        let root = Some(root.as_slice());
        assert_eq!(pytest(&[]).narrowed_paths(&paths, None), None, "no path named, and what pytest collects unknown");
        assert_eq!(pytest(&["-q"]).narrowed_paths(&paths, None), None);
        assert_eq!(pytest(&["@args.txt"]).narrowed_paths(&paths, root), None);
        assert_eq!(pytest(&["--pyargs", "pkg"]).narrowed_paths(&paths, root), None);
        assert_eq!(pytest(&["/abs/tests"]).narrowed_paths(&paths, root), None);
        assert_eq!(pytest(&["../tests"]).narrowed_paths(&paths, root), None);
        assert_eq!(pytest(&["other"]).narrowed_paths(&paths, root), None, "nothing of the tags under the named paths");
        assert_eq!(pytest(&["tests"]).narrowed_paths(&[], root), None);
        assert_eq!(Runner::Command.narrowed_paths(&paths, root), None);
        assert_eq!(
            Runner::Nextest { cargo: "cargo".into(), args: Vec::new() }.narrowed_paths(&paths, root),
            None,
            "nextest lists from its archive"
        );
    }
}
