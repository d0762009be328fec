//! `updraft.toml`, environment overrides (`UPDRAFT_<SECTION>__<KEY>`, plus the short
//! forms `UPDRAFT_DAGS_FOLDER` and `UPDRAFT_DATABASE_URL`), and defaults.
//!
//! Precedence, lowest first: defaults, the file, `UPDRAFT_<SECTION>__<KEY>`, the
//! short forms, command-line flags. Relative paths in the file are relative to the
//! file's folder; relative paths from the environment, to the working folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::error::user_error;

pub const FILE_NAME: &str = "updraft.toml";

#[derive(Debug, Clone)]
pub struct Config {
    /// The file the settings came from, if any.
    pub file: Option<PathBuf>,
    pub dags_folder: PathBuf,
    pub state_folder: PathBuf,
    pub database_url: String,
    /// What SQLite paths in `database_url` are relative to.
    pub database_base: PathBuf,
    /// Connections per process (PostgreSQL).
    pub database_pool_size: u32,
    pub dags_are_paused_at_creation: bool,
    pub dag_sync_interval: Duration,
    /// Fernet keys for variables and connections; never printed.
    pub fernet_key: Option<String>,
    pub host: String,
    pub port: u16,
    /// `none` (loopback only) or `password`.
    pub auth: String,
    /// Session and CSRF cookies only over HTTPS.
    pub secure_cookies: bool,
    pub parallelism: u32,
    /// DAGs one scheduling pass takes (PostgreSQL).
    pub scheduler_batch: u32,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub runner_slots: u32,
    pub kill_grace: Duration,
    /// The largest output a task may hand on, in bytes.
    pub output_limit: u64,
    /// Queues `updraft worker` takes tasks from.
    pub worker_queues: Vec<String>,
    /// The API server a remote worker talks to; unset: workers use the store.
    pub worker_api_url: Option<String>,
    /// The shared secret remote workers present and the API server expects; unset
    /// on the server: the worker API is off.
    pub worker_token: Option<String>,
    pub log_level: Option<String>,
    /// `[[secrets.backends]]`, asked before the database.
    pub secrets_backends: Vec<updraft_secrets::BackendConfig>,
    /// What relative paths in the backends are relative to.
    pub secrets_base: PathBuf,
    pub secrets_cache_ttl: Duration,
    /// `[oidc]`, when an issuer is set.
    pub oidc: Option<updraft_server::OidcConfig>,
    pub metrics_prefix: String,
    pub statsd: Option<updraft_metrics::StatsdConfig>,
    pub metrics_port: Option<u16>,
    /// The UI's address as people reach it (links in alerts).
    pub base_url: String,
    /// `[notifiers.<name>]`.
    pub notifiers: BTreeMap<String, updraft_ops::NotifierConfig>,
    /// `[digest]`, when it names a notifier.
    pub digest: Option<updraft_ops::DigestConfig>,
    pub maintenance: updraft_ops::MaintenanceConfig,
    /// `[kubernetes]`: namespace, default image, node pools.
    pub kubernetes: updraft_kube::KubeConfig,
    /// `[executor] kind`: where tasks that name no executor run.
    pub executor: updraft_core::kubernetes::Executor,
}

impl Config {
    pub fn logs_folder(&self) -> PathBuf {
        self.state_folder.join("logs")
    }

    /// What the background jobs (alerts, digest, deadlines, clean-up) need.
    pub fn ops(&self) -> updraft_ops::OpsConfig {
        updraft_ops::OpsConfig {
            notifiers: self.notifiers.clone(),
            ui_url: self.base_url.clone(),
            digest: self.digest.clone(),
            maintenance: self.maintenance.clone(),
            logs_folder: self.logs_folder(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    core: Option<CoreSection>,
    database: Option<DatabaseSection>,
    webserver: Option<WebserverSection>,
    scheduler: Option<SchedulerSection>,
    runner: Option<RunnerSection>,
    worker: Option<WorkerSection>,
    logging: Option<LoggingSection>,
    secrets: Option<SecretsSection>,
    oidc: Option<OidcSection>,
    metrics: Option<MetricsSection>,
    /// Read as tables first, like `[[secrets.backends]]`, so errors get positions.
    notifiers: Option<BTreeMap<String, toml::Spanned<toml::Table>>>,
    #[serde(skip)]
    parsed_notifiers: Option<BTreeMap<String, updraft_ops::NotifierConfig>>,
    digest: Option<DigestSection>,
    maintenance: Option<MaintenanceSection>,
    kubernetes: Option<KubernetesSection>,
    executor: Option<ExecutorSection>,
}

/// Where tasks run unless they say.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecutorSection {
    /// `local` (processes of the runner) or `kubernetes` (a pod per attempt).
    kind: Option<updraft_core::kubernetes::Executor>,
}

/// The Kubernetes executor's cluster side.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KubernetesSection {
    namespace: Option<String>,
    /// For tasks that name no image.
    image: Option<String>,
    service_account: Option<String>,
    kill_grace: Option<DurationSetting>,
    /// How long a failed pod is kept for `kubectl describe` / `logs` (0: not kept).
    keep_failed_pods: Option<DurationSetting>,
    /// How long an image may fail to pull before the attempt fails.
    image_pull_grace: Option<DurationSetting>,
    /// How long a pod may find no node before the attempt fails.
    unschedulable_grace: Option<DurationSetting>,
    node_pools: Option<BTreeMap<String, NodePoolSection>>,
}

/// What a node pool name in a DAG file stands for.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodePoolSection {
    #[serde(default)]
    node_selector: BTreeMap<String, String>,
    #[serde(default)]
    tolerations: Vec<updraft_core::kubernetes::Toleration>,
}

/// One message a window listing what was not scheduled normally.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DigestSection {
    /// Where it goes; unset: no digest.
    notifier: Option<String>,
    every: Option<DurationSetting>,
    late_after: Option<DurationSetting>,
    stuck_after: Option<DurationSetting>,
    send_when_quiet: Option<bool>,
}

/// The built-in metadata clean-up.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MaintenanceSection {
    clean: Option<bool>,
    retention: Option<DurationSetting>,
    every: Option<DurationSetting>,
    batch: Option<u32>,
}

/// `/metrics` (Prometheus) and StatsD/DogStatsD.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsSection {
    /// Prometheus names start with it (`airflow_ti_finish`).
    prefix: Option<String>,
    /// Where StatsD lines go; unset: none are sent.
    statsd_host: Option<String>,
    statsd_port: Option<u16>,
    statsd_prefix: Option<String>,
    /// DogStatsD: labels also as tags.
    statsd_datadog: Option<bool>,
    /// A scheduler or worker process serves `/metrics` on this port (the API
    /// server and standalone serve it on theirs).
    port: Option<u16>,
}

/// Single sign-on through an OpenID Connect provider.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct OidcSection {
    issuer: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    redirect_url: Option<String>,
    scopes: Option<Vec<String>>,
    username_claim: Option<String>,
    teams_claim: Option<String>,
    create_users: Option<bool>,
    default_role: Option<String>,
    name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretsSection {
    /// How long a backend's answer (also "not there") is reused.
    cache_ttl: Option<DurationSetting>,
    /// Read as tables first: a `kind`-tagged enum loses toml's positions, so
    /// [`parse_file`] converts each table and places its errors itself.
    backends: Option<Vec<toml::Spanned<toml::Table>>>,
    #[serde(skip)]
    parsed_backends: Option<Vec<updraft_secrets::BackendConfig>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkerSection {
    queues: Option<Vec<String>>,
    api_url: Option<String>,
    token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CoreSection {
    dags_folder: Option<String>,
    state_folder: Option<String>,
    dags_are_paused_at_creation: Option<bool>,
    /// How often the scheduler looks at the DAGs folder for changes.
    dag_dir_list_interval: Option<DurationSetting>,
    /// Fernet keys for secrets at rest, comma-separated (the first encrypts).
    fernet_key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DatabaseSection {
    url: Option<String>,
    pool_size: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebserverSection {
    /// How people reach the UI (`https://updraft.example.com`), for links in alerts.
    base_url: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    auth: Option<String>,
    secure_cookies: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SchedulerSection {
    parallelism: Option<u32>,
    batch: Option<u32>,
    heartbeat_interval: Option<DurationSetting>,
    heartbeat_timeout: Option<DurationSetting>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunnerSection {
    slots: Option<u32>,
    kill_grace: Option<DurationSetting>,
    output_limit: Option<ByteSetting>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoggingSection {
    level: Option<String>,
}

/// A duration written like the DAG format's: `30s`, `5m`, or whole seconds.
#[derive(Debug, Clone, Copy)]
struct DurationSetting(Duration);

impl<'de> Deserialize<'de> for DurationSetting {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        let text = match Raw::deserialize(deserializer)? {
            Raw::Secs(secs) => secs.to_string(),
            Raw::Text(text) => text,
        };
        updraft_core::Duration::parse(&text)
            .map(|duration| DurationSetting(duration.to_std()))
            .map_err(|error| serde::de::Error::custom(format!("invalid duration `{text}`: {error}")))
    }
}

/// A size: whole bytes, or a number with `KB`, `MB` or `GB` (1024-based).
#[derive(Debug, Clone, Copy)]
struct ByteSetting(u64);

impl<'de> Deserialize<'de> for ByteSetting {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        let text = match Raw::deserialize(deserializer)? {
            Raw::Bytes(bytes) => return Ok(ByteSetting(bytes)),
            Raw::Text(text) => text,
        };
        let upper = text.trim().to_ascii_uppercase();
        let (number, unit) = upper.split_at(upper.find(|c: char| !c.is_ascii_digit()).unwrap_or(upper.len()));
        let scale = match unit.trim() {
            "" | "B" => 1,
            "KB" | "KIB" => 1 << 10,
            "MB" | "MIB" => 1 << 20,
            "GB" | "GIB" => 1 << 30,
            _ => 0,
        };
        match number.parse::<u64>() {
            Ok(number) if scale > 0 => Ok(ByteSetting(number.saturating_mul(scale))),
            _ => Err(serde::de::Error::custom(format!("invalid size `{text}`: use e.g. `1MB`, `512KB` or bytes"))),
        }
    }
}

/// Where a setting came from: paths resolve against it.
#[derive(Clone, Copy)]
enum Origin {
    File,
    Env,
}

struct Layer {
    config: FileConfig,
    origin: Origin,
}

pub struct Overrides {
    pub host: Option<String>,
    pub port: Option<u16>,
}

/// Loads the configuration for a command run in `cwd`.
pub fn load(explicit: Option<&Path>, cwd: &Path, env: &[(String, String)], overrides: Overrides) -> Result<Config> {
    let explicit = explicit
        .map(Path::to_path_buf)
        .or_else(|| env.iter().find(|(name, _)| name == "UPDRAFT_CONFIG").map(|(_, value)| PathBuf::from(value)));
    let file = match explicit {
        Some(path) => {
            let path = cwd.join(path);
            if !path.is_file() {
                return Err(user_error(
                    format!("config file `{}` does not exist", path.display()),
                    Some("pass an existing file to `--config` or `UPDRAFT_CONFIG`"),
                ));
            }
            Some(path)
        }
        None => cwd.ancestors().map(|dir| dir.join(FILE_NAME)).find(|path| path.is_file()),
    };
    let file_base = file.as_ref().and_then(|path| path.parent()).map_or_else(|| cwd.to_path_buf(), Path::to_path_buf);
    let mut layers = Vec::new();
    if let Some(path) = &file {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read config file `{}`", path.display()))?;
        layers.push(Layer { config: parse_file(&text, &display(path, cwd))?, origin: Origin::File });
    }
    layers.extend(env_layers(env)?);

    let base_of = |origin: Origin| match origin {
        Origin::File => file_base.clone(),
        Origin::Env => cwd.to_path_buf(),
    };
    // The last layer that sets a value wins.
    macro_rules! pick {
        ($section:ident . $field:ident) => {
            layers.iter().rev().find_map(|layer| {
                layer
                    .config
                    .$section
                    .as_ref()
                    .and_then(|section| section.$field.clone())
                    .map(|value| (value, layer.origin))
            })
        };
    }
    let dags_folder = match pick!(core.dags_folder) {
        Some((path, origin)) => base_of(origin).join(path),
        None => file_base.join("dags"),
    };
    let state_folder = match pick!(core.state_folder) {
        Some((path, origin)) => base_of(origin).join(path),
        None => file_base.join(".updraft"),
    };
    let (database_url, database_base) = match pick!(database.url) {
        Some((url, origin)) => (url, base_of(origin)),
        None => (format!("sqlite://{}", state_folder.join("updraft.db").display()), file_base.clone()),
    };
    let host =
        overrides.host.or(pick!(webserver.host).map(|(host, _)| host)).unwrap_or_else(|| "127.0.0.1".to_string());
    let port = overrides.port.or(pick!(webserver.port).map(|(port, _)| port)).unwrap_or(8080);
    let duration = |value: Option<(DurationSetting, Origin)>, default: u64| {
        value.map_or(Duration::from_secs(default), |(d, _)| d.0)
    };
    let heartbeat_timeout = duration(pick!(scheduler.heartbeat_timeout), 60);
    // Notifiers come from the file only (a name cannot be an environment key).
    let notifiers = match layers.iter().rev().find_map(|layer| layer.config.parsed_notifiers.clone()) {
        Some(notifiers) => expand_env(notifiers, env, file.as_deref().map(|path| display(path, cwd)))?,
        None => BTreeMap::new(),
    };
    let digest = match pick!(digest.notifier).filter(|(name, _)| !name.is_empty()) {
        Some((notifier, _)) => {
            if !notifiers.contains_key(&notifier) {
                let names: Vec<&str> = notifiers.keys().map(String::as_str).collect();
                return Err(user_error(
                    format!("`digest.notifier` names `{notifier}`, which is not configured"),
                    Some(&if names.is_empty() {
                        format!("add a `[notifiers.{notifier}]` table (kind = \"slack\", webhook_url = ...)")
                    } else {
                        format!("configured notifiers: {}", names.join(", "))
                    }),
                ));
            }
            Some(updraft_ops::DigestConfig {
                notifier,
                every: duration(pick!(digest.every), 600).max(Duration::from_secs(60)),
                late_after: duration(pick!(digest.late_after), 1800),
                stuck_after: duration(pick!(digest.stuck_after), 900),
                heartbeat_timeout,
                send_when_quiet: pick!(digest.send_when_quiet).is_some_and(|(quiet, _)| quiet),
            })
        }
        None => None,
    };
    let maintenance_default = updraft_ops::MaintenanceConfig::default();
    let maintenance = updraft_ops::MaintenanceConfig {
        enabled: pick!(maintenance.clean).is_none_or(|(clean, _)| clean),
        retention: pick!(maintenance.retention).map_or(maintenance_default.retention, |(retention, _)| retention.0),
        every: pick!(maintenance.every).map_or(maintenance_default.every, |(every, _)| every.0),
        batch: pick!(maintenance.batch).map_or(maintenance_default.batch, |(batch, _)| batch).max(1),
    };
    if maintenance.enabled && maintenance.retention < Duration::from_secs(86_400) {
        return Err(user_error(
            format!(
                "`maintenance.retention` is {}: the clean-up would delete runs less than a day old",
                updraft_core::Duration::from_secs(maintenance.retention.as_secs())
            ),
            Some("keep at least `1d` (the default is `180d`), or set `maintenance.clean = false`"),
        ));
    }
    let base_url = pick!(webserver.base_url)
        .map(|(url, _)| url.trim_end_matches('/').to_string())
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| {
            let shown = if host == "0.0.0.0" || host == "::" { "localhost" } else { host.as_str() };
            format!("http://{shown}:{port}")
        });
    let kube_default = updraft_kube::KubeConfig::default();
    let kubernetes = updraft_kube::KubeConfig {
        namespace: pick!(kubernetes.namespace).map_or(kube_default.namespace, |(namespace, _)| namespace),
        image: pick!(kubernetes.image).map_or(kube_default.image, |(image, _)| image),
        service_account: pick!(kubernetes.service_account).map(|(account, _)| account).filter(|a| !a.is_empty()),
        kill_grace: pick!(kubernetes.kill_grace).map_or(kube_default.kill_grace, |(grace, _)| grace.0),
        keep_failed: pick!(kubernetes.keep_failed_pods).map_or(kube_default.keep_failed, |(keep, _)| keep.0),
        graces: updraft_kube::status::Graces {
            image_pull: pick!(kubernetes.image_pull_grace).map_or(kube_default.graces.image_pull, |(grace, _)| grace.0),
            unschedulable: pick!(kubernetes.unschedulable_grace)
                .map_or(kube_default.graces.unschedulable, |(grace, _)| grace.0),
            ..kube_default.graces
        },
        node_pools: pick!(kubernetes.node_pools)
            .map(|(pools, _)| {
                pools
                    .into_iter()
                    .map(|(name, pool)| {
                        (
                            name,
                            updraft_kube::NodePool { node_selector: pool.node_selector, tolerations: pool.tolerations },
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
    };
    Ok(Config {
        executor: pick!(executor.kind).map(|(kind, _)| kind).unwrap_or_default(),
        kubernetes,
        base_url,
        notifiers,
        digest,
        maintenance,
        file,
        dags_folder,
        state_folder,
        database_url,
        database_base,
        database_pool_size: pick!(database.pool_size).map_or(10, |(size, _)| size).max(2),
        dags_are_paused_at_creation: pick!(core.dags_are_paused_at_creation).is_some_and(|(value, _)| value),
        fernet_key: pick!(core.fernet_key).map(|(key, _)| key).filter(|key| !key.trim().is_empty()),
        dag_sync_interval: duration(pick!(core.dag_dir_list_interval), 10),
        oidc: oidc_config(
            &host,
            port,
            |key| {
                match key {
                    "issuer" => pick!(oidc.issuer),
                    "client_id" => pick!(oidc.client_id),
                    "client_secret" => pick!(oidc.client_secret),
                    "redirect_url" => pick!(oidc.redirect_url),
                    "username_claim" => pick!(oidc.username_claim),
                    "teams_claim" => pick!(oidc.teams_claim),
                    "default_role" => pick!(oidc.default_role),
                    _ => pick!(oidc.name),
                }
                .map(|(value, _)| value)
            },
            pick!(oidc.scopes).map(|(scopes, _)| scopes),
            pick!(oidc.create_users).is_some_and(|(create, _)| create),
        )?,
        host,
        port,
        auth: pick!(webserver.auth).map_or_else(|| "none".to_string(), |(auth, _)| auth),
        secure_cookies: pick!(webserver.secure_cookies).is_some_and(|(secure, _)| secure),
        parallelism: pick!(scheduler.parallelism).map_or(32, |(value, _)| value).max(1),
        scheduler_batch: pick!(scheduler.batch).map_or(64, |(value, _)| value).max(1),
        heartbeat_interval: duration(pick!(scheduler.heartbeat_interval), 5),
        heartbeat_timeout,
        runner_slots: pick!(runner.slots).map_or(32, |(value, _)| value).max(1),
        kill_grace: duration(pick!(runner.kill_grace), 5),
        output_limit: pick!(runner.output_limit).map_or(updraft_runner::DEFAULT_OUTPUT_LIMIT, |(limit, _)| limit.0),
        worker_queues: pick!(worker.queues).map_or_else(|| vec!["default".to_string()], |(queues, _)| queues),
        worker_api_url: pick!(worker.api_url).map(|(url, _)| url).filter(|url| !url.is_empty()),
        worker_token: pick!(worker.token).map(|(token, _)| token).filter(|token| !token.is_empty()),
        log_level: pick!(logging.level).map(|(level, _)| level),
        secrets_base: pick!(secrets.parsed_backends).map_or_else(|| file_base.clone(), |(_, origin)| base_of(origin)),
        secrets_backends: pick!(secrets.parsed_backends).map(|(backends, _)| backends).unwrap_or_default(),
        secrets_cache_ttl: pick!(secrets.cache_ttl).map_or(updraft_secrets::DEFAULT_TTL, |(ttl, _)| ttl.0),
        metrics_prefix: pick!(metrics.prefix).map_or_else(|| "airflow".to_string(), |(prefix, _)| prefix),
        statsd: pick!(metrics.statsd_host).filter(|(host, _)| !host.is_empty()).map(|(host, _)| {
            let port = pick!(metrics.statsd_port).map_or(8125, |(port, _)| port);
            updraft_metrics::StatsdConfig {
                address: if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") },
                prefix: pick!(metrics.statsd_prefix).map_or_else(|| "airflow".to_string(), |(prefix, _)| prefix),
                datadog: pick!(metrics.statsd_datadog).is_some_and(|(datadog, _)| datadog),
            }
        }),
        metrics_port: pick!(metrics.port).map(|(port, _)| port).filter(|port| *port != 0),
    })
}

/// `[oidc]` when it names an issuer; `text(key)` is the setting of that name.
fn oidc_config(
    host: &str,
    port: u16,
    text: impl Fn(&str) -> Option<String>,
    scopes: Option<Vec<String>>,
    create_users: bool,
) -> Result<Option<updraft_server::OidcConfig>> {
    let Some(issuer) = text("issuer").filter(|issuer| !issuer.is_empty()) else { return Ok(None) };
    let required = |key: &str| {
        text(key).filter(|value| !value.is_empty()).ok_or_else(|| {
            user_error(
                format!("`[oidc]` has an issuer but no `{key}`"),
                Some("set it in updraft.toml or as UPDRAFT_OIDC__<KEY> (the client secret best in the environment)"),
            )
        })
    };
    let default_role = text("default_role").unwrap_or_else(|| "viewer".to_string());
    if updraft_auth::Role::parse(&default_role).is_err() {
        return Err(user_error(
            format!("`oidc.default_role` `{default_role}` is not a role"),
            Some("use admin, op, user or viewer"),
        ));
    }
    Ok(Some(updraft_server::OidcConfig {
        issuer,
        client_id: required("client_id")?,
        client_secret: required("client_secret")?,
        redirect_url: text("redirect_url").unwrap_or_else(|| format!("http://{host}:{port}/login/oidc/callback")),
        scopes: scopes.unwrap_or_else(|| ["openid", "profile", "email"].map(String::from).to_vec()),
        username_claim: text("username_claim").unwrap_or_else(|| "preferred_username".to_string()),
        teams_claim: text("teams_claim").filter(|claim| !claim.is_empty()),
        create_users,
        default_role,
        name: text("name").unwrap_or_else(|| "single sign-on".to_string()),
    }))
}

fn display(path: &Path, cwd: &Path) -> String {
    path.strip_prefix(cwd).unwrap_or(path).display().to_string()
}

fn parse_file(text: &str, shown: &str) -> Result<FileConfig> {
    let mut config: FileConfig = toml::from_str(text).map_err(|error| {
        let (line, column) = error.span().map_or((1, 1), |span| line_col(text, span.start));
        let message = error.message().trim_end().to_string();
        user_error(format!("{shown}:{line}:{column}: {}", with_suggestion(&message)), None)
    })?;
    if let Some(secrets) = config.secrets.as_mut()
        && let Some(tables) = &secrets.backends
    {
        let mut parsed = Vec::new();
        for table in tables {
            let span = table.span();
            let backend =
                toml::Value::Table(table.get_ref().clone()).try_into().map_err(|error: toml::de::Error| {
                    let message = error.message().trim_end().to_string();
                    let at = field_in_table(text, span.start, &message);
                    let (line, column) = line_col(text, at);
                    user_error(format!("{shown}:{line}:{column}: {}", with_suggestion(&message)), None)
                })?;
            parsed.push(backend);
        }
        secrets.parsed_backends = Some(parsed);
    }
    if let Some(tables) = &config.notifiers {
        let mut parsed = BTreeMap::new();
        for (name, table) in tables {
            let span = table.span();
            let notifier: updraft_ops::NotifierConfig =
                toml::Value::Table(table.get_ref().clone()).try_into().map_err(|error: toml::de::Error| {
                    let message = error.message().trim_end().to_string();
                    let (line, column) = line_col(text, field_in_table(text, span.start, &message));
                    user_error(
                        format!("{shown}:{line}:{column}: notifier `{name}`: {}", with_suggestion(&message)),
                        None,
                    )
                })?;
            if let Err(problem) = notifier.check()
                && !problem.contains("${")
            {
                let field = problem.split('`').nth(1).unwrap_or_default().to_string();
                let (line, column) = line_col(text, field_in_table(text, span.start, &format!("`{field}`")));
                return Err(user_error(format!("{shown}:{line}:{column}: notifier `{name}`: {problem}"), None));
            }
            parsed.insert(name.clone(), notifier);
        }
        config.parsed_notifiers = Some(parsed);
    }
    Ok(config)
}

/// Where the field a message names (in backticks) is set in the table starting
/// at `start` (up to the next header); else the table's start.
fn field_in_table(text: &str, start: usize, message: &str) -> usize {
    let field = message.split('`').nth(1).unwrap_or_default();
    text[start..]
        .lines()
        .scan(start, |offset, line| {
            let at = *offset;
            *offset += line.len() + 1;
            Some((at, line))
        })
        .take_while(|(at, line)| *at == start || !line.trim_start().starts_with('['))
        .find(|(_, line)| {
            let line = line.trim_start();
            !field.is_empty() && (line.starts_with(field) || line.contains(&format!("\"{field}\"")))
        })
        .map_or(start, |(at, line)| at + line.len() - line.trim_start().len())
}

/// Puts in `${NAME}` values from the environment, so a webhook URL or an SMTP
/// password need not be written in the file.
fn expand_env(
    notifiers: BTreeMap<String, updraft_ops::NotifierConfig>,
    env: &[(String, String)],
    file: Option<String>,
) -> Result<BTreeMap<String, updraft_ops::NotifierConfig>> {
    use updraft_ops::NotifierConfig;
    let shown = file.unwrap_or_else(|| FILE_NAME.to_string());
    let mut out = BTreeMap::new();
    for (name, mut notifier) in notifiers {
        let mut problem = None;
        let mut expand = |value: &mut String| {
            let mut out = String::with_capacity(value.len());
            let mut rest = value.as_str();
            while let Some(at) = rest.find("${") {
                let Some(end) = rest[at..].find('}') else { break };
                let variable = &rest[at + 2..at + end];
                out.push_str(&rest[..at]);
                match env.iter().find(|(key, _)| key == variable) {
                    Some((_, found)) => out.push_str(found),
                    None => problem = Some(variable.to_string()),
                }
                rest = &rest[at + end + 1..];
            }
            out.push_str(rest);
            *value = out;
        };
        match &mut notifier {
            NotifierConfig::Slack(slack) => expand(&mut slack.webhook_url),
            NotifierConfig::Webhook(webhook) => {
                expand(&mut webhook.url);
                webhook.headers.values_mut().for_each(&mut expand);
            }
            NotifierConfig::Email(email) => {
                expand(&mut email.smtp_host);
                if let Some(username) = &mut email.username {
                    expand(username);
                }
                if let Some(password) = &mut email.password {
                    expand(password);
                }
            }
        }
        if let Some(variable) = problem {
            return Err(user_error(
                format!("{shown}: notifier `{name}` reads `${{{variable}}}`, but the environment has no `{variable}`"),
                Some("set it in the environment of every Updraft process"),
            ));
        }
        if let Err(problem) = notifier.check() {
            return Err(user_error(format!("{shown}: notifier `{name}`: {problem}"), None));
        }
        out.insert(name, notifier);
    }
    Ok(out)
}

fn line_col(text: &str, byte: usize) -> (usize, usize) {
    let before = &text[..byte.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |last| last.chars().count()) + 1;
    (line, column)
}

/// toml says "unknown field `x`, expected one of `a`, `b`"; name the likely one.
fn with_suggestion(message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else { return message.to_string() };
    let Some((field, expected)) = rest.split_once('`') else { return message.to_string() };
    let candidates = expected.split('`').skip(1).step_by(2);
    match updraft_core::suggest::did_you_mean(field, candidates) {
        Some(candidate) => format!("{message}; did you mean `{candidate}`?"),
        None => message.to_string(),
    }
}

/// One layer per variable, so an error names the variable that caused it.
fn env_layers(env: &[(String, String)]) -> Result<Vec<Layer>> {
    let mut layers = Vec::new();
    let mut short = Vec::new();
    for (name, value) in env {
        let (section, key) = match name.as_str() {
            "UPDRAFT_DAGS_FOLDER" => {
                short.push(("core", "dags_folder", name, value));
                continue;
            }
            "UPDRAFT_DATABASE_URL" => {
                short.push(("database", "url", name, value));
                continue;
            }
            _ => match name.strip_prefix("UPDRAFT_").and_then(|rest| rest.split_once("__")) {
                Some((section, key)) => (section.to_ascii_lowercase(), key.to_ascii_lowercase()),
                None => continue,
            },
        };
        layers.push(env_layer(&section, &key, name, value)?);
    }
    for (section, key, name, value) in short {
        layers.push(env_layer(section, key, name, value)?);
    }
    Ok(layers)
}

fn env_layer(section: &str, key: &str, name: &str, value: &str) -> Result<Layer> {
    let parsed = if let Ok(number) = value.parse::<i64>() {
        toml::Value::Integer(number)
    } else if let Ok(flag) = value.parse::<bool>() {
        toml::Value::Boolean(flag)
    } else {
        toml::Value::String(value.to_string())
    };
    // Paths and URLs stay text even when they look like numbers; lists are
    // comma-separated.
    let parsed = match (section, key) {
        ("worker", "queues") | ("oidc", "scopes") => toml::Value::Array(
            value
                .split(',')
                .map(str::trim)
                .filter(|q| !q.is_empty())
                .map(|q| toml::Value::String(q.to_string()))
                .collect(),
        ),
        ("core", "dags_folder" | "state_folder" | "fernet_key")
        | ("runner", "output_limit")
        | ("database", "url")
        | ("worker", "api_url" | "token")
        | ("oidc", "issuer" | "client_id" | "client_secret" | "redirect_url" | "name")
        | ("webserver", "host" | "auth" | "base_url")
        | ("digest", "notifier")
        | ("kubernetes", "namespace" | "image" | "service_account")
        | ("logging", "level") => toml::Value::String(value.to_string()),
        _ => parsed,
    };
    let mut inner = toml::Table::new();
    inner.insert(key.to_string(), parsed);
    let mut table = toml::Table::new();
    table.insert(section.to_string(), toml::Value::Table(inner));
    match toml::Value::Table(table).try_into::<FileConfig>() {
        Ok(config) => Ok(Layer { config, origin: Origin::Env }),
        Err(error) => {
            let message = error.message().trim_end().to_string();
            if message.starts_with("unknown field") {
                bail!(user_error(
                    format!("environment variable `{name}` names unknown setting `{section}.{key}`"),
                    Some("settings are `UPDRAFT_<SECTION>__<KEY>`, e.g. `UPDRAFT_WEBSERVER__PORT=9090`"),
                ));
            }
            bail!(user_error(format!("environment variable `{name}`: {message}"), None))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_in(dir: &Path, file: Option<&str>, env: &[(&str, &str)]) -> Result<Config> {
        if let Some(text) = file {
            std::fs::write(dir.join(FILE_NAME), text).unwrap();
        }
        let env: Vec<(String, String)> = env.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        load(None, dir, &env, Overrides { host: None, port: None })
    }

    fn error_of(result: Result<Config>) -> String {
        crate::error::render(&result.unwrap_err())
    }

    #[test]
    fn secrets_backends_and_their_errors() {
        let dir = tempfile::tempdir().unwrap();
        let text = "[secrets]\ncache_ttl = \"30s\"\n\n[[secrets.backends]]\nkind = \"file\"\nvariables_file = \"v.yaml\"\n\n[[secrets.backends]]\nkind = \"aws\"\nregion = \"eu-west-1\"\n";
        let config = load_in(dir.path(), Some(text), &[]).unwrap();
        assert_eq!(config.secrets_cache_ttl, Duration::from_secs(30));
        assert_eq!(config.secrets_base, dir.path());
        assert_eq!(config.secrets_backends.len(), 2);
        assert!(
            matches!(&config.secrets_backends[1], updraft_secrets::BackendConfig::Aws(aws) if aws.region.as_deref() == Some("eu-west-1"))
        );
        let default = load_in(tempfile::tempdir().unwrap().path(), None, &[]).unwrap();
        assert_eq!((default.secrets_backends.len(), default.secrets_cache_ttl), (0, updraft_secrets::DEFAULT_TTL));

        let typo = "[secrets]\ncache_ttl = \"30s\"\n\n[[secrets.backends]]\nkind = \"file\"\n\n[[secrets.backends]]\nkind = \"file\"\nvariable_file = \"v.yaml\"\n";
        assert_eq!(
            error_of(load_in(dir.path(), Some(typo), &[])),
            "error: updraft.toml:9:1: unknown field `variable_file`, expected `variables_file` or `connections_file`; did you mean `variables_file`?"
        );
        let unknown = "[[secrets.backends]]\nkind = \"keepass\"\n";
        assert_eq!(
            error_of(load_in(dir.path(), Some(unknown), &[])),
            "error: updraft.toml:2:1: unknown variant `keepass`, expected one of `file`, `vault`, `gcp`, `aws`"
        );
    }

    #[test]
    fn oidc_settings_with_the_secret_from_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let text = "[webserver]\nhost = \"0.0.0.0\"\nport = 9000\n\n[oidc]\nissuer = \"https://idp.example.com\"\nclient_id = \"updraft\"\ncreate_users = true\nteams_claim = \"groups\"\n";
        let missing = error_of(load_in(dir.path(), Some(text), &[]));
        assert!(missing.contains("`[oidc]` has an issuer but no `client_secret`"), "{missing}");
        let config = load_in(dir.path(), Some(text), &[("UPDRAFT_OIDC__CLIENT_SECRET", "s3cret")]).unwrap();
        let oidc = config.oidc.unwrap();
        assert_eq!(oidc.client_secret, "s3cret");
        assert_eq!(oidc.redirect_url, "http://0.0.0.0:9000/login/oidc/callback");
        assert_eq!((oidc.default_role.as_str(), oidc.create_users), ("viewer", true));
        assert_eq!(oidc.scopes, ["openid", "profile", "email"]);
        assert!(!format!("{oidc:?}").contains("s3cret"), "never in debug output");
        let env = [("UPDRAFT_OIDC__CLIENT_SECRET", "s3cret"), ("UPDRAFT_OIDC__DEFAULT_ROLE", "root")];
        let bad_role = error_of(load_in(dir.path(), Some(text), &env));
        assert!(bad_role.contains("`oidc.default_role` `root` is not a role"), "{bad_role}");
        assert!(load_in(tempfile::tempdir().unwrap().path(), None, &[]).unwrap().oidc.is_none());
    }

    #[test]
    fn defaults_without_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = load_in(dir.path(), None, &[]).unwrap();
        assert_eq!(config.dags_folder, dir.path().join("dags"));
        assert_eq!(config.state_folder, dir.path().join(".updraft"));
        assert_eq!(config.database_url, format!("sqlite://{}", dir.path().join(".updraft/updraft.db").display()));
        assert_eq!((config.host.as_str(), config.port), ("127.0.0.1", 8080));
        assert!(!config.dags_are_paused_at_creation);
    }

    #[test]
    fn file_in_a_parent_with_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sub/deeper")).unwrap();
        std::fs::write(
            dir.path().join(FILE_NAME),
            "[core]\ndags_folder = \"pipelines\"\nstate_folder = \"state\"\n[database]\nurl = \"sqlite://state/meta.db\"\n[webserver]\nport = 9000\n[runner]\nkill_grace = \"10s\"\n",
        )
        .unwrap();
        let config = load_in(&dir.path().join("sub/deeper"), None, &[]).unwrap();
        assert_eq!(config.dags_folder, dir.path().join("pipelines"));
        assert_eq!(config.state_folder, dir.path().join("state"));
        assert_eq!(
            (config.database_url.as_str(), config.database_base.as_path()),
            ("sqlite://state/meta.db", dir.path())
        );
        assert_eq!(config.port, 9000);
        assert_eq!(config.kill_grace, Duration::from_secs(10));
    }

    #[test]
    fn environment_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let config = load_in(
            dir.path(),
            Some("[webserver]\nport = 9000\n"),
            &[
                ("UPDRAFT_WEBSERVER__PORT", "9090"),
                ("UPDRAFT_DAGS_FOLDER", "/srv/dags"),
                ("UPDRAFT_CORE__DAGS_FOLDER", "ignored"),
                ("UPDRAFT_DAG_ID", "not a setting"),
            ],
        )
        .unwrap();
        assert_eq!(config.port, 9090);
        assert_eq!(config.dags_folder, PathBuf::from("/srv/dags"));
        let config = load_in(dir.path(), None, &[("UPDRAFT_WORKER__QUEUES", "default, gpu")]).unwrap();
        assert_eq!(config.worker_queues, vec!["default", "gpu"]);
    }

    #[test]
    fn errors_name_the_place() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            error_of(load_in(dir.path(), Some("[core]\ndag_folder = \"x\"\n"), &[])),
            "error: updraft.toml:2:1: unknown field `dag_folder`, expected one of `dags_folder`, `state_folder`, `dags_are_paused_at_creation`, `dag_dir_list_interval`, `fernet_key`; did you mean `dags_folder`?"
        );
        assert_eq!(
            error_of(load_in(dir.path(), Some("[webserver]\nport = \"high\"\n"), &[])),
            "error: updraft.toml:2:8: invalid type: string \"high\", expected u16"
        );
        assert_eq!(
            error_of(load_in(dir.path(), Some("[runner]\nkill_grace = \"soon\"\n"), &[])),
            "error: updraft.toml:2:14: invalid duration `soon`: expected a duration like `30s`, `5m`, `1h30m`, `2d` or whole seconds"
        );
        std::fs::remove_file(dir.path().join(FILE_NAME)).unwrap();
        assert_eq!(
            error_of(load_in(dir.path(), None, &[("UPDRAFT_WEBSERVER__PORTS", "1")])),
            "error: environment variable `UPDRAFT_WEBSERVER__PORTS` names unknown setting `webserver.ports`\n\nhint: settings are `UPDRAFT_<SECTION>__<KEY>`, e.g. `UPDRAFT_WEBSERVER__PORT=9090`"
        );
        assert_eq!(
            error_of(load_in(dir.path(), None, &[("UPDRAFT_WEBSERVER__PORT", "99999")])),
            "error: environment variable `UPDRAFT_WEBSERVER__PORT`: invalid value: integer `99999`, expected u16"
        );
    }

    #[test]
    fn notifiers_digest_and_clean_up_settings_and_their_errors() {
        let dir = tempfile::tempdir().unwrap();
        let slack = "[notifiers.team]\nkind = \"slack\"\nwebhook_url = \"https://hooks.slack.com/services/${HOOK}\"\n";
        let config = load_in(
            dir.path(),
            Some(&format!("{slack}\n[digest]\nnotifier = \"team\"\nevery = \"5m\"\n")),
            &[("HOOK", "T/B/X")],
        )
        .unwrap();
        assert!(
            matches!(&config.notifiers["team"], updraft_ops::NotifierConfig::Slack(s) if s.webhook_url == "https://hooks.slack.com/services/T/B/X")
        );
        let digest = config.digest.unwrap();
        assert_eq!(
            (digest.every, digest.late_after, digest.heartbeat_timeout),
            (Duration::from_secs(300), Duration::from_secs(1800), config.heartbeat_timeout)
        );
        assert!(config.maintenance.enabled, "the clean-up is on by default");

        assert_eq!(
            error_of(load_in(dir.path(), Some(&format!("{slack}\n[digest]\nnotifier = \"ops\"\n")), &[("HOOK", "x")])),
            "error: `digest.notifier` names `ops`, which is not configured\n\nhint: configured notifiers: team"
        );
        assert_eq!(
            error_of(load_in(dir.path(), Some("[maintenance]\nretention = \"6h\"\n"), &[])),
            "error: `maintenance.retention` is 6h: the clean-up would delete runs less than a day old\n\nhint: keep at least `1d` (the default is `180d`), or set `maintenance.clean = false`"
        );
        let email = "[notifiers.oncall]\nkind = \"email\"\nsmtp_host = \"smtp.example.com\"\nfrom = \"updraft@example.com\"\nto = []\n";
        assert_eq!(
            error_of(load_in(dir.path(), Some(email), &[])),
            "error: updraft.toml:5:1: notifier `oncall`: `to` must name at least one address"
        );
        let half = email.replace("to = []", "to = [\"a@example.com\"]\nusername = \"u\"");
        assert_eq!(
            error_of(load_in(dir.path(), Some(&half), &[])),
            "error: updraft.toml:6:1: notifier `oncall`: `username` and `password` go together"
        );
    }

    #[test]
    fn executor_kind_and_pod_lifetimes() {
        let dir = tempfile::tempdir().unwrap();
        let config = load_in(dir.path(), None, &[]).unwrap();
        assert_eq!(config.executor, updraft_core::kubernetes::Executor::Local);
        assert_eq!(config.kubernetes.keep_failed, Duration::from_secs(3600));
        let text = "[executor]\nkind = \"kubernetes\"\n[kubernetes]\nkeep_failed_pods = \"0s\"\nimage_pull_grace = \"2m\"\nunschedulable_grace = \"1h\"\n";
        let config = load_in(dir.path(), Some(text), &[]).unwrap();
        assert_eq!(config.executor, updraft_core::kubernetes::Executor::Kubernetes);
        assert_eq!(config.kubernetes.keep_failed, Duration::ZERO);
        assert_eq!(
            (config.kubernetes.graces.image_pull, config.kubernetes.graces.unschedulable),
            (Duration::from_secs(120), Duration::from_secs(3600))
        );
        let config = load_in(dir.path(), None, &[("UPDRAFT_EXECUTOR__KIND", "kubernetes")]).unwrap();
        assert_eq!(config.executor, updraft_core::kubernetes::Executor::Kubernetes);
        let error = error_of(load_in(dir.path(), Some("[executor]\nkind = \"kubernetis\"\n"), &[]));
        assert!(error.starts_with("error: updraft.toml:2:8: unknown variant `kubernetis`"), "{error}");
    }
}
