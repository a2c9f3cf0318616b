//! Query lifecycle (progress: [`crate::query::progress`]).
//!
//! ```text
//!   queued ─► planning ─► running ─► finished
//!                 │        (attempts, see crate::query::attempt)
//!                 │          ├─────► failed      (error in any task; worker lost
//!                 │          │                    after results left)
//!                 └──────────┴─────► cancelled   (CancelFlightInfo, dropped stream)
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use parking_lot::Mutex;
use weft_proto::{TaskLocation, TaskStatus};

/// Lifecycle state of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryState {
    Queued,
    Planning,
    Running,
    Finished,
    Failed(String),
    Cancelled,
}

impl QueryState {
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            QueryState::Finished | QueryState::Failed(_) | QueryState::Cancelled
        )
    }

    pub fn name(&self) -> &'static str {
        match self {
            QueryState::Queued => "queued",
            QueryState::Planning => "planning",
            QueryState::Running => "running",
            QueryState::Finished => "finished",
            QueryState::Failed(_) => "failed",
            QueryState::Cancelled => "cancelled",
        }
    }
}

/// A query known to the coordinator.
#[derive(Debug)]
pub struct Query {
    pub id: String,
    pub sql: String,
    /// Who started it: only they (or an admin) may read, poll, cancel or see it.
    pub identity: crate::auth::Identity,
    pub created: Instant,
    /// When the query reached a terminal state.
    ended: Mutex<Option<Instant>>,
    state: Mutex<QueryState>,
    /// Set once running.
    run: Mutex<Option<Arc<RunInfo>>>,
    endpoints_done: AtomicUsize,
    streams_opened: AtomicUsize,
    /// Resources that live as long as the query runs (exported snapshots).
    held: Mutex<Vec<Arc<dyn std::any::Any + Send + Sync>>>,
    /// Keep the text of every stage when it runs (EXPLAIN ANALYZE).
    pub(crate) describe: std::sync::atomic::AtomicBool,
    /// Per stage: header, task placement and fragment (when `describe`).
    pub(crate) stage_blocks: Mutex<Vec<String>>,
    /// The query's trace span; closed when the query ends.
    pub(crate) span: Mutex<Option<tracing::Span>>,
    /// Final statuses of tasks the workers have forgotten: `(worker id,
    /// address, status)`, returned when the query was released or cancelled.
    pub(crate) ended_tasks: Mutex<Vec<(String, String, TaskStatus)>>,
    /// Cancelled when the query ends, whatever ended it: everything working
    /// for the query (its attempts' supervisor, result pullers) stops.
    pub(crate) token: tokio_util::sync::CancellationToken,
    /// The results behind the output fence (not with `--direct-results`).
    pub(crate) results: Mutex<Option<Arc<crate::query::results::Results>>>,
}

/// Where a running query's tasks are.
#[derive(Debug)]
pub struct RunInfo {
    pub schema: SchemaRef,
    /// Task locations per stage.
    pub stages: Vec<Vec<TaskLocation>>,
    /// Result endpoints: (final task, output partition).
    pub endpoints: Vec<(TaskLocation, u32)>,
    /// Distinct workers `(id, address)` running tasks of the query.
    pub workers: Vec<(String, String)>,
    /// Clients read the endpoints from the workers directly.
    pub direct: bool,
}

impl Query {
    /// Keeps `resources` alive until the query ends.
    /// (A query that already ended drops them at once: `transition` frees
    /// `held` under the state lock, so nothing added later would be freed.)
    pub fn hold(&self, resources: Vec<Arc<dyn std::any::Any + Send + Sync>>) {
        let state = self.state.lock();
        if !state.is_terminal() {
            self.held.lock().extend(resources);
        }
    }

    /// The query's span while it runs (a disabled span once it ended).
    pub fn span(&self) -> tracing::Span {
        self.span.lock().clone().unwrap_or_else(tracing::Span::none)
    }

    pub fn state(&self) -> QueryState {
        self.state.lock().clone()
    }

    /// Time from creation to the end, or until now while it runs.
    pub fn elapsed(&self) -> Duration {
        let end = self.ended.lock().unwrap_or_else(Instant::now);
        end.duration_since(self.created)
    }

    /// Moves to `next` unless the query already ended; returns whether it moved.
    pub fn transition(&self, next: QueryState) -> bool {
        self.transition_as(next, "execution")
    }

    /// [`Query::transition`]; a failure is counted with `error_kind`.
    fn transition_as(&self, next: QueryState, error_kind: &'static str) -> bool {
        let mut s = self.state.lock();
        if s.is_terminal() {
            return false;
        }
        tracing::debug!(query_id = %self.id, from = s.name(), to = next.name(), "query state");
        if next.is_terminal() {
            self.held.lock().clear();
            let now = Instant::now();
            *self.ended.lock() = Some(now);
            let kind = match &next {
                QueryState::Finished => "none",
                QueryState::Cancelled => "cancelled",
                _ => error_kind,
            };
            use weft_common::telemetry::catalog::{QUERIES_FINISHED, QUERY_DURATION};
            metrics::counter!(QUERIES_FINISHED.name, "state" => next.name(), "error_kind" => kind)
                .increment(1);
            metrics::histogram!(QUERY_DURATION.name, "state" => next.name())
                .record(now.duration_since(self.created).as_secs_f64());
            if let Some(span) = self.span.lock().take() {
                span.record("state", next.name());
            }
        }
        let ended = next.is_terminal();
        *s = next;
        if ended {
            self.token.cancel();
        }
        true
    }

    /// Fails the query with `status` (its code picks the error kind);
    /// returns whether it moved.
    pub fn fail(&self, status: &tonic::Status) -> bool {
        self.transition_as(
            QueryState::Failed(status.message().to_string()),
            weft_common::telemetry::error_kind(status.code()),
        )
    }

    pub fn set_running(&self, run: Arc<RunInfo>) {
        *self.run.lock() = Some(run);
        self.transition(QueryState::Running);
    }

    pub(crate) fn run_slot(&self) -> parking_lot::MutexGuard<'_, Option<Arc<RunInfo>>> {
        self.run.lock()
    }

    pub fn run_info(&self) -> Option<Arc<RunInfo>> {
        self.run.lock().clone()
    }

    /// Records that a client started reading an endpoint.
    pub fn stream_opened(&self) {
        self.streams_opened.fetch_add(1, Ordering::SeqCst);
    }

    /// True for a running query nobody has started reading for `timeout`
    /// (a client that went away between GetFlightInfo and DoGet).
    pub fn is_abandoned(&self, timeout: Duration) -> bool {
        self.state() == QueryState::Running
            && self.streams_opened.load(Ordering::SeqCst) == 0
            && self.created.elapsed() > timeout
    }

    /// Records a fully read endpoint; true when it was the last one.
    pub fn endpoint_done(&self) -> bool {
        let total = self.run_info().map(|r| r.endpoints.len()).unwrap_or(0);
        self.endpoints_done.fetch_add(1, Ordering::SeqCst) + 1 >= total
    }

    /// Keeps the final statuses a worker returned when it forgot the
    /// query's tasks, so the counters stay visible after the query.
    pub fn record_ended_tasks(&self, worker: &str, address: &str, tasks: Vec<TaskStatus>) {
        self.ended_tasks.lock().extend(
            tasks
                .into_iter()
                .map(|t| (worker.to_string(), address.to_string(), t)),
        );
    }

    /// Drops the recorded final statuses (tasks of a launch that was
    /// cancelled and placed again: they are not part of the query's result).
    pub fn forget_ended_tasks(&self) {
        self.ended_tasks.lock().clear();
    }

    /// Tasks whose final status a worker returned.
    pub fn ended_task_count(&self) -> usize {
        self.ended_tasks.lock().len()
    }
}

/// All queries of this coordinator; ended queries are forgotten after a while.
#[derive(Debug, Default)]
pub struct QueryManager {
    queries: Mutex<HashMap<String, Arc<Query>>>,
}

/// How long an ended query stays visible (for progress and late cancels).
const KEEP_ENDED: Duration = Duration::from_secs(600);

impl QueryManager {
    pub fn create(&self, sql: &str, identity: crate::auth::Identity) -> Arc<Query> {
        let q = Arc::new(Query {
            id: uuid::Uuid::new_v4().to_string(),
            sql: sql.to_string(),
            identity,
            created: Instant::now(),
            ended: Mutex::new(None),
            state: Mutex::new(QueryState::Queued),
            run: Mutex::new(None),
            endpoints_done: AtomicUsize::new(0),
            streams_opened: AtomicUsize::new(0),
            held: Mutex::new(Vec::new()),
            span: Mutex::new(None),
            describe: std::sync::atomic::AtomicBool::new(false),
            stage_blocks: Mutex::new(Vec::new()),
            ended_tasks: Mutex::new(Vec::new()),
            token: tokio_util::sync::CancellationToken::new(),
            results: Mutex::new(None),
        });
        metrics::counter!(weft_common::telemetry::catalog::QUERIES_STARTED.name).increment(1);
        let mut queries = self.queries.lock();
        queries.retain(|_, q| !(q.state().is_terminal() && q.created.elapsed() > KEEP_ENDED));
        queries.insert(q.id.clone(), Arc::clone(&q));
        q
    }

    pub fn get(&self, id: &str) -> Option<Arc<Query>> {
        self.queries.lock().get(id).cloned()
    }

    /// Every query still remembered (ended ones for 10 minutes).
    pub fn all(&self) -> Vec<Arc<Query>> {
        self.queries.lock().values().cloned().collect()
    }

    /// Queries not yet ended.
    pub fn active(&self) -> Vec<Arc<Query>> {
        self.queries
            .lock()
            .values()
            .filter(|q| !q.state().is_terminal())
            .cloned()
            .collect()
    }
}
