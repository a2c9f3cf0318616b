//! Weft's connectors: database catalogs that read in parallel and push work
//! into the source.
//!
//! Each catalog kind is a DataFusion catalog whose tables plan
//! [`RemoteScanExec`]s: the SQL the source runs (projection, filters and limit
//! pushed into it) and how the read is cut into splits. Today: PostgreSQL
//! ([`postgres`]), read with binary `COPY` into Arrow builders, split by ctid
//! page ranges or a key column under one exported snapshot.
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

pub mod codec;
pub mod filters;
pub mod postgres;
pub mod remote_scan;

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::common::Result;
use datafusion::physical_plan::metrics::BaselineMetrics;
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};
use datafusion::prelude::SessionContext;
use weft_common::config::{CatalogConfig, CatalogsConfig};

pub use codec::ConnectorCodec;
pub use remote_scan::{RemoteScanExec, RemoteScanSpec};

use crate::postgres::catalog::PostgresCatalog;
use crate::postgres::types::WireType;
use crate::postgres::{PgError, PostgresSource};

/// A database that runs the queries of [`RemoteScanExec`]s.
pub trait RemoteSource: Debug + Send + Sync + 'static {
    /// Catalog name in the catalog file.
    fn catalog(&self) -> &str;
    /// Source kind, e.g. `postgres`.
    fn kind(&self) -> &'static str;
    /// Streams the rows of `query`, read under `snapshot` if given.
    fn execute_query(
        self: Arc<Self>,
        query: String,
        snapshot: Option<String>,
        schema: SchemaRef,
        wire_types: &[String],
        batch_size: usize,
        metrics: BaselineMetrics,
    ) -> Result<SendableRecordBatchStream>;
}

impl RemoteSource for PostgresSource {
    fn catalog(&self) -> &str {
        &self.catalog
    }

    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn execute_query(
        self: Arc<Self>,
        query: String,
        snapshot: Option<String>,
        schema: SchemaRef,
        wire_types: &[String],
        batch_size: usize,
        metrics: BaselineMetrics,
    ) -> Result<SendableRecordBatchStream> {
        let wire = wire_types
            .iter()
            .map(|w| {
                WireType::parse(w).ok_or_else(|| {
                    datafusion::common::DataFusionError::Internal(format!(
                        "unknown PostgreSQL wire type {w:?} (coordinator and worker versions differ?)"
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.scan(query, snapshot, schema, wire, batch_size, metrics)
    }
}

/// Why a connector catalog could not be set up. The process keeps running
/// with the other catalogs.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error(transparent)]
    Postgres(#[from] PgError),
}

/// The database sources of one process, by catalog name.
#[derive(Debug, Default, Clone)]
pub struct Connectors {
    postgres: BTreeMap<String, Arc<PostgresSource>>,
}

impl Connectors {
    /// Builds the sources of every database catalog in `config`. No
    /// connection is opened yet; catalogs whose settings are unusable are
    /// returned as errors and left out.
    pub fn from_config(config: &CatalogsConfig) -> (Self, Vec<ConnectorError>) {
        let mut connectors = Self::default();
        let mut errors = Vec::new();
        for (name, catalog) in &config.catalogs {
            match catalog {
                CatalogConfig::Postgres(db) => match PostgresSource::try_new(name, db.clone()) {
                    Ok(s) => {
                        connectors.postgres.insert(name.clone(), Arc::new(s));
                    }
                    Err(e) => errors.push(e.into()),
                },
                CatalogConfig::Files { .. } => {}
            }
        }
        (connectors, errors)
    }

    /// Registers every database catalog in `ctx`. A database that cannot be
    /// reached is still registered (its tables appear once it answers); its
    /// error is returned for the log.
    pub async fn register(&self, ctx: &SessionContext) -> Vec<ConnectorError> {
        let mut errors = Vec::new();
        for (name, source) in &self.postgres {
            let (catalog, error) = PostgresCatalog::load(Arc::clone(source)).await;
            ctx.register_catalog(name, catalog);
            if let Some(e) = error {
                errors.push(e.into());
            }
        }
        errors
    }

    /// The source of catalog `name`, if it is a database catalog here.
    pub fn source(&self, name: &str) -> Option<Arc<dyn RemoteSource>> {
        self.postgres
            .get(name)
            .map(|s| Arc::clone(s) as Arc<dyn RemoteSource>)
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
