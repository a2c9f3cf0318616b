//! PostgreSQL's side of a [`crate::catalog::DatabaseCatalog`]: listing schemas
//! and tables from `pg_catalog`, and [`PostgresTable`], which plans
//! [`RemoteScanExec`]s.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::datatypes::{Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{plan_err, DataFusionError, Result};
use datafusion::datasource::TableType;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::sql::unparser::dialect::PostgreSqlDialect;
use weft_common::config::UnsupportedTypes;

use super::splits::ctid_splits;
use super::types::{map_column, quote_ident, PgColumn, WireType};
use super::PostgresSource;
use crate::catalog::Listing;
use crate::error::SourceError;
use crate::filters::{PushdownRules, SourceSyntax};
use crate::remote_scan::{RemoteScanExec, RemoteScanSpec};
use crate::splits::{column_splits, split_count, split_queries};

const LIST_TABLES: &str = "SELECT n.nspname::text, c.relname::text, c.relkind::text \
     FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind IN ('r','v','m','p','f') \
       AND n.nspname NOT IN ('pg_catalog','information_schema') \
       AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
     ORDER BY 1, 2";

const LIST_SCHEMAS: &str = "SELECT nspname::text FROM pg_catalog.pg_namespace \
     WHERE nspname NOT IN ('pg_catalog','information_schema') \
       AND nspname NOT LIKE 'pg\\_toast%' AND nspname NOT LIKE 'pg\\_temp%'";

const TABLE_COLUMNS: &str = "SELECT a.attname::text, t.typname::text, \
       CASE WHEN a.atttypmod = -1 AND t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END, \
       NOT a.attnotnull, t.typtype::text, bt.typname::text, et.typname::text \
     FROM pg_catalog.pg_attribute a \
     JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
     LEFT JOIN pg_catalog.pg_type bt ON bt.oid = t.typbasetype AND t.typtype = 'd' \
     LEFT JOIN pg_catalog.pg_type et ON et.oid = t.typelem AND t.typcategory = 'A' \
     WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped \
     ORDER BY a.attnum";

const TABLE_INFO: &str = "SELECT c.relkind::text, c.reltuples::float8, \
       pg_catalog.pg_relation_size(c.oid), current_setting('block_size')::int8 \
     FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE n.nspname = $1 AND c.relname = $2";

const PRIMARY_KEY: &str = "SELECT a.attname::text FROM pg_catalog.pg_index i \
     JOIN pg_catalog.pg_class c ON c.oid = i.indrelid \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey) \
     WHERE n.nspname = $1 AND c.relname = $2 AND i.indisprimary";

fn table_type(relkind: &str) -> TableType {
    match relkind {
        "v" | "m" => TableType::View,
        _ => TableType::Base,
    }
}

/// The schemas and tables of the database.
pub(super) async fn list(source: &Arc<PostgresSource>) -> Result<Listing, SourceError> {
    let client = source.client().await?;
    let mut fresh: Listing = BTreeMap::new();
    for row in client
        .query(LIST_SCHEMAS, &[])
        .await
        .map_err(|e| source.remote_error(&e))?
    {
        let schema: String = row.try_get(0).map_err(|e| source.remote_error(&e))?;
        fresh.entry(schema).or_default();
    }
    for row in client
        .query(LIST_TABLES, &[])
        .await
        .map_err(|e| source.remote_error(&e))?
    {
        let schema: String = row.try_get(0).map_err(|e| source.remote_error(&e))?;
        let table: String = row.try_get(1).map_err(|e| source.remote_error(&e))?;
        let kind: String = row.try_get(2).map_err(|e| source.remote_error(&e))?;
        fresh
            .entry(schema)
            .or_default()
            .insert(table, table_type(&kind));
    }
    client.release();
    Ok(fresh)
}

/// A PostgreSQL table or view.
#[derive(Debug)]
pub struct PostgresTable {
    source: Arc<PostgresSource>,
    schema_name: String,
    table: String,
    relkind: String,
    columns: Vec<PgColumn>,
    arrow_schema: SchemaRef,
    row_estimate: Option<usize>,
    bytes: u64,
    block_size: u64,
    primary_key: Vec<String>,
}

impl PostgresTable {
    /// Reads a table's columns and size; `None` if it does not exist.
    pub async fn load(
        source: &Arc<PostgresSource>,
        schema: &str,
        table: &str,
    ) -> Result<Option<Self>, SourceError> {
        let client = source.client().await?;
        let info = client
            .query_opt(TABLE_INFO, &[&schema, &table])
            .await
            .map_err(|e| source.remote_error(&e))?;
        let Some(info) = info else {
            client.release();
            return Ok(None);
        };
        let remote = |e: tokio_postgres::Error| source.remote_error(&e);
        let relkind: String = info.try_get(0).map_err(remote)?;
        let reltuples: f64 = info.try_get(1).map_err(remote)?;
        let bytes: i64 = info.try_get(2).map_err(remote)?;
        let block_size: i64 = info.try_get(3).map_err(remote)?;
        let rows = client
            .query(TABLE_COLUMNS, &[&schema, &table])
            .await
            .map_err(remote)?;
        let primary_key = client
            .query(PRIMARY_KEY, &[&schema, &table])
            .await
            .map_err(remote)?
            .iter()
            .map(|r| r.try_get::<_, String>(0))
            .collect::<Result<Vec<_>, _>>()
            .map_err(remote)?;
        client.release();
        let mut columns = Vec::with_capacity(rows.len());
        for row in rows {
            let name: String = row.try_get(0).map_err(remote)?;
            let typname: String = row.try_get(1).map_err(remote)?;
            let typmod: i32 = row.try_get(2).map_err(remote)?;
            let nullable: bool = row.try_get(3).map_err(remote)?;
            let typtype: String = row.try_get(4).map_err(remote)?;
            let base: Option<String> = row.try_get(5).map_err(remote)?;
            let elem: Option<String> = row.try_get(6).map_err(remote)?;
            let mapped = map_column(
                &typname,
                typmod,
                base.as_deref(),
                elem.as_deref(),
                typtype == "e",
            );
            match (mapped, source.config.unsupported_types) {
                (Some((data_type, wire)), _) => columns.push(PgColumn {
                    name,
                    data_type,
                    nullable,
                    wire,
                    as_text: false,
                    pg_type: typname,
                }),
                (None, UnsupportedTypes::Text) => columns.push(PgColumn {
                    name,
                    data_type: arrow::datatypes::DataType::Utf8,
                    nullable,
                    wire: WireType::Text,
                    as_text: true,
                    pg_type: typname,
                }),
                (None, UnsupportedTypes::Skip) => tracing::warn!(
                    catalog = %source.catalog,
                    "column {schema}.{table}.{name} has type {typname}, which Weft does not map; it is left out (unsupported_types = \"skip\")"
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
            relkind,
            columns,
            arrow_schema,
            // reltuples is -1 for tables never vacuumed or analyzed.
            row_estimate: (reltuples >= 0.0).then_some(reltuples as usize),
            bytes: bytes.max(0) as u64,
            block_size: block_size.max(1) as u64,
            primary_key,
        }))
    }

    fn rules(&self) -> PushdownRules {
        PushdownRules {
            columns: self
                .columns
                .iter()
                // char(n) compares with blank-padding semantics in
                // PostgreSQL, text casts compare as text: both stay in Weft.
                .filter(|c| !c.as_text && c.wire != WireType::Bpchar)
                .map(|c| (c.name.clone(), c.data_type.clone()))
                .collect::<HashMap<_, _>>(),
            string_ranges: self.source.config.string_range_pushdown,
            padded: self
                .columns
                .iter()
                .filter(|c| c.wire == WireType::Bpchar)
                .map(|c| c.name.clone())
                .collect(),
            syntax: SourceSyntax::POSTGRES,
        }
    }

    /// What the whole-query pushdown needs to know about this table.
    pub fn query_info(&self) -> crate::pushdown::QueryTableInfo {
        crate::pushdown::QueryTableInfo {
            source: Arc::clone(&self.source) as _,
            dialect: crate::pushdown::QueryDialect::Postgres,
            trust_strings: self.source.config.string_range_pushdown,
            enabled: self.source.config.query_pushdown,
            opaque_columns: self
                .columns
                .iter()
                .filter(|c| c.as_text || c.wire == WireType::Bpchar)
                .map(|c| c.name.clone())
                .collect(),
            padded_columns: self
                .columns
                .iter()
                .filter(|c| c.wire == WireType::Bpchar)
                .map(|c| c.name.clone())
                .collect(),
            primary_key: self.primary_key.clone(),
            bytes: matches!(self.relkind.as_str(), "r" | "m").then_some(self.bytes),
        }
    }

    /// The table's name in the database: schema, table.
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
    fn plan_splits(&self, max_splits: usize) -> Result<(Vec<String>, String)> {
        let key = format!("{}.{}", self.schema_name, self.table);
        let settings = self.source.config.tables.get(&key);
        if let Some(col_name) = settings.and_then(|s| s.split_column.as_ref()) {
            let s = settings.cloned().unwrap_or_default();
            let Some(column) = self.columns.iter().find(|c| &c.name == col_name) else {
                return plan_err!(
                    "catalog \"{}\": tables.\"{key}\".split_column \"{col_name}\" is not a column of {key}",
                    self.source.catalog
                );
            };
            let preds = column_splits(
                &quote_ident(&column.name),
                &column.data_type,
                s.lower_bound.as_deref().unwrap_or_default(),
                s.upper_bound.as_deref().unwrap_or_default(),
                s.splits.unwrap_or(1),
                |d| format!("'{d}'::date"),
            )
            .map_err(|e| {
                DataFusionError::Plan(format!(
                    "catalog \"{}\": tables.\"{key}\": {e}",
                    self.source.catalog
                ))
            })?;
            return Ok((preds, format!("column {col_name}")));
        }
        // ctid ranges only exist for heap relations.
        if !matches!(self.relkind.as_str(), "r" | "m") {
            return Ok((vec![], String::new()));
        }
        let pages = self.bytes.div_ceil(self.block_size);
        let n = match settings.and_then(|s| s.splits) {
            Some(n) => n,
            None => split_count(self.bytes, self.source.config.split_size, max_splits),
        };
        Ok((ctid_splits(pages, n), "ctid ranges".to_string()))
    }
}

#[async_trait]
impl TableProvider for PostgresTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.arrow_schema)
    }

    fn table_type(&self) -> TableType {
        table_type(&self.relkind)
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(self.rules().support(filters, &PostgreSqlDialect {}))
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
        let select = indices
            .iter()
            .map(|&i| {
                let c = &self.columns[i];
                if c.as_text {
                    format!("{}::text AS {}", quote_ident(&c.name), quote_ident(&c.name))
                } else {
                    quote_ident(&c.name)
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        let wire_types = indices
            .iter()
            .map(|&i| self.columns[i].wire.name())
            .collect();
        let conditions = self.rules().render_all(filters, &PostgreSqlDialect {})?;
        let base = format!("SELECT {select} FROM {}", self.relation_sql());
        let (splits, method) = match limit {
            // A limited read is cheap and must not be cut into pieces.
            Some(_) => (vec![], String::new()),
            None => self.plan_splits(state.config().target_partitions())?,
        };
        let (queries, snapshot) = if splits.len() > 1 {
            let snapshot = self.source.export_snapshot().await?;
            (
                split_queries(&base, &conditions, &splits, limit),
                Some(snapshot),
            )
        } else {
            (split_queries(&base, &conditions, &[], limit), None)
        };
        let spec = RemoteScanSpec {
            relation: format!("{}.{}", self.schema_name, self.table),
            schema,
            wire_types,
            queries,
            snapshot: snapshot.as_ref().map(|s| s.id.clone()),
            split_method: method,
            split_payloads: vec![],
        };
        let source: Arc<dyn crate::RemoteSource> = Arc::clone(&self.source) as _;
        let mut exec = RemoteScanExec::try_new(source, spec)?.with_table_estimate(
            self.row_estimate,
            !filters.is_empty(),
            limit,
        );
        if let Some(s) = snapshot {
            exec = exec.with_keep_alive(Arc::new(s) as Arc<dyn Any + Send + Sync>);
        }
        Ok(Arc::new(exec))
    }
}
