//! Parse errors, pools, health and version.

use axum::extract::State;
use axum::http::StatusCode;

use super::extract::Query;
use super::model::{AuditEntry, AuditLog, AuditQuery, ImportErrorItem, ImportErrorList, Pool, PoolList, Version, page};
use crate::error::Problem;
use crate::health::Health;
use crate::{ApiError, AppState, Caller};

/// DAG files that do not parse, with every problem as `path:line:column: message`.
#[utoipa::path(get, path = "/api/v1/importErrors", tag = "DAGs", responses((status = 200, body = ImportErrorList)))]
pub async fn import_errors(
    State(state): State<AppState>,
    _caller: Caller,
) -> Result<axum::Json<ImportErrorList>, ApiError> {
    let import_errors: Vec<ImportErrorItem> =
        state.store.import_errors().await?.into_iter().map(ImportErrorItem::from).collect();
    Ok(axum::Json(ImportErrorList { total_entries: import_errors.len(), import_errors }))
}

/// Who did what and when (admins only).
#[utoipa::path(
    get, path = "/api/v1/auditLog", tag = "Monitoring", params(AuditQuery),
    responses(
        (status = 200, body = AuditLog),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn audit_log(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<AuditQuery>,
) -> Result<axum::Json<AuditLog>, ApiError> {
    caller.require(updraft_auth::Action::Administer)?;
    let (limit, _) = page(query.limit, None)?;
    if query.before.is_some_and(|before| before < 1) {
        return Err(ApiError::BadRequest("`before` must be 1 or more".into()));
    }
    let rows = state.store.audit_log(query.before, limit as u32).await?;
    Ok(axum::Json(AuditLog { entries: rows.into_iter().map(AuditEntry::from).collect() }))
}

/// Pools, with how many of their slots are taken now.
#[utoipa::path(get, path = "/api/v1/pools", tag = "Pools", responses((status = 200, body = PoolList)))]
pub async fn pools(State(state): State<AppState>, _caller: Caller) -> Result<axum::Json<PoolList>, ApiError> {
    let pools = state.store.pools().await?.into_iter().map(Pool::from).collect();
    Ok(axum::Json(PoolList { pools }))
}

/// Whether the store answers (else 503) and a scheduler heartbeat is fresh
/// (`status` `healthy`; `unhealthy` when none is).
#[utoipa::path(
    get, path = "/api/v1/health", tag = "Monitoring",
    responses((status = 200, body = Health), (status = 503, body = Health))
)]
/// Public: load balancers and monitors ask it without an account.
pub async fn health(state: State<AppState>) -> (StatusCode, axum::Json<Health>) {
    crate::health::health(state).await
}

/// This server's version.
#[utoipa::path(get, path = "/api/v1/version", tag = "Monitoring", responses((status = 200, body = Version)))]
/// Public, like `health`.
pub async fn version() -> axum::Json<Version> {
    axum::Json(Version { version: env!("CARGO_PKG_VERSION"), api: "v1" })
}
