//! Process lifecycle shared by every binary.

use std::{future::Future, time::Duration};

use crate::env::{Env, InvalidVar, Setting};

/// The setting that bounds a graceful shutdown, read by every service. Its
/// default is Docker's own grace period before it sends SIGKILL.
pub const SHUTDOWN_TIMEOUT: Setting = Setting {
    name: "SHUTDOWN_TIMEOUT_SECONDS",
    default: Some("10"),
    doc: "After SIGTERM (or Ctrl-C) a service drains for at most this long, in whole seconds (at least 1), \
          then exits anyway with status 1 (logged).",
};

/// The name of [`SHUTDOWN_TIMEOUT`].
pub const SHUTDOWN_TIMEOUT_VAR: &str = SHUTDOWN_TIMEOUT.name;

/// [`SHUTDOWN_TIMEOUT`]: whole seconds, at least 1.
pub fn shutdown_timeout(env: &Env) -> Result<Duration, InvalidVar> {
    let seconds: u64 = env.setting(&SHUTDOWN_TIMEOUT, "a whole number of seconds, at least 1")?;
    if seconds == 0 {
        return Err(InvalidVar {
            name: SHUTDOWN_TIMEOUT_VAR.to_owned(),
            expected: "a whole number of seconds, at least 1",
            value: "0".to_owned(),
        });
    }
    Ok(Duration::from_secs(seconds))
}

/// A drain that outlasted its bound: the process must exit anyway.
#[derive(Debug, thiserror::Error)]
#[error("still draining {0:?} after the shutdown signal; giving up")]
pub struct DrainTimedOut(pub Duration);

/// Runs a service until it returns by itself, or until the shutdown signal
/// ([`shutdown_signal`]) and then its drain; the drain may last `bound` at
/// most. `serve` is given the future that resolves at the signal, as every
/// service's `run` takes it.
///
/// `Err` when the drain outlasted `bound`: the caller flushes what it can and
/// exits non-zero, so a stuck request or an unreachable dependency never holds
/// a process past its orchestrator's patience (after which comes SIGKILL, and
/// no flush at all).
pub async fn run_until_signal<F, S>(bound: Duration, serve: S) -> Result<F::Output, DrainTimedOut>
where
    S: FnOnce(BoxedSignal) -> F,
    F: Future,
{
    run_until(shutdown_signal(), bound, serve).await
}

/// The future a service is given to learn that it must stop.
pub type BoxedSignal = std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// [`run_until_signal`] with any signal: the tests give their own.
pub async fn run_until<F, S>(
    signal: impl Future<Output = ()>,
    bound: Duration,
    serve: S,
) -> Result<F::Output, DrainTimedOut>
where
    S: FnOnce(BoxedSignal) -> F,
    F: Future,
{
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut stopped_rx = stopped;
    let service = serve(Box::pin(async move {
        // An error means the sender is gone: stop as well.
        let _ = stopped_rx.wait_for(|stop| *stop).await;
    }));
    tokio::pin!(service);
    tokio::select! {
        output = &mut service => return Ok(output),
        () = signal => {}
    }
    let started = tokio::time::Instant::now();
    stop.send_replace(true);
    match tokio::time::timeout(bound, service).await {
        Ok(output) => {
            tracing::info!(drain_ms = started.elapsed().as_millis() as u64, "drained");
            Ok(output)
        }
        Err(_) => {
            tracing::error!(
                bound_ms = bound.as_millis() as u64,
                "the drain outlasted its bound; exiting anyway"
            );
            Err(DrainTimedOut(bound))
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM: the signal to drain and stop.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutdown signal received; draining");
}

/// Where to probe a service that listens on `addr`: loopback when it listens
/// on every interface (`0.0.0.0`), as containers do.
pub fn probe_addr(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    if addr.ip().is_unspecified() {
        std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

/// `GET path` over plain HTTP/1.0, succeeding on `200`: the container health
/// checks, which need no tool the image does not ship.
pub async fn http_probe(addr: std::net::SocketAddr, path: &str) -> std::io::Result<()> {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let addr = probe_addr(addr);
    let timeout = |_| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{addr} did not answer in time"));
    let mut stream = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(timeout)??;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut answer))
        .await
        .map_err(timeout)??;
    let answer = String::from_utf8_lossy(&answer);
    let status_line = answer.lines().next().unwrap_or_default();
    if status_line.split_whitespace().nth(1) == Some("200") {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("{path} answered: {status_line}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shutdown_bound_defaults_to_10_s_and_refuses_zero() {
        assert_eq!(shutdown_timeout(&Env::default()).unwrap(), Duration::from_secs(10));
        let env = Env::from_pairs([(SHUTDOWN_TIMEOUT_VAR, "3")]);
        assert_eq!(shutdown_timeout(&env).unwrap(), Duration::from_secs(3));
        let env = Env::from_pairs([(SHUTDOWN_TIMEOUT_VAR, "0")]);
        assert!(shutdown_timeout(&env).is_err());
    }

    #[tokio::test]
    async fn a_service_that_drains_in_time_returns_its_output() {
        let output = run_until(std::future::ready(()), Duration::from_secs(5), |signal| async move {
            signal.await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            7
        })
        .await;
        assert_eq!(output.unwrap(), 7);
    }

    #[tokio::test]
    async fn a_drain_past_its_bound_is_given_up() {
        let started = tokio::time::Instant::now();
        let output = run_until(
            std::future::ready(()),
            Duration::from_millis(200),
            |signal| async move {
                signal.await;
                std::future::pending::<()>().await;
            },
        )
        .await;
        assert!(output.is_err());
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(200) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn a_service_that_ends_by_itself_is_not_given_the_signal() {
        let output = run_until(std::future::pending::<()>(), Duration::from_secs(5), |_signal| async {
            "done"
        })
        .await;
        assert_eq!(output.unwrap(), "done");
    }

    #[test]
    fn an_unspecified_address_is_probed_on_loopback() {
        assert_eq!(
            probe_addr("0.0.0.0:8080".parse().unwrap()),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(probe_addr("10.1.2.3:9".parse().unwrap()), "10.1.2.3:9".parse().unwrap());
    }

    #[tokio::test]
    async fn a_probe_succeeds_on_200_and_fails_otherwise() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        for (answer, ok) in [
            ("HTTP/1.1 200 OK\r\n\r\nok", true),
            ("HTTP/1.1 503 Service Unavailable\r\n\r\n", false),
        ] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut request = [0u8; 256];
                let _ = socket.read(&mut request).await;
                socket.write_all(answer.as_bytes()).await.unwrap();
            });
            assert_eq!(http_probe(addr, "/readyz").await.is_ok(), ok, "{answer}");
        }
    }
}
