//! `POST /api/analytics/log_raw_metric` and `POST /api/analytics/log_raw_analytics`.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};

use super::json::JsonBody;
use crate::auth::Caller;
use crate::domain::{NewAnalyticsEvent, NewMetric};
use crate::error::ApiError;
use crate::idempotency::IdempotencyHeader;
use crate::state::AppState;
use crate::store::{EventRow, MetricRow};

/// The original's hint on a failed metric write.
const METRIC_HINT: &str = "Check analytics service connection and retry.";
/// The original's hint on a failed event write.
const ANALYTICS_HINT: &str = "Ensure analytics DB is reachable.";

/// The two ingestion routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/analytics/log_raw_metric", post(log_raw_metric))
        .route("/api/analytics/log_raw_analytics", post(log_raw_analytics))
}

// `caller` is taken as a `Result` so that a body that is not JSON is refused (422) before
// auth is looked at, as FastAPI did; the auth error is then returned before validation.

/// Stores one metric; answers its id as a bare JSON string.
#[tracing::instrument(name = "log_raw_metric", skip_all)]
pub async fn log_raw_metric(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    idempotency_key: IdempotencyHeader,
    body: JsonBody,
) -> Result<Json<String>, ApiError> {
    let caller = caller?;
    let metric = NewMetric::parse(&body.value).map_err(|errors| body.invalid(errors))?;
    let row = MetricRow::new(state.clock.now(), caller.user_id, metric);
    let keyed = state
        .idempotency
        .store_metric(state.store.as_ref(), &idempotency_key, &body, &row);
    if let Some(id) = keyed.await.map_err(|e| e.into_api_error(METRIC_HINT))? {
        return Ok(Json(id));
    }
    state
        .store
        .insert_metrics(std::slice::from_ref(&row))
        .await
        .map_err(|e| ApiError::storage(e, METRIC_HINT))?;
    Ok(Json(row.id.to_string()))
}

/// Stores one analytics event; answers its id as a bare JSON string.
#[tracing::instrument(name = "log_raw_analytics", skip_all)]
pub async fn log_raw_analytics(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    idempotency_key: IdempotencyHeader,
    body: JsonBody,
) -> Result<Json<String>, ApiError> {
    let caller = caller?;
    let event = NewAnalyticsEvent::parse(&body.value).map_err(|errors| body.invalid(errors))?;
    let row = EventRow::new(state.clock.now(), caller.user_id, event);
    let keyed = state
        .idempotency
        .store_event(state.store.as_ref(), &idempotency_key, &body, &row);
    if let Some(id) = keyed.await.map_err(|e| e.into_api_error(ANALYTICS_HINT))? {
        return Ok(Json(id));
    }
    state
        .store
        .insert_events(std::slice::from_ref(&row))
        .await
        .map_err(|e| ApiError::storage(e, ANALYTICS_HINT))?;
    Ok(Json(row.id.to_string()))
}
