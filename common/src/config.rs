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
//! `path` may also be an object-store URL (`s3://bucket/prefix`, `gs://`,
//! `az://`, `abfs://`, `https://`); the store's settings come from the usual
//! environment variables (`AWS_ACCESS_KEY_ID`, `AWS_REGION`, `AWS_ENDPOINT`,
//! `GOOGLE_SERVICE_ACCOUNT`, `AZURE_STORAGE_ACCOUNT_NAME`, ...) and from
//! `[catalogs.NAME.storage]`, whose keys are object_store's configuration
//! keys:
//!
//! ```toml
//! [catalogs.lake]
//! kind = "files"
//! path = "s3://analytics/tpch"
//! [catalogs.lake.storage]
//! aws_endpoint = "http://10.0.0.9:9000"
//! aws_allow_http = "true"
//! aws_secret_access_key = "${ENV:LAKE_SECRET}"
//! ```
//!
//! ```toml
//! [catalogs.customersdb]
//! kind = "postgres"
//! url = "postgresql://app:${ENV:CUSTOMERS_PW}@10.0.0.5:5432/customers"
//! pool_size = 4                 # idle connections kept per process (default 4)
//! max_connections = 16          # connections open per process, idle included (default 16)
//! pool_timeout = "30s"          # wait for a connection beyond max_connections (default 30s)
//! connect_timeout = "10s"       # default 10s
//! tls = "prefer"                # disable | prefer (default) | require | verify-full
//! tls_ca_file = "/etc/ssl/db-ca.pem"  # the CA verify-full trusts
//! unsupported_types = "text"    # text (read as text, default) | skip (leave the column out)
//! split_size = "64MB"           # table bytes per parallel split (default 64MB)
//! string_range_pushdown = false # push <, >, BETWEEN on strings (collation!) to the source
//!
//! [catalogs.customersdb.tables."public.events"]
//! split_column = "id"           # split by a numeric or date column ...
//! lower_bound = "1"
//! upper_bound = "1000000"
//! splits = 8                    # ... or only `splits = N` for N ctid page ranges
//! ```
//!
//! Values may reference the environment with `${ENV:NAME}`; a missing variable
//! is an error naming the variable and the catalog.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    Files {
        path: String,
        format: FileFormat,
        /// Object-store settings (`[catalogs.NAME.storage]`).
        storage: StorageOptions,
    },
    /// A PostgreSQL database; its schemas and tables appear as they are.
    Postgres(DatabaseConfig),
    /// A MySQL or MariaDB server; its databases appear as schemas.
    Mysql(DatabaseConfig),
    /// A Flight SQL server (another Weft cluster included); the schemas of
    /// its catalog appear as they are.
    FlightSql(DatabaseConfig),
}

/// Object-store configuration keys and values of a files catalog. `Debug`
/// hides the values of keys that look like secrets.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StorageOptions(pub BTreeMap<String, String>);

impl StorageOptions {
    fn secret(key: &str) -> bool {
        let k = key.to_ascii_lowercase();
        ["secret", "password", "token", "key", "sas", "credential"]
            .iter()
            .any(|s| k.contains(s))
            && !k.ends_with("key_id")
    }
}

impl std::fmt::Debug for StorageOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                let shown = if Self::secret(k) { "***" } else { v.as_str() };
                (k, shown)
            }))
            .finish()
    }
}

/// A connection URL that may hold a password. `Debug` and `Display` hide it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL with its password, for the driver only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with every secret replaced by `***`: the password of
    /// `user:password@`, the value of a secret-looking query parameter
    /// (`?password=`, `&sslpassword=`, `token=`, ...), and, for a libpq-style
    /// `key=value` connection string, the value of every secret-looking key.
    pub fn redacted(&self) -> String {
        let url = &self.0;
        let Some(scheme_end) = url.find("://") else {
            return redact_key_values(url);
        };
        let rest = &url[scheme_end + 3..];
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = match rest[..authority_end].rfind('@') {
            Some(at) => match rest[..at].find(':') {
                Some(colon) => format!("{}:***{}", &rest[..colon], &rest[at..authority_end]),
                None => rest[..authority_end].to_string(),
            },
            None => rest[..authority_end].to_string(),
        };
        let tail = &rest[authority_end..];
        let tail = match tail.split_once('?') {
            Some((path, query)) => {
                let (query, fragment) = match query.split_once('#') {
                    Some((q, f)) => (q, format!("#{f}")),
                    None => (query, String::new()),
                };
                let query: Vec<String> = query
                    .split('&')
                    .map(|pair| match pair.split_once('=') {
                        Some((k, _)) if is_secret_key(k) => format!("{k}=***"),
                        _ => pair.to_string(),
                    })
                    .collect();
                format!("{path}?{}{fragment}", query.join("&"))
            }
            None => tail.to_string(),
        };
        format!("{}{authority}{tail}", &url[..scheme_end + 3])
    }
}

/// Whether a connection parameter's name says it holds a secret.
fn is_secret_key(key: &str) -> bool {
    let key = key.trim().to_ascii_lowercase();
    let key = key.replace(['-', '_'], "");
    [
        "password",
        "passwd",
        "pwd",
        "pass",
        "secret",
        "token",
        "apikey",
        "accesskey",
        "privatekey",
    ]
    .iter()
    .any(|s| key == *s || key.ends_with(s))
}

/// A libpq-style `key=value key='quoted value'` string with secret values
/// replaced by `***` (anything else is returned as it is).
fn redact_key_values(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if c.is_whitespace() {
            out.push(c);
            chars.next();
            continue;
        }
        // Key up to '=' (or a bare word).
        let mut key_end = start;
        while let Some(&(i, c)) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key_end = i + c.len_utf8();
            chars.next();
        }
        let key = &text[start..key_end];
        out.push_str(key);
        let Some(&(_, '=')) = chars.peek() else {
            continue;
        };
        chars.next();
        out.push('=');
        // Value: quoted with '' and backslash escapes, or up to whitespace.
        let mut value = String::new();
        if let Some(&(_, '\'')) = chars.peek() {
            value.push('\'');
            chars.next();
            while let Some((_, c)) = chars.next() {
                value.push(c);
                if c == '\\' {
                    if let Some((_, e)) = chars.next() {
                        value.push(e);
                    }
                } else if c == '\'' {
                    break;
                }
            }
        } else {
            while let Some(&(_, c)) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        if is_secret_key(key) {
            out.push_str("***");
        } else {
            out.push_str(&value);
        }
    }
    out
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl std::fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Transport security towards a database (as libpq's `sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain text.
    Disable,
    /// TLS when the server offers it, else plain text with a warning in the
    /// log (the certificate is not verified).
    Prefer,
    /// TLS or no connection (encrypted; the certificate is not verified).
    Require,
    /// TLS with the server's certificate verified against `tls_ca_file`
    /// and its name against the URL's host.
    VerifyFull,
}

/// What to do with a column whose type has no Arrow mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsupportedTypes {
    /// Read it as text (the source casts it).
    Text,
    /// Leave the column out of the table, with a warning.
    Skip,
}

/// How one table is read in parallel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableSplitConfig {
    /// Number of splits; with no `split_column`, ctid page ranges.
    pub splits: Option<usize>,
    /// Numeric or date column to split by, with its bounds (as Spark's
    /// partitionColumn / lowerBound / upperBound / numPartitions).
    pub split_column: Option<String>,
    pub lower_bound: Option<String>,
    pub upper_bound: Option<String>,
}

/// A database catalog (`postgres`, `mysql`, `flightsql`).
#[derive(Debug, Clone, PartialEq)]
pub struct DatabaseConfig {
    pub url: SecretUrl,
    pub pool_size: usize,
    /// Connections this process may hold open to the database at once,
    /// idle ones included.
    pub max_connections: usize,
    /// How long a reader waits for a connection when `max_connections` are
    /// open, before it fails.
    pub pool_timeout: Duration,
    pub connect_timeout: Duration,
    pub tls: TlsMode,
    /// CA certificates (PEM) that `verify-full` trusts.
    pub tls_ca_file: Option<std::path::PathBuf>,
    pub unsupported_types: UnsupportedTypes,
    /// Table bytes per split when splitting by the table's size.
    pub split_size: u64,
    /// Push range comparisons on strings (collation dependent) to the source.
    pub string_range_pushdown: bool,
    /// Per table (`"schema.table"`) split settings.
    pub tables: BTreeMap<String, TableSplitConfig>,
    /// Flight SQL: the server's catalog whose schemas this catalog shows.
    pub remote_catalog: Option<String>,
    /// Send whole single-database sub-plans (joins, aggregates, top-N) to
    /// the database as one query.
    pub query_pushdown: bool,
}

impl DatabaseConfig {
    pub fn new(url: SecretUrl) -> Self {
        Self {
            url,
            pool_size: 4,
            max_connections: 16,
            pool_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            tls: TlsMode::Prefer,
            tls_ca_file: None,
            unsupported_types: UnsupportedTypes::Text,
            split_size: 64 * 1024 * 1024,
            string_range_pushdown: false,
            tables: BTreeMap::new(),
            remote_catalog: None,
            query_pushdown: true,
        }
    }
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
    let kind = get_str("kind")?.ok_or_else(|| {
        field_err(
            "kind",
            "missing; set kind = \"files\", \"postgres\", \"mysql\" or \"flightsql\"".to_string(),
        )
    })?;
    match kind.as_str() {
        "files" => {
            for key in table.keys() {
                if !["kind", "path", "format", "storage"].contains(&key.as_str()) {
                    return Err(field_err(
                        "kind",
                        format!(
                            "unknown field `{key}` for kind \"files\" (expected path, format, storage)"
                        ),
                    ));
                }
            }
            let mut storage = StorageOptions::default();
            match table.get("storage") {
                None => {}
                Some(toml::Value::Table(options)) => {
                    for (key, value) in options {
                        let value = match value {
                            toml::Value::String(s) => substitute_env(s)
                                .map_err(|m| field_err("storage", format!("{key}: {m}")))?,
                            toml::Value::Boolean(b) => b.to_string(),
                            toml::Value::Integer(i) => i.to_string(),
                            other => {
                                return Err(field_err(
                                    "storage",
                                    format!("{key}: expected a string, found {}", other.type_str()),
                                ))
                            }
                        };
                        storage.0.insert(key.clone(), value);
                    }
                }
                Some(other) => {
                    return Err(field_err(
                        "storage",
                        format!(
                            "expected a table of object-store settings, found {}",
                            other.type_str()
                        ),
                    ))
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
                storage,
            })
        }
        "postgres" => parse_database(
            table,
            &field_err,
            &get_str,
            "postgresql://user:${ENV:PASSWORD}@host:5432/db",
        )
        .map(CatalogConfig::Postgres),
        "mysql" => parse_database(
            table,
            &field_err,
            &get_str,
            "mysql://user:${ENV:PASSWORD}@host:3306/db",
        )
        .map(CatalogConfig::Mysql),
        "flightsql" => parse_database(table, &field_err, &get_str, "grpc://host:50050")
            .map(CatalogConfig::FlightSql),
        other => Err(field_err(
            "kind",
            format!("unknown kind \"{other}\" (expected files, postgres, mysql or flightsql)"),
        )),
    }
}

fn parse_database(
    table: &toml::Table,
    field_err: &dyn Fn(&'static str, String) -> ConfigError,
    get_str: &dyn Fn(&'static str) -> Result<Option<String>, ConfigError>,
    url_example: &str,
) -> Result<DatabaseConfig, ConfigError> {
    // A Flight SQL server is not split by Weft and has its own catalogs.
    let fields: &[&str] = if url_example.starts_with("grpc") {
        &["kind", "url", "connect_timeout", "tls", "catalog"]
    } else {
        &[
            "kind",
            "url",
            "pool_size",
            "max_connections",
            "pool_timeout",
            "connect_timeout",
            "tls",
            "tls_ca_file",
            "unsupported_types",
            "split_size",
            "string_range_pushdown",
            "query_pushdown",
            "tables",
        ]
    };
    for key in table.keys() {
        if !fields.contains(&key.as_str()) {
            return Err(field_err(
                "kind",
                format!(
                    "unknown field `{key}` (expected one of {})",
                    fields[1..].join(", ")
                ),
            ));
        }
    }
    let url = get_str("url")?
        .ok_or_else(|| field_err("url", format!("missing; set url = \"{url_example}\"")))?;
    let mut config = DatabaseConfig::new(SecretUrl::new(url));
    match table.get("pool_size") {
        None => {}
        Some(toml::Value::Integer(n)) if *n >= 1 && *n <= 1024 => config.pool_size = *n as usize,
        Some(other) => {
            return Err(field_err(
                "pool_size",
                format!("expected an integer from 1 to 1024, found {other}"),
            ))
        }
    }
    match table.get("max_connections") {
        None => {}
        Some(toml::Value::Integer(n)) if *n >= 1 && *n <= 4096 => {
            config.max_connections = *n as usize
        }
        Some(other) => {
            return Err(field_err(
                "max_connections",
                format!("expected an integer from 1 to 4096, found {other}"),
            ))
        }
    }
    if config.pool_size > config.max_connections {
        return Err(field_err(
            "pool_size",
            format!(
                "{} idle connections cannot be kept with max_connections = {}; lower pool_size or raise max_connections",
                config.pool_size, config.max_connections
            ),
        ));
    }
    if let Some(t) = get_str("pool_timeout")? {
        config.pool_timeout = parse_duration(&t).map_err(|m| field_err("pool_timeout", m))?;
    }
    config.remote_catalog = get_str("catalog")?;
    if let Some(t) = get_str("connect_timeout")? {
        config.connect_timeout = parse_duration(&t).map_err(|m| field_err("connect_timeout", m))?;
    }
    config.tls = match get_str("tls")?.as_deref() {
        None | Some("prefer") => TlsMode::Prefer,
        Some("disable") => TlsMode::Disable,
        Some("require") => TlsMode::Require,
        Some("verify-full") => TlsMode::VerifyFull,
        Some(other) => {
            return Err(field_err(
                "tls",
                format!(
                    "unknown mode \"{other}\" (expected disable, prefer, require or verify-full)"
                ),
            ))
        }
    };
    config.tls_ca_file = get_str("tls_ca_file")?.map(std::path::PathBuf::from);
    if config.tls == TlsMode::VerifyFull && config.tls_ca_file.is_none() {
        return Err(field_err(
            "tls",
            "verify-full needs tls_ca_file = \"/path/to/ca.pem\" (the CA that issued the database's certificate)".to_string(),
        ));
    }
    config.unsupported_types = match get_str("unsupported_types")?.as_deref() {
        None | Some("text") => UnsupportedTypes::Text,
        Some("skip") => UnsupportedTypes::Skip,
        Some(other) => {
            return Err(field_err(
                "unsupported_types",
                format!("unknown value \"{other}\" (expected text or skip)"),
            ))
        }
    };
    if let Some(size) = get_str("split_size")? {
        config.split_size = parse_size(&size).map_err(|m| field_err("split_size", m))? as u64;
        if config.split_size == 0 {
            return Err(field_err("split_size", "must be larger than 0".to_string()));
        }
    }
    match table.get("string_range_pushdown") {
        None => {}
        Some(toml::Value::Boolean(b)) => config.string_range_pushdown = *b,
        Some(other) => {
            return Err(field_err(
                "string_range_pushdown",
                format!("expected true or false, found {other}"),
            ))
        }
    }
    match table.get("query_pushdown") {
        None => {}
        Some(toml::Value::Boolean(b)) => config.query_pushdown = *b,
        Some(other) => {
            return Err(field_err(
                "query_pushdown",
                format!("expected true or false, found {other}"),
            ))
        }
    }
    match table.get("tables") {
        None => {}
        Some(toml::Value::Table(tables)) => {
            for (name, value) in tables {
                let split = parse_table_split(name, value).map_err(|m| field_err("tables", m))?;
                config.tables.insert(name.clone(), split);
            }
        }
        Some(other) => {
            return Err(field_err(
                "tables",
                format!("expected a table of [tables.\"schema.table\"] sections, found {other}"),
            ))
        }
    }
    Ok(config)
}

fn parse_table_split(name: &str, value: &toml::Value) -> Result<TableSplitConfig, String> {
    let toml::Value::Table(t) = value else {
        return Err(format!("tables.\"{name}\": expected a section"));
    };
    if !name.contains('.') {
        return Err(format!(
            "tables.\"{name}\": name tables as \"schema.table\" (e.g. \"public.{name}\")"
        ));
    }
    let mut split = TableSplitConfig::default();
    for (key, v) in t {
        let as_string = || -> Result<String, String> {
            match v {
                toml::Value::String(s) => Ok(s.clone()),
                toml::Value::Integer(i) => Ok(i.to_string()),
                other => Err(format!(
                    "tables.\"{name}\".{key}: expected a string or integer, found {other}"
                )),
            }
        };
        match key.as_str() {
            "splits" => match v {
                toml::Value::Integer(n) if *n >= 1 && *n <= 4096 => split.splits = Some(*n as usize),
                other => {
                    return Err(format!(
                        "tables.\"{name}\".splits: expected an integer from 1 to 4096, found {other}"
                    ))
                }
            },
            "split_column" => split.split_column = Some(as_string()?),
            "lower_bound" => split.lower_bound = Some(as_string()?),
            "upper_bound" => split.upper_bound = Some(as_string()?),
            other => {
                return Err(format!(
                    "tables.\"{name}\": unknown field `{other}` (expected splits, split_column, lower_bound, upper_bound)"
                ))
            }
        }
    }
    if split.split_column.is_some()
        && (split.lower_bound.is_none() || split.upper_bound.is_none() || split.splits.is_none())
    {
        return Err(format!(
            "tables.\"{name}\": split_column needs lower_bound, upper_bound and splits"
        ));
    }
    if split.split_column.is_none() && (split.lower_bound.is_some() || split.upper_bound.is_some())
    {
        return Err(format!(
            "tables.\"{name}\": lower_bound/upper_bound need split_column"
        ));
    }
    Ok(split)
}

/// Parses durations such as `10s`, `500ms`, `2m` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration \"{text}\": expected e.g. 10s, 500ms or 2m"))?;
    let secs = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        other => {
            return Err(format!(
                "invalid duration unit \"{other}\" in \"{text}\" (use ms, s or m)"
            ))
        }
    };
    Ok(Duration::from_secs_f64(secs))
}

/// Parses sizes such as `512M`, `4G`, `2GiB`, `1048576`.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| {
        format!("invalid size \"{text}\": expected a number with an optional unit, e.g. 4G")
    })?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" | "tib" => 1024.0f64.powi(4),
        other => {
            return Err(format!(
                "invalid size unit \"{other}\" in \"{text}\" (use K, M, G or T)"
            ))
        }
    };
    Ok((value * mult) as usize)
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
                format: FileFormat::Csv,
                storage: StorageOptions::default(),
            }
        );
        assert_eq!(c.effective_default(), Some("tpch"));
    }

    #[test]
    fn files_catalog_storage_options_hide_secrets() {
        std::env::set_var("WEFT_TEST_LAKE_SECRET_X", "s3cr3t");
        let c = parse(
            "[catalogs.lake]\nkind = \"files\"\npath = \"s3://b/p\"\n\
             [catalogs.lake.storage]\naws_endpoint = \"http://h:9000\"\naws_allow_http = true\n\
             aws_access_key_id = \"AK\"\naws_secret_access_key = \"${ENV:WEFT_TEST_LAKE_SECRET_X}\"\n",
        )
        .unwrap();
        let CatalogConfig::Files { storage, .. } = &c.catalogs["lake"] else {
            panic!("files catalog");
        };
        assert_eq!(storage.0["aws_allow_http"], "true");
        assert_eq!(storage.0["aws_secret_access_key"], "s3cr3t");
        let shown = format!("{:?}", c);
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(
            shown.contains("AK") && shown.contains("http://h:9000"),
            "{shown}"
        );
        let e = parse("[catalogs.lake]\nkind = \"files\"\npath = \"s3://b\"\nstorage = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("field `storage`"), "{e}");
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
    fn mysql_and_flightsql_catalogs() {
        let c = parse(
            r#"
[catalogs.shop]
kind = "mysql"
url = "mysql://app:pw@db:3306/orders"
query_pushdown = false
string_range_pushdown = true

[catalogs.remote]
kind = "flightsql"
url = "grpc://weft:7000"
catalog = "tpch"
connect_timeout = "2s"
"#,
        )
        .unwrap();
        let CatalogConfig::Mysql(my) = &c.catalogs["shop"] else {
            panic!("not mysql: {c:?}")
        };
        assert!(!my.query_pushdown && my.string_range_pushdown);
        assert!(!format!("{c:?}").contains(":pw@"));
        let CatalogConfig::FlightSql(fl) = &c.catalogs["remote"] else {
            panic!("not flightsql: {c:?}")
        };
        assert_eq!(fl.remote_catalog.as_deref(), Some("tpch"));
        assert_eq!(fl.connect_timeout, Duration::from_secs(2));
        // Split settings mean nothing for a Flight SQL server.
        let e = parse(
            "[catalogs.r]\nkind = \"flightsql\"\nurl = \"grpc://h:1\"\nsplit_size = \"1MB\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field `split_size`"), "{e}");
        let e = parse("[catalogs.m]\nkind = \"mysql\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("mysql://user:"), "{e}");
    }

    #[test]
    fn postgres_catalog() {
        std::env::set_var("WEFT_TEST_PG_PW_X", "s3cret");
        let c = parse(
            r#"
[catalogs.pg]
kind = "postgres"
url = "postgresql://app:${ENV:WEFT_TEST_PG_PW_X}@db:5432/shop"
pool_size = 2
connect_timeout = "3s"
split_size = "1MB"
[catalogs.pg.tables."public.orders"]
split_column = "id"
lower_bound = 1
upper_bound = 1000
splits = 4
"#,
        )
        .unwrap();
        let CatalogConfig::Postgres(db) = &c.catalogs["pg"] else {
            panic!("not postgres: {c:?}")
        };
        assert_eq!(db.url.expose(), "postgresql://app:s3cret@db:5432/shop");
        assert_eq!(db.pool_size, 2);
        assert_eq!(db.connect_timeout, Duration::from_secs(3));
        assert_eq!(db.split_size, 1024 * 1024);
        let t = &db.tables["public.orders"];
        assert_eq!(t.split_column.as_deref(), Some("id"));
        assert_eq!(t.lower_bound.as_deref(), Some("1"));
        assert_eq!(t.splits, Some(4));
        // The password shows neither in Debug nor in Display.
        let shown = format!("{c:?} {}", db.url);
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("postgresql://app:***@db:5432/shop"),
            "{shown}"
        );

        let e = parse("[catalogs.pg]\nkind = \"postgres\"\nurl = \"x\"\ntls = \"maybe\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`tls`") && e.contains("maybe"), "{e}");
        let e = parse(
            "[catalogs.pg]\nkind = \"postgres\"\nurl = \"x\"\n[catalogs.pg.tables.\"public.t\"]\nsplit_column = \"id\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("needs lower_bound"), "{e}");
        let e = parse("[catalogs.pg]\nkind = \"postgres\"\nurl = \"postgresql://a:${ENV:WEFT_SURELY_UNSET_PW}@h/d\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("WEFT_SURELY_UNSET_PW is not set"), "{e}");
    }

    #[test]
    fn redacts_urls() {
        assert_eq!(
            SecretUrl::new("mysql://u:p@w@h:1/d").redacted(),
            "mysql://u:***@h:1/d"
        );
        assert_eq!(
            SecretUrl::new("postgresql://h/d").redacted(),
            "postgresql://h/d"
        );
        assert_eq!(SecretUrl::new("grpc://u@h:1").redacted(), "grpc://u@h:1");
        // Passwords in query parameters.
        assert_eq!(
            SecretUrl::new("postgresql://h:5432/d?user=u&password=hunter2&sslmode=require")
                .redacted(),
            "postgresql://h:5432/d?user=u&password=***&sslmode=require"
        );
        assert_eq!(
            SecretUrl::new("mysql://u:p@h/d?ssl-mode=REQUIRED&sslpassword=k#frag").redacted(),
            "mysql://u:***@h/d?ssl-mode=REQUIRED&sslpassword=***#frag"
        );
        assert_eq!(
            SecretUrl::new("grpc+tls://h:1?token=abc&catalog=x").redacted(),
            "grpc+tls://h:1?token=***&catalog=x"
        );
        // libpq key=value strings, quoted values included.
        assert_eq!(
            SecretUrl::new("host=h user=u password=hunter2 dbname=d").redacted(),
            "host=h user=u password=*** dbname=d"
        );
        assert_eq!(
            SecretUrl::new("host=h password='it\\'s secret' dbname=d").redacted(),
            "host=h password=*** dbname=d"
        );
        for shown in [
            SecretUrl::new("postgresql://u:hunter2@h/d?password=hunter2").to_string(),
            format!("{:?}", SecretUrl::new("user=u password=hunter2")),
        ] {
            assert!(!shown.contains("hunter2"), "{shown}");
        }
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
