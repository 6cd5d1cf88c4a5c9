//! The push stage hand-off. Each green revision of the branch is queued; one push runs at
//! a time, in its own task, so testing of the next build goes on meanwhile (pipelined).
//! The newest queued revision is pushed and older queued ones are marked superseded: a
//! revision older than one already pushed is never pushed. An attempt is a configured
//! command (revision, build and branch in its environment) or a JSON POST to a webhook;
//! failures are retried with exponential back-off and the outcome recorded per revision.
//! The queue lives in the store; its loop is `push_loop` in `lib.rs`, beside the others.

use std::time::Duration;

use greenlight_shared::api::{PushState, PushView};

use crate::config::PushConfig;
use crate::store::{Store, StoreError};

/// Whether a push stage is configured at all.
pub fn configured(config: &PushConfig) -> bool {
    !config.command.is_empty() || config.webhook.is_some()
}

/// One attempt to hand `revision` to the push stage.
pub async fn attempt(config: &PushConfig, branch: &str, revision: &str, build_id: u64) -> Result<(), String> {
    if let Some((program, arguments)) = config.command.split_first() {
        let output = tokio::process::Command::new(program)
            .args(arguments)
            .env("GREENLIGHT_REVISION", revision)
            .env("GREENLIGHT_BUILD_ID", build_id.to_string())
            .env("GREENLIGHT_BRANCH", branch)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|error| format!("cannot run {program:?}: {error}"))?;
        if output.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: String = stderr.trim().chars().rev().take(500).collect::<Vec<_>>().into_iter().rev().collect();
        return Err(format!("{program:?} exited with {}: {tail}", output.status));
    }
    if let Some(url) = &config.webhook {
        let body = serde_json::json!({"version": greenlight_shared::API_VERSION, "revision": revision, "build_id": build_id, "branch": branch});
        let response = reqwest::Client::new()
            .post(url)
            .json(&body)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|error| format!("webhook {url}: {error}"))?;
        if response.status().is_success() {
            return Ok(());
        }
        return Err(format!("webhook {url} answered {}", response.status()));
    }
    Err("no push stage is configured".to_owned())
}

/// Queues the revision of green build `build_id` for the push stage.
pub fn enqueue(store: &Store, build_id: u64, revision: &str, now: f64) -> Result<(), StoreError> {
    store.put_push(&PushView {
        build_id,
        revision: revision.to_owned(),
        state: PushState::Pending,
        attempts: 0,
        last_error: None,
        queued_at: now,
        finished_at: None,
    })
}

/// The next revision to hand to the push stage: the newest open one newer than the last
/// pushed; older open ones are marked superseded.
pub fn next(store: &Store, now: f64) -> Result<Option<PushView>, StoreError> {
    let last_pushed = store.last_pushed()?;
    let mut open: Vec<PushView> = store.pushes()?.into_iter().filter(|push| push.state.is_open()).collect();
    let Some(newest) = open.pop() else { return Ok(None) };
    for older in open {
        supersede(store, older, now)?;
    }
    if newest.build_id <= last_pushed {
        supersede(store, newest, now)?;
        return Ok(None);
    }
    Ok(Some(newest))
}

fn supersede(store: &Store, mut push: PushView, now: f64) -> Result<(), StoreError> {
    push.state = PushState::Superseded;
    push.finished_at = Some(now);
    store.put_push(&push)
}

/// Records how a hand-off went.
pub fn record(store: &Store, push: &PushView) -> Result<(), StoreError> {
    store.put_push(push)?;
    if push.state == PushState::Pushed {
        store.set_last_pushed(push.build_id)?;
    }
    Ok(())
}

/// Every push hand-off, newest first.
pub fn list(store: &Store) -> Result<Vec<PushView>, StoreError> {
    let mut pushes = store.pushes()?;
    pushes.reverse();
    Ok(pushes)
}

/// Records the outcome of one attempt on `push`: pushed, failed for good after
/// `attempts`, or still pushing (to be tried again).
pub fn attempted(push: &mut PushView, outcome: Result<(), String>, attempts: u32, now: f64) {
    push.attempts += 1;
    match outcome {
        Ok(()) => {
            push.state = PushState::Pushed;
            push.last_error = None;
        }
        Err(error) => {
            tracing::warn!(build_id = push.build_id, attempt = push.attempts, %error, "push failed");
            push.last_error = Some(error);
            push.state = if push.attempts >= attempts { PushState::Failed } else { PushState::Pushing };
        }
    }
    if !push.state.is_open() {
        push.finished_at = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_green_revision_is_pushed_and_older_ones_are_superseded() {
        let store = Store::in_memory();
        enqueue(&store, 3, "r3", 10.0).unwrap();
        enqueue(&store, 5, "r5", 11.0).unwrap();
        let mut push = next(&store, 12.0).unwrap().expect("a revision to push");
        assert_eq!(push.build_id, 5, "the newest first");
        attempted(&mut push, Ok(()), 3, 13.0);
        record(&store, &push).unwrap();
        // A green build older than the pushed one, queued late, is never pushed.
        enqueue(&store, 4, "r4", 14.0).unwrap();
        assert_eq!(next(&store, 15.0).unwrap(), None);
        let states: Vec<(u64, PushState)> = list(&store).unwrap().iter().map(|p| (p.build_id, p.state)).collect();
        assert_eq!(
            states,
            vec![(5, PushState::Pushed), (4, PushState::Superseded), (3, PushState::Superseded)],
            "newest first"
        );
    }

    #[test]
    fn a_failing_hand_off_keeps_pushing_until_its_last_attempt() {
        let mut push = PushView {
            build_id: 1,
            revision: "r1".to_owned(),
            state: PushState::Pending,
            attempts: 0,
            last_error: None,
            queued_at: 0.0,
            finished_at: None,
        };
        attempted(&mut push, Err("down".to_owned()), 2, 1.0);
        assert_eq!((push.state, push.finished_at), (PushState::Pushing, None));
        attempted(&mut push, Err("still down".to_owned()), 2, 2.0);
        assert_eq!(
            (push.state, push.finished_at, push.last_error.as_deref()),
            (PushState::Failed, Some(2.0), Some("still down"))
        );
    }
}
