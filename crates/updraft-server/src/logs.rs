//! An attempt's log, while it runs and after:
//! `GET /api/v1/dags/{dag_id}/runs/{run_id}/tasks/{task_id}/tries/{try_number}/log`
//! returns a byte range (`?offset=N&limit=M`) or the last lines (`?tail=N`), with
//! the offset to ask from next in `X-Updraft-Log-Offset`; `.../log/stream` follows
//! it live as Server-Sent Events until the attempt ends.
//!
//! Remote workers ship their logs to the store; an attempt run in a process on
//! this machine (`standalone`, a worker next to the server) has its log file here.

use std::convert::Infallible;
use std::io::SeekFrom;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use updraft_core::TaskState;
use updraft_store::AttemptRow;

use crate::api::model::{LogEvent, LogEventKind};
use crate::api::{Path, Query};
use crate::error::Problem;
use crate::{ApiError, AppState, Caller};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// The byte to start from (default 0): pass the last answer's
    /// `X-Updraft-Log-Offset` to get only what was written since.
    #[param(minimum = 0)]
    offset: Option<i64>,
    /// At most this many bytes (default and most: 8 MiB).
    #[param(minimum = 0, maximum = 8388608)]
    limit: Option<i64>,
    /// Only the last this many lines (of the text from `offset` on).
    #[param(minimum = 0, maximum = 1000000)]
    tail: Option<i64>,
    /// Which instance of a mapped task (from 0); needed for a mapped task.
    #[param(minimum = 0)]
    map_index: Option<i32>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// The byte to start from (default 0), e.g. after a `tail` request.
    #[serde(default)]
    #[param(minimum = 0)]
    offset: i64,
    /// Which instance of a mapped task (from 0); needed for a mapped task.
    #[param(minimum = 0)]
    map_index: Option<i32>,
}

/// The most one answer carries; a reader asks again from the next offset.
const MAX_ANSWER: u64 = 8 << 20;

/// How often a stream looks for new bytes when no change is announced (a local
/// log file grows without telling the store).
const STREAM_POLL: Duration = Duration::from_millis(500);

pub type Attempt = (String, String, String, u32);

/// An attempt's log, while it runs and after: a byte range, or the last lines.
/// Follow a running attempt by asking again from the offset in
/// `X-Updraft-Log-Offset` until `X-Updraft-Attempt-State` is no longer `running`,
/// or use `.../log/stream`.
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
    caller: Caller,
    Path(attempt): Path<Attempt>,
    Query(query): Query<LogQuery>,
) -> Result<Response, ApiError> {
    crate::api::readable_dag(&state, &caller, &attempt.0).await?;
    let offset = non_negative("offset", query.offset)?;
    let limit = non_negative("limit", query.limit)?.unwrap_or(MAX_ANSWER);
    if limit > MAX_ANSWER {
        return Err(ApiError::BadRequest(format!("`limit` must be at most {MAX_ANSWER}, not {limit}")));
    }
    let tail = match non_negative("tail", query.tail)? {
        Some(lines) if lines > 1_000_000 => {
            return Err(ApiError::BadRequest(format!("`tail` must be at most 1000000, not {lines}")));
        }
        other => other.map(|lines| lines as usize),
    };
    let (ti_pk, row) = find_attempt(&state, &attempt, query.map_index).await?;
    let (start, data) = match tail {
        Some(lines) => {
            let (start, data) = read(&state, ti_pk, &row, offset).await?;
            let cut = tail_start(&data, lines);
            (start + cut as u64, data[cut..].to_vec())
        }
        None => {
            let offset = offset.unwrap_or(0);
            let mut data = read(&state, ti_pk, &row, Some(offset)).await?.1;
            data.truncate(limit as usize);
            (offset, data)
        }
    };
    let next = start + data.len() as u64;
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8")),
        (HeaderName::from_static("x-updraft-log-offset"), HeaderValue::from(next)),
        (HeaderName::from_static("x-updraft-attempt-state"), HeaderValue::from_static(row.state.as_str())),
    ];
    Ok((headers, data).into_response())
}

/// Follows an attempt's log as Server-Sent Events: `log` events carry new text
/// (their `id` is the offset after it, so a reconnecting client resumes with
/// `Last-Event-ID` semantics by passing it as `offset`), and one `end` event
/// carries the attempt's final state when it is no longer running.
#[utoipa::path(
    get, path = "/api/v1/dags/{dag_id}/runs/{run_id}/tasks/{task_id}/tries/{try_number}/log/stream",
    tag = "Task instances",
    params(
        ("dag_id" = String, Path), ("run_id" = String, Path), ("task_id" = String, Path),
        ("try_number" = u32, Path, description = "The try, from 1"), StreamQuery,
    ),
    responses(
        (status = 200, content_type = "text/event-stream", body = crate::api::model::LogEvent),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn attempt_log_stream(
    State(state): State<AppState>,
    caller: Caller,
    Path(attempt): Path<Attempt>,
    Query(query): Query<StreamQuery>,
) -> Result<Response, ApiError> {
    crate::api::readable_dag(&state, &caller, &attempt.0).await?;
    let offset = non_negative("offset", Some(query.offset))?.unwrap_or(0);
    let (ti_pk, _) = find_attempt(&state, &attempt, query.map_index).await?;
    let start = Follow { state, attempt, ti_pk, offset, done: false };
    let events = futures_util::stream::unfold(start, |mut follow| async move {
        if follow.done {
            return None;
        }
        let event = follow.next().await;
        Some((Ok::<_, Infallible>(event), follow))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

struct Follow {
    state: AppState,
    attempt: Attempt,
    ti_pk: i64,
    offset: u64,
    done: bool,
}

impl Follow {
    /// Waits for new text or the end. Errors end the stream with an `error` event.
    async fn next(&mut self) -> Event {
        let mut changes = self.state.changes.clone();
        loop {
            changes.mark_unchanged();
            // The task instance was found when the stream began: each look is one query.
            let row = match attempt_row(&self.state, self.ti_pk, &self.attempt).await {
                Ok(row) => row,
                Err(error) => return self.fail(error),
            };
            let data = match read(&self.state, self.ti_pk, &row, Some(self.offset)).await {
                Ok((_, data)) => data,
                Err(error) => return self.fail(error),
            };
            if !data.is_empty() {
                self.offset += data.len() as u64;
                let text = String::from_utf8_lossy(&data).into_owned();
                return LogEvent { event: LogEventKind::Log, id: Some(self.offset.to_string()), data: text }.into();
            }
            if row.state != TaskState::Running {
                self.done = true;
                return LogEvent { event: LogEventKind::End, id: None, data: row.state.as_str().to_string() }.into();
            }
            tokio::select! {
                _ = changes.changed() => {}
                () = tokio::time::sleep(STREAM_POLL) => {}
            }
        }
    }

    fn fail(&mut self, error: ApiError) -> Event {
        self.done = true;
        let detail = error.into_parts().1;
        LogEvent { event: LogEventKind::Error, id: None, data: detail }.into()
    }
}

/// The last `lines` lines of an attempt's log for a page (which has found its task
/// instance, `ti_pk`): the text, the offset after it (to follow from), and the
/// attempt's state.
pub async fn tail_for_page(
    state: &AppState,
    ti_pk: i64,
    attempt: &Attempt,
    lines: usize,
) -> Result<(Vec<u8>, u64, TaskState), ApiError> {
    let row = attempt_row(state, ti_pk, attempt).await?;
    let (start, data) = read(state, ti_pk, &row, None).await?;
    let cut = tail_start(&data, lines);
    Ok((data[cut..].to_vec(), start + data.len() as u64, row.state))
}

fn non_negative(name: &str, value: Option<i64>) -> Result<Option<u64>, ApiError> {
    match value {
        Some(number) if number < 0 => Err(ApiError::BadRequest(format!("`{name}` must be 0 or more, not {number}"))),
        other => Ok(other.map(|number| number as u64)),
    }
}

async fn find_attempt(
    state: &AppState,
    attempt: &Attempt,
    map_index: Option<i32>,
) -> Result<(i64, AttemptRow), ApiError> {
    let (dag_id, run_id, task_id, _) = attempt;
    let task_instance = crate::api::find_task_instance(state, dag_id, run_id, task_id, map_index).await?;
    Ok((task_instance.ti_pk, attempt_row(state, task_instance.ti_pk, attempt).await?))
}

/// The attempt's row, once its task instance is known.
async fn attempt_row(state: &AppState, ti_pk: i64, attempt: &Attempt) -> Result<AttemptRow, ApiError> {
    let (_, run_id, task_id, try_number) = attempt;
    state
        .store
        .task_attempts(ti_pk)
        .await?
        .into_iter()
        .find(|row| row.try_number == *try_number)
        .ok_or_else(|| ApiError::NotFound(format!("task `{task_id}` of run `{run_id}` has no try {try_number} (yet)")))
}

/// The log from `offset` on (`None`: the last 8 MiB), with where it starts.
async fn read(state: &AppState, ti_pk: i64, row: &AttemptRow, offset: Option<u64>) -> Result<(u64, Vec<u8>), ApiError> {
    if let Some(data) = state.store.read_log(ti_pk, row.try_number, offset.unwrap_or(0)).await? {
        return Ok(match offset {
            Some(offset) => (offset, data),
            None => {
                let cut = data.len().saturating_sub(MAX_ANSWER as usize);
                (cut as u64, data[cut..].to_vec())
            }
        });
    }
    match row.log_path.as_deref() {
        Some(path) => read_local(path, offset).await.ok_or_else(|| not_here(row)),
        // The attempt has not started its process yet: an empty log so far.
        None if row.state == TaskState::Running => Ok((offset.unwrap_or(0), Vec::new())),
        None => Err(not_here(row)),
    }
}

fn not_here(attempt: &AttemptRow) -> ApiError {
    let host = attempt.hostname.as_deref().unwrap_or("an unknown host");
    ApiError::NotFound(format!(
        "the log of try {} is not on this server: it ran on `{host}`, and no part of it reached the store",
        attempt.try_number
    ))
}

/// The log file from `offset` on (`None`: its last 8 MiB), if it is on this machine.
async fn read_local(path: &str, offset: Option<u64>) -> Option<(u64, Vec<u8>)> {
    let mut file = tokio::fs::File::open(path).await.ok()?;
    let start = match offset {
        Some(offset) => offset,
        None => file.metadata().await.ok()?.len().saturating_sub(MAX_ANSWER),
    };
    file.seek(SeekFrom::Start(start)).await.ok()?;
    let mut data = Vec::new();
    file.take(MAX_ANSWER).read_to_end(&mut data).await.ok()?;
    Some((start, data))
}

/// Where the last `lines` lines of `data` begin (a final newline ends the last line).
fn tail_start(data: &[u8], lines: usize) -> usize {
    if lines == 0 {
        return data.len();
    }
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    let mut seen = 0;
    for (at, byte) in body.iter().enumerate().rev() {
        if *byte == b'\n' {
            seen += 1;
            if seen == lines {
                return at + 1;
            }
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::tail_start;

    #[test]
    fn tails() {
        let log = b"one\ntwo\nthree\n";
        assert_eq!(&log[tail_start(log, 1)..], b"three\n");
        assert_eq!(&log[tail_start(log, 2)..], b"two\nthree\n");
        assert_eq!(&log[tail_start(log, 9)..], log);
        assert_eq!(&log[tail_start(log, 0)..], b"");
        assert_eq!(&b"partial"[tail_start(b"partial", 1)..], b"partial");
        assert_eq!(&b"a\nb"[tail_start(b"a\nb", 1)..], b"b");
    }
}
