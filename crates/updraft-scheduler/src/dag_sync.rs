//! Keeps the store's `dags` table in step with the DAGs folder: new and changed DAGs
//! are recorded with their versions, DAGs whose file is gone are deactivated, and
//! parse errors are recorded per file. Only differences are written.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use jiff::Timestamp;
use updraft_dagfile::{DagLoader, Folder, FolderError};
use updraft_store::{DagUpsert, DefinitionCache, ImportError, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Folder(#[from] FolderError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    pub dags: usize,
    pub changed: usize,
    pub deactivated: usize,
    pub files_with_errors: usize,
}

pub struct DagSync {
    loader: DagLoader,
    store: Store,
    definitions: Arc<DefinitionCache>,
    paused_at_creation: bool,
    /// What the store holds, as last written or read: dag_id -> (version, fileloc, active).
    known: Option<HashMap<String, (String, String, bool)>>,
    errors: Option<BTreeMap<String, String>>,
}

/// How long a burst of file events (an editor's save is several) settles before
/// the folder is read.
pub const SETTLE: std::time::Duration = std::time::Duration::from_millis(50);

/// Changes to the DAGs folder as they happen (inotify on Linux), so an edit takes
/// effect at once; the periodic full read stays as the fallback.
pub struct FolderWatch {
    _watcher: notify::RecommendedWatcher,
    events: tokio::sync::mpsc::UnboundedReceiver<()>,
}

impl FolderWatch {
    /// Resolves when something in the folder changed. Cancel-safe: an event is
    /// never lost to a `select!` that another branch won.
    pub async fn changed(&mut self) {
        if self.events.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
    }
}

impl DagSync {
    /// Watches the folder; `None` (with a warning) where the system refuses, e.g.
    /// out of inotify watches: then only the periodic read sees changes.
    pub fn watch(&self) -> Option<FolderWatch> {
        use notify::Watcher;
        let (sender, events) = tokio::sync::mpsc::unbounded_channel();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event
                && !event.kind.is_access()
            {
                let _ = sender.send(());
            }
        });
        let watched = watcher.and_then(|mut watcher| {
            watcher.watch(self.loader.root(), notify::RecursiveMode::Recursive)?;
            Ok(watcher)
        });
        match watched {
            Ok(watcher) => Some(FolderWatch { _watcher: watcher, events }),
            Err(error) => {
                tracing::warn!(%error, folder = %self.loader.root().display(), "cannot watch the DAGs folder; reading it periodically");
                None
            }
        }
    }

    pub fn new(
        dags_folder: PathBuf,
        display_base: Option<PathBuf>,
        store: Store,
        definitions: Arc<DefinitionCache>,
        paused_at_creation: bool,
    ) -> DagSync {
        DagSync {
            loader: DagLoader::new(dags_folder, display_base),
            store,
            definitions,
            paused_at_creation,
            known: None,
            errors: None,
        }
    }

    /// Checks DAGs' `alerts` against the notifiers configured.
    pub fn with_notifiers(mut self, notifiers: std::collections::BTreeSet<String>) -> DagSync {
        self.loader = self.loader.with_notifiers(notifiers);
        self
    }

    /// Parses the folder (changed files only, on all cores) and records differences.
    pub async fn sync(&mut self, now: Timestamp) -> Result<(SyncReport, Folder), SyncError> {
        let started = std::time::Instant::now();
        let mut loader = std::mem::replace(&mut self.loader, DagLoader::new(PathBuf::new(), None));
        let (loader, folder) = tokio::task::spawn_blocking(move || {
            let folder = loader.load();
            (loader, folder)
        })
        .await
        .expect("parsing does not panic");
        self.loader = loader;
        let folder = folder?;

        let known = match self.known.take() {
            Some(known) => known,
            None => self
                .store
                .dag_index()
                .await?
                .into_iter()
                .map(|row| (row.dag_id, (row.latest_version, row.fileloc, row.is_active)))
                .collect(),
        };
        let mut report = SyncReport::default();
        let mut upserts = Vec::new();
        let mut present = HashMap::new();
        for (loaded, file) in folder.dags() {
            report.dags += 1;
            let dag_id = loaded.dag.dag_id().to_string();
            self.definitions.insert(loaded.version.clone(), loaded.dag.clone());
            let entry = (loaded.version.0.clone(), file.fileloc.clone(), true);
            if known.get(&dag_id) != Some(&entry) {
                upserts.push(DagUpsert {
                    dag: loaded.dag.clone(),
                    version: loaded.version.clone(),
                    paused_if_new: self.paused_at_creation,
                    source: Some(loaded.source.clone()),
                });
            }
            present.insert(dag_id, entry);
        }
        report.changed = upserts.len();
        self.store.upsert_dags(&upserts, now).await?;
        // A file that is there but does not parse keeps its DAGs on their last good
        // version (its error is shown); only a file that is gone takes them away.
        let broken: std::collections::HashSet<&str> = folder
            .files
            .iter()
            .filter(|file| file.dag.is_none() && !file.diagnostics.is_empty())
            .map(|file| file.fileloc.as_str())
            .collect();
        let gone: Vec<String> = known
            .iter()
            .filter(|(dag_id, (_, fileloc, active))| {
                *active && !present.contains_key(*dag_id) && !broken.contains(fileloc.as_str())
            })
            .map(|(dag_id, _)| dag_id.clone())
            .collect();
        report.deactivated = gone.len();
        self.store.deactivate_dags(&gone, now).await?;
        let mut next_known = known;
        for dag_id in &gone {
            if let Some(entry) = next_known.get_mut(dag_id) {
                entry.2 = false;
            }
        }
        next_known.extend(present);
        self.known = Some(next_known);

        let mut errors: BTreeMap<String, String> = BTreeMap::new();
        for file in &folder.files {
            if !file.diagnostics.is_empty() {
                let message: Vec<String> = file.diagnostics.iter().map(ToString::to_string).collect();
                errors.insert(file.fileloc.clone(), message.join("\n"));
            }
        }
        for diagnostic in &folder.folder_diagnostics {
            errors.insert(diagnostic.path.clone(), diagnostic.to_string());
        }
        report.files_with_errors = errors.len();
        use updraft_metrics::catalog;
        updraft_metrics::gauge(&catalog::DAG_PROCESSING_TOTAL_PARSE_TIME, &[], started.elapsed().as_secs_f64());
        updraft_metrics::gauge(&catalog::DAG_PROCESSING_IMPORT_ERRORS, &[], errors.len() as f64);
        updraft_metrics::gauge(&catalog::DAGBAG_SIZE, &[], report.dags as f64);
        if self.errors.as_ref() != Some(&errors) {
            let rows: Vec<ImportError> = errors
                .iter()
                .map(|(fileloc, message)| ImportError { fileloc: fileloc.clone(), message: message.clone() })
                .collect();
            self.store.replace_import_errors(&rows, now).await?;
            for message in errors.values() {
                tracing::warn!(error = %message, "DAG file has errors");
            }
            self.errors = Some(errors);
        }
        Ok((report, folder))
    }
}
