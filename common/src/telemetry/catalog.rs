//! Every metric Weft exports, declared once: name, type, labels, help.
//!
//! Code records through these constants (`metrics::counter!(QUERIES_STARTED.name)`),
//! [`super::install`] describes each of them to the recorder and sets the
//! histogram buckets, and `docs/metrics.md` lists them; a test compares the
//! document with this table and with a live scrape.
//!
//! Names follow `weft_<component>_<thing>_<unit>`. Labels are bounded: a
//! state, an error kind, a transport, a Flight method and code, a configured
//! catalog name and kind. Never a query id, SQL text or an address.

/// Prometheus type of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Which process exports a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Coordinator,
    Worker,
    Both,
}

/// One exported metric.
#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub role: Role,
    pub help: &'static str,
    /// Histogram bucket bounds (explicit, so quantiles aggregate across nodes).
    pub buckets: &'static [f64],
}

const fn def(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    role: Role,
    help: &'static str,
) -> MetricDef {
    MetricDef {
        name,
        kind,
        labels,
        role,
        help,
        buckets: &[],
    }
}

/// Query-scale durations: 5 ms to 30 min.
pub const QUERY_SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0,
];
/// Planning and remote-call durations: 1 ms to 60 s.
pub const SHORT_SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

use Kind::*;
use Role::*;

// ---- both roles ----
pub const BUILD_INFO: MetricDef = def(
    "weft_build_info",
    Gauge,
    &["role", "version"],
    Both,
    "Always 1; labels name the process role (coordinator, worker) and the Weft version",
);

// ---- coordinator ----
pub const QUERIES_STARTED: MetricDef = def(
    "weft_coordinator_queries_started_total",
    Counter,
    &[],
    Coordinator,
    "Queries received (every statement that reached GetFlightInfo or PollFlightInfo)",
);
pub const QUERIES_FINISHED: MetricDef = def(
    "weft_coordinator_queries_finished_total",
    Counter,
    &["state", "error_kind"],
    Coordinator,
    "Queries that ended, by final state (finished, failed, cancelled) and error kind (none, invalid, resource_exhausted, unavailable, execution, internal, cancelled)",
);
pub const QUERY_RETRIES: MetricDef = def(
    "weft_coordinator_query_retries_total",
    Counter,
    &["outcome"],
    Coordinator,
    "Query attempts lost to an infrastructure failure (a worker lost or unreachable), by outcome: retried (a new attempt ran, no row had left), failed (rows had already left, or --query-retries was used up)",
);
pub const QUERIES_RUNNING: MetricDef = def(
    "weft_coordinator_queries_running",
    Gauge,
    &[],
    Coordinator,
    "Queries planning or running now",
);
pub const QUERIES_QUEUED: MetricDef = def(
    "weft_coordinator_queries_queued",
    Gauge,
    &[],
    Coordinator,
    "Queries waiting for admission now (--max-running-queries)",
);
pub const QUERY_DURATION: MetricDef = MetricDef {
    buckets: QUERY_SECONDS_BUCKETS,
    ..def(
        "weft_coordinator_query_duration_seconds",
        Histogram,
        &["state"],
        Coordinator,
        "Time from a query's arrival to its end, by final state",
    )
};
pub const QUERY_QUEUE_WAIT: MetricDef = MetricDef {
    buckets: QUERY_SECONDS_BUCKETS,
    ..def(
        "weft_coordinator_query_queue_wait_seconds",
        Histogram,
        &[],
        Coordinator,
        "Time a query waited for admission before planning",
    )
};
pub const QUERY_PLANNING: MetricDef = MetricDef {
    buckets: SHORT_SECONDS_BUCKETS,
    ..def(
        "weft_coordinator_query_planning_seconds",
        Histogram,
        &[],
        Coordinator,
        "Time from the start of planning to all tasks launched (SQL and physical planning, stage cutting, placement, launch)",
    )
};
pub const STAGES_LAUNCHED: MetricDef = def(
    "weft_coordinator_stages_launched_total",
    Counter,
    &[],
    Coordinator,
    "Stages launched on workers",
);
pub const TASKS_LAUNCHED: MetricDef = def(
    "weft_coordinator_tasks_launched_total",
    Counter,
    &[],
    Coordinator,
    "Tasks launched on workers",
);
pub const WORKERS_LIVE: MetricDef = def(
    "weft_coordinator_workers_live",
    Gauge,
    &[],
    Coordinator,
    "Workers in the membership this coordinator schedules on",
);
pub const WORKERS_LOST: MetricDef = def(
    "weft_coordinator_workers_lost_total",
    Counter,
    &[],
    Coordinator,
    "Workers that left the membership without draining first (died, lease expired); a worker that drained (scale-down) does not count",
);
pub const SLOTS_TOTAL: MetricDef = def(
    "weft_coordinator_slots",
    Gauge,
    &[],
    Coordinator,
    "Task slots of the live workers",
);
pub const SLOTS_USED: MetricDef = def(
    "weft_coordinator_slots_used",
    Gauge,
    &[],
    Coordinator,
    "Tasks of this coordinator's running queries (placed on the live workers' slots)",
);
pub const RESULT_BYTES: MetricDef = def(
    "weft_coordinator_result_bytes_total",
    Counter,
    &[],
    Coordinator,
    "Arrow IPC bytes of results streamed to clients through the coordinator",
);
pub const RESULT_ROWS: MetricDef = def(
    "weft_coordinator_result_rows_total",
    Counter,
    &[],
    Coordinator,
    "Result rows streamed to clients through the coordinator",
);
pub const FLIGHT_REQUESTS: MetricDef = def(
    "weft_coordinator_flight_requests_total",
    Counter,
    &["method", "code"],
    Coordinator,
    "Flight SQL requests by RPC method and gRPC status code of the response (ok, invalid_argument, unavailable, ...)",
);

// ---- worker ----
pub const TASKS_RUNNING: MetricDef = def(
    "weft_worker_tasks_running",
    Gauge,
    &[],
    Worker,
    "Tasks whose producers are running now",
);
pub const WORKER_QUERIES: MetricDef = def(
    "weft_worker_queries",
    Gauge,
    &[],
    Worker,
    "Queries with tasks on this worker (held until their coordinator releases them); at most --max-queries when set",
);
pub const WORKER_TASKS_LAUNCHED: MetricDef = def(
    "weft_worker_tasks_launched_total",
    Counter,
    &[],
    Worker,
    "Tasks launched on this worker",
);
pub const TASKS_FINISHED: MetricDef = def(
    "weft_worker_tasks_finished_total",
    Counter,
    &["state"],
    Worker,
    "Tasks that ended, by final state (finished, failed, cancelled)",
);
pub const SLOTS: MetricDef = def(
    "weft_worker_slots",
    Gauge,
    &[],
    Worker,
    "Task slots this worker announces (--slots)",
);
pub const SLOTS_FREE: MetricDef = def(
    "weft_worker_slots_free",
    Gauge,
    &[],
    Worker,
    "Slots minus running tasks (0 when oversubscribed)",
);
pub const EXCHANGE_SENT_BYTES: MetricDef = def(
    "weft_worker_exchange_sent_bytes_total",
    Counter,
    &["transport"],
    Worker,
    "Task output bytes handed to readers: Arrow IPC bytes over Flight (transport=flight), in-memory batch sizes in process (transport=local)",
);
pub const EXCHANGE_SENT_BATCHES: MetricDef = def(
    "weft_worker_exchange_sent_batches_total",
    Counter,
    &["transport"],
    Worker,
    "Task output batches handed to readers, by transport (flight, local)",
);
pub const EXCHANGE_SENT_ROWS: MetricDef = def(
    "weft_worker_exchange_sent_rows_total",
    Counter,
    &["transport"],
    Worker,
    "Task output rows handed to readers, by transport (flight, local)",
);
pub const EXCHANGE_RECEIVED_BYTES: MetricDef = def(
    "weft_worker_exchange_received_bytes_total",
    Counter,
    &["transport"],
    Worker,
    "Bytes stage readers received from upstream tasks, by transport (flight: IPC bytes, local: in-memory sizes)",
);
pub const EXCHANGE_RECEIVED_BATCHES: MetricDef = def(
    "weft_worker_exchange_received_batches_total",
    Counter,
    &["transport"],
    Worker,
    "Batches stage readers received from upstream tasks, by transport (flight, local)",
);
pub const EXCHANGE_RECEIVED_ROWS: MetricDef = def(
    "weft_worker_exchange_received_rows_total",
    Counter,
    &["transport"],
    Worker,
    "Rows stage readers received from upstream tasks, by transport (flight, local)",
);
pub const EXCHANGE_WAIT: MetricDef = MetricDef {
    buckets: SHORT_SECONDS_BUCKETS,
    ..def(
        "weft_worker_exchange_wait_seconds",
        Histogram,
        &["transport"],
        Worker,
        "Time a stage reader waited for each batch of an upstream task (the first one includes connecting), by transport; its _sum is the total wait",
    )
};
pub const MEMORY_RESERVED: MetricDef = def(
    "weft_worker_memory_reserved_bytes",
    Gauge,
    &[],
    Worker,
    "Bytes reserved in the worker's query memory pool now",
);
pub const MEMORY_LIMIT: MetricDef = def(
    "weft_worker_memory_limit_bytes",
    Gauge,
    &[],
    Worker,
    "Size of the query memory pool (--memory-limit); 0 = unbounded",
);
pub const SPILLED_BYTES: MetricDef = def(
    "weft_worker_spilled_bytes_total",
    Counter,
    &[],
    Worker,
    "Bytes operators spilled to disk (added when a task ends)",
);
pub const LEASE_RENEWALS: MetricDef = def(
    "weft_worker_lease_renewals_total",
    Counter,
    &[],
    Worker,
    "etcd lease keep-alives answered by etcd",
);
pub const LEASE_FAILURES: MetricDef = def(
    "weft_worker_lease_renewal_failures_total",
    Counter,
    &[],
    Worker,
    "etcd lease keep-alives that failed (the worker re-registers under a new lease)",
);

// ---- connectors (recorded on the process running the scan: workers) ----
pub const CONNECTOR_ROWS: MetricDef = def(
    "weft_connector_rows_total",
    Counter,
    &["catalog", "kind"],
    Worker,
    "Rows read from a catalog's source (files: added when the scanning task ends)",
);
pub const CONNECTOR_BYTES: MetricDef = def(
    "weft_connector_bytes_total",
    Counter,
    &["catalog", "kind"],
    Worker,
    "Bytes read from a catalog's source (files: bytes scanned; databases: Arrow bytes decoded)",
);
pub const REMOTE_QUERIES: MetricDef = def(
    "weft_connector_remote_queries_total",
    Counter,
    &["catalog", "kind", "status"],
    Worker,
    "Queries sent to a database or Flight SQL catalog, by outcome (ok, error, cancelled)",
);
pub const REMOTE_QUERY_DURATION: MetricDef = MetricDef {
    buckets: SHORT_SECONDS_BUCKETS,
    ..def(
        "weft_connector_remote_query_duration_seconds",
        Histogram,
        &["catalog", "kind"],
        Worker,
        "Time from sending a remote query to its last row",
    )
};

/// Every metric, in documentation order.
pub const ALL: &[MetricDef] = &[
    BUILD_INFO,
    QUERIES_STARTED,
    QUERIES_FINISHED,
    QUERY_RETRIES,
    QUERIES_RUNNING,
    QUERIES_QUEUED,
    QUERY_DURATION,
    QUERY_QUEUE_WAIT,
    QUERY_PLANNING,
    STAGES_LAUNCHED,
    TASKS_LAUNCHED,
    WORKERS_LIVE,
    WORKERS_LOST,
    SLOTS_TOTAL,
    SLOTS_USED,
    RESULT_BYTES,
    RESULT_ROWS,
    FLIGHT_REQUESTS,
    TASKS_RUNNING,
    WORKER_QUERIES,
    WORKER_TASKS_LAUNCHED,
    TASKS_FINISHED,
    SLOTS,
    SLOTS_FREE,
    EXCHANGE_SENT_BYTES,
    EXCHANGE_SENT_BATCHES,
    EXCHANGE_SENT_ROWS,
    EXCHANGE_RECEIVED_BYTES,
    EXCHANGE_RECEIVED_BATCHES,
    EXCHANGE_RECEIVED_ROWS,
    EXCHANGE_WAIT,
    MEMORY_RESERVED,
    MEMORY_LIMIT,
    SPILLED_BYTES,
    LEASE_RENEWALS,
    LEASE_FAILURES,
    CONNECTOR_ROWS,
    CONNECTOR_BYTES,
    REMOTE_QUERIES,
    REMOTE_QUERY_DURATION,
];

/// The markdown table of `docs/metrics.md` (between its markers), generated
/// from [`ALL`] so the document cannot drift from the code.
pub fn markdown_table() -> String {
    let mut out =
        String::from("| name | type | labels | exported by | meaning |\n|---|---|---|---|---|\n");
    for m in ALL {
        let labels = if m.labels.is_empty() {
            "-".to_string()
        } else {
            m.labels
                .iter()
                .map(|l| format!("`{l}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let role = match m.role {
            Role::Coordinator => "coordinator",
            Role::Worker => "worker",
            Role::Both => "both",
        };
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |\n",
            m.name,
            m.kind.as_str(),
            labels,
            role,
            m.help
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_convention_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for m in ALL {
            assert!(seen.insert(m.name), "{} declared twice", m.name);
            assert!(m.name.starts_with("weft_"), "{}", m.name);
            match m.kind {
                Kind::Counter => assert!(m.name.ends_with("_total"), "{}", m.name),
                Kind::Histogram => {
                    assert!(m.name.ends_with("_seconds"), "{}", m.name);
                    assert!(!m.buckets.is_empty(), "{} needs explicit buckets", m.name);
                    assert!(m.buckets.windows(2).all(|w| w[0] < w[1]), "{}", m.name);
                }
                Kind::Gauge => assert!(!m.name.ends_with("_total"), "{}", m.name),
            }
            for l in m.labels {
                assert!(
                    !["query_id", "query", "sql", "address", "host", "instance"].contains(l),
                    "{} has unbounded label {l}",
                    m.name
                );
            }
        }
    }

    #[test]
    fn docs_list_exactly_the_declared_metrics() {
        let doc = include_str!("../../../docs/metrics.md");
        let start = doc
            .find("<!-- metrics-table:begin -->\n")
            .expect("docs/metrics.md lacks the begin marker")
            + "<!-- metrics-table:begin -->\n".len();
        let end = doc
            .find("<!-- metrics-table:end -->")
            .expect("docs/metrics.md lacks the end marker");
        if std::env::var_os("WEFT_BLESS").is_some() {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");
            let blessed = format!("{}{}{}", &doc[..start], markdown_table(), &doc[end..]);
            std::fs::write(path, blessed).expect("write docs/metrics.md");
            return;
        }
        assert_eq!(
            &doc[start..end],
            markdown_table(),
            "docs/metrics.md is out of date: replace the table between the markers with the output of weft_common::telemetry::catalog::markdown_table()"
        );
    }
}
