//! tracechain on the logs of a real run: the services in process on real
//! parts (tests/e2e's stack), one registration, its logs written to files
//! as `make dev` writes them, then read back by the library and the binary.
//! One binary for all suites, as its modules.
//!
//! - `chain`: the printed tree is ARCHITECTURE.md's eight-span chain.
//! - `gaps`: a removed span, a corrupted parent, a dropped hop or a span of
//!   another trace make tracechain exit non-zero and name the gap.
//! - `html`: the waterfall page, opened in headless Chromium.
//! - `jaeger`: the same trace read from the logs and from Jaeger gives the
//!   same tree.
//! - `records`: what the telemetry writes is what tracechain reads.

mod chain;
mod gaps;
mod html;
mod jaeger;
mod records;
mod run;
