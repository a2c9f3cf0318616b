//! `PollFlightInfo` with progress, layered over the Flight SQL service (the
//! arrow-flight Flight SQL adapter does not route it).

use std::sync::Arc;

use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::{Any, Command};
use arrow_flight::{
    Action, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo, HandshakeRequest, PollInfo,
    SchemaResult, Ticket,
};
use prost::Message;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;
use weft_proto::PreparedHandle;

use super::{flight_info_for, WeftFlightSql};
use crate::queries::QueryState;

/// Prefix of the descriptor a client polls with after the first call.
const POLL_PREFIX: &str = "weft-poll:";

/// Flight service of the coordinator: Flight SQL plus `PollFlightInfo`.
#[derive(Debug, Clone)]
pub struct WithPoll {
    inner: Arc<WeftFlightSql>,
}

impl WithPoll {
    pub fn new(inner: WeftFlightSql) -> Self {
        Self {
            inner: Arc::new(inner),
        }
    }

    async fn poll(&self, descriptor: FlightDescriptor) -> Result<PollInfo, Status> {
        let engine = self.inner.engine();
        let cmd = descriptor.cmd.clone();
        let query = if let Some(id) = std::str::from_utf8(&cmd)
            .ok()
            .and_then(|s| s.strip_prefix(POLL_PREFIX))
        {
            engine
                .queries
                .get(id)
                .ok_or_else(|| Status::not_found(format!("query {id} is unknown or expired")))?
        } else {
            let any = Any::decode(&*cmd)
                .map_err(|e| Status::invalid_argument(format!("malformed command: {e}")))?;
            let sql = match Command::try_from(any)
                .map_err(|e| Status::invalid_argument(e.to_string()))?
            {
                Command::CommandStatementQuery(q) => q.query,
                Command::CommandPreparedStatementQuery(p) => {
                    PreparedHandle::decode(&*p.prepared_statement_handle)
                        .map_err(|e| {
                            Status::invalid_argument(format!(
                                "malformed prepared statement handle: {e}"
                            ))
                        })?
                        .sql
                }
                other => {
                    return Err(Status::unimplemented(format!(
                        "PollFlightInfo supports statements and prepared statements, not {}",
                        other.type_url()
                    )))
                }
            };
            engine.start_query(&sql).await?
        };
        let progress = query.progress(&engine.clients).await;
        let state = query.state();
        if let QueryState::Failed(m) = &state {
            return Err(Status::aborted(format!("query {} failed: {m}", query.id)));
        }
        let info: FlightInfo = flight_info_for(&query, descriptor)?;
        let next = (!state.is_terminal()).then(|| FlightDescriptor {
            r#type: DescriptorType::Cmd as i32,
            cmd: format!("{POLL_PREFIX}{}", query.id).into_bytes().into(),
            path: vec![],
        });
        let fraction = if state == QueryState::Finished {
            1.0
        } else {
            progress.fraction_done()
        };
        Ok(PollInfo {
            info: Some(info),
            flight_descriptor: next,
            progress: Some(fraction),
            expiration_time: None,
        })
    }
}

/// The span of one Flight SQL request, child of the client's trace context
/// (`traceparent`) when it sent one.
fn rpc_span(method: &'static str, metadata: &tonic::metadata::MetadataMap) -> tracing::Span {
    let span = tracing::info_span!("flight_sql", method);
    weft_common::telemetry::traces::set_parent(&span, metadata);
    span
}

/// Counts a request in `weft_coordinator_flight_requests_total` by method
/// and the status its response starts with (an error in the middle of a
/// result stream is counted with the query, not here).
fn counted<T>(method: &'static str, result: Result<T, Status>) -> Result<T, Status> {
    let code = match &result {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    };
    metrics::counter!(
        weft_common::telemetry::catalog::FLIGHT_REQUESTS.name,
        "method" => method,
        "code" => weft_common::telemetry::code_label(code)
    )
    .increment(1);
    result
}

#[tonic::async_trait]
impl FlightService for WithPoll {
    type HandshakeStream = <WeftFlightSql as FlightService>::HandshakeStream;
    type ListFlightsStream = <WeftFlightSql as FlightService>::ListFlightsStream;
    type DoGetStream = <WeftFlightSql as FlightService>::DoGetStream;
    type DoPutStream = <WeftFlightSql as FlightService>::DoPutStream;
    type DoActionStream = <WeftFlightSql as FlightService>::DoActionStream;
    type ListActionsStream = <WeftFlightSql as FlightService>::ListActionsStream;
    type DoExchangeStream = <WeftFlightSql as FlightService>::DoExchangeStream;

    async fn handshake(
        &self,
        r: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        {
            let span = rpc_span("Handshake", r.metadata());
            counted(
                "Handshake",
                FlightService::handshake(&*self.inner, r)
                    .instrument(span)
                    .await,
            )
        }
    }
    async fn list_flights(
        &self,
        r: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        {
            let span = rpc_span("ListFlights", r.metadata());
            counted(
                "ListFlights",
                FlightService::list_flights(&*self.inner, r)
                    .instrument(span)
                    .await,
            )
        }
    }
    async fn get_flight_info(
        &self,
        r: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        {
            let span = rpc_span("GetFlightInfo", r.metadata());
            counted(
                "GetFlightInfo",
                FlightService::get_flight_info(&*self.inner, r)
                    .instrument(span)
                    .await,
            )
        }
    }
    async fn poll_flight_info(
        &self,
        r: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        let span = rpc_span("PollFlightInfo", r.metadata());
        counted(
            "PollFlightInfo",
            self.poll(r.into_inner())
                .instrument(span)
                .await
                .map(Response::new),
        )
    }
    async fn get_schema(
        &self,
        r: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        {
            let span = rpc_span("GetSchema", r.metadata());
            counted(
                "GetSchema",
                FlightService::get_schema(&*self.inner, r)
                    .instrument(span)
                    .await,
            )
        }
    }
    async fn do_get(&self, r: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        {
            let span = rpc_span("DoGet", r.metadata());
            counted(
                "DoGet",
                FlightService::do_get(&*self.inner, r)
                    .instrument(span)
                    .await,
            )
        }
    }
    async fn do_put(
        &self,
        r: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        {
            let span = rpc_span("DoPut", r.metadata());
            counted(
                "DoPut",
                FlightService::do_put(&*self.inner, r)
                    .instrument(span)
                    .await,
            )
        }
    }
    async fn do_action(
        &self,
        r: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        {
            let span = rpc_span("DoAction", r.metadata());
            counted(
                "DoAction",
                FlightService::do_action(&*self.inner, r)
                    .instrument(span)
                    .await,
            )
        }
    }
    async fn list_actions(
        &self,
        r: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        {
            let span = rpc_span("ListActions", r.metadata());
            counted(
                "ListActions",
                FlightService::list_actions(&*self.inner, r)
                    .instrument(span)
                    .await,
            )
        }
    }
    async fn do_exchange(
        &self,
        r: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        {
            let span = rpc_span("DoExchange", r.metadata());
            counted(
                "DoExchange",
                FlightService::do_exchange(&*self.inner, r)
                    .instrument(span)
                    .await,
            )
        }
    }
}
