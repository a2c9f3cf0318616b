//! The coordinator's Arrow Flight SQL front end.
//!
//! Statements and prepared statements start a distributed query at
//! `GetFlightInfo`; each result partition is one endpoint whose ticket the
//! client passes to `DoGet` on the coordinator, which forwards the stream from
//! the worker producing it. Metadata calls are answered from the coordinator's
//! catalogs. `PollFlightInfo` (with progress) is served by [`poll::WithPoll`].

pub mod poll;

use std::pin::Pin;
use std::sync::Arc;

use arrow::datatypes::Schema;
use arrow::record_batch::RecordBatch;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery,
    CommandStatementQuery, ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    Action, CancelFlightInfoRequest, CancelFlightInfoResult, CancelStatus, FlightData,
    FlightDescriptor, FlightEndpoint, FlightInfo, Ticket,
};
use futures::{Stream, TryStreamExt};
use prost::Message;
use tonic::{Request, Response, Status};
use weft_common::flight::datafusion_to_status;
use weft_proto::{PreparedHandle, ResultTicket};

use crate::auth::Identity;
use crate::engine::Engine;
use crate::queries::Query;

/// The caller of a request, as the authenticating layer
/// ([`poll::WithPoll`]) recorded it; a request that did not pass through it
/// gets a user-less, non-admin identity.
pub fn caller<T>(request: &Request<T>) -> Identity {
    request
        .extensions()
        .get::<Identity>()
        .cloned()
        .unwrap_or(Identity {
            user: String::new(),
            admin: false,
        })
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Flight SQL service of the coordinator.
#[derive(Clone)]
pub struct WeftFlightSql {
    engine: Arc<Engine>,
    sql_info: Arc<SqlInfoData>,
}

impl std::fmt::Debug for WeftFlightSql {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeftFlightSql")
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

fn sql_info() -> SqlInfoData {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "Weft");
    b.append(SqlInfo::FlightSqlServerVersion, weft_common::VERSION);
    b.append(SqlInfo::FlightSqlServerArrowVersion, "59");
    b.append(SqlInfo::FlightSqlServerReadOnly, true);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(SqlInfo::FlightSqlServerTransaction, 0i32);
    b.append(SqlInfo::FlightSqlServerCancel, true);
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    b.append(SqlInfo::SqlDdlCatalog, false);
    b.append(SqlInfo::SqlDdlSchema, false);
    b.append(SqlInfo::SqlDdlTable, false);
    b.build().expect("static SqlInfo values are valid")
}

impl WeftFlightSql {
    pub fn new(engine: Arc<Engine>) -> Self {
        Self {
            engine,
            sql_info: Arc::new(sql_info()),
        }
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Starts `sql` for `identity` and describes its result endpoints.
    pub async fn statement_info(
        &self,
        sql: &str,
        descriptor: FlightDescriptor,
        identity: &Identity,
    ) -> Result<(Arc<Query>, FlightInfo), Status> {
        let query = self.engine.start_query(sql, identity).await?;
        let info = flight_info_for(&self.engine, &query, descriptor)?;
        Ok((query, info))
    }

    async fn batch_stream(
        &self,
        batch: RecordBatch,
    ) -> Result<Response<BoxStream<FlightData>>, Status> {
        let schema = batch.schema();
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(futures::stream::iter([Ok(batch)]))
            .map_err(flight_to_status);
        Ok(Response::new(Box::pin(stream)))
    }

    fn metadata_info(
        &self,
        command: impl ProstMessageExt,
        schema: &Schema,
        descriptor: FlightDescriptor,
    ) -> Result<Response<FlightInfo>, Status> {
        let ticket = Ticket::new(command.as_any().encode_to_vec());
        let info = FlightInfo::new()
            .try_with_schema(schema)
            .map_err(|e| Status::internal(e.to_string()))?
            .with_endpoint(FlightEndpoint::new().with_ticket(ticket))
            .with_descriptor(descriptor);
        Ok(Response::new(info))
    }

    /// All `(catalog, schema, table)` names in `catalogs`.
    fn table_names(
        catalogs: &dyn datafusion::catalog::CatalogProviderList,
    ) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for catalog in catalogs.catalog_names() {
            let Some(c) = catalogs.catalog(&catalog) else {
                continue;
            };
            for schema in c.schema_names() {
                let Some(s) = c.schema(&schema) else { continue };
                for table in s.table_names() {
                    out.push((catalog.clone(), schema.clone(), table));
                }
            }
        }
        out.sort();
        out
    }
}

fn flight_to_status(e: FlightError) -> Status {
    match e {
        FlightError::Tonic(s) => *s,
        other => Status::internal(other.to_string()),
    }
}

/// FlightInfo announcing exactly the schema the endpoints stream.
pub fn flight_info_for(
    engine: &Engine,
    query: &Query,
    descriptor: FlightDescriptor,
) -> Result<FlightInfo, Status> {
    let run = query
        .run_info()
        .ok_or_else(|| Status::internal(format!("query {} has no running plan", query.id)))?;
    if run.direct {
        return direct_flight_info(engine, query, &run, descriptor);
    }
    let endpoints = (0..run.endpoints.len())
        .map(|i| {
            let handle = ResultTicket {
                query_id: query.id.clone(),
                endpoint: i as u32,
            };
            let ticket = TicketStatementQuery {
                statement_handle: handle.encode_to_vec().into(),
            };
            FlightEndpoint::new().with_ticket(Ticket::new(ticket.as_any().encode_to_vec()))
        })
        .collect();
    let info = FlightInfo::new()
        .try_with_schema(&run.schema)
        .map_err(|e| Status::internal(e.to_string()))?
        .with_endpoints(endpoints)
        .with_descriptor(descriptor)
        .with_ordered(run.endpoints.len() > 1)
        .with_total_records(-1)
        .with_total_bytes(-1);
    Ok(info)
}

/// A FlightInfo whose endpoints are the final tasks' outputs on the workers.
/// With a cluster secret each ticket carries a grant for this query and
/// user (workers refuse unsigned reads), valid for the result timeout.
fn direct_flight_info(
    engine: &Engine,
    query: &Query,
    run: &crate::queries::RunInfo,
    descriptor: FlightDescriptor,
) -> Result<FlightInfo, Status> {
    let last_stage = run.stages.len().saturating_sub(1) as u32;
    let grant = engine.settings.cluster_secret.as_ref().map(|secret| {
        let expires =
            weft_common::auth::unix_now() + engine.settings.result_timeout.as_secs().max(60);
        weft_proto::ResultGrant {
            user: query.identity.user.clone(),
            expires,
            signature: secret.sign_grant(&query.id, &query.identity.user, expires),
        }
    });
    let endpoints = run
        .endpoints
        .iter()
        .map(|(location, output)| {
            let ticket = weft_proto::PartitionTicket {
                task: Some(weft_proto::TaskId {
                    query_id: query.id.clone(),
                    stage_id: last_stage,
                    task_index: location.task_index,
                    attempt: location.attempt,
                }),
                partition: *output,
                grant: grant.clone(),
            };
            let (scheme, address) = match location.address.split_once("://") {
                Some(("https", a)) => ("grpc+tls", a),
                Some((_, a)) => ("grpc+tcp", a),
                None => ("grpc+tcp", location.address.as_str()),
            };
            FlightEndpoint::new()
                .with_ticket(Ticket::new(ticket.encode_to_vec()))
                .with_location(format!("{scheme}://{address}"))
        })
        .collect();
    let info = FlightInfo::new()
        .try_with_schema(&run.schema)
        .map_err(|e| Status::internal(e.to_string()))?
        .with_endpoints(endpoints)
        .with_descriptor(descriptor)
        .with_ordered(run.endpoints.len() > 1)
        .with_total_records(-1)
        .with_total_bytes(-1);
    Ok(info)
}

/// `DoAction` type answering a query's progress (body: the query id) as
/// JSON: `state`, `elapsed_ms`, `stages_total`, `stages_done`,
/// `tasks_total`, `tasks_running`, `tasks_done`, `rows`, `bytes` (rows and
/// bytes produced by all tasks so far). `weft sql` draws its progress line
/// from it.
pub const QUERY_PROGRESS_ACTION: &str = "weft.query_progress";

fn progress_json(query: &Query, progress: &crate::query::progress::QueryProgress) -> Vec<u8> {
    let stages = &progress.stages;
    let value = serde_json::json!({
        "state": progress.state,
        "elapsed_ms": query.elapsed().as_millis() as u64,
        "stages_total": stages.len(),
        "stages_done": stages.iter().filter(|s| s.tasks_total > 0 && s.tasks_done >= s.tasks_total).count(),
        "tasks_total": stages.iter().map(|s| s.tasks_total).sum::<usize>(),
        "tasks_running": stages.iter().map(|s| s.tasks_running).sum::<usize>(),
        "tasks_done": stages.iter().map(|s| s.tasks_done).sum::<usize>(),
        "rows": stages.iter().map(|s| s.rows_out).sum::<u64>(),
        "bytes": stages.iter().map(|s| s.bytes_out).sum::<u64>(),
    });
    value.to_string().into_bytes()
}

/// Query ids named by the tickets of a FlightInfo.
pub fn query_ids_of(info: &FlightInfo) -> Vec<String> {
    let mut ids: Vec<String> = info
        .endpoint
        .iter()
        .filter_map(|e| e.ticket.as_ref())
        .filter_map(|t| {
            let statement = Any::decode(&*t.ticket)
                .ok()
                .and_then(|any| any.unpack::<TicketStatementQuery>().ok().flatten())
                .and_then(|t| ResultTicket::decode(&*t.statement_handle).ok())
                .map(|r| r.query_id);
            // Direct results: the ticket is a worker's partition ticket.
            statement.or_else(|| {
                weft_proto::PartitionTicket::decode(&*t.ticket)
                    .ok()
                    .and_then(|p| p.task)
                    .map(|task| task.query_id)
            })
        })
        .filter(|id| !id.is_empty())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Which of `values` match the SQL `LIKE` pattern (`%`, `_`, `\\` escapes);
/// no pattern matches everything. Uses arrow's `like` kernel, which runs in
/// time linear in the input whatever the pattern (a hand-written
/// backtracking matcher took exponential time on patterns like `%a%a%a...b`
/// and overflowed the stack on long ones). `what` names the field in errors.
fn like_mask(pattern: Option<&str>, values: &[&str], what: &str) -> Result<Vec<bool>, Status> {
    let Some(pattern) = pattern else {
        return Ok(vec![true; values.len()]);
    };
    let values = arrow::array::StringArray::from(values.to_vec());
    let pattern = arrow::array::Scalar::new(arrow::array::StringArray::from(vec![pattern]));
    let matched = arrow::compute::kernels::comparison::like(&values, &pattern)
        .map_err(|e| Status::invalid_argument(format!("{what}: not a usable LIKE pattern: {e}")))?;
    Ok((0..matched.len())
        .map(|i| arrow::array::Array::is_valid(&matched, i) && matched.value(i))
        .collect())
}

#[tonic::async_trait]
impl FlightSqlService for WeftFlightSql {
    type FlightService = WeftFlightSql;

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let identity = caller(&request);
        let (_, info) = self
            .statement_info(&query.query, request.into_inner(), &identity)
            .await?;
        Ok(Response::new(info))
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let handle = PreparedHandle::decode(&*cmd.prepared_statement_handle).map_err(|e| {
            Status::invalid_argument(format!("malformed prepared statement handle: {e}"))
        })?;
        let identity = caller(&request);
        let (_, info) = self
            .statement_info(&handle.sql, request.into_inner(), &identity)
            .await?;
        Ok(Response::new(info))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<
        Response<<Self as arrow_flight::flight_service_server::FlightService>::DoGetStream>,
        Status,
    > {
        let handle = ResultTicket::decode(&*ticket.statement_handle)
            .map_err(|e| Status::invalid_argument(format!("malformed statement ticket: {e}")))?;
        let stream = self
            .engine
            .stream(&handle.query_id, handle.endpoint, &caller(&request))
            .await?;
        Ok(Response::new(stream))
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        // Planning now both validates the SQL and gives the exact result schema.
        let schema = self
            .engine
            .result_schema(&query.query, &caller(&request))
            .await
            .map_err(datafusion_to_status)?;
        let ipc_options = arrow::ipc::writer::IpcWriteOptions::default();
        let dataset_schema = arrow_flight::SchemaAsIpc::new(&schema, &ipc_options);
        let arrow_flight::IpcMessage(schema_bytes) = dataset_schema
            .try_into()
            .map_err(|e: arrow::error::ArrowError| Status::internal(e.to_string()))?;
        let empty = Schema::empty();
        let arrow_flight::IpcMessage(param_bytes) =
            arrow_flight::SchemaAsIpc::new(&empty, &ipc_options)
                .try_into()
                .map_err(|e: arrow::error::ArrowError| Status::internal(e.to_string()))?;
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: PreparedHandle { sql: query.query }.encode_to_vec().into(),
            dataset_schema: schema_bytes,
            parameter_schema: param_bytes,
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        // Handles carry their SQL; nothing is held on the server.
        Ok(())
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        self.metadata_info(query, &schema, request.into_inner())
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<
        Response<<Self as arrow_flight::flight_service_server::FlightService>::DoGetStream>,
        Status,
    > {
        let mut builder = query.into_builder();
        let mut names = self.engine.catalogs_for(&caller(&request)).catalog_names();
        names.sort();
        for c in names {
            builder.append(c);
        }
        let batch = builder
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        self.batch_stream(batch).await
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.metadata_info(query, &schema, request.into_inner())
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<
        Response<<Self as arrow_flight::flight_service_server::FlightService>::DoGetStream>,
        Status,
    > {
        let mut builder = query.into_builder();
        let ctx = self.engine.catalogs_for(&caller(&request));
        let mut names = ctx.catalog_names();
        names.sort();
        for c in names {
            if let Some(cat) = ctx.catalog(&c) {
                let mut schemas = cat.schema_names();
                schemas.sort();
                for s in schemas {
                    builder.append(&c, s);
                }
            }
        }
        let batch = builder
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        self.batch_stream(batch).await
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.metadata_info(query, &schema, request.into_inner())
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<
        Response<<Self as arrow_flight::flight_service_server::FlightService>::DoGetStream>,
        Status,
    > {
        let catalog_filter = query.catalog.clone();
        let schema_pattern = query.db_schema_filter_pattern.clone();
        let table_pattern = query.table_name_filter_pattern.clone();
        let types = query.table_types.clone();
        let include_schema = query.include_schema;
        let mut builder = query.into_builder();
        let catalogs = self.engine.catalogs_for(&caller(&request));
        let names = Self::table_names(catalogs.as_ref());
        let schemas: Vec<&str> = names.iter().map(|(_, s, _)| s.as_str()).collect();
        let tables: Vec<&str> = names.iter().map(|(_, _, t)| t.as_str()).collect();
        let schema_ok = like_mask(
            schema_pattern.as_deref(),
            &schemas,
            "db_schema_filter_pattern",
        )?;
        let table_ok = like_mask(
            table_pattern.as_deref(),
            &tables,
            "table_name_filter_pattern",
        )?;
        let wanted: Vec<(String, String, String)> = names
            .iter()
            .zip(schema_ok.iter().zip(&table_ok))
            .filter(|((catalog, _, _), (s, t))| {
                **s && **t && catalog_filter.as_ref().is_none_or(|c| c == catalog)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for (catalog, schema, table) in wanted {
            let provider = catalogs
                .catalog(&catalog)
                .and_then(|c| c.schema(&schema))
                .map(|s| async move { s.table(&table).await.ok().flatten().map(|t| (table, t)) });
            let Some(fut) = provider else { continue };
            let Some((table, provider)) = fut.await else {
                continue;
            };
            let table_type = match provider.table_type() {
                datafusion::datasource::TableType::Base => "TABLE",
                datafusion::datasource::TableType::View => "VIEW",
                datafusion::datasource::TableType::Temporary => "LOCAL TEMPORARY",
            };
            if !types.is_empty() && !types.iter().any(|t| t == table_type) {
                continue;
            }
            let table_schema = if include_schema {
                // Announce the types results are delivered in (view types
                // leave Weft as plain strings and binaries).
                crate::engine::delivered_schema(&provider.schema())
            } else {
                Arc::new(Schema::empty())
            };
            builder
                .append(&catalog, &schema, &table, table_type, &table_schema)
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        let batch = builder
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        self.batch_stream(batch).await
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        self.metadata_info(query, &schema, request.into_inner())
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<
        Response<<Self as arrow_flight::flight_service_server::FlightService>::DoGetStream>,
        Status,
    > {
        let mut builder = query.into_builder();
        for t in ["LOCAL TEMPORARY", "TABLE", "VIEW"] {
            builder.append(t);
        }
        let batch = builder
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        self.batch_stream(batch).await
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&self.sql_info).schema();
        self.metadata_info(query, &schema, request.into_inner())
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<
        Response<<Self as arrow_flight::flight_service_server::FlightService>::DoGetStream>,
        Status,
    > {
        let batch = query
            .into_builder(&self.sql_info)
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        self.batch_stream(batch).await
    }

    async fn do_put_fallback(
        &self,
        _request: Request<PeekableFlightDataStream>,
        message: Any,
    ) -> Result<
        Response<<Self as arrow_flight::flight_service_server::FlightService>::DoPutStream>,
        Status,
    > {
        Err(Status::unimplemented(format!(
            "Weft is read-only; {} is not supported",
            message.type_url
        )))
    }

    async fn do_action_fallback(
        &self,
        request: Request<Action>,
    ) -> Result<
        Response<<Self as arrow_flight::flight_service_server::FlightService>::DoActionStream>,
        Status,
    > {
        let identity = caller(&request);
        let action = request.into_inner();
        if action.r#type == QUERY_PROGRESS_ACTION {
            let id = std::str::from_utf8(&action.body).map_err(|_| {
                Status::invalid_argument("weft.query_progress: the body must be a query id (UTF-8)")
            })?;
            let query = self.engine.query_for(id, &identity)?;
            let progress = query.progress(&self.engine.clients).await;
            let body = progress_json(&query, &progress);
            return Ok(Response::new(Box::pin(futures::stream::iter([Ok(
                arrow_flight::Result { body: body.into() },
            )]))));
        }
        if action.r#type == "CancelFlightInfo" {
            let req = CancelFlightInfoRequest::decode(action.body).map_err(|e| {
                Status::invalid_argument(format!("malformed CancelFlightInfoRequest: {e}"))
            })?;
            let info = req
                .info
                .ok_or_else(|| Status::invalid_argument("CancelFlightInfoRequest has no info"))?;
            let mut status = CancelStatus::NotCancellable;
            for id in query_ids_of(&info) {
                status = match self.engine.cancel(&id, &identity).await {
                    Ok(true) => CancelStatus::Cancelled,
                    Ok(false) => CancelStatus::NotCancellable,
                    // Another user's query, or none: say so, as for any other RPC.
                    Err(e) if e.code() == tonic::Code::NotFound => return Err(e),
                    Err(_) => CancelStatus::Unspecified,
                };
            }
            let result = CancelFlightInfoResult::new(status);
            let body = result.encode_to_vec();
            return Ok(Response::new(Box::pin(futures::stream::iter([Ok(
                arrow_flight::Result { body: body.into() },
            )]))));
        }
        Err(Status::invalid_argument(format!(
            "unknown action \"{}\" (Weft serves the Flight SQL actions, CancelFlightInfo and {QUERY_PROGRESS_ACTION})",
            action.r#type
        )))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::like_mask;

    /// Runs `f` on its own thread; fails if it takes longer than 10 s.
    fn bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the matcher did not finish within 10 s")
    }

    #[test]
    fn like_patterns_match_as_sql_does() {
        let values = ["lineitem", "line_item", "lineXitem", "orders", "LINEITEM"];
        let mask = |p| like_mask(Some(p), &values, "p").unwrap();
        assert_eq!(mask("line%"), [true, true, true, false, false]);
        assert_eq!(mask("line_item"), [false, true, true, false, false]);
        assert_eq!(mask("line\\_item"), [false, true, false, false, false]);
        assert_eq!(mask("%r%"), [false, false, false, true, false]);
        assert_eq!(like_mask(None, &values, "p").unwrap(), [true; 5]);
    }

    #[test]
    fn crafted_patterns_take_linear_time() {
        // Exponential for a backtracking matcher: 2^25 ways to place the %s.
        let pattern = format!("{}b", "%a".repeat(25));
        let value = "a".repeat(60);
        let got = bounded(move || like_mask(Some(&pattern), &[value.as_str()], "p").unwrap());
        assert_eq!(got, [false]);
    }

    #[test]
    fn a_very_long_pattern_is_an_answer_not_a_stack_overflow() {
        // One stack frame per character overflowed the coordinator's stack.
        let pattern = "%".repeat(1_000_000);
        let got = bounded(move || like_mask(Some(&pattern), &["x"], "table_name_filter_pattern"));
        match got {
            Ok(mask) => assert_eq!(mask, [true]),
            Err(status) => assert!(
                status.message().contains("table_name_filter_pattern"),
                "{status}"
            ),
        }
    }
}
