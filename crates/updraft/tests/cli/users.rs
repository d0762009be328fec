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
