//! Reading the services' JSON logs: span records and the event lines of
//! traces, from files, folders or stdin.
//!
//! Two kinds of line count (the format of `callchain_telemetry::logs` and
//! `callchain_telemetry::records`):
//!
//! - a **span record**: `target` is [`SPAN_TARGET`]; `trace_id` and `span_id`
//!   are the span's own; the object `span` holds `parent_span_id`, `name`,
//!   `kind`, `start`, `duration_us`, `status`, `status_message`, `links` and
//!   `attributes`; `service` is the service's;
//! - an **event line** of a trace: any other line with a `trace_id`; its
//!   `span_id` is the span it was written in.
//!
//! Every other line is left out: lines outside any request, and lines that
//! are not JSON at all (a folder such as `.dev/logs` also holds Kafka's and
//! Jaeger's logs). A prefix before a line's JSON object is skipped, so the
//! output of `docker compose logs` or of `grep` over several files reads as
//! well.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use serde_json::{Map, Value};

use crate::span::{Kind, Link, LogEvent, Span, Status, hex_id, text_of};

/// The `target` of span records.
pub const SPAN_TARGET: &str = "callchain::span";

/// Where logs come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// `-`
    Stdin,
    /// A file, or a folder whose files are all read (not its subfolders).
    Path(PathBuf),
}

impl Input {
    /// `-` is stdin; anything else a path.
    pub fn parse(text: &str) -> Self {
        if text == "-" {
            Self::Stdin
        } else {
            Self::Path(PathBuf::from(text))
        }
    }
}

/// What the logs hold about traces.
#[derive(Debug, Clone, Default)]
pub struct Logs {
    /// Every span record, in the order read; a record read twice (the same
    /// file given twice) is kept once.
    pub spans: Vec<Span>,
    /// Every event line that carries a trace id.
    pub events: Vec<LogEvent>,
    /// JSON lines that looked like span records but could not be read.
    pub unreadable: Vec<String>,
}

impl Logs {
    /// Reads every input; a folder is read file by file, in name order.
    pub fn read(inputs: &[Input]) -> anyhow::Result<Self> {
        let mut logs = Self::default();
        for input in inputs {
            match input {
                Input::Stdin => logs.add(std::io::stdin().lock(), "stdin")?,
                Input::Path(path) if path.is_dir() => {
                    for file in files_in(path)? {
                        logs.add_file(&file)?;
                    }
                }
                Input::Path(path) => logs.add_file(path)?,
            }
        }
        logs.dedup();
        Ok(logs)
    }

    /// Reads JSON lines from `text`.
    pub fn parse(text: &str) -> Self {
        let mut logs = Self::default();
        for line in text.lines() {
            logs.add_line(line);
        }
        logs.dedup();
        logs
    }

    fn add_file(&mut self, path: &Path) -> anyhow::Result<()> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        self.add(file, &path.display().to_string())
    }

    fn add(&mut self, input: impl Read, name: &str) -> anyhow::Result<()> {
        let mut reader = BufReader::new(input);
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = reader
                .read_until(b'\n', &mut line)
                .with_context(|| format!("cannot read {name}"))?;
            if read == 0 {
                return Ok(());
            }
            // Not UTF-8: not one of ours (a binary file in the folder).
            if let Ok(text) = std::str::from_utf8(&line) {
                self.add_line(text);
            }
        }
    }

    fn add_line(&mut self, line: &str) {
        // Cheap tests first: most lines of a busy log are not about a trace.
        if !line.contains("\"trace_id\"") {
            return;
        }
        // What comes before the object is a prefix some readers add
        // (`docker compose logs`: `api-1  | {...}`, `grep` over several
        // files: `api.log:{...}`).
        let Some(start) = line.find('{') else {
            return;
        };
        let line = line[start..].trim_end();
        let Ok(Value::Object(object)) = serde_json::from_str::<Value>(line) else {
            return;
        };
        if object.get("target").and_then(Value::as_str) == Some(SPAN_TARGET) {
            match span_of(&object) {
                Ok(span) => self.spans.push(span),
                Err(error) => self.unreadable.push(format!("{error:#}: {line}")),
            }
        } else if let Some(event) = event_of(object) {
            self.events.push(event);
        }
    }

    fn dedup(&mut self) {
        let mut seen = std::collections::HashSet::new();
        self.spans
            .retain(|span| seen.insert((span.trace_id.clone(), span.span_id.clone())));
    }
}

/// The files of a folder, in name order.
fn files_in(folder: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(folder).with_context(|| format!("cannot list {}", folder.display()))? {
        let path = entry?.path();
        if path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// A span record's span.
pub fn span_of(line: &Map<String, Value>) -> anyhow::Result<Span> {
    let text = |object: &Map<String, Value>, key: &str| -> anyhow::Result<String> {
        object
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .with_context(|| format!("no `{key}`"))
    };
    let Some(Value::Object(record)) = line.get("span") else {
        bail!("a span record without its `span` object");
    };
    let trace_id = hex_id(&text(line, "trace_id")?, 32)?;
    let span_id = hex_id(&text(line, "span_id")?, 16)?;
    let parent_span_id = match record.get("parent_span_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => Some(hex_id(id, 16)?),
        Some(other) => bail!("`parent_span_id` is {other}"),
    };
    let kind = text(record, "kind")?;
    let status = text(record, "status")?;
    let start = text(record, "start")?;
    let links = match record.get("links") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(links)) => links
            .iter()
            .map(|link| {
                let Value::Object(link) = link else {
                    bail!("a link is not an object: {link}");
                };
                Ok(Link {
                    trace_id: hex_id(&text(link, "trace_id")?, 32)?,
                    span_id: hex_id(&text(link, "span_id")?, 16)?,
                })
            })
            .collect::<anyhow::Result<_>>()?,
        Some(other) => bail!("`links` is {other}"),
    };
    let attributes = match record.get("attributes") {
        Some(Value::Object(attributes)) => attributes
            .iter()
            .map(|(key, value)| (key.clone(), text_of(value)))
            .collect(),
        _ => BTreeMap::new(),
    };
    Ok(Span {
        trace_id,
        span_id,
        parent_span_id,
        name: text(record, "name")?,
        kind: Kind::parse(&kind).with_context(|| format!("unknown kind `{kind}`"))?,
        service: text(line, "service").unwrap_or_default(),
        start_us: micros(&start)?,
        duration_us: record
            .get("duration_us")
            .and_then(Value::as_i64)
            .context("no `duration_us`")?,
        status: Status::parse(&status).with_context(|| format!("unknown status `{status}`"))?,
        status_message: record.get("status_message").and_then(Value::as_str).map(str::to_owned),
        links,
        attributes,
    })
}

/// An event line's event; `None` unless it carries a valid trace id.
fn event_of(mut line: Map<String, Value>) -> Option<LogEvent> {
    let mut take = |key: &str| line.remove(key).map(|value| text_of(&value));
    let trace_id = hex_id(&take("trace_id")?, 32).ok()?;
    let span_id = take("span_id").and_then(|id| hex_id(&id, 16).ok());
    let timestamp = take("timestamp").unwrap_or_default();
    let event = LogEvent {
        timestamp_us: micros(&timestamp).unwrap_or_default(),
        level: take("level").unwrap_or_default(),
        target: take("target").unwrap_or_default(),
        message: take("message").unwrap_or_default(),
        service: take("service").unwrap_or_default(),
        trace_id,
        span_id,
        fields: BTreeMap::new(),
    };
    Some(LogEvent {
        fields: line.iter().map(|(key, value)| (key.clone(), text_of(value))).collect(),
        ..event
    })
}

/// Microseconds since the Unix epoch of an RFC 3339 time.
fn micros(text: &str) -> anyhow::Result<i64> {
    let time =
        chrono::DateTime::parse_from_rfc3339(text).with_context(|| format!("`{text}` is not an RFC 3339 time"))?;
    Ok(time.timestamp_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECORD: &str = r#"{"timestamp":"2026-11-25T10:00:00.018391Z","level":"INFO","target":"callchain::span","service":"consumer","message":"span ended","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"e457b5a2e4d86bd1","span":{"parent_span_id":"7c2b1e8f3d4a5b6c","name":"process user-events","kind":"consumer","start":"2026-11-25T10:00:00.017000Z","duration_us":2400,"status":"error","status_message":"refused","links":[{"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"7c2b1e8f3d4a5b6c"}],"attributes":{"messaging.kafka.offset":41,"messaging.system":"kafka","sampled":true}}}"#;
    const EVENT: &str = r#"{"timestamp":"2026-11-25T10:00:00.019000Z","level":"INFO","target":"callchain_consumer::pipeline","service":"consumer","message":"event stored","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"e457b5a2e4d86bd1","offset":41,"event_type":"user.created"}"#;

    #[test]
    fn a_span_record_becomes_a_span() {
        let logs = Logs::parse(RECORD);
        assert_eq!(logs.spans.len(), 1, "{:?}", logs.unreadable);
        let span = &logs.spans[0];
        assert_eq!(span.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span.span_id, "e457b5a2e4d86bd1");
        assert_eq!(span.parent_span_id.as_deref(), Some("7c2b1e8f3d4a5b6c"));
        assert_eq!(span.name, "process user-events");
        assert_eq!(span.kind, Kind::Consumer);
        assert_eq!(span.service, "consumer");
        assert_eq!(span.start_us, 1_795_600_800_017_000);
        assert_eq!(span.duration_us, 2400);
        assert_eq!(span.status, Status::Error);
        assert_eq!(span.status_message.as_deref(), Some("refused"));
        assert_eq!(span.links[0].span_id, "7c2b1e8f3d4a5b6c");
        assert_eq!(span.attribute("messaging.kafka.offset"), Some("41"));
        assert_eq!(span.attribute("sampled"), Some("true"));
        assert!(logs.events.is_empty());
    }

    #[test]
    fn an_event_line_of_a_trace_keeps_its_span_and_fields() {
        let logs = Logs::parse(EVENT);
        let event = &logs.events[0];
        assert_eq!(event.message, "event stored");
        assert_eq!(event.span_id.as_deref(), Some("e457b5a2e4d86bd1"));
        assert_eq!(event.timestamp_us, 1_795_600_800_019_000);
        assert_eq!(event.fields["offset"], "41");
        assert_eq!(event.fields["event_type"], "user.created");
        assert!(!event.fields.contains_key("message"));
    }

    #[test]
    fn lines_outside_traces_and_lines_that_are_not_json_are_left_out() {
        let text = format!(
            "[2026-11-25 10:00:00,000] INFO Kafka Server started (kafka.server.KafkaRaftServer)\n\
             {{\"timestamp\":\"2026-11-25T10:00:00Z\",\"level\":\"INFO\",\"message\":\"api listening\"}}\n\
             {{\"trace_id\": broken\n\
             {RECORD}\n{RECORD}\n{EVENT}\n"
        );
        let logs = Logs::parse(&text);
        assert_eq!(logs.spans.len(), 1, "a record read twice counts once");
        assert_eq!(logs.events.len(), 1);
        assert!(logs.unreadable.is_empty());
    }

    #[test]
    fn a_prefix_before_the_object_is_skipped() {
        let text = format!("callchain-consumer-1  | {RECORD}\nconsumer.log:{EVENT}\n");
        let logs = Logs::parse(&text);
        assert_eq!((logs.spans.len(), logs.events.len()), (1, 1));
    }

    #[test]
    fn a_record_that_cannot_be_read_is_reported() {
        let broken = RECORD.replace("\"kind\":\"consumer\"", "\"kind\":\"sideways\"");
        let logs = Logs::parse(&broken);
        assert!(logs.spans.is_empty());
        assert!(
            logs.unreadable[0].contains("unknown kind `sideways`"),
            "{:?}",
            logs.unreadable
        );
    }

    #[test]
    fn a_folder_is_read_file_by_file() {
        let folder = tempfile::tempdir().unwrap();
        std::fs::write(folder.path().join("consumer.log"), format!("{RECORD}\n")).unwrap();
        std::fs::write(folder.path().join("kafka.log"), "not json\n").unwrap();
        std::fs::write(folder.path().join("more.log"), format!("{EVENT}\n")).unwrap();
        let logs = Logs::read(&[Input::Path(folder.path().to_owned())]).unwrap();
        assert_eq!((logs.spans.len(), logs.events.len()), (1, 1));
    }
}
