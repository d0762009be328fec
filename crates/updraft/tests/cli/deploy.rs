//! The deployment files (`Dockerfile`, `deploy/docker-compose.yml`,
//! `deploy/systemd/*.service`) checked without Docker or systemd running: parsed,
//! cross-checked against each other and the binary, and the compose layout started
//! as local processes on PostgreSQL.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use updraft_testkit::copy_tree;
use updraft_testkit::postgres::{TestDatabase, psql};

use crate::project;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// Values for the variables the compose file asks `.env` for.
const VARIABLES: &[(&str, &str)] = &[
    ("POSTGRES_PASSWORD", "compose-password"),
    ("UPDRAFT_WORKER_TOKEN", "compose-worker-token"),
    ("UPDRAFT_FERNET_KEY", "RPEidN6UG47M0ygEYCoPl6mdFKokJhbXo6Jm9yJJs-I="),
];

/// Compose's `${NAME}`, `${NAME:-default}` and `${NAME:?message}`.
fn interpolate(text: &str, variables: &[(&str, &str)]) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').map(|end| start + end).expect("unclosed ${ in the compose file");
        let inner = &rest[start + 2..end];
        let (name, fallback) = match inner.split_once(":-").or_else(|| inner.split_once(":?")) {
            Some((name, other)) => (name, inner.contains(":-").then_some(other)),
            None => (inner, None),
        };
        let value = variables.iter().find(|(known, _)| *known == name).map(|(_, value)| *value).or(fallback);
        out.push_str(value.unwrap_or_else(|| panic!("the compose file uses `${{{name}}}`, which nobody sets")));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

fn compose() -> Value {
    let text = std::fs::read_to_string(repo().join("deploy/docker-compose.yml")).unwrap();
    let tree = updraft_dagfile::yaml::parse(&interpolate(&text, VARIABLES))
        .unwrap_or_else(|error| panic!("deploy/docker-compose.yml: {error:?}"));
    tree.to_json()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| items.iter().map(|item| item.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

fn environment(service: &Value) -> BTreeMap<String, String> {
    service["environment"]
        .as_object()
        .map(|map| map.iter().map(|(key, value)| (key.clone(), value.as_str().unwrap().to_string())).collect())
        .unwrap_or_default()
}

/// `(name, service)` of the services whose command starts with `role`.
fn role<'a>(compose: &'a Value, role: &str) -> Vec<(&'a String, &'a Value)> {
    compose["services"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, service)| strings(&service["command"]).first().map(String::as_str) == Some(role))
        .collect()
}

fn flag(command: &[String], name: &str) -> Option<String> {
    command.iter().position(|arg| arg == name).map(|at| command[at + 1].clone())
}

#[test]
fn compose_file_describes_the_production_layout() {
    let compose = compose();
    let services = compose["services"].as_object().unwrap();
    let schedulers = role(&compose, "scheduler");
    let webservers = role(&compose, "webserver");
    let workers = role(&compose, "worker");
    assert!(schedulers.len() >= 2, "no single point of failure: two schedulers or more");
    assert_eq!(webservers.len(), 1);
    assert!(workers.len() >= 2);
    let postgres = &services["postgres"];
    assert!(postgres["image"].as_str().unwrap().starts_with("postgres:"));
    let (api_name, api) = webservers[0];
    let api_port = flag(&strings(&api["command"]), "--port").expect("the webserver's port");
    let database_url = format!(
        "postgres://{}:compose-password@postgres:5432/{}",
        postgres["environment"]["POSTGRES_USER"].as_str().unwrap(),
        postgres["environment"]["POSTGRES_DB"].as_str().unwrap()
    );
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    assert!(dockerfile.contains(&format!("EXPOSE {api_port}")), "the image exposes the API port {api_port}");

    for (name, service) in services.iter().filter(|(name, _)| *name != "postgres") {
        // Built from this repository's Dockerfile, as one image.
        let context = repo().join("deploy").join(service["build"]["context"].as_str().unwrap());
        assert_eq!(context.canonicalize().unwrap(), repo(), "{name}: build context");
        assert!(context.join(service["build"]["dockerfile"].as_str().unwrap()).is_file(), "{name}: dockerfile");
        assert_eq!(service["image"], "updraft:latest", "{name}");
        for needed in service["depends_on"]
            .as_object()
            .map(|map| map.keys().cloned().collect())
            .unwrap_or_else(|| strings(&service["depends_on"]))
        {
            assert!(services.contains_key(&needed), "{name} depends on unknown service {needed}");
        }
        // The binary accepts the command as written.
        let command = strings(&service["command"]);
        let mut args: Vec<&str> = command.iter().map(String::as_str).collect();
        args.push("--help");
        let help = project().run(&args);
        assert_eq!(help.code, 0, "{name}: `updraft {}`: {}", command.join(" "), help.stderr);
    }
    for (name, scheduler) in &schedulers {
        let env = environment(scheduler);
        assert_eq!(env["UPDRAFT_DATABASE_URL"], database_url, "{name}");
        assert!(!env.contains_key("UPDRAFT_WORKER__TOKEN"), "{name}: schedulers do not need the worker token");
    }
    let api_env = environment(api);
    assert_eq!(api_env["UPDRAFT_DATABASE_URL"], database_url);
    assert_eq!(api_env["UPDRAFT_WORKER__TOKEN"], "compose-worker-token");
    assert_eq!(api_env["UPDRAFT_WEBSERVER__AUTH"], "password", "a server others reach requires sign-in");
    for (name, worker) in &workers {
        let env = environment(worker);
        assert_eq!(env["UPDRAFT_WORKER__API_URL"], format!("http://{api_name}:{api_port}"), "{name}");
        assert_eq!(env["UPDRAFT_WORKER__TOKEN"], "compose-worker-token", "{name}");
        assert!(!env.contains_key("UPDRAFT_DATABASE_URL"), "{name}: workers hold no database credentials");
    }
}

/// `ENV` settings of the Dockerfile's last stage.
fn image_environment(dockerfile: &str) -> Vec<(String, String)> {
    let joined = dockerfile.replace("\\\n", " ");
    let last_stage = joined.rsplit_once("\nFROM ").map_or(joined.as_str(), |(_, last)| last);
    last_stage
        .lines()
        .filter_map(|line| line.strip_prefix("ENV "))
        .flat_map(|settings| settings.split_whitespace())
        .map(|setting| {
            let (name, value) = setting.split_once('=').expect("ENV NAME=value");
            (name.to_string(), value.to_string())
        })
        .collect()
}

#[test]
fn dockerfile_copies_what_exists_and_runs_the_binary_it_builds() {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let instructions: Vec<String> = dockerfile
        .replace("\\\n", " ")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(String::from)
        .collect();
    let known = ["FROM", "WORKDIR", "COPY", "RUN", "ENV", "USER", "EXPOSE", "ENTRYPOINT", "CMD"];
    let mut stages = Vec::new();
    for line in &instructions {
        let keyword = line.split_whitespace().next().unwrap();
        assert!(known.contains(&keyword), "unexpected instruction: {line}");
        let words: Vec<&str> = line.split_whitespace().collect();
        match keyword {
            "FROM" => {
                assert!(words[1].contains(':'), "pinned base image: {line}");
                if let Some(at) = words.iter().position(|word| word.eq_ignore_ascii_case("AS")) {
                    stages.push(words[at + 1].to_string());
                }
            }
            "COPY" => match words[1].strip_prefix("--from=") {
                Some(stage) => assert!(stages.iter().any(|known| known == stage), "unknown stage: {line}"),
                None => {
                    let source = repo().join(words[1]);
                    assert!(source.exists(), "COPY source missing: {line}");
                }
            },
            _ => {}
        }
    }
    assert!(instructions.iter().any(|line| line.contains("cargo build --release --locked -p updraft")));
    let entrypoint = instructions.iter().find(|line| line.starts_with("ENTRYPOINT")).unwrap();
    assert!(entrypoint.contains("\"/usr/local/bin/updraft\""), "{entrypoint}");
    assert!(instructions.iter().any(|line| line.starts_with("COPY --from=build /usr/local/bin/updraft")));
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    assert!(ignore.lines().any(|line| line == "target"), "the build context leaves out target/");
    // The image as a folder: what it copies, at the paths its settings name; the
    // binary accepts those settings and finds the example DAGs there.
    let mut p = project();
    let inside = |path: &str| p.path().join("image").join(path.trim_start_matches('/'));
    let last_stage = instructions.iter().rposition(|line| line.starts_with("FROM ")).unwrap();
    let copies =
        instructions[last_stage..].iter().filter(|line| line.starts_with("COPY ") && !line.contains("--from="));
    for line in copies {
        let words: Vec<&str> = line.split_whitespace().collect();
        copy_tree(&repo().join(words[1]), &inside(words[2]));
    }
    let settings: Vec<(String, PathBuf)> =
        image_environment(&dockerfile).into_iter().map(|(name, value)| (name, inside(&value))).collect();
    for (name, path) in &settings {
        std::fs::create_dir_all(path).unwrap();
        p.env(name, path.to_str().unwrap());
    }
    let listed = p.run(&["dags", "list"]);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    assert!(listed.stdout.contains("daily_sales"), "{}", listed.stdout);
}

#[test]
fn deploy_compose_layout_runs_as_processes() {
    let Some(database) = TestDatabase::create() else { return };
    let compose = compose();
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let mut p = project();
    p.dag(
        "hello.yaml",
        "dag: hello\ntasks:\n  a: {shell: 'echo from $(hostname)'}\n  b: {shell: 'echo b', depends_on: [a]}\n",
    );
    // As in the image, minus paths: this machine's folders stand in for them.
    let dags = p.path().join("dags").display().to_string();
    p.env("UPDRAFT_LOG", "warn");
    for (name, _) in image_environment(&dockerfile) {
        if name == "UPDRAFT_DAGS_FOLDER" {
            p.env(&name, &dags);
        }
    }
    // Loopback instead of the compose network; the test's database instead of the
    // `postgres` service.
    let local = |env: BTreeMap<String, String>, api_url: &str| -> Vec<(String, String)> {
        env.into_iter()
            .map(|(key, value)| {
                let value = if value.starts_with("postgres://") {
                    database.url.clone()
                } else if value.starts_with("http://") {
                    api_url.to_string()
                } else {
                    value
                };
                (key, value)
            })
            .collect()
    };
    let start = |name: &str, service: &Value, api_url: &str, ready: &str| {
        let command: Vec<String> = strings(&service["command"])
            .into_iter()
            .map(|arg| match arg.as_str() {
                "0.0.0.0" => "127.0.0.1".to_string(),
                "8080" => "0".to_string(),
                _ => arg,
            })
            .collect();
        let args: Vec<&str> = command.iter().map(String::as_str).collect();
        let state = p.path().join("state").join(name);
        let mut env = local(environment(service), api_url);
        env.push(("UPDRAFT_CORE__STATE_FOLDER".into(), state.display().to_string()));
        let env: Vec<(&str, &str)> = env.iter().map(|(key, value)| (key.as_str(), value.as_str())).collect();
        p.service_with(&args, &env, ready)
    };
    let (api_name, api_service) = role(&compose, "webserver")[0];
    let api = start(api_name, api_service, "", "http://");
    let api_url = format!("http://{}", api.address);
    let mut services = vec![api];
    for (name, scheduler) in role(&compose, "scheduler") {
        services.push(start(name, scheduler, &api_url, "updraft scheduler running"));
    }
    for (name, worker) in role(&compose, "worker") {
        services.push(start(name, worker, &api_url, "updraft worker running"));
    }
    p.env("UPDRAFT_DATABASE_URL", &database.url);
    let triggered = p.run(&["dags", "trigger", "hello", "--wait"]);
    assert_eq!(triggered.code, 0, "{}", triggered.stderr);
    let kinds = psql(
        &database.url,
        "SELECT string_agg(DISTINCT p.kind, ',') FROM task_instances t JOIN processes p ON p.id = t.process_id",
    )
    .unwrap();
    assert_eq!(kinds, "worker", "the compose workers ran the tasks");
    drop(services);
}

#[test]
fn systemd_units_verify_and_run_real_commands() {
    let units: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/systemd"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "service"))
        .collect();
    let roles: Vec<String> =
        units.iter().map(|unit| unit.file_stem().unwrap().to_string_lossy().into_owned()).collect();
    for role in ["updraft-scheduler", "updraft-webserver", "updraft-worker"] {
        assert!(roles.iter().any(|known| known == role), "a unit for {role}");
    }
    let binary = env!("CARGO_BIN_EXE_updraft");
    let copies = tempfile::tempdir().unwrap();
    for unit in &units {
        let text = std::fs::read_to_string(unit).unwrap();
        let exec = text.lines().find_map(|line| line.strip_prefix("ExecStart=")).expect("ExecStart");
        let mut words = exec.split_whitespace();
        assert_eq!(words.next(), Some("/usr/local/bin/updraft"), "{}", unit.display());
        let mut args: Vec<&str> = words.collect();
        args.push("--help");
        let help = project().run(&args);
        assert_eq!(help.code, 0, "{}: {exec}: {}", unit.display(), help.stderr);
        // The copy runs the binary under test: verify checks that it exists.
        std::fs::write(copies.path().join(unit.file_name().unwrap()), text.replace("/usr/local/bin/updraft", binary))
            .unwrap();
    }
    let Ok(verify) = Command::new("systemd-analyze")
        .arg("verify")
        .args(units.iter().map(|unit| copies.path().join(unit.file_name().unwrap())))
        .output()
    else {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "no systemd-analyze under CI");
        #[allow(clippy::print_stderr)]
        {
            eprintln!("skipping systemd-analyze verify: not installed");
        }
        return;
    };
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success() && stderr.trim().is_empty(), "systemd-analyze verify:\n{stderr}");
}

/// `deploy/kubernetes`: rendered by `kubectl kustomize` (offline), every object
/// valid against the Kubernetes schemas (kubernetes-validate, strict), the RBAC
/// only what the executor needs, the ConfigMap's updraft.toml accepted by the
/// binary, and the probes' `/health` served where they look for it.
#[test]
fn kubernetes_manifests_render_validate_and_probe_real_endpoints() {
    let (Ok(validate), Some(kubectl)) = (std::env::var("UPDRAFT_KUBERNETES_VALIDATE"), which("kubectl")) else {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "kubectl or kubernetes-validate missing under CI");
        #[allow(clippy::print_stderr)]
        {
            eprintln!("skipping: needs kubectl and UPDRAFT_KUBERNETES_VALIDATE");
        }
        return;
    };
    let rendered = Command::new(kubectl).args(["kustomize"]).arg(repo().join("deploy/kubernetes")).output().unwrap();
    assert!(rendered.status.success(), "{}", String::from_utf8_lossy(&rendered.stderr));
    let text = String::from_utf8(rendered.stdout).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("updraft.yaml");
    std::fs::write(&file, &text).unwrap();
    let checked = Command::new(&validate).arg("--strict").arg(&file).output().unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&checked.stdout), String::from_utf8_lossy(&checked.stderr));
    assert!(checked.status.success(), "{report}");
    assert_eq!(report.matches(" passed for resource ").count(), 10, "{report}");

    let objects: Vec<updraft_dagfile::yaml::Node> = text
        .split("\n---\n")
        .map(|doc| updraft_dagfile::yaml::parse(doc).unwrap_or_else(|error| panic!("{error:?}")))
        .collect();
    let objects: Vec<Value> = objects.iter().map(updraft_dagfile::yaml::Node::to_json).collect();
    let find = |kind: &str, name: &str| {
        objects
            .iter()
            .find(|object| object["kind"] == kind && object["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    // The executor's verbs on pods and their logs, nothing more.
    let role = find("Role", "updraft-executor");
    assert_eq!(
        role["rules"],
        serde_json::json!([
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "get", "list", "watch", "delete"]},
            {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
        ])
    );
    assert_eq!(find("Deployment", "updraft-scheduler")["spec"]["replicas"], 2);
    for deployment in ["updraft-webserver", "updraft-scheduler", "updraft-worker"] {
        let container = &find("Deployment", deployment)["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/health", "{deployment}");
        assert!(container["resources"]["requests"].is_object(), "{deployment}");
        assert!(container["image"].as_str().unwrap().contains("updraft"), "{deployment}");
    }
    // Secrets by reference only.
    assert!(!text.contains("postgres://"), "a database URL in the manifests");

    // The ConfigMap's updraft.toml is one the binary takes, and a scheduler
    // started with it serves /health and /metrics on `metrics.port`.
    let config = find("ConfigMap", "updraft-config")["data"]["updraft.toml"].as_str().unwrap().to_string();
    let mut p = project();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    p.write("updraft.toml", &config);
    p.env("UPDRAFT_DAGS_FOLDER", &p.path().join("dags").display().to_string());
    p.env("UPDRAFT_CORE__STATE_FOLDER", &p.path().join("state").display().to_string());
    p.env("UPDRAFT_WEBSERVER__HOST", "127.0.0.1");
    p.env("UPDRAFT_METRICS__PORT", &port.to_string());
    let scheduler = p.service(&["scheduler"], "metrics on http://");
    let (status, body) = updraft_testkit::http_get(&format!("127.0.0.1:{port}"), "/health");
    assert_eq!((status, body.as_str()), (200, r#"{"status":"healthy"}"#));
    updraft_testkit::eventually(std::time::Duration::from_secs(10), "the scheduler's heartbeats on /metrics", || {
        let (status, body) = updraft_testkit::http_get(&format!("127.0.0.1:{port}"), "/metrics");
        (status == 200 && body.contains("airflow_scheduler_heartbeat")).then_some(())
    });
    drop(scheduler);
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|dir| Path::new(dir).join(program)).find(|path| path.is_file())
}
