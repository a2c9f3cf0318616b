//! Files catalogs on an object store: TPC-H Parquet files in an S3 bucket
//! (moto's S3 server, started by `scripts/test.sh` as `WEFT_TEST_S3`) read
//! by a 2-worker cluster give the same answers as the same files on local
//! disk, and the store's secret never shows in a plan.

use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_common::config::{CatalogConfig, CatalogsConfig, FileFormat, StorageOptions};
use weft_integration_tests::{
    canonical_rows, qualify_tables, tpch_dir, tpch_query, ClusterOptions, TestCluster,
};

const BUCKET: &str = "weft-lake";
const SECRET: &str = "not-a-real-secret-42";
const TABLES: [&str; 8] = [
    "customer", "lineitem", "nation", "orders", "part", "partsupp", "region", "supplier",
];

fn endpoint() -> String {
    std::env::var("WEFT_TEST_S3")
        .expect("WEFT_TEST_S3 (an S3 endpoint) is set by scripts/test.sh; run the tests through it")
}

/// Creates the bucket with a plain S3 `PUT /bucket` (object_store cannot).
async fn create_bucket(endpoint: &str) {
    let address = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut conn = tokio::net::TcpStream::connect(address)
        .await
        .expect("S3 endpoint reachable");
    let request = format!(
        "PUT /{BUCKET} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    conn.write_all(request.as_bytes()).await.expect("send");
    let mut reply = String::new();
    conn.read_to_string(&mut reply).await.expect("reply");
    assert!(
        reply.starts_with("HTTP/1.1 200") || reply.contains("BucketAlreadyOwnedByYou"),
        "create bucket: {reply}"
    );
}

fn storage(endpoint: &str) -> StorageOptions {
    let mut s = StorageOptions::default();
    for (k, v) in [
        ("aws_endpoint", endpoint),
        ("aws_allow_http", "true"),
        ("aws_region", "us-east-1"),
        ("aws_access_key_id", "weft-test"),
        ("aws_secret_access_key", SECRET),
    ] {
        s.0.insert(k.to_string(), v.to_string());
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tpch_from_an_s3_bucket_matches_local_files() {
    let endpoint = endpoint();
    create_bucket(&endpoint).await;
    let store = AmazonS3Builder::new()
        .with_bucket_name(BUCKET)
        .with_endpoint(&endpoint)
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id("weft-test")
        .with_secret_access_key(SECRET)
        .build()
        .expect("S3 client");
    let store: Arc<dyn ObjectStore> = Arc::new(store);
    let dir = tpch_dir(0.05, 3);
    for table in TABLES {
        for file in std::fs::read_dir(dir.join(table)).expect("table dir") {
            let file = file.expect("entry").path();
            let name = file.file_name().unwrap().to_string_lossy().to_string();
            let bytes = std::fs::read(&file).expect("read");
            store
                .put(
                    &StorePath::from(format!("tpch/sf005/{table}/{name}")),
                    PutPayload::from(bytes),
                )
                .await
                .expect("upload");
        }
    }

    let mut catalogs = CatalogsConfig::default();
    catalogs.catalogs.insert(
        "lake".into(),
        CatalogConfig::Files {
            path: format!("s3://{BUCKET}/tpch/sf005"),
            format: FileFormat::Parquet,
            storage: storage(&endpoint),
        },
    );
    catalogs.catalogs.insert(
        "disk".into(),
        CatalogConfig::Files {
            path: dir.to_string_lossy().to_string(),
            format: FileFormat::Parquet,
            storage: StorageOptions::default(),
        },
    );
    let cluster = TestCluster::start(
        2,
        ClusterOptions {
            catalogs,
            target_partitions: Some(4),
            ..Default::default()
        },
    )
    .await
    .expect("cluster");

    let listed = canonical_rows(
        &cluster
            .query("SELECT table_name FROM information_schema.tables WHERE table_catalog = 'lake' AND table_schema = 'public' ORDER BY 1")
            .await
            .expect("listing"),
    );
    assert_eq!(listed.len(), TABLES.len(), "{listed:?}");

    let on = |catalog: &'static str| -> Vec<(&'static str, &'static str)> {
        TABLES.iter().map(|t| (*t, catalog)).collect()
    };
    let (lake, local) = (on("lake"), on("disk"));
    let explain = canonical_rows(
        &cluster
            .query(&format!(
                "EXPLAIN {}",
                qualify_tables(&tpch_query(6), &lake)
            ))
            .await
            .expect("explain"),
    )
    .join("\n");
    assert!(explain.contains("tpch/sf005/lineitem/part-"), "{explain}");
    assert!(!explain.contains(SECRET), "{explain}");

    let mut failures = Vec::new();
    // Not q8/q9 (`qualify_tables` would qualify their column alias `nation`): 20 of the 22.
    for q in (1..=22).filter(|q| ![8, 9].contains(q)) {
        let text = tpch_query(q);
        let mut results = Vec::new();
        for tables in [&lake, &local] {
            match cluster.query(&qualify_tables(&text, tables)).await {
                Ok(batches) => results.push(canonical_rows(&batches)),
                Err(e) => failures.push(format!("q{q}: {e}")),
            }
        }
        if results.len() == 2 && results[0] != results[1] {
            failures.push(format!("q{q}: S3 and local results differ"));
        }
        // (q18 has no rows at this scale.)
        if results.first().is_some_and(|r| r.is_empty()) && q != 18 {
            failures.push(format!("q{q}: no rows"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
