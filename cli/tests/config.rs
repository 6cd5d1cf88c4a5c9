//! The master's configuration as a new user meets it, with the real binary:
//! `greenlight config check` on broken files (every problem listed once, the exact
//! lines asserted), on a good one (one OK line), `greenlight config sample` checked back,
//! the master's file names (`greenlight-master.toml`; the old `greenlight.toml` still
//! read with a warning; a tested repository's `greenlight.toml` named for what it is), and
//! a configuration error printed once, without a backtrace, even with RUST_BACKTRACE=1.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::Process;

/// Runs `greenlight ARGS` in `dir`; (exit code, stdout, stderr).
fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    common::outcome(
        Command::new(common::greenlight())
            .args(args)
            .current_dir(dir)
            .envs(env.iter().copied())
            .env_remove("GREENLIGHT_CHECK_UNSET_TOKEN")
            .env_remove("GREENLIGHT_LOG_FORMAT")
            .stdin(Stdio::null()),
    )
}

/// A git repository with one commit on `main`.
fn repository(dir: &Path) -> PathBuf {
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    for args in [
        &["init", "-q", "-b", "main"][..],
        &["-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "--allow-empty", "-m", "init"],
    ] {
        let status = Command::new("git").args(args).current_dir(&repo).status().unwrap();
        assert!(status.success());
    }
    repo
}

/// A virtualenv without pytest (nor pip): a real interpreter that cannot import it.
fn python_without_pytest(dir: &Path) -> PathBuf {
    let venv = dir.join("bare-venv");
    let status = Command::new("python3").args(["-m", "venv", "--without-pip"]).arg(&venv).status().unwrap();
    assert!(status.success(), "python3 -m venv");
    venv.join("bin/python")
}

/// The virtualenv `.ci/run` makes, which has pytest.
fn python_with_pytest() -> PathBuf {
    let venv = std::env::var_os("GREENLIGHT_PYENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv"));
    let python = venv.join("bin/python");
    let probe = Command::new(&python).args(["-c", "import pytest"]).status();
    assert!(
        probe.is_ok_and(|status| status.success()),
        "this test needs a virtualenv with pytest at {} (or GREENLIGHT_PYENV); make it with:\n  \
         python3 -m venv target/pyenv && target/pyenv/bin/pip install --quiet pytest\n(.ci/run does)",
        venv.display()
    );
    python
}

/// `greenlight config check` of `text` (written to `greenlight-master.toml` in `dir`).
fn check(dir: &Path, text: &str, env: &[(&str, &str)]) -> (i32, String) {
    std::fs::write(dir.join("greenlight-master.toml"), text).unwrap();
    let (code, stdout, stderr) = run(dir, &["config", "check", "greenlight-master.toml"], env);
    assert_eq!(stderr, "", "nothing on standard error");
    (code, stdout)
}

#[test]
fn config_check_lists_every_problem_once() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let repo = repository(dir);
    let base = |extra_top: &str, repository: &str, suite: &str, tables: &str| {
        format!(
            "data_dir = {data:?}\n{extra_top}[repository]\n{repository}\n[suite]\n{suite}\n{tables}",
            data = dir.join("data").to_string_lossy()
        )
    };
    let url = format!("url = {:?}", repo.to_string_lossy());
    let command_suite = "file = \"suite.json\"\nrun_command = [\"./run\"]";

    // A typo in a key.
    let (code, stdout) = check(dir, &base("listen_adress = \"0.0.0.0:8080\"\n", &url, command_suite, ""), &[]);
    assert_eq!(
        (code, stdout.as_str()),
        (1, "greenlight-master.toml: 1 problem\n  line 2: unknown key `listen_adress`; did you mean `listen`?\n")
    );

    // A value of the wrong type, and a key in the wrong table.
    let (code, stdout) =
        check(dir, &base("", &url, command_suite, "[scheduler]\nretries = \"two\"\nfix_marker = \"[ok]\"\n"), &[]);
    assert_eq!(
        (code, stdout.as_str()),
        (
            1,
            "greenlight-master.toml: 2 problems\n  \
             line 8: [scheduler] retries: invalid type: string \"two\", expected u32\n  \
             line 9: [scheduler] unknown key `fix_marker`; it belongs in [gate]\n"
        )
    );

    // A repository that cannot be fetched, and a branch it does not have.
    let nowhere = dir.join("nowhere");
    let (code, stdout) =
        check(dir, &base("", &format!("url = {:?}", nowhere.to_string_lossy()), command_suite, ""), &[]);
    assert_eq!(
        (code, stdout),
        (
            1,
            format!(
                "greenlight-master.toml: 1 problem\n  [repository] cannot fetch {path}: fatal: '{path}' does not appear to be a git repository\n",
                path = nowhere.display()
            )
        )
    );
    let (code, stdout) = check(dir, &base("", &format!("{url}\nbranch = \"trunk\""), command_suite, ""), &[]);
    assert_eq!(
        (code, stdout),
        (1, format!("greenlight-master.toml: 1 problem\n  [repository] {} has no branch `trunk`\n", repo.display()))
    );

    // A runner this machine does not have: an interpreter without pytest, no cargo.
    let bare = python_without_pytest(dir);
    let pytest = format!("runner = \"pytest\"\npython = {:?}", bare.to_string_lossy());
    let (code, stdout) = check(dir, &base("", &url, &pytest, ""), &[]);
    assert_eq!(
        (code, stdout),
        (
            1,
            format!(
                "greenlight-master.toml: 1 problem\n  [suite] runner pytest: `{}` cannot import pytest: \
                 ModuleNotFoundError: No module named 'pytest' (install it, or set [suite] python)\n",
                bare.display()
            )
        )
    );
    let nextest = "runner = \"nextest\"\ncargo = \"/nonexistent/bin/cargo\"";
    let (code, stdout) = check(dir, &base("", &url, nextest, ""), &[]);
    assert_eq!(
        (code, stdout.as_str()),
        (
            1,
            "greenlight-master.toml: 1 problem\n  [suite] runner nextest: `/nonexistent/bin/cargo` is not found on \
             this machine (set [suite] cargo)\n"
        )
    );

    // A token named in the environment that is not there.
    let unset = "worker_token_env = \"GREENLIGHT_CHECK_UNSET_TOKEN\"\n";
    let (code, stdout) = check(dir, &base(unset, &url, command_suite, ""), &[]);
    assert_eq!(
        (code, stdout.as_str()),
        (
            1,
            "greenlight-master.toml: 1 problem\n  worker_token_env: the environment variable \
             GREENLIGHT_CHECK_UNSET_TOKEN is not set\n"
        )
    );

    // All of it at once, each said once, the file's lines first.
    let text = base(
        &format!("listen_adress = \"0.0.0.0:8080\"\n{unset}"),
        &format!("url = {:?}", nowhere.to_string_lossy()),
        &pytest,
        "[scheduler]\nretries = \"two\"\nmax_attempts = 0\n",
    );
    let (code, stdout) = check(dir, &text, &[]);
    assert_eq!(
        (code, stdout),
        (
            1,
            format!(
                "greenlight-master.toml: 6 problems\n  \
                 line 2: unknown key `listen_adress`; did you mean `listen`?\n  \
                 line 10: [scheduler] retries: invalid type: string \"two\", expected u32\n  \
                 [scheduler] max_attempts must be at least 1\n  \
                 worker_token_env: the environment variable GREENLIGHT_CHECK_UNSET_TOKEN is not set\n  \
                 [repository] cannot fetch {path}: fatal: '{path}' does not appear to be a git repository\n  \
                 [suite] runner pytest: `{python}` cannot import pytest: ModuleNotFoundError: No module named \
                 'pytest' (install it, or set [suite] python)\n",
                path = nowhere.display(),
                python = bare.display()
            )
        )
    );

    // Not TOML at all.
    let (code, stdout) = check(dir, "data_dir = /var/lib/greenlight\n", &[]);
    assert_eq!(
        (code, stdout.as_str()),
        (1, "greenlight-master.toml: 1 problem\n  line 1: string values must be quoted, expected literal string\n")
    );
}

#[test]
fn config_check_says_ok_in_one_line_when_all_is_there() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let repo = repository(dir);
    let python = python_with_pytest();
    let text = format!(
        "data_dir = {data:?}\nworker_token_env = \"GREENLIGHT_CHECK_SET_TOKEN\"\n[repository]\nurl = {url:?}\n\
         [suite]\nrunner = \"pytest\"\npython = {python:?}\n",
        data = dir.join("data").to_string_lossy(),
        url = repo.to_string_lossy(),
        python = python.to_string_lossy(),
    );
    let (code, stdout) = check(dir, &text, &[("GREENLIGHT_CHECK_SET_TOKEN", "s3cret")]);
    assert_eq!(
        (code, stdout),
        (
            0,
            format!(
                "greenlight-master.toml: OK (repository {} has main; runner pytest found ({}))\n",
                repo.display(),
                python.display()
            )
        )
    );
}

#[test]
fn the_sample_has_every_default_and_checks_once_its_placeholders_are_real() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (code, sample, stderr) = run(dir, &["config", "sample"], &[]);
    assert_eq!((code, stderr.as_str()), (0, ""));
    for line in ["listen = \"127.0.0.1:8080\"", "lease_timeout_s = 30.0", "# worker_token_env = ", "[storage]"] {
        assert!(sample.lines().any(|sample_line| sample_line.starts_with(line)), "{line} in:\n{sample}");
    }
    // Only the placeholders of the required keys need changing.
    let repo = repository(dir);
    let text = sample
        .replace("data_dir = \"/var/lib/greenlight\"", &format!("data_dir = {:?}", dir.join("data").to_string_lossy()))
        .replace("url = \"/srv/git/product.git\"", &format!("url = {:?}", repo.to_string_lossy()));
    let (code, stdout) = check(dir, &text, &[]);
    assert_eq!((code, stdout), (0, format!("greenlight-master.toml: OK (repository {} has main)\n", repo.display())));
}

/// Starts `greenlight master ARGS` in `dir`, logging to `dir/master.log`; the process, once it listens.
fn start_master_in(dir: &Path, args: &[&str]) -> Process {
    let log = std::fs::File::create(dir.join("master.log")).unwrap();
    let mut child = Command::new(common::greenlight())
        .arg("master")
        .args(args)
        .current_dir(dir)
        .env("GREENLIGHT_LOG", "info")
        .env_remove("GREENLIGHT_LOG_FORMAT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let process = Process { child, name: "master".into() };
    let log = std::fs::read_to_string(dir.join("master.log")).unwrap();
    assert!(line.starts_with("greenlight master listening on http://127.0.0.1:"), "{line:?}\n{log}");
    process
}

fn master_config(dir: &Path) -> String {
    let repo = repository(dir);
    format!(
        "data_dir = {:?}\nlisten = \"127.0.0.1:0\"\n[repository]\nurl = {:?}\n[suite]\nfile = \"suite.json\"\nrun_command = [\"./run\"]\n",
        dir.join("data").to_string_lossy(),
        repo.to_string_lossy()
    )
}

#[test]
fn the_master_reads_greenlight_master_toml_and_the_old_name_with_a_warning() {
    // The new name, found without --config.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("greenlight-master.toml"), master_config(dir.path())).unwrap();
    let mut master = start_master_in(dir.path(), &[]);
    master.kill();
    let log = std::fs::read_to_string(dir.path().join("master.log")).unwrap();
    assert!(!log.contains("deprecated"), "{log}");
    assert!(!log.contains('\x1b'), "no colour codes in a log file: {log:?}");

    // The old name still works, and says it is deprecated.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("greenlight.toml"), master_config(dir.path())).unwrap();
    let mut master = start_master_in(dir.path(), &[]);
    master.kill();
    let log = std::fs::read_to_string(dir.path().join("master.log")).unwrap();
    let warning = "greenlight.toml as the master's configuration is deprecated (the tested repository's test \
                   metadata has that name): rename it greenlight-master.toml";
    assert!(log.lines().any(|line| line.contains(" WARN ") && line.ends_with(warning)), "{log}");
    let (code, stdout, stderr) = run(dir.path(), &["config", "check", "greenlight.toml"], &[]);
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(stderr, format!("warning: {warning}\n"));
}

#[test]
fn a_checkout_s_greenlight_toml_is_not_taken_for_the_master_s() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("greenlight.toml"), "[tests]\nshard_overhead_s = 5.0\n").unwrap();
    let (code, stdout, stderr) = run(dir.path(), &["master"], &[]);
    assert_eq!((code, stdout.as_str()), (1, ""));
    assert_eq!(
        stderr,
        "error: no greenlight-master.toml here, and greenlight.toml is a tested repository's test metadata, not the \
         master's configuration: write greenlight-master.toml (`greenlight config sample > greenlight-master.toml`) \
         or pass --config FILE\n"
    );
    let (code, _, stderr) = run(dir.path(), &["master", "--config", "greenlight.toml"], &[]);
    assert_eq!(code, 1);
    assert!(
        stderr.ends_with(
            "error: greenlight.toml is a tested repository's test metadata (it has [tests]), not the master's \
             configuration: the master reads greenlight-master.toml (`greenlight config sample` prints one)\n"
        ),
        "{stderr}"
    );
    let (code, _, stderr) = run(tempfile::tempdir().unwrap().path(), &["master"], &[]);
    assert_eq!(
        (code, stderr.as_str()),
        (
            1,
            "error: no greenlight-master.toml here: pass --config FILE, or write one (`greenlight config sample > \
             greenlight-master.toml`, then `greenlight config check`)\n"
        )
    );
}

#[test]
fn a_configuration_error_is_printed_once_without_a_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let text = master_config(dir.path()).replace("listen =", "listen_addr =");
    std::fs::write(dir.path().join("bad.toml"), text).unwrap();
    let (code, stdout, stderr) =
        run(dir.path(), &["master", "--config", "bad.toml"], &[("RUST_BACKTRACE", "1"), ("RUST_LIB_BACKTRACE", "1")]);
    assert_eq!((code, stdout.as_str()), (1, ""));
    assert_eq!(stderr, "error: bad.toml: line 2: unknown key `listen_addr`; did you mean `listen`?\n");
    let text = master_config(dir.path()).replace("listen =", "listen_addr =") + "[scheduler]\nretries = \"two\"\n";
    std::fs::write(dir.path().join("bad.toml"), text).unwrap();
    let (code, _, stderr) = run(dir.path(), &["master", "--config", "bad.toml"], &[("RUST_BACKTRACE", "1")]);
    assert_eq!(
        (code, stderr.as_str()),
        (
            1,
            "error: bad.toml: 2 problems\n  line 2: unknown key `listen_addr`; did you mean `listen`?\n  \
             line 9: [scheduler] retries: invalid type: string \"two\", expected u32\n"
        )
    );
}
