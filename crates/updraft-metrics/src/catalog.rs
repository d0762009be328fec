//! Every metric Updraft sends, under Airflow's names and meanings. `docs/metrics.md`
//! lists exactly these (a test keeps the two equal).

use crate::{Kind, Metric};

pub const SCHEDULER_HEARTBEAT: Metric =
    Metric { name: "scheduler_heartbeat", kind: Kind::Counter, help: "Scheduler loops (heartbeats)." };
pub const DAG_PROCESSING_TOTAL_PARSE_TIME: Metric = Metric {
    name: "dag_processing.total_parse_time",
    kind: Kind::Gauge,
    help: "Seconds the last read of the DAGs folder took.",
};
pub const DAG_PROCESSING_IMPORT_ERRORS: Metric =
    Metric { name: "dag_processing.import_errors", kind: Kind::Gauge, help: "DAG files that do not parse now." };
pub const DAGBAG_SIZE: Metric = Metric { name: "dagbag_size", kind: Kind::Gauge, help: "DAGs read from the folder." };
pub const POOL_OPEN_SLOTS: Metric =
    Metric { name: "pool.open_slots.{pool}", kind: Kind::Gauge, help: "Free slots of a pool." };
pub const POOL_RUNNING_SLOTS: Metric = Metric {
    name: "pool.running_slots.{pool}",
    kind: Kind::Gauge,
    help: "Slots of a pool held by queued or running tasks.",
};
pub const EXECUTOR_OPEN_SLOTS: Metric =
    Metric { name: "executor.open_slots", kind: Kind::Gauge, help: "Free runner slots of this process." };
pub const EXECUTOR_RUNNING_TASKS: Metric =
    Metric { name: "executor.running_tasks", kind: Kind::Gauge, help: "Attempts this process runs now." };
pub const TI_START: Metric =
    Metric { name: "ti.start.{dag_id}.{task_id}", kind: Kind::Counter, help: "Attempts started." };
pub const TI_FINISH: Metric = Metric {
    name: "ti.finish.{dag_id}.{task_id}.{state}",
    kind: Kind::Counter,
    help: "Attempts ended, by the state they left the task in.",
};
pub const TI_SUCCESSES: Metric = Metric { name: "ti_successes", kind: Kind::Counter, help: "Attempts that succeeded." };
pub const TI_FAILURES: Metric =
    Metric { name: "ti_failures", kind: Kind::Counter, help: "Attempts that failed (retried or not)." };
pub const TASK_DURATION: Metric = Metric {
    name: "dag.{dag_id}.{task_id}.duration",
    kind: Kind::Timer,
    help: "How long attempts ran (Airflow's task duration timer).",
};

pub const SCHEDULER_TASKS_STARVING: Metric = Metric {
    name: "scheduler.tasks.starving",
    kind: Kind::Gauge,
    help: "Ready tasks the last scheduling pass held because their pool was full.",
};
pub const DAGRUN_DURATION: Metric = Metric {
    name: "dagrun.duration.{state}.{dag_id}",
    kind: Kind::Timer,
    help: "How long runs took, from start to end, by how they ended.",
};
pub const DAGRUN_SCHEDULE_DELAY: Metric = Metric {
    name: "dagrun.schedule_delay.{dag_id}",
    kind: Kind::Timer,
    help: "How late scheduled runs started after their data interval ended.",
};

pub const TI_SCHEDULING_DELAY: Metric = Metric {
    name: "ti.scheduling_delay.{dag_id}.{task_id}",
    kind: Kind::Timer,
    help: "From ready (trigger rule met, or retry due) to the attempt's start: Updraft's own.",
};

pub const SLA_MISSED: Metric =
    Metric { name: "sla_missed", kind: Kind::Counter, help: "Deadlines missed (runs and tasks), once per run each." };
pub const DAGRUN_DEADLINE_MISSED: Metric = Metric {
    name: "dagrun.deadline_missed.{dag_id}",
    kind: Kind::Counter,
    help: "Scheduled runs that missed their DAG's `deadline`: Updraft's own.",
};
pub const TI_DEADLINE_MISSED: Metric = Metric {
    name: "ti.deadline_missed.{dag_id}.{task_id}",
    kind: Kind::Counter,
    help: "Runs in which a task missed its `deadline`: Updraft's own.",
};
pub const ALERTS_SENT: Metric = Metric {
    name: "alerts.sent.{notifier}",
    kind: Kind::Counter,
    help: "Alert messages a notifier accepted (a rate-limit summary counts once).",
};
pub const ALERTS_FAILED: Metric = Metric {
    name: "alerts.failed.{notifier}",
    kind: Kind::Counter,
    help: "Tries to send an alert that failed (each retried in the background).",
};

pub const ALL: &[&Metric] = &[
    &SCHEDULER_HEARTBEAT,
    &DAG_PROCESSING_TOTAL_PARSE_TIME,
    &DAG_PROCESSING_IMPORT_ERRORS,
    &DAGBAG_SIZE,
    &POOL_OPEN_SLOTS,
    &POOL_RUNNING_SLOTS,
    &EXECUTOR_OPEN_SLOTS,
    &EXECUTOR_RUNNING_TASKS,
    &TI_START,
    &TI_FINISH,
    &TI_SUCCESSES,
    &TI_FAILURES,
    &TASK_DURATION,
    &SCHEDULER_TASKS_STARVING,
    &DAGRUN_DURATION,
    &DAGRUN_SCHEDULE_DELAY,
    &TI_SCHEDULING_DELAY,
    &SLA_MISSED,
    &DAGRUN_DEADLINE_MISSED,
    &TI_DEADLINE_MISSED,
    &ALERTS_SENT,
    &ALERTS_FAILED,
];
