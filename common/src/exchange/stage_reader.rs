//! [`StageReaderExec`]: reads an upstream stage's outputs over Arrow Flight.

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::Ticket;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{internal_err, plan_err, DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, LexOrdering, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::stream::RecordBatchReceiverStreamBuilder;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use tracing::Instrument;
use weft_proto::{PartitionTicket, TaskId, TaskLocation};

use super::local::{LocalExchange, LocalOpenError};
use crate::flight::{is_transport_error, ClientPool, WorkerLost};

/// How long a reader waits for an upstream task that is not launched yet.
const UPSTREAM_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
const FIRST_BACKOFF: std::time::Duration = std::time::Duration::from_millis(1);
const MAX_BACKOFF: std::time::Duration = std::time::Duration::from_millis(20);

/// How a reader maps its partitions onto upstream task outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReaderMode {
    /// Hash shuffle: partition `p` = output `p` of every upstream task.
    Shuffle,
    /// Gather: partition `t` = output 0 of upstream task `t`.
    Gather,
}

/// Leaf of a stage fragment that streams another stage's output from the
/// workers running it, with Flight `DoGet`, while it is being produced.
///
/// Shuffle (replaces a hash `RepartitionExec`; N buckets, T upstream tasks):
/// ```text
///   upstream task 0 ──bucket p──┐
///   upstream task 1 ──bucket p──┼──► StageReaderExec partition p   (p in 0..N)
///   upstream task T ──bucket p──┘       (network: T DoGet streams, merged)
/// ```
/// Gather (input of a `CoalescePartitionsExec` / `SortPreservingMergeExec`):
/// ```text
///   upstream task t ──output 0──► StageReaderExec partition t      (t in 0..T)
/// ```
/// An upstream task on the reader's own worker is read in process
/// ([`LocalExchange`]), without IPC encoding.
///
/// Streams connect as soon as `execute` is called and are driven by spawned
/// tasks owned by the returned stream: dropping it closes the `DoGet`s, which
/// tells the upstream worker to stop producing for this consumer.
#[derive(Debug)]
pub struct StageReaderExec {
    query_id: String,
    stage_id: u32,
    mode: ReaderMode,
    tasks: Vec<TaskLocation>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    clients: Arc<ClientPool>,
    metrics: ExecutionPlanMetricsSet,
}

impl StageReaderExec {
    /// A hash-shuffle reader with the given (hash) partitioning.
    pub fn shuffle(
        query_id: String,
        stage_id: u32,
        schema: SchemaRef,
        partitioning: Partitioning,
        clients: Arc<ClientPool>,
    ) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            partitioning,
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self::new(
            query_id,
            stage_id,
            ReaderMode::Shuffle,
            schema,
            properties,
            clients,
        )
    }

    /// A gather reader with one partition per upstream task, each sorted by
    /// `ordering` when given.
    pub fn gather(
        query_id: String,
        stage_id: u32,
        schema: SchemaRef,
        upstream_tasks: usize,
        ordering: Option<LexOrdering>,
        clients: Arc<ClientPool>,
    ) -> Self {
        let eq = match ordering {
            Some(o) => EquivalenceProperties::new_with_orderings(Arc::clone(&schema), [o]),
            None => EquivalenceProperties::new(Arc::clone(&schema)),
        };
        let properties = PlanProperties::new(
            eq,
            Partitioning::UnknownPartitioning(upstream_tasks.max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self::new(
            query_id,
            stage_id,
            ReaderMode::Gather,
            schema,
            properties,
            clients,
        )
    }

    fn new(
        query_id: String,
        stage_id: u32,
        mode: ReaderMode,
        schema: SchemaRef,
        properties: PlanProperties,
        clients: Arc<ClientPool>,
    ) -> Self {
        Self {
            query_id,
            stage_id,
            mode,
            tasks: Vec::new(),
            schema,
            properties: Arc::new(properties),
            clients,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    /// The same reader pointed at the workers that run the upstream tasks.
    pub fn with_tasks(&self, tasks: Vec<TaskLocation>) -> Result<Self> {
        if self.mode == ReaderMode::Gather
            && tasks.len() != self.properties.partitioning.partition_count()
        {
            return plan_err!(
                "gather reader of stage {} has {} partitions but {} upstream tasks",
                self.stage_id,
                self.properties.partitioning.partition_count(),
                tasks.len()
            );
        }
        Ok(Self {
            query_id: self.query_id.clone(),
            stage_id: self.stage_id,
            mode: self.mode,
            tasks,
            schema: Arc::clone(&self.schema),
            properties: Arc::clone(&self.properties),
            clients: Arc::clone(&self.clients),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    pub fn query_id(&self) -> &str {
        &self.query_id
    }
    pub fn stage_id(&self) -> u32 {
        self.stage_id
    }
    pub fn mode(&self) -> ReaderMode {
        self.mode
    }
    pub fn tasks(&self) -> &[TaskLocation] {
        &self.tasks
    }

    fn sources(&self, partition: usize) -> Result<Vec<(TaskLocation, u32)>> {
        let count = self.properties.partitioning.partition_count();
        if partition >= count {
            return internal_err!("StageReaderExec has {count} partitions, asked for {partition}");
        }
        if self.tasks.is_empty() {
            return internal_err!(
                "StageReaderExec for stage {} was executed before its upstream tasks were scheduled",
                self.stage_id
            );
        }
        Ok(match self.mode {
            ReaderMode::Shuffle => self
                .tasks
                .iter()
                .map(|t| (t.clone(), partition as u32))
                .collect(),
            ReaderMode::Gather => vec![(self.tasks[partition].clone(), 0)],
        })
    }
}

impl DisplayAs for StageReaderExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.mode {
            ReaderMode::Shuffle => "shuffle",
            ReaderMode::Gather => "gather",
        };
        write!(
            f,
            "StageReaderExec: stage={}, mode={mode}, partitions={}, upstream_tasks={}",
            self.stage_id,
            self.properties.partitioning.partition_count(),
            self.tasks.len()
        )
    }
}

impl ExecutionPlan for StageReaderExec {
    fn name(&self) -> &str {
        "StageReaderExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if !children.is_empty() {
            return internal_err!("StageReaderExec is a leaf");
        }
        Ok(self)
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let sources = self.sources(partition)?;
        let local = context.session_config().get_extension::<LocalExchange>();
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        // What this partition received from upstream tasks (EXPLAIN ANALYZE).
        let received_bytes = MetricBuilder::new(&self.metrics).counter(BYTES_RECEIVED, partition);
        let mut builder = RecordBatchReceiverStreamBuilder::new(Arc::clone(&self.schema), 2);
        for (location, output) in sources {
            let received_bytes = received_bytes.clone();
            let tx = builder.tx();
            let task = TaskId {
                query_id: self.query_id.clone(),
                stage_id: self.stage_id,
                task_index: location.task_index,
                attempt: location.attempt,
            };
            let schema = Arc::clone(&self.schema);
            let stage_id = self.stage_id;
            let span = |transport: &'static str| {
                tracing::info_span!(
                    "exchange_read",
                    query_id = %self.query_id,
                    stage = stage_id,
                    task = location.task_index,
                    worker = %location.worker_id,
                    output,
                    transport
                )
            };
            if let Some(local) = local.as_ref().filter(|l| l.serves(&location)) {
                let local = Arc::clone(local);
                let span = span(LOCAL);
                builder.spawn(
                    async move {
                        let received = Received::new(LOCAL, received_bytes.clone());
                        let mut waited = std::time::Instant::now();
                        let mut stream = open_local(&local, &task, output, stage_id).await?;
                        while let Some(batch) = stream.next().await {
                            let batch = batch?;
                            received.batch(waited, batch.num_rows(), batch.get_array_memory_size());
                            let batch = RecordBatch::try_new(
                                Arc::clone(&schema),
                                batch.columns().to_vec(),
                            )?;
                            if tx.send(Ok(batch)).await.is_err() {
                                // The consumer is gone; dropping the stream stops the producer.
                                break;
                            }
                            waited = std::time::Instant::now();
                        }
                        Ok(())
                    }
                    .instrument(span),
                );
                continue;
            }
            let client = self.clients.client(&location.address)?;
            let ticket = PartitionTicket {
                task: Some(task),
                partition: output,
                grant: None,
            };
            let span = span(FLIGHT);
            builder.spawn(async move {
                let describe = |status: tonic::Status| -> DataFusionError {
                    if let Some(lost) = WorkerLost::from_status(&status) {
                        // A worker further upstream was lost: passed on as such.
                        DataFusionError::External(Box::new(lost))
                    } else if is_transport_error(&status) {
                        DataFusionError::External(Box::new(WorkerLost {
                            worker_id: location.worker_id.clone(),
                            address: location.address.clone(),
                            message: format!(
                                "weft: worker {} at {} failed while stage {stage_id} task {} was being read: {}",
                                location.worker_id,
                                location.address,
                                location.task_index,
                                status.message()
                            ),
                        }))
                    } else {
                        DataFusionError::External(status.message().to_string().into())
                    }
                };
                let mut client = client;
                let received = Received::new(FLIGHT, received_bytes.clone());
                let mut waited = std::time::Instant::now();
                // The coordinator launches every stage at once, so the
                // upstream task may not be registered yet: retry briefly.
                let deadline = tokio::time::Instant::now() + UPSTREAM_WAIT;
                let mut backoff = FIRST_BACKOFF;
                let response = loop {
                    let request = crate::telemetry::traces::request(Ticket::new(ticket.encode_to_vec()));
                    match client.do_get(request).await {
                        Ok(r) => break r,
                        Err(status)
                            if status.code() == tonic::Code::NotFound
                                && tokio::time::Instant::now() + backoff < deadline =>
                        {
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                        }
                        Err(status) => return Err(describe(status)),
                    }
                };
                let wire_bytes = Arc::new(std::sync::atomic::AtomicU64::new(0));
                let counted = Arc::clone(&wire_bytes);
                let mut stream = FlightRecordBatchStream::new_from_flight_data(
                    response
                        .into_inner()
                        .inspect_ok(move |d| {
                            counted.fetch_add(
                                (d.data_header.len() + d.data_body.len()) as u64,
                                std::sync::atomic::Ordering::Relaxed,
                            );
                        })
                        .map_err(|s| FlightError::Tonic(Box::new(s))),
                );
                while let Some(item) = stream.next().await {
                    let batch = item.map_err(|e| match e {
                        FlightError::Tonic(status) => describe(*status),
                        other => DataFusionError::External(Box::new(other)),
                    })?;
                    received.batch(
                        waited,
                        batch.num_rows(),
                        wire_bytes.swap(0, std::sync::atomic::Ordering::Relaxed) as usize,
                    );
                    let batch = RecordBatch::try_new(Arc::clone(&schema), batch.columns().to_vec())?;
                    if tx.send(Ok(batch)).await.is_err() {
                        // The consumer is gone; dropping the DoGet stops the producer.
                        break;
                    }
                    waited = std::time::Instant::now();
                }
                Ok(())
            }.instrument(span));
        }
        let stream = builder.build();
        Ok(Box::pin(
            datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
                Arc::clone(&self.schema),
                stream.inspect_ok(move |b| baseline.record_output(b.num_rows())),
            ),
        ))
    }
}

/// Name of the reader's operator metric counting bytes received.
pub const BYTES_RECEIVED: &str = "bytes_received";

const FLIGHT: &str = "flight";
const LOCAL: &str = "local";

/// Counts what one upstream stream delivers to a reader (the
/// `weft_worker_exchange_received_*` metrics).
struct Received {
    /// The operator's own metric (EXPLAIN ANALYZE).
    operator_bytes: datafusion::physical_plan::metrics::Count,
    bytes: metrics::Counter,
    batches: metrics::Counter,
    rows: metrics::Counter,
    wait: metrics::Histogram,
}

impl Received {
    fn new(
        transport: &'static str,
        operator_bytes: datafusion::physical_plan::metrics::Count,
    ) -> Self {
        use crate::telemetry::catalog::*;
        Self {
            operator_bytes,
            bytes: metrics::counter!(EXCHANGE_RECEIVED_BYTES.name, "transport" => transport),
            batches: metrics::counter!(EXCHANGE_RECEIVED_BATCHES.name, "transport" => transport),
            rows: metrics::counter!(EXCHANGE_RECEIVED_ROWS.name, "transport" => transport),
            wait: metrics::histogram!(EXCHANGE_WAIT.name, "transport" => transport),
        }
    }

    /// A batch arrived; `waited` is when the reader started waiting for it
    /// (after handing the previous one downstream, so backpressure from the
    /// consumer does not count as waiting for the producer).
    fn batch(&self, waited: std::time::Instant, rows: usize, bytes: usize) {
        self.wait.record(waited.elapsed().as_secs_f64());
        self.operator_bytes.add(bytes);
        self.bytes.increment(bytes as u64);
        self.batches.increment(1);
        self.rows.increment(rows as u64);
    }
}

/// Opens an upstream output of a task on this worker, waiting like the
/// Flight path for a task that is not launched yet.
async fn open_local(
    local: &LocalExchange,
    task: &TaskId,
    output: u32,
    stage_id: u32,
) -> Result<futures::stream::BoxStream<'static, Result<RecordBatch>>> {
    let deadline = tokio::time::Instant::now() + UPSTREAM_WAIT;
    let mut backoff = FIRST_BACKOFF;
    loop {
        match local.open(task, output) {
            Ok(stream) => return Ok(stream),
            Err(LocalOpenError::NotFound(message)) => {
                if tokio::time::Instant::now() + backoff >= deadline {
                    return Err(DataFusionError::External(
                        format!("weft: reading stage {stage_id}: {message}").into(),
                    ));
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(LocalOpenError::Failed(message)) => {
                return Err(DataFusionError::External(message.into()))
            }
        }
    }
}
