//! Registers the catalogs of a catalog file into a DataFusion session.

use std::sync::Arc;

use datafusion::catalog::{
    CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider, SchemaProvider,
};
use datafusion::datasource::file_format::csv::CsvFormat;
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::file_format::FileFormat as DfFileFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::SessionContext;

use crate::config::{CatalogConfig, CatalogsConfig, FileFormat, StorageOptions};
use crate::object_stores::catalog_store;

/// Schema that a `files` catalog puts its tables in.
pub const FILES_SCHEMA: &str = "public";

/// Why a catalog could not be registered. Names the catalog and the cause.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog \"{catalog}\": cannot list {path}: {message}")]
    List {
        catalog: String,
        path: String,
        message: String,
    },
    #[error("catalog \"{catalog}\": table \"{table}\" ({location}): {message}")]
    Table {
        catalog: String,
        table: String,
        location: String,
        message: String,
    },
}

/// Registers every files catalog of `config` in `ctx`.
///
/// Returns one error per catalog that could not be registered; the others are
/// still registered, so one broken catalog does not hide the rest.
pub async fn register_catalogs(ctx: &SessionContext, config: &CatalogsConfig) -> Vec<CatalogError> {
    let mut errors = Vec::new();
    for (name, catalog) in &config.catalogs {
        match catalog {
            CatalogConfig::Files {
                path,
                format,
                storage,
            } => match files_catalog(ctx, name, path, *format, storage).await {
                Ok(provider) => {
                    ctx.register_catalog(name, provider);
                }
                Err(e) => errors.push(e),
            },
            // Database catalogs are registered by `weft-connectors`.
            CatalogConfig::Postgres(_) | CatalogConfig::Mysql(_) | CatalogConfig::FlightSql(_) => {}
        }
    }
    errors
}

/// The entries directly under a files catalog's path: (name, is a
/// directory, location URL or path).
async fn list_entries(
    ctx: &SessionContext,
    path: &str,
    storage: &StorageOptions,
) -> Result<Vec<(String, bool, String)>, String> {
    if let Some(store) = catalog_store(path, storage) {
        let s = store?;
        ctx.runtime_env()
            .register_object_store(&s.root, Arc::clone(&s.store));
        let prefix = (!s.prefix.as_ref().is_empty()).then_some(&s.prefix);
        let listing = s
            .store
            .list_with_delimiter(prefix)
            .await
            .map_err(|e| e.to_string())?;
        let mut entries = Vec::new();
        for dir in listing.common_prefixes {
            let name = dir.filename().unwrap_or_default().to_string();
            entries.push((name, true, format!("{}{dir}/", s.root)));
        }
        for object in listing.objects {
            let name = object.location.filename().unwrap_or_default().to_string();
            entries.push((name, false, format!("{}{}", s.root, object.location)));
        }
        return Ok(entries);
    }
    let dir = path.strip_prefix("file://").unwrap_or(path);
    let entries = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok())
        .map(|e| {
            let p = e.path();
            let is_dir = p.is_dir();
            let mut location = p.to_string_lossy().to_string();
            if is_dir && !location.ends_with('/') {
                location.push('/');
            }
            (
                e.file_name().to_string_lossy().to_string(),
                is_dir,
                location,
            )
        })
        .collect();
    Ok(entries)
}

async fn files_catalog(
    ctx: &SessionContext,
    name: &str,
    path: &str,
    format: FileFormat,
    storage: &StorageOptions,
) -> Result<Arc<dyn CatalogProvider>, CatalogError> {
    let list_err = |message: String| CatalogError::List {
        catalog: name.to_string(),
        path: path.to_string(),
        message,
    };
    let schema = Arc::new(MemorySchemaProvider::new());
    let mut entries = list_entries(ctx, path, storage).await.map_err(list_err)?;
    entries.sort();
    let ext = format.extension();
    for (file_name, is_dir, location) in entries {
        if file_name.starts_with('.') || file_name.starts_with('_') {
            continue;
        }
        let table = if is_dir {
            file_name.clone()
        } else if let Some(stem) = file_name.strip_suffix(ext) {
            stem.to_string()
        } else {
            continue;
        };
        let provider = listing_table(ctx, format, &location)
            .await
            .map_err(|message| CatalogError::Table {
                catalog: name.to_string(),
                table: table.clone(),
                location: location.clone(),
                message,
            })?;
        schema
            .register_table(table.to_lowercase(), provider)
            .map_err(|e| list_err(e.to_string()))?;
    }
    let catalog = Arc::new(MemoryCatalogProvider::new());
    catalog
        .register_schema(FILES_SCHEMA, schema)
        .map_err(|e| list_err(e.to_string()))?;
    Ok(catalog)
}

async fn listing_table(
    ctx: &SessionContext,
    format: FileFormat,
    location: &str,
) -> Result<Arc<ListingTable>, String> {
    // Formats take the session's table options (`weft_session_config`), so
    // every process reads the files with the same types.
    let state = ctx.state();
    let table_options = state.table_options();
    let file_format: Arc<dyn DfFileFormat> = match format {
        FileFormat::Parquet => {
            Arc::new(ParquetFormat::default().with_options(table_options.parquet.clone()))
        }
        FileFormat::Csv => Arc::new(
            CsvFormat::default()
                .with_options(table_options.csv.clone())
                .with_has_header(true),
        ),
        FileFormat::Json => {
            Arc::new(JsonFormat::default().with_options(table_options.json.clone()))
        }
    };
    let url = ListingTableUrl::parse(location).map_err(|e| e.to_string())?;
    let options = ListingOptions::new(file_format).with_file_extension(format.extension());
    let schema = options
        .infer_schema(&state, &url)
        .await
        .map_err(|e| e.to_string())?;
    let config = ListingTableConfig::new(url)
        .with_listing_options(options)
        .with_schema(schema);
    ListingTable::try_new(config)
        .map(Arc::new)
        .map_err(|e| e.to_string())
}
