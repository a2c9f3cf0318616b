//! The Weft coordinator: Arrow Flight SQL front end, planner and scheduler.
//!
//! A statement arriving at `GetFlightInfo` is planned by DataFusion, cut into
//! stages ([`planner::stages`]), placed on the live workers
//! ([`scheduler`]) and launched; its result partitions become the
//! `FlightInfo` endpoints, streamed through the coordinator by `DoGet`.
//! Query state and progress live in [`queries`].
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use std::sync::Arc;
//! use weft_common::config::CatalogsConfig;
//! use weft_common::registry::{MemoryRegistry, Registry};
//! use weft_coordinator::{Coordinator, CoordinatorConfig};
//! let registry = Arc::new(MemoryRegistry::new());
//! let config = CoordinatorConfig::new("127.0.0.1:0".parse()?, CatalogsConfig::default());
//! let coordinator = Coordinator::start(config, registry.members()).await?;
//! println!("Flight SQL at grpc://{}", coordinator.addr());
//! # Ok(()) }
//! ```

pub mod access;
pub mod auth;
pub mod engine;
pub mod flight_sql;
pub mod planner;
pub mod queries;
pub mod query;
pub mod scheduler;
pub mod surface;
pub mod system;

use std::net::SocketAddr;
use std::sync::Arc;

use arrow_flight::flight_service_server::FlightServiceServer;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::SessionContext;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use weft_common::catalog::{register_catalogs, FILES_SCHEMA};
use weft_common::config::CatalogsConfig;
use weft_common::flight::MAX_MESSAGE_SIZE;
use weft_common::registry::{Members, Registry};
use weft_common::session::{weft_session_config, DEFAULT_TARGET_PARTITIONS};
use weft_common::telemetry::catalog::{self as metric, Role};
use weft_common::telemetry::http::{HttpBinding, HttpServer, Readiness};
use weft_common::telemetry::GaugeSource;
use weft_connectors::Connectors;

pub use engine::{Engine, EngineSettings};

/// How long a stopping coordinator lets running queries finish, by default
/// (`weft-coordinator --drain-timeout`).
pub const DEFAULT_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Coordinator settings (mirrors the `weft-coordinator` flags).
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    pub listen: SocketAddr,
    pub catalogs: CatalogsConfig,
    pub engine: EngineSettings,
    /// Where to serve `/metrics`, `/healthz` and `/readyz`; `None` = no HTTP.
    pub http_listen: Option<SocketAddr>,
    /// The membership registry, asked by `/readyz` whether it answers
    /// (etcd reachable); `None` = only live workers are checked.
    pub registry: Option<Arc<dyn Registry>>,
    /// Client authentication (password file, JWT); default: none.
    pub auth: auth::AuthSettings,
    /// TLS on the Flight SQL endpoint (certificate and key re-read when
    /// they change); with a CA, also mutual TLS towards the workers.
    pub tls: Option<weft_common::tls::TlsSettings>,
}

impl CoordinatorConfig {
    pub fn new(listen: SocketAddr, catalogs: CatalogsConfig) -> Self {
        Self {
            listen,
            catalogs,
            engine: EngineSettings::default(),
            http_listen: None,
            registry: None,
            auth: auth::AuthSettings::default(),
            tls: None,
        }
    }
}

/// Starts coordinators.
#[derive(Debug)]
pub struct Coordinator;

/// A running coordinator.
#[derive(Debug)]
pub struct CoordinatorHandle {
    addr: SocketAddr,
    tls: bool,
    engine: Arc<Engine>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    watcher: JoinHandle<()>,
    /// Renews the task leases of this coordinator's queries.
    leases: JoinHandle<()>,
    http: Option<HttpServer>,
    _gauges: Arc<dyn GaugeSource>,
}

/// Adds Weft's physical optimizer rules: [`planner::broadcast::BroadcastJoins`]
/// right after DataFusion's join selection, whose choice it revises.
fn with_weft_physical_rules(ctx: SessionContext) -> SessionContext {
    let state = ctx.state();
    let mut rules = state.physical_optimizers().to_vec();
    let at = rules
        .iter()
        .position(|r| r.name() == "join_selection")
        .map_or(0, |i| i + 1);
    rules.insert(at, Arc::new(planner::broadcast::BroadcastJoins));
    SessionContext::new_with_state(
        SessionStateBuilder::new_from_existing(state)
            .with_physical_optimizer_rules(rules)
            .build(),
    )
}

impl Coordinator {
    /// Registers the catalogs, binds the listener and serves Flight SQL.
    /// A catalog that fails to register is logged and skipped.
    pub async fn start(
        config: CoordinatorConfig,
        members: watch::Receiver<Members>,
    ) -> anyhow::Result<CoordinatorHandle> {
        let mut session = weft_session_config(DEFAULT_TARGET_PARTITIONS);
        if let Some(default) = config.catalogs.effective_default() {
            session = session
                .with_default_catalog_and_schema(default, FILES_SCHEMA)
                .with_create_default_catalog_and_schema(false);
        }
        let runtime = RuntimeEnvBuilder::new().build_arc()?;
        let ctx = with_weft_physical_rules(SessionContext::new_with_config_rt(session, runtime));
        for e in register_catalogs(&ctx, &config.catalogs).await {
            tracing::error!("{e}; the other catalogs stay available");
        }
        // Whole single-database sub-plans go to the database as one query
        // (after inner joins are grouped by database where that is safe);
        // a small filtered side's join keys filter the other database's scan.
        ctx.add_optimizer_rule(Arc::new(weft_connectors::CatalogJoinGrouping));
        ctx.add_optimizer_rule(Arc::new(weft_connectors::QueryPushdown));
        ctx.add_optimizer_rule(Arc::new(weft_connectors::KeyFilters));
        let (connectors, errors) = Connectors::from_config(&config.catalogs);
        for e in errors.into_iter().chain(connectors.register(&ctx).await) {
            tracing::error!("{e}; the other catalogs stay available");
        }
        let engine = Arc::new(Engine::new(
            ctx,
            members.clone(),
            config.engine.clone(),
            connectors.codec(),
        ));
        if engine.ctx.catalog(system::SYSTEM_CATALOG).is_some() {
            tracing::warn!(
                "a catalog named \"{}\" is configured; the system tables (system.runtime.*) are not available",
                system::SYSTEM_CATALOG
            );
        } else {
            engine.ctx.register_catalog(
                system::SYSTEM_CATALOG,
                Arc::new(system::SystemCatalog::new(Arc::downgrade(&engine))),
            );
        }

        let authenticator = Arc::new(
            auth::Authenticator::new(&config.auth, config.engine.cluster_secret.as_deref())
                .map_err(anyhow::Error::msg)?,
        );
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
        // Bound before serving anything, so a clash stops the start cleanly.
        let http = match config.http_listen {
            Some(listen) => Some(HttpBinding::bind(listen).await?),
            None => None,
        };
        let addr = listener.local_addr()?;
        let service = flight_sql::poll::WithPoll::with_auth(
            flight_sql::WeftFlightSql::new(Arc::clone(&engine)),
            authenticator,
        );
        let service = FlightServiceServer::new(service)
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
        let server = match &config.tls {
            Some(tls) => {
                // Clients authenticate with passwords or JWTs, not certificates.
                let server_tls =
                    weft_common::tls::server_config(tls, false).map_err(anyhow::Error::msg)?;
                let incoming = weft_common::tls::incoming(listener, server_tls, "coordinator");
                tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped))
            }
            None => tokio::spawn(router.serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                stopped,
            )),
        };
        let watcher = tokio::spawn(watch_membership(Arc::clone(&engine), members));
        let leases = tokio::spawn(renew_task_leases(Arc::downgrade(&engine)));
        tracing::info!(%addr, "coordinator serving Flight SQL");
        // Metrics are recorded only where they are served: without an HTTP
        // endpoint no recorder is installed and recording costs nothing.
        let gauges: Arc<dyn GaugeSource> = Arc::new(CoordinatorGauges {
            engine: Arc::downgrade(&engine),
        });
        if config.http_listen.is_some() {
            weft_common::telemetry::register_role(Role::Coordinator);
            weft_common::telemetry::add_gauge_source(&gauges);
            // Retries are rare: exported at zero from the start.
            for outcome in crate::query::attempt::RETRY_OUTCOMES {
                metrics::counter!(
                    weft_common::telemetry::catalog::QUERY_RETRIES.name,
                    "outcome" => outcome
                )
                .increment(0);
            }
        }
        let http = match http {
            Some(binding) => {
                let readiness = Arc::new(CoordinatorReadiness {
                    engine: Arc::downgrade(&engine),
                    registry: config.registry.clone(),
                });
                let http = binding.serve(readiness)?;
                tracing::info!(url = %http.url(), "coordinator serving /metrics, /healthz, /readyz");
                Some(http)
            }
            None => None,
        };
        Ok(CoordinatorHandle {
            addr,
            tls: config.tls.is_some(),
            engine,
            stop: Some(stop_tx),
            server: Some(server),
            watcher,
            leases,
            http,
            _gauges: gauges,
        })
    }
}

/// Gauges of one coordinator, computed when scraped.
#[derive(Debug)]
struct CoordinatorGauges {
    engine: std::sync::Weak<Engine>,
}

impl GaugeSource for CoordinatorGauges {
    fn gauges(&self, out: &mut Vec<(&'static str, f64)>) {
        let Some(engine) = self.engine.upgrade() else {
            return;
        };
        let (mut running, mut queued, mut slots_used) = (0usize, 0usize, 0usize);
        for q in engine.queries.active() {
            match q.state() {
                queries::QueryState::Queued => queued += 1,
                _ => running += 1,
            }
            if let Some(run) = q.run_info() {
                slots_used += run.stages.iter().map(Vec::len).sum::<usize>();
            }
        }
        let members = engine.members.borrow().clone();
        out.push((metric::QUERIES_RUNNING.name, running as f64));
        out.push((metric::QUERIES_QUEUED.name, queued as f64));
        out.push((metric::WORKERS_LIVE.name, members.len() as f64));
        out.push((
            metric::SLOTS_TOTAL.name,
            scheduler::total_slots(&scheduler::schedulable(&members)) as f64,
        ));
        out.push((metric::SLOTS_USED.name, slots_used as f64));
    }
}

/// A coordinator is ready when its registry answers and at least one worker
/// is live.
struct CoordinatorReadiness {
    engine: std::sync::Weak<Engine>,
    registry: Option<Arc<dyn Registry>>,
}

#[async_trait::async_trait]
impl Readiness for CoordinatorReadiness {
    async fn ready(&self) -> Result<(), String> {
        let Some(engine) = self.engine.upgrade() else {
            return Err("the coordinator is stopped".into());
        };
        if engine.is_draining() {
            return Err(
                "the coordinator is shutting down: it refuses new queries and finishes the running ones".into(),
            );
        }
        if let Some(registry) = &self.registry {
            registry.health().await?;
        }
        if engine.members.borrow().is_empty() {
            return Err("no live workers: start weft-worker processes with the same --etcd and --etcd-prefix".into());
        }
        if engine.schedulable_workers().is_empty() {
            return Err(
                "every live worker is draining (shutting down): no new task can be placed".into(),
            );
        }
        Ok(())
    }
}

/// Follows membership changes and periodically reaps abandoned queries.
async fn watch_membership(engine: Arc<Engine>, mut members: watch::Receiver<Members>) {
    let mut reap = tokio::time::interval(std::time::Duration::from_secs(10));
    loop {
        tokio::select! {
            changed = members.changed() => {
                if changed.is_err() {
                    return;
                }
                let current = members.borrow_and_update().clone();
                tracing::info!(workers = current.len(), "membership changed");
                engine.on_membership_change(&current).await;
            }
            _ = reap.tick() => engine.reap_abandoned().await,
        }
    }
}

/// Renews the task leases of the running queries on their workers, four
/// times per lease, so one lost renewal never expires a lease.
async fn renew_task_leases(engine: std::sync::Weak<Engine>) {
    let Some(lease) = engine
        .upgrade()
        .map(|e| e.settings.task_lease)
        .filter(|l| !l.is_zero())
    else {
        return;
    };
    let mut tick = tokio::time::interval(lease / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(engine) = engine.upgrade() else {
            return;
        };
        engine.renew_task_leases(lease / 4).await;
    }
}

impl CoordinatorHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `grpc://host:port` (or `grpc+tls://`) URL for Flight SQL clients.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "grpc+tls" } else { "grpc" };
        format!("{scheme}://{}", self.addr)
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Address of the `/metrics` `/healthz` `/readyz` server, if serving.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(HttpServer::addr)
    }

    /// Graceful stop (SIGTERM): refuse new queries (`Unavailable`, and
    /// `/readyz` not-ready so the Service stops sending clients here), let
    /// the running ones finish and their results be read for up to
    /// `timeout`, then stop.
    pub async fn drain(self, timeout: std::time::Duration) {
        self.engine.start_draining();
        let deadline = tokio::time::Instant::now() + timeout;
        let active = || self.engine.queries.active().len();
        if active() > 0 {
            tracing::info!(
                queries = active(),
                timeout_secs = timeout.as_secs(),
                "draining: waiting for running queries"
            );
        }
        while active() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        if active() > 0 {
            tracing::warn!(
                queries = active(),
                "drain timeout ({}s) passed with queries still running; they are cancelled (raise --drain-timeout)",
                timeout.as_secs()
            );
            for q in self.engine.queries.active() {
                let _ = self.engine.cancel(&q.id, &auth::Identity::open()).await;
            }
        }
        self.shutdown().await;
    }

    /// Stops serving at once (running queries lose their result streams).
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), server).await;
        }
        if let Some(http) = self.http.take() {
            http.shutdown().await;
        }
    }
}

impl Drop for CoordinatorHandle {
    fn drop(&mut self) {
        self.watcher.abort();
        self.leases.abort();
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_rule_revises_datafusions_join_selection() {
        let ctx = with_weft_physical_rules(SessionContext::new());
        let state = ctx.state();
        let names: Vec<&str> = state
            .physical_optimizers()
            .iter()
            .map(|r| r.name())
            .collect();
        let at = names
            .iter()
            .position(|n| *n == "join_selection")
            .expect("DataFusion's join selection");
        assert_eq!(
            names.get(at + 1),
            Some(&"weft_broadcast_joins"),
            "{names:?}"
        );
    }
}
