//! Key filters (semi-join reduction across databases): where a join meets a
//! small, filtered table of one database and a large table of another, the
//! small side's join keys are read first and sent to the large side's
//! database as `key IN (...)`, so rows that cannot match never leave it.
//!
//! ```text
//!   Join  l_suppkey = s_suppkey                Join  l_suppkey = s_suppkey
//!    ├─ scan A: lineitem ⋈ orders     ==>       ├─ scan A: ... WHERE l_suppkey IN (2, 4, 6, ...)
//!    └─ scan B: supplier ⋈ nation               └─ scan B: supplier ⋈ nation
//!               WHERE r_name = 'ASIA'                      WHERE r_name = 'ASIA'
//! ```
//!
//! [`KeyFilters`] is a logical optimizer rule that runs after
//! [`crate::QueryPushdown`]. For each equi-join key of a join that drops the
//! rows of one side without a match (inner, semi, the inner side of an outer
//! or anti join), it follows both key columns down to the remote scans that
//! produce them. The reduction is planned when
//! - the key source scan filters its table (otherwise every key is there),
//! - the source's tables are at least [`SIZE_RATIO`] times smaller than the
//!   target's (so reading the keys is cheap beside what it saves),
//! - both columns are integers or both dates,
//! - and the path from the join to the target scan passes rows on whole
//!   (no limit, no window; through an outer, semi or anti join only into
//!   the side whose rows it returns).
//!
//! The target scan's table is wrapped in a [`KeyFilteredTable`]; when the
//! scan is planned (at planning time, before any task runs) it reads the
//! distinct keys of the source scan in the coordinator and adds
//! `column IN (keys)` to the target's pushed filters. More than [`MAX_KEYS`]
//! keys, an error or a filter the target cannot take: the scan is planned
//! as before. Always correct: a target row whose key is not among the
//! source's keys has no partner in the join. The keys are read at planning,
//! the source's rows again when the query runs: rows inserted into the
//! source in between find no partner on the target side.

use std::any::Any;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef};
use arrow::compute::{cast, concat};
use arrow::datatypes::{DataType, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, NullEquality, Result, ScalarValue};
use datafusion::datasource::{provider_as_source, source_as_provider, TableType};
use datafusion::execution::SessionState;
use datafusion::logical_expr::expr::InList;
use datafusion::logical_expr::{
    Distinct, Expr, JoinType, LogicalPlan, LogicalPlanBuilder, TableProviderFilterPushDown,
    TableScan,
};
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};
use datafusion::physical_plan::{collect, ExecutionPlan};
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};

use crate::mysql::catalog::MysqlTable;
use crate::postgres::catalog::PostgresTable;
use crate::pushdown::RemoteQueryTable;

/// At most this many distinct keys are sent as one filter.
pub const MAX_KEYS: usize = 50_000;
/// The key source's largest table must be this many times smaller than the
/// target's.
pub const SIZE_RATIO: u64 = 4;

/// The optimizer rule; see the module documentation.
#[derive(Debug, Default)]
pub struct KeyFilters;

impl OptimizerRule for KeyFilters {
    fn name(&self) -> &str {
        "weft_key_filters"
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        plan.transform_down(|node| match node {
            LogicalPlan::Join(join) => reduce_join(join),
            other => Ok(Transformed::no(other)),
        })
    }
}

/// Which sides of a join may lose the rows that have no partner: (left, right).
fn reducible_sides(join_type: JoinType) -> (bool, bool) {
    match join_type {
        JoinType::Inner | JoinType::LeftSemi | JoinType::RightSemi => (true, true),
        JoinType::Left | JoinType::LeftAnti => (false, true),
        JoinType::Right | JoinType::RightAnti => (true, false),
        JoinType::Full | JoinType::LeftMark | JoinType::RightMark => (false, false),
    }
}

fn reduce_join(mut join: datafusion::logical_expr::Join) -> Result<Transformed<LogicalPlan>> {
    if join.null_equality != NullEquality::NullEqualsNothing {
        return Ok(Transformed::no(LogicalPlan::Join(join)));
    }
    let (left_ok, right_ok) = reducible_sides(join.join_type);
    let mut changed = false;
    for (l, r) in join.on.clone() {
        let (Expr::Column(l), Expr::Column(r)) = (l, r) else {
            continue;
        };
        if left_ok {
            if let Some(new) = reduce(&join.left, &l, &join.right, &r)? {
                join.left = Arc::new(new);
                changed = true;
            }
        }
        if right_ok {
            if let Some(new) = reduce(&join.right, &r, &join.left, &l)? {
                join.right = Arc::new(new);
                changed = true;
            }
        }
    }
    Ok(Transformed::new_transformed(
        LogicalPlan::Join(join),
        changed,
    ))
}

/// `target` with its scan of `target_col` filtered by the keys of `source`'s
/// scan of `source_col`, if worth it.
fn reduce(
    target: &LogicalPlan,
    target_col: &Column,
    source: &LogicalPlan,
    source_col: &Column,
) -> Result<Option<LogicalPlan>> {
    let Some(src) = trace(source, source_col, false) else {
        return Ok(None);
    };
    let Some(tgt) = trace(target, target_col, true) else {
        return Ok(None);
    };
    let (Ok(src_provider), Ok(tgt_provider)) = (
        source_as_provider(&src.scan.source),
        source_as_provider(&tgt.scan.source),
    ) else {
        return Ok(None);
    };
    if !(src.scan.fetch.is_some() || !src.scan.filters.is_empty() || filters_inside(&src_provider))
    {
        return Ok(None);
    }
    let (Some(src_size), Some(tgt_size)) = (size(&src_provider), size(&tgt_provider)) else {
        return Ok(None);
    };
    if src_size.saturating_mul(SIZE_RATIO) > tgt_size {
        return Ok(None);
    }
    let field_type = |scan: &TableScan, name: &str| {
        scan.projected_schema
            .field_with_unqualified_name(name)
            .map(|f| f.data_type().clone())
            .ok()
    };
    let (Some(src_type), Some(tgt_type)) = (
        field_type(&src.scan, &src.column),
        field_type(&tgt.scan, &tgt.column),
    ) else {
        return Ok(None);
    };
    if key_kind(&src_type).is_none() || key_kind(&src_type) != key_kind(&tgt_type) {
        return Ok(None);
    }
    let existing = (tgt_provider.as_ref() as &dyn Any).downcast_ref::<KeyFilteredTable>();
    if existing.is_some_and(|t| t.filters.iter().any(|f| f.column == tgt.column)) {
        return Ok(None);
    }
    // The source scan alone (its pushed filters included), distinct keys.
    let column = src
        .scan
        .projected_schema
        .qualified_field_with_unqualified_name(&src.column)?;
    let keys = LogicalPlanBuilder::from(LogicalPlan::TableScan(src.scan.clone()))
        .aggregate(vec![Expr::Column(Column::from(column))], Vec::<Expr>::new())?
        .limit(0, Some(MAX_KEYS + 1))?
        .build()?;
    let filter = KeyFilter {
        column: tgt.column.clone(),
        data_type: tgt_type,
        keys,
        source: src.scan.table_name.to_string(),
    };
    let wrapped: Arc<dyn TableProvider> = match existing {
        Some(t) => {
            let mut filters = t.filters.clone();
            filters.push(filter);
            Arc::new(KeyFilteredTable {
                inner: Arc::clone(&t.inner),
                filters,
            })
        }
        None => Arc::new(KeyFilteredTable {
            inner: tgt_provider,
            filters: vec![filter],
        }),
    };
    // Same table, same schema: only the provider changes.
    let mut scan = tgt.scan.clone();
    scan.source = provider_as_source(wrapped);
    Ok(Some(replace_at(
        target,
        &tgt.path,
        LogicalPlan::TableScan(scan),
    )?))
}

/// A column followed down to the remote scan that reads it.
struct Traced {
    /// Child indices from the start node to the scan.
    path: Vec<usize>,
    scan: TableScan,
    /// The column's name in the scan's table.
    column: String,
}

/// Follows `col` of `plan` down to a remote scan through nodes that pass its
/// values on unchanged. With `target`, only through nodes where dropping
/// scan rows whose value has no partner drops exactly the output rows that
/// have none (no limit; through an outer, semi or anti join only into the
/// side whose rows it returns, e.g. the left side of a left join).
fn trace(plan: &LogicalPlan, col: &Column, target: bool) -> Option<Traced> {
    let down = |child: usize, plan: &LogicalPlan, col: &Column| {
        let mut t = trace(plan, col, target)?;
        t.path.insert(0, child);
        Some(t)
    };
    match plan {
        LogicalPlan::TableScan(scan) => {
            let i = scan.projected_schema.index_of_column(col).ok()?;
            let provider = source_as_provider(&scan.source).ok()?;
            if size(&provider).is_none() || (target && scan.fetch.is_some()) {
                return None;
            }
            Some(Traced {
                path: vec![],
                scan: scan.clone(),
                column: scan.projected_schema.field(i).name().clone(),
            })
        }
        LogicalPlan::Projection(p) => {
            let i = p.schema.index_of_column(col).ok()?;
            match p.expr[i].clone().unalias() {
                Expr::Column(c) => down(0, &p.input, &c),
                _ => None,
            }
        }
        LogicalPlan::SubqueryAlias(a) => {
            let i = a.schema.index_of_column(col).ok()?;
            let inner = Column::from(a.input.schema().qualified_field(i));
            down(0, &a.input, &inner)
        }
        LogicalPlan::Filter(f) => down(0, &f.input, col),
        LogicalPlan::Sort(s) if s.fetch.is_none() || !target => down(0, &s.input, col),
        LogicalPlan::Limit(l) if !target => down(0, &l.input, col),
        LogicalPlan::Distinct(Distinct::All(input)) => down(0, input, col),
        LogicalPlan::Aggregate(a) => {
            let i = a.schema.index_of_column(col).ok()?;
            match a.group_expr.get(i)? {
                Expr::Column(c) => down(0, &a.input, c),
                _ => None,
            }
        }
        LogicalPlan::Join(j) => {
            let i = j.schema.index_of_column(col).ok()?;
            let left_fields = j.left.schema().fields().len();
            let (side, index) = match j.join_type {
                JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full => {
                    if i < left_fields {
                        (0, i)
                    } else {
                        (1, i - left_fields)
                    }
                }
                JoinType::LeftSemi | JoinType::LeftAnti => (0, i),
                JoinType::RightSemi | JoinType::RightAnti => (1, i),
                JoinType::LeftMark | JoinType::RightMark => return None,
            };
            // A target row may only vanish where the join drops rows of its
            // side that have no partner anyway.
            let (left_ok, right_ok) = match j.join_type {
                JoinType::Inner => (true, true),
                JoinType::Left | JoinType::LeftSemi | JoinType::LeftAnti => (true, false),
                JoinType::Right | JoinType::RightSemi | JoinType::RightAnti => (false, true),
                _ => (false, false),
            };
            if target && !(if side == 0 { left_ok } else { right_ok }) {
                return None;
            }
            let input = if side == 0 { &j.left } else { &j.right };
            let inner = Column::from(input.schema().qualified_field(index));
            down(side, input, &inner)
        }
        _ => None,
    }
}

/// `plan` with the node at `path` replaced by `node`.
fn replace_at(plan: &LogicalPlan, path: &[usize], node: LogicalPlan) -> Result<LogicalPlan> {
    let Some((&first, rest)) = path.split_first() else {
        return Ok(node);
    };
    let mut node = Some(node);
    let mut index = 0;
    plan.clone()
        .map_children(|child| {
            let this = index;
            index += 1;
            if this == first {
                let replaced = replace_at(&child, rest, node.take().expect("one replacement"))?;
                Ok(Transformed::yes(replaced))
            } else {
                Ok(Transformed::no(child))
            }
        })
        .map(|t| t.data)
}

/// Key columns this rule handles: integers (compared as i64) and dates.
fn key_kind(t: &DataType) -> Option<DataType> {
    match t {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32 => Some(DataType::Int64),
        DataType::Date32 => Some(DataType::Date32),
        _ => None,
    }
}

/// Bytes of a remote scan's largest table, if known.
fn size(provider: &Arc<dyn TableProvider>) -> Option<u64> {
    let any: &dyn Any = provider.as_ref();
    if let Some(t) = any.downcast_ref::<PostgresTable>() {
        return t.query_info().bytes;
    }
    if let Some(t) = any.downcast_ref::<MysqlTable>() {
        return t.query_info().bytes;
    }
    if let Some(t) = any.downcast_ref::<KeyFilteredTable>() {
        return size(&t.inner);
    }
    let query = any.downcast_ref::<RemoteQueryTable>()?;
    let mut largest: Option<u64> = None;
    let mut known = true;
    let _ = query.sub_plan().apply(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            match source_as_provider(&scan.source).ok().and_then(|p| size(&p)) {
                Some(s) => largest = Some(largest.map_or(s, |l| l.max(s))),
                None => known = false,
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    largest.filter(|_| known)
}

/// Whether a pushed sub-plan filters or limits its rows.
fn filters_inside(provider: &Arc<dyn TableProvider>) -> bool {
    let any: &dyn Any = provider.as_ref();
    let Some(query) = any.downcast_ref::<RemoteQueryTable>() else {
        return false;
    };
    query
        .sub_plan()
        .exists(|node| {
            Ok(match node {
                LogicalPlan::Filter(_) | LogicalPlan::Limit(_) => true,
                LogicalPlan::TableScan(s) => !s.filters.is_empty() || s.fetch.is_some(),
                _ => false,
            })
        })
        .unwrap_or(false)
}

/// `column IN (keys of plan)` for a target scan.
#[derive(Debug, Clone)]
struct KeyFilter {
    /// Target column (in the wrapped table's schema).
    column: String,
    data_type: DataType,
    /// Distinct keys of the source scan, at most [`MAX_KEYS`] + 1.
    keys: LogicalPlan,
    /// The source scan's table, for the log.
    source: String,
}

impl KeyFilter {
    /// Reads the keys: the filter expression, or `None` if there are too many.
    async fn read(&self, state: &SessionState) -> Result<Option<Expr>> {
        let plan: Arc<dyn ExecutionPlan> = DefaultPhysicalPlanner::default()
            .create_physical_plan(&self.keys, state)
            .await?;
        let batches = collect(plan, state.task_ctx()).await?;
        let arrays: Vec<&dyn Array> = batches.iter().map(|b| b.column(0).as_ref()).collect();
        let keys: ArrayRef = match arrays.is_empty() {
            true => arrow::array::new_empty_array(&self.data_type),
            false => cast(&concat(&arrays)?, &self.data_type)?,
        };
        if keys.len() > MAX_KEYS {
            return Ok(None);
        }
        let mut values = Vec::with_capacity(keys.len());
        for i in 0..keys.len() {
            if keys.is_valid(i) {
                values.push(ScalarValue::try_from_array(&keys, i)?);
            }
        }
        if values.is_empty() {
            // Nothing can match.
            return Ok(Some(Expr::Literal(ScalarValue::Boolean(Some(false)), None)));
        }
        values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        let list = values.into_iter().map(|v| Expr::Literal(v, None)).collect();
        Ok(Some(Expr::InList(InList::new(
            Box::new(Expr::Column(Column::new_unqualified(&self.column))),
            list,
            false,
        ))))
    }
}

/// A remote table whose scans also filter by the keys of other scans; see
/// the module documentation.
#[derive(Debug)]
pub struct KeyFilteredTable {
    inner: Arc<dyn TableProvider>,
    filters: Vec<KeyFilter>,
}

impl KeyFilteredTable {
    /// The table being filtered.
    pub fn inner(&self) -> &Arc<dyn TableProvider> {
        &self.inner
    }
}

#[async_trait]
impl TableProvider for KeyFilteredTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut filters = filters.to_vec();
        if let Some(session) = state.as_any().downcast_ref::<SessionState>() {
            for f in &self.filters {
                let expr = match f.read(session).await {
                    Ok(Some(expr)) => expr,
                    Ok(None) => {
                        tracing::debug!(
                            source = f.source,
                            "more than {MAX_KEYS} keys for {}: not filtered",
                            f.column
                        );
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(
                            source = f.source,
                            "reading join keys for {} failed, scanning without them: {e}",
                            f.column
                        );
                        continue;
                    }
                };
                let support = self.inner.supports_filters_pushdown(&[&expr])?;
                if matches!(support.first(), Some(TableProviderFilterPushDown::Exact)) {
                    filters.push(expr);
                }
            }
        }
        self.inner.scan(state, projection, &filters, limit).await
    }
}
