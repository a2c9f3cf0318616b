//! ADBC compatibility: the 22 TPC-H queries through ADBC's Flight SQL driver
//! (Python, installed by `scripts/test.sh`) return the same row counts as
//! through the Rust client. ADBC fails any query whose stream schema differs
//! from the announced one. Table schemas from GetTables (ADBC's
//! `adbc_get_table_schema`) carry the types results are streamed in.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use weft_integration_tests::{
    canonical_rows, files_catalog, split_statements, tpch_dir, tpch_query, ClusterOptions,
    TestCluster,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tpch_through_adbc_flight_sql_driver() {
    let options = ClusterOptions {
        catalogs: files_catalog("tpch", tpch_dir(0.02, 2)),
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
    for t in [
        "region", "nation", "part", "supplier", "partsupp", "customer", "orders", "lineitem",
    ] {
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
