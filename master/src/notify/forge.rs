//! Commit statuses as each forge takes them: the URL, the headers and the JSON body of one
//! status, for GitHub, GitLab and Gitea/Forgejo. Pure: the shell ([`super`]) sends them.

use serde_json::json;

use super::Outgoing;
use crate::config::ForgeKind;

/// The most characters of a status's description (GitHub refuses longer ones).
pub const DESCRIPTION_CHARS: usize = 140;

/// A status's state, in Greenlight's words; each forge has its own for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusState {
    /// A build covering the revision is queued or running.
    Pending,
    /// That build is green.
    Success,
    /// That build is red.
    Failure,
    /// That build ended in error: no verdict on the code.
    Error,
}

impl StatusState {
    /// The word GitHub and Gitea use (GitLab's differ: [`StatusState::on`]).
    pub fn as_str(self) -> &'static str {
        match self {
            StatusState::Pending => "pending",
            StatusState::Success => "success",
            StatusState::Failure => "failure",
            StatusState::Error => "error",
        }
    }

    /// The word `kind` takes. GitLab has no `error`: a build in error is `failed` there,
    /// its description says why.
    pub fn on(self, kind: ForgeKind) -> &'static str {
        match (kind, self) {
            (ForgeKind::Gitlab, StatusState::Failure | StatusState::Error) => "failed",
            _ => self.as_str(),
        }
    }
}

/// Where statuses go: one repository on one forge.
#[derive(Clone)]
pub struct ForgeTarget {
    /// The forge.
    pub kind: ForgeKind,
    /// Its API root, version included, without a trailing slash.
    pub api_root: String,
    /// `owner/name`, or GitLab's project path or id.
    pub repository: String,
    /// The token; never logged.
    pub token: String,
    /// The statuses' name.
    pub context: String,
}

/// One status of `revision` on `target`.
pub fn status_request(
    target: &ForgeTarget,
    revision: &str,
    state: StatusState,
    description: &str,
    target_url: &str,
) -> Outgoing {
    let description: String = description.chars().take(DESCRIPTION_CHARS).collect();
    let state_word = state.on(target.kind);
    match target.kind {
        ForgeKind::Github => Outgoing {
            url: format!("{}/repos/{}/statuses/{revision}", target.api_root, target.repository),
            headers: vec![
                ("authorization", format!("Bearer {}", target.token)),
                ("accept", "application/vnd.github+json".to_owned()),
                ("x-github-api-version", "2022-11-28".to_owned()),
            ],
            body: json!({"state": state_word, "target_url": target_url, "description": description, "context": target.context}),
        },
        ForgeKind::Gitlab => Outgoing {
            url: format!("{}/projects/{}/statuses/{revision}", target.api_root, encode_project(&target.repository)),
            headers: vec![("private-token", target.token.clone())],
            body: json!({"state": state_word, "target_url": target_url, "description": description, "name": target.context}),
        },
        ForgeKind::Gitea => Outgoing {
            url: format!("{}/repos/{}/statuses/{revision}", target.api_root, target.repository),
            headers: vec![("authorization", format!("token {}", target.token))],
            body: json!({"state": state_word, "target_url": target_url, "description": description, "context": target.context}),
        },
    }
}

/// GitLab's `:id`: a numeric id as it is, a path percent-encoded (`group/sub/project` is
/// `group%2Fsub%2Fproject`).
fn encode_project(project: &str) -> String {
    let mut encoded = String::new();
    for byte in project.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => encoded.push(byte as char),
            _ => encoded.push_str(&format!("%{byte:02X}")),
        }
    }
    encoded
}

/// Whether an answer other than 2xx means the status is there anyway: GitLab refuses to
/// post a state a status already has ("Cannot transition status via :run from :running"),
/// which a resent status after a restart meets.
pub fn already_there(kind: ForgeKind, status: u16, body: &str) -> bool {
    kind == ForgeKind::Gitlab && status == 400 && body.contains("Cannot transition status")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(kind: ForgeKind, api_root: &str, repository: &str) -> ForgeTarget {
        ForgeTarget {
            kind,
            api_root: api_root.to_owned(),
            repository: repository.to_owned(),
            token: "t0k".to_owned(),
            context: "greenlight".to_owned(),
        }
    }

    fn check(target: ForgeTarget, state: StatusState, expected: (&str, &[(&str, &str)], serde_json::Value)) {
        let request = status_request(&target, "abc123", state, "build 7 green", "http://m/#/build/7");
        let headers: Vec<(&str, &str)> = request.headers.iter().map(|(name, value)| (*name, value.as_str())).collect();
        assert_eq!((request.url.as_str(), headers.as_slice(), request.body), expected);
    }

    #[test]
    fn each_forge_gets_its_own_url_headers_and_words() {
        check(
            target(ForgeKind::Github, "https://api.github.com", "acme/product"),
            StatusState::Success,
            (
                "https://api.github.com/repos/acme/product/statuses/abc123",
                &[
                    ("authorization", "Bearer t0k"),
                    ("accept", "application/vnd.github+json"),
                    ("x-github-api-version", "2022-11-28"),
                ],
                json!({"state": "success", "target_url": "http://m/#/build/7", "description": "build 7 green", "context": "greenlight"}),
            ),
        );
        check(
            target(ForgeKind::Gitlab, "https://gitlab.example/api/v4", "group/sub/product"),
            StatusState::Error,
            (
                "https://gitlab.example/api/v4/projects/group%2Fsub%2Fproduct/statuses/abc123",
                &[("private-token", "t0k")],
                json!({"state": "failed", "target_url": "http://m/#/build/7", "description": "build 7 green", "name": "greenlight"}),
            ),
        );
        check(
            target(ForgeKind::Gitlab, "https://gitlab.com/api/v4", "4242"),
            StatusState::Failure,
            (
                "https://gitlab.com/api/v4/projects/4242/statuses/abc123",
                &[("private-token", "t0k")],
                json!({"state": "failed", "target_url": "http://m/#/build/7", "description": "build 7 green", "name": "greenlight"}),
            ),
        );
        check(
            target(ForgeKind::Gitea, "https://codeberg.org/api/v1", "acme/product"),
            StatusState::Pending,
            (
                "https://codeberg.org/api/v1/repos/acme/product/statuses/abc123",
                &[("authorization", "token t0k")],
                json!({"state": "pending", "target_url": "http://m/#/build/7", "description": "build 7 green", "context": "greenlight"}),
            ),
        );
    }

    #[test]
    fn a_long_description_is_cut_to_what_github_takes() {
        let long = "é".repeat(500);
        let request = status_request(
            &target(ForgeKind::Github, "http://f", "a/b"),
            "r",
            StatusState::Error,
            &long,
            "http://m/#/build/1",
        );
        assert_eq!(request.body["description"].as_str().unwrap().chars().count(), DESCRIPTION_CHARS);
    }
}
