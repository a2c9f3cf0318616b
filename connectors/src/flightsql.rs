//! Flight SQL catalogs: any Flight SQL server (another Weft cluster
//! included) as a catalog.
//!
//! The server's schemas become the catalog's schemas: those of its
//! `catalog` setting, or, when the server has tables in one catalog only,
//! that one's; a server with several catalogs shows each schema as
//! `"catalog.schema"`. A catalog named `system` (Weft's and Trino's runtime
//! tables) is left out unless `catalog = "system"`. A scan sends `SELECT <columns> FROM
//! "catalog"."schema"."table" [WHERE <filters>] [LIMIT n]` when the query is
//! planned; every endpoint of the returned `FlightInfo` becomes one split, read
//! with `DoGet` by whichever worker runs it (from the endpoint's location, or
//! from the server itself). The remote query is cancelled
//! (`CancelFlightInfo`) when the Weft query ends, so an EXPLAIN or a failed
//! query leaves nothing running remotely.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::CommandGetTables;
use arrow_flight::{Action, CancelFlightInfoRequest, FlightEndpoint, FlightInfo};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::TableType;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::metrics::BaselineMetrics;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};
use datafusion::sql::unparser::dialect::DefaultDialect;
use futures::{StreamExt, TryStreamExt};
use parking_lot::RwLock;
use prost::Message;
use tonic::transport::{Channel, Endpoint};
use weft_common::config::{DatabaseConfig, TlsMode};

use crate::catalog::Listing;
use crate::error::SourceError;
use crate::filters::{PushdownRules, SourceSyntax};
use crate::remote_scan::{RemoteScanExec, RemoteScanSpec};
use crate::{RemoteSource, ScanRequest};

/// Largest gRPC message accepted from the server.
const MAX_MESSAGE_SIZE: usize = 256 * 1024 * 1024;
/// Endpoint location meaning "the server that returned the FlightInfo".
const REUSE_CONNECTION: &str = "arrow-flight-reuse-connection://";
/// Schemas that describe the server, not data.
const SYSTEM_SCHEMAS: [&str; 2] = ["information_schema", "pg_catalog"];

/// Quotes an identifier the SQL standard way.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn flight_message(e: &FlightError) -> String {
    match e {
        FlightError::Tonic(status) => status.message().to_string(),
        other => other.to_string(),
    }
}

/// Where a catalog's table lives on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RemoteSchema {
    catalog: Option<String>,
    schema: String,
}

/// One Flight SQL catalog as seen by one process.
pub struct FlightSqlSource {
    pub catalog: String,
    pub config: DatabaseConfig,
    host: String,
    credentials: Option<(String, String)>,
    channel: Channel,
    /// Local schema name -> schema on the server, from the last listing.
    schemas: RwLock<HashMap<String, RemoteSchema>>,
}

impl std::fmt::Debug for FlightSqlSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlightSqlSource")
            .field("catalog", &self.catalog)
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

/// A Flight SQL URL taken apart.
type ParsedUrl = (String, String, Option<(String, String)>);

/// `grpc://[user:password@]host:port` split into the HTTP/2 endpoint, the
/// `host:port` and the credentials.
fn parse_url(url: &str) -> Result<ParsedUrl, String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("expected grpc://host:port".to_string());
    };
    match scheme {
        "grpc" | "grpc+tcp" | "http" => {}
        "grpc+tls" | "https" => {
            return Err("TLS to Flight SQL catalogs (grpc+tls://) is not supported yet; use grpc:// or a TLS-terminating proxy".to_string())
        }
        other => return Err(format!("unknown scheme \"{other}\" (expected grpc://)")),
    }
    let authority = rest.split('/').next().unwrap_or_default();
    let (credentials, host) = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            (Some((user.to_string(), password.to_string())), host)
        }
        None => (None, authority),
    };
    if host.is_empty() || !host.contains(':') {
        return Err("expected host:port after grpc://".to_string());
    }
    Ok((format!("http://{host}"), host.to_string(), credentials))
}

impl FlightSqlSource {
    pub fn try_new(catalog: &str, config: DatabaseConfig) -> Result<Self, SourceError> {
        let url_err = |reason: String| SourceError::Url {
            catalog: catalog.to_string(),
            kind: "Flight SQL",
            url: config.url.redacted(),
            reason,
        };
        if matches!(config.tls, TlsMode::Require | TlsMode::VerifyFull) {
            return Err(SourceError::TlsUnsupported {
                catalog: catalog.to_string(),
            });
        }
        let (endpoint, host, credentials) = parse_url(config.url.expose()).map_err(url_err)?;
        let channel = Endpoint::from_shared(endpoint)
            .map_err(|e| url_err(e.to_string()))?
            .connect_timeout(config.connect_timeout)
            .connect_lazy();
        Ok(Self {
            catalog: catalog.to_string(),
            config,
            host,
            credentials,
            channel,
            schemas: RwLock::new(HashMap::new()),
        })
    }

    /// An error from the server, or from reaching it.
    fn error(&self, e: &FlightError) -> SourceError {
        let unreachable =
            matches!(e, FlightError::Tonic(s) if s.code() == tonic::Code::Unavailable);
        if unreachable {
            SourceError::Connect {
                catalog: self.catalog.clone(),
                host: self.host.clone(),
                user: self
                    .credentials
                    .as_ref()
                    .map(|(u, _)| u.clone())
                    .unwrap_or_default(),
                reason: flight_message(e),
            }
        } else {
            SourceError::Remote {
                catalog: self.catalog.clone(),
                host: self.host.clone(),
                message: flight_message(e),
            }
        }
    }

    /// A client on `channel`, signed in when the URL has credentials and
    /// `sign_in` says the channel leads to the configured host.
    async fn client_on(
        &self,
        channel: Channel,
        sign_in: bool,
    ) -> Result<FlightSqlServiceClient<Channel>, SourceError> {
        let inner = FlightServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        let mut client = FlightSqlServiceClient::new_from_inner(inner);
        if let (Some((user, password)), true) = (&self.credentials, sign_in) {
            client
                .handshake(user, password)
                .await
                .map_err(|e| self.error(&e))?;
        }
        Ok(client)
    }

    async fn client(&self) -> Result<FlightSqlServiceClient<Channel>, SourceError> {
        self.client_on(self.channel.clone(), true).await
    }

    /// Every batch of every endpoint of `info`, read from the server.
    async fn fetch_all(
        &self,
        client: &mut FlightSqlServiceClient<Channel>,
        info: FlightInfo,
    ) -> Result<Vec<RecordBatch>, SourceError> {
        let mut batches = Vec::new();
        for endpoint in info.endpoint {
            let Some(ticket) = endpoint.ticket else {
                continue;
            };
            let stream = client.do_get(ticket).await.map_err(|e| self.error(&e))?;
            let mut got: Vec<RecordBatch> =
                stream.try_collect().await.map_err(|e| self.error(&e))?;
            batches.append(&mut got);
        }
        Ok(batches)
    }

    /// Rows of `GetTables` as (catalog, schema, table, type, schema bytes).
    async fn get_tables(
        &self,
        catalog: Option<String>,
        schema: Option<String>,
        table: Option<String>,
        include_schema: bool,
    ) -> Result<Vec<TableRow>, SourceError> {
        let mut client = self.client().await?;
        let info = client
            .get_tables(CommandGetTables {
                catalog,
                db_schema_filter_pattern: schema.map(|s| escape_pattern(&s)),
                table_name_filter_pattern: table.map(|t| escape_pattern(&t)),
                table_types: vec![],
                include_schema,
            })
            .await
            .map_err(|e| self.error(&e))?;
        let bad = |m: &str| SourceError::Remote {
            catalog: self.catalog.clone(),
            host: self.host.clone(),
            message: format!("unexpected GetTables result: {m}"),
        };
        let mut rows = Vec::new();
        for batch in self.fetch_all(&mut client, info).await? {
            let text = |name: &str| -> Result<Vec<Option<String>>, SourceError> {
                let column = batch
                    .column_by_name(name)
                    .ok_or_else(|| bad(&format!("no column {name}")))?;
                let column = cast(column, &DataType::Utf8).map_err(|e| bad(&e.to_string()))?;
                let column = column.as_string::<i32>();
                Ok((0..column.len())
                    .map(|i| column.is_valid(i).then(|| column.value(i).to_string()))
                    .collect())
            };
            let catalogs = text("catalog_name")?;
            let schemas = text("db_schema_name")?;
            let tables = text("table_name")?;
            let types = text("table_type")?;
            let ipc = match batch.column_by_name("table_schema") {
                Some(c) => Some(cast(c, &DataType::Binary).map_err(|e| bad(&e.to_string()))?),
                None => None,
            };
            for i in 0..batch.num_rows() {
                rows.push(TableRow {
                    catalog: catalogs[i].clone().filter(|c| !c.is_empty()),
                    schema: schemas[i].clone().unwrap_or_default(),
                    table: tables[i].clone().unwrap_or_default(),
                    table_type: types[i].clone().unwrap_or_default(),
                    schema_ipc: ipc
                        .as_ref()
                        .map(|a| a.as_binary::<i32>())
                        .filter(|a| a.is_valid(i))
                        .map(|a| a.value(i).to_vec()),
                });
            }
        }
        Ok(rows)
    }

    /// Where local schema `schema` lives on the server.
    async fn remote_schema(
        self: &Arc<Self>,
        schema: &str,
    ) -> Result<Option<RemoteSchema>, SourceError> {
        if let Some(r) = self.schemas.read().get(schema) {
            return Ok(Some(r.clone()));
        }
        Arc::clone(self).list().await?;
        Ok(self.schemas.read().get(schema).cloned())
    }

    /// Runs `sql` on the server; the endpoints of its result.
    async fn execute_sql(&self, sql: &str) -> Result<FlightInfo, SourceError> {
        let mut client = self.client().await?;
        client
            .execute(sql.to_string(), None)
            .await
            .map_err(|e| self.error(&e))
    }

    /// Streams the batches of one endpoint, as `schema`.
    fn read_endpoint(
        self: Arc<Self>,
        endpoint: FlightEndpoint,
        schema: SchemaRef,
        metrics: BaselineMetrics,
    ) -> Result<SendableRecordBatchStream> {
        let ticket = endpoint.ticket.clone().ok_or_else(|| {
            DataFusionError::Internal(format!(
                "catalog \"{}\": endpoint without a ticket",
                self.catalog
            ))
        })?;
        let target = Arc::clone(&schema);
        let opening = async move {
            // The catalog's credentials go only to its configured host: an
            // endpoint location the server returns may name any host, and a
            // hostile or compromised server must not collect them there.
            let (channel, trusted) = match endpoint
                .location
                .iter()
                .map(|l| l.uri.as_str())
                .find(|uri| !uri.is_empty() && !uri.starts_with(REUSE_CONNECTION))
            {
                None => (self.channel.clone(), true),
                Some(uri) => {
                    let (endpoint, host, _) =
                        parse_url(uri).map_err(|reason| SourceError::Remote {
                            catalog: self.catalog.clone(),
                            host: self.host.clone(),
                            message: format!("endpoint location {uri}: {reason}"),
                        })?;
                    let channel = Endpoint::from_shared(endpoint)
                        .map_err(|e| SourceError::Remote {
                            catalog: self.catalog.clone(),
                            host: self.host.clone(),
                            message: format!("endpoint location {uri}: {e}"),
                        })?
                        .connect_timeout(self.config.connect_timeout)
                        .connect_lazy();
                    (channel, host.eq_ignore_ascii_case(&self.host))
                }
            };
            let mut client = self.client_on(channel, trusted).await?;
            let stream = client.do_get(ticket).await.map_err(|e| self.error(&e))?;
            let source = Arc::clone(&self);
            Ok::<_, DataFusionError>(stream.map(move |batch| {
                let batch = batch.map_err(|e| DataFusionError::from(source.error(&e)))?;
                let batch = conform(batch, &target)?;
                metrics.record_output(batch.num_rows());
                Ok(batch)
            }))
        };
        let stream = futures::stream::once(opening).try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// `batch` with the columns of `schema` (cast where the server's types differ).
fn conform(batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    if batch.num_columns() != schema.fields().len() {
        return Err(DataFusionError::Execution(format!(
            "Flight SQL server returned {} columns, expected {}",
            batch.num_columns(),
            schema.fields().len()
        )));
    }
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(Arc::clone(c))
            } else {
                cast(c, f.data_type()).map_err(DataFusionError::from)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

/// A LIKE-pattern matching exactly `name`.
fn escape_pattern(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[derive(Debug)]
struct TableRow {
    catalog: Option<String>,
    schema: String,
    table: String,
    table_type: String,
    schema_ipc: Option<Vec<u8>>,
}

#[async_trait]
impl RemoteSource for FlightSqlSource {
    fn catalog(&self) -> &str {
        &self.catalog
    }

    fn kind(&self) -> &'static str {
        "flightsql"
    }

    async fn list(self: Arc<Self>) -> Result<Listing, SourceError> {
        let rows = self
            .get_tables(self.config.remote_catalog.clone(), None, None, false)
            .await?;
        let rows: Vec<TableRow> = rows
            .into_iter()
            .filter(|r| !SYSTEM_SCHEMAS.contains(&r.schema.as_str()))
            // A server's own `system` catalog (Weft's, Trino's) only when
            // asked for by name.
            .filter(|r| {
                self.config.remote_catalog.is_some() || r.catalog.as_deref() != Some("system")
            })
            .collect();
        let catalogs: std::collections::BTreeSet<Option<&String>> =
            rows.iter().map(|r| r.catalog.as_ref()).collect();
        let qualify = self.config.remote_catalog.is_none() && catalogs.len() > 1;
        let mut listing = Listing::new();
        let mut schemas = HashMap::new();
        for r in &rows {
            let local = match (&r.catalog, qualify) {
                (Some(c), true) => format!("{c}.{}", r.schema),
                _ => r.schema.clone(),
            };
            schemas.insert(
                local.clone(),
                RemoteSchema {
                    catalog: r.catalog.clone(),
                    schema: r.schema.clone(),
                },
            );
            let kind = if r.table_type.eq_ignore_ascii_case("view") {
                TableType::View
            } else {
                TableType::Base
            };
            listing
                .entry(local)
                .or_default()
                .insert(r.table.clone(), kind);
        }
        *self.schemas.write() = schemas;
        Ok(listing)
    }

    async fn table(
        self: Arc<Self>,
        schema: &str,
        name: &str,
    ) -> Result<Option<Arc<dyn TableProvider>>, SourceError> {
        let Some(remote) = self.remote_schema(schema).await? else {
            return Ok(None);
        };
        let rows = self
            .get_tables(
                remote.catalog.clone(),
                Some(remote.schema.clone()),
                Some(name.to_string()),
                true,
            )
            .await?;
        let Some(row) = rows
            .into_iter()
            .find(|r| r.table == name && r.schema == remote.schema)
        else {
            return Ok(None);
        };
        let ipc = row.schema_ipc.ok_or_else(|| SourceError::Remote {
            catalog: self.catalog.clone(),
            host: self.host.clone(),
            message: format!("GetTables returned no schema for {schema}.{name}"),
        })?;
        let arrow_schema = arrow::ipc::convert::try_schema_from_ipc_buffer(&ipc).map_err(|e| {
            SourceError::Remote {
                catalog: self.catalog.clone(),
                host: self.host.clone(),
                message: format!("cannot read the schema of {schema}.{name}: {e}"),
            }
        })?;
        let relation = match &remote.catalog {
            Some(c) => format!(
                "{}.{}.{}",
                quote_ident(c),
                quote_ident(&remote.schema),
                quote_ident(name)
            ),
            None => format!("{}.{}", quote_ident(&remote.schema), quote_ident(name)),
        };
        Ok(Some(Arc::new(FlightSqlTable {
            source: Arc::clone(&self),
            name: format!("{schema}.{name}"),
            relation,
            schema: Arc::new(Schema::new(arrow_schema.fields().clone())),
            view: row.table_type.eq_ignore_ascii_case("view"),
        })))
    }

    fn execute_query(
        self: Arc<Self>,
        request: ScanRequest,
        metrics: BaselineMetrics,
    ) -> Result<SendableRecordBatchStream> {
        let payload = request.payload.ok_or_else(|| {
            DataFusionError::Internal(format!(
                "catalog \"{}\": Flight SQL split without an endpoint",
                self.catalog
            ))
        })?;
        let endpoint = FlightEndpoint::decode(payload.as_slice()).map_err(|e| {
            DataFusionError::Internal(format!("catalog \"{}\": bad endpoint: {e}", self.catalog))
        })?;
        self.read_endpoint(endpoint, request.schema, metrics)
    }
}

/// A query running on the server; cancelled there when dropped.
#[derive(Debug)]
struct RemoteQuery {
    source: Arc<FlightSqlSource>,
    info: FlightInfo,
}

impl Drop for RemoteQuery {
    fn drop(&mut self) {
        let (source, info) = (Arc::clone(&self.source), self.info.clone());
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let action = Action {
                r#type: "CancelFlightInfo".to_string(),
                body: CancelFlightInfoRequest::new(info).encode_to_vec().into(),
            };
            if let Ok(mut client) = source.client().await {
                // A finished query has nothing to cancel; errors are expected.
                if let Ok(mut results) = client.do_action(action).await {
                    while let Ok(Some(_)) = results.try_next().await {}
                }
            }
        });
    }
}

/// A table of a Flight SQL server.
#[derive(Debug)]
pub struct FlightSqlTable {
    source: Arc<FlightSqlSource>,
    /// `schema.table` in this catalog.
    name: String,
    /// Quoted name on the server.
    relation: String,
    schema: SchemaRef,
    view: bool,
}

impl FlightSqlTable {
    fn rules(&self) -> PushdownRules {
        PushdownRules {
            columns: self
                .schema
                .fields()
                .iter()
                .filter(|f| {
                    f.data_type().is_primitive()
                        || matches!(f.data_type(), DataType::Utf8 | DataType::Boolean)
                })
                .map(|f| (f.name().clone(), f.data_type().clone()))
                .collect(),
            string_ranges: false,
            padded: Default::default(),
            syntax: SourceSyntax::STANDARD,
        }
    }
}

#[async_trait]
impl TableProvider for FlightSqlTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        if self.view {
            TableType::View
        } else {
            TableType::Base
        }
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(self.rules().support(filters, &DefaultDialect {}))
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let indices: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        let schema = Arc::new(self.schema.project(&indices)?);
        let select = if indices.is_empty() {
            // count(*): any column of one row per row.
            "1 AS one".to_string()
        } else {
            indices
                .iter()
                .map(|&i| quote_ident(self.schema.field(i).name()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let conditions = self.rules().render_all(filters, &DefaultDialect {})?;
        let mut sql = format!("SELECT {select} FROM {}", self.relation);
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        if let Some(n) = limit {
            sql.push_str(&format!(" LIMIT {n}"));
        }
        let info = self.source.execute_sql(&sql).await?;
        let endpoints: Vec<Vec<u8>> = info.endpoint.iter().map(|e| e.encode_to_vec()).collect();
        if endpoints.is_empty() {
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        let rows = (info.total_records >= 0).then_some(info.total_records as usize);
        let spec = RemoteScanSpec {
            relation: self.name.clone(),
            schema,
            wire_types: vec!["arrow".to_string(); indices.len()],
            queries: vec![sql; endpoints.len()],
            snapshot: None,
            split_method: "Flight SQL endpoints".to_string(),
            split_payloads: endpoints,
        };
        let source: Arc<dyn RemoteSource> = Arc::clone(&self.source) as _;
        let keep: Arc<dyn Any + Send + Sync> = Arc::new(RemoteQuery {
            source: Arc::clone(&self.source),
            info,
        });
        Ok(Arc::new(
            RemoteScanExec::try_new(source, spec)?
                .with_row_estimate(rows)
                .with_keep_alive(keep),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let (endpoint, host, creds) = parse_url("grpc://u:p@10.0.0.7:50050").unwrap();
        assert_eq!(endpoint, "http://10.0.0.7:50050");
        assert_eq!(host, "10.0.0.7:50050");
        assert_eq!(creds, Some(("u".into(), "p".into())));
        assert!(parse_url("grpc+tls://h:1").unwrap_err().contains("TLS"));
        assert!(parse_url("grpc://h").is_err());
        assert!(parse_url("postgres://h:1").is_err());
        assert_eq!(escape_pattern("a_b%"), "a\\_b\\%");
    }
}
