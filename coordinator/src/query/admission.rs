//! Admission: with `--max-running-queries N`, at most N queries plan and
//! run at once. More wait in state `queued`, first come first served (a FIFO
//! semaphore), for at most `--queue-timeout`, and beyond
//! `--max-queued-queries` waiting ones a query is refused at once. A queued
//! query that is cancelled stops waiting at once (its cancellation token).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tonic::Status;

use crate::engine::EngineSettings;
use crate::queries::Query;

/// The coordinator's admission control.
#[derive(Debug)]
pub struct Admission {
    /// One permit per query allowed to plan and run; `None` = no limit.
    semaphore: Option<Arc<Semaphore>>,
    queued: AtomicUsize,
    limit: usize,
    max_queued: usize,
    timeout: Duration,
}

impl Admission {
    pub fn new(settings: &EngineSettings) -> Self {
        Self {
            semaphore: settings
                .max_running_queries
                .map(|n| Arc::new(Semaphore::new(n.max(1)))),
            queued: AtomicUsize::new(0),
            limit: settings.max_running_queries.unwrap_or(0),
            max_queued: settings.max_queued_queries,
            timeout: settings.queue_timeout,
        }
    }

    /// Waits (state `queued`) until fewer than `--max-running-queries` run;
    /// the permit lives as long as the query (released when it ends).
    pub async fn admit(&self, query: &Query) -> Result<(), Status> {
        let Some(semaphore) = &self.semaphore else {
            return Ok(());
        };
        let limit = self.limit;
        if let Ok(permit) = Arc::clone(semaphore).try_acquire_owned() {
            query.hold(vec![Arc::new(permit)]);
            return Ok(());
        }
        let waiting = self.queued.fetch_add(1, Ordering::SeqCst);
        let _queued = Leave(&self.queued);
        if waiting >= self.max_queued {
            return Err(Status::resource_exhausted(format!(
                "query {} refused: {limit} queries are running (--max-running-queries) and {waiting} are queued (--max-queued-queries {}); retry later",
                query.id, self.max_queued
            )));
        }
        tracing::info!(query_id = %query.id, waiting, "query queued: {limit} queries are running");
        tokio::select! {
            permit = Arc::clone(semaphore).acquire_owned() => {
                let permit = permit.map_err(|_| Status::unavailable("the coordinator is shutting down"))?;
                query.hold(vec![Arc::new(permit)]);
                Ok(())
            }
            _ = query.token.cancelled() => Err(Status::cancelled(format!(
                "query {} was cancelled while queued", query.id
            ))),
            _ = tokio::time::sleep(self.timeout) => Err(Status::resource_exhausted(format!(
                "query {} waited {}s in the queue: {limit} queries are running (--max-running-queries {limit}); retry later, raise the limit or --queue-timeout",
                query.id, self.timeout.as_secs()
            ))),
        }
    }
}

/// Counts a waiting query out of the queue when it stops waiting, however.
struct Leave<'a>(&'a AtomicUsize);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
