//! Process lifecycle shared by every binary.

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
