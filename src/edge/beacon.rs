//! Beacon mode: `navigator.sendBeacon` cannot set headers and sends `text/plain`, so
//! `log_raw_analytics` also accepts a `text/plain` JSON body that carries the JWT in a
//! `token` field, when `browser.beacon_enabled` allows it.

use axum::http::{HeaderMap, HeaderValue, header};
use serde_json::Value;

use crate::auth::{AuthError, Caller};
use crate::error::ApiError;
use crate::routes::json::JsonBody;
use crate::state::AppState;

/// The body field that carries the JWT in beacon mode.
pub const TOKEN_FIELD: &str = "token";

/// The caller of a request whose body may be a beacon: with beacon mode on, a body sent as
/// text is read as JSON and its `token` field is taken out; that token authenticates the
/// request when the `Authorization` header is absent. Everything else is unchanged.
pub fn caller(
    state: &AppState,
    caller: Result<Caller, ApiError>,
    body: &mut JsonBody,
) -> Result<Caller, ApiError> {
    if !state.edge.browser.beacon_enabled {
        return caller;
    }
    let Value::String(text) = &body.value else {
        return caller;
    };
    let Ok(Value::Object(mut object)) = serde_json::from_str::<Value>(text) else {
        return caller;
    };
    let token = object.remove(TOKEN_FIELD);
    body.value = Value::Object(object);
    match (caller, token) {
        (Err(ApiError::Auth(AuthError::Missing)), Some(Value::String(token))) => {
            let mut headers = HeaderMap::new();
            let bearer = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| AuthError::Invalid("Invalid token encoding".to_owned()))?;
            headers.insert(header::AUTHORIZATION, bearer);
            Ok(state.authenticator.authenticate(&headers)?)
        }
        (caller, _) => caller,
    }
}
