//! Exchange operators: how a stage reads what another stage produced.

mod local;
mod partition_subset;
mod stage_reader;

pub use local::{LocalExchange, LocalOpenError, LocalOutputs};
pub use partition_subset::PartitionSubsetExec;
pub use stage_reader::{ReaderMode, StageReaderExec, BYTES_RECEIVED};
