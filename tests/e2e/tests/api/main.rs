//! End-to-end tests of the traced request path: HTTP → API → gRPC → user
//! service → Postgres, with spans exported over OTLP to a receiver in the
//! test. One binary for all suites, as its modules.

mod bad_input;
mod helpers;
mod trace;
mod users;
