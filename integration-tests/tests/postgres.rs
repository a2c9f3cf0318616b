//! PostgreSQL catalogs against a real PostgreSQL server (started by
//! `scripts/test.sh`, found through `WEFT_TEST_PG`), through a 2-worker cluster.

use std::time::Duration;

use weft_common::config::TableSplitConfig;
use weft_integration_tests::pg::{
    batch_rows, catalogs, connect, create_database, load_tpch, pg_rows, postgres_catalog,
    same_rows, with_database,
};
use weft_integration_tests::{split_statements, tpch_dir, tpch_query, ClusterOptions, TestCluster};

async fn cluster(options: ClusterOptions) -> TestCluster {
    // These tests load databases while clusters run: a longer lease keeps a
    // starved worker's registration (membership is tested elsewhere).
    let options = ClusterOptions {
        lease_ttl_secs: 10,
        ..options
    };
    tokio::time::timeout(Duration::from_secs(60), TestCluster::start(2, options))
        .await
        .expect("cluster start timed out")
        .expect("cluster starts")
}

async fn weft_rows(cluster: &TestCluster, text: &str) -> anyhow::Result<Vec<Vec<String>>> {
    let mut rows = Vec::new();
    for s in split_statements(text) {
        let batches = cluster.query(&s).await?;
        if !batches.is_empty() && batches[0].num_columns() > 0 {
            rows = batch_rows(&batches);
        }
    }
    Ok(rows)
}

async fn explain(cluster: &TestCluster, sql: &str) -> String {
    cluster.explain(sql).await.expect("explain")
}

/// TPC-H loaded into PostgreSQL (spec types, `char(n)` included): the 22
/// queries through Weft's `postgres` catalog, with lineitem and orders read as
/// several ctid splits, return what PostgreSQL itself returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tpch_through_postgres_catalog_matches_postgres() {
    let url = create_database("weft_tpch").await.expect("create database");
    let client = connect(&url).await.expect("connect");
    load_tpch(&client, tpch_dir(0.05, 3))
        .await
        .expect("load TPC-H");
    let mut db = postgres_catalog(&url);
    // Small splits so the larger tables are read in parallel pieces.
    db.split_size = 256 * 1024;
    let cluster = cluster(ClusterOptions {
        catalogs: catalogs(vec![("pg", db)]),
        target_partitions: Some(4),
        ..Default::default()
    })
    .await;
    let plan = explain(&cluster, "SELECT l_orderkey FROM lineitem").await;
    assert!(
        plan.contains("splits=4 (ctid ranges, one snapshot)"),
        "lineitem is read as 4 ctid splits:\n{plan}"
    );
    let mut failures = Vec::new();
    for q in 1..=22 {
        let text = tpch_query(q);
        if std::env::var_os("WEFT_SHOW_PLANS").is_some() {
            eprintln!(
                "q{q}:\n{}",
                explain(&cluster, &split_statements(&text)[0]).await
            );
        }
        eprintln!("q{q}");
        let want = pg_rows(&client, &text)
            .await
            .expect("PostgreSQL runs the query");
        let got = tokio::time::timeout(Duration::from_secs(120), weft_rows(&cluster, &text)).await;
        match got {
            Ok(Ok(rows)) => {
                if let Err(e) = same_rows(&rows, &want) {
                    failures.push(format!("q{q}: {e}"));
                }
            }
            Ok(Err(e)) => failures.push(format!("q{q}: error {e}")),
            Err(_) => failures.push(format!("q{q}: timed out")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Split reads, as a script:
/// 1. A table of 20 000 rows is read with 1 split, 7 ctid splits and 5
///    key-range splits: each returns exactly the rows of the single read.
/// 2. While another session keeps inserting rows, a 7-split read still
///    returns one consistent snapshot: no row lost or doubled (ids are
///    distinct and form a prefix-closed set as inserted in order).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn split_reads_return_exactly_the_rows_of_a_single_read() {
    let url = create_database("weft_splits")
        .await
        .expect("create database");
    let client = connect(&url).await.expect("connect");
    client
        .batch_execute(
            "CREATE TABLE events (id bigint PRIMARY KEY, payload text);
             INSERT INTO events SELECT g, repeat('x', 50) || g FROM generate_series(1, 20000) g;
             CREATE TABLE events_ctid (LIKE events);
             INSERT INTO events_ctid SELECT * FROM events;
             CREATE TABLE events_key (LIKE events);
             INSERT INTO events_key SELECT * FROM events;
             ANALYZE;",
        )
        .await
        .expect("create tables");
    let mut db = postgres_catalog(&url);
    db.tables.insert(
        "public.events_ctid".into(),
        TableSplitConfig {
            splits: Some(7),
            ..Default::default()
        },
    );
    db.tables.insert(
        "public.events_key".into(),
        TableSplitConfig {
            splits: Some(5),
            split_column: Some("id".into()),
            lower_bound: Some("1".into()),
            upper_bound: Some("20000".into()),
        },
    );
    let cluster = cluster(ClusterOptions {
        catalogs: catalogs(vec![("pg", db)]),
        ..Default::default()
    })
    .await;

    // 1.
    let single = "SELECT count(*), count(DISTINCT id), sum(id), min(payload), max(payload) FROM pg.public.events";
    let want = weft_rows(&cluster, single).await.expect("single read");
    assert_eq!(want[0][0], "20000");
    for table in ["events_ctid", "events_key"] {
        let plan = explain(&cluster, &format!("SELECT id FROM {table}")).await;
        assert!(plan.contains("one snapshot"), "{table}:\n{plan}");
        let got = weft_rows(&cluster, &single.replace("events", table))
            .await
            .expect("split read");
        assert_eq!(got, want, "{table}");
    }
    let plan = explain(&cluster, "SELECT id FROM events_ctid").await;
    assert!(plan.contains("splits=7 (ctid ranges"), "{plan}");
    let plan = explain(&cluster, "SELECT id FROM events_key").await;
    assert!(plan.contains("splits=5 (column id"), "{plan}");

    // 2.
    let writer_url = url.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_writer = std::sync::Arc::clone(&stop);
    let writer = tokio::spawn(async move {
        let c = connect(&writer_url).await.expect("writer connects");
        let mut next = 20001i64;
        while !stop_writer.load(std::sync::atomic::Ordering::Relaxed) {
            c.execute(
                "INSERT INTO events_ctid SELECT g, 'new' || g FROM generate_series($1::bigint, $1::bigint + 99) g",
                &[&next],
            )
            .await
            .expect("insert");
            next += 100;
        }
        next
    });
    for _ in 0..5 {
        let got = weft_rows(
            &cluster,
            "SELECT count(*), count(DISTINCT id), min(id), max(id) FROM events_ctid",
        )
        .await
        .expect("read while inserting");
        let count: i64 = got[0][0].parse().unwrap();
        assert_eq!(got[0][0], got[0][1], "no row read twice: {got:?}");
        assert_eq!(got[0][2], "1");
        assert_eq!(got[0][3], count.to_string(), "no row lost: {got:?}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let inserted_up_to = writer.await.expect("writer");
    assert!(inserted_up_to > 20001, "the writer inserted rows meanwhile");
}

/// Column types map to Arrow as documented, NULLs included; an unmapped type
/// is read as text; filters, projection and limit go into the remote SQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn types_map_and_simple_pushdown() {
    let url = create_database("weft_types")
        .await
        .expect("create database");
    let client = connect(&url).await.expect("connect");
    client
        .batch_execute(
            "CREATE TYPE mood AS ENUM ('sad', 'happy');
             CREATE TABLE t (
               b boolean, i2 smallint, i4 integer, i8 bigint, f4 real, f8 double precision,
               n numeric(12,3), nu numeric, tx text, vc varchar(10), ch char(5),
               d date, tm time, ts timestamp, tz timestamptz, iv interval, by bytea,
               u uuid, j json, jb jsonb, e mood, arr integer[], tarr text[], m money);
             INSERT INTO t VALUES (
               true, -2, 4, 8000000000, 1.5, 2.25, -1234.567, 3.14159, 'héllo', 'v', 'ab',
               '2024-02-29', '12:34:56.789', '2024-01-02 03:04:05.678', '2024-01-02 03:04:05+02',
               '1 mon 2 days 00:00:03', '\\x0102', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
               '{\"a\": 1}', '{\"b\": 2}', 'happy', '{1,NULL,3}', '{x,y}', '12.34');
             INSERT INTO t (i4) VALUES (NULL);",
        )
        .await
        .expect("create table");
    let cluster = cluster(ClusterOptions {
        catalogs: catalogs(vec![("pg", postgres_catalog(&url))]),
        ..Default::default()
    })
    .await;
    let batches = cluster
        .query("SELECT * FROM t WHERE b")
        .await
        .expect("select");
    let schema = batches[0].schema();
    let types: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| format!("{}:{}", f.name(), f.data_type()))
        .collect();
    assert_eq!(
        types.join(" "),
        "b:Boolean i2:Int16 i4:Int32 i8:Int64 f4:Float32 f8:Float64 n:Decimal128(12, 3) \
         nu:Decimal128(38, 10) tx:Utf8 vc:Utf8 ch:Utf8 d:Date32 tm:Time64(µs) ts:Timestamp(µs) \
         tz:Timestamp(µs, \"UTC\") iv:Interval(MonthDayNano) by:Binary u:Utf8 j:Utf8 jb:Utf8 \
         e:Utf8 arr:List(Int32) tarr:List(Utf8) m:Utf8"
    );
    let row = &batch_rows(&batches)[0];
    let expected = [
        "true",
        "-2",
        "4",
        "8000000000",
        "1.5",
        "2.25",
        "-1234.567",
        "3.1415900000",
        "héllo",
        "v",
        "ab",
        "2024-02-29",
        "12:34:56.789",
        "2024-01-02T03:04:05.678",
        "2024-01-02T01:04:05Z",
        "1 mons 2 days 3.000000000 secs",
        "0102",
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "{\"a\": 1}",
        "{\"b\": 2}",
        "happy",
        "[1, NULL, 3]",
        "[x, y]",
        "$12.34",
    ];
    assert_eq!(row, &expected.map(str::to_string).to_vec());
    let nulls = batch_rows(
        &cluster
            .query("SELECT i4, tx, arr FROM t WHERE i4 IS NULL")
            .await
            .unwrap(),
    );
    assert_eq!(nulls, vec![vec!["NULL", "NULL", "NULL"]]);

    let plan = explain(
        &cluster,
        "SELECT i4, tx FROM t WHERE i8 > 5 AND tx LIKE 'h%' LIMIT 3",
    )
    .await;
    assert!(
        plan.contains(
            r#"sql=SELECT "i4", "tx" FROM "public"."t" WHERE ("i8" > 5) AND "tx" LIKE 'h%' LIMIT 3"#
        ),
        "{plan}"
    );
    // Collation-dependent string ranges stay in Weft; char(n) equality with
    // a literal is pushed (both ignore the padding), its ranges are not.
    let plan = explain(&cluster, "SELECT i4 FROM t WHERE tx > 'a' AND ch = 'ab'").await;
    let scan = plan
        .lines()
        .find(|l| l.contains("RemoteScanExec"))
        .expect("a remote scan");
    assert!(
        scan.trim_end()
            .ends_with(r#"sql=SELECT "i4", "tx" FROM "public"."t" WHERE ("ch" = 'ab')"#),
        "{plan}"
    );
    let plan = explain(&cluster, "SELECT i4 FROM t WHERE ch > 'a'").await;
    assert!(!plan.contains(r#""ch" >"#), "{plan}");
    let got = batch_rows(
        &cluster
            .query("SELECT i4 FROM t WHERE tx > 'a' AND ch = 'ab'")
            .await
            .unwrap(),
    );
    assert_eq!(got, vec![vec!["4"]]);
}

/// Errors name the catalog and the host, never the password; one broken
/// catalog does not stop the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn errors_name_catalog_and_host_but_never_the_password() {
    let url = create_database("weft_errors")
        .await
        .expect("create database");
    let client = connect(&url).await.expect("connect");
    client
        .batch_execute("CREATE TABLE ok (x integer); INSERT INTO ok VALUES (1); CREATE TABLE doomed (x integer);")
        .await
        .expect("create");
    let password = url
        .split("://")
        .nth(1)
        .and_then(|r| r.split('@').next())
        .and_then(|u| u.split(':').nth(1))
        .expect("test URL has a password")
        .to_string();
    let wrong_password = url.replacen(&format!(":{password}@"), ":not-the-password@", 1);
    let missing_db = with_database(&url, "no_such_database");
    // A port nothing listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let unreachable = format!("postgresql://weft:{password}@127.0.0.1:{closed}/x");
    let mut down = postgres_catalog(&unreachable);
    down.connect_timeout = Duration::from_secs(2);
    let cluster = cluster(ClusterOptions {
        catalogs: catalogs(vec![
            ("good", postgres_catalog(&url)),
            ("badpw", postgres_catalog(&wrong_password)),
            ("nodb", postgres_catalog(&missing_db)),
            ("down", down),
        ]),
        ..Default::default()
    })
    .await;
    let rows = batch_rows(&cluster.query("SELECT x FROM good.public.ok").await.unwrap());
    assert_eq!(
        rows,
        vec![vec!["1"]],
        "the good catalog works beside broken ones"
    );

    let err = |sql: &'static str| {
        let cluster = &cluster;
        async move {
            cluster
                .query(sql)
                .await
                .expect_err("query fails")
                .to_string()
        }
    };
    let e = err("SELECT * FROM badpw.public.ok").await;
    assert!(
        e.contains("catalog \\\"badpw\\\"") && e.contains("password authentication failed"),
        "{e}"
    );
    let e = err("SELECT * FROM nodb.public.ok").await;
    assert!(
        e.contains("catalog \\\"nodb\\\"") && e.contains("no_such_database"),
        "{e}"
    );
    let e = err("SELECT * FROM down.public.ok").await;
    assert!(
        e.contains("catalog \\\"down\\\"") && e.contains(&format!("127.0.0.1:{closed}")),
        "{e}"
    );
    // A remote error carries PostgreSQL's message.
    let e = err("SELECT x FROM good.public.ok WHERE x * 9223372036854775807 * 2 > 0").await;
    assert!(
        e.contains("catalog \\\"good\\\"") && e.contains("out of range"),
        "{e}"
    );
    // A table dropped between planning and execution.
    client.batch_execute("DROP TABLE doomed").await.unwrap();
    let e = err("SELECT * FROM good.public.doomed").await;
    assert!(e.contains("doomed"), "{e}");
    let plan = explain(&cluster, "SELECT * FROM good.public.ok").await;
    for text in [&e, &plan] {
        assert!(!text.contains(&password), "password leaked: {text}");
    }
}

/// A join + aggregate over one PostgreSQL catalog runs there as one query
/// (one remote scan whose SQL has the join and the GROUP BY); a top-N goes
/// with its ORDER BY / LIMIT; what PostgreSQL would compute differently
/// (division, string ordering) keeps the work in Weft. Results equal
/// PostgreSQL's own either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_catalog_sub_plans_run_as_one_remote_query() {
    let url = create_database("weft_push").await.expect("create database");
    let client = connect(&url).await.expect("connect");
    client
        .batch_execute(
            "CREATE TABLE customers (id integer PRIMARY KEY, name text, segment char(10));
             CREATE TABLE orders (id integer PRIMARY KEY, customer_id integer, amount numeric(10,2), placed date);
             INSERT INTO customers SELECT g, 'customer ' || g, CASE WHEN g % 3 = 0 THEN 'BUILDING' ELSE 'MACHINERY' END
               FROM generate_series(1, 200) g;
             INSERT INTO orders SELECT g, 1 + g % 150, (g % 97) * 1.25, DATE '2024-01-01' + (g % 300)
               FROM generate_series(1, 5000) g;
             ANALYZE customers; ANALYZE orders;",
        )
        .await
        .expect("create tables");
    let cluster = cluster(ClusterOptions {
        catalogs: catalogs(vec![("pg", postgres_catalog(&url))]),
        target_partitions: Some(4),
        ..Default::default()
    })
    .await;

    let pushed = [
        // Join + aggregate.
        "SELECT c.segment, count(*) AS n, sum(o.amount) AS total, min(o.placed) AS first \
         FROM customers c JOIN orders o ON o.customer_id = c.id \
         WHERE o.amount > 10 GROUP BY c.segment",
        // Left join, aggregate over a filtered side.
        "SELECT c.id, count(o.placed) AS n FROM customers c \
         LEFT JOIN orders o ON o.customer_id = c.id AND o.placed >= DATE '2024-06-01' \
         GROUP BY c.id",
        // Top-N.
        "SELECT id, amount FROM orders WHERE placed < DATE '2024-03-01' ORDER BY amount DESC, id LIMIT 7",
    ];
    for sql in pushed {
        let plan = explain(&cluster, sql).await;
        let scans: Vec<&str> = plan
            .lines()
            .filter(|l| l.contains("RemoteScanExec"))
            .collect();
        assert_eq!(scans.len(), 1, "one remote query for {sql}:\n{plan}");
        assert!(scans[0].contains("relation=query, splits=1"), "{plan}");
        let want = pg_rows(&client, sql).await.expect("PostgreSQL runs it");
        let got = weft_rows(&cluster, sql).await.expect("Weft runs it");
        same_rows(&got, &want).unwrap_or_else(|e| panic!("{sql}: {e}"));
        if sql.contains("ORDER BY") {
            assert_eq!(got.len(), 7);
            assert!(
                scans[0].contains("ORDER BY") && scans[0].contains("LIMIT 7"),
                "{plan}"
            );
            let want_ids: Vec<&String> = want.iter().map(|r| &r[0]).collect();
            let got_ids: Vec<&String> = got.iter().map(|r| &r[0]).collect();
            assert_eq!(got_ids, want_ids, "top-N order");
        } else {
            assert!(scans[0].contains("JOIN"), "{plan}");
            assert!(scans[0].contains("GROUP BY"), "{plan}");
        }
    }
    let first = explain(&cluster, pushed[0]).await;
    assert!(
        first.contains(r#"FROM "public"."customers""#),
        "remote table names:\n{first}"
    );
    assert!(
        !first.contains(r#""pg"."#),
        "no Weft catalog names in remote SQL:\n{first}"
    );

    // Division and string ordering stay in Weft, above the part that the
    // database runs (the join, and the aggregate when it can).
    for (sql, kept) in [
        (
            "SELECT c.segment, sum(o.amount) / count(*) AS avg_amount FROM customers c \
             JOIN orders o ON o.customer_id = c.id GROUP BY c.segment",
            " / ",
        ),
        (
            "SELECT max(c.name) AS last_name, count(*) AS n FROM customers c JOIN orders o ON o.customer_id = c.id",
            "max(",
        ),
    ] {
        let plan = explain(&cluster, sql).await;
        let scans: Vec<&str> = plan.lines().filter(|l| l.contains("RemoteScanExec")).collect();
        assert_eq!(scans.len(), 1, "the join runs in PostgreSQL for {sql}:\n{plan}");
        assert!(scans[0].contains("JOIN") && !scans[0].contains(kept), "{kept} stays in Weft:\n{plan}");
        let want = pg_rows(&client, sql).await.expect("PostgreSQL runs it");
        let got = weft_rows(&cluster, sql).await.expect("Weft runs it");
        same_rows(&got, &want).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

/// Semi and anti joins (`EXISTS`, `NOT EXISTS`, `IN`, `NOT IN`) over one
/// PostgreSQL catalog run there as `[NOT] EXISTS` with every condition in
/// its place: a filter on the outer table stays outside, one on the inner
/// table stays inside. A filter on the preserved side of a left join
/// filters rows instead of becoming part of `ON`. What PostgreSQL would run
/// row by row (`IN` over a grouped subquery) and what `NOT EXISTS` would
/// answer differently (`NOT IN` over a nullable column) stay in Weft.
/// Every answer equals PostgreSQL's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn semi_and_anti_joins_push_down_with_their_conditions() {
    let url = create_database("weft_semi").await.expect("create database");
    let client = connect(&url).await.expect("connect");
    client
        .batch_execute(
            "CREATE TABLE customers (id integer PRIMARY KEY, region integer NOT NULL, score integer);
             CREATE TABLE orders (id integer PRIMARY KEY, customer_id integer NOT NULL, amount integer NOT NULL, late boolean NOT NULL);
             INSERT INTO customers SELECT g, g % 5, CASE WHEN g % 7 = 0 THEN NULL ELSE g % 11 END
               FROM generate_series(1, 300) g;
             INSERT INTO orders SELECT g, 1 + (g * 7) % 200, g % 50, g % 4 = 0
               FROM generate_series(1, 3000) g;
             ANALYZE customers; ANALYZE orders;",
        )
        .await
        .expect("create tables");
    let cluster = cluster(ClusterOptions {
        catalogs: catalogs(vec![("pg", postgres_catalog(&url))]),
        target_partitions: Some(4),
        ..Default::default()
    })
    .await;
    let remote_scans = |plan: &str| -> Vec<String> {
        plan.lines()
            .filter(|l| l.contains("RemoteScanExec"))
            .map(str::to_string)
            .collect()
    };

    // (SQL, what the one remote query must contain)
    let pushed = [
        (
            "SELECT c.region, count(*) AS n FROM customers c \
             WHERE c.id > 40 AND EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.id AND o.late AND o.amount > 30) \
             GROUP BY c.region",
            " EXISTS (",
        ),
        (
            "SELECT c.region, count(*) AS n FROM customers c \
             WHERE c.id <= 250 AND NOT EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.id AND o.amount < 3) \
             GROUP BY c.region",
            "NOT EXISTS (",
        ),
        (
            "SELECT c.region, count(*) AS n FROM customers c \
             WHERE c.id IN (SELECT o.customer_id FROM orders o WHERE o.amount = 7) GROUP BY c.region",
            " EXISTS (",
        ),
        (
            // Filter on the preserved side of a left join.
            "SELECT c.id, count(o.amount) AS n FROM customers c LEFT JOIN orders o ON o.customer_id = c.id \
             WHERE c.id <= 120 GROUP BY c.id",
            "LEFT OUTER JOIN",
        ),
    ];
    for (sql, shape) in pushed {
        let plan = explain(&cluster, sql).await;
        let scans = remote_scans(&plan);
        assert_eq!(scans.len(), 1, "one remote query for {sql}:\n{plan}");
        assert!(
            scans[0].contains("relation=query") && scans[0].contains(shape),
            "{shape} pushed for {sql}:\n{plan}"
        );
        let want = pg_rows(&client, sql).await.expect("PostgreSQL runs it");
        let got = weft_rows(&cluster, sql).await.expect("Weft runs it");
        assert!(!want.is_empty(), "{sql} has rows");
        same_rows(&got, &want).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    let kept = [
        // PostgreSQL would run EXISTS over the grouped subquery row by row.
        "SELECT c.region, count(*) AS n FROM customers c \
         WHERE c.id IN (SELECT o.customer_id FROM orders o GROUP BY o.customer_id HAVING sum(o.amount) > 400) \
         GROUP BY c.region",
        // NOT IN over a column with NULLs: no row qualifies, NOT EXISTS would keep many.
        "SELECT count(*) AS n FROM orders o WHERE o.amount NOT IN (SELECT c.score FROM customers c WHERE c.region = 1)",
    ];
    for sql in kept {
        let plan = explain(&cluster, sql).await;
        assert!(
            !remote_scans(&plan).iter().any(|s| s.contains("EXISTS")),
            "not pushed as EXISTS: {sql}\n{plan}"
        );
        let want = pg_rows(&client, sql).await.expect("PostgreSQL runs it");
        let got = weft_rows(&cluster, sql).await.expect("Weft runs it");
        same_rows(&got, &want).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

/// `max_connections` bounds the connections one process opens to a
/// catalog, idle ones included: at the bound a reader waits for a
/// connection to come back, and after `pool_timeout` fails with an error
/// naming the setting instead of hanging. PostgreSQL itself counts the
/// connections (`pg_stat_activity`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_connections_bounds_a_catalogs_connections() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let url = create_database("weft_pool").await.expect("create database");
        let db = url.rsplit('/').next().unwrap().to_string();
        let mut config = postgres_catalog(&url);
        config.pool_size = 1;
        config.max_connections = 2;
        config.pool_timeout = Duration::from_millis(800);
        let source = std::sync::Arc::new(
            weft_connectors::postgres::PostgresSource::try_new("capped", config).expect("source"),
        );
        let admin = connect(&url).await.expect("admin connection");
        let open = || async {
            let row = admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'weft'",
                    &[&db],
                )
                .await
                .expect("pg_stat_activity");
            row.get::<_, i64>(0)
        };
        let a = source.client().await.expect("first");
        let b = source.client().await.expect("second");
        assert_eq!(open().await, 2);
        // A third waits, then fails clearly.
        let started = std::time::Instant::now();
        let err = source.client().await.expect_err("a third connection").to_string();
        assert!(started.elapsed() >= Duration::from_millis(700));
        assert!(err.contains("max_connections") && err.contains("\"capped\""), "{err}");
        assert_eq!(open().await, 2);
        // One comes back while another reader waits: the waiter gets it.
        let waiter = {
            let source = std::sync::Arc::clone(&source);
            tokio::spawn(async move { source.client().await.map(|c| c.release()) })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        a.release();
        waiter.await.unwrap().expect("the waiter got the released connection");
        assert!(open().await <= 2);
        drop(b);
    })
    .await
    .expect("the test timed out");
}
