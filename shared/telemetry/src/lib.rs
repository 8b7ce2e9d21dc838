//! One telemetry init for every callchain binary, and the propagation of trace
//! context across every hop.
//!
//! - [`init`] (binaries) and [`build`] (tests, which run several services in one
//!   process) set up JSON logs on stdout and OTLP span export; the returned
//!   [`TelemetryGuard`] flushes spans when dropped. [`SETTINGS`]: the
//!   variables they read, each with its default and meaning.
//! - [`logs`]: the JSON line format: `timestamp`, `level`, `target`, `message`,
//!   `service`, and inside a span its `trace_id` and `span_id`.
//! - [`propagation`]: W3C TraceContext + Baggage in and out of HTTP headers and
//!   gRPC metadata.
//! - [`baggage`]: how much incoming baggage is accepted and which keys, and
//!   the caller's id (`enduser.id`) that travels in it.
//! - [`layer`]: the one tower layer every traced hop shares.
//! - [`http`] and [`grpc`]: the hops that open the server and client spans
//!   and move the context across the wire, so no handler touches headers.
//! - `kafka` (feature `kafka`): the same for Kafka message headers, and the
//!   producer and consumer spans.
//! - [`jsonrpc`]: what the HTTP server span says of a JSON-RPC request, and
//!   the span of each call in a batch.
//! - [`export`]: the OTLP exporter, counting the spans of failed exports and
//!   logging when export starts failing and when it resumes.
//! - [`otlp`]: the OTLP/gRPC span exporter itself, encoding straight from
//!   the SDK's span data (public so a test can send the collector exactly
//!   what the services send).
//! - [`metrics`]: the meter provider, exporting over OTLP beside the spans,
//!   and the instruments the hops and the services record.
//! - [`db`]: the client span of one database statement.
//! - [`records`]: one JSON line per finished span (`target` `callchain::span`),
//!   so the call chain can be rebuilt from the logs alone; every span's
//!   attribute values are cut to [`OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`]
//!   characters there, before export.
//!
//! Settings, the shutdown signal, health probes and the Postgres pool are not
//! telemetry: they live in `callchain-runtime`.

pub mod baggage;
pub mod db;
pub mod export;
pub mod grpc;
pub mod http;
pub mod jsonrpc;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod layer;
pub mod logs;
pub mod metrics;
pub mod otlp;
pub mod propagation;
pub mod records;
#[cfg(test)]
mod test_support;

use std::sync::{Arc, Once};

use callchain_runtime::env::{Env, Setting};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{
    Resource,
    trace::{BatchSpanProcessor, SdkTracerProvider},
};
use tracing::Dispatch;
use tracing_subscriber::{EnvFilter, fmt::MakeWriter, layer::SubscriberExt as _};

/// `RUST_LOG`: which log lines are written.
pub const RUST_LOG: Setting = Setting {
    name: "RUST_LOG",
    default: Some("info"),
    doc: "Which log lines are written, as an `EnvFilter` directive; `info,callchain::span=off` leaves the span records out.",
};

/// `OTEL_EXPORTER_OTLP_ENDPOINT`: where spans and metrics go.
pub const OTEL_EXPORTER_OTLP_ENDPOINT: Setting = Setting {
    name: "OTEL_EXPORTER_OTLP_ENDPOINT",
    default: None,
    doc: "Where spans and metrics are exported, over OTLP/gRPC (`http://localhost:4317`); unset, none is exported \
          and the logs are still written.",
};

/// `OTEL_SERVICE_NAME`: the service's name in spans and logs.
pub const OTEL_SERVICE_NAME: Setting = Setting {
    name: "OTEL_SERVICE_NAME",
    default: None,
    doc: "`service.name` on every span and `service` on every log line; unset, the service's own name (`api`, \
          `user`, `consumer`).",
};

/// `LOG_QUEUE_LINES`: how many log lines may wait for stdout.
pub const LOG_QUEUE_LINES: Setting = Setting {
    name: "LOG_QUEUE_LINES",
    default: Some("65536"),
    doc: "The most log lines waiting to be written to stdout by the log writer's thread; past it a line is dropped \
          (counted, and the count logged at shutdown), never waited for. `0` writes each line in the thread that \
          logs it.",
};

/// The variables the OpenTelemetry SDK reads itself, from the process.
const SDK_OWN: &str = "Read by the OpenTelemetry SDK itself; unset, the SDK's default.";

/// Every variable the telemetry of a service reads, beside the service's
/// own; `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` and `OTEL_RESOURCE_ATTRIBUTES` the OpenTelemetry SDK reads itself.
pub const SETTINGS: &[Setting] = &[
    RUST_LOG,
    LOG_QUEUE_LINES,
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_SERVICE_NAME,
    Setting {
        name: "OTEL_TRACES_SAMPLER",
        default: None,
        doc: SDK_OWN,
    },
    Setting {
        name: "OTEL_TRACES_SAMPLER_ARG",
        default: None,
        doc: SDK_OWN,
    },
    Setting {
        name: "OTEL_RESOURCE_ATTRIBUTES",
        default: None,
        doc: SDK_OWN,
    },
    OTEL_BSP_MAX_QUEUE_SIZE,
    OTEL_BSP_SCHEDULE_DELAY,
    OTEL_BSP_MAX_EXPORT_BATCH_SIZE,
    OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT,
    metrics::OTEL_METRICS_EXPORTER,
    metrics::OTEL_METRIC_EXPORT_INTERVAL,
];

/// `OTEL_BSP_MAX_QUEUE_SIZE`: the span queue of the batch processor. The
/// SDK's own default (2,048) drops spans at a few thousand spans a second
/// on a busy machine; this one holds a third of a second of the
/// consumer's spans flat out (docs/performance.md).
pub const OTEL_BSP_MAX_QUEUE_SIZE: Setting = Setting {
    name: "OTEL_BSP_MAX_QUEUE_SIZE",
    default: Some("32768"),
    doc: "The most finished spans waiting for export; past it a span is dropped (and counted), never waited for.",
};

/// `OTEL_BSP_SCHEDULE_DELAY`: the longest a finished span waits for export.
pub const OTEL_BSP_SCHEDULE_DELAY: Setting = Setting {
    name: "OTEL_BSP_SCHEDULE_DELAY",
    default: Some("1000"),
    doc: "The longest a finished span waits before its batch is exported, in milliseconds; a full batch goes at once.",
};

/// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`: the spans of one export request.
pub const OTEL_BSP_MAX_EXPORT_BATCH_SIZE: Setting = Setting {
    name: "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
    default: Some("2048"),
    doc: "The most spans in one export request (the SDK's default is 512): fewer, larger requests at a high rate.",
};

/// The batch span processor's queue, batch and delay: the standard
/// `OTEL_BSP_*` variables, with this crate's defaults rather than the SDK's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanBatch {
    /// [`OTEL_BSP_MAX_QUEUE_SIZE`].
    pub max_queue_size: usize,
    /// [`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`].
    pub max_export_batch_size: usize,
    /// [`OTEL_BSP_SCHEDULE_DELAY`].
    pub scheduled_delay: std::time::Duration,
}

impl SpanBatch {
    pub fn from_env(env: &Env) -> Result<Self, TelemetryError> {
        const SPANS: &str = "a whole number of spans";
        Ok(Self {
            max_queue_size: env.setting(&OTEL_BSP_MAX_QUEUE_SIZE, SPANS)?,
            max_export_batch_size: env.setting(&OTEL_BSP_MAX_EXPORT_BATCH_SIZE, SPANS)?,
            scheduled_delay: std::time::Duration::from_millis(
                env.setting(&OTEL_BSP_SCHEDULE_DELAY, "a whole number of milliseconds")?,
            ),
        })
    }

    fn config(self) -> opentelemetry_sdk::trace::BatchConfig {
        opentelemetry_sdk::trace::BatchConfigBuilder::default()
            .with_max_queue_size(self.max_queue_size)
            .with_max_export_batch_size(self.max_export_batch_size)
            .with_scheduled_delay(self.scheduled_delay)
            .build()
    }
}

/// `OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`: the standard cap on attribute values.
pub const OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT: Setting = Setting {
    name: "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
    default: Some("1024"),
    doc: "The most characters a string attribute value keeps, in the exported span and its log record alike; a \
          longer one (a 64 KB `url.path`) is cut, so one span cannot push an export batch past what the collector takes.",
};

/// Where finished spans go, beside the span records in the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Export {
    /// To an OTLP/gRPC endpoint, through the batch span processor.
    Otlp(String),
    /// Through the batch span processor to an exporter that drops every
    /// batch: the whole cost of recording spans and none of sending them.
    /// `make bench` measures the price of export against it.
    Discard,
    /// Nowhere: no batch span processor at all.
    Off,
}

impl From<Option<String>> for Export {
    /// An endpoint exports there; none exports nothing.
    fn from(endpoint: Option<String>) -> Self {
        endpoint.map_or(Export::Off, Export::Otlp)
    }
}

/// What a process's telemetry needs to know.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// `service.name` on every span and `service` on every log line.
    pub service_name: String,
    /// Where spans go.
    pub export: Export,
    /// An `EnvFilter` directive, as in `RUST_LOG`.
    pub log_filter: String,
    /// The span queue, its export batches and their delay.
    pub span_batch: SpanBatch,
    /// [`LOG_QUEUE_LINES`]: the most lines waiting for the log writer's
    /// thread; 0 writes each line in the thread that logs it.
    pub log_queue_lines: usize,
    /// The longest a string attribute value may be, in characters, in the
    /// exported span and its record alike: a client cannot make one span
    /// large enough to push a whole export over the collector's limit.
    pub attribute_value_length_limit: usize,
    /// Whether metrics go where the spans go (an OTLP endpoint); with
    /// [`Export::Discard`] or [`Export::Off`] no metric is recorded.
    pub metrics: metrics::MetricsExporter,
    /// How often metrics are exported.
    pub metric_export_interval: std::time::Duration,
}

impl TelemetryConfig {
    /// Reads [`OTEL_SERVICE_NAME`] (unset, `service`),
    /// [`OTEL_EXPORTER_OTLP_ENDPOINT`], [`RUST_LOG`],
    /// [`OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`] and the metrics' two settings
    /// from `env`.
    pub fn from_env(env: &Env, service: &str) -> Result<Self, TelemetryError> {
        Ok(Self {
            service_name: env.var(OTEL_SERVICE_NAME.name).unwrap_or_else(|| service.to_owned()),
            export: env.var(OTEL_EXPORTER_OTLP_ENDPOINT.name).into(),
            log_filter: env
                .setting(&RUST_LOG, "a log filter")
                .expect("any text parses as a String"),
            log_queue_lines: env.setting(&LOG_QUEUE_LINES, "a whole number of lines")?,
            span_batch: SpanBatch::from_env(env)?,
            attribute_value_length_limit: env.setting(&OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT, "a whole number")?,
            metrics: env.setting(&metrics::OTEL_METRICS_EXPORTER, "`otlp` or `none`")?,
            metric_export_interval: std::time::Duration::from_millis(
                env.setting(&metrics::OTEL_METRIC_EXPORT_INTERVAL, "a whole number of milliseconds")?,
            ),
        })
    }

    /// A config for `service` that exports as `export` says (an OTLP
    /// endpoint, or `None` for nothing) and logs as [`RUST_LOG`]'s default,
    /// each line written in the thread that logs it (no queue), so a test
    /// reads a line as soon as it is logged.
    pub fn new(service: &str, export: impl Into<Export>) -> Self {
        Self {
            export: export.into(),
            log_queue_lines: 0,
            ..Self::from_env(&Env::default(), service).expect("the settings' defaults parse")
        }
    }
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(transparent)]
    Setting(#[from] callchain_runtime::env::InvalidVar),
    #[error("invalid RUST_LOG filter: {0}")]
    Filter(#[from] tracing_subscriber::filter::ParseError),
    #[error("cannot build the OTLP span exporter: {0}")]
    Exporter(#[from] tonic::transport::Error),
    #[error("cannot build the OTLP metric exporter: {0}")]
    MetricExporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("a global tracing subscriber is already set")]
    AlreadySet(#[from] tracing::dispatcher::SetGlobalDefaultError),
}

/// Flushes and shuts down span and metric export when dropped, so the last
/// spans and values of a process are not lost. Hold it until `main` returns.
#[must_use = "dropping the guard shuts telemetry down"]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
    meters: Option<opentelemetry_sdk::metrics::SdkMeterProvider>,
    export: Option<Arc<export::ExportCounts>>,
    /// The queue to the log writer's thread, when lines go through one.
    logs: Option<logs::LogQueue>,
    /// Where the line saying how many lines were dropped goes, at shutdown.
    dispatch: Dispatch,
}

impl TelemetryGuard {
    /// What span export has done so far; `None` when nothing is exported.
    pub fn export_counts(&self) -> Option<&export::ExportCounts> {
        self.export.as_deref()
    }

    /// How many log lines were dropped because the queue to the log writer
    /// was full; `None` when each line is written in the thread that logs it.
    pub fn logs_dropped(&self) -> Option<logs::DroppedLines> {
        self.logs.as_ref().map(|queue| queue.dropped().clone())
    }

    /// Exports every finished span, and the metrics' values, now. Blocks
    /// until the exporters answer.
    pub fn flush(&self) {
        if let Err(error) = self.provider.force_flush() {
            eprintln!("telemetry: flushing spans failed: {error}");
        }
        if let Some(meters) = &self.meters
            && let Err(error) = meters.force_flush()
        {
            eprintln!("telemetry: flushing metrics failed: {error}");
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(error) = self.provider.shutdown() {
            eprintln!("telemetry: shutting span export down failed: {error}");
        }
        if let Some(meters) = &self.meters
            && let Err(error) = meters.shutdown()
        {
            eprintln!("telemetry: shutting metric export down failed: {error}");
        }
        // The span records of the last spans are queued by now; the count
        // goes last, then every queued line is written out.
        if let Some(mut queue) = self.logs.take() {
            let dropped = queue.dropped().count();
            if dropped > 0 {
                tracing::dispatcher::with_default(&self.dispatch, || {
                    tracing::warn!(
                        target: "callchain::telemetry",
                        dropped,
                        "log lines were dropped: the queue to stdout was full (LOG_QUEUE_LINES)"
                    );
                });
            }
            queue.flush();
        }
    }
}

/// Sets up telemetry for this process from `env` (see
/// [`TelemetryConfig::from_env`]), logging to stdout through the log
/// writer's queue ([`LOG_QUEUE_LINES`]). Call once, first thing in `main`,
/// inside the Tokio runtime (the OTLP exporter runs on it). The SDK's own
/// variables (`OTEL_TRACES_SAMPLER`, ...) it reads itself from the process
/// environment.
pub fn init(env: &Env, service: &str) -> Result<TelemetryGuard, TelemetryError> {
    let config = TelemetryConfig::from_env(env, service)?;
    let (dispatch, guard) = build(&config, std::io::stdout)?;
    tracing::dispatcher::set_global_default(dispatch)?;
    Ok(guard)
}

/// Builds a subscriber for one service without installing it: JSON logs to
/// `writer`, spans to the configured OTLP endpoint. Tests use it to run several
/// services in one process, each on its own runtime with its own dispatcher.
/// Must be called inside a Tokio runtime when an endpoint is configured.
pub fn build<W>(config: &TelemetryConfig, writer: W) -> Result<(Dispatch, TelemetryGuard), TelemetryError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    install_propagator();

    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .build();
    let meters = match (&config.export, config.metrics) {
        (Export::Otlp(endpoint), metrics::MetricsExporter::Otlp) => Some(metrics::Metrics::otlp(
            endpoint,
            config.metric_export_interval,
            resource.clone(),
        )?),
        _ => None,
    };
    let (metrics_layer, meters) = meters.map(|m| (m.layer, m.provider)).unzip();
    let mut export = None;
    // The span records come first, cut each span's attribute values to the
    // limit, and pass the span on to the batch processor (see
    // `records::SpanRecords`): the record and the export carry the same values.
    let limit = config.attribute_value_length_limit;
    let records = match &config.export {
        Export::Otlp(endpoint) => {
            let exporter = export::CountingExporter::new(otlp::OtlpExporter::new(endpoint)?);
            export = Some((exporter.counts(), exporter.log_to()));
            // The SDK's batch processor: ending a span never waits for export.
            records::SpanRecords::then(
                limit,
                BatchSpanProcessor::builder(exporter)
                    .with_batch_config(config.span_batch.config())
                    .build(),
            )
        }
        Export::Discard => records::SpanRecords::then(
            limit,
            BatchSpanProcessor::builder(DiscardExporter)
                .with_batch_config(config.span_batch.config())
                .build(),
        ),
        Export::Off => records::SpanRecords::new(limit),
    };
    let sink = records.sink();
    let provider = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_span_processor(records);
    // Without an exporter spans are still created, so logs and the
    // `traceparent` response header carry real trace ids.
    let provider = provider.build();
    let tracer = provider.tracer(config.service_name.clone());

    if let (Some(layer), Some((counts, _))) = (&metrics_layer, &export) {
        layer.0.report_dropped_spans(Arc::downgrade(counts));
    }
    let (writer, log_queue) = match config.log_queue_lines {
        0 => (logs::LogWriter::new(writer), None),
        lines => {
            let (writer, queue) = logs::LogQueue::new(writer, lines);
            (writer, Some(queue))
        }
    };
    if let (Some(layer), Some(queue)) = (&metrics_layer, &log_queue) {
        layer.0.report_dropped_lines(queue.dropped().clone());
    }
    let subscriber = tracing_subscriber::registry()
        .with(EnvFilter::try_new(&config.log_filter)?)
        .with(metrics_layer)
        // Spans carry what the semantic conventions name, nothing of the
        // bridge's own: no source location, thread, target, or busy and
        // idle times (which would time every poll of every span's future).
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_location(false)
                .with_threads(false)
                .with_target(false)
                .with_tracked_inactivity(false),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .event_format(logs::JsonFormat::new(&config.service_name))
                .fmt_fields(logs::NoSpanFields)
                .with_writer(writer.clone()),
        );
    let dispatch = Dispatch::new(subscriber);
    sink.write_to(&dispatch, writer, &config.service_name);
    let export = export.map(|(counts, log)| {
        export::log_to(&log, &dispatch);
        counts
    });
    let guard = TelemetryGuard {
        provider,
        meters,
        export,
        logs: log_queue,
        dispatch: dispatch.clone(),
    };
    Ok((dispatch, guard))
}

/// An exporter that accepts every batch and sends it nowhere.
#[derive(Debug)]
struct DiscardExporter;

impl opentelemetry_sdk::trace::SpanExporter for DiscardExporter {
    async fn export(&self, _batch: Vec<opentelemetry_sdk::trace::SpanData>) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
}

/// W3C TraceContext and Baggage, process-wide. Idempotent.
fn install_propagator() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        use opentelemetry::propagation::TextMapCompositePropagator;
        use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
        opentelemetry::global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ]));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attribute_value_length_limit_is_read_from_its_standard_variable() {
        let set = Env::from_pairs([("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "256")]);
        let config = TelemetryConfig::from_env(&set, "api").unwrap();
        assert_eq!(config.attribute_value_length_limit, 256);

        let unset = TelemetryConfig::from_env(&Env::default(), "api").unwrap();
        assert_eq!(unset.attribute_value_length_limit, 1024);

        let bad = Env::from_pairs([("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "lots")]);
        let error = TelemetryConfig::from_env(&bad, "api").unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT must be a whole number, not "lots""#
        );
    }
}
