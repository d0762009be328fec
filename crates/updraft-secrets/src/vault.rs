//! HashiCorp Vault, KV secrets engine version 2, as Airflow's Vault backend reads
//! it: a variable is the secret `<mount>/<variables_path>/<key>` with a `value`
//! field; a connection is `<mount>/<connections_path>/<conn_id>` holding either a
//! `conn_uri` field or the connection's fields. Auth is a token (`token` or
//! `VAULT_TOKEN`) or AppRole (`role_id` + `secret_id` or `VAULT_SECRET_ID`), whose
//! token is renewed by logging in again before its lease ends or when refused.

use std::time::{Duration, Instant};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;

use crate::{Backend, Kind, SecretsError};

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// `https://vault.example.com:8200`
    pub url: String,
    /// The KV v2 engine's mount; `secret` by default.
    pub mount: Option<String>,
    pub variables_path: Option<String>,
    pub connections_path: Option<String>,
    pub token: Option<String>,
    pub role_id: Option<String>,
    pub secret_id: Option<String>,
    /// Where AppRole is mounted; `approle` by default.
    pub approle_mount: Option<String>,
    /// Vault Enterprise namespace.
    pub namespace: Option<String>,
}

/// Path characters kept as they are: a name may hold `/` for a nested secret.
const PATH: &AsciiSet = &NON_ALPHANUMERIC.remove(b'/').remove(b'-').remove(b'_').remove(b'.');

enum Auth {
    Token(String),
    AppRole { role_id: String, secret_id: String, mount: String },
}

pub(crate) struct VaultBackend {
    url: String,
    mount: String,
    variables_path: String,
    connections_path: String,
    namespace: Option<String>,
    auth: Auth,
    http: reqwest::Client,
    /// AppRole's current token and when to log in again.
    token: tokio::sync::Mutex<Option<(String, Instant)>>,
}

impl VaultBackend {
    pub(crate) fn new(config: &VaultConfig, http: reqwest::Client) -> Result<VaultBackend, SecretsError> {
        let failure = |message: &str| SecretsError::Backend {
            backend: format!("vault {}", config.url),
            message: message.to_string(),
        };
        let auth = match (&config.role_id, &config.token) {
            (Some(role_id), _) => Auth::AppRole {
                role_id: role_id.clone(),
                secret_id: config
                    .secret_id
                    .clone()
                    .or_else(|| std::env::var("VAULT_SECRET_ID").ok())
                    .ok_or_else(|| failure("AppRole needs `secret_id` (or VAULT_SECRET_ID)"))?,
                mount: config.approle_mount.clone().unwrap_or_else(|| "approle".to_string()),
            },
            (None, token) => Auth::Token(
                token
                    .clone()
                    .or_else(|| std::env::var("VAULT_TOKEN").ok())
                    .ok_or_else(|| failure("set `token` (or VAULT_TOKEN), or `role_id` and `secret_id` for AppRole"))?,
            ),
        };
        Ok(VaultBackend {
            url: config.url.trim_end_matches('/').to_string(),
            mount: config.mount.clone().unwrap_or_else(|| "secret".to_string()),
            variables_path: config.variables_path.clone().unwrap_or_else(|| "variables".to_string()),
            connections_path: config.connections_path.clone().unwrap_or_else(|| "connections".to_string()),
            namespace: config.namespace.clone(),
            auth,
            http,
            token: tokio::sync::Mutex::default(),
        })
    }

    async fn token(&self, renew: bool) -> Result<String, String> {
        let (role_id, secret_id, mount) = match &self.auth {
            Auth::Token(token) => return Ok(token.clone()),
            Auth::AppRole { role_id, secret_id, mount } => (role_id, secret_id, mount),
        };
        let mut current = self.token.lock().await;
        if !renew
            && let Some((token, until)) = current.as_ref()
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let url = format!("{}/v1/auth/{mount}/login", self.url);
        let body = serde_json::json!({ "role_id": role_id, "secret_id": secret_id });
        let response =
            self.request(self.http.post(&url)).json(&body).send().await.map_err(|error| error.to_string())?;
        if !response.status().is_success() {
            return Err(format!("AppRole login refused: {}", crate::http_failure(response).await));
        }
        #[derive(Deserialize)]
        struct Login {
            auth: LoginAuth,
        }
        #[derive(Deserialize)]
        struct LoginAuth {
            client_token: String,
            #[serde(default)]
            lease_duration: u64,
        }
        let login: Login = response.json().await.map_err(|error| format!("unexpected AppRole answer: {error}"))?;
        // Log in again at 3/4 of the lease, so a token never expires mid-request.
        let lease = Duration::from_secs(login.auth.lease_duration.max(4) * 3 / 4);
        *current = Some((login.auth.client_token.clone(), Instant::now() + lease));
        Ok(login.auth.client_token)
    }

    fn request(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.namespace {
            Some(namespace) => builder.header("X-Vault-Namespace", namespace),
            None => builder,
        }
    }

    async fn read(&self, path: &str, renew: bool) -> Result<reqwest::Response, String> {
        let token = self.token(renew).await?;
        let url = format!("{}/v1/{}/data/{}", self.url, self.mount, utf8_percent_encode(path, PATH));
        self.request(self.http.get(&url)).header("X-Vault-Token", token).send().await.map_err(|error| error.to_string())
    }
}

#[async_trait::async_trait]
impl Backend for VaultBackend {
    fn describe(&self) -> String {
        format!("vault {}", self.url)
    }

    async fn get(&self, kind: Kind, name: &str) -> Result<Option<String>, String> {
        let folder = match kind {
            Kind::Variable => &self.variables_path,
            Kind::Connection => &self.connections_path,
        };
        let path = format!("{folder}/{name}");
        let mut response = self.read(&path, false).await?;
        if response.status() == reqwest::StatusCode::FORBIDDEN && matches!(self.auth, Auth::AppRole { .. }) {
            // The AppRole token may have been revoked or expired early.
            response = self.read(&path, true).await?;
        }
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(crate::http_failure(response).await);
        }
        #[derive(Deserialize)]
        struct Read {
            data: Option<ReadData>,
        }
        #[derive(Deserialize)]
        struct ReadData {
            data: Option<serde_json::Map<String, serde_json::Value>>,
        }
        let read: Read = response.json().await.map_err(|error| format!("unexpected answer: {error}"))?;
        // A deleted version answers with `data: null`.
        let Some(mut fields) = read.data.and_then(|data| data.data) else { return Ok(None) };
        Ok(match kind {
            Kind::Variable => match fields.remove("value") {
                Some(serde_json::Value::String(text)) => Some(text),
                Some(other) => Some(other.to_string()),
                None => return Err(format!("secret `{path}` has no `value` field")),
            },
            Kind::Connection => Some(serde_json::Value::Object(fields).to_string()),
        })
    }
}
