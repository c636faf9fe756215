//! The router: every route module merged once, and the middleware stack.

mod alerts;
mod analytics;
mod batch;
mod health;
pub mod json;
pub mod metrics;
pub mod openapi;

use std::time::Duration;

use axum::Router;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

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
    let (routes, spec) = api_routes(limits.batch_body_limit).split_for_parts();
    let routes = routes
        .merge(openapi::routes(spec))
        .merge(if limits.serve_metrics {
            metrics::routes()
        } else {
            Router::new()
        })
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed });
    // Storage failures are watched only when there is a Discord channel to alert.
    let routes = if state.alerts.is_some() {
        routes.layer(axum::middleware::from_fn_with_state(
            state.clone(),
            alerts::watch_storage,
        ))
    } else {
        routes
    };
    let hardened = crate::edge::harden(routes, &state, limits.request_timeout);
    crate::telemetry::http::instrument(hardened).with_state(state)
}

/// Every documented route; a route added here is in `/openapi.json` automatically.
fn api_routes(batch_body_limit: usize) -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(analytics::routes())
        .merge(batch::routes(batch_body_limit))
        .merge(alerts::routes())
        .merge(health::routes())
}

/// The OpenAPI document of the service (what `GET /openapi.json` serves).
pub fn openapi_spec() -> utoipa::openapi::OpenApi {
    // The batch body limit is a layer; it does not show in the document.
    api_routes(usize::MAX).split_for_parts().1
}
