//! The HTTP listener: accepts connections, over TLS where the server has a certificate, and
//! serves the API on each with hyper's HTTP/1.1, bounded in time: a TLS handshake, and the
//! headers of each request (the first, and each next one on a kept-alive connection, so an idle
//! connection is closed too), must arrive within their timeouts, or the connection is closed.

use std::sync::Arc;
use std::time::Duration;

/// How long a client may take, or leave a connection idle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// From the connection to the end of its TLS handshake.
    pub handshake: Duration,
    /// From the connection (or the end of the previous answer) to the end of a request's
    /// headers: a slow or idle client is cut off.
    pub header: Duration,
    /// From a request's headers to its answer, its body included (event streams and output
    /// requests aside): a body that trickles in, or stops, is answered 408.
    pub request: Duration,
}

impl Default for Timeouts {
    /// 10 s for a handshake, 30 s for a request's headers or between requests, 60 s for a
    /// request's body and answer.
    fn default() -> Self {
        Timeouts {
            handshake: Duration::from_secs(10),
            header: Duration::from_secs(30),
            request: Duration::from_secs(60),
        }
    }
}

/// Serves `app` on `listener` until the task is dropped. A connection that fails (a bad
/// handshake, a timeout, a reset) ends alone, logged at debug level: at fleet scale such
/// failures are routine.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    timeouts: Timeouts,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, most likely: wait a little rather than spin.
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (app, acceptor) = (app.clone(), acceptor.clone());
        tokio::spawn(async move {
            let service = hyper_util::service::TowerToHyperService::new(app);
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(timeouts.header);
            let served = match acceptor {
                Some(acceptor) => match tokio::time::timeout(timeouts.handshake, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        http.serve_connection(hyper_util::rt::TokioIo::new(stream), service).with_upgrades().await
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "tls handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "tls handshake timed out");
                        return;
                    }
                },
                None => http.serve_connection(hyper_util::rt::TokioIo::new(tcp), service).with_upgrades().await,
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
}
