//! [`RemoteScanExec`]: reads the result of SQL queries run by a source database.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{internal_err, plan_err, Result, Statistics};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};

use crate::{RemoteSource, ScanRequest};

/// A scan whose rows a source database computes: one SQL query per split.
///
/// Each output partition is one split; the stage planner gives splits to
/// different tasks, so they are read in parallel on several workers. Rows
/// come from the database, nothing else crosses the network.
///
/// ```text
///   source database:  query 0   query 1   ...   query N-1   (one connection each)
///                        │         │                │
///   RemoteScanExec:  partition 0  partition 1  ... partition N-1
/// ```
///
/// The queries and the snapshot id travel in the plan; the connection settings
/// (and passwords) do not: each process resolves `catalog` in its own catalog
/// file.
pub struct RemoteScanExec {
    source: Arc<dyn RemoteSource>,
    relation: String,
    schema: SchemaRef,
    wire_types: Vec<String>,
    queries: Vec<String>,
    snapshot: Option<String>,
    split_method: String,
    split_payloads: Vec<Vec<u8>>,
    /// Keeps coordinator-side resources (an exported snapshot) alive while the
    /// plan is; not encoded.
    keep_alive: Option<Arc<dyn Any + Send + Sync>>,
    row_estimate: Option<usize>,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl fmt::Debug for RemoteScanExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteScanExec")
            .field("catalog", &self.source.catalog())
            .field("relation", &self.relation)
            .field("queries", &self.queries)
            .finish_non_exhaustive()
    }
}

/// Everything that describes a remote scan.
#[derive(Debug, Clone)]
pub struct RemoteScanSpec {
    /// What is read, for EXPLAIN: `schema.table` or `query`.
    pub relation: String,
    pub schema: SchemaRef,
    /// Per column, how the source sends it (source specific).
    pub wire_types: Vec<String>,
    /// One query per split.
    pub queries: Vec<String>,
    pub snapshot: Option<String>,
    /// How the splits were made, for EXPLAIN.
    pub split_method: String,
    /// Source-specific data of each split (a Flight SQL endpoint): empty, or
    /// one per query.
    pub split_payloads: Vec<Vec<u8>>,
}

impl RemoteScanExec {
    pub fn try_new(source: Arc<dyn RemoteSource>, spec: RemoteScanSpec) -> Result<Self> {
        if spec.queries.is_empty() {
            return plan_err!("a remote scan needs at least one query");
        }
        if !spec.split_payloads.is_empty() && spec.split_payloads.len() != spec.queries.len() {
            return plan_err!(
                "remote scan has {} split payloads for {} queries",
                spec.split_payloads.len(),
                spec.queries.len()
            );
        }
        if spec.wire_types.len() != spec.schema.fields().len() {
            return plan_err!(
                "remote scan has {} wire types for {} columns",
                spec.wire_types.len(),
                spec.schema.fields().len()
            );
        }
        let properties = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&spec.schema)),
            Partitioning::UnknownPartitioning(spec.queries.len()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Self {
            source,
            relation: spec.relation,
            schema: spec.schema,
            wire_types: spec.wire_types,
            queries: spec.queries,
            snapshot: spec.snapshot,
            split_method: spec.split_method,
            split_payloads: spec.split_payloads,
            keep_alive: None,
            row_estimate: None,
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    /// Holds `resource` as long as this plan node lives.
    pub fn with_keep_alive(mut self, resource: Arc<dyn Any + Send + Sync>) -> Self {
        self.keep_alive = Some(resource);
        self
    }

    /// Estimated rows of the whole scan, for join planning.
    pub fn with_row_estimate(mut self, rows: Option<usize>) -> Self {
        self.row_estimate = rows;
        self
    }

    /// Rows of a table scan from the table's estimate: a fifth when filters
    /// are pushed, at most the pushed limit.
    pub fn with_table_estimate(
        self,
        table_rows: Option<usize>,
        filtered: bool,
        limit: Option<usize>,
    ) -> Self {
        let rows = table_rows.map(|r| if filtered { r / 5 } else { r });
        self.with_row_estimate(match limit {
            Some(n) => rows.map(|r| r.min(n)).or(Some(n)),
            None => rows,
        })
    }

    pub fn source(&self) -> &Arc<dyn RemoteSource> {
        &self.source
    }

    pub fn keep_alive(&self) -> Option<&Arc<dyn Any + Send + Sync>> {
        self.keep_alive.as_ref()
    }

    pub fn spec(&self) -> RemoteScanSpec {
        RemoteScanSpec {
            relation: self.relation.clone(),
            schema: Arc::clone(&self.schema),
            wire_types: self.wire_types.clone(),
            queries: self.queries.clone(),
            snapshot: self.snapshot.clone(),
            split_method: self.split_method.clone(),
            split_payloads: self.split_payloads.clone(),
        }
    }
}

impl DisplayAs for RemoteScanExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RemoteScanExec: catalog={}, kind={}, relation={}, splits={}",
            self.source.catalog(),
            self.source.kind(),
            self.relation,
            self.queries.len()
        )?;
        if self.queries.len() > 1 {
            write!(f, " ({}", self.split_method)?;
            if self.snapshot.is_some() {
                write!(f, ", one snapshot")?;
            }
            write!(f, ")")?;
        }
        match t {
            DisplayFormatType::Verbose => {
                for (i, q) in self.queries.iter().enumerate() {
                    write!(f, ", sql[{i}]={q}")?;
                }
                Ok(())
            }
            _ => write!(f, ", sql={}", abbreviate_lists(&self.queries[0])),
        }
    }
}

/// `sql` with every `IN (...)` list of more than 8 items shortened to its
/// first 8 and a count (key filters can hold thousands of keys).
fn abbreviate_lists(sql: &str) -> String {
    const SHOWN: usize = 8;
    let mut out = String::with_capacity(sql.len().min(4096));
    let mut rest = sql;
    while let Some(at) = rest.find(" IN (") {
        let open = at + " IN (".len();
        out.push_str(&rest[..open]);
        rest = &rest[open..];
        // Top-level items up to the closing parenthesis, outside quotes.
        let (mut depth, mut quoted, mut items, mut cut, mut close) = (0, false, 1, None, None);
        for (i, c) in rest.char_indices() {
            match c {
                '\'' => quoted = !quoted,
                '(' if !quoted => depth += 1,
                ')' if !quoted && depth == 0 => {
                    close = Some(i);
                    break;
                }
                ')' if !quoted => depth -= 1,
                ',' if !quoted && depth == 0 => {
                    if items == SHOWN {
                        cut = Some(i);
                    }
                    items += 1;
                }
                _ => {}
            }
        }
        if let (Some(cut), Some(close)) = (cut, close) {
            out.push_str(&rest[..cut]);
            out.push_str(&format!(", ... {} more", items - SHOWN));
            rest = &rest[close..];
        }
    }
    out.push_str(rest);
    out
}

impl ExecutionPlan for RemoteScanExec {
    fn name(&self) -> &str {
        "RemoteScanExec"
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
            return internal_err!("RemoteScanExec has no children");
        }
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let Some(query) = self.queries.get(partition) else {
            return internal_err!(
                "RemoteScanExec has {} partitions, asked for {partition}",
                self.queries.len()
            );
        };
        let metrics = BaselineMetrics::new(&self.metrics, partition);
        let request = ScanRequest {
            query: query.clone(),
            snapshot: self.snapshot.clone(),
            payload: self.split_payloads.get(partition).cloned(),
            schema: Arc::clone(&self.schema),
            wire_types: self.wire_types.clone(),
            batch_size: context.session_config().batch_size(),
        };
        let catalog = self.source.catalog().to_string();
        let kind = self.source.kind();
        // The remote SQL names tables and columns only; connection settings
        // (and their passwords) are never part of it.
        let span = tracing::info_span!(
            "remote_query",
            catalog = %catalog,
            kind,
            relation = %self.relation,
            split = partition,
            sql = %query
        );
        let stream = span.in_scope(|| Arc::clone(&self.source).execute_query(request, metrics))?;
        Ok(Box::pin(RemoteQueryStream::new(
            stream, catalog, kind, span,
        )))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn partition_statistics(&self, partition: Option<usize>) -> Result<Arc<Statistics>> {
        let mut stats = Statistics::new_unknown(&self.schema);
        if let Some(rows) = self.row_estimate {
            let rows = match partition {
                Some(_) => rows / self.queries.len(),
                None => rows,
            };
            stats.num_rows = datafusion::common::stats::Precision::Inexact(rows);
        }
        Ok(Arc::new(stats))
    }
}

/// Counts one remote query in `weft_connector_*`: rows and Arrow bytes as
/// they arrive; the query itself, its outcome and its duration when it ends
/// (its last row, an error, or the consumer dropping it: `cancelled`).
/// Sources send their query when first polled, so the clock starts there
/// and a stream never polled (a split nobody read) counts as nothing.
struct RemoteQueryStream {
    inner: SendableRecordBatchStream,
    labels: [(&'static str, String); 2],
    rows: metrics::Counter,
    bytes: metrics::Counter,
    /// Set at the first poll.
    started: Option<std::time::Instant>,
    outcome: Option<&'static str>,
    /// Entered while polled; ends when the remote query does.
    span: tracing::Span,
}

impl RemoteQueryStream {
    fn new(
        inner: SendableRecordBatchStream,
        catalog: String,
        kind: &'static str,
        span: tracing::Span,
    ) -> Self {
        use weft_common::telemetry::catalog::{CONNECTOR_BYTES, CONNECTOR_ROWS};
        let labels = [("catalog", catalog), ("kind", kind.to_string())];
        Self {
            inner,
            rows: metrics::counter!(CONNECTOR_ROWS.name, &labels),
            bytes: metrics::counter!(CONNECTOR_BYTES.name, &labels),
            labels,
            started: None,
            outcome: None,
            span,
        }
    }
}

impl futures::Stream for RemoteQueryStream {
    type Item = Result<arrow::record_batch::RecordBatch>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let span = self.span.clone();
        let _entered = span.enter();
        if self.started.is_none() {
            self.started = Some(std::time::Instant::now());
        }
        let item = std::task::ready!(self.inner.as_mut().poll_next(cx));
        match &item {
            Some(Ok(batch)) => {
                self.rows.increment(batch.num_rows() as u64);
                self.bytes.increment(batch.get_array_memory_size() as u64);
            }
            Some(Err(_)) => self.outcome = Some("error"),
            None => {
                self.outcome.get_or_insert("ok");
            }
        }
        std::task::Poll::Ready(item)
    }
}

impl datafusion::physical_plan::RecordBatchStream for RemoteQueryStream {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }
}

impl Drop for RemoteQueryStream {
    fn drop(&mut self) {
        use weft_common::telemetry::catalog::{REMOTE_QUERIES, REMOTE_QUERY_DURATION};
        let Some(started) = self.started else {
            return;
        };
        let status = self.outcome.unwrap_or("cancelled");
        let [(_, catalog), (_, kind)] = &self.labels;
        metrics::counter!(REMOTE_QUERIES.name, "catalog" => catalog.clone(), "kind" => kind.clone(), "status" => status)
            .increment(1);
        if status == "ok" {
            metrics::histogram!(REMOTE_QUERY_DURATION.name, &self.labels)
                .record(started.elapsed().as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::abbreviate_lists;

    #[test]
    fn long_in_lists_are_shortened_for_explain() {
        let keys: Vec<String> = (1..=20).map(|i| i.to_string()).collect();
        let sql = format!(
            "SELECT a FROM t WHERE (\"k\" IN ({})) AND \"d\" IN (CAST('1994-01-01' AS DATE), CAST('x,)' AS DATE)) AND b = 1",
            keys.join(", ")
        );
        assert_eq!(
            abbreviate_lists(&sql),
            "SELECT a FROM t WHERE (\"k\" IN (1, 2, 3, 4, 5, 6, 7, 8, ... 12 more)) AND \"d\" IN (CAST('1994-01-01' AS DATE), CAST('x,)' AS DATE)) AND b = 1"
        );
        assert_eq!(abbreviate_lists("x IN (1, 2"), "x IN (1, 2");
    }
}
