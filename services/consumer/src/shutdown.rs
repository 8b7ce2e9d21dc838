//! The signal to stop, shared by the health server and the consume loop.

use std::future::Future;

use futures::future::{BoxFuture, FutureExt as _, Shared};

/// Resolves once the process is asked to stop, for every clone and every
/// call, however many times it is awaited.
#[derive(Clone)]
pub struct Shutdown(Shared<BoxFuture<'static, ()>>);

impl Shutdown {
    pub fn new(signal: impl Future<Output = ()> + Send + 'static) -> Self {
        Self(signal.boxed().shared())
    }

    /// Resolves at shutdown; borrows nothing, so it may outlive `self`.
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        self.0.clone()
    }
}
