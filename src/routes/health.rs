//! `GET /healthz` (the process answers) and `GET /readyz` (the database answers).

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::error::STORAGE_RETRY_AFTER_SECS;
use crate::state::AppState;

/// The unauthenticated probe routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// Liveness: always 200 while the process serves.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Readiness: 200 when the database answers, else 503 with `Retry-After`.
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
