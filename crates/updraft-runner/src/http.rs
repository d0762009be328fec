//! Runs `http` tasks in the runner itself: requests with the connection's base URL
//! and credentials, paging, a rate limit, retries of 429 and 5xx answers that
//! honour `Retry-After`, checks, and the JSON path whose matches are handed on.
//! Every line it logs goes through the attempt's masker (an API key in a query
//! string shows as `***`).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use serde_json_path::JsonPath;
use tokio::sync::mpsc;
use updraft_core::http::{Expect, HttpAuth, HttpTask, Pagination};
use updraft_store::ConnectionValues;

/// Longest wait for one retry, whatever `Retry-After` asks.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(300);
/// How much of a refused answer's body an error quotes.
const QUOTED: usize = 300;

/// One client for every attempt: connections are reused across a fan-out.
fn client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("updraft/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default()
    })
}

/// The task's templated fields, rendered, in `Task::templated`'s order
/// (`http.url`, `http.query.<name>`, ...).
pub struct Rendered {
    pub fields: Vec<(String, String)>,
}

impl Rendered {
    fn get(&self, field: &str) -> Option<&str> {
        self.fields.iter().find(|(name, _)| name == field).map(|(_, value)| value.as_str())
    }

    fn prefixed(&self, prefix: &str) -> Vec<(String, String)> {
        self.fields
            .iter()
            .filter_map(|(field, value)| Some((field.strip_prefix(prefix)?.to_string(), value.clone())))
            .collect()
    }
}

/// Makes the task's requests; its output (JSON text), or why it failed.
pub async fn run(
    task: &HttpTask,
    rendered: &Rendered,
    connections: &std::collections::BTreeMap<String, ConnectionValues>,
    dag_folder: &Path,
    log: mpsc::Sender<String>,
) -> Result<Option<String>, String> {
    let connection = task.connection.as_ref().and_then(|id| connections.get(id));
    let say = |line: String| {
        let log = log.clone();
        async move {
            let _ = log.send(line).await;
        }
    };
    let url = full_url(rendered.get("http.url").unwrap_or_default(), connection)?;
    let mut query = rendered.prefixed("http.query.");
    let mut headers = rendered.prefixed("http.headers.");
    if let (Some(auth), Some(connection)) = (&task.auth, connection) {
        let secret = connection.password.clone().unwrap_or_default();
        match auth {
            HttpAuth::Basic | HttpAuth::Bearer => {}
            HttpAuth::ApiKeyHeader(name) => headers.push((name.clone(), secret)),
            HttpAuth::ApiKeyQuery(name) => query.push((name.clone(), secret)),
        }
    }
    let body = match (&task.json, rendered.get("http.body")) {
        (Some(json), _) => {
            let strings =
                rendered.fields.iter().filter(|(name, _)| name == "http.json" || name.starts_with("http.json."));
            let mut strings = strings.map(|(_, value)| value.clone());
            Some((fill_json(json, &mut strings).to_string(), "application/json"))
        }
        (None, Some(body)) => Some((body.to_string(), "text/plain; charset=utf-8")),
        (None, None) => None,
    };
    // Answers for an object are gathered and written once, at the end.
    let save_object = rendered.get("http.save_to").filter(|to| to.contains("://") && !to.starts_with("file://"));
    let mut saved = Vec::new();
    let save_to = rendered.get("http.save_to").filter(|_| save_object.is_none()).map(|path| dag_folder.join(path));
    if let Some(path) = &save_to {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|error| format!("cannot create `{}`: {error}", parent.display()))?;
        }
        std::fs::write(path, b"").map_err(|error| format!("cannot write `{}`: {error}", path.display()))?;
    }
    let extract = task.extract.as_deref().map(parse_path).transpose()?;
    let expect_path = task.expect.path.as_deref().map(parse_path).transpose()?;
    let method = reqwest::Method::from_bytes(task.method.as_bytes()).map_err(|error| error.to_string())?;
    let mut limiter = RateLimiter::new(task.rate_limit);

    let mut page_url = url.clone();
    let mut page_query = query.clone();
    let mut page_number = match &task.pagination {
        Some(Pagination::Page { start, size_param, size, param }) => {
            if let (Some(size_param), Some(size)) = (size_param, size) {
                page_query.push((size_param.clone(), size.to_string()));
            }
            page_query.push((param.clone(), start.to_string()));
            *start
        }
        _ => 0,
    };
    let mut pages: Vec<Value> = Vec::new();
    let mut items: Vec<Value> = Vec::new();
    let mut single: Option<Value> = None;
    for page in 1..=task.max_pages {
        let answer =
            request(task, &method, &page_url, &page_query, &headers, body.as_ref(), connection, &mut limiter, &log)
                .await?;
        let Answer { status, elapsed, text, link_next } = answer;
        if let Some(path) = &save_to {
            append_line(path, &text)?;
        }
        if save_object.is_some() {
            saved.extend_from_slice(saved_line(&text).as_bytes());
            saved.push(b'\n');
        }
        let needs_json = extract.is_some() || expect_path.is_some() || task.pagination.is_some();
        let json: Option<Value> = match serde_json::from_str(&text) {
            Ok(json) => Some(json),
            Err(error) if needs_json => {
                return Err(format!("the answer to page {page} is not JSON ({error}): {}", quote(&text)));
            }
            Err(_) => None,
        };
        if let (Some(path), Some(json)) = (&expect_path, &json) {
            check_expected(&task.expect, path, json, page)?;
        }
        let page_items = match (&extract, &json) {
            (Some(path), Some(json)) => {
                let matches: Vec<Value> = path.query(json).all().into_iter().cloned().collect();
                if matches.is_empty() && page == 1 {
                    return Err(format!(
                        "`extract` `{}` matched nothing in the answer to page 1: {}",
                        task.extract.as_deref().unwrap_or_default(),
                        quote(&text)
                    ));
                }
                if task.pagination.is_none() {
                    single = Some(if matches.len() == 1 { matches[0].clone() } else { Value::Array(matches.clone()) });
                }
                match matches.as_slice() {
                    [Value::Array(inner)] => inner.clone(),
                    _ => matches,
                }
            }
            _ => Vec::new(),
        };
        say(format!(
            "{} {} -> {status} in {} ms{}",
            task.method,
            shown_url(&page_url, &page_query),
            elapsed.as_millis(),
            if extract.is_some() { format!(", {} item(s)", page_items.len()) } else { String::new() }
        ))
        .await;
        let count = page_items.len() as u64;
        items.extend(page_items);
        if extract.is_none() {
            pages.push(json.clone().unwrap_or(Value::String(text.clone())));
        }
        // The next page, if any.
        let next = match &task.pagination {
            None => None,
            Some(Pagination::Page { param, size, .. }) => {
                let done = count == 0 || size.is_some_and(|size| count < size);
                (!done).then(|| {
                    page_number += 1;
                    set_param(&mut page_query, param, page_number.to_string());
                    page_url.clone()
                })
            }
            Some(Pagination::Cursor { param, path }) => {
                let cursor = json.as_ref().and_then(|json| first_text(&parse_path(path).ok()?, json));
                cursor.map(|cursor| {
                    set_param(&mut page_query, param, cursor);
                    page_url.clone()
                })
            }
            Some(Pagination::NextLink { path }) => {
                let next = match path {
                    Some(path) => json.as_ref().and_then(|json| first_text(&parse_path(path).ok()?, json)),
                    None => link_next,
                };
                match next {
                    Some(next) => {
                        // The link carries its own query; the first page's stays only for auth.
                        page_query.retain(|(name, _)| query_auth_name(task).is_some_and(|auth| auth == name));
                        Some(
                            resolve(&page_url, &next)
                                .ok_or_else(|| format!("the next page's link `{next}` is not a URL"))?,
                        )
                    }
                    None => None,
                }
            }
        };
        match next {
            Some(url) => {
                page_url = url;
                if page == task.max_pages {
                    say(format!("stopped after `max_pages` ({}) pages; more were offered", task.max_pages)).await;
                }
            }
            None => break,
        }
    }
    let output = match (&extract, &task.pagination) {
        (Some(_), None) => single,
        (Some(_), Some(_)) => Some(Value::Array(items)),
        (None, None) => pages.pop(),
        (None, Some(_)) => Some(Value::Array(pages)),
    };
    if let Some(target) = save_object {
        let save_connection = task.save_connection.as_ref().and_then(|id| connections.get(id));
        let size = saved.len();
        crate::objects::put(target, save_connection, dag_folder, saved).await?;
        say(format!("saved the answers to {target} ({size} bytes)")).await;
    }
    Ok(output.map(|output| output.to_string()))
}

struct Answer {
    status: reqwest::StatusCode,
    elapsed: Duration,
    text: String,
    link_next: Option<String>,
}

/// One request, retried on 429, 5xx or no answer, within the rate limit.
#[allow(clippy::too_many_arguments)]
async fn request(
    task: &HttpTask,
    method: &reqwest::Method,
    url: &url::Url,
    query: &[(String, String)],
    headers: &[(String, String)],
    body: Option<&(String, &'static str)>,
    connection: Option<&ConnectionValues>,
    limiter: &mut RateLimiter,
    log: &mpsc::Sender<String>,
) -> Result<Answer, String> {
    let shown = shown_url(url, query);
    let mut attempt = 0;
    loop {
        limiter.wait().await;
        let mut target = url.clone();
        if !query.is_empty() {
            target.query_pairs_mut().extend_pairs(query);
        }
        let mut builder = client().request(method.clone(), target).timeout(task.request_timeout.to_std());
        for (name, value) in headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        if let Some(connection) = connection {
            builder = match &task.auth {
                Some(HttpAuth::Basic) => {
                    builder.basic_auth(connection.login.clone().unwrap_or_default(), connection.password.clone())
                }
                Some(HttpAuth::Bearer) => builder.bearer_auth(connection.password.clone().unwrap_or_default()),
                _ => builder,
            };
        }
        if let Some((body, content_type)) = body {
            builder = builder.header(reqwest::header::CONTENT_TYPE, *content_type).body(body.clone());
        }
        let started = Instant::now();
        let retry_in = match builder.send().await {
            Ok(response) => {
                let status = response.status();
                let retry_after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|value| value.to_str().ok())
                    .and_then(retry_after);
                let link_next = response
                    .headers()
                    .get_all(reqwest::header::LINK)
                    .iter()
                    .filter_map(|value| value.to_str().ok())
                    .find_map(next_link);
                let text = response.text().await.unwrap_or_default();
                let retryable = status == reqwest::StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
                let accepted = if task.expect.status.is_empty() {
                    status.is_success()
                } else {
                    task.expect.status.contains(&status.as_u16())
                };
                if accepted {
                    return Ok(Answer { status, elapsed: started.elapsed(), text, link_next });
                }
                if !retryable || attempt >= task.request_retries {
                    return Err(format!("{} {shown} answered {status}: {}", task.method, quote(&text)));
                }
                let wait = retry_after.unwrap_or_else(|| backoff(attempt)).min(MAX_RETRY_WAIT);
                let _ = log
                    .send(format!(
                        "{} {shown} answered {status}; retrying in {:.1}s ({} of {})",
                        task.method,
                        wait.as_secs_f64(),
                        attempt + 1,
                        task.request_retries
                    ))
                    .await;
                wait
            }
            Err(error) => {
                let why = describe_error(&error);
                if attempt >= task.request_retries {
                    return Err(format!("{} {shown} failed: {why}", task.method));
                }
                let wait = backoff(attempt);
                let _ = log
                    .send(format!(
                        "{} {shown} failed: {why}; retrying in {:.1}s ({} of {})",
                        task.method,
                        wait.as_secs_f64(),
                        attempt + 1,
                        task.request_retries
                    ))
                    .await;
                wait
            }
        };
        tokio::time::sleep(retry_in).await;
        attempt += 1;
    }
}

fn describe_error(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return "no answer within `request_timeout`".to_string();
    }
    if error.is_connect() {
        return "cannot connect".to_string();
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// 1 s, 2 s, 4 s, ... up to a minute.
fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.min(6)).min(Duration::from_secs(60))
}

/// `Retry-After`: seconds, or an HTTP date.
fn retry_after(value: &str) -> Option<Duration> {
    if let Ok(secs) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = jiff::fmt::rfc2822::parse(value.trim()).ok()?.timestamp();
    let wait = at.duration_since(jiff::Timestamp::now());
    Some(Duration::try_from(wait).unwrap_or(Duration::ZERO))
}

/// The `rel="next"` URL of a `Link` header value.
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let is_next = params.split(';').any(|param| {
            let param = param.trim().replace(' ', "");
            param == "rel=\"next\"" || param == "rel=next"
        });
        is_next.then(|| target.trim().trim_start_matches('<').trim_end_matches('>').to_string())
    })
}

struct RateLimiter {
    every: Option<Duration>,
    next: Option<tokio::time::Instant>,
}

impl RateLimiter {
    fn new(per_second: Option<f64>) -> RateLimiter {
        RateLimiter { every: per_second.map(|rate| Duration::from_secs_f64(1.0 / rate)), next: None }
    }

    async fn wait(&mut self) {
        let Some(every) = self.every else { return };
        if let Some(next) = self.next {
            tokio::time::sleep_until(next).await;
        }
        self.next = Some(tokio::time::Instant::now() + every);
    }
}

fn parse_path(path: &str) -> Result<JsonPath, String> {
    JsonPath::parse(path).map_err(|error| format!("invalid JSON path `{path}`: {error}"))
}

fn first_text(path: &JsonPath, json: &Value) -> Option<String> {
    match path.query(json).all().first()? {
        Value::Null => None,
        Value::String(text) if text.is_empty() => None,
        Value::String(text) => Some(text.clone()),
        other => Some(other.to_string()),
    }
}

fn check_expected(expect: &Expect, path: &JsonPath, json: &Value, page: u32) -> Result<(), String> {
    let shown = expect.path.as_deref().unwrap_or_default();
    let matches = path.query(json).all();
    let Some(found) = matches.first() else {
        return Err(format!("`expect.path` `{shown}` matched nothing in the answer to page {page}"));
    };
    if let Some(equals) = &expect.equals {
        let text = match found {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        if &text != equals {
            return Err(format!("`expect.path` `{shown}` is `{text}` in the answer to page {page}, not `{equals}`"));
        }
    }
    Ok(())
}

/// The connection's base (`schema://host:port`, as Airflow's HTTP connections)
/// joined with `url`, unless `url` is absolute.
fn full_url(url: &str, connection: Option<&ConnectionValues>) -> Result<url::Url, String> {
    if url.starts_with("http://") || url.starts_with("https://") {
        return url::Url::parse(url).map_err(|error| format!("`url` `{url}` is not a URL: {error}"));
    }
    let Some(connection) = connection else {
        return Err(format!("`url` `{url}` is not absolute and the task names no `connection` to start from"));
    };
    let host = connection.host.clone().unwrap_or_default();
    let base = if host.contains("://") {
        host
    } else {
        let scheme = match connection.schema.as_deref() {
            Some(scheme @ ("http" | "https")) => scheme,
            _ if connection.conn_type == "https" => "https",
            _ => "http",
        };
        match connection.port {
            Some(port) => format!("{scheme}://{host}:{port}"),
            None => format!("{scheme}://{host}"),
        }
    };
    let joined = format!("{}/{}", base.trim_end_matches('/'), url.trim_start_matches('/'));
    url::Url::parse(&joined).map_err(|error| format!("`{joined}` is not a URL: {error}"))
}

fn resolve(base: &url::Url, next: &str) -> Option<url::Url> {
    base.join(next).ok()
}

fn query_auth_name(task: &HttpTask) -> Option<&str> {
    match &task.auth {
        Some(HttpAuth::ApiKeyQuery(name)) => Some(name),
        _ => None,
    }
}

fn set_param(query: &mut Vec<(String, String)>, name: &str, value: String) {
    query.retain(|(existing, _)| existing != name);
    query.push((name.to_string(), value));
}

fn shown_url(url: &url::Url, query: &[(String, String)]) -> String {
    let mut url = url.clone();
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    url.to_string()
}

fn append_line(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|error| format!("cannot write `{}`: {error}", path.display()))?;
    writeln!(file, "{}", saved_line(text)).map_err(|error| format!("cannot write `{}`: {error}", path.display()))
}

/// JSON is saved compact, one answer a line; other text as it came.
fn saved_line(text: &str) -> String {
    serde_json::from_str::<Value>(text).map(|json| json.to_string()).unwrap_or_else(|_| text.to_string())
}

fn quote(text: &str) -> String {
    let text = text.trim();
    if text.chars().count() <= QUOTED {
        return text.to_string();
    }
    format!("{}…", text.chars().take(QUOTED).collect::<String>())
}

/// `json` with its strings replaced, in order, by their rendered texts.
fn fill_json(json: &Value, rendered: &mut impl Iterator<Item = String>) -> Value {
    match json {
        Value::String(_) => Value::String(rendered.next().unwrap_or_default()),
        Value::Array(items) => Value::Array(items.iter().map(|item| fill_json(item, rendered)).collect()),
        Value::Object(fields) => {
            Value::Object(fields.iter().map(|(name, item)| (name.clone(), fill_json(item, rendered))).collect())
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_and_links() {
        assert_eq!(retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO), "a past date: at once");
        assert_eq!(retry_after("soon"), None);
        assert_eq!(
            next_link(
                r#"<https://api.example.com/items?page=2>; rel="next", <https://api.example.com/items?page=9>; rel="last""#
            ),
            Some("https://api.example.com/items?page=2".to_string())
        );
        assert_eq!(next_link(r#"<https://x/1>; rel="prev""#), None);
        assert_eq!(
            (backoff(0), backoff(3), backoff(10)),
            (Duration::from_secs(1), Duration::from_secs(8), Duration::from_secs(60))
        );
    }

    #[test]
    fn urls_start_from_the_connection() {
        let connection = |host: &str, schema: Option<&str>, port: Option<u16>| ConnectionValues {
            conn_type: "http".into(),
            host: Some(host.into()),
            schema: schema.map(String::from),
            port,
            ..ConnectionValues::default()
        };
        let joined = |url: &str, connection: &ConnectionValues| full_url(url, Some(connection)).unwrap().to_string();
        assert_eq!(
            joined("/v1/items", &connection("api.example.com", Some("https"), None)),
            "https://api.example.com/v1/items"
        );
        assert_eq!(joined("v1/items", &connection("127.0.0.1", None, Some(8080))), "http://127.0.0.1:8080/v1/items");
        assert_eq!(joined("/x", &connection("https://data.go.kr/api/", None, None)), "https://data.go.kr/api/x");
        assert_eq!(full_url("https://other/x", None).unwrap().as_str(), "https://other/x");
        assert!(full_url("/x", None).unwrap_err().contains("names no `connection`"));
    }

    #[test]
    fn json_bodies_get_their_rendered_strings_back_in_order() {
        let json: Value = serde_json::json!({ "a": "{{ ds }}", "list": ["x", 1, {"b": "y"}], "n": 2 });
        let mut rendered = vec!["2024-01-01".to_string(), "X".to_string(), "Y".to_string()].into_iter();
        assert_eq!(
            fill_json(&json, &mut rendered),
            serde_json::json!({ "a": "2024-01-01", "list": ["X", 1, {"b": "Y"}], "n": 2 })
        );
    }
}
