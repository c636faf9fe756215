//! The OpenAPI 3.1 document (`GET /openapi.json`) and the offline docs page (`GET /docs`).
//!
//! Operations come from the `#[utoipa::path]` attributes on the handlers, registered with
//! utoipa-axum's `routes!` in each route module; this file holds what is shared: the info
//! block, the bearer security scheme, and the three request bodies as documentation types
//! (the handlers validate raw JSON with `crate::domain`, as pydantic did). Response bodies
//! are the types the handlers send (`crate::wire`, the route modules).

use axum::Router;
use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_swagger_ui::SwaggerUi;

use super::AppState;
use crate::domain::FieldError;
use crate::wire::{Detail, MessageHint, Status, StorageErrorBody, ValidationErrorBody};

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
        AlertRequest,
        Detail,
        ValidationErrorBody,
        FieldError,
        StorageErrorBody,
        MessageHint,
        Status,
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

// Three routes are answered by other code (SwaggerUi serves the document and the page; the
// metrics router is mounted apart, maybe on the admin port): these empty functions only
// carry their operations into the document.

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "getOpenapiJson",
    tag = "docs",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object)),
)]
pub fn openapi_json() {}

/// Prometheus metrics, text format (on `metrics.admin_port` instead, when that is set).
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "getMetrics",
    tag = "health",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String)),
)]
pub fn metrics_text() {}

/// The interactive docs page (Swagger UI, served from built-in assets).
#[utoipa::path(
    get,
    path = "/docs/",
    operation_id = "getDocs",
    tag = "docs",
    responses((status = 200, description = "The Swagger UI page", content_type = "text/html", body = String)),
)]
pub fn docs_page() {}

/// Body of `POST /api/analytics/log_raw_metric`. Unknown keys are ignored.
#[derive(ToSchema)]
pub struct LogRawMetricRequest {
    /// The metric's name.
    #[schema(min_length = 1)]
    pub metric_name: String,
    /// A finite number ≥ 0; a numeric string such as `"2.5"` is converted.
    #[schema(schema_with = metric_value_schema)]
    pub metric_value: f64,
    /// Free text stored with the value.
    #[schema(min_length = 1)]
    pub data_string: String,
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
pub struct LogRawAnalyticsRequest {
    /// The event type.
    pub r#type: String,
    /// Any JSON object; control characters are stripped from its strings.
    pub data: std::collections::HashMap<String, Value>,
    /// The value the event is indexed by.
    pub data_index: String,
}

/// The error answers every ingestion operation may give.
#[derive(utoipa::IntoResponses)]
pub enum ErrorResponses {
    /// Missing, malformed, expired or otherwise invalid token.
    #[response(status = 401, headers(("WWW-Authenticate" = String, description = "`Bearer`")))]
    Unauthorized(Detail),
    /// `X-Act-As-User-Id` from a user who is not an admin.
    #[response(status = 403)]
    Forbidden(Detail),
    /// The body did not arrive in time (`server.body_read_timeout_secs`, extended by
    /// `server.body_min_rate_bytes_per_sec`); the connection is closed.
    #[response(status = 408, headers(("Connection" = String, description = "`close`")))]
    BodyTimedOut(Detail),
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

/// Body of `POST /api/alerts/discord`.
#[derive(ToSchema)]
pub struct AlertRequest {
    /// The alert text (not blank); over 2000 characters it goes out as several messages.
    #[schema(min_length = 1, max_length = 20000)]
    pub content: String,
    /// `platform` (default) or `product`.
    #[schema(pattern = "^(platform|product)$")]
    pub channel: Option<String>,
}
