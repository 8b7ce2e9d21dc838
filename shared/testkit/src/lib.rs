//! What tests need to run against the real parts.
//!
//! - [`postgres`]: a throwaway database per test on the machine's Postgres.
//! - [`kafka`]: Apache Kafka: the run's shared broker with topics of the
//!   test's own, or a broker of the test's own to stop and restart.
//! - [`otlp`]: an in-process OTLP receiver that keeps the spans it is sent.
//! - [`service`]: one service in process, on its own runtime and telemetry,
//!   on a port-0 listener.
//! - [`stack`]: the services wired together for one test.
//! - [`spans`]: spans as tests see them, and checks of a trace's shape.

pub mod kafka;
pub mod otlp;
pub mod postgres;
pub mod service;
pub mod spans;
pub mod stack;

pub use stack::Stack;
