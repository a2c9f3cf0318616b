//! A bound on the connections one process holds to one database catalog
//! (`max_connections`, idle ones included), shared by the PostgreSQL and
//! MySQL sources.
//!
//! Every open connection holds a permit. A reader that needs a connection
//! takes an idle one, or a permit for a new one, or waits until a
//! connection is returned or closed, for at most `pool_timeout`. Waiting
//! can deadlock when a consumer needs all of a query's splits at once (a
//! sort-preserving merge over more splits than connections), so the wait is
//! bounded and ends in an error that says what to change, never a hang.

use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::error::SourceError;

/// Connection permits of one catalog in this process.
#[derive(Debug)]
pub struct ConnectionSlots {
    catalog: String,
    host: String,
    max: usize,
    timeout: Duration,
    permits: std::sync::Arc<Semaphore>,
    freed: Notify,
}

/// What [`ConnectionSlots::acquire`] found: an idle connection, or room
/// for a new one.
#[derive(Debug)]
pub enum Slot<T> {
    Idle(T),
    New(OwnedSemaphorePermit),
}

impl ConnectionSlots {
    pub fn new(catalog: &str, host: &str, max: usize, timeout: Duration) -> Self {
        Self {
            catalog: catalog.to_string(),
            host: host.to_string(),
            max: max.max(1),
            timeout,
            permits: std::sync::Arc::new(Semaphore::new(max.max(1))),
            freed: Notify::new(),
        }
    }

    /// Connections open now (in use or idle).
    pub fn open(&self) -> usize {
        self.max - self.permits.available_permits()
    }

    /// A connection was returned to the idle list or closed: wake waiters.
    pub fn freed(&self) {
        self.freed.notify_waiters();
    }

    /// An idle connection (`take_idle`), or a permit for a new one, waiting
    /// up to the pool timeout for either.
    pub async fn acquire<T>(
        &self,
        mut take_idle: impl FnMut() -> Option<T>,
    ) -> Result<Slot<T>, SourceError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before looking, so a connection freed meanwhile wakes us.
            freed.as_mut().enable();
            if let Some(idle) = take_idle() {
                return Ok(Slot::Idle(idle));
            }
            if let Ok(permit) = std::sync::Arc::clone(&self.permits).try_acquire_owned() {
                return Ok(Slot::New(permit));
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(SourceError::PoolExhausted {
                    catalog: self.catalog.clone(),
                    host: self.host.clone(),
                    max: self.max,
                    secs: self.timeout.as_secs_f64(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_a_freed_connection_then_times_out_clearly() {
        let slots = std::sync::Arc::new(ConnectionSlots::new(
            "db",
            "h:5432",
            2,
            Duration::from_millis(300),
        ));
        let a = match slots.acquire(|| None::<()>).await.unwrap() {
            Slot::New(p) => p,
            Slot::Idle(_) => unreachable!(),
        };
        let _b = slots.acquire(|| None::<()>).await.unwrap();
        assert_eq!(slots.open(), 2);
        // A third waits until one closes.
        let waiter = {
            let slots = std::sync::Arc::clone(&slots);
            tokio::spawn(async move { slots.acquire(|| None::<()>).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        drop(a);
        slots.freed();
        let _c = waiter.await.unwrap().unwrap();
        // Nothing freed: a clear error after the timeout, not a hang.
        let err = slots.acquire(|| None::<()>).await.unwrap_err().to_string();
        assert!(
            err.contains("max_connections") && err.contains("2") && err.contains("\"db\""),
            "{err}"
        );
        // An idle connection is taken even when every permit is held.
        assert!(matches!(
            slots.acquire(|| Some(7)).await.unwrap(),
            Slot::Idle(7)
        ));
    }
}
