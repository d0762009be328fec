//! What every command starts from: the configuration, the working folder, a clock,
//! and ways to reach the DAGs folder and the store with errors people can act on.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use updraft_core::clock::{Clock, SystemClock};
use updraft_dagfile::{DagFile, DagLoader, Folder, FolderError, LoadedDag};
use updraft_store::{DagUpsert, Store};

use crate::config::Config;
use crate::error::user_error;

pub struct Ctx {
    pub config: Config,
    pub cwd: PathBuf,
    pub clock: Arc<dyn Clock>,
}

impl Ctx {
    pub fn new(config: Config, cwd: PathBuf) -> Ctx {
        Ctx { config, cwd, clock: Arc::new(SystemClock) }
    }

    /// Opens the store, creating or upgrading its schema.
    /// The key for variables and connections, if configured; a bad key is an error
    /// now rather than when a task needs it.
    pub fn cipher(&self) -> Result<Option<std::sync::Arc<updraft_auth::Cipher>>> {
        match self.config.fernet_key.as_deref() {
            None => Ok(None),
            Some(keys) => updraft_auth::Cipher::from_keys(keys)
                .map(|cipher| Some(std::sync::Arc::new(cipher)))
                .map_err(|error| crate::error::user_error(error.to_string(), None)),
        }
    }

    /// The configured secrets backends; a backend that cannot be set up (a missing
    /// key file, no credentials) is an error now rather than when a task needs it.
    pub fn backends(&self) -> Result<Arc<updraft_secrets::Backends>> {
        let config = &self.config;
        updraft_secrets::Backends::new(&config.secrets_backends, &config.secrets_base, config.secrets_cache_ttl)
            .map(Arc::new)
            .map_err(|error| user_error(error.to_string(), Some("check `[[secrets.backends]]` in updraft.toml")))
    }

    pub async fn store(&self) -> Result<Store> {
        let options = updraft_store::OpenOptions {
            base: self.config.database_base.clone(),
            pool_size: self.config.database_pool_size,
        };
        updraft_store::open_with(&self.config.database_url, &options).await.map_err(|error| {
            let hint = match &error {
                updraft_store::StoreError::CreateFolder { .. } | updraft_store::StoreError::Open { .. } => Some(
                    "check that the state folder is writable, or set `core.state_folder` / `database.url` in updraft.toml",
                ),
                _ => None,
            };
            anyhow::Error::new(error).context(user_error_message("cannot open the metadata store", hint))
        })
    }

    pub fn dag_loader(&self) -> DagLoader {
        DagLoader::new(self.config.dags_folder.clone(), Some(self.cwd.clone()))
            .with_notifiers(self.config.notifiers.keys().cloned().collect())
    }

    /// Parses the DAGs folder; a missing folder is an error with a hint.
    pub fn load_folder(&self) -> Result<Folder> {
        self.dag_loader().load().map_err(|error| match error {
            FolderError::Missing(path) => user_error(
                format!("DAGs folder `{path}` does not exist"),
                Some("create it, or point `core.dags_folder` in updraft.toml (or UPDRAFT_DAGS_FOLDER) at your DAGs"),
            ),
            other => anyhow::Error::new(other),
        })
    }

    /// The DAG with this id, or an error naming it: unknown (with a suggestion), or
    /// present but broken (with the file's problems).
    pub fn find_dag<'a>(&self, folder: &'a Folder, dag_id: &str) -> Result<(&'a LoadedDag, &'a DagFile)> {
        if let Some(found) = folder.find(dag_id) {
            return Ok(found);
        }
        // A file that declares this id but does not validate.
        for file in &folder.files {
            let declares = file.diagnostics.iter().any(|d| d.message.contains(&format!("`{dag_id}`")))
                || std::fs::read_to_string(&file.path).is_ok_and(|text| declares_dag(&text, dag_id));
            if file.dag.is_none() && declares {
                let problems: Vec<String> = file.diagnostics.iter().map(ToString::to_string).collect();
                return Err(user_error(
                    format!("DAG `{dag_id}` in `{}` is not valid:\n{}", file.display_path, problems.join("\n")),
                    Some("fix the file; `updraft dags validate` lists every problem"),
                ));
            }
        }
        let ids: Vec<&str> = folder.dags().map(|(loaded, _)| loaded.dag.dag_id().as_str()).collect();
        let hint = match updraft_core::suggest::did_you_mean(dag_id, ids.iter().copied()) {
            Some(suggestion) => format!("did you mean `{suggestion}`? `updraft dags list` shows every DAG"),
            None => "`updraft dags list` shows every DAG".to_string(),
        };
        Err(user_error(
            format!("DAG `{dag_id}` not found in `{}`", display_path(&self.config.dags_folder, &self.cwd)),
            Some(&hint),
        ))
    }

    /// Records a DAG in the store (its row and version) before acting on it.
    pub async fn record_dag(&self, store: &Store, loaded: &LoadedDag) -> Result<()> {
        let upsert = DagUpsert {
            dag: loaded.dag.clone(),
            version: loaded.version.clone(),
            paused_if_new: self.config.dags_are_paused_at_creation,
            source: Some(loaded.source.clone()),
        };
        store.upsert_dags(&[upsert], self.clock.now()).await?;
        Ok(())
    }
}

fn declares_dag(text: &str, dag_id: &str) -> bool {
    text.lines().any(|line| {
        line.strip_prefix("dag:")
            .is_some_and(|rest| rest.split('#').next().unwrap_or("").trim().trim_matches(['"', '\'']) == dag_id)
    })
}

fn user_error_message(message: &str, hint: Option<&str>) -> crate::error::UserError {
    crate::error::UserError { message: message.to_string(), hint: hint.map(str::to_string) }
}

pub fn display_path(path: &std::path::Path, cwd: &std::path::Path) -> String {
    let shown = path.strip_prefix(cwd).unwrap_or(path).display().to_string();
    if shown.is_empty() { ".".to_string() } else { shown }
}
