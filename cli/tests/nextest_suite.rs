//! A Rust workspace through the farm with the `nextest` runner adapter: the test writes a
//! small workspace (no dependencies, so it builds offline) with passing tests, one
//! failing and one ignored, in a library and an integration-test binary. The farm (two
//! workers) must report each test as one direct `cargo nextest run` does, and compile
//! the revision once in the whole farm: one worker prepares it (builds the archive and
//! lists from it), the master never compiles, the other shards download the archive.
//! Each crate's build script logs every time it runs. A second revision changing one
//! crate is built once more, incrementally: only the changed crate's build script reruns.
//! Results come from nextest's event stream (test by test), not its JUnit report.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Farm, FarmOptions};
use greenlight_shared::api::{BuildKind, BuildState, ShardState, TestStatus};
use greenlight_shared::git::Git;
use greenlight_shared::suite::SuiteFile;

fn write(root: &Path, path: &str, text: &str) {
    let path = root.join(path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// The workspace: `alpha` (lib tests: pass, fail, ignored) and `beta` (a build script that
/// logs each build, lib tests and an integration test binary).
fn write_workspace(root: &Path) {
    write(root, "Cargo.toml", "[workspace]\nresolver = \"2\"\nmembers = [\"alpha\", \"beta\"]\n");
    for name in ["alpha", "beta"] {
        write(
            root,
            &format!("{name}/Cargo.toml"),
            &format!("[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n"),
        );
    }
    write(
        root,
        "alpha/src/lib.rs",
        r#"pub fn add(a: u32, b: u32) -> u32 { a + b }

#[cfg(test)]
mod tests {
    #[test]
    fn adds() { assert_eq!(super::add(1, 1), 2); }
    #[test]
    fn fails() { assert_eq!(super::add(1, 1), 3, "arithmetic"); }
    #[test]
    #[ignore = "needs a database"]
    fn ignored() {}
}
"#,
    );
    // Each build script appends "<crate> <OUT_DIR>" to the log when it runs: beta's only
    // when it is built afresh (a new target directory), alpha's also when its source changes.
    for (name, reruns_on) in [("alpha", "println!(\"cargo:rerun-if-changed=src/lib.rs\");"), ("beta", "")] {
        write(
            root,
            &format!("{name}/build.rs"),
            &format!(
                r#"fn main() {{
    println!("cargo:rerun-if-env-changed=GREENLIGHT_BUILD_LOG");
    {reruns_on}
    if let Ok(log) = std::env::var("GREENLIGHT_BUILD_LOG") {{
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        writeln!(file, "{{}} {{}}", env!("CARGO_PKG_NAME"), std::env::var("OUT_DIR").unwrap()).unwrap();
    }}
}}
"#
            ),
        );
    }
    let mut lib = String::from("pub fn double(x: u64) -> u64 { x * 2 }\n\n#[cfg(test)]\nmod tests {\n");
    for index in 0..12 {
        lib.push_str(&format!(
            "    #[test]\n    fn case_{index:02}() {{ std::thread::sleep(std::time::Duration::from_millis(300)); assert_eq!(super::double({index}), {}); }}\n",
            index * 2
        ));
    }
    lib.push_str("}\n");
    write(root, "beta/src/lib.rs", &lib);
    write(root, "beta/tests/it.rs", "#[test]\nfn integration() { assert_eq!(beta::double(21), 42); }\n");
    write(root, ".gitignore", "target/\n");
}

/// (test id, PASS/FAIL/SKIP) from nextest's own status lines, e.g.
/// `        PASS [   0.019s] (1/4) alpha tests::adds`.
fn status_lines(stderr: &str) -> BTreeMap<String, String> {
    let mut statuses = BTreeMap::new();
    for line in stderr.lines() {
        let line = line.trim_start();
        let Some(word) = ["PASS", "FAIL", "SKIP"].into_iter().find(|word| line.starts_with(&format!("{word} [")))
        else {
            continue;
        };
        let Some(rest) = line.split_once("] (").map(|(_, rest)| rest) else { continue };
        let Some((_, id)) = rest.split_once(") ") else { continue };
        statuses.insert(id.trim().to_owned(), word.to_owned());
    }
    statuses
}

/// The build log's lines: (crate, OUT_DIR).
fn build_log(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let (name, out_dir) = line.split_once(' ').unwrap();
            (name.to_owned(), out_dir.to_owned())
        })
        .collect()
}

#[test]
fn a_rust_workspace_through_the_farm_reports_what_nextest_reports_compiled_once_per_revision() {
    let empty = SuiteFile { name: "unused".into(), shard_overhead_s: 0.0, tests: Vec::new() };
    let dir = tempfile::tempdir().unwrap();
    let build_log_path = dir.path().join("builds.log");
    let suite_toml = format!(
        "runner = \"nextest\"\nenv = {{ GREENLIGHT_BUILD_LOG = {log:?}, CARGO_TARGET_DIR = \"target\", CARGO_TERM_COLOR = \"never\" }}",
        log = build_log_path.to_string_lossy()
    );
    let options = FarmOptions { suite_toml, ..FarmOptions::default() };
    let farm = Farm::start_with_repo(&empty, 2, options, |repo| {
        write_workspace(repo.dir());
        let git = Git::new(repo.dir());
        git.run(&["add", "-A"]).unwrap();
        git.run(&["commit", "--quiet", "-m", "A small workspace"]).unwrap();
    });
    let revision = farm.repo.head().unwrap();

    // The direct run, in a clone of the same revision, without the build log.
    let direct_dir = dir.path().join("direct");
    assert!(
        Command::new("git")
            .arg("clone")
            .arg("--quiet")
            .arg(farm.repo.dir())
            .arg(&direct_dir)
            .status()
            .unwrap()
            .success()
    );
    let direct = Command::new("cargo")
        .args(["nextest", "run", "--no-fail-fast", "--status-level", "all", "--final-status-level", "none"])
        .current_dir(&direct_dir)
        .env("CARGO_TARGET_DIR", "target")
        .env("CARGO_TERM_COLOR", "never")
        .env_remove("GREENLIGHT_BUILD_LOG")
        .output()
        .unwrap();
    let direct_stderr = String::from_utf8_lossy(&direct.stderr);
    assert_eq!(direct.status.code(), Some(100), "nextest exits 100 when a test failed:\n{direct_stderr}");
    let expected = status_lines(&direct_stderr);
    assert_eq!(expected.len(), 16, "{direct_stderr}");
    assert_eq!(expected["alpha tests::ignored"], "SKIP");

    let build = farm.wait_for("the workspace build to finish", Duration::from_secs(600), |farm| {
        farm.builds()
            .into_iter()
            .find(|build| build.revision == revision && build.kind == BuildKind::Regular && build.state.is_finished())
    });
    assert_eq!(build.state, BuildState::Red, "{build:?}");
    // A failure is retried once on another worker before it counts; the final results are
    // what a direct run reports.
    let all_results = farm.tests(build.build_id).results;
    assert!(all_results.iter().any(|result| result.retried && result.status == TestStatus::Failed));
    let results: Vec<_> = all_results.into_iter().filter(|result| !result.retried).collect();
    let got: BTreeMap<String, String> = results
        .iter()
        .map(|result| {
            let word = match result.status {
                TestStatus::Passed => "PASS",
                TestStatus::Failed => "FAIL",
                other => panic!("{} is {other:?}: {:?}", result.test_id, result.output),
            };
            (result.test_id.clone(), word.to_owned())
        })
        .collect();
    assert_eq!(got.len(), results.len(), "each test reported once");
    // The ignored test is not part of the farm's suite: like the direct run, it never runs.
    let mut ran = expected.clone();
    ran.remove("alpha tests::ignored");
    assert_eq!(got, ran);
    let failure = results.iter().find(|result| result.test_id == "alpha tests::fails").unwrap();
    assert!(failure.output.as_deref().is_some_and(|output| output.contains("arithmetic")), "{failure:?}");
    // Results come from nextest's event stream, test by test: its output of a failure is
    // the test's own (the JUnit report's also holds the harness's "running 1 test").
    for result in results.iter().filter(|result| result.status == TestStatus::Failed) {
        let output = result.output.as_deref().unwrap_or_default();
        assert!(!output.contains("running 1 test"), "{result:?}");
        assert!(result.duration_s > 0.0, "{result:?}");
    }

    // Compiled once in the whole farm: each crate's build script ran once, on one worker,
    // never on the master; the shards of the other worker ran from the downloaded archive.
    // The build ends with its last result; its shards end when their workers say so.
    let detail = farm.wait_for("every shard to finish", Duration::from_secs(60), |farm| {
        Some(farm.build(build.build_id))
            .filter(|detail| detail.shards.iter().all(|shard| shard.state == ShardState::Finished))
    });
    let workers: BTreeSet<&str> = detail.shards.iter().map(|shard| shard.worker.as_str()).collect();
    assert!(detail.shards.len() > workers.len(), "some worker ran several shards: {:#?}", detail.shards);
    let builds = build_log(&build_log_path);
    // Build scripts run in parallel: in either order.
    let mut crates: Vec<&str> = builds.iter().map(|(name, _)| name.as_str()).collect();
    crates.sort_unstable();
    assert_eq!(crates, ["alpha", "beta"], "one compilation of each crate in the farm: {builds:#?}");
    assert!(builds.iter().all(|(_, out_dir)| !out_dir.contains("/master/")), "the master never compiles: {builds:#?}");
    let preparer = ["worker-0", "worker-1"]
        .into_iter()
        .find(|worker| builds.iter().all(|(_, out_dir)| out_dir.contains(&format!("/workers/{worker}/"))))
        .unwrap_or_else(|| panic!("one worker built the revision: {builds:#?}"));
    // The other worker's shards ran from the archive it downloaded.
    for worker in workers.iter().filter(|worker| **worker != preparer) {
        let log = std::fs::read_to_string(farm.dir().join(format!("{worker}.log"))).unwrap();
        assert!(log.contains("archive downloaded from the master"), "{worker} log:\n{log}");
    }
    // Each worker extracted the archive once for all its shards of the revision.
    for worker in &workers {
        let log = std::fs::read_to_string(farm.dir().join(format!("{worker}.log"))).unwrap();
        let extractions =
            log.lines().filter(|line| line.contains("archive extracted") && line.contains(&revision)).count();
        assert_eq!(extractions, 1, "{worker} log:\n{log}");
    }
    assert!(detail.shards.iter().all(|shard| shard.runner_wall_s.is_some_and(|wall_s| wall_s > 0.0)));
    // Each shard's `reproduce` line, run by hand in a clone, runs exactly that shard's tests.
    let mut reproduced = BTreeMap::new();
    for shard in &detail.shards {
        let rerun = Command::new("sh")
            .args(["-c", &format!("{} --status-level all --final-status-level none", shard.reproduce)])
            .current_dir(&direct_dir)
            .env("CARGO_TARGET_DIR", "target")
            .env("CARGO_TERM_COLOR", "never")
            .output()
            .unwrap();
        let mut statuses = status_lines(&String::from_utf8_lossy(&rerun.stderr));
        // Tests outside the filter are listed as skipped.
        statuses.retain(|_, word| word != "SKIP");
        assert_eq!(statuses.len(), shard.tests as usize, "{}: {statuses:?}", shard.reproduce);
        reproduced.extend(statuses);
    }
    assert_eq!(reproduced, got, "the shards' reproduce lines together rerun the build");

    // A second revision changes alpha only: built once more, on the worker whose target
    // directory is warm, incrementally (beta's build script does not run again).
    let mut alpha = std::fs::read_to_string(farm.repo.dir().join("alpha/src/lib.rs")).unwrap();
    alpha = alpha.replace(
        "    #[test]\n    fn fails()",
        "    #[test]\n    fn adds_again() { assert_eq!(super::add(2, 2), 4); }\n    #[test]\n    fn fails()",
    );
    let second = farm.repo.commit("alpha: one more test", &[("alpha/src/lib.rs", &alpha)]).unwrap();
    let second_build = farm.wait_for("the second build to finish", Duration::from_secs(600), |farm| {
        farm.builds()
            .into_iter()
            .find(|build| build.revision == second && build.kind == BuildKind::Regular && build.state.is_finished())
    });
    assert_eq!(second_build.state, BuildState::Red, "{second_build:?}");
    let second_results = farm.tests(second_build.build_id).results;
    let added = second_results.iter().find(|result| result.test_id == "alpha tests::adds_again");
    assert_eq!(added.map(|result| result.status), Some(TestStatus::Passed), "{second_results:#?}");
    assert_eq!(second_build.counts.total as usize, got.len() + 1);
    let builds_after = build_log(&build_log_path);
    assert_eq!(builds_after[..2], builds[..], "{builds_after:#?}");
    let again: Vec<&(String, String)> = builds_after[2..].iter().collect();
    assert_eq!(again.len(), 1, "one more compilation, of the changed crate only: {builds_after:#?}");
    let first_alpha = builds.iter().find(|(name, _)| name == "alpha").unwrap();
    assert_eq!(again[0], first_alpha, "alpha rebuilt in the same warm target directory: {builds_after:#?}");
    assert!(again[0].1.contains(&format!("/workers/{preparer}/")), "{builds_after:#?}");
    eprintln!(
        "nextest: {} shards on {} workers; compilations: {} for the first revision, {} for the second",
        detail.shards.len(),
        workers.len(),
        builds.len(),
        again.len()
    );
}

#[test]
fn a_nextest_shard_streams_its_results_and_gives_back_what_it_has_not_started() {
    // 30 tests of a second. A first revision teaches the farm their durations; at the
    // second, the lone worker leases most of the build, and a worker that joins once that
    // shard runs takes over the tests it has not started. Only a shard that reported a
    // result while it ran (nextest's event stream) shows a pace and may give tests back.
    let empty = SuiteFile { name: "unused".into(), shard_overhead_s: 0.0, tests: Vec::new() };
    let suite_toml =
        "runner = \"nextest\"\nenv = { CARGO_TARGET_DIR = \"target\", CARGO_TERM_COLOR = \"never\" }".to_owned();
    let options = FarmOptions { suite_toml, heartbeat_interval_s: 0.5, ..FarmOptions::default() };
    let mut farm = Farm::start_with_repo(&empty, 1, options, |repo| {
        let root = repo.dir();
        write(root, "Cargo.toml", "[workspace]\nresolver = \"2\"\nmembers = [\"slow\"]\n");
        write(root, "slow/Cargo.toml", "[package]\nname = \"slow\"\nversion = \"0.1.0\"\nedition = \"2021\"\n");
        let mut lib = String::from("#[cfg(test)]\nmod tests {\n");
        for index in 0..30 {
            lib.push_str(&format!(
                "    #[test]\n    fn case_{index:02}() {{ std::thread::sleep(std::time::Duration::from_secs(1)); }}\n"
            ));
        }
        lib.push_str("}\n");
        write(root, "slow/src/lib.rs", &lib);
        write(root, ".gitignore", "target/\n");
        let git = Git::new(root);
        git.run(&["add", "-A"]).unwrap();
        git.run(&["commit", "--quiet", "-m", "Thirty slow tests"]).unwrap();
    });
    let first = farm.finished_build_of(&farm.repo.head().unwrap());
    assert_eq!(first.state, BuildState::Green, "{first:?}");

    let second = farm.repo.commit("Touch the readme", &[("README", "slow tests\n")]).unwrap();
    let (lease_id, leased) = farm.running_shard();
    assert!(leased >= 20, "the lone worker leased most of the build: {leased} tests");
    farm.start_worker("worker-late");

    let build = farm.finished_build_of(&second);
    assert_eq!(build.state, BuildState::Green, "{build:?}");
    let results = farm.tests(build.build_id).results;
    assert_eq!(results.len(), 30, "one result per test: {results:#?}");
    let ids: BTreeSet<&str> = results.iter().map(|result| result.test_id.as_str()).collect();
    assert_eq!(ids.len(), 30, "each test reported once");
    assert!(results.iter().all(|result| result.status == TestStatus::Passed && result.attempt == 1), "{results:#?}");
    let detail: greenlight_shared::api::BuildDetail =
        farm.get(&format!("/api/v1/builds/{}?test_ids=true", build.build_id));
    let shrunk = detail.shards.iter().find(|shard| shard.lease_id == lease_id).expect("the first shard is listed");
    assert!(shrunk.withdrawn > 0, "the running shard gave tests back: {shrunk:?}");
    assert_eq!(shrunk.state, ShardState::Finished, "giving back is no infrastructure error: {shrunk:?}");
    assert_eq!(shrunk.tests + shrunk.withdrawn, leased);
    // Each kept test's result came from that shard, the others from the late worker.
    for result in &results {
        let kept = shrunk.test_ids.contains(&result.test_id);
        assert_eq!(result.lease_id == Some(lease_id), kept, "{result:?}");
    }
    assert!(results.iter().any(|result| result.worker.as_deref() == Some("worker-late")));
}
