//! Updraft's HTTP server: `GET /health` and a plain page listing DAGs. The web UI
//! and REST API of a later version build on [`router`].
//!
//! The server reads the store and nothing else: it never parses DAG files and
//! never schedules; every process serving it can be stateless.

mod error;
mod health;
mod pages;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use updraft_core::clock::Clock;
use updraft_store::Store;

pub use error::ApiError;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub clock: Arc<dyn Clock>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(pages::dag_list))
        .route("/health", get(health::health))
        .fallback(error::not_found)
        .with_state(state)
}

/// Serves `router(state)` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}
