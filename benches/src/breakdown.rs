//! Where a query's time goes, as deployed: etcd, a coordinator and workers
//! as separate processes (this profile's release binaries) exporting their
//! spans over OTLP to a receiver in this process, a Flight SQL client over
//! loopback. For each query (`SELECT 1` and TPC-H queries), after one
//! warm-up run, the median over the runs of:
//! - the client's time: GetFlightInfo, then every endpoint's DoGet;
//! - the coordinator's spans: admission, planning (of it, the Parquet
//!   footer reads of the balancer), stage cutting, launch (of it, encoding
//!   the task plans), and the workers' time decoding the plans (summed
//!   over the tasks);
//! - per stage, when its first task started and its last task ended,
//!   counted from the start of the query span;
//! - for comparison, single-node DataFusion planning the same SQL over the
//!   same files (SQL to physical plan).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use weft_integration_tests::otlp::{OtlpReceiver, Received};
use weft_integration_tests::process::{Etcd, ProcessCluster, ProcessOptions};
use weft_integration_tests::{connect, split_statements, tpch_query};

/// The coordinator spans reported, in the order of a query's life.
const PHASES: [&str; 7] = [
    "admission",
    "planning",
    "footer_reads",
    "stage_cutting",
    "launch",
    "plan_encoding",
    "task_decode",
];

pub(crate) async fn breakdown(
    scale: f64,
    data: Option<PathBuf>,
    workers: usize,
    iterations: usize,
    queries: Vec<usize>,
) -> anyhow::Result<()> {
    let dir = crate::tpch_data(scale, data)?;
    let queries: Vec<usize> = if queries.is_empty() {
        vec![0, 11, 16, 22, 18]
    } else {
        queries
    };
    let etcd = Etcd::start().await?;
    let receiver = OtlpReceiver::start().await?;
    let catalogs = weft_integration_tests::files_catalog_toml("tpch", &dir);
    let cluster = ProcessCluster::start(
        workers,
        ProcessOptions {
            catalogs,
            slots: (crate::cpus() / workers.max(1)).max(1) as u32,
            env: vec![
                ("RUST_LOG".into(), "warn".into()),
                // Spans leave every 100 ms rather than every 5 s.
                ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
            ],
            args: vec!["--otlp-endpoint".into(), receiver.endpoint()],
            etcd: Some(etcd.endpoint.clone()),
            http: false,
            sign_in: None,
            tls_ca: None,
        },
    )
    .await?;
    let mut client = connect(&cluster.flight_url()).await?;
    // Single-node DataFusion plans the same SQL over the same files: what
    // planning costs without Weft's rules, balancing and stage cutting.
    let reference = weft_integration_tests::tpch_single_node(&dir).await;
    println!(
        "Per-query cost breakdown, TPC-H SF{scale}, {workers} workers as processes with etcd, {} cores; median of {iterations} runs after a warm-up, ms",
        crate::cpus()
    );
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    let mut columns: Vec<(String, Column)> = Vec::new();
    for &q in &queries {
        let (label, text) = if q == 0 {
            ("SELECT 1".to_string(), "SELECT 1".to_string())
        } else {
            (format!("q{q}"), tpch_query(q))
        };
        let statements = split_statements(&text);
        let mut reference_planning = Vec::new();
        for run in 0..=iterations.max(1) {
            let start = Instant::now();
            for s in &statements {
                reference.sql(s).await?.create_physical_plan().await?;
            }
            if run > 0 {
                reference_planning.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        let mut client_times = Vec::new();
        for run in 0..=iterations.max(1) {
            let mut times = (Duration::ZERO, Duration::ZERO);
            for s in &statements {
                let (info, results) = timed_query(&mut client, s).await?;
                times.0 += info;
                times.1 += results;
            }
            if run > 0 {
                client_times.push(times);
            }
        }
        // Spans leave the processes in batches: wait for this query's.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let spans = receiver.spans();
        let traces = new_query_traces(&spans, &mut seen);
        let mut column = Column::of(&spans, &traces, &client_times);
        column.reference_planning = median(reference_planning);
        columns.push((label, column));
    }
    print(&columns);
    drop((cluster, etcd));
    Ok(())
}

/// GetFlightInfo time, then the time to read every endpoint (at once).
async fn timed_query(
    client: &mut arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel>,
    sql: &str,
) -> anyhow::Result<(Duration, Duration)> {
    let start = Instant::now();
    let info = client.execute(sql.to_string(), None).await?;
    let planned = start.elapsed();
    let mut streams = Vec::new();
    for endpoint in &info.endpoint {
        let ticket = endpoint
            .ticket
            .clone()
            .ok_or_else(|| anyhow::anyhow!("an endpoint without a ticket"))?;
        streams.push(client.do_get(ticket).await?);
    }
    let reads = streams.into_iter().map(|mut stream| async move {
        while stream.try_next().await?.is_some() {}
        anyhow::Ok(())
    });
    futures::future::try_join_all(reads).await?;
    Ok((planned, start.elapsed() - planned))
}

/// Traces with a `query` span not seen before, oldest first; the first
/// one (the warm-up run) is left out.
fn new_query_traces(spans: &[Received], seen: &mut HashSet<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut fresh: Vec<(u64, Vec<u8>)> = spans
        .iter()
        .filter(|s| s.name == "query" && !seen.contains(&s.trace_id))
        .map(|s| (s.start_unix_nano, s.trace_id.clone()))
        .collect();
    fresh.sort();
    fresh.dedup_by(|a, b| a.1 == b.1);
    for (_, t) in &fresh {
        seen.insert(t.clone());
    }
    fresh.into_iter().skip(1).map(|(_, t)| t).collect()
}

/// One query's medians.
#[derive(Debug, Default)]
struct Column {
    get_flight_info: f64,
    results: f64,
    phases: HashMap<&'static str, f64>,
    /// Single-node DataFusion planning the same SQL (SQL to physical plan).
    reference_planning: f64,
    /// stage id -> (first task start, last task end), from the query start.
    stages: BTreeMap<u32, (f64, f64)>,
}

impl Column {
    fn of(spans: &[Received], traces: &[Vec<u8>], client: &[(Duration, Duration)]) -> Self {
        let ms = |ns: u64| ns as f64 / 1e6;
        let mut phases: HashMap<&'static str, Vec<f64>> = HashMap::new();
        let mut stages: BTreeMap<u32, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
        for trace in traces {
            let of_trace: Vec<&Received> = spans.iter().filter(|s| &s.trace_id == trace).collect();
            let Some(query) = of_trace.iter().find(|s| s.name == "query") else {
                continue;
            };
            for phase in PHASES {
                let total: u64 = of_trace
                    .iter()
                    .filter(|s| s.name == phase)
                    .map(|s| s.end_unix_nano.saturating_sub(s.start_unix_nano))
                    .sum();
                phases.entry(phase).or_default().push(ms(total));
            }
            let mut per_stage: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
            for task in of_trace.iter().filter(|s| s.name == "task") {
                let Some(stage) = task.attributes.get("stage").and_then(|s| s.parse().ok()) else {
                    continue;
                };
                let e = per_stage.entry(stage).or_insert((u64::MAX, 0));
                e.0 = e.0.min(task.start_unix_nano);
                e.1 = e.1.max(task.end_unix_nano);
            }
            for (stage, (start, end)) in per_stage {
                let e = stages.entry(stage).or_default();
                e.0.push(ms(start.saturating_sub(query.start_unix_nano)));
                e.1.push(ms(end.saturating_sub(query.start_unix_nano)));
            }
        }
        let secs = |d: Duration| d.as_secs_f64() * 1e3;
        Column {
            reference_planning: f64::NAN,
            get_flight_info: median(client.iter().map(|t| secs(t.0)).collect()),
            results: median(client.iter().map(|t| secs(t.1)).collect()),
            phases: phases.into_iter().map(|(k, v)| (k, median(v))).collect(),
            stages: stages
                .into_iter()
                .map(|(s, (a, b))| (s, (median(a), median(b))))
                .collect(),
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn print(columns: &[(String, Column)]) {
    print!("{:<32}", "");
    for (label, _) in columns {
        print!("{label:>10}");
    }
    println!();
    let row = |name: &str, value: &dyn Fn(&Column) -> f64| {
        print!("{name:<32}");
        for (_, c) in columns {
            print!("{:>10.2}", value(c));
        }
        println!();
    };
    row("client: total", &|c| c.get_flight_info + c.results);
    row("client: GetFlightInfo", &|c| c.get_flight_info);
    for (phase, name) in PHASES.iter().zip([
        "  admission",
        "  planning",
        "    of it: footer reads",
        "  stage cutting",
        "  launch (one round trip)",
        "    of it: plan encoding",
        "    workers decoding plans (sum)",
    ]) {
        row(name, &|c| c.phases.get(phase).copied().unwrap_or(f64::NAN));
    }
    row("client: DoGets (result transfer)", &|c| c.results);
    row("DataFusion alone: planning", &|c| c.reference_planning);
    for (label, c) in columns {
        let stages: Vec<String> = c
            .stages
            .iter()
            .map(|(s, (start, end))| format!("s{s} {start:.1}-{end:.1}"))
            .collect();
        println!(
            "{label}: tasks run (first start - last end, ms from the query's start): {}",
            stages.join(", ")
        );
    }
}
