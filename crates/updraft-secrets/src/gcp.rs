//! GCP Secret Manager, as Airflow's backend names secrets:
//! `<variables_prefix><separator><key>` and `<connections_prefix><separator><id>`,
//! the latest version's payload being the value (a connection as a URI or JSON).
//! Auth is a service account's JSON key: a JWT signed with its RSA key (RS256) is
//! traded at the key's `token_uri` for an OAuth access token, kept until shortly
//! before it expires.

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::Deserialize;

use crate::{Backend, Kind, SecretsError};

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GcpConfig {
    /// A service account's JSON key; `GOOGLE_APPLICATION_CREDENTIALS` if unset.
    pub credentials_file: Option<String>,
    /// The project holding the secrets; the key's `project_id` if unset.
    pub project: Option<String>,
    pub variables_prefix: Option<String>,
    pub connections_prefix: Option<String>,
    pub separator: Option<String>,
    /// `https://secretmanager.googleapis.com` unless set (a test server, a proxy).
    pub endpoint: Option<String>,
}

const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

#[derive(Deserialize)]
struct ServiceAccount {
    client_email: String,
    private_key: String,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default = "default_token_uri")]
    token_uri: String,
    #[serde(default)]
    project_id: Option<String>,
}

fn default_token_uri() -> String {
    "https://oauth2.googleapis.com/token".to_string()
}

pub(crate) struct GcpBackend {
    account: ServiceAccount,
    key: aws_lc_rs::signature::RsaKeyPair,
    project: String,
    variables_prefix: String,
    connections_prefix: String,
    separator: String,
    endpoint: String,
    http: reqwest::Client,
    token: tokio::sync::Mutex<Option<(String, Instant)>>,
}

impl GcpBackend {
    pub(crate) fn new(config: &GcpConfig, base: &Path, http: reqwest::Client) -> Result<GcpBackend, SecretsError> {
        let failure = |message: String| SecretsError::Backend { backend: "gcp".to_string(), message };
        let path = match &config.credentials_file {
            Some(path) => crate::resolve_path(base, path),
            None => std::env::var("GOOGLE_APPLICATION_CREDENTIALS")
                .map(Into::into)
                .map_err(|_| failure("set `credentials_file` (or GOOGLE_APPLICATION_CREDENTIALS)".to_string()))?,
        };
        let shown = path.display();
        let text =
            std::fs::read_to_string(&path).map_err(|error| failure(format!("cannot read `{shown}`: {error}")))?;
        // The key's text stays out of the message: serde's error names a position only.
        let account: ServiceAccount = serde_json::from_str(&text)
            .map_err(|error| failure(format!("`{shown}` is not a service account key: {error}")))?;
        let key = private_key(&account.private_key)
            .map_err(|message| failure(format!("`{shown}`: `private_key` {message}")))?;
        let project = config
            .project
            .clone()
            .or_else(|| account.project_id.clone())
            .ok_or_else(|| failure(format!("set `project`: `{shown}` names none")))?;
        Ok(GcpBackend {
            key,
            project,
            variables_prefix: config.variables_prefix.clone().unwrap_or_else(|| "updraft-variables".to_string()),
            connections_prefix: config.connections_prefix.clone().unwrap_or_else(|| "updraft-connections".to_string()),
            separator: config.separator.clone().unwrap_or_else(|| "-".to_string()),
            endpoint: config
                .endpoint
                .clone()
                .unwrap_or_else(|| "https://secretmanager.googleapis.com".to_string())
                .trim_end_matches('/')
                .to_string(),
            account,
            http,
            token: tokio::sync::Mutex::default(),
        })
    }

    /// The JWT a service account presents (RFC 7523), valid for an hour.
    fn assertion(&self, now: jiff::Timestamp) -> Result<String, String> {
        let mut header = serde_json::json!({ "alg": "RS256", "typ": "JWT" });
        if let Some(kid) = &self.account.private_key_id {
            header["kid"] = kid.clone().into();
        }
        let issued = now.as_second();
        let claims = serde_json::json!({
            "iss": self.account.client_email,
            "scope": SCOPE,
            "aud": self.account.token_uri,
            "iat": issued,
            "exp": issued + 3600,
        });
        let signed =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let mut signature = vec![0; self.key.public_modulus_len()];
        let rng = aws_lc_rs::rand::SystemRandom::new();
        self.key
            .sign(&aws_lc_rs::signature::RSA_PKCS1_SHA256, &rng, signed.as_bytes(), &mut signature)
            .map_err(|_| "cannot sign the token request".to_string())?;
        Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }

    async fn access_token(&self, renew: bool) -> Result<String, String> {
        let mut current = self.token.lock().await;
        if !renew
            && let Some((token, until)) = current.as_ref()
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let assertion = self.assertion(jiff::Timestamp::now())?;
        let form = [("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"), ("assertion", assertion.as_str())];
        let body = serde_urlencoded::to_string(form).map_err(|error| error.to_string())?;
        let response = self
            .http
            .post(&self.account.token_uri)
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|error| format!("cannot reach `{}`: {error}", self.account.token_uri))?;
        if !response.status().is_success() {
            return Err(format!("token request refused: {}", crate::http_failure(response).await));
        }
        #[derive(Deserialize)]
        struct Token {
            access_token: String,
            #[serde(default)]
            expires_in: u64,
        }
        let token: Token = response.json().await.map_err(|error| format!("unexpected token answer: {error}"))?;
        // Renewed a minute early, so a token never expires mid-request.
        let lasts = Duration::from_secs(token.expires_in.saturating_sub(60));
        *current = Some((token.access_token.clone(), Instant::now() + lasts));
        Ok(token.access_token)
    }

    async fn access(&self, secret_id: &str, renew: bool) -> Result<reqwest::Response, String> {
        let token = self.access_token(renew).await?;
        let url = format!(
            "{}/v1/projects/{}/secrets/{}/versions/latest:access",
            self.endpoint,
            percent_encoding::utf8_percent_encode(&self.project, percent_encoding::NON_ALPHANUMERIC),
            percent_encoding::utf8_percent_encode(secret_id, percent_encoding::NON_ALPHANUMERIC),
        );
        self.http.get(&url).bearer_auth(token).send().await.map_err(|error| error.to_string())
    }
}

/// A PKCS#8 RSA key from PEM (`-----BEGIN PRIVATE KEY-----`).
fn private_key(pem: &str) -> Result<aws_lc_rs::signature::RsaKeyPair, String> {
    let body: String = pem.lines().filter(|line| !line.starts_with("-----")).collect::<Vec<_>>().concat();
    let der = STANDARD.decode(body.trim()).map_err(|_| "is not PEM".to_string())?;
    aws_lc_rs::signature::RsaKeyPair::from_pkcs8(&der).map_err(|_| "is not a PKCS#8 RSA key".to_string())
}

#[async_trait::async_trait]
impl Backend for GcpBackend {
    fn describe(&self) -> String {
        format!("gcp project `{}`", self.project)
    }

    async fn get(&self, kind: Kind, name: &str) -> Result<Option<String>, String> {
        let prefix = match kind {
            Kind::Variable => &self.variables_prefix,
            Kind::Connection => &self.connections_prefix,
        };
        let secret_id = format!("{prefix}{}{name}", self.separator);
        let mut response = self.access(&secret_id, false).await?;
        if response.status() == reqwest::StatusCode::UNAUTHORIZED {
            response = self.access(&secret_id, true).await?;
        }
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(crate::http_failure(response).await);
        }
        #[derive(Deserialize)]
        struct Access {
            payload: Payload,
        }
        #[derive(Deserialize)]
        struct Payload {
            data: String,
        }
        let access: Access = response.json().await.map_err(|error| format!("unexpected answer: {error}"))?;
        let bytes = STANDARD.decode(access.payload.data).map_err(|_| "the payload is not base64".to_string())?;
        String::from_utf8(bytes).map(Some).map_err(|_| "the payload is not UTF-8 text".to_string())
    }
}
