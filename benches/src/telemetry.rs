//! What observability costs, as deployed: etcd, a coordinator and workers as
//! separate processes (this profile's release binaries), a Flight SQL
//! client over loopback. Two clusters over the same TPC-H files run each
//! query in turn, in the same run:
//! - `off`: `--http-listen none` (no metrics recorder) and no trace export;
//! - `on`: `/metrics` scraped every second by this harness, and every span
//!   exported over OTLP/gRPC to a receiver in this process.
//!
//! Answers of both clusters are compared; the report is per query and the
//! total, `on / off`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_integration_tests::otlp::OtlpReceiver;
use weft_integration_tests::process::{http_get, Etcd, ProcessCluster, ProcessOptions};
use weft_integration_tests::{canonical_rows, connect, run_sql, split_statements, tpch_query};

pub(crate) async fn telemetry(
    scale: f64,
    data: Option<PathBuf>,
    workers: usize,
    iterations: usize,
    queries: Vec<usize>,
) -> anyhow::Result<()> {
    let dir = crate::tpch_data(scale, data)?;
    let queries: Vec<usize> = if queries.is_empty() {
        (1..=22).collect()
    } else {
        queries
    };
    let etcd = Etcd::start().await?;
    let receiver = OtlpReceiver::start().await?;
    let catalogs = weft_integration_tests::files_catalog_toml("tpch", &dir);
    let options = |on: bool| ProcessOptions {
        catalogs: catalogs.clone(),
        slots: (crate::cpus() / workers.max(1)).max(1) as u32,
        env: vec![("RUST_LOG".into(), "warn".into())],
        args: if on {
            vec!["--otlp-endpoint".into(), receiver.endpoint()]
        } else {
            Vec::new()
        },
        etcd: Some(etcd.endpoint.clone()),
        http: on,
        sign_in: None,
        tls_ca: None,
    };
    let off = ProcessCluster::start(workers, options(false)).await?;
    let on = ProcessCluster::start(workers, options(true)).await?;
    // Prometheus' part: scrape every node of the `on` cluster every second.
    let scraping = Arc::new(AtomicBool::new(true));
    let targets: Vec<_> = on
        .workers
        .iter()
        .chain([&on.coordinator])
        .map(|n| n.http)
        .collect();
    let scraper = {
        let scraping = Arc::clone(&scraping);
        tokio::spawn(async move {
            let mut scrapes = 0u64;
            while scraping.load(Ordering::Relaxed) {
                for t in &targets {
                    if let Ok((200, _)) = http_get(*t, "/metrics").await {
                        scrapes += 1;
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            scrapes
        })
    };
    let mut c_off = connect(&off.flight_url()).await?;
    let mut c_on = connect(&on.flight_url()).await?;
    println!(
        "Telemetry overhead, TPC-H SF{scale}, {workers} workers as processes, {} cores, best of {iterations}",
        crate::cpus()
    );
    println!(
        "{:>5} {:>10} {:>10} {:>7}",
        "query", "off ms", "on ms", "on/off"
    );
    let (mut total_off, mut total_on) = (Duration::ZERO, Duration::ZERO);
    let mut mismatches = Vec::new();
    for q in queries {
        let statements = split_statements(&tpch_query(q));
        let (mut best_off, mut best_on) = (Duration::MAX, Duration::MAX);
        let (mut rows_off, mut rows_on) = (Vec::new(), Vec::new());
        // Alternate so drift in the machine's speed hits both alike.
        for _ in 0..iterations.max(1) {
            let start = Instant::now();
            for s in &statements {
                rows_off = canonical_rows(&run_sql(&mut c_off, s).await?);
            }
            best_off = best_off.min(start.elapsed());
            let start = Instant::now();
            for s in &statements {
                rows_on = canonical_rows(&run_sql(&mut c_on, s).await?);
            }
            best_on = best_on.min(start.elapsed());
        }
        rows_off.sort();
        rows_on.sort();
        let check = if rows_off == rows_on {
            ""
        } else {
            mismatches.push(q);
            "  DIFFERENT ANSWER"
        };
        total_off += best_off;
        total_on += best_on;
        println!(
            "{:>5} {:>10.1} {:>10.1} {:>7.3}{check}",
            format!("q{q}"),
            best_off.as_secs_f64() * 1e3,
            best_on.as_secs_f64() * 1e3,
            best_on.as_secs_f64() / best_off.as_secs_f64()
        );
    }
    println!(
        "{:>5} {:>10.1} {:>10.1} {:>7.3}",
        "total",
        total_off.as_secs_f64() * 1e3,
        total_on.as_secs_f64() * 1e3,
        total_on.as_secs_f64() / total_off.as_secs_f64()
    );
    scraping.store(false, Ordering::Relaxed);
    let scrapes = scraper.await?;
    // Stopping the `on` cluster flushes its last spans.
    let mut on = on;
    for node in on.workers.iter_mut().chain([&mut on.coordinator]) {
        node.signal("TERM")?;
        node.wait_exit(Duration::from_secs(30)).await?;
    }
    println!(
        "on: {scrapes} scrapes of /metrics, {} spans received over OTLP",
        receiver.spans().len()
    );
    drop(off);
    if !mismatches.is_empty() {
        anyhow::bail!("answers differ between the two clusters for {mismatches:?}");
    }
    Ok(())
}
