//! The worker's HTTP client for the master's API: one method per call, the bearer token
//! and the process's session on every request, and errors split into "could not reach
//! the master" (retry later) and "the master refused" (with its JSON error body). A
//! refusal with a 5xx status (a master whose disk is full answers 503, having recorded
//! nothing) is retried like an unreachable master: [`ClientError::is_retryable`], [`Retry`].

use std::path::Path;
use std::time::Duration;

use greenlight_shared::API_VERSION;
use greenlight_shared::api::{
    ErrorBody, FinishRequest, HeartbeatRequest, HeartbeatResponse, Lease, LeaseRequest, LeaseResponse, Prepare,
    PrepareOutcome, PrepareReport, RegisterRequest, RegisterResponse, ResultsRequest, ResultsResponse, SESSION_HEADER,
    ShardOutcome, TestReport, WarmUp,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Checks a master URL a user gave: `http://` or `https://` and a host. The error says
/// how to write it (reqwest alone says `builder error`).
pub fn check_master_url(url: &str) -> Result<(), String> {
    match reqwest::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.has_host() => Ok(()),
        Ok(parsed) if url.contains("://") => {
            Err(format!("the master URL {url} must start with http:// or https://, not {}://", parsed.scheme()))
        }
        _ => Err(format!("the master URL {url} has no scheme: write it http://{url}")),
    }
}

/// The innermost cause of `error`: what the operating system or the protocol said.
fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// What went wrong with a request, naming its URL, and what to do about it.
pub fn describe_request_error(error: &reqwest::Error) -> String {
    let url = error.url().map(|url| url.as_str().to_owned()).unwrap_or_else(|| "the master".to_owned());
    let refused = {
        let mut source = std::error::Error::source(error);
        let mut refused = false;
        while let Some(cause) = source {
            if let Some(io) = cause.downcast_ref::<std::io::Error>() {
                refused |= io.kind() == std::io::ErrorKind::ConnectionRefused;
            }
            source = cause.source();
        }
        refused
    };
    if refused {
        format!("cannot connect to {url}: connection refused (is the master running, and listening at that address?)")
    } else if error.is_timeout() {
        format!("no answer from {url} in time ({})", innermost(error))
    } else if error.is_connect() {
        format!("cannot connect to {url}: {}", innermost(error))
    } else if error.is_builder() {
        format!("cannot send a request to {url}: {} (the master's URL looks like http://HOST:PORT)", innermost(error))
    } else {
        format!("request to {url} failed: {}", innermost(error))
    }
}

/// What to say of a 404 answer to `url` when `base` was given as the master's URL.
pub fn not_found_hint(base: &str, url: &str) -> String {
    let root = reqwest::Url::parse(base)
        .ok()
        .filter(|parsed| parsed.path() != "/")
        .map(|parsed| format!("{}://{}", parsed.scheme(), parsed.host_str().unwrap_or("")))
        .map(|origin| match reqwest::Url::parse(base).ok().and_then(|parsed| parsed.port()) {
            Some(port) => format!(" (perhaps {origin}:{port})"),
            None => format!(" (perhaps {origin})"),
        })
        .unwrap_or_default();
    format!(
        "{url} answered 404 Not Found: is {base} the master's root URL? Give the address `greenlight master` \
         prints, http://HOST:PORT without a path{root}"
    )
}

/// A failed call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The master could not be reached or did not answer in time.
    #[error("{}", describe_request_error(.0))]
    Unreachable(#[source] reqwest::Error),
    /// Nothing at that URL knows the call: the base URL is not a master's root.
    #[error("{}", not_found_hint(.base, .url))]
    WrongUrl {
        /// The base URL the client was given.
        base: String,
        /// The URL that answered 404.
        url: String,
    },
    /// The master answered with an error.
    #[error("master refused ({status}): {}: {}", .body.error, .body.message)]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The error body.
        body: ErrorBody,
    },
}

impl ClientError {
    /// Whether the same call may succeed later: the master was unreachable, or it answered
    /// 5xx (it could not do it now, and recorded nothing). A 4xx will not change.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Unreachable(_) => true,
            ClientError::Refused { status, .. } => (500..600).contains(status),
            ClientError::WrongUrl { .. } => false,
        }
    }

    /// The master's error code, when it refused.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Refused { body, .. } => Some(&body.error),
            ClientError::Unreachable(_) | ClientError::WrongUrl { .. } => None,
        }
    }
}

/// Back-off for a call retried while [`ClientError::is_retryable`]: 200 ms doubling to 5 s,
/// until `patience` has passed since the first failure.
#[derive(Debug)]
pub struct Retry {
    delay: Duration,
    deadline: std::time::Instant,
}

impl Retry {
    /// Retries for up to `patience`.
    pub fn new(patience: Duration) -> Retry {
        Retry { delay: Duration::from_millis(200), deadline: std::time::Instant::now() + patience }
    }

    /// After `error`: waits and returns true if the call should be made again, false when
    /// the error will not change or patience ran out.
    pub async fn again(&mut self, error: &ClientError) -> bool {
        if !error.is_retryable() || std::time::Instant::now() >= self.deadline {
            return false;
        }
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(Duration::from_secs(5));
        true
    }
}

/// What a worker is given to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    /// A shard to run.
    Lease(Lease),
    /// A revision to prepare.
    Prepare(Prepare),
    /// A revision whose warm runner to start while another worker prepares it.
    WarmUp(WarmUp),
}

/// A local file error while moving an archive, told as the master's refusal would be.
fn local_error(action: &str, path: &Path, error: &std::io::Error) -> ClientError {
    ClientError::Refused {
        status: 0,
        body: ErrorBody { error: "local_io".into(), message: format!("cannot {action} {}: {error}", path.display()) },
    }
}

/// `Ok` for a success, else the master's error body.
async fn refused(response: reqwest::Response) -> Result<(), ClientError> {
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let text = response.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|_| ErrorBody { error: "unexpected_answer".into(), message: text.chars().take(500).collect() });
    Err(ClientError::Refused { status: status.as_u16(), body })
}

/// A new session: 128 random bits from the operating system, as 32 hexadecimal digits.
/// It is drawn once per worker process and kept in memory only, so a restarted process,
/// or a second machine under the same name, presents another one.
fn new_session() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::io::Read;
    let mut bytes = [0u8; 16];
    let from_os = std::fs::File::open("/dev/urandom").and_then(|mut random| random.read_exact(&mut bytes));
    if from_os.is_err() {
        // No /dev/urandom: std's hash keys are drawn from the OS's randomness too.
        for (index, chunk) in bytes.chunks_mut(8).enumerate() {
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_usize(index);
            hasher.write_u32(std::process::id());
            chunk.copy_from_slice(&hasher.finish().to_le_bytes());
        }
    }
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A client for one master, speaking for one worker process (one session).
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    session: String,
}

impl Client {
    /// A client for the master at `base` (e.g. `http://127.0.0.1:8080`), with a new
    /// session: clones share it, every other client has its own.
    pub fn new(base: &str, token: Option<String>) -> Client {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("a plain HTTP client always builds");
        Client { http, base: base.trim_end_matches('/').to_owned(), token, session: new_session() }
    }

    /// The token and the session on a request.
    fn identified(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let request = request.header(SESSION_HEADER, &self.session);
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<R, ClientError> {
        let url = format!("{}{path}", self.base);
        let request = self.identified(self.http.post(&url).json(body).timeout(timeout));
        let response = request.send().await.map_err(ClientError::Unreachable)?;
        let status = response.status();
        if status.is_success() {
            if status == reqwest::StatusCode::NO_CONTENT {
                return serde_json::from_value(serde_json::Value::Null).map_err(|_| ClientError::Refused {
                    status: status.as_u16(),
                    body: ErrorBody { error: "empty_answer".into(), message: "expected a body".into() },
                });
            }
            return response.json().await.map_err(ClientError::Unreachable);
        }
        let text = response.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or_else(|_| ErrorBody {
            error: "unexpected_answer".into(),
            message: text.chars().take(500).collect(),
        });
        // A master answers a call it knows with its own error code; "no such endpoint", or
        // a 404 from something that is no master, means the base URL is wrong.
        if status == reqwest::StatusCode::NOT_FOUND && matches!(body.error.as_str(), "not_found" | "unexpected_answer")
        {
            return Err(ClientError::WrongUrl { base: self.base.clone(), url });
        }
        Err(ClientError::Refused { status: status.as_u16(), body })
    }

    /// Registers under `name`.
    pub async fn register(&self, name: &str) -> Result<RegisterResponse, ClientError> {
        let request = RegisterRequest { version: API_VERSION, name: name.to_owned() };
        self.post("/api/v1/workers/register", &request, Duration::from_secs(10)).await
    }

    /// Long-polls for work for up to `wait_s`: a shard, or a revision to prepare.
    pub async fn lease(
        &self,
        worker_id: u64,
        wait_s: f64,
        warm_revision: Option<String>,
    ) -> Result<Option<Work>, ClientError> {
        let request = LeaseRequest::current(wait_s, warm_revision);
        let timeout = Duration::from_secs_f64(wait_s + 10.0);
        let response: LeaseResponse =
            self.post(&format!("/api/v1/workers/{worker_id}/lease"), &request, timeout).await?;
        Ok(match (response.lease, response.prepare, response.warm_up) {
            (Some(lease), _, _) => Some(Work::Lease(lease)),
            (None, Some(prepare), _) => Some(Work::Prepare(prepare)),
            (None, None, Some(warm_up)) => Some(Work::WarmUp(warm_up)),
            (None, None, None) => None,
        })
    }

    /// Heartbeats a preparation; false when the master gave it to another worker.
    pub async fn prepare_heartbeat(&self, worker_id: u64, prepare_id: u64) -> Result<bool, ClientError> {
        let request = HeartbeatRequest { version: API_VERSION, worker_id };
        let answer: HeartbeatResponse =
            self.post(&format!("/api/v1/prepares/{prepare_id}/heartbeat"), &request, Duration::from_secs(10)).await?;
        Ok(answer.active)
    }

    /// Ends a preparation with its listing (or why there is none).
    pub async fn prepare_report(
        &self,
        worker_id: u64,
        prepare_id: u64,
        outcome: PrepareOutcome,
    ) -> Result<(), ClientError> {
        let request = PrepareReport { version: API_VERSION, worker_id, outcome };
        let _: Option<()> =
            self.post(&format!("/api/v1/prepares/{prepare_id}/listing"), &request, Duration::from_secs(60)).await?;
        Ok(())
    }

    /// Uploads the archive at `path` for a preparation, streamed from the file.
    pub async fn upload_archive(&self, worker_id: u64, prepare_id: u64, path: &Path) -> Result<(), ClientError> {
        let file = tokio::fs::File::open(path).await.map_err(|error| local_error("open the archive", path, &error))?;
        let length = file.metadata().await.map_err(|error| local_error("read the archive", path, &error))?.len();
        let request = self.identified(
            self.http
                .put(format!("{}/api/v1/prepares/{prepare_id}/archive?worker_id={worker_id}", self.base))
                .header(reqwest::header::CONTENT_LENGTH, length)
                .body(reqwest::Body::from(file))
                .timeout(Duration::from_secs(3600)),
        );
        let response = request.send().await.map_err(ClientError::Unreachable)?;
        refused(response).await
    }

    /// Downloads `revision`'s archive to `path` (through a temporary file beside it), in
    /// chunks, never whole in memory. `Ok(false)`: the master has none.
    pub async fn download_archive(&self, revision: &str, path: &Path) -> Result<bool, ClientError> {
        use tokio::io::AsyncWriteExt;
        let request = self.identified(
            self.http
                .get(format!("{}/api/v1/revisions/{revision}/archive", self.base))
                .timeout(Duration::from_secs(3600)),
        );
        let mut response = request.send().await.map_err(ClientError::Unreachable)?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(false);
        }
        if !response.status().is_success() {
            return refused(response).await.map(|()| false);
        }
        let part = path.with_extension("part");
        let mut file =
            tokio::fs::File::create(&part).await.map_err(|error| local_error("write the archive", &part, &error))?;
        while let Some(chunk) = response.chunk().await.map_err(ClientError::Unreachable)? {
            file.write_all(&chunk).await.map_err(|error| local_error("write the archive", &part, &error))?;
        }
        file.flush().await.map_err(|error| local_error("write the archive", &part, &error))?;
        drop(file);
        tokio::fs::rename(&part, path).await.map_err(|error| local_error("write the archive", path, &error))?;
        Ok(true)
    }

    /// Heartbeats a lease; false when the master took it back.
    pub async fn heartbeat(&self, worker_id: u64, lease_id: u64) -> Result<HeartbeatResponse, ClientError> {
        let request = HeartbeatRequest { version: API_VERSION, worker_id };
        self.post(&format!("/api/v1/leases/{lease_id}/heartbeat"), &request, Duration::from_secs(10)).await
    }

    /// Reports finished tests.
    pub async fn results(
        &self,
        worker_id: u64,
        lease_id: u64,
        results: Vec<TestReport>,
    ) -> Result<ResultsResponse, ClientError> {
        let request = ResultsRequest { version: API_VERSION, worker_id, results };
        self.post(&format!("/api/v1/leases/{lease_id}/results"), &request, Duration::from_secs(30)).await
    }

    /// Ends a lease.
    pub async fn finish(
        &self,
        worker_id: u64,
        lease_id: u64,
        outcome: ShardOutcome,
        runner_wall_s: Option<f64>,
    ) -> Result<(), ClientError> {
        let request = FinishRequest { version: API_VERSION, worker_id, outcome, runner_wall_s };
        let _: Option<()> =
            self.post(&format!("/api/v1/leases/{lease_id}/finish"), &request, Duration::from_secs(10)).await?;
        Ok(())
    }
}
