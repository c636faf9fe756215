//! Validation errors in pydantic's words, so clients of the original read them unchanged.

use std::io::Write;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

/// Most errors one answer lists (per item of a batch); the rest are counted, not listed.
pub const MAX_LISTED_ERRORS: usize = 20;
/// Bytes of listed errors one answer may carry; with the 422's envelope the body stays
/// within 64 KiB whatever the input.
pub const MAX_DETAIL_BYTES: usize = 60 * 1024;
/// An echoed `input` longer than this as JSON is cut to this many bytes (and marked `…`).
pub(crate) const MAX_INPUT_BYTES: usize = 1024;
/// A `loc` key longer than this is cut to it (and marked `…`).
const MAX_KEY_BYTES: usize = 128;
/// The `type` of the entry that counts the errors left out.
const OMITTED_KIND: &str = "too_many_errors";

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

impl Location {
    /// A key of the body as an answer shows it, cut before it is copied.
    pub fn cut_key(key: &str) -> Self {
        if key.len() <= MAX_KEY_BYTES {
            return Location::Key(key.to_owned());
        }
        Location::Key(format!(
            "{}…",
            &key[..key.floor_char_boundary(MAX_KEY_BYTES)]
        ))
    }
}

/// An error's `input`: a value, or (for echoes of the body) the value's compact JSON text,
/// so an echo of a deeply nested or dense value costs its text, not a tree.
#[derive(Debug, Clone)]
pub enum Input {
    /// A value.
    Value(Value),
    /// Compact JSON text.
    Raw(Box<RawValue>),
}

impl From<Value> for Input {
    fn from(value: Value) -> Self {
        Input::Value(value)
    }
}

impl Serialize for Input {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Input::Value(value) => value.serialize(serializer),
            Input::Raw(raw) => raw.serialize(serializer),
        }
    }
}

impl PartialEq for Input {
    fn eq(&self, other: &Self) -> bool {
        self.to_value() == other.to_value()
    }
}

impl Input {
    /// The input as a value (for tests and comparisons).
    pub fn to_value(&self) -> Value {
        match self {
            Input::Value(value) => value.clone(),
            Input::Raw(raw) => serde_json::from_str(raw.get()).unwrap_or(Value::Null),
        }
    }

    /// The string, when the input is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Input::Value(Value::String(text)) => Some(text),
            _ => None,
        }
    }
}

/// One entry of a 422 body's `detail`: `{"type", "loc", "msg", "input", "ctx"?}`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[schema(as = FieldErrorBody)]
pub struct FieldError {
    /// pydantic's error type, e.g. `missing`, `string_type`, `json_invalid`.
    #[serde(rename = "type")]
    #[schema(value_type = String)]
    pub kind: &'static str,
    /// Where: `["body", "<field>", …]`; positions are integers.
    #[schema(value_type = Vec<Value>)]
    pub loc: Vec<Location>,
    /// pydantic's message.
    pub msg: String,
    /// The offending input as received.
    #[schema(value_type = Value)]
    pub input: Input,
    /// Extra context, e.g. `{"min_length": 1}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub ctx: Option<Value>,
}

impl FieldError {
    fn at(field: &str, kind: &'static str, msg: &str, input: impl Into<Input>) -> Self {
        FieldError {
            kind,
            loc: vec!["body".into(), field.into()],
            msg: msg.to_owned(),
            input: input.into(),
            ctx: None,
        }
    }

    fn with_ctx(mut self, ctx: Value) -> Self {
        self.ctx = Some(ctx);
        self
    }

    /// A required field is absent; `input` is (the echo of) the whole body object.
    pub fn missing(field: &str, body: impl Into<Input>) -> Self {
        Self::at(field, "missing", "Field required", body)
    }

    /// The string is longer than `max_bytes` bytes of UTF-8.
    pub fn string_too_long_bytes(field: &str, input: impl Into<Input>, max_bytes: usize) -> Self {
        let msg = format!("String should have at most {max_bytes} bytes (UTF-8)");
        Self::at(field, "string_too_long", &msg, input).with_ctx(json!({ "max_length": max_bytes }))
    }

    /// The value is not a string.
    pub fn string_type(field: &str, input: impl Into<Input>) -> Self {
        Self::at(
            field,
            "string_type",
            "Input should be a valid string",
            input,
        )
    }

    /// The string is shorter than `min_length` characters.
    pub fn string_too_short(field: &str, input: impl Into<Input>, min_length: usize) -> Self {
        let msg = format!(
            "String should have at least {min_length} character{}",
            if min_length == 1 { "" } else { "s" }
        );
        Self::at(field, "string_too_short", &msg, input)
            .with_ctx(json!({ "min_length": min_length }))
    }

    /// The value is neither a number nor a numeric string.
    pub fn float_type(field: &str, input: impl Into<Input>) -> Self {
        Self::at(field, "float_type", "Input should be a valid number", input)
    }

    /// A string that does not parse as a number.
    pub fn float_parsing(field: &str, input: impl Into<Input>) -> Self {
        Self::at(
            field,
            "float_parsing",
            "Input should be a valid number, unable to parse string as a number",
            input,
        )
    }

    /// A non-finite number somewhere inside a field (`loc` is the full path).
    pub fn finite_number_at(loc: Vec<Location>, input: impl Into<Input>) -> Self {
        FieldError {
            kind: "finite_number",
            loc,
            msg: "Input should be a finite number".to_owned(),
            input: input.into(),
            ctx: None,
        }
    }

    /// NaN, an infinity, or a number beyond f64's range.
    pub fn finite_number(field: &str, input: impl Into<Input>) -> Self {
        Self::at(
            field,
            "finite_number",
            "Input should be a finite number",
            input,
        )
    }

    /// A number below the allowed minimum.
    pub fn greater_than_equal(field: &str, input: impl Into<Input>, ge: f64) -> Self {
        let msg = format!(
            "Input should be greater than or equal to {}",
            fmt_number(ge)
        );
        Self::at(field, "greater_than_equal", &msg, input).with_ctx(json!({ "ge": ge }))
    }

    /// `data`'s stored form would pass `max_bytes` (its numbers written out in full).
    pub fn stored_too_long(field: &str, max_bytes: usize) -> Self {
        let msg = format!(
            "Value error, stored as JSON it would take more than {max_bytes} bytes \
             (twice its size as sent; numbers such as 1e15 are written out in full)"
        );
        Self::at(field, "value_error", &msg, Value::Null)
            .with_ctx(json!({ "max_stored_bytes": max_bytes }))
    }

    /// The value is not a JSON object.
    pub fn dict_type(field: &str, input: impl Into<Input>) -> Self {
        Self::at(
            field,
            "dict_type",
            "Input should be a valid dictionary",
            input,
        )
    }

    /// An error about the body as a whole (`loc: ["body"]`).
    pub fn whole_body(
        kind: &'static str,
        msg: String,
        input: impl Into<Input>,
        ctx: Option<Value>,
    ) -> Self {
        FieldError {
            kind,
            loc: vec!["body".into()],
            msg,
            input: input.into(),
            ctx,
        }
    }

    /// The whole body is not an object.
    pub fn model_type(class_name: &str, input: impl Into<Input>) -> Self {
        FieldError {
            kind: "model_type",
            loc: vec!["body".into()],
            msg: format!("Input should be a valid dictionary or instance of {class_name}"),
            input: input.into(),
            ctx: Some(json!({ "class_name": class_name })),
        }
    }

    /// Stands for `count` errors that are not listed: an answer lists at most
    /// [`MAX_LISTED_ERRORS`] errors and [`MAX_DETAIL_BYTES`] of them.
    pub fn omitted(loc: Vec<Location>, count: usize) -> Self {
        FieldError {
            kind: OMITTED_KIND,
            loc,
            msg: format!("{count} more error(s) not listed"),
            input: Value::Null.into(),
            ctx: Some(json!({ "omitted": count })),
        }
    }

    /// How many errors this entry stands for: its count for an [`omitted`](Self::omitted)
    /// entry, else one.
    fn count(&self) -> usize {
        match (&self.ctx, self.kind) {
            (Some(ctx), OMITTED_KIND) => ctx["omitted"].as_u64().map_or(1, |n| n as usize),
            _ => 1,
        }
    }

    /// The error as an answer shows it: a long `input` or `loc` key cut short.
    fn shortened(mut self) -> Self {
        for location in &mut self.loc {
            if let Location::Key(key) = location {
                cut(key, MAX_KEY_BYTES);
            }
        }
        self.input = match self.input {
            Input::Value(value) => Input::Value(shortened_input(value)),
            // Echoes are made within the limit (`echo`).
            raw @ Input::Raw(_) => raw,
        };
        self
    }

    /// The body is not JSON; `position` is the byte offset of the error, as Python reports.
    pub fn json_invalid(position: usize, reason: &str) -> Self {
        FieldError {
            kind: "json_invalid",
            loc: vec!["body".into(), Location::Index(position)],
            msg: "JSON decode error".to_owned(),
            input: json!({}).into(),
            ctx: Some(json!({ "error": reason })),
        }
    }
}

/// What one answer may still spend on listed errors. A single request's 422 uses one
/// budget for its errors; a batch answer shares one across its items, so that hostile
/// input (a token per error, keys of any length) never makes an answer larger than the
/// limits say.
#[derive(Debug)]
pub struct DetailBudget {
    bytes_left: usize,
}

impl Default for DetailBudget {
    fn default() -> Self {
        DetailBudget {
            bytes_left: MAX_DETAIL_BYTES,
        }
    }
}

impl DetailBudget {
    /// `errors` as an answer lists them: the first [`MAX_LISTED_ERRORS`] that fit in what
    /// is left of the budget, each shortened, then one `too_many_errors` entry at
    /// `omitted_loc` counting the rest (entries that already count errors are merged in).
    pub fn list(&mut self, errors: Vec<FieldError>, omitted_loc: Vec<Location>) -> Vec<FieldError> {
        let mut listed = Vec::new();
        let mut omitted = 0;
        for error in errors {
            if error.kind == OMITTED_KIND || listed.len() == MAX_LISTED_ERRORS {
                omitted += error.count();
                continue;
            }
            let error = error.shortened();
            let size = serialized_len(&error);
            if size <= self.bytes_left {
                self.bytes_left -= size;
                listed.push(error);
            } else {
                // Keep the order: once one does not fit, none after it is listed.
                self.bytes_left = 0;
                omitted += 1;
            }
        }
        if omitted > 0 {
            listed.push(FieldError::omitted(omitted_loc, omitted));
        }
        listed
    }
}

/// `text` cut to at most `max_bytes` (on a character boundary) and marked `…`.
pub(crate) fn cut(text: &mut String, max_bytes: usize) {
    if text.len() > max_bytes {
        text.truncate(text.floor_char_boundary(max_bytes));
        text.push('…');
    }
}

/// An `input` within [`MAX_INPUT_BYTES`]: a longer string is cut; a longer array or
/// object becomes the start of its JSON text, as a string. Found without writing out
/// the whole value.
fn shortened_input(input: Value) -> Value {
    match input {
        Value::String(mut text) => {
            cut(&mut text, MAX_INPUT_BYTES);
            Value::String(text)
        }
        Value::Array(_) | Value::Object(_) => {
            let mut start = CappedWriter::default();
            if serde_json::to_writer(&mut start, &input).is_ok() {
                return input;
            }
            let valid = match std::str::from_utf8(&start.bytes) {
                Ok(text) => text,
                Err(err) => std::str::from_utf8(&start.bytes[..err.valid_up_to()])
                    .expect("valid up to there"),
            };
            Value::String(format!("{valid}…"))
        }
        other => other,
    }
}

/// Keeps the first [`MAX_INPUT_BYTES`] written, then refuses: serialization stops there.
#[derive(Default)]
struct CappedWriter {
    bytes: Vec<u8>,
}

impl Write for CappedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = MAX_INPUT_BYTES - self.bytes.len();
        if buf.len() > room {
            self.bytes.extend_from_slice(&buf[..room]);
            return Err(std::io::Error::other("input longer than shown"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The length of `value` as JSON, counted without keeping the text.
pub fn serialized_len(value: &impl Serialize) -> usize {
    struct Counter(usize);
    impl Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    serde_json::to_writer(&mut counter, value).expect("the value serializes");
    counter.0
}

/// Python prints whole floats without a fraction in these messages ("equal to 0").
fn fmt_number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finite_number_at(key: &str, input: Value) -> FieldError {
        FieldError::finite_number_at(vec!["body".into(), "data".into(), key.into()], input)
    }

    #[test]
    fn an_answer_lists_at_most_twenty_errors_and_counts_the_rest() {
        let errors = (0..25).map(|i| finite_number_at(&i.to_string(), json!("NaN")));

        let listed = DetailBudget::default().list(errors.collect(), vec!["body".into()]);

        assert_eq!(listed.len(), MAX_LISTED_ERRORS + 1);
        let last = listed.last().unwrap();
        assert_eq!(last.kind, "too_many_errors");
        assert_eq!(last.ctx, Some(json!({"omitted": 5})));
        assert_eq!(last.loc, vec![Location::from("body")]);
    }

    #[test]
    fn counts_already_made_by_a_validator_are_merged_into_one_entry() {
        let errors = vec![
            finite_number_at("a", json!("NaN")),
            FieldError::omitted(vec!["body".into(), "data".into()], 1000),
        ];

        let listed = DetailBudget::default().list(errors, vec!["body".into()]);

        assert_eq!(listed.len(), 2);
        assert_eq!(listed[1].ctx, Some(json!({"omitted": 1000})));
    }

    #[test]
    fn long_inputs_and_keys_are_cut_on_a_character_boundary() {
        let long_text = "é".repeat(5000);
        let big_object = json!({ "k": "x".repeat(5000) });
        let errors = vec![
            finite_number_at(&"ü".repeat(500), json!(long_text)),
            finite_number_at("b", big_object),
        ];

        let listed = DetailBudget::default().list(errors, vec!["body".into()]);

        let Location::Key(key) = &listed[0].loc[2] else {
            panic!("a key")
        };
        assert!(key.len() <= MAX_KEY_BYTES + '…'.len_utf8() && key.ends_with('…'));
        let text = listed[0].input.as_str().unwrap();
        assert!(text.len() <= MAX_INPUT_BYTES + '…'.len_utf8() && text.ends_with('…'));
        let start = listed[1].input.as_str().unwrap();
        assert!(start.starts_with(r#"{"k":"xxx"#) && start.ends_with('…'));
        assert!(start.len() <= MAX_INPUT_BYTES + '…'.len_utf8());
    }

    #[test]
    fn a_shared_budget_bounds_the_answer_whatever_the_errors_hold() {
        let mut budget = DetailBudget::default();
        let deep_loc: Vec<Location> = std::iter::once("body".into())
            .chain((0..120).map(|_| Location::Key("k".repeat(1000))))
            .collect();
        let error = FieldError::finite_number_at(deep_loc, json!("x".repeat(10_000)));

        let items: Vec<Vec<FieldError>> = (0..100)
            .map(|item| budget.list(vec![error.clone(); 30], vec![Location::Index(item)]))
            .collect();

        let listed: usize = items
            .iter()
            .flatten()
            .filter(|e| e.kind != OMITTED_KIND)
            .map(serialized_len)
            .sum();
        assert!(listed <= MAX_DETAIL_BYTES, "{listed} bytes listed");
        assert!(
            items
                .iter()
                .all(|item| item.last().unwrap().kind == OMITTED_KIND)
        );
        let total: usize = items.iter().flatten().map(FieldError::count).sum();
        assert_eq!(total, 100 * 30, "every error is listed or counted");
    }
}
