//! Leaves that only the coordinator can run.
//!
//! Some scans exist only in the coordinator's process: `information_schema`
//! and other system tables (`StreamingTableExec`), lazily computed in-memory
//! tables. They cannot be encoded for a worker, so the coordinator runs them
//! while planning and ships their (small) output inside the plan as an
//! in-memory scan, which datafusion-proto can encode.

use std::sync::Arc;

use datafusion::common::Result;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::{collect_partitioned, ExecutionPlan};
use datafusion_proto::physical_plan::PhysicalExtensionCodec;

/// Replaces every leaf that `codec` cannot encode with its materialized output.
pub async fn materialize_local_leaves(
    plan: Arc<dyn ExecutionPlan>,
    ctx: Arc<TaskContext>,
    codec: &dyn PhysicalExtensionCodec,
) -> Result<Arc<dyn ExecutionPlan>> {
    let children = plan.children();
    if children.is_empty() {
        if datafusion_proto::bytes::physical_plan_to_bytes_with_extension_codec(
            Arc::clone(&plan),
            codec,
        )
        .is_ok()
        {
            return Ok(plan);
        }
        let schema = plan.schema();
        let partitions = collect_partitioned(Arc::clone(&plan), ctx).await?;
        tracing::debug!(
            node = plan.name(),
            "leaf runs on the coordinator; its output is shipped with the plan"
        );
        return Ok(MemorySourceConfig::try_new_exec(&partitions, schema, None)?);
    }
    let mut new_children = Vec::with_capacity(children.len());
    for c in children {
        new_children.push(
            Box::pin(materialize_local_leaves(
                Arc::clone(c),
                Arc::clone(&ctx),
                codec,
            ))
            .await?,
        );
    }
    replace_children_if_necessary(plan, new_children)
}
