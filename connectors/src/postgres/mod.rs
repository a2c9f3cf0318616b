//! The PostgreSQL connector: connections, catalog, binary COPY scans, splits.
//!
//! Every process (coordinator and workers) builds its own [`PostgresSource`]
//! per catalog from its own catalog file, so passwords come from each
//! process's environment and never travel inside plans.

pub mod catalog;
pub mod copy;
pub mod splits;
pub mod types;

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::catalog::TableProvider;
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_plan::metrics::BaselineMetrics;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::SendableRecordBatchStream;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinHandle;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{Client, CopyOutStream, NoTls};

use crate::slots::{ConnectionSlots, Slot};
use weft_common::config::{DatabaseConfig, TlsMode};

use self::catalog::PostgresTable;
use self::copy::CopyDecoder;
use self::types::WireType;
use crate::catalog::Listing;
use crate::error::SourceError;
use crate::{RemotePlan, RemoteSource, ScanRequest};

/// The message of a driver error: the server's message with its detail and
/// hint, or the transport error.
pub fn pg_message(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut m = db.message().to_string();
        if let Some(d) = db.detail() {
            m.push_str(&format!(" ({d})"));
        }
        if let Some(h) = db.hint() {
            m.push_str(&format!("; hint: {h}"));
        }
        return m;
    }
    let mut m = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !m.contains(&text) {
            m.push_str(&format!(": {text}"));
        }
        source = s.source();
    }
    m
}

/// One PostgreSQL catalog as seen by one process: settings and idle connections.
pub struct PostgresSource {
    pub catalog: String,
    pub config: DatabaseConfig,
    pg: tokio_postgres::Config,
    host: String,
    user: String,
    /// `None` for `tls = "disable"`.
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    /// `prefer`: whether the first connection was checked for TLS.
    checked_tls: std::sync::atomic::AtomicBool,
    idle: Mutex<Vec<(Client, JoinHandle<()>, OwnedSemaphorePermit)>>,
    /// At most `max_connections` open at once.
    slots: Arc<ConnectionSlots>,
}

impl std::fmt::Debug for PostgresSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSource")
            .field("catalog", &self.catalog)
            .field("host", &self.host)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl PostgresSource {
    pub fn try_new(catalog: &str, config: DatabaseConfig) -> Result<Self, SourceError> {
        let mut pg: tokio_postgres::Config =
            config
                .url
                .expose()
                .parse()
                .map_err(|e: tokio_postgres::Error| SourceError::Url {
                    catalog: catalog.to_string(),
                    kind: "PostgreSQL",
                    url: config.url.redacted(),
                    reason: e.to_string(),
                })?;
        pg.ssl_mode(match config.tls {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            TlsMode::Require | TlsMode::VerifyFull => SslMode::Require,
        });
        let tls = crate::dbtls::client_config(catalog, &config)?
            .map(tokio_postgres_rustls::MakeRustlsConnect::new);
        pg.connect_timeout(config.connect_timeout);
        pg.application_name("weft");
        let port = pg.get_ports().first().copied().unwrap_or(5432);
        let host = match pg.get_hosts().first() {
            Some(Host::Tcp(h)) => format!("{h}:{port}"),
            #[cfg(unix)]
            Some(Host::Unix(p)) => format!("{}:{port}", p.display()),
            None => format!("localhost:{port}"),
        };
        let user = pg.get_user().unwrap_or("").to_string();
        let slots = Arc::new(ConnectionSlots::new(
            catalog,
            &host,
            config.max_connections,
            config.pool_timeout,
        ));
        Ok(Self {
            catalog: catalog.to_string(),
            config,
            pg,
            host,
            user,
            tls,
            checked_tls: std::sync::atomic::AtomicBool::new(false),
            idle: Mutex::new(Vec::new()),
            slots,
        })
    }

    /// An error from running SQL on this catalog.
    pub fn remote_error(&self, e: &tokio_postgres::Error) -> SourceError {
        SourceError::Remote {
            catalog: self.catalog.clone(),
            host: self.host.clone(),
            message: pg_message(e),
        }
    }

    /// A new connection, not from the pool.
    async fn connect_raw(&self) -> Result<(Client, JoinHandle<()>), SourceError> {
        let (client, driver) = match &self.tls {
            Some(tls) => self.drive(self.pg.connect(tls.clone())).await?,
            None => self.drive(self.pg.connect(NoTls)).await?,
        };
        if self.config.tls == TlsMode::Prefer
            && !self
                .checked_tls
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            let encrypted = client
                .query_opt(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )
                .await
                .ok()
                .flatten()
                .and_then(|row| row.try_get::<_, bool>(0).ok());
            if encrypted == Some(false) {
                tracing::warn!(
                    catalog = %self.catalog,
                    host = %self.host,
                    "the server does not offer TLS: connected in plain text (tls = \"prefer\"); set tls = \"require\" to refuse plain text, or \"disable\" to connect without trying"
                );
            }
        }
        Ok((client, driver))
    }

    /// Connects (bounded by `connect_timeout`) and drives the socket on a task.
    async fn drive<S, T>(
        &self,
        connecting: impl std::future::Future<
            Output = Result<(Client, tokio_postgres::Connection<S, T>), tokio_postgres::Error>,
        >,
    ) -> Result<(Client, JoinHandle<()>), SourceError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let timeout = self.config.connect_timeout;
        let (client, connection) = match tokio::time::timeout(timeout, connecting).await {
            Err(_) => {
                return Err(SourceError::ConnectTimeout {
                    catalog: self.catalog.clone(),
                    host: self.host.clone(),
                    secs: timeout.as_secs_f64(),
                })
            }
            Ok(Err(e)) => {
                return Err(SourceError::Connect {
                    catalog: self.catalog.clone(),
                    host: self.host.clone(),
                    user: self.user.clone(),
                    reason: pg_message(&e),
                })
            }
            Ok(Ok(pair)) => pair,
        };
        let catalog = self.catalog.clone();
        // The connection future drives the socket; it ends with the client or
        // is aborted when the client is discarded mid-query.
        let driver = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(catalog, "postgres connection ended: {e}");
            }
        });
        Ok((client, driver))
    }

    /// A pooled connection (an idle one, or a new one).
    /// Waits (bounded by `pool_timeout`) while `max_connections` are open.
    pub async fn client(self: &Arc<Self>) -> Result<PooledClient, SourceError> {
        let (client, driver, permit) = self.open_slot().await?;
        Ok(PooledClient {
            client: Some(client),
            driver: Some(driver),
            permit: Some(permit),
            source: Arc::clone(self),
            reusable: false,
        })
    }

    /// A healthy idle connection, or a new one once a slot is free.
    async fn open_slot(
        &self,
    ) -> Result<(Client, JoinHandle<()>, OwnedSemaphorePermit), SourceError> {
        let take_idle = || loop {
            let candidate = self.idle.lock().pop();
            match candidate {
                Some(entry) if !entry.0.is_closed() => return Some(entry),
                Some((_, driver, permit)) => {
                    driver.abort();
                    drop(permit);
                }
                None => return None,
            }
        };
        match self.slots.acquire(take_idle).await? {
            Slot::Idle(entry) => Ok(entry),
            Slot::New(permit) => {
                let (client, driver) = self
                    .connect_raw()
                    .await
                    .inspect_err(|_| self.slots.freed())?;
                Ok((client, driver, permit))
            }
        }
    }

    /// Opens a transaction on a dedicated connection and exports its snapshot,
    /// so that several split reads see the same data. The snapshot stays
    /// importable while the returned value lives.
    pub async fn export_snapshot(&self) -> Result<ExportedSnapshot, SourceError> {
        let (client, driver, permit) = self.open_slot().await?;
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(|e| self.remote_error(&e))?;
        let row = client
            .query_one("SELECT pg_export_snapshot()", &[])
            .await
            .map_err(|e| self.remote_error(&e))?;
        let id: String = row.try_get(0).map_err(|e| self.remote_error(&e))?;
        Ok(ExportedSnapshot {
            id,
            _client: client,
            driver,
            permit: Some(permit),
            slots: Arc::clone(&self.slots),
        })
    }

    /// Streams the rows of `query` (a SELECT) through binary COPY, decoded into
    /// batches of about `batch_size` rows of `schema`.
    pub fn scan(
        self: &Arc<Self>,
        query: String,
        snapshot: Option<String>,
        schema: SchemaRef,
        wire: Vec<WireType>,
        batch_size: usize,
        metrics: BaselineMetrics,
    ) -> Result<SendableRecordBatchStream> {
        let decoder = CopyDecoder::try_new(Arc::clone(&schema), &wire)
            .map_err(|e| DataFusionError::Internal(format!("catalog \"{}\": {e}", self.catalog)))?;
        let state = ScanState {
            source: Arc::clone(self),
            query,
            snapshot,
            client: None,
            copy: None,
            decoder,
            batch_size: batch_size.max(1),
            done: false,
            metrics,
        };
        let stream = futures::stream::unfold(state, |mut state| async move {
            if state.done {
                return None;
            }
            match state.next_batch().await {
                Ok(Some(batch)) => Some((Ok(batch), state)),
                Ok(None) => None,
                Err(e) => {
                    state.done = true;
                    Some((Err(e), state))
                }
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            stream.boxed(),
        )))
    }
}

#[async_trait]
impl RemoteSource for PostgresSource {
    fn catalog(&self) -> &str {
        &self.catalog
    }

    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn list(self: Arc<Self>) -> Result<Listing, SourceError> {
        catalog::list(&self).await
    }

    async fn table(
        self: Arc<Self>,
        schema: &str,
        name: &str,
    ) -> Result<Option<Arc<dyn TableProvider>>, SourceError> {
        Ok(PostgresTable::load(&self, schema, name)
            .await?
            .map(|t| Arc::new(t) as Arc<dyn TableProvider>))
    }

    async fn export_snapshot(
        self: Arc<Self>,
    ) -> Result<Option<(String, Arc<dyn std::any::Any + Send + Sync>)>, SourceError> {
        let snapshot = PostgresSource::export_snapshot(&self).await?;
        Ok(Some((snapshot.id.clone(), Arc::new(snapshot) as _)))
    }

    async fn validate(self: Arc<Self>, sql: &str) -> Result<(), SourceError> {
        let client = self.client().await?;
        // Parse and bind only: PostgreSQL resolves every name and type.
        client
            .prepare(sql)
            .await
            .map_err(|e| self.remote_error(&e))?;
        client.release();
        Ok(())
    }

    async fn explain(self: Arc<Self>, sql: &str) -> Result<Option<RemotePlan>, SourceError> {
        let client = self.client().await?;
        let rows = client
            .simple_query(&format!("EXPLAIN (FORMAT JSON) {sql}"))
            .await
            .map_err(|e| self.remote_error(&e))?;
        client.release();
        let json = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        });
        Ok(json.as_deref().and_then(RemotePlan::from_postgres_json))
    }

    fn execute_query(
        self: Arc<Self>,
        request: ScanRequest,
        metrics: BaselineMetrics,
    ) -> Result<SendableRecordBatchStream> {
        let wire = crate::parse_wire_types(&request.wire_types, "PostgreSQL", WireType::parse)?;
        self.scan(
            request.query,
            request.snapshot,
            request.schema,
            wire,
            request.batch_size,
            metrics,
        )
    }
}

/// A snapshot exported by an open transaction.
#[derive(Debug)]
pub struct ExportedSnapshot {
    pub id: String,
    _client: Client,
    driver: JoinHandle<()>,
    /// Counts towards `max_connections` while the snapshot lives.
    permit: Option<OwnedSemaphorePermit>,
    slots: Arc<ConnectionSlots>,
}

impl Drop for ExportedSnapshot {
    fn drop(&mut self) {
        // Closing the socket ends the exporting transaction.
        self.driver.abort();
        drop(self.permit.take());
        self.slots.freed();
    }
}

/// A connection borrowed from a [`PostgresSource`]. Returned to the idle list
/// when dropped after [`PooledClient::release`], discarded (socket closed,
/// so the server stops any running statement) otherwise.
pub struct PooledClient {
    client: Option<Client>,
    driver: Option<JoinHandle<()>>,
    permit: Option<OwnedSemaphorePermit>,
    source: Arc<PostgresSource>,
    reusable: bool,
}

impl std::fmt::Debug for PooledClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledClient")
            .field("catalog", &self.source.catalog)
            .finish_non_exhaustive()
    }
}

impl PooledClient {
    /// Marks the connection idle and healthy: it goes back to the pool.
    pub fn release(mut self) {
        self.reusable = true;
    }
}

impl std::ops::Deref for PooledClient {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("client present until drop")
    }
}

impl Drop for PooledClient {
    fn drop(&mut self) {
        let (Some(client), Some(driver), Some(permit)) =
            (self.client.take(), self.driver.take(), self.permit.take())
        else {
            return;
        };
        if self.reusable && !client.is_closed() {
            let mut idle = self.source.idle.lock();
            if idle.len() < self.source.config.pool_size {
                idle.push((client, driver, permit));
                drop(idle);
                self.source.slots.freed();
                return;
            }
        }
        drop(client);
        driver.abort();
        drop(permit);
        self.source.slots.freed();
    }
}

struct ScanState {
    source: Arc<PostgresSource>,
    query: String,
    snapshot: Option<String>,
    client: Option<PooledClient>,
    copy: Option<std::pin::Pin<Box<CopyOutStream>>>,
    decoder: CopyDecoder,
    batch_size: usize,
    done: bool,
    metrics: BaselineMetrics,
}

impl ScanState {
    async fn start(&mut self) -> Result<(), SourceError> {
        let client = self.source.client().await?;
        if let Some(snapshot) = &self.snapshot {
            // Snapshot ids are generated by the server ("00000003-0000001B-1").
            if !snapshot.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                return Err(SourceError::Remote {
                    catalog: self.source.catalog.clone(),
                    host: self.source.host.clone(),
                    message: format!("invalid snapshot id {snapshot:?}"),
                });
            }
            client
                .batch_execute(&format!(
                    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{snapshot}'"
                ))
                .await
                .map_err(|e| self.source.remote_error(&e))?;
        }
        let copy = client
            .copy_out(&format!("COPY ({}) TO STDOUT (FORMAT binary)", self.query))
            .await
            .map_err(|e| self.source.remote_error(&e))?;
        self.copy = Some(Box::pin(copy));
        self.client = Some(client);
        Ok(())
    }

    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        if self.copy.is_none() {
            self.start().await?;
        }
        let decode_err = |source: &PostgresSource, e: String| {
            DataFusionError::External(Box::new(SourceError::Remote {
                catalog: source.catalog.clone(),
                host: source.host.clone(),
                message: format!("cannot decode COPY data: {e}"),
            }))
        };
        while let Some(copy) = self.copy.as_mut() {
            if self.decoder.rows() >= self.batch_size {
                break;
            }
            match copy.next().await {
                Some(Ok(chunk)) => self
                    .decoder
                    .feed(&chunk)
                    .map_err(|e| decode_err(&self.source, e))?,
                Some(Err(e)) => return Err(self.source.remote_error(&e).into()),
                None => {
                    self.decoder
                        .check_complete()
                        .map_err(|e| decode_err(&self.source, e))?;
                    self.copy = None;
                    self.done = true;
                    if let Some(client) = self.client.take() {
                        if self.snapshot.is_some() {
                            client
                                .batch_execute("COMMIT")
                                .await
                                .map_err(|e| self.source.remote_error(&e))?;
                        }
                        client.release();
                    }
                }
            }
        }
        if self.decoder.rows() == 0 {
            return Ok(None);
        }
        let batch = self
            .decoder
            .flush()
            .map_err(|e| decode_err(&self.source, e))?;
        self.metrics.record_output(batch.num_rows());
        Ok(Some(batch))
    }
}
