//! [`CatalogJoinGrouping`]: brings together the tables of one database in a
//! tree of inner joins, so that [`crate::QueryPushdown`] can send their join
//! to the database as one query.
//!
//! SQL's join order is the FROM list's: in TPC-H q5, `customer` (database
//! B) is joined with `orders` (A) before `lineitem` (A), so no subtree reads
//! only A and each table is scanned whole. This rule flattens a tree of inner
//! equi-joins into its inputs and conditions, then joins inputs of the same
//! database first, but only along a join that cannot multiply rows: the
//! condition covers the primary key of the table joined in (orders ⋈ lineitem
//! on `o_orderkey`, supplier ⋈ nation on `n_nationkey`; never customer ⋈
//! supplier on a nation key). The groups and the other inputs are then joined
//! in their original order, each to the tree it has conditions with, and a
//! projection restores the original column order. Inner equi-joins commute
//! and associate, so the result is the same; if any input cannot be
//! attached, the plan is left as it was.

use std::collections::HashSet;

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, NullEquality, Result};
use datafusion::logical_expr::{Expr, JoinType, LogicalPlan, LogicalPlanBuilder};
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

use crate::pushdown::analyze;

/// The optimizer rule; see the module documentation.
#[derive(Debug, Default)]
pub struct CatalogJoinGrouping;

impl OptimizerRule for CatalogJoinGrouping {
    fn name(&self) -> &str {
        "weft_catalog_join_grouping"
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        regroup(plan)
    }
}

fn regroup(plan: LogicalPlan) -> Result<Transformed<LogicalPlan>> {
    if is_plain_inner_join(&plan) {
        let mut leaves = Vec::new();
        let mut conditions = Vec::new();
        flatten(&plan, &mut leaves, &mut conditions);
        if leaves.len() >= 3 {
            if let Some(new) = rebuild(&plan, leaves, conditions)? {
                return Ok(Transformed::new(new, true, TreeNodeRecursion::Jump));
            }
        }
    }
    plan.map_children(regroup)
}

fn is_plain_inner_join(plan: &LogicalPlan) -> bool {
    matches!(plan, LogicalPlan::Join(j)
        if j.join_type == JoinType::Inner
            && j.filter.is_none()
            && j.null_equality == NullEquality::NullEqualsNothing
            && !j.on.is_empty())
}

/// The inputs and equality conditions of a tree of inner equi-joins (looking
/// through projections that only select columns).
fn flatten(plan: &LogicalPlan, leaves: &mut Vec<LogicalPlan>, conditions: &mut Vec<(Expr, Expr)>) {
    match plan {
        LogicalPlan::Join(j) if is_plain_inner_join(plan) => {
            conditions.extend(j.on.iter().cloned());
            flatten(&j.left, leaves, conditions);
            flatten(&j.right, leaves, conditions);
        }
        LogicalPlan::Projection(p)
            if is_plain_inner_join(&p.input)
                && p.expr.iter().all(|e| matches!(e, Expr::Column(_))) =>
        {
            flatten(&p.input, leaves, conditions)
        }
        other => leaves.push(other.clone()),
    }
}

/// A part of the new tree.
struct Unit {
    plan: LogicalPlan,
    /// Position of its first input in the original order.
    first: usize,
    catalog: Option<String>,
    /// Primary key of a single-table input.
    primary_key: Vec<String>,
    size: usize,
}

fn within(e: &Expr, schema: &DFSchema) -> bool {
    let columns = e.column_refs();
    !columns.is_empty() && columns.iter().all(|c| schema.has_column(c))
}

/// The unused conditions between `x` and `y`, oriented (x side, y side).
fn between(
    x: &DFSchema,
    y: &DFSchema,
    conditions: &[(Expr, Expr)],
    used: &HashSet<usize>,
) -> Vec<(usize, Expr, Expr)> {
    conditions
        .iter()
        .enumerate()
        .filter(|(i, _)| !used.contains(i))
        .filter_map(|(i, (a, b))| {
            if within(a, x) && within(b, y) {
                Some((i, a.clone(), b.clone()))
            } else if within(b, x) && within(a, y) {
                Some((i, b.clone(), a.clone()))
            } else {
                None
            }
        })
        .collect()
}

fn join(x: &LogicalPlan, y: &LogicalPlan, keys: &[(usize, Expr, Expr)]) -> Result<LogicalPlan> {
    let (left, right): (Vec<Expr>, Vec<Expr>) =
        keys.iter().map(|(_, a, b)| (a.clone(), b.clone())).unzip();
    LogicalPlanBuilder::from(x.clone())
        .join_with_expr_keys(y.clone(), JoinType::Inner, (left, right), None)?
        .build()
}

fn rebuild(
    original: &LogicalPlan,
    leaves: Vec<LogicalPlan>,
    conditions: Vec<(Expr, Expr)>,
) -> Result<Option<LogicalPlan>> {
    let mut units: Vec<Unit> = leaves
        .into_iter()
        .enumerate()
        .map(|(i, plan)| {
            let found = analyze(&plan, false);
            Unit {
                catalog: found.as_ref().map(|f| f.info.source.catalog().to_string()),
                primary_key: found.map(|f| f.info.primary_key).unwrap_or_default(),
                plan,
                first: i,
                size: 1,
            }
        })
        .collect();
    let catalogs: HashSet<&String> = units.iter().filter_map(|u| u.catalog.as_ref()).collect();
    let shared = catalogs.iter().any(|c| {
        units
            .iter()
            .filter(|u| u.catalog.as_ref() == Some(*c))
            .count()
            >= 2
    });
    // Only where tables of several databases meet: one database for
    // everything is QueryPushdown's case already.
    if !shared || catalogs.len() < 2 {
        return Ok(None);
    }
    let mut used = HashSet::new();
    let mut merged_any = false;
    // Merge same-database inputs along joins on the joined table's key.
    loop {
        let mut merge = None;
        'search: for x in 0..units.len() {
            for y in 0..units.len() {
                let (ux, uy) = (&units[x], &units[y]);
                if x == y || ux.catalog.is_none() || ux.catalog != uy.catalog {
                    continue;
                }
                if uy.size != 1 || uy.primary_key.is_empty() {
                    continue;
                }
                let keys = between(ux.plan.schema(), uy.plan.schema(), &conditions, &used);
                let covered = uy.primary_key.iter().all(|k| {
                    keys.iter()
                        .any(|(_, _, b)| matches!(b, Expr::Column(c) if &c.name == k))
                });
                if covered {
                    merge = Some((x, y, keys));
                    break 'search;
                }
            }
        }
        let Some((x, y, keys)) = merge else { break };
        let plan = join(&units[x].plan, &units[y].plan, &keys)?;
        used.extend(keys.iter().map(|(i, _, _)| *i));
        let (first, size) = (
            units[x].first.min(units[y].first),
            units[x].size + units[y].size,
        );
        units[x] = Unit {
            plan,
            first,
            catalog: units[x].catalog.clone(),
            primary_key: vec![],
            size,
        };
        units.remove(y);
        merged_any = true;
    }
    if !merged_any {
        return Ok(None);
    }
    // Join everything else in the original order, each unit to the tree it
    // has conditions with.
    units.sort_by_key(|u| u.first);
    let mut rest: Vec<Unit> = units;
    let mut tree = rest.remove(0).plan;
    while !rest.is_empty() {
        let Some((i, keys)) = rest.iter().enumerate().find_map(|(i, u)| {
            let keys = between(tree.schema(), u.plan.schema(), &conditions, &used);
            (!keys.is_empty()).then_some((i, keys))
        }) else {
            return Ok(None);
        };
        let unit = rest.remove(i);
        tree = join(&tree, &unit.plan, &keys)?;
        used.extend(keys.iter().map(|(i, _, _)| *i));
    }
    if used.len() != conditions.len() {
        return Ok(None);
    }
    let columns: Vec<Expr> = original
        .schema()
        .columns()
        .into_iter()
        .map(Expr::Column)
        .collect();
    Ok(Some(
        LogicalPlanBuilder::from(tree).project(columns)?.build()?,
    ))
}
