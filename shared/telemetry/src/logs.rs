//! The JSON log line: one object per event, with the ids of the trace it
//! belongs to, so `grep <trace-id>` over every service's log tells a request's
//! whole story. Span records ([`crate::records`]) are lines of this format
//! too.

use std::{
    fmt::{self, Write as _},
    io,
    sync::Arc,
};

use chrono::{Datelike as _, Timelike as _};
use opentelemetry::trace::TraceContextExt as _;
use tracing::{Event, Subscriber, field::Field};
use tracing_subscriber::{
    fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter, format::Writer, writer::BoxMakeWriter},
    registry::LookupSpan,
};

/// Formats events as single-line JSON objects with `timestamp`, `level`,
/// `target`, `service`, inside a span `trace_id` and `span_id`, `message`,
/// and the event's own fields.
///
/// Every request writes several lines, so the line is written straight
/// into one buffer, each value escaped on the way: no map of fields, no
/// JSON tree, no string per field.
#[derive(Debug, Clone)]
pub struct JsonFormat {
    service: String,
}

impl JsonFormat {
    pub fn new(service: &str) -> Self {
        Self {
            service: service.to_owned(),
        }
    }
}

/// The keys every line starts with; an event field of one of these names
/// is left out rather than written twice.
const RESERVED: &[&str] = &["timestamp", "level", "target", "service", "trace_id", "span_id"];

impl<S, N> FormatEvent<S, N> for JsonFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Line::start(chrono::Utc::now(), meta.level().as_str(), meta.target(), &self.service);
        // The OpenTelemetry layer activates the span's context on entry.
        let context = opentelemetry::Context::current();
        let span = context.span();
        let span_context = span.span_context();
        if span_context.is_valid() {
            line.display("trace_id", span_context.trace_id());
            line.display("span_id", span_context.span_id());
        }
        let mut fields = FieldWriter {
            line: &mut line,
            message: false,
        };
        event.record(&mut fields);
        if !fields.message {
            line.str("message", "");
        }
        writer.write_str(&line.finish())
    }
}

/// What the `fmt` layer writes of a span's fields when the span opens: nothing.
/// Left to itself it formats every span's fields into text (ANSI styles and
/// all) and keeps it for event formats that print their spans; ours prints
/// the span's ids, and the span's fields reach the span itself.
pub struct NoSpanFields;

impl<'writer> FormatFields<'writer> for NoSpanFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        _writer: Writer<'writer>,
        _fields: R,
    ) -> fmt::Result {
        Ok(())
    }
}

/// One JSON log line, written as it goes: `{"timestamp":..,"level":..,
/// "target":..,"service":..` first, then each field.
pub(crate) struct Line(String);

impl Line {
    pub(crate) fn start(at: chrono::DateTime<chrono::Utc>, level: &str, target: &str, service: &str) -> Self {
        let mut line = Line(String::with_capacity(512));
        line.0.push('{');
        line.key("timestamp");
        let (date, time) = (at.date_naive(), at.time());
        let _ = write!(
            line.0,
            "\"{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z\"",
            date.year(),
            date.month(),
            date.day(),
            time.hour(),
            time.minute(),
            time.second(),
            // A leap second's nanoseconds run past one second.
            (time.nanosecond() % 1_000_000_000) / 1_000
        );
        line.str("level", level);
        line.str("target", target);
        line.str("service", service);
        line
    }

    fn key(&mut self, key: &str) {
        if !self.0.ends_with('{') {
            self.0.push(',');
        }
        self.0.push('"');
        let _ = Escaped(&mut self.0).write_str(key);
        self.0.push_str("\":");
    }

    /// `key` and a JSON string.
    pub(crate) fn str(&mut self, key: &str, value: &str) {
        self.display(key, value);
    }

    /// `key` and `value`'s text as a JSON string, escaped as it is written.
    pub(crate) fn display(&mut self, key: &str, value: impl fmt::Display) {
        self.key(key);
        self.0.push('"');
        let _ = write!(Escaped(&mut self.0), "{value}");
        self.0.push('"');
    }

    /// `key` and a value that is JSON already (a number, or an object made
    /// by `serde_json`).
    pub(crate) fn raw(&mut self, key: &str, json: impl fmt::Display) {
        self.key(key);
        let _ = write!(self.0, "{json}");
    }

    /// The line, closed and ended with a newline.
    pub(crate) fn finish(mut self) -> String {
        self.0.push_str("}\n");
        self.0
    }
}

/// Writes text into a JSON string: quotes, backslashes and control
/// characters escaped.
struct Escaped<'a>(&'a mut String);

impl fmt::Write for Escaped<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut plain = 0;
        for (at, byte) in text.bytes().enumerate() {
            let escape = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f | 0x7f => "",
                _ => continue,
            };
            self.0.push_str(&text[plain..at]);
            if escape.is_empty() {
                let _ = write!(self.0, "\\u{byte:04x}");
            } else {
                self.0.push_str(escape);
            }
            plain = at + 1;
        }
        self.0.push_str(&text[plain..]);
        Ok(())
    }
}

/// Writes an event's fields into its line, with their JSON types.
struct FieldWriter<'a> {
    line: &'a mut Line,
    message: bool,
}

impl FieldWriter<'_> {
    /// The key to write `field` under, or `None` to leave it out.
    fn name(&mut self, field: &Field) -> Option<&'static str> {
        let name = field.name();
        if name == "message" {
            self.message = true;
        }
        (!RESERVED.contains(&name)).then_some(name)
    }
}

impl tracing::field::Visit for FieldWriter<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        if let Some(name) = self.name(field) {
            if value.is_finite() {
                self.line.raw(name, value);
            } else {
                self.line.display(name, value);
            }
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        if let Some(name) = self.name(field) {
            self.line.raw(name, value);
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        if let Some(name) = self.name(field) {
            self.line.raw(name, value);
        }
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        if let Some(name) = self.name(field) {
            self.line.raw(name, value);
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if let Some(name) = self.name(field) {
            self.line.str(name, value);
        }
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if let Some(name) = self.name(field) {
            // The whole cause chain, once.
            self.line.display(name, Chain(value));
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if let Some(name) = self.name(field) {
            self.line.display(name, format_args!("{value:?}"));
        }
    }
}

/// An error and its causes, `: `-separated.
struct Chain<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// Where a service's lines go, shared by its event lines and its span
/// records (which are written beside the events, not through them).
#[derive(Clone)]
pub(crate) struct LogWriter(Arc<BoxMakeWriter>);

impl LogWriter {
    pub(crate) fn new<W>(writer: W) -> Self
    where
        W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
    {
        Self(Arc::new(BoxMakeWriter::new(writer)))
    }

    /// Writes one whole line at once, so lines of several threads never mix.
    pub(crate) fn write_line(&self, line: &str) {
        let _ = io::Write::write_all(&mut self.0.make_writer(), line.as_bytes());
    }
}

/// The lines of a process, written to its stdout by a thread of their own:
/// the thread that logs only hands its line to a bounded queue and goes on,
/// and never waits on stdout (a full pipe, a slow terminal, a log shipper
/// that stalls). When the queue is full the line is dropped and counted
/// ([`DroppedLines`]). Dropping the queue writes out every line already
/// handed to it, for at most a second when its writer is stuck.
pub(crate) struct LogQueue {
    guard: Option<tracing_appender::non_blocking::WorkerGuard>,
    dropped: DroppedLines,
}

impl LogQueue {
    /// A queue of at most `lines` lines into `writer`, and the writer the
    /// logging threads hand their lines to.
    pub(crate) fn new<W>(writer: W, lines: usize) -> (LogWriter, Self)
    where
        W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
    {
        let (queue, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(lines)
            .thread_name("log writer")
            .finish(PerLine(writer));
        let dropped = DroppedLines(queue.error_counter());
        (
            LogWriter::new(queue),
            Self {
                guard: Some(guard),
                dropped,
            },
        )
    }

    pub(crate) fn dropped(&self) -> &DroppedLines {
        &self.dropped
    }

    /// Writes out every line already queued, then stops the writing thread.
    pub(crate) fn flush(&mut self) {
        drop(self.guard.take());
    }
}

/// How many log lines were dropped because the queue to stdout was full; a
/// clone reads the same count (for the `callchain.logs.dropped` metric).
#[derive(Clone)]
pub struct DroppedLines(tracing_appender::non_blocking::ErrorCounter);

impl DroppedLines {
    pub fn count(&self) -> u64 {
        self.0.dropped_lines() as u64
    }
}

impl std::fmt::Debug for DroppedLines {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DroppedLines({})", self.count())
    }
}

/// A [`MakeWriter`] as the one `io::Write` the writing thread owns: each
/// line it is handed goes to a writer made for it, whole.
struct PerLine<W>(W);

impl<W> io::Write for PerLine<W>
where
    W: for<'w> MakeWriter<'w>,
{
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.make_writer().write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.make_writer().flush()
    }
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LogWriter")
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = Box<dyn io::Write + 'a>;

    fn make_writer(&'a self) -> Self::Writer {
        self.0.make_writer()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, Condvar, Mutex, mpsc},
        time::Duration,
    };

    use crate::test_support::{Buffer, service};
    use serde_json::Value;

    /// A stdout that blocks every write until it is opened, then writes
    /// into `buffer`.
    #[derive(Clone, Default)]
    struct Gate {
        open: Arc<(Mutex<bool>, Condvar)>,
        buffer: Buffer,
    }

    impl Gate {
        fn open(&self) {
            *self.open.0.lock().unwrap() = true;
            self.open.1.notify_all();
        }
    }

    impl std::io::Write for Gate {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (open, opened) = &*self.open;
            let _open = opened.wait_while(open.lock().unwrap(), |open| !*open).unwrap();
            self.buffer.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A service whose lines go through a queue of `lines` lines to `writer`.
    fn queued<W: std::io::Write + Clone + Send + Sync + 'static>(
        writer: W,
        lines: usize,
    ) -> (tracing::Dispatch, crate::TelemetryGuard) {
        let mut config = crate::TelemetryConfig::new("unit", None);
        config.log_queue_lines = lines;
        config.log_filter = "info,callchain::span=off".to_owned();
        crate::build(&config, move || writer.clone()).unwrap()
    }

    #[test]
    fn a_stdout_that_blocks_never_blocks_the_thread_that_logs_and_each_line_it_costs_is_counted() {
        let gate = Gate::default();
        let (dispatch, guard) = queued(gate.clone(), 8);
        let dropped = guard.logs_dropped().expect("lines go through a queue");

        // The lines are logged on a thread of their own: were a line written
        // in it, it would wait on the gate for good, and this test would say so.
        let (done, logged) = mpsc::channel();
        let logger = dispatch.clone();
        std::thread::spawn(move || {
            tracing::dispatcher::with_default(&logger, || {
                for n in 0..200 {
                    tracing::info!(n, "a line");
                }
            });
            let _ = done.send(());
        });
        logged
            .recv_timeout(Duration::from_secs(60))
            .expect("logging 200 lines waited on a stdout that blocks");
        let lost = dropped.count();
        assert!(
            lost >= 200 - 9,
            "a queue of 8 (and the line being written) holds 9, yet only {lost} were dropped"
        );

        gate.open();
        for _ in 0..600 {
            if gate.buffer.text().lines().count() as u64 + lost >= 200 {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        drop(guard);
        let lines = gate.buffer.lines();
        let written = lines.iter().filter(|line| line["message"] == "a line").count();
        assert_eq!(
            written as u64 + lost,
            200,
            "every line is either written or counted as dropped"
        );
        let told = lines
            .iter()
            .find(|line| line["target"] == "callchain::telemetry")
            .expect("the count of dropped lines is logged at shutdown");
        assert_eq!(told["dropped"], lost);
    }

    /// A stdout that takes its time over each line.
    #[derive(Clone, Default)]
    struct Slow(Buffer);

    impl std::io::Write for Slow {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            std::thread::sleep(Duration::from_micros(200));
            self.0.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_logged_before_shutdown_is_written_out_when_the_guard_drops() {
        let stdout = Slow::default();
        let (dispatch, guard) = queued(stdout.clone(), 65_536);
        tracing::dispatcher::with_default(&dispatch, || {
            for n in 0..500 {
                tracing::info!(n, "a line");
            }
        });
        assert_eq!(guard.logs_dropped().unwrap().count(), 0);
        drop(guard);
        let numbers: Vec<u64> = stdout.0.lines().iter().filter_map(|line| line["n"].as_u64()).collect();
        assert_eq!(numbers, (0..500).collect::<Vec<_>>(), "every line, in order");
    }

    #[test]
    fn log_line_inside_a_span_carries_trace_and_span_ids() {
        let (dispatch, _guard, buffer) = service("unit", "info");
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::info!(user_id = 7, "outside");
            let span = tracing::info_span!("work");
            let _entered = span.enter();
            tracing::warn!(email_domain = "example.com", "inside");
        });

        // The event lines; the span's own record comes beside them.
        let lines: Vec<Value> = buffer
            .lines()
            .into_iter()
            .filter(|line| line["target"] != crate::records::TARGET)
            .collect();
        assert_eq!(lines.len(), 2);
        let outside = &lines[0];
        assert_eq!(outside["message"], "outside");
        assert_eq!(outside["level"], "INFO");
        assert_eq!(outside["service"], "unit");
        assert_eq!(outside["user_id"], 7);
        assert!(outside["timestamp"].as_str().unwrap().contains('T'));
        assert!(outside.get("trace_id").is_none());

        let inside = &lines[1];
        assert_eq!(inside["message"], "inside");
        assert_eq!(inside["level"], "WARN");
        assert_eq!(inside["target"], module_path!());
        let trace_id = inside["trace_id"].as_str().expect("trace_id inside a span");
        assert_eq!(trace_id.len(), 32);
        assert_ne!(trace_id, "0".repeat(32));
        assert_eq!(inside["span_id"].as_str().unwrap().len(), 16);
    }

    #[test]
    fn fields_keep_their_json_types_and_text_is_escaped() {
        let (dispatch, _guard, buffer) = service("unit", "info");
        let error = std::io::Error::other("disk \"full\"");
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::info!(
                count = 3u64,
                delta = -2i64,
                ratio = 0.5,
                ok = true,
                text = "a \"quote\", a \\ and\na newline\u{1}",
                shown = %"display",
                debugged = ?Some(1),
                error = &error as &dyn std::error::Error,
                service = "not the service",
                "hello \"world\""
            );
        });
        let lines = buffer.lines();
        let line = &lines[0];
        assert_eq!(line["message"], "hello \"world\"");
        assert_eq!(line["count"], 3);
        assert_eq!(line["delta"], -2);
        assert_eq!(line["ratio"], 0.5);
        assert_eq!(line["ok"], true);
        assert_eq!(line["text"], "a \"quote\", a \\ and\na newline\u{1}");
        assert_eq!(line["shown"], "display");
        assert_eq!(line["debugged"], "Some(1)");
        assert_eq!(line["error"], "disk \"full\"");
        assert_eq!(line["service"], "unit", "a field never overwrites the line's own keys");
    }
}
