//! The coordinator's query engine: admit, plan, cut, cancel; launching,
//! retrying and holding results back are the query's own ([`crate::query`]).
//! EXPLAIN and EXPLAIN ANALYZE are answered in [`explain`].

mod explain;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::Identity;
use arrow_flight::FlightData;
use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::physical_plan::ExecutionPlanProperties;
use datafusion::prelude::SessionContext;
use futures::Stream;
use tokio::sync::watch;
use tonic::Status;
use tracing::Instrument;
use weft_common::codec::WeftCodec;
use weft_common::flight::{datafusion_to_status, ClientPool};
use weft_common::registry::{Members, WorkerInfo};

use crate::planner::local_leaves::materialize_local_leaves;
use crate::planner::stages::cut_stages;
use crate::queries::{Query, QueryManager, QueryState, RunInfo};
use crate::query::admission::Admission;
use crate::query::attempt::Attempts;
use crate::query::results::{Event, Fence, Results};
use crate::scheduler::{self, total_slots, ScheduleError};

/// Planning and execution settings of the coordinator.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Partitions per stage; `None` = the cluster's total slots.
    pub target_partitions: Option<usize>,
    /// Upper bound on tasks per stage; `None` = the cluster's total slots.
    pub max_tasks_per_stage: Option<usize>,
    /// IPC compression between nodes: "", "lz4" or "zstd".
    pub compression: String,
    /// A running query whose results nobody starts reading within this time
    /// is cancelled, so an abandoned GetFlightInfo does not hold workers.
    pub result_timeout: std::time::Duration,
    /// Result endpoints point at the workers (clients read them directly)
    /// instead of at the coordinator.
    pub direct_results: bool,
    /// Queries running at once (planning or running); more wait in state
    /// `queued`, first come first served. `None` = no limit.
    pub max_running_queries: Option<usize>,
    /// Queries waiting at once; one more is refused at once.
    pub max_queued_queries: usize,
    /// How long a query may wait in the queue before it fails.
    pub queue_timeout: std::time::Duration,
    /// Signs calls to workers and direct-results tickets
    /// (`--cluster-secret-file`); `None` = unsigned.
    pub cluster_secret: Option<Arc<weft_common::auth::ClusterSecret>>,
    /// TLS towards `https://` workers (the cluster CA and this node's
    /// certificate: mutual TLS); `None` = workers must serve plain HTTP/2.
    pub worker_tls: Option<tonic::transport::ClientTlsConfig>,
    /// `--access-rules-file`: what each user may read; `None` = everything.
    pub access_rules: Option<Arc<crate::access::WatchedRules>>,
    /// `--task-lease`: workers cancel a query's tasks when this coordinator
    /// has not renewed their lease for this long (it died or was cut off).
    /// Zero: no lease.
    pub task_lease: Duration,
    /// `--query-retries`: attempts run again after an infrastructure
    /// failure (a worker lost), while no result has left; 0 = none.
    pub query_retries: u32,
    /// `--retry-buffer`: results held back (bytes) before they stream.
    pub retry_buffer: usize,
    /// `--retry-hold`: how long results are held back before they stream.
    pub retry_hold: Duration,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            target_partitions: None,
            max_tasks_per_stage: None,
            compression: String::new(),
            result_timeout: std::time::Duration::from_secs(300),
            direct_results: false,
            max_running_queries: None,
            max_queued_queries: 1000,
            queue_timeout: std::time::Duration::from_secs(300),
            cluster_secret: None,
            worker_tls: None,
            access_rules: None,
            task_lease: DEFAULT_TASK_LEASE,
            query_retries: DEFAULT_QUERY_RETRIES,
            retry_buffer: DEFAULT_RETRY_BUFFER,
            retry_hold: DEFAULT_RETRY_HOLD,
        }
    }
}

/// Default `--task-lease`.
pub const DEFAULT_TASK_LEASE: Duration = Duration::from_secs(10);

/// Default `--query-retries`.
pub const DEFAULT_QUERY_RETRIES: u32 = 2;
/// Default `--retry-buffer`: 32 MiB.
pub const DEFAULT_RETRY_BUFFER: usize = 32 << 20;
/// Default `--retry-hold`.
pub const DEFAULT_RETRY_HOLD: Duration = Duration::from_secs(1);

/// Shared state of a coordinator.
pub struct Engine {
    pub ctx: SessionContext,
    pub members: watch::Receiver<Members>,
    pub clients: Arc<ClientPool>,
    pub codec: WeftCodec,
    pub queries: QueryManager,
    pub settings: EngineSettings,
    admission: Admission,
    /// Set when the coordinator stops (SIGTERM): new queries are refused.
    draining: std::sync::atomic::AtomicBool,
    /// The membership last seen by [`Engine::on_membership_change`].
    last_members: parking_lot::Mutex<Members>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("settings", &self.settings)
            .field("queries", &self.queries)
            .finish_non_exhaustive()
    }
}

impl From<ScheduleError> for Status {
    fn from(e: ScheduleError) -> Self {
        let message = e.to_string();
        match e {
            ScheduleError::NoWorkers => Status::unavailable(message),
            ScheduleError::Launch { .. }
            | ScheduleError::Draining { .. }
            | ScheduleError::Unreachable { .. } => Status::unavailable(message),
            ScheduleError::Busy { .. } => Status::resource_exhausted(message),
            ScheduleError::Encode { .. } => Status::internal(message),
        }
    }
}

/// Runs a planning step of `query` unless the query is cancelled first:
/// then the step is dropped at once, stopping what it was waiting for
/// (Parquet footers, a source database's schema or `EXPLAIN`, a remote
/// query of a key filter), and nothing after it starts.
async fn unless_cancelled<T>(
    query: &Query,
    step: impl std::future::Future<Output = Result<T, DataFusionError>>,
) -> Result<T, Status> {
    tokio::select! {
        biased;
        _ = query.token.cancelled() => Err(Status::cancelled(format!(
            "query {} was cancelled while it was being planned",
            query.id
        ))),
        result = step => result.map_err(datafusion_to_status),
    }
}

impl Engine {
    pub fn new(
        ctx: SessionContext,
        members: watch::Receiver<Members>,
        settings: EngineSettings,
        connectors: Arc<dyn datafusion_proto::physical_plan::PhysicalExtensionCodec>,
    ) -> Self {
        let clients = Arc::new(
            ClientPool::with_cluster_secret(settings.cluster_secret.clone())
                .with_tls(settings.worker_tls.clone()),
        );
        let last_members = parking_lot::Mutex::new(Arc::clone(&members.borrow()));
        Self {
            ctx,
            codec: WeftCodec::new(Arc::clone(&clients)).with_extension(connectors),
            clients,
            queries: QueryManager::default(),
            admission: Admission::new(&settings),
            draining: std::sync::atomic::AtomicBool::new(false),
            last_members,
            members,
            settings,
        }
    }

    /// Live workers new tasks may be placed on (members that are not
    /// draining).
    pub fn schedulable_workers(&self) -> Vec<WorkerInfo> {
        scheduler::schedulable(&self.members.borrow())
    }

    /// Renews, on every worker, the task leases of the queries that have
    /// tasks there (one call per worker, each bounded by `timeout`).
    pub async fn renew_task_leases(&self, timeout: Duration) {
        let mut by_worker: std::collections::BTreeMap<(String, String), Vec<String>> =
            Default::default();
        for query in self.queries.active() {
            if let Some(run) = query.run_info() {
                for worker in &run.workers {
                    by_worker
                        .entry(worker.clone())
                        .or_default()
                        .push(query.id.clone());
                }
            }
        }
        let calls = by_worker.into_iter().map(|((id, address), query_ids)| {
            let clients = Arc::clone(&self.clients);
            async move {
                let renew = clients.action(
                    &address,
                    weft_common::flight::actions::RENEW_LEASES,
                    weft_proto::QueryList { query_ids },
                );
                match tokio::time::timeout(timeout, renew).await {
                    Ok(Ok(reply)) => {
                        // Queries the worker holds nothing of (their tasks
                        // there ended, or it restarted): nothing to renew.
                        if let Ok(unknown) =
                            <weft_proto::QueryList as prost::Message>::decode(reply)
                        {
                            if !unknown.query_ids.is_empty() {
                                tracing::debug!(
                                    worker = %id,
                                    queries = ?unknown.query_ids,
                                    "the worker holds no task lease of these queries"
                                );
                            }
                        }
                    }
                    Ok(Err(e)) => tracing::debug!(
                        worker = %id,
                        "renewing task leases failed: {}",
                        e.message()
                    ),
                    Err(_) => tracing::debug!(
                        worker = %id,
                        "renewing task leases timed out after {timeout:?}"
                    ),
                }
            }
        });
        futures::future::join_all(calls).await;
    }

    /// Refuse new queries from now on (graceful stop); running ones go on.
    pub fn start_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A session for one query of `identity`, sized for the current cluster
    /// (its slots and its workers' memory), seeing the catalogs as the
    /// access rules let `identity` see them.
    fn session_for(&self, identity: &Identity) -> SessionContext {
        let workers = self.schedulable_workers();
        let slots = total_slots(&workers).max(1);
        let state = self.ctx.state();
        let mut config = state.config().clone();
        let partitions = self.settings.target_partitions.unwrap_or(slots).max(1);
        config.options_mut().execution.target_partitions = partitions;
        config.options_mut().extensions.insert(identity.clone());
        config
            .options_mut()
            .extensions
            .insert(crate::planner::broadcast::WorkerMemory::of(&workers));
        let state = SessionStateBuilder::new_from_existing(state)
            .with_config(config)
            .with_catalog_list(self.catalogs_for(identity))
            .build();
        SessionContext::new_with_state(state)
    }

    /// The catalogs `identity` may see: all of them without access rules,
    /// else filtered, masked and row-filtered by the rules as they are now.
    pub fn catalogs_for(
        &self,
        identity: &Identity,
    ) -> Arc<dyn datafusion::catalog::CatalogProviderList> {
        let all = Arc::clone(self.ctx.state().catalog_list());
        match &self.settings.access_rules {
            None => all,
            Some(rules) => Arc::new(crate::access::SecuredCatalogList::new(
                all,
                rules.get(),
                &identity.user,
            )),
        }
    }

    /// Plans `sql` into a physical plan with the cluster-sized session.
    pub async fn plan(
        &self,
        sql: &str,
        identity: &Identity,
    ) -> Result<
        (
            SessionContext,
            Arc<dyn datafusion::physical_plan::ExecutionPlan>,
        ),
        DataFusionError,
    > {
        let ctx = self.session_for(identity);
        let logical = ctx.state().create_logical_plan(sql).await?;
        crate::surface::check_read_only(&logical)?;
        match &logical {
            datafusion::logical_expr::LogicalPlan::Explain(explain) => {
                let plan = self.explain(&ctx, explain).await?;
                return Ok((ctx, plan));
            }
            datafusion::logical_expr::LogicalPlan::Analyze(analyze) => {
                let plan = Box::pin(self.explain_analyze(sql, analyze, identity)).await?;
                return Ok((ctx, plan));
            }
            _ => {}
        }
        let df = ctx.execute_logical_plan(logical).await?;
        let plan = df.create_physical_plan().await?;
        let plan = crate::planner::balance::balance_parquet_scans(plan, &ctx.runtime_env())
            .instrument(tracing::info_span!("footer_reads"))
            .await?;
        Ok((ctx, plan))
    }

    /// The schema `sql` will return, without running anything (a statement
    /// the read-only surface refuses is refused here already).
    pub async fn result_schema(
        &self,
        sql: &str,
        identity: &Identity,
    ) -> Result<arrow::datatypes::SchemaRef, DataFusionError> {
        let state = self.session_for(identity).state();
        let logical = state.create_logical_plan(sql).await?;
        crate::surface::check_read_only(&logical)?;
        if matches!(logical, datafusion::logical_expr::LogicalPlan::Statement(_)) {
            return Ok(Arc::new(logical.schema().as_arrow().clone()));
        }
        let physical = state.create_physical_plan(&logical).await?;
        Ok(plain_string_output(physical)?.schema())
    }

    /// Plans and starts a query of `identity`; its results are read with
    /// [`Engine::stream`].
    pub async fn start_query(&self, sql: &str, identity: &Identity) -> Result<Arc<Query>, Status> {
        self.start_query_with(sql, identity, false).await
    }

    /// The query `query_id` if `identity` may see it; another user's query
    /// is "unknown", exactly like one that does not exist.
    pub fn query_for(&self, query_id: &str, identity: &Identity) -> Result<Arc<Query>, Status> {
        self.queries
            .get(query_id)
            .filter(|q| identity.may_access(&q.identity.user))
            .ok_or_else(|| Status::not_found(format!("query {query_id} is unknown or expired")))
    }

    /// [`Engine::start_query`]; `describe` keeps the text of every stage
    /// (for EXPLAIN ANALYZE).
    async fn start_query_with(
        &self,
        sql: &str,
        identity: &Identity,
        describe: bool,
    ) -> Result<Arc<Query>, Status> {
        if self.is_draining() {
            return Err(Status::unavailable(
                "weft: this coordinator is shutting down and accepts no new queries; retry, and the service sends you to another coordinator",
            ));
        }
        let query = self.queries.create(sql, identity.clone());
        query
            .describe
            .store(describe, std::sync::atomic::Ordering::SeqCst);
        let span = tracing::info_span!(
            "query",
            query_id = %query.id,
            state = tracing::field::Empty
        );
        *query.span.lock() = Some(span.clone());
        self.start(query).instrument(span).await
    }

    async fn start(&self, query: Arc<Query>) -> Result<Arc<Query>, Status> {
        tracing::debug!(query_id = %query.id, sql = %query.sql, "query received");
        // A caller that goes away while the query is queued or planned
        // (dropped GetFlightInfo) leaves it cancelled, not stuck.
        let mut guard = StartGuard {
            query: Some(Arc::clone(&query)),
            clients: Arc::clone(&self.clients),
        };
        // The query an EXPLAIN ANALYZE runs is admitted with it (waiting for
        // a second permit could wait for itself).
        let admitted = if query.describe.load(std::sync::atomic::Ordering::SeqCst) {
            Ok(())
        } else {
            self.admission
                .admit(&query)
                .instrument(tracing::info_span!("admission"))
                .await
        };
        if let Err(status) = admitted {
            guard.disarm();
            query.fail(&status);
            return Err(status);
        }
        metrics::histogram!(weft_common::telemetry::catalog::QUERY_QUEUE_WAIT.name)
            .record(query.created.elapsed().as_secs_f64());
        let planning = std::time::Instant::now();
        if !query.transition(QueryState::Planning) {
            guard.disarm();
            return Err(Status::cancelled(format!(
                "query {} was cancelled before it started",
                query.id
            )));
        }
        let result = self.run(&query).await;
        guard.disarm();
        match result {
            Ok(()) => {
                metrics::histogram!(weft_common::telemetry::catalog::QUERY_PLANNING.name)
                    .record(planning.elapsed().as_secs_f64());
                Ok(query)
            }
            Err(status) => {
                query.fail(&status);
                if let Some(run) = query.run_info() {
                    scheduler::notify_workers(&self.clients, &run.workers, &query, true).await;
                }
                Err(status)
            }
        }
    }

    async fn run(&self, query: &Arc<Query>) -> Result<(), Status> {
        let workers = self.schedulable_workers();
        if workers.is_empty() {
            return Err(ScheduleError::NoWorkers.into());
        }
        let (ctx, plan) = unless_cancelled(
            query,
            self.plan(&query.sql, &query.identity)
                .instrument(tracing::info_span!("planning")),
        )
        .await?;
        // Exported snapshots must stay open until every split has started.
        query.hold(weft_connectors::keep_alives(&plan));
        let plan = unless_cancelled(
            query,
            materialize_local_leaves(plan, ctx.task_ctx(), &self.codec),
        )
        .await?;
        let plan = plain_string_output(plan).map_err(datafusion_to_status)?;
        let schema = plan.schema();
        let max_tasks = self
            .settings
            .max_tasks_per_stage
            .unwrap_or_else(|| total_slots(&workers))
            .max(1);
        let graph = tracing::info_span!("stage_cutting")
            .in_scope(|| cut_stages(plan, &query.id, max_tasks, &self.clients))
            .map_err(datafusion_to_status)?;
        let attempts = Attempts {
            clients: Arc::clone(&self.clients),
            codec: self.codec.clone(),
            members: self.members.clone(),
            settings: self.settings.clone(),
            query: Arc::clone(query),
            graph: Arc::new(graph),
            config: ctx.state().config().clone(),
        };
        // A draining or unreachable worker found at launch is stepped
        // around there (nothing has reached the client yet).
        let mut excluded = Vec::new();
        let launched = attempts.launch(0, &mut excluded).await?;
        let graph = Arc::clone(&attempts.graph);
        let describe = query.describe.load(std::sync::atomic::Ordering::SeqCst);
        if describe {
            *query.stage_blocks.lock() =
                crate::planner::explain::stage_blocks(&graph, &launched.placement, false);
        }
        {
            use weft_common::telemetry::catalog::{STAGES_LAUNCHED, TASKS_LAUNCHED};
            metrics::counter!(STAGES_LAUNCHED.name).increment(graph.stages.len() as u64);
            metrics::counter!(TASKS_LAUNCHED.name)
                .increment(graph.stages.iter().map(|s| s.tasks as u64).sum());
        }
        let endpoints = launched.endpoints(&graph);
        debug_assert_eq!(
            graph
                .final_stage()
                .root
                .output_partitioning()
                .partition_count(),
            endpoints.len()
        );
        // EXPLAIN ANALYZE reads its query through the coordinator.
        let direct = self.settings.direct_results && !describe;
        let endpoint_count = endpoints.len();
        query.set_running(Arc::new(RunInfo {
            schema,
            stages: launched.locations.clone(),
            endpoints,
            workers: launched.workers.clone(),
            direct,
        }));
        if direct {
            // Clients read the workers: no fence, so no retry once launched.
            tokio::spawn(follow_direct_query(
                Arc::clone(&self.clients),
                Arc::clone(query),
                self.settings.result_timeout,
            ));
        } else {
            let fence = Fence {
                enabled: self.settings.query_retries > 0 && self.settings.retry_buffer > 0,
                buffer: self.settings.retry_buffer,
                hold: self.settings.retry_hold,
            };
            let (results, events) = Results::new(endpoint_count, launched.attempt, fence);
            let results = Arc::new(results);
            *query.results.lock() = Some(Arc::clone(&results));
            tokio::spawn(
                attempts
                    .supervise(launched, results, events, excluded)
                    .instrument(query.span()),
            );
        }
        tracing::info!(
            query_id = %query.id,
            stages = graph.stages.len(),
            tasks = graph.stages.iter().map(|s| s.tasks).sum::<usize>(),
            "query running"
        );
        Ok(())
    }

    /// Streams result endpoint `endpoint` of a query from its results
    /// behind the output fence ([`crate::query::results`]): the worker's
    /// Flight data, unchanged, once it can no longer be taken back. Ends the
    /// query when the last endpoint is read; cancels it when the client
    /// drops the stream early.
    pub async fn stream(
        &self,
        query_id: &str,
        endpoint: u32,
        identity: &Identity,
    ) -> Result<Pin<Box<dyn Stream<Item = Result<FlightData, Status>> + Send + 'static>>, Status>
    {
        let query = self.query_for(query_id, identity)?;
        match query.state() {
            QueryState::Failed(m) => {
                return Err(Status::aborted(format!("query {query_id} failed: {m}")))
            }
            QueryState::Cancelled => {
                return Err(Status::cancelled(format!("query {query_id} was cancelled")))
            }
            _ => {}
        }
        let results = query.results.lock().clone().ok_or_else(|| {
            if query.run_info().is_some_and(|r| r.direct) {
                Status::failed_precondition(format!(
                    "query {query_id}'s results are read from the workers (--direct-results): use the endpoints of its FlightInfo"
                ))
            } else {
                Status::failed_precondition(format!("query {query_id} is not running yet"))
            }
        })?;
        let endpoint = endpoint as usize;
        results
            .take(endpoint)
            .map_err(|s| Status::new(s.code(), format!("query {query_id}: {}", s.message())))?;
        let span = tracing::info_span!(
            parent: &query.span(),
            "result_stream",
            query_id = %query_id,
            endpoint,
        );
        query.stream_opened();
        let guard = StreamGuard {
            clients: Arc::clone(&self.clients),
            query: Arc::clone(&query),
            finished: false,
        };
        let sent = ResultCounters::new(span);
        let stream = futures::stream::unfold(
            (results, guard, sent),
            move |(results, mut guard, sent)| async move {
                if guard.finished {
                    return None;
                }
                match results.next(endpoint).await {
                    Some(Ok(data)) => {
                        sent.count(&data);
                        Some((Ok(data), (results, guard, sent)))
                    }
                    Some(Err(status)) => {
                        // The supervisor failed (or cancelled) the query already.
                        guard.finished = true;
                        Some((Err(status), (results, guard, sent)))
                    }
                    None => {
                        guard.complete();
                        None
                    }
                }
            },
        );
        Ok(Box::pin(stream))
    }

    /// Cancels a query on every worker. Returns false if it had already ended.
    pub async fn cancel(&self, query_id: &str, identity: &Identity) -> Result<bool, Status> {
        let query = self.query_for(query_id, identity)?;
        let moved = query.transition(QueryState::Cancelled);
        if let Some(run) = query.run_info() {
            scheduler::notify_workers(&self.clients, &run.workers, &query, true).await;
        }
        if moved {
            tracing::info!(query_id, "query cancelled");
        }
        Ok(moved)
    }

    /// Cancels running queries whose results nobody started reading in time.
    pub async fn reap_abandoned(&self) {
        for q in self.queries.active() {
            if q.is_abandoned(self.settings.result_timeout) {
                tracing::warn!(query_id = %q.id, "no client read the results within {:?}; cancelling", self.settings.result_timeout);
                let _ = self.cancel(&q.id, &Identity::open()).await;
            }
        }
    }

    /// Fails running queries that used a worker which left the membership,
    /// or which registered again under a new epoch (it lost its etcd lease
    /// while alive and dropped the earlier epoch's tasks).
    pub async fn on_membership_change(&self, members: &Members) {
        let previous = std::mem::replace(&mut *self.last_members.lock(), Arc::clone(members));
        let epochs: HashMap<&str, u64> = members.iter().map(|w| (w.id.as_str(), w.epoch)).collect();
        let mut lost: HashMap<&str, String> = HashMap::new();
        for before in previous.iter() {
            match epochs.get(before.id.as_str()) {
                None if before.draining => {
                    tracing::info!(worker = %before.id, "worker left after draining");
                }
                None => {
                    metrics::counter!(weft_common::telemetry::catalog::WORKERS_LOST.name)
                        .increment(1);
                    tracing::warn!(worker = %before.id, address = %before.address, "worker lost: it left without draining (died or its lease expired)");
                }
                Some(&epoch) if epoch != before.epoch => {
                    metrics::counter!(weft_common::telemetry::catalog::WORKERS_LOST.name)
                        .increment(1);
                    tracing::warn!(worker = %before.id, address = %before.address, epoch, "worker registered again as epoch {epoch} after losing its lease: its tasks of epoch {} are lost", before.epoch);
                    lost.insert(
                        &before.id,
                        format!("lost its etcd lease and registered again as epoch {epoch}, dropping its tasks"),
                    );
                }
                Some(_) => {}
            }
        }
        for q in self.queries.active() {
            let Some(run) = q.run_info() else { continue };
            if let Some((id, address, what)) = run.workers.iter().find_map(|(id, address)| {
                let what = match lost.get(id.as_str()) {
                    Some(what) => what.clone(),
                    None if !epochs.contains_key(id.as_str()) => {
                        "left the cluster (lease expired or shut down)".to_string()
                    }
                    None => return None,
                };
                Some((id, address, what))
            }) {
                let message = format!(
                    "worker {id} at {address} {what} while running query {}",
                    q.id
                );
                // The query's supervisor runs it again without the worker,
                // or fails it if results had left already.
                if let Some(results) = q.results.lock().clone() {
                    results.report(Event::Failed {
                        attempt: results.attempt(),
                        status: Status::unavailable(message),
                        suspect: Some(id.clone()),
                    });
                    continue;
                }
                // Still launching: a launch that cannot reach the worker
                // places the query again without it.
                if q.state() == QueryState::Planning {
                    continue;
                }
                if q.fail(&Status::unavailable(message.clone())) {
                    tracing::warn!("{message}");
                    scheduler::notify_workers(&self.clients, &run.workers, &q, true).await;
                }
            }
        }
    }
}

/// Follows a query whose clients read the results from the workers: it
/// ends when every result endpoint has been read to its end, fails when a
/// task fails, and is cancelled when its results stop moving for
/// `timeout` (a client that went away).
async fn follow_direct_query(clients: Arc<ClientPool>, query: Arc<Query>, timeout: Duration) {
    let Some(run) = query.run_info() else { return };
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut opened = false;
    let mut last = (0, 0, 0);
    let mut last_change = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        if query.state().is_terminal() {
            return;
        }
        let progress = query.progress(&clients).await;
        let (ended, cancel) = if let Some(error) = progress.error {
            (query.transition(QueryState::Failed(error)), true)
        } else {
            let last_stage = progress.stages.last().cloned().unwrap_or_default();
            if last_stage.outputs_opened > 0 && !opened {
                opened = true;
                query.stream_opened();
            }
            let now = (
                last_stage.outputs_opened,
                last_stage.outputs_read,
                progress.stages.iter().map(|s| s.rows_out).sum::<u64>(),
            );
            if now != last {
                last = now;
                last_change = tokio::time::Instant::now();
            }
            if last_stage.outputs_read >= run.endpoints.len() as u64 {
                (query.transition(QueryState::Finished), false)
            } else if opened && last_change.elapsed() > timeout {
                tracing::warn!(query_id = %query.id, "results stopped moving for {timeout:?}; cancelling");
                (query.transition(QueryState::Cancelled), true)
            } else {
                (false, false)
            }
        };
        if ended {
            scheduler::notify_workers(&clients, &run.workers, &query, cancel).await;
            return;
        }
    }
}

/// Cancels a query whose start was abandoned (the future was dropped while
/// it was queued, planned or launched), including tasks already launched;
/// disarmed once the start finished either way.
struct StartGuard {
    query: Option<Arc<Query>>,
    clients: Arc<ClientPool>,
}

impl StartGuard {
    fn disarm(&mut self) {
        self.query = None;
    }
}

impl Drop for StartGuard {
    fn drop(&mut self) {
        let Some(query) = self.query.take() else {
            return;
        };
        if !query.transition(QueryState::Cancelled) {
            return;
        }
        tracing::info!(query_id = %query.id, "query abandoned before it started");
        if let Some(run) = query.run_info() {
            let clients = Arc::clone(&self.clients);
            // Drop cannot wait: the cancel runs on its own.
            tokio::spawn(async move {
                scheduler::notify_workers(&clients, &run.workers, &query, true).await;
            });
        }
    }
}

/// `weft_coordinator_result_{bytes,rows}_total` of results forwarded to a client.
/// Also holds the `result_stream` span, which ends with the stream.
struct ResultCounters {
    bytes: metrics::Counter,
    rows: metrics::Counter,
    _span: tracing::Span,
}

impl ResultCounters {
    fn new(span: tracing::Span) -> Self {
        use weft_common::telemetry::catalog::{RESULT_BYTES, RESULT_ROWS};
        Self {
            bytes: metrics::counter!(RESULT_BYTES.name),
            rows: metrics::counter!(RESULT_ROWS.name),
            _span: span,
        }
    }

    /// Counts one forwarded Flight message; a record batch's row count is in
    /// its IPC header, so nothing is decoded.
    fn count(&self, data: &FlightData) {
        self.bytes
            .increment((data.data_header.len() + data.data_body.len()) as u64);
        let rows = arrow::ipc::root_as_message(&data.data_header)
            .ok()
            .and_then(|m| m.header_as_record_batch())
            .map(|b| b.length())
            .unwrap_or(0);
        self.rows.increment(rows.max(0) as u64);
    }
}

/// Ends the query when the result stream finishes or is dropped.
struct StreamGuard {
    clients: Arc<ClientPool>,
    query: Arc<Query>,
    finished: bool,
}

impl StreamGuard {
    fn complete(&mut self) {
        self.finished = true;
        if self.query.endpoint_done() && self.query.transition(QueryState::Finished) {
            self.notify(false);
        }
    }

    fn notify(&self, cancel: bool) {
        let Some(run) = self.query.run_info() else {
            return;
        };
        let clients = Arc::clone(&self.clients);
        let query = Arc::clone(&self.query);
        // Cleanup must outlive the dropped stream, so it is detached on purpose.
        tokio::spawn(async move {
            scheduler::notify_workers(&clients, &run.workers, &query, cancel).await;
        });
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.finished = true;
            if self.query.transition(QueryState::Cancelled) {
                tracing::info!(query_id = %self.query.id, "result stream dropped by the client; cancelling");
                self.notify(true);
            }
        }
    }
}

/// `schema` with the types results are delivered in: `Utf8View` as `Utf8`,
/// `BinaryView` as `Binary` (see [`plain_string_output`]).
pub fn delivered_schema(schema: &arrow::datatypes::SchemaRef) -> arrow::datatypes::SchemaRef {
    use arrow::datatypes::{DataType, Field, Schema};
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Utf8View => f.as_ref().clone().with_data_type(DataType::Utf8),
            DataType::BinaryView => f.as_ref().clone().with_data_type(DataType::Binary),
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// Results leave Weft with `Utf8` / `Binary` instead of view types, which many
/// Flight SQL clients (JDBC among them) do not read; view types stay inside.
pub fn plain_string_output(
    plan: Arc<dyn datafusion::physical_plan::ExecutionPlan>,
) -> Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>, DataFusionError> {
    use arrow::datatypes::DataType;
    use datafusion::physical_expr::expressions::{CastExpr, Column};
    use datafusion::physical_plan::projection::ProjectionExec;
    let schema = plan.schema();
    if !schema
        .fields()
        .iter()
        .any(|f| matches!(f.data_type(), DataType::Utf8View | DataType::BinaryView))
    {
        return Ok(plan);
    }
    let exprs: Vec<(Arc<dyn datafusion::physical_expr::PhysicalExpr>, String)> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let col: Arc<dyn datafusion::physical_expr::PhysicalExpr> =
                Arc::new(Column::new(f.name(), i));
            let expr: Arc<dyn datafusion::physical_expr::PhysicalExpr> = match f.data_type() {
                DataType::Utf8View => Arc::new(CastExpr::new(col, DataType::Utf8, None)),
                DataType::BinaryView => Arc::new(CastExpr::new(col, DataType::Binary, None)),
                _ => col,
            };
            (expr, f.name().clone())
        })
        .collect();
    Ok(Arc::new(ProjectionExec::try_new(exprs, plan)?))
}
