//! Observability of a cluster as deployed: a coordinator and two workers as
//! separate processes on their own loopback addresses, a real etcd, a real
//! Prometheus scraping them every second, TPC-H through Flight SQL.
//!
//! 1. Start the coordinator alone: `/healthz` is 200, `/readyz` is 503 and
//!    says there is no live worker.
//! 2. Start two workers (127.0.0.2, 127.0.0.3): every `/readyz` is 200.
//! 3. Start Prometheus scraping the three nodes, with the shipped alert rules.
//! 4. Scan `lineitem` and `orders` whole: the rows counted for catalog `tpch`
//!    equal their row counts (counted by single-node DataFusion).
//! 5. Run the 22 TPC-H queries (answers equal single-node DataFusion's), a
//!    query on a PostgreSQL catalog and a query that fails.
//! 6. Through Prometheus' API: queries started and finished by state equal
//!    what was run, exchange bytes moved on both workers, the PostgreSQL
//!    catalog counted a remote query.
//! 7. `promtool check metrics` passes on every node's scrape, and
//!    `docs/metrics.md` lists exactly the metrics the nodes export, with
//!    their types.
//! 8. Every expression of the shipped dashboards returns data, every alert
//!    expression evaluates, and `promtool test rules` passes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use datafusion::prelude::SessionContext;
use weft_integration_tests::process::{http_get, ProcessCluster, ProcessOptions};
use weft_integration_tests::prometheus::Prometheus;
use weft_integration_tests::{
    canonical_rows, connect, pg, run_sql, split_statements, tpch_dir, tpch_query,
};

const SCALE: f64 = 0.01;
const TEST_TIMEOUT: Duration = Duration::from_secs(600);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

async fn df_rows(ctx: &SessionContext, sql: &str) -> Vec<String> {
    canonical_rows(
        &ctx.sql(sql)
            .await
            .expect("plan")
            .collect()
            .await
            .expect("run"),
    )
}

/// `(name, type)` of every `weft_` metric in a Prometheus text scrape.
fn exported(scrape: &str) -> BTreeMap<String, String> {
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((parts.next()?.to_string(), parts.next()?.to_string()))
        })
        .filter(|(n, _)| n.starts_with("weft_"))
        .collect()
}

/// `(name, type)` of every metric `docs/metrics.md` lists.
fn documented() -> BTreeMap<String, String> {
    let doc = std::fs::read_to_string(repo().join("docs/metrics.md")).expect("docs/metrics.md");
    doc.lines()
        .filter_map(|l| l.strip_prefix("| `weft_"))
        .filter_map(|l| {
            let (name, rest) = l.split_once('`')?;
            let kind = rest.split('|').nth(1)?.trim().to_string();
            Some((format!("weft_{name}"), kind))
        })
        .collect()
}

/// Every `"expr"` string of a Grafana dashboard.
fn dashboard_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

/// A dashboard expression with its variables set to "everything".
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("${job}", ".*")
        .replace("${instance}", ".*")
        .replace("$job", ".*")
        .replace("$instance", ".*")
}

fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus; scripts/test.sh does)");
    if let Some(text) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write to promtool");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("promtool output");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn sum_or_zero(prom: &Prometheus, promql: &str) -> f64 {
    prom.value(promql).await.expect("query").unwrap_or(0.0)
}

/// The value of `promql` once it is above zero (a node's last scrape may
/// trail the events by a scrape interval, or one scrape may time out).
async fn positive(prom: &Prometheus, promql: &str) -> f64 {
    prom.wait_for(promql, Duration::from_secs(20), |v| {
        v.is_some_and(|x| x > 0.0)
    })
    .await
    .expect("query")
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_scrapes_a_process_cluster_running_tpch() {
    tokio::time::timeout(TEST_TIMEOUT, scenario())
        .await
        .expect("the observability scenario timed out");
}

async fn scenario() {
    let dir = tpch_dir(SCALE, 2);
    let pg_url = pg::create_database("weft_obs")
        .await
        .expect("test database");
    let pg_client = pg::connect(&pg_url).await.expect("connect to PostgreSQL");
    pg_client
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, v text);
             INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 1000) g;",
        )
        .await
        .expect("load items");
    let catalogs = format!(
        "default_catalog = \"tpch\"\n\n[catalogs.tpch]\nkind = \"files\"\npath = {:?}\nformat = \"parquet\"\n\n[catalogs.pg]\nkind = \"postgres\"\nurl = {:?}\n",
        dir.to_string_lossy(),
        pg_url
    );

    // 1. The coordinator alone is alive but not ready.
    let mut cluster = ProcessCluster::start(
        0,
        ProcessOptions {
            catalogs,
            slots: 2,
            env: Vec::new(),
            args: Vec::new(),
            etcd: None,
            http: true,
            sign_in: None,
            tls_ca: None,
        },
    )
    .await
    .expect("start the coordinator");
    let (status, body) = http_get(cluster.coordinator.http, "/healthz")
        .await
        .expect("healthz");
    assert_eq!(status, 200, "{body}");
    let (status, body) = http_get(cluster.coordinator.http, "/readyz")
        .await
        .expect("readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no live workers"), "{body}");

    // 2. Two workers on their own addresses.
    cluster.add_worker().await.expect("worker 0");
    cluster.add_worker().await.expect("worker 1");
    cluster
        .wait_ready(&cluster.coordinator)
        .await
        .expect("coordinator ready");
    cluster
        .wait_members()
        .await
        .expect("both workers scheduled");
    for node in cluster.workers.iter().chain([&cluster.coordinator]) {
        let (status, body) = http_get(node.http, "/readyz").await.expect("readyz");
        assert_eq!(status, 200, "{}: {body}", node.name);
    }

    // 3. Prometheus with the shipped rules.
    let rules = repo().join("helm/weft/alerts/weft-rules.yaml");
    let prom = Prometheus::start(
        &[
            ("weft-coordinator", vec![cluster.coordinator.http]),
            (
                "weft-worker",
                cluster.workers.iter().map(|w| w.http).collect(),
            ),
        ],
        std::slice::from_ref(&rules),
    )
    .await
    .expect("start prometheus");
    let up = prom
        .wait_for("sum(up)", Duration::from_secs(30), |v| v == Some(3.0))
        .await
        .expect("up");
    assert_eq!(up, Some(3.0), "not every node is scraped:\n{}", prom.log());
    // Queries that ran before (the harness asking which workers are live).
    let finished_before = sum_or_zero(
        &prom,
        r#"sum(weft_coordinator_queries_finished_total{state="finished"})"#,
    )
    .await;
    let started_before = sum_or_zero(&prom, "sum(weft_coordinator_queries_started_total)").await;

    let reference = weft_integration_tests::tpch_single_node(dir).await;
    let mut client = connect(&cluster.flight_url()).await.expect("connect");
    let mut statements = 0u64;

    // 4. Whole scans: rows read by catalog tpch equal the tables' rows.
    for sql in [
        "SELECT sum(l_quantity) FROM tpch.public.lineitem",
        "SELECT sum(o_totalprice) FROM tpch.public.orders",
    ] {
        let got = canonical_rows(&run_sql(&mut client, sql).await.expect(sql));
        let local = sql.replace("tpch.public.", "");
        assert_eq!(got, df_rows(&reference, &local).await, "{sql}");
        statements += 1;
    }
    let table_rows: f64 = ["lineitem", "orders"]
        .iter()
        .map(|t| {
            let sql = format!("SELECT count(*) FROM {t}");
            let reference = &reference;
            async move {
                df_rows(reference, &sql).await[0]
                    .parse::<f64>()
                    .expect("count")
            }
        })
        .collect::<futures::future::JoinAll<_>>()
        .await
        .into_iter()
        .sum();
    let tpch_rows = r#"sum(weft_connector_rows_total{catalog="tpch",kind="files"})"#;
    let counted = prom
        .wait_for(tpch_rows, Duration::from_secs(20), |v| {
            v == Some(table_rows)
        })
        .await
        .expect("connector rows");
    assert_eq!(
        counted,
        Some(table_rows),
        "rows read by catalog tpch should equal lineitem + orders"
    );

    // 5. TPC-H, PostgreSQL, a failure.
    for n in 1..=22 {
        let text = tpch_query(n);
        let want = weft_integration_tests::single_node_rows(&reference, &text).await;
        let mut got = Vec::new();
        for s in split_statements(&text) {
            // Unqualified names resolve in the default catalog, tpch.
            let batches = run_sql(&mut client, &s)
                .await
                .unwrap_or_else(|e| panic!("q{n}: {e}"));
            statements += 1;
            if !batches.is_empty() && batches[0].num_columns() > 0 {
                got = canonical_rows(&batches);
            }
        }
        assert_eq!(got, want, "q{n}");
    }
    let rows = canonical_rows(
        &run_sql(&mut client, "SELECT count(*), sum(id) FROM pg.public.items")
            .await
            .expect("pg query"),
    );
    assert_eq!(rows, vec!["1000|500500".to_string()]);
    statements += 1;
    let failure = run_sql(&mut client, "SELECT * FROM tpch.public.no_such_table").await;
    assert!(failure.is_err(), "a query on a missing table must fail");

    // 6. Counters moved by the right amounts.
    let finished = prom
        .wait_for(
            r#"sum(weft_coordinator_queries_finished_total{state="finished"})"#,
            Duration::from_secs(20),
            |v| v == Some(finished_before + statements as f64),
        )
        .await
        .expect("finished");
    assert_eq!(
        finished,
        Some(finished_before + statements as f64),
        "finished queries"
    );
    let failed = prom
        .wait_for(
            r#"sum(weft_coordinator_queries_finished_total{state="failed"})"#,
            Duration::from_secs(20),
            |v| v == Some(1.0),
        )
        .await
        .expect("failed");
    assert_eq!(failed, Some(1.0), "the failed query is counted once");
    let started = sum_or_zero(&prom, "sum(weft_coordinator_queries_started_total)").await;
    assert_eq!(
        started - started_before,
        statements as f64 + 1.0,
        "queries started"
    );
    let invalid = sum_or_zero(
        &prom,
        r#"sum(weft_coordinator_queries_finished_total{state="failed",error_kind="invalid"})"#,
    )
    .await;
    assert_eq!(invalid, 1.0, "a missing table is an invalid query");
    for w in &cluster.workers {
        let instance = w.http.to_string();
        let sent = positive(
            &prom,
            &format!(r#"sum(weft_worker_exchange_sent_bytes_total{{instance="{instance}"}})"#),
        )
        .await;
        let received = positive(
            &prom,
            &format!(r#"sum(weft_worker_exchange_received_bytes_total{{instance="{instance}"}})"#),
        )
        .await;
        assert!(
            sent > 0.0 && received > 0.0,
            "{}: exchange bytes sent {sent}, received {received}",
            w.name
        );
        let launched = positive(
            &prom,
            &format!(r#"sum(weft_worker_tasks_launched_total{{instance="{instance}"}})"#),
        )
        .await;
        assert!(launched > 0.0, "{} ran no task", w.name);
    }
    let flight = positive(
        &prom,
        r#"sum(weft_worker_exchange_received_bytes_total{transport="flight"})"#,
    )
    .await;
    assert!(flight > 0.0, "no bytes crossed Flight between the workers");
    let tasks_coordinator = sum_or_zero(&prom, "sum(weft_coordinator_tasks_launched_total)").await;
    // The workers' last scrape may predate the last launches by a second.
    let tasks_workers = prom
        .wait_for(
            "sum(weft_worker_tasks_launched_total)",
            Duration::from_secs(20),
            |v| v == Some(tasks_coordinator),
        )
        .await
        .expect("worker tasks");
    assert_eq!(
        Some(tasks_coordinator),
        tasks_workers,
        "tasks launched: coordinator vs workers"
    );
    let pg_queries = positive(
        &prom,
        r#"sum(weft_connector_remote_queries_total{catalog="pg",kind="postgres",status="ok"})"#,
    )
    .await;
    assert!(pg_queries >= 1.0, "the PostgreSQL query was not counted");
    let result_rows = positive(&prom, "sum(weft_coordinator_result_rows_total)").await;
    assert!(result_rows > 0.0, "no result rows counted");
    let live = prom
        .wait_for(
            "sum(weft_coordinator_workers_live)",
            Duration::from_secs(20),
            |v| v == Some(2.0),
        )
        .await
        .expect("live workers");
    assert_eq!(live, Some(2.0));

    // 7. promtool on every scrape; the docs list exactly what is exported.
    let mut all = BTreeMap::new();
    for node in cluster.workers.iter().chain([&cluster.coordinator]) {
        let (status, scrape) = http_get(node.http, "/metrics").await.expect("scrape");
        assert_eq!(status, 200);
        let (ok, out) = promtool(&["check", "metrics"], Some(&scrape));
        assert!(ok, "promtool check metrics on {}: {out}", node.name);
        all.extend(exported(&scrape));
    }
    let docs = documented();
    let missing: Vec<_> = docs.keys().filter(|n| !all.contains_key(*n)).collect();
    let undocumented: Vec<_> = all.keys().filter(|n| !docs.contains_key(*n)).collect();
    assert!(
        missing.is_empty(),
        "documented but not exported: {missing:?}"
    );
    assert!(
        undocumented.is_empty(),
        "exported but not documented: {undocumented:?}"
    );
    for (name, kind) in &all {
        assert_eq!(Some(kind), docs.get(name), "type of {name}");
    }

    // 8. Dashboards return data, alert expressions evaluate, rule tests pass.
    let dashboards = std::fs::read_dir(repo().join("helm/weft/dashboards"))
        .expect("helm/weft/dashboards")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect::<BTreeSet<_>>();
    assert!(dashboards.len() >= 4, "{dashboards:?}");
    let mut pending = Vec::new();
    for path in &dashboards {
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json");
        let mut exprs = Vec::new();
        dashboard_exprs(&json, &mut exprs);
        assert!(!exprs.is_empty(), "{} has no queries", path.display());
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        pending.extend(exprs.into_iter().map(|e| (file.clone(), e)));
    }
    let count = pending.len();
    // A rate needs two samples of a series: one that appeared with the last
    // query (the failed one) has them a scrape or two later.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut empty = Vec::new();
        for (file, e) in pending {
            let data = prom
                .query_raw(&substitute(&e))
                .await
                .unwrap_or_else(|err| panic!("{file}: {err}"));
            if data["result"].as_array().is_none_or(|r| r.is_empty()) {
                empty.push((file, e));
            }
        }
        pending = empty;
        if pending.is_empty() || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        pending.is_empty(),
        "{count} panel queries, these return no data: {pending:#?}"
    );
    let rules_text = std::fs::read_to_string(&rules).expect("rules");
    let alert_exprs: Vec<&str> = rules_text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .map(str::trim)
        .collect();
    assert!(alert_exprs.len() >= 5, "{alert_exprs:?}");
    for e in alert_exprs {
        prom.query_raw(e)
            .await
            .unwrap_or_else(|err| panic!("alert expression: {err}"));
        for name in e
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("weft_"))
        {
            let series = prom
                .query(&format!("count({{__name__=\"{name}\"}})"))
                .await
                .expect("count");
            assert!(
                !series.is_empty(),
                "alert `{e}` uses {name}, which no node exports"
            );
        }
    }
    let (ok, out) = promtool(
        &[
            "test",
            "rules",
            &repo()
                .join("helm/weft/alerts/weft-rules.test.yaml")
                .to_string_lossy(),
        ],
        None,
    );
    assert!(ok, "promtool test rules: {out}");
}
