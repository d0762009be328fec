//! `GET /api/v1/dags/{dag_id}/runs/{run_id}/tasks/{task_id}/tries/{try_number}/log`:
//! an attempt's log, while it runs and after. `?offset=N` returns the bytes from N
//! on, so a reader tails a running attempt by asking again from the offset in
//! `X-Updraft-Log-Offset` until `X-Updraft-Attempt-State` is no longer `running`.
//!
//! Remote workers ship their logs to the store; an attempt run in a process on
//! this machine (`standalone`, a worker next to the server) has its log file here.

use std::io::SeekFrom;

use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::api::{Path, Query};
use crate::error::Problem;
use crate::{ApiError, AppState, Caller};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// The byte to start from (default 0): pass the last answer's
    /// `X-Updraft-Log-Offset` to get only what was written since.
    #[serde(default)]
    offset: u64,
}

/// The most one answer carries; a reader asks again from the next offset.
const MAX_ANSWER: u64 = 8 << 20;

/// An attempt's log, while it runs and after: the bytes from `offset` on (at most
/// 8 MiB per answer). Follow a running attempt by asking again from the offset in
/// `X-Updraft-Log-Offset` until `X-Updraft-Attempt-State` is no longer `running`.
#[utoipa::path(
    get, path = "/api/v1/dags/{dag_id}/runs/{run_id}/tasks/{task_id}/tries/{try_number}/log", tag = "Task instances",
    params(
        ("dag_id" = String, Path), ("run_id" = String, Path), ("task_id" = String, Path),
        ("try_number" = u32, Path, description = "The try, from 1"), LogQuery,
    ),
    responses(
        (status = 200, content_type = "text/plain", body = String, headers(
            ("x-updraft-log-offset" = u64, description = "The offset to ask from next"),
            ("x-updraft-attempt-state" = String, description = "The attempt's state: `running` while it runs"),
        )),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn attempt_log(
    State(state): State<AppState>,
    _caller: Caller,
    Path((dag_id, run_id, task_id, try_number)): Path<(String, String, String, u32)>,
    Query(query): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let run = state
        .store
        .get_run(&dag_id, &run_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("DAG `{dag_id}` has no run `{run_id}`")))?;
    let task_instance = state
        .store
        .task_instances(run.run_pk)
        .await?
        .into_iter()
        .find(|task_instance| task_instance.task_id == task_id)
        .ok_or_else(|| ApiError::NotFound(format!("run `{run_id}` of DAG `{dag_id}` has no task `{task_id}`")))?;
    let attempt = state
        .store
        .task_attempts(task_instance.ti_pk)
        .await?
        .into_iter()
        .find(|attempt| attempt.try_number == try_number)
        .ok_or_else(|| {
            ApiError::NotFound(format!("task `{task_id}` of run `{run_id}` has no try {try_number} (yet)"))
        })?;
    let mut data = match state.store.read_log(task_instance.ti_pk, try_number, query.offset).await? {
        Some(data) => data,
        None => match attempt.log_path.as_deref() {
            Some(path) => read_local(path, query.offset).await.ok_or_else(|| not_here(&attempt))?,
            // The attempt has not started its process yet: an empty log so far.
            None if attempt.state == updraft_core::TaskState::Running => Vec::new(),
            None => return Err(not_here(&attempt)),
        },
    };
    data.truncate(MAX_ANSWER as usize);
    let next = query.offset + data.len() as u64;
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8")),
        (HeaderName::from_static("x-updraft-log-offset"), HeaderValue::from(next)),
        (HeaderName::from_static("x-updraft-attempt-state"), HeaderValue::from_static(attempt.state.as_str())),
    ];
    Ok((headers, data).into_response())
}

fn not_here(attempt: &updraft_store::AttemptRow) -> ApiError {
    let host = attempt.hostname.as_deref().unwrap_or("an unknown host");
    ApiError::NotFound(format!(
        "the log of try {} is not on this server: it ran on `{host}`, and no part of it reached the store",
        attempt.try_number
    ))
}

/// The log file from `offset` on, if it is on this machine.
async fn read_local(path: &str, offset: u64) -> Option<Vec<u8>> {
    let mut file = tokio::fs::File::open(path).await.ok()?;
    file.seek(SeekFrom::Start(offset)).await.ok()?;
    let mut data = Vec::new();
    file.take(MAX_ANSWER).read_to_end(&mut data).await.ok()?;
    Some(data)
}
