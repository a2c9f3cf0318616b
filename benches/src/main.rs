//! `weft-bench`: TPC-H on Weft (coordinator + workers in this process, over
//! real sockets) and on single-node DataFusion over the same Parquet files, in
//! the same run; plus the round-trip latency of `SELECT 1` through Flight SQL.
//!
//! ```text
//! cargo run --profile bench-release -p weft-benches -- tpch --scale 1
//! cargo build --profile bench-release --workspace --bins && \
//!   target/bench-release/weft-bench tpch --scale 1 --deployed   # as deployed (headline)
//! target/bench-release/weft-bench breakdown --scale 1   # where a query's time goes
//! target/bench-release/weft-bench tpch --scale 1 --deployed --duckdb   # DuckDB as a peer
//! cargo run --profile bench-release -p weft-benches -- latency
//! cargo build --profile bench-release --workspace --bins && \
//!   target/bench-release/weft-bench telemetry --scale 1   # metrics + traces vs off
//! scripts/bench-postgres.sh pgscan     # PostgreSQL scan throughput
//! scripts/bench-postgres.sh fedjoin    # cross-database joins vs postgres_fdw
//! scripts/bench-postgres.sh pgtpch     # TPC-H over one PostgreSQL: Weft vs PostgreSQL
//! ```

mod breakdown;
mod fedjoin;
mod pgscan;
mod pgtpch;
mod recovery;
mod security;
mod telemetry;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use weft_common::sample::{generate_tpch, TPCH_TABLES};
use weft_integration_tests::process::{Etcd, ProcessCluster, ProcessOptions};
use weft_integration_tests::{
    canonical_rows, files_catalog, run_sql, split_statements, tpch_query, ClusterOptions,
    TestCluster,
};

#[derive(Debug, Parser)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

/// The TPC-H run the benchmarks of the 22 queries share.
#[derive(Debug, clap::Args)]
struct Run {
    /// TPC-H scale factor.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Directory for the generated data (reused when present).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Number of workers.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Timed runs per query (the best is reported).
    #[arg(long, default_value_t = 3)]
    iterations: usize,
    /// Only these queries (e.g. 1,6,12).
    #[arg(long, value_delimiter = ',')]
    queries: Vec<usize>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// The 22 TPC-H queries: Weft vs single-node DataFusion.
    Tpch {
        #[command(flatten)]
        run: Run,
        /// As deployed: etcd, the coordinator and the workers as separate
        /// processes (the binaries next to weft-bench), queried over
        /// loopback; also `SELECT 1` p50/p99 through the same client.
        /// Without it the cluster runs in this process.
        #[arg(long)]
        deployed: bool,
        /// Task slots per worker; default: the cores shared out among the
        /// workers.
        #[arg(long)]
        slots: Option<u32>,
        /// Also run DuckDB over the same files, same run, as a peer
        /// (`benches/scripts/duckdb_tpch.py`; needs `pip install duckdb`).
        #[arg(long)]
        duckdb: bool,
        /// Each worker's --memory-limit (e.g. 1G; needs --deployed). The
        /// run goes on past a query that fails, and reports each worker's
        /// peak RSS.
        #[arg(long)]
        memory_limit: Option<String>,
    },
    /// PostgreSQL scan throughput of TPC-H lineitem: Weft (1 and N splits)
    /// vs psql binary COPY and ConnectorX.
    Pgscan {
        /// Admin URL of a PostgreSQL server (a database is created in it).
        #[arg(long, env = "WEFT_BENCH_PG")]
        pg_url: String,
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        #[arg(long)]
        data: Option<PathBuf>,
        /// Splits for the parallel read (and ConnectorX partitions).
        #[arg(long, default_value_t = 4)]
        splits: usize,
        #[arg(long, default_value_t = 3)]
        iterations: usize,
    },
    /// Cross-database TPC-H joins over two PostgreSQL databases: Weft vs
    /// postgres_fdw.
    Fedjoin {
        /// Admin URL of a PostgreSQL server (two databases are created in it).
        #[arg(long, env = "WEFT_BENCH_PG")]
        pg_url: String,
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long, default_value_t = 2)]
        workers: usize,
        #[arg(long, default_value_t = 3)]
        iterations: usize,
        /// Only these of the cross-database queries (e.g. 5,10).
        #[arg(long, value_delimiter = ',')]
        queries: Vec<usize>,
    },
    /// The 22 TPC-H queries over one PostgreSQL database: Weft as deployed
    /// (a `postgres` catalog, workers as processes with etcd, Flight SQL)
    /// vs the same SQL in PostgreSQL itself, same run, answers checked.
    Pgtpch {
        /// Admin URL of a PostgreSQL server (a database is created in it).
        #[arg(long, env = "WEFT_BENCH_PG")]
        pg_url: String,
        #[command(flatten)]
        run: Run,
        /// Seconds PostgreSQL may take for one query (statement_timeout);
        /// a query it gives up on is reported as such and its Weft answer
        /// checked against single-node DataFusion instead.
        #[arg(long, default_value_t = 60)]
        pg_timeout: u64,
    },
    /// Overhead of metrics (scraped) plus trace export against both off:
    /// two clusters of separate processes, TPC-H, same run.
    Telemetry {
        #[command(flatten)]
        run: Run,
    },
    /// Overhead of authentication, a cluster secret and TLS everywhere
    /// against none: two clusters of separate processes, same run.
    Security {
        #[command(flatten)]
        run: Run,
        /// `SELECT 1` round trips per cluster.
        #[arg(long, default_value_t = 300)]
        latency_iterations: usize,
    },
    /// Exact answers after a lost worker: the output fence's cost
    /// (--query-retries 2 vs 0, TPC-H and time to the first batch of a
    /// full scan) and the time from a worker's kill -9 to the right answer.
    Recovery {
        #[command(flatten)]
        run: Run,
    },
    /// Where a query's time goes, as deployed: the client's GetFlightInfo
    /// and DoGets, the coordinator's spans (admission, planning, footer
    /// reads, stage cutting, launch, plan encoding) and when each stage's
    /// tasks ran, from OTLP spans; `SELECT 1` and TPC-H q11, q16, q22, q18
    /// by default (0 stands for `SELECT 1`).
    Breakdown {
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long, default_value_t = 2)]
        workers: usize,
        #[arg(long, default_value_t = 5)]
        iterations: usize,
        #[arg(long, value_delimiter = ',')]
        queries: Vec<usize>,
    },
    /// Round trip of `SELECT 1` through Flight SQL.
    Latency {
        #[arg(long, default_value_t = 500)]
        iterations: usize,
    },
}

pub(crate) fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

async fn cluster(
    workers: usize,
    catalogs: weft_common::config::CatalogsConfig,
) -> anyhow::Result<TestCluster> {
    let options = ClusterOptions {
        catalogs,
        etcd: false,
        slots: (cpus() / workers.max(1)).max(1) as u32,
        ..Default::default()
    };
    TestCluster::start(workers, options).await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().cmd {
        Cmd::Tpch {
            run:
                Run {
                    scale,
                    data,
                    workers,
                    iterations,
                    queries,
                },
            deployed,
            slots,
            duckdb,
            memory_limit,
        } => {
            if memory_limit.is_some() && !deployed {
                anyhow::bail!("--memory-limit applies to worker processes: add --deployed");
            }
            let shape = Shape {
                workers,
                slots: slots.unwrap_or((cpus() / workers.max(1)).max(1) as u32),
                deployed,
            };
            tpch(
                scale,
                data,
                shape,
                iterations,
                queries,
                duckdb,
                memory_limit,
            )
            .await
        }
        Cmd::Latency { iterations } => latency(iterations).await,
        Cmd::Telemetry {
            run:
                Run {
                    scale,
                    data,
                    workers,
                    iterations,
                    queries,
                },
        } => telemetry::telemetry(scale, data, workers, iterations, queries).await,
        Cmd::Security {
            run:
                Run {
                    scale,
                    data,
                    workers,
                    iterations,
                    queries,
                },
            latency_iterations,
        } => {
            security::security(
                scale,
                data,
                workers,
                iterations,
                latency_iterations,
                queries,
            )
            .await
        }
        Cmd::Recovery {
            run:
                Run {
                    scale,
                    data,
                    workers,
                    iterations,
                    queries,
                },
        } => recovery::recovery(scale, data, workers, iterations, queries).await,
        Cmd::Breakdown {
            scale,
            data,
            workers,
            iterations,
            queries,
        } => breakdown::breakdown(scale, data, workers, iterations, queries).await,
        Cmd::Pgscan {
            pg_url,
            scale,
            data,
            splits,
            iterations,
        } => pgscan::pgscan(pg_url, scale, data, splits, iterations).await,
        Cmd::Pgtpch {
            pg_url,
            run:
                Run {
                    scale,
                    data,
                    workers,
                    iterations,
                    queries,
                },
            pg_timeout,
        } => {
            pgtpch::pgtpch(pgtpch::Options {
                pg_url,
                scale,
                data,
                workers,
                iterations,
                queries,
                pg_timeout: Duration::from_secs(pg_timeout),
            })
            .await
        }
        Cmd::Fedjoin {
            pg_url,
            scale,
            data,
            workers,
            iterations,
            queries,
        } => fedjoin::fedjoin(pg_url, scale, data, workers, iterations, queries).await,
    }
}

async fn time_best<F, Fut>(iterations: usize, mut f: F) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut best = Duration::MAX;
    for _ in 0..iterations.max(1) {
        let start = Instant::now();
        f().await?;
        best = best.min(start.elapsed());
    }
    Ok(best)
}

/// The TPC-H directory: `data`, or one per scale under the temp dir,
/// generated on first use.
pub(crate) fn tpch_data(scale: f64, data: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let dir =
        data.unwrap_or_else(|| std::env::temp_dir().join(format!("weft-bench-tpch-sf{scale}")));
    if !dir.join("lineitem").exists() {
        eprintln!("generating TPC-H SF{scale} in {}", dir.display());
        generate_tpch(&dir, scale, cpus())?;
    }
    Ok(dir)
}

/// How the benchmarked cluster runs.
#[derive(Debug, Clone, Copy)]
struct Shape {
    workers: usize,
    slots: u32,
    /// Separate processes with etcd (else one process, in-memory registry).
    deployed: bool,
}

/// A Weft cluster to query: in this process, or as deployed.
enum Bench {
    InProcess(TestCluster),
    Deployed {
        cluster: ProcessCluster,
        _etcd: Etcd,
    },
}

impl Bench {
    async fn start(
        shape: Shape,
        dir: &std::path::Path,
        worker_memory: Option<&str>,
    ) -> anyhow::Result<Self> {
        if !shape.deployed {
            let options = ClusterOptions {
                catalogs: files_catalog("tpch", dir),
                etcd: false,
                slots: shape.slots,
                ..Default::default()
            };
            return Ok(Bench::InProcess(
                TestCluster::start(shape.workers, options).await?,
            ));
        }
        let catalogs = weft_integration_tests::files_catalog_toml("tpch", dir);
        let (cluster, etcd) =
            deployed_cluster(shape.workers, shape.slots, catalogs, worker_memory).await?;
        Ok(Bench::Deployed {
            cluster,
            _etcd: etcd,
        })
    }

    async fn client(
        &self,
    ) -> anyhow::Result<arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel>>
    {
        match self {
            Bench::InProcess(cluster) => cluster.client().await,
            Bench::Deployed { cluster, .. } => cluster.client().await,
        }
    }
}

/// A private etcd, a coordinator and `workers` workers as processes (the
/// binaries next to `weft-bench`) serving `catalogs` (catalog file text),
/// quiet logs, no HTTP, no authentication; workers with `worker_memory` as
/// their `--memory-limit` when given.
pub(crate) async fn deployed_cluster(
    workers: usize,
    slots: u32,
    catalogs: String,
    worker_memory: Option<&str>,
) -> anyhow::Result<(ProcessCluster, Etcd)> {
    let etcd = Etcd::start().await?;
    let mut env = vec![("RUST_LOG".to_string(), "warn".to_string())];
    // Only workers have this flag; the coordinator ignores the variable.
    if let Some(limit) = worker_memory {
        env.push(("WEFT_MEMORY_LIMIT".into(), limit.to_string()));
    }
    let cluster = ProcessCluster::start(
        workers,
        ProcessOptions {
            catalogs,
            slots,
            env,
            args: Vec::new(),
            etcd: Some(etcd.endpoint.clone()),
            http: false,
            sign_in: None,
            tls_ca: None,
        },
    )
    .await?;
    Ok((cluster, etcd))
}

async fn tpch(
    scale: f64,
    data: Option<PathBuf>,
    shape: Shape,
    iterations: usize,
    queries: Vec<usize>,
    duckdb: bool,
    worker_memory: Option<String>,
) -> anyhow::Result<()> {
    let workers = shape.workers;
    let dir = tpch_data(scale, data)?;
    let queries: Vec<usize> = if queries.is_empty() {
        (1..=22).collect()
    } else {
        queries
    };

    let df = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(cpus()));
    for t in TPCH_TABLES {
        df.register_parquet(
            t,
            dir.join(t).to_string_lossy().as_ref(),
            ParquetReadOptions::default(),
        )
        .await?;
    }
    let weft = Bench::start(shape, &dir, worker_memory.as_deref()).await?;

    println!(
        "TPC-H SF{scale}, {workers} workers ({} slots each{}, {}), {} cores, best of {iterations}",
        shape.slots,
        worker_memory
            .as_deref()
            .map(|m| format!(", --memory-limit {m}"))
            .unwrap_or_default(),
        if shape.deployed {
            "separate processes with etcd, Flight SQL over loopback"
        } else {
            "in this process"
        },
        cpus()
    );
    println!(
        "{:>5} {:>12} {:>12} {:>7}",
        "query", "weft ms", "datafusion ms", "ratio"
    );
    let (mut total_w, mut total_d) = (Duration::ZERO, Duration::ZERO);
    let mut mismatches = Vec::new();
    let mut weft_times = Vec::new();
    for q in queries.iter().copied() {
        let text = tpch_query(q);
        let statements = split_statements(&text);
        let d = time_best(iterations, || {
            let statements = statements.clone();
            let df = df.clone();
            async move {
                for s in &statements {
                    df.sql(s).await?.collect().await?;
                }
                Ok(())
            }
        })
        .await?;
        let w = time_best(iterations, || {
            let statements = statements.clone();
            let weft = &weft;
            async move {
                let mut client = weft.client().await?;
                for s in &statements {
                    run_sql(&mut client, s).await?;
                }
                Ok(())
            }
        })
        .await;
        let w = match w {
            Ok(w) => w,
            // Under a memory limit a failure is a result to report; the
            // run goes on with the next query.
            Err(e) if worker_memory.is_some() => {
                let first = e.to_string();
                let first = first.lines().next().unwrap_or_default();
                println!("{:>5}       FAILED  {first}", format!("q{q}"));
                mismatches.push(q);
                continue;
            }
            Err(e) => return Err(e),
        };
        total_w += w;
        total_d += d;
        // The answer is checked against DataFusion's (the last statement's
        // rows, sorted: ties may come back in either order).
        let mut expected = Vec::new();
        let mut got = Vec::new();
        let mut client = weft.client().await?;
        for s in &statements {
            expected = canonical_rows(&df.sql(s).await?.collect().await?);
            got = canonical_rows(&run_sql(&mut client, s).await?);
        }
        expected.sort();
        got.sort();
        let check = if expected == got {
            ""
        } else {
            mismatches.push(q);
            "  DIFFERENT ANSWER"
        };
        weft_times.push((q, w, got.len()));
        println!(
            "{:>5} {:>12.1} {:>12.1} {:>7.2}{check}",
            format!("q{q}"),
            w.as_secs_f64() * 1e3,
            d.as_secs_f64() * 1e3,
            w.as_secs_f64() / d.as_secs_f64()
        );
    }
    println!(
        "{:>5} {:>12.1} {:>12.1} {:>7.2}",
        "total",
        total_w.as_secs_f64() * 1e3,
        total_d.as_secs_f64() * 1e3,
        total_w.as_secs_f64() / total_d.as_secs_f64()
    );
    if let Bench::Deployed { cluster, .. } = &weft {
        let peaks: Vec<String> = cluster
            .workers
            .iter()
            .map(|w| match peak_rss(w.child.id()) {
                Some(kib) => format!("{} {:.0} MiB", w.name, kib as f64 / 1024.0),
                None => format!("{} ?", w.name),
            })
            .collect();
        println!("peak RSS per worker: {}", peaks.join(", "));
        let mut client = weft.client().await?;
        select_one_latency(&mut client, 300).await?;
    }
    if duckdb {
        duckdb_peer(&dir, iterations, &weft_times, &mut mismatches)?;
    }
    if !mismatches.is_empty() {
        anyhow::bail!(
            "Weft's answer differs from DataFusion's or DuckDB's, or Weft failed, for {mismatches:?}"
        );
    }
    Ok(())
}

/// Peak resident set size of process `pid` so far, in KiB (`VmHWM` in
/// `/proc/<pid>/status`; Linux only).
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// DuckDB over the same files (`benches/scripts/duckdb_tpch.py`, as many
/// threads as cores), best of `iterations` per query, against Weft's times
/// of this run. A query whose DuckDB row count differs from Weft's answer
/// joins `mismatches`.
fn duckdb_peer(
    dir: &std::path::Path,
    iterations: usize,
    weft_times: &[(usize, Duration, usize)],
    mismatches: &mut Vec<usize>,
) -> anyhow::Result<()> {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let list: Vec<String> = weft_times.iter().map(|(q, ..)| q.to_string()).collect();
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(&python)
        .arg(manifest.join("scripts/duckdb_tpch.py"))
        .arg("--data")
        .arg(dir)
        .arg("--queries-dir")
        .arg(manifest.join("../tpch/queries"))
        .args(["--iterations", &iterations.to_string()])
        .args(["--queries", &list.join(",")])
        .args(["--threads", &cpus().to_string()])
        .output()
        .map_err(|e| anyhow::anyhow!("--duckdb: cannot run {python}: {e}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "--duckdb: DuckDB's run failed (is the duckdb package installed? pip install duckdb):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!(
        "DuckDB over the same files, same run, {} threads, best of {iterations}",
        cpus()
    );
    println!(
        "{:>5} {:>12} {:>12} {:>11}",
        "query", "weft ms", "duckdb ms", "weft/duckdb"
    );
    let (mut total_w, mut total_k) = (0.0, 0.0);
    for (q, w, weft_rows) in weft_times {
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(&format!("q{q}")))
            .ok_or_else(|| anyhow::anyhow!("--duckdb: no result for q{q}:\n{stdout}"))?;
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (ms, rows): (f64, usize) = match fields[..] {
            [_, ms, rows] => (ms.parse()?, rows.parse()?),
            _ => anyhow::bail!("--duckdb: cannot read {line:?}"),
        };
        let check = if rows == *weft_rows {
            ""
        } else {
            mismatches.push(*q);
            "  DIFFERENT ROW COUNT"
        };
        let w = w.as_secs_f64() * 1e3;
        total_w += w;
        total_k += ms;
        println!(
            "{:>5} {w:>12.1} {ms:>12.1} {:>11.2}{check}",
            format!("q{q}"),
            w / ms
        );
    }
    println!(
        "{:>5} {total_w:>12.1} {total_k:>12.1} {:>11.2}",
        "total",
        total_w / total_k
    );
    Ok(())
}

async fn latency(iterations: usize) -> anyhow::Result<()> {
    let weft = cluster(2, weft_common::config::CatalogsConfig::default()).await?;
    let mut client = weft.client().await?;
    select_one_latency(&mut client, iterations).await
}

/// `SELECT 1` round trips through `client` (after 20 to warm up): p50,
/// p90, p99.
async fn select_one_latency(
    client: &mut arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel>,
    iterations: usize,
) -> anyhow::Result<()> {
    let iterations = iterations.max(1);
    for _ in 0..20 {
        run_sql(client, "SELECT 1").await?;
    }
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let start = Instant::now();
        run_sql(client, "SELECT 1").await?;
        samples.push(start.elapsed());
    }
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    println!(
        "SELECT 1 round trip over Flight SQL ({iterations} runs): p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms",
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.9).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3
    );
    Ok(())
}
