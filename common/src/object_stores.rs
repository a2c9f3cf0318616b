//! Object stores of files catalogs whose `path` is a URL (`s3://`, `gs://`,
//! `az://`, `abfs://`, `http(s)://`).
//!
//! Every process (coordinator and workers) registers the same stores in its
//! DataFusion runtime, built from its own catalog file and environment, so a
//! plan names only the URL and never a credential.

use std::sync::Arc;

use datafusion::execution::runtime_env::RuntimeEnv;
use object_store::path::Path;
use object_store::ObjectStore;
use url::Url;

use crate::config::{CatalogConfig, CatalogsConfig, StorageOptions};

/// Environment variable prefixes that configure object stores, as the
/// object_store builders' `from_env` read them.
const ENV_PREFIXES: [&str; 3] = ["AWS_", "GOOGLE_", "AZURE_"];

/// A files catalog path that names an object store: the store, the URL of its
/// root (`s3://bucket/`) and the path of the catalog's prefix inside it.
#[derive(Debug)]
pub struct CatalogStore {
    pub store: Arc<dyn ObjectStore>,
    pub root: Url,
    pub prefix: Path,
}

/// `None` for local paths (plain or `file://`); otherwise the store of `path`
/// built from the environment and `storage`, or why it cannot be.
pub fn catalog_store(path: &str, storage: &StorageOptions) -> Option<Result<CatalogStore, String>> {
    if !path.contains("://") || path.starts_with("file://") {
        return None;
    }
    Some(build(path, storage))
}

fn build(path: &str, storage: &StorageOptions) -> Result<CatalogStore, String> {
    let url = Url::parse(path).map_err(|e| format!("not a valid URL: {e}"))?;
    // Environment first, the catalog's own settings override it.
    let mut options: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| ENV_PREFIXES.iter().any(|p| k.starts_with(p)))
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    options.extend(storage.0.iter().map(|(k, v)| (k.clone(), v.clone())));
    let (store, prefix) = object_store::parse_url_opts(&url, options).map_err(|e| {
        format!(
            "{e} (supported: s3://, gs://, az://, abfs://, http(s)://; settings come from AWS_*/GOOGLE_*/AZURE_* variables or [catalogs.NAME.storage])"
        )
    })?;
    let mut root = url.clone();
    root.set_path("/");
    root.set_query(None);
    root.set_fragment(None);
    Ok(CatalogStore {
        store: Arc::from(store),
        root,
        prefix,
    })
}

/// Registers the object store of every files catalog of `config` whose path
/// is a URL; returns `(catalog, message)` for those that cannot be built.
pub fn register_object_stores(
    runtime: &RuntimeEnv,
    config: &CatalogsConfig,
) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    for (name, catalog) in &config.catalogs {
        let CatalogConfig::Files { path, storage, .. } = catalog else {
            continue;
        };
        match catalog_store(path, storage) {
            None => {}
            Some(Ok(s)) => {
                runtime.register_object_store(&s.root, s.store);
            }
            Some(Err(message)) => errors.push((name.clone(), message)),
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths_need_no_store() {
        assert!(catalog_store("/data/tpch", &StorageOptions::default()).is_none());
        assert!(catalog_store("file:///data/tpch", &StorageOptions::default()).is_none());
    }

    #[test]
    fn s3_urls_name_bucket_root_and_prefix() {
        let mut storage = StorageOptions::default();
        storage.0.insert("aws_region".into(), "eu-west-1".into());
        let s = catalog_store("s3://lake/tpch/sf1", &storage)
            .expect("a store")
            .expect("valid");
        assert_eq!(s.root.as_str(), "s3://lake/");
        assert_eq!(s.prefix.as_ref(), "tpch/sf1");
    }

    #[test]
    fn unknown_schemes_are_explained() {
        let e = catalog_store("ftp://host/dir", &StorageOptions::default())
            .expect("a store")
            .expect_err("an error");
        assert!(e.contains("supported: s3://"), "{e}");
    }
}
