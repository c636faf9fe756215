//! The service's edge: what protects it from bad input and abuse before (and just after)
//! the handlers run: request timeout, body limits and decompression, rate limits, CORS and
//! beacon-mode ingestion.
//!
//! Order of the layers, outermost first: CORS → error shapes → timeout → per-IP rate limit
//! → request decompression → body limit → routes. CORS is outermost so that browsers can
//! read every answer, 429s and 413s included.

pub mod api_key_guard;
pub mod beacon;
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
pub use config::{BrowserSettings, RateLimitSettings};
pub use rate_limit::{RateLimited, RateLimits};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// Paths never rate limited: probes and scrapes must keep working under load.
const UNLIMITED_PATHS: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// Edge state shared by the middleware and the handlers.
#[derive(Debug)]
pub struct Edge {
    /// Per-IP and per-user token buckets.
    pub rate_limits: RateLimits,
    /// Browser settings (CORS origins, beacon mode).
    pub browser: BrowserSettings,
    /// Failed `X-API-Key` attempts per client.
    pub api_key_guard: api_key_guard::ApiKeyGuard,
}

impl Edge {
    /// Built once at start-up from the settings.
    pub fn new(rate_limit: &RateLimitSettings, browser: &BrowserSettings) -> Self {
        Edge {
            rate_limits: RateLimits::new(rate_limit),
            browser: browser.clone(),
            api_key_guard: api_key_guard::ApiKeyGuard::new(
                rate_limit.api_key_failure_burst,
                Duration::from_secs(rate_limit.api_key_failure_interval_secs),
            ),
        }
    }
}

/// After auth: takes a token from the caller's per-user bucket (429 when empty).
pub fn admit(state: &AppState, caller: Caller) -> Result<Caller, ApiError> {
    admit_rows(state, caller, 1)
}

/// After auth, for a request that stores up to `rows` rows (a batch): one token per row,
/// so that the limit counts what is stored.
pub fn admit_rows(state: &AppState, caller: Caller, rows: usize) -> Result<Caller, ApiError> {
    state.edge.rate_limits.check_user_n(&caller.user_id, rows)?;
    Ok(caller)
}

/// Wraps `router` (all routes, fallbacks included) in the edge layers.
pub fn harden(
    router: Router<AppState>,
    state: &AppState,
    request_timeout: Duration,
) -> Router<AppState> {
    // Few `Router::layer` calls, each a composed stack (see `telemetry::http::instrument`),
    // listed outermost first. Unused middleware is left out rather than passed through.
    let router = router.layer(
        ServiceBuilder::new()
            .layer(RequestDecompressionLayer::new())
            .layer(limits::body_limit(state.body_limit)),
    );
    let router = if state.edge.rate_limits.limits_ips() {
        router.layer(middleware::from_fn_with_state(
            state.edge.clone(),
            limit_by_ip,
        ))
    } else {
        router
    };
    router.layer(
        ServiceBuilder::new()
            .option_layer(cors::layer(&state.edge.browser))
            .layer(middleware::map_response(limits::shape_empty_errors))
            .layer(HandleErrorLayer::new(limits::timed_out))
            .timeout(request_timeout),
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
