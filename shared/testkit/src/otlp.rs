//! An OTLP/gRPC receiver inside the test: the collector's `TraceService` and
//! `MetricsService` on a port-0 listener, keeping every span and metric data
//! point it is sent.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::{
        metrics::v1::{
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
            metrics_service_server::{MetricsService, MetricsServiceServer},
        },
        trace::v1::{
            ExportTraceServiceRequest, ExportTraceServiceResponse,
            trace_service_server::{TraceService, TraceServiceServer},
        },
    },
    common::v1::{AnyValue, KeyValue, any_value::Value},
    metrics::v1::{ResourceMetrics, metric::Data, number_data_point},
    trace::v1::ResourceSpans,
};
use tonic::{Request, Response, Status};

use crate::spans::{SpanKind, SpanRecord};

/// What the receiver was sent, kept as it arrived: turning it into
/// [`SpanRecord`]s waits until a test asks, so the receiver adds little work
/// to the process it shares with the services (benchmarks count on that).
#[derive(Clone, Default)]
struct Collected(Arc<Mutex<Received>>);

#[derive(Default)]
struct Received {
    batches: Vec<ResourceSpans>,
    spans: usize,
}

#[tonic::async_trait]
impl TraceService for Collected {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let batches = request.into_inner().resource_spans;
        let spans: usize = batches
            .iter()
            .flat_map(|batch| &batch.scope_spans)
            .map(|scope| scope.spans.len())
            .sum();
        let mut received = self.0.lock().expect("span store");
        received.batches.extend(batches);
        received.spans += spans;
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// The metric exports received, kept as they arrived.
#[derive(Clone, Default)]
struct CollectedMetrics(Arc<Mutex<Vec<ResourceMetrics>>>);

#[tonic::async_trait]
impl MetricsService for CollectedMetrics {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let batches = request.into_inner().resource_metrics;
        self.0.lock().expect("metric store").extend(batches);
        Ok(Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

/// One data point of one metric, as a service exported it.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricPoint {
    /// `service.name` of the exporting service.
    pub service: String,
    pub name: String,
    pub unit: String,
    /// The point's attributes, their values rendered as text.
    pub attributes: std::collections::BTreeMap<String, String>,
    pub value: PointValue,
    pub time_unix_nano: u64,
}

/// What a data point holds.
#[derive(Debug, Clone, PartialEq)]
pub enum PointValue {
    /// An explicit-bucket histogram: how many values, their sum, the
    /// buckets' upper bounds, and how many exemplars the point carries.
    Histogram {
        count: u64,
        sum: f64,
        bounds: Vec<f64>,
        exemplars: usize,
        cumulative: bool,
    },
    /// A sum (a counter), and whether it is cumulative.
    Sum { value: f64, cumulative: bool },
    /// A gauge's last value.
    Gauge(f64),
}

impl MetricPoint {
    /// The value of a sum or a gauge, or a histogram's count.
    pub fn number(&self) -> f64 {
        match &self.value {
            PointValue::Histogram { count, .. } => *count as f64,
            PointValue::Sum { value, .. } => *value,
            PointValue::Gauge(value) => *value,
        }
    }

    /// The value of attribute `key`, if the point has it.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

fn number(value: Option<&number_data_point::Value>) -> f64 {
    match value {
        Some(number_data_point::Value::AsDouble(value)) => *value,
        Some(number_data_point::Value::AsInt(value)) => *value as f64,
        None => 0.0,
    }
}

/// Cumulative temporality, as the protocol numbers it.
const CUMULATIVE: i32 = 2;

fn metric_points(batch: &ResourceMetrics) -> Vec<MetricPoint> {
    let service = service_name(batch.resource.as_ref());
    let mut points = Vec::new();
    for metric in batch.scope_metrics.iter().flat_map(|scope| &scope.metrics) {
        let point = |attributes: &[KeyValue], value, time_unix_nano| MetricPoint {
            service: service.clone(),
            name: metric.name.clone(),
            unit: metric.unit.clone(),
            attributes: self::attributes(attributes),
            value,
            time_unix_nano,
        };
        match &metric.data {
            Some(Data::Histogram(histogram)) => {
                points.extend(histogram.data_points.iter().map(|p| {
                    let value = PointValue::Histogram {
                        count: p.count,
                        sum: p.sum.unwrap_or_default(),
                        bounds: p.explicit_bounds.clone(),
                        exemplars: p.exemplars.len(),
                        cumulative: histogram.aggregation_temporality == CUMULATIVE,
                    };
                    point(&p.attributes, value, p.time_unix_nano)
                }));
            }
            Some(Data::Sum(sum)) => points.extend(sum.data_points.iter().map(|p| {
                let value = PointValue::Sum {
                    value: number(p.value.as_ref()),
                    cumulative: sum.aggregation_temporality == CUMULATIVE,
                };
                point(&p.attributes, value, p.time_unix_nano)
            })),
            Some(Data::Gauge(gauge)) => points.extend(gauge.data_points.iter().map(|p| {
                point(
                    &p.attributes,
                    PointValue::Gauge(number(p.value.as_ref())),
                    p.time_unix_nano,
                )
            })),
            _ => {}
        }
    }
    points
}

fn service_name(resource: Option<&opentelemetry_proto::tonic::resource::v1::Resource>) -> String {
    resource
        .and_then(|resource| resource.attributes.iter().find(|kv| kv.key == "service.name"))
        .and_then(|kv| kv.value.as_ref())
        .map(render)
        .unwrap_or_default()
}

fn micros(unix_nano: u64) -> i64 {
    i64::try_from(unix_nano / 1_000).unwrap_or(i64::MAX)
}

fn records(batch: &ResourceSpans) -> impl Iterator<Item = SpanRecord> + '_ {
    let service = service_name(batch.resource.as_ref());
    batch
        .scope_spans
        .iter()
        .flat_map(|scope| &scope.spans)
        .map(move |span| SpanRecord {
            trace_id: hex(&span.trace_id),
            span_id: hex(&span.span_id),
            parent_span_id: (!span.parent_span_id.is_empty()).then(|| hex(&span.parent_span_id)),
            name: span.name.clone(),
            kind: match span.kind {
                2 => SpanKind::Server,
                3 => SpanKind::Client,
                4 => SpanKind::Producer,
                5 => SpanKind::Consumer,
                _ => SpanKind::Internal,
            },
            service: service.clone(),
            attributes: attributes(&span.attributes),
            links: span.links.iter().map(|link| hex(&link.span_id)).collect(),
            start_us: micros(span.start_time_unix_nano),
            end_us: micros(span.end_time_unix_nano),
        })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn render(value: &AnyValue) -> String {
    match &value.value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attributes(kvs: &[KeyValue]) -> std::collections::BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), kv.value.as_ref().map(render).unwrap_or_default()))
        .collect()
}

/// A running receiver. Point `OTEL_EXPORTER_OTLP_ENDPOINT` at [`Self::endpoint`].
/// It stops when dropped.
pub struct OtlpReceiver {
    addr: SocketAddr,
    spans: Collected,
    metrics: CollectedMetrics,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl OtlpReceiver {
    /// Starts serving on `127.0.0.1:0`, on a thread of its own named
    /// [`Self::THREAD`], so that a benchmark can tell the receiver's CPU time
    /// (the collector's, in a real deployment) from the services'.
    pub async fn start() -> anyhow::Result<Self> {
        let spans = Collected::default();
        // Large batches (benchmarks export thousands of spans at once) exceed
        // tonic's default 4 MiB message limit.
        let service = TraceServiceServer::new(spans.clone()).max_decoding_message_size(256 * 1024 * 1024);
        let metrics = CollectedMetrics::default();
        let routes = tonic::service::Routes::new(service).add_service(MetricsServiceServer::new(metrics.clone()));
        let (addr, stop) = serve_on_own_thread(routes, "OTLP receiver")?;
        Ok(Self {
            addr,
            spans,
            metrics,
            _stop: stop,
        })
    }

    /// Every data point of the metric `name` received so far, in the order
    /// they arrived.
    pub fn metric_points(&self, name: &str) -> Vec<MetricPoint> {
        let received = self.metrics.0.lock().expect("metric store");
        received
            .iter()
            .flat_map(metric_points)
            .filter(|point| point.name == name)
            .collect()
    }

    /// The latest data point of the metric `name` for each service and set
    /// of attributes: with cumulative temporality, the values now.
    pub fn latest_points(&self, name: &str) -> Vec<MetricPoint> {
        let mut latest: Vec<MetricPoint> = Vec::new();
        for point in self.metric_points(name) {
            match latest
                .iter_mut()
                .find(|p| p.service == point.service && p.attributes == point.attributes)
            {
                Some(held) if held.time_unix_nano <= point.time_unix_nano => *held = point,
                Some(_) => {}
                None => latest.push(point),
            }
        }
        latest
    }

    /// Waits until the latest points of `name` satisfy `done`, up to
    /// `timeout`; returns them either way, for the test to assert on.
    pub async fn wait_for_metric(
        &self,
        name: &str,
        timeout: Duration,
        done: impl Fn(&[MetricPoint]) -> bool,
    ) -> Vec<MetricPoint> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let points = self.latest_points(name);
            if done(&points) || tokio::time::Instant::now() >= deadline {
                return points;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The name of the receiver's thread.
    pub const THREAD: &'static str = "otlp-receiver";

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<SpanRecord> {
        let received = self.spans.0.lock().expect("span store");
        received.batches.iter().flat_map(records).collect()
    }

    /// How many spans have arrived.
    pub fn count(&self) -> usize {
        self.spans.0.lock().expect("span store").spans
    }

    /// The spans of one trace.
    pub fn trace(&self, trace_id: &str) -> Vec<SpanRecord> {
        self.spans()
            .into_iter()
            .filter(|span| span.trace_id == trace_id)
            .collect()
    }

    /// Waits until the spans of `trace_id` satisfy `done`, up to `timeout`;
    /// returns them either way, for the test to assert on.
    pub async fn wait_for_trace(
        &self,
        trace_id: &str,
        timeout: Duration,
        done: impl Fn(&[SpanRecord]) -> bool,
    ) -> Vec<SpanRecord> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let spans = self.trace(trace_id);
            if done(&spans) || tokio::time::Instant::now() >= deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// An OTLP/gRPC receiver that only counts the spans it is sent, by name (and
/// the metric exports, unread):
/// what a benchmark points its services at, so that the receiving end (a
/// collector's work, on another machine in a deployment) costs the process
/// as little as it can. It decodes each span's name and skips the rest of
/// the span unread. Like [`OtlpReceiver`], it runs on a thread named
/// [`OtlpReceiver::THREAD`] and stops when dropped.
pub struct SpanCounter {
    addr: SocketAddr,
    counts: Counts,
    metric_exports: MetricExports,
    _stop: tokio::sync::oneshot::Sender<()>,
}

#[derive(Clone, Default)]
struct Counts(Arc<Mutex<std::collections::HashMap<String, usize>>>);

/// The export request, read for the span names alone: prost skips every
/// field a message here does not name.
mod light {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_spans: Vec<ResourceSpans>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceSpans {
        #[prost(message, repeated, tag = "2")]
        pub scope_spans: Vec<ScopeSpans>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeSpans {
        #[prost(message, repeated, tag = "2")]
        pub spans: Vec<Span>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Span {
        #[prost(string, tag = "5")]
        pub name: String,
    }
}

impl tonic::server::UnaryService<light::ExportRequest> for Counts {
    type Response = ExportTraceServiceResponse;
    type Future = std::future::Ready<Result<tonic::Response<Self::Response>, Status>>;

    fn call(&mut self, request: tonic::Request<light::ExportRequest>) -> Self::Future {
        let mut counts = self.0.lock().expect("span counts");
        for span in request
            .into_inner()
            .resource_spans
            .into_iter()
            .flat_map(|batch| batch.scope_spans)
            .flat_map(|scope| scope.spans)
        {
            *counts.entry(span.name).or_default() += 1;
        }
        std::future::ready(Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        })))
    }
}

/// The trace service's one method, served by [`Counts`].
#[derive(Clone)]
struct CountingService(Counts);

impl tonic::server::NamedService for CountingService {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

impl tower_service::Service<http::Request<tonic::body::Body>> for CountingService {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let counts = self.0.clone();
        Box::pin(async move {
            if request.uri().path() != "/opentelemetry.proto.collector.trace.v1.TraceService/Export" {
                return Ok(Status::unimplemented("only Export").into_http());
            }
            let codec = tonic_prost::ProstCodec::<ExportTraceServiceResponse, light::ExportRequest>::default();
            let mut grpc = tonic::server::Grpc::new(codec).max_decoding_message_size(256 * 1024 * 1024);
            Ok(grpc.unary(counts, request).await)
        })
    }
}

/// Metric exports, answered and counted, their contents unread.
#[derive(Clone, Default)]
struct MetricExports(Arc<std::sync::atomic::AtomicUsize>);

#[tonic::async_trait]
impl MetricsService for MetricExports {
    async fn export(
        &self,
        _request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

impl SpanCounter {
    /// Starts counting on `127.0.0.1:0`, on a thread of its own.
    pub fn start() -> anyhow::Result<Self> {
        let counts = Counts::default();
        let metric_exports = MetricExports::default();
        let routes = tonic::service::Routes::new(CountingService(counts.clone()))
            .add_service(MetricsServiceServer::new(metric_exports.clone()));
        let (addr, stop) = serve_on_own_thread(routes, "OTLP span counter")?;
        Ok(Self {
            addr,
            counts,
            metric_exports,
            _stop: stop,
        })
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many metric exports have arrived (their contents are not read).
    pub fn metric_exports(&self) -> usize {
        self.metric_exports.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many spans named `name` have arrived.
    pub fn count_of(&self, name: &str) -> usize {
        self.counts
            .0
            .lock()
            .expect("span counts")
            .get(name)
            .copied()
            .unwrap_or(0)
    }

    /// How many spans have arrived, whatever their names.
    pub fn count(&self) -> usize {
        self.counts.0.lock().expect("span counts").values().sum()
    }

    /// Waits until no span has arrived for `quiet` (at most `limit` in
    /// all), so a run's export has ended before the next run starts and
    /// none is charged for another's spans.
    pub async fn wait_quiet(&self, quiet: Duration, limit: Duration) {
        let started = std::time::Instant::now();
        let (mut last, mut since) = (self.count(), started);
        while since.elapsed() < quiet && started.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = self.count();
            if now != last {
                (last, since) = (now, std::time::Instant::now());
            }
        }
    }
}

/// The receivers' HTTP/2 flow-control window, per stream and per connection.
const RECEIVE_WINDOW: u32 = 8 << 20;

/// Serves `routes` on `127.0.0.1:0` on a thread of its own named
/// [`OtlpReceiver::THREAD`], until the returned sender is dropped.
fn serve_on_own_thread(
    routes: tonic::service::Routes,
    what: &'static str,
) -> anyhow::Result<(SocketAddr, tokio::sync::oneshot::Sender<()>)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new()
        .name(OtlpReceiver::THREAD.to_owned())
        .spawn(move || {
            runtime.block_on(async move {
                let incoming = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => tokio_stream::wrappers::TcpListenerStream::new(listener),
                    Err(error) => return eprintln!("{what} cannot listen: {error}"),
                };
                let stopped = async move {
                    let _ = stopped.await;
                };
                // Flow-control windows as large as a collector's grow to (Go's
                // gRPC sizes them by the measured bandwidth), so an export
                // of a large batch is not cut into 64 KiB round trips.
                if let Err(error) = tonic::transport::Server::builder()
                    .initial_stream_window_size(RECEIVE_WINDOW)
                    .initial_connection_window_size(RECEIVE_WINDOW)
                    .add_routes(routes)
                    .serve_with_incoming_shutdown(incoming, stopped)
                    .await
                {
                    eprintln!("{what} stopped: {error}");
                }
            })
        })?;
    Ok((addr, stop))
}
