//! Span export that says when it fails: the spans of a failed export are
//! counted as dropped, and the log says so once when export starts failing
//! and once when it works again, not once per batch.
//!
//! The SDK's batch processor already keeps export off the requests' path:
//! ending a span only offers it to a bounded queue (`OTEL_BSP_MAX_QUEUE_SIZE`)
//! and drops it when the queue is full, and one background thread exports.
//! What the SDK does not do is say, while the collector is down, how many
//! spans the trace backend will never see; [`CountingExporter`] does. Spans
//! the full queue refuses never reach an exporter; the SDK warns of those
//! itself (`BatchSpanProcessor.SpanDroppingStarted`) and counts them at
//! shutdown.

use std::sync::{
    Arc, OnceLock,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    trace::{SpanData, SpanExporter},
};
use tracing::{Dispatch, dispatcher::WeakDispatch};

/// What became of the spans handed to the exporter, so far.
#[derive(Debug, Default)]
pub struct ExportCounts {
    exported: AtomicU64,
    dropped: AtomicU64,
    failing: AtomicBool,
}

impl ExportCounts {
    /// Spans the collector acknowledged.
    pub fn exported(&self) -> u64 {
        self.exported.load(Ordering::Relaxed)
    }

    /// Spans of exports that failed: the trace backend never gets them.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Whether the last export failed.
    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }
}

/// Wraps the OTLP exporter: counts what it exports and what it drops, and
/// logs the change between the two states.
#[derive(Debug)]
pub struct CountingExporter<E> {
    inner: E,
    counts: Arc<ExportCounts>,
    /// The service's log, set once it exists (see [`Self::log_to`]); until
    /// then, and in binaries, the global one.
    dispatch: Arc<OnceLock<WeakDispatch>>,
}

impl<E> CountingExporter<E> {
    pub fn new(inner: E) -> Self {
        Self {
            inner,
            counts: Arc::default(),
            dispatch: Arc::default(),
        }
    }

    /// The counts, to read while the exporter runs.
    pub fn counts(&self) -> Arc<ExportCounts> {
        self.counts.clone()
    }

    /// Where the state changes are logged: the batch processor exports on a
    /// thread of its own, where no dispatch is the default in a test process.
    pub fn log_to(&self) -> Arc<OnceLock<WeakDispatch>> {
        self.dispatch.clone()
    }

    fn log(&self, event: impl FnOnce()) {
        match self.dispatch.get().and_then(WeakDispatch::upgrade) {
            Some(dispatch) => tracing::dispatcher::with_default(&dispatch, event),
            None => event(),
        }
    }
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len() as u64;
        let result = self.inner.export(batch).await;
        let counts = &self.counts;
        match &result {
            Ok(()) => {
                counts.exported.fetch_add(spans, Ordering::Relaxed);
                if counts.failing.swap(false, Ordering::Relaxed) {
                    let dropped = counts.dropped();
                    self.log(|| {
                        tracing::info!(
                            dropped_spans = dropped,
                            "span export resumed; {dropped} spans dropped in all"
                        )
                    });
                }
            }
            Err(error) => {
                let dropped = counts.dropped.fetch_add(spans, Ordering::Relaxed) + spans;
                if !counts.failing.swap(true, Ordering::Relaxed) {
                    self.log(|| {
                        tracing::warn!(
                            dropped_spans = dropped,
                            error = %error,
                            "span export failing; {dropped} spans dropped so far"
                        );
                    });
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> OTelSdkResult {
        let dropped = self.counts.dropped();
        if dropped > 0 {
            self.log(|| {
                tracing::warn!(
                    dropped_spans = dropped,
                    "span export shut down; {dropped} spans dropped in all"
                )
            });
        }
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Points every exporter's log at `dispatch`.
pub(crate) fn log_to(slot: &OnceLock<WeakDispatch>, dispatch: &Dispatch) {
    let _ = slot.set(dispatch.downgrade());
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use opentelemetry_sdk::error::OTelSdkError;

    use super::*;
    use crate::test_support::Buffer;

    /// An exporter whose answer the test sets: a fake of the collector's
    /// answer only, for the pure bookkeeping.
    #[derive(Debug, Default)]
    struct Answer(Mutex<bool>);

    impl SpanExporter for Answer {
        async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
            if *self.0.lock().unwrap() {
                Ok(())
            } else {
                Err(OTelSdkError::InternalFailure("collector unreachable".into()))
            }
        }
    }

    fn spans(n: usize) -> Vec<SpanData> {
        use opentelemetry::trace::{SpanContext, SpanKind, Status};
        let span = SpanData {
            span_context: SpanContext::empty_context(),
            parent_span_id: opentelemetry::trace::SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: "s".into(),
            start_time: std::time::SystemTime::now(),
            end_time: std::time::SystemTime::now(),
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: Status::Unset,
            instrumentation_scope: Default::default(),
        };
        vec![span; n]
    }

    #[test]
    fn failed_exports_are_counted_and_logged_once_when_failing_starts_and_once_when_it_ends() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer({
                let buffer = buffer.clone();
                move || buffer.clone()
            })
            .finish();
        let dispatch = Dispatch::new(subscriber);
        let exporter = CountingExporter::new(Answer::default());
        log_to(&exporter.log_to(), &dispatch);
        let counts = exporter.counts();
        let export = |n| futures::executor::block_on(exporter.export(spans(n)));

        *exporter.inner.0.lock().unwrap() = true;
        assert!(export(3).is_ok());
        *exporter.inner.0.lock().unwrap() = false;
        assert!(export(5).is_err());
        assert!(export(7).is_err());
        assert!(counts.failing());
        *exporter.inner.0.lock().unwrap() = true;
        assert!(export(2).is_ok());

        assert_eq!((counts.exported(), counts.dropped(), counts.failing()), (5, 12, false));
        let messages: Vec<String> = buffer
            .lines()
            .iter()
            .map(|line| line["fields"]["message"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(
            messages,
            [
                "span export failing; 5 spans dropped so far",
                "span export resumed; 12 spans dropped in all"
            ]
        );
    }
}
