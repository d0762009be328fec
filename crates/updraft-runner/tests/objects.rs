//! `copy`, `sync` and `sensor` against moto's S3 server (PyPI `moto[server]`, found
//! as `UPDRAFT_MOTO_VENV`; required under CI) and local folders.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use support::{run, spec};
use updraft_runner::attempt::{AttemptSpec, Ending};

/// moto's S3 on a free loopback port, stopped when dropped.
struct Moto {
    child: std::process::Child,
    endpoint: String,
    python: PathBuf,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    fn start() -> Option<Moto> {
        let Some(venv) = std::env::var("UPDRAFT_MOTO_VENV").ok().map(PathBuf::from) else {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "moto is required under CI (.ci/run installs it)");
            #[allow(clippy::print_stderr)]
            {
                eprintln!("skipping: moto not found (set UPDRAFT_MOTO_VENV to a virtualenv with `moto[server]`)");
            }
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = std::process::Command::new(venv.join("bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let moto = Moto { child, endpoint: format!("http://127.0.0.1:{port}"), python: venv.join("bin/python") };
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(30), "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(moto)
    }

    /// Runs boto3 against the server: `s3` is the client.
    fn boto(&self, code: &str) -> String {
        let script = format!(
            "import boto3, sys\ns3 = boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1', aws_access_key_id='AKIAMOTO', aws_secret_access_key='moto-secret')\n{code}"
        );
        let output = std::process::Command::new(&self.python).args(["-c", &script, &self.endpoint]).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    }

    fn keys(&self, bucket: &str) -> Vec<String> {
        let listed = self.boto(&format!(
            "for item in s3.list_objects_v2(Bucket='{bucket}').get('Contents', []): print(item['Key'])"
        ));
        listed.lines().map(str::to_string).collect()
    }
}

/// The spec with the connection `lake`: moto's endpoint and keys, Airflow's shape.
fn with_lake(mut spec: AttemptSpec, moto: &Moto) -> AttemptSpec {
    let mut secrets = updraft_store::Secrets::default();
    let extra = serde_json::json!({ "region_name": "us-east-1", "endpoint_url": moto.endpoint }).to_string();
    secrets.connections.insert(
        "lake".into(),
        updraft_store::ConnectionValues {
            conn_type: "aws".into(),
            login: Some("AKIAMOTO".into()),
            password: Some("moto-secret".into()),
            extra: Some(extra),
            ..Default::default()
        },
    );
    spec.secrets = Arc::new(secrets);
    spec
}

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn copy_and_sync_between_a_folder_and_s3() {
    let Some(moto) = Moto::start() else { return };
    moto.boto("s3.create_bucket(Bucket='raw')");
    let dir = tempfile::tempdir().unwrap();
    let dags = dir.path().join("dags/sub");
    write(&dags, "export/prices.csv", "code,close\n005930,71000\n");
    write(&dags, "export/deep/volumes.csv", "code,volume\n005930,100\n");
    write(&dags, "export/readme.txt", "not data\n");

    // Up: the CSV files under a local folder to a dated prefix.
    let up = "    copy:\n      from: export/\n      to: s3://raw/prices/{{ ds }}/\n      to_connection: lake\n      include: '*.csv'\n";
    let (result, _, log) = run(&with_lake(spec(dir.path(), up), &moto)).await;
    assert_eq!(result.ending, Ending::Done, "{log}");
    let output: serde_json::Value = serde_json::from_str(result.output.as_deref().unwrap()).unwrap();
    assert_eq!(output["copied"], 2, "{output}");
    let mut keys = moto.keys("raw");
    keys.sort();
    assert_eq!(keys, ["prices/2024-03-01/deep/volumes.csv", "prices/2024-03-01/prices.csv"]);

    // Down with sync: new objects come, a stale local file goes, and a second sync
    // copies nothing.
    moto.boto("s3.put_object(Bucket='raw', Key='prices/2024-03-01/late.csv', Body=b'code\\n000660\\n')");
    write(&dags, "mirror/stale.csv", "old\n");
    let down = "    sync:\n      from: s3://raw/prices/{{ ds }}/\n      from_connection: lake\n      to: mirror/\n      delete: true\n";
    let (result, _, log) = run(&with_lake(spec(dir.path(), down), &moto)).await;
    assert_eq!(result.ending, Ending::Done, "{log}");
    let output: serde_json::Value = serde_json::from_str(result.output.as_deref().unwrap()).unwrap();
    assert_eq!((output["copied"].clone(), output["deleted"].clone()), (3.into(), 1.into()), "{output}");
    assert_eq!(std::fs::read_to_string(dags.join("mirror/deep/volumes.csv")).unwrap(), "code,volume\n005930,100\n");
    assert!(!dags.join("mirror/stale.csv").exists());
    let (result, _, log) = run(&with_lake(spec(dir.path(), down), &moto)).await;
    assert_eq!(result.ending, Ending::Done, "{log}");
    let output: serde_json::Value = serde_json::from_str(result.output.as_deref().unwrap()).unwrap();
    assert_eq!((output["copied"].clone(), output["skipped"].clone()), (0.into(), 3.into()), "{output}");

    // One object to a local file name; a missing one is an error naming it.
    let one =
        "    copy: {from: 's3://raw/prices/2024-03-01/late.csv', from_connection: lake, to: single/late_copy.csv}\n";
    let (result, _, log) = run(&with_lake(spec(dir.path(), one), &moto)).await;
    assert_eq!(result.ending, Ending::Done, "{log}");
    assert_eq!(std::fs::read_to_string(dags.join("single/late_copy.csv")).unwrap(), "code\n000660\n");
    let missing = "    copy: {from: 's3://raw/nope.csv', from_connection: lake, to: single/}\n";
    let (result, _, _) = run(&with_lake(spec(dir.path(), missing), &moto)).await;
    let reason = result.reason().unwrap();
    assert!(reason.contains("s3://raw/nope.csv"), "{reason}");
}

#[tokio::test]
async fn a_sensor_waits_for_its_object_and_times_out_without_it() {
    let Some(moto) = Moto::start() else { return };
    moto.boto("s3.create_bucket(Bucket='landing')");
    let dir = tempfile::tempdir().unwrap();
    // The object lands while the sensor pokes.
    let endpoint = moto.endpoint.clone();
    let python = moto.python.clone();
    let lands = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        let script = "import boto3, sys\nboto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1', aws_access_key_id='a', aws_secret_access_key='b').put_object(Bucket='landing', Key='2024-03-01/_SUCCESS', Body=b'')";
        std::process::Command::new(python).args(["-c", script, &endpoint]).status().unwrap();
    });
    let waits =
        "    sensor: {path: 's3://landing/{{ ds }}/_SUCCESS', connection: lake, poke_interval: 1s, timeout: 30s}\n";
    let (result, lines, log) = run(&with_lake(spec(dir.path(), waits), &moto)).await;
    lands.join().unwrap();
    assert_eq!(result.ending, Ending::Done, "{log}");
    assert!(
        lines.iter().any(|line| line.starts_with("nothing at `s3://landing/2024-03-01/_SUCCESS` yet")),
        "{lines:?}"
    );
    assert!(result.output.as_deref().unwrap().contains("2024-03-01/_SUCCESS"));

    // A prefix: any object under it; none comes, and the sensor gives up.
    let gives_up = "    sensor: {path: 's3://landing/2024-03-02/', connection: lake, poke_interval: 1s, timeout: 2s}\n";
    let (result, _, _) = run(&with_lake(spec(dir.path(), gives_up), &moto)).await;
    assert_eq!(result.reason().unwrap(), "nothing at `s3://landing/2024-03-02/` after 2s");
}

#[tokio::test]
async fn load_reads_its_file_from_s3() {
    let Some(moto) = Moto::start() else { return };
    let Some(database) = updraft_testkit::postgres::TestDatabase::create() else { return };
    moto.boto("s3.create_bucket(Bucket='raw')\ns3.put_object(Bucket='raw', Key='2024-03-01/prices.csv', ACL='public-read', Body=b'code,close\\n005930,71000\\n000660,150000.5\\n')");
    let dir = tempfile::tempdir().unwrap();
    let task = "    load: {source: 's3://raw/{{ ds }}/prices.csv', source_connection: lake, connection: warehouse, table: prices}\n";
    let mut loading = with_lake(spec(dir.path(), task), &moto);
    let mut secrets = (*loading.secrets).clone();
    secrets.connections.insert("warehouse".into(), updraft_secrets::connection_from_uri(&database.url).unwrap());
    loading.secrets = Arc::new(secrets);
    let (result, lines, log) = run(&loading).await;
    assert_eq!(result.ending, Ending::Done, "{log}");
    assert!(
        lines.iter().any(|line| line.starts_with("read 40 bytes from s3://raw/2024-03-01/prices.csv")),
        "{lines:?}"
    );
    let stored =
        updraft_testkit::postgres::psql(&database.url, "SELECT code || '=' || close FROM prices ORDER BY code")
            .unwrap();
    assert_eq!(stored.trim(), "000660=150000.5\n005930=71000");

    // An http task's raw answers saved to an object (here, moto serving the CSV).
    let fetch = format!(
        "    http: {{url: '{}/raw/2024-03-01/prices.csv', save_to: 's3://raw/answers/{{{{ ds }}}}.txt', save_connection: lake}}\n",
        moto.endpoint
    );
    let (result, lines, log) = run(&with_lake(spec(dir.path(), &fetch), &moto)).await;
    assert_eq!(result.ending, Ending::Done, "{log}");
    assert!(
        lines.iter().any(|line| line.starts_with("saved the answers to s3://raw/answers/2024-03-01.txt")),
        "{lines:?}"
    );
    let saved =
        moto.boto("print(s3.get_object(Bucket='raw', Key='answers/2024-03-01.txt')['Body'].read().decode(), end='')");
    assert_eq!(saved, "code,close\n005930,71000\n000660,150000.5\n\n");
}

/// Azurite (npm), Microsoft's Azure Storage emulator, on a free loopback port,
/// with a container made through its REST API; stopped when dropped.
struct Azurite {
    child: std::process::Child,
    port: u16,
    _data: tempfile::TempDir,
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The emulator's well-known account key (public, the same everywhere).
const AZURITE_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

impl Azurite {
    fn start(container: &str) -> Option<Azurite> {
        let Some(binary) = std::env::var("UPDRAFT_AZURITE").ok().map(PathBuf::from) else {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "Azurite is required under CI (.ci/run installs it)");
            #[allow(clippy::print_stderr)]
            {
                eprintln!("skipping: Azurite not found (set UPDRAFT_AZURITE to npm's azurite-blob)");
            }
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let data = tempfile::tempdir().unwrap();
        let child = std::process::Command::new(binary)
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string(), "--silent", "--disableTelemetry"])
            .arg("--location")
            .arg(data.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let azurite = Azurite { child, port, _data: data };
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(30), "Azurite did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        // Create Container, signed with the account key (SharedKey), by Python's standard library.
        let script = r#"
import base64, email.utils, hashlib, hmac, sys, urllib.request
port, container, key = sys.argv[1], sys.argv[2], base64.b64decode(sys.argv[3])
account, date, version, kind = "devstoreaccount1", email.utils.formatdate(usegmt=True), "2021-08-06", "application/octet-stream"
signed = "PUT" + "\n" * 5 + kind + "\n" * 7 + f"x-ms-date:{date}\nx-ms-version:{version}\n/{account}/{account}/{container}\nrestype:container"
signature = base64.b64encode(hmac.new(key, signed.encode(), hashlib.sha256).digest()).decode()
headers = {"x-ms-date": date, "x-ms-version": version, "Content-Type": kind, "Authorization": f"SharedKey {account}:{signature}"}
request = urllib.request.Request(f"http://127.0.0.1:{port}/{account}/{container}?restype=container", b"", headers, method="PUT")
print(urllib.request.urlopen(request).status)
"#;
        let output = std::process::Command::new("python3")
            .args(["-c", script, &port.to_string(), container, AZURITE_KEY])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        Some(azurite)
    }
}

#[tokio::test]
async fn copy_and_sync_through_azure_blob_storage_on_azurite() {
    let Some(azurite) = Azurite::start("lake") else { return };
    let dir = tempfile::tempdir().unwrap();
    let dags = dir.path().join("dags/sub");
    write(&dags, "export/prices.csv", "code,close\n005930,71000\n");
    write(&dags, "export/2024/volumes.csv", "code,volume\n005930,100\n");
    // Airflow's `wasb` shape: the account and its key; the emulator's endpoint.
    let with_azure = |mut spec: AttemptSpec| {
        let mut secrets = updraft_store::Secrets::default();
        let endpoint = format!("http://127.0.0.1:{}/devstoreaccount1", azurite.port);
        let extra = serde_json::json!({ "azure_endpoint": endpoint, "azure_allow_http": "true" }).to_string();
        secrets.connections.insert(
            "blob".into(),
            updraft_store::ConnectionValues {
                conn_type: "wasb".into(),
                login: Some("devstoreaccount1".into()),
                password: Some(AZURITE_KEY.into()),
                extra: Some(extra),
                ..Default::default()
            },
        );
        spec.secrets = Arc::new(secrets);
        spec
    };
    let up = "    copy: {from: export/, to: 'az://lake/prices/{{ ds }}/', to_connection: blob}\n";
    let (result, _, log) = run(&with_azure(spec(dir.path(), up))).await;
    assert_eq!(result.ending, Ending::Done, "{log}");
    let down = "    sync: {from: 'az://lake/prices/{{ ds }}/', from_connection: blob, to: back/}\n";
    let (result, _, log) = run(&with_azure(spec(dir.path(), down))).await;
    assert_eq!(result.ending, Ending::Done, "{log}");
    let output: serde_json::Value = serde_json::from_str(result.output.as_deref().unwrap()).unwrap();
    assert_eq!(output["copied"], 2, "{output}");
    assert_eq!(std::fs::read_to_string(dags.join("back/2024/volumes.csv")).unwrap(), "code,volume\n005930,100\n");
    let waits = "    sensor: {path: 'az://lake/prices/{{ ds }}/prices.csv', connection: blob, poke_interval: 1s, timeout: 5s}\n";
    let (result, _, log) = run(&with_azure(spec(dir.path(), waits))).await;
    assert_eq!(result.ending, Ending::Done, "{log}");
}
