//! `/api/v1/dags/{dag_id}/runs/{run_id}/tasks`: the task instances of a run.

use axum::extract::State;

use super::extract::Path;
use super::model::{Attempt, TaskInstance, TaskInstanceDetail, TaskInstanceList};
use super::runs::find_run;
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
    _caller: Caller,
    Path((dag_id, run_id)): Path<(String, String)>,
) -> Result<axum::Json<TaskInstanceList>, ApiError> {
    let run = find_run(&state, &dag_id, &run_id).await?;
    let task_instances = state.store.task_instances(run.run_pk).await?.into_iter().map(TaskInstance::from).collect();
    Ok(axum::Json(TaskInstanceList { task_instances }))
}

/// One task instance, with its attempts.
#[utoipa::path(
    get, path = "/api/v1/dags/{dag_id}/runs/{run_id}/tasks/{task_id}", tag = "Task instances",
    params(("dag_id" = String, Path), ("run_id" = String, Path), ("task_id" = String, Path)),
    responses(
        (status = 200, body = TaskInstanceDetail),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_task_instance(
    State(state): State<AppState>,
    _caller: Caller,
    Path((dag_id, run_id, task_id)): Path<(String, String, String)>,
) -> Result<axum::Json<TaskInstanceDetail>, ApiError> {
    let task_instance = find_task_instance(&state, &dag_id, &run_id, &task_id).await?;
    let attempts = state.store.task_attempts(task_instance.ti_pk).await?.into_iter().map(Attempt::from).collect();
    Ok(axum::Json(TaskInstanceDetail { task_instance: TaskInstance::from(task_instance), dag_id, run_id, attempts }))
}

pub async fn find_task_instance(
    state: &AppState,
    dag_id: &str,
    run_id: &str,
    task_id: &str,
) -> Result<updraft_store::TaskInstanceRow, ApiError> {
    let run = find_run(state, dag_id, run_id).await?;
    state
        .store
        .task_instances(run.run_pk)
        .await?
        .into_iter()
        .find(|task_instance| task_instance.task_id == task_id)
        .ok_or_else(|| ApiError::NotFound(format!("run `{run_id}` of DAG `{dag_id}` has no task `{task_id}`")))
}
