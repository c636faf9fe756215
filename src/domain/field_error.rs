//! Validation errors in pydantic's words, so clients of the original read them unchanged.

use serde::Serialize;
use serde_json::{Map, Value, json};

/// One element of an error's `loc`: a field name or an array index.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Location {
    /// An object key.
    Key(String),
    /// An array position, or a byte offset for `json_invalid`.
    Index(usize),
}

impl From<&str> for Location {
    fn from(key: &str) -> Self {
        Location::Key(key.to_owned())
    }
}

/// One entry of a 422 body's `detail`: `{"type", "loc", "msg", "input", "ctx"?}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldError {
    /// pydantic's error type, e.g. `missing`, `string_type`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Where: `["body", "<field>", …]`.
    pub loc: Vec<Location>,
    /// pydantic's message.
    pub msg: String,
    /// The offending input as received.
    pub input: Value,
    /// Extra context, e.g. `{"min_length": 1}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ctx: Option<Value>,
}

impl FieldError {
    fn at(field: &str, kind: &'static str, msg: &str, input: Value) -> Self {
        FieldError {
            kind,
            loc: vec!["body".into(), field.into()],
            msg: msg.to_owned(),
            input,
            ctx: None,
        }
    }

    fn with_ctx(mut self, ctx: Value) -> Self {
        self.ctx = Some(ctx);
        self
    }

    /// A required field is absent; `input` is the whole body object.
    pub fn missing(field: &str, body: &Map<String, Value>) -> Self {
        Self::at(
            field,
            "missing",
            "Field required",
            Value::Object(body.clone()),
        )
    }

    /// The string is longer than `max_bytes` bytes of UTF-8.
    pub fn string_too_long_bytes(field: &str, input: &Value, max_bytes: usize) -> Self {
        let msg = format!("String should have at most {max_bytes} bytes (UTF-8)");
        Self::at(field, "string_too_long", &msg, input.clone())
            .with_ctx(json!({ "max_length": max_bytes }))
    }

    /// The value is not a string.
    pub fn string_type(field: &str, input: &Value) -> Self {
        Self::at(
            field,
            "string_type",
            "Input should be a valid string",
            input.clone(),
        )
    }

    /// The string is shorter than `min_length` characters.
    pub fn string_too_short(field: &str, input: &Value, min_length: usize) -> Self {
        let msg = format!(
            "String should have at least {min_length} character{}",
            if min_length == 1 { "" } else { "s" }
        );
        Self::at(field, "string_too_short", &msg, input.clone())
            .with_ctx(json!({ "min_length": min_length }))
    }

    /// The value is neither a number nor a numeric string.
    pub fn float_type(field: &str, input: &Value) -> Self {
        Self::at(
            field,
            "float_type",
            "Input should be a valid number",
            input.clone(),
        )
    }

    /// A string that does not parse as a number.
    pub fn float_parsing(field: &str, input: &Value) -> Self {
        Self::at(
            field,
            "float_parsing",
            "Input should be a valid number, unable to parse string as a number",
            input.clone(),
        )
    }

    /// A non-finite number somewhere inside a field (`loc` is the full path).
    pub fn finite_number_at(loc: Vec<Location>, input: &Value) -> Self {
        FieldError {
            kind: "finite_number",
            loc,
            msg: "Input should be a finite number".to_owned(),
            input: input.clone(),
            ctx: None,
        }
    }

    /// NaN, an infinity, or a number beyond f64's range.
    pub fn finite_number(field: &str, input: &Value) -> Self {
        Self::at(
            field,
            "finite_number",
            "Input should be a finite number",
            input.clone(),
        )
    }

    /// A number below the allowed minimum.
    pub fn greater_than_equal(field: &str, input: &Value, ge: f64) -> Self {
        let msg = format!(
            "Input should be greater than or equal to {}",
            fmt_number(ge)
        );
        Self::at(field, "greater_than_equal", &msg, input.clone()).with_ctx(json!({ "ge": ge }))
    }

    /// The value is not a JSON object.
    pub fn dict_type(field: &str, input: &Value) -> Self {
        Self::at(
            field,
            "dict_type",
            "Input should be a valid dictionary",
            input.clone(),
        )
    }

    /// An error about the body as a whole (`loc: ["body"]`).
    pub fn whole_body(kind: &'static str, msg: String, input: Value, ctx: Option<Value>) -> Self {
        FieldError {
            kind,
            loc: vec!["body".into()],
            msg,
            input,
            ctx,
        }
    }

    /// The whole body is not an object.
    pub fn model_type(class_name: &str, input: Value) -> Self {
        FieldError {
            kind: "model_type",
            loc: vec!["body".into()],
            msg: format!("Input should be a valid dictionary or instance of {class_name}"),
            input,
            ctx: Some(json!({ "class_name": class_name })),
        }
    }

    /// The body is not JSON; `position` is the byte offset of the error, as Python reports.
    pub fn json_invalid(position: usize, reason: &str) -> Self {
        FieldError {
            kind: "json_invalid",
            loc: vec!["body".into(), Location::Index(position)],
            msg: "JSON decode error".to_owned(),
            input: json!({}),
            ctx: Some(json!({ "error": reason })),
        }
    }
}

/// Python prints whole floats without a fraction in these messages ("equal to 0").
fn fmt_number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        value.to_string()
    }
}
