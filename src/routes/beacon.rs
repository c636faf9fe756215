//! Beacon mode: `navigator.sendBeacon` cannot set headers and sends `text/plain`, so
//! `log_raw_analytics` also accepts a `text/plain` JSON body that carries the JWT in a
//! `token` field, when `browser.beacon_enabled` allows it.
//!
//! The token is read from the text without building a tree, and checked exactly as a
//! header token is (JWKS, impersonation header); the body is parsed only after that.

use std::borrow::Cow;

use axum::http::{HeaderMap, HeaderValue, header};
use serde::Deserialize;

use crate::auth::{AuthError, Authenticator, Caller};
use crate::domain::{Body, pyjson};

/// The body field that carries the JWT in beacon mode.
pub const TOKEN_FIELD: &str = "token";

/// The headers of a request that may be a beacon: beacon mode on, a body not sent as JSON
/// and no `Authorization` header. Kept (cloned) only then, for [`caller`].
pub fn headers_of_possible_beacon(
    enabled: bool,
    json_body: bool,
    headers: &HeaderMap,
) -> Option<HeaderMap> {
    (enabled && !json_body && !headers.contains_key(header::AUTHORIZATION)).then(|| headers.clone())
}

/// The caller of a request: the header's, or, for a possible beacon (its `headers` kept),
/// the one named by the `token` field of its text, authenticated with the request's other
/// headers exactly as a header token is.
pub async fn caller(
    authenticator: &Authenticator,
    caller: Result<Caller, AuthError>,
    headers: Option<HeaderMap>,
    text: &[u8],
) -> Result<Caller, AuthError> {
    let (Err(AuthError::Missing), Some(mut headers)) = (&caller, headers) else {
        return caller;
    };
    let Some(token) = token_field(text) else {
        return caller;
    };
    let bearer = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| AuthError::Invalid("Invalid token encoding".to_owned()))?;
    headers.insert(header::AUTHORIZATION, bearer);
    authenticator.authenticate(&headers).await
}

/// A beacon's `token` field, read without building the rest of the body.
fn token_field(text: &[u8]) -> Option<Cow<'_, str>> {
    #[derive(Deserialize)]
    struct Beacon<'a> {
        #[serde(borrow)]
        token: Option<Cow<'a, str>>,
    }
    if !pyjson::is_object_text(text) {
        return None;
    }
    serde_json::from_slice::<Beacon<'_>>(text).ok()?.token
}

/// After auth, with beacon mode on: a body sent as text that holds a JSON object is that
/// object, without its `token` field (which no error may echo). Everything else is
/// unchanged.
pub fn unwrap_body(enabled: bool, body: Body<'_>) -> Body<'_> {
    let Body::Text(text) = body else {
        return body;
    };
    // An object as `json.loads` reads it, without Python's non-finite tokens (those keep
    // the text a string, as before).
    let is_object = pyjson::is_object_text(text.as_bytes())
        && matches!(pyjson::check(text.as_bytes()), Ok(false));
    if !enabled || !is_object {
        return body;
    }
    Body::Json {
        text,
        marked: false,
        hidden: Some(TOKEN_FIELD),
    }
}
