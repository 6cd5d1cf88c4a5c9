//! Reads of the master's API for the client commands (`gate`, `watch`): one GET of a JSON
//! answer, with the worker client's errors ([`ClientError`]: a master that cannot be
//! reached, a URL that is no master's root, a refusal with the master's JSON body), which
//! say what to do and which of them are worth retrying.

use std::time::Duration;

use greenlight_shared::api::ErrorBody;
use greenlight_worker::client::ClientError;
use serde::de::DeserializeOwned;

/// How long one read may take before it counts as the master not answering.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// GETs `url` (under the master's root URL `master`) as JSON, presenting the read token
/// when there is one.
pub async fn get_json<T: DeserializeOwned>(
    http: &reqwest::Client,
    master: &str,
    url: &str,
    token: Option<&str>,
) -> Result<T, ClientError> {
    let mut request = http.get(url).timeout(READ_TIMEOUT);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(ClientError::Unreachable)?;
    let status = response.status();
    let body = response.text().await.map_err(ClientError::Unreachable)?;
    if status == reqwest::StatusCode::NOT_FOUND && crate::is_no_such_endpoint(&body) {
        return Err(ClientError::WrongUrl { base: master.to_owned(), url: url.to_owned() });
    }
    let unexpected = |error: String| ClientError::Refused {
        status: status.as_u16(),
        body: ErrorBody { error: "unexpected_answer".into(), message: error },
    };
    if !status.is_success() {
        return Err(serde_json::from_str(&body).map_or_else(
            |_| unexpected(body.chars().take(500).collect()),
            |body| ClientError::Refused { status: status.as_u16(), body },
        ));
    }
    serde_json::from_str(&body).map_err(|error| {
        unexpected(format!("unexpected answer ({error}): {}", body.chars().take(500).collect::<String>()))
    })
}

/// `path` under the master's root, with `query` percent-encoded.
pub fn url(master: &str, path: &str, query: &[(&str, &str)]) -> String {
    let base = format!("{master}{path}");
    if query.is_empty() {
        return base;
    }
    match reqwest::Url::parse_with_params(&base, query) {
        Ok(url) => url.into(),
        // An unparsable master URL is told by the request that uses it.
        Err(_) => base,
    }
}
