//! Progress of a running query: the workers' task statuses summed per
//! stage (tasks a worker already forgot count with the final status it
//! returned). Read by `weft sql`'s progress line (`PollFlightInfo`),
//! `system.runtime.stages` and `EXPLAIN ANALYZE`.

use std::collections::HashSet;

use prost::Message;
use weft_common::flight::{actions, ClientPool};
use weft_proto::{QueryRef, QueryStatus, TaskState};

use crate::queries::{Query, QueryState};

/// Progress of one stage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StageProgress {
    pub stage_id: u32,
    pub tasks_total: usize,
    pub tasks_running: usize,
    pub tasks_done: usize,
    pub tasks_failed: usize,
    pub rows_out: u64,
    pub bytes_out: u64,
    /// Task outputs a reader opened, and read to their end.
    pub outputs_opened: u64,
    pub outputs_read: u64,
    /// Operator metrics of the stage's tasks, summed: CPU time, bytes
    /// spilled, rows and bytes read from upstream stages.
    pub compute_nanos: u64,
    pub spilled_bytes: u64,
    pub input_rows: u64,
    pub input_bytes: u64,
}

/// Progress of a query: per stage, and the fraction of tasks done.
#[derive(Debug, Clone, Default)]
pub struct QueryProgress {
    pub state: String,
    pub stages: Vec<StageProgress>,
    /// The first failed task's error, naming the task and its worker.
    pub error: Option<String>,
}

impl QueryProgress {
    pub fn fraction_done(&self) -> f64 {
        let total: usize = self.stages.iter().map(|s| s.tasks_total).sum();
        let done: usize = self.stages.iter().map(|s| s.tasks_done).sum();
        if total == 0 {
            0.0
        } else {
            done as f64 / total as f64
        }
    }
}

impl Query {
    /// Asks the workers for task statuses and sums them per stage (tasks a
    /// worker already forgot count with their final status).
    pub async fn progress(&self, clients: &ClientPool) -> QueryProgress {
        let state = self.state();
        let mut progress = QueryProgress {
            state: state.name().to_string(),
            stages: Vec::new(),
            error: None,
        };
        let Some(run) = self.run_info() else {
            return progress;
        };
        progress.stages = run
            .stages
            .iter()
            .enumerate()
            .map(|(i, tasks)| StageProgress {
                stage_id: i as u32,
                tasks_total: tasks.len(),
                ..Default::default()
            })
            .collect();
        if state == QueryState::Finished {
            for s in &mut progress.stages {
                s.tasks_done = s.tasks_total;
            }
        }
        let calls = run.workers.iter().map(|(_, address)| {
            clients.action(
                address,
                actions::QUERY_STATUS,
                QueryRef {
                    query_id: self.id.clone(),
                    keep_from_attempt: 0,
                },
            )
        });
        let replies = futures::future::join_all(calls).await;
        let mut live = Vec::new();
        for ((worker, address), reply) in run.workers.iter().zip(replies) {
            let Ok(Ok(status)) = reply.map(QueryStatus::decode) else {
                continue;
            };
            live.extend(
                status
                    .tasks
                    .into_iter()
                    .map(|t| (worker.clone(), address.clone(), t)),
            );
        }
        let seen: HashSet<(u32, u32)> = live
            .iter()
            .filter_map(|(_, _, t)| t.task.as_ref().map(|id| (id.stage_id, id.task_index)))
            .collect();
        let ended: Vec<_> = self
            .ended_tasks
            .lock()
            .iter()
            .filter(|(_, _, t)| {
                t.task
                    .as_ref()
                    .is_some_and(|id| !seen.contains(&(id.stage_id, id.task_index)))
            })
            .cloned()
            .collect();
        for (worker, address, t) in live.into_iter().chain(ended) {
            let Some(id) = &t.task else { continue };
            let Some(s) = progress.stages.get_mut(id.stage_id as usize) else {
                continue;
            };
            s.rows_out += t.rows_out;
            s.bytes_out += t.bytes_out;
            s.outputs_opened += u64::from(t.outputs_opened);
            s.outputs_read += u64::from(t.outputs_read);
            s.compute_nanos += t.compute_nanos;
            s.spilled_bytes += t.spilled_bytes;
            s.input_rows += t.input_rows;
            s.input_bytes += t.input_bytes;
            if t.state == TaskState::Failed as i32 && progress.error.is_none() {
                progress.error = Some(format!(
                    "task {}.{} on worker {worker} at {address} failed: {}",
                    id.stage_id, id.task_index, t.error
                ));
            }
            if state == QueryState::Finished {
                continue;
            }
            match TaskState::try_from(t.state) {
                Ok(TaskState::Running) => s.tasks_running += 1,
                Ok(TaskState::Finished) => s.tasks_done += 1,
                Ok(TaskState::Failed) => s.tasks_failed += 1,
                _ => {}
            }
        }
        progress
    }
}
