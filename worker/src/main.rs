//! `weft-worker`: runs tasks for a Weft cluster. See `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use weft_common::config::CatalogsConfig;
use weft_common::registry::{EtcdRegistry, EtcdSettings};
use weft_worker::{parse_size, Worker, WorkerConfig};

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
    /// etcd endpoints, comma separated (e.g. http://127.0.0.1:2379).
    #[arg(long, env = "WEFT_ETCD", value_delimiter = ',', required = true)]
    etcd: Vec<String>,
    /// Catalog file (TOML) describing the data sources.
    #[arg(long, env = "WEFT_CATALOGS")]
    catalogs: PathBuf,
    /// Tasks of one stage this worker runs at once; defaults to the CPU count.
    #[arg(long, env = "WEFT_SLOTS")]
    slots: Option<u32>,
    /// Memory for query execution (e.g. 4G); operators spill to disk beyond it.
    #[arg(long, env = "WEFT_MEMORY_LIMIT", value_parser = parse_size)]
    memory_limit: Option<usize>,
    /// Lease TTL in seconds: a dead worker leaves the cluster within it.
    #[arg(long, env = "WEFT_LEASE_TTL", default_value_t = 5)]
    lease_ttl: i64,
    /// etcd key prefix of this cluster's worker registrations (clusters
    /// sharing one etcd use different prefixes).
    #[arg(long, env = "WEFT_ETCD_PREFIX", default_value = weft_common::registry::WORKERS_PREFIX)]
    etcd_prefix: String,
    /// Seconds to keep retrying etcd at startup.
    #[arg(long, env = "WEFT_ETCD_CONNECT_TIMEOUT", default_value_t = 60)]
    etcd_connect_timeout: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    // Validated at startup so a bad file fails here, not in the middle of a query.
    let catalogs = CatalogsConfig::load(&args.catalogs)?;
    let mut settings = EtcdSettings::new(args.etcd.clone());
    settings.lease_ttl_secs = args.lease_ttl;
    settings.prefix = args.etcd_prefix.clone();
    let registry =
        EtcdRegistry::connect(settings, Duration::from_secs(args.etcd_connect_timeout)).await?;
    let mut config = WorkerConfig::new(args.listen);
    config.advertise = args.advertise;
    if let Some(s) = args.slots {
        config.slots = s;
    }
    config.memory_limit = args.memory_limit;
    config.catalogs = catalogs;
    let worker = Worker::start(config, Arc::new(registry)).await?;
    println!(
        "weft-worker {} serving Flight at {}",
        worker.id(),
        worker.address()
    );
    shutdown_signal().await;
    tracing::info!("shutting down: leaving the cluster and finishing running tasks");
    worker.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
