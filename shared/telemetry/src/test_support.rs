//! What the unit tests of this crate share: a log writer they can read back,
//! and a service's telemetry writing to one.

/// The in-memory log writer every test shares (`callchain-testkit`).
pub(crate) use callchain_testkit::logs::LogBuffer as Buffer;

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
