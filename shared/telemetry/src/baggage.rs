//! W3C baggage: what a service accepts from its callers, and the caller's id
//! that travels with every request.
//!
//! The API puts the id of a signed-in caller, taken from its verified token,
//! into the baggage of the request's context ([`with_enduser`]). The gRPC
//! client layer and the Kafka producer inject that context, so the id crosses
//! every hop beside `traceparent`; the user service's server span and the
//! consumer's process span record it as the attribute [`ENDUSER_ID`].
//!
//! Incoming baggage is read through a [`BaggagePolicy`]. From outside (the
//! API's HTTP edge) it is untrusted: only the keys the service names are kept
//! and the header is small, so a client can neither claim to be someone else
//! nor make the services carry its payload. Between our own services (gRPC
//! metadata, Kafka headers) it is trusted, but still held to the W3C limits.
//! Baggage over a limit is dropped whole: never cut into a partial list. An
//! entry keeps its value only, never its properties (see
//! `BaggagePolicy::restrict`).

use std::future::Future;

use opentelemetry::{
    Context,
    baggage::{Baggage, BaggageExt as _, BaggageMetadata},
    context::FutureExt as _,
    propagation::Extractor,
};
use tracing::Span;

/// The caller's user id, as a baggage key and as a span attribute: the
/// OpenTelemetry semantic conventions' name for the end user.
pub const ENDUSER_ID: &str = "enduser.id";

/// The W3C Baggage header, in HTTP headers, gRPC metadata and Kafka headers.
const HEADER: &str = "baggage";

/// How much incoming baggage a service accepts, and which keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaggagePolicy {
    /// A longer `baggage` header is ignored unread.
    max_bytes: usize,
    /// More entries than this (of those kept) and none is kept.
    max_entries: usize,
    /// The keys kept; `None` keeps every key.
    keys: Option<&'static [&'static str]>,
}

impl BaggagePolicy {
    /// Baggage our own services wrote: every key, within the limits W3C
    /// Baggage asks every platform to propagate (8192 bytes, 64 entries).
    pub const TRUSTED: Self = Self {
        max_bytes: 8192,
        max_entries: 64,
        keys: None,
    };

    /// Baggage from outside: only the entries named in `keys` (never
    /// [`ENDUSER_ID`], which only the API itself may set), from a `baggage`
    /// header of at most 4096 bytes, at most 8 of them.
    pub const fn untrusted(keys: &'static [&'static str]) -> Self {
        Self {
            max_bytes: 4096,
            max_entries: 8,
            keys: Some(keys),
        }
    }

    /// The context `extractor` carries (trace context and baggage), with its
    /// baggage held to this policy.
    pub fn extract(&self, extractor: &dyn Extractor) -> Context {
        let bounded = Bounded {
            inner: extractor,
            max_bytes: self.max_bytes,
        };
        let context = opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&bounded));
        self.restrict(context)
    }

    /// `context` with only the baggage this policy keeps, each entry's value
    /// without its properties.
    ///
    /// Properties are never kept: the SDK percent-decodes them on the way
    /// in and writes them back as they are on the way out, so a property
    /// `%2Cenduser.id%3D<id>` would become a whole entry `enduser.id=<id>` at
    /// the next hop. None of our services sets one; a value alone is
    /// re-encoded when it is sent on.
    fn restrict(&self, context: Context) -> Context {
        let baggage = context.baggage();
        let has_properties = baggage
            .iter()
            .any(|(_, (_, properties))| !properties.as_str().is_empty());
        if self.keys.is_none() && baggage.len() <= self.max_entries && !has_properties {
            return context; // the common case costs nothing
        }
        let kept: Vec<_> = baggage
            .iter()
            .filter(|(key, _)| self.keys.is_none_or(|keys| keys.contains(&key.as_str())))
            .map(|(key, (value, _))| (key.clone(), (value.clone(), BaggageMetadata::default())))
            .collect();
        if kept.len() > self.max_entries {
            return context.with_cleared_baggage();
        }
        context.with_baggage(kept.into_iter().collect::<Baggage>())
    }
}

/// Hides a `baggage` header longer than `max_bytes`, so it is never parsed.
struct Bounded<'a> {
    inner: &'a dyn Extractor,
    max_bytes: usize,
}

impl Extractor for Bounded<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let value = self.inner.get(key)?;
        (!key.eq_ignore_ascii_case(HEADER) || value.len() <= self.max_bytes).then_some(value)
    }

    fn keys(&self) -> Vec<&str> {
        self.inner.keys()
    }
}

/// The caller's id in `context`'s baggage.
pub fn enduser_id(context: &Context) -> Option<&str> {
    context.baggage().get(ENDUSER_ID).map(|id| id.as_str())
}

/// `context` whose baggage names `id` as the caller, or no caller for `None`
/// (a guest), whatever it named before. The rest of the baggage is kept.
pub fn with_enduser_id(context: &Context, id: Option<&str>) -> Context {
    let others = context
        .baggage()
        .iter()
        .filter(|(key, _)| key.as_str() != ENDUSER_ID)
        .map(|(key, entry)| (key.clone(), entry.clone()));
    let caller = id.map(|id| (ENDUSER_ID.into(), (id.to_owned().into(), Default::default())));
    context.with_baggage(others.chain(caller).collect::<Baggage>())
}

/// Runs `future` with `id` as the caller in the baggage of the current
/// context (see [`with_enduser_id`]): every span it opens inherits that
/// baggage, and every gRPC call and Kafka message it sends carries it.
pub fn with_enduser<F: Future>(id: Option<&str>, future: F) -> impl Future<Output = F::Output> {
    future.with_context(with_enduser_id(&Context::current(), id))
}

/// Records the caller's id in `context`'s baggage, if any, as the
/// `enduser.id` attribute of `span` (which must declare that field).
pub fn record_enduser(span: &Span, context: &Context) {
    if let Some(id) = enduser_id(context) {
        span.record(ENDUSER_ID, id);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn headers(baggage: &str) -> HashMap<String, String> {
        crate::install_propagator();
        HashMap::from([(HEADER.to_owned(), baggage.to_owned())])
    }

    fn entries(context: &Context) -> Vec<(String, String)> {
        let mut entries: Vec<_> = context
            .baggage()
            .iter()
            .map(|(key, (value, _))| (key.to_string(), value.to_string()))
            .collect();
        entries.sort();
        entries
    }

    fn pair(key: &str, value: &str) -> (String, String) {
        (key.to_owned(), value.to_owned())
    }

    #[test]
    fn trusted_baggage_keeps_every_key() {
        let context = BaggagePolicy::TRUSTED.extract(&headers("enduser.id=u-1,session.id=s-1,tenant=acme"));
        assert_eq!(
            entries(&context),
            [
                pair("enduser.id", "u-1"),
                pair("session.id", "s-1"),
                pair("tenant", "acme")
            ]
        );
        assert_eq!(enduser_id(&context), Some("u-1"));
    }

    #[test]
    fn untrusted_baggage_keeps_only_the_allowed_keys() {
        let policy = BaggagePolicy::untrusted(&["session.id"]);
        let context = policy.extract(&headers("enduser.id=someone-else,session.id=s-1,tenant=acme"));
        assert_eq!(entries(&context), [pair("session.id", "s-1")]);
        assert_eq!(enduser_id(&context), None);
    }

    #[test]
    fn an_untrusted_policy_with_no_keys_keeps_nothing() {
        let context = BaggagePolicy::untrusted(&[]).extract(&headers("session.id=s-1"));
        assert!(context.baggage().is_empty());
    }

    #[test]
    fn a_header_over_the_byte_limit_is_dropped_unread() {
        let padding = "x".repeat(20 * 1024);
        let oversized = format!("session.id=s-1,padding={padding}");
        let untrusted = BaggagePolicy::untrusted(&["session.id"]);
        assert!(untrusted.extract(&headers(&oversized)).baggage().is_empty());
        assert!(
            BaggagePolicy::TRUSTED
                .extract(&headers(&oversized))
                .baggage()
                .is_empty()
        );

        // Just within the limit, it is read.
        let fits = format!("session.id=s-1,padding={}", "x".repeat(4096 - 23));
        assert_eq!(fits.len(), 4096);
        assert_eq!(
            entries(&untrusted.extract(&headers(&fits))),
            [pair("session.id", "s-1")]
        );
    }

    #[test]
    fn more_entries_than_the_limit_are_dropped_whole() {
        const NINE: &[&str] = &["k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8"];
        let policy = BaggagePolicy::untrusted(NINE);
        let nine = NINE.iter().map(|key| format!("{key}=v")).collect::<Vec<_>>().join(",");
        assert!(policy.extract(&headers(&nine)).baggage().is_empty());

        let eight = nine.rsplit_once(',').unwrap().0;
        assert_eq!(policy.extract(&headers(eight)).baggage().len(), 8);
    }

    #[test]
    fn the_trace_context_survives_whatever_happens_to_the_baggage() {
        use opentelemetry::trace::TraceContextExt as _;
        let mut carrier = headers(&"x".repeat(10_000));
        carrier.insert(
            "traceparent".into(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        );
        let context = BaggagePolicy::untrusted(&[]).extract(&carrier);
        assert_eq!(
            context.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[test]
    fn the_caller_replaces_any_claimed_one_and_a_guest_removes_it() {
        let claimed = BaggagePolicy::TRUSTED.extract(&headers("enduser.id=someone-else,session.id=s-1"));
        let signed_in = with_enduser_id(&claimed, Some("u-1"));
        assert_eq!(
            entries(&signed_in),
            [pair("enduser.id", "u-1"), pair("session.id", "s-1")]
        );
        let guest = with_enduser_id(&claimed, None);
        assert_eq!(entries(&guest), [pair("session.id", "s-1")]);
    }

    /// What the API relies on: a span opened inside [`with_enduser`], as the
    /// gRPC client and Kafka producer spans are, injects the caller's id
    /// beside the trace context of the request's span.
    #[test]
    fn a_span_opened_inside_with_enduser_injects_the_caller() {
        use std::task::{Poll, Waker};

        use opentelemetry::trace::TraceContextExt as _;
        use tracing::Instrument as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;

        let config = crate::TelemetryConfig::new("unit", None);
        let (dispatch, _guard) = crate::build(&config, std::io::sink).unwrap();
        tracing::dispatcher::with_default(&dispatch, || {
            let request = tracing::info_span!("request");
            let handler = async {
                let client = tracing::info_span!("client");
                let mut outgoing = ::http::HeaderMap::new();
                crate::propagation::inject(&client.context(), &mut outgoing);
                outgoing
            };
            let middleware = async { with_enduser(Some("u-1"), handler).await }.instrument(request.clone());
            let Poll::Ready(outgoing) =
                std::pin::pin!(middleware).poll(&mut std::task::Context::from_waker(Waker::noop()))
            else {
                panic!("the request never waits");
            };

            assert_eq!(outgoing[HEADER], "enduser.id=u-1");
            let trace_id = request.context().span().span_context().trace_id().to_string();
            let traceparent = outgoing["traceparent"].to_str().unwrap();
            assert!(traceparent.contains(&trace_id), "{traceparent} continues {trace_id}");
        });
    }

    /// The `baggage` header a service sends on with `context`.
    fn sent_on(context: &Context) -> String {
        let mut outgoing = ::http::HeaderMap::new();
        crate::propagation::inject(context, &mut outgoing);
        outgoing
            .get(HEADER)
            .map(|value| value.to_str().unwrap().to_owned())
            .unwrap_or_default()
    }

    /// The `baggage` header the API sends on for a guest whose request
    /// carried `incoming`.
    fn forwarded_for_a_guest(edge: &BaggagePolicy, incoming: &str) -> String {
        sent_on(&with_enduser_id(&edge.extract(&headers(incoming)), None))
    }

    /// A guest's `session.id` entry whose properties hide a second entry,
    /// `enduser.id=victim`, in three encodings: once, in lower-case hex, and
    /// twice (which a hop that decodes properties once would unwrap one hop
    /// later).
    const FORGED_IN_PROPERTIES: [&str; 3] = [
        "session.id=s;%2Cenduser.id%3Dvictim",
        "session.id=s;%2cenduser.id%3dvictim",
        "session.id=s;%252Cenduser.id%253Dvictim",
    ];

    #[test]
    fn a_caller_forged_in_the_properties_of_an_allowed_entry_never_reaches_a_later_hop() {
        let edge = BaggagePolicy::untrusted(&["session.id"]);
        let leaks: Vec<String> = FORGED_IN_PROPERTIES
            .iter()
            .filter_map(|forged| {
                // The API's edge, then the user service, then the consumer.
                let to_user = forwarded_for_a_guest(&edge, forged);
                let to_consumer = sent_on(&BaggagePolicy::TRUSTED.extract(&headers(&to_user)));
                let at_consumer = BaggagePolicy::TRUSTED.extract(&headers(&to_consumer));
                let clean = to_user == "session.id=s" && entries(&at_consumer) == [pair("session.id", "s")];
                (!clean).then(|| format!("{forged:?} -> {to_user:?} -> {to_consumer:?}"))
            })
            .collect();
        assert!(leaks.is_empty(), "forged entries travelled on:\n{}", leaks.join("\n"));
    }

    #[test]
    fn an_allowed_entry_keeps_its_value_and_never_its_properties() {
        let edge = BaggagePolicy::untrusted(&["session.id"]);
        let context = edge.extract(&headers("session.id=s-1;ttl=30;%2Cenduser.id%3Dvictim"));
        let (value, properties) = context.baggage().get_with_metadata("session.id").unwrap();
        assert_eq!(value.as_str(), "s-1");
        assert_eq!(properties.as_str(), "");
    }

    #[test]
    fn a_caller_encoded_in_an_allowed_value_is_forwarded_re_encoded_as_that_value() {
        let edge = BaggagePolicy::untrusted(&["session.id"]);
        let to_user = forwarded_for_a_guest(&edge, "session.id=s%2Cenduser.id%3Dvictim");
        assert_eq!(to_user, "session.id=s%2Cenduser.id%3Dvictim");
        let at_user = BaggagePolicy::TRUSTED.extract(&headers(&to_user));
        assert_eq!(enduser_id(&at_user), None);
        assert_eq!(entries(&at_user), [pair("session.id", "s,enduser.id=victim")]);
    }

    #[test]
    fn the_caller_is_injected_as_baggage() {
        let context = with_enduser_id(&Context::new(), Some("0190c3c4-7d8e-7000-8000-000000000001"));
        let mut outgoing = ::http::HeaderMap::new();
        crate::install_propagator();
        crate::propagation::inject(&context, &mut outgoing);
        assert_eq!(outgoing[HEADER], "enduser.id=0190c3c4-7d8e-7000-8000-000000000001");
    }
}
