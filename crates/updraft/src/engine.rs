//! Wiring: the scheduler, the runner, recovery and heartbeats, in the combinations
//! the commands need (`standalone`, `scheduler`, `worker`, `dags test`).

use std::sync::Arc;

use anyhow::Result;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use updraft_core::errors::chain;
use updraft_runner::{
    ApiSource, AttemptObserver, PodExecutor, Quiet, Recovery, Runner, RunnerConfig, StoreSource, WorkSource,
    heartbeat_loop, procfs,
};
use updraft_scheduler::{DagSync, Scheduler, SchedulerConfig};
use updraft_store::{DefinitionCache, NewProcess, ProcessKind, ProcessState, Scope, Store};

use crate::context::Ctx;

/// Which parts run in this process.
#[derive(Debug, Clone, Copy)]
pub struct Parts {
    pub scheduler: bool,
    pub runner: bool,
}

/// Where the parts of this process read and write: the store itself, or (a remote
/// worker) the API server.
pub enum Work {
    Store(Store),
    Api(Arc<ApiSource>),
}

/// A registered process with its running parts.
pub struct Engine {
    source: Arc<dyn WorkSource>,
    pub process_id: i64,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    /// Turns true if another process declared this one dead.
    pub lost: watch::Receiver<bool>,
    store: Option<Store>,
    runner: Option<Arc<Runner>>,
    clock: Arc<dyn updraft_core::clock::Clock>,
}

pub struct EngineOptions {
    pub parts: Parts,
    pub scope: Scope,
    pub observer: Arc<dyn AttemptObserver>,
    /// `dags test`: pools and pauses do not apply, the folder is not watched.
    pub test_mode: bool,
    /// Rung after every scheduling tick that changed something.
    pub ticked: Option<Arc<Notify>>,
}

impl Engine {
    pub async fn register(ctx: &Ctx, store: &Store, kind: ProcessKind) -> Result<i64> {
        let pid = std::process::id();
        let process = NewProcess { kind, hostname: procfs::hostname(), pid, pid_start: procfs::start_time(pid) };
        Ok(store.register_process(&process, ctx.clock.now()).await?)
    }

    pub async fn start(ctx: &Ctx, work: Work, process_id: i64, options: EngineOptions) -> Result<Engine> {
        let config = &ctx.config;
        let definitions = Arc::new(DefinitionCache::default());
        let (store, source): (Option<Store>, Arc<dyn WorkSource>) = match work {
            Work::Store(store) => {
                let source = StoreSource {
                    store: store.clone(),
                    definitions: definitions.clone(),
                    clock: ctx.clock.clone(),
                    // Without a scheduler in this process, queued work is learnt of
                    // through the store.
                    watch: !options.parts.scheduler,
                    cipher: ctx.cipher()?,
                };
                (Some(store), Arc::new(source))
            }
            Work::Api(api) => (None, api),
        };
        let scheduler_wake = Arc::new(Notify::new());
        let runner_wake = Arc::new(Notify::new());
        let (stop, stopped) = watch::channel(false);
        let (lost_tx, lost) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let hostname = procfs::hostname();

        let pods = PodExecutor::new(config.kubernetes.clone(), config.executor);
        // A service on the store that stops leaves its pods running for the next
        // process to adopt (recovery needs the store); `dags test` and remote
        // workers delete theirs.
        let release = !options.test_mode && store.is_some();
        let pods = Arc::new(if release { pods.releasing() } else { pods });
        let runner = match options.parts.runner {
            true => Some(Arc::new(Runner::new(
                source.clone(),
                RunnerConfig {
                    slots: config.runner_slots as usize,
                    scope: options.scope,
                    process_id,
                    hostname: hostname.clone(),
                    dags_folder: config.dags_folder.clone(),
                    logs_folder: config.logs_folder(),
                    kill_grace: config.kill_grace,
                    // Next to a scheduler (standalone, dags test) every queue is ours.
                    queues: (!options.parts.scheduler).then(|| config.worker_queues.clone()),
                    backends: ctx.backends()?,
                    output_limit: config.output_limit,
                    pods: pods.clone(),
                },
                options.observer.clone(),
                ctx.clock.clone(),
                runner_wake.clone(),
                scheduler_wake.clone(),
            ))),
            false => None,
        };
        // Recovery needs the store: a remote worker leaves it to the schedulers.
        let recovery = store.clone().map(|store| {
            Arc::new(Recovery {
                store,
                process_id,
                hostname: hostname.clone(),
                definitions: definitions.clone(),
                logs_folder: config.logs_folder(),
                heartbeat_timeout: config.heartbeat_timeout,
                clock: ctx.clock.clone(),
                pods: pods.clone(),
                adopter: runner.clone(),
            })
        });
        if let Some(recovery) = &recovery
            && !options.test_mode
        {
            // Settle what a crashed predecessor left before anything new starts.
            run_recovery(recovery).await;
        }

        if options.parts.scheduler {
            let store = store.clone().expect("a scheduler runs on the store");
            let dag_sync = (!options.test_mode).then(|| {
                DagSync::new(
                    config.dags_folder.clone(),
                    Some(ctx.cwd.clone()),
                    store.clone(),
                    definitions.clone(),
                    config.dags_are_paused_at_creation,
                )
                .with_notifiers(config.notifiers.keys().cloned().collect())
            });
            let scheduler = Scheduler::new(
                store.clone(),
                SchedulerConfig {
                    scope: options.scope,
                    parallelism: (!options.test_mode).then_some(config.parallelism),
                    use_pools: !options.test_mode,
                    ignore_pause: options.test_mode,
                    dag_sync_interval: config.dag_sync_interval,
                    actor: format!("scheduler:{process_id}"),
                    ticked: options.ticked.clone(),
                    batch: config.scheduler_batch,
                },
                definitions.clone(),
                ctx.clock.clone(),
                scheduler_wake.clone(),
                runner_wake.clone(),
                dag_sync,
            );
            // The first sync happens before serving, so the page and `/health` see DAGs.
            scheduler.sync_dags().await;
            if !options.test_mode {
                let ops = updraft_ops::Ops::new(store.clone(), definitions.clone(), config.ops(), ctx.clock.clone());
                tasks.spawn(ops.run(stopped.clone()));
            }
            let stopped = stopped.clone();
            tasks.spawn(async move {
                if let Err(error) = scheduler.run(stopped).await {
                    tracing::error!(error = %chain(&error), "scheduler stopped");
                }
            });
        }
        if let Some(runner) = &runner {
            tasks.spawn(runner.clone().run(stopped.clone()));
            if !options.test_mode {
                tasks.spawn(pods.clone().sweep_loop(stopped.clone()));
            }
        }
        {
            let source = source.clone();
            let interval = config.heartbeat_interval;
            let timeout = config.heartbeat_timeout;
            let stopped = stopped.clone();
            let runner = runner.clone();
            tasks.spawn(async move {
                if !heartbeat_loop(source, process_id, interval, timeout, runner, stopped).await {
                    let _ = lost_tx.send(true);
                }
            });
        }
        if let Some(recovery) = recovery
            && !options.test_mode
            && options.parts.scheduler
        {
            let mut stopped = stopped.clone();
            let interval = config.heartbeat_interval;
            tasks.spawn(async move {
                loop {
                    let stop = tokio::select! {
                        () = tokio::time::sleep(interval) => false,
                        changed = stopped.changed() => changed.is_err() || *stopped.borrow(),
                    };
                    if stop {
                        return;
                    }
                    run_recovery(&recovery).await;
                }
            });
        }
        Ok(Engine { source, process_id, stop, tasks, lost, store, runner, clock: ctx.clock.clone() })
    }

    /// Stops every part; running attempts are interrupted and requeued, except
    /// pods, which keep running: the process is then recorded as gone without
    /// finishing them, so recovery hands them to a live runner.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        let released = self.runner.as_ref().map_or(0, |runner| runner.released());
        if released > 0
            && let Some(store) = &self.store
        {
            tracing::info!(pods = released, "leaving running pods for the next runner to adopt");
            let now = self.clock.now();
            match store.set_process_state(self.process_id, ProcessState::Running, ProcessState::Dead, now).await {
                Ok(_) => return,
                Err(error) => tracing::warn!(error = %chain(&error), "cannot hand this process's pods over"),
            }
        }
        if let Err(error) = self.source.deregister(self.process_id).await {
            tracing::warn!(error = %chain(&error), "cannot record that this process stopped");
        }
    }
}

async fn run_recovery(recovery: &Recovery) {
    match recovery.run_once().await {
        Ok(recovered) => {
            for attempt in recovered {
                tracing::warn!(
                    dag_id = %attempt.dag_id, run_id = %attempt.run_id, task_id = %attempt.task_id,
                    try_number = attempt.try_number, state = %attempt.state,
                    "recovered an attempt lost with its process"
                );
            }
        }
        Err(error) => tracing::error!(error = %chain(&error), "recovery check failed"),
    }
}

/// Options for the long-running processes.
pub fn service_options(parts: Parts) -> EngineOptions {
    EngineOptions { parts, scope: Scope::All, observer: Arc::new(Quiet), test_mode: false, ticked: None }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn termination() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = async {
            match terminate.as_mut() {
                Some(signal) => { signal.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}
