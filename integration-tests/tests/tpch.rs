//! TPC-H correctness: the 22 queries on a 3-worker cluster (etcd membership,
//! several tasks per stage) return what single-node DataFusion returns on the
//! same Parquet files.

use std::time::Duration;

use weft_integration_tests::{
    canonical_rows, files_catalog, split_statements, tpch_dir, tpch_query, ClusterOptions,
    TestCluster,
};

const SCALE: f64 = 0.05;

async fn actual(cluster: &TestCluster, text: &str) -> anyhow::Result<Vec<String>> {
    let mut rows = Vec::new();
    for s in split_statements(text) {
        let batches = cluster.query(&s).await?;
        if !batches.is_empty() && batches[0].num_columns() > 0 {
            rows = canonical_rows(&batches);
        }
    }
    Ok(rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tpch_22_queries_match_single_node_datafusion() {
    let dir = tpch_dir(SCALE, 3);
    let options = ClusterOptions {
        catalogs: files_catalog("tpch", dir),
        // 3 workers x 2 slots; 6 partitions so every stage gets several tasks.
        target_partitions: Some(6),
        ..Default::default()
    };
    let cluster = tokio::time::timeout(Duration::from_secs(60), TestCluster::start(3, options))
        .await
        .expect("cluster start timed out")
        .expect("cluster starts");
    let reference = weft_integration_tests::tpch_single_node(dir).await;
    let mut failures = Vec::new();
    for q in 1..=22 {
        let text = tpch_query(q);
        let want = weft_integration_tests::single_node_rows(&reference, &text).await;
        let got = tokio::time::timeout(Duration::from_secs(120), actual(&cluster, &text)).await;
        let got = match got {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => {
                failures.push(format!("q{q}: error: {e:#}"));
                continue;
            }
            Err(_) => {
                failures.push(format!("q{q}: timed out"));
                continue;
            }
        };
        let ordered = text.to_lowercase().contains("order by");
        let (mut w, mut g) = (want.clone(), got.clone());
        if !ordered {
            w.sort();
            g.sort();
        }
        if w != g {
            failures.push(format!(
                "q{q}: {} rows expected, {} returned; first expected {:?}, first returned {:?}",
                w.len(),
                g.len(),
                w.first(),
                g.first()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "TPC-H mismatches:\n{}",
        failures.join("\n")
    );
}
