//! Chaos scripts: real processes (etcd, a coordinator, workers) killed or
//! cut off while queries run. Each test is one numbered script:
//! `s1` a worker killed during each TPC-H query, `s1a` a killed member
//! stepped around at launch, `s2` a frozen worker, `s3` a killed
//! coordinator, `s4` cancels at random points (`s4a`: during planning),
//! `s5` etcd restarted, `s6` two coordinators with one killed (`s6a`:
//! worker query slots across them), `s7` a lease lost under a live worker.
//!
//! `s3_coordinator_kill_leaves_no_task` (script 3 of the fault-tolerance
//! suite):
//! 1. A coordinator with `--task-lease 2` and two workers; a query is
//!    planned and launched (GetFlightInfo) and its results are not read, so
//!    its tasks stay on the workers, holding their outputs.
//! 2. For two leases, with the coordinator alive, every task stays: the
//!    coordinator renews the lease.
//! 3. `kill -9` of the coordinator.
//! 4. Within the lease (plus the worker's check period), no task of the
//!    query is left on any worker, and each worker's log says the lease
//!    expired.
//! 5. The query's attempt is fenced: a late launch of one of its tasks and a
//!    read of its outputs are refused as cancelled.

use std::time::{Duration, Instant};

use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{Action, Ticket};
use futures::StreamExt;
use prost::Message;
use tonic::transport::Channel;
use weft_integration_tests::process::{ProcessCluster, ProcessOptions};
use weft_integration_tests::tpch_dir;

const TEST_TIMEOUT: Duration = Duration::from_secs(240);
const LEASE: Duration = Duration::from_secs(2);
/// Sorting the whole of lineitem (with a shuffle below): every stage holds
/// tasks until the client reads, which it never does.
const SQL: &str = "SELECT l_orderkey, l_partkey, l_quantity FROM lineitem ORDER BY l_partkey";

async fn worker_client(flight: std::net::SocketAddr) -> FlightServiceClient<Channel> {
    FlightServiceClient::new(
        Channel::from_shared(format!("http://{flight}"))
            .unwrap()
            .connect()
            .await
            .expect("connect to the worker"),
    )
}

/// The tasks of `query_id` a worker holds, through its status action.
async fn tasks_on(flight: std::net::SocketAddr, query_id: &str) -> usize {
    let mut client = worker_client(flight).await;
    let action = Action::new(
        weft_common::flight::actions::QUERY_STATUS,
        weft_proto::QueryRef {
            query_id: query_id.to_string(),
            keep_from_attempt: 0,
        }
        .encode_to_vec(),
    );
    let mut stream = client
        .do_action(action)
        .await
        .expect("query status")
        .into_inner();
    let body = stream
        .next()
        .await
        .expect("one result")
        .expect("a status")
        .body;
    weft_proto::QueryStatus::decode(body)
        .expect("a QueryStatus")
        .tasks
        .len()
}

/// A process cluster of `workers` workers reading TPC-H Parquet files in
/// `dir` (catalog `tpch`, the default), with `env` on every node.
async fn files_cluster(
    dir: &std::path::Path,
    workers: usize,
    slots: u32,
    env: Vec<(String, String)>,
) -> ProcessCluster {
    files_cluster_on(None, dir, workers, slots, env).await
}

/// [`files_cluster`] on the etcd at `etcd` (`None`: the tests' shared one).
async fn files_cluster_on(
    etcd: Option<String>,
    dir: &std::path::Path,
    workers: usize,
    slots: u32,
    env: Vec<(String, String)>,
) -> ProcessCluster {
    ProcessCluster::start(
        workers,
        ProcessOptions {
            etcd,
            ..files_options(dir, slots, env)
        },
    )
    .await
    .expect("a cluster")
}

/// The options of [`files_cluster`]: the shared etcd, no HTTP server.
fn files_options(dir: &std::path::Path, slots: u32, env: Vec<(String, String)>) -> ProcessOptions {
    ProcessOptions {
        catalogs: weft_integration_tests::files_catalog_toml("tpch", dir),
        slots,
        env,
        args: vec![],
        etcd: None,
        http: false,
        sign_in: None,
        tls_ca: None,
    }
}

/// Single-node DataFusion's answers to the 22 TPC-H queries over `dir`,
/// as [`tpch_rows`] returns them (sorted unless the query orders them).
async fn tpch_expected(dir: &std::path::Path) -> Vec<Vec<String>> {
    use weft_integration_tests::{single_node_rows, tpch_query, tpch_single_node};
    let reference = tpch_single_node(dir).await;
    let mut expected = Vec::new();
    for q in 1..=22 {
        let text = tpch_query(q);
        let mut want = single_node_rows(&reference, &text).await;
        if !text.to_lowercase().contains("order by") {
            want.sort();
        }
        expected.push(want);
    }
    expected
}

/// Runs TPC-H `queries` one after the other through `client`, each within
/// `limit`: every answer's rows, or its error.
async fn tpch_answers(
    mut client: arrow_flight::sql::client::FlightSqlServiceClient<Channel>,
    queries: std::ops::RangeInclusive<usize>,
    limit: Duration,
) -> Vec<Result<Vec<String>, String>> {
    let mut answers = Vec::new();
    for q in queries {
        let answer = tokio::time::timeout(
            limit,
            tpch_rows(&mut client, &weft_integration_tests::tpch_query(q)),
        )
        .await;
        answers.push(match answer {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(_) => Err(format!("no answer within {limit:?}")),
        });
    }
    answers
}

/// The queries (`q1` ...) whose answer is not the expected one, with its
/// row count or error.
fn wrong_answers(answers: &[Result<Vec<String>, String>], expected: &[Vec<String>]) -> Vec<String> {
    answers
        .iter()
        .zip(expected)
        .enumerate()
        .filter(|(_, (got, want))| got.as_ref() != Ok(*want))
        .map(|(i, (got, _))| format!("q{}: {:?}", i + 1, got.as_ref().map(|r| r.len())))
        .collect()
}

async fn tasks_everywhere(cluster: &ProcessCluster, query_id: &str) -> Vec<usize> {
    let mut counts = Vec::new();
    for w in &cluster.workers {
        counts.push(tasks_on(w.flight, query_id).await);
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_coordinator_kill_leaves_no_task() {
    tokio::time::timeout(TEST_TIMEOUT, script_3())
        .await
        .expect("the test finishes within its timeout");
}

async fn script_3() {
    // 1.
    // The coordinator's --task-lease (workers share the options).
    let lease = ("WEFT_TASK_LEASE".to_string(), LEASE.as_secs().to_string());
    let cluster = files_cluster(tpch_dir(0.01, 2), 2, 2, vec![lease]).await;
    let mut client = cluster.client().await.expect("client");
    let info = client.execute(SQL.into(), None).await.expect("planned");
    let query_id = weft_coordinator::flight_sql::query_ids_of(&info).remove(0);
    let launched = tasks_everywhere(&cluster, &query_id).await;
    assert!(
        launched.iter().all(|&n| n > 0),
        "tasks on every worker: {launched:?}"
    );

    // 2.
    tokio::time::sleep(LEASE * 2).await;
    assert_eq!(
        tasks_everywhere(&cluster, &query_id).await,
        launched,
        "the coordinator renews its tasks' lease"
    );

    // 3.
    cluster.coordinator.signal("KILL").expect("kill -9");
    let killed = Instant::now();

    // 4.
    let limit = LEASE + Duration::from_millis(1500);
    loop {
        let left = tasks_everywhere(&cluster, &query_id).await;
        if left.iter().all(|&n| n == 0) {
            break;
        }
        assert!(
            killed.elapsed() < limit,
            "tasks still on the workers {:?} after the kill: {left:?}",
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "every task of {query_id} gone {} ms after the coordinator's kill (lease {} ms)",
        killed.elapsed().as_millis(),
        LEASE.as_millis()
    );
    for w in &cluster.workers {
        let log = std::fs::read_to_string(&w.log).unwrap();
        assert!(
            log.contains("task lease expired") && log.contains(&query_id),
            "{log}"
        );
    }

    // 5.
    let worker = cluster.workers[0].flight;
    let task = weft_proto::TaskId {
        query_id: query_id.clone(),
        stage_id: 0,
        task_index: 0,
        attempt: 0,
    };
    let launch = weft_proto::LaunchTask {
        task: Some(task.clone()),
        ..Default::default()
    };
    let refused = worker_client(worker)
        .await
        .do_action(Action::new(
            weft_common::flight::actions::LAUNCH_TASK,
            launch.encode_to_vec(),
        ))
        .await
        .map(|_| ())
        .expect_err("a late launch of a cancelled attempt");
    assert_eq!(refused.code(), tonic::Code::Aborted, "{refused}");
    assert!(refused.message().contains("was cancelled"), "{refused}");
    let ticket = weft_proto::PartitionTicket {
        task: Some(task),
        partition: 0,
        grant: None,
    };
    let read = worker_client(worker)
        .await
        .do_get(Ticket::new(ticket.encode_to_vec()))
        .await
        .map(|_| ())
        .expect_err("a read of a cancelled attempt");
    assert_eq!(read.code(), tonic::Code::Aborted, "{read}");
}

/// A query that computes for seconds (a debug build, SF0.01) before its
/// only row: a worker can be frozen, or etcd stopped, in the middle of it.
const SLOW_SQL: &str = "SELECT count(*), sum(a.l_quantity * b.l_discount) FROM lineitem a \
                        JOIN lineitem b ON a.l_suppkey % 25 = b.l_suppkey % 25";

/// A query that runs long enough to be cancelled at any point of its life.
const LONG_SQL: &str = "SELECT a.l_orderkey, b.l_partkey FROM lineitem a CROSS JOIN lineitem b";

/// xorshift64*: the seeded choices of script 4, repeatable from the seed.
struct Rng(u64);

impl Rng {
    /// Seeded from `WEFT_CHAOS_SEED`, else from the clock; the seed is
    /// printed so a run can be repeated.
    fn seeded(script: &str) -> (Self, u64) {
        let seed = std::env::var("WEFT_CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        println!("{script} seed: {seed} (WEFT_CHAOS_SEED={seed} repeats this run)");
        (Self(seed), seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// Script 4: cancels injected at random points of the lifecycle.
/// 1. Two workers, at most two queries running at once (more wait in state
///    `queued`); the seed is printed (`WEFT_CHAOS_SEED` repeats a run).
/// 2. Rounds of four concurrent queries; each is cancelled after a random
///    delay, by one of: dropping its GetFlightInfo (the client goes away
///    while it is queued, planned or launched), `CancelFlightInfo` right
///    after its FlightInfo (launched, unread), or `CancelFlightInfo` after
///    its first batch (streaming).
/// 3. Afterwards every query is ended on the coordinator (one whose
///    FlightInfo was lost with its dropped GetFlightInfo within
///    `--result-timeout` and the reaper's period) and no worker holds a task
///    of any of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s4_cancel_at_random_points_leaves_no_task() {
    tokio::time::timeout(TEST_TIMEOUT, script_4())
        .await
        .expect("the test finishes within its timeout");
}

/// `s4a_cancel_stops_planning_at_once` (script 4, the planning point made
/// deterministic):
/// 1. A cluster with a `postgres` catalog whose server accepts connections
///    and never answers (connect timeout 60 s), so planning a query over it
///    waits on the catalog's schema lookup.
/// 2. A query over it is started; once `system.runtime.queries` lists it
///    as `planning`, it is cancelled by id (as an administrator, or the
///    coordinator's drain, would).
/// 3. Its GetFlightInfo ends `Cancelled` within 2 s (not when the connect
///    timeout gives up), and the query is `cancelled`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s4a_cancel_stops_planning_at_once() {
    tokio::time::timeout(TEST_TIMEOUT, script_4a())
        .await
        .expect("the test finishes within its timeout");
}

async fn script_4a() {
    use weft_integration_tests::pg::{batch_rows, catalogs, postgres_catalog};
    use weft_integration_tests::TestCluster;
    // 1.
    // Nothing listens while the cluster starts (its catalog check fails
    // fast); the mute server takes the port before the query.
    let port = {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        free.local_addr().unwrap().port()
    };
    let mut mute = postgres_catalog(&format!("postgresql://weft:secret@127.0.0.1:{port}/x"));
    mute.connect_timeout = Duration::from_secs(60);
    let cluster = TestCluster::start(
        2,
        weft_integration_tests::ClusterOptions {
            catalogs: catalogs(vec![("mute", mute)]),
            ..Default::default()
        },
    )
    .await
    .expect("a cluster");
    let engine = std::sync::Arc::clone(cluster.coordinator.engine());
    let silent = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("the mute server's port is still free");
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
        }
    });
    let t0 = Instant::now();

    // 2.
    let started = tokio::spawn({
        let engine = std::sync::Arc::clone(&engine);
        async move {
            engine
                .start_query(
                    "SELECT * FROM mute.public.t",
                    &weft_coordinator::auth::Identity::open(),
                )
                .await
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let query_id = loop {
        let rows = batch_rows(
            &cluster
                .query("SELECT query_id FROM system.runtime.queries WHERE state = 'planning' AND sql LIKE '%mute.public.t%'")
                .await
                .expect("system.runtime.queries"),
        );
        if let Some(row) = rows.first() {
            break row[0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "the query never showed as planning"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let cancelled_at = Instant::now();
    assert!(engine
        .cancel(&query_id, &weft_coordinator::auth::Identity::open())
        .await
        .expect("cancel"));

    // 3.
    let outcome = tokio::time::timeout(Duration::from_secs(2), started)
        .await
        .expect("planning goes on after the cancel")
        .expect("the query task");
    let status = outcome.expect_err("a cancelled query does not start");
    assert_eq!(status.code(), tonic::Code::Cancelled, "{status}");
    assert!(status.message().contains("planned"), "{status}");
    let state = batch_rows(
        &cluster
            .query(&format!(
                "SELECT state FROM system.runtime.queries WHERE query_id = '{query_id}'"
            ))
            .await
            .unwrap(),
    );
    assert_eq!(state, vec![vec!["cancelled".to_string()]]);
    println!(
        "planning stopped {} ms after the cancel ({} ms after the query started)",
        cancelled_at.elapsed().as_millis(),
        t0.elapsed().as_millis()
    );
    held.abort();
}

async fn script_4() {
    use weft_integration_tests::{eventually, files_catalog, ClusterOptions, TestCluster};
    // 1.
    let (mut rng, _) = Rng::seeded("script 4");
    let cluster = TestCluster::start(
        2,
        ClusterOptions {
            catalogs: files_catalog("tpch", tpch_dir(0.01, 2)),
            max_running_queries: Some(2),
            // A GetFlightInfo dropped while its answer is on the way leaves
            // a running query nobody reads: --result-timeout reaps it.
            result_timeout: Duration::from_secs(2),
            ..Default::default()
        },
    )
    .await
    .expect("a cluster");
    let url = format!("http://{}", cluster.coordinator.addr());

    // 2.
    let mut how = [0usize; 3];
    for _round in 0..6 {
        let mut round = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let delay = Duration::from_millis(rng.below(120));
            let mode = rng.below(3) as usize;
            how[mode] += 1;
            let url = url.clone();
            round.spawn(async move {
                let mut client = weft_integration_tests::connect(&url)
                    .await
                    .expect("connect");
                match mode {
                    0 => {
                        // The client goes away mid-GetFlightInfo; one that
                        // was answered in time is cancelled at once.
                        let planned =
                            tokio::time::timeout(delay, client.execute(LONG_SQL.to_string(), None))
                                .await;
                        if let Ok(Ok(info)) = planned {
                            let cancel = Action::new(
                                "CancelFlightInfo",
                                arrow_flight::CancelFlightInfoRequest::new(info).encode_to_vec(),
                            );
                            let _ = tokio::time::timeout(
                                Duration::from_secs(60),
                                client.do_action(cancel),
                            )
                            .await
                            .expect("CancelFlightInfo hangs (mode 0)")
                            .expect("CancelFlightInfo");
                        }
                    }
                    _ => {
                        let step = |what: &str| format!("{what} (mode {mode}, delay {delay:?})");
                        let bound = Duration::from_secs(60);
                        let info =
                            tokio::time::timeout(bound, client.execute(LONG_SQL.to_string(), None))
                                .await
                                .unwrap_or_else(|_| panic!("{}", step("GetFlightInfo hangs")))
                                .expect("planned");
                        let mut stream = None;
                        if mode == 2 {
                            let ticket = info.endpoint[0].ticket.clone().expect("ticket");
                            let mut s = tokio::time::timeout(bound, client.do_get(ticket))
                                .await
                                .unwrap_or_else(|_| panic!("{}", step("DoGet hangs")))
                                .expect("DoGet");
                            let _ = tokio::time::timeout(bound, s.next())
                                .await
                                .unwrap_or_else(|_| panic!("{}", step("first batch hangs")));
                            stream = Some(s);
                        }
                        tokio::time::sleep(delay).await;
                        let cancel = Action::new(
                            "CancelFlightInfo",
                            arrow_flight::CancelFlightInfoRequest::new(info).encode_to_vec(),
                        );
                        let _ = tokio::time::timeout(bound, client.do_action(cancel))
                            .await
                            .unwrap_or_else(|_| panic!("{}", step("CancelFlightInfo hangs")))
                            .expect("CancelFlightInfo");
                        drop(stream);
                    }
                }
            });
        }
        while let Some(r) = round.join_next().await {
            r.expect("a client");
        }
    }
    println!(
        "cancelled {} by dropping GetFlightInfo, {} before reading, {} while streaming",
        how[0], how[1], how[2]
    );

    // 3.
    let engine = cluster.coordinator.engine();
    assert!(
        eventually(Duration::from_secs(30), || engine
            .queries
            .active()
            .is_empty())
        .await,
        "queries still active: {:?}",
        engine
            .queries
            .active()
            .iter()
            .map(|q| (q.id.clone(), q.state()))
            .collect::<Vec<_>>()
    );
    // A GetFlightInfo dropped at once may never reach the coordinator.
    let reached = engine.queries.all().len();
    assert!(reached > 12 && reached <= 24, "{reached} queries");
    let left = || {
        cluster
            .live_workers()
            .map(|w| w.tasks().task_count())
            .sum::<usize>()
    };
    assert!(
        eventually(Duration::from_secs(10), || left() == 0).await,
        "tasks left on the workers after every query ended: {}",
        left()
    );
}

/// Script 1a: a killed worker is stepped around while it is still a member.
/// 1. A coordinator and three workers (etcd lease TTL 3 s); answers of two
///    queries from single-node DataFusion.
/// 2. `kill -9` of a worker; at once, before its lease expires, the queries
///    run: their launches cannot reach it, so each is placed again on the
///    other two (nothing has reached the client yet).
/// 3. Every answer equals single-node DataFusion, and the coordinator's log
///    says which worker was left out and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s1a_a_killed_member_is_stepped_around() {
    tokio::time::timeout(TEST_TIMEOUT, script_1a())
        .await
        .expect("the test finishes within its timeout");
}

async fn script_1a() {
    use weft_integration_tests::{canonical_rows, run_sql, single_node_rows, tpch_single_node};
    // 1.
    let dir = tpch_dir(0.01, 3);
    let cluster = files_cluster(dir, 3, 1, vec![]).await;
    let queries = [
        "SELECT l_returnflag, l_linestatus, count(*), sum(l_quantity) FROM lineitem GROUP BY 1, 2 ORDER BY 1, 2",
        "SELECT o_orderpriority, count(*) FROM orders JOIN lineitem ON l_orderkey = o_orderkey \
         WHERE l_commitdate < l_receiptdate GROUP BY 1 ORDER BY 1",
    ];
    let ctx = tpch_single_node(dir).await;
    let mut expected = Vec::new();
    for sql in queries {
        expected.push(single_node_rows(&ctx, sql).await);
    }
    let mut client = cluster.client().await.expect("client");

    // 2.
    let victim = &cluster.workers[0];
    victim.signal("KILL").expect("kill -9");
    let killed = Instant::now();
    let mut answers = Vec::new();
    for sql in queries {
        let batches = run_sql(&mut client, sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:#}"));
        answers.push(canonical_rows(&batches));
    }
    let elapsed = killed.elapsed();

    // 3.
    assert_eq!(answers, expected);
    let log = std::fs::read_to_string(&cluster.coordinator.log).unwrap();
    assert!(
        log.contains("unreachable") && log.contains("placing the query's tasks again without it"),
        "{log}"
    );
    println!(
        "both queries answered right {} ms after the kill (lease TTL 3 s)",
        elapsed.as_millis()
    );
}

/// The rows of a TPC-H query text (the last statement with columns),
/// sorted unless the query orders them itself.
async fn tpch_rows(
    client: &mut arrow_flight::sql::client::FlightSqlServiceClient<Channel>,
    text: &str,
) -> anyhow::Result<Vec<String>> {
    use weft_integration_tests::{canonical_rows, run_sql, split_statements};
    let mut rows = Vec::new();
    for s in split_statements(text) {
        let batches = run_sql(client, &s).await?;
        if !batches.is_empty() && batches[0].num_columns() > 0 {
            rows = canonical_rows(&batches);
        }
    }
    if !text.to_lowercase().contains("order by") {
        rows.sort();
    }
    Ok(rows)
}

/// How often the coordinator's log says an attempt was run again.
fn retries_logged(cluster: &ProcessCluster) -> usize {
    std::fs::read_to_string(&cluster.coordinator.log)
        .unwrap_or_default()
        .matches("running the query again without the lost workers")
        .count()
}

/// Script 1: `kill -9` of a random worker at a random moment of each of
/// the 22 TPC-H queries.
/// 1. A coordinator and three workers (one slot each, etcd lease TTL 3 s),
///    TPC-H SF0.01 in three files; the seed is printed (`WEFT_CHAOS_SEED`
///    repeats a run).
/// 2. Per query: a clean run times it and must equal single-node
///    DataFusion; then it runs again and a random worker is killed with -9
///    after a random delay within the clean run's time.
/// 3. That answer equals single-node DataFusion too, or, only where the
///    first rows had already left the coordinator, the query fails with
///    `Unavailable` saying so (retryable).
/// 4. The killed worker is replaced before the next query.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s1_worker_killed_during_each_tpch_query() {
    tokio::time::timeout(Duration::from_secs(600), script_1())
        .await
        .expect("the test finishes within its timeout");
}

async fn script_1() {
    use weft_integration_tests::tpch_query;
    // 1.
    let (mut rng, seed) = Rng::seeded("script 1");
    let dir = tpch_dir(0.01, 3);
    let mut cluster = files_cluster(dir, 3, 1, vec![]).await;
    let expected = tpch_expected(dir).await;
    let mut client = cluster.client().await.expect("client");
    let (mut right, mut refused, mut retried) = (0, Vec::new(), 0);
    let mut failures = Vec::new();
    for (q, want) in (1..=22).zip(expected) {
        let text = tpch_query(q);
        // 2.
        let started = Instant::now();
        let clean = tokio::time::timeout(Duration::from_secs(60), tpch_rows(&mut client, &text))
            .await
            .unwrap_or_else(|_| panic!("q{q}: the clean run timed out"))
            .unwrap_or_else(|e| panic!("q{q}: the clean run failed: {e:#}"));
        let took = started.elapsed();
        assert_eq!(clean, want, "q{q}: the clean run's answer");
        let delay = Duration::from_millis(rng.below(took.as_millis() as u64 + 1));
        let victim = rng.below(3) as usize;
        let retries_before = retries_logged(&cluster);
        let mut chaos_client = cluster.client().await.expect("client");
        let run = {
            let text = text.clone();
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_secs(90), tpch_rows(&mut chaos_client, &text))
                    .await
            })
        };
        tokio::time::sleep(delay).await;
        cluster.workers[victim].signal("KILL").expect("kill -9");
        let answer = run.await.expect("the query task");
        // 3.
        let was_retried = retries_logged(&cluster) > retries_before;
        retried += usize::from(was_retried);
        match answer {
            Err(_) => failures.push(format!("q{q}: no answer within 90 s (seed {seed})")),
            Ok(Ok(rows)) if rows == want => right += 1,
            Ok(Ok(rows)) => failures.push(format!(
                "q{q}: WRONG ANSWER after the kill at {} ms: {} rows, expected {} (seed {seed})",
                delay.as_millis(),
                rows.len(),
                want.len()
            )),
            Ok(Err(e)) => {
                let message = format!("{e:#}");
                if message.contains("after its first results had been sent")
                    && message.contains("run the query again")
                {
                    refused.push(q);
                } else {
                    failures.push(format!(
                        "q{q}: failed after the kill at {} ms: {message} (seed {seed})",
                        delay.as_millis()
                    ));
                }
            }
        }
        println!(
            "q{q}: clean {} ms, worker {victim} killed at {} ms, {}",
            took.as_millis(),
            delay.as_millis(),
            if was_retried {
                "retried"
            } else {
                "not retried"
            }
        );
        // 4.
        cluster.remove_worker(victim);
        cluster.add_worker().await.expect("a replacement worker");
        cluster.wait_members().await.expect("three members again");
    }
    println!(
        "script 1: {right}/22 right, {} refused as retryable ({refused:?}), {retried} retried invisibly or not",
        refused.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(right + refused.len(), 22);
    assert!(
        retried > 0,
        "no kill landed inside a query: the script tested nothing"
    );
}

/// Script 2: a frozen worker (SIGSTOP) mid-query.
/// 1. A coordinator and three workers; a query that computes for seconds
///    before its only row (a self-join count), and its answer from
///    single-node DataFusion.
/// 2. A clean run times the query; in a second run, a third of that time
///    into it, one worker is frozen with SIGSTOP (its sockets stay open:
///    only keep-alive or its etcd lease reveal it).
/// 3. The query answers right, without the frozen worker, within the
///    keep-alive timeout plus a run on the other two; the coordinator's log
///    names the lost worker.
/// 4. SIGCONT: the thawed worker frees the old attempt's tasks (its task
///    lease is no longer renewed) and nothing of the query is left on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s2_frozen_worker_is_detected_and_the_query_retried() {
    tokio::time::timeout(TEST_TIMEOUT, script_2())
        .await
        .expect("the test finishes within its timeout");
}

async fn script_2() {
    use weft_integration_tests::{canonical_rows, run_sql, single_node_rows, tpch_single_node};
    // 1.
    let sql = SLOW_SQL;
    let dir = tpch_dir(0.01, 3);
    let lease = ("WEFT_TASK_LEASE".to_string(), "4".to_string());
    let cluster = files_cluster(dir, 3, 1, vec![lease]).await;
    let want = single_node_rows(&tpch_single_node(dir).await, sql).await;
    let mut client = cluster.client().await.expect("client");
    let started = Instant::now();
    let clean = run_sql(&mut client, sql).await.expect("the clean run");
    let took = started.elapsed();
    assert_eq!(canonical_rows(&clean), want, "the clean run's answer");
    assert!(
        took > Duration::from_millis(600),
        "the query took {took:?}: too short to freeze a worker in the middle of it"
    );
    let started = Instant::now();
    let run = tokio::spawn(async move {
        let batches = run_sql(&mut client, sql).await?;
        anyhow::Ok((canonical_rows(&batches), client))
    });

    // 2.
    tokio::time::sleep(took / 3).await;
    let frozen = &cluster.workers[1];
    frozen.signal("STOP").expect("SIGSTOP");

    // 3.
    let (answer, _client) = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("the query answers within 90 s")
        .expect("the query task")
        .unwrap_or_else(|e| panic!("the query failed: {e:#}"));
    let retried_in = started.elapsed();
    assert_eq!(answer, want);
    let log = std::fs::read_to_string(&cluster.coordinator.log).unwrap();
    let retry = log
        .lines()
        .find(|l| l.contains("running the query again without the lost workers"))
        .unwrap_or_else(|| panic!("no retry in the coordinator's log:\n{log}"));
    assert!(retry.contains(&frozen.flight.to_string()), "{retry}");
    println!(
        "answered right {} ms after the start (a clean run takes {} ms), a worker frozen at {} ms",
        retried_in.as_millis(),
        took.as_millis(),
        (took / 3).as_millis()
    );

    // 4.
    frozen.signal("CONT").expect("SIGCONT");
    let query_id = query_id_of(retry);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = tasks_on(frozen.flight, &query_id).await;
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} tasks of {query_id} left on the thawed worker"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Script 5: etcd stopped and restarted during a query.
/// 1. A private etcd, a coordinator and two workers (lease TTL 3 s); a
///    query that computes for a while before its only row, and its answer
///    from single-node DataFusion.
/// 2. A third of the way into the query, etcd is killed; it stays down for
///    2 s and starts again on the same ports and data.
/// 3. The query's answer is right: queries do not go through etcd, and the
///    coordinator keeps the last membership it knew while the watch is lost.
/// 4. The next query works, and the membership has resynced: both workers
///    are listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s5_etcd_restart_during_a_query() {
    tokio::time::timeout(TEST_TIMEOUT, script_5())
        .await
        .expect("the test finishes within its timeout");
}

async fn script_5() {
    use weft_integration_tests::process::Etcd;
    use weft_integration_tests::{canonical_rows, run_sql, single_node_rows, tpch_single_node};
    // 1.
    let sql = SLOW_SQL;
    let dir = tpch_dir(0.01, 3);
    let mut etcd = Etcd::start().await.expect("etcd");
    let cluster = files_cluster_on(Some(etcd.endpoint.clone()), dir, 2, 1, vec![]).await;
    let want = single_node_rows(&tpch_single_node(dir).await, sql).await;
    let mut client = cluster.client().await.expect("client");
    let started = Instant::now();
    let clean = run_sql(&mut client, sql).await.expect("the clean run");
    let took = started.elapsed();
    assert_eq!(canonical_rows(&clean), want, "the clean run's answer");
    let run = tokio::spawn(async move {
        let batches = run_sql(&mut client, sql).await?;
        anyhow::Ok((canonical_rows(&batches), client))
    });

    // 2.
    tokio::time::sleep(took / 3).await;
    etcd.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    etcd.restart().await.expect("etcd starts again");
    let restarted = Instant::now();

    // 3.
    let (answer, mut client) = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the query answers within 60 s")
        .expect("the query task")
        .unwrap_or_else(|e| panic!("the query failed across the etcd restart: {e:#}"));
    assert_eq!(answer, want);

    // 4.
    let next = run_sql(&mut client, "SELECT count(*) FROM orders")
        .await
        .unwrap_or_else(|e| panic!("the next query failed: {e:#}"));
    assert_eq!(canonical_rows(&next), vec!["15000".to_string()]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = run_sql(&mut client, "SELECT count(*) FROM system.runtime.workers")
            .await
            .map(|b| canonical_rows(&b))
            .unwrap_or_default();
        if listed == vec!["2".to_string()] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "membership after the restart: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "the query answered right across a 2 s etcd outage; membership resynced {} ms after the restart",
        restarted.elapsed().as_millis()
    );
}

/// Script 6: two coordinators on one etcd share the workers; one is killed.
/// 1. Coordinators A and B on the same etcd prefix, two workers; the 22
///    TPC-H answers from single-node DataFusion.
/// 2. A and B each run the 22 queries at the same time; while they do,
///    A is killed with -9.
/// 3. Every one of B's 22 answers is right: A's crash touched only its
///    own queries (their tasks are dropped when A stops renewing their
///    lease), and B's clients never noticed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s6_two_coordinators_one_killed() {
    tokio::time::timeout(Duration::from_secs(400), script_6())
        .await
        .expect("the test finishes within its timeout");
}

async fn script_6() {
    use weft_integration_tests::tpch_query;
    // 1.
    let dir = tpch_dir(0.01, 3);
    let lease = ("WEFT_TASK_LEASE".to_string(), "3".to_string());
    let cluster = files_cluster(dir, 2, 1, vec![lease]).await;
    let b = cluster
        .add_coordinator("coordinator-b")
        .await
        .expect("coordinator B");
    let expected = tpch_expected(dir).await;

    // 2.
    let mut client_a = cluster.client().await.expect("client of A");
    let client_b = cluster.client_of(&b).await.expect("client of B");
    let on_a = tokio::spawn(async move {
        let mut answered = 0;
        for q in 1..=22 {
            match tokio::time::timeout(
                Duration::from_secs(60),
                tpch_rows(&mut client_a, &tpch_query(q)),
            )
            .await
            {
                Ok(Ok(_)) => answered += 1,
                _ => break,
            }
        }
        answered
    });
    let on_b = tokio::spawn(tpch_answers(client_b, 1..=22, Duration::from_secs(60)));
    tokio::time::sleep(Duration::from_millis(700)).await;
    cluster.coordinator.signal("KILL").expect("kill -9 of A");

    // 3.
    let answers = on_b.await.expect("B's queries");
    let answered_by_a = on_a.await.expect("A's queries");
    let wrong = wrong_answers(&answers, &expected);
    assert!(wrong.is_empty(), "B's answers after A's kill: {wrong:?}");
    println!("B answered all 22 right; A answered {answered_by_a} before it was killed");
}

/// Script 6a: worker-side query slots hold across coordinators.
/// 1. Two coordinators on one etcd, two workers with `--max-queries 1`
///    (one slot each); the 22 TPC-H answers from single-node DataFusion.
/// 2. A runs q1-q11 while B runs q12-q22, so their queries collide on the
///    workers; each worker's `weft_worker_queries` is sampled throughout.
/// 3. All 22 answers are right, no worker ever held tasks of two queries,
///    and the workers did refuse launches (the limit was exercised, and
///    the coordinators launched the refused queries again).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s6a_worker_query_limit_holds_across_coordinators() {
    tokio::time::timeout(Duration::from_secs(400), script_6a())
        .await
        .expect("the test finishes within its timeout");
}

async fn script_6a() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use weft_integration_tests::process::http_get;
    // 1.
    let dir = tpch_dir(0.01, 3);
    let limit = vec![("WEFT_MAX_QUERIES".to_string(), "1".to_string())];
    let cluster = ProcessCluster::start(
        2,
        ProcessOptions {
            http: true,
            ..files_options(dir, 1, limit)
        },
    )
    .await
    .expect("a cluster");
    let b = cluster
        .add_coordinator("coordinator-b")
        .await
        .expect("coordinator B");
    let expected = tpch_expected(dir).await;

    // 2.
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let samples = Arc::new(AtomicU64::new(0));
    let sampler = {
        let workers: Vec<std::net::SocketAddr> = cluster.workers.iter().map(|w| w.http).collect();
        let (done, peak, samples) = (Arc::clone(&done), Arc::clone(&peak), Arc::clone(&samples));
        tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                for w in &workers {
                    let Ok((200, text)) = http_get(*w, "/metrics").await else {
                        continue;
                    };
                    let queries = text
                        .lines()
                        .find(|l| {
                            l.strip_prefix("weft_worker_queries")
                                .is_some_and(|rest| rest.starts_with([' ', '{']))
                        })
                        .and_then(|l| l.split_whitespace().last()?.parse::<f64>().ok())
                        .expect("weft_worker_queries is exported");
                    peak.fetch_max(queries as u64, Ordering::SeqCst);
                    samples.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let started = Instant::now();
    let on_a = tokio::spawn(tpch_answers(
        cluster.client().await.expect("client of A"),
        1..=11,
        Duration::from_secs(90),
    ));
    let on_b = tokio::spawn(tpch_answers(
        cluster.client_of(&b).await.expect("client of B"),
        12..=22,
        Duration::from_secs(90),
    ));
    let mut answers = on_a.await.expect("A's queries");
    answers.extend(on_b.await.expect("B's queries"));
    let took = started.elapsed();
    done.store(true, Ordering::SeqCst);
    sampler.await.expect("the sampler");

    // 3.
    let wrong = wrong_answers(&answers, &expected);
    assert!(wrong.is_empty(), "answers under --max-queries 1: {wrong:?}");
    let peak = peak.load(Ordering::SeqCst);
    let samples = samples.load(Ordering::SeqCst);
    assert!(
        samples > 20,
        "too few samples of weft_worker_queries: {samples}"
    );
    assert_eq!(
        peak, 1,
        "the most queries a worker held at once ({samples} samples)"
    );
    let refusals: usize = cluster
        .workers
        .iter()
        .map(|w| {
            std::fs::read_to_string(&w.log)
                .unwrap_or_default()
                .matches("launch refused: --max-queries reached")
                .count()
        })
        .sum();
    assert!(
        refusals > 0,
        "no launch was ever refused: the queries never collided"
    );
    println!(
        "22/22 right from two coordinators in {} ms; {refusals} launches refused and repeated; at most {peak} query per worker over {samples} samples",
        took.as_millis()
    );
}

/// Script 7: a worker loses its etcd lease while it lives.
/// 1. A private etcd, a coordinator (task lease 60 s, so only the epoch
///    can free the tasks in time) and two workers; a slow query and its
///    answer from single-node DataFusion.
/// 2. A third of the way into the query, the lease of worker 1 is revoked
///    in etcd behind its back (what a partition or a long pause does).
/// 3. The query's answer is right: the coordinator counts the worker's
///    new epoch as the loss of the earlier one and runs the query again.
/// 4. The worker is listed again, as epoch 1; it logged the new epoch and
///    holds no task of the query's earlier attempt, long before the task
///    lease could have freed them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s7_lease_lost_under_a_live_worker() {
    tokio::time::timeout(TEST_TIMEOUT, script_7())
        .await
        .expect("the test finishes within its timeout");
}

async fn script_7() {
    use weft_integration_tests::process::Etcd;
    use weft_integration_tests::{canonical_rows, run_sql, single_node_rows, tpch_single_node};
    // 1.
    let sql = SLOW_SQL;
    let dir = tpch_dir(0.01, 3);
    let etcd = Etcd::start().await.expect("etcd");
    let lease = ("WEFT_TASK_LEASE".to_string(), "60".to_string());
    let cluster = files_cluster_on(Some(etcd.endpoint.clone()), dir, 2, 1, vec![lease]).await;
    let want = single_node_rows(&tpch_single_node(dir).await, sql).await;
    let mut client = cluster.client().await.expect("client");
    let started = Instant::now();
    let clean = run_sql(&mut client, sql).await.expect("the clean run");
    let took = started.elapsed();
    assert_eq!(canonical_rows(&clean), want, "the clean run's answer");
    let run = tokio::spawn(async move {
        let batches = run_sql(&mut client, sql).await?;
        anyhow::Ok((canonical_rows(&batches), client))
    });

    // 2.
    tokio::time::sleep(took / 3).await;
    let victim = &cluster.workers[1];
    let mut etcd_client = etcd_client::Client::connect([etcd.endpoint.as_str()], None)
        .await
        .expect("connect to etcd");
    let keys = etcd_client
        .get("/", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .expect("read the membership");
    let address = format!("http://{}", victim.flight);
    let registration = keys
        .kvs()
        .iter()
        .find(|kv| kv.value_str().is_ok_and(|v| v.contains(&address)))
        .unwrap_or_else(|| panic!("no registration of {address} in etcd"));
    etcd_client
        .lease_revoke(registration.lease())
        .await
        .expect("revoke the worker's lease");
    let revoked = Instant::now();

    // 3.
    let (answer, mut client) = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the query answers within 60 s")
        .expect("the query task")
        .unwrap_or_else(|e| panic!("the query failed: {e:#}"));
    assert_eq!(answer, want);
    let answered = revoked.elapsed();

    // 4.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = run_sql(
            &mut client,
            &format!("SELECT epoch FROM system.runtime.workers WHERE address = '{address}'"),
        )
        .await
        .map(|b| canonical_rows(&b))
        .unwrap_or_default();
        if listed == vec!["1".to_string()] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the worker is listed as {listed:?}, not as epoch 1"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = std::fs::read_to_string(&victim.log).unwrap();
    assert!(
        log.contains("registered again as epoch 1"),
        "the worker's log:\n{log}"
    );
    let coordinator_log = std::fs::read_to_string(&cluster.coordinator.log).unwrap();
    let query_id = coordinator_log
        .lines()
        .rev()
        .find(|l| l.contains("running the query again without the lost workers"))
        .map(query_id_of)
        .unwrap_or_else(|| panic!("no retry in the coordinator's log:\n{coordinator_log}"));
    assert_eq!(
        tasks_on(victim.flight, &query_id).await,
        0,
        "tasks of {query_id} left on the worker of the new epoch"
    );
    println!(
        "lease revoked at {} ms into a {} ms query; answered right {} ms later; the worker dropped the earlier epoch's tasks at once (task lease 60 s)",
        (took / 3).as_millis(),
        took.as_millis(),
        answered.as_millis()
    );
}

/// The query id in a coordinator log line (coloured: escapes dropped).
fn query_id_of(line: &str) -> String {
    let mut plain = String::new();
    let mut escape = false;
    for c in line.chars() {
        match c {
            '\u{1b}' => escape = true,
            'm' if escape => escape = false,
            _ if escape => {}
            _ => plain.push(c),
        }
    }
    let at = plain.find("query_id=").expect("a query id") + "query_id=".len();
    plain[at..at + 36].to_string()
}
