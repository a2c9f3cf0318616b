//! Membership, cancellation, failures and the Flight SQL surface, on real
//! multi-node clusters.

use std::time::Duration;

use arrow::array::{Array, Int64Array, StringArray};
use arrow::datatypes::UInt64Type;
use arrow_flight::sql::{CommandGetDbSchemas, CommandGetTables};
use arrow_flight::{Action, CancelFlightInfoRequest, CancelFlightInfoResult, CancelStatus};
use futures::TryStreamExt;
use prost::Message;
use weft_integration_tests::{
    eventually, files_catalog, read_all, run_sql, tpch_dir, ClusterOptions, TestCluster,
};

const SCALE: f64 = 0.05;

fn options() -> ClusterOptions {
    ClusterOptions {
        catalogs: files_catalog("tpch", tpch_dir(SCALE, 3)),
        target_partitions: Some(4),
        ..Default::default()
    }
}

/// A query that runs for a long time and streams many rows.
const LONG_QUERY: &str = "SELECT a.l_orderkey, b.l_partkey FROM lineitem a CROSS JOIN lineitem b";

fn total(batches: &[arrow::record_batch::RecordBatch]) -> i64 {
    batches
        .iter()
        .map(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("int64")
                .value(0)
        })
        .sum()
}

/// 1. Start 3 workers registered in etcd.
/// 2. Kill one; it must leave the coordinator's membership within the lease TTL.
/// 3. A query still runs on the remaining workers.
/// 4. Add a new worker; the next query uses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_worker_leaves_and_new_worker_is_used() {
    let mut cluster = TestCluster::start(3, options()).await.expect("cluster");
    // 2.
    let killed = cluster.kill_worker(0).expect("worker 0");
    let ttl = Duration::from_secs(cluster_ttl() + 2);
    assert!(
        eventually(ttl, || !cluster.member_ids().contains(&killed)).await,
        "killed worker {killed} still a member after {ttl:?}"
    );
    assert_eq!(cluster.member_ids().len(), 2);
    // 3. A filter keeps DataFusion from answering count(*) from Parquet statistics.
    let sql = "SELECT count(*) FROM lineitem WHERE l_quantity > 10";
    let rows = total(&cluster.query(sql).await.expect("query"));
    assert!(rows > 0);
    // 4.
    let new = cluster.add_worker().await.expect("new worker");
    cluster.wait_for_workers(3).await.expect("3 members");
    let new_worker = cluster.worker(new).expect("new worker handle");
    assert_eq!(new_worker.tasks().launched(), 0);
    let again = total(&cluster.query(sql).await.expect("query"));
    assert_eq!(again, rows);
    // Tasks are released after the query ends; the launch counter proves it ran some.
    let launched: Vec<_> = cluster
        .live_workers()
        .map(|w| (w.id().to_string(), w.tasks().launched()))
        .collect();
    assert!(
        new_worker.tasks().launched() > 0,
        "the new worker got no task: {launched:?}"
    );
}

/// A worker that starts draining races with a query being placed:
/// 1. Worker 1 refuses new tasks before its draining flag reaches the
///    coordinator (its registration still says active), as in the instant
///    after SIGTERM.
/// 2. Queries with tasks on every worker still answer right: the refused
///    launch makes the coordinator cancel the placement and place it again
///    without that worker.
/// 3. Worker 1 ran none of their tasks; the others did.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_launch_refused_by_a_draining_worker_is_placed_again() {
    let cluster = TestCluster::start(3, options()).await.expect("cluster");
    let sql = "SELECT l_returnflag, count(*) FROM lineitem GROUP BY l_returnflag ORDER BY 1";
    let want = cluster.query(sql).await.expect("query");
    let draining = cluster.worker(1).expect("worker 1");
    // 1.
    draining.tasks().stop_accepting();
    let before = draining.tasks().launched();
    // 2.
    for _ in 0..3 {
        let got = cluster.query(sql).await.expect("query placed again");
        assert_eq!(
            weft_integration_tests::canonical_rows(&got),
            weft_integration_tests::canonical_rows(&want)
        );
    }
    // 3.
    assert_eq!(
        draining.tasks().launched(),
        before,
        "the draining worker ran a task"
    );
    let busy: u64 = cluster
        .live_workers()
        .filter(|w| w.id() != draining.id())
        .map(|w| w.tasks().launched())
        .sum();
    assert!(busy > 0);
}

fn cluster_ttl() -> u64 {
    ClusterOptions::default().lease_ttl_secs as u64
}

/// 1. Start a long query and read its first batch.
/// 2. Cancel it with CancelFlightInfo.
/// 3. Every worker drops every task of the query.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_flight_info_stops_every_task() {
    let cluster = TestCluster::start(2, options()).await.expect("cluster");
    let mut client = cluster.client().await.expect("client");
    let info = client
        .execute(LONG_QUERY.to_string(), None)
        .await
        .expect("execute");
    let ticket = info.endpoint[0].ticket.clone().expect("ticket");
    let mut stream = client.do_get(ticket).await.expect("do_get");
    let first = tokio::time::timeout(Duration::from_secs(30), stream.try_next())
        .await
        .expect("first batch in time")
        .expect("first batch");
    assert!(first.is_some());
    assert!(cluster.live_workers().any(|w| w.tasks().task_count() > 0));
    let mut results = client
        .do_action(cancel_action(info.clone()))
        .await
        .expect("cancel");
    let body = results
        .try_next()
        .await
        .expect("cancel result")
        .expect("one result");
    let result = CancelFlightInfoResult::decode(body.body).expect("CancelFlightInfoResult");
    assert_eq!(result.status, CancelStatus::Cancelled as i32);
    assert!(
        eventually(Duration::from_secs(10), || cluster
            .live_workers()
            .all(|w| w.tasks().task_count() == 0))
        .await,
        "tasks still present after cancel"
    );
    // The stream ends with an error or end-of-stream, never hangs.
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.try_next().await {
                Ok(Some(_)) => continue,
                other => return other.map(|_| ()),
            }
        }
    })
    .await;
    assert!(end.is_ok(), "stream hung after cancel");
}

/// 1. Start a long query, read one batch, drop the stream.
/// 2. Every worker drops every task of the query.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropped_result_stream_cancels_the_query() {
    let cluster = TestCluster::start(2, options()).await.expect("cluster");
    let mut client = cluster.client().await.expect("client");
    let info = client
        .execute(LONG_QUERY.to_string(), None)
        .await
        .expect("execute");
    let ticket = info.endpoint[0].ticket.clone().expect("ticket");
    let mut stream = client.do_get(ticket).await.expect("do_get");
    stream.try_next().await.expect("first batch");
    drop(stream);
    assert!(
        eventually(Duration::from_secs(10), || cluster
            .live_workers()
            .all(|w| w.tasks().task_count() == 0))
        .await,
        "tasks still present after the client dropped the stream"
    );
}

/// 1. Start a long query on 2 workers and read a batch.
/// 2. Kill one worker.
/// 3. The query fails within seconds with an error naming that worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_death_fails_the_query_naming_the_worker() {
    let mut cluster = TestCluster::start(2, options()).await.expect("cluster");
    let mut client = cluster.client().await.expect("client");
    let info = client
        .execute(LONG_QUERY.to_string(), None)
        .await
        .expect("execute");
    let ticket = info.endpoint[0].ticket.clone().expect("ticket");
    let mut stream = client.do_get(ticket).await.expect("do_get");
    stream.try_next().await.expect("first batch");
    let victim = cluster.kill_worker(1).expect("worker 1");
    let outcome = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match stream.try_next().await {
                Ok(Some(_)) => continue,
                Ok(None) => return Err("stream ended without an error".to_string()),
                Err(e) => return Ok(e.to_string()),
            }
        }
    })
    .await
    .expect("query did not fail in time");
    let message = outcome.expect("an error");
    assert!(
        message.contains(&victim),
        "error does not name worker {victim}: {message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flight_sql_metadata_and_prepared_statements() {
    let cluster = TestCluster::start(2, options()).await.expect("cluster");
    let mut client = cluster.client().await.expect("client");

    let token = client
        .handshake("alice", "secret")
        .await
        .expect("handshake");
    assert!(!token.is_empty());

    let info = client.get_catalogs().await.expect("catalogs");
    let batches = read_all(&mut client, &info).await.expect("read catalogs");
    let names = strings(&batches, 0);
    assert!(names.contains(&"tpch".to_string()), "{names:?}");

    let info = client
        .get_db_schemas(CommandGetDbSchemas {
            catalog: Some("tpch".into()),
            db_schema_filter_pattern: None,
        })
        .await
        .expect("schemas");
    let batches = read_all(&mut client, &info).await.expect("read schemas");
    assert!(strings(&batches, 1).contains(&"public".to_string()));

    let info = client
        .get_tables(CommandGetTables {
            catalog: Some("tpch".into()),
            db_schema_filter_pattern: Some("public".into()),
            table_name_filter_pattern: Some("line%".into()),
            table_types: vec![],
            include_schema: true,
        })
        .await
        .expect("tables");
    let batches = read_all(&mut client, &info).await.expect("read tables");
    assert_eq!(strings(&batches, 2), vec!["lineitem".to_string()]);
    assert_eq!(batches[0].num_columns(), 5, "table_schema column present");

    let info = client.get_table_types().await.expect("table types");
    let batches = read_all(&mut client, &info)
        .await
        .expect("read table types");
    assert!(strings(&batches, 0).contains(&"TABLE".to_string()));

    let info = client.get_sql_info(vec![]).await.expect("sql info");
    let batches = read_all(&mut client, &info).await.expect("read sql info");
    assert!(batches.iter().map(|b| b.num_rows()).sum::<usize>() > 3);

    let mut prepared = client
        .prepare(
            "SELECT count(*) AS n FROM nation WHERE n_regionkey = 1".to_string(),
            None,
        )
        .await
        .expect("prepare");
    assert_eq!(
        prepared.dataset_schema().expect("schema").field(0).name(),
        "n"
    );
    let info = prepared.execute().await.expect("execute prepared");
    let batches = read_all(&mut client, &info).await.expect("read prepared");
    assert_eq!(total(&batches), 5);
    prepared.close().await.expect("close");

    // System tables exist only on the coordinator; they still run through the cluster.
    let batches = run_sql(
        &mut client,
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'lineitem'",
    )
    .await
    .expect("information_schema query");
    assert_eq!(total(&batches), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn user_errors_are_clear() {
    let cluster = TestCluster::start(1, options()).await.expect("cluster");
    let mut client = cluster.client().await.expect("client");
    let e = run_sql(&mut client, "SELEC 1")
        .await
        .expect_err("bad SQL")
        .to_string();
    assert!(
        e.contains("InvalidArgument") || e.contains("invalid argument"),
        "{e}"
    );
    let e = run_sql(&mut client, "SELECT * FROM tpch.public.no_such_table")
        .await
        .expect_err("unknown table")
        .to_string();
    assert!(e.contains("no_such_table"), "{e}");
    let e = run_sql(&mut client, "SELECT * FROM nocatalog.public.t")
        .await
        .expect_err("unknown catalog")
        .to_string();
    assert!(e.contains("nocatalog"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_workers_is_reported() {
    let cluster = TestCluster::start(0, options()).await.expect("cluster");
    let e = cluster
        .query("SELECT 1")
        .await
        .expect_err("no workers")
        .to_string();
    assert!(e.contains("no workers are registered"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn results_stream_before_the_query_ends() {
    let cluster = TestCluster::start(2, options()).await.expect("cluster");
    let mut client = cluster.client().await.expect("client");
    let info = client
        .execute(LONG_QUERY.to_string(), None)
        .await
        .expect("execute");
    let ticket = info.endpoint[0].ticket.clone().expect("ticket");
    let mut stream = client.do_get(ticket).await.expect("do_get");
    let first = tokio::time::timeout(Duration::from_secs(30), stream.try_next())
        .await
        .expect("first batch in time")
        .expect("first batch")
        .expect("a batch");
    assert!(first.num_rows() > 0);
    // The cross join has ~9e10 rows: it is certainly still running.
    assert!(cluster
        .live_workers()
        .any(|w| w.tasks().running_count() > 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exchange_compression_gives_same_results() {
    let mut opts = options();
    opts.compression = "zstd".to_string();
    let cluster = TestCluster::start(2, opts).await.expect("cluster");
    let sql =
        "SELECT l_returnflag, count(*) FROM lineitem GROUP BY l_returnflag ORDER BY l_returnflag";
    let batches = cluster.query(sql).await.expect("query");
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
}

fn strings(batches: &[arrow::record_batch::RecordBatch], col: usize) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| {
            let a = b
                .column(col)
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("utf8 column");
            (0..a.len())
                .map(|i| a.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// 1. PollFlightInfo with a statement starts the query and returns endpoints,
///    progress and a descriptor to poll again.
/// 2. After the results are read, polling reports progress 1.0 and no further
///    descriptor.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poll_flight_info_reports_progress() {
    use arrow_flight::flight_service_client::FlightServiceClient;
    use arrow_flight::sql::{CommandStatementQuery, ProstMessageExt};
    use arrow_flight::FlightDescriptor;

    let cluster = TestCluster::start(2, options()).await.expect("cluster");
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.coordinator.addr()))
            .expect("url")
            .connect()
            .await
            .expect("connect");
    let mut flight = FlightServiceClient::new(channel);
    let cmd = CommandStatementQuery {
        query: "SELECT l_linestatus, count(*) FROM lineitem GROUP BY l_linestatus".to_string(),
        transaction_id: None,
    };
    let poll = flight
        .poll_flight_info(FlightDescriptor::new_cmd(cmd.as_any().encode_to_vec()))
        .await
        .expect("poll")
        .into_inner();
    let info = poll.info.expect("flight info");
    let progress = poll.progress.expect("progress");
    assert!((0.0..=1.0).contains(&progress), "{progress}");
    let next = poll.flight_descriptor.expect("descriptor to poll again");

    let mut client = cluster.client().await.expect("client");
    let batches = read_all(&mut client, &info).await.expect("results");
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 2);

    let done = flight
        .poll_flight_info(next)
        .await
        .expect("poll again")
        .into_inner();
    assert_eq!(done.progress, Some(1.0));
    assert!(
        done.flight_descriptor.is_none(),
        "a finished query has nothing more to poll"
    );
}

fn u64s(batches: &[arrow::record_batch::RecordBatch], col: usize) -> Vec<u64> {
    batches
        .iter()
        .flat_map(|b| {
            arrow::array::AsArray::as_primitive::<UInt64Type>(b.column(col))
                .values()
                .to_vec()
        })
        .collect()
}

/// 1. `system.runtime.workers` lists the live workers.
/// 2. While a long query streams, `system.runtime.queries` shows it running
///    with tasks running, and `system.runtime.stages` its stages with rows
///    already produced.
/// 3. A query that has ended shows as finished with every task done.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn system_tables_show_queries_stages_and_workers() {
    let cluster = TestCluster::start(2, options()).await.expect("cluster");
    let workers = cluster
        .query("SELECT worker_id, address, slots FROM system.runtime.workers ORDER BY worker_id")
        .await
        .expect("workers");
    let mut ids = cluster.member_ids();
    ids.sort();
    assert_eq!(strings(&workers, 0), ids);

    let mut client = cluster.client().await.expect("client");
    let info = client
        .execute(LONG_QUERY.to_string(), None)
        .await
        .expect("execute");
    let ticket = info.endpoint[0].ticket.clone().expect("ticket");
    let mut stream = client.do_get(ticket).await.expect("do_get");
    stream
        .try_next()
        .await
        .expect("first batch")
        .expect("a batch");

    let running = cluster
        .query(&format!(
            "SELECT query_id, state, tasks_running FROM system.runtime.queries WHERE sql = '{LONG_QUERY}'"
        ))
        .await
        .expect("queries");
    assert_eq!(strings(&running, 1), vec!["running"]);
    assert!(u64s(&running, 2)[0] > 0, "tasks are running");
    let id = strings(&running, 0).remove(0);
    let stages = cluster
        .query(&format!(
            "SELECT stage_id, tasks_total, rows_out FROM system.runtime.stages \
             WHERE query_id = '{id}' ORDER BY stage_id"
        ))
        .await
        .expect("stages");
    assert!(!u64s(&stages, 1).is_empty(), "the query has stages");
    assert!(
        u64s(&stages, 1).iter().all(|&t| t > 0),
        "every stage has tasks"
    );
    assert!(
        u64s(&stages, 2).iter().any(|&r| r > 0),
        "rows were produced before the first batch arrived"
    );
    drop(stream);

    let sql = "SELECT l_returnflag, count(*) FROM lineitem GROUP BY l_returnflag";
    cluster.query(sql).await.expect("group by");
    let done = cluster
        .query(&format!(
            "SELECT state, tasks_total, tasks_done, progress FROM system.runtime.queries WHERE sql = '{sql}'"
        ))
        .await
        .expect("queries");
    assert_eq!(strings(&done, 0), vec!["finished"]);
    assert!(u64s(&done, 1)[0] > 0);
    assert_eq!(u64s(&done, 1), u64s(&done, 2));

    // Once the workers have forgotten the tasks, the stages keep the
    // counters the workers returned when releasing them.
    assert!(
        eventually(Duration::from_secs(10), || cluster
            .live_workers()
            .all(|w| w.tasks().task_count() == 0))
        .await,
        "tasks released"
    );
    let stages = cluster
        .query(&format!(
            "SELECT s.stage_id, s.rows_out, s.bytes_out, s.tasks_done FROM system.runtime.stages s \
             JOIN system.runtime.queries q ON s.query_id = q.query_id \
             WHERE q.sql = '{sql}' ORDER BY s.stage_id"
        ))
        .await
        .expect("stages");
    let rows = u64s(&stages, 1);
    assert!(
        rows.len() > 1,
        "the group by runs in several stages: {rows:?}"
    );
    assert!(
        rows.iter().all(|&r| r > 0),
        "every stage produced rows: {rows:?}"
    );
    assert_eq!(
        rows.last(),
        Some(&3),
        "the final stage produced the 3 groups (A, N, R)"
    );
    assert!(
        u64s(&stages, 2).iter().all(|&b| b > 0),
        "bytes out recorded"
    );
}

/// With direct results, the FlightInfo's endpoints name the workers; a client
/// reads them there and gets the same rows as through the coordinator, and
/// the query then ends as finished with every task released.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn direct_results_are_read_from_the_workers() {
    let mut opts = options();
    opts.direct_results = true;
    let cluster = TestCluster::start(2, opts).await.expect("cluster");
    let sql = "SELECT l_returnflag, l_linestatus, count(*) AS n FROM lineitem \
               GROUP BY l_returnflag, l_linestatus ORDER BY 1, 2";
    let mut client = cluster.client().await.expect("client");
    let info = client
        .execute(sql.to_string(), None)
        .await
        .expect("execute");
    let workers: Vec<String> = cluster
        .live_workers()
        .map(|w| w.address().trim_start_matches("http://").to_string())
        .collect();
    assert!(!info.endpoint.is_empty());
    for e in &info.endpoint {
        let uri = &e.location.first().expect("a location").uri;
        assert!(
            workers.iter().any(|w| uri == &format!("grpc+tcp://{w}")),
            "{uri} is a worker ({workers:?})"
        );
    }
    let direct = read_all(&mut client, &info).await.expect("direct read");

    let proxied = TestCluster::start(2, options()).await.expect("cluster");
    let want = proxied.query(sql).await.expect("proxied");
    assert_eq!(strings(&direct, 0), strings(&want, 0));
    let counts = |b: &[arrow::record_batch::RecordBatch]| -> Vec<i64> {
        b.iter()
            .flat_map(|b| {
                b.column(2)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .expect("int64")
                    .values()
                    .to_vec()
            })
            .collect()
    };
    assert_eq!(counts(&direct), counts(&want));

    let finished = eventually(Duration::from_secs(10), || {
        cluster.live_workers().all(|w| w.tasks().task_count() == 0)
    })
    .await;
    assert!(
        finished,
        "every task is released once the results were read"
    );
    let state = cluster
        .query(&format!(
            "SELECT state FROM system.runtime.queries WHERE sql = '{}'",
            sql.replace('\'', "''")
        ))
        .await
        .expect("queries");
    assert_eq!(strings(&state, 0), vec!["finished"]);
}

/// With `max_running_queries = 1`, a second query waits in state `queued`
/// while the first runs, starts when the first ends, and a query that waits
/// longer than the queue timeout fails naming the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queries_beyond_the_limit_wait_in_the_queue() {
    let mut opts = options();
    opts.max_running_queries = Some(1);
    opts.queue_timeout = Duration::from_secs(3);
    let cluster = TestCluster::start(2, opts).await.expect("cluster");
    let engine = std::sync::Arc::clone(cluster.coordinator.engine());
    let state_of = |sql: &str| {
        engine
            .queries
            .all()
            .into_iter()
            .find(|q| q.sql == sql)
            .map(|q| q.state().name())
    };

    // The first query runs (its results are not read yet).
    let mut first = cluster.client().await.expect("client");
    let info = first
        .execute(LONG_QUERY.to_string(), None)
        .await
        .expect("execute");
    assert_eq!(state_of(LONG_QUERY), Some("running"));

    // The second one waits.
    let sql = "SELECT count(*) FROM orders";
    let mut second = cluster.client().await.expect("client");
    let waiting = tokio::spawn(async move { run_sql(&mut second, sql).await });
    assert!(
        eventually(Duration::from_secs(5), || state_of(sql) == Some("queued")).await,
        "second query queued: {:?}",
        state_of(sql)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(state_of(sql), Some("queued"), "still waiting");

    // The first ends (cancelled): the second runs and answers.
    cancel(&mut first, &info).await;
    let rows = waiting.await.expect("join").expect("second query");
    assert_eq!(rows.iter().map(|b| b.num_rows()).sum::<usize>(), 1);

    // A query that waits longer than the timeout fails, naming the limit.
    let info = first
        .execute(LONG_QUERY.to_string(), None)
        .await
        .expect("execute");
    let mut third = cluster.client().await.expect("client");
    let started = std::time::Instant::now();
    let err = run_sql(&mut third, sql).await.expect_err("times out");
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert!(err.to_string().contains("--max-running-queries"), "{err}");

    // A client that gives up while its query is queued leaves it cancelled.
    let abandoned = "SELECT count(*) FROM customer";
    let mut fourth = cluster.client().await.expect("client");
    let waiting = tokio::spawn(async move { run_sql(&mut fourth, abandoned).await });
    assert!(
        eventually(Duration::from_secs(5), || state_of(abandoned)
            == Some("queued"))
        .await
    );
    waiting.abort();
    assert!(
        eventually(Duration::from_secs(5), || state_of(abandoned)
            == Some("cancelled"))
        .await,
        "abandoned query: {:?}",
        state_of(abandoned)
    );
    cancel(&mut first, &info).await;
}

async fn cancel(
    client: &mut arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel>,
    info: &arrow_flight::FlightInfo,
) {
    let mut results = client
        .do_action(cancel_action(info.clone()))
        .await
        .expect("cancel");
    while results.try_next().await.expect("cancel result").is_some() {}
}

/// The Flight `CancelFlightInfo` action for a query's FlightInfo.
fn cancel_action(info: arrow_flight::FlightInfo) -> Action {
    Action {
        r#type: "CancelFlightInfo".to_string(),
        body: CancelFlightInfoRequest::new(info).encode_to_vec().into(),
    }
}

/// 1. Start 2 workers (2 slots each).
/// 2. EXPLAIN a join with a grouped aggregate: DataFusion's logical and
///    physical plans and the distributed plan come back as rows.
/// 3. The distributed plan names every stage with its tasks and workers and
///    how it reads the stages below; its stage count and task total equal
///    what the query then launches (system.runtime.stages of that query).
/// 4. EXPLAIN ANALYZE runs it distributed and reports every stage with its
///    tasks' metrics: every task done, the final stage's output rows equal
///    the query's result rows, and every stage that reads another one read
///    rows and bytes from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn explain_shows_the_distributed_plan() {
    let cluster = TestCluster::start(2, options()).await.expect("cluster");
    let sql = "SELECT o_orderpriority, count(*) AS n FROM orders JOIN lineitem ON o_orderkey = l_orderkey \
               WHERE l_quantity > 30 GROUP BY o_orderpriority ORDER BY o_orderpriority";
    let batches = cluster
        .query(&format!("EXPLAIN {sql}"))
        .await
        .expect("explain");
    let kinds = strings(&batches, 0);
    assert_eq!(
        kinds,
        vec!["logical_plan", "physical_plan", "distributed_plan"]
    );
    let plan = strings(&batches, 1)[2].clone();
    let header = plan.lines().next().expect("header");
    let stages: usize = header
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .expect("stage count");
    assert!(
        stages >= 3,
        "a join with an aggregate cuts into several stages:\n{plan}"
    );
    for s in 0..stages {
        assert!(
            plan.contains(&format!("\nStage {s} (")),
            "stage {s} missing:\n{plan}"
        );
    }
    assert!(plan.contains("(final, "), "{plan}");
    assert!(
        plan.contains(" by shuffle (") || plan.contains(" by broadcast ("),
        "{plan}"
    );
    assert!(plan.contains(" in process)"), "{plan}");
    for w in cluster.live_workers() {
        assert!(
            plan.contains(&format!(" on {}", w.id())),
            "worker {} unused:\n{plan}",
            w.id()
        );
    }
    assert!(
        plan.contains("StageReaderExec"),
        "fragments are shown:\n{plan}"
    );
    let tasks: usize = header
        .split(", ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("task count");

    // What EXPLAIN promised is what runs.
    let mut client = cluster.client().await.expect("client");
    let info = client.execute(sql.to_string(), None).await.expect("run");
    let query_id = weft_coordinator::flight_sql::query_ids_of(&info)[0].clone();
    read_all(&mut client, &info).await.expect("read");
    let launched = run_sql(
        &mut client,
        &format!("SELECT tasks_total FROM system.runtime.stages WHERE query_id = '{query_id}'"),
    )
    .await
    .expect("stages of the query");
    let per_stage = u64s(&launched, 0);
    assert_eq!(
        (per_stage.len(), per_stage.iter().sum::<u64>() as usize),
        (stages, tasks),
        "EXPLAIN said:\n{plan}"
    );

    // 4. EXPLAIN ANALYZE.
    let result_rows: usize = cluster
        .query(sql)
        .await
        .expect("query")
        .iter()
        .map(|b| b.num_rows())
        .sum();
    let batches = cluster
        .query(&format!("EXPLAIN ANALYZE {sql}"))
        .await
        .expect("explain analyze");
    assert_eq!(strings(&batches, 0), vec!["Plan with Metrics"]);
    let report = strings(&batches, 1)[0].clone();
    assert!(
        report.contains(&format!("{result_rows} result row")),
        "{report}"
    );
    let mut stages_seen = 0;
    let lines: Vec<&str> = report.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let Some(metrics) = line.trim().strip_prefix("metrics: ") else {
            continue;
        };
        stages_seen += 1;
        let header = lines[i - 1];
        let number = |after: &str| -> u64 {
            metrics
                .split(after)
                .nth(1)
                .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no `{after}` in {metrics}"))
        };
        let (done, total) = (number("tasks "), number("/"));
        assert_eq!(done, total, "every task done: {header}\n{metrics}");
        if header.contains("(final,") {
            assert_eq!(number("output ") as usize, result_rows, "{report}");
        }
        if header.contains(": reads stage") {
            assert!(number("input ") > 0, "{header} read nothing:\n{report}");
            assert!(
                !metrics.contains("rows (0 B)"),
                "{header}: 0 bytes read:\n{report}"
            );
        }
    }
    assert_eq!(stages_seen, stages, "{report}");
}
