//! Secrets backends: where variables and connections come from before the
//! database, configured under `[[secrets.backends]]` in `updraft.toml` — a local
//! file (YAML, JSON or `.env`), HashiCorp Vault KV v2 (token or AppRole), GCP
//! Secret Manager (a service account's JSON key traded for an OAuth token) and
//! AWS Secrets Manager (SigV4). Each speaks the service's documented HTTP API;
//! none pulls in a vendor SDK.
//!
//! Backends are asked per name, in the order configured, as Airflow asks them;
//! every answer, including "not there", is kept for `secrets.cache_ttl`. Values
//! from a backend are secret whatever their names: callers mask them.
//!
//! This crate never logs a value and never puts one in an error.

mod aws;
mod file;
mod gcp;
mod vault;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;
use updraft_store::{ConnectionValues, Secrets};

pub use aws::{AwsConfig, Credentials, sign_v4};
pub use file::FileConfig;
pub use gcp::GcpConfig;
pub use vault::VaultConfig;

/// One `[[secrets.backends]]` table.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum BackendConfig {
    File(FileConfig),
    Vault(VaultConfig),
    Gcp(GcpConfig),
    Aws(AwsConfig),
}

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// A backend could not answer; the message names the backend and the secret,
    /// never a value.
    #[error("secrets backend {backend}: {message}")]
    Backend { backend: String, message: String },
    #[error("secrets backend {backend}: connection `{conn_id}` is not a connection: {message}")]
    BadConnection { backend: String, conn_id: String, message: String },
}

/// What a template asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Variable,
    Connection,
}

impl Kind {
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Variable => "variable",
            Kind::Connection => "connection",
        }
    }
}

/// The variables and connections one task's templates name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wanted {
    pub variables: BTreeSet<String>,
    pub connections: BTreeSet<String>,
}

/// A backend answers with the secret's text: a variable's value, or a connection
/// as a URI or Airflow's JSON form.
#[async_trait::async_trait]
trait Backend: Send + Sync {
    /// `vault https://vault:8200`, for messages.
    fn describe(&self) -> String;
    async fn get(&self, kind: Kind, name: &str) -> Result<Option<String>, String>;
}

type Cached = HashMap<(usize, Kind, String), (Instant, Option<String>)>;

/// The configured backends, in order, behind one cache.
pub struct Backends {
    backends: Vec<Box<dyn Backend>>,
    ttl: Duration,
    cache: tokio::sync::Mutex<Cached>,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.backends.iter().map(|backend| backend.describe()).collect();
        f.debug_struct("Backends").field("backends", &names).field("ttl", &self.ttl).finish()
    }
}

impl Default for Backends {
    fn default() -> Backends {
        Backends { backends: Vec::new(), ttl: Duration::ZERO, cache: tokio::sync::Mutex::default() }
    }
}

/// How long an answer is reused unless `secrets.cache_ttl` says otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

impl Backends {
    /// Relative paths in `configs` are relative to `base` (the config file's folder).
    pub fn new(configs: &[BackendConfig], base: &Path, ttl: Duration) -> Result<Backends, SecretsError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|error| SecretsError::Backend { backend: "client".into(), message: error.to_string() })?;
        let mut backends: Vec<Box<dyn Backend>> = Vec::new();
        for config in configs {
            backends.push(match config {
                BackendConfig::File(config) => Box::new(file::FileBackend::new(config, base)),
                BackendConfig::Vault(config) => Box::new(vault::VaultBackend::new(config, http.clone())?),
                BackendConfig::Gcp(config) => Box::new(gcp::GcpBackend::new(config, base, http.clone())?),
                BackendConfig::Aws(config) => Box::new(aws::AwsBackend::new(config, http.clone())?),
            });
        }
        Ok(Backends { backends, ttl, cache: tokio::sync::Mutex::default() })
    }

    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    /// The first backend's answer for this name.
    pub async fn get(&self, kind: Kind, name: &str) -> Result<Option<String>, SecretsError> {
        Ok(self.find(kind, name).await?.map(|(_, value)| value))
    }

    /// The first answer and which backend gave it.
    async fn find(&self, kind: Kind, name: &str) -> Result<Option<(usize, String)>, SecretsError> {
        for (index, backend) in self.backends.iter().enumerate() {
            if let Some(value) = self.get_one(index, backend.as_ref(), kind, name).await? {
                return Ok(Some((index, value)));
            }
        }
        Ok(None)
    }

    async fn get_one(
        &self,
        index: usize,
        backend: &dyn Backend,
        kind: Kind,
        name: &str,
    ) -> Result<Option<String>, SecretsError> {
        let key = (index, kind, name.to_string());
        if !self.ttl.is_zero()
            && let Some((at, value)) = self.cache.lock().await.get(&key)
            && at.elapsed() < self.ttl
        {
            return Ok(value.clone());
        }
        let value = backend.get(kind, name).await.map_err(|message| SecretsError::Backend {
            backend: backend.describe(),
            message: format!("cannot read {} `{name}`: {message}", kind.noun()),
        })?;
        if !self.ttl.is_zero() {
            self.cache.lock().await.insert(key, (Instant::now(), value.clone()));
        }
        Ok(value)
    }

    /// Adds what the backends hold of `wanted` to `secrets`, over what is there
    /// (the database's); such variables are marked to be masked.
    pub async fn resolve(&self, wanted: &Wanted, secrets: &mut Secrets) -> Result<(), SecretsError> {
        if self.backends.is_empty() {
            return Ok(());
        }
        for key in &wanted.variables {
            if let Some(value) = self.get(Kind::Variable, key).await? {
                secrets.variables.insert(key.clone(), value);
                secrets.from_backends.insert(key.clone());
            }
        }
        for conn_id in &wanted.connections {
            if let Some((index, text)) = self.find(Kind::Connection, conn_id).await? {
                let connection = parse_connection(&text).map_err(|message| SecretsError::BadConnection {
                    backend: self.backends[index].describe(),
                    conn_id: conn_id.clone(),
                    message,
                })?;
                secrets.connections.insert(conn_id.clone(), connection);
            }
        }
        Ok(())
    }
}

/// A connection as a backend stores it: a URI, or Airflow's JSON object
/// (`conn_type`, `host`, `login`, `password`, `schema`, `port`, `extra` as an
/// object or as JSON text).
pub fn parse_connection(text: &str) -> Result<ConnectionValues, String> {
    let text = text.trim();
    if !text.starts_with('{') {
        return connection_from_uri(text);
    }
    let value: serde_json::Value = serde_json::from_str(text).map_err(|error| format!("not JSON: {error}"))?;
    connection_from_json(&value)
}

/// Airflow's JSON form of a connection (also what `connections export` writes).
pub fn connection_from_json(value: &serde_json::Value) -> Result<ConnectionValues, String> {
    let serde_json::Value::Object(fields) = value else {
        return Err("expected a JSON object".to_string());
    };
    let text = |name: &str| -> Result<Option<String>, String> {
        match fields.get(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(text)) => Ok(Some(text.clone())),
            Some(serde_json::Value::Number(number)) => Ok(Some(number.to_string())),
            Some(_) => Err(format!("`{name}` must be text")),
        }
    };
    if let Some(uri) = text("conn_uri")? {
        return connection_from_uri(&uri);
    }
    let port = match fields.get("port") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Number(number)) => {
            Some(number.as_u64().and_then(|port| u16::try_from(port).ok()).ok_or("`port` must be 0..65535")?)
        }
        Some(serde_json::Value::String(text)) => Some(text.parse().map_err(|_| "`port` must be 0..65535")?),
        Some(_) => return Err("`port` must be a number".to_string()),
    };
    let extra = match fields.get("extra") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(text)) => Some(text.clone()),
        Some(object @ serde_json::Value::Object(_)) => Some(object.to_string()),
        Some(_) => return Err("`extra` must be an object or JSON text".to_string()),
    };
    Ok(ConnectionValues {
        conn_type: text("conn_type")?.ok_or("`conn_type` is missing")?,
        host: text("host")?,
        login: text("login")?,
        password: text("password")?,
        schema: text("schema")?,
        port,
        extra,
    })
}

/// `type://login:password@host:port/schema?extra=...`, percent-decoded, as Airflow
/// reads a connection URI; the query becomes `extra` (a JSON object).
pub fn connection_from_uri(uri: &str) -> Result<ConnectionValues, String> {
    let parsed = url::Url::parse(uri).map_err(|error| format!("not a connection URI: {error}"))?;
    let decode = |text: &str| percent_encoding::percent_decode_str(text).decode_utf8_lossy().into_owned();
    let extra: serde_json::Map<String, serde_json::Value> = parsed
        .query_pairs()
        .map(|(key, value)| (key.into_owned(), serde_json::Value::String(value.into_owned())))
        .collect();
    Ok(ConnectionValues {
        conn_type: parsed.scheme().replace('-', "_"),
        host: parsed.host_str().filter(|host| !host.is_empty()).map(decode),
        login: Some(decode(parsed.username())).filter(|login| !login.is_empty()),
        password: parsed.password().map(decode),
        schema: Some(decode(parsed.path().trim_start_matches('/'))).filter(|schema| !schema.is_empty()),
        port: parsed.port(),
        extra: (!extra.is_empty()).then(|| serde_json::Value::Object(extra).to_string()),
    })
}

/// `path` against `base` unless it is absolute.
fn resolve_path(base: &Path, path: &str) -> PathBuf {
    let path = Path::new(path);
    if path.is_absolute() { path.to_path_buf() } else { base.join(path) }
}

/// An HTTP error answer in a few words: its status and the start of its body
/// (services put their reason there, never the secret asked for).
async fn http_failure(response: reqwest::Response) -> String {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let body: String = body.chars().take(300).collect();
    format!("HTTP {status}: {}", body.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_come_as_uris_or_airflow_json() {
        let uri = parse_connection("postgres://u:p%40ss@db:5432/dw?sslmode=require").unwrap();
        assert_eq!(uri.password.as_deref(), Some("p@ss"));
        assert_eq!(uri.extra.as_deref(), Some(r#"{"sslmode":"require"}"#));
        let json = parse_connection(
            r#"{"conn_type": "http", "host": "api.example.com", "password": "tok", "port": "443", "extra": {"verify": false}}"#,
        )
        .unwrap();
        assert_eq!((json.conn_type.as_str(), json.port), ("http", Some(443)));
        assert_eq!(json.extra.as_deref(), Some(r#"{"verify":false}"#));
        let wrapped = parse_connection(r#"{"conn_uri": "mysql://root@localhost/app"}"#).unwrap();
        assert_eq!(wrapped.conn_type, "mysql");
        assert!(parse_connection(r#"{"host": "x"}"#).unwrap_err().contains("conn_type"));
        assert!(parse_connection(r#"{"conn_type": "x", "port": 70000}"#).unwrap_err().contains("port"));
        assert!(parse_connection("::").unwrap_err().contains("not a connection URI"));
    }
}
