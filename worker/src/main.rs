//! `weft-worker`: runs tasks for a Weft cluster. See `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use weft_common::auth::{check_exposure, NodeSecurityArgs};
use weft_common::config::CatalogsConfig;
use weft_common::registry::{EtcdArgs, EtcdRegistry};
use weft_common::telemetry::traces::TracingOptions;
use weft_worker::{parse_size, Worker, WorkerConfig, DEFAULT_DRAIN_TIMEOUT};

/// Weft worker: registers in etcd under a lease, runs plan fragments and
/// serves their outputs over Arrow Flight.
#[derive(Debug, Parser)]
#[command(name = "weft-worker", version)]
struct Args {
    /// Address to serve Flight on (use 0.0.0.0:PORT to accept remote peers).
    #[arg(long, env = "WEFT_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Address other nodes use to reach this worker (HOST:PORT); defaults to
    /// the listen address. Needed when listening on 0.0.0.0.
    #[arg(long, env = "WEFT_ADVERTISE")]
    advertise: Option<String>,
    #[command(flatten)]
    etcd: EtcdArgs,
    #[command(flatten)]
    security: NodeSecurityArgs,
    #[command(flatten)]
    tls: weft_common::tls::TlsArgs,
    /// Catalog file (TOML) describing the data sources.
    #[arg(long, env = "WEFT_CATALOGS")]
    catalogs: PathBuf,
    /// Tasks of one stage this worker runs at once; defaults to the CPU count.
    #[arg(long, env = "WEFT_SLOTS")]
    slots: Option<u32>,
    /// Queries whose tasks this worker runs at once; a launch for one more
    /// is refused as busy and its coordinator launches it again when a
    /// query ends (up to its --queue-timeout). Caps what several
    /// coordinators sharing the workers run together. 0 = no limit.
    #[arg(long, env = "WEFT_MAX_QUERIES", default_value_t = 0)]
    max_queries: usize,
    /// Memory for query execution (e.g. 4G); operators spill to disk beyond it.
    #[arg(long, env = "WEFT_MEMORY_LIMIT", value_parser = parse_size)]
    memory_limit: Option<usize>,
    /// Lease TTL in seconds: a dead worker leaves the cluster within it.
    #[arg(long, env = "WEFT_LEASE_TTL", default_value_t = 5)]
    lease_ttl: i64,
    /// HOST:PORT of the HTTP server for /metrics, /healthz and /readyz
    /// (default: the --listen host with its port + 1000, e.g. 51051; `none`
    /// turns it off).
    #[arg(long, env = "WEFT_HTTP_LISTEN")]
    http_listen: Option<String>,
    /// OTLP/gRPC endpoint to export traces to (e.g. http://otel-collector:4317);
    /// without it, OTEL_EXPORTER_OTLP_ENDPOINT; neither = no traces.
    #[arg(long, env = "WEFT_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Also trace every operator of every task (one span per operator with
    /// its metrics, via datafusion-tracing): for deep dives, it costs time.
    #[arg(long, env = "WEFT_TRACE_OPERATORS")]
    trace_operators: bool,
    /// Seconds a stopping worker (SIGTERM) waits for its tasks to finish and
    /// their outputs to be read before it leaves; no new task is placed on
    /// it meanwhile. Keep it below the pod's terminationGracePeriodSeconds.
    #[arg(long, env = "WEFT_DRAIN_TIMEOUT", default_value_t = DEFAULT_DRAIN_TIMEOUT.as_secs())]
    drain_timeout: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let id = format!(
        "worker-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let tracing = weft_common::telemetry::traces::init(TracingOptions {
        service: "weft-worker",
        instance_id: id.clone(),
        otlp_endpoint: args.otlp_endpoint.clone(),
        default_log_filter: "info",
        log_to_stderr: false,
    })
    .map_err(anyhow::Error::msg)?;
    let cluster_secret = args.security.cluster_secret().map_err(anyhow::Error::msg)?;
    let tls = args.tls.settings();
    if let Some(tls) = &tls {
        weft_common::tls::check_own_certificate(tls).map_err(anyhow::Error::msg)?;
    }
    check_exposure(
        args.listen,
        cluster_secret.is_some() || tls.as_ref().is_some_and(|t| t.ca.is_some()),
        args.security.insecure,
        "--cluster-secret-file FILE (the same file on every node) or mutual TLS (--tls-cert-file, --tls-key-file, --tls-ca-file)",
    )
    .map_err(anyhow::Error::msg)?;
    // Validated at startup so a bad file fails here, not in the middle of a query.
    let catalogs = CatalogsConfig::load(&args.catalogs)?;
    let mut settings = args.etcd.settings().map_err(anyhow::Error::msg)?;
    settings.lease_ttl_secs = args.lease_ttl;
    let registry = EtcdRegistry::connect(settings, args.etcd.connect_timeout()).await?;
    let mut config = WorkerConfig::new(args.listen);
    config.id = Some(id);
    config.advertise = args.advertise;
    config.max_queries = args.max_queries;
    if let Some(s) = args.slots {
        config.slots = s;
    }
    config.memory_limit = args.memory_limit;
    config.trace_operators = args.trace_operators;
    config.catalogs = catalogs;
    config.cluster_secret = cluster_secret;
    config.tls = tls;
    config.http_listen =
        weft_common::telemetry::http::http_listen_address(args.http_listen.as_deref(), args.listen)
            .map_err(anyhow::Error::msg)?;
    let worker = Worker::start(config, Arc::new(registry)).await?;
    println!(
        "weft-worker {} serving Flight at {}",
        worker.id(),
        worker.address()
    );
    if let Some(http) = worker.http_addr() {
        println!(
            "weft-worker {} serving /metrics, /healthz, /readyz at http://{http}",
            worker.id()
        );
    }
    weft_common::telemetry::shutdown_signal().await;
    tracing::info!(
        drain_timeout_secs = args.drain_timeout,
        "shutting down: draining (no new tasks; running ones finish and are read), then leaving the cluster"
    );
    worker.drain(Duration::from_secs(args.drain_timeout)).await;
    // Pending spans leave before the process does.
    tracing.shutdown();
    Ok(())
}
