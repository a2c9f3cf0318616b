//! A PostgreSQL database as a DataFusion catalog: its schemas and tables as
//! they are, each table a [`PostgresTable`] that plans [`RemoteScanExec`]s.
//!
//! Schema and table names are listed when the catalog is registered (for
//! `information_schema` and Flight SQL metadata) and refreshed whenever a
//! table is looked up; a table's columns are read from `pg_catalog` each time
//! a query names it, so new and dropped tables are seen without a restart.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::datatypes::{Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, SchemaProvider, Session, TableProvider};
use datafusion::common::{plan_err, DataFusionError, Result};
use datafusion::datasource::TableType;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::sql::unparser::dialect::PostgreSqlDialect;
use parking_lot::RwLock;
use weft_common::config::UnsupportedTypes;

use super::splits::{column_splits, ctid_splits, split_count};
use super::types::{map_column, quote_ident, PgColumn, WireType};
use super::{PgError, PostgresSource};
use crate::filters::PushdownRules;
use crate::remote_scan::{RemoteScanExec, RemoteScanSpec};

type Listing = BTreeMap<String, BTreeMap<String, TableType>>;
/// Objects created in Weft (`CREATE VIEW` in a PostgreSQL schema): they live
/// in the coordinator, not in the database.
type LocalObjects = RwLock<HashMap<(String, String), Arc<dyn TableProvider>>>;

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

fn table_type(relkind: &str) -> TableType {
    match relkind {
        "v" | "m" => TableType::View,
        _ => TableType::Base,
    }
}

/// A PostgreSQL database as a catalog.
#[derive(Debug)]
pub struct PostgresCatalog {
    source: Arc<PostgresSource>,
    listing: Arc<RwLock<Listing>>,
    local: Arc<LocalObjects>,
}

impl PostgresCatalog {
    /// Lists the database. A database that cannot be reached still gives a
    /// catalog (empty until the database answers), plus the error to report.
    pub async fn load(source: Arc<PostgresSource>) -> (Arc<Self>, Option<PgError>) {
        let catalog = Arc::new(Self {
            source,
            listing: Arc::new(RwLock::new(BTreeMap::new())),
            local: Arc::new(RwLock::new(HashMap::new())),
        });
        let error = refresh_listing(&catalog.source, &catalog.listing)
            .await
            .err();
        (catalog, error)
    }
}

async fn refresh_listing(
    source: &Arc<PostgresSource>,
    listing: &RwLock<Listing>,
) -> Result<(), PgError> {
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
    *listing.write() = fresh;
    Ok(())
}

impl CatalogProvider for PostgresCatalog {
    fn schema_names(&self) -> Vec<String> {
        self.listing.read().keys().cloned().collect()
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        // Any name resolves; whether it exists is asked of the database when a
        // table is looked up, so schemas created later are found too.
        Some(Arc::new(PostgresSchema {
            source: Arc::clone(&self.source),
            schema: name.to_string(),
            listing: Arc::clone(&self.listing),
            local: Arc::clone(&self.local),
        }))
    }
}

/// One schema of a PostgreSQL catalog.
#[derive(Debug)]
pub struct PostgresSchema {
    source: Arc<PostgresSource>,
    schema: String,
    listing: Arc<RwLock<Listing>>,
    local: Arc<LocalObjects>,
}

impl PostgresSchema {
    fn local(&self, name: &str) -> Option<Arc<dyn TableProvider>> {
        self.local
            .read()
            .get(&(self.schema.clone(), name.to_string()))
            .cloned()
    }
}

#[async_trait]
impl SchemaProvider for PostgresSchema {
    fn table_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .listing
            .read()
            .get(&self.schema)
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default();
        names.extend(
            self.local
                .read()
                .keys()
                .filter(|(s, _)| s == &self.schema)
                .map(|(_, n)| n.clone()),
        );
        names
    }

    fn register_table(
        &self,
        name: String,
        table: Arc<dyn TableProvider>,
    ) -> Result<Option<Arc<dyn TableProvider>>> {
        if self.table_exist(&name) {
            return plan_err!(
                "{}.{}.{name} already exists in the database; Weft creates views beside tables, not over them",
                self.source.catalog,
                self.schema
            );
        }
        Ok(self
            .local
            .write()
            .insert((self.schema.clone(), name), table))
    }

    fn deregister_table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        Ok(self
            .local
            .write()
            .remove(&(self.schema.clone(), name.to_string())))
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if let Some(local) = self.local(name) {
            return Ok(Some(local));
        }
        let table = PostgresTable::load(&self.source, &self.schema, name).await?;
        if table.is_none() {
            // Keep the listing in step with the database.
            if let Err(e) = refresh_listing(&self.source, &self.listing).await {
                tracing::debug!("{e}");
            }
        }
        Ok(table.map(|t| Arc::new(t) as Arc<dyn TableProvider>))
    }

    async fn table_type(&self, name: &str) -> Result<Option<TableType>> {
        if let Some(local) = self.local(name) {
            return Ok(Some(local.table_type()));
        }
        Ok(self
            .listing
            .read()
            .get(&self.schema)
            .and_then(|t| t.get(name))
            .copied())
    }

    fn table_exist(&self, name: &str) -> bool {
        if self.local(name).is_some() {
            return true;
        }
        self.listing
            .read()
            .get(&self.schema)
            .is_some_and(|t| t.contains_key(name))
    }
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
}

impl PostgresTable {
    /// Reads a table's columns and size; `None` if it does not exist.
    pub async fn load(
        source: &Arc<PostgresSource>,
        schema: &str,
        table: &str,
    ) -> Result<Option<Self>, PgError> {
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
        }
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
                &column.name,
                &column.data_type,
                s.lower_bound.as_deref().unwrap_or_default(),
                s.upper_bound.as_deref().unwrap_or_default(),
                s.splits.unwrap_or(1),
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
        let rules = self.rules();
        let dialect = PostgreSqlDialect {};
        Ok(filters
            .iter()
            .map(|f| match rules.render(f, &dialect) {
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
        let rules = self.rules();
        let dialect = PostgreSqlDialect {};
        let mut conditions = Vec::with_capacity(filters.len());
        for f in filters {
            match rules.render(f, &dialect) {
                Some(sql) => conditions.push(sql),
                None => {
                    return datafusion::common::internal_err!(
                        "filter {f} was accepted for pushdown but cannot be rendered"
                    )
                }
            }
        }
        let base = format!("SELECT {select} FROM {}", self.relation_sql());
        let (splits, method) = match limit {
            // A limited read is cheap and must not be cut into pieces.
            Some(_) => (vec![], String::new()),
            None => self.plan_splits(state.config().target_partitions())?,
        };
        let query_for = |split: Option<&str>| {
            let mut all: Vec<String> = conditions.clone();
            if let Some(s) = split {
                all.push(format!("({s})"));
            }
            let mut q = base.clone();
            if !all.is_empty() {
                q.push_str(" WHERE ");
                q.push_str(&all.join(" AND "));
            }
            if let Some(n) = limit {
                q.push_str(&format!(" LIMIT {n}"));
            }
            q
        };
        let (queries, snapshot) = if splits.len() > 1 {
            let snapshot = self.source.export_snapshot().await?;
            (
                splits.iter().map(|s| query_for(Some(s))).collect(),
                Some(snapshot),
            )
        } else {
            (vec![query_for(None)], None)
        };
        let spec = RemoteScanSpec {
            relation: format!("{}.{}", self.schema_name, self.table),
            schema,
            wire_types,
            queries,
            snapshot: snapshot.as_ref().map(|s| s.id.clone()),
            split_method: method,
        };
        let rows = self
            .row_estimate
            .map(|r| if filters.is_empty() { r } else { r / 5 });
        let source: Arc<dyn crate::RemoteSource> = Arc::clone(&self.source) as _;
        let mut exec = RemoteScanExec::try_new(source, spec)?.with_row_estimate(match limit {
            Some(n) => rows.map(|r| r.min(n)).or(Some(n)),
            None => rows,
        });
        if let Some(s) = snapshot {
            exec = exec.with_keep_alive(Arc::new(s) as Arc<dyn Any + Send + Sync>);
        }
        Ok(Arc::new(exec))
    }
}
