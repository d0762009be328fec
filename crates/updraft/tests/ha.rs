//! Production mode as real processes on PostgreSQL: several schedulers, an API
//! server, and remote workers on loopback, under load and under faults (kill -9
//! of schedulers and workers, a database restart).
//!
//! Every task appends `<run_id> <task_id> <try> start|end <ns>` to a file, so the
//! tests count what actually ran, not what the store says ran.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use updraft_testkit::postgres::{TempCluster, TestDatabase, psql};
use updraft_testkit::{Project, Service};

/// One deployment at a time: each is six processes on two cores.
static SERIAL: Mutex<()> = Mutex::new(());

const TOKEN: &str = "ha-test-worker-token";

/// A scheduled DAG `ha` of `start -> 20 fan tasks -> end` with exactly `runs`
/// intervals, all in the past (catchup creates them all).
fn fan_dag(runs: usize, sleep: &str, retries: u32) -> String {
    fan_dag_with(runs, |_| sleep, retries)
}

/// [`fan_dag`] where each task sleeps as `sleep_of(task_id)` says.
fn fan_dag_with<'a>(runs: usize, sleep_of: impl Fn(&str) -> &'a str, retries: u32) -> String {
    let now = jiff::Timestamp::now().as_second();
    let start = jiff::Timestamp::from_second((now / 60 - runs as i64 - 2) * 60).unwrap();
    let end = start + jiff::SignedDuration::from_mins(runs as i64 - 1);
    let command = |task: &str| {
        let sleep = sleep_of(task);
        format!(
            "    shell: 'echo \"{{{{ run_id }}}} {task} {{{{ try_number }}}} start $(date +%s%N)\" >> ../attempts.txt; \
             sleep {sleep}; echo \"{{{{ run_id }}}} {task} {{{{ try_number }}}} end $(date +%s%N)\" >> ../attempts.txt'\n"
        )
    };
    let mut text = format!(
        "dag: ha\nschedule: '* * * * *'\nstart_date: {start}\nend_date: {end}\ncatchup: true\n\
         max_active_runs: 16\nmax_active_tasks: 20\ntasks:\n  start:\n{}    retries: {retries}\n    retry_delay: 0s\n",
        command("start")
    );
    let fans: Vec<String> = (1..=20).map(|i| format!("fan_{i:02}")).collect();
    for fan in &fans {
        text.push_str(&format!(
            "  {fan}:\n{}    depends_on: [start]\n    retries: {retries}\n    retry_delay: 0s\n",
            command(fan)
        ));
    }
    text.push_str(&format!(
        "  end:\n{}    depends_on: [{}]\n    retries: {retries}\n    retry_delay: 0s\n",
        command("end"),
        fans.join(", ")
    ));
    text
}

struct Deployment {
    project: Project,
    api: Service,
    api_url: String,
    schedulers: Vec<Option<Service>>,
    workers: Vec<Option<Service>>,
    database_url: String,
}

impl Deployment {
    fn start(database_url: &str, dag: &str, schedulers: usize, workers: usize) -> Deployment {
        Deployment::start_with(database_url, dag, schedulers, workers, 16)
    }

    fn start_with(database_url: &str, dag: &str, schedulers: usize, workers: usize, slots: usize) -> Deployment {
        let mut project = Project::new(env!("CARGO_BIN_EXE_updraft"));
        project.dag("ha.yaml", dag);
        project
            .env("UPDRAFT_DATABASE_URL", database_url)
            .env("UPDRAFT_DATABASE__POOL_SIZE", "4")
            .env("UPDRAFT_WORKER__TOKEN", TOKEN)
            .env("UPDRAFT_SCHEDULER__HEARTBEAT_INTERVAL", "1s")
            .env("UPDRAFT_SCHEDULER__HEARTBEAT_TIMEOUT", "15s")
            .env("UPDRAFT_RUNNER__SLOTS", &slots.to_string())
            .env("UPDRAFT_LOG", "warn");
        let migrated = project.run(&["db", "migrate"]);
        assert_eq!(migrated.code, 0, "{}", migrated.stderr);
        let api = project.service(&["webserver", "--port", "0"], "http://");
        let api_url = format!("http://{}", api.address);
        let mut deployment = Deployment {
            project,
            api,
            api_url,
            schedulers: Vec::new(),
            workers: Vec::new(),
            database_url: database_url.into(),
        };
        for _ in 0..schedulers {
            let scheduler = deployment.scheduler();
            deployment.schedulers.push(Some(scheduler));
        }
        for _ in 0..workers {
            let worker = deployment.worker();
            deployment.workers.push(Some(worker));
        }
        deployment
    }

    fn scheduler(&self) -> Service {
        self.project.service(&["scheduler"], "updraft scheduler running")
    }

    /// A remote worker: the API server's URL, and no reachable database.
    fn worker(&self) -> Service {
        self.project.service_with(
            &["worker"],
            &[
                ("UPDRAFT_WORKER__API_URL", &self.api_url),
                ("UPDRAFT_DATABASE_URL", "postgres://nobody@127.0.0.1:9/nowhere"),
            ],
            "updraft worker running",
        )
    }

    fn sql(&self, query: &str) -> String {
        psql(&self.database_url, query).unwrap_or_else(|error| panic!("{query}: {error}"))
    }

    /// (successful runs, unfinished runs, failed runs), or `None` while the database
    /// does not answer.
    fn progress(&self) -> Option<(usize, usize, usize)> {
        let row = psql(
            &self.database_url,
            "SELECT count(*) FILTER (WHERE state = 'success'), count(*) FILTER (WHERE state IN ('queued', 'running')), \
             count(*) FILTER (WHERE state = 'failed') FROM dag_runs WHERE dag_id = 'ha'",
        )
        .ok()?;
        let numbers: Vec<usize> = row.split('|').map(|n| n.parse().unwrap()).collect();
        Some((numbers[0], numbers[1], numbers[2]))
    }

    fn failures(&self) -> String {
        psql(
            &self.database_url,
            "SELECT r.run_id, ti.task_id, ti.state, a.try_number, a.reason FROM task_instances ti \
             JOIN dag_runs r ON r.id = ti.run_pk LEFT JOIN task_attempts a ON a.ti_pk = ti.id \
             WHERE ti.state NOT IN ('success') ORDER BY 1, 2, 4 LIMIT 20",
        )
        .unwrap_or_default()
    }

    /// What the tasks themselves wrote: per (run, task), per try, start and end (ns).
    fn attempts(&self) -> Ran {
        let text = std::fs::read_to_string(self.project.path().join("attempts.txt")).unwrap_or_default();
        let mut attempts = Ran::new();
        for line in text.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            assert_eq!(fields.len(), 5, "a torn line: {line:?}");
            let key = (fields[0].to_string(), fields[1].to_string());
            let attempt = attempts.entry(key).or_default().entry(fields[2].parse().unwrap()).or_default();
            let at: u64 = fields[4].parse().unwrap();
            match fields[3] {
                "start" => attempt.starts.push(at),
                "end" => attempt.ends.push(at),
                other => panic!("unexpected {other:?} in {line:?}"),
            }
        }
        attempts
    }

    /// From the store: per (run, task), per try, the attempt's end (ns) and state.
    fn recorded(&self) -> Recorded {
        let rows = self.sql(
            "SELECT r.run_id, ti.task_id, a.try_number, coalesce(a.end_date::text, ''), a.state FROM task_attempts a \
             JOIN task_instances ti ON ti.id = a.ti_pk JOIN dag_runs r ON r.id = ti.run_pk WHERE r.dag_id = 'ha'",
        );
        let mut recorded = Recorded::new();
        for row in rows.lines() {
            let fields: Vec<&str> = row.split('|').collect();
            // Stored in microseconds since the epoch.
            let end = fields[3].parse::<u64>().ok().map(|micros| micros * 1000);
            recorded
                .entry((fields[0].to_string(), fields[1].to_string()))
                .or_default()
                .insert(fields[2].parse().unwrap(), (end, fields[4].to_string()));
        }
        recorded
    }

    fn stop(self) {
        for worker in self.workers.into_iter().flatten() {
            let (code, log) = worker.interrupt();
            assert_eq!(code, Some(0), "worker:\n{log}");
        }
        for scheduler in self.schedulers.into_iter().flatten() {
            let (code, log) = scheduler.interrupt();
            assert_eq!(code, Some(0), "scheduler:\n{log}");
        }
        let (code, log) = self.api.interrupt();
        assert_eq!(code, Some(0), "api:\n{log}");
    }
}

/// Waits until `runs` runs succeeded, calling `between` (which may kill and
/// restart processes) as it polls; fails on a failed run or at the deadline.
fn wait_for(
    deployment: &mut Deployment,
    runs: usize,
    limit: Duration,
    mut between: impl FnMut(&mut Deployment, usize),
) {
    let deadline = Instant::now() + limit;
    loop {
        let (success, unfinished, failed) = deployment.progress().unwrap_or((0, 0, 0));
        assert_eq!(failed, 0, "a run failed:\n{}", deployment.failures());
        if success == runs {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {success} of {runs} runs succeeded ({unfinished} unfinished) after {limit:?}:\n{}",
            deployment.failures()
        );
        std::thread::sleep(Duration::from_millis(250));
        between(deployment, success);
    }
}

/// Per (run id, task id), per try: what the task wrote.
type Ran = BTreeMap<(String, String), BTreeMap<u32, Attempt>>;

/// Per (run id, task id), per try: the end the store recorded (ns), and the state.
type Recorded = HashMap<(String, String), BTreeMap<u32, (Option<u64>, String)>>;

#[derive(Debug, Default)]
struct Attempt {
    starts: Vec<u64>,
    ends: Vec<u64>,
}

/// A small deterministic generator (xorshift), so a failing chaos run repeats.
struct Seeded(u64);

impl Seeded {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Checks that no try of a task instance ran twice, and that each try started only
/// after the store recorded the end of the one before (so two never overlapped).
fn assert_never_concurrent(deployment: &Deployment) -> usize {
    let ran = deployment.attempts();
    let recorded = deployment.recorded();
    let mut retried = 0;
    for (key, tries) in &ran {
        let stored = recorded.get(key).unwrap_or_else(|| panic!("{key:?} ran but has no attempt in the store"));
        for (try_number, attempt) in tries {
            assert_eq!(attempt.starts.len(), 1, "{key:?} try {try_number} started {} times", attempt.starts.len());
            if let Some((previous, (Some(recorded_end), state))) = stored.range(..try_number).next_back() {
                assert!(
                    attempt.starts[0] >= *recorded_end,
                    "{key:?} try {try_number} started before try {previous} ({state}) was recorded as ended"
                );
                // The one before must really have stopped: killed, or done.
                let previous_ends = tries.get(previous).map(|before| before.ends.as_slice()).unwrap_or_default();
                assert!(
                    previous_ends.iter().all(|end| *end <= attempt.starts[0]),
                    "{key:?} try {previous} ({state}) was still running when try {try_number} started"
                );
            }
        }
        if tries.len() > 1 {
            retried += 1;
        }
    }
    retried
}

/// 3 schedulers, an API server and 2 remote workers; 200 runs of 1 -> 20 -> 1:
/// every task instance runs exactly once and no run is left behind.
#[test]
fn several_schedulers_and_remote_workers_run_every_task_exactly_once() {
    let _serial = SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let Some(database) = TestDatabase::create() else { return };
    let runs = 200;
    let mut deployment = Deployment::start(&database.url, &fan_dag(runs, "0", 0), 3, 2);
    let started = Instant::now();
    wait_for(&mut deployment, runs, Duration::from_secs(600), |_, _| {});
    let took = started.elapsed();

    let ran = deployment.attempts();
    assert_eq!(ran.len(), runs * 22, "every task instance ran");
    for (key, tries) in &ran {
        let tries: Vec<(u32, usize, usize)> = tries.iter().map(|(n, a)| (*n, a.starts.len(), a.ends.len())).collect();
        assert_eq!(tries, vec![(1, 1, 1)], "{key:?} ran once, as try 1");
    }
    let per_scheduler = deployment.sql(
        "SELECT count(DISTINCT actor) FROM state_transitions WHERE actor LIKE 'scheduler:%' AND to_state = 'queued'",
    );
    assert!(per_scheduler.parse::<usize>().unwrap() >= 2, "the schedulers shared the work: {per_scheduler}");
    let per_worker = deployment.sql("SELECT count(DISTINCT process_id) FROM task_attempts");
    assert_eq!(per_worker, "2", "both workers ran tasks");
    #[allow(clippy::print_stderr)]
    {
        eprintln!("{} task instances in {took:.1?}", runs * 22);
    }
    deployment.stop();
}

/// The same load while, at seeded random moments, a scheduler and a worker are
/// killed with SIGKILL and replaced: every run still succeeds, the killed worker's
/// tasks are retried, and no task instance ever runs twice at the same time.
#[test]
fn kill_9_of_schedulers_and_workers_under_load_loses_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let Some(database) = TestDatabase::create() else { return };
    let runs = 200;
    // Some tasks outlive the time recovery takes to notice a dead worker, so a
    // retry would overlap a survivor of the killed worker if recovery did not
    // kill it first.
    let long = ["fan_01", "fan_02", "fan_03", "fan_04"];
    let dag = fan_dag_with(runs, |task| if long.contains(&task) { "1.5" } else { "0.2" }, 3);
    let mut deployment = Deployment::start_with(&database.url, &dag, 3, 2, 64);
    let mut random = Seeded(0x5eed_1234_abcd);
    let mut kills = 0;
    let mut next_kill = Instant::now() + Duration::from_millis(2000 + random.below(3000));
    wait_for(&mut deployment, runs, Duration::from_secs(900), |deployment, _| {
        if kills >= 6 || Instant::now() < next_kill {
            return;
        }
        // Alternate: a scheduler, then a worker; each replaced at once.
        if kills % 2 == 0 {
            let at = random.below(deployment.schedulers.len() as u64) as usize;
            deployment.schedulers[at].take().expect("running").kill9();
            deployment.schedulers[at] = Some(deployment.scheduler());
        } else {
            let at = random.below(deployment.workers.len() as u64) as usize;
            deployment.workers[at].take().expect("running").kill9();
            deployment.workers[at] = Some(deployment.worker());
        }
        kills += 1;
        next_kill = Instant::now() + Duration::from_millis(1500 + random.below(3000));
    });
    assert_eq!(kills, 6, "the load outlasted the chaos");
    let retried = assert_never_concurrent(&deployment);
    assert!(retried > 0, "tasks of the killed workers were retried");
    let lost =
        deployment.sql("SELECT count(*) FROM task_attempts WHERE state = 'failed' AND reason LIKE 'attempt lost%'");
    assert!(lost.parse::<usize>().unwrap() > 0, "the killed workers' attempts were recovered as lost");
    deployment.stop();
}

/// PostgreSQL stops (like a crash) and comes back mid-run: every process
/// reconnects and every run finishes.
#[test]
fn a_database_restart_mid_run_is_survived() {
    let _serial = SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let cluster = match TempCluster::start() {
        Ok(cluster) => cluster,
        Err(why) => {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "no temporary PostgreSQL cluster under CI: {why}");
            #[allow(clippy::print_stderr)]
            {
                eprintln!("skipping: cannot start a temporary PostgreSQL cluster: {why}");
            }
            return;
        }
    };
    psql(&cluster.admin_url(), "CREATE DATABASE ha").unwrap();
    let url = format!("postgres://postgres@127.0.0.1:{}/ha", cluster.port);
    let runs = 30;
    let mut deployment = Deployment::start(&url, &fan_dag(runs, "0.2", 2), 2, 2);
    let mut restarted = false;
    wait_for(&mut deployment, runs, Duration::from_secs(600), |_, success| {
        if !restarted && success >= 3 {
            cluster.stop_server().unwrap();
            std::thread::sleep(Duration::from_secs(3));
            cluster.start_server().unwrap();
            restarted = true;
        }
    });
    assert!(restarted, "the database restarted mid-run");
    assert_never_concurrent(&deployment);
    deployment.stop();
}
