//! The worker protocol's server side (see `updraft-protocol`): remote workers
//! register, claim queued attempts (a long poll woken by the store's change
//! notifications), renew their leases, and report ends and logs. Every request
//! needs `Authorization: Bearer <worker.token>`.
//!
//! Nothing here decides anything: each request is one store call, fenced by the
//! attempt's try number exactly as when a runner talks to the store itself.

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use tokio::time::Instant;
use updraft_core::TaskState;
use updraft_core::state::check_task_transition;
use updraft_protocol::{
    AttemptStarted, ClaimRequest, FinishAnswer, FinishRequest, HeartbeatRequest, MAX_CLAIM_WAIT_MS, RegisterWorker,
    Registered,
};
use updraft_store::{Claimant, Claimed, Heartbeat, LogChunk, NewProcess, ProcessKind, ProcessState, Scope};

use crate::{ApiError, AppState};

/// The most attempts one claim takes.
const MAX_CLAIM: u32 = 256;

/// How often a waiting claim looks even without a change notification (a missed
/// notification, or a store that cannot send them).
const CLAIM_RECHECK: Duration = Duration::from_secs(1);

/// Checks the worker's token: the shared `worker.token` (compared in constant
/// time) or a per-worker token made with `updraft worker-tokens create` (stored
/// only as a hash, so revocable one worker at a time).
async fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::Unauthorized("missing `Authorization: Bearer <worker token>`".into()))?;
    if let Some(expected) = state.worker_token.as_deref()
        && updraft_auth::constant_time_eq(given.as_bytes(), expected.as_bytes())
    {
        return Ok(());
    }
    let hash = updraft_auth::token_hash(given);
    if state.store.worker_token_id(&hash, state.clock.now()).await?.is_some() {
        return Ok(());
    }
    if state.worker_token.is_none() && state.store.worker_tokens().await?.is_empty() {
        return Err(ApiError::Forbidden(
            "the worker API is off on this server: set `worker.token` (UPDRAFT_WORKER__TOKEN) or make worker tokens (`updraft worker-tokens create`)".into(),
        ));
    }
    Err(ApiError::Unauthorized("unknown, revoked or expired worker token".into()))
}

fn body<T>(payload: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    payload.map(|Json(value)| value).map_err(|rejection| ApiError::BadRequest(rejection.body_text()))
}

pub async fn register(
    State(state): State<AppState>,
    headers: HeaderMap,
    payload: Result<Json<RegisterWorker>, JsonRejection>,
) -> Result<Json<Registered>, ApiError> {
    authorize(&state, &headers).await?;
    let request = body(payload)?;
    let process = NewProcess {
        kind: ProcessKind::Worker,
        hostname: request.hostname,
        pid: request.pid,
        pid_start: request.pid_start,
    };
    let process_id = state.store.register_process(&process, state.clock.now()).await?;
    tracing::info!(process_id, hostname = %process.hostname, pid = process.pid, "remote worker registered");
    Ok(Json(Registered { process_id }))
}

pub async fn stop(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(process_id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    authorize(&state, &headers).await?;
    let now = state.clock.now();
    state.store.set_process_state(process_id, ProcessState::Running, ProcessState::Stopped, now).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn heartbeat(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(process_id): Path<i64>,
    payload: Result<Json<HeartbeatRequest>, JsonRejection>,
) -> Result<Json<Heartbeat>, ApiError> {
    authorize(&state, &headers).await?;
    let request = body(payload)?;
    Ok(Json(state.store.heartbeat(process_id, &request.leases, state.clock.now()).await?))
}

/// Answers as soon as something was claimed, or when the wait is over.
pub async fn claim(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(process_id): Path<i64>,
    payload: Result<Json<ClaimRequest>, JsonRejection>,
) -> Result<Json<Vec<Claimed>>, ApiError> {
    authorize(&state, &headers).await?;
    let request = body(payload)?;
    let claimant = Claimant { process_id, hostname: request.hostname, queues: request.queues };
    let limit = request.limit.min(MAX_CLAIM);
    let deadline = Instant::now() + Duration::from_millis(request.wait_ms.min(MAX_CLAIM_WAIT_MS));
    let mut changes = state.changes.clone();
    loop {
        // Marked before looking, so a change committed meanwhile still wakes us.
        changes.mark_unchanged();
        let claimed = state.store.claim(Scope::All, &claimant, limit, state.clock.now()).await?;
        if !claimed.is_empty() || limit == 0 || Instant::now() >= deadline {
            return Ok(Json(claimed));
        }
        let recheck = deadline.min(Instant::now() + CLAIM_RECHECK);
        tokio::select! {
            _ = changes.changed() => {}
            () = tokio::time::sleep_until(recheck) => {}
        }
    }
}

pub async fn attempt_process(
    State(state): State<AppState>,
    headers: HeaderMap,
    payload: Result<Json<AttemptStarted>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    authorize(&state, &headers).await?;
    let started = body(payload)?;
    state
        .store
        .record_attempt_process(started.ti_pk, started.try_number, started.pid, started.pid_start, &started.log_path)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn finish(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(process_id): Path<i64>,
    payload: Result<Json<FinishRequest>, JsonRejection>,
) -> Result<Json<FinishAnswer>, ApiError> {
    authorize(&state, &headers).await?;
    let request = body(payload)?;
    for end in &request.ends {
        check_task_transition(TaskState::Running, end.end.state)
            .map_err(|error| ApiError::BadRequest(format!("attempt {}: {error}", end.ti_pk)))?;
    }
    // Logs first: once the end is recorded, a reader takes the log as complete.
    state.store.append_logs(&request.logs).await?;
    let recorded =
        state.store.finish_attempts(&request.ends, &format!("worker:{process_id}"), state.clock.now()).await?;
    Ok(Json(FinishAnswer { recorded }))
}

pub async fn append_logs(
    State(state): State<AppState>,
    headers: HeaderMap,
    payload: Result<Json<Vec<LogChunk>>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    authorize(&state, &headers).await?;
    let chunks = body(payload)?;
    state.store.append_logs(&chunks).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Variables and connections in clear, for a worker's templates. Only a worker
/// token opens this; the Fernet key stays on the server.
pub async fn secrets(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<updraft_store::Secrets>, ApiError> {
    authorize(&state, &headers).await?;
    let secrets = updraft_runner::secrets::load(state.store.as_ref(), state.cipher.as_deref())
        .await
        .map_err(ApiError::Internal)?;
    Ok(Json(secrets))
}

#[derive(Debug, serde::Deserialize)]
pub struct RunOf {
    dag_id: String,
    run_id: String,
}

/// The outputs of a run's tasks, for a worker's templates.
pub async fn outputs(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::extract::Query(run): axum::extract::Query<RunOf>,
) -> Result<Json<std::collections::BTreeMap<String, String>>, ApiError> {
    authorize(&state, &headers).await?;
    Ok(Json(state.store.run_outputs(&run.dag_id, &run.run_id).await?))
}

/// The stored definition of a DAG version, as the scheduler recorded it.
pub async fn definition(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((dag_id, version)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&state, &headers).await?;
    match state.store.dag_definition(&dag_id, &version).await? {
        Some(definition) => Ok(([(header::CONTENT_TYPE, "application/json")], definition)),
        None => Err(ApiError::NotFound(format!("DAG `{dag_id}` has no version `{version}`"))),
    }
}
