//! Notification bodies: plain JSON (the [`Notification`] wire type, as it is) and
//! Slack-compatible JSON (`text`, and the same text as one `mrkdwn` section block). Pure.

use greenlight_shared::api::{Notification, NotificationKind};
use serde_json::json;

/// How many failing tests a chat message names before it says how many more.
const NAMED_TESTS: usize = 5;

/// The first 12 characters of a revision.
fn short(revision: &str) -> &str {
    &revision[..revision.len().min(12)]
}

/// The message a chat shows for `notification` (Slack's `mrkdwn`).
pub fn chat_text(notification: &Notification) -> String {
    let Notification { branch, build_id, revision, url, .. } = notification;
    let build = format!("<{url}|build {build_id}> ({})", short(revision));
    let tests = || {
        let mut named: Vec<String> =
            notification.failing_tests.iter().take(NAMED_TESTS).map(|test| format!("`{test}`")).collect();
        if notification.failing_tests.len() > NAMED_TESTS {
            named.push(format!("and {} more", notification.failing_tests.len() - NAMED_TESTS));
        }
        named.join(", ")
    };
    let culprits = || {
        notification
            .culprits
            .iter()
            .map(|culprit| {
                format!(
                    "{} \"{}\" by {} (broke {})",
                    short(&culprit.revision),
                    culprit.subject,
                    culprit.author,
                    culprit.tests.join(", ")
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    match notification.event {
        NotificationKind::GateClosed => {
            let culprit = if notification.culprits.is_empty() {
                "culprit: not known yet (culprit finding runs)".to_owned()
            } else {
                format!("culprit: {}", culprits())
            };
            format!(
                ":red_circle: Gate closed on *{branch}*: {build} failed {}. {culprit}. Only fixes and reverts may land.",
                tests()
            )
        }
        NotificationKind::CulpritFound => {
            format!(":mag: Culprit of {build} on *{branch}*: {}", culprits())
        }
        NotificationKind::GateReopened => {
            format!(":large_green_circle: Gate open again on *{branch}*: {build} is green.")
        }
        NotificationKind::BuildError => format!(
            ":warning: {build} on *{branch}* ended in error, no verdict: {}. The gate stays as it was.",
            notification.error.as_deref().unwrap_or("unknown error")
        ),
    }
}

/// The Slack-compatible body.
pub fn slack_body(notification: &Notification) -> serde_json::Value {
    let text = chat_text(notification);
    json!({"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]})
}

/// The plain JSON body.
pub fn json_body(notification: &Notification) -> serde_json::Value {
    serde_json::to_value(notification).expect("a notification serialises")
}

#[cfg(test)]
mod tests {
    use greenlight_shared::api::CulpritView;

    use super::*;

    fn notification(event: NotificationKind) -> Notification {
        Notification {
            version: 1,
            event,
            branch: "main".into(),
            build_id: 7,
            revision: "0123456789abcdef".into(),
            failing_tests: Vec::new(),
            culprits: Vec::new(),
            error: None,
            url: "http://m/#/build/7".into(),
        }
    }

    fn check(notification: Notification, expected: &str) {
        assert_eq!(chat_text(&notification), expected);
        let slack = slack_body(&notification);
        assert_eq!(slack["text"], expected);
        assert_eq!(slack["blocks"][0]["text"]["text"], expected);
        let plain = json_body(&notification);
        assert_eq!(serde_json::from_value::<Notification>(plain).unwrap(), notification);
    }

    #[test]
    fn each_event_reads_as_a_chat_message() {
        let culprit = CulpritView {
            change: 3,
            revision: "fedcba9876543210".into(),
            author: "Ann <ann@example.com>".into(),
            subject: "Core: faster".into(),
            tests: vec!["t1".into()],
        };
        let mut closed = notification(NotificationKind::GateClosed);
        closed.failing_tests = (1..=7).map(|index| format!("t{index}")).collect();
        check(
            closed.clone(),
            ":red_circle: Gate closed on *main*: <http://m/#/build/7|build 7> (0123456789ab) failed `t1`, `t2`, `t3`, `t4`, `t5`, and 2 more. \
             culprit: not known yet (culprit finding runs). Only fixes and reverts may land.",
        );
        closed.culprits = vec![culprit.clone()];
        closed.failing_tests.truncate(1);
        check(
            closed,
            ":red_circle: Gate closed on *main*: <http://m/#/build/7|build 7> (0123456789ab) failed `t1`. \
             culprit: fedcba987654 \"Core: faster\" by Ann <ann@example.com> (broke t1). Only fixes and reverts may land.",
        );
        let mut found = notification(NotificationKind::CulpritFound);
        found.culprits = vec![culprit];
        check(
            found,
            ":mag: Culprit of <http://m/#/build/7|build 7> (0123456789ab) on *main*: fedcba987654 \"Core: faster\" by Ann <ann@example.com> (broke t1)",
        );
        check(
            notification(NotificationKind::GateReopened),
            ":large_green_circle: Gate open again on *main*: <http://m/#/build/7|build 7> (0123456789ab) is green.",
        );
        let mut error = notification(NotificationKind::BuildError);
        error.error = Some("cancelled by an admin".into());
        check(
            error,
            ":warning: <http://m/#/build/7|build 7> (0123456789ab) on *main* ended in error, no verdict: cancelled by an admin. The gate stays as it was.",
        );
    }

    #[test]
    fn the_plain_body_has_a_stable_shape() {
        let mut error = notification(NotificationKind::BuildError);
        error.error = Some("boom".into());
        assert_eq!(
            json_body(&error),
            json!({"version": 1, "event": "build_error", "branch": "main", "build_id": 7, "revision": "0123456789abcdef",
                   "failing_tests": [], "culprits": [], "error": "boom", "url": "http://m/#/build/7"})
        );
    }
}
