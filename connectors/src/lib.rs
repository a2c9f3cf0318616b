//! Weft's connectors: database catalogs that read in parallel and push work
//! into the source.
//!
//! Each catalog kind is a DataFusion catalog whose tables plan
//! [`RemoteScanExec`]s: the SQL the source runs (projection, filters and limit
//! pushed into it) and how the read is cut into splits:
//! - PostgreSQL ([`postgres`]): binary `COPY` decoded into Arrow builders,
//!   split by ctid page ranges or a key column under one exported snapshot;
//! - MySQL and MariaDB ([`mysql`]): text protocol rows into Arrow, split by
//!   ranges of the integer primary key or a configured column;
//! - Flight SQL servers ([`flightsql`]), another Weft cluster included: one
//!   split per endpoint the server returns.
//!
//! Main types: [`Connectors`] (the sources of one process, built from its
//! catalog file), [`RemoteSource`], [`RemoteScanExec`], [`ConnectorCodec`].
//!
//! ```no_run
//! # async fn run(config: weft_common::config::CatalogsConfig) {
//! use datafusion::prelude::SessionContext;
//! use weft_connectors::Connectors;
//! let (connectors, errors) = Connectors::from_config(&config);
//! let ctx = SessionContext::new();
//! for e in errors.into_iter().chain(connectors.register(&ctx).await) {
//!     eprintln!("{e}");
//! }
//! # }
//! ```

pub mod catalog;
pub mod codec;
pub mod dbtls;
pub mod error;
pub mod filters;
pub mod flightsql;
pub mod keyfilter;
pub mod mysql;
pub mod postgres;
pub mod pushdown;
pub mod regroup;
pub mod remote_scan;
pub mod slots;
pub mod splits;

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::TableProvider;
use datafusion::common::Result;
use datafusion::physical_plan::metrics::BaselineMetrics;
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};
use datafusion::prelude::SessionContext;
use weft_common::config::{CatalogConfig, CatalogsConfig};

pub use catalog::DatabaseCatalog;
pub use codec::ConnectorCodec;
pub use error::SourceError;
pub use keyfilter::KeyFilters;
pub use pushdown::QueryPushdown;
pub use regroup::CatalogJoinGrouping;
pub use remote_scan::{RemoteScanExec, RemoteScanSpec};

use crate::catalog::Listing;
use crate::flightsql::FlightSqlSource;
use crate::mysql::MysqlSource;
use crate::postgres::PostgresSource;

/// What one split of a [`RemoteScanExec`] asks its source to stream.
#[derive(Debug, Clone)]
pub struct ScanRequest {
    /// The SQL the source runs.
    pub query: String,
    /// Snapshot all splits read under (PostgreSQL's exported snapshot id).
    pub snapshot: Option<String>,
    /// Source-specific data of this split (a Flight SQL endpoint).
    pub payload: Option<Vec<u8>>,
    pub schema: SchemaRef,
    /// Per column, how the source sends it (source specific).
    pub wire_types: Vec<String>,
    pub batch_size: usize,
}

/// What a database's planner says about a query it would run.
#[derive(Debug, Clone, PartialEq)]
pub struct RemotePlan {
    /// Estimated total cost, in the database's own units.
    pub total_cost: f64,
    /// Estimated rows.
    pub rows: f64,
    /// Subqueries the plan runs again for every row of an outer input
    /// (PostgreSQL's correlated `SubPlan`s), by name.
    pub per_row_subqueries: Vec<String>,
}

impl RemotePlan {
    /// Reads the output of PostgreSQL's `EXPLAIN (FORMAT JSON)`.
    pub fn from_postgres_json(json: &str) -> Option<RemotePlan> {
        let value: serde_json::Value = serde_json::from_str(json).ok()?;
        let plan = value.get(0)?.get("Plan")?;
        let mut per_row_subqueries = Vec::new();
        collect_subplans(plan, &mut per_row_subqueries);
        Some(RemotePlan {
            total_cost: plan.get("Total Cost")?.as_f64()?,
            rows: plan.get("Plan Rows")?.as_f64()?,
            per_row_subqueries,
        })
    }
}

/// Names of the correlated subplans under `node`: `SubPlan N` runs per row
/// of its parent, `InitPlan N` once.
fn collect_subplans(node: &serde_json::Value, out: &mut Vec<String>) {
    if let Some(name) = node.get("Subplan Name").and_then(|n| n.as_str()) {
        if name.starts_with("SubPlan") {
            out.push(name.to_string());
        }
    }
    if let Some(children) = node.get("Plans").and_then(|p| p.as_array()) {
        for c in children {
            collect_subplans(c, out);
        }
    }
}

/// A database that lists its tables, plans their scans and runs the queries
/// of [`RemoteScanExec`]s.
#[async_trait]
pub trait RemoteSource: Debug + Send + Sync + 'static {
    /// Catalog name in the catalog file.
    fn catalog(&self) -> &str;
    /// Source kind, e.g. `postgres`.
    fn kind(&self) -> &'static str;
    /// The source's schemas and their tables.
    async fn list(self: Arc<Self>) -> Result<Listing, SourceError>;
    /// Table `schema.name` (columns read now), or `None` if it does not exist.
    async fn table(
        self: Arc<Self>,
        schema: &str,
        name: &str,
    ) -> Result<Option<Arc<dyn TableProvider>>, SourceError>;
    /// Checks that the source accepts `sql` without running it (for
    /// generated queries); sources that cannot check accept everything.
    async fn validate(self: Arc<Self>, _sql: &str) -> Result<(), SourceError> {
        Ok(())
    }
    /// The source's own plan of `sql`, without running it (PostgreSQL's
    /// `EXPLAIN`); `None` from sources that do not tell.
    async fn explain(self: Arc<Self>, _sql: &str) -> Result<Option<RemotePlan>, SourceError> {
        Ok(None)
    }
    /// Opens a snapshot that several reads can share (PostgreSQL's
    /// `pg_export_snapshot`): its id and the resource that keeps it open.
    async fn export_snapshot(
        self: Arc<Self>,
    ) -> Result<Option<(String, Arc<dyn Any + Send + Sync>)>, SourceError> {
        Ok(None)
    }
    /// Streams the rows of one split.
    fn execute_query(
        self: Arc<Self>,
        request: ScanRequest,
        metrics: BaselineMetrics,
    ) -> Result<SendableRecordBatchStream>;
}

/// Parses the wire types of a plan with `parse`; an unknown one means the
/// coordinator and this worker run different versions.
pub(crate) fn parse_wire_types<T>(
    wire_types: &[String],
    kind: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Vec<T>> {
    wire_types
        .iter()
        .map(|w| {
            parse(w).ok_or_else(|| {
                datafusion::common::DataFusionError::Internal(format!(
                    "unknown {kind} wire type {w:?} (coordinator and worker versions differ?)"
                ))
            })
        })
        .collect()
}

/// The database sources of one process, by catalog name.
#[derive(Debug, Default, Clone)]
pub struct Connectors {
    sources: BTreeMap<String, Arc<dyn RemoteSource>>,
}

impl Connectors {
    /// Builds the sources of every database catalog in `config`. No
    /// connection is opened yet; catalogs whose settings are unusable are
    /// returned as errors and left out.
    pub fn from_config(config: &CatalogsConfig) -> (Self, Vec<SourceError>) {
        let mut connectors = Self::default();
        let mut errors = Vec::new();
        for (name, catalog) in &config.catalogs {
            let source: Result<Arc<dyn RemoteSource>, SourceError> = match catalog {
                CatalogConfig::Postgres(db) => {
                    PostgresSource::try_new(name, db.clone()).map(|s| Arc::new(s) as _)
                }
                CatalogConfig::Mysql(db) => {
                    MysqlSource::try_new(name, db.clone()).map(|s| Arc::new(s) as _)
                }
                CatalogConfig::FlightSql(db) => {
                    FlightSqlSource::try_new(name, db.clone()).map(|s| Arc::new(s) as _)
                }
                CatalogConfig::Files { .. } => continue,
            };
            match source {
                Ok(s) => {
                    connectors.sources.insert(name.clone(), s);
                }
                Err(e) => errors.push(e),
            }
        }
        (connectors, errors)
    }

    /// Registers every database catalog in `ctx`. A database that cannot be
    /// reached is still registered (its tables appear once it answers); its
    /// error is returned for the log.
    pub async fn register(&self, ctx: &SessionContext) -> Vec<SourceError> {
        let mut errors = Vec::new();
        for (name, source) in &self.sources {
            let (catalog, error) = DatabaseCatalog::load(Arc::clone(source)).await;
            ctx.register_catalog(name, catalog);
            if let Some(e) = error {
                errors.push(e);
            }
        }
        errors
    }

    /// The source of catalog `name`, if it is a database catalog here.
    pub fn source(&self, name: &str) -> Option<Arc<dyn RemoteSource>> {
        self.sources.get(name).map(Arc::clone)
    }

    /// Codec for [`RemoteScanExec`] that resolves catalogs in this process.
    pub fn codec(&self) -> Arc<ConnectorCodec> {
        Arc::new(ConnectorCodec::new(self.clone()))
    }
}

/// Resources the coordinator must hold while `plan` runs (exported snapshots).
pub fn keep_alives(plan: &Arc<dyn ExecutionPlan>) -> Vec<Arc<dyn Any + Send + Sync>> {
    let mut out = Vec::new();
    let mut stack = vec![Arc::clone(plan)];
    while let Some(p) = stack.pop() {
        if let Some(scan) = p.downcast_ref::<RemoteScanExec>() {
            if let Some(k) = scan.keep_alive() {
                out.push(Arc::clone(k));
            }
        }
        stack.extend(p.children().into_iter().cloned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::RemotePlan;

    #[test]
    fn postgres_plan_names_the_subqueries_run_per_row() {
        // EXPLAIN (FORMAT JSON) of an EXISTS over a grouped derived table, as
        // PostgreSQL 15 plans it: a SubPlan under the filter, and an
        // InitPlan that runs once.
        let json = r#"[{"Plan": {"Node Type": "Seq Scan", "Relation Name": "orders",
            "Total Cost": 1234567.5, "Plan Rows": 750000,
            "Plans": [
              {"Node Type": "Result", "Parent Relationship": "InitPlan", "Subplan Name": "InitPlan 1 (returns $0)",
               "Total Cost": 0.01, "Plan Rows": 1},
              {"Node Type": "Subquery Scan", "Parent Relationship": "SubPlan", "Subplan Name": "SubPlan 2",
               "Total Cost": 1.5, "Plan Rows": 1,
               "Plans": [{"Node Type": "HashAggregate", "Total Cost": 1.2, "Plan Rows": 1}]}
            ]}}]"#;
        let plan = RemotePlan::from_postgres_json(json).expect("parses");
        assert_eq!(plan.total_cost, 1234567.5);
        assert_eq!(plan.rows, 750000.0);
        assert_eq!(plan.per_row_subqueries, vec!["SubPlan 2".to_string()]);

        let semi = r#"[{"Plan": {"Node Type": "Hash Join", "Join Type": "Semi", "Total Cost": 99.0,
            "Plan Rows": 10, "Plans": [{"Node Type": "Seq Scan", "Total Cost": 5.0, "Plan Rows": 100}]}}]"#;
        let plan = RemotePlan::from_postgres_json(semi).expect("parses");
        assert!(plan.per_row_subqueries.is_empty());
        assert!(RemotePlan::from_postgres_json("not json").is_none());
    }
}
