//! `GET /healthz` (the process answers) and `GET /readyz` (the database answers and takes
//! writes).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use crate::edge::limits::RETRY_AFTER_SECS;
use crate::ingest::GroupCommit;
use crate::store::Store;
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

/// Readiness: 200 when the database answers and group commits progress, else 503 with
/// `Retry-After`.
#[utoipa::path(get, path = "/readyz", operation_id = "getReadyz", tag = "health",
    responses(
        (status = 200, description = "The database answers", body = Status),
        (status = 503, description = "The database does not answer, or queued rows are not being committed", body = Detail,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ))]
pub async fn readyz(
    State(store): State<Arc<dyn Store>>,
    State(ingest): State<Arc<GroupCommit>>,
) -> Response {
    // The writers have connections of their own: a ping on the store's pool can succeed
    // while they are stuck.
    if ingest.stalled() {
        tracing::warn!("readiness check: group-commit writes are not committing");
        return unavailable("Database writes are stalled");
    }
    match tokio::time::timeout(PING_TIMEOUT, store.ping()).await {
        Ok(Ok(())) => Json(Status::OK).into_response(),
        Ok(Err(err)) => {
            tracing::warn!(error = ?err, "readiness check: database not answering");
            unavailable("Database unavailable")
        }
        Err(_elapsed) => {
            tracing::warn!("readiness check: database ping timed out");
            unavailable("Database unavailable")
        }
    }
}

/// A probe must answer while the database is silent (orchestrators give up after seconds).
const PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

fn unavailable(detail: &'static str) -> Response {
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(Detail::new(detail))).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    response
}
