//! Variables and connections, encrypted at rest with Fernet; Airflow's export
//! format; key rotation.

use std::os::unix::fs::PermissionsExt;

use crate::{bytes_contain as contains, database_bytes, project};

/// A fresh Fernet key, from the hint Updraft gives when none is set.
fn new_key(p: &updraft_testkit::Project) -> String {
    let refused = p.run(&["variables", "set", "k", "v"]);
    assert_eq!(refused.code, 1);
    assert!(refused.stderr.contains("no `core.fernet_key` is set"), "{}", refused.stderr);
    refused.stderr.rsplit("this new one: ").next().unwrap().trim().to_string()
}

#[test]
fn secrets_are_encrypted_at_rest_and_shown_only_when_asked() {
    let mut p = project();
    let key = new_key(&p);
    assert_eq!(key.len(), 44, "{key}");
    p.env("UPDRAFT_CORE__FERNET_KEY", &key);
    assert_eq!(p.run(&["variables", "set", "api_key", "sk-live-12345", "--description", "the vendor's"]).code, 0);
    assert_eq!(p.run(&["variables", "get", "api_key"]).stdout.trim(), "sk-live-12345");
    let listed = p.run(&["variables", "list", "-o", "json"]);
    assert!(listed.stdout.contains("the vendor's") && !listed.stdout.contains("sk-live"), "{}", listed.stdout);

    let uri = "postgres://loader:p%40ss%20word@db.internal:5432/warehouse?sslmode=require";
    let added = p.run(&["connections", "add", "warehouse", "--conn-uri", uri]);
    assert_eq!(added.code, 0, "{}", added.stderr);
    let shown: serde_json::Value = serde_json::from_str(&p.run(&["connections", "get", "warehouse"]).stdout).unwrap();
    assert_eq!(shown["conn_type"], "postgres");
    assert_eq!(shown["host"], "db.internal");
    assert_eq!(shown["login"], "loader");
    assert_eq!(shown["port"], 5432);
    assert_eq!(shown["schema"], "warehouse");
    assert_eq!(shown["password"], "***", "hidden unless asked");
    assert_eq!(shown["extra"], r#"{"sslmode":"require"}"#);
    let secret = p.run(&["connections", "get", "warehouse", "--show-secrets"]);
    assert!(secret.stdout.contains("p@ss word"), "{}", secret.stdout);
    let stored = database_bytes(&p);
    assert!(!contains(&stored, "sk-live-12345") && !contains(&stored, "p@ss word") && !contains(&stored, "sslmode"));

    // Airflow's export format, written for the owner only, read back elsewhere.
    let variables = p.path().join("variables.json");
    let connections = p.path().join("connections.json");
    assert_eq!(p.run(&["variables", "export", variables.to_str().unwrap()]).code, 0);
    assert_eq!(p.run(&["connections", "export", connections.to_str().unwrap()]).code, 0);
    assert_eq!(std::fs::metadata(&connections).unwrap().permissions().mode() & 0o777, 0o600);
    let exported: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&connections).unwrap()).unwrap();
    assert_eq!(exported["warehouse"]["password"], "p@ss word");
    let mut other = project();
    other.env("UPDRAFT_CORE__FERNET_KEY", &new_key(&other));
    assert_eq!(other.run(&["variables", "import", variables.to_str().unwrap()]).code, 0);
    assert_eq!(other.run(&["connections", "import", connections.to_str().unwrap()]).code, 0);
    assert_eq!(other.run(&["variables", "get", "api_key"]).stdout.trim(), "sk-live-12345");
    let copied = other.run(&["connections", "get", "warehouse", "--show-secrets"]);
    assert!(copied.stdout.contains("p@ss word"), "{}", copied.stdout);
}

#[test]
fn rotating_the_key_re_encrypts_everything() {
    let mut p = project();
    let old = new_key(&p);
    p.env("UPDRAFT_CORE__FERNET_KEY", &old);
    assert_eq!(p.run(&["variables", "set", "token", "abc-123-secret"]).code, 0);
    assert_eq!(
        p.run(&["connections", "add", "api", "--conn-type", "http", "--conn-password", "hunter2hunter2"]).code,
        0
    );
    let new = new_key(&project());
    // A new key first, the old one still listed after it.
    let mut p2 = p;
    p2.env("UPDRAFT_CORE__FERNET_KEY", &format!("{new},{old}"));
    let rotated = p2.run(&["rotate-fernet-key"]);
    assert_eq!(rotated.code, 0, "{}", rotated.stderr);
    assert!(rotated.stderr.contains("1 variable(s) and 1 connection(s)"), "{}", rotated.stderr);
    p2.env("UPDRAFT_CORE__FERNET_KEY", &new);
    assert_eq!(p2.run(&["variables", "get", "token"]).stdout.trim(), "abc-123-secret", "the new key alone reads");
    p2.env("UPDRAFT_CORE__FERNET_KEY", &old);
    let stale = p2.run(&["variables", "get", "token"]);
    assert_eq!(stale.code, 1);
    assert!(stale.stderr.contains("cannot be decrypted"), "{}", stale.stderr);
    assert!(!stale.stderr.contains("abc-123"));
    let bad = {
        p2.env("UPDRAFT_CORE__FERNET_KEY", "not-a-key");
        p2.run(&["variables", "get", "token"])
    };
    assert!(bad.stderr.contains("key 1 is not a Fernet key"), "{}", bad.stderr);
}

#[test]
fn tasks_use_variables_and_connections_and_their_logs_show_no_secret() {
    let mut p = project();
    p.env("UPDRAFT_CORE__FERNET_KEY", &new_key(&p));
    assert_eq!(p.run(&["variables", "set", "vendor_api_key", "sk-live-98765"]).code, 0);
    assert_eq!(p.run(&["variables", "set", "region", "eu-west-1"]).code, 0);
    let uri = "postgres://loader:hunter2hunter2@db.internal:5432/dw";
    assert_eq!(p.run(&["connections", "add", "warehouse", "--conn-uri", uri]).code, 0);
    p.dag(
        "secretive.yaml",
        "dag: secretive\ntasks:\n  use:\n    shell: |\n      echo \"key={{ var.value.vendor_api_key }} region={{ var.value.region }}\"\n      echo \"dsn=postgres://{{ conn.warehouse.login }}:{{ conn.warehouse.password }}@{{ conn.warehouse.host }}\"\n      echo \"env=$TOKEN\"\n    env:\n      TOKEN: 'Bearer {{ var.value.vendor_api_key }}'\n",
    );
    let tested = p.run(&["dags", "test", "secretive"]);
    assert_eq!(tested.code, 0, "{}\n{}", tested.stdout, tested.stderr);
    let shown = format!("{}{}", tested.stdout, tested.stderr);
    assert!(shown.contains("key=*** region=eu-west-1"), "{shown}");
    assert!(shown.contains("dsn=postgres://loader:***@db.internal"), "{shown}");
    assert!(shown.contains("env=Bearer ***"), "{shown}");
    assert!(!shown.contains("sk-live-98765") && !shown.contains("hunter2hunter2"), "{shown}");
    // Nor in any log file.
    let logs: Vec<String> = crate::files_under(&p.path().join(".updraft/logs"))
        .into_iter()
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .collect();
    assert!(!logs.is_empty(), "the attempt wrote a log");
    for log in &logs {
        assert!(log.contains("***") && !log.contains("sk-live-98765") && !log.contains("hunter2hunter2"), "{log}");
    }
}

#[test]
fn the_environment_backend_needs_no_key_and_is_masked() {
    let mut p = project();
    p.env("UPDRAFT_VAR_BUCKET", "raw-data-bucket");
    p.env("UPDRAFT_CONN_VENDOR", "https://svc:tok%2Fen@api.vendor.example:8443/v2");
    p.dag(
        "fromenv.yaml",
        "dag: fromenv\ntasks:\n  use: {shell: 'echo \"{{ var.value.bucket }} {{ conn.vendor.host }}:{{ conn.vendor.port }} {{ conn.vendor.password }}\"'}\n",
    );
    let tested = p.run(&["dags", "test", "fromenv"]);
    assert_eq!(tested.code, 0, "{}\n{}", tested.stdout, tested.stderr);
    let shown = format!("{}{}", tested.stdout, tested.stderr);
    assert!(shown.contains("*** api.vendor.example:8443 ***"), "{shown}");
    assert!(!shown.contains("raw-data-bucket") && !shown.contains("tok/en"), "{shown}");
}

#[test]
fn a_file_backend_sits_between_the_environment_and_the_database() {
    let mut p = project();
    p.env("UPDRAFT_CORE__FERNET_KEY", &new_key(&p));
    p.write(
        "updraft.toml",
        "[secrets]\ncache_ttl = \"1m\"\n\n[[secrets.backends]]\nkind = \"file\"\nvariables_file = \"secrets/variables.yaml\"\nconnections_file = \"secrets/connections.json\"\n",
    );
    p.write("secrets/variables.yaml", "region: file-region\nmode: from-file\nbucket: raw-landing-zone\n");
    p.write(
        "secrets/connections.json",
        r#"{"warehouse": {"conn_type": "postgres", "host": "filedb", "login": "etl", "password": "file-pw-777"}}"#,
    );
    assert_eq!(p.run(&["variables", "set", "region", "db-region"]).code, 0);
    assert_eq!(p.run(&["variables", "set", "only_db", "db-only-value"]).code, 0);
    p.env("UPDRAFT_VAR_MODE", "from-env");
    // The values go to a file (not masked) to show where each came from, and to
    // the log (masked) to show that backend values are hidden whatever their names.
    p.dag(
        "layered.yaml",
        "dag: layered\ntasks:\n  use:\n    shell: |\n      printf '%s|%s|%s|%s|%s' '{{ var.value.region }}' '{{ var.value.mode }}' '{{ var.value.only_db }}' '{{ conn.warehouse.host }}' '{{ conn.warehouse.password }}' > \"$OUT\"\n      echo 'log: {{ var.value.bucket }} {{ conn.warehouse.password }} {{ var.value.only_db }}'\n    env:\n      OUT: '{{ params.out }}'\n",
    );
    let out = p.path().join("values.txt");
    let tested = p.run(&["dags", "test", "layered", "--param", &format!("out={}", out.display())]);
    assert_eq!(tested.code, 0, "{}\n{}", tested.stdout, tested.stderr);
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "file-region|from-env|db-only-value|filedb|file-pw-777",
        "environment, then the file, then the database"
    );
    let shown = format!("{}{}", tested.stdout, tested.stderr);
    assert!(shown.contains("log: *** *** db-only-value"), "{shown}");
    assert!(!shown.contains("raw-landing-zone") && !shown.contains("file-pw-777"), "{shown}");

    // A broken secrets file fails the attempt with the file and position, not a value.
    p.write("secrets/variables.yaml", "region: file-region\nregion: hunter22\n");
    let failed = p.run(&["dags", "test", "layered", "--param", &format!("out={}", out.display())]);
    assert_eq!(failed.code, 1, "{}\n{}", failed.stdout, failed.stderr);
    let shown = format!("{}{}", failed.stdout, failed.stderr);
    assert!(shown.contains("variables.yaml:2:1: duplicate key `region`"), "{shown}");
    assert!(!shown.contains("hunter22"), "{shown}");
}

#[test]
fn a_backend_that_cannot_work_is_refused_at_start() {
    let p = project();
    p.write("updraft.toml", "[[secrets.backends]]\nkind = \"vault\"\nurl = \"http://127.0.0.1:1\"\n");
    p.dag("d.yaml", "dag: d\ntasks:\n  t: {shell: 'true'}\n");
    let refused = p.command(&["dags", "test", "d"]).env_remove("VAULT_TOKEN").output().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("secrets backend vault http://127.0.0.1:1: set `token` (or VAULT_TOKEN)"), "{stderr}");
    p.write("updraft.toml", "[[secrets.backends]]\nkind = \"keepass\"\n");
    let refused = p.run(&["dags", "test", "d"]);
    assert_eq!(refused.code, 1);
    assert!(refused.stderr.contains("updraft.toml:"), "{}", refused.stderr);
    assert!(refused.stderr.contains("keepass"), "{}", refused.stderr);
}
