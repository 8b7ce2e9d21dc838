//! OTLP/gRPC span export, encoded straight from the SDK's span data.
//!
//! `opentelemetry-otlp` first converts every span into the generated
//! protobuf structs (a `Vec` per id, a `String` per attribute key and value,
//! a struct per attribute, event and link), groups them through a hash map
//! of scopes, encodes the structs, and frees them all. With every request
//! sampled that was most of the cost of export. [`OtlpExporter`] writes
//! the same `ExportTraceServiceRequest` bytes in one pass over the spans
//! and sends them with tonic: the message is the one the collector's
//! `TraceService/Export` expects, field for field (the tests decode it with
//! the generated types and compare it with what `opentelemetry-proto`
//! makes of the same spans).

use std::time::Duration;

use opentelemetry::{
    Array, Value,
    trace::{SpanId, SpanKind, Status},
};
use opentelemetry_sdk::{
    Resource,
    error::{OTelSdkError, OTelSdkResult},
    trace::{SpanData, SpanExporter},
};
use prost::bytes::{Buf as _, BufMut as _, Bytes};
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// The collector's method.
const EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// How long one export may take, as `opentelemetry-otlp` allows by default.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Exports spans to an OTLP/gRPC endpoint; see the module docs.
#[derive(Debug)]
pub struct OtlpExporter {
    channel: tonic::transport::Channel,
    resource: EncodedResource,
}

/// The service's `Resource` message, encoded once, and its schema.
#[derive(Debug, Default)]
pub(crate) struct EncodedResource {
    message: Vec<u8>,
    schema_url: String,
}

impl From<&Resource> for EncodedResource {
    fn from(resource: &Resource) -> Self {
        let mut message = Vec::new();
        for (key, value) in resource.iter() {
            self::message(&mut message, 1, |out| key_value(out, key.as_str(), value));
        }
        Self {
            message,
            schema_url: resource.schema_url().unwrap_or_default().to_owned(),
        }
    }
}

impl OtlpExporter {
    /// Connects lazily to `endpoint` (`http://host:4317`), so a service
    /// starts while its collector is still down. Must be called on a Tokio
    /// runtime, which then carries the connection.
    pub fn new(endpoint: &str) -> Result<Self, tonic::transport::Error> {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())?
            .timeout(TIMEOUT)
            .connect_lazy();
        Ok(Self {
            channel,
            resource: EncodedResource::default(),
        })
    }
}

impl SpanExporter for OtlpExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let request = encode_request(&self.resource, &batch);
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready()
            .await
            .map_err(|error| OTelSdkError::InternalFailure(format!("the OTLP endpoint is not ready: {error}")))?;
        let path = http::uri::PathAndQuery::from_static(EXPORT);
        let response = grpc
            .unary(tonic::Request::new(request), path, RawCodec)
            .await
            .map_err(|status| OTelSdkError::InternalFailure(format!("OTLP export failed: {status}")))?;
        match rejected(response.into_inner()) {
            0 => Ok(()),
            spans => Err(OTelSdkError::InternalFailure(format!(
                "the OTLP endpoint rejected {spans} of {} spans",
                batch.len()
            ))),
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = EncodedResource::from(resource);
    }
}

/// `ExportTraceServiceRequest { resource_spans: [ResourceSpans { resource,
/// scope_spans: one per instrumentation scope, schema_url }] }`.
pub(crate) fn encode_request(resource: &EncodedResource, spans: &[SpanData]) -> Bytes {
    // A service has one or two scopes: a list beats a hash map.
    let mut scopes: Vec<(&opentelemetry::InstrumentationScope, Vec<&SpanData>)> = Vec::new();
    for span in spans {
        match scopes
            .iter_mut()
            .find(|(scope, _)| **scope == span.instrumentation_scope)
        {
            Some((_, own)) => own.push(span),
            None => scopes.push((&span.instrumentation_scope, vec![span])),
        }
    }
    let mut out = Vec::with_capacity(spans.len() * 320 + resource.message.len() + 64);
    if spans.is_empty() {
        return out.into();
    }
    message(&mut out, 1, |out| {
        message(out, 1, |out| out.extend_from_slice(&resource.message));
        for (scope, spans) in &scopes {
            message(out, 2, |out| {
                message(out, 1, |out| {
                    string(out, 1, scope.name());
                    string(out, 2, scope.version().unwrap_or_default());
                    for attribute in scope.attributes() {
                        message(out, 3, |out| key_value(out, attribute.key.as_str(), &attribute.value));
                    }
                });
                for span in spans {
                    message(out, 2, |out| encode_span(out, span));
                }
                string(out, 3, scope.schema_url().unwrap_or_default());
            });
        }
        string(out, 3, &resource.schema_url);
    });
    out.into()
}

/// One `Span` message.
fn encode_span(out: &mut Vec<u8>, span: &SpanData) {
    let context = &span.span_context;
    bytes(out, 1, &context.trace_id().to_bytes());
    bytes(out, 2, &context.span_id().to_bytes());
    string(out, 3, &context.trace_state().header());
    if span.parent_span_id != SpanId::INVALID {
        bytes(out, 4, &span.parent_span_id.to_bytes());
    }
    string(out, 5, &span.name);
    varint(out, 6, kind(&span.span_kind));
    fixed64(out, 7, nanos(span.start_time));
    fixed64(out, 8, nanos(span.end_time));
    for attribute in &span.attributes {
        message(out, 9, |out| key_value(out, attribute.key.as_str(), &attribute.value));
    }
    varint(out, 10, u64::from(span.dropped_attributes_count));
    for event in span.events.iter() {
        message(out, 11, |out| {
            fixed64(out, 1, nanos(event.timestamp));
            string(out, 2, &event.name);
            for attribute in &event.attributes {
                message(out, 3, |out| key_value(out, attribute.key.as_str(), &attribute.value));
            }
            varint(out, 4, u64::from(event.dropped_attributes_count));
        });
    }
    varint(out, 12, u64::from(span.events.dropped_count));
    for link in span.links.iter() {
        let linked = &link.span_context;
        message(out, 13, |out| {
            bytes(out, 1, &linked.trace_id().to_bytes());
            bytes(out, 2, &linked.span_id().to_bytes());
            string(out, 3, &linked.trace_state().header());
            for attribute in &link.attributes {
                message(out, 4, |out| key_value(out, attribute.key.as_str(), &attribute.value));
            }
            varint(out, 5, u64::from(link.dropped_attributes_count));
            fixed32(out, 6, flags(linked.is_remote(), linked.trace_flags().to_u8()));
        });
    }
    varint(out, 14, u64::from(span.links.dropped_count));
    message(out, 15, |out| {
        let (code, description) = match &span.status {
            Status::Unset => (0, ""),
            Status::Ok => (1, ""),
            Status::Error { description } => (2, description.as_ref()),
        };
        string(out, 2, description);
        varint(out, 3, code);
    });
    fixed32(
        out,
        16,
        flags(span.parent_span_is_remote, context.trace_flags().to_u8()),
    );
}

/// `SpanFlags`: the W3C trace flags, and whether the parent was remote
/// (bit 9 says the bit is known, bit 10 is its value).
fn flags(remote: bool, trace_flags: u8) -> u32 {
    u32::from(trace_flags) | 0x100 | if remote { 0x200 } else { 0 }
}

fn kind(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

fn nanos(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64)
}

/// `KeyValue { key, value: AnyValue }`.
fn key_value(out: &mut Vec<u8>, key: &str, value: &Value) {
    string(out, 1, key);
    message(out, 2, |out| any_value(out, value));
}

/// The body of an `AnyValue`: its one `oneof` field, written even when it
/// holds its type's zero (that is what says which type it is).
fn any_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::String(text) => {
            encode_key(1, WireType::LengthDelimited, out);
            encode_varint(text.as_str().len() as u64, out);
            out.extend_from_slice(text.as_str().as_bytes());
        }
        Value::Bool(flag) => {
            encode_key(2, WireType::Varint, out);
            encode_varint(u64::from(*flag), out);
        }
        Value::I64(number) => {
            encode_key(3, WireType::Varint, out);
            encode_varint(*number as u64, out);
        }
        Value::F64(number) => {
            encode_key(4, WireType::SixtyFourBit, out);
            out.put_f64_le(*number);
        }
        Value::Array(array) => message(out, 5, |out| {
            let mut each = |value: Value| message(out, 1, |out| any_value(out, &value));
            match array {
                Array::Bool(values) => values.iter().for_each(|v| each(Value::Bool(*v))),
                Array::I64(values) => values.iter().for_each(|v| each(Value::I64(*v))),
                Array::F64(values) => values.iter().for_each(|v| each(Value::F64(*v))),
                Array::String(values) => values.iter().for_each(|v| each(Value::String(v.clone()))),
                other => each(Value::String(other.to_string().into())),
            }
        }),
        other => any_value(out, &Value::String(other.to_string().into())),
    }
}

/// A length-delimited field whose body `body` writes: one byte is kept
/// for the length, and the body moves up in the rare case it needs more.
fn message(out: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    encode_key(field, WireType::LengthDelimited, out);
    let at = out.len();
    out.push(0);
    body(out);
    let len = out.len() - at - 1;
    let width = encoded_len_varint(len as u64);
    if width > 1 {
        out.resize(out.len() + width - 1, 0);
        out.copy_within(at + 1..at + 1 + len, at + width);
    }
    encode_varint(len as u64, &mut &mut out[at..at + width]);
}

/// A string field; proto3 leaves an empty one out.
fn string(out: &mut Vec<u8>, field: u32, text: &str) {
    bytes(out, field, text.as_bytes());
}

/// A bytes field; proto3 leaves an empty one out.
fn bytes(out: &mut Vec<u8>, field: u32, data: &[u8]) {
    if !data.is_empty() {
        encode_key(field, WireType::LengthDelimited, out);
        encode_varint(data.len() as u64, out);
        out.extend_from_slice(data);
    }
}

fn varint(out: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        encode_key(field, WireType::Varint, out);
        encode_varint(value, out);
    }
}

fn fixed64(out: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        encode_key(field, WireType::SixtyFourBit, out);
        out.put_u64_le(value);
    }
}

fn fixed32(out: &mut Vec<u8>, field: u32, value: u32) {
    if value != 0 {
        encode_key(field, WireType::ThirtyTwoBit, out);
        out.put_u32_le(value);
    }
}

/// How many spans an `ExportTraceServiceResponse` says were rejected: its
/// `partial_success.rejected_spans`, 0 when it has none.
fn rejected(response: Bytes) -> i64 {
    use prost::Message as _;
    opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse::decode(response)
        .ok()
        .and_then(|response| response.partial_success)
        .map_or(0, |partial| partial.rejected_spans)
}

/// Sends encoded bytes as they are, and hands back the answer's bytes.
#[derive(Debug, Clone, Copy)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

#[cfg(test)]
mod tests {
    use std::{borrow::Cow, time::SystemTime};

    use opentelemetry::{
        InstrumentationScope,
        trace::{Event, Link, SpanContext, TraceFlags, TraceId, TraceState},
    };
    use opentelemetry_proto::{
        tonic::collector::trace::v1::ExportTraceServiceRequest,
        transform::{common::tonic::ResourceAttributesWithSchema, trace::tonic::group_spans_by_resource_and_scope},
    };
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use prost::Message as _;

    use opentelemetry::KeyValue;

    use super::*;

    fn context(trace: u128, span: u64, remote: bool) -> SpanContext {
        SpanContext::new(
            TraceId::from(trace),
            SpanId::from(span),
            TraceFlags::SAMPLED,
            remote,
            TraceState::from_key_value([("vendor", "value")]).unwrap(),
        )
    }

    /// A span with every part a span can have: attributes of every type,
    /// an event, a link, an error status, a remote parent.
    fn full_span(scope: &InstrumentationScope) -> SpanData {
        let mut events = SpanEvents::default();
        events.events.push(Event::new(
            "exception",
            SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_000_500),
            vec![KeyValue::new("exception.message", "boom")],
            2,
        ));
        events.dropped_count = 1;
        let mut links = SpanLinks::default();
        links.links.push(Link::new(
            context(7, 8, true),
            vec![KeyValue::new("messaging.batch", true)],
            0,
        ));
        SpanData {
            span_context: context(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736, 0x00f0_67aa_0ba9_02b7, false),
            parent_span_id: SpanId::from(0x1234),
            parent_span_is_remote: true,
            span_kind: SpanKind::Server,
            name: Cow::Borrowed("GET /v1/users/{id}"),
            start_time: SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_000_000),
            end_time: SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_900_000),
            attributes: vec![
                KeyValue::new("http.request.method", "GET"),
                KeyValue::new("http.response.status_code", 200_i64),
                KeyValue::new("http.response.status_code.negative", -3_i64),
                KeyValue::new("sampled", false),
                KeyValue::new("ratio", 0.25),
                KeyValue::new("empty", ""),
                KeyValue::new("zero", 0_i64),
                KeyValue::new("tags", Value::Array(Array::String(vec!["a".into(), "b".into()]))),
                KeyValue::new("codes", Value::Array(Array::I64(vec![1, 2, 3]))),
                // Long enough that its message needs a two-byte length.
                KeyValue::new("db.query.text", "SELECT 1 ".repeat(40)),
            ],
            dropped_attributes_count: 4,
            events,
            links,
            status: Status::error("the user service was unavailable"),
            instrumentation_scope: scope.clone(),
        }
    }

    fn plain_span(scope: &InstrumentationScope, n: u64) -> SpanData {
        SpanData {
            span_context: context(u128::from(n) + 1, n + 1, false),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Client,
            name: Cow::Owned(format!("span {n}")),
            start_time: SystemTime::UNIX_EPOCH + Duration::from_secs(n + 1),
            end_time: SystemTime::UNIX_EPOCH + Duration::from_secs(n + 2),
            attributes: vec![KeyValue::new("rpc.system", "grpc")],
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: scope.clone(),
        }
    }

    /// What `opentelemetry-otlp` would have sent for `spans`.
    fn reference(resource: &Resource, spans: Vec<SpanData>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(spans, &ResourceAttributesWithSchema::from(resource)),
        }
    }

    fn ours(resource: &Resource, spans: &[SpanData]) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest::decode(encode_request(&EncodedResource::from(resource), spans))
            .expect("a valid message")
    }

    #[test]
    fn the_request_is_the_one_opentelemetry_proto_makes_of_the_same_spans() {
        let resource = Resource::builder()
            .with_service_name("api")
            .with_attribute(KeyValue::new("service.version", "1.2.3"))
            .with_schema_url([], "https://opentelemetry.io/schemas/1.30.0")
            .build();
        let api = InstrumentationScope::builder("api").with_version("0.1.0").build();
        let other = InstrumentationScope::builder("other")
            .with_attributes([KeyValue::new("scope.kind", "library")])
            .with_schema_url("https://opentelemetry.io/schemas/1.30.0")
            .build();
        let mut spans = vec![full_span(&api)];
        spans.extend((0..300).map(|n| plain_span(if n % 3 == 0 { &other } else { &api }, n)));
        assert_eq!(ours(&resource, &spans), reference(&resource, spans));
    }

    #[test]
    fn no_spans_make_an_empty_request() {
        let resource = Resource::builder().with_service_name("api").build();
        assert_eq!(ours(&resource, &[]), ExportTraceServiceRequest::default());
    }

    #[test]
    fn a_body_longer_than_127_bytes_gets_a_longer_length() {
        let mut out = Vec::new();
        message(&mut out, 1, |out| out.extend_from_slice(&[7; 300]));
        assert_eq!(&out[..3], &[0x0a, 0xac, 0x02]);
        assert_eq!(out.len(), 303);
        assert!(out[3..].iter().all(|&byte| byte == 7));
    }
}
