//! The worker's Arrow Flight service: task actions and output streams.

use std::pin::Pin;
use std::sync::Arc;

use arrow::ipc::writer::IpcWriteOptions;
use arrow::ipc::CompressionType;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use futures::{Stream, TryStreamExt};
use prost::Message;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};
use weft_common::auth::{ClusterSecret, ResultGrant, NODE_TOKEN_METADATA};
use weft_common::flight::actions;
use weft_proto::{
    CancelResult, LaunchTask, LaunchTaskResult, PartitionTicket, QueryList, QueryRef, QueryStatus,
};

use crate::tasks::{TaskError, TaskManager};

/// Flight service of a worker.
#[derive(Debug, Clone)]
pub struct WorkerService {
    tasks: Arc<TaskManager>,
    /// With a cluster secret, every call must carry a node token (or, for a
    /// `DoGet`, a ticket with a valid grant).
    secret: Option<Arc<ClusterSecret>>,
}

impl WorkerService {
    pub fn new(tasks: Arc<TaskManager>) -> Self {
        Self {
            tasks,
            secret: None,
        }
    }

    /// Accepts only calls signed with `secret` ([`weft_common::auth`]).
    pub fn with_cluster_secret(mut self, secret: Option<Arc<ClusterSecret>>) -> Self {
        self.secret = secret;
        self
    }

    /// Whether the caller is a member of the cluster.
    fn authorize_node(&self, metadata: &MetadataMap, rpc: &str) -> Result<(), Status> {
        let Some(secret) = &self.secret else {
            return Ok(());
        };
        let refused = |why: String| {
            tracing::warn!(worker = %self.tasks.worker_id(), rpc, "refused an internal call: {why}");
            Status::unauthenticated(format!(
                "{rpc} refused: {why}; workers accept internal calls only from nodes of their cluster \
                 (clients connect to the coordinator)"
            ))
        };
        let token = metadata
            .get(NODE_TOKEN_METADATA)
            .ok_or_else(|| refused(format!("no node token ({NODE_TOKEN_METADATA}) was sent")))?
            .to_str()
            .map_err(|_| refused("the node token is not text".into()))?;
        secret.verify_node_token(token).map_err(refused)
    }

    /// A `DoGet` needs a node token, or a ticket whose grant covers its query.
    fn authorize_read(
        &self,
        metadata: &MetadataMap,
        ticket: &PartitionTicket,
    ) -> Result<(), Status> {
        let (Some(secret), Some(grant)) = (&self.secret, &ticket.grant) else {
            return self.authorize_node(metadata, "DoGet");
        };
        if metadata.contains_key(NODE_TOKEN_METADATA) {
            return self.authorize_node(metadata, "DoGet");
        }
        let query = ticket.task.as_ref().map_or("", |t| t.query_id.as_str());
        let grant = ResultGrant {
            user: grant.user.clone(),
            expires: grant.expires,
            signature: grant.signature.to_vec(),
        };
        secret.verify_grant(query, &grant).map_err(|why| {
            tracing::warn!(worker = %self.tasks.worker_id(), "refused a result read: {why}");
            Status::unauthenticated(format!("DoGet refused: {why}"))
        })
    }
}

impl From<TaskError> for Status {
    fn from(e: TaskError) -> Self {
        let message = e.to_string();
        match e {
            TaskError::ShuttingDown { .. } => {
                let mut status = Status::unavailable(message);
                status.metadata_mut().insert(
                    weft_common::flight::REFUSAL_METADATA,
                    tonic::metadata::MetadataValue::from_static(
                        weft_common::flight::REFUSAL_DRAINING,
                    ),
                );
                status
            }
            TaskError::Busy { .. } => {
                let mut status = Status::resource_exhausted(message);
                status.metadata_mut().insert(
                    weft_common::flight::REFUSAL_METADATA,
                    tonic::metadata::MetadataValue::from_static(weft_common::flight::REFUSAL_BUSY),
                );
                status
            }
            TaskError::Killed { .. } => Status::unavailable(message),
            TaskError::Duplicate { .. } => Status::already_exists(message),
            TaskError::NotFound { .. } => Status::not_found(message),
            TaskError::NoSuchOutput { .. } => Status::out_of_range(message),
            TaskError::AlreadyConsumed { .. } => Status::failed_precondition(message),
            TaskError::Plan { .. } => Status::invalid_argument(message),
            TaskError::Cancelled { .. } => Status::aborted(message),
            TaskError::Lost(lost) => lost.to_status(),
        }
    }
}

/// `weft_worker_exchange_sent_*{transport="flight"}`.
struct SentCounters {
    bytes: metrics::Counter,
    batches: metrics::Counter,
    rows: metrics::Counter,
}

impl SentCounters {
    fn new() -> Self {
        use weft_common::telemetry::catalog::*;
        Self {
            bytes: metrics::counter!(EXCHANGE_SENT_BYTES.name, "transport" => "flight"),
            batches: metrics::counter!(EXCHANGE_SENT_BATCHES.name, "transport" => "flight"),
            rows: metrics::counter!(EXCHANGE_SENT_ROWS.name, "transport" => "flight"),
        }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn decode<M: Message + Default>(body: &[u8], what: &str) -> Result<M, Status> {
    M::decode(body).map_err(|e| Status::invalid_argument(format!("malformed {what}: {e}")))
}

fn one_result(body: Vec<u8>) -> Response<BoxStream<arrow_flight::Result>> {
    let item = arrow_flight::Result { body: body.into() };
    Response::new(Box::pin(futures::stream::iter([Ok(item)])))
}

#[tonic::async_trait]
impl FlightService for WorkerService {
    type HandshakeStream = BoxStream<HandshakeResponse>;
    type ListFlightsStream = BoxStream<FlightInfo>;
    type DoGetStream = BoxStream<FlightData>;
    type DoPutStream = BoxStream<PutResult>;
    type DoActionStream = BoxStream<arrow_flight::Result>;
    type ListActionsStream = BoxStream<ActionType>;
    type DoExchangeStream = BoxStream<FlightData>;

    async fn handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        Err(Status::unimplemented(
            "workers do not authenticate clients; connect to the coordinator",
        ))
    }

    async fn list_flights(
        &self,
        _request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        Err(Status::unimplemented(
            "list_flights is not served by workers",
        ))
    }

    async fn get_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Err(Status::unimplemented(
            "workers serve DoGet only; send SQL to the coordinator",
        ))
    }

    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented(
            "workers serve DoGet only; send SQL to the coordinator",
        ))
    }

    async fn get_schema(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        Err(Status::unimplemented("get_schema is not served by workers"))
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let ticket: PartitionTicket = decode(&request.get_ref().ticket, "partition ticket")?;
        self.authorize_read(request.metadata(), &ticket)?;
        let id = ticket.task.unwrap_or_default();
        let span = tracing::info_span!(
            "serve_output",
            query_id = %id.query_id,
            stage = id.stage_id,
            task = id.task_index,
            output = ticket.partition,
            worker = %self.tasks.worker_id(),
        );
        weft_common::telemetry::traces::set_parent(&span, request.metadata());
        let (task, batches) = self.tasks.output_batches(&id, ticket.partition)?;
        let compression = match task.compression.as_str() {
            "lz4" => Some(CompressionType::LZ4_FRAME),
            "zstd" => Some(CompressionType::ZSTD),
            _ => None,
        };
        let options = IpcWriteOptions::default()
            .try_with_compression(compression)
            .map_err(|e| Status::internal(e.to_string()))?;
        let sent = SentCounters::new();
        let (rows, batch_count) = (sent.rows.clone(), sent.batches.clone());
        let batches = batches.inspect_ok(move |b| {
            rows.increment(b.num_rows() as u64);
            batch_count.increment(1);
        });
        let bytes = sent.bytes;
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(task.plan.schema())
            .with_options(options)
            .build(batches.map_err(|e| FlightError::ExternalError(Box::new(e))))
            .map_err(|e| match e {
                FlightError::Tonic(status) => *status,
                // An upstream worker was lost: `Unavailable` naming it, so
                // the coordinator runs the query again without it.
                other => match weft_common::flight::WorkerLost::find(&other) {
                    Some(lost) => lost.to_status(),
                    None => Status::internal(other.to_string()),
                },
            })
            .inspect_ok(move |d| {
                // The span lives as long as the stream: it ends when the reader is done.
                let _in_span = &span;
                bytes.increment((d.data_header.len() + d.data_body.len()) as u64)
            });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn do_put(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        Err(Status::unimplemented("do_put is not served by workers"))
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        let (metadata, _, action) = request.into_parts();
        self.authorize_node(&metadata, &action.r#type)?;
        match action.r#type.as_str() {
            actions::LAUNCH_TASK => {
                let launch: LaunchTask = decode(&action.body, "launch request")?;
                let id = launch.task.clone().unwrap_or_default();
                let span = tracing::info_span!(
                    "task",
                    query_id = %id.query_id,
                    stage = id.stage_id,
                    task = id.task_index,
                    worker = %self.tasks.worker_id(),
                    state = tracing::field::Empty,
                );
                weft_common::telemetry::traces::set_parent(&span, &metadata);
                let outputs = self.tasks.launch_in(launch, span)?;
                Ok(one_result(
                    LaunchTaskResult {
                        output_partitions: outputs,
                    }
                    .encode_to_vec(),
                ))
            }
            actions::CANCEL_QUERY => {
                let q: QueryRef = decode(&action.body, "query reference")?;
                let tasks = self.tasks.cancel_attempts(&q.query_id, q.keep_from_attempt);
                Ok(one_result(
                    CancelResult {
                        tasks_cancelled: tasks.len() as u32,
                        tasks,
                    }
                    .encode_to_vec(),
                ))
            }
            actions::RELEASE_QUERY => {
                let q: QueryRef = decode(&action.body, "query reference")?;
                let tasks = self.tasks.release_query(&q.query_id);
                Ok(one_result(
                    CancelResult {
                        tasks_cancelled: tasks.len() as u32,
                        tasks,
                    }
                    .encode_to_vec(),
                ))
            }
            actions::QUERY_STATUS => {
                let q: QueryRef = decode(&action.body, "query reference")?;
                let tasks = self.tasks.query_status(&q.query_id);
                Ok(one_result(QueryStatus { tasks }.encode_to_vec()))
            }
            actions::RENEW_LEASES => {
                let q: QueryList = decode(&action.body, "query list")?;
                let unknown = self.tasks.renew_leases(&q.query_ids);
                Ok(one_result(QueryList { query_ids: unknown }.encode_to_vec()))
            }
            other => Err(Status::invalid_argument(format!(
                "unknown worker action \"{other}\" (expected one of {}, {}, {}, {}, {})",
                actions::LAUNCH_TASK,
                actions::CANCEL_QUERY,
                actions::RELEASE_QUERY,
                actions::QUERY_STATUS,
                actions::RENEW_LEASES
            ))),
        }
    }

    async fn list_actions(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        let list = [
            actions::LAUNCH_TASK,
            actions::CANCEL_QUERY,
            actions::RELEASE_QUERY,
            actions::QUERY_STATUS,
            actions::RENEW_LEASES,
        ]
        .map(|t| {
            Ok(ActionType {
                r#type: t.to_string(),
                description: String::new(),
            })
        });
        Ok(Response::new(Box::pin(futures::stream::iter(list))))
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented(
            "do_exchange is not served by workers",
        ))
    }
}
