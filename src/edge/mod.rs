//! The service's edge: what protects it from bad input and abuse before (and just after)
//! the handlers run: request timeout, body limits and decompression, the body budget, rate
//! limits and CORS. (Beacon-mode bodies are read in `routes::beacon`.)
//!
//! Order of the layers, outermost first: CORS → error shapes → timeout → per-IP rate limit
//! → request decompression → body limit → routes. CORS is outermost so that browsers can
//! read every answer, 429s and 413s included.

pub mod api_key_guard;
pub mod body_budget;
mod client_ip;
pub mod config;
pub mod cors;
pub mod limits;
pub mod rate_limit;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower::ServiceBuilder;
use tower_http::decompression::RequestDecompressionLayer;

pub use client_ip::{client_ip, client_ip_of, limit_key};
pub use config::{BrowserConfig, Config, RateLimitConfig, RequestLimits};
pub use rate_limit::{RateLimited, RateLimits};

use body_budget::BodyBudget;

/// Paths never rate limited: probes and scrapes must keep working under load.
const UNLIMITED_PATHS: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// Edge state shared by the middleware and the handlers.
#[derive(Debug)]
pub struct Edge {
    /// Per-IP and per-user token buckets.
    pub rate_limits: RateLimits,
    /// Browser settings (CORS origins, beacon mode).
    pub browser: BrowserConfig,
    /// Failed `X-API-Key` attempts per client.
    pub api_key_guard: api_key_guard::ApiKeyGuard,
    /// Request-body bytes that may be held in memory at once.
    pub body_budget: Arc<BodyBudget>,
    /// Largest body of the single-event routes, in bytes (named in the 413).
    pub body_limit: usize,
    /// A request running longer than this is answered 503.
    pub request_timeout: Duration,
}

impl Edge {
    /// Built once at start-up from a validated config.
    pub fn new(config: &Config) -> Self {
        let requests = &config.requests;
        Edge {
            rate_limits: RateLimits::new(&config.rate_limit),
            browser: config.browser.clone(),
            api_key_guard: api_key_guard::ApiKeyGuard::new(
                config.rate_limit.api_key_failure_burst,
                config.rate_limit.api_key_failure_interval,
            ),
            body_budget: Arc::new(BodyBudget::new(
                requests.body_budget_bytes,
                requests.anonymous_body_budget_bytes,
                requests.body_budget_wait,
            )),
            body_limit: requests.body_limit_bytes,
            request_timeout: requests.request_timeout,
        }
    }
}

/// Wraps `router` (all routes, fallbacks included) in the edge layers.
pub fn harden<S>(router: Router<S>, edge: &Arc<Edge>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    // Few `Router::layer` calls, each a composed stack (see `telemetry::http::instrument`),
    // listed outermost first. Unused middleware is left out rather than passed through.
    let router = router.layer(
        ServiceBuilder::new()
            .layer(RequestDecompressionLayer::new())
            .layer(limits::body_limit(edge.body_limit)),
    );
    let router = if edge.rate_limits.limits_ips() {
        router.layer(middleware::from_fn_with_state(edge.clone(), limit_by_ip))
    } else {
        router
    };
    router.layer(
        ServiceBuilder::new()
            .option_layer(cors::layer(&edge.browser))
            .layer(middleware::map_response(limits::shape_empty_errors))
            .layer(HandleErrorLayer::new(limits::timed_out))
            .timeout(edge.request_timeout),
    )
}
/// Before auth: one token from the client IP's bucket.
async fn limit_by_ip(State(edge): State<Arc<Edge>>, request: Request, next: Next) -> Response {
    if !UNLIMITED_PATHS.contains(&request.uri().path()) {
        let ip = client_ip(&request, edge.rate_limits.trusted_proxy_hops)
            .map_or_else(|| "unknown".to_owned(), limit_key);
        if let Err(limited) = edge.rate_limits.check_ip(&ip) {
            return limited.into_response();
        }
    }
    next.run(request).await
}
