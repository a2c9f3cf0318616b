//! Logging and OpenTelemetry traces of a process.
//!
//! [`init`] installs the `tracing` subscriber every binary uses: log lines
//! (filtered by `RUST_LOG`) and, when an OTLP endpoint is configured
//! (`--otlp-endpoint` or the standard `OTEL_EXPORTER_OTLP_ENDPOINT`), spans
//! exported over OTLP/gRPC with `tracing-opentelemetry`. The standard
//! `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` and
//! `OTEL_BSP_*` variables apply. Resource attributes: `service.name`
//! (`weft-coordinator`, `weft-worker`, unless `OTEL_SERVICE_NAME` says
//! otherwise) and `service.instance.id` (the node's id). `RUST_LOG` filters
//! log lines only; every span at level info or above is exported.
//!
//! W3C `traceparent` crosses every RPC: [`inject`] puts the current span's
//! context into a request's metadata, [`extract`] reads it on the server, so
//! the spans of one query on every process share one trace.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::{Layer as _, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Owns the trace pipeline; [`Tracing::shutdown`] flushes pending spans.
#[derive(Debug)]
pub struct Tracing {
    provider: Option<SdkTracerProvider>,
}

/// What [`init`] sets up.
#[derive(Debug, Clone)]
pub struct TracingOptions {
    /// `service.name` unless `OTEL_SERVICE_NAME` is set.
    pub service: &'static str,
    /// `service.instance.id`.
    pub instance_id: String,
    /// OTLP/gRPC endpoint (`http://host:4317`); `None` = the
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` variable, or no export at all.
    pub otlp_endpoint: Option<String>,
    /// Log filter when `RUST_LOG` is not set.
    pub default_log_filter: &'static str,
    /// Log lines go to stderr (the CLI) rather than stdout.
    pub log_to_stderr: bool,
}

const ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const TRACES_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";

/// Installs logging and, if configured, trace export. Must run inside a
/// tokio runtime (the OTLP client lives on it).
pub fn init(options: TracingOptions) -> Result<Tracing, String> {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(options.default_log_filter));
    let fmt = tracing_subscriber::fmt::layer().with_writer(if options.log_to_stderr {
        tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr)
    } else {
        tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stdout)
    });
    let configured = options.otlp_endpoint.clone().filter(|e| !e.is_empty());
    let from_env = [ENDPOINT_ENV, TRACES_ENDPOINT_ENV]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|e| !e.is_empty()));
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    if configured.is_none() && !from_env {
        tracing_subscriber::registry()
            .with(fmt.with_filter(filter))
            .try_init()
            .map_err(|e| format!("cannot install the log subscriber: {e}"))?;
        return Ok(Tracing { provider: None });
    }
    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    if let Some(endpoint) = &configured {
        exporter = exporter.with_endpoint(endpoint.clone());
    }
    let shown = configured
        .as_deref()
        .map(redact)
        .unwrap_or_else(|| "$OTEL_EXPORTER_OTLP_ENDPOINT".to_string());
    let exporter = exporter.build().map_err(|e| {
        format!("cannot set up OTLP trace export to {shown}: {e}; check --otlp-endpoint / {ENDPOINT_ENV}")
    })?;
    let mut resource = Resource::builder()
        .with_attribute(opentelemetry::KeyValue::new(
            "service.instance.id",
            options.instance_id.clone(),
        ))
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            crate::VERSION,
        ));
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(options.service);
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("weft");
    // Spans are exported whatever RUST_LOG says about log lines: the
    // exporter has its own level (info: every span Weft opens).
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
        )
        .try_init()
        .map_err(|e| format!("cannot install the trace subscriber: {e}"))?;
    tracing::info!(endpoint = %shown, "exporting traces over OTLP/gRPC");
    Ok(Tracing {
        provider: Some(provider),
    })
}

impl Tracing {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports pending spans and stops the exporter (on SIGTERM / shutdown).
    pub fn shutdown(mut self) {
        if let Some(provider) = self.provider.take() {
            // The batch processor's flush blocks; keep it off the async workers.
            let flushed = std::thread::spawn(move || {
                let _ = provider.force_flush();
                provider.shutdown()
            })
            .join();
            if let Ok(Err(e)) = flushed {
                eprintln!("flushing traces failed: {e}");
            }
        }
    }
}

/// `endpoint` without credentials (`http://***@host:4317`).
fn redact(endpoint: &str) -> String {
    match url::Url::parse(endpoint) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("***");
            let _ = u.set_password(None);
            u.to_string()
        }
        Ok(_) => endpoint.to_string(),
        Err(_) => "(an endpoint that is not a URL)".to_string(),
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct MetadataExtractor<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// Puts the current span's trace context (`traceparent`) into `metadata`.
pub fn inject(metadata: &mut tonic::metadata::MetadataMap) {
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut MetadataInjector(metadata));
}

/// A request carrying the current span's trace context.
pub fn request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    inject(request.metadata_mut());
    request
}

/// Makes the trace context in `metadata` (if any) the parent of `span`.
pub fn set_parent(span: &tracing::Span, metadata: &tonic::metadata::MetadataMap) {
    let cx = TraceContextPropagator::new().extract(&MetadataExtractor(metadata));
    use opentelemetry::trace::TraceContextExt;
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn endpoints_are_shown_without_credentials() {
        assert_eq!(
            super::redact("http://collector:4317"),
            "http://collector:4317"
        );
        assert_eq!(
            super::redact("https://user:secret@collector:4317/"),
            "https://***@collector:4317/"
        );
        assert!(!super::redact("not a url secret").contains("secret"));
    }
}
