//! Throw-away PostgreSQL databases for tests.
//!
//! Where a server comes from, in order: `UPDRAFT_TEST_DATABASE_URL` (a server the
//! tests may create databases on), the machine's server on 127.0.0.1:5432 (user
//! `postgres`), else a temporary cluster started here with `initdb` and `pg_ctl`
//! from `/usr/lib/postgresql/*/bin`. Each test gets its own database, dropped
//! afterwards. Only if all three fail may a test skip, saying why; under `CI=true` a
//! skip is a failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A database that exists for one test.
pub struct TestDatabase {
    /// Connection URL of the database.
    pub url: String,
    /// URL of the server's maintenance database, for creating and dropping.
    admin_url: String,
    name: String,
    /// Keeps a temporary cluster alive while its databases are.
    _cluster: Option<Arc<TempCluster>>,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

impl TestDatabase {
    /// A fresh, empty database, or `None` after printing why none can be had.
    /// Panics instead of returning `None` under `CI=true`.
    pub fn create() -> Option<TestDatabase> {
        let (admin_url, cluster) = match server() {
            Ok(found) => found,
            Err(why) => {
                assert!(std::env::var("CI").as_deref() != Ok("true"), "no PostgreSQL for the tests under CI: {why}");
                // The one message a skipped test owes its reader.
                #[allow(clippy::print_stderr)]
                {
                    eprintln!("skipping: no PostgreSQL for this test: {why}");
                }
                return None;
            }
        };
        let name = format!(
            "updraft_test_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos())
        );
        psql(&admin_url, &format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|error| panic!("cannot create {name}: {error}"));
        Some(TestDatabase { url: with_database(&admin_url, &name), admin_url, name, _cluster: cluster })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let _ = psql(&self.admin_url, &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}

/// A server's maintenance URL, and the temporary cluster serving it if any.
type Server = Result<(String, Option<Arc<TempCluster>>), String>;

/// Finds a server once per test process.
fn server() -> Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            if let Ok(url) = std::env::var("UPDRAFT_TEST_DATABASE_URL") {
                return match psql(&url, "SELECT 1") {
                    Ok(_) => Ok((url, None)),
                    Err(error) => Err(format!("UPDRAFT_TEST_DATABASE_URL is set but unusable: {error}")),
                };
            }
            let local = "postgres://postgres@127.0.0.1:5432/postgres".to_string();
            if psql(&local, "SELECT 1").is_ok() {
                return Ok((local, None));
            }
            match TempCluster::start() {
                Ok(cluster) => Ok((cluster.admin_url(), Some(Arc::new(cluster)))),
                Err(error) => Err(format!("no server on 127.0.0.1:5432, and no temporary cluster: {error}")),
            }
        })
        .clone()
}

/// Runs one SQL command with `psql`; returns its output.
pub fn psql(url: &str, sql: &str) -> Result<String, String> {
    let output = Command::new("psql")
        .args([url, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGCONNECT_TIMEOUT", "5")
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("cannot run psql: {error}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
    }
}

fn with_database(url: &str, database: &str) -> String {
    match url.rfind('/') {
        Some(slash) if url[..slash].contains("://") && slash > url.find("://").map_or(0, |at| at + 2) => {
            let query = url[slash..].find('?').map_or("", |at| &url[slash + at..]);
            format!("{}/{database}{query}", &url[..slash])
        }
        _ => format!("{url}/{database}"),
    }
}

/// A PostgreSQL cluster of the test's own, on a free loopback port, in a temporary
/// folder; stopped and removed when dropped. It can be stopped and started again
/// (to test reconnecting).
pub struct TempCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    /// As root, the cluster runs as `postgres` (PostgreSQL refuses root).
    as_postgres: bool,
    state: Mutex<bool>,
}

impl TempCluster {
    pub fn start() -> Result<TempCluster, String> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .map_err(|error| format!("no /usr/lib/postgresql: {error}"))?
            .filter_map(|entry| Some(entry.ok()?.path().join("bin")))
            .filter(|bin| bin.join("initdb").exists())
            .max()
            .ok_or("no initdb under /usr/lib/postgresql/*/bin")?;
        let as_postgres = rustix_is_root();
        let dir = tempfile::Builder::new().prefix("updraft-pg").tempdir().map_err(|error| error.to_string())?;
        if as_postgres {
            run("chown", &["-R", "postgres:postgres", &dir.path().display().to_string()])?;
        }
        let data = dir.path().join("data");
        let cluster = TempCluster { port: free_port()?, dir, bin, as_postgres, state: Mutex::new(false) };
        cluster.pg(&["initdb", "-D", &data.display().to_string(), "-U", "postgres", "-A", "trust", "--no-sync"])?;
        cluster.start_server()?;
        Ok(cluster)
    }

    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn start_server(&self) -> Result<(), String> {
        let options =
            format!("-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off", self.port, self.dir.path().display());
        let log = self.dir.path().join("postgres.log");
        self.pg(&[
            "pg_ctl",
            "-D",
            &self.data().display().to_string(),
            "-l",
            &log.display().to_string(),
            "-o",
            &options,
            "-w",
            "start",
        ])?;
        *self.state.lock().expect("cluster state") = true;
        let deadline = Instant::now() + Duration::from_secs(30);
        while psql(&self.admin_url(), "SELECT 1").is_err() {
            if Instant::now() > deadline {
                return Err("the temporary cluster did not accept connections".to_string());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Stops the server at once (`immediate`: like a crash, no clean shutdown).
    pub fn stop_server(&self) -> Result<(), String> {
        self.pg(&["pg_ctl", "-D", &self.data().display().to_string(), "-m", "immediate", "-w", "stop"])?;
        *self.state.lock().expect("cluster state") = false;
        Ok(())
    }

    fn pg(&self, args: &[&str]) -> Result<(), String> {
        let program = self.bin.join(args[0]).display().to_string();
        if self.as_postgres {
            let mut full = vec!["-u", "postgres", "--", program.as_str()];
            full.extend_from_slice(&args[1..]);
            run("runuser", &full)
        } else {
            run(&program, &args[1..])
        }
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        if *self.state.lock().expect("cluster state") {
            let _ = self.stop_server();
        }
    }
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("cannot run {program}: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("{program} failed: {}", String::from_utf8_lossy(&output.stderr).trim()))
    }
}

fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|error| error.to_string())?;
    Ok(listener.local_addr().map_err(|error| error.to_string())?.port())
}

fn rustix_is_root() -> bool {
    Path::new("/proc/self/status").exists()
        && std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| status.lines().find(|line| line.starts_with("Uid:")).map(str::to_string))
            .is_some_and(|line| line.split_whitespace().nth(1) == Some("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_cluster_starts_stops_and_restarts() {
        let cluster = TempCluster::start().expect("a temporary cluster starts");
        assert_eq!(psql(&cluster.admin_url(), "SELECT 40 + 2").unwrap(), "42");
        cluster.stop_server().unwrap();
        assert!(psql(&cluster.admin_url(), "SELECT 1").is_err(), "stopped means unreachable");
        cluster.start_server().unwrap();
        assert_eq!(psql(&cluster.admin_url(), "SELECT 1").unwrap(), "1");
    }

    #[test]
    fn database_urls() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
            "postgres://postgres@127.0.0.1:5432/t1"
        );
        assert_eq!(with_database("postgres://u:p@h/db?sslmode=disable", "t1"), "postgres://u:p@h/t1?sslmode=disable");
        assert_eq!(with_database("postgres://h:5432", "t1"), "postgres://h:5432/t1");
    }
}
