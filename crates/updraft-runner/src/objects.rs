//! `copy`, `sync` and `sensor` tasks, run by the runner itself over the
//! `object_store` crate: local folders, S3 and S3-compatible stores, GCS and Azure.
//!
//! A location is a local path (relative to the DAG's folder) or a URL (`s3://`,
//! `gs://`, `az://`, `abfss://`, `file://`); one ending with `/`, or a local folder,
//! is a prefix. Credentials come from the task's connections in Airflow's shapes
//! (see [`options`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use tokio::sync::mpsc;
use updraft_core::dag::{SensorTask, TransferTask};
use updraft_store::ConnectionValues;

/// Objects named in an output at most.
const LISTED: usize = 100;

/// Where objects are: a store and a path in it, which is a prefix or one object.
struct Location {
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    prefix: bool,
    /// As the user wrote it, for messages.
    shown: String,
}

impl Location {
    /// The object `relative` (a name under a prefix) at this location.
    fn child(&self, relative: &str) -> Result<ObjectPath, String> {
        let joined = if self.path.as_ref().is_empty() {
            relative.to_string()
        } else {
            format!("{}/{relative}", self.path.as_ref())
        };
        ObjectPath::parse(&joined).map_err(|error| format!("`{joined}`: {error}"))
    }

    /// One object's bytes, whole; errors name `what`.
    async fn read(&self, path: &ObjectPath, what: &str) -> Result<bytes::Bytes, String> {
        let failed = |error: object_store::Error| format!("cannot read {what}: {error}");
        self.store.get(path).await.map_err(failed)?.bytes().await.map_err(failed)
    }

    /// Objects under the prefix, by name relative to it.
    async fn list(&self) -> Result<BTreeMap<String, ObjectMeta>, String> {
        let prefix = (!self.path.as_ref().is_empty()).then_some(&self.path);
        let mut listing = self.store.list(prefix);
        let mut found = BTreeMap::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|error| format!("cannot list `{}`: {error}", self.shown))?;
            let name = meta.location.as_ref();
            let relative = match prefix {
                Some(prefix) => name.strip_prefix(prefix.as_ref()).unwrap_or(name).trim_start_matches('/'),
                None => name,
            };
            found.insert(relative.to_string(), meta);
        }
        Ok(found)
    }
}

/// Opens a location; `writing` creates a local target's folders.
fn locate(
    text: &str,
    connection: Option<&ConnectionValues>,
    dag_folder: &Path,
    writing: bool,
) -> Result<Location, String> {
    let shown = text.to_string();
    let prefix = text.ends_with('/');
    if text.contains("://") && !text.starts_with("file://") {
        let url = reqwest::Url::parse(text).map_err(|error| format!("`{text}` is not a URL: {error}"))?;
        let (store, path) = object_store::parse_url_opts(&url, options(url.scheme(), connection)?)
            .map_err(|error| format!("`{text}`: {error}"))?;
        return Ok(Location { store: Arc::from(store), path, prefix, shown });
    }
    let local = text.strip_prefix("file://").map_or_else(|| dag_folder.join(text), std::path::PathBuf::from);
    let folder_like = prefix || local.is_dir();
    let (folder, name) = if folder_like {
        (local.clone(), String::new())
    } else {
        let name = local.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
        (local.parent().map(Path::to_path_buf).unwrap_or_default(), name)
    };
    if writing {
        std::fs::create_dir_all(&folder).map_err(|error| format!("cannot create `{}`: {error}", folder.display()))?;
    } else if !folder.is_dir() {
        // Nothing there yet (a sensor waits for it; a copy finds nothing).
        let path = ObjectPath::parse(&name).map_err(|error| format!("`{text}`: {error}"))?;
        let empty = object_store::memory::InMemory::new();
        return Ok(Location { store: Arc::new(empty), path, prefix: folder_like, shown });
    }
    let store = LocalFileSystem::new_with_prefix(&folder)
        .map_err(|error| format!("`{}`: {error}", folder.display()))?
        .with_automatic_cleanup(false);
    let path = ObjectPath::parse(&name).map_err(|error| format!("`{text}`: {error}"))?;
    Ok(Location { store: Arc::new(store), path, prefix: folder_like, shown })
}

/// `object_store` options from a connection, in Airflow's shapes:
/// - S3 (`aws`): `login` the access key id, `password` the secret key, `extra`
///   `region_name` and `endpoint_url` (an S3-compatible store; `http://` allowed);
/// - GCS (`google_cloud_platform`): `extra` `keyfile_dict` (the service account's
///   JSON) or `key_path`;
/// - Azure (`wasb`, `azure_blob_storage`): `login` the account, `password` its key.
///
/// Any `extra` key starting with `aws_`, `google_` or `azure_` is passed as it is.
fn options(scheme: &str, connection: Option<&ConnectionValues>) -> Result<Vec<(String, String)>, String> {
    let mut options = Vec::new();
    let Some(connection) = connection else { return Ok(options) };
    let extra: serde_json::Map<String, serde_json::Value> = match connection.extra.as_deref() {
        None | Some("") => serde_json::Map::new(),
        Some(text) => {
            serde_json::from_str(text).map_err(|_| "the connection's `extra` is not a JSON object".to_string())?
        }
    };
    let text = |value: &serde_json::Value| match value {
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    let mut put = |key: &str, value: Option<String>| {
        if let Some(value) = value {
            options.push((key.to_string(), value));
        }
    };
    match scheme {
        "s3" | "s3a" => {
            put("aws_access_key_id", connection.login.clone());
            put("aws_secret_access_key", connection.password.clone());
            let region = extra.get("region_name").map(text).unwrap_or_else(|| "us-east-1".to_string());
            put("aws_region", Some(region));
            let endpoint = extra.get("endpoint_url").map(text);
            if endpoint.as_deref().is_some_and(|endpoint| endpoint.starts_with("http://")) {
                put("aws_allow_http", Some("true".to_string()));
            }
            put("aws_endpoint", endpoint);
        }
        "gs" => {
            put("google_service_account_key", extra.get("keyfile_dict").map(text));
            put("google_service_account", extra.get("key_path").map(text));
        }
        "az" | "adl" | "azure" | "abfs" | "abfss" => {
            put("azure_storage_account_name", connection.login.clone());
            put("azure_storage_account_key", connection.password.clone());
        }
        _ => {}
    }
    for (key, value) in &extra {
        if key.starts_with("aws_") || key.starts_with("google_") || key.starts_with("azure_") {
            put(key, Some(text(value)));
        }
    }
    Ok(options)
}

/// `*` any run of characters, `?` one; matched against the name's last part unless
/// the pattern has a `/`.
fn matches(pattern: &str, name: &str) -> bool {
    let name = if pattern.contains('/') { name } else { name.rsplit('/').next().unwrap_or(name) };
    fn go(pattern: &[char], name: &[char]) -> bool {
        match (pattern.first(), name.first()) {
            (None, None) => true,
            (Some('*'), _) => go(&pattern[1..], name) || (!name.is_empty() && go(pattern, &name[1..])),
            (Some('?'), Some(_)) => go(&pattern[1..], &name[1..]),
            (Some(p), Some(n)) if p == n => go(&pattern[1..], &name[1..]),
            _ => false,
        }
    }
    let (pattern, name): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    go(&pattern, &name)
}

/// Copies (`sync: false`) or syncs the objects; the output counts them.
pub async fn transfer(
    task: &TransferTask,
    sync: bool,
    from_text: &str,
    to_text: &str,
    connections: &BTreeMap<String, ConnectionValues>,
    dag_folder: &Path,
    log: mpsc::Sender<String>,
) -> Result<Option<String>, String> {
    let connection = |id: &Option<String>| id.as_ref().and_then(|id| connections.get(id));
    let from = locate(from_text, connection(&task.from_connection), dag_folder, false)?;
    let to = locate(to_text, connection(&task.to_connection), dag_folder, true)?;
    // What to copy: (source path, target path, size, name for messages).
    let mut plan: Vec<(ObjectPath, ObjectPath, u64, String)> = Vec::new();
    let (mut skipped, mut deleted) = (0u64, 0u64);
    if from.prefix {
        let wanted = |name: &str| task.include.as_deref().is_none_or(|pattern| matches(pattern, name));
        let sources: BTreeMap<String, ObjectMeta> =
            from.list().await?.into_iter().filter(|(name, _)| wanted(name)).collect();
        let targets = if sync { to.list().await? } else { BTreeMap::new() };
        for (name, meta) in &sources {
            if let Some(existing) = targets.get(name)
                && existing.size == meta.size
                && existing.last_modified >= meta.last_modified
            {
                skipped += 1;
                continue;
            }
            plan.push((meta.location.clone(), to.child(name)?, meta.size, name.clone()));
        }
        if sync && task.delete {
            for (name, meta) in targets.iter().filter(|(name, _)| wanted(name) && !sources.contains_key(*name)) {
                to.store.delete(&meta.location).await.map_err(|error| format!("cannot delete `{name}`: {error}"))?;
                let _ = log.send(format!("deleted {}{name}", to.shown)).await;
                deleted += 1;
            }
        }
        if sources.is_empty() {
            let _ = log.send(format!("nothing under `{}`", from.shown)).await;
        }
    } else {
        let meta = from.store.head(&from.path).await.map_err(|error| format!("`{}`: {error}", from.shown))?;
        let name = from.path.filename().unwrap_or_default().to_string();
        let target = if to.prefix { to.child(&name)? } else { to.path.clone() };
        plan.push((from.path.clone(), target, meta.size, name));
    }
    let (mut copied, mut bytes) = (0u64, 0u64);
    let mut listed = Vec::new();
    for (source, target, size, name) in plan {
        let data = from.read(&source, &format!("`{name}` from `{}`", from.shown)).await?;
        to.store
            .put(&target, data.into())
            .await
            .map_err(|error| format!("cannot write `{target}` to `{}`: {error}", to.shown))?;
        let _ = log.send(format!("copied {name} ({size} bytes)")).await;
        copied += 1;
        bytes += size;
        if listed.len() < LISTED {
            listed.push(target.to_string());
        }
    }
    let verb = if sync { "synced" } else { "copied" };
    let _ = log
        .send(format!(
            "{verb} {copied} object(s), {bytes} bytes, from `{}` to `{}`{}",
            from.shown,
            to.shown,
            if sync { format!("; {skipped} unchanged, {deleted} deleted") } else { String::new() }
        ))
        .await;
    let mut output = serde_json::json!({ "copied": copied, "bytes": bytes, "objects": listed });
    if sync {
        output["skipped"] = skipped.into();
        output["deleted"] = deleted.into();
    }
    Ok(Some(output.to_string()))
}

/// Writes one object (an `http` task's saved answers).
pub async fn put(
    text: &str,
    connection: Option<&ConnectionValues>,
    dag_folder: &Path,
    data: Vec<u8>,
) -> Result<(), String> {
    let location = locate(text, connection, dag_folder, true)?;
    location.store.put(&location.path, data.into()).await.map_err(|error| format!("cannot write `{text}`: {error}"))?;
    Ok(())
}

/// One object's bytes (a `load` source in object storage).
pub async fn fetch(text: &str, connection: Option<&ConnectionValues>, dag_folder: &Path) -> Result<Vec<u8>, String> {
    let location = locate(text, connection, dag_folder, false)?;
    Ok(location.read(&location.path, &format!("`{text}`")).await?.to_vec())
}

/// What is at the sensor's path now: the names found (empty: nothing yet).
async fn look(location: &Location) -> Result<Vec<String>, String> {
    if location.prefix {
        let mut listing = location.store.list((!location.path.as_ref().is_empty()).then_some(&location.path));
        let mut found = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|error| format!("cannot list `{}`: {error}", location.shown))?;
            found.push(meta.location.to_string());
            if found.len() >= LISTED {
                break;
            }
        }
        return Ok(found);
    }
    match location.store.head(&location.path).await {
        Ok(meta) => Ok(vec![meta.location.to_string()]),
        Err(object_store::Error::NotFound { .. }) => Ok(Vec::new()),
        Err(error) => Err(format!("cannot look at `{}`: {error}", location.shown)),
    }
}

/// How a sensor's look ended.
pub enum Sensed {
    /// Found: the output.
    Found(String),
    /// Not there yet; look again at the next poke (reschedule mode).
    NotYet,
}

/// Looks for the path; in poke mode, again every `poke_interval` until it is there
/// or `sensor.timeout` has passed since `waiting_since`.
pub async fn sense(
    sensor: &SensorTask,
    path: &str,
    connections: &BTreeMap<String, ConnectionValues>,
    dag_folder: &Path,
    waited: Duration,
    log: mpsc::Sender<String>,
) -> Result<Sensed, String> {
    let connection = sensor.connection.as_ref().and_then(|id| connections.get(id));
    let location = locate(path, connection, dag_folder, false)?;
    let timeout = sensor.timeout.to_std();
    let poke = sensor.poke_interval.to_std();
    let started = tokio::time::Instant::now();
    loop {
        let found = look(&location).await?;
        let waited = waited + started.elapsed();
        if !found.is_empty() {
            let _ = log.send(format!("found {} after {:.0?}", found.join(", "), waited)).await;
            return Ok(Sensed::Found(serde_json::json!({ "found": found }).to_string()));
        }
        if waited >= timeout {
            return Err(format!("nothing at `{}` after {}", location.shown, sensor.timeout));
        }
        if sensor.mode == updraft_core::dag::SensorMode::Reschedule {
            let _ = log
                .send(format!("nothing at `{}` yet; looking again in {}", location.shown, sensor.poke_interval))
                .await;
            return Ok(Sensed::NotYet);
        }
        let _ = log.send(format!("nothing at `{}` yet", location.shown)).await;
        tokio::time::sleep(poke.min(timeout.saturating_sub(waited))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_the_name_or_the_path() {
        assert!(matches("*.csv", "2024/03/prices.csv"));
        assert!(!matches("*.csv", "prices.csv.gz"));
        assert!(matches("2024/*/p?ices.*", "2024/03/prices.csv"));
        assert!(!matches("2024/*.csv", "2025/prices.csv"));
    }

    #[test]
    fn connections_become_store_options_in_airflows_shapes() {
        let aws = ConnectionValues {
            conn_type: "aws".into(),
            login: Some("AKIA".into()),
            password: Some("secret".into()),
            extra: Some(r#"{"region_name": "ap-northeast-2", "endpoint_url": "http://127.0.0.1:9000"}"#.into()),
            ..ConnectionValues::default()
        };
        let made = options("s3", Some(&aws)).unwrap();
        let get = |key: &str| made.iter().find(|(name, _)| name == key).map(|(_, value)| value.as_str());
        assert_eq!(get("aws_access_key_id"), Some("AKIA"));
        assert_eq!(get("aws_region"), Some("ap-northeast-2"));
        assert_eq!(get("aws_endpoint"), Some("http://127.0.0.1:9000"));
        assert_eq!(get("aws_allow_http"), Some("true"));
        let broken = ConnectionValues { extra: Some("not json".into()), ..aws };
        assert!(options("s3", Some(&broken)).is_err());
    }
}
