//! The one `main` of every service: settings, `--healthcheck`, telemetry,
//! the listener, the run until SIGTERM, and the way out.
//!
//! A service describes itself once ([`Service`]); its `main` only installs
//! the allocator and calls [`main`] with the telemetry's init. The telemetry
//! is handed in as a function, not called from here: `callchain-telemetry`
//! depends on this crate, and this crate on no telemetry.

use std::{future::Future, net::SocketAddr, time::Duration};

use crate::{
    env::Env,
    lifecycle::{self, BoxedSignal, DrainTimedOut},
};

/// What the runner needs of a service: its name, its settings, where it
/// listens, its probe, and its `run`.
pub trait Service: Sized {
    /// Its `service.name`, in every span and log line.
    const NAME: &'static str;

    /// Its settings, read from `env`.
    fn from_env(env: &Env) -> anyhow::Result<Self>;

    /// Where it listens (the address `--healthcheck` probes too).
    fn listen_addr(&self) -> SocketAddr;

    /// The container health check: succeeds when the service at `addr`
    /// answers as ready.
    fn healthcheck(addr: SocketAddr) -> impl Future<Output = anyhow::Result<()>>;

    /// Serves on `listener` until `shutdown` resolves, then drains.
    fn run(self, listener: tokio::net::TcpListener, shutdown: BoxedSignal) -> impl Future<Output = anyhow::Result<()>>;
}

/// The argument that turns a service's binary into its own health probe.
pub const HEALTHCHECK_ARG: &str = "--healthcheck";

/// The whole life of a service's process: tunes the allocator, starts Tokio,
/// reads the settings from the process's environment, and either probes
/// (`--healthcheck`) or sets up telemetry with `init_telemetry` and serves
/// until SIGTERM or Ctrl-C.
///
/// The telemetry's guard `G` flushes what it holds when dropped. A drain
/// that outlasts `SHUTDOWN_TIMEOUT_SECONDS` flushes it and exits 1 at once,
/// abandoning what still runs (see [`serve`]).
pub fn main<S, G, E>(init_telemetry: impl FnOnce(&Env, &'static str) -> Result<G, E>) -> anyhow::Result<()>
where
    S: Service,
    E: Into<anyhow::Error>,
{
    crate::tune_allocator();
    let runtime = tokio::runtime::Runtime::new()?;
    let exit = runtime.block_on(async {
        let env = Env::from_process();
        let service = S::from_env(&env)?;
        if std::env::args().any(|arg| arg == HEALTHCHECK_ARG) {
            return S::healthcheck(service.listen_addr()).await.map(|()| Exit::Done);
        }
        let bound = lifecycle::shutdown_timeout(&env)?;
        let telemetry = init_telemetry(&env, S::NAME).map_err(Into::into)?;
        let listener = tokio::net::TcpListener::bind(service.listen_addr()).await?;
        serve(service, listener, lifecycle::shutdown_signal(), bound, telemetry).await
    })?;
    match exit {
        Exit::Done => Ok(()),
        Exit::Failed(error) => Err(error),
        Exit::Abandoned(timed_out) => {
            // What still runs is abandoned, so the process exits now rather
            // than when its last task does (dropping the runtime would wait
            // for its blocking threads).
            eprintln!("{timed_out}");
            std::process::exit(1)
        }
    }
}

/// How a service's run ended, and so how its process exits.
#[derive(Debug)]
pub enum Exit {
    /// It stopped by itself or drained in time: exit 0.
    Done,
    /// It failed (already logged): exit 1 with the error.
    Failed(anyhow::Error),
    /// Its drain outlasted the bound (already logged): exit 1 at once.
    Abandoned(DrainTimedOut),
}

/// Runs `service` on `listener` until `signal` and its drain, bounded by
/// `bound`, then drops `telemetry`, which flushes the last spans. A failure
/// is logged before that flush, so its line and its span go out with it.
pub async fn serve<S: Service, G>(
    service: S,
    listener: tokio::net::TcpListener,
    signal: impl Future<Output = ()>,
    bound: Duration,
    telemetry: G,
) -> anyhow::Result<Exit> {
    let exit = match lifecycle::run_until(signal, bound, |signal| service.run(listener, signal)).await {
        Ok(Ok(())) => Exit::Done,
        Ok(Err(error)) => {
            tracing::error!(
                error = &*error as &dyn std::error::Error,
                service = S::NAME,
                "the service failed"
            );
            Exit::Failed(error)
        }
        Err(timed_out) => Exit::Abandoned(timed_out),
    };
    drop(telemetry);
    Ok(exit)
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };

    use super::*;

    /// A service that does what its settings say once it is told to stop.
    struct Fake {
        stops: Stops,
    }

    enum Stops {
        AtOnce,
        Never,
        Failing,
    }

    impl Service for Fake {
        const NAME: &'static str = "fake";

        fn from_env(_: &Env) -> anyhow::Result<Self> {
            Ok(Self { stops: Stops::AtOnce })
        }

        fn listen_addr(&self) -> SocketAddr {
            SocketAddr::from(([127, 0, 0, 1], 0))
        }

        async fn healthcheck(_: SocketAddr) -> anyhow::Result<()> {
            Ok(())
        }

        async fn run(self, _: tokio::net::TcpListener, shutdown: BoxedSignal) -> anyhow::Result<()> {
            shutdown.await;
            match self.stops {
                Stops::AtOnce => Ok(()),
                Stops::Never => std::future::pending().await,
                Stops::Failing => anyhow::bail!("the database went away"),
            }
        }
    }

    /// Stands for the telemetry's guard: notes when it was flushed.
    struct Guard(Arc<AtomicBool>);

    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    async fn serve_until_signalled(stops: Stops) -> (Exit, bool) {
        let flushed = Arc::new(AtomicBool::new(false));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let exit = serve(
            Fake { stops },
            listener,
            std::future::ready(()),
            Duration::from_millis(100),
            Guard(flushed.clone()),
        )
        .await
        .unwrap();
        (exit, flushed.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn a_service_that_drains_in_time_exits_0_after_the_flush() {
        let (exit, flushed) = serve_until_signalled(Stops::AtOnce).await;
        assert!(matches!(exit, Exit::Done), "{exit:?}");
        assert!(flushed, "the telemetry is flushed before the process exits");
    }

    #[tokio::test]
    async fn a_failed_service_exits_1_with_its_error_after_the_flush() {
        let (exit, flushed) = serve_until_signalled(Stops::Failing).await;
        match exit {
            Exit::Failed(error) => assert_eq!(error.to_string(), "the database went away"),
            other => panic!("{other:?}"),
        }
        assert!(flushed, "the telemetry is flushed before the process exits");
    }

    #[tokio::test]
    async fn a_drain_past_its_bound_flushes_the_telemetry_before_the_process_is_abandoned() {
        let (exit, flushed) = serve_until_signalled(Stops::Never).await;
        assert!(matches!(exit, Exit::Abandoned(_)), "{exit:?}");
        assert!(flushed, "the telemetry is flushed before the process exits");
    }
}
