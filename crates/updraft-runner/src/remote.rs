//! A worker's work from the API server over HTTP (the worker protocol of
//! `updraft-protocol`): no database credentials on the worker's machine.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use updraft_core::Dag;
use updraft_core::plan::DagVersion;
use updraft_protocol as protocol;
use updraft_store::{
    ChangeWatcher, Claimant, Claimed, DefinitionCache, FinishedAttempt, Heartbeat, LogChunk, NewProcess, Scope,
};

use crate::source::{SourceError, SourceResult, WorkSource};

/// How long an ordinary request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub struct ApiSource {
    base: String,
    token: String,
    client: reqwest::Client,
    definitions: Arc<DefinitionCache>,
    /// Set by [`WorkSource::register`]; names this worker in request paths.
    process_id: std::sync::OnceLock<i64>,
}

impl ApiSource {
    /// `base`: the API server's URL (`http://host:8080`); `token`: the shared worker
    /// token the server expects.
    pub fn new(base: &str, token: &str, definitions: Arc<DefinitionCache>) -> SourceResult<ApiSource> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|error| SourceError::Unreachable { url: base.to_string(), source: Box::new(error) })?;
        Ok(ApiSource {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            client,
            definitions,
            process_id: std::sync::OnceLock::new(),
        })
    }

    /// `/api/v1/workers/{id}{tail}` for this worker.
    fn worker_path(&self, tail: &str) -> String {
        format!("{}/{}{tail}", protocol::WORKERS, self.process_id.get().copied().unwrap_or_default())
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + Sync)>,
        timeout: Duration,
    ) -> SourceResult<Option<T>> {
        let url = format!("{}{path}", self.base);
        let mut request = self.client.request(method, &url).bearer_auth(&self.token).timeout(timeout);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|error| SourceError::Unreachable { url: url.clone(), source: Box::new(error) })?;
        let status = response.status();
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let text = response
            .text()
            .await
            .map_err(|error| SourceError::Unreachable { url: url.clone(), source: Box::new(error) })?;
        if !status.is_success() {
            return Err(SourceError::Refused { url, status: status.as_u16(), message: error_message(&text) });
        }
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|error| SourceError::Unreadable { url, detail: format!("{error} in `{}`", truncate(&text)) })
    }

    async fn post<T: DeserializeOwned>(&self, path: &str, body: &(impl Serialize + Sync)) -> SourceResult<T> {
        let url = format!("{}{path}", self.base);
        self.call(Method::POST, path, Some(body), REQUEST_TIMEOUT)
            .await?
            .ok_or_else(|| SourceError::Unreadable { url, detail: "an empty answer".to_string() })
    }

    async fn post_empty(&self, path: &str, body: Option<&(impl Serialize + Sync)>) -> SourceResult<()> {
        self.call::<serde_json::Value>(Method::POST, path, body, REQUEST_TIMEOUT).await?;
        Ok(())
    }
}

/// The `detail` of a problem document (RFC 9457), else the body itself.
fn error_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|value| value.pointer("/detail").and_then(|message| message.as_str().map(str::to_string)))
        .unwrap_or_else(|| truncate(body))
}

fn truncate(text: &str) -> String {
    match text.char_indices().nth(200) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

#[async_trait]
impl WorkSource for ApiSource {
    fn location(&self) -> String {
        self.base.clone()
    }

    async fn register(&self, process: &NewProcess) -> SourceResult<i64> {
        let request = protocol::RegisterWorker {
            hostname: process.hostname.clone(),
            pid: process.pid,
            pid_start: process.pid_start,
        };
        let registered: protocol::Registered = self.post(protocol::WORKERS, &request).await?;
        let _ = self.process_id.set(registered.process_id);
        Ok(registered.process_id)
    }

    async fn deregister(&self, process_id: i64) -> SourceResult<()> {
        self.post_empty(&format!("{}/{process_id}/stop", protocol::WORKERS), None::<&()>).await
    }

    async fn claim(
        &self,
        _scope: Scope,
        claimant: &Claimant,
        limit: u32,
        wait: Duration,
    ) -> SourceResult<Vec<Claimed>> {
        let wait_ms = (wait.as_millis() as u64).min(protocol::MAX_CLAIM_WAIT_MS);
        let request = protocol::ClaimRequest {
            hostname: claimant.hostname.clone(),
            queues: claimant.queues.clone(),
            limit,
            wait_ms,
        };
        let path = format!("{}/{}/claim", protocol::WORKERS, claimant.process_id);
        let timeout = REQUEST_TIMEOUT + Duration::from_millis(wait_ms);
        Ok(self.call(Method::POST, &path, Some(&request), timeout).await?.unwrap_or_default())
    }

    fn long_polls(&self) -> bool {
        true
    }

    async fn watcher(&self) -> SourceResult<Option<Box<dyn ChangeWatcher>>> {
        Ok(None)
    }

    async fn record_process(
        &self,
        ti_pk: i64,
        try_number: u32,
        pid: u32,
        pid_start: Option<u64>,
        log_path: &str,
    ) -> SourceResult<()> {
        let request = protocol::AttemptStarted { ti_pk, try_number, pid, pid_start, log_path: log_path.to_string() };
        self.post_empty(&self.worker_path("/attempts/process"), Some(&request)).await
    }

    async fn finish(&self, ends: &[FinishedAttempt], logs: &[LogChunk], _actor: &str) -> SourceResult<Vec<bool>> {
        // The server names the actor after the worker in the path.
        let request = protocol::FinishRequest { ends: ends.to_vec(), logs: logs.to_vec() };
        let answer: protocol::FinishAnswer = self.post(&self.worker_path("/attempts/finish"), &request).await?;
        Ok(answer.recorded)
    }

    fn ships_logs(&self) -> bool {
        true
    }

    async fn append_logs(&self, chunks: &[LogChunk]) -> SourceResult<()> {
        self.post_empty(&self.worker_path("/logs"), Some(&chunks)).await
    }

    async fn heartbeat(&self, process_id: i64, leases: &[(i64, u32)]) -> SourceResult<Heartbeat> {
        let request = protocol::HeartbeatRequest { leases: leases.to_vec() };
        self.post(&format!("{}/{process_id}/heartbeat", protocol::WORKERS), &request).await
    }

    async fn definition(&self, dag_id: &str, version: &DagVersion) -> SourceResult<Arc<Dag>> {
        if let Some(dag) = self.definitions.cached(dag_id, version) {
            return Ok(dag);
        }
        let path = protocol::definition_path(dag_id, &version.0);
        let url = format!("{}{path}", self.base);
        let definition: serde_json::Value = self
            .call(Method::GET, &path, None::<&()>, REQUEST_TIMEOUT)
            .await?
            .ok_or_else(|| SourceError::Unreadable { url: url.clone(), detail: "an empty answer".to_string() })?;
        let dag = Dag::from_json(&definition.to_string())
            .map_err(|error| SourceError::Unreadable { url, detail: format!("DAG `{dag_id}`: {error}") })?;
        let dag = Arc::new(dag);
        self.definitions.insert(version.clone(), dag.clone());
        Ok(dag)
    }

    async fn outputs(&self, dag_id: &str, run_id: &str) -> SourceResult<std::collections::BTreeMap<String, String>> {
        let path = protocol::outputs_path(dag_id, run_id);
        let url = format!("{}{path}", self.base);
        self.call(Method::GET, &path, None::<&()>, REQUEST_TIMEOUT)
            .await?
            .ok_or_else(|| SourceError::Unreadable { url, detail: "an empty answer".to_string() })
    }

    async fn secrets(&self) -> SourceResult<updraft_store::Secrets> {
        let path = format!("{}/secrets", protocol::WORKERS);
        let url = format!("{}{path}", self.base);
        self.call(Method::GET, &path, None::<&()>, REQUEST_TIMEOUT)
            .await?
            .ok_or_else(|| SourceError::Unreadable { url, detail: "an empty answer".to_string() })
    }
}
