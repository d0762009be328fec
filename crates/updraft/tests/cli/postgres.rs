//! The CLI on PostgreSQL.

use updraft_testkit::postgres::{TestDatabase, psql};

use crate::project;

#[test]
fn db_migrate_from_three_processes_at_once_applies_each_migration_once() {
    let Some(database) = TestDatabase::create() else { return };
    let mut p = project();
    p.env("UPDRAFT_DATABASE_URL", &database.url);
    let children: Vec<_> = (0..3)
        .map(|_| {
            p.command(&["db", "migrate"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../updraft-store/migrations/postgres"))
        .unwrap()
        .count();
    let versions = psql(
        &database.url,
        "SELECT count(DISTINCT version) || '/' || count(*) || '/' || bool_and(success) FROM _sqlx_migrations",
    )
    .unwrap();
    assert_eq!(versions, format!("{files}/{files}/true"), "one row per migration, each applied once");
    let again = p.run(&["db", "migrate"]);
    assert_eq!(again.code, 0);
    assert!(again.stderr.contains("up to date") || again.stdout.contains("up to date"), "{}", again.stderr);
}
