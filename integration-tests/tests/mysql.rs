//! MySQL/MariaDB catalogs against a real MariaDB server (started by
//! `scripts/test.sh`, found through `WEFT_TEST_MYSQL`), through a 2-worker
//! cluster.

use std::time::Duration;

use weft_common::config::{CatalogConfig, DatabaseConfig, SecretUrl, TableSplitConfig};
use weft_integration_tests::mysql::{connect, create_database, execute, my_rows};
use weft_integration_tests::pg::{batch_rows, catalog_file, same_rows};
use weft_integration_tests::{ClusterOptions, TestCluster};

async fn cluster(catalogs: Vec<(&str, DatabaseConfig)>) -> TestCluster {
    let catalogs = catalog_file(
        catalogs
            .into_iter()
            .map(|(n, db)| (n, CatalogConfig::Mysql(db)))
            .collect(),
    );
    tokio::time::timeout(
        Duration::from_secs(60),
        TestCluster::start(
            2,
            ClusterOptions {
                catalogs,
                target_partitions: Some(4),
                ..Default::default()
            },
        ),
    )
    .await
    .expect("cluster start timed out")
    .expect("cluster starts")
}

async fn explain(cluster: &TestCluster, sql: &str) -> String {
    cluster.explain(sql).await.expect("explain")
}

fn database_of(url: &str) -> String {
    url.rsplit('/').next().unwrap().to_string()
}

/// Every documented type maps to the documented Arrow type and value, NULLs
/// and MySQL's zero dates included; comparisons on numbers and dates run in
/// MariaDB, string comparisons (case-insensitive collations) stay in Weft.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn types_and_pushdown() {
    let url = create_database("weft_types").await.expect("database");
    let db = database_of(&url);
    let mut conn = connect(&url).await.expect("connect");
    execute(
        &mut conn,
        "SET SESSION sql_mode = '';
         CREATE TABLE t (
           id int PRIMARY KEY, i8 tinyint, u32 int unsigned, i64 bigint, u64 bigint unsigned,
           dec2 decimal(12,2), f4 float, f8 double, bits bit(3), yr year, d date,
           dt datetime(6), ts timestamp(6) NULL, tm time(3), c char(5), vc varchar(20),
           tx text, e enum('small','large'), j json, vb varbinary(8), bl blob, pt point
         );
         INSERT INTO t VALUES
           (1, -5, 4000000000, -9000000000, 18446744073709551615, 12345.67, 1.5, 2.25, b'101',
            2018, '2018-01-02', '2018-01-02 03:04:05.250000', '2018-01-02 03:04:05.500000',
            '12:34:56.789', 'ab', 'Hello', 'héllo wörld', 'large', '{\"a\": 1}', x'00ff',
            'blob', POINT(1, 2)),
           (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
            NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
           (3, 0, 0, 0, 0, 0, 0, 0, b'0', 2000, '0000-00-00', '0000-00-00 00:00:00', NULL,
            '00:00:00', '', 'hello', '', 'small', '[]', x'', '', NULL)",
    )
    .await
    .expect("create and fill t");
    let cluster = cluster(vec![("my", DatabaseConfig::new(SecretUrl::new(&url)))]).await;

    let batches = cluster
        .query(&format!("SELECT * FROM my.{db}.t ORDER BY id"))
        .await
        .expect("select *");
    let schema = batches[0].schema();
    let types: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| format!("{}:{}", f.name(), f.data_type()))
        .collect();
    assert_eq!(
        types.join(" "),
        "id:Int32 i8:Int8 u32:UInt32 i64:Int64 u64:UInt64 dec2:Decimal128(12, 2) f4:Float32 \
         f8:Float64 bits:UInt64 yr:Int16 d:Date32 dt:Timestamp(µs) ts:Timestamp(µs, \"UTC\") \
         tm:Time64(µs) c:Utf8 vc:Utf8 tx:Utf8 e:Utf8 j:Utf8 vb:Binary bl:Binary pt:Utf8"
    );
    let rows = batch_rows(&batches);
    assert_eq!(
        rows[0].join("|"),
        "1|-5|4000000000|-9000000000|18446744073709551615|12345.67|1.5|2.25|5|2018|2018-01-02|\
         2018-01-02T03:04:05.250|2018-01-02T03:04:05.500Z|12:34:56.789|ab|Hello|héllo wörld|large|\
         {\"a\": 1}|00ff|626c6f62|POINT(1 2)"
    );
    assert!(rows[1][1..].iter().all(|c| c == "NULL"), "{:?}", rows[1]);
    assert_eq!(rows[2][10], "NULL", "zero date reads as NULL");
    assert_eq!(rows[2][11], "NULL", "zero datetime reads as NULL");

    // Numbers and dates are compared in MariaDB; strings in Weft (MariaDB's
    // default collation says 'Hello' = 'hello').
    let sql = format!(
        "SELECT id, vc FROM my.{db}.t WHERE i64 < 0 AND d >= DATE '2018-01-01' AND vc = 'hello'"
    );
    let plan = explain(&cluster, &sql).await;
    assert!(
        plan.contains(&format!(
            "sql=SELECT `id`, `vc` FROM `{db}`.`t` WHERE (`i64` < 0) AND (`d` >= "
        )),
        "{plan}"
    );
    assert!(
        !plan.contains("`vc` ="),
        "string equality stays in Weft:\n{plan}"
    );
    let got = batch_rows(&cluster.query(&sql).await.expect("filtered"));
    assert!(got.is_empty(), "'Hello' is not 'hello' in Weft: {got:?}");
    let got = batch_rows(
        &cluster
            .query(&format!("SELECT id FROM my.{db}.t WHERE vc = 'hello'"))
            .await
            .expect("string filter"),
    );
    assert_eq!(got, vec![vec!["3".to_string()]]);
    // count(*) reads no column.
    let got = batch_rows(
        &cluster
            .query(&format!("SELECT count(*) FROM my.{db}.t"))
            .await
            .expect("count"),
    );
    assert_eq!(got, vec![vec!["3".to_string()]]);
    // information_schema lists the database as a schema.
    let got = batch_rows(
        &cluster
            .query(&format!(
                "SELECT table_name FROM information_schema.tables WHERE table_catalog = 'my' AND table_schema = '{db}'"
            ))
            .await
            .expect("information_schema"),
    );
    assert_eq!(got, vec![vec!["t".to_string()]]);
}

/// A large table is read as key-range splits on its integer primary key (or
/// a configured column), and the splits together return exactly the rows of
/// one read.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_range_splits_read_every_row_once() {
    let url = create_database("weft_splits").await.expect("database");
    let db = database_of(&url);
    let mut conn = connect(&url).await.expect("connect");
    execute(
        &mut conn,
        "CREATE TABLE s (id bigint PRIMARY KEY, v int, name varchar(40));
         INSERT INTO s SELECT seq, seq % 1000, concat('row ', seq) FROM seq_1_to_30000;
         DELETE FROM s WHERE id % 7 = 0;
         ANALYZE TABLE s",
    )
    .await
    .expect("create and fill s");
    let mut config = DatabaseConfig::new(SecretUrl::new(&url));
    config.split_size = 64 * 1024;
    config.tables.insert(
        format!("{db}.by_v"),
        TableSplitConfig {
            splits: Some(5),
            split_column: Some("v".into()),
            lower_bound: Some("100".into()),
            upper_bound: Some("900".into()),
        },
    );
    execute(&mut conn, "CREATE TABLE by_v AS SELECT * FROM s")
        .await
        .expect("by_v");
    let cluster = cluster(vec![("my", config)]).await;

    let plan = explain(&cluster, &format!("SELECT id FROM my.{db}.s")).await;
    assert!(plan.contains("splits=4 (primary key id ranges)"), "{plan}");
    let plan = explain(&cluster, &format!("SELECT id FROM my.{db}.by_v")).await;
    assert!(plan.contains("splits=5 (column v)"), "{plan}");

    // Plain scans: every row once, through the splits.
    let want = my_rows(&mut conn, "SELECT id, v, name FROM s")
        .await
        .expect("reference");
    assert_eq!(want.len(), 30000 - 30000 / 7);
    for table in ["s", "by_v"] {
        let got = batch_rows(
            &cluster
                .query(&format!("SELECT id, v, name FROM my.{db}.{table}"))
                .await
                .expect("read over splits"),
        );
        same_rows(&got, &want).unwrap_or_else(|e| panic!("{table}: {e}"));
    }

    // A join + aggregate inside the database runs there as one query.
    execute(
        &mut conn,
        "CREATE TABLE tags AS SELECT id AS sid, v % 7 AS tag FROM s WHERE id % 3 = 0",
    )
    .await
    .expect("tags");
    let sql = "SELECT t.tag, count(*) AS n, sum(s.v) AS total, max(s.id) AS last \
               FROM {db}.s JOIN {db}.tags t ON t.sid = s.id WHERE s.v < 500 GROUP BY t.tag";
    let plan = explain(&cluster, &sql.replace("{db}", &format!("my.{db}"))).await;
    let scans: Vec<&str> = plan
        .lines()
        .filter(|l| l.contains("RemoteScanExec"))
        .collect();
    assert_eq!(scans.len(), 1, "{plan}");
    assert!(
        scans[0].contains("kind=mysql, relation=query")
            && scans[0].contains("JOIN")
            && scans[0].contains("GROUP BY")
            && scans[0].contains(&format!("`{db}`.`s`")),
        "{plan}"
    );
    let want = my_rows(&mut conn, &sql.replace("{db}", &db))
        .await
        .expect("reference");
    let got = batch_rows(
        &cluster
            .query(&sql.replace("{db}", &format!("my.{db}")))
            .await
            .expect("pushed join"),
    );
    assert_eq!(got.len(), 7);
    same_rows(&got, &want).expect("pushed join equals MariaDB");
}

/// Wrong password, missing database, closed port and a remote error each
/// give an error naming the catalog and host, never the password; the other
/// catalog keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn errors_name_the_catalog_never_the_password() {
    let url = create_database("weft_err").await.expect("database");
    let db = database_of(&url);
    let mut conn = connect(&url).await.expect("connect");
    execute(
        &mut conn,
        "CREATE TABLE x (a int); CREATE VIEW broken AS SELECT a FROM x; DROP TABLE x",
    )
    .await
    .expect("broken view");
    let password = url
        .split("://")
        .nth(1)
        .and_then(|r| r.split('@').next())
        .and_then(|c| c.split(':').nth(1))
        .expect("password in url")
        .to_string();
    let host = url.split('@').nth(1).unwrap().split('/').next().unwrap();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let bad_password = url.replacen(&format!(":{password}@"), ":not-the-password@", 1);
    let no_db = url.replace(&format!("/{db}"), "/no_such_database");
    let closed_port = format!("mysql://weft:{password}@127.0.0.1:{closed}/{db}");
    let mut closed_config = DatabaseConfig::new(SecretUrl::new(closed_port));
    closed_config.connect_timeout = Duration::from_secs(3);
    let cluster = cluster(vec![
        ("good", DatabaseConfig::new(SecretUrl::new(&url))),
        ("badpw", DatabaseConfig::new(SecretUrl::new(bad_password))),
        ("nodb", DatabaseConfig::new(SecretUrl::new(no_db))),
        ("closed", closed_config),
    ])
    .await;

    let cases = [
        (
            "badpw",
            format!("SELECT * FROM badpw.{db}.t"),
            "Access denied",
        ),
        (
            "nodb",
            format!("SELECT * FROM nodb.{db}.t"),
            "no_such_database",
        ),
        (
            "closed",
            format!("SELECT * FROM closed.{db}.t"),
            "cannot connect",
        ),
        (
            "good",
            format!("SELECT count(*) FROM good.{db}.broken"),
            "references invalid table",
        ),
    ];
    for (catalog, sql, expected) in cases {
        let err = cluster
            .query(&sql)
            .await
            .expect_err("query fails")
            .to_string();
        assert!(
            err.contains(&format!("catalog \\\"{catalog}\\\""))
                || err.contains(&format!("catalog \"{catalog}\"")),
            "{catalog}: error names the catalog: {err}"
        );
        assert!(err.contains(expected), "{catalog}: {err}");
        assert!(
            !err.contains(&password),
            "{catalog}: password leaked: {err}"
        );
        if catalog != "closed" {
            assert!(err.contains(host), "{catalog}: error names the host: {err}");
        }
    }
    let plan = explain(&cluster, &format!("SELECT 1 FROM good.{db}.broken")).await;
    assert!(!plan.contains(&password), "{plan}");
}
