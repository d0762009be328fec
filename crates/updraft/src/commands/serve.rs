//! The long-running commands: `standalone`, `scheduler`, `worker`, `webserver`.

use std::process::ExitCode;

use anyhow::Result;
use tokio::net::TcpListener;
use updraft_server::AppState;
use updraft_store::{ProcessKind, Store};

use crate::context::{Ctx, display_path};
use crate::engine::{Engine, Parts, service_options, termination};
use crate::error::user_error;

pub async fn standalone(ctx: &Ctx) -> Result<ExitCode> {
    require_dags_folder(ctx)?;
    let store = ctx.store().await?;
    let listener = bind(ctx).await?;
    let address = listener.local_addr()?;
    let process_id = Engine::register(ctx, &store, ProcessKind::Standalone).await?;
    // Serve first: `/health` answers while the DAGs folder is still being read.
    let (server, stop_server) = spawn_server(ctx, &store, listener);
    let engine =
        Engine::start(ctx, store.clone(), process_id, service_options(Parts { scheduler: true, runner: true })).await?;
    let config = ctx
        .config
        .file
        .as_ref()
        .map_or_else(|| "defaults".to_string(), |file| format!("`{}`", display_path(file, &ctx.cwd)));
    crate::errln!(
        "updraft standalone on http://{address}  (config: {config}, DAGs: `{}`, store: `{}`; Ctrl-C stops)",
        display_path(&ctx.config.dags_folder, &ctx.cwd),
        store.location()
    );
    wait_for_stop(&engine).await;
    crate::errln!("stopping: running tasks are interrupted and will run again at the next start");
    let _ = stop_server.send(());
    engine.shutdown(ctx.clock.as_ref()).await;
    let _ = server.await;
    Ok(ExitCode::SUCCESS)
}

pub async fn scheduler(ctx: &Ctx) -> Result<ExitCode> {
    require_dags_folder(ctx)?;
    let store = ctx.store().await?;
    let process_id = Engine::register(ctx, &store, ProcessKind::Scheduler).await?;
    let engine =
        Engine::start(ctx, store.clone(), process_id, service_options(Parts { scheduler: true, runner: false }))
            .await?;
    crate::errln!(
        "updraft scheduler running (DAGs: `{}`, store: `{}`)",
        display_path(&ctx.config.dags_folder, &ctx.cwd),
        store.location()
    );
    wait_for_stop(&engine).await;
    engine.shutdown(ctx.clock.as_ref()).await;
    Ok(ExitCode::SUCCESS)
}

pub async fn worker(ctx: &Ctx) -> Result<ExitCode> {
    let store = ctx.store().await?;
    let process_id = Engine::register(ctx, &store, ProcessKind::Worker).await?;
    let engine =
        Engine::start(ctx, store.clone(), process_id, service_options(Parts { scheduler: false, runner: true }))
            .await?;
    crate::errln!("updraft worker running with {} slot(s) (store: `{}`)", ctx.config.runner_slots, store.location());
    wait_for_stop(&engine).await;
    crate::errln!("stopping: running tasks are interrupted and will run again");
    engine.shutdown(ctx.clock.as_ref()).await;
    Ok(ExitCode::SUCCESS)
}

pub async fn webserver(ctx: &Ctx) -> Result<ExitCode> {
    let store = ctx.store().await?;
    let listener = bind(ctx).await?;
    let address = listener.local_addr()?;
    let (server, stop_server) = spawn_server(ctx, &store, listener);
    crate::errln!("updraft webserver on http://{address}");
    termination().await;
    let _ = stop_server.send(());
    let _ = server.await;
    Ok(ExitCode::SUCCESS)
}

fn require_dags_folder(ctx: &Ctx) -> Result<()> {
    if ctx.config.dags_folder.is_dir() {
        return Ok(());
    }
    Err(user_error(
        format!("DAGs folder `{}` does not exist", display_path(&ctx.config.dags_folder, &ctx.cwd)),
        Some("create it, or point `core.dags_folder` in updraft.toml (or UPDRAFT_DAGS_FOLDER) at your DAGs"),
    ))
}

async fn bind(ctx: &Ctx) -> Result<TcpListener> {
    let (host, port) = (ctx.config.host.as_str(), ctx.config.port);
    TcpListener::bind((host, port)).await.map_err(|error| {
        anyhow::Error::new(error).context(crate::error::UserError {
            message: format!("cannot listen on {host}:{port}"),
            hint: Some("another process may use that port; choose one with `--port` or `webserver.port`".to_string()),
        })
    })
}

fn spawn_server(
    ctx: &Ctx,
    store: &Store,
    listener: TcpListener,
) -> (tokio::task::JoinHandle<std::io::Result<()>>, tokio::sync::oneshot::Sender<()>) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let state = AppState { store: store.clone(), clock: ctx.clock.clone() };
    let server = tokio::spawn(updraft_server::serve(listener, state, async move {
        let _ = stopped.await;
    }));
    (server, stop)
}

async fn wait_for_stop(engine: &Engine) {
    let mut lost = engine.lost.clone();
    tokio::select! {
        () = termination() => {}
        _ = lost.wait_for(|lost| *lost) => {
            tracing::error!("another process declared this one dead; stopping");
        }
    }
}
