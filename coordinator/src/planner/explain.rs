//! `EXPLAIN` of the distributed plan: the stages a query is cut into, how
//! many tasks each gets and on which workers, what each reads from which
//! stage and how (shuffle, gather, broadcast; in process when the upstream
//! task runs on the reader's worker), and each stage's fragment, where a
//! remote scan shows the SQL its source runs.
//!
//! `EXPLAIN ANALYZE` runs the query distributed and prints the same stages
//! with their tasks' metrics merged (see [`analyzed`]).
//!
//! ```text
//! 3 stages, 9 tasks on 2 workers
//!
//! Stage 2 (final, 1 task): reads stage 1 by gather (4 streams, 2 in process)
//!   task 0 on worker-a
//!   SortPreservingMergeExec: ...
//!     StageReaderExec: stage=1, mode=gather, ...
//! Stage 1 (gather, 4 tasks): reads stage 0 by shuffle (16 streams, 8 in process)
//!   ...
//! ```

use std::fmt::Write;

use datafusion::physical_plan::displayable;
use weft_common::exchange::ReaderMode;
use weft_common::registry::WorkerInfo;

use super::stages::{collect_readers, StageGraph, StageKind};
use crate::query::progress::QueryProgress;

/// Renders `graph`, placed as `placement` (worker of every task of every
/// stage), final stage first; `verbose` (EXPLAIN VERBOSE) shows operators in
/// full (a remote scan's whole SQL instead of shortened IN lists).
pub fn render(graph: &StageGraph, placement: &[Vec<WorkerInfo>], verbose: bool) -> String {
    let mut out = summary(graph, placement);
    for block in stage_blocks(graph, placement, verbose).iter().rev() {
        out.push('\n');
        out.push_str(block);
    }
    out
}

fn summary(graph: &StageGraph, placement: &[Vec<WorkerInfo>]) -> String {
    let tasks: usize = graph.stages.iter().map(|s| s.tasks).sum();
    let workers: std::collections::BTreeSet<&str> =
        placement.iter().flatten().map(|w| w.id.as_str()).collect();
    format!(
        "{} stage{}, {tasks} task{} on {} worker{}\n",
        graph.stages.len(),
        plural(graph.stages.len()),
        plural(tasks),
        workers.len(),
        plural(workers.len())
    )
}

/// One block per stage, indexed by stage id: a header line (kind, tasks,
/// what it reads and how), a line per worker with its tasks, the fragment.
pub fn stage_blocks(
    graph: &StageGraph,
    placement: &[Vec<WorkerInfo>],
    verbose: bool,
) -> Vec<String> {
    let mut blocks = Vec::with_capacity(graph.stages.len());
    for stage in &graph.stages {
        let mut out = String::new();
        let kind = match stage.kind {
            StageKind::Shuffle => format!(
                "shuffle into {} buckets",
                stage
                    .root
                    .properties()
                    .output_partitioning()
                    .partition_count()
            ),
            StageKind::Gather if stage.replay => "broadcast".to_string(),
            StageKind::Gather => "gather".to_string(),
            StageKind::Final => "final".to_string(),
        };
        let _ = write!(
            out,
            "Stage {} ({kind}, {} task{}",
            stage.id,
            stage.tasks,
            plural(stage.tasks)
        );
        if stage.split_partitions > stage.tasks {
            let _ = write!(out, ", {} partitions", stage.split_partitions);
        }
        out.push(')');
        let mut readers = Vec::new();
        collect_readers(&stage.root, &mut readers);
        readers.dedup();
        let here = &placement[stage.id as usize];
        let reads: Vec<String> = readers
            .iter()
            .map(|(upstream, mode)| {
                let up = &graph.stages[*upstream as usize];
                let there = &placement[up.id as usize];
                let how = match mode {
                    ReaderMode::Shuffle => "shuffle",
                    ReaderMode::Gather if up.replay => "broadcast",
                    ReaderMode::Gather => "gather",
                };
                // Every task of this stage reads every upstream task.
                let streams = here.len() * there.len();
                let local = here
                    .iter()
                    .map(|w| there.iter().filter(|u| u.id == w.id).count())
                    .sum::<usize>();
                format!(
                    "stage {upstream} by {how} ({streams} stream{}, {local} in process)",
                    plural(streams)
                )
            })
            .collect();
        if !reads.is_empty() {
            let _ = write!(out, ": reads {}", reads.join(", "));
        }
        out.push('\n');
        let mut by_worker: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
        for (t, w) in here.iter().enumerate() {
            by_worker.entry(w.id.as_str()).or_default().push(t);
        }
        for (worker, tasks) in by_worker {
            let list: Vec<String> = tasks.iter().map(usize::to_string).collect();
            let _ = writeln!(
                out,
                "  task{} {} on {worker}",
                plural(tasks.len()),
                list.join(", ")
            );
        }
        for line in displayable(stage.root.as_ref())
            .indent(verbose)
            .to_string()
            .lines()
        {
            let _ = writeln!(out, "  {line}");
        }
        blocks.push(out);
    }
    blocks
}

/// EXPLAIN ANALYZE's report: the query's totals, then every stage (final
/// first) with its tasks' metrics merged: output rows and bytes, CPU time
/// of its operators, rows and bytes read from the stages below, spill.
pub fn analyzed(
    query_id: &str,
    blocks: &[String],
    progress: &QueryProgress,
    result_rows: u64,
    result_bytes: u64,
    elapsed: std::time::Duration,
) -> String {
    let tasks: usize = progress.stages.iter().map(|s| s.tasks_total).sum();
    let mut out = format!(
        "query {query_id}: {} stage{}, {tasks} task{}, {} ms, {result_rows} result row{} ({})\n",
        progress.stages.len(),
        plural(progress.stages.len()),
        plural(tasks),
        elapsed.as_millis(),
        plural(result_rows as usize),
        bytes(result_bytes)
    );
    for stage in progress.stages.iter().rev() {
        let block = blocks
            .get(stage.stage_id as usize)
            .map(String::as_str)
            .unwrap_or("");
        let mut lines = block.lines();
        out.push('\n');
        out.push_str(lines.next().unwrap_or(&format!("Stage {}", stage.stage_id)));
        out.push('\n');
        let _ = writeln!(
            out,
            "  metrics: tasks {}/{} done{}, output {} rows ({}), compute {:.1} ms, input {} rows ({}), spilled {}",
            stage.tasks_done,
            stage.tasks_total,
            if stage.tasks_failed > 0 {
                format!(", {} failed", stage.tasks_failed)
            } else {
                String::new()
            },
            stage.rows_out,
            bytes(stage.bytes_out),
            stage.compute_nanos as f64 / 1e6,
            stage.input_rows,
            bytes(stage.input_bytes),
            bytes(stage.spilled_bytes),
        );
        for line in lines {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
