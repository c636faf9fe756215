//! The JSON bodies the service answers with. Each derives `Serialize` (what the code
//! writes) and `ToSchema` (what `/openapi.json` documents), so the document is made from
//! the answers themselves and cannot drift from them.

use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::FieldError;

/// `{"detail": "<text>"}`: 401, 403, 404, 405, 413, 415, 429, and a probe's 503.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Detail {
    /// What went wrong.
    pub detail: String,
}

impl Detail {
    /// The body for `text`.
    pub fn new(text: impl Into<String>) -> Self {
        Detail {
            detail: text.into(),
        }
    }
}

/// 422: the field errors (at most a bounded number, then one that counts the rest), in
/// pydantic's words.
#[derive(Debug, Serialize, ToSchema)]
pub struct ValidationErrorBody {
    /// `Invalid data for POST <path>`.
    pub message: String,
    /// The field errors.
    pub detail: Vec<FieldError>,
    /// `Ensure the request matches the API schema.`
    pub hint: String,
}

/// 500 and 503: `{"detail": {"message", "hint"}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StorageErrorBody {
    /// What failed, and what to do.
    pub detail: MessageHint,
}

impl StorageErrorBody {
    /// The body with this message and hint.
    pub fn new(message: impl Into<String>, hint: impl Into<String>) -> Self {
        StorageErrorBody {
            detail: MessageHint {
                message: message.into(),
                hint: hint.into(),
            },
        }
    }
}

/// The inside of a storage error.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = StorageErrorDetail)]
pub struct MessageHint {
    /// A safe summary (never a driver error).
    pub message: String,
    /// What to do about it.
    pub hint: String,
}

/// `{"status": "ok"}` of the probes.
#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    /// Always `ok`.
    pub status: &'static str,
}

impl Status {
    /// `{"status": "ok"}`.
    pub const OK: Status = Status { status: "ok" };
}
