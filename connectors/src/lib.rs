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
