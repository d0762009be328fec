//! Variables and connections pages, for ops and admins. They call the API's own
//! functions (`crate::api::secrets`), so they store, encrypt, check and audit
//! exactly as the API does. Secret values are never sent to the browser: a
//! sensitive variable shows as `***`, a password only as "set", and the forms
//! never carry a stored secret back (an empty password or extra keeps the
//! stored one).

use std::collections::HashMap;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::response::{Html, Redirect};
use maud::html;
use serde::Deserialize;
use updraft_auth::Action;

use super::layout::{csrf_field, page};
use super::pages::{PageResult, UiError, back, broken_files, note};
use crate::api::encode;
use crate::api::secrets::{ConnectionBody, VariableBody};
use crate::{ApiError, AppState, Caller};

pub async fn variables_page(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<HashMap<String, String>>,
) -> PageResult {
    caller.require(Action::EditPlatform)?;
    let rows = state.store.variables().await?;
    let variables =
        rows.into_iter().map(|row| crate::api::secrets::shown_variable(&state, row)).collect::<Result<Vec<_>, _>>()?;
    let body = html! {
        h1 { "Variables" }
        p.muted { "Stored encrypted. Values of keys that look sensitive (password, secret, token, key, …) are never shown. Tasks read them as " code { "{{ var.value.<key> }}" } "." }
        table.list id="variables" {
            thead { tr { th { "Key" } th.wide { "Value" } th { "Description" } th {} } }
            tbody {
                @for variable in &variables {
                    tr {
                        td { code { (variable.key) } }
                        td.wide { code { (variable.value) } }
                        td { (variable.description) }
                        td {
                            form.inline method="post" action=(format!("/variables/{}/delete", encode(&variable.key))) {
                                (csrf_field(&caller))
                                button.danger type="submit" { "Delete" }
                            }
                        }
                    }
                }
            }
        }
        @if variables.is_empty() { p.muted { "No variables yet." } }
        h2 { "Set a variable" }
        form.stacked method="post" action="/variables" {
            (csrf_field(&caller))
            label { "Key" input name="key" required pattern="[A-Za-z0-9_][A-Za-z0-9_.\\-]*" autocomplete="off"; }
            label { "Value" textarea name="value" rows="3" autocomplete="off" {} }
            label { "Description" input name="description" autocomplete="off"; }
            button type="submit" { "Save" }
        }
    };
    let flash = note(&query);
    Ok(Html(page("Variables", Some(&caller), broken_files(&state).await?, flash, body).into_string()))
}

#[derive(Debug, Deserialize)]
pub struct VariableForm {
    key: String,
    #[serde(default)]
    value: String,
    #[serde(default)]
    description: String,
}

pub async fn set_variable(
    State(state): State<AppState>,
    caller: Caller,
    Form(form): Form<VariableForm>,
) -> Result<Redirect, UiError> {
    let key = form.key.trim();
    let body = VariableBody { value: form.value, description: form.description };
    crate::api::secrets::set_variable(&state, &caller, key, body).await?;
    Ok(back("/variables", &format!("Variable {key} saved")))
}

pub async fn delete_variable(
    State(state): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<Redirect, UiError> {
    crate::api::secrets::remove_variable(&state, &caller, &key).await?;
    Ok(back("/variables", &format!("Variable {key} deleted")))
}

pub async fn connections_page(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<HashMap<String, String>>,
) -> PageResult {
    caller.require(Action::EditPlatform)?;
    let rows = state.store.connections().await?;
    let connections =
        rows.into_iter().map(|row| crate::api::secrets::shown(&state, row)).collect::<Result<Vec<_>, _>>()?;
    let body = html! {
        h1 { "Connections" }
        p.muted { "Passwords and extras are stored encrypted and never shown. Tasks read them as " code { "{{ conn.<id>.host }}" } ", " code { "{{ conn.<id>.password }}" } " …" }
        table.list id="connections" {
            thead { tr { th { "Id" } th { "Type" } th { "Host" } th { "Port" } th { "Schema" } th { "Login" } th { "Password" } th.wide { "Extra" } th {} } }
            tbody {
                @for connection in &connections {
                    tr {
                        td { code { (connection.conn_id) } }
                        td { (connection.conn_type) }
                        td { (connection.host.as_deref().unwrap_or("")) }
                        td { (connection.port.map(|port| port.to_string()).unwrap_or_default()) }
                        td { (connection.schema.as_deref().unwrap_or("")) }
                        td { (connection.login.as_deref().unwrap_or("")) }
                        td { @if connection.password.is_some() { "set" } @else { span.muted { "none" } } }
                        td.wide { code { (connection.extra.as_deref().unwrap_or("")) } }
                        td {
                            form.inline method="post" action=(format!("/connections/{}/delete", encode(&connection.conn_id))) {
                                (csrf_field(&caller))
                                button.danger type="submit" { "Delete" }
                            }
                        }
                    }
                }
            }
        }
        @if connections.is_empty() { p.muted { "No connections yet." } }
        h2 { "Add or change a connection" }
        p.muted { "Saving an existing id replaces it; an empty password or extra keeps the stored one." }
        form.stacked method="post" action="/connections" {
            (csrf_field(&caller))
            label { "Id" input name="conn_id" required pattern="[A-Za-z0-9_][A-Za-z0-9_.\\-]*" autocomplete="off"; }
            label { "Type" input name="conn_type" required placeholder="postgres" autocomplete="off"; }
            label { "Host" input name="host" autocomplete="off"; }
            label { "Port" input name="port" type="number" min="0" max="65535"; }
            label { "Schema" input name="schema" autocomplete="off"; }
            label { "Login" input name="login" autocomplete="off"; }
            label { "Password" input name="password" type="password" autocomplete="new-password"; }
            label { "Extra (a JSON object)" textarea name="extra" rows="3" autocomplete="off" placeholder="{\"sslmode\": \"require\"}" {} }
            label { "Description" input name="description" autocomplete="off"; }
            button type="submit" { "Save" }
        }
    };
    let flash = note(&query);
    Ok(Html(page("Connections", Some(&caller), broken_files(&state).await?, flash, body).into_string()))
}

#[derive(Debug, Deserialize)]
pub struct ConnectionForm {
    conn_id: String,
    conn_type: String,
    #[serde(default)]
    host: String,
    #[serde(default)]
    port: String,
    #[serde(default)]
    schema: String,
    #[serde(default)]
    login: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    extra: String,
    #[serde(default)]
    description: String,
}

pub async fn set_connection(
    State(state): State<AppState>,
    caller: Caller,
    Form(form): Form<ConnectionForm>,
) -> Result<Redirect, UiError> {
    let given = |text: String| Some(text.trim().to_string()).filter(|text| !text.is_empty());
    let port = match given(form.port) {
        None => None,
        Some(port) => Some(
            port.parse::<u16>().map_err(|_| ApiError::BadRequest(format!("port `{port}` is not a number 0..65535")))?,
        ),
    };
    let extra = match given(form.extra) {
        None => None,
        Some(text) => match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(serde_json::Value::Object(extra)) => Some(extra),
            // The text is not echoed: it may hold a secret.
            _ => return Err(ApiError::BadRequest("the extra must be a JSON object".into()).into()),
        },
    };
    let conn_id = form.conn_id.trim().to_string();
    let body = ConnectionBody {
        conn_type: form.conn_type.trim().to_string(),
        host: given(form.host),
        login: given(form.login),
        // A password is kept exactly as typed, spaces included.
        password: Some(form.password).filter(|password| !password.is_empty()),
        schema: given(form.schema),
        port,
        extra,
        description: form.description,
    };
    crate::api::secrets::set_connection(&state, &caller, &conn_id, body, true).await?;
    Ok(back("/connections", &format!("Connection {conn_id} saved")))
}

pub async fn delete_connection(
    State(state): State<AppState>,
    caller: Caller,
    Path(conn_id): Path<String>,
) -> Result<Redirect, UiError> {
    crate::api::secrets::remove_connection(&state, &caller, &conn_id).await?;
    Ok(back("/connections", &format!("Connection {conn_id} deleted")))
}
