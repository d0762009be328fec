//! AWS Secrets Manager through its JSON API (`GetSecretValue`), signed with
//! Signature Version 4, as Airflow's backend names secrets:
//! `<variables_prefix><separator><key>` and `<connections_prefix><separator><id>`
//! (`updraft/variables/<key>` by default). Credentials come from the config or
//! the standard `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`.

use aws_lc_rs::{digest, hmac};
use base64::Engine;
use serde::Deserialize;

use crate::{Backend, Kind, SecretsError};

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    /// `AWS_REGION` (or `AWS_DEFAULT_REGION`) if unset.
    pub region: Option<String>,
    /// `https://secretsmanager.<region>.amazonaws.com` unless set (a VPC endpoint, a test server).
    pub endpoint: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub variables_prefix: Option<String>,
    pub connections_prefix: Option<String>,
    pub separator: Option<String>,
}

/// What a request is signed with.
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

pub(crate) struct AwsBackend {
    region: String,
    endpoint: url::Url,
    credentials: Credentials,
    variables_prefix: String,
    connections_prefix: String,
    separator: String,
    http: reqwest::Client,
}

impl AwsBackend {
    pub(crate) fn new(config: &AwsConfig, http: reqwest::Client) -> Result<AwsBackend, SecretsError> {
        let failure = |message: String| SecretsError::Backend { backend: "aws".to_string(), message };
        let env = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        let region = config
            .region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .ok_or_else(|| failure("set `region` (or AWS_REGION)".to_string()))?;
        let endpoint =
            config.endpoint.clone().unwrap_or_else(|| format!("https://secretsmanager.{region}.amazonaws.com"));
        let endpoint =
            url::Url::parse(&endpoint).map_err(|error| failure(format!("`endpoint` `{endpoint}`: {error}")))?;
        let access_key_id = config.access_key_id.clone().or_else(|| env("AWS_ACCESS_KEY_ID"));
        let secret_access_key = config.secret_access_key.clone().or_else(|| env("AWS_SECRET_ACCESS_KEY"));
        let (Some(access_key_id), Some(secret_access_key)) = (access_key_id, secret_access_key) else {
            return Err(failure(
                "set `access_key_id` and `secret_access_key` (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
                    .to_string(),
            ));
        };
        Ok(AwsBackend {
            region,
            endpoint,
            credentials: Credentials {
                access_key_id,
                secret_access_key,
                session_token: config.session_token.clone().or_else(|| env("AWS_SESSION_TOKEN")),
            },
            variables_prefix: config.variables_prefix.clone().unwrap_or_else(|| "updraft/variables".to_string()),
            connections_prefix: config.connections_prefix.clone().unwrap_or_else(|| "updraft/connections".to_string()),
            separator: config.separator.clone().unwrap_or_else(|| "/".to_string()),
            http,
        })
    }
}

#[async_trait::async_trait]
impl Backend for AwsBackend {
    fn describe(&self) -> String {
        format!("aws {} ({})", self.endpoint.as_str().trim_end_matches('/'), self.region)
    }

    async fn get(&self, kind: Kind, name: &str) -> Result<Option<String>, String> {
        let prefix = match kind {
            Kind::Variable => &self.variables_prefix,
            Kind::Connection => &self.connections_prefix,
        };
        let body = serde_json::json!({ "SecretId": format!("{prefix}{}{name}", self.separator) }).to_string();
        let now = jiff::Timestamp::now();
        let amz_date = now.strftime("%Y%m%dT%H%M%SZ").to_string();
        let host = match self.endpoint.port() {
            Some(port) => format!("{}:{port}", self.endpoint.host_str().unwrap_or_default()),
            None => self.endpoint.host_str().unwrap_or_default().to_string(),
        };
        let mut headers = vec![
            ("content-type", "application/x-amz-json-1.1".to_string()),
            ("host", host),
            ("x-amz-date", amz_date),
            ("x-amz-target", "secretsmanager.GetSecretValue".to_string()),
        ];
        if let Some(token) = &self.credentials.session_token {
            headers.push(("x-amz-security-token", token.clone()));
        }
        let signing: Vec<(&str, &str)> = headers.iter().map(|(name, value)| (*name, value.as_str())).collect();
        let authorization = sign_v4(
            "POST",
            &self.endpoint,
            &signing,
            body.as_bytes(),
            &self.credentials,
            &self.region,
            "secretsmanager",
        );
        let mut request = self.http.post(self.endpoint.clone()).header("authorization", authorization).body(body);
        for (name, value) in &headers {
            if *name != "host" {
                request = request.header(*name, value);
            }
        }
        let response = request.send().await.map_err(|error| error.to_string())?;
        let status = response.status();
        let text = response.text().await.map_err(|error| error.to_string())?;
        #[derive(Deserialize)]
        struct Answer {
            #[serde(rename = "__type")]
            kind: Option<String>,
            #[serde(rename = "SecretString")]
            secret_string: Option<String>,
            #[serde(rename = "SecretBinary")]
            secret_binary: Option<String>,
            #[serde(alias = "Message")]
            message: Option<String>,
        }
        let answer: Answer = serde_json::from_str(&text).map_err(|_| {
            // Signature and auth failures come back as XML: their text names the reason.
            let start: String = text.chars().take(300).collect();
            format!("HTTP {status}: {}", start.trim())
        })?;
        if !status.is_success() {
            let kind = answer.kind.unwrap_or_default();
            if kind.ends_with("ResourceNotFoundException") {
                return Ok(None);
            }
            return Err(format!("HTTP {status}: {kind}: {}", answer.message.unwrap_or_default()));
        }
        match (answer.secret_string, answer.secret_binary) {
            (Some(text), _) => Ok(Some(text)),
            (None, Some(binary)) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(binary)
                    .map_err(|_| "SecretBinary is not base64".to_string())?;
                String::from_utf8(bytes).map(Some).map_err(|_| "SecretBinary is not UTF-8 text".to_string())
            }
            (None, None) => Err("the answer holds no secret".to_string()),
        }
    }
}

/// The `Authorization` header of a Signature Version 4 request. `headers` are the
/// ones signed, `host` and `x-amz-date` (`%Y%m%dT%H%M%SZ`) among them.
pub fn sign_v4(
    method: &str,
    url: &url::Url,
    headers: &[(&str, &str)],
    body: &[u8],
    credentials: &Credentials,
    region: &str,
    service: &str,
) -> String {
    let amz_date =
        headers.iter().find(|(name, _)| name.eq_ignore_ascii_case("x-amz-date")).map(|(_, value)| *value).unwrap_or("");
    let date = &amz_date[..amz_date.len().min(8)];
    let mut query: Vec<(String, String)> =
        url.query_pairs().map(|(key, value)| (uri_encode(&key), uri_encode(&value))).collect();
    query.sort();
    let query: Vec<String> = query.into_iter().map(|(key, value)| format!("{key}={value}")).collect();
    let mut signed: Vec<(String, String)> = headers
        .iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), value.split_whitespace().collect::<Vec<_>>().join(" ")))
        .collect();
    signed.sort();
    let canonical_headers: String = signed.iter().map(|(name, value)| format!("{name}:{value}\n")).collect();
    let signed_headers: Vec<&str> = signed.iter().map(|(name, _)| name.as_str()).collect();
    let signed_headers = signed_headers.join(";");
    let canonical_request = format!(
        "{method}\n{}\n{}\n{canonical_headers}\n{signed_headers}\n{}",
        url.path(),
        query.join("&"),
        hex(digest::digest(&digest::SHA256, body).as_ref()),
    );
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(digest::digest(&digest::SHA256, canonical_request.as_bytes()).as_ref())
    );
    let mac = |key: &[u8], data: &str| hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes());
    let secret = format!("AWS4{}", credentials.secret_access_key);
    let key = mac(secret.as_bytes(), date);
    let key = mac(key.as_ref(), region);
    let key = mac(key.as_ref(), service);
    let key = mac(key.as_ref(), "aws4_request");
    let signature = hex(mac(key.as_ref(), &string_to_sign).as_ref());
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
        credentials.access_key_id
    )
}

fn uri_encode(text: &str) -> String {
    const UNRESERVED: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');
    percent_encoding::utf8_percent_encode(text, UNRESERVED).to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's Signature Version 4 test suite, `get-vanilla` and `get-vanilla-query-order-key-case`.
    #[test]
    fn signatures_match_the_aws_test_suite() {
        let credentials = Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        };
        let headers = [("Host", "example.amazonaws.com"), ("X-Amz-Date", "20150830T123600Z")];
        let url = url::Url::parse("https://example.amazonaws.com/").unwrap();
        assert_eq!(
            sign_v4("GET", &url, &headers, b"", &credentials, "us-east-1", "service"),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
        let url = url::Url::parse("https://example.amazonaws.com/?Param2=value2&Param1=value1").unwrap();
        assert!(
            sign_v4("GET", &url, &headers, b"", &credentials, "us-east-1", "service")
                .ends_with("Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500")
        );
    }
}
