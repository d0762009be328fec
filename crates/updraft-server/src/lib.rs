//! Updraft's HTTP server: the REST API under `/api/v1` (with its OpenAPI
//! document), `GET /health`, a plain page listing DAGs, attempt logs, and the
//! worker protocol remote workers use instead of database credentials.
//!
//! The server reads and writes the store and nothing else: it never parses DAG
//! files and never schedules. Every process serving it is stateless (what it
//! keeps in memory only makes waits shorter), so several can run behind a load
//! balancer.

mod api;
mod audit;
mod caller;
mod csrf;
mod error;
mod health;
mod logs;
mod ui;
mod workers;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use tokio::sync::watch;
use updraft_core::clock::Clock;
use updraft_core::errors::chain;
use updraft_store::{DefinitionCache, Store};

pub use caller::Caller;
pub use error::{ApiError, Problem};
pub use ui::OidcConfig;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    /// The token all remote workers may present (besides per-worker tokens).
    pub worker_token: Option<Arc<str>>,
    /// How callers are authenticated.
    pub auth: AuthMode,
    /// Cookies only over HTTPS (behind a TLS proxy).
    pub secure_cookies: bool,
    /// Decrypts variables and connections (`core.fernet_key`), for workers' and
    /// pages' templates.
    pub cipher: Option<Arc<updraft_auth::Cipher>>,
    /// Sign-in through an OpenID Connect provider (`[oidc]`), next to passwords.
    pub oidc: Option<Arc<ui::Oidc>>,
    /// Secrets backends, for pages' rendered templates.
    pub backends: Arc<updraft_secrets::Backends>,
    /// DAG versions already read, for triggering runs.
    definitions: Arc<DefinitionCache>,
    /// Ticks when the store changed, so a waiting claim looks again at once.
    changes: watch::Receiver<u64>,
}

impl AppState {
    /// Must be called within a tokio runtime: it starts the task that watches the
    /// store for changes, which ends with the last copy of the state.
    pub fn new(store: Store, clock: Arc<dyn Clock>, worker_token: Option<String>) -> AppState {
        let (tick, changes) = watch::channel(0);
        tokio::spawn(watch_store(store.clone(), tick));
        AppState {
            store,
            clock,
            worker_token: worker_token.map(Arc::from),
            auth: AuthMode::None,
            secure_cookies: false,
            cipher: None,
            backends: Arc::default(),
            oidc: None,
            definitions: Arc::default(),
            changes,
        }
    }
}

/// How the server knows who calls (`webserver.auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Everyone is `anonymous` with every right: for a laptop, on loopback only.
    None,
    /// Accounts with passwords; browsers sign in and hold a session cookie.
    Password,
}

impl AppState {
    /// The same state with a key for variables and connections.
    pub fn with_cipher(mut self, cipher: Option<Arc<updraft_auth::Cipher>>) -> AppState {
        self.cipher = cipher;
        self
    }

    /// The same state with single sign-on.
    pub fn with_oidc(mut self, oidc: Option<ui::OidcConfig>) -> AppState {
        self.oidc = oidc.map(|config| Arc::new(ui::Oidc::new(config)));
        self
    }

    /// The same state with secrets backends.
    pub fn with_backends(mut self, backends: Arc<updraft_secrets::Backends>) -> AppState {
        self.backends = backends;
        self
    }

    /// The same state with `auth` and whether cookies need HTTPS.
    pub fn with_auth(mut self, auth: AuthMode, secure_cookies: bool) -> AppState {
        self.auth = auth;
        self.secure_cookies = secure_cookies;
        self
    }
}

/// Forwards the store's change notifications to waiting claims. A lost connection
/// (a database restart) is retried; meanwhile claims look every second.
async fn watch_store(store: Store, tick: watch::Sender<u64>) {
    let mut watcher: Option<Box<dyn updraft_store::ChangeWatcher>> = None;
    while !tick.is_closed() {
        let result = match watcher.as_mut() {
            Some(watcher) => watcher.changed().await,
            None => match store.change_watcher().await {
                Ok(opened) => {
                    watcher = Some(opened);
                    Ok(())
                }
                Err(error) => Err(error),
            },
        };
        match result {
            Ok(()) => tick.send_modify(|count| *count = count.wrapping_add(1)),
            Err(error) => {
                tracing::warn!(error = %chain(&error), "cannot watch the store for changes; trying again in 1 s");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}

/// A finish request carries the end of several logs; a log piece is at most 1 MiB.
const WORKER_BODY_LIMIT: usize = 64 << 20;

pub fn router(state: AppState) -> Router {
    let workers = Router::new()
        .route("/", post(workers::register))
        .route("/secrets", get(workers::secrets))
        .route("/outputs", get(workers::outputs))
        .route("/{process_id}/stop", post(workers::stop))
        .route("/{process_id}/heartbeat", post(workers::heartbeat))
        .route("/{process_id}/claim", post(workers::claim))
        .route("/{process_id}/attempts/process", post(workers::attempt_process))
        .route("/{process_id}/attempts/finish", post(workers::finish))
        .route("/{process_id}/logs", post(workers::append_logs))
        .layer(DefaultBodyLimit::max(WORKER_BODY_LIMIT));
    let (api, document) = api::router();
    Router::new()
        .merge(ui::router())
        .route("/health", get(health::health))
        .route("/metrics", get(health::metrics))
        .merge(api)
        .merge(api::document_routes(&document))
        .nest(updraft_protocol::WORKERS, workers)
        .route("/api/v1/dags/{dag_id}/versions/{version}", get(workers::definition))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), csrf::guard))
        .with_state(state)
}

/// The OpenAPI document of the REST API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api::router().1
}

/// Serves only `GET /metrics` on `listener`: a scheduler's or worker's own
/// endpoint (on a port of its own, like the health of a process without the API).
pub async fn serve_metrics(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    // `/health` answers while the process serves: a probe for schedulers and
    // workers (their work state is the store's, shown by the API server's `/health`).
    let router = Router::new()
        .route("/metrics", get(|| async { health::prometheus_text() }))
        .route("/health", get(|| async { axum::Json(serde_json::json!({"status": "healthy"})) }));
    axum::serve(listener, router).await
}

/// Serves `router(state)` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}
