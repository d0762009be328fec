//! A stand-in for a Kubernetes API server, for end-to-end tests of the
//! Kubernetes executor on a machine where no real one can run (none is packaged
//! here, and no container engine runs). It is not Kubernetes: it speaks the
//! subset of the pods API the executor uses — create, get, list by label,
//! watch (JSON lines, from a resource version, with a field selector and a
//! timeout), follow a container's log, delete with a grace period — and runs
//! each pod's `task` container command as a local process (image ignored;
//! an image whose name starts with `unpullable/` stays in `ErrImagePull`).
//!
//! It listens on 127.0.0.1 only, on a thread of its own, and kills the processes
//! it started when dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// A running stand-in; its address goes in a kubeconfig ([`KubeStandIn::kubeconfig`]).
pub struct KubeStandIn {
    pub address: String,
    state: Arc<Shared>,
    _runtime: std::thread::JoinHandle<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

struct Shared {
    inner: Mutex<Inner>,
    events: broadcast::Sender<(u64, &'static str, Value)>,
    folder: PathBuf,
}

#[derive(Default)]
struct Inner {
    version: u64,
    pods: BTreeMap<String, Pod>,
    /// Every pod created, in order (names), for tests to count launches.
    created: Vec<String>,
    /// Every pod deleted, with the grace it was given.
    deleted: Vec<(String, u64)>,
    /// Every event, so a watch from a version sees what happened since, as the
    /// API server's watch cache does.
    history: Vec<(u64, &'static str, Value)>,
}

struct Pod {
    object: Value,
    /// The process group of its container, while it runs.
    pgid: Option<i32>,
    log: PathBuf,
    /// Asked to go: removed when its process has ended.
    deleting: bool,
}

impl KubeStandIn {
    pub fn start(folder: &Path) -> KubeStandIn {
        let (events, _) = broadcast::channel(1024);
        let state = Arc::new(Shared { inner: Mutex::default(), events, folder: folder.to_path_buf() });
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shared = state.clone();
        let runtime = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                address_tx.send(listener.local_addr().unwrap().to_string()).unwrap();
                let app = Router::new()
                    .route("/api/v1/namespaces/{ns}/pods", get(list_or_watch).post(create))
                    .route("/api/v1/namespaces/{ns}/pods/{name}", get(read).delete(delete))
                    .route("/api/v1/namespaces/{ns}/pods/{name}/log", get(log))
                    .with_state(shared.clone());
                let server = axum::serve(listener, app);
                tokio::select! {
                    _ = server => {}
                    _ = stopped => {}
                }
                kill_all(&shared);
            });
        });
        let address = address_rx.recv_timeout(Duration::from_secs(10)).expect("the stand-in starts");
        KubeStandIn { address, state, _runtime: runtime, stop: Some(stop) }
    }

    /// A kubeconfig pointing at the stand-in (plain HTTP, no credentials).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: standin\nclusters:\n- name: standin\n  cluster:\n    server: http://{}\ncontexts:\n- name: standin\n  context:\n    cluster: standin\n    user: standin\n    namespace: default\nusers:\n- name: standin\n  user: {{}}\n",
            self.address
        )
    }

    /// Names of every pod created so far, in order.
    pub fn created(&self) -> Vec<String> {
        self.state.inner.lock().unwrap().created.clone()
    }

    /// Pods deleted so far, with the grace period each was given (seconds).
    pub fn deleted(&self) -> Vec<(String, u64)> {
        self.state.inner.lock().unwrap().deleted.clone()
    }

    /// The pods there now, as the API shows them.
    pub fn pods(&self) -> Vec<Value> {
        self.state.inner.lock().unwrap().pods.values().map(|pod| pod.object.clone()).collect()
    }
}

impl Drop for KubeStandIn {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        kill_all(&self.state);
    }
}

fn kill_all(state: &Shared) {
    for pod in state.inner.lock().unwrap().pods.values() {
        if let Some(pgid) = pod.pgid {
            signal_group(pgid, rustix::process::Signal::KILL);
        }
    }
}

fn signal_group(pgid: i32, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pgid) {
        let _ = rustix::process::kill_process_group(pid, signal);
    }
}

fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn status(code: u16, reason: &str, message: String) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code});
    (StatusCode::from_u16(code).unwrap(), axum::Json(body)).into_response()
}

/// Stores a new version of a pod and tells the watchers.
fn publish(state: &Shared, inner: &mut Inner, name: &str, kind: &'static str) {
    inner.version += 1;
    let version = inner.version;
    if let Some(pod) = inner.pods.get_mut(name) {
        pod.object["metadata"]["resourceVersion"] = json!(version.to_string());
        inner.history.push((version, kind, pod.object.clone()));
        let _ = state.events.send((version, kind, pod.object.clone()));
    }
}

async fn create(State(state): State<Arc<Shared>>, UrlPath(ns): UrlPath<String>, body: String) -> Response {
    let Ok(mut object) = serde_json::from_str::<Value>(&body) else {
        return status(400, "BadRequest", "the body is not JSON".into());
    };
    let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let container = object["spec"]["containers"]
        .as_array()
        .and_then(|containers| containers.iter().find(|c| c["name"] == "task").cloned())
        .unwrap_or(Value::Null);
    let command: Vec<String> = container["command"]
        .as_array()
        .map(|argv| argv.iter().filter_map(|arg| arg.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    let image = container["image"].as_str().unwrap_or_default().to_string();
    let mut inner = state.inner.lock().unwrap();
    if inner.pods.contains_key(&name) {
        return status(409, "AlreadyExists", format!("pods \"{name}\" already exists"));
    }
    object["metadata"]["namespace"] = json!(ns);
    object["metadata"]["uid"] = json!(format!("standin-{}", inner.created.len()));
    object["metadata"]["creationTimestamp"] = json!(now());
    let log = state.folder.join(format!("{name}.log"));
    let mut pod = Pod { object, pgid: None, log: log.clone(), deleting: false };
    if image.starts_with("unpullable/") {
        pod.object["status"] = json!({"phase": "Pending", "containerStatuses": [{"name": "task", "image": image, "ready": false, "restartCount": 0, "imageID": "",
            "state": {"waiting": {"reason": "ErrImagePull", "message": format!("failed to pull image \"{image}\": not found")}}}]});
    } else {
        pod.object["status"] = json!({"phase": "Pending"});
    }
    inner.created.push(name.clone());
    inner.pods.insert(name.clone(), pod);
    publish(&state, &mut inner, &name, "ADDED");
    let created = inner.pods[&name].object.clone();
    if !image.starts_with("unpullable/") && !command.is_empty() {
        let env: Vec<(String, String)> = container["env"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|entry| {
                (
                    entry["name"].as_str().unwrap_or_default().to_string(),
                    entry["value"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        drop(inner);
        start_container(state.clone(), name, command, env, log);
    }
    (StatusCode::CREATED, axum::Json(created)).into_response()
}

/// Runs the container's command as a local process group; the pod follows it.
fn start_container(state: Arc<Shared>, name: String, command: Vec<String>, env: Vec<(String, String)>, log: PathBuf) {
    use std::os::unix::process::CommandExt;
    let file = std::fs::File::create(&log).unwrap();
    let mut child = std::process::Command::new(&command[0]);
    child
        .args(&command[1..])
        .envs(env)
        .current_dir(&state.folder)
        .stdin(std::process::Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .process_group(0);
    let spawned = child.spawn();
    let mut inner = state.inner.lock().unwrap();
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => {
            if let Some(pod) = inner.pods.get_mut(&name) {
                pod.object["status"] = json!({"phase": "Pending", "containerStatuses": [{"name": "task", "ready": false, "restartCount": 0, "image": "", "imageID": "",
                    "state": {"waiting": {"reason": "CreateContainerError", "message": error.to_string()}}}]});
            }
            publish(&state, &mut inner, &name, "MODIFIED");
            return;
        }
    };
    let started = now();
    if let Some(pod) = inner.pods.get_mut(&name) {
        pod.pgid = Some(child.id() as i32);
        pod.object["status"] = json!({"phase": "Running", "startTime": started, "containerStatuses": [{"name": "task", "ready": true, "restartCount": 0,
            "image": "", "imageID": "", "state": {"running": {"startedAt": started}}}]});
    }
    publish(&state, &mut inner, &name, "MODIFIED");
    drop(inner);
    std::thread::spawn(move || {
        use std::os::unix::process::ExitStatusExt;
        let status = child.wait().unwrap();
        let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(9));
        let mut inner = state.inner.lock().unwrap();
        let deleting = inner.pods.get(&name).is_some_and(|pod| pod.deleting);
        if let Some(pod) = inner.pods.get_mut(&name) {
            pod.pgid = None;
            let phase = if code == 0 { "Succeeded" } else { "Failed" };
            let finished = now();
            pod.object["status"] = json!({"phase": phase, "startTime": started, "containerStatuses": [{"name": "task", "ready": false, "restartCount": 0,
                "image": "", "imageID": "", "state": {"terminated": {"exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" },
                "startedAt": started, "finishedAt": finished}}}]});
        }
        publish(&state, &mut inner, &name, "MODIFIED");
        if deleting {
            publish(&state, &mut inner, &name, "DELETED");
            inner.pods.remove(&name);
        }
    });
}

async fn read(State(state): State<Arc<Shared>>, UrlPath((_ns, name)): UrlPath<(String, String)>) -> Response {
    match state.inner.lock().unwrap().pods.get(&name) {
        Some(pod) => axum::Json(pod.object.clone()).into_response(),
        None => status(404, "NotFound", format!("pods \"{name}\" not found")),
    }
}

async fn delete(
    State(state): State<Arc<Shared>>,
    UrlPath((_ns, name)): UrlPath<(String, String)>,
    body: String,
) -> Response {
    let grace = serde_json::from_str::<Value>(&body).ok().and_then(|options| options["gracePeriodSeconds"].as_u64());
    let mut inner = state.inner.lock().unwrap();
    let Some(pod) = inner.pods.get_mut(&name) else {
        return status(404, "NotFound", format!("pods \"{name}\" not found"));
    };
    let grace = grace.unwrap_or(30);
    pod.deleting = true;
    pod.object["metadata"]["deletionTimestamp"] = json!(now());
    pod.object["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
    let shown = pod.object.clone();
    let pgid = pod.pgid;
    inner.deleted.push((name.clone(), grace));
    match pgid {
        Some(pgid) => {
            signal_group(pgid, rustix::process::Signal::TERM);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs(grace));
                signal_group(pgid, rustix::process::Signal::KILL);
            });
            publish(&state, &mut inner, &name, "MODIFIED");
        }
        None => {
            publish(&state, &mut inner, &name, "DELETED");
            inner.pods.remove(&name);
        }
    }
    axum::Json(shown).into_response()
}

fn matches_labels(pod: &Value, selector: &str) -> bool {
    selector.split(',').filter(|part| !part.is_empty()).all(|part| {
        let (key, value) = part.split_once('=').unwrap_or((part, ""));
        pod["metadata"]["labels"][key].as_str() == Some(value)
    })
}

fn matches_fields(pod: &Value, selector: &str) -> bool {
    selector.split(',').filter(|part| !part.is_empty()).all(|part| match part.split_once('=') {
        Some(("metadata.name", name)) => pod["metadata"]["name"] == name,
        _ => true,
    })
}

async fn list_or_watch(State(state): State<Arc<Shared>>, Query(query): Query<BTreeMap<String, String>>) -> Response {
    let labels = query.get("labelSelector").cloned().unwrap_or_default();
    let fields = query.get("fieldSelector").cloned().unwrap_or_default();
    if query.get("watch").map(String::as_str) != Some("true") {
        let inner = state.inner.lock().unwrap();
        let items: Vec<Value> = inner
            .pods
            .values()
            .map(|pod| &pod.object)
            .filter(|pod| matches_labels(pod, &labels) && matches_fields(pod, &fields))
            .cloned()
            .collect();
        return axum::Json(json!({"kind": "PodList", "apiVersion": "v1",
            "metadata": {"resourceVersion": inner.version.to_string()}, "items": items}))
        .into_response();
    }
    let from: u64 = query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let timeout: u64 = query.get("timeoutSeconds").and_then(|v| v.parse().ok()).unwrap_or(300);
    // Subscribed and the past copied under the lock that publishing holds: no
    // event is missed or seen twice.
    let (mut events, past) = {
        let inner = state.inner.lock().unwrap();
        let past: Vec<_> = inner.history.iter().filter(|(version, _, _)| *version > from).cloned().collect();
        (state.events.subscribe(), past)
    };
    let stream = async_stream(move |send| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        let mut past = past.into_iter();
        loop {
            let event = match past.next() {
                Some(event) => Ok(event),
                None => tokio::select! {
                    event = events.recv() => event,
                    () = tokio::time::sleep_until(deadline) => return,
                },
            };
            let Ok((version, kind, object)) = event else { return };
            if version <= from || !matches_labels(&object, &labels) || !matches_fields(&object, &fields) {
                continue;
            }
            let line = format!("{}\n", json!({"type": kind, "object": object}));
            if send.send(Ok(line)).await.is_err() {
                return;
            }
        }
    });
    Response::builder().header("content-type", "application/json").body(Body::from_stream(stream)).unwrap()
}

async fn log(
    State(state): State<Arc<Shared>>,
    UrlPath((_ns, name)): UrlPath<(String, String)>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let (path, running) = match state.inner.lock().unwrap().pods.get(&name) {
        Some(pod) if pod.object["status"]["phase"] == "Pending" => {
            return status(400, "BadRequest", format!("container \"task\" in pod \"{name}\" is waiting to start"));
        }
        Some(pod) => (pod.log.clone(), pod.pgid.is_some()),
        None => return status(404, "NotFound", format!("pods \"{name}\" not found")),
    };
    let follow = query.get("follow").map(String::as_str) == Some("true") && running;
    let shared = state.clone();
    let stream = async_stream(move |send| async move {
        let mut offset = 0usize;
        loop {
            let data = tokio::fs::read(&path).await.unwrap_or_default();
            if data.len() > offset {
                let chunk = String::from_utf8_lossy(&data[offset..]).into_owned();
                offset = data.len();
                if send.send(Ok(chunk)).await.is_err() {
                    return;
                }
            }
            let still = follow && shared.inner.lock().unwrap().pods.get(&name).is_some_and(|pod| pod.pgid.is_some());
            if !still {
                // One last read: what the process wrote before it ended.
                let data = tokio::fs::read(&path).await.unwrap_or_default();
                if data.len() > offset {
                    let _ = send.send(Ok(String::from_utf8_lossy(&data[offset..]).into_owned())).await;
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    Response::builder().header("content-type", "text/plain").body(Body::from_stream(stream)).unwrap()
}

type Chunk = Result<String, std::io::Error>;

/// A body stream fed by a task through a channel.
fn async_stream<F, Fut>(produce: F) -> impl futures_util::Stream<Item = Chunk> + Send + 'static
where
    F: FnOnce(tokio::sync::mpsc::Sender<Chunk>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (send, receive) = tokio::sync::mpsc::channel(16);
    tokio::spawn(produce(send));
    futures_util::stream::unfold(
        receive,
        |mut receive| async move { receive.recv().await.map(|chunk| (chunk, receive)) },
    )
}
