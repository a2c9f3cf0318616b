//! ADBC compatibility: the 22 TPC-H queries through ADBC's Flight SQL driver
//! (Python, installed by `scripts/test.sh`) return the same row counts as
//! through the Rust client. ADBC fails any query whose stream schema differs
//! from the announced one. Table schemas from GetTables (ADBC's
//! `adbc_get_table_schema`) carry the types results are streamed in, for a
//! files, a PostgreSQL, a MariaDB and a Flight SQL catalog (string, numeric, date and
//! fixed-width character columns).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use weft_common::config::{CatalogConfig, DatabaseConfig, SecretUrl};
use weft_integration_tests::{
    canonical_rows, files_catalog, split_statements, tpch_dir, tpch_query, ClusterOptions,
    TestCluster,
};
use weft_integration_tests::{mysql, pg};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tpch_through_adbc_flight_sql_driver() {
    // One table with text-like and other columns in each database kind.
    let pg_url = pg::create_database("weft_adbc").await.expect("pg database");
    pg::connect(&pg_url)
        .await
        .expect("connect pg")
        .batch_execute(
            "CREATE TABLE people (id int PRIMARY KEY, name text, code char(3), note varchar(20), \
             amount numeric(10,2), born date, raw bytea);
             INSERT INTO people VALUES (1, 'ada', 'abc', 'n', 1.50, '1815-12-10', 'x')",
        )
        .await
        .expect("pg table");
    let my_url = mysql::create_database("weft_adbc")
        .await
        .expect("mysql database");
    let my_db = my_url
        .rsplit('/')
        .next()
        .expect("database name")
        .to_string();
    let mut my = mysql::connect(&my_url).await.expect("connect mysql");
    mysql::execute(
        &mut my,
        "CREATE TABLE people (id int PRIMARY KEY, name text, code char(3), note varchar(20), \
         amount decimal(10,2), born date); \
         INSERT INTO people VALUES (1, 'ada', 'abc', 'n', 1.50, '1815-12-10')",
    )
    .await
    .expect("mysql table");
    // Another Weft cluster, read through a `flightsql` catalog.
    let upstream = TestCluster::start(
        1,
        ClusterOptions {
            catalogs: files_catalog("tpch", tpch_dir(0.02, 2)),
            ..Default::default()
        },
    )
    .await
    .expect("upstream cluster");
    let mut catalogs = files_catalog("tpch", tpch_dir(0.02, 2));
    catalogs.catalogs.insert(
        "remote".into(),
        CatalogConfig::FlightSql(DatabaseConfig::new(SecretUrl::new(format!(
            "grpc://{}",
            upstream.coordinator.addr()
        )))),
    );
    catalogs.catalogs.insert(
        "pg".into(),
        CatalogConfig::Postgres(pg::postgres_catalog(&pg_url)),
    );
    catalogs.catalogs.insert(
        "my".into(),
        CatalogConfig::Mysql(DatabaseConfig::new(SecretUrl::new(&my_url))),
    );
    let options = ClusterOptions {
        catalogs,
        target_partitions: Some(4),
        ..Default::default()
    };
    let cluster = TestCluster::start(2, options).await.expect("cluster");
    let mut expected = Vec::new();
    for q in 1..=22 {
        let mut rows = 0;
        for s in split_statements(&tpch_query(q)) {
            let batches = cluster
                .query(&s)
                .await
                .expect("query through the Rust client");
            if !batches.is_empty() && batches[0].num_columns() > 0 {
                rows = canonical_rows(&batches).len();
            }
        }
        expected.push(format!("q{q} {rows}"));
    }
    // GetTables announces the types results are delivered in.
    let mut tables: Vec<String> = [
        "region", "nation", "part", "supplier", "partsupp", "customer", "orders", "lineitem",
    ]
    .iter()
    .map(|t| format!("tpch.public.{t}"))
    .collect();
    tables.push("pg.public.people".into());
    tables.push(format!("my.{my_db}.people"));
    tables.push("remote.public.nation".into());
    for t in &tables {
        expected.push(format!("schema {t} ok"));
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = manifest.join("adbc/tpch_adbc.py");
    let queries = manifest.join("../tpch/queries");
    let url = cluster.coordinator.url();
    let output = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::task::spawn_blocking(move || {
            Command::new("python3")
                .arg(script)
                .arg(url)
                .arg(queries)
                .args(tables)
                .output()
        }),
    )
    .await
    .expect("ADBC run timed out")
    .expect("join")
    .expect("python3 runs (scripts/test.sh installs adbc-driver-flightsql and pyarrow)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "ADBC script failed: {stderr}");
    let got: Vec<String> = stdout.lines().map(str::to_string).collect();
    assert_eq!(got, expected, "ADBC results differ; stderr: {stderr}");
}
