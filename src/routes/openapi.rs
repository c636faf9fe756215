//! The OpenAPI 3.1 document (`GET /openapi.json`) and the offline docs page (`GET /docs`).
//!
//! Operations come from the `#[utoipa::path]` attributes on the handlers, registered with
//! utoipa-axum's `routes!` in each route module; this file holds what is shared: the info
//! block, the bearer security scheme and the request/response schemas (documentation
//! types only: the handlers validate with `crate::domain`).

use axum::Router;
use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_swagger_ui::SwaggerUi;

use super::AppState;

/// Name of the bearer scheme operations refer to in `security(("bearerAuth" = []))`.
pub const BEARER: &str = "bearerAuth";
/// Name of the alerts API-key scheme (`X-API-Key`).
pub const API_KEY: &str = "apiKey";
/// Where the spec is served.
pub const SPEC_PATH: &str = "/openapi.json";
/// Where the docs page is served.
pub const DOCS_PATH: &str = "/docs";

/// The spec's fixed parts; `router()` merges the operations in.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "analytics-service",
        description = "Analytics ingestion for the AutoGPT platform, drop-in for the Python original.",
        license(name = "MIT", identifier = "MIT"),
    ),
    paths(openapi_json, docs_page, metrics_text),
    components(schemas(
        LogRawMetricRequest,
        LogRawAnalyticsRequest,
        Detail,
        ValidationErrorBody,
        FieldErrorBody,
        StorageErrorBody,
        StorageErrorDetail,
        Status,
        BatchItemResult,
        AlertRequest,
        AlertSent,
        AlertFailure,
    )),
    modifiers(&BearerScheme),
    tags(
        (name = "analytics", description = "Event ingestion"),
        (name = "health", description = "Probes"),
        (name = "alerts", description = "Discord alerts for backend jobs"),
        (name = "docs", description = "This document and its page"),
    ),
)]
pub struct ApiDoc;

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A Supabase/AutoGPT JWT: audience `authenticated`, `sub` is the user id.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            API_KEY,
            SecurityScheme::ApiKey(utoipa::openapi::security::ApiKey::Header(
                utoipa::openapi::security::ApiKeyValue::with_description(
                    "X-API-Key",
                    "`ALERTS_API_KEY`, for backend jobs sending alerts",
                ),
            )),
        );
    }
}

/// `GET /openapi.json` and the Swagger UI at `/docs` (assets built in, no network needed).
pub fn routes(spec: utoipa::openapi::OpenApi) -> Router<AppState> {
    SwaggerUi::new(DOCS_PATH).url(SPEC_PATH, spec).into()
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "getOpenapiJson",
    tag = "docs",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object)),
)]
#[allow(dead_code)]
fn openapi_json() {}

/// Prometheus metrics, text format (on `metrics.admin_port` instead, when that is set).
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "getMetrics",
    tag = "health",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String)),
)]
#[allow(dead_code)]
fn metrics_text() {}

/// The interactive docs page (Swagger UI, served from built-in assets).
#[utoipa::path(
    get,
    path = "/docs/",
    operation_id = "getDocs",
    tag = "docs",
    responses((status = 200, description = "The Swagger UI page", content_type = "text/html", body = String)),
)]
#[allow(dead_code)]
fn docs_page() {}

/// Body of `POST /api/analytics/log_raw_metric`. Unknown keys are ignored.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct LogRawMetricRequest {
    /// The metric's name.
    #[schema(min_length = 1)]
    metric_name: String,
    /// A finite number ≥ 0; a numeric string such as `"2.5"` is converted.
    #[schema(schema_with = metric_value_schema)]
    metric_value: f64,
    /// Free text stored with the value.
    #[schema(min_length = 1)]
    data_string: String,
}

/// Unicode White_Space, which the numeric-string conversion trims (as Python's `float`).
macro_rules! ws {
    () => {
        r"[\t\n\u000b\u000c\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*"
    };
}

/// Numeric strings the service converts. Digits and exponent are bounded so that every
/// string matching it is finite (the service refuses `"1e309"`).
const NUMERIC_STRING: &str = concat!(
    "^",
    ws!(),
    r"\+?(0*[0-9]{1,15}(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]{1,2})?",
    ws!(),
    "$"
);

fn metric_value_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
    let one_of = OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Number)
                .minimum(Some(0.0)),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(NUMERIC_STRING)),
        )
        .description(Some("A finite number ≥ 0, or a string holding one"))
        .build();
    Schema::OneOf(one_of)
}

/// Body of `POST /api/analytics/log_raw_analytics`. Unknown keys are ignored.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct LogRawAnalyticsRequest {
    /// The event type.
    r#type: String,
    /// Any JSON object; control characters are stripped from its strings.
    data: std::collections::HashMap<String, Value>,
    /// The value the event is indexed by.
    data_index: String,
}

/// `{"detail": "<text>"}`: 401, 403, 404, 405, 413, 429.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Detail {
    /// What went wrong.
    detail: String,
}

/// 422: every field error at once, in pydantic's words.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ValidationErrorBody {
    /// `Invalid data for POST <path>`.
    message: String,
    /// The field errors.
    detail: Vec<FieldErrorBody>,
    /// `Ensure the request matches the API schema.`
    hint: String,
}

/// One pydantic-style field error.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct FieldErrorBody {
    /// Error kind, e.g. `missing`, `string_too_short`, `json_invalid`.
    r#type: String,
    /// Where: `["body", "<field>"]`, or a position for `json_invalid`.
    #[schema(value_type = Vec<Value>)]
    loc: Vec<Value>,
    /// Human-readable message.
    msg: String,
    /// The offending input.
    #[schema(value_type = Value)]
    input: Value,
    /// Limits of the failed check, e.g. `{"min_length": 1}`.
    #[schema(value_type = Option<Object>)]
    ctx: Option<Value>,
}

/// 500 and 503: `{"detail": {"message", "hint"}}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct StorageErrorBody {
    /// What failed, and what to do.
    detail: StorageErrorDetail,
}

/// The inside of a storage error.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct StorageErrorDetail {
    /// A safe summary (never a driver error).
    message: String,
    /// What to do about it.
    hint: String,
}

/// `{"status": "ok"}` of the probes.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Status {
    /// Always `ok`.
    status: String,
}

/// The error answers every ingestion operation may give.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum ErrorResponses {
    /// Missing, malformed, expired or otherwise invalid token.
    #[response(status = 401, headers(("WWW-Authenticate" = String, description = "`Bearer`")))]
    Unauthorized(Detail),
    /// `X-Act-As-User-Id` from a user who is not an admin.
    #[response(status = 403)]
    Forbidden(Detail),
    /// The body is over the route's limit (decompressed bytes count).
    #[response(status = 413)]
    TooLarge(Detail),
    /// The body is not JSON, or its fields are invalid.
    #[response(status = 422)]
    Invalid(ValidationErrorBody),
    /// A rate limit applies.
    #[response(status = 429, headers(
        ("Retry-After" = u64, description = "Seconds to wait"),
        ("RateLimit-Limit" = u32, description = "Bucket size"),
        ("RateLimit-Remaining" = u32, description = "Requests left now"),
        ("RateLimit-Reset" = u64, description = "Seconds until a request is admitted"),
    ))]
    TooManyRequests(Detail),
    /// Storage failed in a way a retry will not fix.
    #[response(status = 500)]
    Internal(StorageErrorBody),
    /// The database is unavailable or the request timed out; retry.
    #[response(status = 503, headers(("Retry-After" = u64, description = "Seconds to wait")))]
    Unavailable(StorageErrorBody),
}

/// One item's outcome in a batch answer: `{"id": "…"}` when stored, else `{"error": […]}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct BatchItemResult {
    /// The stored row's id.
    id: Option<String>,
    /// Why the item was refused (the 422 error objects, `loc` with the item's index).
    error: Option<Vec<FieldErrorBody>>,
}

/// Body of `POST /api/alerts/discord`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct AlertRequest {
    /// The alert text (not blank); over 2000 characters it goes out as several messages.
    #[schema(min_length = 1, max_length = 20000)]
    content: String,
    /// `platform` (default) or `product`.
    #[schema(pattern = "^(platform|product)$")]
    channel: Option<String>,
}

/// 200 of the alerts endpoint.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct AlertSent {
    /// `Message sent`, or `Suppressed duplicate` (then the other fields are absent).
    status: String,
    /// The Discord channel id.
    channel_id: Option<String>,
    /// The Discord message ids, one per part.
    message_ids: Option<Vec<String>>,
}

/// 502/503 of the alerts endpoint: `{"detail": {"status": "…", "code"?, "message"?}}`, or
/// `{"detail": "Discord alerts are not configured"}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct AlertFailure {
    /// What Discord or the client reported.
    #[schema(value_type = Value)]
    detail: Value,
}
