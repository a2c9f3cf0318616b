//! The Helm chart as a working cluster, and graceful scale-down and scale-up.
//!
//! The chart (`helm/weft`) is rendered with real Helm; its coordinator and
//! worker containers (command, args, env, mounted ConfigMaps) run as local
//! processes, each on its own loopback address standing in for a pod IP
//! (`weft_integration_tests::chart`), against the test's real etcd.
//!
//! `a_cluster_from_the_chart_runs_tpch_and_scales`:
//! 1. Render the chart with an external etcd, a `files` catalog of TPC-H,
//!    3 workers and a password file Secret; start the coordinator pod and the
//!    3 worker pods (with the chart's generated cluster secret). A client
//!    that does not sign in is refused.
//! 2. The 22 TPC-H queries answer as single-node DataFusion does.
//! 3. Scale-down under load: a large result is left half read (every worker
//!    holds an unread output of it) while two clients run TPC-H queries in
//!    a loop; one worker pod is terminated as the kubelet does (preStop
//!    sleep, SIGTERM). Its `/readyz` turns 503, the coordinator lists it as
//!    draining, no task lands on it from then on, and it keeps serving: it
//!    is still running while the result is unread. The result is then read
//!    to the end (every row); the worker exits on its own within its drain
//!    timeout; every query of the loop answered right.
//! 4. Scale-up: a new worker pod joins; the next queries answer right and
//!    place tasks on it.
//! 5. Coordinator scale-down: with a result half read, the coordinator pod
//!    is terminated. It turns not-ready and refuses a new query with a clear
//!    error, the running query is read to the end, and then it exits.
//!
//! `every_flag_the_chart_passes_parses_with_the_real_binaries`: for every
//! values file of the chart's test matrix, each Weft container's argv
//! parses (`--help` appended) with the real binary.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt;
use serde_json::{json, Value};
use tonic::transport::Channel;
use weft_integration_tests::chart::{self, PodTemplate, Secrets};
use weft_integration_tests::process::{binary, http_get};
use weft_integration_tests::{
    canonical_rows, run_sql, single_node_rows, split_statements, tpch_dir, tpch_query,
    TEST_ETCD_ENV,
};

/// The user the test signs in as (an admin, from the password file Secret).
const USER: (&str, &str) = ("ops", "chart-test-password");

/// A Flight SQL client of the coordinator pod, signed in as [`USER`].
async fn connect(url: &str) -> anyhow::Result<FlightSqlServiceClient<Channel>> {
    let mut client = weft_integration_tests::connect(url).await?;
    client.handshake(USER.0, USER.1).await?;
    Ok(client)
}

const SCALE: f64 = 0.01;
const TEST_TIMEOUT: Duration = Duration::from_secs(600);
/// Loopback addresses of this test's pods (127.0.30.x: other tests use
/// 127.0.0.x).
const SUBNET: &str = "127.0.30";

fn values_file(dir: &Path, values: &Value) -> PathBuf {
    // JSON is YAML.
    let path = dir.join("values.yaml");
    std::fs::write(&path, serde_json::to_string_pretty(values).expect("json")).expect("write");
    path
}

/// Sum of every series of `name` in a Prometheus text scrape.
fn metric(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn scrape(pod: &chart::Pod) -> anyhow::Result<String> {
    let (status, body) = http_get(pod.node.http, "/metrics").await?;
    anyhow::ensure!(status == 200, "/metrics answered {status}");
    Ok(body)
}

/// One TPC-H query's rows through `client` (the last statement with columns).
async fn tpch_rows(
    client: &mut FlightSqlServiceClient<Channel>,
    n: usize,
) -> anyhow::Result<Vec<String>> {
    let mut rows = Vec::new();
    for s in split_statements(&tpch_query(n)) {
        let batches = run_sql(client, &s).await?;
        if !batches.is_empty() && batches[0].num_columns() > 0 {
            rows = canonical_rows(&batches);
        }
    }
    Ok(rows)
}

/// `worker_id -> state` as the coordinator lists them.
async fn worker_states(url: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut c = connect(url).await?;
    let rows = canonical_rows(
        &run_sql(
            &mut c,
            "SELECT address, state FROM system.runtime.workers ORDER BY address",
        )
        .await?,
    );
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            let (a, s) = r.split_once('|')?;
            Some((a.to_string(), s.to_string()))
        })
        .collect())
}

async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut f: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// A result left half read: endpoint 0's first batch was read, the rest
/// waits in the workers' output buffers.
struct HeldResult {
    client: FlightSqlServiceClient<Channel>,
    info: arrow_flight::FlightInfo,
    first: arrow_flight::decode::FlightRecordBatchStream,
    rows: usize,
}

impl HeldResult {
    async fn open(url: &str, sql: &str) -> anyhow::Result<Self> {
        let mut client = connect(url).await?;
        let info = client.execute(sql.to_string(), None).await?;
        let ticket = info.endpoint[0]
            .ticket
            .clone()
            .ok_or_else(|| anyhow::anyhow!("no ticket"))?;
        let mut first = client.do_get(ticket).await?;
        let batch = first
            .try_next()
            .await?
            .ok_or_else(|| anyhow::anyhow!("empty first endpoint"))?;
        Ok(Self {
            client,
            info,
            first,
            rows: batch.num_rows(),
        })
    }

    /// Reads everything that is left; the total row count.
    async fn finish(mut self) -> anyhow::Result<usize> {
        while let Some(b) = self.first.try_next().await? {
            self.rows += b.num_rows();
        }
        for e in self.info.endpoint.iter().skip(1) {
            let ticket = e
                .ticket
                .clone()
                .ok_or_else(|| anyhow::anyhow!("no ticket"))?;
            let mut s = self.client.do_get(ticket).await?;
            while let Some(b) = s.try_next().await? {
                self.rows += b.num_rows();
            }
        }
        Ok(self.rows)
    }
}

/// A big result: lineitem x nation, every worker runs a task of it.
const HELD_SQL: &str = "SELECT l_orderkey, l_comment, n_name FROM lineitem CROSS JOIN nation";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_from_the_chart_runs_tpch_and_scales() {
    tokio::time::timeout(TEST_TIMEOUT, chart_cluster())
        .await
        .expect("the test timed out");
}

async fn chart_cluster() {
    let Ok(etcd) = std::env::var(TEST_ETCD_ENV) else {
        panic!("{TEST_ETCD_ENV} is not set: run the tests with scripts/test.sh");
    };
    let data = tpch_dir(SCALE, 2).to_string_lossy().to_string();
    let dir = tempfile::Builder::new()
        .prefix("weft-chart-")
        .tempdir()
        .expect("temp dir");
    let prefix = format!("/weft-chart/{}/workers/", uuid::Uuid::new_v4().simple());
    let data_volume = json!({
        "extraVolumes": [{"name": "tpch", "hostPath": {"path": data, "type": "Directory"}}],
        "extraVolumeMounts": [{"name": "tpch", "mountPath": data, "readOnly": true}],
    });
    let mut coordinator_values = json!({
        "replicas": 1, "drainTimeoutSeconds": 15, "preStopSleepSeconds": 1,
    });
    let mut worker_values = json!({
        "replicas": 3, "slots": 1, "leaseTtlSeconds": 3,
        "drainTimeoutSeconds": 30, "preStopSleepSeconds": 1,
    });
    for v in [&mut coordinator_values, &mut worker_values] {
        for (k, x) in data_volume.as_object().expect("object") {
            v[k] = x.clone();
        }
    }
    let values = json!({
        "etcd": {"external": {"endpoints": [etcd]}, "prefix": prefix},
        "defaultCatalog": "tpch",
        "catalogs": {"tpch": {"kind": "files", "path": data, "format": "parquet"}},
        "coordinator": coordinator_values,
        "worker": worker_values,
        "security": {"auth": {
            "passwordFile": {"existingSecret": "weft-passwords"},
            "adminUsers": [USER.0],
        }},
    });
    let objects =
        chart::render(&[&values_file(dir.path(), &values)], "weft").expect("render the chart");

    // 1. The pods of the rendered Deployments.
    let coordinator_t = PodTemplate::from_deployment(
        chart::deployment(&objects, "coordinator").expect("coordinator"),
        &objects,
    )
    .expect("coordinator pod");
    let worker_deployment = chart::deployment(&objects, "worker").expect("worker");
    let worker_t = PodTemplate::from_deployment(worker_deployment, &objects).expect("worker pod");
    let replicas = worker_deployment["spec"]["replicas"]
        .as_u64()
        .expect("replicas") as usize;
    assert_eq!(replicas, 3);
    assert_eq!(coordinator_t.binary, "weft-coordinator");
    assert_eq!(worker_t.binary, "weft-worker");
    let drain: u64 = worker_t
        .flag("--drain-timeout")
        .expect("the chart passes --drain-timeout")
        .parse()
        .expect("seconds");
    assert_eq!(drain, 30);
    assert!(
        Duration::from_secs(drain) + worker_t.pre_stop < worker_t.grace,
        "drain timeout + preStop must fit in terminationGracePeriodSeconds"
    );
    // The Secret the values name, as the operator would create it with `weft passwd`.
    let passwords = dir.path().join("passwords");
    weft_coordinator::auth::password::set_password(&passwords, USER.0, USER.1)
        .expect("password file");
    let mut secrets = Secrets::new();
    secrets.insert(
        "weft-passwords".into(),
        [(
            "passwords".to_string(),
            std::fs::read_to_string(&passwords).expect("read"),
        )]
        .into(),
    );
    let pods_dir = dir.path().join("pods");
    let mut coordinator = coordinator_t
        .spawn(&format!("{SUBNET}.1"), &pods_dir.join("c"), &secrets)
        .expect("start the coordinator pod");
    let mut workers = Vec::new();
    for i in 0..replicas {
        let ip = format!("{SUBNET}.{}", i + 2);
        workers.push(
            worker_t
                .spawn(&ip, &pods_dir.join(format!("w{i}")), &secrets)
                .expect("start a worker pod"),
        );
    }
    let url = format!("http://{}", coordinator.node.flight);
    let ready = |addr| async move { matches!(http_get(addr, "/readyz").await, Ok((200, _))) };
    for pod in workers.iter().chain([&coordinator]) {
        let addr = pod.node.http;
        wait_until(
            &format!("{} ready", pod.node.name),
            Duration::from_secs(60),
            || ready(addr),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", pod.node.log_tail()));
    }
    wait_until("3 workers listed", Duration::from_secs(30), || {
        let url = url.clone();
        async move { worker_states(&url).await.is_ok_and(|w| w.len() == 3) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", coordinator.node.log_tail()));

    // Clients must sign in (security.auth.passwordFile); the nodes share the
    // chart's generated cluster secret (a worker refuses unsigned calls).
    let mut anonymous = weft_integration_tests::connect(&url)
        .await
        .expect("connect");
    let refused = run_sql(&mut anonymous, "SELECT 1")
        .await
        .expect_err("anonymous query");
    assert!(refused.to_string().contains("no credentials"), "{refused}");
    assert!(coordinator_t.flag("--cluster-secret-file").is_some());

    // 2. TPC-H through the chart's cluster.
    let reference = weft_integration_tests::tpch_single_node(Path::new(&data)).await;
    let mut answers = Vec::new();
    for n in 1..=22 {
        answers.push(single_node_rows(&reference, &tpch_query(n)).await);
    }
    let answers = Arc::new(answers);
    let mut client = connect(&url).await.expect("connect");
    for n in 1..=22 {
        let got = tpch_rows(&mut client, n)
            .await
            .unwrap_or_else(|e| panic!("q{n}: {e}\n{}", coordinator.node.log_tail()));
        assert_eq!(got, answers[n - 1], "q{n}");
    }
    let held_rows: usize =
        single_node_rows(&reference, &format!("SELECT count(*) FROM ({HELD_SQL})")).await[0]
            .parse()
            .expect("count");

    // 3. Scale-down under load.
    let held = HeldResult::open(&url, HELD_SQL)
        .await
        .expect("open a big result");
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for c in 0..2 {
        let (url, stop, done, answers) = (
            url.clone(),
            Arc::clone(&stop),
            Arc::clone(&done),
            Arc::clone(&answers),
        );
        load.push(tokio::spawn(async move {
            let mut client = connect(&url).await?;
            let queries: Vec<usize> = (1..=22).collect();
            let mut i = c * 7;
            while !stop.load(Ordering::SeqCst) {
                let n = queries[i % queries.len()];
                i += 1;
                let got = tpch_rows(&mut client, n)
                    .await
                    .map_err(|e| anyhow::anyhow!("q{n} during scale-down: {e}"))?;
                anyhow::ensure!(
                    got == answers[n - 1],
                    "q{n} answered wrong during scale-down"
                );
                done.fetch_add(1, Ordering::SeqCst);
            }
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut victim = workers.pop().expect("a worker");
    let victim_http = victim.node.http;
    let victim_address = victim.node.flight.to_string();
    let terminated = Instant::now();
    let terminate = tokio::spawn(async move {
        let result = victim.terminate().await;
        (victim, result)
    });
    wait_until("the terminated worker's /readyz to turn 503", Duration::from_secs(10), || async {
        matches!(http_get(victim_http, "/readyz").await, Ok((503, body)) if body.contains("draining"))
    })
    .await
    .expect("draining worker not ready");
    let launched_at_drain = metric(
        &http_get(victim_http, "/metrics").await.expect("scrape").1,
        "weft_worker_tasks_launched_total",
    );
    wait_until(
        "the coordinator to list the worker as draining",
        Duration::from_secs(10),
        || {
            let (url, addr) = (url.clone(), victim_address.clone());
            async move {
                worker_states(&url)
                    .await
                    .is_ok_and(|w| w.iter().any(|(a, s)| a.ends_with(&addr) && s == "draining"))
            }
        },
    )
    .await
    .expect("draining state");
    let done_at_drain = done.load(Ordering::SeqCst);
    // Queries keep coming; the draining worker takes none of them, and it
    // keeps running while its part of the held result is unread.
    wait_until(
        "6 more queries during the drain",
        Duration::from_secs(120),
        || async { done.load(Ordering::SeqCst) >= done_at_drain + 6 },
    )
    .await
    .expect("queries during the drain");
    let (status, body) = http_get(victim_http, "/metrics")
        .await
        .expect("the draining worker still serves while its output is unread");
    assert_eq!(status, 200);
    assert_eq!(
        metric(&body, "weft_worker_tasks_launched_total"),
        launched_at_drain,
        "a task was launched on the draining worker"
    );
    assert!(
        !terminate.is_finished(),
        "the worker exited with unread output"
    );
    let rows = held
        .finish()
        .await
        .expect("read the held result to the end");
    assert_eq!(rows, held_rows, "every row of the held result arrives");
    let (victim, result) = terminate.await.expect("terminate");
    let (exited, after_term) = result.expect("terminate");
    assert!(
        exited,
        "the worker had to be killed:\n{}",
        victim.node.log_tail()
    );
    assert!(
        after_term < Duration::from_secs(drain),
        "the worker exited {after_term:?} after SIGTERM, beyond its drain timeout"
    );
    assert!(
        victim.node.log_tail().contains("drained"),
        "{}",
        victim.node.log_tail()
    );
    stop.store(true, Ordering::SeqCst);
    for l in load {
        l.await
            .expect("load task")
            .expect("every query answered right");
    }
    eprintln!(
        "scale-down: {} queries during the test, worker gone {:?} after termination began",
        done.load(Ordering::SeqCst),
        terminated.elapsed()
    );
    wait_until("2 workers listed", Duration::from_secs(30), || {
        let url = url.clone();
        async move { worker_states(&url).await.is_ok_and(|w| w.len() == 2) }
    })
    .await
    .expect("membership after scale-down");

    // 4. Scale-up: a new pod of the worker Deployment takes tasks.
    let fresh = worker_t
        .spawn(&format!("{SUBNET}.9"), &pods_dir.join("w9"), &secrets)
        .expect("start a new worker pod");
    let fresh_http = fresh.node.http;
    wait_until("the new worker ready", Duration::from_secs(60), || {
        ready(fresh_http)
    })
    .await
    .expect("new worker");
    wait_until("3 workers listed", Duration::from_secs(30), || {
        let url = url.clone();
        async move { worker_states(&url).await.is_ok_and(|w| w.len() == 3) }
    })
    .await
    .expect("membership after scale-up");
    for n in [1, 3, 5, 6, 9, 10, 12, 18] {
        let got = tpch_rows(&mut client, n)
            .await
            .expect("query after scale-up");
        assert_eq!(got, answers[n - 1], "q{n} after scale-up");
    }
    let fresh_tasks = metric(
        &scrape(&fresh).await.expect("scrape"),
        "weft_worker_tasks_launched_total",
    );
    assert!(fresh_tasks > 0.0, "the new worker took no task");
    workers.push(fresh);

    // 5. Coordinator scale-down.
    let held = HeldResult::open(&url, HELD_SQL)
        .await
        .expect("open a big result");
    let coordinator_http = coordinator.node.http;
    let terminate = tokio::spawn(async move {
        let result = coordinator.terminate().await;
        (coordinator, result)
    });
    wait_until(
        "the coordinator's /readyz to turn 503",
        Duration::from_secs(10),
        || async { matches!(http_get(coordinator_http, "/readyz").await, Ok((503, _))) },
    )
    .await
    .expect("draining coordinator not ready");
    let refused = run_sql(&mut client, "SELECT 1")
        .await
        .expect_err("a new query on a stopping coordinator");
    assert!(refused.to_string().contains("shutting down"), "{refused}");
    assert!(
        !terminate.is_finished(),
        "the coordinator left a running query"
    );
    let rows = held
        .finish()
        .await
        .expect("read the held result to the end");
    assert_eq!(rows, held_rows);
    let (coordinator, result) = terminate.await.expect("terminate");
    let (exited, _) = result.expect("terminate");
    assert!(
        exited,
        "the coordinator had to be killed:\n{}",
        coordinator.node.log_tail()
    );
    drop(workers);
}

#[test]
fn every_flag_the_chart_passes_parses_with_the_real_binaries() {
    let ci = chart::chart_dir().join("ci");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&ci)
        .unwrap_or_else(|e| panic!("{}: {e}", ci.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "the chart's values matrix: {files:?}");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut checked = 0;
    for file in &files {
        let objects = chart::render(&[file], "weft").expect("render");
        for kind in ["Deployment", "StatefulSet"] {
            for object in chart::of_kind(&objects, kind) {
                let component = &object["metadata"]["labels"]["app.kubernetes.io/component"];
                if component != "coordinator" && component != "worker" {
                    continue;
                }
                let pod = PodTemplate::from_deployment(object, &objects).expect("pod template");
                // Secrets the values name exist in the cluster; their
                // values do not matter to parsing.
                let secrets = secrets_named_in(object);
                let resolved = pod
                    .resolve("127.0.30.200", &dir.path().join(&pod.name), &secrets)
                    .expect("resolve");
                let out = std::process::Command::new(binary(&resolved.binary).expect("binary"))
                    .args(&resolved.args)
                    .arg("--help")
                    .env_clear()
                    .envs(resolved.env.iter().cloned())
                    .output()
                    .expect("run");
                assert!(
                    out.status.success(),
                    "{}: {} {:?} does not parse:\n{}",
                    file.display(),
                    resolved.binary,
                    resolved.args,
                    String::from_utf8_lossy(&out.stderr)
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 2 * files.len(), "checked {checked} containers");
}

/// Every Secret a pod template refers to, with placeholder values.
fn secrets_named_in(object: &Value) -> Secrets {
    let mut secrets = Secrets::new();
    let spec = &object["spec"]["template"]["spec"];
    let mut add = |name: Option<&str>, key: Option<&str>| {
        if let Some(name) = name {
            let entry = secrets.entry(name.to_string()).or_default();
            if let Some(key) = key {
                entry.insert(key.to_string(), "placeholder".to_string());
            }
        }
    };
    for c in spec["containers"].as_array().into_iter().flatten() {
        for e in c["env"].as_array().into_iter().flatten() {
            let r = &e["valueFrom"]["secretKeyRef"];
            add(r["name"].as_str(), r["key"].as_str());
        }
        for e in c["envFrom"].as_array().into_iter().flatten() {
            add(e["secretRef"]["name"].as_str(), None);
        }
    }
    for v in spec["volumes"].as_array().into_iter().flatten() {
        let s = &v["secret"];
        add(s["secretName"].as_str(), None);
        for item in s["items"].as_array().into_iter().flatten() {
            add(s["secretName"].as_str(), item["key"].as_str());
        }
    }
    secrets
}
