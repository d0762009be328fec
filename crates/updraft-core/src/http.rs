//! The `http` task type: what to request, how to page through the answers, what
//! to hand on. The runner makes the requests (`updraft_runner::http`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Duration;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpTask {
    /// `GET`, `POST`, ... (upper case).
    pub method: String,
    /// Absolute, or relative to the connection's base URL.
    pub url: String,
    pub query: BTreeMap<String, String>,
    pub headers: BTreeMap<String, String>,
    /// A text body; or `json`, whose string values are templates.
    pub body: Option<String>,
    pub json: Option<serde_json::Value>,
    /// A connection giving the base URL (`schema://host:port`) and credentials.
    pub connection: Option<String>,
    pub auth: Option<HttpAuth>,
    pub expect: Expect,
    /// A JSON path picking what to hand on; without it, the whole answer.
    pub extract: Option<String>,
    pub pagination: Option<Pagination>,
    pub max_pages: u32,
    /// Requests per second at most.
    pub rate_limit: Option<f64>,
    /// Retries of one request answered 429 or 5xx, or not answered.
    pub request_retries: u32,
    pub request_timeout: Duration,
    /// A file (relative to the DAG's folder), or an object's URL (`s3://...`),
    /// receiving each raw answer as a line.
    pub save_to: Option<String>,
    /// Credentials for a `save_to` in object storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub save_connection: Option<String>,
}

/// How the connection's `login`/`password` are presented.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpAuth {
    /// `Authorization: Basic` with the login and password.
    Basic,
    /// `Authorization: Bearer <password>`.
    Bearer,
    /// The password as this header.
    ApiKeyHeader(String),
    /// The password as this query parameter (as many public data APIs want).
    ApiKeyQuery(String),
}

/// What an answer must be for the task to succeed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Expect {
    /// Accepted statuses; empty: any 2xx.
    pub status: Vec<u16>,
    /// A JSON path that must match in every answer...
    pub path: Option<String>,
    /// ...and, if given, equal this value (compared as text).
    pub equals: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pagination {
    /// `param` = start, start + 1, ... until a page brings no items (or fewer than
    /// `size`, when `size_param` asks for pages of that size).
    Page { param: String, start: u64, size_param: Option<String>, size: Option<u64> },
    /// The next page's `param` comes from `path` in the answer; none ends.
    Cursor { param: String, path: String },
    /// The next page's URL comes from `path` in the answer, or, without one, from
    /// the `Link: <...>; rel="next"` header.
    NextLink { path: Option<String> },
}

pub const DEFAULT_MAX_PAGES: u32 = 100;
pub const DEFAULT_REQUEST_RETRIES: u32 = 3;
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 30;

impl HttpTask {
    /// The fields rendered as templates, named as in the file.
    pub fn templated(&self) -> Vec<(String, &str)> {
        let mut fields = vec![("http.url".to_string(), self.url.as_str())];
        for (name, value) in &self.query {
            fields.push((format!("http.query.{name}"), value.as_str()));
        }
        for (name, value) in &self.headers {
            fields.push((format!("http.headers.{name}"), value.as_str()));
        }
        if let Some(body) = &self.body {
            fields.push(("http.body".to_string(), body.as_str()));
        }
        if let Some(json) = &self.json {
            json_strings(json, "http.json", &mut fields);
        }
        if let Some(path) = &self.save_to {
            fields.push(("http.save_to".to_string(), path.as_str()));
        }
        fields
    }
}

/// Every string in a JSON value, named by its path (`http.json.items.0.name`).
fn json_strings<'a>(value: &'a serde_json::Value, at: &str, out: &mut Vec<(String, &'a str)>) {
    match value {
        serde_json::Value::String(text) => out.push((at.to_string(), text.as_str())),
        serde_json::Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                json_strings(item, &format!("{at}.{index}"), out);
            }
        }
        serde_json::Value::Object(fields) => {
            for (name, item) in fields {
                json_strings(item, &format!("{at}.{name}"), out);
            }
        }
        _ => {}
    }
}
