//! Helpers shared by the end-to-end suites.
//!
//! - [`stack`]: the three services wired together on real parts, for one test.
//! - [`chain`]: the call chain every registration must leave (ARCHITECTURE.md).
//! - [`compose`]: checks of `docker-compose.yml` and the configs it mounts
//!   that need no Docker engine.
//! - [`tools`]: where the tools `make tools` installs are, at the versions
//!   `.env` names, or how to install one that is missing.
//! - [`helm`]: the Helm chart under `deploy/helm` rendered with the real
//!   Helm, and the checks no Kubernetes schema makes.
//! - [`jaeger`]: spans read back from Jaeger's query API (or from the JSON
//!   logs, by tracechain), as [`callchain_testkit::spans::SpanRecord`]s.
//! - [`load`] and [`cpu`]: the benchmarks' load generator, and the CPU
//!   time of each service, its span export and the load generator.
//! - [`parts`]: VictoriaMetrics, Jaeger and the collector of one test's
//!   own, started by `scripts/parts.sh`, to count in or to stop.
//! - [`journey`]: a user's journey through a running system, judged by its
//!   trace in Jaeger (shared by `make test` and `make e2e-up`).
//! - [`nemesis`]: the seeded random schedule of faults `make chaos
//!   NEMESIS=<minutes>` carries out.
//! - [`order`]: each user's stored events checked for order and holes, by
//!   their sequence.

pub mod chain;
pub mod compose;
pub mod cpu;
pub mod helm;
pub mod jaeger;
pub mod journey;
pub mod load;
pub mod nemesis;
pub mod order;
pub mod parts;
pub mod stack;
pub mod tools;
