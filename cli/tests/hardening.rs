//! Hardening against what clumsy users and broken machines do (issue #15), each with the
//! real binary: a data directory that cannot be used is named before the master listens.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Farm, FarmOptions, Process, greenlight, test};
use greenlight_shared::suite::SuiteFile;

/// Runs `greenlight master --config CONFIG` on any free port and waits (at most 30 s) for
/// it to give up: (exit code, stdout, stderr). A master that starts serving is killed and
/// the test fails.
fn master_refusing(config: &Path, dir: &Path) -> (Option<i32>, String, String) {
    let stdout = dir.join("refused.out");
    let stderr = dir.join("refused.err");
    let child = Command::new(greenlight())
        .args(["master", "--listen", "127.0.0.1:0", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let mut process = Process { child, name: "refused master".into() };
    let started = Instant::now();
    let status = loop {
        if let Some(status) = process.child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the master kept running");
        std::thread::sleep(Duration::from_millis(50));
    };
    (status.code(), std::fs::read_to_string(stdout).unwrap(), std::fs::read_to_string(stderr).unwrap())
}

#[test]
fn a_data_dir_that_cannot_be_used_or_is_in_use_is_named_before_the_master_listens() {
    let suite = SuiteFile { name: "hardening".into(), shard_overhead_s: 0.0, tests: vec![test("a", &["a"], &[], 1.0)] };
    let farm = Farm::start(&suite, 0, FarmOptions::default());
    let config = std::fs::read_to_string(&farm.config).unwrap();

    // A second master on the running one's data directory.
    let (code, stdout, stderr) = master_refusing(&farm.config, farm.dir());
    assert_ne!(code, Some(0), "{stderr}");
    assert!(!stdout.contains("listening"), "it said it listened: {stdout}");
    let db = farm.dir().join("master").join("db");
    assert!(stderr.contains("in use by another process") && stderr.contains(&db.display().to_string()), "{stderr}");
    // The first master never noticed.
    assert_eq!(farm.gate().branch, "main");

    // A data directory under a regular file cannot be created, even by root.
    let blocker = farm.dir().join("not-a-directory");
    std::fs::write(&blocker, "").unwrap();
    let unusable = blocker.join("data");
    let data_line = format!("data_dir = {:?}", farm.dir().join("master").to_string_lossy());
    assert!(config.contains(&data_line), "{config}");
    let broken = farm.dir().join("broken.toml");
    std::fs::write(&broken, config.replace(&data_line, &format!("data_dir = {:?}", unusable.to_string_lossy())))
        .unwrap();
    let (code, stdout, stderr) = master_refusing(&broken, farm.dir());
    assert_ne!(code, Some(0), "{stderr}");
    assert!(!stdout.contains("listening"), "it said it listened: {stdout}");
    assert!(stderr.contains("data_dir") && stderr.contains(&unusable.display().to_string()), "{stderr}");
}
