//! Broadcast joins chosen for a cluster, not for one process.
//!
//! DataFusion's `JoinSelection` collects a join's build side into every
//! partition (`CollectLeft`) only below a fixed size (1 MiB / 128 Ki rows);
//! above it both sides are hash-repartitioned. In one process a
//! repartition is a cheap in-memory hand-over, so that is the right call
//! there. In Weft a repartition is a shuffle: every probe row is hashed,
//! IPC-encoded, sent to another worker (half of them with two workers) and
//! decoded, and the stage is cut in two. A broadcast instead sends the build
//! side once to each of the T tasks of the join's stage, builds it T times,
//! and leaves the probe side where it is, in the same stage as its scan.
//!
//! With per-row costs of moving and of building about equal, a broadcast
//! moves and builds `b * T` rows against `b + p` moved plus `b` built for
//! the shuffle, so it wins while `2 * b * (T - 1) < p`. [`BroadcastJoins`]
//! runs right after `JoinSelection` and turns a partitioned hash join into
//! a broadcast when the statistics say so and
//! - the build side is at most [`MAX_BROADCAST_BYTES`] (each task holds a
//!   copy; the replayed build side stays in the producing worker's memory
//!   until the query ends),
//! - the join does not emit unmatched build rows (left, left semi/anti/mark,
//!   full): those need every probe partition in one plan instance, which
//!   would force the whole stage into one task (see `stages.rs`),
//! - it is not a null-aware anti join,
//! - when the workers have a `--memory-limit`, the copies a worker would
//!   hold (one per task of the join's stage placed there, hash table
//!   included) take at most [`MAX_BROADCAST_MEMORY_SHARE`] of its memory.
//!   DataFusion's hash join cannot spill, and a broadcast multiplies its
//!   build side by the task count where a shuffle divides it by the worker
//!   count.
//!
//! Without row or byte estimates for both sides nothing changes.

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::{JoinType, Result};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};
use datafusion::physical_plan::ExecutionPlan;

/// Largest estimated build side that is broadcast.
pub const MAX_BROADCAST_BYTES: usize = 64 * 1024 * 1024;

/// How many times larger than the build side the probe side must be, per
/// task beyond the first, for a broadcast (see the module documentation).
pub const PROBE_FACTOR: usize = 4;

/// Share of a worker's `--memory-limit` the copies of one broadcast build
/// side may take there: the rest is for the query's other joins,
/// aggregates and sorts, which run at the same time (stages pipeline).
pub const MAX_BROADCAST_MEMORY_SHARE: f64 = 0.125;

/// Bytes of hash table per build row on top of the row (DataFusion's join
/// hash map entry and chain link).
const HASH_ENTRY_BYTES: usize = 24;

/// The workers a query is planned for, as far as memory goes: a session
/// config extension the coordinator sets per query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WorkerMemory {
    /// Workers the query's tasks are spread over.
    pub workers: usize,
    /// The smallest `--memory-limit` among them; `None` when none has one.
    pub limit: Option<u64>,
}

impl WorkerMemory {
    /// From the workers a query is planned for.
    pub fn of(workers: &[weft_common::registry::WorkerInfo]) -> Self {
        Self {
            workers: workers.len(),
            limit: workers.iter().filter_map(|w| w.memory_limit).min(),
        }
    }

    /// Whether `tasks` copies of a build side of `build` (one per task,
    /// spread over the workers) fit a worker's share for one broadcast.
    fn fits_broadcast(&self, build: Size, tasks: usize) -> bool {
        let Some(limit) = self.limit else {
            return true;
        };
        let rows = build.rows.unwrap_or(0);
        let bytes = build.bytes_or_assumed().unwrap_or(0);
        let copy = bytes.saturating_add(rows.saturating_mul(HASH_ENTRY_BYTES));
        let copies = tasks.div_ceil(self.workers.max(1));
        (copy.saturating_mul(copies) as f64) <= limit as f64 * MAX_BROADCAST_MEMORY_SHARE
    }
}

impl datafusion::config::ConfigExtension for WorkerMemory {
    const PREFIX: &'static str = "weft_worker_memory";
}

impl datafusion::config::ExtensionOptions for WorkerMemory {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
    fn cloned(&self) -> Box<dyn datafusion::config::ExtensionOptions> {
        Box::new(*self)
    }
    fn set(&mut self, key: &str, _value: &str) -> Result<()> {
        datafusion::common::plan_err!(
            "weft_worker_memory.{key} cannot be set: it follows the workers' --memory-limit"
        )
    }
    fn entries(&self) -> Vec<datafusion::config::ConfigEntry> {
        Vec::new()
    }
}

/// Physical optimizer rule; see the module documentation.
#[derive(Debug, Default)]
pub struct BroadcastJoins;

/// Estimated output of a plan.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Size {
    rows: Option<usize>,
    bytes: Option<usize>,
}

fn estimate(plan: &dyn ExecutionPlan) -> Size {
    match StatisticsContext::new().compute(plan, &StatisticsArgs::new()) {
        Ok(stats) => Size {
            rows: stats.num_rows.get_value().copied(),
            bytes: stats.total_byte_size.get_value().copied(),
        },
        Err(_) => Size {
            rows: None,
            bytes: None,
        },
    }
}

/// Bytes assumed per row when only rows are known (for the memory cap).
const ASSUMED_ROW_BYTES: usize = 64;

impl Size {
    /// The byte estimate, else [`ASSUMED_ROW_BYTES`] per estimated row.
    fn bytes_or_assumed(&self) -> Option<usize> {
        self.bytes
            .or_else(|| self.rows.map(|r| r.saturating_mul(ASSUMED_ROW_BYTES)))
    }
}

/// Compares rows when both sides have a row estimate (building and hashing
/// cost per row), else bytes; the build side must also fit the memory cap.
fn should_broadcast(build: Size, probe: Size, tasks: usize) -> bool {
    let Some(build_bytes) = build.bytes_or_assumed() else {
        return false;
    };
    if build_bytes > MAX_BROADCAST_BYTES {
        return false;
    }
    match (build.rows, probe.rows, build.bytes, probe.bytes) {
        (Some(b), Some(p), _, _) | (_, _, Some(b), Some(p)) => broadcast_wins(b, p, tasks),
        _ => false,
    }
}

/// Whether broadcasting a build side of size `build` beats shuffling both
/// sides for a probe side of size `probe`, with `tasks` tasks per stage:
/// the probe side must be [`PROBE_FACTOR`] times larger per extra task.
fn broadcast_wins(build: usize, probe: usize, tasks: usize) -> bool {
    PROBE_FACTOR
        .saturating_mul(build)
        .saturating_mul(tasks.saturating_sub(1))
        < probe
}

fn keeps_stage_splittable(join_type: JoinType) -> bool {
    matches!(
        join_type,
        JoinType::Inner
            | JoinType::Right
            | JoinType::RightSemi
            | JoinType::RightAnti
            | JoinType::RightMark
    )
}

impl BroadcastJoins {
    fn rewrite(
        join: &HashJoinExec,
        tasks: usize,
        memory: WorkerMemory,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        if *join.partition_mode() != PartitionMode::Partitioned
            || join.null_aware
            || !keeps_stage_splittable(*join.join_type())
        {
            return Ok(None);
        }
        let build = estimate(join.left().as_ref());
        let probe = estimate(join.right().as_ref());
        if !should_broadcast(build, probe, tasks) {
            return Ok(None);
        }
        if !memory.fits_broadcast(build, tasks) {
            tracing::debug!(
                ?build,
                tasks,
                limit = memory.limit,
                "broadcast copies would not fit the workers' memory: shuffled instead"
            );
            return Ok(None);
        }
        let plan = join
            .builder()
            .with_partition_mode(PartitionMode::CollectLeft)
            .build()?;
        Ok(Some(Arc::new(plan)))
    }
}

impl PhysicalOptimizerRule for BroadcastJoins {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let tasks = config.execution.target_partitions.max(1);
        let memory = config
            .extensions
            .get::<WorkerMemory>()
            .copied()
            .unwrap_or_default();
        plan.transform_up(|p| {
            let Some(join) = p.downcast_ref::<HashJoinExec>() else {
                return Ok(Transformed::no(p));
            };
            Ok(match Self::rewrite(join, tasks, memory)? {
                Some(new) => Transformed::yes(new),
                None => Transformed::no(p),
            })
        })
        .data()
    }

    fn name(&self) -> &str {
        "weft_broadcast_joins"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;
    use datafusion::common::NullEquality;
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::physical_expr::expressions::Column;

    #[test]
    fn broadcast_pays_off_when_the_build_side_is_small_enough_for_the_task_count() {
        // Two tasks: the probe side must be 4x the build side.
        assert!(broadcast_wins(100, 401, 2));
        assert!(!broadcast_wins(100, 400, 2));
        // Eight tasks: 28x.
        assert!(broadcast_wins(100, 2801, 8));
        assert!(!broadcast_wins(100, 2800, 8));
        // One task: nothing is shuffled either way.
        assert!(broadcast_wins(100, 1, 1));
    }

    /// A scan of `rows` rows (exact statistics).
    fn scan(rows: i64) -> Arc<dyn ExecutionPlan> {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(Int64Array::from_iter_values(0..rows))],
        )
        .expect("batch");
        MemorySourceConfig::try_new_exec(&[vec![batch]], schema, None).expect("scan")
    }

    fn mode_after_rule(build: i64, probe: i64, join_type: JoinType, tasks: usize) -> PartitionMode {
        mode_with_memory(build, probe, join_type, tasks, None)
    }

    fn mode_with_memory(
        build: i64,
        probe: i64,
        join_type: JoinType,
        tasks: usize,
        memory: Option<WorkerMemory>,
    ) -> PartitionMode {
        let on = vec![(
            Arc::new(Column::new("k", 0)) as _,
            Arc::new(Column::new("k", 0)) as _,
        )];
        let join = HashJoinExec::try_new(
            scan(build),
            scan(probe),
            on,
            None,
            &join_type,
            None,
            PartitionMode::Partitioned,
            NullEquality::NullEqualsNothing,
            false,
        )
        .expect("join");
        let mut config = ConfigOptions::new();
        config.execution.target_partitions = tasks;
        if let Some(memory) = memory {
            config.extensions.insert(memory);
        }
        let plan = BroadcastJoins
            .optimize(Arc::new(join), &config)
            .expect("optimize");
        *plan
            .downcast_ref::<HashJoinExec>()
            .expect("still a hash join")
            .partition_mode()
    }

    #[test]
    fn small_build_sides_are_broadcast_on_a_cluster() {
        assert_eq!(
            mode_after_rule(1_000, 10_000, JoinType::Inner, 2),
            PartitionMode::CollectLeft
        );
        assert_eq!(
            mode_after_rule(1_000, 10_000, JoinType::RightSemi, 2),
            PartitionMode::CollectLeft
        );
        // Not enough larger for the task count: both sides are shuffled.
        assert_eq!(
            mode_after_rule(1_000, 3_000, JoinType::Inner, 2),
            PartitionMode::Partitioned
        );
        assert_eq!(
            mode_after_rule(1_000, 10_000, JoinType::Inner, 8),
            PartitionMode::Partitioned
        );
        // A left join emits unmatched build rows: a broadcast would force
        // its stage into one task.
        assert_eq!(
            mode_after_rule(1_000, 10_000, JoinType::Left, 2),
            PartitionMode::Partitioned
        );
    }

    #[test]
    fn broadcast_copies_must_fit_a_share_of_the_workers_memory() {
        let on = |workers, limit| WorkerMemory {
            workers,
            limit: Some(limit),
        };
        // 1000 rows in 8 KB: 8 KB + 24 KB of hash table per copy.
        let build = Size {
            rows: Some(1_000),
            bytes: Some(8_000),
        };
        // Two tasks on two workers: one copy each, within an eighth of 256 KB.
        assert!(on(2, 256_000).fits_broadcast(build, 2));
        assert!(!on(2, 255_000).fits_broadcast(build, 2));
        // Four tasks on two workers: two copies each.
        assert!(!on(2, 256_000).fits_broadcast(build, 4));
        assert!(on(2, 512_000).fits_broadcast(build, 4));
        // No limit, no constraint.
        assert!(WorkerMemory::default().fits_broadcast(build, 4));

        // The rule: a join it broadcasts without a limit is shuffled when
        // the copies would not fit.
        assert_eq!(
            mode_with_memory(1_000, 10_000, JoinType::Inner, 2, Some(on(2, 1 << 30))),
            PartitionMode::CollectLeft
        );
        assert_eq!(
            mode_with_memory(1_000, 10_000, JoinType::Inner, 2, Some(on(2, 64 * 1024))),
            PartitionMode::Partitioned
        );
    }
}
