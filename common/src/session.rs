//! DataFusion session settings shared by the coordinator and the workers.
//!
//! A few DataFusion features assume the whole plan runs in one process. Weft cuts
//! plans into stages that run on different workers, so they are turned off here
//! (see `docs/architecture.md`, "DataFusion settings"):
//!
//! - **Dynamic filters** (`enable_dynamic_filter_pushdown` and the join / TopK /
//!   aggregate variants): a hash join or TopK publishes a filter that a scan in
//!   the same process reads while running. Across a stage cut the producer and
//!   the scan live in different tasks, often different workers, so the filter
//!   would never be updated (or the encoded plan would carry a stale snapshot).
//! - **Physical uncorrelated scalar subqueries** (`ScalarSubqueryExec`): the
//!   subquery's result is shared through an in-process container with the
//!   expressions that read it; once a cut separates them the value is missing.
//!   With the option off, scalar subqueries are planned as joins, which the stage
//!   graph handles like any other join.
//! - **Round-robin repartition**: it spreads one stream over N partitions, which
//!   means every partition of its output depends on every input partition, so
//!   it cannot be split across tasks. Parallelism comes from file scan
//!   partitions and hash shuffles instead.
//! - **File-scan work stealing**: partitions of one scan take files from each
//!   other at run time. A task runs only the partitions it owns, so its
//!   partitions would steal (and read) the files of partitions owned by other
//!   tasks: every task would read the whole table.
//! - **Utf8View**: SQL string types are planned as `Utf8`, but Parquet string
//!   columns are read as `Utf8View`, which decodes faster (TPC-H SF1: total
//!   1.43x -> 1.37x DataFusion's time, q1 419 -> 329 ms). View arrays reference
//!   shared buffers, so workers compact them before sending a batch (sliced
//!   view batches once produced oversized Flight frames), and results leave
//!   as `Utf8` (`plain_string_output` in the coordinator).

use datafusion::execution::config::SessionConfig;

/// Number of partitions Weft plans with when the cluster size is unknown.
pub const DEFAULT_TARGET_PARTITIONS: usize = 4;

/// The session configuration every Weft process plans and executes with.
pub fn weft_session_config(target_partitions: usize) -> SessionConfig {
    let mut config = SessionConfig::new()
        .with_target_partitions(target_partitions.max(1))
        .with_information_schema(true)
        .with_round_robin_repartition(false);
    let opts = config.options_mut();
    opts.optimizer.enable_dynamic_filter_pushdown = false;
    opts.optimizer.enable_join_dynamic_filter_pushdown = false;
    opts.optimizer.enable_topk_dynamic_filter_pushdown = false;
    opts.optimizer.enable_aggregate_dynamic_filter_pushdown = false;
    opts.optimizer.enable_physical_uncorrelated_scalar_subquery = false;
    opts.sql_parser.map_string_types_to_utf8view = false;
    opts.execution.parquet.schema_force_view_types = true;
    opts.execution.enable_file_stream_work_stealing = false;
    config
}

/// Applies `key = value` session options received from the coordinator.
pub fn apply_session_options<'a>(
    config: &mut SessionConfig,
    options: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> datafusion::error::Result<()> {
    for (k, v) in options {
        config.options_mut().set(k, v)?;
    }
    Ok(())
}

/// The session options worth shipping with a task (those that affect execution).
pub fn session_options_for_tasks(
    config: &SessionConfig,
) -> std::collections::HashMap<String, String> {
    config
        .options()
        .entries()
        .into_iter()
        .filter(|e| {
            e.key.starts_with("datafusion.execution.") || e.key.starts_with("datafusion.optimizer.")
        })
        .filter_map(|e| e.value.map(|v| (e.key, v)))
        .collect()
}
