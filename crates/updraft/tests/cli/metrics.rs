//! Metrics: StatsD lines received by a UDP listener on loopback, and `/metrics`
//! read by a Prometheus text-format parser, after a run.

use std::time::Duration;

use updraft_testkit::eventually;

use crate::{CHAIN, project};

#[test]
fn a_run_shows_in_statsd_lines_and_on_the_prometheus_endpoint() {
    let statsd = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    statsd.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut p = project();
    p.env("UPDRAFT_METRICS__STATSD_HOST", "127.0.0.1");
    p.env("UPDRAFT_METRICS__STATSD_PORT", &statsd.local_addr().unwrap().port().to_string());
    p.env("UPDRAFT_METRICS__STATSD_DATADOG", "true");
    p.dag("chain.yaml", CHAIN);
    let standalone = p.standalone();
    let output = p.run(&["dags", "trigger", "chain", "--wait"]);
    assert_eq!(output.code, 0, "{}", output.stderr);

    // StatsD: Airflow's names, the labels also as DogStatsD tags.
    let mut lines = Vec::new();
    eventually(Duration::from_secs(10), "the StatsD lines of the run", || {
        let mut buffer = [0u8; 2048];
        while let Ok(size) = statsd.recv(&mut buffer) {
            lines.push(String::from_utf8_lossy(&buffer[..size]).into_owned());
        }
        lines
            .iter()
            .any(|line| {
                line.starts_with("airflow.ti.finish:1|c|#dag_id:chain,task_id:") && line.ends_with(",state:success")
            })
            .then_some(())
    });
    assert!(lines.iter().any(|line| line == "airflow.scheduler_heartbeat:1|c"), "{lines:?}");
    assert!(lines.iter().any(|line| line.starts_with("airflow.dagbag_size:1|g")), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|line| line.starts_with("airflow.dag.duration:") && line.contains("|ms|#dag_id:chain,task_id:")),
        "{lines:?}"
    );
    eventually(Duration::from_secs(5), "the run's duration", || {
        let mut buffer = [0u8; 2048];
        while let Ok(size) = statsd.recv(&mut buffer) {
            lines.push(String::from_utf8_lossy(&buffer[..size]).into_owned());
        }
        lines
            .iter()
            .any(|line| line.starts_with("airflow.dagrun.duration:") && line.ends_with("|#state:success,dag_id:chain"))
            .then_some(())
    });

    // Prometheus: the same, parsed.
    let (status, body) = standalone.get("/metrics");
    assert_eq!(status, 200, "{body}");
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|line| Ok(line.to_string()))).unwrap();
    let finished: f64 = scrape
        .samples
        .iter()
        .filter(|sample| sample.metric == "airflow_ti_finish" && sample.labels.get("state") == Some("success"))
        .map(|sample| match sample.value {
            prometheus_parse::Value::Counter(value) | prometheus_parse::Value::Untyped(value) => value,
            _ => 0.0,
        })
        .sum();
    let tasks = p.run(&["tasks", "states-for-dag-run", "chain", output.stdout.trim(), "-o", "json"]);
    let count = serde_json::from_str::<serde_json::Value>(&tasks.stdout).unwrap().as_array().unwrap().len();
    assert_eq!(finished, count as f64, "{body}");
    assert!(scrape.samples.iter().any(|sample| sample.metric == "airflow_pool_open_slots"), "{body}");
    assert!(scrape.docs.contains_key("airflow_scheduler_heartbeat"), "{body}");
    // What Airflow lacks: ready -> running per task, a histogram.
    let delays = scrape
        .samples
        .iter()
        .find(|sample| sample.metric == "airflow_ti_scheduling_delay" && sample.labels.get("dag_id") == Some("chain"));
    assert!(
        matches!(delays.map(|sample| &sample.value), Some(prometheus_parse::Value::Histogram(buckets)) if !buckets.is_empty()),
        "{body}"
    );
}
