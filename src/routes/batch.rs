//! `POST /api/analytics/log_raw_metric/batch` and `POST /api/analytics/log_raw_analytics/batch`:
//! for clients that buffer. Valid items are stored in one transaction; the answer lists one
//! result per item, in order.

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::analytics::{ANALYTICS_HINT, METRIC_HINT};
use super::json::CheckedBody;
use crate::auth::Caller;
use crate::domain::{FieldError, ItemOutcome, NewAnalyticsEvent, NewMetric, parse_batch};
use crate::error::ApiError;
use crate::store::{EventRow, MetricRow, StoreError};

/// The batch endpoints' limits (the `batch_*` keys of `[ingest]`).
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Config {
    /// Most items in one request.
    #[serde(rename = "batch_max_items")]
    pub max_items: usize,
    /// Largest body of one request, in bytes (decompressed).
    #[serde(rename = "batch_body_limit_bytes")]
    pub body_limit_bytes: usize,
    /// Requests read and stored at once; more wait for a turn (bounds memory).
    #[serde(rename = "batch_max_concurrent")]
    pub max_concurrent: usize,
}

impl Config {
    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_items == 0 || self.body_limit_bytes == 0 || self.max_concurrent == 0 {
            return Err("ingest.batch_max_items, ingest.batch_body_limit_bytes and \
                        ingest.batch_max_concurrent must be at least 1"
                .to_owned());
        }
        Ok(())
    }
}

/// One item's outcome: `{"id": "…"}` or `{"error": [<422 error objects>]}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = BatchItemResult)]
pub enum ItemResult {
    /// Stored with this id.
    Id(String),
    /// Refused; nothing stored for this item.
    Error(Vec<FieldError>),
}

/// The batch routes, with their own (larger) body limit.
pub fn routes(body_limit: usize) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(log_raw_metric_batch))
        .routes(routes!(log_raw_analytics_batch))
        .layer(crate::edge::limits::body_limit(body_limit))
}

/// A turn to read and store one batch request. Taken before the body is read, so at most
/// `ingest.batch_max_concurrent` bodies are in memory at once; a request that gets no turn
/// within the database's acquire timeout is answered 503, like one that gets no connection.
pub struct BatchTurn {
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl FromRequestParts<AppState> for BatchTurn {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let turn = state.batch_turns.clone().acquire_owned();
        match tokio::time::timeout(state.batch_turn_wait, turn).await {
            Ok(Ok(permit)) => Ok(BatchTurn { _permit: permit }),
            _ => {
                let hint = if parts.uri.path().contains("log_raw_metric") {
                    METRIC_HINT
                } else {
                    ANALYTICS_HINT
                };
                Err(ApiError::storage(StoreError::QueueFull, hint))
            }
        }
    }
}

/// Tokens a batch takes from the user's bucket: one per item of a batch that is a list
/// within bounds, one for a batch refused whole.
fn rows_charged<T, E>(parsed: &Result<Vec<T>, E>) -> usize {
    parsed.as_ref().map_or(1, Vec::len)
}

/// Splits parse results into rows to store and the per-item answers (ids filled in now,
/// since the rows' ids are generated before storing).
fn plan<T, R>(
    parsed: Vec<ItemOutcome<T>>,
    make_row: impl Fn(T) -> (uuid::Uuid, R),
) -> (Vec<R>, Vec<ItemResult>) {
    let mut rows = Vec::new();
    let results = parsed
        .into_iter()
        .map(|item| match item {
            Ok(valid) => {
                let (id, row) = make_row(valid);
                rows.push(row);
                ItemResult::Id(id.to_string())
            }
            Err(errors) => ItemResult::Error(errors),
        })
        .collect();
    (rows, results)
}

/// Stores the valid metrics of a batch in one transaction.
#[utoipa::path(
    post,
    path = "/api/analytics/log_raw_metric/batch",
    operation_id = "postAnalyticsLogRawMetricBatch",
    tag = "analytics",
    request_body(content = Vec<super::openapi::LogRawMetricRequest>, description = "1 to `ingest.batch_max_items` metric bodies"),
    security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "One result per item, in order", body = Vec<ItemResult>),
        super::openapi::ErrorResponses,
    ),
)]
#[tracing::instrument(name = "log_raw_metric_batch", skip_all)]
pub async fn log_raw_metric_batch(
    State(state): State<AppState>,
    caller: Caller,
    _turn: BatchTurn,
    body: CheckedBody,
) -> Result<Json<Vec<ItemResult>>, ApiError> {
    let max_items = state.batch_max_items;
    let parsed = body
        .read(move |read| parse_batch(read, max_items, NewMetric::from_body))
        .await;
    let caller = state
        .edge
        .rate_limits
        .admit(caller, rows_charged(&parsed))?;
    let parsed = parsed.map_err(|errors| body.invalid(errors))?;
    let now = state.clock.now();
    let (rows, results) = plan(parsed, |metric| {
        let row = MetricRow::new(now, caller.user_id.clone(), metric);
        (row.id, row)
    });
    if !rows.is_empty() {
        state
            .sink
            .store_batch(&rows)
            .await
            .map_err(|e| ApiError::storage(e, METRIC_HINT))?;
    }
    Ok(Json(results))
}

/// Stores the valid events of a batch in one transaction.
#[utoipa::path(
    post,
    path = "/api/analytics/log_raw_analytics/batch",
    operation_id = "postAnalyticsLogRawAnalyticsBatch",
    tag = "analytics",
    request_body(content = Vec<super::openapi::LogRawAnalyticsRequest>, description = "1 to `ingest.batch_max_items` event bodies"),
    security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "One result per item, in order", body = Vec<ItemResult>),
        super::openapi::ErrorResponses,
    ),
)]
#[tracing::instrument(name = "log_raw_analytics_batch", skip_all)]
pub async fn log_raw_analytics_batch(
    State(state): State<AppState>,
    caller: Caller,
    _turn: BatchTurn,
    body: CheckedBody,
) -> Result<Json<Vec<ItemResult>>, ApiError> {
    let max_items = state.batch_max_items;
    let parsed = body
        .read(move |read| parse_batch(read, max_items, NewAnalyticsEvent::from_body))
        .await;
    let caller = state
        .edge
        .rate_limits
        .admit(caller, rows_charged(&parsed))?;
    let parsed = parsed.map_err(|errors| body.invalid(errors))?;
    let now = state.clock.now();
    let (rows, results) = plan(parsed, |event| {
        let row = EventRow::new(now, caller.user_id.clone(), event);
        (row.id, row)
    });
    if !rows.is_empty() {
        state
            .sink
            .store_batch(&rows)
            .await
            .map_err(|e| ApiError::storage(e, ANALYTICS_HINT))?;
    }
    Ok(Json(results))
}
