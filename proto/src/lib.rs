//! Protobuf messages of Weft's internal services.
//!
//! The coordinator launches, inspects and cancels tasks on workers with Arrow
//! Flight `DoAction` calls whose bodies are these messages; tasks' outputs are
//! read with Flight `DoGet` using a [`PartitionTicket`]. The schema lives in
//! `proto/weft.proto`.
//!
//! ```
//! use prost::Message;
//! use weft_proto::{PartitionTicket, TaskId};
//! let t = PartitionTicket { task: Some(TaskId { query_id: "q".into(), stage_id: 1, task_index: 0, attempt: 0 }), partition: 3, grant: None };
//! let back = PartitionTicket::decode(t.encode_to_vec().as_slice()).unwrap();
//! assert_eq!(back.partition, 3);
//! ```
#![allow(missing_debug_implementations, unreachable_pub)]

include!(concat!(env!("OUT_DIR"), "/weft.rs"));

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/", self.query_id)?;
        if self.attempt > 0 {
            write!(f, "attempt-{}/", self.attempt)?;
        }
        write!(f, "stage-{}/task-{}", self.stage_id, self.task_index)
    }
}
