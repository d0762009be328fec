//! One module per command group.

mod backfill;
mod dag_test;
mod dags;
mod pools;
mod secrets;
mod serve;
mod tasks;
mod tokens;
mod users;

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::{Command, DbCommand};
use crate::context::Ctx;

pub async fn run(ctx: &Ctx, command: Command) -> Result<ExitCode> {
    match command {
        Command::Dags(command) => dags::run(ctx, command).await,
        Command::Tasks(command) => tasks::run(ctx, command).await,
        Command::Pools(command) => pools::run(ctx, command).await,
        Command::Users(command) => users::run(ctx, command).await,
        Command::Tokens(command) => tokens::run(ctx, command).await,
        Command::WorkerTokens(command) => tokens::run_worker(ctx, command).await,
        Command::Variables(command) => secrets::variables(ctx, command).await,
        Command::Connections(command) => secrets::connections(ctx, command).await,
        Command::RotateFernetKey => secrets::rotate(ctx).await,
        Command::Db(DbCommand::Migrate) => {
            let store = ctx.store().await?;
            crate::errln!("metadata schema is up to date in `{}`", store.location());
            Ok(ExitCode::SUCCESS)
        }
        Command::Standalone(_) => serve::standalone(ctx).await,
        Command::Scheduler => serve::scheduler(ctx).await,
        Command::Worker => serve::worker(ctx).await,
        Command::Webserver(_) => serve::webserver(ctx).await,
    }
}
