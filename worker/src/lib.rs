//! The Weft worker: registers itself in the membership registry, runs the
//! tasks the coordinator launches, and serves their outputs over Arrow Flight.
//!
//! Main types: [`WorkerConfig`], [`Worker::start`] and the [`WorkerHandle`] it
//! returns (address, graceful [`WorkerHandle::shutdown`], abrupt
//! [`WorkerHandle::kill`] for fault tests).
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use std::sync::Arc;
//! use weft_common::registry::MemoryRegistry;
//! use weft_worker::{Worker, WorkerConfig};
//! let registry = Arc::new(MemoryRegistry::new());
//! let worker = Worker::start(WorkerConfig::new("127.0.0.1:0".parse()?), registry).await?;
//! println!("worker {} at {}", worker.id(), worker.address());
//! worker.shutdown().await;
//! # Ok(()) }
//! ```

mod fencing;
mod peers;
pub mod service;
pub mod tasks;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use weft_common::codec::WeftCodec;
use weft_common::config::CatalogsConfig;
use weft_common::flight::{ClientPool, MAX_MESSAGE_SIZE};
use weft_common::registry::{Registration, Registry, WorkerInfo};
use weft_common::telemetry::catalog::{self as metric, Role};
use weft_common::telemetry::http::{HttpBinding, HttpServer, Readiness};
use weft_common::telemetry::GaugeSource;
use weft_connectors::Connectors;

pub use service::WorkerService;
pub use tasks::TaskManager;

/// How long a draining worker waits, by default, for its tasks to finish and
/// their outputs to be read (`weft-worker --drain-timeout`).
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

/// Worker settings (mirrors the `weft-worker` flags).
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub listen: SocketAddr,
    /// Address announced to others; defaults to the bound listen address.
    pub advertise: Option<String>,
    pub slots: u32,
    /// Queries whose tasks may run on this worker at once; 0 = no limit
    /// (`--max-queries`). Enforced here, so several coordinators sharing
    /// the workers cannot oversubscribe them.
    pub max_queries: usize,
    /// Memory pool size in bytes; `None` means unbounded.
    pub memory_limit: Option<usize>,
    pub id: Option<String>,
    /// Catalogs whose sources this worker reads (database catalogs need
    /// their connection settings here; plans carry only catalog names).
    pub catalogs: CatalogsConfig,
    /// Where to serve `/metrics`, `/healthz` and `/readyz`; `None` = no HTTP.
    pub http_listen: Option<SocketAddr>,
    /// A trace span per operator of every task (deep dives; costs time).
    pub trace_operators: bool,
    /// Signs this worker's calls to other workers and refuses calls that
    /// are not signed (`--cluster-secret-file`); `None` = open.
    pub cluster_secret: Option<Arc<weft_common::auth::ClusterSecret>>,
    /// Serve TLS (`--tls-cert-file`, `--tls-key-file`) and, with a CA,
    /// accept and call only nodes with certificates of that CA (mutual TLS).
    pub tls: Option<weft_common::tls::TlsSettings>,
}

impl WorkerConfig {
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            advertise: None,
            slots: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(2),
            max_queries: 0,
            memory_limit: None,
            id: None,
            catalogs: CatalogsConfig::default(),
            http_listen: None,
            trace_operators: false,
            cluster_secret: None,
            tls: None,
        }
    }
}

pub use weft_common::config::parse_size;

/// Starts workers.
#[derive(Debug)]
pub struct Worker;

/// A running worker.
#[derive(Debug)]
pub struct WorkerHandle {
    info: WorkerInfo,
    tasks: Arc<TaskManager>,
    registration: Option<Arc<dyn Registration>>,
    http: Option<HttpServer>,
    _gauges: Arc<dyn GaugeSource>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

fn runtime(memory_limit: Option<usize>) -> datafusion::error::Result<Arc<RuntimeEnv>> {
    let mut builder = RuntimeEnvBuilder::new();
    if let Some(limit) = memory_limit {
        builder = builder.with_memory_pool(Arc::new(FairSpillPool::new(limit)));
    }
    builder.build_arc()
}

/// How often expired task leases are looked for.
const LEASE_CHECK: Duration = Duration::from_millis(250);

/// Cancels the tasks of queries whose coordinator stopped renewing their
/// lease, for as long as the worker's tasks exist.
async fn expire_task_leases(tasks: std::sync::Weak<TaskManager>) {
    let mut tick = tokio::time::interval(LEASE_CHECK);
    loop {
        tick.tick().await;
        match tasks.upgrade() {
            Some(tasks) => {
                tasks.expire_leases();
            }
            None => return,
        }
    }
}

/// Drops every task when the worker registers again under a new epoch
/// (its etcd lease was lost while it lived): the coordinators count the
/// earlier epoch's tasks as lost and run their queries again.
async fn drop_earlier_epochs(
    mut epochs: tokio::sync::watch::Receiver<u64>,
    tasks: std::sync::Weak<TaskManager>,
) {
    while epochs.changed().await.is_ok() {
        let epoch = *epochs.borrow_and_update();
        match tasks.upgrade() {
            Some(tasks) => {
                tasks.drop_epoch(epoch);
            }
            None => return,
        }
    }
}

impl Worker {
    /// Binds the listener, serves Flight and registers the worker.
    pub async fn start(
        config: WorkerConfig,
        registry: Arc<dyn Registry>,
    ) -> anyhow::Result<WorkerHandle> {
        let tls = match &config.tls {
            Some(tls) if tls.ca.is_none() => anyhow::bail!(
                "a worker with --tls-cert-file also needs --tls-ca-file: it verifies the nodes it \
                 talks to, and they it, against the cluster's CA"
            ),
            Some(tls) => {
                weft_common::tls::check_own_certificate(tls).map_err(anyhow::Error::msg)?;
                Some((
                    weft_common::tls::server_config(tls, true).map_err(anyhow::Error::msg)?,
                    weft_common::tls::client_config(tls).map_err(anyhow::Error::msg)?,
                ))
            }
            None => None,
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
        let http = match config.http_listen {
            Some(listen) => Some(HttpBinding::bind(listen).await?),
            None => None,
        };
        let local = listener.local_addr()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let address = match &config.advertise {
            Some(a) if a.contains("://") => a.clone(),
            Some(a) => format!("{scheme}://{a}"),
            None => format!("{scheme}://{local}"),
        };
        let id = config.id.clone().unwrap_or_else(|| {
            format!(
                "worker-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            )
        });
        let info = WorkerInfo {
            id: id.clone(),
            address: address.clone(),
            slots: config.slots.max(1),
            version: weft_common::VERSION.to_string(),
            draining: false,
            epoch: 0,
            memory_limit: config.memory_limit.map(|m| m as u64),
        };
        let (connectors, errors) = Connectors::from_config(&config.catalogs);
        for e in errors {
            tracing::error!("{e}; the other catalogs stay available");
        }
        let clients = Arc::new(
            ClientPool::with_cluster_secret(config.cluster_secret.clone())
                .with_tls(tls.as_ref().map(|(_, client)| client.clone())),
        );
        let codec = WeftCodec::new(Arc::clone(&clients)).with_extension(connectors.codec());
        // With node credentials, prove they work with the cluster first, before
        // serving or registering anything.
        if tls.is_some() || config.cluster_secret.is_some() {
            let members = registry.current().await?;
            peers::check_credentials(
                &clients,
                &info.address,
                &members,
                tls.is_some(),
                config.cluster_secret.is_some(),
            )
            .await
            .map_err(|e| {
                tracing::error!("{e}");
                anyhow::Error::msg(e)
            })?;
        }
        let runtime = runtime(config.memory_limit)?;
        // Files catalogs on object stores: plans name the URL, this process
        // supplies the store and its credentials.
        for (catalog, message) in
            weft_common::object_stores::register_object_stores(&runtime, &config.catalogs)
        {
            tracing::error!("catalog \"{catalog}\": {message}; its tables cannot be read here");
        }
        let tasks = TaskManager::new(id.clone(), address, runtime, codec);
        tasks.set_file_catalogs(&config.catalogs);
        tasks.set_operator_spans(config.trace_operators);
        tasks.set_max_queries(config.max_queries);
        tokio::spawn(expire_task_leases(Arc::downgrade(&tasks)));
        // Metrics are recorded only where they are served (see the coordinator).
        let gauges: Arc<dyn GaugeSource> = Arc::new(WorkerGauges {
            tasks: Arc::downgrade(&tasks),
            slots: config.slots.max(1),
            memory_limit: config.memory_limit,
        });
        if config.http_listen.is_some() {
            weft_common::telemetry::register_role(Role::Worker);
            weft_common::telemetry::add_gauge_source(&gauges);
        }
        let service = FlightServiceServer::new(
            WorkerService::new(Arc::clone(&tasks))
                .with_cluster_secret(config.cluster_secret.clone()),
        )
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let router = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(weft_common::flight::KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(weft_common::flight::KEEPALIVE_TIMEOUT))
            .add_service(service);
        let stopped = async {
            let _ = stop_rx.await;
        };
        let server = match tls {
            Some((server_tls, _)) => {
                let incoming = weft_common::tls::incoming(listener, server_tls, "worker");
                tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped))
            }
            None => {
                // Accepted sockets need TCP_NODELAY set here: the builder's setting only
                // applies when tonic binds the listener itself.
                let incoming =
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
                tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped))
            }
        };
        let registration: Arc<dyn Registration> = Arc::from(registry.register(info.clone()).await?);
        tracing::info!(worker = %id, address = %info.address, slots = info.slots, "worker registered");
        tokio::spawn(drop_earlier_epochs(
            registration.epochs(),
            Arc::downgrade(&tasks),
        ));
        let http = match http {
            Some(binding) => {
                let readiness = Arc::new(WorkerReadiness {
                    tasks: Arc::downgrade(&tasks),
                    registration: Arc::downgrade(&registration),
                    id: id.clone(),
                });
                let http = binding.serve(readiness)?;
                tracing::info!(worker = %id, url = %http.url(), "worker serving /metrics, /healthz, /readyz");
                Some(http)
            }
            None => None,
        };
        Ok(WorkerHandle {
            info,
            tasks,
            registration: Some(registration),
            http,
            _gauges: gauges,
            stop: Some(stop_tx),
            server: Some(server),
        })
    }
}

impl WorkerHandle {
    pub fn id(&self) -> &str {
        &self.info.id
    }

    /// Flight address, e.g. `http://127.0.0.1:40123`.
    pub fn address(&self) -> &str {
        &self.info.address
    }

    pub fn info(&self) -> &WorkerInfo {
        &self.info
    }

    pub fn tasks(&self) -> &Arc<TaskManager> {
        &self.tasks
    }

    /// Address of the `/metrics` `/healthz` `/readyz` server, if serving.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(HttpServer::addr)
    }

    /// [`WorkerHandle::drain`] with [`DEFAULT_DRAIN_TIMEOUT`].
    pub async fn shutdown(self) {
        self.drain(DEFAULT_DRAIN_TIMEOUT).await;
    }

    /// Graceful stop (SIGTERM, scale-down). In order:
    /// 1. refuse new tasks (a launch gets `Unavailable` marked
    ///    [`weft_common::flight::REFUSAL_DRAINING`], so the coordinator
    ///    places the query elsewhere) and turn `/readyz` not-ready;
    /// 2. mark the registration draining, so schedulers stop placing tasks
    ///    here while the worker stays a member (its outputs stay readable and
    ///    its queries are not failed as "worker lost");
    /// 3. keep running and serving until every task is released by its
    ///    coordinator (the query finished or was cancelled: its outputs were
    ///    read), or `timeout` passes;
    /// 4. leave the membership (lease revoked) and stop serving.
    pub async fn drain(mut self, timeout: Duration) {
        let started = tokio::time::Instant::now();
        self.tasks.stop_accepting();
        if let Some(r) = &self.registration {
            if let Err(e) = r.set_draining().await {
                tracing::warn!("announcing the drain: {e}; launches are refused anyway");
            }
        }
        tracing::info!(
            worker = %self.info.id,
            tasks = self.tasks.task_count(),
            timeout_secs = timeout.as_secs(),
            "draining: accepting no new tasks, finishing the running ones"
        );
        let deadline = started + timeout;
        while self.tasks.task_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let left = self.tasks.task_count();
        if left > 0 {
            tracing::warn!(
                worker = %self.info.id,
                tasks = left,
                "drain timeout ({}s) passed with tasks still held; their queries will fail (raise --drain-timeout)",
                timeout.as_secs()
            );
        } else {
            tracing::info!(
                worker = %self.info.id,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "drained: every task finished and its outputs were read"
            );
        }
        if let Some(r) = self.registration.take() {
            if let Err(e) = r.revoke().await {
                tracing::warn!("{e}");
            }
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        }
        if let Some(http) = self.http.take() {
            http.shutdown().await;
        }
    }

    /// Abrupt stop, as if the process died: the server stops answering and the
    /// registration is no longer kept alive (it is not revoked, so an etcd lease
    /// expires on its own).
    pub fn kill(mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
        self.tasks.kill();
        // Dropping the registration stops the keep-alive without revoking.
        self.registration.take();
    }
}

/// Gauges of one worker, computed when scraped.
#[derive(Debug)]
struct WorkerGauges {
    tasks: std::sync::Weak<TaskManager>,
    slots: u32,
    memory_limit: Option<usize>,
}

impl GaugeSource for WorkerGauges {
    fn gauges(&self, out: &mut Vec<(&'static str, f64)>) {
        let Some(tasks) = self.tasks.upgrade() else {
            return;
        };
        let running = tasks.running_count();
        out.push((metric::TASKS_RUNNING.name, running as f64));
        out.push((metric::WORKER_QUERIES.name, tasks.query_count() as f64));
        out.push((metric::SLOTS.name, f64::from(self.slots)));
        out.push((
            metric::SLOTS_FREE.name,
            (self.slots as usize).saturating_sub(running) as f64,
        ));
        out.push((
            metric::MEMORY_RESERVED.name,
            tasks.runtime().memory_pool.reserved() as f64,
        ));
        out.push((
            metric::MEMORY_LIMIT.name,
            self.memory_limit.unwrap_or(0) as f64,
        ));
    }
}

/// A worker is ready while it is registered (its lease kept alive) and
/// accepts tasks.
struct WorkerReadiness {
    tasks: std::sync::Weak<TaskManager>,
    registration: std::sync::Weak<dyn Registration>,
    id: String,
}

#[async_trait::async_trait]
impl Readiness for WorkerReadiness {
    async fn ready(&self) -> Result<(), String> {
        let id = &self.id;
        let Some(tasks) = self.tasks.upgrade() else {
            return Err(format!("worker {id} is stopped"));
        };
        if !tasks.is_accepting() {
            return Err(format!(
                "worker {id} is draining: it accepts no new tasks and finishes the running ones"
            ));
        }
        let Some(registration) = self.registration.upgrade() else {
            return Err(format!("worker {id} has left the membership"));
        };
        registration
            .health()
            .map_err(|reason| format!("worker {id} is not registered: {reason}"))
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}
