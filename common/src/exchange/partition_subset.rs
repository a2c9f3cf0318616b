//! [`PartitionSubsetExec`]: the part of a stage one task owns.

use std::fmt;
use std::sync::Arc;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{internal_err, plan_err, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};

/// Exposes a chosen subset of its input's partitions, in order.
///
/// A stage's fragment has P partitions; the task that owns partitions
/// `[p0, p1, ..]` executes the fragment through this node, so its output
/// partition `i` is input partition `partitions[i]`. Nothing crosses the network.
///
/// ```text
///   input partitions:  0   1   2   3   4   5        (P = 6)
///                          │           │
///   PartitionSubsetExec([1, 4])
///   output partitions:     0           1            (2 = partitions.len())
/// ```
#[derive(Debug)]
pub struct PartitionSubsetExec {
    input: Arc<dyn ExecutionPlan>,
    partitions: Vec<usize>,
    properties: Arc<PlanProperties>,
}

impl PartitionSubsetExec {
    /// `partitions` must be non-empty, distinct and within the input's count.
    pub fn try_new(input: Arc<dyn ExecutionPlan>, partitions: Vec<usize>) -> Result<Self> {
        let count = input.properties().partitioning.partition_count();
        if partitions.is_empty() {
            return plan_err!("PartitionSubsetExec needs at least one partition");
        }
        let mut seen = partitions.clone();
        seen.sort_unstable();
        seen.dedup();
        if seen.len() != partitions.len() || seen.last().is_some_and(|&p| p >= count) {
            return plan_err!(
                "PartitionSubsetExec partitions {partitions:?} are not distinct partitions of an input with {count}"
            );
        }
        let input_props = input.properties();
        let properties = PlanProperties::new(
            input_props.eq_properties.clone(),
            Partitioning::UnknownPartitioning(partitions.len()),
            input_props.emission_type,
            input_props.boundedness,
        );
        Ok(Self {
            input,
            partitions,
            properties: Arc::new(properties),
        })
    }

    /// Input partition behind each output partition.
    pub fn partitions(&self) -> &[usize] {
        &self.partitions
    }

    pub fn input(&self) -> &Arc<dyn ExecutionPlan> {
        &self.input
    }
}

impl DisplayAs for PartitionSubsetExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PartitionSubsetExec: partitions={:?}", self.partitions)
    }
}

impl ExecutionPlan for PartitionSubsetExec {
    fn name(&self) -> &str {
        "PartitionSubsetExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return internal_err!(
                "PartitionSubsetExec takes one child, got {}",
                children.len()
            );
        }
        Ok(Arc::new(Self::try_new(
            children.swap_remove(0),
            self.partitions.clone(),
        )?))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        match self.partitions.get(partition) {
            Some(&p) => self.input.execute(p, context),
            None => internal_err!(
                "PartitionSubsetExec has {} partitions, asked for {partition}",
                self.partitions.len()
            ),
        }
    }
}
