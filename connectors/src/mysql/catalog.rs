//! [`MysqlTable`]: a MySQL/MariaDB table or view, read with pushed-down
//! projection, filters and limit, split into key ranges when it is large.
//!
//! Splits: the catalog's per-table `split_column` settings, else, for a table
//! larger than `split_size` (`information_schema.TABLES.DATA_LENGTH`) with a
//! one-column integer primary key, equal ranges between the key's current
//! MIN and MAX. MySQL cannot share a snapshot between connections, so each
//! split reads its own consistent view; a table written to during the read
//! may show a row in the state before or after the write, never twice.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{plan_err, DataFusionError, Result};
use datafusion::datasource::TableType;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::sql::unparser::dialect::MySqlDialect;
use weft_common::config::UnsupportedTypes;

use super::types::{map_column, quote_ident, MyColumn, MyWire};
use super::MysqlSource;
use crate::error::SourceError;
use crate::filters::{PushdownRules, SourceSyntax};
use crate::remote_scan::{RemoteScanExec, RemoteScanSpec};
use crate::splits::{column_splits, split_count, split_queries};

/// A MySQL string literal (sessions run with `NO_BACKSLASH_ESCAPES`).
fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// How a column of an unmapped type is read as text: spatial values as WKT,
/// everything else through `CAST(... AS CHAR)`.
fn text_select(data_type: &str, quoted: &str) -> String {
    const SPATIAL: [&str; 8] = [
        "geometry",
        "point",
        "linestring",
        "polygon",
        "multipoint",
        "multilinestring",
        "multipolygon",
        "geometrycollection",
    ];
    if SPATIAL.contains(&data_type.to_ascii_lowercase().as_str()) {
        format!("ST_AsText({quoted})")
    } else {
        format!("CAST({quoted} AS CHAR)")
    }
}

fn mysql_date(d: &str) -> String {
    format!("DATE '{d}'")
}

/// A MySQL table or view.
#[derive(Debug)]
pub struct MysqlTable {
    source: Arc<MysqlSource>,
    schema_name: String,
    table: String,
    view: bool,
    columns: Vec<MyColumn>,
    arrow_schema: SchemaRef,
    row_estimate: Option<usize>,
    bytes: u64,
}

impl MysqlTable {
    /// Reads a table's columns and size; `None` if it does not exist.
    pub async fn load(
        source: &Arc<MysqlSource>,
        schema: &str,
        table: &str,
    ) -> Result<Option<Self>, SourceError> {
        let (s, t) = (quote_literal(schema), quote_literal(table));
        let info = source
            .query_text(&format!(
                "SELECT TABLE_TYPE, TABLE_ROWS, DATA_LENGTH FROM information_schema.TABLES \
                 WHERE TABLE_SCHEMA = {s} AND TABLE_NAME = {t}"
            ))
            .await?;
        let Some(info) = info.into_iter().next() else {
            return Ok(None);
        };
        let number = |v: Option<&Option<String>>| -> Option<u64> {
            v.and_then(|v| v.as_deref()).and_then(|v| v.parse().ok())
        };
        let view = info.first().and_then(|v| v.as_deref()) == Some("VIEW");
        let row_estimate = number(info.get(1)).map(|r| r as usize);
        let bytes = number(info.get(2)).unwrap_or(0);
        let rows = source
            .query_text(&format!(
                "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, NUMERIC_PRECISION, NUMERIC_SCALE, \
                        IS_NULLABLE, COLUMN_KEY \
                 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = {s} AND TABLE_NAME = {t} \
                 ORDER BY ORDINAL_POSITION"
            ))
            .await?;
        let mut columns = Vec::with_capacity(rows.len());
        for row in rows {
            let text = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
            let name = text(0);
            let data_type = text(1);
            let column_type = text(2);
            let precision = number(row.get(3));
            let scale = number(row.get(4));
            let nullable = text(5) != "NO";
            let primary_key = text(6) == "PRI";
            match (
                map_column(&name, &data_type, &column_type, precision, scale),
                source.config.unsupported_types,
            ) {
                (Some((data_type, wire, select)), _) => columns.push(MyColumn {
                    name,
                    data_type,
                    nullable,
                    wire,
                    select,
                    as_text: false,
                    primary_key,
                }),
                (None, UnsupportedTypes::Text) => columns.push(MyColumn {
                    select: text_select(&data_type, &quote_ident(&name)),
                    name,
                    data_type: DataType::Utf8,
                    nullable,
                    wire: MyWire::Text,
                    as_text: true,
                    primary_key,
                }),
                (None, UnsupportedTypes::Skip) => tracing::warn!(
                    catalog = %source.catalog,
                    "column {schema}.{table}.{name} has type {column_type}, which Weft does not map; it is left out (unsupported_types = \"skip\")"
                ),
            }
        }
        let arrow_schema = Arc::new(Schema::new(
            columns
                .iter()
                .map(|c| Field::new(&c.name, c.data_type.clone(), c.nullable))
                .collect::<Vec<_>>(),
        ));
        Ok(Some(Self {
            source: Arc::clone(source),
            schema_name: schema.to_string(),
            table: table.to_string(),
            view,
            columns,
            arrow_schema,
            row_estimate,
            bytes,
        }))
    }

    fn rules(&self) -> PushdownRules {
        let trust_strings = self.source.config.string_range_pushdown;
        PushdownRules {
            columns: self
                .columns
                .iter()
                // MySQL's usual collations ignore case and trailing blanks,
                // so even string equality may differ from Weft's: string
                // columns are compared in Weft unless the catalog trusts the
                // database's string comparisons.
                .filter(|c| !c.as_text && (trust_strings || c.data_type != DataType::Utf8))
                .filter(|c| c.data_type != DataType::Binary)
                .map(|c| (c.name.clone(), c.data_type.clone()))
                .collect::<HashMap<_, _>>(),
            string_ranges: trust_strings,
            padded: Default::default(),
            syntax: SourceSyntax::MYSQL,
        }
    }

    /// What the whole-query pushdown needs to know about this table.
    pub fn query_info(&self) -> crate::pushdown::QueryTableInfo {
        crate::pushdown::QueryTableInfo {
            source: Arc::clone(&self.source) as _,
            dialect: crate::pushdown::QueryDialect::Mysql,
            trust_strings: self.source.config.string_range_pushdown,
            enabled: self.source.config.query_pushdown,
            opaque_columns: self
                .columns
                .iter()
                .filter(|c| c.as_text)
                .map(|c| c.name.clone())
                .collect(),
            padded_columns: Default::default(),
            primary_key: self
                .columns
                .iter()
                .filter(|c| c.primary_key)
                .map(|c| c.name.clone())
                .collect(),
            bytes: (!self.view).then_some(self.bytes),
        }
    }

    /// The table's name in the database: database, table.
    pub fn remote_name(&self) -> Vec<String> {
        vec![self.schema_name.clone(), self.table.clone()]
    }

    fn relation_sql(&self) -> String {
        format!(
            "{}.{}",
            quote_ident(&self.schema_name),
            quote_ident(&self.table)
        )
    }

    /// The split predicates for this scan and how they were made.
    async fn plan_splits(&self, max_splits: usize) -> Result<(Vec<String>, String)> {
        let key = format!("{}.{}", self.schema_name, self.table);
        let settings = self
            .source
            .config
            .tables
            .get(&key)
            .cloned()
            .unwrap_or_default();
        if let Some(col_name) = &settings.split_column {
            let Some(column) = self.columns.iter().find(|c| &c.name == col_name) else {
                return plan_err!(
                    "catalog \"{}\": tables.\"{key}\".split_column \"{col_name}\" is not a column of {key}",
                    self.source.catalog
                );
            };
            let preds = column_splits(
                &quote_ident(&column.name),
                &column.data_type,
                settings.lower_bound.as_deref().unwrap_or_default(),
                settings.upper_bound.as_deref().unwrap_or_default(),
                settings.splits.unwrap_or(1),
                mysql_date,
            )
            .map_err(|e| {
                DataFusionError::Plan(format!(
                    "catalog \"{}\": tables.\"{key}\": {e}",
                    self.source.catalog
                ))
            })?;
            return Ok((preds, format!("column {col_name}")));
        }
        let n = match settings.splits {
            Some(n) => n,
            None => split_count(self.bytes, self.source.config.split_size, max_splits),
        };
        let keys: Vec<&MyColumn> = self.columns.iter().filter(|c| c.primary_key).collect();
        let [key_column] = keys.as_slice() else {
            return Ok((vec![], String::new()));
        };
        let integer = matches!(
            key_column.data_type,
            DataType::Int8
                | DataType::Int16
                | DataType::Int32
                | DataType::Int64
                | DataType::UInt8
                | DataType::UInt16
                | DataType::UInt32
                | DataType::UInt64
        );
        if n <= 1 || self.view || !integer {
            return Ok((vec![], String::new()));
        }
        let k = quote_ident(&key_column.name);
        let bounds = self
            .source
            .query_text(&format!(
                "SELECT MIN({k}), MAX({k}) FROM {}",
                self.relation_sql()
            ))
            .await?;
        let (Some(lo), Some(hi)) = (
            bounds.first().and_then(|r| r.first()).cloned().flatten(),
            bounds.first().and_then(|r| r.get(1)).cloned().flatten(),
        ) else {
            return Ok((vec![], String::new()));
        };
        if lo == hi {
            return Ok((vec![], String::new()));
        }
        // The range is [lo, hi]; the last split is open ended anyway.
        let preds =
            column_splits(&k, &key_column.data_type, &lo, &hi, n, mysql_date).map_err(|e| {
                DataFusionError::Plan(format!("catalog \"{}\": {key}: {e}", self.source.catalog))
            })?;
        Ok((preds, format!("primary key {} ranges", key_column.name)))
    }
}

#[async_trait]
impl TableProvider for MysqlTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.arrow_schema)
    }

    fn table_type(&self) -> TableType {
        if self.view {
            TableType::View
        } else {
            TableType::Base
        }
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(self.rules().support(filters, &MySqlDialect {}))
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
            None => (0..self.columns.len()).collect(),
        };
        let schema = Arc::new(self.arrow_schema.project(&indices)?);
        // An empty projection (count(*)) still needs a column to count rows.
        let select = if indices.is_empty() {
            "1".to_string()
        } else {
            indices
                .iter()
                .map(|&i| {
                    let c = &self.columns[i];
                    if c.select == quote_ident(&c.name) {
                        c.select.clone()
                    } else {
                        format!("{} AS {}", c.select, quote_ident(&c.name))
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let wire_types = indices
            .iter()
            .map(|&i| self.columns[i].wire.name())
            .collect();
        let conditions = self.rules().render_all(filters, &MySqlDialect {})?;
        let base = format!("SELECT {select} FROM {}", self.relation_sql());
        let (splits, method) = match limit {
            Some(_) => (vec![], String::new()),
            None => self.plan_splits(state.config().target_partitions()).await?,
        };
        let spec = RemoteScanSpec {
            relation: format!("{}.{}", self.schema_name, self.table),
            schema,
            wire_types,
            queries: split_queries(&base, &conditions, &splits, limit),
            snapshot: None,
            split_method: method,
            split_payloads: vec![],
        };
        let source: Arc<dyn crate::RemoteSource> = Arc::clone(&self.source) as _;
        let exec = RemoteScanExec::try_new(source, spec)?.with_table_estimate(
            self.row_estimate,
            !filters.is_empty(),
            limit,
        );
        Ok(Arc::new(exec))
    }
}
