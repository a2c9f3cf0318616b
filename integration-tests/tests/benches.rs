//! The benchmark harnesses `docs/benchmarks.md` quotes stay runnable, with
//! this profile's binaries, at a tiny scale:
//! 1. `weft-bench tpch --deployed --memory-limit`: etcd, a coordinator and
//!    two workers as processes with a memory limit; every answer is checked
//!    against single-node DataFusion (the harness fails on a difference or
//!    a failed query), each worker's peak RSS and `SELECT 1` latency follow.
//! 2. `weft-bench breakdown`: the same shape exporting spans over OTLP; the
//!    coordinator's phases and the stages' task times are found in them.
//! 3. `weft-bench pgtpch`: TPC-H loaded into the test PostgreSQL, Weft as
//!    deployed with a `postgres` catalog against PostgreSQL itself; every
//!    answer checked against PostgreSQL's (the harness fails on a
//!    difference), the semi and anti joins among them.

use std::time::Duration;

use weft_integration_tests::process::binary;

const TIMEOUT: Duration = Duration::from_secs(300);

/// Runs `weft-bench args`; its stdout, or a panic with its output.
async fn weft_bench(args: &[&str]) -> String {
    let mut command = tokio::process::Command::new(binary("weft-bench").expect("weft-bench"));
    command.args(args).kill_on_drop(true);
    let out = tokio::time::timeout(TIMEOUT, command.output())
        .await
        .expect("weft-bench finishes within its timeout")
        .expect("weft-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "weft-bench {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The numbers of the row of `stdout` whose label is `label`.
fn row(stdout: &str, label: &str) -> Vec<f64> {
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no row {label:?} in:\n{stdout}"));
    line.trim_start()[label.len()..]
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(f64::NAN))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpch_deployed_runs_and_checks_its_answers() {
    let data = tempfile::tempdir().expect("tempdir");
    let data = data.path().join("tpch").display().to_string();
    let args = [
        "tpch",
        "--deployed",
        "--scale",
        "0.01",
        "--iterations",
        "1",
        "--queries",
        "1,11,16",
        "--data",
        &data,
        "--memory-limit",
        "512M",
    ];
    let stdout = weft_bench(&args).await;
    assert!(stdout.contains("separate processes with etcd"), "{stdout}");
    assert!(stdout.contains("--memory-limit 512M"), "{stdout}");
    assert!(!stdout.contains("DIFFERENT ANSWER"), "{stdout}");
    for q in ["q1", "q11", "q16", "total"] {
        let [weft, datafusion, ratio] = row(&stdout, q)[..] else {
            panic!("row {q}: {stdout}");
        };
        assert!(
            weft > 0.0 && datafusion > 0.0 && ratio > 0.0,
            "{q}: {stdout}"
        );
    }
    assert!(stdout.contains("SELECT 1 round trip"), "{stdout}");
    let peaks = stdout
        .lines()
        .find_map(|l| l.strip_prefix("peak RSS per worker: "))
        .unwrap_or_else(|| panic!("no peak RSS: {stdout}"));
    for (i, peak) in peaks.split(", ").enumerate() {
        let mib: f64 = peak
            .strip_prefix(&format!("worker{i} "))
            .and_then(|p| p.strip_suffix(" MiB"))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("peak RSS of worker {i}: {peaks:?}"));
        assert!(mib > 1.0, "{peaks}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breakdown_finds_every_phase_in_the_spans() {
    let data = tempfile::tempdir().expect("tempdir");
    let data = data.path().join("tpch").display().to_string();
    let args = [
        "breakdown",
        "--scale",
        "0.01",
        "--iterations",
        "2",
        "--queries",
        "0,16",
        "--data",
        &data,
    ];
    let stdout = weft_bench(&args).await;
    for label in [
        "client: GetFlightInfo",
        "planning",
        "launch (one round trip)",
        "of it: plan encoding",
        "workers decoding plans (sum)",
        "DataFusion alone: planning",
    ] {
        let values = row(&stdout, label);
        assert_eq!(values.len(), 2, "{label}: {stdout}");
        assert!(
            values.iter().all(|v| v.is_finite() && *v > 0.0),
            "{label} was not found in the spans: {stdout}"
        );
    }
    let stages = stdout
        .lines()
        .find(|l| l.starts_with("q16: tasks run"))
        .unwrap_or_else(|| panic!("no stage times for q16: {stdout}"));
    assert!(stages.contains("s0 ") && stages.contains("s1 "), "{stages}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgtpch_runs_and_checks_its_answers_against_postgres() {
    let pg = weft_integration_tests::pg::admin_url().expect("test PostgreSQL");
    let data = tempfile::tempdir().expect("tempdir");
    let data = data.path().join("tpch").display().to_string();
    let args = [
        "pgtpch",
        "--pg-url",
        &pg,
        "--scale",
        "0.01",
        "--iterations",
        "1",
        "--queries",
        "1,4,18,21,22",
        "--data",
        &data,
    ];
    let stdout = weft_bench(&args).await;
    for q in ["q1", "q4", "q18", "q21", "q22", "total"] {
        let values = row(&stdout, q);
        assert!(
            values.len() >= 3 && values[..3].iter().all(|v| *v > 0.0),
            "{q}: {stdout}"
        );
    }
    assert!(stdout.contains("answer checked against"), "{stdout}");
}
