//! `ApiError`: every way a request can fail, rendered in the original's error shapes.

use std::sync::Arc;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::auth::AuthError;
use crate::domain::{DetailBudget, FieldError};
use crate::edge::limits::{RETRY_AFTER_SECS, retry_later};
use crate::store::StoreError;
use crate::wire::{Detail, StorageErrorBody, ValidationErrorBody};

/// A failed request; `IntoResponse` picks the status and body.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401 or 403, by the kind of auth failure.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// 422 with pydantic-style field errors.
    #[error("invalid request body for {request_line}")]
    Invalid {
        /// `POST /api/analytics/log_raw_metric`, for the message.
        request_line: String,
        /// Every field error found.
        errors: Vec<FieldError>,
    },
    /// 413: the body is over the limit.
    #[error("request body over {limit} bytes")]
    PayloadTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// 503 when the database is unavailable, else 500; the hint is the endpoint's.
    #[error("storage failed")]
    Storage {
        /// What the store reported (logged, never shown); shared by a whole batch.
        #[source]
        source: Arc<StoreError>,
        /// The endpoint's hint, as the original.
        hint: &'static str,
    },
    /// 400: the body could not be read (the client broke off, bad chunking).
    #[error("request body unreadable: {0}")]
    BodyUnreadable(String),
    /// 503: the budget of request bodies held in memory stayed spent (see
    /// `edge::body_budget`).
    #[error("request body budget spent")]
    Busy,
    /// 404.
    #[error("not found")]
    NotFound,
    /// 405.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 429 with `Retry-After` and `RateLimit-*`.
    #[error(transparent)]
    RateLimited(#[from] crate::edge::RateLimited),
}

impl ApiError {
    /// A storage failure with the endpoint's hint.
    pub fn storage(source: impl Into<Arc<StoreError>>, hint: &'static str) -> Self {
        ApiError::Storage {
            source: source.into(),
            hint,
        }
    }
}

fn detail(status: StatusCode, text: impl Into<String>) -> Response {
    (status, Json(Detail::new(text))).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Auth(err) => err.into_response(),
            ApiError::Invalid {
                request_line,
                errors,
            } => {
                tracing::debug!(errors = errors.len(), "request body failed validation");
                let detail = DetailBudget::default().list(errors, vec!["body".into()]);
                let body = ValidationErrorBody {
                    message: format!("Invalid data for {request_line}"),
                    detail,
                    hint: "Ensure the request matches the API schema.".to_owned(),
                };
                (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()
            }
            ApiError::PayloadTooLarge { limit } => detail(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("Request body too large: the limit is {limit} bytes"),
            ),
            ApiError::BodyUnreadable(reason) => detail(StatusCode::BAD_REQUEST, reason),
            ApiError::Storage { source, hint } => storage_response(source, hint),
            ApiError::Busy => retry_later("Too many request bodies in memory; retry later"),
            ApiError::NotFound => detail(StatusCode::NOT_FOUND, "Not Found"),
            ApiError::MethodNotAllowed => {
                detail(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
            }
            ApiError::RateLimited(limited) => limited.into_response(),
        }
    }
}

/// Marks a response as a storage failure, with a safe summary, for the storage watch.
#[derive(Debug, Clone)]
pub struct StorageFailure(pub String);

/// What a client gets for a row whose user is not in AutoGPT's `"User"` table.
pub const UNKNOWN_USER_DETAIL: &str =
    "Unknown user: the token's user does not exist, so nothing can be stored for it";

/// The cause is logged here, once; the client gets a safe summary.
fn storage_response(source: Arc<StoreError>, hint: &'static str) -> Response {
    if let StoreError::UnknownUser(_) = *source {
        // The client's problem, not ours: no ERROR line, so no Sentry issue.
        tracing::info!("row refused: its user is not in the User table");
        return detail(StatusCode::FORBIDDEN, UNKNOWN_USER_DETAIL);
    }
    let (status, message) = if matches!(*source, StoreError::QueueFull) {
        tracing::warn!("ingestion queue full; refusing a row");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "Analytics ingestion is overloaded; retry later",
        )
    } else if source.is_unavailable() {
        tracing::warn!(error = ?source, "analytics database unavailable");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "Analytics database is unavailable; retry later",
        )
    } else {
        // As `&dyn Error` Sentry gets the exception type and source chain.
        let error: &(dyn std::error::Error + 'static) = &source;
        tracing::error!(error, detail = ?source, "analytics database error");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "Analytics database error",
        )
    };
    let body = StorageErrorBody::new(message, hint);
    let mut response = (status, Json(body)).into_response();
    response
        .extensions_mut()
        .insert(StorageFailure(source.to_string()));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    }
    response
}
