//! `POST /api/analytics/log_raw_metric` and `POST /api/analytics/log_raw_analytics`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequest, Request, State};
use axum::http::HeaderMap;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::beacon;
use super::json::{CheckedBody, RequestLine, is_json_content_type};
use crate::auth::{AuthError, Caller};
use crate::domain::{NewAnalyticsEvent, NewMetric};
use crate::error::ApiError;
use crate::idempotency::IdempotencyHeader;
use crate::sink::Outcome;
use crate::store::{EventRow, MetricRow, StoreError};

/// The original's hint on a failed metric write.
pub(super) const METRIC_HINT: &str = "Check analytics service connection and retry.";
/// The original's hint on a failed event write.
pub(super) const ANALYTICS_HINT: &str = "Ensure analytics DB is reachable.";

/// The two ingestion routes, with their OpenAPI operations.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(log_raw_metric))
        .routes(routes!(log_raw_analytics))
}

// `caller` is taken as a `Result` so that a body that is not JSON is refused (422) before
// auth is looked at, as FastAPI did; the auth error is then returned before validation.

/// Stores one metric; answers its id as a bare JSON string.
#[utoipa::path(
    post,
    path = "/api/analytics/log_raw_metric",
    operation_id = "postAnalyticsLogRawMetric",
    tag = "analytics",
    request_body = super::openapi::LogRawMetricRequest,
    security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "Stored; the new row's id", content_type = "application/json", body = String),
        super::openapi::ErrorResponses,
    ),
)]
#[tracing::instrument(name = "log_raw_metric", skip_all)]
pub async fn log_raw_metric(
    State(state): State<AppState>,
    caller: Result<Caller, AuthError>,
    idempotency_key: IdempotencyHeader,
    body: CheckedBody,
) -> Result<Json<String>, ApiError> {
    let caller = state.edge.rate_limits.admit(caller?, 1)?;
    let metric = body.read(NewMetric::from_body).await;
    let metric = metric.map_err(|errors| body.invalid(errors))?;
    let row = MetricRow::new(state.clock.now(), caller.user_id, metric);
    let stored = state.sink.store(&idempotency_key, row).await;
    answer(stored, body.request(), METRIC_HINT)
}

/// Stores one analytics event; answers its id as a bare JSON string. With beacon mode on,
/// a `text/plain` JSON body may carry the JWT in a `token` field instead of the header.
#[utoipa::path(
    post,
    path = "/api/analytics/log_raw_analytics",
    operation_id = "postAnalyticsLogRawAnalytics",
    tag = "analytics",
    request_body = super::openapi::LogRawAnalyticsRequest,
    security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "Stored; the new row's id", content_type = "application/json", body = String),
        super::openapi::ErrorResponses,
    ),
)]
#[tracing::instrument(name = "log_raw_analytics", skip_all)]
pub async fn log_raw_analytics(
    State(state): State<AppState>,
    caller: Result<Caller, AuthError>,
    idempotency_key: IdempotencyHeader,
    body: EventBody,
) -> Result<Json<String>, ApiError> {
    let EventBody {
        body,
        beacon_headers,
    } = body;
    let caller = beacon::caller(&state.authenticator, caller, beacon_headers, body.bytes());
    let caller = state.edge.rate_limits.admit(caller.await?, 1)?;
    let beacon_enabled = state.edge.browser.beacon_enabled;
    let event = body
        .read(move |read| NewAnalyticsEvent::from_body(beacon::unwrap_body(beacon_enabled, read)))
        .await;
    let event = event.map_err(|errors| body.invalid(errors))?;
    let row = EventRow::new(state.clock.now(), caller.user_id, event);
    let stored = state.sink.store(&idempotency_key, row).await;
    answer(stored, body.request(), ANALYTICS_HINT)
}

/// The id of the stored row, a 422 at the `Idempotency-Key` header, or the storage error.
fn answer(
    stored: Result<Outcome, Arc<StoreError>>,
    request: &RequestLine,
    hint: &'static str,
) -> Result<Json<String>, ApiError> {
    match stored {
        Ok(Outcome::Stored(id)) => Ok(Json(id)),
        Ok(Outcome::Refused(error)) => Err(request.invalid(vec![error])),
        Err(err) => Err(ApiError::storage(err, hint)),
    }
}

/// `log_raw_analytics`'s body, syntax checked, and the request's headers when it may be a
/// beacon (see [`beacon::caller`]).
pub struct EventBody {
    /// The body, parsed only after auth.
    pub body: CheckedBody,
    /// The headers a beacon's token is checked with; `None` when not a possible beacon.
    pub beacon_headers: Option<HeaderMap>,
}

impl FromRequest<AppState> for EventBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let beacon_headers = beacon::headers_of_possible_beacon(
            state.edge.browser.beacon_enabled,
            is_json_content_type(request.headers()),
            request.headers(),
        );
        let body = CheckedBody::from_request(request, state).await?;
        Ok(EventBody {
            body,
            beacon_headers,
        })
    }
}
