//! What tests need to run against the real parts.
//!
//! - [`chromium`]: headless Chromium, to read a page's DOM or picture.
//! - [`postgres`]: a throwaway database per test on the machine's Postgres.
//! - [`kafka`]: Apache Kafka: the run's shared broker with topics of the
//!   test's own, or a broker of the test's own to stop and restart.
//! - [`logs`]: log lines kept in memory, to read a service's JSON lines back.
//! - [`otlp`]: an in-process OTLP receiver that keeps the spans it is sent.
//! - [`process`]: a service binary in a process of its own, to send it
//!   SIGTERM or `kill -9` and read its log lines and exit status.
//! - [`service`]: one service in process, on its own runtime and telemetry,
//!   on a port-0 listener, and [`service::wait_until`] it is ready.
//! - [`spans`]: spans as tests see them, and a trace's tree.
//!
//! It is the leaf of the test harness: it knows no service. The services
//! wired together, and the call chain they must leave, live in `tests/e2e`.

pub mod chromium;
pub mod kafka;
pub mod logs;
pub mod otlp;
pub mod postgres;
pub mod process;
pub mod service;
pub mod spans;
