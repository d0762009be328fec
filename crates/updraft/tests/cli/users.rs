//! `updraft users ...`: accounts, with passwords stored only as argon2id hashes.

use std::io::Write;
use std::process::Stdio;

use crate::{bytes_contain as contains, database_bytes, project};

#[test]
fn accounts_are_created_listed_reset_and_deleted() {
    let p = project();
    let created = p.run(&["users", "create", "alice", "--role", "user", "--team", "finance", "--team", "ml"]);
    assert_eq!(created.code, 0, "{}", created.stderr);
    let password = created.stdout.trim().to_string();
    assert_eq!(password.len(), 32, "a generated password, shown once: {password}");
    assert!(created.stderr.contains("shown once"), "{}", created.stderr);
    let stored = database_bytes(&p);
    assert!(contains(&stored, "$argon2id$"), "the hash is stored");
    assert!(!contains(&stored, &password), "the password itself is not");

    let listed = p.run(&["users", "list", "-o", "json"]);
    let users: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(users[0]["username"], "alice");
    assert_eq!(users[0]["role"], "user");
    assert_eq!(users[0]["teams"], serde_json::json!(["finance", "ml"]));
    assert!(!listed.stdout.contains("argon2"), "hashes are not listed");

    let again = p.run(&["users", "create", "alice"]);
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("there is already a user `alice`"), "{}", again.stderr);
    let bad_role = p.run(&["users", "create", "bob", "--role", "root"]);
    assert_eq!(bad_role.code, 1);
    assert!(bad_role.stderr.contains("unknown role `root`"), "{}", bad_role.stderr);
    let bad_name = p.run(&["users", "create", "bob smith"]);
    assert_eq!(bad_name.code, 1);

    // A password from standard input, never echoed.
    let mut child = p
        .command(&["users", "reset-password", "alice", "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"a long enough secret\n").unwrap();
    let reset = child.wait_with_output().unwrap();
    assert!(reset.status.success(), "{}", String::from_utf8_lossy(&reset.stderr));
    assert!(!String::from_utf8_lossy(&reset.stdout).contains("secret"));
    assert!(!contains(&database_bytes(&p), "a long enough secret"));

    let mut child = p
        .command(&["users", "create", "carol", "--password-stdin"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"short\n").unwrap();
    let short = child.wait_with_output().unwrap();
    assert_eq!(short.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&short.stderr).contains("at least 10 characters"));

    assert_eq!(p.run(&["users", "reset-password", "nobody"]).code, 1);
    assert_eq!(p.run(&["users", "delete", "alice"]).code, 0);
    let gone = p.run(&["users", "delete", "alice"]);
    assert_eq!(gone.code, 1);
    assert!(gone.stderr.contains("no user `alice`"), "{}", gone.stderr);
}

#[test]
fn a_server_others_can_reach_requires_sign_in() {
    let p = project();
    let refused = p.run(&["webserver", "--host", "0.0.0.0", "--port", "0"]);
    assert_eq!(refused.code, 1);
    assert!(refused.stderr.contains("refusing to serve on `0.0.0.0` without sign-in"), "{}", refused.stderr);
    assert!(refused.stderr.contains("UPDRAFT_WEBSERVER__AUTH=password"), "{}", refused.stderr);
    let mut p = project();
    p.env("UPDRAFT_WEBSERVER__AUTH", "passwords");
    let typo = p.run(&["webserver", "--port", "0"]);
    assert_eq!(typo.code, 1);
    assert!(typo.stderr.contains("unknown `webserver.auth` `passwords`"), "{}", typo.stderr);
    let mut p = project();
    p.env("UPDRAFT_CORE__FERNET_KEY", "not-a-key");
    let bad_key = p.run(&["webserver", "--port", "0"]);
    assert_eq!(bad_key.code, 1, "a bad key stops the server before it serves");
    assert!(bad_key.stderr.contains("key 1 is not a Fernet key"), "{}", bad_key.stderr);
}

#[test]
fn tokens_are_shown_once_listed_without_secrets_and_revoked() {
    let p = project();
    assert_eq!(p.run(&["users", "create", "alice", "--role", "user"]).code, 0);
    let made = p.run(&["tokens", "create", "alice", "--name", "ci", "--scope", "write", "--expires-in", "30d"]);
    assert_eq!(made.code, 0, "{}", made.stderr);
    let secret = made.stdout.trim().to_string();
    assert!(secret.starts_with("updraft_") && secret.len() == 72, "{secret}");
    assert!(made.stderr.contains("shown once"), "{}", made.stderr);
    assert!(!contains(&database_bytes(&p), &secret), "only the hash is stored");
    let listed = p.run(&["tokens", "list", "-o", "json"]);
    let tokens: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(tokens[0]["name"], "ci");
    assert_eq!(tokens[0]["scope"], "write");
    assert!(tokens[0]["expires_at"].is_string());
    assert!(!listed.stdout.contains(&secret[8..]));
    assert_eq!(p.run(&["tokens", "create", "nobody", "--name", "x"]).code, 1);
    let bad = p.run(&["tokens", "create", "alice", "--name", "x", "--scope", "admin"]);
    assert!(bad.stderr.contains("unknown scope `admin`"), "{}", bad.stderr);
    let id = tokens[0]["id"].to_string();
    assert_eq!(p.run(&["tokens", "revoke", &id]).code, 0);
    assert_eq!(p.run(&["tokens", "revoke", &id]).code, 1);
}

/// The README's security walk-through: two teams, each limited to its DAGs, and a
/// connection whose password appears nowhere in clear — not in the database, a
/// log, an API answer, a page or `dags test` output.
#[test]
fn the_readme_security_walkthrough() {
    use updraft_testkit::http_request;
    let mut p = project();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    updraft_testkit::copy_tree(&repo.join("examples/dags"), &p.path().join("dags"));
    p.env("UPDRAFT_WEBSERVER__AUTH", "password");
    let key = p.run(&["variables", "set", "k", "v"]);
    let key = key.stderr.rsplit("this new one: ").next().unwrap().trim().to_string();
    assert_eq!(key.len(), 44, "a fresh key is offered: {key}");
    p.env("UPDRAFT_CORE__FERNET_KEY", &key);
    for (user, role, team) in [("ana", "user", Some("analytics")), ("max", "user", Some("ml")), ("olga", "op", None)] {
        let mut args = vec!["users", "create", user, "--role", role];
        args.extend(team.iter().flat_map(|team| ["--team", *team]));
        assert_eq!(p.run(&args).code, 0);
    }
    let token = |user: &str| {
        let made = p.run(&["tokens", "create", user, "--name", "walkthrough", "--scope", "write"]);
        assert_eq!(made.code, 0, "{}", made.stderr);
        made.stdout.trim().to_string()
    };
    let (ana, max, olga) = (token("ana"), token("max"), token("olga"));
    let server = p.standalone();
    let call = |token: &str, method: &str, path: &str, body: Option<&str>| {
        let bearer = format!("Bearer {token}");
        http_request(&server.address, method, path, &[("Authorization", bearer.as_str())], body)
    };
    let listed = |token: &str| {
        let (status, text) = call(token, "GET", "/api/v1/dags", None);
        assert_eq!(status, 200, "{text}");
        let list: serde_json::Value = serde_json::from_str(&text).unwrap();
        let ids: Vec<String> = list["dags"].as_array().unwrap().iter().map(|dag| dag["dag_id"].to_string()).collect();
        ids.join(",")
    };
    assert_eq!(listed(&ana), r#""daily_sales""#);
    assert_eq!(listed(&max), r#""partitioned_scores""#);
    assert_eq!(call(&ana, "GET", "/api/v1/dags/partitioned_scores", None).0, 403, "another team's DAG");
    assert_eq!(call(&max, "POST", "/api/v1/dags/daily_sales/runs", Some("{}")).0, 403);
    let mine = r#"{"conn_type": "postgres", "host": "mine"}"#;
    assert_eq!(
        call(&ana, "PUT", "/api/v1/connections/warehouse", Some(mine)).0,
        403,
        "users do not manage connections"
    );

    let password = "Wh-4ever-s3cret";
    let body = format!(
        r#"{{"conn_type": "postgres", "host": "db.internal", "login": "loader", "password": "{password}", "port": 5432}}"#
    );
    assert_eq!(call(&olga, "PUT", "/api/v1/connections/warehouse", Some(&body)).0, 204);
    let (_, shown) = call(&olga, "GET", "/api/v1/connections/warehouse", None);
    assert!(shown.contains(r#""password":"***""#), "{shown}");
    let (_, page) = call(&olga, "GET", "/connections", None);
    assert!(page.contains("db.internal"), "{page}");
    drop(server);

    p.dag(
        "uses_warehouse.yaml",
        "dag: uses_warehouse\nowner: analytics\ntasks:\n  load:\n    shell: echo \"psql postgres://{{ conn.warehouse.login }}:{{ conn.warehouse.password }}@{{ conn.warehouse.host }}/dw\"\n",
    );
    let tested = p.run(&["dags", "test", "uses_warehouse"]);
    assert_eq!(tested.code, 0, "{}", tested.stderr);
    let output = format!("{}{}", tested.stdout, tested.stderr);
    assert!(output.contains("psql postgres://loader:***@db.internal/dw"), "{output}");
    let got = p.run(&["connections", "get", "warehouse"]);
    assert!(got.stdout.contains("***"), "{}", got.stdout);

    let everything = crate::files_under(&p.path().join(".updraft")).concat();
    assert!(!contains(&everything, password), "nowhere in the state folder: database, WAL, logs");
    for text in [&shown, &page, &output, &got.stdout, &got.stderr] {
        assert!(!text.contains(password));
    }
}
