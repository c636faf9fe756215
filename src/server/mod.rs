//! The HTTP/1 (and, when enabled, cleartext HTTP/2) accept loop, with the connection limits
//! `axum::serve` does not expose: a deadline for each connection's request heads and idle
//! spells (`server/deadline.rs`), a cap on open connections and on the header buffer, and
//! their metrics.
//!
//! Every request carries `ConnectInfo<SocketAddr>` (the peer), which the per-IP rate limit
//! reads when no trusted proxy names the client.

mod config;
mod connection_metrics;
mod deadline;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use connection_metrics::ConnectionMetrics;
pub use connection_metrics::{CONNECTIONS_CLOSED, CONNECTIONS_LIMIT_REACHED, CONNECTIONS_OPEN};
use deadline::{Activity, DeadlineIo, Timeouts};

pub use config::Config;

/// Smallest header buffer hyper accepts.
const MIN_HEADER_BUFFER: usize = 8192;

/// Per-connection protections, from `[server]` settings.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// A client must send a complete request head within this time of connecting (any
    /// protocol) or, on HTTP/1, of the first byte of a later request; else it is closed.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight is closed when no request starts within this.
    pub keep_alive_idle: Duration,
    /// Most connections open at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Largest request head (request line + headers), in bytes.
    pub max_header_bytes: usize,
    /// Cleartext HTTP/2 (prior knowledge) with at most this many streams per connection;
    /// `None`: HTTP/1 only.
    pub http2_max_concurrent_streams: Option<u32>,
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting and waits
/// for open connections to finish their in-flight requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let metrics = ConnectionMetrics::register();
    let builder = connection_builder(&limits);
    let timeouts = Timeouts {
        header: limits.header_read_timeout,
        idle: limits.keep_alive_idle,
    };
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        if permits.available_permits() == 0 {
            metrics.limit_reached.increment(1);
        }
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let open = metrics.opened();
        // Answers are one small write each: never hold them back waiting for an ACK (Nagle).
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, %peer, "could not set TCP_NODELAY");
        }
        let activity = Activity::new(timeouts);
        let io = TokioIo::new(DeadlineIo::new(stream, activity.clone()));
        let service = tracked_service(router.clone(), peer, activity.clone());
        let connection = builder.serve_connection(io, service).into_owned();
        let connection = graceful.watch(connection);
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let result = connection.await;
            match activity.closed_by() {
                Some(reason) => {
                    tracing::debug!(?reason, %peer, "connection closed by the server");
                    metrics.closed(reason);
                }
                None => {
                    if let Err(err) = result {
                        tracing::debug!(error = %err, %peer, "connection ended with an error");
                    }
                }
            }
            drop(open);
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// hyper's settings for every connection. hyper's own header timer is off: it also runs
/// while a keep-alive connection is idle, so the idle timeout could not be longer than it;
/// [`deadline`] does both.
fn connection_builder(limits: &ConnectionLimits) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BUFFER));
    match limits.http2_max_concurrent_streams {
        Some(streams) => {
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(streams)
                .max_header_list_size(limits.max_header_bytes.try_into().unwrap_or(u32::MAX));
            builder
        }
        None => builder.http1_only(),
    }
}

/// The router for one connection: each request carries the peer address and is marked in
/// flight on `activity` until its answer is ready.
fn tracked_service(
    router: Router,
    peer: SocketAddr,
    activity: Arc<Activity>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response,
    Error = Infallible,
    Future: Send + 'static,
> {
    TowerToHyperService::new(tower::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let in_flight = activity.request_started(request.version());
        let answer = router.clone().oneshot(request);
        async move {
            let response = answer.await;
            drop(in_flight);
            response
        }
    }))
}

/// The peer address of a request served by [`serve`], from its extensions (absent in
/// `oneshot` tests).
pub fn peer_addr(extensions: &axum::http::Extensions) -> Option<SocketAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0)
}
