//! The Flight SQL catalog against a second Weft cluster: cluster A serves
//! TPC-H Parquet files, cluster B reads them through a `flightsql` catalog
//! pointing at A's coordinator (one split per endpoint A returns).

use std::time::Duration;

use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use weft_common::config::{CatalogConfig, DatabaseConfig, SecretUrl};
use weft_common::sample::TPCH_TABLES;
use weft_integration_tests::pg::{batch_rows, catalog_file};
use weft_integration_tests::{
    canonical_rows, files_catalog, tpch_dir, tpch_query, ClusterOptions, TestCluster,
};

async fn start(options: ClusterOptions) -> TestCluster {
    tokio::time::timeout(Duration::from_secs(60), TestCluster::start(2, options))
        .await
        .expect("cluster start timed out")
        .expect("cluster starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn weft_reads_another_weft_cluster_through_flight_sql() {
    let dir = tpch_dir(0.01, 2);
    let a = start(ClusterOptions {
        catalogs: files_catalog("tpch", dir),
        target_partitions: Some(4),
        ..Default::default()
    })
    .await;
    let remote = DatabaseConfig::new(SecretUrl::new(format!("grpc://{}", a.coordinator.addr())));
    // A second Flight SQL catalog whose server is down (with a password in
    // its URL): B starts anyway and the error names it, never the password.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut down = DatabaseConfig::new(SecretUrl::new(format!(
        "grpc://weft:hunter2pw@127.0.0.1:{closed}"
    )));
    down.connect_timeout = Duration::from_secs(2);
    let b = start(ClusterOptions {
        catalogs: catalog_file(vec![
            ("remote", CatalogConfig::FlightSql(remote)),
            ("down", CatalogConfig::FlightSql(down)),
        ]),
        target_partitions: Some(4),
        ..Default::default()
    })
    .await;

    // A's schemas and tables are B's.
    let tables = batch_rows(
        &b.query(
            "SELECT table_schema, table_name FROM information_schema.tables \
             WHERE table_catalog = 'remote' AND table_schema <> 'information_schema' \
             ORDER BY table_name",
        )
        .await
        .expect("information_schema"),
    );
    assert_eq!(tables.len(), TPCH_TABLES.len(), "{tables:?}");
    assert!(tables.iter().all(|r| r[0] == "public"), "{tables:?}");

    // The scan sends the projection and the filter; A's endpoints are splits.
    let plan = batch_rows(
        &b.query("EXPLAIN SELECT l_orderkey, l_quantity FROM lineitem WHERE l_quantity > 45")
            .await
            .expect("explain"),
    )
    .into_iter()
    .map(|r| r.join(" "))
    .collect::<Vec<_>>()
    .join("\n");
    let scan = plan
        .lines()
        .find(|l| l.contains("RemoteScanExec"))
        .unwrap_or_else(|| panic!("a remote scan:\n{plan}"));
    assert!(
        scan.contains("catalog=remote, kind=flightsql, relation=public.lineitem")
            && scan.contains("(Flight SQL endpoints)")
            && scan.contains(r#"sql=SELECT "l_orderkey", "l_quantity" FROM "tpch"."public"."lineitem" WHERE (l_quantity > "#),
        "{scan}"
    );

    // TPC-H queries through B equal single-node DataFusion on A's files.
    let reference = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(2));
    for t in TPCH_TABLES {
        reference
            .register_parquet(
                t,
                dir.join(t).to_string_lossy().as_ref(),
                ParquetReadOptions::default(),
            )
            .await
            .expect("register");
    }
    for q in [1, 3, 5, 6, 10, 12, 13, 14] {
        let text = tpch_query(q);
        let want = canonical_rows(
            &reference
                .sql(&text)
                .await
                .expect("plan")
                .collect()
                .await
                .expect("run"),
        );
        let got = canonical_rows(&b.query(&text).await.unwrap_or_else(|e| panic!("q{q}: {e}")));
        assert!(!want.is_empty(), "q{q} has rows");
        assert_eq!(got, want, "q{q}");
    }

    let err = b
        .query("SELECT * FROM down.public.lineitem")
        .await
        .expect_err("server down")
        .to_string();
    assert!(
        err.contains("down") && err.contains(&format!("127.0.0.1:{closed}")),
        "the error names the catalog and the server: {err}"
    );
    assert!(!err.contains("hunter2pw"), "{err}");

    // A remote table that does not exist is an unknown table, not a crash.
    let err = b
        .query("SELECT * FROM remote.public.no_such_table")
        .await
        .expect_err("unknown table")
        .to_string();
    assert!(err.contains("no_such_table"), "{err}");
}

/// A catalog's credentials go only to its configured host:
/// 1. Cluster A hands out endpoints located at its workers (direct results);
///    its workers accept no sign-in at all (a handshake there fails).
/// 2. Cluster B's catalog has a user and password for A's coordinator.
/// 3. B reads A's table: it signs in at the coordinator and reads the
///    workers' endpoints without sending them the credentials, so the scan
///    answers right (a handshake at a worker would fail it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn credentials_are_not_sent_to_endpoint_locations() {
    let dir = tpch_dir(0.01, 2);
    let a = start(ClusterOptions {
        catalogs: files_catalog("tpch", dir),
        target_partitions: Some(4),
        direct_results: true,
        ..Default::default()
    })
    .await;
    let remote = DatabaseConfig::new(SecretUrl::new(format!(
        "grpc://reader:s3cret-pw@{}",
        a.coordinator.addr()
    )));
    let b = start(ClusterOptions {
        catalogs: catalog_file(vec![("remote", CatalogConfig::FlightSql(remote))]),
        target_partitions: Some(4),
        ..Default::default()
    })
    .await;
    let sql = "SELECT l_returnflag, count(*) FROM lineitem GROUP BY l_returnflag ORDER BY 1";
    let want = canonical_rows(&a.query(sql).await.expect("A answers"));
    let got = b
        .query(&sql.replace("lineitem", "remote.public.lineitem"))
        .await
        .expect("B reads A's worker endpoints without signing in there");
    assert_eq!(canonical_rows(&got), want);
}
