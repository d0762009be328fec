//! Recording who did what. An entry is written after the change it describes
//! succeeded; if the write fails, the change stands and the failure is logged.

use updraft_store::AuditEntry;

use crate::AppState;

pub async fn record(state: &AppState, actor: &str, action: &str, target: &str, detail: Option<String>) {
    let entry = AuditEntry { actor: actor.to_string(), action: action.to_string(), target: target.to_string(), detail };
    if let Err(error) = state.store.audit(&entry, state.clock.now()).await {
        tracing::error!(error = %updraft_core::errors::chain(&error), ?entry, "cannot write the audit log");
    }
}
