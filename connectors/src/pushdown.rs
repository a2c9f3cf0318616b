//! Whole sub-plan pushdown: the largest part of a query that reads only one
//! database (joins, aggregates, top-N within it) is sent to that database as
//! one SQL query, generated with DataFusion's unparser in its dialect.
//!
//! [`QueryPushdown`] is a logical optimizer rule of the coordinator. It walks
//! the plan from the top; the first subtree (so the largest) that
//! - reads only PostgreSQL or MySQL tables of one catalog,
//! - is built of projections, filters, inner/outer equi-joins, left semi and
//!   anti joins (PostgreSQL only, written as `[NOT] EXISTS`), aggregates
//!   (count, sum, min, max, avg), limits and top-N sorts,
//! - uses only expressions the database evaluates exactly as Weft does (the
//!   rules of [`crate::filters`]: no collation-dependent string ordering, no
//!   string comparisons at all on MySQL unless the catalog trusts them, no
//!   division, only portable functions and widening casts),
//! - contains a join, an aggregate or a top-N (a plain scan is better read as
//!   parallel splits),
//!
//! is replaced by a scan of [`RemoteQueryTable`]: one split running
//! `SELECT CAST(q.c0 AS ...) AS c0, ... FROM (<unparsed subtree>) AS q`, with
//! every output column cast to the type Weft expects, then renamed back to
//! the subtree's column names. A pushed top-N is sorted again in Weft (its N
//! rows), so the order never depends on the database. If anything cannot be
//! rendered the subtree stays as it was: scans with their own pushdown. So
//! does a subtree whose SQL the database refuses, or would run with a
//! subquery evaluated once per row (its own `EXPLAIN`, at planning).

use std::any::Any;
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, ExprSchema, Result, TableReference};
use datafusion::datasource::{provider_as_source, source_as_provider, TableType};
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::expr::AggregateFunctionParams;
use datafusion::logical_expr::{
    Expr, ExprSchemable, JoinType, Limit, LogicalPlan, LogicalPlanBuilder, Operator, Projection,
    Sort, SubqueryAlias, TableProviderFilterPushDown,
};
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};
use datafusion::physical_expr::expressions::Column as PhysicalColumn;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::limit::GlobalLimitExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
use datafusion::sql::sqlparser::ast::{
    self as sql_ast, visit_expressions_mut, visit_relations_mut,
};
use datafusion::sql::unparser::dialect::{Dialect, MySqlDialect, PostgreSqlDialect};
use datafusion::sql::unparser::Unparser;

use crate::filters::{
    literal_supported, padded_comparison, render_unqualified, widening, SourceSyntax,
};
use crate::mysql::catalog::MysqlTable;
use crate::postgres::catalog::PostgresTable;
use crate::remote_scan::{RemoteScanExec, RemoteScanSpec};
use crate::RemoteSource;

/// The SQL family of a database whose queries Weft writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryDialect {
    Postgres,
    Mysql,
}

impl QueryDialect {
    fn unparser_dialect(self) -> Box<dyn Dialect> {
        match self {
            QueryDialect::Postgres => Box::new(PostgreSqlDialect {}),
            QueryDialect::Mysql => Box::new(MySqlDialect {}),
        }
    }

    fn syntax(self) -> SourceSyntax {
        match self {
            QueryDialect::Postgres => SourceSyntax::POSTGRES,
            QueryDialect::Mysql => SourceSyntax::MYSQL,
        }
    }

    /// How output column `c` is selected so that it arrives as `data_type`,
    /// and its wire type; `None` if Weft cannot read that type back.
    fn output(self, c: &str, data_type: &DataType) -> Option<(String, String)> {
        match self {
            QueryDialect::Postgres => {
                let (sql_type, wire) = match data_type {
                    DataType::Boolean => ("bool", "bool"),
                    DataType::Int16 => ("int2", "int2"),
                    DataType::Int32 => ("int4", "int4"),
                    DataType::Int64 => ("int8", "int8"),
                    DataType::Float32 => ("float4", "float4"),
                    DataType::Float64 => ("float8", "float8"),
                    DataType::Decimal128(..) => ("numeric", "numeric"),
                    DataType::Utf8 => ("text", "text"),
                    DataType::Binary => ("bytea", "bytea"),
                    DataType::Date32 => ("date", "date"),
                    DataType::Time64(TimeUnit::Microsecond) => ("time", "time"),
                    DataType::Timestamp(TimeUnit::Microsecond, None) => ("timestamp", "timestamp"),
                    DataType::Timestamp(TimeUnit::Microsecond, Some(_)) => {
                        ("timestamptz", "timestamptz")
                    }
                    _ => return None,
                };
                Some((format!("CAST(q.{c} AS {sql_type})"), wire.to_string()))
            }
            QueryDialect::Mysql => {
                let wire = match data_type {
                    DataType::Int8
                    | DataType::Int16
                    | DataType::Int32
                    | DataType::Int64
                    | DataType::UInt8
                    | DataType::UInt16
                    | DataType::UInt32
                    | DataType::UInt64
                    | DataType::Float32
                    | DataType::Float64
                    | DataType::Boolean
                    | DataType::Utf8
                    | DataType::Time64(TimeUnit::Microsecond) => "text",
                    DataType::Decimal128(p, s) => {
                        return Some((
                            format!("CAST(q.{c} AS DECIMAL({p},{s}))"),
                            "text".to_string(),
                        ))
                    }
                    DataType::Date32 | DataType::Timestamp(TimeUnit::Microsecond, _) => "temporal",
                    DataType::Binary => "binary",
                    _ => return None,
                };
                Some((format!("q.{c}"), wire.to_string()))
            }
        }
    }
}

/// What a table of a database catalog tells the pushdown rule.
#[derive(Debug, Clone)]
pub struct QueryTableInfo {
    pub source: Arc<dyn RemoteSource>,
    pub dialect: QueryDialect,
    /// The catalog trusts the database's string comparisons.
    pub trust_strings: bool,
    /// The catalog allows whole queries (`query_pushdown`).
    pub enabled: bool,
    /// Columns the database compares differently from Weft (PostgreSQL
    /// `char(n)`, columns read as text).
    pub opaque_columns: Vec<String>,
    /// Of those, the blank-padded ones, which may still be compared with
    /// `=`/`<>`/`IN` against literals not ending in a blank.
    pub padded_columns: std::collections::HashSet<String>,
    /// The table's primary key columns (empty if none or unknown).
    pub primary_key: Vec<String>,
    /// The table's size on disk, if known (not for views).
    pub bytes: Option<u64>,
}

fn table_info(provider: &Arc<dyn TableProvider>) -> Option<QueryTableInfo> {
    let any: &dyn Any = provider.as_ref();
    if let Some(t) = any.downcast_ref::<PostgresTable>() {
        return Some(t.query_info());
    }
    if let Some(t) = any.downcast_ref::<MysqlTable>() {
        return Some(t.query_info());
    }
    None
}

/// The optimizer rule; see the module documentation.
#[derive(Debug, Default)]
pub struct QueryPushdown;

impl OptimizerRule for QueryPushdown {
    fn name(&self) -> &str {
        "weft_query_pushdown"
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        push_down(plan)
    }
}

fn push_down(plan: LogicalPlan) -> Result<Transformed<LogicalPlan>> {
    if let Some(found) = analyze(&plan, false) {
        if found.worth {
            match remote_query(&plan, &found.info) {
                Ok(Some(replacement)) => {
                    return Ok(Transformed::new(replacement, true, TreeNodeRecursion::Jump))
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(
                    catalog = found.info.source.catalog(),
                    "sub-plan not pushed down: {e}"
                ),
            }
        }
    }
    plan.map_children(push_down)
}

/// A subtree that one database can run.
pub(crate) struct Found {
    pub(crate) info: QueryTableInfo,
    /// It has a join, an aggregate or a top-N.
    worth: bool,
}

pub(crate) fn analyze(plan: &LogicalPlan, under_limit: bool) -> Option<Found> {
    // Bare columns pass through unchanged (even those the database compares
    // differently); everything else must be evaluated exactly as in Weft.
    let check = |found: &Found, exprs: &[&Expr], schema: &DFSchema| {
        let checker = ExprCheck {
            schema,
            info: &found.info,
        };
        exprs
            .iter()
            .all(|e| checker.bare_column(e) || checker.ok(e))
    };
    match plan {
        LogicalPlan::TableScan(scan) => {
            let provider = source_as_provider(&scan.source).ok()?;
            let info = table_info(&provider)?;
            info.enabled.then_some(Found { info, worth: false })
        }
        LogicalPlan::SubqueryAlias(a) => analyze(&a.input, false),
        LogicalPlan::Projection(p) => {
            let found = analyze(&p.input, false)?;
            let exprs: Vec<&Expr> = p.expr.iter().collect();
            check(&found, &exprs, p.input.schema()).then_some(found)
        }
        LogicalPlan::Filter(f) => {
            let found = analyze(&f.input, false)?;
            check(&found, &[&f.predicate], f.input.schema()).then_some(found)
        }
        LogicalPlan::Join(j) => {
            // Semi and anti joins are written as [NOT] EXISTS (a correlated
            // subquery over the right side): only the left-hand ones, whose
            // output is the outer query's rows.
            let semi = matches!(j.join_type, JoinType::LeftSemi | JoinType::LeftAnti);
            if !(semi
                || matches!(
                    j.join_type,
                    JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full
                ))
                || j.null_equality != datafusion::common::NullEquality::NullEqualsNothing
            {
                return None;
            }
            // NOT IN is a null-aware anti join: a NULL key on the right
            // empties the answer, which NOT EXISTS does not do. Pushed only
            // when no key can be NULL.
            if j.null_aware && !non_null_keys(j) {
                return None;
            }
            let mut left = analyze(&j.left, false)?;
            let right = analyze(&j.right, false)?;
            if left.info.source.catalog() != right.info.source.catalog() {
                return None;
            }
            // Only where the database's plan is checked before it runs
            // (PostgreSQL's EXPLAIN, see `RemoteQueryTable::scan`): an EXISTS
            // the database runs row by row must not be sent.
            if semi && left.info.dialect != QueryDialect::Postgres {
                return None;
            }
            // Inside EXISTS, a column name both sides have is resolved by
            // its qualifier: it must have one.
            if semi && ambiguous_condition_columns(j) {
                return None;
            }
            // Column rules of both sides (by name: conservative when two
            // tables share a column name).
            left.info.opaque_columns.extend(right.info.opaque_columns);
            left.info.padded_columns.extend(right.info.padded_columns);
            left.info.primary_key.clear();
            let merged = j.left.schema().join(j.right.schema()).ok()?;
            // The unparser may drop qualifiers in derived tables, where two
            // columns of one name would be ambiguous.
            if has_duplicate_names(j.schema.as_ref()) {
                return None;
            }
            let checker = ExprCheck {
                schema: &merged,
                info: &left.info,
            };
            // Equi-join keys: two columns compare by equality.
            let keys_ok = j.on.iter().all(|(l, r)| {
                if checker.bare_column(l) && checker.bare_column(r) {
                    !checker.string(l) || string_equality(&left.info)
                } else {
                    checker.ok(&l.clone().eq(r.clone()))
                }
            });
            let filter_ok = j.filter.as_ref().is_none_or(|f| checker.ok(f));
            (keys_ok && filter_ok).then_some(Found {
                info: left.info,
                worth: true,
            })
        }
        LogicalPlan::Aggregate(a) => {
            let found = analyze(&a.input, false)?;
            let exprs: Vec<&Expr> = a.group_expr.iter().chain(&a.aggr_expr).collect();
            let grouping_sets = a
                .group_expr
                .iter()
                .any(|e| matches!(e, Expr::GroupingSet(_)));
            // Grouping compares values: strings group by equality.
            let string_keys = a.group_expr.iter().any(|e| {
                e.get_type(a.input.schema())
                    .is_ok_and(|t| is_string_type(&t))
            });
            (!grouping_sets
                && (!string_keys || string_equality(&found.info))
                && check(&found, &exprs, a.input.schema()))
            .then_some(Found {
                info: found.info,
                worth: true,
            })
        }
        LogicalPlan::Limit(l) => {
            if !matches!(
                l.get_skip_type(),
                Ok(datafusion::logical_expr::SkipType::Literal(_))
            ) || !matches!(
                l.get_fetch_type(),
                Ok(datafusion::logical_expr::FetchType::Literal(_))
            ) {
                return None;
            }
            let found = analyze(&l.input, true)?;
            let top_n = matches!(&*l.input, LogicalPlan::Sort(_));
            Some(Found {
                worth: found.worth || top_n,
                info: found.info,
            })
        }
        // Only a top-N (a sort under a limit) is pushed; its rows are sorted
        // again in Weft.
        LogicalPlan::Sort(s) if under_limit => {
            let found = analyze(&s.input, false)?;
            if found.info.dialect != QueryDialect::Postgres {
                // MySQL has no NULLS FIRST / LAST.
                return None;
            }
            let ok = s.expr.iter().all(|e| {
                let t = e.expr.get_type(s.input.schema());
                t.is_ok_and(|t| !is_string_type(&t) || found.info.trust_strings)
            });
            let exprs: Vec<&Expr> = s.expr.iter().map(|e| &e.expr).collect();
            (ok && check(&found, &exprs, s.input.schema())).then_some(found)
        }
        _ => None,
    }
}

/// Every equi-join key of `j` is a column neither side can hold NULL in.
fn non_null_keys(j: &datafusion::logical_expr::Join) -> bool {
    let non_null = |e: &Expr, schema: &DFSchema| match e {
        Expr::Column(c) => schema.field_from_column(c).is_ok_and(|f| !f.is_nullable()),
        _ => false,
    };
    j.filter.is_none()
        && j.on
            .iter()
            .all(|(l, r)| non_null(l, j.left.schema()) && non_null(r, j.right.schema()))
}

/// An unqualified column in `j`'s keys or filter whose name both sides
/// have: inside `EXISTS` the database would resolve it to the inner side.
/// (Qualified columns are written with their table or alias: the right side
/// is always an aliased derived table.)
fn ambiguous_condition_columns(j: &datafusion::logical_expr::Join) -> bool {
    let mut columns = Vec::new();
    for (l, r) in &j.on {
        columns.extend(l.column_refs());
        columns.extend(r.column_refs());
    }
    if let Some(f) = &j.filter {
        columns.extend(f.column_refs());
    }
    let has = |schema: &DFSchema, name: &str| schema.fields().iter().any(|f| f.name() == name);
    columns.iter().any(|c| {
        c.relation.is_none() && has(j.left.schema(), &c.name) && has(j.right.schema(), &c.name)
    })
}

fn has_duplicate_names(schema: &DFSchema) -> bool {
    let mut seen = std::collections::HashSet::new();
    schema
        .fields()
        .iter()
        .any(|f| !seen.insert(f.name().clone()))
}

fn is_string_type(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// Whether the database compares strings for equality as Weft does:
/// PostgreSQL does (deterministic collations), MySQL's usual collations
/// ignore case and trailing blanks.
fn string_equality(info: &QueryTableInfo) -> bool {
    info.trust_strings || info.dialect == QueryDialect::Postgres
}

/// Which expressions the database evaluates exactly as Weft.
struct ExprCheck<'a> {
    schema: &'a DFSchema,
    info: &'a QueryTableInfo,
}

impl ExprCheck<'_> {
    /// A column (perhaps renamed) of the input.
    fn bare_column(&self, e: &Expr) -> bool {
        match e {
            Expr::Column(c) => self.schema.field_from_column(c).is_ok(),
            Expr::Alias(a) => self.bare_column(&a.expr),
            _ => false,
        }
    }

    fn string(&self, e: &Expr) -> bool {
        e.get_type(self.schema).is_ok_and(|t| is_string_type(&t))
    }

    fn ok(&self, e: &Expr) -> bool {
        let syntax = self.info.dialect.syntax();
        let strings_eq = string_equality(self.info);
        let strings_ord = self.info.trust_strings;
        if padded_comparison(e, &self.info.padded_columns) {
            return true;
        }
        match e {
            Expr::Column(c) => {
                self.schema.field_from_column(c).is_ok()
                    && !self.info.opaque_columns.contains(&c.name)
            }
            Expr::Literal(v, _) => literal_supported(v),
            Expr::Alias(a) => self.ok(&a.expr),
            Expr::BinaryExpr(b) => {
                let strings = self.string(&b.left) || self.string(&b.right);
                let op_ok = match b.op {
                    Operator::And | Operator::Or => true,
                    Operator::Eq | Operator::NotEq => !strings || strings_eq,
                    Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq => {
                        !strings || strings_ord
                    }
                    Operator::Plus | Operator::Minus | Operator::Multiply => !strings,
                    Operator::IsDistinctFrom | Operator::IsNotDistinctFrom => {
                        syntax.distinct_from && (!strings || strings_eq)
                    }
                    _ => false,
                };
                op_ok && self.ok(&b.left) && self.ok(&b.right)
            }
            Expr::Not(e)
            | Expr::IsNull(e)
            | Expr::IsNotNull(e)
            | Expr::IsTrue(e)
            | Expr::IsFalse(e)
            | Expr::IsNotTrue(e)
            | Expr::IsNotFalse(e)
            | Expr::Negative(e) => self.ok(e),
            Expr::Between(b) => {
                (!self.string(&b.expr) || strings_ord)
                    && self.ok(&b.expr)
                    && self.ok(&b.low)
                    && self.ok(&b.high)
            }
            Expr::InList(l) => {
                (!self.string(&l.expr) || strings_eq)
                    && self.ok(&l.expr)
                    && l.list
                        .iter()
                        .all(|e| matches!(e, Expr::Literal(v, _) if literal_supported(v)))
            }
            Expr::Like(l) => {
                strings_eq
                    && !l.case_insensitive
                    && l.escape_char.is_none()
                    && self.ok(&l.expr)
                    && matches!(&*l.pattern, Expr::Literal(v, _) if literal_supported(v))
            }
            Expr::Case(c) => {
                c.expr
                    .as_ref()
                    .is_none_or(|e| (!self.string(e) || strings_eq) && self.ok(e))
                    && c.when_then_expr
                        .iter()
                        .all(|(w, t)| self.ok(w) && self.ok(t))
                    && c.else_expr.as_ref().is_none_or(|e| self.ok(e))
            }
            Expr::Cast(c) => {
                syntax.casts.allows(c.field.data_type())
                    && c.expr
                        .get_type(self.schema)
                        .is_ok_and(|from| widening(&from, c.field.data_type()))
                    && self.ok(&c.expr)
            }
            Expr::ScalarFunction(f) => {
                syntax.functions.contains(&f.func.name()) && f.args.iter().all(|a| self.ok(a))
            }
            Expr::AggregateFunction(f) => {
                let AggregateFunctionParams {
                    args,
                    distinct,
                    filter,
                    order_by,
                    null_treatment,
                } = &f.params;
                let arg_types: Vec<DataType> = args
                    .iter()
                    .filter_map(|a| a.get_type(self.schema).ok())
                    .collect();
                let numeric = arg_types.iter().all(|t| t.is_numeric());
                let name_ok = match f.func.name() {
                    "count" => {
                        !*distinct || arg_types.iter().all(|t| !is_string_type(t)) || strings_eq
                    }
                    "sum" => numeric && !*distinct,
                    // DataFusion truncates a decimal average, databases round.
                    "avg" => {
                        numeric
                            && !*distinct
                            && arg_types
                                .iter()
                                .all(|t| !matches!(t, DataType::Decimal128(..)))
                    }
                    "min" | "max" => arg_types.iter().all(|t| !is_string_type(t)) || strings_ord,
                    _ => false,
                };
                name_ok
                    && filter.is_none()
                    && order_by.is_empty()
                    && null_treatment.is_none()
                    && args.iter().all(|a| self.bare_column(a) || self.ok(a))
            }
            _ => false,
        }
    }
}

/// The replacement of `plan` by one remote query, or `None` if a type cannot
/// be read back.
fn remote_query(plan: &LogicalPlan, info: &QueryTableInfo) -> Result<Option<LogicalPlan>> {
    let schema = plan.schema();
    let mut outputs = Vec::with_capacity(schema.fields().len());
    for (i, f) in schema.fields().iter().enumerate() {
        match info.dialect.output(&format!("c{i}"), f.data_type()) {
            Some(o) => outputs.push(o),
            None => return Ok(None),
        }
    }
    if has_duplicate_names(schema) {
        return Ok(None);
    }
    // Output columns in order, named c0..cN, so the outer SELECT can cast
    // them.
    let Some(named_plan) = name_columns(plan)? else {
        return Ok(None);
    };
    let named_plan = collapse_aliases(named_plan)?;
    let Some(named_plan) = explicit_join_filters(named_plan)? else {
        return Ok(None);
    };
    let tables = table_names(plan);
    let dialect = info.dialect.unparser_dialect();
    let mut statement = Unparser::new(dialect.as_ref()).plan_to_sql(&named_plan)?;
    rename_tables(&mut statement, &tables);
    // Unique output names c0..cN, so the outer SELECT can cast them.
    if let Err(reason) = name_outputs(&mut statement, schema.fields().len()) {
        tracing::debug!("sub-plan not pushed down: {reason}");
        return Ok(None);
    }
    let inner = statement.to_string();
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| Field::new(format!("c{i}"), f.data_type().clone(), true))
        .collect();
    let table = RemoteQueryTable {
        info: info.clone(),
        fallback: plan.clone(),
        inner,
        select: outputs
            .iter()
            .enumerate()
            .map(|(i, (expr, _))| format!("{expr} AS c{i}"))
            .collect(),
        wire_types: outputs.iter().map(|(_, w)| w.clone()).collect(),
        schema: Arc::new(Schema::new(fields)),
    };
    let scan_name = format!("__weft_remote_{}", info.source.catalog());
    let renamed: Vec<Expr> = schema
        .iter()
        .enumerate()
        .map(|(i, (qualifier, field))| {
            Expr::Column(Column::new(Some(scan_name.clone()), format!("c{i}")))
                .alias_qualified(qualifier.cloned(), field.name())
        })
        .collect();
    let mut builder =
        LogicalPlanBuilder::scan(scan_name.clone(), provider_as_source(Arc::new(table)), None)?
            .project(renamed)?;
    // A pushed top-N is sorted again here (N rows).
    if let LogicalPlan::Limit(limit) = plan {
        if let LogicalPlan::Sort(sort) = &*limit.input {
            builder = builder.sort(sort.expr.clone())?;
        }
    }
    Ok(Some(builder.build()?))
}

/// `plan` with its output columns renamed `c0..cN`, written so that the
/// unparser keeps them in one SELECT: a projection's expressions are renamed
/// in place, other nodes get a projection on top, and a top-N's sort refers
/// to the new names.
fn name_columns(plan: &LogicalPlan) -> Result<Option<LogicalPlan>> {
    let name = |i: usize| format!("c{i}");
    Ok(Some(match plan {
        LogicalPlan::Projection(p) => {
            let exprs = p
                .expr
                .iter()
                .enumerate()
                .map(|(i, e)| e.clone().unalias().alias(name(i)))
                .collect();
            LogicalPlan::Projection(Projection::try_new(exprs, Arc::clone(&p.input))?)
        }
        LogicalPlan::Limit(l) => {
            let Some(input) = name_columns(&l.input)? else {
                return Ok(None);
            };
            LogicalPlan::Limit(Limit {
                skip: l.skip.clone(),
                fetch: l.fetch.clone(),
                input: Arc::new(input),
            })
        }
        LogicalPlan::Sort(s) => {
            let Some(input) = name_columns(&s.input)? else {
                return Ok(None);
            };
            let renames: HashMap<Column, Column> = s
                .input
                .schema()
                .columns()
                .into_iter()
                .enumerate()
                .map(|(i, c)| (c, Column::new_unqualified(name(i))))
                .collect();
            let mut exprs = Vec::with_capacity(s.expr.len());
            for e in &s.expr {
                let mut missing = false;
                let renamed = e.expr.clone().transform(|x| {
                    Ok(match x {
                        Expr::Column(c) => match renames.get(&c) {
                            Some(n) => Transformed::yes(Expr::Column(n.clone())),
                            None => {
                                missing = true;
                                Transformed::no(Expr::Column(c))
                            }
                        },
                        other => Transformed::no(other),
                    })
                })?;
                if missing {
                    return Ok(None);
                }
                exprs.push(e.with_expr(renamed.data));
            }
            LogicalPlan::Sort(Sort {
                expr: exprs,
                input: Arc::new(input),
                fetch: s.fetch,
            })
        }
        other => {
            let exprs = other
                .schema()
                .columns()
                .into_iter()
                .enumerate()
                .map(|(i, c)| Expr::Column(c).alias(name(i)))
                .collect();
            LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(other.clone()))?)
        }
    }))
}

/// `plan` with every `SubqueryAlias(a, SubqueryAlias(b, x))` written as
/// `SubqueryAlias(a, x)`. A table whose plan is inlined where the SQL names
/// it (a table under access rules) arrives as such a pair; the unparser
/// keeps only the inner alias, while the SQL around it names the outer one
/// (`missing FROM-clause entry for table "a"`).
fn collapse_aliases(plan: LogicalPlan) -> Result<LogicalPlan> {
    plan.transform_up(|node| {
        Ok(match node {
            LogicalPlan::SubqueryAlias(outer) => match outer.input.as_ref() {
                LogicalPlan::SubqueryAlias(inner) => Transformed::yes(LogicalPlan::SubqueryAlias(
                    SubqueryAlias::try_new(Arc::clone(&inner.input), outer.alias.clone())?,
                )),
                _ => Transformed::no(LogicalPlan::SubqueryAlias(outer)),
            },
            other => Transformed::no(other),
        })
    })
    .map(|t| t.data)
}

/// Whether `plan` has a join other than an inner one.
fn has_outer_or_semi_join(plan: &LogicalPlan) -> bool {
    plan.exists(|p| Ok(matches!(p, LogicalPlan::Join(j) if j.join_type != JoinType::Inner)))
        .unwrap_or(false)
}

/// A join input that is a table scan, perhaps under a filter, with its
/// conditions lifted out: the scan without filters (reading the columns the
/// conditions need too) and the conditions. `Ok(None)` if there is nothing
/// to lift; `Err(())` for a shape that cannot be lifted (a scan with a row
/// limit, two aliases on one scan).
fn lift_scan_filters(side: &LogicalPlan) -> Result<Option<(LogicalPlan, Expr)>, ()> {
    // An aliased table (`customers c`): the conditions, written against the
    // table, are lifted above the alias in the alias's terms.
    if let LogicalPlan::SubqueryAlias(a) = side {
        let Some((inner, predicate)) = lift_scan_filters(&a.input)? else {
            return Ok(None);
        };
        // Two aliases on one scan are collapsed before this runs; the inner
        // one's terms would be lost.
        if matches!(&*a.input, LogicalPlan::SubqueryAlias(_)) {
            return Err(());
        }
        let predicate = predicate
            .transform(|e| {
                Ok(match e {
                    Expr::Column(c) => {
                        Transformed::yes(Expr::Column(Column::new(Some(a.alias.clone()), c.name)))
                    }
                    other => Transformed::no(other),
                })
            })
            .map_err(|_| ())?
            .data;
        let aliased = SubqueryAlias::try_new(Arc::new(inner), a.alias.clone()).map_err(|_| ())?;
        return Ok(Some((LogicalPlan::SubqueryAlias(aliased), predicate)));
    }
    let (scan, above) = match side {
        LogicalPlan::TableScan(scan) => (scan, None),
        LogicalPlan::Filter(f) => match f.input.as_ref() {
            LogicalPlan::TableScan(scan) => (scan, Some(f.predicate.clone())),
            _ => return Ok(None),
        },
        _ => return Ok(None),
    };
    if scan.filters.is_empty() && above.is_none() {
        return Ok(None);
    }
    if scan.fetch.is_some() {
        return Err(());
    }
    let predicate =
        datafusion::logical_expr::utils::conjunction(scan.filters.iter().cloned().chain(above))
            .ok_or(())?;
    let source = scan.source.schema();
    let mut indices: Vec<usize> = scan
        .projection
        .clone()
        .unwrap_or_else(|| (0..source.fields().len()).collect());
    for c in predicate.column_refs() {
        let i = source.index_of(&c.name).map_err(|_| ())?;
        if !indices.contains(&i) {
            indices.push(i);
        }
    }
    let wide = LogicalPlanBuilder::scan(
        scan.table_name.clone(),
        Arc::clone(&scan.source),
        Some(indices),
    )
    .and_then(|b| b.build())
    .map_err(|_| ())?;
    Ok(Some((wide, predicate)))
}

/// `plan` (with an outer, semi or anti join) written so that its SQL keeps
/// every condition where it belongs. The unparser moves the conditions of a
/// join input that is a (filtered) table scan into the join's `ON`, which
/// is wrong for the preserved side of an outer join (it would keep the rows
/// the conditions reject) and lost for a semi or anti join (written as
/// `[NOT] EXISTS`, which only keeps the join's own filter). So:
/// - the preserved side's conditions (the left of a left, semi or anti
///   join; the right of a right join) are lifted above the join, where they
///   mean the same (the join keeps those rows as they are), and the scan
///   reads the columns they need;
/// - the right side of a semi or anti join (an aliased subquery) becomes a
///   derived table, so its conditions stay inside the `EXISTS`;
/// - a full join with conditions on a side is not pushed.
///
/// `None` when the plan cannot be written so (it is then not pushed).
fn explicit_join_filters(plan: LogicalPlan) -> Result<Option<LogicalPlan>> {
    if !has_outer_or_semi_join(&plan) {
        return Ok(Some(plan));
    }
    let mut unsupported = false;
    let rewritten = plan.transform_up(|node| {
        let LogicalPlan::Join(mut j) = node else {
            // Inputs may have gained columns (the lifted conditions' own).
            return Ok(Transformed::yes(node.recompute_schema()?));
        };
        let mut lifted = None;
        match j.join_type {
            JoinType::Inner => {}
            JoinType::Left | JoinType::LeftSemi | JoinType::LeftAnti | JoinType::Right => {
                let preserved = if j.join_type == JoinType::Right {
                    &mut j.right
                } else {
                    &mut j.left
                };
                match lift_scan_filters(preserved) {
                    Ok(Some((scan, predicate))) => {
                        *preserved = Arc::new(scan);
                        lifted = Some(predicate);
                    }
                    Ok(None) => {}
                    Err(()) => unsupported = true,
                }
                if matches!(j.join_type, JoinType::LeftSemi | JoinType::LeftAnti) {
                    let LogicalPlan::SubqueryAlias(alias) = j.right.as_ref() else {
                        unsupported = true;
                        return Ok(Transformed::no(LogicalPlan::Join(j)));
                    };
                    let inner = Arc::clone(&alias.input);
                    let columns: Vec<Expr> = inner
                        .schema()
                        .columns()
                        .into_iter()
                        .map(Expr::Column)
                        .collect();
                    let derived = LogicalPlan::Projection(Projection::try_new(columns, inner)?);
                    j.right = Arc::new(LogicalPlan::SubqueryAlias(SubqueryAlias::try_new(
                        Arc::new(derived),
                        alias.alias.clone(),
                    )?));
                }
            }
            _ => {
                let conditions = |side: &LogicalPlan| !matches!(lift_scan_filters(side), Ok(None));
                if conditions(&j.left) || conditions(&j.right) {
                    unsupported = true;
                }
            }
        }
        let join = LogicalPlan::Join(j).recompute_schema()?;
        Ok(Transformed::yes(match lifted {
            Some(predicate) => LogicalPlan::Filter(datafusion::logical_expr::Filter::try_new(
                predicate,
                Arc::new(join),
            )?),
            None => join,
        }))
    })?;
    if unsupported || filter_on_null_side(&rewritten.data) {
        return Ok(None);
    }
    Ok(Some(rewritten.data))
}

/// A table scan under filters and aliases: the unparser moves its filters
/// into the join's `ON`.
fn scan_chain(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::TableScan(_) => true,
        LogicalPlan::Filter(f) => scan_chain(&f.input),
        LogicalPlan::SubqueryAlias(a) => scan_chain(&a.input),
        _ => false,
    }
}

/// A filter the unparser would write into the enclosing `WHERE` (it is not
/// under a projection or an aggregate, which start a derived table).
fn filter_in_select(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::Filter(_) => true,
        LogicalPlan::Join(j) => filter_in_select(&j.left) || filter_in_select(&j.right),
        LogicalPlan::SubqueryAlias(a) => filter_in_select(&a.input),
        _ => false,
    }
}

/// Whether an outer join's null-extended side holds a filter that would
/// end up in the `WHERE` (where it would drop the rows the join keeps).
fn filter_on_null_side(plan: &LogicalPlan) -> bool {
    plan.exists(|p| {
        let LogicalPlan::Join(j) = p else {
            return Ok(false);
        };
        let risky = |side: &LogicalPlan| !scan_chain(side) && filter_in_select(side);
        Ok(match j.join_type {
            JoinType::Left => risky(&j.right),
            JoinType::Right => risky(&j.left),
            JoinType::Full => risky(&j.left) || risky(&j.right),
            _ => false,
        })
    })
    .unwrap_or(true)
}

/// Aliases the top SELECT's `n` items `c0..cN` (and the ORDER BY references
/// to their old aliases).
fn name_outputs(statement: &mut sql_ast::Statement, n: usize) -> Result<(), String> {
    let sql_ast::Statement::Query(query) = statement else {
        return Err("not a query".to_string());
    };
    let sql_ast::SetExpr::Select(select) = query.body.as_mut() else {
        return Err("not a single SELECT".to_string());
    };
    if select.projection.len() != n {
        return Err(format!(
            "{} select items for {n} columns",
            select.projection.len()
        ));
    }
    let mut renamed = HashMap::new();
    let items = std::mem::take(&mut select.projection);
    for (i, item) in items.into_iter().enumerate() {
        let alias = sql_ast::Ident::new(format!("c{i}"));
        let expr = match item {
            sql_ast::SelectItem::UnnamedExpr(expr) => expr,
            sql_ast::SelectItem::ExprWithAlias { expr, alias: old } => {
                renamed.insert(old.value, i);
                expr
            }
            other => return Err(format!("select item {other}")),
        };
        select
            .projection
            .push(sql_ast::SelectItem::ExprWithAlias { expr, alias });
    }
    if let Some(order_by) = &mut query.order_by {
        if let sql_ast::OrderByKind::Expressions(exprs) = &mut order_by.kind {
            for e in exprs {
                if let sql_ast::Expr::Identifier(id) = &e.expr {
                    if let Some(i) = renamed.get(&id.value) {
                        e.expr = sql_ast::Expr::Identifier(sql_ast::Ident::new(format!("c{i}")));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Each table scanned in `plan`: the name Weft's plan uses -> the database's
/// `schema.table`.
fn table_names(plan: &LogicalPlan) -> HashMap<Vec<String>, Vec<String>> {
    let mut names = HashMap::new();
    let _ = plan.apply(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            if let Ok(provider) = source_as_provider(&scan.source) {
                let any: &dyn Any = provider.as_ref();
                let remote = if let Some(t) = any.downcast_ref::<PostgresTable>() {
                    Some(t.remote_name())
                } else {
                    any.downcast_ref::<MysqlTable>().map(|t| t.remote_name())
                };
                if let Some(remote) = remote {
                    names.insert(reference_parts(&scan.table_name), remote);
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    names
}

fn reference_parts(r: &TableReference) -> Vec<String> {
    match r {
        TableReference::Bare { table } => vec![table.to_string()],
        TableReference::Partial { schema, table } => vec![schema.to_string(), table.to_string()],
        TableReference::Full {
            catalog,
            schema,
            table,
        } => vec![catalog.to_string(), schema.to_string(), table.to_string()],
    }
}

/// Rewrites Weft's table names (and column qualifiers naming them) to the
/// database's names.
fn rename_tables(statement: &mut sql_ast::Statement, tables: &HashMap<Vec<String>, Vec<String>>) {
    let ident = |s: &str, quote: Option<char>| sql_ast::Ident {
        value: s.to_string(),
        quote_style: quote,
        span: datafusion::sql::sqlparser::tokenizer::Span::empty(),
    };
    let _ = visit_relations_mut(statement, |name| {
        let parts: Vec<String> = name
            .0
            .iter()
            .filter_map(|p| p.as_ident().map(|i| i.value.clone()))
            .collect();
        if let Some(remote) = tables.get(&parts) {
            let quote = name
                .0
                .first()
                .and_then(|p| p.as_ident())
                .and_then(|i| i.quote_style);
            *name = sql_ast::ObjectName::from(
                remote
                    .iter()
                    .map(|r| ident(r, quote.or(Some('"'))))
                    .collect::<Vec<_>>(),
            );
        }
        ControlFlow::<()>::Continue(())
    });
    let _ = visit_expressions_mut(statement, |e| {
        if let sql_ast::Expr::CompoundIdentifier(idents) = e {
            if idents.len() >= 2 {
                let (prefix, column) = idents.split_at(idents.len() - 1);
                let parts: Vec<String> = prefix.iter().map(|i| i.value.clone()).collect();
                if let Some(remote) = tables.get(&parts) {
                    let quote = column[0].quote_style;
                    let mut new: Vec<sql_ast::Ident> =
                        remote.iter().map(|r| ident(r, quote)).collect();
                    new.push(column[0].clone());
                    *idents = new;
                }
            }
        }
        ControlFlow::<()>::Continue(())
    });
}

/// The result of one remote query, as a table.
#[derive(Debug)]
pub struct RemoteQueryTable {
    info: QueryTableInfo,
    /// The sub-plan itself, planned in Weft if the database rejects the
    /// generated SQL.
    fallback: LogicalPlan,
    /// The unparsed subtree, with output columns c0..cN.
    inner: String,
    /// Per output column, its cast select item.
    select: Vec<String>,
    wire_types: Vec<String>,
    schema: SchemaRef,
}

impl RemoteQueryTable {
    /// The sub-plan this query computes.
    pub(crate) fn sub_plan(&self) -> &LogicalPlan {
        &self.fallback
    }

    /// SQL of `column IN (literals)` on an output column of a number or date
    /// type (or a constant `false`), as a condition on the query's result.
    fn render_filter(&self, filter: &Expr) -> Option<String> {
        let ok = match filter {
            Expr::Literal(datafusion::common::ScalarValue::Boolean(Some(false)), _) => true,
            Expr::InList(l) => {
                let column_ok = match &*l.expr {
                    Expr::Column(c) => self.schema.field_with_name(&c.name).is_ok_and(|f| {
                        f.data_type().is_integer() || *f.data_type() == DataType::Date32
                    }),
                    _ => false,
                };
                !l.negated
                    && column_ok
                    && l.list
                        .iter()
                        .all(|e| matches!(e, Expr::Literal(v, _) if literal_supported(v) && !v.is_null()))
            }
            _ => false,
        };
        if !ok {
            return None;
        }
        let dialect = self.info.dialect.unparser_dialect();
        render_unqualified(filter, dialect.as_ref())
    }

    /// The original sub-plan, planned in Weft, with this table's columns.
    async fn plan_fallback(
        &self,
        state: &dyn Session,
        indices: &[usize],
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let Some(state) = state.as_any().downcast_ref::<SessionState>() else {
            return datafusion::common::internal_err!("query pushdown needs a SessionState");
        };
        // Optimized like any plan, minus Weft's pushdown rules (which would
        // produce the refused query again).
        let rules: Vec<_> = state
            .optimizers()
            .iter()
            .filter(|r| !r.name().starts_with("weft_"))
            .cloned()
            .collect();
        let state = SessionStateBuilder::new_from_existing(state.clone())
            .with_optimizer_rules(rules)
            .build();
        // Filters accepted for pushdown name the output columns c0..cN.
        let mut fallback = self.fallback.clone();
        if let Some(predicate) = datafusion::logical_expr::utils::conjunction(filters.to_vec()) {
            let schema = Arc::clone(fallback.schema());
            let predicate = predicate
                .transform(|e| {
                    Ok(match e {
                        Expr::Column(c) => {
                            match c.name.strip_prefix('c').map(str::parse::<usize>) {
                                Some(Ok(i)) if i < schema.fields().len() => Transformed::yes(
                                    Expr::Column(Column::from(schema.qualified_field(i))),
                                ),
                                _ => Transformed::no(Expr::Column(c)),
                            }
                        }
                        other => Transformed::no(other),
                    })
                })?
                .data;
            fallback = LogicalPlanBuilder::from(fallback)
                .filter(predicate)?
                .build()?;
        }
        let logical = state.optimize(&fallback)?;
        let plan = DefaultPhysicalPlanner::default()
            .create_physical_plan(&logical, &state)
            .await?;
        let exprs: Vec<(Arc<dyn PhysicalExpr>, String)> = indices
            .iter()
            .map(|&i| {
                let column = PhysicalColumn::new(plan.schema().field(i).name(), i);
                (Arc::new(column) as Arc<dyn PhysicalExpr>, format!("c{i}"))
            })
            .collect();
        let projected: Arc<dyn ExecutionPlan> = Arc::new(ProjectionExec::try_new(exprs, plan)?);
        Ok(match limit {
            Some(n) => Arc::new(GlobalLimitExec::new(
                Arc::new(CoalescePartitionsExec::new(projected)),
                0,
                Some(n),
            )),
            None => projected,
        })
    }
}

#[async_trait]
impl TableProvider for RemoteQueryTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    /// `IN` lists of numbers or dates on an output column (the key filters
    /// of [`crate::keyfilter`]); everything else stays in Weft.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| match self.render_filter(f) {
                Some(_) => TableProviderFilterPushDown::Exact,
                None => TableProviderFilterPushDown::Unsupported,
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let indices: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.select.len()).collect(),
        };
        let items: Vec<&str> = indices.iter().map(|&i| self.select[i].as_str()).collect();
        let select = if items.is_empty() {
            // No column needed (count(*) above): one per row.
            match self.info.dialect {
                QueryDialect::Postgres => String::new(),
                QueryDialect::Mysql => "1".to_string(),
            }
        } else {
            items.join(", ")
        };
        let mut conditions = Vec::with_capacity(filters.len());
        for f in filters {
            match self.render_filter(f) {
                Some(sql) => conditions.push(sql),
                None => {
                    return datafusion::common::internal_err!(
                        "filter {f} was accepted for pushdown but cannot be rendered"
                    )
                }
            }
        }
        let filter = match conditions.is_empty() {
            true => String::new(),
            false => format!(" WHERE {}", conditions.join(" AND ")),
        };
        let mut query = format!("SELECT {select} FROM ({}) AS q{filter}", self.inner);
        if let Some(n) = limit {
            query.push_str(&format!(" LIMIT {n}"));
        }
        // The unparser can write SQL the database rejects (or cannot bind);
        // the database checks it without running it, and Weft computes the
        // sub-plan itself if it is refused.
        if let Err(e) = Arc::clone(&self.info.source).validate(&query).await {
            tracing::info!(
                catalog = self.info.source.catalog(),
                "generated query refused, the sub-plan runs in Weft instead: {e}"
            );
            tracing::debug!(
                catalog = self.info.source.catalog(),
                "refused query: {query}"
            );
            return self.plan_fallback(state, &indices, filters, limit).await;
        }
        // The database's own plan decides between running the sub-plan
        // there and reading its inputs: a plan that runs a subquery again
        // for every outer row (a correlated SubPlan) is what Weft's hash
        // joins do in one pass.
        match Arc::clone(&self.info.source).explain(&query).await {
            Ok(Some(plan)) if !plan.per_row_subqueries.is_empty() => {
                tracing::info!(
                    catalog = self.info.source.catalog(),
                    cost = plan.total_cost,
                    subqueries = ?plan.per_row_subqueries,
                    "the database would run a subquery once per row: the sub-plan runs in Weft instead"
                );
                return self.plan_fallback(state, &indices, filters, limit).await;
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(
                catalog = self.info.source.catalog(),
                "no estimate for a generated query: {e}"
            ),
        }
        let spec = RemoteScanSpec {
            relation: "query".to_string(),
            schema: Arc::new(self.schema.project(&indices)?),
            wire_types: indices
                .iter()
                .map(|&i| self.wire_types[i].clone())
                .collect(),
            queries: vec![query],
            snapshot: None,
            split_method: String::new(),
            split_payloads: vec![],
        };
        Ok(Arc::new(RemoteScanExec::try_new(
            Arc::clone(&self.info.source),
            spec,
        )?))
    }
}
