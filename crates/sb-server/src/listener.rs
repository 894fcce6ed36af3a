//! The accept loop: a connection slot is taken before `accept` (so overload waits at the door),
//! then a bounded TLS handshake, then HTTP/1.1 or HTTP/2 by ALPN with header limits and timeouts.

use crate::AppState;
use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::Service;

pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    st: Arc<AppState>,
) {
    let limits = st.config.limits.clone();
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(limits.connections_max.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .max_buf_size(limits.header_size_bytes_max.max(8192))
        .header_read_timeout(Duration::from_millis(limits.idle_timeout_ms));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.header_size_bytes_max).unwrap_or(u32::MAX))
        .keep_alive_interval(Duration::from_millis(limits.idle_timeout_ms / 2))
        .keep_alive_timeout(Duration::from_secs(20));
    let handshake_timeout = Duration::from_millis(limits.tls_handshake_timeout_ms);

    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = st.shutdown.cancelled() => break,
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = st.shutdown.cancelled() => break,
        };
        let _ = tcp.set_nodelay(true);
        st.metrics.connections_total.inc();
        st.metrics.connections_open.inc();
        let acceptor = acceptor.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let router = router.clone();
        let st = st.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => Some(s),
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "tls handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(%peer, "tls handshake timed out");
                    None
                }
            };
            if let Some(tls) = tls {
                let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    let mut router = router.clone();
                    async move { router.call(req).await }
                });
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                    .into_owned();
                if let Err(e) = watcher.watch(conn).await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            } else {
                st.metrics.tls_handshake_failures.inc();
            }
            st.metrics.connections_open.dec();
        });
    }
    drop(listener);
    let grace = Duration::from_millis(limits.shutdown_grace_ms);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown grace period; closing them");
    }
}
