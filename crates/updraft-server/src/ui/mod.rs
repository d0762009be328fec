//! The web UI: server-rendered HTML (`maud`), one stylesheet and one small script
//! (`assets/`), no build step. Every page works without JavaScript; the script
//! adds local times, live refresh of active runs, and live logs. Actions are
//! plain forms that post here and redirect back; they run the same code as the
//! API (`crate::api`), so the UI can do nothing the API could not.

mod layout;
mod login;
mod oidc;
mod pages;
mod secrets;
mod tokens;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};

use crate::AppState;
pub use oidc::{Oidc, OidcConfig};

const APP_JS: &str = include_str!("../../assets/app.js");
const APP_CSS: &str = include_str!("../../assets/app.css");

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(pages::dag_list))
        .route("/login", get(login::login_form).post(login::login))
        .route("/logout", post(login::logout))
        .route("/login/oidc", get(oidc::start))
        .route("/login/oidc/callback", get(oidc::callback))
        .route("/import-errors", get(pages::import_errors))
        .route("/audit", get(pages::audit_page))
        .route("/variables", get(secrets::variables_page).post(secrets::set_variable))
        .route("/variables/{key}/delete", post(secrets::delete_variable))
        .route("/connections", get(secrets::connections_page).post(secrets::set_connection))
        .route("/connections/{conn_id}/delete", post(secrets::delete_connection))
        .route("/tokens", get(tokens::tokens_page).post(tokens::create_token))
        .route("/tokens/{token_id}/revoke", post(tokens::revoke_token))
        .route("/dags/{dag_id}", get(pages::dag_page))
        .route("/dags/{dag_id}/grid", get(pages::grid_fragment))
        .route("/dags/{dag_id}/graph", get(pages::graph_fragment))
        .route("/dags/{dag_id}/paused", post(pages::set_paused))
        .route("/dags/{dag_id}/trigger", get(pages::trigger_form).post(pages::trigger_submit))
        .route("/dags/{dag_id}/runs/{run_id}", get(pages::run_page))
        .route("/dags/{dag_id}/runs/{run_id}/state", post(pages::mark_run))
        .route("/dags/{dag_id}/runs/{run_id}/tasks/{task_id}", get(pages::task_page))
        .route("/dags/{dag_id}/runs/{run_id}/tasks/{task_id}/clear", post(pages::clear_task))
        .route("/dags/{dag_id}/runs/{run_id}/tasks/{task_id}/state", post(pages::mark_task))
        .route("/static/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/static/app.css", get(|| async { asset("text/css; charset=utf-8", APP_CSS) }))
}

/// An error page as HTML, for refusals outside the pages (`csrf.rs`).
pub fn error_page_html(status: u16, detail: &str) -> String {
    layout::error_page(status, detail).into_string()
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300")),
        ],
        body,
    )
}
