//! What every callchain binary needs besides telemetry: its settings, its
//! lifecycle, its pools.
//!
//! - [`env`]: settings from environment variables, read the same way by
//!   every binary: `main` reads the process's once into an [`env::Env`],
//!   tests build one from pairs.
//! - [`lifecycle`]: the shutdown signal every binary waits for, and the
//!   probe behind every `--healthcheck`.
//! - `db` (feature `postgres`): the Postgres pool with the service's
//!   migrations applied, patient while Postgres starts; and the one reading
//!   of database errors (transient, refused, other) every service shares.
//!
//! Logs, traces and the spans of database statements live in
//! `callchain-telemetry`.

#[cfg(feature = "postgres")]
pub mod db;
pub mod env;
pub mod lifecycle;
