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
        Command::Db(DbCommand::Clean { older_than, dry_run, batch }) => db_clean(ctx, older_than, dry_run, batch).await,
        Command::Standalone(_) => serve::standalone(ctx).await,
        Command::Scheduler => serve::scheduler(ctx).await,
        Command::Worker => serve::worker(ctx).await,
        Command::Webserver(_) => serve::webserver(ctx).await,
    }
}

/// `db clean`: batch after batch until nothing old is left, pausing between them so
/// schedulers and runners get the database; then the removed runs' log folders.
async fn db_clean(ctx: &Ctx, older_than: updraft_core::Duration, dry_run: bool, batch: u32) -> Result<ExitCode> {
    let store = ctx.store().await?;
    let cutoff = ctx.clock.now() - older_than.to_std();
    let total = updraft_ops::maintenance::clean(&store, cutoff, batch, dry_run, &ctx.config.logs_folder()).await?;
    let verb = if dry_run { "would remove" } else { "removed" };
    let when = updraft_core::timetable::format_in_zone(cutoff, &jiff::tz::TimeZone::UTC);
    crate::outln!(
        "{verb} {} run(s), {} task instance(s), {} attempt(s), {} state change(s), {} log piece(s), {} audit row(s), {} alert(s){} (older than {when})",
        total.removed.runs,
        total.removed.task_instances,
        total.removed.attempts,
        total.removed.transitions,
        total.removed.log_pieces,
        total.removed.audit_rows,
        total.removed.alerts,
        if dry_run { String::new() } else { format!(", {} log folder(s)", total.log_folders) },
    );
    // What the built-in schedule did last, for whoever checks before cleaning by hand.
    if dry_run && let Some((at, last)) = updraft_ops::maintenance::last_report(&store).await? {
        let at = updraft_core::timetable::format_in_zone(at, &jiff::tz::TimeZone::UTC);
        crate::outln!(
            "the scheduled clean-up last ran at {at}: removed {} run(s), {} task instance(s), {} audit row(s), {} alert(s) in {:.1} s",
            last.removed.runs,
            last.removed.task_instances,
            last.removed.audit_rows,
            last.removed.alerts,
            last.seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}
