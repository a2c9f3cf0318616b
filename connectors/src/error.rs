//! [`SourceError`]: why talking to a source database failed.

use datafusion::error::DataFusionError;

/// Why talking to a database catalog failed. Names the catalog and the host,
/// never the password.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("catalog \"{catalog}\": url {url} is not a valid {kind} URL: {reason}")]
    Url {
        catalog: String,
        kind: &'static str,
        url: String,
        reason: String,
    },
    #[error("catalog \"{catalog}\": TLS to Flight SQL servers is not supported yet; use tls = \"disable\", or a TLS-terminating proxy")]
    TlsUnsupported { catalog: String },
    #[error("catalog \"{catalog}\": cannot use tls_ca_file: {reason}")]
    TlsCa { catalog: String, reason: String },
    #[error("catalog \"{catalog}\": all {max} connections to {host} this process may open (max_connections) stayed in use for {secs} s; raise max_connections in the catalog file if the database allows more connections, lower the table's splits, or run fewer queries at once (pool_timeout bounds the wait)")]
    PoolExhausted {
        catalog: String,
        host: String,
        max: usize,
        secs: f64,
    },
    #[error("catalog \"{catalog}\": cannot connect to {host} as user \"{user}\": {reason}")]
    Connect {
        catalog: String,
        host: String,
        user: String,
        reason: String,
    },
    #[error(
        "catalog \"{catalog}\": connecting to {host} timed out after {secs:.1}s (connect_timeout)"
    )]
    ConnectTimeout {
        catalog: String,
        host: String,
        secs: f64,
    },
    #[error("catalog \"{catalog}\" ({host}): {message}")]
    Remote {
        catalog: String,
        host: String,
        message: String,
    },
}

impl From<SourceError> for DataFusionError {
    fn from(e: SourceError) -> Self {
        DataFusionError::External(Box::new(e))
    }
}
