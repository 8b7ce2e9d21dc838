//! End-to-end tests of the whole chain: HTTP → API → gRPC → user service →
//! Postgres, and API → Kafka → consumer → Postgres, with spans exported over
//! OTLP to a receiver in the test, or through the collector into Jaeger
//! (`jaeger`). One binary for all suites, as its modules.

mod auth;
mod bad_input;
mod baggage;
mod events;
mod grpc;
mod helpers;
mod jaeger;
mod relay_shards;
mod resilience;
mod rpc;
mod secrets;
mod span_size;
mod trace;
mod users;
