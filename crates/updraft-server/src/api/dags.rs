//! `/api/v1/dags`: list, get, pause and unpause.

use axum::extract::State;

use super::extract::{Json, Path, Query};
use super::model::{Dag, DagList, DagListQuery, DagPatch, DagSource, DagSourceQuery, page};
use crate::error::Problem;
use updraft_auth::Action;

use crate::{ApiError, AppState, Caller};

/// DAGs, filtered and paged, in id order.
#[utoipa::path(
    get, path = "/api/v1/dags", tag = "DAGs", params(DagListQuery),
    responses((status = 200, body = DagList), (status = 400, body = Problem, content_type = "application/problem+json"))
)]
pub async fn list_dags(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<DagListQuery>,
) -> Result<axum::Json<DagList>, ApiError> {
    let (limit, offset) = page(query.limit, query.offset)?;
    let filter = DagFilter {
        tags: query
            .tags
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|tag| !tag.is_empty())
            .map(str::to_string)
            .collect(),
        owner: query.owner,
        paused: query.paused,
        search: query.search,
        include_inactive: query.include_inactive == Some(true),
    };
    let matching: Vec<Dag> = state
        .store
        .list_dags()
        .await?
        .into_iter()
        .filter(|dag| filter.matches(dag) && caller.may(Action::ReadDag { owner: &dag.owner }))
        .map(Dag::from)
        .collect();
    let total_entries = matching.len();
    let dags = matching.into_iter().skip(offset).take(limit).collect();
    Ok(axum::Json(DagList { dags, total_entries }))
}

/// One DAG.
#[utoipa::path(
    get, path = "/api/v1/dags/{dag_id}", tag = "DAGs", params(("dag_id" = String, Path)),
    responses((status = 200, body = Dag), (status = 404, body = Problem, content_type = "application/problem+json"))
)]
pub async fn get_dag(
    State(state): State<AppState>,
    caller: Caller,
    Path(dag_id): Path<String>,
) -> Result<axum::Json<Dag>, ApiError> {
    Ok(axum::Json(Dag::from(readable_dag(&state, &caller, &dag_id).await?)))
}

/// Pauses or unpauses a DAG: a paused DAG gets no scheduled runs, and its runs
/// start no new tasks.
#[utoipa::path(
    patch, path = "/api/v1/dags/{dag_id}", tag = "DAGs", params(("dag_id" = String, Path)), request_body = DagPatch,
    responses(
        (status = 200, body = Dag),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn patch_dag(
    State(state): State<AppState>,
    caller: Caller,
    Path(dag_id): Path<String>,
    Json(patch): Json<DagPatch>,
) -> Result<axum::Json<Dag>, ApiError> {
    editable_dag(&state, &caller, &dag_id).await?;
    state.store.set_paused(&dag_id, patch.is_paused, state.clock.now()).await?;
    tracing::info!(%dag_id, paused = patch.is_paused, actor = %caller.actor(), "DAG paused state set");
    let action = if patch.is_paused { "pause" } else { "unpause" };
    crate::audit::record(&state, &caller.actor(), action, &dag_id, None).await;
    Ok(axum::Json(Dag::from(find_dag(&state, &dag_id).await?)))
}

/// The DAG file's text, as read for a version (default: the latest).
#[utoipa::path(
    get, path = "/api/v1/dags/{dag_id}/source", tag = "DAGs", params(("dag_id" = String, Path), DagSourceQuery),
    responses(
        (status = 200, body = DagSource),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn dag_source(
    State(state): State<AppState>,
    caller: Caller,
    Path(dag_id): Path<String>,
    Query(query): Query<DagSourceQuery>,
) -> Result<axum::Json<DagSource>, ApiError> {
    let dag = readable_dag(&state, &caller, &dag_id).await?;
    let version = query.version.unwrap_or(dag.latest_version);
    let source =
        state.store.dag_source(&dag_id, &version).await?.ok_or_else(|| {
            ApiError::NotFound(format!("no source of version `{version}` of DAG `{dag_id}` is recorded"))
        })?;
    Ok(axum::Json(DagSource { dag_id, version, fileloc: dag.fileloc, source }))
}

/// Which DAGs a list shows (the API's and the UI's).
#[derive(Debug, Default)]
pub struct DagFilter {
    /// All of these.
    pub tags: Vec<String>,
    pub owner: Option<String>,
    pub paused: Option<bool>,
    /// In the id or the description, any case.
    pub search: Option<String>,
    pub include_inactive: bool,
}

impl DagFilter {
    pub fn matches(&self, dag: &updraft_store::DagRow) -> bool {
        let search = self.search.as_deref().map(str::to_lowercase).filter(|text| !text.is_empty());
        (dag.is_active || self.include_inactive)
            && self.tags.iter().all(|tag| dag.tags.contains(tag))
            && self.owner.as_ref().is_none_or(|owner| &dag.owner == owner)
            && self.paused.is_none_or(|paused| dag.is_paused == paused)
            && search.is_none_or(|text| {
                dag.dag_id.to_lowercase().contains(&text)
                    || dag.description.as_deref().is_some_and(|description| description.to_lowercase().contains(&text))
            })
    }
}

/// A DAG the caller may see: 404 if there is none, 403 if it is another team's.
pub async fn readable_dag(state: &AppState, caller: &Caller, dag_id: &str) -> Result<updraft_store::DagRow, ApiError> {
    let dag = find_dag(state, dag_id).await?;
    caller.require(Action::ReadDag { owner: &dag.owner })?;
    Ok(dag)
}

/// A DAG the caller may change (trigger, pause, clear, mark, delete runs).
pub async fn editable_dag(state: &AppState, caller: &Caller, dag_id: &str) -> Result<updraft_store::DagRow, ApiError> {
    let dag = find_dag(state, dag_id).await?;
    caller.require(Action::EditDag { owner: &dag.owner })?;
    Ok(dag)
}

pub async fn find_dag(state: &AppState, dag_id: &str) -> Result<updraft_store::DagRow, ApiError> {
    state.store.get_dag(dag_id).await?.ok_or_else(|| ApiError::NotFound(format!("no DAG `{dag_id}`")))
}
