//! The router: every route module merged once, and the middleware stack.

mod alerts;
mod analytics;
mod batch;
mod health;
pub mod json;
pub mod metrics;

use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use tower_http::timeout::TimeoutLayer;

use crate::error::ApiError;
use crate::state::AppState;

/// Tunables of the middleware stack.
#[derive(Debug, Clone, Copy)]
pub struct RouterLimits {
    /// A request running longer than this is answered 503.
    pub request_timeout: Duration,
    /// Largest body of a batch-endpoint request.
    pub batch_body_limit: usize,
    /// Serve `GET /metrics` on this router (false: it has its own admin listener).
    pub serve_metrics: bool,
}

/// All routes with their middleware.
pub fn router(state: AppState, limits: RouterLimits) -> Router {
    let body_limit = state.body_limit;
    let router = Router::new()
        .merge(analytics::routes())
        .merge(batch::routes(limits.batch_body_limit))
        .merge(health::routes())
        .merge(alerts::routes())
        .merge(if limits.serve_metrics {
            metrics::routes()
        } else {
            Router::new()
        })
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            alerts::watch_storage,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            limits.request_timeout,
        ));
    crate::telemetry::http::instrument(router).with_state(state)
}
