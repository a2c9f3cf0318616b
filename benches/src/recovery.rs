//! What exact answers after a lost worker cost, and how fast they come, as
//! deployed: etcd, coordinators and workers as separate processes over the
//! same TPC-H files, a Flight SQL client over loopback, in the same run.
//!
//! 1. Fence cost: TPC-H on two clusters alike but for the coordinator's
//!    `--query-retries` (2, the default: results held behind the output
//!    fence; 0: streamed at once, no retry), best of N per query, and the
//!    total ratio. Every answer is checked against single-node DataFusion.
//! 2. Streaming: time to the first batch of a full `lineitem` scan against
//!    the time to read all of it, with and without the fence.
//! 3. Recovery: per query, a worker of the fenced cluster is killed with -9
//!    halfway through the query's clean time; reported are the time from
//!    the kill to the right answer and the whole query's time (the worker
//!    is replaced before the next query).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use weft_integration_tests::process::{Etcd, ProcessCluster, ProcessOptions};
use weft_integration_tests::{canonical_rows, run_sql, split_statements, tpch_query};

pub(crate) async fn recovery(
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
    let reference = weft_integration_tests::tpch_single_node(&dir).await;
    let etcd = Etcd::start().await?;
    let catalogs = weft_integration_tests::files_catalog_toml("tpch", &dir);
    let options = |retries: u32| ProcessOptions {
        catalogs: catalogs.clone(),
        slots: (crate::cpus() / workers.max(1)).max(1) as u32,
        // Coordinator flags go by environment: workers ignore them.
        env: vec![
            ("RUST_LOG".into(), "warn".into()),
            ("WEFT_QUERY_RETRIES".into(), retries.to_string()),
        ],
        args: Vec::new(),
        etcd: Some(etcd.endpoint.clone()),
        http: false,
        sign_in: None,
        tls_ca: None,
    };
    let unfenced = ProcessCluster::start(workers, options(0)).await?;
    let mut fenced = ProcessCluster::start(workers, options(2)).await?;
    let mut c_unfenced = unfenced.client().await?;
    let mut c_fenced = fenced.client().await?;
    println!(
        "Recovery and fence cost, TPC-H SF{scale}, {workers} workers per cluster as processes, {} cores",
        crate::cpus()
    );

    // 1.
    println!(
        "{:>5} {:>12} {:>12} {:>8}   (best of {iterations}; --query-retries 0 vs 2)",
        "query", "no fence ms", "fence ms", "ratio"
    );
    let (mut total_off, mut total_on) = (Duration::ZERO, Duration::ZERO);
    let mut wrong = Vec::new();
    let mut clean_times = Vec::new();
    let mut expected = Vec::new();
    for &q in &queries {
        let text = tpch_query(q);
        let want = sorted(weft_integration_tests::single_node_rows(&reference, &text).await);
        let statements = split_statements(&text);
        let (mut best_off, mut best_on) = (Duration::MAX, Duration::MAX);
        for _ in 0..iterations.max(1) {
            let (took, rows) = timed(&mut c_unfenced, &statements).await?;
            best_off = best_off.min(took);
            if rows != want {
                wrong.push(format!("q{q} without the fence"));
            }
            let (took, rows) = timed(&mut c_fenced, &statements).await?;
            best_on = best_on.min(took);
            if rows != want {
                wrong.push(format!("q{q} with the fence"));
            }
        }
        total_off += best_off;
        total_on += best_on;
        clean_times.push(best_on);
        expected.push(want);
        println!(
            "{:>5} {:>12.1} {:>12.1} {:>8.3}",
            format!("q{q}"),
            ms(best_off),
            ms(best_on),
            best_on.as_secs_f64() / best_off.as_secs_f64()
        );
    }
    println!(
        "{:>5} {:>12.1} {:>12.1} {:>8.3}",
        "total",
        ms(total_off),
        ms(total_on),
        total_on.as_secs_f64() / total_off.as_secs_f64()
    );

    // 2.
    let scan = "SELECT * FROM lineitem";
    for (name, client) in [("no fence", &mut c_unfenced), ("fence", &mut c_fenced)] {
        let (mut first_best, mut all_best) = (Duration::MAX, Duration::MAX);
        for _ in 0..iterations.max(1) {
            let (first, all) = first_batch(client, scan).await?;
            first_best = first_best.min(first);
            all_best = all_best.min(all);
        }
        println!(
            "full lineitem scan, {name}: first batch {:.1} ms, all {:.1} ms, first/all {:.3}",
            ms(first_best),
            ms(all_best),
            first_best.as_secs_f64() / all_best.as_secs_f64()
        );
    }

    // 3.
    println!(
        "{:>5} {:>9} {:>9} {:>14} {:>9}  (kill -9 of a worker halfway through the clean time)",
        "query", "clean ms", "kill at", "kill->answer", "total ms"
    );
    for (i, &q) in queries.iter().enumerate() {
        let statements = split_statements(&tpch_query(q));
        let delay = clean_times[i] / 2;
        let victim = i % fenced.workers.len();
        let mut client = fenced.client().await?;
        let started = Instant::now();
        let run = tokio::spawn(async move {
            let result = timed(&mut client, &statements).await;
            (result, Instant::now())
        });
        tokio::time::sleep(delay).await;
        fenced.workers[victim].signal("KILL")?;
        let killed = Instant::now();
        let (result, done) = run.await?;
        let outcome = match result {
            Ok((_, rows)) if rows == expected[i] => "right".to_string(),
            Ok(_) => {
                wrong.push(format!("q{q} after a kill"));
                "WRONG".to_string()
            }
            Err(e) => format!("error: {e:#}"),
        };
        println!(
            "{:>5} {:>9.1} {:>9.1} {:>14.1} {:>9.1}  {outcome}",
            format!("q{q}"),
            ms(clean_times[i]),
            ms(delay),
            ms(done.saturating_duration_since(killed)),
            ms(done - started),
        );
        fenced.remove_worker(victim);
        fenced.add_worker().await?;
        fenced.wait_members().await?;
    }
    drop((unfenced, fenced, etcd));
    if !wrong.is_empty() {
        anyhow::bail!("wrong answers: {wrong:?}");
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn sorted(mut rows: Vec<String>) -> Vec<String> {
    rows.sort();
    rows
}

/// Runs a query's statements; its time and its last rows, sorted.
async fn timed(
    client: &mut arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel>,
    statements: &[String],
) -> anyhow::Result<(Duration, Vec<String>)> {
    let start = Instant::now();
    let mut rows = Vec::new();
    for s in statements {
        rows = canonical_rows(&run_sql(client, s).await?);
    }
    Ok((start.elapsed(), sorted(rows)))
}

/// Time to the first batch with rows of `sql` and to its last one.
async fn first_batch(
    client: &mut arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel>,
    sql: &str,
) -> anyhow::Result<(Duration, Duration)> {
    let start = Instant::now();
    let info = client.execute(sql.to_string(), None).await?;
    let mut first = None;
    let mut streams = Vec::new();
    for endpoint in &info.endpoint {
        let ticket = endpoint.ticket.clone().expect("a ticket");
        streams.push(client.do_get(ticket).await?);
    }
    // Every endpoint read at once, as ADBC does.
    let reads = streams.into_iter().map(|mut stream| async move {
        let mut first = None;
        while let Some(batch) = stream.try_next().await? {
            if first.is_none() && batch.num_rows() > 0 {
                first = Some(Instant::now());
            }
        }
        anyhow::Ok(first)
    });
    for f in futures::future::try_join_all(reads)
        .await?
        .into_iter()
        .flatten()
    {
        first = Some(first.map_or(f, |x: Instant| x.min(f)));
    }
    let all = start.elapsed();
    let first = first.map_or(all, |f| f - start);
    Ok((first, all))
}
