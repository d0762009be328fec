//! Sensors end to end through `dags test`: in reschedule mode each look is a
//! short attempt, the slot is free between looks, and looks use up no retries.

use crate::project;

#[test]
fn a_rescheduled_sensor_looks_again_without_using_retries_and_gives_up_in_time() {
    let p = project();
    p.dag(
        "landing.yaml",
        r#"dag: landing
tasks:
  arrives:
    shell: sleep 2 && mkdir -p landing && touch landing/_SUCCESS
  wait:
    sensor: {path: landing/_SUCCESS, poke_interval: 1s, timeout: 60s, mode: reschedule}
  never:
    sensor: {path: nowhere/, poke_interval: 1s, timeout: 2s, mode: reschedule}
  after:
    depends_on: [wait]
    shell: echo "landed"
"#,
    );
    let tested = p.run(&["dags", "test", "landing", "--date", "2024-03-01"]);
    let out = &tested.stdout;
    assert_eq!(tested.code, 1, "`never` fails: {out}\n{}", tested.stderr);
    assert!(out.contains("wait | up_for_retry (rescheduled: nothing yet, looking again in 1s)"), "{out}");
    assert!(out.contains("wait | success"), "{out}");
    assert!(out.contains("after | landed"), "{out}");
    // No retries were given (`dags test` without --retries), yet it looked again.
    let tries: Vec<&str> = out.lines().filter(|line| line.starts_with("wait | running (try ")).collect();
    assert!(tries.len() >= 2, "{out}");
    assert!(out.contains("never | failed (nothing at `nowhere/` after 2s)"), "{out}");
}
