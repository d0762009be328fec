//! `GET /health`: is the store reachable, and is a scheduler alive?

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use updraft_store::ProcessState;
use utoipa::ToSchema;

use crate::{ApiError, AppState, Caller};

/// A scheduler whose heartbeat is older than this is reported unhealthy.
const SCHEDULER_STALE_SECS: f64 = 30.0;

/// `healthy` when the store answers and a scheduler heartbeat is under 30 s old.
#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "healthy")]
    status: &'static str,
    store: StoreHealth,
    scheduler: SchedulerHealth,
}

#[derive(Serialize, ToSchema)]
pub struct StoreHealth {
    status: &'static str,
    /// `sqlite` or `postgres`.
    backend: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct SchedulerHealth {
    status: &'static str,
    /// Seconds since the freshest scheduler heartbeat; null when none ever beat.
    heartbeat_age_seconds: Option<f64>,
    latest_heartbeat: Option<String>,
}

pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let now = state.clock.now();
    let backend = state.store.backend();
    let processes = state.store.processes(Some(ProcessState::Running)).await;
    let Ok(processes) = processes else {
        let health = Health {
            status: "unhealthy",
            store: StoreHealth { status: "unhealthy", backend },
            scheduler: SchedulerHealth { status: "unknown", heartbeat_age_seconds: None, latest_heartbeat: None },
        };
        return (StatusCode::SERVICE_UNAVAILABLE, Json(health));
    };
    let latest = processes.iter().filter(|process| process.kind.schedules()).map(|process| process.heartbeat_at).max();
    let age = latest.map(|at| (now.duration_since(at).as_secs_f64() * 1000.0).round() / 1000.0);
    let scheduler_ok = age.is_some_and(|age| age < SCHEDULER_STALE_SECS);
    let health = Health {
        status: if scheduler_ok { "healthy" } else { "unhealthy" },
        store: StoreHealth { status: "healthy", backend },
        scheduler: SchedulerHealth {
            status: if scheduler_ok { "healthy" } else { "unhealthy" },
            heartbeat_age_seconds: age,
            latest_heartbeat: latest.map(|at| at.to_string()),
        },
    };
    (StatusCode::OK, Json(health))
}

/// This process's metrics in Prometheus's text format (`docs/metrics.md`); like the
/// API, for a caller who may read the platform (a viewer's token will do).
pub async fn metrics(caller: Caller) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    caller.require(updraft_auth::Action::ReadPlatform)?;
    Ok(prometheus_text().into_response())
}

/// The registry in Prometheus's text exposition format, with its content type.
pub fn prometheus_text() -> impl axum::response::IntoResponse {
    let headers = [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")];
    (headers, updraft_metrics::render())
}
