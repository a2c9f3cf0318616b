//! Workers as processes with a `--memory-limit`: the limit is advertised
//! to the coordinators, and a query that runs out of it fails at once with
//! an error naming the worker, its limit and what to change, and leaves the
//! cluster able to answer the next query.

use std::time::Duration;

use weft_integration_tests::process::{ProcessCluster, ProcessOptions};
use weft_integration_tests::{canonical_rows, run_sql, tpch_dir};

const TEST_TIMEOUT: Duration = Duration::from_secs(180);

/// A many-to-many self-join of lineitem: its hash table (60 thousand
/// build rows at SF0.01) does not fit in 256 KiB, and hash joins do not spill.
const TOO_BIG: &str = "SELECT count(*) AS n FROM lineitem a JOIN lineitem b \
                       ON a.l_orderkey = b.l_orderkey";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_query_past_the_memory_limit_fails_with_what_to_change() {
    tokio::time::timeout(TEST_TIMEOUT, past_the_limit())
        .await
        .expect("the test finished within its timeout");
}

async fn past_the_limit() {
    let dir = tpch_dir(0.01, 2);
    let mut cluster = ProcessCluster::start(
        0,
        ProcessOptions {
            catalogs: weft_integration_tests::files_catalog_toml("tpch", dir),
            slots: 2,
            env: vec![],
            args: vec![],
            etcd: None,
            http: false,
            sign_in: None,
            tls_ca: None,
        },
    )
    .await
    .expect("a coordinator");
    for _ in 0..2 {
        cluster
            .add_worker_with(&["--memory-limit".into(), "256K".into()])
            .await
            .expect("a worker");
    }
    cluster
        .wait_members()
        .await
        .expect("both workers scheduled");
    let mut client = cluster.client().await.expect("client");

    // The limit reaches the coordinator with the workers' registration.
    let workers = canonical_rows(
        &run_sql(
            &mut client,
            "SELECT worker_id, memory_limit FROM system.runtime.workers",
        )
        .await
        .expect("workers"),
    );
    let ids: Vec<&str> = workers
        .iter()
        .map(|row| {
            let (id, limit) = row.split_once('|').expect("two columns");
            assert_eq!(limit, "262144", "{row}");
            id
        })
        .collect();
    assert_eq!(ids.len(), 2, "{workers:?}");

    let error = match run_sql(&mut client, TOO_BIG).await {
        Ok(batches) => panic!(
            "the join fit in 256 KiB per worker: {:?}",
            canonical_rows(&batches)
        ),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        error.contains("ran out of its query memory (--memory-limit 0.")
            && error.contains("Resources exhausted")
            && error.contains("Raise the workers' --memory-limit, or lower their --slots"),
        "{error}"
    );
    assert!(
        ids.iter()
            .any(|id| error.contains(&format!("worker {id} ran out"))),
        "the error names no worker of the cluster ({ids:?}): {error}"
    );

    // Nothing of the failed query holds the workers' memory.
    let rows = canonical_rows(
        &run_sql(&mut client, "SELECT count(*) FROM nation")
            .await
            .expect("a small query after the failure"),
    );
    assert_eq!(rows, vec!["25"]);
}
