//! The push stage hand-off. Each green revision of the branch is queued; one push runs at
//! a time, in its own task, so testing of the next build goes on meanwhile (pipelined).
//! The newest queued revision is pushed and older queued ones are marked superseded: a
//! revision older than one already pushed is never pushed. An attempt is a configured
//! command (revision, build and branch in its environment) or a JSON POST to a webhook;
//! failures are retried with exponential back-off and the outcome recorded per revision.

use std::sync::Arc;
use std::time::Duration;

use greenlight_shared::api::PushView;
use greenlight_shared::unix_now_s;
use tokio::sync::watch;

use crate::config::PushConfig;
use crate::farm::Farm;

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

/// Pushes queued revisions until `stop`, one at a time, newest first.
pub async fn push_loop(farm: Arc<Farm>, mut stop: watch::Receiver<bool>) {
    let config = farm.config().push.clone();
    let branch = farm.config().repository.branch.clone();
    loop {
        match farm.next_push() {
            Ok(Some(mut push)) => {
                let mut delay = Duration::from_secs_f64(config.backoff_s);
                loop {
                    push.attempts += 1;
                    let outcome = attempt(&config, &branch, &push.revision, push.build_id).await;
                    match outcome {
                        Ok(()) => {
                            push.state = "pushed".to_owned();
                            push.last_error = None;
                        }
                        Err(error) => {
                            tracing::warn!(build_id = push.build_id, attempt = push.attempts, %error, "push failed");
                            push.last_error = Some(error);
                            push.state = if push.attempts >= config.attempts { "failed" } else { "pushing" }.to_owned();
                        }
                    }
                    if push.state != "pushing" {
                        push.finished_at = Some(unix_now_s());
                        break;
                    }
                    if let Err(error) = farm.record_push(&push) {
                        tracing::error!(%error, "recording a push failed");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = crate::stopped(&mut stop) => return,
                    }
                    delay *= 2;
                }
                tracing::info!(build_id = push.build_id, revision = %push.revision, state = %push.state, "push handed off");
                if let Err(error) = farm.record_push(&push) {
                    tracing::error!(%error, "recording a push failed");
                }
                continue;
            }
            Ok(None) => {}
            Err(error) => tracing::error!(%error, "reading the push queue failed"),
        }
        tokio::select! {
            () = farm.push_wanted.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
            () = crate::stopped(&mut stop) => return,
        }
    }
}

/// A freshly queued push.
pub fn queued(build_id: u64, revision: &str) -> PushView {
    PushView {
        build_id,
        revision: revision.to_owned(),
        state: "pending".to_owned(),
        attempts: 0,
        last_error: None,
        queued_at: unix_now_s(),
        finished_at: None,
    }
}
