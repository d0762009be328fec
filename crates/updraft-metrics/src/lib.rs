//! Metrics under Airflow's names, so dashboards built for Airflow keep working:
//! every metric is recorded in one registry that `/metrics` renders in
//! Prometheus's text format, and, when configured, sent as StatsD (or DogStatsD,
//! with tags) lines over UDP. Sending never blocks and never fails a caller.
//!
//! A metric's StatsD name embeds its labels as Airflow's does
//! (`ti.finish.<dag_id>.<task_id>.<state>`); its Prometheus name is the prefix and
//! the name without the labels, dots as underscores
//! (`airflow_ti_finish{dag_id="...",task_id="...",state="..."}`), as the usual
//! statsd-exporter mappings for Airflow make it. Hand-made rather than the
//! `metrics` crates: one registry serving both, with Airflow's naming, in little code.

pub mod catalog;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::UdpSocket;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// What a metric counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    /// Durations: a StatsD timer (ms), a Prometheus histogram (seconds).
    Timer,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Timer => "timer",
        }
    }
}

/// One metric: its StatsD name with `{label}` placeholders, as Airflow names it.
#[derive(Debug)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

impl Metric {
    /// The name without its labels: `ti.finish` of `ti.finish.{dag_id}.{task_id}.{state}`,
    /// `dag.duration` of `dag.{dag_id}.{task_id}.duration`.
    pub fn base(&self) -> String {
        self.name.split('.').filter(|part| !part.starts_with('{')).collect::<Vec<_>>().join(".")
    }

    /// The label names, in order.
    pub fn labels(&self) -> Vec<&'static str> {
        self.name.split('.').filter_map(|part| part.strip_prefix('{')?.strip_suffix('}')).collect()
    }

    pub fn prometheus_name(&self, prefix: &str) -> String {
        let base = self.base().replace(['.', '-'], "_");
        if prefix.is_empty() { base } else { format!("{prefix}_{base}") }
    }

    /// The StatsD name with the label values put in.
    fn statsd_name(&self, values: &[&str]) -> String {
        let mut values = values.iter();
        self.name
            .split('.')
            .map(|part| {
                if part.starts_with('{') {
                    values.next().map(|value| value.replace([':', '|', '@', '#', '\n'], "_")).unwrap_or_default()
                } else {
                    part.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join(".")
    }
}

/// Where StatsD lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsdConfig {
    /// `host:port`.
    pub address: String,
    pub prefix: String,
    /// DogStatsD: the name without labels, the labels as tags (`ti.finish|#dag_id:etl,...`).
    pub datadog: bool,
}

/// Histogram buckets, in seconds.
const BUCKETS: [f64; 16] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0];

#[derive(Debug, Clone)]
enum Value {
    Counter(u64),
    Gauge(f64),
    Timer { buckets: [u64; BUCKETS.len()], sum: f64, count: u64 },
}

type Series = BTreeMap<(&'static str, Vec<String>), (&'static Metric, Value)>;

/// One series as rendered: its metric, label values and value.
type Recorded = (&'static Metric, Vec<String>, Value);

/// The registry, and the StatsD sink if any.
pub struct Registry {
    prefix: Mutex<String>,
    series: Mutex<Series>,
    statsd: Mutex<Option<(UdpSocket, StatsdConfig)>>,
}

static REGISTRY: OnceLock<Registry> = OnceLock::new();

/// The process's registry.
pub fn registry() -> &'static Registry {
    REGISTRY.get_or_init(|| Registry {
        prefix: Mutex::new("airflow".to_string()),
        series: Mutex::new(BTreeMap::new()),
        statsd: Mutex::new(None),
    })
}

/// Sets the Prometheus prefix and, if given, where StatsD lines go.
pub fn configure(prometheus_prefix: &str, statsd: Option<StatsdConfig>) -> std::io::Result<()> {
    let registry = registry();
    *registry.prefix.lock().expect("metrics lock") = prometheus_prefix.to_string();
    let sink = match statsd {
        Some(config) => {
            let socket = UdpSocket::bind(if config.address.starts_with('[') { "[::]:0" } else { "0.0.0.0:0" })?;
            socket.connect(&config.address)?;
            socket.set_nonblocking(true)?;
            Some((socket, config))
        }
        None => None,
    };
    *registry.statsd.lock().expect("metrics lock") = sink;
    Ok(())
}

/// Adds 1 to a counter; `labels` are the values of its placeholders, in order.
pub fn incr(metric: &'static Metric, labels: &[&str]) {
    registry().record(metric, labels, Sample::Count(1));
}

pub fn gauge(metric: &'static Metric, labels: &[&str], value: f64) {
    registry().record(metric, labels, Sample::Gauge(value));
}

pub fn timing(metric: &'static Metric, labels: &[&str], duration: Duration) {
    registry().record(metric, labels, Sample::Time(duration));
}

/// Everything recorded, in Prometheus's text format.
pub fn render() -> String {
    registry().render()
}

enum Sample {
    Count(u64),
    Gauge(f64),
    Time(Duration),
}

impl Registry {
    fn record(&self, metric: &'static Metric, labels: &[&str], sample: Sample) {
        debug_assert_eq!(metric.labels().len(), labels.len(), "labels of {}", metric.name);
        {
            let mut series = self.series.lock().expect("metrics lock");
            let key = (metric.name, labels.iter().map(|value| value.to_string()).collect());
            let entry = series.entry(key).or_insert_with(|| {
                let value = match metric.kind {
                    Kind::Counter => Value::Counter(0),
                    Kind::Gauge => Value::Gauge(0.0),
                    Kind::Timer => Value::Timer { buckets: [0; BUCKETS.len()], sum: 0.0, count: 0 },
                };
                (metric, value)
            });
            match (&mut entry.1, &sample) {
                (Value::Counter(total), Sample::Count(n)) => *total += n,
                (Value::Gauge(current), Sample::Gauge(value)) => *current = *value,
                (Value::Timer { buckets, sum, count }, Sample::Time(duration)) => {
                    let seconds = duration.as_secs_f64();
                    for (bucket, bound) in buckets.iter_mut().zip(BUCKETS) {
                        if seconds <= bound {
                            *bucket += 1;
                        }
                    }
                    *sum += seconds;
                    *count += 1;
                }
                _ => debug_assert!(false, "{} recorded as another kind", metric.name),
            }
        }
        if let Some((socket, config)) = self.statsd.lock().expect("metrics lock").as_ref() {
            // Fire and forget: a full buffer or an absent listener loses the line only.
            let _ = socket.send(statsd_line(metric, labels, &sample, config).as_bytes());
        }
    }

    fn render(&self) -> String {
        let prefix = self.prefix.lock().expect("metrics lock").clone();
        let series = self.series.lock().expect("metrics lock").clone();
        let mut out = String::new();
        // Series sharing a Prometheus name (one metric, several label values) are
        // written together under one HELP and TYPE.
        let mut by_name: BTreeMap<String, Vec<Recorded>> = BTreeMap::new();
        for ((_, values), (metric, value)) in series {
            by_name.entry(metric.prometheus_name(&prefix)).or_default().push((metric, values, value));
        }
        for (name, samples) in by_name {
            let metric = samples[0].0;
            let kind = match metric.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Timer => "histogram",
            };
            let _ = writeln!(out, "# HELP {name} {}", metric.help);
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (metric, values, value) in samples {
                let labels: Vec<String> = metric
                    .labels()
                    .iter()
                    .zip(&values)
                    .map(|(label, value)| format!("{label}=\"{}\"", escape(value)))
                    .collect();
                let braces = |extra: Option<String>| {
                    let mut all = labels.clone();
                    all.extend(extra);
                    if all.is_empty() { String::new() } else { format!("{{{}}}", all.join(",")) }
                };
                match value {
                    Value::Counter(total) => {
                        let _ = writeln!(out, "{name}{} {total}", braces(None));
                    }
                    Value::Gauge(current) => {
                        let _ = writeln!(out, "{name}{} {current}", braces(None));
                    }
                    Value::Timer { buckets, sum, count } => {
                        for (bound, n) in BUCKETS.iter().zip(buckets) {
                            let _ = writeln!(out, "{name}_bucket{} {n}", braces(Some(format!("le=\"{bound}\""))));
                        }
                        let _ = writeln!(out, "{name}_bucket{} {count}", braces(Some("le=\"+Inf\"".to_string())));
                        let _ = writeln!(out, "{name}_sum{} {sum}", braces(None));
                        let _ = writeln!(out, "{name}_count{} {count}", braces(None));
                    }
                }
            }
        }
        out
    }
}

/// One StatsD line. DogStatsD: the name without its labels, the labels as tags
/// (what Datadog's Airflow integration maps Airflow's names to); StatsD: Airflow's
/// names with the labels in them.
fn statsd_line(metric: &Metric, labels: &[&str], sample: &Sample, config: &StatsdConfig) -> String {
    let value = match sample {
        Sample::Count(n) => format!("{n}|c"),
        Sample::Gauge(value) => format!("{value}|g"),
        Sample::Time(duration) => format!("{}|ms", duration.as_secs_f64() * 1000.0),
    };
    let name = if config.datadog { metric.base() } else { metric.statsd_name(labels) };
    let mut line =
        if config.prefix.is_empty() { format!("{name}:{value}") } else { format!("{}.{name}:{value}", config.prefix) };
    if config.datadog && !labels.is_empty() {
        let tags: Vec<String> =
            metric.labels().iter().zip(labels).map(|(name, value)| format!("{name}:{value}")).collect();
        line.push_str(&format!("|#{}", tags.join(",")));
    }
    line
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_airflow_for_statsd_and_prometheus() {
        let metric = &catalog::TI_FINISH;
        assert_eq!(metric.base(), "ti.finish");
        assert_eq!(metric.labels(), ["dag_id", "task_id", "state"]);
        assert_eq!(metric.prometheus_name("airflow"), "airflow_ti_finish");
        assert_eq!(metric.statsd_name(&["etl", "load", "success"]), "ti.finish.etl.load.success");
        assert_eq!(metric.statsd_name(&["a:b|c", "t", "s"]), "ti.finish.a_b_c.t.s");
    }

    #[test]
    fn statsd_lines_carry_labels_in_the_name_or_as_dogstatsd_tags() {
        let plain = StatsdConfig { address: String::new(), prefix: "airflow".into(), datadog: false };
        let line = statsd_line(&catalog::TI_FINISH, &["etl", "load", "failed"], &Sample::Count(1), &plain);
        assert_eq!(line, "airflow.ti.finish.etl.load.failed:1|c");
        let dog = StatsdConfig { datadog: true, ..plain.clone() };
        let line =
            statsd_line(&catalog::TASK_DURATION, &["etl", "load"], &Sample::Time(Duration::from_millis(1500)), &dog);
        assert_eq!(line, "airflow.dag.duration:1500|ms|#dag_id:etl,task_id:load");
        let bare = StatsdConfig { prefix: String::new(), ..plain };
        assert_eq!(statsd_line(&catalog::DAGBAG_SIZE, &[], &Sample::Gauge(3.0), &bare), "dagbag_size:3|g");
    }

    #[test]
    fn the_registry_renders_every_kind_in_prometheus_text() {
        incr(&catalog::TI_FINISH, &["etl", "load", "success"]);
        incr(&catalog::TI_FINISH, &["etl", "load", "success"]);
        incr(&catalog::TI_FINISH, &["etl", "say \"hi\"", "failed"]);
        gauge(&catalog::POOL_OPEN_SLOTS, &["default"], 120.0);
        timing(&catalog::TASK_DURATION, &["etl", "load"], Duration::from_millis(30));
        let text = render();
        assert!(text.contains("# TYPE airflow_ti_finish counter\n"), "{text}");
        assert!(text.contains("airflow_ti_finish{dag_id=\"etl\",task_id=\"load\",state=\"success\"} 2\n"), "{text}");
        assert!(text.contains("task_id=\"say \\\"hi\\\"\""), "{text}");
        assert!(text.contains("airflow_pool_open_slots{pool=\"default\"} 120\n"), "{text}");
        assert!(
            text.contains("airflow_dag_duration_bucket{dag_id=\"etl\",task_id=\"load\",le=\"0.05\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("airflow_dag_duration_bucket{dag_id=\"etl\",task_id=\"load\",le=\"0.025\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("airflow_dag_duration_count{dag_id=\"etl\",task_id=\"load\"} 1\n"), "{text}");
        assert_eq!(text.matches("# TYPE airflow_ti_finish ").count(), 1);
    }
}

#[cfg(test)]
mod docs {
    /// `docs/metrics.md` lists exactly the catalog, with its kinds and meanings.
    #[test]
    fn the_docs_list_every_metric_and_no_other() {
        let text = include_str!("../../../docs/metrics.md");
        let rows: Vec<String> =
            text.lines().filter(|line| line.starts_with("| `")).map(|line| line.trim().to_string()).collect();
        let expected: Vec<String> = crate::catalog::ALL
            .iter()
            .map(|metric| format!("| `{}` | {} | {} |", metric.name, metric.kind.as_str(), metric.help))
            .collect();
        assert_eq!(rows, expected);
    }
}

#[cfg(test)]
mod dashboards {
    use crate::catalog::ALL;

    /// Words made of `allowed` characters that start with `start`, in `text`.
    fn words<'a>(text: &'a str, start: &str, allowed: impl Fn(char) -> bool + Copy) -> Vec<&'a str> {
        let mut found = Vec::new();
        let mut rest = text;
        while let Some(at) = rest.find(start) {
            let word = &rest[at..];
            let end = word.char_indices().find(|(_, c)| !allowed(*c)).map_or(word.len(), |(i, _)| i);
            found.push(&word[..end]);
            rest = &word[end..];
        }
        found
    }

    /// The shipped dashboards query only metrics Updraft sends, by the names it
    /// sends them under; the Grafana one shows all but a few per-task counters.
    #[test]
    fn the_dashboards_use_only_metrics_of_the_catalog() {
        let grafana: serde_json::Value =
            serde_json::from_str(include_str!("../../../deploy/dashboards/grafana-updraft.json")).unwrap();
        let prometheus: Vec<String> = ALL.iter().map(|metric| metric.prometheus_name("airflow")).collect();
        let mut used = std::collections::BTreeSet::new();
        for panel in grafana["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                for word in words(expr, "airflow_", |c| c.is_ascii_alphanumeric() || c == '_') {
                    let name = ["_bucket", "_sum", "_count"].iter().fold(word, |name, suffix| {
                        name.strip_suffix(suffix)
                            .filter(|base| prometheus.iter().any(|known| known == base))
                            .unwrap_or(name)
                    });
                    assert!(prometheus.iter().any(|known| known == name), "Grafana queries unknown `{word}`");
                    used.insert(name.to_string());
                }
            }
        }
        let datadog: serde_json::Value =
            serde_json::from_str(include_str!("../../../deploy/dashboards/datadog-updraft.json")).unwrap();
        let statsd: Vec<String> = ALL.iter().map(|metric| format!("airflow.{}", metric.base())).collect();
        for widget in datadog["widgets"].as_array().unwrap() {
            for request in widget["definition"]["requests"].as_array().unwrap() {
                let query = request["q"].as_str().unwrap();
                for word in words(query, "airflow.", |c| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
                    assert!(statsd.iter().any(|known| known == word), "Datadog queries unknown `{word}`");
                }
            }
        }
        let unused: Vec<&String> = prometheus.iter().filter(|name| !used.contains(*name)).collect();
        let allowed_unused = [
            "airflow_ti_start",
            "airflow_ti_successes",
            "airflow_ti_failures",
            "airflow_dag_duration",
            "airflow_dagrun_schedule_delay",
        ];
        assert!(
            unused.iter().all(|name| allowed_unused.contains(&name.as_str())),
            "not on the Grafana dashboard: {unused:?}"
        );
    }
}
