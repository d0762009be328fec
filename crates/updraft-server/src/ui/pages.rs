//! The pages and the forms they post.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;
use updraft_auth::Action;
use updraft_core::intervene::Request;
use updraft_core::plan::DagVersion;
use updraft_core::timetable::describe_schedule;
use updraft_core::{Dag, RunState, TaskState};
use updraft_store::{DagRow, RunRow, TaskInstanceRow};

use super::layout::{
    csrf_field, dag_url, duration, error_page, highlight_yaml, instance_url, page, run_url, state_badge, summary_state,
    task_url, time,
};
use crate::api::model::TriggerDagRun;
use crate::api::{
    DagFilter, editable_dag, encode, find_run, find_task_instance, intervene, pick_instance, readable_dag,
    task_instances_of,
};
use crate::{ApiError, AppState, Caller};

/// A page or an error page with the right status.
pub struct UiError(pub ApiError);

impl From<ApiError> for UiError {
    fn from(error: ApiError) -> UiError {
        UiError(error)
    }
}

impl From<updraft_store::StoreError> for UiError {
    fn from(error: updraft_store::StoreError) -> UiError {
        UiError(error.into())
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let (status, detail) = self.0.into_parts();
        (status, Html(error_page(status.as_u16(), &detail).into_string())).into_response()
    }
}

pub(super) type PageResult = Result<Html<String>, UiError>;

/// Runs shown in a DAG's grid and history.
const GRID_RUNS: u32 = 25;
const HISTORY_RUNS: u32 = 50;
/// Lines of log a task page starts with; a running log then follows live.
const LOG_LINES: usize = 2000;

pub(super) async fn broken_files(state: &AppState) -> Result<usize, UiError> {
    Ok(state.store.import_errors().await?.len())
}

pub(super) fn note(query: &HashMap<String, String>) -> Option<&str> {
    query.get("note").map(String::as_str).filter(|note| !note.is_empty())
}

/// Back to `url` with a message for the page.
pub(super) fn back(url: &str, note: &str) -> Redirect {
    let join = if url.contains('?') { '&' } else { '?' };
    Redirect::to(&format!("{url}{join}note={}", encode(note)))
}

async fn definition(state: &AppState, dag_id: &str, version: &str) -> Result<Arc<Dag>, UiError> {
    Ok(state.definitions.get(state.store.as_ref(), dag_id, &DagVersion(version.to_string())).await?)
}

fn schedule_words(dag: &DagRow) -> Markup {
    match &dag.schedule {
        None => html! { span.muted { "only when triggered" } },
        Some(cron) => html! { (describe_schedule(cron)) br; code.muted { (cron) } },
    }
}

// ---------------------------------------------------------------- DAG list

#[derive(Debug, Deserialize, Default)]
pub struct ListParams {
    #[serde(default)]
    q: String,
    #[serde(default)]
    tag: String,
    #[serde(default)]
    paused: String,
    #[serde(default)]
    note: String,
    #[serde(default)]
    page: usize,
}

/// DAGs on one page of the list.
const LIST_PAGE: usize = 100;

pub async fn dag_list(State(state): State<AppState>, caller: Caller, Query(params): Query<ListParams>) -> PageResult {
    let filter = DagFilter {
        tags: params.tag.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_string).collect(),
        paused: match params.paused.as_str() {
            "yes" => Some(true),
            "no" => Some(false),
            _ => None,
        },
        search: Some(params.q.clone()),
        ..DagFilter::default()
    };
    let all: Vec<DagRow> = state
        .store
        .list_dags()
        .await?
        .into_iter()
        .filter(|dag| caller.may(Action::ReadDag { owner: &dag.owner }))
        .collect();
    let mut tags: Vec<&str> = all.iter().flat_map(|dag| dag.tags.iter().map(String::as_str)).collect();
    tags.sort_unstable();
    tags.dedup();
    let matching: Vec<&DagRow> = all.iter().filter(|dag| filter.matches(dag)).collect();
    let pages = matching.len().div_ceil(LIST_PAGE).max(1);
    let current = params.page.min(pages - 1);
    let dags: Vec<&DagRow> = matching.iter().skip(current * LIST_PAGE).take(LIST_PAGE).copied().collect();
    let page_url = |page: usize| {
        format!("/?q={}&tag={}&paused={}&page={page}", encode(&params.q), encode(&params.tag), encode(&params.paused))
    };
    let mut recent: HashMap<&str, Vec<RunRow>> = HashMap::new();
    for dag in &dags {
        let mut runs = state.store.list_runs(&dag.dag_id, None, 10).await?;
        runs.reverse();
        recent.insert(&dag.dag_id, runs);
    }
    let body = html! {
        h1 { "DAGs" }
        form.filters method="get" action="/" role="search" {
            input type="search" name="q" value=(params.q) placeholder="Search DAGs" aria-label="Search DAGs";
            select name="tag" aria-label="Tag" {
                option value="" { "All tags" }
                @for tag in &tags { option value=(tag) selected[params.tag == *tag] { (tag) } }
            }
            select name="paused" aria-label="Paused" {
                option value="" { "Active and paused" }
                option value="no" selected[params.paused == "no"] { "Active only" }
                option value="yes" selected[params.paused == "yes"] { "Paused only" }
            }
            button type="submit" { "Filter" }
            span.muted { (matching.len()) " of " (all.iter().filter(|dag| dag.is_active).count()) " DAGs" }
        }
        @if all.is_empty() {
            p.muted { "No DAGs yet: put YAML files in the DAGs folder, and the scheduler reads them within seconds." }
        }
        table.list id="dags" {
            thead { tr {
                th { "Paused" } th { "DAG" } th.wide { "Owner" } th.wide { "Tags" } th.wide { "Schedule" }
                th.wide { "Next run" } th { "Runs" } th { "" }
            } }
            tbody {
                @for dag in &dags {
                    tr data-dag=(dag.dag_id) {
                        td { (paused_toggle(dag, "/", &caller)) }
                        td.name {
                            a href=(dag_url(&dag.dag_id)) { strong { (dag.dag_id) } }
                            @if let Some(description) = &dag.description { br; span.muted { (description) } }
                        }
                        td.wide { (dag.owner) }
                        td.wide { @for tag in &dag.tags { span.tag { (tag) } } }
                        td.wide { (schedule_words(dag)) }
                        td.wide { (time(dag.next_due.filter(|_| dag.schedule.is_some()), &dag.timezone)) }
                        td.dots {
                            @for run in recent.get(dag.dag_id.as_str()).into_iter().flatten() {
                                a.dot.(format!("s-{}", run.state)) href=(run_url(&run.dag_id, &run.run_id))
                                    title=(format!("{} — {}", run.run_id, run.state)) {}
                            }
                        }
                        td { a.button href=(format!("{}/trigger", dag_url(&dag.dag_id))) { "Trigger" } }
                    }
                }
            }
        }
        @if pages > 1 {
            p.filters {
                @if current > 0 { a.button href=(page_url(current - 1)) rel="prev" { "← Previous" } }
                span.muted { "Page " (current + 1) " of " (pages) }
                @if current + 1 < pages { a.button href=(page_url(current + 1)) rel="next" { "Next →" } }
            }
        }
    };
    let note = Some(params.note.as_str()).filter(|note| !note.is_empty());
    Ok(Html(page("DAGs", Some(&caller), broken_files(&state).await?, note, body).into_string()))
}

fn paused_toggle(dag: &DagRow, back_to: &str, caller: &Caller) -> Markup {
    html! {
        form.inline method="post" action=(format!("{}/paused", dag_url(&dag.dag_id))) {
            (csrf_field(caller))
            input type="hidden" name="paused" value=(if dag.is_paused { "false" } else { "true" });
            input type="hidden" name="back" value=(back_to);
            @if dag.is_paused {
                button.switch.on type="submit" title="Paused: click to unpause" aria-pressed="true" { "Paused" }
            } @else {
                button.switch type="submit" title="Active: click to pause" aria-pressed="false" { "Active" }
            }
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct PausedForm {
    paused: bool,
    #[serde(default)]
    back: String,
}

pub async fn set_paused(
    State(state): State<AppState>,
    caller: Caller,
    Path(dag_id): Path<String>,
    Form(form): Form<PausedForm>,
) -> Result<Redirect, UiError> {
    editable_dag(&state, &caller, &dag_id).await?;
    state.store.set_paused(&dag_id, form.paused, state.clock.now()).await?;
    tracing::info!(%dag_id, paused = form.paused, actor = %caller.actor(), "DAG paused state set");
    let action = if form.paused { "pause" } else { "unpause" };
    crate::audit::record(&state, &caller.actor(), action, &dag_id, None).await;
    // Only back to a page of this site.
    let back_to = if form.back.starts_with('/') && !form.back.starts_with("//") { form.back } else { dag_url(&dag_id) };
    let what = if form.paused { "paused" } else { "unpaused" };
    Ok(back(&back_to, &format!("DAG {dag_id} {what}")))
}

// ---------------------------------------------------------------- DAG page

#[derive(Debug, Deserialize, Default)]
pub struct DagParams {
    #[serde(default)]
    tab: String,
    #[serde(default)]
    note: String,
}

pub async fn dag_page(
    State(state): State<AppState>,
    caller: Caller,
    Path(dag_id): Path<String>,
    Query(params): Query<DagParams>,
) -> PageResult {
    let row = readable_dag(&state, &caller, &dag_id).await?;
    let dag = definition(&state, &dag_id, &row.latest_version).await?;
    let tab = match params.tab.as_str() {
        "graph" | "code" | "runs" => params.tab.as_str(),
        _ => "grid",
    };
    let content = match tab {
        "graph" => graph(&state, &row, &dag).await?,
        "code" => code_tab(&state, &row).await?,
        "runs" => runs_tab(&state, &row).await?,
        _ => grid(&state, &row, &dag).await?,
    };
    let url = dag_url(&dag_id);
    let import_errors = state.store.import_errors().await?;
    let broken = import_errors.len();
    let file_errors = import_errors.into_iter().find(|error| error.fileloc == row.fileloc);
    let body = html! {
        @if let Some(error) = &file_errors {
            div.banner role="alert" {
                strong { "This DAG's file does not read now; runs use the last version that did." }
                pre.code { (error.message) }
            }
        }
        h1 { (dag_id) " " @if row.is_paused { span.state.s-up_for_retry { "paused" } } }
        @if let Some(description) = &row.description { p.muted { (description) } }
        div.meta {
            div { span { "Owner" } (row.owner) }
            div { span { "Schedule" } (schedule_words(&row)) }
            div { span { "Time zone" } (row.timezone) }
            div { span { "Next run" } (time(row.next_due.filter(|_| row.schedule.is_some()), &row.timezone)) }
            div { span { "Tags" } @for tag in &row.tags { span.tag { (tag) } } }
            div { span { "File" } code { (row.fileloc) } }
        }
        div.filters {
            (paused_toggle(&row, &url, &caller))
            a.button.primary href=(format!("{url}/trigger")) { "Trigger" }
        }
        nav.tabs {
            @for (name, label) in [("grid", "Grid"), ("graph", "Graph"), ("code", "Code"), ("runs", "Run history")] {
                a.active[tab == name] href=(format!("{url}?tab={name}")) { (label) }
            }
        }
        (content)
    };
    let note = Some(params.note.as_str()).filter(|note| !note.is_empty());
    Ok(Html(page(&dag_id, Some(&caller), broken, note, body).into_string()))
}

/// The grid fragment alone, for the live refresh.
pub async fn grid_fragment(State(state): State<AppState>, caller: Caller, Path(dag_id): Path<String>) -> PageResult {
    let row = readable_dag(&state, &caller, &dag_id).await?;
    let dag = definition(&state, &dag_id, &row.latest_version).await?;
    Ok(Html(grid(&state, &row, &dag).await?.into_string()))
}

/// Runs (columns, oldest first) by tasks (rows, in dependency order).
async fn grid(state: &AppState, row: &DagRow, dag: &Dag) -> Result<Markup, UiError> {
    let mut runs = state.store.list_runs(&row.dag_id, None, GRID_RUNS).await?;
    runs.reverse();
    // Per run, each task's state and how many instances it has (a mapped task's many).
    let mut cells: Vec<HashMap<String, (TaskState, usize)>> = Vec::with_capacity(runs.len());
    for run in &runs {
        let mut by_task: HashMap<String, Vec<TaskState>> = HashMap::new();
        for ti in state.store.task_instances(run.run_pk).await? {
            by_task.entry(ti.task_id).or_default().push(ti.state);
        }
        cells.push(
            by_task
                .into_iter()
                .map(|(task_id, states)| (task_id, (summary_state(states.clone()), states.len())))
                .collect(),
        );
    }
    let live = runs.iter().any(|run| !run.state.is_finished());
    let order: Vec<&str> = dag.graph().topo_order.iter().map(|&idx| dag.tasks()[idx].task_id.as_str()).collect();
    Ok(html! {
        div.grid-wrap id="grid" data-refresh=(format!("{}/grid", dag_url(&row.dag_id))) data-live=(live) {
            @if runs.is_empty() {
                p.muted { "No runs yet. Trigger one, or wait for the schedule." }
            } @else {
                table.grid {
                    thead { tr {
                        th {}
                        @for run in &runs {
                            th { a.runhead.(format!("s-{}", run.state)) href=(run_url(&run.dag_id, &run.run_id))
                                title=(format!("{} — {}", run.run_id, run.state)) data-run=(run.run_id) data-state=(run.state) {} }
                        }
                    } }
                    tbody {
                        @for task_id in &order {
                            tr {
                                th.task { (task_id) }
                                @for (run, tis) in runs.iter().zip(&cells) {
                                    td {
                                        @if let Some((ti_state, count)) = tis.get(*task_id) {
                                            @let mapped = if *count > 1 { format!(" ({count} mapped)") } else { String::new() };
                                            a.cell.(format!("s-{ti_state}")) href=(task_url(&run.dag_id, &run.run_id, task_id))
                                                title=(format!("{task_id} — {} — {ti_state}{mapped}", run.run_id))
                                                data-task=(task_id) data-state=(ti_state) {}
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    })
}

/// The graph fragment alone, for the live refresh.
pub async fn graph_fragment(State(state): State<AppState>, caller: Caller, Path(dag_id): Path<String>) -> PageResult {
    let row = readable_dag(&state, &caller, &dag_id).await?;
    let dag = definition(&state, &dag_id, &row.latest_version).await?;
    Ok(Html(graph(&state, &row, &dag).await?.into_string()))
}

/// The DAG as an SVG: tasks in layers by dependency depth, coloured by their state
/// in the latest run (live while it runs).
async fn graph(state: &AppState, row: &DagRow, dag: &Dag) -> Result<Markup, UiError> {
    let latest = state.store.list_runs(&row.dag_id, None, 1).await?.into_iter().next();
    let mut by_task: HashMap<String, Vec<TaskState>> = HashMap::new();
    if let Some(run) = &latest {
        for ti in state.store.task_instances(run.run_pk).await? {
            by_task.entry(ti.task_id).or_default().push(ti.state);
        }
    }
    let states: HashMap<String, TaskState> =
        by_task.into_iter().map(|(task_id, states)| (task_id, summary_state(states))).collect();
    let graph = dag.graph();
    let mut layer = vec![0usize; dag.tasks().len()];
    for &idx in &graph.topo_order {
        layer[idx] = graph.upstream[idx].iter().map(|&up| layer[up] + 1).max().unwrap_or(0);
    }
    let mut slot = vec![0usize; dag.tasks().len()];
    let mut filled: HashMap<usize, usize> = HashMap::new();
    for &idx in &graph.topo_order {
        let count = filled.entry(layer[idx]).or_insert(0);
        slot[idx] = *count;
        *count += 1;
    }
    let (node_w, node_h, gap_x, gap_y) = (160.0, 30.0, 60.0, 14.0);
    let x = |idx: usize| 10.0 + layer[idx] as f64 * (node_w + gap_x);
    let y = |idx: usize| 10.0 + slot[idx] as f64 * (node_h + gap_y);
    let width = 20.0 + (layer.iter().max().copied().unwrap_or(0) + 1) as f64 * (node_w + gap_x);
    let height = 20.0 + filled.values().max().copied().unwrap_or(1) as f64 * (node_h + gap_y);
    let live = latest.as_ref().is_some_and(|run| !run.state.is_finished());
    Ok(html! {
        div id="graph-wrap" data-refresh=(format!("{}/graph", dag_url(&row.dag_id))) data-live=(live) {
        p.muted {
            @match &latest {
                Some(run) => { "States of the latest run, " a href=(run_url(&run.dag_id, &run.run_id)) { (run.run_id) } "." }
                None => "No runs yet.",
            }
        }
        div.grid-wrap {
            svg id="graph" xmlns="http://www.w3.org/2000/svg" width=(width) height=(height) role="img"
                aria-label=(format!("Tasks of {}", row.dag_id)) {
                defs {
                    marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto" {
                        path d="M0,0 L10,5 L0,10 z" fill="#9aa4b2" {}
                    }
                }
                @for (idx, ups) in graph.upstream.iter().enumerate() {
                    @for &up in ups {
                        @let (x1, y1, x2, y2) = (x(up) + node_w, y(up) + node_h / 2.0, x(idx), y(idx) + node_h / 2.0);
                        path d=(format!("M{x1},{y1} C{},{y1} {},{y2} {x2},{y2}", x1 + gap_x / 2.0, x2 - gap_x / 2.0))
                            fill="none" stroke="#9aa4b2" stroke-width="1.5" marker-end="url(#arrow)" {}
                    }
                }
                @for (idx, task) in dag.tasks().iter().enumerate() {
                    @let task_state = states.get(task.task_id.as_str()).map_or("none", |state| state.as_str());
                    @let fill = format!("var(--{task_state})");
                    g data-task=(task.task_id.as_str()) data-state=(task_state) {
                        @if let Some(run) = &latest {
                            a href=(task_url(&run.dag_id, &run.run_id, task.task_id.as_str())) {
                                rect x=(x(idx)) y=(y(idx)) width=(node_w) height=(node_h) rx="5" fill=(fill) stroke="#667085" {}
                            }
                        } @else {
                            rect x=(x(idx)) y=(y(idx)) width=(node_w) height=(node_h) rx="5" fill=(fill) stroke="#667085" {}
                        }
                        text x=(x(idx) + 8.0) y=(y(idx) + 19.0) pointer-events="none" { (task.task_id.as_str()) }
                    }
                }
            }
        }
        }
    })
}

async fn code_tab(state: &AppState, row: &DagRow) -> Result<Markup, UiError> {
    let source = state.store.dag_source(&row.dag_id, &row.latest_version).await?;
    Ok(html! {
        p.muted { code { (row.fileloc) } ", version " code { (row.latest_version) } }
        @match source {
            Some(source) => pre.code id="code" { (highlight_yaml(&source)) },
            None => p.muted { "The text of this version was not recorded (it predates this Updraft)." },
        }
    })
}

/// The last runs: a chart of their durations and a table.
async fn runs_tab(state: &AppState, row: &DagRow) -> Result<Markup, UiError> {
    let runs = state.store.list_runs(&row.dag_id, None, HISTORY_RUNS).await?;
    let seconds = |run: &RunRow| match (run.start_date, run.end_date) {
        (Some(start), Some(end)) => end.duration_since(start).as_secs_f64().max(0.0),
        _ => 0.0,
    };
    let longest = runs.iter().map(seconds).fold(0.0_f64, f64::max).max(0.001);
    let (bar_w, chart_h) = (14.0, 120.0);
    let chronological: Vec<&RunRow> = runs.iter().rev().collect();
    Ok(html! {
        @if runs.is_empty() { p.muted { "No runs yet." } } @else {
            div.grid-wrap {
                svg id="durations" xmlns="http://www.w3.org/2000/svg" width=(chronological.len() as f64 * (bar_w + 4.0) + 60.0)
                    height=(chart_h + 30.0) role="img" aria-label="Run durations" {
                    text x="0" y="12" { (format!("{longest:.1}s")) }
                    line x1="50" y1=(chart_h + 10.0) x2=(chronological.len() as f64 * (bar_w + 4.0) + 55.0) y2=(chart_h + 10.0) stroke="#c5ccd6" {}
                    @for (i, run) in chronological.iter().enumerate() {
                        @let h = (seconds(run) / longest * chart_h).max(2.0);
                        a href=(run_url(&run.dag_id, &run.run_id)) {
                            rect x=(55.0 + i as f64 * (bar_w + 4.0)) y=(chart_h + 10.0 - h) width=(bar_w) height=(h)
                                fill=(format!("var(--{})", run.state)) {
                                title { (format!("{} — {} — {}", run.run_id, run.state, duration(run.start_date, run.end_date))) }
                            }
                        }
                    }
                }
            }
            table.list {
                thead { tr { th { "Run" } th { "State" } th.wide { "Type" } th { "Logical date" } th.wide { "Started" } th { "Duration" } } }
                tbody {
                    @for run in &runs {
                        tr {
                            td { a href=(run_url(&run.dag_id, &run.run_id)) { (run.run_id) } }
                            td { (state_badge(run.state.as_str())) }
                            td.wide { (run.run_type.as_str()) }
                            td { (time(Some(run.logical_date), &row.timezone)) }
                            td.wide { (time(run.start_date, &row.timezone)) }
                            td { (duration(run.start_date, run.end_date)) }
                        }
                    }
                }
            }
        }
    })
}

// ---------------------------------------------------------------- trigger

pub async fn trigger_form(State(state): State<AppState>, caller: Caller, Path(dag_id): Path<String>) -> PageResult {
    let row = readable_dag(&state, &caller, &dag_id).await?;
    let dag = definition(&state, &dag_id, &row.latest_version).await?;
    let params = &dag.spec().params;
    let body = html! {
        h1 { "Trigger " (dag_id) }
        form method="post" action=(format!("{}/trigger", dag_url(&dag_id))) id="trigger" {
            (csrf_field(&caller))
            @if !params.is_empty() {
                h2 { "Params" }
                table.list {
                    @for (name, default) in params {
                        tr {
                            th { label for=(format!("param-{name}")) { (name) } }
                            td { input type="text" id=(format!("param-{name}")) name=(format!("param.{name}"))
                                value=(param_text(default)); }
                        }
                    }
                }
            }
            h2 { "Options" }
            p { label { "Logical date (in " (row.timezone) "; empty: now) " br;
                input type="text" name="logical_date" placeholder="2024-05-01 or 2024-05-01T06:00:00+09:00"; } }
            p { label { "Run id (empty: generated) " br; input type="text" name="run_id"; } }
            p { label { "More configuration (a JSON object) " br; textarea name="conf" { "{}" } } }
            button.primary type="submit" { "Trigger" }
            " " a href=(dag_url(&dag_id)) { "Cancel" }
        }
    };
    Ok(Html(page(&format!("Trigger {dag_id}"), Some(&caller), broken_files(&state).await?, None, body).into_string()))
}

fn param_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

pub async fn trigger_submit(
    State(state): State<AppState>,
    caller: Caller,
    Path(dag_id): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> Result<Redirect, UiError> {
    let mut conf = serde_json::Map::new();
    let mut request = TriggerDagRun::default();
    for (name, value) in form {
        match name.as_str() {
            "conf" if !value.trim().is_empty() => match serde_json::from_str::<serde_json::Value>(&value) {
                Ok(serde_json::Value::Object(more)) => conf.extend(more),
                Ok(_) => return Err(ApiError::BadRequest("the configuration must be a JSON object".into()).into()),
                Err(error) => {
                    return Err(ApiError::BadRequest(format!("the configuration is not JSON: {error}")).into());
                }
            },
            "logical_date" if !value.trim().is_empty() => request.logical_date = Some(value.trim().to_string()),
            "run_id" if !value.trim().is_empty() => request.run_id = Some(value.trim().to_string()),
            other => {
                if let Some(param) = other.strip_prefix("param.") {
                    // A number, boolean, list or object stays one; anything else is text.
                    let parsed = serde_json::from_str(&value).unwrap_or(serde_json::Value::String(value));
                    conf.insert(param.to_string(), parsed);
                }
            }
        }
    }
    request.conf = Some(conf);
    editable_dag(&state, &caller, &dag_id).await?;
    let run = crate::api::trigger(&state, &caller, &dag_id, request).await?;
    Ok(back(&dag_url(&dag_id), &format!("Triggered run {}", run.run_id)))
}

// ---------------------------------------------------------------- run page

pub async fn run_page(
    State(state): State<AppState>,
    caller: Caller,
    Path((dag_id, run_id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> PageResult {
    let dag_row = readable_dag(&state, &caller, &dag_id).await?;
    let run = find_run(&state, &dag_id, &run_id).await?;
    let dag = definition(&state, &dag_id, &run.version.0).await?;
    let tis = state.store.task_instances(run.run_pk).await?;
    let order: HashMap<&str, usize> = dag
        .graph()
        .topo_order
        .iter()
        .enumerate()
        .map(|(position, &idx)| (dag.tasks()[idx].task_id.as_str(), position))
        .collect();
    let mut sorted: Vec<&TaskInstanceRow> = tis.iter().collect();
    sorted.sort_by_key(|ti| (order.get(ti.task_id.as_str()).copied().unwrap_or(usize::MAX), ti.map_index));
    let zone = &dag_row.timezone;
    let url = run_url(&dag_id, &run_id);
    let body = html! {
        p { a href=(dag_url(&dag_id)) { "← " (dag_id) } }
        h1 { "Run " (run_id) " " (state_badge(run.state.as_str())) }
        div.meta {
            div { span { "Type" } (run.run_type.as_str()) }
            div { span { "Logical date" } (time(Some(run.logical_date), zone)) }
            div { span { "Data interval" } (time(Some(run.interval.start), zone)) " – " (time(Some(run.interval.end), zone)) }
            div { span { "Started" } (time(run.start_date, zone)) }
            div { span { "Ended" } (time(run.end_date, zone)) }
            div { span { "Duration" } (duration(run.start_date, run.end_date)) }
        }
        @if !run.conf.is_empty() { p { "Configuration: " code { (serde_json::Value::Object(run.conf.clone())) } } }
        @if !run.state.is_finished() {
            div.filters {
                @for (to, label) in [("success", "Mark success"), ("failed", "Mark failed")] {
                    form.inline method="post" action=(format!("{url}/state")) data-confirm=(format!("{label} this run?")) {
                        (csrf_field(&caller))
                        input type="hidden" name="state" value=(to);
                        button.danger[to == "failed"] type="submit" { (label) }
                    }
                }
            }
        }
        h2 { "Gantt" }
        (gantt(&run, &sorted))
        h2 { "Tasks" }
        table.list id="tasks" {
            thead { tr { th { "Task" } th { "State" } th { "Try" } th.wide { "Started" } th { "Duration" } th.wide { "Host" } } }
            tbody {
                @for ti in &sorted {
                    tr data-task=(ti.task_id) data-map-index=(ti.map_index) {
                        td { a href=(instance_url(&dag_id, &run_id, &ti.task_id, ti.map_index)) { (ti.label()) } }
                        td { (state_badge(ti.state.as_str())) }
                        td { (ti.try_number) " / " (ti.max_tries + 1) }
                        td.wide { (time(ti.start_date, zone)) }
                        td { (duration(ti.start_date, ti.end_date)) }
                        td.wide { (ti.hostname.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
    };
    let note = note(&query);
    Ok(Html(page(&format!("{dag_id} {run_id}"), Some(&caller), broken_files(&state).await?, note, body).into_string()))
}

/// Bars from each task's start to its end, on the run's time line.
fn gantt(run: &RunRow, tis: &[&TaskInstanceRow]) -> Markup {
    let started: Vec<_> = tis.iter().filter_map(|ti| ti.start_date.map(|start| (ti, start))).collect();
    let Some(origin) = started.iter().map(|(_, start)| *start).min().or(run.start_date) else {
        return html! { p.muted { "Nothing has started yet." } };
    };
    let end_of = |ti: &TaskInstanceRow| ti.end_date.unwrap_or_else(|| ti.start_date.unwrap_or(origin).max(origin));
    let last = tis.iter().map(|ti| end_of(ti)).chain(run.end_date).max().unwrap_or(origin);
    let span = last.duration_since(origin).as_secs_f64().max(0.001);
    let (label_w, chart_w, row_h) = (170.0, 620.0, 20.0);
    html! {
        div.grid-wrap {
            svg id="gantt" xmlns="http://www.w3.org/2000/svg" width=(label_w + chart_w + 70.0)
                height=(tis.len() as f64 * row_h + 24.0) role="img" aria-label="Gantt chart of the run" {
                @for (row, ti) in tis.iter().enumerate() {
                    @let y = 4.0 + row as f64 * row_h;
                    text x="0" y=(y + 13.0) { (ti.label()) }
                    @if let Some(start) = ti.start_date {
                        @let x = label_w + start.duration_since(origin).as_secs_f64() / span * chart_w;
                        @let w = (end_of(ti).duration_since(start).as_secs_f64() / span * chart_w).max(2.0);
                        rect x=(x) y=(y + 2.0) width=(w) height=(row_h - 6.0) rx="2" fill=(format!("var(--{})", ti.state)) {
                            title { (format!("{} — {} — {}", ti.label(), ti.state, duration(ti.start_date, ti.end_date))) }
                        }
                    }
                }
                text x=(label_w) y=(tis.len() as f64 * row_h + 20.0) { "0s" }
                text x=(label_w + chart_w - 30.0) y=(tis.len() as f64 * row_h + 20.0) { (format!("{span:.1}s")) }
            }
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct StateForm {
    state: String,
    /// One instance of a mapped task.
    #[serde(default)]
    map_index: Option<i32>,
}

pub async fn mark_run(
    State(state): State<AppState>,
    caller: Caller,
    Path((dag_id, run_id)): Path<(String, String)>,
    Form(form): Form<StateForm>,
) -> Result<Redirect, UiError> {
    editable_dag(&state, &caller, &dag_id).await?;
    let run = find_run(&state, &dag_id, &run_id).await?;
    let to = match form.state.as_str() {
        "success" => RunState::Success,
        "failed" => RunState::Failed,
        other => {
            return Err(ApiError::BadRequest(format!("a run can be marked success or failed, not `{other}`")).into());
        }
    };
    intervene(&state, &caller, &run, Request::MarkRun { to }).await?;
    Ok(back(&run_url(&dag_id, &run_id), &format!("Run marked {to}")))
}

// ---------------------------------------------------------------- task page

pub async fn task_page(
    State(state): State<AppState>,
    caller: Caller,
    Path((dag_id, run_id, task_id)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> PageResult {
    let dag_row = readable_dag(&state, &caller, &dag_id).await?;
    let run = find_run(&state, &dag_id, &run_id).await?;
    let map_index = query.get("map_index").and_then(|text| text.parse::<i32>().ok());
    let instances = task_instances_of(&state, &run, &task_id).await?;
    if map_index.is_none() && instances.iter().any(|ti| ti.map_index >= 0) {
        let mapped = instances.into_iter().filter(|ti| ti.map_index >= 0).collect();
        return mapped_page(&state, &caller, &dag_row, &run, &task_id, mapped, note(&query)).await;
    }
    let ti = pick_instance(instances, &run_id, &task_id, map_index)?;
    let attempts = state.store.task_attempts(ti.ti_pk).await?;
    let chosen = query.get("try").and_then(|text| text.parse::<u32>().ok()).unwrap_or(ti.try_number);
    let zone = &dag_row.timezone;
    let log = if chosen >= 1 && attempts.iter().any(|attempt| attempt.try_number == chosen) {
        let key = (dag_id.clone(), run_id.clone(), task_id.clone(), chosen);
        Some(crate::logs::tail_for_page(&state, ti.ti_pk, &key, LOG_LINES).await)
    } else {
        None
    };
    // A mapped instance is named by `?map_index=` on every link and API call.
    let instance = map_index.map_or(String::new(), |index| format!("map_index={index}"));
    let log_url = format!(
        "/api/v1/dags/{}/runs/{}/tasks/{}/tries/{chosen}/log",
        encode(&dag_id),
        encode(&run_id),
        encode(&task_id)
    );
    let raw_log_url = if instance.is_empty() { log_url.clone() } else { format!("{log_url}?{instance}") };
    let stream_url =
        if instance.is_empty() { format!("{log_url}/stream") } else { format!("{log_url}/stream?{instance}") };
    let url = task_url(&dag_id, &run_id, &task_id);
    let try_link = |try_number: u32| {
        if instance.is_empty() {
            format!("{url}?try={try_number}")
        } else {
            format!("{url}?{instance}&try={try_number}")
        }
    };
    let busy = matches!(ti.state, TaskState::Queued | TaskState::Running);
    let dag = definition(&state, &dag_id, &run.version.0).await?;
    // Rendered as the attempt would be, with every secret value shown as `***`.
    // The run's outputs and the secrets, read once for the rendered fields and the output.
    let texts = state.store.run_outputs(&dag_id, &run_id).await?;
    let outputs: std::collections::BTreeMap<String, serde_json::Value> =
        texts.iter().filter_map(|(task_id, text)| Some((task_id.clone(), serde_json::from_str(text).ok()?))).collect();
    let database =
        updraft_runner::secrets::load(state.store.as_ref(), state.cipher.as_deref()).await.unwrap_or_default();
    let wanted = dag.task(&task_id).map(|task| updraft_runner::template::wanted(&dag, task)).unwrap_or_default();
    let secrets = updraft_runner::secrets::for_task(&database, &state.backends, &wanted).await.unwrap_or(database);
    // Outputs may carry secrets too: the output and every rendered value are masked.
    let masker = updraft_runner::secrets::Masker::new(&secrets);
    let output = texts
        .get(&task_id)
        .and_then(|text| match map_index {
            None => Some(text.clone()),
            Some(index) => crate::api::instance_output(text, index),
        })
        .map(|text| crate::api::masked_output(&masker, &text));
    let item = ti.map_item.as_deref().map(|text| masker.mask(text).into_owned());
    let rendered = dag.task(&task_id).map(|task| {
        let context = updraft_runner::template::RunContext {
            run_id: run.run_id.clone(),
            run_type: run.run_type.as_str().to_string(),
            logical_date: run.logical_date,
            interval: run.interval,
            conf: run.conf.clone(),
            outputs,
            mapped: updraft_runner::template::Mapped::from_stored(ti.map_index, ti.map_item.as_deref()),
        };
        let templates = updraft_runner::template::environment();
        let shown = updraft_runner::secrets::masked(&secrets);
        updraft_runner::template::render_fields(&templates, &dag, task, &context, chosen.max(1), &shown)
            .into_iter()
            .map(|(field, value)| (field, value.map(|text| masker.mask(&text).into_owned())))
            .collect::<Vec<_>>()
    });
    let body = html! {
        p { a href=(dag_url(&dag_id)) { (dag_id) } " / " a href=(run_url(&dag_id, &run_id)) { (run_id) } }
        @if ti.map_index >= 0 { p { a href=(url) { "← all instances of " (task_id) } } }
        h1 { (ti.label()) " " (state_badge(ti.state.as_str())) }
        div.meta {
            @if let Some(item) = &item { div { span { "Item" } code id="item" { (item) } } }
            div { span { "Try" } (ti.try_number) " of " (ti.max_tries + 1) }
            div { span { "Pool" } (ti.pool) }
            div { span { "Started" } (time(ti.start_date, zone)) }
            div { span { "Ended" } (time(ti.end_date, zone)) }
            div { span { "Duration" } (duration(ti.start_date, ti.end_date)) }
            div { span { "Host" } (ti.hostname.as_deref().unwrap_or("—")) }
            @if let Some(reason) = &ti.wait_reason { div { span { "Waiting because" } (reason) } }
        }
        div.filters {
            @if busy {
                span.muted { "It is " (ti.state) ": it can be changed once its attempt ends." }
            } @else {
                @if ti.map_index < 0 {
                    form.inline method="post" action=(format!("{url}/clear")) data-confirm="Run this task again?" {
                        (csrf_field(&caller))
                        label { input type="checkbox" name="downstream" value="true"; " with downstream " }
                        button.primary type="submit" { "Clear" }
                    }
                }
                @for (to, label) in [("success", "Mark success"), ("failed", "Mark failed"), ("skipped", "Mark skipped")] {
                    @if ti.state.as_str() != to {
                        form.inline method="post" action=(format!("{url}/state")) {
                            (csrf_field(&caller))
                            input type="hidden" name="state" value=(to);
                            @if ti.map_index >= 0 { input type="hidden" name="map_index" value=(ti.map_index); }
                            button.danger[to == "failed"] type="submit" { (label) }
                        }
                    }
                }
            }
        }
        h2 { "Rendered" }
        @match &rendered {
            Some(fields) => {
                table.list id="rendered" {
                    @for (field, value) in fields {
                        tr {
                            th { code { (field) } }
                            td { @match value {
                                Ok(text) => pre.code { (text) },
                                Err(error) => span.state.s-failed { "cannot render: " (error) },
                            } }
                        }
                    }
                }
            }
            None => p.muted { "This version of the DAG has no task " code { (task_id) } "." },
        }
        @if let Some(output) = &output {
            h2 { "Output" }
            pre.code id="output" { (output_text(output)) }
        }
        h2 { "Log" }
        @if attempts.is_empty() {
            p.muted { "No try yet." }
        } @else {
            p.attempts { "Try: "
                @for attempt in &attempts {
                    @if attempt.try_number == chosen { strong { (attempt.try_number) } " " }
                    @else { a href=(try_link(attempt.try_number)) { (attempt.try_number) } " " }
                }
                @if let Some(attempt) = attempts.iter().find(|attempt| attempt.try_number == chosen) {
                    span id="attempt-state" class=(format!("state s-{}", attempt.state)) { (attempt.state) }
                    @if let Some(reason) = &attempt.reason { " " span.muted { (reason) } }
                }
            }
            @match log {
                Some(Ok((text, offset, attempt_state))) => {
                    pre.log id="log" data-stream=(stream_url) data-offset=(offset)
                        data-state=(attempt_state) aria-live="polite" { (log_lines(&text)) }
                    p.muted { a href=(raw_log_url) { "Raw log" } }
                }
                Some(Err(error)) => p.muted { (error.into_parts().1) },
                None => p.muted { "No such try." },
            }
        }
    };
    let note = note(&query);
    Ok(Html(
        page(&format!("{} — {dag_id}", ti.label()), Some(&caller), broken_files(&state).await?, note, body)
            .into_string(),
    ))
}

/// A mapped task's page: its instances, each linking to its own page, and the
/// actions on the whole task.
async fn mapped_page(
    state: &AppState,
    caller: &Caller,
    dag_row: &DagRow,
    run: &RunRow,
    task_id: &str,
    mut instances: Vec<TaskInstanceRow>,
    note: Option<&str>,
) -> PageResult {
    instances.sort_by_key(|ti| ti.map_index);
    let (dag_id, run_id) = (&run.dag_id, &run.run_id);
    let url = task_url(dag_id, run_id, task_id);
    let zone = &dag_row.timezone;
    let overall = summary_state(instances.iter().map(|ti| ti.state));
    let busy = instances.iter().any(|ti| matches!(ti.state, TaskState::Queued | TaskState::Running));
    let secrets =
        updraft_runner::secrets::load(state.store.as_ref(), state.cipher.as_deref()).await.unwrap_or_default();
    let masker = updraft_runner::secrets::Masker::new(&secrets);
    let mut counts: Vec<(TaskState, usize)> = Vec::new();
    for ti in &instances {
        match counts.iter_mut().find(|(state, _)| *state == ti.state) {
            Some((_, count)) => *count += 1,
            None => counts.push((ti.state, 1)),
        }
    }
    let body = html! {
        p { a href=(dag_url(dag_id)) { (dag_id) } " / " a href=(run_url(dag_id, run_id)) { (run_id) } }
        h1 { (task_id) " " (state_badge(overall.as_str())) }
        p id="mapped-summary" { "Mapped into " (instances.len()) " instances: "
            @for (index, (state, count)) in counts.iter().enumerate() {
                @if index > 0 { ", " }
                (count) " " (state.as_str())
            }
        }
        div.filters {
            @if busy {
                span.muted { "Some instances are queued or running: the task can be cleared once they end." }
            } @else {
                form.inline method="post" action=(format!("{url}/clear")) data-confirm="Run every instance again?" {
                    (csrf_field(caller))
                    label { input type="checkbox" name="downstream" value="true"; " with downstream " }
                    button.primary type="submit" { "Clear all" }
                }
            }
        }
        table.list id="instances" {
            thead { tr { th { "Index" } th { "Item" } th { "State" } th { "Try" } th.wide { "Started" } th { "Duration" } } }
            tbody {
                @for ti in &instances {
                    tr data-map-index=(ti.map_index) {
                        td { a href=(instance_url(dag_id, run_id, task_id, ti.map_index)) { (ti.map_index) } }
                        td { code { (masker.mask(ti.map_item.as_deref().unwrap_or("null"))) } }
                        td { (state_badge(ti.state.as_str())) }
                        td { (ti.try_number) " / " (ti.max_tries + 1) }
                        td.wide { (time(ti.start_date, zone)) }
                        td { (duration(ti.start_date, ti.end_date)) }
                    }
                }
            }
        }
    };
    Ok(Html(page(&format!("{task_id} — {dag_id}"), Some(caller), broken_files(state).await?, note, body).into_string()))
}

/// An output for the page: pretty JSON, cut at 64 KiB (the API has it whole).
fn output_text(output: &serde_json::Value) -> String {
    const SHOWN: usize = 64 * 1024;
    let text = serde_json::to_string_pretty(output).unwrap_or_default();
    if text.len() <= SHOWN {
        return text;
    }
    let mut end = SHOWN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}\n… ({} bytes more: see the API)", &text[..end], text.len() - end)
}

/// Log lines with Updraft's own lines and likely errors marked.
fn log_lines(data: &[u8]) -> Markup {
    let text = String::from_utf8_lossy(data);
    html! {
        @for line in text.split_inclusive('\n') {
            @if line.starts_with("[updraft ") { span.sys { (line) } }
            @else if is_error_line(line) { span.err { (line) } }
            @else { (line) }
        }
    }
}

fn is_error_line(line: &str) -> bool {
    let lower = line.to_ascii_lowercase();
    ["error", "exception", "traceback", "failed", "fatal", "panic"].iter().any(|word| lower.contains(word))
}

#[derive(Debug, Deserialize)]
pub struct ClearForm {
    #[serde(default)]
    downstream: Option<String>,
}

pub async fn clear_task(
    State(state): State<AppState>,
    caller: Caller,
    Path((dag_id, run_id, task_id)): Path<(String, String, String)>,
    Form(form): Form<ClearForm>,
) -> Result<Redirect, UiError> {
    editable_dag(&state, &caller, &dag_id).await?;
    let run = find_run(&state, &dag_id, &run_id).await?;
    let downstream = form.downstream.is_some();
    let request = Request::Clear { task_ids: vec![task_id.clone()], downstream };
    intervene(&state, &caller, &run, request).await?;
    let what = if downstream { " and its downstream" } else { "" };
    Ok(back(&task_url(&dag_id, &run_id, &task_id), &format!("Cleared {task_id}{what}: it runs again")))
}

pub async fn mark_task(
    State(state): State<AppState>,
    caller: Caller,
    Path((dag_id, run_id, task_id)): Path<(String, String, String)>,
    Form(form): Form<StateForm>,
) -> Result<Redirect, UiError> {
    editable_dag(&state, &caller, &dag_id).await?;
    let run = find_run(&state, &dag_id, &run_id).await?;
    let ti = find_task_instance(&state, &dag_id, &run_id, &task_id, form.map_index).await?;
    let to = match form.state.as_str() {
        "success" => TaskState::Success,
        "failed" => TaskState::Failed,
        "skipped" => TaskState::Skipped,
        other => {
            return Err(ApiError::BadRequest(format!(
                "a task can be marked success, failed or skipped, not `{other}`"
            ))
            .into());
        }
    };
    intervene(&state, &caller, &run, Request::MarkInstance { ti_pk: ti.ti_pk, to }).await?;
    Ok(back(&instance_url(&dag_id, &run_id, &task_id, ti.map_index), &format!("Marked {} {to}", ti.label())))
}

// ---------------------------------------------------------------- audit log

pub async fn audit_page(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<HashMap<String, String>>,
) -> PageResult {
    caller.require(Action::Administer)?;
    let before = query.get("before").and_then(|text| text.parse::<i64>().ok());
    let rows = state.store.audit_log(before, 100).await?;
    let body = html! {
        h1 { "Audit log" }
        table.list id="audit" {
            thead { tr { th { "When" } th { "Who" } th { "What" } th { "On" } th.wide { "Detail" } } }
            tbody {
                @for row in &rows {
                    tr {
                        td { (time(Some(row.at), "UTC")) }
                        td { (row.entry.actor) }
                        td { code { (row.entry.action) } }
                        td { (row.entry.target) }
                        td.wide { (row.entry.detail.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
        @if rows.len() == 100 {
            @if let Some(last) = rows.last() {
                p { a.button href=(format!("/audit?before={}", last.id)) { "Older →" } }
            }
        }
    };
    Ok(Html(page("Audit log", Some(&caller), broken_files(&state).await?, None, body).into_string()))
}

// ---------------------------------------------------------------- parse errors

pub async fn import_errors(State(state): State<AppState>, caller: Caller) -> PageResult {
    let errors = state.store.import_errors().await?;
    let body = html! {
        h1 { "Parse errors" }
        @if errors.is_empty() {
            p { "Every DAG file reads cleanly." }
        }
        @for error in &errors {
            h2 { code { (error.fileloc) } }
            pre.code { (error.message) }
        }
    };
    Ok(Html(page("Parse errors", Some(&caller), errors.len(), None, body).into_string()))
}
