//! The router: every route module merged once, and the middleware stack.

pub mod alerts;
mod analytics;
pub mod batch;
pub mod beacon;
mod health;
pub mod json;
pub mod loader;
pub mod metrics;
pub mod openapi;
mod state;

use axum::Router;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::error::ApiError;

pub use state::{AppState, Handles};

/// All routes with their middleware. `serve_metrics`: also `GET /metrics` (false when it
/// has its own admin listener).
pub fn router(state: AppState, batch_body_limit: usize, serve_metrics: bool) -> Router {
    let (routes, spec) = api_routes(batch_body_limit).split_for_parts();
    let routes = routes
        .merge(openapi::routes(spec))
        .merge(if serve_metrics {
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
    // Innermost of the edge, so that CORS and the request metrics see the 408.
    let routes = routes.layer(axum::middleware::from_fn(crate::server::answer_late_bodies));
    let hardened = crate::edge::harden(routes, &state.edge);
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
