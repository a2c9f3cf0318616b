//! Cutting a physical plan into a stage graph.
//!
//! Cuts are made at
//! - hash `RepartitionExec` (shuffle): the repartition and everything below it
//!   become an upstream stage whose tasks hash their rows into N buckets; the
//!   downstream stage reads bucket p with a shuffle [`StageReaderExec`];
//! - `CoalescePartitionsExec` / `SortPreservingMergeExec` over more than one
//!   partition (gather): each upstream task merges its own partitions with the
//!   same operator, and the downstream stage merges the per-task streams
//!   through a gather reader. This is also how the build side of a broadcast
//!   (`CollectLeft`) join is cut: its input is always such a coalesce.
//!
//! A plan without these operators is one stage. Stage ids follow a post-order
//! walk, so every stage's inputs have smaller ids than the stage itself.

use std::sync::Arc;

use datafusion::common::JoinType;
use datafusion::common::{plan_err, Result};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::joins::{HashJoinExec, NestedLoopJoinExec, PartitionMode};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties, Partitioning};
use weft_common::exchange::{PartitionSubsetExec, ReaderMode, StageReaderExec};
use weft_common::flight::ClientPool;

/// What a stage's tasks produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageKind {
    /// Root is a hash `RepartitionExec`: each task emits N buckets.
    Shuffle,
    /// Root is a coalesce / sort-preserving merge: each task emits one stream.
    Gather,
    /// The query's last stage: each task emits the root partitions it owns.
    Final,
}

/// One stage of a query.
#[derive(Debug, Clone)]
pub struct Stage {
    pub id: u32,
    pub kind: StageKind,
    /// The fragment. For `Shuffle` / `Gather` its single child is what the
    /// tasks split; for `Final` the root itself is split.
    pub root: Arc<dyn ExecutionPlan>,
    /// Partitions the tasks divide among themselves.
    pub split_partitions: usize,
    /// Number of tasks.
    pub tasks: usize,
    /// Upstream stages read by this one.
    pub inputs: Vec<u32>,
    /// Whether this stage's outputs must be replayable (read by several tasks).
    pub replay: bool,
}

impl Stage {
    /// Partitions owned by task `t`: every `tasks`-th, starting at `t`.
    pub fn owned_partitions(&self, task: usize) -> Vec<usize> {
        (task..self.split_partitions).step_by(self.tasks).collect()
    }

    /// The plan task `t` runs: the fragment restricted to its partitions.
    pub fn task_plan(&self, task: usize) -> Result<Arc<dyn ExecutionPlan>> {
        let owned = self.owned_partitions(task);
        match self.kind {
            StageKind::Final => Ok(Arc::new(PartitionSubsetExec::try_new(
                Arc::clone(&self.root),
                owned,
            )?)),
            StageKind::Shuffle | StageKind::Gather => {
                let child = Arc::clone(self.root.children()[0]);
                let subset: Arc<dyn ExecutionPlan> =
                    Arc::new(PartitionSubsetExec::try_new(child, owned)?);
                replace_children_if_necessary(Arc::clone(&self.root), vec![subset])
            }
        }
    }

    /// Number of outputs of each task.
    pub fn task_outputs(&self, task: usize) -> usize {
        match self.kind {
            StageKind::Shuffle => self.root.output_partitioning().partition_count(),
            StageKind::Gather => 1,
            StageKind::Final => self.owned_partitions(task).len(),
        }
    }
}

/// The stages of a query, upstream first; the last one is the final stage.
#[derive(Debug, Clone)]
pub struct StageGraph {
    pub stages: Vec<Stage>,
}

impl StageGraph {
    pub fn final_stage(&self) -> &Stage {
        self.stages
            .last()
            .expect("a stage graph has at least one stage")
    }
}

/// Cuts `plan` into stages with at most `max_tasks` tasks each.
pub fn cut_stages(
    plan: Arc<dyn ExecutionPlan>,
    query_id: &str,
    max_tasks: usize,
    clients: &Arc<ClientPool>,
) -> Result<StageGraph> {
    if max_tasks == 0 {
        return plan_err!("cannot plan a query for a cluster with no task slots");
    }
    let mut cutter = Cutter {
        query_id: query_id.to_string(),
        max_tasks,
        clients: Arc::clone(clients),
        stages: Vec::new(),
    };
    let root = cutter.cut(plan)?;
    let split = root.output_partitioning().partition_count();
    cutter.add_stage(StageKind::Final, root, split);
    let mut stages = cutter.stages;
    // A stage read through a gather reader by a stage with several tasks is
    // read once per task: keep its outputs replayable.
    let mut replay = vec![false; stages.len()];
    for s in &stages {
        let mut readers = Vec::new();
        collect_readers(&s.root, &mut readers);
        for (upstream, mode) in readers {
            if mode == ReaderMode::Gather && s.tasks > 1 {
                replay[upstream as usize] = true;
            }
        }
    }
    for (s, r) in stages.iter_mut().zip(replay) {
        s.replay = r;
    }
    Ok(StageGraph { stages })
}

/// `(stage id, mode)` of every reader in a fragment.
pub fn collect_readers(plan: &Arc<dyn ExecutionPlan>, out: &mut Vec<(u32, ReaderMode)>) {
    if let Some(r) = plan.downcast_ref::<StageReaderExec>() {
        out.push((r.stage_id(), r.mode()));
    }
    for c in plan.children() {
        collect_readers(c, out);
    }
}

struct Cutter {
    query_id: String,
    max_tasks: usize,
    clients: Arc<ClientPool>,
    stages: Vec<Stage>,
}

impl Cutter {
    fn add_stage(
        &mut self,
        kind: StageKind,
        root: Arc<dyn ExecutionPlan>,
        split_partitions: usize,
    ) -> u32 {
        let id = self.stages.len() as u32;
        let mut readers = Vec::new();
        collect_readers(&root, &mut readers);
        let mut inputs: Vec<u32> = readers.into_iter().map(|(s, _)| s).collect();
        inputs.sort_unstable();
        inputs.dedup();
        let tasks = if contains_unsplittable(&root) {
            1
        } else {
            split_partitions.clamp(1, self.max_tasks)
        };
        self.stages.push(Stage {
            id,
            kind,
            root,
            split_partitions: split_partitions.max(1),
            tasks,
            inputs,
            replay: false,
        });
        id
    }

    fn cut(&mut self, plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
        let children = plan.children();
        let mut new_children = Vec::with_capacity(children.len());
        let mut changed = false;
        for c in children {
            let n = self.cut(Arc::clone(c))?;
            changed |= !Arc::ptr_eq(&n, c);
            new_children.push(n);
        }
        let plan = if changed {
            replace_children_if_necessary(plan, new_children)?
        } else {
            plan
        };

        if let Some(rep) = plan.downcast_ref::<RepartitionExec>() {
            if let Partitioning::Hash(..) = rep.partitioning() {
                let split = rep.input().output_partitioning().partition_count();
                let partitioning = rep.partitioning().clone();
                let schema = plan.schema();
                let stage = self.add_stage(StageKind::Shuffle, Arc::clone(&plan), split);
                return Ok(Arc::new(StageReaderExec::shuffle(
                    self.query_id.clone(),
                    stage,
                    schema,
                    partitioning,
                    Arc::clone(&self.clients),
                )));
            }
        }
        let is_coalesce = plan.downcast_ref::<CoalescePartitionsExec>().is_some();
        let spm_ordering = plan
            .downcast_ref::<SortPreservingMergeExec>()
            .map(|s| s.expr().clone());
        if is_coalesce || spm_ordering.is_some() {
            let input = Arc::clone(plan.children()[0]);
            let split = input.output_partitioning().partition_count();
            if split > 1 {
                let stage = self.add_stage(StageKind::Gather, Arc::clone(&plan), split);
                let tasks = self.stages[stage as usize].tasks;
                let reader: Arc<dyn ExecutionPlan> = Arc::new(StageReaderExec::gather(
                    self.query_id.clone(),
                    stage,
                    input.schema(),
                    tasks,
                    spm_ordering,
                    Arc::clone(&self.clients),
                ));
                return replace_children_if_necessary(plan, vec![reader]);
            }
        }
        Ok(plan)
    }
}

/// A fragment cannot be split across tasks when it contains
/// - an operator whose every output partition depends on all its input
///   partitions (a non-hash repartition), or
/// - a join that collects its build side once and emits the build rows that
///   no probe partition matched (left / left semi / left anti / left mark /
///   full joins in `CollectLeft` mode, and nested-loop joins of those types):
///   it tracks matches across *all* probe partitions of one plan instance and
///   emits after the last one, so a task owning only some of them would never
///   emit, or would emit rows another task matched.
fn contains_unsplittable(plan: &Arc<dyn ExecutionPlan>) -> bool {
    if let Some(rep) = plan.downcast_ref::<RepartitionExec>() {
        if !matches!(rep.partitioning(), Partitioning::Hash(..)) {
            return true;
        }
    }
    if let Some(join) = plan.downcast_ref::<HashJoinExec>() {
        if *join.partition_mode() == PartitionMode::CollectLeft
            && emits_unmatched_build_rows(*join.join_type())
        {
            return true;
        }
    }
    if let Some(join) = plan.downcast_ref::<NestedLoopJoinExec>() {
        if emits_unmatched_build_rows(*join.join_type()) {
            return true;
        }
    }
    plan.children().into_iter().any(contains_unsplittable)
}

fn emits_unmatched_build_rows(join_type: JoinType) -> bool {
    matches!(
        join_type,
        JoinType::Left
            | JoinType::LeftAnti
            | JoinType::LeftSemi
            | JoinType::LeftMark
            | JoinType::Full
    )
}

/// Readers of a fragment pointed at the tasks of their upstream stages.
pub fn bind_readers(
    plan: Arc<dyn ExecutionPlan>,
    locations: &dyn Fn(u32) -> Vec<weft_proto::TaskLocation>,
) -> Result<Arc<dyn ExecutionPlan>> {
    if let Some(r) = plan.downcast_ref::<StageReaderExec>() {
        return Ok(Arc::new(r.with_tasks(locations(r.stage_id()))?));
    }
    let children = plan.children();
    if children.is_empty() {
        return Ok(plan);
    }
    let new_children = children
        .into_iter()
        .map(|c| bind_readers(Arc::clone(c), locations))
        .collect::<Result<Vec<_>>>()?;
    replace_children_if_necessary(plan, new_children)
}
