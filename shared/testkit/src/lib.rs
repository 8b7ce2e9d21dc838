//! What tests need to run against the real parts.
//!
//! - [`spans`]: spans as tests see them, and checks of a trace's shape.

pub mod spans;
