//! PostgreSQL scan throughput: TPC-H `lineitem` into Arrow with Weft's
//! connector (1 split and N splits), against `psql` binary COPY to /dev/null
//! (the practical limit of one connection) and ConnectorX (`read_sql` to
//! Arrow with the same partition count), in the same run.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use datafusion::physical_plan::ExecutionPlanProperties;
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use weft_common::config::{CatalogConfig, CatalogsConfig, TableSplitConfig};
use weft_common::session::weft_session_config;
use weft_connectors::Connectors;
use weft_integration_tests::pg::{connect, copy_in, postgres_catalog, with_database};

const LINEITEM_DDL: &str = "CREATE TABLE lineitem (l_orderkey bigint NOT NULL, l_partkey bigint, l_suppkey bigint, l_linenumber integer, l_quantity numeric(15,2), l_extendedprice numeric(15,2), l_discount numeric(15,2), l_tax numeric(15,2), l_returnflag char(1), l_linestatus char(1), l_shipdate date, l_commitdate date, l_receiptdate date, l_shipinstruct char(25), l_shipmode char(10), l_comment varchar(44))";

/// Loads `lineitem` from the Parquet files of `dir` unless already there.
async fn ensure_lineitem(url: &str, dir: &std::path::Path) -> anyhow::Result<u64> {
    let client = connect(url).await?;
    let ctx = SessionContext::new();
    let path = dir.join("lineitem");
    let df = ctx
        .read_parquet(path.to_string_lossy().as_ref(), Default::default())
        .await?;
    let want = df.clone().count().await? as i64;
    let have: i64 = match client.query_one("SELECT count(*) FROM lineitem", &[]).await {
        Ok(row) => row.get(0),
        Err(_) => -1,
    };
    if have != want {
        eprintln!("loading {want} lineitem rows into PostgreSQL");
        client
            .batch_execute("DROP TABLE IF EXISTS lineitem")
            .await?;
        client.batch_execute(LINEITEM_DDL).await?;
        let mut stream = df.execute_stream().await?;
        let mut chunk = Vec::new();
        while let Some(b) = stream.try_next().await? {
            chunk.push(b);
            if chunk.len() >= 64 {
                copy_in(&client, "lineitem", &chunk).await?;
                chunk.clear();
            }
        }
        copy_in(&client, "lineitem", &chunk).await?;
        client.batch_execute("VACUUM ANALYZE lineitem").await?;
    }
    let bytes: i64 = client
        .query_one("SELECT pg_relation_size('lineitem')", &[])
        .await?
        .get(0);
    Ok(bytes as u64)
}

/// Reads every partition of `SELECT * FROM lineitem` at once; returns rows.
async fn weft_scan(url: &str, splits: usize) -> anyhow::Result<usize> {
    let mut db = postgres_catalog(url);
    db.tables.insert(
        "public.lineitem".into(),
        TableSplitConfig {
            splits: Some(splits),
            ..Default::default()
        },
    );
    let mut catalogs = CatalogsConfig::default();
    catalogs
        .catalogs
        .insert("pg".into(), CatalogConfig::Postgres(db));
    let (connectors, errors) = Connectors::from_config(&catalogs);
    anyhow::ensure!(errors.is_empty(), "{errors:?}");
    let ctx = SessionContext::new_with_config(weft_session_config(splits));
    if let Some(e) = connectors.register(&ctx).await.into_iter().next() {
        anyhow::bail!("{e}");
    }
    let plan = ctx
        .sql("SELECT * FROM pg.public.lineitem")
        .await?
        .create_physical_plan()
        .await?;
    anyhow::ensure!(
        plan.output_partitioning().partition_count() == splits,
        "expected {splits} splits"
    );
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..splits {
        let stream = plan.execute(p, ctx.task_ctx())?;
        tasks.spawn(async move {
            stream
                .try_fold(0usize, |n, b| async move { Ok(n + b.num_rows()) })
                .await
        });
    }
    let mut rows = 0;
    while let Some(r) = tasks.join_next().await {
        rows += r??;
    }
    Ok(rows)
}

fn psql_copy(url: &str) -> anyhow::Result<()> {
    let status = Command::new("psql")
        .arg(url)
        .arg("-c")
        .arg("COPY (SELECT * FROM lineitem) TO STDOUT (FORMAT binary)")
        .stdout(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "psql failed: {status}");
    Ok(())
}

const CONNECTORX: &str = r#"
import sys, time, connectorx as cx
url, n = sys.argv[1], int(sys.argv[2])
start = time.time()
if n > 1:
    t = cx.read_sql(url, "SELECT * FROM lineitem", return_type="arrow", partition_on="l_orderkey", partition_num=n)
else:
    t = cx.read_sql(url, "SELECT * FROM lineitem", return_type="arrow")
print(time.time() - start, t.num_rows)
"#;

/// ConnectorX's time, or `None` (with the reason printed) when unavailable.
fn connectorx(url: &str, partitions: usize) -> Option<(Duration, usize)> {
    if Command::new("python3")
        .args(["-c", "import connectorx, pyarrow"])
        .stderr(Stdio::null())
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        eprintln!("installing connectorx (pip)");
        let _ = Command::new("python3")
            .args(["-m", "pip", "install", "-q", "connectorx", "pyarrow"])
            .status();
    }
    let out = Command::new("python3")
        .args(["-c", CONNECTORX, url, &partitions.to_string()])
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "ConnectorX failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.split_whitespace();
    let secs: f64 = parts.next()?.parse().ok()?;
    let rows: usize = parts.next()?.parse().ok()?;
    Some((Duration::from_secs_f64(secs), rows))
}

pub(crate) async fn pgscan(
    pg_url: String,
    scale: f64,
    data: Option<PathBuf>,
    splits: usize,
    iterations: usize,
) -> anyhow::Result<()> {
    let dir =
        data.unwrap_or_else(|| std::env::temp_dir().join(format!("weft-bench-tpch-sf{scale}")));
    if !dir.join("lineitem").exists() {
        eprintln!("generating TPC-H SF{scale} in {}", dir.display());
        weft_common::sample::generate_tpch(&dir, scale, crate::cpus())?;
    }
    let db = format!("weft_bench_sf{}", scale.to_string().replace('.', "_"));
    let admin = connect(&pg_url).await?;
    if admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&db])
        .await?
        .is_none()
    {
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await?;
    }
    let url = with_database(&pg_url, &db);
    let bytes = ensure_lineitem(&url, &dir).await?;
    let mb = bytes as f64 / 1e6;
    println!("lineitem: {mb:.0} MB in PostgreSQL; best of {iterations} runs each");
    println!(
        "{:<36} {:>10} {:>10} {:>12}",
        "reader", "rows", "seconds", "MB/s (heap)"
    );

    let best = |name: String, d: Duration, rows: usize| {
        println!(
            "{name:<36} {rows:>10} {:>10.2} {:>12.0}",
            d.as_secs_f64(),
            mb / d.as_secs_f64()
        );
        d
    };
    let mut copy = Duration::MAX;
    for _ in 0..iterations {
        let start = Instant::now();
        psql_copy(&url)?;
        copy = copy.min(start.elapsed());
    }
    let copy = best("psql COPY binary > /dev/null".into(), copy, 0);
    let mut results = Vec::new();
    for n in [1, splits] {
        let mut t = Duration::MAX;
        let mut rows = 0;
        for _ in 0..iterations {
            let start = Instant::now();
            rows = weft_scan(&url, n).await?;
            t = t.min(start.elapsed());
        }
        results.push(best(format!("Weft, {n} split(s)"), t, rows));
    }
    let mut cx = None;
    for _ in 0..iterations {
        if let Some((d, rows)) = connectorx(&url, splits) {
            cx = Some(cx.map_or((d, rows), |(b, r): (Duration, usize)| (b.min(d), r)));
        }
    }
    if let Some((d, rows)) = cx {
        best(format!("ConnectorX, {splits} partitions"), d, rows);
    }
    println!();
    println!(
        "Weft 1 split / psql COPY rate: {:.2}x (goal >= 0.8)",
        copy.as_secs_f64() / results[0].as_secs_f64()
    );
    if let Some((d, _)) = cx {
        println!(
            "Weft {splits} splits vs ConnectorX {splits} partitions: {:.2}x faster (goal > 1)",
            d.as_secs_f64() / results[1].as_secs_f64()
        );
    }
    Ok(())
}
