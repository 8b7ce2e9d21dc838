//! What the unit tests of this crate share: a log writer they can read back,
//! and a service's telemetry writing to one.

use std::sync::{Arc, Mutex};

use serde_json::Value;

/// An in-memory log writer; clones write to the same bytes.
#[derive(Clone, Default)]
pub(crate) struct Buffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Buffer {
    /// Every line written so far, each parsed as JSON.
    pub(crate) fn lines(&self) -> Vec<Value> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).expect("every log line is JSON"))
            .collect()
    }
}

/// The telemetry of a service named `name` with `RUST_LOG` set to `filter`,
/// logging to a [`Buffer`]; hold the guard while spans should export.
pub(crate) fn service(name: &str, filter: &str) -> (tracing::Dispatch, crate::TelemetryGuard, Buffer) {
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let mut config = crate::TelemetryConfig::new(name, None);
    config.log_filter = filter.to_owned();
    let (dispatch, guard) = crate::build(&config, move || writer.clone()).unwrap();
    (dispatch, guard, buffer)
}
