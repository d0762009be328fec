//! Notifiers as `updraft.toml` names them (`[notifiers.<name>]`), and sending one
//! message to one: Slack (incoming webhook), a generic webhook (JSON), email (SMTP).

use std::collections::BTreeMap;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde::Deserialize;

use crate::message::Notice;

/// Messages a notifier takes per minute unless it says otherwise.
pub const DEFAULT_MAX_PER_MINUTE: u32 = 20;
/// How long one send may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// One `[notifiers.<name>]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum NotifierConfig {
    Slack(SlackConfig),
    Webhook(WebhookConfig),
    Email(EmailConfig),
}

/// A Slack incoming webhook (Slack app → Incoming Webhooks → the channel's URL).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    pub webhook_url: String,
    /// Only honoured by legacy webhooks; an app's webhook posts to its channel.
    pub channel: Option<String>,
    pub username: Option<String>,
    pub max_per_minute: Option<u32>,
}

/// Any HTTP endpoint taking the notice as JSON (PagerDuty/Opsgenie bridges, a
/// team's own service).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub max_per_minute: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    pub smtp_host: String,
    /// Default: 587 with STARTTLS, 465 with TLS, 25 without.
    pub smtp_port: Option<u16>,
    #[serde(default)]
    pub tls: TlsMode,
    pub username: Option<String>,
    pub password: Option<String>,
    pub from: String,
    pub to: Vec<String>,
    pub max_per_minute: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain connection upgraded with STARTTLS (required).
    #[default]
    Starttls,
    /// TLS from the first byte (SMTPS).
    Tls,
    /// No encryption: a relay on the same machine or network only.
    None,
}

impl NotifierConfig {
    pub fn max_per_minute(&self) -> u32 {
        let set = match self {
            NotifierConfig::Slack(slack) => slack.max_per_minute,
            NotifierConfig::Webhook(webhook) => webhook.max_per_minute,
            NotifierConfig::Email(email) => email.max_per_minute,
        };
        set.unwrap_or(DEFAULT_MAX_PER_MINUTE).max(1)
    }

    /// Problems a configuration has before anything is sent.
    pub fn check(&self) -> Result<(), String> {
        let url = |text: &str, field: &str| match reqwest::Url::parse(text) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(()),
            _ => Err(format!("`{field}` must be an http(s) URL, not `{text}`")),
        };
        match self {
            NotifierConfig::Slack(slack) => url(&slack.webhook_url, "webhook_url"),
            NotifierConfig::Webhook(webhook) => url(&webhook.url, "url"),
            NotifierConfig::Email(email) => {
                email.from.parse::<lettre::message::Mailbox>().map_err(|error| format!("`from`: {error}"))?;
                if email.to.is_empty() {
                    return Err("`to` must name at least one address".to_string());
                }
                for to in &email.to {
                    to.parse::<lettre::message::Mailbox>().map_err(|error| format!("`to` `{to}`: {error}"))?;
                }
                if email.username.is_some() != email.password.is_some() {
                    return Err("`username` and `password` go together".to_string());
                }
                Ok(())
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("{0}")]
    Http(String),
    #[error("email: {0}")]
    Email(String),
}

/// Sends messages to the configured notifiers.
pub struct Notifiers {
    configs: BTreeMap<String, NotifierConfig>,
    http: reqwest::Client,
}

impl Notifiers {
    pub fn new(configs: BTreeMap<String, NotifierConfig>) -> Notifiers {
        let http = reqwest::Client::builder().timeout(SEND_TIMEOUT).build().unwrap_or_default();
        Notifiers { configs, http }
    }

    pub fn get(&self, name: &str) -> Option<&NotifierConfig> {
        self.configs.get(name)
    }

    pub fn is_empty(&self) -> bool {
        self.configs.is_empty()
    }

    pub async fn send(&self, name: &str, notice: &Notice) -> Result<(), SendError> {
        let Some(config) = self.configs.get(name) else {
            return Err(SendError::Http(format!("notifier `{name}` is not configured")));
        };
        match config {
            NotifierConfig::Slack(slack) => {
                let body = notice.slack(slack.channel.as_deref(), slack.username.as_deref());
                self.post(&slack.webhook_url, &BTreeMap::new(), &body).await
            }
            NotifierConfig::Webhook(webhook) => self.post(&webhook.url, &webhook.headers, &notice.webhook()).await,
            NotifierConfig::Email(email) => send_email(email, notice).await,
        }
    }

    async fn post(
        &self,
        url: &str,
        headers: &BTreeMap<String, String>,
        body: &serde_json::Value,
    ) -> Result<(), SendError> {
        let mut request = self.http.post(url).json(body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        // The URL of a Slack webhook is its secret: messages name only its host.
        let host = reqwest::Url::parse(url).ok().and_then(|url| url.host_str().map(str::to_string)).unwrap_or_default();
        let response =
            request.send().await.map_err(|error| SendError::Http(format!("cannot reach {host}: {}", root(&error))))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        let text: String = text.trim().chars().take(200).collect();
        Err(SendError::Http(format!("{host} answered {status}: {text}")))
    }
}

/// The innermost cause, which says what went wrong (refused, timed out).
fn root(error: &(dyn std::error::Error + 'static)) -> String {
    let mut error = error;
    while let Some(source) = error.source() {
        error = source;
    }
    error.to_string()
}

async fn send_email(config: &EmailConfig, notice: &Notice) -> Result<(), SendError> {
    let fail = |error: &dyn std::fmt::Display| SendError::Email(error.to_string());
    let (subject, body) = notice.email();
    let mut message = lettre::Message::builder()
        .from(config.from.parse().map_err(|error| fail(&error))?)
        .subject(subject)
        .header(ContentType::TEXT_PLAIN);
    for to in &config.to {
        message = message.to(to.parse().map_err(|error| fail(&error))?);
    }
    let message = message.body(body).map_err(|error| fail(&error))?;
    let host = config.smtp_host.as_str();
    let tls = |host: &str| TlsParameters::new(host.to_string()).map_err(|error| fail(&error));
    let (tls, port) = match config.tls {
        TlsMode::Starttls => (Tls::Required(tls(host)?), 587),
        TlsMode::Tls => (Tls::Wrapper(tls(host)?), 465),
        TlsMode::None => (Tls::None, 25),
    };
    let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
        .port(config.smtp_port.unwrap_or(port))
        .tls(tls)
        .timeout(Some(SEND_TIMEOUT));
    if let (Some(username), Some(password)) = (&config.username, &config.password) {
        transport = transport.credentials(Credentials::new(username.clone(), password.clone()));
    }
    transport.build().send(message).await.map_err(|error| SendError::Email(root(&error)))?;
    Ok(())
}
