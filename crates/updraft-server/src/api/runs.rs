//! `/api/v1/dags/{dag_id}/runs`: list, get, trigger, mark, delete.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use updraft_core::plan::{DagVersion, RunType};
use updraft_core::{RunId, RunState};
use updraft_store::NewRun;

use super::dags::{editable_dag, find_dag, readable_dag};
use super::extract::{Json, Path, Query};
use super::model::{DagRun, DagRunList, DagRunListQuery, DagRunPatch, TriggerDagRun, page};
use crate::error::Problem;
use crate::{ApiError, AppState, Caller};

/// Runs of a DAG, newest logical date first.
#[utoipa::path(
    get, path = "/api/v1/dags/{dag_id}/runs", tag = "DAG runs", params(("dag_id" = String, Path), DagRunListQuery),
    responses(
        (status = 200, body = DagRunList),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_runs(
    State(state): State<AppState>,
    caller: Caller,
    Path(dag_id): Path<String>,
    Query(query): Query<DagRunListQuery>,
) -> Result<axum::Json<DagRunList>, ApiError> {
    readable_dag(&state, &caller, &dag_id).await?;
    let (limit, offset) = page(query.limit, query.offset)?;
    let wanted = query.state.map(RunState::from);
    find_dag(&state, &dag_id).await?;
    let fetch = u32::try_from(offset + limit).unwrap_or(u32::MAX);
    let runs = state.store.list_runs(&dag_id, wanted, fetch).await?;
    let dag_runs = runs.into_iter().skip(offset).map(DagRun::from).collect();
    Ok(axum::Json(DagRunList { dag_runs }))
}

/// One run.
#[utoipa::path(
    get, path = "/api/v1/dags/{dag_id}/runs/{run_id}", tag = "DAG runs",
    params(("dag_id" = String, Path), ("run_id" = String, Path)),
    responses((status = 200, body = DagRun), (status = 404, body = Problem, content_type = "application/problem+json"))
)]
pub async fn get_run(
    State(state): State<AppState>,
    caller: Caller,
    Path((dag_id, run_id)): Path<(String, String)>,
) -> Result<axum::Json<DagRun>, ApiError> {
    readable_dag(&state, &caller, &dag_id).await?;
    Ok(axum::Json(DagRun::from(find_run(&state, &dag_id, &run_id).await?)))
}

/// Triggers a run of the DAG's current version. It starts when the scheduler
/// next looks (at once, unless the DAG is paused or at `max_active_runs`).
#[utoipa::path(
    post, path = "/api/v1/dags/{dag_id}/runs", tag = "DAG runs", params(("dag_id" = String, Path)),
    request_body = TriggerDagRun,
    responses(
        (status = 201, body = DagRun, headers(("location" = String, description = "The run's URL"))),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn trigger_run(
    State(state): State<AppState>,
    caller: Caller,
    Path(dag_id): Path<String>,
    Json(request): Json<TriggerDagRun>,
) -> Result<impl IntoResponse, ApiError> {
    let run = trigger(&state, &caller, &dag_id, request).await?;
    let location = format!("/api/v1/dags/{}/runs/{}", encode(&dag_id), encode(&run.run_id));
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], axum::Json(DagRun::from(run))))
}

/// Creates a manual run of the DAG's current version (the API's and the UI's
/// trigger).
pub async fn trigger(
    state: &AppState,
    caller: &Caller,
    dag_id: &str,
    request: TriggerDagRun,
) -> Result<updraft_store::RunRow, ApiError> {
    let row = editable_dag(state, caller, dag_id).await?;
    if !row.is_active {
        return Err(ApiError::Conflict(format!(
            "DAG `{dag_id}` is not active: its file `{}` is gone from the DAGs folder",
            row.fileloc
        )));
    }
    let version = DagVersion(row.latest_version.clone());
    let dag = state.definitions.get(state.store.as_ref(), dag_id, &version).await?;
    let logical_date = match request.logical_date.as_deref() {
        None => state.clock.now(),
        Some(text) => updraft_core::timetable::parse_date_in_zone(text, dag.tz())
            .map_err(|error| ApiError::BadRequest(format!("invalid `logical_date` `{text}`: {error}")))?,
    };
    let run_id = match request.run_id {
        None => RunType::Manual.run_id(logical_date),
        Some(text) => run_id(&text)?,
    };
    let run = NewRun {
        interval: dag.timetable().manual_interval(logical_date),
        dag: dag.clone(),
        version,
        run_id: run_id.clone(),
        run_type: RunType::Manual,
        logical_date,
        conf: request.conf.unwrap_or_default(),
        owner_process: None,
        with_retries: true,
    };
    let created = state.store.create_run(&run, &caller.actor(), state.clock.now()).await?;
    if created.is_none() {
        return Err(ApiError::Conflict(format!("DAG `{dag_id}` already has a run `{run_id}`")));
    }
    crate::audit::record(state, &caller.actor(), "trigger", &format!("{dag_id}/{run_id}"), None).await;
    find_run(state, dag_id, run_id.as_str()).await
}

pub async fn find_run(state: &AppState, dag_id: &str, run_id: &str) -> Result<updraft_store::RunRow, ApiError> {
    match state.store.get_run(dag_id, run_id).await? {
        Some(run) => Ok(run),
        None => {
            find_dag(state, dag_id).await?;
            Err(ApiError::NotFound(format!("DAG `{dag_id}` has no run `{run_id}`")))
        }
    }
}

/// A run id given by the caller, held to the pattern `TriggerDagRun` documents
/// (stricter than run ids in general: no spaces, so it is safe in any URL).
fn run_id(text: &str) -> Result<RunId, ApiError> {
    let mut chars = text.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || "_.+:~-".contains(c));
    if !first_ok || !rest_ok || text.len() > 250 {
        return Err(ApiError::BadRequest(format!(
            "invalid `run_id` `{text}`: use up to 250 letters, digits and `_.+:~-`, starting with a letter, digit or `_`"
        )));
    }
    RunId::new(text).map_err(|error| ApiError::BadRequest(format!("invalid `run_id` `{text}`: {error}")))
}

pub use updraft_core::links::encode;

/// Applies an operator's request to a run: decided by `updraft_core::intervene`
/// from the run's current states, written all or nothing.
pub async fn intervene(
    state: &AppState,
    caller: &Caller,
    run: &updraft_store::RunRow,
    request: updraft_core::intervene::Request,
) -> Result<(), ApiError> {
    use updraft_core::intervene::{Refusal, TaskInstanceState};
    let dag = state.definitions.get(state.store.as_ref(), &run.dag_id, &run.version).await?;
    let rows = state.store.task_instances(run.run_pk).await?;
    let task_instances: Vec<TaskInstanceState> =
        rows.iter().map(updraft_store::TaskInstanceRow::intervention_state).collect();
    let change = updraft_core::intervene::intervene(&dag, run.state, &task_instances, &request).map_err(|refusal| {
        let detail = format!("run `{}` of DAG `{}`: {refusal}", run.run_id, run.dag_id);
        match refusal {
            // The run exists; the request names tasks it does not have.
            Refusal::UnknownTask(_) => ApiError::Rejected(StatusCode::UNPROCESSABLE_ENTITY, detail),
            Refusal::Busy { .. } | Refusal::RunAlready(_) => ApiError::Conflict(detail),
            Refusal::BadMark(_) | Refusal::BadRunMark(_) | Refusal::NoTasks => ApiError::BadRequest(detail),
        }
    })?;
    if change.is_empty() {
        return Ok(());
    }
    state.store.intervene(run.run_pk, &change, &caller.actor(), state.clock.now()).await?;
    let (action, detail) = match &request {
        updraft_core::intervene::Request::MarkTasks { task_ids, to } => {
            ("mark", format!("{} -> {to}", task_ids.join(", ")))
        }
        updraft_core::intervene::Request::Clear { task_ids, downstream } => {
            ("clear", format!("{}{}", task_ids.join(", "), if *downstream { " and downstream" } else { "" }))
        }
        updraft_core::intervene::Request::MarkInstance { ti_pk, to } => {
            let label = rows.iter().find(|ti| ti.ti_pk == *ti_pk).map(|ti| ti.label()).unwrap_or_default();
            ("mark", format!("{label} -> {to}"))
        }
        updraft_core::intervene::Request::MarkRun { to } => ("mark_run", format!("-> {to}")),
    };
    let target = format!("{}/{}", run.dag_id, run.run_id);
    crate::audit::record(state, &caller.actor(), action, &target, Some(detail)).await;
    tracing::info!(dag_id = %run.dag_id, run_id = %run.run_id, actor = %caller.actor(), ?request, "operator change applied");
    Ok(())
}

/// Marks a run `success` or `failed` (refused while any of its tasks is queued or
/// running).
#[utoipa::path(
    patch, path = "/api/v1/dags/{dag_id}/runs/{run_id}", tag = "DAG runs",
    params(("dag_id" = String, Path), ("run_id" = String, Path)), request_body = DagRunPatch,
    responses(
        (status = 200, body = DagRun),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn patch_run(
    State(state): State<AppState>,
    caller: Caller,
    Path((dag_id, run_id)): Path<(String, String)>,
    Json(patch): Json<DagRunPatch>,
) -> Result<axum::Json<DagRun>, ApiError> {
    editable_dag(&state, &caller, &dag_id).await?;
    let run = find_run(&state, &dag_id, &run_id).await?;
    let to = RunState::from(patch.state);
    intervene(&state, &caller, &run, updraft_core::intervene::Request::MarkRun { to }).await?;
    Ok(axum::Json(DagRun::from(find_run(&state, &dag_id, &run_id).await?)))
}

/// Deletes a finished run with its task instances, attempts and logs.
#[utoipa::path(
    delete, path = "/api/v1/dags/{dag_id}/runs/{run_id}", tag = "DAG runs",
    params(("dag_id" = String, Path), ("run_id" = String, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_run(
    State(state): State<AppState>,
    caller: Caller,
    Path((dag_id, run_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    editable_dag(&state, &caller, &dag_id).await?;
    let run = find_run(&state, &dag_id, &run_id).await?;
    if !state.store.delete_run(run.run_pk).await? {
        return Err(ApiError::Conflict(format!(
            "run `{run_id}` of DAG `{dag_id}` is {}: only a finished run can be deleted; mark it success or failed first",
            run.state
        )));
    }
    tracing::info!(%dag_id, %run_id, actor = %caller.actor(), "run deleted");
    crate::audit::record(&state, &caller.actor(), "delete_run", &format!("{dag_id}/{run_id}"), None).await;
    Ok(StatusCode::NO_CONTENT)
}
