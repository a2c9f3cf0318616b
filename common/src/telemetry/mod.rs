//! Metrics, health endpoints and traces of a Weft process.
//!
//! - [`catalog`]: every exported metric, declared once;
//! - [`install`]: the process-wide `metrics` recorder, rendered in the
//!   Prometheus text format by `metrics-exporter-prometheus`, with upkeep
//!   running so histogram samples do not pile up when nobody scrapes, and
//!   idle histogram series (label sets nobody updates) expiring;
//! - [`GaugeSource`]: gauges computed when scraped (tasks running, memory
//!   reserved, live workers), summed over the nodes of one process;
//! - [`http`]: the `/metrics`, `/healthz`, `/readyz` server every node runs;
//! - [`traces`]: logging, OpenTelemetry export over OTLP, `traceparent` propagation.
//!
//! One process has one recorder: in `weft local` and in-process test clusters
//! every node's `/metrics` shows the whole process (coordinator and workers
//! together). Deployed, one process is one node.
//!
//! ```
//! weft_common::telemetry::install();
//! metrics::counter!(weft_common::telemetry::catalog::QUERIES_STARTED.name).increment(1);
//! assert!(weft_common::telemetry::render().contains("weft_coordinator_queries_started_total"));
//! ```

pub mod catalog;
pub mod http;
pub mod traces;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use parking_lot::Mutex;

use catalog::Kind;

/// Histograms not updated for this long leave the scrape (a catalog
/// removed from the file), so their buckets do not pile up. Counters stay:
/// their label sets are bounded, and a counter that vanished and came back
/// at 1 would hide its first increase from `increase()` and `rate()`.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// How often histogram samples are folded into their buckets.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder (once; later calls are no-ops).
/// Returns false when another `metrics` recorder was installed first, in
/// which case `/metrics` serves nothing of Weft's.
pub fn install() -> bool {
    HANDLE
        .get_or_init(|| {
            let mut builder = PrometheusBuilder::new()
                .idle_timeout(MetricKindMask::HISTOGRAM, Some(IDLE_TIMEOUT));
            for m in catalog::ALL.iter().filter(|m| m.kind == Kind::Histogram) {
                builder = match builder
                    .set_buckets_for_metric(Matcher::Full(m.name.to_string()), m.buckets)
                {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!("metric {}: {e}", m.name);
                        return None;
                    }
                };
            }
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("another metrics recorder is installed; /metrics will be empty");
                return None;
            }
            describe_all();
            let upkeep = handle.clone();
            // A plain thread: upkeep must run even when the query runtime is saturated.
            let spawned = std::thread::Builder::new()
                .name("weft-metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP_INTERVAL);
                    upkeep.run_upkeep();
                });
            if let Err(e) = spawned {
                tracing::error!("cannot start the metrics upkeep thread: {e}");
            }
            Some(handle)
        })
        .is_some()
}

fn describe_all() {
    for m in catalog::ALL {
        match m.kind {
            Kind::Counter => metrics::describe_counter!(m.name, m.help),
            Kind::Gauge => metrics::describe_gauge!(m.name, m.help),
            Kind::Histogram => metrics::describe_histogram!(m.name, m.help),
        }
    }
}

/// Registers the unlabelled counters of `role` at zero, so they are scraped
/// (and rates are defined) before anything happened, and sets `weft_build_info`.
pub fn register_role(role: catalog::Role) {
    install();
    let role_name = match role {
        catalog::Role::Coordinator => "coordinator",
        catalog::Role::Worker => "worker",
        catalog::Role::Both => "both",
    };
    metrics::gauge!(catalog::BUILD_INFO.name, "role" => role_name, "version" => crate::VERSION)
        .set(1.0);
    for m in catalog::ALL {
        if m.role == role && m.kind == Kind::Counter && m.labels.is_empty() {
            metrics::counter!(m.name).increment(0);
        }
    }
}

/// Gauges a node computes when scraped.
pub trait GaugeSource: Send + Sync + std::fmt::Debug {
    /// Appends `(metric name, value)` pairs (unlabelled gauges of the catalog).
    fn gauges(&self, out: &mut Vec<(&'static str, f64)>);
}

#[derive(Default)]
struct Sources {
    live: Vec<Weak<dyn GaugeSource>>,
    /// Every gauge name ever reported, so one whose nodes all stopped drops to 0.
    known: BTreeSet<&'static str>,
}

fn sources() -> &'static Mutex<Sources> {
    static SOURCES: OnceLock<Mutex<Sources>> = OnceLock::new();
    SOURCES.get_or_init(Default::default)
}

/// Adds a node's gauges to every scrape of this process while `source` lives.
pub fn add_gauge_source(source: &Arc<dyn GaugeSource>) {
    install();
    sources().lock().live.push(Arc::downgrade(source));
}

/// Sets the computed gauges: the sum over the live nodes of this process.
fn refresh_gauges() {
    let mut sums: BTreeMap<&'static str, f64> = BTreeMap::new();
    let mut guard = sources().lock();
    guard.live.retain(|w| w.strong_count() > 0);
    let live: Vec<_> = guard.live.iter().filter_map(Weak::upgrade).collect();
    let mut out = Vec::new();
    for s in &live {
        out.clear();
        s.gauges(&mut out);
        for (name, v) in &out {
            *sums.entry(name).or_default() += v;
        }
    }
    for name in sums.keys() {
        guard.known.insert(name);
    }
    for name in &guard.known {
        metrics::gauge!(*name).set(sums.get(name).copied().unwrap_or(0.0));
    }
}

/// The Prometheus text exposition of this process's metrics.
pub fn render() -> String {
    install();
    refresh_gauges();
    match HANDLE.get() {
        Some(Some(handle)) => handle.render(),
        _ => String::new(),
    }
}

/// Resolves on Ctrl-C or SIGTERM (what Kubernetes sends to stop a pod).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// A bounded error-kind label for a gRPC status code.
pub fn error_kind(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "none",
        Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::Unimplemented
        | Code::PermissionDenied
        | Code::Unauthenticated => "invalid",
        Code::ResourceExhausted => "resource_exhausted",
        Code::Unavailable | Code::DeadlineExceeded => "unavailable",
        Code::Cancelled => "cancelled",
        Code::Aborted | Code::Unknown => "execution",
        Code::Internal | Code::DataLoss => "internal",
    }
}

/// The `code` label of a gRPC status code (`ok`, `invalid_argument`, ...).
pub fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fixed(f64);
    impl GaugeSource for Fixed {
        fn gauges(&self, out: &mut Vec<(&'static str, f64)>) {
            out.push((catalog::TASKS_RUNNING.name, self.0));
        }
    }

    fn sample(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn gauges_sum_over_nodes_and_drop_to_zero_when_they_stop() {
        let a: Arc<dyn GaugeSource> = Arc::new(Fixed(2.0));
        let b: Arc<dyn GaugeSource> = Arc::new(Fixed(3.0));
        add_gauge_source(&a);
        add_gauge_source(&b);
        let text = render();
        assert_eq!(
            sample(&text, catalog::TASKS_RUNNING.name),
            Some(5.0),
            "{text}"
        );
        drop(a);
        drop(b);
        assert_eq!(sample(&render(), catalog::TASKS_RUNNING.name), Some(0.0));
    }

    #[test]
    fn histograms_use_the_declared_buckets() {
        install();
        metrics::histogram!(catalog::QUERY_PLANNING.name).record(0.003);
        let text = render();
        assert!(
            text.contains("weft_coordinator_query_planning_seconds_bucket{le=\"0.0025\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("weft_coordinator_query_planning_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
    }
}
