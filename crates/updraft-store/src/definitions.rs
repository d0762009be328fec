//! Parsed DAG definitions by version, loaded from the store on first use. Runs are
//! pinned to versions, so a version's definition never changes once stored.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use updraft_core::Dag;
use updraft_core::plan::DagVersion;

use crate::MetadataStore;
use crate::error::{Result, StoreError};

#[derive(Default)]
pub struct DefinitionCache {
    dags: Mutex<HashMap<(String, DagVersion), Arc<Dag>>>,
}

impl DefinitionCache {
    pub fn insert(&self, version: DagVersion, dag: Arc<Dag>) {
        let key = (dag.dag_id().to_string(), version);
        self.dags.lock().expect("cache lock").insert(key, dag);
    }

    /// The definition if it is loaded already; never touches the store.
    pub fn cached(&self, dag_id: &str, version: &DagVersion) -> Option<Arc<Dag>> {
        self.dags.lock().expect("cache lock").get(&(dag_id.to_string(), version.clone())).cloned()
    }

    pub async fn get(&self, store: &dyn MetadataStore, dag_id: &str, version: &DagVersion) -> Result<Arc<Dag>> {
        let key = (dag_id.to_string(), version.clone());
        if let Some(dag) = self.dags.lock().expect("cache lock").get(&key) {
            return Ok(dag.clone());
        }
        let definition = store
            .dag_definition(dag_id, &version.0)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("DAG `{dag_id}` has no stored version `{version}`")))?;
        let dag = Arc::new(
            Dag::from_json(&definition)
                .map_err(|error| StoreError::Corrupt(format!("DAG `{dag_id}` version `{version}`: {error}")))?,
        );
        self.dags.lock().expect("cache lock").insert(key, dag.clone());
        Ok(dag)
    }
}
