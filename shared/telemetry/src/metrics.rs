//! Metrics over OTLP: the semantic conventions' request durations, recorded
//! by the shared hops (so no handler records one), and the project's own
//! (`callchain.*`), recorded where each thing happens.
//!
//! [`crate::build`] sets up one `SdkMeterProvider` per service, whose
//! `PeriodicReader` exports every [`OTEL_METRIC_EXPORT_INTERVAL`]
//! milliseconds to the span endpoint, with cumulative temporality (what a
//! Prometheus-compatible store takes). The service's [`Instruments`] ride
//! in its tracing dispatcher (see [`with`]), so a hop finds the instruments
//! of the service it runs in, in a binary and in a test process that runs
//! three services alike. Without metrics ([`OTEL_METRICS_EXPORTER`]`=none`,
//! or no endpoint) nothing is recorded.
//!
//! Every name, unit and attribute is listed in `docs/metrics.md`.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use callchain_runtime::env::Setting;
pub use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider as _};
use opentelemetry_sdk::{
    Resource,
    metrics::{PeriodicReader, SdkMeterProvider, Temporality},
};
use tracing::Subscriber;

/// `OTEL_METRICS_EXPORTER`: whether metrics are exported.
pub const OTEL_METRICS_EXPORTER: Setting = Setting {
    name: "OTEL_METRICS_EXPORTER",
    default: Some("otlp"),
    doc: "`otlp` exports metrics to `OTEL_EXPORTER_OTLP_ENDPOINT` beside the spans; `none` records and exports \
          none (`make bench` measures their price against it).",
};

/// `OTEL_METRIC_EXPORT_INTERVAL`: milliseconds between two exports.
pub const OTEL_METRIC_EXPORT_INTERVAL: Setting = Setting {
    name: "OTEL_METRIC_EXPORT_INTERVAL",
    default: Some("10000"),
    doc: "Milliseconds between two metric exports. The standard's default is 60000; 10000 shows a request in the \
          store within seconds on a development stack, at the cost of one small export per service every 10 s \
          (the values are cumulative, so a longer interval loses resolution, never counts).",
};

/// The semantic conventions' advice for durations in seconds.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Whether metrics are exported, as [`OTEL_METRICS_EXPORTER`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsExporter {
    Otlp,
    None,
}

impl std::str::FromStr for MetricsExporter {
    type Err = ();

    fn from_str(value: &str) -> Result<Self, ()> {
        match value.trim() {
            "otlp" => Ok(Self::Otlp),
            "none" => Ok(Self::None),
            _ => Err(()),
        }
    }
}

/// The instruments of one service. The semantic conventions' are recorded
/// by the hops of this crate; the project's own by the services, through
/// [`with`].
#[derive(Debug)]
pub struct Instruments {
    meter: Meter,
    http_server_duration: Histogram<f64>,
    rpc_client_duration: Histogram<f64>,
    rpc_server_duration: Histogram<f64>,
    pub(crate) db_client_duration: Histogram<f64>,
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))]
    pub(crate) messaging_sent: Counter<u64>,
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))]
    pub(crate) messaging_process_duration: Histogram<f64>,
    upstream_retries: Counter<u64>,
    shed: Counter<u64>,
    throttled: Counter<u64>,
}

fn duration(meter: &Meter, name: &'static str, description: &'static str) -> Histogram<f64> {
    meter
        .f64_histogram(name)
        .with_unit("s")
        .with_description(description)
        .with_boundaries(DURATION_BUCKETS.to_vec())
        .build()
}

fn counter(meter: &Meter, name: &'static str, unit: &'static str, description: &'static str) -> Counter<u64> {
    meter
        .u64_counter(name)
        .with_unit(unit)
        .with_description(description)
        .build()
}

impl Instruments {
    fn new(meter: Meter) -> Self {
        Self {
            http_server_duration: duration(
                &meter,
                "http.server.request.duration",
                "Duration of HTTP server requests.",
            ),
            rpc_client_duration: duration(&meter, "rpc.client.call.duration", "Duration of outbound gRPC calls."),
            rpc_server_duration: duration(&meter, "rpc.server.call.duration", "Duration of inbound gRPC calls."),
            db_client_duration: duration(
                &meter,
                "db.client.operation.duration",
                "Duration of database client operations.",
            ),
            messaging_sent: counter(
                &meter,
                "messaging.client.sent.messages",
                "{message}",
                "Messages a producer attempted to send to the broker.",
            ),
            messaging_process_duration: duration(
                &meter,
                "messaging.process.duration",
                "Duration of processing operations.",
            ),
            upstream_retries: counter(
                &meter,
                "callchain.upstream.retries",
                "{retry}",
                "gRPC calls to the user service sent again after a failure.",
            ),
            shed: counter(
                &meter,
                "callchain.http.shed",
                "{request}",
                "Requests refused with 503 because API_MAX_IN_FLIGHT were in flight.",
            ),
            throttled: counter(
                &meter,
                "callchain.throttled",
                "{request}",
                "Logins and registrations refused with 429 by their limits.",
            ),
            meter,
        }
    }

    /// Reports the spans of failed exports (`callchain.spans.dropped`),
    /// read from the span exporter's counts at each metric export.
    pub(crate) fn report_dropped_spans(&self, counts: std::sync::Weak<crate::export::ExportCounts>) {
        self.meter
            .u64_observable_counter("callchain.spans.dropped")
            .with_unit("{span}")
            .with_description("Spans whose export failed: the trace backend never gets them.")
            .with_callback(move |counter| {
                if let Some(counts) = counts.upgrade() {
                    counter.observe(counts.dropped(), &[]);
                }
            })
            .build();
    }

    /// Reports the log lines the queue to stdout dropped when full
    /// (`callchain.logs.dropped`), read at each metric export.
    pub(crate) fn report_dropped_lines(&self, dropped: crate::logs::DroppedLines) {
        self.meter
            .u64_observable_counter("callchain.logs.dropped")
            .with_unit("{line}")
            .with_description("Log lines dropped because the queue to stdout was full (LOG_QUEUE_LINES).")
            .with_callback(move |counter| counter.observe(dropped.count(), &[]))
            .build();
    }
}

/// Runs `record` with the instruments of the service the calling thread
/// works for; `None` when that service records no metrics.
pub fn with<R>(record: impl FnOnce(&Instruments) -> R) -> Option<R> {
    let mut record = Some(record);
    tracing::dispatcher::get_default(|dispatch| {
        let layer = dispatch.downcast_ref::<MetricsLayer>()?;
        record.take().map(|record| record(&layer.0))
    })
}

/// The meter of the service the calling thread works for, for the
/// instruments a service keeps itself (observable gauges of its own
/// state); `None` when it records no metrics.
pub fn meter() -> Option<Meter> {
    with(|metrics| metrics.meter.clone())
}

/// A tracing layer that records nothing: it carries the service's
/// instruments in its dispatcher, where [`with`] finds them.
pub(crate) struct MetricsLayer(pub(crate) Arc<Instruments>);

impl<S: Subscriber> tracing_subscriber::Layer<S> for MetricsLayer {}

/// A service's metrics: the layer that carries its instruments, and the
/// provider the guard flushes and shuts down.
pub(crate) struct Metrics {
    pub(crate) layer: MetricsLayer,
    pub(crate) provider: SdkMeterProvider,
}

/// How long one export may take, as for spans.
const TIMEOUT: Duration = Duration::from_secs(10);

impl Metrics {
    /// A provider exporting to `endpoint` every `interval`, connecting
    /// lazily (the collector may be down when the service starts). Must be
    /// called on a Tokio runtime, which then carries the connection.
    pub(crate) fn otlp(endpoint: &str, interval: Duration, resource: Resource) -> Result<Self, crate::TelemetryError> {
        use opentelemetry_otlp::{WithExportConfig as _, WithTonicConfig as _};
        let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())?
            .timeout(TIMEOUT)
            .connect_lazy();
        let exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .with_channel(channel)
            .with_timeout(TIMEOUT)
            .with_temporality(Temporality::Cumulative)
            .build()?;
        let reader = PeriodicReader::builder(exporter).with_interval(interval).build();
        let provider = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(reader)
            .build();
        let meter = provider.meter("callchain");
        Ok(Self {
            layer: MetricsLayer(Arc::new(Instruments::new(meter))),
            provider,
        })
    }
}

/// Counts one gRPC call sent again (`callchain.upstream.retries`), by its
/// full method (`/user.v1.UserService/CreateUser`).
pub fn count_retry(path: &str) {
    with(|metrics| {
        let attributes = match path.strip_prefix('/').and_then(|path| path.split_once('/')) {
            Some((service, method)) => vec![
                KeyValue::new("rpc.service", service.to_owned()),
                KeyValue::new("rpc.method", method.to_owned()),
            ],
            None => Vec::new(),
        };
        metrics.upstream_retries.add(1, &attributes);
    });
}

/// Counts `n` requests (or JSON-RPC calls) refused because the service
/// was serving as many as it may (`callchain.http.shed`).
pub fn count_shed(n: u64) {
    with(|metrics| metrics.shed.add(n, &[]));
}

/// Counts one request refused by a throttle (`callchain.throttled`);
/// `throttle` names it: `login` or `registration`.
pub fn count_throttled(throttle: &'static str) {
    with(|metrics| {
        metrics
            .throttled
            .add(1, &[KeyValue::new("callchain.throttle", throttle)])
    });
}

/// The time a call took, in seconds.
fn seconds(started: Instant) -> f64 {
    started.elapsed().as_secs_f64()
}

/// Records one HTTP server request.
pub(crate) fn http_server(started: Instant, method: &str, route: Option<&str>, status: u16) {
    with(|metrics| {
        let mut attributes = Vec::with_capacity(3);
        attributes.push(KeyValue::new("http.request.method", method.to_owned()));
        if let Some(route) = route {
            attributes.push(KeyValue::new("http.route", route.to_owned()));
        }
        attributes.push(KeyValue::new("http.response.status_code", i64::from(status)));
        metrics.http_server_duration.record(seconds(started), &attributes);
    });
}

/// Records one gRPC call, on the client's side or the server's.
pub(crate) fn rpc(started: Instant, server: bool, service: &str, method: &str, code: i32) {
    with(|metrics| {
        let attributes = [
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.service", service.to_owned()),
            KeyValue::new("rpc.method", method.to_owned()),
            KeyValue::new("rpc.grpc.status_code", i64::from(code)),
        ];
        let histogram = if server {
            &metrics.rpc_server_duration
        } else {
            &metrics.rpc_client_duration
        };
        histogram.record(seconds(started), &attributes);
    });
}
