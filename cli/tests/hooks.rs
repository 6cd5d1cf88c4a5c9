//! `hooks/post-receive` in a real central repository: a push tells the master at once (its
//! poller would wait an hour here), with the hook token from `git config`; a master that
//! cannot be told leaves the push standing, with a note.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Farm, FarmOptions, test};
use greenlight_shared::git::Git;
use greenlight_shared::suite::SuiteFile;

#[test]
fn post_receive_tells_the_master_of_a_push_and_never_refuses_one() {
    let suite = SuiteFile {
        name: "hooks".into(),
        shard_overhead_s: 0.0,
        tests: vec![test("core/test_core.py::test_a", &["core"], &[], 1.0)],
    };
    let options = FarmOptions {
        // Only the start-up fetch: a new revision is seen only when the hook says so.
        poll_interval_s: 3600.0,
        top_toml: "hook_token = \"hooked\"".to_owned(),
        ..FarmOptions::default()
    };
    let farm = Farm::start(&suite, 1, options);
    let first = farm.repo.head().unwrap();
    farm.finished_build_of(&first);

    // The watched repository is the central one: pushes land in it, and the hook runs there.
    let central = farm.repo.dir();
    let hooks = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hooks");
    std::fs::copy(hooks.join("post-receive"), central.join(".git/hooks/post-receive")).unwrap();
    let config = Git::new(central);
    config.run(&["config", "receive.denyCurrentBranch", "updateInstead"]).unwrap();
    config.run(&["config", "greenlight.master", &farm.url]).unwrap();
    config.run(&["config", "greenlight.hookToken", "hooked"]).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    Git::new(dir.path()).run(&["clone", "--quiet", &central.to_string_lossy(), &work.to_string_lossy()]).unwrap();
    let bin = Path::new(common::greenlight()).parent().unwrap().to_owned();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let push = |message: &str| {
        Git::new(&work)
            .run(&["-c", "user.name=E", "-c", "user.email=e@x", "commit", "--quiet", "--allow-empty", "-m", message])
            .unwrap();
        let output = std::process::Command::new("git")
            .args(["push", "origin", "HEAD:main"])
            .current_dir(&work)
            .env("PATH", &path)
            .env_remove("GREENLIGHT_MASTER")
            .env_remove("GREENLIGHT_HOOK_TOKEN")
            .output()
            .unwrap();
        assert!(output.status.success(), "a post-receive hook never refuses a push: {output:?}");
        let revision = String::from_utf8(Git::new(&work).run_bytes(&["rev-parse", "HEAD"]).unwrap()).unwrap();
        (revision.trim().to_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
    };

    let (told, stderr) = push("Core: told by the hook");
    assert!(stderr.contains("queued"), "the hook says what the master answered: {stderr}");
    let build = farm.wait_for("a build of the pushed revision", Duration::from_secs(60), |farm| {
        farm.builds().into_iter().find(|build| build.revision == told)
    });
    assert_eq!(build.revision, told);

    // A wrong token: the master refuses to be told, the push stands, the hook says so.
    config.run(&["config", "greenlight.hookToken", "guess"]).unwrap();
    let (untold, stderr) = push("Core: not told");
    assert!(stderr.contains("the master was not told"), "{stderr}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        farm.builds().iter().all(|build| build.revision != untold),
        "nothing told the master, and its poller waits an hour"
    );
}
