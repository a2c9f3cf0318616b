//! `EXPLAIN` and `EXPLAIN ANALYZE` of the distributed plan: answered by the
//! engine as an in-memory scan, so they are delivered like any result.

use std::sync::Arc;
use std::time::Duration;

use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use futures::StreamExt;

use super::{plain_string_output, Engine};
use crate::planner::stages::cut_stages;
use crate::scheduler::{self, total_slots};

impl Engine {
    /// `EXPLAIN ANALYZE`: runs the statement as a distributed query of its
    /// own, reads (and drops) its results, then reports every stage with its
    /// tasks' operator metrics as the workers returned them when they
    /// released the tasks ([`crate::planner::explain::analyzed`]).
    pub(super) async fn explain_analyze(
        &self,
        sql: &str,
        analyze: &datafusion::logical_expr::Analyze,
        identity: &crate::auth::Identity,
    ) -> Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>, DataFusionError> {
        let parsed = datafusion::sql::parser::DFParser::parse_sql(sql)?;
        let inner = match parsed.front() {
            Some(datafusion::sql::parser::Statement::Explain(e)) => e.statement.to_string(),
            _ => {
                return Err(DataFusionError::Plan(
                    "EXPLAIN ANALYZE must be the only statement".into(),
                ))
            }
        };
        let started = std::time::Instant::now();
        let query = self
            .start_query_with(&inner, identity, true)
            .await
            .map_err(|s| DataFusionError::Execution(s.message().to_string()))?;
        let endpoints = query.run_info().map(|r| r.endpoints.len()).unwrap_or(0);
        let (mut rows, mut bytes) = (0u64, 0u64);
        for e in 0..endpoints {
            let mut stream = self
                .stream(&query.id, e as u32, identity)
                .await
                .map_err(|s| DataFusionError::Execution(s.message().to_string()))?;
            while let Some(data) = stream.next().await {
                let data = data.map_err(|s| DataFusionError::Execution(s.message().to_string()))?;
                bytes += (data.data_header.len() + data.data_body.len()) as u64;
                rows += arrow::ipc::root_as_message(&data.data_header)
                    .ok()
                    .and_then(|m| m.header_as_record_batch())
                    .map(|b| b.length().max(0) as u64)
                    .unwrap_or(0);
            }
        }
        let elapsed = started.elapsed();
        // The workers return every task's final metrics when they release
        // the query, which the last stream's end set off.
        let total: usize = query
            .run_info()
            .map(|r| r.stages.iter().map(Vec::len).sum())
            .unwrap_or(0);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while query.ended_task_count() < total && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let progress = query.progress(&self.clients).await;
        let blocks = query.stage_blocks.lock().clone();
        let text =
            crate::planner::explain::analyzed(&query.id, &blocks, &progress, rows, bytes, elapsed);
        text_rows(analyze.schema.as_arrow(), &[("Plan with Metrics", text)])
    }

    /// `EXPLAIN`: DataFusion's logical and physical plans, and the
    /// distributed plan ([`crate::planner::explain`]): the stages the query
    /// would be cut into on the current workers. Returned as an in-memory
    /// scan, so it is delivered like any result.
    pub(super) async fn explain(
        &self,
        ctx: &SessionContext,
        explain: &datafusion::logical_expr::Explain,
    ) -> Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>, DataFusionError> {
        use datafusion::physical_plan::displayable;
        let state = ctx.state();
        let logical = state.optimize(&explain.plan)?;
        let physical = state.create_physical_plan(&explain.plan).await?;
        let physical =
            crate::planner::balance::balance_parquet_scans(physical, &ctx.runtime_env()).await?;
        let physical = plain_string_output(physical)?;
        let workers = self.schedulable_workers();
        let max_tasks = self
            .settings
            .max_tasks_per_stage
            .unwrap_or_else(|| total_slots(&workers))
            .max(1);
        let graph = cut_stages(Arc::clone(&physical), "explain", max_tasks, &self.clients)?;
        let placement =
            scheduler::place(&graph, &workers).map_err(|e| DataFusionError::Plan(e.to_string()))?;
        let rows = [
            ("logical_plan", logical.display_indent().to_string()),
            (
                "physical_plan",
                displayable(physical.as_ref())
                    .indent(explain.verbose)
                    .to_string(),
            ),
            (
                "distributed_plan",
                crate::planner::explain::render(&graph, &placement, explain.verbose),
            ),
        ];
        text_rows(explain.schema.as_arrow(), &rows)
    }
}

/// An in-memory scan of `(plan_type, plan)` rows, for EXPLAIN's answers.
fn text_rows(
    schema: &arrow::datatypes::Schema,
    rows: &[(&str, String)],
) -> Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>, DataFusionError> {
    use arrow::array::StringArray;
    use datafusion::datasource::memory::MemorySourceConfig;
    let schema = Arc::new(schema.clone());
    let batch = arrow::record_batch::RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.1.as_str()),
            )),
        ],
    )?;
    Ok(MemorySourceConfig::try_new_exec(
        &[vec![batch]],
        schema,
        None,
    )?)
}
