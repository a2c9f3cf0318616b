//! The HTTP endpoints of a node (`--http-listen`):
//!
//! | path | answer |
//! |---|---|
//! | `/metrics` | Prometheus text format (version 0.0.4) of this process's metrics |
//! | `/healthz` | `200 ok` while the process serves requests |
//! | `/readyz`  | `200 ready`, or `503` with the reason (no live worker, etcd unreachable, draining, ...) |

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Offset of the default HTTP port from the Flight port (`--listen`).
pub const DEFAULT_HTTP_PORT_OFFSET: u16 = 1000;

/// The address of `--http-listen`: the value given (`none` = no server), or
/// by default the Flight `--listen` host with its port + 1000, so a
/// coordinator (50050 -> 51050) and workers (50051 -> 51051, ...) sharing a
/// host never collide as long as their Flight ports do not.
pub fn http_listen_address(
    flag: Option<&str>,
    flight_listen: SocketAddr,
) -> Result<Option<SocketAddr>, String> {
    match flag.map(str::trim) {
        Some("none") | Some("off") => Ok(None),
        Some(value) => value.parse().map(Some).map_err(|e| {
            format!("--http-listen {value:?} is not HOST:PORT ({e}); e.g. --http-listen 0.0.0.0:51050, or `none`")
        }),
        None if flight_listen.port() == 0 => Ok(Some(SocketAddr::new(flight_listen.ip(), 0))),
        None => {
            let port = flight_listen.port().checked_add(DEFAULT_HTTP_PORT_OFFSET).ok_or_else(|| {
                format!(
                    "--listen port {} + {DEFAULT_HTTP_PORT_OFFSET} is not a port: set --http-listen HOST:PORT",
                    flight_listen.port()
                )
            })?;
            Ok(Some(SocketAddr::new(flight_listen.ip(), port)))
        }
    }
}

/// Whether a node can take work; a node-specific check.
#[async_trait::async_trait]
pub trait Readiness: Send + Sync {
    /// `Err(reason)` when the node should not receive work now.
    async fn ready(&self) -> Result<(), String>;
}

/// A running HTTP server; stops when dropped or [shut down](HttpServer::shutdown).
#[derive(Debug)]
pub struct HttpServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// A bound HTTP port, not serving yet: nodes bind before they join the
/// cluster, so a port clash fails the start before anything is registered.
#[derive(Debug)]
pub struct HttpBinding {
    listener: TcpListener,
}

impl HttpBinding {
    /// Binds `listen`; the error names the address and the flag to change.
    pub async fn bind(listen: SocketAddr) -> Result<Self, std::io::Error> {
        let listener = TcpListener::bind(listen).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot serve HTTP (/metrics, /healthz, /readyz) on {listen}: {e}; choose another --http-listen"),
            )
        })?;
        Ok(Self { listener })
    }

    /// Serves the endpoints on the bound port.
    pub fn serve(self, readiness: Arc<dyn Readiness>) -> Result<HttpServer, std::io::Error> {
        HttpServer::serve(self.listener, readiness)
    }
}

impl HttpServer {
    /// Binds `listen` and serves the endpoints.
    pub async fn start(
        listen: SocketAddr,
        readiness: Arc<dyn Readiness>,
    ) -> Result<Self, std::io::Error> {
        HttpBinding::bind(listen).await?.serve(readiness)
    }

    fn serve(listener: TcpListener, readiness: Arc<dyn Readiness>) -> Result<Self, std::io::Error> {
        super::install();
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(readiness);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!("HTTP server on {addr} stopped: {e}");
            }
        });
        Ok(Self {
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://host:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn metrics() -> impl IntoResponse {
    // Rendering walks every series: keep it off the async workers.
    let body = tokio::task::spawn_blocking(super::render)
        .await
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

async fn readyz(State(readiness): State<Arc<dyn Readiness>>) -> impl IntoResponse {
    match readiness.ready().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_http_address_follows_the_flight_port() {
        let listen: SocketAddr = "127.0.0.1:50050".parse().unwrap();
        assert_eq!(
            http_listen_address(None, listen).unwrap(),
            Some("127.0.0.1:51050".parse().unwrap())
        );
        assert_eq!(http_listen_address(Some("none"), listen).unwrap(), None);
        assert_eq!(
            http_listen_address(Some("0.0.0.0:9000"), listen).unwrap(),
            Some("0.0.0.0:9000".parse().unwrap())
        );
        let err = http_listen_address(Some("localhost"), listen).unwrap_err();
        assert!(err.contains("--http-listen"), "{err}");
        let high: SocketAddr = "127.0.0.1:65000".parse().unwrap();
        assert!(http_listen_address(None, high)
            .unwrap_err()
            .contains("--http-listen"));
    }
}
