//! `updraft users ...`: accounts. Passwords are stored only as argon2id hashes;
//! a generated password is printed once and never again.

use std::io::BufRead;
use std::process::ExitCode;

use anyhow::Result;
use serde_json::json;
use updraft_auth::{Role, hash_password, new_token};
use updraft_store::NewUser;

use crate::cli::{Output, UsersCommand};
use crate::context::Ctx;
use crate::error::user_error;
use crate::output;

pub async fn run(ctx: &Ctx, command: UsersCommand) -> Result<ExitCode> {
    let store = ctx.store().await?;
    match command {
        UsersCommand::Create { username, role, teams, password_stdin } => {
            check_username(&username)?;
            let role = Role::parse(&role).map_err(|error| user_error(error.to_string(), None))?;
            for team in &teams {
                if updraft_core::DagId::new(team.as_str()).is_err() {
                    return Err(user_error(
                        format!("invalid team `{team}`: a team is a DAG `owner`, letters, digits, `_`, `.` and `-`"),
                        None,
                    ));
                }
            }
            let (password, generated) = password(password_stdin)?;
            let hash = hash_password(&password).map_err(|error| user_error(error.to_string(), None))?;
            let user = NewUser { username: username.clone(), password_hash: hash, role: role.to_string(), teams };
            if store.create_user(&user, ctx.clock.now()).await?.is_none() {
                return Err(user_error(
                    format!("there is already a user `{username}`"),
                    Some("pick another name, or `updraft users reset-password` for a new password"),
                ));
            }
            crate::errln!("user `{username}` created with role {role}");
            audit(ctx, &store, "user_create", &username, Some(format!("role {role}"))).await;
            if generated {
                crate::outln!("{password}");
                crate::errln!("the password above is shown once; it is stored only as a hash");
            }
        }
        UsersCommand::List { output } => {
            let users = store.users().await?;
            match output {
                Output::Json => output::json(&serde_json::Value::Array(
                    users
                        .iter()
                        .map(|user| {
                            json!({
                                "username": user.username,
                                "role": user.role,
                                "teams": user.teams,
                                "created_at": user.created_at.to_string(),
                                "locked": user.locked_until.is_some_and(|until| until > ctx.clock.now()),
                            })
                        })
                        .collect(),
                )),
                Output::Table => {
                    let rows: Vec<Vec<String>> = users
                        .iter()
                        .map(|user| vec![user.username.clone(), user.role.clone(), user.teams.join(",")])
                        .collect();
                    output::table(&["username", "role", "teams"], &rows);
                }
            }
        }
        UsersCommand::Delete { username } => {
            if !store.delete_user(&username).await? {
                return Err(user_error(format!("no user `{username}`"), Some("`updraft users list` shows every user")));
            }
            crate::errln!("user `{username}` deleted");
            audit(ctx, &store, "user_delete", &username, None).await;
        }
        UsersCommand::ResetPassword { username, password_stdin } => {
            if store.get_user(&username).await?.is_none() {
                return Err(user_error(format!("no user `{username}`"), Some("`updraft users list` shows every user")));
            }
            let (password, generated) = password(password_stdin)?;
            let hash = hash_password(&password).map_err(|error| user_error(error.to_string(), None))?;
            store.set_password(&username, &hash).await?;
            crate::errln!("password of `{username}` set");
            audit(ctx, &store, "password_reset", &username, None).await;
            if generated {
                crate::outln!("{password}");
                crate::errln!("the password above is shown once; it is stored only as a hash");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Records an account change made from the command line.
pub async fn audit(ctx: &Ctx, store: &updraft_store::Store, action: &str, target: &str, detail: Option<String>) {
    let entry = updraft_store::AuditEntry {
        actor: "cli".to_string(),
        action: action.to_string(),
        target: target.to_string(),
        detail,
    };
    if let Err(error) = store.audit(&entry, ctx.clock.now()).await {
        tracing::error!(error = %updraft_core::errors::chain(&error), "cannot write the audit log");
    }
}

fn check_username(username: &str) -> Result<()> {
    if updraft_auth::valid_username(username) {
        Ok(())
    } else {
        Err(user_error(format!("invalid username `{username}`: use up to 64 letters, digits and `._@-`"), None))
    }
}

/// The password to set, and whether it was generated here.
fn password(from_stdin: bool) -> Result<(String, bool)> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        let password = line.trim_end_matches(['\n', '\r']).to_string();
        return Ok((password, false));
    }
    // 32 hex characters from a fresh token: 128 bits.
    let (token, _) = new_token("pw").map_err(|error| user_error(error.to_string(), None))?;
    Ok((token[3..35].to_string(), true))
}
