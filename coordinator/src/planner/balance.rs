//! Parquet scans split at row-group boundaries, balanced across partitions.
//!
//! DataFusion splits a scan's files into `target_partitions` byte ranges of
//! equal size, and a Parquet row group is read by the range that contains
//! its first page. With large row groups that is uneven: TPC-H `lineitem`
//! in two files of three row groups each is split into ranges that read
//! four and two row groups. A single DataFusion process evens this out at
//! run time (sibling partitions take files from a shared queue, "work
//! stealing"); Weft cannot, because a task runs only the partitions it owns
//! and must not read another task's files, so one task would do twice the
//! work of the other (TPC-H q1 and q6 ran 30% slower for this alone).
//!
//! [`balance_parquet_scans`] therefore reads the footers of the scanned
//! files (through the runtime's file-metadata cache, so a footer is read
//! once), and reassigns whole row groups to the scan's partitions so each
//! gets about the same number of rows, as one contiguous run of row groups
//! in file order per partition. A partition's row groups of one file become byte ranges
//! `[first page of the first group, first page of the next group)`, which
//! the reader maps back to exactly those row groups. The number of
//! partitions does not change.
//!
//! Scans are left alone when their file groups carry meaning (declared
//! output partitioning or ordering, order-preserving scans), when a file is
//! only partly scanned or carries a provider's own reading plan (file
//! extensions), or when a footer cannot be read (the scan then runs
//! as DataFusion planned it).

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::common::Result;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::metadata::DFParquetMetadata;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfig, FileScanConfigBuilder};
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::parquet::file::metadata::ParquetMetaData;
use datafusion::physical_plan::ExecutionPlan;
use futures::{StreamExt, TryStreamExt};

/// Footers read at once.
const FOOTER_READS: usize = 32;

/// One row group: byte range `[start, end)` in its file and its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RowGroupSpan {
    start: u64,
    end: u64,
    rows: u64,
}

/// Rebalances every eligible Parquet scan of `plan`; see the module docs.
pub async fn balance_parquet_scans(
    plan: Arc<dyn ExecutionPlan>,
    runtime: &RuntimeEnv,
) -> Result<Arc<dyn ExecutionPlan>> {
    let mut files: HashMap<String, (PartitionedFile, FileScanConfig)> = HashMap::new();
    plan.apply(|node| {
        if let Some(config) = eligible_scan(node.as_ref()) {
            for f in config.file_groups.iter().flat_map(|g| g.iter()) {
                files
                    .entry(f.object_meta.location.to_string())
                    .or_insert_with(|| (f.clone(), config.clone()));
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    if files.is_empty() {
        return Ok(plan);
    }
    let cache = runtime.cache_manager.get_file_metadata_cache();
    let fetches = files.into_iter().map(|(path, (file, config))| {
        let cache = Arc::clone(&cache);
        async move {
            let store = runtime.object_store(&config.object_store_url)?;
            let metadata = DFParquetMetadata::new(store.as_ref(), &file.object_meta)
                .with_metadata_size_hint(file.metadata_size_hint)
                .with_file_metadata_cache(Some(cache))
                .fetch_metadata()
                .await?;
            Ok::<_, datafusion::error::DataFusionError>((
                path,
                row_group_spans(&metadata, file.object_meta.size),
            ))
        }
    });
    let spans: Result<Vec<_>> = futures::stream::iter(fetches)
        .buffer_unordered(FOOTER_READS)
        .try_collect()
        .await;
    let spans: HashMap<String, Vec<RowGroupSpan>> = match spans {
        Ok(v) => v.into_iter().collect(),
        Err(e) => {
            tracing::debug!("Parquet scans keep DataFusion's byte ranges: {e}");
            return Ok(plan);
        }
    };
    plan.transform_up(|node| {
        let Some(config) = eligible_scan(node.as_ref()) else {
            return Ok(Transformed::no(node));
        };
        match rebalance(config, &spans) {
            Some(groups) => {
                let config = FileScanConfigBuilder::from(config.clone())
                    .with_file_groups(groups)
                    .build();
                Ok(Transformed::yes(DataSourceExec::from_data_source(config)))
            }
            None => Ok(Transformed::no(node)),
        }
    })
    .data()
}

/// The scan's config when it reads Parquet in interchangeable partitions.
fn eligible_scan(node: &dyn ExecutionPlan) -> Option<&FileScanConfig> {
    let exec = node.downcast_ref::<DataSourceExec>()?;
    let config = exec.data_source().downcast_ref::<FileScanConfig>()?;
    (config.file_source().file_type() == "parquet"
        && config.file_groups.len() > 1
        && !config.preserve_order
        && config.output_partitioning.is_none()
        && config.output_ordering.is_empty())
    .then_some(config)
}

/// Row groups of a file in file order; a group ends where the next begins
/// (the last one at the end of the file).
fn row_group_spans(metadata: &ParquetMetaData, file_size: u64) -> Vec<RowGroupSpan> {
    let mut starts: Vec<(u64, u64)> = metadata
        .row_groups()
        .iter()
        .filter(|rg| rg.num_columns() > 0)
        .map(|rg| {
            let col = rg.column(0);
            let start = col
                .dictionary_page_offset()
                .unwrap_or_else(|| col.data_page_offset());
            (start.max(0) as u64, rg.num_rows().max(0) as u64)
        })
        .collect();
    starts.sort_unstable();
    let ends: Vec<u64> = starts
        .iter()
        .skip(1)
        .map(|(s, _)| *s)
        .chain(std::iter::once(file_size))
        .collect();
    starts
        .into_iter()
        .zip(ends)
        .map(|((start, rows), end)| RowGroupSpan { start, end, rows })
        .collect()
}

/// New file groups with whole row groups spread evenly by rows, or `None`
/// when the scan must stay as planned.
fn rebalance(
    config: &FileScanConfig,
    spans: &HashMap<String, Vec<RowGroupSpan>>,
) -> Option<Vec<FileGroup>> {
    // Distinct files in plan order, each scanned whole (no range, or
    // ranges that cover it exactly).
    let mut order: Vec<String> = Vec::new();
    let mut template: HashMap<String, PartitionedFile> = HashMap::new();
    let mut ranges: HashMap<String, Vec<(u64, u64)>> = HashMap::new();
    for f in config.file_groups.iter().flat_map(|g| g.iter()) {
        if !f.extensions.is_empty() {
            // A provider's own per-file reading plan (e.g. chosen row groups).
            return None;
        }
        let path = f.object_meta.location.to_string();
        if !template.contains_key(&path) {
            order.push(path.clone());
            let mut whole = f.clone();
            whole.range = None;
            template.insert(path.clone(), whole);
        }
        let size = f.object_meta.size;
        let range = match &f.range {
            Some(r) => (r.start.max(0) as u64, r.end.max(0) as u64),
            None => (0, size),
        };
        ranges.entry(path).or_default().push(range);
    }
    for (path, mut r) in ranges {
        r.sort_unstable();
        let size = template[&path].object_meta.size;
        let mut covered = 0;
        for (start, end) in r {
            if start != covered {
                return None;
            }
            covered = end;
        }
        if covered != size {
            return None;
        }
    }

    // Row groups in file order, cut into one contiguous run per partition
    // with about the same rows: each partition reads few, long byte ranges
    // (a longest-first assignment balanced as well but interleaved equal row
    // groups, so every task opened hundreds of one-row-group ranges).
    let partitions = config.file_groups.len();
    let mut units: Vec<(usize, usize, RowGroupSpan)> = Vec::new();
    for (file_index, path) in order.iter().enumerate() {
        let file_spans = spans.get(path)?;
        units.extend(
            file_spans
                .iter()
                .enumerate()
                .map(|(i, s)| (file_index, i, *s)),
        );
    }
    let assigned = contiguous_runs(
        &units.iter().map(|u| u.2.rows).collect::<Vec<_>>(),
        partitions,
    );

    // Each partition reads its row groups in file order, adjacent ones of
    // a file as one range.
    let groups = assigned
        .into_iter()
        .map(|mut members| {
            members.sort_by_key(|&u| (units[u].0, units[u].1));
            let mut files: Vec<PartitionedFile> = Vec::new();
            let mut current: Option<(usize, usize, u64, u64)> = None;
            for u in members {
                let (file, index, span) = units[u];
                current = match current {
                    Some((f, last, start, _)) if f == file && last + 1 == index => {
                        Some((f, index, start, span.end))
                    }
                    previous => {
                        if let Some((f, _, start, end)) = previous {
                            files.push(ranged(&template[&order[f]], start, end));
                        }
                        Some((file, index, span.start, span.end))
                    }
                };
            }
            if let Some((f, _, start, end)) = current {
                files.push(ranged(&template[&order[f]], start, end));
            }
            FileGroup::new(files)
        })
        .collect();
    Some(groups)
}

/// Cuts `rows` (row counts in reading order) into `partitions` contiguous
/// runs of about equal total: a run ends where the running total is nearest
/// its share (partition p ends near (p + 1) / partitions of all rows).
/// Returns the unit indices of every partition; some may be empty when
/// there are fewer units than partitions.
fn contiguous_runs(rows: &[u64], partitions: usize) -> Vec<Vec<usize>> {
    let partitions = partitions.max(1);
    let total: u128 = rows.iter().map(|&r| u128::from(r)).sum();
    let mut assigned: Vec<Vec<usize>> = vec![Vec::new(); partitions];
    let (mut p, mut done) = (0usize, 0u128);
    for (i, &r) in rows.iter().enumerate() {
        let r = u128::from(r);
        while p + 1 < partitions {
            let boundary = total * (p as u128 + 1) / partitions as u128;
            // Move on when this partition has its share, or when taking the
            // unit would overshoot the share by more than leaving it short.
            if done >= boundary || (done + r > boundary && done + r - boundary > boundary - done) {
                p += 1;
            } else {
                break;
            }
        }
        assigned[p].push(i);
        done += r;
    }
    assigned
}

fn ranged(file: &PartitionedFile, start: u64, end: u64) -> PartitionedFile {
    file.clone().with_range(start as i64, end as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::parquet::file::properties::WriterProperties;
    use datafusion::physical_plan::ExecutionPlanProperties;
    use datafusion::prelude::{ParquetReadOptions, SessionContext};
    use futures::TryStreamExt;

    /// Two files: one of 4 row groups of 1,000 rows, one of 2 row groups.
    fn write_files(dir: &std::path::Path) {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        for (name, groups) in [("a.parquet", 4i64), ("b.parquet", 2)] {
            let file = std::fs::File::create(dir.join(name)).expect("create");
            let props = WriterProperties::builder()
                .set_max_row_group_row_count(Some(1_000))
                .build();
            let mut w =
                ArrowWriter::try_new(file, Arc::clone(&schema), Some(props)).expect("writer");
            let offset = if name == "a.parquet" { 0 } else { 1_000_000 };
            let values = Int64Array::from_iter_values(offset..offset + groups * 1_000);
            w.write(
                &RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(values)]).expect("batch"),
            )
            .expect("write");
            w.close().expect("close");
        }
    }

    /// `SELECT n` over the files of [`write_files`] in `dir`, planned with
    /// Weft's settings (no work stealing between a scan's partitions).
    async fn plan_scan(dir: &std::path::Path) -> (SessionContext, Arc<dyn ExecutionPlan>) {
        write_files(dir);
        let ctx = SessionContext::new_with_config(weft_common::session::weft_session_config(2));
        ctx.register_parquet(
            "t",
            dir.to_str().expect("path"),
            ParquetReadOptions::default(),
        )
        .await
        .expect("register");
        let planned = ctx
            .sql("SELECT n FROM t")
            .await
            .expect("sql")
            .create_physical_plan()
            .await
            .expect("plan");
        (ctx, planned)
    }

    async fn partition_rows(
        plan: &Arc<dyn ExecutionPlan>,
        ctx: &SessionContext,
    ) -> (Vec<usize>, Vec<i64>) {
        let mut counts = Vec::new();
        let mut values = Vec::new();
        for p in 0..plan.output_partitioning().partition_count() {
            let batches: Vec<RecordBatch> = plan
                .execute(p, ctx.task_ctx())
                .expect("execute")
                .try_collect()
                .await
                .expect("collect");
            counts.push(batches.iter().map(|b| b.num_rows()).sum());
            for b in &batches {
                let a = b
                    .column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .expect("int64");
                values.extend(a.values().iter().copied());
            }
        }
        values.sort_unstable();
        (counts, values)
    }

    #[tokio::test]
    async fn row_groups_are_spread_evenly_and_read_exactly_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ctx, planned) = plan_scan(dir.path()).await;
        let balanced = balance_parquet_scans(Arc::clone(&planned), &ctx.runtime_env())
            .await
            .expect("balance");

        let (before, expected) = partition_rows(&planned, &ctx).await;
        let (after, values) = partition_rows(&balanced, &ctx).await;
        assert_eq!(expected.len(), 6_000);
        assert_eq!(values, expected, "every row exactly once");
        assert_eq!(
            before,
            vec![4_000, 2_000],
            "one file per partition as planned"
        );
        assert_eq!(after, vec![3_000, 3_000], "balanced");
        // Contiguous runs: a:0-2 | a:3 + b:0-1, so three byte ranges in all
        // (row groups dealt out one by one would make six).
        let mut ranges = Vec::new();
        balanced
            .apply(|n| {
                if let Some(c) = eligible_scan(n.as_ref()) {
                    ranges.extend(c.file_groups.iter().map(|g| g.len()));
                }
                Ok(TreeNodeRecursion::Continue)
            })
            .expect("walk");
        assert_eq!(ranges, vec![1, 2], "byte ranges per partition");
    }

    #[test]
    fn runs_are_contiguous_and_even() {
        // 524 equal row groups (TPC-H SF10 lineitem) on 2 partitions: two runs.
        let runs = contiguous_runs(&[100; 524], 2);
        assert_eq!(runs[0], (0..262).collect::<Vec<_>>());
        assert_eq!(runs[1], (262..524).collect::<Vec<_>>());
        // Uneven groups: each run is contiguous and within one group of its share.
        let rows = [500, 100, 100, 900, 300, 300, 300, 200];
        let runs = contiguous_runs(&rows, 3);
        let flat: Vec<usize> = runs.iter().flatten().copied().collect();
        assert_eq!(
            flat,
            (0..rows.len()).collect::<Vec<_>>(),
            "in order, each once"
        );
        let share = rows.iter().sum::<u64>() / 3;
        for run in &runs {
            let sum: u64 = run.iter().map(|&i| rows[i]).sum();
            assert!(sum.abs_diff(share) <= 900, "{runs:?}");
        }
        assert_eq!(
            contiguous_runs(&[7], 4)
                .iter()
                .filter(|r| !r.is_empty())
                .count(),
            1
        );
        assert_eq!(contiguous_runs(&[], 3), vec![Vec::<usize>::new(); 3]);
    }

    #[tokio::test]
    async fn a_partly_scanned_file_is_left_as_planned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_ctx, planned) = plan_scan(dir.path()).await;
        let mut config: Option<FileScanConfig> = None;
        planned
            .apply(|n| {
                if let Some(c) = eligible_scan(n.as_ref()) {
                    config = Some(c.clone());
                }
                Ok(TreeNodeRecursion::Continue)
            })
            .expect("walk");
        let mut config = config.expect("a parquet scan");
        let spans: HashMap<String, Vec<RowGroupSpan>> = config
            .file_groups
            .iter()
            .flat_map(|g| g.iter())
            .map(|f| {
                let span = RowGroupSpan {
                    start: 4,
                    end: f.object_meta.size,
                    rows: 1,
                };
                (f.object_meta.location.to_string(), vec![span])
            })
            .collect();
        assert!(
            rebalance(&config, &spans).is_some(),
            "whole files are rebalanced"
        );
        // Read only the first half of one file: the scan must stay as planned.
        let mut files: Vec<PartitionedFile> = config.file_groups[0].iter().cloned().collect();
        let half = files[0].object_meta.size / 2;
        files[0] = files[0].clone().with_range(0, half as i64);
        config.file_groups[0] = FileGroup::new(files);
        assert!(rebalance(&config, &spans).is_none());
    }
}
