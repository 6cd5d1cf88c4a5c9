//! Forge commit statuses and chat notifications (`[forge]`, `[notify]`): the master tells
//! the outside world what its builds and its gate did. [`run`] is a background task
//! beside the master's other loops:
//!
//! - **It reconciles states, it does not relay events.** On every build or gate event
//!   (at most four looks a second), every 5 s and at start-up, it compares the newest
//!   builds and the gate with the [`Ledger`] of what it delivered, kept in the store, and
//!   queues what is owed ([`plan::reconcile`]). The page's broadcast may lag and a master
//!   may restart: the next look makes up for anything missed.
//! - **Delivery never blocks the farm.** Each target (the forge, the Slack webhook, the
//!   JSON webhook) has a bounded queue and a task of its own, with its own HTTP client
//!   and timeouts; the farm's lock is only taken to read the builds (on a blocking
//!   thread). A failed request is retried with exponential back-off (`backoff_s`, doubled,
//!   at most a minute) up to `attempts` times, then given up with a warning and counted
//!   in `greenlight_notifications_total{kind,outcome}`. A status superseded by a newer
//!   one of the same revision while it waits is dropped. A refusal (4xx but 408 and 429)
//!   is given up at once: the configuration is wrong, retrying will not help.
//! - Tokens and webhook URLs (Slack's are secrets) are never logged.

pub mod forge;
pub mod plan;
pub mod webhook;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use greenlight_shared::api::{BuildState, FarmEvent, GateState};
use tokio::sync::{broadcast, mpsc, watch};

use self::forge::{ForgeTarget, already_there};
use self::plan::{Delivery, FarmState};
pub use self::plan::{Ledger, Target, Targets, Told};
use crate::config::{Config, ForgeKind};
use crate::farm::{Farm, FarmError, blocking};

/// How many of the newest builds each look considers.
const WINDOW: usize = 50;
/// Deliveries a target's queue holds; beyond them, the next look queues again.
const QUEUE: usize = 256;
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A look at least this often, events or not.
const TICK: Duration = Duration::from_secs(5);
/// Looks at most this often.
const MIN_GAP: Duration = Duration::from_millis(250);

/// An HTTP POST with a JSON body. Its `Debug` names header names only: they hold tokens.
#[derive(Clone, PartialEq)]
pub struct Outgoing {
    /// Where.
    pub url: String,
    /// Headers (lowercase names) besides `content-type`.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: serde_json::Value,
}

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(name, _)| *name).collect();
        formatter.debug_struct("Outgoing").field("headers", &names).field("body", &self.body).finish_non_exhaustive()
    }
}

/// The targets the configuration names (tokens and webhook URLs already taken from the
/// environment).
pub fn targets(config: &Config) -> Targets {
    let forge = &config.forge;
    let forge = match (forge.kind, forge.api_root(), &forge.repository, &forge.token) {
        (Some(kind), Some(api_root), Some(repository), Some(token)) => Some(ForgeTarget {
            kind,
            api_root,
            repository: repository.clone(),
            token: token.clone(),
            context: forge.context.clone(),
        }),
        _ => None,
    };
    Targets { forge, slack: config.notify.slack_webhook.clone(), json: config.notify.json_webhook.clone() }
}

/// What the reconciler and the delivery tasks share.
struct Shared {
    farm: Arc<Farm>,
    /// What was delivered or given up, as stored.
    ledger: Mutex<Ledger>,
    /// What was queued and not yet delivered, by key: the newest wins.
    queued: Mutex<HashMap<String, Told>>,
    /// Revisions of changes, by sequence (they never change).
    revisions: Mutex<BTreeMap<u64, String>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    /// Writes the ledger to the store (on a blocking thread; never under the farm's lock).
    async fn save(self: &Arc<Self>) {
        let shared = Arc::clone(self);
        let saved = blocking(move || {
            let ledger = lock(&shared.ledger);
            shared.farm.store().put_notify_ledger(&*ledger)
        })
        .await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::debug!(%error, "recording notifications delivered failed"),
            Err(error) => tracing::debug!(%error, "recording notifications delivered failed"),
        }
    }
}

/// Delivers forge statuses and notifications until `stop`; `page_base` is the page's
/// address for links. Returns at once when nothing is configured.
pub async fn run(farm: Arc<Farm>, page_base: String, mut stop: watch::Receiver<bool>) {
    let targets = targets(farm.config());
    if !targets.any() {
        return;
    }
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .connect_timeout(Duration::from_secs(5))
        .user_agent(concat!("greenlight/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "no HTTP client for notifications: none will be sent");
            return;
        }
    };
    let mut events = farm.subscribe();
    let loading = Arc::clone(&farm);
    let ledger = match blocking(move || loading.store().notify_ledger::<Ledger>()).await {
        Ok(Ok(ledger)) => ledger.unwrap_or_default(),
        Ok(Err(error)) => {
            tracing::warn!(%error, "the record of notifications delivered is unreadable: starting afresh");
            Ledger::default()
        }
        Err(error) => {
            tracing::error!(%error, "reading the record of notifications delivered failed");
            return;
        }
    };
    let shared = Arc::new(Shared {
        farm: Arc::clone(&farm),
        ledger: Mutex::new(ledger),
        queued: Mutex::default(),
        revisions: Mutex::default(),
    });
    let mut queues: BTreeMap<Target, mpsc::Sender<Delivery>> = BTreeMap::new();
    let forge_kind = targets.forge.as_ref().map(|forge| forge.kind);
    let lanes = [
        (Target::Forge, targets.forge.is_some(), &farm.config().forge.attempts, farm.config().forge.backoff_s),
        (Target::Slack, targets.slack.is_some(), &farm.config().notify.attempts, farm.config().notify.backoff_s),
        (Target::Json, targets.json.is_some(), &farm.config().notify.attempts, farm.config().notify.backoff_s),
    ];
    for (target, configured, &attempts, backoff_s) in lanes {
        if !configured {
            continue;
        }
        let (sender, receiver) = mpsc::channel(QUEUE);
        queues.insert(target, sender);
        let lane = Lane {
            shared: Arc::clone(&shared),
            client: client.clone(),
            target,
            forge_kind,
            attempts,
            backoff: Duration::from_secs_f64(backoff_s),
        };
        tokio::spawn(lane.run(receiver, stop.clone()));
    }
    let mut seen = Seen::default();
    loop {
        look(&shared, &targets, &queues, &page_base).await;
        // The next look: after an event that changes what is owed, or the tick.
        let tick = tokio::time::sleep(TICK);
        tokio::pin!(tick);
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Ok(event) if seen.changes(&event) => break,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                () = &mut tick => break,
                // The delivery tasks see `stop` too.
                () = crate::stopped(&mut stop) => return,
            }
        }
        tokio::select! {
            () = tokio::time::sleep(MIN_GAP) => {}
            () = crate::stopped(&mut stop) => return,
        }
        // What came meanwhile is covered by the look that follows.
        while let Ok(event) = events.try_recv() {
            seen.changes(&event);
        }
    }
}

/// What the events said last of each build and of the gate, as far as deliveries go: a
/// build's state and culprits, the gate's state, build and culprits. The page hears of
/// every result; the notifier looks again only when one of these changed.
#[derive(Default)]
struct Seen {
    builds: HashMap<u64, (BuildState, usize)>,
    gate: Option<(GateState, Option<u64>, usize)>,
}

impl Seen {
    /// Notes `event`; whether it changed anything a delivery depends on.
    fn changes(&mut self, event: &FarmEvent) -> bool {
        match event {
            FarmEvent::Build(build) => {
                if self.builds.len() > 4 * WINDOW {
                    self.builds.clear();
                }
                let now = (build.state, build.culprits.len());
                self.builds.insert(build.build_id, now) != Some(now)
            }
            FarmEvent::Gate(gate) => {
                let now = Some((gate.state, gate.build_id, gate.culprits.len()));
                std::mem::replace(&mut self.gate, now) != now
            }
            FarmEvent::Shard(_) | FarmEvent::Change(_) => false,
        }
    }
}

/// One look: reads the farm, reconciles, queues what is owed.
async fn look(
    shared: &Arc<Shared>,
    targets: &Targets,
    queues: &BTreeMap<Target, mpsc::Sender<Delivery>>,
    page_base: &str,
) {
    let reading = Arc::clone(shared);
    let read = blocking(move || -> Result<_, FarmError> {
        let builds = reading.farm.builds(WINDOW)?;
        let known: Vec<u64> = lock(&reading.revisions).keys().copied().collect();
        let mut found = BTreeMap::new();
        for &sequence in builds.iter().flat_map(|build| &build.changes) {
            if known.binary_search(&sequence).is_err()
                && let Some(change) = reading.farm.store().change(sequence)?
            {
                found.insert(sequence, change.revision);
            }
        }
        let mut revisions = lock(&reading.revisions);
        revisions.extend(found);
        let oldest = builds.iter().flat_map(|build| build.changes.iter().copied()).min().unwrap_or(0);
        revisions.retain(|&sequence, _| sequence >= oldest);
        Ok((builds, revisions.clone()))
    })
    .await;
    let (builds, revisions) = match read {
        Ok(Ok(read)) => read,
        Ok(Err(error)) => return tracing::debug!(%error, "notifications: reading the builds failed"),
        Err(error) => return tracing::debug!(%error, "notifications: reading the builds failed"),
    };
    let branch = shared.farm.config().repository.branch.clone();
    let Some(gate) = shared.farm.gate(&branch) else { return };
    let farm = FarmState { branch: &branch, builds: &builds, revisions: &revisions, gate: &gate, page_base };
    let mut changed = false;
    let first_look;
    let mut to_send = Vec::new();
    {
        let mut ledger = lock(&shared.ledger);
        let queued = lock(&shared.queued);
        let plan = plan::reconcile(&farm, targets, |key| queued.get(key).or(ledger.told.get(key)).cloned());
        drop(queued);
        for (key, told) in plan.marks {
            ledger.told.insert(key, told);
            changed = true;
        }
        first_look = !ledger.started;
        for delivery in plan.deliveries {
            if first_look && delivery.past_at_first_look {
                ledger.told.insert(delivery.key, delivery.told);
            } else {
                to_send.push(delivery);
            }
        }
        if first_look {
            ledger.started = true;
            changed = true;
        }
        // Keys of builds no look sees any more go; the gate's build is always looked at.
        if let Some(oldest) = builds.iter().map(|build| build.build_id).min()
            && builds.len() >= WINDOW
        {
            ledger.prune_below(gate.build_id.map_or(oldest, |gate_build| gate_build.min(oldest)));
        }
    }
    if changed {
        shared.save().await;
    }
    if first_look {
        // Made durable at once: a master that crashes before its next flush must not take
        // what happens meanwhile for the past at its next first look.
        if let Err(error) = shared.farm.flush().await {
            tracing::debug!(%error, "flushing the record of notifications failed");
        }
    }
    for delivery in to_send {
        let Some(queue) = queues.get(&delivery.target) else { continue };
        let (key, told) = (delivery.key.clone(), delivery.told.clone());
        // Marked queued first: the delivery task may finish with it at once.
        let previous = lock(&shared.queued).insert(key.clone(), told);
        if let Err(error) = queue.try_send(delivery) {
            // Full (the target is slow or down): the next look queues it again.
            tracing::debug!(key, %error, "notification queue full");
            let mut queued = lock(&shared.queued);
            match previous {
                Some(previous) => queued.insert(key, previous),
                None => queued.remove(&key),
            };
        }
    }
}

/// Delivery to one target, one request at a time, in order.
struct Lane {
    shared: Arc<Shared>,
    client: reqwest::Client,
    target: Target,
    forge_kind: Option<ForgeKind>,
    attempts: u32,
    backoff: Duration,
}

/// How a delivery ended, as `greenlight_notifications_total{outcome}` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The target took it.
    Delivered,
    /// It failed `attempts` times, or was refused.
    GaveUp,
    /// A newer state of the same key was queued behind it.
    Superseded,
}

impl Outcome {
    /// Its label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::GaveUp => "gave_up",
            Outcome::Superseded => "superseded",
        }
    }
}

/// Why one attempt failed; `retry`: whether another may succeed.
struct Failure {
    reason: String,
    retry: bool,
}

impl Lane {
    async fn run(self, mut receiver: mpsc::Receiver<Delivery>, mut stop: watch::Receiver<bool>) {
        loop {
            let delivery = tokio::select! {
                delivery = receiver.recv() => match delivery {
                    Some(delivery) => delivery,
                    None => return,
                },
                () = crate::stopped(&mut stop) => return,
            };
            let Some(outcome) = self.deliver(&delivery, &mut stop).await else { return };
            self.done(delivery, outcome).await;
        }
    }

    /// Whether a newer delivery of the same key waits behind this one.
    fn superseded(&self, delivery: &Delivery) -> bool {
        lock(&self.shared.queued).get(&delivery.key).is_some_and(|newest| *newest != delivery.told)
    }

    /// Sends `delivery` until it is taken, given up or superseded; `None` if the master stops.
    async fn deliver(&self, delivery: &Delivery, stop: &mut watch::Receiver<bool>) -> Option<Outcome> {
        let mut delay = self.backoff;
        for attempt in 1..=self.attempts {
            if self.superseded(delivery) {
                return Some(Outcome::Superseded);
            }
            let failure = match self.send(&delivery.request).await {
                Ok(()) => return Some(Outcome::Delivered),
                Err(failure) => failure,
            };
            let target = self.target.as_str();
            if !failure.retry || attempt == self.attempts {
                tracing::warn!(
                    target,
                    key = delivery.key,
                    attempts = attempt,
                    reason = failure.reason,
                    "gave up a notification"
                );
                return Some(Outcome::GaveUp);
            }
            tracing::info!(
                target,
                key = delivery.key,
                attempt,
                reason = failure.reason,
                retry_in_s = delay.as_secs_f64(),
                "a notification failed; retrying"
            );
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = crate::stopped(stop) => return None,
            }
            delay = (delay * 2).min(MAX_BACKOFF);
        }
        Some(Outcome::GaveUp)
    }

    async fn send(&self, request: &Outgoing) -> Result<(), Failure> {
        let mut builder = self.client.post(&request.url).json(&request.body);
        for (name, value) in &request.headers {
            builder = builder.header(*name, value);
        }
        // Without the URL: a Slack webhook's is a secret.
        let response =
            builder.send().await.map_err(|error| Failure { reason: error.without_url().to_string(), retry: true })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response.text().await.unwrap_or_default();
        if let Some(kind) = self.forge_kind
            && self.target == Target::Forge
            && already_there(kind, status.as_u16(), &body)
        {
            return Ok(());
        }
        let excerpt: String = body.chars().take(300).collect();
        let retry = !status.is_client_error() || status.as_u16() == 408 || status.as_u16() == 429;
        Err(Failure { reason: format!("answered {status}: {excerpt}"), retry })
    }

    /// Records how `delivery` ended.
    async fn done(&self, delivery: Delivery, outcome: Outcome) {
        self.shared.farm.metrics().notification(delivery.kind, outcome.as_str());
        if outcome == Outcome::Superseded {
            return;
        }
        if outcome == Outcome::Delivered {
            tracing::debug!(target = self.target.as_str(), key = delivery.key, "notification delivered");
        }
        {
            // The ledger's lock before the queue's, as in a look.
            let mut ledger = lock(&self.shared.ledger);
            let mut queued = lock(&self.shared.queued);
            if queued.get(&delivery.key) == Some(&delivery.told) {
                queued.remove(&delivery.key);
            }
            ledger.told.insert(delivery.key, delivery.told);
        }
        self.shared.save().await;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use axum::http::StatusCode;

    use super::*;
    use crate::config::SuiteConfig;
    use crate::store::Store;

    type Answers = Arc<Mutex<VecDeque<(u16, &'static str)>>>;
    type Received = Arc<Mutex<Vec<serde_json::Value>>>;

    /// A local server answering each request with the next of `answers` (then 200), and
    /// counting them.
    struct Server {
        url: String,
        answers: Answers,
        received: Received,
    }

    impl Server {
        async fn start(answers: &[(u16, &'static str)]) -> Server {
            let answers = Arc::new(Mutex::new(answers.iter().copied().collect::<VecDeque<_>>()));
            let received = Arc::new(Mutex::new(Vec::new()));
            let state = (Arc::clone(&answers), Arc::clone(&received));
            let app = axum::Router::new().fallback(
                |axum::extract::State((answers, received)): axum::extract::State<(Answers, Received)>,
                 axum::Json(body): axum::Json<serde_json::Value>| async move {
                    lock(&received).push(body);
                    let (status, text) = lock(&answers).pop_front().unwrap_or((200, "ok"));
                    (StatusCode::from_u16(status).unwrap(), text)
                },
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/hook", listener.local_addr().unwrap());
            tokio::spawn(async move { axum::serve(listener, app.with_state(state)).await });
            Server { url, answers, received }
        }

        fn requests(&self) -> usize {
            lock(&self.received).len()
        }
    }

    fn lane(target: Target, forge_kind: Option<ForgeKind>, attempts: u32) -> Lane {
        let dir = tempfile::tempdir().unwrap();
        let config =
            Config::new(dir.path().to_owned(), "/nowhere".into(), SuiteConfig::command("s.json", vec!["r".into()]));
        let farm = Arc::new(Farm::new(config, Store::in_memory()).unwrap());
        Lane {
            shared: Arc::new(Shared {
                farm,
                ledger: Mutex::default(),
                queued: Mutex::default(),
                revisions: Mutex::default(),
            }),
            client: reqwest::Client::new(),
            target,
            forge_kind,
            attempts,
            backoff: Duration::from_millis(5),
        }
    }

    fn delivery(url: &str, fingerprint: &str) -> Delivery {
        Delivery {
            key: "status/1/r1".into(),
            told: Told { build_id: 1, fingerprint: fingerprint.into() },
            target: Target::Forge,
            kind: "status",
            past_at_first_look: false,
            request: Outgoing { url: url.into(), headers: vec![], body: serde_json::json!({"state": fingerprint}) },
        }
    }

    /// Delivers one request through a lane whose target answers `answers`; (outcome,
    /// requests the target received, what the ledger says was told).
    async fn check(
        answers: &[(u16, &'static str)],
        forge_kind: Option<ForgeKind>,
        attempts: u32,
        expected: (Outcome, usize, Option<&str>),
    ) {
        let server = Server::start(answers).await;
        let lane = lane(Target::Forge, forge_kind, attempts);
        let delivery = delivery(&server.url, "success");
        lock(&lane.shared.queued).insert(delivery.key.clone(), delivery.told.clone());
        let (_stop_tx, mut stop) = watch::channel(false);
        let outcome = lane.deliver(&delivery, &mut stop).await.unwrap();
        lane.done(delivery, outcome).await;
        let told = lock(&lane.shared.ledger).told.get("status/1/r1").map(|told| told.fingerprint.clone());
        assert_eq!((outcome, server.requests(), told.as_deref()), expected, "{answers:?}");
        assert!(lock(&lane.shared.queued).is_empty(), "no longer queued");
        let mut metrics = crate::metrics::Exposition::default();
        lane.shared.farm.metrics().write(&mut metrics);
        let line = format!("greenlight_notifications_total{{kind=\"status\",outcome=\"{}\"}} 1", outcome.as_str());
        assert!(metrics.into_text().contains(&line), "{line}");
        assert!(lock(&server.answers).is_empty(), "every scripted answer was used");
    }

    #[tokio::test]
    async fn a_failing_target_is_retried_with_back_off_and_given_up_after_its_attempts() {
        check(&[(503, "down"), (502, "down")], None, 5, (Outcome::Delivered, 3, Some("success"))).await;
        check(&[(429, "slow down"), (408, "timeout")], None, 3, (Outcome::Delivered, 3, Some("success"))).await;
        check(&[(503, ""), (503, ""), (503, "")], None, 3, (Outcome::GaveUp, 3, Some("success"))).await;
        // A refusal is not retried: the configuration is wrong.
        check(&[(401, "bad credentials")], None, 5, (Outcome::GaveUp, 1, Some("success"))).await;
        // GitLab refusing a state the status already has: it is there.
        let transition = "{\"message\":\"Cannot transition status via :run from :running\"}";
        check(&[(400, transition)], Some(ForgeKind::Gitlab), 5, (Outcome::Delivered, 1, Some("success"))).await;
        check(&[(400, transition)], Some(ForgeKind::Github), 5, (Outcome::GaveUp, 1, Some("success"))).await;
    }

    #[tokio::test]
    async fn a_status_superseded_while_it_waits_is_dropped() {
        let server = Server::start(&[(503, "down")]).await;
        let lane = lane(Target::Forge, Some(ForgeKind::Github), 5);
        let pending = delivery(&server.url, "pending");
        lock(&lane.shared.queued).insert(pending.key.clone(), pending.told.clone());
        let (_stop_tx, mut stop) = watch::channel(false);
        // The success is queued behind it: the pending is not sent (again).
        lock(&lane.shared.queued).insert(pending.key.clone(), Told { build_id: 1, fingerprint: "success".into() });
        assert_eq!(lane.deliver(&pending, &mut stop).await, Some(Outcome::Superseded));
        lane.done(pending, Outcome::Superseded).await;
        assert_eq!(server.requests(), 0);
        assert_eq!(lock(&lane.shared.ledger).told.get("status/1/r1"), None, "a superseded status is not told");
        assert_eq!(lock(&lane.shared.queued)["status/1/r1"].fingerprint, "success", "the newer one stays queued");
    }

    #[test]
    fn only_events_that_change_a_verdict_wake_the_notifier() {
        let mut seen = Seen::default();
        let build = |state, culprits: usize| {
            let mut summary: greenlight_shared::api::BuildSummary = serde_json::from_value(serde_json::json!({
                "build_id": 1, "branch": "main", "revision": "r", "state": "running", "changes": [1], "tags": [],
                "full_run": true, "counts": {"total": 1, "passed": 0, "failed": 0, "skipped": 0, "error": 0},
                "failed_tests": [], "created_at": 0.0, "started_at": null, "finished_at": null,
                "lower_bound_s": null, "makespan_s": null, "shards": 0
            }))
            .unwrap();
            summary.state = state;
            summary.culprits = (0..culprits)
                .map(|change| greenlight_shared::api::CulpritView {
                    change: change as u64,
                    revision: "r".into(),
                    author: "a".into(),
                    subject: "s".into(),
                    tests: vec![],
                })
                .collect();
            FarmEvent::Build(summary)
        };
        let wakes: Vec<bool> = [
            build(BuildState::Running, 0),
            build(BuildState::Running, 0),
            build(BuildState::Red, 0),
            build(BuildState::Red, 0),
            build(BuildState::Red, 1),
        ]
        .iter()
        .map(|event| seen.changes(event))
        .collect();
        assert_eq!(wakes, [true, false, true, false, true]);
    }
}
