//! `weft`: run an embedded cluster (`weft local`) or send SQL (`weft sql`).

mod progress;
mod shell;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use arrow::record_batch::RecordBatch;
use arrow_flight::sql::client::FlightSqlServiceClient;
use clap::{Parser, Subcommand, ValueEnum};
use futures::TryStreamExt;
use tonic::transport::Endpoint;
use weft_common::config::{CatalogConfig, CatalogsConfig, FileFormat};
use weft_common::registry::{MemoryRegistry, Registry};
use weft_coordinator::{Coordinator, CoordinatorConfig};
use weft_worker::{Worker, WorkerConfig};

/// Weft: a distributed, federated SQL engine on Apache DataFusion and Arrow.
#[derive(Debug, Parser)]
#[command(name = "weft", version)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run a coordinator and N workers in this process (membership in memory,
    /// no etcd). Without --catalogs, serves a built-in `sample` catalog with
    /// TPC-H data generated at startup.
    Local {
        /// Number of workers.
        #[arg(long, env = "WEFT_WORKERS", default_value_t = 2)]
        workers: usize,
        /// Address of the Flight SQL endpoint.
        #[arg(long, env = "WEFT_LISTEN", default_value = "127.0.0.1:50050")]
        listen: SocketAddr,
        /// Catalog file (TOML); default: the `sample` TPC-H catalog.
        #[arg(long, env = "WEFT_CATALOGS")]
        catalogs: Option<PathBuf>,
        /// TPC-H scale factor of the sample catalog.
        #[arg(long, env = "WEFT_SAMPLE_SCALE", default_value_t = 0.01)]
        sample_scale: f64,
        /// Clients read results from the workers directly instead of
        /// through the coordinator.
        #[arg(long, env = "WEFT_DIRECT_RESULTS")]
        direct_results: bool,
        /// HOST:PORT of the coordinator's /metrics, /healthz, /readyz
        /// (default: the --listen port + 1000; `none` turns HTTP off). Workers
        /// serve theirs on the ports that follow it.
        #[arg(long, env = "WEFT_HTTP_LISTEN")]
        http_listen: Option<String>,
        /// Serve on a non-loopback --listen address although `weft local`
        /// has no authentication (anyone who reaches it may run queries).
        #[arg(long, env = "WEFT_INSECURE")]
        insecure: bool,
    },
    /// Run SQL against a coordinator and print the results. Without -e or
    /// -f: an interactive shell on a terminal, else the statements on stdin.
    Sql {
        /// Coordinator Flight SQL URL.
        #[arg(
            long,
            env = "WEFT_COORDINATOR",
            default_value = "grpc://127.0.0.1:50050"
        )]
        coordinator: String,
        /// SQL to run (several statements separated by `;` run in order).
        #[arg(short = 'e', long = "execute", conflicts_with = "file")]
        execute: Option<String>,
        /// File with SQL statements.
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// Output format.
        #[arg(long, env = "WEFT_FORMAT", value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Live progress line on stderr while a statement runs (auto: when
        /// stderr is a terminal). Never written to stdout.
        #[arg(long, env = "WEFT_PROGRESS", value_enum, default_value_t = progress::ProgressMode::Auto)]
        progress: progress::ProgressMode,
        /// User to sign in as (password file); the password is read from
        /// the WEFT_PASSWORD environment variable.
        #[arg(long, env = "WEFT_USER", conflicts_with = "token")]
        user: Option<String>,
        /// Bearer token (a JWT) to send instead of a user and password.
        #[arg(long, env = "WEFT_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// CA certificate (PEM) to verify a `grpc+tls://` coordinator (and
        /// workers serving direct results) with.
        #[arg(long, env = "WEFT_TLS_CA_FILE")]
        tls_ca_file: Option<PathBuf>,
    },
    /// Make a development CA (DIR/ca.crt, DIR/ca.key) if DIR has none, and a
    /// certificate of it for this node (DIR/NAME.crt, DIR/NAME.key) that
    /// serves TLS and authenticates to other nodes (mutual TLS). For tests
    /// and trials: production clusters use their own CA (e.g. cert-manager).
    Certs {
        /// Directory of the CA and the certificates.
        #[arg(long, default_value = "weft-certs")]
        dir: PathBuf,
        /// File name of the node's certificate and key.
        #[arg(long, default_value = "node")]
        name: String,
        /// Host names and IP addresses the certificate is valid for (repeat).
        #[arg(long = "host", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        hosts: Vec<String>,
    },
    /// Add a user to a password file (`weft-coordinator --password-file`)
    /// or replace their password. The password is read from standard input
    /// (one line), so it never appears in the process list or shell history.
    Passwd {
        /// The password file (created if missing; readable by its owner only).
        #[arg(long)]
        file: PathBuf,
        /// The user name.
        user: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Format {
    Table,
    Csv,
    Json,
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let result = match args.command {
        Cmd::Local {
            workers,
            listen,
            catalogs,
            sample_scale,
            direct_results,
            http_listen,
            insecure,
        } => {
            match weft_common::auth::check_exposure(
                listen,
                false,
                insecure,
                "a cluster of weft-coordinator (--password-file) and weft-worker processes",
            ) {
                Err(e) => Err(anyhow::Error::msg(e)),
                Ok(()) => {
                    local(
                        workers,
                        listen,
                        catalogs,
                        sample_scale,
                        direct_results,
                        http_listen,
                    )
                    .await
                }
            }
        }
        Cmd::Sql {
            coordinator,
            execute,
            file,
            format,
            progress,
            user,
            token,
            tls_ca_file,
        } => {
            let credentials = match (user, token) {
                (Some(user), _) => Some(Credentials::Password {
                    user,
                    password: std::env::var("WEFT_PASSWORD").unwrap_or_default(),
                }),
                (None, Some(token)) => Some(Credentials::Token(token)),
                (None, None) => None,
            };
            let tls = match tls_ca_file.map(std::fs::read).transpose() {
                Ok(ca) => ca.map(|pem| {
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(pem))
                }),
                Err(e) => {
                    eprintln!("error: cannot read --tls-ca-file: {e}");
                    std::process::exit(1);
                }
            };
            sql(
                &coordinator,
                execute,
                file,
                format,
                progress,
                credentials,
                tls,
            )
            .await
        }
        Cmd::Certs { dir, name, hosts } => weft_common::tls::issue(&dir, &name, &hosts)
            .map(|files| {
                println!(
                    "CA: {} (its key: {})\ncertificate: {}\nkey: {}",
                    files.ca_cert.display(),
                    dir.join("ca.key").display(),
                    files.cert.display(),
                    files.key.display()
                )
            })
            .map_err(anyhow::Error::msg),
        Cmd::Passwd { file, user } => passwd(&file, &user),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// How `weft sql` signs in.
enum Credentials {
    Password { user: String, password: String },
    Token(String),
}

fn passwd(file: &std::path::Path, user: &str) -> anyhow::Result<()> {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    let password = line.trim_end_matches(['\n', '\r']);
    weft_coordinator::auth::password::set_password(file, user, password)
        .map_err(anyhow::Error::msg)?;
    eprintln!("password of {user} set in {}", file.display());
    Ok(())
}

async fn local(
    workers: usize,
    listen: SocketAddr,
    catalogs: Option<PathBuf>,
    scale: f64,
    direct_results: bool,
    http_listen: Option<String>,
) -> anyhow::Result<()> {
    let http = weft_common::telemetry::http::http_listen_address(http_listen.as_deref(), listen)
        .map_err(anyhow::Error::msg)?;
    let _sample_dir;
    let catalogs = match catalogs {
        Some(path) => CatalogsConfig::load(&path)?,
        None => {
            let dir = tempfile::Builder::new().prefix("weft-sample-").tempdir()?;
            eprintln!(
                "generating the sample catalog (TPC-H scale {scale}) in {}",
                dir.path().display()
            );
            weft_common::sample::generate_tpch(dir.path(), scale, 2)?;
            let mut c = CatalogsConfig::default();
            c.catalogs.insert(
                "sample".to_string(),
                CatalogConfig::Files {
                    path: dir.path().to_string_lossy().to_string(),
                    format: FileFormat::Parquet,
                    storage: Default::default(),
                },
            );
            c.default_catalog = Some("sample".to_string());
            _sample_dir = dir;
            c
        }
    };
    let registry = Arc::new(MemoryRegistry::new());
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let mut handles = Vec::new();
    for i in 0..workers.max(1) {
        let mut config = WorkerConfig::new("127.0.0.1:0".parse()?);
        config.slots = (cpus / workers.max(1)).max(1) as u32;
        config.catalogs = catalogs.clone();
        // Worker i serves HTTP on the coordinator's HTTP port + 1 + i.
        config.http_listen = http.map(|a| {
            let port = if a.port() == 0 {
                0
            } else {
                a.port().saturating_add(1 + i as u16)
            };
            SocketAddr::new(a.ip(), port)
        });
        handles.push(Worker::start(config, Arc::clone(&registry) as Arc<dyn Registry>).await?);
    }
    let mut config = CoordinatorConfig::new(listen, catalogs);
    config.engine.direct_results = direct_results;
    config.http_listen = http;
    let coordinator = Coordinator::start(config, registry.members()).await?;
    println!("Weft is running: {} worker(s)", handles.len());
    println!("Flight SQL: {}", coordinator.url());
    if let Some(addr) = coordinator.http_addr() {
        println!("coordinator: http://{addr}/metrics  /healthz  /readyz");
    }
    for w in &handles {
        if let Some(addr) = w.http_addr() {
            println!(
                "worker {}: http://{addr}/metrics  /healthz  /readyz",
                w.id()
            );
        }
    }
    println!("(one process: every /metrics shows the metrics of the whole process)");
    println!(
        "try: weft sql --coordinator {} -e \"SELECT count(*) FROM lineitem\"",
        coordinator.url()
    );
    println!("press Ctrl-C to stop");
    tokio::signal::ctrl_c().await?;
    // Running queries get a few seconds (then they are cancelled and the
    // workers have nothing left to drain).
    let grace = std::time::Duration::from_secs(10);
    coordinator.drain(grace).await;
    for w in handles {
        w.drain(grace).await;
    }
    Ok(())
}

/// Splits a script into statements.
pub(crate) fn statements(text: &str) -> anyhow::Result<Vec<String>> {
    let parsed =
        datafusion::sql::parser::DFParser::parse_sql(text).context("cannot parse the SQL")?;
    Ok(parsed.into_iter().map(|s| s.to_string()).collect())
}

async fn sql(
    coordinator: &str,
    execute: Option<String>,
    file: Option<PathBuf>,
    format: Format,
    progress: progress::ProgressMode,
    credentials: Option<Credentials>,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> anyhow::Result<()> {
    use std::io::{IsTerminal, Read};
    let text = match (execute, file) {
        (Some(e), _) => Some(e),
        (None, Some(f)) => Some(
            std::fs::read_to_string(&f).with_context(|| format!("cannot read {}", f.display()))?,
        ),
        (None, None) if std::io::stdin().is_terminal() => None,
        (None, None) => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read SQL from standard input")?;
            Some(text)
        }
    };
    let mut session = Session::connect(coordinator, progress.enabled(), credentials, tls).await?;
    match text {
        Some(text) => {
            for statement in statements(&text)? {
                let batches = session.run(&statement).await?;
                print_batches(&batches, format)?;
            }
            Ok(())
        }
        None => shell::run(&mut session, format).await,
    }
}

/// A connection to a coordinator that runs statements.
pub(crate) struct Session {
    client: FlightSqlServiceClient<tonic::transport::Channel>,
    /// For the progress line's `weft.query_progress` calls.
    flight: arrow_flight::flight_service_client::FlightServiceClient<tonic::transport::Channel>,
    /// Bearer token of every call (from the sign-in, or given).
    token: Option<String>,
    /// TLS of `grpc+tls://` result endpoints.
    tls: Option<tonic::transport::ClientTlsConfig>,
    progress: bool,
}

impl Session {
    async fn connect(
        coordinator: &str,
        progress: bool,
        credentials: Option<Credentials>,
        tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> anyhow::Result<Self> {
        let url = weft_common::flight::location_url(coordinator)
            .unwrap_or_else(|| coordinator.to_string());
        let mut endpoint = Endpoint::from_shared(url.clone())
            .with_context(|| format!("invalid coordinator URL {coordinator}"))?;
        if url.starts_with("https://") {
            endpoint = endpoint
                .tls_config(tls.clone().unwrap_or_default())
                .context("TLS settings")?;
        }
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot connect to the coordinator at {coordinator}"))?;
        let inner = arrow_flight::flight_service_client::FlightServiceClient::new(channel)
            .max_decoding_message_size(weft_common::flight::MAX_MESSAGE_SIZE)
            .max_encoding_message_size(weft_common::flight::MAX_MESSAGE_SIZE);
        let mut client = FlightSqlServiceClient::new_from_inner(inner.clone());
        match credentials {
            Some(Credentials::Password { user, password }) => {
                client.handshake(&user, &password).await.map_err(|e| {
                    anyhow::anyhow!("cannot sign in as {user}: {}", flight_message(e))
                })?;
            }
            Some(Credentials::Token(token)) => client.set_token(token),
            None => {}
        }
        Ok(Self {
            tls,
            token: client.token().cloned(),
            client,
            flight: inner,
            progress,
        })
    }

    /// Runs one statement and reads all of its results; the progress line
    /// (if on) is drawn meanwhile and cleared before this returns.
    pub(crate) async fn run(&mut self, sql: &str) -> anyhow::Result<Vec<RecordBatch>> {
        let line =
            progress::ProgressLine::start(self.progress, self.flight.clone(), self.token.clone());
        let info = self
            .client
            .execute(sql.to_string(), None)
            .await
            .map_err(|e| anyhow::anyhow!("{}", flight_message(e)))?;
        if let Some(id) = weft_coordinator::flight_sql::query_ids_of(&info)
            .into_iter()
            .next()
        {
            line.follow(id);
        }
        let batches = read_results(&mut self.client, &info, self.tls.as_ref()).await;
        drop(line);
        batches
    }
}

async fn read_results(
    client: &mut FlightSqlServiceClient<tonic::transport::Channel>,
    info: &arrow_flight::FlightInfo,
    tls: Option<&tonic::transport::ClientTlsConfig>,
) -> anyhow::Result<Vec<RecordBatch>> {
    let mut batches = Vec::new();
    for endpoint in info.endpoint.clone() {
        let Some(ticket) = endpoint.ticket else {
            continue;
        };
        // An endpoint with a location is read there (coordinators started
        // with --direct-results point at the workers).
        let stream = match endpoint.location.first() {
            Some(location) => {
                let url = weft_common::flight::location_url(&location.uri).ok_or_else(|| {
                    anyhow::anyhow!("result endpoint at unsupported location {}", location.uri)
                })?;
                let mut endpoint = tonic::transport::Endpoint::from_shared(url.clone())?;
                if url.starts_with("https://") {
                    endpoint = endpoint.tls_config(tls.cloned().unwrap_or_default())?;
                }
                let channel = endpoint
                    .connect()
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot reach result endpoint {url}: {e}"))?;
                let inner = arrow_flight::flight_service_client::FlightServiceClient::new(channel)
                    .max_decoding_message_size(weft_common::flight::MAX_MESSAGE_SIZE);
                FlightSqlServiceClient::new_from_inner(inner)
                    .do_get(ticket)
                    .await
            }
            None => client.do_get(ticket).await,
        }
        .map_err(|e| anyhow::anyhow!("{}", flight_message(e)))?;
        let mut part: Vec<RecordBatch> = stream
            .try_collect()
            .await
            .map_err(|e| anyhow::anyhow!("{}", flight_message(e)))?;
        batches.append(&mut part);
    }
    if batches.is_empty() {
        if let Ok(schema) = info_schema(info) {
            batches.push(RecordBatch::new_empty(schema));
        }
    }
    Ok(batches)
}

fn info_schema(info: &arrow_flight::FlightInfo) -> anyhow::Result<arrow::datatypes::SchemaRef> {
    Ok(Arc::new(info.clone().try_decode_schema()?))
}

/// The server's message, without transport wrapping.
fn flight_message(e: arrow_flight::error::FlightError) -> String {
    match e {
        arrow_flight::error::FlightError::Tonic(s) => format!("{} ({:?})", s.message(), s.code()),
        other => other.to_string(),
    }
}

pub(crate) fn print_batches(batches: &[RecordBatch], format: Format) -> anyhow::Result<()> {
    // Statements without a result (CREATE VIEW, ...) print nothing.
    if batches.iter().all(|b| b.num_columns() == 0) {
        return Ok(());
    }
    match format {
        Format::Table => println!("{}", arrow::util::pretty::pretty_format_batches(batches)?),
        Format::Csv => {
            let mut w = arrow::csv::Writer::new(std::io::stdout());
            for b in batches {
                w.write(b)?;
            }
        }
        Format::Json => {
            let mut w = arrow::json::ArrayWriter::new(std::io::stdout());
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
            println!();
        }
    }
    Ok(())
}
