//! Each secrets backend against a local server speaking the service's documented
//! API: small axum servers for Vault (KV v2, token and AppRole auth) and GCP
//! Secret Manager (the OAuth token endpoint checks the JWT's RS256 signature with
//! the service account's public key), and moto for AWS Secrets Manager (with IAM
//! auth on, so it recomputes every SigV4 signature). moto is found as
//! `UPDRAFT_MOTO_VENV` (a virtualenv with `moto[server]`), else skipped, except
//! under `CI=true` where its absence fails.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use updraft_secrets::{BackendConfig, Backends, Kind, Wanted};
use updraft_store::Secrets;

async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{address}")
}

fn backends(toml_configs: &str, base: &Path, ttl: Duration) -> Backends {
    #[derive(serde::Deserialize)]
    struct File {
        backends: Vec<BackendConfig>,
    }
    let file: File = toml::from_str(toml_configs).unwrap();
    Backends::new(&file.backends, base, ttl).unwrap()
}

fn wanted(variables: &[&str], connections: &[&str]) -> Wanted {
    Wanted {
        variables: variables.iter().map(ToString::to_string).collect(),
        connections: connections.iter().map(ToString::to_string).collect(),
    }
}

#[tokio::test]
async fn a_local_file_backend_comes_before_the_database_and_is_cached() {
    let folder = tempfile::tempdir().unwrap();
    std::fs::write(folder.path().join("variables.yaml"), "region: eu-west-1\nsettings: {bucket: raw}\n").unwrap();
    std::fs::write(folder.path().join("connections.env"), "warehouse=postgres://etl:file%20pw@db.internal:5432/dw\n")
        .unwrap();
    let config = r#"
        [[backends]]
        kind = "file"
        variables_file = "variables.yaml"
        connections_file = "connections.env"
    "#;
    let backends = backends(config, folder.path(), Duration::from_millis(400));
    let mut secrets = Secrets::default();
    secrets.variables.insert("region".into(), "from-the-database".into());
    secrets.variables.insert("other".into(), "kept".into());
    backends.resolve(&wanted(&["region", "settings", "absent"], &["warehouse", "absent"]), &mut secrets).await.unwrap();
    assert_eq!(secrets.variables["region"], "eu-west-1");
    assert_eq!(secrets.variables["settings"], r#"{"bucket":"raw"}"#);
    assert_eq!(secrets.variables["other"], "kept");
    assert!(!secrets.variables.contains_key("absent"));
    assert!(secrets.from_backends.contains("region") && !secrets.from_backends.contains("other"));
    assert_eq!(secrets.connections["warehouse"].password.as_deref(), Some("file pw"));

    // Within the TTL an edit is not seen; after it, it is.
    std::fs::write(folder.path().join("variables.yaml"), "region: us-east-2\n").unwrap();
    assert_eq!(backends.get(Kind::Variable, "region").await.unwrap().as_deref(), Some("eu-west-1"));
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(backends.get(Kind::Variable, "region").await.unwrap().as_deref(), Some("us-east-2"));

    // A broken file is an error naming the file and position, not a missing value.
    std::fs::write(folder.path().join("variables.yaml"), "region: [unclosed\n").unwrap();
    tokio::time::sleep(Duration::from_millis(450)).await;
    let error = backends.get(Kind::Variable, "region").await.unwrap_err().to_string();
    assert!(error.contains("variables.yaml:") && error.contains("cannot read variable `region`"), "{error}");

    // A connection that is neither a URI nor Airflow's JSON names the backend and
    // the connection, never its text.
    std::fs::write(folder.path().join("connections.env"), "broken=not a uri hunter22\n").unwrap();
    let fresh = backends_in(folder.path());
    let mut secrets = Secrets::default();
    let error = fresh.resolve(&wanted(&[], &["broken"]), &mut secrets).await.unwrap_err().to_string();
    assert!(error.contains("connection `broken` is not a connection") && error.contains("connections.env"), "{error}");
    assert!(!error.contains("hunter22"), "{error}");
}

fn backends_in(folder: &Path) -> Backends {
    let config = "[[backends]]\nkind = \"file\"\nconnections_file = \"connections.env\"\n";
    backends(config, folder, Duration::ZERO)
}

#[derive(Default)]
struct Vault {
    /// Tokens the server accepts.
    tokens: Mutex<Vec<String>>,
    logins: AtomicUsize,
    reads: AtomicUsize,
}

async fn vault_login(State(vault): State<Arc<Vault>>, Json(body): Json<serde_json::Value>) -> (StatusCode, String) {
    if body["role_id"] != "updraft-role" || body["secret_id"] != "s3cr3t-id" {
        return (StatusCode::BAD_REQUEST, r#"{"errors":["invalid role or secret ID"]}"#.into());
    }
    let n = vault.logins.fetch_add(1, Ordering::SeqCst);
    let token = format!("hvs.approle-{n}");
    vault.tokens.lock().unwrap().push(token.clone());
    let answer = serde_json::json!({ "auth": { "client_token": token, "lease_duration": 3600, "renewable": true } });
    (StatusCode::OK, answer.to_string())
}

async fn vault_read(
    State(vault): State<Arc<Vault>>,
    UrlPath(path): UrlPath<String>,
    headers: HeaderMap,
) -> (StatusCode, String) {
    vault.reads.fetch_add(1, Ordering::SeqCst);
    let token = headers.get("x-vault-token").and_then(|value| value.to_str().ok()).unwrap_or_default();
    if !vault.tokens.lock().unwrap().iter().any(|known| known == token) {
        return (StatusCode::FORBIDDEN, r#"{"errors":["permission denied"]}"#.into());
    }
    let data = match path.as_str() {
        "updraft/variables/region" => serde_json::json!({ "value": "eu-north-1" }),
        "updraft/connections/warehouse" => serde_json::json!({ "conn_uri": "postgres://etl:vault%2Fpw@vdb:5432/dw" }),
        "updraft/connections/api" => {
            serde_json::json!({ "conn_type": "http", "host": "api.example.com", "password": "v-api-key" })
        }
        _ => return (StatusCode::NOT_FOUND, r#"{"errors":[]}"#.into()),
    };
    let answer = serde_json::json!({ "data": { "data": data, "metadata": { "version": 1 } } });
    (StatusCode::OK, answer.to_string())
}

async fn vault_server() -> (String, Arc<Vault>) {
    let vault = Arc::new(Vault::default());
    vault.tokens.lock().unwrap().push("hvs.root".into());
    let router = axum::Router::new()
        .route("/v1/auth/approle/login", post(vault_login))
        .route("/v1/secret/data/{*path}", get(vault_read))
        .with_state(vault.clone());
    (serve(router).await, vault)
}

#[tokio::test]
async fn vault_kv2_with_a_token_and_with_approle() {
    let (url, vault) = vault_server().await;
    let folder = tempfile::tempdir().unwrap();
    let with_token = backends(
        &format!(
            r#"
            [[backends]]
            kind = "vault"
            url = "{url}"
            token = "hvs.root"
            variables_path = "updraft/variables"
            connections_path = "updraft/connections"
        "#
        ),
        folder.path(),
        Duration::ZERO,
    );
    let mut secrets = Secrets::default();
    with_token.resolve(&wanted(&["region", "absent"], &["warehouse", "api"]), &mut secrets).await.unwrap();
    assert_eq!(secrets.variables["region"], "eu-north-1");
    assert!(!secrets.variables.contains_key("absent"));
    assert_eq!(secrets.connections["warehouse"].password.as_deref(), Some("vault/pw"));
    assert_eq!(secrets.connections["api"].host.as_deref(), Some("api.example.com"));

    let bad_token = backends(
        &format!("[[backends]]\nkind = \"vault\"\nurl = \"{url}\"\ntoken = \"hvs.wrong\"\n"),
        folder.path(),
        Duration::ZERO,
    );
    let error = bad_token.get(Kind::Variable, "region").await.unwrap_err().to_string();
    assert!(error.contains("403") && error.contains("permission denied") && error.contains("`region`"), "{error}");
    assert!(!error.contains("hvs.wrong"), "{error}");

    let approle = backends(
        &format!(
            r#"
            [[backends]]
            kind = "vault"
            url = "{url}"
            role_id = "updraft-role"
            secret_id = "s3cr3t-id"
            variables_path = "updraft/variables"
        "#
        ),
        folder.path(),
        Duration::ZERO,
    );
    for _ in 0..3 {
        assert_eq!(approle.get(Kind::Variable, "region").await.unwrap().as_deref(), Some("eu-north-1"));
    }
    assert_eq!(vault.logins.load(Ordering::SeqCst), 1, "one login for many reads");
    // A revoked token: the backend logs in again and carries on.
    vault.tokens.lock().unwrap().retain(|token| !token.starts_with("hvs.approle"));
    assert_eq!(approle.get(Kind::Variable, "region").await.unwrap().as_deref(), Some("eu-north-1"));
    assert_eq!(vault.logins.load(Ordering::SeqCst), 2);

    // The cache: a second lookup within the TTL does not reach the server.
    let cached = backends(
        &format!(
            "[[backends]]\nkind = \"vault\"\nurl = \"{url}\"\ntoken = \"hvs.root\"\nvariables_path = \"updraft/variables\"\n"
        ),
        folder.path(),
        Duration::from_secs(60),
    );
    let before = vault.reads.load(Ordering::SeqCst);
    for _ in 0..5 {
        cached.get(Kind::Variable, "region").await.unwrap();
        cached.get(Kind::Variable, "absent").await.unwrap();
    }
    assert_eq!(vault.reads.load(Ordering::SeqCst) - before, 2, "absent names are cached too");
}

struct Google {
    public_key: Vec<u8>,
    token_uri: String,
    tokens_issued: AtomicUsize,
    secrets: HashMap<String, String>,
}

async fn google_token(State(google): State<Arc<Google>>, body: String) -> (StatusCode, String) {
    let form: HashMap<String, String> = serde_urlencoded::from_str(&body).unwrap();
    if form.get("grant_type").map(String::as_str) != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
        return (StatusCode::BAD_REQUEST, r#"{"error":"unsupported_grant_type"}"#.into());
    }
    let assertion = form.get("assertion").cloned().unwrap_or_default();
    let parts: Vec<&str> = assertion.split('.').collect();
    let [header, claims, signature] = parts[..] else {
        return (StatusCode::BAD_REQUEST, r#"{"error":"invalid_grant"}"#.into());
    };
    let key = aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
        google.public_key.as_slice(),
    );
    let signature = URL_SAFE_NO_PAD.decode(signature).unwrap_or_default();
    if key.verify(format!("{header}.{claims}").as_bytes(), &signature).is_err() {
        return (
            StatusCode::BAD_REQUEST,
            r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#.into(),
        );
    }
    let header: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
    let now = jiff::Timestamp::now().as_second();
    let valid = header["alg"] == "RS256"
        && header["kid"] == "key-1"
        && claims["iss"] == "updraft@project-x.iam.gserviceaccount.com"
        && claims["aud"] == google.token_uri.as_str()
        && claims["scope"] == "https://www.googleapis.com/auth/cloud-platform"
        && claims["iat"].as_i64().is_some_and(|iat| (iat - now).abs() < 60)
        && claims["exp"].as_i64() == claims["iat"].as_i64().map(|iat| iat + 3600);
    if !valid {
        return (StatusCode::BAD_REQUEST, format!(r#"{{"error":"invalid_grant","claims":{claims}}}"#));
    }
    let n = google.tokens_issued.fetch_add(1, Ordering::SeqCst);
    (
        StatusCode::OK,
        serde_json::json!({ "access_token": format!("ya29.{n}"), "expires_in": 3599, "token_type": "Bearer" })
            .to_string(),
    )
}

async fn google_access(
    State(google): State<Arc<Google>>,
    UrlPath((project, secret, version)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
) -> (StatusCode, String) {
    let bearer = headers.get("authorization").and_then(|value| value.to_str().ok()).unwrap_or_default();
    let issued = google.tokens_issued.load(Ordering::SeqCst);
    if !(0..issued).any(|n| bearer == format!("Bearer ya29.{n}")) {
        return (StatusCode::UNAUTHORIZED, r#"{"error":{"code":401,"status":"UNAUTHENTICATED"}}"#.into());
    }
    if version != "latest:access" {
        return (StatusCode::NOT_FOUND, r#"{"error":{"code":404,"status":"NOT_FOUND"}}"#.into());
    }
    match google.secrets.get(&format!("{project}/{secret}")) {
        Some(value) => {
            let answer = serde_json::json!({
                "name": format!("projects/{project}/secrets/{secret}/versions/1"),
                "payload": { "data": STANDARD.encode(value) },
            });
            (StatusCode::OK, answer.to_string())
        }
        None => (StatusCode::NOT_FOUND, r#"{"error":{"code":404,"status":"NOT_FOUND"}}"#.into()),
    }
}

#[tokio::test]
async fn gcp_secret_manager_with_a_service_account_key() {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::KeyPair;
    let key = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let pkcs8 = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&key).unwrap();
    let pem_body: Vec<String> = STANDARD
        .encode(pkcs8.as_ref())
        .as_bytes()
        .chunks(64)
        .map(|line| String::from_utf8(line.to_vec()).unwrap())
        .collect();
    let pem = format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", pem_body.join("\n"));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut secrets = HashMap::new();
    secrets.insert("project-x/updraft-variables-region".to_string(), "asia-northeast3".to_string());
    secrets.insert(
        "project-x/updraft-connections-warehouse".to_string(),
        r#"{"conn_type": "postgres", "host": "gdb", "login": "etl", "password": "g-pw-123"}"#.to_string(),
    );
    let google = Arc::new(Google {
        public_key: key.public_key().as_ref().to_vec(),
        token_uri: format!("{base}/token"),
        tokens_issued: AtomicUsize::new(0),
        secrets,
    });
    let router = axum::Router::new()
        .route("/token", post(google_token))
        .route("/v1/projects/{project}/secrets/{secret}/versions/{version}", get(google_access))
        .with_state(google.clone());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    let folder = tempfile::tempdir().unwrap();
    let account = serde_json::json!({
        "type": "service_account",
        "project_id": "project-x",
        "private_key_id": "key-1",
        "private_key": pem,
        "client_email": "updraft@project-x.iam.gserviceaccount.com",
        "token_uri": format!("{base}/token"),
    });
    std::fs::write(folder.path().join("sa.json"), account.to_string()).unwrap();
    let config = format!("[[backends]]\nkind = \"gcp\"\ncredentials_file = \"sa.json\"\nendpoint = \"{base}\"\n");
    let gcp = backends(&config, folder.path(), Duration::ZERO);
    let mut found = Secrets::default();
    gcp.resolve(&wanted(&["region", "absent"], &["warehouse"]), &mut found).await.unwrap();
    assert_eq!(found.variables["region"], "asia-northeast3");
    assert!(!found.variables.contains_key("absent"));
    assert_eq!(found.connections["warehouse"].password.as_deref(), Some("g-pw-123"));
    assert_eq!(google.tokens_issued.load(Ordering::SeqCst), 1, "one token for many reads");

    // A key the server does not know: its signature is refused, and the error says so.
    let other = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let other_der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&other).unwrap();
    let other_pem =
        format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", STANDARD.encode(other_der.as_ref()));
    let mut forged = account.clone();
    forged["private_key"] = other_pem.into();
    std::fs::write(folder.path().join("forged.json"), forged.to_string()).unwrap();
    let config = format!("[[backends]]\nkind = \"gcp\"\ncredentials_file = \"forged.json\"\nendpoint = \"{base}\"\n");
    let error = backends(&config, folder.path(), Duration::ZERO).get(Kind::Variable, "region").await.unwrap_err();
    assert!(error.to_string().contains("Invalid JWT Signature"), "{error}");

    // A key file that is not one names the file, not its contents.
    std::fs::write(folder.path().join("bad.json"), r#"{"client_email": "x", "private_key": "hunter22"}"#).unwrap();
    #[derive(serde::Deserialize)]
    struct File {
        backends: Vec<BackendConfig>,
    }
    let file: File =
        toml::from_str("[[backends]]\nkind = \"gcp\"\ncredentials_file = \"bad.json\"\nproject = \"p\"\n").unwrap();
    let error = Backends::new(&file.backends, folder.path(), Duration::ZERO).unwrap_err().to_string();
    assert!(error.contains("bad.json") && error.contains("private_key") && !error.contains("hunter22"), "{error}");
}

/// moto's `moto_server`, or why not.
fn moto() -> Option<PathBuf> {
    let venv = PathBuf::from(std::env::var("UPDRAFT_MOTO_VENV").ok()?);
    venv.join("bin/moto_server").exists().then_some(venv)
}

#[tokio::test]
async fn aws_secrets_manager_on_moto_with_signature_checks() {
    let Some(venv) = moto() else {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "moto is required under CI (.ci/run installs it)");
        #[allow(clippy::print_stderr)]
        {
            eprintln!("skipping: moto not found (set UPDRAFT_MOTO_VENV to a virtualenv with `moto[server]`)");
        }
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let logs = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(logs.path().join("moto.log")).unwrap();
    // IAM auth after the setup's requests: from then on moto checks every signature.
    let setup_requests = 6;
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Kill(
        std::process::Command::new(venv.join("bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("INITIAL_NO_AUTH_ACTION_COUNT", setup_requests.to_string())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let endpoint = format!("http://127.0.0.1:{port}");
    let started = std::time::Instant::now();
    while reqwest::get(format!("{endpoint}/moto-api/")).await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "moto_server did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let setup = r#"
import boto3, json, sys
kw = dict(endpoint_url=sys.argv[1], region_name="eu-west-1", aws_access_key_id="AKIASETUP", aws_secret_access_key="setup")
iam = boto3.client("iam", **kw)
iam.create_user(UserName="updraft")
key = iam.create_access_key(UserName="updraft")["AccessKey"]
policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": "*"}]}
iam.put_user_policy(UserName="updraft", PolicyName="read", PolicyDocument=json.dumps(policy))
sm = boto3.client("secretsmanager", **kw)
sm.create_secret(Name="updraft/variables/region", SecretString="ap-south-1")
sm.create_secret(Name="updraft/connections/warehouse", SecretString="mysql://etl:a%20w%24pw@adb:3306/dw")
sm.create_secret(Name="updraft/connections/api", SecretString=json.dumps({"conn_type": "http", "host": "x", "password": "aws-api-key"}))
print(json.dumps({"id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}))
"#;
    let output = std::process::Command::new(venv.join("bin/python")).args(["-c", setup, &endpoint]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let key: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let (id, secret) = (key["id"].as_str().unwrap(), key["secret"].as_str().unwrap());

    let folder = tempfile::tempdir().unwrap();
    let config = format!(
        "[[backends]]\nkind = \"aws\"\nregion = \"eu-west-1\"\nendpoint = \"{endpoint}\"\naccess_key_id = \"{id}\"\nsecret_access_key = \"{secret}\"\n"
    );
    let aws = backends(&config, folder.path(), Duration::ZERO);
    let mut found = Secrets::default();
    aws.resolve(&wanted(&["region", "absent"], &["warehouse", "api"]), &mut found).await.unwrap();
    assert_eq!(found.variables["region"], "ap-south-1");
    assert!(!found.variables.contains_key("absent"));
    assert_eq!(found.connections["warehouse"].password.as_deref(), Some("a w$pw"));
    assert_eq!(found.connections["api"].password.as_deref(), Some("aws-api-key"));

    let config = format!(
        "[[backends]]\nkind = \"aws\"\nregion = \"eu-west-1\"\nendpoint = \"{endpoint}\"\naccess_key_id = \"{id}\"\nsecret_access_key = \"not-the-key\"\n"
    );
    let error = backends(&config, folder.path(), Duration::ZERO).get(Kind::Variable, "region").await.unwrap_err();
    assert!(error.to_string().contains("SignatureDoesNotMatch"), "{error}");
}
