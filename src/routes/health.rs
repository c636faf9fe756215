//! `GET /healthz` (the process answers) and `GET /readyz` (the database answers).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::STORAGE_RETRY_AFTER_SECS;
use crate::state::AppState;

/// The unauthenticated probe routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
}

/// Liveness: always 200 while the process serves.
#[utoipa::path(get, path = "/healthz", operation_id = "getHealthz", tag = "health",
    responses((status = 200, description = "The process serves", body = super::openapi::Status)))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Readiness: 200 when the database answers, else 503 with `Retry-After`.
#[utoipa::path(get, path = "/readyz", operation_id = "getReadyz", tag = "health",
    responses(
        (status = 200, description = "The database answers", body = super::openapi::Status),
        (status = 503, description = "The database does not answer", body = super::openapi::Detail,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => Json(json!({ "status": "ok" })).into_response(),
        Err(err) => {
            tracing::warn!(error = ?err, "readiness check: database not answering");
            let mut response = (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "detail": "Database unavailable" })),
            )
                .into_response();
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(STORAGE_RETRY_AFTER_SECS),
            );
            response
        }
    }
}
