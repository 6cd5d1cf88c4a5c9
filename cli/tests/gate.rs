//! The commit gate end to end, with the real binaries: a red test closes the gate before
//! its build ends, `greenlight gate` answers 1 naming the failing test, lets fixes and
//! reverts through, waits, answers 2 when the master cannot be asked, and a green build
//! reopens it; a batch of eight changes with one bad change is bisected to its culprit in
//! at most ceil(log2 8) + 1 probes of the failing test only (the confirmation at the red
//! revision included), two culprits in a batch are both named, a flaky failure that does
//! not reproduce and a break fixed within its batch name nobody; green revisions are
//! handed to the push command once each, in order, never a red one, retried when it fails.

mod common;

use std::time::Duration;

use common::{Farm, FarmOptions, test};
use greenlight_fixtures::FAILING_FILE;
use greenlight_fixtures::repo::FixtureRepo;
use greenlight_fixtures::runner::flaky_fails;
use greenlight_shared::api::{BuildKind, BuildState, BuildSummary, GateState, PushState};
use greenlight_shared::suite::{SuiteFile, SuiteTest};

const BROKEN: &str = "core/test_core.py::test_breaks";

/// Core tests (one will break, and it runs first: it is the slowest), plus a slow area the
/// first build spends a while on, so commits can land while it runs.
fn suite(core_tests: usize) -> SuiteFile {
    let mut tests: Vec<SuiteTest> = vec![test(BROKEN, &["core"], &[], 40.0)];
    tests.extend((0..core_tests).map(|index| test(&format!("core/test_core.py::test_{index}"), &["core"], &[], 30.0)));
    tests.push(test("slow/test_slow.py::test_tour", &["slow"], &[], 100.0));
    SuiteFile { name: "gate".into(), shard_overhead_s: 0.0, tests }
}

#[test]
fn red_closes_the_gate_before_the_build_ends_and_a_green_build_reopens_it() {
    let farm = Farm::start(&suite(10), 2, FarmOptions::default());
    let first = farm.finished_build_of(&farm.repo.head().unwrap());
    assert_eq!(first.state, BuildState::Green);
    assert_eq!(farm.gate().state, GateState::Open);
    let (code, stdout, _) = farm.gate_command(&[]);
    assert_eq!((code, stdout.trim()), (0, "gate open on main"));

    let broken = farm.repo.set_failing("core", &[BROKEN], "Core: faster everything").unwrap();
    // The gate closes while the build is still running. The build may have ended by the
    // time this test looks (a probe of its revision may run by then): the master's clock
    // says which came first.
    let (gate, build) = farm.wait_for("the gate to close during the build", Duration::from_secs(120), |farm| {
        let gate = farm.gate();
        let build =
            farm.builds().into_iter().find(|build| build.revision == broken && build.kind == BuildKind::Regular)?;
        (gate.state == GateState::Closed).then_some((gate, build))
    });
    let closed_at = gate.since.expect("a closed gate says since when");
    assert!(
        build.finished_at.is_none_or(|ended| closed_at < ended),
        "closed at {closed_at}, before the build ended: {build:?}"
    );
    assert_eq!(gate.build_id, Some(build.build_id));
    assert_eq!(gate.failing_tests, vec![BROKEN.to_owned()]);

    let (code, stdout, _) = farm.gate_command(&["--branch", "main"]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains(BROKEN), "names the failing test: {stdout}");
    let links =
        format!("see {url}/#/build/{id} (JSON: {url}/api/v1/builds/{id})\n", url = farm.url, id = build.build_id);
    assert!(stdout.contains(&links), "links the build's page and its JSON: {stdout}");
    let (code, stdout, _) = farm.gate_command(&["--message", "Core: put it back [fix]"]);
    assert_eq!(code, 0, "a fix goes through: {stdout}");
    let (code, _, _) =
        farm.gate_command(&["--message", "Revert \"Core: faster everything\"\n\nThis reverts commit 1234."]);
    assert_eq!(code, 0, "a revert goes through");
    let (code, _, stderr) = farm.gate_command(&["--branch", "release"]);
    assert_eq!(code, 2, "an unwatched branch cannot be asked: {stderr}");

    // The sample hooks refuse a plain push while the gate is closed and let a fix through.
    check_hooks(&farm);

    // Someone waits for the gate; the fix lands; the green build reopens the gate.
    let waiting = std::process::Command::new(common::greenlight())
        .args(["gate", "--master", &farm.url, "--wait", "--poll-interval", "0.2"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut waiting = common::Process { child: waiting, name: "gate --wait".into() };
    assert_eq!(farm.finished_build_of(&broken).state, BuildState::Red);
    let fixed = farm.repo.set_failing("core", &[], "Core: put it back [fix]").unwrap();
    let green = farm.finished_build_of(&fixed);
    assert_eq!(green.state, BuildState::Green);
    let gate = farm.gate();
    assert_eq!((gate.state, gate.build_id), (GateState::Open, Some(green.build_id)));
    let status = farm.wait_for("gate --wait to return", Duration::from_secs(30), |_| waiting.child.try_wait().unwrap());
    assert!(status.success(), "gate --wait exits 0 once the gate opens");
    waiting.kill();
    let (code, _, _) = farm.gate_command(&[]);
    assert_eq!(code, 0);
}

/// Pushes to a bare copy of the repository guarded by `hooks/pre-receive`, and from a
/// clone guarded by `hooks/pre-push`, while the gate is closed.
fn check_hooks(farm: &Farm) {
    use greenlight_shared::git::Git;
    let hooks = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../hooks");
    let bin = std::path::Path::new(common::greenlight()).parent().unwrap().to_owned();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let dir = tempfile::tempdir().unwrap();
    let commit = |work: &std::path::Path, message: &str| {
        Git::new(work)
            .run(&["-c", "user.name=E", "-c", "user.email=e@x", "commit", "--quiet", "--allow-empty", "-m", message])
            .unwrap();
    };
    let push_with = |work: &std::path::Path, path: &str, env: &[(&str, &str)]| {
        std::process::Command::new("git")
            .args(["push", "--quiet", "origin", "HEAD:main"])
            .current_dir(work)
            .env("PATH", path)
            .env("GREENLIGHT_MASTER", &farm.url)
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    let push = |work: &std::path::Path, message: &str| {
        commit(work, message);
        push_with(work, &path, &[])
    };
    // A PATH with git but without greenlight.
    let without = tempfile::tempdir().unwrap();
    let git =
        String::from_utf8(std::process::Command::new("sh").args(["-c", "command -v git"]).output().unwrap().stdout)
            .unwrap();
    std::os::unix::fs::symlink(git.trim(), without.path().join("git")).unwrap();
    let path_without = without.path().display().to_string();
    for hook in ["pre-receive", "pre-push"] {
        let central = dir.path().join(format!("{hook}-central.git"));
        let work = dir.path().join(format!("{hook}-work"));
        Git::new(dir.path())
            .run(&["clone", "--quiet", "--bare", &farm.repo.dir().to_string_lossy(), &central.to_string_lossy()])
            .unwrap();
        Git::new(dir.path()).run(&["clone", "--quiet", &central.to_string_lossy(), &work.to_string_lossy()]).unwrap();
        let installed =
            if hook == "pre-receive" { central.join("hooks/pre-receive") } else { work.join(".git/hooks/pre-push") };
        std::fs::copy(hooks.join(hook), &installed).unwrap();
        let refused = push(&work, "Chat: another feature");
        assert!(!refused.status.success(), "{hook} refuses a plain push while the gate is closed");
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("gate is closed"),
            "{hook}: {}",
            String::from_utf8_lossy(&refused.stderr)
        );
        Git::new(&work).run(&["reset", "--quiet", "--hard", "HEAD~1"]).unwrap();
        // A plain commit under a fix: every commit pushed is checked, not only the tip.
        commit(&work, "Chat: sneaked in");
        let refused = push(&work, "Core: put it back [fix]");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{hook} refuses a plain commit under a fix tip");
        assert!(
            stderr.contains("Chat: sneaked in") && stderr.contains("neither a fix nor a revert"),
            "{hook}: {stderr}"
        );
        Git::new(&work).run(&["reset", "--quiet", "--hard", "HEAD~2"]).unwrap();
        // Without greenlight on PATH the push is refused, saying how to install it, unless
        // the user opts out.
        commit(&work, "Core: put it back [fix]");
        let refused = push_with(&work, &path_without, &[]);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{hook} refuses when greenlight is missing: {stderr}");
        assert!(stderr.contains("not on PATH") && stderr.contains("cargo install"), "{hook}: {stderr}");
        let accepted = push_with(&work, &path, &[]);
        assert!(accepted.status.success(), "{hook} lets a fix through: {}", String::from_utf8_lossy(&accepted.stderr));
        commit(&work, "Chat: pushed by someone without greenlight");
        let optional = push_with(&work, &path_without, &[("GREENLIGHT_GATE_OPTIONAL", "1")]);
        assert!(optional.status.success(), "{hook}: {}", String::from_utf8_lossy(&optional.stderr));
        assert!(String::from_utf8_lossy(&optional.stderr).contains("without the gate"));
    }
}

#[test]
fn the_gate_command_exits_2_when_the_master_is_down() {
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", unused.local_addr().unwrap());
    drop(unused);
    let output = std::process::Command::new(common::greenlight()).args(["gate", "--master", &url]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot ask the master"));
}

#[test]
fn a_batch_of_eight_is_bisected_to_its_culprit_with_few_probes_of_the_failing_test() {
    let farm = Farm::start(&suite(3), 2, FarmOptions::default());
    let initial = farm.repo.head().unwrap();
    farm.wait_for("the first build to run", Duration::from_secs(120), |farm| {
        farm.builds().into_iter().find(|build| build.state == BuildState::Running)
    });
    // Eight changes land while the first build runs; the fifth breaks a core test.
    let mut revisions = Vec::new();
    for index in 1..=8 {
        let revision = if index == 5 {
            farm.repo.set_failing("core", &[BROKEN], "Core: change 5, the bad one").unwrap()
        } else {
            farm.repo.touch_area("core", &format!("Core: change {index}")).unwrap()
        };
        revisions.push(revision);
    }
    assert_eq!(farm.finished_build_of(&initial).state, BuildState::Green);
    let red = farm.finished_build_of(&revisions[7]);
    assert_eq!(red.state, BuildState::Red);
    assert_eq!(red.changes.len(), 8, "one build covers the batch");

    let red = farm.wait_for("the culprit", Duration::from_secs(120), |farm| {
        farm.builds().into_iter().find(|build| build.build_id == red.build_id && build.culprit.is_some())
    });
    let changes = farm.changes();
    let culprit = changes.iter().find(|change| Some(change.sequence) == red.culprit).expect("the culprit is a change");
    assert_eq!(culprit.revision, revisions[4], "change 5 is named");
    assert_eq!(culprit.culprit_of, Some(red.build_id));
    assert!(red.probes.len() <= 4, "at most ceil(log2 8) + 1 probes, ran {}", red.probes.len());
    assert!(!red.probes.is_empty());
    for &probe_id in &red.probes {
        let probe = farm.build(probe_id).build;
        assert_eq!((probe.kind, probe.probe_of), (BuildKind::Probe, Some(red.build_id)));
        let mut ran: Vec<String> = farm.tests(probe_id).results.into_iter().map(|result| result.test_id).collect();
        // A failure is retried once on another worker, in a probe too: that is one test.
        ran.dedup();
        assert_eq!(ran, vec![BROKEN.to_owned()], "a probe re-runs only the failing test");
        let probed = revisions.iter().position(|revision| *revision == probe.revision).expect("a covered revision");
        assert_eq!(probe.state == BuildState::Red, probed >= 4, "probe of change {} is {:?}", probed + 1, probe.state);
    }
    let gate = farm.gate();
    assert_eq!(gate.state, GateState::Closed);
    assert_eq!(gate.culprit.map(|change| change.revision), Some(revisions[4].clone()));
    let (code, stdout, _) = farm.gate_command(&[]);
    assert_eq!(code, 1);
    assert!(stdout.contains("Core: change 5, the bad one"), "the gate names the culprit: {stdout}");
}

#[test]
fn green_revisions_are_pushed_once_in_order_never_red_and_failures_are_retried() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("pushed.txt");
    let count = dir.path().join("count");
    let release = dir.path().join("release");
    // The first attempt fails; the second (its retry) holds the push stage until the test
    // releases it, after two more green builds have queued behind it; later attempts
    // succeed at once.
    let script = format!(
        r#"n=$(cat {count:?} 2>/dev/null || echo 0); echo $((n+1)) > {count:?}
[ "$n" -eq 0 ] && {{ echo "registry unreachable" >&2; exit 3; }}
if [ "$n" -eq 1 ]; then i=0; while [ ! -e {release:?} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; fi
echo "$GREENLIGHT_BUILD_ID $GREENLIGHT_REVISION" >> {log:?}"#
    );
    let options = FarmOptions {
        extra_toml: format!("[push]\ncommand = [\"sh\", \"-c\", {script:?}]\nattempts = 3\nbackoff_s = 0.2\n"),
        ..FarmOptions::default()
    };
    let small = SuiteFile {
        name: "small".into(),
        shard_overhead_s: 0.0,
        tests: vec![test(BROKEN, &["core"], &[], 1.0), test("core/test_core.py::test_0", &["core"], &[], 1.0)],
    };
    let farm = Farm::start(&small, 2, options);
    let first = farm.finished_build_of(&farm.repo.head().unwrap());
    assert_eq!(first.state, BuildState::Green);
    // While the first revision's push is under way, two more green builds finish.
    farm.wait_for("the first push attempt to fail", Duration::from_secs(30), |_| count.exists().then_some(()));
    let second = farm.finished_build_of(&farm.repo.touch_area("core", "Core: two").unwrap());
    let third = farm.finished_build_of(&farm.repo.touch_area("core", "Core: three").unwrap());
    let red = farm.finished_build_of(&farm.repo.set_failing("core", &[BROKEN], "Core: break").unwrap());
    assert_eq!((second.state, third.state, red.state), (BuildState::Green, BuildState::Green, BuildState::Red));
    std::fs::write(&release, "").unwrap();

    let pushes = farm.wait_for("the pushes to settle", Duration::from_secs(60), |farm| {
        let pushes = farm.pushes();
        pushes.iter().all(|push| !push.state.is_open()).then_some(pushes)
    });
    let state_of = |build_id: u64| pushes.iter().find(|push| push.build_id == build_id).map(|push| push.state.as_str());
    assert_eq!(state_of(first.build_id), Some("pushed"));
    assert_eq!(state_of(second.build_id), Some("superseded"), "older than one pushed after it: never pushed");
    assert_eq!(state_of(third.build_id), Some("pushed"));
    assert_eq!(state_of(red.build_id), None, "a red build is never handed over");
    let first_push = pushes.iter().find(|push| push.build_id == first.build_id).unwrap();
    assert_eq!(first_push.attempts, 2, "the failed attempt was retried");
    let pushed = std::fs::read_to_string(&log).unwrap();
    let expected = format!("{} {}\n{} {}\n", first.build_id, first.revision, third.build_id, third.revision);
    assert_eq!(pushed, expected, "each green revision pushed once, in order");
}

#[test]
fn a_periodic_full_run_names_the_change_whose_tags_missed_a_failure() {
    let tests = vec![
        test("chat/test_chat.py::test_send", &["chat"], &[], 1.0),
        test("chat/test_chat.py::test_emoji", &["chat"], &[], 1.0),
        test("shop/test_shop.py::test_price", &["shop"], &[], 1.0),
    ];
    let suite = SuiteFile { name: "tags".into(), shard_overhead_s: 0.0, tests };
    let options = FarmOptions { extra_toml: "[full_runs]\nevery_builds = 3\n".into(), ..FarmOptions::default() };
    let farm = Farm::start(&suite, 2, options);
    let price = "shop/test_shop.py::test_price";
    let first = farm.finished_build_of(&farm.repo.head().unwrap());
    assert_eq!(first.state, BuildState::Green);

    // A chat change that breaks a shop test: its tags select chat only, so it goes green.
    let sneaky = farm.repo.set_failing("chat", &[price], "Chat: share the price formatter").unwrap();
    let missed = farm.finished_build_of(&sneaky);
    assert_eq!((missed.state, missed.tags.clone()), (BuildState::Green, vec!["chat".to_owned()]));
    assert!(
        farm.tests(missed.build_id).results.iter().all(|result| result.test_id != price),
        "the shop test did not run"
    );

    // The third build is a periodic full run: it finds the failure and names the change.
    let harmless = farm.repo.touch_area("chat", "Chat: typo").unwrap();
    let full = farm.finished_build_of(&harmless);
    assert!(full.full_run, "every third build runs everything");
    assert_eq!((full.state, full.failed_tests.clone()), (BuildState::Red, vec![price.to_owned()]));
    let full = farm.wait_for("the culprit", Duration::from_secs(120), |farm| {
        farm.builds().into_iter().find(|build| build.build_id == full.build_id && build.culprit.is_some())
    });
    let missed_by_tags = full.missed_by_tags.expect("reported as missed by tags");
    let culprit = farm.changes().into_iter().find(|change| change.sequence == missed_by_tags.change).unwrap();
    assert_eq!(culprit.revision, sneaky);
    assert_eq!(missed_by_tags.build_id, missed.build_id, "the build that skipped the test is named");
    assert_eq!(missed_by_tags.tags, vec!["chat".to_owned()]);
    assert_eq!(missed_by_tags.tests, vec![price.to_owned()]);
    assert_eq!(full.culprit, Some(missed_by_tags.change));
}

#[test]
fn with_revert_culprit_on_the_master_reverts_the_culprit_and_the_gate_opens() {
    let options = FarmOptions { extra_toml: "[gate]\nrevert_culprit = true\n".into(), ..FarmOptions::default() };
    let farm = Farm::start(&suite(2), 2, options);
    // Let the master push to the fixture repository's checked-out branch.
    greenlight_shared::git::Git::new(farm.repo.dir())
        .run(&["config", "receive.denyCurrentBranch", "updateInstead"])
        .unwrap();
    assert_eq!(farm.finished_build_of(&farm.repo.head().unwrap()).state, BuildState::Green);
    let broken = farm.repo.set_failing("core", &[BROKEN], "Core: risky").unwrap();
    let red = farm.finished_build_of(&broken);
    assert_eq!(red.state, BuildState::Red);
    // The master commits `Revert "Core: risky"`; its build is green and opens the gate.
    let revert = farm.wait_for("the revert commit", Duration::from_secs(60), |farm| {
        let head = farm.repo.head().unwrap();
        (head != broken).then_some(head)
    });
    let message =
        greenlight_shared::git::Git::new(farm.repo.dir()).run(&["log", "-1", "--format=%s", &revert]).unwrap();
    assert_eq!(message, "Revert \"Core: risky\"");
    let build = farm.finished_build_of(&revert);
    assert_eq!(build.state, BuildState::Green);
    assert_eq!(farm.gate().state, GateState::Open);
}

#[test]
fn a_push_that_keeps_failing_is_reported_failed_after_its_attempts() {
    let options = FarmOptions {
        extra_toml: "[push]\ncommand = [\"sh\", \"-c\", \"echo deploy target unreachable >&2; exit 7\"]\nattempts = 2\nbackoff_s = 0.1\n"
            .into(),
        ..FarmOptions::default()
    };
    let small =
        SuiteFile { name: "small".into(), shard_overhead_s: 0.0, tests: vec![test("core::a", &["core"], &[], 1.0)] };
    let farm = Farm::start(&small, 1, options);
    let build = farm.finished_build_of(&farm.repo.head().unwrap());
    assert_eq!(build.state, BuildState::Green);
    let push = farm.wait_for("the push to fail", Duration::from_secs(30), |farm| {
        farm.pushes().into_iter().find(|push| push.build_id == build.build_id && push.state == PushState::Failed)
    });
    assert_eq!(push.attempts, 2);
    let error = push.last_error.unwrap_or_default();
    assert!(error.contains("exit status: 7") && error.contains("deploy target unreachable"), "{error}");
}

/// A farm whose master polls the repository only when told (`POST /api/v1/changes`), so
/// commits made before telling it form exactly one batch.
fn batching_farm(suite: &SuiteFile, state: Option<&std::path::Path>, prepare: impl FnOnce(&FixtureRepo)) -> Farm {
    let mut options = FarmOptions { poll_interval_s: 3600.0, ..FarmOptions::default() };
    if let Some(state) = state {
        options.suite_toml =
            format!("file = \"greenlight-suite.json\"\nenv = {{ GREENLIGHT_FIXTURE_STATE = {:?} }}", state);
    }
    Farm::start_with_repo(suite, 2, options, prepare)
}

/// Tells the master the branch moved: it fetches every commit made since, as one batch.
fn announce(farm: &Farm) {
    let (status, body) = farm.post("/api/v1/changes", &serde_json::json!({}), Some(common::TOKEN));
    assert_eq!(status, 202, "{body}");
}

fn fast_suite(n_tests: usize) -> SuiteFile {
    let tests =
        (0..n_tests).map(|index| test(&format!("core/test_core.py::test_{index}"), &["core"], &[], 1.0)).collect();
    SuiteFile { name: "fast".into(), shard_overhead_s: 0.0, tests }
}

/// Waits until culprit finding of `build_id` says `done` of the build.
fn culprit_finding(farm: &Farm, build_id: u64, done: impl Fn(&BuildSummary) -> bool) -> BuildSummary {
    farm.wait_for("culprit finding", Duration::from_secs(180), |farm| {
        let build = farm.build(build_id).build;
        done(&build).then_some(build)
    })
}

/// Every probe of `red` re-ran some of `allowed` only, at a revision of the batch.
fn check_probes(farm: &Farm, red: &BuildSummary, allowed: &[&str]) {
    for &probe_id in &red.probes {
        let probe = farm.build(probe_id).build;
        assert_eq!((probe.kind, probe.probe_of), (BuildKind::Probe, Some(red.build_id)));
        for result in farm.tests(probe_id).results {
            assert!(allowed.contains(&result.test_id.as_str()), "probe {probe_id} ran {}", result.test_id);
        }
    }
}

fn ceil_log2(n: usize) -> usize {
    n.next_power_of_two().trailing_zeros() as usize
}

#[test]
fn two_culprits_in_one_batch_are_both_named_each_with_the_test_it_broke() {
    let farm = batching_farm(&fast_suite(4), None, |_| {});
    assert_eq!(farm.finished_build_of(&farm.repo.head().unwrap()).state, BuildState::Green);
    let (first, second) = ("core/test_core.py::test_1", "core/test_core.py::test_2");
    // Eight changes: the 3rd breaks `first`, the 6th `second`.
    let mut revisions = Vec::new();
    for index in 1..=8 {
        revisions.push(match index {
            3 => farm.repo.set_failing("core", &[first], "Core: change 3 breaks test_1").unwrap(),
            6 => farm.repo.set_failing("core", &[first, second], "Core: change 6 breaks test_2").unwrap(),
            _ => farm.repo.touch_area("core", &format!("Core: change {index}")).unwrap(),
        });
    }
    announce(&farm);
    let red = farm.finished_build_of(&revisions[7]);
    assert_eq!((red.state, red.changes.len()), (BuildState::Red, 8), "{red:?}");

    let red = culprit_finding(&farm, red.build_id, |build| build.culprits.len() == 2);
    let named: Vec<(&str, Vec<String>)> =
        red.culprits.iter().map(|culprit| (culprit.revision.as_str(), culprit.tests.clone())).collect();
    assert_eq!(
        named,
        vec![(revisions[2].as_str(), vec![first.to_owned()]), (revisions[5].as_str(), vec![second.to_owned()])]
    );
    assert_eq!(red.culprit, Some(red.culprits[0].change), "older clients read the first");
    assert!(red.not_reproduced.is_empty());
    assert!(red.probes.len() <= 1 + 2 * ceil_log2(8), "within two searches' probes: {}", red.probes.len());
    check_probes(&farm, &red, &[first, second]);
    for change in farm.changes() {
        let blamed = change.revision == revisions[2] || change.revision == revisions[5];
        assert_eq!(change.culprit_of, blamed.then_some(red.build_id), "{}", change.message);
    }
    // The raw API body: the old field and the list.
    let (_, body) = farm.get_with(&format!("/api/v1/builds/{}", red.build_id), None);
    assert_eq!(body["build"]["culprits"].as_array().map(Vec::len), Some(2), "{body}");
    assert_eq!(body["build"]["culprit"], body["build"]["culprits"][0]["change"]);

    let gate = farm.gate();
    assert_eq!(gate.state, GateState::Closed);
    assert_eq!(
        gate.culprits.iter().map(|culprit| culprit.revision.clone()).collect::<Vec<_>>(),
        vec![revisions[2].clone(), revisions[5].clone()]
    );
    assert_eq!(gate.culprit.map(|change| change.revision), Some(revisions[2].clone()));
    let (code, stdout, _) = farm.gate_command(&[]);
    assert_eq!(code, 1);
    assert!(
        stdout.contains("Core: change 3 breaks test_1") && stdout.contains("Core: change 6 breaks test_2"),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("broke: {second}")), "{stdout}");
}

#[test]
fn a_flaky_failure_that_does_not_reproduce_names_nobody_and_counts_as_a_flake() {
    let state = tempfile::tempdir().unwrap();
    let flaky = "core/test_core.py::test_1";
    // The test passes in the first build (run 0), fails on its run and its retry in the
    // batch's build (runs 1 and 2) and passes when re-run at the same revision (run 3).
    let seed = (0..100_000u64)
        .find(|&seed| {
            let fails = |run| flaky_fails(0.5, seed, flaky, run);
            !fails(0) && fails(1) && fails(2) && !fails(3)
        })
        .expect("such a seed");
    let farm = batching_farm(&fast_suite(3), Some(state.path()), |repo| {
        repo.commit("Core: test_1 is flaky", &[(FAILING_FILE, &format!("flaky 0.5 {seed} {flaky}\n"))]).unwrap();
    });
    assert_eq!(farm.finished_build_of(&farm.repo.head().unwrap()).state, BuildState::Green);
    farm.repo.touch_area("core", "Core: one").unwrap();
    let tip = farm.repo.touch_area("core", "Core: two").unwrap();
    announce(&farm);
    let red = farm.finished_build_of(&tip);
    assert_eq!((red.state, red.failed_tests.clone()), (BuildState::Red, vec![flaky.to_owned()]));

    let red = culprit_finding(&farm, red.build_id, |build| !build.not_reproduced.is_empty());
    assert_eq!(red.not_reproduced, vec![flaky.to_owned()]);
    assert_eq!((red.culprit, red.culprits.len(), red.probes.len()), (None, 0, 1), "one confirmation, nobody blamed");
    let confirmation = farm.build(red.probes[0]).build;
    assert_eq!((confirmation.revision.as_str(), confirmation.state), (tip.as_str(), BuildState::Green));
    assert!(farm.changes().iter().all(|change| change.culprit_of.is_none()));
    let (_, flakes) = farm.get_with("/api/v1/flaky", None);
    assert_eq!((flakes["tests"][0]["test_id"].as_str(), flakes["tests"][0]["flaky"].as_u64()), (Some(flaky), Some(1)));
    let gate = farm.gate();
    assert_eq!(gate.state, GateState::Open, "its only failure was a flake: {gate:?}");
    assert!(gate.warning.as_deref().is_some_and(|warning| warning.contains("did not reproduce")), "{gate:?}");
    assert!(gate.culprits.is_empty() && gate.culprit.is_none());
    assert_eq!(farm.gate_command(&[]).0, 0);
}

#[test]
fn a_culprit_followed_by_its_own_fix_in_the_batch_names_nobody() {
    let farm = batching_farm(&fast_suite(3), None, |_| {});
    assert_eq!(farm.finished_build_of(&farm.repo.head().unwrap()).state, BuildState::Green);
    let broken = "core/test_core.py::test_0";
    farm.repo.touch_area("core", "Core: one").unwrap();
    farm.repo.set_failing("core", &[broken], "Core: breaks test_0").unwrap();
    let tip = farm.repo.set_failing("core", &[], "Core: fixes test_0 [fix]").unwrap();
    announce(&farm);
    let build = farm.finished_build_of(&tip);
    assert_eq!((build.state, build.changes.len()), (BuildState::Green, 3));
    assert_eq!((build.culprit, build.culprits.len(), build.probes.len()), (None, 0, 0));
    assert!(farm.builds().iter().all(|build| build.kind == BuildKind::Regular), "no probe ran");
    assert!(farm.changes().iter().all(|change| change.culprit_of.is_none()));
    assert_eq!(farm.gate().state, GateState::Open);
}

/// Batches of `n` changes, the `culprit`-th breaking a test, one after another on one farm
/// (each fixed before the next): the culprit is named within ceil(log2 n) + 1 probes,
/// the confirmation included. Prints, per batch, the probes and the seconds from the red
/// verdict to the culprit named. `GREENLIGHT_CULPRIT_BENCH=1` measures batches of 2, 4, 8
/// and 16 with the culprit first, in the middle and last (BENCHMARKS.md).
#[test]
fn culprits_are_named_within_the_probe_budget_for_batches_of_2_to_16() {
    let mut cases: Vec<(usize, usize)> = if std::env::var_os("GREENLIGHT_CULPRIT_BENCH").is_some() {
        [2, 4, 8, 16].iter().flat_map(|&n| [(n, 1), (n, n / 2 + 1), (n, n)]).collect()
    } else {
        vec![(2, 2), (5, 1), (16, 11)]
    };
    cases.dedup();
    let farm = batching_farm(&fast_suite(cases.len()), None, |_| {});
    assert_eq!(farm.finished_build_of(&farm.repo.head().unwrap()).state, BuildState::Green);
    println!("| changes | culprit | probes | budget | red verdict to culprit (s) |");
    for (case, &(n_changes, culprit)) in cases.iter().enumerate() {
        let broken = format!("core/test_core.py::test_{case}");
        let mut revisions = Vec::new();
        for index in 1..=n_changes {
            revisions.push(if index == culprit {
                farm.repo.set_failing("core", &[&broken], &format!("Core: batch {case} change {index} breaks")).unwrap()
            } else {
                farm.repo.touch_area("core", &format!("Core: batch {case} change {index}")).unwrap()
            });
        }
        announce(&farm);
        let red = farm.finished_build_of(&revisions[n_changes - 1]);
        assert_eq!((red.state, red.changes.len()), (BuildState::Red, n_changes), "{red:?}");
        let red = culprit_finding(&farm, red.build_id, |build| !build.culprits.is_empty());
        assert_eq!(red.culprits.len(), 1);
        assert_eq!(red.culprits[0].revision, revisions[culprit - 1], "batch of {n_changes}");
        let budget = ceil_log2(n_changes) + 1;
        assert!(red.probes.len() <= budget, "{} probes for {n_changes} changes", red.probes.len());
        check_probes(&farm, &red, &[&broken]);
        let named_at = red.probes.iter().filter_map(|&probe| farm.build(probe).build.finished_at).fold(0.0, f64::max);
        let seconds = named_at - red.finished_at.expect("red ended");
        println!("| {n_changes} | {culprit} | {} | {budget} | {seconds:.1} |", red.probes.len());
        let fixed = farm.repo.set_failing("core", &[], &format!("Core: fix batch {case} [fix]")).unwrap();
        announce(&farm);
        assert_eq!(farm.finished_build_of(&fixed).state, BuildState::Green);
    }
}
