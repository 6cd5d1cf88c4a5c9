//! What should have been told, against what was told: the notifier's pure core. Given the
//! newest builds, the revisions of the changes they cover, the gate and the [`Ledger`] of
//! what was delivered, [`reconcile`] lists the deliveries still owed. It sees states, not
//! events, so an event missed (a lagging subscriber, a restart) is made up for by the
//! next look.
//!
//! **Which revisions get a status.** A regular build covers a batch of changes and tests
//! the newest; every change it covers gets the build's status on its own revision:
//! `pending` once the build is queued or running, then `success` (green), `failure`
//! (red: the batch failed as one; once culprit finding names the culprit, the failure is
//! posted again saying which change it was) or `error` (no verdict). A cancelled build is
//! in error; its changes are covered again by a later build, whose statuses replace it.
//! Probe builds (culprit finding) post nothing.
//!
//! **Notifications.** `gate_closed` when the gate closes on a build (its failing tests so
//! far, its culprits if already known), and again when a later build fails while it is
//! closed (the gate's evidence moves to it); `culprit_found` for each change culprit
//! finding names (with the tests it broke); `gate_reopened` when the gate opens after
//! having been told closed; `build_error` for a regular build in error. Each is told once
//! per webhook.

use std::collections::BTreeMap;

use greenlight_shared::api::{
    BuildKind, BuildState, BuildSummary, GateState, GateView, Notification, NotificationKind, build_page_url,
};
use serde::{Deserialize, Serialize};

use super::Outgoing;
use super::forge::{ForgeTarget, StatusState, status_request};
use super::webhook::{json_body, slack_body};

/// Where deliveries go; each has a queue and a task of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// The forge's commit status API.
    Forge,
    /// The Slack-compatible webhook.
    Slack,
    /// The plain JSON webhook.
    Json,
}

impl Target {
    /// Its name in keys and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Forge => "forge",
            Target::Slack => "slack",
            Target::Json => "json",
        }
    }
}

/// Everything deliveries go to (from the configuration).
#[derive(Clone, Default)]
pub struct Targets {
    /// The forge, if statuses are configured.
    pub forge: Option<ForgeTarget>,
    /// The Slack-compatible webhook's URL.
    pub slack: Option<String>,
    /// The plain JSON webhook's URL.
    pub json: Option<String>,
}

impl Targets {
    /// Whether there is anything to deliver to.
    pub fn any(&self) -> bool {
        self.forge.is_some() || self.slack.is_some() || self.json.is_some()
    }
}

/// What was told under one key: its build (for pruning) and what it said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Told {
    /// The build it was about.
    pub build_id: u64,
    /// What it said, in short: a status's state and description; a gate's state.
    pub fingerprint: String,
}

/// What the notifier delivered (or gave up on), durably, by key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    /// Whether a notifier has looked at this farm before. The first look takes what had
    /// already happened as told (an upgraded master does not announce its whole past).
    pub started: bool,
    /// By key: `status/BUILD/REVISION`, `TARGET/EVENT/BRANCH/BUILD`, `gate/BRANCH`.
    pub told: BTreeMap<String, Told>,
}

impl Ledger {
    /// Forgets keys of builds older than `oldest` (no longer looked at); the gate's keys stay.
    pub fn prune_below(&mut self, oldest: u64) {
        self.told.retain(|key, told| key.starts_with("gate/") || told.build_id >= oldest);
    }
}

/// One HTTP request owed.
pub struct Delivery {
    /// What it tells, once delivered ([`Ledger::told`]'s key).
    pub key: String,
    /// What it says.
    pub told: Told,
    /// Where it goes.
    pub target: Target,
    /// `status` or the notification's kind: the `kind` label of
    /// `greenlight_notifications_total`.
    pub kind: &'static str,
    /// Whether it is about the past at the notifier's first look (statuses of ended builds,
    /// notifications): taken as told then, not sent.
    pub past_at_first_look: bool,
    /// The request.
    pub request: Outgoing,
}

/// What the farm looks like now.
pub struct FarmState<'a> {
    /// The watched branch.
    pub branch: &'a str,
    /// The newest builds.
    pub builds: &'a [BuildSummary],
    /// The revision of each change the builds cover, by sequence (a missing one is
    /// skipped until it is known).
    pub revisions: &'a BTreeMap<u64, String>,
    /// The gate.
    pub gate: &'a GateView,
    /// The page's address, for links.
    pub page_base: &'a str,
}

/// What [`reconcile`] decided: deliveries owed, and ledger entries to write at once (the
/// gate's state as last told).
#[derive(Default)]
pub struct Plan {
    /// Deliveries to queue.
    pub deliveries: Vec<Delivery>,
    /// Entries to record now.
    pub marks: Vec<(String, Told)>,
}

/// The deliveries owed for `farm` to `targets`, given what was `told` (delivered, or
/// queued) under each key.
pub fn reconcile(farm: &FarmState<'_>, targets: &Targets, told: impl Fn(&str) -> Option<Told>) -> Plan {
    let mut plan = Plan::default();
    let mut regular: Vec<&BuildSummary> = farm.builds.iter().filter(|build| build.kind == BuildKind::Regular).collect();
    regular.sort_by_key(|build| build.build_id);
    if let Some(forge) = &targets.forge {
        for build in &regular {
            statuses(farm, forge, build, &told, &mut plan);
        }
    }
    let webhooks: Vec<(Target, &str)> = [(Target::Slack, &targets.slack), (Target::Json, &targets.json)]
        .into_iter()
        .filter_map(|(target, url)| url.as_deref().map(|url| (target, url)))
        .collect();
    let mut notices: Vec<Notification> = Vec::new();
    gate_notices(farm, &told, &mut notices, &mut plan);
    for build in regular.iter().filter(|build| build.state == BuildState::Error) {
        notices.push(Notification {
            error: Some(build.error.clone().unwrap_or_else(|| "no reason given".to_owned())),
            ..notification(farm, NotificationKind::BuildError, build.build_id, &build.revision)
        });
    }
    for notice in notices {
        for &(target, url) in &webhooks {
            let key = format!("{}/{}", target.as_str(), notice_key(&notice));
            if told(&key).is_some() {
                continue;
            }
            let body = match target {
                Target::Slack => slack_body(&notice),
                _ => json_body(&notice),
            };
            plan.deliveries.push(Delivery {
                key,
                told: Told { build_id: notice.build_id, fingerprint: notice.event.as_str().to_owned() },
                target,
                kind: notice.event.as_str(),
                past_at_first_look: true,
                request: Outgoing { url: url.to_owned(), headers: Vec::new(), body },
            });
        }
    }
    plan
}

/// The statuses owed for `build`'s revisions.
fn statuses(
    farm: &FarmState<'_>,
    forge: &ForgeTarget,
    build: &BuildSummary,
    told: &impl Fn(&str) -> Option<Told>,
    plan: &mut Plan,
) {
    let (state, description) = status_of(build);
    let fingerprint = format!("{}|{description}", state.as_str());
    let link = build_page_url(farm.page_base, build.build_id);
    for sequence in &build.changes {
        let Some(revision) = farm.revisions.get(sequence) else { continue };
        let key = format!("status/{}/{revision}", build.build_id);
        if told(&key).is_some_and(|told| told.fingerprint == fingerprint) {
            continue;
        }
        plan.deliveries.push(Delivery {
            key,
            told: Told { build_id: build.build_id, fingerprint: fingerprint.clone() },
            target: Target::Forge,
            kind: "status",
            past_at_first_look: build.state.is_finished(),
            request: status_request(forge, revision, state, &description, &link),
        });
    }
}

/// A build's status on the revisions it covers, and what it says.
pub fn status_of(build: &BuildSummary) -> (StatusState, String) {
    let id = build.build_id;
    let batch = match build.changes.len() {
        0 | 1 => String::new(),
        n => format!(" (a batch of {n} changes)"),
    };
    match build.state {
        BuildState::Queued | BuildState::Running => (StatusState::Pending, format!("build {id} is testing{batch}")),
        BuildState::Green => {
            let passed = build.counts.passed;
            (StatusState::Success, format!("build {id} green: {passed} passed{batch}"))
        }
        BuildState::Red => {
            let failed = build.failed_tests.len();
            let tests = if failed == 1 { "test".to_owned() } else { "tests".to_owned() };
            let mut description = format!("build {id} red: {failed} {tests} failed{batch}");
            if !build.culprits.is_empty() {
                let culprits: Vec<&str> =
                    build.culprits.iter().map(|culprit| &culprit.revision[..culprit.revision.len().min(10)]).collect();
                description.push_str(&format!("; culprit {}", culprits.join(", ")));
            }
            (StatusState::Failure, description)
        }
        BuildState::Error => {
            let why = build.error.as_deref().unwrap_or("no reason given");
            (StatusState::Error, format!("build {id} error: {why}"))
        }
    }
}

fn notification(farm: &FarmState<'_>, event: NotificationKind, build_id: u64, revision: &str) -> Notification {
    Notification {
        version: greenlight_shared::API_VERSION,
        event,
        branch: farm.branch.to_owned(),
        build_id,
        revision: revision.to_owned(),
        failing_tests: Vec::new(),
        culprits: Vec::new(),
        error: None,
        url: build_page_url(farm.page_base, build_id),
    }
}

/// What a notification is told under, after its target: `EVENT/BRANCH/BUILD`; a culprit
/// by its change (`culprit_found/BRANCH/change-N`), so that a gate that moves on to a
/// later red build, keeping its culprits, does not tell them again.
fn notice_key(notice: &Notification) -> String {
    match (notice.event, notice.culprits.as_slice()) {
        (NotificationKind::CulpritFound, [culprit]) => {
            format!("{}/{}/change-{}", notice.event.as_str(), notice.branch, culprit.change)
        }
        _ => format!("{}/{}/{}", notice.event.as_str(), notice.branch, notice.build_id),
    }
}

/// The gate's notifications owed, and its state as last seen (`gate/BRANCH`: `closed`,
/// `reopened` or `open`, and the build). Every notification is owed by its key (told once
/// per target, queued again while its target's queue is full); the state only says
/// whether an open gate was reopened: `reopened` on the build that opened a gate seen
/// closed, `open` on a gate never seen closed (a new farm) or opened again by a later
/// green build.
fn gate_notices(
    farm: &FarmState<'_>,
    told: &impl Fn(&str) -> Option<Told>,
    notices: &mut Vec<Notification>,
    plan: &mut Plan,
) {
    let gate = farm.gate;
    let gate_key = format!("gate/{}", farm.branch);
    let last = told(&gate_key);
    let Some(build_id) = gate.build_id else { return };
    let revision = gate.revision.clone().unwrap_or_default();
    let seen = |fingerprint: &str| Told { build_id, fingerprint: fingerprint.to_owned() };
    let current = match gate.state {
        GateState::Closed => {
            notices.push(Notification {
                failing_tests: gate.failing_tests.clone(),
                culprits: gate.culprits.clone(),
                ..notification(farm, NotificationKind::GateClosed, build_id, &revision)
            });
            // One notification a culprit, with the tests it broke.
            for culprit in &gate.culprits {
                notices.push(Notification {
                    failing_tests: culprit.tests.clone(),
                    culprits: vec![culprit.clone()],
                    ..notification(farm, NotificationKind::CulpritFound, build_id, &revision)
                });
            }
            seen("closed")
        }
        GateState::Open => {
            let reopened = match &last {
                Some(last) if last.fingerprint == "closed" => true,
                Some(last) => last.fingerprint == "reopened" && last.build_id == build_id,
                None => false,
            };
            if reopened {
                notices.push(notification(farm, NotificationKind::GateReopened, build_id, &revision));
                seen("reopened")
            } else {
                seen("open")
            }
        }
    };
    if last.as_ref() != Some(&current) {
        plan.marks.push((gate_key, current));
    }
}

#[cfg(test)]
mod tests {
    use greenlight_shared::api::{CulpritView, TestCounts};

    use super::*;
    use crate::config::ForgeKind;

    fn build(build_id: u64, state: BuildState, changes: &[u64]) -> BuildSummary {
        BuildSummary {
            state,
            full_run: true,
            counts: TestCounts { total: 3, passed: 3, ..TestCounts::default() },
            ..BuildSummary::queued(
                build_id,
                "main".into(),
                format!("r{}", changes.last().unwrap()),
                changes.to_vec(),
                0.0,
            )
        }
    }

    fn gate(state: GateState, build_id: Option<u64>) -> GateView {
        GateView {
            version: 1,
            branch: "main".into(),
            state,
            since: None,
            build_id,
            revision: build_id.map(|id| format!("rev-of-{id}")),
            failing_tests: if state == GateState::Closed { vec!["t1".into()] } else { vec![] },
            culprit: None,
            culprits: vec![],
            reason: None,
            warning: None,
            fix_marker: "[fix]".into(),
            health: vec![],
        }
    }

    fn targets() -> Targets {
        Targets {
            forge: Some(ForgeTarget {
                kind: ForgeKind::Github,
                api_root: "http://forge".into(),
                repository: "a/b".into(),
                token: "t".into(),
                context: "greenlight".into(),
            }),
            slack: Some("http://chat/hook".into()),
            json: Some("http://ops/hook".into()),
        }
    }

    /// Reconciles `builds` and `gate` against `ledger`, records every delivery and mark as
    /// told, and returns the deliveries as `key state-or-event` lines.
    fn check(ledger: &mut Ledger, builds: &[BuildSummary], gate: &GateView, expected: &[&str]) {
        let revisions: BTreeMap<u64, String> = (1..=20).map(|sequence| (sequence, format!("r{sequence}"))).collect();
        let farm = FarmState { branch: "main", builds, revisions: &revisions, gate, page_base: "http://m/" };
        let plan = reconcile(&farm, &targets(), |key| ledger.told.get(key).cloned());
        let lines: Vec<String> = plan
            .deliveries
            .iter()
            .map(|delivery| match delivery.target {
                Target::Forge => format!("{} {}", delivery.key, delivery.request.body["state"].as_str().unwrap()),
                _ => delivery.key.clone(),
            })
            .collect();
        assert_eq!(lines, expected);
        for delivery in plan.deliveries {
            ledger.told.insert(delivery.key, delivery.told);
        }
        ledger.told.extend(plan.marks);
    }

    #[test]
    fn every_covered_revision_gets_pending_then_the_verdict_once() {
        let mut ledger = Ledger::default();
        let open = gate(GateState::Open, None);
        check(
            &mut ledger,
            &[build(1, BuildState::Running, &[1, 2])],
            &open,
            &["status/1/r1 pending", "status/1/r2 pending"],
        );
        check(&mut ledger, &[build(1, BuildState::Running, &[1, 2])], &open, &[]);
        let green = gate(GateState::Open, Some(1));
        check(
            &mut ledger,
            &[build(1, BuildState::Green, &[1, 2])],
            &green,
            &["status/1/r1 success", "status/1/r2 success"],
        );
        check(&mut ledger, &[build(1, BuildState::Green, &[1, 2])], &green, &[]);
        // A probe posts nothing.
        let mut probe = build(2, BuildState::Running, &[3]);
        probe.kind = BuildKind::Probe;
        check(&mut ledger, &[build(1, BuildState::Green, &[1, 2]), probe], &green, &[]);
    }

    #[test]
    fn a_red_build_closes_then_names_its_culprit_then_a_green_one_reopens() {
        let mut ledger = Ledger::default();
        let mut red = build(3, BuildState::Running, &[4, 5]);
        red.failed_tests = vec!["t1".into()];
        let closed = gate(GateState::Closed, Some(3));
        check(
            &mut ledger,
            &[red.clone()],
            &closed,
            &["status/3/r4 pending", "status/3/r5 pending", "slack/gate_closed/main/3", "json/gate_closed/main/3"],
        );
        red.state = BuildState::Red;
        check(&mut ledger, &[red.clone()], &closed, &["status/3/r4 failure", "status/3/r5 failure"]);
        // Culprit finding names r5: the failure says so, the chat hears it once.
        let culprit = CulpritView {
            change: 5,
            revision: "r5".into(),
            author: "a".into(),
            subject: "s".into(),
            tests: vec!["t1".into()],
        };
        red.culprits = vec![culprit.clone()];
        let mut named = closed.clone();
        named.culprits = vec![culprit];
        check(
            &mut ledger,
            &[red.clone()],
            &named,
            &[
                "status/3/r4 failure",
                "status/3/r5 failure",
                "slack/culprit_found/main/change-5",
                "json/culprit_found/main/change-5",
            ],
        );
        check(&mut ledger, &[red.clone()], &named, &[]);
        // A later build fails while the gate is closed: the gate is told closed on it, its
        // culprit (kept by the gate) is not told again.
        let mut later = build(5, BuildState::Red, &[8]);
        later.failed_tests = vec!["t1".into()];
        let mut moved = named.clone();
        moved.build_id = Some(5);
        check(
            &mut ledger,
            &[red.clone(), later.clone()],
            &moved,
            &["status/5/r8 failure", "slack/gate_closed/main/5", "json/gate_closed/main/5"],
        );
        let fixed = build(6, BuildState::Green, &[9]);
        check(
            &mut ledger,
            &[red.clone(), later.clone(), fixed.clone()],
            &gate(GateState::Open, Some(6)),
            &["status/6/r9 success", "slack/gate_reopened/main/6", "json/gate_reopened/main/6"],
        );
        check(&mut ledger, &[red, later, fixed], &gate(GateState::Open, Some(6)), &[]);
    }

    #[test]
    fn a_build_in_error_is_told_once_and_an_open_gate_is_not_announced() {
        let mut ledger = Ledger::default();
        let mut error = build(5, BuildState::Error, &[7]);
        error.error = Some("cancelled by an admin".into());
        check(
            &mut ledger,
            &[error.clone()],
            &gate(GateState::Open, Some(2)),
            &["status/5/r7 error", "slack/build_error/main/5", "json/build_error/main/5"],
        );
        check(&mut ledger, &[error], &gate(GateState::Open, Some(2)), &[]);
        assert_eq!(ledger.told["gate/main"], Told { build_id: 2, fingerprint: "open".into() });
    }

    #[test]
    fn a_notification_left_unqueued_is_owed_again_by_the_next_look() {
        let revisions = BTreeMap::new();
        let mut ledger = Ledger::default();
        let mut owed = |gate: &GateView, queue_room: bool| -> Vec<String> {
            let farm = FarmState { branch: "main", builds: &[], revisions: &revisions, gate, page_base: "http://m" };
            let targets = Targets { forge: None, slack: None, json: Some("http://ops/hook".into()) };
            let plan = reconcile(&farm, &targets, |key| ledger.told.get(key).cloned());
            ledger.told.extend(plan.marks);
            let keys: Vec<String> = plan.deliveries.iter().map(|delivery| delivery.key.clone()).collect();
            if queue_room {
                ledger.told.extend(plan.deliveries.into_iter().map(|delivery| (delivery.key, delivery.told)));
            }
            keys
        };
        let closed = gate(GateState::Closed, Some(3));
        assert_eq!(owed(&closed, false), ["json/gate_closed/main/3"], "the queue is full");
        assert_eq!(owed(&closed, true), ["json/gate_closed/main/3"], "owed again");
        assert_eq!(owed(&closed, true), Vec::<String>::new());
        let open = gate(GateState::Open, Some(4));
        assert_eq!(owed(&open, false), ["json/gate_reopened/main/4"], "the queue is full");
        assert_eq!(owed(&open, true), ["json/gate_reopened/main/4"], "owed again");
        assert_eq!(owed(&open, true), Vec::<String>::new());
        assert_eq!(owed(&gate(GateState::Open, Some(5)), true), Vec::<String>::new(), "open, not reopened");
    }

    #[test]
    fn pruning_forgets_old_builds_but_not_the_gate() {
        let mut ledger = Ledger::default();
        ledger.told.insert("status/1/r1".into(), Told { build_id: 1, fingerprint: "x".into() });
        ledger.told.insert("status/9/r9".into(), Told { build_id: 9, fingerprint: "x".into() });
        ledger.told.insert("gate/main".into(), Told { build_id: 1, fingerprint: "closed".into() });
        ledger.prune_below(5);
        assert_eq!(ledger.told.keys().collect::<Vec<_>>(), ["gate/main", "status/9/r9"]);
    }
}
