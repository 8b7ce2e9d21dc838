//! A message in the consumer's hands, and what it turns out to be: a
//! readable event, or a dead letter.

use std::sync::atomic::{AtomicBool, Ordering};

use callchain_events::{EventError, UserEvent};
use callchain_telemetry::kafka::{self, Received};
use opentelemetry::trace::TraceContextExt as _;
use rdkafka::message::{BorrowedHeaders, BorrowedMessage, Message as _, OwnedMessage};
use tracing::Span;

use crate::batch::EventRow;

/// One message in hand, from receipt until its offset is stored; its
/// `process user-events` span lives as long, and its
/// `messaging.process.duration` is recorded then (or when it goes, if
/// sooner).
pub struct Consumed {
    pub message: OwnedMessage,
    pub span: Span,
    received: std::time::Instant,
    group: std::sync::Arc<str>,
    /// Its `messaging.process.duration` is recorded: dropping it records
    /// nothing more.
    recorded: bool,
}

impl Drop for Consumed {
    fn drop(&mut self) {
        self.record_processed();
    }
}

impl Consumed {
    pub fn new(message: &BorrowedMessage<'_>, group: &std::sync::Arc<str>) -> Self {
        let received = std::time::Instant::now();
        let span = kafka::process_span(
            Received {
                topic: message.topic(),
                partition: message.partition(),
                offset: message.offset(),
                key: message.key(),
                headers: message.headers(),
            },
            group,
        );
        Self {
            message: message.detach(),
            span,
            received,
            group: group.clone(),
            recorded: false,
        }
    }

    /// Records its `messaging.process.duration` now, once: its processing
    /// is over, though it may be dropped later (off the consume loop).
    pub fn record_processed(&mut self) {
        if !self.recorded {
            self.recorded = true;
            kafka::record_processed(self.received, self.message.topic(), &self.group);
        }
    }

    fn headers(&self) -> Option<&BorrowedHeaders> {
        self.message.headers().map(|headers| headers.as_borrowed())
    }

    /// The row this message becomes, or why it cannot become one.
    pub fn read(&self) -> Result<EventRow, EventError> {
        Ok(EventRow {
            event: UserEvent::parse(self.message.payload())?,
            trace_id: trace_id(self.headers()),
            partition: self.message.partition(),
            offset: self.message.offset(),
        })
    }

    pub fn dead_letter(self, reason: String) -> DeadLetter {
        DeadLetter {
            consumed: self,
            reason,
            sent: AtomicBool::new(false),
        }
    }
}

/// The trace id of the context in a message's headers, if it carries one.
fn trace_id(headers: Option<&BorrowedHeaders>) -> Option<String> {
    let context = kafka::extract(headers);
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| span_context.trace_id().to_string())
}

/// A message that parsed into an event.
pub struct Readable {
    pub consumed: Consumed,
    pub row: EventRow,
}

/// A message bound for the dead-letter topic, and why.
pub struct DeadLetter {
    pub consumed: Consumed,
    pub reason: String,
    /// Acknowledged by the broker, so a retry does not send it twice.
    sent: AtomicBool,
}

impl DeadLetter {
    /// Whether the broker has acknowledged it.
    pub fn is_sent(&self) -> bool {
        self.sent.load(Ordering::Relaxed)
    }

    /// The broker acknowledged it: a retry leaves it out.
    pub fn mark_sent(&self) {
        self.sent.store(true, Ordering::Relaxed);
    }
}
