//! The long-running commands: `standalone`, `scheduler`, `worker`, `webserver`.

use std::process::ExitCode;

use anyhow::Result;
use std::sync::Arc;
use tokio::net::TcpListener;
use updraft_server::{AppState, AuthMode};

use updraft_core::errors::chain;
use updraft_runner::{ApiSource, SourceError, WorkSource, procfs};
use updraft_store::{NewProcess, ProcessKind, Store};

use crate::context::{Ctx, display_path};
use crate::engine::{Engine, Parts, Work, service_options, termination};
use crate::error::user_error;

/// Metrics under the configured names, sent to StatsD if configured; a scheduler
/// or worker with `metrics.port` serves its own `/metrics` there.
fn start_metrics(ctx: &Ctx, own_endpoint: bool) -> Result<()> {
    let config = &ctx.config;
    updraft_metrics::configure(&config.metrics_prefix, config.statsd.clone())
        .map_err(|error| anyhow::anyhow!("cannot send metrics to StatsD: {error}"))?;
    if let (true, Some(port)) = (own_endpoint, config.metrics_port) {
        let address = format!("{}:{port}", config.host);
        let listener = std::net::TcpListener::bind(&address)
            .map_err(|error| anyhow::anyhow!("cannot serve metrics on {address}: {error}"))?;
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        tokio::spawn(async move {
            if let Err(error) = updraft_server::serve_metrics(listener).await {
                tracing::error!(%error, "the metrics endpoint stopped");
            }
        });
        crate::errln!("metrics on http://{address}/metrics");
    }
    Ok(())
}

pub async fn standalone(ctx: &Ctx) -> Result<ExitCode> {
    require_dags_folder(ctx)?;
    start_metrics(ctx, false)?;
    let store = ctx.store().await?;
    let listener = bind(ctx).await?;
    let address = listener.local_addr()?;
    let process_id = Engine::register(ctx, &store, ProcessKind::Standalone).await?;
    // Serve first: `/health` answers while the DAGs folder is still being read.
    let (server, stop_server) = spawn_server(ctx, &store, listener);
    let engine = Engine::start(
        ctx,
        Work::Store(store.clone()),
        process_id,
        service_options(Parts { scheduler: true, runner: true }),
    )
    .await?;
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
    crate::errln!(
        "stopping: running tasks are interrupted and will run again at the next start (pods keep running and are adopted)"
    );
    let _ = stop_server.send(());
    engine.shutdown().await;
    let _ = server.await;
    Ok(ExitCode::SUCCESS)
}

pub async fn scheduler(ctx: &Ctx) -> Result<ExitCode> {
    require_dags_folder(ctx)?;
    start_metrics(ctx, true)?;
    let store = ctx.store().await?;
    let process_id = Engine::register(ctx, &store, ProcessKind::Scheduler).await?;
    // With the Kubernetes executor, schedulers launch and follow the pods (and run
    // the built-in task types, which are I/O); workers are then optional.
    let runner = ctx.config.executor == updraft_core::kubernetes::Executor::Kubernetes;
    let options = service_options(Parts { scheduler: true, runner });
    let engine = Engine::start(ctx, Work::Store(store.clone()), process_id, options).await?;
    crate::errln!(
        "updraft scheduler running (DAGs: `{}`, store: `{}`)",
        display_path(&ctx.config.dags_folder, &ctx.cwd),
        store.location()
    );
    wait_for_stop(&engine).await;
    engine.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

pub async fn worker(ctx: &Ctx) -> Result<ExitCode> {
    start_metrics(ctx, true)?;
    let options = service_options(Parts { scheduler: false, runner: true });
    let (engine, location) = match &ctx.config.worker_api_url {
        Some(url) => {
            let Some(token) = ctx.config.worker_token.as_deref() else {
                return Err(user_error(
                    "`worker.api_url` is set but `worker.token` is not",
                    Some("set `worker.token` (or UPDRAFT_WORKER__TOKEN) to the token the API server expects"),
                ));
            };
            let api = Arc::new(ApiSource::new(url, token, Arc::default())?);
            let Some(process_id) = register_remote(api.as_ref()).await? else {
                return Ok(ExitCode::SUCCESS);
            };
            (Engine::start(ctx, Work::Api(api), process_id, options).await?, format!("API server: {url}"))
        }
        None => {
            let store = ctx.store().await?;
            let process_id = Engine::register(ctx, &store, ProcessKind::Worker).await?;
            let location = format!("store: `{}`", store.location());
            (Engine::start(ctx, Work::Store(store), process_id, options).await?, location)
        }
    };
    let queues = ctx.config.worker_queues.join(", ");
    crate::errln!("updraft worker running with {} slot(s) on queues {queues} ({location})", ctx.config.runner_slots);
    wait_for_stop(&engine).await;
    crate::errln!("stopping: running tasks are interrupted and will run again");
    engine.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// Registers a remote worker, waiting for the API server to come up (as it may
/// start after its workers); `None` if stopped meanwhile.
async fn register_remote(api: &ApiSource) -> Result<Option<i64>> {
    let pid = std::process::id();
    let process =
        NewProcess { kind: ProcessKind::Worker, hostname: procfs::hostname(), pid, pid_start: procfs::start_time(pid) };
    let mut delay = std::time::Duration::from_millis(200);
    loop {
        match api.register(&process).await {
            Ok(process_id) => return Ok(Some(process_id)),
            Err(error @ SourceError::Refused { .. }) => {
                return Err(anyhow::Error::new(error).context(crate::error::UserError {
                    message: format!("the API server at {} refused this worker", api.location()),
                    hint: Some("check that `worker.token` matches the API server's".to_string()),
                }));
            }
            Err(error) => {
                tracing::warn!(error = %chain(&error), "cannot register with the API server; trying again in {delay:?}");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = termination() => return Ok(None),
        }
        delay = (delay * 2).min(std::time::Duration::from_secs(5));
    }
}

pub async fn webserver(ctx: &Ctx) -> Result<ExitCode> {
    start_metrics(ctx, false)?;
    let store = ctx.store().await?;
    let listener = bind(ctx).await?;
    let address = listener.local_addr()?;
    let (server, stop_server) = spawn_server(ctx, &store, listener);
    // The API server runs the background jobs too: with every scheduler down, its
    // digest still says so.
    let (stop_ops, ops_stopped) = tokio::sync::watch::channel(false);
    let definitions = std::sync::Arc::new(updraft_store::DefinitionCache::default());
    let ops = updraft_ops::Ops::new(store.clone(), definitions, ctx.config.ops(), ctx.clock.clone());
    let ops = tokio::spawn(ops.run(ops_stopped));
    crate::errln!("updraft webserver on http://{address}");
    termination().await;
    let _ = stop_server.send(());
    let _ = stop_ops.send(true);
    let _ = server.await;
    let _ = ops.await;
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

/// How the web server authenticates, checked before it listens: without sign-in
/// it serves only this machine.
fn auth_mode(ctx: &Ctx) -> Result<AuthMode> {
    let mode = match ctx.config.auth.as_str() {
        "none" => AuthMode::None,
        "password" => AuthMode::Password,
        other => {
            return Err(user_error(
                format!("unknown `webserver.auth` `{other}`"),
                Some("use `none` (this machine only) or `password` (accounts, `updraft users create`)"),
            ));
        }
    };
    let host = ctx.config.host.as_str();
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if mode == AuthMode::None && !loopback {
        return Err(user_error(
            format!("refusing to serve on `{host}` without sign-in: anyone who can reach it could run anything"),
            Some(
                "set `webserver.auth = \"password\"` (UPDRAFT_WEBSERVER__AUTH=password) and create accounts with `updraft users create`",
            ),
        ));
    }
    if mode == AuthMode::None && ctx.config.oidc.is_some() {
        return Err(user_error(
            "`[oidc]` is set but sign-in is off".to_string(),
            Some("set `webserver.auth = \"password\"`: accounts sign in with a password or through the provider"),
        ));
    }
    Ok(mode)
}

async fn bind(ctx: &Ctx) -> Result<TcpListener> {
    auth_mode(ctx)?;
    ctx.cipher()?;
    ctx.backends()?;
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
    let mode = auth_mode(ctx).unwrap_or(AuthMode::Password);
    let state = AppState::new(store.clone(), ctx.clock.clone(), ctx.config.worker_token.clone())
        .with_auth(mode, ctx.config.secure_cookies)
        .with_cipher(ctx.cipher().unwrap_or_default())
        .with_backends(ctx.backends().unwrap_or_default())
        .with_oidc(ctx.config.oidc.clone());
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
