//! The output fence: a query's results, held on the coordinator until they
//! can no longer be taken back.
//!
//! The coordinator reads every result endpoint of the current attempt as
//! soon as it runs (one puller per endpoint, [`super::attempt`]) into the
//! endpoint's queue here. Until the fence *commits*, nothing reaches a
//! client, so a failed attempt can be thrown away and the query run again
//! without anyone seeing a row twice. The fence commits at the first of:
//!
//! - the attempt ended (every endpoint read to its end): the answer is
//!   complete and cannot change any more;
//! - the held bytes reached `--retry-buffer`;
//! - rows have been held for `--retry-hold`.
//!
//! From then on frames stream to the clients as they arrive (each
//! endpoint's queue is bounded, so a slow reader slows the workers down
//! rather than filling the coordinator's memory), and a lost worker fails
//! the query. Frames are forwarded exactly as the worker sent them.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use arrow_flight::FlightData;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tonic::Status;

/// `--retry-buffer` and `--retry-hold`; `enabled` false streams at once
/// (`--query-retries 0`, or `--retry-buffer 0`).
#[derive(Debug, Clone, Copy)]
pub struct Fence {
    pub enabled: bool,
    pub buffer: usize,
    pub hold: Duration,
}

/// A committed endpoint's queue holds at most this much before its puller
/// waits for the client.
const QUEUE_BYTES: usize = 4 << 20;
const QUEUE_FRAMES: usize = 16;

/// What a puller or the membership watch tells the attempt's supervisor.
#[derive(Debug)]
pub enum Event {
    /// `endpoint` of `attempt` was read to its end.
    Ended { attempt: u32, endpoint: usize },
    /// `attempt` failed: `status`, and the worker to blame if known.
    Failed {
        attempt: u32,
        status: Status,
        suspect: Option<String>,
    },
}

#[derive(Debug, Default)]
struct Endpoint {
    frames: VecDeque<FlightData>,
    bytes: usize,
    /// The current attempt's stream for this endpoint ended.
    ended: bool,
    /// A client reads this endpoint.
    taken: bool,
}

#[derive(Debug)]
struct State {
    attempt: u32,
    committed: bool,
    held_bytes: usize,
    /// When the current attempt's first rows were held.
    first_rows: Option<Instant>,
    endpoints: Vec<Endpoint>,
    /// The query failed or was cancelled: every reader gets this.
    error: Option<Status>,
}

/// One query's results (see the module docs).
#[derive(Debug)]
pub struct Results {
    fence: Fence,
    state: Mutex<State>,
    version: watch::Sender<u64>,
    events: mpsc::UnboundedSender<Event>,
}

impl Results {
    /// Results of `endpoints` endpoints, starting with `attempt`; the
    /// receiver is the supervisor's.
    pub fn new(
        endpoints: usize,
        attempt: u32,
        fence: Fence,
    ) -> (Self, mpsc::UnboundedReceiver<Event>) {
        let (events, rx) = mpsc::unbounded_channel();
        let results = Self {
            fence,
            state: Mutex::new(State {
                attempt,
                committed: !fence.enabled,
                held_bytes: 0,
                first_rows: None,
                endpoints: (0..endpoints).map(|_| Endpoint::default()).collect(),
                error: None,
            }),
            version: watch::channel(0).0,
            events,
        };
        (results, rx)
    }

    fn changed(&self) {
        self.version.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Tells the supervisor (ignored once it stopped).
    pub fn report(&self, event: Event) {
        let _ = self.events.send(event);
    }

    pub fn attempt(&self) -> u32 {
        self.state.lock().attempt
    }

    pub fn is_committed(&self) -> bool {
        self.state.lock().committed
    }

    /// Throws away what earlier attempts left and takes frames of `attempt`
    /// from now on, unless the fence has committed (then nothing changes and
    /// it returns false: rows may have left).
    pub fn restart(&self, attempt: u32) -> bool {
        let mut state = self.state.lock();
        if state.committed {
            return false;
        }
        state.attempt = attempt;
        state.held_bytes = 0;
        state.first_rows = None;
        for e in &mut state.endpoints {
            e.frames.clear();
            e.bytes = 0;
            e.ended = false;
        }
        drop(state);
        self.changed();
        true
    }

    /// Lets every held frame go to the clients, and every later one.
    pub fn commit(&self) {
        let mut state = self.state.lock();
        if !state.committed {
            state.committed = true;
            tracing::debug!(
                held_bytes = state.held_bytes,
                "results committed: from now on they stream"
            );
        }
        drop(state);
        self.changed();
    }

    /// When the held rows must be let go (`None`: committed, or no rows yet).
    pub fn hold_deadline(&self) -> Option<Instant> {
        let state = self.state.lock();
        if state.committed {
            return None;
        }
        state.first_rows.map(|t| t + self.fence.hold)
    }

    /// Ends every reader with `status`.
    pub fn fail(&self, status: Status) {
        self.state.lock().error.get_or_insert(status);
        self.changed();
    }

    /// Adds a frame of `attempt` to `endpoint`; false when the attempt is
    /// no longer current (the puller stops).
    pub fn push(&self, attempt: u32, endpoint: usize, frame: FlightData) -> bool {
        let size = frame.data_header.len() + frame.data_body.len();
        let rows = !frame.data_body.is_empty();
        let mut state = self.state.lock();
        if state.attempt != attempt || state.error.is_some() {
            return false;
        }
        state.held_bytes += size;
        if rows && state.first_rows.is_none() {
            state.first_rows = Some(Instant::now());
        }
        let e = &mut state.endpoints[endpoint];
        e.frames.push_back(frame);
        e.bytes += size;
        if !state.committed && state.held_bytes >= self.fence.buffer {
            state.committed = true;
            tracing::debug!(
                held_bytes = state.held_bytes,
                "results committed at --retry-buffer"
            );
        }
        drop(state);
        self.changed();
        true
    }

    /// Waits until `endpoint`'s queue has room (always, before the fence
    /// commits: the held total is bounded by `--retry-buffer` instead);
    /// false when `attempt` is no longer current.
    pub async fn room(&self, attempt: u32, endpoint: usize) -> bool {
        let mut rx = self.version.subscribe();
        loop {
            rx.borrow_and_update();
            {
                let state = self.state.lock();
                if state.attempt != attempt || state.error.is_some() {
                    return false;
                }
                let e = &state.endpoints[endpoint];
                if !state.committed || (e.bytes < QUEUE_BYTES && e.frames.len() < QUEUE_FRAMES) {
                    return true;
                }
            }
            if rx.changed().await.is_err() {
                return false;
            }
        }
    }

    /// `endpoint` of `attempt` was read to its end; the fence commits when
    /// it was the last one.
    pub fn end(&self, attempt: u32, endpoint: usize) {
        let mut state = self.state.lock();
        if state.attempt != attempt {
            return;
        }
        state.endpoints[endpoint].ended = true;
        if state.endpoints.iter().all(|e| e.ended) {
            state.committed = true;
        }
        drop(state);
        self.changed();
        self.report(Event::Ended { attempt, endpoint });
    }

    /// Claims `endpoint` for one client.
    pub fn take(&self, endpoint: usize) -> Result<(), Status> {
        let mut state = self.state.lock();
        let count = state.endpoints.len();
        let e = state.endpoints.get_mut(endpoint).ok_or_else(|| {
            Status::out_of_range(format!(
                "the query has {count} endpoints, not {}",
                endpoint + 1
            ))
        })?;
        if e.taken {
            return Err(Status::failed_precondition(format!(
                "result endpoint {endpoint} is already being read; every endpoint can be read once"
            )));
        }
        e.taken = true;
        Ok(())
    }

    /// The next frame of `endpoint` for its client: once the fence has
    /// committed; `None` at its end.
    pub async fn next(&self, endpoint: usize) -> Option<Result<FlightData, Status>> {
        let mut rx = self.version.subscribe();
        loop {
            rx.borrow_and_update();
            {
                let mut state = self.state.lock();
                if let Some(status) = &state.error {
                    return Some(Err(status.clone()));
                }
                if state.committed {
                    let e = &mut state.endpoints[endpoint];
                    if let Some(frame) = e.frames.pop_front() {
                        let size = frame.data_header.len() + frame.data_body.len();
                        e.bytes -= size;
                        state.held_bytes -= size;
                        drop(state);
                        self.changed();
                        return Some(Ok(frame));
                    }
                    if e.ended {
                        return None;
                    }
                }
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: usize) -> FlightData {
        FlightData {
            data_header: vec![0u8; 8].into(),
            data_body: vec![1u8; body].into(),
            ..Default::default()
        }
    }

    fn fence(buffer: usize, hold: Duration) -> Fence {
        Fence {
            enabled: true,
            buffer,
            hold,
        }
    }

    async fn ready(
        results: &Results,
        endpoint: usize,
    ) -> Option<Option<Result<FlightData, Status>>> {
        tokio::time::timeout(Duration::from_millis(50), results.next(endpoint))
            .await
            .ok()
    }

    #[tokio::test]
    async fn nothing_leaves_before_the_attempt_ends_and_a_restart_throws_it_away() {
        let (results, _events) = Results::new(2, 0, fence(1 << 20, Duration::from_secs(60)));
        assert!(results.push(0, 0, frame(10)));
        assert!(ready(&results, 0).await.is_none(), "held");
        // The attempt fails: its frames are dropped, and late ones refused.
        assert!(results.restart(1));
        assert!(!results.push(0, 0, frame(10)), "a stale attempt's frame");
        assert!(results.push(1, 0, frame(20)));
        results.end(1, 0);
        assert!(ready(&results, 0).await.is_none(), "endpoint 1 still runs");
        results.end(1, 1);
        let first = ready(&results, 0).await.expect("committed").expect("frame");
        assert_eq!(
            first.expect("ok").data_body.len(),
            20,
            "only attempt 1's frame"
        );
        assert!(ready(&results, 0).await.expect("end").is_none());
        assert!(ready(&results, 1).await.expect("end").is_none());
    }

    #[tokio::test]
    async fn the_buffer_limit_and_the_hold_time_commit() {
        let (results, _events) = Results::new(1, 0, fence(100, Duration::from_secs(60)));
        assert!(results.push(0, 0, frame(50)));
        assert!(!results.is_committed());
        assert!(results.push(0, 0, frame(50)));
        assert!(results.is_committed(), "held bytes reached --retry-buffer");
        assert!(!results.restart(1), "committed rows cannot be taken back");
        assert_eq!(results.attempt(), 0);

        let (results, _events) = Results::new(1, 0, fence(1 << 20, Duration::from_millis(30)));
        assert!(results.hold_deadline().is_none(), "no rows held yet");
        assert!(results.push(0, 0, frame(0)), "a schema frame");
        assert!(
            results.hold_deadline().is_none(),
            "a schema starts no clock"
        );
        assert!(results.push(0, 0, frame(10)));
        let deadline = results.hold_deadline().expect("rows held");
        assert!(deadline > Instant::now());
    }

    #[tokio::test]
    async fn after_the_commit_a_queue_is_bounded_and_errors_reach_readers() {
        let (results, _events) = Results::new(1, 0, fence(1, Duration::from_secs(60)));
        for _ in 0..QUEUE_FRAMES {
            assert!(results.push(0, 0, frame(1)));
        }
        assert!(results.is_committed());
        let room = tokio::time::timeout(Duration::from_millis(50), results.room(0, 0)).await;
        assert!(room.is_err(), "a full queue waits for its reader");
        assert!(ready(&results, 0).await.expect("frame").is_some());
        assert!(results.room(0, 0).await, "room again");
        results.fail(Status::unavailable("worker w1 lost"));
        let err = ready(&results, 0)
            .await
            .expect("error")
            .expect("item")
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert!(!results.room(0, 0).await, "a failed query's puller stops");
        assert!(results.take(0).is_ok());
        assert!(results.take(0).is_err(), "read once");
        assert!(results.take(3).is_err());
    }
}
