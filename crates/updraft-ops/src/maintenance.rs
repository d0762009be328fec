//! Metadata clean-up: old finished runs with everything under them, old audit
//! rows and sent alerts, in short batches so schedulers and runners keep the
//! database between them; then the removed runs' log folders. `updraft db clean`
//! runs it once; the built-in schedule runs it every `every` in one process.

use std::path::Path;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use updraft_store::{CleanReport, OpsValue, Store, StoreError};

/// The last scheduled clean-up: its start (microseconds) and report (JSON).
pub const LAST_CLEAN: &str = "maintenance.clean";
/// Between batches, the database is the others'.
const PAUSE: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaintenanceConfig {
    pub enabled: bool,
    /// Finished runs (and audit rows, sent alerts) older than this go.
    pub retention: Duration,
    pub every: Duration,
    pub batch: u32,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        MaintenanceConfig {
            enabled: true,
            retention: Duration::from_secs(180 * 86_400),
            every: Duration::from_secs(86_400),
            batch: 500,
        }
    }
}

/// What a clean-up removed, with the log folders, and how long it took.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cleaned {
    pub cutoff: Option<Timestamp>,
    #[serde(flatten)]
    pub removed: CleanReport,
    pub log_folders: u64,
    pub batches: u64,
    pub seconds: f64,
}

/// Cleans up everything older than `cutoff` (with `dry_run`, only counts).
pub async fn clean(
    store: &Store,
    cutoff: Timestamp,
    batch: u32,
    dry_run: bool,
    logs_folder: &Path,
) -> Result<Cleaned, StoreError> {
    let started = std::time::Instant::now();
    let mut total = CleanReport::default();
    let mut batches = 0;
    loop {
        // A dry run deletes nothing, so it counts everything at once.
        let size = if dry_run { u32::MAX } else { batch.max(1) };
        let report = store.clean_batch(cutoff, size, dry_run).await?;
        batches += 1;
        let done = report.is_empty() || dry_run;
        total.add(report);
        if done {
            break;
        }
        tokio::time::sleep(PAUSE).await;
    }
    let mut log_folders = 0;
    if !dry_run {
        for (dag_id, run_id) in &total.removed_runs {
            if std::fs::remove_dir_all(logs_folder.join(dag_id).join(run_id)).is_ok() {
                log_folders += 1;
            }
        }
    }
    total.removed_runs.clear();
    Ok(Cleaned { cutoff: Some(cutoff), removed: total, log_folders, batches, seconds: started.elapsed().as_secs_f64() })
}

/// The built-in schedule.
pub struct Maintenance {
    store: Store,
    config: MaintenanceConfig,
    logs_folder: std::path::PathBuf,
}

impl Maintenance {
    pub fn new(store: Store, config: MaintenanceConfig, logs_folder: std::path::PathBuf) -> Maintenance {
        Maintenance { store, config, logs_folder }
    }

    /// Runs the clean-up if it is due and no other process took it; returns its report.
    pub async fn tick(&self, now: Timestamp) -> Result<Option<Cleaned>, StoreError> {
        if !self.config.enabled {
            return Ok(None);
        }
        let every = SignedDuration::try_from(self.config.every).unwrap_or(SignedDuration::MAX);
        let last = self.store.ops_value(LAST_CLEAN).await?;
        if let Some(last) = &last
            && Timestamp::from_microsecond(last.value).is_ok_and(|at| now.duration_since(at) < every)
        {
            return Ok(None);
        }
        // Taking the turn is a compare-and-set: one process cleans.
        let taken =
            OpsValue { value: now.as_microsecond(), detail: last.as_ref().and_then(|last| last.detail.clone()) };
        if !self.store.set_ops_value(LAST_CLEAN, last.as_ref().map(|last| last.value), &taken).await? {
            return Ok(None);
        }
        let cutoff = now - self.config.retention;
        let cleaned = clean(&self.store, cutoff, self.config.batch, false, &self.logs_folder).await?;
        let report = OpsValue { value: taken.value, detail: Some(serde_json::to_string(&cleaned).expect("JSON")) };
        self.store.set_ops_value(LAST_CLEAN, Some(taken.value), &report).await?;
        tracing::info!(
            runs = cleaned.removed.runs,
            task_instances = cleaned.removed.task_instances,
            audit_rows = cleaned.removed.audit_rows,
            alerts = cleaned.removed.alerts,
            log_folders = cleaned.log_folders,
            seconds = cleaned.seconds,
            "metadata clean-up done"
        );
        Ok(Some(cleaned))
    }
}

/// The last scheduled clean-up's report, if one ran.
pub async fn last_report(store: &Store) -> Result<Option<(Timestamp, Cleaned)>, StoreError> {
    let Some(value) = store.ops_value(LAST_CLEAN).await? else { return Ok(None) };
    let Ok(at) = Timestamp::from_microsecond(value.value) else { return Ok(None) };
    Ok(value.detail.and_then(|detail| serde_json::from_str(&detail).ok()).map(|cleaned| (at, cleaned)))
}
