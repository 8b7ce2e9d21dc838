//! Helpers shared by the end-to-end suites.
//!
//! - [`compose`]: checks of `docker-compose.yml` and the configs it mounts
//!   that need no Docker engine.
//! - [`jaeger`]: spans read back from Jaeger's query API, as
//!   [`callchain_testkit::spans::SpanRecord`]s.

pub mod compose;
pub mod jaeger;
