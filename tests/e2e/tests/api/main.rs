//! End-to-end tests of the whole chain: HTTP → API → gRPC → user service →
//! Postgres, and API → Kafka (tansu) → consumer → Postgres, with spans
//! exported over OTLP to a receiver in the test. One binary for all suites,
//! as its modules.

mod bad_input;
mod events;
mod grpc;
mod helpers;
mod trace;
mod users;
