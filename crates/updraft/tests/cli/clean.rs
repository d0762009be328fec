//! `db clean`: old finished runs go, with their task instances and log folders.

use crate::{CHAIN, project};

#[test]
fn db_clean_counts_then_removes_old_runs_and_their_logs() {
    let p = project();
    p.dag("chain.yaml", CHAIN);
    let tested = p.run(&["dags", "test", "chain", "--date", "2024-03-01"]);
    assert_eq!(tested.code, 0, "{}", tested.stderr);
    let logs = p.path().join(".updraft/logs/chain/test__2024-03-01T00:00:00+00:00");
    assert!(logs.is_dir());

    let kept = p.run(&["db", "clean", "--older-than", "1d"]);
    assert!(kept.stdout.starts_with("removed 0 run(s)"), "a run that just ended is not old: {}", kept.stdout);
    let counted = p.run(&["db", "clean", "--older-than", "0s", "--dry-run"]);
    assert!(
        counted.stdout.starts_with("would remove 1 run(s), 3 task instance(s), 3 attempt(s)"),
        "{}",
        counted.stdout
    );
    assert!(logs.is_dir(), "a dry run deletes nothing");
    let removed = p.run(&["db", "clean", "--older-than", "0s"]);
    assert!(removed.stdout.starts_with("removed 1 run(s), 3 task instance(s)"), "{}", removed.stdout);
    assert!(removed.stdout.contains(", 1 log folder(s)"), "{}", removed.stdout);
    assert!(!logs.exists());
    let listed = p.run(&["dags", "list-runs", "chain"]);
    assert!(!listed.stdout.contains("test__2024-03-01"), "{}", listed.stdout);
    let bad = p.run(&["db", "clean", "--older-than", "ninety days"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
}
