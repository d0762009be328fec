//! Variables and connections for templates, and masking: every value a task
//! could see that is secret — connection passwords, values of variables and
//! extras whose names look sensitive — is replaced by `***` wherever it appears
//! in a log line, also inside a longer line.

use std::borrow::Cow;

use updraft_store::Secrets;

/// Names whose values are secret, as Airflow decides (any case, anywhere in the name).
const SENSITIVE: [&str; 10] =
    ["password", "passwd", "secret", "token", "key", "credential", "private", "auth", "api_key", "access"];

/// Shorter values are not masked: three letters would blank out ordinary words.
const MIN_MASKED: usize = 4;

/// Every variable and connection, decrypted. Without a key this works only while
/// there is nothing to decrypt.
pub async fn load(
    store: &dyn updraft_store::MetadataStore,
    cipher: Option<&updraft_auth::Cipher>,
) -> Result<Secrets, String> {
    let variables = store.variables().await.map_err(|error| updraft_core::errors::chain(&error))?;
    let connections = store.connections().await.map_err(|error| updraft_core::errors::chain(&error))?;
    if variables.is_empty() && connections.is_empty() {
        return Ok(Secrets::default());
    }
    let Some(cipher) = cipher else {
        return Err("variables or connections exist, but no `core.fernet_key` is set to read them".to_string());
    };
    let open = |token: &str| cipher.decrypt(token).map_err(|error| error.to_string());
    let mut secrets = Secrets::default();
    for row in variables {
        secrets.variables.insert(row.key, open(&row.value)?);
    }
    for row in connections {
        let values = updraft_store::ConnectionValues {
            conn_type: row.conn_type,
            host: row.host,
            login: row.login,
            password: row.password.as_deref().map(open).transpose()?,
            schema: row.schema,
            port: row.port,
            extra: row.extra.as_deref().map(open).transpose()?,
        };
        secrets.connections.insert(row.conn_id, values);
    }
    Ok(secrets)
}

/// The variables and connections one task sees: the environment backend
/// (`UPDRAFT_VAR_<KEY>`, `UPDRAFT_CONN_<ID>` as a URI, as Airflow's
/// `AIRFLOW_VAR_`/`AIRFLOW_CONN_`) first, then the configured backends for the
/// names its templates use, then `database` (what [`load`] read).
pub async fn for_task(
    database: &Secrets,
    backends: &updraft_secrets::Backends,
    wanted: &updraft_secrets::Wanted,
) -> Result<Secrets, String> {
    let mut secrets = database.clone();
    backends.resolve(wanted, &mut secrets).await.map_err(|error| error.to_string())?;
    overlay_environment(&mut secrets, std::env::vars())?;
    Ok(secrets)
}

/// Adds the environment backend's values over `secrets`.
pub fn overlay_environment(secrets: &mut Secrets, vars: impl Iterator<Item = (String, String)>) -> Result<(), String> {
    for (name, value) in vars {
        if let Some(key) = name.strip_prefix("UPDRAFT_VAR_") {
            let key = key.to_ascii_lowercase();
            secrets.from_backends.insert(key.clone());
            secrets.variables.insert(key, value);
        } else if let Some(conn_id) = name.strip_prefix("UPDRAFT_CONN_") {
            let connection =
                updraft_secrets::connection_from_uri(&value).map_err(|error| format!("`{name}`: {error}"))?;
            secrets.connections.insert(conn_id.to_ascii_lowercase(), connection);
        }
    }
    Ok(())
}

pub fn is_sensitive(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SENSITIVE.iter().any(|word| name.contains(word))
}

/// The values to hide.
pub fn secret_values(secrets: &Secrets) -> Vec<String> {
    let mut values = Vec::new();
    for (key, value) in &secrets.variables {
        if is_sensitive(key) || secrets.from_backends.contains(key) {
            values.push(value.clone());
        }
    }
    for connection in secrets.connections.values() {
        values.extend(connection.password.clone());
        if let Some(extra) = &connection.extra
            && let Ok(serde_json::Value::Object(fields)) = serde_json::from_str::<serde_json::Value>(extra)
        {
            for (name, value) in fields {
                if is_sensitive(&name)
                    && let serde_json::Value::String(value) = value
                {
                    values.push(value);
                }
            }
        }
    }
    values.retain(|value| value.chars().count() >= MIN_MASKED);
    // Longest first, so a secret that contains another is hidden whole.
    values.sort_by_key(|value| std::cmp::Reverse(value.len()));
    values.dedup();
    values
}

/// The same secrets with every secret value replaced by `***`, for showing
/// rendered templates.
pub fn masked(secrets: &Secrets) -> Secrets {
    let masker = Masker::new(secrets);
    let mut out = secrets.clone();
    for value in out.variables.values_mut() {
        *value = masker.mask(value).into_owned();
    }
    for connection in out.connections.values_mut() {
        if connection.password.is_some() {
            connection.password = Some("***".to_string());
        }
        if let Some(extra) = &connection.extra {
            connection.extra = Some(masker.mask(extra).into_owned());
        }
    }
    out
}

/// A connection's extra (JSON text) with its sensitive-looking fields as `***`.
pub fn masked_extra(extra: &str) -> String {
    let mut secrets = Secrets::default();
    let values = updraft_store::ConnectionValues { extra: Some(extra.to_string()), ..Default::default() };
    secrets.connections.insert(String::new(), values);
    Masker::new(&secrets).mask(extra).into_owned()
}

#[derive(Debug, Clone, Default)]
pub struct Masker {
    values: Vec<String>,
}

impl Masker {
    pub fn new(secrets: &Secrets) -> Masker {
        Masker { values: secret_values(secrets) }
    }

    pub fn mask<'a>(&self, line: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(line);
        for value in &self.values {
            if out.contains(value.as_str()) {
                out = Cow::Owned(out.replace(value.as_str(), "***"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use updraft_store::ConnectionValues;

    use super::*;

    fn secrets() -> Secrets {
        let mut secrets = Secrets::default();
        secrets.variables.insert("vendor_api_key".into(), "sk-live-12345".into());
        secrets.variables.insert("region".into(), "eu-west-1".into());
        secrets.connections.insert(
            "warehouse".into(),
            ConnectionValues {
                conn_type: "postgres".into(),
                password: Some("p@ss word".into()),
                extra: Some(r#"{"sslmode": "require", "client_secret": "abc123xyz", "pin": "1"}"#.into()),
                ..ConnectionValues::default()
            },
        );
        secrets
    }

    #[test]
    fn secrets_are_masked_inside_longer_lines() {
        let masker = Masker::new(&secrets());
        assert_eq!(masker.mask("curl -H 'Authorization: sk-live-12345' x"), "curl -H 'Authorization: ***' x");
        assert_eq!(masker.mask("login with p@ss word now"), "login with *** now");
        assert_eq!(masker.mask("secret=abc123xyz;"), "secret=***;");
        assert_eq!(masker.mask("region eu-west-1 is not secret"), "region eu-west-1 is not secret");
        assert_eq!(masker.mask("nothing here"), "nothing here");
    }

    #[test]
    fn the_environment_backend_comes_first_and_is_always_masked() {
        let mut secrets = secrets();
        let vars = [
            ("UPDRAFT_VAR_REGION".to_string(), "us-east-2".to_string()),
            ("UPDRAFT_VAR_BUCKET".to_string(), "raw-data".to_string()),
            ("UPDRAFT_CONN_WAREHOUSE".to_string(), "postgres://env:env%40pw@envdb:6543/dw?sslmode=require".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
        ];
        overlay_environment(&mut secrets, vars.into_iter()).unwrap();
        assert_eq!(secrets.variables["region"], "us-east-2", "before the store's");
        let warehouse = &secrets.connections["warehouse"];
        assert_eq!((warehouse.host.as_deref(), warehouse.port), (Some("envdb"), Some(6543)));
        assert_eq!(warehouse.password.as_deref(), Some("env@pw"));
        let masker = Masker::new(&secrets);
        assert_eq!(masker.mask("s3://raw-data/x in us-east-2"), "s3://***/x in ***", "backend values, any name");
        assert_eq!(masker.mask("pw env@pw"), "pw ***");
        let bad = overlay_environment(&mut secrets, [("UPDRAFT_CONN_X".to_string(), "::".to_string())].into_iter());
        assert!(bad.unwrap_err().contains("UPDRAFT_CONN_X"));
    }

    #[test]
    fn rendered_views_get_masked_values() {
        let shown = masked(&secrets());
        assert_eq!(shown.variables["vendor_api_key"], "***");
        assert_eq!(shown.variables["region"], "eu-west-1");
        assert_eq!(shown.connections["warehouse"].password.as_deref(), Some("***"));
        assert!(!shown.connections["warehouse"].extra.as_ref().unwrap().contains("abc123xyz"));
    }
}
