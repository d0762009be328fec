//! `updraft variables|connections ...` and `updraft rotate-fernet-key`. Values,
//! passwords and extras are encrypted with `core.fernet_key` before they reach
//! the store; exports and imports use Airflow's JSON formats so users can move.

use std::io::BufRead;
use std::process::ExitCode;

use anyhow::Result;
use serde_json::{Map, Value, json};
use updraft_auth::Cipher;
use updraft_store::{ConnectionRow, Store};

use crate::cli::{ConnectionsCommand, Output, VariablesCommand};
use crate::context::Ctx;
use crate::error::user_error;
use crate::output;

fn cipher(ctx: &Ctx) -> Result<Cipher> {
    let keys = ctx.config.fernet_key.as_deref().unwrap_or_default();
    Cipher::from_keys(keys).map_err(|error| {
        user_error(
            error.to_string(),
            Some(&format!(
                "set `core.fernet_key` (UPDRAFT_CORE__FERNET_KEY) to a Fernet key, e.g. this new one: {}",
                Cipher::generate_key()
            )),
        )
    })
}

fn decrypt(cipher: &Cipher, token: &str) -> Result<String> {
    cipher.decrypt(token).map_err(|error| user_error(error.to_string(), None))
}

fn check_key(what: &str, key: &str) -> Result<()> {
    if updraft_core::DagId::new(key).is_err() {
        return Err(user_error(format!("invalid {what} `{key}`: use letters, digits, `_`, `.` and `-`"), None));
    }
    Ok(())
}

async fn audit(ctx: &Ctx, store: &Store, action: &str, target: &str) {
    super::users::audit(ctx, store, action, target, None).await;
}

pub async fn variables(ctx: &Ctx, command: VariablesCommand) -> Result<ExitCode> {
    let store = ctx.store().await?;
    let now = ctx.clock.now();
    match command {
        VariablesCommand::Set { key, value, value_stdin, description } => {
            check_key("variable key", &key)?;
            let value = match (value, value_stdin) {
                (Some(value), false) => value,
                (None, true) => {
                    let mut line = String::new();
                    std::io::stdin().lock().read_line(&mut line)?;
                    line.trim_end_matches(['\n', '\r']).to_string()
                }
                _ => return Err(user_error("give the value, or `--value-stdin`", None)),
            };
            store.set_variable(&key, &cipher(ctx)?.encrypt(&value), &description, now).await?;
            audit(ctx, &store, "variable_set", &key).await;
            crate::errln!("variable `{key}` set");
        }
        VariablesCommand::Get { key } => {
            let Some(row) = store.variable(&key).await? else {
                return Err(user_error(format!("no variable `{key}`"), Some("`updraft variables list` shows them")));
            };
            crate::outln!("{}", decrypt(&cipher(ctx)?, &row.value)?);
        }
        VariablesCommand::List { output } => {
            let rows = store.variables().await?;
            match output {
                Output::Json => output::json(&Value::Array(
                    rows.iter().map(|row| json!({"key": row.key, "description": row.description})).collect(),
                )),
                Output::Table => {
                    let rows: Vec<Vec<String>> =
                        rows.iter().map(|row| vec![row.key.clone(), row.description.clone()]).collect();
                    output::table(&["key", "description"], &rows);
                }
            }
        }
        VariablesCommand::Delete { key } => {
            if !store.delete_variable(&key).await? {
                return Err(user_error(format!("no variable `{key}`"), None));
            }
            audit(ctx, &store, "variable_delete", &key).await;
            crate::errln!("variable `{key}` deleted");
        }
        VariablesCommand::Export { file } => {
            let cipher = cipher(ctx)?;
            let mut out = Map::new();
            for row in store.variables().await? {
                out.insert(row.key.clone(), Value::String(decrypt(&cipher, &row.value)?));
            }
            write_private(&file, &Value::Object(out))?;
            crate::errln!("variables written to `{}` (in clear: keep it safe)", file.display());
        }
        VariablesCommand::Import { file } => {
            let cipher = cipher(ctx)?;
            let Value::Object(map) = read_json(&file)? else {
                return Err(user_error(format!("`{}` is not a JSON object of variables", file.display()), None));
            };
            for (key, value) in &map {
                check_key("variable key", key)?;
                // Airflow writes JSON values as text; an object or number here is kept as its JSON.
                let text = match value {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                store.set_variable(key, &cipher.encrypt(&text), "", now).await?;
            }
            audit(ctx, &store, "variable_import", &file.display().to_string()).await;
            crate::errln!("{} variable(s) imported", map.len());
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn connections(ctx: &Ctx, command: ConnectionsCommand) -> Result<ExitCode> {
    let store = ctx.store().await?;
    let now = ctx.clock.now();
    match command {
        ConnectionsCommand::Add {
            conn_id,
            conn_uri,
            conn_type,
            conn_host,
            conn_login,
            conn_password,
            conn_schema,
            conn_port,
            conn_extra,
            description,
        } => {
            check_key("connection id", &conn_id)?;
            let mut plain = match conn_uri {
                Some(uri) => updraft_secrets::connection_from_uri(&uri)
                    .map_err(|error| user_error(format!("invalid `--conn-uri`: {error}"), None))?,
                None => updraft_store::ConnectionValues::default(),
            };
            if let Some(conn_type) = conn_type {
                plain.conn_type = conn_type;
            }
            plain.host = conn_host.or(plain.host);
            plain.login = conn_login.or(plain.login);
            plain.password = conn_password.or(plain.password);
            plain.schema = conn_schema.or(plain.schema);
            plain.port = conn_port.or(plain.port);
            if let Some(extra) = conn_extra {
                match serde_json::from_str::<Value>(&extra) {
                    Ok(Value::Object(_)) => plain.extra = Some(extra),
                    _ => return Err(user_error("`--conn-extra` must be a JSON object", None)),
                }
            }
            if plain.conn_type.is_empty() {
                return Err(user_error("give `--conn-uri` or `--conn-type`", None));
            }
            let cipher = cipher(ctx)?;
            let row = ConnectionRow {
                conn_id: conn_id.clone(),
                conn_type: plain.conn_type,
                host: plain.host,
                schema: plain.schema,
                login: plain.login,
                password: plain.password.map(|password| cipher.encrypt(&password)),
                port: plain.port,
                extra: plain.extra.map(|extra| cipher.encrypt(&extra)),
                description,
            };
            store.set_connection(&row, now).await?;
            audit(ctx, &store, "connection_set", &conn_id).await;
            crate::errln!("connection `{conn_id}` set");
        }
        ConnectionsCommand::Get { conn_id, show_secrets } => {
            let Some(row) = store.connection(&conn_id).await? else {
                return Err(user_error(
                    format!("no connection `{conn_id}`"),
                    Some("`updraft connections list` shows them"),
                ));
            };
            let cipher = cipher(ctx)?;
            let mut shown = export_entry(&cipher, &row)?;
            if !show_secrets && shown["password"].is_string() {
                shown["password"] = Value::String("***".into());
            }
            output::json(&shown);
        }
        ConnectionsCommand::List { output } => {
            let rows = store.connections().await?;
            match output {
                Output::Json => output::json(&Value::Array(
                    rows.iter()
                        .map(|row| json!({"conn_id": row.conn_id, "conn_type": row.conn_type, "host": row.host, "description": row.description}))
                        .collect(),
                )),
                Output::Table => {
                    let rows: Vec<Vec<String>> = rows
                        .iter()
                        .map(|row| vec![row.conn_id.clone(), row.conn_type.clone(), row.host.clone().unwrap_or_default()])
                        .collect();
                    output::table(&["conn_id", "conn_type", "host"], &rows);
                }
            }
        }
        ConnectionsCommand::Delete { conn_id } => {
            if !store.delete_connection(&conn_id).await? {
                return Err(user_error(format!("no connection `{conn_id}`"), None));
            }
            audit(ctx, &store, "connection_delete", &conn_id).await;
            crate::errln!("connection `{conn_id}` deleted");
        }
        ConnectionsCommand::Export { file } => {
            let cipher = cipher(ctx)?;
            let mut out = Map::new();
            for row in store.connections().await? {
                out.insert(row.conn_id.clone(), export_entry(&cipher, &row)?);
            }
            write_private(&file, &Value::Object(out))?;
            crate::errln!("connections written to `{}` (in clear: keep it safe)", file.display());
        }
        ConnectionsCommand::Import { file } => {
            let cipher = cipher(ctx)?;
            let Value::Object(map) = read_json(&file)? else {
                return Err(user_error(format!("`{}` is not a JSON object of connections", file.display()), None));
            };
            for (conn_id, entry) in &map {
                check_key("connection id", conn_id)?;
                let text = |name: &str| entry[name].as_str().filter(|text| !text.is_empty()).map(str::to_string);
                let extra = match &entry["extra"] {
                    Value::String(text) if !text.is_empty() => Some(text.clone()),
                    Value::Object(object) => Some(Value::Object(object.clone()).to_string()),
                    _ => None,
                };
                let Some(conn_type) = text("conn_type") else {
                    return Err(user_error(
                        format!("connection `{conn_id}` in `{}` has no conn_type", file.display()),
                        None,
                    ));
                };
                let row = ConnectionRow {
                    conn_id: conn_id.clone(),
                    conn_type,
                    host: text("host"),
                    schema: text("schema"),
                    login: text("login"),
                    password: text("password").map(|password| cipher.encrypt(&password)),
                    port: entry["port"].as_u64().and_then(|port| u16::try_from(port).ok()),
                    extra: extra.map(|extra| cipher.encrypt(&extra)),
                    description: text("description").unwrap_or_default(),
                };
                store.set_connection(&row, now).await?;
            }
            audit(ctx, &store, "connection_import", &file.display().to_string()).await;
            crate::errln!("{} connection(s) imported", map.len());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Re-encrypts every secret with the first key, after a new key is put first in
/// `core.fernet_key` (the old ones stay after it until this has run).
pub async fn rotate(ctx: &Ctx) -> Result<ExitCode> {
    let store = ctx.store().await?;
    let cipher = cipher(ctx)?;
    let now = ctx.clock.now();
    let variables = store.variables().await?;
    for row in &variables {
        let plain = decrypt(&cipher, &row.value)?;
        store.set_variable(&row.key, &cipher.encrypt(&plain), &row.description, now).await?;
    }
    let connections = store.connections().await?;
    for row in &connections {
        let mut row = row.clone();
        row.password =
            row.password.map(|token| decrypt(&cipher, &token).map(|plain| cipher.encrypt(&plain))).transpose()?;
        row.extra = row.extra.map(|token| decrypt(&cipher, &token).map(|plain| cipher.encrypt(&plain))).transpose()?;
        store.set_connection(&row, now).await?;
    }
    audit(ctx, &store, "rotate_fernet_key", "*").await;
    crate::errln!(
        "re-encrypted {} variable(s) and {} connection(s) with the first key; the others can now be removed",
        variables.len(),
        connections.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// A connection in Airflow's export format, decrypted.
fn export_entry(cipher: &Cipher, row: &ConnectionRow) -> Result<Value> {
    let password = row.password.as_deref().map(|token| decrypt(cipher, token)).transpose()?;
    let extra = row.extra.as_deref().map(|token| decrypt(cipher, token)).transpose()?;
    Ok(json!({
        "conn_type": row.conn_type,
        "description": row.description,
        "host": row.host,
        "login": row.login,
        "password": password,
        "schema": row.schema,
        "port": row.port,
        "extra": extra,
    }))
}

fn read_json(file: &std::path::Path) -> Result<Value> {
    let text = std::fs::read_to_string(file)
        .map_err(|error| user_error(format!("cannot read `{}`: {error}", file.display()), None))?;
    serde_json::from_str(&text).map_err(|error| user_error(format!("`{}` is not JSON: {error}", file.display()), None))
}

/// Writes a file only its owner may read (it holds secrets in clear).
fn write_private(file: &std::path::Path, value: &Value) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(file)
        .map_err(|error| user_error(format!("cannot write `{}`: {error}", file.display()), None))?;
    out.write_all(serde_json::to_string_pretty(value).unwrap_or_default().as_bytes())?;
    out.write_all(b"\n")?;
    Ok(())
}
