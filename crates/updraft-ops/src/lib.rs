//! Background operations beside scheduling: alerts to Slack, webhooks and email
//! (`alerts`), deadlines (`deadlines`), the periodic digest (`digest`) and the
//! scheduled metadata clean-up (`maintenance`).
//!
//! Every job keeps its progress in the store (`ops_state`, `alert_outbox`), so
//! any number of schedulers (and the API server) may run them: what one did, the
//! others see, and no message goes twice. None of them runs inside a scheduling
//! pass, and none waits on a notifier while holding the store.

pub mod alerts;
pub mod deadlines;
pub mod digest;
pub mod maintenance;
pub mod message;
pub mod notifier;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use tokio::sync::watch;
use updraft_core::clock::Clock;
use updraft_core::errors::chain;
use updraft_store::{DefinitionCache, Store};

pub use digest::DigestConfig;
pub use maintenance::{Cleaned, MaintenanceConfig};
pub use message::{Notice, NoticeKind};
pub use notifier::{NotifierConfig, Notifiers};

/// How often alerts are looked for and sent.
const QUICK: Duration = Duration::from_secs(1);
/// How often deadlines and the digest are looked at.
const SLOW: SignedDuration = SignedDuration::from_secs(10);
/// How often the clean-up's turn is checked.
const MAINTENANCE_CHECK: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Default)]
pub struct OpsConfig {
    pub notifiers: BTreeMap<String, NotifierConfig>,
    /// The UI's address as people reach it, for links in messages.
    pub ui_url: String,
    pub digest: Option<DigestConfig>,
    pub maintenance: MaintenanceConfig,
    pub logs_folder: PathBuf,
}

/// The jobs of one process.
pub struct Ops {
    producer: alerts::Producer,
    sender: alerts::Sender,
    deadlines: deadlines::Deadlines,
    digest: Option<digest::Digest>,
    maintenance: Arc<maintenance::Maintenance>,
    clock: Arc<dyn Clock>,
    next_slow: Option<Timestamp>,
}

/// What one [`Ops::step`] did.
#[derive(Debug, Default)]
pub struct Step {
    pub queued: usize,
    pub sent: alerts::Sent,
    pub misses: Vec<deadlines::Miss>,
    pub digest: Option<Notice>,
}

impl Ops {
    pub fn new(store: Store, definitions: Arc<DefinitionCache>, config: OpsConfig, clock: Arc<dyn Clock>) -> Ops {
        let notifiers = Arc::new(Notifiers::new(config.notifiers));
        Ops {
            producer: alerts::Producer::new(store.clone(), definitions.clone(), notifiers.clone(), &config.ui_url),
            sender: alerts::Sender::new(store.clone(), notifiers),
            deadlines: deadlines::Deadlines::new(store.clone(), definitions, &config.ui_url),
            digest: config.digest.map(|digest| digest::Digest::new(store.clone(), digest)),
            maintenance: Arc::new(maintenance::Maintenance::new(store, config.maintenance, config.logs_folder)),
            clock,
            next_slow: None,
        }
    }

    /// One round: new alerts queued, deadlines and the digest when their time
    /// comes, due messages sent. Errors are logged; the next round tries again.
    pub async fn step(&mut self) -> Step {
        let now = self.clock.now();
        let mut step = Step::default();
        match self.producer.produce(now).await {
            Ok(queued) => step.queued = queued,
            Err(error) => tracing::warn!(error = %chain(&error), "cannot read state changes for alerts"),
        }
        if self.next_slow.is_none_or(|at| now >= at) {
            self.next_slow = Some(now + SLOW);
            match self.deadlines.check(now).await {
                Ok(misses) => step.misses = misses,
                Err(error) => tracing::warn!(error = %chain(&error), "cannot check deadlines"),
            }
            if let Some(digest) = &self.digest {
                match digest.tick(now).await {
                    Ok(notice) => step.digest = notice,
                    Err(error) => tracing::warn!(error = %chain(&error), "cannot make the digest"),
                }
            }
        }
        match self.sender.send_due(now).await {
            Ok(sent) => step.sent = sent,
            Err(error) => tracing::warn!(error = %chain(&error), "cannot send alerts"),
        }
        step
    }

    /// Runs the jobs until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let maintenance = self.maintenance.clone();
        let clock = self.clock.clone();
        let mut stop_maintenance = shutdown.clone();
        let cleaner = tokio::spawn(async move {
            loop {
                if let Err(error) = maintenance.tick(clock.now()).await {
                    tracing::warn!(error = %chain(&error), "metadata clean-up failed; trying again later");
                }
                tokio::select! {
                    () = tokio::time::sleep(MAINTENANCE_CHECK) => {}
                    _ = stop_maintenance.changed() => return,
                }
            }
        });
        loop {
            if *shutdown.borrow() {
                break;
            }
            self.step().await;
            tokio::select! {
                () = tokio::time::sleep(QUICK) => {}
                _ = shutdown.changed() => {}
            }
        }
        // A clean-up between batches stops with the process; the next start resumes.
        cleaner.abort();
    }
}
