//! Log lines kept in memory: the writer a test gives a service's (or a
//! unit's) telemetry, to read its JSON lines back.

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use serde_json::Value;

/// The JSON log lines a service wrote; clones write to the same lines, so
/// the test keeps one and gives the telemetry another.
///
/// Kept in chunks of [`CHUNK`] bytes, never one growing buffer: a benchmark
/// writes hundreds of megabytes of lines, and reallocating (and copying) one
/// buffer that size would charge the service's threads for the harness's
/// memory, more and more as the run goes on.
#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<Vec<u8>>>>);

/// The size of one chunk of a [`LogBuffer`].
const CHUNK: usize = 1 << 20;

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut chunks = self.0.lock().expect("log buffer");
        match chunks.last_mut() {
            Some(chunk) if chunk.len() + buf.len() <= chunk.capacity() => chunk.extend_from_slice(buf),
            _ => {
                let mut chunk = Vec::with_capacity(CHUNK.max(buf.len()));
                chunk.extend_from_slice(buf);
                chunks.push(chunk);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    /// The raw text, one JSON object per line.
    pub fn text(&self) -> String {
        let chunks = self.0.lock().expect("log buffer");
        String::from_utf8_lossy(&chunks.concat()).into_owned()
    }

    /// Every line, parsed. Panics on a line that is not JSON: that is a bug.
    pub fn lines(&self) -> Vec<Value> {
        self.text()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}")))
            .collect()
    }

    /// The lines that carry `trace_id`.
    pub fn lines_of_trace(&self, trace_id: &str) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|line| line["trace_id"] == trace_id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_written_across_two_chunks_reads_back_whole() {
        let logs = LogBuffer::default();
        let mut writer = logs.clone();
        // The first write nearly fills the first chunk; the rest of its line
        // does not fit, so it starts the second.
        let start = format!("{{\"message\":\"{}", "x".repeat(CHUNK - 20));
        writer.write_all(start.as_bytes()).unwrap();
        writer
            .write_all(b"\"}\n{\"message\":\"second\",\"trace_id\":\"t1\"}\n")
            .unwrap();
        let lines = logs.lines();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["message"].as_str().map(str::len), Some(CHUNK - 20));
        assert_eq!(lines[1]["message"], "second");
        assert_eq!(logs.lines_of_trace("t1").len(), 1);
    }
}
