//! The worker protocol: what a remote worker (`updraft worker` with
//! `worker.api_url`) and the API server say to each other. Both ends use these
//! types, so the wire format has one definition. Every request carries
//! `Authorization: Bearer <api.worker_token>`.
//!
//! | request | body | answer |
//! |---|---|---|
//! | `POST /api/v1/workers` | [`RegisterWorker`] | [`Registered`] |
//! | `POST /api/v1/workers/{id}/stop` | none | `204` |
//! | `POST /api/v1/workers/{id}/heartbeat` | [`HeartbeatRequest`] | `Heartbeat` |
//! | `POST /api/v1/workers/{id}/claim` | [`ClaimRequest`] | `[Claimed]` (long poll) |
//! | `POST /api/v1/workers/{id}/attempts/process` | [`AttemptStarted`] | `204` |
//! | `POST /api/v1/workers/{id}/attempts/finish` | [`FinishRequest`] | [`FinishAnswer`] |
//! | `POST /api/v1/workers/{id}/logs` | `[LogChunk]` | `204` |
//! | `GET /api/v1/dags/{dag_id}/versions/{version}` | none | the stored definition (JSON) |
//!
//! This crate never does I/O: it is the contract, not a client or a server.

use serde::{Deserialize, Serialize};
use updraft_store::{FinishedAttempt, LogChunk};

/// The prefix of every worker request.
pub const WORKERS: &str = "/api/v1/workers";

/// Where a worker reads the outputs of a run's tasks (a map of task id to JSON text).
pub fn outputs_path(dag_id: &str, run_id: &str) -> String {
    let query = serde_urlencoded::to_string([("dag_id", dag_id), ("run_id", run_id)]).unwrap_or_default();
    format!("{WORKERS}/outputs?{query}")
}

/// The path of a DAG version's definition.
pub fn definition_path(dag_id: &str, version: &str) -> String {
    format!("/api/v1/dags/{dag_id}/versions/{version}")
}

/// The longest a claim may wait for work at the server.
pub const MAX_CLAIM_WAIT_MS: u64 = 30_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterWorker {
    pub hostname: String,
    pub pid: u32,
    pub pid_start: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    pub process_id: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    /// The attempts the worker runs, each with its fencing token (try number).
    pub leases: Vec<(i64, u32)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRequest {
    pub hostname: String,
    /// `None`: every queue.
    pub queues: Option<Vec<String>>,
    pub limit: u32,
    /// How long the server may hold the request for work to appear (at most
    /// [`MAX_CLAIM_WAIT_MS`]); 0 answers at once.
    pub wait_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptStarted {
    pub ti_pk: i64,
    pub try_number: u32,
    pub pid: u32,
    pub pid_start: Option<u64>,
    /// Where the log is on the worker's machine.
    pub log_path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FinishRequest {
    pub ends: Vec<FinishedAttempt>,
    /// The last pieces of these attempts' logs, stored before the ends.
    #[serde(default)]
    pub logs: Vec<LogChunk>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinishAnswer {
    /// Per end, in order: recorded, or refused because the attempt was replaced.
    pub recorded: Vec<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_wire_form() {
        let claim = ClaimRequest { hostname: "w1".into(), queues: Some(vec!["gpu".into()]), limit: 4, wait_ms: 100 };
        assert_eq!(
            serde_json::to_string(&claim).unwrap(),
            r#"{"hostname":"w1","queues":["gpu"],"limit":4,"wait_ms":100}"#
        );
        let beat = HeartbeatRequest { leases: vec![(7, 2)] };
        assert_eq!(serde_json::to_string(&beat).unwrap(), r#"{"leases":[[7,2]]}"#);
        assert_eq!(definition_path("etl", "abc"), "/api/v1/dags/etl/versions/abc");
    }
}
