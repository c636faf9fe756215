//! The HTTP/1 (and, when enabled, cleartext HTTP/2) accept loop, with the connection limits
//! `axum::serve` does not expose: a deadline for each connection's request heads and idle
//! spells (`server/deadline.rs`), one for request bodies (`server/body_deadline.rs`), a cap
//! on open connections, per client (`server/client_cap.rs`) and in all, and on the header
//! buffer, and their metrics.
//!
//! Every request carries `ConnectInfo<SocketAddr>` (the peer), which the per-IP rate limit
//! reads when no trusted proxy names the client.

mod body_deadline;
mod client_cap;
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

use body_deadline::{BodyPace, DeadlineBody, LateBody, late_body_answer};
pub use body_deadline::{LATE_BODY_DETAIL, answer_late_bodies};
use client_cap::ClientCap;
use connection_metrics::ConnectionMetrics;
pub use connection_metrics::{
    CONNECTIONS_CLOSED, CONNECTIONS_LIMIT_REACHED, CONNECTIONS_OPEN, CONNECTIONS_REFUSED,
};
use deadline::{Activity, CloseReason, DeadlineIo, Timeouts};

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
    /// A request body is due within this of the server starting to read it…
    pub body_read_timeout: Duration,
    /// …plus one second per this many bytes received (0: no extension).
    pub body_min_rate: u64,
    /// Most connections open at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Most connections open at once from one client (IPv4 address, IPv6 /64); further ones
    /// are closed at accept. 0: no cap.
    pub max_connections_per_client: usize,
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
    let pace = BodyPace {
        timeout: limits.body_read_timeout,
        min_rate: limits.body_min_rate,
    };
    let clients = ClientCap::new(limits.max_connections_per_client);
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
        let client = match &clients {
            Some(clients) => match clients.admit(peer.ip()) {
                Some(client) => Some(client),
                None => {
                    // Dropped unanswered: answering would mean reading the request, which
                    // is the work the cap saves. The slot's permit goes back with it.
                    metrics.refused_per_client.increment(1);
                    tracing::debug!("connection refused: the client has its most open");
                    continue;
                }
            },
            None => None,
        };
        let open = metrics.opened();
        // Answers are one small write each: never hold them back waiting for an ACK (Nagle).
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, %peer, "could not set TCP_NODELAY");
        }
        let activity = Activity::new(timeouts);
        let io = TokioIo::new(DeadlineIo::new(stream, activity.clone()));
        let service = tracked_service(router.clone(), peer, activity.clone(), pace);
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
            drop(client);
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

/// The router for one connection: each request carries the peer address, is marked in
/// flight on `activity` until its answer is ready, and has its body read under `pace`.
fn tracked_service(
    router: Router,
    peer: SocketAddr,
    activity: Arc<Activity>,
    pace: BodyPace,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response,
    Error = Infallible,
    Future: Send + 'static,
> {
    TowerToHyperService::new(tower::service_fn(move |request: Request<Incoming>| {
        let version = request.version();
        let late = LateBody::default();
        let (mut parts, body) = request.into_parts();
        parts.extensions.insert(ConnectInfo(peer));
        parts.extensions.insert(late.clone());
        let request = Request::from_parts(parts, DeadlineBody::new(body, pace, late.clone()));
        let in_flight = activity.request_started(version);
        let answer = router.clone().oneshot(request);
        let activity = activity.clone();
        async move {
            let Ok(mut response) = answer.await;
            if late.is_late() {
                // A router without `answer_late_bodies` still gives the documented answer.
                if response.status() != axum::http::StatusCode::REQUEST_TIMEOUT {
                    response = late_body_answer(version);
                }
                if version < axum::http::Version::HTTP_2 {
                    activity.closing_for(CloseReason::BodyTimeout);
                }
            }
            drop(in_flight);
            Ok::<_, Infallible>(response)
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
