//! Validated request types and the rules that build them. No I/O here.

mod batch;
mod event;
mod field_error;
mod metric;
pub mod pyjson;
mod sanitize;
mod stored_form;

pub use batch::parse_batch;
pub use event::NewAnalyticsEvent;
pub use field_error::{DetailBudget, FieldError, Location, MAX_DETAIL_BYTES, MAX_LISTED_ERRORS};
pub use metric::NewMetric;
pub use sanitize::{strip_control_chars, strip_control_chars_in_json, strip_control_chars_in_map};

use serde_json::{Map, Value};

/// The body as a JSON object, or the pydantic error for anything else (`model_type`).
fn body_object<'a>(
    body: &'a Value,
    class_name: &'static str,
) -> Result<&'a Map<String, Value>, Vec<FieldError>> {
    body.as_object()
        .ok_or_else(|| vec![FieldError::model_type(class_name, body.clone())])
}

/// The input to echo in an error: a non-finite marker shows as its original token.
fn input_of(value: &Value) -> Value {
    match pyjson::non_finite_token(value) {
        Some(token) => Value::String(token.to_owned()),
        None => value.clone(),
    }
}

/// Field readers shared by the request types.
mod fields {
    use serde_json::{Map, Value};

    use super::FieldError;

    /// A string of at least `min_length` characters, or an error pushed to `errors`.
    pub fn string<'a>(
        object: &'a Map<String, Value>,
        field: &str,
        min_length: usize,
        errors: &mut Vec<FieldError>,
    ) -> Option<&'a str> {
        match object.get(field) {
            None => {
                errors.push(FieldError::missing(field, object));
                None
            }
            Some(input) if super::pyjson::non_finite_token(input).is_some() => {
                errors.push(FieldError::string_type(field, &super::input_of(input)));
                None
            }
            Some(input @ Value::String(s)) => {
                if s.chars().count() < min_length {
                    errors.push(FieldError::string_too_short(field, input, min_length));
                    None
                } else {
                    Some(s)
                }
            }
            Some(other) => {
                errors.push(FieldError::string_type(field, other));
                None
            }
        }
    }
}
