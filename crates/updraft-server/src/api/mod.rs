//! The REST API under `/api/v1`. Each handler carries its `#[utoipa::path]`, and
//! [`router`] collects them, so the OpenAPI document (`/api/v1/openapi.json`) is
//! generated from the code it describes; `/api/v1/docs` renders it as a page.
//! Errors are RFC 9457 problem documents ([`crate::error::Problem`]). The worker
//! protocol (`/api/v1/workers`) is internal and left out of the document.

mod dags;
mod extract;
mod misc;
pub mod model;
mod reference;
mod runs;
pub mod secrets;
mod tasks;

use axum::Router;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;

pub use dags::{DagFilter, editable_dag, readable_dag};
pub use extract::{Path, Query};
pub use runs::{encode, find_run, intervene, trigger};
pub use tasks::{find_task_instance, instance_output, masked_output, pick_instance, task_instances_of};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Updraft API",
        description = "Updraft's REST API: DAGs, their runs and task instances, logs, pools. Times are RFC 3339 \
                       in UTC. Errors are RFC 9457 problem documents (`application/problem+json`).",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = "DAGs", description = "DAGs as read from the DAGs folder, and files that do not parse"),
        (name = "DAG runs", description = "Runs of a DAG: scheduled, triggered, backfilled"),
        (name = "Task instances", description = "A run's tasks, their tries and logs"),
        (name = "Pools", description = "Limits on how many tasks run at once"),
        (name = "Variables and connections", description = "Encrypted at rest; secret values answered as `***`"),
        (name = "Monitoring", description = "Health and version"),
    ),
    components(schemas(crate::error::Problem))
)]
struct ApiDoc;

/// The API's routes and the OpenAPI document that describes them.
pub fn router() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, mut document) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(dags::list_dags))
        .routes(routes!(dags::get_dag, dags::patch_dag))
        .routes(routes!(dags::dag_source))
        .routes(routes!(misc::import_errors))
        .routes(routes!(runs::list_runs, runs::trigger_run))
        .routes(routes!(runs::get_run, runs::patch_run, runs::delete_run))
        .routes(routes!(tasks::clear))
        .routes(routes!(tasks::list_task_instances))
        .routes(routes!(tasks::get_task_instance, tasks::patch_task_instance))
        .routes(routes!(tasks::get_task_output))
        .routes(routes!(crate::logs::attempt_log))
        .routes(routes!(crate::logs::attempt_log_stream))
        .routes(routes!(misc::pools))
        .routes(routes!(misc::health))
        .routes(routes!(misc::version))
        .routes(routes!(misc::audit_log))
        .routes(routes!(secrets::list_variables))
        .routes(routes!(secrets::get_variable, secrets::put_variable, secrets::delete_variable))
        .routes(routes!(secrets::list_connections))
        .routes(routes!(secrets::get_connection, secrets::put_connection, secrets::delete_connection))
        .split_for_parts();
    document.info.version = env!("CARGO_PKG_VERSION").to_string();
    (router, document)
}

/// `/api/v1/openapi.json` and `/api/v1/docs`, made once from `document`.
pub fn document_routes(document: &utoipa::openapi::OpenApi) -> Router<AppState> {
    let json = document.to_pretty_json().expect("the OpenAPI document serializes");
    let page = reference::render(&serde_json::from_str(&json).expect("the OpenAPI document is JSON"));
    Router::new()
        .route(
            "/api/v1/openapi.json",
            get(move || {
                let json = json.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], json).into_response() }
            }),
        )
        .route("/api/v1/docs", get(move || std::future::ready(Html(page.clone()))))
}
