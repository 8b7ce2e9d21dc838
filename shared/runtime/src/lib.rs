//! What every callchain binary needs besides telemetry: its settings, its
//! lifecycle, its pools.
//!
//! - [`env`]: settings from environment variables, read the same way by
//!   every binary: `main` reads the process's once into an [`env::Env`],
//!   tests build one from pairs; each service lists what it reads as
//!   [`env::Setting`]s, the one place each default is written.
//! - [`lifecycle`]: the shutdown signal every binary waits for, the bounded
//!   drain after it, and the probe behind every `--healthcheck`.
//! - [`runner`]: the one `main` of every service, from its settings to its
//!   exit, given a [`runner::Service`] and the telemetry's init.
//! - [`Allocator`]: the global allocator every binary installs, and
//!   [`tune_allocator`], which the runner calls first.
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
pub mod runner;

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

/// How long memory the program freed stays with the allocator before it
/// goes back to the OS, in milliseconds: jemalloc's default for its dirty
/// pages. mimalloc's own default, 1 s, returned the consumer's and the span
/// exporter's batch buffers (freed and allocated again every batch) to the
/// OS and took them back as fresh pages, which the kernel zeroes: a tenth
/// of the consumer's CPU time under load.
pub const PURGE_DELAY_MS: std::ffi::c_long = 10_000;

/// mimalloc's `mi_option_purge_delay` (its place in `mi_option_e`, which
/// `libmimalloc-sys` gives no name).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Sets the allocator's options: freed memory goes back to the OS after
/// [`PURGE_DELAY_MS`]. Called first thing in every `main` (the services'
/// through [`runner::main`]).
// The one `unsafe` of the workspace's own code (`[workspace.lints]` denies
// it elsewhere): mimalloc's options are set through its C interface.
#[allow(unsafe_code)]
pub fn tune_allocator() {
    // SAFETY: setting an option is a plain store mimalloc reads when it
    // next decides whether to purge; any thread may call it at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(unsafe_code)] // reads the option `tune_allocator` sets
    fn tuning_sets_the_purge_delay() {
        // SAFETY: reading an option is a plain load.
        let get = || unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        // mimalloc's default for the purge delay (set by nothing else in
        // this test binary): the index names the option meant.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(get(), 1_000);
        }
        tune_allocator();
        assert_eq!(get(), PURGE_DELAY_MS);
    }
}
