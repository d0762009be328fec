//! The plain DAG list page: server-rendered, no JavaScript, a few KB.

use std::fmt::Write;

use axum::extract::State;
use axum::response::Html;

use crate::{ApiError, AppState};

pub async fn dag_list(State(state): State<AppState>) -> Result<Html<String>, ApiError> {
    let dags = state.store.list_dags().await?;
    let errors = state.store.import_errors().await?;
    let mut html = String::with_capacity(4096 + dags.len() * 256);
    html.push_str(concat!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        "<title>Updraft — DAGs</title><style>",
        "body{font:15px/1.4 system-ui,sans-serif;margin:1.5rem;color:#1d2430}",
        "table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.35rem .6rem;border-bottom:1px solid #e3e7ee}",
        "th{font-weight:600;background:#f5f7fa}code{font:13px ui-monospace,monospace}",
        ".paused{color:#8a6d00}.errors{background:#fdecea;border:1px solid #f5c2c0;padding:.6rem 1rem;margin-bottom:1rem}",
        ".errors pre{white-space:pre-wrap;margin:.3rem 0;font:13px ui-monospace,monospace}",
        "</style></head><body><h1>DAGs</h1>"
    ));
    if !errors.is_empty() {
        let _ = write!(html, "<div class=\"errors\"><strong>{} DAG file(s) have errors</strong>", errors.len());
        for error in &errors {
            let _ = write!(html, "<pre>{}</pre>", escape(&error.message));
        }
        html.push_str("</div>");
    }
    let active: Vec<_> = dags.iter().filter(|dag| dag.is_active).collect();
    if active.is_empty() {
        html.push_str("<p>No DAGs yet. Put YAML files in the DAGs folder.</p>");
    } else {
        html.push_str("<table><thead><tr><th>DAG</th><th>Schedule</th><th>Owner</th><th>State</th><th>Version</th><th>File</th></tr></thead><tbody>");
        for dag in active {
            let _ = write!(
                html,
                "<tr><td><code>{}</code>{}</td><td><code>{}</code> {}</td><td>{}</td><td{}>{}</td><td><code>{}</code></td><td><code>{}</code></td></tr>",
                escape(&dag.dag_id),
                dag.description.as_deref().map(|d| format!("<br><small>{}</small>", escape(d))).unwrap_or_default(),
                escape(dag.schedule.as_deref().unwrap_or("none")),
                escape(&dag.timezone),
                escape(&dag.owner),
                if dag.is_paused { " class=\"paused\"" } else { "" },
                if dag.is_paused { "paused" } else { "active" },
                escape(&dag.latest_version),
                escape(&dag.fileloc),
            );
        }
        html.push_str("</tbody></table>");
    }
    html.push_str("<p><small>Health: <a href=\"/health\">/health</a></small></p></body></html>");
    Ok(Html(html))
}

pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
