//! Never slower than the source: the 22 TPC-H queries over one PostgreSQL
//! database, through Weft as deployed (a private etcd, `weft-coordinator`
//! and N `weft-worker` processes with a `postgres` catalog, a Flight SQL
//! client over loopback) against the same SQL run in PostgreSQL itself, in
//! the same run, on the same server.
//!
//! Every answer of Weft is checked: against PostgreSQL's where PostgreSQL
//! finishes within `--pg-timeout`, else against single-node DataFusion over
//! the Parquet files the database was loaded from. A query PostgreSQL gives
//! up on is run there once (it would only time out again) and left out of
//! the totals, which cover the queries both finish.

use std::time::{Duration, Instant};

use weft_common::sample::TPCH_TABLES;
use weft_integration_tests::pg::{batch_rows, connect, pg_rows, same_rows};
use weft_integration_tests::process::ProcessCluster;
use weft_integration_tests::{run_sql, split_statements, tpch_query};

/// What PostgreSQL did with one query.
enum PgRun {
    /// Best time and the rows.
    Finished(Duration, Vec<Vec<String>>),
    /// Still running at `--pg-timeout` (cancelled by `statement_timeout`).
    GaveUp,
}

/// Runs `text` (perhaps several statements) on PostgreSQL `iterations`
/// times under `statement_timeout`.
async fn run_pg(
    client: &tokio_postgres::Client,
    text: &str,
    iterations: usize,
) -> anyhow::Result<PgRun> {
    let mut best = Duration::MAX;
    let mut rows = Vec::new();
    for _ in 0..iterations.max(1) {
        let start = Instant::now();
        match pg_rows(client, text).await {
            Ok(r) => rows = r,
            Err(e) if format!("{e:#}").contains("statement timeout") => return Ok(PgRun::GaveUp),
            Err(e) => return Err(e),
        }
        best = best.min(start.elapsed());
    }
    Ok(PgRun::Finished(best, rows))
}

/// Runs `text` through Weft; the rows of the last statement that returned
/// columns.
async fn run_weft(cluster: &ProcessCluster, text: &str) -> anyhow::Result<Vec<Vec<String>>> {
    let mut client = cluster.client().await?;
    let mut rows = Vec::new();
    for s in split_statements(text) {
        let batches = run_sql(&mut client, &s).await?;
        if !batches.is_empty() && batches[0].num_columns() > 0 {
            rows = batch_rows(&batches);
        }
    }
    Ok(rows)
}

pub(crate) struct Options {
    pub pg_url: String,
    pub scale: f64,
    pub data: Option<std::path::PathBuf>,
    pub workers: usize,
    pub iterations: usize,
    pub queries: Vec<usize>,
    pub pg_timeout: Duration,
}

pub(crate) async fn pgtpch(o: Options) -> anyhow::Result<()> {
    let queries: Vec<usize> = if o.queries.is_empty() {
        (1..=22).collect()
    } else {
        o.queries.clone()
    };
    if let Some(q) = queries.iter().find(|q| !(1..=22).contains(*q)) {
        anyhow::bail!("--queries: there is no TPC-H q{q}; choose from 1 to 22");
    }
    let dir = crate::tpch_data(o.scale, o.data.clone())?;
    let suffix = o.scale.to_string().replace('.', "_");
    let url = crate::fedjoin::ensure_database(
        &o.pg_url,
        &format!("weft_tpch_sf{suffix}"),
        &dir,
        &TPCH_TABLES,
    )
    .await?;
    let pg = connect(&url).await?;
    pg.batch_execute(&format!(
        "SET statement_timeout = {}",
        o.pg_timeout.as_millis()
    ))
    .await?;
    let parallel = pg_rows(&pg, "SHOW max_parallel_workers_per_gather").await?;

    // Single-node DataFusion over the same files: the answer where
    // PostgreSQL gives up.
    let df = weft_integration_tests::tpch_single_node(&dir).await;

    let catalogs = format!(
        "default_catalog = \"pg\"\n\n[catalogs.pg]\nkind = \"postgres\"\nurl = {url:?}\ntls = \"disable\"\n"
    );
    let slots = (crate::cpus() / o.workers.max(1)).max(1) as u32;
    let (cluster, etcd) = crate::deployed_cluster(o.workers, slots, catalogs, None).await?;

    println!(
        "TPC-H SF{} in one PostgreSQL database (keys and indexes, max_parallel_workers_per_gather = {}), {} Weft workers as processes with etcd, {} cores, best of {}, PostgreSQL statement_timeout {} s",
        o.scale,
        parallel
            .first()
            .and_then(|r| r.first())
            .map_or("?", String::as_str),
        o.workers,
        crate::cpus(),
        o.iterations,
        o.pg_timeout.as_secs()
    );
    println!(
        "{:>5} {:>10} {:>14} {:>7}  answer checked against",
        "query", "weft ms", "postgres ms", "ratio"
    );
    let (mut total_w, mut total_p) = (Duration::ZERO, Duration::ZERO);
    let mut worst: Option<(usize, f64)> = None;
    let mut gave_up = Vec::new();
    let mut failures = Vec::new();
    for q in queries {
        let text = tpch_query(q);
        if std::env::var_os("WEFT_SHOW_PLANS").is_some() {
            let mut client = cluster.client().await?;
            let plan = run_sql(
                &mut client,
                &format!("EXPLAIN {}", split_statements(&text)[0]),
            )
            .await?;
            eprintln!(
                "q{q}:\n{}",
                arrow::util::pretty::pretty_format_batches(&plan)?
            );
        }
        let mut weft = Duration::MAX;
        let mut weft_rows = Vec::new();
        for _ in 0..o.iterations.max(1) {
            let start = Instant::now();
            weft_rows = run_weft(&cluster, &text).await?;
            weft = weft.min(start.elapsed());
        }
        let pg_run = run_pg(&pg, &text, o.iterations).await?;
        let (pg_cell, ratio_cell, checked) = match &pg_run {
            PgRun::Finished(t, rows) => {
                if let Err(e) = same_rows(&weft_rows, rows) {
                    failures.push(format!("q{q}: Weft and PostgreSQL disagree: {e}"));
                }
                total_w += weft;
                total_p += *t;
                let ratio = weft.as_secs_f64() / t.as_secs_f64();
                if worst.is_none_or(|(_, r)| ratio > r) {
                    worst = Some((q, ratio));
                }
                (
                    format!("{:.1}", t.as_secs_f64() * 1e3),
                    format!("{ratio:.2}"),
                    "PostgreSQL",
                )
            }
            PgRun::GaveUp => {
                gave_up.push(q);
                let mut want = Vec::new();
                for s in split_statements(&text) {
                    let batches = df.sql(&s).await?.collect().await?;
                    if !batches.is_empty() && batches[0].num_columns() > 0 {
                        want = batch_rows(&batches);
                    }
                }
                if let Err(e) = same_rows(&weft_rows, &want) {
                    failures.push(format!("q{q}: Weft and DataFusion disagree: {e}"));
                }
                (
                    format!("> {} s", o.pg_timeout.as_secs()),
                    "-".to_string(),
                    "DataFusion (PostgreSQL gave up)",
                )
            }
        };
        println!(
            "{:>5} {:>10.1} {:>14} {:>7}  {checked}",
            format!("q{q}"),
            weft.as_secs_f64() * 1e3,
            pg_cell,
            ratio_cell
        );
    }
    println!(
        "{:>5} {:>10.1} {:>14.1} {:>7.2}  (the queries PostgreSQL finishes)",
        "total",
        total_w.as_secs_f64() * 1e3,
        total_p.as_secs_f64() * 1e3,
        total_w.as_secs_f64() / total_p.as_secs_f64().max(1e-9)
    );
    if let Some((q, r)) = worst {
        println!("slowest against PostgreSQL: q{q} at {r:.2}");
    }
    if !gave_up.is_empty() {
        println!("PostgreSQL gave up on {gave_up:?} (statement_timeout)");
    }
    drop(cluster);
    drop(etcd);
    if !failures.is_empty() {
        anyhow::bail!("wrong answers:\n{}", failures.join("\n"));
    }
    Ok(())
}
