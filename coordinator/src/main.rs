//! `weft-coordinator`: the Flight SQL entry point of a Weft cluster. See `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use weft_common::auth::{check_exposure, NodeSecurityArgs};
use weft_common::config::CatalogsConfig;
use weft_common::registry::{EtcdArgs, EtcdRegistry, Registry};
use weft_common::telemetry::traces::TracingOptions;
use weft_coordinator::{Coordinator, CoordinatorConfig};

/// Weft coordinator: serves Arrow Flight SQL, plans queries into stages and
/// schedules them on the workers registered in etcd.
#[derive(Debug, Parser)]
#[command(name = "weft-coordinator", version)]
struct Args {
    /// Address to serve Flight SQL on.
    #[arg(long, env = "WEFT_LISTEN", default_value = "127.0.0.1:50050")]
    listen: SocketAddr,
    #[command(flatten)]
    etcd: EtcdArgs,
    #[command(flatten)]
    security: NodeSecurityArgs,
    #[command(flatten)]
    tls: weft_common::tls::TlsArgs,
    /// Password file (`user:hash` lines, bcrypt or argon2; `weft passwd
    /// --file FILE USER` adds users); re-read when it changes. Clients sign
    /// in with Basic credentials in the Flight SQL handshake.
    #[arg(long, env = "WEFT_PASSWORD_FILE", value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// JWT verification key: an HS256 secret, or an RSA (RS256) or EC P-256
    /// (ES256) public key in PEM; re-read when it changes. Clients send
    /// `authorization: Bearer <JWT>`.
    #[arg(
        long,
        env = "WEFT_JWT_KEY_FILE",
        value_name = "FILE",
        conflicts_with = "jwt_jwks_file"
    )]
    jwt_key_file: Option<PathBuf>,
    /// JWT verification keys as a JSON Web Key Set (the token's kid picks one).
    #[arg(long, env = "WEFT_JWT_JWKS_FILE", value_name = "FILE")]
    jwt_jwks_file: Option<PathBuf>,
    /// Required `iss` of JWTs.
    #[arg(long, env = "WEFT_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// Required `aud` of JWTs.
    #[arg(long, env = "WEFT_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
    /// The JWT claim that names the user.
    #[arg(long, env = "WEFT_JWT_USER_CLAIM", default_value = "sub")]
    jwt_user_claim: String,
    /// A user who may see, read and cancel every user's queries (repeat the
    /// flag, or a comma-separated list in the environment).
    #[arg(
        long = "admin-user",
        env = "WEFT_ADMIN_USERS",
        value_delimiter = ',',
        value_name = "USER"
    )]
    admin_users: Vec<String>,
    /// Access rules (TOML: groups, and per catalog/schema/table rules with
    /// column allow/deny/mask and row filters; first match wins, no match
    /// denies); re-read when it changes. Without it every user reads every
    /// configured table.
    #[arg(long, env = "WEFT_ACCESS_RULES_FILE", value_name = "FILE")]
    access_rules_file: Option<PathBuf>,
    /// Catalog file (TOML) describing the data sources.
    #[arg(long, env = "WEFT_CATALOGS")]
    catalogs: PathBuf,
    /// Partitions per stage (default: total worker slots at planning time).
    #[arg(long, env = "WEFT_TARGET_PARTITIONS")]
    target_partitions: Option<usize>,
    /// Maximum tasks per stage (default: total worker slots).
    #[arg(long, env = "WEFT_MAX_TASKS_PER_STAGE")]
    max_tasks_per_stage: Option<usize>,
    /// Compression of Arrow IPC between nodes: none, lz4 or zstd.
    #[arg(long, env = "WEFT_EXCHANGE_COMPRESSION", default_value = "none", value_parser = ["none", "lz4", "zstd"])]
    exchange_compression: String,
    /// Seconds after which a query whose results nobody started reading is cancelled.
    #[arg(long, env = "WEFT_RESULT_TIMEOUT", default_value_t = 300)]
    result_timeout: u64,
    /// Result endpoints point at the workers, so clients read results from
    /// them directly (they must reach every worker's advertised address)
    /// instead of through the coordinator.
    #[arg(long, env = "WEFT_DIRECT_RESULTS")]
    direct_results: bool,
    /// Queries that may plan and run at once; more wait in state "queued"
    /// (first come, first served). 0 = no limit.
    #[arg(long, env = "WEFT_MAX_RUNNING_QUERIES", default_value_t = 0)]
    max_running_queries: usize,
    /// Queries that may wait at once; one more is refused right away.
    #[arg(long, env = "WEFT_MAX_QUEUED_QUERIES", default_value_t = 1000)]
    max_queued_queries: usize,
    /// Seconds a query may wait in the queue before it fails.
    #[arg(long, env = "WEFT_QUEUE_TIMEOUT", default_value_t = 300)]
    queue_timeout: u64,
    /// HOST:PORT of the HTTP server for /metrics, /healthz and /readyz
    /// (default: the --listen host with its port + 1000, e.g. 51050; `none`
    /// turns it off).
    #[arg(long, env = "WEFT_HTTP_LISTEN")]
    http_listen: Option<String>,
    /// OTLP/gRPC endpoint to export traces to (e.g. http://otel-collector:4317);
    /// without it, OTEL_EXPORTER_OTLP_ENDPOINT; neither = no traces.
    #[arg(long, env = "WEFT_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Seconds a stopping coordinator (SIGTERM) lets running queries finish
    /// (it refuses new ones and reports not-ready meanwhile) before it exits.
    #[arg(long, env = "WEFT_DRAIN_TIMEOUT", default_value_t = weft_coordinator::DEFAULT_DRAIN_TIMEOUT.as_secs())]
    drain_timeout: u64,
    /// Seconds a worker keeps a query's tasks without hearing from this
    /// coordinator: it renews the lease of its running queries four times
    /// per lease, and workers cancel and free the tasks of a query whose
    /// lease ran out (this coordinator died or was cut off). 0 = no lease.
    #[arg(long, env = "WEFT_TASK_LEASE", default_value_t = weft_coordinator::engine::DEFAULT_TASK_LEASE.as_secs())]
    task_lease: u64,
    /// How many times a query is run again after an infrastructure failure
    /// (a worker killed, frozen or cut off) while none of its results has
    /// reached the client. 0 = never: results stream at once.
    #[arg(long, env = "WEFT_QUERY_RETRIES", default_value_t = weft_coordinator::engine::DEFAULT_QUERY_RETRIES)]
    query_retries: u32,
    /// Results held on the coordinator, so a failed attempt can be taken
    /// back, until they reach this size (e.g. 32M); then they stream.
    /// 0 = never hold (no retry once results flow).
    #[arg(long, env = "WEFT_RETRY_BUFFER", default_value = "32M", value_parser = weft_common::config::parse_size)]
    retry_buffer: usize,
    /// How long results are held at most before they stream (e.g. 1s, 500ms).
    #[arg(long, env = "WEFT_RETRY_HOLD", default_value = "1s", value_parser = weft_common::config::parse_duration)]
    retry_hold: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tracing = weft_common::telemetry::traces::init(TracingOptions {
        service: "weft-coordinator",
        instance_id: format!(
            "coordinator-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ),
        otlp_endpoint: args.otlp_endpoint.clone(),
        default_log_filter: "info",
        log_to_stderr: false,
    })
    .map_err(anyhow::Error::msg)?;
    let cluster_secret = args.security.cluster_secret().map_err(anyhow::Error::msg)?;
    let jwt = (args.jwt_key_file.is_some() || args.jwt_jwks_file.is_some()).then(|| {
        weft_coordinator::auth::jwt::JwtSettings {
            key_file: args.jwt_key_file.clone(),
            jwks_file: args.jwt_jwks_file.clone(),
            issuer: args.jwt_issuer.clone(),
            audience: args.jwt_audience.clone(),
            user_claim: args.jwt_user_claim.clone(),
        }
    });
    let auth = weft_coordinator::auth::AuthSettings {
        password_file: args.password_file.clone(),
        jwt,
        admins: args.admin_users.clone(),
    };
    check_exposure(
        args.listen,
        auth.password_file.is_some() || auth.jwt.is_some(),
        args.security.insecure,
        "--password-file FILE or --jwt-key-file/--jwt-jwks-file FILE",
    )
    .map_err(anyhow::Error::msg)?;
    let catalogs = CatalogsConfig::load(&args.catalogs)?;
    let settings = args.etcd.settings().map_err(anyhow::Error::msg)?;
    let registry = EtcdRegistry::connect(settings, args.etcd.connect_timeout()).await?;
    registry.start_watch().await?;
    let members = registry.members();
    let mut config = CoordinatorConfig::new(args.listen, catalogs);
    config.auth = auth;
    config.engine.cluster_secret = cluster_secret;
    if let Some(path) = &args.access_rules_file {
        config.engine.access_rules =
            Some(weft_coordinator::access::open(path).map_err(anyhow::Error::msg)?);
    }
    config.tls = args.tls.settings();
    if let Some(tls) = &config.tls {
        weft_common::tls::check_own_certificate(tls).map_err(anyhow::Error::msg)?;
        if tls.ca.is_some() {
            config.engine.worker_tls =
                Some(weft_common::tls::client_config(tls).map_err(anyhow::Error::msg)?);
        }
    }
    config.http_listen =
        weft_common::telemetry::http::http_listen_address(args.http_listen.as_deref(), args.listen)
            .map_err(anyhow::Error::msg)?;
    // Kept here for the life of the process: dropping it stops the membership watch.
    let registry = Arc::new(registry);
    config.registry = Some(Arc::clone(&registry) as Arc<dyn Registry>);
    config.engine.target_partitions = args.target_partitions;
    config.engine.max_tasks_per_stage = args.max_tasks_per_stage;
    config.engine.result_timeout = Duration::from_secs(args.result_timeout);
    config.engine.direct_results = args.direct_results;
    config.engine.max_running_queries =
        (args.max_running_queries > 0).then_some(args.max_running_queries);
    config.engine.max_queued_queries = args.max_queued_queries;
    config.engine.queue_timeout = Duration::from_secs(args.queue_timeout);
    config.engine.task_lease = Duration::from_secs(args.task_lease);
    config.engine.query_retries = args.query_retries;
    config.engine.retry_buffer = args.retry_buffer;
    config.engine.retry_hold = args.retry_hold;
    config.engine.compression = match args.exchange_compression.as_str() {
        "none" => String::new(),
        other => other.to_string(),
    };
    let coordinator = Coordinator::start(config, members).await?;
    println!(
        "weft-coordinator serving Flight SQL at {}",
        coordinator.url()
    );
    if let Some(http) = coordinator.http_addr() {
        println!("weft-coordinator serving /metrics, /healthz, /readyz at http://{http}");
    }
    weft_common::telemetry::shutdown_signal().await;
    tracing::info!(
        drain_timeout_secs = args.drain_timeout,
        "shutting down: refusing new queries, letting running ones finish"
    );
    coordinator
        .drain(Duration::from_secs(args.drain_timeout))
        .await;
    drop(registry);
    // Pending spans leave before the process does.
    tracing.shutdown();
    Ok(())
}
