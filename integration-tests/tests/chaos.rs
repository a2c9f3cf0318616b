//! Chaos scripts: real processes (etcd, a coordinator, workers) killed or
//! cut off while queries run. Each test is one numbered script.
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
    let catalogs = format!(
        "default_catalog = \"tpch\"\n[catalogs.tpch]\nkind = \"files\"\npath = {:?}\nformat = \"parquet\"\n",
        dir.display().to_string()
    );
    ProcessCluster::start(
        workers,
        ProcessOptions {
            catalogs,
            slots,
            env,
            args: vec![],
            etcd: None,
            http: false,
            sign_in: None,
            tls_ca: None,
        },
    )
    .await
    .expect("a cluster")
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

/// A query that runs long enough to be cancelled at any point of its life.
const LONG_SQL: &str = "SELECT a.l_orderkey, b.l_partkey FROM lineitem a CROSS JOIN lineitem b";

/// xorshift64*: the seeded choices of script 4, repeatable from the seed.
struct Rng(u64);

impl Rng {
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

async fn script_4() {
    use weft_integration_tests::{eventually, files_catalog, ClusterOptions, TestCluster};
    // 1.
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
    println!("chaos seed {seed} (WEFT_CHAOS_SEED={seed} repeats this run)");
    let mut rng = Rng(seed);
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
