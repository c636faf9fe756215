//! `GET /healthz` (the process answers) and `GET /readyz` (rows can be stored now).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use crate::edge::limits::RETRY_AFTER_SECS;
use crate::wire::{Detail, Status};

/// The unauthenticated probe routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
}

/// Liveness: always 200 while the process serves.
#[utoipa::path(get, path = "/healthz", operation_id = "getHealthz", tag = "health",
    responses((status = 200, description = "The process serves", body = Status)))]
pub async fn healthz() -> Json<Status> {
    Json(Status::OK)
}

/// Readiness: 200 when rows can be stored (direct mode: the database answers and group
/// commits progress; stream mode: a NATS server is connected), else 503 with `Retry-After`.
#[utoipa::path(get, path = "/readyz", operation_id = "getReadyz", tag = "health",
    responses(
        (status = 200, description = "The database answers", body = Status),
        (status = 503, description = "The database does not answer, or queued rows are not being committed", body = Detail,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    match state.sink.ready().await {
        Ok(()) => ready(),
        Err(detail) => unavailable(detail),
    }
}

/// 200 `{"status": "ok"}`.
pub(super) fn ready() -> Response {
    Json(Status::OK).into_response()
}

pub(super) fn unavailable(detail: &'static str) -> Response {
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(Detail::new(detail))).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    response
}
