//! `POST /api/alerts/discord` for backend jobs, and the storage watch that turns lasting
//! storage failures into a platform alert.

use axum::Json;
use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use secrecy::ExposeSecret;
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::json::CheckedBody;
use crate::alerts::{Alert, AlertError, DiscordChannel};
use crate::auth::{AuthError, Caller};
use crate::domain::{Body, FieldError, Fields, Input};
use crate::edge::{client_ip_of, limit_key};
use crate::error::{ApiError, StorageFailure};
use crate::wire::{Detail, ValidationErrorBody};

/// Header carrying `ALERTS_API_KEY`.
const API_KEY_HEADER: &str = "x-api-key";
/// Longest accepted alert: ten Discord messages' worth.
const MAX_CONTENT_CHARS: usize = 20_000;

/// The alerts route.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(send_discord_alert))
}

/// Sends a Discord alert for an admin or a holder of the alerts API key.
#[utoipa::path(
    post,
    path = "/api/alerts/discord",
    operation_id = "postAlertsDiscord",
    tag = "alerts",
    request_body = super::openapi::AlertRequest,
    security(("bearerAuth" = []), ("apiKey" = [])),
    responses(
        (status = 200, description = "Sent, or suppressed as a duplicate", body = AlertSent),
        (status = 401, description = "No or wrong credentials", body = Detail),
        (status = 403, description = "A valid JWT that is not an admin's", body = Detail),
        (status = 408, description = "Body not received in time; the connection is closed", body = Detail),
        (status = 413, description = "Body over the limit", body = Detail),
        (status = 422, description = "Blank content or an unknown channel", body = ValidationErrorBody),
        (status = 429, description = "A rate limit applies", body = Detail),
        (status = 502, description = "Discord refused", body = AlertFailure),
        (status = 503, description = "Not configured, Discord unreachable or rate-limiting", body = AlertFailure),
    ),
)]
#[tracing::instrument(name = "send_discord_alert", skip_all)]
pub async fn send_discord_alert(
    State(state): State<AppState>,
    _sender: AlertSender,
    body: CheckedBody,
) -> Result<Json<AlertSent>, AlertRouteError> {
    let parsed = body.read(parse).await;
    let (channel, content) = parsed.map_err(|errors| body.invalid(errors))?;
    let alerter = state.alerts.as_ref().ok_or(AlertError::NotConfigured)?;
    let answer = match alerter.send(channel, &content).await? {
        Alert::Sent {
            channel_id,
            message_ids,
        } => AlertSent {
            status: "Message sent",
            channel_id: Some(channel_id),
            message_ids: Some(message_ids),
        },
        Alert::Suppressed => AlertSent {
            status: "Suppressed duplicate",
            channel_id: None,
            message_ids: None,
        },
    };
    Ok(Json(answer))
}

/// 200 of the alerts endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlertSent {
    /// `Message sent`, or `Suppressed duplicate` (then the other fields are absent).
    #[schema(value_type = String)]
    status: &'static str,
    /// The Discord channel id.
    #[serde(skip_serializing_if = "Option::is_none")]
    channel_id: Option<String>,
    /// The Discord message ids, one per part.
    #[serde(skip_serializing_if = "Option::is_none")]
    message_ids: Option<Vec<String>>,
}

/// 502/503 of the alerts endpoint when Discord did not take the alert.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlertFailure {
    /// What Discord or the client reported.
    detail: DiscordStatus,
}

/// What became of an alert Discord did not take.
#[derive(Debug, Serialize, ToSchema)]
pub struct DiscordStatus {
    /// The failure, e.g. `Channel not found: ops`, `Discord is unreachable: …`.
    status: String,
    /// Discord's JSON error code (`null` when it sent none); only when Discord refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<i64>, nullable)]
    code: Option<Option<i64>>,
    /// Discord's message; only when Discord refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

impl DiscordStatus {
    fn only(status: String) -> Json<AlertFailure> {
        Json(AlertFailure {
            detail: DiscordStatus {
                status,
                code: None,
                message: None,
            },
        })
    }
}

/// Proof that the request may send an alert, checked before its body is read.
pub struct AlertSender;

impl FromRequestParts<AppState> for AlertSender {
    type Rejection = AlertRouteError;

    /// `X-API-Key` when present (the right key always passes; wrong ones are limited per
    /// client, see `edge::api_key_guard`), else an admin JWT.
    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, AlertRouteError> {
        if let Some(given) = parts.headers.get(API_KEY_HEADER) {
            if is_api_key(state, given) {
                return Ok(AlertSender);
            }
            let hops = state.edge.rate_limits.trusted_proxy_hops;
            let client = client_ip_of(&parts.extensions, &parts.headers, hops)
                .map_or_else(|| "unknown".to_owned(), limit_key);
            state
                .edge
                .api_key_guard
                .failed(&client)
                .map_err(ApiError::from)?;
            return Err(AlertRouteError::BadApiKey);
        }
        if Caller::from_request_parts(parts, state).await?.is_admin {
            Ok(AlertSender)
        } else {
            Err(AlertRouteError::NotAdmin)
        }
    }
}

/// Whether `given` is the configured `ALERTS_API_KEY`: their SHA-256 digests compared in
/// constant time, so neither the bytes nor the key's length show in the timing.
fn is_api_key(state: &AppState, given: &HeaderValue) -> bool {
    // Trimmed once, by `alerts::Config::alerts_api_key`, when the state was built.
    state.alerts_api_key.as_ref().is_some_and(|key| {
        let expected = Sha256::digest(key.expose_secret().as_bytes());
        bool::from(expected.ct_eq(&Sha256::digest(given.as_bytes())))
    })
}

/// The body `{"content": str, "channel": "platform" | "product"}`, every field error at once.
pub fn parse(body: Body<'_>) -> Result<(DiscordChannel, String), Vec<FieldError>> {
    let fields = Fields::read(body, "DiscordAlertRequest", ["content", "channel"])?;
    let mut errors = Vec::new();
    let content = match fields.raw(0) {
        None => {
            errors.push(fields.missing("content"));
            None
        }
        Some(raw) => match fields.string(raw) {
            Some(text) if text.trim().is_empty() => {
                errors.push(field_error(
                    "content",
                    "value_error",
                    "Value error, Message content is empty",
                    fields.echo(raw),
                    json!({ "error": {} }),
                ));
                None
            }
            Some(text) if text.chars().count() > MAX_CONTENT_CHARS => {
                errors.push(field_error(
                    "content",
                    "string_too_long",
                    &format!("String should have at most {MAX_CONTENT_CHARS} characters"),
                    fields.echo(raw),
                    json!({ "max_length": MAX_CONTENT_CHARS }),
                ));
                None
            }
            Some(text) => Some(text.into_owned()),
            None => {
                errors.push(FieldError::string_type("content", fields.echo(raw)));
                None
            }
        },
    };
    let channel = match fields.raw(1) {
        None => Some(DiscordChannel::Platform),
        Some(raw) if raw.get() == "null" => Some(DiscordChannel::Platform),
        Some(raw) => {
            let parsed = fields
                .string(raw)
                .and_then(|text| DiscordChannel::parse(&text));
            if parsed.is_none() {
                errors.push(FieldError {
                    kind: "enum",
                    loc: vec!["body".into(), "channel".into()],
                    msg: "Input should be 'platform' or 'product'".to_owned(),
                    input: fields.echo(raw),
                    ctx: Some(json!({ "expected": "'platform' or 'product'" })),
                });
            }
            parsed
        }
    };
    match (channel, content) {
        (Some(channel), Some(content)) if errors.is_empty() => Ok((channel, content)),
        _ => Err(errors),
    }
}

fn field_error(field: &str, kind: &'static str, msg: &str, input: Input, ctx: Value) -> FieldError {
    FieldError {
        kind,
        loc: vec!["body".into(), field.into()],
        msg: msg.to_owned(),
        input,
        ctx: Some(ctx),
    }
}

/// Every way the alerts endpoint can fail.
#[derive(Debug, thiserror::Error)]
pub enum AlertRouteError {
    /// A body error (422) or a rate limit, in the service's usual shapes.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// No or a bad JWT (401/403/503), as on every route.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// `X-API-Key` given but wrong, or no key configured.
    #[error("invalid API key")]
    BadApiKey,
    /// A valid JWT of someone who is not an admin.
    #[error("admin access required")]
    NotAdmin,
    /// The alert was not delivered.
    #[error(transparent)]
    Alert(#[from] AlertError),
}

impl IntoResponse for AlertRouteError {
    fn into_response(self) -> Response {
        match self {
            AlertRouteError::Api(err) => err.into_response(),
            AlertRouteError::Auth(err) => err.into_response(),
            AlertRouteError::BadApiKey => (
                StatusCode::UNAUTHORIZED,
                Json(Detail::new("Invalid API key")),
            )
                .into_response(),
            AlertRouteError::NotAdmin => (
                StatusCode::FORBIDDEN,
                Json(Detail::new("Admin access required")),
            )
                .into_response(),
            AlertRouteError::Alert(err) => alert_response(err),
        }
    }
}

/// The original's answers (docs/OPERATIONS.md, "Discord alerts"): 422, 503 (not
/// configured / retry later), 502 (Discord said no).
fn alert_response(err: AlertError) -> Response {
    let status_text = err.to_string();
    match err {
        AlertError::EmptyContent => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(Detail::new(status_text)),
        )
            .into_response(),
        AlertError::NotConfigured => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Detail::new(status_text)),
        )
            .into_response(),
        AlertError::ChannelNotFound(_) | AlertError::NotTextChannel(_) => {
            (StatusCode::BAD_GATEWAY, DiscordStatus::only(status_text)).into_response()
        }
        AlertError::Refused { code, message, .. } => (
            StatusCode::BAD_GATEWAY,
            Json(AlertFailure {
                detail: DiscordStatus {
                    status: status_text,
                    code: Some(code),
                    message: Some(message),
                },
            }),
        )
            .into_response(),
        AlertError::RateLimited { retry_after } | AlertError::Unavailable { retry_after, .. } => {
            let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            let mut response = (
                StatusCode::SERVICE_UNAVAILABLE,
                DiscordStatus::only(status_text),
            )
                .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            response
        }
    }
}

/// Middleware: storage failures (marked by `ApiError`) and analytics successes feed the
/// storage watch; a lasting failure sends one platform alert, in the background.
pub async fn watch_storage(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let is_analytics = request
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|path| path.as_str().starts_with("/api/analytics/"));
    let response = next.run(request).await;
    let Some(alerter) = state.alerts.clone() else {
        return response;
    };
    let watch = alerter.storage_watch();
    if let Some(StorageFailure(summary)) = response.extensions().get::<StorageFailure>() {
        if let Some(text) = watch.record_failure(summary) {
            tokio::spawn(async move {
                // The outcome is counted and logged by `Alerter::send`.
                let _ = alerter.send(DiscordChannel::Platform, &text).await;
            });
        }
    } else if is_analytics && response.status().is_success() {
        watch.record_success();
    }
    response
}
