//! The catalog file: which data sources a Weft process can see.
//!
//! ```toml
//! default_catalog = "tpch"      # optional; unqualified table names resolve here
//!
//! [catalogs.tpch]
//! kind = "files"
//! path = "/data/tpch"           # each file or directory directly under path is one table
//! format = "parquet"            # parquet | csv | json
//! ```
//!
//! Values may reference the environment with `${ENV:NAME}`; a missing variable
//! is an error naming the variable and the catalog.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why a catalog file could not be used. Each variant names the file, the field
/// and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read catalog file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("catalog file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("catalog file {path}: catalog \"{catalog}\" field `{field}`: {message}")]
    Field {
        path: PathBuf,
        catalog: String,
        field: &'static str,
        message: String,
    },
}

/// A parsed catalog file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CatalogsConfig {
    /// Catalog that unqualified table names resolve to.
    pub default_catalog: Option<String>,
    /// Catalogs by name, sorted.
    pub catalogs: BTreeMap<String, CatalogConfig>,
}

/// One catalog.
#[derive(Debug, Clone, PartialEq)]
pub enum CatalogConfig {
    /// A directory (or object-store prefix) of files; each entry directly under
    /// it is one table in schema `public`.
    Files { path: String, format: FileFormat },
}

/// File formats of a `files` catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    Parquet,
    Csv,
    Json,
}

impl FileFormat {
    /// File name extension DataFusion looks for.
    pub fn extension(self) -> &'static str {
        match self {
            FileFormat::Parquet => ".parquet",
            FileFormat::Csv => ".csv",
            FileFormat::Json => ".json",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    default_catalog: Option<String>,
    #[serde(default)]
    catalogs: BTreeMap<String, toml::Table>,
}

impl CatalogsConfig {
    /// Reads and validates a catalog file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses catalog file text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let mut catalogs = BTreeMap::new();
        for (name, table) in raw.catalogs {
            let catalog = parse_catalog(path, &name, &table)?;
            catalogs.insert(name, catalog);
        }
        if let Some(default) = &raw.default_catalog {
            if !catalogs.contains_key(default) {
                return Err(ConfigError::Parse {
                    path: path.to_path_buf(),
                    message: format!(
                        "default_catalog = \"{default}\" but no [catalogs.{default}] section exists"
                    ),
                });
            }
        }
        Ok(Self {
            default_catalog: raw.default_catalog,
            catalogs,
        })
    }

    /// The catalog unqualified names resolve to: `default_catalog`, else the
    /// only catalog, else none.
    pub fn effective_default(&self) -> Option<&str> {
        match &self.default_catalog {
            Some(d) => Some(d.as_str()),
            None if self.catalogs.len() == 1 => self.catalogs.keys().next().map(String::as_str),
            None => None,
        }
    }
}

fn parse_catalog(
    path: &Path,
    name: &str,
    table: &toml::Table,
) -> Result<CatalogConfig, ConfigError> {
    let field_err = |field: &'static str, message: String| ConfigError::Field {
        path: path.to_path_buf(),
        catalog: name.to_string(),
        field,
        message,
    };
    let get_str = |field: &'static str| -> Result<Option<String>, ConfigError> {
        match table.get(field) {
            None => Ok(None),
            Some(toml::Value::String(s)) => substitute_env(s)
                .map(Some)
                .map_err(|message| field_err(field, message)),
            Some(other) => Err(field_err(
                field,
                format!("expected a string, found {}", other.type_str()),
            )),
        }
    };
    let kind = get_str("kind")?
        .ok_or_else(|| field_err("kind", "missing; set kind = \"files\"".to_string()))?;
    match kind.as_str() {
        "files" => {
            for key in table.keys() {
                if !["kind", "path", "format"].contains(&key.as_str()) {
                    return Err(field_err(
                        "kind",
                        format!("unknown field `{key}` for kind \"files\" (expected path, format)"),
                    ));
                }
            }
            let path_value = get_str("path")?.ok_or_else(|| {
                field_err(
                    "path",
                    "missing; set path = \"/dir/with/tables\"".to_string(),
                )
            })?;
            let format = match get_str("format")?.as_deref() {
                None | Some("parquet") => FileFormat::Parquet,
                Some("csv") => FileFormat::Csv,
                Some("json") => FileFormat::Json,
                Some(other) => {
                    return Err(field_err(
                        "format",
                        format!("unknown format \"{other}\" (expected parquet, csv or json)"),
                    ))
                }
            };
            Ok(CatalogConfig::Files {
                path: path_value,
                format,
            })
        }
        "postgres" | "mysql" | "flightsql" => Err(field_err(
            "kind",
            format!("kind \"{kind}\" is not supported by this version of Weft (supported: files)"),
        )),
        other => Err(field_err(
            "kind",
            format!("unknown kind \"{other}\" (expected files)"),
        )),
    }
}

/// Replaces every `${ENV:NAME}` with the value of the environment variable.
pub fn substitute_env(value: &str) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${ENV:") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 6..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated `${{ENV:` in \"{}\"", redact_hint(value)))?;
        let var = &after[..end];
        let val = std::env::var(var)
            .map_err(|_| format!("environment variable {var} is not set; export {var}=..."))?;
        out.push_str(&val);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Shows only the shape of a value that may become a secret.
fn redact_hint(value: &str) -> String {
    value.split("${ENV:").next().unwrap_or_default().to_string() + "${ENV:...}"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<CatalogsConfig, ConfigError> {
        CatalogsConfig::parse(text, Path::new("cat.toml"))
    }

    #[test]
    fn files_catalog() {
        let c =
            parse("[catalogs.tpch]\nkind = \"files\"\npath = \"/d\"\nformat = \"csv\"\n").unwrap();
        assert_eq!(
            c.catalogs["tpch"],
            CatalogConfig::Files {
                path: "/d".into(),
                format: FileFormat::Csv
            }
        );
        assert_eq!(c.effective_default(), Some("tpch"));
    }

    #[test]
    fn errors_name_file_catalog_and_field() {
        let e = parse("[catalogs.x]\nkind = \"files\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cat.toml") && e.contains("\"x\"") && e.contains("`path`"),
            "{e}"
        );
        let e = parse("[catalogs.x]\nkind = \"files\"\npath = \"/d\"\nformat = \"orc\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown format \"orc\""), "{e}");
        let e = parse("[catalogs.x]\nkind = \"nope\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown kind \"nope\""), "{e}");
        let e = parse("default_catalog = \"y\"\n[catalogs.x]\nkind = \"files\"\npath = \"/d\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no [catalogs.y]"), "{e}");
        let e = parse("[catalogs.x\n").unwrap_err().to_string();
        assert!(e.contains("not valid"), "{e}");
    }

    #[test]
    fn env_substitution() {
        std::env::set_var("WEFT_TEST_DIR_X", "/data");
        assert_eq!(
            substitute_env("${ENV:WEFT_TEST_DIR_X}/t").unwrap(),
            "/data/t"
        );
        let e = substitute_env("${ENV:WEFT_SURELY_UNSET_VAR}").unwrap_err();
        assert!(e.contains("WEFT_SURELY_UNSET_VAR is not set"), "{e}");
    }
}
