//! Which filters a source database can evaluate, and their SQL text.
//!
//! A filter is pushed only when the source computes exactly what Weft would:
//! comparisons, boolean logic, `IS NULL`, `IN` lists, `LIKE`, `BETWEEN` and
//! arithmetic over columns and literals, widening numeric casts and a few
//! functions with the same meaning in both. Not pushed (Weft evaluates them):
//! range comparisons on strings, whose result depends on the database's
//! collation (unless the catalog sets `string_range_pushdown = true`),
//! functions, casts and operators the source's SQL lacks ([`SourceSyntax`]),
//! columns the source compares differently (`char(n)` ignores trailing
//! blanks) or that are read through `::text`, other functions, and anything
//! the unparser cannot render.

use std::collections::{HashMap, HashSet};

use arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{internal_err, Column, Result, ScalarValue};
use datafusion::logical_expr::{Expr, Operator, TableProviderFilterPushDown};
use datafusion::sql::unparser::dialect::Dialect;
use datafusion::sql::unparser::Unparser;

/// What the pushdown check knows about the table's columns.
#[derive(Debug)]
pub struct PushdownRules {
    /// Columns filters may reference, with their Arrow types.
    pub columns: HashMap<String, DataType>,
    /// Push `<`, `>`, `BETWEEN` on strings (collation dependent).
    pub string_ranges: bool,
    /// Blank-padded `char(n)` columns, not in `columns`: the database
    /// ignores trailing blanks when comparing them, Weft reads them
    /// without. Pushed only as `=`, `<>` or `IN` against literals that do
    /// not end in a blank, where both agree.
    pub padded: HashSet<String>,
    /// What the source's SQL has beyond comparisons and boolean logic.
    pub syntax: SourceSyntax,
}

/// Casts a source's SQL can express.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Casts {
    /// Every widening cast.
    Any,
    /// Only to 32/64-bit integers and decimals (MySQL's `SIGNED`, `DECIMAL`).
    IntegerAndDecimal,
    None,
}

impl Casts {
    pub(crate) fn allows(self, to: &DataType) -> bool {
        match self {
            Casts::Any => true,
            Casts::IntegerAndDecimal => {
                matches!(
                    to,
                    DataType::Int32 | DataType::Int64 | DataType::Decimal128(..)
                )
            }
            Casts::None => false,
        }
    }
}

/// The SQL features a source shares with DataFusion.
#[derive(Debug, Clone, Copy)]
pub struct SourceSyntax {
    /// Functions with the same result in DataFusion and the source.
    pub functions: &'static [&'static str],
    /// Which widening `CAST`s the source understands as the unparser writes
    /// them.
    pub casts: Casts,
    /// `IS [NOT] DISTINCT FROM`.
    pub distinct_from: bool,
}

impl SourceSyntax {
    pub const POSTGRES: Self = Self {
        functions: &[
            "lower",
            "upper",
            "abs",
            "btrim",
            "ltrim",
            "rtrim",
            "character_length",
            "coalesce",
        ],
        casts: Casts::Any,
        distinct_from: true,
    };
    /// Any SQL engine (Flight SQL servers): the standard's own functions only.
    pub const STANDARD: Self = Self {
        functions: &["lower", "upper", "abs", "coalesce", "character_length"],
        casts: Casts::None,
        distinct_from: true,
    };
    /// MySQL and MariaDB: no `btrim`, no `IS DISTINCT FROM`, and `CAST` knows
    /// only `SIGNED`/`DECIMAL`/`CHAR`/... (not `SMALLINT` or `DOUBLE
    /// PRECISION`).
    pub const MYSQL: Self = Self {
        functions: &[
            "lower",
            "upper",
            "abs",
            "ltrim",
            "rtrim",
            "character_length",
            "coalesce",
        ],
        casts: Casts::IntegerAndDecimal,
        distinct_from: false,
    };
}

impl PushdownRules {
    /// The SQL text of `expr` for `dialect`, or `None` if it must stay in Weft.
    pub fn render(&self, expr: &Expr, dialect: &dyn Dialect) -> Option<String> {
        if !self.supported(expr) {
            return None;
        }
        render_unqualified(expr, dialect)
    }

    /// For `supports_filters_pushdown`: `Exact` for the filters the source
    /// evaluates, `Unsupported` for the rest.
    pub fn support(
        &self,
        filters: &[&Expr],
        dialect: &dyn Dialect,
    ) -> Vec<TableProviderFilterPushDown> {
        filters
            .iter()
            .map(|f| match self.render(f, dialect) {
                Some(_) => TableProviderFilterPushDown::Exact,
                None => TableProviderFilterPushDown::Unsupported,
            })
            .collect()
    }

    /// The SQL of filters accepted by [`Self::support`].
    pub fn render_all(&self, filters: &[Expr], dialect: &dyn Dialect) -> Result<Vec<String>> {
        filters
            .iter()
            .map(|f| match self.render(f, dialect) {
                Some(sql) => Ok(sql),
                None => {
                    internal_err!("filter {f} was accepted for pushdown but cannot be rendered")
                }
            })
            .collect()
    }

    fn is_string(&self, e: &Expr) -> bool {
        match e {
            Expr::Column(c) => matches!(
                self.columns.get(&c.name),
                Some(DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
            ),
            Expr::Literal(v, _) => matches!(
                v,
                ScalarValue::Utf8(_) | ScalarValue::LargeUtf8(_) | ScalarValue::Utf8View(_)
            ),
            Expr::ScalarFunction(f) => f.args.iter().any(|a| self.is_string(a)),
            Expr::Cast(c) => self.is_string(&c.expr),
            _ => false,
        }
    }

    fn supported(&self, expr: &Expr) -> bool {
        if padded_comparison(expr, &self.padded) {
            return true;
        }
        match expr {
            Expr::Column(c) => self.columns.contains_key(&c.name),
            Expr::Literal(v, _) => literal_supported(v),
            Expr::BinaryExpr(b) => {
                let ok_op = match b.op {
                    Operator::Eq | Operator::NotEq | Operator::And | Operator::Or => true,
                    Operator::IsDistinctFrom | Operator::IsNotDistinctFrom => {
                        self.syntax.distinct_from
                    }
                    Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq => {
                        self.string_ranges || !(self.is_string(&b.left) || self.is_string(&b.right))
                    }
                    Operator::Plus | Operator::Minus | Operator::Multiply => {
                        !(self.is_string(&b.left) || self.is_string(&b.right))
                    }
                    _ => false,
                };
                ok_op && self.supported(&b.left) && self.supported(&b.right)
            }
            Expr::Not(e)
            | Expr::IsNull(e)
            | Expr::IsNotNull(e)
            | Expr::IsTrue(e)
            | Expr::IsFalse(e)
            | Expr::IsNotTrue(e)
            | Expr::IsNotFalse(e)
            | Expr::Negative(e) => self.supported(e),
            Expr::Between(b) => {
                (self.string_ranges || !self.is_string(&b.expr))
                    && self.supported(&b.expr)
                    && self.supported(&b.low)
                    && self.supported(&b.high)
            }
            Expr::InList(l) => {
                self.supported(&l.expr)
                    && l.list
                        .iter()
                        .all(|e| matches!(e, Expr::Literal(v, _) if literal_supported(v)))
            }
            Expr::Like(l) => {
                // Escapes other than the default backslash render differently.
                l.escape_char.is_none()
                    && self.supported(&l.expr)
                    && matches!(&*l.pattern, Expr::Literal(ScalarValue::Utf8(Some(_)), _))
            }
            Expr::Cast(c) => {
                let from = match &*c.expr {
                    Expr::Column(col) => self.columns.get(&col.name),
                    _ => None,
                };
                self.syntax.casts.allows(c.field.data_type())
                    && from.is_some_and(|from| widening(from, c.field.data_type()))
                    && self.supported(&c.expr)
            }
            Expr::ScalarFunction(f) => {
                self.syntax.functions.contains(&f.func.name())
                    && f.args.iter().all(|a| self.supported(a))
            }
            _ => false,
        }
    }
}

/// The SQL of `expr` with its columns unqualified (table qualifiers name
/// Weft's catalog, not the remote table), or `None` if it cannot be unparsed.
pub(crate) fn render_unqualified(expr: &Expr, dialect: &dyn Dialect) -> Option<String> {
    let unqualified = expr
        .clone()
        .transform(|e| {
            Ok(match e {
                Expr::Column(c) if c.relation.is_some() => {
                    Transformed::yes(Expr::Column(Column::new_unqualified(c.name)))
                }
                other => Transformed::no(other),
            })
        })
        .ok()?
        .data;
    let sql = Unparser::new(dialect).expr_to_sql(&unqualified).ok()?;
    Some(sql.to_string())
}

/// `col = 'x'`, `col <> 'x'` or `col IN ('x', ...)` on a blank-padded column
/// with literals that do not end in a blank.
pub(crate) fn padded_comparison(expr: &Expr, padded: &HashSet<String>) -> bool {
    let is_padded = |e: &Expr| matches!(e, Expr::Column(c) if padded.contains(&c.name));
    let plain_literal =
        |e: &Expr| matches!(e, Expr::Literal(ScalarValue::Utf8(Some(s)), _) if !s.ends_with(' '));
    match expr {
        Expr::BinaryExpr(b) if matches!(b.op, Operator::Eq | Operator::NotEq) => {
            (is_padded(&b.left) && plain_literal(&b.right))
                || (is_padded(&b.right) && plain_literal(&b.left))
        }
        Expr::InList(l) => is_padded(&l.expr) && l.list.iter().all(plain_literal),
        _ => false,
    }
}

pub(crate) fn literal_supported(v: &ScalarValue) -> bool {
    match v {
        ScalarValue::Boolean(_)
        | ScalarValue::Int8(_)
        | ScalarValue::Int16(_)
        | ScalarValue::Int32(_)
        | ScalarValue::Int64(_)
        | ScalarValue::UInt8(_)
        | ScalarValue::UInt16(_)
        | ScalarValue::UInt32(_)
        | ScalarValue::Decimal128(..)
        | ScalarValue::Utf8(_)
        | ScalarValue::LargeUtf8(_)
        | ScalarValue::Utf8View(_)
        | ScalarValue::Date32(_) => true,
        ScalarValue::Float32(f) => f.is_none_or(|f| f.is_finite()),
        ScalarValue::Float64(f) => f.is_none_or(|f| f.is_finite()),
        _ => false,
    }
}

/// Casts that cannot change a value (so the source may apply them).
pub(crate) fn widening(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    let int_rank = |t: &DataType| match t {
        Int16 => Some(16),
        Int32 => Some(32),
        Int64 => Some(64),
        _ => None,
    };
    match (from, to) {
        (a, b) if a == b => true,
        (a, b) if int_rank(a).is_some() && int_rank(b).is_some() => int_rank(a) <= int_rank(b),
        (Int16 | Int32, Float64) => true,
        (Int16 | Int32 | Int64, Decimal128(p, s)) => (*p as i32 - *s as i32) >= 19,
        (Decimal128(p1, s1), Decimal128(p2, s2)) => {
            s2 >= s1 && (*p2 as i32 - *s2 as i32) >= (*p1 as i32 - *s1 as i32)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::logical_expr::{col, lit};
    use datafusion::sql::unparser::dialect::PostgreSqlDialect;

    fn rules(string_ranges: bool) -> PushdownRules {
        PushdownRules {
            columns: [
                ("id".to_string(), DataType::Int32),
                ("name".to_string(), DataType::Utf8),
                ("d".to_string(), DataType::Date32),
            ]
            .into_iter()
            .collect(),
            string_ranges,
            padded: ["flag".to_string()].into_iter().collect(),
            syntax: SourceSyntax::POSTGRES,
        }
    }

    #[test]
    fn renders_portable_filters() {
        let r = rules(false);
        let d = PostgreSqlDialect {};
        let sql = r
            .render(&col("t.id").gt(lit(5)).and(col("name").eq(lit("a'b"))), &d)
            .unwrap();
        assert_eq!(sql, r#"(("id" > 5) AND ("name" = 'a''b'))"#);
        assert!(r.render(&col("name").like(lit("ab%")), &d).is_some());
        assert!(r
            .render(&col("id").in_list(vec![lit(1), lit(2)], false), &d)
            .is_some());
    }

    #[test]
    fn padded_columns_only_in_equality_with_plain_literals() {
        let d = PostgreSqlDialect {};
        let r = rules(false);
        assert!(r.render(&col("flag").eq(lit("R")), &d).is_some());
        assert!(r
            .render(&col("flag").in_list(vec![lit("A"), lit("F")], false), &d)
            .is_some());
        assert!(r.render(&col("flag").eq(lit("R ")), &d).is_none());
        assert!(r.render(&col("flag").lt(lit("R")), &d).is_none());
        assert!(r.render(&col("flag").like(lit("R%")), &d).is_none());
    }

    #[test]
    fn keeps_collation_dependent_and_unknown_in_weft() {
        let d = PostgreSqlDialect {};
        assert!(rules(false).render(&col("name").lt(lit("m")), &d).is_none());
        assert!(rules(true).render(&col("name").lt(lit("m")), &d).is_some());
        assert!(rules(false).render(&col("other").eq(lit(1)), &d).is_none());
        assert!(rules(false)
            .render(&(col("id") / lit(2)).eq(lit(1)), &d)
            .is_none());
    }
}
