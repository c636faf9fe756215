//! Request limits: the body limit a route reads with (named in the 413), the request
//! timeout's answer, and the `{"detail": …}` body for errors that middleware answers
//! without one.

use axum::Json;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tower::layer::util::{Identity, Stack};
use tower::{BoxError, ServiceBuilder};

use crate::wire::{Detail, StorageErrorBody};

/// Seconds a client is told to wait (`Retry-After`) on a 503 that a retry will help.
pub const RETRY_AFTER_SECS: u64 = 1;

/// A 503 that a retry will help, in the storage-error shape with `Retry-After`.
pub fn retry_later(message: &str) -> Response {
    let body = StorageErrorBody::new(message, "Retry the request later.");
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    response
}

/// The body limit of the route a request is for, read by `JsonBody` for the 413 text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteBodyLimit(pub usize);

/// The layers [`body_limit`] stacks.
pub type BodyLimitLayers =
    Stack<axum::Extension<RouteBodyLimit>, Stack<DefaultBodyLimit, Identity>>;

/// The layer that sets a route's body limit: `.route_layer(body_limit(n))` on a route
/// overrides the router-wide one. Decompressed bytes count, so a zip bomb is cut off.
pub fn body_limit(bytes: usize) -> ServiceBuilder<BodyLimitLayers> {
    ServiceBuilder::new()
        .layer(DefaultBodyLimit::max(bytes))
        .layer(axum::Extension(RouteBodyLimit(bytes)))
}

/// The answer when a request runs past the request timeout: 503 in the storage-error shape
/// with `Retry-After`, since the usual cause is a slow database.
pub async fn timed_out(err: BoxError) -> Response {
    if err.is::<tower::timeout::error::Elapsed>() {
        tracing::warn!("request timed out");
        retry_later("Request timed out")
    } else {
        tracing::error!(error = %err, "middleware failed");
        let body = StorageErrorBody::new("Internal error", "Retry the request.");
        (StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response()
    }
}

/// Gives a `{"detail": "<reason>"}` body to error answers that came without one (such as
/// the decompression layer's 415 for an unknown `Content-Encoding`).
pub async fn shape_empty_errors(response: Response) -> Response {
    let status = response.status();
    let empty = response.headers().get(header::CONTENT_TYPE).is_none()
        && axum::body::HttpBody::size_hint(response.body()).exact() == Some(0);
    if !(status.is_client_error() || status.is_server_error()) || !empty {
        return response;
    }
    let reason = status.canonical_reason().unwrap_or("Error");
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let shaped = Json(Detail::new(reason)).into_response();
    let (shaped_parts, body) = shaped.into_parts();
    parts.headers.extend(shaped_parts.headers);
    Response::from_parts(parts, body)
}
