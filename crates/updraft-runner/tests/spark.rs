//! The `spark` task type with the real `spark-submit`, in its own test binary: a
//! JVM on 2 cores would skew the timing tests it ran beside.

use updraft_runner::Ending;

mod support;
use support::{run, spec};

/// `spark-submit` from PyPI's `pyspark` (Java 17 on the machine), found as
/// `UPDRAFT_SPARK_SUBMIT`, else skipped, except under `CI=true`.
fn spark_submit() -> Option<std::path::PathBuf> {
    let path = std::path::PathBuf::from(std::env::var("UPDRAFT_SPARK_SUBMIT").ok()?);
    path.is_file().then_some(path)
}

#[tokio::test]
async fn spark_submits_a_real_job_in_local_mode() {
    let Some(submit) = spark_submit() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "spark-submit is required under CI (.ci/run installs pyspark)"
        );
        #[allow(clippy::print_stderr)]
        {
            eprintln!("skipping: no spark-submit (set UPDRAFT_SPARK_SUBMIT to pyspark's bin/spark-submit)");
        }
        return;
    };
    let python = submit.parent().unwrap().join("python");
    let dir = tempfile::tempdir().unwrap();
    let task = format!(
        "    spark:\n      application: jobs/count.py\n      master: local[1]\n      name: count-{{{{ ds_nodash }}}}\n      conf: {{spark.sql.shuffle.partitions: 3, spark.ui.enabled: false}}\n      args: ['005930,000660,{{{{ ds_nodash }}}}']\n      spark_submit: {}\n    env: {{PYSPARK_PYTHON: {}}}\n    timeout: 5m\n",
        submit.display(),
        python.display()
    );
    let spec = spec(dir.path(), &task);
    std::fs::create_dir_all(dir.path().join("dags/sub/jobs")).unwrap();
    std::fs::write(
        dir.path().join("dags/sub/jobs/count.py"),
        "import json, os, sys\nfrom pyspark.sql import SparkSession\nspark = SparkSession.builder.getOrCreate()\ncodes = spark.createDataFrame([(c,) for c in sys.argv[1].split(',')], ['code'])\nprint('counted', codes.count(), spark.sparkContext.appName)\njson.dump({'count': codes.count(), 'partitions': spark.conf.get('spark.sql.shuffle.partitions')}, open(os.environ['UPDRAFT_OUTPUT'], 'w'))\nspark.stop()\n",
    )
    .unwrap();
    let (result, lines, log) = run(&spec).await;
    assert_eq!(result.ending, Ending::Exited(0), "{log}");
    assert!(lines.iter().any(|line| line == "counted 3 count-20240301"), "the driver's log streams in: {log}");
    assert_eq!(result.output.as_deref(), Some(r#"{"count": 3, "partitions": "3"}"#));
    assert!(
        log.contains("spark: ") && log.contains("--master local[1] --deploy-mode client --name count-20240301"),
        "{log}"
    );
}
