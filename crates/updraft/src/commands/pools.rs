//! `updraft pools ...`

use std::process::ExitCode;

use anyhow::Result;
use serde_json::json;

use crate::cli::{Output, PoolsCommand};
use crate::context::Ctx;
use crate::error::user_error;
use crate::output;

pub async fn run(ctx: &Ctx, command: PoolsCommand) -> Result<ExitCode> {
    let store = ctx.store().await?;
    match command {
        PoolsCommand::List { output } => {
            let pools = store.pools().await?;
            match output {
                Output::Json => output::json(&serde_json::Value::Array(
                    pools
                        .iter()
                        .map(|pool| json!({"name": pool.name, "slots": pool.slots, "occupied": pool.occupied, "description": pool.description}))
                        .collect(),
                )),
                Output::Table => {
                    let rows: Vec<Vec<String>> = pools
                        .iter()
                        .map(|pool| vec![pool.name.clone(), pool.slots.to_string(), pool.occupied.to_string(), pool.description.clone()])
                        .collect();
                    output::table(&["name", "slots", "occupied", "description"], &rows);
                }
            }
        }
        PoolsCommand::Set { name, slots, description } => {
            if updraft_core::DagId::new(name.as_str()).is_err() {
                return Err(user_error(
                    format!("invalid pool name `{name}`: use letters, digits, `_`, `.` and `-`"),
                    None,
                ));
            }
            store.set_pool(&name, slots, &description).await?;
            crate::errln!("pool `{name}` has {slots} slot(s)");
        }
        PoolsCommand::Delete { name } => {
            if name == "default" {
                return Err(user_error(
                    "the `default` pool cannot be deleted",
                    Some("resize it with `updraft pools set default <slots>`"),
                ));
            }
            if !store.delete_pool(&name).await? {
                return Err(user_error(format!("no pool `{name}`"), Some("`updraft pools list` shows every pool")));
            }
            crate::errln!("pool `{name}` deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}
