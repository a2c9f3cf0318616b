//! In-process exchange: a reader whose upstream task runs on the same worker
//! takes that task's output directly instead of through Flight.
//!
//! Over Flight every batch is IPC-encoded, framed into HTTP/2, sent over
//! loopback and decoded again. When producer and consumer are tasks of the
//! same worker (with two workers, half of every shuffle) none of that is
//! needed: the reader pulls the batches from the producer's output buffer,
//! with the same backpressure, the same end-of-output check and the same
//! "read to its end" accounting as a `DoGet`.
//!
//! The worker puts a [`LocalExchange`] into every task's session config
//! (`SessionConfig::with_extension`); [`super::StageReaderExec`] looks it up
//! when it executes and uses it for the upstream tasks it [serves](LocalExchange::serves).

use std::fmt;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use datafusion::common::Result;
use futures::stream::BoxStream;
use weft_proto::{TaskId, TaskLocation};

/// Why a local output could not be opened.
#[derive(Debug)]
pub enum LocalOpenError {
    /// The task is not (yet) registered on this worker: retry like a
    /// `DoGet` answered `NotFound`.
    NotFound(String),
    /// Any other refusal (already consumed, no such output, worker stopped).
    Failed(String),
}

/// The task outputs of one worker, readable in process.
pub trait LocalOutputs: Send + Sync {
    /// Takes output `partition` of `task` like a `DoGet` would: the stream
    /// ends with an error when the producer was stopped before finishing.
    fn open(
        &self,
        task: &TaskId,
        partition: u32,
    ) -> std::result::Result<BoxStream<'static, Result<RecordBatch>>, LocalOpenError>;
}

/// Session-config extension naming the worker a task runs on and giving
/// access to that worker's task outputs.
#[derive(Clone)]
pub struct LocalExchange {
    worker_id: String,
    address: String,
    outputs: Arc<dyn LocalOutputs>,
}

impl fmt::Debug for LocalExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalExchange")
            .field("worker_id", &self.worker_id)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl LocalExchange {
    pub fn new(worker_id: String, address: String, outputs: Arc<dyn LocalOutputs>) -> Self {
        Self {
            worker_id,
            address,
            outputs,
        }
    }

    /// The Flight address of the worker this exchange serves.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Whether `location` is a task of this worker (same id and address).
    pub fn serves(&self, location: &TaskLocation) -> bool {
        location.worker_id == self.worker_id && location.address == self.address
    }

    pub fn open(
        &self,
        task: &TaskId,
        partition: u32,
    ) -> std::result::Result<BoxStream<'static, Result<RecordBatch>>, LocalOpenError> {
        self.outputs.open(task, partition)
    }
}
