//! The live progress line of `weft sql` (stderr, terminals only by default):
//!
//! ```text
//! running  stages 2/5  tasks 3 running 10/16 done  1.20M rows 340K rows/s  56.1 MB  0:03.2
//! ```
//!
//! While the coordinator plans, the line says `planning`; once the query
//! runs it is redrawn every 250 ms from the coordinator's
//! `weft.query_progress` action (the Trino CLI's status line is the model).
//! It is cleared before results are printed, and never written to stdout.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::Action;
use clap::ValueEnum;
use futures::StreamExt;
use parking_lot::Mutex;
use tonic::transport::Channel;
use weft_coordinator::flight_sql::QUERY_PROGRESS_ACTION;

/// `--progress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ProgressMode {
    Never,
    /// On when stderr is a terminal.
    Auto,
    Always,
}

impl ProgressMode {
    pub(crate) fn enabled(self) -> bool {
        match self {
            ProgressMode::Never => false,
            ProgressMode::Always => true,
            ProgressMode::Auto => std::io::stderr().is_terminal(),
        }
    }
}

const TICK: Duration = Duration::from_millis(250);

/// Draws the line of one statement until dropped (which clears it).
#[derive(Debug)]
pub(crate) struct ProgressLine {
    query_id: Arc<Mutex<Option<String>>>,
    /// Set before the line is cleared; a draw checks it while holding
    /// stderr, so nothing is drawn after the clear.
    stopped: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ProgressLine {
    /// Starts drawing (a no-op line when `enabled` is false).
    pub(crate) fn start(
        enabled: bool,
        client: FlightServiceClient<Channel>,
        token: Option<String>,
    ) -> Self {
        let query_id = Arc::new(Mutex::new(None));
        let stopped = Arc::new(AtomicBool::new(false));
        if !enabled {
            return Self {
                query_id,
                stopped,
                task: None,
            };
        }
        let task = tokio::spawn(draw(
            client,
            token,
            Arc::clone(&query_id),
            Arc::clone(&stopped),
        ));
        Self {
            query_id,
            stopped,
            task: Some(task),
        }
    }

    /// The query is planned and running: follow it.
    pub(crate) fn follow(&self, query_id: String) {
        *self.query_id.lock() = Some(query_id);
    }
}

impl Drop for ProgressLine {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            self.stopped.store(true, Ordering::SeqCst);
            task.abort();
            clear();
        }
    }
}

fn clear() {
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "\r\x1b[2K");
    let _ = err.flush();
}

async fn draw(
    mut client: FlightServiceClient<Channel>,
    token: Option<String>,
    query_id: Arc<Mutex<Option<String>>>,
    stopped: Arc<AtomicBool>,
) {
    let started = Instant::now();
    let mut last_rows = (started, 0u64);
    let mut rate = 0.0f64;
    loop {
        let id = query_id.lock().clone();
        let line = match id {
            None => format!("planning  {}", clock(started.elapsed())),
            Some(id) => match fetch(&mut client, token.as_deref(), &id).await {
                Some(p) => {
                    let rows = p["rows"].as_u64().unwrap_or(0);
                    let now = Instant::now();
                    let dt = now.duration_since(last_rows.0).as_secs_f64();
                    if dt > 0.0 && rows >= last_rows.1 {
                        rate = (rows - last_rows.1) as f64 / dt;
                    }
                    last_rows = (now, rows);
                    render(&p, rate, started.elapsed())
                }
                None => format!("running  {}", clock(started.elapsed())),
            },
        };
        {
            let mut err = std::io::stderr().lock();
            if stopped.load(Ordering::SeqCst) {
                return;
            }
            let _ = write!(err, "\r\x1b[2K{line}");
            let _ = err.flush();
        }
        tokio::time::sleep(TICK).await;
    }
}

async fn fetch(
    client: &mut FlightServiceClient<Channel>,
    token: Option<&str>,
    id: &str,
) -> Option<serde_json::Value> {
    let mut action = tonic::Request::new(Action {
        r#type: QUERY_PROGRESS_ACTION.to_string(),
        body: id.as_bytes().to_vec().into(),
    });
    if let Some(token) = token {
        action
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().ok()?);
    }
    let mut stream = tokio::time::timeout(TICK * 4, client.do_action(action))
        .await
        .ok()?
        .ok()?
        .into_inner();
    let result = stream.next().await?.ok()?;
    serde_json::from_slice(&result.body).ok()
}

/// One progress line from a `weft.query_progress` answer.
pub(crate) fn render(p: &serde_json::Value, rows_per_second: f64, elapsed: Duration) -> String {
    let n = |k: &str| p[k].as_u64().unwrap_or(0);
    format!(
        "{}  stages {}/{}  tasks {} running {}/{} done  {} rows {} rows/s  {}  {}",
        p["state"].as_str().unwrap_or("running"),
        n("stages_done"),
        n("stages_total"),
        n("tasks_running"),
        n("tasks_done"),
        n("tasks_total"),
        si(n("rows") as f64),
        si(rows_per_second),
        bytes(n("bytes")),
        clock(elapsed)
    )
}

fn si(v: f64) -> String {
    match v {
        v if v >= 1e9 => format!("{:.2}G", v / 1e9),
        v if v >= 1e6 => format!("{:.2}M", v / 1e6),
        v if v >= 1e3 => format!("{:.1}K", v / 1e3),
        v => format!("{v:.0}"),
    }
}

fn bytes(b: u64) -> String {
    let v = b as f64;
    match v {
        v if v >= 1e9 => format!("{:.2} GB", v / 1e9),
        v if v >= 1e6 => format!("{:.1} MB", v / 1e6),
        v if v >= 1e3 => format!("{:.1} KB", v / 1e3),
        v => format!("{v:.0} B"),
    }
}

/// `m:ss.t`.
fn clock(d: Duration) -> String {
    let s = d.as_secs_f64();
    format!("{}:{:04.1}", (s / 60.0) as u64, s % 60.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_field() {
        let p = serde_json::json!({
            "state": "running", "elapsed_ms": 3200, "stages_total": 5, "stages_done": 2,
            "tasks_total": 16, "tasks_running": 3, "tasks_done": 10,
            "rows": 1_200_000, "bytes": 56_100_000
        });
        assert_eq!(
            render(&p, 340_000.0, Duration::from_millis(3200)),
            "running  stages 2/5  tasks 3 running 10/16 done  1.20M rows 340.0K rows/s  56.1 MB  0:03.2"
        );
        assert_eq!(clock(Duration::from_secs(75)), "1:15.0");
    }
}
