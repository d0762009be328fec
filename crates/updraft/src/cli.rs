//! The command line, as `dag-format.md` defines it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "updraft",
    version,
    about = "A data-pipeline orchestrator: YAML DAGs, one binary, SQLite on a laptop, PostgreSQL in production",
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// The configuration file (default: `updraft.toml` in this folder or a parent).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Inspect, validate, test and trigger DAGs.
    #[command(subcommand)]
    Dags(DagsCommand),
    /// Test and inspect task instances.
    #[command(subcommand)]
    Tasks(TasksCommand),
    /// Manage pools, which cap how many tasks run at once across DAGs.
    #[command(subcommand)]
    Pools(PoolsCommand),
    /// Manage accounts: who may sign in, with which role, for which teams.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Manage variables (encrypted at rest), for templates as `{{ var.value.<key> }}`.
    #[command(subcommand)]
    Variables(VariablesCommand),
    /// Manage connections (passwords and extras encrypted at rest).
    #[command(subcommand)]
    Connections(ConnectionsCommand),
    /// Re-encrypt every stored secret with the first key of `core.fernet_key`.
    RotateFernetKey,
    /// Manage personal API tokens (`Authorization: Bearer`).
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Manage remote workers' tokens, one per worker, each revocable alone.
    #[command(subcommand)]
    WorkerTokens(WorkerTokensCommand),
    /// Manage the metadata database.
    #[command(subcommand)]
    Db(DbCommand),
    /// Run everything in one process on the embedded store: scheduler, runner, web server.
    Standalone(ServeArgs),
    /// Run the scheduler (with recovery of lost attempts); tasks run in `updraft worker`.
    Scheduler,
    /// Run tasks that schedulers queue.
    Worker,
    /// Run the web server.
    Webserver(ServeArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (default: `webserver.host`, 127.0.0.1).
    #[arg(long)]
    pub host: Option<String>,
    /// Port to listen on (default: `webserver.port`, 8080).
    #[arg(long)]
    pub port: Option<u16>,
}

#[derive(Debug, Clone, Copy, Default, ValueEnum, PartialEq, Eq)]
pub enum Output {
    #[default]
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum DagsCommand {
    /// Parse the DAGs folder and list DAG id, schedule, owner, paused, file.
    List {
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// Parse and validate every DAG file; print each problem as `path:line:column: message`.
    Validate,
    /// Run one whole run now, in this process, printing each task's state and log.
    ///
    /// Exits 0 if and only if the run succeeded. Pools and pauses do not apply, and a
    /// failed task is not retried unless `--retries` is given.
    Test {
        /// The DAG id (its `dag:` field).
        dag_id: String,
        /// Logical date: a date (midnight in the DAG's time zone) or an RFC 3339 timestamp. Default: now.
        #[arg(long)]
        date: Option<String>,
        /// Override a parameter: `--param market=KOSDAQ` (values are JSON when they parse as JSON).
        #[arg(long = "param", value_name = "KEY=VALUE")]
        params: Vec<String>,
        /// Retry failed tasks as their `retries` say (and wait out `retry_delay`).
        #[arg(long)]
        retries: bool,
    },
    /// Create a run for the scheduler; print its run id.
    Trigger {
        /// The DAG id (its `dag:` field).
        dag_id: String,
        /// Run configuration: a JSON object; its keys override `params`.
        #[arg(long)]
        conf: Option<String>,
        /// Logical date (default: now).
        #[arg(long)]
        date: Option<String>,
        /// Run id (default: `manual__<logical date>`).
        #[arg(long)]
        run_id: Option<String>,
        /// Wait for the run to finish; exit 0 if and only if it succeeded.
        #[arg(long)]
        wait: bool,
    },
    /// Print the next data intervals of the DAG's schedule.
    NextRuns {
        /// The DAG id (its `dag:` field).
        dag_id: String,
        #[arg(long, default_value_t = 5)]
        count: usize,
        /// Intervals starting at or after this date or timestamp (default: now).
        #[arg(long)]
        after: Option<String>,
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// List runs of a DAG, newest first.
    ListRuns {
        /// The DAG id (its `dag:` field).
        dag_id: String,
        /// Only runs in this state: queued, running, success or failed.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// Stop creating and advancing runs of a DAG.
    Pause {
        /// The DAG id (its `dag:` field).
        dag_id: String,
    },
    /// Resume a DAG.
    Unpause {
        /// The DAG id (its `dag:` field).
        dag_id: String,
    },
    /// Create runs for every interval that starts between two dates, and follow them.
    Backfill {
        /// The DAG id (its `dag:` field).
        dag_id: String,
        /// First interval start (inclusive).
        #[arg(long)]
        start: String,
        /// Last interval start (inclusive).
        #[arg(long)]
        end: String,
        /// Create the runs and return without following them.
        #[arg(long)]
        no_wait: bool,
    },
}

/// One task of a DAG, as a test run on a date would see it.
#[derive(Debug, clap::Args)]
pub struct TaskOnDate {
    /// The DAG id (its `dag:` field).
    pub dag_id: String,
    /// The task id.
    pub task_id: String,
    #[arg(long)]
    pub date: Option<String>,
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum TasksCommand {
    /// Run one task now, ignoring its dependencies; nothing is recorded.
    Test {
        #[command(flatten)]
        task: TaskOnDate,
    },
    /// Print a task's fields with every template rendered, or (`--pod`) the pod its
    /// attempt would be on Kubernetes.
    Render {
        #[command(flatten)]
        task: TaskOnDate,
        /// The pod spec (YAML; `-o json` for JSON), with the task's `kubernetes:`
        /// settings and `[kubernetes]` of updraft.toml.
        #[arg(long)]
        pod: bool,
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// Each task instance of a run: task id, state, try number, start, end.
    StatesForDagRun {
        /// The DAG id (its `dag:` field).
        dag_id: String,
        /// The run id, as `dags list-runs` shows it.
        run_id: String,
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// Say in plain words why a task is not running yet (or how it ended).
    Explain {
        /// The DAG id (its `dag:` field).
        dag_id: String,
        /// The run id, as `dags list-runs` shows it.
        run_id: String,
        /// The task id.
        task_id: String,
        /// Which instance of a mapped task (default: the first not finished).
        #[arg(long)]
        map_index: Option<i32>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PoolsCommand {
    /// List pools with their slots and how many are in use.
    List {
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// Create or resize a pool.
    Set {
        /// The pool's name, as tasks write it in `pool:`.
        name: String,
        /// How many tasks may hold a slot (be queued or running) at once.
        slots: u32,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Delete a pool (not `default`).
    Delete {
        /// The pool's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Create an account. Without `--password-stdin` a random password is made and
    /// printed once.
    Create {
        username: String,
        /// `admin`, `op`, `user` or `viewer` (Airflow's meanings).
        #[arg(long, default_value = "viewer")]
        role: String,
        /// A team whose DAGs (by `owner`) the account may see; repeat for several.
        #[arg(long = "team")]
        teams: Vec<String>,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List accounts (never their passwords).
    List {
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// Delete an account.
    Delete { username: String },
    /// Set a new password (random and printed once, or from standard input), and
    /// lift any lock from failed sign-ins.
    ResetPassword {
        username: String,
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum VariablesCommand {
    /// Create or change a variable.
    Set {
        key: String,
        /// The value; or `--value-stdin`.
        value: Option<String>,
        #[arg(long)]
        value_stdin: bool,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Print a variable's value.
    Get {
        key: String,
    },
    /// List keys and descriptions (never values).
    List {
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    Delete {
        key: String,
    },
    /// Write every variable to a JSON file in Airflow's format (values in clear:
    /// keep the file safe).
    Export {
        file: std::path::PathBuf,
    },
    /// Read variables from a JSON file in Airflow's format.
    Import {
        file: std::path::PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConnectionsCommand {
    /// Create or change a connection, from a URI or from parts.
    Add {
        conn_id: String,
        /// e.g. `postgres://user:password@host:5432/db?sslmode=require`
        #[arg(long)]
        conn_uri: Option<String>,
        #[arg(long)]
        conn_type: Option<String>,
        #[arg(long)]
        conn_host: Option<String>,
        #[arg(long)]
        conn_login: Option<String>,
        #[arg(long)]
        conn_password: Option<String>,
        #[arg(long)]
        conn_schema: Option<String>,
        #[arg(long)]
        conn_port: Option<u16>,
        /// A JSON object.
        #[arg(long)]
        conn_extra: Option<String>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Show a connection (the password as `***` unless `--show-secrets`).
    Get {
        conn_id: String,
        #[arg(long)]
        show_secrets: bool,
    },
    /// List connections (never passwords).
    List {
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    Delete {
        conn_id: String,
    },
    /// Write every connection to a JSON file in Airflow's format (secrets in
    /// clear: keep the file safe).
    Export {
        file: std::path::PathBuf,
    },
    /// Read connections from a JSON file in Airflow's format.
    Import {
        file: std::path::PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Make a token for a user; it is printed once and stored only as a hash.
    Create {
        username: String,
        /// What the token is for (shown in lists).
        #[arg(long)]
        name: String,
        /// `read` (a viewer's rights at most) or `write` (the user's rights).
        #[arg(long, default_value = "read")]
        scope: String,
        /// How long it lasts, e.g. `30d`, `12w`; `never` for no expiry.
        #[arg(long, default_value = "90d")]
        expires_in: String,
    },
    /// List tokens (never their secrets).
    List {
        /// Only this user's.
        #[arg(long)]
        user: Option<String>,
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// Revoke a token by its id.
    Revoke { id: i64 },
}

#[derive(Debug, Subcommand)]
pub enum WorkerTokensCommand {
    /// Make a token for one worker (its `worker.token`); printed once, stored only as a hash.
    Create {
        /// Which worker it is for (shown in lists).
        name: String,
        /// How long it lasts, e.g. `30d`, `52w`; `never` for no expiry.
        #[arg(long, default_value = "never")]
        expires_in: String,
    },
    /// List worker tokens (never their secrets).
    List {
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// Revoke a worker token by its id: that worker's next request is refused.
    Revoke { id: i64 },
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Create or upgrade the metadata schema.
    Migrate,
    /// Delete finished runs (with their task instances, attempts, logs and state
    /// changes) and audit rows older than a cutoff, in short batches.
    Clean {
        /// How old: `90d`, `12h`, `2w` (finished runs by their end, audit rows by their time).
        #[arg(long, value_parser = parse_duration)]
        older_than: updraft_core::Duration,
        /// Count what would go, delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Runs (and audit rows) per transaction.
        #[arg(long, default_value_t = 500)]
        batch: u32,
    },
}

fn parse_duration(text: &str) -> Result<updraft_core::Duration, String> {
    updraft_core::Duration::parse(text).map_err(|error| error.to_string())
}
