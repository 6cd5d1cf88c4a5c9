//! The HTTP API (`/api/v1/...`), the web page and `/metrics`. Handlers extract the
//! request, call the farm and answer; every error is an [`ApiError`] with a status code
//! and a JSON body naming the problem, never a panic and never an internal detail.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use greenlight_scheduler::core::SchedulerError;
use greenlight_shared::API_VERSION;
use greenlight_shared::api::{
    ChangeNotice, ChangeNoticeResponse, ErrorBody, FarmEvent, FinishRequest, GateState, HeartbeatRequest,
    HeartbeatResponse, HistoryImportRequest, LeaseRequest, LeaseResponse, PrepareReport, QuarantineRequest,
    RegisterRequest, ResultsQuery, ResultsRequest, SESSION_HEADER, UnquarantineRequest,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::farm::{Farm, FarmError, ResultsPage, ResultsQueryError, Work, WorkerCredentials, WorkerToken};
use crate::secret::constant_time_eq;
use crate::store::StoreError;

/// The longest a lease request is held open.
const MAX_WAIT_S: f64 = 60.0;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// The farm.
    pub farm: Arc<Farm>,
}

/// An error answer: a status and a JSON [`ErrorBody`].
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(ErrorBody { error: self.code.to_owned(), message: self.message })).into_response()
    }
}

impl From<FarmError> for ApiError {
    fn from(error: FarmError) -> ApiError {
        let message = error.to_string();
        match error {
            FarmError::UnknownWorker(_) => ApiError::new(StatusCode::NOT_FOUND, "unknown_worker", message),
            FarmError::NameInUse { .. } => ApiError::new(StatusCode::CONFLICT, "name_in_use", message),
            FarmError::WrongSession(_) => ApiError::new(StatusCode::FORBIDDEN, "wrong_session", message),
            FarmError::WrongWorkerToken(_) => ApiError::new(StatusCode::FORBIDDEN, "wrong_token", message),
            FarmError::UnknownBuild(_) => ApiError::new(StatusCode::NOT_FOUND, "unknown_build", message),
            FarmError::BuildEnded(_) => ApiError::new(StatusCode::CONFLICT, "build_ended", message),
            FarmError::ResultsPruned(_) => ApiError::new(StatusCode::GONE, "results_pruned", message),
            FarmError::Invalid(_) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message),
            FarmError::Scheduler(SchedulerError::UnknownLease(_)) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_lease", message)
            }
            FarmError::Scheduler(SchedulerError::NotYourLease { .. }) => {
                ApiError::new(StatusCode::FORBIDDEN, "not_your_lease", message)
            }
            FarmError::Scheduler(SchedulerError::TestNotInLease { .. }) => {
                ApiError::new(StatusCode::CONFLICT, "test_not_in_lease", message)
            }
            FarmError::Git(_) => ApiError::new(StatusCode::BAD_GATEWAY, "git_failed", message),
            FarmError::Unavailable(_) => ApiError::new(StatusCode::CONFLICT, "unavailable", message),
            FarmError::UnknownPreparation(_) => ApiError::new(StatusCode::NOT_FOUND, "unknown_preparation", message),
            FarmError::NotYourPreparation { .. } => {
                ApiError::new(StatusCode::FORBIDDEN, "not_your_preparation", message)
            }
            FarmError::InvalidListing(_) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_listing", message),
            FarmError::PreparationIncomplete(_) => ApiError::new(StatusCode::CONFLICT, "archive_missing", message),
            FarmError::DiskFull { .. } => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "disk_full", message),
            FarmError::Store(StoreError::Backend(_) | StoreError::Failed(_)) => {
                tracing::error!(%message, "the store cannot write");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_failed",
                    "the master's store cannot write, so nothing of this call was recorded (see GET /api/v1/health); retry later",
                )
            }
            FarmError::Scheduler(SchedulerError::DuplicateBuild(_)) | FarmError::Store(_) | FarmError::Task(_) => {
                tracing::error!(%message, "internal error");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the master's log")
            }
        }
    }
}

/// A JSON body whose rejection is an [`ApiError`] naming the problem.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(match rejection {
                JsonRejection::JsonDataError(error) => {
                    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", error.body_text())
                }
                JsonRejection::JsonSyntaxError(error) => {
                    ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", error.body_text())
                }
                JsonRejection::MissingJsonContentType(error) => {
                    ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "not_json", error.body_text())
                }
                JsonRejection::BytesRejection(error) => {
                    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", error.body_text())
                }
                other => ApiError::new(StatusCode::BAD_REQUEST, "bad_request", other.body_text()),
            }),
        }
    }
}

/// A path parameter whose rejection is an [`ApiError`] (`invalid_path`) naming the problem.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> axum::extract::FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", rejection.body_text())),
        }
    }
}

/// A query string whose rejection is an [`ApiError`] (`invalid_query`) naming the problem.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> axum::extract::FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", rejection.body_text())),
        }
    }
}

/// The bearer token of a request, if it presents one.
fn presented_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
}

/// 401 without a token, 403 with a wrong one. The token is never logged.
fn check_token(expected: &str, presented: Option<&str>, calls: &str) -> Result<(), ApiError> {
    match presented {
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing_token",
            format!("{calls} calls need `Authorization: Bearer <token>`"),
        )),
        Some(token) if constant_time_eq(token.as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::new(StatusCode::FORBIDDEN, "wrong_token", format!("the {calls} token is not valid"))),
    }
}

/// Who a worker call says it is: the worker token it presents (a worker's own token, else
/// the shared one: 401 without a token, 403 with one that is no worker's) and the session
/// of its process (`greenlight-session`; 422 when malformed). The farm checks them
/// against the registration the call is for.
fn worker_credentials(state: &AppState, headers: &HeaderMap) -> Result<WorkerCredentials, ApiError> {
    let config = state.farm.config();
    let presented = presented_token(headers);
    let own = presented.and_then(|token| {
        config.workers.iter().find_map(|(name, worker)| {
            let own = worker.token.as_deref()?;
            constant_time_eq(token.as_bytes(), own.as_bytes()).then(|| name.clone())
        })
    });
    let token = match own {
        Some(name) => WorkerToken::Own(name),
        None => {
            if let Some(expected) = &config.worker_token {
                check_token(expected, presented, "worker")?;
            }
            WorkerToken::Shared
        }
    };
    let session = match headers.get(SESSION_HEADER) {
        None => None,
        Some(value) => match value.to_str() {
            Ok(session)
                if (16..=128).contains(&session.len()) && session.bytes().all(|byte| byte.is_ascii_graphic()) =>
            {
                Some(session.to_owned())
            }
            _ => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_session",
                    format!("the {SESSION_HEADER} header is 16 to 128 visible ASCII characters"),
                ));
            }
        },
    };
    Ok(WorkerCredentials { token, session })
}

/// A call for the worker `worker_id`: its token and session must be those of the process
/// that registered it.
fn check_worker(state: &AppState, headers: &HeaderMap, worker_id: u64) -> Result<(), ApiError> {
    let credentials = worker_credentials(state, headers)?;
    Ok(state.farm.authenticate(worker_id, &credentials)?)
}

/// Checks that the request comes from worker `worker_id` and makes its `change` to the farm,
/// both in the request's turn ([`Farm::in_turn`]): the check reads the farm's lock too.
async fn in_worker_turn<T>(
    state: &AppState,
    headers: &HeaderMap,
    worker_id: u64,
    change: impl FnOnce() -> Result<T, FarmError>,
) -> Result<T, ApiError> {
    state
        .farm
        .in_turn(|| {
            check_worker(state, headers, worker_id)?;
            Ok(change()?)
        })
        .await
}

/// A change announcement (a post-receive hook) presents the `hook_token` or the worker
/// token; with neither configured, anyone may announce (the master only polls sooner).
fn check_hook_token(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let config = state.farm.config();
    let accepted: Vec<&String> = [&config.hook_token, &config.worker_token].into_iter().flatten().collect();
    let Some(&first) = accepted.first() else { return Ok(()) };
    let presented = presented_token(headers);
    if let Some(token) = presented
        && accepted.iter().any(|expected| constant_time_eq(token.as_bytes(), expected.as_bytes()))
    {
        return Ok(());
    }
    check_token(first, presented, "change announcement").and(Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "wrong_token",
        "the change announcement token is not valid (the hook token or the worker token)",
    )))
}

fn check_admin_token(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &state.farm.config().admin_token else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "admin calls are off: set `admin_token` in the master's configuration",
        ));
    };
    check_token(expected, presented_token(headers), "admin")
}

/// With a `read_token` configured, the page and the read-only API need it too: as a bearer
/// token, or as `?token=` (an EventSource cannot set headers).
async fn require_read_token(
    State(state): State<AppState>,
    request: Request,
    next: axum::middleware::Next,
) -> Result<Response, ApiError> {
    if let Some(expected) = &state.farm.config().read_token {
        let from_query = request
            .uri()
            .query()
            .and_then(|query| query.split('&').find_map(|pair| pair.strip_prefix("token=")))
            .map(str::to_owned);
        let presented = presented_token(request.headers()).map(str::to_owned).or(from_query);
        check_token(expected, presented.as_deref(), "read")?;
    }
    Ok(next.run(request).await)
}

/// The router: the API, the page and the metrics.
pub fn router(state: AppState) -> Router {
    let max_body = state.farm.config().max_body_bytes;
    let read_only = Router::new()
        .route("/", get(index))
        .route("/api/v1/changes", get(changes))
        .route("/api/v1/builds", get(builds))
        .route("/api/v1/builds/{build_id}", get(build))
        .route("/api/v1/builds/{build_id}/tests", get(build_tests))
        .route("/api/v1/builds/{build_id}/shards/{lease_id}", get(shard))
        .route("/api/v1/tests", get(test_history))
        .route("/api/v1/workers", get(workers))
        .route("/api/v1/gate", get(gate))
        .route("/api/v1/health", get(health))
        .route("/api/v1/pushes", get(pushes))
        .route("/api/v1/quarantine", get(quarantine_list))
        .route("/api/v1/flaky", get(flaky))
        .route("/api/v1/events", get(events))
        .route("/metrics", get(metrics))
        .route("/api/v1/builds/{build_id}/junit.xml", get(build_junit))
        .route("/api/v1/builds/{build_id}/trace.json", get(build_trace))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), require_read_token));
    Router::new()
        .merge(read_only)
        .route("/api/v1/admin/builds/{build_id}/cancel", post(cancel_build))
        .route("/api/v1/admin/quarantine", post(quarantine))
        .route("/api/v1/admin/unquarantine", post(unquarantine))
        .route("/api/v1/admin/full-run", post(full_run))
        .route("/api/v1/admin/history/import", post(import_history))
        .route("/api/v1/workers/register", post(register))
        .route("/api/v1/workers/{worker_id}/lease", post(lease))
        .route("/api/v1/leases/{lease_id}/heartbeat", post(heartbeat))
        .route("/api/v1/leases/{lease_id}/results", post(results))
        .route("/api/v1/leases/{lease_id}/finish", post(finish))
        .route("/api/v1/prepares/{prepare_id}/heartbeat", post(prepare_heartbeat))
        .route("/api/v1/prepares/{prepare_id}/archive", put(prepare_archive))
        .route("/api/v1/prepares/{prepare_id}/listing", post(prepare_listing))
        .route("/api/v1/revisions/{revision}/archive", get(revision_archive))
        .route("/api/v1/changes", post(changes_notice))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), time_request))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

async fn cancel_build(
    State(state): State<AppState>,
    ApiPath(build_id): ApiPath<u64>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    check_admin_token(&state, &headers)?;
    state.farm.check_writable()?;
    let cancelled = state.farm.cancel_build(build_id)?;
    state.farm.flush().await?;
    Ok(Json(cancelled))
}

async fn quarantine(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<QuarantineRequest>,
) -> Result<impl IntoResponse, ApiError> {
    check_admin_token(&state, &headers)?;
    state.farm.check_writable()?;
    Ok(Json(state.farm.quarantine(&request.test_id, &request.reason, request.expires_in_s)?))
}

async fn unquarantine(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<UnquarantineRequest>,
) -> Result<impl IntoResponse, ApiError> {
    check_admin_token(&state, &headers)?;
    state.farm.check_writable()?;
    if !state.farm.unquarantine(&request.test_id)? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_quarantined",
            format!("test {:?} is not quarantined", request.test_id),
        ));
    }
    Ok(Json(serde_json::json!({ "version": API_VERSION, "test_id": request.test_id, "quarantined": false })))
}

async fn full_run(State(state): State<AppState>, headers: HeaderMap) -> Result<impl IntoResponse, ApiError> {
    check_admin_token(&state, &headers)?;
    state.farm.check_writable()?;
    state.farm.force_full_run()?;
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "version": API_VERSION, "full_run": "queued" }))))
}

#[tracing::instrument(skip_all, fields(n_reports = request.reports.len()))]
async fn import_history(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<HistoryImportRequest>,
) -> Result<impl IntoResponse, ApiError> {
    check_admin_token(&state, &headers)?;
    state.farm.check_writable()?;
    // Reading the suite (git, perhaps the runner's listing) and the store writes block.
    let farm = state.farm.clone();
    let answer = crate::farm::blocking(move || farm.import_history(&request)).await??;
    state.farm.flush().await?;
    Ok(Json(answer))
}

async fn quarantine_list(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(serde_json::json!({ "version": API_VERSION, "quarantined": state.farm.quarantine_list() })))
}

async fn flaky(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(serde_json::json!({ "version": API_VERSION, "tests": state.farm.flaky_tests()? })))
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

async fn index() -> Html<&'static str> {
    Html(greenlight_web::INDEX_HTML)
}

#[tracing::instrument(skip_all, fields(name = %request.name))]
async fn register(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<RegisterRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let credentials = worker_credentials(&state, &headers)?;
    state.farm.check_writable()?;
    if request.name.trim().is_empty() || request.name.len() > 200 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_name",
            "a worker name is 1 to 200 characters",
        ));
    }
    let answer = state.farm.register(&request.name, &credentials)?;
    // Taking a silent worker's name expires its lease (and may end a build): durable as
    // the lease expiry loop's writes are. Registrations are rare.
    state.farm.flush().await?;
    Ok(Json(answer))
}

#[tracing::instrument(skip_all, fields(worker_id))]
async fn lease(
    State(state): State<AppState>,
    ApiPath(worker_id): ApiPath<u64>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<LeaseRequest>,
) -> Result<impl IntoResponse, ApiError> {
    in_worker_turn(&state, &headers, worker_id, || Ok(())).await?;
    if !request.wait_s.is_finite() || request.wait_s < 0.0 {
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_wait", "wait_s must be a number >= 0"));
    }
    let wait_s = request.wait_s.min(MAX_WAIT_S);
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(wait_s);
    let mut waiting = false;
    let mut closing = state.farm.closing();
    loop {
        let notified = state.farm.work_available.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // A lease is written down: not while the data directory is full.
        state.farm.check_writable()?;
        let work = state.farm.in_turn(|| state.farm.try_work(worker_id, &request)).await?;
        // Taking back the lease it held may have ended a build.
        state.farm.flush_verdicts().await?;
        let mut response = LeaseResponse { version: API_VERSION, lease: None, prepare: None, warm_up: None };
        match work {
            Some(Work::Lease(lease)) => {
                // The shard, its build's start and the next lease id are on disk before the
                // worker runs it: nothing of the store waits for sled's background flush when
                // the disk fills.
                state.farm.flush().await?;
                response.lease = Some(lease);
            }
            Some(Work::Prepare(prepare)) => response.prepare = Some(prepare),
            Some(Work::WarmUp(warm_up)) => response.warm_up = Some(warm_up),
            None => {}
        }
        if response.lease.is_some() || response.prepare.is_some() || response.warm_up.is_some() {
            return Ok(Json(response));
        }
        if !waiting {
            state.farm.in_turn(|| state.farm.waiting(worker_id, wait_s)).await?;
            waiting = true;
        }
        tokio::select! {
            woken = tokio::time::timeout_at(deadline, notified) => {
                if woken.is_err() {
                    return Ok(Json(response));
                }
            }
            // A master shutting down answers its waiting workers at once (nothing for now),
            // rather than holding its shutdown for their long polls.
            _ = closing.wait_for(|closing| *closing) => return Ok(Json(response)),
        }
    }
}

#[tracing::instrument(skip_all, fields(lease_id))]
async fn heartbeat(
    State(state): State<AppState>,
    ApiPath(lease_id): ApiPath<u64>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<HeartbeatRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let (active, withdrawn) =
        in_worker_turn(&state, &headers, request.worker_id, || state.farm.heartbeat(lease_id, request.worker_id))
            .await?;
    Ok(Json(HeartbeatResponse { version: API_VERSION, active, withdrawn }))
}

#[tracing::instrument(skip_all, fields(lease_id, n_results = request.results.len()))]
async fn results(
    State(state): State<AppState>,
    ApiPath(lease_id): ApiPath<u64>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<ResultsRequest>,
) -> Result<impl IntoResponse, ApiError> {
    // Refused before anything is recorded: a refused write leaves the farm as it was.
    state.farm.check_writable()?;
    let answer = in_worker_turn(&state, &headers, request.worker_id, || {
        state.farm.report(lease_id, request.worker_id, &request.results)
    })
    .await?;
    // What the worker is told was accepted must survive a crash of the master.
    if answer.accepted > 0 {
        state.farm.flush().await?;
    }
    Ok(Json(answer))
}

#[tracing::instrument(skip_all, fields(lease_id))]
async fn finish(
    State(state): State<AppState>,
    ApiPath(lease_id): ApiPath<u64>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<FinishRequest>,
) -> Result<impl IntoResponse, ApiError> {
    state.farm.check_writable()?;
    in_worker_turn(&state, &headers, request.worker_id, || {
        state.farm.finish(lease_id, request.worker_id, &request.outcome, request.runner_wall_s)
    })
    .await?;
    // The shard's end (and perhaps the build's) must survive a crash of the master.
    state.farm.flush().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[tracing::instrument(skip_all, fields(prepare_id))]
async fn prepare_heartbeat(
    State(state): State<AppState>,
    ApiPath(prepare_id): ApiPath<u64>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<HeartbeatRequest>,
) -> Result<impl IntoResponse, ApiError> {
    check_worker(&state, &headers, request.worker_id)?;
    let active = state.farm.prepare_heartbeat(prepare_id, request.worker_id)?;
    Ok(Json(HeartbeatResponse { version: API_VERSION, active, withdrawn: Vec::new() }))
}

/// `?worker_id=N` on an archive upload (its body is the archive).
#[derive(Debug, Deserialize)]
struct UploadQuery {
    worker_id: u64,
}

/// Removes a partial upload unless the upload completed (the handler may also be dropped
/// mid-body when the worker goes away).
struct PartialUpload(Option<std::path::PathBuf>);

impl Drop for PartialUpload {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn archive_too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "archive_too_large",
        format!("the archive is larger than the master's `max_archive_bytes` ({limit} bytes)"),
    )
}

/// A worker uploads the test archive of the revision it prepares: streamed to a file in
/// the data directory (never held whole in memory), at most `max_archive_bytes`.
#[tracing::instrument(skip_all, fields(prepare_id))]
async fn prepare_archive(
    State(state): State<AppState>,
    ApiPath(prepare_id): ApiPath<u64>,
    ApiQuery(query): ApiQuery<UploadQuery>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<impl IntoResponse, ApiError> {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    check_worker(&state, &headers, query.worker_id)?;
    state.farm.check_writable()?;
    let limit = state.farm.config().max_archive_bytes;
    let (_revision, part) = state.farm.archive_upload_start(prepare_id, query.worker_id)?;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(archive_too_large(limit));
    }
    let io = |error: std::io::Error| FarmError::Task(format!("writing an archive upload: {error}"));
    if let Some(directory) = part.parent() {
        tokio::fs::create_dir_all(directory).await.map_err(io)?;
    }
    let mut file = tokio::fs::File::create(&part).await.map_err(io)?;
    let mut guard = PartialUpload(Some(part.clone()));
    let mut stream = body.into_data_stream();
    let mut written: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| {
            ApiError::new(StatusCode::BAD_REQUEST, "upload_broken", format!("the upload broke off: {error}"))
        })?;
        written += chunk.len() as u64;
        if written > limit {
            return Err(archive_too_large(limit));
        }
        file.write_all(&chunk).await.map_err(io)?;
    }
    file.sync_all().await.map_err(io)?;
    drop(file);
    guard.0 = None;
    let farm = Arc::clone(&state.farm);
    let worker_id = query.worker_id;
    crate::farm::blocking(move || farm.archive_upload_done(prepare_id, worker_id, &part)).await??;
    Ok(StatusCode::NO_CONTENT)
}

/// The end of a preparation: the listing (or why there is none).
#[tracing::instrument(skip_all, fields(prepare_id))]
async fn prepare_listing(
    State(state): State<AppState>,
    ApiPath(prepare_id): ApiPath<u64>,
    headers: HeaderMap,
    ApiJson(report): ApiJson<PrepareReport>,
) -> Result<impl IntoResponse, ApiError> {
    check_worker(&state, &headers, report.worker_id)?;
    state.farm.check_writable()?;
    state.farm.prepare_report(prepare_id, report.worker_id, &report.outcome)?;
    // The listing must survive a crash of the master: the build plans from it.
    state.farm.flush().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A revision's test archive, streamed from the data directory.
#[tracing::instrument(skip_all)]
async fn revision_archive(
    State(state): State<AppState>,
    ApiPath(revision): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    use tokio::io::AsyncReadExt;
    worker_credentials(&state, &headers)?;
    if !matches!(revision.len(), 40 | 64) || !revision.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_revision",
            "a revision is a full commit id (40 or 64 hexadecimal digits)",
        ));
    }
    let path = state.farm.archive_path(&revision);
    let file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "no_archive",
                format!("the master has no archive of revision {revision}; build it"),
            ));
        }
        Err(error) => return Err(FarmError::Task(format!("{}: {error}", path.display())).into()),
    };
    let length = file.metadata().await.map_err(|error| FarmError::Task(error.to_string()))?.len();
    let chunks = futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buffer = vec![0; 256 * 1024];
        match file.read(&mut buffer).await {
            Ok(0) => None,
            Ok(read) => {
                buffer.truncate(read);
                Some((Ok(axum::body::Bytes::from(buffer)), Some(file)))
            }
            Err(error) => Some((Err(error), None)),
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream".to_owned()), (header::CONTENT_LENGTH, length.to_string())],
        axum::body::Body::from_stream(chunks),
    )
        .into_response())
}

#[tracing::instrument(skip_all)]
async fn changes_notice(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(notice): ApiJson<ChangeNotice>,
) -> Result<impl IntoResponse, ApiError> {
    check_hook_token(&state, &headers)?;
    state.farm.check_writable()?;
    let watched = &state.farm.config().repository.branch;
    if let Some(branch) = &notice.branch
        && branch != watched
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unwatched_branch",
            format!("branch {branch:?} is not watched (the master watches {watched:?})"),
        ));
    }
    let queued = state.farm.poll().await?;
    Ok((StatusCode::ACCEPTED, Json(ChangeNoticeResponse { version: API_VERSION, queued })))
}

/// `?limit=N` for listings.
#[derive(Debug, Deserialize)]
struct Limit {
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    50
}

async fn changes(
    State(state): State<AppState>,
    ApiQuery(limit): ApiQuery<Limit>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(state.farm.changes(limit.limit.min(1000))?))
}

async fn builds(
    State(state): State<AppState>,
    ApiQuery(limit): ApiQuery<Limit>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(state.farm.builds(limit.limit.min(1000))?))
}

/// `?test_ids=true` asks for every shard's test ids.
#[derive(Debug, Deserialize)]
struct DetailQuery {
    #[serde(default)]
    test_ids: bool,
}

/// Reads and serialises an answer on a blocking thread, never on the runtime's: a large
/// one (a build's 15k results are megabytes of JSON, its shards name every test) would
/// hold up every other request while it is decoded and encoded. `read` takes the farm's
/// lock only for its own short sections, never while decoding or serialising.
async fn json_off_runtime<T: Serialize>(
    read: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<Response, ApiError> {
    let body = crate::farm::blocking(move || {
        read().and_then(|answer| serde_json::to_vec(&answer).map_err(|error| FarmError::Task(error.to_string()).into()))
    })
    .await??;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn build(
    State(state): State<AppState>,
    ApiPath(build_id): ApiPath<u64>,
    ApiQuery(query): ApiQuery<DetailQuery>,
) -> Result<Response, ApiError> {
    let farm = Arc::clone(&state.farm);
    json_off_runtime(move || Ok(farm.build_detail(build_id, query.test_ids)?)).await
}

async fn shard(
    State(state): State<AppState>,
    ApiPath((build_id, lease_id)): ApiPath<(u64, u64)>,
) -> Result<Response, ApiError> {
    let farm = Arc::clone(&state.farm);
    json_off_runtime(move || {
        farm.shard(build_id, lease_id)?.ok_or_else(|| {
            ApiError::new(StatusCode::NOT_FOUND, "unknown_shard", format!("build {build_id} has no shard {lease_id}"))
        })
    })
    .await
}

/// `?id=TEST_ID&builds=N` for a test's history (test ids hold `/`, `::` and brackets, so
/// they travel percent-encoded in the query, not in the path).
#[derive(Debug, Deserialize)]
struct TestQuery {
    #[serde(default)]
    id: String,
    #[serde(default = "default_limit")]
    builds: usize,
}

async fn test_history(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<TestQuery>,
) -> Result<Response, ApiError> {
    if query.id.is_empty() {
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_test_id", "a test id is not empty"));
    }
    let farm = Arc::clone(&state.farm);
    let n_builds = query.builds.clamp(1, 200);
    json_off_runtime(move || Ok(farm.test_history(&query.id, n_builds)?)).await
}

/// A build's results: all of them, or the page a [`ResultsQuery`] asks for.
#[tracing::instrument(skip_all, fields(build_id))]
async fn build_tests(
    State(state): State<AppState>,
    ApiPath(build_id): ApiPath<u64>,
    ApiQuery(query): ApiQuery<ResultsQuery>,
) -> Result<Response, ApiError> {
    let page = ResultsPage::from_query(&query).map_err(|error| {
        let code = match error {
            ResultsQueryError::Status(_) => "invalid_status",
            ResultsQueryError::Cursor => "invalid_cursor",
            ResultsQueryError::Limit(_) => "invalid_limit",
        };
        ApiError::new(StatusCode::BAD_REQUEST, code, error.to_string())
    })?;
    let farm = Arc::clone(&state.farm);
    json_off_runtime(move || Ok(farm.build_tests_page(build_id, &page)?)).await
}

/// The whole build as one JUnit XML file, for CI systems that display JUnit: read and
/// rendered on a blocking thread.
async fn build_junit(State(state): State<AppState>, Path(build_id): Path<u64>) -> Result<impl IntoResponse, ApiError> {
    let farm = Arc::clone(&state.farm);
    let xml = crate::farm::blocking(move || {
        let build = farm.build_summary(build_id)?;
        let tests = farm.build_tests(build_id)?;
        Ok::<_, FarmError>(crate::junit::render(&build, &farm.config().suite.runner(), &tests.results))
    })
    .await??;
    Ok(([(header::CONTENT_TYPE, "application/xml; charset=utf-8")], xml))
}

/// The build's timeline in the Chrome trace event format (see [`crate::trace`]).
async fn build_trace(State(state): State<AppState>, Path(build_id): Path<u64>) -> Result<impl IntoResponse, ApiError> {
    let farm = Arc::clone(&state.farm);
    let trace = crate::farm::blocking(move || {
        let detail = farm.build_detail(build_id, true)?;
        let tests = farm.build_tests(build_id)?;
        Ok::<_, FarmError>(crate::trace::render(&detail, &tests.results, farm.now()))
    })
    .await??;
    Ok(Json(trace))
}

/// `?branch=B` for the gate.
#[derive(Debug, Deserialize)]
struct BranchQuery {
    branch: Option<String>,
}

async fn gate(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<BranchQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let watched = &state.farm.config().repository.branch;
    let branch = query.branch.unwrap_or_else(|| watched.clone());
    state.farm.gate(&branch).map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unwatched_branch",
            format!("branch {branch:?} is not watched (the master watches {watched:?})"),
        )
    })
}

async fn health(State(state): State<AppState>) -> impl IntoResponse {
    Json(state.farm.health())
}

async fn pushes(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(state.farm.pushes()?))
}

/// How long updates are gathered before one SSE message carries them.
const EVENT_BATCH: Duration = Duration::from_millis(250);

/// The newest state of each thing that changed, keyed so that later updates replace earlier.
#[derive(Default)]
struct Coalesced {
    events: std::collections::BTreeMap<(u8, u64), FarmEvent>,
}

impl Coalesced {
    fn add(&mut self, event: FarmEvent) {
        let key = match &event {
            FarmEvent::Build(build) => (0, build.build_id),
            FarmEvent::Shard(shard) => (1, shard.shard.lease_id),
            FarmEvent::Gate(_) => (2, 0),
            FarmEvent::Change(change) => (3, change.sequence),
        };
        self.events.insert(key, event);
    }
}

enum Next {
    Batch(Coalesced),
    Resync,
    End,
}

/// Waits for an update, then gathers more for [`EVENT_BATCH`].
async fn next_batch(
    receiver: &mut tokio::sync::broadcast::Receiver<FarmEvent>,
    closing: &mut tokio::sync::watch::Receiver<bool>,
) -> Next {
    use tokio::sync::broadcast::error::RecvError;
    let mut batch = Coalesced::default();
    tokio::select! {
        received = receiver.recv() => match received {
            Ok(event) => batch.add(event),
            Err(RecvError::Lagged(_)) => return Next::Resync,
            Err(RecvError::Closed) => return Next::End,
        },
        _ = closing.wait_for(|closing| *closing) => return Next::End,
    }
    let deadline = tokio::time::Instant::now() + EVENT_BATCH;
    loop {
        match tokio::time::timeout_at(deadline, receiver.recv()).await {
            Ok(Ok(event)) => batch.add(event),
            Ok(Err(RecvError::Lagged(_))) => return Next::Resync,
            Ok(Err(RecvError::Closed)) | Err(_) => return Next::Batch(batch),
        }
    }
}

/// `GET /api/v1/events`: server-sent events, batched and throttled (see [`FarmEvent`]).
async fn events(State(state): State<AppState>) -> impl IntoResponse {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let streams = (state.farm.subscribe(), state.farm.closing());
    let stream = futures_util::stream::unfold(streams, |(mut receiver, mut closing)| async move {
        let event = match next_batch(&mut receiver, &mut closing).await {
            Next::Batch(batch) => {
                let events: Vec<FarmEvent> = batch.events.into_values().collect();
                Event::default()
                    .event("batch")
                    .json_data(events)
                    .unwrap_or_else(|_| Event::default().event("resync").data("{}"))
            }
            Next::Resync => {
                receiver = receiver.resubscribe();
                Event::default().event("resync").data("{}")
            }
            Next::End => return None,
        };
        Some((Ok::<_, std::convert::Infallible>(event), (receiver, closing)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn workers(State(state): State<AppState>) -> impl IntoResponse {
    Json(state.farm.workers())
}

async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    use crate::metrics::Exposition;
    let farm = &state.farm;
    let mut out = Exposition::default();
    let now = farm.now();
    let workers = farm.workers();
    out.family("greenlight_workers", "gauge", "Workers known to the master, by state (idle, busy, benched, lost).");
    for worker_state in ["idle", "busy", "benched", "lost"] {
        let count = workers.iter().filter(|worker| worker_state_of(worker, now) == worker_state).count();
        out.sample("greenlight_workers", &[("state", worker_state)], count as f64);
    }
    let (queued, queued_s) = farm.queued();
    out.single("greenlight_queued_tests", "gauge", "Tests of running builds no lease holds yet.", queued as f64);
    out.single(
        "greenlight_queued_estimated_seconds",
        "gauge",
        "What the queued tests are estimated to take, summed (worker-seconds).",
        queued_s,
    );
    let branch = &farm.config().repository.branch;
    if let Some(gate) = farm.gate(branch) {
        out.family("greenlight_gate_open", "gauge", "Whether the commit gate of a branch is open (1) or closed (0).");
        out.sample("greenlight_gate_open", &[("branch", branch)], f64::from(u8::from(gate.state == GateState::Open)));
    }
    let builds = farm.builds(1)?;
    if let Some(build) = builds.first() {
        out.single("greenlight_latest_build_id", "gauge", "Id of the newest build.", build.build_id as f64);
        out.family("greenlight_latest_build_tests", "gauge", "Tests of the newest build by outcome.");
        for (outcome, count) in [
            ("passed", build.counts.passed),
            ("failed", build.counts.failed),
            ("skipped", build.counts.skipped),
            ("error", build.counts.error),
            ("pending", build.counts.total - build.counts.done()),
        ] {
            out.sample("greenlight_latest_build_tests", &[("outcome", outcome)], f64::from(count));
        }
    }
    let health = farm.health();
    out.family(
        "greenlight_health_problem",
        "gauge",
        "Whether a problem keeps the farm from testing now (GET /api/v1/health says why).",
    );
    for kind in greenlight_shared::api::HealthKind::ALL {
        let present = health.problems.iter().any(|problem| problem.kind == kind);
        out.sample("greenlight_health_problem", &[("kind", kind.as_str())], f64::from(u8::from(present)));
    }
    if let Some(free) = health.data_dir_free_bytes {
        out.single(
            "greenlight_data_dir_free_bytes",
            "gauge",
            "Free bytes on the data directory's filesystem.",
            free as f64,
        );
    }
    out.single(
        "greenlight_data_dir_min_free_bytes",
        "gauge",
        "Below this many free bytes no new build starts ([storage] min_free_bytes).",
        health.min_free_bytes as f64,
    );
    out.single(
        "greenlight_writes_refused_total",
        "counter",
        "Writes refused (503) for a data directory short of space or a failed store, nothing recorded.",
        health.writes_refused as f64,
    );
    if let Some(fetched) = health.last_fetch_at {
        out.single(
            "greenlight_repository_last_fetch_seconds",
            "gauge",
            "When the watched repository was last fetched (Unix seconds).",
            fetched,
        );
    }
    out.single(
        "greenlight_store_flushes_total",
        "counter",
        "Flushes of the store to disk; requests that wait at the same time share one.",
        farm.store_flushes() as f64,
    );
    let learned = farm.learned_shard_costs().map_err(FarmError::from)?;
    out.single(
        "greenlight_shard_overhead_samples",
        "gauge",
        "Shards the suite's shard costs were learned from.",
        learned.samples as f64,
    );
    if let Some(overhead) = learned.overhead_s {
        out.single("greenlight_shard_overhead_seconds", "gauge", "What a shard costs besides its tests, from its lease to its last result (median of recent shards), used in planning.", overhead);
    }
    if let Some(startup) = learned.startup_s {
        out.single("greenlight_worker_startup_seconds", "gauge", "What a worker's first shard of a build costs beyond the shard overhead (checkout, setup, a warm runner's collection), used in planning.", startup);
    }
    farm.metrics().write(&mut out);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out.into_text()))
}

/// A worker's state as `greenlight_workers{state}` counts it.
fn worker_state_of(worker: &greenlight_shared::api::WorkerView, now: f64) -> &'static str {
    if worker.lost {
        "lost"
    } else if worker.benched_until.is_some_and(|until| until > now) {
        "benched"
    } else if worker.lease_id.is_some() {
        "busy"
    } else {
        "idle"
    }
}

/// Times every request a route matched, for `greenlight_http_request_duration_seconds`
/// (by the route's pattern, so that ids do not make a series each).
async fn time_request(
    State(state): State<AppState>,
    request: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = std::time::Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    state.farm.metrics().request(&method, &route, response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}
