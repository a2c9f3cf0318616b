//! `PollFlightInfo` with progress, layered over the Flight SQL service (the
//! arrow-flight Flight SQL adapter does not route it).

use std::sync::Arc;

use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::{Any, Command};
use arrow_flight::{
    Action, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo, HandshakeRequest,
    HandshakeResponse, PollInfo, SchemaResult, Ticket,
};
use prost::Message;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;
use weft_proto::PreparedHandle;

use super::{flight_info_for, WeftFlightSql};
use crate::auth::{Authenticator, Identity};
use crate::queries::QueryState;

/// Prefix of the descriptor a client polls with after the first call.
const POLL_PREFIX: &str = "weft-poll:";

/// Flight service of the coordinator: Flight SQL plus `PollFlightInfo`,
/// behind authentication: the handshake signs callers in, every other RPC
/// is checked ([`crate::auth`]) and carries the caller's [`Identity`] on to
/// the Flight SQL service in the request's extensions.
#[derive(Debug, Clone)]
pub struct WithPoll {
    inner: Arc<WeftFlightSql>,
    auth: Arc<Authenticator>,
}

impl WithPoll {
    /// A service with no authentication (every caller may do everything).
    pub fn new(inner: WeftFlightSql) -> Self {
        Self::with_auth(inner, Arc::new(Authenticator::open()))
    }

    pub fn with_auth(inner: WeftFlightSql, auth: Arc<Authenticator>) -> Self {
        Self {
            inner: Arc::new(inner),
            auth,
        }
    }

    /// Checks the caller and records who it is on the request.
    fn sign<T>(&self, request: &mut Request<T>, method: &str) -> Result<(), Status> {
        match self.auth.authenticate(request.metadata()) {
            Ok(identity) => {
                request.extensions_mut().insert(identity);
                Ok(())
            }
            Err(status) => {
                tracing::debug!(method, "unauthenticated: {}", status.message());
                Err(status)
            }
        }
    }

    async fn handshake_reply(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<<WeftFlightSql as FlightService>::HandshakeStream>, Status> {
        let (metadata, _, mut stream) = request.into_parts();
        // The Basic credentials are in the header; some clients put a
        // BasicAuth message into the first request instead.
        let payload = match metadata.get("authorization") {
            Some(_) => bytes::Bytes::new(),
            None => match stream.message().await? {
                Some(first) => first.payload,
                None => bytes::Bytes::new(),
            },
        };
        let (identity, token) = self.auth.handshake(&metadata, &payload).await?;
        tracing::debug!(user = %identity.user, "signed in");
        let response = HandshakeResponse {
            protocol_version: 0,
            payload: token.clone().into(),
        };
        let mut reply: Response<<WeftFlightSql as FlightService>::HandshakeStream> =
            Response::new(Box::pin(futures::stream::iter([Ok(response)])));
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| Status::internal("the session token is not valid metadata"))?;
        reply.metadata_mut().insert("authorization", value);
        Ok(reply)
    }

    async fn poll(
        &self,
        descriptor: FlightDescriptor,
        identity: &Identity,
    ) -> Result<PollInfo, Status> {
        let engine = self.inner.engine();
        let cmd = descriptor.cmd.clone();
        let query = if let Some(id) = std::str::from_utf8(&cmd)
            .ok()
            .and_then(|s| s.strip_prefix(POLL_PREFIX))
        {
            engine.query_for(id, identity)?
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
            engine.start_query(&sql, identity).await?
        };
        let progress = query.progress(&engine.clients).await;
        let state = query.state();
        if let QueryState::Failed(m) = &state {
            return Err(Status::aborted(format!("query {} failed: {m}", query.id)));
        }
        let info: FlightInfo = flight_info_for(engine, &query, descriptor)?;
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
            counted("Handshake", self.handshake_reply(r).instrument(span).await)
        }
    }
    async fn list_flights(
        &self,
        mut r: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        {
            let span = rpc_span("ListFlights", r.metadata());
            counted(
                "ListFlights",
                async {
                    self.sign(&mut r, "ListFlights")?;
                    FlightService::list_flights(&*self.inner, r).await
                }
                .instrument(span)
                .await,
            )
        }
    }
    async fn get_flight_info(
        &self,
        mut r: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        {
            let span = rpc_span("GetFlightInfo", r.metadata());
            counted(
                "GetFlightInfo",
                async {
                    self.sign(&mut r, "GetFlightInfo")?;
                    FlightService::get_flight_info(&*self.inner, r).await
                }
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
        let reply = async {
            let identity = self.auth.authenticate(r.metadata())?;
            self.poll(r.into_inner(), &identity)
                .await
                .map(Response::new)
        };
        counted("PollFlightInfo", reply.instrument(span).await)
    }
    async fn get_schema(
        &self,
        mut r: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        {
            let span = rpc_span("GetSchema", r.metadata());
            counted(
                "GetSchema",
                async {
                    self.sign(&mut r, "GetSchema")?;
                    FlightService::get_schema(&*self.inner, r).await
                }
                .instrument(span)
                .await,
            )
        }
    }
    async fn do_get(&self, mut r: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        {
            let span = rpc_span("DoGet", r.metadata());
            counted(
                "DoGet",
                async {
                    self.sign(&mut r, "DoGet")?;
                    FlightService::do_get(&*self.inner, r).await
                }
                .instrument(span)
                .await,
            )
        }
    }
    async fn do_put(
        &self,
        mut r: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        {
            let span = rpc_span("DoPut", r.metadata());
            counted(
                "DoPut",
                async {
                    self.sign(&mut r, "DoPut")?;
                    FlightService::do_put(&*self.inner, r).await
                }
                .instrument(span)
                .await,
            )
        }
    }
    async fn do_action(
        &self,
        mut r: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        {
            let span = rpc_span("DoAction", r.metadata());
            counted(
                "DoAction",
                async {
                    self.sign(&mut r, "DoAction")?;
                    FlightService::do_action(&*self.inner, r).await
                }
                .instrument(span)
                .await,
            )
        }
    }
    async fn list_actions(
        &self,
        mut r: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        {
            let span = rpc_span("ListActions", r.metadata());
            counted(
                "ListActions",
                async {
                    self.sign(&mut r, "ListActions")?;
                    FlightService::list_actions(&*self.inner, r).await
                }
                .instrument(span)
                .await,
            )
        }
    }
    async fn do_exchange(
        &self,
        mut r: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        {
            let span = rpc_span("DoExchange", r.metadata());
            counted(
                "DoExchange",
                async {
                    self.sign(&mut r, "DoExchange")?;
                    FlightService::do_exchange(&*self.inner, r).await
                }
                .instrument(span)
                .await,
            )
        }
    }
}
