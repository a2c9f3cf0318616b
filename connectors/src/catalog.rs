//! A source database as a DataFusion catalog: its schemas and tables as they
//! are, each table planned by the source ([`RemoteSource::table`]).
//!
//! Schema and table names are listed when the catalog is registered (for
//! `information_schema` and Flight SQL metadata) and refreshed whenever a
//! table that is not there is looked up; a table's columns are read from the
//! source each time a query names it, so new and dropped tables are seen
//! without a restart.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::common::{plan_err, Result};
use datafusion::datasource::TableType;
use parking_lot::RwLock;

use crate::error::SourceError;
use crate::RemoteSource;

/// Schemas of a source, each with its tables and their types.
pub type Listing = BTreeMap<String, BTreeMap<String, TableType>>;

/// Objects created in Weft (`CREATE VIEW` in a database's schema): they live
/// in the coordinator, not in the database.
type LocalObjects = RwLock<HashMap<(String, String), Arc<dyn TableProvider>>>;

/// A source database as a catalog.
#[derive(Debug)]
pub struct DatabaseCatalog {
    source: Arc<dyn RemoteSource>,
    listing: Arc<RwLock<Listing>>,
    local: Arc<LocalObjects>,
}

impl DatabaseCatalog {
    /// Lists the database. A database that cannot be reached still gives a
    /// catalog (empty until the database answers), plus the error to report.
    pub async fn load(source: Arc<dyn RemoteSource>) -> (Arc<Self>, Option<SourceError>) {
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
    source: &Arc<dyn RemoteSource>,
    listing: &RwLock<Listing>,
) -> Result<(), SourceError> {
    let fresh = Arc::clone(source).list().await?;
    *listing.write() = fresh;
    Ok(())
}

impl CatalogProvider for DatabaseCatalog {
    fn schema_names(&self) -> Vec<String> {
        self.listing.read().keys().cloned().collect()
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        // Any name resolves; whether it exists is asked of the database when a
        // table is looked up, so schemas created later are found too.
        Some(Arc::new(DatabaseSchema {
            source: Arc::clone(&self.source),
            schema: name.to_string(),
            listing: Arc::clone(&self.listing),
            local: Arc::clone(&self.local),
        }))
    }
}

/// One schema of a database catalog.
#[derive(Debug)]
pub struct DatabaseSchema {
    source: Arc<dyn RemoteSource>,
    schema: String,
    listing: Arc<RwLock<Listing>>,
    local: Arc<LocalObjects>,
}

impl DatabaseSchema {
    fn local(&self, name: &str) -> Option<Arc<dyn TableProvider>> {
        self.local
            .read()
            .get(&(self.schema.clone(), name.to_string()))
            .cloned()
    }
}

#[async_trait]
impl SchemaProvider for DatabaseSchema {
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
                self.source.catalog(),
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
        let table = Arc::clone(&self.source).table(&self.schema, name).await?;
        if table.is_none() {
            // Keep the listing in step with the database.
            if let Err(e) = refresh_listing(&self.source, &self.listing).await {
                tracing::debug!("{e}");
            }
        }
        Ok(table)
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
