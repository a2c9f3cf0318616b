//! Worker membership: who is alive and where to reach them.
//!
//! Workers [`Registry::register`] themselves; the coordinator reads the live set
//! from [`Registry::members`], a `watch` channel that always holds the latest
//! membership. Two implementations:
//! - [`EtcdRegistry`]: a key per worker under `/weft/workers/`, attached to a
//!   lease that the worker keeps alive (layout in `docs/membership.md`);
//! - [`MemoryRegistry`]: in-process, for `weft local` and fast tests.

mod args;
mod etcd;
mod memory;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use args::{EtcdArgs, ETCD_PASSWORD_ENV};
pub use etcd::{EtcdAuth, EtcdRegistry, EtcdSettings, EtcdTls, WORKERS_PREFIX};
pub use memory::MemoryRegistry;

/// What a worker announces about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// Unique id (a uuid unless configured).
    pub id: String,
    /// Flight address other nodes connect to, e.g. `http://10.0.0.3:50051`.
    pub address: String,
    /// How many tasks of one stage the worker runs at once.
    pub slots: u32,
    /// Weft version of the worker.
    pub version: String,
    /// The worker is stopping (SIGTERM): it stays a member while it finishes
    /// its tasks and serves their outputs, but no new task is placed on it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
    /// How many times this worker lost its etcd lease while alive (a
    /// partition, a pause) and registered again. Tasks launched before a
    /// change are dropped by the worker, and coordinators treat a change
    /// as the loss of the earlier epoch.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub epoch: u64,
    /// Bytes of the worker's query memory pool (`--memory-limit`); `None`
    /// = unbounded. Coordinators keep broadcast joins within it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<u64>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl WorkerInfo {
    /// Whether new tasks may be placed on this worker.
    pub fn schedulable(&self) -> bool {
        !self.draining
    }
}

/// The live membership, sorted by worker id.
pub type Members = Arc<Vec<WorkerInfo>>;

/// Infrastructure errors of the registry. Each names the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot reach etcd at {endpoints}: {message}; is etcd running and is --etcd / WEFT_ETCD right?")]
    Unreachable { endpoints: String, message: String },
    #[error("etcd at {endpoints}: {operation} failed: {message}")]
    Operation {
        endpoints: String,
        operation: &'static str,
        message: String,
    },
    #[error("worker {id} is already registered")]
    Duplicate { id: String },
}

/// A live registration; it ends when revoked or when the process dies.
#[async_trait::async_trait]
pub trait Registration: Send + Sync + std::fmt::Debug {
    /// Removes the worker from the membership at once (the end of a
    /// graceful shutdown).
    async fn revoke(&self) -> Result<(), RegistryError>;

    /// Announces that the worker is draining ([`WorkerInfo::draining`]): it
    /// stays a member, so readers of its outputs and the coordinators
    /// following its queries keep it, but schedulers place nothing new on it.
    async fn set_draining(&self) -> Result<(), RegistryError>;

    /// `Err(reason)` while the registration is not kept alive (etcd
    /// unreachable, lease lost and not yet re-registered).
    fn health(&self) -> Result<(), String> {
        Ok(())
    }

    /// The worker's epoch ([`WorkerInfo::epoch`]); it changes when the
    /// registration was lost while the worker lived and was made again.
    /// A backend that cannot lose a live registration never changes it
    /// (the channel's sender is gone).
    fn epochs(&self) -> watch::Receiver<u64> {
        watch::channel(0).1
    }
}

/// Membership registry.
#[async_trait::async_trait]
pub trait Registry: Send + Sync + std::fmt::Debug {
    /// Announces a worker. It stays a member while the returned handle lives
    /// and the process keeps its lease alive.
    async fn register(&self, info: WorkerInfo) -> Result<Box<dyn Registration>, RegistryError>;

    /// Latest membership; changes are pushed to the receiver.
    fn members(&self) -> watch::Receiver<Members>;

    /// The membership as the backend holds it now, read once (a registry
    /// that does not follow the membership, as a worker's, reads it here).
    async fn current(&self) -> Result<Members, RegistryError> {
        Ok(Arc::clone(&self.members().borrow()))
    }

    /// `Err(reason)` when the registry's backend does not answer now.
    async fn health(&self) -> Result<(), String> {
        Ok(())
    }
}

pub(crate) fn sorted(mut workers: Vec<WorkerInfo>) -> Members {
    workers.sort_by(|a, b| a.id.cmp(&b.id));
    Arc::new(workers)
}
