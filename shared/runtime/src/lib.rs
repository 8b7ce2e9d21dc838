//! What every callchain binary needs besides telemetry: its settings, its
//! lifecycle, its pools.
//!
//! - [`env`]: settings from environment variables, read the same way by
//!   every binary: `main` reads the process's once into an [`env::Env`],
//!   tests build one from pairs.
//! - [`lifecycle`]: the shutdown signal every binary waits for, and the
//!   probe behind every `--healthcheck`.
//! - [`Allocator`]: the global allocator every binary installs.
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

/// The memory allocator of every callchain binary (and of the benchmarks,
/// which run the services in their own process), installed in each `main`:
///
/// ```ignore
/// #[global_allocator]
/// static ALLOCATOR: callchain_runtime::Allocator = callchain_runtime::Allocator;
/// ```
///
/// Every request and every consumed message allocates many small, short-lived
/// objects on several threads at once (span attributes, log lines, protobuf
/// and JSON bodies). glibc's allocator spends a fifth of the consumer's time
/// on them under load; mimalloc's thread-local free lists do not.
pub use mimalloc::MiMalloc as Allocator;
