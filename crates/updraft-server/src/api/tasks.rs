//! `/api/v1/dags/{dag_id}/runs/{run_id}/tasks`: the task instances of a run, and
//! an operator's changes to them (mark, clear).

use axum::extract::State;
use updraft_core::TaskState;
use updraft_core::intervene::Request;

use super::dags::{editable_dag, readable_dag};
use super::extract::{Json, Path, Query};
use super::model::{
    Attempt, ClearTaskInstances, TaskInstance, TaskInstanceDetail, TaskInstanceList, TaskInstancePatch, TaskOutput,
};
use super::runs::{find_run, intervene};
use crate::error::Problem;
use crate::{ApiError, AppState, Caller};

/// The task instances of a run, in the DAG's order of creation.
#[utoipa::path(
    get, path = "/api/v1/dags/{dag_id}/runs/{run_id}/tasks", tag = "Task instances",
    params(("dag_id" = String, Path), ("run_id" = String, Path)),
    responses(
        (status = 200, body = TaskInstanceList),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_task_instances(
    State(state): State<AppState>,
    caller: Caller,
    Path((dag_id, run_id)): Path<(String, String)>,
) -> Result<axum::Json<TaskInstanceList>, ApiError> {
    readable_dag(&state, &caller, &dag_id).await?;
    let run = find_run(&state, &dag_id, &run_id).await?;
    let task_instances = state.store.task_instances(run.run_pk).await?.into_iter().map(TaskInstance::from).collect();
    Ok(axum::Json(TaskInstanceList { task_instances }))
}

/// One task instance, with its attempts.
#[utoipa::path(
    get, path = "/api/v1/dags/{dag_id}/runs/{run_id}/tasks/{task_id}", tag = "Task instances",
    params(("dag_id" = String, Path), ("run_id" = String, Path), ("task_id" = String, Path), MapIndexQuery),
    responses(
        (status = 200, body = TaskInstanceDetail),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_task_instance(
    State(state): State<AppState>,
    caller: Caller,
    Path((dag_id, run_id, task_id)): Path<(String, String, String)>,
    Query(query): Query<MapIndexQuery>,
) -> Result<axum::Json<TaskInstanceDetail>, ApiError> {
    readable_dag(&state, &caller, &dag_id).await?;
    let task_instance = find_task_instance(&state, &dag_id, &run_id, &task_id, query.map_index).await?;
    let attempts = state.store.task_attempts(task_instance.ti_pk).await?.into_iter().map(Attempt::from).collect();
    Ok(axum::Json(TaskInstanceDetail { task_instance: TaskInstance::from(task_instance), dag_id, run_id, attempts }))
}

/// What the task handed on to its downstream tasks, from its latest successful try.
#[utoipa::path(
    get, path = "/api/v1/dags/{dag_id}/runs/{run_id}/tasks/{task_id}/output", tag = "Task instances",
    params(("dag_id" = String, Path), ("run_id" = String, Path), ("task_id" = String, Path), MapIndexQuery),
    responses(
        (status = 200, body = TaskOutput),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_task_output(
    State(state): State<AppState>,
    caller: Caller,
    Path((dag_id, run_id, task_id)): Path<(String, String, String)>,
    Query(query): Query<MapIndexQuery>,
) -> Result<axum::Json<TaskOutput>, ApiError> {
    readable_dag(&state, &caller, &dag_id).await?;
    // A mapped task without `map_index` hands on the list of its instances' outputs.
    let run = find_run(&state, &dag_id, &run_id).await?;
    let instances = task_instances_of(&state, &run, &task_id).await?;
    let is_mapped = instances.iter().any(|ti| ti.map_index >= 0);
    if query.map_index.is_some() || !is_mapped {
        pick_instance(instances, &run_id, &task_id, query.map_index)?;
    }
    let output = shown_output(&state, &dag_id, &run_id, &task_id, query.map_index)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("task `{task_id}` of run `{run_id}` has no output")))?;
    Ok(axum::Json(TaskOutput { output }))
}

/// A task's output as the API and the UI show it: secret values (from the
/// database and the environment) as `***`, also inside longer strings.
pub async fn shown_output(
    state: &AppState,
    dag_id: &str,
    run_id: &str,
    task_id: &str,
    map_index: Option<i32>,
) -> Result<Option<serde_json::Value>, ApiError> {
    let Some(text) = state.store.run_outputs(dag_id, run_id).await?.remove(task_id) else { return Ok(None) };
    let text = match map_index {
        None => text,
        Some(index) => match instance_output(&text, index) {
            Some(text) => text,
            None => return Ok(None),
        },
    };
    let mut secrets =
        updraft_runner::secrets::load(state.store.as_ref(), state.cipher.as_deref()).await.unwrap_or_default();
    let _ = updraft_runner::secrets::overlay_environment(&mut secrets, std::env::vars());
    Ok(Some(masked_output(&updraft_runner::secrets::Masker::new(&secrets), &text)))
}

/// An output's JSON text with its secret values as `***`.
pub fn masked_output(masker: &updraft_runner::secrets::Masker, text: &str) -> serde_json::Value {
    let masked = masker.mask(text).into_owned();
    // A masked number is no longer JSON: then the text is shown as it is.
    serde_json::from_str(&masked).unwrap_or(serde_json::Value::String(masked))
}

/// One mapped instance's output, out of the list a mapped task hands on.
pub fn instance_output(list: &str, map_index: i32) -> Option<String> {
    let mut outputs: Vec<serde_json::Value> = serde_json::from_str(list).ok()?;
    let index = usize::try_from(map_index).ok().filter(|index| *index < outputs.len())?;
    Some(outputs.swap_remove(index)).filter(|output| !output.is_null()).map(|output| output.to_string())
}

/// `?map_index=` picks one instance of a mapped task.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MapIndexQuery {
    /// Which instance of a mapped task (from 0); needed for a mapped task.
    #[param(minimum = 0)]
    pub map_index: Option<i32>,
}

/// A task instance by task id and, for a mapped task, map index.
pub async fn find_task_instance(
    state: &AppState,
    dag_id: &str,
    run_id: &str,
    task_id: &str,
    map_index: Option<i32>,
) -> Result<updraft_store::TaskInstanceRow, ApiError> {
    let run = find_run(state, dag_id, run_id).await?;
    pick_instance(task_instances_of(state, &run, task_id).await?, &run.run_id, task_id, map_index)
}

/// A run's instances of one task: one, or a mapped task's many; 404 if none.
pub async fn task_instances_of(
    state: &AppState,
    run: &updraft_store::RunRow,
    task_id: &str,
) -> Result<Vec<updraft_store::TaskInstanceRow>, ApiError> {
    let instances: Vec<updraft_store::TaskInstanceRow> =
        state.store.task_instances(run.run_pk).await?.into_iter().filter(|ti| ti.task_id == task_id).collect();
    if instances.is_empty() {
        let (run_id, dag_id) = (&run.run_id, &run.dag_id);
        return Err(ApiError::NotFound(format!("run `{run_id}` of DAG `{dag_id}` has no task `{task_id}`")));
    }
    Ok(instances)
}

/// One of a task's instances: the one at `map_index`, or the only one of a task
/// that is not mapped.
pub fn pick_instance(
    mut instances: Vec<updraft_store::TaskInstanceRow>,
    run_id: &str,
    task_id: &str,
    map_index: Option<i32>,
) -> Result<updraft_store::TaskInstanceRow, ApiError> {
    if let Some(index) = map_index.filter(|index| *index < 0) {
        return Err(ApiError::BadRequest(format!("`map_index` must be 0 or more, not {index}")));
    }
    match map_index {
        Some(index) => instances.into_iter().find(|ti| ti.map_index == index).ok_or_else(|| {
            ApiError::NotFound(format!("task `{task_id}` of run `{run_id}` has no mapped instance {index}"))
        }),
        None if instances.len() == 1 && instances[0].map_index < 0 => Ok(instances.remove(0)),
        None => Err(ApiError::BadRequest(format!(
            "task `{task_id}` is mapped into {} instances: name one with `?map_index=` (0 to {})",
            instances.len(),
            instances.len() - 1
        ))),
    }
}

/// Runs task instances of a run again (refused if any of them, or of their
/// downstream when asked, is queued or running).
#[utoipa::path(
    post, path = "/api/v1/dags/{dag_id}/runs/{run_id}/clear", tag = "Task instances",
    params(("dag_id" = String, Path), ("run_id" = String, Path)), request_body = ClearTaskInstances,
    responses(
        (status = 200, body = TaskInstanceList, description = "The run's task instances after the change"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn clear(
    State(state): State<AppState>,
    caller: Caller,
    Path((dag_id, run_id)): Path<(String, String)>,
    Json(request): Json<ClearTaskInstances>,
) -> Result<axum::Json<TaskInstanceList>, ApiError> {
    editable_dag(&state, &caller, &dag_id).await?;
    let run = find_run(&state, &dag_id, &run_id).await?;
    let request = Request::Clear { task_ids: request.task_ids, downstream: request.downstream };
    intervene(&state, &caller, &run, request).await?;
    let task_instances = state.store.task_instances(run.run_pk).await?.into_iter().map(TaskInstance::from).collect();
    Ok(axum::Json(TaskInstanceList { task_instances }))
}

/// Marks a task instance `success`, `failed` or `skipped` (refused while it is
/// queued or running); the scheduler carries on from there.
#[utoipa::path(
    patch, path = "/api/v1/dags/{dag_id}/runs/{run_id}/tasks/{task_id}", tag = "Task instances",
    params(("dag_id" = String, Path), ("run_id" = String, Path), ("task_id" = String, Path), MapIndexQuery),
    request_body = TaskInstancePatch,
    responses(
        (status = 200, body = TaskInstance),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn patch_task_instance(
    State(state): State<AppState>,
    caller: Caller,
    Path((dag_id, run_id, task_id)): Path<(String, String, String)>,
    Query(query): Query<MapIndexQuery>,
    Json(patch): Json<TaskInstancePatch>,
) -> Result<axum::Json<TaskInstance>, ApiError> {
    editable_dag(&state, &caller, &dag_id).await?;
    let run = find_run(&state, &dag_id, &run_id).await?;
    let before = find_task_instance(&state, &dag_id, &run_id, &task_id, query.map_index).await?;
    let to = TaskState::from(patch.state);
    intervene(&state, &caller, &run, Request::MarkInstance { ti_pk: before.ti_pk, to }).await?;
    let after = find_task_instance(&state, &dag_id, &run_id, &task_id, query.map_index).await?;
    Ok(axum::Json(TaskInstance::from(after)))
}
