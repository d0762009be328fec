//! `/api/v1/variables` and `/api/v1/connections`, for ops and admins. Values are
//! encrypted with the server's `core.fernet_key` before they are stored; in
//! answers, connection passwords and the values of sensitive-looking variables
//! and extras are `***`.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use updraft_auth::{Action, Cipher};
use updraft_store::ConnectionRow;
use utoipa::ToSchema;

use super::extract::{Json, Path};
use crate::error::Problem;
use crate::{ApiError, AppState, Caller};

#[derive(Debug, Serialize, ToSchema)]
pub struct Variable {
    pub key: String,
    /// `***` when the key looks sensitive (password, secret, token, key, ...).
    pub value: String,
    pub description: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VariableList {
    /// Keys and descriptions, without values.
    pub variables: Vec<VariableSummary>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VariableSummary {
    pub key: String,
    pub description: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VariableBody {
    pub value: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Connection {
    pub conn_id: String,
    pub conn_type: String,
    pub host: Option<String>,
    pub login: Option<String>,
    /// Always `***` when set.
    pub password: Option<String>,
    pub schema: Option<String>,
    pub port: Option<u16>,
    /// JSON text, with sensitive-looking fields as `***`.
    pub extra: Option<String>,
    pub description: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionList {
    pub connections: Vec<Connection>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionBody {
    #[schema(example = "postgres")]
    pub conn_type: String,
    pub host: Option<String>,
    pub login: Option<String>,
    pub password: Option<String>,
    pub schema: Option<String>,
    #[schema(minimum = 0, maximum = 65535)]
    pub port: Option<u16>,
    /// A JSON object.
    #[schema(value_type = Option<Object>)]
    pub extra: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub description: String,
}

fn cipher(state: &AppState) -> Result<&Cipher, ApiError> {
    state.cipher.as_deref().ok_or_else(|| {
        ApiError::Conflict(
            "this server has no `core.fernet_key`: variables and connections cannot be read or stored".into(),
        )
    })
}

fn open(cipher: &Cipher, token: &str) -> Result<String, ApiError> {
    cipher.decrypt(token).map_err(|error| ApiError::Internal(error.to_string()))
}

fn check_id(what: &str, id: &str) -> Result<(), ApiError> {
    if updraft_core::DagId::new(id).is_err() {
        return Err(ApiError::BadRequest(format!("invalid {what} `{id}`: use letters, digits, `_`, `.` and `-`")));
    }
    Ok(())
}

/// Variable keys and descriptions (ops and admins).
#[utoipa::path(
    get, path = "/api/v1/variables", tag = "Variables and connections",
    responses((status = 200, body = VariableList), (status = 403, body = Problem, content_type = "application/problem+json"))
)]
pub async fn list_variables(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<axum::Json<VariableList>, ApiError> {
    caller.require(Action::EditPlatform)?;
    let variables = state
        .store
        .variables()
        .await?
        .into_iter()
        .map(|row| VariableSummary { key: row.key, description: row.description })
        .collect();
    Ok(axum::Json(VariableList { variables }))
}

/// One variable; its value is `***` when its key looks sensitive.
#[utoipa::path(
    get, path = "/api/v1/variables/{key}", tag = "Variables and connections", params(("key" = String, Path, pattern = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,249}$")),
    responses(
        (status = 200, body = Variable),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_variable(
    State(state): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<axum::Json<Variable>, ApiError> {
    caller.require(Action::EditPlatform)?;
    let row = state.store.variable(&key).await?.ok_or_else(|| ApiError::NotFound(format!("no variable `{key}`")))?;
    Ok(axum::Json(shown_variable(&state, row)?))
}

/// A stored variable as answers and pages show it.
pub fn shown_variable(state: &AppState, row: updraft_store::VariableRow) -> Result<Variable, ApiError> {
    let value = if updraft_runner::secrets::is_sensitive(&row.key) {
        "***".to_string()
    } else {
        open(cipher(state)?, &row.value)?
    };
    Ok(Variable { value, key: row.key, description: row.description })
}

/// Creates or changes a variable.
#[utoipa::path(
    put, path = "/api/v1/variables/{key}", tag = "Variables and connections", params(("key" = String, Path, pattern = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,249}$")),
    request_body = VariableBody,
    responses(
        (status = 204, description = "Stored, encrypted"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn put_variable(
    State(state): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
    Json(body): Json<VariableBody>,
) -> Result<StatusCode, ApiError> {
    set_variable(&state, &caller, &key, body).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Stores a variable, encrypted; the API and the UI both call this.
pub async fn set_variable(state: &AppState, caller: &Caller, key: &str, body: VariableBody) -> Result<(), ApiError> {
    caller.require(Action::EditPlatform)?;
    check_id("variable key", key)?;
    let token = cipher(state)?.encrypt(&body.value);
    state.store.set_variable(key, &token, &body.description, state.clock.now()).await?;
    crate::audit::record(state, &caller.actor(), "variable_set", key, None).await;
    Ok(())
}

/// Deletes a variable.
#[utoipa::path(
    delete, path = "/api/v1/variables/{key}", tag = "Variables and connections", params(("key" = String, Path, pattern = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,249}$")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_variable(
    State(state): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<StatusCode, ApiError> {
    remove_variable(&state, &caller, &key).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn remove_variable(state: &AppState, caller: &Caller, key: &str) -> Result<(), ApiError> {
    caller.require(Action::EditPlatform)?;
    if !state.store.delete_variable(key).await? {
        return Err(ApiError::NotFound(format!("no variable `{key}`")));
    }
    crate::audit::record(state, &caller.actor(), "variable_delete", key, None).await;
    Ok(())
}

/// A stored connection as answers and pages show it.
pub fn shown(state: &AppState, row: ConnectionRow) -> Result<Connection, ApiError> {
    let extra = match &row.extra {
        None => None,
        Some(token) => Some(updraft_runner::secrets::masked_extra(&open(cipher(state)?, token)?)),
    };
    Ok(Connection {
        conn_id: row.conn_id,
        conn_type: row.conn_type,
        host: row.host,
        login: row.login,
        password: row.password.map(|_| "***".to_string()),
        schema: row.schema,
        port: row.port,
        extra,
        description: row.description,
    })
}

/// Connections, their passwords as `***` (ops and admins).
#[utoipa::path(
    get, path = "/api/v1/connections", tag = "Variables and connections",
    responses(
        (status = 200, body = ConnectionList),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_connections(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<axum::Json<ConnectionList>, ApiError> {
    caller.require(Action::EditPlatform)?;
    let connections =
        state.store.connections().await?.into_iter().map(|row| shown(&state, row)).collect::<Result<_, _>>()?;
    Ok(axum::Json(ConnectionList { connections }))
}

/// One connection, its password as `***`.
#[utoipa::path(
    get, path = "/api/v1/connections/{conn_id}", tag = "Variables and connections", params(("conn_id" = String, Path, pattern = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,249}$")),
    responses(
        (status = 200, body = Connection),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_connection(
    State(state): State<AppState>,
    caller: Caller,
    Path(conn_id): Path<String>,
) -> Result<axum::Json<Connection>, ApiError> {
    caller.require(Action::EditPlatform)?;
    let row = state
        .store
        .connection(&conn_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no connection `{conn_id}`")))?;
    Ok(axum::Json(shown(&state, row)?))
}

/// Creates or changes a connection.
#[utoipa::path(
    put, path = "/api/v1/connections/{conn_id}", tag = "Variables and connections", params(("conn_id" = String, Path, pattern = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,249}$")),
    request_body = ConnectionBody,
    responses(
        (status = 204, description = "Stored, its secrets encrypted"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn put_connection(
    State(state): State<AppState>,
    caller: Caller,
    Path(conn_id): Path<String>,
    Json(body): Json<ConnectionBody>,
) -> Result<StatusCode, ApiError> {
    set_connection(&state, &caller, &conn_id, body, false).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Stores a connection, its password and extra encrypted. With `keep_secrets`, a
/// password or extra left out keeps the stored one (a form never shows them, so
/// it cannot send them back).
pub async fn set_connection(
    state: &AppState,
    caller: &Caller,
    conn_id: &str,
    body: ConnectionBody,
    keep_secrets: bool,
) -> Result<(), ApiError> {
    caller.require(Action::EditPlatform)?;
    check_id("connection id", conn_id)?;
    let cipher = cipher(state)?;
    let stored = if keep_secrets { state.store.connection(conn_id).await? } else { None };
    let password = match body.password {
        Some(password) => Some(cipher.encrypt(&password)),
        None => stored.as_ref().and_then(|row| row.password.clone()),
    };
    let extra = match body.extra {
        Some(extra) => Some(cipher.encrypt(&serde_json::Value::Object(extra).to_string())),
        None => stored.as_ref().and_then(|row| row.extra.clone()),
    };
    let row = ConnectionRow {
        conn_id: conn_id.to_string(),
        conn_type: body.conn_type,
        host: body.host,
        schema: body.schema,
        login: body.login,
        password,
        port: body.port,
        extra,
        description: body.description,
    };
    state.store.set_connection(&row, state.clock.now()).await?;
    crate::audit::record(state, &caller.actor(), "connection_set", conn_id, None).await;
    Ok(())
}

/// Deletes a connection.
#[utoipa::path(
    delete, path = "/api/v1/connections/{conn_id}", tag = "Variables and connections", params(("conn_id" = String, Path, pattern = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,249}$")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_connection(
    State(state): State<AppState>,
    caller: Caller,
    Path(conn_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    remove_connection(&state, &caller, &conn_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn remove_connection(state: &AppState, caller: &Caller, conn_id: &str) -> Result<(), ApiError> {
    caller.require(Action::EditPlatform)?;
    if !state.store.delete_connection(conn_id).await? {
        return Err(ApiError::NotFound(format!("no connection `{conn_id}`")));
    }
    crate::audit::record(state, &caller.actor(), "connection_delete", conn_id, None).await;
    Ok(())
}
