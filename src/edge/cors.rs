//! CORS for the allowed browser origins, with credentials.

use axum::http::{HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

use super::config::BrowserConfig;

/// Response headers a browser script may read: the retry advice of 429 and 503.
const EXPOSED: [HeaderName; 4] = [
    header::RETRY_AFTER,
    HeaderName::from_static("ratelimit-limit"),
    HeaderName::from_static("ratelimit-remaining"),
    HeaderName::from_static("ratelimit-reset"),
];

/// The CORS layer for the allowlist; `None` when no origin is allowed (no CORS headers).
pub fn layer(config: &BrowserConfig) -> Option<CorsLayer> {
    let origins: Vec<HeaderValue> = config
        .origins()
        .into_iter()
        .map(|o| HeaderValue::from_str(o).expect("config validation checked the origins"))
        .collect();
    if origins.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_credentials(true)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            // Credentials forbid `*`; mirroring lets new request headers through without a
            // code change (auth is still checked on the actual request).
            .allow_headers(AllowHeaders::mirror_request())
            .expose_headers(EXPOSED)
            .max_age(config.preflight_max_age),
    )
}
