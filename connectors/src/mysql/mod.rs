//! The MySQL / MariaDB connector: connections, catalog, text protocol scans,
//! key-range splits.
//!
//! A MySQL server's databases are the catalog's schemas
//! (`ordersdb.shop.orders` is table `orders` of database `shop`), as in
//! Trino. Every session runs with `time_zone = '+00:00'` (TIMESTAMP values
//! arrive in UTC) and `NO_BACKSLASH_ESCAPES` (string literals mean what the
//! unparser wrote).

pub mod catalog;
pub mod types;

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::catalog::TableProvider;
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_plan::metrics::BaselineMetrics;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::SendableRecordBatchStream;
use futures::StreamExt;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder};
use parking_lot::Mutex;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use weft_common::config::{DatabaseConfig, TlsMode};

use self::catalog::MysqlTable;
use self::types::{MyWire, TextDecoder};
use crate::catalog::Listing;
use crate::error::SourceError;
use crate::slots::{ConnectionSlots, Slot};
use crate::{RemoteSource, ScanRequest};

/// Databases that are the server's own, not users'.
const SYSTEM_SCHEMAS: &str = "('information_schema','mysql','performance_schema','sys')";

/// The message of a driver error: the server's message and code, or the
/// transport error.
pub fn my_message(e: &mysql_async::Error) -> String {
    match e {
        mysql_async::Error::Server(s) => format!("{} (MySQL error {})", s.message, s.code),
        other => other.to_string(),
    }
}

/// One MySQL catalog as seen by one process: settings and idle connections.
pub struct MysqlSource {
    pub catalog: String,
    pub config: DatabaseConfig,
    opts: Opts,
    /// `opts` without TLS: what `prefer` falls back to.
    plain: Opts,
    warned_plain: std::sync::atomic::AtomicBool,
    host: String,
    user: String,
    idle: Mutex<Vec<PooledConn>>,
    /// At most `max_connections` open at once.
    slots: Arc<ConnectionSlots>,
}

/// A connection counted towards `max_connections` until dropped.
pub struct PooledConn {
    conn: Conn,
    permit: Option<OwnedSemaphorePermit>,
    slots: Arc<ConnectionSlots>,
}

impl std::fmt::Debug for PooledConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledConn")
            .field("id", &self.conn.id())
            .finish()
    }
}

impl std::ops::Deref for PooledConn {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        &self.conn
    }
}

impl std::ops::DerefMut for PooledConn {
    fn deref_mut(&mut self) -> &mut Conn {
        &mut self.conn
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.slots.freed();
    }
}

impl std::fmt::Debug for MysqlSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MysqlSource")
            .field("catalog", &self.catalog)
            .field("host", &self.host)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl MysqlSource {
    pub fn try_new(catalog: &str, config: DatabaseConfig) -> Result<Self, SourceError> {
        let opts = Opts::from_url(config.url.expose()).map_err(|e| SourceError::Url {
            catalog: catalog.to_string(),
            kind: "MySQL",
            url: config.url.redacted(),
            reason: e.to_string(),
        })?;
        let ssl = match config.tls {
            TlsMode::Disable => None,
            // Encrypted, the certificate not verified (as libpq's require).
            TlsMode::Prefer | TlsMode::Require => Some(
                mysql_async::SslOpts::default()
                    .with_danger_accept_invalid_certs(true)
                    .with_danger_skip_domain_validation(true),
            ),
            TlsMode::VerifyFull => {
                let ca = config
                    .tls_ca_file
                    .clone()
                    .ok_or_else(|| SourceError::TlsCa {
                        catalog: catalog.to_string(),
                        reason: "verify-full needs tls_ca_file".to_string(),
                    })?;
                weft_common::tls::roots(&ca).map_err(|reason| SourceError::TlsCa {
                    catalog: catalog.to_string(),
                    reason,
                })?;
                Some(
                    mysql_async::SslOpts::default()
                        .with_root_certs(vec![ca.into()])
                        .with_disable_built_in_roots(true),
                )
            }
        };
        let host = format!("{}:{}", opts.ip_or_hostname(), opts.tcp_port());
        let user = opts.user().unwrap_or("").to_string();
        let slots =
            ConnectionSlots::new(catalog, &host, config.max_connections, config.pool_timeout);
        let plain: Opts = OptsBuilder::from_opts(opts)
            // Stay on TCP: the socket the server reports may not be ours.
            .prefer_socket(false)
            .init(vec![
                "SET time_zone = '+00:00'",
                "SET SESSION sql_mode = CONCAT_WS(',', NULLIF(@@SESSION.sql_mode, ''), 'NO_BACKSLASH_ESCAPES')",
            ])
            .ssl_opts(None::<mysql_async::SslOpts>)
            .into();
        let opts: Opts = OptsBuilder::from_opts(plain.clone()).ssl_opts(ssl).into();
        Ok(Self {
            catalog: catalog.to_string(),
            config,
            opts,
            plain,
            warned_plain: std::sync::atomic::AtomicBool::new(false),
            host,
            user,
            idle: Mutex::new(Vec::new()),
            slots: Arc::new(slots),
        })
    }

    /// An error from running SQL on this catalog.
    pub fn remote_error(&self, e: &mysql_async::Error) -> SourceError {
        SourceError::Remote {
            catalog: self.catalog.clone(),
            host: self.host.clone(),
            message: my_message(e),
        }
    }

    /// A new connection, not from the pool.
    async fn connect_raw(&self) -> Result<Conn, SourceError> {
        let timeout = self.config.connect_timeout;
        let mut attempt = tokio::time::timeout(timeout, Conn::new(self.opts.clone())).await;
        if self.config.tls == TlsMode::Prefer
            && matches!(
                attempt,
                Ok(Err(mysql_async::Error::Driver(
                    mysql_async::DriverError::NoClientSslFlagFromServer
                )))
            )
        {
            if !self
                .warned_plain
                .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                tracing::warn!(
                    catalog = %self.catalog,
                    host = %self.host,
                    "the server does not offer TLS: connecting in plain text (tls = \"prefer\"); set tls = \"require\" to refuse plain text, or \"disable\" to connect without trying"
                );
            }
            attempt = tokio::time::timeout(timeout, Conn::new(self.plain.clone())).await;
        }
        match attempt {
            Err(_) => Err(SourceError::ConnectTimeout {
                catalog: self.catalog.clone(),
                host: self.host.clone(),
                secs: timeout.as_secs_f64(),
            }),
            Ok(Err(e)) => Err(SourceError::Connect {
                catalog: self.catalog.clone(),
                host: self.host.clone(),
                user: self.user.clone(),
                reason: my_message(&e),
            }),
            Ok(Ok(conn)) => Ok(conn),
        }
    }

    /// An idle connection that still answers, or a new one; waits (bounded
    /// by `pool_timeout`) while `max_connections` are open.
    pub async fn conn(&self) -> Result<PooledConn, SourceError> {
        loop {
            match self.slots.acquire(|| self.idle.lock().pop()).await? {
                Slot::Idle(mut conn) => {
                    if conn.ping().await.is_ok() {
                        return Ok(conn);
                    }
                }
                Slot::New(permit) => {
                    let conn = self
                        .connect_raw()
                        .await
                        .inspect_err(|_| self.slots.freed())?;
                    return Ok(PooledConn {
                        conn,
                        permit: Some(permit),
                        slots: Arc::clone(&self.slots),
                    });
                }
            }
        }
    }

    /// Returns a connection with no pending result to the idle list.
    pub fn release(&self, conn: PooledConn) {
        let mut idle = self.idle.lock();
        if idle.len() < self.config.pool_size {
            idle.push(conn);
            drop(idle);
            self.slots.freed();
        }
    }

    /// Runs `query` and returns its rows as text columns.
    pub async fn query_text(&self, query: &str) -> Result<Vec<Vec<Option<String>>>, SourceError> {
        let mut conn = self.conn().await?;
        let rows: Vec<mysql_async::Row> =
            conn.query(query).await.map_err(|e| self.remote_error(&e))?;
        self.release(conn);
        rows.into_iter()
            .map(|row| {
                (0..row.len())
                    .map(|i| match row.as_ref(i) {
                        None | Some(mysql_async::Value::NULL) => Ok(None),
                        Some(mysql_async::Value::Bytes(b)) => {
                            Ok(Some(String::from_utf8_lossy(b).into_owned()))
                        }
                        Some(other) => Ok(Some(other.as_sql(true).trim_matches('\'').to_string())),
                    })
                    .collect()
            })
            .collect()
    }

    /// Stops the statement running on connection `id` (a cancelled scan).
    async fn kill_query(&self, id: u32) {
        match self.connect_raw().await {
            // Outside max_connections: stopping a statement must never wait
            // for the connections it is about to free.
            Ok(mut conn) => {
                if let Err(e) = conn.query_drop(format!("KILL QUERY {id}")).await {
                    tracing::debug!(catalog = %self.catalog, "KILL QUERY {id}: {e}");
                }
                let _ = conn.disconnect().await;
            }
            Err(e) => tracing::debug!("cannot stop a cancelled MySQL query: {e}"),
        }
    }

    /// Streams the rows of `query` in batches of about `batch_size` rows.
    pub fn scan(
        self: &Arc<Self>,
        request: ScanRequest,
        wire: Vec<MyWire>,
        metrics: BaselineMetrics,
    ) -> Result<SendableRecordBatchStream> {
        let decoder = TextDecoder::try_new(Arc::clone(&request.schema), wire)
            .map_err(|e| DataFusionError::Internal(format!("catalog \"{}\": {e}", self.catalog)))?;
        let (tx, rx) = mpsc::channel::<Result<RecordBatch>>(2);
        let source = Arc::clone(self);
        let schema = Arc::clone(&request.schema);
        let batch_size = request.batch_size.max(1);
        tokio::spawn(async move {
            if let Err(e) = source
                .read_rows(&request.query, decoder, batch_size, &tx, &metrics)
                .await
            {
                let _ = tx.send(Err(e)).await;
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            stream.boxed(),
        )))
    }

    /// Reads the rows of `query` into batches sent on `tx`. If the receiver
    /// goes away (the query was cancelled), the statement is killed.
    async fn read_rows(
        &self,
        query: &str,
        mut decoder: TextDecoder,
        batch_size: usize,
        tx: &mpsc::Sender<Result<RecordBatch>>,
        metrics: &BaselineMetrics,
    ) -> Result<()> {
        let decode_err = |e: String| -> DataFusionError {
            SourceError::Remote {
                catalog: self.catalog.clone(),
                host: self.host.clone(),
                message: format!("cannot read the result of {query}: {e}"),
            }
            .into()
        };
        let mut conn = self.conn().await?;
        let id = conn.id();
        let mut cancelled = false;
        {
            let mut result = conn
                .query_iter(query)
                .await
                .map_err(|e| self.remote_error(&e))?;
            loop {
                let row = tokio::select! {
                    biased;
                    _ = tx.closed() => {
                        cancelled = true;
                        break;
                    }
                    row = result.next() => row.map_err(|e| self.remote_error(&e))?,
                };
                let Some(row) = row else { break };
                decoder
                    .push_row((0..row.len()).map(|i| match row.as_ref(i) {
                        Some(mysql_async::Value::Bytes(b)) => Some(b.as_slice()),
                        _ => None,
                    }))
                    .map_err(decode_err)?;
                if decoder.rows() >= batch_size {
                    let batch = decoder.flush().map_err(decode_err)?;
                    metrics.record_output(batch.num_rows());
                    if tx.send(Ok(batch)).await.is_err() {
                        cancelled = true;
                        break;
                    }
                }
            }
        }
        if cancelled {
            // The connection still has the rest of the result pending; stop
            // the statement so that dropping the connection is quick.
            self.kill_query(id).await;
            return Ok(());
        }
        self.release(conn);
        if decoder.rows() > 0 {
            let batch = decoder.flush().map_err(decode_err)?;
            metrics.record_output(batch.num_rows());
            let _ = tx.send(Ok(batch)).await;
        }
        Ok(())
    }
}

#[async_trait]
impl RemoteSource for MysqlSource {
    fn catalog(&self) -> &str {
        &self.catalog
    }

    fn kind(&self) -> &'static str {
        "mysql"
    }

    async fn list(self: Arc<Self>) -> Result<Listing, SourceError> {
        let mut listing = Listing::new();
        for row in self
            .query_text(&format!(
                "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME NOT IN {SYSTEM_SCHEMAS}"
            ))
            .await?
        {
            if let Some(Some(schema)) = row.into_iter().next() {
                listing.entry(schema).or_default();
            }
        }
        for row in self
            .query_text(&format!(
                "SELECT TABLE_SCHEMA, TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA NOT IN {SYSTEM_SCHEMAS}"
            ))
            .await?
        {
            if let [Some(schema), Some(table), kind] = row.as_slice() {
                let kind = match kind.as_deref() {
                    Some("VIEW") => TableType::View,
                    _ => TableType::Base,
                };
                listing
                    .entry(schema.clone())
                    .or_default()
                    .insert(table.clone(), kind);
            }
        }
        Ok(listing)
    }

    async fn table(
        self: Arc<Self>,
        schema: &str,
        name: &str,
    ) -> Result<Option<Arc<dyn TableProvider>>, SourceError> {
        Ok(MysqlTable::load(&self, schema, name)
            .await?
            .map(|t| Arc::new(t) as Arc<dyn TableProvider>))
    }

    async fn validate(self: Arc<Self>, sql: &str) -> Result<(), SourceError> {
        let mut conn = self.conn().await?;
        // A prepared statement is parsed and resolved, not run.
        let statement = conn.prep(sql).await.map_err(|e| self.remote_error(&e))?;
        conn.close(statement)
            .await
            .map_err(|e| self.remote_error(&e))?;
        self.release(conn);
        Ok(())
    }

    fn execute_query(
        self: Arc<Self>,
        request: ScanRequest,
        metrics: BaselineMetrics,
    ) -> Result<SendableRecordBatchStream> {
        let wire = crate::parse_wire_types(&request.wire_types, "MySQL", MyWire::parse)?;
        self.scan(request, wire, metrics)
    }
}
