//! `weft sql` as a person uses it: the progress line on a terminal, clean
//! stdout, and the interactive shell. Terminals are pseudo-terminals made by
//! `integration-tests/pty/run_pty.py`.
//!
//! 1. Start a 2-worker cluster over TPC-H.
//! 2. Run a multi-stage query with stderr on a pty (`--progress auto`): the
//!    progress line appears on stderr, and stdout is exactly the CSV that the
//!    same query prints with `--progress never`, which equals the cluster's
//!    answer.
//! 3. With stderr on a pipe, `auto` draws nothing. The numbers the line
//!    shows come from the coordinator's `weft.query_progress` action: for a
//!    finished query it reports every stage and task done and rows produced.
//! 4. The shell: a statement typed over two lines runs and reports its rows
//!    and seconds; `quit` leaves with status 0.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use weft_integration_tests::process::binary;
use weft_integration_tests::{files_catalog, format_rows, tpch_dir, ClusterOptions, TestCluster};

const QUERY: &str = "SELECT l_returnflag, l_linestatus, count(*) AS n, sum(l_quantity) AS qty \
                     FROM lineitem JOIN orders ON l_orderkey = o_orderkey \
                     GROUP BY l_returnflag, l_linestatus ORDER BY l_returnflag, l_linestatus";

fn pty(args: &[&str]) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("pty/run_pty.py");
    let out = Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "run_pty.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("run_pty.py prints JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn weft_sql_progress_and_shell() {
    tokio::time::timeout(Duration::from_secs(300), scenario())
        .await
        .expect("the CLI scenario timed out");
}

async fn scenario() {
    // 1.
    let options = ClusterOptions {
        catalogs: files_catalog("tpch", tpch_dir(0.05, 2)),
        ..Default::default()
    };
    let cluster = TestCluster::start(2, options).await.expect("cluster");
    let url = cluster.coordinator.url();
    let weft = binary("weft").expect("weft binary");
    let weft = weft.to_string_lossy().to_string();
    let expected: Vec<String> = format_rows(&cluster.query(QUERY).await.expect("query"), |v| {
        v.to_string()
    })
    .into_iter()
    .map(|r| r.join(","))
    .collect();

    // 2. Progress on the terminal, the result alone on stdout.
    let run = |progress: &'static str| {
        let (weft, url) = (weft.clone(), url.clone());
        tokio::task::spawn_blocking(move || {
            pty(&[
                "stderr",
                "--",
                &weft,
                "sql",
                "--coordinator",
                &url,
                "--format",
                "csv",
                "--progress",
                progress,
                "-e",
                QUERY,
            ])
        })
    };
    let on_tty = run("auto").await.expect("join");
    assert_eq!(on_tty["rc"], 0, "{on_tty}");
    let stderr = on_tty["stderr"].as_str().unwrap_or_default();
    assert!(
        stderr.contains("planning") || stderr.contains("stages "),
        "no progress line on the terminal: {stderr:?}"
    );
    assert!(
        stderr.contains("\x1b[2K"),
        "the line is not redrawn/cleared: {stderr:?}"
    );
    let quiet = run("never").await.expect("join");
    assert_eq!(quiet["rc"], 0, "{quiet}");
    assert_eq!(quiet["stderr"], "", "--progress never wrote to stderr");
    assert_eq!(
        on_tty["stdout"], quiet["stdout"],
        "the progress line leaked into stdout"
    );
    let lines: Vec<&str> = quiet["stdout"]
        .as_str()
        .unwrap_or_default()
        .lines()
        .collect();
    assert_eq!(lines.first(), Some(&"l_returnflag,l_linestatus,n,qty"));
    assert_eq!(lines[1..].len(), expected.len(), "{lines:?}");
    for (got, want) in lines[1..].iter().zip(&expected) {
        // Flags and counts exactly; the decimal sum as printed by arrow's CSV writer.
        let g: Vec<&str> = got.split(',').collect();
        let w: Vec<&str> = want.split(',').collect();
        assert_eq!(g[..3], w[..3], "{got} vs {want}");
        let (gq, wq): (f64, f64) = (g[3].parse().expect("qty"), w[3].parse().expect("qty"));
        assert!((gq - wq).abs() < 1e-6, "{got} vs {want}");
    }

    // 3. Not a terminal: nothing drawn.
    let out = tokio::task::spawn_blocking({
        let (weft, url) = (weft.clone(), url.clone());
        move || {
            Command::new(weft)
                .args(["sql", "--coordinator", &url, "--format", "csv", "-e", QUERY])
                .output()
                .expect("weft sql")
        }
    })
    .await
    .expect("join");
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        quiet["stdout"].as_str().unwrap()
    );

    // The action behind the line, for a query that has finished.
    let mut client = cluster.client().await.expect("client");
    let info = client
        .execute(QUERY.to_string(), None)
        .await
        .expect("execute");
    let query_id = weft_coordinator::flight_sql::query_ids_of(&info)[0].clone();
    weft_integration_tests::read_all(&mut client, &info)
        .await
        .expect("read");
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut flight = arrow_flight::flight_service_client::FlightServiceClient::new(channel);
    let mut answer = flight
        .do_action(arrow_flight::Action {
            r#type: weft_coordinator::flight_sql::QUERY_PROGRESS_ACTION.into(),
            body: query_id.clone().into_bytes().into(),
        })
        .await
        .expect("weft.query_progress")
        .into_inner();
    let body = answer
        .message()
        .await
        .expect("answer")
        .expect("one result")
        .body;
    let p: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(p["state"], "finished", "{p}");
    let n = |k: &str| p[k].as_u64().unwrap_or(0);
    assert!(n("stages_total") >= 2, "{p}");
    assert_eq!(n("stages_done"), n("stages_total"), "{p}");
    assert!(n("tasks_total") >= n("stages_total"), "{p}");
    assert_eq!(n("tasks_done"), n("tasks_total"), "{p}");
    assert_eq!(n("tasks_running"), 0, "{p}");
    assert!(n("rows") > 0 && n("bytes") > 0, "{p}");

    // 4. The shell.
    let history = tempfile::NamedTempFile::new().expect("history file");
    let history = history.path().to_string_lossy().to_string();
    let shell = tokio::task::spawn_blocking({
        let (weft, url) = (weft.clone(), url.clone());
        move || {
            pty(&[
                "shell",
                "SELECT n_name AS nation\nFROM nation WHERE n_nationkey = 7;\nquit",
                "--",
                "env",
                &format!("WEFT_HISTORY={history}"),
                &weft,
                "sql",
                "--coordinator",
                &url,
            ])
        }
    })
    .await
    .expect("join");
    assert_eq!(shell["rc"], 0, "{shell}");
    let output = shell["output"].as_str().unwrap_or_default();
    assert!(output.contains("weft> "), "no prompt: {output:?}");
    assert!(
        output.contains("   -> "),
        "no continuation prompt: {output:?}"
    );
    assert!(output.contains("GERMANY"), "no result: {output:?}");
    assert!(
        output.contains("1 row in "),
        "no row count and time: {output:?}"
    );
}
