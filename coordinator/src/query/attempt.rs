//! Attempts: a query's tasks placed, launched and read, and placed again on
//! the live workers when infrastructure fails under them.
//!
//! ```text
//!   launch(attempt n) ──► pull every endpoint ──► all ended ──► done
//!        ▲                     │ worker lost / unreachable / Unavailable
//!        │                     ▼
//!        └── n+1 ◄── fence not committed, retries left: cancel and fence
//!                    attempt n on the reachable workers, leave out the
//!                    lost ones, back off
//!                      otherwise: the query fails (retryable error)
//! ```
//!
//! An attempt's tasks and tickets carry its number, and a cancel fences the
//! attempts before the new one on every reachable worker, so nothing of a
//! lost attempt mixes with the next. SQL, planning, authorization and data
//! errors are never retried. What the client may see is decided by the
//! output fence ([`super::results`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_flight::Ticket;
use datafusion::prelude::SessionConfig;
use futures::StreamExt;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tonic::Status;
use tracing::Instrument;
use weft_common::codec::WeftCodec;
use weft_common::flight::{is_transport_error, ClientPool, WorkerLost};
use weft_common::registry::{Members, WorkerInfo};
use weft_proto::{PartitionTicket, TaskId, TaskLocation};

use super::results::{Event, Results};
use crate::engine::EngineSettings;
use crate::planner::stages::StageGraph;
use crate::queries::{Query, RunInfo};
use crate::scheduler::{self, ScheduleError};

/// How many draining or unreachable workers one launch steps around before
/// it fails (each re-places every task without that worker).
const MAX_REPLACEMENTS: usize = 3;

/// How long a worker may take to answer the probe after a failure before
/// it counts as lost for the next attempt.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// `outcome` label values of `weft_coordinator_query_retries_total`.
pub const RETRY_OUTCOMES: [&str; 2] = ["retried", "failed"];

/// First pause before a retry; doubled for each later one.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// The pause before launching again after the `n`th refusal by a busy
/// worker (`--max-queries`): 50 ms doubling to 1 s, with a random half of
/// it added, so queries of several coordinators that collided do not
/// collide again in step.
fn busy_pause(n: u32) -> Duration {
    let base = Duration::from_millis(50)
        .saturating_mul(1 << n.saturating_sub(1).min(5))
        .min(Duration::from_secs(1));
    let jitter = (uuid::Uuid::new_v4().as_u128() % 1000) as u32;
    base + base / 2 * jitter / 1000
}

/// One launched attempt.
#[derive(Debug)]
pub struct Launched {
    pub attempt: u32,
    pub placement: Vec<Vec<WorkerInfo>>,
    pub workers: Vec<(String, String)>,
    pub locations: Vec<Vec<TaskLocation>>,
}

impl Launched {
    /// Result endpoints: (final task, output partition) per final partition.
    pub fn endpoints(&self, graph: &StageGraph) -> Vec<(TaskLocation, u32)> {
        let final_stage = graph.final_stage();
        let final_locations = &self.locations[final_stage.id as usize];
        (0..final_stage.split_partitions)
            .map(|p| {
                let task = p % final_stage.tasks;
                let output = p / final_stage.tasks;
                (final_locations[task].clone(), output as u32)
            })
            .collect()
    }
}

/// Everything a query needs to launch attempts, owned, so the supervisor
/// can outlive the GetFlightInfo that started the query.
#[derive(Clone)]
pub struct Attempts {
    pub clients: Arc<ClientPool>,
    pub codec: WeftCodec,
    pub members: watch::Receiver<Members>,
    pub settings: EngineSettings,
    pub query: Arc<Query>,
    pub graph: Arc<StageGraph>,
    pub config: SessionConfig,
}

impl std::fmt::Debug for Attempts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attempts")
            .field("query", &self.query.id)
            .field("stages", &self.graph.stages.len())
            .finish_non_exhaustive()
    }
}

impl Attempts {
    fn cancelled(&self, what: &str) -> Status {
        Status::cancelled(format!("query {} was cancelled {what}", self.query.id))
    }

    /// Places and launches attempt `attempt` (or a later one: a draining or
    /// unreachable worker found at launch is left out and the tasks placed
    /// again, each time as a new attempt) on schedulable workers not in
    /// `excluded`, which grows by the workers stepped around.
    pub async fn launch(
        &self,
        mut attempt: u32,
        excluded: &mut Vec<String>,
    ) -> Result<Launched, Status> {
        let query = &self.query;
        let graph = self.graph.as_ref();
        let mut replaced = 0;
        let mut busy_since: Option<Instant> = None;
        let mut busy_refusals = 0u32;
        loop {
            let candidates: Vec<WorkerInfo> = scheduler::schedulable(&self.members.borrow())
                .into_iter()
                .filter(|w| !excluded.contains(&w.id))
                .collect();
            let placement = scheduler::place(graph, &candidates)?;
            let workers = scheduler::workers_of(&placement);
            // Recorded before launching so a failed launch, or a cancel
            // during it, reaches every worker; leases are renewed from here.
            let schema = graph.final_stage().root.schema();
            *query.run_slot() = Some(Arc::new(RunInfo {
                schema,
                stages: Vec::new(),
                endpoints: Vec::new(),
                workers: workers.clone(),
                direct: false,
            }));
            let launched = scheduler::launch_all(
                &query.id,
                graph,
                &placement,
                &self.config,
                &self.codec,
                &self.clients,
                &scheduler::TaskOptions {
                    attempt,
                    compression: self.settings.compression.clone(),
                    lease: self.settings.task_lease,
                },
            )
            .instrument(tracing::info_span!(
                "launch",
                attempt,
                stages = graph.stages.len(),
                tasks = graph.stages.iter().map(|s| s.tasks).sum::<usize>()
            ))
            .await;
            match launched {
                Ok(locations) => {
                    // A cancel during the launch has cancelled and fenced
                    // the query on these workers already.
                    if query.state().is_terminal() {
                        return Err(self.cancelled("while it was being launched"));
                    }
                    return Ok(Launched {
                        attempt,
                        placement,
                        workers,
                        locations,
                    });
                }
                Err(e) if e.avoidable_worker().is_some() && replaced < MAX_REPLACEMENTS => {
                    let worker = e.avoidable_worker().unwrap_or_default().to_string();
                    tracing::info!(
                        query_id = %query.id,
                        %worker,
                        "{e}; placing the query's tasks again without it"
                    );
                    // Fences this attempt only: the next one runs on the
                    // others. An unreachable worker is not waited for.
                    let reachable: Vec<(String, String)> = workers
                        .iter()
                        .filter(|(id, _)| {
                            *id != worker || matches!(e, ScheduleError::Draining { .. })
                        })
                        .cloned()
                        .collect();
                    scheduler::cancel_attempts_before(
                        &self.clients,
                        &reachable,
                        query,
                        attempt + 1,
                    )
                    .await;
                    query.forget_ended_tasks();
                    excluded.push(worker);
                    replaced += 1;
                    attempt += 1;
                }
                Err(e @ ScheduleError::Busy { .. }) => {
                    // Every worker is still fine: this attempt is withdrawn
                    // everywhere and the query launched again, on the
                    // members of then, once a query may have ended.
                    let waited = busy_since.get_or_insert_with(Instant::now).elapsed();
                    if waited >= self.settings.queue_timeout {
                        scheduler::notify_workers(&self.clients, &workers, query, true).await;
                        return Err(Status::resource_exhausted(format!(
                            "{e}; still refused after {waited:.0?} (--queue-timeout): the workers' --max-queries is reached by other queries, on this coordinator or others"
                        )));
                    }
                    tracing::info!(query_id = %query.id, "{e}; launching the query again shortly");
                    scheduler::cancel_attempts_before(&self.clients, &workers, query, attempt + 1)
                        .await;
                    query.forget_ended_tasks();
                    attempt += 1;
                    busy_refusals += 1;
                    let pause = busy_pause(busy_refusals);
                    tokio::select! {
                        _ = query.token.cancelled() => {}
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
                Err(e) => return Err(e.into()),
            }
            if query.state().is_terminal() {
                return Err(self.cancelled("while it was being launched"));
            }
        }
    }

    /// Runs the query's attempts to the end: pulls every endpoint of the
    /// current attempt into `results`, commits the fence when its hold time
    /// is up, and on an infrastructure failure runs a new attempt while no
    /// row has left (up to `--query-retries`); otherwise fails the query.
    pub async fn supervise(
        self,
        mut launched: Launched,
        results: Arc<Results>,
        mut events: mpsc::UnboundedReceiver<Event>,
        mut excluded: Vec<String>,
    ) {
        let query = Arc::clone(&self.query);
        let token = query.token.clone();
        let mut retries = 0u32;
        loop {
            let endpoints = launched.endpoints(&self.graph);
            let mut pullers = JoinSet::new();
            for (index, (location, output)) in endpoints.iter().cloned().enumerate() {
                pullers.spawn(
                    pull(
                        Arc::clone(&self.clients),
                        Arc::clone(&results),
                        query.id.clone(),
                        (self.graph.stages.len() - 1) as u32,
                        launched.attempt,
                        index,
                        location,
                        output,
                    )
                    .instrument(query.span()),
                );
            }
            let mut ended = 0;
            let failure = loop {
                let hold = results.hold_deadline();
                tokio::select! {
                    _ = token.cancelled() => {
                        results.fail(Status::cancelled(format!("query {} was cancelled", query.id)));
                        return;
                    }
                    _ = sleep_until(hold), if hold.is_some() => results.commit(),
                    event = events.recv() => match event {
                        None => return,
                        Some(Event::Ended { attempt, .. }) if attempt == launched.attempt => {
                            ended += 1;
                            if ended == endpoints.len() {
                                return;
                            }
                        }
                        // (A loss reported for a worker this attempt does
                        // not use, e.g. from the membership watch racing a
                        // new launch, is not this attempt's.)
                        Some(Event::Failed { attempt, status, suspect })
                            if attempt == launched.attempt
                                && suspect.as_ref().is_none_or(|s| {
                                    launched.workers.iter().any(|(id, _)| id == s)
                                }) =>
                        {
                            break (status, suspect);
                        }
                        Some(_) => {}
                    },
                }
            };
            pullers.abort_all();
            let (status, suspect) = failure;
            if query.state().is_terminal() {
                results.fail(Status::cancelled(format!(
                    "query {} was cancelled",
                    query.id
                )));
                return;
            }
            let retryable = is_infrastructure(&status);
            let next = launched.attempt + 1;
            // Taking the attempt's results back and refusing its late frames
            // is one step, so rows cannot slip out between the check and it.
            let restarted =
                retryable && retries < self.settings.query_retries && results.restart(next);
            if !restarted {
                let committed = results.is_committed();
                let status = if retryable {
                    metrics::counter!(weft_common::telemetry::catalog::QUERY_RETRIES.name, "outcome" => "failed").increment(1);
                    let why = if self.settings.query_retries == 0 {
                        "and is not retried (--query-retries 0)".to_string()
                    } else if committed {
                        "after its first results had been sent".to_string()
                    } else {
                        format!(
                            "and --query-retries ({}) are used up",
                            self.settings.query_retries
                        )
                    };
                    Status::unavailable(format!(
                        "weft: query {} failed {why}: {}; the failure is transient: run the query again",
                        query.id,
                        status.message()
                    ))
                } else {
                    status
                };
                self.fail(&results, status).await;
                return;
            }
            retries += 1;
            metrics::counter!(weft_common::telemetry::catalog::QUERY_RETRIES.name, "outcome" => "retried").increment(1);
            let lost = self.lost_workers(&launched.workers, suspect).await;
            let named: Vec<String> = lost
                .iter()
                .map(|id| match launched.workers.iter().find(|(w, _)| w == id) {
                    Some((_, address)) => format!("{id} at {address}"),
                    None => id.clone(),
                })
                .collect();
            tracing::warn!(
                query_id = %query.id,
                attempt = launched.attempt,
                lost = ?named,
                "attempt failed before any result left ({}); running the query again without the lost workers",
                status.message()
            );
            let reachable: Vec<(String, String)> = launched
                .workers
                .iter()
                .filter(|(id, _)| !lost.contains(id))
                .cloned()
                .collect();
            scheduler::cancel_attempts_before(&self.clients, &reachable, &query, next).await;
            query.forget_ended_tasks();
            excluded.extend(lost);
            // Drops events of the failed attempt still queued.
            while events.try_recv().is_ok() {}
            tokio::select! {
                _ = token.cancelled() => {
                    results.fail(Status::cancelled(format!("query {} was cancelled", query.id)));
                    return;
                }
                _ = tokio::time::sleep(FIRST_BACKOFF * 2u32.pow(retries - 1)) => {}
            }
            launched = match self.launch(next, &mut excluded).await {
                Ok(l) => l,
                Err(status) => {
                    self.fail(&results, status).await;
                    return;
                }
            };
            // The launch may have stepped around more workers, each time as
            // a later attempt: take that one's frames (none came yet).
            results.restart(launched.attempt);
            let endpoints = launched.endpoints(&self.graph);
            *query.run_slot() = Some(Arc::new(RunInfo {
                schema: self.graph.final_stage().root.schema(),
                stages: launched.locations.clone(),
                endpoints,
                workers: launched.workers.clone(),
                direct: false,
            }));
            tracing::info!(query_id = %query.id, attempt = launched.attempt, "query running again");
        }
    }

    async fn fail(&self, results: &Results, status: Status) {
        self.query.fail(&status);
        results.fail(status);
        if let Some(run) = self.query.run_info() {
            scheduler::notify_workers(&self.clients, &run.workers, &self.query, true).await;
        }
    }

    /// The workers of a failed attempt the next one leaves out: the one the
    /// failure names, and every one that does not answer a status call in
    /// time (killed, frozen, cut off) or has left the membership.
    async fn lost_workers(
        &self,
        workers: &[(String, String)],
        suspect: Option<String>,
    ) -> Vec<String> {
        let members = Arc::clone(&self.members.borrow());
        let members = &members;
        let probes = workers.iter().map(|(id, address)| async move {
            let probe = self.clients.action(
                address,
                weft_common::flight::actions::QUERY_STATUS,
                weft_proto::QueryRef {
                    query_id: self.query.id.clone(),
                    keep_from_attempt: 0,
                },
            );
            let member = members.iter().any(|m| &m.id == id);
            let answered = matches!(tokio::time::timeout(PROBE_TIMEOUT, probe).await, Ok(Ok(_)));
            (!(member && answered)).then(|| id.clone())
        });
        let mut lost: Vec<String> = futures::future::join_all(probes)
            .await
            .into_iter()
            .flatten()
            .collect();
        if let Some(s) = suspect {
            if !lost.contains(&s) {
                lost.push(s);
            }
        }
        lost
    }
}

async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}

/// Failures a new attempt may cure: a worker lost, unreachable or
/// stopping. SQL, planning, access and data errors are not.
pub fn is_infrastructure(status: &Status) -> bool {
    status.code() == tonic::Code::Unavailable || is_transport_error(status)
}

/// Reads one result endpoint of `attempt` into `results`, reporting its end
/// or its failure to the supervisor.
#[allow(clippy::too_many_arguments)]
async fn pull(
    clients: Arc<ClientPool>,
    results: Arc<Results>,
    query_id: String,
    stage_id: u32,
    attempt: u32,
    endpoint: usize,
    location: TaskLocation,
    output: u32,
) {
    let failed = |status: Status| {
        // The worker named by the status (an upstream loss), else the one
        // serving this endpoint when the connection itself failed.
        let (status, suspect) = if let Some(lost) = WorkerLost::from_status(&status) {
            (status, Some(lost.worker_id))
        } else if is_transport_error(&status) {
            (
                Status::unavailable(format!(
                    "worker {} at {} failed while streaming results: {}",
                    location.worker_id,
                    location.address,
                    status.message()
                )),
                Some(location.worker_id.clone()),
            )
        } else if status.code() == tonic::Code::Unavailable {
            (status, Some(location.worker_id.clone()))
        } else {
            (status, None)
        };
        Event::Failed {
            attempt,
            status,
            suspect,
        }
    };
    let ticket = PartitionTicket {
        task: Some(TaskId {
            query_id,
            stage_id,
            task_index: location.task_index,
            attempt: location.attempt,
        }),
        partition: output,
        grant: None,
    };
    let span = tracing::info_span!("pull_results", endpoint, attempt, worker = %location.worker_id);
    let mut client = match clients.client(&location.address) {
        Ok(c) => c,
        Err(e) => {
            results.report(failed(Status::unavailable(e.to_string())));
            return;
        }
    };
    let request = span
        .in_scope(|| weft_common::telemetry::traces::request(Ticket::new(ticket.encode_to_vec())));
    let mut stream = match client.do_get(request).await {
        Ok(r) => r.into_inner(),
        Err(status) => {
            results.report(failed(status));
            return;
        }
    };
    loop {
        if !results.room(attempt, endpoint).await {
            return;
        }
        match stream.next().instrument(span.clone()).await {
            Some(Ok(frame)) => {
                if !results.push(attempt, endpoint, frame) {
                    return;
                }
            }
            Some(Err(status)) => {
                results.report(failed(status));
                return;
            }
            None => {
                results.end(attempt, endpoint);
                return;
            }
        }
    }
}
