//! `JsonBody`: the request body parsed as JSON, the way FastAPI reads it.
//!
//! Only syntax is checked here (a body that is not JSON is a 422 before auth runs, as in
//! the original); the fields are validated by the domain types after auth.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, FailedToBufferBody};
use axum::extract::{FromRequest, Request};
use axum::http::{Method, Uri, header};
use serde_json::{Map, Value};

use crate::domain::{FieldError, pyjson};
use crate::error::ApiError;
use crate::state::AppState;

/// What a 422 names (`POST /path`), kept unformatted so that valid requests never pay for
/// the text.
#[derive(Debug)]
pub struct RequestLine {
    method: Method,
    uri: Uri,
}

impl RequestLine {
    /// The 422 for these field errors, naming this request.
    pub fn invalid(&self, errors: Vec<FieldError>) -> ApiError {
        ApiError::Invalid {
            request_line: format!("{} {}", self.method, self.uri.path()),
            errors,
        }
    }
}

/// A JSON body and the request it came with.
#[derive(Debug)]
pub struct JsonBody {
    /// The parsed body; `{}` when the body was empty.
    pub value: Value,
    /// What its 422 names.
    pub request: RequestLine,
}

impl JsonBody {
    /// The 422 for these field errors, naming this request.
    pub fn invalid(&self, errors: Vec<FieldError>) -> ApiError {
        self.request.invalid(errors)
    }
}

/// A body read within the route's limit but not parsed yet, for routes that can read
/// some bodies more cheaply than as a `Value` (see `EventBody`).
#[derive(Debug)]
pub struct BufferedBody {
    /// The body as sent.
    pub bytes: Bytes,
    /// Whether FastAPI would have parsed it as JSON (by its content type).
    pub json: bool,
    /// What its 422 names.
    pub request: RequestLine,
}

impl BufferedBody {
    /// Parses the body as FastAPI did; a syntax error is the original's 422.
    pub fn into_json(self) -> Result<JsonBody, ApiError> {
        match parse(&self.bytes, self.json) {
            Ok(value) => Ok(JsonBody {
                value,
                request: self.request,
            }),
            Err(error) => Err(self.request.invalid(vec![error])),
        }
    }
}

/// FastAPI parses a body as JSON when there is no content type or it is `application/json`
/// or `application/*+json`; any other body reaches validation as a string.
fn is_json_content_type(request: &Request) -> bool {
    let Some(value) = request.headers().get(header::CONTENT_TYPE) else {
        return true;
    };
    let essence = value
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The byte offset of a serde_json error, as Python's `JSONDecodeError.pos` would give it.
fn error_offset(body: &[u8], err: &serde_json::Error) -> usize {
    let mut line = 1;
    let mut offset = 0;
    for (i, b) in body.iter().enumerate() {
        if line == err.line() {
            offset = i;
            break;
        }
        if *b == b'\n' {
            line += 1;
        }
    }
    (offset + err.column().saturating_sub(1)).min(body.len())
}

/// The body as FastAPI reads it: empty → `{}`, JSON when `json`, else a string; the
/// decoding step of every analytics request, pure so the fuzz targets can call it.
pub fn parse(body: &Bytes, json: bool) -> Result<Value, FieldError> {
    if body.is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    if !json {
        return Ok(Value::String(String::from_utf8_lossy(body).into_owned()));
    }
    pyjson::parse(body).map_err(|err| {
        let reason = err.to_string();
        let reason = reason.split(" at line ").next().unwrap_or_default();
        FieldError::json_invalid(error_offset(body, &err), reason)
    })
}

impl FromRequest<AppState> for BufferedBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let line = RequestLine {
            method: request.method().clone(),
            uri: request.uri().clone(),
        };
        let json = is_json_content_type(&request);
        let limit = request
            .extensions()
            .get::<crate::edge::limits::RouteBodyLimit>()
            .map_or(state.body_limit, |limit| limit.0);
        let bytes =
            Bytes::from_request(request, state)
                .await
                .map_err(|rejection| match rejection {
                    BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_)) => {
                        ApiError::PayloadTooLarge { limit }
                    }
                    other => ApiError::BodyUnreadable(other.body_text()),
                })?;
        Ok(BufferedBody {
            bytes,
            json,
            request: line,
        })
    }
}

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        BufferedBody::from_request(request, state)
            .await?
            .into_json()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_error_offset_counts_bytes_across_lines() {
        let body = b"{\n  \"a\": ,\n}";
        let err = serde_json::from_slice::<Value>(body).unwrap_err();

        assert_eq!(error_offset(body, &err), 9);
    }

    #[test]
    fn empty_body_is_an_empty_object() {
        assert_eq!(
            parse(&Bytes::new(), true).unwrap(),
            Value::Object(Map::new())
        );
    }

    #[test]
    fn malformed_json_is_json_invalid() {
        let err = parse(&Bytes::from_static(b"{not json"), true).unwrap_err();

        assert_eq!(err.kind, "json_invalid");
        assert_eq!(err.msg, "JSON decode error");
    }
}
