//! The frame of every page, and small pieces pages share.

use jiff::Timestamp;
use maud::{DOCTYPE, Markup, html};

use crate::Caller;

/// A whole page: header, the parse-error banner when any DAG file is broken,
/// an optional message, and `body`.
pub fn page(title: &str, caller: Option<&Caller>, broken_files: usize, flash: Option<&str>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " — Updraft" }
                link rel="stylesheet" href="/static/app.css";
                link rel="icon" href="data:,";
                script src="/static/app.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/" { "Updraft" }
                    a href="/" { "DAGs" }
                    a href="/import-errors" { "Parse errors" }
                    a href="/api/v1/docs" { "API" }
                    @if caller.is_some_and(|caller| caller.may(updraft_auth::Action::EditPlatform)) {
                        a href="/variables" { "Variables" }
                        a href="/connections" { "Connections" }
                    }
                    @if caller.is_some_and(|caller| caller.signed_in && caller.may(updraft_auth::Action::Administer)) {
                        a href="/audit" { "Audit log" }
                    }
                    @if caller.is_some_and(|caller| caller.signed_in) {
                        a href="/tokens" { "API tokens" }
                    }
                    @if let Some(caller) = caller.filter(|caller| caller.signed_in) {
                        span.who { (caller.principal.username) " (" (caller.principal.role) ")" }
                        form.inline method="post" action="/logout" {
                            (csrf_field(caller))
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                main {
                    @if broken_files > 0 {
                        div.banner role="alert" {
                            strong { (broken_files) " DAG file" @if broken_files > 1 { "s" } " cannot be read. " }
                            a href="/import-errors" { "See the errors" }
                        }
                    }
                    @if let Some(flash) = flash {
                        div.flash role="status" { (flash) }
                    }
                    (body)
                }
            }
        }
    }
}

/// An error page: what went wrong, in the frame.
pub fn error_page(status: u16, detail: &str) -> Markup {
    page(
        "Error",
        None,
        0,
        None,
        html! {
            h1 { "Something is not right (" (status) ")" }
            div.flash.error role="alert" { (detail) }
            p { a href="/" { "Back to the DAGs" } }
        },
    )
}

/// The hidden field every form carries (see `csrf.rs`).
pub fn csrf_field(caller: &Caller) -> Markup {
    html! { input type="hidden" name="csrf" value=(caller.csrf); }
}

/// A time for the viewer's zone (the script rewrites it; without the script it
/// reads as UTC), with the DAG's zone in its title.
pub fn time(at: Option<Timestamp>, zone: &str) -> Markup {
    match at {
        Some(at) => html! {
            time datetime=(at.to_string()) data-zone=(zone) { (at.strftime("%Y-%m-%d %H:%M:%S UTC")) }
        },
        None => html! { span.muted { "—" } },
    }
}

pub fn state_badge(state: &str) -> Markup {
    html! { span.state.(format!("s-{state}")) { (state.replace('_', " ")) } }
}

pub use updraft_core::links::{dag_url, instance_url, run_url, task_url};

/// One state for a task's instances (a mapped task's many): what is still moving
/// first, then a failure, then success.
pub fn summary_state(states: impl IntoIterator<Item = updraft_core::TaskState>) -> updraft_core::TaskState {
    use updraft_core::TaskState::*;
    const PRECEDENCE: [updraft_core::TaskState; 10] =
        [Running, Queued, UpForRetry, Scheduled, None, Failed, UpstreamFailed, Success, Skipped, Removed];
    let states: Vec<updraft_core::TaskState> = states.into_iter().collect();
    PRECEDENCE.into_iter().find(|state| states.contains(state)).unwrap_or(None)
}

/// How long between two times, in words a person reads at a glance.
pub fn duration(start: Option<Timestamp>, end: Option<Timestamp>) -> String {
    let (Some(start), Some(end)) = (start, end) else { return String::new() };
    let seconds = end.duration_since(start).as_secs_f64().max(0.0);
    if seconds < 1.0 {
        format!("{} ms", (seconds * 1000.0).round() as u64)
    } else if seconds < 60.0 {
        format!("{seconds:.1}s")
    } else if seconds < 3600.0 {
        format!("{}m {:02}s", (seconds / 60.0) as u64, (seconds % 60.0) as u64)
    } else {
        format!("{}h {:02}m", (seconds / 3600.0) as u64, ((seconds % 3600.0) / 60.0) as u64)
    }
}

/// YAML with keys, strings, numbers and comments marked for colour.
pub fn highlight_yaml(source: &str) -> Markup {
    html! {
        @for line in source.lines() {
            (highlight_line(line)) "\n"
        }
    }
}

fn highlight_line(line: &str) -> Markup {
    let (code, comment) = split_comment(line);
    let trimmed = code.trim_start();
    let indent = &code[..code.len() - trimmed.len()];
    let (dash, rest) = match trimmed.strip_prefix("- ") {
        Some(rest) => ("- ", rest),
        None => ("", trimmed),
    };
    let key_end = rest.find(": ").or_else(|| rest.strip_suffix(':').map(str::len));
    html! {
        (indent) (dash)
        @match key_end {
            Some(end) if !rest[..end].contains(['{', '[', '"', '\'']) => {
                span.k { (&rest[..end]) } (":") (value(&rest[(end + 1).min(rest.len())..]))
            }
            _ => (value(rest)),
        }
        @if let Some(comment) = comment { span.c { (comment) } }
    }
}

fn value(text: &str) -> Markup {
    let trimmed = text.trim();
    if trimmed.starts_with(['"', '\'']) {
        html! { span.s { (text) } }
    } else if !trimmed.is_empty() && trimmed.parse::<f64>().is_ok() {
        html! { span.n { (text) } }
    } else {
        html! { (text) }
    }
}

/// Splits off a `#` comment that is not inside quotes.
fn split_comment(line: &str) -> (&str, Option<&str>) {
    let mut quote = None;
    for (at, c) in line.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(open), c) if c == open => quote = None,
            (None, '#') if at == 0 || line[..at].ends_with([' ', '\t']) => return (&line[..at], Some(&line[at..])),
            _ => {}
        }
    }
    (line, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_is_marked_and_escaped() {
        let html = highlight_yaml("dag: etl # the <main> one\ntasks:\n  - x: 'a # b'\n    n: 3\n").into_string();
        assert!(html.contains("<span class=\"k\">dag</span>:"), "{html}");
        assert!(html.contains("<span class=\"c\"># the &lt;main&gt; one</span>"), "{html}");
        assert!(
            html.contains("<span class=\"s\"> &#39;a # b&#39;</span>")
                || html.contains("<span class=\"s\"> 'a # b'</span>"),
            "{html}"
        );
        assert!(html.contains("<span class=\"n\"> 3</span>"), "{html}");
    }

    #[test]
    fn durations() {
        let t = |s: i64| Some(Timestamp::from_second(s).unwrap());
        assert_eq!(duration(t(0), t(5)), "5.0s");
        let ms = |n: i64| Some(Timestamp::from_millisecond(n).unwrap());
        assert_eq!(duration(ms(0), ms(12)), "12 ms");
        assert_eq!(duration(t(0), t(125)), "2m 05s");
        assert_eq!(duration(t(0), t(7300)), "2h 01m");
        assert_eq!(duration(t(0), None), "");
    }
}
