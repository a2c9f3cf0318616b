//! Running tasks and their output buffers.
//!
//! A task is a plan fragment; each of its output partitions is pumped by its
//! own tokio task into an output slot that downstream consumers read with
//! `DoGet`:
//! - exclusive slots hold a bounded channel read by exactly one consumer, so a
//!   slow consumer slows the producer (backpressure);
//! - replay slots keep every batch so any number of consumers can read the
//!   whole output (a broadcast join's small build side).
//!
//! A task lives until the coordinator cancels or releases its query.

use crate::fencing::Fencing;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use arrow::record_batch::RecordBatch;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use datafusion::prelude::SessionContext;
use datafusion_proto::bytes::physical_plan_from_bytes_with_extension_codec;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use weft_common::codec::WeftCodec;
use weft_common::exchange::{LocalExchange, LocalOpenError, LocalOutputs};
use weft_common::session::{apply_session_options, weft_session_config};
use weft_proto::{LaunchTask, OutputMode, TaskId, TaskState, TaskStatus};

/// Batches buffered per exclusive output before the producer waits.
const EXCLUSIVE_BUFFER_BATCHES: usize = 4;

/// Errors of the task manager, mapped to gRPC statuses by the service.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("worker {worker} is draining (shutting down) and accepts no new tasks")]
    ShuttingDown { worker: String },
    #[error("task {task} already exists on worker {worker}")]
    Duplicate { task: TaskId, worker: String },
    #[error(
        "task {task} is not running on worker {worker} (its query was cancelled or has finished)"
    )]
    NotFound { task: TaskId, worker: String },
    #[error("task {task} has {count} outputs, partition {partition} does not exist")]
    NoSuchOutput {
        task: TaskId,
        partition: u32,
        count: usize,
    },
    #[error("output {partition} of task {task} is already being read by another consumer")]
    AlreadyConsumed { task: TaskId, partition: u32 },
    #[error("worker {worker} is stopped")]
    Killed { worker: String },
    #[error("weft: worker {worker} already runs tasks of {limit} queries (its --max-queries); task {task} of a further query was not launched: the coordinator launches the query again when a query ends")]
    Busy {
        task: TaskId,
        worker: String,
        limit: usize,
    },
    #[error("weft: task {task} belongs to an attempt of its query that was cancelled on worker {worker}")]
    Cancelled { task: TaskId, worker: String },
    /// The task's attempt was dropped when the worker lost its etcd lease.
    #[error("{0}")]
    Lost(weft_common::flight::WorkerLost),
    #[error("task {task}: {source}")]
    Plan {
        task: TaskId,
        source: DataFusionError,
    },
}

/// (query, attempt, stage, task): tasks of different attempts of one query
/// never stand for each other.
type Key = (String, u32, u32, u32);

fn key(t: &TaskId) -> Key {
    (t.query_id.clone(), t.attempt, t.stage_id, t.task_index)
}

/// Everything the worker knows about its tasks.
pub struct TaskManager {
    worker_id: String,
    /// Given to every task so readers of this worker's outputs skip Flight.
    local: LocalExchange,
    tasks: Mutex<HashMap<Key, Arc<RunningTask>>>,
    runtime: Arc<RuntimeEnv>,
    base: SessionContext,
    codec: WeftCodec,
    accepting: AtomicBool,
    killed: AtomicBool,
    launched: AtomicU64,
    /// `(URL prefix, catalog)` of the files catalogs, to attribute scans.
    file_catalogs: Mutex<Vec<(String, String)>>,
    /// Wrap every operator of a decoded fragment in a trace span
    /// (`--trace-operators`, datafusion-tracing).
    operator_spans: AtomicBool,
    /// Cancelled attempts and task leases.
    fencing: Fencing,
    /// Queries whose tasks may run here at once (`--max-queries`); 0 = no
    /// limit.
    max_queries: AtomicUsize,
}

impl std::fmt::Debug for TaskManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskManager")
            .field("worker_id", &self.worker_id)
            .field("tasks", &self.tasks.lock().len())
            .finish_non_exhaustive()
    }
}

/// One launched task.
#[derive(Debug)]
pub struct RunningTask {
    pub id: TaskId,
    pub plan: Arc<dyn ExecutionPlan>,
    pub compression: String,
    outputs: Vec<Output>,
    producers: Mutex<JoinSet<()>>,
    /// Set per output when its producer reached the end of its stream; a
    /// channel that closes without it was cut short (cancel, shutdown).
    completed: Vec<AtomicBool>,
    pending_outputs: AtomicUsize,
    state: Mutex<(TaskState, String)>,
    rows_out: AtomicU64,
    bytes_out: AtomicU64,
    /// Exclusive outputs taken by a reader, and read to their end.
    outputs_opened: std::sync::atomic::AtomicU32,
    outputs_read: std::sync::atomic::AtomicU32,
    /// The task's trace span, closed when the task ends.
    span: Mutex<Option<tracing::Span>>,
    /// Why the task was dropped, when the worker's registration was lost:
    /// its readers get this error (a [`weft_common::flight::WorkerLost`]).
    lost: Mutex<Option<Arc<DataFusionError>>>,
}

#[derive(Debug)]
enum Output {
    Exclusive(Mutex<Option<mpsc::Receiver<Result<RecordBatch>>>>),
    Replay(Arc<ReplayBuffer>),
}

/// Output kept for any number of readers.
#[derive(Debug)]
pub struct ReplayBuffer {
    state: Mutex<ReplayState>,
    version: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct ReplayState {
    batches: Vec<RecordBatch>,
    /// Shared by every reader, so a lost upstream worker stays
    /// recognisable ([`weft_common::flight::WorkerLost`]).
    end: Option<std::result::Result<(), Arc<DataFusionError>>>,
}

impl ReplayBuffer {
    fn new() -> Self {
        Self {
            state: Mutex::new(ReplayState::default()),
            version: watch::channel(0).0,
        }
    }

    fn push(&self, batch: RecordBatch) {
        self.state.lock().batches.push(batch);
        self.version.send_modify(|v| *v += 1);
    }

    fn finish(&self, end: std::result::Result<(), Arc<DataFusionError>>) {
        self.state.lock().end.get_or_insert(end);
        self.version.send_modify(|v| *v += 1);
    }

    /// A stream of all batches, from the first, as they arrive.
    pub fn reader(
        self: &Arc<Self>,
    ) -> impl futures::Stream<Item = Result<RecordBatch>> + Send + 'static {
        let buffer = Arc::clone(self);
        let rx = self.version.subscribe();
        futures::stream::unfold((buffer, rx, 0usize), |(buffer, mut rx, next)| async move {
            loop {
                rx.borrow_and_update();
                {
                    let state = buffer.state.lock();
                    if let Some(b) = state.batches.get(next) {
                        let b = b.clone();
                        drop(state);
                        return Some((Ok(b), (buffer, rx, next + 1)));
                    }
                    match &state.end {
                        Some(Ok(())) => return None,
                        Some(Err(e)) => {
                            let e = DataFusionError::Shared(Arc::clone(e));
                            drop(state);
                            // Report the error once, then end.
                            let len = usize::MAX;
                            return Some((Err(e), (buffer, rx, len)));
                        }
                        None => {}
                    }
                }
                if next == usize::MAX || rx.changed().await.is_err() {
                    return None;
                }
            }
        })
    }
}

/// A consumer's view of one task output.
enum OutputStream {
    Exclusive(mpsc::Receiver<Result<RecordBatch>>),
    Replay(Arc<ReplayBuffer>),
}

impl std::fmt::Debug for OutputStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OutputStream")
    }
}

impl RunningTask {
    pub fn status(&self) -> TaskStatus {
        let (state, error) = self.state.lock().clone();
        let operators = self.operator_totals();
        TaskStatus {
            compute_nanos: operators.compute_nanos,
            spilled_bytes: operators.spilled_bytes,
            input_rows: operators.input_rows,
            input_bytes: operators.input_bytes,
            task: Some(self.id.clone()),
            state: state as i32,
            error,
            rows_out: self.rows_out.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            outputs_opened: self.outputs_opened.load(Ordering::SeqCst),
            outputs_read: self.outputs_read.load(Ordering::SeqCst),
        }
    }

    /// The fragment's operator metrics, summed over its operators and
    /// partitions (what EXPLAIN ANALYZE shows per stage).
    fn operator_totals(&self) -> OperatorTotals {
        use weft_common::exchange::{StageReaderExec, BYTES_RECEIVED};
        let mut totals = OperatorTotals::default();
        let mut stack: Vec<Arc<dyn ExecutionPlan>> = vec![Arc::clone(&self.plan)];
        while let Some(node) = stack.pop() {
            stack.extend(node.children().into_iter().cloned());
            let Some(m) = node.metrics() else { continue };
            totals.compute_nanos += m.elapsed_compute().unwrap_or(0) as u64;
            totals.spilled_bytes += m.spilled_bytes().unwrap_or(0) as u64;
            if node.downcast_ref::<StageReaderExec>().is_some() {
                totals.input_rows += m.output_rows().unwrap_or(0) as u64;
                totals.input_bytes += m
                    .sum_by_name(BYTES_RECEIVED)
                    .map(|v| v.as_usize() as u64)
                    .unwrap_or(0);
            }
        }
        totals
    }

    /// Records that a reader drained an exclusive output to its end.
    pub fn output_read(&self) {
        self.outputs_read.fetch_add(1, Ordering::SeqCst);
    }

    /// Whether output `partition` was produced to its end.
    pub fn output_completed(&self, partition: usize) -> bool {
        self.completed
            .get(partition)
            .is_some_and(|c| c.load(Ordering::SeqCst))
    }

    fn is_running(&self) -> bool {
        self.state.lock().0 == TaskState::Running
    }

    fn set_state(&self, state: TaskState, error: String) {
        let mut s = self.state.lock();
        if s.0 == TaskState::Running {
            let label = match state {
                TaskState::Finished => "finished",
                TaskState::Failed => "failed",
                _ => "cancelled",
            };
            metrics::counter!(weft_common::telemetry::catalog::TASKS_FINISHED.name, "state" => label)
                .increment(1);
            if let Some(span) = self.span.lock().take() {
                span.record("state", label);
            }
            *s = (state, error);
        }
    }

    /// Adds what the task's scans read and its operators spilled to the
    /// worker's counters (once, when the task is removed): files scans are
    /// DataFusion's own operators, so their rows are known from their metrics.
    fn record_final_metrics(&self, file_catalogs: &[(String, String)]) {
        use datafusion::datasource::physical_plan::FileScanConfig;
        use datafusion::datasource::source::DataSourceExec;
        use weft_common::telemetry::catalog::*;
        let mut spilled = 0usize;
        let mut stack: Vec<Arc<dyn ExecutionPlan>> = vec![Arc::clone(&self.plan)];
        while let Some(node) = stack.pop() {
            stack.extend(node.children().into_iter().cloned());
            let Some(m) = node.metrics() else { continue };
            spilled += m.spilled_bytes().unwrap_or(0);
            let Some(scan) = node
                .downcast_ref::<DataSourceExec>()
                .and_then(|d| d.data_source().downcast_ref::<FileScanConfig>())
            else {
                continue;
            };
            let Some(file) = scan.file_groups.iter().flat_map(|g| g.files()).next() else {
                continue;
            };
            let url = format!(
                "{}{}",
                scan.object_store_url.as_str(),
                file.object_meta.location
            );
            let Some((_, catalog)) = file_catalogs
                .iter()
                .find(|(prefix, _)| url.starts_with(prefix.as_str()))
            else {
                static WARNED: AtomicBool = AtomicBool::new(false);
                if !WARNED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        file = %url,
                        "a file scan matches no files catalog of this worker's catalog file; its rows are not counted in weft_connector_rows_total (warned once)"
                    );
                }
                continue;
            };
            let rows = m.output_rows().unwrap_or(0);
            let bytes = m
                .sum_by_name("bytes_scanned")
                .map(|v| v.as_usize())
                .unwrap_or(0);
            let labels = [("catalog", catalog.clone()), ("kind", "files".to_string())];
            metrics::counter!(CONNECTOR_ROWS.name, &labels).increment(rows as u64);
            metrics::counter!(CONNECTOR_BYTES.name, &labels).increment(bytes as u64);
        }
        metrics::counter!(SPILLED_BYTES.name).increment(spilled as u64);
    }

    fn cancel(&self) {
        self.set_state(TaskState::Cancelled, String::new());
        self.producers.lock().abort_all();
        for o in &self.outputs {
            if let Output::Replay(r) = o {
                r.finish(Err(self.cut_short(format!(
                    "weft: task {} was stopped before finishing (query cancelled or worker stopping)",
                    self.id
                ))));
            }
        }
    }

    /// Stops the task because the worker's registration was lost: its
    /// readers are told the worker is lost, not that the query was
    /// cancelled.
    fn drop_lost(&self, lost: weft_common::flight::WorkerLost) {
        *self.lost.lock() = Some(Arc::new(DataFusionError::External(Box::new(lost))));
        self.cancel();
    }

    /// The error a reader of an output cut short gets: the loss, if the
    /// task was dropped for one, else `message`.
    fn cut_short(&self, message: String) -> Arc<DataFusionError> {
        match &*self.lost.lock() {
            Some(lost) => Arc::clone(lost),
            None => Arc::new(DataFusionError::Execution(message)),
        }
    }
}

#[derive(Debug, Default)]
struct OperatorTotals {
    compute_nanos: u64,
    spilled_bytes: u64,
    input_rows: u64,
    input_bytes: u64,
}

/// This worker's outputs as seen by its own tasks' readers.
struct OwnOutputs {
    worker_id: String,
    manager: Weak<TaskManager>,
}

impl LocalOutputs for OwnOutputs {
    fn open(
        &self,
        task: &TaskId,
        partition: u32,
    ) -> std::result::Result<BoxStream<'static, Result<RecordBatch>>, LocalOpenError> {
        let Some(manager) = self.manager.upgrade() else {
            return Err(LocalOpenError::Failed(format!(
                "weft: worker {} is stopped",
                self.worker_id
            )));
        };
        match manager.output_batches(task, partition) {
            Ok((_, stream)) => {
                use weft_common::telemetry::catalog::*;
                let bytes = metrics::counter!(EXCHANGE_SENT_BYTES.name, "transport" => "local");
                let batches = metrics::counter!(EXCHANGE_SENT_BATCHES.name, "transport" => "local");
                let rows = metrics::counter!(EXCHANGE_SENT_ROWS.name, "transport" => "local");
                Ok(stream
                    .inspect_ok(move |b| {
                        bytes.increment(b.get_array_memory_size() as u64);
                        batches.increment(1);
                        rows.increment(b.num_rows() as u64);
                    })
                    .boxed())
            }
            Err(e @ TaskError::NotFound { .. }) => Err(LocalOpenError::NotFound(e.to_string())),
            Err(e) => Err(LocalOpenError::Failed(e.to_string())),
        }
    }
}

impl TaskManager {
    /// `address` is the Flight address this worker advertises (task
    /// locations name it).
    pub fn new(
        worker_id: String,
        address: String,
        runtime: Arc<RuntimeEnv>,
        codec: WeftCodec,
    ) -> Arc<Self> {
        let base = SessionContext::new_with_config_rt(
            weft_session_config(weft_common::session::DEFAULT_TARGET_PARTITIONS),
            Arc::clone(&runtime),
        );
        Arc::new_cyclic(|me| Self {
            local: LocalExchange::new(
                worker_id.clone(),
                address,
                Arc::new(OwnOutputs {
                    worker_id: worker_id.clone(),
                    manager: Weak::clone(me),
                }),
            ),
            worker_id,
            tasks: Mutex::new(HashMap::new()),
            runtime,
            base,
            codec,
            accepting: AtomicBool::new(true),
            killed: AtomicBool::new(false),
            launched: AtomicU64::new(0),
            file_catalogs: Mutex::new(Vec::new()),
            operator_spans: AtomicBool::new(false),
            fencing: Fencing::default(),
            max_queries: AtomicUsize::new(0),
        })
    }

    /// Names the files catalogs whose scans count in `weft_connector_*`.
    pub fn set_file_catalogs(&self, catalogs: &weft_common::config::CatalogsConfig) {
        let mut prefixes: Vec<(String, String)> = catalogs
            .catalogs
            .iter()
            .filter_map(|(name, c)| match c {
                weft_common::config::CatalogConfig::Files { path, .. } => {
                    Some((file_url_prefix(path), name.clone()))
                }
                _ => None,
            })
            .collect();
        // The longest prefix wins when one catalog's directory holds another's.
        prefixes.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        *self.file_catalogs.lock() = prefixes;
    }

    /// Operator-level spans for deep dives: every operator of every task's
    /// fragment gets a span (children of the task's span) with its metrics.
    pub fn set_operator_spans(&self, on: bool) {
        self.operator_spans.store(on, Ordering::SeqCst);
    }

    /// At most `limit` queries with tasks here at once (`--max-queries`;
    /// 0 = no limit): a launch for a further query is refused as busy, and
    /// its coordinator launches the query again later. Tasks of a query
    /// already here are always accepted (its other stages, a next attempt).
    pub fn set_max_queries(&self, limit: usize) {
        self.max_queries.store(limit, Ordering::SeqCst);
    }

    /// Whether new tasks are accepted (not stopping, not killed).
    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::SeqCst) && !self.killed.load(Ordering::SeqCst)
    }

    pub fn runtime(&self) -> &Arc<RuntimeEnv> {
        &self.runtime
    }

    pub fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::SeqCst);
    }

    /// Simulated death: refuse everything and stop all tasks.
    pub fn kill(&self) {
        self.stop_accepting();
        self.killed.store(true, Ordering::SeqCst);
        for q in self.query_ids() {
            self.cancel_query(&q);
        }
    }

    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Tasks whose producers are still running.
    pub fn running_count(&self) -> usize {
        self.tasks
            .lock()
            .values()
            .filter(|t| t.is_running())
            .count()
    }

    /// Queries with tasks here (what `--max-queries` limits).
    pub fn query_count(&self) -> usize {
        let tasks = self.tasks.lock();
        let queries: HashSet<&str> = tasks.keys().map(|k| k.0.as_str()).collect();
        queries.len()
    }

    /// Tasks launched since the worker started.
    pub fn launched(&self) -> u64 {
        self.launched.load(Ordering::Relaxed)
    }

    pub fn task_count(&self) -> usize {
        self.tasks.lock().len()
    }

    fn task_context(&self, request: &LaunchTask, id: &TaskId) -> Result<Arc<TaskContext>> {
        let mut config = weft_session_config(weft_common::session::DEFAULT_TARGET_PARTITIONS)
            .with_extension(Arc::new(self.local.clone()));
        apply_session_options(&mut config, request.session_options.iter())?;
        let base = self.base.task_ctx();
        Ok(Arc::new(TaskContext::new(
            Some(id.to_string()),
            id.query_id.clone(),
            config,
            base.scalar_functions().clone(),
            base.higher_order_functions().clone(),
            base.aggregate_functions().clone(),
            base.window_functions().clone(),
            Arc::clone(&self.runtime),
        )))
    }

    /// Decodes and starts a task; returns its number of outputs.
    pub fn launch(&self, request: LaunchTask) -> std::result::Result<u32, TaskError> {
        self.launch_in(request, tracing::Span::none())
    }

    /// [`TaskManager::launch`] under `span`: the task's span, which covers
    /// decoding and running it and parents its exchange reads.
    pub fn launch_in(
        &self,
        request: LaunchTask,
        span: tracing::Span,
    ) -> std::result::Result<u32, TaskError> {
        let _entered = span.enter();
        let id = request.task.clone().unwrap_or_default();
        if self.killed.load(Ordering::SeqCst) {
            return Err(TaskError::Killed {
                worker: self.worker_id.clone(),
            });
        }
        if !self.accepting.load(Ordering::SeqCst) {
            return Err(TaskError::ShuttingDown {
                worker: self.worker_id.clone(),
            });
        }
        // Checked again when the task is registered (a cancel may come
        // while it is decoded); here it spares decoding a refused plan.
        if self.fencing.is_fenced(&id.query_id, id.attempt) {
            return Err(TaskError::Cancelled {
                task: id,
                worker: self.worker_id.clone(),
            });
        }
        let plan_err = |source| TaskError::Plan {
            task: id.clone(),
            source,
        };
        let decoding = tracing::info_span!("task_decode", bytes = request.plan.len());
        let decoded = decoding.in_scope(|| {
            let ctx = self.task_context(&request, &id)?;
            let plan =
                physical_plan_from_bytes_with_extension_codec(&request.plan, &ctx, &self.codec)?;
            Ok((ctx, plan))
        });
        let (ctx, mut plan) = decoded.map_err(plan_err)?;
        if self.operator_spans.load(Ordering::SeqCst) {
            let rule = datafusion_tracing::instrument_with_info_spans!(
                options: datafusion_tracing::InstrumentationOptions::builder()
                    .record_metrics(true)
                    .build()
            );
            plan = rule
                .optimize(plan, ctx.session_config().options())
                .map_err(plan_err)?;
        }
        let count = plan.output_partitioning().partition_count();
        let replay = request.output_mode == OutputMode::Replay as i32;

        let mut outputs = Vec::with_capacity(count);
        let mut senders = Vec::with_capacity(count);
        for _ in 0..count {
            if replay {
                let buffer = Arc::new(ReplayBuffer::new());
                senders.push(Sink::Replay(Arc::clone(&buffer)));
                outputs.push(Output::Replay(buffer));
            } else {
                let (tx, rx) = mpsc::channel(EXCLUSIVE_BUFFER_BATCHES);
                senders.push(Sink::Exclusive(tx));
                outputs.push(Output::Exclusive(Mutex::new(Some(rx))));
            }
        }
        let mut streams = Vec::with_capacity(count);
        for i in 0..count {
            streams.push(plan.execute(i, Arc::clone(&ctx)).map_err(plan_err)?);
        }
        let task = Arc::new(RunningTask {
            id: id.clone(),
            plan,
            compression: request.compression.clone(),
            outputs,
            producers: Mutex::new(JoinSet::new()),
            completed: (0..count).map(|_| AtomicBool::new(false)).collect(),
            pending_outputs: AtomicUsize::new(count),
            state: Mutex::new((TaskState::Running, String::new())),
            rows_out: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            outputs_opened: Default::default(),
            outputs_read: Default::default(),
            span: Mutex::new(Some(span.clone())),
            lost: Mutex::new(None),
        });
        {
            let mut tasks = self.tasks.lock();
            // Checked under the task lock: a cancel fences first, then
            // removes tasks under this lock, so a launch either sees the
            // fence or is removed by the cancel.
            if let Some(why) = self.fencing.lost(&id.query_id, id.attempt) {
                tracing::info!(task = %id, "launch refused: its attempt was dropped here ({why})");
                return Err(TaskError::Lost(self.lost(why)));
            }
            if self.fencing.is_fenced(&id.query_id, id.attempt) {
                tracing::info!(task = %id, "launch refused: its attempt was cancelled here");
                return Err(TaskError::Cancelled {
                    task: id,
                    worker: self.worker_id.clone(),
                });
            }
            let limit = self.max_queries.load(Ordering::Relaxed);
            if limit > 0 && !tasks.keys().any(|k| k.0 == id.query_id) {
                let running: HashSet<&str> = tasks.keys().map(|k| k.0.as_str()).collect();
                if running.len() >= limit {
                    tracing::info!(task = %id, limit, "launch refused: --max-queries reached");
                    return Err(TaskError::Busy {
                        task: id,
                        worker: self.worker_id.clone(),
                        limit,
                    });
                }
            }
            if tasks.contains_key(&key(&id)) {
                return Err(TaskError::Duplicate {
                    task: id,
                    worker: self.worker_id.clone(),
                });
            }
            tasks.insert(key(&id), Arc::clone(&task));
            self.fencing.launched(
                &id.query_id,
                std::time::Duration::from_millis(request.lease_ms),
            );
        }
        if count == 0 {
            task.set_state(TaskState::Finished, String::new());
        }
        let advice = memory_advice(&self.worker_id, self.runtime.memory_pool.memory_limit());
        let mut producers = task.producers.lock();
        for (i, (stream, sink)) in streams.into_iter().zip(senders).enumerate() {
            producers.spawn(tracing::Instrument::instrument(
                pump(stream, sink, Arc::downgrade(&task), i, advice.clone()),
                span.clone(),
            ));
        }
        drop(producers);
        self.launched.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(weft_common::telemetry::catalog::WORKER_TASKS_LAUNCHED.name).increment(1);
        tracing::debug!(task = %id, outputs = count, "task launched");
        Ok(count as u32)
    }

    /// Takes the stream of one output for a consumer.
    fn open_output(
        &self,
        id: &TaskId,
        partition: u32,
    ) -> std::result::Result<(Arc<RunningTask>, OutputStream), TaskError> {
        if self.killed.load(Ordering::SeqCst) {
            return Err(TaskError::Killed {
                worker: self.worker_id.clone(),
            });
        }
        let task = self.tasks.lock().get(&key(id)).cloned().ok_or_else(|| {
            if let Some(why) = self.fencing.lost(&id.query_id, id.attempt) {
                TaskError::Lost(self.lost(why))
            } else if self.fencing.is_fenced(&id.query_id, id.attempt) {
                TaskError::Cancelled {
                    task: id.clone(),
                    worker: self.worker_id.clone(),
                }
            } else {
                TaskError::NotFound {
                    task: id.clone(),
                    worker: self.worker_id.clone(),
                }
            }
        })?;
        let stream = match task.outputs.get(partition as usize) {
            None => {
                return Err(TaskError::NoSuchOutput {
                    task: id.clone(),
                    partition,
                    count: task.outputs.len(),
                })
            }
            Some(Output::Replay(r)) => OutputStream::Replay(Arc::clone(r)),
            Some(Output::Exclusive(slot)) => {
                let rx = slot
                    .lock()
                    .take()
                    .ok_or_else(|| TaskError::AlreadyConsumed {
                        task: id.clone(),
                        partition,
                    })?;
                task.outputs_opened.fetch_add(1, Ordering::SeqCst);
                OutputStream::Exclusive(rx)
            }
        };
        Ok((task, stream))
    }

    /// The batches of one output for a consumer (a `DoGet` or a reader on
    /// this worker). An exclusive output whose producer was stopped before
    /// its end ends with an error, so a consumer never mistakes a cut-short
    /// output for a complete one; one read to its end counts as read.
    pub fn output_batches(
        &self,
        id: &TaskId,
        partition: u32,
    ) -> std::result::Result<(Arc<RunningTask>, BoxStream<'static, Result<RecordBatch>>), TaskError>
    {
        let (task, output) = self.open_output(id, partition)?;
        let stream = match output {
            OutputStream::Exclusive(rx) => {
                let task = Arc::clone(&task);
                let partition = partition as usize;
                let worker = self.worker_id.clone();
                let cut_short = futures::stream::once(async move {
                    // The channel closed: either the producer finished or it was stopped.
                    if task.output_completed(partition) {
                        task.output_read();
                        None
                    } else {
                        Some(Err(DataFusionError::Shared(task.cut_short(format!(
                            "weft: task {} on worker {worker} stopped before finishing output {partition} (query cancelled or worker stopping)",
                            task.id
                        )))))
                    }
                })
                .filter_map(futures::future::ready);
                tokio_stream::wrappers::ReceiverStream::new(rx)
                    .chain(cut_short)
                    .boxed()
            }
            OutputStream::Replay(buffer) => buffer.reader().boxed(),
        };
        Ok((task, stream))
    }

    /// Removes the tasks of `query_id` whose attempt is below `below`.
    fn remove_query(&self, query_id: &str, below: u32) -> Vec<Arc<RunningTask>> {
        let removed: Vec<_> = {
            let mut tasks = self.tasks.lock();
            let keys: Vec<_> = tasks
                .keys()
                .filter(|k| k.0 == query_id && (below == u32::MAX || k.1 < below))
                .cloned()
                .collect();
            keys.iter().filter_map(|k| tasks.remove(k)).collect()
        };
        let catalogs = self.file_catalogs.lock().clone();
        for t in &removed {
            t.record_final_metrics(&catalogs);
        }
        removed
    }

    /// Stops every task of a query and frees its buffers; returns the
    /// removed tasks' final statuses. Its attempts are fenced: a late launch
    /// or read of one is refused.
    pub fn cancel_query(&self, query_id: &str) -> Vec<TaskStatus> {
        self.cancel_attempts(query_id, 0)
    }

    /// Stops the tasks of the attempts of `query_id` below `keep_from` (0:
    /// every attempt) and fences those attempts; later attempts go on.
    pub fn cancel_attempts(&self, query_id: &str, keep_from: u32) -> Vec<TaskStatus> {
        let below = self.fencing.fence(query_id, keep_from);
        let statuses: Vec<TaskStatus> = self
            .remove_query(query_id, below)
            .iter()
            .map(|t| {
                t.cancel();
                t.status()
            })
            .collect();
        if !statuses.is_empty() {
            tracing::info!(
                query_id,
                tasks = statuses.len(),
                "query cancelled on this worker"
            );
        }
        statuses
    }

    /// This worker lost `why`, as its readers are told.
    fn lost(&self, why: String) -> weft_common::flight::WorkerLost {
        weft_common::flight::WorkerLost {
            worker_id: self.worker_id.clone(),
            address: self.local.address().to_string(),
            message: why,
        }
    }

    /// The worker lost its etcd lease while alive and registered again as
    /// `epoch`: coordinators count its earlier tasks as lost and run their
    /// queries again, so every task is dropped now (rather than when its
    /// task lease runs out) and its attempt remembered as lost. Returns
    /// how many tasks were dropped.
    pub fn drop_epoch(&self, epoch: u64) -> usize {
        let why = format!(
            "worker {} at {} lost its etcd lease (a partition or a pause) and registered again as epoch {epoch}: its tasks of the earlier epoch were dropped",
            self.worker_id,
            self.local.address()
        );
        let dropped: Vec<Arc<RunningTask>> = {
            let mut tasks = self.tasks.lock();
            for (query_id, attempt, _, _) in tasks.keys() {
                self.fencing.lose(query_id, *attempt, &why);
            }
            tasks.drain().map(|(_, t)| t).collect()
        };
        let catalogs = self.file_catalogs.lock().clone();
        for t in &dropped {
            t.record_final_metrics(&catalogs);
            t.drop_lost(self.lost(why.clone()));
        }
        tracing::warn!(
            worker = %self.worker_id,
            epoch,
            tasks = dropped.len(),
            "registered again after losing the etcd lease: the tasks of the earlier epoch are dropped"
        );
        dropped.len()
    }

    /// Forgets a finished query (same effect as cancel, without logging
    /// or fencing).
    pub fn release_query(&self, query_id: &str) -> Vec<TaskStatus> {
        self.fencing.ended(query_id);
        let removed = self.remove_query(query_id, u32::MAX);
        removed
            .iter()
            .map(|t| {
                t.cancel();
                t.status()
            })
            .collect()
    }

    /// Renews the task leases of `query_ids` (`weft.renew_leases`); returns
    /// the ids this worker holds no lease of.
    pub fn renew_leases(&self, query_ids: &[String]) -> Vec<String> {
        self.fencing.renew(query_ids.iter().map(String::as_str))
    }

    /// Cancels the queries whose task lease ran out (their coordinator
    /// stopped renewing it); returns how many tasks were stopped.
    pub fn expire_leases(&self) -> usize {
        let mut stopped = 0;
        for (query_id, lease) in self.fencing.expired() {
            let tasks = self.cancel_attempts(&query_id, 0).len();
            tracing::warn!(
                query_id,
                tasks,
                lease_ms = lease.as_millis() as u64,
                "task lease expired: the query's coordinator stopped renewing it (gone or cut off); its tasks here are cancelled and freed"
            );
            stopped += tasks;
        }
        stopped
    }

    pub fn query_status(&self, query_id: &str) -> Vec<TaskStatus> {
        let tasks = self.tasks.lock();
        let mut out: Vec<_> = tasks
            .iter()
            .filter(|(k, _)| k.0 == query_id)
            .map(|(_, t)| t.status())
            .collect();
        out.sort_by_key(|s| s.task.as_ref().map(|t| (t.stage_id, t.task_index)));
        out
    }
}

enum Sink {
    Exclusive(mpsc::Sender<Result<RecordBatch>>),
    Replay(Arc<ReplayBuffer>),
}

/// What a task's out-of-memory error says on a worker with a bounded
/// memory pool: whose memory ran out, and its size.
fn memory_advice(
    worker_id: &str,
    limit: datafusion::execution::memory_pool::MemoryLimit,
) -> Option<Arc<str>> {
    match limit {
        datafusion::execution::memory_pool::MemoryLimit::Finite(bytes) => Some(Arc::from(format!(
            "worker {worker_id} ran out of its query memory (--memory-limit {:.1} MiB, shared by every task it runs at once)",
            bytes as f64 / (1024.0 * 1024.0)
        ))),
        _ => None,
    }
}

/// `e` with `advice` and what to change, when it is DataFusion's
/// "Resources exhausted" (an operator that cannot spill, or cannot spill
/// enough, did not get memory) and says nothing of it yet (a downstream
/// task in the same worker sees its upstream's error as it is); any other
/// error as it is.
fn explain_memory(e: DataFusionError, advice: Option<&str>) -> DataFusionError {
    match advice {
        Some(advice)
            if matches!(e.find_root(), DataFusionError::ResourcesExhausted(_))
                && !e.to_string().contains(advice) =>
        {
            DataFusionError::ResourcesExhausted(format!(
                "{advice}: {e}. Raise the workers' --memory-limit, or lower their --slots so fewer tasks share it"
            ))
        }
        _ => e,
    }
}

async fn pump(
    mut stream: datafusion::physical_plan::SendableRecordBatchStream,
    sink: Sink,
    task: std::sync::Weak<RunningTask>,
    output: usize,
    advice: Option<Arc<str>>,
) {
    let mut failure = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(batch) => {
                if batch.num_rows() == 0 {
                    continue;
                }
                let batch = match compact_views(batch) {
                    Ok(b) => b,
                    Err(e) => {
                        failure = Some(e.to_string());
                        break;
                    }
                };
                if let Some(t) = task.upgrade() {
                    t.rows_out
                        .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                    t.bytes_out
                        .fetch_add(batch.get_array_memory_size() as u64, Ordering::Relaxed);
                }
                match &sink {
                    Sink::Exclusive(tx) => {
                        if tx.send(Ok(batch)).await.is_err() {
                            // The consumer went away: stop producing this output.
                            break;
                        }
                    }
                    Sink::Replay(r) => r.push(batch),
                }
            }
            Err(e) => {
                let e = explain_memory(e, advice.as_deref());
                let message = e.to_string();
                match &sink {
                    Sink::Exclusive(tx) => {
                        let _ = tx.send(Err(e)).await;
                    }
                    Sink::Replay(r) => r.finish(Err(Arc::new(e))),
                }
                failure = Some(message);
                break;
            }
        }
    }
    if let Sink::Replay(r) = &sink {
        r.finish(Ok(()));
    }
    if let Some(t) = task.upgrade() {
        if failure.is_none() {
            t.completed[output].store(true, Ordering::SeqCst);
        }
        if let Some(message) = failure {
            tracing::warn!(task = %t.id, "task failed: {message}");
            t.set_state(TaskState::Failed, message);
        } else if t.pending_outputs.fetch_sub(1, Ordering::SeqCst) == 1 {
            t.set_state(TaskState::Finished, String::new());
        }
    }
}

impl TaskManager {
    /// Queries that have tasks on this worker.
    pub fn query_ids(&self) -> Vec<String> {
        let mut ids: Vec<_> = self.tasks.lock().keys().map(|k| k.0.clone()).collect();
        ids.sort();
        ids.dedup();
        ids
    }
}

/// The URL prefix a files catalog's scans carry (`file:///abs/dir/`,
/// `s3://bucket/prefix/`): DataFusion's object store URL + path, built the
/// way the catalog's listing builds it (`ListingTableUrl`, relative paths
/// against the working directory, symlinks not resolved).
fn file_url_prefix(path: &str) -> String {
    let url = match datafusion::datasource::listing::ListingTableUrl::parse(path) {
        Ok(u) => u.as_str().to_string(),
        Err(_) => path.to_string(),
    };
    format!("{}/", url.trim_end_matches('/'))
}

/// View arrays (Utf8View / BinaryView) may reference large shared buffers that
/// IPC would send whole with every batch (a 20-row batch of 20 MB has been
/// seen); copy just the referenced bytes before a batch leaves the worker.
fn compact_views(batch: RecordBatch) -> Result<RecordBatch> {
    use arrow::array::{Array, ArrayRef, BinaryViewArray, StringViewArray};
    use arrow::datatypes::DataType;
    if !batch
        .columns()
        .iter()
        .any(|c| matches!(c.data_type(), DataType::Utf8View | DataType::BinaryView))
    {
        return Ok(batch);
    }
    let columns: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .map(|c| -> ArrayRef {
            match c.data_type() {
                DataType::Utf8View => match c.as_any().downcast_ref::<StringViewArray>() {
                    Some(a) => Arc::new(a.gc()),
                    None => Arc::clone(c),
                },
                DataType::BinaryView => match c.as_any().downcast_ref::<BinaryViewArray>() {
                    Some(a) => Arc::new(a.gc()),
                    None => Arc::clone(c),
                },
                _ => Arc::clone(c),
            }
        })
        .collect();
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion_proto::bytes::physical_plan_to_bytes_with_extension_codec;
    use weft_common::exchange::StageReaderExec;
    use weft_common::flight::ClientPool;
    use weft_proto::TaskLocation;

    #[test]
    fn an_out_of_memory_error_names_the_worker_its_limit_and_the_fix() {
        use datafusion::execution::memory_pool::MemoryLimit;
        let advice = memory_advice("worker-a", MemoryLimit::Finite(1 << 30));
        let exhausted = DataFusionError::ResourcesExhausted(
            "Failed to allocate additional 265.1 MB for HashJoinInput[3]".into(),
        )
        .context("while building the hash table");
        let explained = explain_memory(exhausted, advice.as_deref());
        let message = explained.to_string();
        // A downstream task on the same worker passes it on as it is.
        let again = explain_memory(explained.context("downstream"), advice.as_deref());
        assert_eq!(
            again.to_string().matches("ran out of").count(),
            1,
            "{again}"
        );
        assert!(
            message
                .contains("worker worker-a ran out of its query memory (--memory-limit 1024.0 MiB")
                && message.contains("HashJoinInput[3]")
                && message.contains("Raise the workers' --memory-limit, or lower their --slots"),
            "{message}"
        );
        // Other errors, and workers without a limit, are left alone.
        let other = DataFusionError::Execution("division by zero".into());
        assert_eq!(
            explain_memory(other, advice.as_deref()).to_string(),
            "Execution error: division by zero"
        );
        assert!(memory_advice("worker-a", MemoryLimit::Infinite).is_none());
    }

    /// Nothing listens on the discard port: a reader that went through
    /// Flight instead of the in-process exchange would fail to connect.
    const ADDRESS: &str = "http://127.0.0.1:9";

    fn manager(worker: &str) -> (Arc<TaskManager>, WeftCodec) {
        let codec = WeftCodec::new(Arc::new(ClientPool::new()));
        let runtime = Arc::new(RuntimeEnv::default());
        let manager = TaskManager::new(worker.into(), ADDRESS.into(), runtime, codec.clone());
        (manager, codec)
    }

    fn id(stage_id: u32) -> TaskId {
        TaskId {
            query_id: "q".into(),
            stage_id,
            task_index: 0,
            attempt: 0,
        }
    }

    fn launch(manager: &TaskManager, codec: &WeftCodec, stage: u32, plan: Arc<dyn ExecutionPlan>) {
        let plan = physical_plan_to_bytes_with_extension_codec(plan, codec).expect("encode");
        manager
            .launch(LaunchTask {
                task: Some(id(stage)),
                plan: plan.to_vec(),
                ..Default::default()
            })
            .expect("launch");
    }

    /// Stage 0 emits 10 batches of 100 numbers (more than its output buffer holds).
    fn producer() -> Arc<dyn ExecutionPlan> {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let batches: Vec<RecordBatch> = (0..10)
            .map(|b| {
                let values = Int64Array::from_iter_values((0..100).map(|i| b * 100 + i));
                RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(values)]).expect("batch")
            })
            .collect();
        MemorySourceConfig::try_new_exec(&[batches], schema, None).expect("memory exec")
    }

    /// Stage 1 gathers stage 0's one task, located on `worker` at ADDRESS.
    fn consumer(worker: &str) -> Arc<dyn ExecutionPlan> {
        let schema = producer().schema();
        let reader =
            StageReaderExec::gather("q".into(), 0, schema, 1, None, Arc::new(ClientPool::new()))
                .with_tasks(vec![TaskLocation {
                    task_index: 0,
                    address: ADDRESS.into(),
                    worker_id: worker.into(),
                    attempt: 0,
                }])
                .expect("bind");
        Arc::new(reader)
    }

    async fn read(manager: &TaskManager, stage: u32) -> Result<Vec<i64>> {
        let (_, stream) = manager
            .output_batches(&id(stage), 0)
            .map_err(|e| DataFusionError::External(e.into()))?;
        let batches: Vec<RecordBatch> = futures::TryStreamExt::try_collect(stream).await?;
        Ok(batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .expect("int64")
                    .values()
                    .to_vec()
            })
            .collect())
    }

    #[tokio::test]
    async fn a_reader_takes_its_own_workers_outputs_in_process() {
        let (manager, codec) = manager("w1");
        // The consumer starts before its upstream task exists, as when the
        // coordinator launches every stage at once.
        launch(&manager, &codec, 1, consumer("w1"));
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        launch(&manager, &codec, 0, producer());
        let values = read(&manager, 1)
            .await
            .expect("read through the local exchange");
        assert_eq!(values, (0..1000).collect::<Vec<i64>>());
        let producer = manager.query_status("q").remove(0);
        assert_eq!(
            (producer.outputs_opened, producer.outputs_read),
            (1, 1),
            "the local read counts like a DoGet"
        );
    }

    /// A query placed again runs the same stages as a new attempt: the
    /// earlier attempt's late reader cannot take the new attempt's output.
    #[tokio::test]
    async fn attempts_of_one_query_keep_separate_outputs() {
        let (manager, codec) = manager("w1");
        let plan = physical_plan_to_bytes_with_extension_codec(producer(), &codec).expect("encode");
        let attempt = |n: u32| TaskId {
            attempt: n,
            ..id(0)
        };
        for n in [0, 1] {
            manager
                .launch(LaunchTask {
                    task: Some(attempt(n)),
                    plan: plan.to_vec(),
                    ..Default::default()
                })
                .expect("launch");
        }
        assert_eq!(manager.task_count(), 2);
        let _late = manager.output_batches(&attempt(0), 0).expect("attempt 0");
        let (_, stream) = manager
            .output_batches(&attempt(1), 0)
            .expect("attempt 1's output is still free");
        let batches: Vec<RecordBatch> = futures::TryStreamExt::try_collect(stream)
            .await
            .expect("read");
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1000);
        assert!(matches!(
            manager.output_batches(&attempt(1), 0),
            Err(TaskError::AlreadyConsumed { .. })
        ));
        assert_eq!(attempt(1).to_string(), "q/attempt-1/stage-0/task-0");
        assert_eq!(attempt(0).to_string(), "q/stage-0/task-0");
    }

    #[tokio::test]
    async fn a_reader_goes_over_flight_for_another_workers_tasks() {
        let (manager, codec) = manager("w1");
        launch(&manager, &codec, 0, producer());
        launch(&manager, &codec, 1, consumer("w2"));
        let err = read(&manager, 1).await.expect_err("w2 is not reachable");
        assert!(err.to_string().contains("w2"), "{err}");
    }

    #[tokio::test]
    async fn max_queries_refuses_a_further_query_until_one_is_released() {
        let (manager, codec) = manager("w1");
        manager.set_max_queries(1);
        let task = |query: &str, stage: u32| LaunchTask {
            task: Some(TaskId {
                query_id: query.into(),
                stage_id: stage,
                task_index: 0,
                attempt: 0,
            }),
            plan: physical_plan_to_bytes_with_extension_codec(producer(), &codec)
                .expect("encode")
                .to_vec(),
            ..Default::default()
        };
        manager.launch(task("a", 0)).expect("the first query");
        manager
            .launch(task("a", 1))
            .expect("more tasks of a query already here");
        let refused = manager.launch(task("b", 0)).expect_err("a second query");
        assert!(
            matches!(refused, TaskError::Busy { limit: 1, .. }),
            "{refused}"
        );
        let status = tonic::Status::from(refused);
        assert!(weft_common::flight::is_busy_refusal(&status), "{status:?}");
        assert!(status.message().contains("--max-queries"), "{status}");
        assert_eq!(manager.query_count(), 1);
        manager.release_query("a");
        manager
            .launch(task("b", 0))
            .expect("b, once a was released");
        assert_eq!(manager.query_count(), 1);
    }
}
