//! `updraft tokens ...`: personal API tokens. A token is printed once; only its
//! SHA-256 is stored.

use std::process::ExitCode;

use anyhow::Result;
use serde_json::json;
use updraft_auth::new_token;

use crate::cli::{Output, TokensCommand, WorkerTokensCommand};
use crate::context::Ctx;
use crate::error::user_error;
use crate::output;

pub async fn run(ctx: &Ctx, command: TokensCommand) -> Result<ExitCode> {
    let store = ctx.store().await?;
    let now = ctx.clock.now();
    match command {
        TokensCommand::Create { username, name, scope, expires_in } => {
            if !matches!(scope.as_str(), "read" | "write") {
                return Err(user_error(format!("unknown scope `{scope}`: use `read` or `write`"), None));
            }
            let expires_at = expiry(&expires_in, now)?;
            let (secret, hash) = new_token("updraft").map_err(|error| user_error(error.to_string(), None))?;
            let Some(id) = store.create_api_token(&username, &name, &hash, &scope, expires_at, now).await? else {
                return Err(user_error(format!("no user `{username}`"), Some("`updraft users list` shows every user")));
            };
            crate::outln!("{secret}");
            let until = expires_at.map_or("never expires".to_string(), |at| format!("expires {at}"));
            crate::errln!("token {id} `{name}` for `{username}` ({scope}, {until}); shown once, stored only as a hash");
            super::users::audit(
                ctx,
                &store,
                "token_create",
                &id.to_string(),
                Some(format!("`{name}` for {username}, {scope}")),
            )
            .await;
        }
        TokensCommand::List { user, output } => {
            let tokens = store.api_tokens(user.as_deref()).await?;
            match output {
                Output::Json => output::json(&serde_json::Value::Array(
                    tokens
                        .iter()
                        .map(|token| {
                            json!({
                                "id": token.token_id,
                                "username": token.username,
                                "name": token.name,
                                "scope": token.scope,
                                "created_at": token.created_at.to_string(),
                                "expires_at": token.expires_at.map(|at| at.to_string()),
                                "last_used_at": token.last_used_at.map(|at| at.to_string()),
                            })
                        })
                        .collect(),
                )),
                Output::Table => {
                    let rows: Vec<Vec<String>> = tokens
                        .iter()
                        .map(|token| {
                            vec![
                                token.token_id.to_string(),
                                token.username.clone(),
                                token.name.clone(),
                                token.scope.clone(),
                                token.expires_at.map_or("never".to_string(), |at| at.to_string()),
                            ]
                        })
                        .collect();
                    output::table(&["id", "user", "name", "scope", "expires"], &rows);
                }
            }
        }
        TokensCommand::Revoke { id } => {
            if !store.delete_api_token(id).await? {
                return Err(user_error(format!("no token {id}"), Some("`updraft tokens list` shows every token")));
            }
            crate::errln!("token {id} revoked");
            super::users::audit(ctx, &store, "token_revoke", &id.to_string(), None).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `--expires-in`: a duration from now, or `never`.
fn expiry(text: &str, now: jiff::Timestamp) -> Result<Option<jiff::Timestamp>> {
    match text {
        "never" => Ok(None),
        text => {
            let duration = updraft_core::Duration::parse(text)
                .map_err(|error| user_error(format!("invalid `--expires-in` `{text}`: {error}"), None))?;
            Ok(Some(now + duration.to_signed()))
        }
    }
}

/// `updraft worker-tokens ...`: a token per remote worker, besides the shared
/// `worker.token`; the API server checks both.
pub async fn run_worker(ctx: &Ctx, command: WorkerTokensCommand) -> Result<ExitCode> {
    let store = ctx.store().await?;
    let now = ctx.clock.now();
    match command {
        WorkerTokensCommand::Create { name, expires_in } => {
            let expires_at = expiry(&expires_in, now)?;
            let (secret, hash) = new_token("worker").map_err(|error| user_error(error.to_string(), None))?;
            let id = store.create_worker_token(&name, &hash, expires_at, now).await?;
            crate::outln!("{secret}");
            let until = expires_at.map_or("never expires".to_string(), |at| format!("expires {at}"));
            crate::errln!(
                "worker token {id} `{name}` ({until}); shown once, stored only as a hash: give it to that worker as UPDRAFT_WORKER__TOKEN"
            );
            super::users::audit(ctx, &store, "worker_token_create", &id.to_string(), Some(format!("`{name}`"))).await;
        }
        WorkerTokensCommand::List { output } => {
            let tokens = store.worker_tokens().await?;
            match output {
                Output::Json => output::json(&serde_json::Value::Array(
                    tokens
                        .iter()
                        .map(|token| {
                            json!({
                                "id": token.token_id,
                                "name": token.name,
                                "created_at": token.created_at.to_string(),
                                "expires_at": token.expires_at.map(|at| at.to_string()),
                                "last_used_at": token.last_used_at.map(|at| at.to_string()),
                            })
                        })
                        .collect(),
                )),
                Output::Table => {
                    let rows: Vec<Vec<String>> = tokens
                        .iter()
                        .map(|token| {
                            vec![
                                token.token_id.to_string(),
                                token.name.clone(),
                                token.expires_at.map_or("never".to_string(), |at| at.to_string()),
                                token.last_used_at.map_or("never".to_string(), |at| at.to_string()),
                            ]
                        })
                        .collect();
                    output::table(&["id", "name", "expires", "last used"], &rows);
                }
            }
        }
        WorkerTokensCommand::Revoke { id } => {
            if !store.delete_worker_token(id).await? {
                return Err(user_error(
                    format!("no worker token {id}"),
                    Some("`updraft worker-tokens list` shows every worker token"),
                ));
            }
            crate::errln!("worker token {id} revoked");
            super::users::audit(ctx, &store, "worker_token_revoke", &id.to_string(), None).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}
