//! Placing tasks on workers and launching them.
//!
//! All stages of a query run at once (they are pipelined: a downstream task
//! reads its inputs while they are produced), so a query's tasks are placed
//! together. Within a stage, tasks go round-robin over the workers' slots,
//! rotating the starting worker per stage so stages spread over the cluster;
//! a worker never gets more tasks of one stage than it has slots. Stages are
//! launched upstream first, so a reader never asks for a task that does not
//! exist yet.

use std::collections::HashMap;

use datafusion::common::Result;
use datafusion::execution::config::SessionConfig;
use datafusion_proto::bytes::physical_plan_to_bytes_with_extension_codec;
use prost::Message;
use weft_common::codec::WeftCodec;
use weft_common::flight::{actions, ClientPool};
use weft_common::registry::WorkerInfo;
use weft_common::session::session_options_for_tasks;
use weft_proto::{
    CancelResult, LaunchTask, LaunchTaskResult, OutputMode, QueryRef, TaskId, TaskLocation,
};

use crate::planner::stages::{bind_readers, StageGraph};
use crate::queries::Query;

/// Scheduling errors, each naming the worker involved.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("no workers are registered: start weft-worker processes with the same --etcd as the coordinator")]
    NoWorkers,
    #[error("cannot launch task {task} on worker {worker} at {address}: {message}")]
    Launch {
        task: TaskId,
        worker: String,
        address: String,
        message: String,
    },
    #[error("cannot launch task {task} on worker {worker} at {address}: the worker is draining (shutting down)")]
    Draining {
        task: TaskId,
        worker: String,
        address: String,
    },
    /// The worker could not be reached (dead, frozen, cut off) though it is
    /// still a member (its lease has not expired yet).
    #[error("cannot launch task {task} on worker {worker} at {address}: unreachable: {message}")]
    Unreachable {
        task: TaskId,
        worker: String,
        address: String,
        message: String,
    },
    /// The worker runs as many queries as its `--max-queries` allows.
    #[error("cannot launch task {task} on worker {worker} at {address}: {message}")]
    Busy {
        task: TaskId,
        worker: String,
        address: String,
        message: String,
    },
    #[error("cannot encode the plan of stage {stage}: {message}")]
    Encode { stage: u32, message: String },
}

impl ScheduleError {
    /// The worker a new placement should leave out, for the errors a query
    /// recovers from before any row left: a draining worker's refusal, or a
    /// member that cannot be reached.
    pub fn avoidable_worker(&self) -> Option<&str> {
        match self {
            ScheduleError::Draining { worker, .. } | ScheduleError::Unreachable { worker, .. } => {
                Some(worker)
            }
            _ => None,
        }
    }
}

/// The members new tasks may be placed on: every worker that is not
/// draining.
pub fn schedulable(workers: &[WorkerInfo]) -> Vec<WorkerInfo> {
    workers
        .iter()
        .filter(|w| w.schedulable())
        .cloned()
        .collect()
}

/// Total task slots of the given workers.
pub fn total_slots(workers: &[WorkerInfo]) -> usize {
    workers.iter().map(|w| w.slots.max(1) as usize).sum()
}

/// Worker for every task of every stage.
pub fn place(
    graph: &StageGraph,
    workers: &[WorkerInfo],
) -> Result<Vec<Vec<WorkerInfo>>, ScheduleError> {
    if workers.is_empty() {
        return Err(ScheduleError::NoWorkers);
    }
    // Slots interleaved across workers: w0, w1, w2, w0, w1, w2, ...
    let max_slots = workers.iter().map(|w| w.slots.max(1)).max().unwrap_or(1);
    let mut ring = Vec::new();
    for round in 0..max_slots {
        for w in workers {
            if round < w.slots.max(1) {
                ring.push(w.clone());
            }
        }
    }
    Ok(graph
        .stages
        .iter()
        .map(|s| {
            let offset = s.id as usize % workers.len();
            (0..s.tasks)
                .map(|t| ring[(offset + t) % ring.len()].clone())
                .collect()
        })
        .collect())
}

/// What every task of one attempt of a query is launched with.
#[derive(Debug, Clone, Default)]
pub struct TaskOptions {
    /// The attempt the tasks belong to (0 for the first placement).
    pub attempt: u32,
    /// IPC compression between nodes: "", "lz4" or "zstd".
    pub compression: String,
    /// Task lease the coordinator renews (`--task-lease`); zero: none.
    pub lease: std::time::Duration,
}

/// Launches every task of every stage concurrently. On error the caller
/// cancels the query on all workers.
pub async fn launch_all(
    query_id: &str,
    graph: &StageGraph,
    placement: &[Vec<WorkerInfo>],
    config: &SessionConfig,
    codec: &WeftCodec,
    clients: &ClientPool,
    task_options: &TaskOptions,
) -> Result<Vec<Vec<TaskLocation>>, ScheduleError> {
    let attempt = task_options.attempt;
    let locations: Vec<Vec<TaskLocation>> = placement
        .iter()
        .map(|workers| {
            workers
                .iter()
                .enumerate()
                .map(|(t, w)| TaskLocation {
                    task_index: t as u32,
                    address: w.address.clone(),
                    worker_id: w.id.clone(),
                    attempt,
                })
                .collect()
        })
        .collect();
    let options = session_options_for_tasks(config);
    // Every task of every stage is launched at once (readers wait for an
    // upstream task that is not registered yet), so starting a query costs
    // one round trip, not one per stage.
    let mut launches = Vec::new();
    // Encoding every task's plan (the `plan_encoding` span, inside `launch`).
    let encoding = tracing::info_span!("plan_encoding");
    let entered = encoding.enter();
    for stage in &graph.stages {
        let encode_err = |e: datafusion::error::DataFusionError| ScheduleError::Encode {
            stage: stage.id,
            message: e.to_string(),
        };
        for (t, worker) in placement[stage.id as usize]
            .iter()
            .enumerate()
            .take(stage.tasks)
        {
            let plan = stage.task_plan(t).map_err(encode_err)?;
            let plan =
                bind_readers(plan, &|s| locations[s as usize].clone()).map_err(encode_err)?;
            let bytes =
                physical_plan_to_bytes_with_extension_codec(plan, codec).map_err(encode_err)?;
            let task = TaskId {
                query_id: query_id.to_string(),
                stage_id: stage.id,
                task_index: t as u32,
                attempt,
            };
            let request = LaunchTask {
                task: Some(task.clone()),
                plan: bytes.to_vec(),
                output_mode: if stage.replay {
                    OutputMode::Replay
                } else {
                    OutputMode::Exclusive
                } as i32,
                session_options: options.clone().into_iter().collect(),
                compression: task_options.compression.clone(),
                lease_ms: task_options.lease.as_millis() as u64,
            };
            let expected = stage.task_outputs(t);
            launches.push(async move {
                let result = clients
                    .action(&worker.address, actions::LAUNCH_TASK, request)
                    .await;
                let launch_err = |message: String| ScheduleError::Launch {
                    task: task.clone(),
                    worker: worker.id.clone(),
                    address: worker.address.clone(),
                    message,
                };
                let body = result.map_err(|s| {
                    if weft_common::flight::is_busy_refusal(&s) {
                        ScheduleError::Busy {
                            task: task.clone(),
                            worker: worker.id.clone(),
                            address: worker.address.clone(),
                            message: s.message().to_string(),
                        }
                    } else if weft_common::flight::is_draining_refusal(&s) {
                        ScheduleError::Draining {
                            task: task.clone(),
                            worker: worker.id.clone(),
                            address: worker.address.clone(),
                        }
                    } else if weft_common::flight::is_transport_error(&s)
                        // The coordinator cancels no launch call: a cancelled
                        // one had its connection cut (the worker died).
                        || s.code() == tonic::Code::Cancelled
                        // The worker dropped this attempt with its lost lease.
                        || weft_common::flight::WorkerLost::from_status(&s).is_some()
                    {
                        ScheduleError::Unreachable {
                            task: task.clone(),
                            worker: worker.id.clone(),
                            address: worker.address.clone(),
                            message: s.message().to_string(),
                        }
                    } else {
                        launch_err(s.message().to_string())
                    }
                })?;
                let reply =
                    LaunchTaskResult::decode(body).map_err(|e| launch_err(e.to_string()))?;
                if reply.output_partitions as usize != expected {
                    return Err(launch_err(format!(
                        "task has {} outputs, expected {expected}",
                        reply.output_partitions
                    )));
                }
                Ok(())
            });
        }
    }
    drop(entered);
    // Every launch is answered before returning, so a caller that cancels
    // the query after an error cancels every task that was accepted. A
    // refusal by a draining, busy or unreachable worker is reported only
    // when nothing else failed (the caller recovers from those by placing
    // the query again without that worker, or later).
    let mut avoidable = None;
    for result in futures::future::join_all(launches).await {
        match result {
            Ok(()) => {}
            Err(e) if e.avoidable_worker().is_some() || matches!(e, ScheduleError::Busy { .. }) => {
                avoidable.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    match avoidable {
        Some(e) => Err(e),
        None => Ok(locations),
    }
}

/// Tells every worker to stop (`cancel`) or forget (`release`) a query's
/// tasks, and keeps the final task statuses they return in `query`.
/// Best effort: a worker that cannot be reached has lost the tasks anyway.
/// A cancel fences every attempt of the query on the workers: a launch or
/// read of it that arrives later is refused.
pub async fn notify_workers(
    clients: &ClientPool,
    workers: &[(String, String)],
    query: &Query,
    cancel: bool,
) {
    let action = if cancel {
        actions::CANCEL_QUERY
    } else {
        actions::RELEASE_QUERY
    };
    tell_workers(clients, workers, query, action, 0).await;
}

/// Cancels (and fences) the attempts of `query` before `keep_from` on
/// `workers`; its later attempts may run there.
pub async fn cancel_attempts_before(
    clients: &ClientPool,
    workers: &[(String, String)],
    query: &Query,
    keep_from: u32,
) {
    tell_workers(clients, workers, query, actions::CANCEL_QUERY, keep_from).await;
}

async fn tell_workers(
    clients: &ClientPool,
    workers: &[(String, String)],
    query: &Query,
    action: &'static str,
    keep_from_attempt: u32,
) {
    let query_id = query.id.as_str();
    let calls = workers.iter().map(|(id, address)| async move {
        let body = QueryRef {
            query_id: query_id.to_string(),
            keep_from_attempt,
        };
        match clients.action(address, action, body).await {
            Ok(reply) => match CancelResult::decode(reply) {
                Ok(result) => query.record_ended_tasks(id, address, result.tasks),
                Err(e) => tracing::debug!(worker = %id, query_id, "{action}: bad reply: {e}"),
            },
            Err(e) => {
                tracing::debug!(worker = %id, query_id, "{action} failed: {}", e.message())
            }
        }
    });
    futures::future::join_all(calls).await;
}

/// Distinct `(worker id, address)` pairs used by a placement.
pub fn workers_of(placement: &[Vec<WorkerInfo>]) -> Vec<(String, String)> {
    let mut map = HashMap::new();
    for w in placement.iter().flatten() {
        map.insert(w.id.clone(), w.address.clone());
    }
    let mut v: Vec<_> = map.into_iter().collect();
    v.sort();
    v
}
