//! Arrow Flight plumbing shared by coordinator and workers: action names,
//! cached client channels, and error mapping at the gRPC boundary.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::Action;
use bytes::Bytes;
use datafusion::error::DataFusionError;
use futures::StreamExt;
use parking_lot::Mutex;
use prost::Message;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::auth::{ClusterSecret, NODE_TOKEN_METADATA};

/// `DoAction` types a worker serves.
pub mod actions {
    /// Body: `weft_proto::LaunchTask`; result: `LaunchTaskResult`.
    pub const LAUNCH_TASK: &str = "weft.launch_task";
    /// Body: `QueryRef`; stops every task of the query; result: `CancelResult`.
    pub const CANCEL_QUERY: &str = "weft.cancel_query";
    /// Body: `QueryRef`; forgets a finished query's tasks and buffers.
    pub const RELEASE_QUERY: &str = "weft.release_query";
    /// Body: `QueryRef`; result: `QueryStatus`.
    pub const QUERY_STATUS: &str = "weft.query_status";
    /// Body: `QueryList`, the coordinator's queries with tasks on this
    /// worker; renews their task leases; result: `QueryList` of the ids the
    /// worker holds no lease of.
    pub const RENEW_LEASES: &str = "weft.renew_leases";
}

/// HTTP/2 keep-alive on every channel between nodes, both ways: a peer that
/// answers no ping for [`KEEPALIVE_TIMEOUT`] (frozen, cut off) has its
/// connection closed, and the streams on it fail, within
/// `KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT` instead of waiting for TCP.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// gRPC metadata a worker sets on a refused launch: `draining` means it is
/// stopping gracefully and the task should be placed elsewhere.
pub const REFUSAL_METADATA: &str = "weft-refusal";
/// [`REFUSAL_METADATA`] value of a draining worker.
pub const REFUSAL_DRAINING: &str = "draining";
/// [`REFUSAL_METADATA`] value of a worker running as many queries as its
/// `--max-queries` allows: launch the query again later.
pub const REFUSAL_BUSY: &str = "busy";

/// Whether `status` is a launch refused by a draining worker (retry elsewhere).
pub fn is_draining_refusal(status: &tonic::Status) -> bool {
    status
        .metadata()
        .get(REFUSAL_METADATA)
        .is_some_and(|v| v.as_bytes() == REFUSAL_DRAINING.as_bytes())
}

/// Whether `status` is a launch refused by a worker at its `--max-queries`
/// limit (retry the launch later, on the same workers or others).
pub fn is_busy_refusal(status: &tonic::Status) -> bool {
    status
        .metadata()
        .get(REFUSAL_METADATA)
        .is_some_and(|v| v.as_bytes() == REFUSAL_BUSY.as_bytes())
}

/// Largest gRPC message Weft accepts (plans and large batches).
pub const MAX_MESSAGE_SIZE: usize = 256 * 1024 * 1024;

/// HTTP/2 connection-level receive window (the protocol maximum).
const CONNECTION_WINDOW: u32 = (1 << 31) - 1;
/// HTTP/2 per-stream receive window: what a producer may send ahead of a
/// consumer that is not reading.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;

/// Signs every internal RPC with a node token ([`crate::auth`]) when the
/// cluster has a secret.
#[derive(Debug, Clone, Default)]
pub struct NodeAuth {
    secret: Option<Arc<ClusterSecret>>,
}

impl NodeAuth {
    pub fn new(secret: Option<Arc<ClusterSecret>>) -> Self {
        Self { secret }
    }
}

impl tonic::service::Interceptor for NodeAuth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(secret) = &self.secret {
            let token = secret
                .node_token()
                .parse()
                .map_err(|_| tonic::Status::internal("a node token is not valid metadata"))?;
            request.metadata_mut().insert(NODE_TOKEN_METADATA, token);
        }
        Ok(request)
    }
}

/// A Flight client to another node, signing its calls.
pub type NodeClient = FlightServiceClient<InterceptedService<Channel, NodeAuth>>;

/// Lazily connected, cached channels to workers by address.
#[derive(Debug, Default)]
pub struct ClientPool {
    channels: Mutex<HashMap<String, Channel>>,
    auth: NodeAuth,
    /// TLS of `https://` addresses (the cluster CA and this node's
    /// certificate, for mutual TLS).
    tls: Option<tonic::transport::ClientTlsConfig>,
}

impl ClientPool {
    pub fn new() -> Self {
        Self::default()
    }

    /// A pool whose calls carry node tokens signed with `secret` (none: unsigned).
    pub fn with_cluster_secret(secret: Option<Arc<ClusterSecret>>) -> Self {
        Self {
            channels: Mutex::default(),
            auth: NodeAuth::new(secret),
            tls: None,
        }
    }

    /// Connects to `https://` addresses with `tls` ([`crate::tls::client_config`]).
    pub fn with_tls(mut self, tls: Option<tonic::transport::ClientTlsConfig>) -> Self {
        self.tls = tls;
        self
    }

    /// A Flight client for `address` (`http://host:port`).
    pub fn client(&self, address: &str) -> Result<NodeClient, DataFusionError> {
        let channel = {
            let mut channels = self.channels.lock();
            match channels.get(address) {
                Some(c) => c.clone(),
                None => {
                    let mut endpoint = Endpoint::from_shared(address.to_string()).map_err(|e| {
                        DataFusionError::Plan(format!("invalid worker address {address}: {e}"))
                    })?;
                    if address.starts_with("https://") {
                        let tls = self.tls.clone().ok_or_else(|| {
                            DataFusionError::Plan(format!(
                                "worker {address} serves TLS, but this node has no --tls-ca-file to verify it with"
                            ))
                        })?;
                        endpoint = endpoint.tls_config(tls).map_err(|e| {
                            DataFusionError::Plan(format!("TLS settings for {address}: {e}"))
                        })?;
                    }
                    let endpoint = endpoint
                        .connect_timeout(Duration::from_secs(3))
                        // Many DoGet streams share one HTTP/2 connection, and a reader
                        // may leave a stream unread for a while (a join reads its build
                        // side before its probe side). With a small connection window,
                        // unread streams would use it up and stall the streams being
                        // read: a distributed deadlock. So the connection window is
                        // effectively unlimited and backpressure comes from the
                        // per-stream window alone.
                        .initial_connection_window_size(Some(CONNECTION_WINDOW))
                        .initial_stream_window_size(Some(STREAM_WINDOW))
                        .tcp_nodelay(true)
                        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                        .keep_alive_while_idle(true);
                    let c = endpoint.connect_lazy();
                    channels.insert(address.to_string(), c.clone());
                    c
                }
            }
        };
        Ok(
            FlightServiceClient::with_interceptor(channel, self.auth.clone())
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
        )
    }

    /// Runs a `DoAction` and returns the body of its single result.
    pub async fn action(
        &self,
        address: &str,
        action_type: &str,
        body: impl Message,
    ) -> Result<Bytes, tonic::Status> {
        let mut client = self
            .client(address)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        let action = Action {
            r#type: action_type.to_string(),
            body: body.encode_to_vec().into(),
        };
        let mut stream = client
            .do_action(crate::telemetry::traces::request(action))
            .await?
            .into_inner();
        match stream.next().await {
            Some(r) => Ok(r?.body),
            None => Ok(Bytes::new()),
        }
    }
}

/// The `http(s)://host:port` URL of a Flight location (`grpc://`,
/// `grpc+tcp://`, `grpc+tls://`), for endpoints that name where to read.
pub fn location_url(uri: &str) -> Option<String> {
    let (scheme, rest) = uri.split_once("://")?;
    match scheme {
        "grpc" | "grpc+tcp" | "http" => Some(format!("http://{rest}")),
        "grpc+tls" | "https" => Some(format!("https://{rest}")),
        _ => None,
    }
}

/// True for errors that mean "could not talk to the node" rather than "the
/// node ran the request and it failed". Only these may be retried.
pub fn is_transport_error(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::DeadlineExceeded
    ) && !status.message().starts_with("weft:")
}

/// Metadata key naming the worker whose loss failed a stream (set on the
/// `Unavailable` status a worker returns when an upstream worker was lost).
pub const LOST_WORKER_METADATA: &str = "weft-lost-worker";

/// A worker that could not be read any more (killed, frozen, cut off):
/// an infrastructure failure, which the coordinator answers by running the
/// query again without it. Carried through every stage between the lost
/// worker and the coordinator, as `Unavailable` with
/// [`LOST_WORKER_METADATA`] on the wire.
#[derive(Debug, Clone)]
pub struct WorkerLost {
    pub worker_id: String,
    pub address: String,
    pub message: String,
}

impl std::fmt::Display for WorkerLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for WorkerLost {}

impl WorkerLost {
    /// The status a worker answers a read with when this loss failed it.
    pub fn to_status(&self) -> tonic::Status {
        let mut status = tonic::Status::unavailable(self.message.clone());
        if let Ok(value) = tonic::metadata::MetadataValue::try_from(self.worker_id.as_str()) {
            status.metadata_mut().insert(LOST_WORKER_METADATA, value);
        }
        status
    }

    /// The loss a status from a worker reports, if it reports one.
    pub fn from_status(status: &tonic::Status) -> Option<Self> {
        let worker_id = status.metadata().get(LOST_WORKER_METADATA)?.to_str().ok()?;
        Some(Self {
            worker_id: worker_id.to_string(),
            address: String::new(),
            message: status.message().to_string(),
        })
    }

    /// The loss somewhere in `error`'s chain of sources.
    pub fn find<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Self> {
        let mut current = Some(error);
        while let Some(e) = current {
            if let Some(lost) = e.downcast_ref::<Self>() {
                return Some(lost);
            }
            current = e.source();
        }
        None
    }
}

/// A reader asked for data the access rules do not give them; a client sees
/// `PermissionDenied` with this message.
#[derive(Debug)]
pub struct AccessDenied(pub String);

impl std::fmt::Display for AccessDenied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AccessDenied {}

/// Maps a DataFusion error to the gRPC status a client sees: user mistakes are
/// `InvalidArgument`, access-rule denials `PermissionDenied`, the rest keeps
/// the full message.
pub fn datafusion_to_status(e: DataFusionError) -> tonic::Status {
    let message = e.to_string();
    match e.find_root() {
        DataFusionError::External(inner) if inner.downcast_ref::<AccessDenied>().is_some() => {
            tonic::Status::permission_denied(message)
        }
        DataFusionError::SQL(..) | DataFusionError::Plan(_) | DataFusionError::SchemaError(..) => {
            tonic::Status::invalid_argument(message)
        }
        DataFusionError::NotImplemented(_) => tonic::Status::unimplemented(message),
        DataFusionError::ResourcesExhausted(_) => tonic::Status::resource_exhausted(message),
        _ => tonic::Status::internal(message),
    }
}
